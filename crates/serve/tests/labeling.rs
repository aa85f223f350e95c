//! The labeling app over real HTTP on 127.0.0.1, against a real run store: authentication and cross-site
//! refusals write nothing; next / label / skip / tie / undo do what the loop needs (checked in the SQLite rows
//! and through the `Store` API the loop reads); the A/B swap is undone on save; 20 concurrent clients lose
//! and duplicate nothing; malformed bodies get 4xx; agreement (Cohen's kappa, Krippendorff's alpha) on overlapping queries; and a
//! headless Chromium labels five pairs with the keyboard (`tests/browser/label.mjs`).

use apl::store::{Candidate, Store};
use apl::ActiveConfig;
use serde_json::{json, Value};
use serve::labeling::{self, LabelingState, Options};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- fixtures

/// Completion texts of query `i` (1-based, as the store numbers candidates): the test can tell from the
/// text on screen whether the server swapped A and B.
fn completions(i: usize) -> [String; 2] {
    [format!("the first continuation of opening {i}"), format!("the second continuation of opening {i}")]
}

fn candidate(prompt_id: i64, i: usize) -> Candidate {
    Candidate {
        prompt_id,
        prompt: format!("opening {i}"),
        prompt_tokens: vec![1, 2, 3],
        completions: completions(i),
        tokens: [vec![4, 5], vec![6, 7]],
        entropy: None,
        logp: [-3.0, -3.5],
        ref_logp: [-3.1, -3.4],
        score: 0.0,
        selected: true,
    }
}

/// A run store whose config asks for `per_round` labels a round, with `n` queries waiting in round 1.
fn make_run(dir: &Path, n: usize, per_round: usize) {
    let mut store = Store::open(&dir.join("store.sqlite")).unwrap();
    let mut cfg = ActiveConfig::default();
    cfg.rounds.labels_per_round = per_round;
    cfg.rounds.rounds = 3;
    store.check_config(&cfg.to_toml()).unwrap();
    let train: Vec<(String, Vec<u32>)> = (1..=n).map(|i| (format!("opening {i}"), vec![1, 2, 3])).collect();
    let eval: Vec<(String, Vec<u32>)> = (1..=4).map(|i| (format!("held-out {i}"), vec![1, 2])).collect();
    store.insert_prompts(&train, &eval).unwrap();
    let cands: Vec<Candidate> = (1..=n).map(|i| candidate(i as i64, i)).collect();
    store.insert_acquisition(1, 0, "random", n, 0.1, &cands).unwrap();
}

fn add(dir: &Path, name: &str) -> String {
    labeling::add_annotator(dir, name).unwrap().1
}

/// Starts the labeling app on an ephemeral loopback port in a background thread (its own tokio runtime).
fn start(dir: &Path, opts: Options) -> String {
    let state = LabelingState::open(dir, opts).unwrap();
    let app = labeling::router(state);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || serve::serve_blocking(listener, app, false).unwrap());
    url
}

fn sql(dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.join("store.sqlite")).unwrap()
}

fn count(dir: &Path, q: &str) -> i64 {
    sql(dir).query_row(q, [], |r| r.get(0)).unwrap()
}

// ---------------------------------------------------------------- HTTP client

struct Client {
    agent: ureq::Agent,
    url: String,
    token: Option<String>,
}

impl Client {
    /// Keeps connections alive between requests, as a browser does.
    fn new(url: &str, token: Option<&str>) -> Self {
        Self::with_pool(url, token, true)
    }

    /// A new connection per request: for bodies the server refuses before reading them whole (413), after
    /// which it rightly closes the connection.
    fn unpooled(url: &str, token: Option<&str>) -> Self {
        Self::with_pool(url, token, false)
    }

    fn with_pool(url: &str, token: Option<&str>, pool: bool) -> Self {
        let mut cfg =
            ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(30)));
        if !pool {
            cfg = cfg.max_idle_connections(0);
        }
        let agent: ureq::Agent = cfg.build().into();
        Self { agent, url: url.to_string(), token: token.map(str::to_string) }
    }

    fn get(&self, path: &str) -> (u16, String) {
        let mut req = self.agent.get(format!("{}{path}", self.url));
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let mut resp = req.call().unwrap();
        (resp.status().as_u16(), resp.body_mut().read_to_string().unwrap())
    }

    fn get_json(&self, path: &str) -> (u16, Value) {
        let (s, b) = self.get(path);
        (s, serde_json::from_str(&b).unwrap_or_else(|e| panic!("{path}: {e}: {b}")))
    }

    /// POST with full control over the content type and extra headers (for the refusal tests).
    fn post_raw(&self, path: &str, content_type: Option<&str>, headers: &[(&str, &str)], body: &[u8]) -> (u16, Value) {
        let mut req = self.agent.post(format!("{}{path}", self.url));
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        if let Some(ct) = content_type {
            req = req.header("Content-Type", ct);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut resp = req.send(body).unwrap();
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.post_raw(path, Some("application/json"), &[], body.to_string().as_bytes())
    }

    fn next(&self) -> Value {
        let (s, v) = self.get_json("/api/next");
        assert_eq!(s, 200, "{v}");
        v
    }

    fn next_id(&self) -> i64 {
        let v = self.next();
        v["query"]["id"].as_i64().unwrap_or_else(|| panic!("no query: {v}"))
    }

    fn label(&self, id: i64, choice: &str) -> (u16, Value) {
        self.post("/api/label", json!({"query_id": id, "choice": choice}))
    }
}

