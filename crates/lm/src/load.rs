//! Reading models from disk (an HF safetensors directory or a GGUF file) and writing them as an HF
//! safetensors directory.
//!
//! GGUF tensors of every supported quantisation (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K…Q6_K)
//! are dequantised to f32 with candle's reference kernels; training needs real-valued weights. GGUF
//! names are mapped to HF names, and llama.cpp's Q/K row permutation (its converter reorders rows for
//! interleaved RoPE) is undone, so every model here uses the NeoX "rotate half" layout.

use crate::arch::gpt2::is_conv1d;
use crate::config::{Arch, ModelConfig};
use crate::params::Params;
use crate::tokenizer::{GgufVocab, Tokenizer};
use anyhow::{anyhow, bail, Context as _, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

fn check_exists(path: &Path) -> Result<()> {
    if !path.exists() {
        bail!("{}: no such file or directory (expected a .gguf file or an HF model directory)", path.display());
    }
    Ok(())
}

/// Loads only the config and tokenizer of a model (no weights are read or dequantised).
pub fn load_tokenizer(path: &Path) -> Result<(ModelConfig, Tokenizer)> {
    check_exists(path)?;
    if path.is_dir() {
        read_hf_header(path)
    } else {
        let (_, _, config, tokenizer) = read_gguf_header(path)?;
        Ok((config, tokenizer))
    }
}

/// Loads config, tokenizer and f32 parameters (on CPU) from `path`.
pub fn load(path: &Path) -> Result<(ModelConfig, Tokenizer, Params)> {
    check_exists(path)?;
    if path.is_dir() {
        load_hf_dir(path)
    } else {
        load_gguf(path)
    }
}

// ---------------------------------------------------------------------------------------------
// HF safetensors directories

/// An HF directory's `config.json` and tokenizer.
fn read_hf_header(dir: &Path) -> Result<(ModelConfig, Tokenizer)> {
    let cfg_path = dir.join("config.json");
    if !cfg_path.exists() {
        bail!("{}: missing; an HF model directory needs config.json", cfg_path.display());
    }
    let config = ModelConfig::from_hf_file(&cfg_path)?;
    let tokenizer = Tokenizer::from_hf_dir(dir, &config.eos_token_ids, config.bos_token_id)?;
    Ok((config, tokenizer))
}

fn load_hf_dir(dir: &Path) -> Result<(ModelConfig, Tokenizer, Params)> {
    let (config, tokenizer) = read_hf_header(dir)?;
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{}: no *.safetensors weight files in the directory", dir.display());
    }
    let mut params = Params::new(dir.display().to_string());
    for f in &files {
        let tensors = candle_core::safetensors::load(f, &Device::Cpu)
            .map_err(|e| anyhow!("{}: not a valid safetensors file ({e})", f.display()))?;
        for (name, t) in tensors {
            let Some(name) = hf_name(&config, &name) else {
                continue;
            };
            let t = t.to_dtype(DType::F32)?;
            let t = if config.arch == Arch::Gpt2 && is_conv1d(&name) { t.t()?.contiguous()? } else { t };
            params.insert(name, t);
        }
    }
    params.source = format!("{} ({} weight files)", dir.display(), files.len());
    Ok((config, tokenizer, params))
}

/// Normalises checkpoint tensor names to ours; `None` for buffers that are not parameters.
fn hf_name(config: &ModelConfig, name: &str) -> Option<String> {
    let name = name.strip_prefix("language_model.").unwrap_or(name);
    match config.arch {
        Arch::Gpt2 => {
            let n = name.strip_prefix("transformer.").unwrap_or(name);
            if n.ends_with(".attn.bias") || n.ends_with(".attn.masked_bias") {
                return None;
            }
            Some(n.to_string())
        }
        _ => {
            if name.contains("rotary_emb.inv_freq") {
                return None;
            }
            Some(name.to_string())
        }
    }
}

