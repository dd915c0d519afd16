//! Property tests of the federation op-log through its public API: replicas converge
//! whatever the arrival order, anti-entropy sends exactly what is missing, and decoding
//! never panics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ed25519_dalek::SigningKey;
use kos_map_protocol::{Genesis, Log, LogError, NodeId, Op, OpBody, OpHash};
use proptest::prelude::*;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn id(seed: u8) -> NodeId {
    NodeId::from_public_key(key(seed).verifying_key())
}

/// Admin key seeds.
const ADMINS: [u8; 3] = [1, 2, 3];

#[derive(Debug, Clone)]
enum Action {
    /// Admin `who` writes an op on its own replica.
    Author { who: usize, kind: u8, target: u8 },
    /// Replica `to` pulls what it misses from replica `from`.
    Sync { from: usize, to: usize },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => (0..3usize, 0..6u8, 0..3u8).prop_map(|(who, kind, target)| Action::Author { who, kind, target }),
        1 => (0..3usize, 0..3usize).prop_map(|(from, to)| Action::Sync { from, to }),
    ]
}

fn body(kind: u8, target: u8, n: usize) -> OpBody {
    let peer = id(50 + target);
    match kind {
        0 | 1 => OpBody::ApprovePeer {
            peer,
            addrs: vec![format!("/ip4/10.0.0.{target}/udp/4001/quic-v1")],
            label: n.is_multiple_of(2).then(|| format!("op {n}")),
        },
        2 => OpBody::RevokePeer {
            peer,
            reason: format!("reason {n}"),
        },
        3 => OpBody::PublishConfig {
            snapshot_id: format!("{:064x}", n),
            scope: format!("scope-{}", target % 2),
            content: format!("content {n}"),
        },
        4 => OpBody::AddAdmin {
            admin: id(ADMINS[usize::from(target)]),
        },
        _ => OpBody::RemoveAdmin {
            admin: id(ADMINS[usize::from(target)]),
        },
    }
}

/// Runs the actions on one replica per admin; returns the replicas and every op accepted
/// by its author's replica (hence valid everywhere).
fn simulate(threshold: u32, actions: &[Action]) -> (Vec<Log>, Vec<Op>) {
    let genesis = Genesis {
        admins: ADMINS.iter().map(|&s| id(s)).collect(),
        threshold,
    };
    let mut logs = vec![Log::new(genesis).unwrap(); 3];
    let mut accepted = Vec::new();
    for (n, action) in actions.iter().enumerate() {
        match *action {
            Action::Author { who, kind, target } => {
                let body = body(kind, target, n);
                let admin_change =
                    matches!(body, OpBody::AddAdmin { .. } | OpBody::RemoveAdmin { .. });
                let mut op = logs[who].new_op(&key(ADMINS[who]), body, 1_000 + n as u64);
                if admin_change {
                    op.cosign(&key(ADMINS[(who + 1) % 3]));
                }
                if logs[who].insert(op.clone()).is_ok() {
                    accepted.push(op);
                }
            }
            Action::Sync { from, to } => {
                let missing: Vec<Op> = logs[from]
                    .ops_after(&logs[to].heads())
                    .into_iter()
                    .cloned()
                    .collect();
                for op in missing {
                    match logs[to].insert(op) {
                        Ok(_) | Err(LogError::AlreadyKnown(_)) => {}
                        Err(e) => panic!("sync refused a valid op: {e}"),
                    }
                }
            }
        }
    }
    (logs, accepted)
}

fn shuffled(ops: &[Op], mut seed: u64) -> Vec<Op> {
    let mut ops = ops.to_vec();
    for i in (1..ops.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let j = (seed % (i as u64 + 1)) as usize;
        ops.swap(i, j);
    }
    ops
}

/// Inserts `ops` in the given order, retrying those whose parents are unknown.
fn replica(threshold: u32, ops: Vec<Op>) -> Log {
    let mut log = Log::new(Genesis {
        admins: ADMINS.iter().map(|&s| id(s)).collect(),
        threshold,
    })
    .unwrap();
    let mut pending = ops;
    while !pending.is_empty() {
        let before = pending.len();
        let mut waiting = Vec::new();
        for op in pending {
            match log.insert(op.clone()) {
                Ok(_) => {}
                Err(LogError::UnknownParents(_)) => waiting.push(op),
                Err(e) => panic!("valid op refused: {e}"),
            }
        }
        assert!(waiting.len() < before, "no progress: parents never arrive");
        pending = waiting;
    }
    log
}

