//! Connect + MAP admission against a raw libp2p connect, in the same run, on loopback.
//!
//! `cargo run --release -p kos-klp --example bench_admission [-- ROUNDS]`
//! `cargo run --release -p kos-klp --example bench_admission -- --flood [ROUNDS]`
//!
//! Raw: a fresh dialer swarm (TCP, noise, yamux, no protocols) dials a listener; timed from
//! `dial` to `ConnectionEstablished`. kOS: a fresh dialer `Klp` dials a `Klp` listener that
//! approves it; timed from `dial` to the dialer's `Admitted` event (connection, Hello, Welcome,
//! both signatures verified, admission checked on both sides).
//!
//! `--flood`: admission of a legitimate peer without and during a flood of half-open TCP
//! connections (raw connects at 50/s that never send a byte, as in issue 10), see
//! [`flood_main`].

#![allow(clippy::expect_used, clippy::unwrap_used)] // a measurement tool: failing loudly is right

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpSocket;

use futures::StreamExt;
use kos_klp::{Klp, KlpConfig, KlpEvent, ManifestInfo, NodeId, PeerEntry};
use kos_klp::{MAP_PROTOCOL, WireRequest, WireResponse};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{SwarmEvent, dummy};
use libp2p::{Multiaddr, StreamProtocol, identity, noise, tcp, yamux};

type Rr = request_response::cbor::Behaviour<WireRequest, WireResponse>;

/// The protocols a kOS node runs besides MAP, to separate their cost from MAP's.
#[derive(libp2p::swarm::NetworkBehaviour)]
struct Full {
    identify: libp2p::identify::Behaviour,
    ping: libp2p::ping::Behaviour,
    gossipsub: libp2p::gossipsub::Behaviour,
    kad: libp2p::kad::Behaviour<libp2p::kad::store::MemoryStore>,
    rr: Rr,
}

fn full_swarm(n: u32) -> libp2p::Swarm<Full> {
    let kp = identity::Keypair::ed25519_from_bytes(seed(n)).expect("key");
    let mut s = libp2p::SwarmBuilder::with_existing_identity(kp)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("tcp")
        .with_behaviour(|key| {
            let local = key.public().to_peer_id();
            let gcfg = libp2p::gossipsub::ConfigBuilder::default()
                .validation_mode(libp2p::gossipsub::ValidationMode::Strict)
                .build()
                .expect("gossip");
            Full {
                identify: libp2p::identify::Behaviour::new(libp2p::identify::Config::new(
                    "/kos/klp/1.0.0".into(),
                    key.public(),
                )),
                ping: libp2p::ping::Behaviour::default(),
                gossipsub: libp2p::gossipsub::Behaviour::new(
                    libp2p::gossipsub::MessageAuthenticity::Signed(key.clone()),
                    gcfg,
                )
                .expect("gossip"),
                kad: libp2p::kad::Behaviour::with_config(
                    local,
                    libp2p::kad::store::MemoryStore::new(local),
                    libp2p::kad::Config::new(StreamProtocol::new("/kos/bench/kad/1.0.0")),
                ),
                rr: request_response::cbor::Behaviour::new(
                    [(StreamProtocol::new(MAP_PROTOCOL), ProtocolSupport::Full)],
                    request_response::Config::default(),
                ),
            }
        })
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    s.behaviour_mut()
        .kad
        .set_mode(Some(libp2p::kad::Mode::Server));
    let _ = s
        .behaviour_mut()
        .gossipsub
        .subscribe(&libp2p::gossipsub::IdentTopic::new("/kos/bench/events/1"));
    s
}

