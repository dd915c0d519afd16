//! `kos testnet`: a local federation of N nodes, one command.
//!
//! One flow for both backends ([`Backend`]): local processes ([`process`], the default) and
//! containers on a private Docker network ([`docker`], `--docker`).
//!
//! `up`:
//! 1. lays out every node's home (profile `federation_node` on SQLite, identity, token key);
//!    with `--admin`, creates a federation admin key in node 1 (`federation/admin.key`);
//! 2. writes each node's `klp/klp_settings.yaml` (network `testnet`, no discovery; with
//!    `--admin`, the admin id pinned in `admins`) and `klp/peers.list` (every other node,
//!    with its address when it is known before the start: container names are);
//! 3. starts the nodes, recording each in `<dir>/testnet.json` at once;
//! 4. waits until every node is ready. Process nodes bind port 0 (API and KLP) and report
//!    where they listen in `run/node.json`; once all have, node *i*'s `peers.list` gets the
//!    addresses of nodes 1..i-1 (a running node applies the change), so each pair is
//!    dialed once, by the later node;
//! 5. waits until every node admitted every other (`--timeout`) and prints the table.
//!
//! A failed `up` stops everything it started and removes `testnet.json` (process nodes'
//! directories stay, with their logs; a Docker testnet's containers, network and volumes are
//! removed after their logs' tails are printed). `status` asks each node; `down` stops
//! exactly what `testnet.json` names (`--clean` also removes the node directories or
//! volumes).

pub mod docker;
pub mod process;

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kos_config::snapshot::atomic_write;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::node_client::{Endpoint, NodeClient};

/// The state file in the testnet directory.
pub const STATE_FILE: &str = "testnet.json";
/// How long a started node has to become ready (its API and KLP bound) before `up` fails.
pub const START_TIMEOUT: Duration = Duration::from_secs(120);
/// The federation (`federation.klp.network`) of every testnet node.
pub const NETWORK: &str = "testnet";

/// What differs between running nodes as processes and as containers.
pub trait Backend: Serialize + DeserializeOwned {
    /// `process` or `docker`, as recorded in the state file.
    const KIND: &'static str;
    /// Most nodes `up` starts.
    const MAX_NODES: usize;
    /// Whether a failed `up` also removes the node homes (containers' volumes: nothing else
    /// would find them; process nodes' directories stay for their logs).
    const CLEAN_ON_FAILURE: bool;
    /// Where one node lives (its directory and pid, or its container and volume).
    type Node: Serialize + DeserializeOwned;

    /// Checks what `up` needs before anything is created (the engine, the image).
    fn check(&self) -> Result<()>;
    /// Lays out the home of node `name` (profile, identity, token key; anything left from an
    /// earlier testnet is replaced). Returns its peer id and where it lives.
    fn create(&mut self, dir: &Path, name: &str) -> Result<(String, Self::Node)>;
    /// The `federation.klp.listen` address of every node.
    fn klp_listen(&self) -> &'static str;
    /// The KLP address the other nodes dial, if it is known before the node starts.
    fn klp_before_start(&self, node: &Self::Node) -> Option<String>;
    /// Creates a federation admin key in the node's home (`federation/admin.key`); returns
    /// the admin id.
    fn admin_keygen(&self, node: &Self::Node) -> Result<String>;
    /// Writes a file of the node's home (`rel` below it).
    fn write(&self, node: &Self::Node, rel: &str, text: &str) -> Result<()>;
    /// Starts the node (its recorded place is updated, e.g. with its pid).
    fn start(&mut self, name: &str, node: &mut Self::Node) -> Result<()>;
    /// Whether the node runs (the process or container that `up` started).
    fn running(&self, node: &Self::Node) -> bool;
    /// Once the node is ready: its API address on this machine and the KLP address the others
    /// dial.
    fn ready(&self, node: &Self::Node) -> Option<(SocketAddr, String)>;
    /// A viewer token for the node's API, valid for `ttl`.
    fn token(&self, node: &Self::Node, ttl: Duration) -> Option<String>;
    /// The last lines of the node's log.
    fn log_tail(&self, node: &Self::Node, lines: usize) -> String;
    /// Where the node's log is (for people).
    fn log_hint(&self, node: &Self::Node) -> String;
    /// How the node shows in the table's last column (after running yes/no).
    fn describe(&self, node: &Self::Node) -> String;
    /// Stops what runs of the nodes (and what else `up` started for them); returns how many
    /// nodes were stopped and a description of them.
    fn stop(&self, nodes: &[&Self::Node]) -> Result<(usize, String)>;
    /// Removes the nodes' homes.
    fn remove(&self, nodes: &[&Self::Node]) -> Result<()>;
    /// The command that runs `kos <args>` against node 1 (printed with `--admin`).
    fn cli_hint(&self, node: &Self::Node) -> String;
}

