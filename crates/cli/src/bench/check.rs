//! `activepref bench check`: is a device computing what the CPU computes? On the CPU, `--write FILE` records
//! a reference on random weights of real shapes (the same weights on every device: they are drawn on the
//! host); on another device, `--against FILE` recomputes and compares, within tolerances stated per dtype:
//! - logits: each position's log-sum-exp and the logit of the next token, 2 sequences × 64 tokens;
//! - gradients of the summed completion log-probs with every weight trainable: each parameter's gradient
//!   norm and first elements, and that **every** parameter gets a finite, non-zero gradient;
//! - a 20-step DPO loss curve (full fine-tuning, live reference, 8 pairs seen every 4 steps), in `--dtype`
//!   (bf16 = `train.dtype`).
//!
//! The reference is computed in f32; the device's f32 differs from it only by summation order, bf16 by
//! its 8-bit mantissa, so the curve's tolerance is loose for bf16 and tight for f32.

use super::{compute_dtype, pairs, random_model, shape_list, token, DeviceArg};
use anyhow::{bail, Context as _, Result};
use candle_core::{DType, Device, Tensor, D};
use clap::Args;
use serde_json::{json, Value};
use std::path::PathBuf;

#[derive(Args)]
pub struct CheckBenchArgs {
    /// Write the reference (on the CPU) to this JSON file
    #[arg(long, conflicts_with = "against")]
    write: Option<PathBuf>,
    /// Compare this device with the reference in this JSON file; exits 1 if a check fails
    #[arg(long)]
    against: Option<PathBuf>,
    /// Shapes whose logits are checked (with --write; --against takes the file's)
    #[arg(long, default_value = "gpt2-124m,smollm2-135m,qwen2.5-0.5b,tinyllama-1.1b")]
    shapes: String,
    /// Shapes whose gradients are checked (with --write)
    #[arg(long, default_value = "gpt2-124m,smollm2-135m,qwen2.5-0.5b")]
    grad_shapes: String,
    /// Shape of the DPO loss curve (with --write)
    #[arg(long, default_value = "smollm2-135m")]
    curve_shape: String,
    /// Optimizer steps of the loss curve
    #[arg(long, default_value_t = 20)]
    steps: u64,
    /// Compute dtype of the loss curve on this device: f32, or bf16 (CUDA)
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// With --against: check only the loss curve (the logits and gradients are f32 whatever --dtype says, so a
    /// second pass in bf16 need not repeat them)
    #[arg(long)]
    curve_only: bool,
    /// Also write the comparison as JSON here
    #[arg(long)]
    json_out: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArg,
}

const SEQS: usize = 2;
const LEN: usize = 64;
/// Leading elements of each gradient recorded (beside its norm).
const HEAD: usize = 4;

fn ids(vocab: usize) -> Vec<Vec<u32>> {
    (0..SEQS).map(|i| (0..LEN).map(|j| token(i, j, vocab)).collect()).collect()
}

fn f64s(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.detach().to_dtype(DType::F64)?.flatten_all()?.to_vec1()?)
}

/// Each position's log-sum-exp and the logit of the token that follows it.
fn logits_record(name: &str, dev: &Device) -> Result<Value> {
    let model = random_model(name, DType::F32, dev)?;
    let rows = ids(model.config.vocab_size);
    let input = Tensor::new(rows.clone(), dev)?; // (B, T)
    let z = model.forward(&input)?.to_dtype(DType::F32)?; // (B, T, V)
    let lse = f64s(&z.log_sum_exp(D::Minus1)?)?;
    let next: Vec<Vec<u32>> = rows.iter().map(|r| r[1..].iter().copied().chain([0]).collect()).collect();
    let at = Tensor::new(next, dev)?.unsqueeze(2)?; // (B, T, 1)
    let target = f64s(&z.gather(&at, D::Minus1)?)?;
    Ok(json!({"lse": lse, "next_logit": target}))
}

/// Every parameter's gradient norm and first elements, for the summed completion log-probs.
fn grads_record(name: &str, dev: &Device) -> Result<Value> {
    let mut model = random_model(name, DType::F32, dev)?;
    let vars = model.make_trainable(|_| true)?;
    let rows = ids(model.config.vocab_size);
    let items: Vec<(Vec<u32>, Vec<u32>)> =
        rows.iter().map(|r| (r[..LEN / 2].to_vec(), r[LEN / 2..].to_vec())).collect();
    let s = lm::score::completion_logprobs(&model, &items)?;
    let grads = s.sum.sum_all()?.backward()?;
    let mut out = serde_json::Map::new();
    for (n, v) in &vars {
        let rec = match grads.get(v.as_tensor()) {
            Some(g) => {
                let g = g.to_dtype(DType::F64)?.flatten_all()?;
                let norm = g.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?;
                let head = g.narrow(0, 0, HEAD.min(g.dim(0)?))?.to_vec1::<f64>()?;
                json!({"norm": norm, "head": head, "n": g.dim(0)?})
            }
            None => Value::Null,
        };
        out.insert(n.clone(), rec);
    }
    Ok(Value::Object(out))
}

