//! Sampling on the device that holds the logits: without top-k or top-p, a draw needs only each row's
//! uniform number (from its own RNG on the host, as [`crate::sample`] draws it) and returns a token and its
//! log-probability, so a decoding step moves `B` numbers each way instead of the `B × V` logits.
//!
//! The draw is the host's inverse-CDF draw: the first token whose running sum of `exp(z / T − max)` exceeds
//! `u · total`. The running sum over the vocabulary is computed in two levels of blocks of [`BLOCK`] tokens,
//! each a matrix product with a triangular matrix (candle has no scan on CUDA): the block totals' running sum
//! picks the block, the running sum inside that block picks the token. In f32, against the host's f64, a
//! draw that lands within rounding of a boundary can pick the neighbouring token.

use anyhow::Result;
use candle_core::{DType, Device, Tensor, D};

/// Tokens per block of the two-level running sum.
const BLOCK: usize = 256;

/// `(n, n)` with ones on and above the diagonal: `x · U` is the inclusive running sum of `x`'s rows.
fn upper(n: usize, dev: &Device) -> Result<Tensor> {
    let mut m = vec![0f32; n * n];
    for i in 0..n {
        for j in i..n {
            m[i * n + j] = 1.0;
        }
    }
    Ok(Tensor::from_vec(m, (n, n), dev)?)
}

/// How many entries of each row of `cum` `(B, n)` are at most `target` `(B, 1)`: the index of the first
/// entry above it.
fn count_at_most(cum: &Tensor, target: &Tensor) -> Result<Tensor> {
    Ok(cum.broadcast_le(target)?.to_dtype(DType::F32)?.sum(D::Minus1)?) // (B,)
}

/// Draws one token per row of `logits` `(B, V)` at `temperature` (> 0) with the uniform numbers `u` (one per
/// row, in [0, 1)), and returns the tokens and their log-probabilities under the unfiltered temperature-1
/// distribution (what [`crate::sample::sample_with_logprob`] returns).
pub fn sample_rows(logits: &Tensor, u: &[f64], temperature: f64) -> Result<(Vec<u32>, Vec<f32>)> {
    let dev = logits.device().clone();
    let logits = logits.to_dtype(DType::F32)?;
    let (b, v) = logits.dims2()?;
    anyhow::ensure!(u.len() == b, "{} uniform numbers for {b} rows", u.len());
    anyhow::ensure!(temperature > 0.0, "device sampling needs a temperature > 0 (greedy takes the argmax)");
    let z = (&logits / temperature)?;
    let w = z.broadcast_sub(&z.max_keepdim(D::Minus1)?)?.exp()?; // (B, V)
    let nb = v.div_ceil(BLOCK);
    let w = w.pad_with_zeros(D::Minus1, 0, nb * BLOCK - v)?.reshape((b, nb, BLOCK))?; // (B, nb, BLOCK)
    let block_cum = w.sum(D::Minus1)?.matmul(&upper(nb, &dev)?)?; // (B, nb) inclusive
    let total = block_cum.narrow(1, nb - 1, 1)?; // (B, 1)
    let u = Tensor::from_vec(u.iter().map(|&x| x as f32).collect::<Vec<_>>(), (b, 1), &dev)?;
    let target = (u * &total)?; // (B, 1)
                                // The block: how many blocks end at or below the target (clamped: rounding can leave the target at the total).
    let kb = count_at_most(&block_cum, &target)?.clamp(0f32, (nb - 1) as f32)?.to_dtype(DType::U32)?; // (B,)
    let before = (block_cum.gather(&kb.unsqueeze(1)?, 1)? - w.sum(D::Minus1)?.gather(&kb.unsqueeze(1)?, 1)?)?; // (B, 1)
    let idx = kb.reshape((b, 1, 1))?.broadcast_as((b, 1, BLOCK))?.contiguous()?;
    let row = w.gather(&idx, 1)?.squeeze(1)?; // (B, BLOCK)
    let inner = row.matmul(&upper(BLOCK, &dev)?)?; // (B, BLOCK) inclusive
    let pos = count_at_most(&inner, &(target - before)?)?.clamp(0f32, (BLOCK - 1) as f32)?; // (B,)
    let kb_f = kb.to_dtype(DType::F32)?;
    let tok = ((kb_f * BLOCK as f64)? + pos)?.clamp(0f32, (v - 1) as f32)?.to_dtype(DType::U32)?; // (B,)
                                                                                                  // log p(token) at temperature 1, unfiltered.
    let lse = logits.log_sum_exp(D::Minus1)?; // (B,)
    let lp = (logits.gather(&tok.unsqueeze(1)?, 1)?.squeeze(1)? - lse)?; // (B,)
    Ok((tok.to_vec1()?, lp.to_vec1()?))
}
