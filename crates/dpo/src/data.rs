//! Preference data in TRL's formats, read from JSONL or Parquet, tokenised and truncated for training.
//!
//! Accepted rows (TRL's preference dataset types):
//! - explicit prompt: `{"prompt": str, "chosen": str, "rejected": str}`
//! - implicit prompt: `{"chosen": str, "rejected": str}`; the prompt is the longest shared prefix, backed
//!   off to before a space so the space stays with the completions (as TRL's `extract_prompt`)
//! - conversational: the same keys with lists of `{role, content}` messages (prompt optional: then the
//!   shared leading messages are the prompt), rendered with the model's chat template. The completion is
//!   the rendering of the whole conversation minus the rendering of the prompt, so a template's BOS/EOS
//!   appear once.
//!
//! Truncation (TRL's `max_length` with `truncation_mode`): `keep_start` keeps the first `max_length` tokens of
//! prompt + completion (the completion loses its end); `keep_end` keeps the last ones (the prompt loses its
//! start). `max_prompt_length`, if set, first cuts the prompt to its last tokens. A pair whose completion
//! would be left empty is skipped and counted.
//!
//! A conversational row keeps its renderings as [`ChatText`] ([`TextPair::chat`]) and is tokenised with
//! [`Tokenizer::encode_chat_text`]: the template's scaffolding becomes control tokens, while a message that
//! spells one (`<|im_end|>`) stays ordinary text.
//!
//! End of sequence (TRL's `tokenize_row`): a plain-text completion gets the tokenizer's EOS appended before
//! truncation; a conversational one does not, since its rendering already ends the assistant turn.

pub use crate::config::Truncation;

use crate::config::TrainConfig;
use anyhow::{anyhow, bail, Context as _, Result};
use lm::tokenizer::ChatText;
use lm::Tokenizer;
use serde_json::Value;
use std::path::Path;

/// One preference pair as text.
#[derive(Debug, Clone, PartialEq)]
pub struct TextPair {
    /// 1-based line in the source file.
    pub line: usize,
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    /// The prompt already contains the model's chat formatting.
    pub templated: bool,
    /// A conversational row's renderings with the control tokens the template wrote (what is tokenised;
    /// the strings above are their text, for showing and comparing).
    pub chat: Option<ChatPair>,
}

/// A conversational pair rendered with the chat template: the prompt (with the generation prompt) and each
/// completion (the whole conversation's rendering minus the prompt's).
#[derive(Debug, Clone, PartialEq)]
pub struct ChatPair {
    pub prompt: ChatText,
    pub chosen: ChatText,
    pub rejected: ChatText,
}

/// One pair as token ids, ready for scoring.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenPair {
    pub line: usize,
    pub prompt: Vec<u32>,
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
}

/// Rows skipped while reading, by reason, reported to the user.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Skipped {
    pub identical: Vec<usize>,
    pub truncated_away: Vec<usize>,
}

impl Skipped {
    pub fn total(&self) -> usize {
        self.identical.len() + self.truncated_away.len()
    }

    pub fn describe(&self, file: &Path) -> String {
        let lines = |v: &[usize]| v.iter().take(10).map(|l| l.to_string()).collect::<Vec<_>>().join(", ");
        let mut parts = vec![];
        if !self.identical.is_empty() {
            parts.push(format!(
                "{} with chosen identical to rejected (lines {})",
                self.identical.len(),
                lines(&self.identical)
            ));
        }
        if !self.truncated_away.is_empty() {
            parts.push(format!(
                "{} whose completion is empty after truncation to max_length (lines {})",
                self.truncated_away.len(),
                lines(&self.truncated_away)
            ));
        }
        format!("{}: skipped {} pairs: {}", file.display(), self.total(), parts.join("; "))
    }
}

/// TRL's prompt extraction for implicit-prompt string pairs (one copy, shared with the oracle).
pub use rows::shared_prefix;

/// `v` as a list of `{role, content}` chat messages, if it is one.
pub(crate) fn messages(v: &Value) -> Option<&Vec<Value>> {
    v.as_array().filter(|a| a.iter().all(|m| m.get("role").is_some() && m.get("content").is_some()))
}

/// Reads a preference file, JSONL or (by its `.parquet` extension) Parquet, into text pairs
/// (conversational rows rendered with `tok`'s template).
pub fn read_preferences(path: &Path, tok: &Tokenizer) -> Result<(Vec<TextPair>, Skipped)> {
    if path.extension().is_some_and(|e| e == "parquet") {
        read_parquet(path, tok)
    } else {
        read_jsonl(path, tok)
    }
}

/// Adds one parsed row (1-based `n`) to the pairs or the skip counts; `loc` names it in errors.
fn add_row(
    v: &Value,
    n: usize,
    loc: &str,
    tok: &Tokenizer,
    out: &mut Vec<TextPair>,
    skipped: &mut Skipped,
) -> Result<()> {
    let pair = parse_row(v, tok).map_err(|e| anyhow!("{loc}: {e}"))?;
    let identical = match &pair.chat {
        Some(c) => c.chosen == c.rejected,
        None => pair.chosen == pair.rejected,
    };
    if identical {
        skipped.identical.push(n);
    } else {
        out.push(TextPair { line: n, ..pair });
    }
    Ok(())
}

