//! KTO's data: unpaired rows, each a prompt, one completion and a good/bad label, read from JSONL or Parquet in
//! TRL's unpaired preference format, or made from a preference file the way TRL does.
//!
//! Accepted files (TRL 0.27.2's dataset types for `KTOTrainer`):
//! - unpaired: `{"prompt": str, "completion": str, "label": bool}`, or prompt and completion as lists of
//!   `{role, content}` messages (rendered with the model's chat template: the completion is the rendered
//!   conversation minus the rendered prompt, as [`crate::data`] renders preference pairs);
//! - paired, in any format [`crate::data::read_preferences`] reads (`{prompt, chosen, rejected}`, implicit prompt,
//!   conversational): each pair becomes a desirable row (chosen) and an undesirable one (rejected), as TRL's
//!   `unpair_preference_dataset` (`trl/data_utils.py:383-434`; see [`unpair`] for the order).
//!
//! Which one a file is, is decided by its first row: `chosen` or `rejected` there means paired. A missing or
//! mistyped column, an empty completion, a non-boolean label stop with `file:line` (`file row N` for Parquet) and
//! the column's name.
//!
//! Tokenisation and truncation are [`crate::data::tokenize`]'s (the same `max_length`, `max_prompt_length`,
//! `truncation_mode`, EOS after plain-text completions and none after templated ones), applied to each row alone;
//! rows whose completion is emptied by truncation are skipped and counted. TRL 0.27.2's KTO only ever cuts the
//! completion's end (`_process_tokens`, kto_trainer.py:192-207), which is `truncation_mode = "keep_start"` here;
//! and it appends EOS to every completion that does not already end with it (kto_trainer.py:230-237), also after a
//! chat template's closing turn, where this, like TRL's DPO, adds none.

use crate::config::TrainConfig;
use crate::data::{messages, read_preferences, read_rows, tokenize, ChatPair, Skipped, TextPair};
use anyhow::{anyhow, bail, Result};
use lm::tokenizer::ChatText;
use lm::Tokenizer;
use serde_json::Value;
use std::path::Path;

/// One unpaired row as text.
#[derive(Debug, Clone, PartialEq)]
pub struct UnpairedText {
    /// 1-based line (or Parquet row) in the source file; both rows made from one pair carry its line.
    pub line: usize,
    pub prompt: String,
    pub completion: String,
    /// Desirable (`true`) or undesirable (TRL's `label`).
    pub label: bool,
    /// The prompt already contains the model's chat formatting.
    pub templated: bool,
    /// A conversational row's renderings with the control tokens the template wrote (what is tokenised;
    /// the strings above are their text).
    pub chat: Option<ChatRow>,
}

/// A conversational row rendered with the chat template: the prompt (with the generation prompt) and the
/// completion (the whole conversation's rendering minus the prompt's).
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRow {
    pub prompt: ChatText,
    pub completion: ChatText,
}

/// One unpaired row as token ids, ready for scoring.
#[derive(Debug, Clone, PartialEq)]
pub struct UnpairedTokens {
    pub line: usize,
    pub prompt: Vec<u32>,
    pub completion: Vec<u32>,
    pub label: bool,
}

/// TRL's `unpair_preference_dataset`: each pair's chosen completion becomes a desirable row and its rejected one
/// an undesirable row with the same prompt. TRL maps its rows in batches of 1000 (the `datasets` default) and its
/// `_unpair_row` puts a batch's chosen rows before its rejected ones (data_utils.py:383-391); the order here is the
/// same, so an unshuffled pass (the evaluation's) pairs the same rows for the KL estimate as TRL would.
pub fn unpair(pairs: &[TextPair]) -> Vec<UnpairedText> {
    let row = |p: &TextPair, label: bool| UnpairedText {
        line: p.line,
        prompt: p.prompt.clone(),
        completion: if label { &p.chosen } else { &p.rejected }.clone(),
        label,
        templated: p.templated,
        chat: p.chat.as_ref().map(|c| ChatRow {
            prompt: c.prompt.clone(),
            completion: if label { &c.chosen } else { &c.rejected }.clone(),
        }),
    };
    let mut out = Vec::with_capacity(2 * pairs.len());
    for block in pairs.chunks(1000) {
        out.extend(block.iter().map(|p| row(p, true)));
        out.extend(block.iter().map(|p| row(p, false)));
    }
    out
}

fn is_paired(v: &Value) -> bool {
    v.get("chosen").is_some() || v.get("rejected").is_some()
}

/// Reads a KTO data file, unpaired or paired (JSONL, or Parquet by its `.parquet` extension), into text rows.
/// For a paired file, pairs with chosen identical to rejected are skipped and counted in [`Skipped::identical`].
pub fn read_unpaired(path: &Path, tok: &Tokenizer) -> Result<(Vec<UnpairedText>, Skipped)> {
    let rows = read_rows(path)?;
    if rows.first().is_some_and(|(_, _, v)| is_paired(v)) {
        let (pairs, skipped) = read_preferences(path, tok)?;
        return Ok((unpair(&pairs), skipped));
    }
    let mut out = Vec::with_capacity(rows.len());
    for (n, loc, v) in &rows {
        let row = parse_unpaired(v, tok).map_err(|e| anyhow!("{loc}: {e}"))?;
        out.push(UnpairedText { line: *n, ..row });
    }
    if out.is_empty() {
        bail!("{}: no rows (expected JSON objects with prompt, completion, label)", path.display());
    }
    Ok((out, Skipped::default()))
}

