//! The DPO loss family. Each loss is one pure function from per-pair sequence log-probabilities to a
//! per-pair loss `(B,)`; names, defaults and formulas follow one pinned TRL release, **TRL 0.27.2**, so configs
//! carry over and numbers can be compared with TRL's own functions (`crates/dpo/tests/trl_parity.rs` does, on
//! log-probs computed once into `tests/fixtures/trl_losses.json` by `scripts/trl_loss_fixture.py`).
//!
//! Why 0.27.2: it is the newest release that has every option this module takes under one name —
//! `f_divergence_type`, `use_weighting`, `ld_alpha`, `rpo_alpha`, `aot` and `aot_pair` (0.28 drops `aot_pair`,
//! 1.x drops `rpo_alpha` and redefines the f-divergences). Citations `dpo_trainer.py:N` are lines of
//! `trl/trainer/dpo_trainer.py` in 0.27.2 (`utils.py` beside it); `cpo_trainer.py` and `orpo_trainer.py` are
//! under `trl/experimental/cpo/` and `trl/experimental/orpo/`.
//! Losses TRL 0.27.2 lacks (`sigmoid_norm`, `rdpo`, `dpo_shift`, `hdpo`) cite their papers instead.
//!
//! Notation (as in TRL and docs/algorithm.md#losses): `Lw`, `Ll` are the policy's summed completion log-probs of the
//! chosen and rejected completions, `Rw`, `Rl` the reference's; `lw = Lw − Rw`, `ll = Ll − Rl`, `h = lw − ll`;
//! `|y|` a completion's token count; `σ` the logistic function. Everything is computed in the inputs' dtype (f32
//! or wider).
//!
//! The batch-level options act around the per-pair losses as TRL's `get_batch_loss_metrics` does
//! (dpo_trainer.py:1757-1780): weighted sum of the losses, plus `rpo_alpha`·NLL, times the WPO weight
//! (`use_weighting`), then the batch mean. `use_weighting` and `ld_alpha` need per-token log-probs
//! ([`TokenLogps`], [`token_loss`]); the others work on sequence sums ([`combined_loss`]).

use anyhow::{bail, Result};
use candle_core::{Tensor, D};
use serde::{Deserialize, Serialize};

mod stable;
use stable::{cap_exp, dtype_max};
pub use stable::{expm1, log1mexp, log1p, log_sigmoid, sigmoid, softplus};

/// Per-pair inputs, each `(B,)`.
#[derive(Debug, Clone)]
pub struct PairLogps {
    /// Policy log-probs (summed over completion tokens), part of the graph.
    pub chosen: Tensor,
    pub rejected: Tensor,
    /// Reference log-probs (no graph); reference-free losses ignore them.
    pub ref_chosen: Tensor,
    pub ref_rejected: Tensor,
    /// Completion token counts as floats.
    pub chosen_len: Tensor,
    pub rejected_len: Tensor,
}

/// Per-token policy inputs of a batch, for the options that look inside a completion (`use_weighting`,
/// `ld_alpha`) and for an NLL that is exact under `ld_alpha`. Chosen and rejected may be padded to different
/// widths; padding must be finite (zero), and the masks say which positions are completion tokens.
#[derive(Debug, Clone)]
pub struct TokenLogps {
    /// `(B, Tc)` log π(token | prefix) of each chosen-completion token, part of the graph.
    pub chosen: Tensor,
    /// `(B, Tr)` the same for the rejected completion.
    pub rejected: Tensor,
    /// `(B, Tc)`, `(B, Tr)`: 1.0 on completion tokens (a prefix of each row), 0.0 on padding, in the log-probs'
    /// dtype.
    pub chosen_mask: Tensor,
    pub rejected_mask: Tensor,
    /// `(B, Tc)`, `(B, Tr)`: `log Σ_v p_v²` of the policy's predictive distribution at each token
    /// (`logsumexp(2 · log_softmax(logits))`), WPO's per-token adjustment; only needed with `use_weighting`.
    /// Treated as constants (TRL computes the weights under `no_grad`).
    pub chosen_log_sum_sq: Option<Tensor>,
    pub rejected_log_sum_sq: Option<Tensor>,
}

/// Which loss; serialised with TRL's names (`sigmoid`, `ipo`, `apo_zero`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossType {
    Sigmoid,
    Robust,
    Ipo,
    Hinge,
    ExoPair,
    NcaPair,
    BcoPair,
    SppoHard,
    Aot,
    AotPair,
    ApoZero,
    ApoDown,
    Discopop,
    Sft,
    SigmoidNorm,
    Simpo,
    Cpo,
    Orpo,
    Rdpo,
    DpoShift,
    Hdpo,
}

