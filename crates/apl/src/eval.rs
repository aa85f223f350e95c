//! Evaluation statistics and the run report: win rates with their standard errors, and the data the HTML
//! report plots (learning curve, acquisition-score histograms with oracle agreement, training curves).

use crate::active::{ActiveLoop, RoundResult};
use anyhow::Result;
use report::{AcquiredPoint, AcquisitionRound, RoundSummary, RunReport, SampleRow, TrainPoint, TrainingCurve};

/// Mean of per-prompt outcomes (1 win, 0 loss, 0.5 tie) and its standard error over prompts
/// (sd / √n; for 0/1 outcomes this is the binomial √(p(1−p)/n)).
pub fn mean_binomial_se(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n;
    (m, (var / n).sqrt())
}

/// The run's HTML report, built from the store.
pub fn run_report(run: &ActiveLoop, results: &[RoundResult]) -> Result<String> {
    let cfg = &run.cfg;
    let mut rep = RunReport {
        title: format!("activepref run — {}, seed {}", cfg.acquisition.strategy.name(), cfg.seed),
        subtitle: format!(
            "model {} · oracle {} · β {} · {} rounds to {} labels · run dir {}",
            if cfg.model.is_empty() { "SmolLM2-135M-Instruct" } else { &cfg.model },
            run.oracle.name(),
            cfg.train.loss.beta,
            cfg.rounds.targets().len(),
            cfg.rounds.targets().last().copied().unwrap_or(0),
            run.dir.0.display()
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
        let points = run
            .store
            .scored_points(r.round)?
            .into_iter()
            .map(|p| AcquiredPoint {
                p_hat: p.p_hat,
                score: p.score,
                selected: p.selected,
                // With p̂ = ½ (the first round, π = π_ref) the model favours neither: no agreement to speak of.
                oracle_agrees: match p.preferred {
                    Some(Some(pref)) if (p.p_hat - 0.5).abs() > 1e-9 => Some((p.p_hat > 0.5) == (pref == 0)),
                    _ => None,
                },
            })
            .collect();
        rep.acquisitions.push(AcquisitionRound {
            round: r.round,
            strategy: cfg.acquisition.strategy.name().to_string(),
            points,
        });
        let metrics = run.dir.train(r.round).join("metrics.jsonl");
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
        for j in run.store.judgments(last.round)?.into_iter().take(8) {
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
    if let Ok(Some(n)) = run.store.meta("oracle_note") {
        rep.notes.push(n);
    }
    Ok(report::render_run(&rep))
}
