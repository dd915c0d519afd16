//! `klp/peers.list`: the approved federation peers.
//!
//! ```text
//! # comment
//! <peer-id> [multiaddr ...] [# label]
//! 12D3KooW... /ip4/192.0.2.10/tcp/4001 /ip4/192.0.2.10/udp/4001/quic-v1 # alice
//! ```
//! One peer per line; blank lines and `#` comments are ignored. A multiaddr may end in
//! `/p2p/<peer-id>` only if that is the line's peer. Every malformed line is reported with
//! its number; a peer listed twice is an error naming both lines.
//!
//! `!<peer-id> [# reason]` is a **local block**: the peer is never admitted, whatever the
//! federation approves.
//!
//! # Two sections
//!
//! Everything above [`MANAGED_MARKER`] is the operator's: kOS never rewrites it (the CLI's
//! `kos peers add|remove` edit single lines there). Everything below the marker is written
//! by the node from the federation's op-log (the peers the admins approved, and revoked
//! ones as comments) and replaced as a whole on every change, atomically. A file without
//! the marker is all local.

use std::fmt;
use std::str::FromStr;

use kos_map_protocol::NodeId;
use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

/// Largest peers.list accepted (bounds memory on a bad file).
pub const MAX_PEERS_LIST_BYTES: usize = 4 * 1024 * 1024;

/// The line that starts the node-managed section.
pub const MANAGED_MARKER: &str = "# ==== federation-approved peers: written by kos from the federation log; edit above this line ====";

/// A peer blocked locally (`!<peer-id> # reason`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocked {
    pub id: NodeId,
    pub reason: Option<String>,
    pub line: u32,
}

/// A parsed peers.list: the operator's section and the node-managed one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeersFile {
    /// Approved by hand (above the marker).
    pub local: Vec<PeerEntry>,
    /// Blocked by hand (above the marker).
    pub blocked: Vec<Blocked>,
    /// Written by the node (below the marker).
    pub managed: Vec<PeerEntry>,
}

/// One approved peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerEntry {
    pub id: NodeId,
    /// Addresses to dial, without the `/p2p/` suffix.
    pub addrs: Vec<String>,
    pub label: Option<String>,
    /// 1-based line in the file (0 when not from a file).
    pub line: u32,
}

/// A malformed line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeersListError {
    pub line: u32,
    pub message: String,
}

impl fmt::Display for PeersListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Checks a multiaddr for peer `id` and returns it without a trailing `/p2p/`.
pub fn check_addr(addr: &str, id: &NodeId) -> Result<String, String> {
    let mut ma =
        Multiaddr::from_str(addr).map_err(|e| format!("`{addr}` is not a multiaddr: {e}"))?;
    if let Some(Protocol::P2p(p)) = ma.iter().last() {
        if p.to_bytes() != id.to_bytes() {
            return Err(format!("`{addr}` names peer {p}, not {id}"));
        }
        ma.pop();
    }
    if ma.iter().any(|p| matches!(p, Protocol::P2p(_))) {
        return Err(format!("`{addr}`: /p2p/ may appear only at the end"));
    }
    if ma.is_empty() {
        return Err(format!("`{addr}` has no transport address"));
    }
    Ok(ma.to_string())
}

fn parse_line(raw: &str, line: u32) -> Result<Option<PeerEntry>, String> {
    let (body, label) = match raw.split_once('#') {
        Some((b, l)) => (b, Some(l.trim().to_string()).filter(|l| !l.is_empty())),
        None => (raw, None),
    };
    let mut tokens = body.split_whitespace();
    let Some(first) = tokens.next() else {
        return Ok(None);
    };
    let id: NodeId = first
        .parse()
        .map_err(|e| format!("`{first}` is not a kOS peer id ({e})"))?;
    let addrs = tokens
        .map(|a| check_addr(a, &id))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(PeerEntry {
        id,
        addrs,
        label,
        line,
    }))
}

fn parse_block(raw: &str, line: u32) -> Result<Option<Blocked>, String> {
    let Some(rest) = raw.trim_start().strip_prefix('!') else {
        return Ok(None);
    };
    let (body, reason) = match rest.split_once('#') {
        Some((b, r)) => (b, Some(r.trim().to_string()).filter(|r| !r.is_empty())),
        None => (rest, None),
    };
    let mut tokens = body.split_whitespace();
    let first = tokens.next().ok_or("`!` must be followed by a peer id")?;
    let id: NodeId = first
        .parse()
        .map_err(|e| format!("`{first}` is not a kOS peer id ({e})"))?;
    if tokens.next().is_some() {
        return Err("a block line holds only `!<peer-id>` and an optional `# reason`".into());
    }
    Ok(Some(Blocked { id, reason, line }))
}

fn is_marker(raw: &str) -> bool {
    raw.trim_end() == MANAGED_MARKER
}

