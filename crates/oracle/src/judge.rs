//! An LLM judge as the oracle: the paper's setup, where GPT-4 said which of two completions is better.
//!
//! Muldrew et al. (2024) labelled their IMDB and TL;DR pairs with GPT-4 through the OpenAI chat API, and
//! the point of active preference learning is to spend as few of those paid calls as possible. This module
//! asks any OpenAI-compatible `/chat/completions` endpoint (OpenAI, vLLM, llama.cpp's server, Ollama, ...)
//! the paper's question and turns the reply into an [`Answer`]. Because every call costs money and a run can
//! be killed at any time, it is careful about three things:
//!
//! - **Never pay twice.** Every reply goes into an append-only JSONL cache, fsync'd before the answer is
//!   returned; a resumed run (or a rerun) finds it there and makes no HTTP call. The cache key covers
//!   everything that determines the reply (endpoint, model, both messages as sent, temperature).
//! - **Ask the same question the same way.** The paper shows the two completions in random order to cancel
//!   the judge's position bias. Here the order comes from a hash of the seed and the comparison, not from a
//!   running RNG, so a resumed run sends byte-identical requests and hits the cache.
//! - **Fail loudly, not silently.** Transient faults (connection errors, timeouts, 429, 5xx) are retried
//!   with exponential backoff; faults no retry can fix (a bad key, a wrong model or URL) stop the run at
//!   once with the server's message; a spent budget stops it *before* the call that would exceed it. A
//!   reply without a usable `Preferred: A|B` is not a fault: it is a non-answer (`preferred: None`),
//!   counted in [`JudgeStats`], and the loop acquires another pair.
//!
//! A judge is slow (a second or more per question) but takes many questions at once, so
//! [`Oracle::compare_each`] keeps `concurrency` requests in flight; the cache, the budgets and the
//! statistics sit behind one lock, and the call budget counts requests in flight, so it is never overrun.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::{Answer, Comparison, Oracle};

/// The paper's IMDB system prompt (`IMDB_SYSTEM_PROMPT` in the authors' `direct/openai_ranking.py`).
pub const IMDB_SYSTEM_PROMPT: &str =
    "You are a helpful assistant that evaluates the quality and positive sentiment of movie reviews";

/// The paper's IMDB question (`get_imdb_prompt` in the authors' `direct/openai_ranking.py`, same wording,
/// line breaks and trailing spaces). `{text_a}`/`{text_b}` are the full reviews: prompt + completion. The
/// original wrote `{prompt} {completion}`; our completions keep their own leading space (that is how they
/// were sampled), so the text is joined as-is rather than with an extra space.
pub const IMDB_USER_TEMPLATE: &str = "\
Which of the following movie reviews is better? The best one will be the one with the most positive sentiment, \
which also is grammatically correct, consistent, and avoids repetition.

Review A:
{text_a}

Review B:
{text_b}

FIRST provide a one-sentence comparison of the two reviews, explaining which is better and why. SECOND, on a new \
line, state only \"A\" or \"B\" to indicate your choice. \n\
\n\
You MUST choose A or B for the preferred answer even if neither review is very good.  \n\
\n\
Your response should use the format:

Comparison: <one-sentence comparison and explanation>
Preferred: <\"A\" or \"B\">";

/// The paper's TL;DR system prompt (`TLDR_SYSTEM_PROMPT` in the authors' `direct/openai_ranking.py`).
pub const TLDR_SYSTEM_PROMPT: &str =
    "You are a helpful assistant that evaluates the quality of summaries for internet posts";

/// The paper's TL;DR question (`get_tldr_prompt` in the authors' `direct/openai_ranking.py`, same wording,
/// line breaks and trailing spaces; itself the DPO paper's GPT-4 summary prompt). `{prompt}` is the post,
/// `{a}`/`{b}` the two summaries.
pub const TLDR_USER_TEMPLATE: &str = "\
Which of the following summaries does a better job of summarizing the most important points in the given forum \
post, without including unimportant or irrelevant details?

Post:
{prompt}

Summary A:
{a}

Summary B:
{b}

FIRST provide a one-sentence comparison of the two summaries, explaining which you prefer and why. SECOND, on a \
new line, state only \"A\" or \"B\" to indicate your choice. \n\
\n\
You MUST choose A or B for the preferred answer even if neither summary is very good.

Your response should use the format:

Comparison: <one-sentence comparison and explanation>
Preferred: <\"A\" or \"B\">";

/// GPT-2-family end-of-text marker; sampled completions may end with it, and a judge should not see it.
const END_OF_TEXT: &str = "<|endoftext|>";

