use super::*;

const T0: u64 = 1_700_000_000_000;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn id(seed: u8) -> NodeId {
    NodeId::from_public_key(key(seed).verifying_key())
}

/// Admins 1, 2, 3 with `threshold`.
fn log(threshold: u32) -> Log {
    Log::new(Genesis {
        admins: vec![id(1), id(2), id(3)],
        threshold,
    })
    .unwrap()
}

fn approve(peer: u8) -> OpBody {
    OpBody::ApprovePeer {
        peer: id(peer),
        addrs: vec![format!("/ip4/10.0.0.{peer}/udp/4001/quic-v1")],
        label: Some(format!("peer {peer}")),
    }
}

fn revoke(peer: u8, reason: &str) -> OpBody {
    OpBody::RevokePeer {
        peer: id(peer),
        reason: reason.into(),
    }
}

fn publish(scope: &str, content: &str) -> OpBody {
    OpBody::PublishConfig {
        snapshot_id: "ab".repeat(32),
        scope: scope.into(),
        content: content.into(),
    }
}

/// Creates an op by `author` on `log` and inserts it there.
fn add(log: &mut Log, author: u8, body: OpBody) -> Op {
    let op = log.new_op(&key(author), body, T0);
    log.insert(op.clone()).unwrap();
    op
}

#[test]
fn approval_by_an_admin_is_in_the_state() {
    let mut log = log(1);
    let op = add(&mut log, 1, approve(50));
    let state = log.state();
    let approval = &state.approved[&id(50)];
    assert_eq!(approval.op, op.hash());
    assert_eq!(approval.label.as_deref(), Some("peer 50"));
    assert_eq!(approval.addrs, vec!["/ip4/10.0.0.50/udp/4001/quic-v1"]);
    assert!(state.revoked.is_empty());
    assert_eq!(state.admins, [id(1), id(2), id(3)].into_iter().collect());
    assert_eq!(state.threshold, 1);
    assert_eq!(log.heads(), vec![op.hash()]);
    assert_eq!(log.len(), 1);
    assert!(log.contains(&op.hash()));
    assert_eq!(log.get(&op.hash()), Some(&op));
}

#[test]
fn non_admin_author_is_not_admin() {
    let mut log = log(1);
    let op = log.new_op(&key(9), approve(50), T0);
    assert_eq!(
        log.insert(op),
        Err(LogError::NotAdmin {
            author: Box::new(id(9))
        })
    );
    assert!(log.is_empty());
}

#[test]
fn tampered_bytes_are_refused() {
    let mut log = log(1);
    let op = log.new_op(&key(1), publish("net", "hello world"), T0);
    let bytes = op.encode();
    let at = bytes.windows(5).position(|w| w == b"hello").unwrap();
    let mut tampered = bytes.clone();
    tampered[at] = b'j';
    let decoded = Op::decode(&tampered).unwrap();
    assert_eq!(
        log.insert(decoded),
        Err(LogError::BadSignature {
            signer: Box::new(id(1))
        })
    );
    // A flipped signature bit.
    let mut tampered = bytes.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(matches!(
        log.insert(Op::decode(&tampered).unwrap()),
        Err(LogError::BadSignature { .. })
    ));
    // Every single-byte change fails to decode or to insert.
    for i in 0..bytes.len() {
        let mut tampered = bytes.clone();
        tampered[i] ^= 0x01;
        if let Ok(op) = Op::decode(&tampered) {
            assert!(log.clone().insert(op).is_err(), "byte {i}");
        }
    }
    assert_eq!(log.insert(Op::decode(&bytes).unwrap()), Ok(op.hash()));
}

#[test]
fn unknown_parents_then_retry() {
    let mut a = log(1);
    let first = add(&mut a, 1, approve(50));
    let second = add(&mut a, 2, approve(51));
    let mut b = log(1);
    assert_eq!(
        b.insert(second.clone()),
        Err(LogError::UnknownParents(vec![first.hash()]))
    );
    b.insert(first).unwrap();
    b.insert(second).unwrap();
    assert_eq!(a.state(), b.state());
    assert_eq!(a.heads(), b.heads());
}

