//! `/api/vectors`: the node's vector store (admin only; see `authz.rs`).
//!
//! 409 `vectors-disabled` when `storage.vector` is `none`. Bad input is 400, an unknown
//! collection 404, an existing one or a full engine 409, an unreachable Qdrant server 503;
//! storage failures are 500 with the cause only in the log.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::problem::Problem;
use super::{AppState, JsonBody};
use crate::vector::{CollectionSpec, Point, Query, VectorError, VectorStore};

fn store(state: &AppState) -> Result<&dyn VectorStore, Problem> {
    state.vectors.as_deref().ok_or_else(|| {
        Problem::new(
            StatusCode::CONFLICT,
            "urn:kos:problem:vectors-disabled",
            "No vector store",
            "this node's profile has no vector store (storage.vector: none)",
        )
    })
}

impl From<VectorError> for Problem {
    fn from(e: VectorError) -> Self {
        match e {
            VectorError::NoSuchCollection(_) => Problem::not_found(e.to_string()),
            VectorError::CollectionExists(_)
            | VectorError::CollectionFull { .. }
            | VectorError::TooManyCollections(_) => Problem::conflict(e.to_string()),
            e if e.is_client_error() => Problem::bad_request(e.to_string()),
            VectorError::Unavailable { .. } => {
                // The server's address and the transport error stay in the log.
                tracing::warn!(error = %e, "vector store unavailable");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "urn:kos:problem:vectors-unavailable",
                    "Vector store unavailable",
                    "the vector store does not answer; retry later",
                )
            }
            other => Problem::internal(&other),
        }
    }
}

/// `GET /api/vectors`: the backend and every collection.
pub async fn list(State(state): State<AppState>) -> Result<Response, Problem> {
    let s = store(&state)?;
    let collections = s.list_collections().await?;
    Ok(super::json(
        StatusCode::OK,
        json!({"backend": s.backend(), "collections": collections}),
    ))
}

/// `POST /api/vectors`: `{"name", "dimension", "distance": "cosine"|"dot"|"euclid"}`.
pub async fn create(
    State(state): State<AppState>,
    JsonBody(spec): JsonBody<CollectionSpec>,
) -> Result<Response, Problem> {
    let s = store(&state)?;
    s.create_collection(&spec).await?;
    state
        .events
        .record_api(
            "vector_collection_created",
            json!({"name": spec.name, "dimension": spec.dimension, "distance": spec.distance}),
        )
        .await;
    let info = s.collection_info(&spec.name).await?;
    Ok(super::json(StatusCode::CREATED, json!(info)))
}

/// `GET /api/vectors/{name}`.
pub async fn read(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, Problem> {
    let info = store(&state)?.collection_info(&name).await?;
    Ok(super::json(StatusCode::OK, json!(info)))
}

/// `DELETE /api/vectors/{name}`: 204, or 404 when there was no such collection.
pub async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, Problem> {
    if !store(&state)?.delete_collection(&name).await? {
        return Err(VectorError::NoSuchCollection(name).into());
    }
    state
        .events
        .record_api("vector_collection_deleted", json!({"name": name}))
        .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Points {
    points: Vec<Point>,
}

/// `PUT /api/vectors/{name}/points`: `{"points": [{"id", "vector", "payload"}]}`.
pub async fn upsert(
    State(state): State<AppState>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<Points>,
) -> Result<Response, Problem> {
    store(&state)?.upsert(&name, &body.points).await?;
    Ok(super::json(
        StatusCode::OK,
        json!({"upserted": body.points.len()}),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ids {
    ids: Vec<u64>,
}

/// `POST /api/vectors/{name}/points/delete`: `{"ids": [...]}`; unknown ids are ignored.
pub async fn delete_points(
    State(state): State<AppState>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<Ids>,
) -> Result<Response, Problem> {
    store(&state)?.delete_points(&name, &body.ids).await?;
    Ok(super::json(
        StatusCode::OK,
        json!({"deleted": body.ids.len()}),
    ))
}

/// `POST /api/vectors/{name}/search`: `{"vector", "limit", "filter": {"must": [{"key", "match"}]}}`.
pub async fn search(
    State(state): State<AppState>,
    Path(name): Path<String>,
    JsonBody(query): JsonBody<Query>,
) -> Result<Response, Problem> {
    let results = store(&state)?.search(&name, &query).await?;
    Ok(super::json(StatusCode::OK, json!({"results": results})))
}
