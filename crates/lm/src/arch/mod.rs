//! Model architectures, one readable file each, all trainable (see `layers` for why that matters).

pub mod gemma3;
pub mod gpt2;
pub mod layers;
pub mod llama;
