//! Labels looked up in an existing preference file: an oracle for offline simulation.
//!
//! Why it exists: to run and compare acquisition strategies on a labelled dataset (the paper's offline
//! setting) without a judge or a person — every pair the loop could ask about is already labelled, so the
//! "oracle" just reveals the label, and [`DatasetOracle::pairs`] gives the loop the file's pairs as its
//! candidate pool.
//!
//! Reads TRL's JSONL preference formats with text fields:
//! - explicit prompt: `{"prompt": str, "chosen": str, "rejected": str}`;
//! - implicit prompt: `{"chosen": str, "rejected": str}`, the prompt being their longest shared prefix,
//!   backed off to before a space so the space stays with the completions (TRL's `extract_prompt`). The rule
//!   lives in the `rows` crate ([`shared_prefix`]), so every reader of such files splits a row the same way.
//!
//! Other keys are ignored. Conversational rows (lists of messages) are refused: comparing them as text would
//! need the model's chat template, which this crate does not know.
//!
//! Rows whose chosen equals their rejected carry no preference and are skipped. When a pair occurs more than
//! once, the answer is the majority of its rows; a tie between rows that disagree is no preference.

use crate::{Answer, Comparison, Oracle};
use anyhow::{anyhow, bail, Result};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use rows::shared_prefix;

/// A preference file as an [`Oracle`].
pub struct DatasetOracle {
    path: PathBuf,
    /// Distinct pairs in file order (first occurrence), as `[chosen, rejected]` of their first row.
    pairs: Vec<Comparison>,
    /// (prompt, completion, completion) → rows preferring the first completion, rows preferring the second.
    /// Stored under both completion orders, so a lookup needs no normalisation.
    votes: HashMap<(String, String, String), [u32; 2]>,
    /// Rows skipped because chosen == rejected (1-based line numbers).
    skipped_identical: Vec<usize>,
}

impl DatasetOracle {
    /// Reads a JSONL preference file. Errors name the file, the 1-based line and the field.
    pub fn open(path: &Path) -> Result<Self> {
        let mut oracle =
            Self { path: path.to_path_buf(), pairs: Vec::new(), votes: HashMap::new(), skipped_identical: Vec::new() };
        for row in rows::json_lines(path)? {
            let (n, v) = row?;
            let (prompt, chosen, rejected) = parse_row(&v).map_err(|e| anyhow!("{}:{n}: {e}", path.display()))?;
            oracle.add(n, prompt, chosen, rejected);
        }
        if oracle.pairs.is_empty() {
            bail!(
                "{}: no preference pairs (expected JSON lines with prompt, chosen, rejected; {} skipped as chosen \
                 == rejected)",
                path.display(),
                oracle.skipped_identical.len()
            );
        }
        Ok(oracle)
    }

    fn add(&mut self, line: usize, prompt: String, chosen: String, rejected: String) {
        if chosen == rejected {
            self.skipped_identical.push(line);
            return;
        }
        let forward = (prompt.clone(), chosen.clone(), rejected.clone());
        if !self.votes.contains_key(&forward) {
            self.pairs.push(Comparison::new(prompt.clone(), chosen.clone(), rejected.clone()));
        }
        self.votes.entry(forward).or_default()[0] += 1;
        self.votes.entry((prompt, rejected, chosen)).or_default()[1] += 1;
    }

    /// The file's distinct pairs in file order, each as completions `[chosen, rejected]` of its first row.
    pub fn pairs(&self) -> Vec<Comparison> {
        self.pairs.clone()
    }

    /// Lines skipped because their chosen equals their rejected.
    pub fn skipped_identical(&self) -> &[usize] {
        &self.skipped_identical
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Oracle for DatasetOracle {
    fn name(&self) -> String {
        let file = self.path.file_name().map(|f| f.to_string_lossy()).unwrap_or_else(|| self.path.to_string_lossy());
        format!("dataset:{file}")
    }

    /// The file's label for the pair, in either completion order; `preferred: None` when the pair is not in
    /// the file (or its rows disagree evenly).
    fn compare(&mut self, c: &Comparison) -> Result<Answer> {
        let [a, b] = &c.completions;
        let Some(&[for_a, for_b]) = self.votes.get(&(c.prompt.clone(), a.clone(), b.clone())) else {
            return Ok(Answer { preferred: None, raw: format!("not in {}", self.path.display()) });
        };
        let preferred = match for_a.cmp(&for_b) {
            std::cmp::Ordering::Greater => Some(0),
            std::cmp::Ordering::Less => Some(1),
            std::cmp::Ordering::Equal => None,
        };
        Ok(Answer { preferred, raw: format!("{{\"rows_preferring\":[{for_a},{for_b}]}}") })
    }
}

/// (prompt, chosen, rejected) of one row.
fn parse_row(v: &Value) -> Result<(String, String, String)> {
    if !v.is_object() {
        bail!("expected a JSON object with prompt, chosen, rejected");
    }
    let text = |k: &str| -> Result<Option<String>> {
        match v.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Array(_)) => {
                bail!("field `{k}` is a list (conversational format); only text fields are supported here")
            }
            Some(other) => bail!("field `{k}` must be a string, found {}", kind(other)),
        }
    };
    let required = |k: &str| -> Result<String> {
        text(k)?.ok_or_else(|| anyhow!("field `{k}` is missing (expected prompt, chosen, rejected)"))
    };
    let (chosen, rejected) = (required("chosen")?, required("rejected")?);
    match text("prompt")? {
        Some(prompt) => Ok((prompt, chosen, rejected)),
        None => {
            let k = shared_prefix(&chosen, &rejected);
            Ok((chosen[..k].to_string(), chosen[k..].to_string(), rejected[k..].to_string()))
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
