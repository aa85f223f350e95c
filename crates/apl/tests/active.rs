//! The loop in-process on a tiny random model: a whole run, resume after stopping between any two steps,
//! labels committed before they are acknowledged, human labels arriving from another connection, config
//! checks and a too-small pool refused before any work.

use anyhow::Result;
use apl::config::{ActiveConfig, OracleKind, Strategy};
use apl::store::Store;
use apl::testing::{movie_texts, tiny_run_config, LetterE};
use apl::{ActiveLoop, Event, OracleHandle};
use candle_core::{DType, Device};
use lm::testing::tiny_model;
use oracle::{Answer, Comparison, Oracle, ScoreOracle, Scorer};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Counts the questions it is asked and can fail after a number of them (a judge going away).
struct Counting {
    inner: ScoreOracle<LetterE>,
    asked: Arc<AtomicUsize>,
    fail_after: Option<usize>,
}
impl Oracle for Counting {
    fn name(&self) -> String {
        "letter-e".into()
    }
    fn compare(&mut self, c: &Comparison) -> Result<Answer> {
        let n = self.asked.fetch_add(1, Ordering::SeqCst);
        if self.fail_after.is_some_and(|f| n >= f) {
            anyhow::bail!("judge unreachable (test)");
        }
        self.inner.compare(c)
    }
}

fn texts() -> Vec<String> {
    movie_texts(200)
}

fn cfg() -> ActiveConfig {
    tiny_run_config(5)
}

fn oracle(asked: &Arc<AtomicUsize>, fail_after: Option<usize>) -> OracleHandle {
    OracleHandle::Sync(Box::new(Counting { inner: ScoreOracle(LetterE), asked: asked.clone(), fail_after }))
}

/// Opens a loop over a fresh copy of the tiny model.
fn open<'a>(c: &ActiveConfig, dir: &Path, o: OracleHandle, ev: &'a mut dyn FnMut(Event)) -> ActiveLoop<'a> {
    let mut run = ActiveLoop::open(c.clone(), dir, tiny_model("llama", 1, DType::F32).unwrap(), o, None, ev).unwrap();
    run.ensure_pool(&texts(), Path::new("test-texts")).unwrap();
    run
}

/// Runs the tiny job in `dir` to the end, counting questions in `asked`, with no events.
fn run_to_end(dir: &Path, asked: &Arc<AtomicUsize>) {
    let mut ev = |_e: Event| {};
    open(&cfg(), dir, oracle(asked, None), &mut ev).run().unwrap();
}

/// Everything a run decided, to compare two runs: labels and evaluation outcomes.
fn fingerprint(dir: &Path) -> (String, Vec<(usize, f64)>) {
    let labels = std::fs::read_to_string(dir.join("labels.jsonl")).unwrap();
    let s = Store::open(&dir.join("store.sqlite")).unwrap();
    let wins = (1..=2).flat_map(|r| s.judgments(r).unwrap().into_iter().map(move |j| (r, j.win))).collect();
    (labels, wins)
}

