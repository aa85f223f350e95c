//! The APL loop (Muldrew et al. 2024, Algorithm 1; docs/apl-spec.md §1), resumable from the run store.
//!
//! For each round i with cumulative label target m_i:
//! 1. acquire candidate pairs with the current policy and ask the oracle until m_i labels are held (points
//!    the oracle gives no preference for are dropped and replaced by a new acquisition, as the paper does);
//! 2. train DPO on all labels so far, from the starting model (the paper) or from the last policy;
//! 3. evaluate: win rate of the policy against the starting model on held-out prompts, judged by the oracle.
//!
//! This is the only module that knows the order. Every step reads what it needs from the store and records
//! what it did before the next begins; every random choice comes from a stream named by (seed, round,
//! attempt, stage). So a run killed at any moment and started again with the same command picks up where
//! it was: labels already given are never asked again, and it ends with the same labels as a run that
//! was never interrupted.

use crate::acquire::{acquire, lengths, Models};
use crate::config::{ActiveConfig, NoAnswer, OracleKind, Retrain};
use crate::seed::{rng_for, seed_for};
use crate::store::{Query, Store};
use anyhow::{anyhow, bail, Context as _, Result};
use candle_core::Tensor;
use dpo::data::TokenPair;
use dpo::train::{latest_checkpoint, Trainer};
use lm::sample::{generate, SampleParams};
use lm::LanguageModel;
use oracle::{Comparison, Oracle};
use serde_json::json;
use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Stream names for [`seed_for`].
const ACQUIRE: u64 = 1;
const TRAIN: u64 = 2;
const EVAL: u64 = 3;
const EVAL_LENGTHS: u64 = 4;

/// Stops a run whose oracle keeps giving no preference.
const MAX_ATTEMPTS: usize = 25;

/// What the loop tells its caller (the CLI draws progress bars from these).
#[derive(Debug, Clone)]
pub enum Event {
    /// A new stage begins, e.g. "round 2/3: acquiring 16 labels (hybrid)".
    Stage(String),
    /// Progress within a stage.
    Progress { what: String, done: usize, total: usize },
    /// A fact worth a line in the log.
    Info(String),
}

/// Who answers the queries.
pub enum OracleHandle {
    /// Answers at once (a scorer, a judge, a dataset).
    Sync(Box<dyn Oracle>),
    /// A person: queries wait in the store until the labeling app answers them.
    Human { poll: Duration },
}

impl OracleHandle {
    pub fn name(&self) -> String {
        match self {
            OracleHandle::Sync(o) => o.name(),
            OracleHandle::Human { .. } => "human".into(),
        }
    }
}

/// Paths of a run directory.
pub struct RunDir(pub PathBuf);

impl RunDir {
    pub fn store(&self) -> PathBuf {
        self.0.join("store.sqlite")
    }
    pub fn round(&self, r: usize) -> PathBuf {
        self.0.join(format!("round-{r}"))
    }
    pub fn policy(&self, r: usize) -> PathBuf {
        self.round(r).join("policy.safetensors")
    }
    pub fn train(&self, r: usize) -> PathBuf {
        self.round(r).join("train")
    }
    pub fn metrics(&self) -> PathBuf {
        self.0.join("metrics.jsonl")
    }
    pub fn labels(&self) -> PathBuf {
        self.0.join("labels.jsonl")
    }
    pub fn report(&self) -> PathBuf {
        self.0.join("report.html")
    }
    pub fn config(&self) -> PathBuf {
        self.0.join("config.toml")
    }
}

/// Per-round results, as the report and `experiment` read them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RoundResult {
    pub round: usize,
    pub labels: usize,
    pub dropped: usize,
    pub win_rate: Option<f64>,
    pub win_rate_se: Option<f64>,
    pub eval_prompts: usize,
    /// Fraction of labelled points where the oracle preferred the completion the model favoured.
    pub oracle_agreement: Option<f64>,
    pub train_loss: Option<f64>,
    pub acquisition_seconds: f64,
    pub train_seconds: Option<f64>,
}

