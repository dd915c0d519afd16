//! Authentication of API callers: local JWTs and OIDC bearer tokens, mapped to a [`Role`].
//!
//! - **Local tokens** (`kos token create`) are signed EdDSA with the node's token key
//!   (`auth/token.key`, separate from the identity key so it can be rotated) or HS256 with
//!   `auth.jwt_secret`. Issuer and audience are `kos-node:<peer id>`.
//! - **OIDC tokens** come from the configured provider; see [`oidc`].
//!
//! Validation pins the algorithm per key (never `none`, never HMAC for OIDC), requires `exp`,
//! `iss` and `aud`, honours `nbf`, allows `auth.token_leeway` of clock skew, and refuses
//! tokens over [`MAX_TOKEN_BYTES`]. Tokens never reach logs: errors carry a fixed reason only.
//!
//! A successful verification is remembered by the token's SHA-256 until the token expires
//! (at most [`cache::CACHE_MAX_TTL`]); see [`cache`].

pub mod cache;
pub mod local;
pub mod oidc;

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use kos_config::model::Config;
pub use kos_config::model::Role;
use serde::{Deserialize, Serialize};

/// Largest bearer token accepted.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Principal {
    pub sub: String,
    pub role: Role,
    /// `local` or `oidc`.
    pub source: &'static str,
}

/// Why a token was refused. The text is safe to show and to log: it never contains the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("the token is larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's algorithm is not accepted")]
    Algorithm,
    #[error("the token's signing key is unknown")]
    UnknownKey,
    #[error("the token's signature is invalid")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's issuer is not accepted")]
    Issuer,
    #[error("the token is not meant for this node")]
    Audience,
    #[error("the token lacks a required claim")]
    MissingClaim,
    #[error("the token grants no role on this node")]
    NoRole,
    #[error("the identity provider cannot be reached")]
    ProviderUnavailable,
}

impl AuthError {
    fn from_jwt(e: &jsonwebtoken::errors::Error) -> Self {
        use jsonwebtoken::errors::ErrorKind as K;
        match e.kind() {
            K::ExpiredSignature => AuthError::Expired,
            K::ImmatureSignature => AuthError::NotYetValid,
            K::InvalidIssuer => AuthError::Issuer,
            K::InvalidAudience => AuthError::Audience,
            K::MissingRequiredClaim(_) => AuthError::MissingClaim,
            K::InvalidSignature => AuthError::Signature,
            K::InvalidAlgorithm | K::InvalidAlgorithmName | K::UnsupportedAlgorithm => {
                AuthError::Algorithm
            }
            _ => AuthError::Malformed,
        }
    }
}

/// Claims of a local token.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LocalClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub exp: u64,
    pub iat: u64,
    pub nbf: u64,
    pub jti: String,
    pub role: Role,
}

/// Validation settings shared by both token kinds.
pub(crate) fn validation(alg: Algorithm, issuer: &str, audience: &str, leeway: u64) -> Validation {
    let mut v = Validation::new(alg);
    v.algorithms = vec![alg];
    v.leeway = leeway;
    v.validate_exp = true;
    v.validate_nbf = true;
    v.set_issuer(&[issuer]);
    v.set_audience(&[audience]);
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    v
}

/// Verifies bearer tokens for one node.
pub struct Authenticator {
    local: Option<local::LocalVerifier>,
    oidc: Option<Arc<oidc::OidcVerifier>>,
    leeway: u64,
    cache: cache::VerifiedCache,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("local", &self.local.is_some())
            .field("oidc", &self.oidc.is_some())
            .finish()
    }
}

impl Authenticator {
    /// Builds the authenticator for a configuration. `node_id` names the local issuer and
    /// audience; `dir` is the config directory (token key).
    pub fn new(config: &Config, node_id: &str, dir: &std::path::Path) -> anyhow::Result<Self> {
        let a = &config.auth;
        let local = local::ConfiguredKey::load(config, dir)?.map(|k| k.verifier(node_id));
        let oidc = if a.oidc.active() {
            Some(Arc::new(oidc::OidcVerifier::new(&a.oidc)?))
        } else {
            None
        };
        Ok(Self::from_parts(
            local,
            oidc,
            a.token_leeway.get().as_secs(),
            Arc::new(cache::SystemClock),
        ))
    }

