//! The Bradley–Terry reward head: the logistic-regression fit against an independent Newton solve, the
//! mean-pooled features against a hand-computed mean of the LM's hidden states (and unchanged by padding),
//! and a whole train → save → oracle round trip on a tiny model with a preference it can learn.

use apl::reward::{self, RewardInfo, RewardOracle, RewardTrainConfig};
use candle_core::{DType, Device, Tensor};
use lm::testing::tiny_model;
use lm::{LanguageModel, Positions};
use oracle::{Comparison, Oracle};
use std::collections::HashMap;

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Gradient of mean −log σ(wᵀΔ) + λ/2 ‖w‖², written out independently of the crate.
fn grad(w: &[f64], diffs: &[Vec<f64>], l2: f64) -> Vec<f64> {
    let n = diffs.len() as f64;
    let mut g: Vec<f64> = w.iter().map(|wi| l2 * wi).collect();
    for x in diffs {
        let s = sigmoid(-dot(w, x)) / n;
        for (gi, xi) in g.iter_mut().zip(x) {
            *gi -= s * xi;
        }
    }
    g
}

fn norm(v: &[f64]) -> f64 {
    dot(v, v).sqrt()
}

/// The exact optimum in 2-D by Newton's method (Hessian λI + mean σ(z)σ(−z) ΔΔᵀ, solved by Cramer's rule).
fn newton_2d(diffs: &[Vec<f64>], l2: f64) -> Vec<f64> {
    let n = diffs.len() as f64;
    let mut w = vec![0.0, 0.0];
    for _ in 0..100 {
        let g = grad(&w, diffs, l2);
        let (mut a, mut b, mut d) = (l2, 0.0, l2);
        for x in diffs {
            let z = dot(&w, x);
            let c = sigmoid(z) * sigmoid(-z) / n;
            a += c * x[0] * x[0];
            b += c * x[0] * x[1];
            d += c * x[1] * x[1];
        }
        let det = a * d - b * b;
        let step = [(d * g[0] - b * g[1]) / det, (a * g[1] - b * g[0]) / det];
        w[0] -= step[0];
        w[1] -= step[1];
        if norm(&step) < 1e-15 {
            break;
        }
    }
    assert!(norm(&grad(&w, diffs, l2)) < 1e-12, "Newton did not converge: {w:?}");
    w
}

#[test]
fn fit_separates_separable_differences_along_the_right_direction() {
    // Differences spread symmetrically around u = (3, 4)/5, all with uᵀΔ ≥ 0.5: by the symmetry the optimum
    // lies exactly on u's line (and points along +u).
    let u = [0.6, 0.8];
    let v = [-0.8, 0.6];
    let mut diffs = Vec::new();
    for (along, across) in [(0.5, 0.0), (1.0, 1.5), (1.0, -1.5), (2.0, 0.7), (2.0, -0.7), (0.7, 3.0), (0.7, -3.0)] {
        diffs.push(vec![along * u[0] + across * v[0], along * u[1] + across * v[1]]);
    }
    let cfg = RewardTrainConfig::default();
    let w = reward::fit(&diffs, &cfg);
    assert_eq!(w.len(), 2);
    assert_eq!(reward::accuracy(&w, &diffs), 1.0, "w = {w:?}");
    let cos = dot(&w, &u) / norm(&w);
    assert!(cos > 0.9999, "w = {w:?} points away from {u:?} (cos {cos})");
    // Flipping every difference flips the weight.
    let flipped: Vec<Vec<f64>> = diffs.iter().map(|x| x.iter().map(|v| -v).collect()).collect();
    let wf = reward::fit(&flipped, &cfg);
    assert_eq!(reward::accuracy(&wf, &flipped), 1.0);
    assert_eq!(reward::accuracy(&wf, &diffs), 0.0);
    assert!(w.iter().zip(&wf).all(|(a, b)| (a + b).abs() < 1e-6), "{w:?} vs {wf:?}");
}

