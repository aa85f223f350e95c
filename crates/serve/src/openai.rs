//! OpenAI-compatible endpoints serving one [`LanguageModel`]: `GET /v1/models`, `POST /v1/completions` and
//! `POST /v1/chat/completions`.
//!
//! Why: the LLM-judge oracle (`oracle::judge`) talks to any OpenAI-compatible chat endpoint, so serving a local
//! model here lets a run use a local judge without another inference stack; and a tuned checkpoint can be tried
//! with any OpenAI client (the `openai` Python package, curl, chat UIs) by pointing its base URL at this server.
//!
//! What is served is whatever model the caller built (a base model, a merged checkpoint of a run); this module
//! knows nothing of runs. Behaviour, as close to OpenAI's as a single CPU-bound model allows:
//! - `model` must name the served model (404 `model_not_found` otherwise, saying which one is served).
//! - Sampling: `temperature` (0 = greedy, ≤ 2), `top_p`, `n`, `seed` (same seed, same text), `stop` (up to 4
//!   strings; sampling of a choice ends at the token that completes one, the text is cut before it and
//!   `finish_reason` is `"stop"`), `max_tokens`
//!   (`max_completion_tokens` too for chat) and, as vLLM does, `top_k`. Without a seed each request draws one.
//!   The model's EOS ends a choice with `"stop"`; running out of tokens gives `"length"`. Special tokens are
//!   dropped from the text.
//! - Chat messages are rendered with the model's chat template; a model without one (a base GPT-2, the tiny
//!   test models built without a template) gets a plain `role: content` transcript ending in `assistant:`.
//! - `usage` counts tokens as the model sees them: every prompt once, and the generated tokens of every choice
//!   up to (and including) a stop string or EOS.
//! - `stream: true` answers with server-sent events as OpenAI does: `chat.completion.chunk` (or `text_completion`)
//!   chunks carrying each choice's new text as it is sampled, a last chunk per choice with its `finish_reason`,
//!   with `stream_options.include_usage` a final chunk with `usage` and no choices, then `data: [DONE]`. The
//!   streamed text of a choice equals the text the same request gets without streaming. Text that might be
//!   the start of a stop string, or half of a multi-byte character, is held back until it is known. A client
//!   that hangs up ends the generation.
//! - Refused with a 400 rather than silently ignored, because they would change what the client gets back:
//!   `logprobs`/`top_logprobs`, `echo`, `suffix`, `best_of` > 1, `tools`, non-text message parts.
//!   Penalties, `logit_bias`, `user` and other fields are accepted and ignored.
//! - Errors use OpenAI's body, `{"error": {"message", "type", "param", "code"}}`, including malformed JSON,
//!   an oversized body, a prompt that does not fit the model's context (`context_length_exceeded`) and a
//!   missing or wrong API key (401, only when the state has a key).
//!
//! Generation is CPU-bound, so it runs on tokio's blocking pool, one request at a time: two generations at once
//! would only fight over the same cores and both finish later. At most [`DEFAULT_MAX_WAITING`] requests wait
//! their turn; more get a 429 `rate_limit_exceeded` with `Retry-After`, which OpenAI clients (and our judge)
//! retry, rather than an ever longer queue whose clients time out while their work is still to be done. A panic inside tokenization or generation
//! becomes a 500 for that request; the server keeps serving.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use lm::model::LanguageModel;
use lm::sample::{generate_watched, Sample, SampleParams};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// `max_tokens` of `/v1/completions` when the request gives none (OpenAI's default).
pub const DEFAULT_COMPLETION_MAX_TOKENS: usize = 16;
/// `max_tokens` of `/v1/chat/completions` when the request gives none, further capped by the room the prompt
/// leaves in the context (OpenAI has no fixed default; a cap keeps a CPU server from generating for minutes).
pub const DEFAULT_CHAT_MAX_TOKENS: usize = 256;
/// Most sequences (prompts × `n`) one request may ask for; each is a row of the sampling batch.
pub const MAX_SEQUENCES: usize = 64;
/// Most stop strings per request (OpenAI's limit).
pub const MAX_STOP: usize = 4;
/// Most requests waiting for the model while another generates (see the module docs).
pub const DEFAULT_MAX_WAITING: usize = 64;

