//! Reading a request: its JSON body, the sampling fields both endpoints share, the prompts of
//! `/v1/completions` and the messages of `/v1/chat/completions`, their sizes, tokenized. What a request can be
//! refused for by its fields and by the size of its prompts (a 400 in OpenAI's format, or a 404 for another
//! model) is found here, before the request waits for the model; fields that would change the answer and
//! cannot be honoured are refused, not ignored. Tokenizing runs later, in the request's turn (`admission`),
//! and the tokens are checked against the context and the token budget then (`generate`).

use super::generate::Endpoint;
use super::logprobs::LogprobRequest;
use super::{ApiError, OpenAiState, MAX_PROMPT_BYTES_PER_TOKEN, MAX_SEQUENCES, MAX_STOP, MAX_STOP_BYTES};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use lm::model::LanguageModel;
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// The request body as a JSON object; axum's plain-text rejections (too large, unreadable) become OpenAI errors.
pub(super) fn parse_body(body: Result<Bytes, BytesRejection>) -> Result<Map<String, Value>, ApiError> {
    let bytes = body.map_err(|r| ApiError { status: r.status(), ..ApiError::invalid(r.body_text(), None) })?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(ApiError::invalid("the request body must be a JSON object", None)),
        Err(e) => Err(ApiError::invalid(
            format!("we could not parse the JSON body of your request ({e}); send a JSON object"),
            None,
        )),
    }
}

/// Field `name` of `obj` as a `T`; absent and `null` are `None`.
fn field<T: serde::de::DeserializeOwned>(obj: &Map<String, Value>, name: &str) -> Result<Option<T>, ApiError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => T::deserialize(v)
            .map(Some)
            .map_err(|e| ApiError::invalid(format!("invalid value for `{name}`: {e}"), Some(name))),
    }
}

