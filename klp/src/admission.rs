//! Admission decisions, sans I/O: the handshake deadline of every connection not yet
//! admitted, the linger of a refused connection, temporary bans (pending until the peer has
//! disconnected, lifted at their instant) and the denied set.
//!
//! The event loop feeds it what happened and the current time (`now` is always a
//! parameter, never read here) and carries out the [`Action`]s it returns on the swarm.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use kos_map_protocol::GoodbyeReason;
use libp2p::PeerId;
use libp2p::swarm::ConnectionId;

use crate::{HandshakeState, RefusedBy};

/// Ban of a peer we refused for misbehaving (bad signature, replay, malformed message...).
pub(crate) const BAN_BAD_PEER: Duration = Duration::from_secs(60);
/// Ban of a stranger we refused as not approved.
pub(crate) const BAN_NOT_APPROVED: Duration = Duration::from_secs(10);
/// How long a refused connection stays open so that our Goodbye can be read.
pub(crate) const LINGER: Duration = Duration::from_millis(500);

/// What the event loop does on the swarm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// The peer did not finish its MAP handshake in time: refuse it
    /// (`Goodbye{handshake_timeout}`, by us).
    HandshakeTimeout(PeerId),
    /// Close this connection.
    Close(ConnectionId),
    /// A ban starts: block the peer.
    Block(PeerId),
    /// A ban is over: unblock the peer.
    Unblock(PeerId),
}

/// The ban a refusal earns, if the peer is not approved.
fn ban_for(reason: GoodbyeReason, by: RefusedBy) -> Option<Duration> {
    match (by, reason) {
        (RefusedBy::Us, GoodbyeReason::NotApproved) => Some(BAN_NOT_APPROVED),
        (
            RefusedBy::Us,
            GoodbyeReason::IncompatibleVersion
            | GoodbyeReason::HandshakeTimeout
            | GoodbyeReason::Revoked,
        ) => None,
        (RefusedBy::Us, _) => Some(BAN_BAD_PEER),
        (RefusedBy::Peer, _) => None,
    }
}

#[derive(Debug)]
pub(crate) struct Admission {
    handshake_timeout: Duration,
    handshake_required: bool,
    /// Connections to close at the instant given unless their peer is admitted by then:
    /// the handshake deadline of a new connection, or the linger of a refused one.
    deadlines: HashMap<ConnectionId, (PeerId, Instant)>,
    /// Peers whose connections linger and close once our response (a Goodbye) is sent.
    close_after_response: HashSet<PeerId>,
    /// Temporary bans, lifted at the instant given.
    bans: HashMap<PeerId, Instant>,
    /// Bans to start once the peer has disconnected (blocking at once would cut off our
    /// Goodbye).
    pending_bans: HashMap<PeerId, Duration>,
    /// Never admitted, whatever `handshake_required` says.
    denied: HashSet<PeerId>,
}

impl Admission {
    pub(crate) fn new(handshake_timeout: Duration, handshake_required: bool) -> Self {
        Self {
            handshake_timeout,
            handshake_required,
            deadlines: HashMap::new(),
            close_after_response: HashSet::new(),
            bans: HashMap::new(),
            pending_bans: HashMap::new(),
            denied: HashSet::new(),
        }
    }

    pub(crate) fn set_handshake_required(&mut self, required: bool) {
        self.handshake_required = required;
    }

    /// Whether a peer that completes the MAP handshake is admitted.
    pub(crate) fn admits(&self, peer: &PeerId, approved: bool) -> bool {
        !self.denied.contains(peer) && (!self.handshake_required || approved)
    }

    pub(crate) fn set_denied(&mut self, peers: impl IntoIterator<Item = PeerId>) {
        self.denied = peers.into_iter().collect();
    }

    pub(crate) fn is_denied(&self, peer: &PeerId) -> bool {
        self.denied.contains(peer)
    }

    pub(crate) fn denied(&self) -> impl Iterator<Item = &PeerId> {
        self.denied.iter()
    }

