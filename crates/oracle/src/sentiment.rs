//! A sentiment model fitted here on the human ratings of the movie snippets: the default job's oracle.
//!
//! Why it exists: the default job asks for more positive continuations of movie-review openings, and its
//! oracle has to say which of two continuations is more positive. VADER (see [`crate::vader`]) agrees with
//! the human raters on the sign of only about 0.65 of the snippets it scores; a model fitted on the same
//! raters' labels gets about 0.8 on held-out snippets, trains in well under a second and needs nothing but
//! the corpus `activepref assets fetch` already downloads.
//!
//! The model is multinomial Naive Bayes over unigrams and adjacent-token bigrams, with add-α (Laplace at
//! α = 1) smoothing. Logistic regression on the same features (scikit-learn, three 20% splits) was not
//! clearly better: plain -0.01..+0.003, on NB-scaled features (NBSVM-style) +0.004..+0.015. So the
//! closed-form model stays: fitting is counting, there is no optimiser to tune, and a fit is exactly
//! reproducible. Binary (presence) counts and Das & Chen-style negation marking did not help either.
//!
//! Labels are the sign of the mean rating. Snippets whose mean rating is within ±`min_abs_rating` of zero
//! (0.5 by default, on the -4..+4 scale; about 5% of the movie snippets) are left out of training: a mean of
//! ~20 raters that close to neutral is a weak label. (Dropping them moved held-out accuracy by only +0.002 on
//! average over five splits, so this is a judgement more than a tuned gain.) Accuracy is still measured on
//! every snippet with a non-zero rating.
//!
//! Measured (`tests/scorers.rs`, held-out 20% by [`crate::snippets::split`] with seed 0: 8,521 train, 2,084
//! held out of which 2,075 have a non-zero rating): sign accuracy 0.804; VADER on the same snippets 0.554,
//! or 0.641 counting only the 1,802 it gives a non-zero score.
//!
//! Tokens: the lowercased text split into runs of letters/digits (keeping inner apostrophes, so "don't"
//! and "film's" are one token) plus "!" and "?" as tokens of their own; other punctuation only separates.

use crate::snippets::Snippet;
use crate::Scorer;
use anyhow::{anyhow, bail, Context as _, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Written into saved models, so that loading another JSON file fails with a clear message.
const FORMAT: &str = "activepref-sentiment-nb";
const VERSION: u32 = 1;

/// Fitting settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FitParams {
    /// Additive smoothing of the feature counts (1 = Laplace). Must be > 0: a feature seen in only one
    /// class would otherwise decide any text containing it on its own (an infinite log-odds).
    pub alpha: f64,
    /// Training uses only snippets with `|rating| >= min_abs_rating` (and never a rating of exactly 0).
    pub min_abs_rating: f64,
}

impl Default for FitParams {
    fn default() -> Self {
        Self { alpha: 1.0, min_abs_rating: 0.5 }
    }
}

/// Naive Bayes over unigrams and bigrams; see the module docs.
#[derive(Clone, Debug)]
pub struct SentimentModel {
    params: FitParams,
    /// Training documents per class, `[negative, positive]`.
    docs: [u64; 2],
    /// Feature occurrences per class, `[negative, positive]`. Saved as is: the weights are recomputed from
    /// these integers on load, so a loaded model scores bit-for-bit like the fitted one.
    counts: BTreeMap<String, [u64; 2]>,
    /// ln P(positive) - ln P(negative).
    prior: f64,
    /// Per feature: ln P(f | positive) - ln P(f | negative), smoothed.
    weights: HashMap<String, f64>,
}

/// The saved form of a model.
#[derive(Serialize, Deserialize)]
struct Saved {
    format: String,
    version: u32,
    params: FitParams,
    docs: [u64; 2],
    counts: BTreeMap<String, [u64; 2]>,
}

impl SentimentModel {
    /// Fits on the snippets' rating signs. Fails when either class is left without a snippet (nothing to
    /// compare against) or `alpha` is not positive.
    pub fn fit(train: &[Snippet], params: FitParams) -> Result<Self> {
        let mut docs = [0u64; 2];
        let mut counts: BTreeMap<String, [u64; 2]> = BTreeMap::new();
        for s in train {
            let Some(class) = label(s.rating, params.min_abs_rating) else { continue };
            docs[class] += 1;
            for f in features(&s.text) {
                counts.entry(f).or_default()[class] += 1;
            }
        }
        Self::from_counts(params, docs, counts)
    }

    fn from_counts(params: FitParams, docs: [u64; 2], counts: BTreeMap<String, [u64; 2]>) -> Result<Self> {
        if !(params.alpha > 0.0 && params.alpha.is_finite()) {
            bail!("sentiment model: alpha must be a positive number, got {}", params.alpha);
        }
        if docs[0] == 0 || docs[1] == 0 {
            bail!(
                "sentiment model: need at least one negative and one positive snippet with |rating| >= {}, \
                 got {} negative and {} positive",
                params.min_abs_rating,
                docs[0],
                docs[1]
            );
        }
        let totals = counts.values().fold([0u64; 2], |t, c| [t[0] + c[0], t[1] + c[1]]);
        let vocab = counts.len() as f64;
        let denom = [0, 1].map(|c| (totals[c] as f64 + params.alpha * vocab).ln());
        let weights = counts
            .iter()
            .map(|(f, c)| {
                let lp = [0, 1].map(|k| (c[k] as f64 + params.alpha).ln() - denom[k]);
                (f.clone(), lp[1] - lp[0])
            })
            .collect();
        let prior = (docs[1] as f64).ln() - (docs[0] as f64).ln();
        Ok(Self { params, docs, counts, prior, weights })
    }

