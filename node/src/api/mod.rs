//! The HTTP API: kConfigD (configuration), profiles, and operations endpoints.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/healthz` | liveness |
//! | GET | `/readyz` | readiness (503 while starting or draining) |
//! | GET | `/metrics` | Prometheus text |
//! | GET | `/api/config/profile` | active profile: document, effective config, snapshot id (ETag) |
//! | PUT | `/api/config/validate` | validate a document; 422 lists every error |
//! | GET | `/api/config/diff` | differences between snapshots / profiles |
//! | POST | `/api/config/apply` | apply a document; `If-Match` required (412 on mismatch) |
//! | GET | `/api/config/status` | snapshot ids, pending restart, last change |
//! | GET | `/api/config/health` | checks of the config service and database |
//! | GET | `/api/config/history` | applied snapshots, newest first |
//! | GET | `/api/config/sources?path=` | a value and the file:line:column it comes from |
//! | POST | `/api/config/rollback` | roll back to an earlier snapshot |
//! | GET/POST | `/api/profiles` | list / create profiles |
//! | GET/PUT/DELETE | `/api/profiles/{id}` | read / update / delete a profile |
//! | GET | `/api/events` | node events (audit trail) |
//! | GET | `/api/peers` | approved, connected and discovered peers |
//! | GET | `/api/peers/{id}` | one peer |
//! | POST | `/api/peers/dial` | dial a multiaddr (admission still goes through MAP) |
//! | POST | `/api/peers/{id}/call` | call an admitted peer's API as this node (admin) |
//! | POST | `/api/peers/{id}/approve` | federation op: approve a peer (admin) |
//! | POST | `/api/peers/{id}/revoke` | federation op: revoke a peer (admin) |
//! | POST | `/api/config/publish` | federation op: publish a config snapshot for a scope (admin) |
//! | POST | `/api/config/publish/rollback` | publish an earlier snapshot again (admin) |
//! | GET | `/api/federation` | admins, approved/revoked peers, published config |
//! | GET | `/api/federation/log` | the op log with validity |
//! | POST | `/api/federation/ops` | submit an op signed elsewhere (admin) |
//! | POST | `/api/federation/draft` | an unsigned admin-set op to co-sign (admin) |
//! | POST | `/api/federation/admins` | add/remove an admin with this node's key (admin) |
//! | GET/POST | `/api/vectors` | vector store: backend and collections / create a collection (admin) |
//! | GET/DELETE | `/api/vectors/{name}` | one collection / delete it (admin) |
//! | PUT | `/api/vectors/{name}/points` | upsert points (admin) |
//! | POST | `/api/vectors/{name}/points/delete` | delete points by id (admin) |
//! | POST | `/api/vectors/{name}/search` | top-k search with a payload filter (admin) |
//! | GET | `/api/agents` | hosted agents with their card URLs |
//! | GET | `/.well-known/agent-card.json` | the node's A2A card (open) |
//! | * | `/a2a/<agent>/...` | A2A v1.0 bindings of a hosted agent; see [`a2a`] |
//! | * | `/a2a/peers/<peer id>/<agent>/...` | the same for an admitted peer's agent, over KLP |

pub mod a2a;
pub mod authz;
mod config;
pub mod conn_limit;
mod federation;
mod ops;
mod peers;
pub mod problem;
mod profiles;
pub mod remote;
mod state;
mod vectors;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, MatchedPath, Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use tokio::sync::Semaphore;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::metrics::HttpLabels;
use problem::Problem;
pub use state::ApiState;

pub type AppState = Arc<ApiState>;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// How many requests with a body the API handles at once (HTTP and remote calls over KLP
/// together). Each may buffer `api.max_body_bytes` and decode it (YAML tree, JSON values:
/// see "Resource ceilings" in docs/ARCHITECTURE.md), so this is what bounds the memory that
/// request bodies can make the node allocate. Past it, a request with a body gets 503
/// before its body is read; requests without a body are not counted.
pub const MAX_BODIES_IN_FLIGHT: usize = 16;
/// How long a request with a body waits for a free permit before it gets 503.
const BODY_PERMIT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

