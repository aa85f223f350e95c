//! The LLM judge against a real HTTP server on 127.0.0.1, scripted per test: what the judge sends, how it
//! reads replies and undoes its A/B swap, and how it behaves when the server fails, stalls, refuses the key,
//! or when the budget or the cache says no call is needed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oracle::judge::{
    parse_preference, Judge, JudgeConfig, JudgeStats, JudgeTask, MaxTokensParam, IMDB_SYSTEM_PROMPT, TLDR_SYSTEM_PROMPT,
};
use oracle::{Answer, Comparison, Oracle};
use serde_json::{json, Value};

/// One request as the server saw it.
#[derive(Clone, Debug)]
struct Request {
    request_line: String,
    /// Header names lower-cased.
    headers: Vec<(String, String)>,
    body: String,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("request body is JSON")
    }

    fn user_message(&self) -> String {
        self.json()["messages"][1]["content"].as_str().unwrap().to_string()
    }
}

/// What the server does with a request.
enum Reply {
    /// 200 with an OpenAI-style chat completion whose message content is this.
    Content(String),
    /// Any status with this body and extra headers.
    Status(u16, String, Vec<(&'static str, String)>),
    /// Say nothing for this long, then hang up.
    Stall(Duration),
}

fn content(s: &str) -> Reply {
    Reply::Content(s.to_string())
}

struct Server {
    base_url: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Server {
    /// Serves on 127.0.0.1:0; `script` gets each request and its 0-based index.
    fn start(script: impl Fn(&Request, usize) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (log, script) = (requests.clone(), Arc::new(script));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (log, script) = (log.clone(), script.clone());
                // A thread per connection, so a stalled reply doesn't hold up the retry that follows it.
                std::thread::spawn(move || handle(stream, &log, &*script));
            }
        });
        Self { base_url, requests }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

fn handle(stream: TcpStream, log: &Mutex<Vec<Request>>, script: &(dyn Fn(&Request, usize) -> Reply + Send + Sync)) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap();
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let len: usize = headers.iter().find(|(n, _)| n == "content-length").map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0; len];
    reader.read_exact(&mut body).unwrap();
    let req =
        Request { request_line: request_line.trim_end().to_string(), headers, body: String::from_utf8(body).unwrap() };
    let index = {
        let mut log = log.lock().unwrap();
        log.push(req.clone());
        log.len() - 1
    };
    let (status, body, extra) = match script(&req, index) {
        Reply::Content(text) => {
            let body = json!({
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42},
            });
            (200, body.to_string(), vec![])
        }
        Reply::Status(status, body, extra) => (status, body, extra),
        Reply::Stall(d) => {
            std::thread::sleep(d);
            return;
        }
    };
    let mut out = format!(
        "HTTP/1.1 {status} Whatever\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in extra {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&body);
    // The client may have given up (timeout tests); that is not the server's problem.
    let mut stream = stream;
    let _ = stream.write_all(out.as_bytes());
    let _ = stream.flush();
}

/// A judge on `server` with fast retries and no key.
fn config(base_url: &str) -> JudgeConfig {
    JudgeConfig {
        base_url: base_url.to_string(),
        model: "test-judge".into(),
        api_key_env: "ACTIVEPREF_TEST_KEY_UNSET".into(),
        retries: 2,
        backoff_s: 0.01,
        timeout_s: 5.0,
        ..JudgeConfig::default()
    }
}

/// Splits the IMDB question into the two reviews as shown.
fn shown_reviews(user: &str) -> (String, String) {
    let a = user.split("Review A:\n").nth(1).unwrap().split("\n\nReview B:\n").next().unwrap();
    let b = user.split("Review B:\n").nth(1).unwrap().split("\n\nFIRST").next().unwrap();
    (a.to_string(), b.to_string())
}

