//! What a request must pass before its body is even read: the API key (when the server has one), an allowed
//! method, and — before tokenizing and generating — a turn at the model, refused with a 429 when too many
//! requests already wait (see the `openai` module docs).

use super::generate::blocking;
use super::{ApiError, OpenAiState};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use lm::model::LanguageModel;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::OwnedSemaphorePermit;

/// The right to use the model (tokenizer included); released when dropped.
pub(super) type Turn = OwnedSemaphorePermit;

impl OpenAiState {
    /// Takes a turn, then runs `tokenize` on the blocking pool in it, and returns the prompts' tokens with
    /// the turn. Tokenizing is work on the model's behalf, so it waits as generation does: a flood of prompts
    /// meets the waiting limit rather than the tokenizer, and never runs beside a generation, even when its
    /// client hangs up meanwhile (the turn is released when the tokenizer is done).
    pub(super) async fn tokenize_in_turn(
        self: &Arc<Self>,
        tokenize: impl FnOnce(&LanguageModel) -> Result<Vec<Vec<u32>>, ApiError> + Send + 'static,
    ) -> Result<(Vec<Vec<u32>>, Turn), ApiError> {
        let turn = self.take_turn().await?;
        let st = self.clone();
        blocking(move || Ok((tokenize(&st.model)?, turn))).await
    }

    /// Waits for the model, or refuses at once when `max_waiting` requests already wait.
    async fn take_turn(&self) -> Result<Turn, ApiError> {
        if let Ok(p) = self.busy.clone().try_acquire_owned() {
            return Ok(p);
        }
        // Counted on the way in and, through the guard, on every way out (including a client that hangs up).
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let ahead = self.waiting.fetch_add(1, Ordering::SeqCst);
        let _guard = Waiting(&self.waiting);
        if ahead >= self.max_waiting {
            return Err(ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                kind: "requests",
                code: Some("rate_limit_exceeded"),
                ..ApiError::invalid(
                    format!("the model is busy and {ahead} requests are already waiting for it; retry shortly"),
                    None,
                )
            });
        }
        self.busy.clone().acquire_owned().await.map_err(|e| ApiError::server(format!("server closing: {e}")))
    }
}

pub(super) async fn require_api_key(State(s): State<Arc<OpenAiState>>, req: Request, next: Next) -> Response {
    let Some(key) = &s.api_key else { return next.run(req).await };
    let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::trim);
    // The scheme is case-insensitive (RFC 9110 §11.1).
    let token = given
        .and_then(|v| v.split_once(' '))
        .and_then(|(scheme, t)| scheme.eq_ignore_ascii_case("bearer").then_some(t));
    let message = match token {
        None => "no API key given: send `Authorization: Bearer <key>` with the key this server was started with",
        // Comparing digests takes the same time wherever the keys differ and whatever their lengths.
        Some(t) if Sha256::digest(t.trim().as_bytes()) == Sha256::digest(key.as_bytes()) => return next.run(req).await,
        Some(_) => "incorrect API key provided",
    };
    ApiError { status: StatusCode::UNAUTHORIZED, code: Some("invalid_api_key"), ..ApiError::invalid(message, None) }
        .into_response()
}

pub(super) async fn method_not_allowed(req: Request) -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        ..ApiError::invalid(format!("{} is not allowed on {}", req.method(), req.uri().path()), None)
    }
}
