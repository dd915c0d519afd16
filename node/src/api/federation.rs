//! `/api/federation` and the federation actions on peers and config: admin-signed ops.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine as _;
use kos_klp::NodeId;
use kos_map_protocol::fedlog::OpBody;
use serde::Deserialize;
use serde_json::json;

use super::problem::Problem;
use super::{AppState, JsonBody};
use crate::fedsync::{FedError, FedSync};

fn fed(state: &AppState) -> Result<&FedSync, Problem> {
    state.fed.as_ref().ok_or_else(|| {
        Problem::new(
            StatusCode::CONFLICT,
            "urn:kos:problem:klp-disabled",
            "KLP is disabled",
            "this node's profile does not enable KLP (federation.klp.enabled)",
        )
    })
}

fn problem(e: FedError) -> Problem {
    match e {
        FedError::Disabled => Problem::new(
            StatusCode::CONFLICT,
            "urn:kos:problem:federation-disabled",
            "Federation sync is off",
            e.to_string(),
        ),
        FedError::NoAdminKey => Problem::new(
            StatusCode::CONFLICT,
            "urn:kos:problem:no-admin-key",
            "This node holds no federation admin key",
            e.to_string(),
        ),
        FedError::Refused(_) | FedError::Invalid(_) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "urn:kos:problem:op-refused",
            "The federation refuses this operation",
            e.to_string(),
        ),
        FedError::Store(_) | FedError::Stopped => Problem::internal(&e),
    }
}

fn created(op: String) -> Response {
    super::json(StatusCode::CREATED, json!({"op": op}))
}

fn peer_id(id: &str) -> Result<NodeId, Problem> {
    id.parse()
        .map_err(|e| Problem::bad_request(format!("`{id}` is not a peer id: {e}")))
}

/// `GET /api/federation`: admins, approved and revoked peers, local blocks, published
/// configuration per scope with this node's verdict, log size and heads.
pub async fn view(State(state): State<AppState>) -> Result<Response, Problem> {
    let f = fed(&state)?;
    Ok(super::json(StatusCode::OK, json!(*f.view())))
}

