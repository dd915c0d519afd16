//! The running node: start-up order, shared state, hot reload and graceful shutdown.
//!
//! Start-up validates everything before any port is bound: config directory (created with the
//! standalone profile on first run), identity key, effective configuration, snapshot history,
//! database and migrations. Only then is the API listener bound and `/readyz` turns 200.
//!
//! Shutdown is a future: cancelling the node's `CancellationToken` (Ctrl-C, SIGTERM, or a test)
//! flips `/readyz` to 503, stops accepting connections, lets in-flight requests finish for at
//! most `api.shutdown_grace`, stops KLP (which says `Goodbye{shutdown}` to admitted peers and
//! waits at most 1 s for their acknowledgements), records a `node_stopped` event and closes
//! the database.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use kos_config::snapshot::Action;
use kos_config::{ConfigDir, LoadOptions, Loaded, ProfileKind, Store};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::identity::Identity;
use crate::metrics::{InfoLabels, Metrics};
use crate::store::{Db, EventLog, Meta, NewEvent};
use crate::telemetry::LogReloader;

/// How to start a node.
#[derive(Clone)]
pub struct NodeOptions {
    /// The config directory (`$KOS_HOME`).
    pub dir: PathBuf,
    pub load: LoadOptions,
    /// Lay out the directory with the standalone profile if it has no profile yet.
    pub create_if_missing: bool,
    /// Overrides `api.listen` (tests bind `127.0.0.1:0`).
    pub listen_override: Option<SocketAddr>,
    pub log_reloader: Option<LogReloader>,
}

impl std::fmt::Debug for NodeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeOptions")
            .field("dir", &self.dir)
            .field("listen_override", &self.listen_override)
            .finish_non_exhaustive()
    }
}

impl NodeOptions {
    /// A node on its config directory alone: no process environment, no directory creation,
    /// the API on an ephemeral loopback port. What tests and embedders want.
    pub fn local(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            load: LoadOptions {
                capabilities: capabilities(),
                ..LoadOptions::default()
            },
            create_if_missing: false,
            listen_override: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            log_reloader: None,
        }
    }
}

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

/// State shared by every request handler and background task.
pub struct NodeState {
    pub dir: ConfigDir,
    pub snapshots: Store,
    pub db: Db,
    pub identity: Identity,
    pub load_opts: LoadOptions,
    /// The effective configuration; updated on apply, rollback and reload.
    pub current: watch::Sender<Arc<Loaded>>,
    /// The configuration the node started with (what restart-only sections still use).
    pub boot: Arc<Loaded>,
    pub metrics: Arc<Metrics>,
    /// The KLP swarm, when the profile enables it.
    pub klp: Option<kos_klp::Klp>,
    /// Federation sync (with KLP).
    pub fed: Option<crate::fedsync::FedSync>,
    /// The vector store (`storage.vector`), unless `none`.
    pub vectors: Option<Arc<dyn crate::vector::VectorStore>>,
    /// Verifies API callers' tokens.
    pub auth: crate::auth::Authenticator,
    pub started: Instant,
    pub started_at: SystemTime,
    pub listen: SocketAddr,
    ready: AtomicBool,
    log_reloader: Option<LogReloader>,
    /// Serializes config changes made through this node.
    pub change_lock: Mutex<()>,
    /// Node events, published after they are recorded (`messaging.bus`).
    pub bus: Arc<dyn crate::bus::EventBus>,
    /// Best-effort cache (`storage.cache`).
    pub cache: crate::cache::Cache,
    /// Changes whenever an event is recorded: cache keys of event reads include it.
    events_generation: AtomicU64,
}

impl std::fmt::Debug for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeState")
            .field("dir", &self.dir)
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

impl NodeState {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn config(&self) -> Arc<Loaded> {
        self.current.borrow().clone()
    }

    /// Starts random per process (cache entries of an earlier run never match) and moves on
    /// every recorded event.
    pub fn events_generation(&self) -> u64 {
        self.events_generation.load(Ordering::SeqCst)
    }

    /// Top-level sections whose running value differs from the current configuration and
    /// that only take effect after a restart.
    pub fn pending_restart(&self) -> Vec<String> {
        let a: serde_json::Value = serde_json::from_str(&self.boot.canonical).unwrap_or_default();
        let b: serde_json::Value =
            serde_json::from_str(&self.config().canonical).unwrap_or_default();
        kos_config::diff::split_sections(&kos_config::diff::diff_json(&a, &b)).1
    }

