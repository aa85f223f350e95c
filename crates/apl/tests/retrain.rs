//! `rounds.retrain`: `from_start` trains every round from the starting model, `continue` from the previous
//! round's policy. Two runs differing only in it, on a tiny random model with a deterministic oracle, get the
//! same labels and round-1 policy but different round-2 policies; and which tensors round 2 started from is
//! checked by training round 2 again after swapping round 1's policy file.

use apl::config::{ActiveConfig, Retrain, Strategy};
use apl::testing::{movie_texts, tiny_config, LetterE};
use apl::{ActiveLoop, Event, OracleHandle};
use candle_core::{DType, Device, Tensor};
use lm::testing::tiny_model;
use oracle::ScoreOracle;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

fn cfg(retrain: Retrain, lora: bool) -> ActiveConfig {
    let mut c = tiny_config(5);
    c.acquisition.strategy = Strategy::Random;
    c.rounds.labels_per_round = 4;
    c.rounds.retrain = retrain;
    c.eval.prompts = 2;
    c.train.epochs = 2;
    c.train.learning_rate = 1e-3;
    c.train.lora = lora.then(|| dpo::train::LoraConfig { r: 2, alpha: 4.0, target_modules: vec!["all-linear".into()] });
    c
}

fn base() -> lm::LanguageModel {
    tiny_model("llama", 1, DType::F32).unwrap()
}

/// Runs (or resumes) the tiny job in `dir` to the end.
fn run(c: &ActiveConfig, dir: &Path) {
    let mut ev = |_e: Event| {};
    let o = OracleHandle::Sync(Box::new(ScoreOracle(LetterE)));
    let mut run = ActiveLoop::open(c.clone(), dir, base(), o, None, &mut ev).unwrap();
    run.ensure_pool(&movie_texts(60), Path::new("test-texts")).unwrap();
    run.run().unwrap();
}

type Tensors = BTreeMap<String, Vec<f32>>;

/// Round `r`'s trainable tensors, flattened.
fn policy(dir: &Path, r: usize) -> Tensors {
    let t = candle_core::safetensors::load(dir.join(format!("round-{r}/policy.safetensors")), &Device::Cpu).unwrap();
    t.into_iter().map(|(n, x)| (n, x.flatten_all().unwrap().to_vec1().unwrap())).collect()
}

/// Replaces round 1's policy file with `t` (same names and shapes) and forgets round 2's training and
/// evaluation, so the next run trains round 2 again on the same (stored) labels.
fn swap_round_1_and_forget_round_2(dir: &Path, t: &HashMap<String, Tensor>) {
    apl::policy::save_trainable(&apl::RunDir::new(dir), 1, t).unwrap();
    std::fs::remove_dir_all(dir.join("round-2")).unwrap();
    let s = rusqlite::Connection::open(dir.join("store.sqlite")).unwrap();
    for table in ["judgments", "eval_samples", "rounds"] {
        s.execute(&format!("DELETE FROM {table} WHERE round = 2"), []).unwrap();
    }
}

fn tensors(t: &Tensors, like: &HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    t.iter()
        .map(|(n, v)| (n.clone(), Tensor::new(v.as_slice(), &Device::Cpu).unwrap().reshape(like[n].dims()).unwrap()))
        .collect()
}

fn labels(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("labels.jsonl")).unwrap()
}

#[test]
fn from_start_trains_round_2_from_the_base_and_continue_from_round_1() {
    // Full fine-tuning: the trainable tensors are the model's own weights, so "the base" is exact.
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (from_start, cont) = (cfg(Retrain::FromStart, false), cfg(Retrain::Continue, false));
    run(&from_start, a.path());
    run(&cont, b.path());
    // Round 1 is the same in both (it starts from the base either way), so round 2 acquires the same pairs
    // with the same policy and gets the same labels: only where round 2's training starts differs.
    assert_eq!(labels(a.path()), labels(b.path()));
    assert_eq!(labels(a.path()).lines().count(), 8);
    let (a1, b1) = (policy(a.path(), 1), policy(b.path(), 1));
    assert_eq!(a1, b1);
    let (a2, b2) = (policy(a.path(), 2), policy(b.path(), 2));
    assert_ne!(a2, b2, "retrain = from_start and continue gave the same round-2 policy");
    let base = base();
    assert!(a1.keys().all(|n| base.params.contains(n)), "full fine-tuning saves model weights");
    assert_ne!(a1, a1.keys().map(|n| (n.clone(), flat(&base.params.tensors[n]))).collect::<Tensors>());

    let like = candle_core::safetensors::load(a.path().join("round-1/policy.safetensors"), &Device::Cpu).unwrap();
    // from_start never reads round 1's policy: with another one in its place (here continue's round 2),
    // round 2 trains again to exactly the same tensors.
    swap_round_1_and_forget_round_2(a.path(), &tensors(&b2, &like));
    run(&from_start, a.path());
    assert_eq!(policy(a.path(), 2), a2, "from_start's round 2 depends on round 1's policy");

    // continue starts from round 1's policy: with the base's weights in its place, round 2 becomes exactly
    // what from_start trains (from the base, on the same labels, with a fresh optimizer).
    let base_weights: HashMap<String, Tensor> =
        like.keys().map(|n| (n.clone(), base.params.tensors[n].clone())).collect();
    swap_round_1_and_forget_round_2(b.path(), &base_weights);
    run(&cont, b.path());
    assert_eq!(policy(b.path(), 2), a2, "continue's round 2 did not start from round 1's policy file");
    assert_eq!(labels(b.path()), labels(a.path()));
}

#[test]
fn with_lora_from_start_ignores_round_1_and_continue_does_not() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (from_start, cont) = (cfg(Retrain::FromStart, true), cfg(Retrain::Continue, true));
    run(&from_start, a.path());
    run(&cont, b.path());
    assert_eq!(labels(a.path()), labels(b.path()));
    assert_eq!(policy(a.path(), 1), policy(b.path(), 1));
    let (a2, b2) = (policy(a.path(), 2), policy(b.path(), 2));
    assert_ne!(a2, b2, "retrain = from_start and continue gave the same round-2 adapter");
    // The same swap of round 1's adapter (for round 2's, from the other run) leaves from_start's round 2 as
    // it was and changes continue's.
    let like = candle_core::safetensors::load(a.path().join("round-1/policy.safetensors"), &Device::Cpu).unwrap();
    swap_round_1_and_forget_round_2(a.path(), &tensors(&b2, &like));
    run(&from_start, a.path());
    assert_eq!(policy(a.path(), 2), a2);
    swap_round_1_and_forget_round_2(b.path(), &tensors(&a2, &like));
    run(&cont, b.path());
    assert_ne!(policy(b.path(), 2), b2);
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}
