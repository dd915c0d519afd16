//! The swarm actor: one task owns the `Swarm`; [`Klp`] is its handle.
//!
//! - `handle.rs`: the public methods of [`Klp`] (commands over a bounded channel).
//! - `start.rs`: [`Klp::start`]: builds the swarm, listens, spawns the event loop.
//! - `event_loop.rs`: the event loop: selects and dispatches; connections, ticks, the peer
//!   table. Admission and redial decisions are in the sans-I/O cores
//!   [`crate::admission`] and [`crate::redial`].
//! - `map.rs`: the MAP handshake (Hello, Welcome, Goodbye).
//! - `calls.rs`: API calls and federation sync between admitted peers.
//! - `commands.rs`: the handle's commands, and the peer list it reads.

mod calls;
mod commands;
mod event_loop;
mod handle;
mod map;
mod start;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kos_map_protocol::{GoodbyeReason, Manifest, MapError, MapMessage, NodeId, ReplayGuard, seal};
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::{ConnectionId, NetworkBehaviour};
use libp2p::{
    Multiaddr, PeerId, Swarm, allow_block_list, connection_limits, gossipsub, identify, kad, ping,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};

use self::calls::Outgoing;
use crate::admission::Admission;
use crate::discovery::Discovery;
use crate::gate::{Gate, Source};
use crate::peers::PeerEntry;
use crate::redial::Redial;
use crate::{HandshakeState, KlpConfig, KlpEvent, PeerInfo, Refusal};

/// The MAP protocol over request-response.
pub const MAP_PROTOCOL: &str = "/kos/klp/map/1.0.0";
/// Largest request or response on the MAP protocol; larger streams are reset by the codec.
/// (MAP itself refuses anything over `MAX_MESSAGE_BYTES` with `Goodbye{too_large}`.)
pub const WIRE_LIMIT: u64 = 256 * 1024;
/// Largest response: a federation sync answer carries up to [`SYNC_RESPONSE_BUDGET`] of ops.
pub const WIRE_RESPONSE_LIMIT: u64 = 1024 * 1024;
/// What a node may put in one sync answer, leaving room for the envelope.
pub const SYNC_RESPONSE_BUDGET: usize = 768 * 1024;
const COMMAND_QUEUE: usize = 64;
const EVENT_QUEUE: usize = 1024;
/// How long shutdown waits, in all, for admitted peers to acknowledge `Goodbye{shutdown}`.
const SHUTDOWN_GOODBYE_WAIT: Duration = Duration::from_secs(1);
/// How long an inbound TCP connection may take to finish its security (noise) and muxer
/// (yamux) negotiation. Both take about two round trips; the rest is a socket that is not
/// going to speak.
pub(crate) const INBOUND_UPGRADE_TIMEOUT: Duration = Duration::from_secs(2);
/// Addresses remembered per approved peer, from connections its key proved (see `gate`).
const SEEN_SOURCES: usize = 4;
/// Peers the node keeps an entry for although they are not approved, not connected and not
/// due for a redial (refused strangers, DNS-SD announcements): the most recently seen this
/// many. Every new peer id that connects or is announced gets an entry, and a fresh id costs
/// an attacker nothing, so the table is bounded here.
const MAX_IDLE_STRANGERS: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum KlpError {
    #[error("invalid identity key: {0}")]
    Key(String),
    #[error("invalid multiaddr `{addr}`: {reason}")]
    Addr { addr: String, reason: String },
    #[error("cannot build the transport: {0}")]
    Transport(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },
    #[error("the KLP task has stopped")]
    Stopped,
    #[error("dial failed: {0}")]
    Dial(String),
    #[error("DNS-SD: {0}")]
    Discovery(String),
    #[error("remote call failed: {0}")]
    Call(String),
}

