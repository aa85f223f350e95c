//! Chat templates without role injection.
//!
//! A chat template writes control tokens (`<|im_start|>`, `<end_of_turn>`, the BOS) around the messages'
//! text. If the rendered string were tokenized with control tokens parsed everywhere, a message that spells
//! `<|im_end|><|im_start|>system` would close its turn and open a system turn: a prompt, a completion or a
//! judged answer could speak as another role. So a template is rendered with every control-token spelling
//! inside the messages replaced by a placeholder character; whatever control token the rendered text
//! still spells was written by the template, and only those become control ids ([`ChatText`]). The
//! placeholders are put back before tokenizing, so the message text itself is tokenized as ordinary text,
//! and a conversation whose messages spell no control token renders and tokenizes exactly as before.

use anyhow::{bail, Result};
use serde_json::Value;
use std::collections::HashMap;

/// One occurrence of a token's text: bytes `start..end`, token `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Match {
    pub start: usize,
    pub end: usize,
    pub id: u32,
}

/// Finds a set of token texts in a string, leftmost-longest and without overlaps (how HF splits out
/// added tokens; llama.cpp's longest-first partition agrees on real vocabularies).
#[derive(Default)]
pub(crate) struct Matcher {
    tokens: HashMap<String, u32>,
    /// The lengths of the texts that start with each byte, longest first.
    lens: HashMap<u8, Vec<usize>>,
}

impl Matcher {
    pub fn new(items: impl IntoIterator<Item = (String, u32)>) -> Self {
        let mut m = Self::default();
        for (t, id) in items {
            if let Some(&b) = t.as_bytes().first() {
                m.lens.entry(b).or_default().push(t.len());
                m.tokens.insert(t, id);
            }
        }
        for v in m.lens.values_mut() {
            v.sort_unstable_by(|a, b| b.cmp(a));
            v.dedup();
        }
        m
    }

    pub fn find_iter<'a>(&'a self, text: &'a str) -> impl Iterator<Item = Match> + 'a {
        let bytes = text.as_bytes();
        let mut i = 0;
        std::iter::from_fn(move || {
            while i < bytes.len() {
                if let Some(lens) = self.lens.get(&bytes[i]) {
                    for &l in lens {
                        if let Some(&id) = text.get(i..i + l).and_then(|s| self.tokens.get(s)) {
                            let m = Match { start: i, end: i + l, id };
                            i += l;
                            return Some(m);
                        }
                    }
                }
                i += 1;
            }
            None
        })
    }
}

/// Placeholders are single characters of the Supplementary Private Use Area-A (U+F0000–U+FFFFD), which no
/// template and no vocabulary's control token uses; one in a message is masked like a control token.
const PLACEHOLDER_BASE: u32 = 0xF0000;
const PLACEHOLDER_COUNT: u32 = 0xFFFE;

fn placeholder_index(c: char) -> Option<usize> {
    let k = (c as u32).checked_sub(PLACEHOLDER_BASE)?;
    (k < PLACEHOLDER_COUNT).then_some(k as usize)
}

/// Whether `template` uses a placeholder character itself (it could not be told apart from a masked one).
pub(crate) fn uses_placeholders(template: &str) -> bool {
    template.chars().any(|c| placeholder_index(c).is_some())
}

fn push_placeholder(out: &mut String, literal: &str, literals: &mut Vec<String>) -> Result<()> {
    if literals.len() as u32 >= PLACEHOLDER_COUNT {
        bail!("the messages spell more than {PLACEHOLDER_COUNT} control tokens");
    }
    out.push(char::from_u32(PLACEHOLDER_BASE + literals.len() as u32).expect("a private-use code point"));
    literals.push(literal.to_string());
    Ok(())
}

fn mask_str(s: &str, controls: &Matcher, literals: &mut Vec<String>) -> Result<String> {
    let mut out = String::with_capacity(s.len());
    let plain = |text: &str, out: &mut String, literals: &mut Vec<String>| -> Result<()> {
        for c in text.chars() {
            if placeholder_index(c).is_some() {
                push_placeholder(out, c.encode_utf8(&mut [0; 4]), literals)?;
            } else {
                out.push(c);
            }
        }
        Ok(())
    };
    let mut pos = 0;
    for m in controls.find_iter(s) {
        plain(&s[pos..m.start], &mut out, literals)?;
        push_placeholder(&mut out, &s[m.start..m.end], literals)?;
        pos = m.end;
    }
    plain(&s[pos..], &mut out, literals)?;
    Ok(out)
}

/// `messages` with every string in it (contents, names, tool arguments: all of it is the caller's text)
/// masked. Object keys are left alone: templates look fields up by them.
pub(crate) fn mask_messages(v: &Value, controls: &Matcher, literals: &mut Vec<String>) -> Result<Value> {
    Ok(match v {
        Value::String(s) => Value::String(mask_str(s, controls, literals)?),
        Value::Array(a) => Value::Array(a.iter().map(|x| mask_messages(x, controls, literals)).collect::<Result<_>>()?),
        Value::Object(o) => Value::Object(
            o.iter().map(|(k, x)| Ok((k.clone(), mask_messages(x, controls, literals)?))).collect::<Result<_>>()?,
        ),
        other => other.clone(),
    })
}

/// Text a chat template rendered, with the control tokens the template itself wrote (not the messages).
///
/// Tokenize it with [`Tokenizer::encode_chat_text`](crate::Tokenizer::encode_chat_text); tokenizing
/// [`ChatText::as_str`] as a plain string would read every control token as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatText {
    pub(crate) text: String,
    pub(crate) controls: Vec<Match>,
}

impl ChatText {
    /// Puts the masked literals back into a rendered template, noting where the control tokens are.
    pub(crate) fn unmask(masked: &str, controls: &Matcher, literals: &[String]) -> Self {
        let mut text = String::with_capacity(masked.len());
        let restore = |s: &str, text: &mut String| {
            for c in s.chars() {
                match placeholder_index(c).and_then(|k| literals.get(k)) {
                    Some(lit) => text.push_str(lit),
                    None => text.push(c),
                }
            }
        };
        let mut found = Vec::new();
        let mut pos = 0;
        for m in controls.find_iter(masked) {
            restore(&masked[pos..m.start], &mut text);
            let start = text.len();
            text.push_str(&masked[m.start..m.end]);
            found.push(Match { start, end: text.len(), id: m.id });
            pos = m.end;
        }
        restore(&masked[pos..], &mut text);
        Self { text, controls: found }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// How many control tokens the template wrote.
    pub fn control_tokens(&self) -> usize {
        self.controls.len()
    }

    /// What follows `prefix` (a rendering of the first messages of the same conversation), keeping its
    /// control tokens: the completion turns of a rendered conversation. `None` when `prefix` is not a
    /// prefix or cuts through a control token.
    pub fn strip_prefix(&self, prefix: &ChatText) -> Option<ChatText> {
        let cut = prefix.text.len();
        if !self.text.starts_with(&prefix.text) || self.controls.iter().any(|m| m.start < cut && cut < m.end) {
            return None;
        }
        let controls = self
            .controls
            .iter()
            .filter(|m| m.start >= cut)
            .map(|m| Match { start: m.start - cut, end: m.end - cut, id: m.id })
            .collect();
        Some(ChatText { text: self.text[cut..].to_string(), controls })
    }
}

impl std::fmt::Display for ChatText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}
