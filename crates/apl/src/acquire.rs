//! Acquisition: which prompt/completion pairs are worth a label.
//!
//! The paper's strategies (Muldrew et al. 2024; docs/algorithm.md#acquisition-functions), with the intended
//! semantics where the released code has bugs:
//! - `random` / `offline`: `need` prompts, one pair each, from the policy / from the starting model;
//! - `entropy`: draw `need·ospf` prompts, keep the `need` with the highest predictive entropy
//!   H(x) ≈ (1/n) Σ_j −log π(y_j|x), y_j ~ π(·|x) at temperature 1 (each prompt scored with its own samples;
//!   `entropy_window_bug` reproduces the released code's sliding window);
//! - `certainty`: `need·ogf` pairs, keep the `need` with the largest |r̂(y0) − r̂(y1)|, the DPO implicit
//!   reward r̂ = β (log π − log π_ref) (the model is confident — and when the oracle disagrees, confidently
//!   wrong, which is what makes these points informative);
//! - `uncertainty`: the same pairs, keep the smallest |Δr̂| (ablation);
//! - `hybrid`: entropy filter (`need·ogf·ospf` prompts → `need·ogf`), then certainty.
//!
//! The last stage's choice from scores is [`select`]: top-k with seeded tie-breaking (in the first round
//! π = π_ref, so every |Δr̂| is 0 and the choice is a seeded random one, not argsort's arbitrary order), or
//! stochastic batch acquisition (Kirsch et al., TMLR 2023) by Gumbel-top-k.

use crate::backend::PolicyModel;
use crate::config::{AcquisitionConfig, ActiveConfig, Selection, Strategy};
use crate::seed::stream::POOL_ORDER;
use crate::seed::{rng_for, seed_for};
use crate::store::{Candidate, Prompt};
use anyhow::{bail, Result};
use lm::sample::{Sample, SampleParams};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use std::collections::HashMap;

/// Chooses `k` of `scores` (higher = better) and returns their indices, best first.
///
/// - `TopK`: the `k` highest; equal scores are ordered by a seeded shuffle.
/// - `Softmax`, `Power`, `Softrank`: Gumbel-top-k, i.e. sampling without replacement with
///   p_i ∝ exp(β s_i), s_i^β or rank_i^−β (β = `coldness`; 0 = uniform, ∞ = top-k). Power needs positive
///   scores: scores ≤ 0 count as 1e-12.
///
/// NaN scores rank last.
pub fn select(scores: &[f64], k: usize, how: Selection, coldness: f64, rng: &mut StdRng) -> Vec<usize> {
    let n = scores.len();
    let k = k.min(n);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    let clean = |s: f64| if s.is_nan() { f64::NEG_INFINITY } else { s };
    // Stable sort after the shuffle: equal keys keep the random order.
    let by_desc = |keys: &[f64], order: &mut Vec<usize>| {
        order.sort_by(|&a, &b| keys[b].partial_cmp(&keys[a]).unwrap_or(std::cmp::Ordering::Equal));
    };
    let keys: Vec<f64> = match how {
        Selection::TopK => scores.iter().map(|&s| clean(s)).collect(),
        Selection::Softmax | Selection::Power | Selection::Softrank => {
            let base: Vec<f64> = match how {
                Selection::Softmax => scores.iter().map(|&s| coldness * clean(s)).collect(),
                Selection::Power => scores.iter().map(|&s| coldness * clean(s).max(1e-12).ln()).collect(),
                _ => {
                    // Rank 1 = best, ties in the shuffled order.
                    let mut by_score = order.clone();
                    let plain: Vec<f64> = scores.iter().map(|&s| clean(s)).collect();
                    by_desc(&plain, &mut by_score);
                    let mut rank = vec![0.0; n];
                    for (r, &i) in by_score.iter().enumerate() {
                        rank[i] = (r + 1) as f64;
                    }
                    rank.iter().map(|r| -coldness * r.ln()).collect()
                }
            };
            // Gumbel(0, 1) noise: −ln(−ln U).
            base.iter()
                .map(|&b| {
                    let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
                    let b = if b.is_finite() { b } else { -1e300 };
                    b - (-u.ln()).ln()
                })
                .collect()
        }
    };
    by_desc(&keys, &mut order);
    order.truncate(k);
    order
}

