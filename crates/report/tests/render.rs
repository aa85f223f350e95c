//! Rendering tests: the statistics against hand-computed values, the exact text table, the structure of the HTML
//! (one SVG per plot, escaping), and that odd input (empty, NaN) renders instead of panicking.

use report::{
    experiment_table, mean_se, nice_ticks, render_experiment, render_run, AcquiredPoint, AcquisitionRound, Cell,
    ExperimentReport, RoundSummary, RunReport, SampleRow, TrainPoint, TrainingCurve,
};

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

#[test]
fn mean_se_matches_hand_computed_values() {
    // sd = sqrt(((-0.1)² + 0 + 0.1²) / 2) = 0.1; se = 0.1 / √3 = 0.0577350.
    let (m, se) = mean_se(&[0.6, 0.7, 0.8]);
    assert!(close(m, 0.7, 1e-12), "{m}");
    assert!(close(se.unwrap(), 0.057_735_0, 1e-7), "{se:?}");

    // Two values: sd = |a − b| / √2, se = sd / √2 = |a − b| / 2.
    let (m, se) = mean_se(&[0.75, 0.77]);
    assert!(close(m, 0.76, 1e-12));
    assert!(close(se.unwrap(), 0.01, 1e-12));

    // One value: the standard error is undefined.
    assert_eq!(mean_se(&[0.42]), (0.42, None));

    // Nothing finite: NaN mean, no s.e.; non-finite values are ignored otherwise.
    let (m, se) = mean_se(&[]);
    assert!(m.is_nan() && se.is_none());
    let (m, se) = mean_se(&[0.6, f64::NAN, 0.8, f64::INFINITY]);
    assert!(close(m, 0.7, 1e-12));
    assert!(close(se.unwrap(), 0.1, 1e-12));
}

