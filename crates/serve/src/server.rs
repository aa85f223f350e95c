//! One listener for whatever is served: the labeling app, the OpenAI-compatible endpoints, or both. A type of
//! its own so that callers (the CLI) assemble and run the server without naming axum, and so that serving
//! belongs to neither router. Connections are accepted within [`Limits`] (see [`crate::connections`]).

use crate::connections::{self, Limits};
use crate::guard::AllowedHosts;
use crate::labeling::{self, LabelingState};
use crate::openai::{self, OpenAiState};
use anyhow::Result;
use std::sync::Arc;

/// The routers to serve on one listener; empty until `with_*` adds them (an empty server answers 404). Every
/// route is behind [`crate::guard`]: a `Host` this server answers to, and no cross-site writes.
#[derive(Default)]
pub struct Server {
    app: axum::Router,
    hosts: AllowedHosts,
    limits: Limits,
}

impl Server {
    pub fn new() -> Self {
        Self::default()
    }

    /// Host names requests may name besides IP literals and `localhost` (the `--addr` name, a proxy's name).
    pub fn with_allowed_hosts(mut self, names: Vec<String>) -> Self {
        self.hosts = AllowedHosts(names);
        self
    }

    /// Sets the timeouts and the connection limit ([`Limits::default`] otherwise).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Adds the labeling app ([`labeling::router`]): pages, static files and their API.
    pub fn with_labeling(mut self, state: Arc<LabelingState>) -> Self {
        self.app = self.app.merge(labeling::router(state));
        self
    }

    /// Adds the OpenAI-compatible `/v1` endpoints ([`openai::router`]).
    pub fn with_openai(mut self, state: Arc<OpenAiState>) -> Self {
        self.app = self.app.merge(openai::router(state));
        self
    }

    /// Serves on `listener` as [`serve_blocking`] does, within this server's limits.
    pub fn serve_blocking(self, listener: std::net::TcpListener, stop_on_ctrl_c: bool) -> Result<()> {
        let limits = self.limits.clone();
        run(listener, self.router(), &limits, stop_on_ctrl_c)
    }

    /// Everything served, behind the guard.
    pub fn router(self) -> axum::Router {
        self.app.layer(axum::middleware::from_fn_with_state(Arc::new(self.hosts), crate::guard::guard))
    }
}

/// Serves `app` on `listener`, within the default [`Limits`], until the process ends or, with
/// `stop_on_ctrl_c`, until Ctrl-C (requests in flight finish first, so no acknowledged label is cut off).
/// Builds its own tokio runtime.
pub fn serve_blocking(listener: std::net::TcpListener, app: axum::Router, stop_on_ctrl_c: bool) -> Result<()> {
    run(listener, app, &Limits::default(), stop_on_ctrl_c)
}

fn run(listener: std::net::TcpListener, app: axum::Router, limits: &Limits, stop_on_ctrl_c: bool) -> Result<()> {
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let shutdown = async move {
            if stop_on_ctrl_c {
                let _ = tokio::signal::ctrl_c().await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        connections::serve(listener, app, limits, shutdown).await;
        anyhow::Ok(())
    })
}
