//! PEFT LoRA adapters in: PEFT's own files (made by `scripts/peft_adapter_fixture.py` with PEFT 0.18.1) merged
//! into the tiny test bases give the logits PEFT computed with them; what PEFT would refuse to mean the same
//! thing is refused by name.

use candle_core::{DType, Tensor};
use lm::adapter::{self, Adapter};
use lm::testing::tiny_model;
use lm::LanguageModel;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The fixture's bases: `tiny_model(kind, SEED)`.
const SEED: u64 = 7;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/peft").join(name)
}

fn base(kind: &str) -> LanguageModel {
    tiny_model(kind, SEED, DType::F64).unwrap()
}

fn logits(m: &LanguageModel, tokens: &[u32]) -> Vec<Vec<f64>> {
    let ids = Tensor::new(tokens, m.device()).unwrap().unsqueeze(0).unwrap();
    m.forward(&ids).unwrap().squeeze(0).unwrap().to_dtype(DType::F64).unwrap().to_vec2().unwrap()
}

/// Writes the bases the fixture script reads (run by hand when the fixture is remade; see the script).
#[test]
#[ignore]
fn write_bases_for_the_peft_fixture() {
    let out = PathBuf::from(std::env::var("PEFT_FIXTURE_BASES").unwrap_or_else(|_| "/tmp/peft-bases".into()));
    for kind in ["llama", "gpt2"] {
        tiny_model(kind, SEED, DType::F32).unwrap().save(&out.join(kind)).unwrap();
    }
}

#[test]
fn peft_adapters_give_pefts_logits() {
    for name in ["llama-list", "llama-regex-rslora-patterns", "gpt2-all-linear"] {
        let dir = fixture(name);
        let want: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
        let m = base(want["base"].as_str().unwrap());
        let tokens: Vec<u32> = want["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
        let before = logits(&m, &tokens);
        let merged = adapter::apply(&m, &dir).unwrap();
        let got = logits(&merged, &tokens);
        let mut worst = 0f64;
        let mut change = 0f64;
        for (t, row) in want["logits"].as_array().unwrap().iter().enumerate() {
            for (v, x) in row.as_array().unwrap().iter().enumerate() {
                worst = worst.max((got[t][v] - x.as_f64().unwrap()).abs());
                change = change.max((got[t][v] - before[t][v]).abs());
            }
        }
        // The base weights were saved as f32 and PEFT ran in f64 from them: only rounding separates the two.
        assert!(worst < 1e-6, "{name}: logits differ from PEFT's by {worst}");
        // The adapter must matter, or the test could not fail.
        assert!(change > 1e-3, "{name}: the adapter changed the logits by only {change}");
    }
}

#[test]
fn per_module_rank_alpha_and_rslora_are_read() {
    let m = base("llama");
    let a = Adapter::read(&fixture("llama-regex-rslora-patterns"), &m).unwrap();
    assert!(a.use_rslora);
    // gate/up/down/k in each of 2 layers.
    assert_eq!(a.num_modules(), 8);
}

/// A copy of a fixture adapter with its config edited by `edit`.
fn edited(name: &str, edit: impl FnOnce(&mut Value)) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for f in [adapter::CONFIG_FILE, adapter::WEIGHTS_FILE] {
        std::fs::copy(fixture(name).join(f), tmp.path().join(f)).unwrap();
    }
    let p = tmp.path().join(adapter::CONFIG_FILE);
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(&p, cfg.to_string()).unwrap();
    tmp
}

fn refusal(dir: &Path, model: &LanguageModel) -> String {
    format!("{:#}", Adapter::read(dir, model).unwrap_err())
}

#[test]
fn what_cannot_be_merged_as_plain_lora_is_refused_by_name() {
    let m = base("llama");
    for (edit, needle) in [
        (Box::new(|c: &mut Value| c["use_dora"] = true.into()) as Box<dyn FnOnce(&mut Value)>, "use_dora"),
        (Box::new(|c: &mut Value| c["modules_to_save"] = serde_json::json!(["lm_head"])), "modules_to_save"),
        (Box::new(|c: &mut Value| c["bias"] = "lora_only".into()), "bias"),
        (Box::new(|c: &mut Value| c["peft_type"] = "IA3".into()), "peft_type"),
        (Box::new(|c: &mut Value| c["r"] = 8.into()), "rank 4 in the weights but 8"),
        (Box::new(|c: &mut Value| c["lora_alpha"] = Value::Null), "lora_alpha"),
    ] {
        let dir = edited("llama-list", edit);
        let msg = refusal(dir.path(), &m);
        assert!(msg.contains(needle), "expected {needle:?} in: {msg}");
        assert!(msg.contains(adapter::CONFIG_FILE) || msg.contains(adapter::WEIGHTS_FILE), "names the file: {msg}");
    }
}

#[test]
fn an_adapter_for_another_base_is_refused() {
    // A GPT-2 adapter onto a Llama base: its modules are not there.
    let msg = refusal(&fixture("gpt2-all-linear"), &base("llama"));
    assert!(msg.contains("c_attn") && msg.contains("not a linear layer"), "{msg}");
    // Same names, other sizes.
    let mut cfg = lm::testing::tiny_config("llama");
    cfg.hidden_size = 16;
    cfg.head_dim = 4;
    let other = LanguageModel::random(
        cfg.clone(),
        lm::Tokenizer::byte_level_for_tests(cfg.vocab_size).unwrap(),
        1,
        DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let msg = refusal(&fixture("llama-list"), &other);
    assert!(msg.contains("another base model"), "{msg}");
    // Not a directory, no config.
    let tmp = tempfile::tempdir().unwrap();
    assert!(refusal(tmp.path(), &other).contains("adapter_config.json: missing"));
    assert!(refusal(&tmp.path().join("nope"), &other).contains("not a directory"));
}
