//! The LM head fused with log-softmax and the gather of each row's target token.
//!
//! Scoring a completion needs one number per position, `log p(target)`, but the plain path builds the
//! logits of every position over the whole vocabulary (`N × V`, 49,152 columns for SmolLM2), then a
//! log-softmax of the same size, and keeps both for the backward pass. Here rows go through in chunks:
//! hidden chunk → logits chunk → (log-sum-exp, the target's logit, the mean logit), and the backward pass
//! recomputes each chunk's logits, so no `N × V` tensor ever exists. The gradients follow from
//! `∂ log p_t / ∂ z_j = [j = t] − p_j`:
//! `dH = dZ W` and `dW = dZᵀ H` with `dZ = g (onehot − softmax(z))`, chunk by chunk, or for a head in the graph
//! tile by tile within blocks of the vocabulary, so that each block of `dW` is written once (Liger-Kernel's fused
//! linear cross-entropy does the same on GPUs: Hsu et al. 2024, arXiv 2410.10989).
//!
//! The CPU path (f32 and f64) calls `gemm` directly on the tensors' buffers; other devices and dtypes take
//! [`reference`], the composition of candle ops, which the tests hold the fused path to.

use super::{simd, slice as cpu_slice, to_candle, with_slice, Float};
use anyhow::{bail, Result};
use candle_core::{CpuStorage, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

/// Per-row results, each `(N,)`.
#[derive(Debug, Clone)]
pub struct HeadOut {
    /// `log p(target)` under the softmax of the (soft-capped) logits: part of the graph.
    pub logp: Tensor,
    /// The mean logit of the row (TRL's `logits/*` metric), detached.
    pub mean_logit: Tensor,
    /// `log Σ_v p_v²`, what WPO's weights need (`logsumexp(2z) − 2 logsumexp(z)`), detached.
    pub log_sum_sq: Tensor,
}

/// Rows per chunk: `ROWS × V` logits live at a time (12 MB for SmolLM2 in f32).
const ROWS: usize = 64;

/// Columns of the fused op's output: log p(target), log-sum-exp, mean logit, log Σ p².
const COLS: usize = 4;

/// `log p(targets[i] | hidden[i])` for hidden states `(N, d)` and a head `weight` `(V, d)`, logits
/// optionally soft-capped (`c · tanh(z / c)`, Gemma). The weight gets a gradient when it is a trainable
/// variable (full fine-tuning, tied embeddings included).
pub fn head_logprobs(hidden: &Tensor, weight: &Tensor, targets: &[u32], softcap: Option<f64>) -> Result<HeadOut> {
    let (n, d) = hidden.dims2()?;
    let (v, dw) = weight.dims2()?;
    if d != dw {
        bail!("head: hidden size {d} but the head weight is ({v}, {dw})");
    }
    if targets.len() != n {
        bail!("head: {} targets for {n} rows", targets.len());
    }
    if let Some(&t) = targets.iter().find(|&&t| t as usize >= v) {
        bail!("head: target token {t} is outside the vocabulary of {v}");
    }
    if !fused(hidden, weight) {
        return reference(hidden, weight, targets, softcap);
    }
    let hidden = hidden.contiguous()?;
    let op = FusedHead { targets: targets.to_vec(), softcap, weight: None };
    let out = if weight.track_op() {
        hidden.apply_op2(&weight.contiguous()?, op)?
    } else {
        let op = FusedHead { weight: Some(weight.detach().contiguous()?), ..op };
        hidden.apply_op1(op)?
    }; // (N, COLS)
    Ok(HeadOut {
        logp: out.narrow(1, 0, 1)?.squeeze(1)?,
        mean_logit: out.narrow(1, 2, 1)?.squeeze(1)?.detach(),
        log_sum_sq: out.narrow(1, 3, 1)?.squeeze(1)?.detach(),
    })
}

fn fused(hidden: &Tensor, weight: &Tensor) -> bool {
    hidden.device().is_cpu()
        && weight.device().is_cpu()
        && matches!(hidden.dtype(), DType::F32 | DType::F64)
        && weight.dtype() == hidden.dtype()
}

/// The same numbers through candle's differentiable ops: the full `(N, V)` logits, computed in f32 or
/// wider.
pub fn reference(hidden: &Tensor, weight: &Tensor, targets: &[u32], softcap: Option<f64>) -> Result<HeadOut> {
    let acc = if hidden.dtype() == DType::F64 { DType::F64 } else { DType::F32 };
    let w = if weight.dtype() != hidden.dtype() { weight.to_dtype(hidden.dtype())? } else { weight.clone() };
    let mut z = hidden.matmul(&w.t()?)?.to_dtype(acc)?; // (N, V)
    if let Some(c) = softcap {
        z = ((z / c)?.tanh()? * c)?;
    }
    let lse = z.log_sum_exp(D::Minus1)?; // (N,)
    let t = Tensor::from_slice(targets, (targets.len(), 1), hidden.device())?;
    let logp = (z.gather(&t, D::Minus1)?.squeeze(D::Minus1)? - &lse)?;
    let mean_logit = z.detach().mean(D::Minus1)?;
    let log_sum_sq = ((z.detach() * 2.0)?.log_sum_exp(D::Minus1)? - (lse.detach() * 2.0)?)?;
    Ok(HeadOut { logp, mean_logit, log_sum_sq })
}

/// The fused op. With `weight` set it is a one-input op over the hidden states (a frozen head); without, a
/// two-input op whose second input is the head weight.
struct FusedHead {
    targets: Vec<u32>,
    softcap: Option<f64>,
    weight: Option<Tensor>,
}

/// `dst (m × n) = [dst +] a (m × k) · b (k × n)`, each operand given by its row and column strides, on the
/// calling thread (the callers split the work).
#[allow(clippy::too_many_arguments)]
fn gemm<T: Float>(
    dst: &mut [T],
    (m, n, k): (usize, usize, usize),
    a: &[T],
    (a_rs, a_cs): (usize, usize),
    b: &[T],
    (b_rs, b_cs): (usize, usize),
    accumulate: bool,
) {
    assert!(dst.len() >= m * n && (m == 0 || k == 0 || (a.len() > (m - 1) * a_rs + (k - 1) * a_cs)));
    assert!(n == 0 || k == 0 || b.len() > (k - 1) * b_rs + (n - 1) * b_cs);
    // SAFETY: the asserts above keep every index the strides reach inside the slices; dst does not alias
    // a or b (it is a distinct &mut).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// One chunk's logits `z = H Wᵀ` `(rows, V)`, soft-capped if asked.
fn logits<T: Float>(z: &mut [T], h: &[T], w: &[T], rows: usize, v: usize, d: usize, softcap: Option<f64>) {
    super::linear::x_wt_into(z, h, rows, d, w, v);
    if let Some(c) = softcap {
        let c = T::from(c).unwrap();
        z.par_chunks_mut(v).for_each(|row| row.iter_mut().for_each(|x| *x = (*x / c).tanh() * c));
    }
}

fn forward<T: Float>(h: &[T], w: &[T], targets: &[u32], v: usize, d: usize, softcap: Option<f64>) -> Vec<T> {
    let n = targets.len();
    let mut out = vec![T::zero(); n * COLS];
    let mut z = vec![T::zero(); ROWS.min(n) * v];
    for (c, (hc, oc)) in h.chunks(ROWS * d).zip(out.chunks_mut(ROWS * COLS)).enumerate() {
        let rows = hc.len() / d;
        let z = &mut z[..rows * v];
        logits(z, hc, w, rows, v, d, softcap);
        let tc = &targets[c * ROWS..c * ROWS + rows];
        oc.par_chunks_mut(COLS).zip(z.par_chunks_mut(v)).zip(tc.par_iter()).for_each(|((o, zr), &t)| {
            // With e = exp(z − max): lse = max + ln Σe and log Σp² = ln Σe² − 2 ln Σe. The row's logits are
            // not needed after this, so e overwrites them.
            let zt = zr[t as usize];
            let (m, sum, s1, s2) = simd::vectorized(
                #[inline(always)]
                || {
                    let (m, sum) = (simd::max(zr), simd::sum(zr));
                    zr.iter_mut().for_each(|x| *x = (*x - m).vexp());
                    let s2 = simd::lane_fold(v, T::zero(), |a, b| a + b, |j| zr[j] * zr[j]);
                    (m, sum, simd::sum(zr), s2)
                },
            );
            let lse = m + s1.ln();
            o[0] = zt - lse;
            o[1] = lse;
            o[2] = sum / T::from(v).unwrap();
            o[3] = s2.ln() - s1.ln() - s1.ln();
        });
    }
    out
}

/// `∂L/∂(raw logit)` in place over a row of (soft-capped) logits `z`, `target` the target's index in the row
/// if it is there: `g ([target] − p)` with `p = exp(z − lse)`, times the cap's derivative
/// `1 − tanh² = 1 − (z/c)²`.
#[inline(always)]
fn logit_grads<T: Float>(z: &mut [T], target: Option<usize>, g: T, lse: T, cap: Option<T>) {
    let zt = target.map(|t| z[t]);
    simd::vectorized(
        #[inline(always)]
        || match cap {
            None => z.iter_mut().for_each(|x| *x = g * -(*x - lse).vexp()),
            Some(c) => z.iter_mut().for_each(|x| {
                let th = *x / c;
                *x = g * -(*x - lse).vexp() * (T::one() - th * th)
            }),
        },
    );
    if let (Some(t), Some(zt)) = (target, zt) {
        let dz = g * (T::one() - (zt - lse).vexp());
        z[t] = match cap {
            Some(c) => dz * (T::one() - (zt / c) * (zt / c)),
            None => dz,
        };
    }
}

/// The gradient of the hidden states `(N, d)` through a frozen head, from the gradient of each row's log-prob
/// `g` and the forward's log-sum-exp per row, in chunks of rows. A head in the graph takes
/// [`backward_trained`].
#[allow(clippy::too_many_arguments)]
fn backward<T: Float>(
    h: &[T],
    w: &[T],
    targets: &[u32],
    lse: &[T],
    g: &[T],
    v: usize,
    d: usize,
    softcap: Option<f64>,
) -> Vec<T> {
    let n = targets.len();
    let mut dh = vec![T::zero(); n * d];
    let mut z = vec![T::zero(); ROWS.min(n) * v];
    for c in 0..n.div_ceil(ROWS) {
        let r0 = c * ROWS;
        let rows = ROWS.min(n - r0);
        let hc = &h[r0 * d..(r0 + rows) * d];
        let z = &mut z[..rows * v];
        logits(z, hc, w, rows, v, d, softcap);
        let cap = softcap.map(|c| T::from(c).unwrap());
        z.par_chunks_mut(v).enumerate().for_each(|(i, zr)| {
            let (gi, li, t) = (g[r0 + i], lse[r0 + i], targets[r0 + i] as usize);
            logit_grads(zr, Some(t), gi, li, cap);
        });
        // dH_chunk = dZ (rows × V) · W (V × d), split by columns of W across threads: gemm's own threading
        // splits this shape (few rows, V deep) worse (26.5 → 22 ms per 64-row chunk of SmolLM2's head).
        dh[r0 * d..(r0 + rows) * d].copy_from_slice(&super::linear::x_w(z, rows, v, w, d));
    }
    dh
}

/// Vocabulary rows per task of [`backward_trained`]: its block of `dW` (2.4 MB for SmolLM2) stays in cache while
/// every row tile adds to it.
const VOCAB_BLOCK: usize = 1024;
/// Rows per tile of [`backward_trained`]: a tile's logits are `TILE_ROWS × VOCAB_BLOCK` (1 MB in f32).
const TILE_ROWS: usize = 256;

/// [`backward`] for a head in the graph (full fine-tuning; tied embeddings), in blocks of the vocabulary rather
/// than chunks of rows. Row chunks would add each chunk's `dZᵀ H` into all of `dW` (`V × d`, 113 MB for
/// SmolLM2): a pass over it per 64 rows, with only 64 multiply-adds per element per pass (48 GFLOP/s measured,
/// the product's three others run at ~190). Here each task owns a block of `dW` and computes its logits tile
/// by tile, so `dW` is written once and no `N × V` tensor exists either; each task sums its own `dH`.
#[allow(clippy::too_many_arguments)]
fn backward_trained<T: Float>(
    h: &[T],
    w: &[T],
    targets: &[u32],
    lse: &[T],
    g: &[T],
    v: usize,
    d: usize,
    softcap: Option<f64>,
) -> (Vec<T>, Vec<T>) {
    let n = targets.len();
    let mut dw = vec![T::zero(); v * d];
    let dw_addr = dw.as_mut_ptr() as usize;
    let cap = softcap.map(|c| T::from(c).unwrap());
    let blocks: Vec<usize> = (0..v).step_by(VOCAB_BLOCK).collect();
    let dh = blocks
        .par_iter()
        .fold(
            || vec![T::zero(); n * d],
            |mut dh, &b0| {
                let vb = VOCAB_BLOCK.min(v - b0);
                let wb = &w[b0 * d..(b0 + vb) * d];
                // SAFETY: the task for block b0 alone writes rows b0..b0+vb of dW; dW outlives the loop.
                let dwb = unsafe { std::slice::from_raw_parts_mut((dw_addr as *mut T).add(b0 * d), vb * d) };
                let mut z = vec![T::zero(); TILE_ROWS.min(n) * vb];
                for r0 in (0..n).step_by(TILE_ROWS) {
                    let rows = TILE_ROWS.min(n - r0);
                    let hc = &h[r0 * d..(r0 + rows) * d];
                    let z = &mut z[..rows * vb];
                    // Z = H_tile W_blockᵀ (rows × vb), soft-capped as the forward's.
                    gemm(z, (rows, vb, d), hc, (d, 1), wb, (1, d), false);
                    for (i, zr) in z.chunks_mut(vb).enumerate() {
                        let (gi, li, t) = (g[r0 + i], lse[r0 + i], targets[r0 + i] as usize);
                        if let Some(c) = cap {
                            zr.iter_mut().for_each(|x| *x = (*x / c).tanh() * c);
                        }
                        logit_grads(zr, t.checked_sub(b0).filter(|&j| j < vb), gi, li, cap);
                    }
                    // dH_tile += dZ (rows × vb) · W_block (vb × d); dW_block += dZᵀ (vb × rows) · H_tile.
                    gemm(&mut dh[r0 * d..(r0 + rows) * d], (rows, d, vb), z, (vb, 1), wb, (d, 1), true);
                    gemm(dwb, (vb, d, rows), z, (1, vb), hc, (d, 1), r0 > 0);
                }
                dh
            },
        )
        .reduce(
            || vec![T::zero(); n * d],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += *b);
                a
            },
        );
    (dh, dw)
}

