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
}

/// Scores `(prompt, completion)` token pairs in one forward pass (right-padded batch).
pub fn completion_logprobs(model: &LanguageModel, items: &[(Vec<u32>, Vec<u32>)]) -> Result<Scored> {
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
    // Only positions that predict a completion token need logits: from the shortest prompt on.
    let first = items.iter().map(|(p, _)| p.len() - 1).min().unwrap();
    let width = l - 1 - first;
    let pad = model.tokenizer.pad_token_id;
    let mut ids = vec![pad; b * l];
    let mut targets = vec![0u32; b * width];
    let mut mask = vec![0f32; b * width];
    for (i, (p, c)) in items.iter().enumerate() {
        let row: Vec<u32> = p.iter().chain(c.iter()).copied().collect();
        ids[i * l..i * l + row.len()].copy_from_slice(&row);
        for j in 0..width {
            let pos = first + j + 1; // position of the predicted token
            if pos < row.len() {
                targets[i * width + j] = row[pos];
                if pos >= p.len() {
                    mask[i * width + j] = 1.0;
                }
            }
        }
    }
    let ids = Tensor::from_vec(ids, (b, l), &dev)?.narrow(1, 0, l - 1)?; // (B, L-1): the last token predicts nothing
    let hidden = model.hidden(&ids, &crate::Positions::fresh(b), None)?; // (B, L-1, d)
    let hidden = hidden.narrow(1, first, width)?; // (B, W, d)
                                                  // Log-softmax and sums in f32 at least (f64 models stay f64 for gradient checks).
    let acc = if model.dtype() == DType::F64 { DType::F64 } else { DType::F32 };
    let logits = model.logits(&hidden)?.to_dtype(acc)?; // (B, W, V)
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let targets = Tensor::from_vec(targets, (b, width, 1), &dev)?;
    let tok_logp = logp.gather(&targets, D::Minus1)?.squeeze(D::Minus1)?; // (B, W)
    let mask = Tensor::from_vec(mask, (b, width), &dev)?.to_dtype(acc)?;
    let sum = (tok_logp * &mask)?.sum(D::Minus1)?; // (B,)
    let count: Vec<usize> = items.iter().map(|(_, c)| c.len()).collect();
    let cnt = Tensor::from_vec(count.iter().map(|&c| c as f32).collect::<Vec<_>>(), b, &dev)?.to_dtype(acc)?;
    let mean_logit = (logits.detach().mean(D::Minus1)? * &mask)?.sum(D::Minus1)?.div(&cnt)?;
    Ok(Scored { sum, count, mean_logit })
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