    /// ln P(positive | text) - ln P(negative | text): > 0 means the model reads the text as positive, and the
    /// larger, the more positive. Features never seen in training are ignored (they carry no evidence).
    pub fn log_odds(&self, text: &str) -> f64 {
        self.prior + features(text).iter().filter_map(|f| self.weights.get(f)).sum::<f64>()
    }

    /// Share of the snippets with a non-zero rating whose sign the model gets right (a log-odds of exactly 0
    /// counts as wrong). NaN when no snippet has a non-zero rating.
    pub fn accuracy(&self, held_out: &[Snippet]) -> f64 {
        sign_accuracy(held_out, |t| self.log_odds(t))
    }

    pub fn params(&self) -> &FitParams {
        &self.params
    }

    /// Training snippets per class, `[negative, positive]`.
    pub fn class_counts(&self) -> [u64; 2] {
        self.docs
    }

    /// Number of distinct features (unigrams and bigrams) seen in training.
    pub fn vocabulary_size(&self) -> usize {
        self.counts.len()
    }

    /// Saves as JSON (the counts, not the weights: see [`SentimentModel::load`]).
    pub fn save(&self, path: &Path) -> Result<()> {
        let saved = Saved {
            format: FORMAT.into(),
            version: VERSION,
            params: self.params.clone(),
            docs: self.docs,
            counts: self.counts.clone(),
        };
        let json = serde_json::to_vec(&saved)?;
        std::fs::write(path, json).with_context(|| format!("writing sentiment model {}", path.display()))
    }

    /// Loads a model written by [`SentimentModel::save`]; its scores equal the saved model's exactly.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading sentiment model {}", path.display()))?;
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| anyhow!("{}: not a JSON file ({e})", path.display()))?;
        if v.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            bail!("{}: not a sentiment model (expected \"format\": \"{FORMAT}\")", path.display());
        }
        let saved: Saved =
            serde_json::from_value(v).map_err(|e| anyhow!("{}: malformed sentiment model ({e})", path.display()))?;
        if saved.version != VERSION {
            bail!("{}: sentiment model version {} (this build reads version {VERSION})", path.display(), saved.version);
        }
        Self::from_counts(saved.params, saved.docs, saved.counts).map_err(|e| anyhow!("{}: {e}", path.display()))
    }
}

impl Scorer for SentimentModel {
    fn name(&self) -> String {
        "sentiment-nb".into()
    }

    /// The log-odds of positive (see [`SentimentModel::log_odds`]).
    fn score(&self, text: &str) -> f64 {
        self.log_odds(text)
    }
}

/// The training class of a rating: 1 positive, 0 negative, `None` for near-neutral ratings.
fn label(rating: f64, min_abs_rating: f64) -> Option<usize> {
    if rating > 0.0 && rating >= min_abs_rating {
        Some(1)
    } else if rating < 0.0 && rating <= -min_abs_rating {
        Some(0)
    } else {
        None
    }
}

/// Share of `snippets` with a non-zero rating on whose sign `score` agrees (a score of 0 counts as wrong:
/// no opinion). The one definition used for every scorer, so their accuracies compare. NaN if none is rated.
pub fn sign_accuracy(snippets: &[Snippet], score: impl Fn(&str) -> f64) -> f64 {
    let (mut right, mut n) = (0usize, 0usize);
    for s in snippets.iter().filter(|s| s.rating != 0.0) {
        n += 1;
        let v = score(&s.text);
        if (v > 0.0 && s.rating > 0.0) || (v < 0.0 && s.rating < 0.0) {
            right += 1;
        }
    }
    right as f64 / n as f64
}

/// The lowercased tokens of a text (see the module docs).
pub fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_alphanumeric() {
            cur.extend(c.to_lowercase());
            continue;
        }
        // An apostrophe (straight or curly) between two letters/digits stays inside the word.
        let inner_apostrophe =
            (c == '\'' || c == '\u{2019}') && !cur.is_empty() && chars.get(i + 1).is_some_and(|n| n.is_alphanumeric());
        if inner_apostrophe {
            cur.push('\'');
            continue;
        }
        if !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        if c == '!' || c == '?' {
            out.push(c.to_string());
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The model's features of a text: its tokens, then each pair of adjacent tokens joined by a space (a space
/// never occurs inside a token, so a bigram can't collide with a unigram).
pub fn features(text: &str) -> Vec<String> {
    let t = tokens(text);
    let bigrams: Vec<String> = t.windows(2).map(|w| format!("{} {}", w[0], w[1])).collect();
    let mut f = t;
    f.extend(bigrams);
    f
}
