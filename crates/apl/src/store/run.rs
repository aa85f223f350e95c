//! The loop's tables: the prompt pool, every scored candidate of every acquisition, the queries sent to the
//! oracle and their labels, finished rounds, evaluation samples and judgments. Everything the loop decides or
//! is told goes through these methods, one transaction per step, so a killed run resumes from what is here.

use super::{json, now, unjson, Store};
use anyhow::{bail, Result};
use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

/// A prompt of the pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prompt {
    pub id: i64,
    pub text: String,
    pub tokens: Vec<u32>,
}

/// A candidate pair as acquisition scored it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub prompt_id: i64,
    pub prompt: String,
    pub prompt_tokens: Vec<u32>,
    pub completions: [String; 2],
    pub tokens: [Vec<u32>; 2],
    /// Predictive entropy of the prompt, when the strategy estimated it.
    pub entropy: Option<f64>,
    /// Summed completion log-probs under the policy and the reference.
    pub logp: [f64; 2],
    pub ref_logp: [f64; 2],
    /// The acquisition score the final selection ranked on.
    pub score: f64,
    pub selected: bool,
}

impl Candidate {
    /// DPO implicit reward difference r̂(y0) − r̂(y1) (without β).
    pub fn log_ratio_diff(&self) -> f64 {
        (self.logp[0] - self.ref_logp[0]) - (self.logp[1] - self.ref_logp[1])
    }
}

/// A selected candidate waiting for (or holding) a label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Query {
    pub id: i64,
    pub round: usize,
    pub prompt: String,
    pub completions: [String; 2],
    pub prompt_tokens: Vec<u32>,
    pub tokens: [Vec<u32>; 2],
    pub ref_logp: [f64; 2],
    pub p_hat: f64,
}

/// A labelled query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Label {
    pub query: Query,
    pub preferred: usize,
    pub oracle: String,
}

/// One point of the acquisition histogram: every scored candidate of a round, with its label if it got one.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredPoint {
    pub round: usize,
    pub p_hat: f64,
    pub score: f64,
    pub selected: bool,
    pub preferred: Option<Option<usize>>,
}

/// A round whose training finished.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainedRound {
    pub round: usize,
    pub labels: usize,
    pub train_loss: Option<f64>,
    pub train_seconds: Option<f64>,
}

/// One evaluation judgment.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgment {
    pub prompt_id: i64,
    pub prompt: String,
    pub policy: String,
    pub baseline: String,
    /// 1 = the policy's completion won, 0 = lost, 0.5 = tie / no answer (per `eval.no_answer`).
    pub win: f64,
}

impl Store {
    // ---- prompts ----

