//! Container tests: the community node through the real `docker compose up` path, and the
//! Docker testnet (`kos testnet up --docker`).
//!
//! Both use the images of `deploy/local-images.sh` (no registry is needed: the base image is
//! debootstrapped once and cached by tag), built with the `kos` binary of this build
//! (`<target>/<profile>/kos`, which `cargo test --workspace` builds; `KOS_TEST_KOS_BIN`
//! overrides). Needs a Docker engine, `docker compose` or `docker-compose`, and for the first
//! build of the base image root and debootstrap. In CI (`CI=true`) a missing piece is a
//! failure; elsewhere the tests print `NOT RUN` and return.
//!
//! Every compose project is `kos-test-<random>` and publishes only ephemeral ports on
//! 127.0.0.1; a guard runs `down -v` (and `kos testnet down --clean`) even when a test fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use kos_node::testnet::{
    self,
    docker::{self as testnet_docker, Docker},
};
use kos_tests::require;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

fn random_name(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mixed = (nanos as u64) ^ (u64::from(std::process::id()) << 32);
    format!("{prefix}-{:08x}", mixed & 0xffff_ffff)
}

fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    Ok(out)
}

/// Runs a command and returns its trimmed stdout; fails with its stderr.
fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = run(cmd)?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn kos_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("KOS_TEST_KOS_BIN") {
        return Ok(PathBuf::from(p));
    }
    // This test runs as <target>/<profile>/deps/containers-<hash>.
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("kos"))
        .context("locating the target directory")?;
    if !bin.exists() {
        bail!(
            "no kos binary at {} (`cargo test --workspace` builds it; or `cargo build -p kos-node`, or set KOS_TEST_KOS_BIN)",
            bin.display()
        );
    }
    Ok(bin)
}

