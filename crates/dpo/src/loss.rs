//! The DPO loss family. Each loss is one pure function from per-pair sequence log-probabilities to a
//! per-pair loss `(B,)`; names and defaults follow TRL's `DPOConfig.loss_type` so configs carry over.
//!
//! Notation (as in TRL and docs/algorithm.md#losses): `Lw`, `Ll` are the policy's summed completion log-probs of the
//! chosen and rejected completions, `Rw`, `Rl` the reference's; `lw = Lw − Rw`, `ll = Ll − Rl`, `h = lw − ll`;
//! `|y|` a completion's token count; `σ` the logistic function. Everything is computed in f32 or wider.

use anyhow::{bail, Result};
use candle_core::{Tensor, D};
use serde::{Deserialize, Serialize};

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
    pub const ALL: [LossType; 19] = [
        LossType::Sigmoid,
        LossType::Robust,
        LossType::Ipo,
        LossType::Hinge,
        LossType::ExoPair,
        LossType::NcaPair,
        LossType::BcoPair,
        LossType::SppoHard,
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
}

/// Hyper-parameters of the loss family; defaults are TRL's (or the paper's where TRL has none).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossParams {
    /// β, the strength of the KL regulariser (TRL default 0.1; the APL paper uses 0.2).
    pub beta: f64,
    /// ε for cDPO (`sigmoid`), `robust` and `exo_pair` (label noise rate).
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
    /// δ, BCO's reward shift (TRL v0.26 passes a running mean of rewards; v1.9 uses 0).
    pub bco_delta: f64,
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
        }
    }
}

/// `log σ(x) = −softplus(−x)`, stable for large |x|.
pub fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    // −softplus(−x) = min(x, 0) − log(1 + e^{−|x|})
    let neg_part = x.minimum(0.0)?;
    Ok((neg_part - (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?)
}

pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    Ok(log_sigmoid(x)?.exp()?)
}

/// `log(1 − e^{x})` for x < 0 (Mächler 2012), as ORPO needs.
pub fn log1mexp(x: &Tensor) -> Result<Tensor> {
    // For x > −ln 2 use log(−expm1(x)); else log1p(−e^x). Both branches computed, the right one kept.
    let a = (x.exp()?.neg()? + 1.0)?.log()?; // fine away from 0
    let em1 = (x.exp()? - 1.0)?.neg()?; // −expm1(x) (adequate in f32 for |x| ≥ 1e-4)
    let b = em1.log()?;
    let near_zero = x.ge(-std::f64::consts::LN_2)?;
    Ok(near_zero.where_cond(&b, &a)?)
}

