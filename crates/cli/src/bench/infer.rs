//! `activepref bench score` and `bench sample`: the two inference loads of the APL loop on random weights of
//! a model's shape. Scoring is a forward pass that sums each sequence's token log-probs (the implicit-reward
//! certainty of acquisition, the reference log-probs of training); sampling draws completions with the KV
//! cache (candidates and evaluation samples). Both print tokens per second, and with `--json` one line per
//! shape for `scripts/gpu-check.sh`, which measures PyTorch on the same shapes beside them.

use super::{median_time, random_model, shape_list, time, token, DeviceArg};
use anyhow::{bail, Result};
use candle_core::DType;
use clap::Args;
use lm::sample::{generate, SampleParams};

#[derive(Args)]
pub struct ScoreBenchArgs {
    /// Model shapes, comma-separated: tiny, gpt2-124m, smollm2-135m, qwen2.5-0.5b, tinyllama-1.1b
    #[arg(long, default_value = "smollm2-135m")]
    shapes: String,
    /// Sequences per forward pass
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Tokens per sequence; every token after the first is scored
    #[arg(long, default_value_t = 512)]
    seq_len: usize,
    /// Print one JSON line per shape
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: DeviceArg,
}

#[derive(Args)]
pub struct SampleBenchArgs {
    /// Model shapes, comma-separated: tiny, gpt2-124m, smollm2-135m, qwen2.5-0.5b, tinyllama-1.1b
    #[arg(long, default_value = "smollm2-135m")]
    shapes: String,
    /// Prompts sampled at once
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Tokens per prompt
    #[arg(long, default_value_t = 64)]
    prompt_len: usize,
    /// New tokens per prompt (no stop at EOS: every row runs to the end)
    #[arg(long, default_value_t = 128)]
    new_tokens: usize,
    /// Weights' dtype: f32, or bf16 (CUDA; on the CPU candle computes bf16 products in f32)
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Print one JSON line per shape
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: DeviceArg,
}

fn weights_dtype(name: &str) -> Result<DType> {
    match name {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        other => bail!("--dtype {other:?}: expected f32 or bf16"),
    }
}

pub fn score(a: ScoreBenchArgs) -> Result<()> {
    if a.batch == 0 || a.seq_len < 2 {
        bail!("--batch must be at least 1 and --seq-len at least 2");
    }
    let shapes = shape_list(&a.shapes)?;
    let dev = a.device.open()?;
    if !a.json {
        println!("activepref bench score — {}, {} sequences × {} tokens", a.device.device, a.batch, a.seq_len);
        println!("{:<16} {:>14}", "shape", "tokens/s");
    }
    for name in &shapes {
        let model = random_model(name, DType::F32, &dev)?;
        let v = model.config.vocab_size;
        let items: Vec<(Vec<u32>, Vec<u32>)> =
            (0..a.batch).map(|i| (vec![token(i, 0, v)], (1..a.seq_len).map(|j| token(i, j, v)).collect())).collect();
        let (_, secs) = median_time(&dev, || lm::score::score_all(&model, &items, a.batch, |_| {}))?;
        let tps = (a.batch * a.seq_len) as f64 / secs;
        if a.json {
            println!(
                "{}",
                serde_json::json!({"shape": name, "measure": "score", "device": a.device.device, "batch": a.batch,
                    "seq_len": a.seq_len, "tokens_per_s": tps, "s": secs})
            );
        } else {
            println!("{name:<16} {tps:>14.0}");
        }
    }
    Ok(())
}

pub fn sample(a: SampleBenchArgs) -> Result<()> {
    if a.batch == 0 || a.prompt_len == 0 || a.new_tokens == 0 {
        bail!("--batch, --prompt-len and --new-tokens must be at least 1");
    }
    let shapes = shape_list(&a.shapes)?;
    let dtype = weights_dtype(&a.dtype)?;
    let dev = a.device.open()?;
    if !a.json {
        println!(
            "activepref bench sample — {} ({}), {} prompts × {} tokens, {} new tokens, temperature 1",
            a.device.device, a.dtype, a.batch, a.prompt_len, a.new_tokens
        );
        println!("{:<16} {:>16} {:>10}", "shape", "new tokens/s", "seconds");
    }
    for name in &shapes {
        let model = random_model(name, dtype, &dev)?;
        let v = model.config.vocab_size;
        let prompts: Vec<Vec<u32>> =
            (0..a.batch).map(|i| (0..a.prompt_len).map(|j| token(i, j, v)).collect()).collect();
        let params =
            SampleParams { max_new_tokens: a.new_tokens, temperature: 1.0, stop_at_eos: false, ..Default::default() };
        // One warm-up of a few tokens (kernels loaded, buffers allocated), then one timed run.
        let warm = SampleParams { max_new_tokens: a.new_tokens.min(4), ..params.clone() };
        generate(&model, &prompts, &warm, None, a.batch, 0, |_| {})?;
        let (samples, secs) = time(&dev, || generate(&model, &prompts, &params, None, a.batch, 0, |_| {}))?;
        let new: usize = samples.iter().map(|s| s.tokens.len()).sum();
        let tps = new as f64 / secs;
        if a.json {
            println!(
                "{}",
                serde_json::json!({"shape": name, "measure": "sample", "device": a.device.device, "dtype": a.dtype,
                    "batch": a.batch, "prompt_len": a.prompt_len, "new_tokens": a.new_tokens,
                    "new_tokens_per_s": tps, "s": secs})
            );
        } else {
            println!("{name:<16} {tps:>16.1} {secs:>10.2}");
        }
    }
    Ok(())
}
