//! The loop's configuration: one TOML file, every default in this file (and documented in
//! `docs/apl.md`). The defaults are the CPU demo job (`activepref run` with no arguments): SmolLM2-135M
//! continuing movie-review openings, a sentiment oracle, hybrid acquisition, DPO with LoRA, sized to finish
//! in about 10 minutes on 2 cores. `configs/paper-imdb.toml` holds the paper's sizes for GPU runs.

use anyhow::{anyhow, bail, Context as _, Result};
use dpo::train::{LoraConfig, TrainConfig};
use oracle::judge::JudgeConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActiveConfig {
    /// Seeds every random choice of the run (prompt split, sampling, acquisition, training order, oracle A/B
    /// swaps): the same seed and config give the same labels.
    pub seed: u64,
    /// Policy model (GGUF file or HF directory); empty = the SmolLM2-135M GGUF from `assets fetch`.
    pub model: String,
    /// A PEFT LoRA adapter directory merged into `model` to make the starting policy (and the reference);
    /// empty = none.
    pub adapter: String,
    pub prompts: PromptConfig,
    pub generation: GenerationConfig,
    pub acquisition: AcquisitionConfig,
    pub rounds: RoundsConfig,
    pub oracle: OracleConfig,
    pub eval: EvalConfig,
    /// DPO settings (see docs/dpo.md). Defaults here: β 0.2 (the paper), LoRA r 8, AdamW lr 1e-3.
    pub train: TrainConfig,
    /// Where the policy samples and scores: in this process, or on an OpenAI-compatible server.
    pub policy: PolicyConfig,
    /// Who trains each round: this process (`[train]`), or a command (TRL, accelerate + DeepSpeed, …).
    pub trainer: TrainerConfig,
}

/// Who trains each round (see `apl::trainer` and docs/scale.md).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrainerConfig {
    /// `local` (DPO in this process with `[train]`) or `command` (the `command` template, run once a round).
    pub backend: TrainerBackendKind,
    /// With `command`: a shell command run in the run directory, with placeholders `{data_dir}` (a directory
    /// holding `train.jsonl`, every label so far in TRL's `prompt`/`chosen`/`rejected` format), `{data}` (that
    /// file), `{base}` (the starting model as an HF directory), `{output}` (where the command leaves a PEFT
    /// adapter, or an HF model, for this round), `{round}`, `{seed}`, and `[train]`'s `{beta}`,
    /// `{learning_rate}`, `{epochs}`, `{lora_r}`, `{lora_alpha}`.
    pub command: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TrainerBackendKind {
    Local,
    Command,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        Self { backend: TrainerBackendKind::Local, command: String::new() }
    }
}