/// The public OpenAI host: the one endpoint where a missing key is certainly a mistake.
const OPENAI_HOST: &str = "api.openai.com";

/// Which question the judge is asked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JudgeTask {
    /// Movie-review continuations: more positive *and* well written wins ([`IMDB_USER_TEMPLATE`]).
    #[default]
    Imdb,
    /// Post summaries: the better summary of the important points wins ([`TLDR_USER_TEMPLATE`]).
    Tldr,
    /// Your own `system_prompt` and `user_template` (both required).
    Custom,
}

/// Which request field carries the reply-length cap (see [`JudgeConfig::max_tokens_param`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaxTokensParam {
    #[default]
    MaxTokens,
    MaxCompletionTokens,
}

/// Settings of the LLM judge, e.g. the `[judge]` table of a run config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JudgeConfig {
    /// Root of the OpenAI-compatible API; `/chat/completions` is appended. Default `https://api.openai.com/v1`.
    pub base_url: String,
    /// Model name sent with each request and recorded in the oracle name. Default `gpt-4o-mini`.
    pub model: String,
    /// Name of the environment variable holding the API key (the key itself never goes in a config file).
    /// Unset is fine for local servers that need no key, and then no `Authorization` header is sent; with
    /// the default `base_url` it is an error. Default `OPENAI_API_KEY`.
    pub api_key_env: String,
    /// Which question to ask: `imdb`, `tldr` or `custom`. Default `imdb`.
    pub task: JudgeTask,
    /// Replaces the task's system prompt; required for `custom`. Default none (the task's prompt).
    pub system_prompt: Option<String>,
    /// Replaces the task's user message; required for `custom`. Placeholders: `{prompt}`, `{a}`, `{b}` (the
    /// completions as shown, after the A/B swap), `{text_a}`, `{text_b}` (prompt + completion); it must
    /// mention A and B. Default none (the task's template).
    pub user_template: Option<String>,
    /// Sampling temperature; the paper used 0.05 (near-deterministic, but not greedy). Default `0.05`.
    pub temperature: f64,
    /// Cap on the reply length in tokens; a one-sentence comparison and the verdict fit easily. Default `128`.
    /// Reasoning models (OpenAI's o-series and later) spend hidden reasoning tokens from this cap too: give
    /// them a few thousand.
    pub max_tokens: u32,
    /// The request field that carries `max_tokens`: `max_tokens` (every OpenAI-compatible server) or
    /// `max_completion_tokens` (what OpenAI's reasoning models require; they also accept only temperature 1).
    /// Default `max_tokens`.
    pub max_tokens_param: MaxTokensParam,
    /// Time limit for one request, connect to last byte, in seconds (fractions allowed). Default `60`.
    pub timeout_s: f64,
    /// How many times a failed request (connection error, timeout, 429, 408/409, 5xx) is retried before the
    /// comparison fails; 400/401/403/404 and other client errors are never retried. Default `5`.
    pub retries: u32,
    /// Wait before the first retry in seconds; it doubles after each retry. Default `1.0`.
    pub backoff_s: f64,
    /// Longest wait between retries in seconds, also the cap on a server's `Retry-After`. Default `30.0`.
    pub max_backoff_s: f64,
    /// Most answered HTTP calls this judge may make (cache hits and retried attempts don't count); the call
    /// that would exceed it fails before it is sent. Default none (unlimited).
    pub max_calls: Option<u64>,
    /// Most tokens (the `usage.total_tokens` the server reports, summed) this judge may spend; no call starts
    /// once the sum has reached it. Default none (unlimited).
    pub max_cost_tokens: Option<u64>,
    /// Append-only JSONL file of every reply, so a pair is never paid for twice; the run sets it inside its
    /// directory. Default none (no cache).
    pub cache_file: Option<PathBuf>,
    /// Seed of the A/B order. The order of each comparison is a hash of this seed and its texts, so the
    /// same comparison is always asked the same way. Default `0`.
    pub seed: u64,
    /// Most requests in flight at once when a batch of pairs is asked (a round's labels, an evaluation).
    /// Hosted APIs and vLLM answer many at once; use `1` for a server that answers one request at a time
    /// and slowly, since time spent queued there counts toward `timeout_s`. Default `4`.
    pub concurrency: usize,
}

