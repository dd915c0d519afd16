//! `kos testnet`: up, status, down, as a user runs them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const KOS: &str = env!("CARGO_BIN_EXE_kos");

/// `kos --dir <dir> testnet <args>`, with no `KOS_*` variable of ours reaching the nodes.
fn testnet(dir: &Path, args: &[&str]) -> Output {
    let mut c = Command::new(KOS);
    c.arg("--dir").arg(dir).arg("testnet").args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("KOS_") {
            c.env_remove(k);
        }
    }
    c.output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn show(o: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(o),
        stderr(o)
    )
}

/// Runs `testnet down` on drop, so a failing test leaves no node running.
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let o = testnet(&self.0, &["down"]);
        if !o.status.success() {
            eprintln!("cleanup: testnet down failed: {}", show(&o));
        }
    }
}

/// The rows of the table `up` and `status` print: (node, admitted, running).
fn table(out: &str) -> Vec<(String, String, String)> {
    out.lines()
        .filter(|l| l.starts_with("node-"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 5, "unexpected table row: {l}");
            (f[0].to_string(), f[3].to_string(), f[4].to_string())
        })
        .collect()
}

/// Alive: `/proc/<pid>` exists and the process is not a zombie (nodes outlive `up`, so their
/// parent is whatever reaps orphans here, which may never reap them).
fn alive(pid: u64) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S ...": the state follows the last ')' (comm may contain anything).
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or("");
    !matches!(state, "Z" | "X" | "x" | "")
}

#[test]
fn five_nodes_up_status_down() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tn");
    let _down = Down(dir.clone());

    let up = testnet(&dir, &["up", "--nodes", "5", "--timeout", "120s"]);
    assert!(up.status.success(), "testnet up: {}", show(&up));
    let rows = table(&stdout(&up));
    assert_eq!(rows.len(), 5, "five rows: {}", show(&up));
    for (name, admitted, running) in &rows {
        assert_eq!(admitted, "4", "{name} admitted: {}", show(&up));
        assert_eq!(running, "yes", "{name} running: {}", show(&up));
    }

    let status = testnet(&dir, &["status"]);
    assert!(status.status.success(), "testnet status: {}", show(&status));
    assert_eq!(table(&stdout(&status)).len(), 5, "{}", show(&status));

    // A second `up` on a running testnet is refused, and leaves it alone.
    let again = testnet(&dir, &["up", "--nodes", "5"]);
    assert!(
        !again.status.success(),
        "second up must fail: {}",
        show(&again)
    );
    assert!(
        stderr(&again).contains("a testnet is already running")
            && stderr(&again).contains("testnet down"),
        "clear message: {}",
        show(&again)
    );

    let state: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("testnet.json")).unwrap()).unwrap();
    let pids: Vec<u64> = state["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(pids.len(), 5);
    assert!(
        pids.iter().all(|p| alive(*p)),
        "the refused second up must not touch the nodes"
    );

    let down = testnet(&dir, &["down"]);
    assert!(down.status.success(), "testnet down: {}", show(&down));
    let still: Vec<&u64> = pids.iter().filter(|p| alive(**p)).collect();
    assert!(still.is_empty(), "alive after down: {still:?}");
    assert!(!dir.join("testnet.json").exists(), "testnet.json removed");

    // Nothing running: `down` says so and succeeds.
    let none = testnet(&dir, &["down"]);
    assert!(none.status.success(), "{}", show(&none));
    assert!(
        stdout(&none).contains("no testnet"),
        "says nothing runs: {}",
        show(&none)
    );
}
