//! Operations endpoints: liveness, readiness, metrics, events.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::problem::Problem;
use super::{AppState, QueryParams};
use crate::store::EventLog;

/// `GET /healthz`: the process is alive.
pub async fn healthz() -> Response {
    super::json(StatusCode::OK, json!({"status": "ok"}))
}

/// `GET /readyz`: 200 when started, not draining, every node task running, and the database
/// answers.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let failed = state.tasks.failed_tasks();
    if !failed.is_empty() {
        return super::json(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "not_ready", "reason": "a node task failed", "failed_tasks": failed}),
        );
    }
    if !state.is_ready() {
        return super::json(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "not_ready", "reason": "starting or shutting down"}),
        );
    }
    if state.db.ping().await.is_err() {
        return super::json(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "not_ready", "reason": "database unavailable"}),
        );
    }
    super::json(StatusCode::OK, json!({"status": "ready"}))
}

/// `GET /metrics`: Prometheus text exposition.
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    limit: Option<u32>,
    before: Option<i64>,
}

/// `GET /api/events?limit=&before=`: node events, newest first.
pub async fn events(
    State(state): State<AppState>,
    QueryParams(q): QueryParams<EventsQuery>,
) -> Result<Response, Problem> {
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    // Cached under the current event generation: a recorded event changes the key, so a
    // cached page is never older than the last event (the TTL bounds writes that bypass
    // `EventRecorder::record`).
    let key = format!(
        "events:{:x}:{limit}:{}",
        state.events.generation(),
        q.before.map_or_else(String::new, |b| b.to_string())
    );
    if let Some(body) = state.cache.get(&key).await {
        return Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response());
    }
    let events = state
        .db
        .recent(limit, q.before)
        .await
        .map_err(|e| Problem::internal(&e))?;
    let next = if events.len() == limit as usize {
        events.last().map(|e| e.id)
    } else {
        None
    };
    let body = json!({"events": events, "next_before": next}).to_string();
    state
        .cache
        .set(&key, body.as_bytes(), EVENTS_CACHE_TTL)
        .await;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// How long a page of events stays cached at most.
const EVENTS_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(10);