fn finish(path: &Path, out: Vec<TextPair>, skipped: Skipped) -> Result<(Vec<TextPair>, Skipped)> {
    if out.is_empty() {
        bail!("{}: no usable preference pairs ({} rows skipped)", path.display(), skipped.total());
    }
    Ok((out, skipped))
}

/// Reads a JSONL preference file; errors name `file:line`.
pub fn read_jsonl(path: &Path, tok: &Tokenizer) -> Result<(Vec<TextPair>, Skipped)> {
    let mut out = Vec::new();
    let mut skipped = Skipped::default();
    for row in rows::json_lines(path)? {
        let (n, v) = row?;
        add_row(&v, n, &format!("{}:{n}", path.display()), tok, &mut out, &mut skipped)?;
    }
    finish(path, out, skipped)
}

/// Reads a Parquet preference file (snappy, zstd or gzip pages); errors name `file row N` (1-based).
pub fn read_parquet(path: &Path, tok: &Tokenizer) -> Result<(Vec<TextPair>, Skipped)> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let reader =
        SerializedFileReader::new(f).map_err(|e| anyhow!("{}: not a readable Parquet file ({e})", path.display()))?;
    let rows = reader.get_row_iter(None).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    let mut skipped = Skipped::default();
    for (i, row) in rows.enumerate() {
        let n = i + 1;
        let row = row.map_err(|e| anyhow!("{} row {n}: {e}", path.display()))?;
        add_row(&row.to_json_value(), n, &format!("{} row {n}", path.display()), tok, &mut out, &mut skipped)?;
    }
    finish(path, out, skipped)
}

/// Every row of a JSONL file, or (by its `.parquet` extension) a Parquet file, as JSON with its 1-based number and
/// its location for errors (`file:line`, `file row N`): for readers of other row types (KTO's unpaired rows).
pub(crate) fn read_rows(path: &Path) -> Result<Vec<(usize, String, Value)>> {
    let mut out = Vec::new();
    if path.extension().is_some_and(|e| e == "parquet") {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let reader = SerializedFileReader::new(f)
            .map_err(|e| anyhow!("{}: not a readable Parquet file ({e})", path.display()))?;
        for (i, row) in reader.get_row_iter(None).map_err(|e| anyhow!("{}: {e}", path.display()))?.enumerate() {
            let n = i + 1;
            let row = row.map_err(|e| anyhow!("{} row {n}: {e}", path.display()))?;
            out.push((n, format!("{} row {n}", path.display()), row.to_json_value()));
        }
    } else {
        for row in rows::json_lines(path)? {
            let (n, v) = row?;
            out.push((n, format!("{}:{n}", path.display()), v));
        }
    }
    Ok(out)
}

fn parse_row(v: &Value, tok: &Tokenizer) -> Result<TextPair> {
    let field =
        |k: &str| v.get(k).ok_or_else(|| anyhow!("column `{k}` is missing (expected prompt, chosen, rejected)"));
    let (chosen, rejected) = (field("chosen")?, field("rejected")?);
    let pair = if let (Some(c), Some(r)) = (messages(chosen), messages(rejected)) {
        // Conversational.
        let (prompt_msgs, c_msgs, r_msgs): (Vec<Value>, Vec<Value>, Vec<Value>) = match v.get("prompt") {
            Some(p) => {
                let p = messages(p).ok_or_else(|| {
                    anyhow!("column `prompt` must be a list of {{role, content}} messages like chosen")
                })?;
                (p.clone(), c.clone(), r.clone())
            }
            None => {
                let k = c.iter().zip(r).take_while(|(a, b)| a == b).count();
                (c[..k].to_vec(), c[k..].to_vec(), r[k..].to_vec())
            }
        };
        if prompt_msgs.is_empty() {
            bail!("conversational row has no prompt messages");
        }
        let prompt = tok.render_chat(&Value::Array(prompt_msgs.clone()), true)?;
        let render = |extra: &[Value]| -> Result<ChatText> {
            if extra.is_empty() {
                bail!("a completion has no messages");
            }
            let all: Vec<Value> = prompt_msgs.iter().chain(extra).cloned().collect();
            let full = tok.render_chat(&Value::Array(all), false)?;
            full.strip_prefix(&prompt)
                .ok_or_else(|| anyhow!("the chat template does not render the prompt as a prefix of the conversation"))
        };
        let chat = ChatPair { chosen: render(&c_msgs)?, rejected: render(&r_msgs)?, prompt };
        TextPair {
            line: 0,
            prompt: chat.prompt.to_string(),
            chosen: chat.chosen.to_string(),
            rejected: chat.rejected.to_string(),
            templated: true,
            chat: Some(chat),
        }
    } else {
        let s = |k: &str, x: &Value| -> Result<String> {
            x.as_str().map(str::to_string).ok_or_else(|| anyhow!("column `{k}` must be a string or a list of messages"))
        };
        let (c, r) = (s("chosen", chosen)?, s("rejected", rejected)?);
        match v.get("prompt") {
            Some(p) => {
                TextPair { line: 0, prompt: s("prompt", p)?, chosen: c, rejected: r, templated: false, chat: None }
            }
            None => {
                let k = shared_prefix(&c, &r);
                TextPair {
                    line: 0,
                    prompt: c[..k].to_string(),
                    chosen: c[k..].to_string(),
                    rejected: r[k..].to_string(),
                    templated: false,
                    chat: None,
                }
            }
        }
    };
    if pair.chosen.is_empty() {
        bail!("column `chosen` is an empty completion");
    }
    if pair.rejected.is_empty() {
        bail!("column `rejected` is an empty completion");
    }
    Ok(pair)
}