#[test]
fn a_run_completes_and_writes_its_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let asked = Arc::new(AtomicUsize::new(0));
    let mut stages = Vec::new();
    let mut ev = |e: Event| {
        if let Event::Stage(s) = e {
            stages.push(s)
        }
    };
    let mut run = open(&cfg(), tmp.path(), oracle(&asked, None), &mut ev);
    let res = run.run().unwrap();
    assert_eq!(res.len(), 2);
    assert_eq!(res.iter().map(|r| r.labels).collect::<Vec<_>>(), vec![4, 8]);
    for r in &res {
        let w = r.win_rate.unwrap();
        assert!((0.0..=1.0).contains(&w));
        assert!(r.train_loss.unwrap().is_finite());
    }
    drop(run);
    for f in
        ["store.sqlite", "labels.jsonl", "metrics.jsonl", "report.html", "config.toml", "round-2/policy.safetensors"]
    {
        assert!(tmp.path().join(f).exists(), "{f} missing");
    }
    let labels = std::fs::read_to_string(tmp.path().join("labels.jsonl")).unwrap();
    assert_eq!(labels.lines().count(), 8);
    for l in labels.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let (c, r) = (v["chosen"].as_str().unwrap(), v["rejected"].as_str().unwrap());
        // The oracle's rule holds for every exported label.
        let p = v["prompt"].as_str().unwrap();
        assert!(LetterE.score(&format!("{p}{c}")) > LetterE.score(&format!("{p}{r}")), "{l}");
    }
    // Every question asked is recorded exactly once (labels + dropped), plus the evaluation judgments.
    let s = Store::open(&tmp.path().join("store.sqlite")).unwrap();
    let (kept, dropped) = s.label_counts(2).unwrap();
    assert_eq!(kept, 8);
    let identical_or_asked = kept + dropped;
    let judged = s.judgments(1).unwrap().len() + s.judgments(2).unwrap().len();
    assert!(asked.load(Ordering::SeqCst) <= identical_or_asked + judged);
    assert!(stages.iter().any(|s| s.contains("acquiring")) && stages.iter().any(|s| s.contains("training")));
    let html = std::fs::read_to_string(tmp.path().join("report.html")).unwrap();
    assert!(html.contains("<svg"));
}

#[test]
fn stopping_anywhere_and_resuming_gives_the_same_labels() {
    let whole = tempfile::tempdir().unwrap();
    let asked = Arc::new(AtomicUsize::new(0));
    run_to_end(whole.path(), &asked);
    let total_asked = asked.load(Ordering::SeqCst);
    let want = fingerprint(whole.path());

    // The oracle fails after k questions (the run stops with an error), then the run is resumed; repeat.
    let dir = tempfile::tempdir().unwrap();
    let asked2 = Arc::new(AtomicUsize::new(0));
    let mut stops = 0;
    for k in [1, 3, 3, 5, 2] {
        let before = asked2.load(Ordering::SeqCst);
        let mut ev = |_e: Event| {};
        let r = open(&cfg(), dir.path(), oracle(&asked2, Some(before + k)), &mut ev).run();
        match r {
            Err(e) => {
                assert!(format!("{e:#}").contains("judge unreachable"), "{e:#}");
                stops += 1;
                // The failed question counted but was not answered.
                asked2.fetch_sub(1, Ordering::SeqCst);
            }
            Ok(_) => break,
        }
    }
    assert!(stops >= 3);
    run_to_end(dir.path(), &asked2);
    assert_eq!(fingerprint(dir.path()), want, "the resumed run ended with other labels or outcomes");
    // No question answered twice: the resumed run asked exactly as many as the uninterrupted one.
    assert_eq!(asked2.load(Ordering::SeqCst), total_asked);
}

#[test]
fn a_run_interrupted_mid_training_resumes_from_its_checkpoint() {
    let whole = tempfile::tempdir().unwrap();
    let asked = Arc::new(AtomicUsize::new(0));
    run_to_end(whole.path(), &asked);
    let want = fingerprint(whole.path());
    let policy_a =
        candle_core::safetensors::load(whole.path().join("round-2/policy.safetensors"), &candle_core::Device::Cpu)
            .unwrap();

    // Same run, but delete round 2's policy and its last checkpoints, as if killed mid-training.
    let dir = tempfile::tempdir().unwrap();
    run_to_end(dir.path(), &asked);
    let train = dir.path().join("round-2/train");
    let mut ckpts: Vec<_> = std::fs::read_dir(&train)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("checkpoint-"))
        .collect();
    ckpts.sort_by_key(|e| e.file_name().to_string_lossy().trim_start_matches("checkpoint-").parse::<u64>().unwrap());
    assert!(ckpts.len() >= 3, "expected a checkpoint per step");
    for e in &ckpts[ckpts.len() - 2..] {
        std::fs::remove_dir_all(e.path()).unwrap();
    }
    std::fs::remove_file(dir.path().join("round-2/policy.safetensors")).unwrap();
    let s = rusqlite::Connection::open(dir.path().join("store.sqlite")).unwrap();
    s.execute("DELETE FROM judgments WHERE round = 2", []).unwrap();
    s.execute("DELETE FROM eval_samples WHERE round = 2", []).unwrap();
    s.execute("DELETE FROM rounds WHERE round = 2", []).unwrap();
    drop(s);
    run_to_end(dir.path(), &asked);
    let policy_b =
        candle_core::safetensors::load(dir.path().join("round-2/policy.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    for (n, a) in &policy_a {
        let b = &policy_b[n];
        assert_eq!(
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            "{n}"
        );
    }
    assert_eq!(fingerprint(dir.path()), want);
}

