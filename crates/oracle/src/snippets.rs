//! The human-rated sentence corpora shipped in vaderSentiment's source archive (Hutto & Gilbert, ICWSM 2014).
//!
//! They exist here for two reasons: the movie-review snippets are the default job's prompts (their openings get
//! continued by the policy), and their human ratings are what the [`crate::sentiment`] oracle is fitted on and
//! what both sentiment oracles are measured against.
//!
//! File format (`*_GroundTruth.txt`): one snippet per line, `ID<TAB>MEAN_RATING<TAB>TEXT`, CRLF line endings;
//! the rating is the mean of about 20 raters on a -4..+4 scale; a double quote is written as two single quotes
//! (`''`), which [`read`] turns back into `"`. The files in vaderSentiment 3.3.2 are valid UTF-8, but a copy
//! re-saved in another encoding (Latin-1, say) should not fail a whole run over one accented name, so a line
//! that is not valid UTF-8 is decoded lossily: its bad bytes become U+FFFD.

use anyhow::{anyhow, bail, Context as _, Result};
use sha2::{Digest, Sha256};
use std::path::Path;

/// Where `activepref assets fetch` puts the movie-review snippets, relative to the assets folder.
pub const MOVIE_REVIEWS: &str = "vader/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt";

/// Ratings are means on the corpus' -4..+4 scale; anything outside means a different file or a broken line.
const RATING_RANGE: std::ops::RangeInclusive<f64> = -4.0..=4.0;

/// One human-rated sentence.
#[derive(Clone, Debug, PartialEq)]
pub struct Snippet {
    pub id: u64,
    /// Mean human rating, -4 (most negative) to +4 (most positive).
    pub rating: f64,
    pub text: String,
}

/// Reads a `*_GroundTruth.txt` file. Errors name the file, the 1-based line and what was expected there.
pub fn read(path: &Path) -> Result<Vec<Snippet>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading snippet file {}", path.display()))?;
    parse(&bytes, &path.display().to_string())
}

/// Parses the contents of a snippet file; `source` names it in errors (a path, usually).
pub fn parse(bytes: &[u8], source: &str) -> Result<Vec<Snippet>> {
    // A UTF-8 byte order mark would otherwise end up in the first ID and fail its parse.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut out = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let n = i + 1;
        let line = String::from_utf8_lossy(raw.strip_suffix(b"\r").unwrap_or(raw));
        if line.trim().is_empty() {
            continue; // the final newline, or stray blank lines: nothing to read
        }
        out.push(parse_line(&line).map_err(|e| anyhow!("{source}:{n}: {e}"))?);
    }
    if out.is_empty() {
        bail!("{source}: no snippets (expected lines of ID<TAB>MEAN_RATING<TAB>TEXT)");
    }
    Ok(out)
}

fn parse_line(line: &str) -> Result<Snippet> {
    let fields: Vec<&str> = line.splitn(3, '\t').collect();
    if fields.len() != 3 {
        bail!("expected 3 TAB-separated fields ID<TAB>MEAN_RATING<TAB>TEXT, found {}", fields.len());
    }
    let id = fields[0]
        .trim()
        .parse::<u64>()
        .map_err(|_| anyhow!("expected a non-negative integer ID in field 1, found {:?}", fields[0]))?;
    let rating = fields[1]
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|r| RATING_RANGE.contains(r))
        .ok_or_else(|| anyhow!("expected a mean rating between -4 and 4 in field 2, found {:?}", fields[1]))?;
    let text = fields[2].trim().replace("''", "\"");
    if text.is_empty() {
        bail!("expected text in field 3, found nothing");
    }
    Ok(Snippet { id, rating, text })
}

/// Splits snippets into (train, held-out), each in input order. A snippet is held out when a hash of
/// (`seed`, its id) falls below `held_out_fraction`, so the split depends on neither the file's order nor
/// the other snippets: the same id lands on the same side in every run with that seed, and adding lines to
/// the corpus moves nothing already there. The held-out share is therefore only approximately the fraction.
///
/// Panics if `held_out_fraction` is outside [0, 1] (a caller's bug, not a data problem).
pub fn split(snippets: &[Snippet], held_out_fraction: f64, seed: u64) -> (Vec<Snippet>, Vec<Snippet>) {
    assert!((0.0..=1.0).contains(&held_out_fraction), "held_out_fraction must be in [0, 1], got {held_out_fraction}");
    snippets.iter().cloned().partition(|s| !is_held_out(s.id, held_out_fraction, seed))
}

/// SHA-256 rather than `std`'s hasher: its output is fixed across Rust versions and platforms, so a split
/// recorded in a run's notes stays reproducible.
fn is_held_out(id: u64, fraction: f64, seed: u64) -> bool {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(id.to_le_bytes());
    let digest = h.finalize();
    let x = u64::from_le_bytes(digest[..8].try_into().expect("SHA-256 has 32 bytes"));
    // Uniform in [0, 1): the top 53 bits give an exact f64.
    ((x >> 11) as f64 / (1u64 << 53) as f64) < fraction
}
