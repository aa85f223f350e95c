//! The human-labeling tables of the web app (`crates/serve`): annotators, every answer of every annotator,
//! skips, and the methods that turn a person's answer into the loop's label.
//!
//! A person's answer lands in two places. `annotations` keeps every answer of every annotator (several people
//! may see the same query, to measure agreement); `labels` — what the loop reads — gets one row per query,
//! written from the earliest surviving answer. So the loop never waits for a second opinion, and undoing the
//! answer a label came from hands the label to the next answer, if there is one.

use super::{now, Query, Store};
use anyhow::{bail, Result};
use rusqlite::{params, OptionalExtension};
use serde::Serialize;

/// What the labeling app lets an annotator's answer about a query be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grant {
    /// The query is on the annotator's page: the app handed it to them (a lease, or a second opinion).
    pub shown: bool,
    /// The overlap rule asks for a second opinion on this query.
    pub second_opinion: bool,
}

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

    /// The annotator holding the token with this SHA-256 (hex), if any and not removed.
    pub fn annotator_by_token(&self, token_sha256: &str) -> Result<Option<Annotator>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, name, created_at FROM annotators WHERE token_sha256 = ?1 AND removed_at IS NULL",
                [token_sha256],
                |r| Ok(Annotator { id: r.get(0)?, name: r.get(1)?, created_at: r.get(2)? }),
            )
            .optional()?)
    }

    /// Gives the annotator `name` a new token (by its SHA-256, hex): the old one stops working at once.
    pub fn rotate_annotator_token(&self, name: &str, token_sha256: &str) -> Result<()> {
        let n = self.conn.execute(
            "UPDATE annotators SET token_sha256 = ?2 WHERE name = ?1 AND removed_at IS NULL",
            params![name, token_sha256],
        )?;
        if n == 0 {
            return Err(Refusal::NotFound(format!("no annotator named {name:?} (or they were removed)")).into());
        }
        Ok(())
    }

    /// Removes the annotator `name`: their token stops working at once; their answers and labels stay (the
    /// loop may have trained on them), and so does their name, which is not given to anyone else.
    pub fn remove_annotator(&self, name: &str) -> Result<()> {
        // The token hash is replaced by a value no SHA-256 hex can equal (and unique, as the column must be).
        let n = self.conn.execute(
            "UPDATE annotators SET removed_at = ?2, token_sha256 = 'removed:' || id WHERE name = ?1 AND removed_at IS NULL",
            params![name, now()],
        )?;
        if n == 0 {
            return Err(Refusal::NotFound(format!("no annotator named {name:?} (or they were removed already)")).into());
        }
        Ok(())
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
    /// only when the caller's overlap rule asks for one ([`Grant::second_opinion`]). An answer about a query
    /// that was not shown to this annotator ([`Grant::shown`]) is refused, after the refusals that say why
    /// the query cannot be answered by anyone. Durable before it returns.
    pub fn record_annotation(
        &self,
        query_id: i64,
        annotator: &Annotator,
        preferred: Option<usize>,
        swapped: bool,
        seconds: Option<f64>,
        grant: Grant,
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
            if labelled && !(grant.second_opinion && answers == 1) {
                return Err(Refusal::Conflict(format!("query {query_id} is already labelled")).into());
            }
            if !labelled && trained {
                return Err(Refusal::Conflict(format!(
                    "round {round} is already trained; query {query_id} is no longer asked"
                ))
                .into());
            }
            if !grant.shown {
                return Err(Refusal::Conflict(format!(
                    "query {query_id} is not on your page (it was not shown to you, or is now another \
                     annotator's): ask /api/next for your query"
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
