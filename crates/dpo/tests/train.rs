//! The trainer end to end on tiny models: it learns a synthetic preference, LoRA leaves the base alone,
//! and a resumed run ends exactly where the uninterrupted run ends.

use candle_core::{DType, Tensor};
use dpo::checkpoint::{find_checkpoint, latest_checkpoint};
use dpo::data::TokenPair;
use dpo::loss::LossType;
use dpo::optim::{OptimizerKind, OptimizerParams, Schedule};
use dpo::train::{LoraConfig, TrainConfig, Trainer};
use lm::testing::tiny_model;
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Pairs whose chosen completion is made of lowercase vowels and rejected of the letters "xyzqw": a
/// preference the model can only learn from the labels.
fn synthetic(n: usize, seed: u64) -> Vec<TokenPair> {
    let mut rng = StdRng::seed_from_u64(seed);
    let pick = |rng: &mut StdRng, set: &[u8], k: usize| -> Vec<u32> {
        (0..k).map(|_| set[rng.random_range(0..set.len())] as u32).collect()
    };
    (0..n)
        .map(|i| TokenPair {
            line: i + 1,
            prompt: (0..rng.random_range(3..7)).map(|_| rng.random_range(65..91)).collect(),
            chosen: pick(&mut rng, b"aeiou", 5),
            rejected: pick(&mut rng, b"xyzqw", 5),
        })
        .collect()
}

fn cfg() -> TrainConfig {
    TrainConfig {
        loss_type: vec![LossType::Sigmoid],
        learning_rate: 3e-3,
        schedule: Schedule::Constant,
        epochs: 4,
        batch_size: 8,
        gradient_accumulation_steps: 2,
        optimizer: OptimizerParams { kind: OptimizerKind::Adamw, ..Default::default() },
        logging_steps: 2,
        seed: 7,
        ..Default::default()
    }
}

#[test]
fn a_tiny_model_learns_a_synthetic_preference() {
    let out = tempfile::tempdir().unwrap();
    let model = tiny_model("llama", 1, DType::F32).unwrap();
    let mut t = Trainer::new(cfg(), model, synthetic(64, 1), synthetic(32, 2), out.path(), |_, _, _| {}).unwrap();
    let before = t.evaluate().unwrap();
    t.run(|_| {}).unwrap();
    let after = t.evaluate().unwrap();
    let acc = after["eval_rewards/accuracies"].as_f64().unwrap();
    assert!(acc > 0.9, "held-out reward accuracy {acc} (before training {})", before["eval_rewards/accuracies"]);
    assert!(after["eval_loss"].as_f64().unwrap() < before["eval_loss"].as_f64().unwrap());
    // Metrics use TRL's names, one line per logging step plus eval lines.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.path().join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for key in [
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
        "logits/chosen",
        "logits/rejected",
        "grad_norm",
        "learning_rate",
        "epoch",
    ] {
        assert!(lines[0].get(key).is_some(), "metric {key} missing: {}", lines[0]);
    }
    assert!(lines.iter().any(|l| l.get("eval_rewards/accuracies").is_some()));
    // The final model loads as an HF directory.
    let back = lm::LanguageModel::load(&out.path().join("final"), &candle_core::Device::Cpu, DType::F32).unwrap();
    assert_eq!(back.config.num_layers, 2);
}

