//! A flood of half-open TCP connections (raw connects that never start the noise handshake)
//! must not shut legitimate peers out: a newcomer from another address, and an approved peer
//! coming back from an address it was seen on, are admitted about as fast as without the flood.
//!
//! The flood is the one from issue 10: up to 500 connects at 50 per second, each held open
//! (never writing) until the node closes it or 10 s pass. It comes from 127.0.0.2, or from
//! 127.0.1.1, 127.0.2.1, ... (any 127/8 address reaches the node's 127.0.0.1 listener); the
//! peers dial from 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use kos_klp::{KlpEvent, PeerEntry};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;

const FLOOD_CONNECTS: usize = 500;
const FLOOD_PACE: Duration = Duration::from_millis(20);
const FLOOD_HOLD: Duration = Duration::from_secs(10);
/// A flood connection the node closes sooner than this was refused on arrival (no slot),
/// not timed out.
const REFUSED_WITHIN: Duration = Duration::from_millis(500);
const ROUNDS: usize = 5;
/// How long one admission may take before the test calls it shut out. The dialers here do
/// not redial: a refused dial never completes.
const ADMISSION_DEADLINE: Duration = Duration::from_secs(5);
/// Absolute slack on top of "2x unloaded": on loopback an admission takes milliseconds, so
/// 2x alone would make scheduling noise on a busy 2-core machine (the flood itself runs in
/// this process) fail the test. 500 ms stays below the 1 s a listed peer waits before it
/// redials, so "admitted on the first dial" and "refused, then let in on a retry" remain
/// apart.
const SLACK: Duration = Duration::from_millis(500);

struct Flood {
    task: tokio::task::JoinHandle<()>,
    /// Connections the node closed at once (no pending slot for them).
    refused: Arc<AtomicUsize>,
    /// Connects made.
    opened: Arc<AtomicUsize>,
}

impl Flood {
    fn start(target: SocketAddr, sources: Vec<Ipv4Addr>) -> Flood {
        let refused = Arc::new(AtomicUsize::new(0));
        let opened = Arc::new(AtomicUsize::new(0));
        let (r, o) = (refused.clone(), opened.clone());
        let task = tokio::spawn(async move {
            let mut holders = JoinSet::new();
            let mut pace = tokio::time::interval(FLOOD_PACE);
            for i in 0..FLOOD_CONNECTS {
                pace.tick().await;
                let src = SocketAddr::V4(SocketAddrV4::new(sources[i % sources.len()], 0));
                let sock = TcpSocket::new_v4().unwrap();
                sock.bind(src).unwrap();
                let Ok(Ok(stream)) =
                    tokio::time::timeout(Duration::from_secs(1), sock.connect(target)).await
                else {
                    continue;
                };
                o.fetch_add(1, Ordering::Relaxed);
                holders.spawn(hold(stream, r.clone()));
            }
            while holders.join_next().await.is_some() {}
        });
        Flood {
            task,
            refused,
            opened,
        }
    }

    fn refused(&self) -> usize {
        self.refused.load(Ordering::Relaxed)
    }

