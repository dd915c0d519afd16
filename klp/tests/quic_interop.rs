//! The node's QUIC against a stock rust-libp2p peer: libp2p's default `with_quic()` config,
//! identify and ping only, no kOS code. Both directions: the stock peer dials the node, and
//! the node dials the stock peer. Streams must open both ways (identify and ping each side).
//!
//! This is the reference for the py-libp2p QUIC interop report (issue 10, defect 5; see
//! docs/ARCHITECTURE.md, "QUIC interop"): what fails there fails against any rust-libp2p peer
//! and is py-libp2p's, while the node's QUIC works with a stock peer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{config, id_of, peer, start_with};
use futures::StreamExt;
use kos_klp::{MAP_PROTOCOL, NodeId};
use libp2p::core::ConnectedPoint;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, identify, identity, ping};

/// Everything one test waits for, whatever the order.
const T: Duration = Duration::from_secs(20);

#[derive(NetworkBehaviour)]
struct Stock {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

fn stock_swarm() -> Swarm<Stock> {
    libp2p::SwarmBuilder::with_existing_identity(identity::Keypair::generate_ed25519())
        .with_tokio()
        .with_quic()
        .with_behaviour(|key| Stock {
            identify: identify::Behaviour::new(identify::Config::new(
                "/stock/1.0.0".into(),
                key.public(),
            )),
            ping: ping::Behaviour::default(),
        })
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

/// What the stock peer saw of the node.
#[derive(Debug, Default)]
struct Seen {
    /// How the stock peer's connection to the node came about (`true`: it dialed).
    dialer: Option<bool>,
    /// The node answered our identify request (a stream we opened).
    identify: Option<identify::Info>,
    /// The node asked for our identify (a stream the node opened).
    identify_sent: bool,
    /// Our ping over a stream we opened.
    rtt: Option<Duration>,
}

impl Seen {
    fn done(&self) -> bool {
        self.dialer.is_some() && self.identify.is_some() && self.identify_sent && self.rtt.is_some()
    }
}

/// Drives the stock swarm until it has seen identify both ways and a ping from `node`.
async fn watch(stock: &mut Swarm<Stock>, node: PeerId) -> Seen {
    let mut seen = Seen::default();
    let run = async {
        while !seen.done() {
            match stock.select_next_some().await {
                SwarmEvent::ConnectionEstablished {
                    peer_id, endpoint, ..
                } if peer_id == node => {
                    seen.dialer = Some(matches!(endpoint, ConnectedPoint::Dialer { .. }));
                }
                SwarmEvent::Behaviour(StockEvent::Identify(identify::Event::Received {
                    peer_id,
                    info,
                    ..
                })) if peer_id == node => seen.identify = Some(info),
                SwarmEvent::Behaviour(StockEvent::Identify(identify::Event::Sent {
                    peer_id,
                    ..
                })) if peer_id == node => seen.identify_sent = true,
                SwarmEvent::Behaviour(StockEvent::Identify(identify::Event::Error {
                    peer_id,
                    error,
                    ..
                })) if peer_id == node => panic!("identify with the node failed: {error}"),
                SwarmEvent::Behaviour(StockEvent::Ping(ping::Event { peer, result, .. }))
                    if peer == node =>
                {
                    seen.rtt = Some(result.expect("ping over QUIC"));
                }
                SwarmEvent::ConnectionClosed { peer_id, cause, .. } if peer_id == node => {
                    panic!("the node closed the QUIC connection: {cause:?}")
                }
                SwarmEvent::OutgoingConnectionError { error, .. } => {
                    panic!("stock peer could not dial the node: {error}")
                }
                _ => {}
            }
        }
    };
    if tokio::time::timeout(T, run).await.is_err() {
        panic!("not everything seen within {T:?}: {seen:#?}");
    }
    seen
}

fn peer_id_of(id: &NodeId) -> PeerId {
    PeerId::from_bytes(&id.to_bytes()).expect("peer id")
}

/// Checks what the node told the stock peer over identify.
fn check_identify(info: &identify::Info, node: PeerId) {
    assert_eq!(info.public_key.to_peer_id(), node);
    assert!(
        info.agent_version.starts_with("kos-node/"),
        "{}",
        info.agent_version
    );
    assert!(
        info.protocols.contains(&StreamProtocol::new(MAP_PROTOCOL)),
        "{:?}",
        info.protocols
    );
    assert!(
        info.listen_addrs
            .iter()
            .any(|a| a.to_string().contains("/quic-v1")),
        "{:?}",
        info.listen_addrs
    );
}

/// Waits until the node's own ping of the stock peer (a stream the node opened) has an RTT.
async fn node_pinged(klp: &kos_klp::Klp, stock: PeerId) {
    let id = NodeId::from_bytes(&stock.to_bytes()).expect("node id");
    let deadline = tokio::time::Instant::now() + T;
    loop {
        if let Some(p) = peer(klp, &id).await
            && p.connected
            && p.rtt_ms.is_some()
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node has no RTT for the stock peer within {T:?}: {:#?}",
            peer(klp, &id).await
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn quic_node_config(n: u8) -> kos_klp::KlpConfig {
    let mut cfg = config(n, "/ip4/127.0.0.1/udp/0/quic-v1");
    // The stock peer never says MAP Hello; keep its connection for the whole test.
    cfg.handshake_timeout = T;
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_rust_libp2p_peer_dials_the_node_over_quic() {
    let node = start_with(quic_node_config(41)).await;
    assert!(node.addr.contains("/quic-v1"), "{}", node.addr);
    let node_peer = peer_id_of(&id_of(41));

    let mut stock = stock_swarm();
    let addr: Multiaddr = format!("{}/p2p/{node_peer}", node.addr)
        .parse()
        .expect("addr");
    stock.dial(addr).expect("dial");

    let seen = watch(&mut stock, node_peer).await;
    assert_eq!(seen.dialer, Some(true));
    check_identify(seen.identify.as_ref().expect("identify"), node_peer);
    node_pinged(&node.klp, *stock.local_peer_id()).await;
    node.klp.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_dials_a_stock_rust_libp2p_peer_over_quic() {
    let node = start_with(quic_node_config(42)).await;
    let node_peer = peer_id_of(&id_of(42));

    let mut stock = stock_swarm();
    stock
        .listen_on("/ip4/127.0.0.1/udp/0/quic-v1".parse().expect("addr"))
        .expect("listen");
    let listen = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = stock.select_next_some().await {
            break address;
        }
    };
    let stock_peer = *stock.local_peer_id();
    node.klp
        .dial(&format!("{listen}/p2p/{stock_peer}"))
        .await
        .expect("node dials");

    let seen = watch(&mut stock, node_peer).await;
    assert_eq!(seen.dialer, Some(false));
    check_identify(seen.identify.as_ref().expect("identify"), node_peer);
    node_pinged(&node.klp, stock_peer).await;
    node.klp.shutdown().await.expect("shutdown");
}
