//! The node's shared services, each a cheap-to-clone handle with private state, handed by the
//! daemon (the composition root) to the API and the federation sync actor:
//!
//! - [`ConfigRuntime`]: the config directory, snapshot history, boot and current
//!   configuration, and the change lock; apply, rollback, reload, federation snapshots.
//! - [`EventRecorder`]: the event log and the event bus.
//! - [`Tasks`]: every task the node spawns, and readiness.
//!
//! This module depends only on the node's foundations (stores, bus, metrics, telemetry);
//! nothing here knows the API, KLP or the daemon.

mod config;
mod events;
mod tasks;

pub use config::{Change, ConfigRuntime};
pub use events::EventRecorder;
pub use tasks::Tasks;

/// What this build supports, from its cargo features.
pub fn capabilities() -> kos_config::Capabilities {
    kos_config::Capabilities {
        postgres: cfg!(feature = "postgres"),
        redis: cfg!(feature = "redis"),
        qdrant: cfg!(feature = "qdrant"),
        embedded_vector: true,
        api_auth: true,
    }
}