/// A judge that likes reviews with the word "great" in them.
fn great_judge(req: &Request, _: usize) -> Reply {
    let (a, _) = shown_reviews(&req.user_message());
    let pick = if a.contains("great") { "A" } else { "B" };
    content(&format!("Comparison: Review {pick} is more positive.\nPreferred: {pick}"))
}

fn swapped(raw: &str) -> bool {
    serde_json::from_str::<Value>(raw).unwrap()["swapped"].as_bool().unwrap()
}

fn pair(i: usize) -> Comparison {
    Comparison::new(format!("Movie {i} was"), format!(" a great film, take {i}."), format!(" a dull film, take {i}."))
}

#[test]
fn swaps_are_undone_and_both_orders_occur() {
    let server = Server::start(great_judge);
    let mut judge = Judge::new(config(&server.base_url)).unwrap();
    let mut seen = [false; 2];
    for i in 0..24 {
        let mut c = pair(i);
        // Put the great completion second half of the time.
        let great = i % 2;
        if great == 1 {
            c.completions.swap(0, 1);
        }
        let answer = judge.compare(&c).unwrap();
        assert_eq!(answer.preferred, Some(great), "pair {i}: {}", answer.raw);
        seen[swapped(&answer.raw) as usize] = true;
        let raw: Value = serde_json::from_str(&answer.raw).unwrap();
        assert!(raw["reply"].as_str().unwrap().starts_with("Comparison: "));
    }
    assert_eq!(seen, [true, true], "24 comparisons should show both A/B orders");
    assert_eq!(judge.stats(), JudgeStats { calls: 24, cache_hits: 0, retries: 0, non_answers: 0, tokens: 24 * 42 });
    assert_eq!(judge.name(), "judge:test-judge");
}

#[test]
fn swap_is_a_function_of_seed_and_comparison() {
    let cfg = |seed| JudgeConfig { seed, ..config("http://127.0.0.1:9/v1") };
    let (j0, j0_again, j1) = (Judge::new(cfg(0)).unwrap(), Judge::new(cfg(0)).unwrap(), Judge::new(cfg(1)).unwrap());
    let pairs: Vec<Comparison> = (0..32).map(pair).collect();
    let s0: Vec<bool> = pairs.iter().map(|c| j0.swapped(c)).collect();
    assert_eq!(s0, pairs.iter().map(|c| j0_again.swapped(c)).collect::<Vec<_>>());
    assert_ne!(s0, pairs.iter().map(|c| j1.swapped(c)).collect::<Vec<_>>());
    let swaps = s0.iter().filter(|&&s| s).count();
    assert!((6..=26).contains(&swaps), "{swaps} of 32 swapped: not a fair coin");
    // The question itself is identical too, so a resumed run finds it in the cache.
    assert_eq!(j0.question(&pairs[3]), j0_again.question(&pairs[3]));
}

#[test]
fn garbage_replies_are_counted_non_answers() {
    let replies = ["I liked both of them.", "Comparison: both fine.\nPreferred: Both", "", "Preferred: A or B"];
    let server = Server::start(move |_, i| content(replies[i]));
    let mut judge = Judge::new(config(&server.base_url)).unwrap();
    for (i, reply) in replies.iter().enumerate() {
        let answer = judge.compare(&pair(i)).unwrap();
        assert_eq!(answer.preferred, None, "{reply:?}");
        let raw: Value = serde_json::from_str(&answer.raw).unwrap();
        assert_eq!(raw["reply"], *reply);
    }
    let stats = judge.stats();
    assert_eq!((stats.calls, stats.non_answers, stats.retries), (4, 4, 0));
}

