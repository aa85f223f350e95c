//! The JSON API of the labeling page and the dashboard: `next`, `label`, `skip`, `undo` (each needs an
//! annotator token) and the read-only `stats`, with the bodies they take.

use super::annotators::annotator_stats;
use super::progress::{progress, progress_of};
use super::{ApiError, LabelingState};
use anyhow::Result;
use apl::store::{Grant, OpenQuery, Store};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// `GET /api/next`: the next query for this annotator, with the round's progress.
pub(super) async fn api_next(
    State(st): State<Arc<LabelingState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
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
pub(super) async fn api_label(
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
            let grant = Grant { shown: st.is_shown_to(who.id, id), second_opinion: st.wants_second_opinion(id) };
            let result = s.record_annotation(id, &who, preferred, swapped, seconds, grant);
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
pub(super) async fn api_skip(
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
pub(super) async fn api_undo(
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
pub(super) async fn api_stats(State(st): State<Arc<LabelingState>>) -> Result<Json<Value>, ApiError> {
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
        // The win rate as every other reader computes it (over the prompts judged so far).
        let wr = apl::results::win_rate(s, r)?;
        let (win, se, judged) = (wr.map(|w| w.0), wr.map(|w| w.1), wr.map_or(0, |w| w.2));
        let labels = match t {
            Some(t) => t.labels,
            None => progress_rows.iter().filter(|p| p.round <= r).map(|p| p.labelled).sum(),
        };
        let state = match (t, p) {
            (Some(_), _) if judged >= eval_prompts && eval_prompts > 0 => "evaluated",
            (Some(_), _) => "trained",
            (None, Some(p)) if p.pending > 0 => "labelling",
            (None, Some(_)) => "open",
            (None, None) => "not started",
        };
        rounds.push(json!({
            "round": r, "target": targets.get(r - 1), "labels": labels,
            "new_labels": p.map_or(0, |p| p.labelled), "dropped": p.map_or(0, |p| p.dropped),
            "pending": p.map_or(0, |p| p.pending), "state": state,
            "win_rate": win, "win_rate_se": se, "judged": judged, "eval_prompts": eval_prompts,
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

/// Any other `/api/` path: a JSON 404 rather than the page's fallback.
pub(super) async fn api_not_found(req: Request) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no API route {} {}", req.method(), req.uri().path()))
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
