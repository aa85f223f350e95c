//! `[trainer] backend = "command"` with `activepref dpo` as the command, as a user would set up TRL: each
//! round's labels in TRL's format go in, a PEFT adapter (or a whole model) comes back and becomes the round's
//! policy; a failing command stops the run with its log's tail and the rerun resumes at that round.

mod common;

use candle_core::DType;
use common::{bin, tiny_loop_config};
use lm::testing::tiny_model;
use std::path::Path;

fn run(cfg: &Path, dir: &Path) -> (bool, String) {
    let o = bin().args(["run", "--config"]).arg(cfg).arg("--run-dir").arg(dir).output().unwrap();
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

fn config(tmp: &Path, name: &str, model: &Path, judge: &str, command: &str) -> std::path::PathBuf {
    let cfg = tiny_loop_config(tmp, name, model, 2, &common::judge_oracle(judge, 3));
    let trainer = format!("\n[trainer]\nbackend = \"command\"\ncommand = '''{command}'''\n");
    std::fs::write(&cfg, std::fs::read_to_string(&cfg).unwrap() + &trainer).unwrap();
    cfg
}

/// The model's preference p̂ of each of round 2's candidates: exactly ½ when the policy is the reference.
fn round2_p_hats(dir: &Path) -> Vec<f64> {
    let s = apl::store::Store::open(&dir.join("store.sqlite")).unwrap();
    s.scored_points(2).unwrap().iter().map(|p| p.p_hat).collect()
}

#[test]
fn a_command_trains_each_round_and_its_adapter_becomes_the_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    tiny_model("llama", 1, DType::F32).unwrap().save(&model).unwrap();
    let exe = env!("CARGO_BIN_EXE_activepref");
    let (judge, _) = common::judge_server();
    let dpo = format!(
        "'{exe}' dpo --model {{base}} --data {{data}} --out {{output}} --lora --epochs {{epochs}} --beta {{beta}} \
         --learning-rate {{learning_rate}} --seed {{seed}} --batch-size 2"
    );
    // Fails in round 1 first: the run stops with the log's tail and nothing is marked trained.
    let failing =
        config(tmp.path(), "failing", &model, &judge, "echo round {round} data {data_dir} into {output}; exit 3");
    let dir = tmp.path().join("run");
    let (ok, log) = run(&failing, &dir);
    assert!(!ok);
    assert!(
        log.contains("the trainer command failed") && log.contains("round 1 data") && log.contains("resumes"),
        "{log}"
    );
    assert!(dir.join("round-1/train/data/train.jsonl").exists());
    let rows = std::fs::read_to_string(dir.join("round-1/train/data/train.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(rows.lines().next().unwrap()).unwrap();
    assert!(first["prompt"].is_string() && first["chosen"].is_string() && first["rejected"].is_string());

    // The fixed command (the command's text may change between resumes) finishes the same run.
    let working = config(tmp.path(), "working", &model, &judge, &dpo);
    std::fs::copy(&working, &failing).unwrap();
    let (ok, log) = run(&failing, &dir);
    assert!(ok, "{log}");
    assert!(log.contains("the trainer command left a LoRA adapter"), "{log}");
    for r in [1, 2] {
        assert!(dir.join(format!("round-{r}/adapter/adapter_model.safetensors")).exists());
        assert!(!dir.join(format!("round-{r}/policy.safetensors")).exists());
        assert!(dir.join(format!("round-{r}/train/command.log")).exists());
    }
    // Round 2 acquired with round 1's adapter: the policy's log-probs are not the reference's.
    assert!(round2_p_hats(&dir).iter().any(|p| (p - 0.5).abs() > 1e-4), "round 2 scored with the base model");
    // serve --round reads the adapter too.
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 2);

    // Full fine-tuning through the command: a whole model per round.
    let full = config(tmp.path(), "full", &model, &judge, &dpo.replace(" --lora", ""));
    let (ok, log) = run(&full, &tmp.path().join("full-run"));
    assert!(ok, "{log}");
    assert!(tmp.path().join("full-run/round-2/model/config.json").exists(), "{log}");

    // A command that succeeds without leaving a model.
    let nothing = config(tmp.path(), "nothing", &model, &judge, "echo done > {output}/log.txt");
    let (ok, log) = run(&nothing, &tmp.path().join("nothing-run"));
    assert!(!ok && log.contains("left neither a PEFT adapter") && log.contains("round 1: training"), "{log}");
    // A template with a typo is refused by name.
    let typo = config(tmp.path(), "typo", &model, &judge, "true {outptu} {output}");
    let (ok, log) = run(&typo, &tmp.path().join("typo-run"));
    assert!(!ok && log.contains("{outptu}"), "{log}");
}