/// Writes an HF directory (config, weights, tokenizer).
pub fn save_hf_dir(dir: &Path, config: &ModelConfig, tokenizer: &Tokenizer, params: &Params) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cfg_path = dir.join("config.json");
    std::fs::write(&cfg_path, serde_json::to_string_pretty(&config.to_hf_json())?)
        .with_context(|| format!("writing {}", cfg_path.display()))?;
    let mut out = Params::new(dir.display().to_string());
    for (name, t) in &params.tensors {
        let t = t.detach().to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        let t = if config.arch == Arch::Gpt2 && is_conv1d(name) { t.t()?.contiguous()? } else { t };
        out.insert(name.clone(), t);
    }
    // Write to a temporary name first so an interrupted save never leaves a truncated model behind.
    let tmp = dir.join("model.safetensors.partial");
    out.save_safetensors(&tmp)?;
    std::fs::rename(&tmp, dir.join("model.safetensors"))?;
    tokenizer.save(dir)
}

// ---------------------------------------------------------------------------------------------
// GGUF

fn meta<'a>(md: &'a HashMap<String, Value>, key: &str) -> Result<&'a Value> {
    md.get(key).ok_or_else(|| anyhow!("metadata key `{key}` is missing"))
}

fn meta_usize(md: &HashMap<String, Value>, key: &str) -> Result<usize> {
    meta(md, key)?;
    meta_opt_usize(md, key).ok_or_else(|| anyhow!("metadata key `{key}` is not an integer"))
}

fn meta_opt_usize(md: &HashMap<String, Value>, key: &str) -> Option<usize> {
    md.get(key).and_then(|v| v.to_u64().ok().or_else(|| v.to_u32().ok().map(u64::from))).map(|x| x as usize)
}

fn meta_opt_f64(md: &HashMap<String, Value>, key: &str) -> Option<f64> {
    md.get(key).and_then(|v| v.to_f32().ok().map(f64::from).or_else(|| v.to_f64().ok()))
}

fn meta_str(md: &HashMap<String, Value>, key: &str) -> Option<String> {
    md.get(key).and_then(|v| v.to_string().ok()).cloned()
}

fn gguf_config(md: &HashMap<String, Value>, n_tokens: usize) -> Result<ModelConfig> {
    let arch_name = meta_str(md, "general.architecture")
        .ok_or_else(|| anyhow!("metadata key `general.architecture` is missing"))?;
    let a = arch_name.as_str();
    let (arch, model_type) = match a {
        "llama" | "smollm" => (Arch::Llama, "llama"),
        "qwen2" => (Arch::Llama, "qwen2"),
        "gemma3" => (Arch::Gemma3, "gemma3_text"),
        "gpt2" => (Arch::Gpt2, "gpt2"),
        other => bail!("general.architecture = {other:?} is not supported (expected llama, qwen2, gemma3 or gpt2)"),
    };
    let d = meta_usize(md, &format!("{a}.embedding_length"))?;
    let heads = meta_usize(md, &format!("{a}.attention.head_count"))?;
    let head_dim = meta_opt_usize(md, &format!("{a}.attention.key_length")).unwrap_or(d / heads);
    let eps = meta_opt_f64(md, &format!("{a}.attention.layer_norm_rms_epsilon"))
        .or_else(|| meta_opt_f64(md, &format!("{a}.attention.layer_norm_epsilon")))
        .unwrap_or(1e-5);
    let rope_scale = match meta_str(md, &format!("{a}.rope.scaling.type")).as_deref() {
        Some("linear") => meta_opt_f64(md, &format!("{a}.rope.scaling.factor")).unwrap_or(1.0),
        Some("none") | None => 1.0,
        Some(other) => {
            bail!("{a}.rope.scaling.type = {other:?} is not supported (expected linear or none)")
        }
    };
    let gemma = arch == Arch::Gemma3;
    Ok(ModelConfig {
        arch,
        model_type: model_type.into(),
        vocab_size: meta_opt_usize(md, &format!("{a}.vocab_size")).unwrap_or(n_tokens),
        hidden_size: d,
        intermediate_size: meta_usize(md, &format!("{a}.feed_forward_length"))?,
        num_layers: meta_usize(md, &format!("{a}.block_count"))?,
        num_heads: heads,
        num_kv_heads: meta_opt_usize(md, &format!("{a}.attention.head_count_kv")).unwrap_or(heads),
        head_dim,
        max_position: meta_opt_usize(md, &format!("{a}.context_length")).unwrap_or(2048),
        norm_eps: eps,
        rope_theta: meta_opt_f64(md, &format!("{a}.rope.freq_base")).unwrap_or(if gemma { 1e6 } else { 10000.0 }),
        rope_scale,
        rope_local_theta: 10000.0,
        sliding_window: if gemma {
            meta_opt_usize(md, &format!("{a}.attention.sliding_window")).or(Some(512))
        } else {
            None
        },
        // llama.cpp hard-codes Gemma3's pattern of 6 (5 local, 1 global); newer files state it.
        sliding_window_pattern: if gemma {
            meta_opt_usize(md, &format!("{a}.attention.sliding_window_pattern")).unwrap_or(6)
        } else {
            1
        },
        qkv_bias: false,           // set from the tensors present
        tie_word_embeddings: true, // set from the tensors present
        query_pre_attn_scalar: if gemma {
            Some(meta_opt_f64(md, &format!("{a}.attention.query_pre_attn_scalar")).unwrap_or(head_dim as f64))
        } else {
            None
        },
        attn_logit_softcap: meta_opt_f64(md, &format!("{a}.attn_logit_softcapping")),
        final_logit_softcap: meta_opt_f64(md, &format!("{a}.final_logit_softcapping")),
        bos_token_id: meta_opt_usize(md, "tokenizer.ggml.bos_token_id").map(|x| x as u32),
        eos_token_ids: meta_opt_usize(md, "tokenizer.ggml.eos_token_id").map(|x| x as u32).into_iter().collect(),
    })
}

