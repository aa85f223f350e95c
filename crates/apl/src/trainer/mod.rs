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
    if let Ok(state) = serde_json::from_str::<serde_json::Value>(&text) {
        let log = state.get("log_history")?.as_array()?;
        return log.iter().rev().find_map(|e| e.get("loss").or_else(|| e.get("train_loss"))?.as_f64());
    }
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v["loss"].as_f64())
}
