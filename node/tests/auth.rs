#![allow(clippy::unwrap_used, clippy::expect_used)]
//! API authentication against in-process nodes on 127.0.0.1:0: JWT attacks, the JWKS cache
//! (rotation, refetch cooldown, single flight, no redirects), the role matrix of every
//! route, TLS from `kos init --tls-self-signed`, and no secrets in logs.
//!
//! The OIDC provider here is a small fake (discovery + JWKS on loopback, keys swappable at
//! run time, hits counted); the real-provider test is `tests/tests/oidc.rs`.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{StatusCode as AxStatus, header};
use axum::response::{IntoResponse, Response as AxResponse};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use kos_config::{LoadOptions, ProfileKind};
use kos_node::auth::local::{IssueKey, TokenKey, issue, mint_named};
use kos_node::auth::{AuthError, LocalClaims, Role};
use kos_node::daemon::{NodeOptions, RunningNode, capabilities, install_crypto_provider, start};
use reqwest::{Client, Method, Response, StatusCode};
use serde_json::{Value, json};

const KOS: &str = env!("CARGO_BIN_EXE_kos");
const AUDIENCE: &str = "kos-test-client";
const ROLES: [Role; 4] = [Role::Viewer, Role::Agent, Role::Operator, Role::Admin];
/// An HS256 secret (>= 32 bytes) that must never show up anywhere.
const SECRET: &str = "s3cr3t-Hs256-VALUE-that-must-never-leak-0123456789";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

// --- a fake OIDC provider ------------------------------------------------------------------

/// Where the provider answers with a redirect instead of the document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Redirect {
    No,
    Discovery,
    Jwks,
}

#[derive(Debug)]
struct ProviderState {
    issuer: String,
    keys: RwLock<Vec<Value>>,
    redirect: Redirect,
    discovery_hits: AtomicU64,
    jwks_hits: AtomicU64,
    /// Hits on the redirect targets (`/moved/...`), which serve valid documents.
    moved_hits: AtomicU64,
}

#[derive(Debug)]
struct FakeProvider {
    state: Arc<ProviderState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn discovery(State(p): State<Arc<ProviderState>>) -> AxResponse {
    p.discovery_hits.fetch_add(1, Ordering::SeqCst);
    if p.redirect == Redirect::Discovery {
        return (
            AxStatus::FOUND,
            [(
                header::LOCATION,
                format!("{}/moved/.well-known/openid-configuration", p.issuer),
            )],
        )
            .into_response();
    }
    axum::Json(json!({
        "issuer": p.issuer,
        "jwks_uri": format!("{}/jwks", p.issuer),
        "id_token_signing_alg_values_supported": ["RS256"],
    }))
    .into_response()
}

async fn moved_discovery(State(p): State<Arc<ProviderState>>) -> AxResponse {
    p.moved_hits.fetch_add(1, Ordering::SeqCst);
    axum::Json(json!({"issuer": p.issuer, "jwks_uri": format!("{}/moved/jwks", p.issuer)}))
        .into_response()
}

async fn jwks(State(p): State<Arc<ProviderState>>) -> AxResponse {
    p.jwks_hits.fetch_add(1, Ordering::SeqCst);
    if p.redirect == Redirect::Jwks {
        return (
            AxStatus::FOUND,
            [(header::LOCATION, format!("{}/moved/jwks", p.issuer))],
        )
            .into_response();
    }
    let keys = p.keys.read().unwrap().clone();
    axum::Json(json!({ "keys": keys })).into_response()
}

async fn moved_jwks(State(p): State<Arc<ProviderState>>) -> AxResponse {
    p.moved_hits.fetch_add(1, Ordering::SeqCst);
    let keys = p.keys.read().unwrap().clone();
    axum::Json(json!({ "keys": keys })).into_response()
}

impl FakeProvider {
    async fn start(redirect: Redirect, keys: &[&RsaKey]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(ProviderState {
            issuer,
            keys: RwLock::new(keys.iter().map(|k| k.jwk.clone()).collect()),
            redirect,
            discovery_hits: AtomicU64::new(0),
            jwks_hits: AtomicU64::new(0),
            moved_hits: AtomicU64::new(0),
        });
        let app = axum::Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route(
                "/moved/.well-known/openid-configuration",
                get(moved_discovery),
            )
            .route("/moved/jwks", get(moved_jwks))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { state, task }
    }

    fn issuer(&self) -> &str {
        &self.state.issuer
    }

    fn set_keys(&self, keys: &[&RsaKey]) {
        *self.state.keys.write().unwrap() = keys.iter().map(|k| k.jwk.clone()).collect();
    }

    fn jwks_hits(&self) -> u64 {
        self.state.jwks_hits.load(Ordering::SeqCst)
    }

    fn discovery_hits(&self) -> u64 {
        self.state.discovery_hits.load(Ordering::SeqCst)
    }

