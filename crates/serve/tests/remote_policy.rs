//! The loop with `[policy] backend = "openai"` against `activepref serve --openai` over real HTTP: the same
//! candidates as the local backend, scores within 1e-4, each round's adapter loaded into the server and used,
//! a stopped run resumed to the same labels, and servers the backend must refuse.

use anyhow::Result;
use apl::config::{ActiveConfig, PolicyBackendKind, Strategy};
use apl::testing::{movie_texts, tiny_run_config, LetterE};
use apl::{ActiveLoop, Event, OracleHandle};
use candle_core::DType;
use lm::testing::tiny_model;
use oracle::{Answer, Comparison, Oracle, ScoreOracle};
use serve::openai::OpenAiState;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
mod common;

const MODEL_ID: &str = "tiny-base";
const KEY_VAR: &str = "ACTIVEPREF_TEST_POLICY_KEY";
const KEY: &str = "remote-policy-test-key";

fn cfg(base_url: Option<&str>) -> ActiveConfig {
    let mut c = tiny_run_config(3);
    c.acquisition.strategy = Strategy::Hybrid;
    if let Some(url) = base_url {
        c.policy.backend = PolicyBackendKind::Openai;
        c.policy.base_url = url.to_string();
        c.policy.model = MODEL_ID.into();
        c.policy.api_key_env = KEY_VAR.into();
        c.policy.concurrency = 3;
        c.policy.retries = 1;
    }
    c
}

/// The letter-e oracle, failing after `fail_after` questions (a run stopped mid-way).
struct Stopping {
    inner: ScoreOracle<LetterE>,
    asked: Arc<AtomicUsize>,
    fail_after: Option<usize>,
}

impl Oracle for Stopping {
    fn name(&self) -> String {
        "letter-e".into()
    }
    fn compare(&mut self, c: &Comparison) -> Result<Answer> {
        if self.fail_after.is_some_and(|f| self.asked.fetch_add(1, Ordering::SeqCst) >= f) {
            anyhow::bail!("oracle gone (test)");
        }
        self.inner.compare(c)
    }
}

fn run(c: &ActiveConfig, dir: &Path, fail_after: Option<usize>) -> Result<()> {
    let mut ev = |_e: Event| {};
    let o = Stopping { inner: ScoreOracle(LetterE), asked: Arc::default(), fail_after };
    let model = tiny_model("llama", 1, DType::F32)?;
    let mut r = ActiveLoop::open(c.clone(), dir, model, OracleHandle::Sync(Box::new(o)), None, &mut ev)?;
    r.ensure_pool(&movie_texts(200), Path::new("test-texts"))?;
    r.run().map(|_| ())
}

/// Every candidate: round, completion texts, policy and reference log-probs.
fn candidates(dir: &Path) -> Vec<(i64, String, String, [f64; 4], bool)> {
    let db = rusqlite::Connection::open(dir.join("store.sqlite")).unwrap();
    let mut st = db
        .prepare(
            "SELECT round, completion0, completion1, logp0, logp1, ref_logp0, ref_logp1, selected FROM candidates \
             ORDER BY id",
        )
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, [r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?], r.get(7)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

fn server(max_adapters: usize) -> String {
    std::env::set_var(KEY_VAR, KEY);
    let state = OpenAiState::new(tiny_model("llama", 1, DType::F32).unwrap(), MODEL_ID)
        .with_api_key(Some(KEY.into()))
        .with_lora_loading(true, max_adapters);
    format!("{}/v1", common::serve(state))
}

#[test]
fn the_remote_backend_gives_the_local_runs_candidates_and_labels() {
    let url = server(2);
    let tmp = tempfile::tempdir().unwrap();
    let (local, remote) = (tmp.path().join("local"), tmp.path().join("remote"));
    run(&cfg(None), &local, None).unwrap();
    run(&cfg(Some(&url)), &remote, None).unwrap();
    let (a, b) = (candidates(&local), candidates(&remote));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        // Each row drew with its own seed: the server samples exactly what the local sampler does.
        assert_eq!((x.0, &x.1, &x.2), (y.0, &y.1, &y.2));
        for k in 0..4 {
            assert!((x.3[k] - y.3[k]).abs() < 1e-4, "round {} log-prob {k}: local {} remote {}", x.0, x.3[k], y.3[k]);
        }
        assert_eq!(x.4, y.4, "the same pairs chosen");
    }
    // Round 2 acquired with round 1's policy, which the server had loaded: policy and reference differ.
    assert!(b.iter().filter(|c| c.0 == 2).any(|c| (c.3[0] - c.3[2]).abs() > 1e-3), "round 2 used the base model");
    assert!(remote.join("round-1/adapter/adapter_config.json").exists());
    assert_eq!(
        std::fs::read_to_string(local.join("labels.jsonl")).unwrap(),
        std::fs::read_to_string(remote.join("labels.jsonl")).unwrap()
    );
    // The evaluation samples too.
    let wins = |d: &Path| {
        let s = apl::store::Store::open(&d.join("store.sqlite")).unwrap();
        (s.eval_samples(0).unwrap(), s.eval_samples(2).unwrap())
    };
    assert_eq!(wins(&local), wins(&remote));
}

