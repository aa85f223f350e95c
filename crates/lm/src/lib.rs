//! activepref's language-model core: real transformer weights (GGUF or HF safetensors) loaded into our
//! own differentiable model code on candle, with batched KV-cache sampling and completion scoring.
//! It knows nothing about preferences; the trainer and the active loop build on it.

pub mod adapter;
pub mod arch;
pub mod config;
pub mod kernels;
pub mod load;
pub mod model;
pub mod params;
pub mod sample;
pub mod sample_device;
pub mod score;
pub mod testing;
pub mod tokenizer;

pub use arch::layers::{KvCache, Positions};
pub use config::{Arch, ModelConfig};
pub use model::LanguageModel;
pub use params::Params;
pub use tokenizer::Tokenizer;
