//! The run's derived files, rebuilt from the store, the config and the run directory alone: `metrics.jsonl`
//! (per-round results), `labels.jsonl` (every label in TRL's preference format) and `report.html` (learning
//! curve, acquisition-score histograms with oracle agreement, training curves, sample judgments).
//!
//! Nothing here needs a loaded model or a live loop, so the loop rewrites them after every step and any
//! other reader (a dashboard, a finished run) can rebuild them.

use crate::config::ActiveConfig;
use crate::results::{oracle_agrees, round_results, RoundResult};
use crate::run_dir::{write_atomic, RunDir};
use crate::store::{Store, ORACLE_NAME, ORACLE_NOTE};
use ::report::{AcquiredPoint, AcquisitionRound, RoundSummary, RunReport, SampleRow, TrainPoint, TrainingCurve};
use anyhow::Result;
use serde_json::json;

/// Rewrites the derived files — metrics.jsonl, labels.jsonl (TRL format), report.html — from the store.
pub fn write_outputs(store: &Store, cfg: &ActiveConfig, dir: &RunDir) -> Result<Vec<RoundResult>> {
    let results = round_results(store)?;
    let mut m = String::new();
    for r in &results {
        m.push_str(&serde_json::to_string(r)?);
        m.push('\n');
    }
    write_atomic(&dir.metrics(), m.as_bytes())?;
    let mut l = String::new();
    let rounds = cfg.rounds.targets().len();
    for x in store.labels(rounds)? {
        l.push_str(&trl_row(&x).to_string());
        l.push('\n');
    }
    write_atomic(&dir.labels(), l.as_bytes())?;
    let html = run_report(store, cfg, dir, &results)?;
    write_atomic(&dir.report(), html.as_bytes())?;
    Ok(results)
}

/// A label as a row of TRL's preference format (`prompt`, `chosen`, `rejected`; `round` and `oracle` besides).
pub fn trl_row(x: &crate::store::Label) -> serde_json::Value {
    let q = &x.query;
    json!({"prompt": q.prompt, "chosen": q.completions[x.preferred], "rejected": q.completions[1 - x.preferred],
        "round": q.round, "oracle": x.oracle})
}

/// The run's HTML report, built from the store.
pub fn run_report(store: &Store, cfg: &ActiveConfig, dir: &RunDir, results: &[RoundResult]) -> Result<String> {
    let oracle = store.meta(ORACLE_NAME)?.unwrap_or_else(|| format!("{:?}", cfg.oracle.kind).to_lowercase());
    let mut rep = RunReport {
        title: format!("activepref run — {}, seed {}", cfg.acquisition.strategy.name(), cfg.seed),
        subtitle: format!(
            "model {} · oracle {} · β {} · {} rounds to {} labels · run dir {}",
            if cfg.model.is_empty() { "SmolLM2-135M-Instruct" } else { &cfg.model },
            oracle,
            cfg.train.loss.beta,
            cfg.rounds.targets().len(),
            cfg.rounds.targets().last().copied().unwrap_or(0),
            dir.0.display()
        ),
        config_toml: cfg.to_toml(),
        ..Default::default()
    };
    for r in results {
        rep.rounds.push(RoundSummary {
            round: r.round,
            labels: r.labels,
            win_rate: r.win_rate,
            win_rate_se: r.win_rate_se,
            eval_prompts: r.eval_prompts,
            dropped: r.dropped,
            oracle_agreement: r.oracle_agreement,
            train_loss: r.train_loss,
            seconds: r.train_seconds.map(|t| t + r.acquisition_seconds),
        });
        let points = store
            .scored_points(r.round)?
            .into_iter()
            .map(|p| AcquiredPoint {
                p_hat: p.p_hat,
                score: p.score,
                selected: p.selected,
                oracle_agrees: oracle_agrees(&p),
            })
            .collect();
        rep.acquisitions.push(AcquisitionRound {
            round: r.round,
            strategy: cfg.acquisition.strategy.name().to_string(),
            points,
        });
        let metrics = dir.train(r.round).join("metrics.jsonl");
        let text = std::fs::read_to_string(&metrics).unwrap_or_default();
        let points = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.get("loss").is_some())
            .map(|v| TrainPoint {
                step: v["step"].as_u64().unwrap_or(0),
                loss: v["loss"].as_f64().unwrap_or(f64::NAN),
                chosen: v["rewards/chosen"].as_f64().unwrap_or(f64::NAN),
                rejected: v["rewards/rejected"].as_f64().unwrap_or(f64::NAN),
                margin: v["rewards/margins"].as_f64().unwrap_or(f64::NAN),
                accuracy: v["rewards/accuracies"].as_f64().unwrap_or(f64::NAN),
            })
            .collect();
        rep.training.push(TrainingCurve { round: r.round, points });
    }
    if let Some(last) = results.iter().rev().find(|r| r.win_rate.is_some()) {
        for j in store.judgments(last.round)?.into_iter().take(8) {
            rep.samples.push(SampleRow {
                prompt: j.prompt,
                policy: j.policy,
                baseline: j.baseline,
                winner: match j.win {
                    w if w > 0.5 => format!("round {}", last.round),
                    w if w < 0.5 => "start".into(),
                    _ => "tie".into(),
                },
            });
        }
    }
    if let Ok(Some(n)) = store.meta(ORACLE_NOTE) {
        rep.notes.push(n);
    }
    Ok(::report::render_run(&rep))
}
