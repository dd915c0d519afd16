//! Local tokens: the token key, issuing (`kos token create`) and verifying.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, spki::der::pem::LineEnding};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, encode};
use sha2::{Digest, Sha256};

use super::cache::Verified;
use super::{AuthError, LocalClaims, Principal, Role, validation, verify_with};

/// The token key's file, relative to the config directory.
pub const TOKEN_KEY_FILE: &str = "auth/token.key";

/// Issuer and audience of local tokens.
pub fn local_issuer(node_id: &str) -> String {
    format!("kos-node:{node_id}")
}

/// The EdDSA key that signs local tokens. Not the identity key: it can be rotated by
/// deleting the file (every token it signed stops working).
pub struct TokenKey {
    key: SigningKey,
}

impl TokenKey {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(TOKEN_KEY_FILE)
    }

    /// Loads the key, creating it (mode 0600) on first use.
    pub fn load_or_create(dir: &Path) -> Result<Self> {
        let path = Self::path(dir);
        if path.exists() {
            let pem = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let key = SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
                anyhow::anyhow!("{}: not an ed25519 PKCS#8 key: {e}", path.display())
            })?;
            return Ok(Self { key });
        }
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let key = SigningKey::from_bytes(&seed);
        let pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| anyhow::anyhow!("encoding the token key: {e}"))?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // Create exclusively: the node and a CLI command may both get here at once. Write a
        // private temporary file, then hard-link it into place, which fails if the key already
        // exists; the loser loads the winner's key, so everyone signs with the same one.
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let tmp = path.with_file_name(format!(
            ".token.key.{}.{}",
            std::process::id(),
            hex::encode(nonce)
        ));
        kos_config::snapshot::atomic_write(&tmp, pem.as_bytes(), Some(0o600), &mut |_| {})
            .with_context(|| format!("writing {}", tmp.display()))?;
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Self::load_or_create(dir);
            }
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        }
        Ok(Self { key })
    }

    /// Key id: the first 16 hex digits of the SHA-256 of the public key.
    pub fn kid(&self) -> String {
        hex::encode(&Sha256::digest(self.key.verifying_key().as_bytes())[..8])
    }

    fn encoding_key(&self) -> Result<EncodingKey> {
        let pem = self
            .key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        EncodingKey::from_ed_pem(pem.as_bytes()).context("loading the token key")
    }

    fn decoding_key(&self) -> Result<DecodingKey> {
        DecodingKey::from_ed_components(
            &URL_SAFE_NO_PAD.encode(self.key.verifying_key().as_bytes()),
        )
        .context("token key")
    }
}

/// Signs a local token.
pub fn issue(
    alg: IssueKey<'_>,
    node_id: &str,
    sub: &str,
    role: Role,
    ttl: Duration,
) -> Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut jti = [0u8; 12];
    getrandom::fill(&mut jti).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let issuer = local_issuer(node_id);
    let claims = LocalClaims {
        iss: issuer.clone(),
        aud: issuer,
        sub: sub.to_string(),
        exp: now + ttl.as_secs(),
        iat: now,
        nbf: now,
        jti: hex::encode(jti),
        role,
    };
    let (header, key) = match alg {
        IssueKey::Eddsa(k) => {
            let mut h = Header::new(Algorithm::EdDSA);
            h.kid = Some(k.kid());
            (h, k.encoding_key()?)
        }
        IssueKey::Hs256(secret) => (
            Header::new(Algorithm::HS256),
            EncodingKey::from_secret(secret),
        ),
    };
    encode(&header, &claims, &key).context("signing the token")
}

