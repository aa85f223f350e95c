//! OpenAI-compatible endpoints serving one [`LanguageModel`] (and LoRA adapters over it): `GET /v1/models`,
//! `POST /v1/completions` and `POST /v1/chat/completions`, and vLLM's adapter routes.
//!
//! Why: the LLM-judge oracle (`oracle::judge`) talks to any OpenAI-compatible chat endpoint, so serving a local
//! model here lets a run use a local judge without another inference stack; and a tuned checkpoint can be tried
//! with any OpenAI client (the `openai` Python package, curl, chat UIs) by pointing its base URL at this server.
//!
//! What is served is whatever model the caller built (a base model, a merged checkpoint of a run); this module
//! knows nothing of runs. Behaviour, as close to OpenAI's as a single CPU-bound model allows:
//! - `model` must name the served model or a loaded adapter (404 `model_not_found` otherwise, saying which are
//!   served).
//! - Sampling: `temperature` (0 = greedy, ≤ 2), `top_p`, `n`, `seed` (same seed, same text), `stop` (up to 4
//!   strings of at most [`MAX_STOP_BYTES`] bytes; sampling of a choice ends at the token that completes one, the text is cut before it and
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
//! - vLLM's dialect (`logprobs`, `models`): log-probs of sampled tokens and of prompts (`logprobs`,
//!   `top_logprobs`, `echo`, `prompt_logprobs`), token ids both ways (`return_tokens_as_token_ids`,
//!   `return_token_ids`, token-id prompts), and LoRA adapters loaded and unloaded at run time
//!   (`/v1/load_lora_adapter`, `/v1/unload_lora_adapter`), each served under its own name beside the base.
//!   A client that samples and scores through vLLM (activepref's `openai` policy backend) works here too.
//! - Refused with a 400 rather than silently ignored, because they would change what the client gets back:
//!   `suffix`, `best_of` > 1, `tools`, non-text message parts, chat's `echo`, and log-probs with streaming.
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
//!
//! What one request may cost is bounded before the model does any of it, since one turn holds the only
//! model:
//! - A text prompt (or the messages' text) longer than [`MAX_PROMPT_BYTES_PER_TOKEN`] bytes per position of
//!   the context cannot fit, and is refused by its size (`context_length_exceeded`) without being tokenized;
//!   a token-id prompt that does not fit is refused before waiting too. Tokenizing, which is work for the
//!   model, happens in the request's turn, so a flood of prompts meets the waiting limit before the tokenizer.
//! - Its token budget, n × (prompt tokens + completion tokens) summed over its prompts (the completion length
//!   being `max_tokens` or the endpoint's default), must be at most [`OpenAiState::max_request_tokens`]
//!   ([`DEFAULT_MAX_REQUEST_TOKENS`]); token-id prompts count as they are.
//! - A client that hangs up before its answer ends the generation at the next token, streaming or not, and
//!   the model is free for the next request.

mod admission;
mod endpoints;
mod error;
mod generate;
mod logprobs;
mod models;
mod request;
mod stream;

pub use error::ApiError;

use axum::middleware;
use axum::routing::{get, post};
use axum::Router;
use lm::model::LanguageModel;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// `max_tokens` of `/v1/completions` when the request gives none (OpenAI's default).
pub const DEFAULT_COMPLETION_MAX_TOKENS: usize = 16;
/// `max_tokens` of `/v1/chat/completions` when the request gives none, further capped by the room the prompt
/// leaves in the context (OpenAI has no fixed default; a cap keeps a CPU server from generating for minutes).
pub const DEFAULT_CHAT_MAX_TOKENS: usize = 256;
/// Most sequences (prompts × `n`) one request may ask for; each is a row of the sampling batch.
pub const MAX_SEQUENCES: usize = 64;
/// Most stop strings per request (OpenAI's limit).
pub const MAX_STOP: usize = 4;
/// Longest stop string, in bytes: each is searched for in a choice's text after every token, and held-back
/// text is matched against each of its prefixes, so the work grows with its square.
pub const MAX_STOP_BYTES: usize = 256;
/// Most bytes of prompt text per position of the model's context: a longer text cannot fit (a token of
/// English or code averages about 4 bytes; this allows twice that), so it is refused without tokenizing.
pub const MAX_PROMPT_BYTES_PER_TOKEN: usize = 8;
/// Most tokens one request may ask the model to process by default: n × (prompt + completion), summed over
/// its prompts. 64 sequences of 512 tokens, or 4 of a full 8192-token context.
pub const DEFAULT_MAX_REQUEST_TOKENS: usize = 32_768;
/// Most requests waiting for the model while another generates (see the module docs).
pub const DEFAULT_MAX_WAITING: usize = 64;