fn rr_swarm(n: u32) -> libp2p::Swarm<Rr> {
    let kp = identity::Keypair::ed25519_from_bytes(seed(n)).expect("key");
    libp2p::SwarmBuilder::with_existing_identity(kp)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("tcp")
        .with_behaviour(|_| {
            request_response::cbor::Behaviour::new(
                [(StreamProtocol::new(MAP_PROTOCOL), ProtocolSupport::Full)],
                request_response::Config::default(),
            )
        })
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

fn seed(n: u32) -> [u8; 32] {
    let mut s = [7u8; 32];
    s[..4].copy_from_slice(&n.to_be_bytes());
    s
}

fn id(n: u32) -> NodeId {
    NodeId::from_public_key(ed25519_dalek::SigningKey::from_bytes(&seed(n)).verifying_key())
}

fn cfg(n: u32) -> KlpConfig {
    let m = ManifestInfo {
        name: format!("bench-{n}"),
        version: "0.1.0".into(),
        profile: "federation_node".into(),
        services: vec![],
    };
    KlpConfig::new(seed(n), vec!["/ip4/127.0.0.1/tcp/0".into()], m)
}

fn raw_swarm(n: u32) -> libp2p::Swarm<dummy::Behaviour> {
    let kp = identity::Keypair::ed25519_from_bytes(seed(n)).expect("key");
    libp2p::SwarmBuilder::with_existing_identity(kp)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("tcp")
        .with_behaviour(|_| dummy::Behaviour)
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

fn pct(v: &mut [Duration], q: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--flood") {
        let rounds = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10);
        flood_main(rounds).await;
        return;
    }
    let rounds: u32 = args.first().and_then(|a| a.parse().ok()).unwrap_or(200);

    // Raw libp2p.
    let mut listener = raw_swarm(1);
    listener
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("addr"))
        .expect("listen");
    let laddr: Multiaddr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = listener.select_next_some().await {
            break address;
        }
    };
    tokio::spawn(async move {
        loop {
            listener.select_next_some().await;
        }
    });
    let mut raw = Vec::new();
    for i in 0..rounds {
        let mut d = raw_swarm(1000 + i);
        let t = Instant::now();
        d.dial(laddr.clone()).expect("dial");
        loop {
            if let SwarmEvent::ConnectionEstablished { .. } = d.select_next_some().await {
                break;
            }
        }
        raw.push(t.elapsed());
    }

    // Raw libp2p connect + one request-response round trip of MAP size (~400 bytes each way).
    let mut rr_listener = rr_swarm(2);
    rr_listener
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("addr"))
        .expect("listen");
    let rr_addr: Multiaddr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = rr_listener.select_next_some().await {
            break address;
        }
    };
    tokio::spawn(async move {
        loop {
            if let SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Request { channel, .. },
                ..
            }) = rr_listener.select_next_some().await
            {
                let _ = rr_listener
                    .behaviour_mut()
                    .send_response(channel, WireResponse::Map(vec![1; 400]));
            }
        }
    });
    let mut rr = Vec::new();
    for i in 0..rounds {
        let mut d = rr_swarm(3000 + i);
        let t = Instant::now();
        d.dial(rr_addr.clone()).expect("dial");
        loop {
            match d.select_next_some().await {
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    d.behaviour_mut()
                        .send_request(&peer_id, WireRequest::Map(vec![2; 400]));
                }
                SwarmEvent::Behaviour(request_response::Event::Message { .. }) => break,
                _ => {}
            }
        }
        rr.push(t.elapsed());
    }

    // The same protocol suite as kOS (identify, ping, gossipsub, kademlia) + one round trip.
    let mut fl = full_swarm(4);
    fl.listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("addr"))
        .expect("listen");
    let fl_addr: Multiaddr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = fl.select_next_some().await {
            break address;
        }
    };
    tokio::spawn(async move {
        loop {
            if let SwarmEvent::Behaviour(FullEvent::Rr(request_response::Event::Message {
                message: request_response::Message::Request { channel, .. },
                ..
            })) = fl.select_next_some().await
            {
                let _ = fl
                    .behaviour_mut()
                    .rr
                    .send_response(channel, WireResponse::Map(vec![1; 400]));
            }
        }
    });
    let mut full = Vec::new();
    for i in 0..rounds {
        let mut d = full_swarm(4000 + i);
        let t = Instant::now();
        d.dial(fl_addr.clone()).expect("dial");
        loop {
            match d.select_next_some().await {
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    d.behaviour_mut()
                        .rr
                        .send_request(&peer_id, WireRequest::Map(vec![2; 400]));
                }
                SwarmEvent::Behaviour(FullEvent::Rr(request_response::Event::Message {
                    ..
                })) => break,
                _ => {}
            }
        }
        full.push(t.elapsed());
    }

    // kOS: connect + MAP admission.
    let (server, _t) = Klp::start(cfg(2)).await.expect("start");
    let saddr = format!(
        "{}/p2p/{}",
        server.listen_addrs().await.expect("addrs")[0],
        id(2)
    );
    let mut approved: Vec<PeerEntry> = Vec::new();
    let mut kos = Vec::new();
    let mut kos_connect = Vec::new();
    for i in 0..rounds {
        let n = 5000 + i;
        approved.push(PeerEntry {
            id: id(n),
            addrs: vec![],
            label: None,
            line: 0,
        });
        server
            .set_approved(approved.clone(), true)
            .await
            .expect("approve");
        let mut c = cfg(n);
        c.approved = vec![PeerEntry {
            id: id(2),
            addrs: vec![],
            label: None,
            line: 0,
        }];
        let (d, _t) = Klp::start(c).await.expect("start dialer");
        let mut ev = d.subscribe();
        let t = Instant::now();
        d.dial(&saddr).await.expect("dial");
        loop {
            match ev.recv().await.expect("events") {
                KlpEvent::ConnectionOpened { .. } => kos_connect.push(t.elapsed()),
                KlpEvent::Admitted { .. } => break,
                KlpEvent::Refused { reason, .. } => panic!("refused: {reason}"),
                _ => {}
            }
        }
        kos.push(t.elapsed());
        d.shutdown().await.expect("shutdown");
    }

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (r50, r99) = (pct(&mut raw, 0.5), pct(&mut raw, 0.99));
    let (k50, k99) = (pct(&mut kos, 0.5), pct(&mut kos, 0.99));
    println!("| path | rounds | p50 | p99 |");
    println!("|---|---|---|---|");
    println!(
        "| raw libp2p connect (TCP+noise+yamux) | {rounds} | {:.2} ms | {:.2} ms |",
        ms(r50),
        ms(r99)
    );
    println!(
        "| kOS connect + MAP admission | {rounds} | {:.2} ms | {:.2} ms |",
        ms(k50),
        ms(k99)
    );
    println!(
        "| ratio kOS / raw | | {:.2}× | {:.2}× |",
        ms(k50) / ms(r50),
        ms(k99) / ms(r99)
    );
    let (q50, q99) = (pct(&mut rr, 0.5), pct(&mut rr, 0.99));
    println!(
        "| raw libp2p connect + one request-response round trip | {rounds} | {:.2} ms | {:.2} ms |",
        ms(q50),
        ms(q99)
    );
    println!(
        "| ratio kOS / (raw connect + one round trip) | | {:.2}× | {:.2}× |",
        ms(k50) / ms(q50),
        ms(k99) / ms(q99)
    );
    let (f50, f99) = (pct(&mut full, 0.5), pct(&mut full, 0.99));
    println!(
        "| raw libp2p with kOS's protocol suite + one round trip | {rounds} | {:.2} ms | {:.2} ms |",
        ms(f50),
        ms(f99)
    );
    let (c50, c99) = (pct(&mut kos_connect, 0.5), pct(&mut kos_connect, 0.99));
    println!(
        "| of which: kOS connection established (before MAP) | {rounds} | {:.2} ms | {:.2} ms |",
        ms(c50),
        ms(c99)
    );
}

