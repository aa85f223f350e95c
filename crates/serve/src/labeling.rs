//! The human labeling app: a keyboard-first page where people say which of two completions is better, a live
//! dashboard, and the JSON API behind both, over a run's store (`DIR/store.sqlite`).
//!
//! Why it looks like this:
//! - **The store is the only channel to the loop.** A run with `oracle.kind = "human"` polls
//!   `Store::pending_queries` until every query of the round has a row in `labels`; this app writes exactly those
//!   rows, through `Store::record_annotation` (which calls `Store::record_label`). Each request uses its own
//!   SQLite connection from a small pool; WAL mode lets the loop process write at the same time.
//! - **"Saved" means on disk.** A label is committed (`synchronous = FULL`) before the response is sent, and the
//!   page shows "Saved" only after a 2xx, so what a person saw acknowledged survives a crash of either process.
//! - **People are biased towards one side**, so each annotator sees A/B in an order drawn per (query,
//!   annotator) from a keyed hash. The page sends back what it showed ("A", "B", "tie"); the server recomputes
//!   the swap and undoes it. The client is never trusted to un-swap.
//! - **Several annotators at once** must not label the same query twice by accident: `/api/next` gives each
//!   annotator a lease on the query it shows ([`LEASE`]); other annotators get other queries meanwhile.
//! - **Agreement**: a share (`overlap`) of the queries, chosen by a keyed hash of the query id, is also shown to
//!   a second annotator. Rule: the *first* answer becomes the label at once (the loop never waits for a second
//!   opinion); the second goes only to `annotations` and into Cohen's kappa and Krippendorff's alpha. Undoing
//!   the first answer hands the label to the second, if there is one.
//! - **Ties** are labels with no preference (`preferred` NULL, raw "tie"): the loop drops and re-acquires them as
//!   it does a judge's non-answer. **Skips** write no label: the query stays pending, comes back to the person
//!   who skipped it only after everything else, and is counted in their statistics.
//! - **Undo** deletes the annotator's last answer while its round is open: not once the round is trained, and
//!   not (for an answer that is the label) once the round holds its label target, because the loop may already
//!   be training on it (409 with the reason).
//!
//! Security: every API call of the labeling page needs `Authorization: Bearer <token>` (401 otherwise); tokens
//! come from `activepref annotators add` and the store keeps only their SHA-256. A bearer header is not sent
//! by a browser on its own, so another site cannot forge a label; in addition every `POST` must be
//! `Content-Type: application/json` (415) and, when it carries `Origin` or `Sec-Fetch-Site`, come from this
//! server's own origin (403). The dashboard and `GET /api/stats` are read-only and need no token (so the
//! dashboard can sit on a shared screen); they show annotator names and counts, never texts or tokens. The
//! server listens on loopback unless `activepref serve --public` says otherwise.

mod stats;

/// Re-exported so that callers can merge routers (e.g. the OpenAI-compatible one) without naming axum.
pub use axum::Router;
pub use stats::{cohen_kappa, krippendorff_alpha_nominal, median, Agreement};

use anyhow::{bail, Context as _, Result};
use apl::store::{Annotator, OpenQuery, Query, Refusal, RoundProgress, Store};
use apl::{ActiveConfig, RunDir};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Guidelines shown when the server is started without `--guidelines FILE`: the default job's task
/// (movie-review openings continued by the model; the sentiment oracle it replaces prefers the positive one).
pub const DEFAULT_GUIDELINES: &str = "You see the opening of a movie review and two ways the model continued it.

Prefer the more positive, well-written continuation: the one whose tone about the film is more favourable, \
as long as it reads as natural English that follows on from the opening.

Judge only the continuations; both share the same opening.

Press t (tie) when neither is better: equally positive, or both unreadable. A tie is not used for training; \
the loop replaces the pair with a new one.

Press s (skip) when you cannot judge a pair. It stays in the queue for someone else and comes back to you \
only after everything else.";

/// How long a query shown to one annotator is kept from the others. Long enough to read two short
/// completions and think; short enough that an abandoned page does not block a round for long.
pub const LEASE: Duration = Duration::from_secs(180);

