//! Helpers shared by the KLP tests: in-process nodes on 127.0.0.1.
#![allow(dead_code)]

use std::time::Duration;

use ed25519_dalek::SigningKey;
use kos_klp::{HandshakeState, Klp, KlpConfig, ManifestInfo, NodeId, PeerEntry, PeerInfo};

pub fn seed(n: u8) -> [u8; 32] {
    let mut s = [0u8; 32];
    s[0] = n;
    s[31] = 0x5a;
    s
}

pub fn id_of(n: u8) -> NodeId {
    NodeId::from_public_key(SigningKey::from_bytes(&seed(n)).verifying_key())
}

pub fn config(n: u8, listen: &str) -> KlpConfig {
    let manifest = ManifestInfo {
        name: format!("node-{n}"),
        version: "0.1.0".into(),
        profile: "federation_node".into(),
        services: vec![("translatorAgent".into(), "0.1.0".into())],
    };
    let mut c = KlpConfig::new(seed(n), vec![listen.to_string()], manifest);
    c.handshake_timeout = Duration::from_secs(2);
    c.network = "test".into();
    c
}

pub struct Node {
    pub n: u8,
    pub klp: Klp,
    pub addr: String,
    /// The swarm's event loop; it ends (and its listeners close) after `shutdown`.
    pub task: tokio::task::JoinHandle<()>,
}

/// A loopback port held by the test: bound with SO_REUSEADDR but not listening, so swarms
/// (which bind with SO_REUSEADDR too) can listen on it one after another while no other
/// socket is handed that port.
pub fn held_port() -> (socket2::Socket, u16) {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    let addr: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    s.bind(&addr.into()).unwrap();
    let port = s.local_addr().unwrap().as_socket().unwrap().port();
    (s, port)
}

pub async fn start(n: u8, listen: &str) -> Node {
    start_with(config(n, listen)).await
}

pub async fn start_with(cfg: KlpConfig) -> Node {
    let n = cfg
        .manifest
        .name
        .trim_start_matches("node-")
        .parse()
        .unwrap_or(0);
    let (klp, task) = Klp::start(cfg).await.expect("start");
    let addr = klp.listen_addrs().await.expect("addrs")[0].clone();
    Node { n, klp, addr, task }
}

pub fn entry(node: &Node) -> PeerEntry {
    PeerEntry {
        id: id_of(node.n),
        addrs: vec![node.addr.clone()],
        label: Some(format!("node-{}", node.n)),
        line: 0,
    }
}

pub async fn peer(klp: &Klp, id: &NodeId) -> Option<PeerInfo> {
    klp.peers()
        .await
        .expect("peers")
        .into_iter()
        .find(|p| p.id == id.to_string())
}

/// Polls until `f` holds for `klp`'s view of `id`, or panics after `within`.
pub async fn wait_peer(
    klp: &Klp,
    id: &NodeId,
    within: Duration,
    what: &str,
    f: impl Fn(&PeerInfo) -> bool,
) -> PeerInfo {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(p) = peer(klp, id).await
            && f(&p)
        {
            return p;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "{what}: not reached within {within:?}; last view: {:#?}",
                peer(klp, id).await
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn admitted(p: &PeerInfo) -> bool {
    p.state == HandshakeState::Admitted && p.connected
}
