//! The evaluation's direction: completion 0 of every question is the round's policy, 1 the starting model,
//! and a win is the policy's. Checked on stored samples with an oracle that recognises them, and end to end
//! with a policy whose samples anyone can recognise (it writes `e` after anything).

use anyhow::Result;
use apl::eval::Evaluation;
use apl::policy::save_trainable;
use apl::results::win_rate;
use apl::run_dir::RunDir;
use apl::store::Store;
use apl::testing::{tiny_config, LetterE};
use apl::{ActiveConfig, Event};
use candle_core::{DType, Tensor};
use lm::testing::tiny_model;
use lm::LanguageModel;
use oracle::{Answer, Comparison, Oracle, ScoreOracle, Scorer};
use std::collections::HashMap;

/// Prefers the completion containing `marker` (no preference when neither or both do), and keeps every
/// question it was shown.
struct Marker {
    marker: &'static str,
    shown: Vec<[String; 2]>,
}

impl Marker {
    fn new(marker: &'static str) -> Self {
        Self { marker, shown: Vec::new() }
    }
}

impl Oracle for Marker {
    fn name(&self) -> String {
        format!("marker:{}", self.marker)
    }
    fn compare(&mut self, c: &Comparison) -> Result<Answer> {
        self.shown.push(c.completions.clone());
        let has: Vec<usize> = (0..2).filter(|&i| c.completions[i].contains(self.marker)).collect();
        let preferred = if has.len() == 1 { Some(has[0]) } else { None };
        Ok(Answer { preferred, raw: format!("{preferred:?}") })
    }
}

/// Prefers fewer letters `e`: the opposite of [`LetterE`].
struct FewerE;

impl Scorer for FewerE {
    fn name(&self) -> String {
        "fewer-e".into()
    }
    fn score(&self, text: &str) -> f64 {
        -LetterE.score(text)
    }
}

fn evaluate(cfg: &ActiveConfig, dir: &RunDir, store: &mut Store, base: &LanguageModel, o: &mut dyn Oracle, r: usize) {
    let mut ev = |_e: Event| {};
    let backend = apl::backend::LocalBackend { base, lora: cfg.train.lora.as_ref(), dir };
    Evaluation { cfg, store, backend: &backend, oracle: Some(o), events: &mut ev }.run(r).unwrap();
}

fn wins(store: &Store, round: usize) -> Vec<f64> {
    store.judgments(round).unwrap().iter().map(|j| j.win).collect()
}

#[test]
fn completion_0_is_the_policy_and_a_win_is_the_policys() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = RunDir::new(tmp.path());
    let mut store = Store::open(&dir.store()).unwrap();
    let base = tiny_model("llama", 1, DType::F32).unwrap();
    let cfg = tiny_config(3);
    let eval: Vec<(String, Vec<u32>)> = (0..5).map(|i| (format!("held out {i}"), vec![40 + i])).collect();
    store.insert_prompts(&[("train".into(), vec![1, 2, 3])], &eval).unwrap();
    let ids: Vec<i64> = store.prompts("eval").unwrap().iter().map(|p| p.id).collect();
    // Samples already stored are used as they are (no model is sampled): the starting model's as round 0,
    // the policy's as rounds 1 to 3; in round 3 the policy repeats the baseline on the first prompt.
    let samples = |who: &str| ids.iter().map(|&id| (id, format!("{who} sample {id}"))).collect::<Vec<_>>();
    store.insert_eval_samples(0, &samples("baseline")).unwrap();
    for r in 1..=4 {
        let mut s = samples("policy");
        if r >= 3 {
            s[0].1 = format!("baseline sample {}", ids[0]);
        }
        store.insert_eval_samples(r, &s).unwrap();
    }

    // Round 1: the oracle always prefers the policy's completion: win rate 1.
    let mut o = Marker::new("policy");
    evaluate(&cfg, &dir, &mut store, &base, &mut o, 1);
    assert_eq!(o.shown.len(), 5);
    for c in &o.shown {
        assert!(c[0].starts_with("policy") && c[1].starts_with("baseline"), "completion 0 is the policy: {c:?}");
    }
    assert_eq!(wins(&store, 1), vec![1.0; 5]);
    assert_eq!(win_rate(&store, 1).unwrap().unwrap().0, 1.0);
    for j in store.judgments(1).unwrap() {
        assert!(j.policy.starts_with("policy") && j.baseline.starts_with("baseline"), "{j:?}");
    }

    // Round 2: the oracle always prefers the starting model's completion: win rate 0.
    let mut o = Marker::new("baseline");
    evaluate(&cfg, &dir, &mut store, &base, &mut o, 2);
    assert_eq!(wins(&store, 2), vec![0.0; 5]);
    assert_eq!(win_rate(&store, 2).unwrap().unwrap().0, 0.0);

    // Round 3: identical completions are a tie without asking; the others are the policy's wins.
    let mut o = Marker::new("policy");
    evaluate(&cfg, &dir, &mut store, &base, &mut o, 3);
    assert_eq!(o.shown.len(), 4, "the identical pair is not asked");
    assert_eq!(wins(&store, 3), vec![0.5, 1.0, 1.0, 1.0, 1.0]);
    assert_eq!(win_rate(&store, 3).unwrap().unwrap().0, 0.9);

    // Round 4, scored as the paper does (`no_answer = "loss"`): the identical pair is a tie, and a tie counts
    // as the oracle's no-answer does, a loss, not half a win.
    let mut loss = cfg.clone();
    loss.eval.no_answer = apl::config::NoAnswer::Loss;
    let mut o = Marker::new("policy");
    evaluate(&loss, &dir, &mut store, &base, &mut o, 4);
    assert_eq!(o.shown.len(), 4, "the identical pair is not asked");
    assert_eq!(wins(&store, 4), vec![0.0, 1.0, 1.0, 1.0, 1.0]);
}

