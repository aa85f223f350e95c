//! Each optimizer's first two steps against updates computed by hand (scalar f64 transcriptions of the
//! papers' / PyTorch's update rules), RAdam into its rectified branch against PyTorch itself, plus schedules
//! and clipping.

use candle_core::{Device, Tensor, Var};
use dpo::optim::{clip_grad_norm, learning_rate, Optimizer, OptimizerKind, OptimizerParams, Schedule};

const THETA: [f64; 3] = [1.0, -2.0, 0.5];
/// Gradients of steps 1 and 2: the third flips sign while its momentum does not, which Cautious and Grams
/// treat specially.
const G: [[f64; 3]; 2] = [[0.5, -1.0, 0.25], [0.1, -0.4, -0.1]];

fn grads_for(var: &Var, g: &[f64; 3]) -> candle_core::backprop::GradStore {
    // d/dθ Σ θ_i g_i = g.
    let c = Tensor::new(g, &Device::Cpu).unwrap();
    (var.as_tensor() * c).unwrap().sum_all().unwrap().backward().unwrap()
}

/// Runs two steps and returns θ after each.
fn run(p: OptimizerParams, lr: f64) -> Vec<Vec<f64>> {
    let var = Var::new(&THETA, &Device::Cpu).unwrap();
    let mut opt = Optimizer::new(vec![var.clone()], p).unwrap();
    let mut out = vec![];
    for g in &G {
        opt.step(&grads_for(&var, g), lr).unwrap();
        out.push(var.as_tensor().to_vec1::<f64>().unwrap());
    }
    out
}

/// Hand transcription of each rule, coordinate by coordinate.
fn reference(p: &OptimizerParams, lr: f64) -> Vec<Vec<f64>> {
    let (b1, b2, eps, wd) = (p.beta1, p.beta2, p.eps, p.weight_decay);
    let mut theta = THETA.to_vec();
    let (mut m, mut v, mut m2) = (vec![0.0; 3], vec![0.0; 3], vec![0.0; 3]);
    let mut out = vec![];
    for (step, g) in G.iter().enumerate() {
        let t = step as i32 + 1;
        let mut u = [0.0; 3];
        for i in 0..3 {
            if p.kind == OptimizerKind::Lion {
                let c = b1 * m[i] + (1.0 - b1) * g[i];
                u[i] = if c > 0.0 {
                    1.0
                } else if c < 0.0 {
                    -1.0
                } else {
                    0.0
                };
                m[i] = b2 * m[i] + (1.0 - b2) * g[i];
                continue;
            }
            m[i] = b1 * m[i] + (1.0 - b1) * g[i];
            v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
            let mh = m[i] / (1.0 - b1.powi(t));
            let vh = v[i] / (1.0 - b2.powi(t));
            let adam = mh / (vh.sqrt() + eps);
            u[i] = match p.kind {
                OptimizerKind::Adamw | OptimizerKind::CautiousAdamw => adam,
                OptimizerKind::Ademamix => {
                    m2[i] = p.beta3 * m2[i] + (1.0 - p.beta3) * g[i];
                    (mh + p.alpha * m2[i]) / (vh.sqrt() + eps)
                }
                OptimizerKind::Grams => g[i].signum() * adam.abs(),
                OptimizerKind::Radam => {
                    let rho_inf = 2.0 / (1.0 - b2) - 1.0;
                    let rho_t = rho_inf - 2.0 * t as f64 * b2.powi(t) / (1.0 - b2.powi(t));
                    assert!(rho_t <= 5.0, "the first steps of RAdam are un-rectified");
                    mh
                }
                OptimizerKind::Lion => unreachable!(),
            };
        }
        if p.kind == OptimizerKind::CautiousAdamw {
            let mask: Vec<f64> = (0..3).map(|i| if u[i] * g[i] > 0.0 { 1.0 } else { 0.0 }).collect();
            let frac = (mask.iter().sum::<f64>() / 3.0).max(1e-3);
            for i in 0..3 {
                u[i] = u[i] * mask[i] / frac;
            }
        }
        for i in 0..3 {
            theta[i] -= lr * (u[i] + wd * theta[i]);
        }
        out.push(theta.clone());
    }
    out
}

#[test]
fn first_two_steps_match_hand_computed_updates() {
    for kind in [
        OptimizerKind::Adamw,
        OptimizerKind::Lion,
        OptimizerKind::Ademamix,
        OptimizerKind::CautiousAdamw,
        OptimizerKind::Grams,
        OptimizerKind::Radam,
    ] {
        let p = OptimizerParams {
            kind,
            weight_decay: 0.1,
            beta2: if kind == OptimizerKind::Lion { 0.99 } else { 0.999 },
            ..Default::default()
        };
        let got = run(p.clone(), 0.01);
        let want = reference(&p, 0.01);
        for s in 0..2 {
            for i in 0..3 {
                assert!(
                    (got[s][i] - want[s][i]).abs() < 1e-12,
                    "{kind:?} step {}: θ[{i}] = {} vs {}",
                    s + 1,
                    got[s][i],
                    want[s][i]
                );
            }
        }
        // The update actually moved every coordinate.
        assert!(got[0].iter().zip(THETA).all(|(a, b)| a != &b), "{kind:?} did not move");
    }
}