#[test]
fn nice_ticks_are_round_numbers() {
    assert_eq!(nice_ticks(0.0, 1.0, 6), [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
    assert_eq!(nice_ticks(0.0, 768.0, 5), [0.0, 200.0, 400.0, 600.0, 800.0]);
    assert_eq!(nice_ticks(0.13, 0.87, 5), [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
    assert_eq!(nice_ticks(-3.2, 7.9, 6), [-4.0, -2.0, 0.0, 2.0, 4.0, 6.0, 8.0]);
    // Float noise is snapped away (0.1 * 3 would otherwise be 0.30000000000000004).
    assert_eq!(nice_ticks(0.0, 0.3, 4), [0.0, 0.1, 0.2, 0.3]);
    // Reversed bounds are accepted; a degenerate range is widened around the value.
    assert_eq!(nice_ticks(1.0, 0.0, 6), nice_ticks(0.0, 1.0, 6));
    let t = nice_ticks(5.0, 5.0, 5);
    assert!(t.len() >= 2 && t[0] < 5.0 && *t.last().unwrap() > 5.0, "{t:?}");
    assert!(nice_ticks(f64::NAN, 1.0, 5).is_empty());
    assert!(nice_ticks(0.0, f64::INFINITY, 5).is_empty());
}

fn two_by_two() -> ExperimentReport {
    ExperimentReport {
        title: "test".into(),
        cells: vec![
            // First-seen order decides the rows (random before certainty); labels are sorted.
            Cell { strategy: "random".into(), labels: 256, win_rates: vec![0.75, 0.77] },
            Cell { strategy: "certainty".into(), labels: 128, win_rates: vec![0.66] },
            Cell { strategy: "random".into(), labels: 128, win_rates: vec![0.6, 0.7, 0.8] },
            Cell { strategy: "certainty".into(), labels: 256, win_rates: vec![0.80, 0.84] },
        ],
        ..Default::default()
    }
}

#[test]
fn experiment_table_is_the_papers_table() {
    let expected = "\
| strategy / labels |          128 |          256 |
|:------------------|-------------:|-------------:|
| random            | **70.0±5.8** |     76.0±1.0 |
| certainty         |         66.0 | **82.0±2.0** |
";
    assert_eq!(experiment_table(&two_by_two()), expected);
}

#[test]
fn experiment_table_edge_cases() {
    assert_eq!(experiment_table(&ExperimentReport::default()), "no results yet\n");

    // One strategy: nothing to compare, so nothing is bold. Missing values show as a dash; NaN seeds are ignored.
    let e = ExperimentReport {
        cells: vec![
            Cell { strategy: "random".into(), labels: 64, win_rates: vec![0.5, f64::NAN] },
            Cell { strategy: "random".into(), labels: 128, win_rates: vec![f64::NAN] },
        ],
        ..Default::default()
    };
    let t = experiment_table(&e);
    assert!(!t.contains("**"), "{t}");
    assert!(t.contains("| random            | 50.0 |   — |"), "{t}");

    // Ties at the shown precision are all bold; repeated cells are merged (two seeds → a standard error).
    let e = ExperimentReport {
        cells: vec![
            Cell { strategy: "a".into(), labels: 10, win_rates: vec![0.6] },
            Cell { strategy: "a".into(), labels: 10, win_rates: vec![0.6] },
            Cell { strategy: "b".into(), labels: 10, win_rates: vec![0.60001] },
        ],
        ..Default::default()
    };
    let t = experiment_table(&e);
    assert!(t.contains("**60.0±0.0**") && t.contains("**60.0**"), "{t}");
}

#[test]
fn render_experiment_has_table_plot_and_escapes() {
    let mut e = two_by_two();
    e.cells.push(Cell { strategy: "<b>evil</b>".into(), labels: 128, win_rates: vec![0.5, 0.55] });
    let html = render_experiment(&e);
    assert_eq!(html.matches("<svg").count(), 1);
    assert!(html.contains("<strong>70.0</strong>"));
    assert!(html.contains("&lt;b&gt;evil&lt;/b&gt;") && !html.contains("<b>evil"));

    let empty = render_experiment(&ExperimentReport::default());
    assert!(empty.contains("No results yet") && !empty.contains("<svg"));
}

/// A small run: 3 evaluated rounds, 2 acquisition rounds, 2 training curves and a hostile sample.
fn example_run() -> RunReport {
    let point = |p_hat: f64, score: f64, selected: bool, agrees: Option<bool>| AcquiredPoint {
        p_hat,
        score,
        selected,
        oracle_agrees: agrees,
    };
    let curve = |round: usize| TrainingCurve {
        round,
        points: (0..20)
            .map(|s| {
                let margin = s as f64 * 0.1 * round as f64;
                TrainPoint {
                    step: s,
                    loss: (1.0 + (-margin).exp()).ln(),
                    chosen: margin / 2.0,
                    rejected: -margin / 2.0,
                    margin,
                    accuracy: (0.5 + s as f64 / 40.0).min(1.0),
                }
            })
            .collect(),
    };
    RunReport {
        title: "activepref run — hybrid, seed 0".into(),
        subtitle: "SmolLM2-135M · VADER".into(),
        config_toml: "[acquisition]\nstrategy = \"hybrid\" # <tuned>\n".into(),
        rounds: vec![
            RoundSummary { round: 0, labels: 0, win_rate: Some(0.5), eval_prompts: 64, ..Default::default() },
            RoundSummary {
                round: 1,
                labels: 32,
                win_rate: Some(0.61),
                win_rate_se: Some(0.03),
                eval_prompts: 64,
                dropped: 2,
                oracle_agreement: Some(0.7),
                train_loss: Some(0.41),
                seconds: Some(75.0),
            },
            RoundSummary { round: 2, labels: 64, win_rate: Some(0.68), win_rate_se: Some(0.028), ..Default::default() },
        ],
        acquisitions: vec![
            AcquisitionRound {
                round: 1,
                strategy: "hybrid".into(),
                points: vec![
                    point(0.9, 0.8, true, Some(true)),
                    point(0.05, 0.9, true, Some(false)),
                    point(0.5, 0.0, false, None),
                    point(1.0, 1.0, true, None),
                ],
            },
            AcquisitionRound {
                round: 2,
                strategy: "hybrid".into(),
                points: vec![point(0.7, 0.4, true, Some(true)), point(0.45, 0.1, false, None)],
            },
        ],
        training: vec![curve(1), curve(2)],
        notes: vec!["note with <html> & \"quotes\"".into()],
        samples: vec![SampleRow {
            prompt: "<script>alert(1)</script>".into(),
            policy: "good".into(),
            baseline: "bad".into(),
            winner: "policy".into(),
        }],
    }
}

#[test]
fn render_run_has_one_svg_per_plot_and_escapes_text() {
    let html = render_run(&example_run());
    assert!(html.starts_with("<!DOCTYPE html>") && html.ends_with("</html>\n"));
    // 1 win-rate plot + 2 acquisition figures + 4 training plots.
    assert_eq!(html.matches("<svg").count(), 1 + 2 + 4, "svg count");
    assert_eq!(html.matches("</svg>").count(), 7);
    // Self-contained: no scripts, no external resources.
    assert!(!html.contains("<script"), "a prompt's <script> must be escaped");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    // The only URL is the SVG namespace, which browsers never fetch.
    assert_eq!(html.matches("http").count(), html.matches("http://www.w3.org/2000/svg").count());
    assert!(!html.contains("https://") && !html.contains("<link"));
    // Notes and config are escaped too.
    assert!(html.contains("note with &lt;html&gt; &amp; &quot;quotes&quot;"));
    assert!(html.contains("# &lt;tuned&gt;"));
    // The win-rate points are labelled, the rounds table shows win rate ± s.e.
    for label in ["50.0%", "61.0%", "68.0%"] {
        assert!(html.contains(label), "missing {label}");
    }
    assert!(html.contains("61.0% <span class=\"se\">± 3.0</span>"));
    // Agreement of round 1: one agreeing, one disagreeing label among the selected.
    assert!(html.contains("oracle agreed on 1 of 2 (50%)"));
    // The winner's completion is shaded.
    assert!(html.contains("<td class=\"text win\">good</td>"));
}

#[test]
fn empty_report_renders_placeholders() {
    let html = render_run(&RunReport::default());
    assert!(html.starts_with("<!DOCTYPE html>") && html.ends_with("</html>\n"));
    assert!(!html.contains("<svg"));
    for text in ["No evaluation yet", "No rounds yet", "No acquisition recorded yet", "No training steps logged yet"] {
        assert!(html.contains(text), "missing {text:?}");
    }
    assert!(html.contains("<title>activepref run</title>"));

    // Rounds without a win rate, an acquisition without candidates and curves without points: still no plots.
    let r = RunReport {
        rounds: vec![RoundSummary { round: 1, labels: 8, ..Default::default() }],
        acquisitions: vec![AcquisitionRound { round: 1, ..Default::default() }],
        training: vec![TrainingCurve { round: 1, points: vec![] }],
        ..Default::default()
    };
    let html = render_run(&r);
    assert!(!html.contains("<svg"));
    assert!(html.contains("No evaluation yet") && html.contains("No candidates recorded"));
}

#[test]
fn non_finite_values_are_skipped_not_drawn() {
    let mut r = example_run();
    r.rounds.push(RoundSummary {
        round: 3,
        labels: 96,
        win_rate: Some(f64::NAN),
        win_rate_se: Some(f64::INFINITY),
        oracle_agreement: Some(f64::NAN),
        train_loss: Some(f64::NEG_INFINITY),
        seconds: Some(f64::NAN),
        ..Default::default()
    });
    r.acquisitions[0].points.push(AcquiredPoint {
        p_hat: f64::NAN,
        score: f64::NAN,
        selected: true,
        oracle_agrees: None,
    });
    r.training[0].points.push(TrainPoint {
        step: 20,
        loss: f64::NAN,
        chosen: f64::INFINITY,
        rejected: f64::NAN,
        margin: f64::NAN,
        accuracy: f64::NAN,
    });
    // A curve whose values are all NaN, and an acquisition round whose scores are all NaN.
    r.training.push(TrainingCurve {
        round: 3,
        points: vec![TrainPoint {
            step: 0,
            loss: f64::NAN,
            chosen: f64::NAN,
            rejected: f64::NAN,
            margin: f64::NAN,
            accuracy: f64::NAN,
        }],
    });
    r.acquisitions.push(AcquisitionRound {
        round: 3,
        strategy: "x".into(),
        points: vec![AcquiredPoint { p_hat: f64::NAN, score: f64::NAN, selected: false, oracle_agrees: None }],
    });
    let html = render_run(&r);
    let lower = html.to_ascii_lowercase();
    assert!(!lower.contains("nan") && !lower.contains("inf"), "non-finite value leaked into the output");
    assert_eq!(html.matches("<svg").count(), 1 + 3 + 4);

    // All-NaN experiment cells: a table of dashes, no plot, no panic.
    let e = ExperimentReport {
        cells: vec![Cell { strategy: "r".into(), labels: 1, win_rates: vec![f64::NAN] }],
        ..Default::default()
    };
    assert!(!render_experiment(&e).contains("<svg"));
}

#[test]
fn report_writes_to_a_file_and_round_trips_through_json() {
    let dir = tempfile::tempdir().unwrap();
    let r = example_run();

    // The loop saves the report data as JSON next to the run and can re-render it later.
    let json_path = dir.path().join("report.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&r).unwrap()).unwrap();
    let back: RunReport = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    // serde_json may move a float by one ulp on the way back; that must not change the page.
    assert_eq!(back.rounds, r.rounds);
    assert_eq!(back.samples, r.samples);

    let html_path = dir.path().join("report.html");
    std::fs::write(&html_path, render_run(&r)).unwrap();
    let written = std::fs::read_to_string(&html_path).unwrap();
    assert_eq!(written, render_run(&r), "rendering is deterministic");
    assert!(written.len() > 5_000);
    // The re-loaded data draws the same figures (coordinates may differ in the last printed digit).
    assert_eq!(render_run(&back).matches("<svg").count(), written.matches("<svg").count());

    // Missing fields default, so older or partial JSON still loads.
    let partial: RunReport = serde_json::from_str(r#"{"title": "t", "rounds": [{"round": 1, "labels": 4}]}"#).unwrap();
    assert_eq!(partial.rounds[0].win_rate, None);
    assert!(render_run(&partial).contains("No evaluation yet"));
}