/// The loss of each of `steps` optimizer steps of full fine-tuning with a live reference, over 8 pairs seen
/// again every 4 steps, so that the loss falls well away from ln 2 and a device that trains wrongly (or not
/// at all) shows in the curve.
fn curve_record(name: &str, steps: u64, dtype: dpo::ComputeDtype, dev: &Device) -> Result<Vec<f64>> {
    use dpo::train::{TrainConfig, Trainer};
    const PAIRS: usize = 8;
    let model = random_model(name, DType::F32, dev)?;
    let pairs = pairs(PAIRS, LEN / 2, LEN / 2, model.config.vocab_size);
    let tc = TrainConfig {
        batch_size: 2,
        learning_rate: 5e-5,
        epochs: (2 * steps as usize).div_ceil(PAIRS).max(1),
        max_steps: Some(steps),
        precompute_ref_log_probs: false,
        lora: None,
        logging_steps: 1000,
        dtype,
        ..Default::default()
    };
    let out = std::env::temp_dir().join(format!("activepref-bench-check-{}", std::process::id()));
    let mut t = Trainer::new(tc, model, pairs, vec![], &out, |_, _, _| {})?;
    t.save_final_model = false;
    t.save_checkpoints = false;
    let mut losses = Vec::new();
    t.run(|s| losses.push(s.loss))?;
    let _ = std::fs::remove_dir_all(&out);
    Ok(losses)
}

/// One comparison: its name, the largest deviation, the tolerance, whether it held.
struct Outcome {
    what: String,
    worst: f64,
    tol: f64,
    ok: bool,
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(if a.len() == b.len() { 0.0 } else { f64::INFINITY }, f64::max)
}

fn nums(v: &Value) -> Vec<f64> {
    v.as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default()
}

