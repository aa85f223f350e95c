//! RMSNorm, LayerNorm and the last-dimension softmax as single CPU ops with a backward pass.
//!
//! candle-nn's fused versions have no backward, so a training forward used to spell each of them out in
//! five to seven tensor ops, every one allocating a tensor that the graph keeps for the backward pass.
//! Each op here makes one pass per row forward and one backward, from the input and the output alone.
//!
//! Backward formulas, per row of width `d` (`r = 1/√(mean(x²) + ε)` for RMSNorm, `x̂ = (x − μ) r` for
//! LayerNorm, `g` the output's gradient):
//! - RMSNorm (Zhang & Sennrich 2019): `dx = r (g w) − x r³ mean(g w x)`, `dw = Σ_rows g x r`;
//! - LayerNorm (Ba et al. 2016): `dx = r (g w − mean(g w) − x̂ mean(g w x̂))`, `dw = Σ_rows g x̂`,
//!   `db = Σ_rows g`;
//! - softmax: `dx = y (g − Σ g y)`.

use super::{host, simd, slice, with_slice, Float};
use anyhow::Result;
use candle_core::{CpuStorage, DType, Layout, Shape, Tensor, WithDType, D};
use rayon::prelude::*;

/// Whether the fused CPU op applies: CPU tensors of one float type, the normalised input contiguous.
fn fused(x: &Tensor, others: &[&Tensor]) -> bool {
    x.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && x.is_contiguous()
        && others.iter().all(|t| t.device().is_cpu() && t.dtype() == x.dtype())
}

/// RMSNorm over the last dimension: `x / √(mean(x²) + eps) · w`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    if !fused(x, &[w]) {
        return Ok(candle_nn::ops::rms_norm_slow(x, w, eps as f32)?);
    }
    Ok(x.apply_op2(&w.contiguous()?, RmsNorm { eps })?)
}

/// LayerNorm over the last dimension: `(x − mean) / √(var + eps) · w + b`.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    if !fused(x, &[w, b]) {
        return Ok(candle_nn::ops::layer_norm_slow(x, w, b, eps as f32)?);
    }
    Ok(x.apply_op3(&w.contiguous()?, &b.contiguous()?, LayerNorm { eps })?)
}

/// Softmax over the last dimension.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    if !fused(x, &[]) {
        // In f16/bf16 the sum of the exponentials is taken in f32 (as autocast does, and as candle's RMSNorm and
        // LayerNorm compositions do): a bf16 running sum over hundreds of keys loses the small ones.
        if matches!(x.dtype(), DType::BF16 | DType::F16) {
            return Ok(candle_nn::ops::softmax(&x.to_dtype(DType::F32)?, D::Minus1)?.to_dtype(x.dtype())?);
        }
        return Ok(candle_nn::ops::softmax(x, D::Minus1)?);
    }
    Ok(x.apply_op1(Softmax)?)
}

fn rows_of(l: &Layout) -> candle_core::Result<(usize, usize)> {
    let d = *l.shape().dims().last().unwrap_or(&1);
    Ok((l.shape().elem_count() / d.max(1), d))
}

#[derive(Clone, Copy)]
struct RmsNorm {
    eps: f64,
}

fn rms_fwd<T: Float>(x: &[T], w: &[T], d: usize, eps: f64) -> Vec<T> {
    let mut y = vec![T::zero(); x.len()];
    let eps = T::from(eps).unwrap();
    y.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(y, x)| {
        let ms = x.iter().fold(T::zero(), |a, &v| a + v * v) / T::from(d).unwrap();
        let r = (ms + eps).sqrt().recip();
        for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
            *y = x * r * w;
        }
    });
    y
}

