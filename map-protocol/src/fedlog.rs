//! The federation op-log: admin-signed operations every node replicates, and the state
//! derived from them.
//!
//! Federation admins (ed25519 keys, pinned in a [`Genesis`]) sign [`Op`]s: approve or
//! revoke a peer, add or remove an admin, publish a configuration snapshot. Every node keeps
//! the ops in a [`Log`], a DAG in which each op names the ops its author had seen
//! (`parents`, the heads of the author's log). Gossip and anti-entropy (done elsewhere) move
//! ops between nodes; this module only decides which ops are valid and what they mean.
//! **Given the same set of ops, every node derives the same [`State`], whatever order the
//! ops arrived in.** It is pure: no clock (callers pass `timestamp_ms`, which is only
//! informative and never checked), no randomness, no I/O.
//!
//! # Encoding, hash and signatures
//!
//! [`UnsignedOp::canonical_bytes`] is CBOR written by this module (not by serde), so it is
//! the same on every build: every struct is a definite-length map whose keys are its field
//! names in declaration order, an enum is a one-entry map `{variant: fields}` with snake_case
//! names, integers take their shortest form, [`NodeId`]s are the byte string of the 38-byte
//! `PeerId`, hashes and signatures are byte strings, `None` is `null`. Only structs, arrays,
//! strings, byte strings and unsigned integers occur: no floats, no maps with data keys.
//!
//! - [`OpHash`] is the SHA-256 of the canonical unsigned bytes. Signatures are not part of
//!   it, so co-signing does not change an op's identity.
//! - Each signature is ed25519 over [`FEDLOG_SIGNATURE_CONTEXT`]` || canonical bytes`; the
//!   first one is the author's, signers are distinct, at most [`MAX_OP_SIGNATURES`].
//! - [`Op::encode`] is `{ "unsigned": <unsigned op>, "signatures": [[node_id, sig], ...] }`.
//!   [`Op::decode`] checks the size ([`MAX_OP_BYTES`]), decodes, checks the field limits and
//!   that the input **is** the canonical encoding of what it decoded (re-encoding gives the
//!   same bytes), so every op has exactly one wire form. It does not verify signatures:
//!   [`Log::insert`] does.
//!
//! # Validity (checked by [`Log::insert`], in this order)
//!
//! 1. Field limits and structure (`TooLarge`, `Malformed`): parents sorted, distinct, at most
//!    [`MAX_OP_PARENTS`]; 1 to [`MAX_OP_SIGNATURES`] signatures from distinct signers, the
//!    first the author's; string limits; `snapshot_id` 64 lowercase hex digits.
//! 2. Not already in the log (`AlreadyKnown`).
//! 3. All parents in the log (`UnknownParents`: the caller fetches them and retries).
//! 4. `lamport` above every parent's (at least 1 without parents) and at most
//!    [`MAX_LAMPORT_STEP`] above the greatest (`BadLamport`). The upper bound keeps a rogue
//!    admin from pushing the clock to `u64::MAX`, after which no op could follow.
//! 5. Every signature verifies (`BadSignature`).
//! 6. The author is an admin of the op's **causal past** (its ancestors) (`NotAdmin`).
//! 7. `AddAdmin`/`RemoveAdmin` carry at least `threshold` signatures by admins of the causal
//!    past (`BelowThreshold`); other signatures are allowed and not counted.
//! 8. `seq` is one more than the author's greatest `seq` in the causal past (`SeqGap`), so
//!    each author's ops form a causal chain 1, 2, 3, ...
//! 9. No other op in the log has the same `(author, seq)` (`Equivocation`). **The first one
//!    seen wins locally**: replicas that saw the two in different orders keep different ones
//!    (and refuse the other's descendants as `UnknownParents` forever). An honest node never
//!    signs two ops with one `seq`, so an equivocation means the admin's key is compromised
//!    (or its log was lost and restored from an old copy); the remedy is to remove that admin.
//! 10. A `RemoveAdmin` that would leave fewer admins than the threshold (in particular none)
//!     is refused (`WouldBreakAdminSet`).
//!
//! Every check depends only on the op and its causal past, so an op valid on one node is
//! valid on all (the only local decision is which of two equivocating ops came first).
//!
//! # Derived state ([`Log::state`])
//!
//! - **Total order**: by `(lamport, hash)`. It is a topological order, since an op's
//!   lamport is above its parents'.
//! - **Admins**: the genesis admins, then every `AddAdmin`/`RemoveAdmin` in the total order.
//!   A removal of a non-admin does nothing, and so does a removal that would, at its place
//!   in the total order, leave fewer admins than the threshold (possible only when removals
//!   are concurrent: each was checked against its own causal past). The threshold is the
//!   genesis threshold.
//! - **Peers, remove-wins**: peer P is approved iff some `ApprovePeer(P)` op A has every
//!   `RevokePeer(P)` op of the log among its ancestors. A revocation concurrent with an
//!   approval wins; re-approving needs an approval that causally follows every revocation.
//!   The addresses and label come from the greatest such A in the total order. A peer with
//!   a revocation that is not approved is listed as revoked, with the reason of its greatest
//!   revocation.
//! - **Configuration**: per scope, the `PublishConfig` greatest in the total order (last
//!   writer wins by `(lamport, hash)`).
//!
//! # Concurrent admin-set changes
//!
//! The rule is adapted from Tailscale's tailnet lock: **each op is valid against its own
//! causal past**, and admin-set changes are applied in the total order.
//!
//! - Two concurrent `AddAdmin`/`RemoveAdmin` ops are both valid if each was valid against
//!   its causal past; they are applied in `(lamport, hash)` order, so for the same admin the
//!   greater one wins, and a removal that would now break the threshold is skipped.
//! - A removal of admin X concurrent with an op authored by X: **X's op stays valid**,
//!   because X was an admin in that op's causal past, and its effect (an approval, a
//!   configuration) remains in the state. A **later op by X whose causal past includes the
//!   removal is refused** (`NotAdmin`).
//! - Consequence: a removed key can still sign ops that do not descend from its removal and
//!   they will be accepted as "concurrent". Removal alone therefore does not undo what a
//!   compromised key does. The recovery is: remove the admin, then have a remaining admin
//!   revoke (or re-publish) **in an op that causally follows the removal**. Such a revocation
//!   can never be in the causal past of an op by the removed key (that op would need the
//!   removal in its past, and be refused), so by remove-wins no approval by the removed key
//!   can outlive it; and a configuration published with [`Log::new_op`] outranks every op
//!   its author has seen.
//! - Removing an admin does not undo the ops that admin signed while it was one.
//!
//! # Not covered
//!
//! Ops are not bound to a particular genesis: two federations with an admin key in common
//! would accept each other's ops by that key. Pin distinct admin keys per federation.
//! Validation costs a walk of the causal past per insert (O(n log n) for n ops), which is
//! fine for an admin log of thousands of ops.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signature, Signer, SigningKey};
use serde::{Deserialize, Deserializer};
use sha2::{Digest, Sha256};