/// Per-pair loss `(B,)` of one loss type.
pub fn pair_loss(kind: LossType, p: &LossParams, x: &PairLogps) -> Result<Tensor> {
    let b = p.beta;
    let lw = (&x.chosen - &x.ref_chosen)?;
    let ll = (&x.rejected - &x.ref_rejected)?;
    let h = (&lw - &ll)?;
    let eps = p.label_smoothing;
    Ok(match kind {
        // DPO (Rafailov et al. 2023, arXiv 2305.18290) and conservative DPO (Mitchell 2023) when ε > 0:
        // −(1−ε) log σ(βh) − ε log σ(−βh).
        LossType::Sigmoid => {
            let bh = (&h * b)?;
            ((log_sigmoid(&bh)? * -(1.0 - eps))? - (log_sigmoid(&bh.neg()?)? * eps)?)?
        }
        // Robust DPO (Chowdhury et al. 2024, arXiv 2403.00409): [−(1−ε) log σ(βh) + ε log σ(−βh)] / (1−2ε).
        LossType::Robust => {
            if !(0.0..0.5).contains(&eps) {
                bail!("loss `robust` needs label_smoothing in [0, 0.5), got {eps}");
            }
            let bh = (&h * b)?;
            (((log_sigmoid(&bh)? * -(1.0 - eps))? + (log_sigmoid(&bh.neg()?)? * eps)?)? / (1.0 - 2.0 * eps))?
        }
        // IPO (Azar et al. 2023, arXiv 2310.12036): (h̄ − 1/(2β))² with length-averaged log-ratios, as TRL does.
        LossType::Ipo => {
            let hbar = ((&lw / &x.chosen_len)? - (&ll / &x.rejected_len)?)?;
            (hbar - 1.0 / (2.0 * b))?.sqr()?
        }
        // SLiC/RSO hinge (Zhao et al. 2023, arXiv 2305.10425; Liu et al. 2023, arXiv 2309.06657): max(0, 1 − βh).
        LossType::Hinge => ((&h * -b)? + 1.0)?.relu()?,
        // EXO (Ji et al. 2024, arXiv 2402.00856), pair form:
        // σ(βh)[log σ(βh) − log(1−ε)] + σ(−βh)[log σ(−βh) − log ε].
        LossType::ExoPair => {
            if !(eps > 0.0 && eps < 1.0) {
                bail!("loss `exo_pair` needs label_smoothing in (0, 1), got {eps} (TRL's old default was 1e-3)");
            }
            let bh = (&h * b)?;
            let (lsp, lsn) = (log_sigmoid(&bh)?, log_sigmoid(&bh.neg()?)?);
            ((lsp.exp()? * (&lsp - (1.0 - eps).ln())?)? + (lsn.exp()? * (&lsn - eps.ln())?)?)?
        }
        // NCA (Chen et al. 2024, arXiv 2402.05369): −log σ(β lw) − ½ log σ(−β lw) − ½ log σ(−β ll).
        LossType::NcaPair => {
            let (bw, bl) = ((&lw * b)?, (&ll * b)?);
            ((log_sigmoid(&bw)?.neg()? - (log_sigmoid(&bw.neg()?)? * 0.5)?)? - (log_sigmoid(&bl.neg()?)? * 0.5)?)?
        }
        // BCO pair (Jung et al. 2024, arXiv 2404.04656): −log σ(β lw − δ) − log σ(−(β ll − δ)).
        LossType::BcoPair => {
            let d = p.bco_delta;
            (log_sigmoid(&((&lw * b)? - d)?)?.neg()? - log_sigmoid(&((&ll * b)? - d)?.neg()?)?)?
        }
        // SPPO hard-label (Wu et al. 2024, arXiv 2405.00675): (lw − 1/(2β))² + (ll + 1/(2β))².
        LossType::SppoHard => ((&lw - 0.5 / b)?.sqr()? + (&ll + 0.5 / b)?.sqr()?)?,
        // APO-zero (D'Oosterlinck et al. 2024, arXiv 2408.06266): (1 − σ(β lw)) + σ(β ll).
        LossType::ApoZero => ((sigmoid(&(&lw * b)?)?.neg()? + 1.0)? + sigmoid(&(&ll * b)?)?)?,
        // APO-down (same paper): σ(β lw) + (1 − σ(βh)).
        LossType::ApoDown => (sigmoid(&(&lw * b)?)? + (sigmoid(&(&h * b)?)?.neg()? + 1.0)?)?,
        // DiscoPOP (Chris Lu et al. 2024, arXiv 2406.08414): ρ = βh;
        // (1 − σ(ρ/τ))·(−log σ(ρ)) + σ(ρ/τ)·e^{−ρ}.
        LossType::Discopop => {
            let rho = (&h * b)?;
            let m = sigmoid(&(&rho / p.discopop_tau)?)?;
            (((m.neg()? + 1.0)? * log_sigmoid(&rho)?.neg()?)? + (m * rho.neg()?.exp()?)?)?
        }
        // SFT: token-mean negative log-likelihood of the chosen completion.
        LossType::Sft => (&x.chosen / &x.chosen_len)?.neg()?,
        // Length-normalised DPO (TRL `sigmoid_norm`): −log σ(β (lw/|yw| − ll/|yl|)).
        LossType::SigmoidNorm => log_sigmoid(&((((&lw / &x.chosen_len)? - (&ll / &x.rejected_len)?)?) * b)?)?.neg()?,
        // SimPO (Meng et al. 2024, arXiv 2405.14734), reference-free: −log σ(β (Lw/|yw| − Ll/|yl|) − γ).
        LossType::Simpo => {
            let z = (((&x.chosen / &x.chosen_len)? - (&x.rejected / &x.rejected_len)?)? * b)?;
            log_sigmoid(&(z - p.simpo_gamma)?)?.neg()?
        }
        // CPO (Xu et al. 2024, arXiv 2401.08417): −log σ(β (Lw − Ll)) + α·NLL(yw) (token mean).
        LossType::Cpo => {
            let pref = log_sigmoid(&((&x.chosen - &x.rejected)? * b)?)?.neg()?;
            let nll = (&x.chosen / &x.chosen_len)?.neg()?;
            (pref + (nll * p.cpo_alpha)?)?
        }
        // ORPO (Hong et al. 2024, arXiv 2403.07691): NLL(yw) − λ·log σ(log-odds ratio), with
        // P = mean token log-prob and log-odds = (Pw − Pl) − (log(1 − e^{Pw}) − log(1 − e^{Pl})); λ = β.
        LossType::Orpo => {
            let (pw, pl) = ((&x.chosen / &x.chosen_len)?, (&x.rejected / &x.rejected_len)?);
            let log_odds = ((&pw - &pl)? - (log1mexp(&pw)? - log1mexp(&pl)?)?)?;
            (pw.neg()? - (log_sigmoid(&log_odds)? * b)?)?
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

/// A weighted sum of losses (TRL's `loss_type=[...]` with `loss_weights`), averaged over the batch.
pub fn combined_loss(kinds: &[(LossType, f64)], p: &LossParams, x: &PairLogps) -> Result<Tensor> {
    if kinds.is_empty() {
        bail!("no loss selected: loss_type must name at least one loss");
    }
    let mut total: Option<Tensor> = None;
    for &(k, w) in kinds {
        let l = (pair_loss(k, p, x)?.mean(D::Minus1)? * w)?;
        total = Some(match total {
            Some(t) => (t + l)?,
            None => l,
        });
    }
    Ok(total.unwrap())
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
