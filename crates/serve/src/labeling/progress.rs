//! Where the run stands (the round being labelled, its target, and what the loop is doing), computed from the
//! store alone: the labeling page's progress bar and the dashboard's header show it.

use super::LabelingState;
use anyhow::Result;
use apl::store::{RoundProgress, Store};
use serde::Serialize;

/// Where the run stands, for the progress bar and the dashboard's header.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    /// The round being labelled (or prepared).
    pub round: usize,
    pub rounds: Option<usize>,
    /// Its cumulative label target.
    pub target: Option<usize>,
    /// Labels with a preference, all rounds up to this one (what the target counts).
    pub labelled: usize,
    /// Ties and non-answers of this round (dropped and re-acquired by the loop).
    pub dropped: usize,
    /// Queries of this round waiting for a label.
    pub pending: usize,
    /// `labelling`, `training` (the round has its labels), `preparing` (the loop is acquiring or evaluating),
    /// `finished`, or `waiting` (no round has started).
    pub state: &'static str,
    pub message: String,
}

pub(super) fn progress(rounds: &[RoundProgress], trained: usize, targets: &[usize]) -> Progress {
    let cumulative = |r: usize| rounds.iter().filter(|p| p.round <= r).map(|p| p.labelled).sum::<usize>();
    let n = (!targets.is_empty()).then_some(targets.len());
    let open = rounds.iter().find(|p| !p.trained);
    let (round, state) = match open {
        Some(p) if p.pending > 0 => (p.round, "labelling"),
        Some(p) if targets.get(p.round - 1).is_some_and(|&t| cumulative(p.round) >= t) => (p.round, "training"),
        Some(p) => (p.round, "preparing"),
        None if n.is_some_and(|n| trained >= n) => (trained, "finished"),
        None if trained == 0 && rounds.is_empty() => (1, "waiting"),
        None => (trained + 1, "preparing"),
    };
    let p = rounds.iter().find(|p| p.round == round);
    let target = targets.get(round.max(1) - 1).copied();
    let labelled = cumulative(round);
    let of = |x: usize| match target {
        Some(t) => format!("{x} of {t}"),
        None => x.to_string(),
    };
    let message = match state {
        "labelling" => {
            format!("Round {round}: {} labels, {} pair(s) waiting.", of(labelled), p.map_or(0, |p| p.pending))
        }
        "training" => format!("Round {round} has all its labels; the loop is training on them."),
        "finished" => format!("The run is finished: {round} round(s) labelled and trained. Thank you!"),
        "waiting" => "The run has not asked for labels yet; pairs appear here as soon as it does.".into(),
        _ => format!(
            "The loop is preparing round {round} (training, evaluating or choosing new pairs); \
             new pairs appear here automatically."
        ),
    };
    Progress {
        round,
        rounds: n,
        target,
        labelled,
        dropped: p.map_or(0, |p| p.dropped),
        pending: p.map_or(0, |p| p.pending),
        state,
        message,
    }
}

pub(super) fn progress_of(st: &LabelingState, store: &Store) -> Result<Progress> {
    Ok(progress(&store.round_progress()?, store.rounds()?.len(), &st.targets(store)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_states() {
        let rp = |round, labelled, pending, trained| RoundProgress {
            round,
            selected: labelled + pending,
            labelled,
            dropped: 0,
            pending,
            trained,
        };
        let p = progress(&[], 0, &[4, 8]);
        assert_eq!((p.round, p.state), (1, "waiting"));
        let p = progress(&[rp(1, 1, 3, false)], 0, &[4, 8]);
        assert_eq!((p.round, p.state, p.labelled, p.pending, p.target), (1, "labelling", 1, 3, Some(4)));
        let p = progress(&[rp(1, 4, 0, false)], 0, &[4, 8]);
        assert_eq!(p.state, "training");
        let p = progress(&[rp(1, 4, 0, true)], 1, &[4, 8]);
        assert_eq!((p.round, p.state), (2, "preparing"));
        let p = progress(&[rp(1, 4, 0, true), rp(2, 2, 2, false)], 1, &[4, 8]);
        assert_eq!((p.round, p.state, p.labelled), (2, "labelling", 6));
        let p = progress(&[rp(1, 4, 0, true), rp(2, 4, 0, true)], 2, &[4, 8]);
        assert_eq!(p.state, "finished");
    }
}
