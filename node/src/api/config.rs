//! kConfigD: `/api/config/...`.

use axum::Extension;
use axum::extract::State;

use crate::auth::Principal;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kos_config::diff::diff_json;
use kos_config::{SnapshotId, StoreError};
use serde::Deserialize;
use serde_json::{Value, json};

use super::problem::Problem;
use super::{AppState, JsonBody, QueryParams, TextBody, blocking};
use crate::runtime::Change;

fn etag(id: &SnapshotId) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{id}\"")).unwrap_or_else(|_| HeaderValue::from_static("\"\""))
}

fn effective(l: &kos_config::Loaded) -> Value {
    serde_json::from_str(&l.canonical).unwrap_or(Value::Null)
}

/// `GET /api/config/profile`: the active profile.
pub async fn profile(State(state): State<AppState>) -> Response {
    let l = state.config.current();
    let mut resp = super::json(
        StatusCode::OK,
        json!({
            "profile_id": l.profile_id,
            "profile": l.config.profile,
            "snapshot_id": l.snapshot_id,
            "document": l.document,
            "effective": effective(&l),
            "warnings": l.warnings,
        }),
    );
    resp.headers_mut()
        .insert(header::ETAG, etag(&l.snapshot_id));
    resp
}

/// `PUT /api/config/validate`: validates a document as the new active profile.
pub async fn validate(
    State(state): State<AppState>,
    TextBody(doc): TextBody,
) -> Result<Response, Problem> {
    let cur = state.config.current();
    let dir = state.config.dir().clone();
    let opts = state.config.load_opts().clone();
    let id = cur.profile_id.clone();
    let result = blocking(move || dir.load_candidate(&opts, &id, &doc, "request body")).await?;
    match result {
        Err(d) => Err(Problem::invalid_config(&d)),
        Ok(l) => {
            let changes = diff_json(&effective(&cur), &effective(&l));
            let (live, restart) = kos_config::diff::split_sections(&changes);
            Ok(super::json(
                StatusCode::OK,
                json!({
                    "valid": true,
                    "snapshot_id": l.snapshot_id,
                    "warnings": l.warnings,
                    "changes": changes,
                    "live": live,
                    "restart_required": restart,
                }),
            ))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffQuery {
    from: Option<String>,
    to: Option<String>,
    profile: Option<String>,
}

/// Resolves `current`, `running` or a snapshot id (or unique prefix) to an effective config.
async fn resolve_side(state: &AppState, what: &str) -> Result<(String, Value), Problem> {
    match what {
        "current" => {
            let l = state.config.current();
            Ok((l.snapshot_id.to_string(), effective(&l)))
        }
        "running" => Ok((
            state.config.boot().snapshot_id.to_string(),
            effective(state.config.boot()),
        )),
        other => {
            let store = state.config.snapshots().clone();
            let o = other.to_string();
            let rec =
                blocking(move || store.resolve(&o).and_then(|id| store.snapshot(&id))).await??;
            Ok((rec.id.to_string(), rec.effective))
        }
    }
}

/// `GET /api/config/diff?from=&to=` (`current`, `running`, a snapshot id or prefix) or
/// `?profile=<id>` (the current config against a stored profile). Without parameters it
/// compares the running configuration with the current one: what a restart would change.
pub async fn diff(
    State(state): State<AppState>,
    QueryParams(q): QueryParams<DiffQuery>,
) -> Result<Response, Problem> {
    let (from_label, to_label) = match (&q.profile, &q.to) {
        (Some(_), Some(_)) => {
            return Err(Problem::bad_request(
                "give either `to` or `profile`, not both",
            ));
        }
        (Some(p), None) => (
            q.from.clone().unwrap_or_else(|| "current".into()),
            format!("profile:{p}"),
        ),
        (None, Some(t)) => (
            q.from.clone().unwrap_or_else(|| "current".into()),
            t.clone(),
        ),
        (None, None) => (
            q.from.clone().unwrap_or_else(|| "running".into()),
            "current".into(),
        ),
    };
    let (from_id, from) = resolve_side(&state, &from_label).await?;
    // Where each value of the `to` side comes from, when it is loaded from this directory.
    let mut to_tree = (to_label == "current").then(|| state.config.current());
    let (to_id, to) = match &q.profile {
        Some(p) => {
            kos_config::load::check_profile_id(p).map_err(Problem::bad_request)?;
            let dir = state.config.dir().clone();
            let mut opts = state.config.load_opts().clone();
            opts.profile = Some(p.clone());
            let pid = p.clone();
            let loaded = blocking(move || {
                if !dir.profile_path(&pid).exists() {
                    return Err(None);
                }
                dir.load(&opts).map_err(Some)
            })
            .await?;
            match loaded {
                Ok(l) => {
                    let out = (l.snapshot_id.to_string(), effective(&l));
                    to_tree = Some(std::sync::Arc::new(l));
                    out
                }
                Err(None) => return Err(Problem::not_found(format!("no profile `{p}`"))),
                Err(Some(d)) => return Err(Problem::invalid_config(&d)),
            }
        }
        None => resolve_side(&state, &to_label).await?,
    };
    let changes = diff_json(&from, &to);
    let identical = changes.is_empty();
    let changes: Vec<serde_json::Value> = changes
        .into_iter()
        .map(|c| {
            let origin = to_tree
                .as_ref()
                .and_then(|l| l.tree.at_path(&c.path))
                .map(|n| n.loc.to_string());
            let mut v = json!(c);
            if let Some(o) = origin {
                v["origin"] = json!(o);
            }
            v
        })
        .collect();
    Ok(super::json(
        StatusCode::OK,
        json!({
            "from": {"ref": from_label, "snapshot_id": from_id},
            "to": {"ref": to_label, "snapshot_id": to_id},
            "identical": identical,
            "changes": changes,
        }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcesQuery {
    path: String,
}

/// `GET /api/config/sources?path=agents.translatorAgent.max_concurrent_tasks`: the current
/// value at a path and the file, line and column it comes from (built-in preset, profile,
/// federation snapshot, local overlay or environment variable).
pub async fn sources(
    State(state): State<AppState>,
    QueryParams(q): QueryParams<SourcesQuery>,
) -> Result<Response, Problem> {
    let l = state.config.current();
    let node = l.tree.at_path(&q.path).ok_or_else(|| {
        Problem::not_found(format!(
            "`{}` is not set in the current configuration",
            q.path
        ))
    })?;
    let value = effective(&l)
        .pointer(&format!("/{}", q.path.replace('.', "/")))
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    Ok(super::json(
        StatusCode::OK,
        json!({"path": q.path, "value": value, "source": node.loc.to_string()}),
    ))
}

/// Parses `If-Match`: `Ok(None)` for `*`, the id otherwise; absent is an error (428).
fn if_match(headers: &HeaderMap, required: bool) -> Result<Option<SnapshotId>, Problem> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        if required {
            return Err(Problem::new(
                StatusCode::PRECONDITION_REQUIRED,
                "urn:kos:problem:if-match-required",
                "If-Match required",
                "send `If-Match: \"<snapshot id>\"` (from GET /api/config/profile) or `If-Match: *` to overwrite",
            ));
        }
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| Problem::bad_request("If-Match is not ASCII"))?
        .trim();
    if v == "*" {
        return Ok(None);
    }
    if v.contains(',') {
        return Err(Problem::bad_request(
            "If-Match must name exactly one snapshot id",
        ));
    }
    SnapshotId::parse(v.trim_start_matches("W/"))
        .map(Some)
        .map_err(Problem::bad_request)
}

fn outcome_response(o: kos_config::ApplyOutcome) -> Response {
    let body = json!({
        "snapshot_id": o.loaded.snapshot_id,
        "previous_snapshot_id": o.previous,
        "unchanged": o.unchanged,
        "history_seq": o.entry.seq,
        "action": o.entry.action,
        "changes": o.changes,
        "applied_live": o.live,
        "restart_required": o.restart_required,
        "warnings": o.loaded.warnings,
    });
    let mut resp = (StatusCode::OK, axum::Json(body)).into_response();
    resp.headers_mut()
        .insert(header::ETAG, etag(&o.loaded.snapshot_id));
    resp
}

/// `POST /api/config/apply`: applies a new document to the active profile.
pub async fn apply(
    State(state): State<AppState>,
    caller: Option<Extension<Principal>>,
    headers: HeaderMap,
    TextBody(doc): TextBody,
) -> Result<Response, Problem> {
    let expected = if_match(&headers, true)?;
    let actor = super::authz::actor(caller.as_ref().map(|c| &c.0));
    let o = state
        .config
        .apply(expected, Change::Apply(doc), &actor)
        .await?;
    Ok(outcome_response(o))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    snapshot_id: String,
}

/// `POST /api/config/rollback` `{"snapshot_id": "..."}` (full id or unique prefix).
pub async fn rollback(
    State(state): State<AppState>,
    caller: Option<Extension<Principal>>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<RollbackBody>,
) -> Result<Response, Problem> {
    let expected = if_match(&headers, false)?;
    let store = state.config.snapshots().clone();
    let target = blocking(move || store.resolve(&body.snapshot_id)).await??;
    let actor = super::authz::actor(caller.as_ref().map(|c| &c.0));
    let o = state
        .config
        .apply(expected, Change::Rollback(target), &actor)
        .await?;
    Ok(outcome_response(o))
}

/// `GET /api/config/status`.
pub async fn status(State(state): State<AppState>) -> Result<Response, Problem> {
    let l = state.config.current();
    let store = state.config.snapshots().clone();
    let head = blocking(move || store.head()).await??;
    let federation = match &state.fed {
        Some(f) => json!(f.status().await.map_err(|e| Problem::internal(&e))?),
        None => json!([]),
    };
    Ok(super::json(
        StatusCode::OK,
        json!({
            "node_id": state.identity.id().to_string(),
            "profile_id": l.profile_id,
            "profile": l.config.profile,
            "snapshot_id": l.snapshot_id,
            "running_snapshot_id": state.config.boot().snapshot_id,
            "pending_restart": state.config.pending_restart(),
            "last_change": head,
            "database": state.db.backend(),
            "api": state.listen.to_string(),
            "uptime_seconds": super::uptime(&state).as_secs(),
            "version": env!("CARGO_PKG_VERSION"),
            "federation": federation,
        }),
    ))
}

/// `GET /api/config/health`: 200 when every check passes, 503 otherwise.
pub async fn health(State(state): State<AppState>) -> Response {
    let db = match state.db.ping().await {
        Ok(()) => json!({"status": "ok"}),
        Err(e) => {
            tracing::warn!(error = %e, "database health check failed");
            json!({"status": "failing", "detail": "the database does not answer"})
        }
    };
    let store = state.config.snapshots().clone();
    let history = match blocking(move || store.history().map(|h| h.len())).await {
        Ok(Ok(n)) => json!({"status": "ok", "entries": n}),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "snapshot history check failed");
            json!({"status": "failing", "detail": "the snapshot history cannot be read"})
        }
        Err(_) => json!({"status": "failing"}),
    };
    let ok = db["status"] == "ok" && history["status"] == "ok";
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    super::json(
        status,
        json!({
            "status": if ok { "ok" } else { "failing" },
            "checks": {"database": db, "history": history, "config": {"status": "ok", "snapshot_id": state.config.current().snapshot_id}},
        }),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    limit: Option<usize>,
}

/// `GET /api/config/history?limit=N`: newest first.
pub async fn history(
    State(state): State<AppState>,
    QueryParams(q): QueryParams<HistoryQuery>,
) -> Result<Response, Problem> {
    let limit = q.limit.unwrap_or(50).min(1000);
    let store = state.config.snapshots().clone();
    let mut entries = blocking(move || store.history())
        .await?
        .map_err(|e: StoreError| Problem::from(e))?;
    entries.reverse();
    entries.truncate(limit);
    Ok(super::json(StatusCode::OK, json!({"entries": entries})))
}
