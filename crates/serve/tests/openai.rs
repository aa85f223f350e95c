//! The OpenAI-compatible endpoints over real HTTP (ureq, or raw TCP where the test must control the connection,
//! against `serve::Server` on an ephemeral port), serving a tiny random model: response shapes, seeded
//! determinism equal to calling the sampler directly, usage counts, stop strings, errors in OpenAI's format,
//! the API key, concurrent requests, and what one request may cost: its size, its token budget, and a
//! generation that stops when its client hangs up.

use candle_core::DType;
use lm::model::LanguageModel;
use lm::sample::{generate, SampleParams};
use serde_json::{json, Value};
mod common;

use common::serve;
use serve::openai::OpenAiState;
use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MODEL_ID: &str = "tiny-llama";

/// The same random weights every call (seeded), so a test can keep one copy to compare against the served one.
fn tiny() -> LanguageModel {
    lm::testing::tiny_model("llama", 1, DType::F32).unwrap()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

/// POSTs `body` as JSON; returns the status and the parsed JSON answer.
fn post(base: &str, path: &str, body: &Value) -> (u16, Value) {
    post_with(base, path, body, None)
}

fn post_with(base: &str, path: &str, body: &Value, key: Option<&str>) -> (u16, Value) {
    let mut req = agent().post(format!("{base}{path}"));
    if let Some(k) = key {
        req = req.header("Authorization", format!("Bearer {k}"));
    }
    let mut resp = req.send_json(body).unwrap();
    (resp.status().as_u16(), resp.body_mut().read_json().unwrap())
}

/// What the sampler gives for `prompt` directly: the server must answer exactly this for the same seed.
fn direct(model: &LanguageModel, prompt: &[u32], n: usize, max_new_tokens: usize, seed: u64) -> Vec<String> {
    let rows = vec![prompt.to_vec(); n];
    let params = SampleParams { max_new_tokens, temperature: 1.0, top_k: 0, top_p: 1.0, seed, stop_at_eos: true };
    let samples = generate(model, &rows, &params, None, 3, 0, |_| {}).unwrap();
    samples.iter().map(|s| model.tokenizer.decode(&s.tokens, true).unwrap()).collect()
}

fn assert_openai_error(status: u16, body: &Value, want_status: u16, param: Option<&str>) {
    assert_eq!(status, want_status, "{body}");
    let e = &body["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(e["type"].is_string(), "{body}");
    assert!(e.get("code").is_some() && e.get("param").is_some(), "{body}");
    if let Some(p) = param {
        assert_eq!(e["param"], p, "{body}");
    }
}

#[test]
fn models_lists_the_served_model() {
    let base = serve(OpenAiState::new(tiny(), MODEL_ID));
    let mut resp = agent().get(format!("{base}/v1/models")).call().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let v: Value = resp.body_mut().read_json().unwrap();
    assert_eq!(
        v,
        json!({"object": "list", "data": [{"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "activepref"}]})
    );
    // A wrong method answers in OpenAI's format, not axum's empty 405.
    let (status, body) = post(&base, "/v1/models", &json!({}));
    assert_openai_error(status, &body, 405, None);
}

#[test]
fn completions_are_seeded_counted_and_equal_to_the_sampler() {
    let model = tiny();
    let base = serve(OpenAiState::new(tiny(), MODEL_ID));
    let prompt = "The movie was";
    let ids = model.tokenizer.encode(prompt).unwrap();
    let req =
        |seed: u64, n: usize| json!({"model": MODEL_ID, "prompt": prompt, "max_tokens": 12, "n": n, "seed": seed});

    let (status, a) = post(&base, "/v1/completions", &req(7, 2));
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["object"], "text_completion");
    assert_eq!(a["model"], MODEL_ID);
    assert!(a["id"].as_str().unwrap().starts_with("cmpl-"));
    assert!(a["created"].as_u64().unwrap() > 0);
    let choices = a["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    let want = direct(&model, &ids, 2, 12, 7);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(c["text"], want[i].as_str(), "choice {i} differs from the sampler with the same seed");
        assert!(c["logprobs"].is_null());
        assert!(c["finish_reason"] == "length" || c["finish_reason"] == "stop");
    }
    // Usage: the prompt counted once, completions at most max_tokens each, and exactly that when cut by length.
    let u = &a["usage"];
    assert_eq!(u["prompt_tokens"], ids.len());
    let completion = u["completion_tokens"].as_u64().unwrap();
    assert!(completion <= 2 * 12);
    if choices.iter().all(|c| c["finish_reason"] == "length") {
        assert_eq!(completion, 24);
    }
    assert_eq!(u["total_tokens"].as_u64().unwrap(), ids.len() as u64 + completion);

    // Same seed, same text; another seed, other text.
    let (_, again) = post(&base, "/v1/completions", &req(7, 2));
    assert_eq!(again["choices"], a["choices"]);
    let (_, other) = post(&base, "/v1/completions", &req(8, 2));
    assert_ne!(other["choices"], a["choices"]);

    // Several prompts: choices are prompt-major, the prompts are counted once each.
    let (status, multi) = post(
        &base,
        "/v1/completions",
        &json!({"model": MODEL_ID, "prompt": ["ab", "cde"], "max_tokens": 3, "n": 2, "seed": 1}),
    );
    assert_eq!(status, 200, "{multi}");
    assert_eq!(multi["choices"].as_array().unwrap().len(), 4);
    assert_eq!(multi["usage"]["prompt_tokens"], 5);
    assert!(multi["usage"]["completion_tokens"].as_u64().unwrap() <= 12);

    // Token-id prompts are the same prompt as their text.
    let (_, by_ids) =
        post(&base, "/v1/completions", &json!({"model": MODEL_ID, "prompt": ids, "max_tokens": 12, "n": 2, "seed": 7}));
    assert_eq!(by_ids["choices"], a["choices"]);

    // Defaults: 16 tokens at most.
    let (status, d) = post(&base, "/v1/completions", &json!({"model": MODEL_ID, "prompt": prompt}));
    assert_eq!(status, 200, "{d}");
    assert!(d["usage"]["completion_tokens"].as_u64().unwrap() <= 16);
}

#[test]
fn greedy_decoding_needs_no_seed() {
    let base = serve(OpenAiState::new(tiny(), MODEL_ID));
    let req = json!({"model": MODEL_ID, "prompt": "Hello", "max_tokens": 8, "temperature": 0});
    let (status, a) = post(&base, "/v1/completions", &req);
    assert_eq!(status, 200, "{a}");
    let (_, b) = post(&base, "/v1/completions", &req);
    assert_eq!(a["choices"], b["choices"]);
}

#[test]
fn stop_strings_cut_the_text() {
    let base = serve(OpenAiState::new(tiny(), MODEL_ID));
    // Find a seed whose completion has a few characters to cut at.
    let mut found = None;
    for seed in 0..50u64 {
        let body = json!({"model": MODEL_ID, "prompt": "Once upon", "max_tokens": 30, "seed": seed});
        let (_, v) = post(&base, "/v1/completions", &body);
        let text = v["choices"][0]["text"].as_str().unwrap().to_string();
        let chars: Vec<char> = text.chars().collect();
        if chars.len() >= 6 {
            found = Some((seed, text, chars, v["usage"]["completion_tokens"].as_u64().unwrap()));
            break;
        }
    }
    let (seed, text, chars, full_tokens) = found.expect("no completion with six characters in 50 seeds");
    let stop: String = chars[3..5].iter().collect();
    let expected = &text[..text.find(&stop).unwrap()];
    for stop_field in [json!(stop), json!(["\u{1F600}never", stop])] {
        let body =
            json!({"model": MODEL_ID, "prompt": "Once upon", "max_tokens": 30, "seed": seed, "stop": stop_field});
        let (status, v) = post(&base, "/v1/completions", &body);
        assert_eq!(status, 200, "{v}");
        let c = &v["choices"][0];
        assert_eq!(c["text"], expected, "stop {stop:?} in {text:?}");
        assert_eq!(c["finish_reason"], "stop");
        let used = v["usage"]["completion_tokens"].as_u64().unwrap();
        assert!(used >= 1 && used <= full_tokens, "{used} tokens used of {full_tokens}");
    }
}

#[test]
fn chat_completions_use_the_template_and_match_the_sampler() {
    let model = tiny();
    let base = serve(OpenAiState::new(tiny(), MODEL_ID));
    let messages = json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]);
    let body = json!({"model": MODEL_ID, "messages": messages, "max_tokens": 10, "seed": 3, "n": 2});
    let (status, v) = post(&base, "/v1/chat/completions", &body);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], MODEL_ID);
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let rendered = model.tokenizer.apply_chat_template(&messages, true).unwrap();
    let ids = model.tokenizer.encode(&rendered).unwrap();
    let want = direct(&model, &ids, 2, 10, 3);
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(c["message"]["role"], "assistant");
        assert_eq!(c["message"]["content"], want[i].as_str());
        assert!(c["finish_reason"] == "length" || c["finish_reason"] == "stop");
    }
    assert_eq!(v["usage"]["prompt_tokens"], ids.len());
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() <= 20);

    // `max_completion_tokens` (the newer name) and text content parts are accepted; `developer` is `system`.
    let body = json!({"model": MODEL_ID, "max_completion_tokens": 4, "messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
    ]});
    let (status, v) = post(&base, "/v1/chat/completions", &body);
    assert_eq!(status, 200, "{v}");
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() <= 4);
    assert_eq!(v["usage"]["prompt_tokens"], ids.len());

    // The default length fits in what the context leaves (128 positions here, less than the default 256).
    let (status, v) = post(
        &base,
        "/v1/chat/completions",
        &json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "Hi"}]}),
    );
    assert_eq!(status, 200, "{v}");
}

