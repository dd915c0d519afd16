//! Who may call what: role-based access on every route.
//!
//! | routes | role |
//! |---|---|
//! | `/healthz`, `/readyz`, `/.well-known/oauth-protected-resource` | open |
//! | `GET` agent cards (`/.well-known/agent-card.json`, `/a2a/<agent>/.well-known/agent-card.json`) | open |
//! | `/a2a/<agent>/...` (A2A calls; a caller sees only its own tasks, admins all) | agent |
//! | `/metrics` | open, or viewer with `api.metrics_auth: viewer` |
//! | every `GET`, `PUT /api/config/validate` | viewer |
//! | `POST /api/peers/dial` | operator |
//! | `/api/vectors/...`, every method (vectors may hold private data) | admin |
//! | config apply and rollback, profile create/update/delete, anything else | admin |
//!
//! A missing or invalid token is 401 with `WWW-Authenticate: Bearer ...` (RFC 6750, with the
//! RFC 9728 `resource_metadata` URL); a valid token with too small a role is 403
//! `insufficient_scope`. When no authentication is configured the API is open (it then binds
//! loopback only, which validation enforces).

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use kos_config::model::MetricsAuth;
use serde_json::json;

use super::AppState;
use super::problem::Problem;
use crate::auth::{AuthError, Principal, Role};

pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// Routes a peer can never call over KLP (see [`authorize`]).
pub const LOCAL_ONLY: &[&str] = &[
    "/api/peers/{id}/call",
    "/api/peers/{id}/approve",
    "/api/peers/{id}/revoke",
    "/api/config/publish",
    "/api/config/publish/rollback",
    "/api/federation/ops",
    "/api/federation/draft",
    "/api/federation/admins",
];

/// The role a route needs; `None` is open.
pub fn required_role(method: &Method, route: &str, metrics_auth: MetricsAuth) -> Option<Role> {
    match (method.as_str(), route) {
        (_, "/healthz" | "/readyz" | METADATA_PATH) => None,
        // Agent cards are public (spec §8.2); what they describe needs a token.
        (
            "GET" | "HEAD",
            "/.well-known/agent-card.json"
            | "/a2a/{agent}/.well-known/agent-card.json"
            | "/a2a/peers/{peer}/{agent}/.well-known/agent-card.json",
        ) => None,
        // A2A calls: the `agent` role; each caller sees only its own tasks (admins: all).
        (_, r) if r.starts_with("/a2a/") => Some(Role::Agent),
        (_, "/metrics") => match metrics_auth {
            MetricsAuth::None => None,
            MetricsAuth::Viewer => Some(Role::Viewer),
        },
        // Vector collections may hold private data: reading them is admin too.
        (_, r) if r == "/api/vectors" || r.starts_with("/api/vectors/") => Some(Role::Admin),
        ("GET" | "HEAD", _) | ("PUT", "/api/config/validate") => Some(Role::Viewer),
        ("POST", "/api/peers/dial") => Some(Role::Operator),
        // Everything that changes the node, and anything not listed: admin.
        _ => Some(Role::Admin),
    }
}

fn scope(role: Role) -> String {
    format!("kos:{role}")
}

pub(crate) fn base_url(headers: &HeaderMap, tls: bool) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        // Only host[:port] characters: the value is echoed into the quoted challenge and
        // the metadata's `resource`, so a quote, path or query must not get through.
        .filter(|h| {
            !h.is_empty()
                && h.len() < 256
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b))
        })
        .unwrap_or("localhost");
    format!("{}://{host}", if tls { "https" } else { "http" })
}

fn challenge(state: &AppState, headers: &HeaderMap, error: Option<(&str, &str)>) -> HeaderValue {
    let meta = format!(
        "{}{METADATA_PATH}",
        base_url(headers, state.config.boot().config.api.tls.is_some())
    );
    let v = match error {
        None => format!("Bearer realm=\"kos\", resource_metadata=\"{meta}\""),
        Some((code, desc)) => format!(
            "Bearer realm=\"kos\", error=\"{code}\", error_description=\"{desc}\", resource_metadata=\"{meta}\""
        ),
    };
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static("Bearer realm=\"kos\""))
}

fn unauthorized(state: &AppState, headers: &HeaderMap, err: AuthError) -> Response {
    let detail = err.to_string();
    let mut resp = Problem::new(
        StatusCode::UNAUTHORIZED,
        "urn:kos:problem:unauthorized",
        "Unauthorized",
        detail.clone(),
    )
    .into_response();
    let c = match err {
        AuthError::Missing => challenge(state, headers, None),
        _ => challenge(state, headers, Some(("invalid_token", &detail))),
    };
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, c);
    resp
}

/// 403 with the RFC 6750 `insufficient_scope` challenge naming the scope `needed`.
fn forbidden(detail: String, needed: Role) -> Response {
    let mut resp = Problem::new(
        StatusCode::FORBIDDEN,
        "urn:kos:problem:insufficient-scope",
        "Forbidden",
        detail,
    )
    .into_response();
    let v = format!(
        "Bearer realm=\"kos\", error=\"insufficient_scope\", scope=\"{}\"",
        scope(needed)
    );
    if let Ok(h) = HeaderValue::from_str(&v) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, h);
    }
    resp
}

