//! `LanguageModel`: an architecture, its weights and its tokenizer behind one type, loaded from an HF
//! safetensors directory or a GGUF file and saved as an HF safetensors directory.

use crate::arch::layers::{KvCache, Positions};
use crate::arch::{gemma3::Gemma3, gpt2::Gpt2, llama::Llama};
use crate::config::{Arch, ModelConfig};
use crate::params::Params;
use crate::tokenizer::Tokenizer;
use anyhow::{Context as _, Result};
use candle_core::{DType, Device, Tensor, Var};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::Path;

/// The network of one of the supported architectures.
#[derive(Debug, Clone)]
pub enum Net {
    Gpt2(Gpt2),
    Llama(Llama),
    Gemma3(Gemma3),
}

impl Net {
    pub fn new(cfg: &ModelConfig, p: &Params) -> Result<Self> {
        cfg.validate().with_context(|| format!("{}: invalid model config", p.source))?;
        Ok(match cfg.arch {
            Arch::Gpt2 => Net::Gpt2(Gpt2::new(cfg, p)?),
            Arch::Llama => Net::Llama(Llama::new(cfg, p)?),
            Arch::Gemma3 => Net::Gemma3(Gemma3::new(cfg, p)?),
        })
    }
}

pub struct LanguageModel {
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
    pub params: Params,
    pub net: Net,
}

impl LanguageModel {
    pub fn from_params(config: ModelConfig, tokenizer: Tokenizer, params: Params) -> Result<Self> {
        let net = Net::new(&config, &params)?;
        Ok(Self { config, tokenizer, params, net })
    }

    /// Loads a model from a GGUF file or an HF safetensors directory, as `dtype` on `device`.
    pub fn load(path: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let (config, tokenizer, params) = crate::load::load(path)?;
        let params = params.to(dtype, device)?;
        Self::from_params(config, tokenizer, params)
    }

