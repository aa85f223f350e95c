//! The prompt pool: source texts cut to openings of a few tokens (the paper's IMDB prompts are the first
//! 8–16 tokens of a review), split once into acquisition and held-out evaluation prompts. The pool is made
//! once per run and stored, so a resumed run draws from exactly the same prompts.

use crate::config::ActiveConfig;
use crate::seed::rng_for;
use crate::seed::stream::{POOL_CUT, POOL_SHUFFLE};
use anyhow::{bail, Context as _, Result};
use lm::Tokenizer;
use rand::seq::SliceRandom;
use rand::Rng;
use std::path::Path;

/// Reads source texts: the movie snippets (`snippets`, TAB-separated with ratings), a `.jsonl` file with a
/// `prompt` or `text` field per line, or a text file with one text per line.
pub fn read_texts(path: &Path) -> Result<Vec<String>> {
    let name = path.to_string_lossy();
    if name.ends_with("_GroundTruth.txt") {
        return Ok(oracle::snippets::read(path)?.into_iter().map(|s| s.text).collect());
    }
    let raw = std::fs::read(path).with_context(|| format!("reading prompts from {}", path.display()))?;
    let text = String::from_utf8(raw).map_err(|e| {
        anyhow::anyhow!("{}: not UTF-8 (first bad byte at offset {})", path.display(), e.utf8_error().valid_up_to())
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if name.ends_with(".jsonl") {
            let v: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("{}:{}: not valid JSON", path.display(), i + 1))?;
            let t =
                v.get("prompt").or_else(|| v.get("text")).and_then(|t| t.as_str()).with_context(|| {
                    format!("{}:{}: expected a string field `prompt` or `text`", path.display(), i + 1)
                })?;
            out.push(t.to_string());
        } else {
            out.push(line.to_string());
        }
    }
    Ok(out)
}

/// (train, eval) prompts as (text, tokens). Errors before any work if the pool is too small for the config.
pub type Pool = (Vec<(String, Vec<u32>)>, Vec<(String, Vec<u32>)>);

pub fn build_pool(cfg: &ActiveConfig, tok: &Tokenizer, texts: &[String], source: &Path) -> Result<Pool> {
    let p = &cfg.prompts;
    let mut seen = std::collections::HashSet::new();
    let mut prompts = Vec::new();
    // The split seed, not the run seed: all runs of an experiment share the pool and the held-out prompts.
    let split = cfg.eval.split_seed;
    let mut rng = rng_for(split, &[POOL_CUT]);
    let mut too_short = 0;
    for t in texts {
        if !seen.insert(t.as_str()) {
            continue;
        }
        let ids = tok.encode_plain(t)?;
        if ids.len() < p.min_source_tokens.max(1) {
            too_short += 1;
            continue;
        }
        if p.max_tokens == 0 {
            // Whole texts keep their exact wording (a preference file's prompts are looked up by it).
            prompts.push((t.clone(), ids));
            continue;
        }
        let keep = rng.random_range(p.min_tokens.max(1)..=p.max_tokens);
        let ids = ids[..keep.min(ids.len())].to_vec();
        prompts.push((tok.decode(&ids, false)?, ids));
    }
    // Each label needs its own prompt; larger draws (entropy, certainty) may repeat prompts.
    let need_train = cfg.max_labels_per_round();
    let need = cfg.eval.prompts + need_train;
    if prompts.len() < need {
        bail!(
            "{}: {} usable prompts ({} texts, {} shorter than prompts.min_source_tokens = {}); this config needs at \
             least {} ({} held out for evaluation + {}, the most labels one round acquires)",
            source.display(),
            prompts.len(),
            texts.len(),
            too_short,
            p.min_source_tokens,
            need,
            cfg.eval.prompts,
            need_train,
        );
    }
    prompts.shuffle(&mut rng_for(split, &[POOL_SHUFFLE]));
    let eval = prompts.split_off(prompts.len() - cfg.eval.prompts);
    Ok((prompts, eval))
}
