//! vLLM's dialect of the OpenAI API over real HTTP, what a client that samples and scores through vLLM relies
//! on: log-probs of sampled tokens (equal to the sampler's), `echo` and `prompt_logprobs` (equal to
//! `activepref score`'s numbers within 1e-4), token ids both ways, and LoRA adapters loaded and unloaded at
//! run time, each served under its own name.

use candle_core::DType;
use lm::model::LanguageModel;
use lm::sample::{generate, SampleParams};
use serde_json::{json, Value};
mod common;

use common::serve;
use serve::openai::OpenAiState;
use std::path::{Path, PathBuf};
use std::time::Duration;

const MODEL_ID: &str = "tiny-llama";
const KEY: &str = "dialect-test-key";

fn tiny() -> LanguageModel {
    lm::testing::tiny_model("llama", 1, DType::F32).unwrap()
}

fn post(base: &str, path: &str, body: &Value) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into();
    let mut resp =
        agent.post(format!("{base}{path}")).header("Authorization", format!("Bearer {KEY}")).send_json(body).unwrap();
    (resp.status().as_u16(), resp.body_mut().read_to_string().unwrap())
}

fn post_json(base: &str, path: &str, body: &Value) -> (u16, Value) {
    let (s, text) = post(base, path, body);
    (s, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
}

/// `activepref score`'s per-token numbers for `completion` after `prompt`.
fn scored(model: &LanguageModel, prompt: &[u32], completion: &[u32]) -> Vec<f32> {
    let s = lm::score::completion_logprobs(model, &[(prompt.to_vec(), completion.to_vec())]).unwrap();
    s.tokens.to_vec2::<f32>().unwrap().remove(0)
}

fn f(v: &Value) -> f32 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}")) as f32
}

const PROMPT: [u32; 6] = [72, 101, 108, 108, 111, 44];

#[test]
fn echo_and_prompt_logprobs_equal_the_scorer() {
    let model = tiny();
    let base = serve(OpenAiState::new(tiny(), MODEL_ID).with_api_key(Some(KEY.into())));
    // vLLM's scoring recipe: the whole sequence as a token-id prompt, `echo` with `max_tokens: 0`.
    let (s, b) = post_json(
        &base,
        "/v1/completions",
        &json!({"model": MODEL_ID, "prompt": PROMPT, "echo": true, "max_tokens": 0, "logprobs": 0,
                "return_tokens_as_token_ids": true, "temperature": 1.0}),
    );
    assert_eq!(s, 200, "{b}");
    let lp = &b["choices"][0]["logprobs"];
    let want = scored(&model, &PROMPT[..1], &PROMPT[1..]);
    let got = lp["token_logprobs"].as_array().unwrap();
    assert_eq!(got.len(), PROMPT.len());
    assert!(got[0].is_null(), "the first token has no log-prob: {lp}");
    for (g, w) in got[1..].iter().zip(&want) {
        assert!((f(g) - w).abs() < 1e-4, "{g} vs {w}");
    }
    let tokens: Vec<String> = PROMPT.iter().map(|t| format!("token_id:{t}")).collect();
    assert_eq!(lp["tokens"], json!(tokens));
    assert_eq!(b["choices"][0]["text"], "Hello,", "echo puts the prompt back: {b}");
    assert_eq!(b["usage"]["completion_tokens"], 0);

    // The other recipe: `prompt_logprobs` with one sampled token; each position names its token's rank.
    let (s, b) = post_json(
        &base,
        "/v1/completions",
        &json!({"model": MODEL_ID, "prompt": PROMPT, "max_tokens": 1, "prompt_logprobs": 2, "seed": 1,
                "return_token_ids": true}),
    );
    assert_eq!(s, 200, "{b}");
    let c = &b["choices"][0];
    assert_eq!(c["prompt_token_ids"], json!(PROMPT));
    assert_eq!(c["token_ids"].as_array().unwrap().len(), 1);
    let pl = c["prompt_logprobs"].as_array().unwrap();
    assert_eq!(pl.len(), PROMPT.len());
    assert!(pl[0].is_null());
    for (j, w) in want.iter().enumerate() {
        let pos = pl[j + 1].as_object().unwrap();
        let mine = &pos[&PROMPT[j + 1].to_string()];
        assert!((f(&mine["logprob"]) - w).abs() < 1e-4);
        assert!(mine["rank"].as_u64().unwrap() >= 1);
        // The token and the 2 most likely (fewer when it is one of them).
        assert!((2..=3).contains(&pos.len()), "{pl:?}");
        let best = pos.values().map(|e| f(&e["logprob"])).fold(f32::NEG_INFINITY, f32::max);
        let rank1 = pos.values().find(|e| e["rank"] == 1).unwrap();
        assert_eq!(f(&rank1["logprob"]), best);
    }
}