#[test]
fn replay_is_already_known() {
    let mut log = log(1);
    let op = add(&mut log, 1, approve(50));
    assert_eq!(
        log.insert(op.clone()),
        Err(LogError::AlreadyKnown(op.hash()))
    );
    // Co-signing does not change the identity.
    let mut cosigned = op.clone();
    cosigned.cosign(&key(2));
    assert_eq!(cosigned.hash(), op.hash());
    assert_eq!(log.insert(cosigned), Err(LogError::AlreadyKnown(op.hash())));
}

#[test]
fn seq_gap() {
    let mut log = log(1);
    add(&mut log, 1, approve(50));
    let mut unsigned = log.new_op(&key(1), approve(51), T0).unsigned;
    assert_eq!(unsigned.seq, 2);
    unsigned.seq = 3;
    let op = Op::sign(unsigned.clone(), &key(1)).unwrap();
    assert_eq!(
        log.insert(op),
        Err(LogError::SeqGap {
            expected: 2,
            got: 3
        })
    );
    // Going back is a gap too (it would fork the author's chain).
    unsigned.seq = 1;
    let op = Op::sign(unsigned, &key(1)).unwrap();
    assert_eq!(
        log.insert(op),
        Err(LogError::SeqGap {
            expected: 2,
            got: 1
        })
    );
    // seq 0 never exists.
    let mut unsigned = log.new_op(&key(2), approve(51), T0).unsigned;
    unsigned.seq = 0;
    assert_eq!(
        log.insert(Op::sign(unsigned, &key(2)).unwrap()),
        Err(LogError::SeqGap {
            expected: 1,
            got: 0
        })
    );
}

#[test]
fn equivocation_first_seen_wins() {
    let empty = log(1);
    let one = empty.new_op(&key(1), approve(50), T0);
    let other = empty.new_op(&key(1), revoke(50, "no"), T0);
    assert_eq!(one.unsigned.seq, other.unsigned.seq);
    let mut a = empty.clone();
    a.insert(one.clone()).unwrap();
    assert_eq!(
        a.insert(other.clone()),
        Err(LogError::Equivocation {
            author: Box::new(id(1)),
            seq: 1,
            existing: one.hash()
        })
    );
    let mut b = empty.clone();
    b.insert(other.clone()).unwrap();
    assert!(matches!(
        b.insert(one),
        Err(LogError::Equivocation { existing, .. }) if existing == other.hash()
    ));
}

#[test]
fn concurrent_approve_and_revoke_is_revoked_everywhere() {
    let base = {
        let mut log = log(1);
        add(&mut log, 3, publish("net", "v1"));
        log
    };
    let approval = base.new_op(&key(1), approve(50), T0);
    let revocation = base.new_op(&key(2), revoke(50, "lost laptop"), T0);
    let mut states = Vec::new();
    for order in [[&approval, &revocation], [&revocation, &approval]] {
        let mut log = base.clone();
        for op in order {
            log.insert(op.clone()).unwrap();
        }
        states.push((log.state(), log.heads()));
    }
    assert_eq!(states[0], states[1]);
    let state = &states[0].0;
    assert!(!state.approved.contains_key(&id(50)));
    assert_eq!(state.revoked[&id(50)].reason, "lost laptop");
    assert_eq!(state.revoked[&id(50)].op, revocation.hash());
    // A later approval that has not seen the revocation does not help either.
    let mut log = base.clone();
    log.insert(revocation.clone()).unwrap();
    let mut blind = base.clone();
    blind.insert(approval.clone()).unwrap();
    let again = blind.new_op(&key(1), approve(50), T0);
    log.insert(approval).unwrap();
    log.insert(again).unwrap();
    assert!(log.state().revoked.contains_key(&id(50)));
}

#[test]
fn approval_after_the_revocation_re_approves() {
    let mut log = log(1);
    add(&mut log, 1, approve(50));
    let revocation = add(&mut log, 2, revoke(50, "compromised"));
    assert!(log.state().revoked.contains_key(&id(50)));
    let again = add(
        &mut log,
        1,
        OpBody::ApprovePeer {
            peer: id(50),
            addrs: vec![],
            label: Some("reinstalled".into()),
        },
    );
    assert!(again.unsigned.parents.contains(&revocation.hash()));
    let state = log.state();
    assert!(state.revoked.is_empty());
    assert_eq!(
        state.approved[&id(50)].label.as_deref(),
        Some("reinstalled")
    );
    assert_eq!(state.approved[&id(50)].op, again.hash());
}

