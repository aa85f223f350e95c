//! KTO's loss and metrics for one micro-batch, as TRL 0.27.2's `KTOTrainer.kto_loss` and
//! `get_batch_loss_metrics` compute them (`kto_trainer.py:991-1066`, `:1189-1303`), and their aggregation over a
//! logging window, as its `log` does (`:1486-1519`). `crates/dpo/tests/trl_kto_parity.rs` checks all three
//! against TRL's own code (`scripts/trl_kto_fixture.py`).
//!
//! Notation: for row i with prompt xᵢ and completion yᵢ, `rᵢ = log π(yᵢ|xᵢ) − log π_ref(yᵢ|xᵢ)`; the KL rows pair
//! xᵢ with another row's completion y'ᵢ of the same batch ([`kl_partners`]), and
//! `z0 = max(0, mean_i(log π(y'ᵢ|xᵢ) − log π_ref(y'ᵢ|xᵢ)))` is computed from them *as a number*: TRL detaches it
//! (`kto_trainer.py:1022-1023`, and computes the policy's KL log-probs under `no_grad`, `:1077-1078`), so no
//! gradient flows through the reference point.

use crate::loss::kto_loss as kto_formula;
use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// Which KTO loss (TRL 0.27.2 `KTOConfig.loss_type`, kto_config.py:141-147).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum KtoLossType {
    /// KTO (Ethayarajh et al. 2024, arXiv 2402.01306, eq. 7): desirable `1 − σ(β (r − z0))`, undesirable
    /// `1 − σ(β (z0 − r))` (kto_trainer.py:1031-1033, 1050-1051).
    #[default]
    Kto,
    /// APO-zero for unpaired data (D'Oosterlinck et al. 2024, arXiv 2408.06266, eq. 7): desirable `1 − σ(β r)`,
    /// undesirable `σ(β r)` (kto_trainer.py:1034-1037, 1052-1053); no KL rows are scored.
    ApoZeroUnpaired,
}

impl KtoLossType {
    pub const ALL: [KtoLossType; 2] = [KtoLossType::Kto, KtoLossType::ApoZeroUnpaired];

    /// The TRL name, as the config and `--loss-type` spell it.
    pub fn name(self) -> &'static str {
        match self {
            KtoLossType::Kto => "kto",
            KtoLossType::ApoZeroUnpaired => "apo_zero_unpaired",
        }
    }

    /// The KTO loss of this name, if it is one.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.name() == name.trim())
    }

    /// Whether the loss needs the KL estimate z0 (TRL's `calculate_KL`, kto_trainer.py:498-501).
    pub fn uses_kl(self) -> bool {
        self == KtoLossType::Kto
    }
}

/// For the rows of one micro-batch, the row whose completion each prompt is paired with for the KL estimate: the
/// completions shifted by one, `y'ᵢ = y_{i−1}` and `y'₀ = y_{B−1}`, as TRL's `_get_kl_dataset`
/// (kto_trainer.py:84-92). A batch of one row is paired with itself (TRL does the same for a last chunk of one).
pub fn kl_partners(rows: &[usize]) -> Vec<usize> {
    let b = rows.len();
    (0..b).map(|i| rows[(i + b - 1) % b]).collect()
}

/// One micro-batch's sequence log-probs, in row order, each `(B,)`.
#[derive(Debug, Clone)]
pub struct KtoLogps {
    /// Policy log-probs of each row's completion (summed over its tokens), part of the graph.
    pub policy: Tensor,
    /// Reference log-probs of the same (no graph).
    pub reference: Tensor,
    /// Policy and reference log-probs of the KL rows (prompt i with [`kl_partners`]' completion); `None` for
    /// losses without z0. Treated as constants whatever graph they carry.
    pub policy_kl: Option<Tensor>,
    pub reference_kl: Option<Tensor>,
    /// Row i is desirable (TRL's `label`).
    pub label: Vec<bool>,
}