fn rms_bwd<T: Float>(x: &[T], w: &[T], g: &[T], d: usize, eps: f64) -> (Vec<T>, Vec<T>) {
    let eps = T::from(eps).unwrap();
    let n = T::from(d).unwrap();
    let mut dx = vec![T::zero(); x.len()];
    // dw summed per thread chunk of rows, then across chunks.
    let dw = dx
        .par_chunks_mut(d * 64)
        .zip(x.par_chunks(d * 64))
        .zip(g.par_chunks(d * 64))
        .map(|((dx, x), g)| {
            let mut dw = vec![T::zero(); d];
            for ((dx, x), g) in dx.chunks_mut(d).zip(x.chunks(d)).zip(g.chunks(d)) {
                let ms = x.iter().fold(T::zero(), |a, &v| a + v * v) / n;
                let r = (ms + eps).sqrt().recip();
                let dot = x.iter().zip(g).zip(w).fold(T::zero(), |a, ((&x, &g), &w)| a + g * w * x) / n;
                let r3 = r * r * r;
                for j in 0..d {
                    dx[j] = r * g[j] * w[j] - x[j] * r3 * dot;
                    dw[j] += g[j] * x[j] * r;
                }
            }
            dw
        })
        .reduce(|| vec![T::zero(); d], |a, b| a.iter().zip(&b).map(|(&a, &b)| a + b).collect());
    (dx, dw)
}

impl candle_core::CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, d) = rows_of(l1)?;
        if l2.shape().elem_count() != d {
            candle_core::bail!("rms-norm: weight of {} for rows of {d}", l2.shape().elem_count());
        }
        let y = match s1 {
            CpuStorage::F32(_) => {
                f32::to_cpu_storage_owned(rms_fwd(slice::<f32>(s1, l1)?, slice(s2, l2)?, d, self.eps))
            }
            CpuStorage::F64(_) => {
                f64::to_cpu_storage_owned(rms_fwd(slice::<f64>(s1, l1)?, slice(s2, l2)?, d, self.eps))
            }
            _ => candle_core::bail!("rms-norm: f32 or f64 only"),
        };
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let d = x.dim(D::Minus1)?;
        let (dx, dw) = match x.dtype() {
            DType::F32 => {
                let (dx, dw) = rms_bwd(&host::<f32>(x)?, &host(w)?, &host(g)?, d, self.eps);
                (Tensor::from_vec(dx, x.shape(), x.device())?, Tensor::from_vec(dw, w.shape(), w.device())?)
            }
            _ => {
                let (dx, dw) = rms_bwd(&host::<f64>(x)?, &host(w)?, &host(g)?, d, self.eps);
                (Tensor::from_vec(dx, x.shape(), x.device())?, Tensor::from_vec(dw, w.shape(), w.device())?)
            }
        };
        Ok((Some(dx), Some(dw)))
    }
}

#[derive(Clone, Copy)]
struct LayerNorm {
    eps: f64,
}

/// Mean and `1/σ` of a row.
fn moments<T: Float>(x: &[T], eps: T) -> (T, T) {
    let n = T::from(x.len()).unwrap();
    let mu = x.iter().fold(T::zero(), |a, &v| a + v) / n;
    let var = x.iter().fold(T::zero(), |a, &v| a + (v - mu) * (v - mu)) / n;
    (mu, (var + eps).sqrt().recip())
}

fn ln_fwd<T: Float>(x: &[T], w: &[T], b: &[T], d: usize, eps: f64) -> Vec<T> {
    let eps = T::from(eps).unwrap();
    let mut y = vec![T::zero(); x.len()];
    y.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(y, x)| {
        let (mu, r) = moments(x, eps);
        for j in 0..d {
            y[j] = (x[j] - mu) * r * w[j] + b[j];
        }
    });
    y
}

