//! Self-contained HTML reports for activepref runs and experiments.
//!
//! Why this crate exists: an active-learning run is judged by a handful of pictures — the win rate as labels
//! accumulate, what the acquisition function actually picked (were the "certain" pairs confidently right or
//! confidently wrong?), and whether DPO training behaved. People look at these on a laptop, on a cluster without a
//! browser stack, or attached to an e-mail, so the output is a single HTML file with inline SVG: no JavaScript, no
//! external CSS or fonts, readable when opened from disk and printable.
//!
//! The crate knows nothing about models or oracles. The loop fills plain data structs ([`RunReport`],
//! [`ExperimentReport`]), which are serde types so they can also be saved as JSON next to a run and re-rendered
//! later. Rendering never panics on odd input: empty lists produce "nothing yet" text, and NaN or infinite values
//! are skipped rather than drawn.
//!
//! Entry points:
//! * [`render_run`] — one run: win rate vs labels, per-round acquisition histograms, training curves, tables.
//! * [`render_experiment`] and [`experiment_table`] — several strategies × seeds, the paper's headline table.
//! * [`mean_se`] — the mean and standard error used by both.

use serde::{Deserialize, Serialize};

/// `write!` into a `String` cannot fail; this keeps the many SVG/HTML writes free of `Result` noise.
macro_rules! w {
    ($dst:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = write!($dst, $($arg)*);
    }};
}

mod experiment;
mod html;
mod run;
mod svg;

pub use experiment::{experiment_table, mean_se, render_experiment};
pub use html::escape_html;
pub use run::render_run;
pub use svg::nice_ticks;

/// Everything shown in the report of one active-learning run. The loop appends to it as rounds finish and can
/// re-render at any point; every list may be empty.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct RunReport {
    /// Page heading, e.g. "activepref run — hybrid, seed 0".
    pub title: String,
    /// One line under the heading: model, oracle, strategy.
    pub subtitle: String,
    /// The run's configuration, shown verbatim (escaped) in a collapsible block.
    pub config_toml: String,
    /// One entry per evaluated/trained round, in round order.
    pub rounds: Vec<RoundSummary>,
    /// What the acquisition function scored and picked, per round.
    pub acquisitions: Vec<AcquisitionRound>,
    /// DPO training metrics, one curve per round.
    pub training: Vec<TrainingCurve>,
    /// Warnings and facts worth a reader's attention, shown as a list.
    pub notes: Vec<String>,
    /// A few evaluation examples.
    pub samples: Vec<SampleRow>,
}

/// The outcome of one round of the loop.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct RoundSummary {
    pub round: usize,
    /// Cumulative number of preference labels used to train this round's policy.
    pub labels: usize,
    /// Fraction (0..1) of evaluation prompts on which the judge preferred the policy over the baseline.
    pub win_rate: Option<f64>,
    /// Standard error of `win_rate` (a fraction, like the win rate).
    pub win_rate_se: Option<f64>,
    pub eval_prompts: usize,
    /// Evaluation prompts without a usable verdict (judge refused, parse failure, tie), left out of the win rate.
    pub dropped: usize,
    /// Fraction of this round's labels on which the oracle agreed with the model's own preference.
    pub oracle_agreement: Option<f64>,
    /// Final training loss of the round.
    pub train_loss: Option<f64>,
    /// Wall-clock seconds the round took.
    pub seconds: Option<f64>,
}

/// The candidates one acquisition step scored, and which of them it sent to the oracle.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct AcquisitionRound {
    pub round: usize,
    /// Acquisition function name, e.g. "hybrid".
    pub strategy: String,
    pub points: Vec<AcquiredPoint>,
}

/// One candidate pair as the acquisition function saw it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct AcquiredPoint {
    /// The model's predicted probability that completion 0 is preferred (sigmoid of the implicit reward gap).
    pub p_hat: f64,
    /// Acquisition score (higher = more wanted).
    pub score: f64,
    /// Whether the pair was sent to the oracle.
    pub selected: bool,
    /// For labelled points: did the oracle prefer the completion the model favoured? `None` when not labelled.
    pub oracle_agrees: Option<bool>,
}

/// DPO training metrics of one round.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct TrainingCurve {
    pub round: usize,
    pub points: Vec<TrainPoint>,
}