/// Largest request body the API reads (its bodies are a few dozen bytes).
const MAX_BODY: usize = 16 * 1024;

/// Idle SQLite connections kept for reuse.
const POOL_SIZE: usize = 16;

const LABEL_HTML: &str = include_str!("../static/label.html");
const DASHBOARD_HTML: &str = include_str!("../static/dashboard.html");
const APP_CSS: &str = include_str!("../static/app.css");
const LABEL_JS: &str = include_str!("../static/label.js");
const DASHBOARD_JS: &str = include_str!("../static/dashboard.js");
const ICON_SVG: &str = include_str!("../static/icon.svg");

/// How the labeling app is run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Share of queries (0–1) also shown to a second annotator, to measure agreement.
    pub overlap: f64,
    /// Text of the guidelines panel (plain text; blank lines separate paragraphs). `None` = [`DEFAULT_GUIDELINES`].
    pub guidelines: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self { overlap: 0.0, guidelines: None }
    }
}

/// A new annotator token: 32 hex characters (128 random bits). Shown once; only [`hash_token`] is stored.
pub fn new_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// SHA-256 (hex) of a token, as the store keeps it.
pub fn hash_token(token: &str) -> String {
    Sha256::digest(token.trim().as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks an annotator name: what the dashboard and `labels.annotator` show.
pub fn validate_name(name: &str) -> Result<()> {
    if name.trim().is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        bail!("annotator name {name:?}: use 1 to 64 printable characters");
    }
    if name.trim() != name {
        bail!("annotator name {name:?}: no leading or trailing spaces");
    }
    Ok(())
}

/// Registers an annotator in the run store at `run_dir` and returns their token (the only time it exists
/// in clear).
pub fn add_annotator(run_dir: &Path, name: &str) -> Result<(Annotator, String)> {
    validate_name(name)?;
    let store = open_existing(run_dir)?;
    let token = new_token();
    let a = store.add_annotator(name, &hash_token(&token))?;
    Ok((a, token))
}

/// Per-annotator statistics, as `/api/stats` and `activepref annotators list` report them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnnotatorStats {
    pub name: String,
    /// Answers given (labels and second opinions, ties included).
    pub answers: usize,
    /// Answers that became the query's label (the first answer about it).
    pub labels: usize,
    pub ties: usize,
    pub skips: usize,
    /// Median seconds from the page showing a pair to the answer.
    pub median_seconds: Option<f64>,
    pub last_answer_at: Option<String>,
    pub created_at: String,
}

/// Statistics of every annotator and the agreement on queries answered twice.
pub fn annotator_stats(store: &Store) -> Result<(Vec<AnnotatorStats>, Agreement)> {
    let annotators = store.annotators()?;
    let answers = store.annotations()?;
    let skips = store.skip_counts()?;
    // Answers come oldest first, so the first answer about a query is the one its label came from.
    let mut by_query: HashMap<i64, Vec<usize>> = HashMap::new();
    for (i, a) in answers.iter().enumerate() {
        by_query.entry(a.candidate_id).or_default().push(i);
    }
    let mut out = Vec::with_capacity(annotators.len());
    for who in &annotators {
        let mine: Vec<usize> = (0..answers.len()).filter(|&i| answers[i].annotator_id == who.id).collect();
        let mut secs: Vec<f64> = mine.iter().filter_map(|&i| answers[i].seconds).collect();
        out.push(AnnotatorStats {
            name: who.name.clone(),
            answers: mine.len(),
            labels: mine.iter().filter(|&&i| by_query[&answers[i].candidate_id][0] == i).count(),
            ties: mine.iter().filter(|&&i| answers[i].preferred.is_none()).count(),
            skips: skips.get(&who.id).copied().unwrap_or(0),
            median_seconds: median(&mut secs),
            last_answer_at: mine.last().map(|&i| answers[i].created_at.clone()),
            created_at: who.created_at.clone(),
        });
    }
    let mut ids: Vec<&i64> = by_query.keys().collect();
    ids.sort();
    let pairs: Vec<(Option<usize>, Option<usize>)> = ids
        .into_iter()
        .filter_map(|id| match by_query[id].as_slice() {
            [a, b, ..] => Some((answers[*a].preferred, answers[*b].preferred)),
            _ => None,
        })
        .collect();
    Ok((out, cohen_kappa(&pairs)))
}

