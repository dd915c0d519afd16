//! Profile management: `/api/profiles`.
//!
//! Profiles are the files in `profiles/`. The active one (chosen by `KOS_PROFILE`) changes
//! only through apply (so it is validated, snapshotted and compare-and-swapped); `PUT` on the
//! active profile is an apply and needs `If-Match`. Others are validated with this node's
//! overlays and written atomically. The active profile cannot be deleted.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kos_config::ConfigDir;
use kos_config::load::check_profile_id;
use kos_config::snapshot::atomic_write;
use serde::Deserialize;
use serde_json::json;

use super::problem::Problem;
use super::{AppState, JsonBody, TextBody, blocking};

/// `GET /api/profiles`.
pub async fn list(State(state): State<AppState>) -> Result<Response, Problem> {
    let dir = state.config.dir().clone();
    let opts = state.config.load_opts().clone();
    let active = state.config.current().profile_id.clone();
    let items = blocking(move || -> Result<Vec<serde_json::Value>, std::io::Error> {
        let mut out = Vec::new();
        for id in dir.list_profiles()? {
            let mut o = opts.clone();
            o.profile = Some(id.clone());
            let (valid, kind, errors) = match dir.load(&o) {
                Ok(l) => (true, Some(l.config.profile.as_str().to_string()), 0),
                Err(d) => (false, None, d.errors().count()),
            };
            out.push(json!({"id": id, "active": id == active, "profile": kind, "valid": valid, "errors": errors}));
        }
        Ok(out)
    })
    .await?
    .map_err(|e| Problem::internal(&e))?;
    Ok(super::json(StatusCode::OK, json!({"profiles": items})))
}

fn checked_id(id: &str) -> Result<(), Problem> {
    check_profile_id(id).map_err(Problem::bad_request)
}

/// `GET /api/profiles/{id}`.
pub async fn read(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    checked_id(&id)?;
    let path = state.config.dir().profile_path(&id);
    let doc = blocking(move || std::fs::read_to_string(path)).await?;
    match doc {
        Ok(document) => Ok(super::json(
            StatusCode::OK,
            json!({"id": id, "active": id == state.config.current().profile_id, "document": document}),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(Problem::not_found(format!("no profile `{id}`")))
        }
        Err(e) => Err(Problem::internal(&e)),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    id: String,
    document: String,
}

/// Validates `doc` as profile `id` and writes it. `create`: fail if it exists.
async fn write_profile(
    state: &AppState,
    id: String,
    doc: String,
    create: bool,
) -> Result<kos_config::Loaded, Problem> {
    let dir = state.config.dir().clone();
    let opts = state.config.load_opts().clone();
    let _guard = state.config.lock().await;
    blocking(move || {
        let path = dir.profile_path(&id);
        match (create, path.exists()) {
            (true, true) => {
                return Err(Problem::conflict(format!(
                    "profile `{id}` already exists; use PUT to change it"
                )));
            }
            (false, false) => {
                return Err(Problem::not_found(format!(
                    "no profile `{id}`; use POST /api/profiles to create it"
                )));
            }
            _ => {}
        }
        let loaded = dir
            .load_candidate(&opts, &id, &doc, &ConfigDir::profile_rel(&id))
            .map_err(|d| Problem::invalid_config(&d))?;
        atomic_write(&path, doc.as_bytes(), None, &mut |_| {})
            .map_err(|e| Problem::internal(&e))?;
        Ok(loaded)
    })
    .await?
}

/// `POST /api/profiles` `{"id": "...", "document": "<yaml>"}`.
pub async fn create(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreateBody>,
) -> Result<Response, Problem> {
    checked_id(&body.id)?;
    let id = body.id.clone();
    let loaded = write_profile(&state, body.id, body.document, true).await?;
    state
        .events
        .record_api(
            "profile_created",
            json!({"id": id, "snapshot_id": loaded.snapshot_id}),
        )
        .await;
    let mut resp = (
        StatusCode::CREATED,
        axum::Json(json!({"id": id, "profile": loaded.config.profile, "snapshot_id": loaded.snapshot_id, "warnings": loaded.warnings})),
    )
        .into_response();
    if let Ok(v) = format!("/api/profiles/{id}").parse() {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// `PUT /api/profiles/{id}` with the document as body. On the active profile this is an
/// apply (`If-Match` required).
pub async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    caller: Option<axum::Extension<crate::auth::Principal>>,
    headers: HeaderMap,
    body: TextBody,
) -> Result<Response, Problem> {
    checked_id(&id)?;
    if id == state.config.current().profile_id {
        return super::config::apply(State(state), caller, headers, body).await;
    }
    let loaded = write_profile(&state, id.clone(), body.0, false).await?;
    state
        .events
        .record_api(
            "profile_updated",
            json!({"id": id, "snapshot_id": loaded.snapshot_id}),
        )
        .await;
    Ok(super::json(
        StatusCode::OK,
        json!({"id": id, "profile": loaded.config.profile, "snapshot_id": loaded.snapshot_id, "warnings": loaded.warnings}),
    ))
}

/// `DELETE /api/profiles/{id}`.
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    checked_id(&id)?;
    if id == state.config.current().profile_id {
        return Err(Problem::conflict(format!(
            "`{id}` is the active profile; switch KOS_PROFILE before deleting it"
        )));
    }
    let path = state.config.dir().profile_path(&id);
    let _guard = state.config.lock().await;
    let r = blocking(move || std::fs::remove_file(path)).await?;
    match r {
        Ok(()) => {
            state
                .events
                .record_api("profile_deleted", json!({"id": id}))
                .await;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(Problem::not_found(format!("no profile `{id}`")))
        }
        Err(e) => Err(Problem::internal(&e)),
    }
}
