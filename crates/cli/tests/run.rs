//! `activepref run` as a user runs it, with a real LLM-judge HTTP server on localhost: a whole run, and
//! the same run killed with SIGKILL at random moments (sampling, asking the judge, training, evaluating)
//! and restarted with the same command until it finishes — it must end with exactly the labels and
//! outcomes of the uninterrupted run, with no label lost and none asked twice.

use candle_core::DType;
use lm::testing::tiny_model;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::{bin, judge_server, tiny_loop_config};

/// Questions the judge client keeps in flight in these runs.
const JUDGE_CONCURRENCY: usize = 3;

fn setup(tmp: &Path, judge_url: &str) -> PathBuf {
    let model = tmp.join("model");
    tiny_model("llama", 1, DType::F32).unwrap().save(&model).unwrap();
    let oracle = common::judge_oracle(judge_url, JUDGE_CONCURRENCY);
    tiny_loop_config(tmp, "tiny", &model, 2, &oracle)
}

fn run_to_end(cfg: &Path, dir: &Path) -> String {
    let o = bin().args(["run", "--config"]).arg(cfg).arg("--run-dir").arg(dir).output().unwrap();
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "run failed:\n{out}\n{err}");
    format!("{out}{err}")
}

/// Labels (TRL JSONL) and evaluation outcomes (metrics) of a finished run.
fn outcome(dir: &Path) -> (String, Vec<Option<f64>>) {
    let labels = std::fs::read_to_string(dir.join("labels.jsonl")).unwrap();
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let wins =
        metrics.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["win_rate"].as_f64()).collect();
    (labels, wins)
}

#[test]
fn run_writes_a_run_directory_and_a_second_call_resumes_to_the_same_end() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, _) = judge_server();
    let cfg = setup(tmp.path(), &url);
    let dir = tmp.path().join("run");
    let log = run_to_end(&cfg, &dir);
    assert!(log.contains("round 2/2") && log.contains("Report:"), "{log}");
    for f in ["store.sqlite", "labels.jsonl", "metrics.jsonl", "report.html", "config.toml", "judge-cache.jsonl"] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    let (labels, wins) = outcome(&dir);
    assert_eq!(labels.lines().count(), 8);
    assert_eq!(wins.len(), 2);
    assert!(wins.iter().all(|w| w.is_some()));
    // A finished run called again does nothing new and says where its outputs are.
    let again = run_to_end(&cfg, &dir);
    assert!(!again.contains("acquiring"), "{again}");
    assert_eq!(outcome(&dir), (labels, wins));
}

/// The stages of a round, as `activepref run` announces them on stderr ("==> round 1/2: training …").
const STAGES: [&str; 4] = ["acquiring", "asking", "training", "evaluating"];

/// The stage the run was in when its stderr was last written.
fn current_stage(stderr: &str) -> Option<&'static str> {
    let line = stderr.lines().rev().find(|l| l.starts_with("==> "))?;
    STAGES.into_iter().find(|k| line.contains(k))
}

