//! Experiments: every strategy × seed as its own resumable run under one directory, summarised as the
//! paper's headline table (win rate against the starting model per label count, mean with a 95% bootstrap
//! interval over seeds × prompts, the difference to `random`, the label savings; [`crate::stats`]) and a plot
//! of win rate against labels.
//!
//! Each run is an ordinary run directory (`<strategy>-seed<N>`), so an experiment stopped at any point and
//! started again resumes every unfinished run and reuses every finished one.

use crate::active::ActiveLoop;
use crate::config::{ActiveConfig, OracleKind, Strategy};
use crate::event::Event;
use crate::run_dir::write_atomic;
use crate::stats::{self, Outcome};
use anyhow::{bail, Context as _, Result};
use lm::LanguageModel;
use std::path::{Path, PathBuf};

/// What to run: the strategies to compare, the seeds of each, and where.
pub struct Experiment {
    /// The loop configuration; its strategy and seed are replaced per run.
    pub cfg: ActiveConfig,
    pub strategies: Vec<Strategy>,
    /// Seeds 0..seeds for every strategy.
    pub seeds: u64,
    pub out: PathBuf,
    /// How the intervals are made (replicates, RNG seed, the baseline strategy).
    pub stats: stats::Options,
}

impl Experiment {
    /// Checks the plan before any work: at least one strategy and one seed, and an automatic oracle (a person
    /// would be asked for every run's labels).
    pub fn new(cfg: ActiveConfig, strategies: Vec<Strategy>, seeds: u64, out: &Path) -> Result<Self> {
        if strategies.is_empty() || seeds == 0 {
            bail!("--strategies and --seeds must name at least one strategy and one seed");
        }
        if cfg.oracle.kind == OracleKind::Human {
            bail!("experiments need an automatic oracle (oracle.kind = human would wait for people in every run)");
        }
        Ok(Self { cfg, strategies, seeds, out: out.to_path_buf(), stats: stats::Options::default() })
    }

    /// The run directory of one strategy and seed.
    pub fn run_dir(&self, strategy: Strategy, seed: u64) -> PathBuf {
        self.out.join(format!("{}-seed{seed}", strategy.name()))
    }

    /// Runs (or resumes) every strategy × seed from copies of `base`, each set up as
    /// [`ActiveLoop::prepare`] does with the movie `snippets`; returns the table and plot data. Each run
    /// starts with an [`Event::Stage`] naming it.
    pub fn run(
        &self,
        base: &LanguageModel,
        snippets: &Path,
        events: &mut dyn FnMut(Event),
    ) -> Result<::report::ExperimentReport> {
        std::fs::create_dir_all(&self.out).with_context(|| format!("creating {}", self.out.display()))?;
        let mut cells: Vec<::report::Cell> = Vec::new();
        let mut outcomes: Vec<Outcome> = Vec::new();
        // The first run's held-out prompts and baseline samples: every other run must have the same.
        let mut paired: Option<(PathBuf, Heldout)> = None;
        for &s in &self.strategies {
            for seed in 0..self.seeds {
                let mut c = self.cfg.clone();
                c.acquisition.strategy = s;
                c.seed = seed;
                let dir = self.run_dir(s, seed);
                events(Event::Stage(format!("{} seed {seed} ({})", s.name(), dir.display())));
                let copy = base.with_params(base.params.clone())?;
                let mut run = ActiveLoop::prepare(c, &dir, copy, snippets, &mut *events)?;
                let res = run.run()?;
                let mine = heldout(&run.store)?;
                match &paired {
                    None => paired = Some((dir.clone(), mine)),
                    Some((first, theirs)) => check_paired(&dir, &mine, first, theirs)?,
                }
                for r in &res {
                    for (prompt, win) in crate::results::prompt_outcomes(&run.store, r.round)? {
                        outcomes.push(Outcome { strategy: s.name().into(), seed, labels: r.labels, prompt, win });
                    }
                }
                for r in res {
                    if let Some(w) = r.win_rate {
                        match cells.iter_mut().find(|x| x.strategy == s.name() && x.labels == r.labels) {
                            Some(x) => x.win_rates.push(w),
                            None => cells.push(::report::Cell {
                                strategy: s.name().into(),
                                labels: r.labels,
                                win_rates: vec![w],
                            }),
                        }
                    }
                }
            }
        }
        let st = stats::summarize(&outcomes, &self.stats);
        let spread = if st.prompts_only {
            "intervals across prompts only (one seed)".to_string()
        } else {
            "bootstrap over seeds × prompts".to_string()
        };
        Ok(::report::ExperimentReport {
            title: "activepref experiment — win rate vs the starting model".into(),
            subtitle: format!(
                "{} seed(s) per strategy; mean [{:.0}% interval], {spread}",
                self.seeds,
                st.level * 100.0
            ),
            cells,
            notes: vec![],
            stats: Some(st),
        })
    }

    /// Writes `table.md`, `results.json` and `experiment.html` into the experiment directory; returns the
    /// table as text.
    pub fn write(&self, rep: &::report::ExperimentReport) -> Result<String> {
        let table = ::report::experiment_table(rep);
        write_atomic(&self.out.join("table.md"), table.as_bytes())?;
        write_atomic(&self.out.join("results.json"), serde_json::to_string_pretty(rep)?.as_bytes())?;
        write_atomic(&self.out.join("experiment.html"), ::report::render_experiment(rep).as_bytes())?;
        Ok(table)
    }

    /// Where the plot is.
    pub fn plot(&self) -> PathBuf {
        self.out.join("experiment.html")
    }
}

/// What pairs a run's outcomes with another's: its held-out prompts (id, text) and the starting model's
/// samples on them.
pub struct Heldout {
    pub prompts: Vec<(i64, String)>,
    pub baseline: Vec<(i64, String)>,
}

/// A run's held-out prompts and baseline samples, as its store has them.
pub fn heldout(store: &crate::store::Store) -> Result<Heldout> {
    Ok(Heldout {
        prompts: store.prompts("eval")?.into_iter().map(|p| (p.id, p.text)).collect(),
        baseline: store.eval_samples(0)?,
    })
}

/// Refuses a run (`dir`) whose held-out prompts or baseline samples differ from the experiment's first run
/// (`first`): its outcomes would not pair, and the paired intervals would be wrong.
pub fn check_paired(dir: &Path, mine: &Heldout, first: &Path, theirs: &Heldout) -> Result<()> {
    let what = if mine.prompts != theirs.prompts {
        "held-out prompts"
    } else if mine.baseline != theirs.baseline {
        "starting-model samples on the held-out prompts"
    } else {
        return Ok(());
    };
    bail!(
        "{}: its {what} differ from those of {}, so its outcomes cannot be paired with the other runs'. \
         The runs of one experiment must share eval.split_seed, the prompt settings and the model (and run on \
         one machine: float rounding differs between CPUs); delete the run directory to run it again",
        dir.display(),
        first.display()
    )
}
