//! Peers' API calls over KLP: each runs through the node's own router as the peer, with the
//! role `federation.klp.remote_roles` grants it, so the same RBAC table decides.

use kos_config::model::{RemoteRoles, Role};
use kos_klp::Klp;

use crate::auth::Principal;
use crate::runtime::Tasks;

/// Largest answer body sent back to a calling peer.
const MAX_REMOTE_ANSWER: usize = 200 * 1024;

/// Answers API calls from peers (a service of the node's [`Tasks`]; each call is a job).
pub fn serve(tasks: &Tasks, klp: &Klp, router: axum::Router, roles: RemoteRoles) {
    let Some(mut calls) = klp.take_inbound_calls() else {
        return;
    };
    let token = tasks.token().clone();
    let jobs = tasks.clone();
    tasks.spawn_service("klp-remote-calls", async move {
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
            jobs.spawn("klp-remote-call", async move {
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
    role: Role,
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
    let principal = Principal {
        sub: peer,
        role,
        source: "klp",
    };
    req.extensions_mut()
        .insert(super::authz::RemoteCaller(principal));
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