    /// Waits until the node refuses flood connections: its pending slots for the flood's
    /// sources are full.
    async fn saturated(&self) {
        let deadline = Instant::now() + Duration::from_secs(8);
        while self.refused() == 0 {
            assert!(
                Instant::now() < deadline,
                "the node never refused a flood connection ({} opened)",
                self.opened.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Holds a connection without sending a byte until the node closes it (or `FLOOD_HOLD`).
async fn hold(mut s: TcpStream, refused: Arc<AtomicUsize>) {
    let t = Instant::now();
    let mut buf = [0u8; 64];
    if let Ok(r) = tokio::time::timeout(FLOOD_HOLD, s.read(&mut buf)).await
        && matches!(r, Ok(0) | Err(_))
        && t.elapsed() < REFUSED_WITHIN
    {
        refused.fetch_add(1, Ordering::Relaxed);
    }
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit('/').next().unwrap().parse().unwrap()
}

fn bare(n: u8) -> PeerEntry {
    PeerEntry {
        id: id_of(n),
        addrs: vec![],
        label: None,
        line: 0,
    }
}

/// Starts node `n` (listing `host` without an address), dials `host` and returns the time
/// from the dial to the dialer's `Admitted` event; the node is shut down afterwards.
async fn admission(n: u8, host: &Node, what: &str) -> Duration {
    // The dialer listens on QUIC only, so its TCP dial takes a fresh port. (Dialing from its
    // TCP listen port, as libp2p does when it has one, can fail with EADDRINUSE when a
    // just-closed connection between the same two ports is still in TIME_WAIT, which happens
    // with many short-lived nodes on one loopback and has nothing to do with the flood.)
    let mut cfg = config(n, "/ip4/127.0.0.1/udp/0/quic-v1");
    cfg.approved = vec![bare(host.n)];
    let node = start_with(cfg).await;
    let mut ev = node.klp.subscribe();
    let t = Instant::now();
    node.klp
        .dial(&format!("{}/p2p/{}", host.addr, id_of(host.n)))
        .await
        .unwrap();
    let deadline = t + ADMISSION_DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, ev.recv()).await {
            Err(_) => panic!("{what}: node {n} not admitted within {ADMISSION_DEADLINE:?}"),
            Ok(Ok(KlpEvent::Admitted { .. })) => break,
            Ok(Ok(KlpEvent::Refused { reason, .. })) => panic!("{what}: refused: {reason}"),
            Ok(_) => {}
        }
    }
    let took = t.elapsed();
    node.klp.shutdown().await.unwrap();
    took
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_gets_in_during_a_half_open_flood_from_another_address() {
    // An open federation: the node has never heard of the newcomers, so their address is
    // nothing to it (approving them would make it a known source once seen).
    let mut cfg = config(100, "/ip4/127.0.0.1/tcp/0");
    cfg.handshake_required = false;
    let host = start_with(cfg).await;

    let mut unloaded = Vec::new();
    for i in 0..ROUNDS {
        unloaded.push(admission(101 + i as u8, &host, "unloaded").await);
    }

    let target = SocketAddr::from((Ipv4Addr::LOCALHOST, port_of(&host.addr)));
    let flood = Flood::start(target, vec![Ipv4Addr::new(127, 0, 0, 2)]);
    flood.saturated().await;
    let refused_before = flood.refused();
    let mut loaded = Vec::new();
    for i in 0..ROUNDS {
        loaded.push(admission(101 + (ROUNDS + i) as u8, &host, "under flood").await);
    }
    // The flood kept pressing while the newcomers came in.
    assert!(
        flood.refused() > refused_before,
        "the flood stopped before the measurement ended"
    );
    let (u, l) = (median(unloaded), median(loaded));
    eprintln!("newcomer admission: unloaded {u:?}, under flood {l:?} (medians of {ROUNDS})");
    assert!(
        l <= 2 * u + SLACK,
        "under flood {l:?} > 2 x unloaded {u:?} + {SLACK:?}"
    );
    drop(flood);
    host.klp.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_peer_gets_back_in_during_a_flood_from_many_addresses() {
    let mut cfg = config(120, "/ip4/127.0.0.1/tcp/0");
    cfg.approved = vec![bare(121)];
    let host = start_with(cfg).await;

    // Node 121 is approved without an address; its first connection (from 127.0.0.1) shows
    // the node where it lives. Then it comes back, again and again.
    admission(121, &host, "first visit").await;
    let mut unloaded = Vec::new();
    for _ in 0..ROUNDS {
        unloaded.push(admission(121, &host, "unloaded").await);
    }

    // 200 source addresses in 200 networks (/24): no per-source or per-network bound is
    // reached, the flood fills everything strangers may hold.
    let sources = (1..=200).map(|i| Ipv4Addr::new(127, 0, i, 1)).collect();
    let target = SocketAddr::from((Ipv4Addr::LOCALHOST, port_of(&host.addr)));
    let flood = Flood::start(target, sources);
    flood.saturated().await;
    let refused_before = flood.refused();
    let mut loaded = Vec::new();
    for _ in 0..ROUNDS {
        loaded.push(admission(121, &host, "under flood").await);
    }
    assert!(
        flood.refused() > refused_before,
        "the flood stopped before the measurement ended"
    );
    let (u, l) = (median(unloaded), median(loaded));
    eprintln!(
        "approved peer re-admission: unloaded {u:?}, under flood {l:?} (medians of {ROUNDS})"
    );
    assert!(
        l <= 2 * u + SLACK,
        "under flood {l:?} > 2 x unloaded {u:?} + {SLACK:?}"
    );
    drop(flood);
    host.klp.shutdown().await.unwrap();
}