#[test]
fn add_admin_needs_threshold_signatures() {
    let mut log = log(2);
    let op = log.new_op(&key(1), OpBody::AddAdmin { admin: id(4) }, T0);
    assert_eq!(
        log.insert(op.clone()),
        Err(LogError::BelowThreshold { have: 1, need: 2 })
    );
    // A signature by a non-admin does not count.
    let mut outsider = op.clone();
    outsider.cosign(&key(9));
    assert_eq!(
        log.insert(outsider),
        Err(LogError::BelowThreshold { have: 1, need: 2 })
    );
    let mut op = op;
    op.cosign(&key(2));
    op.cosign(&key(2)); // idempotent
    assert_eq!(op.signatures.len(), 2);
    log.insert(op).unwrap();
    assert!(log.state().admins.contains(&id(4)));
    // The new admin can author.
    add(&mut log, 4, approve(50));
    // Other ops need only the author.
    add(&mut log, 3, approve(51));
    assert_eq!(log.state().approved.len(), 2);
}

#[test]
fn removed_admin_is_refused_afterwards_but_concurrent_ops_stay() {
    let mut log = log(1);
    add(&mut log, 1, approve(50));
    let before_removal = log.clone();
    let removal = add(&mut log, 2, OpBody::RemoveAdmin { admin: id(3) });
    assert!(!log.state().admins.contains(&id(3)));
    // Admin 3 has seen the removal: refused.
    let late = log.new_op(&key(3), approve(60), T0);
    assert!(late.unsigned.parents.contains(&removal.hash()));
    assert_eq!(
        log.insert(late),
        Err(LogError::NotAdmin {
            author: Box::new(id(3))
        })
    );
    // Admin 3 had not seen it: valid in its causal past, so it stays.
    let concurrent = before_removal.new_op(&key(3), approve(61), T0);
    log.insert(concurrent.clone()).unwrap();
    assert_eq!(log.state().approved[&id(61)].op, concurrent.hash());
    // Recovery: a revocation after the removal cannot be undone by the removed key.
    add(&mut log, 1, revoke(61, "approved by a removed admin"));
    assert!(log.state().revoked.contains_key(&id(61)));
}

#[test]
fn admin_set_cannot_break() {
    let mut log = Log::new(Genesis {
        admins: vec![id(1), id(2)],
        threshold: 2,
    })
    .unwrap();
    let mut op = log.new_op(&key(1), OpBody::RemoveAdmin { admin: id(2) }, T0);
    op.cosign(&key(2));
    assert_eq!(
        log.insert(op),
        Err(LogError::WouldBreakAdminSet {
            remaining: 1,
            threshold: 2
        })
    );
    let mut log = Log::new(Genesis {
        admins: vec![id(1)],
        threshold: 1,
    })
    .unwrap();
    let op = log.new_op(&key(1), OpBody::RemoveAdmin { admin: id(1) }, T0);
    assert_eq!(
        log.insert(op),
        Err(LogError::WouldBreakAdminSet {
            remaining: 0,
            threshold: 1
        })
    );
}

#[test]
fn concurrent_removals_keep_the_threshold() {
    // Admins 1, 2, 3, threshold 2: removing 1 and removing 2 concurrently would leave one.
    let base = log(2);
    let mut r1 = base.new_op(&key(2), OpBody::RemoveAdmin { admin: id(1) }, T0);
    r1.cosign(&key(3));
    let mut r2 = base.new_op(&key(1), OpBody::RemoveAdmin { admin: id(2) }, T0);
    r2.cosign(&key(3));
    let mut a = base.clone();
    a.insert(r1.clone()).unwrap();
    a.insert(r2.clone()).unwrap();
    let mut b = base.clone();
    b.insert(r2.clone()).unwrap();
    b.insert(r1.clone()).unwrap();
    let state = a.state();
    assert_eq!(state, b.state());
    assert_eq!(state.admins.len(), 2);
    // The first in the total order applied, the other was skipped.
    let first = if (r1.unsigned.lamport, r1.hash()) < (r2.unsigned.lamport, r2.hash()) {
        id(1)
    } else {
        id(2)
    };
    assert!(!state.admins.contains(&first));
}