/// A node of the testnet, as recorded in `testnet.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound(serialize = "N: Serialize", deserialize = "N: DeserializeOwned"))]
pub struct Node<N> {
    /// `node-<i>`, also its `node.name`.
    pub name: String,
    pub peer_id: String,
    /// The KLP address the other nodes dial (known once the node is ready).
    pub klp: Option<String>,
    /// Its API on this machine, as last seen.
    pub api: Option<SocketAddr>,
    #[serde(flatten)]
    pub place: N,
}

/// The state of a testnet (`testnet.json`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound(
    serialize = "B: Backend, B::Node: Serialize",
    deserialize = "B: Backend, B::Node: DeserializeOwned"
))]
pub struct Testnet<B: Backend> {
    /// [`Backend::KIND`].
    pub backend: String,
    #[serde(flatten)]
    pub how: B,
    /// The federation admin id pinned on every node (`--admin`); its key is in node 1.
    pub admin: Option<String>,
    pub nodes: Vec<Node<B::Node>>,
}

/// What `up` is asked for.
#[derive(Debug, Clone, Copy)]
pub struct UpOptions {
    pub nodes: usize,
    /// How long to wait for full admission once every node is ready.
    pub timeout: Duration,
    /// Create a federation admin key in node 1 and pin it on every node.
    pub admin: bool,
}

