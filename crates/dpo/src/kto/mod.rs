//! KTO (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization", arXiv 2402.01306) as
//! a trainer: unpaired data, where each completion is only labelled desirable or not, as TRL 0.27.2's
//! `KTOTrainer` trains it (`trl/experimental/kto/kto_trainer.py` and `kto_config.py`; cited as
//! `kto_trainer.py:N`). A labeller that can say "good" or "bad" about one completion at a time can feed it.
//!
//! - [`data`]: TRL's unpaired rows `{prompt, completion, label}` (plain or conversational), or a preference file
//!   unpaired as TRL's `unpair_preference_dataset` does;
//! - [`loss`]: `kto` and `apo_zero_unpaired` on one micro-batch, the KL estimate z0 from mismatched pairs
//!   (detached), TRL's metric names and their aggregation;
//! - [`train`]: [`KtoTrainer`], the loop with the DPO trainer's settings, checkpoints and resume.
//!
//! Settings: [`crate::TrainConfig`] with its `[kto]` section ([`crate::config::KtoConfig`]); `loss.beta` is β.
//! `crates/dpo/tests/trl_kto_parity.rs` compares the loss and metrics with TRL's own code.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! # let (data, out) = (std::path::Path::new("good_bad.jsonl"), std::path::Path::new("runs/kto1"));
//! let model = lm::LanguageModel::load(std::path::Path::new("model"), &candle_core::Device::Cpu, candle_core::DType::F32)?;
//! let cfg = dpo::TrainConfig { kto: Some(dpo::KtoConfig::default()), ..Default::default() };
//! let (rows, _skipped) = dpo::kto::load_unpaired(data, &model.tokenizer, &cfg)?; // unpaired or paired
//! let mut trainer = dpo::KtoTrainer::new(cfg, model, rows, vec![], out, |_, _, _| {})?;
//! trainer.run(|_| {})?;
//! # Ok(())
//! # }
//! ```

pub mod data;
pub mod loss;
pub mod train;

pub use data::{load_unpaired, read_unpaired, unpair, UnpairedText, UnpairedTokens};
pub use loss::{kl_partners, kto_loss, KtoLogps, KtoLoss, KtoLossType, KtoWindow};
pub use train::KtoTrainer;
