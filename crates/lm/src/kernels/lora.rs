//! A linear layer with a low-rank adapter, `y = x Wᵀ + s · (x Aᵀ) Bᵀ` (Hu et al. 2021, "LoRA",
//! arXiv 2106.09685), as one graph node over `(x, A, B)` with the frozen `W` and the scale `s` captured.
//!
//! Why: written as candle ops, each adapted layer is about eight nodes (two reshapes and two rank-r products,
//! a scale, an add, and the gradients' sum at `x`), two passes over the layer's output in the forward and
//! as many over the input's gradient in the backward, and rank-r products that gemm's own threading splits
//! badly (one side is only `r` wide). SmolLM2-135M with LoRA on all seven projections has 210 such layers.
//! Here the adapter's term is added by the thread that computes each block of `x Wᵀ`, while the block is
//! in its cache, and likewise `s (g B) A` into the block of `g W`; the rank-r products split across threads
//! along their long side. The backward of `u = x Aᵀ`, `y = x Wᵀ + s u Bᵀ`, with `g = ∂L/∂y`:
//!
//! ```text
//! ∂L/∂x = g W + s (g B) A      ∂L/∂A = s (g B)ᵀ x      ∂L/∂B = s gᵀ u
//! ```
//!
//! `u` (`rows × r`, small) is kept from the forward. CPU only, f32 and f64; the layer falls back to candle's
//! ops elsewhere, and the tests hold this op to that composition.

use super::linear::{par_gemm, x_w_plus, x_wt_plus, x_wtt_plus, Extra, Split, Strided};
use super::{slice, to_candle, with_slice, Float};
use candle_core::{CpuStorage, DType, Layout, Result, Shape, Tensor};
use std::sync::Mutex;

/// `x Wᵀ + scale · (x Aᵀ) Bᵀ` for `x` `(rows, in)`, `w` `(out, in)` frozen, `a` `(r, in)`, `b` `(out, r)`:
/// one node whose backward returns the gradients of `x`, `A` and `B` (each only if it is in a graph).
/// All four on the CPU in one dtype, f32 or f64. `wt`, if given, is `W` stored transposed, `(in, out)`, which
/// the forward reads instead of `w` (see `linear::prefers_transposed_weight`).
pub fn lora_linear(x: &Tensor, w: &Tensor, wt: Option<&Tensor>, a: &Tensor, b: &Tensor, scale: f64) -> Result<Tensor> {
    let keep = x.track_op() || a.track_op() || b.track_op();
    let wt = wt.map(|t| t.detach().contiguous()).transpose()?;
    let op = LoraLinear { w: w.detach().contiguous()?, wt, scale, u: Mutex::new(None), keep };
    x.contiguous()?.apply_op3(&a.contiguous()?, &b.contiguous()?, op)
}

/// The same maths as candle ops: what other devices run, and what the tests compare [`lora_linear`] with.
pub fn reference(x: &Tensor, w: &Tensor, a: &Tensor, b: &Tensor, scale: f64) -> Result<Tensor> {
    x.matmul(&w.t()?)? + (x.matmul(&a.t()?)?.matmul(&b.t()?)? * scale)?
}

/// Whether [`lora_linear`] takes these operands: all on the CPU in one dtype, f32 or f64, `W` frozen.
pub fn supports(x: &Tensor, w: &Tensor, a: &Tensor, b: &Tensor) -> bool {
    let dt = x.dtype();
    x.device().is_cpu()
        && matches!(dt, DType::F32 | DType::F64)
        && [w, a, b].iter().all(|t| t.dtype() == dt && t.device().is_cpu())
        && !w.track_op()
}

struct LoraLinear {
    /// `(out, in)`
    w: Tensor,
    /// `Wᵀ` `(in, out)`, for the forward, if the caller keeps one.
    wt: Option<Tensor>,
    scale: f64,
    /// `u = x Aᵀ` `(rows, r)` from the forward, for `∂L/∂B`.
    u: Mutex<Option<Tensor>>,
    /// Whether any input is in a graph (else `u` is not kept).
    keep: bool,
}

