//! `activepref bench judge`: LLM-judge answers per second with requests in flight.

use super::time;
use anyhow::{bail, Result};
use clap::Args;

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
        let (answered, secs) = time(&candle_core::Device::Cpu, || {
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