#[test]
fn config_last_writer_wins() {
    let mut log = log(1);
    let base = log.clone();
    add(&mut log, 1, publish("net", "v1"));
    let v2 = add(&mut log, 2, publish("net", "v2"));
    add(&mut log, 3, publish("other", "x"));
    let state = log.state();
    assert_eq!(state.config["net"].content, "v2");
    assert_eq!(state.config["net"].op, v2.hash());
    assert_eq!(state.config["other"].content, "x");
    // Concurrent publications: the greater (lamport, hash) wins on every replica.
    let p = base.new_op(&key(1), publish("s", "p"), T0);
    let q = base.new_op(&key(2), publish("s", "q"), T0);
    let winner = if p.hash() > q.hash() { "p" } else { "q" };
    for order in [[&p, &q], [&q, &p]] {
        let mut log = base.clone();
        for op in order {
            log.insert(op.clone()).unwrap();
        }
        assert_eq!(log.state().config["s"].content, winner);
    }
}

#[test]
fn lamport_must_exceed_parents() {
    let mut log = log(1);
    let first = add(&mut log, 1, approve(50));
    let mut unsigned = log.new_op(&key(2), approve(51), T0).unsigned;
    unsigned.lamport = first.unsigned.lamport;
    assert_eq!(
        log.insert(Op::sign(unsigned.clone(), &key(2)).unwrap()),
        Err(LogError::BadLamport {
            lamport: 1,
            min: 2,
            max: 1 + MAX_LAMPORT_STEP
        })
    );
    unsigned.lamport = 2 + MAX_LAMPORT_STEP;
    assert!(matches!(
        log.insert(Op::sign(unsigned, &key(2)).unwrap()),
        Err(LogError::BadLamport { .. })
    ));
    let mut root = Log::new(Genesis {
        admins: vec![id(1)],
        threshold: 1,
    })
    .unwrap()
    .new_op(&key(1), approve(50), T0)
    .unsigned;
    root.lamport = 0;
    assert!(matches!(
        log.insert(Op::sign(root, &key(1)).unwrap()),
        Err(LogError::BadLamport { min: 1, .. })
    ));
}

#[test]
fn structure_and_limits() {
    let log = log(1);
    let good = log.new_op(&key(1), approve(50), T0);
    let check = |op: &Op| {
        let mut log = log.clone();
        log.insert(op.clone())
    };
    // The first signature must be the author's.
    let mut op = good.clone();
    op.signatures.reverse();
    op.cosign(&key(2));
    op.signatures.swap(0, 1);
    assert!(matches!(check(&op), Err(LogError::Malformed(_))));
    let mut op = good.clone();
    op.signatures.clear();
    assert!(matches!(check(&op), Err(LogError::Malformed(_))));
    let mut op = good.clone();
    let dup = op.signatures[0];
    op.signatures.push(dup);
    assert!(matches!(check(&op), Err(LogError::Malformed(_))));
    let mut op = good.clone();
    for seed in 10..30 {
        op.cosign(&key(seed));
    }
    assert!(matches!(check(&op), Err(LogError::Malformed(_))));
    let oversized = [
        approve_with(vec!["a".into(); 17], None),
        approve_with(vec!["a".repeat(257)], None),
        approve_with(vec![], Some("l".repeat(257))),
        revoke(50, &"r".repeat(257)),
        publish("net", &"c".repeat(MAX_CONFIG_CONTENT_BYTES + 1)),
        publish("", "c"),
        publish(&"s".repeat(257), "c"),
        OpBody::PublishConfig {
            snapshot_id: "AB".repeat(32),
            scope: "net".into(),
            content: String::new(),
        },
        OpBody::PublishConfig {
            snapshot_id: "ab".repeat(31),
            scope: "net".into(),
            content: String::new(),
        },
    ];
    for body in oversized {
        let op = log.new_op(&key(1), body.clone(), T0);
        assert!(
            matches!(check(&op), Err(LogError::Malformed(_))),
            "{body:?}"
        );
        assert!(
            matches!(Op::decode(&op.encode()), Err(LogError::Malformed(_))),
            "{body:?}"
        );
    }
    // At the limits is fine.
    let body = approve_with(
        vec!["a".repeat(MAX_OP_ADDR_BYTES); MAX_OP_ADDRS],
        Some("l".repeat(MAX_TEXT_BYTES)),
    );
    check(&log.new_op(&key(1), body, T0)).unwrap();
    check(&log.new_op(
        &key(1),
        publish("net", &"c".repeat(MAX_CONFIG_CONTENT_BYTES)),
        T0,
    ))
    .unwrap();
    // Parents unsorted or repeated.
    let mut a = log.clone();
    let p1 = add(&mut a, 1, approve(50)).hash();
    let mut b = log.clone();
    let p2 = add(&mut b, 2, approve(51)).hash();
    let mut unsigned = log.new_op(&key(3), approve(52), T0).unsigned;
    unsigned.lamport = 2;
    for parents in [vec![p1.max(p2), p1.min(p2)], vec![p1, p1]] {
        unsigned.parents = parents;
        let op = Op::sign(unsigned.clone(), &key(3)).unwrap();
        assert!(matches!(check(&op), Err(LogError::Malformed(_))));
    }
    assert!(matches!(
        Op::decode(&vec![0u8; MAX_OP_BYTES + 1]),
        Err(LogError::TooLarge { .. })
    ));
}