impl LossType {
    pub const ALL: [LossType; 21] = [
        LossType::Sigmoid,
        LossType::Robust,
        LossType::Ipo,
        LossType::Hinge,
        LossType::ExoPair,
        LossType::NcaPair,
        LossType::BcoPair,
        LossType::SppoHard,
        LossType::Aot,
        LossType::AotPair,
        LossType::ApoZero,
        LossType::ApoDown,
        LossType::Discopop,
        LossType::Sft,
        LossType::SigmoidNorm,
        LossType::Simpo,
        LossType::Cpo,
        LossType::Orpo,
        LossType::Rdpo,
        LossType::DpoShift,
        LossType::Hdpo,
    ];

    /// The TRL name (`loss_type` in TRL's `DPOConfig`), as the config and `--loss-type` spell it.
    pub fn name(self) -> &'static str {
        match self {
            LossType::Sigmoid => "sigmoid",
            LossType::Robust => "robust",
            LossType::Ipo => "ipo",
            LossType::Hinge => "hinge",
            LossType::ExoPair => "exo_pair",
            LossType::NcaPair => "nca_pair",
            LossType::BcoPair => "bco_pair",
            LossType::SppoHard => "sppo_hard",
            LossType::Aot => "aot",
            LossType::AotPair => "aot_pair",
            LossType::ApoZero => "apo_zero",
            LossType::ApoDown => "apo_down",
            LossType::Discopop => "discopop",
            LossType::Sft => "sft",
            LossType::SigmoidNorm => "sigmoid_norm",
            LossType::Simpo => "simpo",
            LossType::Cpo => "cpo",
            LossType::Orpo => "orpo",
            LossType::Rdpo => "rdpo",
            LossType::DpoShift => "dpo_shift",
            LossType::Hdpo => "hdpo",
        }
    }

    /// A loss by its TRL name; an unknown name is an error that lists the valid ones.
    pub fn parse(name: &str) -> anyhow::Result<Self> {
        let name = name.trim();
        Self::ALL.into_iter().find(|l| l.name() == name).ok_or_else(|| {
            let valid: Vec<&str> = Self::ALL.iter().map(|l| l.name()).collect();
            anyhow::anyhow!("unknown loss {name:?}; valid loss types: {}", valid.join(", "))
        })
    }

    /// Losses that never look at the reference model (no reference forward or cache needed).
    pub fn reference_free(self) -> bool {
        matches!(self, LossType::Sft | LossType::Simpo | LossType::Cpo | LossType::Orpo)
    }

    /// Losses built on TRL's f-divergence margin (`logits` in dpo_trainer.py:1080-1109); the others compute
    /// their own margin from the log-ratios and would silently ignore `f_divergence_type`.
    pub fn uses_f_divergence(self) -> bool {
        matches!(self, LossType::Sigmoid | LossType::Robust | LossType::ExoPair | LossType::Hinge | LossType::Ipo)
    }
}

/// TRL's `f_divergence_type` (`FDivergenceType` in 0.27.2's dpo_config.py): which divergence from the reference
/// the implicit reward regularises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FDivergence {
    /// Standard DPO.
    #[default]
    ReverseKl,
    /// Jensen–Shannon (Wang et al. 2023, arXiv 2309.16240).
    JsDivergence,
    /// α-divergence with `f_alpha_divergence_coef` (same paper).
    AlphaDivergence,
}

impl FDivergence {
    pub fn name(self) -> &'static str {
        match self {
            FDivergence::ReverseKl => "reverse_kl",
            FDivergence::JsDivergence => "js_divergence",
            FDivergence::AlphaDivergence => "alpha_divergence",
        }
    }
}

