//! The KTO trainer: unpaired rows through the policy and the frozen reference, KTO's loss with the KL estimate
//! z0 from mismatched pairs of the same micro-batch, gradient accumulation and clipping, an optimizer step,
//! TRL-named metrics, checkpoints and exact resume, and the final model, as [`crate::Trainer`] does for DPO and
//! with the same settings ([`TrainConfig`], its `[kto]` section for KTO's own).
//!
//! One micro-batch of B rows (TRL 0.27.2's `KTOTrainer.get_batch_loss_metrics`, `kto_trainer.py:1189-1303`):
//! - the policy scores each row's completion given its prompt (with a graph), and the KL rows, prompt i with the
//!   completion of [`kl_partners`]' row (without one: TRL scores them under `no_grad`, `:1077-1078`);
//! - the reference scores both, once before training when `precompute_ref_log_probs` (the default): the rows'
//!   log-probs per row, the KL rows' per micro-batch of the whole plan of steps, so no epoch runs a reference
//!   forward;
//! - [`kto_loss`] turns them into the loss, z0 a number (detached, clamped at 0).
//!
//! Order: the rows are shuffled per epoch with the seed ([`crate::train::schedule`], as DPO's pairs), and the KL
//! rows are formed within each micro-batch actually trained on: the completions TRL's `_get_kl_dataset` shifts
//! by one are those of the batch (its docstring's "same set as the matched outputs ... paired with different x").
//! TRL 0.27.2 trains KTO in dataset order (`_get_train_sampler` returns a `SequentialSampler`, `:1333-1338`), and
//! its chunks for the KL rows are the batches it then trains on; shuffling keeps that property while a paired file
//! unpaired into all-desirable-then-all-undesirable rows still gets mixed batches. Evaluation goes in file order,
//! `batch_size` rows at a time, as TRL's.

use super::data::UnpairedTokens;
use super::loss::{batch_metrics, kl_partners, kto_loss, KtoLogps, KtoLossType, KtoWindow};
use crate::checkpoint::{
    keep_metrics_through, latest_checkpoint, load_run_state, read_trainer_state, save_final_model, save_run_state,
    write_checkpoint,
};
use crate::config::{KtoConfig, TrainConfig, Truncation};
use crate::optim::{accumulate_grads, clip_coef, grad_norm, learning_rate, Optimizer};
use crate::train::{log_metrics, schedule, RunState, StepInfo};
use anyhow::{anyhow, bail, Context as _, Result};
use candle_core::{DType, Tensor, Var};
use lm::score::completion_logprobs;
use lm::LanguageModel;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

type Item = (Vec<u32>, Vec<u32>);

/// A KL row: prompt `prompt` with another row's `completion`, cut to `max_length` like the data (TRL runs its KL
/// rows through the same truncation, `_process_tokens` with prefix `KL_`, kto_trainer.py:614-621). The completion
/// keeps at least one token, the prompt too.
pub fn kl_item(prompt: &[u32], completion: &[u32], max_length: usize, mode: Truncation) -> Item {
    let (mut p, mut c) = (prompt.to_vec(), completion.to_vec());
    if p.len() + c.len() > max_length {
        match mode {
            Truncation::KeepStart => {
                c.truncate(max_length.saturating_sub(p.len()).max(1));
                if p.len() + c.len() > max_length {
                    let keep = max_length.saturating_sub(c.len()).max(1);
                    p.drain(..p.len().saturating_sub(keep));
                }
            }
            Truncation::KeepEnd => {
                let keep = max_length.saturating_sub(c.len()).max(1);
                p.drain(..p.len().saturating_sub(keep));
                if p.len() + c.len() > max_length {
                    let keep = max_length.saturating_sub(p.len()).max(1);
                    c.drain(..c.len().saturating_sub(keep));
                }
            }
        }
    }
    (p, c)
}

/// The KL rows of a micro-batch of `rows` (indices into `data`).
fn kl_items(data: &[UnpairedTokens], rows: &[usize], cfg: &TrainConfig) -> Vec<Item> {
    rows.iter()
        .zip(kl_partners(rows))
        .map(|(&i, j)| kl_item(&data[i].prompt, &data[j].completion, cfg.max_length, cfg.truncation_mode))
        .collect()
}

fn items(data: &[UnpairedTokens], rows: &[usize]) -> Vec<Item> {
    rows.iter().map(|&i| (data[i].prompt.clone(), data[i].completion.clone())).collect()
}

