//! A run's state on disk: `checkpoint-N/` directories (trainable tensors, optimizer state, trainer state,
//! cached reference log-probs, and a loadable model or PEFT adapter), the final model in `final/`, exact
//! resume from a checkpoint, and finding the checkpoint to resume from.
//!
//! Why a file of its own: saving and resuming must agree byte for byte on the layout, so both halves live
//! together, apart from the training loop that only decides when to save.

use crate::config::LoraConfig;
use crate::optim::Optimizer;
use crate::train::Trainer;
use anyhow::{anyhow, bail, Context as _, Result};
use candle_core::{Tensor, Var};
use lm::LanguageModel;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

impl Trainer {
    /// Trainable tensors, optimizer state and trainer state; for full fine-tuning also a loadable HF model.
    pub fn save_checkpoint(&self) -> Result<()> {
        write_checkpoint(&self.out, self.step, |tmp| {
            let state = json!({"step": self.step, "total_steps": self.total_steps(), "optimizer_t": self.opt.t,
                "config": self.cfg, "trainable": self.trainable_names()});
            save_run_state(tmp, &self.policy, &self.vars, &self.opt, self.cfg.lora.as_ref(), &state)?;
            if let Some(r) = &self.ref_train {
                std::fs::write(tmp.join("ref_logps.json"), serde_json::to_string(r)?)?;
            }
            Ok(())
        })
    }

    /// The trained model as an HF directory in `final/` (adapters merged), loadable by `generate`.
    pub fn save_final(&self) -> Result<()> {
        save_final_model(&self.out, &self.policy, &self.vars, self.cfg.lora.as_ref())
    }

    /// Continues from a checkpoint written by [`Trainer::save_checkpoint`].
    pub fn resume(&mut self, ckpt: &Path) -> Result<()> {
        let (state, step) = read_trainer_state(ckpt)?;
        load_run_state(ckpt, self.policy.device(), &self.vars, &mut self.opt, &state, step)?;
        // The checkpoint's reference log-probs must match this run's: otherwise the data, its order or the
        // model changed since, and continuing would silently train on something else.
        if let Some(now) = &self.ref_train {
            check_ref_logps(ckpt, now, |a: &(f32, f32), b| (a.0 - b.0).abs() < 1e-3 && (a.1 - b.1).abs() < 1e-3)?;
        }
        self.step = step;
        keep_metrics_through(&self.out, step)
    }

    /// Continues from the latest checkpoint in [`Trainer::out`] if there is one, and returns it; `None` (and
    /// nothing changed) when the directory holds no checkpoint.
    pub fn resume_latest(&mut self) -> Result<Option<PathBuf>> {
        let Some(ckpt) = latest_checkpoint(&self.out) else { return Ok(None) };
        self.resume(&ckpt)?;
        Ok(Some(ckpt))
    }
}

