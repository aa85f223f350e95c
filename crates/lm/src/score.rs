//! Log-probabilities of completions given prompts, summed over completion tokens only (the prompt is
//! context, not scored), as DPO and the APL paper use them.
//!
//! `completion_logprobs` is differentiable when the model's weights are trainable; the trainer and the
//! scorer share it, so the numbers a user sees from `activepref score` are the ones training optimises.

use crate::model::LanguageModel;
use anyhow::{bail, Result};
use candle_core::{DType, Tensor, D};

/// Per-row results of scoring a batch.
#[derive(Debug, Clone)]
pub struct Scored {
    /// `(B,)` summed completion log-probs (part of the graph when weights are trainable).
    pub sum: Tensor,
    /// `(B,)` number of completion tokens.
    pub count: Vec<usize>,
    /// `(B,)` mean over completion positions of the mean logit (TRL's `logits/*` metric).
    pub mean_logit: Tensor,
    /// `(B, C)` the log-prob of each completion token, `C` the longest completion, zero after a row's end
    /// (part of the graph, like `sum`): what per-token losses (LD-DPO, WPO) need.
    pub tokens: Tensor,
    /// `(B, C)` 1 on a row's completion tokens, 0 after its end.
    pub mask: Tensor,
    /// `(B, C)` `log Σ_v p_v²` of the distribution that predicted each completion token (WPO's weights),
    /// detached, zero after a row's end.
    pub log_sum_sq: Tensor,
}

/// Scores `(prompt, completion)` token pairs in one forward pass (right-padded batch).
///
/// Only the positions that predict a completion token go through the LM head, and they go through the
/// fused head ([`crate::kernels::head`]): no `B × T × V` logits exist, in the forward or the backward pass.
pub fn completion_logprobs(model: &LanguageModel, items: &[(Vec<u32>, Vec<u32>)]) -> Result<Scored> {
    // On candle's thread pool: see `crate::sample`'s decode loop (a no-op when the caller is already on it,
    // as a training step is).
    model.device().with_context(|| completion_logprobs_in_pool(model, items))
}

fn completion_logprobs_in_pool(model: &LanguageModel, items: &[(Vec<u32>, Vec<u32>)]) -> Result<Scored> {
    let dev = model.device().clone();
    let b = items.len();
    if b == 0 {
        bail!("nothing to score: the batch is empty");
    }
    let lens: Vec<usize> = items.iter().map(|(p, c)| p.len() + c.len()).collect();
    let l = *lens.iter().max().unwrap();
    for (i, (p, c)) in items.iter().enumerate() {
        if p.is_empty() {
            bail!("item {i}: the prompt is empty (a completion must be conditioned on at least one token)");
        }
        if c.is_empty() {
            bail!("item {i}: the completion is empty");
        }
        if lens[i] > model.config.max_position {
            bail!("item {i}: {} tokens exceed the model's context of {} positions", lens[i], model.config.max_position);
        }
    }
    let pad = model.tokenizer.pad_token_id;
    let mut ids = vec![pad; b * l];
    // Row of the flattened hidden states that predicts each completion token, and that token.
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for (i, (p, c)) in items.iter().enumerate() {
        ids[i * l..i * l + p.len()].copy_from_slice(p);
        ids[i * l + p.len()..i * l + lens[i]].copy_from_slice(c);
        for (k, &t) in c.iter().enumerate() {
            rows.push((i * (l - 1) + p.len() - 1 + k) as u32);
            targets.push(t);
        }
    }
    let n = rows.len();
    let ids = Tensor::from_vec(ids, (b, l), &dev)?.narrow(1, 0, l - 1)?; // (B, L-1): the last token predicts nothing
    let hidden = model.hidden(&ids, &crate::Positions::fresh(b), None)?; // (B, L-1, d)
    let d = hidden.dim(2)?;
    let hidden = hidden.reshape((b * (l - 1), d))?.index_select(&Tensor::from_vec(rows, n, &dev)?, 0)?; // (N, d)
    let (weight, softcap) = model.head();
    let head = crate::kernels::head::head_logprobs(&hidden, weight, &targets, softcap)?; // (N,) each

    // Back to rows: (B, C) with C the longest completion; padding reads an appended zero.
    let count: Vec<usize> = items.iter().map(|(_, c)| c.len()).collect();
    let c_max = *count.iter().max().unwrap();
    let mut at = vec![n as u32; b * c_max];
    let mut mask = vec![0f32; b * c_max];
    let mut offset = 0;
    for (i, &c) in count.iter().enumerate() {
        for k in 0..c {
            at[i * c_max + k] = (offset + k) as u32;
            mask[i * c_max + k] = 1.0;
        }
        offset += c;
    }
    let at = Tensor::from_vec(at, b * c_max, &dev)?;
    let dtype = head.logp.dtype();
    let zero = Tensor::zeros(1, dtype, &dev)?;
    let per_row = |x: &Tensor| -> Result<Tensor> {
        Ok(Tensor::cat(&[x, &zero], 0)?.index_select(&at, 0)?.reshape((b, c_max))?)
        // (B, C)
    };
    let tokens = per_row(&head.logp)?;
    let sum = tokens.sum(D::Minus1)?; // (B,)
    let cnt = Tensor::from_vec(count.iter().map(|&c| c as f32).collect::<Vec<_>>(), b, &dev)?.to_dtype(dtype)?;
    let mean_logit = per_row(&head.mean_logit)?.sum(D::Minus1)?.div(&cnt)?;
    let log_sum_sq = per_row(&head.log_sum_sq)?;
    let mask = Tensor::from_vec(mask, (b, c_max), &dev)?.to_dtype(dtype)?;
    Ok(Scored { sum, count, mean_logit, tokens, mask, log_sum_sq })
}