#[test]
fn labels_survive_and_are_never_recorded_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let asked = Arc::new(AtomicUsize::new(0));
    let mut ev = |_e: Event| {};
    // Stop after the first acquisition's labels are partly given.
    let _ = open(&cfg(), tmp.path(), oracle(&asked, Some(2)), &mut ev).run();
    let s = Store::open(&tmp.path().join("store.sqlite")).unwrap();
    let mode: String = rusqlite::Connection::open(tmp.path().join("store.sqlite"))
        .unwrap()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let (kept, dropped) = s.label_counts(1).unwrap();
    assert_eq!(kept + dropped, 2, "the two answered labels are in the store");
    let pending = s.pending_queries(Some(1)).unwrap();
    assert!(!pending.is_empty());
    // Recording a label for an already-labelled query is refused.
    let labelled = s.labels(1).unwrap();
    if let Some(l) = labelled.first() {
        let e = s.record_label(l.query.id, Some(0), "x", "", None).unwrap_err();
        assert!(e.to_string().contains("already labelled"), "{e}");
    }
    let e = s.record_label(999_999, Some(0), "x", "", None).unwrap_err();
    assert!(e.to_string().contains("no query"), "{e}");
    let e = s.record_label(pending[0].id, Some(2), "x", "", None).unwrap_err();
    assert!(e.to_string().contains("0 or 1"), "{e}");
}

