//! One configuration type for every supported architecture, read from an HF `config.json` or from
//! GGUF metadata, and written back as an HF `config.json`.
//!
//! Keeping a single flat struct (rather than one per architecture) lets the loader, the sampler and
//! the trainer treat models uniformly; each architecture file reads only the fields it needs.

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::{json, Value};
use std::path::Path;

/// The model families we implement, each in its own file under `arch/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Gpt2,
    /// Llama, SmolLM2, Mistral-style and Qwen2 (q/k/v bias) decoders.
    Llama,
    Gemma3,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    /// The HF `model_type` (`gpt2`, `llama`, `qwen2`, `gemma3_text`, ...), kept for saving.
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub max_position: usize,
    pub norm_eps: f64,
    pub rope_theta: f64,
    /// Linear RoPE position scaling factor for global layers (1.0 = none).
    pub rope_scale: f64,
    /// Gemma3: RoPE base of the sliding-window (local) layers.
    pub rope_local_theta: f64,
    /// Gemma3: window of the local layers.
    pub sliding_window: Option<usize>,
    /// Gemma3: every `sliding_window_pattern`-th layer is global, the rest local.
    pub sliding_window_pattern: usize,
    /// Qwen2 and some Llamas have q/k/v biases.
    pub qkv_bias: bool,
    pub tie_word_embeddings: bool,
    /// Gemma3: attention scores are scaled by `query_pre_attn_scalar^-1/2` instead of `head_dim^-1/2`.
    pub query_pre_attn_scalar: Option<f64>,
    pub attn_logit_softcap: Option<f64>,
    pub final_logit_softcap: Option<f64>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key).filter(|x| !x.is_null())
}

fn usize_field(v: &Value, key: &str) -> Result<usize> {
    get(v, key)
        .and_then(Value::as_u64)
        .map(|x| x as usize)
        .ok_or_else(|| anyhow!("field `{key}` is missing or not a non-negative integer"))
}

fn opt_usize(v: &Value, key: &str) -> Option<usize> {
    get(v, key).and_then(Value::as_u64).map(|x| x as usize)
}

fn opt_f64(v: &Value, key: &str) -> Option<f64> {
    get(v, key).and_then(Value::as_f64)
}

fn token_ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).map(|x| x as u32).collect(),
        _ => vec![],
    }
}