/// The loss of one micro-batch and what its metrics need.
#[derive(Debug, Clone)]
pub struct KtoLoss {
    /// Scalar: the mean of the weighted per-row losses (TRL's `losses.nanmean()`, kto_trainer.py:1299).
    pub loss: Tensor,
    /// `(B,)` weighted per-row losses in row order (TRL concatenates the desirable rows' then the undesirable
    /// rows'; the mean is the same).
    pub losses: Tensor,
    /// `(B,)` implicit rewards `β r`, detached.
    pub rewards: Tensor,
    /// The KL estimate z0 (≥ 0; 0 for losses without it): a number, so it carries no gradient.
    pub kl: f64,
}

fn f64s(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.detach().to_dtype(DType::F64)?.to_vec1::<f64>()?)
}

/// The KL estimate z0 = `max(0, mean(policy_kl − reference_kl))`, detached (kto_trainer.py:1021-1025).
pub fn kl_estimate(policy_kl: &Tensor, reference_kl: &Tensor) -> Result<f64> {
    let d = (policy_kl.detach().to_dtype(DType::F64)? - reference_kl.detach().to_dtype(DType::F64)?)?;
    Ok(d.mean_all()?.to_scalar::<f64>()?.max(0.0))
}

/// KTO's loss on one micro-batch (TRL's `kto_loss`, kto_trainer.py:991-1066). `apo_zero_unpaired` is the same
/// formula with z0 fixed at 0, since `σ(β r) = 1 − σ(β (0 − r))`.
pub fn kto_loss(
    kind: KtoLossType,
    beta: f64,
    desirable_weight: f64,
    undesirable_weight: f64,
    x: &KtoLogps,
) -> Result<KtoLoss> {
    let b = x.label.len();
    if b == 0 || x.policy.dims1()? != b || x.reference.dims1()? != b {
        bail!(
            "kto_loss: {} labels for {:?} policy and {:?} reference log-probs",
            b,
            x.policy.dims(),
            x.reference.dims()
        );
    }
    let kl = match (kind.uses_kl(), &x.policy_kl, &x.reference_kl) {
        (false, _, _) => 0.0,
        (true, Some(p), Some(r)) => kl_estimate(p, r)?,
        (true, _, _) => bail!("kto_loss: loss_type \"kto\" needs the KL rows' policy and reference log-probs"),
    };
    let logratio = (&x.policy - &x.reference.to_dtype(x.policy.dtype())?)?;
    let desirable: Vec<f64> = x.label.iter().map(|&l| if l { 1.0 } else { 0.0 }).collect();
    let desirable = Tensor::new(desirable, x.policy.device())?.to_dtype(x.policy.dtype())?;
    let losses = kto_formula(&logratio, &desirable, kl, beta, desirable_weight, undesirable_weight)?;
    let loss = losses.mean_all()?;
    let rewards = (logratio.detach() * beta)?;
    Ok(KtoLoss { loss, losses, rewards, kl })
}

/// One micro-batch's metrics under TRL's per-batch names (kto_trainer.py:1270-1297): `kl`, and for each side that
/// has rows `rewards/{side}_sum`, `logps/{side}_sum`, `logits/{side}_sum`, `count/{side}` (side = `chosen` for
/// desirable rows, `rejected` for undesirable ones).
///
/// `mean_logits` `(B,)` is each row's mean logit over its completion positions (what `dpo`'s `logits/*` log).
/// TRL 0.27.2's KTO sums every logit of the padded row, prompt and padding included, over the whole vocabulary
/// (kto_trainer.py:983-984, 1282-1284), a number that depends on how the batch is padded; this logs the per-row
/// mean logit instead, so `logits/chosen` means the same here as in a DPO run.
pub fn batch_metrics(x: &KtoLogps, out: &KtoLoss, mean_logits: &Tensor) -> Result<BTreeMap<&'static str, f64>> {
    let (rewards, logps, logits) = (f64s(&out.rewards)?, f64s(&x.policy)?, f64s(mean_logits)?);
    let mut m = BTreeMap::new();
    m.insert("kl", out.kl);
    for (want, keys) in [
        (true, ["rewards/chosen_sum", "logps/chosen_sum", "logits/chosen_sum", "count/chosen"]),
        (false, ["rewards/rejected_sum", "logps/rejected_sum", "logits/rejected_sum", "count/rejected"]),
    ] {
        let rows: Vec<usize> = (0..x.label.len()).filter(|&i| x.label[i] == want).collect();
        if rows.is_empty() {
            continue;
        }
        let sum = |v: &[f64]| rows.iter().map(|&i| v[i]).sum::<f64>();
        m.insert(keys[0], sum(&rewards));
        m.insert(keys[1], sum(&logps));
        m.insert(keys[2], sum(&logits));
        m.insert(keys[3], rows.len() as f64);
    }
    Ok(m)
}