// Signing and verifying dominate; in an unoptimized build these cases take a few minutes
// (`cargo test --release` runs them in seconds).
proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random op DAGs from 3 admins (concurrent writes, partial syncs): replicas fed the
    /// same ops in different orders converge to the same state and heads.
    #[test]
    fn replicas_converge_whatever_the_order(
        threshold in 1..=2u32,
        actions in prop::collection::vec(action(), 1..40),
        seed_a in any::<u64>().prop_map(|s| s | 1),
        seed_b in any::<u64>().prop_map(|s| s | 1),
    ) {
        let (writers, ops) = simulate(threshold, &actions);
        let a = replica(threshold, shuffled(&ops, seed_a));
        let b = replica(threshold, shuffled(&ops, seed_b));
        prop_assert_eq!(a.len(), ops.len());
        prop_assert_eq!(b.len(), ops.len());
        prop_assert_eq!(a.heads(), b.heads());
        prop_assert_eq!(a.state(), b.state());
        // A writer's replica holds a subset; topped up, it agrees too.
        let mut w = writers[0].clone();
        for op in a.ops_after(&w.heads()) {
            match w.insert(op.clone()) {
                Ok(_) | Err(LogError::AlreadyKnown(_)) => {}
                Err(e) => prop_assert!(false, "{}", e),
            }
        }
        prop_assert_eq!(w.state(), a.state());
        prop_assert_eq!(w.heads(), a.heads());
    }

    /// A replica holding an ancestor-closed subset (a prefix of the total order) gets
    /// exactly the ops it misses, and inserting them in the given order makes it equal.
    #[test]
    fn ops_after_sends_exactly_what_is_missing(
        threshold in 1..=2u32,
        actions in prop::collection::vec(action(), 1..40),
        cut in any::<prop::sample::Index>(),
    ) {
        let (writers, ops) = simulate(threshold, &actions);
        let full = replica(threshold, ops);
        let all: Vec<Op> = full.iter().cloned().collect();
        let k = cut.index(all.len() + 1);
        let mut partial = replica(threshold, all[..k].to_vec());
        let missing: Vec<OpHash> = full.ops_after(&partial.heads()).iter().map(|o| o.hash()).collect();
        let expected: Vec<OpHash> = all[k..].iter().map(Op::hash).collect();
        prop_assert_eq!(&missing, &expected);
        for hash in &missing {
            let op = full.get(hash).cloned();
            prop_assert!(op.is_some());
            if let Some(op) = op {
                prop_assert!(partial.insert(op).is_ok());
            }
        }
        prop_assert_eq!(partial.state(), full.state());
        prop_assert_eq!(partial.heads(), full.heads());
        prop_assert!(full.ops_after(&partial.heads()).is_empty());
        // Two writers exchanging both ways end equal.
        let (mut x, mut y) = (writers[1].clone(), writers[2].clone());
        let for_y: Vec<Op> = x.ops_after(&y.heads()).into_iter().cloned().collect();
        for op in for_y {
            prop_assert!(matches!(y.insert(op), Ok(_) | Err(LogError::AlreadyKnown(_))));
        }
        let for_x: Vec<Op> = y.ops_after(&x.heads()).into_iter().cloned().collect();
        for op in for_x {
            prop_assert!(matches!(x.insert(op), Ok(_) | Err(LogError::AlreadyKnown(_))));
        }
        prop_assert_eq!(x.state(), y.state());
        prop_assert_eq!(x.heads(), y.heads());
    }
}

/// Five valid ops, and for each a replica holding the ops before it (built once: signing
/// and verifying are slow in unoptimized builds).
fn samples() -> &'static (Vec<Op>, Vec<Log>) {
    static SAMPLES: std::sync::OnceLock<(Vec<Op>, Vec<Log>)> = std::sync::OnceLock::new();
    SAMPLES.get_or_init(|| {
        let (_, ops) = simulate(
            1,
            &[
                Action::Author {
                    who: 0,
                    kind: 0,
                    target: 0,
                },
                Action::Author {
                    who: 0,
                    kind: 2,
                    target: 1,
                },
                Action::Author {
                    who: 1,
                    kind: 3,
                    target: 0,
                },
                Action::Author {
                    who: 0,
                    kind: 4,
                    target: 2,
                },
                Action::Sync { from: 0, to: 1 },
                Action::Author {
                    who: 1,
                    kind: 5,
                    target: 2,
                },
            ],
        );
        assert_eq!(ops.len(), 5);
        let prefixes = (0..ops.len())
            .map(|i| replica(1, ops[..i].to_vec()))
            .collect();
        (ops, prefixes)
    })
}

fn mutate(mut bytes: Vec<u8>, edits: &[(u8, usize, u8)]) -> Vec<u8> {
    for &(kind, at, value) in edits {
        if bytes.is_empty() {
            bytes.push(value);
            continue;
        }
        let at = at % bytes.len();
        match kind % 4 {
            0 => bytes[at] = value,
            1 => bytes[at] ^= 1 << (value % 8),
            2 => bytes.insert(at, value),
            _ => bytes.truncate(at),
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn decode_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        let _ = Op::decode(&bytes);
    }

    /// Mutated valid ops: decoding never panics; whatever decodes re-encodes to the same
    /// bytes, and inserting it never panics (and a changed op never verifies).
    #[test]
    fn decode_never_panics_on_mutated_ops(
        which in 0..5usize,
        edits in prop::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 1..6),
    ) {
        let (ops, prefixes) = samples();
        let original = ops[which].encode();
        let bytes = mutate(original.clone(), &edits);
        if let Ok(op) = Op::decode(&bytes) {
            prop_assert_eq!(op.encode(), bytes.clone());
            let mut log = prefixes[which].clone();
            let result = log.insert(op);
            if bytes != original {
                prop_assert!(result.is_err(), "a mutated op was accepted");
            }
        }
    }
}
