//! `activepref serve --openai` driven by the official `openai` Python package (tests/python/openai_client.py),
//! in a venv this test makes on first use (`target/tmp/openai-venv`, `pip install openai==3.57.0`: the
//! network is needed once). The numbers the client gets equal the library's within 1e-4.

mod common;

use candle_core::DType;
use common::{bin, spawn_openai_server};
use lm::testing::tiny_model;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const OPENAI_VERSION: &str = "3.57.0";

/// A venv with the pinned `openai` package, made once per target directory.
fn venv_python() -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("openai-venv");
    let python = venv.join("bin/python");
    let has = |p: &Path| {
        Command::new(p)
            .args(["-c", &format!("import openai, sys; sys.exit(openai.__version__ != {OPENAI_VERSION:?})")])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has(&python) {
        let ok = Command::new("python3").args(["-m", "venv"]).arg(&venv).status().is_ok_and(|s| s.success());
        assert!(ok, "python3 -m venv {} failed (Debian: apt install python3-venv)", venv.display());
        let ok = Command::new(venv.join("bin/pip"))
            .args(["install", "-q", &format!("openai=={OPENAI_VERSION}")])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok && has(&python), "pip install openai=={OPENAI_VERSION} into {} failed", venv.display());
    }
    python
}

fn close(a: &Value, b: f32) -> bool {
    a.as_f64().is_some_and(|a| (a as f32 - b).abs() < 1e-4)
}

#[test]
fn the_official_openai_client_gets_the_librarys_numbers() {
    let python = venv_python();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny");
    tiny_model("llama", 7, DType::F32).unwrap().save(&dir).unwrap();
    let adapter = Path::new(env!("CARGO_MANIFEST_DIR")).join("../lm/tests/fixtures/peft/llama-list");
    let (mut server, url) = spawn_openai_server(&dir, "tiny", "client-test-key");
    let ids: Vec<u32> = vec![72, 101, 108, 108, 111, 44, 32, 119];
    let o = Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/openai_client.py"))
        .args([&url, "client-test-key", "tiny", &adapter.display().to_string(), &serde_json::to_string(&ids).unwrap()])
        .output()
        .unwrap();
    server.kill().unwrap();
    server.wait().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "the client script failed:\n{stderr}");
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));

    // What the library computes for the same tokens, in process.
    let model = lm::LanguageModel::load(&dir, &candle_core::Device::Cpu, DType::F32).unwrap();
    let per_token = |m: &lm::LanguageModel| -> Vec<f32> {
        let s = lm::score::completion_logprobs(m, &[(ids[..1].to_vec(), ids[1..].to_vec())]).unwrap();
        s.tokens.to_vec2::<f32>().unwrap().remove(0)
    };
    let want = per_token(&model);
    let echo = v["echo"]["token_logprobs"].as_array().unwrap();
    assert!(echo[0].is_null());
    assert!(echo[1..].iter().zip(&want).all(|(g, w)| close(g, *w)), "{echo:?} vs {want:?}");
    let tokens: Vec<String> = ids.iter().map(|t| format!("token_id:{t}")).collect();
    assert_eq!(v["echo"]["tokens"], serde_json::json!(tokens));
    assert_eq!(v["models"], serde_json::json!(["tiny"]));

    // Sampled log-probs: the sampled token and the 2 most likely at each position.
    for ch in v["sample"].as_array().unwrap() {
        let n = ch["token_ids"].as_array().unwrap().len();
        assert!(n >= 1 && ch["token_logprobs"].as_array().unwrap().len() == n, "{ch}");
        assert!(ch["top"].as_array().unwrap().iter().all(|m| (2..=3).contains(&m.as_object().unwrap().len())));
    }
    let content = v["chat"]["content"].as_array().unwrap();
    assert!(!content.is_empty() && content.iter().all(|t| t["top"].as_array().unwrap().len() == 2));
    assert_eq!(v["chat"]["text"], v["chat_streamed"], "streamed chat text equals the plain answer");

    // The adapter, loaded through the client, is served under its name with its own numbers.
    assert_eq!(v["load"], "Success: LoRA adapter 'adapted' added successfully.");
    assert_eq!(v["models_after_load"], serde_json::json!(["tiny", "adapted"]));
    let adapted = per_token(&lm::adapter::apply(&model, &adapter).unwrap());
    let got = v["adapter_echo"].as_array().unwrap();
    assert!(got[1..].iter().zip(&adapted).all(|(g, w)| close(g, *w)), "{got:?} vs {adapted:?}");

    let e = &v["errors"];
    assert_eq!(e["unknown_model"], serde_json::json!(["NotFoundError", 404]));
    assert_eq!(e["too_many_logprobs"], serde_json::json!(["BadRequestError", 400]));
    assert_eq!(e["wrong_key"], serde_json::json!(["AuthenticationError", 401]));
    assert_eq!(e["load_twice"], serde_json::json!(["BadRequestError", 400]));
    // The binary is the one under test.
    assert!(bin().arg("--version").output().unwrap().status.success());
}