use crate::identity::NodeId;
use crate::map::{byte_string, node_id_bytes};

/// Domain separation: what an admin signs is this prefix followed by the canonical bytes.
pub const FEDLOG_SIGNATURE_CONTEXT: &[u8] = b"kos-fedlog/1\0";
/// Largest encoded op, checked before anything is decoded.
pub const MAX_OP_BYTES: usize = 256 * 1024;
/// Largest `PublishConfig` content, in bytes.
pub const MAX_CONFIG_CONTENT_BYTES: usize = 128 * 1024;
/// Longest revocation reason and approval label, in bytes.
pub const MAX_TEXT_BYTES: usize = 256;
/// Longest configuration scope, in bytes (at least one byte).
pub const MAX_SCOPE_BYTES: usize = 256;
/// Most addresses in one `ApprovePeer`.
pub const MAX_OP_ADDRS: usize = 16;
/// Longest address in an `ApprovePeer`, in bytes.
pub const MAX_OP_ADDR_BYTES: usize = 256;
/// Most parents of one op.
pub const MAX_OP_PARENTS: usize = 16;
/// Most signatures on one op.
pub const MAX_OP_SIGNATURES: usize = 16;
/// How far an op's lamport may jump above its greatest parent's.
pub const MAX_LAMPORT_STEP: u64 = 1 << 32;
/// CBOR nesting allowed when decoding (an op nests 5 deep); bounds the decoder's stack.
const MAX_NESTING: usize = 16;

/// Why an op was refused, or a log could not be built. Each check of [`Log::insert`] has
/// its own variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    #[error("operation is {size} bytes, the limit is {max}")]
    TooLarge { size: usize, max: usize },
    /// Not decodable, not canonical, trailing bytes, or a field over its limit.
    #[error("malformed operation: {0}")]
    Malformed(String),
    #[error("invalid genesis: {0}")]
    InvalidGenesis(String),
    /// [`Op::sign`] was given a key other than the author's.
    #[error("the signing key is not the key of the operation's author")]
    WrongSigningKey,
    #[error("operation {0} is already in the log")]
    AlreadyKnown(OpHash),
    /// These parents are not in the log: fetch them, insert them, then retry.
    #[error("{} parent operation(s) unknown; fetch them and retry", .0.len())]
    UnknownParents(Vec<OpHash>),
    #[error("lamport {lamport} is outside {min}..={max} (above its parents')")]
    BadLamport { lamport: u64, min: u64, max: u64 },
    #[error("the signature by {signer} does not verify")]
    BadSignature { signer: Box<NodeId> },
    #[error("{author} is not an admin in the operation's causal past")]
    NotAdmin { author: Box<NodeId> },
    #[error("admin-set change signed by {have} admin(s), {need} needed")]
    BelowThreshold { have: u32, need: u32 },
    #[error("seq {got}, expected {expected}")]
    SeqGap { expected: u64, got: u64 },
    /// The author already signed the different op `existing` with this `seq`: a sign of a
    /// compromised admin key. The first op seen is kept.
    #[error(
        "equivocation: {author} already signed operation {existing} with seq {seq} \
         (its key may be compromised)"
    )]
    Equivocation {
        author: Box<NodeId>,
        seq: u64,
        existing: OpHash,
    },
    #[error("would leave {remaining} admin(s), below the threshold {threshold}")]
    WouldBreakAdminSet { remaining: usize, threshold: u32 },
}

