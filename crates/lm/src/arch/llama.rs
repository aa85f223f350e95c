//! Llama-family decoder: Llama 2/3, SmolLM2, Mistral-style and Qwen2 (q/k/v biases), with grouped-query
//! attention and a tied or untied output head.
//!
//! Touvron et al. 2023, "LLaMA: Open and Efficient Foundation Language Models" (arXiv 2302.13971):
//! pre-norm RMSNorm, SwiGLU MLP (Shazeer 2020), rotary embeddings (Su et al. 2021).
//! Tensor names follow HF `LlamaForCausalLM`.

use super::layers::{apply_rope, attention, merge_heads, split_heads, KvCache, Linear, Positions, RmsNorm, Rope};
use crate::config::ModelConfig;
use crate::params::Params;
use anyhow::Result;
use candle_core::{Module, Tensor};

#[derive(Debug, Clone)]
struct Block {
    input_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    post_attn_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
}

#[derive(Debug, Clone)]
pub struct Llama {
    cfg: ModelConfig,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: RmsNorm,
    lm_head: Tensor,
    rope: Rope,
}

fn linear(p: &Params, name: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
    Linear::load(p, name, out, inp, bias)
}

impl Llama {
    pub fn new(cfg: &ModelConfig, p: &Params) -> Result<Self> {
        let (d, hd, ff) = (cfg.hidden_size, cfg.head_dim, cfg.intermediate_size);
        let norm = |name: &str| -> Result<RmsNorm> {
            Ok(RmsNorm { weight: p.get(name, &[d])?, eps: cfg.norm_eps, offset: 0.0 })
        };
        let mut blocks = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let pre = format!("model.layers.{i}");
            blocks.push(Block {
                input_norm: norm(&format!("{pre}.input_layernorm.weight"))?,
                q: linear(p, &format!("{pre}.self_attn.q_proj"), cfg.num_heads * hd, d, cfg.qkv_bias)?,
                k: linear(p, &format!("{pre}.self_attn.k_proj"), cfg.num_kv_heads * hd, d, cfg.qkv_bias)?,
                v: linear(p, &format!("{pre}.self_attn.v_proj"), cfg.num_kv_heads * hd, d, cfg.qkv_bias)?,
                o: linear(p, &format!("{pre}.self_attn.o_proj"), d, cfg.num_heads * hd, false)?,
                post_attn_norm: norm(&format!("{pre}.post_attention_layernorm.weight"))?,
                gate: linear(p, &format!("{pre}.mlp.gate_proj"), ff, d, false)?,
                up: linear(p, &format!("{pre}.mlp.up_proj"), ff, d, false)?,
                down: linear(p, &format!("{pre}.mlp.down_proj"), d, ff, false)?,
            });
        }
        let embed = p.get("model.embed_tokens.weight", &[cfg.vocab_size, d])?;
        let lm_head =
            if cfg.tie_word_embeddings { embed.clone() } else { p.get("lm_head.weight", &[cfg.vocab_size, d])? };
        Ok(Self {
            cfg: cfg.clone(),
            embed,
            blocks,
            norm: norm("model.norm.weight")?,
            lm_head,
            rope: Rope::new(cfg.rope_theta, hd, cfg.rope_scale),
        })
    }

    /// Final hidden states `(B, T, d)` after the last norm.
    pub fn hidden(&self, ids: &Tensor, ctx: &Positions, mut cache: Option<&mut KvCache>) -> Result<Tensor> {
        let (_b, t) = ids.dims2()?;
        let cfg = &self.cfg;
        let hd = cfg.head_dim;
        let mut x = self.embed.embedding(&ids.flatten_all()?)?.reshape((ids.dim(0)?, t, cfg.hidden_size))?; // (B, T, d)
        let (cos, sin) = self.rope.tables(&ctx.positions(t), x.dtype(), x.device())?;
        let mask = ctx.mask(t, None, x.dtype(), x.device())?;
        let scale = 1.0 / (hd as f64).sqrt();
        for (i, blk) in self.blocks.iter().enumerate() {
            let h = blk.input_norm.forward(&x)?;
            let q = split_heads(&blk.q.forward(&h)?, cfg.num_heads, hd)?; // (B, H, T, hd)
            let k = split_heads(&blk.k.forward(&h)?, cfg.num_kv_heads, hd)?; // (B, n_kv, T, hd)
            let v = split_heads(&blk.v.forward(&h)?, cfg.num_kv_heads, hd)?; // (B, n_kv, T, hd)
            let q = apply_rope(&q, &cos, &sin)?;
            let k = apply_rope(&k, &cos, &sin)?;
            let (k, v) = match cache.as_deref_mut() {
                Some(c) => c.append(i, k, v)?,
                None => (k, v),
            };
            let y = attention(&q, &k, &v, mask.as_ref(), scale, None)?; // (B, H, T, hd)
            x = (x + blk.o.forward(&merge_heads(&y)?)?)?;
            let h = blk.post_attn_norm.forward(&x)?;
            let act = crate::kernels::glu::swiglu(&blk.gate.forward(&h)?, &blk.up.forward(&h)?)?;
            x = (x + blk.down.forward(&act)?)?;
        }
        Ok(self.norm.forward(&x)?)
    }

    /// The output head: its weight `(V, d)` and the final logit soft-cap, if any.
    pub fn head(&self) -> (&Tensor, Option<f64>) {
        (&self.lm_head, None)
    }

    /// Output logits for hidden states `(B, T, d)` → `(B, T, V)`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(Linear::new(self.lm_head.clone(), None).forward(hidden)?)
    }
}
