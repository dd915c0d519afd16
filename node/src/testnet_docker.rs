//! `kos testnet up --docker`: the testnet of [`crate::testnet`], with each node in its own
//! container on a private Docker network.
//!
//! `up` creates, all named `kos-tn-<random>...` and labelled `org.kos-node.testnet`:
//! one bridge network, and per node a volume (the node's `KOS_HOME`) and a container from the
//! node image (`deploy/local-images.sh` or `./Dockerfile`). It lays out each volume with the
//! image itself (`kos init --profile federation_node`, then `kos id --json`), writes one
//! shared `klp/peers.list` naming every node by its container name (`/dns4/<container>/tcp/4001`,
//! resolved by Docker's DNS, so a restarted container with a new address is still found),
//! starts the containers (SQLite, KLP on TCP 4001, API on 0.0.0.0:7420 published on an
//! ephemeral 127.0.0.1 port), and waits until every node admitted every other.
//! The state is in `<dir>/testnet-docker.json`; `status` and `down` use it and touch only the
//! containers, network and volumes named there.

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kos_config::snapshot::atomic_write;
use serde::{Deserialize, Serialize};

pub const STATE_FILE: &str = "testnet-docker.json";
/// The label on everything `up` creates (value: the testnet's project name).
pub const LABEL: &str = "org.kos-node.testnet";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DockerNode {
    /// `node-<i>`, also the node's `node.name`.
    pub name: String,
    /// Container name, also its host name on the network.
    pub container: String,
    /// Volume mounted as the node's `KOS_HOME`.
    pub volume: String,
    pub peer_id: String,
    /// The KLP address the other nodes dial.
    pub p2p: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DockerTestnet {
    pub project: String,
    pub image: String,
    pub network: String,
    pub nodes: Vec<DockerNode>,
}

/// Runs `docker` and returns its standard output; an error carries its standard error.
pub fn docker(args: &[&str]) -> Result<String> {
    docker_with_input(args, None)
}

fn docker_with_input(args: &[&str], input: Option<&str>) -> Result<String> {
    let mut cmd = Command::new("docker");
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .context("running `docker` (is Docker installed?)")?;
    if let Some(text) = input
        && let Some(mut stdin) = child.stdin.take()
    {
        stdin
            .write_all(text.as_bytes())
            .context("writing to docker")?;
    }
    let out = child.wait_with_output().context("waiting for docker")?;
    if !out.status.success() {
        bail!(
            "`docker {}` failed: {}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn load(dir: &Path) -> Result<Option<DockerTestnet>> {
    match fs::read_to_string(dir.join(STATE_FILE)) {
        Ok(t) => Ok(Some(serde_json::from_str(&t).with_context(|| {
            format!("{}: corrupt", dir.join(STATE_FILE).display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Reads the state of the Docker testnet in `dir`, if there is one.
pub fn load_state(dir: &Path) -> Result<Option<DockerTestnet>> {
    load(dir)
}

fn save(dir: &Path, t: &DockerTestnet) -> Result<()> {
    atomic_write(
        &dir.join(STATE_FILE),
        &serde_json::to_vec_pretty(t)?,
        None,
        &mut |_| {},
    )
    .context("writing the testnet state")
}

/// Whether the container exists and runs.
pub fn is_running(container: &str) -> bool {
    docker(&["inspect", "-f", "{{.State.Running}}", container]).is_ok_and(|s| s == "true")
}

/// The host address of a container's API (its published 7420/tcp; changes when the
/// container restarts).
pub fn api_addr(container: &str) -> Result<SocketAddr> {
    let out = docker(&["port", container, "7420/tcp"])?;
    out.lines()
        .find_map(|l| l.trim().parse::<SocketAddr>().ok())
        .with_context(|| format!("{container}: 7420/tcp is not published on an IPv4 address"))
}

/// A token for a node, minted inside its container with its own token key.
pub fn token(container: &str, role: &str, ttl: Duration) -> Result<String> {
    let ttl = format!("{}s", ttl.as_secs().max(1));
    docker(&[
        "exec", container, "kos", "token", "create", "--role", role, "--ttl", &ttl, "--sub",
        "testnet",
    ])
}

/// Admitted and connected peers of a node, or `None` if it does not answer.
pub fn admitted(container: &str, token: &str) -> Option<Vec<String>> {
    let addr = api_addr(container).ok()?;
    crate::testnet::admitted_at(addr, Some(token))
}

fn random_suffix() -> Result<String> {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(hex::encode(b))
}

pub fn up(dir: &Path, n: usize, image: &str, timeout: Duration) -> Result<()> {
    if !(1..=32).contains(&n) {
        bail!("--nodes must be between 1 and 32 with --docker");
    }
    if let Some(t) = load(dir)? {
        bail!(
            "a Docker testnet ({}) is recorded in {}; run `kos testnet down --dir {}` first",
            t.project,
            dir.display(),
            dir.display()
        );
    }
    docker(&["version", "--format", "{{.Server.Version}}"])
        .context("the Docker engine does not answer")?;
    docker(&["image", "inspect", "--format", "{{.Id}}", image]).with_context(|| {
        format!("image {image} not found: build it (deploy/local-images.sh or docker build)")
    })?;
    fs::create_dir_all(dir)?;
    let project = format!("kos-tn-{}", random_suffix()?);
    let mut t = DockerTestnet {
        project: project.clone(),
        image: image.to_string(),
        network: project.clone(),
        nodes: Vec::new(),
    };
    // Recorded before anything is created, so that `down` can always remove what was.
    save(dir, &t)?;
    let result = create_and_start(dir, &mut t, n, timeout);
    if result.is_err() {
        eprintln!(
            "the testnet did not come up; its containers stay for inspection (`docker logs <container>`); remove everything with `kos testnet down --clean --dir {}`",
            dir.display()
        );
    }
    result
}

fn create_and_start(dir: &Path, t: &mut DockerTestnet, n: usize, timeout: Duration) -> Result<()> {
    let label = format!("{LABEL}={}", t.project);
    docker(&["network", "create", "--label", &label, &t.network])?;
    for i in 1..=n {
        let name = format!("node-{i}");
        let container = format!("{}-{name}", t.project);
        let volume = container.clone();
        docker(&["volume", "create", "--label", &label, &volume])?;
        t.nodes.push(DockerNode {
            name,
            container: container.clone(),
            volume: volume.clone(),
            peer_id: String::new(),
            p2p: format!("/dns4/{container}/tcp/4001"),
        });
        save(dir, t)?;
        // Lay out the volume with the image's own `kos`, as its entrypoint would.
        let mount = format!("{volume}:/var/lib/kos");
        let out = docker(&[
            "run",
            "--rm",
            "--label",
            &label,
            "-v",
            &mount,
            "--entrypoint",
            "sh",
            &t.image,
            "-c",
            "kos init --profile federation_node >/dev/null && kos id --json",
        ])?;
        let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or_default())
            .with_context(|| format!("`kos id --json` in {volume}: unexpected output `{out}`"))?;
        let id = v["peer_id"]
            .as_str()
            .context("`kos id --json`: no peer_id")?
            .to_string();
        if let Some(x) = t.nodes.last_mut() {
            x.peer_id = id;
        }
        save(dir, t)?;
    }
    let mut peers_list = String::from("# kos testnet (docker): every node approves every other\n");
    for x in &t.nodes {
        peers_list.push_str(&format!("{} {} # {}\n", x.peer_id, x.p2p, x.name));
    }
    for x in &t.nodes {
        let mount = format!("{}:/var/lib/kos", x.volume);
        docker_with_input(
            &[
                "run",
                "--rm",
                "-i",
                "--label",
                &label,
                "-v",
                &mount,
                "--entrypoint",
                "sh",
                &t.image,
                "-c",
                "cat > /var/lib/kos/klp/peers.list",
            ],
            Some(&peers_list),
        )?;
    }
    for x in &t.nodes {
        let mount = format!("{}:/var/lib/kos", x.volume);
        let node_name = format!("KOS_NODE__NAME={}", x.name);
        docker(&[
            "run",
            "-d",
            "--name",
            &x.container,
            "--hostname",
            &x.container,
            "--label",
            &label,
            "--network",
            &t.network,
            "-v",
            &mount,
            "-p",
            "127.0.0.1::7420",
            "-e",
            "KOS_API__LISTEN=0.0.0.0:7420",
            "-e",
            "KOS_STORAGE__DATABASE=sqlite",
            "-e",
            &node_name,
            "-e",
            "KOS_FEDERATION__KLP__LISTEN=/ip4/0.0.0.0/tcp/4001",
            "-e",
            "KOS_FEDERATION__KLP__PEER_DISCOVERY=none",
            "-e",
            "KOS_FEDERATION__KLP__PUBLIC_REGISTRY=false",
            "-e",
            "KOS_FEDERATION__KLP__NETWORK=testnet",
            &t.image,
            "run",
        ])?;
    }

    // Wait for full admission, with one token per node for the whole wait.
    let deadline = Instant::now() + timeout;
    let mut tokens: Vec<Option<String>> = vec![None; t.nodes.len()];
    loop {
        let mut done = true;
        for (x, tok) in t.nodes.iter().zip(tokens.iter_mut()) {
            if !is_running(&x.container) {
                bail!(
                    "{} ({}) stopped during start; see `docker logs {}`",
                    x.name,
                    x.container,
                    x.container
                );
            }
            if tok.is_none() {
                *tok = token(&x.container, "viewer", timeout + Duration::from_secs(60)).ok();
            }
            let n_admitted = tok
                .as_deref()
                .and_then(|k| admitted(&x.container, k))
                .map_or(0, |a| a.len());
            if n_admitted < n - 1 {
                done = false;
            }
        }
        if done {
            break;
        }
        if Instant::now() > deadline {
            print_table(t, &tokens);
            bail!(
                "not every node admitted every other within {timeout:?}; `kos testnet status --dir {}` shows where it stands",
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    print_table(t, &tokens);
    outln!(
        "\nall {n} nodes admitted each other on Docker network {}. Stop with: kos testnet down --dir {}",
        t.network,
        dir.display()
    );
    Ok(())
}

fn print_table(t: &DockerTestnet, tokens: &[Option<String>]) {
    outln!(
        "{:<8} {:<54} {:<24} {:>9}  container",
        "node",
        "peer id",
        "API",
        "admitted"
    );
    for (x, tok) in t.nodes.iter().zip(tokens) {
        let api = api_addr(&x.container).map_or("-".to_string(), |a| format!("http://{a}"));
        let adm = tok
            .as_deref()
            .and_then(|k| admitted(&x.container, k))
            .map_or("-".to_string(), |a| a.len().to_string());
        let state = if is_running(&x.container) {
            "running"
        } else {
            "stopped"
        };
        outln!(
            "{:<8} {:<54} {:<24} {:>9}  {} ({state})",
            x.name,
            x.peer_id,
            api,
            adm,
            x.container
        );
    }
}

pub fn status(dir: &Path) -> Result<()> {
    let Some(t) = load(dir)? else {
        bail!("no Docker testnet in {} (no {STATE_FILE})", dir.display())
    };
    let tokens: Vec<Option<String>> = t
        .nodes
        .iter()
        .map(|x| token(&x.container, "viewer", Duration::from_secs(60)).ok())
        .collect();
    print_table(&t, &tokens);
    Ok(())
}

/// Removes the containers and the network of the testnet (and with `clean`, the volumes).
pub fn down(dir: &Path, clean: bool) -> Result<()> {
    let Some(t) = load(dir)? else {
        outln!("no Docker testnet in {}", dir.display());
        return Ok(());
    };
    let mut problems = Vec::new();
    let mut removed = 0;
    for x in &t.nodes {
        if docker(&["inspect", "-f", "{{.Id}}", &x.container]).is_err() {
            continue;
        }
        // `stop` gives the node its drain time (SIGTERM, then SIGKILL after 20 s).
        let _ = docker(&["stop", "-t", "20", &x.container]);
        match docker(&["rm", "-f", &x.container]) {
            Ok(_) => removed += 1,
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    if docker(&["network", "inspect", "-f", "{{.Id}}", &t.network]).is_ok()
        && let Err(e) = docker(&["network", "rm", &t.network])
    {
        problems.push(format!("{e:#}"));
    }
    if clean {
        for x in &t.nodes {
            if docker(&["volume", "inspect", "-f", "{{.Name}}", &x.volume]).is_ok()
                && let Err(e) = docker(&["volume", "rm", &x.volume])
            {
                problems.push(format!("{e:#}"));
            }
        }
    }
    if !problems.is_empty() {
        bail!("could not remove everything:\n{}", problems.join("\n"));
    }
    outln!(
        "removed {removed} container(s) and network {}{}",
        t.network,
        if clean {
            " and the volumes"
        } else {
            "; the volumes stay (--clean removes them)"
        }
    );
    fs::remove_file(dir.join(STATE_FILE))?;
    Ok(())
}
