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
    state: State,
}

/// The moments of one parameter. On the CPU they are plain buffers that the fused step updates in place in
/// one pass together with the parameter; elsewhere (CUDA) they are tensors updated by candle ops.
enum State {
    Host(HostState),
    Tensors { m: Tensor, v: Tensor, m2: Tensor },
}

/// CPU moments in the parameter's own float type (f32, or f64 for the gradient checks). `v` is empty for
/// Lion and `m2` for every optimizer but AdEMAMix: full fine-tuning of a 135M model saves 0.5 GB per unused
/// moment.
enum HostState {
    F32 { m: Vec<f32>, v: Vec<f32>, m2: Vec<f32> },
    F64 { m: Vec<f64>, v: Vec<f64>, m2: Vec<f64> },
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

/// Whether a parameter's update runs as the fused CPU step.
fn fused(var: &Var) -> bool {
    var.device().is_cpu() && matches!(var.dtype(), DType::F32 | DType::F64) && var.as_tensor().is_contiguous()
}

impl State {
    fn new(var: &Var, kind: OptimizerKind) -> Result<Self> {
        let n = var.elem_count();
        let (nv, nm2) =
            (if kind == OptimizerKind::Lion { 0 } else { n }, if kind == OptimizerKind::Ademamix { n } else { 0 });
        if fused(var) {
            return Ok(State::Host(match var.dtype() {
                DType::F32 => HostState::F32 { m: vec![0.0; n], v: vec![0.0; nv], m2: vec![0.0; nm2] },
                _ => HostState::F64 { m: vec![0.0; n], v: vec![0.0; nv], m2: vec![0.0; nm2] },
            }));
        }
        let z = Tensor::zeros(var.shape(), state_dtype(var), var.device())?;
        Ok(State::Tensors { m: z.clone(), v: z.clone(), m2: z })
    }

    /// `m`, `v`, `m2` as tensors of the parameter's shape (zeros where a moment is unused).
    fn tensors(&self, var: &Var) -> Result<[Tensor; 3]> {
        fn t<T: candle_core::WithDType>(x: &[T], var: &Var) -> Result<Tensor> {
            Ok(if x.is_empty() {
                Tensor::zeros(var.shape(), T::DTYPE, &candle_core::Device::Cpu)?
            } else {
                Tensor::from_slice(x, var.shape(), &candle_core::Device::Cpu)?
            })
        }
        Ok(match self {
            State::Host(HostState::F32 { m, v, m2 }) => [t(m, var)?, t(v, var)?, t(m2, var)?],
            State::Host(HostState::F64 { m, v, m2 }) => [t(m, var)?, t(v, var)?, t(m2, var)?],
            State::Tensors { m, v, m2 } => [m.clone(), v.clone(), m2.clone()],
        })
    }

    /// Overwrites moment `which` (0 m, 1 v, 2 m2) with `x` (already checked to have the right shape).
    fn set(&mut self, which: usize, x: &Tensor) -> Result<()> {
        fn put<T: candle_core::WithDType>(dst: &mut Vec<T>, x: &Tensor) -> Result<()> {
            if !dst.is_empty() {
                *dst = x.to_dtype(T::DTYPE)?.flatten_all()?.to_vec1()?;
            }
            Ok(())
        }
        match self {
            State::Host(HostState::F32 { m, v, m2 }) => put([m, v, m2].into_iter().nth(which).unwrap(), x),
            State::Host(HostState::F64 { m, v, m2 }) => put([m, v, m2].into_iter().nth(which).unwrap(), x),
            State::Tensors { m, v, m2 } => {
                let slot = [m, v, m2].into_iter().nth(which).unwrap();
                *slot = x.to_device(slot.device())?.to_dtype(slot.dtype())?;
                Ok(())
            }
        }
    }
}

impl Optimizer {
    pub fn new(vars: Vec<Var>, params: OptimizerParams) -> Result<Self> {
        let mut slots = Vec::with_capacity(vars.len());
        for var in vars {
            let state = State::new(&var, params.kind)?;
            slots.push(Slot { var, state });
        }
        Ok(Self { params, slots, t: 0 })
    }

