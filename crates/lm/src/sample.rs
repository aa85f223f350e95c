//! Batched sampling with a KV cache: temperature, top-k, top-p, per-row lengths, stop at EOS.
//!
//! Each prompt draws from its own RNG, seeded from the run seed and the prompt's index, so the same seed
//! gives the same random numbers whatever the batch size. The logits are the same up to float rounding (a
//! batch pads its prompts to one length, and other shapes reduce in another order): on SmolLM2, batch 128
//! against batch 1 gave 127 of 128 completions token for token, log-prob sums within 7e-5. Sampling runs
//! without an autograd graph (the weights are plain tensors unless the caller made them trainable).

use crate::arch::layers::Positions;
use crate::model::LanguageModel;
use anyhow::{bail, Result};
use candle_core::{Tensor, D};
use rand::{rngs::StdRng, Rng, SeedableRng};
use rayon::prelude::*;

#[derive(Debug, Clone)]
pub struct SampleParams {
    pub max_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f64,
    /// 0 = no top-k filter.
    pub top_k: usize,
    /// 1.0 = no nucleus filter.
    pub top_p: f64,
    pub seed: u64,
    /// Stop a row at its first EOS token (kept in the output).
    pub stop_at_eos: bool,
}

impl Default for SampleParams {
    fn default() -> Self {
        Self { max_new_tokens: 32, temperature: 1.0, top_k: 0, top_p: 1.0, seed: 0, stop_at_eos: true }
    }
}

/// One sampled completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub tokens: Vec<u32>,
    /// log π(token | prefix) of each sampled token under the model at temperature 1 with no filtering,
    /// the quantity sequence-entropy estimates need.
    pub logprobs: Vec<f32>,
    pub stopped_at_eos: bool,
}

impl Sample {
    pub fn sum_logprob(&self) -> f64 {
        self.logprobs.iter().map(|&x| x as f64).sum()
    }
}

/// The RNG of prompt `index`, independent of how prompts are batched.
pub fn row_rng(seed: u64, index: usize) -> StdRng {
    StdRng::seed_from_u64(row_key(seed, index))
}

fn row_key(seed: u64, index: usize) -> u64 {
    seed ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The seed under which row 0 draws what row `index` draws under `seed`: a request that samples one row
/// alone (one prompt to a server) then gets the same stream as that row of a batch here.
pub fn row_seed(seed: u64, index: usize) -> u64 {
    row_key(seed, index) ^ row_key(0, 0)
}

/// Draws one token from `logits` and returns it with its log-probability under the unfiltered,
/// temperature-1 distribution. Plain temperature-1 sampling (the entropy estimate's case) reuses one
/// pass of exponentials for both.
pub fn sample_with_logprob(logits: &[f32], p: &SampleParams, rng: &mut StdRng) -> (u32, f32) {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    if p.temperature == 1.0 && p.top_k == 0 && p.top_p >= 1.0 {
        let w: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
        let total: f64 = w.iter().map(|&x| x as f64).sum();
        let mut u = rng.random::<f64>() * total;
        let mut tok = logits.len() - 1;
        for (i, &x) in w.iter().enumerate() {
            if u < x as f64 {
                tok = i;
                break;
            }
            u -= x as f64;
        }
        return (tok as u32, logits[tok] - max - total.ln() as f32);
    }
    let total: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let tok = sample_token(logits, p, rng);
    (tok, logits[tok as usize] - max - total.ln() as f32)
}

/// Draws one token from `logits` with the given filters.
pub fn sample_token(logits: &[f32], p: &SampleParams, rng: &mut StdRng) -> u32 {
    if p.temperature <= 0.0 {
        return argmax(logits);
    }
    let t = p.temperature as f32;
    if (p.top_k == 0 || p.top_k >= logits.len()) && p.top_p >= 1.0 {
        // No filter: the arithmetic of the general path below, in the same order (so the same draw), without
        // its two vectors of (index, weight) over the whole vocabulary.
        let max = logits.iter().map(|&l| l / t).fold(f32::NEG_INFINITY, f32::max);
        let w: Vec<f64> = logits.iter().map(|&l| ((l / t - max) as f64).exp()).collect();
        let total: f64 = w.iter().sum();
        let mut u = rng.random::<f64>() * total;
        for (i, &x) in w.iter().enumerate() {
            if u < x {
                return i as u32;
            }
            u -= x;
        }
        return logits.len().saturating_sub(1) as u32;
    }
    let mut cand: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l / t)).collect();
    if p.top_k > 0 && p.top_k < cand.len() {
        cand.select_nth_unstable_by(p.top_k - 1, |a, b| b.1.total_cmp(&a.1));
        cand.truncate(p.top_k);
    }
    let max = cand.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(u32, f64)> = cand.iter().map(|&(i, l)| (i, ((l - max) as f64).exp())).collect();
    if p.top_p < 1.0 {
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let total: f64 = probs.iter().map(|x| x.1).sum();
        let mut acc = 0.0;
        let mut keep = probs.len();
        for (i, x) in probs.iter().enumerate() {
            acc += x.1 / total;
            if acc >= p.top_p {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
    }
    let total: f64 = probs.iter().map(|x| x.1).sum();
    let mut u = rng.random::<f64>() * total;
    for &(i, w) in &probs {
        if u < w {
            return i;
        }
        u -= w;
    }
    probs.last().map(|x| x.0).unwrap_or(0)
}

fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best as u32
}

