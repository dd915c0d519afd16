//! Support for kOS node's multi-node and end-to-end tests.
//!
//! - [`Postgres`]: a throwaway PostgreSQL server on a free loopback port, started from the
//!   local binaries (`/usr/lib/postgresql/15/bin`, or `KOS_TEST_PG_BIN`), removed on drop;
//!   `stop()`/`start_again()` restart it on the same data directory and port.
//! - [`Redis`]: a throwaway `redis-server` (no persistence) on a free loopback port, with a
//!   password; `stop()`/`start_again()` restart it on the same port (empty, as Redis without
//!   persistence comes back).
//! - [`require`]: the rule for services a test needs: in CI (`CI=true`) a missing service is a
//!   failure; elsewhere the test prints that it did not run, by name, and returns.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Whether this is a CI run (`CI=true`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Returns the service, or: in CI panics (a missing service is a failure), elsewhere prints
/// `NOT RUN: <test>: <why>` and returns `None`.
pub fn require<T>(test: &str, service: Result<T>) -> Option<T> {
    match service {
        Ok(s) => Some(s),
        Err(e) if in_ci() => panic!("{test}: required service unavailable in CI: {e:#}"),
        Err(e) => {
            // Straight to the stderr handle: libtest captures `eprintln!` of passing tests,
            // and a test that did not run must be visible in a plain `cargo test`.
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "NOT RUN: {test}: {e:#}");
            None
        }
    }
}

/// The first of `candidates` (interpreter names or paths) whose Python runs `check` (code that
/// fails when a needed package is missing) successfully; the path of that interpreter
/// (`sys.executable`). `None` when none does.
pub fn python_with(candidates: &[String], check: &str) -> Option<std::path::PathBuf> {
    candidates.iter().find_map(|candidate| {
        let out = std::process::Command::new(candidate)
            .args(["-c", &format!("{check}\nimport sys; print(sys.executable)")])
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    })
}

/// A free TCP port on 127.0.0.1 (bound and released; a small race is accepted in tests).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn user_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&name) && f.len() > 3)
            .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A throwaway PostgreSQL server.
#[derive(Debug)]
pub struct Postgres {
    _dir: tempfile::TempDir,
    child: Option<Child>,
    bin: PathBuf,
    data: String,
    sock: String,
    as_user: Vec<String>,
    pub port: u16,
    /// `postgres://kos@127.0.0.1:<port>/kos` (trust authentication on loopback).
    pub url: String,
}

