//! Fused CPU kernels for training, each with its backward pass, and the candle-op composition that other
//! devices run and the tests hold them to.
//!
//! candle's differentiable path builds every intermediate of a softmax, a norm or the LM head as a separate
//! tensor and keeps it for the backward pass; these kernels make one pass over their inputs and recompute
//! what the backward needs.

pub mod glu;
pub mod head;
pub mod linear;
pub mod lora;
pub mod norm;
pub mod rope;
pub mod simd;

/// A float type the CPU kernels run in.
pub(crate) trait Float:
    candle_core::WithDType + num_traits::Float + std::ops::AddAssign + std::ops::MulAssign + Send + Sync
{
    /// e^x in a form that vectorises in f32 ([`simd::exp_f32`], within 2 ulp); libm's in f64.
    fn vexp(self) -> Self;
}
impl Float for f32 {
    #[inline(always)]
    fn vexp(self) -> Self {
        simd::exp_f32(self)
    }
}
impl Float for f64 {
    #[inline(always)]
    fn vexp(self) -> Self {
        self.exp()
    }
}

/// The contiguous elements of a CPU tensor, passed to `f` (no copy).
pub(crate) fn with_slice<T: Float, R>(
    t: &candle_core::Tensor,
    f: impl FnOnce(&[T]) -> anyhow::Result<R>,
) -> anyhow::Result<R> {
    let (s, l) = t.storage_and_layout();
    let (candle_core::Storage::Cpu(s), Some((a, b))) = (&*s, l.contiguous_offsets()) else {
        anyhow::bail!("fused kernel: expected a contiguous CPU tensor")
    };
    f(&s.as_slice::<T>()?[a..b])
}

/// The elements of a custom op's contiguous CPU input.
pub(crate) fn slice<'a, T: Float>(
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
) -> candle_core::Result<&'a [T]> {
    let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("fused kernel: input is not contiguous") };
    Ok(&s.as_slice::<T>()?[a..b])
}

/// A tensor's elements as a vector (the backward passes' inputs, which candle hands over as tensors).
pub(crate) fn host<T: Float>(t: &candle_core::Tensor) -> candle_core::Result<Vec<T>> {
    t.flatten_all()?.to_vec1::<T>()
}

/// An error of ours inside candle's op interfaces.
pub(crate) fn to_candle(e: anyhow::Error) -> candle_core::Error {
    candle_core::Error::Msg(format!("{e:#}"))
}
