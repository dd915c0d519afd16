//! `kos testnet`: up, status, down, a failed up, `--admin`, as a user runs them.
//!
//! The binary is `KOS_TEST_KOS_BIN` when set (a copy that a concurrent build cannot replace),
//! else this build's `kos`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn kos_bin() -> PathBuf {
    std::env::var_os("KOS_TEST_KOS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_kos")))
}

/// `kos` with no `KOS_*` variable of ours.
fn kos() -> Command {
    let mut c = Command::new(kos_bin());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("KOS_") {
            c.env_remove(k);
        }
    }
    c
}

/// `kos --dir <dir> testnet <args>`.
fn testnet(dir: &Path, args: &[&str]) -> Output {
    kos()
        .arg("--dir")
        .arg(dir)
        .arg("testnet")
        .args(args)
        .output()
        .unwrap()
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
            assert!(f.len() >= 5, "unexpected table row: {l}");
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

/// Live processes whose command line names `dir` (a node of that testnet).
fn processes_under(dir: &Path) -> Vec<u64> {
    let dir = dir.to_string_lossy();
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                c.split(|b| *b == 0)
                    .any(|a| String::from_utf8_lossy(a).starts_with(&*dir))
            })
        })
        .filter(|pid| alive(*pid))
        .collect()
}

fn state(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(dir.join("testnet.json")).unwrap()).unwrap()
}