/// Hyper-parameters of the loss family, under TRL 0.27.2's `DPOConfig` names; defaults are TRL's (or the
/// paper's where TRL has none).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossParams {
    /// β, the strength of the KL regulariser (TRL default 0.1; the APL paper uses 0.2).
    pub beta: f64,
    /// ε for cDPO (`sigmoid`), `robust`, `exo_pair`, `aot`, `aot_pair`, `cpo` and `simpo` (label noise rate).
    pub label_smoothing: f64,
    /// τ of DiscoPOP's modulation.
    pub discopop_tau: f64,
    /// γ, SimPO's target margin (TRL `simpo_gamma`).
    pub simpo_gamma: f64,
    /// Weight of the chosen NLL term in CPO.
    pub cpo_alpha: f64,
    /// α, R-DPO's length coefficient.
    pub rdpo_alpha: f64,
    /// λ, DPO-Shift's weight on the rejected log-ratio.
    pub dpo_shift_lambda: f64,
    /// α, H-DPO's entropy coefficient (1 = DPO; < 1 sharpens).
    pub hdpo_alpha: f64,
    /// δ, BCO's reward shift (TRL 0.27.2 passes a running mean of the batch rewards, dpo_trainer.py:1148-1150;
    /// a fixed δ here, 0 by default).
    pub bco_delta: f64,
    /// Divergence regularising the implicit reward (TRL `f_divergence_type`): `reverse_kl` (DPO),
    /// `js_divergence` or `alpha_divergence`. Only the losses built on TRL's margin honour it
    /// ([`LossType::uses_f_divergence`]); any other with a non-default divergence is an error.
    pub f_divergence_type: FDivergence,
    /// α of the α-divergence (TRL `f_alpha_divergence_coef`, default 1; must be non-zero).
    pub f_alpha_divergence_coef: f64,
    /// RPO (Pang et al. 2024, arXiv 2404.19733, v3): adds `rpo_alpha` × the chosen NLL to every pair's loss.
    pub rpo_alpha: Option<f64>,
    /// WPO (Zhou et al. 2024, arXiv 2406.11827): weight each pair's loss by how on-policy its completions are.
    /// Needs per-token log-probs ([`token_loss`]).
    pub use_weighting: bool,
    /// LD-DPO (Liu et al. 2024, arXiv 2409.06411): policy log-prob tokens past the shorter completion's length
    /// count with weight `ld_alpha` ∈ [0, 1]. Needs per-token log-probs ([`token_loss`]).
    pub ld_alpha: Option<f64>,
}

impl Default for LossParams {
    fn default() -> Self {
        Self {
            beta: 0.1,
            label_smoothing: 0.0,
            discopop_tau: 0.05,
            simpo_gamma: 0.5,
            cpo_alpha: 1.0,
            rdpo_alpha: 0.0,
            dpo_shift_lambda: 1.0,
            hdpo_alpha: 1.0,
            bco_delta: 0.0,
            f_divergence_type: FDivergence::ReverseKl,
            f_alpha_divergence_coef: 1.0,
            rpo_alpha: None,
            use_weighting: false,
            ld_alpha: None,
        }
    }
}

impl LossParams {
    /// Checks the settings against the losses they will be used with; errors name the key and its value.
    pub fn validate(&self, kinds: &[LossType]) -> Result<()> {
        if !(self.beta > 0.0 && self.beta.is_finite()) {
            bail!("loss.beta must be positive, got {}", self.beta);
        }
        if self.f_divergence_type != FDivergence::ReverseKl {
            if let Some(k) = kinds.iter().find(|k| !k.uses_f_divergence()) {
                bail!(
                    "loss.f_divergence_type = {:?} applies to sigmoid, robust, exo_pair, hinge and ipo only (as TRL \
                     0.27.2's dpo_loss); loss_type {:?} would ignore it",
                    self.f_divergence_type.name(),
                    k.name()
                );
            }
        }
        if self.f_divergence_type == FDivergence::AlphaDivergence
            && !(self.f_alpha_divergence_coef != 0.0 && self.f_alpha_divergence_coef.is_finite())
        {
            bail!(
                "loss.f_alpha_divergence_coef must be a non-zero finite number, got {}",
                self.f_alpha_divergence_coef
            );
        }
        if let Some(a) = self.rpo_alpha {
            if !(a >= 0.0 && a.is_finite()) {
                bail!("loss.rpo_alpha must be a finite number ≥ 0, got {a}");
            }
        }
        if let Some(a) = self.ld_alpha {
            if !(0.0..=1.0).contains(&a) {
                bail!("loss.ld_alpha must lie in [0, 1], got {a}");
            }
        }
        let eps = self.label_smoothing;
        if !(0.0..1.0).contains(&eps) {
            bail!("loss.label_smoothing must lie in [0, 1), got {eps}");
        }
        if kinds.contains(&LossType::Robust) && eps >= 0.5 {
            bail!("loss `robust` needs label_smoothing in [0, 0.5), got {eps}");
        }
        if kinds.contains(&LossType::ExoPair) && eps <= 0.0 {
            bail!("loss `exo_pair` needs label_smoothing in (0, 1), got {eps} (TRL's old default was 1e-3)");
        }
        if kinds.contains(&LossType::Discopop) && (self.discopop_tau.is_nan() || self.discopop_tau <= 0.0) {
            bail!("loss.discopop_tau must be positive, got {}", self.discopop_tau);
        }
        Ok(())
    }
}