#[test]
fn sampled_logprobs_are_the_samplers_and_top_logprobs_hold_the_sampled_token() {
    let model = tiny();
    let base = serve(OpenAiState::new(tiny(), MODEL_ID).with_api_key(Some(KEY.into())));
    let params = SampleParams { max_new_tokens: 6, temperature: 0.7, top_k: 0, top_p: 1.0, seed: 5, stop_at_eos: true };
    let direct = generate(&model, &[PROMPT.to_vec(), PROMPT.to_vec()], &params, None, 2, 0, |_| {}).unwrap();
    let body = |k: u64| {
        json!({"model": MODEL_ID, "prompt": PROMPT, "n": 2, "max_tokens": 6, "temperature": 0.7, "top_p": 1.0,
               "top_k": -1, "seed": 5, "logprobs": k, "return_token_ids": true, "return_tokens_as_token_ids": true})
    };
    let (s, b) = post_json(&base, "/v1/completions", &body(0));
    assert_eq!(s, 200, "{b}");
    for (c, d) in b["choices"].as_array().unwrap().iter().zip(&direct) {
        assert_eq!(c["token_ids"], json!(d.tokens), "same seed, same tokens");
        let got: Vec<f32> = c["logprobs"]["token_logprobs"].as_array().unwrap().iter().map(f).collect();
        // Temperature-1 values whatever the request's temperature: exactly what the sampler recorded.
        assert_eq!(got, d.logprobs);
        // With 0 most likely, each position lists the sampled token alone.
        for (t, m) in d.tokens.iter().zip(c["logprobs"]["top_logprobs"].as_array().unwrap()) {
            assert_eq!(m.as_object().unwrap().keys().collect::<Vec<_>>(), vec![&format!("token_id:{t}")]);
        }
    }
    let (s, b) = post_json(&base, "/v1/completions", &body(3));
    assert_eq!(s, 200, "{b}");
    for (c, d) in b["choices"].as_array().unwrap().iter().zip(&direct) {
        let lp = &c["logprobs"];
        for (j, (t, m)) in d.tokens.iter().zip(lp["top_logprobs"].as_array().unwrap()).enumerate() {
            let m = m.as_object().unwrap();
            assert!((3..=4).contains(&m.len()), "{m:?}");
            let mine = f(&m[&format!("token_id:{t}")]);
            assert!((mine - d.logprobs[j]).abs() < 1e-4, "teacher-forced {mine} vs sampled {}", d.logprobs[j]);
            assert_eq!(f(&lp["token_logprobs"][j]), mine);
        }
        // And the scorer agrees on the whole completion.
        let want = scored(&model, &PROMPT, &d.tokens);
        for (g, w) in lp["token_logprobs"].as_array().unwrap().iter().zip(&want) {
            assert!((f(g) - w).abs() < 1e-4);
        }
    }

    // Chat: OpenAI's shape, the k most likely per token.
    let (s, b) = post_json(
        &base,
        "/v1/chat/completions",
        &json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "seed": 2,
                "logprobs": true, "top_logprobs": 2, "prompt_logprobs": 0, "return_token_ids": true}),
    );
    assert_eq!(s, 200, "{b}");
    let content = b["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), b["choices"][0]["token_ids"].as_array().unwrap().len());
    for e in content {
        assert!(e["token"].is_string() && e["bytes"].is_array() && f(&e["logprob"]) <= 0.0, "{e}");
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 2);
        assert!(f(&top[0]["logprob"]) >= f(&top[1]["logprob"]));
        assert!(f(&e["logprob"]) <= f(&top[0]["logprob"]) + 1e-6);
    }
    let prompt_ids = b["prompt_token_ids"].as_array().unwrap();
    assert_eq!(b["prompt_logprobs"].as_array().unwrap().len(), prompt_ids.len());
}

#[test]
fn what_cannot_be_answered_is_refused() {
    let base = serve(OpenAiState::new(tiny(), MODEL_ID).with_api_key(Some(KEY.into())));
    let user = json!([{"role": "user", "content": "Hi"}]);
    for (path, body, param) in [
        ("/v1/completions", json!({"model": MODEL_ID, "prompt": "a", "logprobs": 21}), "logprobs"),
        ("/v1/completions", json!({"model": MODEL_ID, "prompt": "a", "logprobs": true}), "logprobs"),
        ("/v1/completions", json!({"model": MODEL_ID, "prompt": "a", "logprobs": 1, "stream": true}), "logprobs"),
        ("/v1/completions", json!({"model": MODEL_ID, "prompt": "a", "prompt_logprobs": -1}), "prompt_logprobs"),
        ("/v1/completions", json!({"model": MODEL_ID, "prompt": "a", "max_tokens": 0}), "max_tokens"),
        ("/v1/completions", json!({"model": MODEL_ID, "prompt": "a", "echo": true, "stream": true}), "echo"),
        ("/v1/chat/completions", json!({"model": MODEL_ID, "messages": user, "top_logprobs": 2}), "top_logprobs"),
        ("/v1/chat/completions", json!({"model": MODEL_ID, "messages": user, "echo": true}), "echo"),
    ] {
        let (s, b) = post_json(&base, path, &body);
        assert_eq!(s, 400, "{body}: {b}");
        assert_eq!(b["error"]["param"], param, "{body}: {b}");
    }
}

fn peft_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../lm/tests/fixtures/peft").join(name)
}

