//! The node's ed25519 identity key: one key, one id everywhere (libp2p `PeerId`, MAP
//! signatures). Stored as PKCS#8 PEM in `<dir>/identity.key`, mode 0600, never overwritten.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, spki::der::pem::LineEnding};
use kos_map_protocol::NodeId;

pub const IDENTITY_FILE: &str = "identity.key";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not an ed25519 PKCS#8 PEM private key ({reason})")]
    Format { path: PathBuf, reason: String },
    #[error("{path}: readable by other users (mode {mode:o}); run `chmod 600 {path}`")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("cannot get randomness from the OS: {0}")]
    Random(String),
}

/// A node identity: the signing key and the id derived from it.
pub struct Identity {
    key: SigningKey,
    id: NodeId,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Identity {
    pub fn generate() -> Result<Self, IdentityError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| IdentityError::Random(e.to_string()))?;
        Ok(Self::from_signing_key(SigningKey::from_bytes(&seed)))
    }

    pub fn from_signing_key(key: SigningKey) -> Self {
        let id = NodeId::from_public_key(key.verifying_key());
        Self { key, id }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    pub fn public_key_hex(&self) -> String {
        hex::encode(self.key.verifying_key().as_bytes())
    }

    /// Loads `<dir>/identity.key`.
    pub fn load(dir: &Path) -> Result<Self, IdentityError> {
        read_key_file(&dir.join(IDENTITY_FILE)).map(Self::from_signing_key)
    }

    /// Loads the key, creating it (mode 0600) if there is none. Never overwrites a key.
    /// Returns the identity and whether it was created now.
    pub fn load_or_create(dir: &Path) -> Result<(Self, bool), IdentityError> {
        let path = dir.join(IDENTITY_FILE);
        if path.exists() {
            return Self::load(dir).map(|i| (i, false));
        }
        match create_key_file(&path)? {
            Some(key) => Ok((Self::from_signing_key(key), true)),
            // Another process created the key in the meantime: keep theirs.
            None => Self::load(dir).map(|i| (i, false)),
        }
    }
}

/// Reads an ed25519 PKCS#8 PEM key that only its owner may read (mode 0600). Used for the
/// identity key and for federation admin keys.
pub fn read_key_file(path: &Path) -> Result<SigningKey, IdentityError> {
    let pem = fs::read_to_string(path).map_err(|source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    check_mode(path)?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|e| IdentityError::Format {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Writes a new random key to `path` (PKCS#8 PEM, mode 0600, fsynced), creating the
/// directory. Never overwrites: `None` if the file exists.
pub fn create_key_file(path: &Path) -> Result<Option<SigningKey>, IdentityError> {
    let key = Identity::generate()?.key;
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| IdentityError::Format {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let io_err = |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io_err)?;
    }
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    match opts.open(path) {
        Ok(mut f) => {
            use std::io::Write;
            f.write_all(pem.as_bytes()).map_err(io_err)?;
            f.sync_all().map_err(io_err)?;
            Ok(Some(key))
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(None),
        Err(e) => Err(io_err(e)),
    }
}

#[cfg(unix)]
fn check_mode(path: &Path) -> Result<(), IdentityError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(path)
        .map_err(|source| IdentityError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(IdentityError::Permissions {
            path: path.to_path_buf(),
            mode: mode & 0o777,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_mode(_: &Path) -> Result<(), IdentityError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn create_once_then_load_same() {
        let d = tempfile::tempdir().unwrap();
        let (a, created) = Identity::load_or_create(d.path()).unwrap();
        assert!(created);
        let (b, created) = Identity::load_or_create(d.path()).unwrap();
        assert!(!created);
        assert_eq!(a.id(), b.id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(d.path().join(IDENTITY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn refuses_bad_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(IDENTITY_FILE);
        fs::write(&p, "not a key").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert!(matches!(
            Identity::load(d.path()),
            Err(IdentityError::Format { .. })
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(
                Identity::load(d.path()),
                Err(IdentityError::Permissions { .. })
            ));
        }
    }
}
