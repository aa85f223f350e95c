//! The DPO trainer and its loop: batches of preference pairs through the policy (and, once, the
//! reference), a loss from the family in `loss`, gradient accumulation and clipping, an optimizer step,
//! TRL-named metrics. Its settings live in [`crate::config`] (re-exported here), its checkpoints and resume
//! in [`crate::checkpoint`].
//!
//! Reference log-probs are computed once per pair before training and cached (TRL's
//! `precompute_ref_log_probs`), so no epoch runs a reference forward. With LoRA the reference is the base
//! model without adapters, sharing the frozen base tensors. The whole schedule of optimizer steps (which
//! pairs, in which order) is a function of the seed, so a run resumed from a checkpoint ends exactly where
//! the uninterrupted run ends.

pub use crate::config::{LoraConfig, TrainConfig};

use crate::data::TokenPair;
use crate::loss::{rewards, token_loss, LossParams, LossType, PairLogps, TokenLogps};
use crate::optim::{accumulate_grads, clip_coef, grad_norm, learning_rate, Optimizer};
use anyhow::{bail, Context as _, Result};
use candle_core::{DType, Tensor, Var};
use lm::score::completion_logprobs;
use lm::{LanguageModel, Params};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What the trainer reports after each optimizer step (for progress bars).
#[derive(Debug, Clone)]
pub struct StepInfo {
    pub step: u64,
    pub total: u64,
    pub loss: f64,
}

/// The plan of a run: for every optimizer step, its micro-batches of pair indices.
pub fn schedule(n_pairs: usize, cfg: &TrainConfig) -> Vec<Vec<Vec<usize>>> {
    let mut steps = Vec::new();
    for epoch in 0..cfg.epochs {
        let mut order: Vec<usize> = (0..n_pairs).collect();
        order.shuffle(&mut StdRng::seed_from_u64(cfg.seed.wrapping_add(epoch as u64)));
        let micro: Vec<Vec<usize>> = order.chunks(cfg.batch_size).map(<[usize]>::to_vec).collect();
        for group in micro.chunks(cfg.gradient_accumulation_steps) {
            steps.push(group.to_vec());
        }
    }
    steps
}

/// Policy and reference log-probs of a batch of pairs.
struct BatchLogps {
    /// The policy's per-token log-probs (the graph, when training).
    tokens: TokenLogps,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    mean_logit_chosen: Tensor,
    mean_logit_rejected: Tensor,
}

/// The scores of one forward over the 2B sequences of a batch (chosen rows first), in f32.
struct Forward {
    chosen: Tensor,
    rejected: Tensor,
    mean_logit_chosen: Tensor,
    mean_logit_rejected: Tensor,
    tokens: TokenLogps,
}

/// Log-probs of chosen and rejected under `model`: one forward over 2B sequences.
fn policy_logps(model: &LanguageModel, pairs: &[&TokenPair]) -> Result<Forward> {
    let b = pairs.len();
    let items: Vec<(Vec<u32>, Vec<u32>)> = pairs
        .iter()
        .map(|p| (p.prompt.clone(), p.chosen.clone()))
        .chain(pairs.iter().map(|p| (p.prompt.clone(), p.rejected.clone())))
        .collect();
    let s = completion_logprobs(model, &items)?;
    let f32 = |t: &Tensor| t.to_dtype(DType::F32);
    let (sum, ml, tok, mask, lss) =
        (f32(&s.sum)?, f32(&s.mean_logit)?, f32(&s.tokens)?, f32(&s.mask)?, f32(&s.log_sum_sq)?);
    let halves = |t: &Tensor| -> Result<(Tensor, Tensor)> { Ok((t.narrow(0, 0, b)?, t.narrow(0, b, b)?)) };
    let ((c, r), (mlc, mlr)) = (halves(&sum)?, halves(&ml)?);
    let ((tc, tr), (mc, mr), (lc, lr)) = (halves(&tok)?, halves(&mask)?, halves(&lss)?);
    Ok(Forward {
        chosen: c,
        rejected: r,
        mean_logit_chosen: mlc,
        mean_logit_rejected: mlr,
        tokens: TokenLogps {
            chosen: tc,
            rejected: tr,
            chosen_mask: mc,
            rejected_mask: mr,
            chosen_log_sum_sq: Some(lc),
            rejected_log_sum_sq: Some(lr),
        },
    })
}

