//! The configuration at run time: the config directory and its snapshot history, the
//! configuration the node started with, the current one, and the one lock that serializes
//! every change (API apply, rollback and profile edits, SIGHUP reload, federation snapshot).
//! Every change is recorded in the history and as a node event before it becomes current.

use std::sync::Arc;

use kos_config::snapshot::{Action, FederationSource};
use kos_config::{ApplyOutcome, ConfigDir, LoadOptions, Loaded, SnapshotId, Store, StoreError};
use tokio::sync::{Mutex, MutexGuard, watch};
use tracing::{error, info, warn};

use super::EventRecorder;
use crate::metrics::Metrics;
use crate::telemetry::LogReloader;

/// A config change requested through the API.
#[derive(Debug)]
pub enum Change {
    Apply(String),
    Rollback(SnapshotId),
}

/// The node's configuration service. Cheap to clone.
#[derive(Clone)]
pub struct ConfigRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    dir: ConfigDir,
    snapshots: Store,
    load_opts: LoadOptions,
    boot: Arc<Loaded>,
    current: watch::Sender<Arc<Loaded>>,
    change_lock: Mutex<()>,
    log_reloader: Option<LogReloader>,
    metrics: Arc<Metrics>,
    events: EventRecorder,
}

impl std::fmt::Debug for ConfigRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigRuntime")
            .field("dir", &self.inner.dir)
            .field("current", &self.current().snapshot_id.short())
            .finish_non_exhaustive()
    }
}

impl ConfigRuntime {
    pub fn new(
        dir: ConfigDir,
        snapshots: Store,
        load_opts: LoadOptions,
        boot: Arc<Loaded>,
        log_reloader: Option<LogReloader>,
        metrics: Arc<Metrics>,
        events: EventRecorder,
    ) -> Self {
        let (current, _) = watch::channel(boot.clone());
        Self {
            inner: Arc::new(Inner {
                dir,
                snapshots,
                load_opts,
                boot,
                current,
                change_lock: Mutex::new(()),
                log_reloader,
                metrics,
                events,
            }),
        }
    }

    /// The effective configuration now.
    pub fn current(&self) -> Arc<Loaded> {
        self.inner.current.borrow().clone()
    }

    /// Follows the current configuration.
    pub fn watch(&self) -> watch::Receiver<Arc<Loaded>> {
        self.inner.current.subscribe()
    }

    /// The configuration the node started with (what restart-only sections still use).
    pub fn boot(&self) -> &Arc<Loaded> {
        &self.inner.boot
    }

    pub fn dir(&self) -> &ConfigDir {
        &self.inner.dir
    }

    pub fn load_opts(&self) -> &LoadOptions {
        &self.inner.load_opts
    }

    /// The snapshot history.
    pub fn snapshots(&self) -> &Store {
        &self.inner.snapshots
    }

