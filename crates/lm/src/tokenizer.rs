//! Tokenizers: an HF `tokenizer.json`; one rebuilt from the vocabulary, merges and pre-tokenizer name
//! embedded in a GGUF byte-level BPE; or a GGUF SentencePiece vocabulary (`spm`); plus chat templates
//! (Jinja, rendered with minijinja).
//!
//! Control tokens (`<|im_end|>`, `<start_of_turn>`, BOS/EOS) are never read from text: [`Tokenizer::encode`]
//! and [`Tokenizer::encode_plain`] spell a text that contains `<|im_end|>` with ordinary tokens, so no
//! prompt, completion or judged answer can close a turn or speak as another role. Only the scaffolding a
//! chat template writes becomes control tokens ([`Tokenizer::render_chat`], [`Tokenizer::encode_chat_text`],
//! and `chat` for how). User-defined tokens (type 4, HF's non-special added tokens) are plain vocabulary and
//! are matched anywhere, as in HF and llama.cpp.

mod chat;
mod spm;

pub use chat::ChatText;

use anyhow::{anyhow, bail, Context as _, Result};
use chat::Matcher;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// A tokenizer with the special-token facts the sampler and the trainer need.
#[derive(Clone)]
pub struct Tokenizer {
    backend: Backend,
    /// The control tokens a chat template may write, by text.
    controls: Arc<Matcher>,
    /// HF added tokens that swallow the whitespace on their left / right (`lstrip`, `rstrip`).
    strips: Arc<HashMap<u32, (bool, bool)>>,
    /// Whether [`Tokenizer::encode`] puts the BOS token first.
    adds_bos: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// Used only to fill batches; always masked out.
    pub pad_token_id: u32,
    pub chat_template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

#[derive(Clone)]
enum Backend {
    /// Built with control-token matching off (`encode_special_tokens`): HF matches added special tokens
    /// inside any text otherwise.
    Hf(Box<tokenizers::Tokenizer>),
    Spm(Arc<spm::Spm>),
}

/// Regexes of the pre-tokenizers named in GGUF `tokenizer.ggml.pre` (as in llama.cpp).
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_PATTERN: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

fn split(pattern: &str) -> Value {
    json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false})
}

/// Facts read from GGUF metadata that describe a tokenizer: a byte-level BPE (`model = "gpt2"`: merges and
/// a pre-tokenizer name) or SentencePiece (`model = "llama"`: scores and token types).
#[derive(Debug, Clone)]
pub struct GgufVocab {
    pub model: String,
    pub pre: String,
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    pub token_types: Vec<i32>,
    pub merges: Vec<String>,
    /// `tokenizer.ggml.scores` (SentencePiece: higher merges first).
    pub scores: Vec<f32>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub pad: Option<u32>,
    pub unk: Option<u32>,
    pub add_bos: bool,
    /// `tokenizer.ggml.add_space_prefix` (SentencePiece: a `▁` before the text, as `add_dummy_prefix`).
    pub add_space_prefix: bool,
    pub chat_template: Option<String>,
}

/// HF's post-processor that puts the BOS token before a text.
fn bos_template(bos_tok: &str, bos: u32) -> Value {
    json!({"type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos_tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": bos_tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {bos_tok: {"id": bos_tok, "ids": [bos], "tokens": [bos_tok]}}})
}

impl Tokenizer {
    /// The tokenizer a GGUF vocabulary describes: SentencePiece for `"llama"`, the equivalent HF tokenizer
    /// for a `"gpt2"` byte-level BPE.
    pub fn from_gguf_vocab(v: GgufVocab) -> Result<Self> {
        match v.model.as_str() {
            "gpt2" => Self::from_gguf_bpe(v),
            "llama" => Self::from_gguf_spm(v),
            other => bail!(
                "tokenizer.ggml.model = {other:?} is not supported (expected \"gpt2\", a byte-level BPE, or \
                 \"llama\", SentencePiece); convert the model to an HF directory with a tokenizer.json instead"
            ),
        }
    }

    fn from_gguf_spm(v: GgufVocab) -> Result<Self> {
        let spm = spm::Spm::new(v.tokens, v.scores, v.token_types, v.unk, v.add_space_prefix)?;
        let piece = |id: Option<u32>| id.and_then(|i| spm.piece(i).map(str::to_string));
        let (bos_token, eos_token) = (piece(v.bos), piece(v.eos));
        let controls = Matcher::new(spm.control_tokens());
        Ok(Self {
            adds_bos: v.add_bos && v.bos.is_some(),
            backend: Backend::Spm(Arc::new(spm)),
            controls: Arc::new(controls),
            strips: Arc::default(),
            bos_token_id: v.bos,
            eos_token_ids: v.eos.into_iter().collect(),
            pad_token_id: v.pad.or(v.eos).unwrap_or(0),
            chat_template: v.chat_template,
            bos_token,
            eos_token,
        })
    }

