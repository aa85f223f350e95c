//! What the binary's test files share: the binary itself, and the tiny loop job they run it on.
#![allow(dead_code)] // each test file uses its own part

use std::path::{Path, PathBuf};
use std::process::Command;

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
