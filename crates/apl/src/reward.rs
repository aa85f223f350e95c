//! A Bradley–Terry reward model on the language model: r(x) = wᵀ h̄(x), where h̄ is the mean of the LM's
//! final hidden states over the text's tokens, trained from preference labels by maximising
//! log σ(r(chosen) − r(rejected)) (Bradley & Terry 1952; the objective of TRL's RewardTrainer and of
//! Ouyang et al. 2022). The LM stays frozen, so training is an L2-regularised logistic regression on
//! feature differences: exact, fast on a CPU, and a useful oracle once a few hundred labels exist (e.g.
//! from people), which can then label far more pairs than they could.
//!
//! Files (`activepref reward train --out DIR`): `reward_head.safetensors` (`weight`, shape (d,)) and
//! `reward.json` (the base model path, the feature, held-out accuracy).

use anyhow::{anyhow, bail, Context as _, Result};
use candle_core::{DType, Device, Tensor};
use lm::{LanguageModel, Positions};
use oracle::{Answer, Comparison, Oracle};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RewardInfo {
    /// The LM the features come from (GGUF file or HF directory).
    pub model: String,
    pub feature: String,
    pub train_pairs: usize,
    pub held_out_pairs: usize,
    pub train_accuracy: f64,
    pub held_out_accuracy: Option<f64>,
    pub l2: f64,
}

/// Settings of [`train`].
#[derive(Debug, Clone)]
pub struct RewardTrainConfig {
    /// L2 penalty λ on w (per pair): loss = mean −log σ(wᵀΔ) + λ/2 ‖w‖².
    pub l2: f64,
    /// Most Newton steps (it usually converges in 10–20).
    pub steps: usize,
    pub batch_size: usize,
}

impl Default for RewardTrainConfig {
    fn default() -> Self {
        Self { l2: 1e-3, steps: 100, batch_size: 16 }
    }
}

