//! Every loss against values computed by hand: literal numbers worked out on paper for the simplest
//! cases, and an independent scalar f64 transcription of each paper's formula for two pairs. Then the
//! calculus: every loss's gradient against finite differences, every loss finite (value and gradient) at huge
//! margins, and `log1mexp` exact with finite gradients up to 0. (TRL's own numbers: tests/trl_parity.rs.)

use candle_core::{DType, Device, Tensor, Var};
use dpo::loss::{
    combined_loss, kto_loss, log1mexp, pair_loss, rewards, token_loss, FDivergence, LossParams, LossType, PairLogps,
    TokenLogps,
};

fn t(v: &[f64]) -> Tensor {
    Tensor::new(v, &Device::Cpu).unwrap()
}

/// Two pairs: pair 0 has lw = 1, ll = −1 (h = 2); pair 1 has lw = −1, ll = 1 (h = −2).
const LW: [f64; 2] = [-10.0, -20.0];
const LL: [f64; 2] = [-12.0, -18.0];
const RW: [f64; 2] = [-11.0, -19.0];
const RL: [f64; 2] = [-11.0, -19.0];
const NW: [f64; 2] = [4.0, 5.0];
const NL: [f64; 2] = [2.0, 8.0];

fn pairs() -> PairLogps {
    PairLogps {
        chosen: t(&LW),
        rejected: t(&LL),
        ref_chosen: t(&RW),
        ref_rejected: t(&RL),
        chosen_len: t(&NW),
        rejected_len: t(&NL),
    }
}