/// One flood: raw TCP connects every [`FLOOD_GAP`] on average from `sources` (round robin),
/// each held without sending a byte until the node closes it.
struct Flood {
    task: tokio::task::JoinHandle<()>,
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<FloodStats>>,
}

#[derive(Default)]
struct FloodStats {
    opened: usize,
    /// Closed by the node within [`REFUSED_WITHIN`]: no pending slot for it.
    refused: usize,
    /// How long the node held the others before closing them.
    held: Vec<Duration>,
}

/// Mean gap between flood connects: 50 per second.
const FLOOD_GAP: Duration = Duration::from_millis(20);
const FLOOD_MAX: Duration = Duration::from_secs(300);
const REFUSED_WITHIN: Duration = Duration::from_millis(500);
const CLIENT_HOLD: Duration = Duration::from_secs(30);
/// An attempt not admitted within this is counted as shut out.
const ATTEMPT_DEADLINE: Duration = Duration::from_secs(5);
/// Attempts start this far apart (with and without flood), so they sample the whole flood.
const ATTEMPT_SPACING: Duration = Duration::from_millis(300);

impl Flood {
    fn start(target: SocketAddr, sources: Vec<Ipv4Addr>) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(FloodStats::default()));
        let (st, sx) = (stop.clone(), stats.clone());
        let task = tokio::spawn(async move {
            let mut holders = tokio::task::JoinSet::new();
            let t0 = Instant::now();
            let mut i = 0usize;
            let mut rng = [0u8; 8];
            getrandom::fill(&mut rng).expect("random");
            let mut x = u64::from_le_bytes(rng) | 1;
            while !st.load(Ordering::Relaxed) && t0.elapsed() < FLOOD_MAX {
                // Random gaps (uniform, mean `FLOOD_GAP`): a metronome would phase-lock with
                // the node's timeouts and let peers slip in between.
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let gap = FLOOD_GAP.as_micros() as u64 * 2;
                tokio::time::sleep(Duration::from_micros(x % gap)).await;
                let src = SocketAddr::from((sources[i % sources.len()], 0));
                i += 1;
                let sock = TcpSocket::new_v4().expect("socket");
                sock.bind(src).expect("bind");
                let Ok(Ok(mut s)) =
                    tokio::time::timeout(Duration::from_secs(1), sock.connect(target)).await
                else {
                    continue;
                };
                sx.lock().unwrap().opened += 1;
                let sx = sx.clone();
                holders.spawn(async move {
                    let t = Instant::now();
                    let mut buf = [0u8; 64];
                    if let Ok(Ok(0) | Err(_)) =
                        tokio::time::timeout(CLIENT_HOLD, s.read(&mut buf)).await
                    {
                        let d = t.elapsed();
                        let mut x = sx.lock().unwrap();
                        if d < REFUSED_WITHIN {
                            x.refused += 1;
                        } else {
                            x.held.push(d);
                        }
                    }
                });
                while holders.try_join_next().is_some() {}
            }
        });
        Flood { task, stop, stats }
    }

    /// Waits until the node refuses flood connections: the slots the flood can get are full.
    async fn saturated(&self) {
        while self.stats.lock().unwrap().refused == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops connecting and returns (opened, refused at once, median hold of the others).
    fn stop(self) -> (usize, usize, Option<Duration>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.abort();
        let mut x = self.stats.lock().unwrap();
        let hold = (!x.held.is_empty()).then(|| pct(&mut x.held, 0.5));
        (x.opened, x.refused, hold)
    }
}