/// Stops a child server with `signal` and waits for it (killing it after 10 s).
fn stop_child(child: &mut Child, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Postgres {
    pub fn start() -> Result<Self> {
        let bin = std::env::var_os("KOS_TEST_PG_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
        if !bin.join("initdb").exists() {
            bail!(
                "PostgreSQL binaries not found in {} (set KOS_TEST_PG_BIN)",
                bin.display()
            );
        }
        let dir = tempfile::Builder::new().prefix("kos-pg-").tempdir()?;
        let data = dir.path().join("data");
        // initdb refuses to run as root: run the server as the `postgres` user.
        let as_user: Vec<String> = if is_root() {
            let (uid, gid) =
                user_ids("postgres").context("running as root and there is no `postgres` user")?;
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
            vec![
                "setpriv".into(),
                "--reuid=postgres".into(),
                "--regid=postgres".into(),
                "--init-groups".into(),
            ]
        } else {
            Vec::new()
        };
        let run = |program: &Path, args: &[&str]| -> Command {
            let mut c = if as_user.is_empty() {
                Command::new(program)
            } else {
                let mut c = Command::new(&as_user[0]);
                c.args(&as_user[1..]).arg(program);
                c
            };
            c.args(args);
            c
        };
        let data_s = data.to_string_lossy().into_owned();
        let out = run(
            &bin.join("initdb"),
            &[
                "-D",
                &data_s,
                "-U",
                "kos",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        )
        .stdout(Stdio::null())
        .output()
        .context("running initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let port = free_port()?;
        let port_s = port.to_string();
        let sock = dir.path().to_string_lossy().into_owned();
        let mut pg = Postgres {
            _dir: dir,
            child: None,
            bin: bin.clone(),
            data: data_s,
            sock,
            as_user,
            port,
            url: format!("postgres://kos@127.0.0.1:{port}/postgres"),
        };
        pg.start_again()?;
        let created = Command::new(bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &port_s, "-U", "kos", "kos"])
            .status()?;
        if !created.success() {
            bail!("createdb failed");
        }
        pg.url = format!("postgres://kos@127.0.0.1:{port}/kos");
        Ok(pg)
    }

    /// Stops the server ("fast" shutdown: clients are disconnected, open transactions roll
    /// back, committed data is kept). The data directory and port stay.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM: smart shutdown would wait for clients; SIGINT is "fast" shutdown.
            stop_child(&mut c, "-INT");
        }
    }

    /// Starts the server on its data directory and port (again, after [`Postgres::stop`])
    /// and waits until it accepts connections.
    pub fn start_again(&mut self) -> Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let port_s = self.port.to_string();
        let program = self.bin.join("postgres");
        let args = [
            "-D",
            &self.data,
            "-p",
            &port_s,
            "-k",
            &self.sock,
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "max_connections=50",
        ];
        let mut c = if self.as_user.is_empty() {
            Command::new(&program)
        } else {
            let mut c = Command::new(&self.as_user[0]);
            c.args(&self.as_user[1..]).arg(&program);
            c
        };
        let child = c
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting postgres")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port_s, "-q"])
                .status();
            if ready.is_ok_and(|s| s.success()) {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.child = None;
                bail!("postgres exited at start: {status}");
            }
            if Instant::now() > deadline {
                bail!("postgres did not become ready within 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A throwaway Redis server: no persistence, a password, loopback only.
#[derive(Debug)]
pub struct Redis {
    child: Option<Child>,
    bin: PathBuf,
    pub port: u16,
    pub password: String,
    /// `redis://127.0.0.1:<port>/0`, without the password.
    pub url: String,
}

impl Redis {
    pub fn start() -> Result<Self> {
        let bin = std::env::var_os("KOS_TEST_REDIS_SERVER")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("PATH").and_then(|p| {
                    std::env::split_paths(&p)
                        .map(|d| d.join("redis-server"))
                        .find(|f| f.is_file())
                })
            })
            .context("redis-server not found on PATH (apt-get install redis-server)")?;
        let port = free_port()?;
        let mut r = Redis {
            child: None,
            bin,
            port,
            password: format!("test-pw-{port}"),
            url: format!("redis://127.0.0.1:{port}/0"),
        };
        r.start_again()?;
        Ok(r)
    }

    /// The URL with the password, for clients outside the node.
    pub fn url_with_password(&self) -> String {
        format!("redis://:{}@127.0.0.1:{}/0", self.password, self.port)
    }

    /// Stops the server (its data is gone: no persistence). The port stays reserved in name
    /// only: a restart reuses it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c, "-TERM");
        }
    }

    /// Starts the server on its port (again, after [`Redis::stop`]) and waits until it
    /// answers.
    pub fn start_again(&mut self) -> Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let port_s = self.port.to_string();
        let child = Command::new(&self.bin)
            .args([
                "--port",
                &port_s,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--requirepass",
                &self.password,
                "--dir",
                &std::env::temp_dir().to_string_lossy(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.child = None;
                bail!("redis-server exited at start: {status}");
            }
            if Instant::now() > deadline {
                bail!("redis-server did not accept connections within 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// In-process federation nodes for the multi-node tests (`federation.rs`, `fedsync.rs`).
pub mod fed {
    use std::path::Path;
    use std::time::{Duration, Instant};

    use anyhow::{Context, Result};
    use kos_config::ProfileKind;

    /// Lays out a federation_node on SQLite in `dir` with KLP on a free loopback port (no
    /// discovery, 2 s handshake timeout); `klp_extra` is appended to `klp_settings.yaml`.
    /// Returns the node's id and its KLP listen address.
    pub fn layout(dir: &Path, name: &str, klp_extra: &str) -> Result<(String, String)> {
        kos_config::layout::init_layout(dir, ProfileKind::FederationNode)?;
        let (identity, _) = kos_node::identity::Identity::load_or_create(dir)?;
        let p2p = format!("/ip4/127.0.0.1/tcp/{}", super::free_port()?);
        std::fs::write(
            dir.join("system.env"),
            format!(
                "KOS_PROFILE=federation_node\nKOS_STORAGE__DATABASE=sqlite\nKOS_NODE__NAME={name}\n"
            ),
        )?;
        std::fs::write(
            dir.join("klp/klp_settings.yaml"),
            format!(
                "enabled: true\nhandshake_required: true\npeer_discovery: none\nlisten: [{p2p}]\n\
                 handshake_timeout: 2s\n{klp_extra}"
            ),
        )?;
        Ok((identity.id().to_string(), p2p))
    }

    /// An HTTP client that sends an admin token minted with the node's token key.
    pub fn admin_client(
        node: &kos_node::daemon::RunningNode,
        dir: &Path,
    ) -> Result<reqwest::Client> {
        let config = node.state.config.current().config.clone();
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(t) = kos_node::auth::local::mint_for_dir(
            dir,
            &config,
            &node.state.identity.id().to_string(),
            kos_node::auth::Role::Admin,
            Duration::from_secs(3600),
        )? {
            headers.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {t}").parse().context("token header")?,
            );
        }
        Ok(reqwest::Client::builder()
            .default_headers(headers)
            .build()?)
    }

    /// Polls `f` every 50 ms until it holds; panics naming `what` after `within`.
    pub async fn wait_until(what: &str, within: Duration, mut f: impl AsyncFnMut() -> bool) {
        let deadline = Instant::now() + within;
        while !f().await {
            assert!(Instant::now() < deadline, "{what}: not within {within:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