#[test]
fn fit_reaches_the_exact_optimum_on_non_separable_differences() {
    // Mostly positive along x, with a few contradicting pairs, so no w gets them all right.
    let diffs: Vec<Vec<f64>> = [
        [1.0, 0.5],
        [0.5, -1.0],
        [2.0, 1.0],
        [1.5, 0.2],
        [-0.3, 0.2],
        [-1.0, -0.5],
        [0.2, 1.2],
        [0.8, -0.4],
        [-0.6, 0.9],
        [1.1, 0.3],
    ]
    .iter()
    .map(|x| x.to_vec())
    .collect();
    for l2 in [1e-3, 0.1, 1.0] {
        let cfg = RewardTrainConfig { l2, ..Default::default() };
        let w = reward::fit(&diffs, &cfg);
        let exact = newton_2d(&diffs, l2);
        let g = grad(&w, &diffs, l2);
        eprintln!("l2 {l2}: fit {w:?}, Newton {exact:?}, |grad| {:.2e}", norm(&g));
        assert!(w.iter().zip(&exact).all(|(a, b)| (a - b).abs() < 1e-4), "l2 {l2}: fit {w:?}, exact optimum {exact:?}");
        assert!(norm(&g) < 1e-6, "l2 {l2}: gradient {g:?} at the fitted w {w:?}");
        let acc = reward::accuracy(&w, &diffs);
        assert!(acc > 0.5 && acc < 1.0, "l2 {l2}: accuracy {acc}");
    }
    // 1-D: the optimum of mean −log σ(wΔ) + λ/2 w² by bisection on the derivative.
    let xs = [1.0, 2.0, -0.5, 0.7, -1.5, 0.3];
    let diffs1: Vec<Vec<f64>> = xs.iter().map(|&x| vec![x]).collect();
    let l2 = 0.01;
    let d = |w: f64| grad(&[w], &diffs1, l2)[0];
    let (mut lo, mut hi) = (-100.0, 100.0);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if d(mid) > 0.0 {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    let w = reward::fit(&diffs1, &RewardTrainConfig { l2, ..Default::default() });
    assert!((w[0] - lo).abs() < 1e-4, "1-D: fit {} vs bisection {lo}", w[0]);
    assert!(d(w[0]).abs() < 1e-6, "1-D: derivative {} at {}", d(w[0]), w[0]);
}

#[test]
fn fit_of_nothing_is_empty() {
    assert!(reward::fit(&[], &RewardTrainConfig::default()).is_empty());
}

fn ids(model: &LanguageModel, text: &str) -> Vec<u32> {
    model.tokenizer.encode_plain(text).unwrap()
}

#[test]
fn features_are_the_mean_hidden_state_and_padding_does_not_change_them() {
    let model = tiny_model("llama", 1, DType::F32).unwrap();
    let d = model.config.hidden_size;
    let short = ids(&model, "a short one");
    let long = ids(&model, "a much longer text, which makes the short one padded in a batch");
    let other = ids(&model, "zzz");
    assert!(long.len() > short.len() + 10);

    let alone = reward::features(&model, std::slice::from_ref(&short), 1).unwrap();
    assert_eq!(alone.len(), 1);
    assert_eq!(alone[0].len(), d);
    let batched = reward::features(&model, &[long.clone(), short.clone(), other.clone()], 3).unwrap();
    assert_eq!(batched.len(), 3);
    assert!(batched.iter().all(|r| r.len() == d));
    let max_diff = alone[0].iter().zip(&batched[1]).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(max_diff < 1e-5, "padding changed the features by {max_diff}");
    // Chunks of the batch size give the same rows as one batch.
    let chunked = reward::features(&model, &[long.clone(), short.clone(), other.clone()], 2).unwrap();
    for (a, b) in chunked.iter().zip(&batched) {
        assert!(a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5));
    }
    // Different texts, different features.
    let gap = batched[1].iter().zip(&batched[2]).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(gap > 1e-2, "`{:?}` and `zzz` have the same features", "a short one");

    // By hand: the mean over positions of the model's final hidden states.
    let t = Tensor::from_vec(long.clone(), (1, long.len()), &Device::Cpu).unwrap();
    let h = model.hidden(&t, &Positions::fresh(1), None).unwrap(); // (1, T, d)
    let h: Vec<Vec<f32>> = h.squeeze(0).unwrap().to_vec2().unwrap();
    let mean: Vec<f64> = (0..d).map(|j| h.iter().map(|row| row[j] as f64).sum::<f64>() / h.len() as f64).collect();
    let err = mean.iter().zip(&batched[0]).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(err < 1e-5, "features differ from the mean hidden state by {err}");

    // An empty text has no reward.
    let e = reward::features(&model, &[short, vec![]], 2).unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
}

/// `n` synthetic preference pairs: the chosen text is full of `e`, the rejected one of `z`, around varied
/// filler words, at varied lengths.
fn letter_pairs(n: usize) -> Vec<(String, String)> {
    let words = ["the film", "a plot", "our hero", "it", "this cast", "my friend", "one scene", "the end"];
    (0..n)
        .map(|i| {
            let w = words[i % words.len()];
            let k = 4 + (i * 7) % 9;
            let chosen = format!("{w} {} {}", "e".repeat(k), words[(i + 3) % words.len()]);
            let rejected = format!("{w} {} {}", "z".repeat(k + i % 3), words[(i + 5) % words.len()]);
            (chosen, rejected)
        })
        .collect()
}