impl Default for JudgeConfig {
    fn default() -> Self {
        Self {
            base_url: "https://api.openai.com/v1".into(),
            model: "gpt-4o-mini".into(),
            api_key_env: "OPENAI_API_KEY".into(),
            task: JudgeTask::Imdb,
            system_prompt: None,
            user_template: None,
            temperature: 0.05,
            max_tokens: 128,
            max_tokens_param: MaxTokensParam::MaxTokens,
            timeout_s: 60.0,
            retries: 5,
            backoff_s: 1.0,
            max_backoff_s: 30.0,
            max_calls: None,
            max_cost_tokens: None,
            cache_file: None,
            seed: 0,
            concurrency: 4,
        }
    }
}

/// What a judge has done so far (this process only; the cache file remembers earlier runs' replies).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JudgeStats {
    /// Comparisons answered by an HTTP call (what the budget counts).
    pub calls: u64,
    /// Comparisons answered from the cache, with no HTTP call.
    pub cache_hits: u64,
    /// Failed attempts that were retried.
    pub retries: u64,
    /// Answers without a usable `Preferred: A|B` (from calls or the cache).
    pub non_answers: u64,
    /// Tokens spent (sum of `usage.total_tokens` over calls).
    pub tokens: u64,
}

/// The exact messages a comparison is sent as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JudgeQuestion {
    pub system: String,
    pub user: String,
    /// Whether completion 1 is shown as A (and completion 0 as B).
    pub swapped: bool,
}

/// An LLM judge behind an OpenAI-compatible chat-completions API. See the module docs.
pub struct Judge {
    cfg: JudgeConfig,
    /// `base_url` without a trailing slash, so URLs and cache keys don't depend on how it was written.
    base_url: String,
    api_key: Option<String>,
    system_prompt: String,
    user_template: String,
    agent: ureq::Agent,
    /// Everything that changes as questions are answered; one lock, so concurrent requests share it.
    state: Mutex<JudgeState>,
}

struct JudgeState {
    cache: HashMap<String, String>,
    cache_writer: Option<File>,
    stats: JudgeStats,
    /// Calls and tokens paid by earlier processes, as recorded in the cache file: budgets cover the whole
    /// run across resumes, not one process.
    spent_before: JudgeStats,
    /// Calls sent and not yet answered; the call budget counts them, so concurrent requests can't overrun it.
    in_flight: u64,
}

/// One line of the cache file.
#[derive(Serialize, Deserialize)]
struct CacheLine {
    key: String,
    reply: String,
    #[serde(default)]
    usage: Value,
}

/// How one HTTP attempt ended, when it did not end the comparison for good.
enum Attempt {
    Reply { content: String, usage: Value },
    Retry { error: String, retry_after: Option<Duration> },
}

impl Judge {
    /// Checks the config, reads the API key from the environment and loads the cache file (creating it and
    /// its directory if needed). Makes no HTTP call.
    pub fn new(cfg: JudgeConfig) -> Result<Self> {
        let base_url = cfg.base_url.trim().trim_end_matches('/').to_string();
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            bail!("judge base_url {:?} must start with http:// or https://", cfg.base_url);
        }
        if !(cfg.temperature.is_finite() && cfg.temperature >= 0.0) {
            bail!("judge temperature must be a number >= 0, got {}", cfg.temperature);
        }
        if !(cfg.timeout_s.is_finite() && cfg.timeout_s > 0.0) {
            bail!("judge timeout_s must be > 0, got {}", cfg.timeout_s);
        }
        for (name, v) in [("backoff_s", cfg.backoff_s), ("max_backoff_s", cfg.max_backoff_s)] {
            if !(v.is_finite() && v >= 0.0) {
                bail!("judge {name} must be a number >= 0, got {v}");
            }
        }
        if cfg.max_tokens == 0 {
            bail!("judge max_tokens must be > 0");
        }
        if cfg.concurrency == 0 {
            bail!("judge concurrency must be at least 1 (1 = one request at a time)");
        }

        let (system_prompt, user_template) = match cfg.task {
            JudgeTask::Imdb => (IMDB_SYSTEM_PROMPT, IMDB_USER_TEMPLATE),
            JudgeTask::Tldr => (TLDR_SYSTEM_PROMPT, TLDR_USER_TEMPLATE),
            JudgeTask::Custom => {
                if cfg.system_prompt.is_none() || cfg.user_template.is_none() {
                    bail!("judge task \"custom\" needs both system_prompt and user_template");
                }
                ("", "")
            }
        };
        let system_prompt = cfg.system_prompt.clone().unwrap_or_else(|| system_prompt.to_string());
        let user_template = cfg.user_template.clone().unwrap_or_else(|| user_template.to_string());
        // A template that never shows one of the completions would make every label meaningless.
        let shows = |names: [&str; 2]| names.iter().any(|n| user_template.contains(&format!("{{{n}}}")));
        if !shows(["a", "text_a"]) || !shows(["b", "text_b"]) {
            bail!("judge user_template must contain {{a}} or {{text_a}}, and {{b}} or {{text_b}}");
        }

