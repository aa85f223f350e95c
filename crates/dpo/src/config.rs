//! Every setting of a DPO run in one place: [`TrainConfig`] (TRL's `DPOConfig` names and defaults where it
//! has them) and [`LoraConfig`], read from TOML and checked before any model is touched.
//!
//! Why a file of its own: the configuration is read by the command line, the APL loop and the data loader
//! ([`crate::data::load_pairs`]) without any of them needing the trainer's loop, and its defaults are
//! easiest to review apart from the code that uses them.

use crate::kto::KtoLossType;
use crate::loss::{LossParams, LossType};
use crate::optim::{OptimizerParams, Schedule};
use anyhow::{anyhow, bail, Context as _, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// LoRA settings; `None` in [`TrainConfig::lora`] means full fine-tuning.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    /// Layer names (`q_proj`, `v_proj`, `c_attn`, ...) or `all-linear`.
    pub target_modules: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self { r: 16, alpha: 32.0, target_modules: vec!["all-linear".into()] }
    }
}

/// KTO settings (TRL 0.27.2's `KTOConfig` names and defaults, `trl/experimental/kto/kto_config.py:141-161`);
/// `Some` in [`TrainConfig::kto`] trains with [`crate::kto::KtoTrainer`] on unpaired data instead of DPO. β is
/// `loss.beta` (KTOConfig's `beta`, same default 0.1).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KtoConfig {
    /// `kto` (the paper's loss) or `apo_zero_unpaired` (APO-zero for unpaired data; no KL term).
    pub loss_type: KtoLossType,
    /// Weight of the desirable rows' losses (counter an imbalance of desirable and undesirable rows).
    pub desirable_weight: f64,
    /// Weight of the undesirable rows' losses.
    pub undesirable_weight: f64,
}

impl Default for KtoConfig {
    fn default() -> Self {
        Self { loss_type: KtoLossType::Kto, desirable_weight: 1.0, undesirable_weight: 1.0 }
    }
}

/// Every training setting, with defaults in one place (TRL's `DPOConfig` where it has one). Read from TOML.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Losses to sum (TRL `loss_type`), e.g. `["sigmoid"]` or `["sigmoid", "sft"]`.
    pub loss_type: Vec<LossType>,
    /// One weight per loss (default: all 1).
    pub loss_weights: Option<Vec<f64>>,
    pub loss: LossParams,
    pub learning_rate: f64,
    pub schedule: Schedule,
    pub warmup_steps: u64,
    pub epochs: usize,
    /// Pairs per micro-batch.
    pub batch_size: usize,
    pub gradient_accumulation_steps: usize,
    /// Clip the global gradient norm to this (0 or None = no clipping).
    pub max_grad_norm: Option<f64>,
    pub optimizer: OptimizerParams,
    /// Tokens of prompt + completion kept per sequence.
    pub max_length: usize,
    pub max_prompt_length: Option<usize>,
    pub truncation_mode: Truncation,
    /// Cache reference log-probs once per pair (no reference forward during training).
    pub precompute_ref_log_probs: bool,
    pub lora: Option<LoraConfig>,
    pub seed: u64,
    /// Write metrics every this many optimizer steps.
    pub logging_steps: u64,
    /// Save a checkpoint every this many optimizer steps (and always at the end).
    pub save_steps: Option<u64>,
    /// Stop after this many optimizer steps (the schedule still spans all epochs).
    pub max_steps: Option<u64>,
    /// TR-DPO (Gorbatovski et al. 2024): every `ref_model_sync_steps`, π_ref ← α π + (1 − α) π_ref.
    pub sync_ref_model: bool,
    pub ref_model_mixup_alpha: f64,
    pub ref_model_sync_steps: u64,
    /// KTO (`[kto]`): present = train on unpaired good/bad rows with [`crate::kto::KtoTrainer`].
    pub kto: Option<KtoConfig>,
    /// The dtype of the forward and backward passes: `f32`, or `bf16` (CUDA only) over f32 master weights and
    /// f32 optimizer state, as PyTorch's autocast trains.
    pub dtype: ComputeDtype,
}

/// `train.dtype`: what the passes compute in. The trainable weights and the optimizer's moments stay f32
/// either way; `bf16` casts the weights for each step and the gradients flow back through the cast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ComputeDtype {
    #[default]
    F32,
    Bf16,
}

