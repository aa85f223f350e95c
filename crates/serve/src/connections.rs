//! Accepting connections, with the limits a server that others can reach needs: a request's head must arrive
//! within [`Limits::header_timeout`], its body within [`Limits::body_timeout`] ([`crate::body_deadline`]), and
//! at most [`Limits::max_connections`] connections are open at once.
//!
//! Why our own accept loop: `axum::serve` sets no timer for hyper, so hyper's header timeout is off, and it has
//! no connection limit; a client that opened connections and sent half a header kept them open as long as it
//! liked. Here hyper's HTTP/1 connection is driven directly (axum serves only HTTP/1 in this build), with a
//! timer and `header_read_timeout`.
//!
//! The connection limit counts TCP connections, not requests. When it is reached the loop stops accepting:
//! new connections wait in the kernel's listen backlog (their clients see a slow connect, not an error) and
//! are taken in as others close. The header timeout also runs while a kept-alive connection waits for its next
//! request, so idle connections give their place back within that time. How many requests may wait for the
//! model is a separate, per-request limit (`openai` admission).

use crate::body_deadline::body_deadline;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a request's head may take to arrive, by default. Generous for any client on a working network
/// (a head is one packet), short enough that a stalled connection soon gives its place back.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request's body may take to arrive, by default. The largest body served (an OpenAI request) is a
/// few megabytes at most.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Most connections open at once, by default. A browser keeps about six per server, and requests that wait
/// for the model are limited separately, so this is far above honest use and far below the file-descriptor limit.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// The limits on every connection of a server (see the module docs).
#[derive(Debug, Clone)]
pub struct Limits {
    /// From a connection's opening, or the end of its previous answer, until its request's head is in; then
    /// the connection is closed.
    pub header_timeout: Duration,
    /// From a request's head until its body is in; then it is answered 408 and the connection closed.
    pub body_timeout: Duration,
    /// Most connections open at once; more wait to be accepted.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Serves `app` on `listener` within `limits` until `shutdown` completes; then stops accepting, lets the
/// requests in flight finish (an idle connection is closed) and returns.
pub(crate) async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: &Limits,
    shutdown: impl Future<Output = ()>,
) {
    let app = app.layer(axum::middleware::from_fn_with_state(limits.body_timeout, body_deadline));
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, slot) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = accept(&listener, &slots) => accepted,
        };
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone())));
        tokio::spawn(async move {
            // A connection that fails (reset, timed out) concerns only its client.
            let _ = conn.await;
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// The next connection, once a slot is free for it. The slot is taken first, so that at the limit nothing is
/// accepted at all.
async fn accept(listener: &TcpListener, slots: &Arc<Semaphore>) -> (TcpStream, OwnedSemaphorePermit) {
    let slot = slots.clone().acquire_owned().await.expect("the connection semaphore is never closed");
    loop {
        match listener.accept().await {
            Ok((stream, _)) => return (stream, slot),
            // A connection reset before it was accepted is gone; anything else (out of file descriptors) may
            // pass as connections close, so wait a little rather than spin.
            Err(e)
                if matches!(e.kind(), std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
