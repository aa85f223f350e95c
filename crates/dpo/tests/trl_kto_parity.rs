//! KTO against TRL 0.27.2's own code on the same inputs: `fixtures/trl_kto.json` was computed once by
//! `scripts/trl_kto_fixture.py`, which calls `KTOTrainer.kto_loss`, `get_batch_loss_metrics` and `log`, and TRL's
//! `_get_kl_dataset` and `unpair_preference_dataset` (the script's doc says how).

use candle_core::{Device, Tensor};
use dpo::data::TextPair;
use dpo::kto::loss::{batch_metrics, kl_partners, kto_loss, KtoLogps, KtoLossType, KtoWindow};
use dpo::kto::unpair;
use serde_json::Value;
use std::collections::BTreeSet;

/// TRL computes in f64 here as we do; what is left is summation order.
const TOL: f64 = 1e-9;

fn fixture() -> Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trl_kto.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn vec1(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn t1(v: &Value) -> Tensor {
    Tensor::new(vec1(v), &Device::Cpu).unwrap()
}

fn logps(c: &Value) -> KtoLogps {
    let opt = |k: &str| if c[k].is_null() { None } else { Some(t1(&c[k])) };
    KtoLogps {
        policy: t1(&c["policy_logps"]),
        reference: t1(&c["reference_logps"]),
        policy_kl: opt("policy_KL_logps"),
        reference_kl: opt("reference_KL_logps"),
        label: c["label"].as_array().unwrap().iter().map(|b| b.as_bool().unwrap()).collect(),
    }
}

fn close(got: f64, want: f64, what: &str) {
    assert!((got - want).abs() <= TOL * (1.0 + want.abs()), "{what}: ours {got} vs TRL {want}");
}

fn close_all(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        close(*g, *w, &format!("{what}[{i}]"));
    }
}

/// The rows of `v` (in row order) regrouped as TRL returns them: desirable rows first, then undesirable.
fn trl_order(v: &[f64], label: &[bool]) -> (Vec<f64>, Vec<f64>) {
    let pick = |want: bool| v.iter().zip(label).filter(|(_, &l)| l == want).map(|(x, _)| *x).collect::<Vec<_>>();
    (pick(true), pick(false))
}

#[test]
fn fixture_is_from_the_pinned_trl() {
    assert_eq!(fixture()["trl_version"], "0.27.2", "the kto module's citations are to TRL 0.27.2");
}

#[test]
fn kto_loss_matches_trls_on_every_case() {
    let f = fixture();
    let cases = f["kto_loss"].as_array().unwrap();
    assert!(cases.len() >= 6);
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let kind = KtoLossType::parse(c["loss_type"].as_str().unwrap()).unwrap();
        let x = logps(c);
        let out = kto_loss(
            kind,
            c["beta"].as_f64().unwrap(),
            c["desirable_weight"].as_f64().unwrap(),
            c["undesirable_weight"].as_f64().unwrap(),
            &x,
        )
        .unwrap();
        close(out.loss.to_scalar::<f64>().unwrap(), c["loss"].as_f64().unwrap(), &format!("{name}: loss"));
        close(out.kl, c["kl"].as_f64().unwrap(), &format!("{name}: kl"));
        let (lc, lr) = trl_order(&out.losses.to_vec1::<f64>().unwrap(), &x.label);
        close_all(&[lc, lr].concat(), &vec1(&c["losses"]), &format!("{name}: losses"));
        let (rc, rr) = trl_order(&out.rewards.to_vec1::<f64>().unwrap(), &x.label);
        close_all(&rc, &vec1(&c["chosen_rewards"]), &format!("{name}: chosen rewards"));
        close_all(&rr, &vec1(&c["rejected_rewards"]), &format!("{name}: rejected rewards"));
    }
    // The negative-KL case really exercises the clamp.
    assert!(cases.iter().any(|c| c["kl"].as_f64() == Some(0.0) && c["loss_type"] == "kto"));
}

/// Per-batch metrics under TRL's names, and the logged ones after TRL's `log` aggregation. `logits/*` differ by
/// design (TRL 0.27.2 sums every logit of the padded rows; see `dpo::kto::loss::batch_metrics`), so only their
/// presence is compared.
#[test]
fn batch_metrics_and_logged_metrics_match_trls_names_and_values() {
    let f = fixture();
    let p = &f["batch_params"];
    let kind = KtoLossType::parse(p["loss_type"].as_str().unwrap()).unwrap();
    let (beta, wd, wu) = (
        p["beta"].as_f64().unwrap(),
        p["desirable_weight"].as_f64().unwrap(),
        p["undesirable_weight"].as_f64().unwrap(),
    );
    let mut window = KtoWindow::default();
    for (i, b) in f["batches"].as_array().unwrap().iter().enumerate() {
        let x = logps(b);
        let out = kto_loss(kind, beta, wd, wu, &x).unwrap();
        let loss = out.loss.to_scalar::<f64>().unwrap();
        close(loss, b["loss"].as_f64().unwrap(), &format!("batch {i}: loss"));
        let mean_logits = x.policy.zeros_like().unwrap();
        let ours = batch_metrics(&x, &out, &mean_logits).unwrap();
        let trl = b["metrics"].as_object().unwrap();
        let (ok, tk): (BTreeSet<&str>, BTreeSet<&str>) =
            (ours.keys().copied().collect(), trl.keys().map(String::as_str).collect());
        assert_eq!(ok, tk, "batch {i}: metric names");
        for (k, v) in trl {
            if !k.starts_with("logits/") {
                close(ours[k.as_str()], v.as_f64().unwrap(), &format!("batch {i}: {k}"));
            }
        }
        window.add(loss, ours);
    }
    let logged = window.take("");
    let trl = f["logged"].as_object().unwrap();
    let (ok, tk): (BTreeSet<&str>, BTreeSet<&str>) =
        (logged.keys().map(String::as_str).collect(), trl.keys().map(String::as_str).collect());
    assert_eq!(ok, tk, "logged metric names");
    for (k, v) in trl {
        if !k.starts_with("logits/") {
            close(logged[k].as_f64().unwrap(), v.as_f64().unwrap(), &format!("logged {k}"));
        }
    }
    // The window starts over, and evaluation's names carry TRL's prefix.
    assert!(window.is_empty());
}

#[test]
fn kl_rows_and_unpairing_follow_trls_order() {
    let f = fixture();
    let want: Vec<usize> = f["kl_rotation"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    assert_eq!(kl_partners(&[0, 1, 2, 3]), want, "_get_kl_dataset shifts the completions by one");
    // Within a shuffled micro-batch the shift is over the batch's own rows.
    assert_eq!(kl_partners(&[7, 2, 9]), vec![9, 7, 2]);
    assert_eq!(kl_partners(&[5]), vec![5]);

    let pairs: Vec<TextPair> = (0..3)
        .map(|i| TextPair {
            line: i + 1,
            prompt: format!("p{i}"),
            chosen: format!(" c{i}"),
            rejected: format!(" r{i}"),
            templated: false,
            chat: None,
        })
        .collect();
    let ours: Vec<(String, String, bool)> =
        unpair(&pairs).into_iter().map(|r| (r.prompt, r.completion, r.label)).collect();
    let trl: Vec<(String, String, bool)> = f["unpaired"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["prompt"].as_str().unwrap().to_string(),
                r["completion"].as_str().unwrap().to_string(),
                r["label"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(ours, trl);
}
