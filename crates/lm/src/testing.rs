//! Tiny configurations of every architecture for tests and benchmarks (d ≤ 64, 2 layers).

use crate::config::{Arch, ModelConfig};
use crate::model::LanguageModel;
use crate::tokenizer::Tokenizer;
use anyhow::Result;
use candle_core::{DType, Device, Tensor};

/// Names accepted by [`tiny_config`].
pub const TINY_KINDS: &[&str] = &["gpt2", "llama", "llama-untied", "qwen2", "gemma3"];

/// A tiny config of one architecture variant; vocabulary 300 (bytes + EOS + fillers).
pub fn tiny_config(kind: &str) -> ModelConfig {
    let base = ModelConfig {
        arch: Arch::Llama,
        model_type: "llama".into(),
        vocab_size: 300,
        hidden_size: 32,
        intermediate_size: 64,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 8,
        max_position: 128,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scale: 1.0,
        rope_local_theta: 10000.0,
        sliding_window: None,
        sliding_window_pattern: 1,
        qkv_bias: false,
        tie_word_embeddings: true,
        query_pre_attn_scalar: None,
        attn_logit_softcap: None,
        final_logit_softcap: None,
        bos_token_id: Some(256),
        eos_token_ids: vec![256],
    };
    match kind {
        "gpt2" => ModelConfig {
            arch: Arch::Gpt2,
            model_type: "gpt2".into(),
            num_kv_heads: 4,
            rope_theta: 0.0,
            rope_local_theta: 0.0,
            qkv_bias: true,
            ..base
        },
        "llama" => base,
        "llama-untied" => ModelConfig { tie_word_embeddings: false, ..base },
        "qwen2" => ModelConfig { model_type: "qwen2".into(), qkv_bias: true, num_kv_heads: 1, rope_theta: 1e6, ..base },
        "gemma3" => ModelConfig {
            arch: Arch::Gemma3,
            model_type: "gemma3_text".into(),
            // Layer 0 local (window 4), layer 1 global; soft-caps on to exercise them.
            sliding_window: Some(4),
            sliding_window_pattern: 2,
            rope_scale: 2.0,
            query_pre_attn_scalar: Some(16.0),
            attn_logit_softcap: Some(50.0),
            final_logit_softcap: Some(30.0),
            ..base
        },
        other => panic!("unknown tiny kind {other}"),
    }
}

/// The SmolLM2-135M shape (Llama, 30 layers, d 576, 9/3 heads, vocabulary 49,152, tied head).
pub fn smollm2_135m_config() -> ModelConfig {
    ModelConfig {
        vocab_size: 49152,
        hidden_size: 576,
        intermediate_size: 1536,
        num_layers: 30,
        num_heads: 9,
        num_kv_heads: 3,
        head_dim: 64,
        max_position: 8192,
        rope_theta: 100000.0,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
        ..tiny_config("llama")
    }
}

/// GPT-2 small (124M: 12 layers, d 768, 12 heads, vocabulary 50,257, 1,024 positions, tied head).
pub fn gpt2_124m_config() -> ModelConfig {
    ModelConfig {
        vocab_size: 50257,
        hidden_size: 768,
        intermediate_size: 3072,
        num_layers: 12,
        num_heads: 12,
        num_kv_heads: 12,
        head_dim: 64,
        max_position: 1024,
        bos_token_id: Some(50256),
        eos_token_ids: vec![50256],
        ..tiny_config("gpt2")
    }
}

/// Qwen2.5-0.5B (24 layers, d 896, 14/2 heads, vocabulary 151,936, q/k/v biases, tied head).
pub fn qwen25_05b_config() -> ModelConfig {
    ModelConfig {
        vocab_size: 151936,
        hidden_size: 896,
        intermediate_size: 4864,
        num_layers: 24,
        num_heads: 14,
        num_kv_heads: 2,
        head_dim: 64,
        max_position: 32768,
        norm_eps: 1e-6,
        rope_theta: 1e6,
        bos_token_id: None,
        eos_token_ids: vec![151643],
        ..tiny_config("qwen2")
    }
}

/// TinyLlama-1.1B (22 layers, d 2,048, 32/4 heads, vocabulary 32,000, untied head): the ~1B Llama shape.
pub fn tinyllama_11b_config() -> ModelConfig {
    ModelConfig {
        vocab_size: 32000,
        hidden_size: 2048,
        intermediate_size: 5632,
        num_layers: 22,
        num_heads: 32,
        num_kv_heads: 4,
        head_dim: 64,
        max_position: 2048,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
        ..tiny_config("llama-untied")
    }
}

/// The names [`named_shape`] accepts.
pub const SHAPES: &[&str] = &["tiny", "gpt2-124m", "smollm2-135m", "qwen2.5-0.5b", "tinyllama-1.1b"];

/// Benchmark shapes by name (random weights of real models' shapes): `tiny` (d 64, 2 layers, vocabulary
/// 512) and the entries of [`SHAPES`].
pub fn named_shape(name: &str) -> Option<ModelConfig> {
    match name {
        "gpt2-124m" => Some(gpt2_124m_config()),
        "smollm2-135m" => Some(smollm2_135m_config()),
        "qwen2.5-0.5b" => Some(qwen25_05b_config()),
        "tinyllama-1.1b" => Some(tinyllama_11b_config()),
        "tiny" => Some(ModelConfig {
            vocab_size: 512,
            hidden_size: 64,
            intermediate_size: 128,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 16,
            max_position: 1024,
            ..tiny_config("llama")
        }),
        _ => None,
    }
}

/// A tiny random model of `kind` with the byte-level test tokenizer.
pub fn tiny_model(kind: &str, seed: u64, dtype: DType) -> Result<LanguageModel> {
    let cfg = tiny_config(kind);
    let tok = Tokenizer::byte_level_for_tests(cfg.vocab_size)?;
    LanguageModel::random(cfg, tok, seed, dtype, &Device::Cpu)
}

/// The largest absolute difference between two tensors of one shape, computed in f64 (any dtype).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    let d = (a.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?;
    Ok(d.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?)
}
