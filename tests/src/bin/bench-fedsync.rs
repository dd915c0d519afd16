//! Federation sync benchmark: N full nodes in this process on 127.0.0.1 (each with its HTTP
//! API, SQLite database and KLP swarm; every node lists every other, an admin key on node
//! 0). Measures
//!
//! - **op propagation**: from `create` of an `ApprovePeer` op on node 0 until the approval
//!   is in the derived state of every node;
//! - **revocation → disconnect**: from `create` of a `RevokePeer` op for a member until every
//!   other node has closed its connections to it.
//!
//! `cargo run --release -p kos-tests --bin bench-fedsync -- 10 50` (node counts; default 10).
//! Prints a Markdown table for BENCHMARKS.md.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kos_config::ProfileKind;
use kos_map_protocol::fedlog::OpBody;
use kos_node::daemon::RunningNode;
use kos_tests::fed::Member;

const OPS: usize = 20;

/// A node's directory with KLP on loopback port 0 (the bound address is read back once it
/// runs; see `kos_tests::fed::start_listed`).
fn layout(root: &Path, i: usize, admin: &str) -> Result<Member> {
    let dir = root.join(format!("node-{i}"));
    kos_config::layout::init_layout(&dir, ProfileKind::FederationNode)?;
    let (identity, _) = kos_node::identity::Identity::load_or_create(&dir)?;
    let p2p = kos_tests::fed::KLP_LISTEN;
    std::fs::write(
        dir.join("system.env"),
        format!(
            "KOS_PROFILE=federation_node\nKOS_STORAGE__DATABASE=sqlite\nKOS_MESSAGING__BUS=memory\nKOS_STORAGE__CACHE=none\nKOS_NODE__NAME=node-{i}\n"
        ),
    )?;
    std::fs::write(
        dir.join("klp/klp_settings.yaml"),
        format!(
            "enabled: true\nhandshake_required: true\npeer_discovery: none\nlisten: [{p2p}]\n\
             handshake_timeout: 5s\nsync_interval: 5s\nadmins: [\"{admin}\"]\n"
        ),
    )?;
    Ok(Member {
        dir,
        id: identity.id().to_string(),
        label: None,
    })
}

fn pct(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort();
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e3;
    (p(0.5), p(0.95), p(1.0))
}

async fn run(n: usize) -> Result<()> {
    let root = tempfile::tempdir()?;
    let admin_dir = root.path().join("node-0");
    std::fs::create_dir_all(&admin_dir)?;
    let admin =
        kos_node::fedsync::create_admin_key(&admin_dir.join(kos_node::fedsync::ADMIN_KEY_FILE))?
            .to_string();
    let laid: Vec<Member> = (0..n)
        .map(|i| layout(root.path(), i, &admin))
        .collect::<Result<_>>()?;
    // Started one after another, each dialing the ones before it.
    let nodes: Vec<RunningNode> = kos_tests::fed::start_listed(&laid)
        .await?
        .into_iter()
        .map(|(node, _)| node)
        .collect();
    // Full admission first.
    let t = Instant::now();
    loop {
        let mut done = true;
        for node in &nodes {
            let peers = node.state.klp.as_ref().context("klp")?.peers().await?;
            let admitted = peers
                .iter()
                .filter(|p| p.connected && p.state == kos_klp::HandshakeState::Admitted)
                .count();
            if admitted < n - 1 {
                done = false;
                break;
            }
        }
        if done {
            break;
        }
        anyhow::ensure!(t.elapsed() < Duration::from_secs(120), "no full admission");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("{n} nodes admitted each other in {:?}", t.elapsed());
    // Let gossipsub build its mesh.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let fed0 = nodes[0].state.fed.clone().context("fed")?;
    let mut propagation = Vec::new();
    for _ in 0..OPS {
        let peer = kos_node::identity::Identity::generate()?.id();
        let mut watches: Vec<_> = nodes
            .iter()
            .map(|x| x.state.fed.as_ref().map(|f| f.watch()))
            .collect::<Option<_>>()
            .context("fed")?;
        let want = peer.to_string();
        let t = Instant::now();
        fed0.create(OpBody::ApprovePeer {
            peer,
            addrs: vec![],
            label: None,
        })
        .await?;
        for w in &mut watches {
            tokio::time::timeout(
                Duration::from_secs(30),
                w.wait_for(|v| v.approved.iter().any(|a| a.id == want)),
            )
            .await
            .context("approval did not reach every node")??;
        }
        propagation.push(t.elapsed());
    }

    // Revocation of members, one at a time.
    let mut disconnect = Vec::new();
    let mut gone: Vec<usize> = Vec::new();
    for victim in (1..n).rev().take(5.min(n - 1)) {
        let victim_id = nodes[victim].state.identity.id().to_string();
        let mut events: Vec<_> = nodes
            .iter()
            .enumerate()
            // Nodes revoked in earlier runs are cut off: they are not asked.
            .filter(|(i, _)| *i != victim && !gone.contains(i))
            .map(|(_, x)| x.state.klp.as_ref().map(|k| k.subscribe()))
            .collect::<Option<_>>()
            .context("klp")?;
        let t = Instant::now();
        fed0.create(OpBody::RevokePeer {
            peer: nodes[victim].state.identity.id(),
            reason: "bench".into(),
        })
        .await?;
        for rx in &mut events {
            tokio::time::timeout(Duration::from_secs(30), async {
                loop {
                    match rx.recv().await {
                        Ok(kos_klp::KlpEvent::Disconnected { peer }) if peer == victim_id => {
                            return Ok(());
                        }
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(e) => return Err(anyhow::anyhow!("{e}")),
                    }
                }
            })
            .await
            .context("the revoked node was not disconnected everywhere")??;
        }
        disconnect.push(t.elapsed());
        gone.push(victim);
    }
    let (p50, p95, max) = pct(propagation);
    println!(
        "| {n} | op reaches every node ({OPS} ops) | {p50:.1} ms | {p95:.1} ms | {max:.1} ms |"
    );
    let runs = disconnect.len();
    let (p50, p95, max) = pct(disconnect);
    println!(
        "| {n} | revocation → disconnected on every node ({runs} runs) | {p50:.1} ms | {p95:.1} ms | {max:.1} ms |"
    );
    for node in nodes {
        node.stop().await?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let counts: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().context("node counts are numbers"))
        .collect::<Result<_>>()?;
    let counts = if counts.is_empty() { vec![10] } else { counts };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!("| nodes | what | p50 | p95 | max |");
    println!("|---|---|---|---|---|");
    for n in counts {
        anyhow::ensure!(n >= 2, "at least 2 nodes");
        rt.block_on(run(n))?;
    }
    Ok(())
}