/// Parses a peers.list into its sections. All malformed lines are reported; a peer listed
/// (or blocked) twice in one section is an error naming both lines.
pub fn parse_peers_file(text: &str) -> Result<PeersFile, Vec<PeersListError>> {
    if text.len() > MAX_PEERS_LIST_BYTES {
        return Err(vec![PeersListError {
            line: 0,
            message: format!("file larger than {MAX_PEERS_LIST_BYTES} bytes"),
        }]);
    }
    let mut file = PeersFile::default();
    let mut errors = Vec::new();
    let mut managed = false;
    for (i, raw) in text.lines().enumerate() {
        let line = i as u32 + 1;
        if is_marker(raw) {
            if managed {
                errors.push(PeersListError {
                    line,
                    message: "the managed-section marker appears twice".into(),
                });
            }
            managed = true;
            continue;
        }
        if !managed {
            match parse_block(raw, line) {
                Ok(Some(b)) => {
                    let earlier = file
                        .blocked
                        .iter()
                        .map(|x| (x.id, x.line))
                        .chain(file.local.iter().map(|x| (x.id, x.line)))
                        .find(|(id, _)| *id == b.id);
                    match earlier {
                        Some((_, prev)) => errors.push(PeersListError {
                            line,
                            message: format!("peer {} is already listed on line {prev}", b.id),
                        }),
                        None => file.blocked.push(b),
                    }
                    continue;
                }
                Ok(None) => {}
                Err(message) => {
                    errors.push(PeersListError { line, message });
                    continue;
                }
            }
        }
        match parse_line(raw, line) {
            Ok(Some(e)) => {
                let section: &mut Vec<PeerEntry> = if managed {
                    &mut file.managed
                } else {
                    &mut file.local
                };
                let earlier = section
                    .iter()
                    .map(|x| (x.id, x.line))
                    .chain(
                        (!managed)
                            .then_some(file.blocked.iter().map(|x| (x.id, x.line)))
                            .into_iter()
                            .flatten(),
                    )
                    .find(|(id, _)| *id == e.id);
                match earlier {
                    Some((_, prev)) => errors.push(PeersListError {
                        line,
                        message: format!("peer {} is already listed on line {prev}", e.id),
                    }),
                    None => section.push(e),
                }
            }
            Ok(None) => {}
            Err(message) => errors.push(PeersListError { line, message }),
        }
    }
    if errors.is_empty() {
        Ok(file)
    } else {
        Err(errors)
    }
}

/// The operator's approved peers (the local section). All malformed lines are reported.
pub fn parse_peers_list(text: &str) -> Result<Vec<PeerEntry>, Vec<PeersListError>> {
    parse_peers_file(text).map(|f| f.local)
}

/// Replaces the managed section with `managed` (rendered lines, each ending in a newline),
/// keeping the operator's section byte for byte. An empty `managed` removes the section.
pub fn replace_managed(text: &str, managed: &str) -> String {
    let mut out = split_local(text).0.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    if !managed.is_empty() {
        out.push_str(MANAGED_MARKER);
        out.push('\n');
        out.push_str(managed);
    }
    out
}

/// Splits a file into the operator's section and the rest (marker included).
fn split_local(text: &str) -> (&str, &str) {
    let mut offset = 0;
    for raw in text.split_inclusive('\n') {
        if is_marker(raw.trim_end_matches('\n')) {
            return text.split_at(offset);
        }
        offset += raw.len();
    }
    (text, "")
}

/// Renders one entry as a peers.list line.
pub fn render_entry(e: &PeerEntry) -> String {
    let mut s = e.id.to_string();
    for a in &e.addrs {
        s.push(' ');
        s.push_str(a);
    }
    if let Some(l) = &e.label {
        s.push_str(" # ");
        s.push_str(l);
    }
    s
}

/// Whether an operator-section line is about `id` (an entry or a block).
fn names(raw: &str, id: &NodeId) -> bool {
    parse_block(raw, 0)
        .ok()
        .flatten()
        .map(|b| b.id)
        .or_else(|| parse_line(raw, 0).ok().flatten().map(|e| e.id))
        .is_some_and(|x| &x == id)
}

/// Adds (or replaces) a peer's line in the operator's section, keeping every other line and
/// comment as it is.
pub fn upsert_entry(text: &str, entry: &PeerEntry) -> String {
    let (text, managed) = split_local(text);
    let mut out = String::with_capacity(text.len() + 80);
    let mut replaced = false;
    for raw in text.lines() {
        // A block line of the same peer is replaced too: approving is unblocking.
        let is_it = names(raw, &entry.id);
        if is_it && !replaced {
            out.push_str(&render_entry(entry));
            replaced = true;
        } else if !is_it {
            out.push_str(raw);
        } else {
            continue;
        }
        out.push('\n');
    }
    if !replaced {
        out.push_str(&render_entry(entry));
        out.push('\n');
    }
    out.push_str(managed);
    out
}