fn ls(x: f64) -> f64 {
    // log σ(x), written the textbook way (fine for these small arguments).
    -(1.0 + (-x).exp()).ln()
}
fn sg(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// −(1−ε) log σ(z) − ε log σ(−z).
fn smoothed(z: f64, e: f64) -> f64 {
    -(1.0 - e) * ls(z) - e * ls(-z)
}

/// Ascending copy.
fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// The formula of each loss for pair i, transcribed from the papers (docs/algorithm.md#losses). NLL terms are
/// TRL's: one cross-entropy over every chosen token of the batch.
fn reference(kind: LossType, p: &LossParams, i: usize) -> f64 {
    let (b, e) = (p.beta, p.label_smoothing);
    let (lw, ll) = (LW[i] - RW[i], LL[i] - RL[i]);
    let h = lw - ll;
    let (aw, al) = (LW[i] / NW[i], LL[i] / NL[i]);
    let nll = -(LW[0] + LW[1]) / (NW[0] + NW[1]);
    match kind {
        LossType::Sigmoid => -(1.0 - e) * ls(b * h) - e * ls(-b * h),
        LossType::Robust => (-(1.0 - e) * ls(b * h) + e * ls(-b * h)) / (1.0 - 2.0 * e),
        LossType::Ipo => (lw / NW[i] - ll / NL[i] - 1.0 / (2.0 * b)).powi(2),
        LossType::Hinge => (1.0 - b * h).max(0.0),
        LossType::ExoPair => sg(b * h) * (ls(b * h) - (1.0 - e).ln()) + sg(-b * h) * (ls(-b * h) - e.ln()),
        LossType::NcaPair => -ls(b * lw) - 0.5 * ls(-b * lw) - 0.5 * ls(-b * ll),
        LossType::BcoPair => -ls(b * lw - p.bco_delta) - ls(-(b * ll - p.bco_delta)),
        LossType::SppoHard => (lw - 0.5 / b).powi(2) + (ll + 0.5 / b).powi(2),
        LossType::Aot => {
            // Rank i of the sorted policy log-odds against rank i of the sorted reference log-odds.
            let pol = sorted((0..2).map(|j| LW[j] - LL[j]).collect());
            let refr = sorted((0..2).map(|j| RW[j] - RL[j]).collect());
            smoothed(b * (pol[i] - refr[i]), e)
        }
        LossType::AotPair => {
            let w = sorted((0..2).map(|j| LW[j] - RW[j]).collect());
            let l = sorted((0..2).map(|j| LL[j] - RL[j]).collect());
            smoothed(b * (w[i] - l[i]), e)
        }
        LossType::ApoZero => (1.0 - sg(b * lw)) + sg(b * ll),
        LossType::ApoDown => sg(b * lw) + (1.0 - sg(b * h)),
        LossType::Discopop => {
            let r = b * h;
            let m = sg(r / p.discopop_tau);
            (1.0 - m) * -ls(r) + m * (-r).exp()
        }
        LossType::Sft => nll,
        LossType::SigmoidNorm => -ls(b * (lw / NW[i] - ll / NL[i])),
        LossType::Simpo => smoothed(b * (aw - al) - p.simpo_gamma, e),
        LossType::Cpo => smoothed(b * (LW[i] - LL[i]), e) + p.cpo_alpha * nll,
        LossType::Orpo => {
            let odds = (aw - al) - ((1.0 - aw.exp()).ln() - (1.0 - al.exp()).ln());
            nll - b * ls(odds)
        }
        LossType::Rdpo => -ls(b * h + p.rdpo_alpha * (NW[i] - NL[i])),
        LossType::DpoShift => -ls(b * (lw - p.dpo_shift_lambda * ll)),
        LossType::Hdpo => -ls(b * (p.hdpo_alpha * (LW[i] - LL[i]) - (RW[i] - RL[i]))),
    }
}

fn params() -> LossParams {
    LossParams {
        beta: 0.5,
        label_smoothing: 0.1,
        discopop_tau: 0.05,
        simpo_gamma: 0.3,
        cpo_alpha: 0.7,
        rdpo_alpha: 0.05,
        dpo_shift_lambda: 0.75,
        hdpo_alpha: 0.8,
        bco_delta: 0.2,
        ..Default::default()
    }
}

#[test]
fn every_loss_matches_its_formula() {
    let p = params();
    for kind in LossType::ALL {
        let got: Vec<f64> = pair_loss(kind, &p, &pairs()).unwrap().to_vec1().unwrap();
        for (i, &g) in got.iter().enumerate() {
            let want = reference(kind, &p, i);
            assert!((g - want).abs() < 1e-9, "{kind:?} pair {i}: {g} vs hand-computed {want}");
        }
    }
}

#[test]
fn literal_values_worked_by_hand() {
    let p = LossParams { beta: 0.5, ..Default::default() };
    let x = pairs();
    // βh = ±1: DPO loss = ln(1 + e^{∓1}).
    let dpo: Vec<f64> = pair_loss(LossType::Sigmoid, &p, &x).unwrap().to_vec1().unwrap();
    assert!((dpo[0] - 0.313_261_687_518_222_9).abs() < 1e-12);
    assert!((dpo[1] - 1.313_261_687_518_222_9).abs() < 1e-12);
    // Hinge: max(0, 1 − βh) = 0 and 2.
    let hinge: Vec<f64> = pair_loss(LossType::Hinge, &p, &x).unwrap().to_vec1().unwrap();
    assert_eq!(hinge, vec![0.0, 2.0]);
    // SPPO-hard with 1/(2β) = 1: (1−1)² + (−1+1)² = 0 and (−1−1)² + (1+1)² = 8.
    let sppo: Vec<f64> = pair_loss(LossType::SppoHard, &p, &x).unwrap().to_vec1().unwrap();
    assert_eq!(sppo, vec![0.0, 8.0]);
    // SFT: TRL's NLL pooled over every chosen token of the batch, (10 + 20) / (4 + 5), the same for each pair —
    // not the per-pair means 10/4 and 20/5.
    let sft: Vec<f64> = pair_loss(LossType::Sft, &p, &x).unwrap().to_vec1().unwrap();
    assert_eq!(sft, vec![30.0 / 9.0; 2]);
    // Equal policy and reference: every DPO-style loss starts at ln 2.
    let same = PairLogps { chosen: t(&RW), rejected: t(&RL), ..pairs() };
    let l: Vec<f64> = pair_loss(LossType::Sigmoid, &p, &same).unwrap().to_vec1().unwrap();
    assert!((l[0] - std::f64::consts::LN_2).abs() < 1e-12);
}

#[test]
fn special_cases_reduce_to_dpo() {
    let base = LossParams { beta: 0.5, ..Default::default() };
    let dpo: Vec<f64> = pair_loss(LossType::Sigmoid, &base, &pairs()).unwrap().to_vec1().unwrap();
    for (kind, p) in [
        (LossType::Robust, base.clone()),
        (LossType::Rdpo, LossParams { rdpo_alpha: 0.0, ..base.clone() }),
        (LossType::DpoShift, LossParams { dpo_shift_lambda: 1.0, ..base.clone() }),
        (LossType::Hdpo, LossParams { hdpo_alpha: 1.0, ..base.clone() }),
    ] {
        let got: Vec<f64> = pair_loss(kind, &p, &pairs()).unwrap().to_vec1().unwrap();
        for i in 0..2 {
            assert!((got[i] - dpo[i]).abs() < 1e-12, "{kind:?} should equal DPO at its neutral setting");
        }
    }
}

#[test]
fn numerically_stable_at_large_margins() {
    let p = LossParams { beta: 1.0, ..Default::default() };
    let x = PairLogps {
        chosen: t(&[0.0, -1000.0]),
        rejected: t(&[-1000.0, 0.0]),
        ref_chosen: t(&[0.0, 0.0]),
        ref_rejected: t(&[0.0, 0.0]),
        chosen_len: t(&[1.0, 1.0]),
        rejected_len: t(&[1.0, 1.0]),
    };
    let l: Vec<f64> = pair_loss(LossType::Sigmoid, &p, &x).unwrap().to_vec1().unwrap();
    assert!(l[0].abs() < 1e-300 && (l[1] - 1000.0).abs() < 1e-9, "{l:?}");
}

#[test]
fn combined_weights_and_rewards() {
    let p = params();
    let x = pairs();
    let c: f64 = combined_loss(&[(LossType::Sigmoid, 1.0), (LossType::Sft, 0.5)], &p, &x).unwrap().to_scalar().unwrap();
    let want = (reference(LossType::Sigmoid, &p, 0) + reference(LossType::Sigmoid, &p, 1)) / 2.0
        + 0.5 * (reference(LossType::Sft, &p, 0) + reference(LossType::Sft, &p, 1)) / 2.0;
    assert!((c - want).abs() < 1e-12);
    let (rc, rr) = rewards(&p, &x).unwrap();
    assert_eq!(rc.to_vec1::<f64>().unwrap(), vec![0.5, -0.5]);
    assert_eq!(rr.to_vec1::<f64>().unwrap(), vec![-0.5, 0.5]);
    assert!(combined_loss(&[], &p, &x).is_err());
}

#[test]
fn bad_settings_are_errors() {
    let x = pairs();
    let err = pair_loss(LossType::ExoPair, &LossParams { label_smoothing: 0.0, ..Default::default() }, &x).unwrap_err();
    assert!(err.to_string().contains("exo_pair"));
    assert!(pair_loss(LossType::Robust, &LossParams { label_smoothing: 0.5, ..Default::default() }, &x).is_err());
}

#[test]
fn kto_matches_its_formula() {
    let (beta, z0, wd, wu) = (0.1, 0.3, 1.0, 1.5);
    let lr = [2.0, -1.0, 0.5];
    let des = [1.0, 0.0, 0.0];
    let got: Vec<f64> = kto_loss(&t(&lr), &t(&des), z0, beta, wd, wu).unwrap().to_vec1().unwrap();
    for i in 0..3 {
        let want =
            if des[i] == 1.0 { wd * (1.0 - sg(beta * (lr[i] - z0))) } else { wu * (1.0 - sg(beta * (z0 - lr[i]))) };
        assert!((got[i] - want).abs() < 1e-12, "{i}: {} vs {want}", got[i]);
    }
    // z0 is clamped at zero.
    let a: Vec<f64> = kto_loss(&t(&lr), &t(&des), -5.0, beta, wd, wu).unwrap().to_vec1().unwrap();
    let b: Vec<f64> = kto_loss(&t(&lr), &t(&des), 0.0, beta, wd, wu).unwrap().to_vec1().unwrap();
    assert_eq!(a, b);
}

#[test]
fn loss_names_are_trls_and_an_unknown_one_lists_the_valid_ones() {
    for l in LossType::ALL {
        // The name the config's serde spelling uses, and back.
        assert_eq!(serde_json::to_value(l).unwrap(), serde_json::json!(l.name()));
        assert_eq!(LossType::parse(l.name()).unwrap(), l);
    }
    let e = LossType::parse("nosuch").unwrap_err().to_string();
    assert!(e.starts_with("unknown loss \"nosuch\"; valid loss types: sigmoid, robust, ipo,"), "{e}");
    assert!(LossType::ALL.iter().all(|l| e.contains(l.name())), "{e}");
}

#[test]
fn rpo_adds_the_pooled_nll_to_every_pair() {
    let p = LossParams { beta: 0.5, rpo_alpha: Some(0.4), ..Default::default() };
    let x = pairs();
    let got: f64 = combined_loss(&[(LossType::Sigmoid, 1.0)], &p, &x).unwrap().to_scalar().unwrap();
    let q = LossParams { rpo_alpha: None, ..p.clone() };
    let want = (reference(LossType::Sigmoid, &q, 0) + reference(LossType::Sigmoid, &q, 1)) / 2.0
        + 0.4 * reference(LossType::Sft, &q, 0);
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
}

#[test]
fn options_without_per_token_inputs_or_with_the_wrong_loss_are_errors() {
    let x = pairs();
    for p in [
        LossParams { use_weighting: true, ..Default::default() },
        LossParams { ld_alpha: Some(0.5), ..Default::default() },
    ] {
        let e = combined_loss(&[(LossType::Sigmoid, 1.0)], &p, &x).unwrap_err().to_string();
        assert!(e.contains("per-token"), "{e}");
    }
    // An f-divergence only some losses use: naming the key, its value and the loss that would ignore it.
    let p = LossParams { f_divergence_type: FDivergence::JsDivergence, ..Default::default() };
    let e = pair_loss(LossType::NcaPair, &p, &x).unwrap_err().to_string();
    assert!(e.contains("f_divergence_type") && e.contains("js_divergence") && e.contains("nca_pair"), "{e}");
    let p = LossParams {
        f_divergence_type: FDivergence::AlphaDivergence,
        f_alpha_divergence_coef: 0.0,
        ..Default::default()
    };
    let e = pair_loss(LossType::Sigmoid, &p, &x).unwrap_err().to_string();
    assert!(e.contains("f_alpha_divergence_coef") && e.contains('0'), "{e}");
}

// ---- per-token options: hand-computed ------------------------------------------------------------------

fn t2(rows: &[&[f64]]) -> Tensor {
    let w = rows.iter().map(|r| r.len()).max().unwrap();
    let v: Vec<Vec<f64>> =
        rows.iter().map(|r| r.iter().copied().chain(std::iter::repeat(0.0)).take(w).collect()).collect();
    Tensor::new(v, &Device::Cpu).unwrap()
}

fn mask(lens: &[usize], w: usize) -> Tensor {
    let v: Vec<Vec<f64>> = lens.iter().map(|&n| (0..w).map(|k| if k < n { 1.0 } else { 0.0 }).collect()).collect();
    Tensor::new(v, &Device::Cpu).unwrap()
}

/// Two pairs: chosen of 3 and 1 tokens, rejected of 2 and 4.
fn token_pairs() -> TokenLogps {
    TokenLogps {
        chosen: t2(&[&[-0.5, -1.0, -2.0], &[-0.25]]),
        rejected: t2(&[&[-1.5, -0.75], &[-0.5, -1.0, -3.0, -0.2]]),
        chosen_mask: mask(&[3, 1], 3),
        rejected_mask: mask(&[2, 4], 4),
        chosen_log_sum_sq: Some(t2(&[&[-0.3, -0.6, -1.1], &[-0.1]])),
        rejected_log_sum_sq: Some(t2(&[&[-0.9, -0.4], &[-0.2, -0.7, -1.3, -0.05]])),
    }
}

#[test]
fn ld_dpo_splits_each_completion_at_the_shorter_length() {
    let t = token_pairs();
    // Shared lengths 2 and 1: pair 0 chosen −0.5 − 1.0 + α(−2.0), rejected whole; pair 1 chosen whole, rejected
    // −0.5 + α(−1.0 − 3.0 − 0.2).
    let a = 0.3;
    let (c, r) = t.ld_logps(a).unwrap();
    let want_c = [-1.5 + a * -2.0, -0.25];
    let want_r = [-2.25, -0.5 + a * -4.2];
    for i in 0..2 {
        assert!((c.to_vec1::<f64>().unwrap()[i] - want_c[i]).abs() < 1e-12);
        assert!((r.to_vec1::<f64>().unwrap()[i] - want_r[i]).abs() < 1e-12);
    }
    // ld_alpha = 1 is plain DPO.
    let (c1, r1) = t.ld_logps(1.0).unwrap();
    let (cs, rs) = t.sums().unwrap();
    assert_eq!(c1.to_vec1::<f64>().unwrap(), cs.to_vec1::<f64>().unwrap());
    assert_eq!(r1.to_vec1::<f64>().unwrap(), rs.to_vec1::<f64>().unwrap());
}

#[test]
fn wpo_weights_pair_each_token_with_its_own_distribution() {
    let t = token_pairs();
    let w: Vec<f64> = t.wpo_weights().unwrap().to_vec1().unwrap();
    // Token means of log p − log Σp²: every token counts, the last included.
    let mc0: f64 = ((-0.5 + 0.3) + (-1.0 + 0.6) + (-2.0 + 1.1)) / 3.0;
    let mr0 = ((-1.5 + 0.9) + (-0.75 + 0.4)) / 2.0;
    let mc1: f64 = -0.25 + 0.1;
    let mr1 = ((-0.5 + 0.2) + (-1.0 + 0.7) + (-3.0 + 1.3) + (-0.2 + 0.05)) / 4.0;
    let want = [(mc0 + mr0).exp().min(1.0), (mc1 + mr1).exp().min(1.0)];
    for i in 0..2 {
        assert!((w[i] - want[i]).abs() < 1e-12, "{w:?} vs {want:?}");
    }
    // Without log Σp², weighting is an error naming what is missing.
    let e = TokenLogps { chosen_log_sum_sq: None, ..t }.wpo_weights().unwrap_err().to_string();
    assert!(e.contains("use_weighting") && e.contains("log Σ p²"), "{e}");
}

#[test]
fn token_loss_uses_plain_sums_for_the_nll_and_desensitised_ones_for_the_margin() {
    let t = token_pairs();
    let rc = Tensor::new(&[-3.0f64, -0.5], &Device::Cpu).unwrap();
    let rr = Tensor::new(&[-2.0f64, -5.0], &Device::Cpu).unwrap();
    let p = LossParams { beta: 0.5, ld_alpha: Some(0.3), rpo_alpha: Some(1.0), ..Default::default() };
    let (loss, x) = token_loss(&[(LossType::Sigmoid, 1.0)], &p, &t, &rc, &rr).unwrap();
    let (c, r) = t.ld_logps(0.3).unwrap();
    assert_eq!(x.chosen.to_vec1::<f64>().unwrap(), c.to_vec1::<f64>().unwrap());
    let (c, r) = (c.to_vec1::<f64>().unwrap(), r.to_vec1::<f64>().unwrap());
    // NLL: every chosen token, undiscounted: (0.5 + 1 + 2 + 0.25) / 4.
    let nll = 3.75 / 4.0;
    let want =
        (0..2).map(|i| -ls(0.5 * ((c[i] - [-3.0, -0.5][i]) - (r[i] - [-2.0, -5.0][i]))) + nll).sum::<f64>() / 2.0;
    let got: f64 = loss.to_scalar().unwrap();
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
}

// ---- gradients against finite differences ---------------------------------------------------------------

/// Four pairs with distinct log-ratios and log-odds (AOT sorts them; no ties), away from hinge's kink.
fn grad_pairs() -> PairLogps {
    PairLogps {
        chosen: t(&[-10.0, -20.0, -7.5, -15.0]),
        rejected: t(&[-12.0, -18.0, -9.0, -14.2]),
        ref_chosen: t(&[-11.0, -19.0, -8.0, -14.2]),
        ref_rejected: t(&[-11.0, -19.5, -8.7, -14.1]),
        chosen_len: t(&[4.0, 5.0, 3.0, 6.0]),
        rejected_len: t(&[2.0, 8.0, 3.0, 5.0]),
    }
}

/// Every loss under the settings that change its formula.
fn grad_settings() -> Vec<(Vec<(LossType, f64)>, LossParams)> {
    let base = LossParams { beta: 0.3, label_smoothing: 0.1, ..Default::default() };
    let mut out: Vec<(Vec<(LossType, f64)>, LossParams)> =
        LossType::ALL.iter().map(|&k| (vec![(k, 1.0)], base.clone())).collect();
    for k in LossType::ALL.into_iter().filter(|k| k.uses_f_divergence()) {
        out.push((vec![(k, 1.0)], LossParams { f_divergence_type: FDivergence::JsDivergence, ..base.clone() }));
        out.push((
            vec![(k, 1.0)],
            LossParams {
                f_divergence_type: FDivergence::AlphaDivergence,
                f_alpha_divergence_coef: 0.5,
                ..base.clone()
            },
        ));
    }
    out.push((vec![(LossType::Sigmoid, 1.0), (LossType::Sft, 0.5)], base.clone()));
    out.push((vec![(LossType::Sigmoid, 1.0)], LossParams { rpo_alpha: Some(0.7), ..base.clone() }));
    out
}

fn with_policy(x: &PairLogps, c: &Tensor, r: &Tensor) -> PairLogps {
    PairLogps { chosen: c.clone(), rejected: r.clone(), ..x.clone() }
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

#[test]
fn every_loss_gradient_matches_finite_differences() {
    let x = grad_pairs();
    let h = 1e-5;
    for (kinds, p) in grad_settings() {
        let what = format!("{kinds:?} {:?}", p.f_divergence_type);
        let (c, r) = (Var::from_tensor(&x.chosen).unwrap(), Var::from_tensor(&x.rejected).unwrap());
        let loss = combined_loss(&kinds, &p, &with_policy(&x, c.as_tensor(), r.as_tensor())).unwrap();
        let grads = loss.backward().unwrap();
        for (var, is_chosen) in [(&c, true), (&r, false)] {
            let base: Vec<f64> = var.as_tensor().to_vec1().unwrap();
            // A loss that never reads an input (SFT the rejected completion) leaves it without a gradient.
            let g: Vec<f64> = grads.get(var.as_tensor()).map_or(vec![0.0; base.len()], |g| g.to_vec1().unwrap());
            for i in 0..base.len() {
                let at = |d: f64| {
                    let mut v = base.clone();
                    v[i] += d;
                    let moved = t(&v);
                    let y = if is_chosen {
                        with_policy(&x, &moved, &x.rejected)
                    } else {
                        with_policy(&x, &x.chosen, &moved)
                    };
                    scalar(&combined_loss(&kinds, &p, &y).unwrap())
                };
                let fd = (at(h) - at(-h)) / (2.0 * h);
                assert!(
                    (g[i] - fd).abs() <= 1e-6 * (1.0 + fd.abs()),
                    "{what}: d/d{}[{i}] = {} by backprop, {fd} by finite differences",
                    if is_chosen { "chosen" } else { "rejected" },
                    g[i]
                );
            }
        }
    }
}

#[test]
fn per_token_gradients_match_finite_differences() {
    let t0 = token_pairs();
    let rc = Tensor::new(&[-3.0f64, -0.5], &Device::Cpu).unwrap();
    let rr = Tensor::new(&[-2.0f64, -5.0], &Device::Cpu).unwrap();
    let kinds = [(LossType::Sigmoid, 1.0), (LossType::Sft, 0.3)];
    let p = LossParams { beta: 0.5, ld_alpha: Some(0.4), rpo_alpha: Some(0.6), ..Default::default() };
    let loss_of = |c: &Tensor, r: &Tensor| {
        let t = TokenLogps { chosen: c.clone(), rejected: r.clone(), ..t0.clone() };
        token_loss(&kinds, &p, &t, &rc, &rr).unwrap().0
    };
    let (c, r) = (Var::from_tensor(&t0.chosen).unwrap(), Var::from_tensor(&t0.rejected).unwrap());
    let grads = loss_of(c.as_tensor(), r.as_tensor()).backward().unwrap();
    let h = 1e-5;
    for (var, is_chosen) in [(&c, true), (&r, false)] {
        let g: Vec<Vec<f64>> = grads.get(var.as_tensor()).unwrap().to_vec2().unwrap();
        let base: Vec<Vec<f64>> = var.as_tensor().to_vec2().unwrap();
        let m: Vec<Vec<f64>> =
            if is_chosen { t0.chosen_mask.to_vec2().unwrap() } else { t0.rejected_mask.to_vec2().unwrap() };
        for i in 0..base.len() {
            for k in 0..base[i].len() {
                let at = |d: f64| {
                    let mut v = base.clone();
                    v[i][k] += d;
                    let moved = Tensor::new(v, &Device::Cpu).unwrap();
                    let l = if is_chosen { loss_of(&moved, &t0.rejected) } else { loss_of(&t0.chosen, &moved) };
                    scalar(&l)
                };
                let fd = (at(h) - at(-h)) / (2.0 * h);
                assert!((g[i][k] - fd).abs() <= 1e-6 * (1.0 + fd.abs()), "token [{i}][{k}]: {} vs {fd}", g[i][k]);
                if m[i][k] == 0.0 {
                    assert_eq!(g[i][k], 0.0, "padding gets no gradient");
                }
            }
        }
    }
    // WPO's weights are constants (TRL computes them under no_grad): each pair's gradient is its weight times
    // the unweighted one.
    let p = LossParams { beta: 0.5, ..Default::default() };
    let pw = LossParams { use_weighting: true, ..p.clone() };
    let w: Vec<f64> = t0.wpo_weights().unwrap().to_vec1().unwrap();
    let grad = |p: &LossParams| -> Vec<Vec<f64>> {
        let c = Var::from_tensor(&t0.chosen).unwrap();
        let t = TokenLogps { chosen: c.as_tensor().clone(), ..t0.clone() };
        let l = token_loss(&[(LossType::Sigmoid, 1.0)], p, &t, &rc, &rr).unwrap().0;
        l.backward().unwrap().get(c.as_tensor()).unwrap().to_vec2().unwrap()
    };
    let (plain, weighted) = (grad(&p), grad(&pw));
    for i in 0..2 {
        for k in 0..plain[i].len() {
            assert!((weighted[i][k] - w[i] * plain[i][k]).abs() < 1e-12, "[{i}][{k}]");
        }
    }
}

// ---- large margins -------------------------------------------------------------------------------------

/// Pair 0 prefers chosen by a margin of 2000 nats, pair 1 rejected by as much; mean token log-probs stay
/// below 0 (ORPO's domain).
fn huge_margins(dtype: DType) -> PairLogps {
    let f = |v: &[f64]| t(v).to_dtype(dtype).unwrap();
    PairLogps {
        chosen: f(&[-1e-3, -1000.0]),
        rejected: f(&[-1000.0, -1e-3]),
        ref_chosen: f(&[-1000.0, -1e-3]),
        ref_rejected: f(&[-1e-3, -1000.0]),
        chosen_len: f(&[1.0, 2.0]),
        rejected_len: f(&[2.0, 1.0]),
    }
}

#[test]
fn every_loss_is_finite_with_finite_gradients_at_huge_margins() {
    for dtype in [DType::F64, DType::F32] {
        let x = huge_margins(dtype);
        for (kinds, mut p) in grad_settings() {
            p.beta = 2.0;
            let what = format!("{kinds:?} {:?} {dtype:?}", p.f_divergence_type);
            let (c, r) = (Var::from_tensor(&x.chosen).unwrap(), Var::from_tensor(&x.rejected).unwrap());
            let loss = combined_loss(&kinds, &p, &with_policy(&x, c.as_tensor(), r.as_tensor())).unwrap();
            assert!(scalar(&loss).is_finite(), "{what}: loss {}", scalar(&loss));
            let grads = loss.backward().unwrap();
            for var in [&c, &r] {
                let g: Vec<f64> =
                    grads.get(var.as_tensor()).map_or(vec![], |g| g.to_dtype(DType::F64).unwrap().to_vec1().unwrap());
                assert!(g.iter().all(|v| v.is_finite()), "{what}: gradient {g:?}");
            }
        }
    }
}

// ---- log1mexp -------------------------------------------------------------------------------------------

/// log(1 − eˣ) and its derivative −1/expm1(−x), from std's exact expm1/ln_1p.
fn log1mexp_ref(x: f64) -> (f64, f64) {
    let v = if x > -std::f64::consts::LN_2 { (-x.exp_m1()).ln() } else { (-x.exp()).ln_1p() };
    (v, -1.0 / (-x).exp_m1())
}

#[test]
fn log1mexp_is_exact_with_finite_gradients_near_zero() {
    let xs = [-1e-20, -1e-8, -1e-3, -0.69, -std::f64::consts::LN_2, -0.7, -50.0, -800.0];
    let v = Var::new(&xs, &Device::Cpu).unwrap();
    let y = log1mexp(v.as_tensor()).unwrap();
    let g: Vec<f64> = y.sum_all().unwrap().backward().unwrap().get(v.as_tensor()).unwrap().to_vec1().unwrap();
    let y: Vec<f64> = y.to_vec1().unwrap();
    for (i, &x) in xs.iter().enumerate() {
        let (want, dwant) = log1mexp_ref(x);
        assert!((y[i] - want).abs() <= 1e-14 * want.abs(), "log1mexp({x}) = {} vs {want}", y[i]);
        assert!(g[i].is_finite() && (g[i] - dwant).abs() <= 1e-12 * dwant.abs(), "d/dx at {x}: {} vs {dwant}", g[i]);
    }
    // f32, where eˣ rounds to 1 already at x = −1e-8.
    let xs32 = [-1e-8f32, -1e-3, -0.69, -0.7, -50.0];
    let v = Var::new(&xs32, &Device::Cpu).unwrap();
    let y = log1mexp(v.as_tensor()).unwrap();
    let g: Vec<f32> = y.sum_all().unwrap().backward().unwrap().get(v.as_tensor()).unwrap().to_vec1().unwrap();
    let y: Vec<f32> = y.to_vec1().unwrap();
    for (i, &x) in xs32.iter().enumerate() {
        let (want, dwant) = log1mexp_ref(x as f64);
        assert!((y[i] as f64 - want).abs() <= 1e-6 * want.abs(), "f32 log1mexp({x}) = {} vs {want}", y[i]);
        assert!(
            g[i].is_finite() && (g[i] as f64 - dwant).abs() <= 1e-5 * dwant.abs(),
            "f32 d/dx at {x}: {} vs {dwant}",
            g[i]
        );
    }
}

/// Policy = reference makes every margin exactly 0 (the first step of every run): the DPO gradient there is
/// −β σ(0) = −β/2 per unit of margin.
#[test]
fn the_gradient_at_a_zero_margin_is_exact() {
    let p = LossParams { beta: 0.5, ..Default::default() };
    let c = Var::new(&[-11.0f64, -19.0], &Device::Cpu).unwrap();
    let x = PairLogps { chosen: c.as_tensor().clone(), rejected: t(&RL), ..pairs() };
    let loss = combined_loss(&[(LossType::Sigmoid, 1.0)], &p, &PairLogps { ref_chosen: t(&RW), ..x }).unwrap();
    let g: Vec<f64> = loss.backward().unwrap().get(c.as_tensor()).unwrap().to_vec1().unwrap();
    // d/dLw of mean_i −log σ(β h_i) at h = 0: −β · ½ / B.
    assert_eq!(g, vec![-0.5 * 0.5 / 2.0; 2]);
    let s: Vec<f64> = dpo::loss::log_sigmoid(&t(&[0.0, 800.0, -800.0])).unwrap().to_vec1().unwrap();
    assert_eq!(s[..2], [-std::f64::consts::LN_2, 0.0][..]);
    assert_eq!(s[2], -800.0);
}