/// Whether the page showed query `q`'s completion1 as A.
fn shown_swapped(q: &Value) -> bool {
    let i = q["prompt"].as_str().unwrap().trim_start_matches("opening ").parse::<usize>().unwrap();
    let c = completions(i);
    match (q["a"].as_str().unwrap(), q["b"].as_str().unwrap()) {
        (a, b) if a == c[0] && b == c[1] => false,
        (a, b) if a == c[1] && b == c[0] => true,
        other => panic!("texts on screen are not the query's completions: {other:?}"),
    }
}

/// The choice to send so that the store records `preferred` (0, 1; None = tie) for a query shown as `q`.
fn choice_for(q: &Value, preferred: Option<usize>) -> &'static str {
    match preferred {
        None => "tie",
        Some(p) if (p == 1) == shown_swapped(q) => "A",
        Some(_) => "B",
    }
}

fn nothing_written(dir: &Path) {
    assert_eq!(count(dir, "SELECT COUNT(*) FROM labels"), 0);
    assert_eq!(count(dir, "SELECT COUNT(*) FROM annotations"), 0);
    assert_eq!(count(dir, "SELECT COUNT(*) FROM skips"), 0);
}

// ---------------------------------------------------------------- tests

#[test]
fn writes_need_a_valid_token() {
    let dir = tempfile::tempdir().unwrap();
    make_run(dir.path(), 3, 4);
    let _alice = add(dir.path(), "alice");
    let url = start(dir.path(), Options::default());
    let body = json!({"query_id": 1, "choice": "A"});
    for token in [None, Some("0123456789abcdef0123456789abcdef"), Some("")] {
        let c = Client::new(&url, token);
        for (path, b) in [("/api/label", body.clone()), ("/api/skip", json!({"query_id": 1})), ("/api/undo", json!({}))]
        {
            let (s, v) = c.post(path, b);
            assert_eq!(s, 401, "{path} with token {token:?}: {v}");
            assert!(v["error"].as_str().unwrap().contains("token"), "{v}");
        }
        let (s, _) = c.get("/api/next");
        assert_eq!(s, 401, "reads of the labeling API need a token too");
    }
    // A token in another scheme is not a bearer token.
    let c = Client::new(&url, None);
    let (s, _) = c.post_raw("/api/label", Some("application/json"), &[("Authorization", "Basic YWxpY2U6")], b"{}");
    assert_eq!(s, 401);
    nothing_written(dir.path());
}

#[test]
fn cross_site_posts_are_refused_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    make_run(dir.path(), 3, 4);
    let token = add(dir.path(), "alice");
    let url = start(dir.path(), Options::default());
    // Even with a valid token (a cross-site form cannot carry one, but be strict anyway).
    let c = Client::new(&url, Some(&token));
    let form = b"query_id=1&choice=A";
    let evil = [("Origin", "http://evil.example")];
    let form_type = Some("application/x-www-form-urlencoded");
    for (ct, headers, expect) in [
        (form_type, &evil[..], 403),
        (form_type, &[][..], 415),
        (Some("text/plain"), &[][..], 415),
        (Some("multipart/form-data; boundary=x"), &[][..], 415),
        (None, &[][..], 415),
    ] {
        let (s, v) = c.post_raw("/api/label", ct, headers, form);
        assert_eq!(s, expect, "{ct:?} {headers:?}: {v}");
    }
    // JSON from another origin, or a browser saying the request is cross-site.
    let json_body = br#"{"query_id": 1, "choice": "A"}"#;
    for headers in [
        &[("Origin", "http://evil.example")][..],
        &[("Origin", "null")][..],
        &[("Origin", "http://127.0.0.1:1")][..],
        &[("Sec-Fetch-Site", "cross-site")][..],
    ] {
        let (s, v) = c.post_raw("/api/label", Some("application/json"), headers, json_body);
        assert_eq!(s, 403, "{headers:?}: {v}");
    }
    nothing_written(dir.path());
    // The page's own origin is accepted (for the query on this annotator's page).
    assert_eq!(c.next_id(), 1);
    let (s, v) = c.post_raw("/api/label", Some("application/json; charset=utf-8"), &[("Origin", &url)], json_body);
    assert_eq!(s, 200, "{v}");
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM labels"), 1);
}

