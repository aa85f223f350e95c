//! The `activepref` binary as a user runs it: help texts, generate/score on a tiny saved model, and
//! bad inputs that must end in a clear error (naming the file) with a non-zero exit code, never a panic.

use candle_core::quantized::GgmlDType;
use candle_core::DType;
use lm::testing::tiny_model;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_activepref"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).env("ACTIVEPREF_ASSETS", "/nonexistent-assets").output().unwrap()
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// Runs and expects failure whose stderr contains every `needle`.
fn fails_with(args: &[&str], needles: &[&str]) {
    let o = run(args);
    let (out, err) = text(&o);
    assert!(!o.status.success(), "expected failure for {args:?}, got success: {out}");
    assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: stderr lacks {n:?}:\n{err}");
    }
}

fn tiny_dir(tmp: &Path, kind: &str) -> PathBuf {
    let dir = tmp.join(kind);
    tiny_model(kind, 11, DType::F32).unwrap().save(&dir).unwrap();
    dir
}

fn tiny_gguf(tmp: &Path) -> PathBuf {
    let m = tiny_model("llama", 12, DType::F32).unwrap();
    let vocab = lm::Tokenizer::byte_level_test_vocab(m.config.vocab_size).unwrap();
    let p = tmp.join("tiny.gguf");
    lm::load::write_gguf(&p, &m.config, &m.params, &vocab, GgmlDType::Q8_0).unwrap();
    p
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["assets", "--help"],
        vec!["assets", "fetch", "--help"],
        vec!["generate", "--help"],
        vec!["score", "--help"],
        vec!["tokenize", "--help"],
        vec!["bench", "lm", "--help"],
        vec!["bench", "judge", "--help"],
    ] {
        let o = run(&args);
        assert!(o.status.success(), "{args:?}");
        assert!(text(&o).0.contains("Usage:"), "{args:?}");
    }
}