#[test]
fn kill_9_at_random_moments_then_resume_ends_with_the_same_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, seen) = judge_server();
    let cfg = setup(tmp.path(), &url);

    let whole = tmp.path().join("whole");
    let t0 = Instant::now();
    run_to_end(&cfg, &whole);
    let full = t0.elapsed();
    let want = outcome(&whole);
    let asked_whole: usize = seen.lock().unwrap().values().sum();
    seen.lock().unwrap().clear();

    // Each attempt waits for one stage (in turn: acquiring, asking, training, evaluating) to begin, then
    // kills at a random moment shortly after. Keying the kills to the run's own progress rather than to the
    // wall clock keeps the test meaningful when the machine is busy (cargo runs tests in parallel, and the
    // uninterrupted run above may have been timed under load).
    let dir = tmp.path().join("killed");
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut kills = 0;
    let mut stages_hit = std::collections::BTreeSet::new();
    let max_delay = (full.as_secs_f64() / 30.0).clamp(0.005, 0.2);
    for attempt in 0..60 {
        let target = STAGES[attempt % STAGES.len()];
        let log = tmp.path().join("stderr.txt");
        let mut child = bin()
            .args(["run", "--config"])
            .arg(&cfg)
            .arg("--run-dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut kill_at = None;
        let finished = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            match kill_at {
                Some(t) if Instant::now() >= t => break None,
                Some(_) => {}
                None => {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    if current_stage(&text) == Some(target) {
                        kill_at = Some(Instant::now() + Duration::from_secs_f64(rng.random_range(0.0..max_delay)));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        if let Some(s) = finished {
            assert!(s.success(), "{}", std::fs::read_to_string(&log).unwrap());
            break;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        if let Some(stage) = current_stage(&std::fs::read_to_string(&log).unwrap()) {
            stages_hit.insert(stage);
        }
    }
    // Whatever state the last kill left, the same command finishes the run.
    run_to_end(&cfg, &dir);
    eprintln!("uninterrupted run {:.2} s; {kills} kills, landing in {stages_hit:?}", full.as_secs_f64());
    assert!(kills >= 4, "only {kills} kills");
    assert!(stages_hit.len() >= 3, "kills landed only in {stages_hit:?}");
    assert_eq!(outcome(&dir), want, "the killed-and-resumed run ended with other labels or win rates");
    // Nothing was asked twice, except questions in flight at a kill (the judge keeps JUDGE_CONCURRENCY at once)
    // whose answers never reached the cache.
    let seen = seen.lock().unwrap();
    let repeats: usize = seen.values().map(|&n| n - 1).sum();
    let in_flight = kills * JUDGE_CONCURRENCY;
    assert!(repeats <= in_flight, "{repeats} repeated questions for {kills} kills");
    let asked: usize = seen.values().sum();
    assert!(asked <= asked_whole + in_flight, "asked {asked}, uninterrupted run asked {asked_whole}");
}

#[test]
fn a_spent_judge_budget_stops_the_run_and_a_larger_one_resumes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, seen) = judge_server();
    let cfg = setup(tmp.path(), &url);
    let whole = tmp.path().join("whole");
    run_to_end(&cfg, &whole);
    let want = outcome(&whole);
    seen.lock().unwrap().clear();

    // A budget far below what the run needs: it stops, exit 1, saying what to do.
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("timeout_s = 5\n", "timeout_s = 5\nmax_calls = 5\n")).unwrap();
    let dir = tmp.path().join("budget");
    let o = bin().args(["run", "--config"]).arg(&cfg).arg("--run-dir").arg(&dir).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("judge budget of 5 calls spent") && err.contains("rerun the same command"), "{err}");
    assert_eq!(seen.lock().unwrap().values().sum::<usize>(), 5, "the budget was overrun");

    // The same run with a larger budget goes on (the budget is not part of what makes a run the same run)
    // and ends where the uninterrupted run ended, asking no question twice.
    std::fs::write(&cfg, text.replace("timeout_s = 5\n", "timeout_s = 5\nmax_calls = 1000\n")).unwrap();
    run_to_end(&cfg, &dir);
    assert_eq!(outcome(&dir), want);
    let seen = seen.lock().unwrap();
    assert!(seen.values().all(|&n| n == 1), "a question was asked twice");
    // Another seed is another run: refused, naming the key.
    std::fs::write(&cfg, text.replace("seed = 3", "seed = 4")).unwrap();
    let o = bin().args(["run", "--config"]).arg(&cfg).arg("--run-dir").arg(&dir).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("another configuration") && err.contains("seed = 4"), "{err}");
}

#[test]
fn an_unreachable_judge_stops_with_a_clear_message_and_the_run_resumes_later() {
    let tmp = tempfile::tempdir().unwrap();
    // A port with nothing listening.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dead = format!("http://127.0.0.1:{port}/v1");
    let cfg = setup(tmp.path(), &dead);
    let dir = tmp.path().join("run");
    let o = bin().args(["run", "--config"]).arg(&cfg).arg("--run-dir").arg(&dir).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(&dead) && err.contains("resume"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // The acquisition made before the failure is kept.
    assert!(dir.join("store.sqlite").exists());
    // Point the config at a live judge (same config otherwise) — a changed config is refused, so bring the
    // judge up on the same port instead and rerun the same command.
    let l = TcpListener::bind(("127.0.0.1", port));
    if let Ok(l) = l {
        let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let _ = common::serve_judge(s, &seen);
                });
            }
        });
        let log = run_to_end(&cfg, &dir);
        assert!(log.contains("Report:"), "{log}");
    }
}