/// What the OpenAI router serves, shared by all requests.
pub struct OpenAiState {
    pub model: LanguageModel,
    /// The name clients put in `model` and that `/v1/models` lists.
    pub model_id: String,
    /// When set, every request needs `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Rows per forward pass when a request asks for several sequences.
    pub batch_size: usize,
    /// Most requests that may wait for the model; one more gets a 429.
    pub max_waiting: usize,
    /// One permit: generations run one at a time (see the module docs).
    busy: Arc<Semaphore>,
    /// Requests waiting for the permit now.
    waiting: Arc<AtomicUsize>,
}

impl OpenAiState {
    /// Serves `model` under the name `model_id`, without an API key, 8 sequences per batch.
    pub fn new(model: LanguageModel, model_id: impl Into<String>) -> Self {
        Self {
            model,
            model_id: model_id.into(),
            api_key: None,
            batch_size: 8,
            max_waiting: DEFAULT_MAX_WAITING,
            busy: Arc::new(Semaphore::new(1)),
            waiting: Arc::default(),
        }
    }

    /// Requires `Authorization: Bearer <key>` on every request when `key` is `Some`.
    pub fn with_api_key(mut self, key: Option<String>) -> Self {
        self.api_key = key;
        self
    }

    /// Sets how many requests may wait for the model (0 = none: a request that finds it busy gets a 429).
    pub fn with_max_waiting(mut self, max_waiting: usize) -> Self {
        self.max_waiting = max_waiting;
        self
    }

    /// Waits for the model, or refuses at once when `max_waiting` requests already wait. The permit is the
    /// right to generate; it is released when dropped.
    async fn take_turn(&self) -> Result<OwnedSemaphorePermit, ApiError> {
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

    /// Sets how many sequences share one forward pass (at least 1).
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }
}

/// The OpenAI-compatible routes over `state`. It sets no router-wide fallback, so it can be merged with the
/// labeling router on one listener.
pub fn router(state: Arc<OpenAiState>) -> Router {
    Router::new()
        .route("/v1/models", get(list_models).fallback(method_not_allowed))
        .route("/v1/completions", post(completions).fallback(method_not_allowed))
        .route("/v1/chat/completions", post(chat_completions).fallback(method_not_allowed))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_api_key))
        .with_state(state)
}

/// An error answered in OpenAI's format.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: None,
        }
    }

    fn unsupported(message: impl Into<String>, param: &str) -> Self {
        Self { code: Some("unsupported_parameter"), ..Self::invalid(message, Some(param)) }
    }

    fn context(message: String, param: &str) -> Self {
        Self { code: Some("context_length_exceeded"), ..Self::invalid(message, Some(param)) }
    }

    fn server(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.message, "type": self.kind, "param": self.param, "code": self.code,
        }});
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

async fn require_api_key(State(s): State<Arc<OpenAiState>>, req: Request, next: Next) -> Response {
    let Some(key) = &s.api_key else { return next.run(req).await };
    let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::trim);
    let token = given.and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    let message = match token {
        None => "no API key given: send `Authorization: Bearer <key>` with the key this server was started with",
        // Comparing digests takes the same time wherever the keys differ and whatever their lengths.
        Some(t) if Sha256::digest(t.trim().as_bytes()) == Sha256::digest(key.as_bytes()) => return next.run(req).await,
        Some(_) => "incorrect API key provided",
    };
    ApiError { status: StatusCode::UNAUTHORIZED, code: Some("invalid_api_key"), ..ApiError::invalid(message, None) }
        .into_response()
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        ..ApiError::invalid(format!("{} is not allowed on {}", req.method(), req.uri().path()), None)
    }
}

async fn list_models(State(s): State<Arc<OpenAiState>>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{"id": s.model_id, "object": "model", "created": 0, "owned_by": "activepref"}],
    }))
}

async fn completions(
    State(s): State<Arc<OpenAiState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let obj = parse_body(body)?;
    let opts = SamplingRequest::parse(&obj, &s, &["max_tokens"], DEFAULT_COMPLETION_MAX_TOKENS)?;
    let prompts = parse_prompt(&obj)?;
    if prompts.len() * opts.n > MAX_SEQUENCES {
        return Err(too_many_sequences(prompts.len(), opts.n));
    }
    let st = s.clone();
    let ids = blocking(move || prompts.into_iter().map(|p| tokenize_prompt(&st.model, p)).collect()).await?;
    answer(&s, ids, &opts, "prompt", Endpoint::Completions).await
}