    /// Saves as an HF directory: `config.json`, `model.safetensors`, `tokenizer.json`,
    /// `tokenizer_config.json`, loadable here and by `transformers`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        crate::load::save_hf_dir(dir, &self.config, &self.tokenizer, &self.params)
    }

    pub fn device(&self) -> &Device {
        self.params.tensors.values().next().map(|t| t.device()).unwrap_or(&Device::Cpu)
    }

    pub fn dtype(&self) -> DType {
        self.params.tensors.values().next().map(|t| t.dtype()).unwrap_or(DType::F32)
    }

    /// A KV cache with room for `capacity` positions per sequence (it grows if a sequence outruns it).
    pub fn new_cache(&self, capacity: usize) -> KvCache {
        KvCache::with_capacity(self.config.num_layers, capacity)
    }

    /// Final hidden states `(B, T, d)` for token ids `(B, T)`.
    pub fn hidden(&self, ids: &Tensor, ctx: &Positions, cache: Option<&mut KvCache>) -> Result<Tensor> {
        match &self.net {
            Net::Gpt2(m) => m.hidden(ids, ctx, cache),
            Net::Llama(m) => m.hidden(ids, ctx, cache),
            Net::Gemma3(m) => m.hidden(ids, ctx, cache),
        }
    }

    /// Logits `(B, T, V)` for hidden states `(B, T, d)`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        match &self.net {
            Net::Gpt2(m) => m.logits(hidden),
            Net::Llama(m) => m.logits(hidden),
            Net::Gemma3(m) => m.logits(hidden),
        }
    }

    /// The output head: its weight `(V, d)` and the final logit soft-cap, if any (what
    /// [`crate::kernels::head`] needs to score tokens without building the logits).
    pub fn head(&self) -> (&Tensor, Option<f64>) {
        match &self.net {
            Net::Gpt2(m) => m.head(),
            Net::Llama(m) => m.head(),
            Net::Gemma3(m) => m.head(),
        }
    }

    /// Logits `(B, T, V)` for a fresh batch of right-padded (or unpadded) sequences.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        // On candle's thread pool, as scoring and sampling run (see `crate::sample`'s decode loop).
        self.device().with_context(|| {
            let h = self.hidden(ids, &Positions::fresh(ids.dim(0)?), None)?;
            self.logits(&h)
        })
    }

    /// Makes the parameters that `select` accepts trainable and rebuilds the network over them.
    pub fn make_trainable(&mut self, select: impl Fn(&str) -> bool) -> Result<BTreeMap<String, Var>> {
        let vars = self.params.make_trainable(select)?;
        self.net = Net::new(&self.config, &self.params)?;
        Ok(vars)
    }

    /// The same model over other parameters (e.g. the frozen reference of a training run).
    pub fn with_params(&self, params: Params) -> Result<Self> {
        Self::from_params(self.config.clone(), self.tokenizer.clone(), params)
    }

    /// The names of the linear layers LoRA can adapt (every projection inside the blocks), optionally
    /// only those whose last name component is in `targets` (e.g. `q_proj`, `v_proj`, `c_attn`).
    pub fn lora_targets(&self, targets: &[String]) -> Vec<String> {
        self.params
            .tensors
            .iter()
            .filter(|(n, t)| {
                t.rank() == 2
                    && n.ends_with(".weight")
                    && !n.contains("lora_")
                    && (n.starts_with("model.layers.") || n.starts_with("h."))
            })
            .map(|(n, _)| n.trim_end_matches(".weight").to_string())
            .filter(|stem| {
                targets.is_empty()
                    || targets.iter().any(|t| t == "all-linear" || stem.rsplit('.').next() == Some(t.as_str()))
            })
            .collect()
    }

    /// Adds LoRA adapters of rank `r` to the layers named by `targets` (all projections when empty or
    /// `all-linear`) and returns them as the only trainable variables; base weights stay frozen tensors.
    /// A is uniform in ±1/√in (PEFT's Kaiming-uniform bound), B is zero, so the model is unchanged at start.
    pub fn add_lora(&mut self, r: usize, alpha: f64, targets: &[String], seed: u64) -> Result<BTreeMap<String, Var>> {
        let layers = self.lora_targets(targets);
        if layers.is_empty() {
            anyhow::bail!(
                "LoRA target modules {targets:?} match no linear layer of this {} model",
                self.config.model_type
            );
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let mut vars = BTreeMap::new();
        let (dev, dtype) = (self.device().clone(), self.dtype());
        for stem in layers {
            let w = &self.params.tensors[&format!("{stem}.weight")];
            let (out, inp) = w.dims2()?;
            let bound = 1.0 / (inp as f32).sqrt();
            let a: Vec<f32> = (0..r * inp).map(|_| (rng.random::<f32>() * 2.0 - 1.0) * bound).collect();
            let a = Var::from_tensor(&Tensor::from_vec(a, (r, inp), &dev)?.to_dtype(dtype)?)?;
            let b = Var::zeros((out, r), dtype, &dev)?;
            for (suffix, v) in [("lora_A", a), ("lora_B", b)] {
                let name = format!("{stem}.{suffix}.weight");
                self.params.insert(name.clone(), v.as_tensor().clone());
                vars.insert(name, v);
            }
        }
        self.params.lora_scale = alpha / r as f64;
        self.net = Net::new(&self.config, &self.params)?;
        Ok(vars)
    }

    /// The parameters without any LoRA adapter (the base model).
    pub fn base_params(&self) -> Params {
        let mut p = self.params.clone();
        p.tensors.retain(|n, _| !n.contains(".lora_"));
        p
    }

    /// The parameters with every adapter merged into its base weight, `W + scale · B A`, detached.
    pub fn merged_params(&self) -> Result<Params> {
        let mut p = self.base_params();
        for (n, t) in p.tensors.iter_mut() {
            let stem = n.trim_end_matches(".weight");
            if let (Some(a), Some(b)) = (
                self.params.tensors.get(&format!("{stem}.lora_A.weight")),
                self.params.tensors.get(&format!("{stem}.lora_B.weight")),
            ) {
                *t = (t.detach() + (b.detach().matmul(&a.detach())? * self.params.lora_scale)?)?;
            } else {
                *t = t.detach();
            }
        }
        Ok(p)
    }

    /// A model with random weights (for tests and benchmarks): N(0, 0.02) matrices, norm scales near
    /// one, small random biases. The weights are drawn on the host in blocks of [`RANDOM_BLOCK`] values,
    /// each from its own stream (seed, tensor, block), in parallel: the same seed gives the same weights
    /// on every machine, thread count and device (they are moved to `device` once drawn).
    pub fn random(config: ModelConfig, tokenizer: Tokenizer, seed: u64, dtype: DType, device: &Device) -> Result<Self> {
        use rayon::prelude::*;
        let mut params = Params::new(format!("random {} model", config.model_type));
        let is_gemma = config.arch == Arch::Gemma3;
        for (ti, (name, shape)) in param_shapes(&config).into_iter().enumerate() {
            let n: usize = shape.iter().product();
            let is_norm = shape.len() == 1 && (name.contains("norm") || name.contains("ln_"));
            let centre = if is_norm && !is_gemma && name.ends_with("weight") { 1.0 } else { 0.0 };
            let scale = if is_norm { 0.1 } else { 0.02 };
            let mut data = vec![0f32; n];
            data.par_chunks_mut(RANDOM_BLOCK).enumerate().for_each(|(bi, block)| {
                let key = seed ^ ((ti as u64) << 32 | bi as u64).wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let mut rng = StdRng::seed_from_u64(key);
                for x in block {
                    // Box–Muller normal from two uniforms.
                    let (u1, u2): (f32, f32) = (rng.random::<f32>().max(1e-7), rng.random::<f32>());
                    let z = (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos();
                    *x = centre + scale * z;
                }
            });
            params.insert(name, Tensor::from_vec(data, shape, device)?.to_dtype(dtype)?);
        }
        Self::from_params(config, tokenizer, params)
    }
}

/// Values per independently seeded block of [`LanguageModel::random`]'s weights.
pub const RANDOM_BLOCK: usize = 1 << 20;

/// Every parameter of an architecture under its HF name, with its shape.
pub fn param_shapes(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (d, ff, hd, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim, cfg.vocab_size);
    let (qd, kvd) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
    let mut out: Vec<(String, Vec<usize>)> = Vec::new();
    let mut add = |name: String, shape: &[usize]| out.push((name, shape.to_vec()));
    match cfg.arch {
        Arch::Gpt2 => {
            add("wte.weight".into(), &[v, d]);
            add("wpe.weight".into(), &[cfg.max_position, d]);
            for i in 0..cfg.num_layers {
                for ln in ["ln_1", "ln_2"] {
                    add(format!("h.{i}.{ln}.weight"), &[d]);
                    add(format!("h.{i}.{ln}.bias"), &[d]);
                }
                for (n, o, inp) in
                    [("attn.c_attn", 3 * d, d), ("attn.c_proj", d, d), ("mlp.c_fc", ff, d), ("mlp.c_proj", d, ff)]
                {
                    add(format!("h.{i}.{n}.weight"), &[o, inp]);
                    add(format!("h.{i}.{n}.bias"), &[o]);
                }
            }
            add("ln_f.weight".into(), &[d]);
            add("ln_f.bias".into(), &[d]);
        }
        Arch::Llama | Arch::Gemma3 => {
            add("model.embed_tokens.weight".into(), &[v, d]);
            for i in 0..cfg.num_layers {
                let p = format!("model.layers.{i}");
                add(format!("{p}.input_layernorm.weight"), &[d]);
                add(format!("{p}.post_attention_layernorm.weight"), &[d]);
                for (n, o) in [("q_proj", qd), ("k_proj", kvd), ("v_proj", kvd)] {
                    add(format!("{p}.self_attn.{n}.weight"), &[o, d]);
                    if cfg.qkv_bias {
                        add(format!("{p}.self_attn.{n}.bias"), &[o]);
                    }
                }
                add(format!("{p}.self_attn.o_proj.weight"), &[d, qd]);
                add(format!("{p}.mlp.gate_proj.weight"), &[ff, d]);
                add(format!("{p}.mlp.up_proj.weight"), &[ff, d]);
                add(format!("{p}.mlp.down_proj.weight"), &[d, ff]);
                if cfg.arch == Arch::Gemma3 {
                    add(format!("{p}.self_attn.q_norm.weight"), &[hd]);
                    add(format!("{p}.self_attn.k_norm.weight"), &[hd]);
                    add(format!("{p}.pre_feedforward_layernorm.weight"), &[d]);
                    add(format!("{p}.post_feedforward_layernorm.weight"), &[d]);
                }
            }
            add("model.norm.weight".into(), &[d]);
        }
    }
    if !cfg.tie_word_embeddings {
        add("lm_head.weight".into(), &[v, d]);
    }
    out
}