/// TRL's margin `logits` from the two log-ratios under `f_divergence_type` (dpo_trainer.py:1080-1109):
/// reverse KL `lw − ll`; JS `lw − ll − (softplus(lw) − softplus(ll))`; α-divergence
/// `(e^{−α ll} − e^{−α lw}) / α` with TRL's capped exponential.
///
/// The α-divergence margin is then held within ±√max/4 of the dtype: TRL's cap keeps each exponential finite,
/// but a loss that scales the margin (robust's 1/(1−2ε), a division by α < 1) or squares it (IPO) still
/// overflows to ∞ there. Only margins past ~e^43 (f32) or ~e^353 (f64) are touched, far beyond any useful
/// training signal.
fn f_margin(p: &LossParams, lw: &Tensor, ll: &Tensor) -> Result<Tensor> {
    Ok(match p.f_divergence_type {
        FDivergence::ReverseKl => (lw - ll)?,
        FDivergence::JsDivergence => ((lw - ll)? - (softplus(lw)? - softplus(ll)?)?)?,
        FDivergence::AlphaDivergence => {
            let a = p.f_alpha_divergence_coef;
            let m = ((cap_exp(&(ll * -a)?)? - cap_exp(&(lw * -a)?)?)? / a)?;
            let lim = dtype_max(lw.dtype()).sqrt() / 4.0;
            m.clamp(-lim, lim)?
        }
    })
}

/// cDPO's label-smoothed logistic loss `−(1−ε) log σ(z) − ε log σ(−z)`.
fn smoothed(z: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(((log_sigmoid(z)? * -(1.0 - eps))? - (log_sigmoid(&z.neg()?)? * eps)?)?)
}

/// A 1-D tensor sorted ascending, differentiable (the permutation is a constant; `torch.sort` in TRL).
fn sort_asc(x: &Tensor) -> Result<Tensor> {
    let idx = x.detach().contiguous()?.arg_sort_last_dim(true)?;
    Ok(x.index_select(&idx, 0)?)
}

/// The chosen completions' NLL pooled over every token of the batch, `−Σ Lw / Σ |yw|`, broadcast to `(B,)`.
/// TRL computes its NLL terms (`sft`, `rpo_alpha`, CPO, ORPO) as one cross-entropy over all chosen tokens of the
/// batch (dpo_trainer.py:1668-1675, cpo_trainer.py:819-822), so a long completion weighs more than a short one,
/// unlike a mean of per-pair token means. `chosen_sum` are plain (never LD-weighted) sums.
pub fn pooled_nll(chosen_sum: &Tensor, chosen_len: &Tensor) -> Result<Tensor> {
    let nll = (chosen_sum.sum_all()?.neg()? / chosen_len.sum_all()?)?;
    Ok(nll.broadcast_as(chosen_sum.shape())?.contiguous()?)
}

/// Per-pair loss `(B,)` of one loss type. Batch-level terms (`sft`'s and CPO/ORPO's NLL, AOT's sorting) use
/// the whole batch, as TRL does. `rpo_alpha`, `use_weighting` and `ld_alpha` are not applied here: see
/// [`combined_loss`] and [`token_loss`].
pub fn pair_loss(kind: LossType, p: &LossParams, x: &PairLogps) -> Result<Tensor> {
    let nll = pooled_nll(&x.chosen, &x.chosen_len)?;
    pair_loss_with_nll(kind, p, x, &nll)
}