/// SHA-256 of an op's canonical unsigned bytes. Shown as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpHash(pub [u8; 32]);

impl OpHash {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for OpHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for OpHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OpHash({self})")
    }
}

impl FromStr for OpHash {
    type Err = LogError;

    /// 64 hex digits, either case.
    fn from_str(s: &str) -> Result<Self, LogError> {
        let bad = || LogError::Malformed(format!("{s:?} is not an op hash (64 hex digits)"));
        let digits = s.as_bytes();
        if digits.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
            let hi = hex_value(pair[0]).ok_or_else(bad)?;
            let lo = hex_value(pair[1]).ok_or_else(bad)?;
            *byte = (hi << 4) | lo;
        }
        Ok(Self(out))
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl<'de> Deserialize<'de> for OpHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        byte_string::deserialize(d).map(Self)
    }
}

/// What an op does.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpBody {
    /// Admit `peer`. `addrs` (multiaddrs as text, at most [`MAX_OP_ADDRS`] of at most
    /// [`MAX_OP_ADDR_BYTES`]) and `label` (at most [`MAX_TEXT_BYTES`]) are informative.
    ApprovePeer {
        #[serde(deserialize_with = "node_id_bytes::deserialize")]
        peer: NodeId,
        addrs: Vec<String>,
        label: Option<String>,
    },
    /// Stop admitting `peer`; wins over every approval it is concurrent with. `reason` at
    /// most [`MAX_TEXT_BYTES`].
    RevokePeer {
        #[serde(deserialize_with = "node_id_bytes::deserialize")]
        peer: NodeId,
        reason: String,
    },
    /// Needs `threshold` admin signatures.
    AddAdmin {
        #[serde(deserialize_with = "node_id_bytes::deserialize")]
        admin: NodeId,
    },
    /// Needs `threshold` admin signatures; refused if it would leave fewer admins than the
    /// threshold.
    RemoveAdmin {
        #[serde(deserialize_with = "node_id_bytes::deserialize")]
        admin: NodeId,
    },
    /// A configuration snapshot for `scope` (1 to [`MAX_SCOPE_BYTES`]); `snapshot_id` is its
    /// id (64 lowercase hex digits), `content` at most [`MAX_CONFIG_CONTENT_BYTES`].
    PublishConfig {
        snapshot_id: String,
        scope: String,
        content: String,
    },
}

impl OpBody {
    fn is_admin_change(&self) -> bool {
        matches!(self, Self::AddAdmin { .. } | Self::RemoveAdmin { .. })
    }

    fn encode(&self, w: &mut Cbor) {
        w.map(1);
        match self {
            Self::ApprovePeer { peer, addrs, label } => {
                w.text("approve_peer");
                w.map(3);
                w.text("peer");
                w.bytes(&peer.to_bytes());
                w.text("addrs");
                w.array(addrs.len());
                for addr in addrs {
                    w.text(addr);
                }
                w.text("label");
                match label {
                    Some(label) => w.text(label),
                    None => w.null(),
                }
            }
            Self::RevokePeer { peer, reason } => {
                w.text("revoke_peer");
                w.map(2);
                w.text("peer");
                w.bytes(&peer.to_bytes());
                w.text("reason");
                w.text(reason);
            }
            Self::AddAdmin { admin } | Self::RemoveAdmin { admin } => {
                w.text(if matches!(self, Self::AddAdmin { .. }) {
                    "add_admin"
                } else {
                    "remove_admin"
                });
                w.map(1);
                w.text("admin");
                w.bytes(&admin.to_bytes());
            }
            Self::PublishConfig {
                snapshot_id,
                scope,
                content,
            } => {
                w.text("publish_config");
                w.map(3);
                w.text("snapshot_id");
                w.text(snapshot_id);
                w.text("scope");
                w.text(scope);
                w.text("content");
                w.text(content);
            }
        }
    }
}

/// The signed part of an op.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UnsignedOp {
    #[serde(deserialize_with = "node_id_bytes::deserialize")]
    pub author: NodeId,
    /// Per author, from 1, without gaps along the author's causal chain.
    pub seq: u64,
    /// Above every parent's lamport (at least 1 without parents).
    pub lamport: u64,
    /// The heads the author had seen: sorted, distinct, at most [`MAX_OP_PARENTS`]. Empty
    /// only for the first ops of the log (an author's `seq` 1 by a genesis admin).
    pub parents: Vec<OpHash>,
    /// The author's clock, milliseconds since the Unix epoch. Informative, never checked.
    pub timestamp_ms: u64,
    pub body: OpBody,
}

