//! The event loop: selects the next event and dispatches it. Connections and the peer
//! table are kept here; what to close, ban or redial, and when, is decided by the sans-I/O
//! cores ([`Admission`](crate::admission::Admission), [`Redial`](crate::redial::Redial)),
//! fed with `Instant::now()` and carried out here.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kos_map_protocol::GoodbyeReason;
use libp2p::core::ConnectedPoint;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::{ConnectionId, SwarmEvent, dial_opts::DialOpts};
use libp2p::{Multiaddr, PeerId, gossipsub, identify, ping};
use tracing::{debug, info};

use super::{
    BehaviourEvent, Command, EventLoop, MAX_IDLE_STRANGERS, SEEN_SOURCES, SHUTDOWN_GOODBYE_WAIT,
    idle_strangers_to_forget, now_ms, peer_id,
};
use crate::admission::Action;
use crate::discovery::{Discovered, Discovery};
use crate::gate::Source;
use crate::peers::PeerEntry;
use crate::{HandshakeState, KlpEvent, RefusedBy};

/// How often deadlines, bans and redials are looked at.
const TICK: Duration = Duration::from_millis(250);

impl EventLoop {
    pub(super) fn emit(&self, e: KlpEvent) {
        let _ = self.events.send(e);
    }

    fn total_connections(&self) -> usize {
        self.peers.values().map(|p| p.connections.len()).sum()
    }

    /// The peer's open connections.
    pub(super) fn connections_of(&self, peer: &PeerId) -> Vec<ConnectionId> {
        self.peers
            .get(peer)
            .map(|p| p.connections.iter().copied().collect())
            .unwrap_or_default()
    }

    pub(super) fn is_connected(&self, peer: &PeerId) -> bool {
        self.peers
            .get(peer)
            .is_some_and(|p| !p.connections.is_empty())
    }

    pub(super) fn is_admitted(&self, peer: &PeerId) -> bool {
        self.peers
            .get(peer)
            .is_some_and(|p| p.state == Some(HandshakeState::Admitted))
    }

