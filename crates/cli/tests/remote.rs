//! `activepref run` with `[policy] backend = "openai"` against `activepref serve --openai` in another process:
//! the same labels and win rates as the local backend, and the same again after kill -9 at random moments and
//! a rerun of the same command (each round's adapter reloaded under its name on a server that already has it).

mod common;

use candle_core::DType;
use common::{bin, spawn_openai_server, tiny_loop_config};
use lm::testing::tiny_model;
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

const KEY: &str = "remote-run-key";

fn run_to_end(cfg: &Path, dir: &Path) {
    let o = bin()
        .args(["run", "--config"])
        .arg(cfg)
        .arg("--run-dir")
        .arg(dir)
        .env("ACTIVEPREF_TEST_SERVE_KEY", KEY)
        .output()
        .unwrap();
    assert!(o.status.success(), "run failed:\n{}", String::from_utf8_lossy(&o.stderr));
}

fn outcome(dir: &Path) -> (String, String) {
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    // Win rates, without the timings.
    let wins: Vec<String> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["win_rate"].to_string())
        .collect();
    (std::fs::read_to_string(dir.join("labels.jsonl")).unwrap(), wins.join(","))
}

#[test]
fn a_remote_run_matches_the_local_one_and_survives_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    tiny_model("llama", 1, DType::F32).unwrap().save(&model).unwrap();
    let (mut server, url) = spawn_openai_server(&model, "tiny", KEY);
    let local_cfg =
        tiny_loop_config(tmp.path(), "local", &model, 2, &common::judge_oracle(&common::judge_server().0, 3));
    let remote_cfg = tmp.path().join("remote.toml");
    let policy = format!(
        "\n[policy]\nbackend = \"openai\"\nbase_url = \"{url}\"\nmodel = \"tiny\"\n\
         api_key_env = \"ACTIVEPREF_TEST_SERVE_KEY\"\nretries = 2\nbackoff_s = 0.05\n"
    );
    std::fs::write(&remote_cfg, std::fs::read_to_string(&local_cfg).unwrap() + &policy).unwrap();

    run_to_end(&local_cfg, &tmp.path().join("local"));
    let t0 = Instant::now();
    run_to_end(&remote_cfg, &tmp.path().join("whole"));
    let full = t0.elapsed().as_secs_f64();
    let want = outcome(&tmp.path().join("local"));
    assert_eq!(outcome(&tmp.path().join("whole")), want, "the remote backend changed the labels or win rates");

    let dir = tmp.path().join("killed");
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut kills = 0;
    for _ in 0..8 {
        let mut child = bin()
            .args(["run", "--config"])
            .arg(&remote_cfg)
            .arg("--run-dir")
            .arg(&dir)
            .env("ACTIVEPREF_TEST_SERVE_KEY", KEY)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let at = Instant::now() + Duration::from_secs_f64(rng.random_range(0.05..0.6) * full);
        let done = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if Instant::now() >= at {
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        match done {
            Some(s) => {
                assert!(s.success());
                break;
            }
            None => {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                kills += 1;
            }
        }
    }
    run_to_end(&remote_cfg, &dir);
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(kills >= 2, "only {kills} kills");
    assert_eq!(outcome(&dir), want, "killed and resumed, the remote run ended elsewhere");
    assert!(dir.join("round-1/adapter/adapter_model.safetensors").exists());
}
