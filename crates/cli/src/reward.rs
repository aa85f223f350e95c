//! `activepref reward train`: a Bradley–Terry reward head on the LM, fitted from preference labels (e.g. a
//! run's `labels.jsonl`), usable as an oracle (`oracle.kind = "reward"`).

use crate::ModelArgs;
use anyhow::{bail, Result};
use apl::reward::{accuracy, fit, pair_diffs, save, RewardInfo, RewardTrainConfig};
use clap::Args;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::PathBuf;

#[derive(Args)]
pub struct RewardTrainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Preference pairs (TRL JSONL or .parquet: prompt/chosen/rejected), e.g. a run's labels.jsonl
    #[arg(long)]
    pub data: PathBuf,
    /// Output directory: reward_head.safetensors and reward.json
    #[arg(long)]
    pub out: PathBuf,
    /// Fraction of pairs held out to measure accuracy
    #[arg(long, default_value_t = 0.2)]
    pub held_out: f64,
    /// L2 penalty on the head
    #[arg(long, default_value_t = 1e-3)]
    pub l2: f64,
    /// Seed of the held-out split
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn train(a: RewardTrainArgs) -> Result<()> {
    if !(0.0..1.0).contains(&a.held_out) {
        bail!("--held-out {}: expected a fraction in [0, 1)", a.held_out);
    }
    let model = a.model.load()?;
    let (mut pairs, skipped) = dpo::data::read_preferences(&a.data, &model.tokenizer)?;
    if skipped.total() > 0 {
        eprintln!("{}", skipped.describe(&a.data));
    }
    pairs.shuffle(&mut rand::rngs::StdRng::seed_from_u64(a.seed));
    let n_held = (pairs.len() as f64 * a.held_out).round() as usize;
    let tok = &model.tokenizer;
    let ids = |p: &dpo::data::TextPair| -> Result<(Vec<u32>, Vec<u32>)> {
        match &p.chat {
            // A conversation's renderings: the template's scaffolding as control tokens, messages as text.
            Some(c) => {
                let prompt = tok.encode_chat_text(&c.prompt, false)?;
                let with = |completion| -> Result<Vec<u32>> {
                    Ok([prompt.clone(), tok.encode_chat_text(completion, false)?].concat())
                };
                Ok((with(&c.chosen)?, with(&c.rejected)?))
            }
            None => Ok((
                tok.encode_plain(&format!("{}{}", p.prompt, p.chosen))?,
                tok.encode_plain(&format!("{}{}", p.prompt, p.rejected))?,
            )),
        }
    };
    let (held, train) = pairs.split_at(n_held);
    let train: Vec<_> = train.iter().map(ids).collect::<Result<_>>()?;
    let held: Vec<_> = held.iter().map(ids).collect::<Result<_>>()?;
    if train.is_empty() {
        bail!("{}: no pairs left to train on after holding out {}", a.data.display(), n_held);
    }
    let cfg = RewardTrainConfig { l2: a.l2, ..Default::default() };
    let pb = crate::spinner(&format!("features of {} pairs", train.len() + held.len()));
    let d_train = pair_diffs(&model, &train, cfg.batch_size)?;
    let d_held = pair_diffs(&model, &held, cfg.batch_size)?;
    pb.set_message("fitting the head");
    let w = fit(&d_train, &cfg);
    pb.finish_and_clear();
    let info = RewardInfo {
        // Absolute, so the reward model loads from any working directory.
        model: match a.model.model.clone() {
            Some(p) => p,
            None => crate::assets::default_model()?,
        }
        .canonicalize()?
        .display()
        .to_string(),
        feature: "mean of the final hidden states over prompt + completion tokens".into(),
        train_pairs: train.len(),
        held_out_pairs: held.len(),
        train_accuracy: accuracy(&w, &d_train),
        held_out_accuracy: (!held.is_empty()).then(|| accuracy(&w, &d_held)),
        l2: a.l2,
    };
    save(&a.out, &w, &info)?;
    println!("{}", serde_json::to_string_pretty(&info)?);
    Ok(())
}