    pub(crate) fn is_banned(&self, peer: &PeerId) -> bool {
        self.bans.contains_key(peer)
    }

    /// A connection is established: unless its peer is admitted, it must be by the
    /// handshake deadline.
    pub(crate) fn connection_opened(
        &mut self,
        conn: ConnectionId,
        peer: PeerId,
        admitted: bool,
        now: Instant,
    ) {
        if !admitted {
            self.deadlines
                .insert(conn, (peer, now + self.handshake_timeout));
        }
    }

    /// A connection is closed (`last`: the peer has none left). A pending ban starts then.
    pub(crate) fn connection_closed(
        &mut self,
        conn: ConnectionId,
        peer: PeerId,
        last: bool,
        now: Instant,
    ) -> Option<Action> {
        self.deadlines.remove(&conn);
        if !last {
            return None;
        }
        let ban = self.pending_bans.remove(&peer)?;
        self.bans.insert(peer, now + ban);
        Some(Action::Block(peer))
    }

    /// The peer is admitted: none of its connections has a deadline any more.
    pub(crate) fn admitted(&mut self, peer: PeerId) {
        self.deadlines.retain(|_, (p, _)| *p != peer);
    }

    /// The peer was refused (by us or by itself); its connections linger, then close. A
    /// peer we refused earns a ban, unless it is approved; the ban starts when it has
    /// disconnected.
    pub(crate) fn refused(
        &mut self,
        peer: PeerId,
        reason: GoodbyeReason,
        by: RefusedBy,
        approved: bool,
        conns: impl IntoIterator<Item = ConnectionId>,
        now: Instant,
    ) {
        if let Some(d) = ban_for(reason, by)
            && !approved
        {
            self.pending_bans.insert(peer, d);
        }
        self.linger(peer, conns, now);
    }

    /// The peer's connections close after a short linger (so a last message can be read),
    /// unless it is admitted before.
    pub(crate) fn linger(
        &mut self,
        peer: PeerId,
        conns: impl IntoIterator<Item = ConnectionId>,
        now: Instant,
    ) {
        let deadline = now + LINGER;
        for c in conns {
            self.deadlines.insert(c, (peer, deadline));
        }
    }

    /// Our response to the peer (a Goodbye or an Ack of its Goodbye) is on its way: once it
    /// is sent, its connections linger and close.
    pub(crate) fn close_after_response(&mut self, peer: PeerId) {
        self.close_after_response.insert(peer);
    }

    /// The response could not be sent, or the connection is being closed already.
    pub(crate) fn response_dropped(&mut self, peer: &PeerId) {
        self.close_after_response.remove(peer);
    }

    /// A response to the peer was sent ("written", not "read"): if it was the last one,
    /// its connections linger.
    pub(crate) fn response_sent(
        &mut self,
        peer: PeerId,
        conns: impl IntoIterator<Item = ConnectionId>,
        now: Instant,
    ) {
        if self.close_after_response.remove(&peer) {
            self.linger(peer, conns, now);
        }
    }

    /// The node penalizes the peer: a ban of [`BAN_BAD_PEER`] even if approved, at once if
    /// it is not connected, else when it has disconnected (after our Goodbye).
    pub(crate) fn penalize(
        &mut self,
        peer: PeerId,
        connected: bool,
        now: Instant,
    ) -> Option<Action> {
        if connected {
            self.pending_bans.insert(peer, BAN_BAD_PEER);
            None
        } else {
            self.bans.insert(peer, now + BAN_BAD_PEER);
            Some(Action::Block(peer))
        }
    }

    /// The peer is newly approved: a ban it earned as a stranger is lifted.
    pub(crate) fn newly_approved(&mut self, peer: PeerId) -> Option<Action> {
        self.pending_bans.remove(&peer);
        self.bans.remove(&peer).map(|_| Action::Unblock(peer))
    }