fn pair_loss_with_nll(kind: LossType, p: &LossParams, x: &PairLogps, nll: &Tensor) -> Result<Tensor> {
    p.validate(&[kind])?;
    let b = p.beta;
    let lw = (&x.chosen - &x.ref_chosen)?;
    let ll = (&x.rejected - &x.ref_rejected)?;
    let h = (&lw - &ll)?;
    let eps = p.label_smoothing;
    Ok(match kind {
        // DPO (Rafailov et al. 2023, arXiv 2305.18290) and conservative DPO (Mitchell 2023) when ε > 0, on TRL's
        // f-divergence margin m (h under reverse KL): −(1−ε) log σ(βm) − ε log σ(−βm). dpo_trainer.py:1114.
        LossType::Sigmoid => smoothed(&(f_margin(p, &lw, &ll)? * b)?, eps)?,
        // Robust DPO (Chowdhury et al. 2024, arXiv 2403.00409): [−(1−ε) log σ(βm) + ε log σ(−βm)] / (1−2ε).
        // dpo_trainer.py:1120.
        LossType::Robust => {
            let bm = (f_margin(p, &lw, &ll)? * b)?;
            (((log_sigmoid(&bm)? * -(1.0 - eps))? + (log_sigmoid(&bm.neg()?)? * eps)?)? / (1.0 - 2.0 * eps))?
        }
        // IPO (Azar et al. 2023, arXiv 2310.12036): (m̄ − 1/(2β))², m̄ the margin of the length-averaged
        // log-ratios (TRL divides policy and reference log-probs by |y| first, dpo_trainer.py:1678-1679).
        // dpo_trainer.py:1139.
        LossType::Ipo => {
            let m = f_margin(p, &(&lw / &x.chosen_len)?, &(&ll / &x.rejected_len)?)?;
            (m - 1.0 / (2.0 * b))?.sqr()?
        }
        // SLiC/RSO hinge (Zhao et al. 2023, arXiv 2305.10425; Liu et al. 2023, arXiv 2309.06657): max(0, 1 − βm).
        // dpo_trainer.py:1136.
        LossType::Hinge => ((f_margin(p, &lw, &ll)? * -b)? + 1.0)?.relu()?,
        // EXO (Ji et al. 2024, arXiv 2402.00856), pair form:
        // σ(βm)[log σ(βm) − log(1−ε)] + σ(−βm)[log σ(−βm) − log ε]. dpo_trainer.py:1126 (TRL replaces ε = 0 by 1e-3;
        // here it is an error).
        LossType::ExoPair => {
            let bm = (f_margin(p, &lw, &ll)? * b)?;
            let (lsp, lsn) = (log_sigmoid(&bm)?, log_sigmoid(&bm.neg()?)?);
            ((lsp.exp()? * (&lsp - (1.0 - eps).ln())?)? + (lsn.exp()? * (&lsn - eps.ln())?)?)?
        }
        // NCA (Chen et al. 2024, arXiv 2402.05369): −log σ(β lw) − ½ log σ(−β lw) − ½ log σ(−β ll).
        // dpo_trainer.py:1164.
        LossType::NcaPair => {
            let (bw, bl) = ((&lw * b)?, (&ll * b)?);
            ((log_sigmoid(&bw)?.neg()? - (log_sigmoid(&bw.neg()?)? * 0.5)?)? - (log_sigmoid(&bl.neg()?)? * 0.5)?)?
        }
        // BCO pair (Jung et al. 2024, arXiv 2404.04656): −log σ(β lw − δ) − log σ(−(β ll − δ)). dpo_trainer.py:1143
        // (δ there is a running mean of the rewards; `bco_delta` here).
        LossType::BcoPair => {
            let d = p.bco_delta;
            (log_sigmoid(&((&lw * b)? - d)?)?.neg()? - log_sigmoid(&((&ll * b)? - d)?.neg()?)?)?
        }
        // SPPO hard-label (Wu et al. 2024, arXiv 2405.00675): (lw − 1/(2β))² + (ll + 1/(2β))². dpo_trainer.py:1155.
        LossType::SppoHard => ((&lw - 0.5 / b)?.sqr()? + (&ll + 0.5 / b)?.sqr()?)?,
        // AOT (Melnyk et al. 2024, arXiv 2406.05882), paired: distributional alignment via sorting — the batch's
        // policy log-odds (Lw − Ll) and reference log-odds (Rw − Rl) are each sorted, and the smoothed logistic
        // loss is taken on their rank-wise difference. dpo_trainer.py:1184.
        LossType::Aot => {
            let pol = sort_asc(&(&x.chosen - &x.rejected)?)?;
            let refr = sort_asc(&(&x.ref_chosen - &x.ref_rejected)?.detach())?;
            smoothed(&((pol - refr)? * b)?, eps)?
        }
        // AOT for unpaired data: the chosen log-ratios lw and the rejected ll are sorted separately.
        // dpo_trainer.py:1173.
        LossType::AotPair => smoothed(&((sort_asc(&lw)? - sort_asc(&ll)?)? * b)?, eps)?,
        // APO-zero (D'Oosterlinck et al. 2024, arXiv 2408.06266): (1 − σ(β lw)) + σ(β ll). dpo_trainer.py:1195.
        LossType::ApoZero => ((sigmoid(&(&lw * b)?)?.neg()? + 1.0)? + sigmoid(&(&ll * b)?)?)?,
        // APO-down (same paper): σ(β lw) + (1 − σ(βh)). dpo_trainer.py:1202.
        LossType::ApoDown => (sigmoid(&(&lw * b)?)? + (sigmoid(&(&h * b)?)?.neg()? + 1.0)?)?,
        // DiscoPOP (Chris Lu et al. 2024, arXiv 2406.08414): ρ = βh; (1 − σ(ρ/τ))·(−log σ(ρ)) + σ(ρ/τ)·e^{−ρ}.
        // dpo_trainer.py:1210. The second term is taken as exp(log σ(ρ/τ) − ρ): TRL's product is ∞·0 = NaN once
        // e^{−ρ} overflows, though the term itself tends to 0 there (for τ ≤ 1).
        LossType::Discopop => {
            let rho = (&h * b)?;
            let z = (&rho / p.discopop_tau)?;
            let m = sigmoid(&z)?;
            (((m.neg()? + 1.0)? * log_sigmoid(&rho)?.neg()?)? + (log_sigmoid(&z)? - &rho)?.exp()?)?
        }
        // SFT: the chosen completions' NLL pooled over the batch's tokens, the same value for every pair
        // (dpo_trainer.py:1224-1230 broadcasts TRL's `nll_loss`).
        LossType::Sft => nll.clone(),
        // Length-normalised DPO (TRL 1.x `sigmoid_norm`; not in 0.27.2): −log σ(β (lw/|yw| − ll/|yl|)).
        LossType::SigmoidNorm => log_sigmoid(&((((&lw / &x.chosen_len)? - (&ll / &x.rejected_len)?)?) * b)?)?.neg()?,
        // SimPO (Meng et al. 2024, arXiv 2405.14734), reference-free, with TRL's label smoothing:
        // z = β (Lw/|yw| − Ll/|yl|) − γ; −(1−ε) log σ(z) − ε log σ(−z). cpo_trainer.py:689 (TRL's CPOTrainer also
        // adds cpo_alpha·NLL to SimPO unless cpo_alpha = 0; add `sft` to loss_type for that here).
        LossType::Simpo => {
            let z = (((&x.chosen / &x.chosen_len)? - (&x.rejected / &x.rejected_len)?)? * b)?;
            smoothed(&(z - p.simpo_gamma)?, eps)?
        }
        // CPO (Xu et al. 2024, arXiv 2401.08417): −(1−ε) log σ(β (Lw − Ll)) − ε log σ(−β (Lw − Ll)) + α·NLL,
        // NLL pooled over the batch's chosen tokens. cpo_trainer.py:697 (loss), :822 (NLL), :868 (sum).
        LossType::Cpo => {
            let pref = smoothed(&((&x.chosen - &x.rejected)? * b)?, eps)?;
            (pref + (nll * p.cpo_alpha)?)?
        }
        // ORPO (Hong et al. 2024, arXiv 2403.07691): NLL − λ·log σ(log-odds ratio), with P = mean token log-prob,
        // log-odds = (Pw − Pl) − (log(1 − e^{Pw}) − log(1 − e^{Pl})), λ = β. orpo_trainer.py:668 (odds), :827
        // (sum). TRL's NLL here also covers the prompt tokens (orpo_trainer.py:777); ours is the completion's, as
        // the paper's L_SFT.
        LossType::Orpo => {
            let (pw, pl) = ((&x.chosen / &x.chosen_len)?, (&x.rejected / &x.rejected_len)?);
            let log_odds = ((&pw - &pl)? - (log1mexp(&pw)? - log1mexp(&pl)?)?)?;
            (nll - (log_sigmoid(&log_odds)? * b)?)?
        }
        // R-DPO (Park et al. 2024, "Disentangling Length from Quality in DPO", ACL Findings): from
        // max E[r − α|y|] − β KL the implicit reward is β log π/π_ref + α|y|, so
        // −log σ(βh + α(|yw| − |yl|)); α > 0 removes the reward for being longer.
        LossType::Rdpo => {
            let len_term = ((&x.chosen_len - &x.rejected_len)? * p.rdpo_alpha)?;
            log_sigmoid(&((&h * b)? + len_term)?)?.neg()?
        }
        // DPO-Shift (Yang et al. 2025, arXiv 2502.07599): −log σ(β (lw − λ·ll)).
        LossType::DpoShift => log_sigmoid(&((&lw - (&ll * p.dpo_shift_lambda)?)? * b)?)?.neg()?,
        // H-DPO (Omura et al. 2024, arXiv 2411.07595): −log σ(β (α (Lw − Ll) − (Rw − Rl))).
        LossType::Hdpo => {
            let pol = ((&x.chosen - &x.rejected)? * p.hdpo_alpha)?;
            let refd = (&x.ref_chosen - &x.ref_rejected)?;
            log_sigmoid(&((pol - refd)? * b)?)?.neg()?
        }
    })
}