#[test]
fn run_help_and_print_config() {
    let o = bin().args(["run", "--help"]).output().unwrap();
    let h = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && h.contains("--config") && h.contains("--run-dir") && h.contains("resume"), "{h}");
    let o = bin().args(["run", "--print-config"]).output().unwrap();
    let t = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(t.contains("strategy = \"hybrid\"") && t.contains("[oracle.judge]"), "{t}");
    // Bad config: the file and key are named, nothing is created.
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "[acquisition]\nstrategy = \"bald\"\n").unwrap();
    let o = bin().args(["run", "--config"]).arg(&bad).arg("--run-dir").arg(tmp.path().join("r")).output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(e.contains("bad.toml") && e.contains("bald"), "{e}");
    assert!(!tmp.path().join("r").exists());
    // An empty prompt file is refused before any work.
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let model = tmp.path().join("model");
    tiny_model("llama", 1, DType::F32).unwrap().save(&model).unwrap();
    let c = tmp.path().join("c.toml");
    std::fs::write(
        &c,
        format!(
            "model = \"{}\"\n[prompts]\nsource = \"{}\"\n[oracle]\nkind = \"vader\"\n",
            model.display(),
            empty.display()
        ),
    )
    .unwrap();
    let o = bin().args(["run", "--config"]).arg(&c).arg("--run-dir").arg(tmp.path().join("r2")).output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("empty.txt") && e.contains("0 usable prompts"), "{e}");
}

/// Cells of a markdown table line `| a | b |`, trimmed.
fn cells(line: &str) -> Vec<String> {
    line.trim().trim_matches('|').split('|').map(|c| c.trim().to_string()).collect()
}

