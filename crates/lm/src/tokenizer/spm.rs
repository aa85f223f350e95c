//! SentencePiece tokenization as llama.cpp runs it for GGUF files whose `tokenizer.ggml.model` is
//! `"llama"` (Llama 2, Mistral, TinyLlama, Gemma and most GGUFs in the wild).
//!
//! Such a file keeps no merges, only each token's text, score and type, so the `tokenizers` crate has no
//! model for it as it stands. This is llama.cpp's `llm_tokenizer_spm`: spaces become `▁` (U+2581), a `▁` is
//! put in front when `tokenizer.ggml.add_space_prefix` says so, and then adjacent symbols are merged,
//! highest-scoring merged token first (leftmost on ties), starting from single characters; a character
//! that no token spells becomes its UTF-8 bytes as `<0xXX>` tokens. Tokens of type user-defined are cut
//! out of the text whole before that, as llama.cpp and HF do (in the escaped text, as SentencePiece does,
//! so Gemma's space-run tokens also match a typed `▁`). Two choices follow SentencePiece where llama.cpp
//! is looser: a merge may only produce a normal or user-defined token, so no spelling of `<s>` or `<0x41>`
//! becomes that token, and control tokens are never produced here at all: text is only text (see
//! [`crate::tokenizer`] for where control tokens come from).

use super::chat::Matcher;
use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};
use std::collections::{BinaryHeap, HashMap};

/// `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`, SentencePiece's piece types).
pub const NORMAL: i32 = 1;
pub const UNKNOWN: i32 = 2;
pub const CONTROL: i32 = 3;
pub const USER_DEFINED: i32 = 4;
pub const BYTE: i32 = 6;

const SPACE: char = '\u{2581}';

pub(crate) struct Spm {
    pieces: Vec<String>,
    scores: Vec<f32>,
    types: Vec<i32>,
    /// Text → id of every token (the last one wins when two share a text, as in llama.cpp).
    ids: HashMap<String, u32>,
    /// `<0xXX>` tokens by byte value.
    bytes: Vec<Option<u32>>,
    unk: Option<u32>,
    add_space_prefix: bool,
    user_defined: Matcher,
}

/// A symbol of the text being merged: a byte range, linked to its neighbours (`usize::MAX` = none).
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: usize,
    next: usize,
}

const NONE: usize = usize::MAX;

/// A candidate merge of two adjacent symbols; the heap pops the highest score, then the leftmost.
#[derive(PartialEq)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl Eq for Bigram {}

impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.score.total_cmp(&other.score).then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