fn pids(state: &serde_json::Value) -> Vec<u64> {
    state["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["pid"].as_u64().unwrap())
        .collect()
}

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A node of a running process testnet, asked over its API.
struct NodeApi {
    api: SocketAddr,
    token: String,
}

impl NodeApi {
    fn of(node_dir: &Path) -> Self {
        let run = kos_node::runfile::read(node_dir).expect("run/node.json of a running node");
        let o = kos()
            .arg("--dir")
            .arg(node_dir)
            .args(["token", "create", "--role", "viewer", "--ttl", "1h"])
            .output()
            .unwrap();
        assert!(o.status.success(), "token: {}", show(&o));
        Self {
            api: run.api,
            token: stdout(&o).trim().to_string(),
        }
    }

    /// Admitted and connected peers.
    fn admitted(&self) -> Vec<String> {
        kos_node::testnet::admitted_at(self.api, Some(&self.token)).expect("the node answers")
    }
}

#[test]
fn five_nodes_up_status_down_on_kernel_picked_ports() {
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

    // Port 0 in the generated configuration; the bound addresses come from run/node.json.
    let st = state(&dir);
    let mut ports = std::collections::BTreeSet::new();
    for n in st["nodes"].as_array().unwrap() {
        let nd = PathBuf::from(n["dir"].as_str().unwrap());
        let env = fs::read_to_string(nd.join("system.env")).unwrap();
        assert!(env.contains("KOS_API__LISTEN=127.0.0.1:0"), "{env}");
        let klp = fs::read_to_string(nd.join("klp/klp_settings.yaml")).unwrap();
        assert!(klp.contains("/ip4/127.0.0.1/tcp/0"), "{klp}");
        let run = kos_node::runfile::read(&nd).expect("run/node.json");
        assert_eq!(n["api"].as_str().unwrap(), run.api.to_string());
        assert_eq!(n["klp"].as_str().unwrap(), run.klp[0]);
        assert_ne!(run.api.port(), 0);
        assert!(ports.insert(run.api.port()), "API port used twice");
    }

    let status = testnet(&dir, &["status"]);
    assert!(status.status.success(), "testnet status: {}", show(&status));
    let rows = table(&stdout(&status));
    assert_eq!(rows.len(), 5, "{}", show(&status));
    assert!(rows.iter().all(|r| r.1 == "4"), "{}", show(&status));

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
    let pids = pids(&st);
    assert_eq!(pids.len(), 5);
    assert!(
        pids.iter().all(|p| alive(*p)),
        "the refused second up must not touch the nodes"
    );

    // Output to a closed pipe: a quiet exit 0.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let piped = kos()
        .arg("--dir")
        .arg(&dir)
        .args(["testnet", "status"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(piped.status.success(), "{}", show(&piped));
    assert_eq!(stderr(&piped), "", "quiet: {}", show(&piped));

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

/// `up` fails after starting every node (no mesh within 1 ms: the nodes learn each other's
/// addresses only once all are ready): it stops all of them and removes its state.
#[test]
fn a_failed_up_stops_every_node_it_started() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tn");
    let _down = Down(dir.clone());

    let up = testnet(&dir, &["up", "--nodes", "3", "--timeout", "1ms"]);
    assert!(!up.status.success(), "up must fail: {}", show(&up));
    let err = stderr(&up);
    assert!(
        err.contains("not every node admitted every other") && err.contains("stopped"),
        "says why and what it stopped: {}",
        show(&up)
    );
    // The nodes did start: each logged that it was ready.
    for i in 1..=3 {
        let log = fs::read_to_string(dir.join(format!("node-{i}/kos.log"))).unwrap();
        assert!(log.contains("node ready"), "node-{i} started: {log}");
    }
    // The pids it reports as stopped are gone, and no process of this testnet is left.
    let reported: Vec<u64> = err
        .split("(pids ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .expect("the pids it stopped")
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(reported.len(), 3, "{err}");
    let left: Vec<&u64> = reported.iter().filter(|p| alive(**p)).collect();
    assert!(left.is_empty(), "alive after a failed up: {left:?}");
    assert_eq!(
        processes_under(&dir),
        Vec::<u64>::new(),
        "no node process left"
    );
    assert!(!dir.join("testnet.json").exists(), "state removed");

    // And the directory is free for the next `up`.
    let status = testnet(&dir, &["status"]);
    assert!(!status.status.success());
    assert!(stderr(&status).contains("no testnet"), "{}", show(&status));
}

/// `up --admin`: node 1 holds the federation admin key, every node pins it; a revocation run
/// with the CLI against node 1 cuts node 3 off on node 2 too.
#[test]
fn admin_testnet_revocation_from_node_1_reaches_every_node() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tn");
    let _down = Down(dir.clone());

    let up = testnet(
        &dir,
        &["up", "--nodes", "3", "--admin", "--timeout", "120s"],
    );
    assert!(up.status.success(), "testnet up --admin: {}", show(&up));
    let st = state(&dir);
    let admin = st["admin"]
        .as_str()
        .expect("admin id in the state")
        .to_string();
    assert!(
        stdout(&up).contains(&admin),
        "prints the admin id: {}",
        show(&up)
    );
    let node_dir = |i: usize| PathBuf::from(st["nodes"][i]["dir"].as_str().unwrap());
    let id = |i: usize| st["nodes"][i]["peer_id"].as_str().unwrap().to_string();
    assert!(node_dir(0).join("federation/admin.key").exists());
    for i in 0..3 {
        let klp = fs::read_to_string(node_dir(i).join("klp/klp_settings.yaml")).unwrap();
        assert!(klp.contains(&admin), "node-{} pins the admin: {klp}", i + 1);
    }

    let n1 = NodeApi::of(&node_dir(0));
    let n2 = NodeApi::of(&node_dir(1));
    assert!(n2.admitted().contains(&id(2)), "node-2 admits node-3 first");

    // As the README says: KOS_HOME=<node-1> kos peers revoke <id>.
    let revoke = kos()
        .env("KOS_HOME", node_dir(0))
        .args(["peers", "revoke", &id(2), "--reason", "test"])
        .output()
        .unwrap();
    assert!(revoke.status.success(), "peers revoke: {}", show(&revoke));
    assert!(stdout(&revoke).contains("revoked"), "{}", show(&revoke));

    wait_for(
        "node-2 and node-1 no longer admit node-3",
        Duration::from_secs(60),
        || !n2.admitted().contains(&id(2)) && !n1.admitted().contains(&id(2)),
    );
    // ... because of the federation's revocation, which node-2 holds.
    let fed = federation_status(&node_dir(1));
    let revoked: Vec<&str> = fed["revoked"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(
        revoked,
        [id(2).as_str()],
        "node-2's federation state: {fed}"
    );
    // Nodes 1 and 2 still admit each other.
    assert!(n2.admitted().contains(&id(0)), "node-2 keeps node-1");

    // Shared configuration published from node-1 reaches node-2, which applies it.
    let snapshot = tmp.path().join("klp.yaml");
    fs::write(
        &snapshot,
        "federation:\n  klp:\n    handshake_timeout: 7s\n",
    )
    .unwrap();
    let publish = kos()
        .env("KOS_HOME", node_dir(0))
        .args(["config", "publish", "--scope", "klp"])
        .arg(&snapshot)
        .output()
        .unwrap();
    assert!(
        publish.status.success(),
        "config publish: {}",
        show(&publish)
    );
    wait_for(
        "node-2 applies the klp snapshot",
        Duration::from_secs(60),
        || {
            federation_status(&node_dir(1))["config"]
                .as_array()
                .is_some_and(|c| {
                    c.iter()
                        .any(|s| s["scope"] == "klp" && s["status"] == "ack")
                })
        },
    );
}

/// `kos federation status --json` of the node in `node_dir`.
fn federation_status(node_dir: &Path) -> serde_json::Value {
    let o = kos()
        .env("KOS_HOME", node_dir)
        .args(["federation", "status", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "federation status: {}", show(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}
