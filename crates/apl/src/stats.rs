//! An experiment's statistics, from per-prompt outcomes alone: per strategy and label count the mean win rate
//! with a 95% percentile-bootstrap interval, the difference to the baseline strategy (`random`) with its
//! interval, and the label-savings figure (the labels a strategy needs to reach the baseline's final win rate,
//! as a share of the baseline's) with its interval or a censored "> N".
//!
//! The outcomes are a crossed design: every seed's runs are judged on prompts, and the same prompt is judged for
//! every seed and strategy (when the runs share their held-out prompts). A bootstrap replicate therefore resamples
//! seeds with replacement and, independently, prompts with replacement, and applies the one prompt resample to
//! every seed and strategy; that shared resample is what pairs a strategy's difference to the baseline. With
//! fewer than two seeds only prompts are resampled, and the result says so (`prompts_only`). Prompts are keyed by
//! their text (store ids are per run); a difference is paired on the prompts both runs of a seed evaluated, and
//! where a seed's runs share none, the two means are resampled independently (unpaired) and a note says so.
//!
//! Pure and deterministic: a seeded RNG and a fixed number of replicates ([`Options`]).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use report::{CellStats, Difference, ExperimentStats, Interval, Savings};
use std::collections::HashMap;

/// One judged prompt of one run at one label count: 1 = the policy won, 0 = lost, 0.5 = tie.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub strategy: String,
    pub seed: u64,
    pub labels: usize,
    /// The prompt's identity across runs (its text).
    pub prompt: String,
    pub win: f64,
}

/// How the intervals are made.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Bootstrap replicates.
    pub replicates: usize,
    /// Seed of the resampling RNG.
    pub seed: u64,
    /// Coverage of the intervals.
    pub level: f64,
    /// The strategy differences and savings are measured against.
    pub baseline: String,
}

impl Default for Options {
    fn default() -> Self {
        Self { replicates: 2000, seed: 0, level: 0.95, baseline: "random".into() }
    }
}

/// One run's outcomes at one label count: (prompt index, outcome).
type Run = Vec<(usize, f64)>;

/// A paired cell: per seed, (prompt, strategy − baseline) on the prompts both evaluated; and how many prompts.
type Paired = Option<(Vec<Option<Run>>, usize)>;

/// Weighted mean over seeds (weights `v`) of the weighted mean over prompts (weights `w`) of each seed's run;
/// `None` when no seed with weight has a prompt with weight.
fn mean(runs: &[Option<Run>], v: &[f64], w: &[f64]) -> Option<f64> {
    let (mut num, mut den) = (0.0, 0.0);
    for (s, run) in runs.iter().enumerate() {
        let Some(run) = run else { continue };
        if v[s] == 0.0 {
            continue;
        }
        let (mut a, mut b) = (0.0, 0.0);
        for &(p, x) in run {
            a += w[p] * x;
            b += w[p];
        }
        if b > 0.0 {
            num += v[s] * a / b;
            den += v[s];
        }
    }
    (den > 0.0).then(|| num / den)
}

/// The labels at which `curve` (label count, mean; ascending labels) first reaches `target`, linearly
/// interpolated between the two label counts that bracket the crossing; the first label count when the curve
/// starts at or above it; `None` when it never does.
pub fn labels_to_reach(curve: &[(f64, f64)], target: f64) -> Option<f64> {
    let i = curve.iter().position(|&(_, m)| m >= target - 1e-12)?;
    if i == 0 {
        return Some(curve[0].0);
    }
    let ((l0, m0), (l1, m1)) = (curve[i - 1], curve[i]);
    Some(l0 + ((target - m0) / (m1 - m0)).clamp(0.0, 1.0) * (l1 - l0))
}

/// The nearest-rank `q` quantile of sorted values (infinities allowed).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    let k = ((q * n as f64).ceil() as usize).clamp(1, n);
    sorted[k - 1]
}

/// Percentile interval of the replicates (non-finite values sort last); `None` without replicates.
fn interval(mut xs: Vec<f64>, level: f64) -> Option<(f64, f64)> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    let a = (1.0 - level) / 2.0;
    Some((quantile(&xs, a), quantile(&xs, 1.0 - a)))
}

/// A multinomial resample of `n` items as counts; all ones when `fixed`.
fn resample(rng: &mut StdRng, n: usize, fixed: bool) -> Vec<f64> {
    let mut c = vec![if fixed { 1.0 } else { 0.0 }; n];
    if !fixed {
        for _ in 0..n {
            c[rng.random_range(0..n)] += 1.0;
        }
    }
    c
}