    /// Makes a new configuration the current one and applies its live sections.
    pub fn activate(&self, loaded: Loaded) {
        let old = self.config();
        if old.config.logging.level != loaded.config.logging.level
            && let Some(r) = &self.log_reloader
            && let Err(e) = r(&loaded.config.logging.level.0)
        {
            warn!(error = %e, "cannot change the log level");
        }
        self.metrics.set_snapshot(loaded.snapshot_id.as_str());
        info!(snapshot = %loaded.snapshot_id.short(), previous = %old.snapshot_id.short(), "configuration active");
        self.current.send_replace(Arc::new(loaded));
    }

    /// Records a node event, then publishes it on the bus; a database failure is logged, not
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
        match self.db.append(&e).await {
            Ok(id) => {
                self.events_generation.fetch_add(1, Ordering::SeqCst);
                let ev = crate::bus::BusEvent::recorded(&self.identity.id().to_string(), id, &e);
                if let Err(err) = self.bus.publish(ev) {
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

    /// Re-reads the configuration from disk (SIGHUP). An invalid configuration is reported
    /// and the running one kept.
    pub async fn reload_from_disk(self: &Arc<Self>) -> Result<bool> {
        let _guard = self.change_lock.lock().await;
        let dir = self.dir.clone();
        let opts = self.load_opts.clone();
        let loaded = tokio::task::spawn_blocking(move || dir.load(&opts)).await?;
        match loaded {
            Err(d) => {
                Metrics::outcome(&self.metrics.config_reloads, "invalid");
                for e in d.errors() {
                    error!(%e, "reload refused: invalid configuration; keeping the running one");
                }
                Ok(false)
            }
            Ok(l) => {
                if l.snapshot_id == self.config().snapshot_id {
                    Metrics::outcome(&self.metrics.config_reloads, "unchanged");
                    return Ok(false);
                }
                let store = self.snapshots.clone();
                let l2 = l.clone();
                tokio::task::spawn_blocking(move || store.reconcile(&l2, "reload")).await??;
                self.record(
                    "config_reloaded",
                    "reload",
                    Some(l.snapshot_id.as_str()),
                    serde_json::json!({}),
                )
                .await;
                Metrics::outcome(&self.metrics.config_reloads, "applied");
                self.activate(l);
                Ok(true)
            }
        }
    }
}

/// A started node.
pub struct RunningNode {
    pub addr: SocketAddr,
    pub state: Arc<NodeState>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<()>>,
}

impl std::fmt::Debug for RunningNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningNode")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl RunningNode {
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops the node and waits for it to finish.
    pub async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        self.task.await.context("node task panicked")?
    }

    /// Waits until the node stops (after its token is cancelled).
    pub async fn wait(self) -> Result<()> {
        self.task.await.context("node task panicked")?
    }
}

/// Prepares the config directory on first run: the standalone profile and an identity key.
pub fn ensure_home(dir: &std::path::Path) -> Result<bool> {
    let cd = ConfigDir::new(dir);
    let fresh = cd.list_profiles().map(|p| p.is_empty()).unwrap_or(true);
    if fresh {
        kos_config::layout::init_layout(dir, ProfileKind::Standalone)
            .with_context(|| format!("creating the config directory {}", dir.display()))?;
    }
    Ok(fresh)
}

/// Starts a node: validates, opens stores, binds the API, serves until the token is cancelled.
pub async fn start(opts: NodeOptions) -> Result<RunningNode> {
    start_with_shutdown(opts, CancellationToken::new()).await
}

/// [`start`] with the node's shutdown token given by the caller, so that a shutdown during
/// start-up (while waiting for the database) stops waiting.
pub async fn start_with_shutdown(
    opts: NodeOptions,
    shutdown: CancellationToken,
) -> Result<RunningNode> {
    install_crypto_provider();
    if opts.create_if_missing && ensure_home(&opts.dir)? {
        info!(dir = %opts.dir.display(), "created a standalone node configuration");
    }
    let (identity, created) =
        Identity::load_or_create(&opts.dir).context("loading the node identity")?;
    if created {
        info!(node_id = %identity.id(), "created a new node identity");
    }
    let dir = ConfigDir::new(&opts.dir);
    let loaded = dir
        .load(&opts.load)
        .map_err(|d| anyhow::anyhow!("invalid configuration:\n{d}"))?;
    for w in &loaded.warnings {
        warn!(%w, "configuration");
    }
    let cfg = &loaded.config;
    // peers.list is validated with the configuration, before anything is bound.
    let peers_file = if cfg.federation.klp.enabled {
        Some(
            crate::fedsync::read_peers_file(dir.root())
                .map_err(|e| anyhow::anyhow!("invalid peers list:\n{}", e.join("\n")))?,
        )
    } else {
        None
    };
    for id in cfg.federation.klp.remote_roles.peers.keys() {
        id.parse::<kos_klp::NodeId>().map_err(|e| {
            anyhow::anyhow!("federation.klp.remote_roles.peers: `{id}` is not a peer id: {e}")
        })?;
    }
    // Authentication and TLS material are checked before anything is bound too.
    let auth = crate::auth::Authenticator::new(cfg, &identity.id().to_string(), dir.root())
        .context("setting up authentication")?;
    let tls = match &cfg.api.tls {
        Some(t) => {
            let (cert, key) = (
                crate::store::resolve_location(&t.cert, dir.root()),
                crate::store::resolve_location(&t.key, dir.root()),
            );
            Some(
                axum_server::tls_rustls::RustlsConfig::from_pem_file(&cert, &key)
                    .await
                    .with_context(|| {
                        format!(
                            "loading the TLS certificate {} and key {}",
                            cert.display(),
                            key.display()
                        )
                    })?,
            )
        }
        None => None,
    };
    let listen = opts.listen_override.unwrap_or(cfg.api.listen);
    if !listen.ip().is_loopback() {
        if !auth.enabled() {
            bail!(
                "refusing to bind the API to {listen}: only loopback addresses are allowed until authentication is configured (auth.jwt or auth.oidc)"
            );
        }
        if tls.is_none() {
            warn!(%listen, "the API is plain HTTP on a non-loopback address: bearer tokens cross the network in clear text; set api.tls");
        }
    }
    if let Some(o) = auth.oidc() {
        let o = o.clone();
        tokio::spawn(async move { o.refresh().await });
    }
    let snapshots = Store::open(&dir).context("opening the snapshot store")?;
    if let Some(e) = snapshots
        .reconcile(&loaded, "node")
        .context("recording the configuration in the history")?
    {
        info!(seq = e.seq, action = ?e.action, snapshot = %e.id.short(), "configuration recorded in history");
    }
    let kind = cfg
        .storage
        .database
        .or(cfg.database.type_)
        .unwrap_or_default();
    let db = Db::connect(
        &cfg.database,
        kind,
        dir.root(),
        crate::backoff::Backoff::DATABASE_AT_START,
        &shutdown,
    )
    .await
    .context("opening the database")?;
    let vectors = open_vectors(cfg, dir.root()).await?;

    let metrics = Arc::new(Metrics::new());
    let mut fed_start = None;
    let klp = match peers_file {
        Some(peers) => {
            // The federation log (from the database) and peers.list decide whom the swarm
            // admits from the first connection on.
            let core = crate::fedsync::FedCore::open(cfg, &db, dir.root(), peers)
                .await
                .context("opening the federation log")?;
            let kc = crate::federation::klp_config(&loaded, &identity, core.effective_peers());
            let (klp, _task) = kos_klp::Klp::start(kc).await.context("starting KLP")?;
            let events = klp.subscribe();
            info!(node_id = %klp.local_id(), listen = ?klp.listen_addrs().await.unwrap_or_default(), "KLP started");
            crate::federation::record_events(&klp, metrics.clone(), shutdown.clone());
            fed_start = Some((core, events));
            Some(klp)
        }
        None => None,
    };
    let (fed, fed_parts) = match &klp {
        Some(_) => {
            let (h, p) = crate::fedsync::channel();
            (Some(h), Some(p))
        }
        None => (None, None),
    };

    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            if let Some(k) = &klp {
                let _ = k.shutdown().await;
            }
            return Err(e).with_context(|| format!("binding the API to {listen}"));
        }
    };
    let addr = listener.local_addr()?;
    let node_id = identity.id().to_string();
    let bus = crate::bus::from_config(cfg, &node_id).context("starting the event bus")?;
    let cache = crate::cache::Cache::from_config(cfg, &node_id).context("opening the cache")?;
    info!(
        bus = bus.kind(),
        cache = cache.kind(),
        "event bus and cache"
    );

    metrics
        .info
        .get_or_create(&InfoLabels {
            version: env!("CARGO_PKG_VERSION").into(),
            profile: cfg.profile.as_str().into(),
            node_id: identity.id().to_string(),
        })
        .set(1);
    metrics.set_snapshot(loaded.snapshot_id.as_str());
    let started_at = SystemTime::now();
    metrics.start_time.set(
        started_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
    );

    let grace = cfg.api.shutdown_grace.get();
    let boot = Arc::new(loaded);
    let (current, _) = watch::channel(boot.clone());
    let state = Arc::new(NodeState {
        dir,
        snapshots,
        db,
        identity,
        load_opts: opts.load.clone(),
        current,
        boot: boot.clone(),
        metrics,
        klp,
        fed,
        vectors,
        auth,
        started: Instant::now(),
        started_at,
        listen: addr,
        ready: AtomicBool::new(false),
        log_reloader: opts.log_reloader.clone(),
        change_lock: Mutex::new(()),
        bus,
        cache,
        events_generation: AtomicU64::new(
            getrandom::u64().unwrap_or_else(|_| crate::store::now_ms() as u64),
        ),
    });
    if state.db.get("first_started_ms").await?.is_none() {
        state
            .db
            .put("first_started_ms", &crate::store::now_ms().to_string())
            .await?;
    }
    state
        .record(
            "node_started",
            "node",
            Some(boot.snapshot_id.as_str()),
            serde_json::json!({"profile": boot.profile_id, "listen": addr.to_string(), "version": env!("CARGO_PKG_VERSION")}),
        )
        .await;

    if let (Some(k), Some((core, events)), Some(parts)) = (&state.klp, fed_start, fed_parts) {
        crate::fedsync::spawn(
            core,
            parts,
            state.clone(),
            k.clone(),
            events,
            shutdown.clone(),
        );
    }
    let app = crate::api::router(state.clone());
    if let Some(k) = &state.klp {
        crate::federation::serve_remote_calls(
            k,
            app.clone(),
            state.boot.config.federation.klp.remote_roles.clone(),
            shutdown.clone(),
        );
    }
    let token = shutdown.clone();
    let st = state.clone();
    let limits = crate::api::conn_limit::ConnLimits::new(
        state.boot.config.api.max_connections,
        state.boot.config.api.max_connections_per_ip,
        state.boot.config.api.request_timeout.get(),
    );
    let task = tokio::spawn(async move {
        let serve_token = token.clone();
        let tls_handle = axum_server::Handle::new();
        let h = tls_handle.clone();
        let mut server = tokio::spawn(async move {
            match tls {
                None => {
                    axum::serve(
                        crate::api::conn_limit::LimitedListener::new(listener, limits),
                        app.into_make_service(),
                    )
                    .with_graceful_shutdown(async move { serve_token.cancelled().await })
                    .await
                }
                Some(config) => {
                    let std_listener = listener.into_std()?;
                    let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(config)
                        .acceptor(crate::api::conn_limit::LimitAcceptor { limits });
                    axum_server::from_tcp(std_listener)?
                        .acceptor(acceptor)
                        .handle(h)
                        .serve(app.into_make_service_with_connect_info::<SocketAddr>())
                        .await
                }
            }
        });
        tokio::select! {
            biased;
            () = token.cancelled() => {
                st.ready.store(false, Ordering::SeqCst);
                info!(grace = ?grace, "shutting down: draining requests");
                tls_handle.graceful_shutdown(Some(grace));
                match tokio::time::timeout(grace, &mut server).await {
                    Ok(r) => r.context("API server task")?.context("API server")?,
                    Err(_) => {
                        warn!(grace = ?grace, "requests still running after the grace period; closing them");
                        server.abort();
                    }
                }
            }
            r = &mut server => {
                // The server ended without being asked to: an accept error.
                st.ready.store(false, Ordering::SeqCst);
                r.context("API server task")?.context("API server")?;
            }
        }
        if let Some(k) = &st.klp {
            let _ = k.shutdown().await;
        }
        st.record(
            "node_stopped",
            "node",
            Some(st.config().snapshot_id.as_str()),
            serde_json::json!({}),
        )
        .await;
        let _ = st
            .db
            .put("last_clean_stop_ms", &crate::store::now_ms().to_string())
            .await;
        st.bus.shutdown().await;
        if let Some(f) = &st.fed
            && !f.flushed(std::time::Duration::from_secs(5)).await
        {
            warn!("federation ops still being stored at shutdown; peers will resend them");
        }
        st.db.close().await;
        if let Some(v) = &st.vectors
            && let Err(e) = v.close().await
        {
            warn!(error = %e, "closing the vector store");
        }
        info!("stopped");
        Ok(())
    });
    state.ready.store(true, Ordering::SeqCst);
    info!(node_id = %state.identity.id(), api = %addr, profile = %boot.profile_id, snapshot = %boot.snapshot_id.short(), "node ready");
    Ok(RunningNode {
        addr,
        state,
        shutdown,
        task,
    })
}