pub fn router(state: AppState) -> Router {
    let boot = &state.config.boot().config.api;
    let timeout = boot.request_timeout.get();
    let max_body = boot.max_body_bytes as usize;
    let bodies = Arc::new(Semaphore::new(MAX_BODIES_IN_FLIGHT));
    let api = Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/api/config/profile", get(config::profile))
        .route("/api/config/validate", put(config::validate))
        .route("/api/config/diff", get(config::diff))
        .route("/api/config/apply", post(config::apply))
        .route("/api/config/status", get(config::status))
        .route("/api/config/health", get(config::health))
        .route("/api/config/history", get(config::history))
        .route("/api/config/sources", get(config::sources))
        .route("/api/config/rollback", post(config::rollback))
        .route("/api/profiles", get(profiles::list).post(profiles::create))
        .route(
            "/api/profiles/{id}",
            get(profiles::read)
                .put(profiles::update)
                .delete(profiles::delete),
        )
        .route("/api/events", get(ops::events))
        .route("/api/peers", get(peers::list))
        .route("/api/peers/dial", post(peers::dial))
        .route("/api/peers/{id}", get(peers::read))
        .route("/api/peers/{id}/call", post(peers::call))
        .route("/api/peers/{id}/approve", post(federation::approve))
        .route("/api/peers/{id}/revoke", post(federation::revoke))
        .route("/api/config/publish", post(federation::publish))
        .route(
            "/api/config/publish/rollback",
            post(federation::publish_rollback),
        )
        .route("/api/federation", get(federation::view))
        .route("/api/federation/log", get(federation::log))
        .route("/api/federation/ops", post(federation::submit))
        .route("/api/federation/draft", post(federation::draft))
        .route("/api/federation/admins", post(federation::admins))
        .route("/api/vectors", get(vectors::list).post(vectors::create))
        .route(
            "/api/vectors/{name}",
            get(vectors::read).delete(vectors::delete),
        )
        .route("/api/vectors/{name}/points", put(vectors::upsert))
        .route(
            "/api/vectors/{name}/points/delete",
            post(vectors::delete_points),
        )
        .route("/api/vectors/{name}/search", post(vectors::search))
        .route(authz::METADATA_PATH, get(authz::metadata))
        .route("/api/agents", get(a2a::list_agents))
        .route("/.well-known/agent-card.json", get(a2a::node_card))
        .route("/a2a/{agent}/.well-known/agent-card.json", get(a2a::card))
        .route(
            "/a2a/peers/{peer}/{agent}/.well-known/agent-card.json",
            get(a2a::remote_card),
        )
        .route("/a2a/{agent}/tasks/{task}/events", get(a2a::task_events))
        // The A2A bindings, for hosted agents and (over KLP) for peers' agents.
        .merge(a2a::routes("/a2a/{agent}"))
        .merge(a2a::routes("/a2a/peers/{peer}/{agent}"))
        // Innermost: only callers that passed authorization take a body permit.
        .route_layer(middleware::from_fn_with_state(bodies, limit_bodies))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            authz::authorize,
        ))
        .route_layer(middleware::from_fn_with_state(state.clone(), track))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .with_state(state);
    api.layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
            .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
                let rid = req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
                tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %rid, sub = tracing::field::Empty)
            }))
            .layer(PropagateRequestIdLayer::new(REQUEST_ID))
            .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, timeout)),
    )
}

/// Counts requests by matched route and status.
async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_string();
    let method = req.method().to_string();
    let resp = next.run(req).await;
    let labels = HttpLabels {
        method,
        route,
        status: resp.status().as_u16(),
    };
    state.metrics.http_requests.get_or_create(&labels).inc();
    state
        .metrics
        .http_duration
        .get_or_create(&labels)
        .observe(start.elapsed().as_secs_f64());
    resp
}

/// Holds one of [`MAX_BODIES_IN_FLIGHT`] permits for the whole life of a request that has a
/// body (reading, decoding, handling), or answers 503 when none is free within
/// [`BODY_PERMIT_WAIT`].
async fn limit_bodies(State(bodies): State<Arc<Semaphore>>, req: Request, next: Next) -> Response {
    use axum::body::HttpBody;
    if req.body().size_hint().exact() == Some(0) {
        return next.run(req).await;
    }
    // A burst of ordinary requests waits a moment for a permit; a node whose permits stay
    // taken (slow bodies) answers 503 after that moment.
    let permit = match bodies.clone().try_acquire_owned() {
        Ok(p) => Ok(p),
        Err(_) => match tokio::time::timeout(BODY_PERMIT_WAIT, bodies.acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            _ => Err(()),
        },
    };
    let Ok(_permit) = permit else {
        let mut resp = Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "urn:kos:problem:busy",
            "Too many requests with a body",
            format!("the node is already handling {MAX_BODIES_IN_FLIGHT} requests with a body; retry shortly"),
        )
        .into_response();
        resp.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("1"),
        );
        return resp;
    };
    next.run(req).await
}

async fn not_found() -> Problem {
    Problem::not_found("no such endpoint; see the API table in the README")
}

async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "urn:kos:problem:method-not-allowed",
        "Method not allowed",
        "this endpoint does not accept that method",
    )
}

/// A request body as UTF-8 text (a YAML or JSON document), with problem+json rejections.
#[derive(Debug)]
pub struct TextBody(pub String);

impl<S: Send + Sync> FromRequest<S> for TextBody {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Problem::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "urn:kos:problem:too-large",
                    "Request body too large",
                    "the body exceeds api.max_body_bytes",
                )
            } else {
                Problem::bad_request(format!("cannot read the request body: {}", e.body_text()))
            }
        })?;
        // `Vec::from` takes the buffer over without copying it when it is not shared.
        let text = String::from_utf8(Vec::from(bytes))
            .map_err(|_| Problem::bad_request("the body is not UTF-8 text"))?;
        if text.trim().is_empty() {
            return Err(Problem::bad_request(
                "the body is empty; send a YAML or JSON document",
            ));
        }
        Ok(TextBody(text))
    }
}

/// A JSON request body with problem+json rejections.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        let TextBody(text) = TextBody::from_request(req, state).await?;
        serde_json::from_str(&text)
            .map(JsonBody)
            .map_err(|e| Problem::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// Query parameters with problem+json rejections (unknown or malformed parameters: 400).
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequestParts<S>
    for QueryParams<T>
{
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Problem> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| QueryParams(q.0))
            .map_err(|e| Problem::bad_request(e.body_text()))
    }
}

/// Runs blocking file I/O off the async workers.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Problem> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Problem::internal(&e))
}

/// JSON response with a status.
pub fn json(status: StatusCode, v: serde_json::Value) -> Response {
    (status, axum::Json(v)).into_response()
}

pub(crate) fn uptime(state: &ApiState) -> Duration {
    state.started.elapsed()
}
