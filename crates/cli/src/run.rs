//! `activepref run` and `activepref experiment`: flags in, the library's loop (`apl::ActiveLoop::prepare`) and
//! experiment driver (`apl::experiment`) called, progress bars and tables out.

use crate::{assets, ModelArgs};
use anyhow::Result;
use apl::config::Strategy;
use apl::experiment::Experiment;
use apl::{ActiveConfig, ActiveLoop, Event, RoundResult};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct RunArgs {
    /// Loop configuration (TOML; every key and default is in docs/apl.md). Without it: the CPU demo job —
    /// SmolLM2-135M continues movie-review openings, a sentiment model prefers the more positive one,
    /// hybrid acquisition, DPO with LoRA, 3 rounds of 16 labels.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Run directory (store, checkpoints, metrics, labels, report). Running the same command again resumes
    /// it. [default: runs/default, or runs/<config name>]
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Override the config's seed
    #[arg(long)]
    pub seed: Option<u64>,
    /// Override the acquisition strategy: random, offline, entropy, certainty, uncertainty, hybrid
    #[arg(long)]
    pub strategy: Option<String>,
    /// Print the configuration that would run (defaults merged with --config) as TOML, and exit
    #[arg(long)]
    pub print_config: bool,
}

#[derive(Args)]
pub struct ExperimentArgs {
    /// Loop configuration (TOML); its strategy and seed are replaced per run
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Comma-separated strategies to compare
    #[arg(long, default_value = "random,certainty,hybrid")]
    pub strategies: String,
    /// Seeds per strategy (0, 1, ...)
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    /// Experiment directory: one run directory per strategy and seed, the table and the plot
    #[arg(long, default_value = "runs/experiment")]
    pub out: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
}

fn load_config(path: Option<&Path>) -> Result<ActiveConfig> {
    match path {
        Some(p) => ActiveConfig::from_toml_file(p),
        None => Ok(ActiveConfig::default()),
    }
}

/// Draws the loop's events as progress bars on stderr.
struct Bars {
    bar: Option<(String, ProgressBar)>,
}

impl Bars {
    fn handle(&mut self, e: Event) {
        match e {
            Event::Stage(s) => {
                self.finish();
                eprintln!("==> {s}");
            }
            Event::Info(s) => match &self.bar {
                Some((_, b)) => b.suspend(|| eprintln!("    {s}")),
                None => eprintln!("    {s}"),
            },
            Event::Progress { what, done, total } => {
                if self.bar.as_ref().is_none_or(|(w, _)| *w != what) {
                    self.finish();
                    let b = ProgressBar::new(total as u64);
                    b.set_style(
                        ProgressStyle::with_template("    {msg:<20} [{bar:30}] {pos}/{len} ({elapsed}, eta {eta})")
                            .unwrap()
                            .progress_chars("=> "),
                    );
                    b.set_message(what.clone());
                    self.bar = Some((what, b));
                }
                let b = &self.bar.as_ref().unwrap().1;
                b.set_length(total as u64);
                b.set_position(done as u64);
            }
        }
    }

    fn finish(&mut self) {
        if let Some((_, b)) = self.bar.take() {
            b.finish();
        }
    }
}

/// Runs (or resumes) one run; returns its per-round results.
fn run_one(cfg: ActiveConfig, dir: &Path, base: lm::LanguageModel, bars: &mut Bars) -> Result<Vec<RoundResult>> {
    let snippets = assets::default_dir().join(assets::MOVIE_SNIPPETS);
    let mut events = |e: Event| bars.handle(e);
    ActiveLoop::prepare(cfg, dir, base, &snippets, &mut events)?.run()
}

