//! Admission of inbound connections before their security handshake (sans I/O).
//!
//! A TCP connection is accepted and holds a pending slot until noise and yamux are
//! negotiated (bounded by the swarm's inbound upgrade timeout, 2 s). Before it has a peer id,
//! all the node knows is where it comes from. [`PendingInbound`] decides, per connection:
//!
//! - a **known** source (an address of an approved peer: listed in `peers.list`, or seen on a
//!   connection whose noise handshake proved it is that peer) may use the reserved slots too,
//!   but holds at most [`GateLimits::per_source`] pending connections unless it is loopback
//!   (a QUIC Initial is accepted before its source address is validated, so a listed address
//!   can be spoofed);
//! - an **unknown** source may hold at most [`GateLimits::per_source`] pending connections,
//!   the unknown sources of one network (IPv4 /24, IPv6 /48) at most
//!   [`GateLimits::per_network`], and all unknown sources together at most
//!   `total - reserved`, so approved peers always find [`GateLimits::reserved`] slots free
//!   however many strangers are knocking, and a stranger from elsewhere finds a slot unless
//!   the flood is spread over at least `(total - reserved) / per_network` networks.
//!
//! A source is an IPv4 address or an IPv6 /64 (one host usually has a whole /64).
//! [`Gate`] is the thin `NetworkBehaviour` that asks [`PendingInbound`] and releases slots
//! when the connection is established or fails.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::hash::Hash;
use std::net::IpAddr;
use std::task::{Context, Poll};

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, ListenFailure, NetworkBehaviour, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
};

/// Capacity for pending inbound connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GateLimits {
    /// All pending inbound connections.
    pub total: usize,
    /// Of `total`, slots only known sources may use.
    pub reserved: usize,
    /// Pending connections one unknown source may hold.
    pub per_source: usize,
    /// Pending connections the unknown sources of one network may hold together.
    pub per_network: usize,
}

/// The node's limits (documented in ARCHITECTURE.md, "KLP: connection admission").
pub(crate) const LIMITS: GateLimits = GateLimits {
    total: 64,
    reserved: 16,
    per_source: 8,
    per_network: 16,
};

/// Where a connection comes from: an IPv4 address, an IPv6 /64, or no IP at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    V4([u8; 4]),
    V6Prefix([u8; 8]),
    Unaddressed,
}

impl Source {
    pub(crate) fn of_ip(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(a) => Source::V4(a.octets()),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4.octets()),
                None => {
                    let o = a.octets();
                    Source::V6Prefix([o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]])
                }
            },
        }
    }

    /// The network a source belongs to: IPv4 /24, IPv6 /48.
    pub(crate) fn network(self) -> Source {
        match self {
            Source::V4([a, b, c, _]) => Source::V4([a, b, c, 0]),
            Source::V6Prefix([a, b, c, d, e, f, _, _]) => {
                Source::V6Prefix([a, b, c, d, e, f, 0, 0])
            }
            Source::Unaddressed => Source::Unaddressed,
        }
    }

    /// Loopback (`127.0.0.0/8`, `::1`): cannot be spoofed from another host.
    pub(crate) fn is_loopback(self) -> bool {
        matches!(
            self,
            Source::V4([127, ..]) | Source::V6Prefix([0, 0, 0, 0, 0, 0, 0, 0])
        )
    }

    /// The source of a multiaddr (its first IP component).
    pub(crate) fn of_addr(addr: &Multiaddr) -> Source {
        addr.iter()
            .find_map(|p| match p {
                Protocol::Ip4(a) => Some(Source::of_ip(IpAddr::V4(a))),
                Protocol::Ip6(a) => Some(Source::of_ip(IpAddr::V6(a))),
                _ => None,
            })
            .unwrap_or(Source::Unaddressed)
    }
}

/// Why a pending inbound connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    #[error("this source already has {0} connections waiting for their security handshake")]
    PerSource(usize),
    #[error("this network already has {0} connections waiting for their security handshake")]
    PerNetwork(usize),
    #[error("{0} connections from unknown sources are waiting for their security handshake")]
    Unknown(usize),
    #[error("{0} connections are waiting for their security handshake")]
    Total(usize),
}