fn parse_byte_token(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

impl Spm {
    pub fn new(
        pieces: Vec<String>,
        scores: Vec<f32>,
        types: Vec<i32>,
        unk: Option<u32>,
        add_space_prefix: bool,
    ) -> Result<Self> {
        let n = pieces.len();
        if scores.len() != n {
            bail!("tokenizer.ggml.scores has {} entries for {n} tokens; a SentencePiece vocabulary needs one score per token", scores.len());
        }
        let types = if types.is_empty() { vec![NORMAL; n] } else { types };
        if types.len() != n {
            bail!("tokenizer.ggml.token_type has {} entries for {n} tokens", types.len());
        }
        let mut ids = HashMap::with_capacity(n);
        let mut bytes = vec![None; 256];
        for (i, p) in pieces.iter().enumerate() {
            ids.insert(p.clone(), i as u32);
            if types[i] == BYTE {
                let b = parse_byte_token(p)
                    .ok_or_else(|| anyhow!("token {i} {p:?} has the byte type but is not <0xXX>"))?;
                bytes[b as usize] = Some(i as u32);
            }
        }
        if let Some(u) = unk.filter(|&u| u as usize >= n) {
            bail!("tokenizer.ggml.unknown_token_id = {u} is outside the vocabulary of {n}");
        }
        let user_defined = Matcher::new(
            pieces
                .iter()
                .enumerate()
                .filter(|(i, _)| types[*i] == USER_DEFINED)
                .map(|(i, p)| (p.replace(' ', "\u{2581}"), i as u32)),
        );
        Ok(Self { pieces, scores, types, ids, bytes, unk, add_space_prefix, user_defined })
    }

    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    pub fn piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(String::as_str)
    }

    pub fn token_to_id(&self, tok: &str) -> Option<u32> {
        self.ids.get(tok).copied()
    }

    /// Control and unknown tokens: the ones only a chat template may write.
    pub fn control_tokens(&self) -> impl Iterator<Item = (String, u32)> + '_ {
        self.pieces
            .iter()
            .enumerate()
            .filter(|(i, _)| matches!(self.types[*i], CONTROL | UNKNOWN))
            .map(|(i, p)| (p.clone(), i as u32))
    }

    /// The id of a token a merge may produce: SentencePiece merges only into normal and user-defined
    /// pieces, so no spelling of `<s>` or `<0x41>` in a text ever becomes that token.
    fn mergeable(&self, text: &str) -> Option<u32> {
        let id = *self.ids.get(text)?;
        matches!(self.types[id as usize], NORMAL | USER_DEFINED).then_some(id)
    }

    /// Appends the tokens of `text` (ordinary text: no BOS, no control tokens). The text counts as
    /// starting after a token, so it gets the space prefix, as does each stretch after a user-defined token
    /// (llama.cpp's `is_prev_special`).
    pub fn encode(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        // User-defined tokens are found in the escaped text, as SentencePiece does: Gemma's runs of spaces
        // then also match a `▁` typed as such, as they do in SentencePiece and in transformers.
        let text: String = text.chars().map(|c| if c == ' ' { SPACE } else { c }).collect();
        let mut pos = 0;
        for m in self.user_defined.find_iter(&text) {
            self.encode_fragment(&text[pos..m.start], out)?;
            out.push(m.id);
            pos = m.end;
        }
        self.encode_fragment(&text[pos..], out)
    }

    fn encode_fragment(&self, escaped: &str, out: &mut Vec<u32>) -> Result<()> {
        match (escaped.is_empty(), self.add_space_prefix) {
            (true, _) => Ok(()),
            (false, true) => self.merge(&format!("{SPACE}{escaped}"), out),
            (false, false) => self.merge(escaped, out),
        }
    }

    /// llama.cpp's `llm_tokenizer_spm_session::tokenize` on an escaped fragment.
    fn merge(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        let starts: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        let n = starts.len();
        let mut syms: Vec<Symbol> = (0..n)
            .map(|i| Symbol {
                start: starts[i],
                len: starts.get(i + 1).copied().unwrap_or(text.len()) - starts[i],
                prev: if i == 0 { NONE } else { i - 1 },
                next: if i + 1 == n { NONE } else { i + 1 },
            })
            .collect();
        let mut heap = BinaryHeap::new();
        let try_add = |syms: &[Symbol], heap: &mut BinaryHeap<Bigram>, left: usize, right: usize| {
            if left == NONE || right == NONE {
                return;
            }
            let (l, r) = (syms[left], syms[right]);
            let piece = &text[l.start..r.start + r.len];
            if let Some(id) = self.mergeable(piece) {
                heap.push(Bigram { score: self.scores[id as usize], left, right, size: piece.len() });
            }
        };
        for i in 1..n {
            try_add(&syms, &mut heap, i - 1, i);
        }
        while let Some(b) = heap.pop() {
            let (l, r) = (syms[b.left], syms[b.right]);
            // A stale candidate: one side was merged into something else since it was queued.
            if l.len == 0 || r.len == 0 || l.len + r.len != b.size {
                continue;
            }
            syms[b.left].len += r.len;
            syms[b.left].next = r.next;
            syms[b.right].len = 0;
            if r.next != NONE {
                syms[r.next].prev = b.left;
            }
            try_add(&syms, &mut heap, syms[b.left].prev, b.left);
            try_add(&syms, &mut heap, b.left, syms[b.left].next);
        }
        let mut i = if n == 0 { NONE } else { 0 };
        while i != NONE {
            let s = syms[i];
            let piece = &text[s.start..s.start + s.len];
            match self.mergeable(piece) {
                Some(id) => out.push(id),
                // Only single characters can be left unmatched: merges always produce tokens.
                None => {
                    for &b in piece.as_bytes() {
                        match self.bytes[b as usize].or(self.unk) {
                            Some(id) => out.push(id),
                            None => bail!(
                                "{piece:?} is not in the vocabulary, which has no <0x{b:02X}> byte token and no unknown token"
                            ),
                        }
                    }
                }
            }
            i = s.next;
        }
        Ok(())
    }

    /// Text of `ids`: `▁` is a space, byte tokens are reassembled into UTF-8, control and unknown tokens
    /// are dropped when `skip_special`, and the space the prefix added is taken off again.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            // Ids past the vocabulary (a model's padded embedding rows) have no text, as in HF.
            let Some(p) = self.pieces.get(id as usize) else { continue };
            match self.types[id as usize] {
                BYTE => bytes.extend(parse_byte_token(p)),
                CONTROL | UNKNOWN if skip_special => {}
                CONTROL | UNKNOWN | USER_DEFINED => bytes.extend_from_slice(p.as_bytes()),
                _ => {
                    for c in p.chars() {
                        let c = if c == SPACE { ' ' } else { c };
                        bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                    }
                }
            }
        }
        let s = String::from_utf8_lossy(&bytes).into_owned();
        match s.strip_prefix(' ') {
            Some(rest) if self.add_space_prefix => rest.to_string(),
            _ => s,
        }
    }

    /// The same tokenizer as an HF `tokenizer.json` (what `transformers` builds from such a GGUF): a BPE
    /// whose merges are every split of a token into two tokens, best score first, with byte fallback.
    /// Written when a model is saved as an HF directory, so the saved model tokenizes as this one does.
    pub fn to_hf_json(&self, post_processor: Value) -> Value {
        let mut merges: Vec<(f32, u32, usize)> = Vec::new();
        for (id, p) in self.pieces.iter().enumerate() {
            if !matches!(self.types[id], NORMAL | USER_DEFINED) {
                continue;
            }
            for (at, _) in p.char_indices().skip(1) {
                if self.mergeable(&p[..at]).is_some() && self.mergeable(&p[at..]).is_some() {
                    merges.push((self.scores[id], id as u32, at));
                }
            }
        }
        merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        // A user-defined token with a space in it (Gemma's runs of spaces) is spelled with `▁` and matched
        // in the normalized text, where a `▁` typed as such matches it too, as in `Spm::encode`.
        let spelled = |i: usize| match self.types[i] {
            USER_DEFINED => self.pieces[i].replace(' ', "\u{2581}"),
            _ => self.pieces[i].clone(),
        };
        let spell = |p: &str| self.ids.get(p).map_or_else(|| p.to_string(), |&i| spelled(i as usize));
        let merges: Vec<Value> = merges
            .iter()
            .map(|&(_, id, at)| {
                let p = &self.pieces[id as usize];
                json!([spell(&p[..at]), spell(&p[at..])])
            })
            .collect();
        let vocab: serde_json::Map<String, Value> = (0..self.len()).map(|i| (spelled(i), json!(i))).collect();
        let added: Vec<Value> = (0..self.len())
            .filter(|&i| matches!(self.types[i], CONTROL | UNKNOWN | USER_DEFINED))
            .map(|i| {
                let content = spelled(i);
                json!({"id": i, "single_word": false, "lstrip": false, "rstrip": false,
                    "normalized": content != self.pieces[i], "special": self.types[i] != USER_DEFINED,
                    "content": content})
            })
            .collect();
        let replace_space = json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
        let normalizer = if self.add_space_prefix {
            json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u{2581}"}, replace_space]})
        } else {
            replace_space
        };
        let mut decoders = vec![
            json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
            json!({"type": "ByteFallback"}),
            json!({"type": "Fuse"}),
        ];
        if self.add_space_prefix {
            decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
        }
        json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": added,
            "normalizer": normalizer,
            "pre_tokenizer": null,
            "post_processor": post_processor,
            "decoder": {"type": "Sequence", "decoders": decoders},
            "model": {"type": "BPE", "dropout": null, "unk_token": self.unk.map(|u| self.pieces[u as usize].clone()),
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
                "byte_fallback": true, "ignore_merges": false, "vocab": vocab, "merges": merges},
        })
    }
}