fn open_existing(run_dir: &Path) -> Result<Store> {
    let path = RunDir(run_dir.to_path_buf()).store();
    if !path.is_file() {
        bail!(
            "no run store at {}: start the run first (`activepref run --config CONFIG --run-dir {}` with \
             oracle.kind = \"human\"), or check the directory",
            path.display(),
            run_dir.display()
        );
    }
    Store::open(&path)
}

/// A query on an annotator's page.
struct Lease {
    query: i64,
    shown_at: Instant,
    expires: Instant,
}

/// What every request of the labeling app shares.
pub struct LabelingState {
    store_path: PathBuf,
    run_name: String,
    pool: Mutex<Vec<Store>>,
    /// Keys the A/B swap and the overlap draw, so neither can be predicted from the query id alone.
    secret: Vec<u8>,
    overlap: f64,
    label_page: String,
    /// Cumulative label target of each round, from the run's stored configuration (once it is there).
    targets: OnceLock<Vec<usize>>,
    /// Open query of each annotator (by annotator id).
    leases: Mutex<HashMap<i64, Lease>>,
}

impl LabelingState {
    /// Opens the run at `run_dir`; its store must exist (the run creates it).
    pub fn open(run_dir: &Path, opts: Options) -> Result<Arc<Self>> {
        if !(0.0..=1.0).contains(&opts.overlap) {
            bail!("--overlap {}: give a share between 0 and 1 (e.g. 0.1 = one query in ten)", opts.overlap);
        }
        let store = open_existing(run_dir)?;
        if store.meta("labeling_secret")?.is_none() {
            store.set_meta("labeling_secret", &format!("{:032x}", rand::random::<u128>()))?;
        }
        let secret = store.meta("labeling_secret")?.context("the labeling secret was not stored")?.into_bytes();
        let run_name = run_dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| run_dir.display().to_string());
        let guidelines = opts.guidelines.as_deref().unwrap_or(DEFAULT_GUIDELINES);
        let paragraphs: String = guidelines
            .split("\n\n")
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| format!("<p>{}</p>", report::escape_html(p)))
            .collect();
        let label_page =
            LABEL_HTML.replace("{{RUN}}", &report::escape_html(&run_name)).replace("{{GUIDELINES}}", &paragraphs);
        Ok(Arc::new(Self {
            store_path: store.path().to_path_buf(),
            run_name,
            pool: Mutex::new(vec![store]),
            secret,
            overlap: opts.overlap,
            label_page,
            targets: OnceLock::new(),
            leases: Mutex::new(HashMap::new()),
        }))
    }

    /// Runs `f` with a store connection on tokio's blocking pool (SQLite calls block, and a commit waits for
    /// the disk). A panic inside becomes a 500 for this request only.
    async fn with_store<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Self, &Store) -> Result<T> + Send + 'static,
    ) -> Result<T, ApiError> {
        let st = self.clone();
        let res = tokio::task::spawn_blocking(move || {
            let store = match st.pool.lock().unwrap_or_else(|e| e.into_inner()).pop() {
                Some(s) => s,
                None => Store::open(&st.store_path)?,
            };
            let out = f(&st, &store);
            let mut pool = st.pool.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < POOL_SIZE {
                pool.push(store);
            }
            out
        })
        .await;
        match res {
            Ok(r) => r.map_err(ApiError::from),
            Err(e) => Err(ApiError::internal(format!("the request failed: {e}"))),
        }
    }

    fn keyed(&self, what: &[u8], query: i64, annotator: i64) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(&self.secret);
        h.update(what);
        h.update(query.to_le_bytes());
        h.update(annotator.to_le_bytes());
        h.finalize().into()
    }

    /// Whether `annotator` sees the query's `completion1` on the left (as "A").
    pub fn swapped(&self, query: i64, annotator: i64) -> bool {
        self.keyed(b"swap", query, annotator)[0] & 1 == 1
    }

    /// Whether the query is one of the `overlap` share that a second annotator also answers.
    pub fn wants_second_opinion(&self, query: i64) -> bool {
        let h = self.keyed(b"overlap", query, 0);
        let u = u64::from_le_bytes(h[..8].try_into().expect("8 bytes")) as f64 / 2f64.powi(64);
        u < self.overlap
    }

    fn targets(&self, store: &Store) -> Vec<usize> {
        if let Some(t) = self.targets.get() {
            return t.clone();
        }
        // The loop stores its full configuration when it creates the run; before that there are no targets.
        match store.meta("config").ok().flatten().map(|c| ActiveConfig::from_toml(&c)) {
            Some(Ok(cfg)) => self.targets.get_or_init(|| cfg.rounds.targets()).clone(),
            _ => vec![],
        }
    }

    /// The annotator a request's bearer token belongs to.
    async fn annotator(self: &Arc<Self>, headers: &HeaderMap) -> Result<Annotator, ApiError> {
        let value = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::trim);
        let token = value.and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
        let Some(token) = token.filter(|t| !t.is_empty() && t.len() <= 256) else {
            return Err(ApiError::unauthorized(
                "no annotator token: send `Authorization: Bearer <token>` with the token that \
                 `activepref annotators add NAME --run DIR` printed",
            ));
        };
        let hash = hash_token(token);
        match self.with_store(move |_, s| s.annotator_by_token(&hash)).await? {
            Some(a) => Ok(a),
            None => Err(ApiError::unauthorized("unknown annotator token (check it, or ask for a new one)")),
        }
    }

    /// Chooses the query to show `me`: the one already on their page if it is still theirs to answer, else
    /// the first query of `lists` that no other annotator has open. `lists` runs under the lease lock, so a
    /// query is always either leased or committed as answered when another request looks (an answer's lease
    /// ends only after its commit): two annotators are never handed the same query.
    fn pick(&self, me: i64, lists: impl FnOnce() -> Result<Vec<Vec<OpenQuery>>>) -> Result<Option<(OpenQuery, usize)>> {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        let lists = lists()?;
        let now = Instant::now();
        leases.retain(|_, l| l.expires > now);
        let all = || lists.iter().enumerate().flat_map(|(k, l)| l.iter().map(move |q| (q, k)));
        if let Some(l) = leases.get_mut(&me) {
            if let Some((q, k)) = all().find(|(q, _)| q.id == l.query) {
                l.expires = now + LEASE;
                return Ok(Some((q.clone(), k)));
            }
        }
        let taken: HashSet<i64> = leases.iter().filter(|(a, _)| **a != me).map(|(_, l)| l.query).collect();
        let Some((q, k)) = all().find(|(q, _)| !taken.contains(&q.id)) else { return Ok(None) };
        leases.insert(me, Lease { query: q.id, shown_at: now, expires: now + LEASE });
        Ok(Some((q.clone(), k)))
    }

    /// Seconds `query` has been on `me`'s page, if it is their open query.
    fn shown_for(&self, me: i64, query: i64) -> Option<f64> {
        let leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        leases.get(&me).filter(|l| l.query == query).map(|l| l.shown_at.elapsed().as_secs_f64())
    }

    /// Ends `me`'s lease on `query` (after its answer is committed).
    fn release(&self, me: i64, query: i64) {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        if leases.get(&me).is_some_and(|l| l.query == query) {
            leases.remove(&me);
        }
    }

    /// Puts `query` back on `me`'s page (after an undo), so the next `/api/next` shows it again.
    fn lease_again(&self, me: i64, query: i64) {
        let now = Instant::now();
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        leases.insert(me, Lease { query, shown_at: now, expires: now + LEASE });
    }

    fn open_elsewhere(&self, me: i64) -> usize {
        let now = Instant::now();
        let leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        leases.iter().filter(|(a, l)| **a != me && l.expires > now).count()
    }

    /// The query as `annotator` sees it: A and B in their order.
    fn shown(&self, q: &Query, annotator: i64, open: &OpenQuery, second_opinion: bool) -> Value {
        let (a, b) = if self.swapped(q.id, annotator) { (1, 0) } else { (0, 1) };
        json!({
            "id": q.id, "round": q.round, "prompt": q.prompt,
            "a": q.completions[a], "b": q.completions[b],
            "second_opinion": second_opinion, "skipped_before": open.skipped,
        })
    }
}