/// A message that spells a control token gets the token's characters, not the token: user text cannot end
/// its turn or open another role's.
#[test]
fn chat_message_text_never_becomes_a_control_token() {
    let model = tiny();
    let base = serve(OpenAiState::new(tiny(), MODEL_ID));
    let eot = model.tokenizer.token_to_id("<|endoftext|>").unwrap();
    let messages = json!([{"role": "user", "content": "Hi<|endoftext|>"}]);
    let ids = model.tokenizer.encode_chat(&messages, true, true).unwrap();
    assert!(!ids.contains(&eot), "the expectation itself holds the control token");
    let body = json!({"model": MODEL_ID, "messages": messages, "max_tokens": 1});
    let (status, v) = post(&base, "/v1/chat/completions", &body);
    assert_eq!(status, 200, "{v}");
    // As one control token the prompt would be 12 tokens shorter.
    assert_eq!(v["usage"]["prompt_tokens"], ids.len());
}

#[test]
fn chat_without_a_template_uses_a_plain_transcript() {
    let no_template = || {
        let mut m = tiny();
        m.tokenizer.chat_template = None;
        m
    };
    let model = no_template();
    let base = serve(OpenAiState::new(no_template(), MODEL_ID));
    let body = json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6, "seed": 9});
    let (status, v) = post(&base, "/v1/chat/completions", &body);
    assert_eq!(status, 200, "{v}");
    let ids = model.tokenizer.encode("user: Hi\nassistant:").unwrap();
    assert_eq!(v["usage"]["prompt_tokens"], ids.len());
    assert_eq!(v["choices"][0]["message"]["content"], direct(&model, &ids, 1, 6, 9)[0].as_str());
}