    fn moved_hits(&self) -> u64 {
        self.state.moved_hits.load(Ordering::SeqCst)
    }
}

/// A provider signing key: RSA 2048 from rcgen (aws-lc-rs), published as an RS256 JWK.
struct RsaKey {
    kid: String,
    enc: EncodingKey,
    jwk: Value,
    public_pem: String,
    public_der: Vec<u8>,
}

fn rsa_key(kid: &str) -> RsaKey {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let enc = EncodingKey::from_rsa_pem(kp.serialize_pem().as_bytes()).unwrap();
    let mut jwk =
        serde_json::to_value(Jwk::from_encoding_key(&enc, Algorithm::RS256).unwrap()).unwrap();
    jwk["kid"] = json!(kid);
    jwk["use"] = json!("sig");
    assert_eq!(jwk["alg"], "RS256", "{jwk}");
    RsaKey {
        kid: kid.into(),
        enc,
        jwk,
        public_pem: kp.public_key_pem(),
        public_der: rcgen::PublicKeyData::subject_public_key_info(&kp),
    }
}

fn oidc_claims(issuer: &str, roles: &[&str]) -> Value {
    let t = now();
    json!({
        "iss": issuer,
        "aud": AUDIENCE,
        "sub": "alice",
        "iat": t,
        "nbf": t,
        "exp": t + 600,
        "roles": roles,
    })
}

fn sign(alg: Algorithm, kid: &str, claims: &Value, key: &EncodingKey) -> String {
    let mut h = Header::new(alg);
    h.kid = Some(kid.into());
    encode(&h, claims, key).unwrap()
}

fn oidc_section(issuer: &str, algorithms: &str, cooldown: &str) -> String {
    format!(
        "auth:\n  jwt: enabled\n  oidc:\n    mode: optional\n    issuer: {issuer}\n    audience: {AUDIENCE}\n    roles_claim: roles\n    role_map:\n      kos-admins: admin\n    default_role: viewer\n    algorithms: [{algorithms}]\n    jwks_refresh_cooldown: {cooldown}\n"
    )
}

// --- in-process nodes ----------------------------------------------------------------------

/// Replaces the top-level `auth:` section of a profile with `section`.
fn replace_auth_section(profile: &str, section: &str) -> String {
    let mut out = String::new();
    let mut in_auth = false;
    for line in profile.lines() {
        if !line.is_empty() && !line.starts_with([' ', '\t', '#']) {
            in_auth = line.starts_with("auth:");
        }
        if !in_auth {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push('\n');
    out.push_str(section);
    out
}

fn env_map(env: &[(&str, &str)]) -> BTreeMap<String, String> {
    env.iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

struct Node {
    node: RunningNode,
    base: String,
    dir: tempfile::TempDir,
    id: String,
    http: Client,
}

impl Node {
    /// A standalone node; `auth` replaces the profile's `auth:` section; `env` is the
    /// process environment the configuration is loaded with.
    async fn start(auth: Option<&str>, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        kos_config::layout::init_layout(dir.path(), ProfileKind::Standalone).unwrap();
        if let Some(section) = auth {
            let path = dir.path().join("profiles/standalone.yaml");
            let profile = replace_auth_section(&std::fs::read_to_string(&path).unwrap(), section);
            std::fs::write(&path, profile).unwrap();
        }
        Self::start_in(dir, env).await
    }

    async fn start_in(dir: tempfile::TempDir, env: &[(&str, &str)]) -> Self {
        let node = start({
            let mut o = NodeOptions::local(dir.path().to_path_buf());
            o.load.env = env_map(env);
            o
        })
        .await
        .unwrap();
        let base = format!("http://{}", node.addr);
        let id = node.state.identity.id().to_string();
        Self {
            node,
            base,
            dir,
            id,
            http: Client::new(),
        }
    }

    /// A local token for `role`, signed the way the configuration says.
    fn token(&self, role: Role) -> String {
        let config = self.node.state.config.current().config.clone();
        mint_named(
            self.dir.path(),
            &config,
            &self.id,
            &format!("test-{role}"),
            role,
            Duration::from_secs(600),
        )
        .unwrap()
        .expect("local tokens are enabled")
    }

    /// A local EdDSA token with chosen times, signed with this node's token key.
    fn local_token_at(&self, role: Role, nbf: u64, exp: u64) -> String {
        let pem = std::fs::read(TokenKey::path(self.dir.path())).unwrap();
        let key = EncodingKey::from_ed_pem(&pem).unwrap();
        let kid = TokenKey::load_or_create(self.dir.path()).unwrap().kid();
        let iss = format!("kos-node:{}", self.id);
        let claims = LocalClaims {
            iss: iss.clone(),
            aud: iss,
            sub: "hand-made".into(),
            exp,
            iat: nbf,
            nbf,
            jti: "0011".into(),
            role,
        };
        sign(
            Algorithm::EdDSA,
            &kid,
            &serde_json::to_value(claims).unwrap(),
            &key,
        )
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Response {
        let mut rb = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        rb.send().await.unwrap()
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Response {
        self.call(Method::GET, path, token, None).await
    }

    fn metadata_url(&self) -> String {
        format!("{}/.well-known/oauth-protected-resource", self.base)
    }
}

fn www_authenticate(r: &Response) -> String {
    r.headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// 401 with an `invalid_token` challenge and a problem+json naming `why`.
async fn assert_refused(r: Response, why: AuthError, what: &str) {
    let status = r.status();
    let www = www_authenticate(&r);
    let ct = r.headers().get("content-type").cloned();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
    assert!(
        www.starts_with("Bearer ") && www.contains("error=\"invalid_token\""),
        "{what}: {www}"
    );
    assert!(
        www.contains(&format!("error_description=\"{why}\"")),
        "{what}: {www}"
    );
    assert!(www.contains("resource_metadata=\""), "{what}: {www}");
    assert_eq!(ct.unwrap(), "application/problem+json", "{what}");
    assert_eq!(body["status"], 401, "{what}: {body}");
    assert_eq!(
        body["type"], "urn:kos:problem:unauthorized",
        "{what}: {body}"
    );
    assert_eq!(body["detail"], why.to_string(), "{what}: {body}");
}

async fn assert_ok(r: Response, what: &str) -> Value {
    let status = r.status();
    let body = r.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{what}: {body}");
    serde_json::from_str(&body).unwrap_or(Value::Null)
}

async fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// --- 2. JWT attacks ------------------------------------------------------------------------

#[tokio::test]
async fn every_jwt_attack_is_refused_with_401() {
    let k1 = rsa_key("k1");
    let provider = FakeProvider::start(Redirect::No, &[&k1]).await;
    let issuer = provider.issuer().to_string();
    // RS256, PS256 and ES256 are accepted in general, so a PS256/ES256 header on the RS256
    // key is refused by the per-key algorithm pin, not by the list.
    let n = Node::start(
        Some(&oidc_section(&issuer, "RS256, PS256, ES256", "30s")),
        &[],
    )
    .await;
    let status = "/api/config/status";
    let claims = oidc_claims(&issuer, &["kos-admins"]);

    // Baselines: a good provider token (admin) and a good local EdDSA token.
    let good = sign(Algorithm::RS256, "k1", &claims, &k1.enc);
    assert_ok(n.get(status, Some(&good)).await, "valid OIDC token").await;
    let local = n.token(Role::Admin);
    assert_ok(n.get(status, Some(&local)).await, "local EdDSA token").await;
    assert_eq!(
        jsonwebtoken::decode_header(&local).unwrap().alg,
        Algorithm::EdDSA
    );
    // Without a mapped role the default (viewer) applies: reads, no apply.
    let plain = sign(
        Algorithm::RS256,
        "k1",
        &oidc_claims(&issuer, &["nobody"]),
        &k1.enc,
    );
    assert_ok(n.get(status, Some(&plain)).await, "default role").await;
    let r = n
        .call(Method::POST, "/api/config/apply", Some(&plain), Some("{}"))
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // No token: a challenge without an error code (RFC 6750 3.1).
    let r = n.get(status, None).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let www = www_authenticate(&r);
    assert!(
        www.starts_with("Bearer ") && !www.contains("error="),
        "{www}"
    );

    // alg: none, with and without a signature part, in several spellings.
    for alg in ["none", "None", "NONE"] {
        let h = b64(&json!({"alg": alg, "typ": "JWT"}));
        for tail in ["", "c2lnbmF0dXJl"] {
            let t = format!("{h}.{}.{tail}", b64(&claims));
            assert_refused(
                n.get(status, Some(&t)).await,
                AuthError::Algorithm,
                &format!("alg {alg}"),
            )
            .await;
        }
    }
    // Same, with the provider's kid.
    let t = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "kid": "k1"})),
        b64(&claims)
    );
    assert_refused(
        n.get(status, Some(&t)).await,
        AuthError::Algorithm,
        "alg none + kid",
    )
    .await;

    // Key confusion: HS256 with the RSA public key (PEM, DER) as the HMAC secret.
    for secret in [k1.public_pem.as_bytes(), k1.public_der.as_slice()] {
        let t = sign(
            Algorithm::HS256,
            "k1",
            &claims,
            &EncodingKey::from_secret(secret),
        );
        assert_refused(
            n.get(status, Some(&t)).await,
            AuthError::Algorithm,
            "HS256 key confusion",
        )
        .await;
    }

    // Claims.
    let mut c = claims.clone();
    c["iss"] = json!("http://127.0.0.1:1");
    assert_refused(
        n.get(status, Some(&sign(Algorithm::RS256, "k1", &c, &k1.enc)))
            .await,
        AuthError::Issuer,
        "wrong iss",
    )
    .await;
    let mut c = claims.clone();
    c["aud"] = json!("someone-else");
    assert_refused(
        n.get(status, Some(&sign(Algorithm::RS256, "k1", &c, &k1.enc)))
            .await,
        AuthError::Audience,
        "wrong aud",
    )
    .await;
    let t0 = now();
    let mut c = claims.clone();
    c["iat"] = json!(t0 - 3600);
    c["nbf"] = json!(t0 - 3600);
    c["exp"] = json!(t0 - 120); // leeway is 30 s
    assert_refused(
        n.get(status, Some(&sign(Algorithm::RS256, "k1", &c, &k1.enc)))
            .await,
        AuthError::Expired,
        "expired",
    )
    .await;
    let mut c = claims.clone();
    c["nbf"] = json!(t0 + 120);
    assert_refused(
        n.get(status, Some(&sign(Algorithm::RS256, "k1", &c, &k1.enc)))
            .await,
        AuthError::NotYetValid,
        "nbf in the future",
    )
    .await;
    let mut c = claims.clone();
    c.as_object_mut().unwrap().remove("exp");
    assert_refused(
        n.get(status, Some(&sign(Algorithm::RS256, "k1", &c, &k1.enc)))
            .await,
        AuthError::MissingClaim,
        "no exp",
    )
    .await;
    // Within the leeway: accepted.
    let mut c = claims.clone();
    c["exp"] = json!(t0 - 10);
    assert_ok(
        n.get(status, Some(&sign(Algorithm::RS256, "k1", &c, &k1.enc)))
            .await,
        "OIDC token expired 10 s ago (leeway 30 s)",
    )
    .await;
    let mut c = claims.clone();
    c["nbf"] = json!(t0 + 10);
    assert_ok(
        n.get(status, Some(&sign(Algorithm::RS256, "k1", &c, &k1.enc)))
            .await,
        "OIDC token valid in 10 s (leeway 30 s)",
    )
    .await;

    // Tampered payload: the viewer token's signature on an admin payload.
    let viewer = sign(Algorithm::RS256, "k1", &oidc_claims(&issuer, &[]), &k1.enc);
    let v: Vec<&str> = viewer.split('.').collect();
    let a: Vec<&str> = good.split('.').collect();
    let forged = format!("{}.{}.{}", v[0], a[1], v[2]);
    assert_refused(
        n.get(status, Some(&forged)).await,
        AuthError::Signature,
        "tampered payload",
    )
    .await;
    // A flipped signature byte.
    let mut sig = URL_SAFE_NO_PAD.decode(a[2]).unwrap();
    sig[10] ^= 1;
    let flipped = format!("{}.{}.{}", a[0], a[1], URL_SAFE_NO_PAD.encode(sig));
    assert_refused(
        n.get(status, Some(&flipped)).await,
        AuthError::Signature,
        "flipped signature",
    )
    .await;

    // Unknown kid (signed with the real key), and no kid at all.
    assert_refused(
        n.get(
            status,
            Some(&sign(Algorithm::RS256, "no-such-kid", &claims, &k1.enc)),
        )
        .await,
        AuthError::UnknownKey,
        "unknown kid",
    )
    .await;
    let no_kid = encode(&Header::new(Algorithm::RS256), &claims, &k1.enc).unwrap();
    assert_refused(
        n.get(status, Some(&no_kid)).await,
        AuthError::UnknownKey,
        "no kid",
    )
    .await;

    // kid/alg mismatch: PS256 with the very RS256 key (a valid PSS signature), and ES256.
    assert_refused(
        n.get(
            status,
            Some(&sign(Algorithm::PS256, "k1", &claims, &k1.enc)),
        )
        .await,
        AuthError::Algorithm,
        "PS256 on an RS256 key",
    )
    .await;
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let ec = EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).unwrap();
    assert_refused(
        n.get(status, Some(&sign(Algorithm::ES256, "k1", &claims, &ec)))
            .await,
        AuthError::Algorithm,
        "ES256 on an RS256 key",
    )
    .await;
    // An algorithm the node does not accept at all.
    assert_refused(
        n.get(
            status,
            Some(&sign(Algorithm::RS384, "k1", &claims, &k1.enc)),
        )
        .await,
        AuthError::Algorithm,
        "RS384 not accepted",
    )
    .await;

    // Oversized (validly signed, > 8 KiB).
    let mut c = claims.clone();
    c["pad"] = json!("x".repeat(9000));
    let big = sign(Algorithm::RS256, "k1", &c, &k1.enc);
    assert!(big.len() > kos_node::auth::MAX_TOKEN_BYTES);
    assert_refused(
        n.get(status, Some(&big)).await,
        AuthError::TooLarge,
        "oversized token",
    )
    .await;

    // Garbage.
    assert_refused(
        n.get(status, Some("not-a-jwt")).await,
        AuthError::Malformed,
        "garbage",
    )
    .await;

    // A local token from another node's token key is refused (EdDSA is not an OIDC
    // algorithm here); one that forges this node's kid fails its signature.
    let other = tempfile::tempdir().unwrap();
    let other_key = TokenKey::load_or_create(other.path()).unwrap();
    let foreign = issue(
        IssueKey::Eddsa(&other_key),
        &n.id,
        "mallory",
        Role::Admin,
        Duration::from_secs(600),
    )
    .unwrap();
    assert_refused(
        n.get(status, Some(&foreign)).await,
        AuthError::Algorithm,
        "local token from another token key",
    )
    .await;
    let our_kid = TokenKey::load_or_create(n.dir.path()).unwrap().kid();
    let forged_kid = sign(
        Algorithm::EdDSA,
        &our_kid,
        &serde_json::to_value(LocalClaims {
            iss: format!("kos-node:{}", n.id),
            aud: format!("kos-node:{}", n.id),
            sub: "mallory".into(),
            exp: now() + 600,
            iat: now(),
            nbf: now(),
            jti: "1".into(),
            role: Role::Admin,
        })
        .unwrap(),
        &EncodingKey::from_ed_pem(&std::fs::read(TokenKey::path(other.path())).unwrap()).unwrap(),
    );
    assert_refused(
        n.get(status, Some(&forged_kid)).await,
        AuthError::Signature,
        "another key with this node's kid",
    )
    .await;
    // Local tokens in and just outside the leeway.
    let t0 = now();
    assert_ok(
        n.get(
            status,
            Some(&n.local_token_at(Role::Viewer, t0 - 600, t0 - 10)),
        )
        .await,
        "local token expired 10 s ago",
    )
    .await;
    assert_refused(
        n.get(
            status,
            Some(&n.local_token_at(Role::Viewer, t0 - 600, t0 - 120)),
        )
        .await,
        AuthError::Expired,
        "local token expired 120 s ago",
    )
    .await;
    assert_refused(
        n.get(
            status,
            Some(&n.local_token_at(Role::Viewer, t0 + 120, t0 + 600)),
        )
        .await,
        AuthError::NotYetValid,
        "local token valid in 120 s",
    )
    .await;

    // The failures are counted by reason.
    let m = n.get("/metrics", None).await.text().await.unwrap();
    assert!(
        m.contains("kos_auth_failures_total{outcome=\"algorithm\"}"),
        "{m}"
    );
    assert!(
        m.contains("kos_auth_failures_total{outcome=\"too_large\"}"),
        "{m}"
    );
    n.node.stop().await.unwrap();
}

#[tokio::test]
async fn local_tokens_only_eddsa_and_hs256() {
    // EdDSA, no OIDC: a token from another token key has an unknown key.
    let n = Node::start(Some("auth:\n  jwt: enabled\n"), &[]).await;
    assert_ok(
        n.get("/api/config/status", Some(&n.token(Role::Viewer)))
            .await,
        "EdDSA",
    )
    .await;
    let other = tempfile::tempdir().unwrap();
    let foreign = issue(
        IssueKey::Eddsa(&TokenKey::load_or_create(other.path()).unwrap()),
        &n.id,
        "mallory",
        Role::Admin,
        Duration::from_secs(600),
    )
    .unwrap();
    assert_refused(
        n.get("/api/config/status", Some(&foreign)).await,
        AuthError::UnknownKey,
        "another token key",
    )
    .await;
    // A token for another node (issuer/audience) signed with this key is refused.
    let wrong_node = issue(
        IssueKey::Eddsa(&TokenKey::load_or_create(n.dir.path()).unwrap()),
        "12D3KooWSomeoneElse",
        "x",
        Role::Admin,
        Duration::from_secs(600),
    )
    .unwrap();
    assert_refused(
        n.get("/api/config/status", Some(&wrong_node)).await,
        AuthError::Issuer,
        "token for another node",
    )
    .await;
    // HS256 and RS256 tokens are refused without OIDC.
    let hs = issue(
        IssueKey::Hs256(SECRET.as_bytes()),
        &n.id,
        "x",
        Role::Admin,
        Duration::from_secs(600),
    )
    .unwrap();
    assert_refused(
        n.get("/api/config/status", Some(&hs)).await,
        AuthError::UnknownKey,
        "HS256 on an EdDSA node",
    )
    .await;
    n.node.stop().await.unwrap();

    // HS256 with a 32+ byte secret from the environment.
    let n = Node::start(
        None,
        &[
            ("KOS_AUTH__JWT", "enabled"),
            ("KOS_AUTH__JWT_ALGORITHM", "hs256"),
            ("KOS_AUTH__JWT_SECRET", SECRET),
        ],
    )
    .await;
    let t = n.token(Role::Admin);
    assert_eq!(
        jsonwebtoken::decode_header(&t).unwrap().alg,
        Algorithm::HS256
    );
    assert_ok(n.get("/api/config/status", Some(&t)).await, "HS256").await;
    // No token key is created in HS256 mode.
    assert!(!TokenKey::path(n.dir.path()).exists());
    // Another secret: bad signature.
    let wrong = issue(
        IssueKey::Hs256(b"another-secret-of-at-least-32-bytes!!"),
        &n.id,
        "x",
        Role::Admin,
        Duration::from_secs(600),
    )
    .unwrap();
    assert_refused(
        n.get("/api/config/status", Some(&wrong)).await,
        AuthError::Signature,
        "HS256 with another secret",
    )
    .await;
    // An EdDSA token on an HS256 node.
    let other = tempfile::tempdir().unwrap();
    let ed = issue(
        IssueKey::Eddsa(&TokenKey::load_or_create(other.path()).unwrap()),
        &n.id,
        "x",
        Role::Admin,
        Duration::from_secs(600),
    )
    .unwrap();
    assert_refused(
        n.get("/api/config/status", Some(&ed)).await,
        AuthError::UnknownKey,
        "EdDSA on an HS256 node",
    )
    .await;
    n.node.stop().await.unwrap();

    // A short secret is a configuration error: the node does not start.
    let dir = tempfile::tempdir().unwrap();
    kos_config::layout::init_layout(dir.path(), ProfileKind::Standalone).unwrap();
    let err = start(NodeOptions {
        dir: dir.path().to_path_buf(),
        load: LoadOptions {
            env: env_map(&[
                ("KOS_AUTH__JWT", "enabled"),
                ("KOS_AUTH__JWT_ALGORITHM", "hs256"),
                ("KOS_AUTH__JWT_SECRET", "short"),
            ]),
            capabilities: capabilities(),
            profile: None,
        },
        create_if_missing: false,
        listen_override: Some("127.0.0.1:0".parse().unwrap()),
        log_reloader: None,
    })
    .await
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("at least 32 bytes"), "{msg}");
    assert!(
        !msg.contains("short\n") && !msg.contains("`short`"),
        "{msg}"
    );
}

// --- 3. JWKS rotation, cooldown, single flight, redirects ----------------------------------

/// `default_role: null` refuses authentic OIDC tokens whose roles map to nothing, with 403
/// (issue 10: the null used to read as "missing", so such tokens got `viewer`).
#[tokio::test]
async fn oidc_default_role_null_refuses_unmapped_tokens() {
    let k1 = rsa_key("key-1");
    let provider = FakeProvider::start(Redirect::No, &[&k1]).await;
    let issuer = provider.issuer().to_string();
    let section =
        oidc_section(&issuer, "RS256", "30s").replace("default_role: viewer", "default_role: null");
    let n = Node::start(Some(&section), &[]).await;
    assert_eq!(
        n.node.state.config.current().config.auth.oidc.default_role,
        None
    );
    let status = "/api/config/status";
    let mapped = sign(
        Algorithm::RS256,
        &k1.kid,
        &oidc_claims(&issuer, &["kos-admins"]),
        &k1.enc,
    );
    assert_ok(n.get(status, Some(&mapped)).await, "a mapped role").await;
    for roles in [&["staff"][..], &[][..]] {
        let t = sign(
            Algorithm::RS256,
            &k1.kid,
            &oidc_claims(&issuer, roles),
            &k1.enc,
        );
        let r = n.get(status, Some(&t)).await;
        let www = www_authenticate(&r);
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "roles {roles:?}");
        assert!(www.contains("error=\"insufficient_scope\""), "{www}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["type"], "urn:kos:problem:insufficient-scope", "{body}");
        assert_eq!(body["detail"], AuthError::NoRole.to_string(), "{body}");
    }
    // The same provider with the default role keeps granting `viewer` to such tokens.
    let n2 = Node::start(Some(&oidc_section(&issuer, "RS256", "30s")), &[]).await;
    let t = sign(
        Algorithm::RS256,
        &k1.kid,
        &oidc_claims(&issuer, &["staff"]),
        &k1.enc,
    );
    assert_ok(n2.get(status, Some(&t)).await, "default viewer").await;
    let r = n2
        .call(Method::POST, "/api/peers/dial", Some(&t), Some("{}"))
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "viewer cannot dial");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jwks_rotation_cooldown_and_single_flight() {
    const COOLDOWN: Duration = Duration::from_secs(2);
    let k1 = rsa_key("key-1");
    let k2 = rsa_key("key-2");
    let provider = FakeProvider::start(Redirect::No, &[&k1]).await;
    let issuer = provider.issuer().to_string();
    let n = Node::start(Some(&oidc_section(&issuer, "RS256", "2s")), &[]).await;
    let o = n.node.state.auth.oidc().unwrap().clone();
    let claims = oidc_claims(&issuer, &["kos-admins"]);
    let status = "/api/config/status";

    // The node loads the keys once at start.
    wait_until("initial JWKS fetch", Duration::from_secs(10), || {
        provider.jwks_hits() == 1 && o.fetches() == 1
    })
    .await;
    let t1 = sign(Algorithm::RS256, &k1.kid, &claims, &k1.enc);
    assert_ok(n.get(status, Some(&t1)).await, "key-1").await;
    let hits = n.node.state.auth.cache_stats().hits;
    assert_ok(n.get(status, Some(&t1)).await, "key-1 again").await;
    assert_eq!(provider.jwks_hits(), 1, "known keys come from the cache");
    assert_eq!(
        n.node.state.auth.cache_stats().hits,
        hits + 1,
        "a verified token is not verified again"
    );
    let generation = o.key_generation();

    // Rotation: the provider now publishes key-2 only. After the cooldown since the start
    // fetch, a key-2 token costs exactly one fetch.
    provider.set_keys(&[&k2]);
    tokio::time::sleep(COOLDOWN + Duration::from_millis(300)).await;
    let t2 = sign(Algorithm::RS256, &k2.kid, &claims, &k2.enc);
    assert_ok(n.get(status, Some(&t2)).await, "key-2 after rotation").await;
    assert_eq!(provider.jwks_hits(), 2);
    assert_eq!(o.fetches(), 2);
    assert_ne!(o.key_generation(), generation, "the key set changed");
    assert_eq!(provider.discovery_hits(), 2);
    assert_ok(n.get(status, Some(&t2)).await, "key-2 again").await;
    assert_eq!(provider.jwks_hits(), 2);
    // key-1 is gone from the JWKS and so from the cache (no fetch: within the cooldown).
    assert_refused(
        n.get(status, Some(&t1)).await,
        AuthError::UnknownKey,
        "key-1 after rotation",
    )
    .await;
    assert_eq!(provider.jwks_hits(), 2);

    let flood = |tag: &'static str| {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..50 {
            let http = n.http.clone();
            let url = format!("{}{status}", n.base);
            let t = sign(
                Algorithm::RS256,
                &format!("{tag}-unknown-{i}"),
                &claims,
                &k2.enc,
            );
            set.spawn(async move {
                let r = http.get(url).bearer_auth(t).send().await.unwrap();
                let code = r.status();
                let body: Value = r.json().await.unwrap();
                (code, body)
            });
        }
        set
    };

    // 50 concurrent unknown kids within the cooldown: no fetch at all.
    let mut set = flood("a");
    while let Some(r) = set.join_next().await {
        let (code, body) = r.unwrap();
        assert_eq!(code, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(body["detail"], AuthError::UnknownKey.to_string());
    }
    assert_eq!(
        provider.jwks_hits(),
        2,
        "unknown kids within the cooldown fetch nothing"
    );

    // After the cooldown: 50 concurrent unknown kids share exactly one fetch.
    let generation = o.key_generation();
    tokio::time::sleep(COOLDOWN + Duration::from_millis(300)).await;
    let mut set = flood("b");
    while let Some(r) = set.join_next().await {
        let (code, body) = r.unwrap();
        assert_eq!(code, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(body["detail"], AuthError::UnknownKey.to_string());
    }
    assert_eq!(provider.jwks_hits(), 3, "one fetch for the whole flood");
    assert_eq!(o.fetches(), 3);
    assert_eq!(
        o.key_generation(),
        generation,
        "a refetch that finds the same keys keeps cached verifications"
    );
    // And again at once: nothing more.
    let mut set = flood("c");
    while set.join_next().await.is_some() {}
    assert_eq!(provider.jwks_hits(), 3);

    // After the cooldown one more fetch is allowed.
    tokio::time::sleep(COOLDOWN + Duration::from_millis(300)).await;
    assert_refused(
        n.get(
            status,
            Some(&sign(Algorithm::RS256, "late-unknown", &claims, &k2.enc)),
        )
        .await,
        AuthError::UnknownKey,
        "unknown kid after the cooldown",
    )
    .await;
    assert_eq!(provider.jwks_hits(), 4);
    assert_eq!(o.fetches(), 4);
    // Known keys still work without fetching.
    assert_ok(n.get(status, Some(&t2)).await, "key-2 at the end").await;
    assert_eq!(provider.jwks_hits(), 4);
    n.node.stop().await.unwrap();
}

#[tokio::test]
async fn discovery_and_jwks_redirects_are_not_followed() {
    for mode in [Redirect::Jwks, Redirect::Discovery] {
        let k1 = rsa_key("k1");
        let provider = FakeProvider::start(mode, &[&k1]).await;
        let issuer = provider.issuer().to_string();
        let n = Node::start(Some(&oidc_section(&issuer, "RS256", "1s")), &[]).await;
        let o = n.node.state.auth.oidc().unwrap().clone();
        // The start-up fetch has been tried (and failed).
        wait_until("start-up fetch", Duration::from_secs(10), || {
            o.fetches() == 1
                && match mode {
                    Redirect::Jwks => provider.jwks_hits() == 1,
                    _ => provider.discovery_hits() == 1,
                }
        })
        .await;
        let t = sign(
            Algorithm::RS256,
            "k1",
            &oidc_claims(&issuer, &["kos-admins"]),
            &k1.enc,
        );
        // Within the cooldown: the key is simply unknown.
        assert_refused(
            n.get("/api/config/status", Some(&t)).await,
            AuthError::UnknownKey,
            &format!("{mode:?}: within the cooldown"),
        )
        .await;
        // After it, the refetch meets the redirect again and does not follow it.
        tokio::time::sleep(Duration::from_millis(1300)).await;
        assert_refused(
            n.get("/api/config/status", Some(&t)).await,
            AuthError::ProviderUnavailable,
            &format!("{mode:?}: after the cooldown"),
        )
        .await;
        assert_eq!(o.fetches(), 2, "{mode:?}");
        assert_eq!(
            provider.moved_hits(),
            0,
            "{mode:?}: the redirect target was requested"
        );
        if mode == Redirect::Discovery {
            assert_eq!(provider.jwks_hits(), 0);
        }
        n.node.stop().await.unwrap();
    }
}

// --- 4. RBAC matrix ------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    Open,
    Role(Role),
}

