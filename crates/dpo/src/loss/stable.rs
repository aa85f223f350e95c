//! Elementwise functions the losses need in a numerically stable form, with gradients that stay exact where a
//! naive formula's would not (candle has no `log1p`, `expm1` or `log_sigmoid`). Kept apart from the losses so
//! that the loss file reads as the losses.

use anyhow::Result;
use candle_core::{DType, Tensor};

/// `log σ(x) = −softplus(−x)`, stable for large |x| and with an exact gradient everywhere.
///
/// Why branches rather than `min(x, 0) − log(1 + e^{−|x|})`: at x = 0 candle gives `min` half the gradient and
/// `|x|` a full one-sided one, so that form's derivative there is 1 instead of σ(0) = ½ — and x = 0 is where
/// every DPO margin starts (policy = reference). Each branch sees only its own half-line, so neither exp
/// overflows and only the selected branch's gradient reaches the result.
pub fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    let pos = x.ge(0.0)?;
    let zeros = x.zeros_like()?;
    let xp = pos.where_cond(x, &zeros)?;
    let xn = pos.where_cond(&zeros, x)?;
    let a = log1p(&xp.neg()?.exp()?)?.neg()?; // −log(1 + e^{−x}), x ≥ 0
    let b = (&xn - log1p(&xn.exp()?)?)?; // x − log(1 + eˣ), x < 0
    Ok(pos.where_cond(&a, &b)?)
}

pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    Ok(log_sigmoid(x)?.exp()?)
}

/// `softplus(x) = log(1 + eˣ)`, stable for large |x|.
pub fn softplus(x: &Tensor) -> Result<Tensor> {
    Ok(log_sigmoid(&x.neg()?)?.neg()?)
}

/// A tensor like `x` filled with `v`.
fn full_like(x: &Tensor, v: f64) -> Result<Tensor> {
    Ok((x.zeros_like()? + v)?)
}

/// `log(1 + y)` for y > −1, accurate to working precision even where `1 + y` rounds (candle has no `log1p`):
/// with `w = fl(1 + y)`, `log(w) · y / (w − 1)` is exact to a few ulps (Goldberg 1991, "What every computer
/// scientist should know about floating-point arithmetic", Theorem 4), and where `w` rounds to 1, `log1p(y) = y`.
pub fn log1p(y: &Tensor) -> Result<Tensor> {
    let w = (y + 1.0)?;
    let d = (&w - 1.0)?;
    let rounds_to_one = d.eq(0.0)?;
    // Only the selected branch may carry a gradient: where w = 1 the general branch would form log(1)·y/0,
    // so it is fed w = 2, d = 1 there (a finite value that where_cond then drops, gradient and all).
    let w_safe = rounds_to_one.where_cond(&full_like(&w, 2.0)?, &w)?;
    let d_safe = rounds_to_one.where_cond(&full_like(&d, 1.0)?, &d)?;
    let general = (w_safe.log()? * (y / d_safe)?)?;
    Ok(rounds_to_one.where_cond(y, &general)?)
}

/// `eˣ − 1` accurate for small |x| (candle has no `expm1`): the identity `eˣ − 1 = tanh(x/2) · (eˣ + 1)` has no
/// cancellation, and `tanh` is accurate near 0 (and its gradient finite everywhere).
pub fn expm1(x: &Tensor) -> Result<Tensor> {
    Ok(((x * 0.5)?.tanh()? * (x.exp()? + 1.0)?)?)
}

/// `log(1 − eˣ)` for x < 0, as ORPO needs (TRL's `log1mexp`, orpo_trainer.py:76). Mächler (2012), "Accurately
/// computing log(1 − exp(−|a|))": `log(−expm1(x))` for x > −ln 2, `log1p(−eˣ)` otherwise.
///
/// Why not compute both and pick one: each branch is singular in the other's domain (`log(−expm1(x))` is
/// log 0 where eˣ rounds to 1 only in the far branch, `log1p(−eˣ)` is log 0 as x → 0), and `where_cond`
/// passes a zero gradient into the unused branch, where 0 × ∞ is NaN. So each branch is evaluated on `x`
/// clamped into its own domain, and only the selected one's value and gradient reach the result.
pub fn log1mexp(x: &Tensor) -> Result<Tensor> {
    let ln2 = std::f64::consts::LN_2;
    let near_zero = x.gt(-ln2)?;
    // Branch inputs: the near branch never sees x ≤ −ln 2, the far branch never sees x > −ln 2.
    let xa = near_zero.where_cond(x, &full_like(x, -1.0)?)?;
    let xb = near_zero.where_cond(&full_like(x, -1.0)?, x)?;
    let a = expm1(&xa)?.neg()?.log()?;
    let b = log1p(&xb.exp()?.neg()?)?;
    Ok(near_zero.where_cond(&a, &b)?)
}

/// The largest finite value of a float dtype.
pub(super) fn dtype_max(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => f64::MAX,
        DType::F16 => 65504.0,
        _ => f32::MAX as f64, // f32 and bf16 share the exponent range
    }
}

/// Largest exponent whose `exp` the dtype still holds, as TRL's `get_exp_cap` (utils.py:335): ln(max) floored
/// to 4 decimals.
fn exp_cap(dtype: DType) -> f64 {
    (dtype_max(dtype).ln() * 1e4).floor() / 1e4
}

/// TRL's `cap_exp` (utils.py:352): `exp(min(x, cap))`, so large arguments saturate instead of overflowing.
pub(super) fn cap_exp(x: &Tensor) -> Result<Tensor> {
    Ok(x.minimum(exp_cap(x.dtype()))?.exp()?)
}
