//! Federation sync: the node's replica of the federation op-log, kept in step with its
//! peers, and what it means for this node (admitted peers, shared configuration).
//!
//! One task (the *sync actor*) owns the [`Log`] and everything derived from it. It
//!
//! - loads the ops persisted in the database at start (before KLP starts, so the approved
//!   set the swarm starts with already includes the federation's);
//! - takes ops from the API (created and signed with the node's admin key, or signed
//!   elsewhere and submitted), from gossip and from anti-entropy, verifies each with
//!   [`Log::insert`], persists it, and gossips the ones created or submitted here;
//! - runs anti-entropy with a peer on every admission and with one admitted peer (round
//!   robin) every `federation.klp.sync_interval`: it sends its log heads and inserts the
//!   ops the peer answers with, parents first, page by page;
//! - holds ops whose parents are unknown for [`PENDING_TTL`] while it fetches them;
//! - counts refused ops by reason and penalizes the peer responsible (the gossip source,
//!   or the peer that answered a sync) after [`STRIKES`] refusals in [`STRIKE_WINDOW`];
//! - polls `klp/peers.list` and hands the swarm the **effective approved set**: the
//!   operator's entries plus the federation's approvals, minus the operator's blocks
//!   (`!<id>`) and minus the federation's revocations; a revoked peer is disconnected;
//! - writes the federation's approvals (and revocations, as comments) into the managed
//!   section of `klp/peers.list`, atomically, never touching the operator's section;
//! - applies each scope's published configuration: checks the content against its scope and
//!   its snapshot id, validates the whole configuration with it, then writes
//!   `federation/config/<scope>.yaml` atomically, records it in the config history and
//!   activates it, or keeps the last good configuration; either way it gossips an ACK or
//!   NACK (with the errors), which every node collects per peer for `GET /api/config/status`.
//!
//! The actor is an I/O shell: what to do is decided by `core::SyncCore` and the pure
//! modules beside it (`wire`, `paging`, `pending`, `strikes`, `rate`, `peers_list`,
//! `view`, bounds in `limits`), which take the time as a parameter and
//! are unit-tested without sockets; the actor does the KLP calls, storage, file writes and
//! events their answers call for.

mod core;
mod limits;
mod paging;
mod peers_list;
mod pending;
mod rate;
mod strikes;
mod view;
mod wire;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use ed25519_dalek::SigningKey;
use kos_config::load::PEERS_LIST;
use kos_klp::{InboundSync, Klp, KlpEvent, NodeId, PeerEntry, PeersFile};
use kos_map_protocol::fedlog::{Genesis, Log, LogError, Op, OpBody, OpHash, State, UnsignedOp};
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::runtime::{ConfigRuntime, EventRecorder, Tasks};
use crate::store::{Db, OpStore};

use self::core::{Begin, Genesis as AnswerGenesis, Refused, SyncCore, record_status};
use self::limits::{COMMAND_QUEUE, MAX_OPS_PER_ANSWER, PEERS_LIST_POLL, PERSIST_QUEUE};
use self::paging::Cursor;
use self::peers_list::{denied_peers, fingerprint};
use self::view::{kind, reason};

pub use self::limits::{
    MAX_STATUS_ERROR_LEN, MAX_STATUS_ERRORS, PENDING_TTL, STRIKE_WINDOW, STRIKES,
};
pub use self::peers_list::{effective_peers, read_peers_file, render_managed, write_managed};
pub use self::view::{
    ApprovedView, FedView, OpView, PeerStatus, RevokedView, ScopeStatus, ScopeView,
};
pub use self::wire::{
    ConfigStatus, Gossip, GossipError, StatusKind, SyncRequest, SyncResponse, TAG_OP, TAG_STATUS,
    decode_status,
};

/// The node's federation admin key (from `kos admin keygen`), if it holds one.
pub const ADMIN_KEY_FILE: &str = "federation/admin.key";

/// Why an API request about the federation failed.
#[derive(Debug, thiserror::Error)]
pub enum FedError {
    #[error("federation sync is off: no admins in federation.klp.admins")]
    Disabled,
    #[error("this node holds no federation admin key ({ADMIN_KEY_FILE}; `kos admin keygen`)")]
    NoAdminKey,
    #[error("the operation was refused: {0}")]
    Refused(#[from] LogError),
    #[error("{0}")]
    Invalid(String),
    #[error("the operation is valid but could not be stored: {0}")]
    Store(String),
    #[error("the sync task has stopped")]
    Stopped,
}

enum Command {
    Create {
        body: OpBody,
        reply: oneshot::Sender<Result<String, FedError>>,
    },
    Submit {
        op: Vec<u8>,
        reply: oneshot::Sender<Result<String, FedError>>,
    },
    Draft {
        author: NodeId,
        body: OpBody,
        reply: oneshot::Sender<Result<Vec<u8>, FedError>>,
    },
    Log {
        reply: oneshot::Sender<Vec<OpView>>,
    },
    Status {
        reply: oneshot::Sender<Vec<ScopeStatus>>,
    },
    FindSnapshot {
        scope: String,
        snapshot_id: String,
        reply: oneshot::Sender<Option<String>>,
    },
}

/// Handle to the sync actor. Cheap to clone.
#[derive(Clone, Debug)]
pub struct FedSync {
    commands: mpsc::Sender<Command>,
    view: watch::Receiver<Arc<FedView>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

impl FedSync {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, FedError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| FedError::Stopped)?;
        rx.await.map_err(|_| FedError::Stopped)
    }