/// The pending inbound connections, counted per source. `K` identifies a connection.
#[derive(Debug)]
pub(crate) struct PendingInbound<K> {
    limits: GateLimits,
    known: HashSet<Source>,
    /// Each pending connection: its source and whether it was admitted as known.
    pending: HashMap<K, (Source, bool)>,
    /// Pending connections admitted as unknown, per source and per network.
    per_source: HashMap<Source, usize>,
    /// Pending connections admitted as known, per (non-loopback) source.
    known_per_source: HashMap<Source, usize>,
    per_network: HashMap<Source, usize>,
    unknown: usize,
}

impl<K: Copy + Eq + Hash> PendingInbound<K> {
    pub(crate) fn new(limits: GateLimits) -> Self {
        Self {
            limits,
            known: HashSet::new(),
            pending: HashMap::new(),
            per_source: HashMap::new(),
            known_per_source: HashMap::new(),
            per_network: HashMap::new(),
            unknown: 0,
        }
    }

    /// Replaces the known sources. Connections already pending keep the class they were
    /// admitted with.
    pub(crate) fn set_known(&mut self, known: impl IntoIterator<Item = Source>) {
        self.known = known.into_iter().collect();
        self.known.remove(&Source::Unaddressed);
    }

    #[cfg(test)]
    pub(crate) fn is_known(&self, s: &Source) -> bool {
        self.known.contains(s)
    }

    /// Takes a slot for connection `id` from `source`, or says why not.
    pub(crate) fn try_admit(&mut self, id: K, source: Source) -> Result<(), Refused> {
        if self.pending.contains_key(&id) {
            return Ok(());
        }
        if self.pending.len() >= self.limits.total {
            return Err(Refused::Total(self.pending.len()));
        }
        let known = self.known.contains(&source);
        if known && !source.is_loopback() {
            // A known address may use the reserve, but not all of it: a QUIC Initial is
            // accepted before its source address is validated, so an approved peer's listed
            // address can be spoofed. Loopback cannot be, and is where a local testnet's
            // peers all come from.
            let from_source = self.known_per_source.get(&source).copied().unwrap_or(0);
            if from_source >= self.limits.per_source {
                return Err(Refused::PerSource(from_source));
            }
            *self.known_per_source.entry(source).or_default() += 1;
        }
        if !known {
            let from_source = self.per_source.get(&source).copied().unwrap_or(0);
            if from_source >= self.limits.per_source {
                return Err(Refused::PerSource(from_source));
            }
            let from_network = self
                .per_network
                .get(&source.network())
                .copied()
                .unwrap_or(0);
            if from_network >= self.limits.per_network {
                return Err(Refused::PerNetwork(from_network));
            }
            if self.unknown >= self.limits.total.saturating_sub(self.limits.reserved) {
                return Err(Refused::Unknown(self.unknown));
            }
            *self.per_source.entry(source).or_default() += 1;
            *self.per_network.entry(source.network()).or_default() += 1;
            self.unknown += 1;
        }
        self.pending.insert(id, (source, known));
        Ok(())
    }

    /// Frees the slot of connection `id` (established or failed); unknown ids are ignored.
    pub(crate) fn release(&mut self, id: K) {
        let Some((source, known)) = self.pending.remove(&id) else {
            return;
        };
        if known {
            if !source.is_loopback() {
                decrement(&mut self.known_per_source, source);
            }
            return;
        }
        self.unknown = self.unknown.saturating_sub(1);
        decrement(&mut self.per_source, source);
        decrement(&mut self.per_network, source.network());
    }

    /// Pending connections (all, and from unknown sources).
    pub(crate) fn counts(&self) -> (usize, usize) {
        (self.pending.len(), self.unknown)
    }
}

fn decrement(counts: &mut HashMap<Source, usize>, key: Source) {
    if let Some(n) = counts.get_mut(&key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            counts.remove(&key);
        }
    }
}