/// Where the run stands, for the progress bar and the dashboard's header.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    /// The round being labelled (or prepared).
    pub round: usize,
    pub rounds: Option<usize>,
    /// Its cumulative label target.
    pub target: Option<usize>,
    /// Labels with a preference, all rounds up to this one (what the target counts).
    pub labelled: usize,
    /// Ties and non-answers of this round (dropped and re-acquired by the loop).
    pub dropped: usize,
    /// Queries of this round waiting for a label.
    pub pending: usize,
    /// `labelling`, `training` (the round has its labels), `preparing` (the loop is acquiring or evaluating),
    /// `finished`, or `waiting` (no round has started).
    pub state: &'static str,
    pub message: String,
}

fn progress(rounds: &[RoundProgress], trained: usize, targets: &[usize]) -> Progress {
    let cumulative = |r: usize| rounds.iter().filter(|p| p.round <= r).map(|p| p.labelled).sum::<usize>();
    let n = (!targets.is_empty()).then_some(targets.len());
    let open = rounds.iter().find(|p| !p.trained);
    let (round, state) = match open {
        Some(p) if p.pending > 0 => (p.round, "labelling"),
        Some(p) if targets.get(p.round - 1).is_some_and(|&t| cumulative(p.round) >= t) => (p.round, "training"),
        Some(p) => (p.round, "preparing"),
        None if n.is_some_and(|n| trained >= n) => (trained, "finished"),
        None if trained == 0 && rounds.is_empty() => (1, "waiting"),
        None => (trained + 1, "preparing"),
    };
    let p = rounds.iter().find(|p| p.round == round);
    let target = targets.get(round.max(1) - 1).copied();
    let labelled = cumulative(round);
    let of = |x: usize| match target {
        Some(t) => format!("{x} of {t}"),
        None => x.to_string(),
    };
    let message = match state {
        "labelling" => {
            format!("Round {round}: {} labels, {} pair(s) waiting.", of(labelled), p.map_or(0, |p| p.pending))
        }
        "training" => format!("Round {round} has all its labels; the loop is training on them."),
        "finished" => format!("The run is finished: {round} round(s) labelled and trained. Thank you!"),
        "waiting" => "The run has not asked for labels yet; pairs appear here as soon as it does.".into(),
        _ => format!(
            "The loop is preparing round {round} (training, evaluating or choosing new pairs); \
             new pairs appear here automatically."
        ),
    };
    Progress {
        round,
        rounds: n,
        target,
        labelled,
        dropped: p.map_or(0, |p| p.dropped),
        pending: p.map_or(0, |p| p.pending),
        state,
        message,
    }
}