/// Reference log-probs `(chosen, rejected)` of every pair, `batch` at a time, without a graph.
pub fn reference_logps(reference: &LanguageModel, pairs: &[TokenPair], batch: usize) -> Result<Vec<(f32, f32)>> {
    let mut out = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(batch.max(1)) {
        let refs: Vec<&TokenPair> = chunk.iter().collect();
        let f = policy_logps(reference, &refs)?;
        let (c, r): (Vec<f32>, Vec<f32>) = (f.chosen.detach().to_vec1()?, f.rejected.detach().to_vec1()?);
        out.extend(c.into_iter().zip(r));
    }
    Ok(out)
}

/// Running means of the TRL metrics over a logging window.
#[derive(Default)]
struct Window {
    n: f64,
    sums: BTreeMap<&'static str, f64>,
}

impl Window {
    fn add(&mut self, key: &'static str, v: f64) {
        *self.sums.entry(key).or_default() += v;
    }
    /// `x` is what the losses saw (LD-weighted log-probs under `ld_alpha`, as TRL logs them).
    fn add_batch(&mut self, loss: f64, x: &PairLogps, b: &BatchLogps, p: &LossParams) -> Result<()> {
        let (rc, rr) = rewards(p, x)?;
        let mean = |t: &Tensor| -> Result<f64> { Ok(t.detach().to_dtype(DType::F64)?.mean_all()?.to_scalar::<f64>()?) };
        self.add("loss", loss);
        self.add("rewards/chosen", mean(&rc)?);
        self.add("rewards/rejected", mean(&rr)?);
        self.add("rewards/accuracies", mean(&rc.gt(&rr)?.to_dtype(DType::F32)?)?);
        self.add("rewards/margins", mean(&(&rc - &rr)?)?);
        self.add("logps/chosen", mean(&x.chosen)?);
        self.add("logps/rejected", mean(&x.rejected)?);
        self.add("logits/chosen", mean(&b.mean_logit_chosen)?);
        self.add("logits/rejected", mean(&b.mean_logit_rejected)?);
        self.n += 1.0;
        Ok(())
    }
    fn take(&mut self, prefix: &str) -> Map<String, Value> {
        let m = self.sums.iter().map(|(k, v)| (format!("{prefix}{k}"), json!(v / self.n.max(1.0)))).collect();
        *self = Self::default();
        m
    }
}

pub struct Trainer {
    pub cfg: TrainConfig,
    pub policy: LanguageModel,
    reference: Option<LanguageModel>,
    pub(crate) vars: Vec<(String, Var)>,
    pub(crate) opt: Optimizer,
    train: Vec<TokenPair>,
    eval: Vec<TokenPair>,
    pub(crate) ref_train: Option<Vec<(f32, f32)>>,
    ref_eval: Option<Vec<(f32, f32)>>,
    pub out: PathBuf,
    pub step: u64,
    plan: Vec<Vec<Vec<usize>>>,
    /// Write the merged model to `out/final` when training ends (the APL loop keeps only the trainable
    /// tensors of each round and turns this off).
    pub save_final_model: bool,
    /// Write checkpoints (every `save_steps` and at the end). Benchmarks turn this off: a full fine-tuning
    /// checkpoint of a 1B model is ~13 GB of weights and optimizer state that nothing would read.
    pub save_checkpoints: bool,
    /// Seconds spent in each phase of the optimizer steps so far (`bench dpo` prints them: the profile
    /// that says where a step's time goes).
    pub timings: BTreeMap<&'static str, f64>,
    /// With a compute dtype other than the weights' (`train.dtype = "bf16"`): that dtype and the frozen
    /// weights already cast to it (the trainable ones are cast at every step, inside the graph).
    compute: Option<(DType, Params)>,
}

impl Trainer {
    /// Prepares a run: makes the policy trainable (LoRA or full), builds the frozen reference and, if
    /// configured, computes the reference log-probs of every pair once.
    pub fn new(
        cfg: TrainConfig,
        policy: LanguageModel,
        train: Vec<TokenPair>,
        eval: Vec<TokenPair>,
        out: &Path,
        progress: impl FnMut(&str, usize, usize),
    ) -> Result<Self> {
        Self::with_reference_logps(cfg, policy, train, eval, None, out, progress)
    }