/// Samples one completion per prompt, `batch_size` prompts at a time. `lengths[i]`, when given, caps
/// prompt i's completion (the APL length sampler); `first_index` offsets the per-prompt RNG streams.
/// `progress` is called with the number of prompts finished.
pub fn generate(
    model: &LanguageModel,
    prompts: &[Vec<u32>],
    params: &SampleParams,
    lengths: Option<&[usize]>,
    batch_size: usize,
    first_index: usize,
    progress: impl FnMut(usize),
) -> Result<Vec<Sample>> {
    generate_watched(model, prompts, params, lengths, batch_size, first_index, progress, |_, _| true)
}

/// [`generate`], calling `on_token(i, sample)` after each token sampled for prompt `i` (counted from
/// `first_index`), with the sample so far. Returning `false` ends that row there (the token is kept), which
/// is how a server streams text as it is made and stops at a stop string instead of sampling on. Other
/// rows are unaffected: each row has its own RNG stream.
#[allow(clippy::too_many_arguments)]
pub fn generate_watched(
    model: &LanguageModel,
    prompts: &[Vec<u32>],
    params: &SampleParams,
    lengths: Option<&[usize]>,
    batch_size: usize,
    first_index: usize,
    mut progress: impl FnMut(usize),
    mut on_token: impl FnMut(usize, &Sample) -> bool,
) -> Result<Vec<Sample>> {
    let batches = Batches { lengths, batch_size, first_index, force_device_draw: false };
    generate_batches(model, prompts, params, batches, &mut progress, &mut on_token)
}

/// [`generate`] drawing every token with [`crate::sample_device`] wherever the model is: what a CUDA model
/// does, runnable on the CPU (the tests compare it with the host draw). `params` must allow the device draw
/// ([`device_samples`]).
pub fn generate_device_draw(
    model: &LanguageModel,
    prompts: &[Vec<u32>],
    params: &SampleParams,
    batch_size: usize,
) -> Result<Vec<Sample>> {
    if !device_samples(params, model.config.vocab_size) {
        bail!("the device draw needs a temperature above 0 and no top-k or top-p filter");
    }
    let batches = Batches { lengths: None, batch_size, first_index: 0, force_device_draw: true };
    generate_batches(model, prompts, params, batches, &mut |_| {}, &mut |_, _| true)
}

/// How [`generate_batches`] splits and numbers its prompts, and where it draws.
struct Batches<'a> {
    lengths: Option<&'a [usize]>,
    batch_size: usize,
    first_index: usize,
    force_device_draw: bool,
}

fn generate_batches(
    model: &LanguageModel,
    prompts: &[Vec<u32>],
    params: &SampleParams,
    b: Batches,
    progress: &mut dyn FnMut(usize),
    on_token: &mut dyn FnMut(usize, &Sample) -> bool,
) -> Result<Vec<Sample>> {
    if let Some(l) = b.lengths {
        if l.len() != prompts.len() {
            bail!("{} completion lengths given for {} prompts", l.len(), prompts.len());
        }
    }
    let size = b.batch_size.max(1);
    let mut out = Vec::with_capacity(prompts.len());
    for (chunk_i, chunk) in prompts.chunks(size).enumerate() {
        let start = chunk_i * size;
        let lens: Vec<usize> = (0..chunk.len())
            .map(|i| b.lengths.map(|l| l[start + i].min(params.max_new_tokens)).unwrap_or(params.max_new_tokens))
            .collect();
        out.extend(generate_batch(model, chunk, params, &lens, b.first_index + start, on_token, b.force_device_draw)?);
        progress(out.len());
    }
    Ok(out)
}