#[test]
fn next_label_skip_tie_and_undo() {
    let dir = tempfile::tempdir().unwrap();
    make_run(dir.path(), 6, 4);
    let (alice, bob) = (add(dir.path(), "alice"), add(dir.path(), "bob"));
    let url = start(dir.path(), Options::default());
    let a = Client::new(&url, Some(&alice));
    let b = Client::new(&url, Some(&bob));
    let loop_store = Store::open(&dir.path().join("store.sqlite")).unwrap();

    let v = a.next();
    assert_eq!(v["annotator"], "alice");
    assert_eq!(v["progress"]["pending"], 6);
    assert_eq!(v["progress"]["target"], 4);
    assert_eq!(v["query"]["id"], 1, "oldest query first");
    // The same query stays on alice's page until she answers it, and bob gets another one meanwhile.
    assert_eq!(a.next_id(), 1);
    assert_eq!(b.next_id(), 2);

    // A label is what the loop reads: the query leaves pending_queries and enters labels.
    let (s, v) = a.label(1, choice_for(&a.next()["query"], Some(0)));
    assert_eq!(s, 200, "{v}");
    assert_eq!((v["saved"].as_bool(), v["label"].as_bool()), (Some(true), Some(true)));
    assert_eq!(v["progress"]["labelled"], 1);
    let pending: Vec<i64> = loop_store.pending_queries(Some(1)).unwrap().iter().map(|q| q.id).collect();
    assert_eq!(pending, [2, 3, 4, 5, 6]);
    let labels = loop_store.labels(1).unwrap();
    assert_eq!((labels.len(), labels[0].query.id, labels[0].preferred, labels[0].oracle.as_str()), (1, 1, 0, "human"));
    // Nothing is answered twice.
    let (s, v) = a.label(1, "B");
    assert_eq!(s, 409, "{v}");
    let (s, v) = b.label(1, "B");
    assert_eq!(s, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("already labelled"), "{v}");
    let (s, _) = a.label(999, "A");
    assert_eq!(s, 404);
    let (s, v) = a.label(2, "C");
    assert_eq!(s, 400, "{v}");

    // Skip: nothing is labelled, and alice is shown another query (bob holds 2, so 3 is next; she skips it).
    assert_eq!(a.next_id(), 3);
    let (s, v) = a.post("/api/skip", json!({"query_id": 3}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM labels WHERE candidate_id = 3"), 0);
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM skips WHERE candidate_id = 3"), 1);
    assert!(loop_store.pending_queries(Some(1)).unwrap().iter().any(|q| q.id == 3), "a skipped query stays pending");
    assert_eq!(a.next_id(), 4);

    // Tie: a label with no preference (the loop drops and re-acquires it), raw "tie".
    let (s, _) = a.label(4, "tie");
    assert_eq!(s, 200);
    let (pref, raw, who): (Option<i64>, String, String) = sql(dir.path())
        .query_row("SELECT preferred, raw, annotator FROM labels WHERE candidate_id = 4", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!((pref, raw.as_str(), who.as_str()), (None, "tie", "alice"));
    assert_eq!(loop_store.label_counts(1).unwrap(), (1, 1));
    assert_eq!(loop_store.labels(1).unwrap().len(), 1, "a tie is not a training label");

    // Undo the tie: the label goes, the query is pending again and back on alice's page.
    let (s, v) = a.post("/api/undo", json!({}));
    assert_eq!(s, 200, "{v}");
    assert_eq!((v["undone"].as_i64(), v["label_removed"].as_bool()), (Some(4), Some(true)));
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM labels WHERE candidate_id = 4"), 0);
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM annotations WHERE candidate_id = 4"), 0);
    assert_eq!(a.next_id(), 4);
    let (s, _) = a.label(4, "B");
    assert_eq!(s, 200);
    // An empty body is fine for undo too.
    let (s, v) = a.post_raw("/api/undo", Some("application/json"), &[], b"");
    assert_eq!((s, v["undone"].as_i64()), (200, Some(4)), "{v}");
    let (s, v) = a.post("/api/undo", json!({}));
    assert_eq!((s, v["undone"].as_i64()), (200, Some(1)), "{v}");
    let (s, v) = a.post("/api/undo", json!({}));
    assert_eq!(s, 404, "nothing left to undo: {v}");
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM labels"), 0);

    // Label everything but the skipped query; then the skipped one comes back to alice, last.
    for _ in 0..4 {
        let id = a.next_id();
        assert_ne!(id, 3, "skipped queries come after the others");
        let (s, v) = a.label(id, "A");
        assert_eq!(s, 200, "{v}");
    }
    // Bob still holds query 2.
    let v = a.next();
    assert_eq!(v["query"]["id"], 3);
    assert_eq!(v["query"]["skipped_before"], true);

    // The round now holds its target (4 labels): the loop may be training, so undo is refused.
    assert_eq!(loop_store.label_counts(1).unwrap().0, 4);
    let (s, v) = a.post("/api/undo", json!({}));
    assert_eq!(s, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("final"), "{v}");
    // Once the round is trained, its pending queries are no longer asked, and labels there are refused.
    loop_store.mark_trained(1, 4, 4, Some(0.5), 1.0).unwrap();
    let (s, v) = b.label(2, "A");
    assert_eq!(s, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("trained"), "{v}");
    let v = b.next();
    assert!(v["query"].is_null(), "{v}");
    assert_eq!(v["progress"]["state"], "preparing");
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM labels"), 4);

    // Per-annotator statistics.
    let (s, st) = Client::new(&url, None).get_json("/api/stats");
    assert_eq!(s, 200);
    let alice_stats = &st["annotators"][0];
    assert_eq!(alice_stats["name"], "alice");
    assert_eq!((alice_stats["answers"].as_u64(), alice_stats["labels"].as_u64()), (Some(4), Some(4)));
    assert_eq!((alice_stats["ties"].as_u64(), alice_stats["skips"].as_u64()), (Some(0), Some(1)));
    assert!(alice_stats["median_seconds"].as_f64().is_some(), "{alice_stats}");
    assert_eq!(st["annotators"][1]["answers"], 0);
    assert_eq!(st["rounds"][0]["labels"], 4);
    assert_eq!(st["rounds"][0]["state"], "trained");
}

#[test]
fn the_ab_swap_is_undone_on_save() {
    let dir = tempfile::tempdir().unwrap();
    make_run(dir.path(), 40, 40);
    let token = add(dir.path(), "alice");
    let url = start(dir.path(), Options::default());
    let c = Client::new(&url, Some(&token));
    let mut seen = [0, 0];
    for _ in 0..40 {
        let q = c.next()["query"].clone();
        let swapped = shown_swapped(&q);
        seen[swapped as usize] += 1;
        // Always press "A": the store must record the completion that was on the left.
        let (s, v) = c.label(q["id"].as_i64().unwrap(), "A");
        assert_eq!(s, 200, "{v}");
        let (pref, raw): (i64, String) = sql(dir.path())
            .query_row("SELECT preferred, raw FROM labels WHERE candidate_id = ?1", [q["id"].as_i64().unwrap()], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(pref, swapped as i64, "A on a {} query", if swapped { "swapped" } else { "kept" });
        assert!(raw.starts_with("A on screen"), "{raw}");
        let (ann, sw): (String, bool) = sql(dir.path())
            .query_row(
                "SELECT choice, swapped FROM annotations WHERE candidate_id = ?1",
                [q["id"].as_i64().unwrap()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((ann, sw), (pref.to_string(), swapped));
    }
    assert!(seen[0] > 0 && seen[1] > 0, "both orders are shown: {seen:?}");
}

#[test]
fn twenty_clients_label_a_thousand_queries_without_loss_or_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    make_run(dir.path(), 1000, 1000);
    let tokens: Vec<String> = (0..20).map(|i| add(dir.path(), &format!("annotator-{i:02}"))).collect();
    let url = start(dir.path(), Options::default());
    let t0 = Instant::now();
    let handles: Vec<_> = tokens
        .into_iter()
        .enumerate()
        .map(|(k, token)| {
            let url = url.clone();
            std::thread::spawn(move || {
                let c = Client::new(&url, Some(&token));
                let mut saved = Vec::new();
                loop {
                    let v = c.next();
                    let Some(id) = v["query"]["id"].as_i64() else { break };
                    let choice = ["A", "B", "tie"][(id as usize + k) % 3];
                    let (s, r) = c.label(id, choice);
                    assert_eq!(s, 200, "client {k}, query {id}: {r}");
                    saved.push(id);
                }
                saved
            })
        })
        .collect();
    let mut acked: Vec<i64> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let secs = t0.elapsed().as_secs_f64();
    acked.sort();
    let n = acked.len();
    acked.dedup();
    assert_eq!((n, acked.len()), (1000, 1000), "every acknowledged label is for a different query");
    let d = dir.path();
    assert_eq!(count(d, "SELECT COUNT(*) FROM labels"), 1000);
    assert_eq!(count(d, "SELECT COUNT(DISTINCT candidate_id) FROM labels"), 1000);
    assert_eq!(count(d, "SELECT COUNT(*) FROM annotations"), 1000);
    assert_eq!(count(d, "SELECT COUNT(DISTINCT annotator_id) FROM annotations"), 20, "every client got work");
    assert_eq!(
        count(d, "SELECT COUNT(*) FROM labels l JOIN annotations a ON a.candidate_id = l.candidate_id"),
        1000,
        "each label has exactly the answer it came from"
    );
    let loop_store = Store::open(&d.join("store.sqlite")).unwrap();
    assert!(loop_store.pending_queries(Some(1)).unwrap().is_empty());
    eprintln!("1000 labels from 20 clients in {secs:.1} s");
}

#[test]
fn malformed_bodies_get_4xx_and_the_server_keeps_answering() {
    let dir = tempfile::tempdir().unwrap();
    make_run(dir.path(), 3, 4);
    let token = add(dir.path(), "alice");
    let url = start(dir.path(), Options::default());
    let c = Client::unpooled(&url, Some(&token));
    let big = format!(r#"{{"query_id": 1, "choice": "{}"}}"#, "A".repeat(100_000));
    // Wrong for every route (undo takes an empty body or any JSON object, and answers 404 here: nothing to undo).
    let bodies: Vec<&[u8]> = vec![
        b"",
        b"{",
        b"{not json",
        b"[]",
        b"null",
        b"42",
        b"\"A\"",
        b"{}",
        br#"{"query_id": "1", "choice": "A"}"#,
        br#"{"query_id": 1.5, "choice": "A"}"#,
        br#"{"query_id": 99999999999999999999999, "choice": "A"}"#,
        br#"{"query_id": -1, "choice": "A"}"#,
        b"\xff\xfe\x00garbage",
        big.as_bytes(),
    ];
    // Wrong only for /api/label (a skip ignores `choice`).
    let label_bodies: Vec<&[u8]> = vec![
        br#"{"query_id": 1}"#,
        br#"{"query_id": 1, "choice": null}"#,
        br#"{"query_id": 1, "choice": "a"}"#,
        br#"{"query_id": 1, "choice": ["A"]}"#,
        br#"{"query_id": 1, "choice": "A\u0000"}"#,
    ];
    for path in ["/api/label", "/api/skip", "/api/undo"] {
        let extra = if path == "/api/label" { &label_bodies[..] } else { &[][..] };
        for body in bodies.iter().chain(extra) {
            let (s, v) = c.post_raw(path, Some("application/json"), &[], body);
            let shown = String::from_utf8_lossy(&body[..body.len().min(60)]).into_owned();
            assert!((400..500).contains(&s), "{path} {shown:?}: {s} {v}");
            assert!(v["error"].is_string(), "{path} {shown:?}: errors are JSON: {v}");
        }
    }
    let (s, _) = c.get("/api/nope");
    assert_eq!(s, 404);
    let (s, _) = c.get("/api/label");
    assert_eq!(s, 405);
    nothing_written(dir.path());
    // Still serving, and still writing.
    let (s, _) = c.get("/api/stats");
    assert_eq!(s, 200);
    let (s, v) = c.label(c.next_id(), "A");
    assert_eq!(s, 200, "{v}");
}

#[test]
fn overlap_gives_second_opinions_and_cohens_kappa() {
    let dir = tempfile::tempdir().unwrap();
    make_run(dir.path(), 6, 6);
    let (alice, bob) = (add(dir.path(), "alice"), add(dir.path(), "bob"));
    let url = start(dir.path(), Options { overlap: 1.0, ..Options::default() });
    let (a, b) = (Client::new(&url, Some(&alice)), Client::new(&url, Some(&bob)));
    // In the store's order (0 = completion0): alice A A A B B tie, bob A A B B A tie.
    let plan_a = [Some(0), Some(0), Some(0), Some(1), Some(1), None];
    let plan_b = [Some(0), Some(0), Some(1), Some(1), Some(0), None];
    for p in plan_a {
        let q = a.next()["query"].clone();
        assert_eq!(q["second_opinion"], false);
        let (s, v) = a.label(q["id"].as_i64().unwrap(), choice_for(&q, p));
        assert_eq!(s, 200, "{v}");
    }
    // The first answer is the label: the loop does not wait for the second opinion.
    let loop_store = Store::open(&dir.path().join("store.sqlite")).unwrap();
    assert!(loop_store.pending_queries(Some(1)).unwrap().is_empty());
    assert!(a.next()["query"].is_null(), "alice does not get her own queries back");
    for p in plan_b {
        let q = b.next()["query"].clone();
        assert_eq!(q["second_opinion"], true, "{q}");
        let (s, v) = b.label(q["id"].as_i64().unwrap(), choice_for(&q, p));
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["label"], false, "a second opinion does not replace the label");
    }
    assert!(b.next()["query"].is_null());
    let d = dir.path();
    assert_eq!(count(d, "SELECT COUNT(*) FROM annotations"), 12);
    assert_eq!(count(d, "SELECT COUNT(*) FROM labels WHERE annotator = 'alice'"), 6);
    // A third annotator is never asked about a query that has two answers.
    let carol = add(d, "carol");
    let (s, v) = Client::new(&url, Some(&carol)).label(1, "A");
    assert_eq!(s, 409, "{v}");

    // p_o = 4/6, p_e = (3·3 + 2·2 + 1·1) / 36 = 7/18, κ = (2/3 − 7/18) / (1 − 7/18) = 5/11.
    let (_, st) = Client::new(&url, None).get_json("/api/stats");
    let ag = &st["agreement"];
    assert_eq!((ag["pairs"].as_u64(), ag["agreed"].as_u64()), (Some(6), Some(4)), "{ag}");
    assert!((ag["kappa"].as_f64().unwrap() - 5.0 / 11.0).abs() < 1e-9, "{ag}");
    // Krippendorff's alpha over the 12 answers: totals A 6, B 4, tie 2; off-diagonal coincidences 4 (A–B, B–A
    // each counted both ways); α = 1 − 11 · 4 / (12² − 6² − 4² − 2²) = 1 − 44/88 = 0.5.
    assert!((ag["alpha"].as_f64().unwrap() - 0.5).abs() < 1e-9, "{ag}");
    let pairs: Vec<_> = plan_a.into_iter().zip(plan_b).collect();
    assert!((labeling::cohen_kappa(&pairs).kappa.unwrap() - 5.0 / 11.0).abs() < 1e-12);

    // Undoing the answer a label came from hands the label to the second opinion.
    let last_a = count(
        d,
        "SELECT candidate_id FROM annotations a JOIN annotators n ON n.id = a.annotator_id \
                          WHERE n.name = 'alice' ORDER BY a.rowid DESC LIMIT 1",
    );
    let (s, v) = a.post("/api/undo", json!({}));
    assert_eq!(s, 200, "{v}");
    assert_eq!((v["undone"].as_i64(), v["label_now_from"].as_str()), (Some(last_a), Some("bob")));
    let who: String =
        sql(d).query_row("SELECT annotator FROM labels WHERE candidate_id = ?1", [last_a], |r| r.get(0)).unwrap();
    assert_eq!(who, "bob");
}

#[test]
fn pages_and_stats_are_served() {
    let dir = tempfile::tempdir().unwrap();
    make_run(dir.path(), 2, 2);
    let url =
        start(dir.path(), Options { guidelines: Some("Prefer <b>shorter</b> answers.".into()), ..Options::default() });
    let c = Client::new(&url, None);
    let (s, page) = c.get("/");
    assert_eq!(s, 200);
    assert!(page.contains("Prefer &lt;b&gt;shorter&lt;/b&gt; answers."), "guidelines are shown, escaped");
    assert!(page.contains("/static/label.js"));
    assert!(!page.contains("http://") && !page.contains("https://"), "no external assets");
    let (s, dash) = c.get("/dashboard");
    assert_eq!(s, 200);
    assert!(dash.contains("/static/dashboard.js"));
    for f in ["/static/app.css", "/static/label.js", "/static/dashboard.js"] {
        let (s, body) = c.get(f);
        assert_eq!(s, 200, "{f}");
        assert!(!body.is_empty());
    }
    // The dashboard's data needs no token.
    let (s, st) = c.get_json("/api/stats");
    assert_eq!(s, 200);
    assert_eq!(st["progress"]["state"], "labelling");
    assert_eq!(st["progress"]["pending"], 2);
    assert_eq!(st["rounds"].as_array().unwrap().len(), 3);
    // The default guidelines describe the default task.
    let dir2 = tempfile::tempdir().unwrap();
    make_run(dir2.path(), 1, 1);
    let (_, page) = Client::new(&start(dir2.path(), Options::default()), None).get("/");
    assert!(page.contains("Prefer the more positive, well-written continuation"));
}

#[test]
fn an_annotator_can_answer_only_the_query_on_their_page() {
    let dir = tempfile::tempdir().unwrap();
    make_run(dir.path(), 4, 4);
    let (alice, bob) = (add(dir.path(), "alice"), add(dir.path(), "bob"));
    let url = start(dir.path(), Options::default());
    let (a, b) = (Client::new(&url, Some(&alice)), Client::new(&url, Some(&bob)));
    // Query 1 is on alice's page: bob cannot answer it, nor query 3, which nobody was shown.
    assert_eq!(a.next_id(), 1);
    for id in [1, 3] {
        let (s, v) = b.label(id, "A");
        assert_eq!(s, 409, "{v}");
        assert!(v["error"].as_str().unwrap().contains("not on your page"), "{v}");
    }
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM annotations"), 0);
    // Once shown, it is his to answer; alice's stays hers.
    assert_eq!(b.next_id(), 2);
    let (s, v) = b.label(2, "A");
    assert_eq!(s, 200, "{v}");
    let (s, v) = a.label(1, "B");
    assert_eq!(s, 200, "{v}");
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM labels"), 2);
}

#[test]
fn a_rotated_or_removed_token_stops_working_and_the_answers_stay() {
    let dir = tempfile::tempdir().unwrap();
    make_run(dir.path(), 4, 4);
    let (alice, bob) = (add(dir.path(), "alice"), add(dir.path(), "bob"));
    let url = start(dir.path(), Options::default());
    let a = Client::new(&url, Some(&alice));
    let (s, v) = a.label(a.next_id(), "A");
    assert_eq!(s, 200, "{v}");

    // Rotate: the old token is refused at once, the new one works and is still alice.
    let fresh = labeling::rotate_token(dir.path(), "alice").unwrap();
    assert_ne!(fresh, alice);
    assert_eq!(a.get_json("/api/next").0, 401);
    let a2 = Client::new(&url, Some(&fresh));
    assert_eq!(a2.next()["annotator"], "alice");

    // Remove bob: his token is refused; alice's answer (and label) stay; his name is not given out again.
    let b = Client::new(&url, Some(&bob));
    let (s, v) = b.label(b.next_id(), "B");
    assert_eq!(s, 200, "{v}");
    labeling::remove_annotator(dir.path(), "bob").unwrap();
    assert_eq!(b.get_json("/api/next").0, 401);
    let (s, _) = b.label(3, "A");
    assert_eq!(s, 401);
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM labels"), 2);
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM annotations WHERE annotator_id = 2"), 1);
    let e = labeling::add_annotator(dir.path(), "bob").unwrap_err().to_string();
    assert!(e.contains("already exists"), "{e}");
    // Removing or rotating someone who is not there says so, naming them.
    for e in [
        labeling::remove_annotator(dir.path(), "bob").unwrap_err().to_string(),
        labeling::rotate_token(dir.path(), "bob").unwrap_err().to_string(),
        labeling::rotate_token(dir.path(), "carol").unwrap_err().to_string(),
    ] {
        assert!(e.contains("no annotator named"), "{e}");
    }
    // The dashboard still counts bob's answer.
    let (_, st) = Client::new(&url, None).get_json("/api/stats");
    let names: Vec<&str> = st["annotators"].as_array().unwrap().iter().map(|x| x["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["alice", "bob"]);
}

#[test]
fn the_cli_helpers_refuse_a_missing_run_and_duplicate_names() {
    let dir = tempfile::tempdir().unwrap();
    let e = labeling::add_annotator(dir.path(), "alice").unwrap_err().to_string();
    assert!(e.contains("no run store"), "{e}");
    assert!(LabelingState::open(dir.path(), Options::default()).is_err());
    make_run(dir.path(), 1, 1);
    let (a, token) = labeling::add_annotator(dir.path(), "alice").unwrap();
    assert_eq!((a.name.as_str(), token.len()), ("alice", 32));
    let e = labeling::add_annotator(dir.path(), "alice").unwrap_err().to_string();
    assert!(e.contains("already exists"), "{e}");
    // Only the hash is stored.
    let stored: String = sql(dir.path()).query_row("SELECT token_sha256 FROM annotators", [], |r| r.get(0)).unwrap();
    assert_eq!(stored, labeling::hash_token(&token));
    assert!(!stored.contains(&token));
    let e = LabelingState::open(dir.path(), Options { overlap: 1.5, ..Options::default() }).err().unwrap();
    assert!(e.to_string().contains("--overlap"), "{e}");
}

#[test]
fn the_human_loop_trains_on_labels_from_the_web_app() {
    use apl::config::OracleKind;
    use apl::{ActiveLoop, Event, OracleHandle};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let mut c = apl::testing::tiny_config(3);
    c.acquisition.strategy = apl::config::Strategy::Random;
    c.rounds.labels_per_round = 3;
    c.eval.prompts = 4;
    c.eval.oracle = Some(OracleKind::Vader);
    c.train.epochs = 1;
    c.oracle.kind = OracleKind::Human;
    c.oracle.poll_seconds = 0.02;
    let texts = apl::testing::movie_texts(60);

    let mut ev = |_e: Event| {};
    let eval = Some(Box::new(oracle::ScoreOracle(apl::testing::LetterE)) as Box<dyn oracle::Oracle>);
    let model = lm::testing::tiny_model("llama", 1, candle_core::DType::F32).unwrap();
    let human = OracleHandle::Human { poll: Duration::from_millis(20) };
    let mut run = ActiveLoop::open(c, &dir, model, human, eval, &mut ev).unwrap();
    run.ensure_pool(&texts, Path::new("test-texts")).unwrap();

    // A person at the labeling page (the run's store exists now): starts the server and answers what it is
    // shown — a tie first (the loop must drop and re-acquire it), then A and B in turn.
    let stop = Arc::new(AtomicBool::new(false));
    let person = {
        let (dir, stop) = (dir.clone(), stop.clone());
        std::thread::spawn(move || {
            let token = add(&dir, "alice");
            let c = Client::new(&start(&dir, Options::default()), Some(&token));
            let mut answers = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let Some(id) = c.next()["query"]["id"].as_i64() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let choice = if answers.is_empty() { "tie" } else { ["A", "B"][answers.len() % 2] };
                let (s, v) = c.label(id, choice);
                assert_eq!(s, 200, "{v}");
                answers.push((id, choice));
            }
            answers
        })
    };
    let results = run.run().unwrap();
    stop.store(true, Ordering::SeqCst);
    let answers = person.join().unwrap();

    // 6 labels with a preference over two rounds, plus the tie the loop dropped and replaced.
    assert_eq!(answers.len(), 7, "{answers:?}");
    assert_eq!(results.iter().map(|r| (r.round, r.labels, r.dropped)).collect::<Vec<_>>(), [(1, 3, 1), (2, 6, 0)]);
    let store = Store::open(&dir.join("store.sqlite")).unwrap();
    let labels = store.labels(2).unwrap();
    assert_eq!(labels.len(), 6);
    assert!(labels.iter().all(|l| l.oracle == "human"));
    // What the loop trained on is what alice pressed, un-swapped: the pairs' texts in labels.jsonl agree.
    let state = LabelingState::open(&dir, Options::default()).unwrap();
    let alice_id: i64 =
        sql(&dir).query_row("SELECT id FROM annotators WHERE name = 'alice'", [], |r| r.get(0)).unwrap();
    for l in &labels {
        let (_, choice) = answers.iter().find(|(id, _)| *id == l.query.id).unwrap();
        let shown = if *choice == "A" { 0 } else { 1 };
        let expect = if state.swapped(l.query.id, alice_id) { 1 - shown } else { shown };
        assert_eq!(l.preferred, expect, "query {}", l.query.id);
    }
    let jsonl = std::fs::read_to_string(dir.join("labels.jsonl")).unwrap();
    assert_eq!(jsonl.lines().count(), 6);
}

// ---------------------------------------------------------------- browser end to end

const OPENINGS: [&str; 8] = [
    "I went into this film expecting very little, and",
    "The performances in this adaptation are",
    "Although the first half drags a little,",
    "As a long-time fan of the original series, I found",
    "The director clearly knows how to build tension:",
    "The script is the weakest part of the movie;",
    "It is hard to describe how beautiful the photography is;",
    "My friends recommended this one, and honestly",
];

const CONTINUATIONS: [[&str; 2]; 8] = [
    [
        "came out of it grinning. The cast has real chemistry and the final act is a joy.",
        "left before the end. Nothing about it held my attention for more than a minute.",
    ],
    [
        "uneven, with the lead sleepwalking through scenes that needed more energy.",
        "superb across the board, and the two leads carry every scene they share.",
    ],
    [
        "the payoff is worth it and the last twenty minutes are genuinely moving.",
        "the second half is worse, and the ending feels like it was written in a hurry.",
    ],
    [
        "it faithful, warm and funny, with a few clever nods for the long-time viewers.",
        "it a cynical cash-in that misunderstands everything people loved about the show.",
    ],
    [
        "every scene tightens the screw until the finale, which had the whole room gasping.",
        "sadly he forgets to give us any reason to care about the people in danger.",
    ],
    [
        "the dialogue is clunky, but the actors make even the worst lines work.",
        "the dialogue is clunky and the plot holes are big enough to drive a truck through.",
    ],
    [
        "every frame could hang in a gallery, and the score is just as lovely.",
        "shame the story underneath it is so thin that I kept checking my watch.",
    ],
    [
        "it was a total chore. Two hours I will never get back.",
        "they were right: it is the most fun I have had at the cinema this year.",
    ],
];

/// Which completion of each pair in [`CONTINUATIONS`] is the more positive one.
const POSITIVE: [usize; 8] = [0, 1, 0, 0, 0, 0, 0, 1];

/// A run in its third round: two rounds labelled by bob and carol (both answered every query, so there is
/// agreement to show), trained and evaluated; the third round's queries wait for the browser's annotator.
fn make_demo_run(dir: &Path) {
    let mut store = Store::open(&dir.join("store.sqlite")).unwrap();
    let mut cfg = ActiveConfig::default();
    cfg.rounds.labels_per_round = 8;
    cfg.rounds.rounds = 3;
    store.check_config(&cfg.to_toml()).unwrap();
    let train: Vec<(String, Vec<u32>)> = OPENINGS.iter().map(|t| (t.to_string(), vec![1, 2, 3])).collect();
    let eval: Vec<(String, Vec<u32>)> = (0..32).map(|i| (format!("held-out opening {i}"), vec![1, 2])).collect();
    store.insert_prompts(&train, &eval).unwrap();
    let bob = store.add_annotator("bob", &labeling::hash_token("bob-token")).unwrap();
    let carol = store.add_annotator("carol", &labeling::hash_token("carol-token")).unwrap();
    let evals: Vec<(i64, String)> = (0..32).map(|i| (9 + i as i64, format!("sample {i}"))).collect();
    store.insert_eval_samples(0, &evals).unwrap();
    for round in 1..=3usize {
        let cands: Vec<Candidate> = (0..8)
            .map(|i| {
                let k = (i + 3 * round) % 8;
                let flip = (i + round) % 3 == 0;
                let [x, y] = CONTINUATIONS[k];
                Candidate {
                    prompt: OPENINGS[k].to_string(),
                    completions: if flip { [y.to_string(), x.to_string()] } else { [x.to_string(), y.to_string()] },
                    ..candidate(k as i64 + 1, i)
                }
            })
            .collect();
        store.insert_acquisition(round, 0, "hybrid", 8, 2.5, &cands).unwrap();
        if round == 3 {
            break;
        }
        for i in 0..8 {
            let id = ((round - 1) * 8 + i + 1) as i64;
            let k = (i + 3 * round) % 8;
            let positive = POSITIVE[k] ^ usize::from((i + round) % 3 == 0);
            // Both prefer the more positive continuation, except for one tie and one disagreement a round.
            let (first, second) = if i % 2 == 0 { (&bob, &carol) } else { (&carol, &bob) };
            let other = match i {
                3 => None,
                5 => Some(1 - positive),
                _ => Some(positive),
            };
            let secs = |x: usize| Some(3.0 + (x * 7 % 9) as f64);
            let grant = |second_opinion| apl::store::Grant { shown: true, second_opinion };
            store.record_annotation(id, first, Some(positive), i % 2 == 1, secs(i), grant(false)).unwrap();
            store.record_annotation(id, second, other, i % 3 == 1, secs(i + 4), grant(true)).unwrap();
        }
        let (labelled, _) = store.label_counts(round).unwrap();
        store.mark_trained(round, 8 * round, labelled, Some(0.69 - 0.08 * round as f64), 40.0).unwrap();
        let samples: Vec<(i64, String)> =
            (0..32).map(|i| (9 + i as i64, format!("round {round} sample {i}"))).collect();
        store.insert_eval_samples(round, &samples).unwrap();
        let wins = [17, 21][round - 1];
        for i in 0..32 {
            let win = if i < wins {
                1.0
            } else if i == 31 {
                0.5
            } else {
                0.0
            };
            store.record_judgment(round, 9 + i as i64, win, "sentiment", "").unwrap();
        }
    }
}

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

#[test]
fn browser_labels_five_pairs_with_the_keyboard() {
    if std::env::var("ACTIVEPREF_SKIP_BROWSER").is_ok_and(|v| v == "1") {
        eprintln!("skipped: ACTIVEPREF_SKIP_BROWSER=1 (the browser end-to-end test needs node, chromium and npm ci)");
        return;
    }
    let setup = "run `.ci/install-browser` (installs chromium and runs `npm ci` in crates/serve/tests/browser), \
                 or set ACTIVEPREF_SKIP_BROWSER=1 to skip this test";
    let chromium = std::env::var("ACTIVEPREF_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let node_ok = std::process::Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(node_ok, "`node` is not installed: {setup}");
    assert!(Path::new(&chromium).exists(), "no Chromium at {chromium}: {setup}");
    let dir_b = browser_dir();
    assert!(
        dir_b.join("node_modules/playwright-core").is_dir(),
        "{}/node_modules is missing: {setup}",
        dir_b.display()
    );

    let tmp = tempfile::tempdir().unwrap();
    // Named like a real run: the name shows in the page header (and in the screenshots).
    let dir = tmp.path().join("imdb-human");
    make_demo_run(&dir);
    let token = add(&dir, "alice");
    let url = start(&dir, Options { overlap: 0.1, ..Options::default() });
    let mut child = std::process::Command::new("node")
        .arg(dir_b.join("label.mjs"))
        .arg(&url)
        .arg(&token)
        .env("ACTIVEPREF_CHROMIUM", &chromium)
        .current_dir(&dir_b)
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("label.mjs did not finish in 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "label.mjs failed ({status}); its output is above");

    let d = dir.as_path();
    let alice = "(SELECT id FROM annotators WHERE name = 'alice')";
    assert_eq!(count(d, &format!("SELECT COUNT(*) FROM annotations WHERE annotator_id = {alice}")), 5);
    assert_eq!(count(d, "SELECT COUNT(*) FROM labels WHERE annotator = 'alice' AND preferred IS NOT NULL"), 5);
    assert_eq!(
        count(d, "SELECT COUNT(*) FROM labels WHERE annotator = 'alice' AND preferred IS NULL"),
        0,
        "the tie was undone"
    );
    assert_eq!(count(d, &format!("SELECT COUNT(*) FROM skips WHERE annotator_id = {alice}")), 1);
    assert_eq!(
        count(d, "SELECT COUNT(*) FROM labels l JOIN candidates c ON c.id = l.candidate_id WHERE c.round = 3"),
        5
    );
}