#[test]
fn server_errors_are_retried() {
    let server = Server::start(|req, i| {
        if i < 2 {
            Reply::Status(500, r#"{"error":{"message":"overloaded"}}"#.into(), vec![])
        } else {
            great_judge(req, i)
        }
    });
    let mut judge = Judge::new(config(&server.base_url)).unwrap();
    let answer = judge.compare(&pair(0)).unwrap();
    assert_eq!(answer.preferred, Some(0));
    assert_eq!(server.count(), 3);
    let stats = judge.stats();
    assert_eq!((stats.calls, stats.retries), (1, 2));
}

#[test]
fn rate_limits_honour_retry_after() {
    let server = Server::start(|req, i| {
        if i == 0 {
            Reply::Status(429, r#"{"error":{"message":"slow down"}}"#.into(), vec![("retry-after-ms", "250".into())])
        } else {
            great_judge(req, i)
        }
    });
    let mut judge = Judge::new(config(&server.base_url)).unwrap();
    let start = Instant::now();
    assert_eq!(judge.compare(&pair(0)).unwrap().preferred, Some(0));
    // The backoff alone would have been 0.01 s.
    assert!(start.elapsed() >= Duration::from_millis(250), "{:?}", start.elapsed());
    assert_eq!(judge.stats().retries, 1);
}

#[test]
fn unreachable_server_fails_after_retries_naming_the_url() {
    // A port that was free a moment ago: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base_url = format!("http://127.0.0.1:{port}/v1");
    let mut judge = Judge::new(config(&base_url)).unwrap();
    let err = judge.compare(&pair(0)).unwrap_err().to_string();
    assert!(err.contains(&format!("{base_url}/chat/completions")), "{err}");
    assert!(err.contains("3 attempts"), "{err}");
    assert!(err.contains("resume"), "{err}");
    assert_eq!(judge.stats().retries, 2);
    assert_eq!(judge.stats().calls, 0);
}

#[test]
fn bad_key_fails_at_once() {
    let server = Server::start(|_, _| {
        Reply::Status(
            401,
            r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error"}}"#.into(),
            vec![],
        )
    });
    let mut judge = Judge::new(config(&server.base_url)).unwrap();
    let err = judge.compare(&pair(0)).unwrap_err().to_string();
    for part in ["401", &server.base_url, "Incorrect API key provided", "$ACTIVEPREF_TEST_KEY_UNSET"] {
        assert!(err.contains(part), "{part:?} missing from {err}");
    }
    assert_eq!(server.count(), 1);
    assert_eq!(judge.stats().retries, 0);
}

#[test]
fn other_client_errors_are_not_retried() {
    let server = Server::start(|_, i| match i {
        0 => Reply::Status(404, r#"{"error":{"message":"The model `x` does not exist"}}"#.into(), vec![]),
        1 => Reply::Status(400, "bad request".into(), vec![]),
        _ => Reply::Content("not reached".into()),
    });
    let mut judge = Judge::new(config(&server.base_url)).unwrap();
    let err = judge.compare(&pair(0)).unwrap_err().to_string();
    assert!(err.contains("404") && err.contains("does not exist") && err.contains("test-judge"), "{err}");
    let err = judge.compare(&pair(1)).unwrap_err().to_string();
    assert!(err.contains("400") && err.contains("bad request"), "{err}");
    assert_eq!(server.count(), 2);
    assert_eq!(judge.stats().retries, 0);
}

#[test]
fn malformed_success_is_an_error() {
    let server = Server::start(|_, _| Reply::Status(200, "<html>proxy login</html>".into(), vec![]));
    let mut judge = Judge::new(config(&server.base_url)).unwrap();
    let err = judge.compare(&pair(0)).unwrap_err().to_string();
    assert!(err.contains("not JSON") && err.contains("proxy login"), "{err}");
}

#[test]
fn stalled_server_times_out_and_is_retried() {
    let server = Server::start(|_, _| Reply::Stall(Duration::from_secs(2)));
    let cfg = JudgeConfig { timeout_s: 0.2, retries: 1, ..config(&server.base_url) };
    let mut judge = Judge::new(cfg).unwrap();
    let start = Instant::now();
    let err = judge.compare(&pair(0)).unwrap_err().to_string();
    assert!(start.elapsed() < Duration::from_millis(1500), "{:?}", start.elapsed());
    assert!(err.contains("2 attempts") && err.contains("no reply within 0.2 s"), "{err}");
    assert_eq!(judge.stats().retries, 1);
    assert_eq!(server.count(), 2);
}

#[test]
fn cache_means_no_second_call_even_across_judges() {
    let dir = tempfile::tempdir().unwrap();
    let cache: PathBuf = dir.path().join("run/judge-cache.jsonl");
    let server = Server::start(great_judge);
    let cfg = JudgeConfig { cache_file: Some(cache.clone()), ..config(&server.base_url) };

    let first = Judge::new(cfg.clone()).unwrap().compare(&pair(0)).unwrap();
    assert_eq!(server.count(), 1);

    let mut judge = Judge::new(cfg.clone()).unwrap();
    assert_eq!(judge.cached_replies(), 1);
    assert_eq!(judge.compare(&pair(0)).unwrap(), first);
    assert_eq!(server.count(), 1, "a cached comparison reached the server");
    assert_eq!(judge.stats(), JudgeStats { calls: 0, cache_hits: 1, retries: 0, non_answers: 0, tokens: 0 });

    // A crash mid-append leaves a torn last line: it is dropped, and appends go on cleanly after it.
    let mut f = std::fs::OpenOptions::new().append(true).open(&cache).unwrap();
    f.write_all(br#"{"key":"0123","reply":"Compar"#).unwrap();
    drop(f);
    let mut judge = Judge::new(cfg.clone()).unwrap();
    assert_eq!(judge.compare(&pair(1)).unwrap().preferred, Some(0));
    assert_eq!(server.count(), 2);
    let text = std::fs::read_to_string(&cache).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["usage"]["total_tokens"], 42);
        assert_eq!(v["key"].as_str().unwrap().len(), 64);
    }
    let mut judge = Judge::new(cfg.clone()).unwrap();
    assert_eq!(judge.cached_replies(), 2);
    judge.compare(&pair(0)).unwrap();
    judge.compare(&pair(1)).unwrap();
    assert_eq!(server.count(), 2);

    // Another model is another question.
    let mut other = Judge::new(JudgeConfig { model: "other".into(), ..cfg }).unwrap();
    other.compare(&pair(0)).unwrap();
    assert_eq!(server.count(), 3);
}

#[test]
fn corrupt_cache_line_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache.jsonl");
    std::fs::write(&cache, "not json\n{\"key\":\"k\",\"reply\":\"r\"}\n").unwrap();
    let cfg = JudgeConfig { cache_file: Some(cache), ..config("http://127.0.0.1:9/v1") };
    let err = Judge::new(cfg).err().unwrap().to_string();
    assert!(err.contains("line 1"), "{err}");
}

#[test]
fn call_budget_stops_before_the_call() {
    let server = Server::start(great_judge);
    let mut judge = Judge::new(JudgeConfig { max_calls: Some(2), ..config(&server.base_url) }).unwrap();
    judge.compare(&pair(0)).unwrap();
    judge.compare(&pair(1)).unwrap();
    let err = judge.compare(&pair(2)).unwrap_err().to_string();
    assert!(err.contains("judge budget of 2 calls spent"), "{err}");
    assert_eq!(server.count(), 2);
    // Answers already paid for (here: held in memory, no cache file) still come back.
    assert_eq!(judge.compare(&pair(0)).unwrap().preferred, Some(0));
    assert_eq!(server.count(), 2);
}

#[test]
fn the_call_budget_counts_calls_paid_by_earlier_processes() {
    let server = Server::start(great_judge);
    let dir = tempfile::tempdir().unwrap();
    let cfg = JudgeConfig {
        max_calls: Some(3),
        cache_file: Some(dir.path().join("cache.jsonl")),
        ..config(&server.base_url)
    };
    let mut first = Judge::new(cfg.clone()).unwrap();
    first.compare(&pair(0)).unwrap();
    first.compare(&pair(1)).unwrap();
    drop(first);
    // A resumed run: two of its three calls are already spent.
    let mut second = Judge::new(cfg).unwrap();
    assert_eq!(second.compare(&pair(0)).unwrap().preferred, Some(0), "cached, free");
    second.compare(&pair(2)).unwrap();
    let err = second.compare(&pair(3)).unwrap_err().to_string();
    assert!(err.contains("judge budget of 3 calls spent"), "{err}");
    assert_eq!(server.count(), 3);
}

#[test]
fn token_budget_stops_before_the_call() {
    let server = Server::start(great_judge);
    let mut judge = Judge::new(JudgeConfig { max_cost_tokens: Some(50), ..config(&server.base_url) }).unwrap();
    judge.compare(&pair(0)).unwrap();
    judge.compare(&pair(1)).unwrap(); // 42 < 50 tokens spent: allowed, and now 84
    let err = judge.compare(&pair(2)).unwrap_err().to_string();
    assert!(err.contains("token budget of 50"), "{err}");
    assert_eq!(server.count(), 2);
    assert_eq!(judge.stats().tokens, 84);
}

#[test]
fn api_key_goes_in_the_authorization_header() {
    std::env::set_var("ACTIVEPREF_TEST_KEY_I", "sk-test-123");
    let server = Server::start(great_judge);
    let mut judge =
        Judge::new(JudgeConfig { api_key_env: "ACTIVEPREF_TEST_KEY_I".into(), ..config(&server.base_url) }).unwrap();
    judge.compare(&pair(0)).unwrap();
    assert_eq!(server.requests()[0].header("authorization"), Some("Bearer sk-test-123"));
}

#[test]
fn openai_without_a_key_fails_at_construction() {
    let cfg = JudgeConfig { api_key_env: "ACTIVEPREF_TEST_KEY_NEVER_SET".into(), ..JudgeConfig::default() };
    let err = Judge::new(cfg).err().unwrap().to_string();
    assert!(err.contains("$ACTIVEPREF_TEST_KEY_NEVER_SET") && err.contains("api.openai.com"), "{err}");
    // A local server needs no key.
    assert!(Judge::new(config("http://localhost:8080/v1")).is_ok());
}

#[test]
fn request_carries_model_temperature_and_the_paper_prompt() {
    let server = Server::start(great_judge);
    let mut judge = Judge::new(config(&format!("{}/", server.base_url))).unwrap();
    let c = Comparison::new("I watched this film and", " it was great fun.<|endoftext|>", " it was {b} boring.");
    judge.compare(&c).unwrap();
    let req = &server.requests()[0];
    assert_eq!(req.request_line, "POST /v1/chat/completions HTTP/1.1");
    assert!(req.header("content-type").unwrap().starts_with("application/json"));
    assert_eq!(req.header("authorization"), None, "no key set, so no header");
    let body = req.json();
    assert_eq!(body["model"], "test-judge");
    assert_eq!(body["temperature"], 0.05);
    assert_eq!(body["max_tokens"], 128);
    assert_eq!(body["messages"][0], json!({"role": "system", "content": IMDB_SYSTEM_PROMPT}));
    assert_eq!(body["messages"][1]["role"], "user");
    let user = req.user_message();
    let head = "Which of the following movie reviews is better? The best one will be the one with the most positive \
                sentiment, which also is grammatically correct, consistent, and avoids repetition.\n\nReview A:\n";
    assert!(user.starts_with(head), "{user}");
    assert!(user.ends_with("Comparison: <one-sentence comparison and explanation>\nPreferred: <\"A\" or \"B\">"));
    assert!(user.contains("You MUST choose A or B"));
    let (a, b) = shown_reviews(&user);
    let (great, boring) = ("I watched this film and it was great fun.", "I watched this film and it was {b} boring.");
    let expected = if judge.swapped(&c) { (boring, great) } else { (great, boring) };
    assert_eq!((a.as_str(), b.as_str()), expected);
    assert!(!user.contains("<|endoftext|>"));
    assert!(body.get("max_completion_tokens").is_none());

    // Reasoning models take the cap as `max_completion_tokens` (and refuse `max_tokens`).
    let cfg = JudgeConfig {
        max_tokens_param: MaxTokensParam::MaxCompletionTokens,
        max_tokens: 2000,
        temperature: 1.0,
        ..config(&server.base_url)
    };
    Judge::new(cfg).unwrap().compare(&c).unwrap();
    let body = server.requests()[1].json();
    assert_eq!((body["max_completion_tokens"].clone(), body["temperature"].clone()), (json!(2000), json!(1.0)));
    assert!(body.get("max_tokens").is_none(), "{body}");
}

#[test]
fn tldr_and_custom_tasks() {
    let server = Server::start(|_, _| content("Preferred: B"));
    let c = Comparison::new("SUBREDDIT: r/test\nPOST: my long post\nTL;DR:", " short one<|endoftext|>", " other one");
    let mut judge = Judge::new(JudgeConfig { task: JudgeTask::Tldr, ..config(&server.base_url) }).unwrap();
    let answer = judge.compare(&c).unwrap();
    let req = &server.requests()[0];
    assert_eq!(req.json()["messages"][0]["content"], TLDR_SYSTEM_PROMPT);
    let user = req.user_message();
    let head = "Which of the following summaries does a better job of summarizing the most important points in the \
                given forum post, without including unimportant or irrelevant details?\n\nPost:\nSUBREDDIT: r/test\n\
                POST: my long post\nTL;DR:\n\nSummary A:\n";
    assert!(user.starts_with(head), "{user}");
    let (first, second) = if judge.swapped(&c) { ("other one", "short one") } else { ("short one", "other one") };
    assert!(user.contains(&format!("Summary A:\n{first}\n\nSummary B:\n{second}\n\n")), "{user}");
    // "B" is whatever was shown second.
    assert_eq!(answer.preferred, Some(if judge.swapped(&c) { 0 } else { 1 }));

    let custom = JudgeConfig { task: JudgeTask::Custom, ..config(&server.base_url) };
    assert!(Judge::new(custom.clone()).is_err(), "custom needs its prompts");
    let bad = JudgeConfig { system_prompt: Some("s".into()), user_template: Some("only {a}".into()), ..custom.clone() };
    assert!(Judge::new(bad).is_err(), "a template must show both completions");
    let cfg = JudgeConfig {
        system_prompt: Some("Be fair.".into()),
        user_template: Some("{text_a} | {b} | {x}".into()),
        ..custom
    };
    let mut judge = Judge::new(cfg).unwrap();
    judge.compare(&c).unwrap();
    let req = &server.requests()[1];
    assert_eq!(req.json()["messages"][0]["content"], "Be fair.");
    let (a, b) = if judge.swapped(&c) { (1, 0) } else { (0, 1) };
    let text_a = c.text(a).replace("<|endoftext|>", "");
    let b = c.completions[b].replace("<|endoftext|>", "");
    assert_eq!(req.user_message(), format!("{} | {} | {{x}}", text_a.trim(), b.trim()));
}

#[test]
fn config_defaults_and_unknown_fields() {
    let cfg: JudgeConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(cfg, JudgeConfig::default());
    assert_eq!(cfg.base_url, "https://api.openai.com/v1");
    assert_eq!(cfg.model, "gpt-4o-mini");
    assert_eq!(cfg.api_key_env, "OPENAI_API_KEY");
    assert_eq!(cfg.task, JudgeTask::Imdb);
    assert_eq!((cfg.temperature, cfg.max_tokens, cfg.timeout_s, cfg.retries, cfg.backoff_s), (0.05, 128, 60.0, 5, 1.0));
    assert_eq!((cfg.max_calls, cfg.max_cost_tokens, cfg.cache_file.clone()), (None, None, None));
    assert_eq!(cfg.concurrency, 4);
    let err = Judge::new(JudgeConfig { concurrency: 0, ..config("http://127.0.0.1:9/v1") }).err().unwrap();
    assert!(err.to_string().contains("concurrency must be at least 1"), "{err}");
    let cfg: JudgeConfig =
        serde_json::from_str(r#"{"task": "tldr", "max_calls": 10, "max_tokens_param": "max_completion_tokens"}"#)
            .unwrap();
    assert_eq!((cfg.task, cfg.max_calls), (JudgeTask::Tldr, Some(10)));
    assert_eq!(cfg.max_tokens_param, MaxTokensParam::MaxCompletionTokens);
    assert!(serde_json::from_str::<JudgeConfig>(r#"{"max_tokens_param": "max_output_tokens"}"#).is_err());
    assert!(serde_json::from_str::<JudgeConfig>(r#"{"modle": "gpt-4"}"#).is_err());
    assert!(serde_json::from_str::<JudgeConfig>(r#"{"task": "poetry"}"#).is_err());
}

#[test]
fn parse_preference_on_hand_made_replies() {
    let cases: &[(&str, Option<char>)] = &[
        ("Comparison: Review A is warmer and reads well.\nPreferred: A", Some('A')),
        ("Comparison: B is more positive.\nPreferred: B\n", Some('B')),
        ("Preferred: **B**", Some('B')),
        ("**Preferred:** A", Some('A')),
        ("**Preferred**: B", Some('B')),
        ("preferred: 'A'", Some('A')),
        ("PREFERRED: \"B\".", Some('B')),
        ("Preferred: “A”", Some('A')),
        ("Preferred: (B)", Some('B')),
        ("  - Preferred: a", Some('A')),
        ("Preferred: `B`!", Some('B')),
        ("Comparison: x\nPreferred:\n\nB", Some('B')),
        ("Preferred: A\nWait, on reflection:\nPreferred: B", Some('B')),
        ("Preferred: B\nPreferred: Both", None),
        ("Preferred: Both", None),
        ("Preferred: A or B", None),
        ("Preferred: <\"A\" or \"B\">", None),
        ("Preferred: Neither", None),
        ("Preferred: Review A", None),
        ("Preferred: AB", None),
        ("Preferred:", None),
        ("Preferred: C", None),
        ("Comparison: A is better.", None),
        ("I prefer A.", None),
        ("The preferred one is A", None),
        ("", None),
    ];
    for (reply, expected) in cases {
        assert_eq!(parse_preference(reply), *expected, "{reply:?}");
    }
}

/// A `great_judge` that takes `delay` per reply and records the most requests it had in hand at once.
fn slow_judge_server(delay: Duration) -> (Server, Arc<Mutex<(usize, usize)>>) {
    let busy: Arc<Mutex<(usize, usize)>> = Arc::default(); // (now, most)
    let b = busy.clone();
    let server = Server::start(move |req, i| {
        {
            let mut b = b.lock().unwrap();
            b.0 += 1;
            b.1 = b.1.max(b.0);
        }
        std::thread::sleep(delay);
        b.lock().unwrap().0 -= 1;
        great_judge(req, i)
    });
    (server, busy)
}

/// Runs `compare_each`, returning the answers by index (None where none was handed over) and the result.
fn compare_each(judge: &mut Judge, cs: &[Comparison]) -> (Vec<Option<Answer>>, anyhow::Result<()>) {
    let mut got = vec![None; cs.len()];
    let r = judge.compare_each(cs, &mut |i, a| {
        assert!(got[i].is_none(), "answer {i} handed over twice");
        got[i] = Some(a);
        Ok(())
    });
    (got, r)
}

#[test]
fn a_batch_keeps_concurrency_requests_in_flight_and_gets_the_sequential_answers() {
    let (server, busy) = slow_judge_server(Duration::from_millis(100));
    let pairs: Vec<Comparison> = (0..12).map(pair).collect();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache.jsonl");
    let cfg = JudgeConfig { concurrency: 4, cache_file: Some(cache.clone()), ..config(&server.base_url) };
    let mut judge = Judge::new(cfg).unwrap();
    let (got, r) = compare_each(&mut judge, &pairs);
    r.unwrap();
    let most = busy.lock().unwrap().1;
    assert!((2..=4).contains(&most), "{most} requests in flight at once, want 2..=4");
    assert_eq!(server.count(), 12);
    assert_eq!(judge.stats().calls, 12);
    // Every reply is in the cache, one line each, and the answers equal one-at-a-time answers.
    assert_eq!(std::fs::read_to_string(&cache).unwrap().lines().count(), 12);
    let mut one = Judge::new(JudgeConfig { concurrency: 1, ..config(&server.base_url) }).unwrap();
    for (c, a) in pairs.iter().zip(&got) {
        let a = a.as_ref().expect("every pair answered");
        assert_eq!(a.preferred, Some(0));
        assert_eq!(*a, one.compare(c).unwrap());
    }
    // The same question twice in one batch is asked once and answered twice.
    let (server, _) = slow_judge_server(Duration::from_millis(1));
    let mut judge = Judge::new(JudgeConfig { concurrency: 4, ..config(&server.base_url) }).unwrap();
    let (got, r) = compare_each(&mut judge, &[pair(1), pair(2), pair(1)]);
    r.unwrap();
    assert_eq!(server.count(), 2);
    assert_eq!(got[0], got[2]);
    assert!(got.iter().all(Option::is_some));
}

#[test]
fn concurrent_requests_never_overrun_the_call_budget() {
    let (server, _) = slow_judge_server(Duration::from_millis(30));
    let cfg = JudgeConfig { concurrency: 4, max_calls: Some(5), ..config(&server.base_url) };
    let mut judge = Judge::new(cfg).unwrap();
    let pairs: Vec<Comparison> = (0..10).map(pair).collect();
    let (got, r) = compare_each(&mut judge, &pairs);
    let err = r.unwrap_err().to_string();
    assert!(err.contains("judge budget of 5 calls spent"), "{err}");
    assert_eq!(server.count(), 5);
    // Every paid answer was handed over before the error.
    assert_eq!(got.iter().filter(|a| a.is_some()).count(), 5);
}

#[test]
fn a_fault_or_a_failing_commit_stops_sending_new_questions() {
    // The key is refused from the third request on: answers in flight still arrive, nothing new is sent.
    let server = Server::start(|req, i| {
        std::thread::sleep(Duration::from_millis(20));
        if i >= 2 {
            Reply::Status(401, r#"{"error":{"message":"bad key"}}"#.into(), vec![])
        } else {
            great_judge(req, i)
        }
    });
    let mut judge = Judge::new(JudgeConfig { concurrency: 2, ..config(&server.base_url) }).unwrap();
    let pairs: Vec<Comparison> = (0..10).map(pair).collect();
    let (got, r) = compare_each(&mut judge, &pairs);
    let err = r.unwrap_err().to_string();
    assert!(err.contains("401"), "{err}");
    assert_eq!(got.iter().filter(|a| a.is_some()).count(), 2);
    assert!(server.count() <= 4, "{} requests after a fatal error", server.count());

    // The caller can't commit: the error is returned and no more questions go out than were in flight.
    let (server, _) = slow_judge_server(Duration::from_millis(20));
    let mut judge = Judge::new(JudgeConfig { concurrency: 3, ..config(&server.base_url) }).unwrap();
    let mut handed = 0;
    let r = judge.compare_each(&pairs, &mut |_, _| {
        handed += 1;
        anyhow::bail!("disk full")
    });
    assert_eq!(r.unwrap_err().to_string(), "disk full");
    assert_eq!(handed, 1);
    assert!(server.count() <= 6, "{} requests after the commit failed", server.count());
}