#[test]
fn human_labels_from_another_connection_are_picked_up() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = cfg();
    c.rounds.rounds = 1;
    c.oracle.kind = OracleKind::Human;
    c.oracle.poll_seconds = 0.05;
    c.eval.oracle = Some(OracleKind::Vader);
    let dir = tmp.path().to_path_buf();
    // A "person": another connection to the store answering pending queries as they appear.
    let stop = Arc::new(AtomicUsize::new(0));
    let stop2 = stop.clone();
    let person = std::thread::spawn(move || {
        let mut answered = 0;
        while stop2.load(Ordering::SeqCst) == 0 {
            if let Ok(s) = Store::open(&dir.join("store.sqlite")) {
                for q in s.pending_queries(None).unwrap_or_default() {
                    s.record_label(q.id, Some(0), "human", "{}", Some("tester")).unwrap();
                    answered += 1;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        answered
    });
    let mut ev = |_e: Event| {};
    let eval = Some(Box::new(ScoreOracle(LetterE)) as Box<dyn Oracle>);
    let mut run = ActiveLoop::open(
        c.clone(),
        tmp.path(),
        tiny_model("llama", 1, DType::F32).unwrap(),
        OracleHandle::Human { poll: std::time::Duration::from_millis(50) },
        eval,
        &mut ev,
    )
    .unwrap();
    run.ensure_pool(&texts(), Path::new("test-texts")).unwrap();
    let res = run.run().unwrap();
    stop.store(1, Ordering::SeqCst);
    assert_eq!(person.join().unwrap(), 4);
    assert_eq!(res[0].labels, 4);
    let s = Store::open(&tmp.path().join("store.sqlite")).unwrap();
    assert!(s.labels(1).unwrap().iter().all(|l| l.preferred == 0 && l.oracle == "human"));
}

#[test]
fn bad_configs_and_pools_fail_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = cfg();
    c.acquisition.strategy = Strategy::Hybrid;
    c.rounds.labels_per_round = 195; // with 6 held out, 200 prompts cannot give 195 distinct ones
    let mut ev = |_e: Event| {};
    let mut run = ActiveLoop::open(
        c,
        tmp.path(),
        tiny_model("llama", 1, DType::F32).unwrap(),
        oracle(&Arc::new(AtomicUsize::new(0)), None),
        None,
        &mut ev,
    )
    .unwrap();
    let e = run.ensure_pool(&texts(), Path::new("texts.txt")).unwrap_err().to_string();
    assert!(e.contains("texts.txt") && e.contains("usable prompts") && e.contains("201 (6 held out"), "{e}");
    let e = run.ensure_pool(&[], Path::new("empty.txt")).unwrap_err().to_string();
    assert!(e.contains("empty.txt: 0 usable prompts"), "{e}");
    drop(run);
    // The same directory with another config is refused, naming what differs.
    let mut ev = |_e: Event| {};
    let mut other = cfg();
    other.seed = 99;
    let e = ActiveLoop::open(
        other,
        tmp.path(),
        tiny_model("llama", 1, DType::F32).unwrap(),
        oracle(&Arc::new(AtomicUsize::new(0)), None),
        None,
        &mut ev,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("another configuration") && e.contains("seed"), "{e}");
    // Config files: unknown keys and bad values are named.
    for (toml, needle) in [
        ("[acquisition]\nstrategy = \"bald\"", "unknown variant `bald`"),
        ("[rounds]\nschedule = [16, 8]", "strictly increasing"),
        ("[acquisition]\novergenerate = 3", "unknown field `overgenerate`"),
        ("[oracle]\nkind = \"dataset\"", "oracle.dataset"),
        ("[oracle]\nkind = \"human\"", "eval.oracle"),
        ("[generation]\ntemperature = 0", "temperature"),
    ] {
        let e = ActiveConfig::from_toml(toml).unwrap_err().to_string();
        assert!(e.contains(needle), "{toml}: {e}");
    }
    // Partial tables keep the other defaults (LoRA, β = 0.2); r = 0 turns LoRA off.
    let c = ActiveConfig::from_toml("[train]\nepochs = 7").unwrap();
    assert_eq!(c.train.epochs, 7);
    assert_eq!(c.train.loss.beta, 0.2);
    assert!(c.train.lora.is_some());
    let c = ActiveConfig::from_toml("[train.lora]\nr = 0").unwrap();
    assert!(c.train.lora.is_none());
    // The printed config parses back to itself.
    let d = ActiveConfig::default();
    assert_eq!(ActiveConfig::from_toml(&d.to_toml()).unwrap().to_toml(), d.to_toml());
}

#[test]
fn the_paper_config_parses_to_the_papers_settings() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/paper-imdb.toml");
    let c = ActiveConfig::from_toml_file(&path).unwrap();
    assert_eq!(c.rounds.targets(), vec![128, 256, 384, 512, 640, 768]);
    assert_eq!(c.train.loss.beta, 0.2);
    assert_eq!(c.train.learning_rate, 1e-6);
    assert_eq!(c.train.epochs, 50);
    assert_eq!(c.train.batch_size * c.train.gradient_accumulation_steps, 64);
    assert!(c.train.lora.is_none(), "the paper fine-tunes all weights");
    let a = &c.acquisition;
    assert_eq!((a.over_generate_factor, a.over_sample_prompts_factor, a.entropy_samples), (32, 8, 8));
    let g = &c.generation;
    assert_eq!((g.temperature, g.entropy_temperature, g.eval_temperature), (0.7, 1.0, 0.25));
    assert_eq!((g.min_new_tokens, g.max_new_tokens), (16, 24));
    assert_eq!(c.prompts_per_draw(), 128 * 32 * 8);
    // Its printed form parses back to the same config (full fine-tuning stays full fine-tuning).
    assert_eq!(ActiveConfig::from_toml(&c.to_toml()).unwrap().to_toml(), c.to_toml());
}

