//! The gated MLP activation of Llama and Qwen2, `silu(gate) · up` (SwiGLU; Shazeer 2020, "GLU Variants
//! Improve Transformer", arXiv 2002.05202), as one CPU op with its backward pass.
//!
//! As candle ops it is a `silu` and a `mul` forward, and a backward of about six element-wise tensor ops
//! (silu's derivative spelled out, the product rule), each a pass over the `(tokens, intermediate)`
//! activations that allocates a tensor of that size: SmolLM2's 1,536-wide MLP makes these the largest
//! element-wise tensors of a layer. Here the forward is one pass, and the backward one pass that
//! recomputes `σ(gate)` and writes both gradients, with `s = σ(g)`:
//!
//! ```text
//! y = g s u        ∂y/∂g = u s (1 + g (1 − s))        ∂y/∂u = g s
//! ```

use super::{simd, slice, with_slice, Float};
use anyhow::Result;
use candle_core::{CpuStorage, DType, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

/// Elements per parallel task: large enough that a task outweighs its scheduling.
const BLOCK: usize = 16 * 1024;

/// `silu(gate) · up`, element-wise over two tensors of one shape.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if !fused(gate, up) {
        return reference(gate, up);
    }
    Ok(gate.apply_op2(up, SwiGlu)?)
}

/// The same maths as candle ops: what other devices run, and what the tests compare [`swiglu`] with.
pub fn reference(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    Ok((candle_nn::ops::silu(gate)? * up)?)
}

fn fused(gate: &Tensor, up: &Tensor) -> bool {
    gate.device().is_cpu()
        && up.device().is_cpu()
        && matches!(gate.dtype(), DType::F32 | DType::F64)
        && up.dtype() == gate.dtype()
        && gate.dims() == up.dims()
        && gate.is_contiguous()
        && up.is_contiguous()
}

#[inline(always)]
fn sigmoid<T: Float>(x: T) -> T {
    (T::one() + (-x).vexp()).recip()
}

fn forward<T: Float>(g: &[T], u: &[T]) -> Vec<T> {
    let mut y = vec![T::zero(); g.len()];
    y.par_chunks_mut(BLOCK).zip(g.par_chunks(BLOCK).zip(u.par_chunks(BLOCK))).for_each(|(y, (g, u))| {
        // candle's silu spelled the same way, then the product, with an exponential that vectorises.
        simd::vectorized(
            #[inline(always)]
            || {
                for (y, (&g, &u)) in y.iter_mut().zip(g.iter().zip(u)) {
                    *y = g / (T::one() + (-g).vexp()) * u;
                }
            },
        )
    });
    y
}

/// `(∂L/∂gate, ∂L/∂up)` from the output's gradient `d`.
fn backward<T: Float>(g: &[T], u: &[T], d: &[T]) -> (Vec<T>, Vec<T>) {
    let (mut dg, mut du) = (vec![T::zero(); g.len()], vec![T::zero(); g.len()]);
    dg.par_chunks_mut(BLOCK)
        .zip(du.par_chunks_mut(BLOCK))
        .zip(g.par_chunks(BLOCK).zip(u.par_chunks(BLOCK)).zip(d.par_chunks(BLOCK)))
        .for_each(|((dg, du), ((g, u), d))| {
            simd::vectorized(
                #[inline(always)]
                || {
                    for i in 0..g.len() {
                        let s = sigmoid(g[i]);
                        dg[i] = d[i] * u[i] * s * (T::one() + g[i] * (T::one() - s));
                        du[i] = d[i] * g[i] * s;
                    }
                },
            )
        });
    (dg, du)
}

struct SwiGlu;

impl candle_core::CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if gl.shape() != ul.shape() {
            candle_core::bail!("swiglu: gate {:?} and up {:?} differ in shape", gl.shape(), ul.shape())
        }
        let y = match gs {
            CpuStorage::F32(_) => f32::to_cpu_storage_owned(forward::<f32>(slice(gs, gl)?, slice(us, ul)?)),
            CpuStorage::F64(_) => f64::to_cpu_storage_owned(forward::<f64>(slice(gs, gl)?, slice(us, ul)?)),
            _ => candle_core::bail!("swiglu: f32 or f64 only"),
        };
        Ok((y, gl.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        fn run<T: Float>(gate: &Tensor, up: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor)> {
            let grad = grad.contiguous()?;
            let (dg, du) = with_slice::<T, _>(gate, |g| {
                with_slice::<T, _>(up, |u| with_slice::<T, _>(&grad, |d| Ok(backward(g, u, d))))
            })?;
            let (shape, dev) = (gate.shape(), gate.device());
            Ok((Tensor::from_vec(dg, shape, dev)?, Tensor::from_vec(du, shape, dev)?))
        }
        let (dg, du) = match gate.dtype() {
            DType::F32 => run::<f32>(gate, up, grad),
            _ => run::<f64>(gate, up, grad),
        }
        .map_err(super::to_candle)?;
        Ok((gate.track_op().then_some(dg), up.track_op().then_some(du)))
    }
}