    /// Builds the equivalent HF tokenizer for a GGUF byte-level BPE vocabulary.
    fn from_gguf_bpe(v: GgufVocab) -> Result<Self> {
        let pre_tokenizer = match v.pre.as_str() {
            "gpt2" | "default" | "" => byte_level(true),
            // SmolLM splits digits one by one before the GPT-2 pattern.
            "smollm" | "starcoder" | "refact" => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
            "llama-bpe" | "llama3" | "smaug-bpe" => {
                json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_PATTERN), byte_level(false)]})
            }
            "qwen2" | "deepseek-r1-qwen" => {
                json!({"type": "Sequence", "pretokenizers": [split(QWEN2_PATTERN), byte_level(false)]})
            }
            other => {
                bail!("tokenizer.ggml.pre = {other:?} is not supported (expected gpt2, smollm, llama-bpe or qwen2)")
            }
        };
        let mut vocab = serde_json::Map::new();
        let mut added = Vec::new();
        for (i, tok) in v.tokens.iter().enumerate() {
            vocab.insert(tok.clone(), json!(i));
            // 3 = control, 4 = user-defined: matched before BPE, like HF's added tokens.
            let ty = v.token_types.get(i).copied().unwrap_or(1);
            if ty == 3 || ty == 4 {
                added.push(json!({"id": i, "content": tok, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": ty == 3}));
            }
        }
        let bos_tok = v.bos.and_then(|b| v.tokens.get(b as usize).cloned());
        let post_processor = match (&bos_tok, v.bos, v.add_bos) {
            (Some(t), Some(b), true) => bos_template(t, b),
            _ => Value::Null,
        };
        let tj = json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": post_processor,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": v.merges},
        });
        let inner = tokenizers::Tokenizer::from_bytes(serde_json::to_vec(&tj)?)
            .map_err(|e| anyhow!("building the tokenizer from GGUF metadata: {e}"))?;
        let eos_tok = v.eos.and_then(|e| v.tokens.get(e as usize).cloned());
        Ok(Self::from_hf(
            inner,
            v.bos,
            v.eos.into_iter().collect(),
            v.pad.or(v.eos).unwrap_or(0),
            v.chat_template,
            bos_tok,
            eos_tok,
        ))
    }

    /// Wraps an HF tokenizer: control-token matching off in text, the control tokens noted for templates.
    fn from_hf(
        mut inner: tokenizers::Tokenizer,
        bos_token_id: Option<u32>,
        eos_token_ids: Vec<u32>,
        pad_token_id: u32,
        chat_template: Option<String>,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Self {
        inner.set_encode_special_tokens(true);
        let added = inner.get_added_tokens_decoder();
        let special = added.iter().filter(|(_, t)| t.special);
        let controls = Matcher::new(special.clone().map(|(&id, t)| (t.content.clone(), id)));
        let strips = special.filter(|(_, t)| t.lstrip || t.rstrip).map(|(&id, t)| (id, (t.lstrip, t.rstrip))).collect();
        // Whether the post-processor puts BOS first: compare a text's ids with and without it.
        let adds_bos = bos_token_id.is_some_and(|b| {
            let ids = |special| inner.encode("a", special).map(|e| e.get_ids().to_vec()).unwrap_or_default();
            let (with, without) = (ids(true), ids(false));
            with.first() == Some(&b) && without.first() != Some(&b)
        });
        Self {
            backend: Backend::Hf(Box::new(inner)),
            controls: Arc::new(controls),
            strips: Arc::new(strips),
            adds_bos,
            bos_token_id,
            eos_token_ids,
            pad_token_id,
            chat_template,
            bos_token,
            eos_token,
        }
    }

    /// A byte-level tokenizer with no merges for random test and benchmark models: ids 0–255 are the
    /// bytes (GPT-2's byte-to-unicode alphabet), 256 is `<|endoftext|>` (BOS, EOS and pad), the rest up to
    /// `vocab_size` are unused fillers.
    pub fn byte_level_for_tests(vocab_size: usize) -> Result<Self> {
        Self::from_gguf_vocab(Self::byte_level_test_vocab(vocab_size)?)
    }

    /// The GGUF description of [`Tokenizer::byte_level_for_tests`] (for writing test GGUF files).
    pub fn byte_level_test_vocab(vocab_size: usize) -> Result<GgufVocab> {
        if vocab_size < 257 {
            bail!("a byte-level test tokenizer needs vocab_size ≥ 257, got {vocab_size}");
        }
        let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
        let mut cs = bs.clone();
        let mut n = 0;
        for b in 0..256u32 {
            if !bs.contains(&b) {
                bs.push(b);
                cs.push(256 + n);
                n += 1;
            }
        }
        let mut byte_char = vec![' '; 256];
        for (b, c) in bs.iter().zip(&cs) {
            byte_char[*b as usize] = char::from_u32(*c).unwrap();
        }
        let mut tokens: Vec<String> = byte_char.iter().map(|c| c.to_string()).collect();
        tokens.push("<|endoftext|>".into());
        for i in tokens.len()..vocab_size {
            tokens.push(format!("<|unused_{i}|>"));
        }
        let mut token_types = vec![1; 256];
        token_types.resize(vocab_size, 3);
        Ok(GgufVocab {
            model: "gpt2".into(),
            pre: "gpt2".into(),
            tokens,
            token_types,
            merges: vec![],
            scores: vec![],
            bos: Some(256),
            eos: Some(256),
            pad: Some(256),
            unk: None,
            add_bos: false,
            add_space_prefix: false,
            chat_template: Some(
                "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}".into(),
            ),
        })
    }

    /// Loads `tokenizer.json` (and `tokenizer_config.json` if present) from an HF model directory.
    pub fn from_hf_dir(dir: &Path, eos_from_config: &[u32], bos_from_config: Option<u32>) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            bail!("{}: missing; an HF model directory needs a tokenizer.json", path.display());
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| anyhow!("{}: not a valid tokenizer.json: {e}", path.display()))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Value = if cfg_path.exists() {
            let text = std::fs::read_to_string(&cfg_path).with_context(|| format!("reading {}", cfg_path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", cfg_path.display()))?
        } else {
            json!({})
        };
        let token_str = |key: &str| -> Option<String> {
            match cfg.get(key)? {
                Value::String(s) => Some(s.clone()),
                Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
                _ => None,
            }
        };
        let bos_token = token_str("bos_token");
        let eos_token = token_str("eos_token");
        let mut eos_ids: Vec<u32> = eos_from_config.to_vec();
        if let Some(id) = eos_token.as_deref().and_then(|t| inner.token_to_id(t)) {
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }
        let bos_id = bos_from_config.or_else(|| bos_token.as_deref().and_then(|t| inner.token_to_id(t)));
        let pad = token_str("pad_token").and_then(|t| inner.token_to_id(&t)).or(eos_ids.first().copied()).unwrap_or(0);
        let template = cfg.get("chat_template").and_then(Value::as_str).map(str::to_string);
        Ok(Self::from_hf(inner, bos_id, eos_ids, pad, template, bos_token, eos_token))
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join("tokenizer.json");
        match &self.backend {
            Backend::Hf(t) => t.save(&path, false).map_err(|e| anyhow!("writing {}: {e}", path.display()))?,
            Backend::Spm(spm) => {
                let post = match (&self.bos_token, self.bos_token_id, self.adds_bos) {
                    (Some(t), Some(b), true) => bos_template(t, b),
                    _ => Value::Null,
                };
                std::fs::write(&path, serde_json::to_vec(&spm.to_hf_json(post))?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        let cfg = json!({
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "chat_template": self.chat_template,
            "tokenizer_class": "PreTrainedTokenizerFast",
        });
        let path = dir.join("tokenizer_config.json");
        std::fs::write(&path, serde_json::to_string_pretty(&cfg)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Token ids of `text`, with a BOS first if the model wants one. `text` is only text: a control
    /// token spelled in it is tokenized as ordinary characters.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match &self.backend {
            Backend::Hf(t) => {
                let enc = t.encode(text, true).map_err(|e| anyhow!("tokenizing {text:?}: {e}"))?;
                Ok(enc.get_ids().to_vec())
            }
            Backend::Spm(_) => {
                let mut ids: Vec<u32> = self.bos_token_id.filter(|_| self.adds_bos).into_iter().collect();
                self.encode_piece(text, &mut ids)?;
                Ok(ids)
            }
        }
    }

    /// Token ids of `text` without any added special tokens (for completions appended to a prompt); as
    /// in [`Tokenizer::encode`], no control token is read from the text.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        self.encode_piece(text, &mut ids)?;
        Ok(ids)
    }

    /// Appends the ids of ordinary text (no BOS, no control tokens).
    fn encode_piece(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        match &self.backend {
            Backend::Hf(t) => {
                let enc = t.encode(text, false).map_err(|e| anyhow!("tokenizing {text:?}: {e}"))?;
                out.extend_from_slice(enc.get_ids());
                Ok(())
            }
            Backend::Spm(spm) => spm.encode(text, out).with_context(|| format!("tokenizing {text:?}")),
        }
    }

    /// Token ids of a rendered chat template: the control tokens the template wrote as their ids, the
    /// rest (message text included) as ordinary text. With `add_bos`, the BOS goes first when the model
    /// wants one and the template did not write it (HF's `apply_chat_template(tokenize=True)` is
    /// `add_bos = false`: the template is trusted to write it).
    pub fn encode_chat_text(&self, chat: &ChatText, add_bos: bool) -> Result<Vec<u32>> {
        let text = chat.as_str();
        let mut ids = Vec::new();
        let mut pos = 0;
        for m in &chat.controls {
            let (lstrip, rstrip) = self.strips.get(&m.id).copied().unwrap_or_default();
            let before = &text[pos.min(m.start)..m.start];
            self.encode_piece(if lstrip { before.trim_end() } else { before }, &mut ids)?;
            ids.push(m.id);
            pos = m.end;
            if rstrip {
                pos += text[pos..].len() - text[pos..].trim_start().len();
            }
        }
        self.encode_piece(&text[pos.min(text.len())..], &mut ids)?;
        if let Some(bos) = self.bos_token_id.filter(|_| add_bos && self.adds_bos) {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        Ok(ids)
    }

    /// Renders `messages` with the chat template and tokenizes them ([`Tokenizer::render_chat`], then
    /// [`Tokenizer::encode_chat_text`] with `add_bos`): a conversation's prompt ids.
    pub fn encode_chat(&self, messages: &Value, add_generation_prompt: bool, add_bos: bool) -> Result<Vec<u32>> {
        self.encode_chat_text(&self.render_chat(messages, add_generation_prompt)?, add_bos)
    }

    /// Text of `ids`; special tokens are dropped when `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        match &self.backend {
            Backend::Hf(t) => t.decode(ids, skip_special).map_err(|e| anyhow!("decoding {} tokens: {e}", ids.len())),
            Backend::Spm(spm) => Ok(spm.decode(ids, skip_special)),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match &self.backend {
            Backend::Hf(t) => t.get_vocab_size(true),
            Backend::Spm(spm) => spm.len(),
        }
    }

    pub fn token_to_id(&self, tok: &str) -> Option<u32> {
        match &self.backend {
            Backend::Hf(t) => t.token_to_id(tok),
            Backend::Spm(spm) => spm.token_to_id(tok),
        }
    }

    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_token_ids.contains(&id)
    }

    /// Renders `messages` (`[{role, content}]`) with the model's chat template, as text (for showing; to
    /// tokenize a conversation use [`Tokenizer::render_chat`] or [`Tokenizer::encode_chat`]).
    pub fn apply_chat_template(&self, messages: &Value, add_generation_prompt: bool) -> Result<String> {
        Ok(self.render_chat(messages, add_generation_prompt)?.text)
    }

    /// Renders `messages` with the model's chat template, keeping track of which control tokens the
    /// template wrote: every string in `messages` is the caller's text and never yields one.
    pub fn render_chat(&self, messages: &Value, add_generation_prompt: bool) -> Result<ChatText> {
        let mut literals = Vec::new();
        let masked = chat::mask_messages(messages, &self.controls, &mut literals)?;
        let rendered = self.render_template(&masked, add_generation_prompt)?;
        Ok(ChatText::unmask(&rendered, &self.controls, &literals))
    }

    fn render_template(&self, messages: &Value, add_generation_prompt: bool) -> Result<String> {
        let template = self.chat_template.as_deref().ok_or_else(|| {
            anyhow!("the model has no chat template (tokenizer_config.json or GGUF tokenizer.chat_template)")
        })?;
        if chat::uses_placeholders(template) {
            bail!(
                "the chat template uses characters U+F0000–U+FFFFD, which the tokenizer reserves for masking messages"
            );
        }
        let mut env = minijinja::Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_template("chat", template).context("parsing the chat template")?;
        let tmpl = env.get_template("chat")?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
        })
        .context("rendering the chat template")
    }
}
