//! OIDC bearer tokens: discovery, JWKS cache, verification, role mapping.
//!
//! The node is a resource server only: it never runs a login flow, so it uses
//! `jsonwebtoken` for verification and fetches the discovery document and JWKS itself
//! (`reqwest`, redirects refused, 5 s timeout, 256 KiB limit). The JWKS is cached; a token
//! with an unknown `kid` triggers at most one refetch per `jwks_refresh_cooldown`, and
//! concurrent requests wait for that one fetch instead of starting their own. Each key is
//! stored with its algorithm; a token whose `alg` differs from its key's is refused. HMAC
//! and `none` are never accepted (the configuration cannot even name them).

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Header};
use kos_config::model::{Oidc, OidcAlgorithm};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::cache::Verified;
use super::{AuthError, Principal, Role, validation, verify_with};

const MAX_DOC_BYTES: usize = 256 * 1024;
const MAX_KEYS: usize = 100;

fn to_alg(a: OidcAlgorithm) -> Algorithm {
    match a {
        OidcAlgorithm::Rs256 => Algorithm::RS256,
        OidcAlgorithm::Rs384 => Algorithm::RS384,
        OidcAlgorithm::Rs512 => Algorithm::RS512,
        OidcAlgorithm::Ps256 => Algorithm::PS256,
        OidcAlgorithm::Ps384 => Algorithm::PS384,
        OidcAlgorithm::Ps512 => Algorithm::PS512,
        OidcAlgorithm::Es256 => Algorithm::ES256,
        OidcAlgorithm::Es384 => Algorithm::ES384,
        OidcAlgorithm::EdDsa => Algorithm::EdDSA,
    }
}

fn key_alg(k: &KeyAlgorithm) -> Option<Algorithm> {
    Some(match k {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// The algorithm a JWK is for: its `alg`, or, without one, the only one its type allows
/// among the accepted algorithms.
fn jwk_algorithm(jwk: &Jwk, accepted: &[Algorithm]) -> Option<Algorithm> {
    if let Some(a) = &jwk.common.key_algorithm {
        return key_alg(a).filter(|a| accepted.contains(a));
    }
    let candidates: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => vec![],
        },
        AlgorithmParameters::OctetKeyPair(_) => vec![Algorithm::EdDSA],
        _ => vec![],
    };
    let mut ok = candidates.into_iter().filter(|a| accepted.contains(a));
    match (ok.next(), ok.next()) {
        (Some(a), None) => Some(a),
        _ => None,
    }
}

/// URLs the node fetches must be https, or http on a loopback host.
fn check_url(url: &str) -> Result<(), String> {
    let u = reqwest::Url::parse(url).map_err(|e| format!("`{url}`: {e}"))?;
    let loopback = match u.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match u.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(format!("`{url}` is not an https URL")),
    }
}

pub struct OidcVerifier {
    issuer: String,
    audience: String,
    algorithms: Vec<Algorithm>,
    roles_claim: Vec<String>,
    role_map: BTreeMap<String, Role>,
    default_role: Option<Role>,
    cooldown: Duration,
    http: reqwest::Client,
    keys: RwLock<HashMap<String, (Algorithm, DecodingKey)>>,
    /// When the JWKS was last fetched (or tried); held during a fetch (single flight).
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    fetches: AtomicU64,
    /// SHA-256 over the accepted keys of the last JWKS (kid, algorithm, JWK).
    key_set: std::sync::Mutex<Option<[u8; 32]>>,
    /// Moves when a fetch changes the key set (see [`super::cache`]).
    key_generation: AtomicU64,
}