/// One logged training step (TRL's metric names: loss, rewards/chosen, rewards/rejected, rewards/margins,
/// rewards/accuracies).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct TrainPoint {
    pub step: u64,
    pub loss: f64,
    pub chosen: f64,
    pub rejected: f64,
    pub margin: f64,
    pub accuracy: f64,
}

/// One evaluation example: the prompt, both completions and the judge's verdict.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct SampleRow {
    pub prompt: String,
    pub policy: String,
    pub baseline: String,
    /// "policy", "baseline", "tie" or any other verdict text; "policy"/"baseline" highlight that completion.
    pub winner: String,
}

/// Results of several strategies × seeds, as in the paper's headline table (docs/algorithm.md#the-papers-results).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct ExperimentReport {
    pub title: String,
    pub subtitle: String,
    pub cells: Vec<Cell>,
    pub notes: Vec<String>,
    /// Bootstrap intervals, differences to the baseline strategy and label savings (`apl::stats`); when present
    /// the table shows "mean [lo, hi]" from these instead of ± s.e. across seeds.
    pub stats: Option<ExperimentStats>,
}

/// The statistics of an experiment: per strategy and label count the mean win rate with a percentile-bootstrap
/// interval, the difference to the baseline strategy (`random`) with its interval, and the labels each strategy
/// needs to reach the baseline's final win rate. The bootstrap resamples seeds and prompts as a crossed design
/// (one prompt resample shared by every seed and strategy of a replicate, which pairs the differences).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct ExperimentStats {
    /// Bootstrap replicates behind every interval.
    pub replicates: usize,
    /// Coverage of the intervals (0.95).
    pub level: f64,
    /// Distinct seeds found across all strategies.
    pub seeds: usize,
    /// Fewer than two seeds: the intervals resample prompts only, so they say nothing of seed-to-seed variation.
    pub prompts_only: bool,
    /// The strategy differences and savings are measured against; `None` when the experiment has none.
    pub baseline: Option<String>,
    pub cells: Vec<CellStats>,
    pub savings: Vec<Savings>,
    /// Facts about how the intervals were made (unpaired fallbacks, missing baseline), one line each.
    pub notes: Vec<String>,
}

/// A mean (a fraction) with its interval.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
#[serde(default)]
pub struct Interval {
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
}

/// One strategy at one label count.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct CellStats {
    pub strategy: String,
    pub labels: usize,
    /// Seeds with outcomes in this cell.
    pub seeds: usize,
    /// Distinct prompts evaluated in this cell (over its seeds).
    pub prompts: usize,
    /// Win rate against the starting model: mean over seeds of the mean over prompts.
    pub win_rate: Interval,
    /// Win rate minus the baseline's at the same label count; `None` for the baseline itself or where the
    /// baseline has no result at this label count.
    pub diff: Option<Difference>,
}

/// A strategy's win rate minus the baseline's, with its interval.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct Difference {
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
    /// Paired per seed and prompt (both evaluated the same prompts); `false`: the runs evaluated different
    /// prompts, so the two means were resampled independently.
    pub paired: bool,
    /// Prompts the pairing used (shared by both strategies, over the shared seeds); 0 when unpaired.
    pub paired_prompts: usize,
}

/// The label-savings figure: the labels a strategy needs to reach the baseline's final win rate (linearly
/// interpolated on its curve of mean win rate vs labels), as a share of the baseline's final label count.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct Savings {
    pub strategy: String,
    /// The baseline's mean win rate at its largest label count.
    pub target: f64,
    /// The baseline's largest label count.
    pub baseline_labels: usize,
    /// This strategy's largest label count (the N of a censored "> N").
    pub max_labels: usize,
    /// Labels needed to reach `target`; `None` when censored.
    pub labels_needed: Option<f64>,
    /// `labels_needed / baseline_labels`; `None` when censored.
    pub share: Option<f64>,
    /// Interval of the share; a bound is `None` where that quantile of the replicates never reached the target.
    pub share_lo: Option<f64>,
    pub share_hi: Option<f64>,
    /// The strategy's curve never reaches the target: it needs more than `max_labels` labels.
    pub censored: bool,
    /// Fraction of bootstrap replicates in which the strategy never reached the replicate's target.
    pub censored_replicates: f64,
}

/// The win rates of one strategy at one label budget, one value (a fraction 0..1) per seed. Cells with the same
/// strategy and label count are merged.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct Cell {
    pub strategy: String,
    pub labels: usize,
    pub win_rates: Vec<f64>,
}