/// The `NetworkBehaviour` in front of the connection limits: asks [`PendingInbound`].
pub(crate) struct Gate {
    pub(crate) pending: PendingInbound<ConnectionId>,
}

impl Gate {
    pub(crate) fn new(limits: GateLimits) -> Self {
        Self {
            pending: PendingInbound::new(limits),
        }
    }
}

impl NetworkBehaviour for Gate {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.pending
            .try_admit(connection_id, Source::of_addr(remote_addr))
            .map_err(|e| {
                let (pending, unknown) = self.pending.counts();
                tracing::debug!(
                    remote = %remote_addr, reason = %e, pending, unknown,
                    "inbound connection refused before its handshake"
                );
                ConnectionDenied::new(e)
            })
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _peer: PeerId,
        _local_addr: &Multiaddr,
        _remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.pending.release(connection_id);
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ListenFailure(ListenFailure { connection_id, .. }) => {
                self.pending.release(connection_id);
            }
            // Also here: a behaviour before this one may have refused the established
            // connection, in which case `handle_established_inbound_connection` is not called
            // (the swarm then reports a `ListenFailure`), but releasing twice is harmless.
            FromSwarm::ConnectionEstablished(e) => self.pending.release(e.connection_id),
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer_id: PeerId,
        _connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(
        &mut self,
        _cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const L: GateLimits = GateLimits {
        total: 10,
        reserved: 4,
        per_source: 3,
        per_network: 5,
    };

    fn v4(a: u8, b: u8) -> Source {
        Source::of_ip(IpAddr::V4(Ipv4Addr::new(10, 0, a, b)))
    }

    #[test]
    fn one_unknown_source_is_bounded_and_others_still_get_in() {
        let mut g = PendingInbound::new(L);
        for id in 0..3 {
            g.try_admit(id, v4(0, 1)).unwrap();
        }
        assert_eq!(g.try_admit(3, v4(0, 1)), Err(Refused::PerSource(3)));
        g.try_admit(4, v4(0, 2)).unwrap();
        assert_eq!(g.counts(), (4, 4));
        // A slot freed (handshake done or timed out) is usable again by that source.
        g.release(0);
        g.try_admit(5, v4(0, 1)).unwrap();
        assert_eq!(g.counts(), (4, 4));
    }

    #[test]
    fn unknown_sources_together_leave_the_reserve_to_known_ones() {
        let mut g = PendingInbound::new(L);
        g.set_known([v4(9, 9), v4(9, 8)]);
        // Six unknown sources in six networks fill the unknown share (10 - 4).
        for id in 0..6u32 {
            g.try_admit(id, v4(id as u8, 1)).unwrap();
        }
        assert_eq!(g.try_admit(100, v4(7, 0)), Err(Refused::Unknown(6)));
        // Known sources use the reserve, and past it whatever is left.
        for id in 200..204 {
            let from = if id < 202 { v4(9, 9) } else { v4(9, 8) };
            g.try_admit(id, from).unwrap();
        }
        assert_eq!(g.try_admit(204, v4(9, 9)), Err(Refused::Total(10)));
        // An unknown slot freed goes to whoever comes next; a known one is not charged to
        // unknown sources.
        g.release(200);
        assert_eq!(g.counts(), (9, 6));
        assert_eq!(g.try_admit(101, v4(7, 0)), Err(Refused::Unknown(6)));
        g.try_admit(205, v4(9, 9)).unwrap();
        g.release(0);
        assert_eq!(g.counts(), (9, 5));
        g.try_admit(102, v4(7, 0)).unwrap();
    }

    #[test]
    fn the_sources_of_one_network_are_bounded_together() {
        let mut g = PendingInbound::new(L);
        // Five sources of 10.0.1.0/24, one connection each: the network's share.
        for id in 0..5u32 {
            g.try_admit(id, v4(1, id as u8)).unwrap();
        }
        assert_eq!(g.try_admit(5, v4(1, 200)), Err(Refused::PerNetwork(5)));
        // Another network is not affected, and a slot freed in the first is usable again.
        g.try_admit(6, v4(2, 1)).unwrap();
        g.release(3);
        g.try_admit(7, v4(1, 200)).unwrap();
        assert_eq!(g.counts(), (6, 6));
        // A known source in that network is not charged to it.
        g.set_known([v4(1, 50)]);
        g.try_admit(8, v4(1, 50)).unwrap();
        assert_eq!(g.try_admit(9, v4(1, 201)), Err(Refused::PerNetwork(5)));
    }

    #[test]
    fn a_known_source_is_bounded_per_source_but_loopback_is_not() {
        let mut g = PendingInbound::new(L);
        let lo = Source::of_ip(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)));
        g.set_known([v4(9, 9), v4(9, 8), lo]);
        // A known (spoofable) address gets per_source slots, from the reserve too...
        for id in 0..3 {
            g.try_admit(id, v4(9, 9)).unwrap();
        }
        assert_eq!(g.try_admit(3, v4(9, 9)), Err(Refused::PerSource(3)));
        // ...so another approved peer still finds room.
        g.try_admit(4, v4(9, 8)).unwrap();
        // Loopback is not spoofable: a local testnet's peers all share it.
        for id in 10..16 {
            g.try_admit(id, lo).unwrap();
        }
        assert_eq!(g.try_admit(16, lo), Err(Refused::Total(10)));
        for id in (0..5).chain(10..16) {
            g.release(id);
        }
        assert_eq!(g.counts(), (0, 0));
        g.try_admit(0, v4(9, 9)).unwrap();
        g.release(0);
        // When it stops being known, it is bounded as unknown sources are.
        g.set_known([]);
        for id in 0..3 {
            g.try_admit(id, v4(9, 9)).unwrap();
        }
        assert_eq!(g.try_admit(3, v4(9, 9)), Err(Refused::PerSource(3)));
    }

    #[test]
    fn release_is_idempotent_and_ignores_unknown_ids() {
        let mut g = PendingInbound::new(L);
        g.try_admit(1, v4(0, 1)).unwrap();
        g.try_admit(1, v4(0, 1)).unwrap(); // the same connection asked twice: one slot
        assert_eq!(g.counts(), (1, 1));
        g.release(1);
        g.release(1);
        g.release(7);
        assert_eq!(g.counts(), (0, 0));
        assert!(g.per_source.is_empty() && g.per_network.is_empty());
    }

    #[test]
    fn sources_group_ipv6_by_64_and_unwrap_mapped_ipv4() {
        let a: Ipv6Addr = "2001:db8:1:2::1".parse().unwrap();
        let b: Ipv6Addr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: Ipv6Addr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Source::of_ip(a.into()), Source::of_ip(b.into()));
        assert_ne!(Source::of_ip(a.into()), Source::of_ip(c.into()));
        let d: Ipv6Addr = "2001:db8:1:ffff::1".parse().unwrap();
        assert_eq!(
            Source::of_ip(a.into()).network(),
            Source::of_ip(d.into()).network()
        );
        assert_eq!(v4(3, 7).network(), v4(3, 200).network());
        assert_ne!(v4(3, 7).network(), v4(4, 7).network());
        let mapped: Ipv6Addr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(Source::of_ip(mapped.into()), v4(0, 1));
        let addr: Multiaddr = "/ip4/10.0.0.1/tcp/4001".parse().unwrap();
        assert_eq!(Source::of_addr(&addr), v4(0, 1));
        let dns: Multiaddr = "/dns4/example.org/tcp/4001".parse().unwrap();
        assert_eq!(Source::of_addr(&dns), Source::Unaddressed);
        // Addresses without an IP share one unknown bucket and are never known.
        let mut g = PendingInbound::new(L);
        g.set_known([Source::Unaddressed]);
        assert!(!g.is_known(&Source::Unaddressed));
        for id in 0..3 {
            g.try_admit(id, Source::Unaddressed).unwrap();
        }
        assert_eq!(
            g.try_admit(3, Source::Unaddressed),
            Err(Refused::PerSource(3))
        );
    }
}