/// Maps a GGUF tensor name to its HF name for `arch`.
fn gguf_to_hf(arch: Arch, name: &str) -> Option<String> {
    let global = match (arch, name) {
        (Arch::Gpt2, "token_embd.weight") => Some("wte.weight"),
        (Arch::Gpt2, "position_embd.weight") => Some("wpe.weight"),
        (Arch::Gpt2, "output_norm.weight") => Some("ln_f.weight"),
        (Arch::Gpt2, "output_norm.bias") => Some("ln_f.bias"),
        (_, "token_embd.weight") => Some("model.embed_tokens.weight"),
        (_, "output_norm.weight") => Some("model.norm.weight"),
        (_, "output.weight") => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(g) = global {
        return Some(g.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let (stem, kind) = tail.rsplit_once('.')?;
    let hf_stem = match (arch, stem) {
        (Arch::Gpt2, "attn_norm") => "ln_1",
        (Arch::Gpt2, "attn_qkv") => "attn.c_attn",
        (Arch::Gpt2, "attn_output") => "attn.c_proj",
        (Arch::Gpt2, "ffn_norm") => "ln_2",
        (Arch::Gpt2, "ffn_up") => "mlp.c_fc",
        (Arch::Gpt2, "ffn_down") => "mlp.c_proj",
        (Arch::Gpt2, _) => return None,
        (_, "attn_norm") => "input_layernorm",
        (_, "attn_q") => "self_attn.q_proj",
        (_, "attn_k") => "self_attn.k_proj",
        (_, "attn_v") => "self_attn.v_proj",
        (_, "attn_output") => "self_attn.o_proj",
        (_, "ffn_gate") => "mlp.gate_proj",
        (_, "ffn_up") => "mlp.up_proj",
        (_, "ffn_down") => "mlp.down_proj",
        (Arch::Llama, "ffn_norm") => "post_attention_layernorm",
        (Arch::Gemma3, "attn_q_norm") => "self_attn.q_norm",
        (Arch::Gemma3, "attn_k_norm") => "self_attn.k_norm",
        (Arch::Gemma3, "post_attention_norm") => "post_attention_layernorm",
        (Arch::Gemma3, "ffn_norm") => "pre_feedforward_layernorm",
        (Arch::Gemma3, "post_ffw_norm") => "post_feedforward_layernorm",
        _ => return None,
    };
    let prefix = if arch == Arch::Gpt2 { "h" } else { "model.layers" };
    Some(format!("{prefix}.{layer}.{hf_stem}.{kind}"))
}

/// Undoes llama.cpp's `permute(w, n_head)` of Q/K rows: GGUF rows are `(head, hd/2, 2)`, HF rows
/// `(head, 2, hd/2)`.
pub fn unpermute_qk(t: &Tensor, n_head: usize) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    let rest: usize = dims[1..].iter().product();
    let hd = rows / n_head;
    Ok(t.reshape((n_head, hd / 2, 2, rest))? // (nh, hd/2, 2, rest)
        .transpose(1, 2)? // (nh, 2, hd/2, rest)
        .contiguous()?
        .reshape(dims)?)
}

/// The inverse of [`unpermute_qk`] (what llama.cpp's converter does), for writing GGUF files.
pub fn permute_qk(t: &Tensor, n_head: usize) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    let rest: usize = dims[1..].iter().product();
    let hd = rows / n_head;
    Ok(t.reshape((n_head, 2, hd / 2, rest))? // (nh, 2, hd/2, rest)
        .transpose(1, 2)? // (nh, hd/2, 2, rest)
        .contiguous()?
        .reshape(dims)?)
}

/// Reads a GGUF file's metadata: the open reader, its table of contents, the config and the tokenizer.
fn read_gguf_header(path: &Path) -> Result<(std::io::BufReader<std::fs::File>, Content, ModelConfig, Tokenizer)> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = std::io::BufReader::new(file);
    let content = Content::read(&mut reader).map_err(|e| {
        anyhow!(
            "{}: not a readable GGUF file ({e}); expected GGUF v1–v3 with tensor types \
             F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K or Q8_K",
            path.display()
        )
    })?;
    let md = &content.metadata;
    let ctx = |e: anyhow::Error| e.context(format!("{}: invalid GGUF metadata", path.display()));
    let tokens: Vec<String> = match md.get("tokenizer.ggml.tokens") {
        Some(v) => v
            .to_vec()
            .map_err(|e| anyhow!("{e}"))?
            .iter()
            .map(|x| x.to_string().cloned().map_err(|e| anyhow!("{e}")))
            .collect::<Result<_>>()
            .map_err(ctx)?,
        None => bail!("{}: metadata key `tokenizer.ggml.tokens` is missing: the file has no tokenizer", path.display()),
    };
    let config = gguf_config(md, tokens.len()).map_err(ctx)?;
    let token_types: Vec<i32> = md
        .get("tokenizer.ggml.token_type")
        .and_then(|v| v.to_vec().ok())
        .map(|v| v.iter().map(|x| x.to_i32().unwrap_or(1)).collect())
        .unwrap_or_default();
    let merges: Vec<String> = md
        .get("tokenizer.ggml.merges")
        .and_then(|v| v.to_vec().ok())
        .map(|v| v.iter().filter_map(|x| x.to_string().ok().cloned()).collect())
        .unwrap_or_default();
    let scores: Vec<f32> = md
        .get("tokenizer.ggml.scores")
        .and_then(|v| v.to_vec().ok())
        .map(|v| v.iter().map(|x| x.to_f32().unwrap_or(0.0)).collect())
        .unwrap_or_default();
    let model = meta_str(md, "tokenizer.ggml.model").unwrap_or_else(|| "gpt2".into());
    let flag = |key: &str| md.get(key).and_then(|v| v.to_bool().ok());
    // llama.cpp's defaults for files that do not say: SentencePiece vocabularies add BOS and the space
    // prefix, byte-level BPE ones neither.
    let spm = model == "llama";
    let tokenizer = Tokenizer::from_gguf_vocab(GgufVocab {
        model,
        pre: meta_str(md, "tokenizer.ggml.pre").unwrap_or_default(),
        tokens,
        token_types,
        merges,
        scores,
        bos: config.bos_token_id,
        eos: config.eos_token_ids.first().copied(),
        pad: meta_opt_usize(md, "tokenizer.ggml.padding_token_id").map(|x| x as u32),
        unk: meta_opt_usize(md, "tokenizer.ggml.unknown_token_id").map(|x| x as u32),
        add_bos: flag("tokenizer.ggml.add_bos_token").unwrap_or(spm),
        add_space_prefix: flag("tokenizer.ggml.add_space_prefix").unwrap_or(spm),
        chat_template: meta_str(md, "tokenizer.chat_template"),
    })
    .with_context(|| format!("{}: building the tokenizer", path.display()))?;

    Ok((reader, content, config, tokenizer))
}