    /// The optimizer state as named tensors (for checkpoints): `m.i`, `v.i`, `m2.i` for parameter i.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for (i, s) in self.slots.iter().enumerate() {
            let [m, v, m2] = s.state.tensors(&s.var)?;
            out.push((format!("m.{i}"), m));
            out.push((format!("v.{i}"), v));
            out.push((format!("m2.{i}"), m2));
        }
        Ok(out)
    }

    /// Restores state saved by [`Optimizer::state`] at step `t`.
    pub fn load_state(&mut self, t: u64, state: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        for (i, s) in self.slots.iter_mut().enumerate() {
            for (which, name) in ["m", "v", "m2"].into_iter().enumerate() {
                let key = format!("{name}.{i}");
                let Some(x) = state.get(&key) else { bail!("optimizer state `{key}` is missing") };
                if x.dims() != s.var.dims() {
                    bail!("optimizer state `{key}` has shape {:?}, expected {:?}", x.dims(), s.var.dims());
                }
                s.state.set(which, x)?;
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
        self.step_scaled(grads, lr, 1.0)
    }

    /// [`Optimizer::step_with`] on the gradients times `scale` (gradient clipping's coefficient, applied
    /// inside the update so that no scaled copy of the gradients is made).
    pub fn step_scaled(&mut self, grads: &[Option<Tensor>], lr: f64, scale: f64) -> Result<()> {
        if grads.len() != self.slots.len() {
            bail!("{} gradients for {} parameters", grads.len(), self.slots.len());
        }
        self.t += 1;
        let h = Hyper::new(&self.params, self.t, lr, scale);
        for (s, g) in self.slots.iter_mut().zip(grads) {
            let Some(g) = g else { continue };
            match &mut s.state {
                State::Host(host) if g.device().is_cpu() => fused_step(&s.var, g, host, &h)?,
                State::Host(_) => bail!("a gradient on {:?} for a CPU parameter", g.device()),
                State::Tensors { m, v, m2 } => tensor_step(&s.var, g, m, v, m2, &h)?,
            }
        }
        Ok(())
    }
}

/// The scalars of one step, shared by both paths.
struct Hyper {
    kind: OptimizerKind,
    b1: f64,
    b2: f64,
    b3: f64,
    alpha: f64,
    eps: f64,
    wd: f64,
    lr: f64,
    scale: f64,
    bc1: f64,
    bc2: f64,
    /// RAdam's rectification factor when the variance is tractable (ρ_t > 5), else `None` (plain momentum).
    radam_r: Option<f64>,
}

impl Hyper {
    fn new(p: &OptimizerParams, step: u64, lr: f64, scale: f64) -> Self {
        let t = step as i32;
        let (b1, b2) = (p.beta1, p.beta2);
        let bc2 = 1.0 - b2.powi(t);
        let rho_inf = 2.0 / (1.0 - b2) - 1.0;
        let rho_t = rho_inf - 2.0 * t as f64 * b2.powi(t) / bc2;
        let radam_r = (rho_t > 5.0)
            .then(|| ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)).sqrt());
        Self {
            kind: p.kind,
            b1,
            b2,
            b3: p.beta3,
            alpha: p.alpha,
            eps: p.eps,
            wd: p.weight_decay,
            lr,
            scale,
            bc1: 1.0 - b1.powi(t),
            bc2,
            radam_r,
        }
    }
}

