//! What the API shows of the federation: the derived view, the log with the refused ops,
//! and the per-peer verdicts. Pure functions of the actor's state.

use std::collections::{BTreeMap, BTreeSet};

use kos_klp::{NodeId, PeersFile};
use kos_map_protocol::fedlog::{Log, LogError, Op, OpBody, OpHash, State};
use serde::Serialize;

use super::core::{Refused, Statuses};
use super::wire::StatusKind;

/// This node's verdict per scope: (op, status, errors).
pub type Own = BTreeMap<String, (OpHash, StatusKind, Vec<String>)>;

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

/// The view of `state` (`None` when federation sync is off).
pub fn fed_view(
    state: Option<&State>,
    log: Option<&Log>,
    peers: &PeersFile,
    local_admin: Option<String>,
    own: &Own,
    pending: usize,
) -> FedView {
    let blocked: BTreeSet<NodeId> = peers.blocked.iter().map(|b| b.id).collect();
    let (Some(state), Some(log)) = (state, log) else {
        return FedView {
            blocked: blocked.iter().map(ToString::to_string).collect(),
            local_admin,
            ..FedView::default()
        };
    };
    FedView {
        enabled: true,
        admins: state.admins.iter().map(ToString::to_string).collect(),
        threshold: state.threshold,
        local_admin,
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
                let own = own.get(scope).filter(|o| o.0 == p.op);
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
        pending,
    }
}

/// Every op in the total order, then the recently refused ones.
pub fn log_view<'a>(log: Option<&Log>, refused: impl Iterator<Item = &'a Refused>) -> Vec<OpView> {
    let mut out: Vec<OpView> = match log {
        None => Vec::new(),
        Some(log) => log.iter().map(|op| op_view(op, "valid".into())).collect(),
    };
    for r in refused {
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

/// Per scope, this node's verdict (`me`) and every other known peer's: the federation's
/// approved peers and the operator's entries.
pub fn status_view(
    state: Option<&State>,
    me: NodeId,
    peers_file: &PeersFile,
    own: &Own,
    statuses: &Statuses,
) -> Vec<ScopeStatus> {
    let Some(state) = state else {
        return Vec::new();
    };
    let mut peers: BTreeSet<NodeId> = state.approved.keys().copied().collect();
    peers.extend(peers_file.local.iter().map(|e| e.id));
    peers.remove(&me);
    state
        .config
        .iter()
        .map(|(scope, p)| {
            let theirs = statuses.get(&p.op);
            let mine = own.get(scope).filter(|o| o.0 == p.op);
            let mut rows = vec![PeerStatus {
                peer: me.to_string(),
                this_node: true,
                status: mine.map_or(StatusKind::Pending, |o| o.1),
                errors: mine.map(|o| o.2.clone()).unwrap_or_default(),
                at_ms: None,
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

pub fn kind(body: &OpBody) -> &'static str {
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
pub fn reason(e: &LogError) -> &'static str {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::fedsync::pending::tests::{chain, id};

    #[test]
    fn the_log_view_lists_ops_then_refusals() {
        let (log, ops) = chain(2);
        let refused = [Refused::new(
            7,
            None,
            Some(id(5)),
            &LogError::WrongSigningKey,
        )];
        let v = log_view(Some(&log), refused.iter());
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].hash, ops[0].hash().to_string());
        assert_eq!(v[0].kind, "approve_peer");
        assert!(
            v[0].summary
                .starts_with(&format!("approve {} (peer 100)", id(100)))
        );
        assert_eq!(v[2].kind, "refused");
        assert_eq!(v[2].summary, format!("from {}", id(5)));
        assert!(v[2].validity.starts_with("refused: "));
    }

    #[test]
    fn the_view_marks_locally_blocked_approvals() {
        let (log, _) = chain(1);
        let state = log.state();
        let peers = PeersFile {
            blocked: vec![kos_klp::Blocked {
                id: id(100),
                reason: None,
                line: 1,
            }],
            ..PeersFile::default()
        };
        let v = fed_view(Some(&state), Some(&log), &peers, None, &Own::new(), 3);
        assert!(v.enabled && v.approved[0].blocked_locally);
        assert_eq!((v.ops, v.pending, v.blocked.len()), (1, 3, 1));
        let off = fed_view(None, None, &peers, Some("me".into()), &Own::new(), 0);
        assert!(!off.enabled && off.approved.is_empty());
        assert_eq!(off.local_admin.as_deref(), Some("me"));
    }
}
