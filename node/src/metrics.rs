//! Prometheus metrics of the node, served at `/metrics` in the text exposition format.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    /// The matched route pattern (`/api/profiles/{id}`), never the raw path.
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InfoLabels {
    pub version: String,
    pub profile: String,
    pub node_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SnapshotLabels {
    pub snapshot_id: String,
}

/// Every metric of the node.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: Family<HttpLabels, Histogram>,
    pub config_applies: Family<OutcomeLabels, Counter>,
    pub config_reloads: Family<OutcomeLabels, Counter>,
    pub info: Family<InfoLabels, Gauge>,
    pub snapshot: Family<SnapshotLabels, Gauge>,
    pub start_time: Gauge,
    pub klp_connections: Gauge,
    pub klp_handshakes: Family<OutcomeLabels, Counter>,
    pub klp_discovery_events: Counter,
    pub peers_list_reloads: Family<OutcomeLabels, Counter>,
    pub auth_failures: Family<OutcomeLabels, Counter>,
    pub fedlog_ops: Family<OutcomeLabels, Counter>,
    pub fedlog_size: Gauge,
    /// A2A turns ended, by how (`completed`, `failed`, `canceled`, `input_required`, ...,
    /// `timed_out`, `stopped`).
    pub a2a_turns: Family<OutcomeLabels, Counter>,
    /// A2A turns running in this process.
    pub a2a_turns_running: Gauge,
    current_snapshot: Mutex<Option<String>>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kos");
        let http_requests = Family::<HttpLabels, Counter>::default();
        let http_duration = Family::<HttpLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let config_applies = Family::<OutcomeLabels, Counter>::default();
        let config_reloads = Family::<OutcomeLabels, Counter>::default();
        let info = Family::<InfoLabels, Gauge>::default();
        let snapshot = Family::<SnapshotLabels, Gauge>::default();
        let start_time = Gauge::default();
        let klp_connections = Gauge::default();
        let klp_handshakes = Family::<OutcomeLabels, Counter>::default();
        let klp_discovery_events = Counter::default();
        let peers_list_reloads = Family::<OutcomeLabels, Counter>::default();
        let auth_failures = Family::<OutcomeLabels, Counter>::default();
        let fedlog_ops = Family::<OutcomeLabels, Counter>::default();
        let fedlog_size = Gauge::default();
        let a2a_turns = Family::<OutcomeLabels, Counter>::default();
        let a2a_turns_running = Gauge::default();
        registry.register(
            "a2a_turns",
            "A2A agent turns ended, by outcome (the task state after the turn, timed_out, stopped)",
            a2a_turns.clone(),
        );
        registry.register(
            "a2a_turns_running",
            "A2A agent turns running in this process",
            a2a_turns_running.clone(),
        );
        registry.register(
            "fedlog_ops",
            "Federation ops received or created, by outcome (inserted, known, refused:<reason>)",
            fedlog_ops.clone(),
        );
        registry.register(
            "fedlog_size",
            "Ops in this node's federation log",
            fedlog_size.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests by method, route and status",
            http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            http_duration.clone(),
        );
        registry.register(
            "config_applies",
            "Config apply and rollback attempts by outcome",
            config_applies.clone(),
        );
        registry.register(
            "config_reloads",
            "Config reloads from disk (SIGHUP) by outcome",
            config_reloads.clone(),
        );
        registry.register(
            "node_info",
            "Build and identity of this node (always 1)",
            info.clone(),
        );
        registry.register(
            "config_snapshot",
            "The active config snapshot (always 1)",
            snapshot.clone(),
        );
        registry.register(
            "start_time_seconds",
            "Unix time the node started",
            start_time.clone(),
        );
        registry.register(
            "klp_connections",
            "Open KLP connections",
            klp_connections.clone(),
        );
        registry.register(
            "klp_handshakes",
            "MAP handshakes by outcome (admitted, refused_by_us:<reason>, refused_by_peer:<reason>)",
            klp_handshakes.clone(),
        );
        registry.register(
            "klp_discovery_events",
            "Peers found by DNS-SD",
            klp_discovery_events.clone(),
        );
        registry.register(
            "peers_list_reloads",
            "peers.list changes picked up, by outcome",
            peers_list_reloads.clone(),
        );
        registry.register(
            "auth_failures",
            "Requests refused for a missing or invalid token, by reason",
            auth_failures.clone(),
        );
        Self {
            registry,
            http_requests,
            http_duration,
            config_applies,
            config_reloads,
            info,
            snapshot,
            start_time,
            klp_connections,
            klp_handshakes,
            klp_discovery_events,
            peers_list_reloads,
            auth_failures,
            fedlog_ops,
            fedlog_size,
            a2a_turns,
            a2a_turns_running,
            current_snapshot: Mutex::new(None),
        }
    }

    /// Points the snapshot gauge at the active snapshot id.
    pub fn set_snapshot(&self, id: &str) {
        let mut cur = self
            .current_snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(old) = cur.take() {
            self.snapshot.remove(&SnapshotLabels { snapshot_id: old });
        }
        self.snapshot
            .get_or_create(&SnapshotLabels {
                snapshot_id: id.to_string(),
            })
            .set(1);
        *cur = Some(id.to_string());
    }

    pub fn outcome(family: &Family<OutcomeLabels, Counter>, outcome: &str) {
        family
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