    /// The federation as this node sees it now.
    pub fn view(&self) -> Arc<FedView> {
        self.view.borrow().clone()
    }

    /// A stream of views, changing whenever the derived state does.
    pub fn watch(&self) -> watch::Receiver<Arc<FedView>> {
        self.view.clone()
    }

    /// Creates an op with the node's admin key, inserts and gossips it. Returns its hash.
    pub async fn create(&self, body: OpBody) -> Result<String, FedError> {
        self.ask(|reply| Command::Create { body, reply }).await?
    }

    /// Inserts an op signed elsewhere (canonical wire form) and gossips it.
    pub async fn submit(&self, op: Vec<u8>) -> Result<String, FedError> {
        self.ask(|reply| Command::Submit { op, reply }).await?
    }

    /// The unsigned op `author` would sign next (canonical bytes), for signing elsewhere.
    pub async fn draft(&self, author: NodeId, body: OpBody) -> Result<Vec<u8>, FedError> {
        self.ask(|reply| Command::Draft {
            author,
            body,
            reply,
        })
        .await?
    }

    /// Every op in the total order, then the recently refused ones.
    pub async fn log(&self) -> Result<Vec<OpView>, FedError> {
        self.ask(|reply| Command::Log { reply }).await
    }

    /// ACK/NACK/pending per peer for each scope's current snapshot.
    pub async fn status(&self) -> Result<Vec<ScopeStatus>, FedError> {
        self.ask(|reply| Command::Status { reply }).await
    }

    /// The content of an earlier snapshot of `scope` (for rollback).
    pub async fn find_snapshot(
        &self,
        scope: &str,
        snapshot_id: &str,
    ) -> Result<Option<String>, FedError> {
        let (scope, snapshot_id) = (scope.to_string(), snapshot_id.to_string());
        self.ask(|reply| Command::FindSnapshot {
            scope,
            snapshot_id,
            reply,
        })
        .await
    }
}

/// The id of a snapshot's content: SHA-256, lowercase hex.
pub fn snapshot_id(content: &str) -> String {
    hex::encode(Sha256::digest(content.as_bytes()))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Loads a federation admin key (PKCS#8 PEM, mode 0600).
pub fn load_admin_key(path: &Path) -> Result<SigningKey> {
    Ok(crate::identity::read_key_file(path)?)
}

/// Creates a new admin key file (never overwrites). Returns the admin id.
pub fn create_admin_key(path: &Path) -> Result<NodeId> {
    match crate::identity::create_key_file(path)? {
        Some(key) => Ok(NodeId::from_public_key(key.verifying_key())),
        None => anyhow::bail!(
            "{} exists (an existing key is never overwritten)",
            path.display()
        ),
    }
}

/// What the sync actor starts from; built before KLP starts.
pub struct FedCore {
    log: Option<Log>,
    admin_key: Option<SigningKey>,
    peers: PeersFile,
    dir: PathBuf,
}

impl std::fmt::Debug for FedCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FedCore")
            .field("ops", &self.log.as_ref().map(Log::len))
            .finish_non_exhaustive()
    }
}