impl ModelConfig {
    /// Reads an HF `config.json`.
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let v: Value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
        Self::from_hf_json(&v).with_context(|| format!("{}: unsupported or invalid model config", path.display()))
    }

    pub fn from_hf_json(v: &Value) -> Result<Self> {
        // Multimodal Gemma3 checkpoints nest the language model's config.
        let v = match get(v, "text_config") {
            Some(t) if get(v, "model_type").and_then(Value::as_str) == Some("gemma3") => t,
            _ => v,
        };
        let model_type = get(v, "model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("field `model_type` is missing"))?
            .to_string();
        let eos = token_ids(get(v, "eos_token_id"));
        let bos = token_ids(get(v, "bos_token_id")).first().copied();
        match model_type.as_str() {
            "gpt2" => {
                let d = usize_field(v, "n_embd")?;
                let heads = usize_field(v, "n_head")?;
                Ok(Self {
                    arch: Arch::Gpt2,
                    model_type,
                    vocab_size: usize_field(v, "vocab_size")?,
                    hidden_size: d,
                    intermediate_size: opt_usize(v, "n_inner").unwrap_or(4 * d),
                    num_layers: usize_field(v, "n_layer")?,
                    num_heads: heads,
                    num_kv_heads: heads,
                    head_dim: d / heads,
                    max_position: usize_field(v, "n_positions")?,
                    norm_eps: opt_f64(v, "layer_norm_epsilon").unwrap_or(1e-5),
                    rope_theta: 0.0,
                    rope_scale: 1.0,
                    rope_local_theta: 0.0,
                    sliding_window: None,
                    sliding_window_pattern: 1,
                    qkv_bias: true,
                    tie_word_embeddings: get(v, "tie_word_embeddings").and_then(Value::as_bool).unwrap_or(true),
                    query_pre_attn_scalar: None,
                    attn_logit_softcap: None,
                    final_logit_softcap: None,
                    bos_token_id: bos,
                    eos_token_ids: eos,
                })
            }
            "llama" | "mistral" | "qwen2" | "smollm" | "smollm3" | "gemma3_text" | "gemma3" => {
                let d = usize_field(v, "hidden_size")?;
                let heads = usize_field(v, "num_attention_heads")?;
                let gemma = model_type.starts_with("gemma3");
                let rope_scale = get(v, "rope_scaling")
                    .filter(|r| {
                        matches!(get(r, "rope_type").or(get(r, "type")).and_then(Value::as_str), Some("linear"))
                    })
                    .and_then(|r| opt_f64(r, "factor"))
                    .unwrap_or(1.0);
                if let Some(r) = get(v, "rope_scaling") {
                    let kind = get(r, "rope_type").or(get(r, "type")).and_then(Value::as_str).unwrap_or("");
                    if !matches!(kind, "linear" | "default" | "") {
                        bail!(
                            "field `rope_scaling.rope_type` = {kind:?} is not supported (expected linear or default)"
                        );
                    }
                }
                let pattern = if gemma {
                    opt_usize(v, "sliding_window_pattern")
                        .or_else(|| {
                            // Newer configs list `layer_types`; recover the period of global layers.
                            let lt = get(v, "layer_types")?.as_array()?;
                            lt.iter().position(|x| x.as_str() == Some("full_attention")).map(|i| i + 1)
                        })
                        .unwrap_or(6)
                } else {
                    1
                };
                Ok(Self {
                    arch: if gemma { Arch::Gemma3 } else { Arch::Llama },
                    model_type: if model_type == "gemma3" { "gemma3_text".into() } else { model_type.clone() },
                    vocab_size: usize_field(v, "vocab_size")?,
                    hidden_size: d,
                    intermediate_size: usize_field(v, "intermediate_size")?,
                    num_layers: usize_field(v, "num_hidden_layers")?,
                    num_heads: heads,
                    num_kv_heads: opt_usize(v, "num_key_value_heads").unwrap_or(heads),
                    head_dim: opt_usize(v, "head_dim").unwrap_or(d / heads),
                    max_position: opt_usize(v, "max_position_embeddings").unwrap_or(2048),
                    norm_eps: opt_f64(v, "rms_norm_eps").unwrap_or(1e-6),
                    rope_theta: opt_f64(v, "rope_theta").unwrap_or(if gemma { 1e6 } else { 10000.0 }),
                    rope_scale,
                    rope_local_theta: opt_f64(v, "rope_local_base_freq").unwrap_or(10000.0),
                    sliding_window: if gemma { opt_usize(v, "sliding_window").or(Some(4096)) } else { None },
                    sliding_window_pattern: pattern,
                    qkv_bias: model_type == "qwen2"
                        || get(v, "attention_bias").and_then(Value::as_bool).unwrap_or(false),
                    tie_word_embeddings: get(v, "tie_word_embeddings").and_then(Value::as_bool).unwrap_or(gemma),
                    query_pre_attn_scalar: if gemma { opt_f64(v, "query_pre_attn_scalar") } else { None },
                    attn_logit_softcap: opt_f64(v, "attn_logit_softcapping"),
                    final_logit_softcap: opt_f64(v, "final_logit_softcapping"),
                    bos_token_id: bos,
                    eos_token_ids: eos,
                })
            }
            other => bail!(
                "field `model_type` = {other:?} is not a supported architecture \
                 (expected gpt2, llama, mistral, qwen2 or gemma3_text)"
            ),
        }
    }

    /// The HF `config.json` for this model.
    pub fn to_hf_json(&self) -> Value {
        let eos = match self.eos_token_ids.as_slice() {
            [] => Value::Null,
            [one] => json!(one),
            many => json!(many),
        };
        match self.arch {
            Arch::Gpt2 => json!({
                "model_type": "gpt2",
                "architectures": ["GPT2LMHeadModel"],
                "vocab_size": self.vocab_size,
                "n_embd": self.hidden_size,
                "n_inner": self.intermediate_size,
                "n_layer": self.num_layers,
                "n_head": self.num_heads,
                "n_positions": self.max_position,
                "n_ctx": self.max_position,
                "layer_norm_epsilon": self.norm_eps,
                "activation_function": "gelu_new",
                "tie_word_embeddings": self.tie_word_embeddings,
                "bos_token_id": self.bos_token_id,
                "eos_token_id": eos,
            }),
            Arch::Llama | Arch::Gemma3 => {
                let mut v = json!({
                    "model_type": self.model_type,
                    "vocab_size": self.vocab_size,
                    "hidden_size": self.hidden_size,
                    "intermediate_size": self.intermediate_size,
                    "num_hidden_layers": self.num_layers,
                    "num_attention_heads": self.num_heads,
                    "num_key_value_heads": self.num_kv_heads,
                    "head_dim": self.head_dim,
                    "max_position_embeddings": self.max_position,
                    "rms_norm_eps": self.norm_eps,
                    "rope_theta": self.rope_theta,
                    "tie_word_embeddings": self.tie_word_embeddings,
                    "bos_token_id": self.bos_token_id,
                    "eos_token_id": eos,
                    "hidden_act": if self.arch == Arch::Gemma3 { "gelu_pytorch_tanh" } else { "silu" },
                });
                let m = v.as_object_mut().unwrap();
                if self.rope_scale != 1.0 {
                    m.insert("rope_scaling".into(), json!({"rope_type": "linear", "factor": self.rope_scale}));
                }
                if self.arch == Arch::Llama {
                    m.insert("attention_bias".into(), json!(self.qkv_bias));
                    let archs = if self.model_type == "qwen2" { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" };
                    m.insert("architectures".into(), json!([archs]));
                } else {
                    m.insert("architectures".into(), json!(["Gemma3ForCausalLM"]));
                    m.insert("rope_local_base_freq".into(), json!(self.rope_local_theta));
                    m.insert("sliding_window".into(), json!(self.sliding_window));
                    m.insert("sliding_window_pattern".into(), json!(self.sliding_window_pattern));
                    m.insert("query_pre_attn_scalar".into(), json!(self.query_pre_attn_scalar));
                    m.insert("attn_logit_softcapping".into(), json!(self.attn_logit_softcap));
                    m.insert("final_logit_softcapping".into(), json!(self.final_logit_softcap));
                }
                v
            }
        }
    }

    /// Whether layer `i` of a Gemma3 model uses sliding-window (local) attention.
    pub fn is_local_layer(&self, i: usize) -> bool {
        self.arch == Arch::Gemma3 && !(i + 1).is_multiple_of(self.sliding_window_pattern.max(1))
    }

    /// Checks the numbers are consistent before any tensor is built.
    pub fn validate(&self) -> Result<()> {
        if self.num_heads == 0 || self.num_kv_heads == 0 || !self.num_heads.is_multiple_of(self.num_kv_heads) {
            bail!(
                "num_attention_heads ({}) must be a positive multiple of num_key_value_heads ({})",
                self.num_heads,
                self.num_kv_heads
            );
        }
        if self.head_dim == 0 || (!self.head_dim.is_multiple_of(2) && self.arch != Arch::Gpt2) {
            bail!("head_dim ({}) must be positive and even for rotary embeddings", self.head_dim);
        }
        if self.vocab_size == 0 || self.hidden_size == 0 || self.num_layers == 0 {
            bail!("vocab_size, hidden_size and num_layers must be positive");
        }
        Ok(())
    }
}
