//! What the API's handlers are given: the node's services, built by the daemon.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::a2a::host::AgentHost;
use crate::auth::Authenticator;
use crate::cache::Cache;
use crate::fedsync::FedSync;
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::runtime::{ConfigRuntime, EventRecorder, Tasks};
use crate::store::Db;
use crate::vector::VectorStore;

/// The services a request handler may use. Each is a handle with its own private state; the
/// daemon builds this once and the router shares it.
pub struct ApiState {
    /// Configuration: current, boot, history, apply/rollback/reload.
    pub config: ConfigRuntime,
    /// The event log and bus.
    pub events: EventRecorder,
    /// The node's tasks and readiness.
    pub tasks: Tasks,
    pub db: Db,
    pub identity: Identity,
    pub metrics: Arc<Metrics>,
    /// Verifies API callers' tokens.
    pub auth: Authenticator,
    /// The KLP swarm, when the profile enables it.
    pub klp: Option<kos_klp::Klp>,
    /// Federation sync (with KLP).
    pub fed: Option<FedSync>,
    /// The vector store (`storage.vector`), unless `none`.
    pub vectors: Option<Arc<dyn VectorStore>>,
    /// Best-effort cache (`storage.cache`).
    pub cache: Cache,
    /// The A2A agent host, when the configuration enables an agent.
    pub agents: Option<AgentHost>,
    pub started: Instant,
    pub started_at: SystemTime,
    /// The API's bound address.
    pub listen: SocketAddr,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

impl ApiState {
    /// Ready for traffic (see [`Tasks::is_ready`]).
    pub fn is_ready(&self) -> bool {
        self.tasks.is_ready()
    }
}
