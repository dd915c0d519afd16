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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallBody {
    method: String,
    path: String,
    /// JSON body; a JSON string is sent as raw text (e.g. a YAML document).
    #[serde(default)]
    body: Option<serde_json::Value>,
}

/// `POST /api/peers/{id}/call` `{"method": "GET", "path": "/api/config/status"}`: calls the
/// API of an admitted peer as this node (admin only: the peer decides what this node may do,
/// so whoever calls acts with this node's identity). Answers `{"status", "body"}`.
pub async fn call(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<CallBody>,
) -> Result<Response, Problem> {
    let peer: kos_klp::NodeId = id
        .parse()
        .map_err(|e| Problem::bad_request(format!("`{id}` is not a peer id: {e}")))?;
    let k = klp(&state)?;
    let body = match b.body {
        None => Vec::new(),
        Some(serde_json::Value::String(s)) => s.into_bytes(),
        Some(v) => v.to_string().into_bytes(),
    };
    match k.call(&peer, &b.method, &b.path, body).await {
        Ok((status, bytes)) => {
            let body = serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
            });
            Ok(super::json(
                StatusCode::OK,
                json!({"peer": id, "status": status, "body": body}),
            ))
        }
        Err(kos_klp::KlpError::Call(why)) => Err(Problem::new(
            StatusCode::BAD_GATEWAY,
            "urn:kos:problem:remote-call-failed",
            "The peer did not take the call",
            why,
        )),
        Err(e) => Err(Problem::internal(&e)),
    }
}
