//! Browser-facing protections of the labeling app (see "Security" in the `labeling` module docs): security
//! headers on every answer, and refusal of writes that another site could have sent.

use super::{ApiError, MAX_BODY};
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// No external assets, no inline scripts, no framing; API answers are never cached (they change with
/// every label).
pub(super) async fn security_headers(req: Request, next: Next) -> Response {
    let api = req.uri().path().starts_with("/api/");
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
             frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if api {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// Refuses writes that did not come from this server's own page: a form another site submits (no JSON
/// content type), or any request whose `Origin` / `Sec-Fetch-Site` says another origin sent it.
pub(super) async fn same_origin_json(req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return next.run(req).await;
    }
    match cross_site_refusal(req.headers(), req.uri()) {
        None => next.run(req).await,
        Some(refusal) => {
            // Read (and drop) the small body first: a response to a half-read request makes the server close
            // the connection, which the page's next request would then find dead. An oversized body still
            // closes it.
            let _ = axum::body::to_bytes(req.into_body(), MAX_BODY).await;
            refusal.into_response()
        }
    }
}

fn cross_site_refusal(h: &HeaderMap, uri: &axum::http::Uri) -> Option<ApiError> {
    if let Some(why) = crate::guard::foreign_origin(h, uri) {
        return Some(ApiError::new(StatusCode::FORBIDDEN, why));
    }
    let json = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    (!json).then(|| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the body as JSON with `Content-Type: application/json` (form posts are refused, so that other \
             sites cannot submit labels)",
        )
    })
}
