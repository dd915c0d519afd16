//! Support for kOS node's multi-node and end-to-end tests.
//!
//! - [`Postgres`]: a throwaway PostgreSQL server on a free loopback port, started from the
//!   local binaries (`/usr/lib/postgresql/15/bin`, or `KOS_TEST_PG_BIN`), removed on drop.
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
            eprintln!("NOT RUN: {test}: {e:#}");
            None
        }
    }
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
    child: Child,
    pub port: u16,
    /// `postgres://kos@127.0.0.1:<port>/kos` (trust authentication on loopback).
    pub url: String,
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
        let child = run(
            &bin.join("postgres"),
            &[
                "-D",
                &data_s,
                "-p",
                &port_s,
                "-k",
                &sock,
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=50",
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting postgres")?;
        let mut pg = Postgres {
            _dir: dir,
            child,
            port,
            url: format!("postgres://kos@127.0.0.1:{port}/postgres"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port_s, "-q"])
                .status();
            if ready.is_ok_and(|s| s.success()) {
                break;
            }
            if let Ok(Some(status)) = pg.child.try_wait() {
                bail!("postgres exited at start: {status}");
            }
            if Instant::now() > deadline {
                bail!("postgres did not become ready within 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let created = Command::new(bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &port_s, "-U", "kos", "kos"])
            .status()?;
        if !created.success() {
            bail!("createdb failed");
        }
        pg.url = format!("postgres://kos@127.0.0.1:{port}/kos");
        Ok(pg)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGTERM: smart shutdown would wait for clients; SIGINT is "fast" shutdown.
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
