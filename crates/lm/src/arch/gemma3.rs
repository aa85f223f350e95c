//! Gemma 3 text decoder (Gemma Team 2025, "Gemma 3 Technical Report", arXiv 2503.19786).
//!
//! Differences from Llama, all here: RMSNorm scales by `1 + w`; four norms per block (before and after
//! attention and MLP); q/k RMSNorm per head; embeddings scaled by `sqrt(d)`; GELU-tanh gated MLP;
//! local sliding-window layers (RoPE base `rope_local_base_freq`) interleaved with global layers
//! (every `sliding_window_pattern`-th, RoPE base `rope_theta`, optional linear scaling); scores
//! scaled by `query_pre_attn_scalar^-1/2`; Gemma-2 style logit soft-caps when the config has them.
//! Tensor names follow HF `Gemma3ForCausalLM`.

use super::layers::{
    apply_rope, attention, gelu_tanh, merge_heads, split_heads, KvCache, Linear, Positions, RmsNorm, Rope,
};
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
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    post_attn_norm: RmsNorm,
    pre_ff_norm: RmsNorm,
    post_ff_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
    local: bool,
}

#[derive(Debug, Clone)]
pub struct Gemma3 {
    cfg: ModelConfig,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: RmsNorm,
    lm_head: Tensor,
    rope_global: Rope,
    rope_local: Rope,
}

impl Gemma3 {
    pub fn new(cfg: &ModelConfig, p: &Params) -> Result<Self> {
        let (d, hd, ff) = (cfg.hidden_size, cfg.head_dim, cfg.intermediate_size);
        let norm = |name: &str, n: usize| -> Result<RmsNorm> {
            Ok(RmsNorm { weight: p.get(name, &[n])?, eps: cfg.norm_eps, offset: 1.0 })
        };
        let lin = |name: &str, out: usize, inp: usize, bias: bool| Linear::load(p, name, out, inp, bias);
        let mut blocks = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let pre = format!("model.layers.{i}");
            blocks.push(Block {
                input_norm: norm(&format!("{pre}.input_layernorm.weight"), d)?,
                q: lin(&format!("{pre}.self_attn.q_proj"), cfg.num_heads * hd, d, cfg.qkv_bias)?,
                k: lin(&format!("{pre}.self_attn.k_proj"), cfg.num_kv_heads * hd, d, cfg.qkv_bias)?,
                v: lin(&format!("{pre}.self_attn.v_proj"), cfg.num_kv_heads * hd, d, cfg.qkv_bias)?,
                o: lin(&format!("{pre}.self_attn.o_proj"), d, cfg.num_heads * hd, false)?,
                q_norm: norm(&format!("{pre}.self_attn.q_norm.weight"), hd)?,
                k_norm: norm(&format!("{pre}.self_attn.k_norm.weight"), hd)?,
                post_attn_norm: norm(&format!("{pre}.post_attention_layernorm.weight"), d)?,
                pre_ff_norm: norm(&format!("{pre}.pre_feedforward_layernorm.weight"), d)?,
                post_ff_norm: norm(&format!("{pre}.post_feedforward_layernorm.weight"), d)?,
                gate: lin(&format!("{pre}.mlp.gate_proj"), ff, d, false)?,
                up: lin(&format!("{pre}.mlp.up_proj"), ff, d, false)?,
                down: lin(&format!("{pre}.mlp.down_proj"), d, ff, false)?,
                local: cfg.is_local_layer(i),
            });
        }
        let embed = p.get("model.embed_tokens.weight", &[cfg.vocab_size, d])?;
        let lm_head =
            if cfg.tie_word_embeddings { embed.clone() } else { p.get("lm_head.weight", &[cfg.vocab_size, d])? };
        Ok(Self {
            cfg: cfg.clone(),
            embed,
            blocks,
            norm: norm("model.norm.weight", d)?,
            lm_head,
            rope_global: Rope::new(cfg.rope_theta, hd, cfg.rope_scale),
            rope_local: Rope::new(cfg.rope_local_theta, hd, 1.0),
        })
    }

    pub fn hidden(&self, ids: &Tensor, ctx: &Positions, mut cache: Option<&mut KvCache>) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let cfg = &self.cfg;
        let hd = cfg.head_dim;
        let x = self.embed.embedding(&ids.flatten_all()?)?.reshape((b, t, cfg.hidden_size))?; // (B, T, d)
                                                                                              // Gemma multiplies embeddings by sqrt(d), rounded to the compute dtype.
        let mut x = (x * (cfg.hidden_size as f64).sqrt())?;
        let positions = ctx.positions(t);
        let (dt, dev) = (x.dtype(), x.device().clone());
        let (cos_g, sin_g) = self.rope_global.tables(&positions, dt, &dev)?;
        let (cos_l, sin_l) = self.rope_local.tables(&positions, dt, &dev)?;
        let mask_g = ctx.mask(t, None, dt, &dev)?;
        let mask_l = ctx.mask(t, cfg.sliding_window, dt, &dev)?;
        let scale = 1.0 / cfg.query_pre_attn_scalar.unwrap_or(hd as f64).sqrt();
        for (i, blk) in self.blocks.iter().enumerate() {
            let (cos, sin, mask) = if blk.local { (&cos_l, &sin_l, &mask_l) } else { (&cos_g, &sin_g, &mask_g) };
            let h = blk.input_norm.forward(&x)?;
            let q = split_heads(&blk.q.forward(&h)?, cfg.num_heads, hd)?; // (B, H, T, hd)
            let k = split_heads(&blk.k.forward(&h)?, cfg.num_kv_heads, hd)?; // (B, n_kv, T, hd)
            let v = split_heads(&blk.v.forward(&h)?, cfg.num_kv_heads, hd)?; // (B, n_kv, T, hd)
            let q = apply_rope(&blk.q_norm.forward(&q)?, cos, sin)?;
            let k = apply_rope(&blk.k_norm.forward(&k)?, cos, sin)?;
            let (k, v) = match cache.as_deref_mut() {
                Some(c) => c.append(i, k, v)?,
                None => (k, v),
            };
            let y = attention(&q, &k, &v, mask.as_ref(), scale, cfg.attn_logit_softcap)?;
            let y = blk.o.forward(&merge_heads(&y)?)?;
            x = (x + blk.post_attn_norm.forward(&y)?)?;
            let h = blk.pre_ff_norm.forward(&x)?;
            let act = (gelu_tanh(&blk.gate.forward(&h)?)? * blk.up.forward(&h)?)?;
            x = (x + blk.post_ff_norm.forward(&blk.down.forward(&act)?)?)?;
        }
        Ok(self.norm.forward(&x)?)
    }

    /// The output head: its weight `(V, d)` and the final logit soft-cap, if any.
    pub fn head(&self) -> (&Tensor, Option<f64>) {
        (&self.lm_head, self.cfg.final_logit_softcap)
    }

    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let logits = Linear::new(self.lm_head.clone(), None).forward(hidden)?;
        Ok(match self.cfg.final_logit_softcap {
            Some(c) => ((logits / c)?.tanh()? * c)?,
            None => logits,
        })
    }
}
