//! The run store: one SQLite file (WAL mode) holding everything a run has decided or been told — the prompt
//! pool, every scored candidate, the queries sent to the oracle and their labels, finished rounds, and
//! evaluation judgments. It is the run's source of truth: a run killed at any moment resumes from it.
//!
//! Durability rule: a label is committed (`synchronous = FULL`, so it is on disk) before `record_label`
//! returns, and nothing acknowledges a label before that. Each multi-row step (an acquisition, a set of
//! evaluation samples) is one transaction, so a crash leaves it either whole or absent.

use anyhow::{anyhow, bail, Context as _, Result};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

const SCHEMA_VERSION: i64 = 1;

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

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

fn json<T: Serialize>(x: &T) -> String {
    serde_json::to_string(x).expect("serialisable")
}

fn unjson<T: for<'a> Deserialize<'a>>(s: &str) -> rusqlite::Result<T> {
    serde_json::from_str(s).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

fn now() -> String {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{:.3}", d.as_secs_f64())
}

impl Store {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let conn = Connection::open(path).with_context(|| format!("opening the run store {}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(30))?;
        // WAL lets the labeling server read while the loop writes; FULL syncs each commit so an
        // acknowledged label survives power loss, not only a killed process.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let s = Self { conn, path: path.to_path_buf() };
        s.migrate().with_context(|| format!("{}: not an activepref run store", path.display()))?;
        Ok(s)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn migrate(&self) -> Result<()> {
        self.conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS prompts (
                 id INTEGER PRIMARY KEY, split TEXT NOT NULL CHECK (split IN ('train', 'eval')),
                 text TEXT NOT NULL, tokens TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS acquisitions (
                 round INTEGER NOT NULL, attempt INTEGER NOT NULL, strategy TEXT NOT NULL, need INTEGER NOT NULL,
                 candidates INTEGER NOT NULL, seconds REAL NOT NULL, created_at TEXT NOT NULL,
                 PRIMARY KEY (round, attempt));
             CREATE TABLE IF NOT EXISTS candidates (
                 id INTEGER PRIMARY KEY, round INTEGER NOT NULL, attempt INTEGER NOT NULL,
                 prompt_id INTEGER NOT NULL REFERENCES prompts(id),
                 completion0 TEXT NOT NULL, completion1 TEXT NOT NULL, tokens TEXT,
                 entropy REAL, logp0 REAL NOT NULL, logp1 REAL NOT NULL, ref_logp0 REAL NOT NULL,
                 ref_logp1 REAL NOT NULL, score REAL NOT NULL, selected INTEGER NOT NULL,
                 FOREIGN KEY (round, attempt) REFERENCES acquisitions(round, attempt));
             CREATE INDEX IF NOT EXISTS candidates_selected ON candidates(selected, round);
             CREATE TABLE IF NOT EXISTS labels (
                 candidate_id INTEGER PRIMARY KEY REFERENCES candidates(id),
                 preferred INTEGER CHECK (preferred IN (0, 1)), oracle TEXT NOT NULL, raw TEXT NOT NULL,
                 annotator TEXT, created_at TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS rounds (
                 round INTEGER PRIMARY KEY, target INTEGER NOT NULL, labels INTEGER NOT NULL,
                 train_loss REAL, train_seconds REAL, trained_at TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS eval_samples (
                 round INTEGER NOT NULL, prompt_id INTEGER NOT NULL REFERENCES prompts(id), completion TEXT NOT NULL,
                 PRIMARY KEY (round, prompt_id));
             CREATE TABLE IF NOT EXISTS judgments (
                 round INTEGER NOT NULL, prompt_id INTEGER NOT NULL, win REAL NOT NULL, oracle TEXT NOT NULL,
                 raw TEXT NOT NULL, created_at TEXT NOT NULL, PRIMARY KEY (round, prompt_id),
                 FOREIGN KEY (round, prompt_id) REFERENCES eval_samples(round, prompt_id));",
        )?;
        // Additive tables of the human labeling app (no schema version bump: older stores gain them on open).
        self.conn.execute_batch(LABELING_SCHEMA)?;
        match self.meta("schema_version")? {
            None => self.set_meta("schema_version", &SCHEMA_VERSION.to_string())?,
            Some(v) if v == SCHEMA_VERSION.to_string() => {}
            Some(v) => bail!("store schema version {v}, this activepref understands {SCHEMA_VERSION}"),
        }
        Ok(())
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self.conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()?)
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

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

    fn query_from_row(r: &rusqlite::Row) -> rusqlite::Result<Query> {
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

    const QUERY_COLS: &'static str = "c.id, c.round, p.text, c.completion0, c.completion1, c.tokens, c.logp0, \
        c.logp1, c.ref_logp0, c.ref_logp1";

    fn beta(&self) -> f64 {
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

    pub fn mark_trained(&self, round: usize, target: usize, labels: usize, loss: Option<f64>, secs: f64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO rounds (round, target, labels, train_loss, train_seconds, trained_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
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

    /// Checks the store belongs to this configuration (the config text is stored at creation).
    pub fn check_config(&self, config_toml: &str) -> Result<()> {
        match self.meta("config")? {
            None => self.set_meta("config", config_toml),
            Some(c) if c == config_toml => Ok(()),
            Some(c) => {
                let diff: Vec<String> = c
                    .lines()
                    .zip(config_toml.lines())
                    .filter(|(a, b)| a != b)
                    .take(3)
                    .map(|(a, b)| format!("  stored: {a}\n  now:    {b}"))
                    .collect();
                Err(anyhow!(
                    "{} was made with another configuration; use a new --run-dir (or the same config) to go on.\n{}",
                    self.path.display(),
                    diff.join("\n")
                ))
            }
        }
    }
}

// ---- human labeling (the web app of `crates/serve`) ----
//
// A person's answer lands in two places. `annotations` keeps every answer of every annotator (several people
// may see the same query, to measure agreement); `labels` — what the loop reads — gets one row per query,
// written from the earliest surviving answer. So the loop never waits for a second opinion, and undoing the
// answer a label came from hands the label to the next answer, if there is one.

const LABELING_SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS annotators (
        id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, token_sha256 TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS annotations (
        candidate_id INTEGER NOT NULL REFERENCES candidates(id),
        annotator_id INTEGER NOT NULL REFERENCES annotators(id),
        choice TEXT NOT NULL CHECK (choice IN ('0', '1', 'tie')), swapped INTEGER NOT NULL, seconds REAL,
        created_at TEXT NOT NULL, PRIMARY KEY (candidate_id, annotator_id));
    CREATE INDEX IF NOT EXISTS annotations_by_annotator ON annotations(annotator_id);
    CREATE TABLE IF NOT EXISTS skips (
        candidate_id INTEGER NOT NULL REFERENCES candidates(id),
        annotator_id INTEGER NOT NULL REFERENCES annotators(id),
        created_at TEXT NOT NULL, PRIMARY KEY (candidate_id, annotator_id));";

/// A person who labels through the web app. The store keeps only the SHA-256 of their token.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Annotator {
    pub id: i64,
    pub name: String,
    pub created_at: String,
}

/// One annotator's answer about one query.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Annotation {
    pub candidate_id: i64,
    pub round: usize,
    pub annotator_id: i64,
    /// In the store's order (0 = `completion0`, as `labels.preferred`); `None` = a tie.
    pub preferred: Option<usize>,
    /// Whether the page showed `completion1` on the left.
    pub swapped: bool,
    /// Seconds from the page showing the pair to the answer, when the server knew.
    pub seconds: Option<f64>,
    pub created_at: String,
}

/// A query an annotator may be shown.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenQuery {
    pub id: i64,
    pub round: usize,
    /// This annotator skipped it before (such queries come last).
    pub skipped: bool,
}

/// Label progress of a round that has queries.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoundProgress {
    pub round: usize,
    /// Queries selected in this round (every attempt).
    pub selected: usize,
    /// Labelled with a preference.
    pub labelled: usize,
    /// Labelled with no preference (ties, non-answers): dropped and re-acquired by the loop.
    pub dropped: usize,
    /// Waiting for a label.
    pub pending: usize,
    pub trained: bool,
}

/// A labeling write the store refused because of the run's state, not because of a fault: the web app
/// answers these with 404 / 409 and the message, and everything else with 500.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// The query or annotator does not exist (or there is nothing to undo).
    NotFound(String),
    /// The write conflicts with what is stored (already answered, round trained, name taken).
    Conflict(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NotFound(m) | Refusal::Conflict(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Refusal {}

/// What [`Store::record_annotation`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct AnnotationOutcome {
    pub round: usize,
    /// The answer became the query's label (it was the first); otherwise it is a second opinion only.
    pub wrote_label: bool,
}

/// What [`Store::undo_last_annotation`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct Undone {
    pub candidate_id: i64,
    pub round: usize,
    /// The query's label came from the undone answer and was deleted (or handed over, below).
    pub label_removed: bool,
    /// The annotator whose answer is now the query's label, when another answer was there.
    pub label_now_from: Option<String>,
}

/// The `raw` text of a label written from a person's answer: what they pressed, as they saw it.
fn human_raw(preferred: Option<usize>, swapped: bool) -> String {
    match preferred {
        None => "tie".into(),
        Some(p) => {
            let on_screen = if (p == 1) != swapped { "B" } else { "A" };
            format!("{on_screen} on screen ({})", if swapped { "order swapped" } else { "order kept" })
        }
    }
}

fn choice_text(preferred: Option<usize>) -> &'static str {
    match preferred {
        Some(0) => "0",
        Some(_) => "1",
        None => "tie",
    }
}

fn choice_value(s: &str) -> Option<usize> {
    match s {
        "0" => Some(0),
        "1" => Some(1),
        _ => None,
    }
}

impl Store {
    /// Runs `f` in a transaction that takes the write lock at once. In WAL mode a deferred transaction that
    /// reads and then writes fails (SQLITE_BUSY, not retried by the busy timeout) when another connection
    /// committed in between; the labeling server writes from many connections while the loop writes too.
    fn write_tx<T>(&self, f: impl FnOnce(&Self) -> Result<T>) -> Result<T> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        match f(self) {
            Ok(x) => {
                self.conn.execute_batch("COMMIT")?;
                Ok(x)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Registers an annotator by the SHA-256 (hex) of their token. Refuses a name already taken.
    pub fn add_annotator(&self, name: &str, token_sha256: &str) -> Result<Annotator> {
        let created_at = now();
        let n = self.conn.execute(
            "INSERT INTO annotators (name, token_sha256, created_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            params![name, token_sha256, created_at],
        )?;
        if n == 0 {
            return Err(Refusal::Conflict(format!("an annotator named {name:?} already exists")).into());
        }
        Ok(Annotator { id: self.conn.last_insert_rowid(), name: name.to_string(), created_at })
    }

    /// The annotator holding the token with this SHA-256 (hex), if any.
    pub fn annotator_by_token(&self, token_sha256: &str) -> Result<Option<Annotator>> {
        Ok(self
            .conn
            .query_row("SELECT id, name, created_at FROM annotators WHERE token_sha256 = ?1", [token_sha256], |r| {
                Ok(Annotator { id: r.get(0)?, name: r.get(1)?, created_at: r.get(2)? })
            })
            .optional()?)
    }

    /// Every annotator, in the order they were added.
    pub fn annotators(&self) -> Result<Vec<Annotator>> {
        let mut st = self.conn.prepare("SELECT id, name, created_at FROM annotators ORDER BY id")?;
        let rows = st.query_map([], |r| Ok(Annotator { id: r.get(0)?, name: r.get(1)?, created_at: r.get(2)? }))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every answer of every annotator, oldest first.
    pub fn annotations(&self) -> Result<Vec<Annotation>> {
        let mut st = self.conn.prepare(
            "SELECT a.candidate_id, c.round, a.annotator_id, a.choice, a.swapped, a.seconds, a.created_at
             FROM annotations a JOIN candidates c ON c.id = a.candidate_id ORDER BY a.rowid",
        )?;
        let rows = st.query_map([], |r| {
            Ok(Annotation {
                candidate_id: r.get(0)?,
                round: r.get::<_, i64>(1)? as usize,
                annotator_id: r.get(2)?,
                preferred: choice_value(&r.get::<_, String>(3)?),
                swapped: r.get(4)?,
                seconds: r.get(5)?,
                created_at: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Skipped queries per annotator id.
    pub fn skip_counts(&self) -> Result<std::collections::HashMap<i64, usize>> {
        let mut st = self.conn.prepare("SELECT annotator_id, COUNT(*) FROM skips GROUP BY annotator_id")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as usize)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// One selected query by id (with its texts), whatever its state.
    pub fn query(&self, id: i64) -> Result<Option<Query>> {
        let sql = format!(
            "SELECT {}, ?1 FROM candidates c JOIN prompts p ON p.id = c.prompt_id WHERE c.selected = 1 AND c.id = ?2",
            Self::QUERY_COLS
        );
        Ok(self.conn.query_row(&sql, params![self.beta(), id], Self::query_from_row).optional()?)
    }

    /// Queries `annotator_id` may label: selected, unlabelled, in a round not trained yet; oldest first, the
    /// ones they skipped last.
    pub fn open_queries(&self, annotator_id: i64) -> Result<Vec<OpenQuery>> {
        self.open_query_rows(
            "SELECT c.id, c.round, s.created_at IS NOT NULL FROM candidates c
             LEFT JOIN labels l ON l.candidate_id = c.id
             LEFT JOIN skips s ON s.candidate_id = c.id AND s.annotator_id = ?1
             WHERE c.selected = 1 AND l.candidate_id IS NULL AND c.round NOT IN (SELECT round FROM rounds)
             ORDER BY s.created_at IS NOT NULL, s.created_at, c.id",
            annotator_id,
        )
    }

    /// Queries answered by exactly one other annotator (candidates for a second opinion); oldest first, the
    /// ones `annotator_id` skipped last. Which of them get one is the caller's rule.
    pub fn second_opinion_queries(&self, annotator_id: i64) -> Result<Vec<OpenQuery>> {
        self.open_query_rows(
            "SELECT a.candidate_id, c.round, s.created_at IS NOT NULL FROM annotations a
             JOIN candidates c ON c.id = a.candidate_id
             LEFT JOIN skips s ON s.candidate_id = a.candidate_id AND s.annotator_id = ?1
             GROUP BY a.candidate_id HAVING COUNT(*) = 1 AND SUM(a.annotator_id = ?1) = 0
             ORDER BY s.created_at IS NOT NULL, s.created_at, a.candidate_id",
            annotator_id,
        )
    }

    /// Runs `sql` (one `?1`: the annotator) whose rows are (candidate id, round, skipped by them).
    fn open_query_rows(&self, sql: &str, annotator_id: i64) -> Result<Vec<OpenQuery>> {
        let mut st = self.conn.prepare(sql)?;
        let rows = st.query_map([annotator_id], |r| {
            Ok(OpenQuery { id: r.get(0)?, round: r.get::<_, i64>(1)? as usize, skipped: r.get(2)? })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Label progress of every round that has queries.
    pub fn round_progress(&self) -> Result<Vec<RoundProgress>> {
        let mut st = self.conn.prepare(
            "SELECT c.round, COUNT(*), COALESCE(SUM(l.candidate_id IS NOT NULL AND l.preferred IS NOT NULL), 0),
                    COALESCE(SUM(l.candidate_id IS NOT NULL AND l.preferred IS NULL), 0),
                    COALESCE(SUM(l.candidate_id IS NULL), 0), c.round IN (SELECT round FROM rounds)
             FROM candidates c LEFT JOIN labels l ON l.candidate_id = c.id
             WHERE c.selected = 1 GROUP BY c.round ORDER BY c.round",
        )?;
        let rows = st.query_map([], |r| {
            Ok(RoundProgress {
                round: r.get::<_, i64>(0)? as usize,
                selected: r.get::<_, i64>(1)? as usize,
                labelled: r.get::<_, i64>(2)? as usize,
                dropped: r.get::<_, i64>(3)? as usize,
                pending: r.get::<_, i64>(4)? as usize,
                trained: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Commits one annotator's answer about a query (`preferred` in the store's order; `None` = a tie) and,
    /// if nobody answered it before, the query's label (a tie becomes a label with no preference, which the
    /// loop drops and re-acquires). A query already labelled takes the answer only as a second opinion, and
    /// only when `allow_second_opinion` (the caller's overlap rule) says so. Durable before it returns.
    pub fn record_annotation(
        &self,
        query_id: i64,
        annotator: &Annotator,
        preferred: Option<usize>,
        swapped: bool,
        seconds: Option<f64>,
        allow_second_opinion: bool,
    ) -> Result<AnnotationOutcome> {
        if preferred.is_some_and(|p| p > 1) {
            bail!("answer about query {query_id}: preferred must be 0 or 1, got {preferred:?}");
        }
        self.write_tx(|s| {
            let row: Option<(bool, i64, bool, bool)> = s
                .conn
                .query_row(
                    "SELECT c.selected, c.round, c.round IN (SELECT round FROM rounds),
                            EXISTS (SELECT 1 FROM labels l WHERE l.candidate_id = c.id)
                     FROM candidates c WHERE c.id = ?1",
                    [query_id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            let (round, trained, labelled) = match row {
                Some((true, round, trained, labelled)) => (round as usize, trained, labelled),
                _ => return Err(Refusal::NotFound(format!("no query with id {query_id}")).into()),
            };
            let (mine, answers): (i64, i64) = s.conn.query_row(
                "SELECT COALESCE(SUM(annotator_id = ?2), 0), COUNT(*) FROM annotations WHERE candidate_id = ?1",
                params![query_id, annotator.id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            if mine > 0 {
                return Err(Refusal::Conflict(format!("you already answered query {query_id}")).into());
            }
            if labelled && !(allow_second_opinion && answers == 1) {
                return Err(Refusal::Conflict(format!("query {query_id} is already labelled")).into());
            }
            if !labelled && trained {
                return Err(Refusal::Conflict(format!(
                    "round {round} is already trained; query {query_id} is no longer asked"
                ))
                .into());
            }
            s.conn.execute(
                "INSERT INTO annotations (candidate_id, annotator_id, choice, swapped, seconds, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![query_id, annotator.id, choice_text(preferred), swapped, seconds, now()],
            )?;
            if !labelled {
                s.record_label(query_id, preferred, "human", &human_raw(preferred, swapped), Some(&annotator.name))?;
            }
            Ok(AnnotationOutcome { round, wrote_label: !labelled })
        })
    }

    /// Deletes `annotator_id`'s most recent answer. If the query's label came from it, the label goes too
    /// (the query is pending again) or passes to the other annotator's answer. Refused once the round is
    /// trained, and — when the answer is the label — once the round holds its cumulative label target
    /// (`targets[round - 1]`, if known): the loop may already be training on it, so it is final.
    pub fn undo_last_annotation(&self, annotator_id: i64, targets: &[usize]) -> Result<Undone> {
        self.write_tx(|s| {
            let last: Option<(i64, i64, i64, bool)> = s
                .conn
                .query_row(
                    "SELECT a.rowid, a.candidate_id, c.round, c.round IN (SELECT round FROM rounds)
                     FROM annotations a JOIN candidates c ON c.id = a.candidate_id
                     WHERE a.annotator_id = ?1 ORDER BY a.rowid DESC LIMIT 1",
                    [annotator_id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            let Some((rowid, cid, round, trained)) = last else {
                return Err(Refusal::NotFound("nothing to undo: you have no labels".into()).into());
            };
            let round = round as usize;
            if trained {
                return Err(Refusal::Conflict(format!(
                    "round {round} is already trained on your last label (query {cid}); it is final"
                ))
                .into());
            }
            let earlier: i64 = s.conn.query_row(
                "SELECT COUNT(*) FROM annotations WHERE candidate_id = ?1 AND rowid < ?2",
                params![cid, rowid],
                |r| r.get(0),
            )?;
            let is_label = earlier == 0
                && s.conn
                    .query_row("SELECT COUNT(*) FROM labels WHERE candidate_id = ?1", [cid], |r| r.get::<_, i64>(0))?
                    > 0;
            let mut label_now_from = None;
            if is_label {
                let (have, _) = s.label_counts(round)?;
                if let Some(&target) = targets.get(round - 1) {
                    if have >= target {
                        return Err(Refusal::Conflict(format!(
                            "round {round} already has its {target} labels, so the loop may be training on them; \
                             your last label (query {cid}) is final"
                        ))
                        .into());
                    }
                }
                s.conn.execute("DELETE FROM labels WHERE candidate_id = ?1", [cid])?;
            }
            s.conn.execute("DELETE FROM annotations WHERE rowid = ?1", [rowid])?;
            if is_label {
                let next: Option<(String, bool, String)> = s
                    .conn
                    .query_row(
                        "SELECT a.choice, a.swapped, n.name FROM annotations a
                         JOIN annotators n ON n.id = a.annotator_id
                         WHERE a.candidate_id = ?1 ORDER BY a.rowid LIMIT 1",
                        [cid],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .optional()?;
                if let Some((choice, swapped, name)) = next {
                    let p = choice_value(&choice);
                    s.record_label(cid, p, "human", &human_raw(p, swapped), Some(&name))?;
                    label_now_from = Some(name);
                }
            }
            Ok(Undone { candidate_id: cid, round, label_removed: is_label, label_now_from })
        })
    }

    /// Records that an annotator skipped a query (nothing else changes: it stays pending for the others, and
    /// comes back to them after everything they have not skipped).
    pub fn record_skip(&self, query_id: i64, annotator_id: i64) -> Result<()> {
        let selected: Option<bool> = self
            .conn
            .query_row("SELECT selected FROM candidates WHERE id = ?1", [query_id], |r| r.get(0))
            .optional()?;
        if selected != Some(true) {
            return Err(Refusal::NotFound(format!("no query with id {query_id}")).into());
        }
        self.conn.execute(
            "INSERT INTO skips (candidate_id, annotator_id, created_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(candidate_id, annotator_id) DO UPDATE SET created_at = excluded.created_at",
            params![query_id, annotator_id, now()],
        )?;
        Ok(())
    }
}
