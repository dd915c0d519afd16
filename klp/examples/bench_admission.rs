//! Connect + MAP admission against a raw libp2p connect, in the same run, on loopback.
//!
//! `cargo run --release -p kos-klp --example bench_admission [-- ROUNDS]`
//!
//! Raw: a fresh dialer swarm (TCP, noise, yamux, no protocols) dials a listener; timed from
//! `dial` to `ConnectionEstablished`. kOS: a fresh dialer `Klp` dials a `Klp` listener that
//! approves it; timed from `dial` to the dialer's `Admitted` event (connection, Hello, Welcome,
//! both signatures verified, admission checked on both sides).

#![allow(clippy::expect_used, clippy::unwrap_used)] // a measurement tool: failing loudly is right

use std::time::{Duration, Instant};

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
    let rounds: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);

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
