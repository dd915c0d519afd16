//! A node's swarm alone, for interop checks with other libp2p implementations: listens on
//! QUIC v1 and TCP on loopback, prints its addresses (with `/p2p/<id>`), runs until killed.
//!
//! `RUST_LOG=info,libp2p_quic=trace,quinn=debug cargo run -p kos-klp --example klp_listen`
//!
//! A peer that never says MAP Hello is disconnected after the handshake deadline, here 60 s.
//! See docs/ARCHITECTURE.md, "QUIC interop with py-libp2p".

#![allow(clippy::expect_used)] // a manual tool: failing loudly is right

use std::time::Duration;

use kos_klp::{Klp, KlpConfig, ManifestInfo};

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let manifest = ManifestInfo {
        name: "klp-listen".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        profile: "federation_node".into(),
        services: vec![],
    };
    let listen = vec![
        "/ip4/127.0.0.1/udp/0/quic-v1".into(),
        "/ip4/127.0.0.1/tcp/0".into(),
    ];
    let mut cfg = KlpConfig::new([7u8; 32], listen, manifest);
    cfg.handshake_timeout = Duration::from_secs(60);
    let (klp, task) = Klp::start(cfg).await.expect("start");
    for a in klp.listen_addrs().await.expect("addrs") {
        println!("{a}/p2p/{}", klp.local_id());
    }
    task.await.expect("swarm task");
}
