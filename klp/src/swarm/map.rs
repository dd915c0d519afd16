//! The MAP handshake over request-response: Hello, Welcome, Goodbye. What a refusal means
//! for the connections (linger, ban) and for the redial is decided by the cores; the peer
//! table records the outcome.

use std::str::FromStr;
use std::time::Instant;

use kos_map_protocol::{
    GoodbyeReason, MAP_VERSION, Manifest, MapMessage, Skill, VersionRange, negotiate, open, seal,
};
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::{Multiaddr, PeerId};
use tracing::{debug, info, warn};

use super::{
    EventLoop, MessageError, WireRequest, WireResponse, node_id, nonce_from, now_ms, os_random,
    seal_goodbye,
};
use crate::{HandshakeState, KlpEvent, Refusal, RefusedBy};

/// The MAP versions this node speaks.
fn ours() -> VersionRange {
    VersionRange {
        min: MAP_VERSION,
        max: MAP_VERSION,
    }
}

/// Our answer to a MAP request, or what could not be built (then nothing is sent).
type Answer = Result<WireResponse, (&'static str, MessageError)>;

impl EventLoop {
    fn is_approved(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|p| p.approved.is_some())
    }

    fn admits(&self, peer: &PeerId) -> bool {
        self.admission.admits(peer, self.is_approved(peer))
    }

    fn manifest(&self) -> Result<Manifest, MessageError> {
        let nonce = nonce_from(os_random)?;
        Ok(Manifest {
            node_id: self.local_id,
            public_key: self.signing.verifying_key().to_bytes(),
            name: self.cfg.manifest.name.clone(),
            version: self.cfg.manifest.version.clone(),
            profile: self.cfg.manifest.profile.clone(),
            protocol_versions: ours(),
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

    pub(super) fn goodbye(
        &self,
        reason: GoodbyeReason,
        detail: &str,
    ) -> Result<Vec<u8>, MessageError> {
        seal_goodbye(&self.signing, self.local_id, reason, detail, os_random)
    }

    /// We could not build a message for `peer`: its connections close now, with the reason
    /// logged, instead of sending a broken one.
    fn close_unsent(&mut self, peer: PeerId, what: &str, error: &MessageError) {
        warn!(peer = %peer, error = %error, "cannot build MAP {what}: closing the connection");
        self.admission.response_dropped(&peer);
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    /// Sends a sealed MAP message as a request; a message that could not be built closes
    /// the connection instead (logged), and nothing is sent.
    pub(super) fn send_map(
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

    pub(super) fn send_hello(&mut self, peer: PeerId) {
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

    /// Records a refusal (by us or by the peer). Whatever happens to a Goodbye, a refused
    /// peer's connections close after a short linger; the cores decide the ban and the
    /// redial (a listed peer that does not approve us yet is knocked on, slowly).
    pub(super) fn refuse(&mut self, peer: PeerId, reason: GoodbyeReason, by: RefusedBy) {
        let now = Instant::now();
        let approved = self.is_approved(&peer);
        let conns = self.connections_of(&peer);
        self.admission
            .refused(peer, reason, by, approved, conns, now);
        self.redial.refused(peer, reason, by, now);
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
        info!(peer = %peer, reason = reason.as_str(), by = ?by, "MAP refused");
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
        let identify_addrs = p.identify_addrs.clone();
        self.redial.admitted(&peer);
        self.admission.admitted(peer);
        for a in addrs.into_iter().chain(identify_addrs) {
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

    /// Dispatches an event of the request-response protocol (MAP, calls, sync).
    pub(super) fn on_map(&mut self, ev: request_response::Event<WireRequest, WireResponse>) {
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
                if let Some(WireResponse::Map(bytes)) = self.answer_outgoing(request_id, response) {
                    self.on_map_response(peer, &bytes);
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
                self.fail_outgoing(request_id, &error);
            }
            Event::InboundFailure { peer, error, .. } => {
                debug!(peer = %peer, error = %error, "inbound MAP failed")
            }
            Event::ResponseSent { peer, .. } => {
                // "Sent" means written, not read: closing at once can cut the Goodbye off.
                // Linger briefly; the deadline sweep closes the connections.
                let conns = self.connections_of(&peer);
                self.admission.response_sent(peer, conns, Instant::now());
            }
        }
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
        let answer = match open(&bytes, &transport, now_ms(), &mut self.replay) {
            Err(e) => {
                warn!(peer = %peer, error = %e, "MAP message refused");
                self.answer_goodbye(peer, e.goodbye_reason(), &e.to_string())
            }
            Ok(MapMessage::Hello(m)) => self.on_hello(peer, m),
            Ok(MapMessage::Goodbye { reason, detail, .. }) => {
                info!(peer = %peer, reason = reason.as_str(), detail = %detail, "peer said goodbye");
                self.refuse(peer, reason, RefusedBy::Peer);
                self.admission.close_after_response(peer);
                Ok(WireResponse::Ack)
            }
            Ok(MapMessage::Welcome { .. }) => {
                self.answer_goodbye(peer, GoodbyeReason::Malformed, "unexpected Welcome")
            }
        };
        let response = match answer {
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
            self.admission.response_dropped(&peer);
        }
    }

    /// A Hello: Welcome (the peer is admitted) or Goodbye.
    fn on_hello(&mut self, peer: PeerId, m: Manifest) -> Answer {
        match negotiate(ours(), m.protocol_versions) {
            Err(e) => self.answer_goodbye(peer, GoodbyeReason::IncompatibleVersion, &e.to_string()),
            Ok(_) if !self.admits(&peer) => self.answer_goodbye(
                peer,
                GoodbyeReason::NotApproved,
                "this node does not list you in its peers.list",
            ),
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

    /// Refuses the peer in answer to its request: our Goodbye is the response, and its
    /// connections close once it is sent.
    fn answer_goodbye(&mut self, peer: PeerId, reason: GoodbyeReason, detail: &str) -> Answer {
        self.refuse(peer, reason, RefusedBy::Us);
        self.admission.close_after_response(peer);
        self.goodbye(reason, detail)
            .map(WireResponse::Map)
            .map_err(|e| ("Goodbye", e))
    }

    fn on_map_response(&mut self, peer: PeerId, bytes: &[u8]) {
        let Some(transport) = node_id(&peer) else {
            return;
        };
        match open(bytes, &transport, now_ms(), &mut self.replay) {
            Ok(MapMessage::Welcome { manifest, version }) => {
                let ours = ours();
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
    /// (or after the linger).
    pub(super) fn say_goodbye(&mut self, peer: PeerId, reason: GoodbyeReason, detail: &str) {
        self.refuse(peer, reason, RefusedBy::Us);
        let sealed = self.goodbye(reason, detail);
        if self.send_map(peer, "Goodbye", sealed).is_some() {
            let conns = self.connections_of(&peer);
            self.admission.linger(peer, conns, Instant::now());
        }
    }
}