/// Round `round`'s policy file for `base` (llama-untied, full weights): every token's embedding gets a large
/// component on dimension 0, which then dominates the last hidden state, and only the output row of `e`
/// reads that dimension, so the policy writes `e` after anything.
fn save_e_writer(base: &LanguageModel, dir: &RunDir, round: usize) {
    let e = base.tokenizer.encode_plain("e").unwrap();
    assert_eq!(e.len(), 1);
    let mut emb: Vec<Vec<f32>> = base.params.tensors["model.embed_tokens.weight"].to_vec2().unwrap();
    for row in emb.iter_mut() {
        row[0] = 50.0;
    }
    let mut head: Vec<Vec<f32>> = base.params.tensors["lm_head.weight"].to_vec2().unwrap();
    for row in head.iter_mut() {
        row[0] = 0.0;
    }
    head[e[0] as usize][0] = 50.0;
    let t = |rows: Vec<Vec<f32>>| Tensor::new(rows, base.device()).unwrap();
    let policy: HashMap<String, Tensor> =
        [("model.embed_tokens.weight".to_string(), t(emb)), ("lm_head.weight".to_string(), t(head))].into();
    std::fs::create_dir_all(dir.round(round)).unwrap();
    save_trainable(dir, round, &policy).unwrap();
}

#[test]
fn evaluation_samples_the_policy_as_completion_0_and_the_starting_model_as_1() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = RunDir::new(tmp.path());
    let mut store = Store::open(&dir.store()).unwrap();
    let base = tiny_model("llama-untied", 1, DType::F32).unwrap();
    let mut cfg = tiny_config(3);
    cfg.train.lora = None;
    let tok = &base.tokenizer;
    let eval: Vec<(String, Vec<u32>)> = (0..6)
        .map(|i| {
            let text = format!("a held-out prompt {i}");
            let tokens = tok.encode_plain(&text).unwrap();
            (text, tokens)
        })
        .collect();
    store.insert_prompts(&[("train".into(), vec![1, 2, 3])], &eval).unwrap();
    save_e_writer(&base, &dir, 1);
    save_e_writer(&base, &dir, 2);

    // An oracle that likes `e`: the policy wins every question.
    evaluate(&cfg, &dir, &mut store, &base, &mut ScoreOracle(LetterE), 1);
    // The samples are the models' own: the policy's all `e`, the starting model's not.
    let all_e = |s: &str| !s.is_empty() && s.chars().all(|c| c == 'e');
    assert!(store.eval_samples(1).unwrap().iter().all(|(_, s)| all_e(s)), "{:?}", store.eval_samples(1));
    assert!(store.eval_samples(0).unwrap().iter().all(|(_, s)| !all_e(s)), "{:?}", store.eval_samples(0));
    assert_eq!(wins(&store, 1), vec![1.0; 6]);
    assert_eq!(win_rate(&store, 1).unwrap().unwrap().0, 1.0);

    // An oracle that dislikes `e`: the policy loses every question.
    evaluate(&cfg, &dir, &mut store, &base, &mut ScoreOracle(FewerE), 2);
    assert_eq!(wins(&store, 2), vec![0.0; 6]);
    assert_eq!(win_rate(&store, 2).unwrap().unwrap().0, 0.0);
}
