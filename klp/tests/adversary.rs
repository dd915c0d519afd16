//! A peer that does not follow the protocol: a raw libp2p swarm speaking MAP by hand against
//! a real KLP node. Each bad message must be refused with the matching Goodbye reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use ed25519_dalek::SigningKey;
use futures::StreamExt;
use kos_klp::{HandshakeState, MAP_PROTOCOL, RefusedBy, WIRE_LIMIT, WireRequest, WireResponse};
use kos_map_protocol::{
    GoodbyeReason, Manifest, MapMessage, NodeId, ReplayGuard, VersionRange, open, seal,
};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, identity, noise, tcp, yamux};

const T: Duration = Duration::from_secs(15);

#[derive(NetworkBehaviour)]
struct Adv {
    rr: request_response::cbor::Behaviour<WireRequest, WireResponse>,
}

struct Adversary {
    swarm: Swarm<Adv>,
    key: SigningKey,
    victim: PeerId,
    victim_id: NodeId,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

impl Adversary {
    async fn connect(n: u8, victim: &Node) -> Self {
        let kp = identity::Keypair::ed25519_from_bytes(seed(n)).unwrap();
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(kp)
            .with_tokio()
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                yamux::Config::default,
            )
            .unwrap()
            .with_behaviour(|_| Adv {
                rr: request_response::Behaviour::with_codec(
                    request_response::cbor::codec::Codec::default()
                        .set_request_size_maximum(WIRE_LIMIT)
                        .set_response_size_maximum(WIRE_LIMIT),
                    [(StreamProtocol::new(MAP_PROTOCOL), ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(10)),
                ),
            })
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        let victim_id = id_of(victim.n);
        let victim_peer = PeerId::from_bytes(&victim_id.to_bytes()).unwrap();
        let addr: Multiaddr = format!("{}/p2p/{victim_peer}", victim.addr)
            .parse()
            .unwrap();
        swarm.dial(addr).unwrap();
        let deadline = tokio::time::Instant::now() + T;
        loop {
            match tokio::time::timeout_at(deadline, swarm.select_next_some())
                .await
                .expect("connect")
            {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == victim_peer => {
                    break;
                }
                SwarmEvent::OutgoingConnectionError { error, .. } => panic!("dial failed: {error}"),
                _ => {}
            }
        }
        Adversary {
            swarm,
            key: SigningKey::from_bytes(&seed(n)),
            victim: victim_peer,
            victim_id,
        }
    }

    fn hello(&self, versions: VersionRange) -> MapMessage {
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).unwrap();
        let id = NodeId::from_public_key(self.key.verifying_key());
        let mut m = Manifest::new(id, "mallory", "6.6.6", "federation_node", now_ms(), nonce);
        m.protocol_versions = versions;
        MapMessage::Hello(m)
    }

    /// Sends raw MAP bytes and returns the victim's answer, opened and verified.
    async fn ask(&mut self, bytes: Vec<u8>) -> MapMessage {
        self.swarm
            .behaviour_mut()
            .rr
            .send_request(&self.victim, WireRequest::Map(bytes));
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let ev = tokio::time::timeout_at(deadline, self.swarm.select_next_some())
                .await
                .expect("answer");
            if let SwarmEvent::Behaviour(AdvEvent::Rr(request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        response: WireResponse::Map(b),
                        ..
                    },
                ..
            })) = ev
            {
                return open(&b, &self.victim_id, now_ms(), &mut ReplayGuard::default())
                    .expect("the victim's answer verifies");
            }
            if let SwarmEvent::Behaviour(AdvEvent::Rr(request_response::Event::OutboundFailure {
                error,
                ..
            })) = ev
            {
                panic!("request failed: {error}");
            }
        }
    }

    /// Waits until the victim closes the connection.
    async fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.swarm.select_next_some()).await {
                Err(_) => return false,
                Ok(SwarmEvent::ConnectionClosed {
                    peer_id,
                    num_established: 0,
                    ..
                }) if peer_id == self.victim => return true,
                Ok(_) => {}
            }
        }
    }
}

fn goodbye_reason(m: &MapMessage) -> GoodbyeReason {
    match m {
        MapMessage::Goodbye { reason, .. } => *reason,
        other => panic!("expected Goodbye, got {other:?}"),
    }
}

async fn victim_saw(victim: &Node, adversary: u8, reason: &str) {
    let p = wait_peer(
        &victim.klp,
        &id_of(adversary),
        T,
        "victim records the refusal",
        |p| p.last_refusal.is_some(),
    )
    .await;
    let r = p.last_refusal.unwrap();
    assert_eq!((r.reason.as_str(), r.by), (reason, RefusedBy::Us));
    assert_ne!(p.state, HandshakeState::Admitted);
}