    /// What is due at `now`: connections past their deadline whose peer is not admitted
    /// close (a peer still handshaking is refused first, once), and expired bans are lifted.
    /// `state` is the peer's handshake state in the peer table.
    pub(crate) fn tick(
        &mut self,
        now: Instant,
        state: impl Fn(&PeerId) -> Option<HandshakeState>,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let expired: Vec<(ConnectionId, PeerId)> = self
            .deadlines
            .iter()
            .filter(|(_, (_, d))| *d <= now)
            .map(|(c, (p, _))| (*c, *p))
            .collect();
        let mut timed_out = HashSet::new();
        for (c, p) in expired {
            self.deadlines.remove(&c);
            match state(&p) {
                Some(HandshakeState::Admitted) => continue,
                Some(HandshakeState::Handshaking) if timed_out.insert(p) => {
                    actions.push(Action::HandshakeTimeout(p));
                }
                _ => {}
            }
            actions.push(Action::Close(c));
        }
        let lifted: Vec<PeerId> = self
            .bans
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(p, _)| *p)
            .collect();
        for p in lifted {
            self.bans.remove(&p);
            actions.push(Action::Unblock(p));
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(5);

    fn conn(n: usize) -> ConnectionId {
        ConnectionId::new_unchecked(n)
    }

    fn handshaking(_: &PeerId) -> Option<HandshakeState> {
        Some(HandshakeState::Handshaking)
    }

    #[test]
    fn a_handshake_not_finished_by_its_deadline_is_refused_and_closed() {
        let t0 = Instant::now();
        let mut a = Admission::new(TIMEOUT, true);
        let peer = PeerId::random();
        a.connection_opened(conn(1), peer, false, t0);
        assert!(
            a.tick(t0 + TIMEOUT - Duration::from_millis(1), handshaking)
                .is_empty()
        );
        assert_eq!(
            a.tick(t0 + TIMEOUT, handshaking),
            vec![Action::HandshakeTimeout(peer), Action::Close(conn(1))]
        );
        // Done once.
        assert!(a.tick(t0 + TIMEOUT * 2, handshaking).is_empty());
    }

    #[test]
    fn a_peer_with_two_late_connections_is_refused_once_and_both_close() {
        let t0 = Instant::now();
        let mut a = Admission::new(TIMEOUT, true);
        let peer = PeerId::random();
        a.connection_opened(conn(1), peer, false, t0);
        a.connection_opened(conn(2), peer, false, t0);
        let mut actions = a.tick(t0 + TIMEOUT, handshaking);
        assert_eq!(actions[0], Action::HandshakeTimeout(peer));
        actions.sort_by_key(|x| format!("{x:?}"));
        assert_eq!(
            actions,
            vec![
                Action::Close(conn(1)),
                Action::Close(conn(2)),
                Action::HandshakeTimeout(peer)
            ]
        );
    }

    #[test]
    fn an_admitted_peer_keeps_its_connections() {
        let t0 = Instant::now();
        let mut a = Admission::new(TIMEOUT, true);
        let peer = PeerId::random();
        let other = PeerId::random();
        a.connection_opened(conn(1), peer, false, t0);
        a.connection_opened(conn(2), other, false, t0);
        // An admitted peer's connection gets no deadline at all.
        a.connection_opened(conn(3), other, true, t0);
        a.admitted(peer);
        assert_eq!(
            a.tick(t0 + TIMEOUT, handshaking),
            vec![Action::HandshakeTimeout(other), Action::Close(conn(2))]
        );
        // A deadline that expires after the peer was admitted (per the table) closes nothing.
        a.connection_opened(conn(4), peer, false, t0);
        let admitted = |_: &PeerId| Some(HandshakeState::Admitted);
        assert!(a.tick(t0 + TIMEOUT, admitted).is_empty());
        assert!(a.tick(t0 + TIMEOUT * 9, handshaking).is_empty());
    }

    #[test]
    fn a_refused_connection_lingers_then_closes_without_a_second_refusal() {
        let t0 = Instant::now();
        let mut a = Admission::new(TIMEOUT, true);
        let peer = PeerId::random();
        a.connection_opened(conn(1), peer, false, t0);
        a.refused(
            peer,
            GoodbyeReason::IncompatibleVersion,
            RefusedBy::Us,
            false,
            [conn(1)],
            t0,
        );
        let refused = |_: &PeerId| Some(HandshakeState::Refused);
        assert!(
            a.tick(t0 + LINGER - Duration::from_millis(1), refused)
                .is_empty()
        );
        assert_eq!(a.tick(t0 + LINGER, refused), vec![Action::Close(conn(1))]);
        // No ban for an incompatible version: nothing happens when it disconnects.
        assert_eq!(a.connection_closed(conn(1), peer, true, t0 + LINGER), None);
        assert!(!a.is_banned(&peer));
    }

    #[test]
    fn a_ban_starts_at_the_disconnection_and_expires_exactly_at_its_time() {
        let t0 = Instant::now();
        let mut a = Admission::new(TIMEOUT, true);
        let peer = PeerId::random();
        a.connection_opened(conn(1), peer, false, t0);
        a.connection_opened(conn(2), peer, false, t0);
        a.refused(
            peer,
            GoodbyeReason::NotApproved,
            RefusedBy::Us,
            false,
            [conn(1), conn(2)],
            t0,
        );
        assert!(!a.is_banned(&peer), "pending until disconnected");
        let t1 = t0 + Duration::from_millis(300);
        assert_eq!(a.connection_closed(conn(1), peer, false, t1), None);
        assert_eq!(
            a.connection_closed(conn(2), peer, true, t1),
            Some(Action::Block(peer))
        );
        assert!(a.is_banned(&peer));
        let refused = |_: &PeerId| Some(HandshakeState::Refused);
        let until = t1 + BAN_NOT_APPROVED;
        assert!(a.tick(until - Duration::from_nanos(1), refused).is_empty());
        assert!(a.is_banned(&peer));
        assert_eq!(a.tick(until, refused), vec![Action::Unblock(peer)]);
        assert!(!a.is_banned(&peer));
        // The pending ban was used up: the next disconnection bans nothing.
        a.connection_opened(conn(3), peer, false, until);
        assert_eq!(a.connection_closed(conn(3), peer, true, until), None);
    }

    #[test]
    fn bans_depend_on_the_reason_and_spare_approved_peers() {
        let t0 = Instant::now();
        let cases = [
            (
                GoodbyeReason::NotApproved,
                RefusedBy::Us,
                false,
                Some(BAN_NOT_APPROVED),
            ),
            (
                GoodbyeReason::BadSignature,
                RefusedBy::Us,
                false,
                Some(BAN_BAD_PEER),
            ),
            (
                GoodbyeReason::Malformed,
                RefusedBy::Us,
                false,
                Some(BAN_BAD_PEER),
            ),
            (GoodbyeReason::Blocked, RefusedBy::Us, true, None),
            (
                GoodbyeReason::IncompatibleVersion,
                RefusedBy::Us,
                false,
                None,
            ),
            (GoodbyeReason::HandshakeTimeout, RefusedBy::Us, false, None),
            (GoodbyeReason::Revoked, RefusedBy::Us, false, None),
            // A peer saying goodbye (shutting down, or refusing us) is never banned.
            (GoodbyeReason::Shutdown, RefusedBy::Peer, false, None),
            (GoodbyeReason::NotApproved, RefusedBy::Peer, false, None),
        ];
        for (reason, by, approved, ban) in cases {
            let mut a = Admission::new(TIMEOUT, true);
            let peer = PeerId::random();
            a.connection_opened(conn(1), peer, false, t0);
            a.refused(peer, reason, by, approved, [conn(1)], t0);
            let got = a.connection_closed(conn(1), peer, true, t0);
            assert_eq!(
                got,
                ban.map(|_| Action::Block(peer)),
                "{reason:?} by {by:?}"
            );
            if let Some(d) = ban {
                let still = |_: &PeerId| Some(HandshakeState::Refused);
                assert!(a.tick(t0 + d - Duration::from_millis(1), still).is_empty());
                assert_eq!(a.tick(t0 + d, still), vec![Action::Unblock(peer)]);
            }
        }
    }

    #[test]
    fn a_goodbye_response_lingers_only_once_sent() {
        let t0 = Instant::now();
        let mut a = Admission::new(TIMEOUT, true);
        let peer = PeerId::random();
        let refused = |_: &PeerId| Some(HandshakeState::Refused);
        a.close_after_response(peer);
        // Nothing lingers before the response is sent.
        assert!(a.tick(t0 + LINGER * 4, refused).is_empty());
        let t1 = t0 + Duration::from_secs(1);
        a.response_sent(peer, [conn(1)], t1);
        assert!(
            a.tick(t1 + LINGER - Duration::from_millis(1), refused)
                .is_empty()
        );
        assert_eq!(a.tick(t1 + LINGER, refused), vec![Action::Close(conn(1))]);
        // Once used, a later response does not linger again.
        a.response_sent(peer, [conn(1)], t1);
        assert!(a.tick(t1 + LINGER * 4, refused).is_empty());
        // A dropped response cancels it.
        a.close_after_response(peer);
        a.response_dropped(&peer);
        a.response_sent(peer, [conn(1)], t1);
        assert!(a.tick(t1 + LINGER * 4, refused).is_empty());
    }

    #[test]
    fn a_penalty_bans_even_an_approved_peer_for_a_minute() {
        let t0 = Instant::now();
        let mut a = Admission::new(TIMEOUT, true);
        let (away, here) = (PeerId::random(), PeerId::random());
        assert_eq!(a.penalize(away, false, t0), Some(Action::Block(away)));
        assert!(a.is_banned(&away));
        assert_eq!(a.penalize(here, true, t0), None);
        assert!(!a.is_banned(&here));
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(
            a.connection_closed(conn(1), here, true, t1),
            Some(Action::Block(here))
        );
        let admitted = |_: &PeerId| Some(HandshakeState::Admitted);
        assert_eq!(
            a.tick(t0 + BAN_BAD_PEER, admitted),
            vec![Action::Unblock(away)]
        );
        assert_eq!(
            a.tick(t1 + BAN_BAD_PEER, admitted),
            vec![Action::Unblock(here)]
        );
    }

    #[test]
    fn a_newly_approved_peer_loses_its_stranger_ban() {
        let t0 = Instant::now();
        let mut a = Admission::new(TIMEOUT, true);
        let (banned, pending) = (PeerId::random(), PeerId::random());
        a.refused(
            banned,
            GoodbyeReason::NotApproved,
            RefusedBy::Us,
            false,
            [],
            t0,
        );
        assert_eq!(
            a.connection_closed(conn(1), banned, true, t0),
            Some(Action::Block(banned))
        );
        assert_eq!(a.newly_approved(banned), Some(Action::Unblock(banned)));
        assert!(!a.is_banned(&banned));
        a.refused(
            pending,
            GoodbyeReason::NotApproved,
            RefusedBy::Us,
            false,
            [],
            t0,
        );
        assert_eq!(a.newly_approved(pending), None);
        assert_eq!(a.connection_closed(conn(2), pending, true, t0), None);
        // Nothing left to lift.
        let refused = |_: &PeerId| Some(HandshakeState::Refused);
        assert!(a.tick(t0 + BAN_BAD_PEER, refused).is_empty());
    }

    #[test]
    fn denied_peers_are_never_admitted_and_open_nodes_admit_strangers() {
        let mut a = Admission::new(TIMEOUT, true);
        let (p, q) = (PeerId::random(), PeerId::random());
        assert!(a.admits(&p, true));
        assert!(!a.admits(&p, false));
        a.set_denied([p]);
        assert!(!a.admits(&p, true));
        assert!(a.is_denied(&p) && !a.is_denied(&q));
        a.set_handshake_required(false);
        assert!(a.admits(&q, false));
        assert!(!a.admits(&p, false));
        a.set_denied([]);
        assert!(a.admits(&p, false));
        assert_eq!(a.denied().count(), 0);
    }
}