/// The sampling fields shared by both endpoints, validated.
#[derive(Clone)]
pub(super) struct SamplingRequest {
    /// The model the request names: the base or a loaded adapter.
    pub(super) model: Arc<LanguageModel>,
    pub(super) model_id: String,
    /// Log-probs and token ids wanted besides the text.
    pub(super) logprobs: LogprobRequest,
    /// Requested completion length and the field it came from; `None` means the endpoint's default.
    pub(super) max_tokens: Option<(usize, &'static str)>,
    pub(super) default_max_tokens: usize,
    pub(super) temperature: f64,
    pub(super) top_p: f64,
    pub(super) top_k: usize,
    pub(super) n: usize,
    pub(super) seed: u64,
    pub(super) stop: Vec<String>,
    /// Answer with server-sent events as the text is sampled.
    pub(super) stream: bool,
    /// With `stream`: end with a chunk that carries `usage` (`stream_options.include_usage`).
    pub(super) include_usage: bool,
}

impl SamplingRequest {
    pub(super) fn parse(
        obj: &Map<String, Value>,
        s: &OpenAiState,
        endpoint: Endpoint,
        max_names: &[&'static str],
        default_max_tokens: usize,
    ) -> Result<Self, ApiError> {
        let model_id = match field::<String>(obj, "model")? {
            None => {
                return Err(ApiError::invalid(
                    format!("you must provide a model parameter (this server serves `{}`)", s.model_id),
                    Some("model"),
                ))
            }
            Some(m) => m,
        };
        let model = s.resolve(&model_id)?;
        reject_unsupported(obj)?;
        let mut max_tokens = None;
        for &name in max_names {
            if let Some(m) = field::<u64>(obj, name)? {
                max_tokens = Some((usize::try_from(m).unwrap_or(usize::MAX), name));
                break;
            }
        }
        let temperature = field::<f64>(obj, "temperature")?.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid(
                format!("`temperature` must be between 0 and 2, got {temperature}"),
                Some("temperature"),
            ));
        }
        let top_p = field::<f64>(obj, "top_p")?.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&top_p) {
            return Err(ApiError::invalid(format!("`top_p` must be between 0 and 1, got {top_p}"), Some("top_p")));
        }
        // vLLM's extension; -1 is its spelling of "no filter".
        let top_k = match field::<i64>(obj, "top_k")? {
            None | Some(-1) | Some(0) => 0,
            Some(k) if k > 0 => k as usize,
            Some(k) => {
                return Err(ApiError::invalid(format!("`top_k` must be -1, 0 or positive, got {k}"), Some("top_k")))
            }
        };
        let n = field::<u64>(obj, "n")?.unwrap_or(1);
        if n == 0 || n > MAX_SEQUENCES as u64 {
            return Err(ApiError::invalid(format!("`n` must be between 1 and {MAX_SEQUENCES}, got {n}"), Some("n")));
        }
        // OpenAI's seed is any 64-bit integer, negative ones included.
        let seed = match obj.get("seed") {
            None | Some(Value::Null) => rand::random::<u64>(),
            Some(Value::Number(x)) if x.as_u64().is_some() => x.as_u64().unwrap_or_default(),
            Some(Value::Number(x)) if x.as_i64().is_some() => x.as_i64().unwrap_or_default() as u64,
            Some(v) => return Err(ApiError::invalid(format!("`seed` must be an integer, got {v}"), Some("seed"))),
        };
        let stop = match obj.get("stop") {
            None | Some(Value::Null) => vec![],
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| ApiError::invalid("`stop` must be a string or an array of strings", Some("stop")))?,
            Some(_) => return Err(ApiError::invalid("`stop` must be a string or an array of strings", Some("stop"))),
        };
        if stop.len() > MAX_STOP {
            return Err(ApiError::invalid(
                format!("at most {MAX_STOP} stop strings are allowed, got {}", stop.len()),
                Some("stop"),
            ));
        }
        if let Some(long) = stop.iter().find(|s| s.len() > MAX_STOP_BYTES) {
            return Err(ApiError::invalid(
                format!("a stop string may have at most {MAX_STOP_BYTES} bytes, got one of {}", long.len()),
                Some("stop"),
            ));
        }
        // An empty stop string would match at once; OpenAI ignores it too.
        let stop = stop.into_iter().filter(|s| !s.is_empty()).collect();
        let stream = field::<bool>(obj, "stream")?.unwrap_or(false);
        let include_usage = match obj.get("stream_options") {
            None | Some(Value::Null) => false,
            Some(_) if !stream => {
                return Err(ApiError::invalid(
                    "`stream_options` is only allowed with `stream: true`",
                    Some("stream_options"),
                ))
            }
            Some(Value::Object(o)) => match o.get("include_usage") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(v) => {
                    return Err(ApiError::invalid(
                        format!("`stream_options.include_usage` must be a boolean, got {v}"),
                        Some("stream_options"),
                    ))
                }
            },
            Some(v) => {
                return Err(ApiError::invalid(
                    format!("`stream_options` must be an object, got {v}"),
                    Some("stream_options"),
                ))
            }
        };
        let logprobs = LogprobRequest::parse(obj, endpoint, stream)?;
        if max_tokens.is_some_and(|(m, _)| m == 0) && !logprobs.echo {
            let name = max_tokens.map_or("max_tokens", |(_, n)| n);
            return Err(ApiError::invalid(
                format!("`{name}` must be at least 1 (0 is allowed only with `echo`, to score the prompt)"),
                Some(name),
            ));
        }
        Ok(Self {
            model,
            model_id,
            logprobs,
            max_tokens,
            default_max_tokens,
            temperature,
            top_p,
            top_k,
            n: n as usize,
            seed,
            stop,
            stream,
            include_usage,
        })
    }
}

/// Fields that would change the shape or meaning of the answer and that this server cannot honour.
fn reject_unsupported(obj: &Map<String, Value>) -> Result<(), ApiError> {
    let truthy = |name: &str| match obj.get(name) {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Number(n)) => name != "best_of" || n.as_u64().is_none_or(|b| b > 1),
        Some(_) => true,
    };
    for name in ["suffix", "best_of"] {
        if truthy(name) {
            return Err(ApiError::unsupported(format!("`{name}` is not supported by this server"), name));
        }
    }
    Ok(())
}