/// The backend a state file names.
fn kind_of(dir: &Path) -> Result<Option<String>> {
    let path = dir.join(STATE_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // The state file of a Docker testnet made by kos before the shared flow.
            let old = dir.join("testnet-docker.json");
            if old.exists() {
                bail!(
                    "{}: a Docker testnet made by an older kos; stop it with that version's `kos testnet down`, or remove its containers (`docker ps -a --filter name=kos-tn-`)",
                    old.display()
                );
            }
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: corrupt", path.display()))?;
    v["backend"].as_str().map(|k| Some(k.to_string())).with_context(|| {
        format!(
            "{}: no `backend`: a testnet made by an older kos; stop it with that version's `kos testnet down`, or stop the `kos run` processes whose pids it lists",
            path.display()
        )
    })
}

/// Reads the state of the testnet in `dir`, if there is one (of backend `B`).
pub fn load<B: Backend>(dir: &Path) -> Result<Option<Testnet<B>>> {
    let path = dir.join(STATE_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let t: Testnet<B> =
        serde_json::from_str(&text).with_context(|| format!("{}: corrupt", path.display()))?;
    if t.backend != B::KIND {
        bail!(
            "{}: a `{}` testnet, not `{}`",
            path.display(),
            t.backend,
            B::KIND
        );
    }
    Ok(Some(t))
}

fn save<B: Backend>(dir: &Path, t: &Testnet<B>) -> Result<()> {
    atomic_write(
        &dir.join(STATE_FILE),
        &serde_json::to_vec_pretty(t)?,
        None,
        &mut |_| {},
    )
    .context("writing the testnet state")
}

/// Admitted and connected peers of the node whose API is at `client`, or `None` if it does
/// not answer.
fn admitted_by(client: &NodeClient, token: Option<&str>) -> Option<Vec<String>> {
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

/// Admitted and connected peers of the node whose API is at `api` (on this machine), or
/// `None` if it does not answer.
pub fn admitted_at(api: SocketAddr, token: Option<&str>) -> Option<Vec<String>> {
    let client = NodeClient::new(Endpoint::http(api).ok()?, Duration::from_secs(2)).ok()?;
    admitted_by(&client, token)
}

/// `klp/klp_settings.yaml` of every node.
fn klp_settings(listen: &str, admin: Option<&str>) -> String {
    let mut s = format!(
        "# kos testnet\nenabled: true\npublic_registry: false\nhandshake_required: true\npeer_discovery: none\nlisten:\n  - {listen}\nbootstrap: []\nnetwork: {NETWORK}\n"
    );
    if let Some(a) = admin {
        s.push_str(&format!(
            "# the testnet's federation admin (its key: node-1/{})\nadmins: [\"{a}\"]\nadmin_threshold: 1\n",
            crate::fedsync::ADMIN_KEY_FILE
        ));
    }
    s
}

/// `klp/peers.list` of node `i`: every other node, with the address of those for which
/// `addr(j)` gives one.
fn peers_list<N>(nodes: &[Node<N>], i: usize, addr: impl Fn(usize) -> Option<String>) -> String {
    let mut s = String::from("# kos testnet: every node approves every other\n");
    for (j, x) in nodes.iter().enumerate() {
        if j == i {
            continue;
        }
        match addr(j) {
            Some(a) => s.push_str(&format!("{} {a} # {}\n", x.peer_id, x.name)),
            None => s.push_str(&format!("{} # {}\n", x.peer_id, x.name)),
        }
    }
    s
}

/// `kos testnet up` with backend `b`.
pub fn up<B: Backend>(dir: &Path, b: B, opts: UpOptions) -> Result<()> {
    let n = opts.nodes;
    if !(1..=B::MAX_NODES).contains(&n) {
        bail!(
            "--nodes must be between 1 and {} for a {} testnet",
            B::MAX_NODES,
            B::KIND
        );
    }
    if let Some(kind) = kind_of(dir)? {
        let running = match kind.as_str() {
            process::KIND => running_count::<process::Processes>(dir)?,
            docker::KIND => running_count::<docker::Docker>(dir)?,
            other => bail!(
                "{}: unknown backend `{other}`",
                dir.join(STATE_FILE).display()
            ),
        };
        if running > 0 {
            bail!(
                "a testnet is already running in {} ({running} node(s) up); run `kos testnet down --dir {}` first",
                dir.display(),
                dir.display()
            );
        }
        bail!(
            "a testnet is recorded in {} (none of its nodes runs); run `kos testnet down --dir {}` first",
            dir.display(),
            dir.display()
        );
    }
    b.check()?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    let mut t = Testnet {
        backend: B::KIND.to_string(),
        how: b,
        admin: None,
        nodes: Vec::with_capacity(n),
    };
    // Recorded before anything is created, so that a failure (or `down`) finds all of it.
    save(&dir, &t)?;
    let started = Instant::now();
    match bring_up(&dir, &mut t, opts) {
        Ok(()) => {
            print_table(&t, &tokens(&t, Duration::from_secs(60)));
            outln!(
                "\nall {n} nodes admitted each other in {:.1?}. Stop with: kos testnet down --dir {}",
                started.elapsed(),
                dir.display()
            );
            if let (Some(admin), Some(first)) = (&t.admin, t.nodes.first()) {
                outln!(
                    "federation admin {admin} (key in {} of {}); approve, revoke or publish with:\n  {} peers revoke <peer id>",
                    crate::fedsync::ADMIN_KEY_FILE,
                    first.name,
                    t.how.cli_hint(&first.place)
                );
            }
            Ok(())
        }
        Err(e) => {
            let nodes: Vec<&B::Node> = t.nodes.iter().map(|x| &x.place).collect();
            let stopped = t.how.stop(&nodes);
            let removed = if B::CLEAN_ON_FAILURE {
                t.how.remove(&nodes)
            } else {
                Ok(())
            };
            let cleanup = match (stopped, removed) {
                (Ok((_, what)), Ok(())) => {
                    let _ = fs::remove_file(dir.join(STATE_FILE));
                    format!("stopped what it started: {what}")
                }
                (Err(s), _) | (_, Err(s)) => format!(
                    "could not stop everything ({s:#}); `kos testnet down --dir {}` tries again",
                    dir.display()
                ),
            };
            Err(e.context(format!("kos testnet up failed; {cleanup}")))
        }
    }
}

fn running_count<B: Backend>(dir: &Path) -> Result<usize> {
    Ok(load::<B>(dir)?.map_or(0, |t| {
        t.nodes.iter().filter(|x| t.how.running(&x.place)).count()
    }))
}

/// Steps 1 to 5 of `up` (the caller cleans up after an error).
fn bring_up<B: Backend>(dir: &Path, t: &mut Testnet<B>, opts: UpOptions) -> Result<()> {
    let n = opts.nodes;
    for i in 1..=n {
        let name = format!("node-{i}");
        let (peer_id, place) = t
            .how
            .create(dir, &name)
            .with_context(|| format!("creating {name}"))?;
        t.nodes.push(Node {
            name,
            peer_id,
            klp: None,
            api: None,
            place,
        });
        save(dir, t)?;
    }
    if opts.admin {
        let first = &t.nodes[0];
        let id = t
            .how
            .admin_keygen(&first.place)
            .with_context(|| format!("creating the admin key in {}", first.name))?;
        t.admin = Some(id);
        save(dir, t)?;
    }
    let settings = klp_settings(t.how.klp_listen(), t.admin.as_deref());
    let known: Vec<Option<String>> = t
        .nodes
        .iter()
        .map(|x| t.how.klp_before_start(&x.place))
        .collect();
    for (i, x) in t.nodes.iter().enumerate() {
        t.how
            .write(&x.place, "klp/klp_settings.yaml", &settings)
            .and_then(|()| {
                t.how.write(
                    &x.place,
                    "klp/peers.list",
                    &peers_list(&t.nodes, i, |j| known[j].clone()),
                )
            })
            .with_context(|| format!("configuring {}", x.name))?;
    }

    for i in 0..n {
        let Node { name, place, .. } = &mut t.nodes[i];
        let r = t.how.start(name, place);
        // Recorded whether or not it started (a container may exist even so).
        save(dir, t)?;
        r.with_context(|| format!("starting {}", t.nodes[i].name))?;
    }

    // Every node ready: its addresses known.
    let deadline = Instant::now() + START_TIMEOUT;
    let mut pending: Vec<usize> = (0..n).collect();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for i in pending {
            let x = &t.nodes[i];
            ensure_running(t, x, "exited during start")?;
            match t.how.ready(&x.place) {
                Some((api, klp)) => {
                    t.nodes[i].api = Some(api);
                    t.nodes[i].klp = Some(klp);
                }
                None => still.push(i),
            }
        }
        pending = still;
        if !pending.is_empty() {
            if Instant::now() > deadline {
                let names: Vec<&str> = pending.iter().map(|&i| t.nodes[i].name.as_str()).collect();
                bail!(
                    "{} not ready within {START_TIMEOUT:?}: {}",
                    names.len(),
                    names.join(", ")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    save(dir, t)?;

    // Addresses known only now: node i dials nodes 1..i-1 (each pair once).
    if known.iter().any(Option::is_none) {
        for (i, x) in t.nodes.iter().enumerate() {
            let list = peers_list(&t.nodes, i, |j| {
                known[j]
                    .clone()
                    .or_else(|| (j < i).then(|| t.nodes[j].klp.clone()).flatten())
            });
            t.how
                .write(&x.place, "klp/peers.list", &list)
                .with_context(|| format!("writing the peers of {}", x.name))?;
        }
    }

    wait_admitted(t, opts.timeout)
}

/// Waits until every node admitted (and is connected to) every other.
/// An error naming node `x`, where its log is and its last lines, unless it still runs.
fn ensure_running<B: Backend>(t: &Testnet<B>, x: &Node<B::Node>, what: &str) -> Result<()> {
    if t.how.running(&x.place) {
        return Ok(());
    }
    bail!(
        "{} {what}; see {}:\n{}",
        x.name,
        t.how.log_hint(&x.place),
        t.how.log_tail(&x.place, 20)
    )
}

fn wait_admitted<B: Backend>(t: &Testnet<B>, timeout: Duration) -> Result<()> {
    let n = t.nodes.len();
    let clients: Vec<NodeClient> = t
        .nodes
        .iter()
        .map(|x| {
            let api = x
                .api
                .with_context(|| format!("{}: no API address", x.name))?;
            NodeClient::new(Endpoint::http(api)?, Duration::from_secs(5))
        })
        .collect::<Result<_>>()?;
    let ttl = timeout + Duration::from_secs(60);
    let mut tokens: Vec<Option<String>> = vec![None; n];
    let deadline = Instant::now() + timeout;
    // Nodes seen complete are asked again only once all are (a final pass over all).
    let mut complete = vec![false; n];
    loop {
        for i in 0..n {
            if complete[i] {
                continue;
            }
            let x = &t.nodes[i];
            ensure_running(t, x, "stopped while the nodes were connecting")?;
            if tokens[i].is_none() {
                tokens[i] = t.how.token(&x.place, ttl);
            }
            complete[i] =
                admitted_by(&clients[i], tokens[i].as_deref()).is_some_and(|a| a.len() + 1 >= n);
        }
        if complete.iter().all(|c| *c) {
            let all = (0..n).all(|i| {
                admitted_by(&clients[i], tokens[i].as_deref()).is_some_and(|a| a.len() + 1 >= n)
            });
            if all {
                return Ok(());
            }
            complete = vec![false; n];
        }
        if Instant::now() > deadline {
            let done = complete.iter().filter(|c| **c).count();
            let mut msg = format!(
                "not every node admitted every other within {timeout:?} ({done} of {n} did)"
            );
            if let Some(x) = t
                .nodes
                .iter()
                .zip(&complete)
                .find(|(_, c)| !**c)
                .map(|(x, _)| x)
            {
                msg.push_str(&format!(
                    "; the end of {}'s log ({}):\n{}",
                    x.name,
                    t.how.log_hint(&x.place),
                    t.how.log_tail(&x.place, 10)
                ));
            }
            bail!("{msg}");
        }
        std::thread::sleep(Duration::from_millis(if n > 20 { 500 } else { 200 }));
    }
}

fn tokens<B: Backend>(t: &Testnet<B>, ttl: Duration) -> Vec<Option<String>> {
    t.nodes.iter().map(|x| t.how.token(&x.place, ttl)).collect()
}

fn print_table<B: Backend>(t: &Testnet<B>, tokens: &[Option<String>]) {
    outln!(
        "{:<8} {:<52} {:<26} {:>8}  running",
        "node",
        "peer id",
        "API",
        "admitted"
    );
    for (x, token) in t.nodes.iter().zip(tokens) {
        let running = t.how.running(&x.place);
        let api = running
            .then(|| t.how.ready(&x.place))
            .flatten()
            .map(|(a, _)| a);
        let adm = api
            .and_then(|a| admitted_at(a, token.as_deref()))
            .map_or("-".to_string(), |a| a.len().to_string());
        outln!(
            "{:<8} {:<52} {:<26} {:>8}  {} {}",
            x.name,
            x.peer_id,
            api.map_or("-".to_string(), |a| format!("http://{a}")),
            adm,
            if running { "yes" } else { "no" },
            t.how.describe(&x.place)
        );
    }
}

/// `kos testnet status`.
pub fn status(dir: &Path) -> Result<()> {
    match kind_of(dir)?.as_deref() {
        None => bail!("no testnet in {} (no {STATE_FILE})", dir.display()),
        Some(process::KIND) => status_of::<process::Processes>(dir),
        Some(docker::KIND) => status_of::<docker::Docker>(dir),
        Some(other) => bail!(
            "{}: unknown backend `{other}`",
            dir.join(STATE_FILE).display()
        ),
    }
}

fn status_of<B: Backend>(dir: &Path) -> Result<()> {
    let Some(t) = load::<B>(dir)? else {
        bail!("no testnet in {} (no {STATE_FILE})", dir.display())
    };
    outln!(
        "{} testnet, {} node(s){}",
        B::KIND,
        t.nodes.len(),
        t.admin
            .as_deref()
            .map_or(String::new(), |a| format!(", federation admin {a}"))
    );
    print_table(&t, &tokens(&t, Duration::from_secs(60)));
    Ok(())
}

/// `kos testnet down`: stops what `testnet.json` names, then removes it; `clean` also removes
/// the node homes.
pub fn down(dir: &Path, clean: bool) -> Result<()> {
    match kind_of(dir)?.as_deref() {
        None => {
            outln!("no testnet in {}", dir.display());
            Ok(())
        }
        Some(process::KIND) => down_of::<process::Processes>(dir, clean),
        Some(docker::KIND) => down_of::<docker::Docker>(dir, clean),
        Some(other) => bail!(
            "{}: unknown backend `{other}`",
            dir.join(STATE_FILE).display()
        ),
    }
}

fn down_of<B: Backend>(dir: &Path, clean: bool) -> Result<()> {
    let Some(t) = load::<B>(dir)? else {
        outln!("no testnet in {}", dir.display());
        return Ok(());
    };
    let nodes: Vec<&B::Node> = t.nodes.iter().map(|x| &x.place).collect();
    let (_, what) = t.how.stop(&nodes)?;
    if clean {
        t.how.remove(&nodes)?;
    }
    fs::remove_file(dir.join(STATE_FILE))
        .with_context(|| format!("removing {}", dir.join(STATE_FILE).display()))?;
    outln!(
        "stopped {what}{}",
        if clean {
            "; the node homes are removed"
        } else {
            "; the node homes stay (--clean removes them)"
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn node(i: usize) -> Node<()> {
        Node {
            name: format!("node-{i}"),
            peer_id: format!("id{i}"),
            klp: None,
            api: None,
            place: (),
        }
    }

    #[test]
    fn peers_list_names_every_other_node_with_the_addresses_given() {
        let nodes: Vec<Node<()>> = (1..=3).map(node).collect();
        let list = peers_list(&nodes, 2, |j| {
            (j == 0).then(|| "/ip4/127.0.0.1/tcp/9".into())
        });
        assert_eq!(
            list,
            "# kos testnet: every node approves every other\nid1 /ip4/127.0.0.1/tcp/9 # node-1\nid2 # node-2\n"
        );
    }

    #[test]
    fn klp_settings_pin_the_admin_only_when_asked_and_validate() {
        let plain = klp_settings("/ip4/127.0.0.1/tcp/0", None);
        assert!(!plain.contains("admins"));
        let with = klp_settings("/ip4/127.0.0.1/tcp/0", Some("12D3KooWx"));
        assert!(with.contains("admins: [\"12D3KooWx\"]"), "{with}");
        // Every key is one of the KLP settings (they deny unknown fields).
        let k: kos_config::model::Klp = yaml_serde::from_str(&with).unwrap();
        assert_eq!(k.admins, ["12D3KooWx"]);
        assert_eq!(k.admin_threshold, 1);
        assert_eq!(k.network, NETWORK);
        assert_eq!(k.listen, ["/ip4/127.0.0.1/tcp/0"]);
        assert!(k.enabled && k.handshake_required);
    }
}