    fn from_parts(
        local: Option<local::LocalVerifier>,
        oidc: Option<Arc<oidc::OidcVerifier>>,
        leeway: u64,
        clock: Arc<dyn cache::Clock>,
    ) -> Self {
        Self {
            local,
            oidc,
            leeway,
            cache: cache::VerifiedCache::new(
                cache::CACHE_MAX_BYTES,
                cache::CACHE_MAX_TTL,
                leeway,
                clock,
            ),
        }
    }

    /// Whether any caller authentication is configured (otherwise the API is open).
    pub fn enabled(&self) -> bool {
        self.local.is_some() || self.oidc.is_some()
    }

    pub fn oidc(&self) -> Option<&Arc<oidc::OidcVerifier>> {
        self.oidc.as_ref()
    }

    /// How the verified-token cache has been doing.
    pub fn cache_stats(&self) -> cache::CacheStats {
        self.cache.stats()
    }

    /// Changes whenever the keys that verify tokens change (an OIDC JWKS refresh with a
    /// different key set); cached verifications from an older generation are not used.
    fn key_generation(&self) -> u64 {
        self.oidc.as_ref().map_or(0, |o| o.key_generation())
    }

    /// Verifies a bearer token and returns the caller. A token verified before is answered
    /// from the cache (its `exp` and `nbf` are checked again, its signature is not).
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge);
        }
        let key = cache::token_hash(token);
        // Read before verifying: if the keys change meanwhile, the entry is already stale.
        let generation = self.key_generation();
        match self.cache.lookup(&key, generation) {
            cache::Lookup::Hit(p) => return Ok(p),
            cache::Lookup::Refused(e) => return Err(e),
            cache::Lookup::Miss => {}
        }
        let v = self.verify(token).await?;
        self.cache.insert(key, &v, generation);
        Ok(v.principal)
    }

    /// Checks a token's signature and claims (no cache).
    async fn verify(&self, token: &str) -> Result<cache::Verified, AuthError> {
        let header = decode_header(token).map_err(|e| header_error(token, &e))?;
        // Local tokens: our algorithm, and for EdDSA our key id.
        if let Some(l) = &self.local
            && l.claims_token(&header)
        {
            return l.verify(token, self.leeway);
        }
        match &self.oidc {
            Some(o) => o.verify(token, &header, self.leeway).await,
            None if self.local.is_some() => Err(match header.alg {
                Algorithm::EdDSA | Algorithm::HS256 => AuthError::UnknownKey,
                _ => AuthError::Algorithm,
            }),
            None => Err(AuthError::Algorithm),
        }
    }
}

/// Why a token's header cannot be decoded. A header naming an algorithm `jsonwebtoken` does
/// not know (`none`, `HS1`, ...) fails to parse; that is a refused algorithm, not a malformed
/// token.
fn header_error(token: &str, e: &jsonwebtoken::errors::Error) -> AuthError {
    use base64::Engine;
    let unknown_alg = token
        .split('.')
        .next()
        .and_then(|h| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(h)
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("alg").and_then(|a| a.as_str()).map(str::to_string))
        .is_some_and(|a| a.parse::<Algorithm>().is_err());
    if unknown_alg {
        AuthError::Algorithm
    } else {
        AuthError::from_jwt(e)
    }
}

