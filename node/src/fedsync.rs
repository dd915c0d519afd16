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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use ed25519_dalek::SigningKey;
use kos_config::load::PEERS_LIST;
use kos_klp::{InboundSync, Klp, KlpEvent, NodeId, PeerEntry, PeersFile};
use kos_map_protocol::fedlog::{Genesis, Log, LogError, Op, OpBody, OpHash, State, UnsignedOp};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::runtime::{ConfigRuntime, EventRecorder, Tasks};
use crate::store::{Db, OpStore};

/// The node's federation admin key (from `kos admin keygen`), if it holds one.
pub const ADMIN_KEY_FILE: &str = "federation/admin.key";
/// Gossip payload tags (the first byte) on the federation topic: an encoded [`Op`] follows,
/// or a [`ConfigStatus`] as JSON.
pub const TAG_OP: u8 = 1;
pub const TAG_STATUS: u8 = 2;
/// Ops with unknown parents kept while their parents are fetched: in all, in bytes, and
/// from one source.
const MAX_PENDING: usize = 1024;
const MAX_PENDING_BYTES: usize = 16 * 1024 * 1024;
const MAX_PENDING_PER_SOURCE: usize = 256;
/// Most ops taken from one sync answer.
const MAX_OPS_PER_ANSWER: usize = 4096;
/// Sync requests answered per peer: a burst, then one per second.
const SYNC_BURST: f64 = 8.0;
const SYNC_RATE_PER_SEC: f64 = 1.0;
/// A refused snapshot is tried again at most every this many sync intervals.
const NACK_RETRY_INTERVALS: u32 = 3;
pub const PENDING_TTL: Duration = Duration::from_secs(30);
/// Most heads accepted in a sync request.
const MAX_HEADS: usize = 1024;
/// Pages fetched in one anti-entropy run.
const MAX_SYNC_ROUNDS: u32 = 64;
/// Refusals that get a peer penalized, and the window they are counted in.
pub const STRIKES: u32 = 3;
pub const STRIKE_WINDOW: Duration = Duration::from_secs(600);
/// Refused ops remembered for `kos federation log`.
const REFUSED_KEPT: usize = 256;
/// Limits on a received ACK/NACK.
pub const MAX_STATUS_ERRORS: usize = 50;
pub const MAX_STATUS_ERROR_LEN: usize = 500;
const COMMAND_QUEUE: usize = 64;
/// Ops waiting to be stored (the actor waits when it is full).
const PERSIST_QUEUE: usize = 1024;
const PEERS_LIST_POLL: Duration = Duration::from_millis(500);

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

/// An anti-entropy request (CBOR, carried by [`Klp::sync`]): what the requester holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct SyncRequest {
    /// [`Log::genesis_id`] of the requester: peers of another federation answer nothing.
    pub genesis: ByteBuf,
    #[serde(deserialize_with = "at_most::<MAX_HEADS, _>")]
    pub heads: Vec<ByteBuf>,
    /// Paging: only ops after this `(lamport, hash)` in the total order.
    pub after: Option<(u64, ByteBuf)>,
}

/// The answer to a [`SyncRequest`]: encoded ops, parents first, and whether more follow.
#[derive(Debug, Serialize, Deserialize)]
pub struct SyncResponse {
    pub genesis: ByteBuf,
    #[serde(deserialize_with = "at_most::<MAX_OPS_PER_ANSWER, _>")]
    pub ops: Vec<ByteBuf>,
    pub more: bool,
}

/// Decodes a gossiped [`ConfigStatus`] (the bytes after its tag) and bounds it: at most
/// [`MAX_STATUS_ERRORS`] errors of at most [`MAX_STATUS_ERROR_LEN`] bytes each. `None` when
/// it is not JSON of that shape or names no op hash. Never panics.
pub fn decode_status(bytes: &[u8]) -> Option<(OpHash, ConfigStatus)> {
    let mut st = serde_json::from_slice::<ConfigStatus>(bytes).ok()?;
    let op = st.op.parse::<OpHash>().ok()?;
    st.errors.truncate(MAX_STATUS_ERRORS);
    for e in &mut st.errors {
        if e.len() > MAX_STATUS_ERROR_LEN {
            let mut cut = MAX_STATUS_ERROR_LEN;
            while !e.is_char_boundary(cut) {
                cut -= 1;
            }
            e.truncate(cut);
        }
    }
    Some((op, st))
}

impl SyncRequest {
    /// Decodes a request received from a peer. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        ciborium::from_reader(bytes).map_err(|e| format!("undecodable sync request: {e}"))
    }
}

impl SyncResponse {
    /// Decodes a peer's answer. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        ciborium::from_reader(bytes).map_err(|e| format!("undecodable sync answer: {e}"))
    }
}