    /// Holds the change lock: for edits of the config directory that are not a change of the
    /// active configuration themselves (profile files), so none interleaves with an apply.
    pub async fn lock(&self) -> MutexGuard<'_, ()> {
        self.inner.change_lock.lock().await
    }

    /// Top-level sections whose running value differs from the current configuration and
    /// that only take effect after a restart.
    pub fn pending_restart(&self) -> Vec<String> {
        let a: serde_json::Value =
            serde_json::from_str(&self.inner.boot.canonical).unwrap_or_default();
        let b: serde_json::Value =
            serde_json::from_str(&self.current().canonical).unwrap_or_default();
        kos_config::diff::split_sections(&kos_config::diff::diff_json(&a, &b)).1
    }

    /// Makes a new configuration the current one and applies its live sections.
    fn activate(&self, loaded: Loaded) {
        let old = self.current();
        if old.config.logging.level != loaded.config.logging.level
            && let Some(r) = &self.inner.log_reloader
            && let Err(e) = r(&loaded.config.logging.level.0)
        {
            warn!(error = %e, "cannot change the log level");
        }
        self.inner.metrics.set_snapshot(loaded.snapshot_id.as_str());
        info!(snapshot = %loaded.snapshot_id.short(), previous = %old.snapshot_id.short(), "configuration active");
        self.inner.current.send_replace(Arc::new(loaded));
    }

    /// Re-reads the configuration from disk (SIGHUP). An invalid configuration is reported
    /// and the running one kept. Returns whether a new configuration became current.
    pub async fn reload_from_disk(&self) -> anyhow::Result<bool> {
        let _guard = self.inner.change_lock.lock().await;
        let dir = self.inner.dir.clone();
        let opts = self.inner.load_opts.clone();
        let loaded = tokio::task::spawn_blocking(move || dir.load(&opts)).await?;
        let metrics = &self.inner.metrics;
        match loaded {
            Err(d) => {
                Metrics::outcome(&metrics.config_reloads, "invalid");
                for e in d.errors() {
                    error!(%e, "reload refused: invalid configuration; keeping the running one");
                }
                Ok(false)
            }
            Ok(l) => {
                if l.snapshot_id == self.current().snapshot_id {
                    Metrics::outcome(&metrics.config_reloads, "unchanged");
                    return Ok(false);
                }
                let store = self.inner.snapshots.clone();
                let l2 = l.clone();
                tokio::task::spawn_blocking(move || store.reconcile(&l2, "reload")).await??;
                self.inner
                    .events
                    .record(
                        "config_reloaded",
                        "reload",
                        Some(l.snapshot_id.as_str()),
                        serde_json::json!({}),
                    )
                    .await;
                Metrics::outcome(&metrics.config_reloads, "applied");
                self.activate(l);
                Ok(true)
            }
        }
    }

    /// Applies a document (or rolls back to a snapshot) through the snapshot store and
    /// activates it: the API's apply, rollback and profile update.
    pub async fn apply(
        &self,
        expected: Option<SnapshotId>,
        change: Change,
        actor: &str,
    ) -> Result<ApplyOutcome, StoreError> {
        let _guard = self.inner.change_lock.lock().await;
        let store = self.inner.snapshots.clone();
        let opts = self.inner.load_opts.clone();
        let actor_s = actor.to_string();
        let result = tokio::task::spawn_blocking(move || match change {
            Change::Apply(doc) => store.apply(&opts, expected.as_ref(), &doc, &actor_s),
            Change::Rollback(id) => store.rollback(&opts, &id, expected.as_ref(), &actor_s),
        })
        .await
        .unwrap_or_else(|e| {
            Err(StoreError::Io {
                context: "apply task".into(),
                source: std::io::Error::other(e.to_string()),
            })
        });
        let outcome_label = match &result {
            Ok(o) if o.unchanged => "unchanged",
            Ok(_) => "applied",
            Err(StoreError::Invalid(_)) => "invalid",
            Err(StoreError::Conflict { .. }) => "conflict",
            Err(_) => "error",
        };
        Metrics::outcome(&self.inner.metrics.config_applies, outcome_label);
        if let Ok(o) = &result
            && !o.unchanged
        {
            let kind = if o.entry.action == Action::Rollback {
                "config_rolled_back"
            } else {
                "config_applied"
            };
            self.inner
                .events
                .record(
                    kind,
                    actor,
                    Some(o.loaded.snapshot_id.as_str()),
                    serde_json::json!({
                        "previous": o.previous,
                        "live": o.live,
                        "restart_required": o.restart_required,
                        "changes": o.changes.len(),
                    }),
                )
                .await;
            self.activate(o.loaded.clone());
        }
        result
    }

    /// Applies a federation config snapshot for `scope`: validates it with the rest of the
    /// configuration, writes the scope file (the commit point), records it in the history
    /// (action `federation`) and makes it current. On any error nothing changes and the
    /// errors are returned as text (what a NACK carries).
    pub async fn apply_federation_snapshot(
        &self,
        scope: &str,
        tree: kos_config::tree::Node,
        file_content: String,
        source: FederationSource,
        actor: &str,
    ) -> Result<(), Vec<String>> {
        let rel = kos_config::federation::scope_file(scope);
        let _guard = self.inner.change_lock.lock().await;
        let inner = self.inner.clone();
        let (scope_s, actor_s) = (scope.to_string(), actor.to_string());
        let committed = tokio::task::spawn_blocking(move || {
            // Validate before writing anything.
            let candidate = inner
                .dir
                .load_with_federation(&inner.load_opts, &scope_s, tree)
                .map_err(StoreError::Invalid)?;
            // Recorded in the config history like an apply: the scope file is the commit point.
            inner
                .snapshots
                .apply_federation(&candidate, source, &actor_s, || {
                    write_scope_file(&inner.dir, &inner.load_opts, &rel, &file_content)
                })
        })
        .await
        .map_err(|e| vec![format!("apply task failed: {e}")])?
        .map_err(|e| match e {
            StoreError::Invalid(d) => d.errors().map(|e| e.to_string()).collect(),
            e => vec![e.to_string()],
        })?;
        match &committed.entry {
            Ok(Some(e)) => {
                info!(seq = e.seq, snapshot = %e.id.short(), scope, "federation snapshot recorded in the config history");
            }
            Ok(None) => {}
            Err(e) => {
                warn!(error = %e, scope, "federation snapshot applied but not recorded in the config history; the next start records it");
            }
        }
        self.activate(committed.loaded);
        Ok(())
    }
}

/// Writes a federation scope file and reloads from disk, so what runs is exactly what a
/// restart would load. If that fails (another file changed meanwhile), the previous scope
/// file is put back.
fn write_scope_file(
    dir: &ConfigDir,
    opts: &LoadOptions,
    rel: &str,
    content: &str,
) -> Result<Loaded, StoreError> {
    let path = dir.path(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| StoreError::Io {
            context: rel.to_string(),
            source,
        })?;
    }
    let previous = std::fs::read(&path).ok();
    kos_config::snapshot::atomic_write(&path, content.as_bytes(), None, &mut |_| {}).map_err(
        |source| StoreError::Io {
            context: format!("{rel}: cannot write"),
            source,
        },
    )?;
    dir.load(opts).map_err(|d| {
        let restored = match &previous {
            Some(old) => kos_config::snapshot::atomic_write(&path, old, None, &mut |_| {}),
            None => std::fs::remove_file(&path),
        };
        if let Err(e) = restored {
            warn!(file = %rel, error = %e, "cannot restore the previous federation snapshot");
        }
        StoreError::Invalid(d)
    })
}