/// The update of one parameter through candle ops (any device).
fn tensor_step(var: &Var, g: &Tensor, m: &mut Tensor, v: &mut Tensor, m2: &mut Tensor, h: &Hyper) -> Result<()> {
    let dt = m.dtype();
    let mut g = g.to_dtype(dt)?;
    if h.scale != 1.0 {
        g = (g * h.scale)?;
    }
    let theta = var.as_tensor().to_dtype(dt)?;
    let (b1, b2) = (h.b1, h.b2);
    let update = match h.kind {
        OptimizerKind::Lion => {
            let c = ((&*m * b1)? + (&g * (1.0 - b1))?)?;
            *m = ((&*m * b2)? + (&g * (1.0 - b2))?)?;
            c.sign()?
        }
        _ => {
            *m = ((&*m * b1)? + (&g * (1.0 - b1))?)?;
            *v = ((&*v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let m_hat = (&*m / h.bc1)?;
            let denom = ((&*v / h.bc2)?.sqrt()? + h.eps)?;
            match h.kind {
                OptimizerKind::Adamw => (m_hat / denom)?,
                OptimizerKind::Ademamix => {
                    *m2 = ((&*m2 * h.b3)? + (&g * (1.0 - h.b3))?)?;
                    ((m_hat + (&*m2 * h.alpha)?)? / denom)?
                }
                OptimizerKind::CautiousAdamw => {
                    let u = (m_hat / denom)?;
                    let mask = (&u * &g)?.gt(0.0)?.to_dtype(dt)?;
                    let frac = mask.mean_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?.max(1e-3);
                    ((u * mask)? / frac)?
                }
                OptimizerKind::Grams => (g.sign()? * (m_hat / denom)?.abs()?)?,
                OptimizerKind::Radam => match h.radam_r {
                    // PyTorch: sqrt(bc2) / (sqrt(v) + eps).
                    Some(r) => ((m_hat * ((v.sqrt()? + h.eps)?.recip()? * h.bc2.sqrt())?)? * r)?,
                    None => m_hat,
                },
                OptimizerKind::Lion => unreachable!(),
            }
        }
    };
    let new = (&theta - ((update + (&theta * h.wd)?)? * h.lr)?)?;
    var.set(&new.to_dtype(var.dtype())?)?;
    Ok(())
}

/// The update of one CPU parameter in one pass over its buffer, in place: the same arithmetic as
/// [`tensor_step`] element by element (a test holds the two paths together), in the parameter's precision
/// (PyTorch's fused AdamW also computes in the parameter's dtype).
fn fused_step(var: &Var, g: &Tensor, host: &mut HostState, h: &Hyper) -> Result<()> {
    let g = if g.dtype() != var.dtype() { g.to_dtype(var.dtype())? } else { g.clone() }.contiguous()?;
    let (gs, gl) = g.storage_and_layout();
    let Some((g0, g1)) = gl.contiguous_offsets() else { bail!("a gradient is not contiguous") };
    let op = FusedStep { h, host: std::sync::Mutex::new(host), grad: &gs, range: g0..g1 };
    var.as_tensor().inplace_op1(&op)?;
    Ok(())
}

struct FusedStep<'a> {
    h: &'a Hyper,
    host: std::sync::Mutex<&'a mut HostState>,
    grad: &'a candle_core::Storage,
    range: std::ops::Range<usize>,
}

impl candle_core::InplaceOp1 for FusedStep<'_> {
    fn name(&self) -> &'static str {
        "fused-optimizer-step"
    }

    fn cpu_fwd(&self, theta: &mut candle_core::CpuStorage, l: &candle_core::Layout) -> candle_core::Result<()> {
        use candle_core::{CpuStorage, Storage};
        let Some((t0, t1)) = l.contiguous_offsets() else { candle_core::bail!("a parameter is not contiguous") };
        let mut host = self.host.lock().unwrap();
        let r = self.range.clone();
        match (theta, &mut **host, self.grad) {
            (CpuStorage::F32(p), HostState::F32 { m, v, m2 }, Storage::Cpu(CpuStorage::F32(g))) => {
                update(&mut p[t0..t1], &g[r], m, v, m2, self.h)
            }
            (CpuStorage::F64(p), HostState::F64 { m, v, m2 }, Storage::Cpu(CpuStorage::F64(g))) => {
                update(&mut p[t0..t1], &g[r], m, v, m2, self.h)
            }
            _ => candle_core::bail!("fused optimizer step: parameter, gradient and moments differ in dtype"),
        }
        Ok(())
    }
}

/// `x` in chunks of [`CHUNK`], or as many empty slices as `n` elements make chunks when `x` is an unused
/// moment (Lion has no `v`, and only AdEMAMix has `m2`).
fn chunks_or_empty<T>(x: &mut [T], n: usize) -> Vec<&mut [T]> {
    if x.is_empty() {
        (0..n.div_ceil(CHUNK)).map(|_| <&mut [T]>::default()).collect()
    } else {
        x.chunks_mut(CHUNK).collect()
    }
}