#[test]
fn bench_judge_prints_each_setting_against_one_at_a_time() {
    let o = run(&["bench", "judge", "--pairs", "6", "--latency-s", "0.02", "--concurrency", "3"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    let rows: Vec<Vec<&str>> = out.lines().skip(2).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert_eq!((rows[0][0], rows[0][3]), ("1", "1.00×"), "the baseline row: {out}");
    assert_eq!(rows[1][0], "3", "{out}");
    let o = run(&["bench", "judge", "--concurrency", "0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("--concurrency \"0\""), "{}", text(&o).1);
}

#[test]
fn generate_is_deterministic_per_seed_and_writes_jsonl() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_dir(tmp.path(), "llama");
    let prompts = tmp.path().join("p.jsonl");
    std::fs::write(
        &prompts,
        "{\"prompt\": \"hello\"}\n\"plain string\"\n{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n",
    )
    .unwrap();
    let go = |seed: &str, bs: &str, out: &str| {
        let out = tmp.path().join(out);
        let o = run(&[
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--prompts",
            prompts.to_str().unwrap(),
            "--max-new-tokens",
            "6",
            "--seed",
            seed,
            "--batch-size",
            bs,
            "--output",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", text(&o).1);
        std::fs::read_to_string(out).unwrap()
    };
    let a = go("5", "3", "a.jsonl");
    assert_eq!(a, go("5", "3", "a2.jsonl"), "same seed gave different output");
    let completions = |s: &str| -> Vec<String> {
        s.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["completion"].to_string()).collect()
    };
    // Another batch size pads differently (log-probs move in the 7th digit) but samples the same text.
    assert_eq!(completions(&a), completions(&go("5", "1", "b.jsonl")), "batch size changed the text");
    assert_ne!(completions(&a), completions(&go("6", "3", "c.jsonl")), "different seeds gave the same text");
    let lines: Vec<serde_json::Value> = a.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[2]["prompt"].as_str().unwrap().contains("<|user|>hi"), "chat template not applied");
}

#[test]
fn score_reports_completion_logprobs() {
    let tmp = tempfile::tempdir().unwrap();
    let g = tiny_gguf(tmp.path());
    let input = tmp.path().join("pairs.jsonl");
    std::fs::write(&input, "{\"prompt\": \"The film\", \"chosen\": \" was great\", \"rejected\": \" was bad\"}\n{\"prompt\": \"A\", \"completion\": \"b\"}\n").unwrap();
    let o = run(&["score", "--model", g.to_str().unwrap(), "--input", input.to_str().unwrap()]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let rows: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["field"], "chosen");
    assert_eq!(rows[1]["field"], "rejected");
    assert_eq!(rows[0]["tokens"], 10); // byte-level: " was great"
    for r in &rows {
        let (s, n, m) =
            (r["logp_sum"].as_f64().unwrap(), r["tokens"].as_f64().unwrap(), r["logp_mean"].as_f64().unwrap());
        assert!(s < 0.0 && (s / n - m).abs() < 1e-9);
    }
}

#[test]
fn bad_model_files_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let good = tiny_gguf(t);
    let bytes = std::fs::read(&good).unwrap();
    let p = |name: &str| t.join(name).to_str().unwrap().to_string();

    // Truncated in the header, and in the tensor data.
    std::fs::write(t.join("trunc-header.gguf"), &bytes[..200]).unwrap();
    fails_with(&["generate", "--model", &p("trunc-header.gguf"), "--prompt", "x"], &["trunc-header.gguf", "GGUF"]);
    std::fs::write(t.join("trunc-data.gguf"), &bytes[..bytes.len() - 1000]).unwrap();
    fails_with(&["generate", "--model", &p("trunc-data.gguf"), "--prompt", "x"], &["trunc-data.gguf", "remaining"]);
    // Not a GGUF at all.
    let mut bad = bytes.clone();
    bad[..4].copy_from_slice(b"JUNK");
    std::fs::write(t.join("magic.gguf"), &bad).unwrap();
    fails_with(&["generate", "--model", &p("magic.gguf"), "--prompt", "x"], &["magic.gguf", "not a readable GGUF"]);

    // An unsupported quantisation (type 16 = IQ2_XXS): a minimal hand-written GGUF.
    let mut g = Vec::new();
    g.extend(0x46554747u32.to_le_bytes());
    g.extend(3u32.to_le_bytes());
    g.extend(1u64.to_le_bytes()); // tensors
    g.extend(1u64.to_le_bytes()); // metadata
    let key = b"general.architecture";
    g.extend((key.len() as u64).to_le_bytes());
    g.extend(key);
    g.extend(8u32.to_le_bytes());
    g.extend(5u64.to_le_bytes());
    g.extend(b"llama");
    let name = b"token_embd.weight";
    g.extend((name.len() as u64).to_le_bytes());
    g.extend(name);
    g.extend(2u32.to_le_bytes());
    g.extend(256u64.to_le_bytes());
    g.extend(4u64.to_le_bytes());
    g.extend(16u32.to_le_bytes());
    g.extend(0u64.to_le_bytes());
    g.resize(g.len() + 4096, 0);
    std::fs::write(t.join("iq2.gguf"), &g).unwrap();
    fails_with(&["generate", "--model", &p("iq2.gguf"), "--prompt", "x"], &["iq2.gguf", "Q4_K"]);

    // Safetensors directory faults.
    let dir = tiny_dir(t, "gpt2");
    let st = dir.join("model.safetensors");
    let full = std::fs::read(&st).unwrap();
    std::fs::write(&st, &full[..full.len() / 2]).unwrap();
    fails_with(
        &["generate", "--model", dir.to_str().unwrap(), "--prompt", "x"],
        &["model.safetensors", "not a valid safetensors"],
    );
    std::fs::write(&st, b"\xff\xff\xff\xff\xff\xff\xff\x7fgarbage").unwrap();
    fails_with(&["generate", "--model", dir.to_str().unwrap(), "--prompt", "x"], &["model.safetensors"]);

    let dir = tiny_dir(t, "llama");
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    fails_with(&["generate", "--model", dir.to_str().unwrap(), "--prompt", "x"], &["tokenizer.json", "missing"]);

    let dir = tiny_dir(t, "qwen2");
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap().replace("\"qwen2\"", "\"mamba\"");
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    fails_with(
        &["generate", "--model", dir.to_str().unwrap(), "--prompt", "x"],
        &["config.json", "\"mamba\"", "expected"],
    );

    // A tensor of the wrong shape names the tensor.
    let dir = tiny_dir(t, "gemma3");
    let cfg = std::fs::read_to_string(dir.join("config.json"))
        .unwrap()
        .replace("\"intermediate_size\": 64", "\"intermediate_size\": 65");
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    fails_with(
        &["generate", "--model", dir.to_str().unwrap(), "--prompt", "x"],
        &["mlp.gate_proj.weight", "expected [65, 32]"],
    );

    fails_with(&["generate", "--model", &p("nope.gguf"), "--prompt", "x"], &["nope.gguf", "no such file"]);
    fails_with(&["generate", "--prompt", "x"], &["activepref assets fetch"]);
}

