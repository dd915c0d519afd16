//! Admission between honest nodes: in-process swarms on 127.0.0.1 over TCP and QUIC.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use kos_klp::{HandshakeState, KlpEvent, RefusedBy};

const T: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approved_peers_admit_each_other_strangers_are_refused_and_removal_disconnects() {
    let nodes = [
        start(1, "/ip4/127.0.0.1/tcp/0").await,
        start(2, "/ip4/127.0.0.1/tcp/0").await,
        start(3, "/ip4/127.0.0.1/tcp/0").await,
    ];
    let list: Vec<_> = nodes.iter().map(entry).collect();
    let mut events = nodes[0].klp.subscribe();
    for n in &nodes {
        // The shared list includes the node itself; it must not become its own peer.
        n.klp.set_approved(list.clone(), true).await.unwrap();
    }
    for a in &nodes {
        for b in nodes.iter().filter(|b| b.n != a.n) {
            let p = wait_peer(&a.klp, &id_of(b.n), T, "mutual admission", admitted).await;
            assert_eq!(p.protocol_version, Some(1));
            assert_eq!(p.name.as_deref(), Some(format!("node-{}", b.n).as_str()));
            assert_eq!(p.profile.as_deref(), Some("federation_node"));
            assert_eq!(
                p.services,
                vec![("translatorAgent".to_string(), "0.1.0".to_string())]
            );
            assert!(p.approved);
        }
        assert!(
            peer(&a.klp, &id_of(a.n)).await.is_none(),
            "a node is not its own peer"
        );
    }
    let mut saw_admitted = false;
    while let Ok(e) = events.try_recv() {
        saw_admitted |= matches!(e, KlpEvent::Admitted { version: 1, .. });
    }
    assert!(saw_admitted, "Admitted events are published");

    // A stranger dials node 1: refused with Goodbye{not_approved}.
    let stranger = start(9, "/ip4/127.0.0.1/tcp/0").await;
    stranger
        .klp
        .set_approved(vec![entry(&nodes[0])], true)
        .await
        .unwrap();
    let seen_by_stranger = wait_peer(&stranger.klp, &id_of(1), T, "stranger refused", |p| {
        p.state == HandshakeState::Refused
    })
    .await;
    let refusal = seen_by_stranger.last_refusal.unwrap();
    assert_eq!(
        (refusal.reason.as_str(), refusal.by),
        ("not_approved", RefusedBy::Peer)
    );
    let seen_by_1 = wait_peer(
        &nodes[0].klp,
        &id_of(9),
        T,
        "node 1 refused the stranger",
        |p| !p.connected,
    )
    .await;
    assert_eq!(seen_by_1.last_refusal.unwrap().by, RefusedBy::Us);
    assert!(!seen_by_1.approved);

    // Node 1 removes node 3 from its list: node 3 is told goodbye and disconnected.
    nodes[0]
        .klp
        .set_approved(vec![entry(&nodes[1])], true)
        .await
        .unwrap();
    wait_peer(
        &nodes[0].klp,
        &id_of(3),
        T,
        "node 3 disconnected from node 1",
        |p| !p.connected && !p.approved,
    )
    .await;
    let p = wait_peer(
        &nodes[2].klp,
        &id_of(1),
        T,
        "node 3 sees the revocation",
        |p| p.last_refusal.is_some(),
    )
    .await;
    let r = p.last_refusal.unwrap();
    assert_eq!(r.by, RefusedBy::Peer);
    assert!(
        ["revoked", "not_approved"].contains(&r.reason.as_str()),
        "{r:?}"
    );
    // Nodes 1 and 2 are still admitted to each other.
    assert!(admitted(&peer(&nodes[0].klp, &id_of(2)).await.unwrap()));
    // Node 3 keeps redialing node 1 with backoff and keeps being refused; it never gets back
    // in. Proof: node 1 refuses a redial of node 3 (a new event, after the revocation), and
    // node 3 is not admitted afterwards.
    let mut refusals = nodes[0].klp.subscribe();
    let id3 = id_of(3).to_string();
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match refusals.recv().await {
                Ok(KlpEvent::Refused { peer, by, .. }) if peer == id3 && by == RefusedBy::Us => {
                    break;
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("event stream ended: {e}"),
            }
        }
    })
    .await
    .expect("node 1 refuses node 3's redial");
    let p3 = peer(&nodes[0].klp, &id_of(3)).await.unwrap();
    assert!(
        !p3.connected || p3.state != HandshakeState::Admitted,
        "{p3:?}"
    );

    for n in nodes.iter().chain([&stranger]) {
        n.klp.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_path() {
    let a = start(11, "/ip4/127.0.0.1/udp/0/quic-v1").await;
    let b = start(12, "/ip4/127.0.0.1/udp/0/quic-v1").await;
    assert!(a.addr.contains("/quic-v1"), "{}", a.addr);
    let list = vec![entry(&a), entry(&b)];
    a.klp.set_approved(list.clone(), true).await.unwrap();
    b.klp.set_approved(list, true).await.unwrap();
    let p = wait_peer(&a.klp, &id_of(12), T, "QUIC admission", admitted).await;
    assert!(p.addrs.iter().any(|x| x.contains("quic-v1")));
    wait_peer(
        &b.klp,
        &id_of(11),
        T,
        "QUIC admission (other side)",
        admitted,
    )
    .await;
    a.klp.shutdown().await.unwrap();
    b.klp.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_federation_admits_any_valid_handshake() {
    let mut cfg = config(21, "/ip4/127.0.0.1/tcp/0");
    cfg.handshake_required = false;
    let open = start_with(cfg).await;
    let mut cfg = config(22, "/ip4/127.0.0.1/tcp/0");
    cfg.handshake_required = false;
    let newcomer = start_with(cfg).await;
    newcomer
        .klp
        .dial(&format!("{}/p2p/{}", open.addr, id_of(21)))
        .await
        .unwrap();
    let p = wait_peer(&open.klp, &id_of(22), T, "open admission", admitted).await;
    assert!(!p.approved, "admitted without being listed");
    wait_peer(
        &newcomer.klp,
        &id_of(21),
        T,
        "open admission (other side)",
        admitted,
    )
    .await;
    open.klp.shutdown().await.unwrap();
    newcomer.klp.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_peer_that_restarts_is_redialed() {
    let a = start(31, "/ip4/127.0.0.1/tcp/0").await;
    // b's port stays reserved for b across its restart.
    let (_held, port) = held_port();
    let b = start(32, &format!("/ip4/127.0.0.1/tcp/{port}")).await;
    let list = vec![entry(&a), entry(&b)];
    a.klp.set_approved(list.clone(), true).await.unwrap();
    b.klp.set_approved(list.clone(), true).await.unwrap();
    wait_peer(&a.klp, &id_of(32), T, "admission", admitted).await;
    // b goes away and comes back on the same address: a redials it (backoff starts at 1 s).
    let b_addr = b.addr.clone();
    b.klp.shutdown().await.unwrap();
    wait_peer(&a.klp, &id_of(32), T, "b gone", |p| !p.connected).await;
    // b's swarm has ended: its listener is closed.
    b.task.await.unwrap();
    let mut cfg = config(32, &b_addr);
    cfg.approved = list;
    let b2 = start_with(cfg).await;
    wait_peer(
        &a.klp,
        &id_of(32),
        Duration::from_secs(20),
        "b readmitted",
        admitted,
    )
    .await;
    a.klp.shutdown().await.unwrap();
    b2.klp.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_says_goodbye_and_the_peer_records_it_without_a_ban() {
    // a's port stays reserved for a across its restart.
    let (_held, port) = held_port();
    let a = start(33, &format!("/ip4/127.0.0.1/tcp/{port}")).await;
    let b = start(34, "/ip4/127.0.0.1/tcp/0").await;
    let list = vec![entry(&a), entry(&b)];
    a.klp.set_approved(list.clone(), true).await.unwrap();
    b.klp.set_approved(list.clone(), true).await.unwrap();
    wait_peer(&b.klp, &id_of(33), T, "admission", admitted).await;
    wait_peer(&a.klp, &id_of(34), T, "admission", admitted).await;
    let mut events = b.klp.subscribe();
    let a_addr = a.addr.clone();
    a.klp.shutdown().await.unwrap();
    // b is told why a leaves: Goodbye{shutdown}, said by the peer.
    let a_peer = id_of(33).to_string();
    let said = tokio::time::timeout(T, async {
        loop {
            match events.recv().await.unwrap() {
                KlpEvent::Refused { peer, reason, by } if peer == a_peer => {
                    return (reason, by);
                }
                _ => {}
            }
        }
    })
    .await
    .expect("b hears a's Goodbye");
    assert_eq!(said, ("shutdown".to_string(), RefusedBy::Peer));
    let seen = wait_peer(&b.klp, &id_of(33), T, "a gone", |p| !p.connected).await;
    assert_eq!(seen.state, HandshakeState::Disconnected);
    let refusal = seen.last_refusal.unwrap();
    assert_eq!(
        (refusal.reason.as_str(), refusal.by),
        ("shutdown", RefusedBy::Peer)
    );
    // Not a penalty: a comes back on the same address and b admits it again (a dials b, and
    // b keeps redialing a listed peer). a's swarm has ended: its listener is closed.
    a.task.await.unwrap();
    let mut cfg = config(33, &a_addr);
    cfg.approved = list;
    let a2 = start_with(cfg).await;
    wait_peer(
        &b.klp,
        &id_of(33),
        Duration::from_secs(20),
        "a readmitted",
        admitted,
    )
    .await;
    a2.klp.shutdown().await.unwrap();
    b.klp.shutdown().await.unwrap();
}
