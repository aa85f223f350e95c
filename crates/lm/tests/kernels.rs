//! The fused kernels against candle's differentiable composition of the same maths: forward values, and
//! gradients both against that composition and against finite differences in f64.

use candle_core::{DType, Device, Tensor, Var};
use lm::kernels::head::{head_logprobs, reference, HeadOut};

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    lm::testing::max_abs_diff(a, b).unwrap()
}

fn randn(shape: (usize, usize), scale: f64, dtype: DType) -> Tensor {
    (Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap() * scale).unwrap()
}

/// 150 rows: more than two chunks of 64, with a ragged last one.
const N: usize = 150;
const V: usize = 300;
const D: usize = 16;

fn targets() -> Vec<u32> {
    (0..N).map(|i| (i * 37 % V) as u32).collect()
}

/// A weighted sum of the per-row log-probs, so that every row's gradient differs.
fn objective(o: &HeadOut) -> Tensor {
    let n = o.logp.dim(0).unwrap();
    let w: Vec<f64> = (0..n).map(|i| 1.0 + (i % 7) as f64 / 3.0).collect();
    let w = Tensor::from_vec(w, n, &Device::Cpu).unwrap().to_dtype(o.logp.dtype()).unwrap();
    (&o.logp * w).unwrap().sum_all().unwrap()
}

#[test]
fn fused_head_equals_the_candle_ops_forward_and_backward() {
    for dtype in [DType::F32, DType::F64] {
        for softcap in [None, Some(3.0)] {
            for trainable_w in [false, true] {
                let h = Var::from_tensor(&randn((N, D), 1.0, dtype)).unwrap();
                let w0 = randn((V, D), 0.5, dtype);
                let w = Var::from_tensor(&w0).unwrap();
                let wt = if trainable_w { w.as_tensor().clone() } else { w0.clone() };
                let t = targets();
                let fused = head_logprobs(h.as_tensor(), &wt, &t, softcap).unwrap();
                let plain = reference(h.as_tensor(), &wt, &t, softcap).unwrap();
                let tol = if dtype == DType::F32 { 2e-4 } else { 1e-10 };
                let what = format!("{dtype:?} softcap {softcap:?} trainable head {trainable_w}");
                assert!(max_diff(&fused.logp, &plain.logp) < tol, "{what}: log-probs differ");
                assert!(max_diff(&fused.mean_logit, &plain.mean_logit) < tol, "{what}: mean logits differ");
                assert!(max_diff(&fused.log_sum_sq, &plain.log_sum_sq) < tol, "{what}: log Σp² differ");
                let gf = objective(&fused).backward().unwrap();
                let gp = objective(&plain).backward().unwrap();
                let dh = max_diff(gf.get(h.as_tensor()).unwrap(), gp.get(h.as_tensor()).unwrap());
                assert!(dh < tol, "{what}: hidden gradients differ by {dh}");
                if trainable_w {
                    let dw = max_diff(gf.get(w.as_tensor()).unwrap(), gp.get(w.as_tensor()).unwrap());
                    assert!(dw < tol, "{what}: weight gradients differ by {dw}");
                } else {
                    assert!(gf.get(w.as_tensor()).is_none(), "{what}: a frozen head got a gradient");
                }
            }
        }
    }
}

#[test]
fn fused_head_gradients_match_finite_differences_in_f64() {
    let (n, v, d) = (70, 40, 6);
    let t: Vec<u32> = (0..n).map(|i| (i * 13 % v) as u32).collect();
    for softcap in [None, Some(2.0)] {
        let h = Var::from_tensor(&randn((n, d), 1.0, DType::F64)).unwrap();
        let w = Var::from_tensor(&randn((v, d), 1.0, DType::F64)).unwrap();
        let f = |h: &Tensor, w: &Tensor| -> f64 {
            objective(&head_logprobs(h, w, &t, softcap).unwrap()).to_scalar::<f64>().unwrap()
        };
        let grads = objective(&head_logprobs(h.as_tensor(), w.as_tensor(), &t, softcap).unwrap()).backward().unwrap();
        for (var, other, is_h) in [(&h, &w, true), (&w, &h, false)] {
            let g: Vec<f64> = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let base: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            for idx in [0, base.len() / 3, base.len() - 1] {
                let at = |delta: f64| {
                    let mut x = base.clone();
                    x[idx] += delta;
                    let x = Tensor::from_vec(x, var.shape(), &Device::Cpu).unwrap();
                    if is_h {
                        f(&x, other.as_tensor())
                    } else {
                        f(other.as_tensor(), &x)
                    }
                };
                let eps = 1e-6;
                let fd = (at(eps) - at(-eps)) / (2.0 * eps);
                let err = (fd - g[idx]).abs();
                assert!(
                    err < 1e-6 + 1e-5 * fd.abs(),
                    "softcap {softcap:?} {}[{idx}]: {} vs {fd}",
                    if is_h { "h" } else { "w" },
                    g[idx]
                );
            }
        }
    }
}

