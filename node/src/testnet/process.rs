//! Testnet nodes as local processes: `<dir>/node-<i>` is the node's config directory, the
//! node is `kos --dir <dir>/node-<i> run` in its own process group (log in `kos.log`), its
//! API on `127.0.0.1:0` and KLP on `/ip4/127.0.0.1/tcp/0`: the kernel picks free ports, the
//! node reports them in `run/node.json` ([`crate::runfile`]), so two nodes never collide.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kos_config::ProfileKind;
use kos_config::snapshot::atomic_write;
use serde::{Deserialize, Serialize};

use super::Backend;
use crate::identity::Identity;

pub const KIND: &str = "process";

/// The process backend: nodes are `kos run` processes of this binary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Processes {
    /// The `kos` binary the nodes run.
    pub exe: PathBuf,
}

impl Processes {
    /// Nodes run the binary that runs this command.
    pub fn new() -> Result<Self> {
        Ok(Self {
            exe: std::env::current_exe().context("locating the kos binary")?,
        })
    }
}

/// A node process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Proc {
    /// Its config directory.
    pub dir: PathBuf,
    /// Its process, once started.
    pub pid: Option<u32>,
}

/// Whether `pid` is a `kos run` for `node_dir` and not a zombie (so we never signal a
/// process we did not start, even if its pid was reused).
pub fn is_ours(pid: u32, node_dir: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let dir = node_dir.to_string_lossy();
    args.iter().any(|a| a == "run") && args.iter().any(|a| *a == dir)
}

fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Backend for Processes {
    const KIND: &'static str = KIND;
    // Each node is ~20 MB and a few threads; 100 run on 2 cores (BENCHMARKS.md).
    const MAX_NODES: usize = 256;
    const CLEAN_ON_FAILURE: bool = false;
    type Node = Proc;

    fn check(&self) -> Result<()> {
        Ok(())
    }

    fn create(&mut self, dir: &Path, name: &str) -> Result<(String, Proc)> {
        let nd = dir.join(name);
        if nd.exists() {
            fs::remove_dir_all(&nd).with_context(|| format!("clearing {}", nd.display()))?;
        }
        kos_config::layout::init_layout(&nd, ProfileKind::FederationNode)?;
        let (identity, _) = Identity::load_or_create(&nd)?;
        // The token key too, before the process starts (the CLI mints tokens with it).
        crate::auth::local::TokenKey::load_or_create(&nd)?;
        // The generated configuration is all of it: port 0 for the API (and KLP, in
        // klp_settings.yaml).
        let system_env = format!(
            "KOS_PROFILE=federation_node\nKOS_API__LISTEN=127.0.0.1:0\nKOS_STORAGE__DATABASE=sqlite\nKOS_LOGGING__FORMAT=json\nKOS_NODE__NAME={name}\n"
        );
        atomic_write(
            &nd.join(kos_config::load::SYSTEM_ENV),
            system_env.as_bytes(),
            None,
            &mut |_| {},
        )?;
        Ok((identity.id().to_string(), Proc { dir: nd, pid: None }))
    }

    fn klp_listen(&self) -> &'static str {
        "/ip4/127.0.0.1/tcp/0"
    }

    fn klp_before_start(&self, _: &Proc) -> Option<String> {
        None
    }

    fn admin_keygen(&self, node: &Proc) -> Result<String> {
        Ok(
            crate::fedsync::create_admin_key(&node.dir.join(crate::fedsync::ADMIN_KEY_FILE))?
                .to_string(),
        )
    }

    fn write(&self, node: &Proc, rel: &str, text: &str) -> Result<()> {
        let path = node.dir.join(rel);
        atomic_write(&path, text.as_bytes(), None, &mut |_| {})
            .with_context(|| format!("writing {}", path.display()))
    }

    fn start(&mut self, name: &str, node: &mut Proc) -> Result<()> {
        let log_path = node.dir.join("kos.log");
        let log = fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut cmd = Command::new(&self.exe);
        cmd.arg("--dir").arg(&node.dir).arg("run");
        // The generated configuration is the node's whole configuration: none of the
        // caller's KOS_* variables reaches it.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("KOS_") {
                cmd.env_remove(k);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            // Own process group: Ctrl-C on the terminal that ran `up` does not stop them.
            cmd.process_group(0);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({})", self.exe.display()))?;
        node.pid = Some(child.id());
        Ok(())
    }

    fn running(&self, node: &Proc) -> bool {
        node.pid.is_some_and(|p| is_ours(p, &node.dir))
    }

    fn ready(&self, node: &Proc) -> Option<(SocketAddr, String)> {
        let info = crate::runfile::read(&node.dir)?;
        if Some(info.pid) != node.pid {
            return None;
        }
        let klp = info.klp.first()?.clone();
        Some((info.api, klp))
    }

    fn token(&self, node: &Proc, ttl: Duration) -> Option<String> {
        let opts = kos_config::LoadOptions {
            capabilities: crate::runtime::capabilities(),
            ..Default::default()
        };
        let config = kos_config::ConfigDir::new(&node.dir)
            .load(&opts)
            .ok()?
            .config;
        let id = Identity::load(&node.dir).ok()?.id().to_string();
        crate::auth::local::mint_for_dir(&node.dir, &config, &id, crate::auth::Role::Viewer, ttl)
            .ok()
            .flatten()
    }

    fn log_tail(&self, node: &Proc, lines: usize) -> String {
        let text = fs::read_to_string(node.dir.join("kos.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn log_hint(&self, node: &Proc) -> String {
        node.dir.join("kos.log").display().to_string()
    }

    fn describe(&self, node: &Proc) -> String {
        node.pid
            .map_or("(not started)".into(), |p| format!("pid {p}"))
    }

    fn stop(&self, nodes: &[&Proc]) -> Result<(usize, String)> {
        let ours: Vec<(u32, &Path)> = nodes
            .iter()
            .filter_map(|x| x.pid.map(|p| (p, x.dir.as_path())))
            .filter(|(p, d)| is_ours(*p, d))
            .collect();
        for (pid, _) in &ours {
            signal(*pid, "TERM");
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while ours.iter().any(|(p, d)| is_ours(*p, d)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        for (pid, d) in ours.iter().filter(|(p, d)| is_ours(*p, d)) {
            eprintln!("{} did not stop within 20 s; killing it", d.display());
            signal(*pid, "KILL");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while ours.iter().any(|(p, d)| is_ours(*p, d)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let pids: Vec<String> = ours.iter().map(|(p, _)| p.to_string()).collect();
        Ok((
            ours.len(),
            format!(
                "{} node process(es){}",
                ours.len(),
                if pids.is_empty() {
                    String::new()
                } else {
                    format!(" (pids {})", pids.join(" "))
                }
            ),
        ))
    }

    fn remove(&self, nodes: &[&Proc]) -> Result<()> {
        for x in nodes {
            if x.dir.exists() {
                fs::remove_dir_all(&x.dir)
                    .with_context(|| format!("removing {}", x.dir.display()))?;
            }
        }
        Ok(())
    }

    fn cli_hint(&self, node: &Proc) -> String {
        format!("KOS_HOME={} kos", node.dir.display())
    }
}