/// TRL's batch loss (dpo_trainer.py:1757-1780, 1813): `mean_i [ (Σ_k w_k loss_k,i + rpo_alpha · NLL) · weight_i ]`.
/// `nll` is the pooled chosen NLL `(B,)`; `weights` the WPO weights `(B,)` if any.
fn batch_loss(
    kinds: &[(LossType, f64)],
    p: &LossParams,
    x: &PairLogps,
    nll: &Tensor,
    weights: Option<&Tensor>,
) -> Result<Tensor> {
    if kinds.is_empty() {
        bail!("no loss selected: loss_type must name at least one loss");
    }
    let types: Vec<LossType> = kinds.iter().map(|&(k, _)| k).collect();
    p.validate(&types)?;
    let mut total: Option<Tensor> = None;
    for &(k, w) in kinds {
        let l = (pair_loss_with_nll(k, p, x, nll)? * w)?;
        total = Some(match total {
            Some(t) => (t + l)?,
            None => l,
        });
    }
    let mut per_pair = total.expect("kinds is not empty");
    if let Some(a) = p.rpo_alpha {
        // RPO, v3 of the paper: dpo_trainer.py:1777.
        per_pair = (per_pair + (nll * a)?)?;
    }
    if let Some(w) = weights {
        // WPO: dpo_trainer.py:1780.
        per_pair = (per_pair * w)?;
    }
    Ok(per_pair.mean(D::Minus1)?)
}