pub struct ActiveLoop<'a> {
    pub cfg: ActiveConfig,
    pub dir: RunDir,
    pub store: Store,
    /// The starting model: π_ref, the baseline of evaluation, and the base every round trains from.
    pub base: LanguageModel,
    pub oracle: OracleHandle,
    /// Judges evaluation pairs when the run's oracle cannot (a person, a preference file).
    pub eval_oracle: Option<Box<dyn Oracle>>,
    /// Offline simulation: candidate pairs come from a preference file (prompt text → pairs) instead of
    /// being sampled; set with [`ActiveLoop::use_fixed_pairs`] before [`ActiveLoop::ensure_pool`].
    pub fixed_pairs: Option<HashMap<String, Vec<[String; 2]>>>,
    pub events: &'a mut dyn FnMut(Event),
}

impl<'a> ActiveLoop<'a> {
    /// Opens (or creates) the run in `dir`. Refuses a store made with another configuration.
    pub fn open(
        cfg: ActiveConfig,
        dir: &Path,
        base: LanguageModel,
        oracle: OracleHandle,
        eval_oracle: Option<Box<dyn Oracle>>,
        events: &'a mut dyn FnMut(Event),
    ) -> Result<Self> {
        cfg.validate()?;
        let dir = RunDir(dir.to_path_buf());
        std::fs::create_dir_all(&dir.0).with_context(|| format!("creating the run directory {}", dir.0.display()))?;
        let store = Store::open(&dir.store())?;
        let toml = cfg.to_toml();
        // Compare configs, not texts: a store written by an older version (before a key with a default was
        // added) still matches when the values are the same, and keys that may change between resumes
        // (budgets, timeouts: `ActiveConfig::identity`) are left out; the stored config is then rewritten as
        // it is now.
        if let Some(stored) = store.meta("config")? {
            if let Ok(c) = ActiveConfig::from_toml(&stored) {
                if c.identity().to_toml() == cfg.identity().to_toml() {
                    store.set_meta("config", &toml)?;
                }
            }
        }
        store.check_config(&toml)?;
        store.set_meta("beta", &cfg.train.loss.beta.to_string())?;
        std::fs::write(dir.config(), &toml)?;
        Ok(Self { cfg, dir, store, base, oracle, eval_oracle, fixed_pairs: None, events })
    }

    fn emit(&mut self, e: Event) {
        (self.events)(e)
    }

    /// Candidate pairs from a preference file instead of the policy (offline simulation with the dataset
    /// oracle). The prompts are the file's, whole.
    pub fn use_fixed_pairs(&mut self, pairs: &[Comparison]) {
        let mut map: HashMap<String, Vec<[String; 2]>> = HashMap::new();
        for c in pairs {
            map.entry(c.prompt.clone()).or_default().push(c.completions.clone());
        }
        self.fixed_pairs = Some(map);
    }

    /// Stores the prompt pool on first use (a resumed run keeps its pool).
    pub fn ensure_pool(&mut self, texts: &[String], source: &Path) -> Result<()> {
        if !self.store.prompts("train")?.is_empty() {
            return Ok(());
        }
        let mut cfg = self.cfg.clone();
        if self.fixed_pairs.is_some() {
            // A preference file's prompts are used whole, whatever their length.
            cfg.prompts.max_tokens = 0;
            cfg.prompts.min_source_tokens = 1;
        }
        let (train, eval) = crate::prompts::build_pool(&cfg, &self.base.tokenizer, texts, source)?;
        self.emit(Event::Info(format!(
            "prompt pool: {} for acquisition, {} held out for evaluation (from {})",
            train.len(),
            eval.len(),
            source.display()
        )));
        let draw = self.cfg.prompts_per_draw();
        if draw > train.len() {
            self.emit(Event::Info(format!(
                "{} acquisition draws up to {draw} prompts per round from {}: prompts repeat, as in the paper",
                self.cfg.acquisition.strategy.name(),
                train.len()
            )));
        }
        self.store.insert_prompts(&train, &eval)
    }

