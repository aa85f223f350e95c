//! Correctness of every architecture on tiny random models: gradients reach every parameter, analytic
//! gradients match finite differences, the KV cache and padding change nothing, the fused inference
//! path equals the differentiable one, and saving/loading (safetensors and GGUF) keeps the logits.

use candle_core::{DType, Device, Tensor, D};
use lm::score::completion_logprobs;
use lm::testing::{tiny_model, TINY_KINDS};
use lm::{LanguageModel, Positions};

fn ids(b: usize, t: usize, seed: usize) -> Vec<Vec<u32>> {
    (0..b).map(|i| (0..t).map(|j| ((i * 37 + j * 11 + seed * 7) % 255) as u32).collect()).collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    lm::testing::max_abs_diff(a, b).unwrap() as f32
}

fn batch_tensor(rows: &[Vec<u32>]) -> Tensor {
    let t = rows[0].len();
    Tensor::from_vec(rows.concat(), (rows.len(), t), &Device::Cpu).unwrap()
}

#[test]
fn every_parameter_gets_a_nonzero_gradient() {
    for kind in TINY_KINDS {
        let mut m = tiny_model(kind, 1, DType::F32).unwrap();
        let vars = m.make_trainable(|_| true).unwrap();
        assert_eq!(vars.len(), m.params.tensors.len());
        // Sequences longer than Gemma's window of 4 so local and global layers both matter.
        let items: Vec<(Vec<u32>, Vec<u32>)> =
            ids(3, 12, 1).into_iter().map(|r| (r[..5].to_vec(), r[5..].to_vec())).collect();
        let s = completion_logprobs(&m, &items).unwrap();
        let grads = s.sum.sum_all().unwrap().backward().unwrap();
        for (name, v) in &vars {
            let g = grads.get(v.as_tensor()).unwrap_or_else(|| panic!("{kind}: no gradient for {name}"));
            let norm: f32 = g.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
            assert!(norm > 0.0 && norm.is_finite(), "{kind}: gradient of {name} is {norm}");
        }
    }
}

/// Loss for the finite-difference check: summed completion log-probs of fixed pairs.
fn loss(m: &LanguageModel) -> Tensor {
    let items: Vec<(Vec<u32>, Vec<u32>)> =
        ids(2, 9, 3).into_iter().map(|r| (r[..4].to_vec(), r[4..].to_vec())).collect();
    completion_logprobs(m, &items).unwrap().sum.sum_all().unwrap()
}

#[test]
fn gradients_match_finite_differences_in_f64() {
    for kind in ["llama", "gpt2", "gemma3"] {
        let mut m = tiny_model(kind, 2, DType::F64).unwrap();
        let vars = m.make_trainable(|_| true).unwrap();
        let grads = loss(&m).backward().unwrap();
        let eps = 1e-5;
        let mut checked = 0;
        for (name, v) in vars.iter().step_by(3) {
            let g: Vec<f64> = grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let base: Vec<f64> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            for &idx in &[0usize, base.len() / 2, base.len() - 1] {
                let mut plus = base.clone();
                plus[idx] += eps;
                v.set(&Tensor::from_vec(plus, v.shape(), &Device::Cpu).unwrap()).unwrap();
                let lp: f64 = loss(&m).to_scalar().unwrap();
                let mut minus = base.clone();
                minus[idx] -= eps;
                v.set(&Tensor::from_vec(minus, v.shape(), &Device::Cpu).unwrap()).unwrap();
                let lm_: f64 = loss(&m).to_scalar().unwrap();
                v.set(&Tensor::from_vec(base.clone(), v.shape(), &Device::Cpu).unwrap()).unwrap();
                let fd = (lp - lm_) / (2.0 * eps);
                let err = (fd - g[idx]).abs();
                assert!(
                    err <= 1e-6 + 1e-4 * g[idx].abs().max(fd.abs()),
                    "{kind} {name}[{idx}]: analytic {} vs numeric {fd}",
                    g[idx]
                );
                checked += 1;
            }
        }
        assert!(checked >= 9, "{kind}: only {checked} entries checked");
    }
}