/// The entropy stage of `entropy` and `hybrid`: of the drawn prompts, whose entropies are `h`, the indices
/// of the `keep` kept (`need`, or `need·ogf` for the hybrid), highest entropy first.
///
/// The hybrid's entropy stage is always a hard top-k (the paper), whatever `selection` says: stochastic
/// selection acts on its last stage (certainty). It keeps exactly the `keep` highest; equal entropies are
/// ordered by a seeded shuffle (so which of several equal entropies at the cut is kept is the seed's choice,
/// never their position in the draw), NaN ranks last. For `entropy` this stage is the last one, so it
/// uses `selection`. A draw of fewer than `keep` prompts (a preference file's pool running out) is kept
/// whole.
pub fn entropy_stage(a: &AcquisitionConfig, h: &[f64], keep: usize, rng: &mut StdRng) -> Vec<usize> {
    let how = if a.strategy == Strategy::Entropy { a.selection } else { Selection::TopK };
    select(h, keep, how, a.coldness, rng)
}

/// Per-prompt entropy from `n` samples per prompt laid out prompt-major (`neg_logps[i·n + j]` = −log π of
/// prompt i's j-th sample). `window_bug` reproduces the released code (`sum(all[s:s+n]) / n`).
pub fn entropy_means(neg_logps: &[f64], n: usize, window_bug: bool) -> Vec<f64> {
    let prompts = neg_logps.len() / n;
    (0..prompts)
        .map(|s| {
            let (a, b) = if window_bug { (s, (s + n).min(neg_logps.len())) } else { (s * n, (s + 1) * n) };
            neg_logps[a..b].iter().sum::<f64>() / n as f64
        })
        .collect()
}

/// The models acquisition samples from and scores with. Both are plain (no autograd graph).
pub struct Models<'a> {
    /// The current policy (adapters merged, or loaded on the policy server).
    pub policy: &'a dyn PolicyModel,
    /// The starting model, π_ref.
    pub reference: &'a dyn PolicyModel,
    /// True in the first round: the policy is the reference, so its log-probs need no second pass.
    pub policy_is_reference: bool,
    /// Offline simulation: candidate pairs come from a preference file (prompt text → its pairs) instead of
    /// being sampled; drawn prompts never repeat.
    pub fixed_pairs: Option<&'a HashMap<String, Vec<[String; 2]>>>,
}

/// Progress callback: (stage, done, total).
pub type Progress<'a> = &'a mut dyn FnMut(&str, usize, usize);

/// Where in the run's pass over the prompt pool an acquisition draws: the run seed fixes the order, and
/// `drawn` prompts have been drawn by the run's earlier acquisitions.
#[derive(Debug, Clone, Copy)]
pub struct PoolCursor {
    pub seed: u64,
    pub drawn: usize,
}

impl PoolCursor {
    /// The next `k` prompts of the run's pass over `pool`: one shuffled order per pass, as the released code's
    /// prompt loader cycles over its data, so no prompt is drawn twice until every prompt has been drawn.
    pub fn take<'p>(&self, pool: &'p [Prompt], k: usize) -> Vec<&'p Prompt> {
        let n = pool.len();
        let mut order: Option<(usize, Vec<usize>)> = None;
        (self.drawn..self.drawn + k)
            .map(|at| {
                let pass = at / n;
                if order.as_ref().is_none_or(|(p, _)| *p != pass) {
                    let mut o: Vec<usize> = (0..n).collect();
                    o.shuffle(&mut rng_for(self.seed, &[POOL_ORDER, pass as u64]));
                    order = Some((pass, o));
                }
                &pool[order.as_ref().unwrap().1[at % n]]
            })
            .collect()
    }
}

