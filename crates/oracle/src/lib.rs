//! Oracles: who says which of two completions of a prompt is better.
//!
//! Labels are the expensive part of preference learning, so everything that can give one sits behind
//! one small trait, [`Oracle`]. This crate knows nothing about language models: it sees text only.
//! Implementations:
//! - [`vader`]: VADER rule-based sentiment (fast, weak: sign accuracy ~0.65 on the movie snippets);
//! - [`sentiment`]: a sentiment model fitted here on the human ratings shipped with the snippets;
//! - [`judge`]: an LLM judge behind an OpenAI-compatible chat API (the paper's GPT-4 oracle);
//! - [`dataset`]: labels looked up in an existing preference file (offline simulation).
//!
//! A human oracle and a reward model on the LM live in `apl`, which owns the run store and the model.

pub mod dataset;
pub mod judge;
pub mod sentiment;
pub mod snippets;
pub mod vader;

use anyhow::Result;
use serde::{Deserialize, Serialize};

/// One pairwise question: a prompt and two completions of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub prompt: String,
    pub completions: [String; 2],
}

impl Comparison {
    pub fn new(prompt: impl Into<String>, a: impl Into<String>, b: impl Into<String>) -> Self {
        Self { prompt: prompt.into(), completions: [a.into(), b.into()] }
    }

    /// The full text a reader sees for completion `i`: the prompt followed by the completion.
    pub fn text(&self, i: usize) -> String {
        format!("{}{}", self.prompt, self.completions[i])
    }
}

/// An oracle's answer to one comparison.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// The preferred completion (0 or 1), or `None` when the oracle gave no usable preference (a tie, or a
    /// judge reply without `Preferred: A|B`). The APL loop drops such points and acquires others, as the
    /// paper's code does.
    pub preferred: Option<usize>,
    /// What the oracle said, kept with the label: scores, or the judge's reply.
    pub raw: String,
}

/// Something that can say which of two completions is better.
///
/// `compare` returns `Err` only for faults that should stop a run (an unreachable judge after its retries, a
/// spent budget); a run stopped that way resumes later. A non-answer is `Ok` with `preferred: None`.
pub trait Oracle {
    /// A short name recorded with every label, e.g. `vader` or `judge:gpt-4o-mini`.
    fn name(&self) -> String;
    fn compare(&mut self, c: &Comparison) -> Result<Answer>;

    /// Answers every comparison in `cs`, handing each answer to `done(index, answer)` as soon as it is
    /// known, so the caller can commit it before anything else can go wrong. Answers may arrive in any
    /// order (an oracle that asks a remote server asks several questions at once). On a fault, the answers
    /// already received are still handed over, then the first error is returned; an error from `done` stops
    /// the work too. The default asks one at a time, in order.
    fn compare_each(&mut self, cs: &[Comparison], done: &mut dyn FnMut(usize, Answer) -> Result<()>) -> Result<()> {
        for (i, c) in cs.iter().enumerate() {
            let a = self.compare(c)?;
            done(i, a)?;
        }
        Ok(())
    }
}

/// A scalar text scorer (higher = better), e.g. a sentiment model.
pub trait Scorer {
    fn name(&self) -> String;
    fn score(&self, text: &str) -> f64;
}

/// Turns a [`Scorer`] into an [`Oracle`]: the completion whose full text (prompt + completion) scores
/// higher is preferred; equal scores are a tie, i.e. no preference.
pub struct ScoreOracle<S: Scorer>(pub S);

impl<S: Scorer> Oracle for ScoreOracle<S> {
    fn name(&self) -> String {
        self.0.name()
    }

    fn compare(&mut self, c: &Comparison) -> Result<Answer> {
        let s = [self.0.score(&c.text(0)), self.0.score(&c.text(1))];
        Ok(Answer { preferred: prefer_higher(s), raw: format!("{{\"scores\":[{},{}]}}", s[0], s[1]) })
    }
}

/// The index of the higher of two scores; `None` for a tie (or a NaN).
pub fn prefer_higher(s: [f64; 2]) -> Option<usize> {
    if s[0] > s[1] {
        Some(0)
    } else if s[1] > s[0] {
        Some(1)
    } else {
        None
    }
}