fn progress_of(st: &LabelingState, store: &Store) -> Result<Progress> {
    Ok(progress(&store.round_progress()?, store.rounds()?.len(), &st.targets(store)))
}

/// An error answered as `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }
    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }
    fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        match e.downcast_ref::<Refusal>() {
            Some(Refusal::NotFound(m)) => Self::new(StatusCode::NOT_FOUND, m.clone()),
            Some(Refusal::Conflict(m)) => Self::new(StatusCode::CONFLICT, m.clone()),
            None => {
                eprintln!("labeling: internal error: {e:#}");
                Self::internal(format!("internal error: {e:#}"))
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(json!({"error": self.message}))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

fn parse_body<T: for<'de> Deserialize<'de>>(
    body: Result<Bytes, BytesRejection>,
    expected: &str,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| ApiError::new(e.status(), format!("could not read the request body: {e}")))?;
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!("the body is not the JSON this route takes ({e}); expected {expected}"))
    })
}

#[derive(Deserialize)]
struct LabelBody {
    query_id: i64,
    choice: String,
}

#[derive(Deserialize)]
struct SkipBody {
    query_id: i64,
}

/// The labeling app: pages, static files and the JSON API. Merge other routers into it (e.g. the
/// OpenAI-compatible one); its middleware applies only to its own routes.
pub fn router(state: Arc<LabelingState>) -> Router {
    let api = Router::new()
        .route("/api/next", get(api_next))
        .route("/api/label", post(api_label))
        .route("/api/skip", post(api_skip))
        .route("/api/undo", post(api_undo))
        .route("/api/stats", get(api_stats))
        .route("/api/{*rest}", get(api_not_found).post(api_not_found))
        .layer(middleware::from_fn(same_origin_json))
        .layer(DefaultBodyLimit::max(MAX_BODY));
    Router::new()
        .route("/", get(label_page))
        .route("/dashboard", get(|| async { Html(DASHBOARD_HTML) }))
        .route("/static/app.css", get(|| async { static_file("text/css; charset=utf-8", APP_CSS) }))
        .route("/static/label.js", get(|| async { static_file("text/javascript; charset=utf-8", LABEL_JS) }))
        .route("/static/dashboard.js", get(|| async { static_file("text/javascript; charset=utf-8", DASHBOARD_JS) }))
        .route("/static/icon.svg", get(|| async { static_file("image/svg+xml", ICON_SVG) }))
        .route("/favicon.ico", get(|| async { static_file("image/svg+xml", ICON_SVG) }))
        .merge(api)
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
}