    /// Stores the pool (train and eval prompts) in one transaction; refuses if a pool is already stored.
    pub fn insert_prompts(&mut self, train: &[(String, Vec<u32>)], eval: &[(String, Vec<u32>)]) -> Result<()> {
        // IMMEDIATE: it reads then writes, and a deferred transaction would fail at once ("database is locked")
        // if another connection (the labeling server) wrote in between, instead of waiting its turn.
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let n: i64 = tx.query_row("SELECT COUNT(*) FROM prompts", [], |r| r.get(0))?;
        if n > 0 {
            bail!("the store already holds a prompt pool");
        }
        {
            let mut st = tx.prepare("INSERT INTO prompts (split, text, tokens) VALUES (?1, ?2, ?3)")?;
            for (split, list) in [("train", train), ("eval", eval)] {
                for (text, tokens) in list {
                    st.execute(params![split, text, json(tokens)])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn prompts(&self, split: &str) -> Result<Vec<Prompt>> {
        let mut st = self.conn.prepare("SELECT id, text, tokens FROM prompts WHERE split = ?1 ORDER BY id")?;
        let rows = st.query_map([split], |r| {
            Ok(Prompt { id: r.get(0)?, text: r.get(1)?, tokens: unjson(&r.get::<_, String>(2)?)? })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    // ---- acquisition ----

    /// The next unused attempt number of `round`.
    pub fn next_attempt(&self, round: usize) -> Result<usize> {
        let n: Option<i64> =
            self.conn
                .query_row("SELECT MAX(attempt) FROM acquisitions WHERE round = ?1", [round as i64], |r| r.get(0))?;
        Ok(n.map(|n| n as usize + 1).unwrap_or(0))
    }

    /// The `need` of every stored acquisition, in the order they were made: how far the run's pass over the
    /// prompt pool has got (`ActiveConfig::draw_size` of each).
    pub fn acquisition_needs(&self) -> Result<Vec<usize>> {
        let mut st = self.conn.prepare("SELECT need FROM acquisitions ORDER BY round, attempt")?;
        let rows = st.query_map([], |r| r.get::<_, i64>(0))?;
        Ok(rows.collect::<rusqlite::Result<Vec<i64>>>()?.into_iter().map(|n| n as usize).collect())
    }

    /// The prompt of every candidate a round scored, in order (what its acquisitions drew and kept).
    pub fn candidate_prompts(&self, round: usize) -> Result<Vec<i64>> {
        let mut st = self.conn.prepare("SELECT prompt_id FROM candidates WHERE round = ?1 ORDER BY id")?;
        let rows = st.query_map([round as i64], |r| r.get::<_, i64>(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Stores one acquisition (all scored candidates, the selected ones becoming queries) atomically.
    pub fn insert_acquisition(
        &mut self,
        round: usize,
        attempt: usize,
        strategy: &str,
        need: usize,
        seconds: f64,
        cands: &[Candidate],
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO acquisitions (round, attempt, strategy, need, candidates, seconds, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![round as i64, attempt as i64, strategy, need as i64, cands.len() as i64, seconds, now()],
        )?;
        {
            let mut st = tx.prepare(
                "INSERT INTO candidates (round, attempt, prompt_id, completion0, completion1, tokens, entropy,
                 logp0, logp1, ref_logp0, ref_logp1, score, selected)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )?;
            for c in cands {
                // Token ids only for the selected: they are what training needs, the rest is for plots.
                let tokens = c.selected.then(|| json(&(&c.prompt_tokens, &c.tokens)));
                st.execute(params![
                    round as i64,
                    attempt as i64,
                    c.prompt_id,
                    c.completions[0],
                    c.completions[1],
                    tokens,
                    c.entropy,
                    c.logp[0],
                    c.logp[1],
                    c.ref_logp[0],
                    c.ref_logp[1],
                    c.score,
                    c.selected
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub(super) fn query_from_row(r: &rusqlite::Row) -> rusqlite::Result<Query> {
        let (prompt_tokens, tokens): (Vec<u32>, [Vec<u32>; 2]) = unjson(&r.get::<_, String>(5)?)?;
        let (l0, l1, r0, r1): (f64, f64, f64, f64) = (r.get(6)?, r.get(7)?, r.get(8)?, r.get(9)?);
        let d = (l0 - r0) - (l1 - r1);
        let beta: f64 = r.get(10)?;
        Ok(Query {
            id: r.get(0)?,
            round: r.get::<_, i64>(1)? as usize,
            prompt: r.get(2)?,
            completions: [r.get(3)?, r.get(4)?],
            prompt_tokens,
            tokens,
            ref_logp: [r0, r1],
            p_hat: 1.0 / (1.0 + (-beta * d).exp()),
        })
    }

    pub(super) const QUERY_COLS: &'static str =
        "c.id, c.round, p.text, c.completion0, c.completion1, c.tokens, c.logp0, \
        c.logp1, c.ref_logp0, c.ref_logp1";

    pub(super) fn beta(&self) -> f64 {
        self.meta("beta").ok().flatten().and_then(|b| b.parse().ok()).unwrap_or(0.1)
    }

    /// Selected candidates of `round` with no label yet, oldest first.
    pub fn pending_queries(&self, round: Option<usize>) -> Result<Vec<Query>> {
        let sql = format!(
            "SELECT {}, ?1 FROM candidates c JOIN prompts p ON p.id = c.prompt_id
             LEFT JOIN labels l ON l.candidate_id = c.id
             WHERE c.selected = 1 AND l.candidate_id IS NULL AND (?2 IS NULL OR c.round = ?2) ORDER BY c.id",
            Self::QUERY_COLS
        );
        let mut st = self.conn.prepare(&sql)?;
        let rows = st.query_map(params![self.beta(), round.map(|r| r as i64)], Self::query_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Prompts of every candidate selected so far.
    pub fn selected_prompt_ids(&self) -> Result<std::collections::HashSet<i64>> {
        let mut st = self.conn.prepare("SELECT DISTINCT prompt_id FROM candidates WHERE selected = 1")?;
        let rows = st.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Commits one label (`preferred = None`: the oracle gave no preference; the point is dropped). Returns
    /// only after the commit is durable. A query already labelled is refused, so nothing is asked twice.
    pub fn record_label(
        &self,
        query_id: i64,
        preferred: Option<usize>,
        oracle: &str,
        raw: &str,
        annotator: Option<&str>,
    ) -> Result<()> {
        if preferred.is_some_and(|p| p > 1) {
            bail!("label for query {query_id}: preferred must be 0 or 1, got {preferred:?}");
        }
        let selected: Option<bool> = self
            .conn
            .query_row("SELECT selected FROM candidates WHERE id = ?1", [query_id], |r| r.get(0))
            .optional()?;
        match selected {
            None => bail!("no query with id {query_id}"),
            Some(false) => bail!("candidate {query_id} was not selected for labelling"),
            Some(true) => {}
        }
        let n = self.conn.execute(
            "INSERT INTO labels (candidate_id, preferred, oracle, raw, annotator, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(candidate_id) DO NOTHING",
            params![query_id, preferred.map(|p| p as i64), oracle, raw, annotator, now()],
        )?;
        if n == 0 {
            bail!("query {query_id} is already labelled");
        }
        Ok(())
    }

    /// Labels with a preference, of rounds ≤ `round`, in the order they were acquired.
    pub fn labels(&self, up_to_round: usize) -> Result<Vec<Label>> {
        let sql = format!(
            "SELECT {}, ?1, l.preferred, l.oracle FROM candidates c JOIN prompts p ON p.id = c.prompt_id
             JOIN labels l ON l.candidate_id = c.id
             WHERE l.preferred IS NOT NULL AND c.round <= ?2 ORDER BY c.id",
            Self::QUERY_COLS
        );
        let mut st = self.conn.prepare(&sql)?;
        let rows = st.query_map(params![self.beta(), up_to_round as i64], |r| {
            Ok(Label { query: Self::query_from_row(r)?, preferred: r.get::<_, i64>(11)? as usize, oracle: r.get(12)? })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// (labelled with a preference, dropped) counts of rounds ≤ `round`.
    pub fn label_counts(&self, up_to_round: usize) -> Result<(usize, usize)> {
        let (a, d): (i64, i64) = self.conn.query_row(
            "SELECT COALESCE(SUM(l.preferred IS NOT NULL), 0), COALESCE(SUM(l.preferred IS NULL), 0)
             FROM labels l JOIN candidates c ON c.id = l.candidate_id WHERE c.round <= ?1",
            [up_to_round as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok((a as usize, d as usize))
    }

    /// Dropped points of one round.
    pub fn dropped(&self, round: usize) -> Result<usize> {
        let n: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM labels l JOIN candidates c ON c.id = l.candidate_id
             WHERE l.preferred IS NULL AND c.round = ?1",
            [round as i64],
            |r| r.get(0),
        )?;
        Ok(n as usize)
    }

    /// Every scored candidate of a round, with its label if it has one (for the acquisition histograms).
    pub fn scored_points(&self, round: usize) -> Result<Vec<ScoredPoint>> {
        let beta = self.beta();
        let mut st = self.conn.prepare(
            "SELECT c.logp0, c.logp1, c.ref_logp0, c.ref_logp1, c.score, c.selected, l.candidate_id, l.preferred
             FROM candidates c LEFT JOIN labels l ON l.candidate_id = c.id WHERE c.round = ?1 ORDER BY c.id",
        )?;
        let rows = st.query_map([round as i64], |r| {
            let d = (r.get::<_, f64>(0)? - r.get::<_, f64>(2)?) - (r.get::<_, f64>(1)? - r.get::<_, f64>(3)?);
            let labelled: Option<i64> = r.get(6)?;
            let pref: Option<i64> = r.get(7)?;
            Ok(ScoredPoint {
                round,
                p_hat: 1.0 / (1.0 + (-beta * d).exp()),
                score: r.get(4)?,
                selected: r.get(5)?,
                preferred: labelled.map(|_| pref.map(|p| p as usize)),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    // ---- rounds ----

    pub fn round_trained(&self, round: usize) -> Result<bool> {
        Ok(self
            .conn
            .query_row("SELECT COUNT(*) FROM rounds WHERE round = ?1", [round as i64], |r| r.get::<_, i64>(0))?
            > 0)
    }

    /// Records that `round` is trained (again, after a retrain of a round whose policy file was lost).
    pub fn mark_trained(&self, round: usize, target: usize, labels: usize, loss: Option<f64>, secs: f64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO rounds (round, target, labels, train_loss, train_seconds, trained_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(round) DO UPDATE SET target = excluded.target, labels = excluded.labels,
                 train_loss = excluded.train_loss, train_seconds = excluded.train_seconds,
                 trained_at = excluded.trained_at",
            params![round as i64, target as i64, labels as i64, loss, secs, now()],
        )?;
        Ok(())
    }

    /// Every trained round.
    pub fn rounds(&self) -> Result<Vec<TrainedRound>> {
        let mut st = self.conn.prepare("SELECT round, labels, train_loss, train_seconds FROM rounds ORDER BY round")?;
        let rows = st.query_map([], |r| {
            Ok(TrainedRound {
                round: r.get::<_, i64>(0)? as usize,
                labels: r.get::<_, i64>(1)? as usize,
                train_loss: r.get(2)?,
                train_seconds: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Seconds spent acquiring in a round (all attempts).
    pub fn acquisition_seconds(&self, round: usize) -> Result<f64> {
        Ok(self.conn.query_row(
            "SELECT COALESCE(SUM(seconds), 0) FROM acquisitions WHERE round = ?1",
            [round as i64],
            |r| r.get(0),
        )?)
    }

    // ---- evaluation ----

    /// Stores a model's evaluation samples (round 0 = the starting model, the baseline) atomically.
    pub fn insert_eval_samples(&mut self, round: usize, samples: &[(i64, String)]) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare("INSERT INTO eval_samples (round, prompt_id, completion) VALUES (?1, ?2, ?3)")?;
            for (pid, c) in samples {
                st.execute(params![round as i64, pid, c])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Evaluation samples of a round, by prompt id; empty when not generated yet.
    pub fn eval_samples(&self, round: usize) -> Result<Vec<(i64, String)>> {
        let mut st =
            self.conn.prepare("SELECT prompt_id, completion FROM eval_samples WHERE round = ?1 ORDER BY prompt_id")?;
        let rows = st.query_map([round as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn record_judgment(&self, round: usize, prompt_id: i64, win: f64, oracle: &str, raw: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO judgments (round, prompt_id, win, oracle, raw, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![round as i64, prompt_id, win, oracle, raw, now()],
        )?;
        Ok(())
    }

    /// Judgments of a round with the texts compared.
    pub fn judgments(&self, round: usize) -> Result<Vec<Judgment>> {
        let mut st = self.conn.prepare(
            "SELECT j.prompt_id, p.text, s.completion, b.completion, j.win FROM judgments j
             JOIN prompts p ON p.id = j.prompt_id
             JOIN eval_samples s ON s.round = j.round AND s.prompt_id = j.prompt_id
             JOIN eval_samples b ON b.round = 0 AND b.prompt_id = j.prompt_id
             WHERE j.round = ?1 ORDER BY j.prompt_id",
        )?;
        let rows = st.query_map([round as i64], |r| {
            Ok(Judgment {
                prompt_id: r.get(0)?,
                prompt: r.get(1)?,
                policy: r.get(2)?,
                baseline: r.get(3)?,
                win: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}
