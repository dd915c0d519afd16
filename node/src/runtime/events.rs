//! The node's event recorder: every node event goes to the event log (the database) first,
//! then, once recorded, onto the event bus (`messaging.bus`). A generation number moves with
//! every recorded event so caches of event reads can key on it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::{error, warn};

use crate::bus::{BusEvent, EventBus};
use crate::store::{Db, EventLog, NewEvent};

/// Records node events. Cheap to clone.
#[derive(Clone)]
pub struct EventRecorder {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    bus: Arc<dyn EventBus>,
    node_id: String,
    generation: AtomicU64,
}

impl std::fmt::Debug for EventRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRecorder")
            .field("bus", &self.inner.bus.kind())
            .finish_non_exhaustive()
    }
}

impl EventRecorder {
    pub fn new(db: Db, bus: Arc<dyn EventBus>, node_id: &str) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                bus,
                node_id: node_id.to_string(),
                // Random per process: cache entries of an earlier run never match.
                generation: AtomicU64::new(
                    getrandom::u64().unwrap_or_else(|_| crate::store::now_ms() as u64),
                ),
            }),
        }
    }

    /// Records a node event, then publishes it on the bus. A database failure is logged, not
    /// fatal (and nothing is published: the bus never carries what the log does not have).
    pub async fn record(
        &self,
        kind: &str,
        actor: &str,
        snapshot_id: Option<&str>,
        detail: serde_json::Value,
    ) {
        let e = NewEvent {
            kind: kind.into(),
            actor: actor.into(),
            snapshot_id: snapshot_id.map(str::to_string),
            detail,
        };
        match self.inner.db.append(&e).await {
            Ok(id) => {
                self.inner.generation.fetch_add(1, Ordering::SeqCst);
                let ev = BusEvent::recorded(&self.inner.node_id, id, &e);
                if let Err(err) = self.inner.bus.publish(ev) {
                    warn!(error = %err, kind, id, "node event not published on the bus (it is in the event log)");
                }
            }
            Err(err) => error!(error = %err, kind, "cannot record node event"),
        }
    }

    /// Records an event caused by an API request.
    pub async fn record_api(&self, kind: &str, detail: serde_json::Value) {
        self.record(kind, "api", None, detail).await;
    }

    /// Moves on every recorded event.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::SeqCst)
    }

    /// The event bus the events are published on.
    pub fn bus(&self) -> &Arc<dyn EventBus> {
        &self.inner.bus
    }
}
