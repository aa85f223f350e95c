//! The active preference learning loop (Muldrew et al., ICML 2024): choose which prompt/completion pairs
//! are worth a label, ask an oracle, fine-tune with DPO, measure the win rate, repeat — resumable at any
//! moment from a SQLite run store.
//!
//! Data flows one way: prompts ([`prompts`]) → candidates and selection ([`acquire`]) → labels (the
//! `oracle` crate, [`store`]) → training (`dpo`) → evaluation ([`eval`]). [`active`] is the only module that
//! knows the order.

pub mod acquire;
pub mod active;
pub mod config;
pub mod eval;
pub mod oracles;
pub mod prompts;
pub mod reward;
pub mod seed;
pub mod store;

pub use active::{ActiveLoop, Event, OracleHandle, RoundResult, RunDir};
pub use config::ActiveConfig;
