//! `klp/peers.list` as the federation sees it: the effective approved and denied sets the
//! swarm is given, and the managed section written from the log. Pure functions, except
//! [`read_peers_file`], [`write_managed`] and [`fingerprint`], which touch the file.

use std::collections::HashSet;
use std::path::Path;
use std::time::SystemTime;

use kos_config::load::PEERS_LIST;
use kos_klp::{NodeId, PeerEntry, PeersFile};
use kos_map_protocol::fedlog::{OpHash, State};

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

/// The peers refused whatever `handshake_required` says: the operator's blocks and the
/// federation's revocations, sorted, without duplicates.
pub fn denied_peers(file: &PeersFile, state: Option<&State>) -> Vec<NodeId> {
    let mut denied: Vec<NodeId> = file.blocked.iter().map(|b| b.id).collect();
    if let Some(state) = state {
        denied.extend(state.revoked.keys().copied());
    }
    denied.sort();
    denied.dedup();
    denied
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

/// What tells a changed peers.list: modification time and length.
pub fn fingerprint(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::fedsync::pending::tests::id;
    use kos_klp::Blocked;
    use kos_map_protocol::fedlog::{Approval, Revocation};
    use std::collections::{BTreeMap, BTreeSet};

    fn entry(n: u8, addrs: &[&str]) -> PeerEntry {
        PeerEntry {
            id: id(n),
            addrs: addrs.iter().map(ToString::to_string).collect(),
            label: Some(format!("local {n}")),
            line: u32::from(n),
        }
    }

    fn state(approved: &[(u8, &[&str], Option<&str>)], revoked: &[(u8, &str)]) -> State {
        State {
            admins: BTreeSet::from([id(1)]),
            threshold: 1,
            approved: approved
                .iter()
                .map(|(n, addrs, label)| {
                    (
                        id(*n),
                        Approval {
                            addrs: addrs.iter().map(ToString::to_string).collect(),
                            label: label.map(ToString::to_string),
                            op: OpHash([*n; 32]),
                        },
                    )
                })
                .collect(),
            revoked: revoked
                .iter()
                .map(|(n, reason)| {
                    (
                        id(*n),
                        Revocation {
                            reason: reason.to_string(),
                            op: OpHash([*n; 32]),
                        },
                    )
                })
                .collect(),
            config: BTreeMap::new(),
        }
    }

    fn file(local: Vec<PeerEntry>, blocked: &[u8]) -> PeersFile {
        PeersFile {
            local,
            blocked: blocked
                .iter()
                .map(|n| Blocked {
                    id: id(*n),
                    reason: None,
                    line: 0,
                })
                .collect(),
            managed: Vec::new(),
        }
    }

    fn ids(v: &[PeerEntry]) -> BTreeSet<NodeId> {
        v.iter().map(|e| e.id).collect()
    }

    #[test]
    fn the_effective_set_is_local_and_approved_minus_revoked_and_blocked() {
        let a = "/ip4/10.0.0.2/tcp/4001";
        let b = "/ip4/10.0.0.3/udp/4001/quic-v1";
        // 2 local only; 3 local and approved; 4 approved only; 5 local but revoked;
        // 6 approved but blocked; 7 local and blocked.
        let f = file(
            vec![entry(2, &[]), entry(3, &[a]), entry(5, &[]), entry(7, &[])],
            &[6, 7],
        );
        let s = state(
            &[(3, &[a, b], None), (4, &[b], Some("four")), (6, &[], None)],
            &[(5, "gone")],
        );
        let eff = effective_peers(&f, Some(&s));
        assert_eq!(ids(&eff), BTreeSet::from([id(2), id(3), id(4)]));
        // A local entry keeps its label and line and gains the approval's new addresses.
        let three = eff.iter().find(|e| e.id == id(3)).unwrap();
        assert_eq!(three.addrs, vec![a.to_string(), b.to_string()]);
        assert_eq!(three.label.as_deref(), Some("local 3"));
        assert_eq!(three.line, 3);
        let four = eff.iter().find(|e| e.id == id(4)).unwrap();
        assert_eq!(four.label.as_deref(), Some("four"));
        assert_eq!((four.addrs.len(), four.line), (1, 0));
        // Federation off: the operator's entries minus the blocks.
        assert_eq!(
            ids(&effective_peers(&f, None)),
            BTreeSet::from([id(2), id(3), id(5)])
        );
        assert_eq!(denied_peers(&f, Some(&s)), {
            let mut d = vec![id(5), id(6), id(7)];
            d.sort();
            d
        });
        assert_eq!(denied_peers(&f, None).len(), 2);
    }

    #[test]
    fn an_approval_address_of_another_peer_is_dropped() {
        let other = format!("/ip4/10.0.0.9/tcp/1/p2p/{}", id(9));
        let s = state(&[(4, &[other.as_str(), "not an addr"], None)], &[]);
        let eff = effective_peers(&PeersFile::default(), Some(&s));
        assert!(eff[0].addrs.is_empty());
        assert!(!render_managed(&s).contains("10.0.0.9"));
    }

    #[test]
    fn the_managed_section_is_rendered_exactly() {
        let s = state(
            &[
                (4, &["/ip4/10.0.0.4/tcp/4001"], Some("four\nlines")),
                (3, &[], None),
            ],
            &[(5, "bad\tpeer")],
        );
        let mut approved: Vec<(NodeId, String)> = vec![
            (
                id(4),
                format!(
                    "{} /ip4/10.0.0.4/tcp/4001 # four lines (op {})\n",
                    id(4),
                    "04".repeat(6)
                ),
            ),
            (id(3), format!("{} # op {}\n", id(3), "03".repeat(6))),
        ];
        approved.sort();
        let want: String = approved.into_iter().map(|(_, l)| l).collect::<String>()
            + &format!("# revoked {}: bad peer (op {})\n", id(5), "05".repeat(6));
        assert_eq!(render_managed(&s), want);
        assert_eq!(render_managed(&state(&[], &[])), "");
    }

    #[test]
    fn the_managed_section_is_written_only_over_the_expected_operator_section() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PEERS_LIST);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let operator = format!("{}\n", id(2));
        std::fs::write(&path, &operator).unwrap();
        let expected = read_peers_file(dir.path()).unwrap();
        let managed = render_managed(&state(&[(3, &[], None)], &[]));
        assert!(write_managed(dir.path(), &managed, &expected).unwrap());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(&operator) && text.ends_with(&managed));
        // Unchanged: not written again.
        assert!(!write_managed(dir.path(), &managed, &expected).unwrap());
        // Edited since it was read: left alone.
        std::fs::write(&path, format!("{}\n", id(4))).unwrap();
        assert!(!write_managed(dir.path(), "", &expected).unwrap());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", id(4))
        );
    }
}