fn approve_with(addrs: Vec<String>, label: Option<String>) -> OpBody {
    OpBody::ApprovePeer {
        peer: id(50),
        addrs,
        label,
    }
}

#[test]
fn encoding_round_trips_and_is_canonical() {
    let mut log = log(2);
    let mut ops = vec![log.new_op(&key(1), approve(50), T0)];
    ops.push(log.new_op(&key(1), approve_with(vec![], None), T0));
    ops.push(log.new_op(&key(1), revoke(50, "why"), T0));
    ops.push(log.new_op(&key(1), publish("net", "x: 1\n"), T0));
    let mut add_admin = log.new_op(&key(1), OpBody::AddAdmin { admin: id(4) }, T0);
    add_admin.cosign(&key(2));
    ops.push(add_admin.clone());
    ops.push(log.new_op(&key(1), OpBody::RemoveAdmin { admin: id(3) }, T0));
    log.insert(add_admin).unwrap();
    ops.push(log.new_op(&key(2), approve(51), u64::MAX));
    for op in ops {
        let bytes = op.encode();
        assert_eq!(Op::decode(&bytes).unwrap(), op);
        // Trailing bytes, and a longer-than-needed integer, are refused.
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(Op::decode(&trailing), Err(LogError::Malformed(_))));
    }
    // The same op through serde would accept a non-shortest integer: we do not.
    let op = log.new_op(&key(2), approve(51), 5);
    let bytes = op.encode();
    let at = bytes
        .windows(13)
        .position(|w| w == b"\x6ctimestamp_ms")
        .unwrap()
        + 13;
    assert_eq!(bytes[at], 5);
    let mut long = bytes[..at].to_vec();
    long.extend_from_slice(&[0x18, 5]);
    long.extend_from_slice(&bytes[at + 1..]);
    assert!(matches!(
        Op::decode(&long),
        Err(LogError::Malformed(m)) if m.contains("canonical")
    ));
}

#[test]
fn encoding_is_pinned() {
    let unsigned = UnsignedOp {
        author: id(1),
        seq: 1,
        lamport: 1,
        parents: vec![],
        timestamp_ms: T0,
        body: OpBody::RemoveAdmin { admin: id(2) },
    };
    let bytes = unsigned.canonical_bytes();
    let mut expected = vec![0xa6, 0x66];
    expected.extend_from_slice(b"author");
    expected.extend_from_slice(&[0x58, 38]);
    expected.extend_from_slice(&id(1).to_bytes());
    expected.extend_from_slice(b"\x63seq\x01\x67lamport\x01\x67parents\x80");
    expected.extend_from_slice(b"\x6ctimestamp_ms\x1b");
    expected.extend_from_slice(&T0.to_be_bytes());
    expected.extend_from_slice(b"\x64body\xa1\x6cremove_admin\xa1\x65admin\x58\x26");
    expected.extend_from_slice(&id(2).to_bytes());
    assert_eq!(bytes, expected);
    assert_eq!(
        unsigned.hash(),
        OpHash(Sha256::digest(&expected).into()),
        "the hash is SHA-256 of the canonical bytes"
    );
}