    /// Runs (or resumes) every round; returns the per-round results.
    pub fn run(&mut self) -> Result<Vec<RoundResult>> {
        let targets = self.cfg.rounds.targets();
        if self.store.prompts("train")?.is_empty() {
            bail!("the run has no prompt pool (call ensure_pool first)");
        }
        let last = targets.len();
        for (i, &target) in targets.iter().enumerate() {
            let round = i + 1;
            if !self.store.round_trained(round)? {
                let policy = self.policy_model(round - 1)?;
                self.label_round(round, target, &policy)?;
                drop(policy);
                self.train_round(round, target)?;
            }
            if self.cfg.eval.every_round || round == last {
                self.evaluate(round)?;
            }
            self.write_outputs()?;
        }
        self.results()
    }

    /// The policy after `round` rounds (0 = the starting model), as a plain model (adapters merged).
    pub fn policy_model(&self, round: usize) -> Result<LanguageModel> {
        if round == 0 {
            return self.base.with_params(self.base.params.clone());
        }
        let path = self.dir.policy(round);
        let t = candle_core::safetensors::load(&path, self.base.device())
            .map_err(|e| anyhow!("{}: {e} (delete round-{round} to retrain it)", path.display()))?;
        policy_from_trainable(&self.base, self.cfg.train.lora.as_ref(), &t)
    }

    /// Acquires and labels until the round holds `target` labels (cumulative).
    fn label_round(&mut self, round: usize, target: usize, policy: &LanguageModel) -> Result<()> {
        let rounds = self.cfg.rounds.targets().len();
        loop {
            let (have, dropped) = self.store.label_counts(round)?;
            if have >= target {
                if dropped > 0 {
                    self.emit(Event::Info(format!(
                        "round {round}: {dropped} point(s) dropped so far (no preference from the oracle) and re-acquired"
                    )));
                }
                return Ok(());
            }
            let pending = self.store.pending_queries(Some(round))?;
            if !pending.is_empty() {
                self.ask(round, pending)?;
                continue;
            }
            let attempt = self.store.next_attempt(round)?;
            if attempt >= MAX_ATTEMPTS {
                bail!(
                    "round {round}: {attempt} acquisitions and still only {have} of {target} labels: the oracle gave \
                     no preference for {dropped} points. Check the oracle (e.g. a judge that never answers A or B)."
                );
            }
            let need = target - have;
            let strategy = self.cfg.acquisition.strategy.name();
            self.emit(Event::Stage(format!(
                "round {round}/{rounds}: acquiring {need} pair(s) ({strategy}{})",
                if attempt > 0 { format!(", attempt {}", attempt + 1) } else { String::new() }
            )));
            let mut pool = self.store.prompts("train")?;
            if self.fixed_pairs.is_some() {
                // Each of the file's pairs is labelled at most once.
                let used = self.store.selected_prompt_ids()?;
                pool.retain(|p| !used.contains(&p.id));
                if pool.is_empty() {
                    bail!(
                        "round {round}: every prompt of the preference file has been acquired ({have} labels); \
                         the schedule asks for {target}: use a larger file or a smaller rounds.schedule"
                    );
                }
            }
            let t0 = Instant::now();
            let models = Models {
                policy,
                reference: &self.base,
                policy_is_reference: round == 1,
                fixed_pairs: self.fixed_pairs.as_ref(),
            };
            let seed = seed_for(self.cfg.seed, &[ACQUIRE, round as u64, attempt as u64]);
            let events = &mut self.events;
            let cands = acquire(&self.cfg, &models, &pool, need, seed, &mut |what, done, total| {
                events(Event::Progress { what: what.to_string(), done, total })
            })?;
            let secs = t0.elapsed().as_secs_f64();
            self.store.insert_acquisition(round, attempt, strategy, need, secs, &cands)?;
        }
    }

