//! `activepref dpo --loss-type kto` as a user runs it: unpaired good/bad rows (or preference pairs) in, TRL's KTO
//! metric names and a loadable model out, resumable; bad rows and settings end in a clear error.

mod common;

use candle_core::DType;
use common::bin;
use lm::testing::tiny_model;
use std::path::{Path, PathBuf};
use std::process::Output;

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn tiny_dir(tmp: &Path) -> PathBuf {
    let dir = tmp.join("llama");
    tiny_model("llama", 11, DType::F32).unwrap().save(&dir).unwrap();
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// 12 unpaired rows, alternately good and bad.
fn unpaired(t: &Path) -> PathBuf {
    let mut data = String::new();
    for i in 0..12 {
        let (completion, label) = if i % 2 == 0 { (" great fun", true) } else { (" dull mess", false) };
        data.push_str(&format!(
            "{{\"prompt\": \"Review {i}:\", \"completion\": \"{completion}\", \"label\": {label}}}\n"
        ));
    }
    let p = t.join("unpaired.jsonl");
    std::fs::write(&p, data).unwrap();
    p
}

const KTO_METRICS: [&str; 13] = [
    "loss",
    "kl",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "logits/chosen",
    "logits/rejected",
    "grad_norm",
    "learning_rate",
    "epoch",
    "step",
];

#[test]
fn kto_trains_on_unpaired_rows_writes_trl_metrics_and_a_model_then_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let dir = tiny_dir(t);
    let data = unpaired(t);
    std::fs::write(
        t.join("train.toml"),
        "learning_rate = 1e-3\nbatch_size = 4\nepochs = 2\nsave_steps = 2\nlogging_steps = 1\n\
         [loss]\nbeta = 0.2\n[kto]\ndesirable_weight = 1.0\nundesirable_weight = 1.0\n",
    )
    .unwrap();
    let out = t.join("run");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "dpo",
            "--model",
            s(&dir),
            "--data",
            s(&data),
            "--out",
            s(&out),
            "--config",
            s(&t.join("train.toml")),
            "--lora",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let o = bin().args(args(&["--loss-type", "kto", "--max-steps", "2"])).output().unwrap();
    let (_, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("12 training rows (6 desirable, 6 undesirable)"), "{err}");
    assert!(err.contains("with kto"), "{err}");
    assert!(out.join("checkpoint-2/trainer_state.json").exists());
    // The config's [kto] alone picks KTO too: resume without --loss-type.
    let o = bin().args(args(&["--resume"])).output().unwrap();
    let (_, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("resumed from") && err.contains("at step 2"), "{err}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps: Vec<u64> = lines.iter().map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, vec![1, 2, 3, 4, 5, 6], "6 steps = 2 epochs × 12 rows / batch 4");
    for l in &lines {
        for k in KTO_METRICS {
            assert!(l.get(k).is_some(), "metric {k} missing: {l}");
        }
        assert!(l.get("rewards/accuracies").is_none(), "a DPO metric in a KTO run: {l}");
    }
    assert!(out.join("final/config.json").is_file());
    let o = bin()
        .args(["generate", "--model", s(&out.join("final")), "--prompt", "Review 1:", "--max-new-tokens", "3"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o).1);
}

#[test]
fn kto_accepts_preference_pairs_and_apo_zero_unpaired() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let dir = tiny_dir(t);
    let mut data = String::new();
    for i in 0..4 {
        data.push_str(&format!("{{\"prompt\": \"Review {i}:\", \"chosen\": \" great\", \"rejected\": \" dull\"}}\n"));
    }
    std::fs::write(t.join("pairs.jsonl"), data).unwrap();
    for loss in ["kto", "apo_zero_unpaired"] {
        let out = t.join(loss);
        let o = bin()
            .args(["dpo", "--model", s(&dir), "--data", s(&t.join("pairs.jsonl")), "--out", s(&out)])
            .args(["--loss-type", loss, "--batch-size", "4", "--learning-rate", "1e-3", "--lora"])
            .output()
            .unwrap();
        let (_, err) = text(&o);
        assert!(o.status.success(), "{loss}: {err}");
        assert!(err.contains("8 training rows (4 desirable, 4 undesirable)"), "{err}");
        let first: serde_json::Value =
            serde_json::from_str(std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().next().unwrap())
                .unwrap();
        assert!(first.get("kl").is_some() && first.get("rewards/margins").is_some(), "{first}");
        assert!(out.join("final").is_dir());
    }
    // Unbalanced labels get TRL's advice on the weights.
    std::fs::write(
        t.join("skewed.jsonl"),
        (0..6)
            .map(|i| format!("{{\"prompt\": \"p{i}\", \"completion\": \" c\", \"label\": {}}}\n", i == 0))
            .collect::<String>(),
    )
    .unwrap();
    let o = bin()
        .args(["dpo", "--model", s(&dir), "--data", s(&t.join("skewed.jsonl")), "--out", s(&t.join("sk"))])
        .args(["--loss-type", "kto", "--batch-size", "2", "--max-steps", "1", "--lora"])
        .output()
        .unwrap();
    let (_, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("warning:") && err.contains("desirable_weight in [5, 6.65]"), "{err}");
}

#[test]
fn kto_help_lists_its_losses_and_bad_inputs_give_clear_errors() {
    let o = bin().args(["dpo", "--help"]).output().unwrap();
    let help = text(&o).0;
    for l in dpo::kto::KtoLossType::ALL {
        assert!(help.contains(l.name()), "`dpo --help` does not list {}:\n{help}", l.name());
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let dir = tiny_dir(t);
    let fails_with = |args: &[&str], needles: &[&str]| {
        let o = bin().args(args).output().unwrap();
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        for n in needles {
            assert!(err.contains(n), "{args:?}: stderr lacks {n:?}:\n{err}");
        }
    };
    let out = t.join("o");
    std::fs::write(
        t.join("bad.jsonl"),
        "{\"prompt\": \"a\", \"completion\": \" b\", \"label\": true}\n{\"prompt\": \"a\", \"completion\": \" c\", \"label\": \"bad\"}\n",
    )
    .unwrap();
    let bad = t.join("bad.jsonl");
    fails_with(
        &["dpo", "--model", s(&dir), "--data", s(&bad), "--out", s(&out), "--loss-type", "kto"],
        &["bad.jsonl:2", "`label` must be true or false"],
    );
    fails_with(&["dpo", "--data", "x.jsonl", "--out", "o", "--loss-type", "kto,sft"], &["kto is KTO's loss"]);
    fails_with(
        &["dpo", "--data", "x.jsonl", "--out", "o", "--loss-type", "kto", "--batch-size", "1"],
        &["batch_size ≥ 2"],
    );
    fails_with(
        &["dpo", "--data", "x.jsonl", "--out", "o", "--loss-type", "nosuch"],
        &["unknown loss", "apo_zero_unpaired"],
    );
    // A DPO run's data file for DPO stays a DPO error: unpaired rows are not pairs.
    fails_with(&["dpo", "--model", s(&dir), "--data", s(&bad), "--out", s(&out)], &["bad.jsonl:1", "`chosen`"]);
}
