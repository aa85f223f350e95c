//! The run store: one SQLite file (WAL mode) holding everything a run has decided or been told — the prompt
//! pool, every scored candidate, the queries sent to the oracle and their labels, finished rounds, and
//! evaluation judgments ([`run`]), and the human-labeling app's annotators and answers ([`labeling`]). It is the
//! run's source of truth: a run killed at any moment resumes from it.
//!
//! Durability rule: a label is committed (`synchronous = FULL`, so it is on disk) before `record_label`
//! returns, and nothing acknowledges a label before that. Each multi-row step (an acquisition, a set of
//! evaluation samples) is one transaction, so a crash leaves it either whole or absent.
//!
//! Schema changes go through one mechanism, [`MIGRATIONS`]: the store records its version (`meta.schema_version`)
//! and opening it applies, in order and each in its own transaction, every migration it has not seen. A
//! migration only adds (tables, columns, indexes), so a store written by any earlier release opens, keeps all
//! it holds, and carries on; a store from a newer release is refused rather than misread.

mod labeling;
mod run;

pub use labeling::{Annotation, AnnotationOutcome, Annotator, Grant, OpenQuery, Refusal, RoundProgress, Undone};
pub use run::{Candidate, Judgment, Label, Prompt, Query, ScoredPoint, TrainedRound};

use anyhow::{anyhow, bail, Context as _, Result};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The schema, as the migrations that build it: `MIGRATIONS[i]` takes a store from version `i` to `i + 1`.
/// Append to this list (additive changes only); never edit an entry a release has shipped. The first two are
/// idempotent (`IF NOT EXISTS`) because version 1 stores of the first releases may already hold the labeling
/// tables, which they gained on open without a version change; later ones run exactly once.
pub const MIGRATIONS: &[&str] = &[
    // 1: the loop's tables.
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
    // 2: the human labeling app's tables (annotators, every answer, skips).
    "
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
        created_at TEXT NOT NULL, PRIMARY KEY (candidate_id, annotator_id));",
    // 3: annotators can be removed (their access revoked; their answers stay).
    "ALTER TABLE annotators ADD COLUMN removed_at TEXT;",
];

/// The version this build writes and understands: the number of migrations.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Meta key: the name of the run's oracle, as the report shows it (written when the loop opens the run).
pub const ORACLE_NAME: &str = "oracle_name";
/// Meta key: a fact about the oracle for the report (e.g. the sentiment model's held-out accuracy).
pub const ORACLE_NOTE: &str = "oracle_note";

pub struct Store {
    conn: Connection,
    path: PathBuf,
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
    /// Opens (creating if needed) the store at `path`, bringing an older store's schema up to date.
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

    /// The store's schema version (0 for a new file).
    pub fn schema_version(&self) -> Result<i64> {
        let has_meta: bool = self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta')",
            [],
            |r| r.get(0),
        )?;
        if !has_meta {
            return Ok(0);
        }
        match self.meta("schema_version")? {
            None => Ok(0),
            Some(v) => v.parse().map_err(|_| anyhow!("schema_version {v:?} is not a number")),
        }
    }

    /// Applies the migrations this store has not seen, each with its version bump in one transaction
    /// (several processes may open the same store at once: the write lock makes each migration run once).
    fn migrate(&self) -> Result<()> {
        let v = self.schema_version()?;
        if v > SCHEMA_VERSION {
            bail!(
                "store schema version {v}, this activepref understands up to {SCHEMA_VERSION}: use a newer activepref"
            );
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(v as usize) {
            self.write_tx(|s| {
                // Another process may have migrated since we looked.
                if s.schema_version()? > i as i64 {
                    return Ok(());
                }
                s.conn.execute_batch(sql)?;
                s.set_meta("schema_version", &(i + 1).to_string())
            })?;
        }
        Ok(())
    }

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