/// Which key signs a new local token.
pub enum IssueKey<'a> {
    Eddsa(&'a TokenKey),
    Hs256(&'a [u8]),
}

/// Verifies local tokens.
pub struct LocalVerifier {
    alg: Algorithm,
    kid: Option<String>,
    key: DecodingKey,
    issuer: String,
}

impl LocalVerifier {
    pub fn eddsa(k: &TokenKey, node_id: &str) -> Self {
        // A key we just generated or loaded always converts; if not, no token will verify.
        let key = k
            .decoding_key()
            .unwrap_or_else(|_| DecodingKey::from_secret(&[]));
        Self {
            alg: Algorithm::EdDSA,
            kid: Some(k.kid()),
            key,
            issuer: local_issuer(node_id),
        }
    }

    pub fn hs256(secret: &[u8], node_id: &str) -> Self {
        Self {
            alg: Algorithm::HS256,
            kid: None,
            key: DecodingKey::from_secret(secret),
            issuer: local_issuer(node_id),
        }
    }

    /// Whether a token with this header is meant for the local verifier.
    pub fn claims_token(&self, h: &jsonwebtoken::Header) -> bool {
        h.alg == self.alg && (self.kid.is_none() || h.kid == self.kid)
    }

    pub(crate) fn verify(&self, token: &str, leeway: u64) -> Result<Verified, AuthError> {
        let v = validation(self.alg, &self.issuer, &self.issuer, leeway);
        let c: LocalClaims = verify_with(token, &self.key, &v)?;
        Ok(Verified {
            principal: Principal {
                sub: c.sub,
                role: c.role,
                source: "local",
            },
            exp: Some(c.exp),
            nbf: Some(c.nbf),
        })
    }
}

// Debug without key material.
impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey")
            .field("kid", &self.kid())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for IssueKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IssueKey::Eddsa(_) => "IssueKey::Eddsa",
            IssueKey::Hs256(_) => "IssueKey::Hs256",
        })
    }
}

impl std::fmt::Debug for LocalVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalVerifier")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// The local signing key the configuration selects: the token key (EdDSA) or the HS256
/// secret. One place decides, for both the node (verifying) and the CLI (minting).
pub(crate) enum ConfiguredKey {
    Eddsa(TokenKey),
    Hs256(Vec<u8>),
}

impl ConfiguredKey {
    /// `None` when local tokens are disabled.
    pub(crate) fn load(config: &kos_config::Config, dir: &Path) -> Result<Option<Self>> {
        let a = &config.auth;
        if !a.jwt.is_enabled() {
            return Ok(None);
        }
        Ok(Some(match a.jwt_algorithm {
            kos_config::model::JwtAlgorithm::Eddsa => Self::Eddsa(TokenKey::load_or_create(dir)?),
            kos_config::model::JwtAlgorithm::Hs256 => Self::Hs256(
                a.jwt_secret
                    .as_ref()
                    .map(|s| s.expose().as_bytes().to_vec())
                    .unwrap_or_default(),
            ),
        }))
    }

    pub(crate) fn issue_key(&self) -> IssueKey<'_> {
        match self {
            Self::Eddsa(k) => IssueKey::Eddsa(k),
            Self::Hs256(secret) => IssueKey::Hs256(secret),
        }
    }

    pub(crate) fn verifier(&self, node_id: &str) -> LocalVerifier {
        match self {
            Self::Eddsa(k) => LocalVerifier::eddsa(k, node_id),
            Self::Hs256(secret) => LocalVerifier::hs256(secret, node_id),
        }
    }
}

/// A token with a chosen subject, signed the way the configuration says.
pub fn mint_named(
    dir: &Path,
    config: &kos_config::Config,
    node_id: &str,
    sub: &str,
    role: Role,
    ttl: Duration,
) -> Result<Option<String>> {
    match ConfiguredKey::load(config, dir)? {
        Some(k) => issue(k.issue_key(), node_id, sub, role, ttl).map(Some),
        None => Ok(None),
    }
}

/// A token for talking to the node of a config directory from this machine (the CLI has
/// the same access to the token key as the node). `None` when local tokens are disabled.
pub fn mint_for_dir(
    dir: &Path,
    config: &kos_config::Config,
    node_id: &str,
    role: Role,
    ttl: Duration,
) -> Result<Option<String>> {
    mint_named(dir, config, node_id, "kos-cli", role, ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_creation_yields_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let kids: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|_| s.spawn(|| TokenKey::load_or_create(dir.path()).unwrap().kid()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let on_disk = TokenKey::load_or_create(dir.path()).unwrap().kid();
        assert!(kids.iter().all(|k| *k == on_disk), "{kids:?} vs {on_disk}");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("auth"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(TokenKey::path(dir.path()))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
