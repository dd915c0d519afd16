//! The `kos` binary as a user runs it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use kos_node::runfile::RunInfo;

/// The `kos` binary under test: `KOS_TEST_KOS_BIN` if set (a copy that a concurrent build
/// cannot replace mid-run), else the one cargo built for this test.
fn kos_bin() -> PathBuf {
    std::env::var_os("KOS_TEST_KOS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_kos")))
}
const PROFILES: [&str; 5] = [
    "standalone",
    "developer_node",
    "federation_node",
    "enterprise",
    "edge",
];

fn kos(home: &Path, args: &[&str]) -> Output {
    Command::new(kos_bin())
        .args(args)
        .env("KOS_HOME", home)
        .env_remove("KOS_PROFILE")
        .env_remove("KOS_LOG")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn signal(pid: u32, sig: &str) {
    assert!(
        Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
}

/// Waits until the node `child` (on config directory `home`) has written its run file
/// (`run/node.json`: it is ready and says where it listens, its API configured on port 0),
/// then until its plain-HTTP API answers /readyz with 200. Returns the run file.
async fn wait_ready(home: &Path, child: &mut std::process::Child) -> RunInfo {
    let info = wait_run_file(home, child).await;
    assert!(!info.tls, "wait_ready speaks plain HTTP: {info:?}");
    let url = format!("http://{}", kos_node::node_client::reachable(info.api));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::get(format!("{url}/readyz")).await
            && r.status() == 200
        {
            return info;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("kos exited before ready: {status}");
        }
        assert!(Instant::now() < deadline, "not ready within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the node `child` has written its run file in `home` (the node's readiness
/// event; a file of an earlier process is not it).
async fn wait_run_file(home: &Path, child: &mut std::process::Child) -> RunInfo {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(info) = kos_node::runfile::read(home)
            && info.pid == child.id()
        {
            assert_ne!(info.api.port(), 0, "{info:?}");
            return info;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("kos exited before ready: {status}");
        }
        assert!(Instant::now() < deadline, "no run file within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn first_run_from_empty_home_then_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("kos-home");
    let mut child = Command::new(kos_bin())
        .args(["run", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .env("KOS_HOME", &home)
        .env_remove("KOS_PROFILE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("http://{}", wait_ready(&home, &mut child).await.api);

    // First run laid out the standalone profile, an identity and the SQLite database.
    for f in [
        "profiles/standalone.yaml",
        "system.env",
        "secrets.env",
        "klp/peers.list",
        "klp/klp_settings.yaml",
        "identity.key",
        "data/kos.db",
    ] {
        assert!(home.join(f).exists(), "{f} missing");
    }
    let status: serde_json::Value = reqwest::get(format!("{url}/api/config/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["profile"], "standalone");
    assert_eq!(status["database"], "sqlite");
    let id = stdout(&kos(&home, &["id", "--json"]));
    let id: serde_json::Value = serde_json::from_str(&id).unwrap();
    assert_eq!(status["node_id"], id["peer_id"]);

    // SIGHUP reloads the configuration from disk.
    let profile = home.join("profiles/standalone.yaml");
    let text = std::fs::read_to_string(&profile).unwrap();
    std::fs::write(&profile, text.replace("  level: info ", "  level: debug ")).unwrap();
    signal(child.id(), "HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s: serde_json::Value = reqwest::get(format!("{url}/api/config/status"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if s["snapshot_id"] != status["snapshot_id"] {
            assert_eq!(s["last_change"]["action"], "external");
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let t0 = Instant::now();
    signal(child.id(), "TERM");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "stopped within the 10 s grace period"
    );
    let log = stderr(&out);
    // JSON logs, one object per line.
    assert!(
        log.lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "{log}"
    );
    assert!(
        log.contains("SIGTERM received") && log.contains("\"stopped\""),
        "{log}"
    );
}

#[tokio::test]
async fn refuses_non_loopback_api() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(kos_bin())
        .args(["run", "--listen", "0.0.0.0:0"])
        .env("KOS_HOME", tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("only loopback addresses are allowed"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn init_validate_show_every_profile() {
    for p in PROFILES {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(p);
        let d = dir.to_str().unwrap();
        let out = kos(tmp.path(), &["init", "--profile", p, "--dir", d]);
        assert!(out.status.success(), "{p}: {}", stderr(&out));
        assert!(
            stdout(&out).contains("node id: 12D3KooW"),
            "{}",
            stdout(&out)
        );
        for f in [
            "agents",
            "plugins",
            "klp/peers.list",
            "klp/klp_settings.yaml",
            "system.env",
            &format!("profiles/{p}.yaml"),
        ] {
            assert!(dir.join(f).exists(), "{p}: {f}");
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in ["secrets.env", "identity.key"] {
                let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{p}: {f}");
            }
        }
        let out = kos(tmp.path(), &["config", "validate", d]);
        assert_eq!(out.status.code(), Some(0), "{p}: {}", stderr(&out));
        assert!(stdout(&out).contains(&format!("profile `{p}` is valid")));

        let out = kos(tmp.path(), &["--dir", d, "config", "show"]);
        assert!(out.status.success(), "{p}: {}", stderr(&out));
        let shown = stdout(&out);
        assert!(shown.contains(&format!("profile: {p}\n")), "{shown}");
        // `show` output is itself a valid profile with the same effective config.
        let copy = tmp.path().join("shown.yaml");
        std::fs::write(
            &copy,
            shown
                .lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n"),
        )
        .unwrap();
        let out = kos(tmp.path(), &["config", "diff", d, &copy.to_string_lossy()]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{p}: {}{}",
            stdout(&out),
            stderr(&out)
        );
    }
}

#[test]
fn init_never_overwrites_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    assert!(kos(tmp.path(), &["init", "--dir", d]).status.success());
    let id1 = stdout(&kos(tmp.path(), &["id"]));
    let key1 = std::fs::read(tmp.path().join("identity.key")).unwrap();
    let out = kos(tmp.path(), &["init", "--profile", "edge", "--dir", d]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("kept    identity.key"));
    assert!(stdout(&out).contains("set KOS_PROFILE=edge"));
    assert_eq!(
        std::fs::read(tmp.path().join("identity.key")).unwrap(),
        key1
    );
    assert_eq!(stdout(&kos(tmp.path(), &["id"])), id1);
    assert!(id1.starts_with("peer id:    12D3KooW"), "{id1}");
    assert!(id1.contains("public key: ed25519 "), "{id1}");
}

#[test]
fn validate_names_file_line_column_and_exits_1() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    assert!(kos(tmp.path(), &["init", "--dir", d]).status.success());
    std::fs::write(
        tmp.path().join("profiles/standalone.yaml"),
        "profile: standalone\napi:\n  listen: nowhere\nstorage:\n  databse: sqlite\n",
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("system.env"),
        "KOS_PROFILE=standalone\nKOS_LOGGING__LEVEL=chatty\n",
    )
    .unwrap();
    let out = kos(tmp.path(), &["config", "validate", d]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("profiles/standalone.yaml:3:11: api.listen: "),
        "{err}"
    );
    assert!(err.contains("profiles/standalone.yaml:5:3: storage.databse: unknown key `databse` (did you mean `database`?)"), "{err}");
    assert!(
        err.contains("system.env:2:1: logging.level: `chatty` is not a log level"),
        "{err}"
    );
    assert!(err.contains("3 errors"), "{err}");
    let out = kos(tmp.path(), &["config", "validate", d, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["errors"].as_array().unwrap().len(), 3);
    // A missing directory is reported, not a panic.
    let out = kos(tmp.path(), &["config", "validate", "/nonexistent/kos"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn diff_uses_kubectl_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    for (d, p) in [(&a, "standalone"), (&b, "edge")] {
        assert!(
            kos(
                tmp.path(),
                &["init", "--profile", p, "--dir", d.to_str().unwrap()]
            )
            .status
            .success()
        );
    }
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    assert_eq!(
        kos(tmp.path(), &["config", "diff", a, a]).status.code(),
        Some(0)
    );
    let out = kos(tmp.path(), &["config", "diff", a, b]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("~ profile: \"standalone\" -> \"edge\""),
        "{}",
        stdout(&out)
    );
    let broken = tmp.path().join("broken.yaml");
    std::fs::write(&broken, "profile: [").unwrap();
    let out = kos(tmp.path(), &["config", "diff", a, broken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("broken.yaml:") && stderr(&out).contains("invalid YAML"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        kos(tmp.path(), &["config", "diff", a, "/nonexistent.yaml"])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn show_redacts_secrets() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    assert!(
        kos(
            tmp.path(),
            &["init", "--profile", "developer_node", "--dir", d]
        )
        .status
        .success()
    );
    std::fs::write(
        tmp.path().join("secrets.env"),
        "KOS_DATABASE__PASSWORD=hunter2-secret\nOPENAI_API_KEY=sk-very-secret\n",
    )
    .unwrap();
    let out = kos(tmp.path(), &["config", "show"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s = stdout(&out);
    assert!(!s.contains("hunter2") && !s.contains("sk-very"), "{s}");
    assert!(s.contains("password: <redacted>"), "{s}");
    assert!(s.contains("OPENAI_API_KEY"), "{s}");
    let out = kos(tmp.path(), &["config", "show", "--json"]);
    assert!(!stdout(&out).contains("hunter2"));
}

#[test]
fn help_lists_commands() {
    let out = Command::new(kos_bin()).arg("--help").output().unwrap();
    let s = stdout(&out);
    for c in ["run", "init", "id", "config"] {
        assert!(s.contains(c), "{s}");
    }
    let out = Command::new(kos_bin())
        .args(["config", "--help"])
        .output()
        .unwrap();
    for c in ["validate", "show", "diff", "history"] {
        assert!(stdout(&out).contains(c));
    }
}

#[test]
fn validate_checks_peers_list_too() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    assert!(
        kos(
            tmp.path(),
            &["init", "--profile", "federation_node", "--dir", d]
        )
        .status
        .success()
    );
    std::fs::write(
        tmp.path().join("system.env"),
        "KOS_PROFILE=federation_node\nKOS_STORAGE__DATABASE=sqlite\n",
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("klp/peers.list"),
        "# ok\nnot-a-peer /ip4/1.2.3.4/tcp/1\n",
    )
    .unwrap();
    let out = kos(tmp.path(), &["config", "validate", d]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("klp/peers.list:2:1: `not-a-peer` is not a kOS peer id"),
        "{}",
        stderr(&out)
    );
    // `kos peers add` validates what it writes and keeps the other lines.
    std::fs::write(tmp.path().join("klp/peers.list"), "# keep\n").unwrap();
    let id = "12D3KooWRawPbxPtP1eZaJpumGnyWX2DcUyd3RQnydr3eAto4Az7";
    let out = kos(
        tmp.path(),
        &[
            "peers",
            "add",
            id,
            "--addr",
            "/ip4/127.0.0.1/tcp/9",
            "--label",
            "seven",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("klp/peers.list")).unwrap(),
        format!("# keep\n{id} /ip4/127.0.0.1/tcp/9 # seven\n")
    );
    let out = kos(
        tmp.path(),
        &["peers", "add", id, "--addr", "/ip4/999.1.1.1/tcp/9"],
    );
    assert_eq!(out.status.code(), Some(1));
    let out = kos(tmp.path(), &["peers", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["node_running"], false);
    assert_eq!(v["peers"][0]["label"], "seven");
    assert!(kos(tmp.path(), &["peers", "remove", id]).status.success());
    assert_eq!(
        kos(tmp.path(), &["peers", "remove", id]).status.code(),
        Some(1)
    );
}

#[tokio::test]
async fn federation_cli_signs_approvals_publishes_config_and_shows_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("node");
    assert!(
        kos(&home, &["init", "--profile", "federation_node"])
            .status
            .success()
    );
    let o = kos(&home, &["admin", "keygen"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let admin = stdout(&o)
        .lines()
        .find_map(|l| l.strip_prefix("admin id:"))
        .unwrap()
        .trim()
        .to_string();
    let again = kos(&home, &["admin", "keygen"]);
    assert!(!again.status.success(), "a key is never overwritten");
    // Ports 0: the CLI finds the node through its run file.
    std::fs::write(
        home.join("system.env"),
        "KOS_PROFILE=federation_node\nKOS_STORAGE__DATABASE=sqlite\nKOS_API__LISTEN=127.0.0.1:0\n",
    )
    .unwrap();
    std::fs::write(
        home.join("klp/klp_settings.yaml"),
        format!("enabled: true\nlisten: [/ip4/127.0.0.1/tcp/0]\npeer_discovery: none\nadmins: [\"{admin}\"]\n"),
    )
    .unwrap();
    let mut child = Command::new(kos_bin())
        .args(["run", "--log-format", "json"])
        .env("KOS_HOME", &home)
        .env_remove("KOS_PROFILE")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let info = wait_ready(&home, &mut child).await;
    assert_eq!(info.klp.len(), 1, "{info:?}");
    assert!(
        info.klp[0].ends_with(&format!("/p2p/{}", info.node_id))
            && !info.klp[0].contains("/tcp/0/"),
        "{info:?}"
    );

    let friend = kos(&tmp.path().join("other"), &["init"]);
    assert!(friend.status.success());
    let friend = stdout(&friend)
        .lines()
        .find_map(|l| l.strip_prefix("node id: "))
        .unwrap()
        .to_string();
    let o = kos(
        &home,
        &[
            "peers",
            "approve",
            &friend,
            "--addr",
            "/ip4/127.0.0.1/tcp/9",
            "--label",
            "friend",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with(&format!("approved {friend} (op ")));
    // The managed section of peers.list shows it.
    let list = std::fs::read_to_string(home.join("klp/peers.list")).unwrap();
    assert!(
        list.contains(&format!("{friend} /ip4/127.0.0.1/tcp/9 # friend")),
        "{list}"
    );

    let snap = tmp.path().join("agents.yaml");
    std::fs::write(
        &snap,
        "agents:\n  translatorAgent:\n    max_concurrent_tasks: 6\n",
    )
    .unwrap();
    let o = kos(
        &home,
        &[
            "config",
            "publish",
            snap.to_str().unwrap(),
            "--scope",
            "agents",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("published `agents` snapshot"),
        "{}",
        stdout(&o)
    );
    std::fs::write(&snap, "agents: {}\napi:\n  listen: 0.0.0.0:1\n").unwrap();
    let o = kos(
        &home,
        &[
            "config",
            "publish",
            snap.to_str().unwrap(),
            "--scope",
            "agents",
        ],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("agents.yaml:2:1")
            && stderr(&o).contains("outside the federation scope"),
        "{}",
        stderr(&o)
    );

    // An admin-set change signed from key files (here the node's own key).
    let second = tmp.path().join("second.key");
    let o = kos(
        &home,
        &["admin", "keygen", "--out", second.to_str().unwrap()],
    );
    let second_id = stdout(&o)
        .lines()
        .find_map(|l| l.strip_prefix("admin id:"))
        .unwrap()
        .trim()
        .to_string();
    let key = home.join("federation/admin.key");
    let o = kos(
        &home,
        &[
            "federation",
            "admin",
            "add",
            &second_id,
            "--key",
            key.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));

    let o = kos(&home, &["federation", "log"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let log = stdout(&o);
    for want in ["approve_peer", "publish_config", "add_admin", "[valid]"] {
        assert!(log.contains(want), "{want}: {log}");
    }
    let o = kos(&home, &["federation", "status"]);
    let st = stdout(&o);
    assert!(st.contains(&format!("approved {friend}  friend")), "{st}");
    assert!(st.contains(&second_id), "{st}");
    assert!(st.contains("config   agents"), "{st}");
    // Without --key the node signs with its own admin key (enough at threshold 1).
    let o = kos(&home, &["federation", "admin", "remove", &second_id]);
    assert!(o.status.success(), "{}", stderr(&o));
    let st = stdout(&kos(&home, &["federation", "status"]));
    assert!(!st.contains(&second_id), "{st}");
    // Removing the last admin is refused, with the reason.
    let o = kos(&home, &["federation", "admin", "remove", &admin]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("below the threshold"), "{}", stderr(&o));

    signal(child.id(), "TERM");
    assert!(child.wait().unwrap().success());
}

/// `kos health` (the container health check) asks the node's own /readyz, found from its
/// run file, or from its api.listen while there is none: exit 1 while nothing answers, 0
/// once the node is ready.
#[tokio::test]
async fn health_asks_the_nodes_readyz() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("kos-home");
    assert!(kos(&home, &["init"]).status.success());
    let env = home.join("system.env");
    let base_env = std::fs::read_to_string(&env).unwrap();
    // Nothing answers on api.listen: a port this test holds bound but not listening
    // refuses every connection (and cannot be taken by anything else meanwhile).
    let held = tokio::net::TcpSocket::new_v4().unwrap();
    held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = held.local_addr().unwrap().port();
    std::fs::write(
        &env,
        format!("{base_env}KOS_API__LISTEN=127.0.0.1:{port}\n"),
    )
    .unwrap();

    let down = kos(&home, &["health", "--timeout", "1s"]);
    assert_eq!(down.status.code(), Some(1), "{}", stdout(&down));
    assert!(
        stderr(&down).contains(&format!("http://127.0.0.1:{port}/readyz: no answer")),
        "{}",
        stderr(&down)
    );
    let bad = kos(&home, &["health", "--url", "ftp://127.0.0.1/readyz"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr(&bad).contains("only http and https"),
        "{}",
        stderr(&bad)
    );
    drop(held);

    // The node on port 0: `kos health` finds the port it bound in its run file.
    std::fs::write(&env, format!("{base_env}KOS_API__LISTEN=127.0.0.1:0\n")).unwrap();
    let mut child = Command::new(kos_bin())
        .arg("run")
        .env("KOS_HOME", &home)
        .env_remove("KOS_PROFILE")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let api = wait_ready(&home, &mut child).await.api;
    let up = kos(&home, &["health"]);
    assert_eq!(up.status.code(), Some(0), "{}", stderr(&up));
    assert!(
        stdout(&up).starts_with(&format!("http://{api}/readyz: ")),
        "{}",
        stdout(&up)
    );
    assert!(stdout(&up).contains("\"ready\""), "{}", stdout(&up));
    // A URL that is not /readyz-ready (404) is a failure too.
    let other = kos(&home, &["health", "--url", &format!("http://{api}/nope")]);
    assert_eq!(other.status.code(), Some(1), "{}", stdout(&other));

    signal(child.id(), "TERM");
    assert!(child.wait().unwrap().success());
    // Stopped cleanly: the run file is gone, and health is back to api.listen (port 0 there:
    // nothing answers).
    assert!(kos_node::runfile::read_any(&home).is_none());
    assert_eq!(
        kos(&home, &["health", "--timeout", "1s"]).status.code(),
        Some(1)
    );
}

/// The CLI reaches its node wherever it listens: a wildcard address (as `docker-compose.yml`
/// configures it), the IPv6 wildcard, and over TLS trusting the node's own certificate
/// (issue 10: the hand-written client refused anything but a loopback address).
#[tokio::test]
async fn cli_reaches_a_node_on_wildcard_addresses_and_over_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("node");
    assert!(
        kos(&home, &["init", "--profile", "federation_node"])
            .status
            .success()
    );
    let o = kos(&home, &["admin", "keygen"]);
    let admin = stdout(&o)
        .lines()
        .find_map(|l| l.strip_prefix("admin id:"))
        .unwrap()
        .trim()
        .to_string();
    std::fs::write(
        home.join("klp/klp_settings.yaml"),
        format!("enabled: true\nlisten: [/ip4/127.0.0.1/tcp/0]\npeer_discovery: none\nadmins: [\"{admin}\"]\n"),
    )
    .unwrap();
    let friend = kos(&tmp.path().join("other"), &["init"]);
    let friend = stdout(&friend)
        .lines()
        .find_map(|l| l.strip_prefix("node id: "))
        .unwrap()
        .to_string();
    let run = || {
        Command::new(kos_bin())
            .args(["run", "--log-format", "json"])
            .env("KOS_HOME", &home)
            .env_remove("KOS_PROFILE")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let peers_json = || {
        let o = kos(&home, &["peers", "list", "--json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_str::<serde_json::Value>(&stdout(&o)).unwrap()
    };

    // 1. Plain HTTP on 0.0.0.0 (port 0: the run file says which port, with the wildcard
    // address as bound, which the CLI reaches on 127.0.0.1).
    let env =
        "KOS_PROFILE=federation_node\nKOS_STORAGE__DATABASE=sqlite\nKOS_API__LISTEN=0.0.0.0:0\n";
    std::fs::write(home.join("system.env"), env).unwrap();
    let mut child = run();
    let info = wait_ready(&home, &mut child).await;
    assert!(info.api.ip().is_unspecified(), "{info:?}");
    let api = info.api.port();
    let o = kos(&home, &["peers", "approve", &friend, "--label", "friend"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = kos(&home, &["federation", "status"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("approved {friend}")),
        "{}",
        stdout(&o)
    );
    // A proxy in the environment is not used: the CLI sends admin tokens to its own node only
    // (the "proxy" here is a closed loopback port, so using it would fail the command).
    let proxied = Command::new(kos_bin())
        .args(["federation", "status"])
        .env("KOS_HOME", &home)
        .env_remove("KOS_PROFILE")
        .env("HTTP_PROXY", "http://127.0.0.1:9")
        .env("http_proxy", "http://127.0.0.1:9")
        .env("ALL_PROXY", "http://127.0.0.1:9")
        .output()
        .unwrap();
    assert!(proxied.status.success(), "{}", stderr(&proxied));
    // `peers list` shows the federation's approval once the node has written it below the
    // marker of peers.list, with its live state.
    let deadline = Instant::now() + Duration::from_secs(30);
    let v = loop {
        let v = peers_json();
        if v["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["id"] == friend.as_str())
        {
            break v;
        }
        assert!(Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(v["node_running"], true, "{v}");
    assert_eq!(v["peers"][0]["source"], "federation", "{v}");
    assert!(
        v["peers"][0]["label"]
            .as_str()
            .unwrap()
            .starts_with("friend"),
        "{v}"
    );
    assert_ne!(v["peers"][0]["state"], "-", "{v}");
    let health = kos(&home, &["health"]);
    assert!(health.status.success(), "{}", stderr(&health));
    assert!(
        stdout(&health).starts_with(&format!("http://127.0.0.1:{api}/readyz")),
        "{}",
        stdout(&health)
    );
    signal(child.id(), "TERM");
    assert!(child.wait().unwrap().success());
    // Stopped: the CLI says so instead of hanging or guessing.
    assert_eq!(peers_json()["node_running"], false);
    let o = kos(&home, &["federation", "status"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("is it running?"), "{}", stderr(&o));

    // 2. HTTPS on [::], with the certificate `kos init --tls-self-signed` makes.
    assert!(kos(&home, &["init", "--tls-self-signed"]).status.success());
    // The IPv6 wildcard where this host has IPv6 loopback, else the IPv4 one (said so).
    let (wildcard, reached) = if std::net::TcpListener::bind("[::1]:0").is_ok() {
        ("[::]", "[::1]")
    } else {
        eprintln!("NOT RUN: the IPv6 half of cli_reaches_a_node...: no ::1 here; TLS on 0.0.0.0");
        ("0.0.0.0", "127.0.0.1")
    };
    let env = std::fs::read_to_string(home.join("system.env"))
        .unwrap()
        .replace("KOS_API__LISTEN=0.0.0.0:", "# was ")
        + &format!("KOS_API__LISTEN={wildcard}:0\n");
    std::fs::write(home.join("system.env"), env).unwrap();
    let mut child = run();
    let info = wait_run_file(&home, &mut child).await;
    assert!(info.tls && info.api.ip().is_unspecified(), "{info:?}");
    let api = info.api.port();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let h = kos(&home, &["health", "--timeout", "1s"]);
        if h.status.success() {
            assert!(
                stdout(&h).starts_with(&format!("https://{reached}:{api}/readyz")),
                "{}",
                stdout(&h)
            );
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the node exited: {}",
            stderr(&h)
        );
        assert!(Instant::now() < deadline, "{}", stderr(&h));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let o = kos(&home, &["federation", "status"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("approved {friend}")),
        "{}",
        stdout(&o)
    );
    assert_eq!(peers_json()["node_running"], true);
    let o = kos(&home, &["peers", "revoke", &friend, "--reason", "test"]);
    assert!(o.status.success(), "{}", stderr(&o));
    signal(child.id(), "TERM");
    assert!(child.wait().unwrap().success());
}

/// Output into a pipe whose reader is gone (`kos config show | head -1` once `head` has its
/// line) ends the command quietly, not with a panic (issue 11).
#[test]
fn output_to_a_closed_pipe_exits_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("kos-home");
    assert!(kos(&home, &["init"]).status.success());
    for args in [&["config", "show"][..], &["peers", "list"], &["id"]] {
        // The read end is closed before the command starts: its first write fails (EPIPE).
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(kos_bin())
            .args(args)
            .env("KOS_HOME", &home)
            .env_remove("KOS_PROFILE")
            .stdout(Stdio::from(writer))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert_eq!(stderr(&out), "", "{args:?}");
    }
}
