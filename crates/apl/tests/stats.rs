//! The experiment's statistics (`apl::stats`) on synthetic outcomes with known answers, and how the report
//! shows them.

use apl::stats::{labels_to_reach, summarize, Options, Outcome};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use report::{experiment_table, render_experiment, ExperimentReport, ExperimentStats};

const LABELS: [usize; 4] = [10, 20, 30, 40];
/// random's true win rate per label count (percent).
const RANDOM: [usize; 4] = [50, 55, 60, 65];

fn opts(replicates: usize) -> Options {
    Options { replicates, ..Options::default() }
}

/// Outcomes whose means are exact: with 200 prompts, (7p + 13s) mod 100 takes every residue twice for every
/// seed, so a prompt wins when its residue is below the win rate in percent and each seed's mean is exact.
/// `offset[c]` is added to random's percent at label count c.
fn strategy(name: &str, seeds: u64, prompts: usize, pct: impl Fn(usize) -> usize) -> Vec<Outcome> {
    let mut out = Vec::new();
    for seed in 0..seeds {
        for (c, &labels) in LABELS.iter().enumerate() {
            for p in 0..prompts {
                let residue = (7 * p + 13 * seed as usize) % 100;
                out.push(Outcome {
                    strategy: name.into(),
                    seed,
                    labels,
                    prompt: format!("prompt {p}"),
                    win: if residue < pct(c) { 1.0 } else { 0.0 },
                });
            }
        }
    }
    out
}

fn synthetic(seeds: u64) -> Vec<Outcome> {
    let mut o = strategy("random", seeds, 200, |c| RANDOM[c]);
    o.extend(strategy("plus5", seeds, 200, |c| RANDOM[c] + 5));
    o.extend(strategy("same", seeds, 200, |c| RANDOM[c]));
    // Tops out at 62%: never reaches random's final 65%.
    o.extend(strategy("never", seeds, 200, |c| [50, 52, 57, 62][c]));
    o
}

fn cell<'a>(st: &'a ExperimentStats, s: &str, labels: usize) -> &'a report::CellStats {
    st.cells.iter().find(|c| c.strategy == s && c.labels == labels).unwrap()
}

fn savings<'a>(st: &'a ExperimentStats, s: &str) -> &'a report::Savings {
    st.savings.iter().find(|c| c.strategy == s).unwrap()
}

#[test]
fn known_answers_for_plus5_identical_and_never() {
    let st = summarize(&synthetic(3), &opts(300));
    assert_eq!(st.seeds, 3);
    assert!(!st.prompts_only);
    assert_eq!(st.baseline.as_deref(), Some("random"));
    assert!(st.notes.is_empty(), "{:?}", st.notes);

    for (c, &l) in LABELS.iter().enumerate() {
        let r = cell(&st, "random", l);
        assert!((r.win_rate.mean - RANDOM[c] as f64 / 100.0).abs() < 1e-12);
        assert!(r.win_rate.lo <= r.win_rate.mean && r.win_rate.mean <= r.win_rate.hi);
        assert!(r.diff.is_none(), "the baseline has no difference to itself");
        assert_eq!((r.seeds, r.prompts), (3, 200));

        // (a) +5 points everywhere: the difference is 0.05, paired, and its interval excludes 0.
        let d = cell(&st, "plus5", l).diff.clone().unwrap();
        assert!(d.paired && d.paired_prompts == 200);
        assert!((d.mean - 0.05).abs() < 1e-12, "{d:?}");
        assert!(d.lo > 0.0 && d.lo <= d.mean && d.mean <= d.hi && d.hi < 0.1, "{d:?}");

        // (b) identical to random: difference 0, and every paired replicate agrees.
        let d = cell(&st, "same", l).diff.clone().unwrap();
        assert_eq!((d.mean, d.lo, d.hi), (0.0, 0.0, 0.0));
    }

    // random needs 40 labels to reach its own final 65%.
    let r = savings(&st, "random");
    assert_eq!((r.target, r.baseline_labels, r.share, r.censored), (0.65, 40, Some(1.0), false));
    // (a) plus5 reaches 65% at 30 labels (its curve: 55, 60, 65, 70): 75% of random's.
    let p = savings(&st, "plus5");
    assert!((p.labels_needed.unwrap() - 30.0).abs() < 1e-9 && (p.share.unwrap() - 0.75).abs() < 1e-9, "{p:?}");
    assert!(!p.censored);
    let (lo, hi) = (p.share_lo.unwrap(), p.share_hi.unwrap());
    assert!(lo <= 0.75 && (0.75..1.0).contains(&hi), "{p:?}");
    // (b) identical: the same 40 labels, share 1.
    let s = savings(&st, "same");
    assert_eq!((s.share, s.share_lo, s.share_hi, s.censored), (Some(1.0), Some(1.0), Some(1.0), false));
    // (c) never reaches 65%: censored at its largest label count.
    let n = savings(&st, "never");
    assert!(n.censored && n.labels_needed.is_none() && n.share.is_none() && n.max_labels == 40, "{n:?}");
    assert!(n.censored_replicates > 0.9, "{n:?}");

    // The table and the page show "mean [lo, hi]", the differences and the savings.
    let rep = ExperimentReport { cells: vec![], stats: Some(st), ..Default::default() };
    let t = experiment_table(&rep);
    assert!(t.contains("65.0 ["), "{t}");
    assert!(t.contains("Difference to random") && t.contains("+5.0 [+"), "{t}");
    assert!(t.contains("| never ") && t.contains("> 40") && t.contains("censored"), "{t}");
    assert!(t.contains("75% ["), "{t}");
    assert!(t.contains("crossed design") && !t.contains("across prompts only"), "{t}");
    let html = render_experiment(&rep);
    assert!(html.contains("id=\"difference\"") && html.contains("id=\"savings\"") && html.contains("&gt; 40"));
    assert_eq!(html.matches("<svg").count(), 1);
    // results.json carries the statistics and reads back.
    let json = serde_json::to_string(&rep).unwrap();
    assert!(json.contains("\"censored\":true") && json.contains("\"share\":0.75"), "{json}");
    let back: ExperimentReport = serde_json::from_str(&json).unwrap();
    assert_eq!(back.stats.as_ref().unwrap().savings, rep.stats.as_ref().unwrap().savings);
    assert_eq!(back.stats.unwrap().cells.len(), 16);
}

