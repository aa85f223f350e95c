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