    /// Like [`Trainer::new`], with the reference log-probs `(chosen, rejected)` of the training pairs already
    /// known (the APL loop scored every candidate under the reference while acquiring it).
    pub fn with_reference_logps(
        cfg: TrainConfig,
        mut policy: LanguageModel,
        train: Vec<TokenPair>,
        eval: Vec<TokenPair>,
        known_ref_train: Option<Vec<(f32, f32)>>,
        out: &Path,
        mut progress: impl FnMut(&str, usize, usize),
    ) -> Result<Self> {
        if known_ref_train.as_ref().is_some_and(|r| r.len() != train.len()) {
            bail!(
                "{} reference log-prob pairs given for {} training pairs",
                known_ref_train.unwrap().len(),
                train.len()
            );
        }
        if cfg.kto.is_some() {
            bail!("the [kto] section selects the KTO trainer (dpo::kto); the DPO trainer cannot run it");
        }
        cfg.validate()?;
        if train.is_empty() {
            bail!("no training pairs");
        }
        let compute = cfg.dtype.on(policy.device())?;
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        // The reference is the model as loaded: plain tensors, no graph. With LoRA it shares them.
        let reference = if cfg.needs_reference() { Some(policy.with_params(policy.base_params())?) } else { None };
        let vars: BTreeMap<String, Var> = match &cfg.lora {
            Some(l) => policy.add_lora(l.r, l.alpha, &l.target_modules, cfg.seed)?,
            None => policy.make_trainable(|_| true)?,
        };
        let vars: Vec<(String, Var)> = vars.into_iter().collect();
        let opt = Optimizer::new(vars.iter().map(|(_, v)| v.clone()).collect(), cfg.optimizer.clone())?;
        let plan = schedule(train.len(), &cfg);
        let mut t = Self {
            cfg,
            policy,
            reference,
            vars,
            opt,
            train,
            eval,
            ref_train: None,
            ref_eval: None,
            out: out.to_path_buf(),
            step: 0,
            plan,
            save_final_model: true,
            save_checkpoints: true,
            timings: BTreeMap::new(),
            compute: None,
        };
        if let Some(dt) = compute {
            t.set_compute_dtype(dt)?;
        }
        if t.cfg.precompute_ref_log_probs {
            if let Some(r) = &t.reference {
                let bs = t.cfg.batch_size;
                progress("reference log-probs", 0, t.train.len());
                t.ref_train = Some(match known_ref_train {
                    Some(k) => k,
                    None => reference_logps(r, &t.train, bs)?,
                });
                t.ref_eval = Some(reference_logps(r, &t.eval, bs)?);
                progress("reference log-probs", t.train.len(), t.train.len());
            }
        }
        Ok(t)
    }

    pub fn total_steps(&self) -> u64 {
        let all = self.plan.len() as u64;
        self.cfg.max_steps.map(|m| m.min(all)).unwrap_or(all)
    }

    pub fn trainable_names(&self) -> Vec<String> {
        self.vars.iter().map(|(n, _)| n.clone()).collect()
    }

    /// The trainable tensors as they are now (LoRA A/B, or every weight for full fine-tuning), detached.
    pub fn trainable_tensors(&self) -> HashMap<String, Tensor> {
        crate::checkpoint::vars_tensors(&self.vars)
    }

    /// Overwrites the trainable tensors (e.g. to continue from an earlier round's policy); every trainable
    /// tensor must be given, with its shape.
    pub fn set_trainable(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        crate::checkpoint::set_vars(&self.vars, tensors)
    }

    /// Runs the forward and backward passes in `dtype` over the weights' own (mixed precision): the
    /// trainable weights stay the masters the optimizer updates, the frozen ones and the reference are cast
    /// once. `train.dtype = "bf16"` sets this; the tests use it to run an f64 model in f32.
    pub fn set_compute_dtype(&mut self, dtype: DType) -> Result<()> {
        let mut frozen = self.policy.params.clone();
        let trainable: std::collections::HashSet<&str> = self.vars.iter().map(|(n, _)| n.as_str()).collect();
        frozen.tensors.retain(|n, _| !trainable.contains(n.as_str()));
        for t in frozen.tensors.values_mut() {
            *t = t.to_dtype(dtype)?;
        }
        if let Some(r) = &self.reference {
            self.reference = Some(r.with_params(r.params.to(dtype, r.device())?)?);
        }
        self.compute = Some((dtype, frozen));
        Ok(())
    }

    /// The policy as the passes see it: itself, or its weights in the compute dtype, the trainable ones cast
    /// through a graph op so that their gradients reach the masters.
    fn compute_model(&self) -> Result<Option<LanguageModel>> {
        let Some((dtype, frozen)) = &self.compute else { return Ok(None) };
        let mut p = frozen.clone();
        for (name, v) in &self.vars {
            p.insert(name.clone(), v.as_tensor().to_dtype(*dtype)?);
        }
        Ok(Some(self.policy.with_params(p)?))
    }