/// Runs one acquisition: returns every scored candidate, the `need` chosen ones with `selected = true`.
pub fn acquire(
    cfg: &ActiveConfig,
    models: &Models,
    pool: &[Prompt],
    cursor: PoolCursor,
    need: usize,
    seed: u64,
    progress: Progress,
) -> Result<Vec<Candidate>> {
    let a = &cfg.acquisition;
    let g = &cfg.generation;
    let beta = cfg.train.loss.beta;
    let mut rng = rng_for(seed, &[0]);
    let draw = |k: usize, rng: &mut StdRng| -> Result<Vec<&Prompt>> {
        if pool.is_empty() {
            bail!("acquisition needs prompts but the training pool is empty");
        }
        match models.fixed_pairs {
            // A preference file's pool shrinks as its pairs are used (never the same pair twice): a plain
            // draw of distinct prompts from what is left.
            Some(_) => {
                Ok(rand::seq::index::sample(rng, pool.len(), k.min(pool.len())).iter().map(|i| &pool[i]).collect())
            }
            None => Ok(cursor.take(pool, k)),
        }
    };
    let (prompts, entropy): (Vec<&Prompt>, Option<Vec<f64>>) = match a.strategy {
        Strategy::Random | Strategy::Offline | Strategy::Certainty | Strategy::Uncertainty => {
            (draw(cfg.draw_size(need), &mut rng)?, None)
        }
        Strategy::Entropy | Strategy::Hybrid => {
            let keep = if a.strategy == Strategy::Entropy { need } else { need * a.over_generate_factor };
            let drawn = draw(cfg.draw_size(need), &mut rng)?;
            let h = estimate_entropy(cfg, models.policy, &drawn, seed_for(seed, &[1]), progress)?;
            let chosen = entropy_stage(a, &h, keep, &mut rng);
            (chosen.iter().map(|&i| drawn[i]).collect(), Some(chosen.iter().map(|&i| h[i]).collect()))
        }
    };
    let sampler = if a.strategy == Strategy::Offline { models.reference } else { models.policy };
    // The policy's log-prob of each completion it sampled, read off while sampling (temperature 1, no
    // filters: `lm::sample::Sample::logprobs`) instead of scoring the completion again.
    let mut sampled_logp = None;
    let pairs = match models.fixed_pairs {
        Some(fixed) => file_pairs(sampler, fixed, &prompts, seed_for(seed, &[2]))?,
        None => {
            let samples = sample_pairs(cfg, sampler, &prompts, seed_for(seed, &[2]), progress)?;
            if a.strategy != Strategy::Offline {
                sampled_logp = Some(samples.iter().map(Sample::sum_logprob).collect());
            }
            samples
                .into_iter()
                .map(|s| {
                    let text = decode(sampler, &s.tokens);
                    (s.tokens, text)
                })
                .collect()
        }
    };
    let (pairs, texts): (Vec<Vec<u32>>, Vec<String>) = pairs.into_iter().unzip();
    let ranked = matches!(a.strategy, Strategy::Certainty | Strategy::Uncertainty | Strategy::Hybrid);
    // In the first round every |Δr̂| is exactly 0 (π = π_ref), so the pair stage's choice needs no scores:
    // it is made first (the same seeded choice `select` makes on equal scores), and only the chosen pairs are
    // scored by the reference, for training. The others keep their sampled log-probs on both sides (Δr̂ = 0,
    // as scoring would give).
    let chosen_first = (ranked && models.policy_is_reference && sampled_logp.is_some())
        .then(|| select(&vec![0.0; prompts.len()], need, a.selection, a.coldness, &mut rng));
    let (logp, ref_logp) =
        score_pairs(models, &prompts, &pairs, sampled_logp, chosen_first.as_deref(), g.batch_size, progress)?;
    let mut cands: Vec<Candidate> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (t0, t1) = (pairs[2 * i].clone(), pairs[2 * i + 1].clone());
            Candidate {
                prompt_id: p.id,
                prompt: p.text.clone(),
                prompt_tokens: p.tokens.clone(),
                completions: [texts[2 * i].clone(), texts[2 * i + 1].clone()],
                tokens: [t0, t1],
                entropy: entropy.as_ref().map(|h| h[i]),
                logp: logp[i],
                ref_logp: ref_logp[i],
                score: 0.0,
                selected: false,
            }
        })
        .collect();
    for c in cands.iter_mut() {
        let d = beta * c.log_ratio_diff();
        let p_hat = 1.0 / (1.0 + (-d).exp());
        c.score = match a.strategy {
            Strategy::Uncertainty => 1.0 - 2.0 * (p_hat - 0.5).abs(),
            Strategy::Entropy => c.entropy.unwrap_or(0.0),
            _ => d.abs(),
        };
    }
    let chosen: Vec<usize> = match chosen_first {
        Some(c) => c,
        None if ranked => {
            let scores: Vec<f64> = cands.iter().map(|c| c.score).collect();
            select(&scores, need, a.selection, a.coldness, &mut rng)
        }
        None => (0..cands.len()).collect(),
    };
    for i in chosen {
        cands[i].selected = true;
    }
    Ok(cands)
}