/// Scores many pairs without a graph, `batch_size` at a time: `(sum, count)` per item.
pub fn score_all(
    model: &LanguageModel,
    items: &[(Vec<u32>, Vec<u32>)],
    batch_size: usize,
    mut progress: impl FnMut(usize),
) -> Result<Vec<(f64, usize)>> {
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(batch_size.max(1)) {
        let s = completion_logprobs(model, chunk)?;
        let sums: Vec<f64> = s.sum.detach().to_dtype(DType::F64)?.to_vec1()?;
        out.extend(sums.into_iter().zip(s.count));
        progress(out.len());
    }
    Ok(out)
}

/// One token's log-probability under the model, at temperature 1 with no filtering (the raw `log_softmax`
/// of the logits, vLLM's default `raw_logprobs`), with its rank and the most likely tokens at its position.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    /// 1 + how many tokens are more likely (1 = the most likely), as vLLM reports it.
    pub rank: usize,
    /// The `top` most likely tokens at this position, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// Teacher-forced log-probs of whole sequences, without a graph: for every sequence `seqs[i]` and every
/// position `t` from `from[i]` (at least 1: the first token has nothing to condition on) to its end, the
/// log-prob of `seqs[i][t]` given `seqs[i][..t]`, with the `top` most likely tokens there. What a server
/// returns as `prompt_logprobs` and as the log-probs of `echo`ed prompts, and (for a completion) the numbers
/// [`completion_logprobs`] sums.
///
/// Sequences go through the model `batch_size` at a time (right-padded); the head runs over at most 512
/// positions at once, so the `B × T × V` logits of a long sequence never exist together.
pub fn token_logprobs(
    model: &LanguageModel,
    seqs: &[Vec<u32>],
    from: &[usize],
    top: usize,
    batch_size: usize,
) -> Result<Vec<Vec<TokenLogprob>>> {
    if from.len() != seqs.len() {
        bail!("{} start positions given for {} sequences", from.len(), seqs.len());
    }
    let dev = model.device().clone();
    let vocab = model.config.vocab_size;
    let mut out = Vec::with_capacity(seqs.len());
    let bs = batch_size.max(1);
    for (c, chunk) in seqs.chunks(bs).enumerate() {
        let l = chunk.iter().map(Vec::len).max().unwrap_or(0);
        if l > model.config.max_position {
            bail!("a sequence of {l} tokens exceeds the model's context of {} positions", model.config.max_position);
        }
        if chunk.iter().any(|s| s.iter().any(|&t| t as usize >= vocab)) {
            bail!("a token id is outside the model's vocabulary of {vocab}");
        }
        let b = chunk.len();
        let pad = model.tokenizer.pad_token_id;
        let mut ids = vec![pad; b * l];
        for (i, s) in chunk.iter().enumerate() {
            ids[i * l..i * l + s.len()].copy_from_slice(s);
        }
        let ids = Tensor::from_vec(ids, (b, l), &dev)?;
        let h = model.hidden(&ids, &crate::Positions::fresh(b), None)?; // (B, T, d)
        let step = (512 / b).max(1);
        for (i, s) in chunk.iter().enumerate() {
            let start = from[c * bs + i].max(1);
            let mut row = Vec::with_capacity(s.len().saturating_sub(start));
            // Position t is predicted by the hidden state at t - 1.
            let mut t = start;
            while t < s.len() {
                let n = step.min(s.len() - t);
                let hs = h.narrow(0, i, 1)?.narrow(1, t - 1, n)?; // (1, n, d)
                let logits: Vec<Vec<f32>> = model.logits(&hs)?.squeeze(0)?.to_dtype(DType::F32)?.to_vec2()?; // (n, V)
                for (k, lg) in logits.iter().enumerate() {
                    row.push(position_logprob(lg, s[t + k], top));
                }
                t += n;
            }
            out.push(row);
        }
    }
    Ok(out)
}

/// `log_softmax(logits)[token]` with its rank and the `top` best.
fn position_logprob(logits: &[f32], token: u32, top: usize) -> TokenLogprob {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let lse = max as f64 + logits.iter().map(|&x| ((x - max) as f64).exp()).sum::<f64>().ln();
    let lp = |x: f32| (x as f64 - lse) as f32;
    let mine = logits[token as usize];
    let rank = 1 + logits.iter().filter(|&&x| x > mine).count();
    let mut best: Vec<(u32, f32)> = Vec::new();
    if top > 0 {
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        let k = top.min(idx.len());
        // Ties go to the smaller id, so the list does not depend on the sort.
        let better = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
        idx.select_nth_unstable_by(k - 1, better);
        idx.truncate(k);
        idx.sort_by(better);
        best = idx.into_iter().map(|t| (t, lp(logits[t as usize]))).collect();
    }
    TokenLogprob { token, logprob: lp(mine), rank, top: best }
}