#[test]
fn lora_trains_adapters_and_leaves_the_base_untouched() {
    let out = tempfile::tempdir().unwrap();
    let model = tiny_model("qwen2", 2, DType::F32).unwrap();
    let base: Vec<(String, Vec<f32>)> =
        model.params.tensors.iter().map(|(n, t)| (n.clone(), t.flatten_all().unwrap().to_vec1().unwrap())).collect();
    let c = TrainConfig {
        lora: Some(LoraConfig { r: 4, alpha: 8.0, target_modules: vec!["q_proj".into(), "v_proj".into()] }),
        epochs: 2,
        ..cfg()
    };
    let mut t = Trainer::new(c, model, synthetic(32, 3), vec![], out.path(), |_, _, _| {}).unwrap();
    let names = t.trainable_names();
    assert!(names.iter().all(|n| n.contains(".lora_")) && names.len() == 2 * 2 * 2, "{names:?}");
    t.run(|_| {}).unwrap();
    for (n, w) in &base {
        let now: Vec<f32> = t.policy.params.tensors[n].flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(&now, w, "base weight {n} changed");
    }
    let b: f32 = t.policy.params.tensors["model.layers.0.self_attn.q_proj.lora_B.weight"]
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(b > 0.0, "LoRA B never moved");
    // The merged export differs from the base where adapters sit, and only there.
    let merged = lm::LanguageModel::load(&out.path().join("final"), &candle_core::Device::Cpu, DType::F32).unwrap();
    let diff = |n: &str| -> f32 {
        let a = &merged.params.tensors[n];
        let w = Tensor::new(base.iter().find(|(m, _)| m == n).unwrap().1.clone(), &candle_core::Device::Cpu).unwrap();
        (a.flatten_all().unwrap() - w).unwrap().abs().unwrap().sum_all().unwrap().to_scalar().unwrap()
    };
    assert!(diff("model.layers.0.self_attn.q_proj.weight") > 0.0);
    assert_eq!(diff("model.layers.0.self_attn.k_proj.weight"), 0.0);
    // The adapter has a directory of its own; the merged model's holds no adapter for PEFT to apply again.
    assert!(out.path().join("adapter/adapter_model.safetensors").exists());
    assert!(out.path().join("adapter/adapter_config.json").exists());
    assert!(!out.path().join("final/adapter_config.json").exists());
    // The adapter, applied to the base as PEFT's files are, gives the merged model.
    let base_model = tiny_model("qwen2", 2, DType::F32).unwrap();
    let applied = lm::adapter::apply(&base_model, &out.path().join("adapter")).unwrap();
    assert_same_logits(&applied, &merged);
}