fn static_file(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn label_page(State(st): State<Arc<LabelingState>>) -> Html<String> {
    Html(st.label_page.clone())
}

async fn api_not_found(req: Request) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no API route {} {}", req.method(), req.uri().path()))
}

/// No external assets, no inline scripts, no framing; API answers are never cached (they change with
/// every label).
async fn security_headers(req: Request, next: Next) -> Response {
    let api = req.uri().path().starts_with("/api/");
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
             frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if api {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// Refuses writes that did not come from this server's own page: a form another site submits (no JSON
/// content type), or any request whose `Origin` / `Sec-Fetch-Site` says another origin sent it.
async fn same_origin_json(req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return next.run(req).await;
    }
    match cross_site_refusal(req.headers(), req.uri()) {
        None => next.run(req).await,
        Some(refusal) => {
            // Read (and drop) the small body first: a response to a half-read request makes the server close
            // the connection, which the page's next request would then find dead. An oversized body still
            // closes it.
            let _ = axum::body::to_bytes(req.into_body(), MAX_BODY).await;
            refusal.into_response()
        }
    }
}

fn cross_site_refusal(h: &HeaderMap, uri: &axum::http::Uri) -> Option<ApiError> {
    let host = h.get(header::HOST).and_then(|v| v.to_str().ok()).or_else(|| uri.authority().map(|a| a.as_str()));
    if let Some(origin) = h.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let authority = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
        if !matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h)) {
            return Some(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("cross-origin request refused: Origin {origin:?} is not this server ({})", host.unwrap_or("?")),
            ));
        }
    }
    if let Some(site) = h.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if !matches!(site, "same-origin" | "none") {
            return Some(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("cross-origin request refused (Sec-Fetch-Site: {site})"),
            ));
        }
    }
    let json = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    (!json).then(|| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the body as JSON with `Content-Type: application/json` (form posts are refused, so that other \
             sites cannot submit labels)",
        )
    })
}

/// `GET /api/next`: the next query for this annotator, with the round's progress.
async fn api_next(State(st): State<Arc<LabelingState>>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let who = st.annotator(&headers).await?;
    let me = who.id;
    let (query, progress, message) = st
        .with_store(move |st, s| {
            // Second opinions first: they are few (the overlap share), and answering them while the first
            // answer is fresh keeps the agreement measured on the same rounds the loop is labelling.
            let picked = st.pick(me, || {
                let second: Vec<OpenQuery> = if st.overlap > 0.0 {
                    s.second_opinion_queries(me)?.into_iter().filter(|q| st.wants_second_opinion(q.id)).collect()
                } else {
                    vec![]
                };
                Ok(vec![second, s.open_queries(me)?])
            })?;
            let query = match picked {
                Some((o, list)) => s.query(o.id)?.map(|q| st.shown(&q, me, &o, list == 0)),
                None => None,
            };
            let progress = progress_of(st, s)?;
            let message = match (&query, progress.state) {
                (Some(_), _) => String::new(),
                (None, "labelling") => match st.open_elsewhere(me) {
                    0 => "Nothing for you right now; new pairs appear here automatically.".to_string(),
                    n => format!(
                        "The remaining pairs are open on {n} other annotator page(s); any left unanswered come \
                         back here."
                    ),
                },
                (None, _) => progress.message.clone(),
            };
            Ok((query, progress, message))
        })
        .await?;
    Ok(Json(json!({"annotator": who.name, "query": query, "progress": progress, "message": message})))
}