/// Why a MAP message of ours could not be built. Nothing is sent then: the connection it was
/// meant for is closed and the reason logged (never a zero nonce or an empty message).
#[derive(Debug, thiserror::Error)]
pub(crate) enum MessageError {
    #[error("no randomness for the MAP nonce: {0}")]
    Random(String),
    #[error("the random source gave an all-zero MAP nonce")]
    ZeroNonce,
    #[error("cannot seal the MAP message: {0}")]
    Seal(#[from] MapError),
}

/// A MAP nonce from `fill` (the OS random source in the node): an error if the source fails
/// or yields only zeros.
fn nonce_from<E: std::fmt::Display>(
    fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
) -> Result<[u8; 16], MessageError> {
    let mut nonce = [0u8; 16];
    fill(&mut nonce).map_err(|e| MessageError::Random(e.to_string()))?;
    if nonce == [0u8; 16] {
        return Err(MessageError::ZeroNonce);
    }
    Ok(nonce)
}

fn os_random(buf: &mut [u8]) -> Result<(), getrandom::Error> {
    getrandom::fill(buf)
}

/// A sealed `Goodbye{reason}` from `node` (whose key is `key`), its nonce from `fill`.
fn seal_goodbye<E: std::fmt::Display>(
    key: &ed25519_dalek::SigningKey,
    node: NodeId,
    reason: GoodbyeReason,
    detail: &str,
    fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
) -> Result<Vec<u8>, MessageError> {
    let msg = MapMessage::Goodbye {
        reason,
        detail: detail.chars().take(200).collect(),
        node_id: node,
        timestamp_ms: now_ms(),
        nonce: nonce_from(fill)?,
    };
    Ok(seal(&msg, key)?)
}

/// MAP bytes on the wire (CBOR byte strings).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum WireRequest {
    Map(#[serde(with = "serde_bytes")] Vec<u8>),
    /// An API call from an admitted peer (see [`InboundCall`]).
    Call {
        method: String,
        path: String,
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    /// Federation sync (see [`InboundSync`]); the node defines the bytes.
    Sync(#[serde(with = "serde_bytes")] Vec<u8>),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum WireResponse {
    Map(#[serde(with = "serde_bytes")] Vec<u8>),
    Ack,
    Call {
        status: u16,
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    /// The call was not taken (peer not admitted, node busy); the text says why.
    Refused(String),
    Sync(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// Where the answer to one of our remote calls goes.
type CallReply = oneshot::Sender<Result<(u16, Vec<u8>), KlpError>>;
/// Where the answer to one of our sync requests goes.
type SyncReply = oneshot::Sender<Result<Vec<u8>, KlpError>>;

/// Longest method and path accepted in a remote call.
const MAX_CALL_METHOD: usize = 8;
const MAX_CALL_PATH: usize = 1024;
/// How long the node may take to answer a remote call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const INBOUND_CALL_QUEUE: usize = 32;

/// A federation sync request from an admitted peer, for the node to answer with `reply`
/// (within the call timeout, or the peer gets a refusal). The bytes are the node's protocol.
#[derive(Debug)]
pub struct InboundSync {
    pub peer: NodeId,
    pub body: Vec<u8>,
    pub reply: oneshot::Sender<Vec<u8>>,
}

/// An API call from an admitted peer, for the node to answer. The peer is identified by its
/// MAP-verified node id; the node decides what it may do.
#[derive(Debug)]
pub struct InboundCall {
    pub peer: NodeId,
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
    /// Status and body of the answer.
    pub reply: oneshot::Sender<(u16, Vec<u8>)>,
}

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    gate: Gate,
    limits: connection_limits::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    gossipsub: gossipsub::Behaviour,
    map: request_response::cbor::Behaviour<WireRequest, WireResponse>,
    kad: kad::Behaviour<kad::store::MemoryStore>,
}

enum Command {
    ListenAddrs(oneshot::Sender<Vec<String>>),
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    Dial(Multiaddr, oneshot::Sender<Result<(), KlpError>>),
    SetApproved {
        entries: Vec<PeerEntry>,
        handshake_required: bool,
        reply: oneshot::Sender<()>,
    },
    Publish {
        topic: String,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), KlpError>>,
    },
    Call {
        peer: PeerId,
        method: String,
        path: String,
        body: Vec<u8>,
        reply: CallReply,
    },
    Sync {
        peer: PeerId,
        body: Vec<u8>,
        reply: SyncReply,
    },
    Penalize {
        peer: PeerId,
        detail: String,
        reply: oneshot::Sender<()>,
    },
    SetDenied {
        peers: Vec<PeerId>,
        reply: oneshot::Sender<()>,
    },
    Shutdown(oneshot::Sender<()>),
}

/// Handle to the KLP task. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Klp {
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<KlpEvent>,
    local_id: NodeId,
    inbound_calls: std::sync::Arc<std::sync::Mutex<Option<mpsc::Receiver<InboundCall>>>>,
    inbound_sync: std::sync::Arc<std::sync::Mutex<Option<mpsc::Receiver<InboundSync>>>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn node_id(peer: &PeerId) -> Option<NodeId> {
    NodeId::from_bytes(&peer.to_bytes()).ok()
}

fn peer_id(node: &NodeId) -> Option<PeerId> {
    PeerId::from_bytes(&node.to_bytes()).ok()
}

#[derive(Default)]
struct Peer {
    approved: Option<PeerEntry>,
    discovered_addrs: Vec<Multiaddr>,
    identify_addrs: Vec<Multiaddr>,
    connections: HashSet<ConnectionId>,
    state: Option<HandshakeState>,
    version: Option<u16>,
    manifest: Option<Manifest>,
    rtt: Option<Duration>,
    last_seen_ms: Option<u64>,
    last_refusal: Option<Refusal>,
    /// Where its connections came from, most recent last (kept while it is approved).
    seen_sources: Vec<Source>,
}

struct EventLoop {
    /// Remote calls handed to the node, and its answers coming back.
    calls_tx: mpsc::Sender<InboundCall>,
    sync_tx: mpsc::Sender<InboundSync>,
    call_replies_tx: mpsc::Sender<(u64, WireResponse)>,
    call_replies_rx: mpsc::Receiver<(u64, WireResponse)>,
    pending_calls: HashMap<u64, ResponseChannel<WireResponse>>,
    next_call: u64,
    /// Our calls and sync requests in flight.
    calls_out: HashMap<OutboundRequestId, Outgoing>,
    swarm: Swarm<Behaviour>,
    signing: ed25519_dalek::SigningKey,
    local_id: NodeId,
    cfg: KlpConfig,
    topic: gossipsub::IdentTopic,
    listen_addrs: Vec<Multiaddr>,
    peers: HashMap<PeerId, Peer>,
    /// Handshake deadlines, lingers, bans, the denied set (sans I/O).
    admission: Admission,
    /// When listed peers without a connection are dialed (sans I/O).
    redial: Redial,
    /// Our Hellos in flight.
    hellos: HashMap<OutboundRequestId, PeerId>,
    replay: ReplayGuard,
    events: broadcast::Sender<KlpEvent>,
    commands: mpsc::Receiver<Command>,
    discovery: Option<Discovery>,
}

/// Peers to forget: not approved, not connected, not `scheduled` for a redial; the least
/// recently seen beyond `keep` of them (never seen counts as oldest).
fn idle_strangers_to_forget(
    peers: &HashMap<PeerId, Peer>,
    scheduled: impl Fn(&PeerId) -> bool,
    keep: usize,
) -> Vec<PeerId> {
    let mut idle: Vec<(u64, PeerId)> = peers
        .iter()
        .filter(|(id, p)| p.approved.is_none() && p.connections.is_empty() && !scheduled(id))
        .map(|(id, p)| (p.last_seen_ms.unwrap_or(0), *id))
        .collect();
    if idle.len() <= keep {
        return Vec::new();
    }
    idle.sort_unstable();
    let excess = idle.len() - keep;
    idle.into_iter().take(excess).map(|(_, id)| id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kos_map_protocol::open;

    fn key(n: u8) -> (ed25519_dalek::SigningKey, NodeId) {
        let k = ed25519_dalek::SigningKey::from_bytes(&[n; 32]);
        let id = NodeId::from_public_key(k.verifying_key());
        (k, id)
    }

    #[test]
    fn a_failing_random_source_is_an_error_never_a_zero_nonce() {
        let (k, id) = key(1);
        let failing = |_: &mut [u8]| Err("entropy source unavailable");
        assert!(matches!(nonce_from(failing), Err(MessageError::Random(_))));
        let r = seal_goodbye(&k, id, GoodbyeReason::Shutdown, "bye", failing);
        assert!(matches!(r, Err(MessageError::Random(ref e)) if e.contains("unavailable")));
        // A source that "succeeds" with zeros is refused as well.
        let zeros = |b: &mut [u8]| {
            b.fill(0);
            Ok::<(), &str>(())
        };
        assert!(matches!(nonce_from(zeros), Err(MessageError::ZeroNonce)));
        let r = seal_goodbye(&k, id, GoodbyeReason::Shutdown, "bye", zeros);
        assert!(matches!(r, Err(MessageError::ZeroNonce)));
    }

    #[test]
    fn a_failing_seal_is_an_error_never_an_empty_message() {
        let (k, _) = key(1);
        let (_, other) = key(2);
        let r = seal_goodbye(&k, other, GoodbyeReason::Revoked, "x", os_random);
        assert!(matches!(
            r,
            Err(MessageError::Seal(MapError::WrongSigningKey))
        ));
    }

    #[test]
    fn a_goodbye_carries_the_reason_and_the_random_nonce() {
        let (k, id) = key(3);
        let fill = |b: &mut [u8]| {
            b.fill(0xa5);
            Ok::<(), &str>(())
        };
        let bytes = seal_goodbye(&k, id, GoodbyeReason::Shutdown, "bye", fill).unwrap();
        assert!(!bytes.is_empty());
        let mut replay = ReplayGuard::new(30_000, 16);
        match open(&bytes, &id, now_ms(), &mut replay).unwrap() {
            MapMessage::Goodbye {
                reason,
                nonce,
                node_id,
                ..
            } => {
                assert_eq!(reason, GoodbyeReason::Shutdown);
                assert_eq!(nonce, [0xa5; 16]);
                assert_eq!(node_id, id);
            }
            other => panic!("not a Goodbye: {other:?}"),
        }
        // The node's own source gives distinct, non-zero nonces.
        let a = nonce_from(os_random).unwrap();
        let b = nonce_from(os_random).unwrap();
        assert!(a != [0; 16] && a != b);
    }

    #[test]
    fn idle_strangers_are_bounded_keeping_the_most_recent_and_the_busy() {
        let mut peers: HashMap<PeerId, Peer> = HashMap::new();
        let mut by_age = Vec::new();
        for i in 0..10u64 {
            let id = PeerId::random();
            peers.insert(
                id,
                Peer {
                    last_seen_ms: Some(1000 + i),
                    ..Peer::default()
                },
            );
            by_age.push(id);
        }
        // Connected and redialed strangers are never forgotten, however old.
        let connected = PeerId::random();
        let mut p = Peer::default();
        p.connections.insert(ConnectionId::new_unchecked(7));
        peers.insert(connected, p);
        let redial = PeerId::random();
        peers.insert(redial, Peer::default());
        let scheduled = |id: &PeerId| *id == redial;
        assert!(idle_strangers_to_forget(&peers, scheduled, 10).is_empty());
        assert_eq!(idle_strangers_to_forget(&peers, |_| false, 10).len(), 1);
        let mut gone = idle_strangers_to_forget(&peers, scheduled, 4);
        gone.sort();
        let mut oldest: Vec<PeerId> = by_age[..6].to_vec();
        oldest.sort();
        assert_eq!(gone, oldest, "the six least recently seen");
        for id in gone {
            peers.remove(&id);
        }
        assert!(peers.contains_key(&connected) && peers.contains_key(&redial));
        assert_eq!(peers.len(), 6);
    }
}