/// `docker compose` (plugin) or `docker-compose` (standalone), whichever answers.
fn compose_command() -> Result<Vec<String>> {
    let plugin = Command::new("docker")
        .args(["compose", "version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if plugin.is_ok_and(|s| s.success()) {
        return Ok(vec!["docker".into(), "compose".into()]);
    }
    let standalone = Command::new("docker-compose")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if standalone.is_ok_and(|s| s.success()) {
        return Ok(vec!["docker-compose".into()]);
    }
    bail!("neither `docker compose` nor `docker-compose` is installed")
}

struct Prereqs {
    compose: Vec<String>,
    kos: PathBuf,
}

/// Docker, compose, the binary and the local images, once per test process (the tests run
/// in parallel; the image build runs once).
fn prerequisites() -> Result<&'static Prereqs> {
    static ONCE: OnceLock<std::result::Result<Prereqs, String>> = OnceLock::new();
    ONCE.get_or_init(|| {
        (|| -> Result<Prereqs> {
            run_ok(Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]))
                .context("the Docker engine does not answer")?;
            let compose = compose_command()?;
            let kos = kos_binary()?;
            let started = Instant::now();
            let script = repo_root().join("deploy/local-images.sh");
            let out = run(Command::new(&script).arg("--binary").arg(&kos))?;
            eprint!("{}", String::from_utf8_lossy(&out.stdout));
            if !out.status.success() {
                bail!(
                    "{} failed:\n{}",
                    script.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            eprintln!("local images ready in {:.1?}", started.elapsed());
            Ok(Prereqs { compose, kos })
        })()
        .map_err(|e| format!("{e:#}"))
    })
    .as_ref()
    .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Polls `check` until it returns `Some`, or fails with `what` after `timeout`.
fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    let deadline = start + timeout;
    loop {
        if let Some(v) = check() {
            eprintln!("{what}: after {:.1?}", start.elapsed());
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn http_get(addr: &str, path: &str, token: Option<&str>) -> Result<(u16, serde_json::Value)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        let mut req = client.get(format!("http://{addr}{path}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(serde_json::Value::Null);
        Ok((status, body))
    })
}

/// A compose project, taken down with its volumes when dropped.
struct Project {
    compose: Vec<String>,
    name: String,
    files: Vec<PathBuf>,
    env_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Project {
    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.compose[0]);
        c.args(&self.compose[1..])
            .current_dir(repo_root())
            .arg("-p")
            .arg(&self.name)
            .arg("--env-file")
            .arg(&self.env_file);
        for f in &self.files {
            c.arg("-f").arg(f);
        }
        c
    }

    fn run(&self, args: &[&str]) -> Result<String> {
        run_ok(self.cmd().args(args))
    }

    fn container(&self, service: &str) -> Result<String> {
        let id = self.run(&["ps", "-q", service])?;
        if id.is_empty() {
            bail!("no container for {service}");
        }
        Ok(id)
    }

    fn health(&self, service: &str) -> Option<String> {
        let id = self.container(service).ok()?;
        run_ok(Command::new("docker").args(["inspect", "-f", "{{.State.Health.Status}}", &id])).ok()
    }

    fn wait_healthy(&self, service: &str, timeout: Duration) {
        wait_for(&format!("{service} healthy"), timeout, || {
            match self.health(service).as_deref() {
                Some("healthy") => Some(()),
                Some("unhealthy") => panic!(
                    "{service} is unhealthy; logs:\n{}",
                    self.run(&["logs", "--tail", "50", service])
                        .unwrap_or_default()
                ),
                _ => None,
            }
        })
    }

    /// The host address of a published port (ephemeral; changes across restarts).
    fn port(&self, service: &str, port: &str) -> Result<String> {
        let out = self.run(&["port", service, port])?;
        out.lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_string)
            .context("port not published")
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        match run(self
            .cmd()
            .args(["down", "-v", "--remove-orphans", "-t", "15"]))
        {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "{}: down -v failed: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("{}: down -v failed: {e:#}", self.name),
        }
    }
}

fn peer_id_in(p: &Project) -> Result<String> {
    let out = p.run(&["exec", "-T", "kos", "kos", "id", "--json"])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    v["peer_id"]
        .as_str()
        .map(str::to_string)
        .context("no peer_id")
}

fn node_started_count(p: &Project, pg_password: &str) -> Result<String> {
    p.run(&[
        "exec",
        "-T",
        "-e",
        &format!("PGPASSWORD={pg_password}"),
        "postgres",
        "psql",
        "-U",
        "kos",
        "-d",
        "kos",
        "-Atc",
        "SELECT count(*) FROM node_events WHERE kind = 'node_started'",
    ])
}

/// The community node: `docker compose -f docker-compose.yml -f docker-compose.local.yml up`
/// with the node, PostgreSQL and Redis; health, API with a token minted in the container,
/// the node's events in PostgreSQL, and the identity across a restart.
#[test]
fn compose_community_node() {
    let Some(pre) = require("compose_community_node", prerequisites()) else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let pg_password = random_name("pg");
    let env_file = dir.path().join("env");
    std::fs::write(
        &env_file,
        format!(
            "POSTGRES_PASSWORD={pg_password}\nREDIS_PASSWORD={}\nQDRANT_API_KEY=unused-here\n\
             KOS_NODE_NAME=ci-node\nKOS_API_BIND=127.0.0.1\nKOS_API_PORT=\nKOS_KLP_BIND=127.0.0.1\nKOS_KLP_PORT=\n",
            random_name("redis")
        ),
    )
    .expect("env file");
    let files = vec![
        repo_root().join("docker-compose.yml"),
        repo_root().join("docker-compose.local.yml"),
    ];
    let project = Project {
        compose: pre.compose.clone(),
        name: random_name("kos-test"),
        files,
        env_file,
        _dir: dir,
    };
    eprintln!(
        "compose project {}: kos + postgres + redis; Qdrant is not run (no local image): the node uses the in-process vector engine",
        project.name
    );
    project.run(&["up", "-d"]).expect("compose up");
    assert!(
        project.container("qdrant").is_err(),
        "the local override must not start qdrant"
    );
    for s in ["postgres", "redis", "kos"] {
        project.wait_healthy(s, Duration::from_secs(180));
    }

    let api = project.port("kos", "7420").expect("API port");
    assert!(api.starts_with("127.0.0.1:"), "API published on {api}");
    let (status, body) = http_get(&api, "/readyz", None).expect("readyz");
    assert_eq!(status, 200, "{body}");
    let (status, _) = http_get(&api, "/api/peers", None).expect("peers without token");
    assert_eq!(status, 401, "the API needs a token");

    let token = project
        .run(&[
            "exec", "-T", "kos", "kos", "token", "create", "--role", "admin", "--ttl", "1h",
            "--sub", "ci",
        ])
        .expect("token create in the container");
    let id = peer_id_in(&project).expect("kos id");
    let (status, peers) = http_get(&api, "/api/peers", Some(&token)).expect("peers");
    assert_eq!(status, 200, "{peers}");
    assert_eq!(peers["local_id"], id.as_str());
    assert_eq!(peers["enabled"], true, "federation_node runs KLP");
    let (status, health) = http_get(&api, "/api/config/health", Some(&token)).expect("health");
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["checks"]["database"]["status"], "ok");
    // The in-process vector engine (Qdrant is not run here).
    let (status, vectors) = http_get(&api, "/api/vectors", Some(&token)).expect("vectors");
    assert_eq!(status, 200, "{vectors}");
    assert_eq!(vectors["backend"], "embedded", "{vectors}");
    // The node's database is the compose PostgreSQL.
    assert_eq!(
        node_started_count(&project, &pg_password).expect("psql"),
        "1"
    );
    assert_eq!(
        project
            .run(&[
                "exec",
                "-T",
                "redis",
                "redis-cli",
                "-h",
                "127.0.0.1",
                "ping"
            ])
            .expect("redis-cli"),
        "PONG"
    );

    // The CLI inside the container reaches its node, which listens on 0.0.0.0 there (issue
    // 10: it refused any address but loopback). Make the node a federation admin first, so
    // that `peers approve` can sign (the restart below applies it).
    let exec = |args: &[&str]| {
        let mut full = vec!["exec", "-T", "kos", "kos"];
        full.extend_from_slice(args);
        project.run(&full)
    };
    let keygen = exec(&["admin", "keygen"]).expect("admin keygen in the container");
    let admin = keygen
        .lines()
        .find_map(|l| l.strip_prefix("admin id:"))
        .expect("admin id")
        .trim()
        .to_string();
    project
        .run(&[
            "exec",
            "-T",
            "kos",
            "sed",
            "-i",
            &format!("s/^admins: \\[\\]$/admins: [\"{admin}\"]/"),
            "/var/lib/kos/klp/klp_settings.yaml",
        ])
        .expect("pin the admin");
    let friend_dir = tempfile::tempdir().expect("tempdir");
    run_ok(
        Command::new(&pre.kos)
            .args(["init"])
            .env("KOS_HOME", friend_dir.path()),
    )
    .expect("kos init for a second identity");
    let friend = run_ok(
        Command::new(&pre.kos)
            .args(["id", "--json"])
            .env("KOS_HOME", friend_dir.path()),
    )
    .expect("kos id");
    let friend = serde_json::from_str::<serde_json::Value>(&friend).expect("id json")["peer_id"]
        .as_str()
        .expect("peer_id")
        .to_string();
    let list: serde_json::Value = serde_json::from_str(
        &exec(&["peers", "list", "--json"]).expect("peers list in the container"),
    )
    .expect("peers list json");
    assert_eq!(list["node_running"], true, "{list}");
    exec(&["federation", "status"]).expect("federation status in the container");

    project.run(&["restart", "kos"]).expect("restart kos");
    project.wait_healthy("kos", Duration::from_secs(120));
    let approved = exec(&["peers", "approve", &friend, "--label", "friend"])
        .expect("peers approve in the container");
    assert!(
        approved.starts_with(&format!("approved {friend}")),
        "{approved}"
    );
    let status = exec(&["federation", "status"]).expect("federation status in the container");
    assert!(status.contains(&admin), "{status}");
    assert!(status.contains(&format!("approved {friend}")), "{status}");
    // The node writes the approval into peers.list's managed section as it applies the op.
    let list = wait_for(
        "the approval in peers list",
        Duration::from_secs(30),
        || {
            let out = exec(&["peers", "list", "--json"]).expect("peers list in the container");
            let list: serde_json::Value = serde_json::from_str(&out).expect("peers list json");
            list["peers"].to_string().contains(&friend).then_some(list)
        },
    );
    assert_eq!(list["node_running"], true, "{list}");
    let api = project.port("kos", "7420").expect("API port after restart");
    assert_eq!(
        peer_id_in(&project).expect("kos id after restart"),
        id,
        "the identity lives on the volume"
    );
    // The token key is on the volume too: a token minted before the restart still works.
    let (status, peers) = http_get(&api, "/api/peers", Some(&token)).expect("peers");
    assert_eq!(status, 200, "{peers}");
    assert_eq!(peers["local_id"], id.as_str());
    assert_eq!(
        node_started_count(&project, &pg_password).expect("psql"),
        "2"
    );
    eprintln!(
        "compose_community_node: {:.1?} (without the image build)",
        started.elapsed()
    );
}