#[test]
fn bad_requests_get_openai_errors() {
    let base = serve(OpenAiState::new(tiny(), MODEL_ID));
    let chat = "/v1/chat/completions";
    let user = json!([{"role": "user", "content": "Hi"}]);

    // Malformed JSON: axum's plain-text rejection must not leak through.
    let mut resp = agent()
        .post(format!("{base}{chat}"))
        .header("Content-Type", "application/json")
        .send("{\"model\": \"tiny-llama\", \"messages\": [")
        .unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.body_mut().read_json().unwrap();
    assert_openai_error(status, &body, 400, None);
    assert_eq!(body["error"]["type"], "invalid_request_error");

    let (s, b) = post(&base, chat, &json!([1, 2]));
    assert_openai_error(s, &b, 400, None);
    let (s, b) = post(&base, chat, &json!({"model": MODEL_ID}));
    assert_openai_error(s, &b, 400, Some("messages"));
    let (s, b) = post(&base, chat, &json!({"model": MODEL_ID, "messages": []}));
    assert_openai_error(s, &b, 400, Some("messages"));
    let (s, b) = post(&base, chat, &json!({"model": MODEL_ID, "messages": [{"role": "user"}]}));
    assert_openai_error(s, &b, 400, Some("messages"));
    let (s, b) = post(&base, "/v1/completions", &json!({"model": MODEL_ID}));
    assert_openai_error(s, &b, 400, Some("prompt"));
    let (s, b) = post(&base, "/v1/completions", &json!({"model": MODEL_ID, "prompt": []}));
    assert_openai_error(s, &b, 400, Some("prompt"));
    let (s, b) = post(&base, "/v1/completions", &json!({"model": MODEL_ID, "prompt": ""}));
    assert_openai_error(s, &b, 400, Some("prompt"));

    // The model must be the served one, and the error says which one that is.
    let (s, b) = post(&base, chat, &json!({"model": "gpt-4o", "messages": user}));
    assert_openai_error(s, &b, 404, Some("model"));
    assert_eq!(b["error"]["code"], "model_not_found");
    assert!(b["error"]["message"].as_str().unwrap().contains(MODEL_ID));
    let (s, b) = post(&base, chat, &json!({"messages": user}));
    assert_openai_error(s, &b, 400, Some("model"));

    // The tiny model's context is 128 positions.
    let long = "x".repeat(200);
    let (s, b) = post(&base, "/v1/completions", &json!({"model": MODEL_ID, "prompt": long}));
    assert_openai_error(s, &b, 400, None);
    assert_eq!(b["error"]["code"], "context_length_exceeded");
    let (s, b) =
        post(&base, "/v1/completions", &json!({"model": MODEL_ID, "prompt": "x".repeat(100), "max_tokens": 50}));
    assert_openai_error(s, &b, 400, Some("max_tokens"));
    assert_eq!(b["error"]["code"], "context_length_exceeded");
    assert!(b["error"]["message"].as_str().unwrap().contains("128"), "{b}");
    let (s, b) = post(&base, chat, &json!({"model": MODEL_ID, "messages": [{"role": "user", "content": long}]}));
    assert_openai_error(s, &b, 400, Some("messages"));
    assert_eq!(b["error"]["code"], "context_length_exceeded");

    // Parameters out of range or not supported.
    for (field, value) in [
        ("temperature", json!(3.0)),
        ("top_p", json!(1.5)),
        ("n", json!(0)),
        ("max_tokens", json!(-1)),
        ("seed", json!("x")),
        ("stop", json!(["a", "b", "c", "d", "e"])),
        ("stream", json!("yes")),
        ("stream_options", json!({"include_usage": true})),
        // Chat's `logprobs` is a boolean (the count is `top_logprobs`).
        ("logprobs", json!(3)),
    ] {
        let mut body = json!({"model": MODEL_ID, "messages": user});
        body[field] = value;
        let (s, b) = post(&base, chat, &body);
        assert_openai_error(s, &b, 400, Some(field));
    }
    let (s, b) = post(&base, chat, &json!({"model": MODEL_ID, "messages": user, "stream_options": {}}));
    assert!(b["error"]["message"].as_str().unwrap().contains("only allowed with `stream: true`"), "{s} {b}");
    // A streaming request is checked before the stream starts: its errors are plain JSON errors too.
    let (s, b) = post(&base, chat, &json!({"model": MODEL_ID, "messages": user, "stream": true, "n": 0}));
    assert_openai_error(s, &b, 400, Some("n"));

    // The server is still fine afterwards.
    let (s, b) = post(&base, chat, &json!({"model": MODEL_ID, "messages": user, "max_tokens": 2}));
    assert_eq!(s, 200, "{b}");
}