fn flood_cfg(n: u32) -> KlpConfig {
    let mut c = cfg(n);
    c.handshake_timeout = Duration::from_secs(2);
    c
}

/// Starts node `n` listing `host` (with its address, so it redials with backoff like any
/// node), and returns the time from start to its `Admitted` event (None: shut out).
async fn attempt(n: u32, host: &NodeEntry) -> Option<Duration> {
    let mut c = flood_cfg(n);
    // QUIC listener only: the TCP dial takes a fresh port (see klp/tests/flood.rs).
    c.listen = vec!["/ip4/127.0.0.1/udp/0/quic-v1".into()];
    c.approved = vec![host.entry.clone()];
    let t = Instant::now();
    let (d, _task) = Klp::start(c).await.expect("start");
    let mut ev = d.subscribe();
    let admitted = |ps: &[kos_klp::PeerInfo]| {
        ps.iter().any(|p| {
            p.id == host.entry.id.to_string() && p.state == kos_klp::HandshakeState::Admitted
        })
    };
    // (In case the admission beat the subscription.)
    let mut took = admitted(&d.peers().await.expect("peers")).then(|| t.elapsed());
    let deadline = tokio::time::Instant::now() + ATTEMPT_DEADLINE;
    while took.is_none() {
        match tokio::time::timeout_at(deadline, ev.recv()).await {
            Err(_) => break,
            Ok(Ok(KlpEvent::Admitted { .. })) => took = Some(t.elapsed()),
            Ok(_) => {}
        }
    }
    if took.is_none() {
        let seen = d.peers().await.expect("peers");
        let h = seen.iter().find(|p| p.id == host.entry.id.to_string());
        eprintln!(
            "node {n} shut out: host seen as {:?}, connected {:?}, last refusal {:?}",
            h.map(|p| p.state),
            h.map(|p| p.connected),
            h.and_then(|p| p.last_refusal.clone())
        );
    }
    d.shutdown().await.expect("shutdown");
    took
}

struct NodeEntry {
    entry: PeerEntry,
}

