//! Anti-entropy paging: the request this node sends, the page it answers a peer with, and
//! whether a run goes on to the next page. Pure functions of the log.

use kos_map_protocol::fedlog::{Log, OpHash};
use serde_bytes::ByteBuf;

use super::limits::{MAX_HEADS, MAX_OPS_PER_ANSWER, MAX_SYNC_ROUNDS};
use super::wire::{SyncRequest, SyncResponse};

/// A position in the log's total order: `(lamport, hash)`.
pub type Cursor = (u64, OpHash);

/// The request for the ops this node misses, after `after` (a run's next page).
pub fn request(log: &Log, after: Option<Cursor>) -> SyncRequest {
    SyncRequest {
        genesis: ByteBuf::from(log.genesis_id().to_vec()),
        heads: log
            .heads()
            .into_iter()
            .take(MAX_HEADS)
            .map(|h| ByteBuf::from(h.0.to_vec()))
            .collect(),
        after: after.map(|(l, h)| (l, ByteBuf::from(h.0.to_vec()))),
    }
}

/// The answer to a peer's request: the ops it misses after its cursor, parents first, at
/// most [`MAX_OPS_PER_ANSWER`] and `kos_klp::SYNC_RESPONSE_BUDGET` bytes, with `more` when
/// the page is full. `None` (undecodable or over the rate limit) and a request of another
/// federation get an empty answer.
pub fn answer(log: &Log, request: Option<SyncRequest>) -> SyncResponse {
    answer_within(
        log,
        request,
        kos_klp::SYNC_RESPONSE_BUDGET,
        MAX_OPS_PER_ANSWER,
    )
}

fn answer_within(
    log: &Log,
    request: Option<SyncRequest>,
    budget: usize,
    max_ops: usize,
) -> SyncResponse {
    let genesis = ByteBuf::from(log.genesis_id().to_vec());
    let Some(r) = request.filter(|r| r.genesis == genesis) else {
        return SyncResponse {
            genesis,
            ops: Vec::new(),
            more: false,
        };
    };
    let heads: Vec<OpHash> = r.heads.iter().filter_map(hash).collect();
    let after: Option<Cursor> = r.after.and_then(|(l, h)| hash(&h).map(|h| (l, h)));
    let mut ops = Vec::new();
    let mut size = 0;
    let mut more = false;
    for op in log.ops_after(&heads) {
        if after.is_some_and(|a| (op.unsigned.lamport, op.hash()) <= a) {
            continue;
        }
        let b = op.encode();
        if !ops.is_empty() && (size + b.len() > budget || ops.len() >= max_ops) {
            more = true;
            break;
        }
        size += b.len();
        ops.push(ByteBuf::from(b));
    }
    SyncResponse { genesis, ops, more }
}

fn hash(b: &ByteBuf) -> Option<OpHash> {
    <[u8; 32]>::try_from(b.as_slice()).ok().map(OpHash)
}

/// Whether an answer is of this node's federation.
pub fn same_genesis(log: &Log, answer: &SyncResponse) -> bool {
    log.genesis_id().as_slice() == answer.genesis.as_slice()
}

/// A page longer than any node sends.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("a sync answer of {0} ops (at most {MAX_OPS_PER_ANSWER})")]
pub struct PageTooLong(pub usize);

/// Refuses a page with more than [`MAX_OPS_PER_ANSWER`] ops (decoding already does; this
/// holds for answers built any other way).
pub fn check_page(answer: &SyncResponse) -> Result<(), PageTooLong> {
    if answer.ops.len() > MAX_OPS_PER_ANSWER {
        return Err(PageTooLong(answer.ops.len()));
    }
    Ok(())
}

