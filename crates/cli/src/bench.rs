//! Benchmarks, each printing its figures beside a baseline measured in the same run:
//! - `bench lm`: throughput of the language-model core on random weights of a given shape; the baseline is
//!   the same work through the differentiable (graph-building) path, what inference would cost without the
//!   fused path;
//! - `bench dpo`: DPO training throughput and peak memory (see [`dpo`]);
//! - `bench judge`: LLM-judge answers per second with requests in flight, against one at a time.

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use clap::Args;
use lm::sample::{generate, SampleParams};
use lm::{LanguageModel, ModelConfig};
use std::time::Instant;

#[derive(Args)]
pub struct LmBenchArgs {
    /// Model shapes to measure: tiny, smollm2-135m (comma-separated)
    #[arg(long, default_value = "tiny,smollm2-135m")]
    shapes: String,
    /// Decode batch size
    #[arg(long, default_value_t = 32)]
    decode_batch: usize,
    /// New tokens per sequence when decoding
    #[arg(long, default_value_t = 64)]
    decode_tokens: usize,
    /// Sequences × tokens for the forward and forward+backward measurements
    #[arg(long, default_value_t = 4)]
    batch: usize,
    #[arg(long, default_value_t = 128)]
    seq_len: usize,
    /// Print one JSON line per measure instead of the table (for scripts/bench_compare.py)
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: DeviceArg,
}

#[derive(Args)]
struct DeviceArg {
    /// cpu or cuda
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn shape(name: &str) -> Result<ModelConfig> {
    match lm::testing::named_shape(name) {
        Some(c) => Ok(c),
        None => bail!("unknown shape {name:?} (expected tiny or smollm2-135m)"),
    }
}

fn time<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let t = Instant::now();
    let r = f()?;
    Ok((r, t.elapsed().as_secs_f64()))
}

/// One warm-up call, then the median of three timed calls (as the PyTorch peer measures).
fn median_time<T>(mut f: impl FnMut() -> Result<T>) -> Result<(T, f64)> {
    f()?;
    let mut runs = Vec::with_capacity(3);
    for _ in 0..3 {
        runs.push(time(&mut f)?);
    }
    runs.sort_by(|a, b| a.1.total_cmp(&b.1));
    Ok(runs.swap_remove(1))
}

