//! Ops whose parents are unknown, held while the parents are fetched: bounded in number,
//! in bytes and per source, and dropped after [`PENDING_TTL`]. Time is a parameter.

use std::collections::HashMap;
use std::time::Instant;

use kos_klp::NodeId;
use kos_map_protocol::fedlog::{Op, OpHash};

use super::limits::{MAX_PENDING, MAX_PENDING_BYTES, MAX_PENDING_PER_SOURCE, PENDING_TTL};

/// One op waiting for its parents.
#[derive(Debug)]
pub struct Pending {
    pub op: Op,
    /// The gossip source; `None` for ops from a sync answer.
    pub from: Option<NodeId>,
    pub since: Instant,
    pub bytes: usize,
}

/// Why an op was not parked.
#[derive(Debug, PartialEq, Eq)]
pub enum NotParked {
    AlreadyPending,
    Full,
    TooManyBytes,
    SourceFull,
}

/// The waiting ops, with their byte and per-source counts kept up to date.
#[derive(Debug, Default)]
pub struct PendingOps {
    ops: HashMap<OpHash, Pending>,
    bytes: usize,
    per_source: HashMap<Option<NodeId>, usize>,
}

impl PendingOps {
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Holds `op` (of `bytes` bytes on the wire) if every budget allows it.
    pub fn park(
        &mut self,
        op: Op,
        from: Option<NodeId>,
        bytes: usize,
        now: Instant,
    ) -> Result<(), NotParked> {
        let hash = op.hash();
        if self.ops.len() >= MAX_PENDING {
            return Err(NotParked::Full);
        }
        if self.bytes + bytes > MAX_PENDING_BYTES {
            return Err(NotParked::TooManyBytes);
        }
        if self.per_source.get(&from).copied().unwrap_or(0) >= MAX_PENDING_PER_SOURCE {
            return Err(NotParked::SourceFull);
        }
        if self.ops.contains_key(&hash) {
            return Err(NotParked::AlreadyPending);
        }
        self.bytes += bytes;
        *self.per_source.entry(from).or_default() += 1;
        self.ops.insert(
            hash,
            Pending {
                op,
                from,
                since: now,
                bytes,
            },
        );
        Ok(())
    }