#[test]
fn fused_head_refuses_bad_shapes_and_targets() {
    let h = randn((4, D), 1.0, DType::F32);
    let w = randn((V, D), 1.0, DType::F32);
    let e = head_logprobs(&h, &w, &[1, 2, 3], None).unwrap_err().to_string();
    assert!(e.contains("3 targets for 4 rows"), "{e}");
    let e = head_logprobs(&h, &w, &[1, 2, 3, V as u32], None).unwrap_err().to_string();
    assert!(e.contains("outside the vocabulary"), "{e}");
    let e = head_logprobs(&h, &randn((V, D + 1), 1.0, DType::F32), &[1, 2, 3, 4], None).unwrap_err().to_string();
    assert!(e.contains("hidden size"), "{e}");
}

/// A weighted sum of every output element, so that every element's gradient differs.
fn weighted(y: &Tensor) -> Tensor {
    let n = y.elem_count();
    let w: Vec<f64> = (0..n).map(|i| ((i * 7919) % 13) as f64 / 5.0 - 1.0).collect();
    let w = Tensor::from_vec(w, y.shape(), &Device::Cpu).unwrap().to_dtype(y.dtype()).unwrap();
    (y * w).unwrap().sum_all().unwrap()
}

/// Forward values and gradients of every input: fused op vs candle's composition.
fn check_against(what: &str, inputs: &[Var], fused: impl Fn(&[Tensor]) -> Tensor, plain: impl Fn(&[Tensor]) -> Tensor) {
    let xs: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
    let (yf, yp) = (fused(&xs), plain(&xs));
    let tol = if xs[0].dtype() == DType::F32 { 1e-4 } else { 1e-10 };
    assert!(max_diff(&yf, &yp) < tol, "{what}: outputs differ by {}", max_diff(&yf, &yp));
    let (gf, gp) = (weighted(&yf).backward().unwrap(), weighted(&yp).backward().unwrap());
    for (i, v) in inputs.iter().enumerate() {
        let d = max_diff(gf.get(v.as_tensor()).unwrap(), gp.get(v.as_tensor()).unwrap());
        assert!(d < tol, "{what}: gradient of input {i} differs by {d}");
    }
}

/// Finite differences in f64 through the fused op, at a few entries of every input.
fn check_fd(what: &str, inputs: &[Var], fused: impl Fn(&[Tensor]) -> Tensor) {
    let xs: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
    let grads = weighted(&fused(&xs)).backward().unwrap();
    for (i, v) in inputs.iter().enumerate() {
        let g: Vec<f64> = grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let base: Vec<f64> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        for idx in [0, base.len() / 2, base.len() - 1] {
            let at = |delta: f64| -> f64 {
                let mut x = base.clone();
                x[idx] += delta;
                let mut ys = xs.iter().map(|t| t.detach()).collect::<Vec<_>>();
                ys[i] = Tensor::from_vec(x, v.shape(), &Device::Cpu).unwrap();
                weighted(&fused(&ys)).to_scalar::<f64>().unwrap()
            };
            let eps = 1e-6;
            let fd = (at(eps) - at(-eps)) / (2.0 * eps);
            assert!((fd - g[idx]).abs() < 1e-6 + 1e-5 * fd.abs(), "{what}: input {i}[{idx}]: {} vs {fd}", g[idx]);
        }
    }
}

fn vars(shapes: &[(usize, usize)], dtype: DType) -> Vec<Var> {
    shapes.iter().map(|&s| Var::from_tensor(&randn(s, 1.0, dtype)).unwrap()).collect()
}

