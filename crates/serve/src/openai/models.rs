//! The served models: the base model under its id, and the LoRA adapters loaded at run time, each a model id
//! of its own, as vLLM serves them (`vllm/entrypoints/openai/serving_models.py`, v0.11.0):
//! - `POST /v1/load_lora_adapter` `{"lora_name", "lora_path"}` reads a PEFT adapter directory on the server's
//!   disk and serves the base with it merged as `lora_name`; it answers 200 with a plain-text line. A name that
//!   is already served is a 400 (a client that resumes unloads first, or uses a new name), a path that does
//!   not exist a 404, an adapter that cannot be applied a 400 naming why.
//! - `POST /v1/unload_lora_adapter` `{"lora_name"}` stops serving it (404 if it is not served). A generation
//!   that is using it finishes on its own copy.
//! - `GET /v1/models` lists the base and every adapter (`root` its path, `parent` the base's id).
//!
//! Loading is off unless the server was started to allow it (vLLM needs `VLLM_ALLOW_RUNTIME_LORA_UPDATING`),
//! since it makes the server read files that a client names; `activepref serve` allows it only with an API
//! key. Each adapter is a merged copy of the weights (one more model's memory), so at most
//! [`OpenAiState::max_adapters`] are loaded at once.

use super::generate::blocking;
use super::request::parse_body;
use super::{ApiError, OpenAiState};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use lm::model::LanguageModel;
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::sync::Arc;

/// An adapter being served.
pub(super) struct Loaded {
    id: String,
    root: PathBuf,
    model: Arc<LanguageModel>,
}

impl OpenAiState {
    /// The model a request names: the base, or a loaded adapter; a 404 `model_not_found` otherwise, listing
    /// what is served.
    pub(super) fn resolve(&self, name: &str) -> Result<Arc<LanguageModel>, ApiError> {
        if name == self.model_id {
            return Ok(self.model.clone());
        }
        let adapters = self.adapters.read().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = adapters.iter().find(|a| a.id == name) {
            return Ok(a.model.clone());
        }
        let served: Vec<String> =
            std::iter::once(&self.model_id).chain(adapters.iter().map(|a| &a.id)).map(|s| format!("`{s}`")).collect();
        Err(ApiError {
            status: StatusCode::NOT_FOUND,
            code: Some("model_not_found"),
            ..ApiError::invalid(
                format!("the model `{name}` does not exist; this server serves {}", served.join(", ")),
                Some("model"),
            )
        })
    }
}

pub(super) async fn list_models(State(s): State<Arc<OpenAiState>>) -> Json<Value> {
    let mut data = vec![json!({"id": s.model_id, "object": "model", "created": 0, "owned_by": "activepref"})];
    for a in s.adapters.read().unwrap_or_else(|e| e.into_inner()).iter() {
        data.push(json!({"id": a.id, "object": "model", "created": 0, "owned_by": "activepref",
            "root": a.root.display().to_string(), "parent": s.model_id}));
    }
    Json(json!({"object": "list", "data": data}))
}

pub(super) async fn load_lora_adapter(
    State(s): State<Arc<OpenAiState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<String, ApiError> {
    allowed(&s)?;
    let obj = parse_body(body)?;
    let name = lora_name(&obj)?;
    let path = match obj.get("lora_path") {
        Some(Value::String(p)) if !p.is_empty() => PathBuf::from(p),
        _ => return Err(ApiError::invalid("`lora_path` must be the adapter directory's path", Some("lora_path"))),
    };
    if name == s.model_id || s.adapters.read().unwrap_or_else(|e| e.into_inner()).iter().any(|a| a.id == name) {
        return Err(already_loaded(&name));
    }
    if !path.exists() {
        return Err(ApiError {
            status: StatusCode::NOT_FOUND,
            kind: "NotFoundError",
            ..ApiError::invalid(format!("no adapter found at {} (a path on the server)", path.display()), None)
        });
    }
    let st = s.clone();
    let dir = path.clone();
    let model = blocking(move || {
        lm::adapter::apply(&st.model, &dir)
            .map_err(|e| ApiError { kind: "BadRequestError", ..ApiError::invalid(format!("{e:#}"), Some("lora_path")) })
    })
    .await?;
    let mut adapters = s.adapters.write().unwrap_or_else(|e| e.into_inner());
    // Checked again: another request may have loaded the name while this one read the files.
    if adapters.iter().any(|a| a.id == name) {
        return Err(already_loaded(&name));
    }
    if adapters.len() >= s.max_adapters {
        return Err(ApiError::invalid(
            format!(
                "{} adapters are loaded, the most this server holds at once; unload one with \
                 /v1/unload_lora_adapter first",
                adapters.len()
            ),
            None,
        ));
    }
    adapters.push(Loaded { id: name.clone(), root: path, model: Arc::new(model) });
    Ok(format!("Success: LoRA adapter '{name}' added successfully."))
}

pub(super) async fn unload_lora_adapter(
    State(s): State<Arc<OpenAiState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<String, ApiError> {
    allowed(&s)?;
    let obj = parse_body(body)?;
    let name = lora_name(&obj)?;
    let mut adapters = s.adapters.write().unwrap_or_else(|e| e.into_inner());
    let Some(i) = adapters.iter().position(|a| a.id == name) else {
        return Err(ApiError {
            status: StatusCode::NOT_FOUND,
            kind: "NotFoundError",
            ..ApiError::invalid(format!("The lora adapter '{name}' cannot be found."), Some("lora_name"))
        });
    };
    adapters.remove(i);
    Ok(format!("Success: LoRA adapter '{name}' removed successfully."))
}

fn allowed(s: &OpenAiState) -> Result<(), ApiError> {
    if s.allow_lora_loading {
        return Ok(());
    }
    Err(ApiError {
        status: StatusCode::NOT_FOUND,
        ..ApiError::invalid(
            "loading adapters at run time is off on this server; start it with --allow-lora-loading",
            None,
        )
    })
}

fn lora_name(obj: &Map<String, Value>) -> Result<String, ApiError> {
    match obj.get("lora_name") {
        Some(Value::String(n)) if !n.trim().is_empty() => Ok(n.clone()),
        _ => Err(ApiError::invalid("`lora_name` must be a non-empty string", Some("lora_name"))),
    }
}

fn already_loaded(name: &str) -> ApiError {
    ApiError::invalid(format!("The lora adapter '{name}' has already been loaded."), Some("lora_name"))
}
