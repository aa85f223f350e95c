//! [`LabelingState`], what every request of the labeling app shares: the run's store (a small pool of SQLite
//! connections used on the blocking pool), the secret that keys the per-annotator A/B swap and the overlap
//! draw, the leases that keep two annotators off the same query, and who a bearer token belongs to.

use super::annotators::hash_token;
use super::open_run_store;
use super::{ApiError, Options, DEFAULT_GUIDELINES, LABEL_HTML, LEASE};
use anyhow::{bail, Context as _, Result};
use apl::store::{Annotator, OpenQuery, Query, Store};
use apl::ActiveConfig;
use axum::http::{header, HeaderMap};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// Idle SQLite connections kept for reuse.
const POOL_SIZE: usize = 16;

/// A query on an annotator's page.
struct Lease {
    query: i64,
    shown_at: Instant,
    expires: Instant,
}

/// What every request of the labeling app shares.
pub struct LabelingState {
    store_path: PathBuf,
    pub(super) run_name: String,
    pool: Mutex<Vec<Store>>,
    /// Keys the A/B swap and the overlap draw, so neither can be predicted from the query id alone.
    secret: Vec<u8>,
    pub(super) overlap: f64,
    pub(super) label_page: String,
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
        let store = open_run_store(run_dir)?;
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
    pub(super) async fn with_store<T: Send + 'static>(
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

    pub(super) fn targets(&self, store: &Store) -> Vec<usize> {
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
    pub(super) async fn annotator(self: &Arc<Self>, headers: &HeaderMap) -> Result<Annotator, ApiError> {
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
    pub(super) fn pick(
        &self,
        me: i64,
        lists: impl FnOnce() -> Result<Vec<Vec<OpenQuery>>>,
    ) -> Result<Option<(OpenQuery, usize)>> {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        let lists = lists()?;
        let now = Instant::now();
        // Expired leases stay in the map (one per annotator at most): an expired lease no longer keeps a query
        // from the others, but its annotator may still answer it while nobody else has taken it.
        let all = || lists.iter().enumerate().flat_map(|(k, l)| l.iter().map(move |q| (q, k)));
        let taken: HashSet<i64> =
            leases.iter().filter(|(a, l)| **a != me && l.expires > now).map(|(_, l)| l.query).collect();
        if let Some(l) = leases.get_mut(&me) {
            if let Some((q, k)) = all().find(|(q, _)| q.id == l.query && !taken.contains(&q.id)) {
                l.expires = now + LEASE;
                return Ok(Some((q.clone(), k)));
            }
        }
        let Some((q, k)) = all().find(|(q, _)| !taken.contains(&q.id)) else { return Ok(None) };
        leases.insert(me, Lease { query: q.id, shown_at: now, expires: now + LEASE });
        Ok(Some((q.clone(), k)))
    }

    /// Whether `query` is on `me`'s page: their lease (a query or second opinion `pick` handed them), even
    /// if it has expired, as long as no other annotator holds a live lease on it.
    pub(super) fn is_shown_to(&self, me: i64, query: i64) -> bool {
        let now = Instant::now();
        let leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        leases.get(&me).is_some_and(|l| l.query == query)
            && !leases.iter().any(|(a, l)| *a != me && l.query == query && l.expires > now)
    }

    /// Seconds `query` has been on `me`'s page, if it is their open query.
    pub(super) fn shown_for(&self, me: i64, query: i64) -> Option<f64> {
        let leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        leases.get(&me).filter(|l| l.query == query).map(|l| l.shown_at.elapsed().as_secs_f64())
    }

    /// Ends `me`'s lease on `query` (after its answer is committed).
    pub(super) fn release(&self, me: i64, query: i64) {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        if leases.get(&me).is_some_and(|l| l.query == query) {
            leases.remove(&me);
        }
    }

    /// Puts `query` back on `me`'s page (after an undo), so the next `/api/next` shows it again.
    pub(super) fn lease_again(&self, me: i64, query: i64) {
        let now = Instant::now();
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        leases.insert(me, Lease { query, shown_at: now, expires: now + LEASE });
    }

    pub(super) fn open_elsewhere(&self, me: i64) -> usize {
        let now = Instant::now();
        let leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        leases.iter().filter(|(a, l)| **a != me && l.expires > now).count()
    }

    /// The query as `annotator` sees it: A and B in their order.
    pub(super) fn shown(&self, q: &Query, annotator: i64, open: &OpenQuery, second_opinion: bool) -> Value {
        let (a, b) = if self.swapped(q.id, annotator) { (1, 0) } else { (0, 1) };
        json!({
            "id": q.id, "round": q.round, "prompt": q.prompt,
            "a": q.completions[a], "b": q.completions[b],
            "second_opinion": second_opinion, "skipped_before": open.skipped,
        })
    }
}
#[cfg(test)]
mod tests {
    #[test]
    fn escapes_html() {
        assert_eq!(report::escape_html("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }
}