fn bearer(headers: &HeaderMap) -> Result<&str, AuthError> {
    let v = headers
        .get(header::AUTHORIZATION)
        .ok_or(AuthError::Missing)?;
    let v = v.to_str().map_err(|_| AuthError::Malformed)?;
    let (scheme, token) = v.split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Missing);
    }
    let token = token.trim();
    if token.is_empty() {
        Err(AuthError::Missing)
    } else {
        Ok(token)
    }
}

/// The middleware: authenticates, checks the route's role, and passes the [`Principal`] on.
pub async fn authorize(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    // A call from a peer over KLP carries the identity MAP verified and the role this node's
    // `remote_roles` grants it; it never falls back to "open".
    if let Some(RemoteCaller(p)) = req.extensions().get::<RemoteCaller>().cloned() {
        // Routes that sign with this node's keys for the whole federation (or call out as
        // this node) are for this node's own operators only, whatever role a peer has.
        if req.method() == Method::POST && LOCAL_ONLY.contains(&route.as_str()) {
            return Problem::new(
                StatusCode::FORBIDDEN,
                "urn:kos:problem:local-only",
                "Forbidden",
                "this action signs with this node's keys; it cannot be called by a peer over KLP",
            )
            .into_response();
        }
        let needed = required_role(
            req.method(),
            &route,
            state.config.boot().config.api.metrics_auth,
        );
        if let Some(needed) = needed
            && p.role < needed
        {
            return Problem::new(
                StatusCode::FORBIDDEN,
                "urn:kos:problem:insufficient-scope",
                "Forbidden",
                format!(
                    "this needs the `{needed}` role; this node grants your node `{}`",
                    p.role
                ),
            )
            .into_response();
        }
        req.extensions_mut().insert(p);
        return next.run(req).await;
    }
    let Some(needed) = required_role(
        req.method(),
        &route,
        state.config.boot().config.api.metrics_auth,
    ) else {
        return next.run(req).await;
    };
    if !state.auth.enabled() {
        return next.run(req).await;
    }
    let principal: Principal = match bearer(req.headers()) {
        Err(e) => {
            crate::metrics::Metrics::outcome(&state.metrics.auth_failures, auth_reason(e));
            return unauthorized(&state, req.headers(), e);
        }
        Ok(token) => match state.auth.authenticate(token).await {
            Ok(p) => p,
            Err(e) => {
                crate::metrics::Metrics::outcome(&state.metrics.auth_failures, auth_reason(e));
                if matches!(e, AuthError::NoRole) {
                    // An authentic token that maps to no role: the caller is known, but has
                    // no access (RFC 6750 §3.1 insufficient_scope), not "log in again".
                    tracing::info!(route = %route, "request refused: the token maps to no role");
                    return forbidden(e.to_string(), needed);
                }
                tracing::info!(reason = %e, route = %route, "request refused: invalid token");
                return unauthorized(&state, req.headers(), e);
            }
        },
    };
    if principal.role < needed {
        tracing::info!(sub = %principal.sub, role = %principal.role, needed = %needed, route = %route, "request refused: role too small");
        return forbidden(
            format!(
                "this needs the `{needed}` role; the token grants `{}`",
                principal.role
            ),
            needed,
        );
    }
    tracing::Span::current().record("sub", principal.sub.as_str());
    req.extensions_mut().insert(principal);
    next.run(req).await
}

fn auth_reason(e: AuthError) -> &'static str {
    match e {
        AuthError::Missing => "missing",
        AuthError::TooLarge => "too_large",
        AuthError::Malformed => "malformed",
        AuthError::Algorithm => "algorithm",
        AuthError::UnknownKey => "unknown_key",
        AuthError::Signature => "signature",
        AuthError::Expired => "expired",
        AuthError::NotYetValid => "not_yet_valid",
        AuthError::Issuer => "issuer",
        AuthError::Audience => "audience",
        AuthError::MissingClaim => "missing_claim",
        AuthError::NoRole => "no_role",
        AuthError::ProviderUnavailable => "provider_unavailable",
    }
}

/// `GET /.well-known/oauth-protected-resource` (RFC 9728).
pub async fn metadata(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let resource = base_url(&headers, state.config.boot().config.api.tls.is_some());
    let servers: Vec<&str> = state
        .auth
        .oidc()
        .map(|o| vec![o.issuer()])
        .unwrap_or_default();
    super::json(
        StatusCode::OK,
        json!({
            "resource": resource,
            "authorization_servers": servers,
            "bearer_methods_supported": ["header"],
            "scopes_supported": ["kos:viewer", "kos:agent", "kos:operator", "kos:admin"],
            "resource_name": format!("kOS node {}", state.identity.id()),
            "resource_documentation": "https://example.invalid/kos-node/README.md#http-api",
        }),
    )
}

/// The caller, for handlers that record who did something.
pub fn actor(p: Option<&Principal>) -> String {
    match p {
        Some(p) => format!("{}:{}", p.source, p.sub),
        None => "api".into(),
    }
}

/// Marks a request that came from a peer over KLP (set only by the node itself, never from
/// HTTP input), with the peer as principal.
#[derive(Clone, Debug)]
pub struct RemoteCaller(pub Principal);
