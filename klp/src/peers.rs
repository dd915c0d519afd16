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

use std::fmt;
use std::str::FromStr;

use kos_map_protocol::NodeId;
use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

/// Largest peers.list accepted (bounds memory on a bad file).
pub const MAX_PEERS_LIST_BYTES: usize = 4 * 1024 * 1024;

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

/// Parses a peers.list. All malformed lines are reported.
pub fn parse_peers_list(text: &str) -> Result<Vec<PeerEntry>, Vec<PeersListError>> {
    if text.len() > MAX_PEERS_LIST_BYTES {
        return Err(vec![PeersListError {
            line: 0,
            message: format!("file larger than {MAX_PEERS_LIST_BYTES} bytes"),
        }]);
    }
    let mut out: Vec<PeerEntry> = Vec::new();
    let mut errors = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i as u32 + 1;
        match parse_line(raw, line) {
            Ok(Some(e)) => {
                if let Some(prev) = out.iter().find(|p| p.id == e.id) {
                    errors.push(PeersListError {
                        line,
                        message: format!("peer {} is already listed on line {}", e.id, prev.line),
                    });
                } else {
                    out.push(e);
                }
            }
            Ok(None) => {}
            Err(message) => errors.push(PeersListError { line, message }),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
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

/// Adds (or replaces) a peer's line, keeping every other line and comment as it is.
pub fn upsert_entry(text: &str, entry: &PeerEntry) -> String {
    let mut out = String::with_capacity(text.len() + 80);
    let mut replaced = false;
    for raw in text.lines() {
        let is_it = parse_line(raw, 0)
            .ok()
            .flatten()
            .is_some_and(|e| e.id == entry.id);
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
    out
}

/// Removes a peer's line; `None` if it was not listed.
pub fn remove_entry(text: &str, id: &NodeId) -> Option<String> {
    let mut found = false;
    let mut out = String::with_capacity(text.len());
    for raw in text.lines() {
        if parse_line(raw, 0)
            .ok()
            .flatten()
            .is_some_and(|e| &e.id == id)
        {
            found = true;
            continue;
        }
        out.push_str(raw);
        out.push('\n');
    }
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
}