impl FedCore {
    /// Builds the log from the configured genesis and the ops in the database, and reads the
    /// admin key; `peers` is peers.list as read at start. Every problem is an error naming
    /// its source.
    pub async fn open(
        cfg: &kos_config::Config,
        db: &Db,
        dir: &Path,
        peers: PeersFile,
    ) -> Result<Self> {
        let k = &cfg.federation.klp;
        let key_path = dir.join(ADMIN_KEY_FILE);
        let admin_key = if key_path.exists() {
            Some(load_admin_key(&key_path)?)
        } else {
            None
        };
        if k.admins.is_empty() {
            return Ok(Self {
                log: None,
                admin_key,
                peers,
                dir: dir.to_path_buf(),
            });
        }
        let admins = k
            .admins
            .iter()
            .enumerate()
            .map(|(i, a)| {
                a.parse::<NodeId>().map_err(|e| {
                    anyhow::anyhow!("federation.klp.admins[{i}]: `{a}` is not an admin id: {e}")
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut log = Log::new(Genesis {
            admins,
            threshold: k.admin_threshold,
        })
        .map_err(|e| anyhow::anyhow!("federation.klp.admins: {e}"))?;
        let stored = db.all_ops().await.context("reading the federation log")?;
        let mut left: Vec<Op> = Vec::new();
        for (i, bytes) in stored.iter().enumerate() {
            match Op::decode(bytes) {
                Ok(op) => left.push(op),
                Err(e) => {
                    warn!(row = i, error = %e, "stored federation op does not decode; skipped")
                }
            }
        }
        // Stored in lamport order, so parents come first; retry what still misses parents
        // (same lamport) until nothing moves.
        loop {
            let before = left.len();
            let mut next = Vec::new();
            for op in left {
                match log.insert(op.clone()) {
                    Ok(_) | Err(LogError::AlreadyKnown(_)) => {}
                    Err(LogError::UnknownParents(_)) => next.push(op),
                    Err(e) => {
                        warn!(op = %op.hash(), error = %e, "stored federation op refused; skipped")
                    }
                }
            }
            left = next;
            if left.is_empty() || left.len() == before {
                break;
            }
        }
        if !left.is_empty() {
            warn!(
                ops = left.len(),
                "stored federation ops miss their parents; they will be refetched"
            );
        }
        info!(ops = log.len(), "federation log loaded");
        Ok(Self {
            log: Some(log),
            admin_key,
            peers,
            dir: dir.to_path_buf(),
        })
    }

    /// The approved set to start the swarm with.
    pub fn effective_peers(&self) -> Vec<PeerEntry> {
        let state = self.log.as_ref().map(Log::state);
        effective_peers(&self.peers, state.as_ref())
    }
}

/// Creates the handle; the actor starts with [`spawn`] once the node state exists.
pub fn channel() -> (FedSync, FedParts) {
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let (view_tx, view_rx) = watch::channel(Arc::new(FedView::default()));
    (
        FedSync {
            commands: tx,
            view: view_rx,
        },
        FedParts {
            commands: rx,
            view: view_tx,
        },
    )
}

/// The actor's ends of the channels.
#[derive(Debug)]
pub struct FedParts {
    commands: mpsc::Receiver<Command>,
    view: watch::Sender<Arc<FedView>>,
}

/// How one page of anti-entropy went.
struct SyncPage {
    grew: bool,
    /// The last op of the page, for the next request's cursor.
    last: Option<Cursor>,
}

struct Actor {
    core: FedCore,
    parts: FedParts,
    node: NodeServices,
    klp: Klp,
    metrics: Arc<Metrics>,
    handshake_required: bool,
    sync_interval: Duration,
    /// The decisions, without I/O: sync runs, pending ops, strikes, rate limits.
    sync: SyncCore,
    sync_results: mpsc::Sender<(NodeId, Result<SyncResponse, String>, u32)>,
    /// Ops from other nodes to store, in arrival order (parents first).
    persist: mpsc::Sender<(String, u64, Vec<u8>)>,
    /// What the swarm was last given, and what was last written.
    applied_peers: Option<Vec<PeerEntry>>,
    applied_denied: Option<Vec<NodeId>>,
    last_state: Option<State>,
    peers_fingerprint: Option<(SystemTime, u64)>,
    /// This node's verdict per scope: (op, status, errors).
    own: BTreeMap<String, (OpHash, StatusKind, Vec<String>)>,
    /// Peers' verdicts by op.
    statuses: HashMap<OpHash, BTreeMap<NodeId, ConfigStatus>>,
}

/// The node services the sync actor uses.
#[derive(Clone, Debug)]
pub struct NodeServices {
    pub config: ConfigRuntime,
    pub events: EventRecorder,
    pub tasks: Tasks,
    pub db: Db,
    pub metrics: Arc<Metrics>,
}

impl NodeServices {
    async fn record(
        &self,
        kind: &str,
        actor: &str,
        snapshot_id: Option<&str>,
        detail: serde_json::Value,
    ) {
        self.events.record(kind, actor, snapshot_id, detail).await;
    }
}

/// Starts the sync actor. `events` must be subscribed right after KLP started, so no
/// admission is missed.
pub fn spawn(
    core: FedCore,
    parts: FedParts,
    node: NodeServices,
    klp: Klp,
    events: broadcast::Receiver<KlpEvent>,
) {
    let cfg = node.config.boot().config.federation.klp.clone();
    let inbound = klp.take_inbound_sync();
    let (results_tx, results_rx) = mpsc::channel(64);
    let (persist_tx, mut persist_rx) = mpsc::channel::<(String, u64, Vec<u8>)>(PERSIST_QUEUE);
    let db = node.db.clone();
    // Ends when the actor stops (drops its sender), after storing what is queued; joined at
    // shutdown before the database closes.
    node.tasks.spawn_service("fed-persist", async move {
        while let Some((hash, lamport, bytes)) = persist_rx.recv().await {
            if let Err(e) = db.insert_op(&hash, lamport, &bytes).await {
                warn!(op = %hash, error = %e, "cannot store a federation op; after a restart it is fetched again");
            }
        }
    });
    let peers_fingerprint = fingerprint(&core.dir.join(PEERS_LIST));
    let mut actor = Actor {
        metrics: node.metrics.clone(),
        core,
        parts,
        node,
        klp,
        handshake_required: cfg.handshake_required,
        sync_interval: cfg.sync_interval.get(),
        sync: SyncCore::new(Instant::now(), cfg.sync_interval.get()),
        sync_results: results_tx,
        persist: persist_tx,
        applied_peers: None,
        applied_denied: None,
        last_state: None,
        peers_fingerprint,
        own: BTreeMap::new(),
        statuses: HashMap::new(),
    };
    let tasks = actor.node.tasks.clone();
    let token = tasks.token().clone();
    tasks.spawn_service("fed-sync", async move {
        actor.run(events, inbound, results_rx, token).await;
    });
}

impl Actor {
    async fn run(
        &mut self,
        mut events: broadcast::Receiver<KlpEvent>,
        mut inbound: Option<mpsc::Receiver<InboundSync>>,
        mut results: mpsc::Receiver<(NodeId, Result<SyncResponse, String>, u32)>,
        token: CancellationToken,
    ) {
        self.on_changed(true).await;
        let mut poll = tokio::time::interval(PEERS_LIST_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sync_tick = tokio::time::interval(self.sync_interval);
        sync_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                c = self.parts.commands.recv() => match c {
                    Some(c) => self.on_command(c).await,
                    None => return,
                },
                ev = events.recv() => match ev {
                    Ok(ev) => self.on_event(ev).await,
                    Err(broadcast::error::RecvError::Lagged(n)) => self.on_lagged(n),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                Some(req) = async { match inbound.as_mut() { Some(r) => r.recv().await, None => std::future::pending().await } } => {
                    self.answer_sync(req);
                }
                Some((peer, res, round)) = results.recv() => self.on_sync_result(peer, res, round).await,
                _ = poll.tick() => {
                    self.poll_peers_list().await;
                    self.housekeep();
                }
                _ = sync_tick.tick() => self.periodic().await,
            }
        }
    }

    fn enabled(&self) -> bool {
        self.core.log.is_some()
    }

    fn on_lagged(&mut self, missed: u64) {
        warn!(missed, "KLP events dropped; syncing with every peer");
        for p in self.sync.admitted_peers() {
            self.start_sync(p, 0, None);
        }
    }

    async fn on_command(&mut self, c: Command) {
        match c {
            Command::Create { body, reply } => {
                let r = self.create(body).await;
                let _ = reply.send(r);
            }
            Command::Submit { op, reply } => {
                let r = self.submit(op).await;
                let _ = reply.send(r);
            }
            Command::Draft {
                author,
                body,
                reply,
            } => {
                let r = match &self.core.log {
                    None => Err(FedError::Disabled),
                    Some(log) => Ok(log.draft(author, body, now_ms()).canonical_bytes()),
                };
                let _ = reply.send(r);
            }
            Command::Log { reply } => {
                let _ = reply.send(view::log_view(self.core.log.as_ref(), self.sync.refused()));
            }
            Command::Status { reply } => {
                let _ = reply.send(view::status_view(
                    self.last_state.as_ref(),
                    self.klp.local_id(),
                    &self.core.peers,
                    &self.own,
                    &self.statuses,
                ));
            }
            Command::FindSnapshot {
                scope,
                snapshot_id,
                reply,
            } => {
                let found = self
                    .core
                    .log
                    .as_ref()
                    .and_then(|log| find_snapshot(log, &scope, &snapshot_id));
                let _ = reply.send(found);
            }
        }
    }

    async fn create(&mut self, body: OpBody) -> Result<String, FedError> {
        let log = self.core.log.as_ref().ok_or(FedError::Disabled)?;
        let key = self.core.admin_key.as_ref().ok_or(FedError::NoAdminKey)?;
        let op = log.new_op(key, body, now_ms());
        self.local_insert(op).await
    }

    async fn submit(&mut self, bytes: Vec<u8>) -> Result<String, FedError> {
        if self.core.log.is_none() {
            return Err(FedError::Disabled);
        }
        let op = Op::decode(&bytes)?;
        self.local_insert(op).await
    }

    /// An op made or submitted here: checked, stored durably, then inserted and gossiped;
    /// errors go back to the caller (and are not strikes). Storing first matters: an op
    /// gossiped but lost by a crash would make this node's admin sign another op with the
    /// same seq after a restart, an equivocation.
    async fn local_insert(&mut self, op: Op) -> Result<String, FedError> {
        let log = self.core.log.as_ref().ok_or(FedError::Disabled)?;
        let bytes = op.encode();
        let hash = match log.check(&op) {
            Ok(h) => h,
            Err(e) => {
                Metrics::outcome(&self.metrics.fedlog_ops, &format!("refused:{}", reason(&e)));
                self.remember_refused(Some(&op), None, &e);
                return Err(e.into());
            }
        };
        self.node
            .db
            .insert_op(&hash.to_string(), op.unsigned.lamport, &bytes)
            .await
            .map_err(|e| FedError::Store(e.to_string()))?;
        let log = self.core.log.as_mut().ok_or(FedError::Disabled)?;
        log.insert(op.clone())?;
        Metrics::outcome(&self.metrics.fedlog_ops, "inserted");
        let msg = Gossip::Op(bytes).encode();
        if let Err(e) = self.klp.publish("", msg).await {
            // No peer in the mesh yet: anti-entropy delivers it later.
            debug!(error = %e, "op not gossiped now");
        }
        info!(op = %hash, kind = kind(&op.unsigned.body), "federation op created");
        self.retry_pending().await;
        self.on_changed(false).await;
        Ok(hash.to_string())
    }

    /// An op from the network. `Ok(grew)`, or `Err` when the op is invalid (refused,
    /// counted, and charged to `from`).
    async fn ingest(&mut self, bytes: &[u8], from: Option<NodeId>) -> Result<bool, ()> {
        let op = match Op::decode(bytes) {
            Ok(op) => op,
            Err(e) => {
                self.refuse(None, from, &e).await;
                return Err(());
            }
        };
        self.ingest_op(op, from).await
    }

    async fn ingest_op(&mut self, op: Op, from: Option<NodeId>) -> Result<bool, ()> {
        let Some(log) = self.core.log.as_mut() else {
            return Ok(false);
        };
        let hash = op.hash();
        match log.check(&op) {
            Ok(_) => {
                // Another node's op is stored by the persister, off the propagation path:
                // if a crash loses it, anti-entropy brings it again (only this node's own
                // ops must be on disk before anyone sees them).
                let record = (hash.to_string(), op.unsigned.lamport, op.encode());
                if log.insert(op).is_ok() {
                    Metrics::outcome(&self.metrics.fedlog_ops, "inserted");
                    debug!(op = %hash, "federation op inserted");
                    if self.persist.send(record).await.is_err() {
                        warn!(op = %hash, "the op persister has stopped");
                    }
                    return Ok(true);
                }
                Ok(false)
            }
            Err(LogError::AlreadyKnown(_)) => {
                Metrics::outcome(&self.metrics.fedlog_ops, "known");
                Ok(false)
            }
            Err(LogError::UnknownParents(_)) => self.park(op, from).await,
            Err(e @ LogError::Equivocation { .. }) => {
                // Not the relay's fault: it may have seen the other op first.
                Metrics::outcome(&self.metrics.fedlog_ops, "refused:equivocation");
                warn!(op = %hash, error = %e, "equivocating federation op");
                self.remember_refused(Some(&op), from, &e);
                Ok(false)
            }
            Err(e) => {
                self.refuse(Some(&op), from, &e).await;
                Err(())
            }
        }
    }

    /// An op whose parents are unknown: held only if it is really signed (junk must not
    /// crowd out real ops) and within the budgets; then the missing history is asked for.
    async fn park(&mut self, op: Op, from: Option<NodeId>) -> Result<bool, ()> {
        if let Err(e) = op.verify_signatures() {
            self.refuse(Some(&op), from, &e).await;
            return Err(());
        }
        let hash = op.hash();
        let size = op.encode().len();
        if let Err(why) = self.sync.park(op, from, size, Instant::now()) {
            debug!(op = %hash, ?why, "op not held for its parents; it will come again by anti-entropy");
        }
        // The source may not be a direct neighbour: then any admitted peer.
        if let Some(p) = self.sync.ask_for_parents(from) {
            self.start_sync(p, 0, None);
        }
        Ok(false)
    }

    fn remember_refused(&mut self, op: Option<&Op>, from: Option<NodeId>, e: &LogError) {
        self.sync
            .remember_refused(Refused::new(now_ms(), op, from, e));
    }

    /// Counts and remembers a refused op and charges it to the peer responsible.
    async fn refuse(&mut self, op: Option<&Op>, from: Option<NodeId>, e: &LogError) {
        Metrics::outcome(&self.metrics.fedlog_ops, &format!("refused:{}", reason(e)));
        warn!(from = ?from.map(|f| f.to_string()), error = %e, "federation op refused");
        self.remember_refused(op, from, e);
        if let Some(peer) = from {
            self.strike(peer).await;
        }
    }

    async fn strike(&mut self, peer: NodeId) {
        if self.sync.strike(peer, Instant::now()) {
            warn!(peer = %peer, "peer sent {STRIKES} invalid federation ops: penalizing");
            let _ = self
                .klp
                .penalize(&peer, "sent invalid federation operations")
                .await;
        }
    }

    /// Inserts pending ops whose parents have arrived, until nothing moves.
    async fn retry_pending(&mut self) -> bool {
        let mut grew = false;
        loop {
            let Some(log) = &self.core.log else {
                return grew;
            };
            let ready = self.sync.take_ready(|h| log.contains(h));
            if ready.is_empty() {
                return grew;
            }
            for p in ready {
                grew |= self.ingest_op(p.op, p.from).await.unwrap_or(false);
            }
        }
    }

    /// Drops ops whose parents never came. Not charged to anyone: an honest relay may
    /// hold ops whose history this node refuses (after an equivocation) or cannot reach.
    fn housekeep(&mut self) {
        let expired = self.sync.housekeep(Instant::now());
        if expired.is_empty() {
            return;
        }
        for p in expired {
            let missing: Vec<OpHash> = match &self.core.log {
                Some(log) => {
                    p.op.unsigned
                        .parents
                        .iter()
                        .filter(|x| !log.contains(x))
                        .copied()
                        .collect()
                }
                None => Vec::new(),
            };
            let e = LogError::UnknownParents(missing);
            Metrics::outcome(&self.metrics.fedlog_ops, "refused:unknown_parents");
            warn!(op = %p.op.hash(), "federation op dropped: its parents never arrived");
            self.remember_refused(Some(&p.op), p.from, &e);
        }
        self.publish_view(self.last_state.as_ref());
    }

    async fn on_event(&mut self, ev: KlpEvent) {
        match ev {
            KlpEvent::Admitted { peer, .. } => {
                if let Ok(p) = peer.parse::<NodeId>() {
                    self.sync.admitted(p);
                    self.start_sync(p, 0, None);
                    self.gossip_own_statuses().await;
                }
            }
            KlpEvent::Disconnected { peer } => {
                if let Ok(p) = peer.parse::<NodeId>() {
                    self.sync.disconnected(&p);
                }
            }
            KlpEvent::Message { from, data, .. } => {
                let from = from.parse::<NodeId>().ok();
                match Gossip::decode(&data) {
                    Ok(Gossip::Op(op)) if self.enabled() => self.on_gossip_op(&op, from).await,
                    Ok(Gossip::Status { op, status }) => {
                        if let Some(f) = from {
                            record_status(
                                &mut self.statuses,
                                self.last_state.as_ref(),
                                f,
                                op,
                                status,
                            );
                        }
                    }
                    Err(GossipError::BadStatus) => {
                        if let Some(f) = from {
                            debug!(peer = %f, "undecodable config status");
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    async fn on_gossip_op(&mut self, bytes: &[u8], from: Option<NodeId>) {
        let mut grew = self.ingest(bytes, from).await.unwrap_or(false);
        grew |= self.retry_pending().await;
        if grew {
            self.on_changed(false).await;
        } else {
            self.publish_view(self.last_state.as_ref());
        }
    }
}

/// Anti-entropy: runs with a peer, page by page, and the answers to peers' requests.
impl Actor {
    /// Asks `peer` for the ops this node misses (one page; `after` continues a run).
    fn start_sync(&mut self, peer: NodeId, round: u32, after: Option<Cursor>) {
        let Some(log) = &self.core.log else { return };
        if self.sync.begin_sync(peer, round) == Begin::Queued {
            // One is running: another runs when it ends (it may predate what we now miss).
            return;
        }
        let Ok(body) = paging::request(log, after).encode() else {
            self.sync.abort_sync(&peer);
            return;
        };
        let klp = self.klp.clone();
        let back = self.sync_results.clone();
        self.node.tasks.spawn("fed-sync-request", async move {
            let res = match klp.sync(&peer, body).await {
                Ok(bytes) => SyncResponse::decode(&bytes),
                Err(e) => Err(e.to_string()),
            };
            let _ = back.send((peer, res, round)).await;
        });
    }

    fn end_sync(&mut self, peer: NodeId) {
        if self.sync.end_sync(&peer) {
            self.start_sync(peer, 0, None);
        }
    }

    async fn on_sync_result(
        &mut self,
        peer: NodeId,
        res: Result<SyncResponse, String>,
        round: u32,
    ) {
        let checked = res.and_then(|r| match paging::check_page(&r) {
            Ok(()) => Ok(r),
            Err(e) => Err(e.to_string()),
        });
        let resp = match checked {
            Ok(r) => r,
            Err(e) => {
                debug!(peer = %peer, error = %e, "sync failed");
                self.end_sync(peer);
                return;
            }
        };
        let same = self
            .core
            .log
            .as_ref()
            .is_none_or(|log| paging::same_genesis(log, &resp));
        if let AnswerGenesis::Foreign { first } = self.sync.answer_genesis(peer, same) {
            if first {
                warn!(peer = %peer, "this peer's federation has other admins (federation.klp.admins or admin_threshold differ): its ops are ignored");
            }
            self.end_sync(peer);
            return;
        }
        let page = self.ingest_page(peer, &resp.ops).await;
        if page.grew {
            self.on_changed(false).await;
        } else {
            self.publish_view(self.last_state.as_ref());
        }
        match paging::next_page(resp.more, page.last, round) {
            Some((next, last)) => self.start_sync(peer, next, Some(last)),
            None => self.end_sync(peer),
        }
    }

    /// Inserts one sync answer, parents first. An honest node only holds valid ops, so the
    /// first invalid one ends the page with one strike against the peer that sent it.
    async fn ingest_page(&mut self, peer: NodeId, ops: &[ByteBuf]) -> SyncPage {
        let mut page = SyncPage {
            grew: false,
            last: None,
        };
        for bytes in ops.iter().take(MAX_OPS_PER_ANSWER) {
            let op = match Op::decode(bytes) {
                Ok(op) => op,
                Err(e) => {
                    self.refuse(None, Some(peer), &e).await;
                    page.last = None;
                    break;
                }
            };
            page.last = Some((op.unsigned.lamport, op.hash()));
            match self.ingest_op(op, None).await {
                Ok(grew) => page.grew |= grew,
                Err(()) => {
                    // Counted by ingest_op; one strike for the whole answer.
                    self.strike(peer).await;
                    page.last = None;
                    break;
                }
            }
        }
        page.grew |= self.retry_pending().await;
        page
    }

    /// Answers a peer's sync request: the ops it misses after its cursor, parents first,
    /// within the page budget. Rate limited per peer; nothing for another federation.
    fn answer_sync(&mut self, req: InboundSync) {
        let allowed = self.sync.allow_answer(req.peer, Instant::now());
        let Some(log) = &self.core.log else {
            return;
        };
        // Over the rate limit, the request is not even decoded.
        let request = if allowed {
            SyncRequest::decode(&req.body).ok()
        } else {
            debug!(peer = %req.peer, "sync request over the rate limit");
            None
        };
        if let Ok(body) = paging::answer(log, request).encode() {
            let _ = req.reply.send(body);
        }
    }
}

/// What follows from the log: the periodic work, verdicts, peers.list, the swarm's sets,
/// events and configuration snapshots.
impl Actor {
    async fn periodic(&mut self) {
        if let Ok(peers) = self.klp.peers().await {
            self.sync.set_admitted(
                peers
                    .iter()
                    .filter(|p| p.connected && p.state == kos_klp::HandshakeState::Admitted)
                    .filter_map(|p| p.id.parse().ok()),
            );
        }
        if let Some(p) = self.sync.next_periodic() {
            self.start_sync(p, 0, None);
        }
        // A snapshot refused here is tried again, at most every NACK_RETRY_INTERVALS sync
        // intervals: the operator may have fixed what made it fail (the verdict and event
        // change only if the outcome does).
        let now = Instant::now();
        let due = self.sync.nack_retry_due(now);
        let retry: Vec<(String, kos_map_protocol::fedlog::Published)> = match &self.last_state {
            Some(state) if due => state
                .config
                .iter()
                .filter(|(scope, p)| {
                    self.own
                        .get(*scope)
                        .is_some_and(|o| o.0 == p.op && o.1 == StatusKind::Nack)
                })
                .map(|(scope, p)| (scope.clone(), p.clone()))
                .collect(),
            _ => Vec::new(),
        };
        if !retry.is_empty() {
            self.sync.nack_retried(now);
        }
        for (scope, p) in retry {
            self.apply_snapshot(&scope, &p).await;
        }
        self.gossip_own_statuses().await;
    }

    async fn gossip_own_statuses(&mut self) {
        let statuses: Vec<Gossip> = self
            .own
            .iter()
            .map(|(scope, (op, status, errors))| Gossip::Status {
                op: *op,
                status: ConfigStatus {
                    op: op.to_string(),
                    scope: scope.clone(),
                    snapshot_id: self.snapshot_of(op).unwrap_or_default(),
                    status: *status,
                    errors: errors.clone(),
                    at_ms: now_ms(),
                },
            })
            .collect();
        for st in statuses {
            let _ = self.klp.publish("", st.encode()).await;
        }
    }

    fn snapshot_of(&self, op: &OpHash) -> Option<String> {
        match &self.core.log.as_ref()?.get(op)?.unsigned.body {
            OpBody::PublishConfig { snapshot_id, .. } => Some(snapshot_id.clone()),
            _ => None,
        }
    }
    async fn poll_peers_list(&mut self) {
        let path = self.core.dir.join(PEERS_LIST);
        let now = fingerprint(&path);
        if now == self.peers_fingerprint {
            return;
        }
        self.peers_fingerprint = now;
        let dir = self.core.dir.clone();
        let parsed = tokio::task::spawn_blocking(move || read_peers_file(&dir)).await;
        match parsed {
            Ok(Ok(file)) => {
                if file != self.core.peers {
                    info!(
                        local = file.local.len(),
                        blocked = file.blocked.len(),
                        "peers.list changed: applying"
                    );
                    Metrics::outcome(&self.metrics.peers_list_reloads, "applied");
                    self.core.peers = file;
                    self.on_changed(false).await;
                }
            }
            Ok(Err(errors)) => {
                Metrics::outcome(&self.metrics.peers_list_reloads, "invalid");
                for e in errors {
                    warn!(error = %e, "peers.list is invalid; keeping the running list");
                }
            }
            Err(e) => warn!(error = %e, "peers.list reader failed"),
        }
    }

    /// Brings everything derived from the log and peers.list up to date.
    async fn on_changed(&mut self, first: bool) {
        let state = self.core.log.as_ref().map(Log::state);
        if let Some(log) = &self.core.log {
            self.metrics.fedlog_size.set(log.len() as i64);
        }
        // Readers first: what follows (swarm, files, events, config) takes longer.
        self.publish_view(state.as_ref());
        // The swarm's approved set.
        let peers = effective_peers(&self.core.peers, state.as_ref());
        if self.applied_peers.as_ref() != Some(&peers) {
            if !first || self.applied_peers.is_some() {
                info!(peers = peers.len(), "approved peers changed");
            }
            if self
                .klp
                .set_approved(peers.clone(), self.handshake_required)
                .await
                .is_ok()
            {
                self.applied_peers = Some(peers);
            }
        }
        // Denied whatever handshake_required says: local blocks and revocations.
        let denied = denied_peers(&self.core.peers, state.as_ref());
        if self.applied_denied.as_ref() != Some(&denied)
            && self.klp.set_denied(denied.clone()).await.is_ok()
        {
            self.applied_denied = Some(denied);
        }
        {
            // peers.list's managed section: rewritten whenever it differs from the log
            // (also after an operator's edit carried a stale copy of it); removed when
            // federation sync is off.
            let dir = self.core.dir.clone();
            let managed = state.as_ref().map(render_managed).unwrap_or_default();
            let expected = self.core.peers.clone();
            match tokio::task::spawn_blocking(move || write_managed(&dir, &managed, &expected))
                .await
            {
                // Written: the next poll sees a new fingerprint and re-reads the file, which
                // also picks up an operator's edit that raced with this write.
                Ok(Ok(_)) => {}
                Ok(Err(e)) => warn!(error = %e, "cannot write peers.list"),
                Err(e) => warn!(error = %e, "peers.list writer failed"),
            }
        }
        if let Some(state) = &state
            && self.last_state.as_ref() != Some(state)
        {
            self.record_changes(state).await;
            // Configuration snapshots.
            for (scope, published) in &state.config {
                if self.own.get(scope).map(|o| o.0) != Some(published.op) {
                    self.apply_snapshot(scope, published).await;
                }
            }
            self.last_state = Some(state.clone());
        }
        self.publish_view(state.as_ref());
    }

    async fn record_changes(&mut self, state: &State) {
        let old = self.last_state.clone();
        let Some(old) = old else { return };
        for id in state.approved.keys() {
            if !old.approved.contains_key(id) {
                self.node
                    .record(
                        "peer_approved",
                        "federation",
                        None,
                        serde_json::json!({"peer": id.to_string()}),
                    )
                    .await;
            }
        }
        for (id, r) in &state.revoked {
            if !old.revoked.contains_key(id) {
                self.node
                    .record(
                        "peer_revoked",
                        "federation",
                        None,
                        serde_json::json!({"peer": id.to_string(), "reason": r.reason}),
                    )
                    .await;
            }
        }
    }

    /// Checks and applies one scope's snapshot; records this node's ACK or NACK and
    /// gossips it.
    async fn apply_snapshot(&mut self, scope: &str, p: &kos_map_protocol::fedlog::Published) {
        let result = self.try_apply(scope, p).await;
        let (status, errors) = match &result {
            Ok(()) => (StatusKind::Ack, Vec::new()),
            Err(errs) => (StatusKind::Nack, errs.clone()),
        };
        let unchanged = self
            .own
            .get(scope)
            .is_some_and(|o| o.0 == p.op && o.1 == status && o.2 == errors);
        if unchanged {
            return;
        }
        match &result {
            Ok(()) => info!(scope, snapshot = %&p.snapshot_id[..12], "federation snapshot applied"),
            Err(errs) => {
                warn!(scope, snapshot = %&p.snapshot_id[..12], errors = ?errs, "federation snapshot refused; keeping the last good configuration")
            }
        }
        self.node
            .record(
                if status == StatusKind::Ack {
                    "federation_config_applied"
                } else {
                    "federation_config_refused"
                },
                "federation",
                None,
                serde_json::json!({"scope": scope, "snapshot_id": p.snapshot_id, "op": p.op.to_string(), "errors": errors}),
            )
            .await;
        self.own.insert(scope.to_string(), (p.op, status, errors));
        self.gossip_own_statuses().await;
    }

    async fn try_apply(
        &self,
        scope: &str,
        p: &kos_map_protocol::fedlog::Published,
    ) -> Result<(), Vec<String>> {
        if snapshot_id(&p.content) != p.snapshot_id {
            return Err(vec![
                "the snapshot id is not the SHA-256 of its content".into(),
            ]);
        }
        let source = format!("federation snapshot {scope}@{}", &p.snapshot_id[..12]);
        let tree = kos_config::federation::check_content(scope, &p.content, &source)
            .map_err(|d| d.0.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        let content = format!(
            "# Federation snapshot {}, scope `{scope}`, from op {}.\n# Written by kos; replaced by the next snapshot. Local files override it.\n{}",
            p.snapshot_id, p.op, p.content
        );
        // The admin who authored (first signed) the op.
        let actor = match self.core.log.as_ref().and_then(|l| l.get(&p.op)) {
            Some(op) => format!("federation:{}", op.author()),
            None => "federation".to_string(),
        };
        let fed_source = kos_config::snapshot::FederationSource {
            scope: scope.to_string(),
            snapshot_id: p.snapshot_id.clone(),
            op: p.op.to_string(),
        };
        self.node
            .config
            .apply_federation_snapshot(scope, tree, content, fed_source, &actor)
            .await
    }

    fn publish_view(&self, state: Option<&State>) {
        let local_admin = self
            .core
            .admin_key
            .as_ref()
            .map(|k| NodeId::from_public_key(k.verifying_key()).to_string());
        let view = view::fed_view(
            state,
            self.core.log.as_ref(),
            &self.core.peers,
            local_admin,
            &self.own,
            self.sync.pending_len(),
        );
        self.parts.view.send_replace(Arc::new(view));
    }
}

/// The content of the snapshot `snapshot_id` of `scope` published in `log`, if any.
fn find_snapshot(log: &Log, scope: &str, snapshot_id: &str) -> Option<String> {
    log.iter().find_map(|op| match &op.unsigned.body {
        OpBody::PublishConfig {
            snapshot_id: id,
            scope: s,
            content,
        } if s == scope && id == snapshot_id => Some(content.clone()),
        _ => None,
    })
}

/// Decodes an unsigned draft (for the CLI, which signs it with key files).
pub fn decode_draft(bytes: &[u8]) -> Result<UnsignedOp, LogError> {
    UnsignedOp::decode(bytes)
}