/// The metrics of a logging window, aggregated as TRL's `KTOTrainer.log` does (kto_trainer.py:1486-1519):
/// `rewards/*`, `logps/*`, `logits/*` are per-row means over the whole window (Σ of the batches' `_sum` / Σ of
/// their `count`), `rewards/margins` = `rewards/chosen − rewards/rejected` when both sides had rows, `kl` the mean
/// of the batches' estimates, `loss` the mean of the batches' losses (HF's logged training loss).
#[derive(Debug, Default)]
pub struct KtoWindow {
    losses: Vec<f64>,
    batches: Vec<BTreeMap<&'static str, f64>>,
}

impl KtoWindow {
    pub fn add(&mut self, loss: f64, metrics: BTreeMap<&'static str, f64>) {
        self.losses.push(loss);
        self.batches.push(metrics);
    }

    pub fn is_empty(&self) -> bool {
        self.losses.is_empty()
    }

    /// The window's metrics with `prefix` (`""` for training, `"eval_"` for evaluation), and a fresh window.
    pub fn take(&mut self, prefix: &str) -> Map<String, Value> {
        let mut m = Map::new();
        let total = |key: &str| -> f64 { self.batches.iter().filter_map(|b| b.get(key)).sum() };
        let mut side_means = BTreeMap::new();
        for side in ["chosen", "rejected"] {
            let count = total(&format!("count/{side}"));
            if count > 0.0 {
                for metric in ["rewards", "logps", "logits"] {
                    let v = total(&format!("{metric}/{side}_sum")) / count;
                    side_means.insert(format!("{metric}/{side}"), v);
                    m.insert(format!("{prefix}{metric}/{side}"), json!(v));
                }
            }
        }
        if let (Some(c), Some(r)) = (side_means.get("rewards/chosen"), side_means.get("rewards/rejected")) {
            m.insert(format!("{prefix}rewards/margins"), json!(c - r));
        }
        let n = self.batches.len().max(1) as f64;
        m.insert(format!("{prefix}kl"), json!(total("kl") / n));
        m.insert(format!("{prefix}loss"), json!(self.losses.iter().sum::<f64>() / n));
        *self = Self::default();
        m
    }
}

/// TRL's advice when desirable and undesirable rows are unbalanced (kto_trainer.py:647-669, the bounds of the KTO
/// paper's eq. 8): `None` when the counts are equal or either weight is in its recommended range, else the
/// warning, naming both ranges.
pub fn weight_advice(
    n_desirable: usize,
    n_undesirable: usize,
    desirable_weight: f64,
    undesirable_weight: f64,
) -> Option<String> {
    let nd = n_desirable.max(1) as f64;
    let nu = n_undesirable.max(1) as f64;
    if nd == nu {
        return None;
    }
    let round2 = |x: f64| (x * 100.0).round() / 100.0;
    let des = (round2(nu * undesirable_weight / nd), round2(nu * undesirable_weight / nd * 1.33));
    let und = (round2(nd * desirable_weight / nu / 1.33), round2(nd * desirable_weight / nu));
    let inside = |w: f64, (lo, hi): (f64, f64)| lo <= w && w <= hi;
    if inside(desirable_weight, des) || inside(undesirable_weight, und) {
        return None;
    }
    Some(format!(
        "{n_desirable} desirable and {n_undesirable} undesirable rows, but kto.desirable_weight = {desirable_weight} \
         and kto.undesirable_weight = {undesirable_weight} are outside the KTO paper's recommended ranges; set EITHER \
         desirable_weight in [{}, {}] OR undesirable_weight in [{}, {}] (not both)",
        des.0, des.1, und.0, und.1
    ))
}