pub fn lm(a: LmBenchArgs) -> Result<()> {
    let dev = crate::open_device(&a.device.device)?;
    if !a.json {
        println!("activepref bench lm — device {}, {} threads", a.device.device, candle_core::utils::get_num_threads());
        println!("{:<14} {:<30} {:>14} {:>18} {:>8}", "shape", "measure", "tokens/s", "baseline tokens/s", "ratio");
    }
    for name in a.shapes.split(',') {
        let cfg = shape(name.trim())?;
        let tok = lm::tokenizer::Tokenizer::byte_level_for_tests(cfg.vocab_size)?;
        let mut model = LanguageModel::random(cfg.clone(), tok, 0, DType::F32, &dev)?;
        let ids: Vec<u32> = (0..a.batch * a.seq_len).map(|i| (i * 7919 % cfg.vocab_size) as u32).collect();
        let input = Tensor::from_vec(ids, (a.batch, a.seq_len), &dev)?;
        let fwd_tokens = (a.batch * a.seq_len) as f64;
        let (_, t_fwd) = median_time(|| Ok(model.forward(&input)?.sum_all()?.to_scalar::<f32>()?))?;

        // Decode without a graph.
        let prompts: Vec<Vec<u32>> = (0..a.decode_batch)
            .map(|i| (0..16).map(|j| ((i * 31 + j * 17) % cfg.vocab_size) as u32).collect())
            .collect();
        let params = SampleParams {
            max_new_tokens: a.decode_tokens,
            temperature: 1.0,
            stop_at_eos: false,
            ..Default::default()
        };
        // Decode rate excludes the prompt's prefill: time N new tokens and 1 new token, take the difference.
        let decode_rate = |model: &LanguageModel| -> Result<(f64, f64)> {
            let one = SampleParams { max_new_tokens: 1, ..params.clone() };
            let (_, t1) = time(|| generate(model, &prompts, &one, None, a.decode_batch, 0, |_| {}))?;
            let (s, tn) = time(|| generate(model, &prompts, &params, None, a.decode_batch, 0, |_| {}))?;
            let n: usize = s.iter().map(|x| x.tokens.len()).sum();
            Ok(((n - prompts.len()) as f64 / (tn - t1), n as f64 / tn))
        };
        let (dec, dec_e2e) = decode_rate(&model)?;

        // The same work with trainable weights: every op builds the autograd graph.
        let vars = model.make_trainable(|_| true)?;
        let (_, t_fwd_graph) = time(|| Ok(model.forward(&input)?.sum_all()?.to_scalar::<f32>()?))?;
        let (_, t_bwd) = median_time(|| {
            let items: Vec<(Vec<u32>, Vec<u32>)> = (0..a.batch)
                .map(|b| {
                    let row: Vec<u32> =
                        (0..a.seq_len).map(|i| ((b * 131 + i * 7919) % cfg.vocab_size) as u32).collect();
                    (row[..a.seq_len / 2].to_vec(), row[a.seq_len / 2..].to_vec())
                })
                .collect();
            let s = lm::score::completion_logprobs(&model, &items)?;
            let grads = s.sum.sum_all()?.backward()?;
            Ok(vars.values().filter(|v| grads.get(v.as_tensor()).is_some()).count())
        })?;

        if a.json {
            let line =
                |m: String, v: f64| println!("{}", serde_json::json!({"shape": name, "measure": m, "tokens_per_s": v}));
            line(format!("forward {}x{}", a.batch, a.seq_len), fwd_tokens / t_fwd);
            line(format!("fwd+bwd {}x{}", a.batch, a.seq_len), fwd_tokens / t_bwd);
            line(format!("decode batch {}", a.decode_batch), dec);
            line(format!("generate batch {} (+prefill)", a.decode_batch), dec_e2e);
            continue;
        }
        let (dec_graph, dec_e2e_graph) = decode_rate(&model)?;
        let row = |m: &str, v: f64, base: Option<f64>| {
            let (b, r) =
                base.map(|b| (format!("{b:.0}"), format!("{:.2}x", v / b))).unwrap_or(("-".into(), "-".into()));
            println!("{:<14} {:<30} {:>14.0} {:>18} {:>8}", name, m, v, b, r);
        };
        row(&format!("forward {}x{}", a.batch, a.seq_len), fwd_tokens / t_fwd, Some(fwd_tokens / t_fwd_graph));
        row(&format!("fwd+bwd {}x{}", a.batch, a.seq_len), fwd_tokens / t_bwd, None);
        row(&format!("decode batch {}", a.decode_batch), dec, Some(dec_graph));
        row(&format!("generate batch {} (+prefill)", a.decode_batch), dec_e2e, Some(dec_e2e_graph));
    }
    if !a.json {
        println!("baseline = the same work with trainable weights (autograd graph built, differentiable ops)");
    }
    Ok(())
}

#[derive(Args)]
pub struct DpoBenchArgs {
    /// Model shapes: tiny, smollm2-135m (comma-separated)
    #[arg(long, default_value = "smollm2-135m")]
    shapes: String,
    /// Pairs per optimizer step
    #[arg(long, default_value_t = 2)]
    pairs: usize,
    /// Tokens per sequence (half prompt, half completion)
    #[arg(long, default_value_t = 64)]
    seq_len: usize,
    /// Timed optimizer steps (after one warm-up step)
    #[arg(long, default_value_t = 2)]
    steps: u64,
    /// Internal: run one configuration in this process and print a JSON line
    #[arg(long, hide = true)]
    one: Option<String>,
}