impl ComputeDtype {
    /// The dtype the passes compute in on `device` (`None`: the weights' own, f32), or the error that names
    /// `train.dtype` where the device cannot take it. Callers check before any work, the trainer again.
    pub fn on(self, device: &candle_core::Device) -> Result<Option<candle_core::DType>> {
        match self {
            ComputeDtype::F32 => Ok(None),
            ComputeDtype::Bf16 if !device.is_cuda() => bail!(
                "train.dtype = \"bf16\" runs on CUDA only (--device cuda): on the CPU candle widens bf16 matrix \
                 products to f32, so it would be slower than f32; use dtype = \"f32\""
            ),
            ComputeDtype::Bf16 => Ok(Some(candle_core::DType::BF16)),
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            loss_type: vec![LossType::Sigmoid],
            loss_weights: None,
            loss: LossParams::default(),
            learning_rate: 1e-6,
            schedule: Schedule::Linear,
            warmup_steps: 0,
            epochs: 1,
            batch_size: 8,
            gradient_accumulation_steps: 1,
            max_grad_norm: Some(1.0),
            optimizer: OptimizerParams::default(),
            max_length: 1024,
            max_prompt_length: None,
            truncation_mode: Truncation::KeepStart,
            precompute_ref_log_probs: true,
            lora: None,
            seed: 42,
            logging_steps: 10,
            save_steps: None,
            max_steps: None,
            sync_ref_model: false,
            ref_model_mixup_alpha: 0.6,
            ref_model_sync_steps: 512,
            kto: None,
            dtype: ComputeDtype::F32,
        }
    }
}

impl TrainConfig {
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))
    }

    pub(crate) fn weighted_losses(&self) -> Result<Vec<(LossType, f64)>> {
        let w = match &self.loss_weights {
            Some(w) if w.len() != self.loss_type.len() => {
                bail!("loss_weights has {} entries for {} losses in loss_type", w.len(), self.loss_type.len())
            }
            Some(w) => w.clone(),
            None => vec![1.0; self.loss_type.len()],
        };
        Ok(self.loss_type.iter().copied().zip(w).collect())
    }

    pub(crate) fn needs_reference(&self) -> bool {
        self.loss_type.iter().any(|l| !l.reference_free())
    }

    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 || self.gradient_accumulation_steps == 0 || self.epochs == 0 {
            bail!("batch_size, gradient_accumulation_steps and epochs must be at least 1");
        }
        self.loss.validate(&self.loss_type)?;
        if self.sync_ref_model && self.precompute_ref_log_probs {
            bail!("sync_ref_model changes the reference during training; set precompute_ref_log_probs = false");
        }
        self.weighted_losses()?;
        match &self.kto {
            Some(k) => self.validate_kto(k),
            None => Ok(()),
        }
    }

    /// The `[kto]` run's own checks: its weights, a batch that has mismatched pairs for the KL estimate, and no
    /// DPO-only setting that KTO would silently ignore.
    fn validate_kto(&self, k: &KtoConfig) -> Result<()> {
        for (key, w) in [("desirable_weight", k.desirable_weight), ("undesirable_weight", k.undesirable_weight)] {
            if !(w >= 0.0 && w.is_finite()) {
                bail!("kto.{key} must be a finite number ≥ 0, got {w}");
            }
        }
        if k.desirable_weight == 0.0 && k.undesirable_weight == 0.0 {
            bail!("kto.desirable_weight and kto.undesirable_weight are both 0: nothing would be learned");
        }
        // TRL refuses the same (kto_trainer.py:598-602): with one row per batch the KL pair is the row itself.
        if k.loss_type.uses_kl() && self.batch_size < 2 {
            bail!(
                "kto.loss_type = \"kto\" needs batch_size ≥ 2: its KL estimate pairs each prompt with another row's \
                 completion from the same batch (got batch_size = {})",
                self.batch_size
            );
        }
        if self.loss_type != [LossType::Sigmoid] || self.loss_weights.is_some() {
            bail!(
                "loss_type / loss_weights choose DPO losses; with [kto] the loss is kto.loss_type (remove them, or \
                 remove [kto] to train with DPO)"
            );
        }
        if self.sync_ref_model {
            bail!("sync_ref_model (TR-DPO) is not supported with [kto]");
        }
        if self.dtype != ComputeDtype::F32 {
            bail!("train.dtype = \"bf16\" is not supported with [kto] yet; use dtype = \"f32\"");
        }
        // Every [loss] key but beta belongs to the DPO family.
        let (now, default) = (serde_json::to_value(&self.loss)?, serde_json::to_value(LossParams::default())?);
        if let (Some(now), Some(default)) = (now.as_object(), default.as_object()) {
            if let Some(key) = now.keys().find(|k| k.as_str() != "beta" && now.get(*k) != default.get(*k)) {
                bail!("loss.{key} is a DPO setting; KTO uses only loss.beta (remove it or [kto])");
            }
        }
        Ok(())
    }
}

/// Which end of a too-long pair is cut (TRL's `truncation_mode`; the rule is in [`crate::data`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Truncation {
    #[default]
    KeepStart,
    KeepEnd,
}
