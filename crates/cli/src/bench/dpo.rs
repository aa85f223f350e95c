//! `activepref bench dpo`: DPO training throughput and peak memory, full fine-tuning and LoRA, with a live
//! reference and with the reference cache, each configuration in a child process of its own (so that the
//! peak memory is that configuration's alone).

use super::{compute_dtype, pairs, peak_rss_mib, random_model, shape_list, DeviceArg};
use anyhow::{bail, Context as _, Result};
use candle_core::DType;
use clap::Args;
use std::time::Instant;

#[derive(Args)]
pub struct DpoBenchArgs {
    /// Model shapes, comma-separated: tiny, gpt2-124m, smollm2-135m, qwen2.5-0.5b, tinyllama-1.1b
    #[arg(long, default_value = "smollm2-135m")]
    shapes: String,
    /// Configurations, comma-separated: full-live, full-cache, lora-live, lora-cache (the first one listed is
    /// the baseline of the ratio column)
    #[arg(long, default_value = "full-live,full-cache,lora-live,lora-cache")]
    modes: String,
    /// Pairs per optimizer step
    #[arg(long, default_value_t = 2)]
    pairs: usize,
    /// Tokens per sequence (half prompt, half completion)
    #[arg(long, default_value_t = 64)]
    seq_len: usize,
    /// Timed optimizer steps (after one warm-up step)
    #[arg(long, default_value_t = 2)]
    steps: u64,
    /// f32, or bf16 over f32 master weights (CUDA only), as `train.dtype`
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Print one JSON line per configuration instead of the table (for scripts/bench_compare.py and
    /// scripts/gpu-check.sh)
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: DeviceArg,
    /// Internal: run one configuration in this process and print a JSON line
    #[arg(long, hide = true)]
    one: Option<String>,
}

/// The configurations, as (name, LoRA?, reference cache?). Full fine-tuning with a live reference forward
/// every step is what TRL's DPOTrainer does by default.
const DPO_MODES: [(&str, bool, bool); 4] =
    [("full-live", false, false), ("full-cache", false, true), ("lora-live", true, false), ("lora-cache", true, true)];

fn mode_index(name: &str) -> Result<usize> {
    // Earlier releases named the configuration by its index (`--one smollm2-135m:3`).
    if let Ok(i) = name.parse::<usize>() {
        if i < DPO_MODES.len() {
            return Ok(i);
        }
    }
    DPO_MODES.iter().position(|m| m.0 == name).with_context(|| {
        let names: Vec<&str> = DPO_MODES.iter().map(|m| m.0).collect();
        format!("--modes: unknown configuration {name:?} (expected {})", names.join(", "))
    })
}

fn dpo_one(a: &DpoBenchArgs, shape_name: &str, mode: usize) -> Result<serde_json::Value> {
    use dpo::train::{LoraConfig, TrainConfig, Trainer};
    let dev = a.device.open()?;
    let model = random_model(shape_name, DType::F32, &dev)?;
    let vocab = model.config.vocab_size;
    let (_, lora, cache) = DPO_MODES[mode];
    let half = a.seq_len / 2;
    // One batch for the warm-up step and one for each timed step.
    let pairs = pairs(a.pairs * (a.steps as usize + 1), half, a.seq_len - half, vocab);
    let tc = TrainConfig {
        batch_size: a.pairs,
        learning_rate: 1e-5,
        precompute_ref_log_probs: cache,
        lora: lora.then(LoraConfig::default),
        logging_steps: 1000,
        dtype: compute_dtype(&a.dtype)?,
        ..Default::default()
    };
    let out = std::env::temp_dir().join(format!("activepref-bench-dpo-{}", std::process::id()));
    let t0 = Instant::now();
    let mut t = Trainer::new(tc, model, pairs, vec![], &out, |_, _, _| {})?;
    dev.synchronize()?;
    let setup = t0.elapsed().as_secs_f64();
    t.save_final_model = false;
    t.save_checkpoints = false;
    // One warm-up step (allocations, thread pool, kernels loaded), then the timed steps: steady state.
    t.cfg.max_steps = Some(1);
    t.run(|_| {})?;
    t.timings.clear();
    t.cfg.max_steps = None;
    dev.synchronize()?;
    let start = Instant::now();
    let mut end = start;
    let mut losses = Vec::new();
    t.run(|s| {
        end = Instant::now();
        losses.push(s.loss);
    })?;
    let _ = std::fs::remove_dir_all(&out);
    let secs = end.duration_since(start).as_secs_f64();
    let tokens = (a.steps as usize * a.pairs * 2 * a.seq_len) as f64;
    let phases: serde_json::Map<String, serde_json::Value> =
        t.timings.iter().map(|(k, v)| (k.to_string(), serde_json::json!(v / a.steps as f64))).collect();
    Ok(serde_json::json!({
        "shape": shape_name,
        "mode": DPO_MODES[mode].0,
        "device": a.device.device,
        "dtype": a.dtype,
        "pairs": a.pairs,
        "seq_len": a.seq_len,
        "tokens_per_s": tokens / secs,
        "step_s": secs / a.steps as f64,
        "phases_s_per_step": phases,
        "setup_s": setup,
        "peak_rss_mib": peak_rss_mib(),
        "losses": losses,
    }))
}

pub fn dpo(a: DpoBenchArgs) -> Result<()> {
    compute_dtype(&a.dtype)?;
    if a.pairs == 0 || a.seq_len < 2 || a.steps == 0 {
        bail!("--pairs and --steps must be at least 1 and --seq-len at least 2");
    }
    if let Some(one) = &a.one {
        let (shape_name, mode) = one.split_once(':').ok_or_else(|| anyhow::anyhow!("--one SHAPE:MODE"))?;
        println!("{}", dpo_one(&a, shape_name, mode_index(mode)?)?);
        return Ok(());
    }
    if a.dtype == "bf16" && a.device.device != "cuda" {
        bail!("--dtype bf16 runs on CUDA only (train.dtype); on the CPU use --dtype f32");
    }
    let shapes = shape_list(&a.shapes)?;
    let modes: Vec<usize> = a.modes.split(',').map(|m| mode_index(m.trim())).collect::<Result<_>>()?;
    a.device.open()?;
    if !a.json {
        println!(
            "activepref bench dpo — {} ({}), {} threads, {} pairs × {} tokens per step, {} timed steps",
            a.device.device,
            a.dtype,
            candle_core::utils::get_num_threads(),
            a.pairs,
            a.seq_len,
            a.steps
        );
        println!(
            "{:<14} {:<12} {:>10} {:>8} {:>14} {:>10}",
            "shape", "mode", "tokens/s", "ratio", "peak RSS MiB", "setup s"
        );
    }
    let exe = std::env::current_exe()?;
    let mut profiles = Vec::new();
    for name in &shapes {
        let mut base = None;
        for &m in &modes {
            let mode = DPO_MODES[m].0;
            let out = std::process::Command::new(&exe)
                .args(["bench", "dpo", "--pairs", &a.pairs.to_string(), "--seq-len", &a.seq_len.to_string()])
                .args(["--steps", &a.steps.to_string(), "--dtype", &a.dtype, "--device", &a.device.device])
                .args(["--one", &format!("{name}:{mode}")])
                .output()?;
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr);
                bail!("{name} {mode}: {}", err.trim().trim_start_matches("error: "));
            }
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            if a.json {
                println!("{v}");
                continue;
            }
            let tps = v["tokens_per_s"].as_f64().unwrap_or(f64::NAN);
            let b = *base.get_or_insert(tps);
            println!(
                "{:<14} {:<12} {:>10.1} {:>7.2}x {:>14.0} {:>10.1}",
                name,
                mode,
                tps,
                tps / b,
                v["peak_rss_mib"].as_f64().unwrap_or(f64::NAN),
                v["setup_s"].as_f64().unwrap_or(f64::NAN)
            );
            profiles.push((format!("{name} {mode}"), v));
        }
    }
    if a.json {
        return Ok(());
    }
    // Where a step's time goes: seconds per step in each phase of the trainer's loop.
    println!("\nprofile (seconds per optimizer step; forward = policy, and the reference when live)");
    let phases = ["forward", "loss", "backward", "accumulate", "clip", "optimizer", "metrics"];
    print!("{:<34} {:>8}", "run", "step");
    for p in phases {
        print!(" {p:>10}");
    }
    println!();
    for (what, v) in &profiles {
        print!("{what:<34} {:>8.3}", v["step_s"].as_f64().unwrap_or(f64::NAN));
        for p in phases {
            print!(" {:>10.3}", v["phases_s_per_step"][p].as_f64().unwrap_or(0.0));
        }
        println!();
    }
    println!("ratio = tokens/s against the first configuration listed (full-live: TRL's default, a live reference forward every step); setup includes the reference cache");
    Ok(())
}
