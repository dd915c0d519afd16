//! `/api/peers`: the federation as this node sees it.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

use super::problem::Problem;
use super::{AppState, JsonBody};

fn klp(state: &AppState) -> Result<&kos_klp::Klp, Problem> {
    state.klp.as_ref().ok_or_else(|| {
        Problem::new(
            StatusCode::CONFLICT,
            "urn:kos:problem:klp-disabled",
            "KLP is disabled",
            "this node's profile does not enable KLP (federation.klp.enabled)",
        )
    })
}

/// `GET /api/peers`: approved, connected and discovered peers with handshake state,
/// protocol version, RTT and last activity.
pub async fn list(State(state): State<AppState>) -> Result<Response, Problem> {
    let Some(k) = state.klp.as_ref() else {
        return Ok(super::json(
            StatusCode::OK,
            json!({"enabled": false, "peers": []}),
        ));
    };
    let peers = k.peers().await.map_err(|e| Problem::internal(&e))?;
    let listen = k.listen_addrs().await.map_err(|e| Problem::internal(&e))?;
    let admitted = peers
        .iter()
        .filter(|p| p.state == kos_klp::HandshakeState::Admitted && p.connected)
        .count();
    Ok(super::json(
        StatusCode::OK,
        json!({
            "enabled": true,
            "local_id": k.local_id().to_string(),
            "listen": listen,
            "admitted": admitted,
            "peers": peers,
        }),
    ))
}

/// `GET /api/peers/{id}`.
pub async fn read(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    id.parse::<kos_klp::NodeId>()
        .map_err(|e| Problem::bad_request(format!("`{id}` is not a peer id: {e}")))?;
    let peers = klp(&state)?
        .peers()
        .await
        .map_err(|e| Problem::internal(&e))?;
    match peers.into_iter().find(|p| p.id == id) {
        Some(p) => Ok(super::json(StatusCode::OK, json!(p))),
        None => Err(Problem::not_found(format!(
            "peer {id} is not known to this node"
        ))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DialBody {
    addr: String,
}

/// `POST /api/peers/dial` `{"addr": "/ip4/.../tcp/4001/p2p/<id>"}`: 202; admission still
/// goes through MAP (watch `GET /api/peers`).
pub async fn dial(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<DialBody>,
) -> Result<Response, Problem> {
    let k = klp(&state)?;
    match k.dial(&body.addr).await {
        Ok(()) => Ok(super::json(
            StatusCode::ACCEPTED,
            json!({"dialing": body.addr}),
        )),
        Err(e @ (kos_klp::KlpError::Addr { .. } | kos_klp::KlpError::Dial(_))) => {
            Err(Problem::bad_request(e.to_string()))
        }
        Err(e) => Err(Problem::internal(&e)),
    }
}
