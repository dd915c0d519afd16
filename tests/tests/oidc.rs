//! OIDC bearer tokens from a real OpenID Connect provider, against an in-process node.
//!
//! The provider is `django-oidc-provider` (PyPI), set up and served on loopback by
//! `tests/oidc/provider.py`: an RS256 signing key in its JWKS, a confidential client for the
//! resource-owner password grant, `alice` in the group `kos-admins` and `bob` in no group; ID
//! tokens carry the user's groups in a `roles` claim. The node is configured with
//! `auth.oidc` (issuer, audience = client id, `roles_claim: roles`, `kos-admins` → `admin`,
//! `RS256`) and must accept and map those tokens, and refuse missing and altered ones.
//!
//! Needs a `python3` with `django-oidc-provider` and Django (`.ci/run` installs them;
//! `KOS_TEST_PYTHON` picks the interpreter). In CI a missing provider is a failure, elsewhere
//! the test prints `NOT RUN` and returns.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use kos_config::ProfileKind;
use kos_node::daemon::{NodeOptions, RunningNode, start};
use kos_tests::require;
use reqwest::{Client, RequestBuilder, Response, StatusCode};
use serde_json::Value;

/// The provider script, next to this test's package.
fn provider_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("oidc/provider.py")
}

/// A Python interpreter that has Django and `django-oidc-provider`.
fn provider_python() -> Result<PathBuf> {
    let mut candidates: Vec<String> = Vec::new();
    if let Ok(p) = std::env::var("KOS_TEST_PYTHON") {
        candidates.push(p);
    }
    candidates.extend(["python3".into(), "/usr/bin/python3".into()]);
    if let Some(python) = kos_tests::python_with(&candidates, "import django, oidc_provider") {
        return Ok(python);
    }
    bail!(
        "no python3 with Django and django-oidc-provider (tried {}; `python3 -m pip install \
         django-oidc-provider Django`, or set KOS_TEST_PYTHON)",
        candidates.join(", ")
    )
}

/// What provider.py prints when it is ready.
#[derive(Debug, Clone)]
struct ProviderInfo {
    issuer: String,
    token_endpoint: String,
    client_id: String,
    client_secret: String,
    username: String,
    password: String,
    viewer_username: String,
    viewer_password: String,
}

/// A running provider.py; killed on drop. It also exits by itself when its stdin closes, so
/// it does not outlive a test process that dies without dropping it.
struct OidcProvider {
    child: Child,
    _stdin: ChildStdin,
    dir: tempfile::TempDir,
    info: ProviderInfo,
}