fn decode(model: &dyn PolicyModel, tokens: &[u32]) -> String {
    let tok = model.tokenizer();
    let plain: Vec<u32> = tokens.iter().copied().filter(|&t| !tok.is_eos(t)).collect();
    tok.decode(&plain, true).unwrap_or_default()
}

/// Completion length of each sample, uniform in [min_new_tokens, max_new_tokens] (the paper's length sampler).
pub fn lengths(cfg: &ActiveConfig, n: usize, rng: &mut StdRng) -> Vec<usize> {
    let g = &cfg.generation;
    (0..n).map(|_| rng.random_range(g.min_new_tokens..=g.max_new_tokens)).collect()
}

fn params(max_new: usize, temperature: f64, seed: u64) -> SampleParams {
    SampleParams { max_new_tokens: max_new, temperature, top_k: 0, top_p: 1.0, seed, stop_at_eos: true }
}

/// Per-prompt predictive entropy from `entropy_samples` samples each at `entropy_temperature`.
pub fn estimate_entropy(
    cfg: &ActiveConfig,
    model: &dyn PolicyModel,
    prompts: &[&Prompt],
    seed: u64,
    progress: Progress,
) -> Result<Vec<f64>> {
    let (a, g) = (&cfg.acquisition, &cfg.generation);
    let n = a.entropy_samples;
    let rep: Vec<Vec<u32>> = prompts.iter().flat_map(|p| std::iter::repeat_n(p.tokens.clone(), n)).collect();
    let lens = lengths(cfg, rep.len(), &mut rng_for(seed, &[0]));
    let total = rep.len();
    let samples = model.generate(
        &rep,
        &params(g.max_new_tokens, g.entropy_temperature, seed),
        Some(&lens),
        g.batch_size,
        &mut |d| progress("entropy samples", d, total),
    )?;
    let neg: Vec<f64> = samples.iter().map(|s| -s.sum_logprob()).collect();
    Ok(entropy_means(&neg, n, a.entropy_window_bug))
}

