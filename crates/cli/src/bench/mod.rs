//! Benchmarks, each printing its figures beside a baseline measured in the same run:
//! - `bench lm`: throughput of the language-model core on random weights of a given shape; the baseline is
//!   the same work through the differentiable (graph-building) path, what inference would cost without the
//!   fused path;
//! - `bench dpo`: DPO training throughput and peak memory (see [`dpo`]);
//! - `bench score` / `bench sample`: forward-only scoring and sampling throughput, the two inference loads of
//!   the APL loop (see [`infer`]);
//! - `bench check`: correctness of a device against a CPU reference computed beforehand (see [`check`]);
//! - `bench judge`: LLM-judge answers per second with requests in flight, against one at a time.
//!
//! `scripts/bench_compare.py` (CPU) and `scripts/gpu-check.sh` (GPU) run these beside the PyTorch peer in
//! one go and print the ratios.

pub mod check;
pub mod dpo;
pub mod infer;
pub mod judge;
pub mod lm;

use ::lm::{LanguageModel, ModelConfig};
use anyhow::{bail, Result};
use candle_core::{DType, Device};
use clap::Args;
use std::time::Instant;

#[derive(Args, Clone)]
pub struct DeviceArg {
    /// cpu or cuda
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl DeviceArg {
    pub fn open(&self) -> Result<Device> {
        crate::open_device(&self.device)
    }
}

/// The model shape `name` ([`lm::testing::SHAPES`]).
pub fn shape(name: &str) -> Result<ModelConfig> {
    match ::lm::testing::named_shape(name) {
        Some(c) => Ok(c),
        None => bail!("unknown shape {name:?} (expected one of {})", ::lm::testing::SHAPES.join(", ")),
    }
}

/// A model of shape `name` with random weights (seed 0, the same on every device) and the byte-level test
/// tokenizer, as `dtype` on `dev`.
pub fn random_model(name: &str, dtype: DType, dev: &Device) -> Result<LanguageModel> {
    let cfg = shape(name)?;
    let tok = ::lm::tokenizer::Tokenizer::byte_level_for_tests(cfg.vocab_size)?;
    LanguageModel::random(cfg, tok, 0, dtype, dev)
}

/// The shapes of a comma-separated `--shapes` list, checked before anything runs.
pub fn shape_list(list: &str) -> Result<Vec<String>> {
    let names: Vec<String> = list.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    if names.is_empty() {
        bail!("--shapes is empty (expected one or more of {})", ::lm::testing::SHAPES.join(", "));
    }
    for n in &names {
        shape(n)?;
    }
    Ok(names)
}

/// Token `j` of row `i` of a benchmark batch: spread over the vocabulary, no randomness.
pub(crate) fn token(i: usize, j: usize, vocab: usize) -> u32 {
    ((i * 7919 + j * 131 + 1) % vocab) as u32
}

/// `n` preference pairs of `prompt` + `completion` tokens each (chosen and rejected differ), no randomness:
/// what `bench dpo` trains on and what the device check's loss curve (and its reference file) is made of.
pub(crate) fn pairs(n: usize, prompt: usize, completion: usize, vocab: usize) -> Vec<::dpo::TokenPair> {
    (0..n)
        .map(|i| {
            let r = |k: usize, off: usize| -> Vec<u32> {
                (0..k).map(|j| ((i * 7919 + j * 31 + off) % vocab) as u32).collect()
            };
            ::dpo::TokenPair { line: i + 1, prompt: r(prompt, 1), chosen: r(completion, 2), rejected: r(completion, 3) }
        })
        .collect()
}

/// `--dtype` of training: `train.dtype`'s values.
pub(crate) fn compute_dtype(name: &str) -> Result<::dpo::ComputeDtype> {
    match name {
        "f32" => Ok(::dpo::ComputeDtype::F32),
        "bf16" => Ok(::dpo::ComputeDtype::Bf16),
        other => bail!("--dtype {other:?}: expected f32 or bf16"),
    }
}

/// `f`'s result and its wall-clock seconds; the device's queue is drained before the clock stops (CUDA runs
/// asynchronously).
pub(crate) fn time<T>(dev: &Device, f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    dev.synchronize()?;
    let t = Instant::now();
    let r = f()?;
    dev.synchronize()?;
    Ok((r, t.elapsed().as_secs_f64()))
}

/// One warm-up call, then the median of three timed calls (as the PyTorch peer measures).
pub(crate) fn median_time<T>(dev: &Device, mut f: impl FnMut() -> Result<T>) -> Result<(T, f64)> {
    f()?;
    let mut runs = Vec::with_capacity(3);
    for _ in 0..3 {
        runs.push(time(dev, &mut f)?);
    }
    runs.sort_by(|a, b| a.1.total_cmp(&b.1));
    Ok(runs.swap_remove(1))
}

/// This process's peak resident memory (`VmHWM`), MiB.
pub(crate) fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l.to_string()))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|k| k.parse::<f64>().ok()))
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}