/// The configurations measured, as (name, LoRA?, reference cache?); the first is the baseline: full
/// fine-tuning with a live reference forward every step, what TRL's DPOTrainer does by default.
const DPO_MODES: [(&str, bool, bool); 4] = [
    ("full, live ref", false, false),
    ("full, ref cache", false, true),
    ("lora, live ref", true, false),
    ("lora, ref cache", true, true),
];

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l.to_string()))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|k| k.parse::<f64>().ok()))
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn dpo_one(a: &DpoBenchArgs, shape_name: &str, mode: usize) -> Result<serde_json::Value> {
    use dpo::data::TokenPair;
    use dpo::train::{LoraConfig, TrainConfig, Trainer};
    let cfg = shape(shape_name)?;
    let tok = lm::tokenizer::Tokenizer::byte_level_for_tests(cfg.vocab_size)?;
    let model = LanguageModel::random(cfg.clone(), tok, 0, DType::F32, &candle_core::Device::Cpu)?;
    let (_, lora, cache) = DPO_MODES[mode];
    let half = a.seq_len / 2;
    let n = a.pairs * (a.steps as usize + 1);
    let pairs: Vec<TokenPair> = (0..n)
        .map(|i| {
            let r = |k: usize, off: usize| -> Vec<u32> {
                (0..k).map(|j| ((i * 7919 + j * 31 + off) % cfg.vocab_size) as u32).collect()
            };
            TokenPair {
                line: i + 1,
                prompt: r(half, 1),
                chosen: r(a.seq_len - half, 2),
                rejected: r(a.seq_len - half, 3),
            }
        })
        .collect();
    let tc = TrainConfig {
        batch_size: a.pairs,
        learning_rate: 1e-5,
        precompute_ref_log_probs: cache,
        lora: lora.then(LoraConfig::default),
        logging_steps: 1000,
        ..Default::default()
    };
    let out = std::env::temp_dir().join(format!("activepref-bench-dpo-{}", std::process::id()));
    let t0 = Instant::now();
    let mut t = Trainer::new(tc, model, pairs, vec![], &out, |_, _, _| {})?;
    let setup = t0.elapsed().as_secs_f64();
    t.save_final_model = false;
    // One warm-up step (allocations, thread pool), then the timed steps: steady state.
    t.cfg.max_steps = Some(1);
    t.run(|_| {})?;
    t.timings.clear();
    t.cfg.max_steps = None;
    let start = Instant::now();
    let mut end = start;
    t.run(|_| end = Instant::now())?;
    let _ = std::fs::remove_dir_all(&out);
    let secs = end.duration_since(start).as_secs_f64();
    let tokens = (a.steps as usize * a.pairs * 2 * a.seq_len) as f64;
    let phases: serde_json::Map<String, serde_json::Value> =
        t.timings.iter().map(|(k, v)| (k.to_string(), serde_json::json!(v / a.steps as f64))).collect();
    Ok(serde_json::json!({
        "tokens_per_s": tokens / secs,
        "step_s": secs / a.steps as f64,
        "phases_s_per_step": phases,
        "setup_s": setup,
        "peak_rss_mib": peak_rss_mib(),
    }))
}