impl OidcProvider {
    fn start() -> Result<Self> {
        let python = provider_python()?;
        let script = provider_script();
        if !script.exists() {
            bail!("{} is missing", script.display());
        }
        // provider.py binds port 0 itself and reports the address it got (in the issuer and
        // token endpoint of its ready line): no port is picked here.
        let dir = tempfile::Builder::new().prefix("kos-oidc-").tempdir()?;
        let log_path = dir.path().join("provider.log");
        let log = std::fs::File::create(&log_path)?;
        let mut child = Command::new(&python)
            .arg("-u")
            .arg(&script)
            .arg("--dir")
            .arg(dir.path().join("provider"))
            .arg("--exit-on-stdin-eof")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} {}", python.display(), script.display()))?;
        let stdin = child.stdin.take().context("provider stdin")?;
        let stdout = child.stdout.take().context("provider stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let r = BufReader::new(stdout).read_line(&mut line).map(|_| line);
            let _ = tx.send(r);
        });
        let mut provider = OidcProvider {
            child,
            _stdin: stdin,
            dir,
            info: ProviderInfo {
                issuer: String::new(),
                token_endpoint: String::new(),
                client_id: String::new(),
                client_secret: String::new(),
                username: String::new(),
                password: String::new(),
                viewer_username: String::new(),
                viewer_password: String::new(),
            },
        };
        let line = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(Ok(line)) if !line.trim().is_empty() => line,
            Ok(Ok(_)) => bail!(
                "provider.py exited before it was ready: {}",
                provider.log_tail()
            ),
            Ok(Err(e)) => bail!("reading provider.py's stdout: {e}"),
            Err(_) => bail!(
                "provider.py was not ready within 120 s: {}",
                provider.log_tail()
            ),
        };
        let v: Value = serde_json::from_str(line.trim())
            .with_context(|| format!("provider.py's ready line is not JSON: {line}"))?;
        let field = |k: &str| -> Result<String> {
            v[k].as_str()
                .map(str::to_string)
                .with_context(|| format!("provider.py's ready line has no {k}: {line}"))
        };
        provider.info = ProviderInfo {
            issuer: field("issuer")?,
            token_endpoint: field("token_endpoint")?,
            client_id: field("client_id")?,
            client_secret: field("client_secret")?,
            username: field("username")?,
            password: field("password")?,
            viewer_username: field("viewer_username")?,
            viewer_password: field("viewer_password")?,
        };
        Ok(provider)
    }

    /// The end of the provider's log (stderr), for error messages.
    fn log_tail(&self) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join("provider.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!("provider log:\n{tail}")
    }

    /// An ID token for `username` by the resource-owner password grant, with HTTP Basic
    /// client authentication (client_secret_basic).
    async fn id_token(&self, username: &str, password: &str) -> String {
        let i = &self.info;
        let r = Client::new()
            .post(&i.token_endpoint)
            .basic_auth(&i.client_id, Some(&i.client_secret))
            .form(&[
                ("grant_type", "password"),
                ("username", username),
                ("password", password),
                ("scope", "openid"),
            ])
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body = r.text().await.unwrap();
        assert_eq!(
            status,
            StatusCode::OK,
            "password grant for {username}: {body}\n{}",
            self.log_tail()
        );
        let v: Value = serde_json::from_str(&body).unwrap();
        v["id_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no id_token in {body}"))
            .to_string()
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// --- base64url (no padding), enough to read and alter a JWT's payload ---------------------

const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn b64url_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = B64URL
            .iter()
            .position(|&a| a == c)
            .unwrap_or_else(|| panic!("not base64url: {s}")) as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

fn b64url_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(B64URL[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// The claims of a JWT, unverified.
fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).expect("a JWT has a payload");
    serde_json::from_slice(&b64url_decode(payload)).unwrap()
}

/// The token with one character in the middle of its payload changed.
fn flip_payload_char(jwt: &str) -> String {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "{jwt}");
    let mut payload: Vec<u8> = parts[1].bytes().collect();
    let i = payload.len() / 2;
    payload[i] = if payload[i] == b'A' { b'B' } else { b'A' };
    let payload = String::from_utf8(payload).unwrap();
    assert_ne!(payload, parts[1]);
    format!("{}.{payload}.{}", parts[0], parts[2])
}

/// The token with its payload replaced by `claims` (valid JSON, original signature).
fn with_claims(jwt: &str, claims: &Value) -> String {
    let parts: Vec<&str> = jwt.split('.').collect();
    let payload = b64url_encode(serde_json::to_string(claims).unwrap().as_bytes());
    format!("{}.{payload}.{}", parts[0], parts[2])
}

