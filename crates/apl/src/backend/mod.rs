//! Where the loop samples and scores (`[policy] backend`): in this process on candle (`local`, the default), or
//! on an OpenAI-compatible server that users already run for generation (`openai`: vLLM, SGLang-class servers,
//! or `activepref serve --openai --allow-lora-loading`).
//!
//! Two traits, one per concept: a [`PolicyModel`] samples completions (with the temperature-1 log-prob of
//! each sampled token, the entropy estimate's quantity) and scores given completions; a [`PolicyBackend`]
//! hands out the starting model (π_ref) and the policy after a round. Acquisition and evaluation see only
//! these, so they run the same on either backend; training stays where it is (`dpo`), and the remote
//! backend gets each round's policy to the server as a PEFT LoRA adapter.

mod openai;

use crate::config::{ActiveConfig, PolicyBackendKind};
use crate::policy::load_policy;
use crate::run_dir::RunDir;
use anyhow::Result;
use dpo::train::LoraConfig;
use lm::sample::{generate, Sample, SampleParams};
use lm::{LanguageModel, Tokenizer};

pub use openai::{OpenAiBackend, RemoteModel};

/// One model the loop samples from and scores with.
pub trait PolicyModel: Sync {
    /// One completion per prompt, `lengths[i]` capping row i, each row with its own random stream
    /// (`lm::sample::row_rng(params.seed, i)`), so batching does not change what is drawn; `progress` gets the
    /// number of rows done.
    fn generate(
        &self,
        prompts: &[Vec<u32>],
        params: &SampleParams,
        lengths: Option<&[usize]>,
        batch_size: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<Sample>>;

    /// The summed temperature-1 log-prob of each completion after its prompt.
    fn score(
        &self,
        items: &[(Vec<u32>, Vec<u32>)],
        batch_size: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<f64>>;

    /// The tokenizer the token ids belong to.
    fn tokenizer(&self) -> &Tokenizer;
}

impl PolicyModel for LanguageModel {
    fn generate(
        &self,
        prompts: &[Vec<u32>],
        params: &SampleParams,
        lengths: Option<&[usize]>,
        batch_size: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<Sample>> {
        generate(self, prompts, params, lengths, batch_size, 0, progress)
    }

    fn score(
        &self,
        items: &[(Vec<u32>, Vec<u32>)],
        batch_size: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<f64>> {
        Ok(lm::score::score_all(self, items, batch_size, progress)?.into_iter().map(|(s, _)| s).collect())
    }

    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
}

/// Hands out the models of a run.
pub trait PolicyBackend {
    /// The starting model, π_ref.
    fn reference(&self) -> &dyn PolicyModel;
    /// The policy after `round` rounds (0 = the starting model), ready to sample and score.
    fn policy(&self, round: usize) -> Result<Box<dyn PolicyModel + '_>>;
}

/// In this process: each round's policy is the starting model with the round's trained tensors merged.
pub struct LocalBackend<'a> {
    pub base: &'a LanguageModel,
    pub lora: Option<&'a LoraConfig>,
    pub dir: &'a RunDir,
}

impl PolicyBackend for LocalBackend<'_> {
    fn reference(&self) -> &dyn PolicyModel {
        self.base
    }

    fn policy(&self, round: usize) -> Result<Box<dyn PolicyModel + '_>> {
        Ok(Box::new(load_policy(self.base, self.lora, self.dir, round)?))
    }
}

/// The run's backend, as its config says; the remote one is checked against its server first (log-prob
/// support and semantics).
pub fn open<'a>(
    cfg: &'a ActiveConfig,
    base: &'a LanguageModel,
    dir: &'a RunDir,
) -> Result<Box<dyn PolicyBackend + 'a>> {
    Ok(match cfg.policy.backend {
        PolicyBackendKind::Local => Box::new(LocalBackend { base, lora: cfg.train.lora.as_ref(), dir }),
        PolicyBackendKind::Openai => Box::new(OpenAiBackend::connect(cfg, base, dir)?),
    })
}
