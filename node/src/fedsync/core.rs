//! The sync actor's decisions, without I/O: which peer to sync with and when a run ends,
//! which ops wait for parents, who gets a strike or a penalty, which sync requests are
//! answered, which refusals are remembered, when a refused snapshot is tried again and
//! which peers' verdicts are kept. Every method takes the time it needs as a parameter;
//! the shell (`fedsync.rs`) does what the answers say (KLP calls, storage, files, events).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use kos_klp::NodeId;
use kos_map_protocol::fedlog::{LogError, Op, OpHash, State};

use super::limits::{NACK_RETRY_INTERVALS, REFUSED_KEPT};
use super::pending::{NotParked, Pending, PendingOps};
use super::rate::SyncRateLimit;
use super::strikes::Strikes;
use super::wire::ConfigStatus;

/// A refused op, kept for `kos federation log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub at_ms: u64,
    pub hash: Option<OpHash>,
    pub author: Option<NodeId>,
    pub from: Option<NodeId>,
    pub reason: String,
}

impl Refused {
    pub fn new(at_ms: u64, op: Option<&Op>, from: Option<NodeId>, e: &LogError) -> Self {
        Self {
            at_ms,
            hash: op.map(Op::hash),
            author: op.map(|o| *o.author()),
            from,
            reason: e.to_string(),
        }
    }
}

/// What a sync answer's genesis means.
#[derive(Debug, PartialEq, Eq)]
pub enum Genesis {
    /// This node's federation.
    Ours,
    /// Another federation's (`first`: not known as such before: worth a warning).
    Foreign { first: bool },
}

/// Whether to start a sync run (or one page of it) now.
#[derive(Debug, PartialEq, Eq)]
pub enum Begin {
    Start,
    /// A run is in flight: another starts when it ends.
    Queued,
}

/// The decision state of the sync actor.
#[derive(Debug)]
pub struct SyncCore {
    pending: PendingOps,
    strikes: Strikes,
    rate: SyncRateLimit,
    admitted: BTreeSet<NodeId>,
    syncing: HashSet<NodeId>,
    /// Peers asked for a sync while one was running: run another when it ends.
    resync: HashSet<NodeId>,
    /// Peers whose federation has another genesis (misconfiguration, not malice).
    foreign: HashSet<NodeId>,
    next_sync: usize,
    refused: VecDeque<Refused>,
    last_nack_retry: Option<Instant>,
    nack_retry_every: Duration,
}

impl SyncCore {
    /// `epoch`: the time the core starts at; `sync_interval`: `federation.klp.sync_interval`.
    pub fn new(epoch: Instant, sync_interval: Duration) -> Self {
        Self {
            pending: PendingOps::default(),
            strikes: Strikes::default(),
            rate: SyncRateLimit::new(epoch),
            admitted: BTreeSet::new(),
            syncing: HashSet::new(),
            resync: HashSet::new(),
            foreign: HashSet::new(),
            next_sync: 0,
            refused: VecDeque::new(),
            last_nack_retry: None,
            nack_retry_every: sync_interval * NACK_RETRY_INTERVALS,
        }
    }

    // --- admitted peers

    pub fn admitted(&mut self, peer: NodeId) {
        self.admitted.insert(peer);
    }

    pub fn disconnected(&mut self, peer: &NodeId) {
        self.admitted.remove(peer);
    }

    /// The swarm's list of admitted peers, as polled.
    pub fn set_admitted(&mut self, peers: impl IntoIterator<Item = NodeId>) {
        self.admitted = peers.into_iter().collect();
    }

    pub fn admitted_peers(&self) -> Vec<NodeId> {
        self.admitted.iter().copied().collect()
    }

    // --- sync runs

    /// Page `round` of a run with `peer` is about to be asked for. A new run (`round` 0)
    /// while one is in flight is queued instead.
    pub fn begin_sync(&mut self, peer: NodeId, round: u32) -> Begin {
        if round == 0 && !self.syncing.insert(peer) {
            self.resync.insert(peer);
            return Begin::Queued;
        }
        Begin::Start
    }