/// Most adapters loaded at once by default: each is a merged copy of the model's weights.
pub const DEFAULT_MAX_ADAPTERS: usize = 4;
/// Most top log-probs per position a request may ask for (vLLM's `--max-logprobs` default).
pub const MAX_LOGPROBS: usize = 20;

/// What the OpenAI router serves, shared by all requests.
pub struct OpenAiState {
    /// The base model.
    pub model: Arc<LanguageModel>,
    /// The name clients put in `model` and that `/v1/models` lists.
    pub model_id: String,
    /// Whether `POST /v1/load_lora_adapter` and `/v1/unload_lora_adapter` may change the served adapters
    /// (vLLM's `VLLM_ALLOW_RUNTIME_LORA_UPDATING`).
    pub allow_lora_loading: bool,
    /// Most adapters loaded at once.
    pub max_adapters: usize,
    /// The adapters loaded at run time, each served under its own name.
    adapters: std::sync::RwLock<Vec<models::Loaded>>,
    /// When set, every request needs `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Rows per forward pass when a request asks for several sequences.
    pub batch_size: usize,
    /// Most requests that may wait for the model; one more gets a 429.
    pub max_waiting: usize,
    /// Most tokens one request may ask for: n × (prompt + completion tokens), summed over its prompts.
    pub max_request_tokens: usize,
    /// One permit: generations run one at a time (see the module docs).
    busy: Arc<Semaphore>,
    /// Requests waiting for the permit now.
    waiting: Arc<AtomicUsize>,
}

impl OpenAiState {
    /// Serves `model` under the name `model_id`, without an API key, 8 sequences per batch.
    pub fn new(model: LanguageModel, model_id: impl Into<String>) -> Self {
        Self {
            model: Arc::new(model),
            model_id: model_id.into(),
            allow_lora_loading: false,
            max_adapters: DEFAULT_MAX_ADAPTERS,
            adapters: Default::default(),
            api_key: None,
            batch_size: 8,
            max_waiting: DEFAULT_MAX_WAITING,
            max_request_tokens: DEFAULT_MAX_REQUEST_TOKENS,
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

    /// Sets the most tokens one request may ask for (n × (prompt + completion tokens), summed over its
    /// prompts); a request over it gets a 400.
    pub fn with_max_request_tokens(mut self, max_request_tokens: usize) -> Self {
        self.max_request_tokens = max_request_tokens;
        self
    }

    /// Lets clients load and unload LoRA adapters (PEFT directories the server can read), at most
    /// `max_adapters` at once.
    pub fn with_lora_loading(mut self, allow: bool, max_adapters: usize) -> Self {
        self.allow_lora_loading = allow;
        self.max_adapters = max_adapters;
        self
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
    use admission::{method_not_allowed, require_api_key};
    use endpoints::{chat_completions, completions};
    use models::{list_models, load_lora_adapter, unload_lora_adapter};
    Router::new()
        .route("/v1/models", get(list_models).fallback(method_not_allowed))
        .route("/v1/load_lora_adapter", post(load_lora_adapter).fallback(method_not_allowed))
        .route("/v1/unload_lora_adapter", post(unload_lora_adapter).fallback(method_not_allowed))
        .route("/v1/completions", post(completions).fallback(method_not_allowed))
        .route("/v1/chat/completions", post(chat_completions).fallback(method_not_allowed))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_api_key))
        .with_state(state)
}
