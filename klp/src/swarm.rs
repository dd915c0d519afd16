//! The swarm actor: one task owns the `Swarm`; [`Klp`] is its handle.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use kos_map_protocol::{
    GoodbyeReason, MAP_VERSION, Manifest, MapError, MapMessage, NodeId, ReplayGuard, Skill,
    VersionRange, negotiate, open, seal,
};
use libp2p::core::transport::timeout::TransportTimeout;
use libp2p::core::{ConnectedPoint, upgrade};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent, dial_opts::DialOpts};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, Transport, allow_block_list, connection_limits,
    gossipsub, identify, identity, kad, noise, ping, tcp, yamux,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::discovery::{Discovered, Discovery};
use crate::gate::{self, Gate, Source};
use crate::peers::PeerEntry;
use crate::{HandshakeState, KlpConfig, KlpEvent, PeerInfo, Refusal, RefusedBy};

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
const BAN_BAD_PEER: Duration = Duration::from_secs(60);
const BAN_NOT_APPROVED: Duration = Duration::from_secs(10);
/// How long a refused connection stays open so that our Goodbye can be read.
const LINGER: Duration = Duration::from_millis(500);
/// How long shutdown waits, in all, for admitted peers to acknowledge `Goodbye{shutdown}`.
const SHUTDOWN_GOODBYE_WAIT: Duration = Duration::from_secs(1);
const REDIAL_MIN: Duration = Duration::from_secs(1);
const REDIAL_MAX: Duration = Duration::from_secs(60);
/// How soon a listed peer that refused us as not approved is dialed again.
const KNOCK_INTERVAL: Duration = Duration::from_secs(3);
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

/// One of our requests in flight.
enum Outgoing {
    Call(CallReply),
    Sync(SyncReply),
}

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