    /// A page could not be asked for: the run is over, without a queued one.
    pub fn abort_sync(&mut self, peer: &NodeId) {
        self.syncing.remove(peer);
    }

    /// A run ended; `true` when another must start now (one was asked for meanwhile and
    /// the peer is still admitted).
    pub fn end_sync(&mut self, peer: &NodeId) -> bool {
        self.syncing.remove(peer);
        self.resync.remove(peer) && self.admitted.contains(peer)
    }

    /// The peer for the periodic run: the admitted peers in turn.
    pub fn next_periodic(&mut self) -> Option<NodeId> {
        if self.admitted.is_empty() {
            return None;
        }
        let i = self.next_sync % self.admitted.len();
        self.next_sync = self.next_sync.wrapping_add(1);
        self.admitted.iter().nth(i).copied()
    }

    /// Whom to ask for the missing history of an op from `from`: the source if it is a
    /// neighbour, else any admitted peer.
    pub fn ask_for_parents(&self, from: Option<NodeId>) -> Option<NodeId> {
        from.filter(|f| self.admitted.contains(f))
            .or_else(|| self.admitted.iter().next().copied())
    }

    /// Notes which federation a sync answer of `peer` is from.
    pub fn answer_genesis(&mut self, peer: NodeId, same: bool) -> Genesis {
        if same {
            self.foreign.remove(&peer);
            Genesis::Ours
        } else {
            Genesis::Foreign {
                first: self.foreign.insert(peer),
            }
        }
    }

    /// Whether a sync request of `peer` at `now` is answered (rate limit).
    pub fn allow_answer(&mut self, peer: NodeId, now: Instant) -> bool {
        self.rate.allow(peer, now)
    }

    // --- invalid ops

    /// A strike against `peer`; `true` when it must be penalized now. Peers of another
    /// federation are not charged: its ops are invalid here by construction.
    pub fn strike(&mut self, peer: NodeId, now: Instant) -> bool {
        !self.foreign.contains(&peer) && self.strikes.strike(peer, now)
    }

    /// Remembers a refusal (the oldest go first past [`REFUSED_KEPT`]).
    pub fn remember_refused(&mut self, r: Refused) {
        if self.refused.len() >= REFUSED_KEPT {
            self.refused.pop_front();
        }
        self.refused.push_back(r);
    }

    pub fn refused(&self) -> impl Iterator<Item = &Refused> {
        self.refused.iter()
    }

    // --- ops waiting for parents

    pub fn park(
        &mut self,
        op: Op,
        from: Option<NodeId>,
        bytes: usize,
        now: Instant,
    ) -> Result<(), NotParked> {
        self.pending.park(op, from, bytes, now)
    }

