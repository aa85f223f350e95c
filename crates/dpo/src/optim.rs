//! Optimizers, learning-rate schedules and gradient clipping for preference training.
//!
//! Moments are kept in f32 (or the parameter's dtype if wider) whatever the compute dtype. Weight decay is
//! decoupled (Loshchilov & Hutter 2019) in every optimizer. Formulas follow the papers and PyTorch's
//! implementations so that runs can be compared with TRL's.

use anyhow::{bail, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// Adam with decoupled weight decay (Loshchilov & Hutter 2019, arXiv 1711.05101).
    Adamw,
    /// Lion (Chen et al. 2023, arXiv 2302.06675): sign of an interpolated momentum.
    Lion,
    /// AdEMAMix (Pagliardini et al. 2024, arXiv 2409.03137): Adam plus a slow EMA weighted by α.
    Ademamix,
    /// Cautious AdamW (Liang et al. 2024, arXiv 2411.16085): only coordinates where the update agrees
    /// with the gradient move, rescaled by the kept fraction.
    CautiousAdamw,
    /// Grams (Cao et al. 2024, arXiv 2412.17107): Adam's magnitude with the gradient's sign.
    Grams,
    /// RAdam (Liu et al. 2020, arXiv 1908.03265): variance-rectified Adam.
    Radam,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimizerParams {
    pub kind: OptimizerKind,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// AdEMAMix slow-EMA rate β3 and mixing weight α.
    pub beta3: f64,
    pub alpha: f64,
}

impl Default for OptimizerParams {
    fn default() -> Self {
        // PyTorch/HF AdamW defaults; the APL paper used Adam with no weight decay.
        Self {
            kind: OptimizerKind::Adamw,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            beta3: 0.9999,
            alpha: 5.0,
        }
    }
}

/// Per-parameter optimizer state.
struct Slot {
    var: Var,
    m: Tensor,
    v: Tensor,
    /// AdEMAMix's slow EMA.
    m2: Tensor,
}

pub struct Optimizer {
    pub params: OptimizerParams,
    slots: Vec<Slot>,
    /// Number of steps taken.
    pub t: u64,
}

fn state_dtype(v: &Var) -> DType {
    if v.dtype() == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

impl Optimizer {
    pub fn new(vars: Vec<Var>, params: OptimizerParams) -> Result<Self> {
        let mut slots = Vec::with_capacity(vars.len());
        for var in vars {
            let z = Tensor::zeros(var.shape(), state_dtype(&var), var.device())?;
            slots.push(Slot { var, m: z.clone(), v: z.clone(), m2: z });
        }
        Ok(Self { params, slots, t: 0 })
    }

    /// The optimizer state as named tensors (for checkpoints): `m.i`, `v.i`, `m2.i` for parameter i.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, s) in self.slots.iter().enumerate() {
            out.push((format!("m.{i}"), s.m.clone()));
            out.push((format!("v.{i}"), s.v.clone()));
            out.push((format!("m2.{i}"), s.m2.clone()));
        }
        out
    }

    /// Restores state saved by [`Optimizer::state`] at step `t`.
    pub fn load_state(&mut self, t: u64, state: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        for (i, s) in self.slots.iter_mut().enumerate() {
            for (name, slot) in [("m", &mut s.m), ("v", &mut s.v), ("m2", &mut s.m2)] {
                let key = format!("{name}.{i}");
                let Some(x) = state.get(&key) else { bail!("optimizer state `{key}` is missing") };
                if x.dims() != slot.dims() {
                    bail!("optimizer state `{key}` has shape {:?}, expected {:?}", x.dims(), slot.dims());
                }
                *slot = x.to_device(slot.device())?.to_dtype(slot.dtype())?;
            }
        }
        self.t = t;
        Ok(())
    }

    /// One update with learning rate `lr` from a backward pass's gradient store.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        let g: Vec<Option<Tensor>> = self.slots.iter().map(|s| grads.get(s.var.as_tensor()).cloned()).collect();
        self.step_with(&g, lr)
    }

    /// One update with gradients given in the order of the variables passed to `new`; parameters
    /// without a gradient are left alone.
    pub fn step_with(&mut self, grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        if grads.len() != self.slots.len() {
            bail!("{} gradients for {} parameters", grads.len(), self.slots.len());
        }
        self.t += 1;
        let p = self.params.clone();
        let t = self.t as i32;
        let (b1, b2) = (p.beta1, p.beta2);
        let bc1 = 1.0 - b1.powi(t);
        let bc2 = 1.0 - b2.powi(t);
        for (s, g) in self.slots.iter_mut().zip(grads) {
            let Some(g) = g else { continue };
            let dt = s.m.dtype();
            let g = g.to_dtype(dt)?;
            let theta = s.var.as_tensor().to_dtype(dt)?;
            let update = match p.kind {
                OptimizerKind::Lion => {
                    let c = ((&s.m * b1)? + (&g * (1.0 - b1))?)?;
                    s.m = ((&s.m * b2)? + (&g * (1.0 - b2))?)?;
                    c.sign()?
                }
                _ => {
                    s.m = ((&s.m * b1)? + (&g * (1.0 - b1))?)?;
                    s.v = ((&s.v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
                    let m_hat = (&s.m / bc1)?;
                    let denom = ((&s.v / bc2)?.sqrt()? + p.eps)?;
                    match p.kind {
                        OptimizerKind::Adamw => (m_hat / denom)?,
                        OptimizerKind::Ademamix => {
                            s.m2 = ((&s.m2 * p.beta3)? + (&g * (1.0 - p.beta3))?)?;
                            ((m_hat + (&s.m2 * p.alpha)?)? / denom)?
                        }
                        OptimizerKind::CautiousAdamw => {
                            let u = (m_hat / denom)?;
                            let mask = (&u * &g)?.gt(0.0)?.to_dtype(dt)?;
                            let frac = mask.mean_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?.max(1e-3);
                            ((u * mask)? / frac)?
                        }
                        OptimizerKind::Grams => (g.sign()? * (m_hat / denom)?.abs()?)?,
                        OptimizerKind::Radam => {
                            let rho_inf = 2.0 / (1.0 - b2) - 1.0;
                            let rho_t = rho_inf - 2.0 * t as f64 * b2.powi(t) / bc2;
                            if rho_t > 5.0 {
                                let r = ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                                    / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
                                    .sqrt();
                                // PyTorch: sqrt(bc2) / (sqrt(v) + eps).
                                let adaptive = (s.v.sqrt()? + p.eps)?.recip()? * bc2.sqrt();
                                ((m_hat * adaptive)? * r)?
                            } else {
                                m_hat
                            }
                        }
                        OptimizerKind::Lion => unreachable!(),
                    }
                }
            };
            let new = (&theta - ((update + (&theta * p.weight_decay)?)? * lr)?)?;
            s.var.set(&new.to_dtype(s.var.dtype())?)?;
        }
        Ok(())
    }
}

/// Learning-rate schedules with linear warmup, as HF `get_*_schedule_with_warmup` (the first step of a
/// warmup runs at lr 0, like HF's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    Constant,
    Linear,
    Cosine,
}

