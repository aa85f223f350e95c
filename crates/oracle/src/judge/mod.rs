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

mod cache;
mod config;
mod http;
mod parse;
mod prompts;

pub use config::{JudgeConfig, MaxTokensParam};
pub use parse::parse_preference;
pub use prompts::{JudgeTask, IMDB_SYSTEM_PROMPT, IMDB_USER_TEMPLATE, TLDR_SYSTEM_PROMPT, TLDR_USER_TEMPLATE};

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex, MutexGuard};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::{Answer, Comparison, Oracle};

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
    system_prompt: String,
    user_template: String,
    /// The server: requests and their retries.
    client: client::Client,
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

impl Judge {
    /// Checks the config, reads the API key from the environment and loads the cache file (creating it and
    /// its directory if needed). Makes no HTTP call.
    pub fn new(cfg: JudgeConfig) -> Result<Self> {
        let base_url = cfg.checked_base_url()?;
        let (system_prompt, user_template) = prompts::messages(&cfg)?;
        let client = client::Client::new("the judge", &base_url, &cfg.api_key_env, cfg.retries())?;

        let (cache, cache_writer, spent_before) = match &cfg.cache_file {
            Some(path) => {
                let (cache, file, before) = cache::open_cache(path)?;
                (cache, Some(file), before)
            }
            None => (HashMap::new(), None, JudgeStats::default()),
        };

        Ok(Self {
            cfg,
            base_url,
            system_prompt,
            user_template,
            client,
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
        let user = prompts::user_message(&self.user_template, c, swapped);
        JudgeQuestion { system: self.system_prompt.clone(), user, swapped }
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
