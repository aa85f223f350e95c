//! Log-probabilities in the answer, as OpenAI and vLLM (v0.11.0) return them, so that a client that scores
//! and samples through vLLM does the same here:
//! - `/v1/completions` `logprobs: k` (0 ≤ k ≤ [`MAX_LOGPROBS`]): each choice's `logprobs` holds `tokens`,
//!   `token_logprobs`, `top_logprobs` (per position the sampled token and the k most likely) and `text_offset`
//!   (`serving_completion.py` `_create_completion_logprobs`).
//! - `echo: true` puts the prompt before the completion, in the text and, with `logprobs`, in the lists, the
//!   prompt's first token without a log-prob (`null`); with `max_tokens: 0` only the prompt comes back.
//! - vLLM's `prompt_logprobs: k`: per prompt position `null` for the first, then `{"<id>": {logprob, rank,
//!   decoded_token}}` for the prompt's token and the k most likely (on each choice for completions, on the
//!   response for chat).
//! - `/v1/chat/completions` `logprobs: true` with `top_logprobs: k`: `logprobs.content[]` of `{token, logprob,
//!   bytes, top_logprobs}`, the k most likely as OpenAI lists them.
//! - `return_tokens_as_token_ids`: every token string is `token_id:<id>`, so no client re-tokenises text;
//!   `return_token_ids`: the prompt's and each choice's token ids (`prompt_token_ids`, `token_ids`).
//!
//! Every log-prob is the model's raw temperature-1 `log_softmax`, whatever the request's temperature or
//! filters (vLLM's default `logprobs_mode = "raw_logprobs"`); `-inf` is sent as -9999.0, as vLLM does. The
//! sampled tokens' values are the ones taken while sampling; when a request also wants the most likely tokens
//! or the prompt's values, one teacher-forced pass over prompt and completion gives all of them instead
//! (equal within float noise, about 1e-6). Not with `stream: true`: refused rather than dropped.

use super::generate::Endpoint;
use super::{ApiError, MAX_LOGPROBS};
use lm::model::LanguageModel;
use lm::sample::Sample;
use lm::score::{token_logprobs, TokenLogprob};
use serde_json::{json, Map, Value};

/// What a request asks for besides the text.
#[derive(Debug, Clone, Default)]
pub(super) struct LogprobRequest {
    /// The sampled tokens' log-probs, with this many most likely tokens per position.
    pub(super) sampled: Option<usize>,
    /// Completions' `echo`: the prompt before the completion.
    pub(super) echo: bool,
    /// vLLM's `prompt_logprobs`, with this many most likely tokens per position.
    pub(super) prompt: Option<usize>,
    /// `return_tokens_as_token_ids`.
    pub(super) as_token_ids: bool,
    /// `return_token_ids`.
    pub(super) token_ids: bool,
}

/// A choice's log-probs: its prompt's positions (from the second token on), when asked for, and its
/// sampled tokens'.
pub(super) struct ChoiceLogprobs {
    pub(super) prompt: Vec<TokenLogprob>,
    pub(super) sampled: Vec<TokenLogprob>,
}

fn top_count(obj: &Map<String, Value>, name: &'static str) -> Result<Option<usize>, ApiError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.as_u64().is_some_and(|k| k <= MAX_LOGPROBS as u64) => {
            Ok(n.as_u64().map(|k| k as usize))
        }
        Some(v) => {
            Err(ApiError::invalid(format!("`{name}` must be an integer from 0 to {MAX_LOGPROBS}, got {v}"), Some(name)))
        }
    }
}

fn flag(obj: &Map<String, Value>, name: &'static str) -> Result<bool, ApiError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(ApiError::invalid(format!("`{name}` must be a boolean, got {v}"), Some(name))),
    }
}

impl LogprobRequest {
    pub(super) fn parse(obj: &Map<String, Value>, endpoint: Endpoint, stream: bool) -> Result<Self, ApiError> {
        let sampled = match endpoint {
            Endpoint::Completions => top_count(obj, "logprobs")?,
            Endpoint::Chat => {
                let on = flag(obj, "logprobs")?;
                let k = top_count(obj, "top_logprobs")?;
                if k.is_some_and(|k| k > 0) && !on {
                    return Err(ApiError::invalid("`top_logprobs` needs `logprobs: true`", Some("top_logprobs")));
                }
                on.then(|| k.unwrap_or(0))
            }
        };
        let echo = flag(obj, "echo")?;
        if echo && endpoint == Endpoint::Chat {
            return Err(ApiError::unsupported("`echo` is not supported on chat completions by this server", "echo"));
        }
        let r = Self {
            sampled,
            echo,
            prompt: top_count(obj, "prompt_logprobs")?,
            as_token_ids: flag(obj, "return_tokens_as_token_ids")?,
            token_ids: flag(obj, "return_token_ids")?,
        };
        if stream {
            for (on, name) in [
                (r.sampled.is_some(), "logprobs"),
                (r.echo, "echo"),
                (r.prompt.is_some(), "prompt_logprobs"),
                (r.token_ids, "return_token_ids"),
            ] {
                if on {
                    return Err(ApiError::unsupported(
                        format!("`{name}` with `stream: true` is not supported by this server; ask without streaming"),
                        name,
                    ));
                }
            }
        }
        Ok(r)
    }

    /// Whether the answer needs the prompt's log-probs (`prompt_logprobs`, or `echo` with `logprobs`).
    fn wants_prompt(&self) -> bool {
        self.prompt.is_some() || (self.echo && self.sampled.is_some())
    }

    /// Whether a teacher-forced pass is needed: for the prompt's values or the most likely tokens.
    fn needs_pass(&self) -> bool {
        self.wants_prompt() || self.sampled.is_some_and(|k| k > 0)
    }