fn ln_bwd<T: Float>(x: &[T], w: &[T], g: &[T], d: usize, eps: f64) -> (Vec<T>, Vec<T>, Vec<T>) {
    let eps = T::from(eps).unwrap();
    let n = T::from(d).unwrap();
    let mut dx = vec![T::zero(); x.len()];
    let (dw, db) = dx
        .par_chunks_mut(d * 64)
        .zip(x.par_chunks(d * 64))
        .zip(g.par_chunks(d * 64))
        .map(|((dx, x), g)| {
            let (mut dw, mut db) = (vec![T::zero(); d], vec![T::zero(); d]);
            for ((dx, x), g) in dx.chunks_mut(d).zip(x.chunks(d)).zip(g.chunks(d)) {
                let (mu, r) = moments(x, eps);
                let (mut m1, mut m2) = (T::zero(), T::zero());
                for j in 0..d {
                    let xh = (x[j] - mu) * r;
                    let gw = g[j] * w[j];
                    m1 += gw;
                    m2 += gw * xh;
                    dw[j] += g[j] * xh;
                    db[j] += g[j];
                }
                let (m1, m2) = (m1 / n, m2 / n);
                for j in 0..d {
                    let xh = (x[j] - mu) * r;
                    dx[j] = r * (g[j] * w[j] - m1 - xh * m2);
                }
            }
            (dw, db)
        })
        .reduce(
            || (vec![T::zero(); d], vec![T::zero(); d]),
            |(a1, a2), (b1, b2)| {
                (a1.iter().zip(&b1).map(|(&a, &b)| a + b).collect(), a2.iter().zip(&b2).map(|(&a, &b)| a + b).collect())
            },
        );
    (dx, dw, db)
}

