//! KLP in the node: starting the swarm from the configuration, turning KLP events into
//! metrics and logs, and answering peers' API calls. (Keeping `klp/peers.list` and the
//! federation log in effect is [`crate::fedsync`]'s job.)

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use kos_config::Loaded;
use kos_klp::{DiscoveryConfig, Klp, KlpConfig, KlpEvent, ManifestInfo, PeerEntry};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::identity::Identity;
use crate::metrics::Metrics;

/// The operator's approved peers in `klp/peers.list` (both sections are checked); a missing
/// file is an empty list. Errors name the file and line.
pub fn read_peers_list(dir: &Path) -> Result<Vec<PeerEntry>, Vec<String>> {
    crate::fedsync::read_peers_file(dir).map(|f| f.local)
}

/// The swarm settings for a loaded configuration.
pub fn klp_config(loaded: &Loaded, identity: &Identity, approved: Vec<PeerEntry>) -> KlpConfig {
    let c = &loaded.config;
    let k = &c.federation.klp;
    let name = c
        .node
        .name
        .clone()
        .unwrap_or_else(|| format!("kos-{}", &identity.id().to_string()[..16]));
    let manifest = ManifestInfo {
        name,
        version: env!("CARGO_PKG_VERSION").into(),
        profile: c.profile.as_str().into(),
        services: c
            .services
            .iter()
            .map(|s| {
                (
                    s.as_str().to_string(),
                    env!("CARGO_PKG_VERSION").to_string(),
                )
            })
            .collect(),
    };
    let mut cfg = KlpConfig::new(
        identity.signing_key().to_bytes(),
        k.listen.clone(),
        manifest,
    );
    cfg.bootstrap = k.bootstrap.clone();
    cfg.approved = approved;
    cfg.handshake_required = k.handshake_required;
    cfg.network = k.network.clone();
    cfg.discovery = DiscoveryConfig {
        enabled: k.peer_discovery == kos_config::model::PeerDiscovery::DnsSd,
        interfaces: k.discovery_interfaces.clone(),
    };
    cfg.handshake_timeout = k.handshake_timeout.get();
    cfg.max_connections = k.max_connections;
    cfg
}

/// Counts KLP events into the node's metrics and logs admissions and refusals.
pub fn record_events(klp: &Klp, metrics: Arc<Metrics>, token: CancellationToken) {
    let mut rx = klp.subscribe();
    tokio::spawn(async move {
        loop {
            let ev = tokio::select! {
                () = token.cancelled() => return,
                ev = rx.recv() => ev,
            };
            match ev {
                Ok(
                    KlpEvent::ConnectionOpened { total, .. }
                    | KlpEvent::ConnectionClosed { total, .. },
                ) => {
                    metrics.klp_connections.set(total as i64);
                }
                Ok(KlpEvent::Admitted { .. }) => {
                    Metrics::outcome(&metrics.klp_handshakes, "admitted")
                }
                Ok(KlpEvent::Refused { reason, by, .. }) => {
                    let by = match by {
                        kos_klp::RefusedBy::Us => "refused_by_us",
                        kos_klp::RefusedBy::Peer => "refused_by_peer",
                    };
                    metrics
                        .klp_handshakes
                        .get_or_create(&crate::metrics::OutcomeLabels {
                            outcome: format!("{by}:{reason}"),
                        })
                        .inc();
                }
                Ok(KlpEvent::Discovered { .. }) => {
                    metrics.klp_discovery_events.inc();
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    warn!(missed = n, "KLP events dropped")
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}

/// Largest answer body sent back to a calling peer.
const MAX_REMOTE_ANSWER: usize = 200 * 1024;

/// Answers API calls from peers: each runs through the node's own router as the peer, with the
/// role `federation.klp.remote_roles` grants it, so the same RBAC table decides.
pub fn serve_remote_calls(
    klp: &Klp,
    router: axum::Router,
    roles: kos_config::model::RemoteRoles,
    token: CancellationToken,
) {
    let Some(mut calls) = klp.take_inbound_calls() else {
        return;
    };
    tokio::spawn(async move {
        loop {
            let call = tokio::select! {
                () = token.cancelled() => return,
                c = calls.recv() => match c { Some(c) => c, None => return },
            };
            let peer = call.peer.to_string();
            let Some(role) = roles.role_of(&peer) else {
                let body = serde_json::json!({
                    "type": "urn:kos:problem:forbidden", "title": "Forbidden", "status": 403,
                    "detail": "this node grants your node no role (federation.klp.remote_roles)",
                });
                let _ = call.reply.send((403, body.to_string().into_bytes()));
                continue;
            };
            let router = router.clone();
            tokio::spawn(async move {
                let answer =
                    run_remote_call(router, peer, role, call.method, call.path, call.body).await;
                let _ = call.reply.send(answer);
            });
        }
    });
}

async fn run_remote_call(
    router: axum::Router,
    peer: String,
    role: kos_config::model::Role,
    method: String,
    path: String,
    body: Vec<u8>,
) -> (u16, Vec<u8>) {
    use tower::ServiceExt;
    let Ok(method) = axum::http::Method::from_bytes(method.as_bytes()) else {
        return (400, br#"{"title":"bad method"}"#.to_vec());
    };
    let Ok(mut req) = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body))
    else {
        return (400, br#"{"title":"bad request"}"#.to_vec());
    };
    let principal = crate::auth::Principal {
        sub: peer,
        role,
        source: "klp",
    };
    req.extensions_mut()
        .insert(crate::api::authz::RemoteCaller(principal));
    let resp = match router.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let status = resp.status().as_u16();
    match axum::body::to_bytes(resp.into_body(), MAX_REMOTE_ANSWER).await {
        Ok(b) => (status, b.to_vec()),
        Err(_) => (
            502,
            br#"{"title":"the answer is too large to send over KLP"}"#.to_vec(),
        ),
    }
}