#[test]
fn bad_prompts_and_inputs_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let dir = tiny_dir(t, "llama");
    let m = dir.to_str().unwrap();
    // The tiny model has 128 positions; a byte-level 200-character prompt is too long.
    let long = "y".repeat(200);
    fails_with(&["generate", "--model", m, "--prompt", &long], &["prompt 0 has 200 tokens", "context of 128"]);
    // A CPU build asked for CUDA says so and how to build one (this test binary is the CPU build).
    if !cfg!(feature = "cuda") {
        fails_with(
            &["generate", "--model", m, "--prompt", "hi", "--device", "cuda"],
            &["built without CUDA", "scripts/build-cuda.sh"],
        );
        fails_with(&["bench", "lm", "--shapes", "tiny", "--device", "cuda"], &["built without CUDA"]);
    }
    fails_with(&["generate", "--model", m, "--prompt", "hi", "--device", "tpu"], &["expected cpu or cuda"]);
    // train.dtype = "bf16" on the CPU is refused before any round's work (no run directory), naming the key.
    std::fs::write(t.join("bf16.toml"), "[train]\ndtype = \"bf16\"\n").unwrap();
    let rd = t.join("bf16-run");
    let (cfg, dir) = (t.join("bf16.toml"), rd.to_str().unwrap().to_string());
    fails_with(
        &["run", "--model", m, "--config", cfg.to_str().unwrap(), "--run-dir", &dir],
        &["train.dtype", "CUDA only"],
    );
    assert!(!rd.exists(), "the refused run wrote {}", rd.display());
    std::fs::write(t.join("bad.jsonl"), "{\"prompt\": \"ok\"}\n{oops\n").unwrap();
    fails_with(
        &["generate", "--model", m, "--prompts", t.join("bad.jsonl").to_str().unwrap()],
        &["bad.jsonl:2", "not valid JSON"],
    );
    std::fs::write(t.join("nonutf8.jsonl"), b"{\"prompt\": \"a\", \"completion\": \"b\"}\n\xff\xfe\n").unwrap();
    fails_with(
        &["score", "--model", m, "--input", t.join("nonutf8.jsonl").to_str().unwrap()],
        &["nonutf8.jsonl:2", "UTF-8"],
    );
    std::fs::write(t.join("missing.jsonl"), "{\"prompt\": \"a\", \"chosen\": \"b\"}\n").unwrap();
    fails_with(
        &["score", "--model", m, "--input", t.join("missing.jsonl").to_str().unwrap()],
        &["missing.jsonl:1", "`rejected`"],
    );
    std::fs::write(t.join("empty.jsonl"), "{\"prompt\": \"a\", \"completion\": \"\"}\n").unwrap();
    fails_with(
        &["score", "--model", m, "--input", t.join("empty.jsonl").to_str().unwrap()],
        &["empty.jsonl:1", "empty"],
    );
}

#[test]
fn tokenize_prints_ids_without_loading_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let g = tiny_gguf(tmp.path());
    // Truncate the tensor data: tokenizing reads only the metadata, so it still works.
    let bytes = std::fs::read(&g).unwrap();
    std::fs::write(&g, &bytes[..bytes.len() - 1000]).unwrap();
    let o = run(&["tokenize", "--model", g.to_str().unwrap(), "Hi!"]);
    assert!(o.status.success(), "{}", text(&o).1);
    assert_eq!(text(&o).0.trim(), "[72,105,33]"); // byte-level test vocabulary: id = byte
}