/// Writes `checkpoint-{step}` under `out`: `fill` writes the files into a temporary directory, which is synced,
/// then renamed into place (a resume trusts any `checkpoint-N`), and the rename synced. Shared by the DPO and KTO
/// trainers so both lay checkpoints down the same way.
pub(crate) fn write_checkpoint(out: &Path, step: u64, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = out.join(format!("checkpoint-{step}"));
    let tmp = out.join(format!(".checkpoint-{step}.partial"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    fill(&tmp)?;
    let _ = std::fs::remove_dir_all(&dir);
    // On disk before it has its name (a resume trusts any `checkpoint-N`), and the name on disk after.
    sync_files_and_dir(&tmp)?;
    std::fs::rename(&tmp, &dir).with_context(|| format!("moving the checkpoint to {}", dir.display()))?;
    sync_files_and_dir(out)?;
    Ok(())
}

/// What both trainers put in every checkpoint: the trainable tensors, the optimizer's state, `state` as
/// `trainer_state.json`, and a PEFT adapter (LoRA) or a loadable HF model (full fine-tuning).
pub(crate) fn save_run_state(
    dir: &Path,
    policy: &LanguageModel,
    vars: &[(String, Var)],
    opt: &Optimizer,
    lora: Option<&LoraConfig>,
    state: &Value,
) -> Result<()> {
    candle_core::safetensors::save(&vars_tensors(vars), dir.join("trainable.safetensors"))?;
    let o: HashMap<String, Tensor> = opt.state()?.into_iter().collect();
    candle_core::safetensors::save(&o, dir.join("optimizer.safetensors"))?;
    std::fs::write(dir.join("trainer_state.json"), serde_json::to_string_pretty(state)?)?;
    match lora {
        Some(l) => save_adapter(dir, policy, vars, l),
        None => policy.save(dir),
    }
}

/// A checkpoint's `trainer_state.json` and its step.
pub(crate) fn read_trainer_state(ckpt: &Path) -> Result<(Value, u64)> {
    let state_path = ckpt.join("trainer_state.json");
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(&state_path).with_context(|| format!("reading {}", state_path.display()))?,
    )
    .with_context(|| format!("{}: not valid JSON", state_path.display()))?;
    let step = state["step"].as_u64().ok_or_else(|| anyhow!("{}: `step` is missing", state_path.display()))?;
    Ok((state, step))
}

/// Restores what [`save_run_state`] wrote: every trainable tensor (checked by name and shape) and the
/// optimizer's state at the step `state` records.
pub(crate) fn load_run_state(
    ckpt: &Path,
    device: &candle_core::Device,
    vars: &[(String, Var)],
    opt: &mut Optimizer,
    state: &Value,
    step: u64,
) -> Result<()> {
    let t_path = ckpt.join("trainable.safetensors");
    let t = candle_core::safetensors::load(&t_path, device).map_err(|e| anyhow!("{}: {e}", t_path.display()))?;
    for (name, v) in vars {
        let x = t.get(name).ok_or_else(|| anyhow!("{}: tensor `{name}` is missing", t_path.display()))?;
        if x.dims() != v.dims() {
            bail!("{}: tensor `{name}` has shape {:?}, the run has {:?}", t_path.display(), x.dims(), v.dims());
        }
        v.set(&x.to_dtype(v.dtype())?)?;
    }
    let o_path = ckpt.join("optimizer.safetensors");
    let o = candle_core::safetensors::load(&o_path, device).map_err(|e| anyhow!("{}: {e}", o_path.display()))?;
    opt.load_state(state["optimizer_t"].as_u64().unwrap_or(step), &o)
}

/// Refuses a checkpoint whose cached reference log-probs (`ref_logps.json`, if it has one) differ from this
/// run's `now`: the data, its order or the model changed since, and continuing would silently train on
/// something else.
pub(crate) fn check_ref_logps<T: serde::de::DeserializeOwned>(
    ckpt: &Path,
    now: &[T],
    close: impl Fn(&T, &T) -> bool,
) -> Result<()> {
    let r_path = ckpt.join("ref_logps.json");
    let Ok(text) = std::fs::read_to_string(&r_path) else { return Ok(()) };
    let then: Vec<T> = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", r_path.display()))?;
    if then.len() != now.len() || !then.iter().zip(now).all(|(a, b)| close(a, b)) {
        bail!(
            "{}: the checkpoint was made with other training data or another model \
             (its cached reference log-probs differ from this run's)",
            ckpt.display()
        );
    }
    Ok(())
}

/// Every trainable tensor as it is now, detached, by name.
pub(crate) fn vars_tensors(vars: &[(String, Var)]) -> HashMap<String, Tensor> {
    vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().detach())).collect()
}

/// Overwrites every trainable tensor from `tensors`; each must be there, with its shape.
pub(crate) fn set_vars(vars: &[(String, Var)], tensors: &HashMap<String, Tensor>) -> Result<()> {
    for (name, v) in vars {
        let x = tensors.get(name).ok_or_else(|| anyhow!("trainable tensor `{name}` is missing"))?;
        if x.dims() != v.dims() {
            bail!("trainable tensor `{name}` has shape {:?}, the model has {:?}", x.dims(), v.dims());
        }
        v.set(&x.to_dtype(v.dtype())?)?;
    }
    Ok(())
}

/// The trained model as an HF directory in `out/final` (adapters merged), loadable by `generate`, and for
/// LoRA the PEFT adapter alone in `out/adapter`. Not beside the merged weights: transformers with PEFT installed
/// applies an `adapter_config.json` it finds in a model directory, which would add the adapter a second time.
pub(crate) fn save_final_model(
    out: &Path,
    policy: &LanguageModel,
    vars: &[(String, Var)],
    lora: Option<&LoraConfig>,
) -> Result<()> {
    policy.with_params(policy.merged_params()?)?.save(&out.join("final"))?;
    if let Some(l) = lora {
        let dir = out.join("adapter");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        save_adapter(&dir, policy, vars, l)?;
    }
    Ok(())
}