    fn batch(&self, idx: &[usize], eval: bool) -> Result<BatchLogps> {
        let (data, cache) = if eval { (&self.eval, &self.ref_eval) } else { (&self.train, &self.ref_train) };
        let pairs: Vec<&TokenPair> = idx.iter().map(|&i| &data[i]).collect();
        let dev = self.policy.device().clone();
        let cast = self.compute_model()?;
        let f = policy_logps(cast.as_ref().unwrap_or(&self.policy), &pairs)?;
        let (ref_chosen, ref_rejected) = match (cache, &self.reference) {
            (Some(c), _) => {
                let (a, b): (Vec<f32>, Vec<f32>) = idx.iter().map(|&i| c[i]).unzip();
                (Tensor::new(a, &dev)?, Tensor::new(b, &dev)?)
            }
            (None, Some(r)) => {
                let rf = policy_logps(r, &pairs)?;
                (rf.chosen.detach(), rf.rejected.detach())
            }
            (None, None) => (f.chosen.zeros_like()?, f.chosen.zeros_like()?),
        };
        Ok(BatchLogps {
            tokens: f.tokens,
            ref_chosen,
            ref_rejected,
            mean_logit_chosen: f.mean_logit_chosen,
            mean_logit_rejected: f.mean_logit_rejected,
        })
    }

    /// The loss of a batch and the sequence-level log-probs the losses saw.
    fn loss(&self, losses: &[(LossType, f64)], b: &BatchLogps) -> Result<(Tensor, PairLogps)> {
        token_loss(losses, &self.cfg.loss, &b.tokens, &b.ref_chosen, &b.ref_rejected)
    }

    /// Metrics over the eval pairs (no graph), with TRL's `eval_` prefix.
    pub fn evaluate(&self) -> Result<Map<String, Value>> {
        let mut w = Window::default();
        let losses = self.cfg.weighted_losses()?;
        let idx: Vec<usize> = (0..self.eval.len()).collect();
        for chunk in idx.chunks(self.cfg.batch_size) {
            let mut b = self.batch(chunk, true)?;
            b.tokens.chosen = b.tokens.chosen.detach();
            b.tokens.rejected = b.tokens.rejected.detach();
            let (loss, x) = self.loss(&losses, &b)?;
            w.add_batch(loss.to_dtype(DType::F64)?.to_scalar::<f64>()?, &x, &b, &self.cfg.loss)?;
        }
        Ok(w.take("eval_"))
    }

    /// Trains from the current step to the end (or `max_steps`), logging to `metrics.jsonl`, saving
    /// checkpoints, and writing the final model to `final/`.
    pub fn run(&mut self, mut on_step: impl FnMut(&StepInfo)) -> Result<()> {
        let losses = self.cfg.weighted_losses()?;
        let mut run = RunState::open(&self.out)?;
        let total = self.total_steps();
        let dev = self.policy.device().clone();
        while self.step < total {
            // On the CPU each step runs on candle's thread pool (`Device::with_context`), so that each of its
            // thousands of parallel products and element-wise passes is a fork inside the pool rather than a
            // wake-up of the pool's threads while this one sleeps: LoRA DPO +20% on 2 cores
            // (docs/benchmarks.md). `on_step` stays on this thread, so it need not be `Send`.
            let info = dev.with_context(|| self.step_in_pool(&losses, &mut run))?;
            on_step(&info);
        }
        if self.step >= total && self.save_final_model {
            self.save_final()?;
        }
        Ok(())
    }

