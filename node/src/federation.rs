//! KLP in the node: the swarm's settings from the configuration, and KLP events turned into
//! metrics and logs. (Keeping `klp/peers.list` and the federation log in effect is
//! [`crate::fedsync`]'s job; answering peers' API calls is the API's, `api::remote`.)

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use kos_config::Loaded;
use kos_klp::{DiscoveryConfig, Klp, KlpConfig, KlpEvent, ManifestInfo, PeerEntry};
use tracing::warn;

use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::runtime::Tasks;

/// The operator's approved peers in `klp/peers.list` (both sections are checked); a missing
/// file is an empty list. Errors name the file and line.
pub fn read_peers_list(dir: &Path) -> Result<Vec<PeerEntry>, Vec<String>> {
    crate::fedsync::read_peers_file(dir).map(|f| f.local)
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
        // What peers can call: the agents this node serves under /a2a/<agent>.
        services: crate::a2a::served_ids(c)
            .into_iter()
            .map(|id| (id, env!("CARGO_PKG_VERSION").to_string()))
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

/// Counts KLP events into the node's metrics and logs admissions and refusals (a service of
/// the node's [`Tasks`]).
pub fn record_events(tasks: &Tasks, klp: &Klp, metrics: Arc<Metrics>) {
    let mut rx = klp.subscribe();
    let token = tasks.token().clone();
    tasks.spawn_service("klp-events", async move {
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