/// One pair per prompt from a preference file (a seeded choice when a prompt has several), tokenized;
/// rows 2i and 2i+1 like [`sample_pairs`].
fn file_pairs(
    model: &dyn PolicyModel,
    fixed: &HashMap<String, Vec<[String; 2]>>,
    prompts: &[&Prompt],
    seed: u64,
) -> Result<Vec<(Vec<u32>, String)>> {
    let mut rng = rng_for(seed, &[0]);
    let mut out = Vec::with_capacity(2 * prompts.len());
    for p in prompts {
        let list = fixed.get(&p.text).filter(|l| !l.is_empty());
        let Some(list) = list else { bail!("prompt {:?} has no pair in the preference file", p.text) };
        let pair = &list[rng.random_range(0..list.len())];
        for c in pair {
            let t = model.tokenizer().encode_plain(c)?;
            if t.is_empty() {
                bail!("an empty completion in the preference file (prompt {:?})", p.text);
            }
            out.push((t, c.clone()));
        }
    }
    Ok(out)
}

/// Two completions per prompt (rows 2i and 2i+1) at the pair temperature.
fn sample_pairs(
    cfg: &ActiveConfig,
    model: &dyn PolicyModel,
    prompts: &[&Prompt],
    seed: u64,
    progress: Progress,
) -> Result<Vec<Sample>> {
    let g = &cfg.generation;
    let rep: Vec<Vec<u32>> = prompts.iter().flat_map(|p| [p.tokens.clone(), p.tokens.clone()]).collect();
    let lens = lengths(cfg, rep.len(), &mut rng_for(seed, &[0]));
    let total = rep.len();
    model.generate(&rep, &params(g.max_new_tokens, g.temperature, seed), Some(&lens), g.batch_size, &mut |d| {
        progress("candidate pairs", d, total)
    })
}

/// A value per completion of a pair.
type Pair = [f64; 2];

/// Summed completion log-probs of the pairs under the policy and the reference.
///
/// The reference is always scored by a forward pass, the one DPO's precomputed reference log-probs must
/// match. The policy's come from `sampled` (the sampler's own log-probs) when it sampled the pairs;
/// the two paths differ only by float rounding (`docs/algorithm.md#scoring-while-sampling` measures it).
/// In the first round π = π_ref and the policy's are the reference's, exactly, so every Δr̂ is 0; there
/// `only` (pair indices) limits the reference pass to the chosen pairs, and the others keep their sampled
/// log-probs as both.
fn score_pairs(
    models: &Models,
    prompts: &[&Prompt],
    pairs: &[Vec<u32>],
    sampled: Option<Vec<f64>>,
    only: Option<&[usize]>,
    batch: usize,
    progress: Progress,
) -> Result<(Vec<Pair>, Vec<Pair>)> {
    // The completions the reference scores, and what the others start from.
    let (rows, mut reference): (Vec<usize>, Vec<f64>) = match (only, &sampled) {
        (Some(o), Some(s)) => (o.iter().flat_map(|&i| [2 * i, 2 * i + 1]).collect(), s.clone()),
        _ => ((0..pairs.len()).collect(), vec![0.0; pairs.len()]),
    };
    let items: Vec<(Vec<u32>, Vec<u32>)> =
        rows.iter().map(|&j| (prompts[j / 2].tokens.clone(), pairs[j].clone())).collect();
    let scored = logps(models.reference, &items, batch, &mut |d, t| progress("scoring (reference)", d, t))?;
    for (&j, x) in rows.iter().zip(scored) {
        reference[j] = x;
    }
    let policy = match sampled {
        _ if models.policy_is_reference => reference.clone(),
        Some(s) => s,
        None => logps(models.policy, &items, batch, &mut |d, t| progress("scoring (policy)", d, t))?,
    };
    let two = |v: Vec<f64>| v.chunks(2).map(|c| [c[0], c[1]]).collect::<Vec<_>>();
    Ok((two(policy), two(reference)))
}

/// Summed completion log-probs, `batch` sequences at a time, no graph.
pub fn logps(
    model: &dyn PolicyModel,
    items: &[(Vec<u32>, Vec<u32>)],
    batch: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<f64>> {
    let total = items.len();
    model.score(items, batch, &mut |d| progress(d, total))
}