pub fn check(a: CheckBenchArgs) -> Result<()> {
    let dev = a.device.open()?;
    let dtype = compute_dtype(&a.dtype)?;
    if let Some(path) = &a.write {
        if !dev.is_cpu() {
            bail!("--write records the CPU reference: run it with --device cpu");
        }
        let mut logits = serde_json::Map::new();
        for s in shape_list(&a.shapes)? {
            eprintln!("logits {s} ...");
            logits.insert(s.clone(), logits_record(&s, &dev)?);
        }
        let mut grads = serde_json::Map::new();
        for s in shape_list(&a.grad_shapes)? {
            eprintln!("gradients {s} ...");
            grads.insert(s.clone(), grads_record(&s, &dev)?);
        }
        let curve_shape = shape_list(&a.curve_shape)?.remove(0);
        eprintln!("DPO loss curve {curve_shape}, {} steps ...", a.steps);
        let curve = curve_record(&curve_shape, a.steps, dpo::ComputeDtype::F32, &dev)?;
        let doc = json!({
            "what": "activepref bench check reference: f32 on the CPU, random weights (seed 0) of real shapes",
            "activepref": env!("CARGO_PKG_VERSION"),
            "logits": logits,
            "grads": grads,
            "curve": {"shape": curve_shape, "losses": curve},
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
        return Ok(());
    }
    let Some(path) = &a.against else { bail!("give --write FILE (on the CPU) or --against FILE") };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let reference: Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    // f32 on another device differs by summation order (and, on GPUs, by fused kernels). The loss curve is
    // compared relative to the loss (floored at 0.1: the curve falls from ln 2 to about 0.001 once the pairs
    // are seen again): 2% in f32; 15% in bf16, whose 8-bit mantissa moves a sum of 32 log-probs of about −11
    // each by some ±0.5 nats, ±0.05 in the DPO logit at β = 0.1. The logits and gradients are always f32.
    let (tol_logit, tol_grad) = (2e-3, 1e-2);
    let tol_curve = match dtype {
        dpo::ComputeDtype::F32 => 0.02,
        dpo::ComputeDtype::Bf16 => 0.15,
    };
    let mut outcomes = Vec::new();
    let empty = serde_json::Map::new();
    let (logits, grads) = if a.curve_only {
        (&empty, &empty)
    } else {
        (reference["logits"].as_object().unwrap_or(&empty), reference["grads"].as_object().unwrap_or(&empty))
    };
    for (s, r) in logits {
        eprintln!("logits {s} ...");
        let got = logits_record(s, &dev)?;
        for key in ["lse", "next_logit"] {
            let worst = max_abs_diff(&nums(&got[key]), &nums(&r[key]));
            outcomes.push(Outcome {
                what: format!("{s} logits: {key}"),
                worst,
                tol: tol_logit,
                ok: worst <= tol_logit,
            });
        }
    }
    for (s, r) in grads {
        eprintln!("gradients {s} ...");
        let got = grads_record(s, &dev)?;
        let (mut missing, mut worst_norm, mut worst_elem) = (Vec::new(), 0f64, 0f64);
        for (n, want) in r.as_object().unwrap_or(&empty) {
            let g = &got[n.as_str()];
            let norm = g["norm"].as_f64().unwrap_or(f64::NAN);
            if !(norm.is_finite() && norm > 0.0) {
                missing.push(n.clone());
                continue;
            }
            let wn = want["norm"].as_f64().unwrap_or(f64::NAN);
            worst_norm = worst_norm.max((norm - wn).abs() / wn.max(1e-30));
            // Elements relative to the gradient's RMS (a single element can be near zero).
            let rms = wn / (want["n"].as_f64().unwrap_or(1.0)).sqrt();
            worst_elem = worst_elem.max(max_abs_diff(&nums(&g["head"]), &nums(&want["head"])) / rms.max(1e-30));
        }
        let total = r.as_object().map(|o| o.len()).unwrap_or(0);
        outcomes.push(Outcome {
            what: format!("{s} every parameter gets a gradient ({} of {total} without)", missing.len()),
            worst: missing.len() as f64,
            tol: 0.0,
            ok: missing.is_empty() && total > 0,
        });
        if !missing.is_empty() {
            eprintln!("{s}: no finite non-zero gradient for {}", missing.join(", "));
        }
        outcomes.push(Outcome {
            what: format!("{s} gradient norms (relative)"),
            worst: worst_norm,
            tol: tol_grad,
            ok: worst_norm <= tol_grad,
        });
        outcomes.push(Outcome {
            what: format!("{s} gradient elements (/ RMS)"),
            worst: worst_elem,
            tol: tol_grad * 5.0,
            ok: worst_elem <= tol_grad * 5.0,
        });
    }
    if let Some(s) = reference["curve"]["shape"].as_str() {
        let want = nums(&reference["curve"]["losses"]);
        eprintln!("DPO loss curve {s}, {} steps, {} ...", want.len(), a.dtype);
        let got = curve_record(s, want.len() as u64, dtype, &dev)?;
        let worst = if got.len() == want.len() {
            got.iter().zip(&want).map(|(g, w)| (g - w).abs() / w.abs().max(0.1)).fold(0.0, f64::max)
        } else {
            f64::INFINITY
        };
        outcomes.push(Outcome {
            what: format!("{s} DPO loss, {} steps ({}, relative)", want.len(), a.dtype),
            worst,
            tol: tol_curve,
            ok: worst <= tol_curve,
        });
        println!(
            "loss curve ({}): {}",
            a.dtype,
            got.iter().zip(&want).map(|(g, w)| format!("{g:.4}/{w:.4}")).collect::<Vec<_>>().join(" ")
        );
    }
    println!("{:<64} {:>12} {:>10} {:>6}", "check", "worst", "tolerance", "");
    for o in &outcomes {
        println!("{:<64} {:>12.3e} {:>10.1e} {:>6}", o.what, o.worst, o.tol, if o.ok { "ok" } else { "FAIL" });
    }
    let failed = outcomes.iter().filter(|o| !o.ok).count();
    if let Some(p) = &a.json_out {
        let rows: Vec<Value> = outcomes
            .iter()
            .map(|o| json!({"check": o.what, "worst": o.worst, "tolerance": o.tol, "ok": o.ok}))
            .collect();
        let doc = json!({"device": a.device.device, "dtype": a.dtype, "failed": failed, "checks": rows});
        std::fs::write(p, serde_json::to_string_pretty(&doc)?).with_context(|| format!("writing {}", p.display()))?;
    }
    if failed > 0 || outcomes.is_empty() {
        bail!("{failed} of {} checks failed against {}", outcomes.len(), path.display());
    }
    println!("all {} checks passed against {}", outcomes.len(), path.display());
    Ok(())
}
