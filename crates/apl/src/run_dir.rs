//! The run directory: where each of a run's files lives, and the one way they are written.
//!
//! `store.sqlite` is the source of truth; `round-N/policy.safetensors` holds the trainable tensors after round
//! N (`round-N/train/` the trainer's checkpoints while it runs); `metrics.jsonl`, `labels.jsonl` and
//! `report.html` are derived from the store and rewritten after every step ([`crate::report::write_outputs`]).
//! Whole files the run rewrites (the config, the derived files) go through [`write_atomic`], so a reader (or a
//! resumed run) never sees half a file; the policy ([`crate::policy::save_trainable`]) and the trainer's
//! checkpoints are synced and renamed into place too.

use crate::config::ActiveConfig;
use anyhow::{Context as _, Result};
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Paths of a run directory.
#[derive(Debug, Clone)]
pub struct RunDir(pub PathBuf);

impl RunDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self(dir.into())
    }
    pub fn store(&self) -> PathBuf {
        self.0.join("store.sqlite")
    }
    pub fn round(&self, r: usize) -> PathBuf {
        self.0.join(format!("round-{r}"))
    }
    pub fn policy(&self, r: usize) -> PathBuf {
        self.round(r).join("policy.safetensors")
    }
    /// The round's policy as a PEFT LoRA adapter directory, for a server that loads adapters.
    pub fn adapter(&self, r: usize) -> PathBuf {
        self.round(r).join("adapter")
    }
    /// The round's policy as a whole HF model, when a command trainer fine-tuned every weight.
    pub fn model(&self, r: usize) -> PathBuf {
        self.round(r).join("model")
    }
    pub fn train(&self, r: usize) -> PathBuf {
        self.round(r).join("train")
    }
    pub fn metrics(&self) -> PathBuf {
        self.0.join("metrics.jsonl")
    }
    pub fn labels(&self) -> PathBuf {
        self.0.join("labels.jsonl")
    }
    pub fn report(&self) -> PathBuf {
        self.0.join("report.html")
    }
    pub fn config(&self) -> PathBuf {
        self.0.join("config.toml")
    }
    /// The configuration the run was started with (`config.toml`, written when the loop opens the run).
    pub fn read_config(&self) -> Result<ActiveConfig> {
        ActiveConfig::from_toml_file(&self.config())
    }
}

/// Writes via a temporary file and a rename, so a reader never sees half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("partial");
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