#[test]
fn a_gpt2_adapter_export_reads_back_as_the_merged_model() {
    // GPT-2's HF module paths start with `transformer.` and its Conv1D weights are stored transposed.
    let out = tempfile::tempdir().unwrap();
    let model = tiny_model("gpt2", 5, DType::F32).unwrap();
    let c = TrainConfig {
        lora: Some(LoraConfig { r: 2, alpha: 4.0, target_modules: vec!["all-linear".into()] }),
        epochs: 1,
        ..cfg()
    };
    let mut t = Trainer::new(c, model, synthetic(16, 3), vec![], out.path(), |_, _, _| {}).unwrap();
    t.run(|_| {}).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("adapter/adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["fan_in_fan_out"], true);
    assert_eq!(cfg["target_modules"], serde_json::json!(["c_attn", "c_fc", "c_proj"]));
    let keys =
        candle_core::safetensors::load(out.path().join("adapter/adapter_model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    assert!(keys.contains_key("base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"), "{:?}", keys.keys());
    let merged = lm::LanguageModel::load(&out.path().join("final"), &candle_core::Device::Cpu, DType::F32).unwrap();
    let applied = lm::adapter::apply(&tiny_model("gpt2", 5, DType::F32).unwrap(), &out.path().join("adapter")).unwrap();
    assert_same_logits(&applied, &merged);
}

/// The PEFT adapter applied to the base gives the merged export's logits.
fn assert_same_logits(applied: &lm::LanguageModel, merged: &lm::LanguageModel) {
    let ids = Tensor::new(&[[3u32, 40, 7, 99, 12]], &candle_core::Device::Cpu).unwrap();
    let gap: f32 = (applied.forward(&ids).unwrap() - merged.forward(&ids).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(gap < 1e-5, "adapter applied vs merged export: {gap}");
}

fn trained_weights(t: &Trainer) -> Vec<(String, Vec<f32>)> {
    t.trainable_names()
        .into_iter()
        .map(|n| {
            let v = t.policy.params.tensors[&n].flatten_all().unwrap().to_vec1().unwrap();
            (n, v)
        })
        .collect()
}

/// Trains a fresh tiny model of `kind` (weights seeded by `seed`) on `train` to the end of `c`.
fn train_tiny(c: TrainConfig, kind: &str, seed: u64, train: Vec<TokenPair>) -> Trainer {
    let out = tempfile::tempdir().unwrap();
    let mut t =
        Trainer::new(c, tiny_model(kind, seed, DType::F32).unwrap(), train, vec![], out.path(), |_, _, _| {}).unwrap();
    t.run(|_| {}).unwrap();
    t
}

/// Every trained tensor of `a` within `tol` of `b`'s.
fn assert_close(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)], tol: f32, what: &str) {
    for ((n, x), (_, y)) in a.iter().zip(b) {
        let d = x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
        assert!(d < tol, "{n}: {what} differ by {d}");
    }
}

#[test]
fn resume_ends_where_the_uninterrupted_run_ends() {
    for lora in [None, Some(LoraConfig { r: 2, alpha: 4.0, target_modules: vec![] })] {
        let c = TrainConfig { lora: lora.clone(), save_steps: Some(3), ..cfg() };
        let (train, eval) = (synthetic(40, 5), synthetic(8, 6));
        let full_dir = tempfile::tempdir().unwrap();
        let mut full = Trainer::new(
            c.clone(),
            tiny_model("gpt2", 3, DType::F32).unwrap(),
            train.clone(),
            eval.clone(),
            full_dir.path(),
            |_, _, _| {},
        )
        .unwrap();
        full.run(|_| {}).unwrap();
        let total = full.step;

        // Stop after 3 steps (as if killed after the checkpoint), then resume in a fresh trainer.
        let dir = tempfile::tempdir().unwrap();
        let stop = TrainConfig { max_steps: Some(3), ..c.clone() };
        let mut first = Trainer::new(
            stop,
            tiny_model("gpt2", 3, DType::F32).unwrap(),
            train.clone(),
            eval.clone(),
            dir.path(),
            |_, _, _| {},
        )
        .unwrap();
        first.run(|_| {}).unwrap();
        assert_eq!(first.step, 3);
        let ckpt = latest_checkpoint(dir.path()).unwrap();
        assert!(ckpt.ends_with("checkpoint-3"));
        let mut second =
            Trainer::new(c.clone(), tiny_model("gpt2", 3, DType::F32).unwrap(), train, eval, dir.path(), |_, _, _| {})
                .unwrap();
        second.resume(&ckpt).unwrap();
        second.run(|_| {}).unwrap();
        assert_eq!(second.step, total);
        assert_eq!(
            trained_weights(&second),
            trained_weights(&full),
            "resumed run ended elsewhere (lora: {})",
            lora.is_some()
        );
        // Resuming with other data is refused (the cached reference log-probs no longer match).
        let mut other = Trainer::new(
            c.clone(),
            tiny_model("gpt2", 3, DType::F32).unwrap(),
            synthetic(40, 99),
            vec![],
            dir.path(),
            |_, _, _| {},
        )
        .unwrap();
        let e = other.resume(&ckpt).unwrap_err().to_string();
        assert!(e.contains("other training data"), "{e}");
        // The metrics file reads like one run: steps strictly increasing (none logged twice), every step the
        // uninterrupted run logged present (the stopped run also logged its last step, 3).
        let steps = |p: &std::path::Path| -> Vec<u64> {
            std::fs::read_to_string(p.join("metrics.jsonl"))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .filter(|v| v.get("loss").is_some())
                .map(|v| v["step"].as_u64().unwrap())
                .collect()
        };
        let (resumed, whole) = (steps(dir.path()), steps(full_dir.path()));
        assert!(resumed.windows(2).all(|w| w[0] < w[1]), "{resumed:?}");
        assert!(whole.iter().all(|s| resumed.contains(s)), "{resumed:?} vs {whole:?}");
    }
}

#[test]
fn reference_cache_gives_the_same_training_as_live_reference() {
    let run = |precompute: bool| {
        let c = TrainConfig { precompute_ref_log_probs: precompute, epochs: 1, ..cfg() };
        trained_weights(&train_tiny(c, "gemma3", 4, synthetic(16, 7)))
    };
    assert_close(&run(true), &run(false), 1e-5, "cached and live reference");
}

#[test]
fn bad_configs_are_rejected() {
    let out = tempfile::tempdir().unwrap();
    let m = || tiny_model("llama", 1, DType::F32).unwrap();
    let c = TrainConfig { loss_weights: Some(vec![1.0, 2.0]), ..cfg() };
    let e = Trainer::new(c, m(), synthetic(4, 1), vec![], out.path(), |_, _, _| {}).err().unwrap();
    assert!(e.to_string().contains("loss_weights"), "{e}");
    let c =
        TrainConfig { lora: Some(LoraConfig { target_modules: vec!["nope".into()], ..Default::default() }), ..cfg() };
    let e = Trainer::new(c, m(), synthetic(4, 1), vec![], out.path(), |_, _, _| {}).err().unwrap();
    assert!(e.to_string().contains("nope"), "{e}");
    // A [kto] section selects the KTO trainer; the DPO trainer refuses it rather than train DPO.
    let c = TrainConfig { kto: Some(dpo::KtoConfig::default()), ..cfg() };
    let e = Trainer::new(c, m(), synthetic(4, 1), vec![], out.path(), |_, _, _| {}).err().unwrap();
    assert!(e.to_string().contains("[kto]") && e.to_string().contains("KTO trainer"), "{e}");
    let e = toml::from_str::<TrainConfig>("learning_rat = 1e-5").unwrap_err();
    assert!(e.to_string().contains("learning_rat"), "{e}");
    // train.dtype: f32 or bf16, and bf16 only on CUDA.
    let e = toml::from_str::<TrainConfig>("dtype = \"f16\"").unwrap_err();
    assert!(e.to_string().contains("dtype") && e.to_string().contains("bf16"), "{e}");
    let c = TrainConfig { dtype: dpo::ComputeDtype::Bf16, ..cfg() };
    let e = Trainer::new(c, m(), synthetic(4, 1), vec![], out.path(), |_, _, _| {}).err().unwrap();
    assert!(e.to_string().contains("train.dtype") && e.to_string().contains("CUDA"), "{e}");
}

/// Mixed precision as `train.dtype = "bf16"` runs it, shown on the CPU one step wider: f64 master weights and
/// optimizer state, the passes in f32. The run follows the f32 run (same losses to f32 rounding), every
/// trainable master moves and stays f64, and the frozen reference is in the compute dtype.
#[test]
fn a_compute_dtype_narrower_than_the_masters_trains_the_masters() {
    for lora in [None, Some(LoraConfig { r: 2, alpha: 4.0, target_modules: vec![] })] {
        let c = TrainConfig { lora: lora.clone(), epochs: 1, precompute_ref_log_probs: false, ..cfg() };
        let run = |dtype: DType, compute: Option<DType>| {
            let out = tempfile::tempdir().unwrap();
            let m = tiny_model("llama", 3, dtype).unwrap();
            let mut t = Trainer::new(c.clone(), m, synthetic(32, 2), vec![], out.path(), |_, _, _| {}).unwrap();
            if let Some(d) = compute {
                t.set_compute_dtype(d).unwrap();
            }
            let before = trained_weights_f64(&t);
            let mut losses = Vec::new();
            t.run(|s| losses.push(s.loss)).unwrap();
            (t, before, losses)
        };
        let (plain, _, want) = run(DType::F32, None);
        let (mixed, before, got) = run(DType::F64, Some(DType::F32));
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5, "lora {}: loss {g} vs f32 run's {w}", lora.is_some());
        }
        let after = trained_weights_f64(&mixed);
        for ((n, b), (_, a)) in before.iter().zip(&after) {
            assert_eq!(mixed.policy.params.tensors[n].dtype(), DType::F64, "{n} is no longer an f64 master");
            let moved = b.iter().zip(a).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
            assert!(moved > 0.0, "{n}: the master did not move");
        }
        let f32_weights = trained_weights(&plain);
        for ((n, a), (_, w)) in after.iter().zip(&f32_weights) {
            let d = a.iter().zip(w).map(|(x, y)| (x - *y as f64).abs()).fold(0.0, f64::max);
            assert!(d < 1e-4, "{n}: the mixed run's weights are {d} from the f32 run's");
        }
    }
}

