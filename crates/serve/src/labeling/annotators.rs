//! Annotators: their tokens (shown once; the store keeps only the SHA-256), names, registration, and the
//! per-annotator statistics and agreement that the dashboard and `activepref annotators list` report.

use super::open_run_store;
use super::stats::{cohen_kappa, median, Agreement};
use anyhow::{bail, Result};
use apl::store::{Annotator, Store};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;

/// A new annotator token: 32 hex characters (128 random bits). Shown once; only [`hash_token`] is stored.
pub fn new_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// SHA-256 (hex) of a token, as the store keeps it.
pub fn hash_token(token: &str) -> String {
    Sha256::digest(token.trim().as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks an annotator name: what the dashboard and `labels.annotator` show.
pub fn validate_name(name: &str) -> Result<()> {
    if name.trim().is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        bail!("annotator name {name:?}: use 1 to 64 printable characters");
    }
    if name.trim() != name {
        bail!("annotator name {name:?}: no leading or trailing spaces");
    }
    Ok(())
}

/// Registers an annotator in the run store at `run_dir` and returns their token (the only time it exists
/// in clear).
pub fn add_annotator(run_dir: &Path, name: &str) -> Result<(Annotator, String)> {
    validate_name(name)?;
    let store = open_run_store(run_dir)?;
    let token = new_token();
    let a = store.add_annotator(name, &hash_token(&token))?;
    Ok((a, token))
}

/// Gives the annotator `name` of the run at `run_dir` a new token and returns it (the old one stops working).
pub fn rotate_token(run_dir: &Path, name: &str) -> Result<String> {
    let store = open_run_store(run_dir)?;
    let token = new_token();
    store.rotate_annotator_token(name, &hash_token(&token))?;
    Ok(token)
}

/// Revokes the annotator `name`'s access to the run at `run_dir`; their answers stay.
pub fn remove_annotator(run_dir: &Path, name: &str) -> Result<()> {
    open_run_store(run_dir)?.remove_annotator(name)
}

/// Per-annotator statistics, as `/api/stats` and `activepref annotators list` report them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnnotatorStats {
    pub name: String,
    /// Answers given (labels and second opinions, ties included).
    pub answers: usize,
    /// Answers that became the query's label (the first answer about it).
    pub labels: usize,
    pub ties: usize,
    pub skips: usize,
    /// Median seconds from the page showing a pair to the answer.
    pub median_seconds: Option<f64>,
    pub last_answer_at: Option<String>,
    pub created_at: String,
}

/// Statistics of every annotator and the agreement on queries answered twice.
pub fn annotator_stats(store: &Store) -> Result<(Vec<AnnotatorStats>, Agreement)> {
    let annotators = store.annotators()?;
    let answers = store.annotations()?;
    let skips = store.skip_counts()?;
    // Answers come oldest first, so the first answer about a query is the one its label came from.
    let mut by_query: HashMap<i64, Vec<usize>> = HashMap::new();
    for (i, a) in answers.iter().enumerate() {
        by_query.entry(a.candidate_id).or_default().push(i);
    }
    let mut out = Vec::with_capacity(annotators.len());
    for who in &annotators {
        let mine: Vec<usize> = (0..answers.len()).filter(|&i| answers[i].annotator_id == who.id).collect();
        let mut secs: Vec<f64> = mine.iter().filter_map(|&i| answers[i].seconds).collect();
        out.push(AnnotatorStats {
            name: who.name.clone(),
            answers: mine.len(),
            labels: mine.iter().filter(|&&i| by_query[&answers[i].candidate_id][0] == i).count(),
            ties: mine.iter().filter(|&&i| answers[i].preferred.is_none()).count(),
            skips: skips.get(&who.id).copied().unwrap_or(0),
            median_seconds: median(&mut secs),
            last_answer_at: mine.last().map(|&i| answers[i].created_at.clone()),
            created_at: who.created_at.clone(),
        });
    }
    let mut ids: Vec<&i64> = by_query.keys().collect();
    ids.sort();
    let pairs: Vec<(Option<usize>, Option<usize>)> = ids
        .into_iter()
        .filter_map(|id| match by_query[id].as_slice() {
            [a, b, ..] => Some((answers[*a].preferred, answers[*b].preferred)),
            _ => None,
        })
        .collect();
    Ok((out, cohen_kappa(&pairs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_32_hex_and_hashes_are_sha256() {
        let t = new_token();
        assert_eq!(t.len(), 32);
        assert!(t.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(t, new_token());
        // echo -n abc | sha256sum
        assert_eq!(hash_token("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("alice").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name(" bob").is_err());
        assert!(validate_name("a\nb").is_err());
    }
}