    /// One optimizer step, then its metrics, evaluation and checkpoint when they are due.
    fn step_in_pool(&mut self, losses: &[(LossType, f64)], run: &mut RunState<Window>) -> Result<StepInfo> {
        let total = self.total_steps();
        let per_epoch = self.plan.len() as f64 / self.cfg.epochs as f64;
        let group = self.plan[self.step as usize].clone();
        let mut acc: Vec<Option<Tensor>> = vec![None; self.vars.len()];
        let accum = group.len() as f64;
        let mut step_loss = 0.0;
        for micro in &group {
            let mut clock = Clock::start();
            let b = self.batch(micro, false)?;
            clock.lap(&mut self.timings, "forward");
            let (loss, x) = self.loss(losses, &b)?;
            let lv = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if !lv.is_finite() {
                bail!("loss became {lv} at step {}; lower the learning rate or check the data", self.step + 1);
            }
            step_loss += lv / accum;
            clock.lap(&mut self.timings, "loss");
            let grads = (loss / accum)?.backward()?;
            clock.lap(&mut self.timings, "backward");
            accumulate_grads(&mut acc, &self.vars, &grads)?;
            drop(grads);
            clock.lap(&mut self.timings, "accumulate");
            run.window.add_batch(lv, &x, &b, &self.cfg.loss)?;
            clock.lap(&mut self.timings, "metrics");
        }
        let mut clock = Clock::start();
        // The clipping factor is applied inside the optimizer's pass: no scaled copy of the gradients.
        let norm = grad_norm(&acc)?;
        clock.lap(&mut self.timings, "clip");
        run.grad_norms.push(norm);
        let lr = learning_rate(
            self.cfg.schedule,
            self.cfg.learning_rate,
            self.step,
            self.cfg.warmup_steps,
            self.plan.len() as u64,
        );
        self.opt.step_scaled(&acc, lr, clip_coef(norm, self.cfg.max_grad_norm))?;
        drop(acc);
        clock.lap(&mut self.timings, "optimizer");
        self.step += 1;
        if self.cfg.sync_ref_model && self.step.is_multiple_of(self.cfg.ref_model_sync_steps) {
            self.sync_reference()?;
        }
        let last = self.step == total;
        if self.step.is_multiple_of(self.cfg.logging_steps.max(1)) || last {
            let m = run.window.take("");
            run.log(m, lr, self.step, per_epoch)?;
        }
        let epoch_end = (self.step as f64 / per_epoch).fract() < 1e-9;
        if !self.eval.is_empty() && (epoch_end || last) {
            log_metrics(&mut run.metrics, self.evaluate()?, self.step, per_epoch)?;
        }
        if self.save_checkpoints && (self.cfg.save_steps.is_some_and(|s| self.step.is_multiple_of(s)) || last) {
            self.save_checkpoint()?;
        }
        Ok(StepInfo { step: self.step, total, loss: step_loss })
    }

    /// TR-DPO soft update of the reference: π_ref ← α π + (1 − α) π_ref.
    fn sync_reference(&mut self) -> Result<()> {
        let Some(r) = &self.reference else { return Ok(()) };
        let a = self.cfg.ref_model_mixup_alpha;
        // With LoRA the policy's effective weights are the merged ones.
        let pol = self.policy.merged_params()?;
        let mut p = r.params.clone();
        for (n, t) in p.tensors.iter_mut() {
            if let Some(x) = pol.tensors.get(n) {
                *t = ((x.to_dtype(t.dtype())? * a)? + (&*t * (1.0 - a))?)?;
            }
        }
        self.reference = Some(r.with_params(p)?);
        Ok(())
    }
}

/// Writes one line of `metrics.jsonl`: `m` with the step and the epoch it reached (`per_epoch` steps an
/// epoch), as TRL logs them. Shared by the DPO and KTO trainers.
pub(crate) fn log_metrics(out: &mut impl Write, mut m: Map<String, Value>, step: u64, per_epoch: f64) -> Result<()> {
    m.insert("epoch".into(), json!(step as f64 / per_epoch));
    m.insert("step".into(), json!(step));
    writeln!(out, "{}", Value::Object(m))?;
    Ok(())
}

/// What a training run keeps between its steps: the open `metrics.jsonl`, the metrics window of the
/// steps since the last log line, and their gradient norms. The DPO and KTO trainers share it.
pub(crate) struct RunState<W> {
    pub(crate) metrics: std::fs::File,
    pub(crate) window: W,
    pub(crate) grad_norms: Vec<f64>,
}

impl<W: Default> RunState<W> {
    pub(crate) fn open(out: &std::path::Path) -> Result<Self> {
        let path = out.join("metrics.jsonl");
        let metrics = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Self { metrics, window: W::default(), grad_norms: Vec::new() })
    }

    /// Writes the window's metrics `m` with the mean gradient norm and the learning rate as the line of `step`.
    pub(crate) fn log(&mut self, mut m: Map<String, Value>, lr: f64, step: u64, per_epoch: f64) -> Result<()> {
        m.insert("grad_norm".into(), json!(self.grad_norms.iter().sum::<f64>() / self.grad_norms.len() as f64));
        self.grad_norms.clear();
        m.insert("learning_rate".into(), json!(lr));
        log_metrics(&mut self.metrics, m, step, per_epoch)
    }
}

/// A stopwatch that adds each lap to a named phase.
struct Clock(std::time::Instant);

impl Clock {
    fn start() -> Self {
        Self(std::time::Instant::now())
    }
    fn lap(&mut self, into: &mut BTreeMap<&'static str, f64>, phase: &'static str) {
        let now = std::time::Instant::now();
        *into.entry(phase).or_default() += now.duration_since(self.0).as_secs_f64();
        self.0 = now;
    }
}
