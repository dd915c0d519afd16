//! The composition root: start-up order, wiring of the services, signals and graceful
//! shutdown. Nothing in this crate imports it but the command line (`cli`).
//!
//! Start-up validates everything before any port is bound: config directory (created with the
//! standalone profile on first run), identity key, effective configuration, `peers.list`,
//! authentication and TLS material ([`check`]); then the stores open (snapshot history,
//! database and migrations, vector store), KLP starts when enabled, the API listener is
//! bound, the run file (`run/node.json`) is written and `/readyz` turns 200. A failure after
//! KLP started stops KLP, the tasks and the stores again.
//!
//! Shutdown is a future: cancelling the node's `CancellationToken` (Ctrl-C, SIGTERM, or a test)
//! flips `/readyz` to 503, stops accepting connections, lets in-flight requests finish for at
//! most `api.shutdown_grace`, stops KLP (which says `Goodbye{shutdown}` to admitted peers and
//! waits at most 1 s for their acknowledgements), joins every task of the node's tracker,
//! records a `node_stopped` event, stops the bus and closes the database, last.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use axum_server::tls_rustls::RustlsConfig;
use kos_config::{ConfigDir, LoadOptions, Loaded, ProfileKind, Store};
use kos_klp::{Klp, KlpEvent, PeersFile};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::api::ApiState;
use crate::auth::Authenticator;
use crate::fedsync::{FedCore, FedParts, FedSync, NodeServices};
use crate::identity::Identity;
use crate::metrics::{InfoLabels, Metrics};
use crate::runfile::{self, RunInfo};
use crate::runtime::{ConfigRuntime, EventRecorder, Tasks};
use crate::store::{Db, Meta};
use crate::telemetry::LogReloader;
use crate::vector::VectorStore;

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

/// What this build supports (see [`crate::runtime::capabilities`]).
pub use crate::runtime::capabilities;

/// A started node.
pub struct RunningNode {
    pub addr: SocketAddr,
    /// The services the API is given (configuration, events, KLP, federation, stores).
    pub state: Arc<ApiState>,
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

