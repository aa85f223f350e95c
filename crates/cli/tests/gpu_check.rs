//! `scripts/gpu-check.sh`, the one command run on a GPU machine, rehearsed end to end on the CPU: a reference
//! written here, the correctness checks against it (and a tampered one that must fail), every benchmark at
//! toy sizes, the summary. The PyTorch anchor is left out (`--no-anchor`): neither CI nor the tests need torch.

use std::path::Path;
use std::process::Command;

fn gpu_check(out: &Path, extra: &[&str]) -> std::process::Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    Command::new("bash")
        .arg(root.join("scripts/gpu-check.sh"))
        .args(["--device", "cpu", "--quick", "--no-anchor", "--bin", env!("CARGO_BIN_EXE_activepref")])
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn the_gpu_check_runs_end_to_end_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let out = gpu_check(dir.path(), &[]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "gpu-check.sh failed:\n{text}");
    let check: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("check-f32.json")).unwrap()).unwrap();
    assert_eq!(check["failed"], 0, "{check}");
    let names: Vec<&str> = check["checks"].as_array().unwrap().iter().map(|c| c["check"].as_str().unwrap()).collect();
    for want in
        ["logits: lse", "every parameter gets a gradient (0 of", "gradient norms", "DPO loss, 5 steps (f32, relative)"]
    {
        assert!(names.iter().any(|n| n.contains(want)), "no check {want:?} in {names:?}");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("gpu-check.json")).unwrap()).unwrap();
    let measures: Vec<&str> =
        summary["rows"].as_array().unwrap().iter().map(|r| r["measure"].as_str().unwrap()).collect();
    assert_eq!(measures, ["DPO, live reference", "DPO, reference cache", "score", "sample"], "{summary}");
    for r in summary["rows"].as_array().unwrap() {
        assert!(r["activepref"].as_f64().unwrap() > 0.0, "{r}");
    }
    assert!(text.contains("ratios"), "{text}");
}

#[test]
fn a_device_that_computes_something_else_fails_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_activepref");
    let reference = dir.path().join("reference.json");
    let ok = Command::new(bin)
        .args(["bench", "check", "--device", "cpu", "--shapes", "tiny", "--grad-shapes", "tiny"])
        .args(["--curve-shape", "tiny", "--steps", "12", "--write"])
        .arg(&reference)
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    // One logit off by 0.01, one gradient norm off by 5%, and a loss curve that never left ln 2 (a device that
    // did not train): each must be caught, by name.
    let mut r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&reference).unwrap()).unwrap();
    let lse = &mut r["logits"]["tiny"]["lse"][17];
    *lse = serde_json::json!(lse.as_f64().unwrap() + 0.01);
    let norm = &mut r["grads"]["tiny"]["model.norm.weight"]["norm"];
    *norm = serde_json::json!(norm.as_f64().unwrap() * 1.05);
    let flat: Vec<f64> = vec![std::f64::consts::LN_2; r["curve"]["losses"].as_array().unwrap().len()];
    r["curve"]["losses"] = serde_json::json!(flat);
    std::fs::write(&reference, r.to_string()).unwrap();
    let bad =
        Command::new(bin).args(["bench", "check", "--device", "cpu", "--against"]).arg(&reference).output().unwrap();
    let text = String::from_utf8_lossy(&bad.stdout);
    assert!(!bad.status.success(), "a tampered reference passed:\n{text}");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("3 of"), "{}", String::from_utf8_lossy(&bad.stderr));
    for line in ["tiny logits: lse", "tiny gradient norms", "tiny DPO loss"] {
        assert!(text.lines().any(|l| l.starts_with(line) && l.ends_with("FAIL")), "{line} not failed:\n{text}");
    }
    // The curve alone (the second, bf16 pass on CUDA): only the curve is checked, and it fails.
    let curve =
        Command::new(bin).args(["bench", "check", "--curve-only", "--against"]).arg(&reference).output().unwrap();
    let err = String::from_utf8_lossy(&curve.stderr);
    assert!(!curve.status.success() && err.contains("1 of 1 checks failed"), "{err}");
}