        let api_key = std::env::var(&cfg.api_key_env).ok().filter(|k| !k.trim().is_empty());
        if api_key.is_none() && host_of(&base_url).eq_ignore_ascii_case(OPENAI_HOST) {
            bail!(
                "the judge uses {base_url} but ${} is not set: export your OpenAI API key in it, or set \
                 api_key_env to the variable that holds it",
                cfg.api_key_env
            );
        }

        let agent = ureq::Agent::config_builder()
            // Error statuses come back as responses, so their body (the server's reason) can be reported.
            .http_status_as_error(false)
            // One budget for the whole exchange, including a server that accepts and then stalls.
            .timeout_global(Some(Duration::from_secs_f64(cfg.timeout_s)))
            .user_agent(concat!("activepref-judge/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();

        let (cache, cache_writer, spent_before) = match &cfg.cache_file {
            Some(path) => {
                let (cache, file, before) = open_cache(path)?;
                (cache, Some(file), before)
            }
            None => (HashMap::new(), None, JudgeStats::default()),
        };

        Ok(Self {
            cfg,
            base_url,
            api_key: api_key.map(|k| k.trim().to_string()),
            system_prompt,
            user_template,
            agent,
            state: Mutex::new(JudgeState {
                cache,
                cache_writer,
                stats: JudgeStats::default(),
                spent_before,
                in_flight: 0,
            }),
        })
    }

    /// The shared state. A worker that panicked mid-update can only have left counters behind, so a
    /// poisoned lock is used as it is.
    fn state(&self) -> MutexGuard<'_, JudgeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn config(&self) -> &JudgeConfig {
        &self.cfg
    }

    pub fn stats(&self) -> JudgeStats {
        self.state().stats
    }

    /// Replies held in the cache (from earlier runs and this one).
    pub fn cached_replies(&self) -> usize {
        self.state().cache.len()
    }