fn storage<T: Float>(x: Vec<T>) -> CpuStorage {
    T::to_cpu_storage_owned(x)
}

impl FusedHead {
    fn fwd(
        &self,
        h: &CpuStorage,
        hl: &Layout,
        ws: Option<(&CpuStorage, &Layout)>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, d) = hl.shape().dims2()?;
        let run = |wt: &Tensor| -> candle_core::Result<CpuStorage> {
            let v = wt.dim(0)?;
            match h {
                CpuStorage::F32(_) => with_slice::<f32, _>(wt, |w| {
                    Ok(storage(forward(cpu_slice::<f32>(h, hl)?, w, &self.targets, v, d, self.softcap)))
                }),
                _ => with_slice::<f64, _>(wt, |w| {
                    Ok(storage(forward(cpu_slice::<f64>(h, hl)?, w, &self.targets, v, d, self.softcap)))
                }),
            }
            .map_err(to_candle)
        };
        let out = match (&self.weight, ws) {
            (Some(wt), _) => run(wt)?,
            (None, Some((s, l))) => {
                let v = l.shape().dims2()?.0;
                match h {
                    CpuStorage::F32(_) => storage(forward(
                        cpu_slice::<f32>(h, hl)?,
                        cpu_slice::<f32>(s, l)?,
                        &self.targets,
                        v,
                        d,
                        self.softcap,
                    )),
                    _ => storage(forward(
                        cpu_slice::<f64>(h, hl)?,
                        cpu_slice::<f64>(s, l)?,
                        &self.targets,
                        v,
                        d,
                        self.softcap,
                    )),
                }
            }
            (None, None) => candle_core::bail!("fused head: no weight"),
        };
        Ok((out, Shape::from((n, COLS))))
    }

    /// `(dH, dW)` as tensors; `dW` only when the weight is an input of the op.
    fn bwd(&self, h: &Tensor, w: &Tensor, res: &Tensor, grad: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let (n, d) = h.dims2()?;
        let v = w.dim(0)?;
        let want_w = self.weight.is_none();
        let res = res.contiguous()?;
        let lse = res.narrow(1, 1, 1)?.squeeze(1)?.contiguous()?;
        let g = grad.narrow(1, 0, 1)?.squeeze(1)?.contiguous()?;
        let dev = h.device();
        fn run<T: Float>(
            op: &FusedHead,
            [h, w, lse, g]: [&Tensor; 4],
            v: usize,
            d: usize,
            want_w: bool,
        ) -> Result<(Vec<T>, Option<Vec<T>>)> {
            with_slice::<T, _>(h, |h| {
                with_slice::<T, _>(w, |w| {
                    with_slice::<T, _>(lse, |lse| {
                        with_slice::<T, _>(g, |g| {
                            Ok(if want_w {
                                let (dh, dw) = backward_trained(h, w, &op.targets, lse, g, v, d, op.softcap);
                                (dh, Some(dw))
                            } else {
                                (backward(h, w, &op.targets, lse, g, v, d, op.softcap), None)
                            })
                        })
                    })
                })
            })
        }
        let args = [h, w, &lse, &g];
        Ok(match h.dtype() {
            DType::F32 => {
                let (dh, dw) = run::<f32>(self, args, v, d, want_w)?;
                (Tensor::from_vec(dh, (n, d), dev)?, dw.map(|x| Tensor::from_vec(x, (v, d), dev)).transpose()?)
            }
            _ => {
                let (dh, dw) = run::<f64>(self, args, v, d, want_w)?;
                (Tensor::from_vec(dh, (n, d), dev)?, dw.map(|x| Tensor::from_vec(x, (v, d), dev)).transpose()?)
            }
        })
    }
}

impl candle_core::CustomOp1 for FusedHead {
    fn name(&self) -> &'static str {
        "fused-head-logprob"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.fwd(s, l, None)
    }

    fn bwd(&self, h: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let Some(w) = self.weight.as_ref() else { candle_core::bail!("fused head: the one-input op has no weight") };
        let (dh, _) = FusedHead::bwd(self, h, w, res, grad).map_err(to_candle)?;
        Ok(Some(dh))
    }
}

impl candle_core::CustomOp2 for FusedHead {
    fn name(&self) -> &'static str {
        "fused-head-logprob"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.fwd(s1, l1, Some((s2, l2)))
    }

    fn bwd(
        &self,
        h: &Tensor,
        w: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dh, dw) = FusedHead::bwd(self, h, w, res, grad).map_err(to_candle)?;
        Ok((Some(dh), dw))
    }
}
