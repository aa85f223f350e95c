//! Every loss and option against TRL 0.27.2's own functions on the same log-prob tensors: the numbers in
//! `fixtures/trl_losses.json` were computed once by `scripts/trl_loss_fixture.py`, which calls TRL's
//! `DPOTrainer.dpo_loss`, `get_batch_loss_metrics` and `concatenated_forward`, `CPOTrainer.cpo_loss` and
//! `ORPOTrainer.odds_ratio_loss` (the script's doc says how, and why the layout it feeds TRL is what it is).

use candle_core::{Device, Tensor};
use dpo::loss::{combined_loss, pair_loss, pooled_nll, token_loss, LossParams, LossType, PairLogps, TokenLogps};
use serde_json::Value;
use std::collections::BTreeSet;

/// TRL computes in f64 here as we do; what is left is summation order.
const TOL: f64 = 1e-9;
/// Except ORPO's odds ratio, which TRL casts to float32 (orpo_trainer.py:666-667).
const TOL_F32: f64 = 1e-6;

fn fixture() -> Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trl_losses.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn vec1(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn t1(v: &Value) -> Tensor {
    Tensor::new(vec1(v), &Device::Cpu).unwrap()
}

fn t2(v: &Value) -> Tensor {
    let rows: Vec<Vec<f64>> = v.as_array().unwrap().iter().map(vec1).collect();
    Tensor::new(rows, &Device::Cpu).unwrap()
}

fn pairs(inp: &Value) -> PairLogps {
    PairLogps {
        chosen: t1(&inp["chosen"]),
        rejected: t1(&inp["rejected"]),
        ref_chosen: t1(&inp["ref_chosen"]),
        ref_rejected: t1(&inp["ref_rejected"]),
        chosen_len: t1(&inp["chosen_len"]),
        rejected_len: t1(&inp["rejected_len"]),
    }
}

fn tokens(inp: &Value) -> TokenLogps {
    TokenLogps {
        chosen: t2(&inp["token_chosen"]),
        rejected: t2(&inp["token_rejected"]),
        chosen_mask: t2(&inp["token_chosen_mask"]),
        rejected_mask: t2(&inp["token_rejected_mask"]),
        chosen_log_sum_sq: Some(t2(&inp["token_chosen_log_sum_sq"])),
        rejected_log_sum_sq: Some(t2(&inp["token_rejected_log_sum_sq"])),
    }
}

fn close(got: f64, want: f64, what: &str) {
    let tol = if what.starts_with("orpo") { TOL_F32 } else { TOL };
    assert!((got - want).abs() <= tol * (1.0 + want.abs()), "{what}: ours {got} vs TRL {want}");
}

#[test]
fn fixture_is_from_the_pinned_trl() {
    let f = fixture();
    assert_eq!(f["trl_version"], "0.27.2", "the loss module's citations are to TRL 0.27.2");
}

#[test]
fn per_token_inputs_sum_to_trls_sequence_logps_and_nll() {
    let f = fixture();
    let inp = &f["inputs"];
    let t = tokens(inp);
    let (c, r) = t.sums().unwrap();
    let (nc, nr) = t.lengths().unwrap();
    for (got, key) in [(c, "chosen"), (r, "rejected"), (nc, "chosen_len"), (nr, "rejected_len")] {
        for (g, w) in got.to_vec1::<f64>().unwrap().iter().zip(vec1(&inp[key])) {
            close(*g, w, key);
        }
    }
    // TRL's nll_loss: one cross-entropy over every chosen token of the batch.
    let x = pairs(inp);
    let nll: Vec<f64> = pooled_nll(&x.chosen, &x.chosen_len).unwrap().to_vec1().unwrap();
    for n in nll {
        close(n, f["nll_loss"].as_f64().unwrap(), "pooled NLL");
    }
}

#[test]
fn every_case_matches_trl() {
    let f = fixture();
    let inp = &f["inputs"];
    let cases = f["cases"].as_array().unwrap();
    assert!(cases.len() >= 35, "{} cases", cases.len());
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let p: LossParams = serde_json::from_value(case["params"].clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let types: Vec<LossType> = case["loss_type"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| LossType::parse(l.as_str().unwrap()).unwrap())
            .collect();
        let weights = match &case["loss_weights"] {
            Value::Null => vec![1.0; types.len()],
            w => vec1(w),
        };
        let kinds: Vec<(LossType, f64)> = types.iter().copied().zip(weights).collect();
        let want = case["loss"].as_f64().unwrap();
        if case["tokens"].as_bool().unwrap() {
            let x = pairs(inp);
            let (loss, _) = token_loss(&kinds, &p, &tokens(inp), &x.ref_chosen, &x.ref_rejected)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            close(loss.to_scalar::<f64>().unwrap(), want, name);
        } else {
            let x = pairs(inp);
            let loss = combined_loss(&kinds, &p, &x).unwrap_or_else(|e| panic!("{name}: {e}"));
            close(loss.to_scalar::<f64>().unwrap(), want, name);
            if let (Value::Array(_), [k]) = (&case["per_pair"], types.as_slice()) {
                let got: Vec<f64> = pair_loss(*k, &p, &x).unwrap().to_vec1().unwrap();
                for (i, (g, w)) in got.iter().zip(vec1(&case["per_pair"])).enumerate() {
                    close(*g, w, &format!("{name} pair {i}"));
                }
            }
        }
    }
}

#[test]
fn ld_dpo_sums_match_trl() {
    let f = fixture();
    let t = tokens(&f["inputs"]);
    for ld in f["ld_logps"].as_array().unwrap() {
        let a = ld["ld_alpha"].as_f64().unwrap();
        let (c, r) = t.ld_logps(a).unwrap();
        for (got, key) in [(c, "chosen"), (r, "rejected")] {
            for (i, (g, w)) in got.to_vec1::<f64>().unwrap().iter().zip(vec1(&ld[key])).enumerate() {
                close(*g, w, &format!("ld_alpha {a} {key} {i}"));
            }
        }
    }
}

/// Every loss TRL 0.27.2 has, and every option, is compared with TRL; the losses it lacks are checked against
/// their papers' formulas in tests/loss.rs.
#[test]
fn the_fixture_covers_every_trl_loss_and_option() {
    let f = fixture();
    let mut seen = BTreeSet::new();
    let mut options = BTreeSet::new();
    for case in f["cases"].as_array().unwrap() {
        for l in case["loss_type"].as_array().unwrap() {
            seen.insert(l.as_str().unwrap().to_string());
        }
        for (k, v) in case["params"].as_object().unwrap() {
            if !(v.is_null() || v == &Value::Bool(false)) {
                options.insert(k.clone());
            }
        }
    }
    let not_in_trl = [LossType::SigmoidNorm, LossType::Rdpo, LossType::DpoShift, LossType::Hdpo];
    for l in LossType::ALL.into_iter().filter(|l| !not_in_trl.contains(l)) {
        assert!(seen.contains(l.name()), "no TRL case for loss_type {}", l.name());
    }
    for o in [
        "label_smoothing",
        "f_divergence_type",
        "f_alpha_divergence_coef",
        "use_weighting",
        "ld_alpha",
        "rpo_alpha",
        "cpo_alpha",
        "simpo_gamma",
        "discopop_tau",
        "bco_delta",
    ] {
        assert!(options.contains(o), "no TRL case sets {o}");
    }
}
