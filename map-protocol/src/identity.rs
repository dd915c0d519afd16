//! Node identity: an ed25519 public key, written as a libp2p `PeerId`.
//!
//! A `PeerId` of an ed25519 key is the *identity* multihash of the protobuf-encoded public
//! key, in base58btc:
//!
//! ```text
//! 0x00 0x24                multihash: code identity, length 36
//! 0x08 0x01                protobuf field 1 (KeyType) = Ed25519
//! 0x12 0x20 <32 bytes>     protobuf field 2 (Data) = the public key
//! ```
//! So the key can always be recovered from the id, and the id from the key, without libp2p.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::VerifyingKey;

const PREFIX: [u8; 6] = [0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
const ID_LEN: usize = PREFIX.len() + 32;

/// Why a string is not a node id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("not base58: {0}")]
    Base58(String),
    #[error("not an ed25519 peer id (expected 38 bytes starting 00 24 08 01 12 20)")]
    NotEd25519,
    #[error("the embedded public key is not a valid ed25519 point")]
    BadKey,
}

/// A node's identity: its ed25519 public key, shown as a libp2p `PeerId`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeId(VerifyingKey);

impl NodeId {
    pub fn from_public_key(key: VerifyingKey) -> Self {
        Self(key)
    }

    pub fn public_key(&self) -> &VerifyingKey {
        &self.0
    }

    /// The 38 bytes of the `PeerId` (multihash).
    pub fn to_bytes(&self) -> [u8; ID_LEN] {
        let mut out = [0u8; ID_LEN];
        out[..PREFIX.len()].copy_from_slice(&PREFIX);
        out[PREFIX.len()..].copy_from_slice(self.0.as_bytes());
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdError> {
        if bytes.len() != ID_LEN || bytes[..PREFIX.len()] != PREFIX {
            return Err(IdError::NotEd25519);
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes[PREFIX.len()..]);
        VerifyingKey::from_bytes(&key)
            .map(Self)
            .map_err(|_| IdError::BadKey)
    }
}

/// Ordered by the 32 public-key bytes, so ids can key ordered (deterministic) collections.
impl Ord for NodeId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.as_bytes().cmp(other.0.as_bytes())
    }
}

impl PartialOrd for NodeId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bs58::encode(self.to_bytes()).into_string())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl FromStr for NodeId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        // 38 bytes are at most 52 base58 digits; refuse anything longer before decoding.
        if s.len() > 60 {
            return Err(IdError::NotEd25519);
        }
        let bytes = bs58::decode(s)
            .into_vec()
            .map_err(|e| IdError::Base58(e.to_string()))?;
        Self::from_bytes(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    #[test]
    fn roundtrip_and_form() {
        let key = SigningKey::from_bytes(&[7u8; 32]).verifying_key();
        let id = NodeId::from_public_key(key);
        let s = id.to_string();
        assert!(s.starts_with("12D3KooW"), "{s}");
        assert_eq!(s.parse::<NodeId>().unwrap(), id);
    }

    #[test]
    fn matches_libp2p() {
        // Produced by libp2p-identity 0.2: Keypair::ed25519_from_bytes([7; 32]).public().to_peer_id()
        let key = SigningKey::from_bytes(&[7u8; 32]).verifying_key();
        assert_eq!(
            NodeId::from_public_key(key).to_string(),
            LIBP2P_PEER_ID_OF_SEVENS
        );
    }

    const LIBP2P_PEER_ID_OF_SEVENS: &str = "12D3KooWRawPbxPtP1eZaJpumGnyWX2DcUyd3RQnydr3eAto4Az7";

    #[test]
    fn rejects_garbage() {
        assert!(matches!("0OIl".parse::<NodeId>(), Err(IdError::Base58(_))));
        assert_eq!(
            "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N".parse::<NodeId>(),
            Err(IdError::NotEd25519)
        );
        assert_eq!("x".repeat(100).parse::<NodeId>(), Err(IdError::NotEd25519));
    }
}