#[test]
fn kv_cache_decoding_equals_the_full_forward() {
    for kind in TINY_KINDS {
        let m = tiny_model(kind, 3, DType::F32).unwrap();
        let rows = ids(2, 10, 5);
        let full = m.forward(&batch_tensor(&rows)).unwrap(); // (B, T, V)
                                                             // Capacities: none given (the buffer doubles), too small (it grows once), exact.
        for capacity in [0, 7, 10] {
            // Prefill 6 tokens, then one token at a time.
            let mut cache = m.new_cache(capacity);
            let mut ctx = Positions::fresh(2);
            let pre: Vec<Vec<u32>> = rows.iter().map(|r| r[..6].to_vec()).collect();
            let mut steps = vec![m.logits(&m.hidden(&batch_tensor(&pre), &ctx, Some(&mut cache)).unwrap()).unwrap()];
            ctx.start = 6;
            for t in 6..10 {
                let step: Vec<Vec<u32>> = rows.iter().map(|r| vec![r[t]]).collect();
                steps.push(m.logits(&m.hidden(&batch_tensor(&step), &ctx, Some(&mut cache)).unwrap()).unwrap());
                ctx.start += 1;
            }
            assert_eq!(cache.len(0), 10);
            let cached = Tensor::cat(&steps, 1).unwrap();
            let d = max_abs_diff(&full, &cached);
            assert!(d < 1e-4, "{kind}, capacity {capacity}: cached decode differs from full forward by {d}");
        }
    }
}

#[test]
fn left_padding_does_not_change_a_row() {
    for kind in TINY_KINDS {
        let m = tiny_model(kind, 4, DType::F32).unwrap();
        let short: Vec<u32> = ids(1, 7, 9)[0].clone();
        let alone = m.forward(&batch_tensor(std::slice::from_ref(&short))).unwrap(); // (1, 7, V)
                                                                                     // Same row left-padded by 3 inside a batch with a longer row.
        let mut padded = vec![0u32; 3];
        padded.extend(&short);
        let other = ids(1, 10, 2)[0].clone();
        let ctx = Positions { start: 0, left_pad: vec![3, 0] };
        let h = m.hidden(&batch_tensor(&[padded, other]), &ctx, None).unwrap();
        let got = m.logits(&h).unwrap().narrow(0, 0, 1).unwrap().narrow(1, 3, 7).unwrap();
        let d = max_abs_diff(&alone, &got);
        assert!(d < 1e-4, "{kind}: left padding changed the logits by {d}");
    }
}

#[test]
fn fused_inference_path_equals_the_differentiable_path() {
    for kind in TINY_KINDS {
        let mut m = tiny_model(kind, 5, DType::F32).unwrap();
        let x = batch_tensor(&ids(2, 8, 4));
        let fused = m.forward(&x).unwrap();
        m.make_trainable(|_| true).unwrap();
        let slow = m.forward(&x).unwrap();
        let d = max_abs_diff(&fused, &slow);
        assert!(d < 1e-4, "{kind}: fused and differentiable paths differ by {d}");
    }
}

#[test]
fn safetensors_save_load_round_trip_keeps_logits() {
    for kind in TINY_KINDS {
        let m = tiny_model(kind, 6, DType::F32).unwrap();
        let dir = tempfile::tempdir().unwrap();
        m.save(dir.path()).unwrap();
        let back = LanguageModel::load(dir.path(), &Device::Cpu, DType::F32).unwrap();
        assert_eq!(back.config, m.config, "{kind}: config changed in the round trip");
        let x = batch_tensor(&ids(2, 8, 1));
        let d = max_abs_diff(&m.forward(&x).unwrap(), &back.forward(&x).unwrap());
        assert_eq!(d, 0.0, "{kind}: logits changed after save/load");
        assert_eq!(back.tokenizer.encode("hello there").unwrap(), m.tokenizer.encode("hello there").unwrap());
    }
}

#[test]
fn gguf_round_trip_undoes_the_llama_qk_permutation_and_dequantises() {
    use candle_core::quantized::GgmlDType;
    for kind in TINY_KINDS {
        let m = tiny_model(kind, 7, DType::F32).unwrap();
        let vocab = lm::Tokenizer::byte_level_test_vocab(m.config.vocab_size).unwrap();
        let x = batch_tensor(&ids(2, 8, 2));
        let want = m.forward(&x).unwrap();
        for (q, tol) in [(GgmlDType::F32, 1e-5), (GgmlDType::F16, 2e-3), (GgmlDType::Q8_0, 2e-2)] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("m.gguf");
            lm::load::write_gguf(&path, &m.config, &m.params, &vocab, q).unwrap();
            let back = LanguageModel::load(&path, &Device::Cpu, DType::F32).unwrap();
            let d = max_abs_diff(&want, &back.forward(&x).unwrap());
            assert!(d < tol, "{kind} {q:?}: GGUF round trip changed logits by {d}");
        }
    }
}

