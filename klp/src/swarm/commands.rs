//! The handle's commands, and the peer list it reads.

use std::time::Instant;

use kos_map_protocol::GoodbyeReason;
use libp2p::{PeerId, gossipsub};
use tracing::{info, warn};

use super::calls::Outgoing;
use super::{Command, EventLoop, KlpError, WireRequest};
use crate::{HandshakeState, PeerInfo};

impl EventLoop {
    pub(super) fn on_command(&mut self, c: Command) {
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
                let _ = reply.send(self.publish(topic, data));
            }
            Command::Call {
                peer,
                method,
                path,
                body,
                reply,
            } => self.send_call(
                peer,
                WireRequest::Call { method, path, body },
                Outgoing::Call(reply),
            ),
            Command::Sync { peer, body, reply } => {
                self.send_call(peer, WireRequest::Sync(body), Outgoing::Sync(reply))
            }
            Command::SetDenied { peers, reply } => {
                self.set_denied(peers);
                let _ = reply.send(());
            }
            Command::Penalize {
                peer,
                detail,
                reply,
            } => {
                self.penalize(peer, &detail);
                let _ = reply.send(());
            }
            Command::Shutdown(_) => {}
        }
    }

    /// Publishes on `topic`, or on the federation's topic if it is empty.
    fn publish(&mut self, topic: String, data: Vec<u8>) -> Result<(), KlpError> {
        let t = if topic.is_empty() {
            self.topic.clone()
        } else {
            gossipsub::IdentTopic::new(topic)
        };
        self.swarm
            .behaviour_mut()
            .gossipsub
            .publish(t, data)
            .map(|_| ())
            .map_err(|e| KlpError::Dial(e.to_string()))
    }

    /// Replaces the denied peers; connected ones not refused yet are told
    /// `Goodbye{blocked}`.
    fn set_denied(&mut self, peers: Vec<PeerId>) {
        self.admission.set_denied(peers.iter().copied());
        self.redial.set_denied(peers, Instant::now(), |p| {
            self.peers.get(p).is_some_and(|x| !x.connections.is_empty())
        });
        self.refresh_known_sources();
        let to_close: Vec<PeerId> = self
            .admission
            .denied()
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
    }

    /// `Goodbye{blocked}` and a ban, even for an approved peer.
    fn penalize(&mut self, peer: PeerId, detail: &str) {
        warn!(peer = %peer, detail = %detail, "penalizing peer");
        let connected = self.is_connected(&peer);
        if connected {
            self.say_goodbye(peer, GoodbyeReason::Blocked, detail);
        }
        if let Some(action) = self.admission.penalize(peer, connected, Instant::now()) {
            self.apply(action);
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
