//! Builds the run's oracle (and, where the run's oracle cannot judge new samples, the evaluation oracle)
//! from the config. The sentiment model is fitted here, at the start of the run, on the human ratings of
//! the movie snippets; its held-out accuracy goes into the report next to VADER's on the same split.

use crate::config::{ActiveConfig, OracleKind};
use anyhow::{bail, Context as _, Result};
use oracle::dataset::DatasetOracle;
use oracle::judge::Judge;
use oracle::sentiment::{sign_accuracy, FitParams, SentimentModel};
use oracle::vader::Vader;
use oracle::{Oracle, ScoreOracle};
use std::path::Path;
use std::time::Duration;

/// Fraction of the rated snippets held out to measure the sentiment oracle.
const HELD_OUT: f64 = 0.2;

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

/// What a run asks.
pub struct Oracles {
    pub main: OracleHandle,
    /// The evaluation judge, when it is not the run's oracle.
    pub eval: Option<Box<dyn Oracle>>,
    /// A fact for the report (e.g. the sentiment model's held-out accuracy).
    pub note: Option<String>,
}

/// Builds the run's oracles. `dataset`, when the caller has already read the run's preference file (it is
/// also the candidate pool), is used instead of reading the file again.
pub fn build(
    cfg: &ActiveConfig,
    run_dir: &Path,
    snippets: &Path,
    mut dataset: Option<DatasetOracle>,
) -> Result<Oracles> {
    let mut note = None;
    let mut make = |kind: OracleKind| -> Result<Box<dyn Oracle>> {
        Ok(match kind {
            OracleKind::Sentiment => {
                let (model, n) = fit_sentiment(run_dir, snippets)?;
                note = Some(n);
                Box::new(ScoreOracle(model))
            }
            OracleKind::Vader => Box::new(ScoreOracle(Vader::new())),
            OracleKind::Judge => {
                let mut j = cfg.oracle.judge.clone();
                if j.cache_file.is_none() {
                    j.cache_file = Some(run_dir.join("judge-cache.jsonl"));
                }
                j.seed ^= cfg.seed;
                Box::new(Judge::new(j)?)
            }
            OracleKind::Dataset => match dataset.take() {
                Some(d) => Box::new(d),
                None => Box::new(DatasetOracle::open(Path::new(&cfg.oracle.dataset))?),
            },
            OracleKind::Reward => Box::new(crate::reward::RewardOracle::load(Path::new(&cfg.oracle.reward_model))?),
            OracleKind::Human => bail!("a person cannot be built as an automatic oracle"),
        })
    };
    let main = match cfg.oracle.kind {
        OracleKind::Human => OracleHandle::Human { poll: Duration::from_secs_f64(cfg.oracle.poll_seconds.max(0.05)) },
        k => OracleHandle::Sync(make(k)?),
    };
    let eval = match cfg.eval.oracle {
        Some(k) if k != cfg.oracle.kind => Some(make(k)?),
        _ => None,
    };
    Ok(Oracles { main, eval, note })
}

/// Fits the sentiment model on the rated snippets (minus a held-out split) and saves it in the run directory.
pub fn fit_sentiment(run_dir: &Path, snippets: &Path) -> Result<(SentimentModel, String)> {
    if !snippets.exists() {
        bail!(
            "the sentiment oracle is fitted on {}, which is missing: run `activepref assets fetch` first",
            snippets.display()
        );
    }
    let all = oracle::snippets::read(snippets)?;
    let (train, held_out) = oracle::snippets::split(&all, HELD_OUT, 0);
    let model = SentimentModel::fit(&train, FitParams::default())?;
    let acc = model.accuracy(&held_out);
    let vader = Vader::new();
    let vader_acc = sign_accuracy(&held_out, |t| vader.compound(t));
    // VADER scores many snippets exactly 0 (no preference); its accuracy where it does commit, too.
    let scored: Vec<_> = held_out.iter().filter(|s| vader.compound(&s.text) != 0.0).cloned().collect();
    let vader_nonzero = sign_accuracy(&scored, |t| vader.compound(t));
    std::fs::create_dir_all(run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let path = run_dir.join("oracle-sentiment.json");
    model.save(&path).with_context(|| format!("saving the sentiment oracle to {}", path.display()))?;
    let note = format!(
        "oracle: Naive Bayes sentiment model fitted on {} human-rated movie snippets; held-out sign accuracy {:.3} \
         on {} snippets (VADER on the same split: {:.3}, or {:.3} on the {} it does not score 0)",
        train.len(),
        acc,
        held_out.len(),
        vader_acc,
        vader_nonzero,
        scored.len()
    );
    Ok((model, note))
}