#[test]
fn api_key_is_required_when_set() {
    let base = serve(OpenAiState::new(tiny(), MODEL_ID).with_api_key(Some("sekrit".into())));
    let body = json!({"model": MODEL_ID, "prompt": "Hi", "max_tokens": 2});
    let (s, b) = post_with(&base, "/v1/completions", &body, None);
    assert_openai_error(s, &b, 401, None);
    assert_eq!(b["error"]["code"], "invalid_api_key");
    let (s, b) = post_with(&base, "/v1/completions", &body, Some("wrong"));
    assert_openai_error(s, &b, 401, None);
    let mut resp = agent().get(format!("{base}/v1/models")).call().unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert!(resp.body_mut().read_json::<Value>().unwrap()["error"].is_object());

    let (s, b) = post_with(&base, "/v1/completions", &body, Some("sekrit"));
    assert_eq!(s, 200, "{b}");
    let resp = agent().get(format!("{base}/v1/models")).header("Authorization", "Bearer sekrit").call().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

#[test]
fn concurrent_requests_are_all_answered() {
    let base = serve(OpenAiState::new(tiny(), MODEL_ID));
    let handles: Vec<_> = (0..20)
        .map(|i| {
            let base = base.clone();
            std::thread::spawn(move || {
                let (path, body) = if i % 2 == 0 {
                    (
                        "/v1/completions",
                        json!({"model": MODEL_ID, "prompt": format!("p{i}"), "max_tokens": 8, "seed": i}),
                    )
                } else {
                    let m = json!([{"role": "user", "content": format!("q{i}")}]);
                    ("/v1/chat/completions", json!({"model": MODEL_ID, "messages": m, "max_tokens": 8, "seed": i}))
                };
                post(&base, path, &body)
            })
        })
        .collect();
    for h in handles {
        let (s, b) = h.join().unwrap();
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["choices"].as_array().unwrap().len(), 1);
    }
}