/// Removes a peer's line (entry or block) from the operator's section; `None` if it was not
/// listed there.
pub fn remove_entry(text: &str, id: &NodeId) -> Option<String> {
    let (text, managed) = split_local(text);
    let mut found = false;
    let mut out = String::with_capacity(text.len());
    for raw in text.lines() {
        if names(raw, id) {
            found = true;
            continue;
        }
        out.push_str(raw);
        out.push('\n');
    }
    out.push_str(managed);
    found.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn id(n: u8) -> NodeId {
        NodeId::from_public_key(SigningKey::from_bytes(&[n; 32]).verifying_key())
    }

    #[test]
    fn parses_entries_labels_and_comments() {
        let (a, b) = (id(1), id(2));
        let text = format!(
            "# approved\n\n{a} /ip4/127.0.0.1/tcp/4001 /ip4/127.0.0.1/udp/4001/quic-v1/p2p/{a} # alice's node\n  {b}\n"
        );
        let list = parse_peers_list(&text).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(
            list[0].addrs,
            vec!["/ip4/127.0.0.1/tcp/4001", "/ip4/127.0.0.1/udp/4001/quic-v1"]
        );
        assert_eq!(list[0].label.as_deref(), Some("alice's node"));
        assert_eq!(list[0].line, 3);
        assert_eq!(list[1].id, b);
        assert!(list[1].addrs.is_empty());
    }

    #[test]
    fn reports_every_bad_line() {
        let (a, b) = (id(1), id(2));
        let text = format!(
            "{a}\nnot-a-peer\n{b} /ip4/1.2.3.4/tcp/x\n{a} /ip4/1.2.3.4/tcp/1\n{b} /ip4/1.2.3.4/tcp/1/p2p/{a}\n"
        );
        let errs = parse_peers_list(&text).unwrap_err();
        let lines: Vec<u32> = errs.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5], "{errs:?}");
        assert!(
            errs[0]
                .to_string()
                .starts_with("line 2: `not-a-peer` is not a kOS peer id")
        );
        assert!(errs[2].message.contains("already listed on line 1"));
        assert!(errs[3].message.contains("names peer"));
    }

    #[test]
    fn upsert_and_remove_keep_other_lines() {
        let (a, b) = (id(1), id(2));
        let text = format!("# keep me\n{a} # old\n");
        let e = PeerEntry {
            id: a,
            addrs: vec!["/ip4/10.0.0.1/tcp/1".into()],
            label: Some("new".into()),
            line: 0,
        };
        let t = upsert_entry(&text, &e);
        assert_eq!(t, format!("# keep me\n{a} /ip4/10.0.0.1/tcp/1 # new\n"));
        let t = upsert_entry(
            &t,
            &PeerEntry {
                id: b,
                addrs: vec![],
                label: None,
                line: 0,
            },
        );
        assert_eq!(parse_peers_list(&t).unwrap().len(), 2);
        let t = remove_entry(&t, &a).unwrap();
        assert_eq!(t, format!("# keep me\n{b}\n"));
        assert!(remove_entry(&t, &a).is_none());
    }

    #[test]
    fn sections_blocks_and_managed_rewrites() {
        let (a, b, c) = (id(1), id(2), id(3));
        let local = format!("# mine\n{a} /ip4/10.0.0.1/tcp/1\n!{b} # spammer\n");
        let managed = format!("{c} /ip4/10.0.0.3/tcp/1 # approved by admin\n{a}\n");
        let text = replace_managed(&local, &managed);
        assert!(text.starts_with(&local));
        let f = parse_peers_file(&text).unwrap();
        assert_eq!(f.local.len(), 1);
        assert_eq!(f.blocked[0].id, b);
        assert_eq!(f.blocked[0].reason.as_deref(), Some("spammer"));
        assert_eq!(
            f.managed.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![c, a],
            "a peer may be both local and managed"
        );
        // Rewriting the managed section keeps the operator's bytes; so do CLI edits.
        let text2 = replace_managed(&text, &format!("{c}\n"));
        assert!(text2.starts_with(&local));
        assert_eq!(parse_peers_file(&text2).unwrap().managed.len(), 1);
        let d = PeerEntry {
            id: id(4),
            addrs: vec![],
            label: None,
            line: 0,
        };
        let text3 = upsert_entry(&text2, &d);
        let f3 = parse_peers_file(&text3).unwrap();
        assert_eq!(f3.local.len(), 2);
        assert_eq!(f3.managed.len(), 1);
        let text4 = remove_entry(&text3, &c);
        assert!(
            text4.is_none(),
            "managed entries are not the operator's to remove"
        );
        assert_eq!(replace_managed(&text2, ""), local);
        // Adding a blocked peer unblocks it; removing a blocked one lifts the block.
        let t = upsert_entry(
            &local,
            &PeerEntry {
                id: b,
                addrs: vec![],
                label: None,
                line: 0,
            },
        );
        let f = parse_peers_file(&t).unwrap();
        assert!(
            f.blocked.is_empty() && f.local.iter().any(|e| e.id == b),
            "{t}"
        );
        let t = remove_entry(&local, &b).unwrap();
        assert!(parse_peers_file(&t).unwrap().blocked.is_empty());
    }

    #[test]
    fn bad_block_lines_and_duplicates_are_reported() {
        let (a, b) = (id(1), id(2));
        let text = format!("!{a}\n{a}\n!\n!{b} extra\n{MANAGED_MARKER}\n{MANAGED_MARKER}\n");
        let errs = parse_peers_file(&text).unwrap_err();
        let lines: Vec<u32> = errs.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 6], "{errs:?}");
    }
}
