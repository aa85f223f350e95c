//! activepref's preference trainer: the DPO loss family as pure functions over sequence log-probs (per-token
//! ones for WPO and LD-DPO), matched number for number against one pinned TRL release (0.27.2, see [`loss`]),
//! and the optimizers that apply their gradients. Usable alone (like TRL's DPOTrainer) and by the active loop:
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! # let (data, out) = (std::path::Path::new("prefs.parquet"), std::path::Path::new("runs/dpo1"));
//! # let dev = candle_core::Device::Cpu;
//! let model = lm::LanguageModel::load(std::path::Path::new("model"), &dev, candle_core::DType::F32)?;
//! let cfg = dpo::TrainConfig { lora: Some(dpo::LoraConfig::default()), ..Default::default() };
//! let (train, _skipped) = dpo::load_pairs(data, &model.tokenizer, &cfg)?; // JSONL or Parquet
//! let mut trainer = dpo::Trainer::new(cfg, model, train, vec![], out, |_, _, _| {})?;
//! trainer.resume_latest()?; // continue from out/checkpoint-N if an earlier run was interrupted
//! trainer.run(|_| {})?;
//! # Ok(())
//! # }
//! ```

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod kto;
pub mod loss;
pub mod optim;
pub mod train;

pub use checkpoint::{find_checkpoint, latest_checkpoint};
pub use config::{ComputeDtype, KtoConfig, LoraConfig, TrainConfig};
pub use data::{load_pairs, read_preferences, Skipped, TokenPair};
pub use kto::KtoTrainer;
pub use loss::LossType;
pub use train::{StepInfo, Trainer};
