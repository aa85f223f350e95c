//! Reading the JSONL inputs of `generate` and `score`, with errors that name the file, line and field.

use anyhow::{bail, Result};
use lm::LanguageModel;
use serde_json::{json, Value};
use std::path::Path;

pub enum PromptInput {
    Text(String),
    Messages(Value),
}

pub fn read_prompts(path: &Path) -> Result<Vec<PromptInput>> {
    let mut out = Vec::new();
    for row in rows::lines(path)? {
        let (line, text) = row?;
        let v = rows::parse_json(path, line, &text)?;
        out.push(match v {
            Value::String(s) => PromptInput::Text(s),
            Value::Object(ref o) if o.contains_key("messages") => PromptInput::Messages(o["messages"].clone()),
            Value::Object(ref o) => match o.get("prompt") {
                Some(Value::String(s)) => PromptInput::Text(s.clone()),
                Some(m @ Value::Array(_)) => PromptInput::Messages(m.clone()),
                _ => bail!("{}:{line}: expected a string field `prompt` or an array field `messages`", path.display()),
            },
            _ => bail!("{}:{line}: expected a JSON string or object", path.display()),
        });
    }
    if out.is_empty() {
        bail!("{}: no prompts in the file", path.display());
    }
    Ok(out)
}

/// The text fed to the model for a prompt and its token ids (chat-rendered when asked or when given as
/// messages: only the template's own scaffolding becomes control tokens, never the prompt's text).
pub fn render_prompt(model: &LanguageModel, p: &PromptInput, chat: bool) -> Result<(String, Vec<u32>)> {
    let tok = &model.tokenizer;
    let rendered = match p {
        PromptInput::Text(t) if !chat => return Ok((t.clone(), tok.encode(t)?)),
        PromptInput::Text(t) => tok.render_chat(&json!([{"role": "user", "content": t}]), true)?,
        PromptInput::Messages(m) => tok.render_chat(m, true)?,
    };
    let ids = tok.encode_chat_text(&rendered, true)?;
    Ok((rendered.to_string(), ids))
}

pub struct ScoreRow {
    pub line: usize,
    pub field: &'static str,
    pub prompt: String,
    pub completion: String,
}

pub fn read_score_input(path: &Path) -> Result<Vec<ScoreRow>> {
    let mut out = Vec::new();
    for row in rows::lines(path)? {
        let (line, text) = row?;
        let v = rows::parse_json(path, line, &text)?;
        let get = |k: &str| -> Result<String> {
            match v.get(k) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(_) => bail!("{}:{line}: field `{k}` must be a string", path.display()),
                None => bail!("{}:{line}: field `{k}` is missing", path.display()),
            }
        };
        let prompt = get("prompt")?;
        if v.get("completion").is_some() {
            out.push(ScoreRow { line, field: "completion", prompt, completion: get("completion")? });
        } else if v.get("chosen").is_some() || v.get("rejected").is_some() {
            out.push(ScoreRow { line, field: "chosen", prompt: prompt.clone(), completion: get("chosen")? });
            out.push(ScoreRow { line, field: "rejected", prompt, completion: get("rejected")? });
        } else {
            bail!("{}:{line}: expected field `completion`, or `chosen` and `rejected`", path.display());
        }
    }
    if out.is_empty() {
        bail!("{}: nothing to score in the file", path.display());
    }
    Ok(out)
}
