//! KLP, the Kind Link Protocol: the libp2p swarm of a kOS node.
//!
//! This is the only crate that imports libp2p. The rest of the node sees a [`Klp`] handle
//! (cloneable; bounded command channel, oneshot replies) and a stream of [`KlpEvent`]s; no
//! libp2p type crosses this crate's public API.
//!
//! ## The swarm
//! TCP and QUIC, noise, yamux, DNS. Behaviours, in gating order:
//! 1. **blocklist** (`allow_block_list::BlockedPeers`): peers banned by the operator or, for a
//!    while, for failing verification;
//! 2. **pending-inbound gate** (`gate.rs`): connections that have not finished noise and
//!    yamux (2 s at most) are bounded per source address and network, with slots reserved
//!    for the addresses of approved peers;
//! 3. **connection limits** on established connections, which approved peers bypass;
//! 4. identify, ping, gossipsub (strict signing, content-hash message ids, application-level
//!    validation: only admitted peers' messages are accepted; mesh 2/4/8, outbound min 1),
//!    request-response (CBOR) carrying MAP and later agent calls, and kademlia in server mode
//!    under the federation's own protocol name (`/kos/<network>/kad/1.0.0`).
//!
//! Then, in the event loop: **handshake deadline** (a connection whose peer has not finished
//! MAP within `handshake_timeout` is closed) → **admission** (MAP verified, and with
//! `handshake_required` the peer must be in `peers.list`) → **connected**.
//!
//! ## MAP over KLP
//! The dialer sends `Hello`; the listener verifies it, checks admission and answers
//! `Welcome` (its own manifest and the chosen version) or `Goodbye{reason}` and closes. The
//! dialer verifies the `Welcome`, checks its own admission rule, and may answer with a
//! `Goodbye` request of its own. Every message is signed by the node key (the same key as the
//! libp2p identity) and checked against the connection's peer id. On shutdown the node says
//! `Goodbye{shutdown}` to its admitted peers and waits (at most 1 s) for their
//! acknowledgements. A message that cannot be built (no randomness for its nonce, or a
//! failed seal) is never sent; the connection is closed instead.
//!
//! ## Discovery
//! DNS-SD (`mdns-sd`): the node advertises `_kos-klp._udp.local.` with TXT `id=<peer id>` and
//! `v=<MAP version>` only, browses for the same type and dials what it finds; MAP decides.

mod admission;
mod discovery;
mod gate;
pub mod peers;
mod redial;
mod swarm;

use std::time::Duration;

pub use kos_map_protocol::NodeId;
pub use peers::{
    Blocked, PeerEntry, PeersFile, PeersListError, parse_peers_file, parse_peers_list,
};
pub use swarm::{
    InboundCall, InboundSync, Klp, KlpError, MAP_PROTOCOL, SYNC_RESPONSE_BUDGET, WIRE_LIMIT,
    WireRequest, WireResponse,
};

/// The DNS-SD service type kOS nodes advertise.
pub const SERVICE_TYPE: &str = "_kos-klp._udp.local.";

/// How a node takes part in KLP.
#[derive(Clone)]
pub struct KlpConfig {
    /// The node's ed25519 secret key (32 bytes): libp2p identity and MAP signing key.
    pub secret_key: [u8; 32],
    /// Multiaddrs to listen on (`/ip4/0.0.0.0/tcp/4001`, `/ip4/0.0.0.0/udp/4001/quic-v1`).
    pub listen: Vec<String>,
    /// Multiaddrs ending in `/p2p/<peer id>` dialed at start.
    pub bootstrap: Vec<String>,
    /// The approved peers (`klp/peers.list`).
    pub approved: Vec<PeerEntry>,
    /// With `true`, only approved peers are admitted; with `false`, any peer with a valid
    /// MAP handshake is (open federation).
    pub handshake_required: bool,
    /// Federation name; part of the kademlia and gossipsub protocol names.
    pub network: String,
    pub discovery: DiscoveryConfig,
    /// What this node tells peers about itself.
    pub manifest: ManifestInfo,
    /// A connection that has not finished MAP within this time is closed.
    pub handshake_timeout: Duration,
    /// Total established connections (approved peers are not counted against it).
    pub max_connections: u32,
    pub max_connections_per_peer: u32,
    /// Accepted clock difference for MAP timestamps (and replay window).
    pub clock_skew: Duration,
}