    pub fn take_ready(&mut self, known: impl Fn(&OpHash) -> bool) -> Vec<Pending> {
        self.pending.take_ready(known)
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// The periodic clean-up at `now`: returns the ops whose parents never came; forgets
    /// old strikes and refilled rate-limit states.
    pub fn housekeep(&mut self, now: Instant) -> Vec<Pending> {
        self.rate.housekeep(now);
        self.strikes.forget_old(now);
        self.pending.expire(now)
    }

    // --- refused snapshots

    /// Whether refused snapshots may be tried again at `now`.
    pub fn nack_retry_due(&self, now: Instant) -> bool {
        self.last_nack_retry
            .is_none_or(|t| now.saturating_duration_since(t) >= self.nack_retry_every)
    }

    pub fn nack_retried(&mut self, now: Instant) {
        self.last_nack_retry = Some(now);
    }
}

/// Peers' verdicts by op.
pub type Statuses = HashMap<OpHash, BTreeMap<NodeId, ConfigStatus>>;

/// Keeps `from`'s verdict `st` on `op` if `op` is a scope's current snapshot in `state`
/// (completed with what the op says) and no newer verdict of `from` is kept; verdicts on
/// older snapshots go. Returns whether it was kept.
pub fn record_status(
    statuses: &mut Statuses,
    state: Option<&State>,
    from: NodeId,
    op: OpHash,
    mut st: ConfigStatus,
) -> bool {
    let Some(state) = state else { return false };
    let Some((scope, published)) = state.config.iter().find(|(_, p)| p.op == op) else {
        return false;
    };
    st.scope = scope.clone();
    st.snapshot_id = published.snapshot_id.clone();
    let current: HashSet<OpHash> = state.config.values().map(|p| p.op).collect();
    statuses.retain(|k, _| current.contains(k));
    let entry = statuses.entry(op).or_default();
    if entry.get(&from).is_none_or(|old| old.at_ms <= st.at_ms) {
        entry.insert(from, st);
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::fedsync::limits::{PENDING_TTL, STRIKE_WINDOW, SYNC_BURST};
    use crate::fedsync::pending::tests::{chain, id};
    use crate::fedsync::wire::StatusKind;
    use kos_map_protocol::fedlog::Published;

    fn core(t0: Instant) -> SyncCore {
        SyncCore::new(t0, Duration::from_secs(10))
    }

    #[test]
    fn a_run_asked_for_while_one_is_in_flight_starts_when_it_ends() {
        let mut c = core(Instant::now());
        c.admitted(id(1));
        assert_eq!(c.begin_sync(id(1), 0), Begin::Start);
        assert_eq!(c.begin_sync(id(1), 0), Begin::Queued);
        // Later pages of the running run are not queued.
        assert_eq!(c.begin_sync(id(1), 1), Begin::Start);
        assert!(c.end_sync(&id(1)), "the queued run starts");
        assert_eq!(c.begin_sync(id(1), 0), Begin::Start);
        assert!(!c.end_sync(&id(1)), "nothing queued");
        // A queued run for a peer that went away is dropped.
        c.begin_sync(id(1), 0);
        c.begin_sync(id(1), 0);
        c.disconnected(&id(1));
        assert!(!c.end_sync(&id(1)));
    }

    #[test]
    fn periodic_runs_take_the_admitted_peers_in_turn() {
        let mut c = core(Instant::now());
        assert_eq!(c.next_periodic(), None);
        c.set_admitted([id(1), id(2), id(3)]);
        let mut seen: Vec<NodeId> = (0..6).filter_map(|_| c.next_periodic()).collect();
        assert_eq!(seen[..3], seen[3..]);
        seen.truncate(3);
        seen.sort();
        let mut all = vec![id(1), id(2), id(3)];
        all.sort();
        assert_eq!(seen, all);
    }

    #[test]
    fn missing_parents_are_asked_of_the_source_or_any_neighbour() {
        let mut c = core(Instant::now());
        assert_eq!(c.ask_for_parents(Some(id(1))), None);
        c.admitted(id(2));
        assert_eq!(c.ask_for_parents(Some(id(1))), Some(id(2)));
        assert_eq!(c.ask_for_parents(None), Some(id(2)));
        c.admitted(id(1));
        assert_eq!(c.ask_for_parents(Some(id(1))), Some(id(1)));
    }

    #[test]
    fn a_foreign_peer_is_warned_about_once_and_never_struck() {
        let t0 = Instant::now();
        let mut c = core(t0);
        assert_eq!(
            c.answer_genesis(id(1), false),
            Genesis::Foreign { first: true }
        );
        assert_eq!(
            c.answer_genesis(id(1), false),
            Genesis::Foreign { first: false }
        );
        for i in 0..10 {
            assert!(!c.strike(id(1), t0 + Duration::from_secs(i)));
        }
        // Back in this federation: struck as anyone.
        assert_eq!(c.answer_genesis(id(1), true), Genesis::Ours);
        assert!(!c.strike(id(1), t0));
        assert!(!c.strike(id(1), t0));
        assert!(c.strike(id(1), t0 + STRIKE_WINDOW));
    }

    #[test]
    fn sync_answers_are_rate_limited_per_peer() {
        let t0 = Instant::now();
        let mut c = core(t0);
        let allowed = (0..20).filter(|_| c.allow_answer(id(1), t0)).count();
        assert_eq!(allowed, SYNC_BURST as usize);
        assert!(c.allow_answer(id(2), t0));
        assert!(c.allow_answer(id(1), t0 + Duration::from_secs(1)));
    }

    #[test]
    fn housekeeping_expires_pending_ops_at_the_ttl() {
        let t0 = Instant::now();
        let mut c = core(t0);
        let (_, ops) = chain(2);
        c.park(ops[1].clone(), Some(id(3)), 10, t0).unwrap();
        assert!(c.housekeep(t0 + PENDING_TTL).is_empty());
        assert_eq!(c.pending_len(), 1);
        let gone = c.housekeep(t0 + PENDING_TTL + Duration::from_secs(1));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].from, Some(id(3)));
        assert_eq!(c.pending_len(), 0);
    }