    /// Asks the oracle about each query, committing each label as soon as its answer arrives (an oracle may
    /// have several questions in flight; a label is in the store before the next answer is taken).
    fn ask(&mut self, round: usize, pending: Vec<Query>) -> Result<()> {
        let total = pending.len();
        match &mut self.oracle {
            OracleHandle::Sync(oracle) => {
                (self.events)(Event::Stage(format!("round {round}: asking {} for {total} label(s)", oracle.name())));
                let name = oracle.name();
                let (same, differ): (Vec<&Query>, Vec<&Query>) =
                    pending.iter().partition(|q| q.tokens[0] == q.tokens[1]);
                for q in &same {
                    self.store.record_label(q.id, None, &name, "identical completions: not asked", None)?;
                }
                let mut labelled = same.len();
                let questions: Vec<Comparison> = differ
                    .iter()
                    .map(|q| Comparison { prompt: q.prompt.clone(), completions: q.completions.clone() })
                    .collect();
                let (store, events) = (&self.store, &mut self.events);
                oracle.compare_each(&questions, &mut |i, a| {
                    store.record_label(differ[i].id, a.preferred, &name, &a.raw, None)?;
                    labelled += 1;
                    events(Event::Progress { what: "labels".into(), done: labelled, total });
                    Ok(())
                })?;
            }
            OracleHandle::Human { poll } => {
                let poll = *poll;
                (self.events)(Event::Stage(format!(
                    "round {round}: waiting for {total} human label(s) — label them in the web app \
                     (`activepref serve --run-dir {}`)",
                    self.dir.0.display()
                )));
                loop {
                    let left = self.store.pending_queries(Some(round))?.len();
                    (self.events)(Event::Progress {
                        what: "human labels".into(),
                        done: total - left.min(total),
                        total,
                    });
                    if left == 0 {
                        break;
                    }
                    std::thread::sleep(poll);
                }
            }
        }
        Ok(())
    }