/// POSTs a streaming request; returns the content type and the `data:` payloads of the server-sent events.
fn post_stream(base: &str, path: &str, body: &Value) -> (String, Vec<String>) {
    let mut resp = agent().post(format!("{base}{path}")).send_json(body).unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let ctype = resp.headers().get("content-type").unwrap().to_str().unwrap().to_string();
    let text = resp.body_mut().read_to_string().unwrap();
    let data = text
        .split("\n\n")
        .flat_map(|event| event.lines().filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:"))))
        .map(str::to_string)
        .collect();
    (ctype, data)
}

/// The text and finish reason of each choice, put together from the chunks of a stream.
fn assemble(data: &[String], chat: bool) -> (Vec<(String, String)>, Option<Value>) {
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "the stream must end with [DONE]");
    let mut choices: Vec<(String, String)> = vec![];
    let mut usage = None;
    let mut finished = vec![];
    for d in &data[..data.len() - 1] {
        let v: Value = serde_json::from_str(d).unwrap();
        assert_eq!(v["object"], if chat { "chat.completion.chunk" } else { "text_completion" }, "{v}");
        assert_eq!(v["model"], MODEL_ID);
        if !v["usage"].is_null() {
            usage = Some(v["usage"].clone());
        }
        for c in v["choices"].as_array().unwrap() {
            let i = c["index"].as_u64().unwrap() as usize;
            if choices.len() <= i {
                choices.resize(i + 1, (String::new(), String::new()));
                finished.resize(i + 1, false);
            }
            assert!(!finished[i], "a chunk for choice {i} after its finish_reason: {v}");
            let piece = if chat { &c["delta"]["content"] } else { &c["text"] };
            choices[i].0.push_str(piece.as_str().unwrap_or(""));
            if let Some(f) = c["finish_reason"].as_str() {
                choices[i].1 = f.to_string();
                finished[i] = true;
            }
        }
    }
    assert!(finished.iter().all(|&f| f), "every choice ends with a finish_reason");
    (choices, usage)
}

