//! The APL loop (Muldrew et al. 2024, Algorithm 1; docs/algorithm.md#the-loop), resumable from the run store.
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

use crate::acquire::{acquire, Models, PoolCursor};
use crate::backend::{self, PolicyBackend, PolicyModel};
use crate::config::{ActiveConfig, OracleKind};
use crate::eval::Evaluation;
use crate::event::Event;
use crate::oracles::OracleHandle;
use crate::policy::check_saved;
use crate::report::write_outputs;
use crate::results::RoundResult;
use crate::run_dir::{write_atomic, RunDir};
use crate::seed::seed_for;
use crate::seed::stream::ACQUIRE;
use crate::store::{Query, Store, ORACLE_NAME, ORACLE_NOTE};
use crate::trainer::{self, TrainJob};
use anyhow::{bail, Context as _, Result};
use lm::LanguageModel;
use oracle::dataset::DatasetOracle;
use oracle::{Comparison, Oracle};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Stops a run whose oracle keeps giving no preference.
const MAX_ATTEMPTS: usize = 25;

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
        let dir = RunDir::new(dir);
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
        store.set_meta(ORACLE_NAME, &oracle.name())?;
        write_atomic(&dir.config(), toml.as_bytes())?;
        Ok(Self { cfg, dir, store, base, oracle, eval_oracle, fixed_pairs: None, events })
    }

    /// Sets a run up from its configuration alone, in the one order that works: resolve the prompt source
    /// (`snippets`, the rated movie snippets, by default), read the prompt texts (with the dataset oracle, the
    /// preference file is read once: its pairs are the candidate pool and its prompts the texts), build the
    /// oracles (fitting the sentiment model on `snippets`), open the store, record the oracle's note for the
    /// report, and store the prompt pool on first use. A resumed run goes through the same steps and finds its
    /// pool already stored.
    pub fn prepare(
        cfg: ActiveConfig,
        dir: &Path,
        base: LanguageModel,
        snippets: &Path,
        events: &'a mut dyn FnMut(Event),
    ) -> Result<Self> {
        // Before anything is built or written (fitting the sentiment model writes into the run directory).
        cfg.validate()?;
        let source =
            if cfg.prompts.source.is_empty() { snippets.to_path_buf() } else { PathBuf::from(&cfg.prompts.source) };
        if !source.exists() && cfg.oracle.kind != OracleKind::Dataset {
            if cfg.prompts.source.is_empty() {
                bail!("{} not found: run `activepref assets fetch` first", source.display());
            }
            bail!("prompts.source = {:?}: no such file", cfg.prompts.source);
        }
        let dataset = match cfg.oracle.kind {
            OracleKind::Dataset => Some(DatasetOracle::open(Path::new(&cfg.oracle.dataset))?),
            _ => None,
        };
        let pairs = dataset.as_ref().map(DatasetOracle::pairs);
        let (texts, source) = match &pairs {
            Some(p) => (p.iter().map(|c| c.prompt.clone()).collect(), PathBuf::from(&cfg.oracle.dataset)),
            None => (crate::prompts::read_texts(&source)?, source),
        };
        let o = crate::oracles::build(&cfg, dir, snippets, dataset)?;
        let mut run = Self::open(cfg, dir, base, o.main, o.eval, events)?;
        if let Some(p) = &pairs {
            run.use_fixed_pairs(p);
        }
        if let Some(n) = o.note {
            run.store.set_meta(ORACLE_NOTE, &n)?;
            run.emit(Event::Info(n));
        }
        run.ensure_pool(&texts, &source)?;
        Ok(run)
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
                "{} acquisition draws up to {draw} prompts per round from {}: prompts repeat once the pool has been \
                 gone through, as in the paper",
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
        let mut results = Vec::new();
        // Where the run samples and scores, opened once, when a stage first needs it (a remote backend checks
        // its server then). It borrows copies of the config, directory and model (the tensors are shared), so
        // that the steps below can take `self` mutably.
        let (cfg, dir, base) = (self.cfg.clone(), self.dir.clone(), self.base.with_params(self.base.params.clone())?);
        let mut opened: Option<Box<dyn PolicyBackend + '_>> = None;
        for (i, &target) in targets.iter().enumerate() {
            let round = i + 1;
            if !self.store.round_trained(round)? {
                self.label_round(round, target, open_once(&mut opened, &cfg, &base, &dir, round, "acquisition")?)?;
                self.train_round(round, target)?;
            } else if let Err(e) = check_saved(&self.base, &self.dir, round) {
                // The store says trained, the file is gone or damaged (deleted, or a crash the disk did not
                // survive): the labels are all in the store, so train the round again.
                self.emit(Event::Info(format!("round {round}: {e:#}; training it again from its stored labels")));
                self.train_round(round, target)?;
            }
            if self.cfg.eval.every_round || round == last {
                self.evaluate(round, open_once(&mut opened, &cfg, &base, &dir, round, "evaluation")?)?;
            }
            results = write_outputs(&self.store, &self.cfg, &self.dir)?;
        }
        Ok(results)
    }

    /// Acquires and labels until the round holds `target` labels (cumulative), with the policy of the round
    /// before, from the run's backend (loaded once, when the first acquisition needs it).
    fn label_round(&mut self, round: usize, target: usize, backend: &dyn PolicyBackend) -> Result<()> {
        let rounds = self.cfg.rounds.targets().len();
        let mut policy: Option<Box<dyn PolicyModel>> = None;
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
            if policy.is_none() {
                policy = Some(backend.policy(round - 1)?);
            }
            let models = Models {
                policy: policy.as_deref().expect("loaded above"),
                reference: backend.reference(),
                policy_is_reference: round == 1,
                fixed_pairs: self.fixed_pairs.as_ref(),
            };
            let seed = seed_for(self.cfg.seed, &[ACQUIRE, round as u64, attempt as u64]);
            // Every earlier acquisition's draw, so this one goes on through the pool where they stopped.
            let drawn = self.store.acquisition_needs()?.into_iter().map(|n| self.cfg.draw_size(n)).sum();
            let cursor = PoolCursor { seed: self.cfg.seed, drawn };
            let events = &mut self.events;
            let cands = acquire(&self.cfg, &models, &pool, cursor, need, seed, &mut |what, done, total| {
                events(Event::Progress { what: what.to_string(), done, total })
            })
            .with_context(|| format!("round {round}: acquisition"))?;
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

    /// Trains the round on all labels so far with the run's trainer (`trainer`), then marks it trained.
    fn train_round(&mut self, round: usize, target: usize) -> Result<()> {
        let mut labels = self.store.labels(round)?;
        labels.truncate(target);
        let n = labels.len();
        let rounds = self.cfg.rounds.targets().len();
        self.emit(Event::Stage(format!("round {round}/{rounds}: training DPO on {n} labels")));
        let t0 = Instant::now();
        let job = TrainJob {
            cfg: &self.cfg,
            dir: &self.dir,
            base: &self.base,
            round,
            labels: &labels,
            events: &mut *self.events,
        };
        let loss = trainer::open(&self.cfg).train(job).with_context(|| format!("round {round}: training"))?;
        self.store.mark_trained(round, target, n, loss, t0.elapsed().as_secs_f64())?;
        Ok(())
    }

    /// Win rate of the round's policy against the starting model on the held-out prompts (`eval.rs`).
    fn evaluate(&mut self, round: usize, backend: &dyn PolicyBackend) -> Result<()> {
        let oracle: Option<&mut dyn Oracle> = match (&mut self.eval_oracle, &mut self.oracle) {
            (Some(o), _) => Some(o.as_mut()),
            (None, OracleHandle::Sync(o)) => Some(o.as_mut()),
            (None, OracleHandle::Human { .. }) => None,
        };
        Evaluation { cfg: &self.cfg, store: &mut self.store, backend, oracle, events: &mut *self.events }
            .run(round)
            .with_context(|| format!("round {round}: evaluation"))
    }
}

/// The run's backend, opened into `slot` the first time a stage (named in the error) needs it.
fn open_once<'s, 'a>(
    slot: &'s mut Option<Box<dyn PolicyBackend + 'a>>,
    cfg: &'a ActiveConfig,
    base: &'a LanguageModel,
    dir: &'a RunDir,
    round: usize,
    stage: &str,
) -> Result<&'s dyn PolicyBackend> {
    if slot.is_none() {
        *slot = Some(backend::open(cfg, base, dir).with_context(|| format!("round {round}: {stage}"))?);
    }
    Ok(slot.as_deref().expect("opened above"))
}
