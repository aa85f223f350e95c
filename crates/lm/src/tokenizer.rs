//! Tokenizers: an HF `tokenizer.json`, or one rebuilt from the vocabulary, merges and pre-tokenizer
//! name embedded in a GGUF file; plus chat templates (Jinja, rendered with minijinja).

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::{json, Value};
use std::path::Path;

/// A tokenizer with the special-token facts the sampler and the trainer need.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// Used only to fill batches; always masked out.
    pub pad_token_id: u32,
    pub chat_template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
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

/// Facts read from GGUF metadata that describe a byte-level BPE tokenizer.
#[derive(Debug, Clone)]
pub struct GgufVocab {
    pub model: String,
    pub pre: String,
    pub tokens: Vec<String>,
    pub token_types: Vec<i32>,
    pub merges: Vec<String>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub pad: Option<u32>,
    pub add_bos: bool,
    pub chat_template: Option<String>,
}

impl Tokenizer {
    /// Builds the equivalent HF tokenizer for a GGUF byte-level BPE vocabulary.
    pub fn from_gguf_vocab(v: GgufVocab) -> Result<Self> {
        if v.model != "gpt2" {
            bail!(
                "tokenizer.ggml.model = {:?} is not supported (expected \"gpt2\", a byte-level BPE); \
                 convert the model to an HF directory with a tokenizer.json instead",
                v.model
            );
        }
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
        let post_processor = match (&bos_tok, v.add_bos) {
            (Some(b), true) => json!({"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {b.clone(): {"id": b, "ids": [v.bos.unwrap()], "tokens": [b]}}}),
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
        Ok(Self {
            inner,
            bos_token_id: v.bos,
            eos_token_ids: v.eos.into_iter().collect(),
            pad_token_id: v.pad.or(v.eos).unwrap_or(0),
            chat_template: v.chat_template,
            bos_token: bos_tok,
            eos_token: eos_tok,
        })
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
            bos: Some(256),
            eos: Some(256),
            pad: Some(256),
            add_bos: false,
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
        Ok(Self {
            inner,
            bos_token_id: bos_id,
            eos_token_ids: eos_ids,
            pad_token_id: pad,
            chat_template: cfg.get("chat_template").and_then(Value::as_str).map(str::to_string),
            bos_token,
            eos_token,
        })
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join("tokenizer.json");
        self.inner.save(&path, false).map_err(|e| anyhow!("writing {}: {e}", path.display()))?;
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

    /// Token ids of `text`, with the tokenizer's own special tokens (a BOS if the model wants one).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, true).map_err(|e| anyhow!("tokenizing {text:?}: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of `text` without any added special tokens (for completions appended to a prompt).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| anyhow!("tokenizing {text:?}: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`; special tokens are dropped when `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(|e| anyhow!("decoding {} tokens: {e}", ids.len()))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, tok: &str) -> Option<u32> {
        self.inner.token_to_id(tok)
    }

    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_token_ids.contains(&id)
    }

    /// Renders `messages` (`[{role, content}]`) with the model's chat template.
    pub fn apply_chat_template(&self, messages: &Value, add_generation_prompt: bool) -> Result<String> {
        let template = self.chat_template.as_deref().ok_or_else(|| {
            anyhow!("the model has no chat template (tokenizer_config.json or GGUF tokenizer.chat_template)")
        })?;
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