/// Mean-pooled final hidden states of each text, `batch` texts at a time. `(N, d)` as f64 rows.
pub fn features(model: &LanguageModel, texts: &[Vec<u32>], batch: usize) -> Result<Vec<Vec<f64>>> {
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(batch.max(1)) {
        let t = chunk.iter().map(Vec::len).max().unwrap_or(0);
        if chunk.iter().any(|x| x.is_empty()) {
            bail!("cannot compute the reward of an empty text");
        }
        let pad = model.tokenizer.pad_token_id;
        let mut ids = Vec::with_capacity(chunk.len() * t);
        let mut mask = Vec::with_capacity(chunk.len() * t);
        for x in chunk {
            ids.extend(x.iter().copied().chain(std::iter::repeat_n(pad, t - x.len())));
            mask.extend((0..t).map(|i| if i < x.len() { 1f32 } else { 0.0 }));
        }
        let dev = model.device();
        let ids = Tensor::from_vec(ids, (chunk.len(), t), dev)?;
        let h = model.hidden(&ids, &Positions::fresh(chunk.len()), None)?.to_dtype(DType::F32)?; // (B, T, d)
        let mask = Tensor::from_vec(mask, (chunk.len(), t, 1), dev)?; // (B, T, 1)
        let sum = h.broadcast_mul(&mask)?.sum(1)?; // (B, d)
        let n = mask.sum(1)?; // (B, 1)
        let mean = sum.broadcast_div(&n)?.to_dtype(DType::F64)?;
        out.extend(mean.to_vec2::<f64>()?);
    }
    Ok(out)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Fits w on feature differences Δ = h̄(chosen) − h̄(rejected) by Newton's method with a backtracking line
/// search: the objective is convex and smooth, and with d in the hundreds to a few thousand the d×d Hessian
/// is cheap, so this reaches the optimum to machine precision whatever the scale of the features (gradient
/// descent does not when features are badly scaled). Stops when the Newton decrement is negligible.
pub fn fit(diffs: &[Vec<f64>], cfg: &RewardTrainConfig) -> Vec<f64> {
    let d = diffs.first().map(Vec::len).unwrap_or(0);
    let n = diffs.len().max(1) as f64;
    let loss =
        |w: &[f64]| -> f64 { diffs.iter().map(|x| softplus(-dot(w, x))).sum::<f64>() / n + 0.5 * cfg.l2 * dot(w, w) };
    let mut w = vec![0.0; d];
    let mut cur = loss(&w);
    for _ in 0..cfg.steps {
        // Gradient and Hessian of mean softplus(−wᵀx) + λ/2 ‖w‖².
        let mut g: Vec<f64> = w.iter().map(|wi| cfg.l2 * wi).collect();
        let mut h = vec![0.0; d * d];
        for i in 0..d {
            h[i * d + i] = cfg.l2.max(1e-10); // keeps H positive definite when λ = 0
        }
        for x in diffs {
            let p = sigmoid(-dot(&w, x)); // d/dz softplus(−z) = −σ(−z); second derivative σ(z)σ(−z)
            let (gs, hs) = (-p / n, p * (1.0 - p) / n);
            for i in 0..d {
                g[i] += gs * x[i];
                let hx = hs * x[i];
                for j in 0..=i {
                    h[i * d + j] += hx * x[j];
                }
            }
        }
        let Some(step) = cholesky_solve(&mut h, &g, d) else { break };
        let decrement = dot(&g, &step);
        if decrement < 1e-20 {
            break;
        }
        let mut t = 1.0;
        loop {
            let cand: Vec<f64> = w.iter().zip(&step).map(|(wi, si)| wi - t * si).collect();
            let l = loss(&cand);
            if l <= cur - 0.25 * t * decrement {
                w = cand;
                cur = l;
                break;
            }
            t *= 0.5;
            if t < 1e-12 {
                return w;
            }
        }
    }
    w
}

/// Solves H s = g for a symmetric positive-definite H given by its lower triangle (row-major, d×d; H is
/// overwritten by its Cholesky factor). `None` if H is not positive definite.
fn cholesky_solve(h: &mut [f64], g: &[f64], d: usize) -> Option<Vec<f64>> {
    for j in 0..d {
        let mut s = h[j * d + j];
        for k in 0..j {
            s -= h[j * d + k] * h[j * d + k];
        }
        if s <= 0.0 || !s.is_finite() {
            return None;
        }
        let ljj = s.sqrt();
        h[j * d + j] = ljj;
        for i in j + 1..d {
            let mut s = h[i * d + j];
            for k in 0..j {
                s -= h[i * d + k] * h[j * d + k];
            }
            h[i * d + j] = s / ljj;
        }
    }
    // L y = g, then Lᵀ s = y.
    let mut y = vec![0.0; d];
    for i in 0..d {
        let s: f64 = (0..i).map(|k| h[i * d + k] * y[k]).sum();
        y[i] = (g[i] - s) / h[i * d + i];
    }
    let mut x = vec![0.0; d];
    for i in (0..d).rev() {
        let s: f64 = (i + 1..d).map(|k| h[k * d + i] * x[k]).sum();
        x[i] = (y[i] - s) / h[i * d + i];
    }
    Some(x)
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn softplus(x: f64) -> f64 {
    if x > 30.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

/// Fraction of pairs whose chosen text gets the higher reward.
pub fn accuracy(w: &[f64], diffs: &[Vec<f64>]) -> f64 {
    diffs.iter().filter(|x| dot(w, x) > 0.0).count() as f64 / diffs.len().max(1) as f64
}

/// Trains on `(chosen text tokens, rejected text tokens)` pairs; returns w and the train accuracy.
pub fn train(
    model: &LanguageModel,
    pairs: &[(Vec<u32>, Vec<u32>)],
    cfg: &RewardTrainConfig,
) -> Result<(Vec<f64>, f64, Vec<Vec<f64>>)> {
    if pairs.is_empty() {
        bail!("no preference pairs to train the reward model on");
    }
    let diffs = pair_diffs(model, pairs, cfg.batch_size)?;
    let w = fit(&diffs, cfg);
    let acc = accuracy(&w, &diffs);
    Ok((w, acc, diffs))
}

/// Feature differences of pairs.
pub fn pair_diffs(model: &LanguageModel, pairs: &[(Vec<u32>, Vec<u32>)], batch: usize) -> Result<Vec<Vec<f64>>> {
    let texts: Vec<Vec<u32>> = pairs.iter().flat_map(|(c, r)| [c.clone(), r.clone()]).collect();
    let f = features(model, &texts, batch)?;
    Ok(f.chunks(2).map(|p| p[0].iter().zip(&p[1]).map(|(a, b)| a - b).collect()).collect())
}

pub fn save(dir: &Path, w: &[f64], info: &RewardInfo) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let t = Tensor::from_vec(w.iter().map(|&x| x as f32).collect::<Vec<_>>(), w.len(), &Device::Cpu)?;
    candle_core::safetensors::save(&HashMap::from([("weight".to_string(), t)]), dir.join("reward_head.safetensors"))?;
    std::fs::write(dir.join("reward.json"), serde_json::to_string_pretty(info)?)?;
    Ok(())
}

/// The reward model as an oracle: prefers the completion whose full text has the higher reward.
pub struct RewardOracle {
    model: LanguageModel,
    w: Tensor,
    dir: PathBuf,
}

impl RewardOracle {
    pub fn load(dir: &Path) -> Result<Self> {
        let info_path = dir.join("reward.json");
        let info: RewardInfo =
            serde_json::from_str(&std::fs::read_to_string(&info_path).with_context(|| {
                format!("reading {} (train one with `activepref reward train`)", info_path.display())
            })?)
            .with_context(|| format!("{}: not a reward model description", info_path.display()))?;
        let model = LanguageModel::load(Path::new(&info.model), &Device::Cpu, DType::F32).with_context(|| {
            format!("loading the reward model's LM {} (named in {})", info.model, info_path.display())
        })?;
        Self::from_parts(model, dir)
    }

    /// The oracle over an already-loaded LM (the one the head was trained on).
    pub fn from_parts(model: LanguageModel, dir: &Path) -> Result<Self> {
        let head = dir.join("reward_head.safetensors");
        let t =
            candle_core::safetensors::load(&head, model.device()).map_err(|e| anyhow!("{}: {e}", head.display()))?;
        let w = t.get("weight").ok_or_else(|| anyhow!("{}: tensor `weight` is missing", head.display()))?.clone();
        if w.dims() != [model.config.hidden_size] {
            bail!(
                "{}: head has shape {:?}, the model's hidden size is {}",
                head.display(),
                w.dims(),
                model.config.hidden_size
            );
        }
        Ok(Self { model, w, dir: dir.to_path_buf() })
    }

    /// Rewards of texts.
    pub fn rewards(&self, texts: &[String]) -> Result<Vec<f64>> {
        let ids: Vec<Vec<u32>> = texts.iter().map(|t| self.model.tokenizer.encode_plain(t)).collect::<Result<_>>()?;
        let f = features(&self.model, &ids, 16)?;
        let w: Vec<f64> = self.w.to_dtype(DType::F64)?.to_vec1()?;
        Ok(f.iter().map(|x| dot(&w, x)).collect())
    }
}

impl Oracle for RewardOracle {
    fn name(&self) -> String {
        format!("reward:{}", self.dir.display())
    }

    fn compare(&mut self, c: &Comparison) -> Result<Answer> {
        let r = self.rewards(&[c.text(0), c.text(1)])?;
        Ok(Answer {
            preferred: oracle::prefer_higher([r[0], r[1]]),
            raw: format!("{{\"rewards\":[{},{}]}}", r[0], r[1]),
        })
    }
}
