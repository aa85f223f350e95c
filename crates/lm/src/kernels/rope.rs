//! Rotary position embeddings (Su et al. 2021, RoFormer; NeoX "rotate half" layout) as one CPU op with a
//! backward pass.
//!
//! The composition of candle ops (two narrows, a negation, a concatenation, two broadcast products and a
//! sum) allocates five tensors of the activations' size per call, twice per layer. Per head row, with
//! `h = rot/2` and `c`, `s` the cos/sin tables (halves duplicated):
//! `y_i = x_i c_i − x_{i+h} s_i`, `y_{i+h} = x_{i+h} c_{i+h} + x_i s_{i+h}`, dims past `rot` unchanged;
//! the backward is the transposed rotation: `dx_i = g_i c_i + g_{i+h} s_{i+h}`,
//! `dx_{i+h} = g_{i+h} c_{i+h} − g_i s_i`. The products and sums are the same as the composition's, so
//! the numbers are too.

use super::{host, to_candle, with_slice, Float};
use anyhow::Result;
use candle_core::{CpuStorage, DType, Layout, Shape, Tensor, WithDType, D};
use rayon::prelude::*;

/// Rotates the first `rot` dims of each head. `x` `(B, H, T, hd)`, `cos`/`sin` `(B, 1, T, rot)`.
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let fused = x.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && x.is_contiguous()
        && cos.dtype() == x.dtype()
        && sin.dtype() == x.dtype();
    if !fused {
        return reference(x, cos, sin);
    }
    let op = Rope { cos: cos.detach().contiguous()?, sin: sin.detach().contiguous()? };
    Ok(x.apply_op1(op)?)
}

/// The same rotation through candle ops (other devices and dtypes).
pub fn reference(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let hd = x.dim(D::Minus1)?;
    let rot = cos.dim(D::Minus1)?;
    let (xr, xp) = if rot < hd {
        (x.narrow(D::Minus1, 0, rot)?, Some(x.narrow(D::Minus1, rot, hd - rot)?))
    } else {
        (x.clone(), None)
    };
    let x1 = xr.narrow(D::Minus1, 0, rot / 2)?;
    let x2 = xr.narrow(D::Minus1, rot / 2, rot / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?; // (B, H, T, rot)
    let y = (xr.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?;
    Ok(match xp {
        Some(p) => Tensor::cat(&[&y, &p], D::Minus1)?,
        None => y,
    })
}

struct Rope {
    /// `(B, 1, T, rot)` each.
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    /// The cos and sin tables' elements, passed to `f`.
    fn tables<T: Float, R>(&self, f: impl FnOnce(&[T], &[T]) -> anyhow::Result<R>) -> anyhow::Result<R> {
        with_slice::<T, _>(&self.cos, |c| with_slice::<T, _>(&self.sin, |s| f(c, s)))
    }
}

/// Rotates every head row of `x`, or (`backward`) applies the transposed rotation to a gradient.
fn rotate<T: Float>(
    x: &[T],
    cos: &[T],
    sin: &[T],
    (_b, h, t, hd, rot): (usize, usize, usize, usize, usize),
    backward: bool,
) -> Vec<T> {
    let half = rot / 2;
    let mut y = vec![T::zero(); x.len()];
    y.par_chunks_mut(t * hd).zip(x.par_chunks(t * hd)).enumerate().for_each(|(bh, (y, x))| {
        let bi = bh / h;
        for ti in 0..t {
            let (x, y) = (&x[ti * hd..(ti + 1) * hd], &mut y[ti * hd..(ti + 1) * hd]);
            let c = &cos[(bi * t + ti) * rot..(bi * t + ti + 1) * rot];
            let s = &sin[(bi * t + ti) * rot..(bi * t + ti + 1) * rot];
            for i in 0..half {
                let (a, z) = (x[i], x[i + half]);
                if backward {
                    y[i] = a * c[i] + z * s[i + half];
                    y[i + half] = z * c[i + half] - a * s[i];
                } else {
                    y[i] = a * c[i] + (-z) * s[i];
                    y[i + half] = z * c[i + half] + a * s[i + half];
                }
            }
            y[rot..].copy_from_slice(&x[rot..]);
        }
    });
    y
}

fn dims(x: &[usize], cos: &Tensor) -> candle_core::Result<(usize, usize, usize, usize, usize)> {
    let [b, h, t, hd] = x else { candle_core::bail!("rope: expected (B, H, T, hd), got {x:?}") };
    let (cb, _, ct, rot) = cos.dims4()?;
    if cb != *b || ct != *t || rot > *hd || rot % 2 != 0 {
        candle_core::bail!("rope: tables {:?} do not fit x {x:?}", cos.dims());
    }
    Ok((*b, *h, *t, *hd, rot))
}

impl candle_core::CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "fused-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let dm = dims(l.shape().dims(), &self.cos)?;
        let Some((a, z)) = l.contiguous_offsets() else { candle_core::bail!("rope: input is not contiguous") };
        // The tables are read where they lie: this runs twice per layer.
        let y = match s {
            CpuStorage::F32(x) => {
                self.tables::<f32, _>(|c, sn| Ok(f32::to_cpu_storage_owned(rotate(&x[a..z], c, sn, dm, false))))
            }
            CpuStorage::F64(x) => {
                self.tables::<f64, _>(|c, sn| Ok(f64::to_cpu_storage_owned(rotate(&x[a..z], c, sn, dm, false))))
            }
            _ => candle_core::bail!("rope: f32 or f64 only"),
        }
        .map_err(to_candle)?;
        Ok((y, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dm = dims(x.dims(), &self.cos)?;
        let dx = match x.dtype() {
            DType::F32 => {
                let g = host::<f32>(g)?;
                self.tables::<f32, _>(|c, s| Ok(Tensor::from_vec(rotate(&g, c, s, dm, true), x.shape(), x.device())?))
            }
            _ => {
                let g = host::<f64>(g)?;
                self.tables::<f64, _>(|c, s| Ok(Tensor::from_vec(rotate(&g, c, s, dm, true), x.shape(), x.device())?))
            }
        }
        .map_err(to_candle)?;
        Ok(Some(dx))
    }
}
