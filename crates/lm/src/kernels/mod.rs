//! Fused CPU kernels for training, each with its backward pass, and the candle-op composition that other
//! devices run and the tests hold them to.
//!
//! candle's differentiable path builds every intermediate of a softmax, a norm or the LM head as a separate
//! tensor and keeps it for the backward pass; these kernels make one pass over their inputs and recompute
//! what the backward needs.

pub mod head;
pub mod norm;
pub mod rope;

/// A float type the CPU kernels run in.
pub(crate) trait Float:
    candle_core::WithDType + num_traits::Float + std::ops::AddAssign + std::ops::MulAssign + Send + Sync
{
}
impl Float for f32 {}
impl Float for f64 {}