#[test]
fn fused_norms_and_softmax_equal_candle_ops_and_finite_differences() {
    use lm::kernels::norm::{layer_norm, rms_norm, softmax_last};
    // 130 rows: the backward's row blocks of 64 and a ragged last one.
    let (rows, d) = (130, 24);
    for dtype in [DType::F32, DType::F64] {
        let v = vars(&[(rows, d), (1, d)], dtype);
        let rms = |x: &[Tensor]| rms_norm(&x[0], &x[1].squeeze(0).unwrap(), 1e-5).unwrap();
        let rms_plain = |x: &[Tensor]| candle_nn::ops::rms_norm_slow(&x[0], &x[1].squeeze(0).unwrap(), 1e-5).unwrap();
        check_against(&format!("rms_norm {dtype:?}"), &v, rms, rms_plain);
        let v = vars(&[(rows, d), (1, d), (1, d)], dtype);
        let ln = |x: &[Tensor]| layer_norm(&x[0], &x[1].squeeze(0).unwrap(), &x[2].squeeze(0).unwrap(), 1e-5).unwrap();
        let ln_plain = |x: &[Tensor]| {
            candle_nn::ops::layer_norm_slow(&x[0], &x[1].squeeze(0).unwrap(), &x[2].squeeze(0).unwrap(), 1e-5).unwrap()
        };
        check_against(&format!("layer_norm {dtype:?}"), &v, ln, ln_plain);
        let v = vars(&[(rows, d)], dtype);
        let sm = |x: &[Tensor]| softmax_last(&(&x[0] * 3.0).unwrap()).unwrap();
        let sm_plain = |x: &[Tensor]| candle_nn::ops::softmax(&(&x[0] * 3.0).unwrap(), candle_core::D::Minus1).unwrap();
        check_against(&format!("softmax {dtype:?}"), &v, sm, sm_plain);
        if dtype == DType::F64 {
            check_fd("rms_norm", &vars(&[(rows, d), (1, d)], dtype), rms);
            check_fd("layer_norm", &vars(&[(rows, d), (1, d), (1, d)], dtype), ln);
            check_fd("softmax", &vars(&[(rows, d)], dtype), sm);
        }
    }
}

