//! MAP, the Manifest Admission Protocol of kOS nodes, and node identity.
//!
//! After two nodes connect over KLP they exchange signed manifests and admit each other
//! only if the approved peer list allows it. This crate holds what both sides must agree on
//! byte for byte: the identity format ([`NodeId`], the libp2p `PeerId` of the node's ed25519
//! key, `12D3KooW...`), the message types, their canonical encoding, signatures and the
//! verification rules.
//!
//! It is pure: no async runtime, no networking, no file, clock or OS randomness access.
//! Callers pass the current time (`now_ms`) and fresh nonces, so every rule is tested
//! deterministically.
//!
//! # The handshake (MAP v1)
//!
//! 1. The **dialer** sends `Hello(manifest)`: its node id and public key, name, software
//!    version, profile, the MAP versions it speaks, its skills (agent services) and listen
//!    addresses, a timestamp and a nonce.
//! 2. The **responder** [`open`]s it against the peer the transport authenticated, then
//!    checks admission (the approved peer list, blocks) and [`negotiate`]s the version. It
//!    answers `Welcome { manifest, version }` with its own manifest and the chosen version,
//!    or `Goodbye { reason, .. }` and closes. A failed [`open`] maps to the reason with
//!    [`MapError::goodbye_reason`].
//! 3. The **dialer** [`open`]s the `Welcome` (or `Goodbye`), checks admission of the
//!    responder and that `version` is one it speaks, and may itself answer `Goodbye`.
//!
//! Either side may send `Goodbye` later, e.g. `shutdown` or `revoked`. Which reasons exist
//! and their stable names: [`GoodbyeReason`].
//!
//! # Messages on the wire
//!
//! [`seal`] encodes a [`MapMessage`] canonically (CBOR, see [`map`]), signs
//! `b"kos-map/1\0" || body` with the node key and wraps both in an envelope of at most
//! [`MAX_MESSAGE_BYTES`]. [`open`] checks, each failure its own [`MapError`] variant: size,
//! decoding, field limits, `public_key` against `node_id`, `node_id` against the transport
//! peer, the signature over the body bytes as received, the timestamp against `now_ms`,
//! and the nonce against a [`ReplayGuard`] (whose window is also the allowed clock skew).
//!
//! # The federation op-log
//!
//! [`fedlog`] holds what federation admins decide together: ops signed by admin keys
//! (approve or revoke a peer, add or remove an admin, publish a configuration), replicated
//! by every node as a DAG ([`Log`]). Each op is checked against its own causal past (author
//! an admin there, threshold signatures for admin-set changes, per-author sequence, Lamport
//! clock above its parents'), and the derived [`State`] (admins, approved and revoked peers,
//! configuration per scope) depends only on the set of ops, never on their arrival order:
//! revocations win over concurrent approvals, the last configuration by `(lamport, hash)`
//! wins. Ops are canonical CBOR signed over `b"kos-fedlog/1\0" || bytes` and named by their
//! SHA-256 ([`OpHash`]). [`Log::ops_after`] gives a peer exactly the ops it is missing.

pub mod fedlog;
pub mod identity;
pub mod map;

pub use fedlog::{
    Approval, FEDLOG_SIGNATURE_CONTEXT, Genesis, Log, LogError, Op, OpBody, OpHash, Published,
    Revocation, State, UnsignedOp,
};

pub use identity::{IdError, NodeId};
pub use map::{
    DEFAULT_REPLAY_CAPACITY, DEFAULT_REPLAY_WINDOW_MS, GoodbyeReason, MAP_VERSION,
    MAX_DETAIL_BYTES, MAX_LISTEN_ADDR_BYTES, MAX_LISTEN_ADDRS, MAX_MESSAGE_BYTES, MAX_NAME_BYTES,
    MAX_PROFILE_BYTES, MAX_SKILL_ID_BYTES, MAX_SKILLS, MAX_VERSION_BYTES, Manifest, MapError,
    MapMessage, ReplayGuard, SIGNATURE_CONTEXT, Skill, VersionRange, negotiate, open, seal,
};