#[test]
fn log_softmax_of_scores_matches_manual_sum() {
    // completion_logprobs must equal summing next-token log-probs by hand over completion tokens only.
    let m = tiny_model("llama", 8, DType::F32).unwrap();
    let (p, c) = (vec![5u32, 9, 200], vec![17u32, 4, 250, 3]);
    let s = completion_logprobs(&m, &[(p.clone(), c.clone()), (vec![1], vec![2, 3])]).unwrap();
    let full: Vec<u32> = p.iter().chain(&c).copied().collect();
    let logits = m.forward(&batch_tensor(std::slice::from_ref(&full))).unwrap().squeeze(0).unwrap();
    let lp: Vec<Vec<f32>> = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap().to_vec2().unwrap();
    let manual: f32 = (0..c.len()).map(|j| lp[p.len() - 1 + j][c[j] as usize]).sum();
    let got: Vec<f32> = s.sum.to_vec1().unwrap();
    assert!((got[0] - manual).abs() < 1e-4, "{} vs {manual}", got[0]);
    assert_eq!(s.count, vec![4, 2]);
}

#[test]
fn gguf_quantisations_dequantise_close_to_the_weights() {
    use candle_core::quantized::GgmlDType;
    // Rows of 256 so the k-quants (block 256) apply to every matrix.
    let cfg = lm::ModelConfig {
        hidden_size: 256,
        intermediate_size: 256,
        num_layers: 1,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 64,
        ..lm::testing::tiny_config("llama")
    };
    let tok = lm::Tokenizer::byte_level_for_tests(cfg.vocab_size).unwrap();
    let m = LanguageModel::random(cfg, tok, 9, DType::F32, &Device::Cpu).unwrap();
    let vocab = lm::Tokenizer::byte_level_test_vocab(m.config.vocab_size).unwrap();
    let x = batch_tensor(&ids(2, 6, 3));
    let want = m.forward(&x).unwrap();
    let scale: f32 = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
    for (q, rel) in [
        (GgmlDType::BF16, 0.01),
        (GgmlDType::Q8_0, 0.03),
        (GgmlDType::Q5_0, 0.15),
        (GgmlDType::Q5_1, 0.15),
        (GgmlDType::Q4_0, 0.3),
        (GgmlDType::Q4_1, 0.3),
        (GgmlDType::Q6K, 0.1),
        (GgmlDType::Q5K, 0.15),
        (GgmlDType::Q4K, 0.3),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        lm::load::write_gguf(&path, &m.config, &m.params, &vocab, q).unwrap();
        let back = LanguageModel::load(&path, &Device::Cpu, DType::F32).unwrap();
        let d = max_abs_diff(&want, &back.forward(&x).unwrap());
        eprintln!("{q:?}: max |Δlogit| = {d:.4} (max |logit| {scale:.3})");
        assert!(d > 0.0 || q == GgmlDType::BF16, "{q:?}: no quantisation error at all; was it quantised?");
        assert!(d < rel * scale, "{q:?}: logits moved by {d}, more than {rel} × {scale}");
    }
}

#[test]
fn lora_gradients_through_frozen_weights_equal_the_plain_path() {
    for kind in TINY_KINDS {
        let mut a = tiny_model(kind, 13, DType::F64).unwrap();
        let va = a.add_lora(2, 4.0, &[], 1).unwrap();
        // B starts at zero (so A's gradient would be zero); give it values to test both.
        for (i, (n, v)) in va.iter().enumerate() {
            if n.contains("lora_B") {
                let k = v.elem_count();
                let vals: Vec<f64> = (0..k).map(|j| ((i * 31 + j * 7) % 13) as f64 * 0.01 - 0.06).collect();
                v.set(&Tensor::from_vec(vals, v.shape(), &Device::Cpu).unwrap()).unwrap();
            }
        }
        // The same numbers with every weight trainable: candle's plain matmul backward.
        let mut b = a.with_params(a.params.clone()).unwrap();
        let vb = b.make_trainable(|_| true).unwrap();
        let (ga, gb) = (loss(&a).backward().unwrap(), loss(&b).backward().unwrap());
        assert!((loss(&a).to_scalar::<f64>().unwrap() - loss(&b).to_scalar::<f64>().unwrap()).abs() < 1e-12);
        for (n, v) in &va {
            let x = ga.get(v.as_tensor()).unwrap_or_else(|| panic!("{kind}: no gradient for {n}"));
            let y = gb.get(vb[n].as_tensor()).unwrap();
            let d: f64 = (x - y).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
            let s: f64 = y.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
            assert!(d <= 1e-10 * s.max(1.0) && s > 0.0, "{kind} {n}: frozen path gradient differs by {d} (scale {s})");
        }
    }
}