#[test]
fn fused_rope_equals_candle_ops_exactly_and_finite_differences() {
    use lm::kernels::rope::{apply_rope, reference};
    let (b, h, t) = (2, 3, 5);
    for (hd, rot) in [(8, 8), (8, 4)] {
        for dtype in [DType::F32, DType::F64] {
            let x = Var::from_tensor(
                &Tensor::randn(0f32, 1.0, (b, h, t, hd), &Device::Cpu).unwrap().to_dtype(dtype).unwrap(),
            )
            .unwrap();
            let ang = Tensor::randn(0f32, 2.0, (b, 1, t, rot), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            let (cos, sin) = (ang.cos().unwrap(), ang.sin().unwrap());
            let fused = |x: &[Tensor]| apply_rope(&x[0], &cos, &sin).unwrap();
            let plain = |x: &[Tensor]| reference(&x[0], &cos, &sin).unwrap();
            // The same products and sums in the same order: bit-identical, so inference does not change.
            let d = max_diff(&fused(&[x.as_tensor().clone()]), &plain(&[x.as_tensor().clone()]));
            assert_eq!(d, 0.0, "hd {hd} rot {rot} {dtype:?}: forward differs by {d}");
            check_against(&format!("rope hd {hd} rot {rot} {dtype:?}"), std::slice::from_ref(&x), fused, plain);
            if dtype == DType::F64 {
                check_fd(&format!("rope hd {hd} rot {rot}"), &[x], fused);
            }
        }
    }
}

#[test]
fn fused_masked_softmax_equals_candle_ops_and_finite_differences() {
    use lm::kernels::norm::masked_softmax;
    // (B, G, rep·T, S) scores with T = 5 positions, rep = 2 query heads per group, S = 7 keys (fewer than the
    // vectorised loops' lanes) or 37 (two full lanes and a ragged end); the scores are scaled by 0.37.
    let (b, g, rep, t, scale) = (2, 3, 2, 5, 0.37);
    for (dtype, s) in [(DType::F32, 7), (DType::F64, 7), (DType::F32, 37), (DType::F64, 37)] {
        let x = Var::from_tensor(
            &Tensor::randn(0f32, 1.0, (b, g, rep * t, s), &Device::Cpu).unwrap().to_dtype(dtype).unwrap(),
        )
        .unwrap();
        // Causal with an offset of 2 cached keys, and row 1's first key hidden (left padding).
        let mut m = vec![0f32; b * t * s];
        for bi in 0..b {
            for i in 0..t {
                for j in 0..s {
                    if j > i + 2 || (bi == 1 && j == 0 && i > 0) {
                        m[(bi * t + i) * s + j] = f32::NEG_INFINITY;
                    }
                }
            }
        }
        let mask = Tensor::from_vec(m, (b, 1, t, s), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
        let fused = |x: &[Tensor]| masked_softmax(&x[0], &mask, t, scale).unwrap();
        let plain = |x: &[Tensor]| {
            let y = (&x[0] * scale).unwrap().reshape((b, g, rep, t, s)).unwrap();
            let y = y.broadcast_add(&mask.unsqueeze(1).unwrap()).unwrap(); // (B, G, rep, T, S)
            candle_nn::ops::softmax(&y.reshape((b, g, rep * t, s)).unwrap(), candle_core::D::Minus1).unwrap()
        };
        check_against(&format!("masked softmax {dtype:?} S={s}"), std::slice::from_ref(&x), fused, plain);
        if dtype == DType::F64 {
            check_fd("masked softmax", &[x], fused);
        }
    }
}

/// The vendored candle's matmul backward (vendor/README.md) gives a constant operand no gradient and the
/// tracked one the same gradient as before, on either side of the product.
#[test]
fn a_matmul_gives_no_gradient_to_a_constant_operand() {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::arange(0f64, 6.0, &dev).unwrap().reshape((2, 3)).unwrap()).unwrap();
    let w = Tensor::arange(1f64, 13.0, &dev).unwrap().reshape((4, 3)).unwrap();
    // d/dx sum(x Wᵀ) = 1 W: every row of x gets the column sums of Wᵀ, i.e. the sums of W's columns.
    let g = x.as_tensor().matmul(&w.t().unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(g.get(&w).is_none(), "the constant operand got a gradient");
    let want = w.sum(0).unwrap().unsqueeze(0).unwrap().broadcast_as((2, 3)).unwrap().to_vec2::<f64>().unwrap();
    assert_eq!(g.get(x.as_tensor()).unwrap().to_vec2::<f64>().unwrap(), want);
    // The constant on the left: d/dx sum(W x) for x (3, 2).
    let x = Var::from_tensor(&Tensor::arange(0f64, 6.0, &dev).unwrap().reshape((3, 2)).unwrap()).unwrap();
    let g = w.matmul(x.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(g.get(&w).is_none());
    let want = w.sum(0).unwrap().unsqueeze(1).unwrap().broadcast_as((3, 2)).unwrap().to_vec2::<f64>().unwrap();
    assert_eq!(g.get(x.as_tensor()).unwrap().to_vec2::<f64>().unwrap(), want);
}

/// The softmax of bf16 scores (training on CUDA with train.dtype = "bf16") sums in f32: each probability
/// is the f32 softmax's to bf16 rounding, and the gradient reaches the bf16 input.
#[test]
fn a_bf16_softmax_sums_in_f32_and_has_a_gradient() {
    let x32 = randn((4, 600), 3.0, DType::F32);
    let x = Var::from_tensor(&x32.to_dtype(DType::BF16).unwrap()).unwrap();
    let y = lm::kernels::norm::softmax_last(x.as_tensor()).unwrap();
    assert_eq!(y.dtype(), DType::BF16);
    let want = candle_nn::ops::softmax(&x.as_tensor().to_dtype(DType::F32).unwrap(), 1).unwrap();
    let got = y.to_dtype(DType::F32).unwrap();
    let rel = ((&got - &want).unwrap().abs().unwrap() / (want.abs().unwrap() + 1e-12).unwrap()).unwrap();
    let worst = rel.flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(worst < 1e-2, "bf16 softmax off by {worst} relative");
    let g = (y.to_dtype(DType::F32).unwrap() * &want).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(g.get(x.as_tensor()).is_some(), "no gradient for the bf16 scores");
}

/// The largest difference between `a` and `b` relative to `b`'s largest magnitude.
fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_dtype(DType::F64).unwrap();
    max_diff(a, b) / scale.to_scalar::<f64>().unwrap().max(1e-30)
}

#[test]
fn fused_lora_linear_equals_candle_ops_and_finite_differences() {
    use lm::kernels::lora::{lora_linear, reference};
    // (rows, in, out, r): one block; the decode-sized transposed path; every product split across threads.
    for &(rows, inp, out, r) in &[(5, 7, 9, 3), (40, 64, 96, 4), (700, 128, 160, 8)] {
        for dtype in [DType::F32, DType::F64] {
            let what = format!("{rows}×{inp} → {out}, r {r}, {dtype:?}");
            let w = randn((out, inp), 0.3, dtype);
            let v = vars(&[(rows, inp), (r, inp), (out, r)], dtype);
            let wt = w.t().unwrap().contiguous().unwrap();
            let fused = |x: &[Tensor]| lora_linear(&x[0], &w, None, &x[1], &x[2], 2.0).unwrap();
            let plain = |x: &[Tensor]| reference(&x[0], &w, &x[1], &x[2], 2.0).unwrap();
            // The forward from the weight's transposed copy, as a frozen down-projection runs it.
            let from_wt = |x: &[Tensor]| lora_linear(&x[0], &w, Some(&wt), &x[1], &x[2], 2.0).unwrap();
            let xs: Vec<Tensor> = v.iter().map(|v| v.as_tensor().clone()).collect();
            let yp = plain(&xs);
            let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
            let gp = weighted(&yp).backward().unwrap();
            for (how, y) in [("from W", fused(&xs)), ("from Wᵀ", from_wt(&xs))] {
                assert!(rel_diff(&y, &yp) < tol, "{what} {how}: outputs differ by {}", rel_diff(&y, &yp));
                let gf = weighted(&y).backward().unwrap();
                for (i, v) in v.iter().enumerate() {
                    let (a, b) = (gf.get(v.as_tensor()).unwrap(), gp.get(v.as_tensor()).unwrap());
                    assert!(rel_diff(a, b) < tol, "{what} {how}: gradient of input {i} differs by {}", rel_diff(a, b));
                }
                assert!(gf.get(&w).is_none(), "{what}: the frozen weight got a gradient");
            }
            // An input outside the graph (the first layer's, under LoRA) gets no gradient; A and B still do.
            let x0 = v[0].as_tensor().detach();
            let g = weighted(&lora_linear(&x0, &w, None, v[1].as_tensor(), v[2].as_tensor(), 2.0).unwrap())
                .backward()
                .unwrap();
            assert!(g.get(&x0).is_none() && g.get(v[1].as_tensor()).is_some() && g.get(v[2].as_tensor()).is_some());
            if dtype == DType::F64 && rows < 100 {
                check_fd(&format!("lora-linear {what}"), &v, fused);
            }
        }
    }
}

#[test]
fn fused_swiglu_equals_candle_ops_and_finite_differences() {
    use lm::kernels::glu::{reference, swiglu};
    // More elements than one parallel block, with a ragged last one.
    let (rows, d) = (130, 150);
    for dtype in [DType::F32, DType::F64] {
        let v = vars(&[(rows, d), (rows, d)], dtype);
        let fused = |x: &[Tensor]| swiglu(&(&x[0] * 3.0).unwrap(), &x[1]).unwrap();
        let plain = |x: &[Tensor]| reference(&(&x[0] * 3.0).unwrap(), &x[1]).unwrap();
        // Spelled as candle's silu then the product: in f64, which keeps libm's exponential, bit-identical;
        // f32's vectorised exponential is within 2 ulp of it (check_against's tolerance).
        let xs: Vec<Tensor> = v.iter().map(|v| v.as_tensor().clone()).collect();
        if dtype == DType::F64 {
            assert_eq!(max_diff(&fused(&xs), &plain(&xs)), 0.0, "{dtype:?}: forward differs");
        }
        check_against(&format!("swiglu {dtype:?}"), &v, fused, plain);
        if dtype == DType::F64 {
            check_fd("swiglu", &v, fused);
        }
    }
}

#[test]
fn a_trained_head_in_vocabulary_blocks_equals_candle_ops() {
    // More rows than one tile (256) and a vocabulary of three blocks (1,024), both ragged: the trained head's
    // backward walks every tile of every block.
    let (n, v, d) = (300, 2100, 8);
    for dtype in [DType::F32, DType::F64] {
        for softcap in [None, Some(3.0)] {
            let h = Var::from_tensor(&randn((n, d), 1.0, dtype)).unwrap();
            let w = Var::from_tensor(&randn((v, d), 0.5, dtype)).unwrap();
            let t: Vec<u32> = (0..n).map(|i| (i * 977 % v) as u32).collect();
            let fused = head_logprobs(h.as_tensor(), w.as_tensor(), &t, softcap).unwrap();
            let plain = reference(h.as_tensor(), w.as_tensor(), &t, softcap).unwrap();
            let (gf, gp) = (objective(&fused).backward().unwrap(), objective(&plain).backward().unwrap());
            let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
            for (name, x) in [("hidden", &h), ("weight", &w)] {
                let (a, b) = (gf.get(x.as_tensor()).unwrap(), gp.get(x.as_tensor()).unwrap());
                assert!(
                    rel_diff(a, b) < tol,
                    "{dtype:?} softcap {softcap:?}: {name} gradients differ by {}",
                    rel_diff(a, b)
                );
            }
        }
    }
}