/// Where acquisition and evaluation sample and score (see `apl::backend` and docs/scale.md).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// `local` (this process, candle) or `openai` (a vLLM-class server with `/v1/completions` log-probs and
    /// runtime LoRA loading, or `activepref serve --openai --allow-lora-loading`).
    pub backend: PolicyBackendKind,
    /// With `openai`: the server's API root, e.g. `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    /// With `openai`: the server's name of the starting model (the reference; each round's adapter is loaded
    /// beside it).
    pub model: String,
    /// Variable holding the server's API key (read from the environment, never from the file).
    pub api_key_env: String,
    /// The run directory as the server sees it, when it is not the same path (the server reads each round's
    /// adapter from `<this>/round-N/adapter`); empty = the run directory itself (a shared filesystem).
    pub server_run_dir: String,
    /// Requests in flight at once.
    pub concurrency: usize,
    pub timeout_s: f64,
    pub retries: u32,
    pub backoff_s: f64,
    pub max_backoff_s: f64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PolicyBackendKind {
    Local,
    Openai,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            backend: PolicyBackendKind::Local,
            base_url: String::new(),
            model: String::new(),
            api_key_env: "OPENAI_API_KEY".into(),
            server_run_dir: String::new(),
            concurrency: 4,
            timeout_s: 300.0,
            retries: 5,
            backoff_s: 1.0,
            max_backoff_s: 30.0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PromptConfig {
    /// Prompt source: empty = the movie-review snippets from `assets fetch`; or a `.txt` (one text per line)
    /// or `.jsonl` file (a `prompt` or `text` field per line).
    pub source: String,
    /// Each prompt is the first L tokens of a source text, L uniform in [min_tokens, max_tokens] (the
    /// paper's IMDB prompts are the first 8–16 tokens of a review). 0 = use the whole text.
    pub min_tokens: usize,
    pub max_tokens: usize,
    /// Source texts with fewer tokens than this are skipped (there would be nothing to continue).
    pub min_source_tokens: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenerationConfig {
    /// Temperature of the candidate pairs (paper 0.7).
    pub temperature: f64,
    /// Temperature of the entropy samples (paper 1.0).
    pub entropy_temperature: f64,
    /// Temperature of evaluation samples, for the policy and the baseline alike (paper 0.25).
    pub eval_temperature: f64,
    /// Completion length L uniform in [min_new_tokens, max_new_tokens] per sample (paper IMDB 16–24).
    pub min_new_tokens: usize,
    pub max_new_tokens: usize,
    /// Sequences per batch for sampling and scoring.
    pub batch_size: usize,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Online random: `need` prompts, one pair each from the current policy.
    Random,
    /// Offline random: like random, but pairs come from the starting (reference) model.
    Offline,
    /// Prompts with the highest predictive entropy (per-prompt Monte-Carlo mean).
    Entropy,
    /// Pairs where the DPO implicit reward model is most certain (largest |Δr̂|).
    Certainty,
    /// Pairs where it is least certain (ablation).
    Uncertainty,
    /// Entropy filter, then certainty (the paper's best).
    Hybrid,
}

impl Strategy {
    pub fn parse(s: &str) -> Result<Self> {
        toml::Value::String(s.trim().to_string()).try_into().map_err(|_| {
            anyhow!("unknown strategy `{s}`: expected random, offline, entropy, certainty, uncertainty or hybrid")
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Random => "random",
            Strategy::Offline => "offline",
            Strategy::Entropy => "entropy",
            Strategy::Certainty => "certainty",
            Strategy::Uncertainty => "uncertainty",
            Strategy::Hybrid => "hybrid",
        }
    }
}

/// How the final `need` points are chosen from their scores.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// The `need` best scores (the paper); ties broken by a seeded shuffle.
    TopK,
    /// Stochastic batch acquisition (Kirsch et al. 2023), Gumbel-top-k on `coldness · score`.
    Softmax,
    /// Gumbel-top-k on `coldness · ln score` (scores must be positive).
    Power,
    /// Gumbel-top-k on `−coldness · ln rank`.
    Softrank,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AcquisitionConfig {
    pub strategy: Strategy,
    /// ogf: candidate pairs scored per label wanted (certainty, uncertainty, hybrid). Paper IMDB 32.
    pub over_generate_factor: usize,
    /// ospf: prompts whose entropy is estimated per prompt kept (entropy, hybrid). Paper IMDB 8.
    pub over_sample_prompts_factor: usize,
    /// n: samples per prompt in the entropy estimate. Paper 8.
    pub entropy_samples: usize,
    pub selection: Selection,
    /// β of stochastic selection: 0 = uniform random, large = top-k.
    pub coldness: f64,
    /// Reproduce the released code's entropy windowing bug (prompt s scored with samples s..s+n of the flat
    /// list instead of its own). Only for replicating the paper's numbers.
    pub entropy_window_bug: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Retrain {
    /// Every round trains a fresh adapter (or fresh weights) from the starting model on all labels so far,
    /// with a new optimizer (the paper).
    FromStart,
    /// Every round continues from the previous round's policy, on all labels so far.
    Continue,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoundsConfig {
    /// New labels per round (ignored when `schedule` is given).
    pub labels_per_round: usize,
    pub rounds: usize,
    /// Cumulative label targets, one per round, e.g. `[128, 256, 384]` (the paper's m schedule).
    pub schedule: Vec<usize>,
    pub retrain: Retrain,
}

impl RoundsConfig {
    /// Cumulative label target of each round.
    pub fn targets(&self) -> Vec<usize> {
        if self.schedule.is_empty() {
            (1..=self.rounds).map(|r| r * self.labels_per_round).collect()
        } else {
            self.schedule.clone()
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OracleKind {
    /// A Naive Bayes sentiment model fitted at the start of the run on the human ratings of the movie
    /// snippets (held-out sign accuracy ~0.8 vs VADER's ~0.65); prefers the more positive text.
    Sentiment,
    /// VADER compound score; prefers the more positive text.
    Vader,
    /// An LLM judge behind an OpenAI-compatible API (`[oracle.judge]`).
    Judge,
    /// A person, through the labeling web app; queries wait in the store.
    Human,
    /// Labels looked up in a preference file (`dataset`); candidate pairs come from the same file.
    Dataset,
    /// A Bradley–Terry reward head trained by `activepref reward train` (`reward_model`).
    Reward,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OracleConfig {
    pub kind: OracleKind,
    /// Preference file (TRL JSONL) for `kind = "dataset"`.
    pub dataset: String,
    /// Reward model directory for `kind = "reward"`.
    pub reward_model: String,
    /// Seconds between checks for new human labels.
    pub poll_seconds: f64,
    /// Guidelines shown to people on the labeling page (plain text, blank lines between paragraphs); empty =
    /// the default movie-review guidelines. `activepref serve --guidelines FILE` overrides it.
    pub guidelines: String,
    pub judge: JudgeConfig,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NoAnswer {
    /// A tie or non-answer counts half a win (a rule-based oracle often scores two texts equally).
    Half,
    /// Counts as a loss (the paper's evaluation).
    Loss,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// Held-out prompts (never used for acquisition) on which the policy is compared with the starting model.
    pub prompts: usize,
    /// Evaluate after every round (else only after the last).
    pub every_round: bool,
    pub no_answer: NoAnswer,
    /// Seed of the held-out split, of the prompts' cut lengths and of the evaluation samples' random numbers,
    /// kept apart from the run seed: every run of an experiment (all strategies, all seeds) evaluates on the
    /// same prompts against the same starting-model samples, and its policy samples with the same random
    /// numbers, so per-prompt outcomes pair across runs (common random numbers).
    pub split_seed: u64,
    /// Who judges evaluation pairs when it is not the run's oracle (required for `human` and `dataset`
    /// runs, which cannot judge new samples): `sentiment`, `vader`, `judge` or `reward`.
    pub oracle: Option<OracleKind>,
}

impl Default for ActiveConfig {
    fn default() -> Self {
        let train = TrainConfig {
            learning_rate: 1e-3,
            epochs: 2,
            batch_size: 8,
            logging_steps: 1,
            save_steps: Some(5),
            max_grad_norm: Some(1.0),
            max_length: 128,
            lora: Some(LoraConfig { r: 8, alpha: 16.0, target_modules: vec!["all-linear".into()] }),
            loss: dpo::loss::LossParams { beta: 0.2, ..Default::default() },
            schedule: dpo::optim::Schedule::Constant,
            ..TrainConfig::default()
        };
        Self {
            seed: 0,
            model: String::new(),
            adapter: String::new(),
            prompts: PromptConfig::default(),
            generation: GenerationConfig::default(),
            acquisition: AcquisitionConfig::default(),
            rounds: RoundsConfig::default(),
            oracle: OracleConfig::default(),
            eval: EvalConfig::default(),
            train,
            policy: PolicyConfig::default(),
            trainer: TrainerConfig::default(),
        }
    }
}

impl Default for PromptConfig {
    fn default() -> Self {
        Self { source: String::new(), min_tokens: 8, max_tokens: 16, min_source_tokens: 20 }
    }
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            temperature: 0.7,
            entropy_temperature: 1.0,
            eval_temperature: 0.25,
            min_new_tokens: 16,
            max_new_tokens: 24,
            // Decoding reads every weight once per step whatever the batch, so larger batches amortise it:
            // SmolLM2-135M decodes 1.9× faster per token at 128 than at 32 on 2 cores, and slower again at
            // 256 (docs/benchmarks.md). Each row keeps its own RNG stream, so the text does not depend on it.
            batch_size: 128,
        }
    }
}

impl Default for AcquisitionConfig {
    fn default() -> Self {
        Self {
            strategy: Strategy::Hybrid,
            over_generate_factor: 4,
            over_sample_prompts_factor: 2,
            entropy_samples: 2,
            selection: Selection::TopK,
            coldness: 1.0,
            entropy_window_bug: false,
        }
    }
}

impl Default for RoundsConfig {
    fn default() -> Self {
        Self { labels_per_round: 16, rounds: 3, schedule: vec![], retrain: Retrain::FromStart }
    }
}

impl Default for OracleConfig {
    fn default() -> Self {
        Self {
            kind: OracleKind::Sentiment,
            dataset: String::new(),
            reward_model: String::new(),
            poll_seconds: 1.0,
            guidelines: String::new(),
            judge: JudgeConfig::default(),
        }
    }
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self { prompts: 64, every_round: true, no_answer: NoAnswer::Half, split_seed: 0, oracle: None }
    }
}

impl ActiveConfig {
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_toml(&text).map_err(|e| anyhow!("{}: {e}", path.display()))
    }

    /// Parses a config. Keys a file leaves out keep this file's defaults, also inside tables: a file that
    /// sets only `[train] epochs = 4` keeps LoRA and β = 0.2 from the defaults. `[train.lora] r = 0` turns
    /// LoRA off (full fine-tuning).
    pub fn from_toml(text: &str) -> Result<Self> {
        // First as written, for errors that point at the line of an unknown key or a wrong type.
        let user: toml::Value = toml::from_str::<Self>(text).and_then(|_| toml::from_str(text))?;
        let mut merged = toml::Value::try_from(Self::default())?;
        merge(&mut merged, user);
        let mut c: Self = merged.try_into()?;
        if c.train.lora.as_ref().is_some_and(|l| l.r == 0) {
            c.train.lora = None;
        }
        c.validate()?;
        Ok(c)
    }

    /// What makes two runs the same run: this config with the keys that may change between resumes set to
    /// their defaults. Those keys say how to reach the LLM judge and how much it may spend (`api_key_env`,
    /// `timeout_s`, `retries`, `backoff_s`, `max_backoff_s`, `max_calls`, `max_cost_tokens`, `concurrency`)
    /// how people are asked (`oracle.poll_seconds`, `oracle.guidelines`), and how many sequences are sampled at once
    /// (`generation.batch_size`): none changes a question or its
    /// answer, and a run stopped by a spent budget must be able to go on with a larger one.
    pub fn identity(&self) -> ActiveConfig {
        let mut c = self.clone();
        let (j, d) = (&mut c.oracle.judge, JudgeConfig::default());
        j.api_key_env = d.api_key_env;
        j.timeout_s = d.timeout_s;
        j.retries = d.retries;
        j.backoff_s = d.backoff_s;
        j.max_backoff_s = d.max_backoff_s;
        j.max_calls = d.max_calls;
        j.max_cost_tokens = d.max_cost_tokens;
        j.concurrency = d.concurrency;
        // How many sequences go through the model at once changes the speed, not the random numbers (each row
        // has its own RNG stream); only float rounding, which now and then changes a sample.
        c.generation.batch_size = GenerationConfig::default().batch_size;
        // Where the policy runs changes the speed, not the questions: a server over the same weights samples
        // and scores the same tokens (up to float rounding).
        c.policy = PolicyConfig::default();
        // The command's text may be fixed between resumes (a path, a flag); which backend trains may not.
        c.trainer.command = String::new();
        let o = OracleConfig::default();
        c.oracle.poll_seconds = o.poll_seconds;
        c.oracle.guidelines = o.guidelines;
        c
    }

    /// The config as TOML (every key, defaults included).
    pub fn to_toml(&self) -> String {
        let mut v = toml::Value::try_from(self).expect("config serialises");
        // No LoRA is written as `r = 0`, so the text parses back to full fine-tuning (a missing table would
        // mean "the default", which is LoRA).
        if self.train.lora.is_none() {
            if let Some(t) = v.get_mut("train").and_then(|t| t.as_table_mut()) {
                let mut l = toml::map::Map::new();
                l.insert("r".into(), toml::Value::Integer(0));
                t.insert("lora".into(), toml::Value::Table(l));
            }
        }
        toml::to_string(&v).expect("config serialises")
    }

    /// Checks that need no files; each message names the key and the value expected.
    pub fn validate(&self) -> Result<()> {
        let a = &self.acquisition;
        let g = &self.generation;
        let p = &self.prompts;
        if p.min_tokens > p.max_tokens {
            bail!("prompts.min_tokens ({}) is larger than prompts.max_tokens ({})", p.min_tokens, p.max_tokens);
        }
        if g.min_new_tokens == 0 || g.min_new_tokens > g.max_new_tokens {
            bail!(
                "generation.min_new_tokens ({}) must be at least 1 and at most generation.max_new_tokens ({})",
                g.min_new_tokens,
                g.max_new_tokens
            );
        }
        for (k, t) in [("temperature", g.temperature), ("entropy_temperature", g.entropy_temperature)] {
            if t <= 0.0 || !t.is_finite() {
                bail!("generation.{k} = {t}: sampling needs a temperature > 0");
            }
        }
        if g.eval_temperature < 0.0 {
            bail!("generation.eval_temperature = {}: must be ≥ 0 (0 = greedy)", g.eval_temperature);
        }
        if g.batch_size == 0 {
            bail!("generation.batch_size must be at least 1");
        }
        if self.trainer.backend == TrainerBackendKind::Command {
            if self.trainer.command.trim().is_empty() {
                bail!("trainer.backend = \"command\" needs trainer.command (see docs/scale.md for TRL's)");
            }
            if !self.trainer.command.contains("{output}") {
                bail!(
                    "trainer.command must write its result to {{output}}; the template has no {{output}} placeholder"
                );
            }
            if self.rounds.retrain == Retrain::Continue {
                bail!(
                    "rounds.retrain = \"continue\" needs the local trainer: a command trains from {{base}} each round"
                );
            }
        }
        let pc = &self.policy;
        if pc.backend == PolicyBackendKind::Openai {
            if !(pc.base_url.starts_with("http://") || pc.base_url.starts_with("https://")) {
                bail!(
                    "policy.base_url {:?} must start with http:// or https:// (e.g. http://127.0.0.1:8000/v1)",
                    pc.base_url
                );
            }
            if pc.model.trim().is_empty() {
                bail!("policy.model is empty: give the server's name of the starting model (its /v1/models lists it)");
            }
            if self.train.lora.is_none() {
                bail!(
                    "policy.backend = \"openai\" needs LoRA training ([train.lora]): the server takes each round's \
                     policy as a LoRA adapter; full fine-tuning would need it restarted on new weights every round"
                );
            }
            if !self.adapter.is_empty() {
                bail!(
                    "adapter = {:?} with policy.backend = \"openai\": serve the starting model with that adapter \
                     merged (activepref serve --openai --adapter DIR) and leave `adapter` empty",
                    self.adapter
                );
            }
            if pc.concurrency == 0 {
                bail!("policy.concurrency must be at least 1");
            }
            if pc.timeout_s <= 0.0 || pc.backoff_s < 0.0 || pc.max_backoff_s < 0.0 {
                bail!("policy.timeout_s must be > 0 and policy.backoff_s, max_backoff_s ≥ 0");
            }
        }
        if a.over_generate_factor == 0 || a.over_sample_prompts_factor == 0 || a.entropy_samples == 0 {
            bail!("acquisition.over_generate_factor, over_sample_prompts_factor and entropy_samples must be ≥ 1");
        }
        if a.coldness < 0.0 || !a.coldness.is_finite() {
            bail!("acquisition.coldness = {}: must be a finite number ≥ 0", a.coldness);
        }
        let t = self.rounds.targets();
        if t.is_empty() || t[0] == 0 {
            bail!("rounds: at least one round with at least one label is needed (rounds.rounds, rounds.labels_per_round or rounds.schedule)");
        }
        if t.windows(2).any(|w| w[1] <= w[0]) {
            bail!("rounds.schedule {:?} must be strictly increasing (cumulative label targets)", t);
        }
        if self.eval.prompts == 0 {
            bail!("eval.prompts must be at least 1");
        }
        match self.oracle.kind {
            OracleKind::Dataset if self.oracle.dataset.is_empty() => {
                bail!("oracle.kind = \"dataset\" needs oracle.dataset = \"path/to/preferences.jsonl\"")
            }
            OracleKind::Reward if self.oracle.reward_model.is_empty() => {
                bail!("oracle.kind = \"reward\" needs oracle.reward_model = \"path/to/reward-model\" (from `activepref reward train`)")
            }
            _ => {}
        }
        let eval = self.eval.oracle.unwrap_or(self.oracle.kind);
        if matches!(eval, OracleKind::Human | OracleKind::Dataset) {
            bail!(
                "oracle.kind = \"{}\" cannot judge new evaluation samples: set eval.oracle to sentiment, vader, judge or reward",
                toml::Value::try_from(eval).map(|v| v.to_string()).unwrap_or_default().trim_matches('"')
            );
        }
        if self.train.kto.is_some() {
            bail!(
                "train.kto: the active-learning loop trains with DPO only and cannot run KTO yet; remove the \
                 [train.kto] section (`activepref dpo --loss-type kto` trains KTO on a labels file)"
            );
        }
        self.train.validate()?;
        Ok(())
    }

    /// The most labels one round acquires.
    pub fn max_labels_per_round(&self) -> usize {
        let t = self.rounds.targets();
        t.iter().zip(std::iter::once(&0).chain(t.iter())).map(|(a, b)| a - b).max().unwrap_or(0)
    }

    /// The largest number of prompts one acquisition draws (prompts repeat when the pool is smaller).
    pub fn prompts_per_draw(&self) -> usize {
        self.draw_size(self.max_labels_per_round())
    }

    /// How many prompts an acquisition of `need` labels draws from the pool.
    pub fn draw_size(&self, need: usize) -> usize {
        let a = &self.acquisition;
        need * match a.strategy {
            Strategy::Random | Strategy::Offline => 1,
            Strategy::Entropy => a.over_sample_prompts_factor,
            Strategy::Certainty | Strategy::Uncertainty => a.over_generate_factor,
            Strategy::Hybrid => a.over_generate_factor * a.over_sample_prompts_factor,
        }
    }

    /// A path from the config, relative to the config file's folder when not absolute.
    pub fn resolve(base: Option<&Path>, p: &str) -> PathBuf {
        let path = PathBuf::from(p);
        match base {
            Some(b) if path.is_relative() => b.join(path),
            _ => path,
        }
    }
}

/// Deep merge of `over` into `base`: tables merge key by key, anything else is replaced.
fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loop trains with DPO only: a `[train.kto]` section is refused by name, not silently trained as DPO.
    #[test]
    fn train_kto_is_refused_until_the_loop_supports_it() {
        let e = ActiveConfig::from_toml("[train.kto]\nloss_type = \"kto\"").unwrap_err().to_string();
        assert!(e.contains("train.kto") && e.contains("KTO"), "{e}");
        let mut c = ActiveConfig::default();
        c.train.kto = Some(dpo::KtoConfig::default());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("train.kto"), "{e}");
        c.train.kto = None;
        c.validate().unwrap();
    }
}