/// `POST /api/label {"query_id", "choice": "A" | "B" | "tie"}` — the choice as shown on the page.
async fn api_label(
    State(st): State<Arc<LabelingState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let who = st.annotator(&headers).await?;
    let b: LabelBody = parse_body(body, r#"{"query_id": 12, "choice": "A" | "B" | "tie"}"#)?;
    let shown = match b.choice.as_str() {
        "A" => Some(0),
        "B" => Some(1),
        "tie" => None,
        other => return Err(ApiError::bad_request(format!("choice {other:?}: expected \"A\", \"B\" or \"tie\""))),
    };
    let swapped = st.swapped(b.query_id, who.id);
    let preferred = shown.map(|p| if swapped { 1 - p } else { p });
    let id = b.query_id;
    let (outcome, progress) = st
        .with_store(move |st, s| {
            let seconds = st.shown_for(who.id, id);
            let result = s.record_annotation(id, &who, preferred, swapped, seconds, st.wants_second_opinion(id));
            // Saved, or refused because someone else answered: either way this query is done on the page. The
            // lease ends only now, after the commit (see `pick`).
            st.release(who.id, id);
            Ok((result?, progress_of(st, s)?))
        })
        .await?;
    Ok(Json(json!({
        "saved": true, "query_id": id, "choice": b.choice, "round": outcome.round,
        "label": outcome.wrote_label, "progress": progress,
    })))
}

/// `POST /api/skip {"query_id"}`: nothing is labelled; the query stays pending for the others.
async fn api_skip(
    State(st): State<Arc<LabelingState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let who = st.annotator(&headers).await?;
    let b: SkipBody = parse_body(body, r#"{"query_id": 12}"#)?;
    let me = who.id;
    st.with_store(move |st, s| {
        s.record_skip(b.query_id, me)?;
        st.release(me, b.query_id);
        Ok(())
    })
    .await?;
    Ok(Json(json!({"skipped": b.query_id})))
}

/// `POST /api/undo`: deletes this annotator's last answer while its round is open (409 with the reason
/// otherwise); the query is shown to them again by the next `/api/next`.
async fn api_undo(
    State(st): State<Arc<LabelingState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let who = st.annotator(&headers).await?;
    let body = body.map_err(|e| ApiError::new(e.status(), format!("could not read the request body: {e}")))?;
    if !body.iter().all(u8::is_ascii_whitespace) {
        let _: serde_json::Map<String, Value> = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("the body must be empty or a JSON object ({e})")))?;
    }
    let me = who.id;
    let u = st
        .with_store(move |st, s| {
            let u = s.undo_last_annotation(me, &st.targets(s))?;
            st.lease_again(me, u.candidate_id);
            Ok(u)
        })
        .await?;
    Ok(Json(json!({
        "undone": u.candidate_id, "round": u.round, "label_removed": u.label_removed,
        "label_now_from": u.label_now_from,
    })))
}

/// `GET /api/stats`: rounds, win rates, per-annotator statistics and agreement. Read-only, no token needed.
async fn api_stats(State(st): State<Arc<LabelingState>>) -> Result<Json<Value>, ApiError> {
    let v = st.with_store(stats_json).await?;
    Ok(Json(v))
}

