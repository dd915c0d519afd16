//! Redial decisions, sans I/O: which listed peers without a connection are dialed when.
//!
//! A listed (approved) peer with addresses that loses its last connection is dialed again
//! after [`REDIAL_MIN`], then after delays that double up to [`REDIAL_MAX`]; a listed peer
//! that refused us as not approved is knocked on from [`KNOCK_INTERVAL`], doubling the same
//! way. Admission ends the schedule; a denied peer has none. The delays come from `backon`'s
//! [`ExponentialBuilder`] (factor 2, no jitter, no limit on the number of attempts), driven
//! here as a plain iterator: `now` is always a parameter.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use kos_map_protocol::GoodbyeReason;
use libp2p::PeerId;

use crate::RefusedBy;

pub(crate) const REDIAL_MIN: Duration = Duration::from_secs(1);
pub(crate) const REDIAL_MAX: Duration = Duration::from_secs(60);
/// How soon a listed peer that refused us as not approved is dialed again.
pub(crate) const KNOCK_INTERVAL: Duration = Duration::from_secs(3);

type Delays = <ExponentialBuilder as BackoffBuilder>::Backoff;

#[derive(Debug)]
struct Schedule {
    /// When the peer is dialed next.
    at: Instant,
    /// The delays after each dial: `first`, doubling, capped at [`REDIAL_MAX`].
    delays: Delays,
}