impl UnsignedOp {
    /// The canonical CBOR encoding (see the module documentation): what is hashed and,
    /// behind [`FEDLOG_SIGNATURE_CONTEXT`], signed.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut w = Cbor::default();
        self.encode(&mut w);
        w.0
    }

    pub fn hash(&self) -> OpHash {
        OpHash(Sha256::digest(self.canonical_bytes()).into())
    }

    /// Decodes [`UnsignedOp::canonical_bytes`] (a draft handed out for signing elsewhere):
    /// size, CBOR, and that the input is the canonical encoding. Field limits are checked
    /// when the signed op is inserted. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, LogError> {
        if bytes.len() > MAX_OP_BYTES {
            return Err(LogError::TooLarge {
                size: bytes.len(),
                max: MAX_OP_BYTES,
            });
        }
        let op: Self = decode_cbor(bytes)?;
        if op.canonical_bytes() != bytes {
            return Err(LogError::Malformed(
                "not the canonical encoding of the operation".into(),
            ));
        }
        Ok(op)
    }

    fn encode(&self, w: &mut Cbor) {
        w.map(6);
        w.text("author");
        w.bytes(&self.author.to_bytes());
        w.text("seq");
        w.uint(self.seq);
        w.text("lamport");
        w.uint(self.lamport);
        w.text("parents");
        w.array(self.parents.len());
        for parent in &self.parents {
            w.bytes(&parent.0);
        }
        w.text("timestamp_ms");
        w.uint(self.timestamp_ms);
        w.text("body");
        self.body.encode(w);
    }

    fn signed_bytes(&self) -> Vec<u8> {
        [FEDLOG_SIGNATURE_CONTEXT, &self.canonical_bytes()].concat()
    }
}

/// A signed operation. The first signature is the author's; more admins may co-sign
/// ([`Op::cosign`]), which admin-set changes need to reach the threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub unsigned: UnsignedOp,
    pub signatures: Vec<(NodeId, [u8; 64])>,
}

#[derive(Deserialize)]
struct WireOp {
    unsigned: UnsignedOp,
    signatures: Vec<WireSignature>,
}

#[derive(Deserialize)]
struct WireSignature(
    #[serde(deserialize_with = "node_id_bytes::deserialize")] NodeId,
    #[serde(deserialize_with = "byte_string::deserialize")] [u8; 64],
);

impl Op {
    /// Signs `unsigned` as its author. `WrongSigningKey` if `key` is not the author's.
    pub fn sign(unsigned: UnsignedOp, key: &SigningKey) -> Result<Self, LogError> {
        if unsigned.author.public_key() != &key.verifying_key() {
            return Err(LogError::WrongSigningKey);
        }
        Ok(Self::sign_unchecked(unsigned, key))
    }

    fn sign_unchecked(unsigned: UnsignedOp, key: &SigningKey) -> Self {
        let signature = key.sign(&unsigned.signed_bytes()).to_bytes();
        let author = unsigned.author;
        Self {
            unsigned,
            signatures: vec![(author, signature)],
        }
    }

    /// Adds `key`'s signature; does nothing if `key` already signed. (Beyond
    /// [`MAX_OP_SIGNATURES`] the op is refused by [`Log::insert`].)
    pub fn cosign(&mut self, key: &SigningKey) {
        let signer = NodeId::from_public_key(key.verifying_key());
        if self.signatures.iter().any(|(s, _)| *s == signer) {
            return;
        }
        let signature = key.sign(&self.unsigned.signed_bytes()).to_bytes();
        self.signatures.push((signer, signature));
    }

    pub fn hash(&self) -> OpHash {
        self.unsigned.hash()
    }

    /// Checks every signature (and nothing else); `BadSignature` names the first that does
    /// not verify.
    pub fn verify_signatures(&self) -> Result<(), LogError> {
        let signed = self.unsigned.signed_bytes();
        for (signer, signature) in &self.signatures {
            signer
                .public_key()
                .verify_strict(&signed, &Signature::from_bytes(signature))
                .map_err(|_| LogError::BadSignature {
                    signer: Box::new(*signer),
                })?;
        }
        Ok(())
    }

    pub fn author(&self) -> &NodeId {
        &self.unsigned.author
    }

    /// The canonical wire form.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Cbor::default();
        w.map(2);
        w.text("unsigned");
        self.unsigned.encode(&mut w);
        w.text("signatures");
        w.array(self.signatures.len());
        for (signer, signature) in &self.signatures {
            w.array(2);
            w.bytes(&signer.to_bytes());
            w.bytes(signature);
        }
        w.0
    }

    /// Decodes the canonical wire form: size, CBOR, field limits, canonical form. Does not
    /// verify signatures (see [`Log::insert`]). Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, LogError> {
        if bytes.len() > MAX_OP_BYTES {
            return Err(LogError::TooLarge {
                size: bytes.len(),
                max: MAX_OP_BYTES,
            });
        }
        let wire: WireOp = decode_cbor(bytes)?;
        let op = Self {
            unsigned: wire.unsigned,
            signatures: wire
                .signatures
                .into_iter()
                .map(|WireSignature(signer, sig)| (signer, sig))
                .collect(),
        };
        check_limits(&op)?;
        if op.encode() != bytes {
            return Err(LogError::Malformed(
                "not the canonical encoding of the operation".into(),
            ));
        }
        Ok(op)
    }
}

