//! The handlers of the three routes: each reads and checks its request (`request`), has it tokenized in its
//! turn at the model (`admission`), and answers in its endpoint's shape, as one JSON body (`generate`) or as a
//! stream (`stream`).

use super::admission::Turn;
use super::generate::{run_generation, Endpoint, Job};
use super::request::{
    check_messages_size, check_prompt_sizes, parse_body, parse_messages, parse_prompt, tokenize_chat, tokenize_prompt,
    too_many_sequences, SamplingRequest,
};
use super::stream::{stream_generation, ChunkHead};
use super::{ApiError, OpenAiState, DEFAULT_CHAT_MAX_TOKENS, DEFAULT_COMPLETION_MAX_TOKENS, MAX_SEQUENCES};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;

pub(super) async fn list_models(State(s): State<Arc<OpenAiState>>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{"id": s.model_id, "object": "model", "created": 0, "owned_by": "activepref"}],
    }))
}

pub(super) async fn completions(
    State(s): State<Arc<OpenAiState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let obj = parse_body(body)?;
    let opts = SamplingRequest::parse(&obj, &s, &["max_tokens"], DEFAULT_COMPLETION_MAX_TOKENS)?;
    let prompts = parse_prompt(&obj)?;
    if prompts.len() * opts.n > MAX_SEQUENCES {
        return Err(too_many_sequences(prompts.len(), opts.n));
    }
    check_prompt_sizes(&prompts, s.model.config.max_position)?;
    let (ids, turn) =
        s.tokenize_in_turn(|model| prompts.into_iter().map(|p| tokenize_prompt(model, p)).collect()).await?;
    answer(&s, turn, ids, &opts, "prompt", Endpoint::Completions).await
}

pub(super) async fn chat_completions(
    State(s): State<Arc<OpenAiState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let obj = parse_body(body)?;
    // OpenAI renamed `max_tokens` to `max_completion_tokens` for chat; the newer name wins when both are given.
    let opts = SamplingRequest::parse(&obj, &s, &["max_completion_tokens", "max_tokens"], DEFAULT_CHAT_MAX_TOKENS)?;
    if opts.n > MAX_SEQUENCES {
        return Err(too_many_sequences(1, opts.n));
    }
    if obj.get("tools").is_some_and(|t| !t.is_null() && t.as_array().is_none_or(|a| !a.is_empty())) {
        return Err(ApiError::unsupported("tools (function calling) are not supported by this server", "tools"));
    }
    let messages = parse_messages(&obj)?;
    check_messages_size(&messages, s.model.config.max_position)?;
    let (ids, turn) = s.tokenize_in_turn(move |model| Ok(vec![tokenize_chat(model, &messages)?])).await?;
    answer(&s, turn, ids, &opts, "messages", Endpoint::Chat).await
}

/// Samples the tokenized prompts in the request's turn and answers as the endpoint does: one JSON body, or a
/// stream of chunks.
async fn answer(
    s: &Arc<OpenAiState>,
    turn: Turn,
    prompts: Vec<Vec<u32>>,
    opts: &SamplingRequest,
    prompt_param: &'static str,
    endpoint: Endpoint,
) -> Result<Response, ApiError> {
    let job = Job::new(s, prompts, opts, prompt_param)?;
    let head = ChunkHead::new(endpoint, &s.model_id, opts.include_usage);
    if opts.stream {
        return stream_generation(s, turn, job, head);
    }
    let (usage, choices) = run_generation(s, turn, job).await?;
    let choices: Vec<Value> = choices
        .into_iter()
        .enumerate()
        .map(|(i, c)| match endpoint {
            Endpoint::Completions => {
                json!({"index": i, "text": c.text, "logprobs": null, "finish_reason": c.finish_reason})
            }
            Endpoint::Chat => json!({
                "index": i,
                "message": {"role": "assistant", "content": c.text},
                "logprobs": null,
                "finish_reason": c.finish_reason,
            }),
        })
        .collect();
    let object = if endpoint == Endpoint::Chat { "chat.completion" } else { "text_completion" };
    let body = json!({
        "id": head.id, "object": object, "created": head.created, "model": s.model_id, "choices": choices, "usage": usage,
    });
    Ok(Json(body).into_response())
}
