//! `stream: true`: the answer as server-sent events, each choice's text sent as it is sampled (see the
//! `openai` module docs for what is sent when). Kept apart from the non-streaming run because it is the one
//! place where the text is cut while the generation goes on, and where a client can hang up mid-answer.

use super::admission::Turn;
use super::generate::{text_end, Endpoint, Job};
use super::{ApiError, OpenAiState};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// What every response or chunk of one request shares.
pub(super) struct ChunkHead {
    endpoint: Endpoint,
    pub(super) id: String,
    pub(super) created: u64,
    model: String,
    include_usage: bool,
}

impl ChunkHead {
    pub(super) fn new(endpoint: Endpoint, model: &str, include_usage: bool) -> Self {
        let prefix = if endpoint == Endpoint::Chat { "chatcmpl" } else { "cmpl" };
        Self {
            endpoint,
            id: format!("{prefix}-{:032x}", rand::random::<u128>()),
            created: unix_now(),
            model: model.to_string(),
            include_usage,
        }
    }

    /// One chunk of the stream: `choices` as given, and `usage: null` when the client asked for usage (OpenAI
    /// sends it on every chunk then, filled in on the last).
    fn chunk(&self, choices: Value, usage: Option<Value>) -> Event {
        let object = if self.endpoint == Endpoint::Chat { "chat.completion.chunk" } else { "text_completion" };
        let mut v =
            json!({"id": self.id, "object": object, "created": self.created, "model": self.model, "choices": choices});
        if self.include_usage {
            v["usage"] = usage.unwrap_or(Value::Null);
        }
        Event::default().data(v.to_string())
    }

    /// A choice's new text, or its end.
    fn choice(&self, index: usize, text: &str, finish: Option<&str>) -> Event {
        let c = match self.endpoint {
            Endpoint::Chat if finish.is_some() && text.is_empty() => {
                json!({"index": index, "delta": {}, "logprobs": null, "finish_reason": finish})
            }
            Endpoint::Chat => {
                json!({"index": index, "delta": {"content": text}, "logprobs": null, "finish_reason": finish})
            }
            Endpoint::Completions => json!({"index": index, "text": text, "logprobs": null, "finish_reason": finish}),
        };
        self.chunk(json!([c]), None)
    }
}

/// Answers with server-sent events while the job is sampled on the blocking pool in the request's `turn` (see
/// the module docs). Everything that can be refused has been by now; a failure mid-stream is sent as an
/// `error` event.
pub(super) fn stream_generation(
    s: &Arc<OpenAiState>,
    turn: Turn,
    job: Job,
    head: ChunkHead,
) -> Result<Response, ApiError> {
    let (tx, rx) = mpsc::unbounded_channel::<Event>();
    let st = s.clone();
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| stream_rows(&st, &job, &head, &tx)));
        let error = match outcome {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e,
            Err(_) => ApiError::server("internal error while generating (a panic; see the server's log)"),
        };
        let _ = tx.send(Event::default().data(error.body().to_string()));
    });
    let events =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx)) });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

/// Samples the job, sending each choice's text as it grows; then usage (if asked for) and `[DONE]`. A closed
/// channel means the client is gone (the response body, which holds its receiver, was dropped): sampling
/// stops at the next token, so the model is free again soon.
fn stream_rows(
    st: &OpenAiState,
    job: &Job,
    head: &ChunkHead,
    tx: &mpsc::UnboundedSender<Event>,
) -> Result<(), ApiError> {
    let model = &job.model;
    let mut gone = false;
    if head.endpoint == Endpoint::Chat {
        for i in 0..job.rows.len() {
            let role = json!([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]);
            gone |= tx.send(head.chunk(role, None)).is_err();
        }
    }
    let max_new = job.params.max_new_tokens;
    let mut sent = vec![String::new(); job.rows.len()];
    let mut completion_tokens = 0;
    let mut failure = None;
    // Checked before each token, so that the generation ends even while text is held back and nothing is sent.
    let client_gone = || tx.is_closed();
    job.sample(st, client_gone, |i, smp| {
        if gone || failure.is_some() {
            return false;
        }
        let text = match model.tokenizer.decode(&smp.tokens, true) {
            Ok(t) => t,
            Err(e) => {
                failure = Some(ApiError::server(format!("decoding the completion: {e:#}")));
                return false;
            }
        };
        let (end, finish) = text_end(&text, smp, max_new, &job.stop);
        // Send only what extends the text already sent (a decoder could in principle rewrite earlier text;
        // then the rest waits until it agrees again).
        let new = text.get(..end).and_then(|t| t.strip_prefix(sent[i].as_str())).filter(|n| !n.is_empty());
        if let Some(new) = new {
            gone |= tx.send(head.choice(i, new, None)).is_err();
            sent[i] = text[..end].to_string();
        }
        if let Some(f) = finish {
            completion_tokens += smp.tokens.len();
            gone |= tx.send(head.choice(i, "", Some(f))).is_err();
        }
        finish.is_none() && !gone
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    if head.include_usage {
        let _ = tx.send(head.chunk(json!([]), Some(job.usage(completion_tokens))));
    }
    let _ = tx.send(Event::default().data("[DONE]"));
    Ok(())
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