#[test]
fn dpo_trains_writes_metrics_and_a_loadable_model_then_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let dir = tiny_dir(t, "llama");
    let mut data = String::new();
    for i in 0..12 {
        data.push_str(&format!(
            "{{\"prompt\": \"Review {i}:\", \"chosen\": \" great fun\", \"rejected\": \" dull mess\"}}\n"
        ));
    }
    data.push_str("{\"prompt\": \"dup\", \"chosen\": \" same\", \"rejected\": \" same\"}\n");
    std::fs::write(t.join("d.jsonl"), &data).unwrap();
    std::fs::write(
        t.join("train.toml"),
        "learning_rate = 1e-3\nbatch_size = 4\nepochs = 2\nsave_steps = 2\nlogging_steps = 1\n[loss]\nbeta = 0.2\n",
    )
    .unwrap();
    let out = t.join("run");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "dpo",
            "--model",
            dir.to_str().unwrap(),
            "--data",
            t.join("d.jsonl").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--config",
            t.join("train.toml").to_str().unwrap(),
            "--lora",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let o = bin().args(args(&["--max-steps", "2"])).output().unwrap();
    let (_, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("skipped 1 pairs") && err.contains("line"), "identical pair not reported: {err}");
    assert!(out.join("checkpoint-2/trainer_state.json").exists());
    let o = bin().args(args(&["--resume"])).output().unwrap();
    let (_, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("resumed from") && err.contains("at step 2"), "{err}");
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, vec![1, 2, 3, 4, 5, 6], "6 steps = 2 epochs × 12 pairs / batch 4");
    // The final model generates.
    let o = run(&[
        "generate",
        "--model",
        out.join("final").to_str().unwrap(),
        "--prompt",
        "Review 1:",
        "--max-new-tokens",
        "3",
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
}

#[test]
fn dpo_reads_parquet_preference_files() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let dir = tiny_dir(t, "llama");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dpo/tests/fixtures/explicit.snappy.parquet");
    let out = t.join("run");
    let o = run(&[
        "dpo",
        "--model",
        dir.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--lora",
        "--max-steps",
        "1",
    ]);
    let (_, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("training pairs"), "{err}");
    assert!(out.join("metrics.jsonl").is_file());
}

#[test]
fn dpo_help_and_errors_list_every_loss_type() {
    let o = run(&["dpo", "--help"]);
    let help = text(&o).0;
    assert!(o.status.success());
    for l in dpo::loss::LossType::ALL {
        assert!(help.contains(l.name()), "`dpo --help` does not list {}:\n{help}", l.name());
    }
    let o = run(&["dpo", "--data", "x.jsonl", "--out", "o", "--loss-type", "nosuch"]);
    let err = text(&o).1;
    assert!(!o.status.success());
    assert!(err.contains("unknown loss \"nosuch\"") && err.contains("sigmoid, robust"), "{err}");
}

#[test]
fn dpo_bad_inputs_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let dir = tiny_dir(t, "llama");
    let m = dir.to_str().unwrap();
    let out = t.join("o");
    std::fs::write(t.join("bad.jsonl"), "{\"prompt\": \"a\", \"chosen\": \"b\"}\n").unwrap();
    fails_with(
        &["dpo", "--model", m, "--data", t.join("bad.jsonl").to_str().unwrap(), "--out", out.to_str().unwrap()],
        &["bad.jsonl:1", "`rejected`"],
    );
    std::fs::write(t.join("ok.jsonl"), "{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}\n").unwrap();
    std::fs::write(t.join("c.toml"), "learning_rat = 1.0\n").unwrap();
    fails_with(
        &[
            "dpo",
            "--model",
            m,
            "--data",
            t.join("ok.jsonl").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--config",
            t.join("c.toml").to_str().unwrap(),
        ],
        &["c.toml", "learning_rat"],
    );
    fails_with(
        &[
            "dpo",
            "--model",
            m,
            "--data",
            t.join("ok.jsonl").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--loss-type",
            "sigmoid,bogus",
        ],
        &["bogus"],
    );
}