#[test]
fn adapters_load_and_unload_at_run_time_each_under_its_own_name() {
    let model = tiny();
    let base = serve(OpenAiState::new(tiny(), MODEL_ID).with_api_key(Some(KEY.into())).with_lora_loading(true, 2));
    let adapter = peft_fixture("llama-list");
    let score = |name: &str| -> (u16, Value) {
        post_json(
            &base,
            "/v1/completions",
            &json!({"model": name, "prompt": PROMPT, "echo": true, "max_tokens": 0, "logprobs": 0}),
        )
    };
    let values = |b: &Value| -> Vec<f32> {
        b["choices"][0]["logprobs"]["token_logprobs"].as_array().unwrap()[1..].iter().map(f).collect()
    };
    let (s, b) = score("policy-r1");
    assert_eq!(s, 404, "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains(MODEL_ID));

    let load = json!({"lora_name": "policy-r1", "lora_path": adapter.display().to_string()});
    let (s, text) = post(&base, "/v1/load_lora_adapter", &load);
    assert_eq!((s, text.as_str()), (200, "Success: LoRA adapter 'policy-r1' added successfully."));
    let (s, b) = score("policy-r1");
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["model"], "policy-r1");
    // The adapter's numbers, not the base's.
    let merged = lm::adapter::apply(&model, &adapter).unwrap();
    let want = scored(&merged, &PROMPT[..1], &PROMPT[1..]);
    let base_want = scored(&model, &PROMPT[..1], &PROMPT[1..]);
    let got = values(&b);
    assert!(got.iter().zip(&want).all(|(g, w)| (g - w).abs() < 1e-4), "{got:?} vs {want:?}");
    assert!(got.iter().zip(&base_want).any(|(g, w)| (g - w).abs() > 1e-3), "the adapter changed nothing");
    // The base is still served as it was.
    let (_, b) = score(MODEL_ID);
    assert!(values(&b).iter().zip(&base_want).all(|(g, w)| (g - w).abs() < 1e-4));
    // /v1/models lists both.
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let models: Value = agent
        .get(format!("{base}/v1/models"))
        .header("Authorization", format!("Bearer {KEY}"))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    assert_eq!(models["data"][1]["id"], "policy-r1");
    assert_eq!(models["data"][1]["parent"], MODEL_ID);

    // The same name again is vLLM's 400; a resuming client unloads first.
    let (s, b) = post_json(&base, "/v1/load_lora_adapter", &load);
    assert_eq!(s, 400, "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("already been loaded"));
    // A missing path is a 404, an adapter that cannot apply a 400 naming why.
    let (s, _) = post_json(&base, "/v1/load_lora_adapter", &json!({"lora_name": "x", "lora_path": "/nonexistent/a"}));
    assert_eq!(s, 404);
    let gpt2 = peft_fixture("gpt2-all-linear").display().to_string();
    let (s, b) = post_json(&base, "/v1/load_lora_adapter", &json!({"lora_name": "x", "lora_path": gpt2}));
    assert_eq!(s, 400);
    assert!(b["error"]["message"].as_str().unwrap().contains("not a linear layer"), "{b}");
    let (s, b) = post_json(&base, "/v1/load_lora_adapter", &json!({"lora_name": "x"}));
    assert_eq!((s, &b["error"]["param"]), (400, &json!("lora_path")));
    // At most 2 at once.
    let second = json!({"lora_name": "policy-r2", "lora_path": adapter.display().to_string()});
    assert_eq!(post(&base, "/v1/load_lora_adapter", &second).0, 200);
    let third = json!({"lora_name": "policy-r3", "lora_path": adapter.display().to_string()});
    let (s, b) = post_json(&base, "/v1/load_lora_adapter", &third);
    assert_eq!(s, 400);
    assert!(b["error"]["message"].as_str().unwrap().contains("unload one"), "{b}");

    let unload = json!({"lora_name": "policy-r1"});
    let (s, text) = post(&base, "/v1/unload_lora_adapter", &unload);
    assert_eq!((s, text.as_str()), (200, "Success: LoRA adapter 'policy-r1' removed successfully."));
    assert_eq!(score("policy-r1").0, 404);
    assert_eq!(post(&base, "/v1/unload_lora_adapter", &unload).0, 404);
    // Unloaded, the name can be loaded again (how a resumed run reloads a round's adapter).
    assert_eq!(post(&base, "/v1/load_lora_adapter", &load).0, 200);
}

#[test]
fn adapter_loading_is_off_unless_allowed_and_needs_the_key() {
    let base = serve(OpenAiState::new(tiny(), MODEL_ID).with_api_key(Some(KEY.into())));
    let load = json!({"lora_name": "a", "lora_path": peft_fixture("llama-list").display().to_string()});
    let (s, b) = post_json(&base, "/v1/load_lora_adapter", &load);
    assert_eq!(s, 404, "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("--allow-lora-loading"));
    let open = serve(OpenAiState::new(tiny(), MODEL_ID).with_api_key(Some(KEY.into())).with_lora_loading(true, 1));
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let resp = agent.post(format!("{open}/v1/load_lora_adapter")).send_json(&load).unwrap();
    assert_eq!(resp.status().as_u16(), 401);
}