#[test]
fn adam_first_step_by_hand() {
    // Step 1 of Adam moves each coordinate by lr·sign(g) (m̂/√v̂ = g/|g|), up to eps.
    let got = run(OptimizerParams::default(), 0.1);
    let want = [1.0 - 0.1, -2.0 + 0.1, 0.5 - 0.1];
    for i in 0..3 {
        assert!((got[0][i] - want[i]).abs() < 1e-7, "{} vs {}", got[0][i], want[i]);
    }
}

#[test]
fn cautious_masks_disagreeing_coordinates() {
    // At step 2 the third coordinate's momentum still points against the new gradient: it must not move.
    let p = OptimizerParams { kind: OptimizerKind::CautiousAdamw, ..Default::default() };
    let got = run(p, 0.01);
    assert_eq!(got[1][2], got[0][2]);
}

#[test]
fn schedules_match_hf() {
    // HF: warmup is step/warmup (0 at the first step), then linear/cosine decay to 0 at `total`.
    assert_eq!(learning_rate(Schedule::Linear, 1.0, 0, 10, 110), 0.0);
    assert_eq!(learning_rate(Schedule::Linear, 1.0, 5, 10, 110), 0.5);
    assert_eq!(learning_rate(Schedule::Linear, 1.0, 10, 10, 110), 1.0);
    assert_eq!(learning_rate(Schedule::Linear, 1.0, 60, 10, 110), 0.5);
    assert!((learning_rate(Schedule::Cosine, 1.0, 60, 10, 110) - 0.5).abs() < 1e-12);
    assert!(
        (learning_rate(Schedule::Cosine, 1.0, 35, 10, 110) - 0.5 * (1.0 + (std::f64::consts::PI / 4.0).cos())).abs()
            < 1e-12
    );
    assert_eq!(learning_rate(Schedule::Constant, 2e-6, 1000, 0, 10), 2e-6);
}

#[test]
fn clipping_scales_to_the_max_norm() {
    let var = Var::new(&THETA, &Device::Cpu).unwrap();
    let mut g = grads_for(&var, &[3.0, 4.0, 0.0]);
    let norm = clip_grad_norm(std::slice::from_ref(&var), &mut g, Some(1.0)).unwrap();
    assert!((norm - 5.0).abs() < 1e-12);
    let clipped: Vec<f64> = g.get(var.as_tensor()).unwrap().to_vec1().unwrap();
    assert!((clipped[0] - 0.6).abs() < 1e-6 && (clipped[1] - 0.8).abs() < 1e-6);
    // Below the limit nothing changes.
    let mut g = grads_for(&var, &[0.3, 0.4, 0.0]);
    clip_grad_norm(std::slice::from_ref(&var), &mut g, Some(1.0)).unwrap();
    assert_eq!(g.get(var.as_tensor()).unwrap().to_vec1::<f64>().unwrap(), vec![0.3, 0.4, 0.0]);
}

/// RAdam for 12 steps against `torch.optim.RAdam` (decoupled weight decay) on the same gradients, from
/// `fixtures/radam_torch.json` (scripts/trl_loss_fixture.py). With β2 = 0.999, ρ_t passes 5 at step 6, so
/// steps 6-12 take the rectified branch (r_t · √(1−β2ᵗ) / (√v + ε) scaling) that the first two steps above
/// never reach.
#[test]
fn radam_matches_pytorch_into_the_rectified_branch() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/radam_torch.json");
    let f: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let num = |k: &str| f[k].as_f64().unwrap();
    let vec =
        |v: &serde_json::Value| -> Vec<f64> { v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect() };
    let rho: Vec<f64> = vec(&f["rho_t"]);
    assert!(rho[..5].iter().all(|&r| r <= 5.0) && rho[5..].iter().all(|&r| r > 5.0), "{rho:?}");
    let p = OptimizerParams {
        kind: OptimizerKind::Radam,
        beta1: num("beta1"),
        beta2: num("beta2"),
        eps: num("eps"),
        weight_decay: num("weight_decay"),
        ..Default::default()
    };
    let var = Var::new(vec(&f["theta0"]).as_slice(), &Device::Cpu).unwrap();
    let mut opt = Optimizer::new(vec![var.clone()], p).unwrap();
    for (t, (g, want)) in f["grads"].as_array().unwrap().iter().zip(f["theta"].as_array().unwrap()).enumerate() {
        let g: [f64; 3] = vec(g).try_into().unwrap();
        opt.step(&grads_for(&var, &g), num("lr")).unwrap();
        let got: Vec<f64> = var.as_tensor().to_vec1().unwrap();
        for (i, (a, b)) in got.iter().zip(vec(want)).enumerate() {
            assert!((a - b).abs() < 1e-12, "step {}: θ[{i}] = {a} vs PyTorch {b}", t + 1);
        }
    }
}
