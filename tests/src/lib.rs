//! Support for kOS node's multi-node and end-to-end tests.
//!
//! - [`Postgres`]: a throwaway PostgreSQL server listening on a unix socket in its own
//!   temporary directory only (no TCP port to race for), started from the local binaries
//!   (`/usr/lib/postgresql/15/bin`, or `KOS_TEST_PG_BIN`), removed on drop;
//!   `stop()`/`start_again()` restart it on the same data directory and socket.
//! - [`Redis`]: a throwaway `redis-server` (no persistence) on a loopback port, with a
//!   password; `stop()`/`start_again()` restart it on the same port (empty, as Redis without
//!   persistence comes back). Redis binds its own port (it cannot be handed a socket): see
//!   [`Redis::start`] for how the port is chosen.
//! - [`require`]: the rule for services a test needs: in CI (`CI=true`) a missing service is a
//!   failure; elsewhere the test prints that it did not run, by name, and returns.

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
    /// The directory of the server's unix socket (its only way in).
    pub sock: String,
    as_user: Vec<String>,
    /// The port number in the socket's name (`<sock>/.s.PGSQL.<port>`); no TCP port is bound.
    pub port: u16,
    /// `postgres://kos@localhost:<port>/kos?host=<sock>` (trust authentication, unix socket).
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
        // The socket lives in this server's own directory: the port is only part of its
        // file name, so the default is as good as any and nobody else can take it.
        let port = 5432;
        let port_s = port.to_string();
        let sock = dir.path().to_string_lossy().into_owned();
        let mut pg = Postgres {
            _dir: dir,
            child: None,
            bin: bin.clone(),
            data: data_s,
            url: format!("postgres://kos@localhost:{port}/postgres?host={sock}"),
            sock,
            as_user,
            port,
        };
        pg.start_again()?;
        let created = Command::new(bin.join("createdb"))
            .args(["-h", &pg.sock, "-p", &port_s, "-U", "kos", "kos"])
            .status()?;
        if !created.success() {
            bail!("createdb failed");
        }
        pg.url = format!("postgres://kos@localhost:{port}/kos?host={}", pg.sock);
        Ok(pg)
    }

    /// Stops the server ("fast" shutdown: clients are disconnected, open transactions roll
    /// back, committed data is kept). The data directory and socket directory stay.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM: smart shutdown would wait for clients; SIGINT is "fast" shutdown.
            stop_child(&mut c, "-INT");
        }
    }

    /// Starts the server on its data directory and socket (again, after [`Postgres::stop`])
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
            "listen_addresses=",
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
                .args(["-h", &self.sock, "-p", &port_s, "-q"])
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
    dir: tempfile::TempDir,
    child: Option<Child>,
    bin: PathBuf,
    pub port: u16,
    pub password: String,
    /// `redis://127.0.0.1:<port>/0`, without the password.
    pub url: String,
}

/// A loopback port for a server that binds its own (it cannot be handed a bound socket):
/// picked at random outside the kernel's ephemeral range (`ip_local_port_range`), so no
/// port-0 bind anywhere on the machine is ever given it; only another server started the
/// same way can collide, and its start then fails with "address in use" and is retried.
fn port_outside_ephemeral_range() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let (lo, hi) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut it = t.split_whitespace().map(|n| n.parse::<u32>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    let (from, to) = if lo > 11_000 {
        (10_000, lo)
    } else if hi < 64_535 {
        (hi + 1, 65_536)
    } else {
        (1024, 65_536)
    };
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (from + (r % u64::from(to - from)) as u32) as u16
}