/// Verifies `token` with one key, mapping errors.
pub(crate) fn verify_with<T: serde::de::DeserializeOwned>(
    token: &str,
    key: &DecodingKey,
    v: &Validation,
) -> Result<T, AuthError> {
    decode::<T>(token, key, v)
        .map(|d| d.claims)
        .map_err(|e| AuthError::from_jwt(&e))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::cache::tests::ManualClock;
    use super::cache::{CacheStats, Clock, SystemClock, token_hash};
    use super::local::{IssueKey, LocalVerifier, TokenKey, issue};
    use super::*;

    const NODE: &str = "12D3KooWTestNode";
    const LEEWAY: u64 = 30;

    fn authenticator(dir: &std::path::Path, clock: Arc<dyn Clock>) -> Authenticator {
        let key = TokenKey::load_or_create(dir).unwrap();
        Authenticator::from_parts(Some(LocalVerifier::eddsa(&key, NODE)), None, LEEWAY, clock)
    }

    fn token(dir: &std::path::Path, sub: &str, ttl: Duration) -> String {
        let key = TokenKey::load_or_create(dir).unwrap();
        issue(IssueKey::Eddsa(&key), NODE, sub, Role::Viewer, ttl).unwrap()
    }

    #[tokio::test]
    async fn a_verified_token_is_answered_from_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let a = authenticator(dir.path(), Arc::new(SystemClock));
        let t = token(dir.path(), "alice", Duration::from_secs(600));
        let first = a.authenticate(&t).await.unwrap();
        assert_eq!(first.sub, "alice");
        assert_eq!(first.role, Role::Viewer);
        assert_eq!(a.cache_stats(), CacheStats { hits: 0, misses: 1 });
        for _ in 0..3 {
            assert_eq!(a.authenticate(&t).await.unwrap(), first);
        }
        assert_eq!(a.cache_stats(), CacheStats { hits: 3, misses: 1 });
        // Keyed by the token's SHA-256.
        assert_eq!(a.cache.keys(), vec![token_hash(&t)]);
    }

    #[tokio::test]
    async fn failures_are_not_cached_and_a_changed_signature_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let a = authenticator(dir.path(), Arc::new(SystemClock));
        let t = token(dir.path(), "alice", Duration::from_secs(600));
        a.authenticate(&t).await.unwrap();
        // Same header and claims, another signature: another hash, so verified, and refused.
        let (signed, sig) = t.rsplit_once('.').unwrap();
        let flipped = if sig.starts_with('A') { 'B' } else { 'A' };
        let forged = format!("{signed}.{flipped}{}", &sig[1..]);
        for _ in 0..2 {
            assert_eq!(a.authenticate(&forged).await, Err(AuthError::Signature));
        }
        assert_eq!(a.cache_stats(), CacheStats { hits: 0, misses: 3 });
        assert_eq!(a.cache.len(), 1);
    }

    #[tokio::test]
    async fn a_cached_token_is_refused_once_exp_has_passed() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemClock.now();
        let clock = ManualClock::at(now);
        let a = authenticator(dir.path(), clock.clone());
        let t = token(dir.path(), "alice", Duration::from_secs(60));
        a.authenticate(&t).await.unwrap();
        // Within exp + leeway: still served from the cache.
        clock.set(now + 60 + LEEWAY - 1);
        assert!(a.authenticate(&t).await.is_ok());
        assert_eq!(a.cache_stats().hits, 1);
        // Past it: refused, though the entry was there (the system clock, which the signature
        // check uses, still says the token is valid: only the cache can refuse it here).
        clock.set(now + 60 + LEEWAY + 10);
        assert_eq!(a.authenticate(&t).await, Err(AuthError::Expired));
        assert_eq!(a.cache_stats().hits, 2);
    }

    #[tokio::test]
    async fn a_rebuilt_authenticator_does_not_reuse_verifications() {
        let dir = tempfile::tempdir().unwrap();
        let a = authenticator(dir.path(), Arc::new(SystemClock));
        let t = token(dir.path(), "alice", Duration::from_secs(600));
        a.authenticate(&t).await.unwrap();
        // Rotate the token key (delete it) and build the node's authenticator again, as a
        // restart does: the old token is refused although the old cache still holds it.
        std::fs::remove_file(TokenKey::path(dir.path())).unwrap();
        let b = authenticator(dir.path(), Arc::new(SystemClock));
        assert_eq!(b.authenticate(&t).await, Err(AuthError::UnknownKey));
        assert_eq!(b.cache.len(), 0);
        assert!(a.authenticate(&t).await.is_ok());
    }
}