async fn chat_completions(
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
    let st = s.clone();
    let ids = blocking(move || {
        let text = render_chat(&st.model, &messages)?;
        let mut ids = encode(&st.model, &text)?;
        // Templates that write the BOS token themselves would otherwise get a second one from the tokenizer.
        if let Some(bos) = st.model.tokenizer.bos_token_id {
            if ids.len() >= 2 && ids[0] == bos && ids[1] == bos {
                ids.remove(0);
            }
        }
        Ok(vec![ids])
    })
    .await?;
    answer(&s, ids, &opts, "messages", Endpoint::Chat).await
}

/// Samples the tokenized prompts and answers as the endpoint does: one JSON body, or a stream of chunks.
async fn answer(
    s: &Arc<OpenAiState>,
    prompts: Vec<Vec<u32>>,
    opts: &SamplingRequest,
    prompt_param: &'static str,
    endpoint: Endpoint,
) -> Result<Response, ApiError> {
    let job = Job::new(s, prompts, opts, prompt_param)?;
    let head = ChunkHead::new(endpoint, &s.model_id, opts.include_usage);
    if opts.stream {
        return stream_generation(s, job, head).await;
    }
    let (usage, choices) = run_generation(s, job).await?;
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

/// The request body as a JSON object; axum's plain-text rejections (too large, unreadable) become OpenAI errors.
fn parse_body(body: Result<Bytes, BytesRejection>) -> Result<Map<String, Value>, ApiError> {
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
#[derive(Debug, Clone)]
struct SamplingRequest {
    /// Requested completion length and the field it came from; `None` means the endpoint's default.
    max_tokens: Option<(usize, &'static str)>,
    default_max_tokens: usize,
    temperature: f64,
    top_p: f64,
    top_k: usize,
    n: usize,
    seed: u64,
    stop: Vec<String>,
    /// Answer with server-sent events as the text is sampled.
    stream: bool,
    /// With `stream`: end with a chunk that carries `usage` (`stream_options.include_usage`).
    include_usage: bool,
}

impl SamplingRequest {
    fn parse(
        obj: &Map<String, Value>,
        s: &OpenAiState,
        max_names: &[&'static str],
        default_max_tokens: usize,
    ) -> Result<Self, ApiError> {
        match field::<String>(obj, "model")? {
            None => {
                return Err(ApiError::invalid(
                    format!("you must provide a model parameter (this server serves `{}`)", s.model_id),
                    Some("model"),
                ))
            }
            Some(m) if m != s.model_id => {
                return Err(ApiError {
                    status: StatusCode::NOT_FOUND,
                    code: Some("model_not_found"),
                    ..ApiError::invalid(
                        format!("the model `{m}` does not exist; this server serves `{}`", s.model_id),
                        Some("model"),
                    )
                })
            }
            Some(_) => {}
        }
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
        Ok(Self {
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
    for name in ["logprobs", "top_logprobs", "echo", "suffix", "best_of"] {
        if truthy(name) {
            return Err(ApiError::unsupported(format!("`{name}` is not supported by this server"), name));
        }
    }
    Ok(())
}

/// One `prompt` of `/v1/completions`: text, or token ids as OpenAI also allows.
enum PromptInput {
    Text(String),
    Tokens(Vec<u32>),
}

fn parse_prompt(obj: &Map<String, Value>) -> Result<Vec<PromptInput>, ApiError> {
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

fn tokenize_prompt(model: &LanguageModel, p: PromptInput) -> Result<Vec<u32>, ApiError> {
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
fn parse_messages(obj: &Map<String, Value>) -> Result<Vec<Value>, ApiError> {
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

/// The prompt text of a conversation: the model's chat template, or a plain transcript when it has none.
fn render_chat(model: &LanguageModel, messages: &[Value]) -> Result<String, ApiError> {
    if model.tokenizer.chat_template.is_some() {
        return model.tokenizer.apply_chat_template(&Value::Array(messages.to_vec()), true).map_err(|e| {
            ApiError::invalid(format!("the model's chat template rejected the messages: {e:#}"), Some("messages"))
        });
    }
    let mut text = String::new();
    for m in messages {
        text.push_str(&format!(
            "{}: {}\n",
            m["role"].as_str().unwrap_or_default(),
            m["content"].as_str().unwrap_or_default()
        ));
    }
    text.push_str("assistant:");
    Ok(text)
}

fn too_many_sequences(prompts: usize, n: usize) -> ApiError {
    ApiError::invalid(
        format!(
            "{prompts} prompt(s) × n = {n} asks for {} sequences; at most {MAX_SEQUENCES} per request",
            prompts * n
        ),
        Some("n"),
    )
}

/// One generated choice, ready for the response.
struct Choice {
    text: String,
    finish_reason: &'static str,
}

/// A checked generation: the rows to sample (prompt-major, `n` per prompt) and how.
struct Job {
    rows: Vec<Vec<u32>>,
    params: SampleParams,
    stop: Vec<String>,
    prompt_tokens: usize,
}

impl Job {
    /// Checks the prompts against the context and settles the completion length.
    fn new(
        s: &OpenAiState,
        prompts: Vec<Vec<u32>>,
        opts: &SamplingRequest,
        prompt_param: &'static str,
    ) -> Result<Self, ApiError> {
        let ctx = s.model.config.max_position;
        for (i, p) in prompts.iter().enumerate() {
            if p.is_empty() {
                return Err(ApiError::invalid(
                    format!("prompt {i} is empty: the model needs at least one token to condition on"),
                    Some(prompt_param),
                ));
            }
            if p.len() >= ctx {
                return Err(ApiError::context(
                    format!(
                        "this model's maximum context length is {ctx} tokens, but the prompt has {} tokens, leaving \
                         no room for a completion; shorten the prompt",
                        p.len()
                    ),
                    prompt_param,
                ));
            }
        }
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let max_new = match opts.max_tokens {
            Some((m, name)) => {
                if longest.saturating_add(m) > ctx {
                    return Err(ApiError::context(
                        format!(
                            "this model's maximum context length is {ctx} tokens, but you requested {} tokens \
                             ({longest} in the prompt; {m} for the completion); reduce the prompt or `{name}`",
                            longest.saturating_add(m)
                        ),
                        name,
                    ));
                }
                m
            }
            None => opts.default_max_tokens.min(ctx - longest),
        };
        let prompt_tokens = prompts.iter().map(Vec::len).sum();
        let rows = prompts.iter().flat_map(|p| std::iter::repeat_n(p.clone(), opts.n)).collect();
        let params = SampleParams {
            max_new_tokens: max_new,
            temperature: opts.temperature,
            top_k: opts.top_k,
            top_p: opts.top_p,
            seed: opts.seed,
            stop_at_eos: true,
        };
        Ok(Self { rows, params, stop: opts.stop.clone(), prompt_tokens })
    }

    /// Samples every row, calling `on_token` as [`generate_watched`] does (return `false` to end a row).
    fn sample(&self, st: &OpenAiState, on_token: impl FnMut(usize, &Sample) -> bool) -> Result<Vec<Sample>, ApiError> {
        generate_watched(&st.model, &self.rows, &self.params, None, st.batch_size, 0, |_| {}, on_token)
            .map_err(|e| ApiError::server(format!("generation failed: {e:#}")))
    }

    fn usage(&self, completion_tokens: usize) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        })
    }
}

/// Where a choice's text ends so far: at a stop string (`finish` "stop"), at EOS ("stop"), at the length limit
/// ("length"), or — while it goes on — before any tail that may still turn into a stop string or is half a
/// character, so that nothing sent needs taking back.
fn text_end(text: &str, sample: &Sample, max_new: usize, stop: &[String]) -> (usize, Option<&'static str>) {
    if let Some(cut) = stop.iter().filter_map(|s| text.find(s.as_str())).min() {
        return (cut, Some("stop"));
    }
    if sample.stopped_at_eos {
        return (text.len(), Some("stop"));
    }
    if sample.tokens.len() >= max_new {
        return (text.len(), Some("length"));
    }
    // A byte-level tokenizer can end a token inside a character; the decoder shows U+FFFD until it is whole.
    let mut end = text.len();
    while text[..end].ends_with('\u{FFFD}') {
        end -= '\u{FFFD}'.len_utf8();
    }
    let held = stop
        .iter()
        .filter_map(|s| (1..s.len()).rev().find(|&k| s.is_char_boundary(k) && text[..end].ends_with(&s[..k])))
        .max()
        .unwrap_or(0);
    (end - held, None)
}

/// Samples the job's rows (one request at a time) and returns the `usage` object with the choices,
/// prompt-major as OpenAI orders them. A choice stops sampling at the token that completes a stop string.
async fn run_generation(s: &Arc<OpenAiState>, job: Job) -> Result<(Value, Vec<Choice>), ApiError> {
    // The permit moves into the blocking task, so a client that hangs up mid-generation still holds the model
    // until its generation is finished, and the next request never runs beside it.
    let permit = s.take_turn().await?;
    let st = s.clone();
    blocking(move || {
        let _permit = permit;
        let model = &st.model;
        let decode = |ids: &[u32]| {
            model.tokenizer.decode(ids, true).map_err(|e| ApiError::server(format!("decoding the completion: {e:#}")))
        };
        let max_new = job.params.max_new_tokens;
        let samples = job.sample(&st, |_, smp| {
            // Only a stop string needs the text; an undecodable prefix is reported below, from the whole sample.
            job.stop.is_empty()
                || decode(&smp.tokens).map_or(true, |t| text_end(&t, smp, max_new, &job.stop).1.is_none())
        })?;
        let mut choices = Vec::with_capacity(samples.len());
        let mut completion_tokens = 0;
        for smp in &samples {
            let text = decode(&smp.tokens)?;
            let (end, finish) = text_end(&text, smp, max_new, &job.stop);
            completion_tokens += smp.tokens.len();
            let finish_reason = finish.unwrap_or("length");
            let text = if finish_reason == "stop" { text[..end].to_string() } else { text };
            choices.push(Choice { text, finish_reason });
        }
        Ok((job.usage(completion_tokens), choices))
    })
    .await
}

/// Which endpoint a response belongs to: it decides the chunk's `object` and where the text goes.
#[derive(Clone, Copy, PartialEq)]
enum Endpoint {
    Completions,
    Chat,
}

/// What every response or chunk of one request shares.
struct ChunkHead {
    endpoint: Endpoint,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
}

impl ChunkHead {
    fn new(endpoint: Endpoint, model: &str, include_usage: bool) -> Self {
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

/// Answers with server-sent events while the job is sampled on the blocking pool (see the module docs).
/// Everything that can be refused has been by now; a failure mid-stream is sent as an `error` event.
async fn stream_generation(s: &Arc<OpenAiState>, job: Job, head: ChunkHead) -> Result<Response, ApiError> {
    let permit = s.take_turn().await?;
    let (tx, rx) = mpsc::unbounded_channel::<Event>();
    let st = s.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| stream_rows(&st, &job, &head, &tx)));
        let error = match outcome {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e,
            Err(_) => ApiError::server("internal error while generating (a panic; see the server's log)"),
        };
        let body =
            json!({"error": {"message": error.message, "type": error.kind, "param": error.param, "code": error.code}});
        let _ = tx.send(Event::default().data(body.to_string()));
    });
    let events =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx)) });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

/// Samples the job, sending each choice's text as it grows; then usage (if asked for) and `[DONE]`. A send
/// that fails means the client is gone: every row is ended, so the model is free again soon.
fn stream_rows(
    st: &OpenAiState,
    job: &Job,
    head: &ChunkHead,
    tx: &mpsc::UnboundedSender<Event>,
) -> Result<(), ApiError> {
    let model = &st.model;
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
    job.sample(st, |i, smp| {
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

/// Runs `f` on the blocking pool; a panic in it becomes a 500 for this request instead of a dropped
/// connection (the panic is still printed by the panic hook).
async fn blocking<T, F>(f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ApiError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(ApiError::server(format!("internal error while handling the request: {msg}")))
        }
        Err(e) => Err(ApiError::server(format!("the request's task was cancelled: {e}"))),
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_while_generating_is_a_500_not_a_crash() {
        let err = blocking::<(), _>(|| panic!("boom")).await.unwrap_err();
        assert_eq!(err.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(err.message.contains("boom"), "{}", err.message);
        // The runtime is still usable afterwards.
        assert_eq!(blocking(|| Ok(7)).await.unwrap(), 7);
    }
}
