//! A store written by the previous release opens with this one: its schema is migrated in place, everything
//! it held reads back the same, a finished run resumes without redoing anything, and a store from a newer
//! release is refused. The fixture (`tests/fixtures/run-v1`) was made by that release's binary.

use apl::store::{Store, MIGRATIONS, SCHEMA_VERSION};
use apl::testing::LetterE;
use apl::{ActiveConfig, ActiveLoop, Event, OracleHandle};
use candle_core::DType;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/run-v1")
}

/// A copy of the fixture run in a temporary directory (the test must not change the fixture).
fn copy() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["store.sqlite", "config.toml", "round-1/policy.safetensors", "round-2/policy.safetensors"] {
        if let Some(parent) = Path::new(f).parent() {
            std::fs::create_dir_all(dir.join(parent)).unwrap();
        }
        std::fs::copy(fixture().join(f), dir.join(f)).unwrap();
    }
    (tmp, dir)
}

/// The per-round results the old release wrote, one JSON object per round.
fn old_metrics() -> Vec<Value> {
    let text = std::fs::read_to_string(fixture().join("metrics.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Equal, numbers to 1e-12 relative (serde_json's default float parsing is not exactly round-trip).
fn assert_same(a: &[Value], b: &[Value]) {
    fn same(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => {
                let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                (x - y).abs() <= 1e-12 * x.abs().max(1.0)
            }
            (Value::Object(x), Value::Object(y)) => {
                x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
            }
            _ => a == b,
        }
    }
    assert!(a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y)), "{a:?}\n{b:?}");
}

#[test]
fn a_store_from_the_previous_release_is_migrated_and_reads_back_the_same() {
    let (_tmp, dir) = copy();
    let raw = rusqlite::Connection::open(dir.join("store.sqlite")).unwrap();
    let before: String =
        raw.query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0)).unwrap();
    assert_eq!(before, "1");
    drop(raw);

    let store = Store::open(&dir.join("store.sqlite")).unwrap();
    assert_eq!(SCHEMA_VERSION, MIGRATIONS.len() as i64);
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(store.labels(2).unwrap().len(), 6);
    assert_eq!(store.rounds().unwrap().len(), 2);
    assert_eq!(store.judgments(2).unwrap().len(), 6);
    let results: Vec<Value> =
        apl::results::round_results(&store).unwrap().iter().map(|r| serde_json::to_value(r).unwrap()).collect();
    assert_same(&results, &old_metrics());
    // The annotator the old release registered still signs in with the token it printed.
    let hash = format!("{:x}", Sha256::digest(b"adc2ec50a4708eecb01de35ce5b82d4d"));
    assert_eq!(store.annotator_by_token(&hash).unwrap().unwrap().name, "alice");

    // The migrated store takes what later versions added: removing an annotator revokes the token.
    store.remove_annotator("alice").unwrap();
    assert!(store.annotator_by_token(&hash).unwrap().is_none());

    // Opening again is a no-op: every migration ran once.
    drop(store);
    let store = Store::open(&dir.join("store.sqlite")).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
}

#[test]
fn a_finished_run_from_the_previous_release_resumes_without_redoing_anything() {
    let (_tmp, dir) = copy();
    let cfg = ActiveConfig::from_toml_file(&dir.join("config.toml")).unwrap();
    let mut stages = Vec::new();
    let mut ev = |e: Event| {
        if let Event::Stage(s) = e {
            stages.push(s)
        }
    };
    // The starting model is never used: every round is trained (its policy file readable) and evaluated
    // already (a model of another shape would fail loudly if anything were sampled, scored or trained).
    let model = lm::testing::tiny_model("llama", 1, DType::F32).unwrap();
    let oracle = OracleHandle::Sync(Box::new(oracle::ScoreOracle(LetterE)));
    let mut run = ActiveLoop::open(cfg, &dir, model, oracle, None, &mut ev).unwrap();
    let results: Vec<Value> = run.run().unwrap().iter().map(|r| serde_json::to_value(r).unwrap()).collect();
    drop(run);
    assert!(stages.is_empty(), "{stages:?}");
    assert_same(&results, &old_metrics());
    assert!(dir.join("report.html").is_file());
}

#[test]
fn a_store_from_a_newer_release_is_refused() {
    let (_tmp, dir) = copy();
    let raw = rusqlite::Connection::open(dir.join("store.sqlite")).unwrap();
    let newer = SCHEMA_VERSION + 1;
    raw.execute("UPDATE meta SET value = ?1 WHERE key = 'schema_version'", [newer.to_string()]).unwrap();
    drop(raw);
    let e = format!("{:#}", Store::open(&dir.join("store.sqlite")).err().unwrap());
    assert!(e.contains(&format!("store schema version {newer}")) && e.contains("use a newer activepref"), "{e}");
}