/// A sequence of at most `N` byte strings, refused while decoding as soon as it has more:
/// one CBOR byte per empty byte string would otherwise cost a 24-byte `ByteBuf` each (a
/// 1 MiB sync answer of them, ~50 MiB at the peak of the `Vec`'s growth).
fn at_most<'de, const N: usize, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<ByteBuf>, D::Error> {
    struct AtMost<const N: usize>;
    impl<'de, const N: usize> serde::de::Visitor<'de> for AtMost<N> {
        type Value = Vec<ByteBuf>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "at most {N} byte strings")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(N));
            while let Some(b) = seq.next_element::<ByteBuf>()? {
                if out.len() == N {
                    return Err(serde::de::Error::invalid_length(N + 1, &self));
                }
                out.push(b);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(AtMost::<N>)
}

/// ACK or NACK of a configuration snapshot, as gossiped.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConfigStatus {
    /// The `PublishConfig` op (hex hash).
    pub op: String,
    pub scope: String,
    pub snapshot_id: String,
    pub status: StatusKind,
    #[serde(default)]
    pub errors: Vec<String>,
    pub at_ms: u64,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StatusKind {
    Ack,
    Nack,
    Pending,
}

/// The federation as this node sees it (for the API).
#[derive(Clone, Debug, Default, Serialize)]
pub struct FedView {
    pub enabled: bool,
    pub admins: Vec<String>,
    pub threshold: u32,
    /// The admin id of the key this node holds, if any.
    pub local_admin: Option<String>,
    pub approved: Vec<ApprovedView>,
    pub revoked: Vec<RevokedView>,
    /// Peers the operator blocks in peers.list.
    pub blocked: Vec<String>,
    pub config: Vec<ScopeView>,
    pub ops: usize,
    pub heads: Vec<String>,
    pub pending: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct ApprovedView {
    pub id: String,
    pub addrs: Vec<String>,
    pub label: Option<String>,
    pub op: String,
    /// Blocked locally: not admitted here despite the approval.
    pub blocked_locally: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct RevokedView {
    pub id: String,
    pub reason: String,
    pub op: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct ScopeView {
    pub scope: String,
    pub snapshot_id: String,
    pub op: String,
    /// This node's own verdict.
    pub status: StatusKind,
    pub errors: Vec<String>,
}

/// One op of the log, for `kos federation log`.
#[derive(Clone, Debug, Serialize)]
pub struct OpView {
    pub hash: String,
    pub author: String,
    pub seq: u64,
    pub lamport: u64,
    pub timestamp_ms: u64,
    pub parents: Vec<String>,
    pub signers: Vec<String>,
    pub kind: &'static str,
    pub summary: String,
    /// `valid` for ops in the log; the reason for refused ones.
    pub validity: String,
}

/// Per-peer ACK/NACK/pending of the current snapshot of each scope.
#[derive(Clone, Debug, Serialize)]
pub struct ScopeStatus {
    pub scope: String,
    pub snapshot_id: String,
    pub op: String,
    pub peers: Vec<PeerStatus>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PeerStatus {
    pub peer: String,
    pub this_node: bool,
    pub status: StatusKind,
    pub errors: Vec<String>,
    pub at_ms: Option<u64>,
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
    /// Turns true when the actor has stopped and every received op is stored.
    flushed: watch::Receiver<bool>,
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

    /// Waits (at most `limit`) until the stopped actor's ops are all stored: call after the
    /// shutdown token is cancelled, before the database closes.
    pub async fn flushed(&self, limit: Duration) -> bool {
        let mut rx = self.flushed.clone();
        tokio::time::timeout(limit, rx.wait_for(|done| *done))
            .await
            .is_ok_and(|r| r.is_ok())
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

/// Reads and parses `klp/peers.list`; a missing file is empty. Errors name file and line.
pub fn read_peers_file(dir: &Path) -> Result<PeersFile, Vec<String>> {
    let path = dir.join(PEERS_LIST);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(PeersFile::default()),
        Err(e) => return Err(vec![format!("{PEERS_LIST}: cannot read: {e}")]),
    };
    kos_klp::parse_peers_file(&text).map_err(|errs| {
        errs.iter()
            .map(|e| format!("{PEERS_LIST}:{}: {}", e.line, e.message))
            .collect()
    })
}

/// The peers the swarm admits: the operator's entries plus the federation's approvals,
/// minus the operator's blocks and the federation's revocations. (A revocation beats a
/// local entry too: a peer revoked by the federation is cut off everywhere; an operator who
/// disagrees takes it up with the admins.)
pub fn effective_peers(file: &PeersFile, state: Option<&State>) -> Vec<PeerEntry> {
    let blocked: HashSet<NodeId> = file.blocked.iter().map(|b| b.id).collect();
    let revoked: HashSet<NodeId> = state
        .map(|s| s.revoked.keys().copied().collect())
        .unwrap_or_default();
    let mut out: Vec<PeerEntry> = file
        .local
        .iter()
        .filter(|e| !blocked.contains(&e.id) && !revoked.contains(&e.id))
        .cloned()
        .collect();
    if let Some(state) = state {
        for (id, a) in &state.approved {
            if blocked.contains(id) {
                continue;
            }
            let addrs: Vec<String> = a
                .addrs
                .iter()
                .filter_map(|x| kos_klp::peers::check_addr(x, id).ok())
                .collect();
            match out.iter_mut().find(|e| e.id == *id) {
                Some(local) => {
                    for x in addrs {
                        if !local.addrs.contains(&x) {
                            local.addrs.push(x);
                        }
                    }
                }
                None => out.push(PeerEntry {
                    id: *id,
                    addrs,
                    label: a.label.clone(),
                    line: 0,
                }),
            }
        }
    }
    out
}

fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The managed section of peers.list for a state.
pub fn render_managed(state: &State) -> String {
    let mut out = String::new();
    for (id, a) in &state.approved {
        let addrs: Vec<String> = a
            .addrs
            .iter()
            .filter_map(|x| kos_klp::peers::check_addr(x, id).ok())
            .collect();
        out.push_str(&kos_klp::peers::render_entry(&PeerEntry {
            id: *id,
            addrs,
            label: Some(match &a.label {
                Some(l) => format!("{} (op {})", one_line(l), short(&a.op)),
                None => format!("op {}", short(&a.op)),
            }),
            line: 0,
        }));
        out.push('\n');
    }
    for (id, r) in &state.revoked {
        out.push_str(&format!(
            "# revoked {id}: {} (op {})\n",
            one_line(&r.reason),
            short(&r.op)
        ));
    }
    out
}

fn short(h: &OpHash) -> String {
    h.to_string()[..12].to_string()
}

/// Writes the managed section into peers.list if it differs, atomically. Writes only over
/// a file whose operator section parses to `expected` (what the node last read): a file
/// being edited (e.g. truncated by an editor saving in place) or edited since is left
/// alone, and the next poll reads the operator's version first. Returns whether it wrote.
pub fn write_managed(dir: &Path, managed: &str, expected: &PeersFile) -> std::io::Result<bool> {
    let path = dir.join(PEERS_LIST);
    let same_operator_section = |text: &str| {
        kos_klp::parse_peers_file(text)
            .is_ok_and(|f| f.local == expected.local && f.blocked == expected.blocked)
    };
    for _ in 0..5 {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        if !same_operator_section(&text) {
            return Ok(false);
        }
        let new = kos_klp::peers::replace_managed(&text, managed);
        if new == text {
            return Ok(false);
        }
        let again = std::fs::read_to_string(&path).unwrap_or_default();
        if again != text {
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        kos_config::snapshot::atomic_write(&path, new.as_bytes(), None, &mut |_| {})?;
        return Ok(true);
    }
    Err(std::io::Error::other(
        "peers.list keeps changing; will retry",
    ))
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
    let (flushed_tx, flushed_rx) = watch::channel(false);
    (
        FedSync {
            commands: tx,
            view: view_rx,
            flushed: flushed_rx,
        },
        FedParts {
            commands: rx,
            view: view_tx,
            flushed: Some(flushed_tx),
        },
    )
}

/// The actor's ends of the channels.
#[derive(Debug)]
pub struct FedParts {
    commands: mpsc::Receiver<Command>,
    view: watch::Sender<Arc<FedView>>,
    flushed: Option<watch::Sender<bool>>,
}

struct Pending {
    op: Op,
    from: Option<NodeId>,
    since: Instant,
    bytes: usize,
}

/// How one page of anti-entropy went.
struct SyncPage {
    grew: bool,
    /// The last op of the page, for the next request's cursor.
    last: Option<(u64, OpHash)>,
}

struct Refused {
    at_ms: u64,
    hash: Option<OpHash>,
    author: Option<NodeId>,
    from: Option<NodeId>,
    reason: String,
}

struct Actor {
    core: FedCore,
    parts: FedParts,
    node: NodeServices,
    klp: Klp,
    metrics: Arc<Metrics>,
    handshake_required: bool,
    sync_interval: Duration,
    pending: HashMap<OpHash, Pending>,
    refused: VecDeque<Refused>,
    strikes: HashMap<NodeId, VecDeque<Instant>>,
    admitted: BTreeSet<NodeId>,
    syncing: HashSet<NodeId>,
    /// Peers asked for a sync while one was running: run another when it ends.
    resync: HashSet<NodeId>,
    /// Peers whose federation has another genesis (misconfiguration, not malice).
    foreign: HashSet<NodeId>,
    /// Token buckets for their sync requests: (tokens, last refill).
    sync_budget: HashMap<NodeId, (f64, Instant)>,
    last_nack_retry: Option<Instant>,
    next_sync: usize,
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

fn fingerprint(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
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
    mut parts: FedParts,
    node: NodeServices,
    klp: Klp,
    events: broadcast::Receiver<KlpEvent>,
) {
    let cfg = node.config.boot().config.federation.klp.clone();
    let inbound = klp.take_inbound_sync();
    let (results_tx, results_rx) = mpsc::channel(64);
    let (persist_tx, mut persist_rx) = mpsc::channel::<(String, u64, Vec<u8>)>(PERSIST_QUEUE);
    let db = node.db.clone();
    let flushed = parts.flushed.take();
    // Joined at shutdown: the database closes after what is queued is stored.
    node.tasks.spawn("fed-persist", async move {
        // Ends when the actor stops (drops its sender), after storing what is queued.
        while let Some((hash, lamport, bytes)) = persist_rx.recv().await {
            if let Err(e) = db.insert_op(&hash, lamport, &bytes).await {
                warn!(op = %hash, error = %e, "cannot store a federation op; after a restart it is fetched again");
            }
        }
        if let Some(f) = flushed {
            let _ = f.send(true);
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
        pending: HashMap::new(),
        refused: VecDeque::new(),
        strikes: HashMap::new(),
        admitted: BTreeSet::new(),
        syncing: HashSet::new(),
        resync: HashSet::new(),
        foreign: HashSet::new(),
        sync_budget: HashMap::new(),
        last_nack_retry: None,
        next_sync: 0,
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
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        warn!(missed = n, "KLP events dropped; syncing with every peer");
                        let peers: Vec<NodeId> = self.admitted.iter().copied().collect();
                        for p in peers {
                            self.start_sync(p, 0, None);
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                Some(req) = async { match inbound.as_mut() { Some(r) => r.recv().await, None => std::future::pending().await } } => {
                    self.answer_sync(req);
                }
                Some((peer, res, round)) = results.recv() => self.on_sync_result(peer, res, round).await,
                _ = poll.tick() => {
                    self.poll_peers_list().await;
                    self.expire_pending().await;
                }
                _ = sync_tick.tick() => self.periodic().await,
            }
        }
    }

    fn enabled(&self) -> bool {
        self.core.log.is_some()
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
                let _ = reply.send(self.log_view());
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status_view());
            }
            Command::FindSnapshot {
                scope,
                snapshot_id,
                reply,
            } => {
                let found = self.core.log.as_ref().and_then(|log| {
                    log.iter().find_map(|op| match &op.unsigned.body {
                        OpBody::PublishConfig {
                            snapshot_id: id,
                            scope: s,
                            content,
                        } if *s == scope && *id == snapshot_id => Some(content.clone()),
                        _ => None,
                    })
                });
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
        let mut msg = Vec::with_capacity(bytes.len() + 1);
        msg.push(TAG_OP);
        msg.extend_from_slice(&bytes);
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
                if let Some(log) = self.core.log.as_mut()
                    && log.insert(op).is_ok()
                {
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
            Err(LogError::UnknownParents(_)) => {
                // Park it only if it is really signed (junk must not crowd out real ops),
                // within the budgets, then ask for the missing history.
                if let Err(e) = op.verify_signatures() {
                    self.refuse(Some(&op), from, &e).await;
                    return Err(());
                }
                let size = op.encode().len();
                let total: usize = self.pending.values().map(|p| p.bytes).sum();
                let from_source = self.pending.values().filter(|p| p.from == from).count();
                if self.pending.len() < MAX_PENDING
                    && total + size <= MAX_PENDING_BYTES
                    && from_source < MAX_PENDING_PER_SOURCE
                    && !self.pending.contains_key(&hash)
                {
                    self.pending.insert(
                        hash,
                        Pending {
                            op,
                            from,
                            since: Instant::now(),
                            bytes: size,
                        },
                    );
                } else {
                    debug!(op = %hash, "pending ops full; the op will come again by anti-entropy");
                }
                // The source may not be a direct neighbour: then any admitted peer.
                let ask = from
                    .filter(|f| self.admitted.contains(f))
                    .or_else(|| self.admitted.iter().next().copied());
                if let Some(p) = ask {
                    self.start_sync(p, 0, None);
                }
                Ok(false)
            }
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

    fn remember_refused(&mut self, op: Option<&Op>, from: Option<NodeId>, e: &LogError) {
        if self.refused.len() >= REFUSED_KEPT {
            self.refused.pop_front();
        }
        self.refused.push_back(Refused {
            at_ms: now_ms(),
            hash: op.map(Op::hash),
            author: op.map(|o| *o.author()),
            from,
            reason: e.to_string(),
        });
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
        if self.foreign.contains(&peer) {
            // Another federation's ops are invalid here by construction; not an attack.
            return;
        }
        let now = Instant::now();
        let q = self.strikes.entry(peer).or_default();
        q.push_back(now);
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) > STRIKE_WINDOW)
        {
            q.pop_front();
        }
        if q.len() as u32 >= STRIKES {
            q.clear();
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
            let ready: Vec<OpHash> = match &self.core.log {
                None => return grew,
                Some(log) => self
                    .pending
                    .iter()
                    .filter(|(_, p)| p.op.unsigned.parents.iter().all(|h| log.contains(h)))
                    .map(|(h, _)| *h)
                    .collect(),
            };
            if ready.is_empty() {
                return grew;
            }
            for h in ready {
                if let Some(p) = self.pending.remove(&h) {
                    grew |= self.ingest_op(p.op, p.from).await.unwrap_or(false);
                }
            }
        }
    }

    /// Drops ops whose parents never came. Not charged to anyone: an honest relay may
    /// hold ops whose history this node refuses (after an equivocation) or cannot reach.
    async fn expire_pending(&mut self) {
        let expired: Vec<OpHash> = self
            .pending
            .iter()
            .filter(|(_, p)| p.since.elapsed() > PENDING_TTL)
            .map(|(h, _)| *h)
            .collect();
        let mut changed = false;
        for h in expired {
            if let Some(p) = self.pending.remove(&h) {
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
                warn!(op = %h, "federation op dropped: its parents never arrived");
                self.remember_refused(Some(&p.op), p.from, &e);
                changed = true;
            }
        }
        if changed {
            self.publish_view(self.last_state.as_ref());
        }
    }

    async fn on_event(&mut self, ev: KlpEvent) {
        match ev {
            KlpEvent::Admitted { peer, .. } => {
                if let Ok(p) = peer.parse::<NodeId>() {
                    self.admitted.insert(p);
                    self.start_sync(p, 0, None);
                    self.gossip_own_statuses().await;
                }
            }
            KlpEvent::Disconnected { peer } => {
                if let Ok(p) = peer.parse::<NodeId>() {
                    self.admitted.remove(&p);
                }
            }
            KlpEvent::Message { from, data, .. } => {
                let from = from.parse::<NodeId>().ok();
                match data.split_first() {
                    Some((&TAG_OP, rest)) if self.enabled() => {
                        let mut grew = self.ingest(rest, from).await.unwrap_or(false);
                        grew |= self.retry_pending().await;
                        if grew {
                            self.on_changed(false).await;
                        } else {
                            self.publish_view(self.last_state.as_ref());
                        }
                    }
                    Some((&TAG_STATUS, rest)) => {
                        if let Some(f) = from {
                            self.on_status(f, rest);
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    fn on_status(&mut self, from: NodeId, bytes: &[u8]) {
        let Some((op, mut st)) = decode_status(bytes) else {
            debug!(peer = %from, "undecodable config status");
            return;
        };
        // Only statuses about a scope's current snapshot are kept (bounds memory), and
        // only what the op does not already say.
        let Some((scope, published)) = self
            .last_state
            .as_ref()
            .and_then(|s| s.config.iter().find(|(_, p)| p.op == op))
        else {
            return;
        };
        st.scope = scope.clone();
        st.snapshot_id = published.snapshot_id.clone();
        // Verdicts about older snapshots go.
        let current: HashSet<OpHash> = self
            .last_state
            .as_ref()
            .map(|s| s.config.values().map(|p| p.op).collect())
            .unwrap_or_default();
        self.statuses.retain(|k, _| current.contains(k));
        let entry = self.statuses.entry(op).or_default();
        if entry.get(&from).is_none_or(|old| old.at_ms <= st.at_ms) {
            entry.insert(from, st);
        }
    }

    /// Asks `peer` for the ops this node misses (one page; `after` continues a run).
    fn start_sync(&mut self, peer: NodeId, round: u32, after: Option<(u64, OpHash)>) {
        let Some(log) = &self.core.log else { return };
        if round == 0 && !self.syncing.insert(peer) {
            // One is running: run another when it ends (it may predate what we now miss).
            self.resync.insert(peer);
            return;
        }
        let request = SyncRequest {
            genesis: ByteBuf::from(log.genesis_id().to_vec()),
            heads: log
                .heads()
                .into_iter()
                .take(MAX_HEADS)
                .map(|h| ByteBuf::from(h.0.to_vec()))
                .collect(),
            after: after.map(|(l, h)| (l, ByteBuf::from(h.0.to_vec()))),
        };
        let mut body = Vec::new();
        if ciborium::into_writer(&request, &mut body).is_err() {
            self.syncing.remove(&peer);
            return;
        }
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
        self.syncing.remove(&peer);
        if self.resync.remove(&peer) && self.admitted.contains(&peer) {
            self.start_sync(peer, 0, None);
        }
    }

    async fn on_sync_result(
        &mut self,
        peer: NodeId,
        res: Result<SyncResponse, String>,
        round: u32,
    ) {
        let resp = match res {
            Ok(r) => r,
            Err(e) => {
                debug!(peer = %peer, error = %e, "sync failed");
                self.end_sync(peer);
                return;
            }
        };
        let ours = self.core.log.as_ref().map(Log::genesis_id);
        if ours.is_some_and(|g| g.as_slice() != resp.genesis.as_slice()) {
            if self.foreign.insert(peer) {
                warn!(peer = %peer, "this peer's federation has other admins (federation.klp.admins or admin_threshold differ): its ops are ignored");
            }
            self.end_sync(peer);
            return;
        }
        self.foreign.remove(&peer);
        let page = self.ingest_page(peer, &resp.ops).await;
        if page.grew {
            self.on_changed(false).await;
        } else {
            self.publish_view(self.last_state.as_ref());
        }
        match page.last {
            Some(last) if resp.more && round + 1 < MAX_SYNC_ROUNDS => {
                self.start_sync(peer, round + 1, Some(last));
            }
            _ => self.end_sync(peer),
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
        let now = Instant::now();
        let (tokens, last) = self
            .sync_budget
            .entry(req.peer)
            .or_insert((SYNC_BURST, now));
        *tokens =
            (*tokens + now.duration_since(*last).as_secs_f64() * SYNC_RATE_PER_SEC).min(SYNC_BURST);
        *last = now;
        let allowed = *tokens >= 1.0;
        if allowed {
            *tokens -= 1.0;
        }
        if self.sync_budget.len() > 4096 {
            self.sync_budget
                .retain(|_, (_, t)| now.duration_since(*t) < Duration::from_secs(60));
        }
        let Some(log) = &self.core.log else {
            return;
        };
        let genesis = ByteBuf::from(log.genesis_id().to_vec());
        let empty = |genesis| SyncResponse {
            genesis,
            ops: Vec::new(),
            more: false,
        };
        // Over the rate limit, the request is not even decoded.
        let request = if allowed {
            SyncRequest::decode(&req.body).ok()
        } else {
            debug!(peer = %req.peer, "sync request over the rate limit");
            None
        };
        let answer = match request {
            Some(r) if r.genesis == genesis => {
                let heads: Vec<OpHash> = r
                    .heads
                    .iter()
                    .filter_map(|h| <[u8; 32]>::try_from(h.as_slice()).ok().map(OpHash))
                    .collect();
                let after: Option<(u64, OpHash)> = r.after.and_then(|(l, h)| {
                    <[u8; 32]>::try_from(h.as_slice())
                        .ok()
                        .map(|h| (l, OpHash(h)))
                });
                let mut ops = Vec::new();
                let mut size = 0;
                let mut more = false;
                for op in log.ops_after(&heads) {
                    if after.is_some_and(|a| (op.unsigned.lamport, op.hash()) <= a) {
                        continue;
                    }
                    let b = op.encode();
                    if !ops.is_empty()
                        && (size + b.len() > kos_klp::SYNC_RESPONSE_BUDGET
                            || ops.len() >= MAX_OPS_PER_ANSWER)
                    {
                        more = true;
                        break;
                    }
                    size += b.len();
                    ops.push(ByteBuf::from(b));
                }
                SyncResponse { genesis, ops, more }
            }
            _ => empty(genesis),
        };
        let mut body = Vec::new();
        if ciborium::into_writer(&answer, &mut body).is_ok() {
            let _ = req.reply.send(body);
        }
    }

    async fn periodic(&mut self) {
        if let Ok(peers) = self.klp.peers().await {
            self.admitted = peers
                .iter()
                .filter(|p| p.connected && p.state == kos_klp::HandshakeState::Admitted)
                .filter_map(|p| p.id.parse().ok())
                .collect();
        }
        if !self.admitted.is_empty() {
            let i = self.next_sync % self.admitted.len();
            self.next_sync = self.next_sync.wrapping_add(1);
            if let Some(p) = self.admitted.iter().nth(i).copied() {
                self.start_sync(p, 0, None);
            }
        }
        // A snapshot refused here is tried again, at most every NACK_RETRY_INTERVALS sync
        // intervals: the operator may have fixed what made it fail (the verdict and event
        // change only if the outcome does).
        let due = self
            .last_nack_retry
            .is_none_or(|t| t.elapsed() >= self.sync_interval * NACK_RETRY_INTERVALS);
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
            self.last_nack_retry = Some(Instant::now());
        }
        for (scope, p) in retry {
            self.apply_snapshot(&scope, &p).await;
        }
        self.gossip_own_statuses().await;
    }

    async fn gossip_own_statuses(&mut self) {
        let statuses: Vec<ConfigStatus> = self
            .own
            .iter()
            .map(|(scope, (op, status, errors))| ConfigStatus {
                op: op.to_string(),
                scope: scope.clone(),
                snapshot_id: self.snapshot_of(op).unwrap_or_default(),
                status: *status,
                errors: errors.clone(),
                at_ms: now_ms(),
            })
            .collect();
        for st in statuses {
            if let Ok(json) = serde_json::to_vec(&st) {
                let mut msg = vec![TAG_STATUS];
                msg.extend_from_slice(&json);
                let _ = self.klp.publish("", msg).await;
            }
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
        let mut denied: Vec<NodeId> = self.core.peers.blocked.iter().map(|b| b.id).collect();
        if let Some(state) = &state {
            denied.extend(state.revoked.keys().copied());
        }
        denied.sort();
        denied.dedup();
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
        let blocked: BTreeSet<NodeId> = self.core.peers.blocked.iter().map(|b| b.id).collect();
        let local_admin = self
            .core
            .admin_key
            .as_ref()
            .map(|k| NodeId::from_public_key(k.verifying_key()).to_string());
        let view = match (state, &self.core.log) {
            (Some(state), Some(log)) => FedView {
                enabled: true,
                admins: state.admins.iter().map(ToString::to_string).collect(),
                threshold: state.threshold,
                local_admin: local_admin.clone(),
                approved: state
                    .approved
                    .iter()
                    .map(|(id, a)| ApprovedView {
                        id: id.to_string(),
                        addrs: a.addrs.clone(),
                        label: a.label.clone(),
                        op: a.op.to_string(),
                        blocked_locally: blocked.contains(id),
                    })
                    .collect(),
                revoked: state
                    .revoked
                    .iter()
                    .map(|(id, r)| RevokedView {
                        id: id.to_string(),
                        reason: r.reason.clone(),
                        op: r.op.to_string(),
                    })
                    .collect(),
                blocked: blocked.iter().map(ToString::to_string).collect(),
                config: state
                    .config
                    .iter()
                    .map(|(scope, p)| {
                        let own = self.own.get(scope).filter(|o| o.0 == p.op);
                        ScopeView {
                            scope: scope.clone(),
                            snapshot_id: p.snapshot_id.clone(),
                            op: p.op.to_string(),
                            status: own.map_or(StatusKind::Pending, |o| o.1),
                            errors: own.map(|o| o.2.clone()).unwrap_or_default(),
                        }
                    })
                    .collect(),
                ops: log.len(),
                heads: log.heads().iter().map(ToString::to_string).collect(),
                pending: self.pending.len(),
            },
            _ => FedView {
                blocked: blocked.iter().map(ToString::to_string).collect(),
                local_admin: local_admin.clone(),
                ..FedView::default()
            },
        };
        self.parts.view.send_replace(Arc::new(view));
    }

    fn log_view(&self) -> Vec<OpView> {
        let mut out: Vec<OpView> = match &self.core.log {
            None => Vec::new(),
            Some(log) => log.iter().map(|op| op_view(op, "valid".into())).collect(),
        };
        for r in &self.refused {
            out.push(OpView {
                hash: r.hash.map(|h| h.to_string()).unwrap_or_default(),
                author: r.author.map(|a| a.to_string()).unwrap_or_default(),
                seq: 0,
                lamport: 0,
                timestamp_ms: r.at_ms,
                parents: Vec::new(),
                signers: Vec::new(),
                kind: "refused",
                summary: r
                    .from
                    .map(|f| format!("from {f}"))
                    .unwrap_or_else(|| "submitted here".into()),
                validity: format!("refused: {}", r.reason),
            });
        }
        out
    }

    fn status_view(&self) -> Vec<ScopeStatus> {
        let Some(state) = &self.last_state else {
            return Vec::new();
        };
        let me = self.klp.local_id();
        let mut peers: BTreeSet<NodeId> = state.approved.keys().copied().collect();
        peers.extend(self.core.peers.local.iter().map(|e| e.id));
        peers.remove(&me);
        state
            .config
            .iter()
            .map(|(scope, p)| {
                let theirs = self.statuses.get(&p.op);
                let mut rows = vec![match self.own.get(scope).filter(|o| o.0 == p.op) {
                    Some((_, st, errs)) => PeerStatus {
                        peer: me.to_string(),
                        this_node: true,
                        status: *st,
                        errors: errs.clone(),
                        at_ms: None,
                    },
                    None => PeerStatus {
                        peer: me.to_string(),
                        this_node: true,
                        status: StatusKind::Pending,
                        errors: Vec::new(),
                        at_ms: None,
                    },
                }];
                for peer in &peers {
                    let st = theirs.and_then(|m| m.get(peer));
                    rows.push(PeerStatus {
                        peer: peer.to_string(),
                        this_node: false,
                        status: st.map_or(StatusKind::Pending, |s| s.status),
                        errors: st.map(|s| s.errors.clone()).unwrap_or_default(),
                        at_ms: st.map(|s| s.at_ms),
                    });
                }
                ScopeStatus {
                    scope: scope.clone(),
                    snapshot_id: p.snapshot_id.clone(),
                    op: p.op.to_string(),
                    peers: rows,
                }
            })
            .collect()
    }
}

fn kind(body: &OpBody) -> &'static str {
    match body {
        OpBody::ApprovePeer { .. } => "approve_peer",
        OpBody::RevokePeer { .. } => "revoke_peer",
        OpBody::AddAdmin { .. } => "add_admin",
        OpBody::RemoveAdmin { .. } => "remove_admin",
        OpBody::PublishConfig { .. } => "publish_config",
    }
}

fn op_view(op: &Op, validity: String) -> OpView {
    let u = &op.unsigned;
    let summary = match &u.body {
        OpBody::ApprovePeer { peer, addrs, label } => format!(
            "approve {peer}{}{}",
            label
                .as_deref()
                .map(|l| format!(" ({l})"))
                .unwrap_or_default(),
            if addrs.is_empty() {
                String::new()
            } else {
                format!(" at {}", addrs.join(" "))
            }
        ),
        OpBody::RevokePeer { peer, reason } => format!("revoke {peer}: {reason}"),
        OpBody::AddAdmin { admin } => format!("add admin {admin}"),
        OpBody::RemoveAdmin { admin } => format!("remove admin {admin}"),
        OpBody::PublishConfig {
            snapshot_id, scope, ..
        } => format!(
            "publish `{scope}` snapshot {}",
            &snapshot_id[..snapshot_id.len().min(12)]
        ),
    };
    OpView {
        hash: op.hash().to_string(),
        author: u.author.to_string(),
        seq: u.seq,
        lamport: u.lamport,
        timestamp_ms: u.timestamp_ms,
        parents: u.parents.iter().map(ToString::to_string).collect(),
        signers: op.signatures.iter().map(|(s, _)| s.to_string()).collect(),
        kind: kind(&u.body),
        summary,
        validity,
    }
}

/// A stable metric label for a refusal.
fn reason(e: &LogError) -> &'static str {
    match e {
        LogError::TooLarge { .. } => "too_large",
        LogError::Malformed(_) => "malformed",
        LogError::InvalidGenesis(_) => "invalid_genesis",
        LogError::WrongSigningKey => "wrong_signing_key",
        LogError::AlreadyKnown(_) => "already_known",
        LogError::UnknownParents(_) => "unknown_parents",
        LogError::BadLamport { .. } => "bad_lamport",
        LogError::BadSignature { .. } => "bad_signature",
        LogError::NotAdmin { .. } => "not_admin",
        LogError::BelowThreshold { .. } => "below_threshold",
        LogError::SeqGap { .. } => "seq_gap",
        LogError::Equivocation { .. } => "equivocation",
        LogError::WouldBreakAdminSet { .. } => "would_break_admin_set",
    }
}

/// Decodes an unsigned draft (for the CLI, which signs it with key files).
pub fn decode_draft(bytes: &[u8]) -> Result<UnsignedOp, LogError> {
    UnsignedOp::decode(bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cbor<T: Serialize>(v: &T) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(v, &mut out).unwrap();
        out
    }

    fn text(out: &mut Vec<u8>, s: &str) {
        out.push(0x60 | s.len() as u8);
        out.extend_from_slice(s.as_bytes());
    }

    /// Issue 10: a sync answer or request with more entries than a node ever sends is
    /// refused while it is decoded, definite or indefinite length, so a peer's 1 MiB answer
    /// of one-byte empty strings cannot become a million `ByteBuf`s.
    #[test]
    fn sync_messages_with_too_many_entries_are_refused_while_decoding() {
        let answer = |n| SyncResponse {
            genesis: ByteBuf::from(vec![7; 32]),
            ops: vec![ByteBuf::new(); n],
            more: false,
        };
        let ok =
            ciborium::from_reader::<SyncResponse, _>(cbor(&answer(MAX_OPS_PER_ANSWER)).as_slice())
                .unwrap();
        assert_eq!(ok.ops.len(), MAX_OPS_PER_ANSWER);
        assert!(
            ciborium::from_reader::<SyncResponse, _>(
                cbor(&answer(MAX_OPS_PER_ANSWER + 1)).as_slice()
            )
            .is_err()
        );
        // The same with an indefinite-length array (no length to check up front), and far
        // more entries than the limit: refused at entry MAX_OPS_PER_ANSWER + 1.
        let mut raw = vec![0xa3];
        text(&mut raw, "genesis");
        raw.push(0x40);
        text(&mut raw, "ops");
        raw.push(0x9f);
        raw.extend(std::iter::repeat_n(0x40, 1024 * 1024));
        raw.push(0xff);
        text(&mut raw, "more");
        raw.push(0xf4);
        assert!(ciborium::from_reader::<SyncResponse, _>(raw.as_slice()).is_err());

        let request = |n| SyncRequest {
            genesis: ByteBuf::from(vec![7; 32]),
            heads: vec![ByteBuf::from(vec![1; 32]); n],
            after: None,
        };
        let ok =
            ciborium::from_reader::<SyncRequest, _>(cbor(&request(MAX_HEADS)).as_slice()).unwrap();
        assert_eq!(ok.heads.len(), MAX_HEADS);
        assert!(
            ciborium::from_reader::<SyncRequest, _>(cbor(&request(MAX_HEADS + 1)).as_slice())
                .is_err()
        );
    }
}
