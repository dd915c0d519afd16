//! `run/node.json` in the config directory: where a running node actually listens.
//!
//! The daemon writes it once the node is ready and removes it on a clean stop. It holds the
//! bound API address and the KLP listen addresses, so a node can be configured with port 0
//! (`api.listen: 127.0.0.1:0`, `/ip4/127.0.0.1/tcp/0`) and still be found: by the CLI on the
//! same machine, by `kos testnet`, by tests. A file left by a process that is gone (a crash)
//! is ignored: its `pid` is checked in `/proc` (Linux; elsewhere only this process's own
//! file is taken, and the CLI falls back to `api.listen`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file, relative to the config directory.
pub const RUN_FILE: &str = "run/node.json";

/// What a running node reports about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunInfo {
    /// The node's process.
    pub pid: u32,
    pub node_id: String,
    /// The API's bound address (never port 0).
    pub api: SocketAddr,
    /// Whether the API serves HTTPS.
    pub tls: bool,
    /// KLP listen addresses with `/p2p/<node id>`; empty without KLP.
    pub klp: Vec<String>,
    /// When the node became ready (ms since the epoch).
    pub started_ms: i64,
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join(RUN_FILE)
}

/// Writes the file atomically (readers never see half of it).
pub fn write(dir: &Path, info: &RunInfo) -> std::io::Result<()> {
    let p = path(dir);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let text = serde_json::to_vec_pretty(info).map_err(std::io::Error::other)?;
    kos_config::snapshot::atomic_write(&p, &text, Some(0o644), &mut |_| {})
}

/// Removes the file if it is this process's (a newer node on the same directory may have
/// replaced it).
pub fn remove(dir: &Path) {
    if read_any(dir).is_some_and(|i| i.pid == std::process::id()) {
        let _ = std::fs::remove_file(path(dir));
    }
}

/// The file's content, whoever wrote it.
pub fn read_any(dir: &Path) -> Option<RunInfo> {
    let text = std::fs::read(path(dir)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// The running node of `dir`: the file, if its process is alive.
pub fn read(dir: &Path) -> Option<RunInfo> {
    read_any(dir).filter(|i| process_alive(i.pid))
}

fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn info(pid: u32) -> RunInfo {
        RunInfo {
            pid,
            node_id: "12D3KooW".into(),
            api: "127.0.0.1:41000".parse().unwrap(),
            tls: false,
            klp: vec!["/ip4/127.0.0.1/tcp/41001/p2p/12D3KooW".into()],
            started_ms: 1,
        }
    }

    #[test]
    fn written_read_and_removed_by_its_process() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read(d.path()), None);
        write(d.path(), &info(std::process::id())).unwrap();
        assert_eq!(read(d.path()), Some(info(std::process::id())));
        remove(d.path());
        assert!(!path(d.path()).exists());
    }

    #[test]
    fn a_file_of_a_process_that_is_gone_is_ignored_and_kept() {
        let d = tempfile::tempdir().unwrap();
        // Above the kernel's pid_max (4194304 at most): no such process.
        write(d.path(), &info(4_194_305)).unwrap();
        assert_eq!(read(d.path()), None);
        assert!(read_any(d.path()).is_some());
        // Not ours: not removed.
        remove(d.path());
        assert!(path(d.path()).exists());
    }
}