    /// Whether `c` is shown with its completions swapped: a fair coin, but a fixed one per (seed, comparison)
    /// so that a resumed run asks exactly the same question and finds its reply in the cache.
    pub fn swapped(&self, c: &Comparison) -> bool {
        let mut h = Sha256::new();
        h.update(b"activepref-judge-swap-v1");
        h.update(self.cfg.seed.to_le_bytes());
        for s in [&c.prompt, &c.completions[0], &c.completions[1]] {
            // Length prefixes keep ("ab", "c") and ("a", "bc") apart.
            h.update((s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
        h.finalize()[0] & 1 == 1
    }

    /// The messages `c` is sent as, A/B swap applied.
    pub fn question(&self, c: &Comparison) -> JudgeQuestion {
        let swapped = self.swapped(c);
        let (a, b) = if swapped { (1, 0) } else { (0, 1) };
        let completion = |i: usize| clean(&c.completions[i]);
        let text = |i: usize| clean(&c.text(i));
        let prompt = clean(&c.prompt);
        let user = fill(&self.user_template, |name| match name {
            "prompt" => Some(prompt.clone()),
            "a" => Some(completion(a)),
            "b" => Some(completion(b)),
            "text_a" => Some(text(a)),
            "text_b" => Some(text(b)),
            _ => None,
        });
        JudgeQuestion { system: self.system_prompt.clone(), user, swapped }
    }

    fn chat_url(&self) -> String {
        format!("{}/chat/completions", self.base_url)
    }

    /// Cache key: everything that determines the reply. Length-prefixed fields so no two inputs collide by
    /// concatenation; the temperature by its bits, so 0.05 and 0.050000001 are different questions.
    fn cache_key(&self, q: &JudgeQuestion) -> String {
        let mut h = Sha256::new();
        h.update(b"activepref-judge-cache-v1");
        for s in [self.base_url.as_str(), &self.cfg.model, &q.system, &q.user] {
            h.update((s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
        h.update(self.cfg.temperature.to_bits().to_le_bytes());
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The reply to `q`: from the cache, or from one HTTP call (with its retries), which is then cached.
    /// Fails before sending if a budget is spent. Takes `&self`, so several can run at once.
    fn reply(&self, q: &JudgeQuestion) -> Result<String> {
        let key = self.cache_key(q);
        {
            let mut st = self.state();
            if let Some(reply) = st.cache.get(&key).cloned() {
                st.stats.cache_hits += 1;
                return Ok(reply);
            }
            st.reserve_call(&self.cfg)?;
        }
        let result = self.ask(q);
        let mut st = self.state();
        st.in_flight -= 1;
        let (reply, usage) = result?;
        st.stats.calls += 1;
        st.stats.tokens += usage.get("total_tokens").and_then(Value::as_u64).unwrap_or(0);
        st.remember(self.cfg.cache_file.as_deref(), key, &reply, usage)?;
        Ok(reply)
    }

    /// Reads `reply` as an answer to `q`, undoing the A/B swap.
    fn answer(&self, q: &JudgeQuestion, reply: String) -> Answer {
        let shown = parse_preference(&reply).map(|l| if l == 'A' { 0 } else { 1 });
        // Undo the swap: shown A is completion 1 when swapped.
        let preferred = shown.map(|i| if q.swapped { 1 - i } else { i });
        if preferred.is_none() {
            self.state().stats.non_answers += 1;
        }
        Answer { preferred, raw: json!({"reply": reply, "swapped": q.swapped}).to_string() }
    }

    /// Sends the question, retrying transient faults with exponential backoff. Returns the reply text and the
    /// server's `usage` object.
    fn ask(&self, q: &JudgeQuestion) -> Result<(String, Value)> {
        let url = self.chat_url();
        let mut body = json!({
            "model": self.cfg.model,
            "messages": [
                {"role": "system", "content": q.system},
                {"role": "user", "content": q.user},
            ],
            "temperature": self.cfg.temperature,
        });
        let cap = match self.cfg.max_tokens_param {
            MaxTokensParam::MaxTokens => "max_tokens",
            MaxTokensParam::MaxCompletionTokens => "max_completion_tokens",
        };
        body[cap] = json!(self.cfg.max_tokens);
        let attempts = self.cfg.retries + 1;
        let mut backoff = self.cfg.backoff_s;
        let mut last_error = String::new();
        for attempt in 1..=attempts {
            match self.attempt(&url, &body)? {
                Attempt::Reply { content, usage } => return Ok((content, usage)),
                Attempt::Retry { error, retry_after } => {
                    last_error = error;
                    if attempt == attempts {
                        break;
                    }
                    // A server that says when to come back knows better than our schedule; both are capped
                    // so a confused header can't park the run for an hour.
                    let wait = retry_after.map_or(backoff, |d| d.as_secs_f64()).min(self.cfg.max_backoff_s);
                    std::thread::sleep(Duration::from_secs_f64(wait));
                    backoff = (backoff * 2.0).min(self.cfg.max_backoff_s);
                    self.state().stats.retries += 1;
                }
            }
        }
        bail!(
            "the judge at {url} did not answer after {attempts} attempts (last error: {last_error}); the run can be \
             resumed with the same command once the judge is reachable"
        )
    }

    /// One HTTP exchange. `Err` for faults no retry can fix; `Attempt::Retry` for transient ones.
    fn attempt(&self, url: &str, body: &Value) -> Result<Attempt> {
        let mut req = self.agent.post(url).header("Content-Type", "application/json");
        if let Some(key) = &self.api_key {
            req = req.header("Authorization", format!("Bearer {key}"));
        }
        let mut resp = match req.send_json(body) {
            Ok(r) => r,
            Err(e) if is_transient(&e) => return Ok(Attempt::Retry { error: self.describe(&e), retry_after: None }),
            Err(e) => bail!("request to the judge at {url} failed: {e}"),
        };
        let status = resp.status().as_u16();
        let retry_after = retry_after(resp.headers());
        let text = match resp.body_mut().read_to_string() {
            Ok(t) => t,
            // The connection died or stalled mid-body: as transient as failing to connect.
            Err(e) if is_transient(&e) => {
                let error = format!("{status}, then reading the body: {}", self.describe(&e));
                return Ok(Attempt::Retry { error, retry_after });
            }
            Err(e) => bail!("reading the judge's reply from {url} failed: {e}"),
        };
        match status {
            200..=299 => {
                let v: Value = serde_json::from_str(&text).with_context(|| {
                    format!("the judge at {url} answered {status} with a body that is not JSON: {}", snippet(&text))
                })?;
                let choice = v.get("choices").and_then(|c| c.get(0)).ok_or_else(|| {
                    anyhow!("the judge at {url} answered {status} without choices: {}", snippet(&text))
                })?;
                // A null or missing content (a refusal, a tool call) is a reply with no verdict: a non-answer,
                // not a fault.
                let content = choice.pointer("/message/content").and_then(Value::as_str).unwrap_or("").to_string();
                Ok(Attempt::Reply { content, usage: v.get("usage").cloned().unwrap_or(Value::Null) })
            }
            408 | 409 | 429 | 500..=599 => {
                Ok(Attempt::Retry { error: format!("{status}: {}", server_message(&text)), retry_after })
            }
            401 | 403 => bail!(
                "{status} from {url}: {} — set ${} to a valid API key (api_key_env in the judge config names the \
                 variable)",
                server_message(&text),
                self.cfg.api_key_env
            ),
            404 => bail!(
                "404 from {url}: {} — check base_url (it should end in /v1 for most servers) and model {:?}",
                server_message(&text),
                self.cfg.model
            ),
            _ => bail!("{status} from {url}: {}", server_message(&text)),
        }
    }

    /// A transport error in words; ureq's own text for a timeout ("timeout: global") doesn't say which limit.
    fn describe(&self, e: &ureq::Error) -> String {
        match e {
            ureq::Error::Timeout(_) => format!("no reply within {} s (timeout_s)", self.cfg.timeout_s),
            e => e.to_string(),
        }
    }
}

impl JudgeState {
    /// Counts one more call in flight, or fails if it would go over a budget, before anything is sent.
    fn reserve_call(&mut self, cfg: &JudgeConfig) -> Result<()> {
        let resume = "raise it in the judge config and rerun the same command to resume (answered pairs are kept)";
        let calls = self.stats.calls + self.spent_before.calls;
        let tokens = self.stats.tokens + self.spent_before.tokens;
        if let Some(max) = cfg.max_calls {
            if calls + self.in_flight >= max {
                bail!("judge budget of {max} calls spent (max_calls, counting the calls in the cache file); {resume}");
            }
        }
        if let Some(max) = cfg.max_cost_tokens {
            if tokens >= max {
                bail!("judge token budget of {max} spent ({tokens} tokens used, max_cost_tokens); {resume}");
            }
        }
        self.in_flight += 1;
        Ok(())
    }

    /// Appends one reply to the cache file and syncs it, so an acknowledged answer survives a crash.
    fn remember(&mut self, path: Option<&Path>, key: String, reply: &str, usage: Value) -> Result<()> {
        if let (Some(file), Some(path)) = (&mut self.cache_writer, path) {
            let mut line = serde_json::to_string(&CacheLine { key: key.clone(), reply: reply.to_string(), usage })?;
            line.push('\n');
            // One write of the whole line: a crash leaves at most a torn last line, which loading drops.
            file.write_all(line.as_bytes())
                .and_then(|_| file.sync_data())
                .with_context(|| format!("writing the judge cache {}", path.display()))?;
        }
        self.cache.insert(key, reply.to_string());
        Ok(())
    }
}

impl Oracle for Judge {
    fn name(&self) -> String {
        format!("judge:{}", self.cfg.model)
    }

    fn compare(&mut self, c: &Comparison) -> Result<Answer> {
        let q = self.question(c);
        let reply = self.reply(&q)?;
        Ok(self.answer(&q, reply))
    }

    /// Up to `concurrency` questions in flight. Workers take the next question as they free up; answers come
    /// back to this thread, which hands them to `done` (the caller's commit) one at a time. After a fault no
    /// new question is sent, the answers to those in flight are still handed over, and the first error is
    /// returned. Identical questions in one batch are asked once.
    fn compare_each(&mut self, cs: &[Comparison], done: &mut dyn FnMut(usize, Answer) -> Result<()>) -> Result<()> {
        // One job per distinct question, remembering every index that asked it.
        let mut jobs: Vec<(JudgeQuestion, Vec<usize>)> = Vec::new();
        let mut by_key: HashMap<String, usize> = HashMap::new();
        for (i, c) in cs.iter().enumerate() {
            let q = self.question(c);
            match by_key.entry(self.cache_key(&q)) {
                std::collections::hash_map::Entry::Occupied(e) => jobs[*e.get()].1.push(i),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(jobs.len());
                    jobs.push((q, vec![i]));
                }
            }
        }
        let workers = self.cfg.concurrency.min(jobs.len());
        let (next, stop) = (AtomicUsize::new(0), AtomicBool::new(false));
        let this = &*self;
        std::thread::scope(|scope| {
            let (tx, rx) = mpsc::channel::<(usize, Result<String>)>();
            for _ in 0..workers {
                let tx = tx.clone();
                let (jobs, next, stop) = (&jobs, &next, &stop);
                scope.spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let j = next.fetch_add(1, Ordering::SeqCst);
                        let Some((q, _)) = jobs.get(j) else { break };
                        let reply = this.reply(q);
                        if reply.is_err() {
                            stop.store(true, Ordering::SeqCst);
                        }
                        if tx.send((j, reply)).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            let mut first_error = None;
            let mut delivering = true;
            for (j, reply) in rx {
                match reply {
                    Ok(reply) if delivering => {
                        let (q, indices) = &jobs[j];
                        let a = this.answer(q, reply);
                        for &i in indices {
                            if let Err(e) = done(i, a.clone()) {
                                // The caller can't take answers any more: send nothing new, hand over nothing.
                                stop.store(true, Ordering::SeqCst);
                                delivering = false;
                                first_error.get_or_insert(e);
                                break;
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            first_error.map_or(Ok(()), Err)
        })
    }
}

/// The judge's verdict in a reply: `Some('A')` or `Some('B')` from the last line starting with `Preferred:`
/// (any case, markdown emphasis or a list marker allowed before it), or `None` when there is no such line
/// or its value is anything but a single A or B (`Both`, `A or B`, `Neither`, ...). Quotes, `*`, `_`,
/// brackets and trailing punctuation around the letter are ignored; if the line has no value, the next
/// non-blank line is taken as the value.
pub fn parse_preference(reply: &str) -> Option<char> {
    let lines: Vec<&str> = reply.lines().collect();
    let mut value = None;
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = after_preferred(line) else { continue };
        let rest = if rest.trim().is_empty() {
            lines[i + 1..].iter().find(|l| !l.trim().is_empty()).copied().unwrap_or("")
        } else {
            rest
        };
        value = Some(rest);
    }
    let v = value?.trim_matches(|c: char| c.is_whitespace() || "\"'`*_.,;:!?()[]<>“”‘’".contains(c));
    match v {
        "A" | "a" => Some('A'),
        "B" | "b" => Some('B'),
        _ => None,
    }
}

/// The text after `Preferred:` if `line` is a verdict line, e.g. `Preferred: A`, `**Preferred:** A`,
/// `- preferred: B`.
fn after_preferred(line: &str) -> Option<&str> {
    let l = line.trim_start_matches(|c: char| c.is_whitespace() || "*_#->`".contains(c));
    let head = l.get(..9)?;
    if !head.eq_ignore_ascii_case("preferred") {
        return None;
    }
    let rest = l[9..].trim_start_matches(['*', '_', ' ']);
    rest.strip_prefix(':')
}

/// Text as the judge should see it: no end-of-text markers, no stray surrounding whitespace.
fn clean(s: &str) -> String {
    s.replace(END_OF_TEXT, "").trim().to_string()
}

/// Fills `{name}` placeholders in one pass, so braces inside the filled-in texts are never expanded.
/// Unknown placeholders are left as written.
fn fill(template: &str, value: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(template.len() + 1024);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let tail = &rest[open..];
        let filled = tail.find('}').and_then(|close| value(&tail[1..close]).map(|v| (v, close)));
        match filled {
            Some((v, close)) => {
                out.push_str(&v);
                rest = &tail[close + 1..];
            }
            None => {
                out.push('{');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The host of an `http(s)://host[:port]/...` URL.
fn host_of(url: &str) -> &str {
    let after_scheme = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = after_scheme.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    host_port.split(':').next().unwrap_or("")
}

/// Transport faults worth another try; malformed URLs and other setup errors are not.
fn is_transient(e: &ureq::Error) -> bool {
    !matches!(
        e,
        ureq::Error::BadUri(_)
            | ureq::Error::Http(_)
            | ureq::Error::InvalidProxyUrl
            | ureq::Error::RequireHttpsOnly(_)
            | ureq::Error::BodyExceedsLimit(_)
            | ureq::Error::Json(_)
    )
}

/// How long the server asks us to wait: OpenAI's `retry-after-ms`, else `Retry-After` in seconds (the
/// HTTP-date form is ignored: then the normal backoff applies).
fn retry_after(headers: &ureq::http::HeaderMap) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<f64>().ok());
    let secs = get("retry-after-ms").map(|ms| ms / 1000.0).or_else(|| get("retry-after"))?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// The reason a server gave: OpenAI's `{"error": {"message": ...}}`, or the start of the body.
fn server_message(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let message = parsed.as_ref().and_then(|v| {
        let e = v.get("error")?;
        e.get("message").and_then(Value::as_str).or_else(|| e.as_str()).map(str::to_string)
    });
    message.unwrap_or_else(|| snippet(body))
}

fn snippet(body: &str) -> String {
    let body = body.trim();
    if body.is_empty() {
        return "(empty body)".into();
    }
    let cut: String = body.chars().take(300).collect();
    if cut.len() < body.len() {
        format!("{cut}…")
    } else {
        cut
    }
}

/// Loads the cache and opens it for appending. A crash mid-write can only leave an unterminated last line;
/// it was never acknowledged, so it is cut off (or, if it is a whole entry that lost its newline, kept and
/// terminated) and appends continue on a clean line. A broken line anywhere else means something else
/// wrote the file, and is an error rather than a silent loss of paid replies.
fn open_cache(path: &Path) -> Result<(HashMap<String, String>, File, JudgeStats)> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .with_context(|| format!("opening the judge cache {}", path.display()))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).with_context(|| format!("reading the judge cache {}", path.display()))?;

    let mut cache = HashMap::new();
    // What earlier processes paid for: every cache entry was one answered call.
    let mut before = JudgeStats::default();
    let mut count = |e: &CacheLine| {
        before.calls += 1;
        before.tokens += e.usage.get("total_tokens").and_then(Value::as_u64).unwrap_or(0);
    };
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    for (n, line) in bytes[..complete].split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let entry: CacheLine = serde_json::from_slice(line).with_context(|| {
            format!("the judge cache {} line {} is not a cache entry; delete that line to go on", path.display(), n + 1)
        })?;
        count(&entry);
        cache.insert(entry.key, entry.reply);
    }
    let torn = &bytes[complete..];
    if !torn.iter().all(u8::is_ascii_whitespace) {
        let fix = match serde_json::from_slice::<CacheLine>(torn) {
            Ok(entry) => {
                count(&entry);
                cache.insert(entry.key, entry.reply);
                file.write_all(b"\n")
            }
            // Appends go to the end regardless of the cursor (O_APPEND), so truncating is enough.
            Err(_) => file.set_len(complete as u64),
        };
        fix.and_then(|_| file.sync_data())
            .with_context(|| format!("repairing the torn last line of the judge cache {}", path.display()))?;
    }
    Ok((cache, file, before))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_is_single_pass() {
        let out = fill("{a} | {b} | {x}", |n| match n {
            "a" => Some("{b}".into()),
            "b" => Some("B".into()),
            _ => None,
        });
        assert_eq!(out, "{b} | B | {x}");
    }

    #[test]
    fn host_of_urls() {
        assert_eq!(host_of("https://api.openai.com/v1"), "api.openai.com");
        assert_eq!(host_of("http://127.0.0.1:8080/v1"), "127.0.0.1");
        assert_eq!(host_of("https://user:pw@API.OPENAI.COM"), "API.OPENAI.COM");
    }

    #[test]
    fn retry_after_headers() {
        let mut h = ureq::http::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", "150".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(150)));
        let mut d = ureq::http::HeaderMap::new();
        d.insert("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
        assert_eq!(retry_after(&d), None);
    }

    #[test]
    fn server_messages() {
        assert_eq!(server_message(r#"{"error":{"message":"bad key","type":"x"}}"#), "bad key");
        assert_eq!(server_message(r#"{"error":"model not loaded"}"#), "model not loaded");
        assert_eq!(server_message("  "), "(empty body)");
        assert_eq!(server_message("Not Found"), "Not Found");
    }

    #[test]
    fn paper_templates_have_their_placeholders() {
        for (t, names) in [(IMDB_USER_TEMPLATE, ["{text_a}", "{text_b}"]), (TLDR_USER_TEMPLATE, ["{a}", "{b}"])] {
            for n in names {
                assert_eq!(t.matches(n).count(), 1, "{n}");
            }
            assert!(t.ends_with("Preferred: <\"A\" or \"B\">"));
            assert!(t.contains("You MUST choose A or B"));
        }
        assert!(IMDB_USER_TEMPLATE.contains("avoids repetition.\n\nReview A:\n{text_a}\n\nReview B:\n{text_b}\n\n"));
        assert!(IMDB_USER_TEMPLATE.contains("to indicate your choice. \n\nYou MUST"));
        assert!(IMDB_USER_TEMPLATE.contains("very good.  \n\nYour response"));
        assert!(TLDR_USER_TEMPLATE.contains("Post:\n{prompt}\n\nSummary A:\n{a}\n\nSummary B:\n{b}\n\n"));
    }
}