/// PEFT's LoRA adapter files in `dir`, as PEFT's `save_pretrained` writes them and `lm::adapter`, PEFT and
/// vLLM read them: `adapter_model.safetensors` (the trainable `vars` under PEFT's `base_model.model.` prefix and
/// the HF module path, which for GPT-2 starts with `transformer.`) and `adapter_config.json` (`target_modules`
/// as the modules' last names, one `r`/`lora_alpha` for all, no patterns: vLLM ignores `rank_pattern`).
pub(crate) fn save_adapter(dir: &Path, policy: &LanguageModel, vars: &[(String, Var)], l: &LoraConfig) -> Result<()> {
    write_peft_adapter(dir, policy, &vars_tensors(vars), l)
}

/// [`save_adapter`] from the LoRA tensors by name (`….lora_A.weight`, `….lora_B.weight`), as a round of the
/// loop saves them: what a server that loads PEFT adapters (vLLM, `activepref serve --openai`) reads.
pub fn write_peft_adapter(
    dir: &Path,
    policy: &LanguageModel,
    tensors: &HashMap<String, Tensor>,
    l: &LoraConfig,
) -> Result<()> {
    let gpt2 = policy.config.arch == lm::Arch::Gpt2;
    let prefix = if gpt2 { "base_model.model.transformer." } else { "base_model.model." };
    let t: HashMap<String, Tensor> = tensors.iter().map(|(n, v)| (format!("{prefix}{n}"), v.detach())).collect();
    candle_core::safetensors::save(&t, dir.join("adapter_model.safetensors"))?;
    let mut modules: Vec<String> = policy
        .lora_targets(&l.target_modules)
        .iter()
        .filter_map(|stem| stem.rsplit('.').next().map(str::to_string))
        .collect();
    modules.sort();
    modules.dedup();
    let cfg = json!({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": l.r, "lora_alpha": l.alpha,
        "target_modules": modules, "lora_dropout": 0.0, "bias": "none", "use_rslora": false, "use_dora": false,
        "modules_to_save": null, "fan_in_fan_out": gpt2, "rank_pattern": {}, "alpha_pattern": {}});
    std::fs::write(dir.join("adapter_config.json"), serde_json::to_string_pretty(&cfg)?)?;
    Ok(())
}

/// Drops the lines of `out/metrics.jsonl` logged after `step` (a resumed run's file then reads like one run).
pub(crate) fn keep_metrics_through(out: &Path, step: u64) -> Result<()> {
    let mpath = out.join("metrics.jsonl");
    if let Ok(text) = std::fs::read_to_string(&mpath) {
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<Value>(l).ok().and_then(|v| v["step"].as_u64()).is_some_and(|s| s <= step)
            })
            .collect();
        std::fs::write(&mpath, kept.iter().map(|l| format!("{l}\n")).collect::<String>())?;
    }
    Ok(())
}

/// Syncs the plain files directly in `dir`, then `dir` itself (its entries).
pub(crate) fn sync_files_and_dir(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_file() {
            std::fs::File::open(&p).and_then(|f| f.sync_all()).with_context(|| format!("syncing {}", p.display()))?;
        }
    }
    std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))
}

/// The latest `checkpoint-N` directory under `out`, if any.
pub fn latest_checkpoint(out: &Path) -> Option<PathBuf> {
    std::fs::read_dir(out)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.strip_prefix("checkpoint-").and_then(|n| n.parse::<u64>().ok()).map(|n| (n, e.path()))
        })
        .max_by_key(|(n, _)| *n)
        .map(|(_, p)| p)
}

/// The checkpoint to resume from (`--resume [DIR]`): with no `given` directory, the latest `checkpoint-N`
/// under `out`; otherwise `given` itself if it is a checkpoint, or else the latest checkpoint under it.
pub fn find_checkpoint(out: &Path, given: Option<&Path>) -> Result<PathBuf> {
    match given {
        None => {
            latest_checkpoint(out).ok_or_else(|| anyhow!("--resume: no checkpoint-N directory in {}", out.display()))
        }
        Some(r) if r.join("trainer_state.json").exists() => Ok(r.to_path_buf()),
        Some(r) => {
            latest_checkpoint(r).ok_or_else(|| anyhow!("--resume {}: not a checkpoint and holds none", r.display()))
        }
    }
}