/// A weighted sum of losses (TRL's `loss_type=[...]` with `loss_weights`) plus `rpo_alpha`·NLL, averaged over
/// the batch, from sequence sums. `use_weighting` and `ld_alpha` look inside completions and are an error
/// here: use [`token_loss`].
pub fn combined_loss(kinds: &[(LossType, f64)], p: &LossParams, x: &PairLogps) -> Result<Tensor> {
    if p.use_weighting || p.ld_alpha.is_some() {
        bail!(
            "loss.use_weighting and loss.ld_alpha need per-token log-probs (dpo::loss::token_loss); the sequence-sum \
             loss cannot apply them"
        );
    }
    let nll = pooled_nll(&x.chosen, &x.chosen_len)?;
    batch_loss(kinds, p, x, &nll, None)
}

impl TokenLogps {
    /// Completion lengths `(B,)` of chosen and rejected, from the masks.
    pub fn lengths(&self) -> Result<(Tensor, Tensor)> {
        Ok((self.chosen_mask.sum(D::Minus1)?, self.rejected_mask.sum(D::Minus1)?))
    }

    /// Plain summed log-probs `(B,)` of chosen and rejected.
    pub fn sums(&self) -> Result<(Tensor, Tensor)> {
        Ok((
            (&self.chosen * &self.chosen_mask)?.sum(D::Minus1)?,
            (&self.rejected * &self.rejected_mask)?.sum(D::Minus1)?,
        ))
    }

    /// LD-DPO's desensitised log-probs `(B,)` of chosen and rejected (Liu et al. 2024, arXiv 2409.06411, eq. 9):
    /// the first `l_p = min(|yw|, |yl|)` tokens of each completion count fully, the rest with weight `alpha`.
    /// dpo_trainer.py:1681-1700. TRL 0.27.2 compares the split point with positions in the whole
    /// prompt + completion row, so there the split comes `|prompt|` tokens early and a completion's last
    /// `|prompt|` tokens are dropped; here positions are counted within the completion, as the paper (and TRL
    /// 1.x) define them.
    pub fn ld_logps(&self, alpha: f64) -> Result<(Tensor, Tensor)> {
        let (nc, nr) = self.lengths()?;
        let shared = nc.minimum(&nr)?;
        let one = |t: &Tensor, mask: &Tensor| -> Result<Tensor> {
            let width = t.dim(D::Minus1)?;
            let pos = Tensor::arange(0u32, width as u32, t.device())?.to_dtype(t.dtype())?.unsqueeze(0)?;
            // Shared part: position < l_p (and a completion token).
            let front = pos.broadcast_lt(&shared.unsqueeze(1)?)?.to_dtype(t.dtype())?;
            let front = (front * mask)?;
            let rear = (mask - &front)?;
            let masked = (t * mask)?;
            Ok(((&masked * &front)?.sum(D::Minus1)? + ((&masked * rear)?.sum(D::Minus1)? * alpha)?)?)
        };
        Ok((one(&self.chosen, &self.chosen_mask)?, one(&self.rejected, &self.rejected_mask)?))
    }

