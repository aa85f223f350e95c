//! Per-round results, read from the run store alone: win rate against the starting model with its standard
//! error, the oracle's agreement with the model's own preference, labels, dropped points, loss and times.
//!
//! Everything that reports on a run — `activepref run`'s table, `metrics.jsonl`, the HTML report, the labeling
//! app's dashboard, `experiment` — reads them here, so no two places can compute a win rate differently, and
//! none needs a loaded model or a live loop.

use crate::store::{ScoredPoint, Store};
use anyhow::Result;

/// Per-round results, as the report and `experiment` read them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RoundResult {
    pub round: usize,
    pub labels: usize,
    pub dropped: usize,
    pub win_rate: Option<f64>,
    pub win_rate_se: Option<f64>,
    pub eval_prompts: usize,
    /// Fraction of labelled points where the oracle preferred the completion the model favoured.
    pub oracle_agreement: Option<f64>,
    pub train_loss: Option<f64>,
    pub acquisition_seconds: f64,
    pub train_seconds: Option<f64>,
}

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

/// Win rate of `round`'s policy against the starting model over the prompts judged so far, with its
/// standard error and the number judged; `None` before any judgment.
pub fn win_rate(store: &Store, round: usize) -> Result<Option<(f64, f64, usize)>> {
    let wins: Vec<f64> = prompt_outcomes(store, round)?.into_iter().map(|o| o.1).collect();
    Ok((!wins.is_empty()).then(|| {
        let (m, se) = mean_binomial_se(&wins);
        (m, se, wins.len())
    }))
}

/// Per-prompt outcomes of `round`'s policy against the starting model, by prompt id: (prompt text, 1 win /
/// 0 loss / 0.5 tie). The text is the prompt's identity across runs (store ids are per run); the win rate is
/// their mean, and `experiment`'s bootstrap ([`crate::stats`]) resamples them.
pub fn prompt_outcomes(store: &Store, round: usize) -> Result<Vec<(String, f64)>> {
    Ok(store.judgments(round)?.into_iter().map(|j| (j.prompt, j.win)).collect())
}

/// Whether the oracle preferred the completion the model favoured at acquisition (p̂ > ½ favours
/// completion 0). `None` when the point has no label with a preference, or when p̂ = ½ (the first round,
/// π = π_ref): the model favoured neither, so there is no agreement to speak of.
pub fn oracle_agrees(p: &ScoredPoint) -> Option<bool> {
    match p.preferred {
        Some(Some(pref)) if (p.p_hat - 0.5).abs() > 1e-9 => Some((p.p_hat > 0.5) == (pref == 0)),
        _ => None,
    }
}

/// Per-round results of every trained round, from the store.
pub fn round_results(store: &Store) -> Result<Vec<RoundResult>> {
    let mut out = Vec::new();
    let eval_n = store.prompts("eval")?.len();
    for t in store.rounds()? {
        let round = t.round;
        let wr = win_rate(store, round)?;
        let agree: Vec<bool> = store.scored_points(round)?.iter().filter_map(oracle_agrees).collect();
        out.push(RoundResult {
            round,
            labels: t.labels,
            dropped: store.dropped(round)?,
            win_rate: wr.map(|w| w.0),
            win_rate_se: wr.map(|w| w.1),
            eval_prompts: eval_n,
            oracle_agreement: (!agree.is_empty())
                .then(|| agree.iter().filter(|&&a| a).count() as f64 / agree.len() as f64),
            train_loss: t.train_loss,
            acquisition_seconds: store.acquisition_seconds(round)?,
            train_seconds: t.train_seconds,
        });
    }
    Ok(out)
}