/// After page `round` of a run: the next round and its cursor, or `None` when the run
/// ends (no more ops, a page that ended on an invalid op, or [`MAX_SYNC_ROUNDS`] pages).
pub fn next_page(more: bool, last: Option<Cursor>, round: u32) -> Option<(u32, Cursor)> {
    match last {
        Some(last) if more && round + 1 < MAX_SYNC_ROUNDS => Some((round + 1, last)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::fedsync::pending::tests::{chain, log};
    use kos_map_protocol::fedlog::Op;

    fn ops_of(r: &SyncResponse) -> Vec<Op> {
        r.ops.iter().map(|b| Op::decode(b).unwrap()).collect()
    }

    #[test]
    fn a_run_pages_through_the_whole_log_parents_first() {
        let (full, ops) = chain(10);
        let mut replica = log();
        let mut after = None;
        let mut round = 0;
        loop {
            let req = request(&replica, after);
            // Over the wire and back, as a peer reads it.
            let req = SyncRequest::decode(&req.encode().unwrap()).unwrap();
            let page = answer_within(&full, Some(req), usize::MAX, 3);
            assert!(page.ops.len() <= 3);
            assert!(same_genesis(&replica, &page));
            let mut last = None;
            for op in ops_of(&page) {
                last = Some((op.unsigned.lamport, op.hash()));
                replica.insert(op).unwrap();
            }
            match next_page(page.more, last, round) {
                Some((r, cursor)) => (round, after) = (r, Some(cursor)),
                None => break,
            }
        }
        assert_eq!(round, 3, "10 ops in pages of 3: four pages");
        assert_eq!(replica.len(), ops.len());
        assert_eq!(replica.heads(), full.heads());
    }

    #[test]
    fn the_cursor_skips_what_was_sent_and_the_byte_budget_cuts_a_page() {
        let (full, ops) = chain(4);
        let one = ops[0].encode().len();
        // One op fits the budget; a page is never empty, however small the budget.
        let page = answer_within(&full, Some(request(&log(), None)), one, 100);
        assert_eq!((page.ops.len(), page.more), (1, true));
        let page = answer_within(&full, Some(request(&log(), None)), 1, 100);
        assert_eq!((page.ops.len(), page.more), (1, true));
        let cursor = (ops[1].unsigned.lamport, ops[1].hash());
        let page = answer_within(&full, Some(request(&log(), Some(cursor))), usize::MAX, 100);
        let got: Vec<OpHash> = ops_of(&page).iter().map(Op::hash).collect();
        assert_eq!(got, vec![ops[2].hash(), ops[3].hash()]);
        assert!(!page.more);
    }

    #[test]
    fn another_federation_or_no_request_gets_an_empty_answer() {
        let (full, _) = chain(2);
        let mut req = request(&log(), None);
        req.genesis = ByteBuf::from(vec![0; 32]);
        let page = answer(&full, Some(req));
        assert!(page.ops.is_empty() && !page.more);
        assert_eq!(page.genesis.as_slice(), full.genesis_id().as_slice());
        assert!(answer(&full, None).ops.is_empty());
        // A full request gets everything.
        assert_eq!(answer(&full, Some(request(&log(), None))).ops.len(), 2);
    }

    #[test]
    fn paging_ends_after_max_sync_rounds() {
        let cursor = (1, OpHash([1; 32]));
        let mut round = 0;
        let mut pages = 1;
        while let Some((r, _)) = next_page(true, Some(cursor), round) {
            assert_eq!(r, round + 1);
            round = r;
            pages += 1;
            assert!(pages <= MAX_SYNC_ROUNDS, "the run does not stop");
        }
        assert_eq!(pages, MAX_SYNC_ROUNDS);
        // It also ends without `more`, and after a page that ended on an invalid op.
        assert_eq!(next_page(false, Some(cursor), 0), None);
        assert_eq!(next_page(true, None, 0), None);
        assert_eq!(next_page(true, Some(cursor), 0), Some((1, cursor)));
    }

    #[test]
    fn a_page_with_more_than_max_ops_is_refused() {
        let page = |n| SyncResponse {
            genesis: ByteBuf::new(),
            ops: vec![ByteBuf::new(); n],
            more: false,
        };
        assert_eq!(check_page(&page(MAX_OPS_PER_ANSWER)), Ok(()));
        assert_eq!(
            check_page(&page(MAX_OPS_PER_ANSWER + 1)),
            Err(PageTooLong(MAX_OPS_PER_ANSWER + 1))
        );
        // And on the wire, while decoding.
        let bytes = page(MAX_OPS_PER_ANSWER + 1).encode().unwrap();
        assert!(SyncResponse::decode(&bytes).is_err());
    }
}