#[test]
fn experiment_prints_the_table_and_writes_the_plot() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, seen) = judge_server();
    let cfg = setup(tmp.path(), &url);
    let out = tmp.path().join("exp");
    let experiment = || {
        let t0 = Instant::now();
        let o = bin()
            .args(["experiment", "--config"])
            .arg(&cfg)
            .args(["--strategies", "random,certainty", "--seeds", "2", "--out"])
            .arg(&out)
            .output()
            .unwrap();
        let (so, se) = (String::from_utf8_lossy(&o.stdout).to_string(), String::from_utf8_lossy(&o.stderr).to_string());
        assert!(o.status.success(), "experiment failed:\n{so}\n{se}");
        (so, se, t0.elapsed())
    };
    let (stdout, _, first) = experiment();
    eprintln!("{stdout}");
    let asked: usize = seen.lock().unwrap().values().sum();

    // The markdown table: header `strategy / labels | 4 | 8`, an alignment line, one row per strategy with a
    // win rate (mean [95% bootstrap interval over seeds × prompts], in percent) in each column; then the
    // difference to random and the label savings.
    let lines: Vec<&str> = stdout
        .lines()
        .take_while(|l| !l.starts_with("Difference"))
        .filter(|l| l.trim_start().starts_with('|'))
        .collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(
        stdout.contains("Difference to random") && stdout.contains("Labels to reach random's final win rate"),
        "{stdout}"
    );
    assert_eq!(cells(lines[0]), ["strategy / labels", "4", "8"], "{stdout}");
    assert!(cells(lines[1]).iter().all(|c| c.chars().all(|ch| ch == '-' || ch == ':') && c.contains('-')), "{stdout}");
    for (line, name) in lines[2..].iter().zip(["random", "certainty"]) {
        let c = cells(line);
        assert_eq!(c[0], name, "{stdout}");
        for v in &c[1..] {
            let (mean, iv) = v.trim_matches('*').split_once('[').unwrap_or_else(|| panic!("cell {v:?}\n{stdout}"));
            let (lo, hi) = iv.trim_end_matches(']').split_once(',').unwrap();
            let [mean, lo, hi]: [f64; 3] = [mean, lo, hi].map(|x| x.trim().parse().unwrap());
            assert!((0.0..=100.0).contains(&mean) && lo <= mean && mean <= hi, "cell {v:?}");
        }
    }
    let table = std::fs::read_to_string(out.join("table.md")).unwrap();
    assert!(stdout.contains(table.trim_end()), "table.md differs from the printed table:\n{table}\n{stdout}");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let cells_json = results["cells"].as_array().unwrap();
    assert_eq!(cells_json.len(), 4, "{results}");
    assert!(cells_json.iter().all(|c| c["win_rates"].as_array().unwrap().len() == 2), "{results}");
    let stats = &results["stats"];
    assert_eq!(stats["seeds"], 2, "{results}");
    assert_eq!(stats["cells"].as_array().unwrap().len(), 4, "{results}");
    assert!(stats["cells"].as_array().unwrap().iter().any(|c| c["diff"]["paired"] == true), "{results}");
    assert_eq!(stats["savings"].as_array().unwrap().len(), 2, "{results}");
    let html = std::fs::read_to_string(out.join("experiment.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("random") && html.contains("certainty"));
    for run in ["random-seed0", "random-seed1", "certainty-seed0", "certainty-seed1"] {
        let d = out.join(run);
        for f in ["store.sqlite", "labels.jsonl", "metrics.jsonl", "report.html"] {
            assert!(d.join(f).exists(), "{run}/{f} missing");
        }
        assert_eq!(std::fs::read_to_string(d.join("labels.jsonl")).unwrap().lines().count(), 8, "{run}");
    }

    // Again: every run is complete, so nothing is sampled, asked or trained, and the table is the same.
    let (again, log, second) = experiment();
    eprintln!("experiment {:.1} s, rerun {:.1} s", first.as_secs_f64(), second.as_secs_f64());
    assert_eq!(again, stdout);
    assert!(!log.contains("acquiring") && !log.contains("training"), "{log}");
    assert_eq!(seen.lock().unwrap().values().sum::<usize>(), asked, "the rerun asked the judge");
    assert!(second < first / 3, "rerun took {second:?}, the experiment {first:?}");
}

#[test]
fn experiment_with_an_unknown_strategy_fails_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = setup(tmp.path(), "http://127.0.0.1:9/v1");
    let out = tmp.path().join("exp");
    let o = bin()
        .args(["experiment", "--config"])
        .arg(&cfg)
        .args(["--strategies", "random,bald", "--seeds", "1", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("bald") && !e.contains("panicked"), "{e}");
    assert!(!out.exists(), "a refused experiment created {}", out.display());
}

/// Starts `activepref serve` with `args` on a free port; returns the child and the base URL once it answers.
fn start_server(args: &[&str], extra: &[&std::ffi::OsStr]) -> (std::process::Child, String) {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let mut child =
        bin().arg("serve").args(args).args(extra).args(["--addr", &addr]).stderr(Stdio::null()).spawn().unwrap();
    let url = format!("http://{addr}");
    let mut up = false;
    for _ in 0..400 {
        if TcpStream::connect(&addr).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    if !up {
        child.kill().unwrap();
        child.wait().unwrap();
        panic!("activepref serve did not start on {addr}");
    }
    (child, url)
}

#[test]
fn serve_offers_a_runs_checkpoint_over_the_openai_api_and_the_runs_guidelines() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, _) = judge_server();
    let cfg = setup(tmp.path(), &url);
    // The run's own guidelines for the labeling page.
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "[oracle]\nkind = \"judge\"",
        "[oracle]\nkind = \"judge\"\nguidelines = \"Prefer the continuation with more letters e.\"",
    );
    std::fs::write(&cfg, text).unwrap();
    let dir = tmp.path().join("run");
    run_to_end(&cfg, &dir);
    let model = tmp.path().join("model");
    let (mut child, base) = start_server(
        &["--openai", "--round", "2"],
        &["--run".as_ref(), dir.as_os_str(), "--model".as_ref(), model.as_os_str()],
    );
    let get = |path: &str| -> (u16, String) {
        let mut r = ureq::get(format!("{base}{path}")).config().http_status_as_error(false).build().call().unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    };
    let (status, models) = get("/v1/models");
    let page = get("/").1;
    let body = serde_json::json!({"model": "run-round2", "prompt": "review 1: the film", "max_tokens": 5, "seed": 1});
    let mut r = ureq::post(format!("{base}/v1/completions"))
        .config()
        .http_status_as_error(false)
        .build()
        .send_json(&body)
        .unwrap();
    let code = r.status().as_u16();
    let answer: serde_json::Value = r.body_mut().read_json().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(status, 200, "{models}");
    assert!(models.contains("\"run-round2\""), "{models}");
    assert_eq!(code, 200, "{answer}");
    assert!(answer["choices"][0]["text"].is_string(), "{answer}");
    assert!(page.contains("more letters e"), "the run's guidelines are not on the labeling page");
}