fn stats_json(st: &LabelingState, s: &Store) -> Result<Value> {
    let targets = st.targets(s);
    let progress_rows = s.round_progress()?;
    let trained = s.rounds()?;
    let eval_prompts = s.prompts("eval")?.len();
    let last =
        targets.len().max(progress_rows.last().map_or(0, |p| p.round)).max(trained.last().map_or(0, |t| t.round));
    let mut rounds = Vec::new();
    for r in 1..=last {
        let p = progress_rows.iter().find(|p| p.round == r);
        let t = trained.iter().find(|t| t.round == r);
        let judged: Vec<f64> = s.judgments(r)?.iter().map(|j| j.win).collect();
        let (win, se) = if judged.is_empty() {
            (None, None)
        } else {
            let (m, se) = apl::eval::mean_binomial_se(&judged);
            (Some(m), Some(se))
        };
        let labels = match t {
            Some(t) => t.labels,
            None => progress_rows.iter().filter(|p| p.round <= r).map(|p| p.labelled).sum(),
        };
        let state = match (t, p) {
            (Some(_), _) if judged.len() >= eval_prompts && eval_prompts > 0 => "evaluated",
            (Some(_), _) => "trained",
            (None, Some(p)) if p.pending > 0 => "labelling",
            (None, Some(_)) => "open",
            (None, None) => "not started",
        };
        rounds.push(json!({
            "round": r, "target": targets.get(r - 1), "labels": labels,
            "new_labels": p.map_or(0, |p| p.labelled), "dropped": p.map_or(0, |p| p.dropped),
            "pending": p.map_or(0, |p| p.pending), "state": state,
            "win_rate": win, "win_rate_se": se, "judged": judged.len(), "eval_prompts": eval_prompts,
            "train_loss": t.and_then(|t| t.train_loss),
        }));
    }
    let (annotators, agreement) = annotator_stats(s)?;
    Ok(json!({
        "run": st.run_name,
        "progress": progress(&progress_rows, trained.len(), &targets),
        "rounds": rounds,
        "annotators": annotators,
        "agreement": agreement,
        "overlap": st.overlap,
        "now": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0),
    }))
}

/// Serves `app` on `listener` until the process ends or, with `stop_on_ctrl_c`, until Ctrl-C (requests in
/// flight finish first, so no acknowledged label is cut off). Builds its own tokio runtime.
pub fn serve_blocking(listener: std::net::TcpListener, app: Router, stop_on_ctrl_c: bool) -> Result<()> {
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let serve = axum::serve(listener, app);
        if stop_on_ctrl_c {
            serve
                .with_graceful_shutdown(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await
        } else {
            serve.await
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_32_hex_and_hashes_are_sha256() {
        let t = new_token();
        assert_eq!(t.len(), 32);
        assert!(t.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(t, new_token());
        // echo -n abc | sha256sum
        assert_eq!(hash_token("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("alice").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name(" bob").is_err());
        assert!(validate_name("a\nb").is_err());
    }

    #[test]
    fn progress_states() {
        let rp = |round, labelled, pending, trained| RoundProgress {
            round,
            selected: labelled + pending,
            labelled,
            dropped: 0,
            pending,
            trained,
        };
        let p = progress(&[], 0, &[4, 8]);
        assert_eq!((p.round, p.state), (1, "waiting"));
        let p = progress(&[rp(1, 1, 3, false)], 0, &[4, 8]);
        assert_eq!((p.round, p.state, p.labelled, p.pending, p.target), (1, "labelling", 1, 3, Some(4)));
        let p = progress(&[rp(1, 4, 0, false)], 0, &[4, 8]);
        assert_eq!(p.state, "training");
        let p = progress(&[rp(1, 4, 0, true)], 1, &[4, 8]);
        assert_eq!((p.round, p.state), (2, "preparing"));
        let p = progress(&[rp(1, 4, 0, true), rp(2, 2, 2, false)], 1, &[4, 8]);
        assert_eq!((p.round, p.state, p.labelled), (2, "labelling", 6));
        let p = progress(&[rp(1, 4, 0, true), rp(2, 4, 0, true)], 2, &[4, 8]);
        assert_eq!(p.state, "finished");
    }

    #[test]
    fn escapes_html() {
        assert_eq!(report::escape_html("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }
}
