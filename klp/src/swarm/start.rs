//! [`Klp::start`]: builds the swarm, listens, starts discovery and spawns the event loop.
//!
//! Every step that can fail comes before the spawn and owns what it built: an error drops
//! the swarm (its listeners close with it) and nothing is left running.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use futures::StreamExt;
use kos_map_protocol::ReplayGuard;
use libp2p::core::transport::timeout::TransportTimeout;
use libp2p::core::upgrade;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{
    Multiaddr, StreamProtocol, Swarm, Transport, allow_block_list, connection_limits, gossipsub,
    identify, identity, kad, noise, ping, tcp, yamux,
};
use tokio::sync::{broadcast, mpsc};
use tracing::{info, warn};

use super::{
    Behaviour, COMMAND_QUEUE, EVENT_QUEUE, EventLoop, INBOUND_CALL_QUEUE, INBOUND_UPGRADE_TIMEOUT,
    Klp, KlpError, MAP_PROTOCOL, WIRE_LIMIT, WIRE_RESPONSE_LIMIT, node_id,
};
use crate::admission::Admission;
use crate::discovery::Discovery;
use crate::gate::{self, Gate};
use crate::redial::Redial;
use crate::{KlpConfig, KlpEvent};

/// How long start waits for every listener to have an address.
const LISTEN_WAIT: Duration = Duration::from_secs(10);

impl Klp {
    /// Builds the swarm, starts listening (waiting until every listener has an address),
    /// dials the approved peers and bootstrap addresses, and spawns the event loop.
    pub async fn start(cfg: KlpConfig) -> Result<(Klp, tokio::task::JoinHandle<()>), KlpError> {
        let keypair = identity::Keypair::ed25519_from_bytes(cfg.secret_key)
            .map_err(|e| KlpError::Key(e.to_string()))?;
        let local_id = node_id(&keypair.public().to_peer_id())
            .ok_or_else(|| KlpError::Key("not an ed25519 key".into()))?;
        // From here on, an error drops the swarm: its listeners close, nothing runs on.
        let mut swarm = build_swarm(keypair, &cfg)?;
        let topic = gossipsub::IdentTopic::new(format!("/kos/{}/events/1", cfg.network));
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&topic)
            .map_err(|e| KlpError::Transport(e.to_string()))?;
        swarm.behaviour_mut().kad.set_mode(Some(kad::Mode::Server));
        let listen_addrs = listen(&mut swarm, &cfg.listen).await?;
        let discovery = if cfg.discovery.enabled {
            let port = discovery_port(&listen_addrs);
            Some(
                Discovery::start(&local_id, port, &cfg.discovery.interfaces)
                    .map_err(KlpError::Discovery)?,
            )
        } else {
            None
        };
        // Nothing fails from here on.
        Ok(spawn(cfg, swarm, local_id, topic, listen_addrs, discovery))
    }
}

/// Creates the handle's channels and spawns the event loop.
fn spawn(
    cfg: KlpConfig,
    swarm: Swarm<Behaviour>,
    local_id: kos_map_protocol::NodeId,
    topic: gossipsub::IdentTopic,
    listen_addrs: Vec<Multiaddr>,
    discovery: Option<Discovery>,
) -> (Klp, tokio::task::JoinHandle<()>) {
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
    let (ev_tx, _) = broadcast::channel(EVENT_QUEUE);
    let (calls_tx, calls_rx) = mpsc::channel(INBOUND_CALL_QUEUE);
    let (call_replies_tx, call_replies_rx) = mpsc::channel(INBOUND_CALL_QUEUE);
    let (sync_tx, sync_rx) = mpsc::channel(INBOUND_CALL_QUEUE);
    let lp = EventLoop {
        calls_tx,
        sync_tx,
        call_replies_tx,
        call_replies_rx,
        pending_calls: HashMap::new(),
        next_call: 0,
        calls_out: HashMap::new(),
        swarm,
        signing: ed25519_dalek::SigningKey::from_bytes(&cfg.secret_key),
        local_id,
        admission: Admission::new(cfg.handshake_timeout, cfg.handshake_required),
        redial: Redial::default(),
        replay: ReplayGuard::new(cfg.clock_skew.as_millis() as u64, 10_000),
        cfg,
        topic,
        listen_addrs,
        peers: HashMap::new(),
        hellos: HashMap::new(),
        events: ev_tx.clone(),
        commands: cmd_rx,
        discovery,
    };
    let task = tokio::spawn(lp.begin().run());
    let klp = Klp {
        commands: cmd_tx,
        events: ev_tx,
        local_id,
        inbound_calls: std::sync::Arc::new(std::sync::Mutex::new(Some(calls_rx))),
        inbound_sync: std::sync::Arc::new(std::sync::Mutex::new(Some(sync_rx))),
    };
    (klp, task)
}

impl EventLoop {
    /// Announces the listen addresses, dials the approved peers and the bootstrap
    /// addresses.
    fn begin(mut self) -> Self {
        for a in self.listen_addrs.clone() {
            self.emit(KlpEvent::Listening {
                addr: a.to_string(),
            });
            info!(addr = %a, "KLP listening");
        }
        let approved = self.cfg.approved.clone();
        let required = self.cfg.handshake_required;
        self.set_approved(approved, required);
        for b in self.cfg.bootstrap.clone() {
            match Multiaddr::from_str(&b) {
                Ok(ma) => {
                    if let Err(e) = self.swarm.dial(ma) {
                        warn!(addr = %b, error = %e, "cannot dial bootstrap address");
                    }
                }
                Err(e) => warn!(addr = %b, error = %e, "invalid bootstrap address"),
            }
        }
        self
    }
}