    /// WPO's pair weights `(B,)`, constants (Zhou et al. 2024, arXiv 2406.11827, eq. 2, as TRL 0.27.2 computes
    /// them, dpo_trainer.py:1657-1665): for each completion the token mean of `log p(token) − log Σ_v p_v²`,
    /// and the weight `min(1, exp(mean_w + mean_l))`. (TRL 0.27.2 pairs each token's log-prob with the next
    /// position's `log Σ p²`, so its mean leaves out the last token's log-prob; here each token is paired with
    /// its own distribution, as TRL 1.x does.)
    pub fn wpo_weights(&self) -> Result<Tensor> {
        let (Some(lc), Some(lr)) = (&self.chosen_log_sum_sq, &self.rejected_log_sum_sq) else {
            bail!("loss.use_weighting needs each token's log Σ p² (TokenLogps::chosen_log_sum_sq and rejected_log_sum_sq)");
        };
        let mean = |t: &Tensor, lss: &Tensor, mask: &Tensor| -> Result<Tensor> {
            let adj = ((t.detach() - lss.detach())? * mask)?;
            Ok((adj.sum(D::Minus1)? / mask.sum(D::Minus1)?)?)
        };
        let w = (mean(&self.chosen, lc, &self.chosen_mask)? + mean(&self.rejected, lr, &self.rejected_mask)?)?;
        Ok(w.exp()?.minimum(1.0)?.detach())
    }

    /// The sequence-level inputs the losses see: the policy's sums (LD-weighted under `ld_alpha`, as TRL's
    /// `chosen_logps`/`rejected_logps` are), lengths from the masks, and the reference's sums as given (TRL
    /// 0.27.2 does not desensitise the reference: `concatenated_forward(is_ref_model=True)`, dpo_trainer.py:1492,
    /// 940).
    pub fn pair_logps(&self, ld_alpha: Option<f64>, ref_chosen: &Tensor, ref_rejected: &Tensor) -> Result<PairLogps> {
        let (chosen, rejected) = match ld_alpha {
            Some(a) => self.ld_logps(a)?,
            None => self.sums()?,
        };
        let (chosen_len, rejected_len) = self.lengths()?;
        Ok(PairLogps {
            chosen,
            rejected,
            ref_chosen: ref_chosen.clone(),
            ref_rejected: ref_rejected.clone(),
            chosen_len,
            rejected_len,
        })
    }
}

/// [`combined_loss`] from per-token policy log-probs, with every option: `ld_alpha` desensitises the policy's
/// sums, `use_weighting` weights each pair, and the NLL terms use the plain chosen sums. Returns the loss and
/// the [`PairLogps`] the losses saw (for [`rewards`] and the logged log-probs, as TRL logs them).
pub fn token_loss(
    kinds: &[(LossType, f64)],
    p: &LossParams,
    t: &TokenLogps,
    ref_chosen: &Tensor,
    ref_rejected: &Tensor,
) -> Result<(Tensor, PairLogps)> {
    let x = t.pair_logps(p.ld_alpha, ref_chosen, ref_rejected)?;
    let (plain_chosen, _) = t.sums()?;
    let nll = pooled_nll(&plain_chosen, &x.chosen_len)?;
    let weights = if p.use_weighting { Some(t.wpo_weights()?) } else { None };
    let loss = batch_loss(kinds, p, &x, &nll, weights.as_ref())?;
    Ok((loss, x))
}

/// Implicit rewards `β (log π − log π_ref)` of chosen and rejected, detached (TRL's `rewards/*`).
pub fn rewards(p: &LossParams, x: &PairLogps) -> Result<(Tensor, Tensor)> {
    let rc = ((&x.chosen - &x.ref_chosen)? * p.beta)?.detach();
    let rr = ((&x.rejected - &x.ref_rejected)? * p.beta)?.detach();
    Ok((rc, rr))
}

/// KTO (Ethayarajh et al. 2024, arXiv 2402.01306) for unpaired data. `logratio` `(B,)` is
/// `log π(y|x) − log π_ref(y|x)`, `desirable` `(B,)` 1.0 or 0.0, `z0` the detached KL estimate
/// (clamped at 0): desirable `w_d (1 − σ(β (lr − z0)))`, undesirable `w_u (1 − σ(β (z0 − lr)))`.
pub fn kto_loss(
    logratio: &Tensor,
    desirable: &Tensor,
    z0: f64,
    beta: f64,
    desirable_weight: f64,
    undesirable_weight: f64,
) -> Result<Tensor> {
    let z0 = z0.max(0.0);
    let good = ((sigmoid(&((logratio - z0)? * beta)?)?.neg()? + 1.0)? * desirable_weight)?;
    let bad = ((sigmoid(&((logratio.neg()? + z0)? * beta)?)?.neg()? + 1.0)? * undesirable_weight)?;
    Ok(((&good * desirable)? + (bad * (desirable.neg()? + 1.0)?)?)?)
}
