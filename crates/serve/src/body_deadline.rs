//! A deadline for a request's body: all of it must arrive within a set time of its head, or the request is
//! answered 408 and its connection closed.
//!
//! Why: hyper times out a request's head ([`crate::connections`]) but not its body, so a client could send
//! `Content-Length: 1000000` and then a byte a minute, holding a connection (and a handler) for as long as it
//! liked. The deadline is for the whole body, not for each piece, so trickling bytes does not extend it.
//! Handlers see an expired deadline as a failed body read and answer with their own error; this layer
//! replaces that answer, because the reason is the client's slowness, not its request.

use crate::guard::refusal;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;

/// The middleware, in front of everything served: `limit` is how long the body may take.
pub(crate) async fn body_deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    use http_body::Body as _;
    // Most requests (every GET) have no body: no timer for them.
    if req.body().is_end_stream() {
        return next.run(req).await;
    }
    let path = req.uri().path().to_string();
    let expired = Arc::new(AtomicBool::new(false));
    let flag = expired.clone();
    let req =
        req.map(|inner| Body::new(DeadlineBody { inner, sleep: Box::pin(tokio::time::sleep(limit)), expired: flag }));
    let resp = next.run(req).await;
    if !expired.load(Ordering::SeqCst) {
        return resp;
    }
    let message = format!("the request body did not arrive within {} s; send it at once", limit.as_secs_f64());
    let mut resp = refusal(&path, StatusCode::REQUEST_TIMEOUT, "request_timeout", message);
    // The rest of the body may still come; it must not be read as the next request.
    resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// A body that fails once its deadline passes.
struct DeadlineBody {
    inner: Body,
    sleep: Pin<Box<Sleep>>,
    expired: Arc<AtomicBool>,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        // What has arrived is handed on even past the deadline; only waiting for more fails.
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        if this.sleep.as_mut().poll(cx).is_ready() {
            this.expired.store(true, Ordering::SeqCst);
            return Poll::Ready(Some(Err("the request body did not arrive in time".into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