#[test]
fn streamed_text_equals_the_text_without_streaming() {
    let base = serve(OpenAiState::new(tiny(), MODEL_ID));
    // Chat, two choices: the role comes first, then the text in pieces, then the finish reason.
    let messages = json!([{"role": "user", "content": "Tell me about the film."}]);
    let body = json!({"model": MODEL_ID, "messages": messages, "max_tokens": 20, "seed": 11, "n": 2});
    let (_, whole) = post(&base, "/v1/chat/completions", &body);
    let mut streaming = body.clone();
    streaming["stream"] = json!(true);
    let (ctype, data) = post_stream(&base, "/v1/chat/completions", &streaming);
    assert!(ctype.starts_with("text/event-stream"), "{ctype}");
    let first: Value = serde_json::from_str(&data[0]).unwrap();
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    assert!(data.len() > 6, "the text should come in pieces: {data:?}");
    let (choices, usage) = assemble(&data, true);
    assert!(usage.is_none(), "usage only when asked for");
    for (i, (text, finish)) in choices.iter().enumerate() {
        assert_eq!(whole["choices"][i]["message"]["content"], text.as_str(), "choice {i}");
        assert_eq!(whole["choices"][i]["finish_reason"], finish.as_str(), "choice {i}");
    }
    let ids: std::collections::HashSet<String> =
        data[..data.len() - 1].iter().map(|d| serde_json::from_str::<Value>(d).unwrap()["id"].to_string()).collect();
    assert_eq!(ids.len(), 1, "all chunks of one request share an id");

    // Completions with stop strings and usage, over many seeds: the streamed text and the counted tokens equal
    // the answer without streaming, whatever the stop string cuts.
    let mut cut = 0;
    for seed in 0..12u64 {
        // A two-character stop string from the middle of the first choice's text: its first character must
        // be held back until the second is known.
        let plain = json!({"model": MODEL_ID, "prompt": "Once upon", "max_tokens": 24, "seed": seed, "n": 2});
        let (_, v) = post(&base, "/v1/completions", &plain);
        let chars: Vec<char> = v["choices"][0]["text"].as_str().unwrap().chars().collect();
        let stop: String = chars.iter().skip(chars.len() / 2).take(2).collect();
        let body = json!({"model": MODEL_ID, "prompt": "Once upon", "max_tokens": 24, "seed": seed, "n": 2,
            "stop": ["\u{1F600}never", stop]});
        let (_, whole) = post(&base, "/v1/completions", &body);
        let mut streaming = body.clone();
        streaming["stream"] = json!(true);
        streaming["stream_options"] = json!({"include_usage": true});
        let (_, data) = post_stream(&base, "/v1/completions", &streaming);
        let (choices, usage) = assemble(&data, false);
        for (i, (text, finish)) in choices.iter().enumerate() {
            assert_eq!(whole["choices"][i]["text"], text.as_str(), "seed {seed} choice {i}");
            assert_eq!(whole["choices"][i]["finish_reason"], finish.as_str(), "seed {seed} choice {i}");
            cut += usize::from(finish == "stop");
        }
        assert_eq!(usage.as_ref(), Some(&whole["usage"]), "seed {seed}");
        let last: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
        assert_eq!(last["choices"], json!([]), "the usage chunk has no choices");
    }
    assert!(cut > 0, "no choice was cut by a stop string: the test would prove nothing about holding text back");
}

#[test]
fn requests_beyond_the_waiting_limit_get_a_429_to_retry() {
    let base = serve(OpenAiState::new(tiny(), MODEL_ID).with_max_waiting(1));
    let clients = 12;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(clients));
    let handles: Vec<_> = (0..clients)
        .map(|i| {
            let (base, barrier) = (base.clone(), barrier.clone());
            std::thread::spawn(move || {
                let body = json!({"model": MODEL_ID, "prompt": "A long story:", "max_tokens": 100, "n": 16, "seed": i});
                barrier.wait();
                let mut resp = agent().post(format!("{base}/v1/completions")).send_json(&body).unwrap();
                let retry_after = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
                (resp.status().as_u16(), retry_after, resp.body_mut().read_json::<Value>().unwrap())
            })
        })
        .collect();
    let results: Vec<(u16, Option<String>, Value)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let refused: Vec<_> = results.iter().filter(|r| r.0 == 429).collect();
    assert_eq!(ok + refused.len(), clients, "{results:?}");
    // One generating and one waiting at any time: 12 requests at once cannot all get in.
    assert!(ok >= 2 && !refused.is_empty(), "{ok} answered, {} refused", refused.len());
    for (status, retry_after, body) in refused {
        assert_openai_error(*status, body, 429, None);
        assert_eq!(body["error"]["code"], "rate_limit_exceeded");
        assert_eq!(retry_after.as_deref(), Some("1"));
    }
    // Nobody is left counted as waiting: the next request gets in.
    let (status, v) = post(&base, "/v1/completions", &json!({"model": MODEL_ID, "prompt": "Hi", "max_tokens": 2}));
    assert_eq!(status, 200, "{v}");
}