impl Klp {
    /// Builds the swarm, starts listening (waiting until every listener has an address),
    /// dials the approved peers and bootstrap addresses, and spawns the event loop.
    pub async fn start(cfg: KlpConfig) -> Result<(Klp, tokio::task::JoinHandle<()>), KlpError> {
        let keypair = identity::Keypair::ed25519_from_bytes(cfg.secret_key)
            .map_err(|e| KlpError::Key(e.to_string()))?;
        let signing = ed25519_dalek::SigningKey::from_bytes(&cfg.secret_key);
        let local_peer = keypair.public().to_peer_id();
        let local_id =
            node_id(&local_peer).ok_or_else(|| KlpError::Key("not an ed25519 key".into()))?;
        let network = cfg.network.clone();

        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_quic()
            // TCP as `with_tcp` builds it, plus a short deadline for an inbound connection's
            // security and muxer negotiation: a socket that never starts noise gives its
            // pending slot back after `INBOUND_UPGRADE_TIMEOUT`, not after the builder's 10 s
            // (which still bounds our own dials, TCP connect included).
            .with_other_transport(|key| {
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                    TransportTimeout::with_ingoing_timeout(
                        tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                            .upgrade(upgrade::Version::V1Lazy)
                            .authenticate(noise::Config::new(key)?)
                            .multiplex(yamux::Config::default()),
                        INBOUND_UPGRADE_TIMEOUT,
                    ),
                )
            })
            .map_err(|e| KlpError::Transport(e.to_string()))?
            .with_dns()
            .map_err(|e| KlpError::Transport(e.to_string()))?
            .with_behaviour(|key| build_behaviour(key, &cfg, &network))
            .map_err(|e| KlpError::Transport(e.to_string()))?
            // Connections to admitted peers stay up; the loop closes the others itself.
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(24 * 3600)))
            .build();

        let topic = gossipsub::IdentTopic::new(format!("/kos/{network}/events/1"));
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&topic)
            .map_err(|e| KlpError::Transport(e.to_string()))?;
        swarm.behaviour_mut().kad.set_mode(Some(kad::Mode::Server));

        let mut pending_listeners = HashSet::new();
        for a in &cfg.listen {
            let ma = Multiaddr::from_str(a).map_err(|e| KlpError::Addr {
                addr: a.clone(),
                reason: e.to_string(),
            })?;
            let id = swarm.listen_on(ma).map_err(|e| KlpError::Listen {
                addr: a.clone(),
                reason: e.to_string(),
            })?;
            pending_listeners.insert(id);
        }
        let mut listen_addrs = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !pending_listeners.is_empty() {
            let ev = tokio::time::timeout_at(deadline, swarm.select_next_some())
                .await
                .map_err(|_| KlpError::Listen {
                    addr: cfg.listen.join(", "),
                    reason: "no address within 10 s".into(),
                })?;
            match ev {
                SwarmEvent::NewListenAddr {
                    listener_id,
                    address,
                } => {
                    pending_listeners.remove(&listener_id);
                    listen_addrs.push(address);
                }
                SwarmEvent::ListenerClosed {
                    listener_id,
                    reason,
                    ..
                } if pending_listeners.contains(&listener_id) => {
                    return Err(KlpError::Listen {
                        addr: cfg.listen.join(", "),
                        reason: format!("{reason:?}"),
                    });
                }
                SwarmEvent::ListenerError { listener_id, error }
                    if pending_listeners.contains(&listener_id) =>
                {
                    return Err(KlpError::Listen {
                        addr: cfg.listen.join(", "),
                        reason: error.to_string(),
                    });
                }
                _ => {}
            }
        }

        let discovery = if cfg.discovery.enabled {
            let port = listen_addrs.iter().find_map(|a| {
                a.iter().find_map(|p| match p {
                    Protocol::Udp(p) | Protocol::Tcp(p) => Some(p),
                    _ => None,
                })
            });
            let tcp_port = listen_addrs
                .iter()
                .find_map(|a| {
                    a.iter().find_map(|p| {
                        if let Protocol::Tcp(p) = p {
                            Some(p)
                        } else {
                            None
                        }
                    })
                })
                .or(port)
                .unwrap_or(0);
            Some(
                Discovery::start(&local_id, tcp_port, &cfg.discovery.interfaces)
                    .map_err(KlpError::Discovery)?,
            )
        } else {
            None
        };

        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let (ev_tx, _) = broadcast::channel(EVENT_QUEUE);
        let (calls_tx, calls_rx) = mpsc::channel(INBOUND_CALL_QUEUE);
        let (call_replies_tx, call_replies_rx) = mpsc::channel(INBOUND_CALL_QUEUE);
        let (sync_tx, sync_rx) = mpsc::channel(INBOUND_CALL_QUEUE);
        let mut lp = EventLoop {
            calls_tx,
            sync_tx,
            call_replies_tx,
            call_replies_rx,
            pending_calls: HashMap::new(),
            next_call: 0,
            calls_out: HashMap::new(),
            swarm,
            signing,
            local_id,
            cfg,
            topic,
            listen_addrs,
            peers: HashMap::new(),
            pending: HashMap::new(),
            hellos: HashMap::new(),
            close_after_response: HashSet::new(),
            bans: HashMap::new(),
            denied: HashSet::new(),
            pending_bans: HashMap::new(),
            replay: ReplayGuard::new(30_000, 10_000),
            events: ev_tx.clone(),
            commands: cmd_rx,
            discovery,
        };
        lp.replay = ReplayGuard::new(lp.cfg.clock_skew.as_millis() as u64, 10_000);
        for a in lp.listen_addrs.clone() {
            lp.emit(KlpEvent::Listening {
                addr: a.to_string(),
            });
            info!(addr = %a, "KLP listening");
        }
        let approved = lp.cfg.approved.clone();
        let required = lp.cfg.handshake_required;
        lp.set_approved(approved, required);
        for b in lp.cfg.bootstrap.clone() {
            match Multiaddr::from_str(&b) {
                Ok(ma) => {
                    if let Err(e) = lp.swarm.dial(ma) {
                        warn!(addr = %b, error = %e, "cannot dial bootstrap address");
                    }
                }
                Err(e) => warn!(addr = %b, error = %e, "invalid bootstrap address"),
            }
        }
        let task = tokio::spawn(lp.run());
        Ok((
            Klp {
                commands: cmd_tx,
                events: ev_tx,
                local_id,
                inbound_calls: std::sync::Arc::new(std::sync::Mutex::new(Some(calls_rx))),
                inbound_sync: std::sync::Arc::new(std::sync::Mutex::new(Some(sync_rx))),
            },
            task,
        ))
    }

    pub fn local_id(&self) -> NodeId {
        self.local_id
    }

    /// A stream of events from now on (a slow receiver loses the oldest events).
    pub fn subscribe(&self) -> broadcast::Receiver<KlpEvent> {
        self.events.subscribe()
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, KlpError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| KlpError::Stopped)?;
        rx.await.map_err(|_| KlpError::Stopped)
    }

    /// The addresses the swarm listens on (with actual ports).
    pub async fn listen_addrs(&self) -> Result<Vec<String>, KlpError> {
        self.ask(Command::ListenAddrs).await
    }

    /// Every peer known: approved, connected or discovered.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, KlpError> {
        self.ask(Command::Peers).await
    }

    /// Dials an address (ending in `/p2p/<id>` or not); admission still goes through MAP.
    pub async fn dial(&self, addr: &str) -> Result<(), KlpError> {
        let ma = Multiaddr::from_str(addr).map_err(|e| KlpError::Addr {
            addr: addr.into(),
            reason: e.to_string(),
        })?;
        self.ask(|tx| Command::Dial(ma, tx)).await?
    }

    /// Replaces the approved peers. Peers no longer allowed are told `Goodbye{revoked}` and
    /// disconnected; newly listed peers with addresses are dialed.
    pub async fn set_approved(
        &self,
        entries: Vec<PeerEntry>,
        handshake_required: bool,
    ) -> Result<(), KlpError> {
        self.ask(|reply| Command::SetApproved {
            entries,
            handshake_required,
            reply,
        })
        .await
    }

    /// Publishes a message to the federation's gossip topic.
    pub async fn publish(&self, topic: &str, data: Vec<u8>) -> Result<(), KlpError> {
        let topic = topic.to_string();
        self.ask(|reply| Command::Publish { topic, data, reply })
            .await?
    }

    /// Calls the API of an admitted peer as this node. The peer decides what this node may do
    /// (its `remote_roles`); the answer is its HTTP status and body.
    pub async fn call(
        &self,
        peer: &NodeId,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Vec<u8>), KlpError> {
        let peer = peer_id(peer).ok_or_else(|| KlpError::Call("not a peer id".into()))?;
        let (method, path) = (method.to_string(), path.to_string());
        if method.len() > MAX_CALL_METHOD || path.len() > MAX_CALL_PATH || !path.starts_with('/') {
            return Err(KlpError::Call("malformed call".into()));
        }
        self.ask(|reply| Command::Call {
            peer,
            method,
            path,
            body,
            reply,
        })
        .await?
    }

    /// Sends a federation sync request to an admitted peer and waits for its answer.
    pub async fn sync(&self, peer: &NodeId, body: Vec<u8>) -> Result<Vec<u8>, KlpError> {
        let peer = peer_id(peer).ok_or_else(|| KlpError::Call("not a peer id".into()))?;
        self.ask(|reply| Command::Sync { peer, body, reply })
            .await?
    }

    /// The stream of sync requests from peers. Only the first caller gets it.
    pub fn take_inbound_sync(&self) -> Option<mpsc::Receiver<InboundSync>> {
        self.inbound_sync
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Peers never admitted, whatever `handshake_required` says (an operator's local blocks,
    /// the federation's revocations). Connected ones are told `Goodbye{blocked}`.
    pub async fn set_denied(&self, peers: Vec<NodeId>) -> Result<(), KlpError> {
        let peers = peers.iter().filter_map(peer_id).collect();
        self.ask(|reply| Command::SetDenied { peers, reply }).await
    }

    /// Punishes a peer that sent invalid data (e.g. forged federation ops): `Goodbye{blocked}`,
    /// disconnect, and a ban of a minute even if it is approved.
    pub async fn penalize(&self, peer: &NodeId, detail: &str) -> Result<(), KlpError> {
        let peer = peer_id(peer).ok_or_else(|| KlpError::Call("not a peer id".into()))?;
        let detail = detail.to_string();
        self.ask(|reply| Command::Penalize {
            peer,
            detail,
            reply,
        })
        .await
    }

    /// The stream of API calls from peers. Only the first caller gets it.
    pub fn take_inbound_calls(&self) -> Option<mpsc::Receiver<InboundCall>> {
        self.inbound_calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Sends `Goodbye{shutdown}` to every admitted peer, waits until each has acknowledged
    /// it (at most `SHUTDOWN_GOODBYE_WAIT`, 1 s, in all), closes every connection and stops
    /// the task.
    pub async fn shutdown(&self) -> Result<(), KlpError> {
        self.ask(Command::Shutdown).await
    }
}

fn build_behaviour(
    key: &identity::Keypair,
    cfg: &KlpConfig,
    network: &str,
) -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
    let local = key.public().to_peer_id();
    // Pending inbound connections are bounded by the gate (per source, with a reserve for
    // approved peers).
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_pending_outgoing(Some(64))
        .with_max_established(Some(cfg.max_connections))
        .with_max_established_per_peer(Some(cfg.max_connections_per_peer));
    let gossip_config = gossipsub::ConfigBuilder::default()
        .mesh_n(4)
        .mesh_n_low(2)
        .mesh_n_high(8)
        .mesh_outbound_min(1)
        .heartbeat_interval(Duration::from_secs(1))
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        .max_transmit_size(256 * 1024)
        // Messages queued for one peer's connection (5000 by default, i.e. up to 1.25 GiB of
        // 256 KiB messages for a peer that reads slowly); anti-entropy repairs what is dropped.
        .connection_handler_queue_len(256)
        .message_id_fn(|m: &gossipsub::Message| {
            use sha2::{Digest, Sha256};
            // Content-addressed: the same bytes from the same author on the same topic are one
            // message. SHA-256, so no one can craft a collision to suppress another's message.
            let mut h = Sha256::new();
            h.update(m.source.map(|p| p.to_bytes()).unwrap_or_default());
            h.update(m.topic.as_str().as_bytes());
            h.update(&m.data);
            gossipsub::MessageId::from(h.finalize().to_vec())
        })
        .build()?;
    let gossipsub = gossipsub::Behaviour::new(
        gossipsub::MessageAuthenticity::Signed(key.clone()),
        gossip_config,
    )?;
    let map = request_response::Behaviour::with_codec(
        request_response::cbor::codec::Codec::default()
            .set_request_size_maximum(WIRE_LIMIT)
            .set_response_size_maximum(WIRE_RESPONSE_LIMIT),
        [(StreamProtocol::new(MAP_PROTOCOL), ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(cfg.handshake_timeout)
            .with_max_concurrent_streams(16),
    );
    let kad_protocol = StreamProtocol::try_from_owned(format!("/kos/{network}/kad/1.0.0"))?;
    let mut kad_cfg = kad::Config::new(kad_protocol);
    kad_cfg.set_query_timeout(Duration::from_secs(30));
    let kad = kad::Behaviour::with_config(local, kad::store::MemoryStore::new(local), kad_cfg);
    Ok(Behaviour {
        blocked: allow_block_list::Behaviour::default(),
        gate: Gate::new(gate::LIMITS),
        limits: connection_limits::Behaviour::new(limits),
        identify: identify::Behaviour::new(
            identify::Config::new("/kos/klp/1.0.0".into(), key.public())
                .with_agent_version(format!("kos-node/{}", cfg.manifest.version)),
        ),
        ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(10))),
        gossipsub,
        map,
        kad,
    })
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
    next_redial: Option<(Instant, Duration)>,
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
    /// Connections of peers not yet admitted, with their handshake deadline.
    pending: HashMap<ConnectionId, (PeerId, Instant)>,
    /// Our Hellos in flight.
    hellos: HashMap<OutboundRequestId, PeerId>,
    /// Peers to disconnect once our Goodbye response is sent.
    close_after_response: HashSet<PeerId>,
    /// Temporary bans, lifted at the instant given.
    bans: HashMap<PeerId, Instant>,
    /// Never admitted (see [`Klp::set_denied`]).
    denied: HashSet<PeerId>,
    /// Bans to start once the peer has disconnected.
    pending_bans: HashMap<PeerId, Duration>,
    replay: ReplayGuard,
    events: broadcast::Sender<KlpEvent>,
    commands: mpsc::Receiver<Command>,
    discovery: Option<Discovery>,
}

impl EventLoop {
    fn emit(&self, e: KlpEvent) {
        let _ = self.events.send(e);
    }

    fn total_connections(&self) -> usize {
        self.peers.values().map(|p| p.connections.len()).sum()
    }

    async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut discovered_rx = self.discovery.as_mut().and_then(Discovery::take_receiver);
        loop {
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_swarm_event(ev),
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Shutdown(reply)) => {
                        self.shutdown().await;
                        let _ = reply.send(());
                        return;
                    }
                    Some(c) => self.on_command(c),
                    None => {
                        self.shutdown().await;
                        return;
                    }
                },
                Some(d) = async { match discovered_rx.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                    self.on_discovered(d);
                }
                Some((id, response)) = self.call_replies_rx.recv() => {
                    if let Some(ch) = self.pending_calls.remove(&id) {
                        let _ = self.swarm.behaviour_mut().map.send_response(ch, response);
                    }
                }
                _ = tick.tick() => self.on_tick(),
            }
        }
    }

    /// Says `Goodbye{shutdown}` to every admitted peer, waits until each has acknowledged it
    /// (or failed, or disconnected), at most [`SHUTDOWN_GOODBYE_WAIT`] in all, then closes
    /// every connection and stops discovery. Other events during the wait are dropped.
    async fn shutdown(&mut self) {
        use request_response::{Event, Message};
        let admitted: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.state == Some(HandshakeState::Admitted) && !p.connections.is_empty())
            .map(|(id, _)| *id)
            .collect();
        let mut waiting: HashMap<OutboundRequestId, PeerId> = HashMap::new();
        for peer in admitted {
            let sealed = self.goodbye(GoodbyeReason::Shutdown, "the node is shutting down");
            if let Some(id) = self.send_map(peer, "Goodbye", sealed) {
                waiting.insert(id, peer);
            }
        }
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GOODBYE_WAIT;
        while !waiting.is_empty() {
            let Ok(ev) = tokio::time::timeout_at(deadline, self.swarm.select_next_some()).await
            else {
                debug!(
                    unacknowledged = waiting.len(),
                    "shutdown: Goodbye not acknowledged in time"
                );
                break;
            };
            match ev {
                SwarmEvent::Behaviour(BehaviourEvent::Map(
                    Event::Message {
                        message: Message::Response { request_id, .. },
                        ..
                    }
                    | Event::OutboundFailure { request_id, .. },
                )) => {
                    waiting.remove(&request_id);
                }
                SwarmEvent::ConnectionClosed {
                    peer_id,
                    num_established: 0,
                    ..
                } => waiting.retain(|_, p| *p != peer_id),
                _ => {}
            }
        }
        let peers: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.connections.is_empty())
            .map(|(id, _)| *id)
            .collect();
        for p in peers {
            let _ = self.swarm.disconnect_peer_id(p);
        }
        if let Some(d) = self.discovery.take() {
            d.stop();
        }
        info!("KLP stopped");
    }

    fn is_approved(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|p| p.approved.is_some())
    }

    fn admits(&self, peer: &PeerId) -> bool {
        !self.denied.contains(peer) && (!self.cfg.handshake_required || self.is_approved(peer))
    }

    fn manifest(&self) -> Result<Manifest, MessageError> {
        let nonce = nonce_from(os_random)?;
        Ok(Manifest {
            node_id: self.local_id,
            public_key: self.signing.verifying_key().to_bytes(),
            name: self.cfg.manifest.name.clone(),
            version: self.cfg.manifest.version.clone(),
            profile: self.cfg.manifest.profile.clone(),
            protocol_versions: VersionRange {
                min: MAP_VERSION,
                max: MAP_VERSION,
            },
            skills: self
                .cfg
                .manifest
                .services
                .iter()
                .map(|(id, v)| Skill {
                    id: id.clone(),
                    name: id.clone(),
                    version: v.clone(),
                })
                .collect(),
            listen_addrs: self
                .listen_addrs
                .iter()
                .take(16)
                .map(ToString::to_string)
                .collect(),
            timestamp_ms: now_ms(),
            nonce,
        })
    }

    fn goodbye(&self, reason: GoodbyeReason, detail: &str) -> Result<Vec<u8>, MessageError> {
        seal_goodbye(&self.signing, self.local_id, reason, detail, os_random)
    }

    /// We could not build a message for `peer`: its connections close now, with the reason
    /// logged, instead of sending a broken one.
    fn close_unsent(&mut self, peer: PeerId, what: &str, error: &MessageError) {
        warn!(peer = %peer, error = %error, "cannot build MAP {what}: closing the connection");
        self.close_after_response.remove(&peer);
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    /// Sends a sealed MAP message as a request; a message that could not be built closes
    /// the connection instead (logged), and nothing is sent.
    fn send_map(
        &mut self,
        peer: PeerId,
        what: &str,
        sealed: Result<Vec<u8>, MessageError>,
    ) -> Option<OutboundRequestId> {
        match sealed {
            Ok(bytes) => Some(
                self.swarm
                    .behaviour_mut()
                    .map
                    .send_request(&peer, WireRequest::Map(bytes)),
            ),
            Err(e) => {
                self.close_unsent(peer, what, &e);
                None
            }
        }
    }

    fn send_hello(&mut self, peer: PeerId) {
        if self.hellos.values().any(|p| *p == peer) {
            return;
        }
        let sealed = self
            .manifest()
            .and_then(|m| seal(&MapMessage::Hello(m), &self.signing).map_err(MessageError::from));
        if let Some(id) = self.send_map(peer, "Hello", sealed) {
            self.hellos.insert(id, peer);
        }
    }

    fn refuse(&mut self, peer: PeerId, reason: GoodbyeReason, by: RefusedBy) {
        let ban = match (by, reason) {
            (RefusedBy::Us, GoodbyeReason::NotApproved) => Some(BAN_NOT_APPROVED),
            (
                RefusedBy::Us,
                GoodbyeReason::IncompatibleVersion
                | GoodbyeReason::HandshakeTimeout
                | GoodbyeReason::Revoked,
            ) => None,
            (RefusedBy::Us, _) => Some(BAN_BAD_PEER),
            (RefusedBy::Peer, _) => None,
        };
        if let Some(d) = ban
            && !self.is_approved(&peer)
        {
            // Blocking closes the connections at once, which would cut off our Goodbye: the
            // ban starts when the peer has disconnected.
            self.pending_bans.insert(peer, d);
        }
        let p = self.peers.entry(peer).or_default();
        // A peer that shuts down ends the session, it does not refuse us: it is recorded
        // (and redialed when listed, once its connections have closed), not banned.
        p.state = Some(
            if by == RefusedBy::Peer && reason == GoodbyeReason::Shutdown {
                HandshakeState::Disconnected
            } else {
                HandshakeState::Refused
            },
        );
        p.last_refusal = Some(Refusal {
            reason: reason.as_str().to_string(),
            by,
        });
        // A listed peer that does not (yet) approve us: keep knocking, slowly, so a node
        // joining a federation gets in once an admin approves it there.
        let knock = by == RefusedBy::Peer
            && reason == GoodbyeReason::NotApproved
            && p.approved.as_ref().is_some_and(|e| !e.addrs.is_empty());
        p.next_redial = knock.then(|| (Instant::now() + KNOCK_INTERVAL, KNOCK_INTERVAL));
        info!(peer = %peer, reason = reason.as_str(), by = ?by, "MAP refused");
        // Safety net: whatever happens to our Goodbye, a refused peer's connections close.
        self.close_soon(peer);
        self.emit(KlpEvent::Refused {
            peer: peer.to_string(),
            reason: reason.as_str().into(),
            by,
        });
    }

    fn admit(&mut self, peer: PeerId, manifest: Manifest, version: u16) {
        let addrs: Vec<Multiaddr> = manifest
            .listen_addrs
            .iter()
            .filter_map(|a| Multiaddr::from_str(a).ok())
            .collect();
        let p = self.peers.entry(peer).or_default();
        p.state = Some(HandshakeState::Admitted);
        p.version = Some(version);
        p.manifest = Some(manifest);
        p.last_seen_ms = Some(now_ms());
        p.last_refusal = None;
        p.next_redial = None;
        self.pending.retain(|_, (p, _)| *p != peer);
        for a in addrs.into_iter().chain(
            self.peers
                .get(&peer)
                .map(|p| p.identify_addrs.clone())
                .unwrap_or_default(),
        ) {
            self.swarm.behaviour_mut().kad.add_address(&peer, a);
        }
        self.swarm
            .behaviour_mut()
            .gossipsub
            .add_explicit_peer(&peer);
        info!(peer = %peer, version, "MAP admitted");
        self.emit(KlpEvent::Admitted {
            peer: peer.to_string(),
            version,
        });
    }

    fn on_swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                let source = Source::of_addr(endpoint.get_remote_address());
                let (admitted, new_source) = {
                    let p = self.peers.entry(peer_id).or_default();
                    p.connections.insert(connection_id);
                    // The noise handshake proved the key: an approved peer's address becomes
                    // a known source for the gate.
                    let new_source = p.approved.is_some()
                        && source != Source::Unaddressed
                        && p.seen_sources.last() != Some(&source);
                    if new_source {
                        p.seen_sources.retain(|s| *s != source);
                        p.seen_sources.push(source);
                        if p.seen_sources.len() > SEEN_SOURCES {
                            p.seen_sources.remove(0);
                        }
                    }
                    p.last_seen_ms = Some(now_ms());
                    if p.state != Some(HandshakeState::Admitted) {
                        p.state = Some(HandshakeState::Handshaking);
                    }
                    (p.state == Some(HandshakeState::Admitted), new_source)
                };
                if new_source {
                    self.refresh_known_sources();
                }
                let total = self.total_connections();
                debug!(peer = %peer_id, dialer = endpoint.is_dialer(), total, "connection established");
                self.emit(KlpEvent::ConnectionOpened {
                    peer: peer_id.to_string(),
                    total,
                });
                if !admitted {
                    self.pending.insert(
                        connection_id,
                        (peer_id, Instant::now() + self.cfg.handshake_timeout),
                    );
                    if matches!(endpoint, ConnectedPoint::Dialer { .. }) {
                        self.send_hello(peer_id);
                    }
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                self.pending.remove(&connection_id);
                let total_before = self.total_connections();
                if let Some(p) = self.peers.get_mut(&peer_id) {
                    p.connections.remove(&connection_id);
                    if num_established == 0 {
                        if p.state == Some(HandshakeState::Admitted)
                            || p.state == Some(HandshakeState::Handshaking)
                        {
                            p.state = Some(HandshakeState::Disconnected);
                        }
                        p.rtt = None;
                        if p.approved.as_ref().is_some_and(|e| !e.addrs.is_empty())
                            && p.next_redial.is_none()
                        {
                            p.next_redial = Some((Instant::now() + REDIAL_MIN, REDIAL_MIN));
                        }
                    }
                }
                let total = total_before.saturating_sub(1);
                self.emit(KlpEvent::ConnectionClosed {
                    peer: peer_id.to_string(),
                    total,
                });
                if num_established == 0 {
                    if let Some(d) = self.pending_bans.remove(&peer_id) {
                        self.bans.insert(peer_id, Instant::now() + d);
                        self.swarm.behaviour_mut().blocked.block_peer(peer_id);
                    }
                    self.swarm
                        .behaviour_mut()
                        .gossipsub
                        .remove_explicit_peer(&peer_id);
                    self.emit(KlpEvent::Disconnected {
                        peer: peer_id.to_string(),
                    });
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                if !self.listen_addrs.contains(&address) {
                    self.listen_addrs.push(address.clone());
                }
                self.emit(KlpEvent::Listening {
                    addr: address.to_string(),
                });
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| a != &address)
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                debug!(peer = ?peer_id, error = %error, "dial failed");
            }
            SwarmEvent::Behaviour(b) => self.on_behaviour(b),
            _ => {}
        }
    }

    fn on_behaviour(&mut self, ev: BehaviourEvent) {
        match ev {
            BehaviourEvent::Map(e) => self.on_map(e),
            BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            }) => {
                let p = self.peers.entry(peer).or_default();
                p.rtt = Some(rtt);
                p.last_seen_ms = Some(now_ms());
            }
            // libp2p's ping no longer closes a connection whose pings fail. A peer behind a
            // cut link (cable, container network) would otherwise stay "connected" until
            // TCP gives up, many minutes later: close it, and the redial takes over.
            BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(error),
            }) if !matches!(error, ping::Failure::Unsupported) => {
                debug!(peer = %peer, %error, "ping failed: closing the connection");
                self.swarm.close_connection(connection);
            }
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                let admitted = self
                    .peers
                    .get(&peer_id)
                    .is_some_and(|p| p.state == Some(HandshakeState::Admitted));
                let addrs: Vec<Multiaddr> = info.listen_addrs.into_iter().take(16).collect();
                if admitted {
                    for a in &addrs {
                        self.swarm
                            .behaviour_mut()
                            .kad
                            .add_address(&peer_id, a.clone());
                    }
                }
                self.peers.entry(peer_id).or_default().identify_addrs = addrs;
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => {
                let author_ok = message.source.is_some_and(|s| {
                    self.peers
                        .get(&s)
                        .is_some_and(|p| p.state == Some(HandshakeState::Admitted))
                });
                let relay_ok = self
                    .peers
                    .get(&propagation_source)
                    .is_some_and(|p| p.state == Some(HandshakeState::Admitted));
                let acceptance = if author_ok && relay_ok {
                    gossipsub::MessageAcceptance::Accept
                } else {
                    gossipsub::MessageAcceptance::Reject
                };
                let accepted = matches!(acceptance, gossipsub::MessageAcceptance::Accept);
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, acceptance);
                if accepted && let Some(src) = message.source {
                    self.emit(KlpEvent::Message {
                        topic: message.topic.to_string(),
                        from: src.to_string(),
                        data: message.data,
                    });
                }
            }
            _ => {}
        }
    }

    fn on_map(&mut self, ev: request_response::Event<WireRequest, WireResponse>) {
        use request_response::{Event, Message};
        match ev {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => match request {
                WireRequest::Map(bytes) => self.on_map_request(peer, bytes, channel),
                WireRequest::Call { method, path, body } => {
                    self.on_call_request(peer, method, path, body, channel)
                }
                WireRequest::Sync(body) => self.on_sync_request(peer, body, channel),
            },
            Event::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                self.hellos.remove(&request_id);
                match self.calls_out.remove(&request_id) {
                    Some(Outgoing::Call(reply)) => {
                        let _ = reply.send(match response {
                            WireResponse::Call { status, body } => Ok((status, body)),
                            WireResponse::Refused(why) => Err(KlpError::Call(why)),
                            _ => Err(KlpError::Call("unexpected answer".into())),
                        });
                        return;
                    }
                    Some(Outgoing::Sync(reply)) => {
                        let _ = reply.send(match response {
                            WireResponse::Sync(body) => Ok(body),
                            WireResponse::Refused(why) => Err(KlpError::Call(why)),
                            _ => Err(KlpError::Call("unexpected answer".into())),
                        });
                        return;
                    }
                    None => {}
                }
                match response {
                    WireResponse::Map(bytes) => self.on_map_response(peer, &bytes),
                    WireResponse::Ack
                    | WireResponse::Call { .. }
                    | WireResponse::Refused(_)
                    | WireResponse::Sync(_) => {}
                }
            }
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if self.hellos.remove(&request_id).is_some() {
                    debug!(peer = %peer, error = %error, "Hello failed");
                }
                match self.calls_out.remove(&request_id) {
                    Some(Outgoing::Call(reply)) => {
                        let _ = reply.send(Err(KlpError::Call(error.to_string())));
                    }
                    Some(Outgoing::Sync(reply)) => {
                        let _ = reply.send(Err(KlpError::Call(error.to_string())));
                    }
                    None => {}
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                debug!(peer = %peer, error = %error, "inbound MAP failed")
            }
            Event::ResponseSent { peer, .. } => {
                if self.close_after_response.remove(&peer) {
                    // "Sent" means written, not read: closing at once can cut the Goodbye off.
                    // Linger briefly; the deadline sweep closes the connections.
                    self.close_soon(peer);
                }
            }
        }
    }

    /// A remote call: only from admitted peers; handed to the node with a deadline.
    fn on_call_request(
        &mut self,
        peer: PeerId,
        method: String,
        path: String,
        body: Vec<u8>,
        channel: ResponseChannel<WireResponse>,
    ) {
        let admitted = self
            .peers
            .get(&peer)
            .is_some_and(|p| p.state == Some(HandshakeState::Admitted));
        let refuse = |lp: &mut Self, why: &str, ch| {
            let _ = lp
                .swarm
                .behaviour_mut()
                .map
                .send_response(ch, WireResponse::Refused(why.into()));
        };
        let Some(node) = node_id(&peer).filter(|_| admitted) else {
            refuse(self, "not admitted", channel);
            return;
        };
        if method.len() > MAX_CALL_METHOD || path.len() > MAX_CALL_PATH || !path.starts_with('/') {
            refuse(self, "malformed call", channel);
            return;
        }
        let (tx, rx) = oneshot::channel();
        let call = InboundCall {
            peer: node,
            method,
            path,
            body,
            reply: tx,
        };
        if self.calls_tx.try_send(call).is_err() {
            refuse(self, "busy", channel);
            return;
        }
        let id = self.next_call;
        self.next_call += 1;
        self.pending_calls.insert(id, channel);
        let back = self.call_replies_tx.clone();
        tokio::spawn(async move {
            let (status, body) = match tokio::time::timeout(CALL_TIMEOUT, rx).await {
                Ok(Ok(answer)) => answer,
                _ => (
                    504,
                    b"{\"title\":\"the node did not answer in time\"}".to_vec(),
                ),
            };
            let _ = back.send((id, WireResponse::Call { status, body })).await;
        });
    }

    /// A federation sync request: only from admitted peers; handed to the node with a
    /// deadline.
    fn on_sync_request(
        &mut self,
        peer: PeerId,
        body: Vec<u8>,
        channel: ResponseChannel<WireResponse>,
    ) {
        let admitted = self
            .peers
            .get(&peer)
            .is_some_and(|p| p.state == Some(HandshakeState::Admitted));
        let node = node_id(&peer).filter(|_| admitted);
        let (tx, rx) = oneshot::channel();
        let taken = node.is_some_and(|peer| {
            self.sync_tx
                .try_send(InboundSync {
                    peer,
                    body,
                    reply: tx,
                })
                .is_ok()
        });
        if !taken {
            let why = if admitted { "busy" } else { "not admitted" };
            let _ = self
                .swarm
                .behaviour_mut()
                .map
                .send_response(channel, WireResponse::Refused(why.into()));
            return;
        }
        let id = self.next_call;
        self.next_call += 1;
        self.pending_calls.insert(id, channel);
        let back = self.call_replies_tx.clone();
        tokio::spawn(async move {
            let response = match tokio::time::timeout(CALL_TIMEOUT, rx).await {
                Ok(Ok(answer)) => WireResponse::Sync(answer),
                _ => WireResponse::Refused("the node did not answer in time".into()),
            };
            let _ = back.send((id, response)).await;
        });
    }

    fn on_map_request(
        &mut self,
        peer: PeerId,
        bytes: Vec<u8>,
        channel: ResponseChannel<WireResponse>,
    ) {
        let Some(transport) = node_id(&peer) else {
            let _ = self.swarm.disconnect_peer_id(peer);
            return;
        };
        let msg = open(&bytes, &transport, now_ms(), &mut self.replay);
        // `Err`: the answer could not be built; nothing is sent and the connection closes.
        let response: Result<WireResponse, (&str, MessageError)> = match msg {
            Err(e) => {
                let reason = e.goodbye_reason();
                warn!(peer = %peer, error = %e, "MAP message refused");
                self.refuse(peer, reason, RefusedBy::Us);
                self.close_after_response.insert(peer);
                self.goodbye(reason, &e.to_string())
                    .map(WireResponse::Map)
                    .map_err(|e| ("Goodbye", e))
            }
            Ok(MapMessage::Hello(m)) => {
                let ours = VersionRange {
                    min: MAP_VERSION,
                    max: MAP_VERSION,
                };
                match negotiate(ours, m.protocol_versions) {
                    Err(e) => {
                        self.refuse(peer, GoodbyeReason::IncompatibleVersion, RefusedBy::Us);
                        self.close_after_response.insert(peer);
                        self.goodbye(GoodbyeReason::IncompatibleVersion, &e.to_string())
                            .map(WireResponse::Map)
                            .map_err(|e| ("Goodbye", e))
                    }
                    Ok(_) if !self.admits(&peer) => {
                        self.refuse(peer, GoodbyeReason::NotApproved, RefusedBy::Us);
                        self.close_after_response.insert(peer);
                        self.goodbye(
                            GoodbyeReason::NotApproved,
                            "this node does not list you in its peers.list",
                        )
                        .map(WireResponse::Map)
                        .map_err(|e| ("Goodbye", e))
                    }
                    Ok(version) => {
                        let sealed = self.manifest().and_then(|manifest| {
                            seal(&MapMessage::Welcome { manifest, version }, &self.signing)
                                .map_err(MessageError::from)
                        });
                        match sealed {
                            Ok(b) => {
                                self.admit(peer, m, version);
                                Ok(WireResponse::Map(b))
                            }
                            Err(e) => Err(("Welcome", e)),
                        }
                    }
                }
            }
            Ok(MapMessage::Goodbye { reason, detail, .. }) => {
                info!(peer = %peer, reason = reason.as_str(), detail = %detail, "peer said goodbye");
                self.refuse(peer, reason, RefusedBy::Peer);
                self.close_after_response.insert(peer);
                Ok(WireResponse::Ack)
            }
            Ok(MapMessage::Welcome { .. }) => {
                self.refuse(peer, GoodbyeReason::Malformed, RefusedBy::Us);
                self.close_after_response.insert(peer);
                self.goodbye(GoodbyeReason::Malformed, "unexpected Welcome")
                    .map(WireResponse::Map)
                    .map_err(|e| ("Goodbye", e))
            }
        };
        let response = match response {
            Ok(r) => r,
            Err((what, e)) => {
                // Dropping the channel resets the peer's stream; the connection closes now.
                self.close_unsent(peer, what, &e);
                return;
            }
        };
        if self
            .swarm
            .behaviour_mut()
            .map
            .send_response(channel, response)
            .is_err()
        {
            self.close_after_response.remove(&peer);
        }
    }

    fn on_map_response(&mut self, peer: PeerId, bytes: &[u8]) {
        let Some(transport) = node_id(&peer) else {
            return;
        };
        match open(bytes, &transport, now_ms(), &mut self.replay) {
            Ok(MapMessage::Welcome { manifest, version }) => {
                let ours = VersionRange {
                    min: MAP_VERSION,
                    max: MAP_VERSION,
                };
                if version < ours.min || version > ours.max {
                    self.say_goodbye(
                        peer,
                        GoodbyeReason::IncompatibleVersion,
                        "Welcome chose a version we do not speak",
                    );
                } else if !self.admits(&peer) {
                    self.say_goodbye(
                        peer,
                        GoodbyeReason::NotApproved,
                        "this node does not list you in its peers.list",
                    );
                } else {
                    self.admit(peer, manifest, version);
                }
            }
            Ok(MapMessage::Goodbye { reason, detail, .. }) => {
                info!(peer = %peer, reason = reason.as_str(), detail = %detail, "peer said goodbye");
                self.refuse(peer, reason, RefusedBy::Peer);
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            Ok(MapMessage::Hello(_)) => self.say_goodbye(
                peer,
                GoodbyeReason::Malformed,
                "unexpected Hello in a response",
            ),
            Err(e) => {
                warn!(peer = %peer, error = %e, "MAP response refused");
                self.say_goodbye(peer, e.goodbye_reason(), &e.to_string());
            }
        }
    }

    /// Refuses a peer ourselves: sends a Goodbye request and disconnects when it is answered
    /// (or at the handshake deadline).
    fn say_goodbye(&mut self, peer: PeerId, reason: GoodbyeReason, detail: &str) {
        self.refuse(peer, reason, RefusedBy::Us);
        let sealed = self.goodbye(reason, detail);
        if self.send_map(peer, "Goodbye", sealed).is_some() {
            self.close_soon(peer);
        }
    }

    /// Closes the peer's connections after a short linger (so a last message can be read).
    fn close_soon(&mut self, peer: PeerId) {
        let conns: Vec<ConnectionId> = self
            .peers
            .get(&peer)
            .map(|p| p.connections.iter().copied().collect())
            .unwrap_or_default();
        let deadline = Instant::now() + LINGER;
        for c in conns {
            self.pending.insert(c, (peer, deadline));
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        // Handshake deadline.
        let expired: Vec<(ConnectionId, PeerId)> = self
            .pending
            .iter()
            .filter(|(_, (_, d))| *d <= now)
            .map(|(c, (p, _))| (*c, *p))
            .collect();
        for (c, p) in expired {
            self.pending.remove(&c);
            let admitted = self
                .peers
                .get(&p)
                .is_some_and(|x| x.state == Some(HandshakeState::Admitted));
            if !admitted {
                if self
                    .peers
                    .get(&p)
                    .is_some_and(|x| x.state == Some(HandshakeState::Handshaking))
                {
                    self.refuse(p, GoodbyeReason::HandshakeTimeout, RefusedBy::Us);
                }
                self.swarm.close_connection(c);
            }
        }
        // Lift expired bans.
        let lifted: Vec<PeerId> = self
            .bans
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(p, _)| *p)
            .collect();
        for p in lifted {
            self.bans.remove(&p);
            self.swarm.behaviour_mut().blocked.unblock_peer(p);
        }
        // Redial listed peers with backoff.
        let due: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.connections.is_empty() && p.next_redial.is_some_and(|(t, _)| t <= now)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let addrs = self
                .peers
                .get(&id)
                .and_then(|p| p.approved.as_ref())
                .map(|e| e.addrs.clone())
                .unwrap_or_default();
            self.dial_peer(id, &addrs);
            if let Some(p) = self.peers.get_mut(&id)
                && let Some((_, backoff)) = p.next_redial
            {
                let next = (backoff * 2).min(REDIAL_MAX);
                p.next_redial = Some((now + backoff, next));
            }
        }
        self.forget_idle_strangers();
    }

    /// Forgets the least recently seen idle strangers beyond [`MAX_IDLE_STRANGERS`].
    fn forget_idle_strangers(&mut self) {
        for id in idle_strangers_to_forget(&self.peers, MAX_IDLE_STRANGERS) {
            self.peers.remove(&id);
        }
    }

    fn dial_peer(&mut self, id: PeerId, addrs: &[String]) {
        if self.bans.contains_key(&id) {
            return;
        }
        let addrs: Vec<Multiaddr> = addrs
            .iter()
            .filter_map(|a| Multiaddr::from_str(a).ok())
            .collect();
        if addrs.is_empty() {
            return;
        }
        let opts = DialOpts::peer_id(id).addresses(addrs).build();
        if let Err(e) = self.swarm.dial(opts) {
            debug!(peer = %id, error = %e, "dial not started");
        }
    }

    fn set_approved(&mut self, entries: Vec<PeerEntry>, handshake_required: bool) {
        self.cfg.handshake_required = handshake_required;
        // A shared peers.list usually lists this node too; it is not its own peer.
        let new: HashMap<PeerId, PeerEntry> = entries
            .into_iter()
            .filter(|e| e.id != self.local_id)
            .filter_map(|e| peer_id(&e.id).map(|p| (p, e)))
            .collect();
        // Removed peers: no longer approved.
        let old: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.approved.is_some())
            .map(|(id, _)| *id)
            .collect();
        for id in old {
            if !new.contains_key(&id) {
                self.swarm.behaviour_mut().limits.remove_peer_id(&id);
                let p = self.peers.entry(id).or_default();
                p.approved = None;
                p.next_redial = None;
                p.seen_sources.clear();
                let connected = !p.connections.is_empty();
                if handshake_required && connected {
                    info!(peer = %id, "removed from peers.list: disconnecting");
                    self.say_goodbye(id, GoodbyeReason::Revoked, "removed from peers.list");
                }
            }
        }
        for (id, e) in new {
            let newly = self.peers.get(&id).is_none_or(|p| p.approved.is_none());
            // A newly approved peer may have been banned as a stranger; lift that. A peer
            // that stays approved keeps any ban (e.g. a penalty).
            if newly {
                self.pending_bans.remove(&id);
                if self.bans.remove(&id).is_some() {
                    self.swarm.behaviour_mut().blocked.unblock_peer(id);
                }
            }
            self.swarm.behaviour_mut().limits.bypass_peer_id(&id);
            let p = self.peers.entry(id).or_default();
            let addrs = e.addrs.clone();
            p.approved = Some(e);
            if p.connections.is_empty() && (newly || p.state.is_none()) && !addrs.is_empty() {
                p.next_redial = Some((Instant::now() + REDIAL_MIN, REDIAL_MIN));
                self.dial_peer(id, &addrs);
            } else if newly
                && !p.connections.is_empty()
                && p.state != Some(HandshakeState::Admitted)
            {
                // Connected but refused before: try again now that it is listed.
                self.send_hello(id);
            }
        }
        self.refresh_known_sources();
    }

    /// Tells the gate which sources belong to approved peers (not denied): their listed
    /// addresses and the addresses their connections came from.
    fn refresh_known_sources(&mut self) {
        let known: Vec<Source> = self
            .peers
            .iter()
            .filter(|(id, _)| !self.denied.contains(id))
            .filter_map(|(_, p)| p.approved.as_ref().map(|e| (e, p)))
            .flat_map(|(e, p)| {
                e.addrs
                    .iter()
                    .filter_map(|a| Multiaddr::from_str(a).ok())
                    .map(|a| Source::of_addr(&a))
                    .chain(p.seen_sources.iter().copied())
            })
            .collect();
        self.swarm.behaviour_mut().gate.pending.set_known(known);
    }

    fn on_discovered(&mut self, d: Discovered) {
        let Some(id) = peer_id(&d.id) else { return };
        if d.id == self.local_id {
            return;
        }
        let addrs: Vec<Multiaddr> = d
            .addrs
            .iter()
            .filter_map(|a| Multiaddr::from_str(a).ok())
            .collect();
        let p = self.peers.entry(id).or_default();
        let fresh = p.discovered_addrs != addrs;
        p.discovered_addrs = addrs;
        let connected = !p.connections.is_empty();
        if fresh {
            info!(peer = %id, addrs = ?d.addrs, "discovered by DNS-SD");
            self.emit(KlpEvent::Discovered {
                peer: id.to_string(),
                addrs: d.addrs.clone(),
            });
        }
        if !connected {
            self.dial_peer(id, &d.addrs);
        }
    }

    fn on_command(&mut self, c: Command) {
        match c {
            Command::ListenAddrs(tx) => {
                let _ = tx.send(self.listen_addrs.iter().map(ToString::to_string).collect());
            }
            Command::Peers(tx) => {
                let _ = tx.send(self.peer_infos());
            }
            Command::Dial(ma, tx) => {
                let r = self
                    .swarm
                    .dial(ma)
                    .map_err(|e| KlpError::Dial(e.to_string()));
                let _ = tx.send(r);
            }
            Command::SetApproved {
                entries,
                handshake_required,
                reply,
            } => {
                self.set_approved(entries, handshake_required);
                let _ = reply.send(());
            }
            Command::Publish { topic, data, reply } => {
                let t = if topic.is_empty() {
                    self.topic.clone()
                } else {
                    gossipsub::IdentTopic::new(topic)
                };
                let r = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(t, data)
                    .map(|_| ())
                    .map_err(|e| KlpError::Dial(e.to_string()));
                let _ = reply.send(r);
            }
            Command::Call {
                peer,
                method,
                path,
                body,
                reply,
            } => {
                let admitted = self.peers.get(&peer).is_some_and(|p| {
                    p.state == Some(HandshakeState::Admitted) && !p.connections.is_empty()
                });
                if !admitted {
                    let _ = reply.send(Err(KlpError::Call(
                        "the peer is not connected and admitted".into(),
                    )));
                    return;
                }
                let id = self
                    .swarm
                    .behaviour_mut()
                    .map
                    .send_request(&peer, WireRequest::Call { method, path, body });
                self.calls_out.insert(id, Outgoing::Call(reply));
            }
            Command::Sync { peer, body, reply } => {
                let admitted = self.peers.get(&peer).is_some_and(|p| {
                    p.state == Some(HandshakeState::Admitted) && !p.connections.is_empty()
                });
                if !admitted {
                    let _ = reply.send(Err(KlpError::Call(
                        "the peer is not connected and admitted".into(),
                    )));
                    return;
                }
                let id = self
                    .swarm
                    .behaviour_mut()
                    .map
                    .send_request(&peer, WireRequest::Sync(body));
                self.calls_out.insert(id, Outgoing::Sync(reply));
            }
            Command::SetDenied { peers, reply } => {
                self.denied = peers.into_iter().collect();
                self.refresh_known_sources();
                let to_close: Vec<PeerId> = self
                    .denied
                    .iter()
                    .filter(|p| {
                        self.peers.get(p).is_some_and(|x| {
                            !x.connections.is_empty() && x.state != Some(HandshakeState::Refused)
                        })
                    })
                    .copied()
                    .collect();
                for p in to_close {
                    info!(peer = %p, "denied: disconnecting");
                    self.say_goodbye(p, GoodbyeReason::Blocked, "blocked or revoked");
                }
                let _ = reply.send(());
            }
            Command::Penalize {
                peer,
                detail,
                reply,
            } => {
                warn!(peer = %peer, detail = %detail, "penalizing peer");
                if self
                    .peers
                    .get(&peer)
                    .is_some_and(|p| !p.connections.is_empty())
                {
                    self.say_goodbye(peer, GoodbyeReason::Blocked, &detail);
                    self.pending_bans.insert(peer, BAN_BAD_PEER);
                } else {
                    self.bans.insert(peer, Instant::now() + BAN_BAD_PEER);
                    self.swarm.behaviour_mut().blocked.block_peer(peer);
                }
                let _ = reply.send(());
            }
            Command::Shutdown(_) => {}
        }
    }

    fn peer_infos(&self) -> Vec<PeerInfo> {
        let mut out: Vec<PeerInfo> = self
            .peers
            .iter()
            .map(|(id, p)| {
                let mut addrs: Vec<String> =
                    p.approved.iter().flat_map(|e| e.addrs.clone()).collect();
                addrs.extend(p.discovered_addrs.iter().map(ToString::to_string));
                addrs.extend(p.identify_addrs.iter().map(ToString::to_string));
                addrs.sort();
                addrs.dedup();
                let m = p.manifest.as_ref();
                PeerInfo {
                    id: id.to_string(),
                    approved: p.approved.is_some(),
                    label: p.approved.as_ref().and_then(|e| e.label.clone()),
                    discovered: !p.discovered_addrs.is_empty(),
                    connected: !p.connections.is_empty(),
                    connections: p.connections.len(),
                    state: p.state.unwrap_or(HandshakeState::Disconnected),
                    protocol_version: p.version,
                    rtt_ms: p.rtt.map(|d| d.as_secs_f64() * 1000.0),
                    last_seen_ms: p.last_seen_ms,
                    addrs,
                    name: m.map(|m| m.name.clone()),
                    profile: m.map(|m| m.profile.clone()),
                    software_version: m.map(|m| m.version.clone()),
                    services: m
                        .map(|m| {
                            m.skills
                                .iter()
                                .map(|s| (s.id.clone(), s.version.clone()))
                                .collect()
                        })
                        .unwrap_or_default(),
                    last_refusal: p.last_refusal.clone(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
}

/// Peers to forget: not approved, not connected, no redial due; the least recently seen
/// beyond `keep` of them (never seen counts as oldest).
fn idle_strangers_to_forget(peers: &HashMap<PeerId, Peer>, keep: usize) -> Vec<PeerId> {
    let mut idle: Vec<(u64, PeerId)> = peers
        .iter()
        .filter(|(_, p)| {
            p.approved.is_none() && p.connections.is_empty() && p.next_redial.is_none()
        })
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
        peers.insert(
            redial,
            Peer {
                next_redial: Some((Instant::now(), REDIAL_MIN)),
                ..Peer::default()
            },
        );
        assert!(idle_strangers_to_forget(&peers, 10).is_empty());
        let mut gone = idle_strangers_to_forget(&peers, 4);
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