/// Summed completion log-probs and mean logits `(B,)` in f32 (with the model's graph, if it has one).
fn score(model: &LanguageModel, items: &[Item]) -> Result<(Tensor, Tensor)> {
    let s = completion_logprobs(model, items)?;
    Ok((s.sum.to_dtype(DType::F32)?, s.mean_logit.to_dtype(DType::F32)?))
}

fn constants(model: &LanguageModel, items: &[Item]) -> Result<Vec<f32>> {
    Ok(score(model, items)?.0.detach().to_vec1::<f32>()?)
}

/// One micro-batch scored.
struct Batch {
    x: KtoLogps,
    mean_logits: Tensor,
}

/// The reference log-probs computed before training: each row's, and each micro-batch's KL rows'.
#[derive(Default)]
struct RefCache {
    rows: Vec<f32>,
    /// `kl[step][micro][i]` for training (only steps up to `total_steps`), `kl[0][chunk][i]` for evaluation.
    kl: Vec<Vec<Vec<f32>>>,
}

pub struct KtoTrainer {
    pub cfg: TrainConfig,
    pub kto: KtoConfig,
    pub policy: LanguageModel,
    reference: LanguageModel,
    vars: Vec<(String, Var)>,
    opt: Optimizer,
    train: Vec<UnpairedTokens>,
    eval: Vec<UnpairedTokens>,
    ref_train: Option<RefCache>,
    ref_eval: Option<RefCache>,
    pub out: PathBuf,
    pub step: u64,
    plan: Vec<Vec<Vec<usize>>>,
    /// Write the merged model to `out/final` when training ends.
    pub save_final_model: bool,
}

impl KtoTrainer {
    /// Prepares a run: makes the policy trainable (LoRA or full), builds the frozen reference and, if configured,
    /// computes the reference log-probs once. `cfg.kto` must be set (it says which KTO loss and its weights).
    pub fn new(
        cfg: TrainConfig,
        policy: LanguageModel,
        train: Vec<UnpairedTokens>,
        eval: Vec<UnpairedTokens>,
        out: &Path,
        progress: impl FnMut(&str, usize, usize),
    ) -> Result<Self> {
        Self::with_reference_logps(cfg, policy, train, eval, None, out, progress)
    }

    /// Like [`KtoTrainer::new`], with the reference log-probs of the training rows' completions already known
    /// (as the APL loop knows them from acquisition); the KL rows' are still computed.
    pub fn with_reference_logps(
        cfg: TrainConfig,
        mut policy: LanguageModel,
        train: Vec<UnpairedTokens>,
        eval: Vec<UnpairedTokens>,
        known_ref_train: Option<Vec<f32>>,
        out: &Path,
        mut progress: impl FnMut(&str, usize, usize),
    ) -> Result<Self> {
        cfg.validate()?;
        let kto = cfg.kto.clone().ok_or_else(|| anyhow!("KtoTrainer needs a [kto] section in the config"))?;
        if train.is_empty() {
            bail!("no training rows");
        }
        if let Some(k) = &known_ref_train {
            if k.len() != train.len() {
                bail!("{} reference log-probs given for {} training rows", k.len(), train.len());
            }
        }
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        // The reference is the model as loaded: plain tensors, no graph. With LoRA it shares them.
        let reference = policy.with_params(policy.base_params())?;
        let vars: BTreeMap<String, Var> = match &cfg.lora {
            Some(l) => policy.add_lora(l.r, l.alpha, &l.target_modules, cfg.seed)?,
            None => policy.make_trainable(|_| true)?,
        };
        let vars: Vec<(String, Var)> = vars.into_iter().collect();
        let opt = Optimizer::new(vars.iter().map(|(_, v)| v.clone()).collect(), cfg.optimizer.clone())?;
        let plan = schedule(train.len(), &cfg);
        let mut t = Self {
            cfg,
            kto,
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
        };
        if t.cfg.precompute_ref_log_probs {
            let total = t.train.len() + t.eval.len();
            progress("reference log-probs", 0, total);
            let steps = t.total_steps() as usize;
            let micro: Vec<Vec<Vec<usize>>> = t.plan[..steps].to_vec();
            t.ref_train = Some(t.reference_cache(&t.train, known_ref_train, &micro)?);
            progress("reference log-probs", t.train.len(), total);
            let chunks = vec![t.eval_chunks()];
            t.ref_eval = Some(t.reference_cache(&t.eval, None, &chunks)?);
            progress("reference log-probs", total, total);
        }
        Ok(t)
    }