fn parse_unpaired(v: &Value, tok: &Tokenizer) -> Result<UnpairedText> {
    if !v.is_object() {
        bail!("expected a JSON object with prompt, completion, label");
    }
    let field =
        |k: &str| v.get(k).ok_or_else(|| anyhow!("column `{k}` is missing (expected prompt, completion, label)"));
    let (prompt, completion, label) = (field("prompt")?, field("completion")?, field("label")?);
    let label = label.as_bool().ok_or_else(|| anyhow!("column `label` must be true or false, got {label}"))?;
    let row = match (messages(prompt), messages(completion)) {
        (Some(p), Some(c)) => {
            if p.is_empty() {
                bail!("column `prompt` has no messages");
            }
            if c.is_empty() {
                bail!("column `completion` has no messages");
            }
            let rendered = tok.render_chat(&Value::Array(p.clone()), true)?;
            let all: Vec<Value> = p.iter().chain(c).cloned().collect();
            let full = tok.render_chat(&Value::Array(all), false)?;
            let completion = full.strip_prefix(&rendered).ok_or_else(|| {
                anyhow!("the chat template does not render the prompt as a prefix of the conversation")
            })?;
            UnpairedText {
                line: 0,
                prompt: rendered.to_string(),
                completion: completion.to_string(),
                label,
                templated: true,
                chat: Some(ChatRow { prompt: rendered, completion }),
            }
        }
        (None, Some(_)) => bail!("column `prompt` must be a list of {{role, content}} messages like completion"),
        (Some(_), None) => bail!("column `completion` must be a list of {{role, content}} messages like prompt"),
        (None, None) => {
            let s = |k: &str, x: &Value| -> Result<String> {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| anyhow!("column `{k}` must be a string or a list of messages"))
            };
            UnpairedText {
                line: 0,
                prompt: s("prompt", prompt)?,
                completion: s("completion", completion)?,
                label,
                templated: false,
                chat: None,
            }
        }
    };
    if row.completion.is_empty() {
        bail!("column `completion` is an empty completion");
    }
    Ok(row)
}

/// Tokenises rows with `cfg`'s truncation; rows whose completion is emptied are skipped and counted in
/// [`Skipped::truncated_away`].
pub fn tokenize_unpaired(
    rows: &[UnpairedText],
    tok: &Tokenizer,
    cfg: &TrainConfig,
    skipped: &mut Skipped,
) -> Result<Vec<UnpairedTokens>> {
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        // One completion through the pair tokenizer with both sides the same, so a KTO row is cut by exactly the
        // rules a DPO pair is.
        let pair = TextPair {
            line: r.line,
            prompt: r.prompt.clone(),
            chosen: r.completion.clone(),
            rejected: r.completion.clone(),
            templated: r.templated,
            chat: r.chat.as_ref().map(|c| ChatPair {
                prompt: c.prompt.clone(),
                chosen: c.completion.clone(),
                rejected: c.completion.clone(),
            }),
        };
        let toks = tokenize(&[pair], tok, cfg.max_length, cfg.max_prompt_length, cfg.truncation_mode, skipped)?;
        if let Some(t) = toks.into_iter().next() {
            out.push(UnpairedTokens { line: t.line, prompt: t.prompt, completion: t.chosen, label: r.label });
        }
    }
    Ok(out)
}

/// Reads a KTO data file (unpaired or paired, JSONL or Parquet) and tokenises it with `cfg`'s truncation: the one
/// call that turns a TRL unpaired (or preference) dataset into KTO training rows. A file with no row left after
/// truncation is an error.
pub fn load_unpaired(path: &Path, tok: &Tokenizer, cfg: &TrainConfig) -> Result<(Vec<UnpairedTokens>, Skipped)> {
    let (rows, mut skipped) = read_unpaired(path, tok)?;
    let toks = tokenize_unpaired(&rows, tok, cfg, &mut skipped)?;
    if toks.is_empty() {
        return Err(anyhow!("{}", describe_skipped(&skipped, path)).context(format!(
            "{}: no rows left after truncation to max_length = {}",
            path.display(),
            cfg.max_length
        )));
    }
    Ok((toks, skipped))
}

/// The skip report of a KTO data file (identical pairs of a paired file, rows emptied by truncation).
pub fn describe_skipped(s: &Skipped, file: &Path) -> String {
    let lines = |v: &[usize]| v.iter().take(10).map(|l| l.to_string()).collect::<Vec<_>>().join(", ");
    let mut parts = vec![];
    if !s.identical.is_empty() {
        parts.push(format!(
            "{} pairs with chosen identical to rejected (lines {})",
            s.identical.len(),
            lines(&s.identical)
        ));
    }
    if !s.truncated_away.is_empty() {
        parts.push(format!(
            "{} rows whose completion is empty after truncation to max_length (lines {})",
            s.truncated_away.len(),
            lines(&s.truncated_away)
        ));
    }
    format!("{}: skipped {}", file.display(), parts.join("; "))
}

/// Numbers of desirable and undesirable rows.
pub fn label_counts(rows: &[UnpairedTokens]) -> (usize, usize) {
    let d = rows.iter().filter(|r| r.label).count();
    (d, rows.len() - d)
}
