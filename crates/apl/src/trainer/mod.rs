//! Who trains each round (`[trainer] backend`): DPO in this process (`local`, the default, `[train]`), or a
//! command the user already runs for DPO (`command`: TRL's `trl dpo`, accelerate + DeepSpeed, OpenRLHF, or
//! `activepref dpo`), given the labels in TRL's format and expected to leave a PEFT adapter or an HF model.
//!
//! One trait, [`TrainerBackend`]: train a round on every label so far and leave its policy in the run
//! directory, durably, before returning — the store marks the round trained only after that, so a run killed
//! during training trains the round again when rerun (the local trainer from its last checkpoint).

mod command;

use crate::config::{ActiveConfig, Retrain, TrainerBackendKind};
use crate::event::Event;
use crate::policy::{load_trainable, save_trainable};
use crate::run_dir::RunDir;
use crate::seed::seed_for;
use crate::seed::stream::TRAIN;
use crate::store::Label;
use anyhow::Result;
use dpo::data::TokenPair;
use dpo::train::Trainer;
use lm::LanguageModel;
use std::path::Path;

pub use command::CommandTrainer;

/// One round's training.
pub struct TrainJob<'a> {
    pub cfg: &'a ActiveConfig,
    pub dir: &'a RunDir,
    /// The starting model.
    pub base: &'a LanguageModel,
    pub round: usize,
    /// Every label so far, in the store's order.
    pub labels: &'a [Label],
    pub events: &'a mut dyn FnMut(Event),
}

/// Trains rounds (see the module docs).
pub trait TrainerBackend {
    /// Trains `job.round` and leaves its policy in the run directory; the last training loss, when known.
    fn train(&self, job: TrainJob) -> Result<Option<f64>>;
}

/// The run's trainer, as its config says.
pub fn open(cfg: &ActiveConfig) -> Box<dyn TrainerBackend> {
    match cfg.trainer.backend {
        TrainerBackendKind::Local => Box::new(LocalTrainer),
        TrainerBackendKind::Command => Box::new(CommandTrainer),
    }
}

/// DPO in this process (`dpo::train`), resuming from the round's latest checkpoint if there is one.
pub struct LocalTrainer;

impl TrainerBackend for LocalTrainer {
    fn train(&self, job: TrainJob) -> Result<Option<f64>> {
        let TrainJob { cfg, dir, base, round, labels, events } = job;
        let pairs: Vec<TokenPair> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| TokenPair {
                line: i + 1,
                prompt: l.query.prompt_tokens.clone(),
                chosen: l.query.tokens[l.preferred].clone(),
                rejected: l.query.tokens[1 - l.preferred].clone(),
            })
            .collect();
        let refs: Vec<(f32, f32)> = labels
            .iter()
            .map(|l| (l.query.ref_logp[l.preferred] as f32, l.query.ref_logp[1 - l.preferred] as f32))
            .collect();
        let mut tcfg = cfg.train.clone();
        tcfg.seed = seed_for(cfg.seed, &[TRAIN, round as u64]);
        let out = dir.train(round);
        let start = base.with_params(base.params.clone())?;
        let mut trainer = Trainer::with_reference_logps(tcfg, start, pairs, vec![], Some(refs), &out, |_, _, _| {})?;
        trainer.save_final_model = false;
        if let Some(ckpt) = trainer.resume_latest()? {
            events(Event::Info(format!("resuming training from {}", ckpt.display())));
        } else {
            if cfg.rounds.retrain == Retrain::Continue && round > 1 {
                trainer.set_trainable(&load_trainable(base, dir, round - 1)?)?;
            }
            // A half-written metrics file from a run killed before its first checkpoint.
            let _ = std::fs::remove_file(out.join("metrics.jsonl"));
        }
        trainer.run(|s| {
            events(Event::Progress { what: "DPO steps".into(), done: s.step as usize, total: s.total as usize })
        })?;
        // On disk (file and directory entry) before the store says the round is trained.
        save_trainable(dir, round, &trainer.trainable_tensors())?;
        Ok(last_loss(&out.join("metrics.jsonl")))
    }
}

/// The last `loss` of a trainer's log: our `metrics.jsonl`, or the `log_history` of transformers'
/// `trainer_state.json`.
pub(crate) fn last_loss(metrics: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(metrics).ok()?;
    // A one-line metrics.jsonl parses as one object too: only an object with `log_history` is a trainer state.
    let state = serde_json::from_str::<serde_json::Value>(&text).ok();
    if let Some(log) = state.as_ref().and_then(|s| s.get("log_history")).and_then(|l| l.as_array()) {
        return log.iter().rev().find_map(|e| e.get("loss").or_else(|| e.get("train_loss"))?.as_f64());
    }
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v["loss"].as_f64())
}

#[cfg(test)]
mod tests {
    use super::last_loss;

    #[test]
    fn the_last_loss_of_either_log() {
        let dir = std::env::temp_dir().join(format!("activepref-last-loss-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let one = dir.join("one.jsonl");
        std::fs::write(&one, "{\"step\": 1, \"loss\": 0.5}\n").unwrap();
        assert_eq!(last_loss(&one), Some(0.5), "a metrics file of one line");
        let two = dir.join("two.jsonl");
        std::fs::write(&two, "{\"loss\": 0.5}\n{\"loss\": 0.25}\n").unwrap();
        assert_eq!(last_loss(&two), Some(0.25));
        let state = dir.join("trainer_state.json");
        std::fs::write(&state, r#"{"log_history": [{"loss": 0.7}, {"train_loss": 0.6}]}"#).unwrap();
        assert_eq!(last_loss(&state), Some(0.6));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