fn generate_batch(
    model: &LanguageModel,
    prompts: &[Vec<u32>],
    params: &SampleParams,
    max_new: &[usize],
    first_index: usize,
    on_token: &mut dyn FnMut(usize, &Sample) -> bool,
    force_device_draw: bool,
) -> Result<Vec<Sample>> {
    let dev = model.device().clone();
    let b = prompts.len();
    let t0 = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let max_steps = max_new.iter().copied().max().unwrap_or(0);
    for (i, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            bail!("prompt {} is empty: at least one token is needed to condition on", first_index + i);
        }
        if p.len() + max_new[i] > model.config.max_position {
            bail!(
                "prompt {} has {} tokens; with {} new tokens it exceeds the model's context of {} positions",
                first_index + i,
                p.len(),
                max_new[i],
                model.config.max_position
            );
        }
    }
    let mut samples: Vec<Sample> =
        (0..b).map(|_| Sample { tokens: vec![], logprobs: vec![], stopped_at_eos: false }).collect();
    if max_steps == 0 {
        return Ok(samples);
    }
    // One RNG per row still generating, aligned with `active` (dropped with its row, like the cache).
    let mut rngs: Vec<StdRng> = (0..b).map(|i| row_rng(params.seed, first_index + i)).collect();
    let pad = model.tokenizer.pad_token_id;
    // Samples of the same prompt share its prefill: the prompt goes through the model once and its KV
    // cache (and last logits) are copied to each of its rows. Each row's numbers are what a prefill of
    // its own would give (attention and the matmuls are row-wise); only the work is not repeated.
    let (unique, of_row) = dedupe(prompts);
    let left_pad: Vec<usize> = prompts.iter().map(|p| t0 - p.len()).collect();
    let mut ids = Vec::with_capacity(unique.len() * t0);
    for &u in &unique {
        let p = &prompts[u];
        ids.extend(std::iter::repeat_n(pad, t0 - p.len()));
        ids.extend_from_slice(p);
    }
    let mut input = Tensor::from_vec(ids, (unique.len(), t0), &dev)?;
    let mut ctx = Positions { start: 0, left_pad: unique.iter().map(|&u| left_pad[u]).collect() };
    let mut cache = model.new_cache(t0 + max_steps);
    // Rows still generating, as indices into `samples`; the cache holds exactly these rows.
    let mut active: Vec<usize> = (0..b).collect();
    let mut prefill = true;
    // Off the CPU, plain temperature sampling runs where the logits are (no B × V copy to the host per step).
    let on_device = force_device_draw || (!dev.is_cpu() && device_samples(params, model.config.vocab_size));
    loop {
        // Each step's forward and draw run on candle's thread pool (`Device::with_context`): its parallel
        // products and element-wise passes are then forks inside the pool, not wake-ups of the pool's threads
        // while this one sleeps (docs/benchmarks.md). `on_token` stays on this thread, so it need not be `Send`.
        let picks: Vec<(u32, f32)> = dev.with_context(|| -> Result<_> {
            let t = input.dim(1)?;
            let h = model.hidden(&input, &ctx, Some(&mut cache))?;
            let h_last = h.narrow(1, t - 1, 1)?; // (B', 1, d)
            let mut logits = model.logits(&h_last)?.squeeze(1)?.to_dtype(candle_core::DType::F32)?; // (B', V)
            if std::mem::take(&mut prefill) && unique.len() < b {
                // (U, ·) → (B, ·): every row gets its prompt's cache and logits.
                let of_row = Tensor::new(of_row.as_slice(), &dev)?;
                cache.select_rows(&of_row)?;
                logits = logits.index_select(&of_row, 0)?; // (B, V)
                ctx.left_pad = left_pad.clone();
            }
            ctx.start += t;
            Ok(if on_device {
                // Each row's uniform number from its own stream, as the host sampler draws it; the draw itself
                // where the logits are.
                let u: Vec<f64> = rngs.iter_mut().map(|r| r.random::<f64>()).collect();
                let (toks, lps) = crate::sample_device::sample_rows(&logits, &u, params.temperature)?;
                toks.into_iter().zip(lps).collect()
            } else {
                // Draw every row's token in parallel (a pass over the vocabulary per row): each row has its own
                // RNG, so the draws do not depend on the threads.
                let rows: Vec<Vec<f32>> = logits.to_vec2()?;
                rows.par_iter()
                    .zip(rngs.par_iter_mut())
                    .map(|(row, rng)| sample_with_logprob(row, params, rng))
                    .collect()
            })
        })?;
        let mut next = Vec::with_capacity(active.len());
        let mut keep = Vec::with_capacity(active.len());
        for (r, &si) in active.iter().enumerate() {
            let (tok, lp) = picks[r];
            let s = &mut samples[si];
            s.tokens.push(tok);
            s.logprobs.push(lp);
            let eos = params.stop_at_eos && model.tokenizer.is_eos(tok);
            s.stopped_at_eos = eos;
            let go_on = on_token(first_index + si, s);
            if go_on && !eos && s.tokens.len() < max_new[si] {
                keep.push(r as u32);
                next.push(tok);
            }
        }
        if keep.is_empty() {
            break;
        }
        if keep.len() < active.len() {
            let keep_t = Tensor::new(keep.as_slice(), &dev)?;
            cache.select_rows(&keep_t)?;
            ctx.left_pad = keep.iter().map(|&r| ctx.left_pad[r as usize]).collect();
            active = keep.iter().map(|&r| active[r as usize]).collect();
            rngs = keep.iter().map(|&r| rngs[r as usize].clone()).collect();
        }
        input = Tensor::from_vec(next, (active.len(), 1), &dev)?;
    }
    Ok(samples)
}

