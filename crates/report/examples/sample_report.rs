//! Writes sample reports filled with synthetic (but plausibly shaped) data, so a person can look at the layout:
//!
//! ```text
//! cargo run -p activepref-report --example sample_report            # 5 rounds
//! cargo run -p activepref-report --example sample_report -- 14      # many rounds (sequential colours)
//! ```
//!
//! Output: `target/report-example.html` (one run) and `target/report-experiment-example.html` (strategies × seeds,
//! with the IMDB means of the paper's table, docs/algorithm.md#the-papers-results, and made-up seed noise).

use report::{
    render_experiment, render_run, AcquiredPoint, AcquisitionRound, Cell, ExperimentReport, RoundSummary, RunReport,
    SampleRow, TrainPoint, TrainingCurve,
};
use std::path::PathBuf;

/// SplitMix64: a tiny deterministic generator so the example needs no `rand` dependency and always looks the same.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let u = self.uniform().max(1e-12);
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn sample_run(n_rounds: usize) -> RunReport {
    let mut rng = Rng(7);
    let per_round = 64;
    let mut r = RunReport {
        title: "activepref run — hybrid, seed 0".into(),
        subtitle: "SmolLM2-135M-Instruct (LoRA r 8) · oracle: VADER sentiment · acquisition: hybrid (entropy filter, \
                   then most-certain pair) · 64 labels per round"
            .into(),
        config_toml: "[model]\npath = \"assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf\"\nlora_rank = 8\n\n\
                      [acquisition]\nstrategy = \"hybrid\"\nlabels_per_round = 64\nospf = 8\nogf = 8\n\n\
                      [dpo]\nbeta = 0.1\nlr = 5e-4\nepochs = 4\n"
            .into(),
        ..Default::default()
    };
    // Round 0: the untrained policy against itself.
    r.rounds.push(RoundSummary {
        round: 0,
        labels: 0,
        win_rate: Some(0.5),
        win_rate_se: Some(0.022),
        eval_prompts: 512,
        dropped: 3,
        seconds: Some(41.0),
        ..Default::default()
    });
    for round in 1..=n_rounds {
        // Acquisition: in round 1 π = π_ref, so every p̂ is exactly 0.5 and every certainty score ties.
        let spread = 0.9 * (round as f64 - 1.0);
        let mut points: Vec<AcquiredPoint> = (0..512)
            .map(|_| {
                let p_hat = sigmoid(spread * rng.normal());
                AcquiredPoint { p_hat, score: (p_hat - 0.5).abs() * 2.0, selected: false, oracle_agrees: None }
            })
            .collect();
        let mut order: Vec<usize> = (0..points.len()).collect();
        order.sort_by(|&a, &b| points[b].score.total_cmp(&points[a].score));
        for &i in order.iter().take(per_round) {
            let p = &mut points[i];
            p.selected = true;
            // The oracle tends to agree with confident predictions, but not always ("confidently wrong" mass);
            // a few labels go missing (oracle refused).
            let agree_p = 0.5 + 0.3 * p.score;
            p.oracle_agrees = if rng.uniform() < 0.04 { None } else { Some(rng.uniform() < agree_p) };
        }
        let agreement = {
            let l: Vec<bool> = points.iter().filter_map(|p| p.oracle_agrees).collect();
            l.iter().filter(|a| **a).count() as f64 / l.len().max(1) as f64
        };
        r.acquisitions.push(AcquisitionRound { round, strategy: "hybrid".into(), points });

        // Training: loss falls from ln 2, the margin grows, accuracy rises — noisier early on.
        let steps = 40 + 8 * round as u64;
        let mut tp = Vec::new();
        for step in 0..steps {
            let t = step as f64 / steps as f64;
            let strength = 1.0 + 0.35 * round as f64;
            let margin = strength * 2.2 * (1.0 - (-3.0 * t).exp()) + 0.25 * rng.normal();
            let chosen = 0.35 * margin + 0.1 * rng.normal();
            let rejected = chosen - margin;
            let loss = (1.0 + (-margin).exp()).ln().max(0.0) + 0.03 * rng.normal().abs();
            let accuracy = (sigmoid(1.6 * margin) + 0.08 * rng.normal()).clamp(0.0, 1.0);
            tp.push(TrainPoint { step, loss, chosen, rejected, margin, accuracy });
        }
        let train_loss = tp.last().map(|p| p.loss);
        r.training.push(TrainingCurve { round, points: tp });

        let win = 0.5 + 0.33 * (1.0 - (-0.45 * round as f64).exp()) + 0.01 * rng.normal();
        r.rounds.push(RoundSummary {
            round,
            labels: round * per_round,
            win_rate: Some(win),
            win_rate_se: Some((win * (1.0 - win) / 500.0).sqrt()),
            eval_prompts: 512,
            dropped: (rng.uniform() * 12.0) as usize,
            oracle_agreement: Some(agreement),
            train_loss,
            seconds: Some(95.0 + 20.0 * round as f64 + 10.0 * rng.uniform()),
        });
    }
    r.samples = vec![
        SampleRow {
            prompt: "This film was a complete".into(),
            policy: " delight from start to finish, with a warm and funny script.".into(),
            baseline: " waste of time and the ending made no sense.".into(),
            winner: "policy".into(),
        },
        SampleRow {
            prompt: "The acting is uneven, but".into(),
            policy: " the story kept me hooked and the score is gorgeous.".into(),
            baseline: " the cinematography is stunning and the cast clearly had fun.".into(),
            winner: "baseline".into(),
        },
        SampleRow {
            prompt:
                "<script>alert('escaped?')</script> A long prompt that wraps over several lines to show that table \
                     cells break long text instead of stretching the page sideways"
                    .into(),
            policy: "A heartfelt & \"genuinely\" moving film.".into(),
            baseline: "It is a movie.".into(),
            winner: "tie".into(),
        },
    ];
    r.notes = vec![
        "Round 1 acquisition: π = π_ref, so every p̂ is 0.5 and certainty ties are broken by a seeded shuffle \
         (docs/algorithm.md#the-first-round)."
            .into(),
        "Synthetic data: this page was written by examples/sample_report.rs to preview the layout.".into(),
    ];
    r
}

