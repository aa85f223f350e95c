//! `activepref reward train` as a user runs it: a Bradley–Terry head trained from a TRL JSONL file on a saved
//! tiny model, then used as the oracle (and the evaluation judge) of an `activepref run`.

use candle_core::DType;
use lm::testing::tiny_model;
use std::path::{Path, PathBuf};

mod common;
use common::{bin, tiny_loop_config};

/// `n` TRL rows: the chosen completion is full of `e`, the rejected one of `z`, around varied words.
fn write_pairs(path: &Path, n: usize) {
    let words = ["the film", "a plot", "our hero", "it", "this cast", "my friend", "one scene", "the end"];
    let mut s = String::new();
    for i in 0..n {
        let w = words[i % words.len()];
        let k = 4 + (i * 7) % 9;
        let row = serde_json::json!({
            "prompt": format!("x{} ", i % 5),
            "chosen": format!("{w} {} {}", "e".repeat(k), words[(i + 3) % words.len()]),
            "rejected": format!("{w} {} {}", "z".repeat(k + i % 3), words[(i + 5) % words.len()]),
        });
        s.push_str(&row.to_string());
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

/// The tiny loop job with the reward model as the oracle (and evaluation judge), one round of 4 labels.
fn reward_config(tmp: &Path, model: &Path, reward_dir: &Path) -> PathBuf {
    let oracle = format!("[oracle]\nkind = \"reward\"\nreward_model = \"{}\"", reward_dir.display());
    tiny_loop_config(tmp, "tiny-reward", model, 1, &oracle)
}

#[test]
fn reward_train_then_run_with_the_reward_oracle() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    tiny_model("llama", 1, DType::F32).unwrap().save(&model).unwrap();
    let data = tmp.path().join("prefs.jsonl");
    write_pairs(&data, 60);
    let out = tmp.path().join("rm");

    let o = bin()
        .args(["reward", "train", "--model"])
        .arg(&model)
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let (so, se) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "reward train failed:\n{so}\n{se}");
    assert!(out.join("reward_head.safetensors").exists());
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("reward.json")).unwrap()).unwrap();
    eprintln!("{info}");
    assert_eq!(info["model"].as_str(), Some(model.canonicalize().unwrap().display().to_string().as_str()), "{info}");
    assert_eq!(info["train_pairs"], 48, "{info}");
    assert_eq!(info["held_out_pairs"], 12, "{info}");
    let held = info["held_out_accuracy"].as_f64().unwrap();
    assert!(held >= 0.9, "held-out accuracy {held}: {info}");
    assert!(info["train_accuracy"].as_f64().unwrap() >= 0.9, "{info}");
    // The same description is printed.
    let printed: serde_json::Value = serde_json::from_str(&so).unwrap();
    assert_eq!(printed, info);

    // The head as the oracle of a run (and, with no eval oracle set, its judge).
    let cfg = reward_config(tmp.path(), &model, &out);
    let dir = tmp.path().join("run");
    let o = bin().args(["run", "--config"]).arg(&cfg).arg("--run-dir").arg(&dir).output().unwrap();
    let (so, se) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "run failed:\n{so}\n{se}");
    let labels = std::fs::read_to_string(dir.join("labels.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = labels.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 4, "{labels}");
    let want = format!("reward:{}", out.display());
    for r in &rows {
        assert_eq!(r["oracle"].as_str(), Some(want.as_str()), "{r}");
        assert!(r["chosen"].is_string() && r["rejected"].is_string() && r["chosen"] != r["rejected"], "{r}");
    }
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let m: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    assert!(m["win_rate"].as_f64().is_some_and(|w| (0.0..=1.0).contains(&w)), "{metrics}");
}

#[test]
fn reward_train_refuses_bad_input_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    tiny_model("llama", 1, DType::F32).unwrap().save(&model).unwrap();
    let data = tmp.path().join("prefs.jsonl");
    write_pairs(&data, 10);
    let train = |extra: &[&str], data: &Path| {
        let o = bin()
            .args(["reward", "train", "--model"])
            .arg(&model)
            .arg("--data")
            .arg(data)
            .arg("--out")
            .arg(tmp.path().join("rm"))
            .args(extra)
            .output()
            .unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stderr).to_string())
    };
    let (code, e) = train(&["--held-out", "1.5"], &data);
    assert_eq!(code, Some(1), "{e}");
    assert!(e.contains("--held-out") && e.contains("1.5"), "{e}");
    let (code, e) = train(&[], &tmp.path().join("nope.jsonl"));
    assert_eq!(code, Some(1), "{e}");
    assert!(e.contains("nope.jsonl"), "{e}");
    assert!(!tmp.path().join("rm").exists());
}