/// Elements per parallel task: large enough that scheduling is noise, small enough to split a layer.
const CHUNK: usize = 1 << 16;

fn update<T: num_traits::Float + Send + Sync>(p: &mut [T], g: &[T], m: &mut [T], v: &mut [T], m2: &mut [T], h: &Hyper) {
    use rayon::prelude::*;
    let c = |x: f64| T::from(x).unwrap();
    let (b1, b2, b3) = (c(h.b1), c(h.b2), c(h.b3));
    // 1 − β in f64, then rounded once, as the tensor path's scalar ops do: rounding β first would make a few
    // coordinates (Lion's sign near 0, the cautious mask) land on the other side in one path only.
    let (nb1, nb2, nb3) = (c(1.0 - h.b1), c(1.0 - h.b2), c(1.0 - h.b3));
    let (one, zero) = (T::one(), T::zero());
    // Divisions by a scalar as the tensor path does them (candle's `x / s` multiplies by `1 / s`).
    let (inv_bc1, inv_bc2, eps, alpha, wd, lr, scale) =
        (c(1.0 / h.bc1), c(1.0 / h.bc2), c(h.eps), c(h.alpha), c(h.wd), c(h.lr), c(h.scale));
    let sign = |x: T| {
        if x > zero {
            one
        } else if x < zero {
            -one
        } else {
            zero
        }
    };
    let apply = |p: &mut T, u: T| *p = *p - (u + *p * wd) * lr;
    let n = p.len();
    let (vc, m2c) = (chunks_or_empty(v, n), chunks_or_empty(m2, n));
    let parts = p.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).zip(m.par_chunks_mut(CHUNK)).zip(vc).zip(m2c);
    match h.kind {
        OptimizerKind::Lion => parts.for_each(|((((p, g), m), _), _)| {
            for i in 0..p.len() {
                let gi = g[i] * scale;
                let u = sign(m[i] * b1 + gi * nb1);
                m[i] = m[i] * b2 + gi * nb2;
                apply(&mut p[i], u);
            }
        }),
        OptimizerKind::CautiousAdamw => {
            // Two passes: the kept fraction is over the whole parameter, then every kept coordinate moves.
            let kept: usize = parts
                .map(|((((_, g), m), v), _)| {
                    let mut k = 0;
                    for i in 0..g.len() {
                        let gi = g[i] * scale;
                        m[i] = m[i] * b1 + gi * nb1;
                        v[i] = v[i] * b2 + gi * gi * nb2;
                        let u = (m[i] * inv_bc1) / ((v[i] * inv_bc2).sqrt() + eps);
                        k += (u * gi > zero) as usize;
                    }
                    k
                })
                .sum();
            let inv_frac = c(1.0 / (kept as f64 / n.max(1) as f64).max(1e-3));
            p.par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK))
                .zip(m.par_chunks(CHUNK))
                .zip(v.par_chunks(CHUNK))
                .for_each(|(((p, g), m), v)| {
                    for i in 0..p.len() {
                        let gi = g[i] * scale;
                        let u = (m[i] * inv_bc1) / ((v[i] * inv_bc2).sqrt() + eps);
                        let u = if u * gi > zero { u * inv_frac } else { zero };
                        apply(&mut p[i], u);
                    }
                });
        }
        kind => {
            let radam = h.radam_r.map(|r| (c(r), c(h.bc2.sqrt())));
            parts.for_each(|((((p, g), m), v), m2)| {
                for i in 0..p.len() {
                    let gi = g[i] * scale;
                    m[i] = m[i] * b1 + gi * nb1;
                    v[i] = v[i] * b2 + gi * gi * nb2;
                    let m_hat = m[i] * inv_bc1;
                    let denom = (v[i] * inv_bc2).sqrt() + eps;
                    let u = match kind {
                        OptimizerKind::Ademamix => {
                            m2[i] = m2[i] * b3 + gi * nb3;
                            (m_hat + m2[i] * alpha) / denom
                        }
                        OptimizerKind::Grams => sign(gi) * (m_hat / denom).abs(),
                        OptimizerKind::Radam => match radam {
                            Some((r, sqrt_bc2)) => m_hat * ((v[i].sqrt() + eps).recip() * sqrt_bc2) * r,
                            None => m_hat,
                        },
                        _ => m_hat / denom,
                    };
                    apply(&mut p[i], u);
                }
            });
        }
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