    /// Reference log-probs of `data`'s rows (unless `known`) and of the KL rows of every micro-batch in `plan`.
    fn reference_cache(
        &self,
        data: &[UnpairedTokens],
        known: Option<Vec<f32>>,
        plan: &[Vec<Vec<usize>>],
    ) -> Result<RefCache> {
        let rows = match known {
            Some(k) => k,
            None => {
                let idx: Vec<usize> = (0..data.len()).collect();
                let mut v = Vec::with_capacity(data.len());
                for chunk in idx.chunks(self.cfg.batch_size.max(1)) {
                    v.extend(constants(&self.reference, &items(data, chunk))?);
                }
                v
            }
        };
        let mut kl = Vec::with_capacity(plan.len());
        for group in plan {
            let mut g = Vec::with_capacity(group.len());
            for micro in group {
                g.push(if self.kto.loss_type.uses_kl() {
                    constants(&self.reference, &kl_items(data, micro, &self.cfg))?
                } else {
                    vec![]
                });
            }
            kl.push(g);
        }
        Ok(RefCache { rows, kl })
    }

    /// Evaluation micro-batches: the eval rows in file order, `batch_size` at a time.
    fn eval_chunks(&self) -> Vec<Vec<usize>> {
        let idx: Vec<usize> = (0..self.eval.len()).collect();
        idx.chunks(self.cfg.batch_size.max(1)).map(<[usize]>::to_vec).collect()
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

    /// Overwrites the trainable tensors; every trainable tensor must be given, with its shape.
    pub fn set_trainable(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        crate::checkpoint::set_vars(&self.vars, tensors)
    }

    /// Scores the micro-batch `rows` of `data`; `cache` is the reference cache and `kl_at` where this
    /// micro-batch's KL rows sit in it.
    fn batch(
        &self,
        data: &[UnpairedTokens],
        rows: &[usize],
        cache: Option<&RefCache>,
        kl_at: (usize, usize),
    ) -> Result<Batch> {
        let dev = self.policy.device().clone();
        let matched = items(data, rows);
        let (policy, mean_logits) = score(&self.policy, &matched)?;
        let kl_rows = if self.kto.loss_type.uses_kl() { Some(kl_items(data, rows, &self.cfg)) } else { None };
        // TRL computes the policy's KL log-probs under no_grad (kto_trainer.py:1077-1078).
        let policy_kl = match &kl_rows {
            Some(k) => Some(score(&self.policy, k)?.0.detach()),
            None => None,
        };
        let (reference, reference_kl) = match cache {
            Some(c) => {
                let r: Vec<f32> = rows.iter().map(|&i| c.rows[i]).collect();
                let k = match &kl_rows {
                    Some(_) => Some(Tensor::new(c.kl[kl_at.0][kl_at.1].clone(), &dev)?),
                    None => None,
                };
                (Tensor::new(r, &dev)?, k)
            }
            None => {
                let r = score(&self.reference, &matched)?.0.detach();
                let k = match &kl_rows {
                    Some(k) => Some(score(&self.reference, k)?.0.detach()),
                    None => None,
                };
                (r, k)
            }
        };
        let label = rows.iter().map(|&i| data[i].label).collect();
        Ok(Batch { x: KtoLogps { policy, reference, policy_kl, reference_kl, label }, mean_logits })
    }

    fn loss(&self, x: &KtoLogps) -> Result<super::loss::KtoLoss> {
        let k = &self.kto;
        kto_loss(k.loss_type, self.cfg.loss.beta, k.desirable_weight, k.undesirable_weight, x)
    }

    /// Metrics over the eval rows (no graph), with TRL's `eval_` prefix.
    pub fn evaluate(&self) -> Result<Map<String, Value>> {
        let mut w = KtoWindow::default();
        for (c, chunk) in self.eval_chunks().iter().enumerate() {
            let b = self.batch(&self.eval, chunk, self.ref_eval.as_ref(), (0, c))?;
            let x = KtoLogps { policy: b.x.policy.detach(), ..b.x };
            let out = self.loss(&x)?;
            let lv = out.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            w.add(lv, batch_metrics(&x, &out, &b.mean_logits)?);
        }
        Ok(w.take("eval_"))
    }

    /// Trains from the current step to the end (or `max_steps`), logging to `metrics.jsonl`, saving
    /// checkpoints, and writing the final model to `final/`.
    pub fn run(&mut self, mut on_step: impl FnMut(&StepInfo)) -> Result<()> {
        let mut run = RunState::open(&self.out)?;
        let total = self.total_steps();
        let dev = self.policy.device().clone();
        while self.step < total {
            // On candle's thread pool, `on_step` outside it, as in the DPO trainer's `run`.
            let info = dev.with_context(|| self.step_in_pool(&mut run))?;
            on_step(&info);
        }
        if self.step >= total && self.save_final_model {
            self.save_final()?;
        }
        Ok(())
    }

    /// One optimizer step, then its metrics, evaluation and checkpoint when they are due.
    fn step_in_pool(&mut self, run: &mut RunState<KtoWindow>) -> Result<StepInfo> {
        let total = self.total_steps();
        let per_epoch = self.plan.len() as f64 / self.cfg.epochs as f64;
        let s = self.step as usize;
        let group = self.plan[s].clone();
        let mut acc: Vec<Option<Tensor>> = vec![None; self.vars.len()];
        let accum = group.len() as f64;
        let mut step_loss = 0.0;
        for (m, micro) in group.iter().enumerate() {
            let b = self.batch(&self.train, micro, self.ref_train.as_ref(), (s, m))?;
            let out = self.loss(&b.x)?;
            let lv = out.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if !lv.is_finite() {
                bail!("loss became {lv} at step {}; lower the learning rate or check the data", self.step + 1);
            }
            step_loss += lv / accum;
            let grads = (&out.loss / accum)?.backward()?;
            accumulate_grads(&mut acc, &self.vars, &grads)?;
            drop(grads);
            run.window.add(lv, batch_metrics(&b.x, &out, &b.mean_logits)?);
        }
        let norm = grad_norm(&acc)?;
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
        self.step += 1;
        let last = self.step == total;
        if self.step.is_multiple_of(self.cfg.logging_steps.max(1)) || last {
            let m = run.window.take("");
            run.log(m, lr, self.step, per_epoch)?;
        }
        let epoch_end = (self.step as f64 / per_epoch).fract() < 1e-9;
        if !self.eval.is_empty() && (epoch_end || last) {
            log_metrics(&mut run.metrics, self.evaluate()?, self.step, per_epoch)?;
        }
        if self.cfg.save_steps.is_some_and(|s| self.step.is_multiple_of(s)) || last {
            self.save_checkpoint()?;
        }
        Ok(StepInfo { step: self.step, total, loss: step_loss })
    }

    /// `checkpoint-N/` as the DPO trainer writes it (trainable tensors, optimizer state, `trainer_state.json`
    /// with `"trainer": "kto"`, the rows' cached reference log-probs, and a loadable model or PEFT adapter).
    pub fn save_checkpoint(&self) -> Result<()> {
        write_checkpoint(&self.out, self.step, |tmp| {
            let state = json!({"trainer": "kto", "step": self.step, "total_steps": self.total_steps(),
                "optimizer_t": self.opt.t, "config": self.cfg, "trainable": self.trainable_names()});
            save_run_state(tmp, &self.policy, &self.vars, &self.opt, self.cfg.lora.as_ref(), &state)?;
            if let Some(r) = &self.ref_train {
                std::fs::write(tmp.join("ref_logps.json"), serde_json::to_string(&r.rows)?)?;
            }
            Ok(())
        })
    }

    /// The trained model as an HF directory in `final/` (adapters merged), loadable by `generate`.
    pub fn save_final(&self) -> Result<()> {
        save_final_model(&self.out, &self.policy, &self.vars, self.cfg.lora.as_ref())
    }

    /// Continues from a checkpoint written by [`KtoTrainer::save_checkpoint`]; a DPO checkpoint, or one made with
    /// other training data or another model, is refused.
    pub fn resume(&mut self, ckpt: &Path) -> Result<()> {
        let (state, step) = read_trainer_state(ckpt)?;
        if state["trainer"] != "kto" {
            bail!(
                "{}: a DPO checkpoint; resume it with a DPO loss_type, or start this KTO run elsewhere",
                ckpt.display()
            );
        }
        load_run_state(ckpt, self.policy.device(), &self.vars, &mut self.opt, &state, step)?;
        if let Some(now) = &self.ref_train {
            crate::checkpoint::check_ref_logps(ckpt, &now.rows, |a: &f32, b| (a - b).abs() < 1e-3)?;
        }
        self.step = step;
        keep_metrics_through(&self.out, step)
    }

    /// Continues from the latest checkpoint in [`KtoTrainer::out`] if there is one, and returns it.
    pub fn resume_latest(&mut self) -> Result<Option<PathBuf>> {
        let Some(ckpt) = latest_checkpoint(&self.out) else { return Ok(None) };
        self.resume(&ckpt)?;
        Ok(Some(ckpt))
    }

    /// Which KTO loss this run trains with.
    pub fn loss_type(&self) -> KtoLossType {
        self.kto.loss_type
    }
}