impl std::fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcVerifier")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl OidcVerifier {
    /// Builds the verifier (no network yet; see [`OidcVerifier::refresh`]).
    pub fn new(cfg: &Oidc) -> Result<Self> {
        let issuer = cfg.issuer.clone().unwrap_or_default();
        check_url(&issuer).map_err(anyhow::Error::msg)?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(5))
            .user_agent(concat!("kos-node/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            issuer,
            audience: cfg.audience.clone().unwrap_or_default(),
            algorithms: cfg.algorithms.iter().copied().map(to_alg).collect(),
            roles_claim: cfg.roles_claim.split('.').map(str::to_string).collect(),
            role_map: cfg.role_map.clone(),
            default_role: cfg.default_role,
            cooldown: cfg.jwks_refresh_cooldown.get(),
            http,
            keys: RwLock::new(HashMap::new()),
            last_fetch: tokio::sync::Mutex::new(None),
            fetches: AtomicU64::new(0),
            key_set: std::sync::Mutex::new(None),
            key_generation: AtomicU64::new(0),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// How many times discovery + JWKS were fetched.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Changes whenever a fetch brings a different key set than the one before (a key added,
    /// removed or replaced); a refetch that finds the same keys leaves it alone.
    pub fn key_generation(&self) -> u64 {
        self.key_generation.load(Ordering::Acquire)
    }

    async fn get_json(&self, url: &str) -> Result<Value, String> {
        check_url(url)?;
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {}", e.without_url()))?;
        let status = resp.status();
        if !status.is_success() {
            // A redirect is refused here too (the policy does not follow it).
            return Err(format!("GET {url}: HTTP {status}"));
        }
        if resp
            .content_length()
            .is_some_and(|n| n as usize > MAX_DOC_BYTES)
        {
            return Err(format!(
                "GET {url}: response larger than {MAX_DOC_BYTES} bytes"
            ));
        }
        // Read chunk by chunk and stop at the limit: a chunked answer has no length to check
        // up front, and within the timeout a fast server could send gigabytes.
        let mut resp = resp;
        let mut bytes = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("GET {url}: {}", e.without_url()))?
        {
            if bytes.len() + chunk.len() > MAX_DOC_BYTES {
                return Err(format!(
                    "GET {url}: response larger than {MAX_DOC_BYTES} bytes"
                ));
            }
            bytes.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("GET {url}: not JSON: {e}"))
    }

    /// Fetches the discovery document and the JWKS, replacing the cached keys.
    async fn fetch(&self) -> Result<usize, String> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let discovery_url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let doc = self.get_json(&discovery_url).await?;
        if doc["issuer"].as_str() != Some(self.issuer.as_str()) {
            return Err(format!(
                "the discovery document names issuer {}, not {}",
                doc["issuer"], self.issuer
            ));
        }
        let jwks_uri = doc["jwks_uri"]
            .as_str()
            .ok_or("the discovery document has no jwks_uri")?
            .to_string();
        let set: JwkSet = serde_json::from_value(self.get_json(&jwks_uri).await?)
            .map_err(|e| format!("invalid JWKS: {e}"))?;
        let mut keys = HashMap::new();
        let mut described = BTreeMap::new();
        for jwk in set.keys.iter().take(MAX_KEYS) {
            let (Some(kid), Some(alg)) = (
                jwk.common.key_id.clone(),
                jwk_algorithm(jwk, &self.algorithms),
            ) else {
                continue;
            };
            if let Ok(k) = DecodingKey::from_jwk(jwk) {
                let jwk_json = serde_json::to_string(jwk).unwrap_or_default();
                described.insert(kid.clone(), (format!("{alg:?}"), jwk_json));
                keys.insert(kid, (alg, k));
            }
        }
        let fingerprint: [u8; 32] = Sha256::digest(
            serde_json::to_vec(&described).map_err(|e| format!("describing the JWKS: {e}"))?,
        )
        .into();
        let n = keys.len();
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
        // After the keys are in place: a verification that read the old generation may have
        // used an old key, and its cache entry must not outlive this change.
        let mut known = self.key_set.lock().unwrap_or_else(|p| p.into_inner());
        if *known != Some(fingerprint) {
            *known = Some(fingerprint);
            self.key_generation.fetch_add(1, Ordering::AcqRel);
        }
        Ok(n)
    }

    /// Fetches the keys now, unless a fetch happened within the cooldown. Used at start.
    pub async fn refresh(&self) {
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|t| t.elapsed() < self.cooldown) {
            return;
        }
        *last = Some(Instant::now());
        match self.fetch().await {
            Ok(n) => info!(issuer = %self.issuer, keys = n, "OIDC keys loaded"),
            Err(e) => {
                warn!(issuer = %self.issuer, error = %e, "cannot load the OIDC keys; will retry when a token needs them")
            }
        }
    }

    fn cached(&self, kid: &str) -> Option<(Algorithm, DecodingKey)> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(kid)
            .cloned()
    }

    async fn key_for(&self, kid: &str) -> Result<(Algorithm, DecodingKey), AuthError> {
        if let Some(k) = self.cached(kid) {
            return Ok(k);
        }
        // Unknown kid: one fetch per cooldown, and everyone else waits for it.
        let mut last = self.last_fetch.lock().await;
        if let Some(k) = self.cached(kid) {
            return Ok(k);
        }
        if last.is_some_and(|t| t.elapsed() < self.cooldown) {
            return Err(AuthError::UnknownKey);
        }
        *last = Some(Instant::now());
        if let Err(e) = self.fetch().await {
            warn!(issuer = %self.issuer, error = %e, "JWKS refresh failed");
            return Err(AuthError::ProviderUnavailable);
        }
        self.cached(kid).ok_or(AuthError::UnknownKey)
    }

    /// Verifies an OIDC token whose header is already decoded.
    pub(crate) async fn verify(
        &self,
        token: &str,
        header: &Header,
        leeway: u64,
    ) -> Result<Verified, AuthError> {
        if !self.algorithms.contains(&header.alg) {
            return Err(AuthError::Algorithm);
        }
        let kid = header.kid.as_deref().ok_or(AuthError::UnknownKey)?;
        let (alg, key) = self.key_for(kid).await?;
        if alg != header.alg {
            return Err(AuthError::Algorithm);
        }
        let claims: Value = verify_with(
            token,
            &key,
            &validation(alg, &self.issuer, &self.audience, leeway),
        )?;
        let sub = claims["sub"].as_str().unwrap_or("unknown").to_string();
        let role = self.role_of(&claims).ok_or(AuthError::NoRole)?;
        // The cache re-checks exp and nbf as integers; a token where either is something else
        // (a fraction, say) is verified every time instead.
        let (exp, nbf) = match claims.get("nbf").map(Value::as_u64) {
            None => (claims["exp"].as_u64(), None),
            Some(Some(nbf)) => (claims["exp"].as_u64(), Some(nbf)),
            Some(None) => (None, None),
        };
        Ok(Verified {
            principal: Principal {
                sub,
                role,
                source: "oidc",
            },
            exp,
            nbf,
        })
    }

    /// The highest mapped role in the roles claim, else the default role.
    fn role_of(&self, claims: &Value) -> Option<Role> {
        let mut v = claims;
        for seg in &self.roles_claim {
            v = &v[seg.as_str()];
        }
        let names: Vec<&str> = match v {
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            Value::String(s) => s.split_whitespace().collect(),
            _ => Vec::new(),
        };
        names
            .iter()
            .filter_map(|n| self.role_map.get(*n).copied())
            .max()
            .or(self.default_role)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Issue 10: an answer without a length (chunked) is read only up to `MAX_DOC_BYTES`;
    /// an endless one is refused as too large as soon as it passes the limit, not buffered
    /// until the timeout.
    #[tokio::test]
    async fn a_chunked_answer_is_cut_at_the_limit() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = [0u8; 4096];
            let _ = s.read(&mut req).await;
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
                .await
                .unwrap();
            let chunk = format!("{:x}\r\n{}\r\n", 16 * 1024, " ".repeat(16 * 1024));
            // Until the client hangs up.
            while s.write_all(chunk.as_bytes()).await.is_ok() {}
        });
        let issuer = format!("http://{addr}");
        let v = OidcVerifier::new(&Oidc {
            issuer: Some(issuer.clone()),
            ..Oidc::default()
        })
        .unwrap();
        let err = v.get_json(&issuer).await.unwrap_err();
        assert!(
            err.contains(&format!("response larger than {MAX_DOC_BYTES} bytes")),
            "{err}"
        );
    }
}