fn decode_cbor<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, LogError> {
    use ciborium::de::Error;
    let mut rest = bytes;
    let value = ciborium::de::from_reader_with_recursion_limit(&mut rest, MAX_NESTING).map_err(
        |e: Error<std::io::Error>| {
            LogError::Malformed(match e {
                Error::Io(_) => "truncated".into(),
                Error::Syntax(at) => format!("invalid CBOR at byte {at}"),
                Error::Semantic(Some(at), msg) => format!("{msg} (at byte {at})"),
                Error::Semantic(None, msg) => msg,
                Error::RecursionLimitExceeded => "nested too deeply".into(),
            })
        },
    )?;
    if !rest.is_empty() {
        return Err(LogError::Malformed(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    Ok(value)
}

/// Structure and field limits, the same for [`Op::decode`] and [`Log::insert`].
fn check_limits(op: &Op) -> Result<(), LogError> {
    let u = &op.unsigned;
    count("parents", u.parents.len(), MAX_OP_PARENTS)?;
    if u.parents.windows(2).any(|w| w[0] >= w[1]) {
        return Err(LogError::Malformed(
            "parents must be sorted and distinct".into(),
        ));
    }
    count("signatures", op.signatures.len(), MAX_OP_SIGNATURES)?;
    match op.signatures.first() {
        Some((signer, _)) if *signer == u.author => {}
        _ => {
            return Err(LogError::Malformed(
                "the first signature must be the author's".into(),
            ));
        }
    }
    let signers: BTreeSet<&NodeId> = op.signatures.iter().map(|(s, _)| s).collect();
    if signers.len() != op.signatures.len() {
        return Err(LogError::Malformed("a signer signed twice".into()));
    }
    match &u.body {
        OpBody::ApprovePeer { addrs, label, .. } => {
            count("addrs", addrs.len(), MAX_OP_ADDRS)?;
            for addr in addrs {
                limit("address", addr, MAX_OP_ADDR_BYTES)?;
            }
            if let Some(label) = label {
                limit("label", label, MAX_TEXT_BYTES)?;
            }
        }
        OpBody::RevokePeer { reason, .. } => limit("reason", reason, MAX_TEXT_BYTES)?,
        OpBody::AddAdmin { .. } | OpBody::RemoveAdmin { .. } => {}
        OpBody::PublishConfig {
            snapshot_id,
            scope,
            content,
        } => {
            if snapshot_id.len() != 64
                || !snapshot_id
                    .bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
            {
                return Err(LogError::Malformed(
                    "snapshot_id must be 64 lowercase hex digits".into(),
                ));
            }
            if scope.is_empty() {
                return Err(LogError::Malformed("scope is empty".into()));
            }
            limit("scope", scope, MAX_SCOPE_BYTES)?;
            limit("content", content, MAX_CONFIG_CONTENT_BYTES)?;
        }
    }
    Ok(())
}

fn limit(field: &str, value: &str, max: usize) -> Result<(), LogError> {
    if value.len() > max {
        return Err(LogError::Malformed(format!(
            "{field} is {} bytes, at most {max} allowed",
            value.len()
        )));
    }
    Ok(())
}

fn count(field: &str, len: usize, max: usize) -> Result<(), LogError> {
    if len > max {
        return Err(LogError::Malformed(format!(
            "{len} {field}, at most {max} allowed"
        )));
    }
    Ok(())
}

/// A minimal canonical CBOR writer: definite lengths, shortest integer forms.
#[derive(Default)]
struct Cbor(Vec<u8>);

impl Cbor {
    fn head(&mut self, major: u8, n: u64) {
        let major = major << 5;
        match n {
            0..=23 => self.0.push(major | n as u8),
            24..=0xff => {
                self.0.push(major | 24);
                self.0.push(n as u8);
            }
            0x100..=0xffff => {
                self.0.push(major | 25);
                self.0.extend_from_slice(&(n as u16).to_be_bytes());
            }
            0x1_0000..=0xffff_ffff => {
                self.0.push(major | 26);
                self.0.extend_from_slice(&(n as u32).to_be_bytes());
            }
            _ => {
                self.0.push(major | 27);
                self.0.extend_from_slice(&n.to_be_bytes());
            }
        }
    }

    fn len(&mut self, major: u8, len: usize) {
        self.head(major, u64::try_from(len).unwrap_or(u64::MAX));
    }

    fn uint(&mut self, n: u64) {
        self.head(0, n);
    }

    fn bytes(&mut self, b: &[u8]) {
        self.len(2, b.len());
        self.0.extend_from_slice(b);
    }

    fn text(&mut self, s: &str) {
        self.len(3, s.len());
        self.0.extend_from_slice(s.as_bytes());
    }

    fn array(&mut self, len: usize) {
        self.len(4, len);
    }

    fn map(&mut self, len: usize) {
        self.len(5, len);
    }

    fn null(&mut self) {
        self.0.push(0xf6);
    }
}

/// The admin keys a federation starts from (pinned in `klp_settings`), and how many admin
/// signatures an admin-set change needs (at least 1, at most the number of admins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Genesis {
    pub admins: Vec<NodeId>,
    pub threshold: u32,
}

/// An approved peer in the [`State`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    pub addrs: Vec<String>,
    pub label: Option<String>,
    /// The approval used: the greatest valid one in the total order.
    pub op: OpHash,
}

/// A revoked (and not re-approved) peer in the [`State`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub reason: String,
    /// The greatest revocation of the peer in the total order.
    pub op: OpHash,
}