    /// The node's tasks (and readiness).
    pub fn tasks(&self) -> &Tasks {
        &self.state.tasks
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

/// How long shutdown waits for the node's tasks after KLP has stopped.
const TASKS_STOP_LIMIT: Duration = Duration::from_secs(5);

/// What start-up has checked before anything is bound or opened.
struct Checked {
    identity: Identity,
    dir: ConfigDir,
    loaded: Loaded,
    peers_file: Option<PeersFile>,
    auth: Authenticator,
    tls: Option<RustlsConfig>,
    listen: SocketAddr,
}

/// The stores, opened in this order and closed in the reverse one.
struct Stores {
    snapshots: Store,
    db: Db,
    vectors: Option<Arc<dyn VectorStore>>,
}

/// KLP and federation sync, when the profile enables KLP.
struct Federation {
    klp: Klp,
    core: FedCore,
    events: broadcast::Receiver<KlpEvent>,
    handle: FedSync,
    parts: FedParts,
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
    let mut checked = check(&opts).await?;
    let tasks = Tasks::new(shutdown.clone());
    let stores = open_stores(&checked, &shutdown).await?;
    let metrics = Arc::new(Metrics::new());
    let fed = match checked.peers_file.take() {
        Some(peers) => match start_klp(&checked, &stores.db, peers, &tasks, &metrics).await {
            Ok(f) => Some(f),
            Err(e) => {
                close_stores(&stores.db, stores.vectors.as_ref()).await;
                return Err(e);
            }
        },
        None => None,
    };
    // From here on, a failure stops what was started: KLP, the tasks, the stores.
    let klp = fed.as_ref().map(|f| f.klp.clone());
    let (db, vectors) = (stores.db.clone(), stores.vectors.clone());
    match serve(opts, checked, stores, fed, metrics, tasks.clone()).await {
        Ok(node) => Ok(node),
        Err(e) => {
            // Shutting down: the swarm's end below is not a failure.
            tasks.shutdown_token().cancel();
            if let Some(k) = klp {
                let _ = k.shutdown().await;
            }
            tasks.close_and_wait(TASKS_STOP_LIMIT).await;
            close_stores(&db, vectors.as_ref()).await;
            Err(e)
        }
    }
}
/// Everything that can be checked before a port is bound or a store opened: identity,
/// configuration, `peers.list`, authentication, TLS material, the listen policy.
async fn check(opts: &NodeOptions) -> Result<Checked> {
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
    let auth = Authenticator::new(cfg, &identity.id().to_string(), dir.root())
        .context("setting up authentication")?;
    let tls = match &cfg.api.tls {
        Some(t) => {
            let (cert, key) = (
                crate::store::resolve_location(&t.cert, dir.root()),
                crate::store::resolve_location(&t.key, dir.root()),
            );
            Some(
                RustlsConfig::from_pem_file(&cert, &key)
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
    Ok(Checked {
        identity,
        dir,
        loaded,
        peers_file,
        auth,
        tls,
        listen,
    })
}

/// The snapshot history (recording the configuration), the database, the vector store.
async fn open_stores(c: &Checked, shutdown: &CancellationToken) -> Result<Stores> {
    let snapshots = Store::open(&c.dir).context("opening the snapshot store")?;
    if let Some(e) = snapshots
        .reconcile(&c.loaded, "node")
        .context("recording the configuration in the history")?
    {
        info!(seq = e.seq, action = ?e.action, snapshot = %e.id.short(), "configuration recorded in history");
    }
    let cfg = &c.loaded.config;
    let kind = cfg
        .storage
        .database
        .or(cfg.database.type_)
        .unwrap_or_default();
    let db = Db::connect(
        &cfg.database,
        kind,
        c.dir.root(),
        crate::backoff::Backoff::DATABASE_AT_START,
        shutdown,
    )
    .await
    .context("opening the database")?;
    match open_vectors(cfg, c.dir.root()).await {
        Ok(vectors) => Ok(Stores {
            snapshots,
            db,
            vectors,
        }),
        Err(e) => {
            db.close().await;
            Err(e)
        }
    }
}

/// Starts KLP: the federation log (from the database) and `peers.list` decide whom the swarm
/// admits from the first connection on. The swarm's event loop becomes a service of `tasks`.
async fn start_klp(
    c: &Checked,
    db: &Db,
    peers: PeersFile,
    tasks: &Tasks,
    metrics: &Arc<Metrics>,
) -> Result<Federation> {
    let core = FedCore::open(&c.loaded.config, db, c.dir.root(), peers)
        .await
        .context("opening the federation log")?;
    let kc = crate::federation::klp_config(&c.loaded, &c.identity, core.effective_peers());
    let (klp, swarm) = Klp::start(kc).await.context("starting KLP")?;
    tasks.spawn_service("klp-swarm", async move {
        if let Err(e) = swarm.await
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    });
    // Subscribed before anything else runs, so the sync actor misses no admission.
    let events = klp.subscribe();
    info!(node_id = %klp.local_id(), listen = ?klp.listen_addrs().await.unwrap_or_default(), "KLP started");
    crate::federation::record_events(tasks, &klp, metrics.clone());
    let (handle, parts) = crate::fedsync::channel();
    Ok(Federation {
        klp,
        core,
        events,
        handle,
        parts,
    })
}

/// Binds the API, builds the services, starts the sync actor and the servers, and spawns the
/// node's supervising task (which runs the shutdown).
async fn serve(
    opts: NodeOptions,
    c: Checked,
    stores: Stores,
    fed: Option<Federation>,
    metrics: Arc<Metrics>,
    tasks: Tasks,
) -> Result<RunningNode> {
    let listener = tokio::net::TcpListener::bind(c.listen)
        .await
        .with_context(|| format!("binding the API to {}", c.listen))?;
    let addr = listener.local_addr()?;
    if stores.db.get("first_started_ms").await?.is_none() {
        stores
            .db
            .put("first_started_ms", &crate::store::now_ms().to_string())
            .await?;
    }
    let cfg = &c.loaded.config;
    let node_id = c.identity.id().to_string();
    let cache = crate::cache::Cache::from_config(cfg, &node_id).context("opening the cache")?;
    // The bus starts tasks of its own: nothing below can fail before the node runs, so
    // `supervise` always stops them.
    let bus = crate::bus::from_config(cfg, &node_id).context("starting the event bus")?;
    info!(
        bus = bus.kind(),
        cache = cache.kind(),
        "event bus and cache"
    );
    let started_at = SystemTime::now();
    set_info_metrics(&metrics, &c, started_at);
    if let Some(o) = c.auth.oidc() {
        let (o, token) = (o.clone(), tasks.token().clone());
        tasks.spawn("oidc-first-fetch", async move {
            tokio::select! {
                () = o.refresh() => {}
                () = token.cancelled() => {}
            }
        });
    }
    let events = EventRecorder::new(stores.db.clone(), bus, &node_id);
    let agents = crate::a2a::build(
        cfg,
        &stores.db,
        events.bus().clone(),
        &node_id,
        &tasks,
        metrics.clone(),
    )
    .context("starting the agent runtime")?;
    let boot = Arc::new(c.loaded);
    let config = ConfigRuntime::new(
        c.dir,
        stores.snapshots,
        opts.load.clone(),
        boot.clone(),
        opts.log_reloader.clone(),
        metrics.clone(),
        events.clone(),
    );
    let state = Arc::new(ApiState {
        config,
        events,
        tasks: tasks.clone(),
        db: stores.db,
        identity: c.identity,
        metrics,
        auth: c.auth,
        klp: fed.as_ref().map(|f| f.klp.clone()),
        fed: fed.as_ref().map(|f| f.handle.clone()),
        vectors: stores.vectors,
        cache,
        agents,
        started: Instant::now(),
        started_at,
        listen: addr,
    });
    state
        .events
        .record(
            "node_started",
            "node",
            Some(boot.snapshot_id.as_str()),
            serde_json::json!({"profile": boot.profile_id, "listen": addr.to_string(), "version": env!("CARGO_PKG_VERSION")}),
        )
        .await;
    let app = crate::api::router(state.clone());
    if let Some(f) = fed {
        let services = NodeServices {
            config: state.config.clone(),
            events: state.events.clone(),
            tasks: tasks.clone(),
            db: state.db.clone(),
            metrics: state.metrics.clone(),
        };
        crate::api::remote::serve(
            &tasks,
            &f.klp,
            app.clone(),
            boot.config.federation.klp.remote_roles.clone(),
        );
        crate::fedsync::spawn(f.core, f.parts, services, f.klp, f.events);
    }
    let server = ApiServer::start(listener, c.tls, app, &state);
    let run = RunInfo {
        pid: std::process::id(),
        node_id: node_id.clone(),
        api: addr,
        tls: boot.config.api.tls.is_some(),
        klp: match &state.klp {
            Some(k) => k
                .listen_addrs()
                .await
                .unwrap_or_default()
                .into_iter()
                .map(|a| format!("{a}/p2p/{node_id}"))
                .collect(),
            None => Vec::new(),
        },
        started_ms: crate::store::now_ms(),
    };
    let home = state.config.dir().root().to_path_buf();
    if let Err(e) = runfile::write(&home, &run) {
        warn!(file = %runfile::path(&home).display(), error = %e, "cannot write the run file; `kos` commands use api.listen");
    }
    let task = tokio::spawn(supervise(state.clone(), server, home));
    tasks.set_serving(true);
    info!(node_id = %state.identity.id(), api = %addr, profile = %boot.profile_id, snapshot = %boot.snapshot_id.short(), "node ready");
    Ok(RunningNode {
        addr,
        state,
        shutdown: tasks.shutdown_token().clone(),
        task,
    })
}

fn set_info_metrics(metrics: &Metrics, c: &Checked, started_at: SystemTime) {
    metrics
        .info
        .get_or_create(&InfoLabels {
            version: env!("CARGO_PKG_VERSION").into(),
            profile: c.loaded.config.profile.as_str().into(),
            node_id: c.identity.id().to_string(),
        })
        .set(1);
    metrics.set_snapshot(c.loaded.snapshot_id.as_str());
    metrics.start_time.set(
        started_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
    );
}

/// The API server: plain HTTP through the connection limiter, or TLS.
struct ApiServer {
    task: JoinHandle<std::io::Result<()>>,
    tls_handle: axum_server::Handle<SocketAddr>,
    grace: Duration,
}

impl ApiServer {
    fn start(
        listener: tokio::net::TcpListener,
        tls: Option<RustlsConfig>,
        app: axum::Router,
        state: &ApiState,
    ) -> Self {
        let api = &state.config.boot().config.api;
        let limits = crate::api::conn_limit::ConnLimits::new(
            api.max_connections,
            api.max_connections_per_ip,
            api.request_timeout.get(),
        );
        let token = state.tasks.shutdown_token().clone();
        let tls_handle = axum_server::Handle::new();
        let h = tls_handle.clone();
        let task = tokio::spawn(async move {
            match tls {
                None => {
                    axum::serve(
                        crate::api::conn_limit::LimitedListener::new(listener, limits),
                        app.into_make_service(),
                    )
                    .with_graceful_shutdown(async move { token.cancelled().await })
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
        Self {
            task,
            tls_handle,
            grace: api.shutdown_grace.get(),
        }
    }

    /// Lets in-flight requests finish for at most the grace period, then closes them.
    async fn drain(mut self) -> Result<()> {
        info!(grace = ?self.grace, "shutting down: draining requests");
        self.tls_handle.graceful_shutdown(Some(self.grace));
        match tokio::time::timeout(self.grace, &mut self.task).await {
            Ok(r) => r.context("API server task")?.context("API server"),
            Err(_) => {
                warn!(grace = ?self.grace, "requests still running after the grace period; closing them");
                self.task.abort();
                Ok(())
            }
        }
    }
}

/// The node's own task: waits for shutdown (or the API server's end), then stops everything
/// in order. See "Shutdown order" in docs/ARCHITECTURE.md.
async fn supervise(st: Arc<ApiState>, mut server: ApiServer, home: PathBuf) -> Result<()> {
    let token = st.tasks.shutdown_token().clone();
    let served = tokio::select! {
        biased;
        () = token.cancelled() => {
            st.tasks.set_serving(false);
            server.drain().await
        }
        r = &mut server.task => {
            // The server ended without being asked to: an accept error. The node stops.
            st.tasks.set_serving(false);
            let r = r.context("API server task").and_then(|r| r.context("API server"));
            let what = match &r {
                Ok(()) => "ended without an error".to_string(),
                Err(e) => format!("ended: {e:#}"),
            };
            st.tasks.report_failure("api-server", what);
            token.cancel();
            r
        }
    };
    // 1. KLP: Goodbye{shutdown} to admitted peers, at most 1 s for their acks; the swarm's
    //    event loop then ends.
    if let Some(k) = &st.klp {
        let _ = k.shutdown().await;
    }
    // 2. Every task: the services token is cancelled now, so the sync actor (and the store of
    //    the ops it queued), the event recorder and the remote-call server stop; the swarm
    //    has ended; jobs in flight finish.
    st.tasks.close_and_wait(TASKS_STOP_LIMIT).await;
    // 3. The last event, then the bus, then the stores.
    st.events
        .record(
            "node_stopped",
            "node",
            Some(st.config.current().snapshot_id.as_str()),
            serde_json::json!({}),
        )
        .await;
    let _ = st
        .db
        .put("last_clean_stop_ms", &crate::store::now_ms().to_string())
        .await;
    st.events.bus().shutdown().await;
    close_stores(&st.db, st.vectors.as_ref()).await;
    runfile::remove(&home);
    info!("stopped");
    served
}

/// Closes the database, then the vector store.
async fn close_stores(db: &Db, vectors: Option<&Arc<dyn VectorStore>>) {
    db.close().await;
    if let Some(v) = vectors
        && let Err(e) = v.close().await
    {
        warn!(error = %e, "closing the vector store");
    }
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
    let tasks = node.tasks().clone();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let t = token.clone();
        tasks.spawn_service("signals", async move {
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => { info!("Ctrl-C received"); break; }
                    _ = term.recv() => { info!("SIGTERM received"); break; }
                    _ = hup.recv() => {
                        info!("SIGHUP received: reloading the configuration");
                        if let Err(e) = state.config.reload_from_disk().await {
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
        tasks.spawn_service("signals", async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => t.cancel(),
                () = t.cancelled() => {}
            }
        });
    }
    node.wait().await
}

/// Installs the process-wide rustls crypto provider (aws-lc-rs). Both aws-lc-rs and ring are
/// in the dependency tree, so rustls cannot pick one itself: without this the first TLS use
/// panics. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