    #[test]
    fn refusals_kept_are_bounded_oldest_first() {
        let mut c = core(Instant::now());
        let e = LogError::WrongSigningKey;
        for i in 0..(REFUSED_KEPT as u64 + 5) {
            c.remember_refused(Refused::new(i, None, None, &e));
        }
        let kept: Vec<u64> = c.refused().map(|r| r.at_ms).collect();
        assert_eq!(kept.len(), REFUSED_KEPT);
        assert_eq!(kept[0], 5);
    }

    #[test]
    fn a_refused_snapshot_is_retried_every_three_intervals() {
        let t0 = Instant::now();
        let mut c = core(t0);
        assert!(c.nack_retry_due(t0));
        c.nack_retried(t0);
        assert!(!c.nack_retry_due(t0 + Duration::from_secs(29)));
        assert!(c.nack_retry_due(t0 + Duration::from_secs(30)));
    }

    #[test]
    fn only_verdicts_on_current_snapshots_are_kept_newest_first() {
        let (op_a, op_b) = (OpHash([1; 32]), OpHash([2; 32]));
        let mut state = State {
            admins: BTreeSet::new(),
            threshold: 1,
            approved: BTreeMap::new(),
            revoked: BTreeMap::new(),
            config: BTreeMap::from([(
                "models".to_string(),
                Published {
                    snapshot_id: "s1".into(),
                    content: String::new(),
                    op: op_a,
                },
            )]),
        };
        let st = |op: OpHash, at_ms| ConfigStatus {
            op: op.to_string(),
            scope: "forged".into(),
            snapshot_id: "forged".into(),
            status: StatusKind::Ack,
            errors: Vec::new(),
            at_ms,
        };
        let mut s = Statuses::new();
        assert!(!record_status(&mut s, None, id(1), op_a, st(op_a, 1)));
        assert!(!record_status(
            &mut s,
            Some(&state),
            id(1),
            op_b,
            st(op_b, 1)
        ));
        assert!(record_status(
            &mut s,
            Some(&state),
            id(1),
            op_a,
            st(op_a, 5)
        ));
        let kept = &s[&op_a][&id(1)];
        assert_eq!(
            (kept.scope.as_str(), kept.snapshot_id.as_str()),
            ("models", "s1")
        );
        assert!(!record_status(
            &mut s,
            Some(&state),
            id(1),
            op_a,
            st(op_a, 4)
        ));
        assert!(record_status(
            &mut s,
            Some(&state),
            id(1),
            op_a,
            st(op_a, 5)
        ));
        // A new snapshot of the scope: verdicts on the old one go.
        state.config.get_mut("models").unwrap().op = op_b;
        assert!(record_status(
            &mut s,
            Some(&state),
            id(2),
            op_b,
            st(op_b, 1)
        ));
        assert!(!s.contains_key(&op_a));
    }
}
