//! Asking the judge: one chat-completions request through the shared client (`client`, which owns the
//! retries and the faults that end them), and the reply's text.

use anyhow::{anyhow, Result};
use serde_json::{json, Value};

use super::{Judge, JudgeQuestion, MaxTokensParam};

impl Judge {
    /// Sends the question, retrying transient faults with exponential backoff. Returns the reply text and the
    /// server's `usage` object.
    pub(super) fn ask(&self, q: &JudgeQuestion) -> Result<(String, Value)> {
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
        let v =
            self.client.post_json("/chat/completions", &body, &self.cfg.model, || self.state().stats.retries += 1)?;
        let choice = v.get("choices").and_then(|c| c.get(0)).ok_or_else(|| {
            anyhow!(
                "the judge at {}/chat/completions answered without choices: {}",
                self.base_url,
                client::snippet(&v.to_string())
            )
        })?;
        // A null or missing content (a refusal, a tool call) is a reply with no verdict: a non-answer, not a
        // fault.
        let content = choice.pointer("/message/content").and_then(Value::as_str).unwrap_or("").to_string();
        Ok((content, v.get("usage").cloned().unwrap_or(Value::Null)))
    }
}