#[test]
fn serve_refuses_a_public_model_without_a_key_and_an_empty_key() {
    fails_with(&["serve", "--openai", "--public", "--addr", "0.0.0.0:0"], &["--public --openai", "--api-key-env"]);
    std::env::set_var("ACTIVEPREF_TEST_EMPTY_KEY", "");
    fails_with(
        &["serve", "--openai", "--addr", "127.0.0.1:0", "--api-key-env", "ACTIVEPREF_TEST_EMPTY_KEY"],
        &["ACTIVEPREF_TEST_EMPTY_KEY", "empty"],
    );
    // Loading adapters makes the server read directories that clients name: only with a key.
    fails_with(
        &["serve", "--openai", "--allow-lora-loading", "--addr", "127.0.0.1:0"],
        &["--allow-lora-loading", "--api-key-env"],
    );
    fails_with(&["serve", "--run", "x", "--allow-lora-loading"], &["--allow-lora-loading", "--openai"]);
}

/// A PEFT adapter made by PEFT 0.18.1 for `tiny_model("llama", 7)` (crates/lm/tests/fixtures/peft).
fn peft_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../lm/tests/fixtures/peft").join(name)
}

#[test]
fn adapter_is_merged_into_the_model_for_score_and_generate() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    let m = tiny_model("llama", 7, DType::F32).unwrap();
    m.save(&base).unwrap();
    let input = tmp.path().join("pairs.jsonl");
    std::fs::write(&input, "{\"prompt\": \"The film\", \"completion\": \" was great\"}\n").unwrap();
    let adapter = peft_fixture("llama-list");
    let score = |extra: &[&str]| -> f64 {
        let mut args = vec!["score", "--model", base.to_str().unwrap(), "--input", input.to_str().unwrap()];
        args.extend_from_slice(extra);
        let o = run(&args);
        let (out, err) = text(&o);
        assert!(o.status.success(), "{err}");
        serde_json::from_str::<serde_json::Value>(out.lines().next().unwrap()).unwrap()["logp_sum"].as_f64().unwrap()
    };
    let plain = score(&[]);
    let adapted = score(&["--adapter", adapter.to_str().unwrap()]);
    // What the library gives for the adapted model, in process.
    let merged = lm::adapter::apply(&m, &adapter).unwrap();
    let p = merged.tokenizer.encode("The film").unwrap();
    let c = merged.tokenizer.encode_plain(" was great").unwrap();
    let want = lm::score::score_all(&merged, &[(p, c)], 1, |_| {}).unwrap()[0].0;
    assert!((adapted - want).abs() < 1e-4, "{adapted} vs {want}");
    assert!((adapted - plain).abs() > 1e-3, "the adapter did not change the score: {plain} vs {adapted}");
    // generate takes it too, onto a GGUF base as well.
    let g = tiny_gguf(tmp.path());
    let prompts = tmp.path().join("p.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"Hello\"}\n").unwrap();
    let o = run(&[
        "generate",
        "--model",
        g.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--prompts",
        prompts.to_str().unwrap(),
        "--max-new-tokens",
        "4",
    ]);
    let (_, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("with adapter"), "{err}");
}

#[test]
fn bad_adapters_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tiny_dir(tmp.path(), "llama");
    let input = tmp.path().join("pairs.jsonl");
    std::fs::write(&input, "{\"prompt\": \"A\", \"completion\": \"b\"}\n").unwrap();
    let score = |adapter: &Path, needles: &[&str]| {
        fails_with(
            &[
                "score",
                "--model",
                base.to_str().unwrap(),
                "--input",
                input.to_str().unwrap(),
                "--adapter",
                adapter.to_str().unwrap(),
            ],
            needles,
        )
    };
    score(&tmp.path().join("missing"), &["--adapter", "not a directory"]);
    // GPT-2's adapter onto a Llama base.
    score(&peft_fixture("gpt2-all-linear"), &["adapter_model.safetensors", "c_attn", "not a linear layer"]);
    // DoRA, refused by name.
    let dora = tmp.path().join("dora");
    std::fs::create_dir(&dora).unwrap();
    let src = peft_fixture("llama-list");
    std::fs::copy(src.join("adapter_model.safetensors"), dora.join("adapter_model.safetensors")).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap()).unwrap();
    cfg["use_dora"] = true.into();
    std::fs::write(dora.join("adapter_config.json"), cfg.to_string()).unwrap();
    score(&dora, &["adapter_config.json", "use_dora", "DoRA"]);
}