fn trained_weights_f64(t: &Trainer) -> Vec<(String, Vec<f64>)> {
    t.trainable_names()
        .into_iter()
        .map(|n| {
            let v = t.policy.params.tensors[&n].to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            (n, v)
        })
        .collect()
}

#[test]
fn gradient_accumulation_equals_one_big_batch() {
    // 2 micro-batches of 4 with accumulation = one batch of 8: same pairs per step, same mean loss.
    let run = |batch: usize, accum: usize| {
        let c = TrainConfig { batch_size: batch, gradient_accumulation_steps: accum, epochs: 1, ..cfg() };
        let t = train_tiny(c, "llama", 9, synthetic(16, 8));
        assert_eq!(t.step, 2);
        trained_weights(&t)
    };
    assert_close(&run(4, 2), &run(8, 1), 1e-5, "accumulation and the big batch");
}

#[test]
fn same_seed_same_run_and_tr_dpo_sync_moves_the_reference() {
    let run = |sync: bool, seed: u64| {
        let c = TrainConfig {
            sync_ref_model: sync,
            precompute_ref_log_probs: !sync,
            ref_model_sync_steps: 1,
            lora: Some(LoraConfig { r: 2, alpha: 4.0, target_modules: vec![] }),
            epochs: 2,
            seed,
            ..cfg()
        };
        trained_weights(&train_tiny(c, "llama", 10, synthetic(16, 9)))
    };
    let plain = run(false, 1);
    assert_eq!(plain, run(false, 1), "same seed, different weights");
    assert_ne!(plain, run(false, 2), "the seed changed nothing");
    // With the reference pulled toward the policy after every step, the DPO gradients change.
    assert_ne!(plain, run(true, 1), "TR-DPO sync had no effect");
}

