//! DNS-SD discovery between two nodes on a real link: two network namespaces joined by a
//! veth pair, one `kos run` in each, and nothing in either `peers.list` but the other's peer
//! id (no address). The nodes must find each other over mDNS and admit each other through
//! MAP; an independent DNS-SD browser (Python's `zeroconf`) must see both advertisements.
//!
//! Needs root, `ip` (iproute2) and a `python3` with `zeroconf` (`.ci/run` installs it). In CI
//! (`CI=true`) a missing one is a failure; elsewhere the test prints `NOT RUN: ...`.
//!
//! `KOS_BENCH=1` also runs `dnssd_admission_timing` (five runs, min/p50/max), which feeds
//! BENCHMARKS.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

const KOS: &str = env!("CARGO_BIN_EXE_kos");
const ADMISSION_TIMEOUT: Duration = Duration::from_secs(30);
const BENCH_RUNS: usize = 5;

/// An independent DNS-SD browser: browses `_kos-klp._udp.local.` until an instance whose TXT
/// `id` is `argv[1]` resolves or `argv[2]` seconds pass, then prints every resolved instance
/// as JSON (name, port, addresses, TXT).
const BROWSER: &str = r#"
import json, sys, time
from zeroconf import ServiceBrowser, ServiceListener, Zeroconf

TYPE = "_kos-klp._udp.local."
want, limit = sys.argv[1], float(sys.argv[2])

class Names(ServiceListener):
    def __init__(self):
        self.names = set()
    def add_service(self, zc, type_, name):
        self.names.add(name)
    def update_service(self, zc, type_, name):
        self.names.add(name)
    def remove_service(self, zc, type_, name):
        pass

zc = Zeroconf()
names = Names()
browser = ServiceBrowser(zc, TYPE, names)
found = {}
deadline = time.monotonic() + limit
while time.monotonic() < deadline:
    for name in sorted(set(names.names) - set(found)):
        info = zc.get_service_info(TYPE, name, timeout=1000)
        if info is not None:
            found[name] = {
                "name": name,
                "port": info.port,
                "addresses": info.parsed_addresses(),
                "txt": {k.decode(): None if v is None else v.decode()
                        for k, v in info.properties.items()},
            }
    if any(f["txt"].get("id") == want for f in found.values()):
        break
    time.sleep(0.1)
browser.cancel()
zc.close()
print(json.dumps(list(found.values())))
"#;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// `kos_tests::require` (node tests cannot depend on kos-tests): in CI a missing precondition
/// fails the test; elsewhere it prints `NOT RUN: <test>: <why>` and the test returns.
fn require<T>(test: &str, what: Result<T, String>) -> Option<T> {
    match what {
        Ok(v) => Some(v),
        Err(e) if in_ci() => panic!("{test}: required tool unavailable in CI: {e}"),
        Err(e) => {
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "NOT RUN: {test}: {e}");
            None
        }
    }
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    })
}