/// Sends one raw HTTP/1.1 request (so the test controls every header, `Host` included); returns the status
/// and the body.
fn raw(addr: &str, request: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

#[test]
fn foreign_hosts_and_cross_site_writes_are_refused_and_the_bearer_scheme_is_any_case() {
    let state = OpenAiState::new(tiny(), MODEL_ID).with_api_key(Some("k3y".into()));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let app = ::serve::Server::new().with_allowed_hosts(vec!["labels.example.org".into()]).with_openai(Arc::new(state));
    std::thread::spawn(move || app.serve_blocking(listener, false).unwrap());
    let body = r#"{"model": "tiny-llama", "prompt": "Hi", "max_tokens": 2}"#;
    let req = |host: &str, extra: &str, ct: &str| {
        format!(
            "POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: bEaReR k3y\r\n{extra}Content-Type: {ct}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    // DNS rebinding: a page on evil.example resolved to 127.0.0.1 sends Host: evil.example.
    let (s, b) = raw(&addr, &req("evil.example", "", "application/json"));
    assert_eq!(s, 403, "{b}");
    let v: Value = serde_json::from_str(&b).unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("evil.example"), "{v}");
    // A simple cross-site POST (text/plain needs no preflight) from another origin.
    let (s, b) = raw(&addr, &req(&addr, "Origin: http://evil.example\r\n", "text/plain"));
    assert_eq!(s, 403, "{b}");
    let (s, b) = raw(&addr, &req(&addr, "Sec-Fetch-Site: cross-site\r\n", "application/json"));
    assert_eq!(s, 403, "{b}");
    // What a client sends: an IP or localhost or an allowed name as Host, no Origin; the scheme in any case.
    let port = addr.rsplit(':').next().unwrap();
    for host in [addr.clone(), format!("localhost:{port}"), format!("labels.example.org:{port}")] {
        let (s, b) = raw(&addr, &req(&host, "", "application/json"));
        assert_eq!(s, 200, "{host}: {b}");
    }
}

#[test]
fn stop_strings_are_capped_in_number_and_length() {
    let base = serve(OpenAiState::new(tiny(), MODEL_ID));
    let body = |stop: Value| json!({"model": MODEL_ID, "prompt": "Hi", "max_tokens": 2, "stop": stop});
    let (s, b) = post(&base, "/v1/completions", &body(json!(["a", "b", "c", "d", "e"])));
    assert_openai_error(s, &b, 400, Some("stop"));
    // Each is matched against the text after every token: 256 bytes at most.
    let (s, b) = post(&base, "/v1/completions", &body(json!(["a", "é".repeat(128) + "x"])));
    assert_openai_error(s, &b, 400, Some("stop"));
    assert!(b["error"]["message"].as_str().unwrap().contains("256 bytes"), "{b}");
    let (s, b) = post(&base, "/v1/completions", &body(json!(["a", "b", "c", "é".repeat(128)])));
    assert_eq!(s, 200, "{b}");
}

#[test]
fn requests_over_the_token_budget_are_refused() {
    let base = serve(OpenAiState::new(tiny(), MODEL_ID).with_max_request_tokens(100));
    let ids: Vec<u32> = (1..=10).collect();
    let completions = |body: Value| post(&base, "/v1/completions", &body);
    // n × (prompt + max_tokens) = 2 × (10 + 50) = 120 tokens; token-id prompts count as they are.
    let (s, b) = completions(json!({"model": MODEL_ID, "prompt": ids, "max_tokens": 50, "n": 2}));
    assert_openai_error(s, &b, 400, Some("n"));
    let message = b["error"]["message"].as_str().unwrap();
    assert!(message.contains("120") && message.contains("100"), "{b}");
    // Every prompt counts: 10 + 10 + 2 × 45 = 110.
    let (s, b) = completions(json!({"model": MODEL_ID, "prompt": [ids, ids], "max_tokens": 45}));
    assert_openai_error(s, &b, 400, Some("max_tokens"));
    // So does the default length: a chat answer may fill what the 128-token context leaves.
    let chat = json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "Hi"}]});
    let (s, b) = post(&base, "/v1/chat/completions", &chat);
    assert_openai_error(s, &b, 400, Some("messages"));
    // Text prompts count their tokens (one a byte here): 11 + 95 fits the context, not the budget.
    let (s, b) = completions(json!({"model": MODEL_ID, "prompt": "Hello there", "max_tokens": 95}));
    assert_openai_error(s, &b, 400, Some("max_tokens"));
    assert!(b["error"]["code"].is_null(), "a budget refusal, not the context's: {b}");
    // At the budget exactly: served.
    let (s, b) = completions(json!({"model": MODEL_ID, "prompt": ids, "max_tokens": 40, "n": 2}));
    assert_eq!(s, 200, "{b}");
}

/// A request that keeps the tiny model busy for seconds: 32 sequences, one per forward pass.
fn long_request(stream: bool) -> Value {
    json!({"model": MODEL_ID, "prompt": "Once upon a time", "max_tokens": 100, "n": 32, "seed": 5, "stream": stream})
}

/// Sends a request on a raw connection and returns the connection without reading the answer, so that the
/// test can hang up.
fn send_raw(base: &str, path: &str, body: &Value) -> TcpStream {
    let addr = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    let body = body.to_string();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    s
}

