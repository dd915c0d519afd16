//! KLP in the node: starting the swarm from the configuration, keeping `klp/peers.list` in
//! effect while the node runs, and turning KLP events into metrics and logs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Result;
use kos_config::Loaded;
use kos_config::load::PEERS_LIST;
use kos_klp::{DiscoveryConfig, Klp, KlpConfig, KlpEvent, ManifestInfo, PeerEntry};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::identity::Identity;
use crate::metrics::Metrics;

/// Reads and parses `klp/peers.list`; a missing file is an empty list. Errors name the file
/// and line.
pub fn read_peers_list(dir: &Path) -> Result<Vec<PeerEntry>, Vec<String>> {
    let path = dir.join(PEERS_LIST);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(vec![format!("{PEERS_LIST}: cannot read: {e}")]),
    };
    kos_klp::parse_peers_list(&text).map_err(|errs| {
        errs.iter()
            .map(|e| format!("{PEERS_LIST}:{}: {}", e.line, e.message))
            .collect()
    })
}

/// The swarm settings for a loaded configuration.
pub fn klp_config(loaded: &Loaded, identity: &Identity, approved: Vec<PeerEntry>) -> KlpConfig {
    let c = &loaded.config;
    let k = &c.federation.klp;
    let name = c
        .node
        .name
        .clone()
        .unwrap_or_else(|| format!("kos-{}", &identity.id().to_string()[..16]));
    let manifest = ManifestInfo {
        name,
        version: env!("CARGO_PKG_VERSION").into(),
        profile: c.profile.as_str().into(),
        services: c
            .services
            .iter()
            .map(|s| {
                (
                    s.as_str().to_string(),
                    env!("CARGO_PKG_VERSION").to_string(),
                )
            })
            .collect(),
    };
    let mut cfg = KlpConfig::new(
        identity.signing_key().to_bytes(),
        k.listen.clone(),
        manifest,
    );
    cfg.bootstrap = k.bootstrap.clone();
    cfg.approved = approved;
    cfg.handshake_required = k.handshake_required;
    cfg.network = k.network.clone();
    cfg.discovery = DiscoveryConfig {
        enabled: k.peer_discovery == kos_config::model::PeerDiscovery::DnsSd,
        interfaces: k.discovery_interfaces.clone(),
    };
    cfg.handshake_timeout = k.handshake_timeout.get();
    cfg.max_connections = k.max_connections;
    cfg
}

fn fingerprint(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Keeps peers.list in effect: polls it (mtime and size) and, when it changed and parses,
/// hands the new list to the swarm, which disconnects removed peers and dials new ones. An
/// invalid file is reported line by line and the running list kept.
pub fn watch_peers_list(
    klp: Klp,
    dir: PathBuf,
    handshake_required: bool,
    metrics: Arc<Metrics>,
    token: CancellationToken,
) {
    tokio::spawn(async move {
        let path = dir.join(PEERS_LIST);
        let mut last = fingerprint(&path);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = fingerprint(&path);
            if now == last {
                continue;
            }
            last = now;
            let d = dir.clone();
            let parsed = match tokio::task::spawn_blocking(move || read_peers_list(&d)).await {
                Ok(p) => p,
                Err(e) => {
                    error!(error = %e, "peers.list reader failed");
                    continue;
                }
            };
            match parsed {
                Ok(list) => {
                    info!(peers = list.len(), "peers.list changed: applying");
                    Metrics::outcome(&metrics.peers_list_reloads, "applied");
                    if klp.set_approved(list, handshake_required).await.is_err() {
                        return;
                    }
                }
                Err(errors) => {
                    Metrics::outcome(&metrics.peers_list_reloads, "invalid");
                    for e in errors {
                        warn!(error = %e, "peers.list is invalid; keeping the running list");
                    }
                }
            }
        }
    });
}

/// Counts KLP events into the node's metrics and logs admissions and refusals.
pub fn record_events(klp: &Klp, metrics: Arc<Metrics>, token: CancellationToken) {
    let mut rx = klp.subscribe();
    tokio::spawn(async move {
        loop {
            let ev = tokio::select! {
                () = token.cancelled() => return,
                ev = rx.recv() => ev,
            };
            match ev {
                Ok(
                    KlpEvent::ConnectionOpened { total, .. }
                    | KlpEvent::ConnectionClosed { total, .. },
                ) => {
                    metrics.klp_connections.set(total as i64);
                }
                Ok(KlpEvent::Admitted { .. }) => {
                    Metrics::outcome(&metrics.klp_handshakes, "admitted")
                }
                Ok(KlpEvent::Refused { reason, by, .. }) => {
                    let by = match by {
                        kos_klp::RefusedBy::Us => "refused_by_us",
                        kos_klp::RefusedBy::Peer => "refused_by_peer",
                    };
                    metrics
                        .klp_handshakes
                        .get_or_create(&crate::metrics::OutcomeLabels {
                            outcome: format!("{by}:{reason}"),
                        })
                        .inc();
                }
                Ok(KlpEvent::Discovered { .. }) => {
                    metrics.klp_discovery_events.inc();
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    warn!(missed = n, "KLP events dropped")
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}