fn sample_experiment() -> ExperimentReport {
    let mut rng = Rng(11);
    // IMDB means and s.e. from the paper's table (docs/algorithm.md#the-papers-results); seeds are drawn around them.
    let table = [
        ("Random", 9, [(67.0, 1.2), (76.1, 0.9), (84.6, 0.5), (88.2, 0.4)]),
        ("Entropy", 6, [(68.2, 1.1), (73.8, 0.9), (84.1, 0.9), (89.0, 0.4)]),
        ("Pref Certainty", 9, [(67.6, 0.3), (81.6, 0.5), (87.5, 0.7), (90.1, 0.4)]),
        ("Entropy+Certainty", 9, [(68.1, 0.4), (81.2, 0.7), (89.4, 0.6), (91.5, 0.5)]),
    ];
    let mut cells = Vec::new();
    for (strategy, seeds, vals) in table {
        for (labels, (mean, se)) in [128, 256, 512, 768].into_iter().zip(vals) {
            let sd = se * (seeds as f64).sqrt() / 100.0;
            let win_rates = (0..seeds).map(|_| mean / 100.0 + sd * rng.normal()).collect();
            cells.push(Cell { strategy: strategy.into(), labels, win_rates });
        }
    }
    ExperimentReport {
        title: "IMDB — acquisition strategies".into(),
        subtitle: "GPT-2 policy · GPT-4 oracle · win rate vs SFT on 1024 prompts (synthetic seeds around the paper's \
                   means)"
            .into(),
        cells,
        notes: vec!["Entropy has 6 seeds, the others 9, as in the paper.".into()],
        stats: None,
    }
}

fn main() -> std::io::Result<()> {
    let n_rounds = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target");
    std::fs::create_dir_all(&target)?;
    let target = target.canonicalize()?;
    let run = target.join("report-example.html");
    std::fs::write(&run, render_run(&sample_run(n_rounds)))?;
    let exp = target.join("report-experiment-example.html");
    std::fs::write(&exp, render_experiment(&sample_experiment()))?;
    println!("wrote {}\nwrote {}", run.display(), exp.display());
    println!("{}", report::experiment_table(&sample_experiment()));
    Ok(())
}
