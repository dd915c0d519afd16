//! Testnet nodes as containers (`kos testnet up --docker`).
//!
//! Everything `up` creates is named `kos-tn-<random>...` and labelled
//! `org.kos-node.testnet=<that name>`: one bridge network, and per node a volume (the node's
//! `KOS_HOME`) and a container from the node image (`deploy/local-images.sh` or
//! `./Dockerfile`). Each volume is laid out with the image itself (`kos init --profile
//! federation_node`, then `kos id --json`). Containers have their own addresses on the
//! network, so KLP listens on the fixed `0.0.0.0:4001` and the others dial
//! `/dns4/<container>/tcp/4001` (Docker's DNS: a restarted container with a new address is
//! still found); the API listens on `0.0.0.0:7420`, published on an ephemeral 127.0.0.1 port.
//! Tokens are minted inside the container (`kos token create`).

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::Backend;

pub const KIND: &str = "docker";
/// The label on everything `up` creates (value: the testnet's project name).
pub const LABEL: &str = "org.kos-node.testnet";
/// The node's home in the container.
const HOME: &str = "/var/lib/kos";

/// The Docker backend: the image, and the project that names what `up` creates.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Docker {
    pub project: String,
    pub image: String,
    pub network: String,
    /// Whether the network exists (created with the first node).
    #[serde(skip)]
    network_created: bool,
}

impl Docker {
    /// A new project (random name) running `image`.
    pub fn new(image: &str) -> Result<Self> {
        let mut b = [0u8; 4];
        getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let project = format!("kos-tn-{}", hex::encode(b));
        Ok(Self {
            network: project.clone(),
            project,
            image: image.to_string(),
            network_created: false,
        })
    }

    fn label(&self) -> String {
        format!("{LABEL}={}", self.project)
    }

    /// `docker run --rm` of the image with the node's volume, running `script` in `sh`.
    fn in_volume(&self, volume: &str, script: &str, input: Option<&str>) -> Result<String> {
        let mount = format!("{volume}:{HOME}");
        let label = self.label();
        let mut args = vec![
            "run",
            "--rm",
            "--label",
            &label,
            "-v",
            &mount,
            "--entrypoint",
            "sh",
        ];
        if input.is_some() {
            args.push("-i");
        }
        args.extend([self.image.as_str(), "-c", script]);
        docker_with_input(&args, input)
    }
}

/// A node container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Container {
    /// Container name, also its host name on the network.
    pub container: String,
    /// Volume mounted as the node's `KOS_HOME`.
    pub volume: String,
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
    super::admitted_at(api_addr(container).ok()?, Some(token))
}

/// Single-quotes `s` for `sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Backend for Docker {
    const KIND: &'static str = KIND;
    const MAX_NODES: usize = 32;
    const CLEAN_ON_FAILURE: bool = true;
    type Node = Container;

    fn check(&self) -> Result<()> {
        docker(&["version", "--format", "{{.Server.Version}}"])
            .context("the Docker engine does not answer")?;
        docker(&["image", "inspect", "--format", "{{.Id}}", &self.image]).with_context(|| {
            format!(
                "image {} not found: build it (deploy/local-images.sh or docker build)",
                self.image
            )
        })?;
        Ok(())
    }

    fn create(&mut self, _dir: &Path, name: &str) -> Result<(String, Container)> {
        let label = self.label();
        if !self.network_created {
            docker(&["network", "create", "--label", &label, &self.network])?;
            self.network_created = true;
        }
        let container = format!("{}-{name}", self.project);
        let volume = container.clone();
        docker(&["volume", "create", "--label", &label, &volume])?;
        let out = self.in_volume(
            &volume,
            "kos init --profile federation_node >/dev/null && kos id --json",
            None,
        )?;
        let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or_default())
            .with_context(|| format!("`kos id --json` in {volume}: unexpected output `{out}`"))?;
        let id = v["peer_id"]
            .as_str()
            .context("`kos id --json`: no peer_id")?
            .to_string();
        Ok((id, Container { container, volume }))
    }

    fn klp_listen(&self) -> &'static str {
        "/ip4/0.0.0.0/tcp/4001"
    }

    fn klp_before_start(&self, node: &Container) -> Option<String> {
        Some(format!("/dns4/{}/tcp/4001", node.container))
    }

    fn admin_keygen(&self, node: &Container) -> Result<String> {
        let out = self.in_volume(&node.volume, "kos admin keygen", None)?;
        out.lines()
            .find_map(|l| l.strip_prefix("admin id:"))
            .map(|id| id.trim().to_string())
            .with_context(|| format!("`kos admin keygen`: unexpected output `{out}`"))
    }

    fn write(&self, node: &Container, rel: &str, text: &str) -> Result<()> {
        let path = sh_quote(&format!("{HOME}/{rel}"));
        self.in_volume(
            &node.volume,
            &format!("mkdir -p \"$(dirname {path})\" && cat > {path}"),
            Some(text),
        )
        .map(|_| ())
    }

    fn start(&mut self, name: &str, node: &mut Container) -> Result<()> {
        let mount = format!("{}:{HOME}", node.volume);
        let node_name = format!("KOS_NODE__NAME={name}");
        let label = self.label();
        docker(&[
            "run",
            "-d",
            "--name",
            &node.container,
            "--hostname",
            &node.container,
            "--label",
            &label,
            "--network",
            &self.network,
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
            &self.image,
            "run",
        ])
        .map(|_| ())
    }

    fn running(&self, node: &Container) -> bool {
        is_running(&node.container)
    }

    fn ready(&self, node: &Container) -> Option<(SocketAddr, String)> {
        Some((
            api_addr(&node.container).ok()?,
            self.klp_before_start(node)?,
        ))
    }

    fn token(&self, node: &Container, ttl: Duration) -> Option<String> {
        token(&node.container, "viewer", ttl).ok()
    }

    fn log_tail(&self, node: &Container, lines: usize) -> String {
        let n = lines.to_string();
        // The node logs to standard error: both streams, merged.
        Command::new("docker")
            .args(["logs", "--tail", &n, &node.container])
            .stdin(Stdio::null())
            .output()
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
                .trim_end()
                .to_string()
            })
            .unwrap_or_default()
    }

    fn log_hint(&self, node: &Container) -> String {
        format!("`docker logs {}`", node.container)
    }

    fn describe(&self, node: &Container) -> String {
        node.container.clone()
    }

    fn stop(&self, nodes: &[&Container]) -> Result<(usize, String)> {
        let mut problems = Vec::new();
        let mut removed = 0;
        for x in nodes {
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
        if docker(&["network", "inspect", "-f", "{{.Id}}", &self.network]).is_ok()
            && let Err(e) = docker(&["network", "rm", &self.network])
        {
            problems.push(format!("{e:#}"));
        }
        if !problems.is_empty() {
            bail!("could not remove everything:\n{}", problems.join("\n"));
        }
        Ok((
            removed,
            format!(
                "{removed} container(s), removed with network {}",
                self.network
            ),
        ))
    }

    fn remove(&self, nodes: &[&Container]) -> Result<()> {
        let mut problems = Vec::new();
        for x in nodes {
            if docker(&["volume", "inspect", "-f", "{{.Name}}", &x.volume]).is_ok()
                && let Err(e) = docker(&["volume", "rm", &x.volume])
            {
                problems.push(format!("{e:#}"));
            }
        }
        if !problems.is_empty() {
            bail!("could not remove the volumes:\n{}", problems.join("\n"));
        }
        Ok(())
    }

    fn cli_hint(&self, node: &Container) -> String {
        format!("docker exec {} kos", node.container)
    }
}