/// Opens the configured vector store. The embedded engine must open (its file is local); a
/// Qdrant server that does not answer yet is only a warning: each call reports it, and the
/// client reconnects by itself.
async fn open_vectors(
    cfg: &kos_config::model::Config,
    dir: &std::path::Path,
) -> Result<Option<Arc<dyn crate::vector::VectorStore>>> {
    let store = crate::vector::open(cfg, dir)
        .await
        .context("opening the vector store")?;
    if let Some(s) = &store {
        match s.health().await {
            Ok(h) => info!(backend = s.backend(), status = %h, "vector store ready"),
            Err(e) if s.backend() == "embedded" => {
                return Err(e).context("checking the embedded vector store");
            }
            Err(e) => warn!(backend = s.backend(), error = %e, "vector store not reachable yet"),
        }
    }
    Ok(store)
}

/// Runs a node until Ctrl-C or SIGTERM; SIGHUP reloads the configuration from disk.
pub async fn run(opts: NodeOptions) -> Result<()> {
    // Ctrl-C or SIGTERM during start-up (e.g. while waiting for PostgreSQL) stops it.
    let early = CancellationToken::new();
    let watcher = {
        let t = early.clone();
        tokio::spawn(async move {
            #[cfg(unix)]
            if let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                info!("stop requested during start-up");
                t.cancel();
                return;
            }
            let _ = tokio::signal::ctrl_c().await;
            info!("stop requested during start-up");
            t.cancel();
        })
    };
    let node = start_with_shutdown(opts, early).await;
    watcher.abort();
    let node = node?;
    let token = node.shutdown_token();
    let state = node.state.clone();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let t = token.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => { info!("Ctrl-C received"); break; }
                    _ = term.recv() => { info!("SIGTERM received"); break; }
                    _ = hup.recv() => {
                        info!("SIGHUP received: reloading the configuration");
                        if let Err(e) = state.reload_from_disk().await {
                            error!(error = %e, "reload failed");
                        }
                    }
                    () = t.cancelled() => return,
                }
            }
            t.cancel();
        });
    }
    #[cfg(not(unix))]
    {
        let t = token.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            t.cancel();
        });
    }
    node.wait().await
}