#[test]
fn train_save_and_load_as_an_oracle() {
    let model = tiny_model("llama", 1, DType::F32).unwrap();
    let pairs: Vec<(Vec<u32>, Vec<u32>)> =
        letter_pairs(60).iter().map(|(c, r)| (ids(&model, c), ids(&model, r))).collect();
    let (train, held) = pairs.split_at(45);
    let cfg = RewardTrainConfig::default();
    let (w, train_acc, diffs) = reward::train(&model, train, &cfg).unwrap();
    assert_eq!(w.len(), model.config.hidden_size);
    assert_eq!(diffs.len(), train.len());
    let held_diffs = reward::pair_diffs(&model, held, 4).unwrap();
    let held_acc = reward::accuracy(&w, &held_diffs);
    eprintln!("train accuracy {train_acc:.3}, held-out accuracy {held_acc:.3} on {} pairs", held.len());
    assert!(train_acc >= 0.9, "train accuracy {train_acc}");
    assert!(held_acc >= 0.9, "held-out accuracy {held_acc}");
    assert!(reward::train(&model, &[], &cfg).is_err());

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("rm");
    let info = RewardInfo {
        model: "tiny".into(),
        feature: "mean".into(),
        train_pairs: train.len(),
        held_out_pairs: held.len(),
        train_accuracy: train_acc,
        held_out_accuracy: Some(held_acc),
        l2: cfg.l2,
    };
    reward::save(&dir, &w, &info).unwrap();
    let back: RewardInfo = serde_json::from_str(&std::fs::read_to_string(dir.join("reward.json")).unwrap()).unwrap();
    assert_eq!(back.held_out_accuracy, Some(held_acc));
    assert_eq!(back.train_pairs, 45);

    let mut o = RewardOracle::from_parts(model.with_params(model.params.clone()).unwrap(), &dir).unwrap();
    assert!(o.name().starts_with("reward:") && o.name().contains("rm"), "{}", o.name());
    // The oracle's rewards are wᵀ features (w stored as f32).
    let texts = ["x eeee the film".to_string(), "x zzzz the film".to_string()];
    let r = o.rewards(&texts).unwrap();
    let f = reward::features(&model, &[ids(&model, &texts[0]), ids(&model, &texts[1])], 2).unwrap();
    for (ri, fi) in r.iter().zip(&f) {
        assert!((ri - dot(&w, fi)).abs() < 1e-4 * (1.0 + ri.abs()), "{ri} vs {}", dot(&w, fi));
    }
    assert!(r[0] > r[1], "{r:?}");
    // In a comparison, the `e` completion wins in either position.
    let a = o.compare(&Comparison::new("x ", "eeee the film", "zzzz the film")).unwrap();
    assert_eq!(a.preferred, Some(0), "{}", a.raw);
    assert!(a.raw.contains("rewards"), "{}", a.raw);
    let b = o.compare(&Comparison::new("x ", "zzzzz it", "eeeee it")).unwrap();
    assert_eq!(b.preferred, Some(1), "{}", b.raw);
    // Identical completions tie.
    let c = o.compare(&Comparison::new("x ", "same", "same")).unwrap();
    assert_eq!(c.preferred, None, "{}", c.raw);
}

#[test]
fn a_bad_head_is_refused_naming_the_file() {
    let model = tiny_model("llama", 1, DType::F32).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let info = RewardInfo {
        model: "tiny".into(),
        feature: "mean".into(),
        train_pairs: 1,
        held_out_pairs: 0,
        train_accuracy: 1.0,
        held_out_accuracy: None,
        l2: 1e-3,
    };
    let fresh = || model.with_params(model.params.clone()).unwrap();
    let err = |dir: &std::path::Path| match RewardOracle::from_parts(fresh(), dir) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => format!("{e:#}"),
    };

    // Wrong shape.
    let wrong = tmp.path().join("wrong");
    reward::save(&wrong, &[0.5; 5], &info).unwrap();
    let e = err(&wrong);
    assert!(e.contains("reward_head.safetensors") && e.contains("[5]") && e.contains("32"), "{e}");

    // No head at all.
    let missing = tmp.path().join("missing");
    std::fs::create_dir_all(&missing).unwrap();
    let e = err(&missing);
    assert!(e.contains(&missing.join("reward_head.safetensors").display().to_string()), "{e}");

    // A head file without `weight`.
    let renamed = tmp.path().join("renamed");
    std::fs::create_dir_all(&renamed).unwrap();
    let t = Tensor::zeros(32, DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(&HashMap::from([("w".to_string(), t)]), renamed.join("reward_head.safetensors"))
        .unwrap();
    let e = err(&renamed);
    assert!(e.contains("reward_head.safetensors") && e.contains("weight"), "{e}");

    // `load` without reward.json names it; one naming a missing model names the model and the file.
    let e = match RewardOracle::load(&missing) {
        Ok(_) => panic!("loaded"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("reward.json") && e.contains("reward train"), "{e}");
    let e = match RewardOracle::load(&wrong) {
        Ok(_) => panic!("loaded"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("tiny") && e.contains("reward.json"), "{e}");
}