/// One `prompt` of `/v1/completions`: text, or token ids as OpenAI also allows.
pub(super) enum PromptInput {
    Text(String),
    Tokens(Vec<u32>),
}

pub(super) fn parse_prompt(obj: &Map<String, Value>) -> Result<Vec<PromptInput>, ApiError> {
    let bad = || {
        ApiError::invalid(
            "`prompt` must be a string, an array of strings, an array of token ids or an array of such arrays",
            Some("prompt"),
        )
    };
    let tokens = |v: &Value| -> Option<Vec<u32>> {
        v.as_array()?.iter().map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok())).collect()
    };
    let prompts = match obj.get("prompt") {
        None | Some(Value::Null) => return Err(ApiError::invalid("you must provide a `prompt`", Some("prompt"))),
        Some(Value::String(s)) => vec![PromptInput::Text(s.clone())],
        Some(Value::Array(a)) if a.is_empty() => {
            return Err(ApiError::invalid("`prompt` is an empty array", Some("prompt")))
        }
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
            a.iter().map(|v| PromptInput::Text(v.as_str().unwrap_or_default().to_string())).collect()
        }
        Some(v @ Value::Array(a)) if a.iter().all(Value::is_number) => {
            vec![PromptInput::Tokens(tokens(v).ok_or_else(bad)?)]
        }
        Some(Value::Array(a)) if a.iter().all(Value::is_array) => {
            a.iter().map(|v| tokens(v).map(PromptInput::Tokens).ok_or_else(bad)).collect::<Result<_, _>>()?
        }
        Some(_) => return Err(bad()),
    };
    Ok(prompts)
}

/// Refuses, before any tokenizing, a prompt that cannot fit the model's context of `ctx` tokens: a text of
/// more than [`MAX_PROMPT_BYTES_PER_TOKEN`] bytes a position, or `ctx` token ids or more.
pub(super) fn check_prompt_sizes(prompts: &[PromptInput], ctx: usize) -> Result<(), ApiError> {
    for (i, p) in prompts.iter().enumerate() {
        match p {
            PromptInput::Text(t) => check_text_size(t.len(), ctx, &format!("prompt {i}"), "prompt")?,
            PromptInput::Tokens(ids) if ids.len() >= ctx => return Err(no_room(ctx, ids.len(), "prompt")),
            PromptInput::Tokens(_) => {}
        }
    }
    Ok(())
}

/// [`check_prompt_sizes`] for a conversation: the text of all its messages together (the chat template only
/// adds to it).
pub(super) fn check_messages_size(messages: &[Value], ctx: usize) -> Result<(), ApiError> {
    let bytes = messages.iter().map(|m| m["content"].as_str().map_or(0, str::len)).sum();
    check_text_size(bytes, ctx, "the messages' text", "messages")
}

fn check_text_size(bytes: usize, ctx: usize, what: &str, param: &str) -> Result<(), ApiError> {
    let limit = ctx.saturating_mul(MAX_PROMPT_BYTES_PER_TOKEN);
    if bytes > limit {
        return Err(ApiError::context(
            format!(
                "{what} has {bytes} bytes; this model's maximum context length is {ctx} tokens, so this server \
                 takes at most {limit} bytes ({MAX_PROMPT_BYTES_PER_TOKEN} per token) of prompt text; shorten it"
            ),
            param,
        ));
    }
    Ok(())
}

/// A prompt of `tokens` tokens that leaves no room for a completion in a context of `ctx`.
pub(super) fn no_room(ctx: usize, tokens: usize, param: &str) -> ApiError {
    ApiError::context(
        format!(
            "this model's maximum context length is {ctx} tokens, but the prompt has {tokens} tokens, leaving no \
             room for a completion; shorten the prompt"
        ),
        param,
    )
}