/// The CPU study config is the size issue #14 asks for: at least 128 labels in at least 4 rounds, at least 256
/// held-out prompts, SmolLM2-135M (the default model) and the sentiment oracle.
#[test]
fn the_study_config_has_the_studys_sizes() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/study-cpu.toml");
    let c = ActiveConfig::from_toml_file(&path).unwrap();
    let t = c.rounds.targets();
    assert!(t.len() >= 4 && *t.last().unwrap() >= 128, "{t:?}");
    assert!(c.eval.prompts >= 256);
    assert_eq!(c.oracle.kind, OracleKind::Sentiment);
    assert!(c.model.is_empty(), "the default model");
}

#[test]
fn offline_simulation_takes_pairs_and_labels_from_a_preference_file() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("prefs.jsonl");
    let mut lines = Vec::new();
    for i in 0..30 {
        let row = serde_json::json!({"prompt": format!("opening number {i} of a review"),
            "chosen": format!(" see the tree {i}"), "rejected": format!(" odd squad {i}")});
        lines.push(row.to_string());
    }
    std::fs::write(&file, lines.join("\n")).unwrap();
    let mut c = cfg();
    c.oracle.kind = OracleKind::Dataset;
    c.oracle.dataset = file.display().to_string();
    c.eval.oracle = Some(OracleKind::Vader);
    let data = oracle::dataset::DatasetOracle::open(&file).unwrap();
    let pairs = data.pairs();
    let texts: Vec<String> = pairs.iter().map(|p| p.prompt.clone()).collect();
    let mut ev = |_e: Event| {};
    let eval = Some(Box::new(ScoreOracle(LetterE)) as Box<dyn Oracle>);
    let mut run = ActiveLoop::open(
        c.clone(),
        tmp.path(),
        tiny_model("llama", 1, DType::F32).unwrap(),
        OracleHandle::Sync(Box::new(data)),
        eval,
        &mut ev,
    )
    .unwrap();
    run.use_fixed_pairs(&pairs);
    run.ensure_pool(&texts, &file).unwrap();
    let res = run.run().unwrap();
    assert_eq!(res.last().unwrap().labels, 8);
    drop(run);
    let labels = std::fs::read_to_string(tmp.path().join("labels.jsonl")).unwrap();
    let mut prompts = std::collections::HashSet::new();
    for l in labels.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let p = v["prompt"].as_str().unwrap();
        assert!(p.starts_with("opening number"), "whole prompts from the file: {p}");
        assert!(v["chosen"].as_str().unwrap().starts_with(" see the tree"), "{l}");
        assert!(v["rejected"].as_str().unwrap().starts_with(" odd squad"), "{l}");
        assert!(prompts.insert(p.to_string()), "pair labelled twice: {p}");
    }
    // Asking for more labels than the file has (30 pairs, 6 held out) stops with a clear message.
    let dir2 = tmp.path().join("more");
    let mut c2 = c.clone();
    c2.rounds.schedule = vec![20, 40];
    let data = oracle::dataset::DatasetOracle::open(&file).unwrap();
    let mut ev = |_e: Event| {};
    let mut run = ActiveLoop::open(
        c2,
        &dir2,
        tiny_model("llama", 1, DType::F32).unwrap(),
        OracleHandle::Sync(Box::new(data)),
        Some(Box::new(ScoreOracle(LetterE)) as Box<dyn Oracle>),
        &mut ev,
    )
    .unwrap();
    run.use_fixed_pairs(&pairs);
    run.ensure_pool(&texts, &file).unwrap();
    let e = run.run().unwrap_err().to_string();
    assert!(e.contains("every prompt of the preference file has been acquired"), "{e}");
}

