//! MAP, the Manifest Admission Protocol of kOS nodes, and node identity.
//!
//! After two nodes connect over KLP they exchange signed manifests (`Hello`, then `Welcome`
//! or `Goodbye{reason}`) and admit each other only if the approved peer list allows it. This
//! crate holds what both sides must agree on byte for byte: the identity format, message
//! types, canonical encoding, signatures and the verification rules.
//!
//! It is pure: no async runtime, no networking, no file or clock access. Callers pass in
//! the current time and randomness, so every rule can be tested deterministically.
//!
//! Today it provides [`NodeId`]: a node's one identity, the libp2p `PeerId` of its ed25519
//! key, in the same textual form (`12D3KooW...`). The message types arrive with the KLP work.

pub mod identity;

pub use identity::{IdError, NodeId};