#[test]
fn find_checkpoint_resolves_resume_and_names_what_is_missing() {
    let out = tempfile::tempdir().unwrap();
    let e = find_checkpoint(out.path(), None).unwrap_err().to_string();
    assert_eq!(e, format!("--resume: no checkpoint-N directory in {}", out.path().display()));
    let empty = out.path().join("elsewhere");
    std::fs::create_dir_all(&empty).unwrap();
    let e = find_checkpoint(out.path(), Some(&empty)).unwrap_err().to_string();
    assert_eq!(e, format!("--resume {}: not a checkpoint and holds none", empty.display()));
    // The latest checkpoint under `out` (by number, not by name), a checkpoint given directly, or the
    // latest one under a given directory.
    for n in [2, 10] {
        let c = out.path().join(format!("checkpoint-{n}"));
        std::fs::create_dir_all(&c).unwrap();
        std::fs::write(c.join("trainer_state.json"), "{}").unwrap();
    }
    let ten = out.path().join("checkpoint-10");
    assert_eq!(find_checkpoint(out.path(), None).unwrap(), ten);
    let two = out.path().join("checkpoint-2");
    assert_eq!(find_checkpoint(&empty, Some(&two)).unwrap(), two);
    assert_eq!(find_checkpoint(&empty, Some(out.path())).unwrap(), ten);
}

#[test]
fn resume_latest_continues_from_the_last_checkpoint_in_out() {
    let dir = tempfile::tempdir().unwrap();
    let new = |c: TrainConfig| {
        Trainer::new(c, tiny_model("llama", 1, DType::F32).unwrap(), synthetic(16, 1), vec![], dir.path(), |_, _, _| {})
            .unwrap()
    };
    let mut fresh = new(cfg());
    assert_eq!(fresh.resume_latest().unwrap(), None, "nothing to resume in an empty directory");
    assert_eq!(fresh.step, 0);
    new(TrainConfig { max_steps: Some(1), ..cfg() }).run(|_| {}).unwrap();
    let mut again = new(cfg());
    assert_eq!(again.resume_latest().unwrap(), Some(dir.path().join("checkpoint-1")));
    assert_eq!(again.step, 1);
}

/// LD-DPO and WPO reach the trainer through the per-token log-probs: `ld_alpha = 1` is plain DPO exactly,
/// `ld_alpha = 0.5` (completions of unequal length) and `use_weighting` train differently, and both run to
/// the end with finite metrics.
#[test]
fn ld_alpha_and_use_weighting_train_through_per_token_log_probs() {
    let uneven: Vec<TokenPair> = synthetic(16, 9)
        .into_iter()
        .map(|mut p| {
            p.chosen.truncate(3);
            p.rejected.extend_from_slice(&[120, 121]);
            p
        })
        .collect();
    let run = |f: &dyn Fn(&mut TrainConfig)| {
        let mut c = TrainConfig { epochs: 1, ..cfg() };
        f(&mut c);
        trained_weights(&train_tiny(c, "llama", 5, uneven.clone()))
    };
    let plain = run(&|_| {});
    assert_close(&run(&|c| c.loss.ld_alpha = Some(1.0)), &plain, 1e-6, "ld_alpha = 1 and plain DPO");
    let differs = |a: &[(String, Vec<f32>)], what: &str| {
        let d = a
            .iter()
            .zip(&plain)
            .flat_map(|((_, x), (_, y))| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
            .fold(0.0f32, f32::max);
        assert!(d > 1e-6 && d.is_finite(), "{what}: weights differ from plain DPO by {d}");
    };
    differs(&run(&|c| c.loss.ld_alpha = Some(0.5)), "ld_alpha = 0.5");
    differs(&run(&|c| c.loss.use_weighting = true), "use_weighting");
}

/// `save_checkpoints = false` (the benchmarks) trains the same and writes no checkpoint.
#[test]
fn a_run_without_checkpoints_writes_none() {
    let out = tempfile::tempdir().unwrap();
    let c = TrainConfig { epochs: 1, save_steps: Some(1), ..cfg() };
    let m = tiny_model("llama", 1, DType::F32).unwrap();
    let mut t = Trainer::new(c, m, synthetic(16, 1), vec![], out.path(), |_, _, _| {}).unwrap();
    t.save_checkpoints = false;
    t.save_final_model = false;
    let mut steps = 0;
    t.run(|_| steps += 1).unwrap();
    assert!(steps > 0);
    assert!(latest_checkpoint(out.path()).is_none(), "a checkpoint was written");
}