/// `GET /api/federation/log`: every op (total order) with author, time and validity, then
/// the recently refused ones.
pub async fn log(State(state): State<AppState>) -> Result<Response, Problem> {
    let ops = fed(&state)?.log().await.map_err(problem)?;
    Ok(super::json(StatusCode::OK, json!({"ops": ops})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitBody {
    /// Base64 of the op's canonical wire form.
    op: String,
}

/// `POST /api/federation/ops`: an op signed elsewhere (e.g. by `kos federation admin` with
/// several admin keys). Verified like any op, then gossiped.
pub async fn submit(
    State(state): State<AppState>,
    JsonBody(b): JsonBody<SubmitBody>,
) -> Result<Response, Problem> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b.op.trim())
        .map_err(|e| Problem::bad_request(format!("`op` is not base64: {e}")))?;
    let op = fed(&state)?.submit(bytes).await.map_err(problem)?;
    Ok(created(op))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DraftBody {
    author: String,
    action: AdminVerb,
    admin: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminBody {
    action: AdminVerb,
    admin: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminVerb {
    AddAdmin,
    RemoveAdmin,
}

impl AdminVerb {
    fn body(self, admin: &str) -> Result<OpBody, Problem> {
        let admin = peer_id(admin)?;
        Ok(match self {
            Self::AddAdmin => OpBody::AddAdmin { admin },
            Self::RemoveAdmin => OpBody::RemoveAdmin { admin },
        })
    }
}

/// `POST /api/federation/draft` `{"author", "action": "add_admin"|"remove_admin", "admin"}`:
/// the unsigned op (base64 of its canonical bytes) to sign with the admin keys the
/// threshold needs, then submit.
pub async fn draft(
    State(state): State<AppState>,
    JsonBody(b): JsonBody<DraftBody>,
) -> Result<Response, Problem> {
    let author = peer_id(&b.author)?;
    let body = b.action.body(&b.admin)?;
    let bytes = fed(&state)?.draft(author, body).await.map_err(problem)?;
    Ok(super::json(
        StatusCode::OK,
        json!({"draft": base64::engine::general_purpose::STANDARD.encode(bytes)}),
    ))
}

/// `POST /api/federation/admins` `{"action": "add_admin"|"remove_admin", "admin"}`: signed
/// with this node's admin key alone (enough when the threshold is 1).
pub async fn admins(
    State(state): State<AppState>,
    JsonBody(b): JsonBody<AdminBody>,
) -> Result<Response, Problem> {
    let body = b.action.body(&b.admin)?;
    let op = fed(&state)?.create(body).await.map_err(problem)?;
    Ok(created(op))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproveBody {
    #[serde(default)]
    addrs: Vec<String>,
    #[serde(default)]
    label: Option<String>,
}

/// `POST /api/peers/{id}/approve` `{"addrs": [...], "label": "..."}`: an `ApprovePeer` op
/// signed with this node's admin key.
pub async fn approve(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<ApproveBody>,
) -> Result<Response, Problem> {
    let peer = peer_id(&id)?;
    let mut addrs = Vec::new();
    for a in &b.addrs {
        addrs.push(kos_klp::peers::check_addr(a, &peer).map_err(Problem::bad_request)?);
    }
    let op = fed(&state)?
        .create(OpBody::ApprovePeer {
            peer,
            addrs,
            label: b.label.filter(|l| !l.is_empty()),
        })
        .await
        .map_err(problem)?;
    Ok(created(op))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {
    reason: String,
}

/// `POST /api/peers/{id}/revoke` `{"reason": "..."}`: a `RevokePeer` op; every node
/// disconnects the peer.
pub async fn revoke(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<RevokeBody>,
) -> Result<Response, Problem> {
    let peer = peer_id(&id)?;
    if b.reason.trim().is_empty() {
        return Err(Problem::bad_request("`reason` must not be empty"));
    }
    let op = fed(&state)?
        .create(OpBody::RevokePeer {
            peer,
            reason: b.reason,
        })
        .await
        .map_err(problem)?;
    Ok(created(op))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    scope: String,
    content: String,
    /// Publish even if this node's own configuration would not validate with it.
    #[serde(default)]
    force: bool,
}

/// `POST /api/config/publish` `{"scope", "content"}`: a `PublishConfig` op. The content is
/// checked against its scope, and the configuration of this node with it validated (422
/// with every error otherwise, unless `force`); each node then validates it again and
/// answers ACK or NACK (`GET /api/config/status`).
pub async fn publish(
    State(state): State<AppState>,
    JsonBody(b): JsonBody<PublishBody>,
) -> Result<Response, Problem> {
    let f = fed(&state)?;
    publish_content(&state, f, b.scope, b.content, b.force).await
}

async fn publish_content(
    state: &AppState,
    f: &FedSync,
    scope: String,
    content: String,
    force: bool,
) -> Result<Response, Problem> {
    let tree = kos_config::federation::check_content(&scope, &content, "snapshot")
        .map_err(|d| Problem::invalid_config(&d))?;
    if !force {
        let (dir, opts, s) = (
            state.config.dir().clone(),
            state.config.load_opts().clone(),
            scope.clone(),
        );
        tokio::task::spawn_blocking(move || dir.load_with_federation(&opts, &s, tree))
            .await
            .map_err(|e| Problem::internal(&e))?
            .map_err(|d| Problem::invalid_config(&d))?;
    }
    let snapshot_id = crate::fedsync::snapshot_id(&content);
    let op = f
        .create(OpBody::PublishConfig {
            snapshot_id: snapshot_id.clone(),
            scope: scope.clone(),
            content,
        })
        .await
        .map_err(problem)?;
    Ok(super::json(
        StatusCode::CREATED,
        json!({"op": op, "scope": scope, "snapshot_id": snapshot_id}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRollbackBody {
    scope: String,
    snapshot_id: String,
}

/// `POST /api/config/publish/rollback` `{"scope", "snapshot_id"}`: publishes an earlier
/// snapshot of the scope again, as a new op.
pub async fn publish_rollback(
    State(state): State<AppState>,
    JsonBody(b): JsonBody<PublishRollbackBody>,
) -> Result<Response, Problem> {
    let f = fed(&state)?;
    let content = f
        .find_snapshot(&b.scope, &b.snapshot_id)
        .await
        .map_err(problem)?
        .ok_or_else(|| {
            Problem::not_found(format!(
                "no snapshot {} of scope `{}` in the federation log",
                b.snapshot_id, b.scope
            ))
        })?;
    publish_content(&state, f, b.scope, content, true).await
}