#[test]
fn a_stopped_remote_run_resumes_to_the_same_labels() {
    let url = server(4);
    let tmp = tempfile::tempdir().unwrap();
    let (whole, stopped) = (tmp.path().join("whole"), tmp.path().join("stopped"));
    run(&cfg(Some(&url)), &whole, None).unwrap();
    // Stopped in round 2's labelling (4 labels in round 1, then 2 of round 2), after round 1's adapter was
    // loaded under the run's name: the resumed run loads it again without the server's "already loaded".
    assert!(run(&cfg(Some(&url)), &stopped, Some(6)).is_err());
    run(&cfg(Some(&url)), &stopped, None).unwrap();
    assert_eq!(
        std::fs::read_to_string(whole.join("labels.jsonl")).unwrap(),
        std::fs::read_to_string(stopped.join("labels.jsonl")).unwrap()
    );
}

#[test]
fn servers_the_remote_backend_cannot_use_are_refused_by_name() {
    std::env::set_var(KEY_VAR, KEY);
    let tmp = tempfile::tempdir().unwrap();
    // Unreachable.
    let mut c = cfg(Some("http://127.0.0.1:9/v1"));
    c.policy.retries = 0;
    let e = format!("{:#}", run(&c, &tmp.path().join("a"), None).unwrap_err());
    assert!(e.contains("policy server") && e.contains("127.0.0.1:9"), "{e}");
    // A model the server does not serve.
    let url = server(1);
    let mut c = cfg(Some(&url));
    c.policy.model = "other".into();
    let e = format!("{:#}", run(&c, &tmp.path().join("b"), None).unwrap_err());
    assert!(e.contains("404") && e.contains("other"), "{e}");
    // A server that cannot load adapters: round 1 trains, then its adapter is refused with what to do.
    let plain = OpenAiState::new(tiny_model("llama", 1, DType::F32).unwrap(), MODEL_ID).with_api_key(Some(KEY.into()));
    let url = format!("{}/v1", common::serve(plain));
    let e = format!("{:#}", run(&cfg(Some(&url)), &tmp.path().join("c"), None).unwrap_err());
    assert!(e.contains("refused round 1's adapter") && e.contains("--allow-lora-loading"), "{e}");
    // Full fine-tuning cannot go through adapters.
    let mut c = cfg(Some(&url));
    c.train.lora = None;
    let e = format!("{:#}", c.validate().unwrap_err());
    assert!(e.contains("needs LoRA training"), "{e}");
}

/// A stand-in server whose `/v1/completions` answers every request with `choice` (its `logprobs` made up).
fn fake_server(choice: serde_json::Value) -> String {
    use axum::routing::post;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let app = axum::Router::new().route(
        "/v1/completions",
        post(move || {
            let choice = choice.clone();
            async move { axum::Json(serde_json::json!({"choices": [choice]})) }
        }),
    );
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(l, app).await.unwrap();
        });
    });
    format!("http://{addr}/v1")
}

#[test]
fn servers_without_raw_logprobs_are_refused_when_the_backend_connects() {
    std::env::set_var(KEY_VAR, KEY);
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        // An OpenAI-compatible server that ignores `logprobs`.
        (serde_json::json!({"index": 0, "text": "abc", "logprobs": null}), "no log-probs"),
        // Token strings instead of ids: `return_tokens_as_token_ids` not honoured.
        (
            serde_json::json!({"index": 0, "text": "ab", "logprobs": {"tokens": ["a", "b"], "token_logprobs": [-1.0, -2.0]}}),
            "return_tokens_as_token_ids",
        ),
        // Values after top-k filtering: every sampled token at log-prob 0 under top_k = 1.
        (
            serde_json::json!({"index": 0, "text": "ab", "logprobs": {"tokens": ["token_id:97", "token_id:98"],
                               "token_logprobs": [0.0, 0.0]}}),
            "raw_logprobs",
        ),
    ];
    for (i, (choice, needle)) in cases.into_iter().enumerate() {
        let url = fake_server(choice);
        let e = format!("{:#}", run(&cfg(Some(&url)), &tmp.path().join(format!("r{i}")), None).unwrap_err());
        assert!(e.contains(needle) && e.contains(&url) && e.contains("round 1: acquisition"), "{e}");
    }
}