async fn rounds_of(
    rounds: u32,
    host: &NodeEntry,
    peer: impl Fn(u32) -> u32,
    spacing: Duration,
) -> (Vec<Duration>, u32) {
    let mut ok = Vec::new();
    let mut shut_out = 0;
    let mut pace = tokio::time::interval(spacing);
    for i in 0..rounds {
        pace.tick().await;
        match attempt(peer(i), host).await {
            Some(d) => ok.push(d),
            None => shut_out += 1,
        }
    }
    (ok, shut_out)
}

fn summary(v: &mut [Duration], shut_out: u32) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    if v.is_empty() {
        return format!("– | – | {shut_out}");
    }
    let (p50, max) = (pct(v, 0.5), pct(v, 1.0));
    format!("{:.1} ms | {:.1} ms | {shut_out}", ms(p50), ms(max))
}

/// Admission of a legitimate peer during a half-open flood: a newcomer (open federation: the
/// host knows neither its id nor its address) with the flood from one address, from 200
/// addresses of one /24 and from 200 /24s, and an approved peer coming back (its address
/// seen on its first visit) with the flood from 200 /24s. Each peer is a fresh node listing
/// the host with its address (so it redials after 1 s, 2 s, ...); timed from its start to
/// `Admitted`. The peers dial from 127.0.0.1; the flood comes from 127.0.0.2, 127.0.1.1-200
/// or 127.0.1-200.1, connects at random gaps (mean 20 ms) until the measurement ends, and the
/// measurement starts once the node refuses flood connections.
async fn flood_main(rounds: u32) {
    let one = vec![Ipv4Addr::new(127, 0, 0, 2)];
    let one_net: Vec<Ipv4Addr> = (1..=200).map(|i| Ipv4Addr::new(127, 0, 1, i)).collect();
    let many: Vec<Ipv4Addr> = (1..=200).map(|i| Ipv4Addr::new(127, 0, i, 1)).collect();
    println!(
        "| case | flood from | unloaded p50 | unloaded max | shut out | under flood p50 | under flood max | shut out | flood: opened / refused at once / median hold |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let cases: [(&str, bool, &str, &Vec<Ipv4Addr>); 4] = [
        ("newcomer", false, "1 address", &one),
        ("newcomer", false, "200 addresses, one /24", &one_net),
        ("newcomer", false, "200 addresses, 200 /24s", &many),
        (
            "approved peer coming back",
            true,
            "200 addresses, 200 /24s",
            &many,
        ),
    ];
    for (k, (name, approved, from, sources)) in cases.into_iter().enumerate() {
        let base = 10_000 + 1000 * k as u32;
        let host_n = base;
        let peer_n = |i: u32| if approved { base + 1 } else { base + 1 + i };
        let mut c = flood_cfg(host_n);
        if approved {
            c.approved = vec![PeerEntry {
                id: id(base + 1),
                addrs: vec![],
                label: None,
                line: 0,
            }];
        } else {
            c.handshake_required = false;
        }
        let (host, _t) = Klp::start(c).await.expect("start host");
        let addr = host.listen_addrs().await.expect("addrs")[0].clone();
        let port: u16 = addr.rsplit('/').next().unwrap().parse().unwrap();
        let he = NodeEntry {
            entry: PeerEntry {
                id: id(host_n),
                addrs: vec![addr],
                label: None,
                line: 0,
            },
        };
        if approved {
            // First visit: the host learns where the peer connects from.
            attempt(base + 1, &he).await.expect("first visit");
        }
        let (mut u, us) = rounds_of(rounds, &he, peer_n, ATTEMPT_SPACING).await;
        let flood = Flood::start(
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            sources.clone(),
        );
        flood.saturated().await;
        let (mut l, ls) = rounds_of(rounds, &he, |i| peer_n(rounds + i), ATTEMPT_SPACING).await;
        let (opened, refused, hold) = flood.stop();
        eprintln!("{name}, flood from {from}: under flood, in order: {l:.1?} ({ls} shut out)");
        let u = summary(&mut u, us);
        let l = summary(&mut l, ls);
        let hold = hold.map_or("–".into(), |d| format!("{:.1} s", d.as_secs_f64()));
        println!("| {name} | {from} | {u} | {l} | {opened} / {refused} / {hold} |");
        host.shutdown().await.expect("shutdown");
    }
}