#[test]
fn a_trained_round_whose_policy_file_is_lost_is_trained_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let asked = Arc::new(AtomicUsize::new(0));
    run_to_end(dir, &asked);
    let (want, questions) = (fingerprint(dir), asked.load(Ordering::SeqCst));
    let load = |r: usize| {
        let t = candle_core::safetensors::load(dir.join(format!("round-{r}/policy.safetensors")), &Device::Cpu);
        let mut t: Vec<(String, Vec<f32>)> =
            t.unwrap().into_iter().map(|(n, x)| (n, x.flatten_all().unwrap().to_vec1().unwrap())).collect();
        t.sort_by(|a, b| a.0.cmp(&b.0));
        t
    };
    let (p1, p2) = (load(1), load(2));
    // The store says both rounds are trained; one file is gone, the other cut short (a power cut after the
    // rename reached the disk but not the data, or a person deleting round-1 as the old advice said).
    std::fs::remove_dir_all(dir.join("round-1")).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(dir.join("round-2/policy.safetensors")).unwrap();
    f.set_len(100).unwrap();
    drop(f);
    let mut infos = Vec::new();
    let mut ev = |e: Event| {
        if let Event::Info(s) = e {
            infos.push(s)
        }
    };
    open(&cfg(), dir, oracle(&asked, None), &mut ev).run().unwrap();
    assert!(infos.iter().any(|s| s.contains("round 1:") && s.contains("training it again")), "{infos:?}");
    assert!(infos.iter().any(|s| s.contains("round 2:") && s.contains("training it again")), "{infos:?}");
    // Nothing else is lost or redone: the same labels and judgments, no question asked again, and the same
    // policies as before (training is deterministic on one machine).
    assert_eq!(fingerprint(dir), want);
    assert_eq!(asked.load(Ordering::SeqCst), questions);
    assert_eq!((load(1), load(2)), (p1, p2));
    assert_eq!(Store::open(&dir.join("store.sqlite")).unwrap().rounds().unwrap().len(), 2);
}

/// The paired design: runs with other seeds and strategies but one `eval.split_seed` evaluate on the same
/// held-out prompts against the same starting-model samples; a run with another split is refused by name.
/// Within a run, acquisitions go through the pool before any prompt is drawn again.
#[test]
fn runs_pair_on_the_held_out_split_and_prompts_do_not_repeat_across_rounds() {
    let tmp = tempfile::tempdir().unwrap();
    let asked = Arc::new(AtomicUsize::new(0));
    let few = movie_texts(30);
    let run = |name: &str, seed: u64, strategy: Strategy, split_seed: u64| {
        let mut c = cfg();
        c.seed = seed;
        c.acquisition.strategy = strategy;
        c.eval.split_seed = split_seed;
        let dir = tmp.path().join(name);
        let mut ev = |_e: Event| {};
        let mut r =
            ActiveLoop::open(c, &dir, tiny_model("llama", 1, DType::F32).unwrap(), oracle(&asked, None), None, &mut ev)
                .unwrap();
        r.ensure_pool(&few, Path::new("test-texts")).unwrap();
        r.run().unwrap();
        let held = apl::experiment::heldout(&r.store).unwrap();
        (
            dir,
            held,
            r.store.prompts("train").unwrap().len(),
            (1..=2).map(|k| r.store.candidate_prompts(k).unwrap()).collect::<Vec<_>>(),
        )
    };
    let (a_dir, a, pool, a_drawn) = run("certainty-seed0", 0, Strategy::Certainty, 0);
    let (b_dir, b, _, _) = run("random-seed1", 1, Strategy::Random, 0);
    assert_eq!(a.prompts.len(), 6);
    assert_eq!(a.prompts, b.prompts, "one split seed, one held-out set");
    assert_eq!(a.baseline, b.baseline, "common random numbers: the same starting-model samples");
    apl::experiment::check_paired(&b_dir, &b, &a_dir, &a).unwrap();

    // Certainty draws 8 prompts per round (4 labels × over_generate_factor 2): 16 distinct prompts over two
    // rounds, out of a pool of about two dozen (independent draws would repeat one with probability ~98%).
    let drawn: Vec<i64> = a_drawn.concat();
    assert_eq!(drawn.len(), 16);
    assert!(pool >= 16, "pool of {pool}");
    let distinct: std::collections::HashSet<_> = drawn.iter().collect();
    assert_eq!(distinct.len(), 16, "a prompt came back before the pool was used up: {a_drawn:?}");

    let (c_dir, c, _, _) = run("random-seed2-other-split", 2, Strategy::Random, 7);
    let e = apl::experiment::check_paired(&c_dir, &c, &a_dir, &a).unwrap_err().to_string();
    assert!(e.contains("random-seed2-other-split") && e.contains("held-out prompts"), "{e}");
}