    /// DPO on all labels so far; resumes from the round's latest checkpoint if there is one.
    fn train_round(&mut self, round: usize, target: usize) -> Result<()> {
        let mut labels = self.store.labels(round)?;
        labels.truncate(target);
        let n = labels.len();
        let rounds = self.cfg.rounds.targets().len();
        self.emit(Event::Stage(format!("round {round}/{rounds}: training DPO on {n} labels")));
        let pairs: Vec<TokenPair> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| TokenPair {
                line: i + 1,
                prompt: l.query.prompt_tokens.clone(),
                chosen: l.query.tokens[l.preferred].clone(),
                rejected: l.query.tokens[1 - l.preferred].clone(),
            })
            .collect();
        let refs: Vec<(f32, f32)> = labels
            .iter()
            .map(|l| (l.query.ref_logp[l.preferred] as f32, l.query.ref_logp[1 - l.preferred] as f32))
            .collect();
        let mut tcfg = self.cfg.train.clone();
        tcfg.seed = seed_for(self.cfg.seed, &[TRAIN, round as u64]);
        let out = self.dir.train(round);
        let t0 = Instant::now();
        let start = self.base.with_params(self.base.params.clone())?;
        let events = &mut self.events;
        let mut trainer = Trainer::with_reference_logps(tcfg, start, pairs, vec![], Some(refs), &out, |_, _, _| {})?;
        trainer.save_final_model = false;
        if let Some(ckpt) = latest_checkpoint(&out) {
            trainer.resume(&ckpt)?;
            events(Event::Info(format!("resuming training from {}", ckpt.display())));
        } else {
            if self.cfg.rounds.retrain == Retrain::Continue && round > 1 {
                let prev = self.dir.policy(round - 1);
                let t = candle_core::safetensors::load(&prev, self.base.device())
                    .map_err(|e| anyhow!("{}: {e}", prev.display()))?;
                trainer.set_trainable(&t)?;
            }
            // A half-written metrics file from a run killed before its first checkpoint.
            let _ = std::fs::remove_file(out.join("metrics.jsonl"));
        }
        trainer.run(|s| {
            events(Event::Progress { what: "DPO steps".into(), done: s.step as usize, total: s.total as usize })
        })?;
        let path = self.dir.policy(round);
        let tmp = path.with_extension("partial");
        candle_core::safetensors::save(&trainer.trainable_tensors(), &tmp)?;
        std::fs::rename(&tmp, &path)?;
        let loss = last_loss(&out.join("metrics.jsonl"));
        self.store.mark_trained(round, target, n, loss, t0.elapsed().as_secs_f64())?;
        Ok(())
    }

    /// Win rate of the round's policy against the starting model on the held-out prompts.
    fn evaluate(&mut self, round: usize) -> Result<()> {
        let prompts = self.store.prompts("eval")?;
        let done = self.store.judgments(round)?.len();
        if done == prompts.len() {
            return Ok(());
        }
        self.emit(Event::Stage(format!("round {round}: evaluating on {} held-out prompts", prompts.len())));
        let g = &self.cfg.generation;
        let lens = lengths(&self.cfg, prompts.len(), &mut rng_for(self.cfg.seed, &[EVAL_LENGTHS]));
        let ids: Vec<Vec<u32>> = prompts.iter().map(|p| p.tokens.clone()).collect();
        for r in [0, round] {
            if !self.store.eval_samples(r)?.is_empty() {
                continue;
            }
            let model = self.policy_model(r)?;
            let params = SampleParams {
                max_new_tokens: g.max_new_tokens,
                temperature: g.eval_temperature,
                top_k: 0,
                top_p: 1.0,
                seed: seed_for(self.cfg.seed, &[EVAL, r as u64]),
                stop_at_eos: true,
            };
            let what = if r == 0 { "baseline samples".to_string() } else { format!("round {r} samples") };
            let total = ids.len();
            let events = &mut self.events;
            let samples = generate(&model, &ids, &params, Some(&lens), g.batch_size, 0, |d| {
                events(Event::Progress { what: what.clone(), done: d, total })
            })?;
            let rows: Vec<(i64, String)> = prompts
                .iter()
                .zip(&samples)
                .map(|(p, s)| {
                    let plain: Vec<u32> = s.tokens.iter().copied().filter(|&t| !model.tokenizer.is_eos(t)).collect();
                    Ok((p.id, model.tokenizer.decode(&plain, true)?))
                })
                .collect::<Result<_>>()?;
            self.store.insert_eval_samples(r, &rows)?;
        }
        let base: HashMap<i64, String> = self.store.eval_samples(0)?.into_iter().collect();
        let judged: std::collections::HashSet<i64> =
            self.store.judgments(round)?.into_iter().map(|j| j.prompt_id).collect();
        let text: HashMap<i64, String> = prompts.iter().map(|p| (p.id, p.text.clone())).collect();
        let samples = self.store.eval_samples(round)?;
        let no_answer = if self.cfg.eval.no_answer == NoAnswer::Half { 0.5 } else { 0.0 };
        let total = samples.len();
        let oracle: &mut dyn Oracle = match (&mut self.eval_oracle, &mut self.oracle) {
            (Some(o), _) => o.as_mut(),
            (None, OracleHandle::Sync(o)) => o.as_mut(),
            (None, OracleHandle::Human { .. }) => {
                bail!("a human-labelled run needs an evaluation oracle (eval.oracle in the config)")
            }
        };
        let name = oracle.name();
        let mut judged_now = judged.len();
        // Completion 0 is the policy's, 1 the starting model's; `asked[i]` is the prompt of `questions[i]`.
        let (mut asked, mut questions) = (Vec::new(), Vec::new());
        for (pid, policy) in samples.iter().filter(|(pid, _)| !judged.contains(pid)) {
            let baseline = &base[pid];
            if policy == baseline {
                self.store.record_judgment(round, *pid, 0.5, &name, "identical completions: not asked")?;
                judged_now += 1;
            } else {
                asked.push(*pid);
                questions
                    .push(Comparison { prompt: text[pid].clone(), completions: [policy.clone(), baseline.clone()] });
            }
        }
        let (store, events) = (&self.store, &mut self.events);
        oracle.compare_each(&questions, &mut |i, a| {
            let win = a.preferred.map(|p| if p == 0 { 1.0 } else { 0.0 }).unwrap_or(no_answer);
            store.record_judgment(round, asked[i], win, &name, &a.raw)?;
            judged_now += 1;
            events(Event::Progress { what: "judging".into(), done: judged_now, total });
            Ok(())
        })?;
        let r = self.results()?.into_iter().find(|r| r.round == round);
        if let Some(RoundResult { win_rate: Some(w), win_rate_se: Some(se), labels, .. }) = r {
            self.emit(Event::Info(format!(
                "round {round}: win rate vs the starting model {:.1}% ± {:.1} ({labels} labels, {} prompts)",
                100.0 * w,
                100.0 * se,
                prompts.len()
            )));
        }
        Ok(())
    }

    /// Per-round results from the store.
    pub fn results(&self) -> Result<Vec<RoundResult>> {
        let mut out = Vec::new();
        let eval_n = self.store.prompts("eval")?.len();
        for t in self.store.rounds()? {
            let (round, labels, loss, secs) = (t.round, t.labels, t.train_loss, t.train_seconds);
            let j = self.store.judgments(round)?;
            let (win_rate, win_rate_se) = if j.is_empty() {
                (None, None)
            } else {
                let (m, se) = crate::eval::mean_binomial_se(&j.iter().map(|j| j.win).collect::<Vec<_>>());
                (Some(m), Some(se))
            };
            let pts = self.store.scored_points(round)?;
            let agree: Vec<bool> = pts
                .iter()
                .filter_map(|p| match p.preferred {
                    Some(Some(pref)) if (p.p_hat - 0.5).abs() > 1e-9 => Some((p.p_hat > 0.5) == (pref == 0)),
                    _ => None,
                })
                .collect();
            out.push(RoundResult {
                round,
                labels,
                dropped: self.store.dropped(round)?,
                win_rate,
                win_rate_se,
                eval_prompts: eval_n,
                oracle_agreement: (!agree.is_empty())
                    .then(|| agree.iter().filter(|&&a| a).count() as f64 / agree.len() as f64),
                train_loss: loss,
                acquisition_seconds: self.store.acquisition_seconds(round)?,
                train_seconds: secs,
            });
        }
        Ok(out)
    }

    /// Rewrites the derived files — metrics.jsonl, labels.jsonl (TRL format), report.html — from the store.
    pub fn write_outputs(&self) -> Result<()> {
        let results = self.results()?;
        let mut m = String::new();
        for r in &results {
            m.push_str(&serde_json::to_string(r)?);
            m.push('\n');
        }
        write_atomic(&self.dir.metrics(), m.as_bytes())?;
        let mut l = String::new();
        let rounds = self.cfg.rounds.targets().len();
        for x in self.store.labels(rounds)? {
            let q = &x.query;
            let row = json!({"prompt": q.prompt, "chosen": q.completions[x.preferred],
                "rejected": q.completions[1 - x.preferred], "round": q.round, "oracle": x.oracle});
            l.push_str(&row.to_string());
            l.push('\n');
        }
        write_atomic(&self.dir.labels(), l.as_bytes())?;
        let html = crate::eval::run_report(self, &results)?;
        write_atomic(&self.dir.report(), html.as_bytes())?;
        Ok(())
    }

    /// The kind of oracle this run asks (for messages).
    pub fn oracle_kind(&self) -> OracleKind {
        self.cfg.oracle.kind
    }
}

/// A plain model from the base and a round's trainable tensors (LoRA A/B merged in, or full weights).
pub fn policy_from_trainable(
    base: &LanguageModel,
    lora: Option<&dpo::train::LoraConfig>,
    t: &HashMap<String, Tensor>,
) -> Result<LanguageModel> {
    match lora {
        Some(l) => {
            let mut m = base.with_params(base.params.clone())?;
            let vars = m.add_lora(l.r, l.alpha, &l.target_modules, 0)?;
            for (name, v) in vars {
                let x = t.get(&name).ok_or_else(|| anyhow!("policy tensor `{name}` is missing"))?;
                v.set(&x.to_dtype(v.dtype())?)?;
            }
            base.with_params(m.merged_params()?)
        }
        None => {
            let mut p = base.params.clone();
            for (name, x) in t {
                if !p.contains(name) {
                    bail!("policy tensor `{name}` is not a parameter of the model");
                }
                p.insert(name.clone(), x.clone());
            }
            base.with_params(p)
        }
    }
}

fn last_loss(metrics: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(metrics).ok()?;
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v["loss"].as_f64())
}

/// Writes via a temporary file and a rename, so a reader never sees half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("partial");
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