impl Redis {
    /// Starts a server on a port from [`port_outside_ephemeral_range`]; when that port is in
    /// use (redis-server says so and exits), tries another.
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
        let dir = tempfile::Builder::new().prefix("kos-redis-").tempdir()?;
        let mut r = Redis {
            dir,
            child: None,
            bin,
            port: 0,
            password: String::new(),
            url: String::new(),
        };
        for _ in 0..10 {
            let port = port_outside_ephemeral_range();
            r.port = port;
            r.password = format!("test-pw-{port}");
            r.url = format!("redis://127.0.0.1:{port}/0");
            match r.start_again() {
                Ok(()) => return Ok(r),
                Err(e) if r.log().contains("Address already in use") => {
                    let _ = e;
                }
                Err(e) => return Err(e),
            }
        }
        bail!("redis-server: ten ports in a row were in use")
    }

    /// The server's log (its stdout), for error messages.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// The URL with the password, for clients outside the node.
    pub fn url_with_password(&self) -> String {
        format!("redis://:{}@127.0.0.1:{}/0", self.password, self.port)
    }

    /// Stops the server (its data is gone: no persistence).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c, "-TERM");
        }
    }

    /// Starts the server on its port (again, after [`Redis::stop`]) and waits until it
    /// answers. A restart needs the same port: the node under test is configured with it.
    /// Between stop and start only another server choosing its own port outside the
    /// ephemeral range could take it (see [`port_outside_ephemeral_range`]); then this fails,
    /// saying so, rather than talking to someone else's server.
    pub fn start_again(&mut self) -> Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let port_s = self.port.to_string();
        let log = std::fs::File::create(self.dir.path().join("redis.log"))?;
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
                &self.dir.path().to_string_lossy(),
            ])
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.child = None;
                bail!("redis-server exited at start: {status}: {}", self.log());
            }
            // Our server, not another process that took the port: it answers PING with the
            // password this one was given.
            if self.answers_ping() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("redis-server did not answer within 20 s: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn answers_ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let pw = &self.password;
        let cmd = format!(
            "*2\r\n$4\r\nAUTH\r\n${}\r\n{pw}\r\n*1\r\n$4\r\nPING\r\n",
            pw.len()
        );
        if s.write_all(cmd.as_bytes()).is_err() {
            return false;
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while !got.ends_with(b"+PONG\r\n") && got.len() < 256 {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return false,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        got == b"+OK\r\n+PONG\r\n"
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// In-process federation nodes for the multi-node tests (`federation.rs`, `fedsync.rs`).
pub mod a2a;

pub mod fed {
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use anyhow::{Context, Result};
    use kos_config::ProfileKind;
    use kos_node::daemon::{NodeOptions, RunningNode, start};

    /// KLP's listen address in a layout: loopback, a port the kernel picks at bind time.
    /// The bound address is read back from the running node ([`klp_addr`]).
    pub const KLP_LISTEN: &str = "/ip4/127.0.0.1/tcp/0";

    /// Lays out a federation_node on SQLite in `dir` with KLP on loopback port 0 (no
    /// discovery, 2 s handshake timeout); `klp_extra` is appended to `klp_settings.yaml`.
    /// Returns the node's id.
    pub fn layout(dir: &Path, name: &str, klp_extra: &str) -> Result<String> {
        kos_config::layout::init_layout(dir, ProfileKind::FederationNode)?;
        let (identity, _) = kos_node::identity::Identity::load_or_create(dir)?;
        std::fs::write(
            dir.join("system.env"),
            format!(
                "KOS_PROFILE=federation_node\nKOS_STORAGE__DATABASE=sqlite\nKOS_NODE__NAME={name}\n"
            ),
        )?;
        std::fs::write(
            dir.join("klp/klp_settings.yaml"),
            format!(
                "enabled: true\nhandshake_required: true\npeer_discovery: none\nlisten: [{KLP_LISTEN}]\n\
                 handshake_timeout: 2s\n{klp_extra}"
            ),
        )?;
        Ok(identity.id().to_string())
    }

    /// The KLP address a running node is bound to (the first one, with its actual port).
    pub async fn klp_addr(node: &RunningNode) -> Result<String> {
        let klp = node.state.klp.as_ref().context("the node has no KLP")?;
        klp.listen_addrs()
            .await?
            .into_iter()
            .next()
            .context("KLP listens nowhere")
    }

    /// One `peers.list` line: the peer, its address if known, a label.
    pub fn peers_line(id: &str, addr: Option<&str>, label: Option<&str>) -> String {
        let mut l = id.to_string();
        if let Some(a) = addr {
            l.push(' ');
            l.push_str(a);
        }
        if let Some(label) = label {
            l.push_str(" # ");
            l.push_str(label);
        }
        l.push('\n');
        l
    }

    /// A node to start with [`start_listed`]: its laid-out directory, id and peers.list label.
    #[derive(Clone, Debug)]
    pub struct Member {
        pub dir: PathBuf,
        pub id: String,
        pub label: Option<String>,
    }

    /// Starts `members` one after another, each listing every member in its `peers.list`:
    /// the ones already running with their bound KLP address (it dials them), the ones after
    /// it by id alone (they dial it). Every pair is approved on both sides from the first
    /// start, and no address is known before its node has bound it. Returns each node with
    /// its bound KLP address, in order.
    pub async fn start_listed(members: &[Member]) -> Result<Vec<(RunningNode, String)>> {
        let mut started: Vec<(RunningNode, String)> = Vec::new();
        for m in members {
            let list: String = members
                .iter()
                .enumerate()
                .map(|(j, o)| {
                    peers_line(
                        &o.id,
                        started.get(j).map(|(_, a)| a.as_str()),
                        o.label.as_deref(),
                    )
                })
                .collect();
            std::fs::write(m.dir.join("klp/peers.list"), list)?;
            let node = start(NodeOptions::local(m.dir.clone()))
                .await
                .with_context(|| format!("starting {}", m.dir.display()))?;
            let addr = klp_addr(&node).await?;
            started.push((node, addr));
        }
        Ok(started)
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
