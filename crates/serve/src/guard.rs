//! What every request must pass, whichever router answers it: a `Host` this server answers to, and, for a
//! write, no sign that another site's page sent it.
//!
//! Why: a page on any site can make a visitor's browser send requests to 127.0.0.1 — simple cross-site POSTs
//! (a `text/plain` body needs no preflight), or, through DNS rebinding, requests that the browser believes go
//! to the attacker's own domain and so may read the answers. The server listens on loopback by default, so
//! this is the way in from outside. Rebinding needs a domain name, so the `Host` must be an IP literal,
//! `localhost`, or a name the server was told about (`--addr`, `--allowed-host`); a cross-site write shows
//! itself in `Origin` or `Sec-Fetch-Site` (clients that are not browsers send neither).

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::net::IpAddr;
use std::sync::Arc;

/// Host names (without port) that requests may name besides IP literals and `localhost`.
#[derive(Debug, Clone, Default)]
pub struct AllowedHosts(pub Vec<String>);

impl AllowedHosts {
    /// Whether a `Host` header value (`name[:port]`, `[v6]:port`) names this server.
    pub fn allows(&self, host: &str) -> bool {
        let name = match host.strip_prefix('[') {
            Some(rest) => rest.split(']').next().unwrap_or(""),
            None => host.rsplit_once(':').map_or(host, |(h, port)| if port.parse::<u16>().is_ok() { h } else { host }),
        };
        let name = name.trim_end_matches('.');
        name.parse::<IpAddr>().is_ok()
            || name.eq_ignore_ascii_case("localhost")
            || self.0.iter().any(|a| a.trim_end_matches('.').eq_ignore_ascii_case(name))
    }
}

/// Why a request looks sent by another site's page, if it does: an `Origin` other than this server, or a
/// `Sec-Fetch-Site` other than same-origin.
pub fn foreign_origin(h: &HeaderMap, uri: &Uri) -> Option<String> {
    let host = h.get(header::HOST).and_then(|v| v.to_str().ok()).or_else(|| uri.authority().map(|a| a.as_str()));
    if let Some(origin) = h.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let authority = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
        if !matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h)) {
            return Some(format!(
                "cross-origin request refused: Origin {origin:?} is not this server ({})",
                host.unwrap_or("?")
            ));
        }
    }
    if let Some(site) = h.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if !matches!(site, "same-origin" | "none") {
            return Some(format!("cross-origin request refused (Sec-Fetch-Site: {site})"));
        }
    }
    None
}

/// A refusal in the body shape of the route's API: OpenAI's `{"error": {...}}` (with `code`) under `/v1`, the
/// labeling app's `{"error": "..."}` elsewhere. Also used for refusals made outside any router
/// (`body_deadline`).
pub(crate) fn refusal(path: &str, status: StatusCode, code: &str, message: String) -> Response {
    let body = if path.starts_with("/v1/") || path == "/v1" {
        json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": code}})
    } else {
        json!({"error": message})
    };
    (status, Json(body)).into_response()
}

fn forbidden(path: &str, message: String) -> Response {
    refusal(path, StatusCode::FORBIDDEN, "forbidden", message)
}

/// The middleware: refuses a foreign `Host` on every route, and a cross-site write under `/v1` (the labeling
/// API checks its own writes, with its JSON-only rule, in `labeling::security`).
pub async fn guard(State(hosts): State<Arc<AllowedHosts>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let host = req.headers().get(header::HOST).and_then(|v| v.to_str().ok());
    if let Some(h) = host.filter(|h| !hosts.allows(h)) {
        return forbidden(
            &path,
            format!(
                "Host {h:?} is not one this server answers to (IP addresses, localhost, the --addr name and \
                 --allowed-host names are); start it with --allowed-host NAME to allow it"
            ),
        );
    }
    let write = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if write && path.starts_with("/v1") {
        if let Some(why) = foreign_origin(req.headers(), req.uri()) {
            return forbidden(&path, why);
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let a = AllowedHosts(vec!["labels.example.org".into()]);
        for ok in ["127.0.0.1:8787", "localhost:1", "LOCALHOST", "[::1]:8787", "10.1.2.3", "labels.example.org:443"] {
            assert!(a.allows(ok), "{ok}");
        }
        for bad in ["evil.example", "evil.example:8787", "localhost.evil.example", "labels.example.org.evil:1"] {
            assert!(!a.allows(bad), "{bad}");
        }
    }
}
