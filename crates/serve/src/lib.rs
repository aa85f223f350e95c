//! activepref's web server. Two routers over one listener, put together and run by [`Server`]:
//! - [`labeling`]: the human labeling page, the live dashboard and their JSON API over a run's store
//!   (annotator tokens, keyboard-first labeling, durable-before-"saved" writes). Inside: `state` (store
//!   connections, the keyed A/B swap, leases, token checks), `api` (the routes), `security` (headers,
//!   cross-site refusals), `progress`, `annotators` (tokens and statistics), `stats` (agreement), `error`;
//! - [`openai`]: OpenAI-compatible `/v1/models`, `/v1/chat/completions` and `/v1/completions` serving a model or
//!   a run's checkpoint, so the LLM-judge oracle (or any OpenAI client) can talk to a local model. Inside:
//!   `admission` (API key, the waiting-request limit), `request` (body parsing, prompts, chat rendering),
//!   `generate` (sampling jobs, stop strings), `stream` (server-sent events), `endpoints`, `error`;
//! - [`server`]: [`Server`], one listener for either or both, and [`serve_blocking`] for a bare router;
//! - [`guard`]: in front of every route of a [`Server`]: a `Host` it answers to (DNS rebinding) and no
//!   cross-site writes to `/v1`;
//! - [`connections`]: the accept loop and its [`Limits`]: a timeout for a request's head and one for its body
//!   (`body_deadline`), and the most connections open at once.
//!
//! It listens on 127.0.0.1 unless told otherwise; every write needs an annotator token, or the API key.

mod body_deadline;
pub mod connections;
pub mod guard;
pub mod labeling;
pub mod openai;
pub mod server;

pub use connections::Limits;
pub use server::{serve_blocking, Server};