    pub(super) async fn run(mut self) {
        let mut tick = tokio::time::interval(TICK);
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
                Some((id, response)) = self.call_replies_rx.recv() => self.on_call_reply(id, response),
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

    /// Carries out a decision of the admission core.
    pub(super) fn apply(&mut self, action: Action) {
        match action {
            Action::HandshakeTimeout(peer) => {
                self.refuse(peer, GoodbyeReason::HandshakeTimeout, RefusedBy::Us);
            }
            Action::Close(conn) => {
                self.swarm.close_connection(conn);
            }
            Action::Block(peer) => {
                self.swarm.behaviour_mut().blocked.block_peer(peer);
            }
            Action::Unblock(peer) => {
                self.swarm.behaviour_mut().blocked.unblock_peer(peer);
            }
        }
    }

    fn on_swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => self.on_connection_established(peer_id, connection_id, &endpoint),
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => self.on_connection_closed(peer_id, connection_id, num_established == 0),
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

    fn on_connection_established(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        endpoint: &ConnectedPoint,
    ) {
        let source = Source::of_addr(endpoint.get_remote_address());
        let (admitted, new_source) = {
            let p = self.peers.entry(peer_id).or_default();
            p.connections.insert(connection_id);
            // The noise handshake proved the key: an approved peer's address becomes a known
            // source for the gate.
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
        self.admission
            .connection_opened(connection_id, peer_id, admitted, Instant::now());
        if !admitted && endpoint.is_dialer() {
            self.send_hello(peer_id);
        }
    }

    /// `last`: the peer has no connection left.
    fn on_connection_closed(&mut self, peer_id: PeerId, connection_id: ConnectionId, last: bool) {
        let now = Instant::now();
        let total_before = self.total_connections();
        if let Some(p) = self.peers.get_mut(&peer_id) {
            p.connections.remove(&connection_id);
            if last {
                if p.state == Some(HandshakeState::Admitted)
                    || p.state == Some(HandshakeState::Handshaking)
                {
                    p.state = Some(HandshakeState::Disconnected);
                }
                p.rtt = None;
            }
        }
        if last {
            self.redial.disconnected(peer_id, now);
        }
        self.emit(KlpEvent::ConnectionClosed {
            peer: peer_id.to_string(),
            total: total_before.saturating_sub(1),
        });
        if let Some(action) = self
            .admission
            .connection_closed(connection_id, peer_id, last, now)
        {
            self.apply(action);
        }
        if last {
            self.swarm
                .behaviour_mut()
                .gossipsub
                .remove_explicit_peer(&peer_id);
            self.emit(KlpEvent::Disconnected {
                peer: peer_id.to_string(),
            });
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
                let addrs: Vec<Multiaddr> = info.listen_addrs.into_iter().take(16).collect();
                if self.is_admitted(&peer_id) {
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
            }) => self.on_gossip(propagation_source, message_id, message),
            _ => {}
        }
    }

    /// A gossip message is accepted (and handed on) only if its author and its relay are
    /// admitted.
    fn on_gossip(&mut self, relay: PeerId, id: gossipsub::MessageId, message: gossipsub::Message) {
        let author_ok = message.source.is_some_and(|s| self.is_admitted(&s));
        let accepted = author_ok && self.is_admitted(&relay);
        let acceptance = if accepted {
            gossipsub::MessageAcceptance::Accept
        } else {
            gossipsub::MessageAcceptance::Reject
        };
        let _ = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(&id, &relay, acceptance);
        if accepted && let Some(src) = message.source {
            self.emit(KlpEvent::Message {
                topic: message.topic.to_string(),
                from: src.to_string(),
                data: message.data,
            });
        }
    }

    /// Carries out what is due: deadlines and bans (admission), redials, and forgets idle
    /// strangers beyond the bound.
    fn on_tick(&mut self) {
        let now = Instant::now();
        let actions = self
            .admission
            .tick(now, |p| self.peers.get(p).and_then(|x| x.state));
        for a in actions {
            self.apply(a);
        }
        let due = self.redial.due(now, |p| {
            self.peers.get(p).is_some_and(|x| !x.connections.is_empty())
        });
        for id in due {
            let addrs = self
                .peers
                .get(&id)
                .and_then(|p| p.approved.as_ref())
                .map(|e| e.addrs.clone())
                .unwrap_or_default();
            self.dial_peer(id, &addrs);
        }
        for id in idle_strangers_to_forget(
            &self.peers,
            |p| self.redial.is_scheduled(p),
            MAX_IDLE_STRANGERS,
        ) {
            self.peers.remove(&id);
        }
    }

    fn dial_peer(&mut self, id: PeerId, addrs: &[String]) {
        if self.admission.is_banned(&id) {
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

    pub(super) fn set_approved(&mut self, entries: Vec<PeerEntry>, handshake_required: bool) {
        let now = Instant::now();
        self.admission.set_handshake_required(handshake_required);
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
            .filter(|(id, p)| p.approved.is_some() && !new.contains_key(id))
            .map(|(id, _)| *id)
            .collect();
        for id in old {
            self.swarm.behaviour_mut().limits.remove_peer_id(&id);
            self.redial.set_listed(id, false);
            let p = self.peers.entry(id).or_default();
            p.approved = None;
            p.seen_sources.clear();
            let connected = !p.connections.is_empty();
            if handshake_required && connected {
                info!(peer = %id, "removed from peers.list: disconnecting");
                self.say_goodbye(id, GoodbyeReason::Revoked, "removed from peers.list");
            }
        }
        for (id, e) in new {
            let newly = self.peers.get(&id).is_none_or(|p| p.approved.is_none());
            // A newly approved peer may have been banned as a stranger; lift that. A peer
            // that stays approved keeps any ban (e.g. a penalty).
            if newly && let Some(action) = self.admission.newly_approved(id) {
                self.apply(action);
            }
            self.swarm.behaviour_mut().limits.bypass_peer_id(&id);
            self.redial.set_listed(id, !e.addrs.is_empty());
            let p = self.peers.entry(id).or_default();
            let addrs = e.addrs.clone();
            p.approved = Some(e);
            let (connected, state) = (!p.connections.is_empty(), p.state);
            if !connected && (newly || state.is_none()) {
                if self.redial.dial_now(id, now) {
                    self.dial_peer(id, &addrs);
                }
            } else if newly && connected && state != Some(HandshakeState::Admitted) {
                // Connected but refused before: try again now that it is listed.
                self.send_hello(id);
            }
        }
        self.refresh_known_sources();
    }

    /// Tells the gate which sources belong to approved peers (not denied): their listed
    /// addresses and the addresses their connections came from.
    pub(super) fn refresh_known_sources(&mut self) {
        let known: Vec<Source> = self
            .peers
            .iter()
            .filter(|(id, _)| !self.admission.is_denied(id))
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
}