fn load_gguf(path: &Path) -> Result<(ModelConfig, Tokenizer, Params)> {
    let (mut reader, content, mut config, tokenizer) = read_gguf_header(path)?;
    let mut params = Params::new(path.display().to_string());
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        let Some(hf) = gguf_to_hf(config.arch, name) else {
            // llama.cpp stores precomputed RoPE tables for some models; they are not parameters.
            if name.starts_with("rope_") {
                continue;
            }
            bail!("{}: tensor `{name}` is not a known {:?} tensor", path.display(), config.arch);
        };
        let q = content
            .tensor(&mut reader, name, &Device::Cpu)
            .map_err(|e| anyhow!("{}: reading tensor `{name}`: {e}", path.display()))?;
        let mut t = q
            .dequantize(&Device::Cpu)
            .map_err(|e| anyhow!("{}: dequantising tensor `{name}` ({:?}): {e}", path.display(), q.dtype()))?;
        if config.arch == Arch::Llama && config.model_type == "llama" {
            if hf.contains("self_attn.q_proj") {
                t = unpermute_qk(&t, config.num_heads)?;
            } else if hf.contains("self_attn.k_proj") {
                t = unpermute_qk(&t, config.num_kv_heads)?;
            }
        }
        if config.arch == Arch::Gemma3 && hf.ends_with("norm.weight") {
            // llama.cpp's converter stores Gemma's RMSNorm scale as 1 + w.
            t = (t - 1.0)?;
        }
        if config.arch == Arch::Gpt2 && hf == "wpe.weight" {
            config.max_position = t.dim(0)?;
        }
        params.insert(hf, t);
    }
    config.tie_word_embeddings = !params.contains("lm_head.weight");
    config.qkv_bias = params.contains("model.layers.0.self_attn.q_proj.bias");
    Ok((config, tokenizer, params))
}