/// The configuration published for a scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub snapshot_id: String,
    pub content: String,
    pub op: OpHash,
}

/// What the log means; the same on every node holding the same ops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub admins: BTreeSet<NodeId>,
    pub threshold: u32,
    pub approved: BTreeMap<NodeId, Approval>,
    pub revoked: BTreeMap<NodeId, Revocation>,
    /// By scope.
    pub config: BTreeMap<String, Published>,
}

/// A node's replica of the op-log. Only valid ops get in (see the module documentation).
#[derive(Debug, Clone)]
pub struct Log {
    genesis_admins: BTreeSet<NodeId>,
    threshold: u32,
    ops: BTreeMap<OpHash, Op>,
    /// The total order: `(lamport, hash)`.
    order: BTreeSet<(u64, OpHash)>,
    heads: BTreeSet<OpHash>,
    by_author_seq: BTreeMap<(NodeId, u64), OpHash>,
}

impl Log {
    /// An empty log. `InvalidGenesis` without admins or with a threshold of 0 or above the
    /// number of distinct admins.
    pub fn new(genesis: Genesis) -> Result<Self, LogError> {
        let admins: BTreeSet<NodeId> = genesis.admins.into_iter().collect();
        if admins.is_empty() {
            return Err(LogError::InvalidGenesis("no admins".into()));
        }
        if genesis.threshold == 0 || admin_count(admins.len()) < genesis.threshold {
            return Err(LogError::InvalidGenesis(format!(
                "threshold {} must be between 1 and the {} admins",
                genesis.threshold,
                admins.len()
            )));
        }
        Ok(Self {
            genesis_admins: admins,
            threshold: genesis.threshold,
            ops: BTreeMap::new(),
            order: BTreeSet::new(),
            heads: BTreeSet::new(),
            by_author_seq: BTreeMap::new(),
        })
    }

    pub fn threshold(&self) -> u32 {
        self.threshold
    }

