//! Talking to the judge's server: one chat-completions request, its retries, and the faults that end them.
//!
//! Why a file of its own: every decision about the network lives here — which faults are transient and
//! retried with backoff (connection errors, timeouts, 408/409/429, 5xx, honouring `Retry-After`), which stop
//! the run at once with the server's own message (401/403/404, other client errors), and what the request
//! looks like — so the rest of the judge only ever sees a reply or an error.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use super::{Judge, JudgeConfig, JudgeQuestion, MaxTokensParam};

/// The public OpenAI host: the one endpoint where a missing key is certainly a mistake.
const OPENAI_HOST: &str = "api.openai.com";

/// How one HTTP attempt ended, when it did not end the comparison for good.
enum Attempt {
    Reply { content: String, usage: Value },
    Retry { error: String, retry_after: Option<Duration> },
}

/// The API key from the variable `cfg.api_key_env` names, trimmed; none when it is unset or blank, which is
/// an error only for OpenAI's own host.
pub(super) fn api_key(cfg: &JudgeConfig, base_url: &str) -> Result<Option<String>> {
    let api_key = std::env::var(&cfg.api_key_env).ok().filter(|k| !k.trim().is_empty());
    if api_key.is_none() && host_of(base_url).eq_ignore_ascii_case(OPENAI_HOST) {
        bail!(
            "the judge uses {base_url} but ${} is not set: export your OpenAI API key in it, or set \
                 api_key_env to the variable that holds it",
            cfg.api_key_env
        );
    }
    Ok(api_key.map(|k| k.trim().to_string()))
}

/// The HTTP client: error statuses as responses, one time limit per exchange.
pub(super) fn agent(cfg: &JudgeConfig) -> ureq::Agent {
    ureq::Agent::config_builder()
        // Error statuses come back as responses, so their body (the server's reason) can be reported.
        .http_status_as_error(false)
        // One budget for the whole exchange, including a server that accepts and then stalls.
        .timeout_global(Some(Duration::from_secs_f64(cfg.timeout_s)))
        .user_agent(concat!("activepref-judge/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

impl Judge {
    fn chat_url(&self) -> String {
        format!("{}/chat/completions", self.base_url)
    }

    /// Sends the question, retrying transient faults with exponential backoff. Returns the reply text and the
    /// server's `usage` object.
    pub(super) fn ask(&self, q: &JudgeQuestion) -> Result<(String, Value)> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
