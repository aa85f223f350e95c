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
//!   annotator a lease on the query it shows ([`LEASE`]); other annotators get other queries meanwhile. An
//!   answer is taken only for the query on the annotator's own page (their lease, or the second opinion they
//!   were handed; 409 otherwise), so nobody labels by id a query shown to someone else or to no one. A lease
//!   past its time still lets its holder answer until another annotator is handed the query.
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

mod annotators;
mod api;
mod error;
mod progress;
mod security;
mod state;
mod stats;

pub use annotators::{
    add_annotator, annotator_stats, hash_token, new_token, remove_annotator, rotate_token, validate_name,
    AnnotatorStats,
};
pub use error::ApiError;
pub use progress::Progress;
pub use state::LabelingState;
pub use stats::{cohen_kappa, krippendorff_alpha_nominal, median, Agreement};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::header;
use axum::middleware;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;
use std::time::Duration;

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

const LABEL_HTML: &str = include_str!("../../static/label.html");
const DASHBOARD_HTML: &str = include_str!("../../static/dashboard.html");
const APP_CSS: &str = include_str!("../../static/app.css");
const LABEL_JS: &str = include_str!("../../static/label.js");
const DASHBOARD_JS: &str = include_str!("../../static/dashboard.js");
const ICON_SVG: &str = include_str!("../../static/icon.svg");

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

/// The labeling app: pages, static files and the JSON API. Merge other routers into it (e.g. the
/// OpenAI-compatible one); its middleware applies only to its own routes.
pub fn router(state: Arc<LabelingState>) -> Router {
    use api::{api_label, api_next, api_not_found, api_skip, api_stats, api_undo};
    use security::{same_origin_json, security_headers};
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

/// The store of the run at `run_dir`, which must exist (the run creates it).
pub fn open_run_store(run_dir: &std::path::Path) -> anyhow::Result<apl::store::Store> {
    let path = apl::RunDir::new(run_dir).store();
    if !path.is_file() {
        anyhow::bail!(
            "no run store at {}: start the run first (`activepref run --config CONFIG --run-dir {}` with \
             oracle.kind = \"human\"), or check the directory",
            path.display(),
            run_dir.display()
        );
    }
    apl::store::Store::open(&path)
}
