//! The LLM-judge oracle pointed at activepref's own OpenAI-compatible server: the protocol works end to end
//! (a local model can be a run's judge), and a model that answers neither A nor B gives a non-answer, not a
//! fault.

use candle_core::DType;
use oracle::judge::{Judge, JudgeConfig, JudgeTask};
use oracle::{Comparison, Oracle};
mod common;

use common::serve;
use serve::openai::OpenAiState;

#[test]
fn the_judge_oracle_talks_to_our_server() {
    let model = lm::testing::tiny_model("llama", 1, DType::F32).unwrap();
    let url = format!("{}/v1", serve(OpenAiState::new(model, "tiny-judge").with_api_key(Some("k3y".into()))));
    std::env::set_var("ACTIVEPREF_TEST_JUDGE_KEY", "k3y");
    let dir = tempfile::tempdir().unwrap();
    // The tiny model has a 128-token context: a short custom question instead of the paper's.
    let cfg = JudgeConfig {
        base_url: url,
        model: "tiny-judge".into(),
        api_key_env: "ACTIVEPREF_TEST_JUDGE_KEY".into(),
        task: JudgeTask::Custom,
        system_prompt: Some("Judge.".into()),
        user_template: Some("A:{a} B:{b} Preferred:".into()),
        max_tokens: 8,
        retries: 1,
        backoff_s: 0.01,
        cache_file: Some(dir.path().join("cache.jsonl")),
        ..JudgeConfig::default()
    };
    let mut judge = Judge::new(cfg.clone()).unwrap();
    let c = Comparison::new("It was", " great", " bad");
    let a = judge.compare(&c).unwrap();
    // A random tiny model does not answer "Preferred: A|B": a non-answer, recorded with its reply.
    assert!(a.raw.contains("\"reply\""), "{}", a.raw);
    assert_eq!(judge.stats().calls, 1);
    // Asked again by a new judge (a resumed run): the cache answers, no second call.
    let mut again = Judge::new(cfg.clone()).unwrap();
    assert_eq!(again.compare(&c).unwrap(), a);
    assert_eq!(again.stats().calls, 0);
    // A wrong key is refused at once with the server's message.
    std::env::set_var("ACTIVEPREF_TEST_JUDGE_KEY2", "wrong");
    let mut bad =
        Judge::new(JudgeConfig { api_key_env: "ACTIVEPREF_TEST_JUDGE_KEY2".into(), cache_file: None, ..cfg }).unwrap();
    let e = bad.compare(&c).unwrap_err().to_string();
    assert!(e.contains("401"), "{e}");
}