struct RouteCase {
    method: Method,
    path: &'static str,
    body: Option<&'static str>,
    need: Need,
}

/// Every route of `api::router`, with a request that changes nothing even when allowed.
fn routes() -> Vec<RouteCase> {
    use Need::{Open, Role as R};
    let c =
        |method: Method, path: &'static str, body: Option<&'static str>, need: Need| RouteCase {
            method,
            path,
            body,
            need,
        };
    vec![
        c(Method::GET, "/healthz", None, Open),
        c(Method::GET, "/readyz", None, Open),
        c(
            Method::GET,
            "/.well-known/oauth-protected-resource",
            None,
            Open,
        ),
        c(Method::GET, "/metrics", None, Open),
        c(Method::GET, "/api/config/profile", None, R(Role::Viewer)),
        c(
            Method::PUT,
            "/api/config/validate",
            Some("{}"),
            R(Role::Viewer),
        ),
        c(Method::GET, "/api/config/diff", None, R(Role::Viewer)),
        // No If-Match: 428 for the admin.
        c(
            Method::POST,
            "/api/config/apply",
            Some("{}"),
            R(Role::Admin),
        ),
        c(Method::GET, "/api/config/status", None, R(Role::Viewer)),
        c(Method::GET, "/api/config/health", None, R(Role::Viewer)),
        c(Method::GET, "/api/config/history", None, R(Role::Viewer)),
        // Missing snapshot_id: 400 for the admin.
        c(
            Method::POST,
            "/api/config/rollback",
            Some("{}"),
            R(Role::Admin),
        ),
        c(Method::GET, "/api/profiles", None, R(Role::Viewer)),
        c(Method::POST, "/api/profiles", Some("{}"), R(Role::Admin)),
        c(
            Method::GET,
            "/api/profiles/standalone",
            None,
            R(Role::Viewer),
        ),
        c(
            Method::PUT,
            "/api/profiles/no_such_profile",
            Some("{}"),
            R(Role::Admin),
        ),
        c(
            Method::DELETE,
            "/api/profiles/no_such_profile",
            None,
            R(Role::Admin),
        ),
        c(Method::GET, "/api/events", None, R(Role::Viewer)),
        c(Method::GET, "/api/peers", None, R(Role::Viewer)),
        c(
            Method::POST,
            "/api/peers/dial",
            Some("{}"),
            R(Role::Operator),
        ),
        c(
            Method::GET,
            "/api/peers/12D3KooWNoSuchPeer",
            None,
            R(Role::Viewer),
        ),
        // Calling a peer acts with this node's identity: admin (409 here: no KLP).
        c(
            Method::POST,
            "/api/peers/12D3KooWNoSuchPeer/call",
            Some("{}"),
            R(Role::Admin),
        ),
        c(
            Method::GET,
            "/api/config/sources?path=api.listen",
            None,
            R(Role::Viewer),
        ),
        // Federation ops are admin-only (409 here: no KLP).
        c(
            Method::POST,
            "/api/peers/12D3KooWNoSuchPeer/approve",
            Some("{}"),
            R(Role::Admin),
        ),
        c(
            Method::POST,
            "/api/peers/12D3KooWNoSuchPeer/revoke",
            Some("{\"reason\": \"x\"}"),
            R(Role::Admin),
        ),
        c(
            Method::POST,
            "/api/config/publish",
            Some("{\"scope\": \"agents\", \"content\": \"agents: {}\"}"),
            R(Role::Admin),
        ),
        c(
            Method::POST,
            "/api/config/publish/rollback",
            Some("{\"scope\": \"agents\", \"snapshot_id\": \"x\"}"),
            R(Role::Admin),
        ),
        c(Method::GET, "/api/federation", None, R(Role::Viewer)),
        c(Method::GET, "/api/federation/log", None, R(Role::Viewer)),
        c(
            Method::POST,
            "/api/federation/ops",
            Some("{\"op\": \"\"}"),
            R(Role::Admin),
        ),
        c(
            Method::POST,
            "/api/federation/draft",
            Some("{}"),
            R(Role::Admin),
        ),
        c(
            Method::POST,
            "/api/federation/admins",
            Some("{}"),
            R(Role::Admin),
        ),
        // Vectors are admin only, reads included (409 here: no vector store configured).
        c(Method::GET, "/api/vectors", None, R(Role::Admin)),
        c(Method::POST, "/api/vectors", Some("{}"), R(Role::Admin)),
        c(Method::GET, "/api/vectors/docs", None, R(Role::Admin)),
        c(Method::DELETE, "/api/vectors/docs", None, R(Role::Admin)),
        c(
            Method::PUT,
            "/api/vectors/docs/points",
            Some(r#"{"points": []}"#),
            R(Role::Admin),
        ),
        c(
            Method::POST,
            "/api/vectors/docs/points/delete",
            Some(r#"{"ids": []}"#),
            R(Role::Admin),
        ),
        c(
            Method::POST,
            "/api/vectors/docs/search",
            Some(r#"{"vector": [1.0], "limit": 1}"#),
            R(Role::Admin),
        ),
    ]
}

#[tokio::test]
async fn rbac_matrix_of_every_route() {
    let n = Node::start(Some("auth:\n  jwt: enabled\n"), &[]).await;
    let tokens: Vec<(Role, String)> = ROLES.iter().map(|r| (*r, n.token(*r))).collect();
    let snapshot_before = n.node.state.config.current().snapshot_id.clone();
    for rc in routes() {
        let what = format!("{} {}", rc.method, rc.path);
        // No token.
        let r = n.call(rc.method.clone(), rc.path, None, rc.body).await;
        let code = r.status();
        let www = www_authenticate(&r);
        match rc.need {
            Need::Open => {
                assert!(code.is_success(), "{what} without a token: {code}");
                assert!(www.is_empty(), "{what}: {www}");
            }
            Need::Role(_) => {
                assert_eq!(code, StatusCode::UNAUTHORIZED, "{what} without a token");
                assert_eq!(
                    www,
                    format!(
                        "Bearer realm=\"kos\", resource_metadata=\"{}\"",
                        n.metadata_url()
                    ),
                    "{what}"
                );
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["detail"], AuthError::Missing.to_string(), "{what}");
            }
        }
        for (role, token) in &tokens {
            let r = n
                .call(rc.method.clone(), rc.path, Some(token), rc.body)
                .await;
            let code = r.status();
            let www = www_authenticate(&r);
            let allowed = match rc.need {
                Need::Open => true,
                Need::Role(needed) => *role >= needed,
            };
            if allowed {
                assert!(
                    code != StatusCode::UNAUTHORIZED
                        && code != StatusCode::FORBIDDEN
                        && !code.is_server_error(),
                    "{what} as {role}: {code} {}",
                    r.text().await.unwrap()
                );
            } else {
                let Need::Role(needed) = rc.need else {
                    unreachable!()
                };
                assert_eq!(code, StatusCode::FORBIDDEN, "{what} as {role}");
                assert_eq!(
                    www,
                    format!(
                        "Bearer realm=\"kos\", error=\"insufficient_scope\", scope=\"kos:{needed}\""
                    ),
                    "{what} as {role}"
                );
                assert_eq!(
                    r.headers()["content-type"],
                    "application/problem+json",
                    "{what}"
                );
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["status"], 403);
                assert_eq!(body["type"], "urn:kos:problem:insufficient-scope");
                let detail = body["detail"].as_str().unwrap();
                assert!(
                    detail.contains(&format!("`{needed}`"))
                        && detail.contains(&format!("`{role}`")),
                    "{detail}"
                );
            }
        }
    }
    // Nothing was changed by the matrix.
    assert_eq!(n.node.state.config.current().snapshot_id, snapshot_before);

    // The challenge's metadata URL is served without a token (RFC 9728).
    let r = n.http.get(n.metadata_url()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let m: Value = r.json().await.unwrap();
    assert_eq!(m["resource"], n.base);
    assert_eq!(m["authorization_servers"], json!([]));
    assert_eq!(m["bearer_methods_supported"], json!(["header"]));
    assert_eq!(
        m["scopes_supported"],
        json!(["kos:viewer", "kos:agent", "kos:operator", "kos:admin"])
    );
    assert!(m["resource_name"].as_str().unwrap().contains(&n.id), "{m}");
    // A bearer token that is not in the Authorization header does not count.
    let r = n
        .http
        .get(format!("{}/api/config/status", n.base))
        .query(&[("access_token", tokens[3].1.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // The Host header cannot inject parameters into the challenge or a path into the
    // metadata's resource.
    let r = n
        .http
        .get(format!("{}/api/config/status", n.base))
        .header("host", "evil\", error=\"injected")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let www = www_authenticate(&r);
    assert!(!www.contains("injected") && !www.contains("evil"), "{www}");
    let m: Value = n
        .http
        .get(n.metadata_url())
        .header("host", "evil.example/path?x=1")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(m["resource"], "http://localhost", "{m}");
    // Another scheme is no token.
    let r = n
        .http
        .get(format!("{}/api/config/status", n.base))
        .header("authorization", format!("Basic {}", tokens[3].1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    n.node.stop().await.unwrap();
}

#[tokio::test]
async fn metrics_auth_viewer_and_oidc_metadata() {
    let k1 = rsa_key("k1");
    let provider = FakeProvider::start(Redirect::No, &[&k1]).await;
    let issuer = provider.issuer().to_string();
    let n = Node::start(
        Some(&oidc_section(&issuer, "RS256", "30s")),
        &[("KOS_API__METRICS_AUTH", "viewer")],
    )
    .await;
    let r = n.get("/metrics", None).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(www_authenticate(&r).starts_with("Bearer "));
    for role in ROLES {
        let r = n.get("/metrics", Some(&n.token(role))).await;
        assert_eq!(r.status(), StatusCode::OK, "{role}");
        assert!(r.text().await.unwrap().contains("# TYPE"));
    }
    // An OIDC viewer too.
    let t = sign(Algorithm::RS256, "k1", &oidc_claims(&issuer, &[]), &k1.enc);
    assert_eq!(n.get("/metrics", Some(&t)).await.status(), StatusCode::OK);
    // Health stays open.
    assert_eq!(n.get("/healthz", None).await.status(), StatusCode::OK);
    assert_eq!(n.get("/readyz", None).await.status(), StatusCode::OK);
    let m: Value = n
        .get("/.well-known/oauth-protected-resource", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(m["authorization_servers"], json!([issuer]));
    assert_eq!(m["resource"], n.base);
    n.node.stop().await.unwrap();
}

#[tokio::test]
async fn without_auth_everything_is_open() {
    let n = Node::start(None, &[]).await;
    assert!(!n.node.state.auth.enabled());
    for rc in routes() {
        for token in [None, Some("garbage.token.value")] {
            let r = n.call(rc.method.clone(), rc.path, token, rc.body).await;
            let code = r.status();
            assert!(
                code != StatusCode::UNAUTHORIZED
                    && code != StatusCode::FORBIDDEN
                    && !code.is_server_error(),
                "{} {} (token {token:?}): {code}",
                rc.method,
                rc.path
            );
            assert!(!r.headers().contains_key("www-authenticate"));
        }
    }
    n.node.stop().await.unwrap();
}

// --- 5. TLS --------------------------------------------------------------------------------

#[tokio::test]
async fn tls_self_signed_from_kos_init() {
    install_crypto_provider();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let init = || {
        Command::new(KOS)
            .args(["init", "--tls-self-signed"])
            .env("KOS_HOME", &home)
            .env_remove("KOS_PROFILE")
            .env_remove("KOS_LOG")
            .output()
            .unwrap()
    };
    let out = init();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("created tls/cert.pem"), "{stdout}");
    let cert = std::fs::read(home.join("tls/cert.pem")).unwrap();
    let key = std::fs::read_to_string(home.join("tls/key.pem")).unwrap();
    assert!(String::from_utf8_lossy(&cert).starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(key.contains("PRIVATE KEY-----"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(home.join("tls/key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "key.pem mode {mode:o}");
    }
    let system_env = std::fs::read_to_string(home.join("system.env")).unwrap();
    assert!(
        system_env
            .lines()
            .any(|l| l.trim() == "KOS_API__TLS__CERT=tls/cert.pem"),
        "{system_env}"
    );
    assert!(
        system_env
            .lines()
            .any(|l| l.trim() == "KOS_API__TLS__KEY=tls/key.pem"),
        "{system_env}"
    );
    // A second init keeps them.
    let again = init();
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("kept    tls/cert.pem"));
    assert_eq!(std::fs::read(home.join("tls/cert.pem")).unwrap(), cert);
    assert_eq!(
        std::fs::read_to_string(home.join("system.env")).unwrap(),
        system_env
    );

    // The node serves HTTPS with it.
    let node = start(NodeOptions::local(home.clone())).await.unwrap();
    assert!(node.state.config.boot().config.api.tls.is_some());
    let port = node.addr.port();
    let https = Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&cert).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for host in ["127.0.0.1", "localhost"] {
        let r = https
            .get(format!("https://{host}:{port}/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{host}");
    }
    let m: Value = https
        .get(format!(
            "https://127.0.0.1:{port}/.well-known/oauth-protected-resource"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(m["resource"], format!("https://127.0.0.1:{port}"));

    // Plain HTTP on the same port gets no 200.
    let plain = Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    match plain
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
    {
        Err(_) => {}
        Ok(r) => assert_ne!(r.status(), StatusCode::OK, "plain HTTP answered 200"),
    }
    // A client that does not trust the certificate cannot connect.
    let untrusting = Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    assert!(
        untrusting
            .get(format!("https://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .is_err()
    );
    // The server survived both.
    let r = https
        .get(format!("https://127.0.0.1:{port}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    node.stop().await.unwrap();
}

// --- 6. no secrets in logs -----------------------------------------------------------------

#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Things that must not appear in logs or responses: whole tokens, their signatures, the
/// secret, and every line of the token key PEM.
fn assert_no_secrets(text: &str, tokens: &[String], pem: Option<&str>, what: &str) {
    assert!(!text.contains(SECRET), "{what}: the HS256 secret leaked");
    for t in tokens {
        assert!(!text.contains(t.as_str()), "{what}: a token leaked");
        if let Some(sig) = t.rsplit('.').next().filter(|s| s.len() > 16) {
            assert!(!text.contains(sig), "{what}: a token signature leaked");
        }
    }
    if let Some(pem) = pem {
        for line in pem.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!text.contains(line), "{what}: the token key leaked");
        }
    }
}

/// Sends the failures worth logging and returns every token it used.
async fn provoke(n: &Node, expired: String) -> Vec<String> {
    let viewer = n.token(Role::Viewer);
    let admin = n.token(Role::Admin);
    let mut p: Vec<&str> = admin.split('.').collect();
    let viewer_parts: Vec<&str> = viewer.split('.').collect();
    p[1] = viewer_parts[1];
    let tampered = p.join(".");
    let status = "/api/config/status";
    assert_eq!(
        n.get(status, Some("invalid-token-abcdefghijklmnop"))
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_refused(
        n.get(status, Some(&tampered)).await,
        AuthError::Signature,
        "tampered",
    )
    .await;
    assert_refused(
        n.get(status, Some(&expired)).await,
        AuthError::Expired,
        "expired",
    )
    .await;
    let r = n
        .call(Method::POST, "/api/config/apply", Some(&viewer), Some("{}"))
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // The configuration endpoints show no secret.
    for path in ["/api/config/profile", "/api/config/status"] {
        let r = n.get(path, Some(&admin)).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let body = r.text().await.unwrap();
        assert_no_secrets(&body, std::slice::from_ref(&admin), None, path);
        if path == "/api/config/profile" && body.contains("jwt_secret") {
            assert!(body.contains("<redacted>"), "{body}");
        }
    }
    vec![
        viewer,
        admin,
        tampered,
        expired,
        "invalid-token-abcdefghijklmnop".into(),
    ]
}

#[tokio::test]
async fn no_secrets_in_logs_in_process() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // Global, not thread-local: with a scoped subscriber, tests running at the same time on
    // other threads race with tracing's per-callsite interest cache, and an event of this
    // test can be dropped. Other tests of this binary then log here too, which only widens
    // the check. (No other test of this binary installs a subscriber.)
    tracing::subscriber::set_global_default(subscriber)
        .expect("the only test here that installs a subscriber");

    // HS256 with the secret.
    let hs = Node::start(
        None,
        &[
            ("KOS_AUTH__JWT", "enabled"),
            ("KOS_AUTH__JWT_ALGORITHM", "hs256"),
            ("KOS_AUTH__JWT_SECRET", SECRET),
        ],
    )
    .await;
    let t0 = now();
    let expired = issue_hs256_at(&hs, t0 - 3600, t0 - 600);
    let mut tokens = provoke(&hs, expired).await;
    hs.node.stop().await.unwrap();

    // EdDSA with the token key, the secret set but unused.
    let ed = Node::start(
        Some("auth:\n  jwt: enabled\n"),
        &[("KOS_AUTH__JWT_SECRET", SECRET)],
    )
    .await;
    let pem = std::fs::read_to_string(TokenKey::path(ed.dir.path())).unwrap();
    let t0 = now();
    let expired = ed.local_token_at(Role::Admin, t0 - 3600, t0 - 600);
    tokens.extend(provoke(&ed, expired).await);
    ed.node.stop().await.unwrap();

    let text = logs.text();
    // The capture works: the refusals are there, with their reasons.
    assert!(
        text.contains("request refused: invalid token"),
        "nothing captured:\n{text}"
    );
    assert!(text.contains("the token has expired"), "{text}");
    assert!(text.contains("request refused: role too small"), "{text}");
    assert_no_secrets(&text, &tokens, Some(&pem), "logs");
}

/// An HS256 local token with chosen times, signed with [`SECRET`].
fn issue_hs256_at(n: &Node, nbf: u64, exp: u64) -> String {
    let iss = format!("kos-node:{}", n.id);
    let claims = LocalClaims {
        iss: iss.clone(),
        aud: iss,
        sub: "old".into(),
        exp,
        iat: nbf,
        nbf,
        jti: "2".into(),
        role: Role::Admin,
    };
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn no_secrets_in_logs_of_the_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    kos_config::layout::init_layout(&home, ProfileKind::Standalone).unwrap();
    let (identity, _) = kos_node::identity::Identity::load_or_create(&home).unwrap();
    let env = [
        ("KOS_AUTH__JWT", "enabled"),
        ("KOS_AUTH__JWT_ALGORITHM", "hs256"),
        ("KOS_AUTH__JWT_SECRET", SECRET),
    ];
    let mut cmd = Command::new(KOS);
    cmd.args(["run", "--listen", "127.0.0.1:0"])
        .env("KOS_HOME", &home)
        .env("KOS_LOG", "trace")
        .env_remove("KOS_PROFILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let http = Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    // The node binds port 0 and says where in its run file once ready.
    let mut base = None;
    loop {
        if base.is_none() {
            base = kos_node::runfile::read(&home)
                .filter(|i| i.pid == child.id())
                .map(|i| format!("http://{}", i.api));
        }
        if let Some(base) = &base
            && let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status() == StatusCode::OK
        {
            break;
        }
        if let Some(s) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "kos exited before ready: {s}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(Instant::now() < deadline, "not ready within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let base = base.expect("ready, so the run file was read");
    let config = kos_config::ConfigDir::new(&home)
        .load(&LoadOptions {
            env: env_map(&env),
            capabilities: capabilities(),
            profile: None,
        })
        .unwrap()
        .config;
    let id = identity.id().to_string();
    let mint = |role| {
        mint_named(&home, &config, &id, "bin", role, Duration::from_secs(600))
            .unwrap()
            .unwrap()
    };
    let (viewer, admin) = (mint(Role::Viewer), mint(Role::Admin));
    let iss = format!("kos-node:{id}");
    let t0 = now();
    let expired = encode(
        &Header::new(Algorithm::HS256),
        &LocalClaims {
            iss: iss.clone(),
            aud: iss,
            sub: "old".into(),
            exp: t0 - 600,
            iat: t0 - 3600,
            nbf: t0 - 3600,
            jti: "3".into(),
            role: Role::Admin,
        },
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let status = format!("{base}/api/config/status");
    for bad in [expired.as_str(), "invalid-token-abcdefghijklmnop"] {
        let r = http.get(&status).bearer_auth(bad).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = http
        .post(format!("{base}/api/config/apply"))
        .bearer_auth(&viewer)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    for path in ["/api/config/profile", "/api/config/status"] {
        let r = http
            .get(format!("{base}{path}"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(!r.text().await.unwrap().contains(SECRET), "{path}");
    }
    // Stop it (SIGTERM to the child this test started) and read what it logged.
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    let mut log = String::from_utf8_lossy(&out.stderr).into_owned();
    log.push_str(&String::from_utf8_lossy(&out.stdout));
    assert!(log.contains("request refused: invalid token"), "{log}");
    assert!(log.contains("request refused: role too small"), "{log}");
    assert_no_secrets(
        &log,
        &[
            viewer,
            admin,
            expired,
            "invalid-token-abcdefghijklmnop".into(),
        ],
        None,
        "kos run logs",
    );
}
