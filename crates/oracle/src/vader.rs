//! VADER (Hutto & Gilbert, 2014) as a [`Scorer`]: the compound sentiment of a text, -1..+1.
//!
//! It exists as the cheapest oracle: no training, no assets, no network, microseconds a text, and a
//! published, well-known rule set. It is weak on the movie snippets: of the 10,568 with a non-zero human
//! rating it scores 13% as exactly 0 (no opinion) and gets the sign of 0.653 of the rest right (0.566 of
//! all), which is why the default job uses [`crate::sentiment`] instead. (The Python package: 0.655.)
//!
//! # How far this is from the Python package
//!
//! The scores come from the `vader_sentiment` crate 0.1.1, a port of vaderSentiment. Against vaderSentiment
//! 3.3.2 on all 10,605 movie snippets, 77.6% of compounds agree within 1e-3, 79.3% within 0.01 and 95.2%
//! within 0.1; the sign agrees on 97.9% (max abs diff 1.32); `tests/scorers.rs` checks a 303-snippet
//! sample against a fixture from `scripts/vader_reference.py`. Every difference is explained: the crate's
//! rules re-implemented in Python reproduce it on all 10,605 snippets, and switching its deviations on one
//! at a time gives (snippets changed of 10,605):
//! - **booster substrings** (1,854): for a sentiment word with three tokens before it, the crate adds
//!   *every* booster word that occurs as a substring of those three tokens joined, e.g. "so" in "also",
//!   "less" in "unless", "most" in "almost", always with the booster's own sign. Python only adds the
//!   multi-word boosters ("kind of", "sort of", "just enough") when they are exactly the preceding words.
//!   This is most of the disagreement. (The crate also walks a `HashMap` there, so the order of those
//!   additions, and thus the last bit of a score, can differ between processes.)
//! - **tokens** (155): the crate drops one-character tokens ("a", "I") and strips punctuation off
//!   two-letter words; Python keeps both ("ok." stays "ok." and is not a lexicon word), which shifts the
//!   three-word windows that boosters and negations look at.
//! - **lexicon** (143): the crate's lexicon lacks "heart" and "hearts" (3.2, 3.3), added in 3.3.2.
//! - **single "?"** (154): the crate adds 0.18 for one question mark; Python only amplifies from two.
//! - **"no"** (130): Python treats "no" before a sentiment word (up to three words back) as a negation
//!   ("no good reason" is negative); the crate scores "no" as a negative word only.
//! - **negation window** (100): the crate's "never so/this" and "without doubt" checks three words back
//!   group their `&&`/`||` differently, so e.g. "watch **this** film, great" is boosted by 1.25.
//! - **neutral "!"** (17): a text whose words sum to exactly 0 gets its "!"/"?" emphasis *subtracted* by the
//!   crate (negative compound); Python leaves it at 0.
//! - **"but"** (11): Python scales words around "but" through `list.index(value)`, which picks the first
//!   equal value and so misplaces repeated valences; the crate scales by position, as intended.
//! - **"at least"** (5): the crate negates the word after "at least"; Python does not.
//!
//! So read this oracle as "VADER as the Rust crate computes it". A faithful port would be a few hundred
//! lines on top of the crate's public lexicon.

use crate::Scorer;
use vader_sentiment::SentimentIntensityAnalyzer;

/// VADER's compound sentiment, from the `vader_sentiment` crate.
pub struct Vader {
    analyzer: SentimentIntensityAnalyzer<'static>,
}

impl Vader {
    pub fn new() -> Self {
        Self { analyzer: SentimentIntensityAnalyzer::new() }
    }

    /// The compound score, -1 (most negative) to +1 (most positive), rounded to 4 decimals as the Python
    /// package reports it (the rounding also hides the crate's process-dependent last bits, see the module
    /// docs). Exactly 0 when no word of the text is in VADER's lexicon.
    pub fn compound(&self, text: &str) -> f64 {
        let c = self.analyzer.polarity_scores(text)["compound"];
        (c * 1e4).round() / 1e4
    }
}

impl Default for Vader {
    fn default() -> Self {
        Self::new()
    }
}

impl Scorer for Vader {
    fn name(&self) -> String {
        "vader".into()
    }

    fn score(&self, text: &str) -> f64 {
        self.compound(text)
    }
}