pub(super) fn tokenize_prompt(model: &LanguageModel, p: PromptInput) -> Result<Vec<u32>, ApiError> {
    match p {
        PromptInput::Text(t) => encode(model, &t),
        PromptInput::Tokens(ids) => {
            let vocab = model.config.vocab_size;
            if let Some(&bad) = ids.iter().find(|&&t| t as usize >= vocab) {
                return Err(ApiError::invalid(
                    format!("token id {bad} in `prompt` is outside the model's vocabulary of {vocab}"),
                    Some("prompt"),
                ));
            }
            Ok(ids)
        }
    }
}

fn encode(model: &LanguageModel, text: &str) -> Result<Vec<u32>, ApiError> {
    model.tokenizer.encode(text).map_err(|e| ApiError::invalid(format!("tokenizing the prompt failed: {e:#}"), None))
}

/// Chat messages reduced to `{role, content}` with text content, the shape chat templates expect.
pub(super) fn parse_messages(obj: &Map<String, Value>) -> Result<Vec<Value>, ApiError> {
    let param = Some("messages");
    let list = match obj.get("messages") {
        None | Some(Value::Null) => return Err(ApiError::invalid("you must provide `messages`", param)),
        Some(Value::Array(a)) if a.is_empty() => {
            return Err(ApiError::invalid("`messages` must contain at least one message", param))
        }
        Some(Value::Array(a)) => a,
        Some(_) => return Err(ApiError::invalid("`messages` must be an array of {role, content} objects", param)),
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let role = match m.get("role").and_then(Value::as_str) {
            // Newer clients send OpenAI's `developer` role where chat templates only know `system`.
            Some("developer") | Some("system") => "system",
            Some(r @ ("user" | "assistant" | "tool")) => r,
            Some(r) => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role {r:?} is not one of system, developer, user, assistant, tool"),
                    param,
                ))
            }
            None => return Err(ApiError::invalid(format!("messages[{i}] needs a string `role`"), param)),
        };
        let content = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            // Content parts: only text can be fed to a text-only model.
            Some(Value::Array(parts)) => {
                let mut texts = Vec::with_capacity(parts.len());
                for p in parts {
                    match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                        (Some("text"), Some(t)) => texts.push(t),
                        (kind, _) => {
                            return Err(ApiError::unsupported(
                                format!(
                                    "messages[{i}] has a content part of type {}; this server takes text parts only",
                                    kind.unwrap_or("(none)")
                                ),
                                "messages",
                            ))
                        }
                    }
                }
                texts.join("\n")
            }
            _ => return Err(ApiError::invalid(format!("messages[{i}] needs a string `content`"), param)),
        };
        out.push(json!({"role": role, "content": content}));
    }
    Ok(out)
}

/// The prompt tokens of a conversation: the model's chat template, where only the template's own
/// scaffolding becomes control tokens (a message that spells `<|im_end|>` cannot close its turn), or a plain
/// transcript when the model has no template.
pub(super) fn tokenize_chat(model: &LanguageModel, messages: &[Value]) -> Result<Vec<u32>, ApiError> {
    let tok = &model.tokenizer;
    if tok.chat_template.is_none() {
        return encode(model, &transcript(messages));
    }
    let chat = tok.render_chat(&Value::Array(messages.to_vec()), true).map_err(|e| {
        ApiError::invalid(format!("the model's chat template rejected the messages: {e:#}"), Some("messages"))
    })?;
    // A BOS first only if the model adds one and the template did not write it.
    tok.encode_chat_text(&chat, true)
        .map_err(|e| ApiError::invalid(format!("tokenizing the prompt failed: {e:#}"), None))
}

/// A plain transcript for models without a chat template.
fn transcript(messages: &[Value]) -> String {
    let mut text = String::new();
    for m in messages {
        text.push_str(&format!(
            "{}: {}\n",
            m["role"].as_str().unwrap_or_default(),
            m["content"].as_str().unwrap_or_default()
        ));
    }
    text.push_str("assistant:");
    text
}

pub(super) fn too_many_sequences(prompts: usize, n: usize) -> ApiError {
    ApiError::invalid(
        format!(
            "{prompts} prompt(s) × n = {n} asks for {} sequences; at most {MAX_SEQUENCES} per request",
            prompts * n
        ),
        Some("n"),
    )
}