async fn victim(n: u8, approve: &[u8]) -> Node {
    let v = start(n, "/ip4/127.0.0.1/tcp/0").await;
    let list = approve
        .iter()
        .map(|a| kos_klp::PeerEntry {
            id: id_of(*a),
            addrs: vec![],
            label: None,
            line: 0,
        })
        .collect();
    v.klp.set_approved(list, true).await.unwrap();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_signature_is_refused() {
    let v = victim(100, &[101]).await;
    let mut adv = Adversary::connect(101, &v).await;
    let mut bytes = seal(&adv.hello(VersionRange::CURRENT), &adv.key).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    let answer = adv.ask(bytes).await;
    assert_eq!(goodbye_reason(&answer), GoodbyeReason::BadSignature);
    assert!(adv.closed_within(T).await, "the victim hangs up");
    victim_saw(&v, 101, "bad_signature").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_hello_is_refused() {
    let v = victim(110, &[111]).await;
    let mut adv = Adversary::connect(111, &v).await;
    let bytes = seal(&adv.hello(VersionRange::CURRENT), &adv.key).unwrap();
    let first = adv.ask(bytes.clone()).await;
    assert!(
        matches!(first, MapMessage::Welcome { version: 1, .. }),
        "{first:?}"
    );
    wait_peer(&v.klp, &id_of(111), T, "admitted once", |p| {
        p.state == HandshakeState::Admitted
    })
    .await;
    let second = adv.ask(bytes).await;
    assert_eq!(goodbye_reason(&second), GoodbyeReason::Replayed);
    victim_saw(&v, 111, "replayed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incompatible_version_is_refused() {
    let v = victim(120, &[121]).await;
    let mut adv = Adversary::connect(121, &v).await;
    let bytes = seal(&adv.hello(VersionRange::new(2, 3).unwrap()), &adv.key).unwrap();
    let answer = adv.ask(bytes).await;
    assert_eq!(goodbye_reason(&answer), GoodbyeReason::IncompatibleVersion);
    if let MapMessage::Goodbye { detail, .. } = &answer {
        assert!(!detail.is_empty(), "the Goodbye says why");
    }
    victim_saw(&v, 121, "incompatible_version").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_is_refused() {
    let v = victim(130, &[131]).await;
    let mut adv = Adversary::connect(131, &v).await;
    let answer = adv.ask(vec![0xa5; 100 * 1024]).await;
    assert_eq!(goodbye_reason(&answer), GoodbyeReason::TooLarge);
    victim_saw(&v, 131, "too_large").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_signed_by_someone_else_is_refused() {
    let v = victim(140, &[141]).await;
    let mut adv = Adversary::connect(141, &v).await;
    // A Hello from another (approved!) node's identity, relayed over the adversary's connection.
    let other = SigningKey::from_bytes(&seed(142));
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).unwrap();
    let m = Manifest::new(
        NodeId::from_public_key(other.verifying_key()),
        "x",
        "1",
        "edge",
        now_ms(),
        nonce,
    );
    let answer = adv.ask(seal(&MapMessage::Hello(m), &other).unwrap()).await;
    assert_eq!(goodbye_reason(&answer), GoodbyeReason::PeerMismatch);
    victim_saw(&v, 141, "peer_mismatch").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connection_is_closed_at_the_handshake_deadline() {
    let v = victim(150, &[]).await;
    let mut adv = Adversary::connect(151, &v).await;
    // The victim's handshake timeout is 2 s: it must hang up on a peer that never says Hello.
    assert!(
        adv.closed_within(Duration::from_secs(6)).await,
        "closed at the deadline"
    );
    victim_saw(&v, 151, "handshake_timeout").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_bad_peer_is_banned_for_a_while() {
    let v = victim(160, &[]).await;
    let mut adv = Adversary::connect(161, &v).await;
    let mut bytes = seal(&adv.hello(VersionRange::CURRENT), &adv.key).unwrap();
    bytes[10] ^= 0xff;
    let _ = adv.ask(bytes).await;
    assert!(adv.closed_within(T).await);
    // Reconnecting at once is refused at the connection gate (the ban outlives the test).
    let victim_peer = adv.victim;
    adv.swarm
        .dial(
            format!("{}/p2p/{victim_peer}", v.addr)
                .parse::<Multiaddr>()
                .unwrap(),
        )
        .unwrap();
    let deadline = tokio::time::Instant::now() + T;
    let mut refused = false;
    while let Ok(ev) = tokio::time::timeout_at(deadline, adv.swarm.select_next_some()).await {
        match ev {
            SwarmEvent::OutgoingConnectionError { .. } => {
                refused = true;
                break;
            }
            SwarmEvent::ConnectionClosed { .. } => {
                refused = true;
                break;
            }
            SwarmEvent::Behaviour(_) => panic!("a banned peer got a protocol exchange"),
            _ => {}
        }
    }
    assert!(refused, "the banned peer's new connection is closed");
}