/// `kos testnet down --clean` when dropped.
struct Testnet {
    kos: PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for Testnet {
    fn drop(&mut self) {
        match run(Command::new(&self.kos)
            .arg("--dir")
            .arg(self.dir.path())
            .args(["testnet", "down", "--clean"]))
        {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "testnet down failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("testnet down failed: {e:#}"),
        }
    }
}

fn docker_ok(args: &[&str]) {
    if let Err(e) = run_ok(Command::new("docker").args(args)) {
        panic!("{e:#}");
    }
}

/// Three nodes in containers admit each other; a stopped node is seen disconnected and
/// rejoins with the same identity; a node cut from the network is seen gone and everyone
/// reconverges when it is connected again.
#[test]
fn docker_testnet_three_nodes() {
    let Some(pre) = require("docker_testnet_three_nodes", prerequisites()) else {
        return;
    };
    let started = Instant::now();
    let tn = Testnet {
        kos: pre.kos.clone(),
        dir: tempfile::tempdir().expect("tempdir"),
    };
    let out = run(Command::new(&pre.kos)
        .arg("--dir")
        .arg(tn.dir.path())
        .args([
            "testnet",
            "up",
            "--docker",
            "--nodes",
            "3",
            "--image",
            "kos-local/kos:latest",
            "--timeout",
            "180s",
            "--admin",
        ]))
    .expect("kos testnet up");
    eprint!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "kos testnet up --docker failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state = testnet::load::<Docker>(tn.dir.path())
        .expect("state")
        .expect("testnet.json");
    assert_eq!(state.nodes.len(), 3);
    let tokens: Vec<String> = state
        .nodes
        .iter()
        .map(|x| {
            testnet_docker::token(&x.place.container, "viewer", Duration::from_secs(3600))
                .expect("token")
        })
        .collect();
    let connected =
        |i: usize| testnet_docker::admitted(&state.nodes[i].place.container, &tokens[i]);
    let id = |i: usize| state.nodes[i].peer_id.clone();
    let sees = |i: usize, j: usize| connected(i).is_some_and(|a| a.contains(&id(j)));
    let all_converged = || (0..3).all(|i| (0..3).filter(|&j| j != i).all(|j| sees(i, j)));
    let long = Duration::from_secs(180);

    wait_for("3 nodes admit each other", long, || {
        all_converged().then_some(())
    });

    // --admin: node-1's volume holds the admin key, every node pins the admin.
    let admin = state.admin.clone().expect("--admin records the admin id");
    for (i, x) in state.nodes.iter().enumerate() {
        let fed = run_ok(Command::new("docker").args([
            "exec",
            &x.place.container,
            "kos",
            "federation",
            "status",
            "--json",
        ]))
        .expect("federation status");
        let v: serde_json::Value = serde_json::from_str(&fed).expect("json");
        assert_eq!(v["admins"], serde_json::json!([admin]), "{}: {v}", x.name);
        assert_eq!(v["local_admin"].is_null(), i != 0, "{}: {v}", x.name);
    }

    // A stopped node: the others see it disconnected.
    let (c3, c2) = (
        state.nodes[2].place.container.clone(),
        state.nodes[1].place.container.clone(),
    );
    docker_ok(&["stop", "-t", "15", &c3]);
    wait_for("node-1 and node-2 see node-3 disconnected", long, || {
        (connected(0).is_some_and(|a| !a.contains(&id(2)))
            && connected(1).is_some_and(|a| !a.contains(&id(2))))
        .then_some(())
    });
    // ... and its entry says so.
    let addr = testnet_docker::api_addr(&state.nodes[0].place.container).expect("api");
    let (status, peers) = http_get(
        &addr.to_string(),
        &format!("/api/peers/{}", id(2)),
        Some(&tokens[0]),
    )
    .expect("peer");
    assert_eq!(status, 200, "{peers}");
    assert_eq!(peers["connected"], false, "{peers}");

    // Started again: it rejoins, with the same identity.
    docker_ok(&["start", &c3]);
    wait_for("node-3 rejoins", long, || all_converged().then_some(()));
    let after =
        run_ok(Command::new("docker").args(["exec", &c3, "kos", "id", "--json"])).expect("kos id");
    let v: serde_json::Value = serde_json::from_str(&after).expect("json");
    assert_eq!(
        v["peer_id"],
        id(2).as_str(),
        "same identity after a restart"
    );

    // Cut node-2 from the network: the others see it gone.
    docker_ok(&["network", "disconnect", &state.how.network, &c2]);
    wait_for("node-1 and node-3 see node-2 gone", long, || {
        (connected(0).is_some_and(|a| !a.contains(&id(1)) && a.contains(&id(2)))
            && connected(2).is_some_and(|a| !a.contains(&id(1)) && a.contains(&id(0))))
        .then_some(())
    });
    // Heal: everyone reconverges.
    docker_ok(&["network", "connect", &state.how.network, &c2]);
    wait_for("all reconverge after the partition heals", long, || {
        all_converged().then_some(())
    });
    eprintln!(
        "docker_testnet_three_nodes: {:.1?} (without the image build)",
        started.elapsed()
    );
}