/// Root and `ip`: what network namespaces need.
fn netns_tools() -> Result<(), String> {
    if !is_root() {
        return Err("needs root to create network namespaces".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => Ok(()),
        _ => Err("`ip` (iproute2) is missing".into()),
    }
}

/// The path of a Python interpreter that has `zeroconf`.
fn zeroconf_python() -> Result<PathBuf, String> {
    for candidate in ["python3", "/usr/bin/python3"] {
        if let Ok(o) = Command::new(candidate)
            .args(["-c", "import sys, zeroconf; print(sys.executable)"])
            .output()
            && o.status.success()
        {
            let exe = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if !exe.is_empty() {
                return Ok(PathBuf::from(exe));
            }
        }
    }
    Err("no python3 with the `zeroconf` package (`python3 -m pip install zeroconf`)".into())
}

fn run_ip(args: &[&str]) -> Result<(), String> {
    let o = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

static NEXT_PAIR: AtomicU32 = AtomicU32::new(0);

/// Two network namespaces joined by a veth pair. Dropping it deletes the namespaces, and with
/// them the veth ends.
struct NetPair {
    ns: [String; 2],
    veth: [String; 2],
    addr: [String; 2],
    created: Vec<String>,
}

impl NetPair {
    fn create() -> Result<Self, String> {
        let pid = std::process::id();
        let n = NEXT_PAIR.fetch_add(1, Ordering::SeqCst);
        let subnet = (pid + n) % 254 + 1;
        let mut pair = NetPair {
            ns: [
                format!("kos-dnssd-{pid}-{n}-a"),
                format!("kos-dnssd-{pid}-{n}-b"),
            ],
            // Interface names have at most 15 characters: "kv" + pid (<= 7) + "x" + n + "a".
            veth: [format!("kv{pid}x{n}a"), format!("kv{pid}x{n}b")],
            addr: [format!("10.231.{subnet}.1"), format!("10.231.{subnet}.2")],
            created: Vec::new(),
        };
        assert!(pair.veth.iter().all(|v| v.len() <= 15));
        for ns in pair.ns.clone() {
            run_ip(&["netns", "add", &ns])?;
            pair.created.push(ns);
        }
        // Created inside the namespaces: the host's network is never touched.
        run_ip(&[
            "-n",
            &pair.ns[0],
            "link",
            "add",
            &pair.veth[0],
            "type",
            "veth",
            "peer",
            "name",
            &pair.veth[1],
            "netns",
            &pair.ns[1],
        ])?;
        for i in 0..2 {
            let (ns, veth) = (&pair.ns[i], &pair.veth[i]);
            run_ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", pair.addr[i]),
                "dev",
                veth,
            ])?;
            run_ip(&["-n", ns, "link", "set", "lo", "up"])?;
            run_ip(&["-n", ns, "link", "set", veth, "up"])?;
        }
        // Wait for the carrier: mdns-sd uses only interfaces that are operationally up and
        // looks again only every 5 s, so a node started before the link is up would measure
        // that interval, not discovery.
        let deadline = Instant::now() + Duration::from_secs(10);
        for i in 0..2 {
            loop {
                let o = Command::new("ip")
                    .args([
                        "-n",
                        &pair.ns[i],
                        "-o",
                        "link",
                        "show",
                        "dev",
                        &pair.veth[i],
                    ])
                    .output()
                    .map_err(|e| e.to_string())?;
                if String::from_utf8_lossy(&o.stdout).contains("state UP") {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("{} is not up after 10 s", pair.veth[i]));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(pair)
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        for ns in &self.created {
            if let Err(e) = run_ip(&["netns", "del", ns]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// The node processes. Dropping it stops them: SIGTERM, then SIGKILL after 15 s.
struct Nodes(Vec<Child>);

impl Nodes {
    /// SIGTERM to every node, then their exit statuses.
    fn stop(&mut self) -> Vec<ExitStatus> {
        for c in &self.0 {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut out = Vec::new();
        for c in &mut self.0 {
            loop {
                match c.try_wait() {
                    Ok(Some(s)) => {
                        out.push(s);
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => {
                        eprintln!("node {} did not stop on SIGTERM; killing it", c.id());
                        let _ = c.kill();
                        if let Ok(s) = c.wait() {
                            out.push(s);
                        }
                        break;
                    }
                }
            }
        }
        self.0.clear();
        out
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A command with no `KOS_*` variable of ours leaking into the node's configuration.
fn clean_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new(program);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("KOS_") {
            c.env_remove(k);
        }
    }
    c
}

fn check(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what}: {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

struct NodeDir {
    dir: PathBuf,
    id: String,
    log: PathBuf,
}

/// `kos init --profile federation_node`, then the settings of the test: SQLite, API on the
/// namespace's own loopback, DNS-SD on `iface` only.
fn lay_out(root: &Path, name: &str, iface: &str) -> NodeDir {
    let dir = root.join(name);
    let d = dir.to_str().unwrap();
    let o = clean_command(KOS)
        .args(["init", "--profile", "federation_node", "--dir", d])
        .output()
        .unwrap();
    check(&o, "kos init");
    fs::write(
        dir.join("system.env"),
        "KOS_PROFILE=federation_node\nKOS_STORAGE__DATABASE=sqlite\nKOS_API__LISTEN=127.0.0.1:7420\nKOS_LOGGING__FORMAT=json\n",
    )
    .unwrap();
    fs::write(
        dir.join("klp/klp_settings.yaml"),
        format!(
            "enabled: true\nhandshake_required: true\npeer_discovery: dns_sd\nlisten:\n  - /ip4/0.0.0.0/tcp/4001\ndiscovery_interfaces:\n  - {iface}\n"
        ),
    )
    .unwrap();
    let o = clean_command(KOS)
        .args(["--dir", d, "id", "--json"])
        .output()
        .unwrap();
    check(&o, "kos id");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    NodeDir {
        id: v["peer_id"].as_str().unwrap().to_string(),
        log: root.join(format!("{name}.log")),
        dir,
    }
}

/// The state the node in `ns` reports for `peer` (`kos peers list --json`, which asks the
/// node's API), or `None` when the node does not answer yet.
fn peer_state(ns: &str, dir: &Path, peer: &str) -> Option<String> {
    let o = clean_command("ip")
        .args(["netns", "exec", ns, KOS, "--dir", dir.to_str().unwrap()])
        .args(["peers", "list", "--json"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !o.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
    if v["node_running"] != true {
        return None;
    }
    v["peers"]
        .as_array()?
        .iter()
        .find(|p| p["id"] == peer)
        .and_then(|p| p["state"].as_str())
        .map(str::to_string)
}

fn dump_logs(nodes: &[NodeDir]) {
    for n in nodes {
        eprintln!(
            "----- {} -----\n{}",
            n.log.display(),
            fs::read_to_string(&n.log).unwrap_or_default()
        );
    }
}

/// Timestamps of the JSON log lines whose `message` is `message` (and, if given, whose `peer`
/// is `peer`).
fn log_times(log: &Path, message: &str, peer: Option<&str>) -> Vec<SystemTime> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == message && peer.is_none_or(|p| v["peer"] == p))
        .filter_map(|v| humantime::parse_rfc3339(v["timestamp"].as_str()?).ok())
        .collect()
}

fn since(later: SystemTime, earlier: SystemTime) -> Duration {
    later.duration_since(earlier).unwrap_or_default()
}

#[derive(Clone, Copy, Debug)]
struct Timing {
    /// Spawn of the first node to the poll that saw both admitted (includes poll latency).
    polled: Duration,
    /// Spawn of the first node to the later "MAP admitted" log line.
    logged: Duration,
    /// Spawn of the first node to the later "KLP started" (both advertising on DNS-SD).
    klp_started: Duration,
    /// The later "KLP started" to the first "discovered by DNS-SD" (either node): DNS-SD
    /// probing, announcement and resolution.
    klp_started_to_discovery: Duration,
    /// First "discovered by DNS-SD" log line (either node) to the later "MAP admitted".
    discovery_to_admission: Duration,
}

/// Sets up the pair, starts both nodes, waits for mutual admission and, with a browser,
/// checks the advertisements; stops everything.
fn run_pair(browser: Option<&Path>) -> Result<Timing, String> {
    let net = NetPair::create()?;
    let tmp = tempfile::tempdir().unwrap();
    let a = lay_out(tmp.path(), "a", &net.veth[0]);
    let b = lay_out(tmp.path(), "b", &net.veth[1]);
    // Each lists only the other's id: no address, so only DNS-SD can bring them together.
    fs::write(a.dir.join("klp/peers.list"), format!("{}\n", b.id)).unwrap();
    fs::write(b.dir.join("klp/peers.list"), format!("{}\n", a.id)).unwrap();
    let dirs = [a, b];

    let started = Instant::now();
    let started_wall = SystemTime::now();
    let mut nodes = Nodes(Vec::new());
    for (i, n) in dirs.iter().enumerate() {
        let log = fs::File::create(&n.log).unwrap();
        let child = clean_command("ip")
            .args(["netns", "exec", &net.ns[i], KOS])
            .args(["--dir", n.dir.to_str().unwrap(), "run"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        nodes.0.push(child);
    }

    let deadline = started + ADMISSION_TIMEOUT;
    let polled = loop {
        let states: Vec<Option<String>> = (0..2)
            .map(|i| peer_state(&net.ns[i], &dirs[i].dir, &dirs[1 - i].id))
            .collect();
        if states.iter().all(|s| s.as_deref() == Some("admitted")) {
            break started.elapsed();
        }
        for c in &mut nodes.0 {
            if let Some(status) = c.try_wait().unwrap() {
                dump_logs(&dirs);
                panic!("a node exited during the test: {status}");
            }
        }
        if Instant::now() > deadline {
            dump_logs(&dirs);
            panic!(
                "no mutual admission over DNS-SD within {ADMISSION_TIMEOUT:?}: a sees b as {:?}, b sees a as {:?}",
                states[0], states[1]
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };

    if let Some(python) = browser {
        let script = tmp.path().join("browse.py");
        fs::write(&script, BROWSER).unwrap();
        // Browse in both namespaces at once; each must see the other node, on the link.
        let browsers: Vec<Child> = (0..2)
            .map(|i| {
                clean_command("ip")
                    .args(["netns", "exec", &net.ns[i]])
                    .arg(python)
                    .arg(&script)
                    .args([&dirs[1 - i].id, "10"])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for (i, child) in browsers.into_iter().enumerate() {
            let o = child.wait_with_output().unwrap();
            check(&o, "zeroconf browser");
            let seen: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            let other = &dirs[1 - i];
            let instance = seen
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["txt"]["id"] == other.id.as_str());
            let Some(instance) = instance else {
                dump_logs(&dirs);
                panic!(
                    "the browser in {} did not see {} (`_kos-klp._udp`, TXT id={}); it saw: {seen}",
                    net.ns[i],
                    if i == 0 { "b" } else { "a" },
                    other.id
                );
            };
            let expected_txt = serde_json::json!({"id": other.id, "v": "1"});
            assert_eq!(
                instance["txt"], expected_txt,
                "TXT must be exactly id and v: {instance}"
            );
            assert_eq!(
                instance["name"],
                format!("{}._kos-klp._udp.local.", other.id)
            );
            assert_eq!(instance["port"], 4001, "{instance}");
            assert!(
                instance["addresses"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| *x == net.addr[1 - i].as_str()),
                "advertised addresses must include {}: {instance}",
                net.addr[1 - i]
            );
        }
    }

    let statuses = nodes.stop();
    assert!(
        statuses.iter().all(ExitStatus::success),
        "nodes must stop cleanly on SIGTERM: {statuses:?}"
    );

    let admitted = (0..2)
        .map(|i| log_times(&dirs[i].log, "MAP admitted", Some(&dirs[1 - i].id)))
        .map(|t| t.first().copied())
        .collect::<Option<Vec<SystemTime>>>();
    let discovered = dirs
        .iter()
        .flat_map(|n| log_times(&n.log, "discovered by DNS-SD", None))
        .min();
    let klp_started = dirs
        .iter()
        .map(|n| log_times(&n.log, "KLP started", None).first().copied())
        .collect::<Option<Vec<SystemTime>>>();
    let (Some(admitted), Some(discovered), Some(klp_started)) = (admitted, discovered, klp_started)
    else {
        dump_logs(&dirs);
        panic!(
            "the logs lack the \"KLP started\", \"discovered by DNS-SD\" or \"MAP admitted\" lines"
        );
    };
    let mutual = admitted.iter().copied().max().unwrap();
    let klp_started = klp_started.iter().copied().max().unwrap();
    Ok(Timing {
        polled,
        logged: since(mutual, started_wall),
        klp_started: since(klp_started, started_wall),
        klp_started_to_discovery: since(discovered, klp_started),
        discovery_to_admission: since(mutual, discovered),
    })
}

#[test]
fn dnssd_discovery_across_namespaces() {
    const TEST: &str = "dnssd_discovery_across_namespaces";
    if require(TEST, netns_tools()).is_none() {
        return;
    }
    let Some(python) = require(TEST, zeroconf_python()) else {
        return;
    };
    // A machine where root cannot create namespaces (an unprivileged container) is a missing
    // tool too.
    let Some(t) = require(TEST, run_pair(Some(&python))) else {
        return;
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    eprintln!(
        "DNS-SD: node start to mutual admission {:.0} ms (polled), {:.0} ms (logs) = start to KLP started {:.0} ms + to first discovery {:.0} ms + to mutual admission {:.0} ms",
        ms(t.polled),
        ms(t.logged),
        ms(t.klp_started),
        ms(t.klp_started_to_discovery),
        ms(t.discovery_to_admission)
    );
}

#[test]
fn dnssd_admission_timing() {
    const TEST: &str = "dnssd_admission_timing";
    if std::env::var("KOS_BENCH").ok().as_deref() != Some("1") {
        eprintln!("{TEST}: a benchmark; runs with KOS_BENCH=1");
        return;
    }
    if require(TEST, netns_tools()).is_none() {
        return;
    }
    let mut runs = Vec::new();
    for _ in 0..BENCH_RUNS {
        let Some(t) = require(TEST, run_pair(None)) else {
            return;
        };
        runs.push(t);
    }
    let report = |what: &str, f: fn(&Timing) -> Duration| {
        let mut v: Vec<f64> = runs.iter().map(|t| f(t).as_secs_f64() * 1000.0).collect();
        v.sort_by(f64::total_cmp);
        let all: Vec<String> = v.iter().map(|x| format!("{x:.0}")).collect();
        eprintln!(
            "{what:<52} min {:>6.0} ms  p50 {:>6.0} ms  max {:>6.0} ms  (runs: {})",
            v[0],
            v[v.len() / 2],
            v[v.len() - 1],
            all.join(", ")
        );
    };
    eprintln!("DNS-SD admission over a veth pair, {BENCH_RUNS} runs:");
    report("node start to mutual admission (polled via API)", |t| {
        t.polled
    });
    report("node start to mutual admission (log timestamps)", |t| {
        t.logged
    });
    report("node start to both KLP started (logs)", |t| t.klp_started);
    report("KLP started to first DNS-SD discovery (logs)", |t| {
        t.klp_started_to_discovery
    });
    report("first DNS-SD discovery to mutual admission (logs)", |t| {
        t.discovery_to_admission
    });
}