fn print_results(res: &[RoundResult]) {
    println!("{:>5} {:>7} {:>8} {:>16} {:>10} {:>10}", "round", "labels", "dropped", "win rate", "agreement", "loss");
    for r in res {
        let w = match (r.win_rate, r.win_rate_se) {
            (Some(w), Some(se)) => format!("{:.1}% ± {:.1}", 100.0 * w, 100.0 * se),
            _ => "-".into(),
        };
        let a = r.oracle_agreement.map(|a| format!("{:.2}", a)).unwrap_or("-".into());
        let l = r.train_loss.map(|l| format!("{:.3}", l)).unwrap_or("-".into());
        println!("{:>5} {:>7} {:>8} {:>16} {:>10} {:>10}", r.round, r.labels, r.dropped, w, a, l);
    }
}

pub fn run(a: RunArgs) -> Result<()> {
    let mut cfg = load_config(a.config.as_deref())?;
    if let Some(s) = a.seed {
        cfg.seed = s;
    }
    if let Some(s) = &a.strategy {
        cfg.acquisition.strategy = Strategy::parse(s)?;
    }
    if let Some(m) = &a.model.model {
        cfg.model = m.display().to_string();
    }
    if let Some(d) = &a.model.adapter {
        cfg.adapter = d.display().to_string();
    }
    cfg.validate()?;
    if a.print_config {
        print!("{}", cfg.to_toml());
        return Ok(());
    }
    let dir = a.run_dir.clone().unwrap_or_else(|| {
        let name = a.config.as_ref().and_then(|c| c.file_stem()).map(|s| s.to_string_lossy().to_string());
        PathBuf::from("runs").join(name.unwrap_or_else(|| "default".into()))
    });
    let base = load_model(&cfg, &a.model)?;
    check_train_device(&cfg, &base)?;
    let t0 = std::time::Instant::now();
    let mut bars = Bars { bar: None };
    let res = run_one(cfg, &dir, base, &mut bars)?;
    bars.finish();
    print_results(&res);
    println!(
        "done in {:.1} min. Report: {}  Labels (TRL JSONL): {}",
        t0.elapsed().as_secs_f64() / 60.0,
        dir.join("report.html").display(),
        dir.join("labels.jsonl").display()
    );
    Ok(())
}

/// `train.dtype` against the model's device before any round's work (the local trainer would refuse it only
/// after the first round's sampling and labels).
fn check_train_device(cfg: &ActiveConfig, base: &lm::LanguageModel) -> Result<()> {
    if cfg.trainer.backend == apl::config::TrainerBackendKind::Local {
        cfg.train.dtype.on(base.device())?;
    }
    Ok(())
}

/// A run's starting model: `--model` if given, else the config's `model`, else the fetched default; with
/// `--adapter` or else the config's `adapter` merged into it.
pub fn load_model(cfg: &ActiveConfig, m: &ModelArgs) -> Result<lm::LanguageModel> {
    let from_config = |s: &str| (!s.is_empty()).then(|| PathBuf::from(s));
    ModelArgs {
        model: m.model.clone().or(from_config(&cfg.model)),
        adapter: m.adapter.clone().or(from_config(&cfg.adapter)),
        device: m.device.clone(),
    }
    .load()
}

pub fn experiment(a: ExperimentArgs) -> Result<()> {
    let mut cfg = load_config(a.config.as_deref())?;
    if let Some(m) = &a.model.model {
        cfg.model = m.display().to_string();
    }
    if let Some(d) = &a.model.adapter {
        cfg.adapter = d.display().to_string();
    }
    let strategies: Vec<Strategy> =
        a.strategies.split(',').filter(|s| !s.trim().is_empty()).map(Strategy::parse).collect::<Result<_>>()?;
    let plan = Experiment::new(cfg, strategies, a.seeds, &a.out)?;
    let base = load_model(&plan.cfg, &a.model)?;
    check_train_device(&plan.cfg, &base)?;
    let snippets = assets::default_dir().join(assets::MOVIE_SNIPPETS);
    let mut bars = Bars { bar: None };
    let rep = plan.run(&base, &snippets, &mut |e| bars.handle(e))?;
    bars.finish();
    println!("{}", plan.write(&rep)?);
    println!("Plot: {}", plan.plot().display());
    Ok(())
}