/// Applies a document through the snapshot store and activates it. Shared by the API's
/// apply, rollback and profile update.
pub async fn apply_document(
    state: &Arc<NodeState>,
    expected: Option<kos_config::SnapshotId>,
    change: Change,
    actor: &str,
) -> std::result::Result<kos_config::ApplyOutcome, kos_config::StoreError> {
    let _guard = state.change_lock.lock().await;
    let store = state.snapshots.clone();
    let opts = state.load_opts.clone();
    let actor_s = actor.to_string();
    let result = tokio::task::spawn_blocking(move || match change {
        Change::Apply(doc) => store.apply(&opts, expected.as_ref(), &doc, &actor_s),
        Change::Rollback(id) => store.rollback(&opts, &id, expected.as_ref(), &actor_s),
    })
    .await
    .unwrap_or_else(|e| {
        Err(kos_config::StoreError::Io {
            context: "apply task".into(),
            source: std::io::Error::other(e.to_string()),
        })
    });
    let outcome_label = match &result {
        Ok(o) if o.unchanged => "unchanged",
        Ok(_) => "applied",
        Err(kos_config::StoreError::Invalid(_)) => "invalid",
        Err(kos_config::StoreError::Conflict { .. }) => "conflict",
        Err(_) => "error",
    };
    Metrics::outcome(&state.metrics.config_applies, outcome_label);
    if let Ok(o) = &result
        && !o.unchanged
    {
        let kind = if o.entry.action == Action::Rollback {
            "config_rolled_back"
        } else {
            "config_applied"
        };
        state
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
        state.activate(o.loaded.clone());
    }
    result
}

/// A config change requested through the API.
#[derive(Debug)]
pub enum Change {
    Apply(String),
    Rollback(kos_config::SnapshotId),
}

/// Installs the process-wide rustls crypto provider (aws-lc-rs). Both aws-lc-rs and ring are
/// in the dependency tree, so rustls cannot pick one itself: without this the first TLS use
/// panics. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