    /// Identifies the genesis (admins and threshold): nodes whose ids differ do not belong
    /// to the same federation, and their ops mean nothing to each other.
    pub fn genesis_id(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"kos-fedlog-genesis/1\0");
        h.update(self.threshold.to_be_bytes());
        for a in &self.genesis_admins {
            h.update(a.to_bytes());
        }
        h.finalize().into()
    }

    pub fn genesis_admins(&self) -> &BTreeSet<NodeId> {
        &self.genesis_admins
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn contains(&self, hash: &OpHash) -> bool {
        self.ops.contains_key(hash)
    }

    pub fn get(&self, hash: &OpHash) -> Option<&Op> {
        self.ops.get(hash)
    }

    /// The ops no other op names as a parent, sorted by hash.
    pub fn heads(&self) -> Vec<OpHash> {
        self.heads.iter().copied().collect()
    }

    /// Every op in the total order `(lamport, hash)` (parents before children).
    pub fn iter(&self) -> impl Iterator<Item = &Op> {
        self.order.iter().filter_map(|(_, h)| self.ops.get(h))
    }

    /// Verifies `op` and adds it (see the module documentation for the checks, in order).
    /// Returns its hash. Never panics.
    pub fn insert(&mut self, op: Op) -> Result<OpHash, LogError> {
        let hash = self.check(&op)?;
        let u = &op.unsigned;
        for parent in &u.parents {
            self.heads.remove(parent);
        }
        self.heads.insert(hash);
        self.order.insert((u.lamport, hash));
        self.by_author_seq.insert((u.author, u.seq), hash);
        self.ops.insert(hash, op);
        Ok(hash)
    }

    /// What [`Log::insert`] checks, without inserting: `Ok(hash)` if `op` would go in. Lets
    /// a caller store an op durably before it changes the log.
    pub fn check(&self, op: &Op) -> Result<OpHash, LogError> {
        check_limits(op)?;
        let size = op.encode().len();
        if size > MAX_OP_BYTES {
            return Err(LogError::TooLarge {
                size,
                max: MAX_OP_BYTES,
            });
        }
        let hash = op.hash();
        if self.ops.contains_key(&hash) {
            return Err(LogError::AlreadyKnown(hash));
        }
        let u = &op.unsigned;
        let missing: Vec<OpHash> = u
            .parents
            .iter()
            .filter(|p| !self.ops.contains_key(p))
            .copied()
            .collect();
        if !missing.is_empty() {
            return Err(LogError::UnknownParents(missing));
        }
        let parents_max = u
            .parents
            .iter()
            .filter_map(|p| self.ops.get(p))
            .map(|p| p.unsigned.lamport)
            .max()
            .unwrap_or(0);
        let (min, max) = (
            parents_max.saturating_add(1),
            parents_max.saturating_add(MAX_LAMPORT_STEP),
        );
        if u.lamport < min || u.lamport > max || parents_max == u64::MAX {
            return Err(LogError::BadLamport {
                lamport: u.lamport,
                min,
                max,
            });
        }
        op.verify_signatures()?;
        let past = self.closure(u.parents.iter(), 0);
        let admins = self.admins_where(|h| past.contains(h));
        if !admins.contains(&u.author) {
            return Err(LogError::NotAdmin {
                author: Box::new(u.author),
            });
        }
        if u.body.is_admin_change() {
            let have = admin_count(
                op.signatures
                    .iter()
                    .filter(|(s, _)| admins.contains(s))
                    .count(),
            );
            if have < self.threshold {
                return Err(LogError::BelowThreshold {
                    have,
                    need: self.threshold,
                });
            }
        }
        let previous = past
            .iter()
            .filter_map(|h| self.ops.get(h))
            .filter(|o| o.unsigned.author == u.author)
            .map(|o| o.unsigned.seq)
            .max()
            .unwrap_or(0);
        let expected = previous.saturating_add(1);
        if u.seq != expected {
            return Err(LogError::SeqGap {
                expected,
                got: u.seq,
            });
        }
        if let Some(existing) = self.by_author_seq.get(&(u.author, u.seq)) {
            return Err(LogError::Equivocation {
                author: Box::new(u.author),
                seq: u.seq,
                existing: *existing,
            });
        }
        if let OpBody::RemoveAdmin { admin } = &u.body {
            let mut after = admins;
            after.remove(admin);
            if admin_count(after.len()) < self.threshold {
                return Err(LogError::WouldBreakAdminSet {
                    remaining: after.len(),
                    threshold: self.threshold,
                });
            }
        }
        Ok(hash)
    }

    /// Every op not in the causal history of `known_heads`, parents first (in the total
    /// order), so the receiver can insert them in sequence. When every head a peer sends is
    /// held here, this is exactly what the peer is missing. Heads this log does not hold
    /// are ignored (their history is unknown here), so the answer is then a superset; the
    /// surplus answers `AlreadyKnown`. A round the other way (the peer sends what this log
    /// misses) makes both heads known to both sides.
    pub fn ops_after(&self, known_heads: &[OpHash]) -> Vec<&Op> {
        let known = self.closure(known_heads.iter(), 0);
        self.order
            .iter()
            .filter(|(_, h)| !known.contains(h))
            .filter_map(|(_, h)| self.ops.get(h))
            .collect()
    }

    /// A new op by `author_key`'s admin on top of this log: `seq` one more than the
    /// author's last, `lamport` one more than the greatest head's, the current heads as
    /// parents (if there are more than [`MAX_OP_PARENTS`], the greatest ones in the total
    /// order, always including one that descends from the author's last op). Signed by the
    /// author only; [`Op::cosign`] to add signatures, then [`Log::insert`].
    pub fn new_op(&self, author_key: &SigningKey, body: OpBody, timestamp_ms: u64) -> Op {
        let author = NodeId::from_public_key(author_key.verifying_key());
        Op::sign_unchecked(self.draft(author, body, timestamp_ms), author_key)
    }

    /// The unsigned op [`Log::new_op`] would sign for `author`, for signing elsewhere (with
    /// [`Op::sign`], then [`Op::cosign`] by other admins).
    pub fn draft(&self, author: NodeId, body: OpBody, timestamp_ms: u64) -> UnsignedOp {
        let last = self
            .by_author_seq
            .range((author, 0)..=(author, u64::MAX))
            .next_back()
            .map(|((_, seq), hash)| (*seq, *hash));
        let seq = last.map_or(1, |(seq, _)| seq.saturating_add(1));
        let lamport = self
            .heads
            .iter()
            .filter_map(|h| self.ops.get(h))
            .map(|o| o.unsigned.lamport)
            .max()
            .unwrap_or(0)
            .saturating_add(1);
        let parents = self.choose_parents(last.map(|(_, hash)| hash));
        UnsignedOp {
            author,
            seq,
            lamport,
            parents,
            timestamp_ms,
            body,
        }
    }

    fn choose_parents(&self, must_descend_from: Option<OpHash>) -> Vec<OpHash> {
        if self.heads.len() <= MAX_OP_PARENTS {
            return self.heads();
        }
        let mut by_order: Vec<(u64, OpHash)> = self
            .heads
            .iter()
            .filter_map(|h| self.ops.get(h).map(|o| (o.unsigned.lamport, *h)))
            .collect();
        by_order.sort_unstable_by(|a, b| b.cmp(a));
        let mut chosen = BTreeSet::new();
        if let Some(last) = must_descend_from.and_then(|h| self.ops.get(&h).map(|o| (o, h))) {
            let (last_op, last_hash) = last;
            if let Some((_, head)) = by_order.iter().find(|(_, head)| {
                self.closure(std::iter::once(head), last_op.unsigned.lamport)
                    .contains(&last_hash)
            }) {
                chosen.insert(*head);
            }
        }
        for (_, head) in by_order {
            if chosen.len() >= MAX_OP_PARENTS {
                break;
            }
            chosen.insert(head);
        }
        chosen.into_iter().collect()
    }

    /// The state the log means (see the module documentation). Deterministic: the same set
    /// of ops gives the same state on every node.
    pub fn state(&self) -> State {
        let admins = self.admins_where(|_| true);
        let mut approvals: BTreeMap<NodeId, Vec<(&OpHash, &Op)>> = BTreeMap::new();
        let mut revocations: BTreeMap<NodeId, Vec<(&OpHash, &Op)>> = BTreeMap::new();
        let mut config = BTreeMap::new();
        for (_, hash) in &self.order {
            let Some(op) = self.ops.get(hash) else {
                continue;
            };
            match &op.unsigned.body {
                OpBody::ApprovePeer { peer, .. } => {
                    approvals.entry(*peer).or_default().push((hash, op));
                }
                OpBody::RevokePeer { peer, .. } => {
                    revocations.entry(*peer).or_default().push((hash, op));
                }
                OpBody::PublishConfig {
                    snapshot_id,
                    scope,
                    content,
                } => {
                    config.insert(
                        scope.clone(),
                        Published {
                            snapshot_id: snapshot_id.clone(),
                            content: content.clone(),
                            op: *hash,
                        },
                    );
                }
                OpBody::AddAdmin { .. } | OpBody::RemoveAdmin { .. } => {}
            }
        }
        let mut approved = BTreeMap::new();
        for (peer, candidates) in &approvals {
            let revs = revocations.get(peer).map(Vec::as_slice).unwrap_or_default();
            let (min_rev, max_rev) = (
                revs.iter().map(|(_, r)| r.unsigned.lamport).min(),
                revs.iter().map(|(_, r)| r.unsigned.lamport).max(),
            );
            let winner = candidates.iter().rev().find(|(_, a)| {
                let (Some(min_rev), Some(max_rev)) = (min_rev, max_rev) else {
                    return true;
                };
                if a.unsigned.lamport <= max_rev {
                    return false;
                }
                let past = self.closure(a.unsigned.parents.iter(), min_rev);
                revs.iter().all(|(r, _)| past.contains(r))
            });
            if let Some((hash, op)) = winner
                && let OpBody::ApprovePeer { addrs, label, .. } = &op.unsigned.body
            {
                approved.insert(
                    *peer,
                    Approval {
                        addrs: addrs.clone(),
                        label: label.clone(),
                        op: **hash,
                    },
                );
            }
        }
        let mut revoked = BTreeMap::new();
        for (peer, revs) in &revocations {
            if approved.contains_key(peer) {
                continue;
            }
            if let Some((hash, op)) = revs.last()
                && let OpBody::RevokePeer { reason, .. } = &op.unsigned.body
            {
                revoked.insert(
                    *peer,
                    Revocation {
                        reason: reason.clone(),
                        op: **hash,
                    },
                );
            }
        }
        State {
            admins,
            threshold: self.threshold,
            approved,
            revoked,
            config,
        }
    }

    /// The admins after applying, in the total order, the admin-set changes among the ops
    /// `include` selects.
    fn admins_where(&self, include: impl Fn(&OpHash) -> bool) -> BTreeSet<NodeId> {
        let mut admins = self.genesis_admins.clone();
        for (_, hash) in &self.order {
            if !include(hash) {
                continue;
            }
            let Some(op) = self.ops.get(hash) else {
                continue;
            };
            match &op.unsigned.body {
                OpBody::AddAdmin { admin } => {
                    admins.insert(*admin);
                }
                // Concurrent removals may together go below the threshold: the later one in
                // the total order is then skipped (and a removal of a non-admin does nothing).
                OpBody::RemoveAdmin { admin }
                    if admins.contains(admin)
                        && admin_count(admins.len().saturating_sub(1)) >= self.threshold =>
                {
                    admins.remove(admin);
                }
                _ => {}
            }
        }
        admins
    }

    /// The given ops and all their ancestors held by this log, skipping ops whose lamport
    /// is below `min_lamport` (none of their ancestors can reach it either).
    fn closure<'a>(
        &self,
        starts: impl IntoIterator<Item = &'a OpHash>,
        min_lamport: u64,
    ) -> BTreeSet<OpHash> {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<OpHash> = starts.into_iter().copied().collect();
        while let Some(hash) = stack.pop() {
            let Some(op) = self.ops.get(&hash) else {
                continue;
            };
            if op.unsigned.lamport < min_lamport || !seen.insert(hash) {
                continue;
            }
            stack.extend(op.unsigned.parents.iter().copied());
        }
        seen
    }
}

fn admin_count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
