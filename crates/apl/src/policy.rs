//! A round's policy as a plain model: the starting model with the round's trainable tensors (LoRA A/B merged
//! in, or full weights) put back. The loop samples and evaluates with it, and `activepref serve --round N`
//! serves it; both load it here, so a policy means the same thing everywhere.

use crate::run_dir::RunDir;
use anyhow::{anyhow, bail, Context as _, Result};
use candle_core::Tensor;
use dpo::train::LoraConfig;
use lm::LanguageModel;
use std::collections::HashMap;

/// The policy after `round` rounds of the run in `dir` (0 = the starting model `base` itself, copied), from
/// whatever the round's trainer left: the trainable tensors (`policy.safetensors`, the local trainer), or a
/// PEFT adapter (`adapter/`) or a whole HF model (`model/`) from a command trainer.
pub fn load_policy(
    base: &LanguageModel,
    lora: Option<&LoraConfig>,
    dir: &RunDir,
    round: usize,
) -> Result<LanguageModel> {
    if round == 0 {
        return base.with_params(base.params.clone());
    }
    if dir.policy(round).exists() {
        return policy_from_trainable(base, lora, &load_trainable(base, dir, round)?);
    }
    match trained_form(dir, round) {
        Some(Form::Adapter) => lm::adapter::apply(base, &dir.adapter(round)),
        Some(Form::Model) => LanguageModel::load(&dir.model(round), base.device(), base.dtype()),
        None => bail!(
            "{}: missing (round {round} has not been trained, or its files were deleted)",
            dir.policy(round).display()
        ),
    }
}

/// What a command trainer left for a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Adapter,
    Model,
}

/// Which of a command trainer's results the round holds, if any (the local trainer's is `policy.safetensors`).
pub fn trained_form(dir: &RunDir, round: usize) -> Option<Form> {
    if dir.adapter(round).join(lm::adapter::CONFIG_FILE).exists() {
        Some(Form::Adapter)
    } else if dir.model(round).join("config.json").exists() {
        Some(Form::Model)
    } else {
        None
    }
}

/// Checks that round `round`'s policy is on disk and readable, in whichever form its trainer left it.
pub fn check_saved(base: &LanguageModel, dir: &RunDir, round: usize) -> Result<()> {
    if dir.policy(round).exists() {
        return load_trainable(base, dir, round).map(|_| ());
    }
    match trained_form(dir, round) {
        Some(Form::Adapter) => lm::adapter::Adapter::read(&dir.adapter(round), base).map(|_| ()),
        Some(Form::Model) => lm::load::load_tokenizer(&dir.model(round)).map(|_| ()),
        None => bail!("{}: missing", dir.policy(round).display()),
    }
}

/// The trainable tensors saved after `round` (what `retrain = "continue"` starts the next round from).
pub fn load_trainable(base: &LanguageModel, dir: &RunDir, round: usize) -> Result<HashMap<String, Tensor>> {
    let path = dir.policy(round);
    if !path.exists() {
        bail!("{}: missing (round {round} has not been trained, or its file was deleted)", path.display());
    }
    candle_core::safetensors::load(&path, base.device())
        .map_err(|e| anyhow!("{}: {e} (delete round-{round} to retrain it)", path.display()))
}

/// Saves the trainable tensors after `round`, durably: written to a temporary file, synced, renamed into
/// place, and the directory synced, so once this returns a power cut cannot leave the name over missing data.
pub fn save_trainable(dir: &RunDir, round: usize, t: &HashMap<String, Tensor>) -> Result<()> {
    let path = dir.policy(round);
    let tmp = path.with_extension("partial");
    candle_core::safetensors::save(t, &tmp).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    sync_dir(&dir.round(round))
}

/// Syncs a directory, so the entries renamed into it are on disk.
pub fn sync_dir(dir: &std::path::Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))
}

/// A plain model from the base and a round's trainable tensors (LoRA A/B merged in, or full weights).
pub fn policy_from_trainable(
    base: &LanguageModel,
    lora: Option<&LoraConfig>,
    t: &HashMap<String, Tensor>,
) -> Result<LanguageModel> {
    match lora {
        Some(l) => {
            let mut m = base.with_params(base.params.clone())?;
            let vars = m.add_lora(l.r, l.alpha, &l.target_modules, 0)?;
            for (name, v) in vars {
                let x = t.get(&name).ok_or_else(|| anyhow!("policy tensor `{name}` is missing"))?;
                v.set(&x.to_dtype(v.dtype())?)?;
            }
            base.with_params(m.merged_params()?)
        }
        None => {
            let mut p = base.params.clone();
            for (name, x) in t {
                if !p.contains(name) {
                    bail!("policy tensor `{name}` is not a parameter of the model");
                }
                p.insert(name.clone(), x.clone());
            }
            base.with_params(p)
        }
    }
}
