//! `kos testnet`: a local federation of N nodes, one command.
//!
//! `up` generates N config directories under `--dir` (identity, federation_node profile on
//! SQLite, loopback API and KLP ports, one shared peers.list), starts N `kos run` processes
//! in their own process groups (logs in `<node>/kos.log`), waits until every node has admitted
//! every other and prints a table. The state is in `<dir>/testnet.json`. `status` asks each
//! node; `down` stops exactly the processes `up` started (checked against `/proc`), then
//! removes `testnet.json` (the node directories stay for inspection; `--clean` removes them).

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kos_config::ProfileKind;
use kos_config::snapshot::atomic_write;
use serde::{Deserialize, Serialize};

use crate::identity::Identity;
use crate::node_client::{Endpoint, NodeClient};

pub const STATE_FILE: &str = "testnet.json";

#[derive(Debug, Serialize, Deserialize)]
pub struct TestnetNode {
    pub name: String,
    pub dir: PathBuf,
    pub pid: u32,
    pub api: SocketAddr,
    pub p2p: String,
    pub peer_id: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Testnet {
    pub nodes: Vec<TestnetNode>,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn load(dir: &Path) -> Result<Option<Testnet>> {
    match fs::read_to_string(dir.join(STATE_FILE)) {
        Ok(t) => Ok(Some(serde_json::from_str(&t).with_context(|| {
            format!("{}: corrupt", dir.join(STATE_FILE).display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether `pid` is a `kos run` for `node_dir` (so we never signal a process we did not start,
/// even if its pid was reused).
fn is_ours(pid: u32, node_dir: &Path) -> bool {
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

/// A viewer token for a node (minted with its token key), valid for `ttl`.
fn viewer_token(x: &TestnetNode, ttl: Duration) -> Option<String> {
    let opts = kos_config::LoadOptions {
        capabilities: crate::runtime::capabilities(),
        ..Default::default()
    };
    let config = kos_config::ConfigDir::new(&x.dir).load(&opts).ok()?.config;
    crate::auth::local::mint_for_dir(&x.dir, &config, &x.peer_id, crate::auth::Role::Viewer, ttl)
        .ok()
        .flatten()
}

/// Admitted and connected peers of a node, or `None` if it does not answer.
fn admitted(x: &TestnetNode, token: Option<&str>) -> Option<Vec<String>> {
    admitted_at(x.api, token)
}

/// Admitted and connected peers of the node whose API is at `api` (loopback), or `None`
/// if it does not answer.
pub(crate) fn admitted_at(api: SocketAddr, token: Option<&str>) -> Option<Vec<String>> {
    let client = NodeClient::new(Endpoint::http(api).ok()?, Duration::from_secs(2)).ok()?;
    let v = client.get_json("/api/peers", token).ok()?;
    Some(
        v["peers"]
            .as_array()?
            .iter()
            .filter(|p| p["state"] == "admitted" && p["connected"] == true)
            .filter_map(|p| p["id"].as_str().map(str::to_string))
            .collect(),
    )
}

pub fn up(dir: &Path, n: usize, timeout: Duration) -> Result<()> {
    if !(1..=64).contains(&n) {
        bail!("--nodes must be between 1 and 64");
    }
    if let Some(t) = load(dir)?
        && t.nodes.iter().any(|x| is_ours(x.pid, &x.dir))
    {
        bail!(
            "a testnet is already running in {}; run `kos testnet down --dir {}` first",
            dir.display(),
            dir.display()
        );
    }
    fs::create_dir_all(dir)?;
    let dir = dir.canonicalize()?;
    let exe = std::env::current_exe().context("locating the kos binary")?;

    // Generate every node first: identities, ports, one shared peers.list.
    let mut nodes = Vec::with_capacity(n);
    for i in 1..=n {
        let name = format!("node-{i}");
        let nd = dir.join(&name);
        if nd.exists() {
            fs::remove_dir_all(&nd).with_context(|| format!("clearing {}", nd.display()))?;
        }
        kos_config::layout::init_layout(&nd, ProfileKind::FederationNode)?;
        let (identity, _) = Identity::load_or_create(&nd)?;
        // The token key too, before any process starts (the CLI mints tokens with it).
        crate::auth::local::TokenKey::load_or_create(&nd)?;
        let api: SocketAddr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let p2p = format!("/ip4/127.0.0.1/tcp/{}", free_port()?);
        nodes.push(TestnetNode {
            name,
            dir: nd,
            pid: 0,
            api,
            p2p,
            peer_id: identity.id().to_string(),
        });
    }
    let mut peers_list = String::from("# kos testnet: every node approves every other\n");
    for x in &nodes {
        peers_list.push_str(&format!("{} {} # {}\n", x.peer_id, x.p2p, x.name));
    }
    for x in &nodes {
        let system_env = format!(
            "KOS_PROFILE=federation_node\nKOS_API__LISTEN={}\nKOS_STORAGE__DATABASE=sqlite\nKOS_LOGGING__FORMAT=json\nKOS_NODE__NAME={}\n",
            x.api, x.name
        );
        atomic_write(
            &x.dir.join("system.env"),
            system_env.as_bytes(),
            None,
            &mut |_| {},
        )?;
        let klp = format!(
            "enabled: true\npublic_registry: false\nhandshake_required: true\npeer_discovery: none\nlisten:\n  - {}\nbootstrap: []\nnetwork: testnet\n",
            x.p2p
        );
        atomic_write(
            &x.dir.join("klp/klp_settings.yaml"),
            klp.as_bytes(),
            None,
            &mut |_| {},
        )?;
        atomic_write(
            &x.dir.join("klp/peers.list"),
            peers_list.as_bytes(),
            None,
            &mut |_| {},
        )?;
    }

    // Start them, recording each in testnet.json at once so that `down` can always stop
    // whatever was started.
    let mut state = Testnet { nodes };
    for i in 0..state.nodes.len() {
        let x = &state.nodes[i];
        let started = (|| -> Result<u32> {
            let log = fs::File::create(x.dir.join("kos.log"))?;
            let mut cmd = Command::new(&exe);
            cmd.args(["--dir", &x.dir.to_string_lossy(), "run"])
                .env_remove("KOS_PROFILE")
                .env_remove("KOS_HOME")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            #[cfg(unix)]
            {
                use std::os::unix::process::CommandExt;
                // Own process group: Ctrl-C on the terminal that ran `up` does not stop them.
                cmd.process_group(0);
            }
            Ok(cmd
                .spawn()
                .with_context(|| format!("starting {}", x.name))?
                .id())
        })();
        match started {
            Ok(pid) => {
                state.nodes[i].pid = pid;
                atomic_write(
                    &dir.join(STATE_FILE),
                    &serde_json::to_vec_pretty(&state)?,
                    None,
                    &mut |_| {},
                )?;
            }
            Err(e) => {
                let _ = down(&dir, false);
                return Err(e);
            }
        }
    }
    let state = state;

    // Wait for full admission, with one token per node for the whole wait.
    let tokens: Vec<Option<String>> = state
        .nodes
        .iter()
        .map(|x| viewer_token(x, timeout + Duration::from_secs(60)))
        .collect();
    let deadline = Instant::now() + timeout;
    loop {
        let mut done = true;
        for (x, token) in state.nodes.iter().zip(&tokens) {
            if !is_ours(x.pid, &x.dir) {
                bail!(
                    "{} exited during start; see {}",
                    x.name,
                    x.dir.join("kos.log").display()
                );
            }
            if admitted(x, token.as_deref()).is_none_or(|a| a.len() < n - 1) {
                done = false;
            }
        }
        if done {
            break;
        }
        if Instant::now() > deadline {
            print_table(&state, &tokens);
            bail!(
                "not every node admitted every other within {timeout:?}; `kos testnet status --dir {}` shows where it stands",
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    print_table(&state, &tokens);
    outln!(
        "\nall {n} nodes admitted each other. Stop with: kos testnet down --dir {}",
        dir.display()
    );
    Ok(())
}

fn print_table(t: &Testnet, tokens: &[Option<String>]) {
    outln!(
        "{:<8} {:<54} {:<24} {:>9}  running",
        "node",
        "peer id",
        "API",
        "admitted"
    );
    for (x, token) in t.nodes.iter().zip(tokens) {
        let running = is_ours(x.pid, &x.dir);
        let adm = admitted(x, token.as_deref()).map_or("-".to_string(), |a| a.len().to_string());
        outln!(
            "{:<8} {:<54} {:<24} {:>9}  {}",
            x.name,
            x.peer_id,
            format!("http://{}", x.api),
            adm,
            if running { "yes" } else { "no" }
        );
    }
}

pub fn status(dir: &Path) -> Result<()> {
    let Some(t) = load(dir)? else {
        bail!("no testnet in {} (no {STATE_FILE})", dir.display())
    };
    let tokens: Vec<Option<String>> = t
        .nodes
        .iter()
        .map(|x| viewer_token(x, Duration::from_secs(60)))
        .collect();
    print_table(&t, &tokens);
    Ok(())
}

pub fn down(dir: &Path, clean: bool) -> Result<()> {
    let Some(t) = load(dir)? else {
        outln!("no testnet in {}", dir.display());
        return Ok(());
    };
    let ours: Vec<&TestnetNode> = t.nodes.iter().filter(|x| is_ours(x.pid, &x.dir)).collect();
    for x in &ours {
        signal(x.pid, "TERM");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while ours.iter().any(|x| is_ours(x.pid, &x.dir)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    for x in ours.iter().filter(|x| is_ours(x.pid, &x.dir)) {
        eprintln!("{} did not stop within 20 s; killing it", x.name);
        signal(x.pid, "KILL");
    }
    outln!("stopped {} node process(es)", ours.len());
    fs::remove_file(dir.join(STATE_FILE))?;
    if clean {
        for x in &t.nodes {
            let _ = fs::remove_dir_all(&x.dir);
        }
    }
    Ok(())
}
