//! The active preference learning loop (Muldrew et al., ICML 2024; docs/algorithm.md): choose which
//! prompt/completion pairs are worth a label, ask an oracle, fine-tune with DPO, measure the win rate,
//! repeat — resumable at any moment from a SQLite run store.
//!
//! Data flows one way: prompts ([`prompts`]) → candidates and selection ([`acquire`]) → labels ([`oracles`],
//! the `oracle` crate, [`store`]) → training (`dpo`) → evaluation ([`eval`]) → results and report
//! ([`results`], [`report`]). [`active`] is the only module that knows the order; [`experiment`] runs it for
//! several strategies and seeds, and [`stats`] turns the experiment's per-prompt outcomes into intervals.
//!
//! Run-level facts each have one home, and the server and the CLI call them rather than keep copies: where a
//! run's files are ([`run_dir`]), a round's policy ([`policy`]), per-round results ([`results`]), the
//! report ([`report`]).

pub mod acquire;
pub mod active;
pub mod backend;
pub mod config;
pub mod eval;
pub mod event;
pub mod experiment;
pub mod oracles;
pub mod policy;
pub mod prompts;
pub mod report;
pub mod results;
pub mod reward;
pub mod run_dir;
pub mod seed;
pub mod stats;
pub mod store;
pub mod testing;
pub mod trainer;

pub use active::ActiveLoop;
pub use config::ActiveConfig;
pub use event::Event;
pub use oracles::OracleHandle;
pub use results::RoundResult;
pub use run_dir::RunDir;
