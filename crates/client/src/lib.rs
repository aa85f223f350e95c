//! A client for OpenAI-compatible servers, shared by everything in activepref that calls one: the LLM judge
//! (`oracle::judge`) and the remote policy backend (`apl::backend`).
//!
//! Why a crate of its own: every decision about the network lives here once — which faults are transient and
//! retried with exponential backoff (connection errors, timeouts, 408/409/429, 5xx, honouring `Retry-After`
//! and OpenAI's `retry-after-ms`), which stop at once with the server's own message (401/403/404, other client
//! errors), and how each is worded — so its callers only ever see a reply or an error that says what to do.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

/// The public OpenAI host: the one endpoint where a missing key is certainly a mistake.
const OPENAI_HOST: &str = "api.openai.com";

/// How long to wait for a server and how often to try again.
#[derive(Debug, Clone, Copy)]
pub struct Retries {
    /// Seconds one exchange may take, connection to last byte.
    pub timeout_s: f64,
    /// Attempts after the first, for transient faults.
    pub retries: u32,
    /// First wait in seconds, doubling after each retry.
    pub backoff_s: f64,
    /// Longest wait; also caps what a server's `Retry-After` may ask for.
    pub max_backoff_s: f64,
}

/// One server: its base URL (without a trailing slash), the API key, and how to retry.
pub struct Client {
    /// Who the server is, for messages: "the judge", "the policy server".
    pub who: String,
    pub base_url: String,
    /// The variable the key came from, for messages.
    pub api_key_env: String,
    api_key: Option<String>,
    retries: Retries,
    agent: ureq::Agent,
}

/// How one HTTP attempt ended, when it did not end the request for good.
enum Attempt {
    Reply(Value),
    Retry { error: String, retry_after: Option<Duration> },
}

impl Client {
    /// A client of the server at `base_url`, with the key from the variable `api_key_env` (trimmed; none when
    /// unset or blank, which is an error only for OpenAI's own host). Makes no request.
    pub fn new(who: &str, base_url: &str, api_key_env: &str, retries: Retries) -> Result<Self> {
        let base_url = base_url.trim_end_matches('/').to_string();
        let api_key = std::env::var(api_key_env).ok().filter(|k| !k.trim().is_empty()).map(|k| k.trim().to_string());
        if api_key.is_none() && host_of(&base_url).eq_ignore_ascii_case(OPENAI_HOST) {
            bail!(
                "{who} uses {base_url} but ${api_key_env} is not set: export your OpenAI API key in it, or set \
                 api_key_env to the variable that holds it"
            );
        }
        let agent = ureq::Agent::config_builder()
            // Error statuses come back as responses, so their body (the server's reason) can be reported.
            .http_status_as_error(false)
            // One budget for the whole exchange, including a server that accepts and then stalls.
            .timeout_global(Some(Duration::from_secs_f64(retries.timeout_s)))
            .user_agent(concat!("activepref/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Ok(Self { who: who.to_string(), base_url, api_key_env: api_key_env.to_string(), api_key, retries, agent })
    }

    /// POSTs `body` to `base_url + path` and returns the JSON reply, retrying transient faults with
    /// exponential backoff; `on_retry` is called before each retry. `model` is named in a 404's message.
    pub fn post_json(&self, path: &str, body: &Value, model: &str, mut on_retry: impl FnMut()) -> Result<Value> {
        let url = format!("{}{path}", self.base_url);
        let attempts = self.retries.retries + 1;
        let mut backoff = self.retries.backoff_s;
        let mut last_error = String::new();
        for attempt in 1..=attempts {
            match self.attempt(&url, body, model)? {
                Attempt::Reply(v) => return Ok(v),
                Attempt::Retry { error, retry_after } => {
                    last_error = error;
                    if attempt == attempts {
                        break;
                    }
                    // A server that says when to come back knows better than our schedule; both are capped
                    // so a confused header can't park the run for an hour.
                    let wait = retry_after.map_or(backoff, |d| d.as_secs_f64()).min(self.retries.max_backoff_s);
                    std::thread::sleep(Duration::from_secs_f64(wait));
                    backoff = (backoff * 2.0).min(self.retries.max_backoff_s);
                    on_retry();
                }
            }
        }
        bail!(
            "{} at {url} did not answer after {attempts} attempts (last error: {last_error}); the run can be \
             resumed with the same command once it is reachable",
            self.who
        )
    }

    /// One POST without retries, for requests that change the server's state: the status and the body as text.
    pub fn post_once(&self, path: &str, body: &Value) -> Result<(u16, String)> {
        let url = format!("{}{path}", self.base_url);
        let mut resp = self
            .request(&url)
            .send_json(body)
            .map_err(|e| anyhow!("request to {} at {url} failed: {}", self.who, self.describe(&e)))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().with_context(|| format!("reading the reply of {url}"))?;
        Ok((status, text))
    }

    fn request(&self, url: &str) -> ureq::RequestBuilder<ureq::typestate::WithBody> {
        let mut req = self.agent.post(url).header("Content-Type", "application/json");
        if let Some(key) = &self.api_key {
            req = req.header("Authorization", format!("Bearer {key}"));
        }
        req
    }

    /// One HTTP exchange. `Err` for faults no retry can fix; `Attempt::Retry` for transient ones.
    fn attempt(&self, url: &str, body: &Value, model: &str) -> Result<Attempt> {
        let who = &self.who;
        let mut resp = match self.request(url).send_json(body) {
            Ok(r) => r,
            Err(e) if is_transient(&e) => return Ok(Attempt::Retry { error: self.describe(&e), retry_after: None }),
            Err(e) => bail!("request to {who} at {url} failed: {e}"),
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
            Err(e) => bail!("reading the reply of {who} from {url} failed: {e}"),
        };
        match status {
            200..=299 => {
                let v: Value = serde_json::from_str(&text).with_context(|| {
                    format!("{who} at {url} answered {status} with a body that is not JSON: {}", snippet(&text))
                })?;
                Ok(Attempt::Reply(v))
            }
            408 | 409 | 429 | 500..=599 => {
                Ok(Attempt::Retry { error: format!("{status}: {}", server_message(&text)), retry_after })
            }
            401 | 403 => bail!(
                "{status} from {url}: {} — set ${} to a valid API key (api_key_env in the config names the \
                 variable)",
                server_message(&text),
                self.api_key_env
            ),
            404 => bail!(
                "404 from {url}: {} — check base_url (it should end in /v1 for most servers) and model {model:?}",
                server_message(&text),
            ),
            _ => bail!("{status} from {url}: {}", server_message(&text)),
        }
    }

    /// A transport error in words; ureq's own text for a timeout ("timeout: global") doesn't say which limit.
    fn describe(&self, e: &ureq::Error) -> String {
        match e {
            ureq::Error::Timeout(_) => format!("no reply within {} s (timeout_s)", self.retries.timeout_s),
            e => e.to_string(),
        }
    }
}

/// The host of an `http(s)://host[:port]/...` URL.
pub fn host_of(url: &str) -> &str {
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
pub fn server_message(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let message = parsed.as_ref().and_then(|v| {
        let e = v.get("error")?;
        e.get("message").and_then(Value::as_str).or_else(|| e.as_str()).map(str::to_string)
    });
    message.unwrap_or_else(|| snippet(body))
}

/// The start of a body, for messages.
pub fn snippet(body: &str) -> String {
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