#[test]
fn op_hash_text() {
    let hash = OpHash([0xab; 32]);
    let text = hash.to_string();
    assert_eq!(text, "ab".repeat(32));
    assert_eq!(text.parse::<OpHash>().unwrap(), hash);
    assert_eq!(text.to_uppercase().parse::<OpHash>().unwrap(), hash);
    for bad in ["", "ab", &"g".repeat(64), &"a".repeat(65), &"é".repeat(32)] {
        assert!(bad.parse::<OpHash>().is_err(), "{bad}");
    }
}

#[test]
fn genesis_and_signing_key_checks() {
    for (admins, threshold) in [(vec![], 1), (vec![id(1)], 0), (vec![id(1), id(1)], 2)] {
        assert!(matches!(
            Log::new(Genesis { admins, threshold }),
            Err(LogError::InvalidGenesis(_))
        ));
    }
    let unsigned = log(1).new_op(&key(1), approve(50), T0).unsigned;
    assert_eq!(Op::sign(unsigned, &key(2)), Err(LogError::WrongSigningKey));
}

#[test]
fn ops_after_gives_what_is_missing() {
    let mut a = log(1);
    add(&mut a, 1, approve(50));
    let mut b = a.clone();
    add(&mut a, 2, approve(51));
    add(&mut a, 1, publish("net", "a"));
    // b is behind a: its heads are known to a, so a sends exactly the two it misses.
    let for_b: Vec<OpHash> = a.ops_after(&b.heads()).iter().map(|o| o.hash()).collect();
    assert_eq!(for_b, a.iter().skip(1).map(Op::hash).collect::<Vec<_>>());
    // Now b has an op a lacks: b's heads are unknown to a and ignored, so a sends all it
    // has (a superset); what b already holds answers AlreadyKnown.
    add(&mut b, 3, revoke(50, "b"));
    let for_b: Vec<Op> = a.ops_after(&b.heads()).into_iter().cloned().collect();
    assert_eq!(for_b.len(), 3);
    let for_a: Vec<Op> = b.ops_after(&a.heads()).into_iter().cloned().collect();
    assert_eq!(for_a.len(), 2);
    let a_heads = a.heads();
    for op in for_b {
        match b.insert(op) {
            Ok(_) | Err(LogError::AlreadyKnown(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    // b now knows a's heads: exactly b's own op is missing from a.
    let for_a: Vec<Op> = b.ops_after(&a_heads).into_iter().cloned().collect();
    assert_eq!(for_a.len(), 1);
    for op in for_a {
        a.insert(op).unwrap();
    }
    assert_eq!(a.state(), b.state());
    assert_eq!(a.heads(), b.heads());
    assert!(a.ops_after(&b.heads()).is_empty());
    assert_eq!(a.ops_after(&[OpHash([7; 32])]).len(), a.len());
}

#[test]
fn new_op_with_many_heads_keeps_the_authors_chain() {
    // 20 admins each approve a peer concurrently on top of one root: 20 heads.
    let mut log = Log::new(Genesis {
        admins: (1..=20).map(id).collect(),
        threshold: 1,
    })
    .unwrap();
    add(&mut log, 1, approve(50));
    let root = log.clone();
    for author in 1..=20u8 {
        let op = root.new_op(&key(author), approve(100 + author), T0);
        log.insert(op).unwrap();
    }
    assert_eq!(log.heads().len(), 20);
    // Whoever authors next gets 16 parents, one of them its own last op.
    for author in 1..=20u8 {
        let op = log.new_op(&key(author), approve(99), T0);
        assert_eq!(op.unsigned.parents.len(), MAX_OP_PARENTS);
        assert_eq!(op.unsigned.lamport, 3);
        log.clone().insert(op).unwrap();
    }
}

#[test]
fn a_draft_round_trips_and_signs_like_new_op() {
    let admin = key(1);
    let mut log = log(1);
    let body = revoke(9, "gone");
    let draft = log.draft(id(1), body.clone(), 5);
    let decoded = UnsignedOp::decode(&draft.canonical_bytes()).unwrap();
    assert_eq!(decoded, draft);
    let op = Op::sign(decoded, &admin).unwrap();
    assert_eq!(op, log.new_op(&admin, body, 5));
    log.insert(op).unwrap();
    let mut bytes = draft.canonical_bytes();
    bytes.push(0);
    assert!(UnsignedOp::decode(&bytes).is_err());
}