    fn remove(&mut self, hash: &OpHash) -> Option<Pending> {
        let p = self.ops.remove(hash)?;
        self.bytes -= p.bytes;
        if let Some(n) = self.per_source.get_mut(&p.from) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&p.from);
            }
        }
        Some(p)
    }

    /// Takes out the ops whose parents are all known now (`known(parent)`), for insertion.
    pub fn take_ready(&mut self, known: impl Fn(&OpHash) -> bool) -> Vec<Pending> {
        let ready: Vec<OpHash> = self
            .ops
            .iter()
            .filter(|(_, p)| p.op.unsigned.parents.iter().all(&known))
            .map(|(h, _)| *h)
            .collect();
        ready.iter().filter_map(|h| self.remove(h)).collect()
    }

    /// Takes out the ops that have waited longer than [`PENDING_TTL`] at `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<Pending> {
        let expired: Vec<OpHash> = self
            .ops
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.since) > PENDING_TTL)
            .map(|(h, _)| *h)
            .collect();
        expired.iter().filter_map(|h| self.remove(h)).collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ed25519_dalek::SigningKey;
    use kos_map_protocol::fedlog::{Genesis, Log, OpBody};
    use std::time::Duration;

    pub(crate) fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    pub(crate) fn id(n: u8) -> NodeId {
        NodeId::from_public_key(key(n).verifying_key())
    }

    /// A log with admin `key(1)` and threshold 1.
    pub(crate) fn log() -> Log {
        Log::new(Genesis {
            admins: vec![id(1)],
            threshold: 1,
        })
        .unwrap()
    }

    pub(crate) fn approve(log: &Log, peer: u8, ts: u64) -> Op {
        log.new_op(
            &key(1),
            OpBody::ApprovePeer {
                peer: id(peer),
                addrs: Vec::new(),
                label: Some(format!("peer {peer}")),
            },
            ts,
        )
    }

    /// `n` ops in a chain, each the parent of the next.
    pub(crate) fn chain(n: usize) -> (Log, Vec<Op>) {
        let mut log = log();
        let mut ops = Vec::new();
        for i in 0..n {
            let op = approve(&log, 100 + i as u8, i as u64);
            log.insert(op.clone()).unwrap();
            ops.push(op);
        }
        (log, ops)
    }

    #[test]
    fn a_pending_op_is_released_when_its_parent_arrives() {
        let (_, ops) = chain(3);
        let mut replica = log();
        let t0 = Instant::now();
        let mut pending = PendingOps::default();
        pending.park(ops[1].clone(), Some(id(9)), 100, t0).unwrap();
        pending.park(ops[2].clone(), Some(id(9)), 100, t0).unwrap();
        assert!(pending.take_ready(|h| replica.contains(h)).is_empty());
        replica.insert(ops[0].clone()).unwrap();
        let ready = pending.take_ready(|h| replica.contains(h));
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].op.hash(), ops[1].hash());
        assert_eq!(ready[0].from, Some(id(9)));
        replica.insert(ready[0].op.clone()).unwrap();
        let ready = pending.take_ready(|h| replica.contains(h));
        assert_eq!(ready[0].op.hash(), ops[2].hash());
        assert_eq!(pending.len(), 0);
    }

    #[test]
    fn a_pending_op_expires_after_the_ttl_and_not_before() {
        let (_, ops) = chain(2);
        let t0 = Instant::now();
        let mut pending = PendingOps::default();
        pending.park(ops[1].clone(), None, 100, t0).unwrap();
        assert!(pending.expire(t0 + PENDING_TTL).is_empty());
        assert_eq!(pending.len(), 1);
        let gone = pending.expire(t0 + PENDING_TTL + Duration::from_millis(1));
        assert_eq!(gone.len(), 1);
        assert_eq!(pending.len(), 0);
        // Its budget is given back.
        pending
            .park(ops[1].clone(), None, MAX_PENDING_BYTES, t0)
            .unwrap();
    }

    #[test]
    fn one_source_holds_at_most_its_share() {
        let mut log = log();
        let mut ops = Vec::new();
        for i in 0..=MAX_PENDING_PER_SOURCE {
            let op = approve(&log, (i % 200) as u8 + 20, i as u64);
            // Each op names a new parent this replica does not hold.
            log.insert(op.clone()).unwrap();
            ops.push(op);
        }
        let t0 = Instant::now();
        let mut pending = PendingOps::default();
        for op in &ops[..MAX_PENDING_PER_SOURCE] {
            pending.park(op.clone(), Some(id(7)), 10, t0).unwrap();
        }
        let last = ops[MAX_PENDING_PER_SOURCE].clone();
        assert_eq!(
            pending.park(last.clone(), Some(id(7)), 10, t0),
            Err(NotParked::SourceFull)
        );
        // Another source still gets in.
        pending.park(last, Some(id(8)), 10, t0).unwrap();
        assert_eq!(pending.len(), MAX_PENDING_PER_SOURCE + 1);
    }

    #[test]
    fn bytes_and_duplicates_are_bounded() {
        let (_, ops) = chain(3);
        let t0 = Instant::now();
        let mut pending = PendingOps::default();
        pending
            .park(ops[1].clone(), None, MAX_PENDING_BYTES - 10, t0)
            .unwrap();
        assert_eq!(
            pending.park(ops[2].clone(), Some(id(3)), 11, t0),
            Err(NotParked::TooManyBytes)
        );
        assert_eq!(
            pending.park(ops[1].clone(), Some(id(3)), 1, t0),
            Err(NotParked::AlreadyPending)
        );
        pending.park(ops[2].clone(), Some(id(3)), 10, t0).unwrap();
    }
}