pub fn dpo(a: DpoBenchArgs) -> Result<()> {
    if let Some(one) = &a.one {
        let (shape_name, mode) = one.split_once(':').ok_or_else(|| anyhow::anyhow!("--one SHAPE:MODE"))?;
        println!("{}", dpo_one(&a, shape_name, mode.parse()?)?);
        return Ok(());
    }
    println!(
        "activepref bench dpo — cpu, {} threads, {} pairs × {} tokens per step, {} timed steps",
        candle_core::utils::get_num_threads(),
        a.pairs,
        a.seq_len,
        a.steps
    );
    println!(
        "{:<14} {:<18} {:>10} {:>8} {:>14} {:>10}",
        "shape", "mode", "tokens/s", "ratio", "peak RSS MiB", "setup s"
    );
    let exe = std::env::current_exe()?;
    let mut profiles = Vec::new();
    for name in a.shapes.split(',') {
        let mut base = None;
        for (m, (mode, _, _)) in DPO_MODES.iter().enumerate() {
            let out = std::process::Command::new(&exe)
                .args(["bench", "dpo", "--pairs", &a.pairs.to_string(), "--seq-len", &a.seq_len.to_string()])
                .args(["--steps", &a.steps.to_string(), "--one", &format!("{}:{m}", name.trim())])
                .output()?;
            if !out.status.success() {
                bail!("{name} {mode}: {}", String::from_utf8_lossy(&out.stderr));
            }
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            let tps = v["tokens_per_s"].as_f64().unwrap_or(f64::NAN);
            let b = *base.get_or_insert(tps);
            println!(
                "{:<14} {:<18} {:>10.1} {:>7.2}x {:>14.0} {:>10.1}",
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
    println!("baseline = full fine-tuning with a live reference forward every step (TRL's default); setup includes the reference cache");
    Ok(())
}

/// `activepref bench judge`: how long a batch of comparisons takes the LLM judge with several requests in
/// flight, against one at a time (the baseline) in the same run. A hosted judge spends most of each call
/// waiting on the network and the provider's queue, so the stand-in server here only waits `latency_s`
/// before answering; `--base-url` measures a real OpenAI-compatible server instead.
#[derive(Args)]
pub struct JudgeBenchArgs {
    /// Comparisons asked per setting (each setting asks its own, so no reply comes from a cache)
    #[arg(long, default_value_t = 64)]
    pairs: usize,
    /// Seconds the stand-in judge waits before each answer (hosted judges take about 0.5–2 s)
    #[arg(long, default_value_t = 0.25)]
    latency_s: f64,
    /// Requests in flight to compare with 1, comma-separated
    #[arg(long, default_value = "2,4,8")]
    concurrency: String,
    /// Judge this OpenAI-compatible API (e.g. `http://127.0.0.1:8000/v1`) instead of the stand-in
    #[arg(long)]
    base_url: Option<String>,
    /// Model name to send with --base-url
    #[arg(long, default_value = "stand-in")]
    model: String,
}

/// Answers every chat completion with "Preferred: A" after `latency`, one thread per connection.
fn stand_in_judge(latency: std::time::Duration) -> Result<String> {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/v1", listener.local_addr()?);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut reader = BufReader::new(stream.try_clone()?);
                let mut len = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line)? == 0 {
                        return Ok(());
                    }
                    if line.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                reader.read_exact(&mut vec![0; len])?;
                std::thread::sleep(latency);
                let body = serde_json::json!({
                    "choices": [{"message": {"role": "assistant", "content": "Comparison: A is better.\nPreferred: A"}}],
                    "usage": {"total_tokens": 100},
                })
                .to_string();
                let mut out = stream;
                write!(
                    out,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            });
        }
    });
    Ok(url)
}

pub fn judge(a: JudgeBenchArgs) -> Result<()> {
    use oracle::judge::{Judge, JudgeConfig};
    use oracle::{Comparison, Oracle};
    if a.pairs == 0 || !(a.latency_s.is_finite() && a.latency_s >= 0.0) {
        bail!("--pairs must be at least 1 and --latency-s a number >= 0");
    }
    let mut settings = vec![1usize];
    for c in a.concurrency.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        match c.parse::<usize>() {
            Ok(n) if n >= 1 => settings.push(n),
            _ => bail!("--concurrency {c:?}: expected whole numbers >= 1, comma-separated"),
        }
    }
    let (base_url, what) = match &a.base_url {
        Some(u) => (u.clone(), format!("{u} (model {})", a.model)),
        None => {
            let d = std::time::Duration::from_secs_f64(a.latency_s);
            (stand_in_judge(d)?, format!("a stand-in judge answering after {} s", a.latency_s))
        }
    };
    println!("activepref bench judge — {} comparisons per setting, {what}", a.pairs);
    println!("{:>11} {:>9} {:>12} {:>14}", "concurrency", "seconds", "answers/s", "vs 1 at once");
    let mut baseline = None;
    for (k, &c) in settings.iter().enumerate() {
        let cfg = JudgeConfig {
            base_url: base_url.clone(),
            model: a.model.clone(),
            api_key_env: "ACTIVEPREF_BENCH_JUDGE_KEY".into(),
            concurrency: c,
            ..JudgeConfig::default()
        };
        let mut judge = Judge::new(cfg)?;
        let pairs: Vec<Comparison> = (0..a.pairs)
            .map(|i| Comparison::new(format!("Setting {k}, movie {i}:"), " a fine film.", " a dull film."))
            .collect();
        let (answered, secs) = time(|| {
            let mut n = 0;
            judge.compare_each(&pairs, &mut |_, _| {
                n += 1;
                Ok(())
            })?;
            Ok(n)
        })?;
        let base = *baseline.get_or_insert(secs);
        println!("{c:>11} {secs:>9.2} {:>12.1} {:>13.2}×", answered as f64 / secs, base / secs);
    }
    Ok(())
}