/// Tokenises text pairs with truncation; pairs emptied by truncation are skipped and counted.
pub fn tokenize(
    pairs: &[TextPair],
    tok: &Tokenizer,
    max_length: usize,
    max_prompt_length: Option<usize>,
    mode: Truncation,
    skipped: &mut Skipped,
) -> Result<Vec<TokenPair>> {
    let mut out = Vec::with_capacity(pairs.len());
    for p in pairs {
        // A conversation is tokenised from its renderings, so only the template's scaffolding becomes control
        // tokens. A rendered chat prompt already carries the template's BOS; don't add another.
        let (mut prompt, mut c, mut r) = match &p.chat {
            Some(ch) => (
                tok.encode_chat_text(&ch.prompt, false)?,
                tok.encode_chat_text(&ch.chosen, false)?,
                tok.encode_chat_text(&ch.rejected, false)?,
            ),
            None => (
                if p.templated { tok.encode_plain(&p.prompt)? } else { tok.encode(&p.prompt)? },
                tok.encode_plain(&p.chosen)?,
                tok.encode_plain(&p.rejected)?,
            ),
        };
        if prompt.is_empty() {
            // Implicit prompts can be empty; condition on BOS (or EOS, as GPT-2 does) instead.
            prompt.push(tok.bos_token_id.or(tok.eos_token_ids.first().copied()).unwrap_or(0));
        }
        if let Some(m) = max_prompt_length {
            if prompt.len() > m {
                prompt.drain(..prompt.len() - m);
            }
        }
        // TRL's tokenize_row (0.27.2 dpo_trainer.py:734-736) ends plain-text completions with EOS, so the model
        // learns where a preferred answer stops; a chat template already closes the turn, so rendered
        // conversational completions get none.
        if let (false, Some(&eos)) = (p.templated || p.chat.is_some(), tok.eos_token_ids.first()) {
            c.push(eos);
            r.push(eos);
        }
        let mut pr = prompt.clone();
        let mut ok = true;
        for comp in [&mut c, &mut r] {
            if pr.len() + comp.len() > max_length {
                match mode {
                    Truncation::KeepStart => comp.truncate(max_length.saturating_sub(pr.len())),
                    Truncation::KeepEnd => {
                        let cut = (pr.len() + comp.len() - max_length).min(pr.len().saturating_sub(1));
                        // Cutting the prompt's start is shared by both completions: apply the larger cut.
                        if cut > prompt.len() - pr.len() {
                            pr = prompt[cut..].to_vec();
                        }
                        if pr.len() + comp.len() > max_length {
                            let keep = max_length.saturating_sub(pr.len());
                            comp.drain(..comp.len() - keep);
                        }
                    }
                }
            }
            ok &= !comp.is_empty();
        }
        if !ok {
            skipped.truncated_away.push(p.line);
            continue;
        }
        out.push(TokenPair { line: p.line, prompt: pr, chosen: c, rejected: r });
    }
    Ok(out)
}

/// Reads a preference file (JSONL, or Parquet by its `.parquet` extension) and tokenises it with `cfg`'s
/// truncation (`max_length`, `max_prompt_length`, `truncation_mode`): the one call that turns a TRL
/// preference dataset into training pairs. Rows skipped while reading or truncating are counted in the
/// returned [`Skipped`]; a file with no pair left after truncation is an error (its cause chain holds the
/// skip report).
pub fn load_pairs(path: &Path, tok: &Tokenizer, cfg: &TrainConfig) -> Result<(Vec<TokenPair>, Skipped)> {
    let (pairs, mut skipped) = read_preferences(path, tok)?;
    let toks = tokenize(&pairs, tok, cfg.max_length, cfg.max_prompt_length, cfg.truncation_mode, &mut skipped)?;
    if toks.is_empty() {
        return Err(anyhow!("{}", skipped.describe(path)).context(format!(
            "{}: no pairs left after truncation to max_length = {}",
            path.display(),
            cfg.max_length
        )));
    }
    Ok((toks, skipped))
}