    /// The log-probs of every choice (`None` when the request asks for none). `prompts[i / n]` is choice `i`'s
    /// prompt.
    pub(super) fn compute(
        &self,
        model: &LanguageModel,
        prompts: &[Vec<u32>],
        n: usize,
        samples: &[Sample],
        batch_size: usize,
    ) -> anyhow::Result<Option<Vec<ChoiceLogprobs>>> {
        if self.sampled.is_none() && !self.wants_prompt() {
            return Ok(None);
        }
        if !self.needs_pass() {
            let plain = |s: &Sample| ChoiceLogprobs {
                prompt: vec![],
                sampled: s
                    .tokens
                    .iter()
                    .zip(&s.logprobs)
                    .map(|(&token, &logprob)| TokenLogprob { token, logprob, rank: 0, top: vec![] })
                    .collect(),
            };
            return Ok(Some(samples.iter().map(plain).collect()));
        }
        let top = self.sampled.unwrap_or(0).max(self.prompt.unwrap_or(0));
        let seqs: Vec<Vec<u32>> =
            samples.iter().enumerate().map(|(i, s)| [prompts[i / n].as_slice(), &s.tokens].concat()).collect();
        let from: Vec<usize> =
            (0..samples.len()).map(|i| if self.wants_prompt() { 1 } else { prompts[i / n].len() }).collect();
        let all = token_logprobs(model, &seqs, &from, top, batch_size)?;
        Ok(Some(
            all.into_iter()
                .enumerate()
                .map(|(i, mut row)| {
                    let in_prompt = if self.wants_prompt() { prompts[i / n].len() - 1 } else { 0 };
                    let sampled = row.split_off(in_prompt);
                    ChoiceLogprobs { prompt: row, sampled }
                })
                .collect(),
        ))
    }

    fn token_text(&self, model: &LanguageModel, id: u32) -> String {
        if self.as_token_ids {
            format!("token_id:{id}")
        } else {
            model.tokenizer.decode(&[id], false).unwrap_or_default()
        }
    }

    /// A completions choice's `logprobs` object: the prompt first when echoed.
    pub(super) fn completion_object(&self, model: &LanguageModel, prompt: &[u32], lp: &ChoiceLogprobs) -> Value {
        let Some(k) = self.sampled else { return Value::Null };
        let mut tokens = vec![];
        let mut token_logprobs = vec![];
        let mut top_logprobs = vec![];
        if self.echo {
            if let Some(&first) = prompt.first() {
                tokens.push(self.token_text(model, first));
                token_logprobs.push(Value::Null);
                top_logprobs.push(Value::Null);
            }
            for t in &lp.prompt {
                tokens.push(self.token_text(model, t.token));
                token_logprobs.push(json!(clamp(t.logprob)));
                top_logprobs.push(self.top_map(model, t, k));
            }
        }
        for t in &lp.sampled {
            tokens.push(self.token_text(model, t.token));
            token_logprobs.push(json!(clamp(t.logprob)));
            top_logprobs.push(self.top_map(model, t, k));
        }
        let mut offset = 0;
        let text_offset: Vec<usize> = tokens
            .iter()
            .map(|t| {
                let o = offset;
                offset += t.len();
                o
            })
            .collect();
        json!({"text_offset": text_offset, "token_logprobs": token_logprobs, "tokens": tokens, "top_logprobs": top_logprobs})
    }

    /// The token itself and the `k` most likely, by token string (vLLM's completions format).
    fn top_map(&self, model: &LanguageModel, t: &TokenLogprob, k: usize) -> Value {
        let mut m = Map::new();
        m.insert(self.token_text(model, t.token), json!(clamp(t.logprob)));
        for &(id, lp) in t.top.iter().take(k) {
            m.insert(self.token_text(model, id), json!(clamp(lp)));
        }
        Value::Object(m)
    }

    /// A chat choice's `logprobs` object (OpenAI's format).
    pub(super) fn chat_object(&self, model: &LanguageModel, lp: &ChoiceLogprobs) -> Value {
        let Some(k) = self.sampled else { return Value::Null };
        let entry = |id: u32, logprob: f32| {
            let token = self.token_text(model, id);
            let bytes = model.tokenizer.decode(&[id], false).unwrap_or_default().into_bytes();
            json!({"token": token, "logprob": clamp(logprob), "bytes": bytes})
        };
        let content: Vec<Value> = lp
            .sampled
            .iter()
            .map(|t| {
                let mut e = entry(t.token, t.logprob);
                e["top_logprobs"] = Value::Array(t.top.iter().take(k).map(|&(id, l)| entry(id, l)).collect());
                e
            })
            .collect();
        json!({"content": content})
    }

    /// vLLM's `prompt_logprobs` list: `null` for the first token, then per position the prompt's token and
    /// the most likely, by token id.
    pub(super) fn prompt_list(&self, model: &LanguageModel, lp: &ChoiceLogprobs) -> Value {
        let Some(k) = self.prompt else { return Value::Null };
        let mut list = vec![Value::Null];
        for t in &lp.prompt {
            let mut m = Map::new();
            let entry = |id: u32, logprob: f32, rank: usize| json!({"logprob": clamp(logprob), "rank": rank, "decoded_token": self.token_text(model, id)});
            m.insert(t.token.to_string(), entry(t.token, t.logprob, t.rank));
            for (r, &(id, l)) in t.top.iter().take(k).enumerate() {
                m.entry(id.to_string()).or_insert_with(|| entry(id, l, r + 1));
            }
            list.push(Value::Object(m));
        }
        Value::Array(list)
    }
}

/// JSON has no infinities: vLLM sends -9999.0 for a log-prob of -inf.
fn clamp(lp: f32) -> f32 {
    lp.max(-9999.0)
}
