//! The handlers of the three routes: each reads and checks its request (`request`), has it tokenized in its
//! turn at the model (`admission`), and answers in its endpoint's shape, as one JSON body (`generate`) or as a
//! stream (`stream`).

use super::admission::Turn;
use super::generate::{run_generation, Endpoint, Job};
use super::request::{
    check_messages_size, check_prompt_sizes, parse_body, parse_messages, parse_prompt, tokenize_chat, tokenize_prompt,
    too_many_sequences, PromptInput, SamplingRequest,
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

pub(super) async fn completions(
    State(s): State<Arc<OpenAiState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let obj = parse_body(body)?;
    let opts = SamplingRequest::parse(&obj, &s, Endpoint::Completions, &["max_tokens"], DEFAULT_COMPLETION_MAX_TOKENS)?;
    let prompts = parse_prompt(&obj)?;
    // What `echo` puts back: a text prompt as it was sent (a token-id prompt is decoded).
    let texts: Vec<Option<String>> =
        prompts.iter().map(|p| if let PromptInput::Text(t) = p { Some(t.clone()) } else { None }).collect();
    if prompts.len() * opts.n > MAX_SEQUENCES {
        return Err(too_many_sequences(prompts.len(), opts.n));
    }
    check_prompt_sizes(&prompts, s.model.config.max_position)?;
    let (ids, turn) =
        s.tokenize_in_turn(|model| prompts.into_iter().map(|p| tokenize_prompt(model, p)).collect()).await?;
    answer(&s, turn, ids, &opts, "prompt", Endpoint::Completions, texts).await
}

pub(super) async fn chat_completions(
    State(s): State<Arc<OpenAiState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let obj = parse_body(body)?;
    // OpenAI renamed `max_tokens` to `max_completion_tokens` for chat; the newer name wins when both are given.
    let opts = SamplingRequest::parse(
        &obj,
        &s,
        Endpoint::Chat,
        &["max_completion_tokens", "max_tokens"],
        DEFAULT_CHAT_MAX_TOKENS,
    )?;
    if opts.n > MAX_SEQUENCES {
        return Err(too_many_sequences(1, opts.n));
    }
    if obj.get("tools").is_some_and(|t| !t.is_null() && t.as_array().is_none_or(|a| !a.is_empty())) {
        return Err(ApiError::unsupported("tools (function calling) are not supported by this server", "tools"));
    }
    let messages = parse_messages(&obj)?;
    check_messages_size(&messages, s.model.config.max_position)?;
    let (ids, turn) = s.tokenize_in_turn(move |model| Ok(vec![tokenize_chat(model, &messages)?])).await?;
    answer(&s, turn, ids, &opts, "messages", Endpoint::Chat, vec![]).await
}

/// Samples the tokenized prompts in the request's turn and answers as the endpoint does: one JSON body, or a
/// stream of chunks. `texts[p]` is prompt `p`'s text as sent, if it was text (for `echo`).
async fn answer(
    s: &Arc<OpenAiState>,
    turn: Turn,
    prompts: Vec<Vec<u32>>,
    opts: &SamplingRequest,
    prompt_param: &'static str,
    endpoint: Endpoint,
    texts: Vec<Option<String>>,
) -> Result<Response, ApiError> {
    let job = Job::new(s, prompts.clone(), opts, prompt_param)?;
    let head = ChunkHead::new(endpoint, &opts.model_id, opts.include_usage);
    if opts.stream {
        return stream_generation(s, turn, job, head);
    }
    let (usage, choices) = run_generation(s, turn, job).await?;
    let (lp, model, n) = (&opts.logprobs, &opts.model, opts.n);
    let mut prompt_logprobs = Value::Null;
    let choices: Vec<Value> = choices
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let prompt = &prompts[i / n];
            let logprobs = c.logprobs.as_ref();
            match endpoint {
                Endpoint::Completions => {
                    let text = if lp.echo {
                        let echoed = texts
                            .get(i / n)
                            .cloned()
                            .flatten()
                            .unwrap_or_else(|| model.tokenizer.decode(prompt, true).unwrap_or_default());
                        echoed + &c.text
                    } else {
                        c.text
                    };
                    let mut choice = json!({
                        "index": i,
                        "text": text,
                        "logprobs": logprobs.map_or(Value::Null, |l| lp.completion_object(model, prompt, l)),
                        "finish_reason": c.finish_reason,
                    });
                    if lp.prompt.is_some() {
                        choice["prompt_logprobs"] = logprobs.map_or(Value::Null, |l| lp.prompt_list(model, l));
                    }
                    if lp.token_ids {
                        choice["prompt_token_ids"] = json!(prompt);
                        choice["token_ids"] = json!(c.tokens);
                    }
                    choice
                }
                Endpoint::Chat => {
                    if lp.prompt.is_some() && prompt_logprobs.is_null() {
                        prompt_logprobs = logprobs.map_or(Value::Null, |l| lp.prompt_list(model, l));
                    }
                    let mut choice = json!({
                        "index": i,
                        "message": {"role": "assistant", "content": c.text},
                        "logprobs": logprobs.map_or(Value::Null, |l| lp.chat_object(model, l)),
                        "finish_reason": c.finish_reason,
                    });
                    if lp.token_ids {
                        choice["token_ids"] = json!(c.tokens);
                    }
                    choice
                }
            }
        })
        .collect();
    let object = if endpoint == Endpoint::Chat { "chat.completion" } else { "text_completion" };
    let mut body = json!({
        "id": head.id, "object": object, "created": head.created, "model": opts.model_id, "choices": choices, "usage": usage,
    });
    if endpoint == Endpoint::Chat {
        if lp.prompt.is_some() {
            body["prompt_logprobs"] = prompt_logprobs;
        }
        if lp.token_ids {
            body["prompt_token_ids"] = json!(prompts[0]);
        }
    }
    Ok(Json(body).into_response())
}
