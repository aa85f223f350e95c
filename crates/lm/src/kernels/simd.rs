//! `exp` that compiles to SIMD, and a way to run a loop with the CPU's vector width.
//!
//! Why: the exponentials of softmax, log-softmax and SiLU went through libm's `expf`, one call per element,
//! which no compiler vectorises: 3.4% of a forward pass over SmolLM2's shape, and a loop that calls it stays
//! scalar in its other operations too. [`exp_f32`] is branch-free arithmetic (Cephes' `expf`: a range
//! reduction by ln 2 and a degree-6 polynomial, within 2 ulp of the true value), so a loop over a slice that
//! calls it compiles to vector instructions; [`vectorized`] compiles such a loop for AVX2 where the CPU has it
//! (the trick of gemm's `vectorize`). No fused multiply-add is written or contracted, so the AVX2 and the
//! baseline builds of a loop give the same bits.
//!
//! f64 keeps libm's `exp` ([`Float::vexp`]): it is what the finite-difference tests run in, and no f64 path is timed.

use super::Float;

/// e^x in f32 without a branch or a table: within 2 ulp of the true value where that is a normal float,
/// 0 below `ln(f32::MIN_POSITIVE)` (and for −∞), +∞ above `ln(f32::MAX)`, NaN for NaN.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts, the first exact in few bits, so that n·LN2_HI has no rounding error.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // ln(f32::MIN_POSITIVE) and ln(f32::MAX): below LO the result is subnormal or 0, above HI infinite.
    const LO: f32 = -87.336_55;
    const HI: f32 = 88.722_84;
    // 1.5 · 2²³: adding and subtracting it rounds to the nearest integer (for |v| < 2²²).
    const ROUND: f32 = 12_582_912.0;
    let c = x.clamp(LO, HI);
    let n = (c * LOG2E + ROUND) - ROUND;
    let r = c - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * r2 + r + 1.0;
    // y · 2ⁿ by adding n to y's exponent: y is in [0.7, 1.5) and n in −126..=128, so the exponent stays in
    // 0..=255, and reaches 255 (∞) only where the true value is above f32::MAX.
    let e = f32::from_bits((y.to_bits() as i32).wrapping_add((n as i32) << 23) as u32);
    if x.is_nan() {
        x
    } else if x < LO {
        0.0
    } else if x > HI {
        f32::INFINITY
    } else {
        e
    }
}

/// Runs `f` compiled for AVX2 where the CPU has it, else as built. `f` should be `#[inline(always)]` (closures
/// take the attribute) so that its loops are compiled inside the AVX2 function.
#[inline(always)]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked on the line above.
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// Lanes of the partial results that let a reduction loop vectorise: the compiler may not reorder a float
/// sum, so a loop adds into `LANES` independent sums, added together at the end. A fixed order, so the same
/// bits whatever the vector width.
pub const LANES: usize = 16;

/// `f(0) ⊕ f(1) ⊕ … ⊕ f(n−1)` for an associative `op` with identity `id`, in [`LANES`] partial results.
#[inline(always)]
pub fn lane_fold<T: Copy>(n: usize, id: T, op: impl Fn(T, T) -> T, f: impl Fn(usize) -> T) -> T {
    let mut acc = [id; LANES];
    let full = n / LANES * LANES;
    for i0 in (0..full).step_by(LANES) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a = op(*a, f(i0 + l));
        }
    }
    for (l, i) in (full..n).enumerate() {
        acc[l] = op(acc[l], f(i));
    }
    acc.iter().fold(id, |s, &a| op(s, a))
}

/// Σ x.
#[inline(always)]
pub(crate) fn sum<T: Float>(x: &[T]) -> T {
    lane_fold(x.len(), T::zero(), |a, b| a + b, |i| x[i])
}

/// max x (−∞ for none; NaN is skipped, as `f32::max` does).
#[inline(always)]
pub(crate) fn max<T: Float>(x: &[T]) -> T {
    lane_fold(x.len(), T::neg_infinity(), |a, b| num_traits::Float::max(a, b), |i| x[i])
}

/// A softmax of `y` in place, from `y` holding the logits: `y ← exp(y − max) / Σ exp(y − max)`.
#[inline(always)]
pub(crate) fn softmax_in_place<T: Float>(y: &mut [T]) {
    let m = max(y);
    y.iter_mut().for_each(|v| *v = (*v - m).vexp());
    let inv = sum(y).recip();
    y.iter_mut().for_each(|v| *v *= inv);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_f64_value_over_the_whole_normal_range() {
        let mut worst = (0, 0.0f32);
        let mut x = -87.3f32;
        while x < 88.72 {
            let want = (x as f64).exp() as f32;
            let u = ulps(exp_f32(x), want);
            if u > worst.0 {
                worst = (u, x);
            }
            x += 0.000_37;
        }
        eprintln!("worst {worst:?}");
        assert!(worst.0 <= 2, "exp_f32({}) is {} ulp off", worst.1, worst.0);
    }

    #[test]
    fn exp_takes_the_edges_as_libm_does() {
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-1e30), 0.0);
        assert_eq!(exp_f32(-100.0), 0.0);
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_f32(89.0), f32::INFINITY);
        assert!(exp_f32(f32::NAN).is_nan());
        // Just inside the range, finite and positive.
        assert!(exp_f32(-87.3) > 0.0 && exp_f32(88.3).is_finite());
    }

    #[test]
    fn a_vectorized_loop_gives_the_bits_of_the_plain_one() {
        let x: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.173).collect();
        let plain: Vec<f32> = x.iter().map(|&v| exp_f32(v)).collect();
        let fast = vectorized(
            #[inline(always)]
            || x.iter().map(|&v| exp_f32(v)).collect::<Vec<f32>>(),
        );
        assert_eq!(plain, fast);
        let s = vectorized(|| lane_fold(x.len(), 0.0f32, |a, b| a + b, |i| exp_f32(x[i] * 0.01)));
        let want: f64 = x.iter().map(|&v| (v as f64 * 0.01).exp()).sum();
        assert!(((s as f64 - want) / want).abs() < 1e-6, "{s} vs {want}");
    }
}
