//! Every loss against values computed by hand: literal numbers worked out on paper for the simplest
//! cases, and an independent scalar f64 transcription of each paper's formula for two pairs.

use candle_core::{Device, Tensor};
use dpo::loss::{combined_loss, kto_loss, pair_loss, rewards, LossParams, LossType, PairLogps};

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

/// The formula of each loss for pair i, transcribed from the papers (docs/algorithm.md#losses).
fn reference(kind: LossType, p: &LossParams, i: usize) -> f64 {
    let (b, e) = (p.beta, p.label_smoothing);
    let (lw, ll) = (LW[i] - RW[i], LL[i] - RL[i]);
    let h = lw - ll;
    let (aw, al) = (LW[i] / NW[i], LL[i] / NL[i]);
    match kind {
        LossType::Sigmoid => -(1.0 - e) * ls(b * h) - e * ls(-b * h),
        LossType::Robust => (-(1.0 - e) * ls(b * h) + e * ls(-b * h)) / (1.0 - 2.0 * e),
        LossType::Ipo => (lw / NW[i] - ll / NL[i] - 1.0 / (2.0 * b)).powi(2),
        LossType::Hinge => (1.0 - b * h).max(0.0),
        LossType::ExoPair => sg(b * h) * (ls(b * h) - (1.0 - e).ln()) + sg(-b * h) * (ls(-b * h) - e.ln()),
        LossType::NcaPair => -ls(b * lw) - 0.5 * ls(-b * lw) - 0.5 * ls(-b * ll),
        LossType::BcoPair => -ls(b * lw - p.bco_delta) - ls(-(b * ll - p.bco_delta)),
        LossType::SppoHard => (lw - 0.5 / b).powi(2) + (ll + 0.5 / b).powi(2),
        LossType::ApoZero => (1.0 - sg(b * lw)) + sg(b * ll),
        LossType::ApoDown => sg(b * lw) + (1.0 - sg(b * h)),
        LossType::Discopop => {
            let r = b * h;
            let m = sg(r / p.discopop_tau);
            (1.0 - m) * -ls(r) + m * (-r).exp()
        }
        LossType::Sft => -aw,
        LossType::SigmoidNorm => -ls(b * (lw / NW[i] - ll / NL[i])),
        LossType::Simpo => -ls(b * (aw - al) - p.simpo_gamma),
        LossType::Cpo => -ls(b * (LW[i] - LL[i])) - p.cpo_alpha * aw,
        LossType::Orpo => {
            let odds = (aw - al) - ((1.0 - aw.exp()).ln() - (1.0 - al.exp()).ln());
            -aw - b * ls(odds)
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
    // SFT: −Lw/|yw| = 10/4 and 20/5.
    let sft: Vec<f64> = pair_loss(LossType::Sft, &p, &x).unwrap().to_vec1().unwrap();
    assert_eq!(sft, vec![2.5, 4.0]);
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