/// Adds one micro-batch's gradients to `acc`, slot `i` holding `vars[i]`'s sum so far (gradient accumulation;
/// the first contribution is kept as it is).
pub(crate) fn accumulate_grads(acc: &mut [Option<Tensor>], vars: &[(String, Var)], grads: &GradStore) -> Result<()> {
    for (slot, (_, v)) in acc.iter_mut().zip(vars) {
        if let Some(g) = grads.get(v.as_tensor()) {
            *slot = Some(match slot.take() {
                Some(a) => (a + g)?,
                None => g.clone(),
            });
        }
    }
    Ok(())
}

/// The global L2 norm of the gradients, accumulated in f64 (PyTorch `clip_grad_norm_`'s norm, TRL's
/// `grad_norm`). CPU gradients are read where they lie; nothing is copied.
pub fn grad_norm(grads: &[Option<Tensor>]) -> Result<f64> {
    use candle_core::{CpuStorage, Storage};
    fn sum_sq<T: Copy + Into<f64>>(x: &[T]) -> f64 {
        // Eight partial sums: independent chains the CPU can overlap, and less rounding than one.
        let mut acc = [0f64; 8];
        let mut chunks = x.chunks_exact(8);
        for c in &mut chunks {
            for (a, &v) in acc.iter_mut().zip(c) {
                let v: f64 = v.into();
                *a += v * v;
            }
        }
        let tail: f64 = chunks.remainder().iter().map(|&v| v.into() * v.into()).sum();
        acc.iter().sum::<f64>() + tail
    }
    let mut sq = 0.0;
    for g in grads.iter().flatten() {
        let (s, l) = g.storage_and_layout();
        sq += match (&*s, l.contiguous_offsets()) {
            (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => sum_sq(&v[a..b]),
            (Storage::Cpu(CpuStorage::F64(v)), Some((a, b))) => sum_sq(&v[a..b]),
            _ => {
                drop(s);
                g.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?
            }
        };
    }
    Ok(sq.sqrt())
}

/// The factor that brings a gradient of norm `norm` down to `max_norm` (1 when it is already within).
pub fn clip_coef(norm: f64, max_norm: Option<f64>) -> f64 {
    match max_norm.filter(|&m| m > 0.0) {
        Some(m) => (m / (norm + 1e-6)).min(1.0),
        None => 1.0,
    }
}

/// Scales gradients so their global L2 norm is at most `max_norm` (PyTorch `clip_grad_norm_`), and returns
/// the norm before clipping (TRL's `grad_norm`). The trainer instead passes [`clip_coef`] to
/// [`Optimizer::step_scaled`], which never makes the scaled copies.
pub fn clip_grads(grads: &mut [Option<Tensor>], max_norm: Option<f64>) -> Result<f64> {
    let norm = grad_norm(grads)?;
    let coef = clip_coef(norm, max_norm);
    if coef < 1.0 {
        for g in grads.iter_mut().flatten() {
            *g = (&*g * coef)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    const KINDS: [OptimizerKind; 6] = [
        OptimizerKind::Adamw,
        OptimizerKind::Lion,
        OptimizerKind::Ademamix,
        OptimizerKind::CautiousAdamw,
        OptimizerKind::Grams,
        OptimizerKind::Radam,
    ];

    /// The fused CPU step and the candle-op step (the path other devices take) give the same parameters and
    /// moments, step after step, with a clipping factor and weight decay, in f32 and f64, and through RAdam's
    /// rectified branch (ρ_t > 5 from step 6 with β2 = 0.999).
    #[test]
    fn fused_step_equals_the_tensor_ops() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let dev = candle_core::Device::Cpu;
        let mut rng = StdRng::seed_from_u64(11);
        let mut randn = |n: usize, dtype: DType| -> Tensor {
            // Sums of uniforms: roughly normal, and reproducible.
            let v: Vec<f32> = (0..n).map(|_| (0..4).map(|_| rng.random::<f32>() - 0.5).sum::<f32>() * 1.7).collect();
            Tensor::from_vec(v, n, &candle_core::Device::Cpu).unwrap().to_dtype(dtype).unwrap()
        };
        for dtype in [DType::F32, DType::F64] {
            for kind in KINDS {
                let params = OptimizerParams { kind, weight_decay: 0.1, ..Default::default() };
                // 2 · CHUNK + 7 elements: several parallel chunks and a ragged tail.
                let n = 2 * CHUNK + 7;
                let init = randn(n, dtype);
                let (a, b) = (Var::from_tensor(&init).unwrap(), Var::from_tensor(&init).unwrap());
                let mut fused = Optimizer::new(vec![a.clone()], params.clone()).unwrap();
                let mut plain = Optimizer::new(vec![b.clone()], params.clone()).unwrap();
                assert!(matches!(fused.slots[0].state, State::Host(_)));
                let z = Tensor::zeros(n, dtype, &dev).unwrap();
                plain.slots[0].state = State::Tensors { m: z.clone(), v: z.clone(), m2: z };
                for step in 0..8 {
                    // Some exact zeros: sign(0) and the cautious mask must agree there too.
                    let g = randn(n, dtype);
                    let g = g.broadcast_mul(&g.abs().unwrap().gt(0.05).unwrap().to_dtype(dtype).unwrap()).unwrap();
                    let grads = [Some(g)];
                    let scale = if step % 2 == 0 { 0.7 } else { 1.0 };
                    fused.step_scaled(&grads, 1e-3, scale).unwrap();
                    plain.step_scaled(&grads, 1e-3, scale).unwrap();
                }
                let diff = |x: &Tensor, y: &Tensor| -> f64 {
                    let d = (x.to_dtype(DType::F64).unwrap() - y.to_dtype(DType::F64).unwrap()).unwrap();
                    d.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap()
                };
                let tol = if dtype == DType::F32 { 1e-6 } else { 1e-12 };
                let moved = diff(a.as_tensor(), &init);
                assert!(moved > 1e-3, "{kind:?} {dtype:?}: the parameter did not move ({moved})");
                let d = diff(a.as_tensor(), b.as_tensor());
                assert!(d < tol, "{kind:?} {dtype:?}: parameters differ by {d}");
                for ((name, x), (_, y)) in fused.state().unwrap().iter().zip(plain.state().unwrap().iter()) {
                    let unused = (name.starts_with("v.") && kind == OptimizerKind::Lion)
                        || (name.starts_with("m2.") && kind != OptimizerKind::Ademamix);
                    if !unused {
                        let d = diff(x, y);
                        assert!(d < tol, "{kind:?} {dtype:?}: state {name} differs by {d}");
                    }
                }
            }
        }
    }

    /// The norm read in place equals the norm through tensor ops, and clipping's factor brings it to the
    /// maximum.
    #[test]
    fn grad_norm_reads_in_place_and_clip_coef_caps_it() {
        let dev = candle_core::Device::Cpu;
        let g1 = Tensor::randn(0f32, 1.0, (300, 7), &dev).unwrap();
        let g2 = Tensor::randn(0f32, 2.0, 1001, &dev).unwrap().to_dtype(DType::F64).unwrap();
        // A non-contiguous view takes the fallback path.
        let g3 = Tensor::randn(0f32, 1.0, (5, 9), &dev).unwrap().t().unwrap();
        let grads = [Some(g1.clone()), None, Some(g2.clone()), Some(g3.clone())];
        let expect = [g1, g2, g3]
            .iter()
            .map(|g| g.to_dtype(DType::F64).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap())
            .sum::<f64>()
            .sqrt();
        let norm = grad_norm(&grads).unwrap();
        assert!((norm - expect).abs() < 1e-9 * expect, "{norm} vs {expect}");
        assert!((clip_coef(norm, Some(1.0)) * norm - 1.0).abs() < 1e-5);
        assert_eq!(clip_coef(norm, Some(1e9)), 1.0);
        assert_eq!(clip_coef(norm, None), 1.0);
        assert_eq!(clip_coef(norm, Some(0.0)), 1.0);
    }
}