/// Learning rate for optimizer step `step` (0-based) of `total`.
pub fn learning_rate(schedule: Schedule, base: f64, step: u64, warmup: u64, total: u64) -> f64 {
    if step < warmup {
        return base * step as f64 / warmup.max(1) as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    match schedule {
        Schedule::Constant => base,
        Schedule::Linear => base * (1.0 - progress).max(0.0),
        Schedule::Cosine => base * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos()),
    }
}

/// Scales gradients so their global L2 norm is at most `max_norm` (PyTorch `clip_grad_norm_`), and returns
/// the norm before clipping (TRL's `grad_norm`).
pub fn clip_grads(grads: &mut [Option<Tensor>], max_norm: Option<f64>) -> Result<f64> {
    let mut sq = 0.0;
    for g in grads.iter().flatten() {
        sq += g.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
    }
    let norm = sq.sqrt();
    if let Some(m) = max_norm.filter(|&m| m > 0.0) {
        let coef = m / (norm + 1e-6);
        if coef < 1.0 {
            for g in grads.iter_mut().flatten() {
                *g = (&*g * coef)?;
            }
        }
    }
    Ok(norm)
}

/// [`clip_grads`] over a backward pass's gradient store.
pub fn clip_grad_norm(vars: &[Var], grads: &mut GradStore, max_norm: Option<f64>) -> Result<f64> {
    let mut g: Vec<Option<Tensor>> = vars.iter().map(|v| grads.get(v.as_tensor()).cloned()).collect();
    let norm = clip_grads(&mut g, max_norm)?;
    for (v, g) in vars.iter().zip(g) {
        if let Some(g) = g {
            grads.insert(v.as_tensor(), g);
        }
    }
    Ok(norm)
}