/// Whether [`crate::sample_device`] can draw with `params`: a temperature above 0 and no top-k or top-p filter.
pub fn device_samples(params: &SampleParams, vocab: usize) -> bool {
    params.temperature > 0.0 && (params.top_k == 0 || params.top_k >= vocab) && params.top_p >= 1.0
}

/// The distinct prompts of a batch (index of each one's first row) and, for every row, the position of its
/// prompt in that list.
fn dedupe(prompts: &[Vec<u32>]) -> (Vec<usize>, Vec<u32>) {
    let mut first: std::collections::HashMap<&[u32], u32> = std::collections::HashMap::new();
    let mut unique = Vec::new();
    let of_row = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            *first.entry(p.as_slice()).or_insert_with(|| {
                unique.push(i);
                (unique.len() - 1) as u32
            })
        })
        .collect();
    (unique, of_row)
}

/// Monte-Carlo estimate of each prompt's sequence entropy, `H(x) ≈ (1/n) Σ_j −log π(y_j | x)` with
/// `y_j ~ π(·|x)` (Kadavath et al. 2022, the APL paper's estimator; summed over tokens, not
/// length-normalised). Prompt `i` is scored with its own `n` samples only.
pub fn sequence_entropy(
    model: &LanguageModel,
    prompts: &[Vec<u32>],
    n: usize,
    params: &SampleParams,
    lengths: Option<&[usize]>,
    batch_size: usize,
) -> Result<Vec<f64>> {
    if n == 0 {
        bail!("the entropy estimate needs at least one sample per prompt (n = 0)");
    }
    // Prompt i's j-th sample is row i*n + j; lengths repeat per prompt.
    let rep: Vec<Vec<u32>> = prompts.iter().flat_map(|p| std::iter::repeat_n(p.clone(), n)).collect();
    let rep_len: Option<Vec<usize>> = lengths.map(|l| l.iter().flat_map(|&x| std::iter::repeat_n(x, n)).collect());
    let samples = generate(model, &rep, params, rep_len.as_deref(), batch_size, 0, |_| {})?;
    Ok(samples.chunks(n).map(|c| c.iter().map(|s| -s.sum_logprob()).sum::<f64>() / n as f64).collect())
}

/// Log-probabilities of the token after `ids` (one full forward, no cache).
pub fn next_token_logprobs(model: &LanguageModel, ids: &[u32]) -> Result<Vec<f32>> {
    let input = Tensor::new(ids, model.device())?.unsqueeze(0)?;
    let logits = model.forward(&input)?; // (1, T, V)
    let last = logits.narrow(1, ids.len() - 1, 1)?.squeeze(1)?.squeeze(0)?;
    Ok(candle_nn::ops::log_softmax(&last.to_dtype(candle_core::DType::F32)?, D::Minus1)?.to_vec1()?)
}