impl Schedule {
    /// The first dial is `first` after `now`; the following ones `first`, `2 first`, ...
    /// after each dial.
    fn new(now: Instant, first: Duration) -> Self {
        let delays = ExponentialBuilder::new()
            .with_min_delay(first)
            .with_max_delay(REDIAL_MAX)
            .with_factor(2.0)
            .without_max_times()
            .build();
        Self {
            at: now + first,
            delays,
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Redial {
    schedules: HashMap<PeerId, Schedule>,
    /// Listed peers that have addresses to dial.
    listed: HashSet<PeerId>,
    denied: HashSet<PeerId>,
}

impl Redial {
    /// Records whether the peer is listed with addresses. A peer no longer listed (with
    /// addresses) is not redialed any more.
    pub(crate) fn set_listed(&mut self, peer: PeerId, with_addrs: bool) {
        if with_addrs {
            self.listed.insert(peer);
        } else {
            self.listed.remove(&peer);
            self.schedules.remove(&peer);
        }
    }

    /// A listed peer to dial now (newly listed, or never connected): redialed from
    /// [`REDIAL_MIN`] on. `false` if it is not to be dialed (denied, or no addresses).
    pub(crate) fn dial_now(&mut self, peer: PeerId, now: Instant) -> bool {
        if !self.listed.contains(&peer) || self.denied.contains(&peer) {
            return false;
        }
        self.schedules.insert(peer, Schedule::new(now, REDIAL_MIN));
        true
    }

    /// The peer has no connection left: a listed one is redialed, unless a schedule runs.
    pub(crate) fn disconnected(&mut self, peer: PeerId, now: Instant) {
        if self.listed.contains(&peer) && !self.denied.contains(&peer) {
            self.schedules
                .entry(peer)
                .or_insert_with(|| Schedule::new(now, REDIAL_MIN));
        }
    }

    /// The peer was refused. A listed peer that does not (yet) approve us is knocked on,
    /// slowly, so a node joining a federation gets in once an admin approves it there; any
    /// other refusal ends the schedule (the disconnection may start a new one).
    pub(crate) fn refused(
        &mut self,
        peer: PeerId,
        reason: GoodbyeReason,
        by: RefusedBy,
        now: Instant,
    ) {
        let knock = by == RefusedBy::Peer
            && reason == GoodbyeReason::NotApproved
            && self.listed.contains(&peer)
            && !self.denied.contains(&peer);
        if knock {
            self.schedules
                .insert(peer, Schedule::new(now, KNOCK_INTERVAL));
        } else {
            self.schedules.remove(&peer);
        }
    }

    /// The peer is admitted: its backoff is over.
    pub(crate) fn admitted(&mut self, peer: &PeerId) {
        self.schedules.remove(peer);
    }

    /// Replaces the denied peers: they are not redialed; a listed peer no longer denied and
    /// not `connected` is redialed again.
    pub(crate) fn set_denied(
        &mut self,
        peers: impl IntoIterator<Item = PeerId>,
        now: Instant,
        connected: impl Fn(&PeerId) -> bool,
    ) {
        let old = std::mem::replace(&mut self.denied, peers.into_iter().collect());
        self.schedules.retain(|p, _| !self.denied.contains(p));
        let lifted: Vec<PeerId> = old.difference(&self.denied).copied().collect();
        for p in lifted {
            if !connected(&p) {
                self.disconnected(p, now);
            }
        }
    }

    pub(crate) fn is_scheduled(&self, peer: &PeerId) -> bool {
        self.schedules.contains_key(peer)
    }

    /// The peers to dial at `now`: due and not `connected`. Their next dial is scheduled.
    pub(crate) fn due(&mut self, now: Instant, connected: impl Fn(&PeerId) -> bool) -> Vec<PeerId> {
        let mut out = Vec::new();
        for (peer, s) in &mut self.schedules {
            if s.at <= now && !connected(peer) {
                s.at = now + s.delays.next().unwrap_or(REDIAL_MAX);
                out.push(*peer);
            }
        }
        out
    }

    #[cfg(test)]
    fn next_at(&self, peer: &PeerId) -> Option<Instant> {
        self.schedules.get(peer).map(|s| s.at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn never(_: &PeerId) -> bool {
        false
    }

    /// Steps the clock to each due instant and returns the gaps between dials.
    fn gaps(r: &mut Redial, peer: PeerId, t0: Instant, n: usize) -> Vec<u64> {
        let mut now = t0;
        let mut out = Vec::new();
        for _ in 0..n {
            let at = r.next_at(&peer).unwrap();
            assert!(r.due(at - Duration::from_millis(1), never).is_empty());
            assert_eq!(r.due(at, never), vec![peer]);
            out.push((at - now).as_secs());
            now = at;
        }
        out
    }

    #[test]
    fn redial_delays_double_and_cap() {
        let t0 = Instant::now();
        let mut r = Redial::default();
        let p = PeerId::random();
        r.set_listed(p, true);
        r.disconnected(p, t0);
        assert_eq!(
            gaps(&mut r, p, t0, 11),
            vec![1, 1, 2, 4, 8, 16, 32, 60, 60, 60, 60]
        );
    }

    #[test]
    fn a_newly_listed_peer_is_dialed_at_once_then_backs_off() {
        let t0 = Instant::now();
        let mut r = Redial::default();
        let (p, no_addrs) = (PeerId::random(), PeerId::random());
        r.set_listed(p, true);
        r.set_listed(no_addrs, false);
        assert!(r.dial_now(p, t0));
        assert!(!r.dial_now(no_addrs, t0));
        assert_eq!(gaps(&mut r, p, t0, 4), vec![1, 1, 2, 4]);
        r.disconnected(no_addrs, t0);
        assert!(!r.is_scheduled(&no_addrs));
    }

    #[test]
    fn a_peer_that_is_admitted_resets_its_backoff() {
        let t0 = Instant::now();
        let mut r = Redial::default();
        let p = PeerId::random();
        r.set_listed(p, true);
        r.disconnected(p, t0);
        assert_eq!(gaps(&mut r, p, t0, 5), vec![1, 1, 2, 4, 8]);
        let t1 = r.next_at(&p).unwrap();
        r.admitted(&p);
        assert!(!r.is_scheduled(&p));
        assert!(r.due(t1 + secs(3600), never).is_empty());
        // Disconnected again: from the start.
        r.disconnected(p, t1);
        assert_eq!(gaps(&mut r, p, t1, 3), vec![1, 1, 2]);
    }

    #[test]
    fn a_connected_peer_is_not_dialed_and_a_second_disconnection_keeps_the_schedule() {
        let t0 = Instant::now();
        let mut r = Redial::default();
        let p = PeerId::random();
        r.set_listed(p, true);
        r.disconnected(p, t0);
        assert!(r.due(t0 + secs(1), |_| true).is_empty());
        assert_eq!(r.next_at(&p), Some(t0 + secs(1)), "not advanced");
        // A connection that closes before admission does not restart the backoff.
        assert_eq!(gaps(&mut r, p, t0, 3), vec![1, 1, 2]);
        let at = r.next_at(&p);
        r.disconnected(p, t0 + secs(4));
        assert_eq!(r.next_at(&p), at);
    }

    #[test]
    fn a_goodbye_d_peer_is_redialed_and_a_refusing_one_knocked_on() {
        let t0 = Instant::now();
        let mut r = Redial::default();
        let (bye, refusing, stranger) = (PeerId::random(), PeerId::random(), PeerId::random());
        r.set_listed(bye, true);
        r.set_listed(refusing, true);
        // A peer that shuts down: no schedule until it has disconnected, then the usual one.
        r.refused(bye, GoodbyeReason::Shutdown, RefusedBy::Peer, t0);
        assert!(!r.is_scheduled(&bye));
        r.disconnected(bye, t0);
        assert_eq!(gaps(&mut r, bye, t0, 3), vec![1, 1, 2]);
        r.admitted(&bye);
        // A listed peer that does not approve us: knocked on from 3 s, doubling.
        r.refused(refusing, GoodbyeReason::NotApproved, RefusedBy::Peer, t0);
        assert_eq!(gaps(&mut r, refusing, t0, 7), vec![3, 3, 6, 12, 24, 48, 60]);
        // Refused by us: the schedule ends.
        r.refused(refusing, GoodbyeReason::BadSignature, RefusedBy::Us, t0);
        assert!(!r.is_scheduled(&refusing));
        // A stranger is never knocked on nor redialed.
        r.refused(stranger, GoodbyeReason::NotApproved, RefusedBy::Peer, t0);
        r.disconnected(stranger, t0);
        assert!(!r.is_scheduled(&stranger));
    }

    #[test]
    fn a_denied_peer_is_never_redialed() {
        let t0 = Instant::now();
        let mut r = Redial::default();
        let (p, q) = (PeerId::random(), PeerId::random());
        r.set_listed(p, true);
        r.set_listed(q, true);
        r.disconnected(p, t0);
        r.set_denied([p, q], t0, never);
        assert!(r.due(t0 + secs(3600), never).is_empty());
        assert!(!r.dial_now(q, t0));
        r.disconnected(q, t0);
        assert!(!r.is_scheduled(&q));
        r.refused(q, GoodbyeReason::NotApproved, RefusedBy::Peer, t0);
        assert!(!r.is_scheduled(&q), "not knocked on either");
        assert!(r.due(t0 + secs(3600), never).is_empty());
        // No longer denied: the disconnected one is redialed, the connected one is not.
        let t1 = t0 + secs(10);
        r.set_denied([], t1, |x| *x == q);
        assert_eq!(r.next_at(&p), Some(t1 + REDIAL_MIN));
        assert!(!r.is_scheduled(&q));
    }

    #[test]
    fn an_unlisted_peer_is_not_redialed() {
        let t0 = Instant::now();
        let mut r = Redial::default();
        let p = PeerId::random();
        r.set_listed(p, true);
        r.disconnected(p, t0);
        r.set_listed(p, false);
        assert!(r.due(t0 + secs(3600), never).is_empty());
        r.disconnected(p, t0);
        assert!(!r.is_scheduled(&p));
    }
}