/// The swarm: QUIC, TCP (noise, yamux) and DNS, our behaviours.
fn build_swarm(keypair: identity::Keypair, cfg: &KlpConfig) -> Result<Swarm<Behaviour>, KlpError> {
    Ok(libp2p::SwarmBuilder::with_existing_identity(keypair)
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
        .with_behaviour(|key| build_behaviour(key, cfg, &cfg.network))
        .map_err(|e| KlpError::Transport(e.to_string()))?
        // Connections to admitted peers stay up; the loop closes the others itself.
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(24 * 3600)))
        .build())
}

/// Listens on every address and waits (at most [`LISTEN_WAIT`]) until each listener has
/// an address; returns them.
async fn listen(
    swarm: &mut Swarm<Behaviour>,
    listen: &[String],
) -> Result<Vec<Multiaddr>, KlpError> {
    let mut pending_listeners = HashSet::new();
    for a in listen {
        let ma = Multiaddr::from_str(a).map_err(|e| KlpError::Addr {
            addr: a.clone(),
            reason: e.to_string(),
        })?;
        let id = swarm.listen_on(ma).map_err(|e| KlpError::Listen {
            addr: a.clone(),
            reason: error_chain(&e),
        })?;
        pending_listeners.insert(id);
    }
    let failed = |reason: String| KlpError::Listen {
        addr: listen.join(", "),
        reason,
    };
    let mut listen_addrs = Vec::new();
    let deadline = tokio::time::Instant::now() + LISTEN_WAIT;
    while !pending_listeners.is_empty() {
        let ev = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .map_err(|_| failed("no address within 10 s".into()))?;
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
                return Err(failed(format!("{reason:?}")));
            }
            SwarmEvent::ListenerError { listener_id, error }
                if pending_listeners.contains(&listener_id) =>
            {
                return Err(failed(error_chain(&error)));
            }
            _ => {}
        }
    }
    Ok(listen_addrs)
}

/// An error and its sources, `: `-separated (libp2p's transport errors print nothing of
/// their own and keep the cause, such as "Address already in use", in `source()`).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.retain(|p| !p.is_empty());
    parts.dedup();
    parts.join(": ")
}

/// The port DNS-SD announces: the first TCP listener's, else the first UDP one's, else 0.
fn discovery_port(listen_addrs: &[Multiaddr]) -> u16 {
    let port = listen_addrs.iter().find_map(|a| {
        a.iter().find_map(|p| match p {
            Protocol::Udp(p) | Protocol::Tcp(p) => Some(p),
            _ => None,
        })
    });
    listen_addrs
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
        .unwrap_or(0)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManifestInfo;

    /// A loopback port held by this test: bound with SO_REUSEADDR but not listening, so the
    /// swarm (which binds with SO_REUSEADDR too) can listen on it while nothing else can
    /// take it. `listen` on the held socket succeeds only once no one else listens there.
    fn held_port() -> (socket2::Socket, u16) {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.set_reuse_address(true).unwrap();
        let addr: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        s.bind(&addr.into()).unwrap();
        let port = s.local_addr().unwrap().as_socket().unwrap().port();
        (s, port)
    }

    #[tokio::test]
    async fn a_start_that_fails_after_listening_leaves_nothing_listening() {
        let (held, port) = held_port();
        let cfg = KlpConfig::new(
            [7; 32],
            vec![
                format!("/ip4/127.0.0.1/tcp/{port}"),
                "/ip4/127.0.0.1/tcp/not-a-port".into(),
            ],
            ManifestInfo::default(),
        );
        let err = Klp::start(cfg).await.unwrap_err();
        assert!(matches!(err, KlpError::Addr { ref addr, .. } if addr.ends_with("not-a-port")));
        // The first listener was bound, and is closed again: the port can be listened on.
        held.listen(1).unwrap();
        // Same when a listener fails while others are up: the port is taken.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let busy = taken.local_addr().unwrap().port();
        let (held, port) = held_port();
        let cfg = KlpConfig::new(
            [7; 32],
            vec![
                format!("/ip4/127.0.0.1/tcp/{port}"),
                format!("/ip4/127.0.0.1/tcp/{busy}"),
            ],
            ManifestInfo::default(),
        );
        let err = Klp::start(cfg).await.unwrap_err();
        assert!(
            matches!(err, KlpError::Listen { ref reason, .. } if !reason.is_empty()),
            "{err}"
        );
        held.listen(1).unwrap();
    }

    /// The held-port check can fail: while the swarm listens on the port, `listen` on the
    /// held socket is refused.
    #[tokio::test]
    async fn a_held_port_cannot_listen_while_the_swarm_does() {
        let (held, port) = held_port();
        let cfg = KlpConfig::new(
            [7; 32],
            vec![format!("/ip4/127.0.0.1/tcp/{port}")],
            ManifestInfo::default(),
        );
        let (klp, task) = Klp::start(cfg).await.unwrap();
        assert!(held.listen(1).is_err());
        klp.shutdown().await.unwrap();
        task.await.unwrap();
        held.listen(1).unwrap();
    }

    #[test]
    fn discovery_announces_the_tcp_port_first() {
        let a = |s: &str| Multiaddr::from_str(s).unwrap();
        assert_eq!(
            discovery_port(&[a("/ip4/1.2.3.4/udp/5/quic-v1"), a("/ip4/1.2.3.4/tcp/6")]),
            6
        );
        assert_eq!(discovery_port(&[a("/ip4/1.2.3.4/udp/5/quic-v1")]), 5);
        assert_eq!(discovery_port(&[]), 0);
    }
}