/// The token's claims under an unsigned (`alg: none`) header.
fn unsigned(jwt: &str) -> String {
    let payload = jwt.split('.').nth(1).unwrap();
    let header = b64url_encode(br#"{"alg":"none","typ":"JWT"}"#);
    format!("{header}.{payload}.")
}

// --- the node --------------------------------------------------------------------------------

/// Replaces the top-level `auth:` section of a profile (if any) with `section`.
fn replace_auth_section(profile: &str, section: &str) -> String {
    let mut out = String::new();
    let mut in_auth = false;
    for line in profile.lines() {
        let top_level = !line.is_empty() && !line.starts_with([' ', '\t', '#']);
        if top_level {
            in_auth = line.starts_with("auth:");
            if in_auth {
                continue;
            }
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

struct TestNode {
    node: RunningNode,
    base: String,
    _dir: tempfile::TempDir,
    http: Client,
}

impl TestNode {
    async fn start(info: &ProviderInfo) -> Self {
        let dir = tempfile::tempdir().unwrap();
        kos_config::layout::init_layout(dir.path(), ProfileKind::Standalone).unwrap();
        kos_node::identity::Identity::load_or_create(dir.path()).unwrap();
        let path = dir.path().join("profiles/standalone.yaml");
        let auth = format!(
            "auth:\n  jwt: enabled\n  oidc:\n    mode: required\n    issuer: {}\n    audience: {}\n    roles_claim: roles\n    role_map:\n      kos-admins: admin\n    algorithms: [RS256]\n",
            info.issuer, info.client_id
        );
        let profile = replace_auth_section(&std::fs::read_to_string(&path).unwrap(), &auth);
        std::fs::write(&path, &profile).unwrap();
        let node = start(NodeOptions::local(dir.path().to_path_buf()))
            .await
            .unwrap_or_else(|e| panic!("node did not start with this profile: {e:#}\n{profile}"));
        let base = format!("http://{}", node.addr);
        Self {
            node,
            base,
            _dir: dir,
            http: Client::new(),
        }
    }

    fn req(&self, method: reqwest::Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn status(&self, token: Option<&str>) -> Response {
        self.req(reqwest::Method::GET, "/api/config/status", token)
            .send()
            .await
            .unwrap()
    }

    async fn document(&self, token: &str) -> String {
        let r = self
            .req(reqwest::Method::GET, "/api/config/profile", Some(token))
            .send()
            .await
            .unwrap();
        let (status, body) = (r.status(), r.text().await.unwrap());
        assert_eq!(status, StatusCode::OK, "GET /api/config/profile: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["document"].as_str().unwrap().to_string()
    }

    async fn apply(&self, token: Option<&str>, doc: &str) -> Response {
        self.req(reqwest::Method::POST, "/api/config/apply", token)
            .header("content-type", "application/yaml")
            .header("if-match", "*")
            .body(doc.to_string())
            .send()
            .await
            .unwrap()
    }
}

/// Asserts the status and returns the body, which the message shows when it is wrong.
async fn expect(
    r: Response,
    status: StatusCode,
    what: &str,
) -> (reqwest::header::HeaderMap, String) {
    let got = r.status();
    let headers = r.headers().clone();
    let body = r.text().await.unwrap_or_default();
    assert_eq!(got, status, "{what}: headers {headers:?}, body {body}");
    (headers, body)
}

/// Asserts a `WWW-Authenticate: Bearer ...` challenge, with the RFC 6750 error code if given.
fn assert_bearer_challenge(headers: &reqwest::header::HeaderMap, error: Option<&str>, what: &str) {
    let challenge = headers
        .get("www-authenticate")
        .unwrap_or_else(|| panic!("{what}: no WWW-Authenticate ({headers:?})"))
        .to_str()
        .unwrap();
    assert!(
        challenge.to_ascii_lowercase().starts_with("bearer"),
        "{what}: WWW-Authenticate: {challenge}"
    );
    if let Some(code) = error {
        assert!(
            challenge.contains(&format!("error=\"{code}\"")),
            "{what}: WWW-Authenticate without error=\"{code}\": {challenge}"
        );
    }
}

/// Asserts that an invalid token was refused: 401, `error="invalid_token"`.
async fn refused(r: Response, what: &str) {
    let (h, _) = expect(r, StatusCode::UNAUTHORIZED, what).await;
    assert_bearer_challenge(&h, Some("invalid_token"), what);
}

#[tokio::test]
async fn oidc_tokens_from_a_real_provider() {
    const TEST: &str = "oidc_tokens_from_a_real_provider";
    let started = tokio::task::spawn_blocking(OidcProvider::start)
        .await
        .unwrap();
    let Some(provider) = require(TEST, started) else {
        return;
    };
    let info = provider.info.clone();

    let admin_token = provider.id_token(&info.username, &info.password).await;
    let viewer_token = provider
        .id_token(&info.viewer_username, &info.viewer_password)
        .await;
    // The provider's side of the contract, so a failure below is the node's.
    let c = claims(&admin_token);
    assert_eq!(c["iss"], info.issuer.as_str(), "{c}");
    assert_eq!(c["aud"], info.client_id.as_str(), "{c}");
    assert_eq!(c["roles"], serde_json::json!(["kos-admins"]), "{c}");
    assert_eq!(claims(&viewer_token)["roles"], serde_json::json!([]));

    let t = TestNode::start(&info).await;

    // An admin (kos-admins → admin) reads and applies.
    expect(
        t.status(Some(&admin_token)).await,
        StatusCode::OK,
        "GET /api/config/status as admin",
    )
    .await;
    let doc = t.document(&admin_token).await;
    expect(
        t.apply(Some(&admin_token), &doc).await,
        StatusCode::OK,
        "POST /api/config/apply as admin",
    )
    .await;

    // No token: 401 with a Bearer challenge (auth is required).
    let (h, _) = expect(
        t.apply(None, &doc).await,
        StatusCode::UNAUTHORIZED,
        "POST /api/config/apply without a token",
    )
    .await;
    assert_bearer_challenge(&h, None, "apply without a token");
    let (h, _) = expect(
        t.status(None).await,
        StatusCode::UNAUTHORIZED,
        "GET /api/config/status without a token",
    )
    .await;
    assert_bearer_challenge(&h, None, "status without a token");

    // Altered tokens: one payload character changed; the viewer's claims rewritten to the
    // admin group under the original signature; the admin's claims without a signature.
    let flipped = flip_payload_char(&admin_token);
    refused(
        t.apply(Some(&flipped), &doc).await,
        "apply with one payload character changed",
    )
    .await;
    refused(
        t.status(Some(&flipped)).await,
        "status with one payload character changed",
    )
    .await;
    let mut escalated = claims(&viewer_token);
    escalated["roles"] = serde_json::json!(["kos-admins"]);
    refused(
        t.apply(Some(&with_claims(&viewer_token, &escalated)), &doc)
            .await,
        "apply with the viewer's roles rewritten to kos-admins",
    )
    .await;
    refused(
        t.apply(Some(&unsigned(&admin_token)), &doc).await,
        "apply with an alg:none token",
    )
    .await;

    // A valid token without a mapped role: authenticated as viewer, so reads but not applies.
    expect(
        t.status(Some(&viewer_token)).await,
        StatusCode::OK,
        "GET /api/config/status as a user outside kos-admins",
    )
    .await;
    let (h, _) = expect(
        t.apply(Some(&viewer_token), &doc).await,
        StatusCode::FORBIDDEN,
        "POST /api/config/apply as a user outside kos-admins",
    )
    .await;
    assert_bearer_challenge(&h, Some("insufficient_scope"), "apply as viewer");

    // The admin token still works after all that (no lockout, no cached failure).
    expect(
        t.status(Some(&admin_token)).await,
        StatusCode::OK,
        "GET /api/config/status as admin again",
    )
    .await;

    t.node.stop().await.unwrap();
    drop(provider);
}

#[test]
fn base64url_round_trip_and_auth_section() {
    for data in [
        &b""[..],
        b"f",
        b"fo",
        b"foo",
        b"foob",
        b"fooba",
        b"foobar",
        &[0xff, 0xfe, 0x00],
    ] {
        assert_eq!(b64url_decode(&b64url_encode(data)), data);
    }
    assert_eq!(b64url_encode(b"foobar"), "Zm9vYmFy");
    assert_eq!(b64url_encode(&[0xfb, 0xff]), "-_8");
    let p =
        "profile: standalone\nauth:\n  jwt: disabled\n  session_timeout: 24h\n\nservices:\n  - a\n";
    let out = replace_auth_section(p, "auth:\n  jwt: enabled\n");
    assert_eq!(
        out,
        "profile: standalone\nservices:\n  - a\n\nauth:\n  jwt: enabled\n"
    );
}
