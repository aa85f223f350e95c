//! The judge's settings (the `[judge]` table of a run config), their defaults, and the checks that need
//! nothing but the settings themselves.
//!
//! Why a file of its own: this is the judge's public face in config files, documented field by field; the
//! code that acts on the settings lives with the job each one steers.

use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::JudgeTask;

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

impl JudgeConfig {
    /// The timeout and retry schedule, as the shared client takes them.
    pub fn retries(&self) -> client::Retries {
        client::Retries {
            timeout_s: self.timeout_s,
            retries: self.retries,
            backoff_s: self.backoff_s,
            max_backoff_s: self.max_backoff_s,
        }
    }

    /// Fails on a URL that is not http(s) and on numbers out of range; returns `base_url` without a trailing
    /// slash.
    pub(super) fn checked_base_url(&self) -> Result<String> {
        let base_url = self.base_url.trim().trim_end_matches('/').to_string();
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            bail!("judge base_url {:?} must start with http:// or https://", self.base_url);
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            bail!("judge temperature must be a number >= 0, got {}", self.temperature);
        }
        if !(self.timeout_s.is_finite() && self.timeout_s > 0.0) {
            bail!("judge timeout_s must be > 0, got {}", self.timeout_s);
        }
        for (name, v) in [("backoff_s", self.backoff_s), ("max_backoff_s", self.max_backoff_s)] {
            if !(v.is_finite() && v >= 0.0) {
                bail!("judge {name} must be a number >= 0, got {v}");
            }
        }
        if self.max_tokens == 0 {
            bail!("judge max_tokens must be > 0");
        }
        if self.concurrency == 0 {
            bail!("judge concurrency must be at least 1 (1 = one request at a time)");
        }
        Ok(base_url)
    }
}