impl std::fmt::Debug for KlpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KlpConfig")
            .field("listen", &self.listen)
            .field("approved", &self.approved.len())
            .field("handshake_required", &self.handshake_required)
            .field("network", &self.network)
            .finish_non_exhaustive()
    }
}

impl KlpConfig {
    /// Defaults for everything but the key, listen addresses and manifest.
    pub fn new(secret_key: [u8; 32], listen: Vec<String>, manifest: ManifestInfo) -> Self {
        Self {
            secret_key,
            listen,
            bootstrap: Vec::new(),
            approved: Vec::new(),
            handshake_required: true,
            network: "kos".into(),
            discovery: DiscoveryConfig::default(),
            manifest,
            handshake_timeout: Duration::from_secs(5),
            max_connections: 256,
            max_connections_per_peer: 4,
            clock_skew: Duration::from_secs(30),
        }
    }
}

/// DNS-SD settings.
#[derive(Clone, Debug, Default)]
pub struct DiscoveryConfig {
    pub enabled: bool,
    /// Interface names to use; empty means all.
    pub interfaces: Vec<String>,
}

/// The parts of the MAP manifest that describe this node.
#[derive(Clone, Debug, Default)]
pub struct ManifestInfo {
    pub name: String,
    pub version: String,
    pub profile: String,
    /// Offered agent services: (id, version).
    pub services: Vec<(String, String)>,
}

/// Where a peer stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HandshakeState {
    /// Not connected.
    Disconnected,
    /// Connected, MAP not finished.
    Handshaking,
    /// MAP finished and admitted.
    Admitted,
    /// MAP refused (by us or by them); see `last_refusal`.
    Refused,
}

/// A peer as the node sees it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PeerInfo {
    pub id: String,
    pub approved: bool,
    pub label: Option<String>,
    pub discovered: bool,
    pub connected: bool,
    pub connections: usize,
    pub state: HandshakeState,
    pub protocol_version: Option<u16>,
    pub rtt_ms: Option<f64>,
    /// Unix milliseconds of the last activity (connection, handshake, ping).
    pub last_seen_ms: Option<u64>,
    /// Addresses known for the peer (list, discovery, identify).
    pub addrs: Vec<String>,
    pub name: Option<String>,
    pub profile: Option<String>,
    pub software_version: Option<String>,
    pub services: Vec<(String, String)>,
    /// Last refusal: reason and who refused (`us` or `peer`).
    pub last_refusal: Option<Refusal>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Refusal {
    pub reason: String,
    pub by: RefusedBy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusedBy {
    Us,
    Peer,
}

/// What happens in the swarm, for the node (metrics, logs, API).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KlpEvent {
    Listening {
        addr: String,
    },
    ConnectionOpened {
        peer: String,
        total: usize,
    },
    ConnectionClosed {
        peer: String,
        total: usize,
    },
    Admitted {
        peer: String,
        version: u16,
    },
    /// A handshake failed, or a peer ended the session with a Goodbye (`shutdown`: it is
    /// stopping; no ban, a listed peer is redialed); `reason` is a MAP Goodbye reason.
    Refused {
        peer: String,
        reason: String,
        by: RefusedBy,
    },
    Disconnected {
        peer: String,
    },
    Discovered {
        peer: String,
        addrs: Vec<String>,
    },
    /// A gossip message from an admitted peer.
    Message {
        topic: String,
        from: String,
        data: Vec<u8>,
    },
}