impl candle_core::CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, d) = rows_of(l1)?;
        if l2.shape().elem_count() != d || l3.shape().elem_count() != d {
            candle_core::bail!("layer-norm: weight/bias sizes differ from the rows' {d}");
        }
        let y = match s1 {
            CpuStorage::F32(_) => {
                f32::to_cpu_storage_owned(ln_fwd(slice::<f32>(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?, d, self.eps))
            }
            CpuStorage::F64(_) => {
                f64::to_cpu_storage_owned(ln_fwd(slice::<f64>(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?, d, self.eps))
            }
            _ => candle_core::bail!("layer-norm: f32 or f64 only"),
        };
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = x.dim(D::Minus1)?;
        macro_rules! run {
            ($t:ty) => {{
                let (dx, dw, db) = ln_bwd(&host::<$t>(x)?, &host(w)?, &host(g)?, d, self.eps);
                (
                    Tensor::from_vec(dx, x.shape(), x.device())?,
                    Tensor::from_vec(dw, w.shape(), w.device())?,
                    Tensor::from_vec(db, b.shape(), b.device())?,
                )
            }};
        }
        let (dx, dw, db) = match x.dtype() {
            DType::F32 => run!(f32),
            _ => run!(f64),
        };
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

struct Softmax;

fn softmax_rows<T: Float>(x: &[T], d: usize) -> Vec<T> {
    let mut y = x.to_vec();
    y.par_chunks_mut(d).for_each(|y| {
        simd::vectorized(
            #[inline(always)]
            || simd::softmax_in_place(y),
        )
    });
    y
}

/// `dx = scale · y (g − Σ g y)`, row by row.
fn softmax_bwd<T: Float>(y: &[T], g: &[T], d: usize, scale: T) -> Vec<T> {
    let mut dx = vec![T::zero(); y.len()];
    dx.par_chunks_mut(d).zip(y.par_chunks(d)).zip(g.par_chunks(d)).for_each(|((dx, y), g)| {
        simd::vectorized(
            #[inline(always)]
            || {
                let dot = simd::lane_fold(d, T::zero(), |a, b| a + b, |j| y[j] * g[j]);
                for j in 0..d {
                    dx[j] = y[j] * (g[j] - dot) * scale;
                }
            },
        )
    });
    dx
}

/// The input's gradient of a softmax (plain or masked) from its output `y` and the output's gradient `g`;
/// `scale` is the factor the masked softmax applied to its input.
fn softmax_grad(y: &Tensor, g: &Tensor, scale: f64) -> candle_core::Result<Tensor> {
    let d = y.dim(D::Minus1)?;
    match y.dtype() {
        DType::F32 => {
            Tensor::from_vec(softmax_bwd(&host::<f32>(y)?, &host(g)?, d, scale as f32), y.shape(), y.device())
        }
        _ => Tensor::from_vec(softmax_bwd(&host::<f64>(y)?, &host(g)?, d, scale), y.shape(), y.device()),
    }
}

impl candle_core::CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, d) = rows_of(l)?;
        let y = match s {
            CpuStorage::F32(_) => f32::to_cpu_storage_owned(softmax_rows(slice::<f32>(s, l)?, d)),
            CpuStorage::F64(_) => f64::to_cpu_storage_owned(softmax_rows(slice::<f64>(s, l)?, d)),
            _ => candle_core::bail!("softmax: f32 or f64 only"),
        };
        Ok((y, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        softmax_grad(y, g, 1.0).map(Some)
    }
}

/// Softmax over the last dimension of attention scores times `scale` plus an additive mask, as one op whose
/// backward is the softmax's (the mask is a constant). `x` `(B, G, Q, S)` with the `Q` query rows made of groups of
/// `t` positions (grouped-query heads folded into rows), `mask` `(B, 1, t, S)`: row `q` of batch `b` adds
/// mask row `(b, q mod t)`. The composition scales, broadcasts the mask to the scores' size, adds, and in the
/// backward pass sums a gradient for the mask that nothing uses; here it is one pass forward and one back.
pub fn masked_softmax(x: &Tensor, mask: &Tensor, t: usize, scale: f64) -> Result<Tensor> {
    let (b, g, q, s) = x.dims4()?;
    if !fused(x, &[mask]) || q % t != 0 || mask.dims() != [b, 1, t, s] {
        let m = mask.unsqueeze(1)?; // (B, 1, 1, t, S)
        let x = if scale == 1.0 { x.clone() } else { (x * scale)? };
        let y = x.reshape((b, g, q / t, t, s))?.broadcast_add(&m)?; // (B, G, Q/t, t, S)
        return softmax_last(&y.reshape((b, g, q, s))?); // (B, G, Q, S)
    }
    Ok(x.apply_op1(MaskedSoftmax { mask: mask.detach().contiguous()?, t, scale })?)
}

struct MaskedSoftmax {
    /// `(B, 1, t, S)`
    mask: Tensor,
    t: usize,
    scale: f64,
}

fn masked_softmax_rows<T: Float>(
    x: &[T],
    mask: &[T],
    (rows_per_batch, q, t, s): (usize, usize, usize, usize),
    scale: T,
) -> Vec<T> {
    let mut y = vec![T::zero(); x.len()];
    y.par_chunks_mut(s).zip(x.par_chunks(s)).enumerate().for_each(|(r, (y, x))| {
        let (bi, qi) = (r / rows_per_batch, r % q);
        let m = &mask[(bi * t + qi % t) * s..(bi * t + qi % t + 1) * s];
        simd::vectorized(
            #[inline(always)]
            || {
                for (y, (&x, &m)) in y.iter_mut().zip(x.iter().zip(m)) {
                    *y = x * scale + m;
                }
                simd::softmax_in_place(y)
            },
        )
    });
    y
}

impl candle_core::CustomOp1 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "fused-masked-softmax"
    }

    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, g, q, s) = l.shape().dims4()?;
        let dims = (g * q, q, self.t, s);
        let y = match st {
            CpuStorage::F32(_) => with_slice::<f32, _>(&self.mask, |m| {
                Ok(f32::to_cpu_storage_owned(masked_softmax_rows(slice::<f32>(st, l)?, m, dims, self.scale as f32)))
            }),
            CpuStorage::F64(_) => with_slice::<f64, _>(&self.mask, |m| {
                Ok(f64::to_cpu_storage_owned(masked_softmax_rows(slice::<f64>(st, l)?, m, dims, self.scale)))
            }),
            _ => candle_core::bail!("masked softmax: f32 or f64 only"),
        }
        .map_err(super::to_candle)?;
        Ok((y, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        softmax_grad(y, g, self.scale).map(Some)
    }
}