/// Writes a model as a GGUF file in llama.cpp's conventions (names, permuted Q/K for Llama, Gemma norms
/// stored as `1 + w`), with 2-D weights quantised to `quant` where their rows allow it. Used to test the
/// GGUF reader against files whose exact contents we know, and to hand models to llama.cpp.
pub fn write_gguf(
    path: &Path,
    config: &ModelConfig,
    params: &Params,
    vocab: &GgufVocab,
    quant: candle_core::quantized::GgmlDType,
) -> Result<()> {
    use candle_core::quantized::{GgmlDType, QTensor};
    let a = match (config.arch, config.model_type.as_str()) {
        (Arch::Llama, "qwen2") => "qwen2",
        (Arch::Llama, _) => "llama",
        (Arch::Gemma3, _) => "gemma3",
        (Arch::Gpt2, _) => "gpt2",
    };
    // Reverse of `gguf_to_hf`, enumerated over every name llama.cpp could use.
    let stems = [
        "attn_norm",
        "attn_qkv",
        "attn_output",
        "ffn_norm",
        "ffn_up",
        "ffn_down",
        "attn_q",
        "attn_k",
        "attn_v",
        "ffn_gate",
        "attn_q_norm",
        "attn_k_norm",
        "post_attention_norm",
        "post_ffw_norm",
    ];
    let mut reverse = HashMap::new();
    for g in ["token_embd.weight", "position_embd.weight", "output_norm.weight", "output_norm.bias", "output.weight"] {
        if let Some(h) = gguf_to_hf(config.arch, g) {
            reverse.insert(h, g.to_string());
        }
    }
    for i in 0..config.num_layers {
        for s in stems {
            for k in ["weight", "bias"] {
                let g = format!("blk.{i}.{s}.{k}");
                if let Some(h) = gguf_to_hf(config.arch, &g) {
                    reverse.insert(h, g);
                }
            }
        }
    }
    let u32v = |x: usize| Value::U32(x as u32);
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(a.into())),
        (format!("{a}.block_count"), u32v(config.num_layers)),
        (format!("{a}.context_length"), u32v(config.max_position)),
        (format!("{a}.embedding_length"), u32v(config.hidden_size)),
        (format!("{a}.feed_forward_length"), u32v(config.intermediate_size)),
        (format!("{a}.attention.head_count"), u32v(config.num_heads)),
        (format!("{a}.attention.head_count_kv"), u32v(config.num_kv_heads)),
        (format!("{a}.attention.key_length"), u32v(config.head_dim)),
        (format!("{a}.rope.freq_base"), Value::F32(config.rope_theta as f32)),
        (format!("{a}.vocab_size"), u32v(config.vocab_size)),
        ("tokenizer.ggml.model".into(), Value::String(vocab.model.clone())),
        ("tokenizer.ggml.pre".into(), Value::String(vocab.pre.clone())),
        ("tokenizer.ggml.tokens".into(), Value::Array(vocab.tokens.iter().map(|t| Value::String(t.clone())).collect())),
        ("tokenizer.ggml.token_type".into(), Value::Array(vocab.token_types.iter().map(|&t| Value::I32(t)).collect())),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(vocab.add_bos)),
        ("tokenizer.ggml.add_space_prefix".into(), Value::Bool(vocab.add_space_prefix)),
    ];
    // llama.cpp refuses a byte-level BPE file without the key, even with no merges; SentencePiece has none.
    if vocab.model != "llama" || !vocab.merges.is_empty() {
        let merges = vocab.merges.iter().map(|t| Value::String(t.clone())).collect();
        md.push(("tokenizer.ggml.merges".into(), Value::Array(merges)));
    }
    if !vocab.scores.is_empty() {
        md.push(("tokenizer.ggml.scores".into(), Value::Array(vocab.scores.iter().map(|&s| Value::F32(s)).collect())));
    }
    let eps_key = if config.arch == Arch::Gpt2 { "layer_norm_epsilon" } else { "layer_norm_rms_epsilon" };
    md.push((format!("{a}.attention.{eps_key}"), Value::F32(config.norm_eps as f32)));
    if let Some(w) = config.sliding_window {
        md.push((format!("{a}.attention.sliding_window"), u32v(w)));
    }
    if config.arch == Arch::Gemma3 {
        md.push((format!("{a}.attention.sliding_window_pattern"), u32v(config.sliding_window_pattern)));
        if let Some(s) = config.query_pre_attn_scalar {
            md.push((format!("{a}.attention.query_pre_attn_scalar"), Value::F32(s as f32)));
        }
    }
    if config.rope_scale != 1.0 {
        md.push((format!("{a}.rope.scaling.type"), Value::String("linear".into())));
        md.push((format!("{a}.rope.scaling.factor"), Value::F32(config.rope_scale as f32)));
    }
    for (k, v) in
        [("attn_logit_softcapping", config.attn_logit_softcap), ("final_logit_softcapping", config.final_logit_softcap)]
    {
        if let Some(v) = v {
            md.push((format!("{a}.{k}"), Value::F32(v as f32)));
        }
    }
    for (k, v) in [("bos", vocab.bos), ("eos", vocab.eos), ("padding", vocab.pad), ("unknown", vocab.unk)] {
        if let Some(v) = v {
            md.push((format!("tokenizer.ggml.{k}_token_id"), Value::U32(v)));
        }
    }
    if let Some(t) = &vocab.chat_template {
        md.push(("tokenizer.chat_template".into(), Value::String(t.clone())));
    }
    let mut tensors = Vec::new();
    for (name, t) in &params.tensors {
        let g = reverse.get(name).ok_or_else(|| anyhow!("tensor `{name}` has no GGUF name for {a}"))?;
        let mut t = t.detach().to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        if a == "llama" && name.contains("self_attn.q_proj") {
            t = permute_qk(&t, config.num_heads)?;
        } else if a == "llama" && name.contains("self_attn.k_proj") {
            t = permute_qk(&t, config.num_kv_heads)?;
        }
        if a == "gemma3" && name.ends_with("norm.weight") {
            t = (t + 1.0)?;
        }
        let dtype = if t.rank() == 2 && t.dim(1)? % quant.block_size() == 0 { quant } else { GgmlDType::F32 };
        tensors.push((g.clone(), QTensor::quantize(&t, dtype)?));
    }
    let mut f =
        std::io::BufWriter::new(std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?);
    let md_ref: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_ref: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    candle_core::quantized::gguf_file::write(&mut f, &md_ref, &t_ref)?;
    Ok(())
}
