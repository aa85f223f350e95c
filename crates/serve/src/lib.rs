//! activepref's web server. Two routers over one listener:
//! - [`labeling`]: the human labeling page, the live dashboard and their JSON API over a run's store
//!   (annotator tokens, keyboard-first labeling, durable-before-"saved" writes);
//! - [`openai`]: OpenAI-compatible `/v1/models`, `/v1/chat/completions` and `/v1/completions` serving a model or
//!   a run's checkpoint, so the LLM-judge oracle (or any OpenAI client) can talk to a local model.
//!
//! It listens on 127.0.0.1 unless told otherwise; every write needs an annotator token.

pub mod labeling;
pub mod openai;
