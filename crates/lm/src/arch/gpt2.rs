//! GPT-2 (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners"): learned
//! absolute positions, pre-norm LayerNorm, fused QKV projection, GELU (tanh) MLP, tied output head.
//!
//! Tensor names follow HF `GPT2LMHeadModel` without the `transformer.` prefix. HF stores GPT-2's
//! projections as `Conv1D` with weights `(in, out)`; the loader transposes them so that here every
//! projection is `(out, in)` like any other linear layer.

use super::layers::{attention, gelu_tanh, merge_heads, split_heads, KvCache, LayerNorm, Linear, Positions};
use crate::config::ModelConfig;
use crate::params::Params;
use anyhow::{bail, Result};
use candle_core::{Module, Tensor, D};

#[derive(Debug, Clone)]
struct Block {
    ln_1: LayerNorm,
    c_attn: Linear,
    c_proj: Linear,
    ln_2: LayerNorm,
    c_fc: Linear,
    mlp_proj: Linear,
}

#[derive(Debug, Clone)]
pub struct Gpt2 {
    cfg: ModelConfig,
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    lm_head: Tensor,
}

/// The names of GPT-2 weights that HF stores as `Conv1D` (transposed).
pub fn is_conv1d(name: &str) -> bool {
    name.ends_with(".weight")
        && [".attn.c_attn.", ".attn.c_proj.", ".mlp.c_fc.", ".mlp.c_proj."].iter().any(|s| name.contains(s))
}

impl Gpt2 {
    pub fn new(cfg: &ModelConfig, p: &Params) -> Result<Self> {
        let (d, ff) = (cfg.hidden_size, cfg.intermediate_size);
        let ln = |pre: &str| -> Result<LayerNorm> {
            Ok(LayerNorm {
                weight: p.get(&format!("{pre}.weight"), &[d])?,
                bias: p.get(&format!("{pre}.bias"), &[d])?,
                eps: cfg.norm_eps,
            })
        };
        let lin = |pre: &str, out: usize, inp: usize| Linear::load(p, pre, out, inp, true);
        let mut blocks = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            blocks.push(Block {
                ln_1: ln(&format!("h.{i}.ln_1"))?,
                c_attn: lin(&format!("h.{i}.attn.c_attn"), 3 * d, d)?,
                c_proj: lin(&format!("h.{i}.attn.c_proj"), d, d)?,
                ln_2: ln(&format!("h.{i}.ln_2"))?,
                c_fc: lin(&format!("h.{i}.mlp.c_fc"), ff, d)?,
                mlp_proj: lin(&format!("h.{i}.mlp.c_proj"), d, ff)?,
            });
        }
        let wte = p.get("wte.weight", &[cfg.vocab_size, d])?;
        let lm_head =
            if cfg.tie_word_embeddings { wte.clone() } else { p.get("lm_head.weight", &[cfg.vocab_size, d])? };
        Ok(Self {
            cfg: cfg.clone(),
            wpe: p.get("wpe.weight", &[cfg.max_position, d])?,
            wte,
            blocks,
            ln_f: ln("ln_f")?,
            lm_head,
        })
    }

    pub fn hidden(&self, ids: &Tensor, ctx: &Positions, mut cache: Option<&mut KvCache>) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let cfg = &self.cfg;
        let (d, h, hd) = (cfg.hidden_size, cfg.num_heads, cfg.head_dim);
        if ctx.start + t > cfg.max_position {
            bail!("sequence of {} tokens is longer than GPT-2's {} positions", ctx.start + t, cfg.max_position);
        }
        let pos: Vec<u32> = ctx.positions(t).into_iter().flatten().collect();
        let pos = Tensor::from_vec(pos, b * t, ids.device())?;
        let x = self.wte.embedding(&ids.flatten_all()?)?; // (B*T, d)
        let mut x = (x + self.wpe.embedding(&pos)?)?.reshape((b, t, d))?; // (B, T, d)
        let mask = ctx.mask(t, None, x.dtype(), x.device())?;
        let scale = 1.0 / (hd as f64).sqrt();
        for (i, blk) in self.blocks.iter().enumerate() {
            let qkv = blk.c_attn.forward(&blk.ln_1.forward(&x)?)?; // (B, T, 3d)
            let q = split_heads(&qkv.narrow(D::Minus1, 0, d)?, h, hd)?; // (B, H, T, hd)
            let k = split_heads(&qkv.narrow(D::Minus1, d, d)?, h, hd)?; // (B, H, T, hd)
            let v = split_heads(&qkv.narrow(D::Minus1, 2 * d, d)?, h, hd)?; // (B, H, T, hd)
            let (k, v) = match cache.as_deref_mut() {
                Some(c) => c.append(i, k, v)?,
                None => (k, v),
            };
            let y = attention(&q, &k, &v, mask.as_ref(), scale, None)?;
            x = (x + blk.c_proj.forward(&merge_heads(&y)?)?)?;
            let m = gelu_tanh(&blk.c_fc.forward(&blk.ln_2.forward(&x)?)?)?;
            x = (x + blk.mlp_proj.forward(&m)?)?;
        }
        Ok(self.ln_f.forward(&x)?)
    }

    /// The output head: its weight `(V, d)` and the final logit soft-cap, if any.
    pub fn head(&self) -> (&Tensor, Option<f64>) {
        (&self.lm_head, None)
    }

    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(Linear::new(self.lm_head.clone(), None).forward(hidden)?)
    }
}