impl LoraLinear {
    fn fwd<T: Float>(&self, x: &[T], rows: usize, inp: usize, a: &[T], r: usize, b: &[T]) -> anyhow::Result<Vec<T>> {
        let out = self.w.dim(0)?;
        anyhow::ensure!(self.w.dim(1)? == inp, "lora-linear: x is (…, {inp}), W is {:?}", self.w.dims());
        anyhow::ensure!(a.len() == r * inp && b.len() == out * r, "lora-linear: A or B does not fit W {out} × {inp}");
        let s = T::from(self.scale).unwrap();
        // u = x Aᵀ (rows, r)
        let u = par_gemm(rows, r, inp, Strided::rows(x, inp), Strided::transposed(a, inp), T::one(), Split::Rows);
        // y = x Wᵀ + s · u Bᵀ, Bᵀ's element (k, j) at b[j·r + k].
        let extra = Extra { a: &u, k: r, b, b_strides: (1, r), scale: s };
        let y = match &self.wt {
            Some(wt) => with_slice(wt, |wt| Ok(x_wtt_plus(x, rows, inp, wt, out, Some(extra))))?,
            None => with_slice(&self.w, |w| Ok(x_wt_plus(x, rows, inp, w, out, Some(extra))))?,
        };
        if self.keep {
            *self.u.lock().unwrap() = Some(Tensor::from_vec(u, (rows, r), &candle_core::Device::Cpu)?);
        }
        Ok(y)
    }

    #[allow(clippy::type_complexity)]
    fn bwd<T: Float>(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        grad: &Tensor,
    ) -> anyhow::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (rows, inp) = x.dims2()?;
        let (out, r) = b.dims2()?;
        let s = T::from(self.scale).unwrap();
        let dev = x.device();
        let (x, a, b, grad) = (x.contiguous()?, a.contiguous()?, b.contiguous()?, grad.contiguous()?);
        with_slice::<T, _>(&grad, |g| {
            with_slice::<T, _>(&b, |bs| {
                // g B (rows, r), B (out, r) row-major.
                let gb = par_gemm(rows, r, out, Strided::rows(g, out), Strided::rows(bs, r), T::one(), Split::Rows);
                let dx = if x.track_op() {
                    let dx = with_slice::<T, _>(&a, |a_s| {
                        with_slice(&self.w, |w| {
                            let extra = Extra { a: &gb, k: r, b: a_s, b_strides: (inp, 1), scale: s };
                            Ok(x_w_plus(g, rows, out, w, inp, Some(extra)))
                        })
                    })?;
                    Some(Tensor::from_vec(dx, (rows, inp), dev)?)
                } else {
                    None
                };
                let da = if a.track_op() {
                    // s (g B)ᵀ x (r, in)
                    let da = with_slice::<T, _>(&x, |xs| {
                        Ok(par_gemm(r, inp, rows, Strided::transposed(&gb, r), Strided::rows(xs, inp), s, Split::Cols))
                    })?;
                    Some(Tensor::from_vec(da, (r, inp), dev)?)
                } else {
                    None
                };
                let db = if b.track_op() {
                    let u = self.u.lock().unwrap().clone();
                    let Some(u) = u else { anyhow::bail!("lora-linear: the forward's x Aᵀ was not kept") };
                    // s gᵀ u (out, r)
                    let db = with_slice::<T, _>(&u, |us| {
                        Ok(par_gemm(out, r, rows, Strided::transposed(g, out), Strided::rows(us, r), s, Split::Rows))
                    })?;
                    Some(Tensor::from_vec(db, (out, r), dev)?)
                } else {
                    None
                };
                Ok((dx, da, db))
            })
        })
    }
}

impl candle_core::CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "lora-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        as_: &CpuStorage,
        al: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, inp) = xl.shape().dims2()?;
        let (r, _) = al.shape().dims2()?;
        let out = self.w.dim(0)?;
        // `slice` refuses a non-contiguous operand and one of another dtype than `x`'s.
        let y = match xs {
            CpuStorage::F32(_) => CpuStorage::F32(
                self.fwd(slice(xs, xl)?, rows, inp, slice(as_, al)?, r, slice(bs, bl)?).map_err(to_candle)?,
            ),
            CpuStorage::F64(_) => CpuStorage::F64(
                self.fwd(slice(xs, xl)?, rows, inp, slice(as_, al)?, r, slice(bs, bl)?).map_err(to_candle)?,
            ),
            _ => candle_core::bail!("lora-linear supports f32 and f64"),
        };
        Ok((y, (rows, out).into()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        match x.dtype() {
            DType::F32 => self.bwd::<f32>(x, a, b, grad),
            _ => self.bwd::<f64>(x, a, b, grad),
        }
        .map_err(to_candle)
    }
}