/// A curve of (labels, mean) of one strategy under weights, skipping label counts without a value.
fn curve(cells: &[Vec<Option<Run>>], labels: &[usize], v: &[f64], w: &[f64]) -> Vec<(f64, f64)> {
    labels.iter().zip(cells).filter_map(|(&l, runs)| mean(runs, v, w).map(|m| (l as f64, m))).collect()
}

/// Savings share of `curve` against the baseline's curve; `INFINITY` when censored, `None` when the baseline
/// has no curve.
fn share(curve: &[(f64, f64)], base: &[(f64, f64)]) -> Option<f64> {
    let &(bl, target) = base.last()?;
    Some(labels_to_reach(curve, target).map_or(f64::INFINITY, |n| n / bl))
}

/// The statistics of an experiment's outcomes. Strategies keep their first-seen order, label counts ascend.
pub fn summarize(outcomes: &[Outcome], opt: &Options) -> ExperimentStats {
    let mut strategies: Vec<String> = Vec::new();
    let mut labels: Vec<usize> = Vec::new();
    let mut seeds: Vec<u64> = Vec::new();
    let mut prompts: HashMap<&str, usize> = HashMap::new();
    for o in outcomes {
        if !strategies.contains(&o.strategy) {
            strategies.push(o.strategy.clone());
        }
        labels.push(o.labels);
        seeds.push(o.seed);
        let n = prompts.len();
        prompts.entry(o.prompt.as_str()).or_insert(n);
    }
    labels.sort_unstable();
    labels.dedup();
    seeds.sort_unstable();
    seeds.dedup();
    let (ns, np) = (seeds.len(), prompts.len());
    // data[strategy][label][seed]: that run's outcomes at that label count.
    let mut data: Vec<Vec<Vec<Option<Run>>>> = vec![vec![vec![None; ns]; labels.len()]; strategies.len()];
    for o in outcomes.iter().filter(|o| o.win.is_finite()) {
        let r = strategies.iter().position(|s| *s == o.strategy).unwrap_or_default();
        let c = labels.binary_search(&o.labels).unwrap_or_default();
        let s = seeds.binary_search(&o.seed).unwrap_or_default();
        data[r][c][s].get_or_insert_with(Vec::new).push((prompts[o.prompt.as_str()], o.win));
    }
    // A prompt judged more than once in a run (the same text drawn twice) counts once, with its mean
    // outcome: the prompt is the unit that pairs across runs and that the bootstrap resamples.
    for run in data.iter_mut().flatten().flatten().flatten() {
        let mut by_prompt: std::collections::BTreeMap<usize, (f64, f64)> = std::collections::BTreeMap::new();
        for &(p, x) in run.iter() {
            let e = by_prompt.entry(p).or_default();
            e.0 += x;
            e.1 += 1.0;
        }
        *run = by_prompt.into_iter().map(|(p, (sum, n))| (p, sum / n)).collect();
    }
    let base = strategies.iter().position(|s| *s == opt.baseline);
    let prompts_only = ns < 2;
    let mut notes = Vec::new();
    if prompts_only && !outcomes.is_empty() {
        notes.push(
            "fewer than 2 seeds: intervals are across prompts only (seed-to-seed variation is not in them)".into(),
        );
    }
    if base.is_none() && !outcomes.is_empty() {
        notes.push(format!("no `{}` strategy: no differences or label savings", opt.baseline));
    }

    // Paired differences per (strategy, label): per seed, (prompt, strategy − baseline) on shared prompts. A cell
    // is paired when every seed both have shares at least one prompt.
    let mut paired: Vec<Vec<Paired>> = vec![vec![None; labels.len()]; strategies.len()];
    if let Some(b) = base {
        for r in (0..strategies.len()).filter(|&r| r != b) {
            for c in 0..labels.len() {
                let mut diffs: Vec<Option<Run>> = vec![None; ns];
                let (mut ok, mut any, mut shared) = (true, false, std::collections::HashSet::new());
                for s in 0..ns {
                    let (Some(x), Some(y)) = (&data[r][c][s], &data[b][c][s]) else { continue };
                    any = true;
                    let ys: HashMap<usize, f64> = y.iter().copied().collect();
                    let d: Run = x.iter().filter_map(|&(p, v)| ys.get(&p).map(|&u| (p, v - u))).collect();
                    if d.is_empty() {
                        ok = false;
                    }
                    shared.extend(d.iter().map(|e| e.0));
                    diffs[s] = Some(d);
                }
                if any && ok {
                    paired[r][c] = Some((diffs, shared.len()));
                } else if data[r][c].iter().any(Option::is_some) && data[b][c].iter().any(Option::is_some) {
                    notes.push(format!(
                        "{} at {} labels: its runs and {}'s evaluated different prompts, so the difference is \
                         unpaired (the two means resampled independently)",
                        strategies[r], labels[c], opt.baseline
                    ));
                }
            }
        }
    }

    // Point estimates: every seed and prompt once.
    let (v1, w1) = (vec![1.0; ns], vec![1.0; np]);
    let point: Vec<Vec<Option<f64>>> =
        data.iter().map(|cells| cells.iter().map(|runs| mean(runs, &v1, &w1)).collect()).collect();
    let diff_point = |r: usize, c: usize| -> Option<f64> {
        let b = base?;
        match &paired[r][c] {
            Some((d, _)) => mean(d, &v1, &w1),
            None => Some(point[r][c]? - point[b][c]?),
        }
    };

    // Replicates.
    let mut rng = StdRng::seed_from_u64(opt.seed);
    let mut reps_mean: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); labels.len()]; strategies.len()];
    let mut reps_diff: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); labels.len()]; strategies.len()];
    let mut reps_share: Vec<Vec<f64>> = vec![Vec::new(); strategies.len()];
    for _ in 0..opt.replicates {
        let v = resample(&mut rng, ns, prompts_only);
        let w = resample(&mut rng, np, false);
        // An independent resample for unpaired differences.
        let v2 = resample(&mut rng, ns, prompts_only);
        let w2 = resample(&mut rng, np, false);
        let means: Vec<Vec<Option<f64>>> =
            data.iter().map(|cells| cells.iter().map(|runs| mean(runs, &v, &w)).collect()).collect();
        for r in 0..strategies.len() {
            for c in 0..labels.len() {
                if let Some(m) = means[r][c] {
                    reps_mean[r][c].push(m);
                }
                let Some(b) = base.filter(|&b| b != r) else { continue };
                let d = match &paired[r][c] {
                    Some((d, _)) => mean(d, &v, &w),
                    None => means[r][c].zip(mean(&data[b][c], &v2, &w2)).map(|(x, y)| x - y),
                };
                if let Some(d) = d {
                    reps_diff[r][c].push(d);
                }
            }
        }
        if let Some(b) = base {
            let bc = curve(&data[b], &labels, &v, &w);
            for r in 0..strategies.len() {
                if let Some(s) = share(&curve(&data[r], &labels, &v, &w), &bc) {
                    reps_share[r].push(s);
                }
            }
        }
    }

    let mut cells = Vec::new();
    for r in 0..strategies.len() {
        for c in 0..labels.len() {
            let Some(m) = point[r][c] else { continue };
            let runs = &data[r][c];
            let mut ps: Vec<usize> = runs.iter().flatten().flatten().map(|e| e.0).collect();
            ps.sort_unstable();
            ps.dedup();
            let (lo, hi) = interval(reps_mean[r][c].clone(), opt.level).unwrap_or((m, m));
            let diff = (base != Some(r)).then(|| diff_point(r, c)).flatten().map(|d| {
                let (lo, hi) = interval(reps_diff[r][c].clone(), opt.level).unwrap_or((d, d));
                let pp = paired[r][c].as_ref().map(|p| p.1);
                Difference { mean: d, lo, hi, paired: pp.is_some(), paired_prompts: pp.unwrap_or(0) }
            });
            cells.push(CellStats {
                strategy: strategies[r].clone(),
                labels: labels[c],
                seeds: runs.iter().filter(|x| x.is_some()).count(),
                prompts: ps.len(),
                win_rate: Interval { mean: m, lo, hi },
                diff,
            });
        }
    }

    let mut savings = Vec::new();
    if let Some(b) = base {
        let bc = curve(&data[b], &labels, &v1, &w1);
        if let Some(&(bl, target)) = bc.last() {
            for r in 0..strategies.len() {
                let cr = curve(&data[r], &labels, &v1, &w1);
                let Some(&(max, _)) = cr.last() else { continue };
                let needed = labels_to_reach(&cr, target);
                let reps = &reps_share[r];
                let (lo, hi) = interval(reps.clone(), opt.level).unwrap_or((f64::INFINITY, f64::INFINITY));
                let finite = |x: f64| x.is_finite().then_some(x);
                savings.push(Savings {
                    strategy: strategies[r].clone(),
                    target,
                    baseline_labels: bl as usize,
                    max_labels: max as usize,
                    labels_needed: needed,
                    share: needed.map(|n| n / bl),
                    share_lo: finite(lo),
                    share_hi: finite(hi),
                    censored: needed.is_none(),
                    censored_replicates: if reps.is_empty() {
                        0.0
                    } else {
                        reps.iter().filter(|x| !x.is_finite()).count() as f64 / reps.len() as f64
                    },
                });
            }
        }
    }

    ExperimentStats {
        replicates: opt.replicates,
        level: opt.level,
        seeds: ns,
        prompts_only,
        baseline: base.map(|b| strategies[b].clone()),
        cells,
        savings,
        notes,
    }
}