#[test]
fn one_seed_resamples_prompts_only_and_says_so() {
    let st = summarize(&synthetic(1), &opts(200));
    assert!(st.prompts_only && st.seeds == 1);
    assert!(st.notes.iter().any(|n| n.contains("across prompts only")));
    // Prompt resampling still gives +5 a positive interval.
    assert!(cell(&st, "plus5", 20).diff.as_ref().unwrap().lo > 0.0);
    let r = cell(&st, "random", 20);
    assert!(r.win_rate.lo < r.win_rate.mean && r.win_rate.mean < r.win_rate.hi, "{r:?}");
    let t = experiment_table(&ExperimentReport { stats: Some(st), ..Default::default() });
    assert!(t.contains("across prompts only"), "{t}");
}

#[test]
fn intervals_cover_the_true_mean() {
    // Bernoulli(0.6) outcomes, 3 seeds × 100 prompts, with a per-seed shift of ±3 points: the 95% interval
    // should contain 0.6 in most of 20 independent data sets.
    let mut rng = StdRng::seed_from_u64(7);
    let mut covered = 0;
    for k in 0..20 {
        let mut o = Vec::new();
        for seed in 0..3u64 {
            let p = 0.6 + [-0.03, 0.0, 0.03][seed as usize];
            for i in 0..100 {
                let win = if rng.random::<f64>() < p { 1.0 } else { 0.0 };
                o.push(Outcome { strategy: "random".into(), seed, labels: 8, prompt: format!("{i}"), win });
            }
        }
        let st = summarize(&o, &Options { replicates: 200, seed: k, ..Options::default() });
        let w = st.cells[0].win_rate;
        if w.lo <= 0.6 && 0.6 <= w.hi {
            covered += 1;
        }
    }
    assert!(covered >= 16, "covered {covered}/20");
}

#[test]
fn different_prompts_fall_back_to_an_unpaired_difference() {
    let mut o = strategy("random", 2, 200, |c| RANDOM[c]);
    let mut other = strategy("other", 2, 200, |c| RANDOM[c] + 5);
    for x in &mut other {
        x.prompt = format!("other {}", x.prompt);
    }
    o.extend(other);
    let st = summarize(&o, &opts(200));
    let d = cell(&st, "other", 10).diff.clone().unwrap();
    assert!(!d.paired && d.paired_prompts == 0);
    assert!((d.mean - 0.05).abs() < 1e-12 && d.lo < d.mean && d.mean < d.hi, "{d:?}");
    assert!(st.notes.iter().any(|n| n.contains("unpaired")), "{:?}", st.notes);
    let t = experiment_table(&ExperimentReport { stats: Some(st), ..Default::default() });
    assert!(t.contains("unpaired"), "{t}");
}

#[test]
fn no_baseline_and_no_outcomes_do_not_panic() {
    let st = summarize(&strategy("hybrid", 2, 20, |c| RANDOM[c]), &opts(20));
    assert!(st.baseline.is_none() && st.savings.is_empty());
    assert!(st.cells.iter().all(|c| c.diff.is_none()));
    assert!(st.notes.iter().any(|n| n.contains("no `random` strategy")));
    let _ = experiment_table(&ExperimentReport { stats: Some(st), ..Default::default() });

    let st = summarize(&[], &opts(20));
    assert!(st.cells.is_empty() && st.notes.is_empty());
    assert_eq!(experiment_table(&ExperimentReport { stats: Some(st), ..Default::default() }), "no results yet\n");
}

#[test]
fn labels_to_reach_interpolates_the_crossing() {
    let c = [(10.0, 0.5), (20.0, 0.6), (40.0, 0.7)];
    assert!((labels_to_reach(&c, 0.65).unwrap() - 30.0).abs() < 1e-9);
    assert_eq!(labels_to_reach(&c, 0.6), Some(20.0));
    assert_eq!(labels_to_reach(&c, 0.4), Some(10.0));
    assert_eq!(labels_to_reach(&c, 0.71), None);
    assert_eq!(labels_to_reach(&[], 0.5), None);
}

/// A prompt judged twice in one run counts once, with its mean outcome, so that a paired difference is
/// the difference of the two strategies' means: random wins prompt "a" once of twice (0.5) and loses "b";
/// the other strategy wins both.
#[test]
fn a_prompt_judged_twice_in_a_run_counts_once() {
    let o = |strategy: &str, prompt: &str, win: f64| Outcome {
        strategy: strategy.into(),
        seed: 0,
        labels: 8,
        prompt: prompt.into(),
        win,
    };
    let outcomes = vec![
        o("random", "a", 1.0),
        o("random", "a", 0.0),
        o("random", "b", 0.0),
        o("hybrid", "a", 1.0),
        o("hybrid", "b", 1.0),
    ];
    let st = summarize(&outcomes, &opts(50));
    assert!((cell(&st, "random", 8).win_rate.mean - 0.25).abs() < 1e-12);
    let d = cell(&st, "hybrid", 8).diff.as_ref().unwrap();
    assert!((d.mean - 0.75).abs() < 1e-12 && d.paired && d.paired_prompts == 2, "{d:?}");
}
