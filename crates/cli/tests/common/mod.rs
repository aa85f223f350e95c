//! What the binary's test files share: the binary itself, and the tiny loop job they run it on.
#![allow(dead_code)] // each test file uses its own part

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The `activepref` binary, with no assets to find (the tests bring their own model and prompts).
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_activepref"));
    c.env("ACTIVEPREF_ASSETS", "/nonexistent-assets");
    c
}

/// Writes 200 prompts and a loop config that finishes in seconds: the tiny model at `model`, hybrid
/// acquisition, `rounds` rounds of 4 labels, 8 held-out prompts, LoRA r 2. `oracle` is the config's
/// `[oracle]` table (and its subtables), as TOML. Returns the config's path, `<dir>/<name>.toml`.
pub fn tiny_loop_config(dir: &Path, name: &str, model: &Path, rounds: usize, oracle: &str) -> PathBuf {
    let prompts = dir.join("prompts.txt");
    let lines: Vec<String> =
        (0..200).map(|i| format!("review {i}: the film was seen by everyone here, and then we")).collect();
    std::fs::write(&prompts, lines.join("\n")).unwrap();
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            r#"seed = 3
model = "{model}"
[prompts]
source = "{prompts}"
min_tokens = 4
max_tokens = 8
min_source_tokens = 10
[generation]
min_new_tokens = 4
max_new_tokens = 8
batch_size = 8
[acquisition]
strategy = "hybrid"
over_generate_factor = 2
over_sample_prompts_factor = 2
entropy_samples = 2
[rounds]
labels_per_round = 4
rounds = {rounds}
{oracle}
[eval]
prompts = 8
[train]
epochs = 2
batch_size = 2
save_steps = 1
learning_rate = 0.01
[train.lora]
r = 2
alpha = 4
"#,
            model = model.display(),
            prompts = prompts.display(),
        ),
    )
    .unwrap();
    cfg
}

/// `activepref serve --openai` over `model` as a child process on a free local port, API key `key` (in the
/// variable `ACTIVEPREF_TEST_SERVE_KEY`), adapters loadable; returns it with its `/v1` URL once it answers.
/// Kill the child when done.
pub fn spawn_openai_server(model: &Path, model_id: &str, key: &str) -> (std::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = bin()
        .args(["serve", "--openai", "--allow-lora-loading", "--api-key-env", "ACTIVEPREF_TEST_SERVE_KEY"])
        .arg("--model")
        .arg(model)
        .args(["--model-id", model_id, "--addr", &format!("127.0.0.1:{port}")])
        .env("ACTIVEPREF_TEST_SERVE_KEY", key)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(s) = child.try_wait().unwrap() {
            panic!("the server exited before listening: {s}");
        }
        assert!(t0.elapsed() < std::time::Duration::from_secs(60), "the server did not listen within 60 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    (child, format!("http://127.0.0.1:{port}/v1"))
}

/// Which review the test judge prefers: the one with more letters `e`; a content hash decides a few
/// non-answers, so dropping and re-acquiring happen too.
pub fn verdict(a: &str, b: &str) -> String {
    let h = a.bytes().chain(b.bytes()).fold(7u64, |h, x| h.wrapping_mul(31).wrapping_add(x as u64));
    if h % 9 == 0 {
        return "Comparison: both are fine.\nPreferred: neither".into();
    }
    let (ea, eb) = (a.matches('e').count(), b.matches('e').count());
    format!("Comparison: one has more e.\nPreferred: {}", if ea >= eb { "A" } else { "B" })
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> &'a str {
    let i = s.find(start).map(|i| i + start.len()).unwrap_or(0);
    let j = s[i..].find(end).map(|j| i + j).unwrap_or(s.len());
    &s[i..j]
}

/// An OpenAI-compatible chat-completions server on 127.0.0.1 that judges by [`verdict`]; it records how
/// often each question was asked.
pub fn judge_server() -> (String, Arc<Mutex<HashMap<String, usize>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", l.local_addr().unwrap());
    let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let seen = seen2.clone();
            std::thread::spawn(move || {
                let _ = serve_judge(s, &seen);
            });
        }
    });
    (url, seen)
}

/// Answers one connection's requests as the test judge.
pub fn serve_judge(s: TcpStream, seen: &Mutex<HashMap<String, usize>>) -> std::io::Result<()> {
    let mut r = BufReader::new(s.try_clone()?);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut len = 0;
        loop {
            let mut h = String::new();
            r.read_line(&mut h)?;
            if h.trim().is_empty() {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body)?;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let user = v["messages"][1]["content"].as_str().unwrap_or("").to_string();
        *seen.lock().unwrap().entry(user.clone()).or_default() += 1;
        let a = between(&user, "Review A:\n", "\n\nReview B:");
        let b = between(&user, "Review B:\n", "\n\nFIRST");
        std::thread::sleep(Duration::from_millis(3));
        let reply = serde_json::json!({"choices": [{"message": {"role": "assistant", "content": verdict(a, b)}}],
            "usage": {"total_tokens": 50}})
        .to_string();
        let mut w = s.try_clone()?;
        write!(
            w,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{reply}",
            reply.len()
        )?;
        w.flush()?;
    }
}

/// The `[oracle]` table of a run judged by [`judge_server`] at `url`, `concurrency` questions in flight.
pub fn judge_oracle(url: &str, concurrency: usize) -> String {
    format!(
        r#"[oracle]
kind = "judge"
[oracle.judge]
base_url = "{url}"
model = "test-judge"
api_key_env = "ACTIVEPREF_TEST_UNSET_KEY"
retries = 2
backoff_s = 0.01
timeout_s = 5
concurrency = {concurrency}"#
    )
}