/// The tiny model with 32 layers instead of 2 and twice the width: its long request lasts seconds, not the half
/// second that the 2-layer model's takes since decoding runs on candle's thread pool.
fn slower_tiny() -> LanguageModel {
    let cfg = lm::ModelConfig {
        num_layers: 32,
        hidden_size: 64,
        intermediate_size: 128,
        head_dim: 16,
        ..lm::testing::tiny_config("llama")
    };
    let tok = lm::tokenizer::Tokenizer::byte_level_for_tests(cfg.vocab_size).unwrap();
    LanguageModel::random(cfg, tok, 1, DType::F32, &candle_core::Device::Cpu).unwrap()
}

#[test]
fn a_client_that_hangs_up_frees_the_model() {
    let base = serve(OpenAiState::new(slower_tiny(), MODEL_ID).with_batch_size(1));
    let small = json!({"model": MODEL_ID, "prompt": "Hi", "max_tokens": 1});
    for stream in [false, true] {
        // How long the long request takes when its client waits for the answer.
        let start = Instant::now();
        let mut resp = agent().post(format!("{base}/v1/completions")).send_json(long_request(stream)).unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        resp.body_mut().read_to_string().unwrap();
        let whole = start.elapsed();
        assert!(whole > Duration::from_secs(1), "the long request takes only {whole:?}: the test would prove nothing");

        // The same request, and the client hangs up while it generates.
        let conn = send_raw(&base, "/v1/completions", &long_request(stream));
        std::thread::sleep(Duration::from_millis(300));
        drop(conn);
        let hung_up = Instant::now();
        // The next request waits for the model; it gets it as soon as the first generation has stopped.
        let (s, b) = post(&base, "/v1/completions", &small);
        assert_eq!(s, 200, "{b}");
        let freed = hung_up.elapsed();
        assert!(
            freed < whole / 4,
            "stream {stream}: the model was free {freed:?} after the client hung up; the whole request takes {whole:?}"
        );
    }
}

#[test]
fn prompts_are_refused_by_size_before_waiting_and_tokenized_in_their_turn() {
    // No request may wait: one that needs the model while it is busy gets a 429 at once.
    let base = serve(OpenAiState::new(tiny(), MODEL_ID).with_batch_size(1).with_max_waiting(0));
    let too_big = [
        // The tiny model's context is 128 tokens: 1024 bytes of text at most, 127 token ids.
        ("/v1/completions", json!({"model": MODEL_ID, "prompt": "x".repeat(1025)}), "prompt"),
        ("/v1/completions", json!({"model": MODEL_ID, "prompt": ["Hi", "x".repeat(1025)]}), "prompt"),
        ("/v1/completions", json!({"model": MODEL_ID, "prompt": vec![1u32; 128]}), "prompt"),
        (
            "/v1/chat/completions",
            json!({"model": MODEL_ID, "messages": [
                {"role": "system", "content": "x".repeat(600)}, {"role": "user", "content": "x".repeat(600)}]}),
            "messages",
        ),
    ];
    let check = |busy: bool| {
        for (path, body, param) in &too_big {
            let (s, b) = post(&base, path, body);
            assert_openai_error(s, &b, 400, Some(param));
            assert_eq!(b["error"]["code"], "context_length_exceeded", "busy {busy}: {b}");
            let bytes = body.to_string().contains("xxx");
            assert!(!bytes || b["error"]["message"].as_str().unwrap().contains("1024 bytes"), "{b}");
        }
    };
    check(false);
    // While the model is busy they are still refused at once, by their size: no turn needed.
    let conn = send_raw(&base, "/v1/completions", &long_request(false));
    std::thread::sleep(Duration::from_millis(300));
    check(true);
    // A prompt whose length only the tokenizer can tell (200 bytes, more than 128 tokens) is tokenized in its
    // turn: it waits for the model like any request, and with no waiting allowed that is a 429.
    let (s, b) = post(&base, "/v1/completions", &json!({"model": MODEL_ID, "prompt": "x".repeat(200)}));
    assert_openai_error(s, &b, 429, None);
    drop(conn);
    // In its turn it is refused for its length.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (s, b) = post(&base, "/v1/completions", &json!({"model": MODEL_ID, "prompt": "x".repeat(200)}));
        if s != 429 || Instant::now() > deadline {
            assert_openai_error(s, &b, 400, Some("prompt"));
            assert_eq!(b["error"]["code"], "context_length_exceeded");
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
