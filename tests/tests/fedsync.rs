//! Federation sync across in-process nodes on 127.0.0.1: admin-signed approvals,
//! revocations and config snapshots reach every node; partitions heal; a stopped node
//! catches up; forged ops are refused everywhere; a new node joins through one bootstrap
//! peer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use kos_node::daemon::{NodeOptions, RunningNode, start};
use kos_tests::fed::Member;
use reqwest::StatusCode;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

struct Node {
    node: Option<RunningNode>,
    http: reqwest::Client,
    dir: PathBuf,
    base: String,
    id: String,
    p2p: String,
}

/// A federation_node with KLP on loopback port 0; federation admins pinned, fast
/// anti-entropy.
fn layout(root: &Path, name: &str, admins: &[String]) -> (PathBuf, String) {
    let dir = root.join(name);
    let admins: Vec<String> = admins.iter().map(|a| format!("\"{a}\"")).collect();
    let id = kos_tests::fed::layout(
        &dir,
        name,
        &format!(
            "sync_interval: 500ms\nadmins: [{}]\nadmin_threshold: 1\n",
            admins.join(", ")
        ),
    )
    .unwrap();
    (dir, id)
}

fn admin_key(dir: &Path) -> String {
    kos_node::fedsync::create_admin_key(&dir.join(kos_node::fedsync::ADMIN_KEY_FILE))
        .unwrap()
        .to_string()
}

/// Starts the node laid out in `dir`; its KLP address is the one it bound.
async fn boot(dir: PathBuf, id: String) -> Node {
    let node = start(NodeOptions::local(dir.clone())).await.unwrap();
    let p2p = kos_tests::fed::klp_addr(&node).await.unwrap();
    wrap(node, dir, id, p2p)
}

fn wrap(node: RunningNode, dir: PathBuf, id: String, p2p: String) -> Node {
    let base = format!("http://{}", node.addr);
    let http = kos_tests::fed::admin_client(&node, &dir).unwrap();
    Node {
        node: Some(node),
        http,
        dir,
        base,
        id,
        p2p,
    }
}

impl Node {
    async fn get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn fed(&self) -> Value {
        self.get("/api/federation").await
    }

    async fn admitted(&self) -> Vec<String> {
        let v = self.get("/api/peers").await;
        let mut out: Vec<String> = v["peers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["state"] == "admitted" && p["connected"] == true)
            .map(|p| p["id"].as_str().unwrap().to_string())
            .collect();
        out.sort();
        out
    }

    async fn stop(&mut self) {
        if let Some(n) = self.node.take() {
            n.stop().await.unwrap();
        }
    }

    fn peers_list(&self) -> String {
        std::fs::read_to_string(self.dir.join("klp/peers.list")).unwrap_or_default()
    }

    /// Replaces the operator's section of peers.list, keeping the managed one.
    fn set_local_peers(&self, local: &str) {
        let text = self.peers_list();
        let managed = text
            .find(kos_klp_marker())
            .map(|i| text[i..].to_string())
            .unwrap_or_default();
        std::fs::write(self.dir.join("klp/peers.list"), format!("{local}{managed}")).unwrap();
    }
}

fn kos_klp_marker() -> &'static str {
    "# ==== federation-approved peers"
}

fn ids(v: &Value, key: &str) -> Vec<String> {
    let mut out: Vec<String> = v[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

async fn wait_until(what: &str, f: impl AsyncFnMut() -> bool) {
    kos_tests::fed::wait_until(what, WAIT, f).await;
}

fn random_peer() -> String {
    kos_node::identity::Identity::generate()
        .unwrap()
        .id()
        .to_string()
}

fn line(id: &str, p2p: &str, name: &str) -> String {
    format!("{id} {p2p} # {name}\n")
}

/// Starts `n` nodes that list each other by hand; `admin_on` hold an admin key each.
async fn mesh(root: &Path, n: usize, admin_on: &[usize]) -> (Vec<Node>, Vec<String>) {
    // Admin keys first: their ids go into every node's settings.
    let mut admins = Vec::new();
    let mut dirs: Vec<PathBuf> = Vec::new();
    for i in 0..n {
        let d = root.join(format!("node-{i}"));
        std::fs::create_dir_all(&d).unwrap();
        if admin_on.contains(&i) {
            admins.push(admin_key(&d));
        }
        dirs.push(d);
    }
    let members: Vec<Member> = (0..n)
        .map(|i| {
            let name = format!("node-{i}");
            let (dir, id) = layout(root, &name, &admins);
            Member {
                dir,
                id,
                label: Some(name),
            }
        })
        .collect();
    let started = kos_tests::fed::start_listed(&members).await.unwrap();
    let nodes: Vec<Node> = members
        .into_iter()
        .zip(started)
        .map(|(m, (node, p2p))| wrap(node, m.dir, m.id, p2p))
        .collect();
    for i in 0..n {
        let mut others: Vec<String> = nodes
            .iter()
            .filter(|m| m.id != nodes[i].id)
            .map(|m| m.id.clone())
            .collect();
        others.sort();
        wait_until("full admission", async || {
            nodes[i].admitted().await == others
        })
        .await;
    }
    (nodes, admins)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_reaches_five_nodes_a_new_node_joins_and_revocation_cuts_it_off_everywhere() {
    let root = tempfile::tempdir().unwrap();
    let (mut nodes, admins) = mesh(root.path(), 5, &[0]).await;
    // The admin approves the founding members in the federation log, so any node that
    // learns the log knows them.
    for (i, n) in nodes.iter().enumerate() {
        let (s, b) = nodes[0]
            .post(
                &format!("/api/peers/{}/approve", n.id),
                json!({"addrs": [n.p2p], "label": format!("node-{i}")}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }
    let mut members: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    members.sort();
    for n in &nodes {
        wait_until("members approved everywhere", async || {
            ids(&n.fed().await, "approved") == members
        })
        .await;
    }

    // The newcomer knows only node 1 (a bootstrap address) and the federation's admin.
    let (x_dir, x_id) = layout(root.path(), "newcomer", &admins);
    std::fs::write(
        x_dir.join("klp/peers.list"),
        line(&nodes[1].id, &nodes[1].p2p, "bootstrap"),
    )
    .unwrap();
    let mut x = boot(x_dir, x_id.clone()).await;
    let x_p2p = x.p2p.clone();
    // Not approved yet: nobody admits it. Proof: its bootstrap peer refuses it.
    wait_until("the bootstrap peer refuses the newcomer", async || {
        let v = x.get("/api/peers").await;
        v["peers"].as_array().unwrap().iter().any(|p| {
            p["id"] == nodes[1].id.as_str()
                && p["last_refusal"]["reason"] == "not_approved"
                && p["last_refusal"]["by"] == "peer"
        })
    })
    .await;
    assert!(x.admitted().await.is_empty());

    // An admin on node 0 approves it once.
    let (status, body) = nodes[0]
        .post(
            &format!("/api/peers/{x_id}/approve"),
            json!({"addrs": [x_p2p], "label": "newcomer"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // Every node learns the approval and writes it into its peers.list's managed section,
    // leaving the operator's section alone.
    let mut with_x = members.clone();
    with_x.push(x_id.clone());
    with_x.sort();
    for n in &nodes {
        wait_until("approval everywhere", async || {
            ids(&n.fed().await, "approved") == with_x && n.peers_list().contains(&x_id)
        })
        .await;
        let text = n.peers_list();
        let (local, managed) = text.split_at(text.find(kos_klp_marker()).unwrap());
        assert!(managed.contains(&x_id), "{text}");
        assert!(!local.contains(&x_id), "{text}");
        assert!(local.contains(&nodes[0].id), "{text}");
    }
    // The newcomer is admitted by every node, and learned the whole log from its bootstrap.
    let mut all: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    all.sort();
    wait_until("newcomer admitted mesh-wide", async || {
        x.admitted().await == all
    })
    .await;
    for n in &nodes {
        wait_until("each node admits the newcomer", async || {
            n.admitted().await.contains(&x_id)
        })
        .await;
    }
    wait_until("newcomer has the log", async || {
        ids(&x.fed().await, "approved") == with_x
    })
    .await;

    // Revocation: every node disconnects it.
    let (status, body) = nodes[3]
        .post(
            &format!("/api/peers/{x_id}/revoke"),
            json!({"reason": "left the federation"}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "node 3 holds no admin key: {body}"
    );
    assert_eq!(body["type"], "urn:kos:problem:no-admin-key");
    let (status, _) = nodes[0]
        .post(
            &format!("/api/peers/{x_id}/revoke"),
            json!({"reason": "left the federation"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    for n in &nodes {
        wait_until("revoked and disconnected everywhere", async || {
            let f = n.fed().await;
            ids(&f, "revoked") == vec![x_id.clone()]
                && ids(&f, "approved") == members
                && !n.admitted().await.contains(&x_id)
        })
        .await;
        wait_until("revocation in peers.list", async || {
            n.peers_list()
                .contains(&format!("# revoked {x_id}: left the federation"))
        })
        .await;
    }
    // The log says who did what.
    let log = nodes[2].get("/api/federation/log").await;
    let kinds: Vec<&str> = log["ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.len(), 7);
    assert_eq!(kinds[5..], ["approve_peer", "revoke_peer"]);
    assert!(
        log["ops"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["author"] == admins[0].as_str() && o["validity"] == "valid")
    );
    // Events for the audit trail.
    let events = nodes[4].get("/api/events?limit=50").await;
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"peer_approved"), "{kinds:?}");
    assert!(kinds.contains(&"peer_revoked"), "{kinds:?}");

    x.stop().await;
    for n in &mut nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_heals_to_one_state_concurrent_revoke_wins_and_a_stopped_node_catches_up() {
    let root = tempfile::tempdir().unwrap();
    // Admins on node 0 and node 2.
    let (mut nodes, _) = mesh(root.path(), 3, &[0, 2]).await;
    let (p1, p2, p3, p4) = (random_peer(), random_peer(), random_peer(), random_peer());
    let (s, _) = nodes[0]
        .post(&format!("/api/peers/{p3}/approve"), json!({}))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    for n in &nodes {
        wait_until("p3 approved", async || {
            ids(&n.fed().await, "approved") == vec![p3.clone()]
        })
        .await;
    }

    // Partition node 2 off: local blocks on both sides.
    let full: Vec<String> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| line(&n.id, &n.p2p, &format!("node-{i}")))
        .collect();
    let c = &nodes[2];
    for n in &nodes[..2] {
        n.set_local_peers(&format!("{}{}!{}\n", full[0], full[1], c.id));
    }
    c.set_local_peers(&format!("{}!{}\n!{}\n", full[2], nodes[0].id, nodes[1].id));
    for n in &nodes {
        wait_until("partitioned", async || {
            let a = n.admitted().await;
            if n.id == c.id {
                a.is_empty()
            } else {
                !a.contains(&c.id)
            }
        })
        .await;
    }
    // Both sides change things: re-approval on one side is concurrent with the revocation
    // on the other.
    for (n, path, body) in [
        (0, format!("/api/peers/{p1}/approve"), json!({})),
        (
            0,
            format!("/api/peers/{p3}/approve"),
            json!({"label": "again"}),
        ),
        (2, format!("/api/peers/{p2}/approve"), json!({})),
        (
            2,
            format!("/api/peers/{p3}/revoke"),
            json!({"reason": "compromised"}),
        ),
    ] {
        let (s, b) = nodes[n].post(&path, body).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }
    wait_until("majority side", async || {
        ids(&nodes[1].fed().await, "approved") == {
            let mut v = vec![p1.clone(), p3.clone()];
            v.sort();
            v
        }
    })
    .await;
    assert_eq!(ids(&nodes[2].fed().await, "approved"), vec![p2.clone()]);
    assert_eq!(ids(&nodes[2].fed().await, "revoked"), vec![p3.clone()]);

    // Heal.
    for n in &nodes {
        n.set_local_peers(&full.concat());
    }
    let mut expected = vec![p1.clone(), p2.clone()];
    expected.sort();
    for n in &nodes {
        wait_until("converged", async || {
            let f = n.fed().await;
            ids(&f, "approved") == expected && ids(&f, "revoked") == vec![p3.clone()]
        })
        .await;
    }
    let heads: Vec<Value> = {
        let mut h = Vec::new();
        for n in &nodes {
            h.push(n.fed().await["heads"].clone());
        }
        h
    };
    assert!(heads.windows(2).all(|w| w[0] == w[1]), "{heads:?}");

    // Stop node 1, change things, start it again: it catches up, from its own database
    // first (isolated), then from its peers.
    let ops_before = nodes[1].fed().await["ops"].as_u64().unwrap();
    nodes[1].stop().await;
    let (s, _) = nodes[2]
        .post(&format!("/api/peers/{p4}/approve"), json!({}))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (dir, id) = (nodes[1].dir.clone(), nodes[1].id.clone());
    nodes[1].set_local_peers(&format!("{}!{}\n!{}\n", full[1], nodes[0].id, nodes[2].id));
    // Back on a new KLP port (port 0 again): the others' peers.list still has the old one,
    // which is fine: once unblocked, node 1 dials them (it has their addresses).
    nodes[1] = boot(dir, id).await;
    wait_until("log restored from the database", async || {
        nodes[1].fed().await["ops"].as_u64() == Some(ops_before)
    })
    .await;
    assert!(!ids(&nodes[1].fed().await, "approved").contains(&p4));
    nodes[1].set_local_peers(&full.concat());
    expected.push(p4.clone());
    expected.sort();
    wait_until("caught up after restart", async || {
        ids(&nodes[1].fed().await, "approved") == expected
    })
    .await;
    for n in &mut nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_acked_applied_or_nacked_with_the_reason_and_rolled_back() {
    let root = tempfile::tempdir().unwrap();
    let (mut nodes, admins) = mesh(root.path(), 3, &[0]).await;
    let actor = format!("federation:{}", admins[0]);
    // The node's config history entries made by federation snapshots, oldest first, as
    // (federation snapshot id, op); each checked for its action, actor and scope.
    let fed_history = async |n: &Node| -> Vec<(String, String)> {
        let h = n.get("/api/config/history?limit=1000").await;
        let mut out: Vec<(String, String)> = h["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| !e["federation"].is_null())
            .map(|e| {
                assert_eq!(e["action"], "federation", "{e}");
                assert_eq!(e["actor"], actor.as_str(), "{e}");
                assert_eq!(e["federation"]["scope"], "agents", "{e}");
                (
                    e["federation"]["snapshot_id"].as_str().unwrap().to_string(),
                    e["federation"]["op"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        out.reverse();
        out
    };
    // The newest history entry, and the node's current effective snapshot id.
    let head = async |n: &Node| -> (Value, Value) {
        let h = n.get("/api/config/history?limit=1").await;
        let p = n.get("/api/config/profile").await;
        (h["entries"][0].clone(), p["snapshot_id"].clone())
    };
    let max_tasks = async |n: &Node| -> Value {
        n.get("/api/config/profile").await["effective"]["agents"]["translatorAgent"]
            ["max_concurrent_tasks"]
            .clone()
    };
    // A snapshot outside its scope is refused by the publisher, naming the key.
    let (s, b) = nodes[0]
        .post(
            "/api/config/publish",
            json!({"scope": "agents", "content": "database:\n  url: postgres://x\n"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert!(
        b.to_string().contains("outside the federation scope"),
        "{b}"
    );

    // 1: valid everywhere: the federation offers two services.
    let v1 = "services: [translatorAgent, schedulerAgent]\nagents:\n  translatorAgent:\n    max_concurrent_tasks: 7\n";
    let (s, b) = nodes[0]
        .post(
            "/api/config/publish",
            json!({"scope": "agents", "content": v1}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let snap1 = b["snapshot_id"].as_str().unwrap().to_string();
    let op1 = b["op"].as_str().unwrap().to_string();
    for n in &nodes {
        wait_until("v1 applied", async || max_tasks(n).await == json!(7)).await;
    }
    // Every node recorded it in its config history (written before it became active).
    let mut v1_ids = Vec::new();
    for n in &nodes {
        assert_eq!(fed_history(n).await, [(snap1.clone(), op1.clone())]);
        let (entry, current) = head(n).await;
        assert_eq!(entry["action"], "federation", "{entry}");
        assert_eq!(entry["id"], current, "{entry}");
        v1_ids.push(current);
    }
    let all_acked = async |n: &Node, snap: &str, want: &[(&str, &str)]| -> bool {
        let st = n.get("/api/config/status").await;
        let Some(scope) = st["federation"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["scope"] == "agents")
        else {
            return false;
        };
        scope["snapshot_id"] == snap
            && want.iter().all(|(peer, status)| {
                scope["peers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["peer"] == *peer && p["status"] == *status)
            })
    };
    let ids3: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    wait_until("v1 ACKed by all, seen on the publisher", async || {
        all_acked(
            &nodes[0],
            &snap1,
            &[(&ids3[0], "ack"), (&ids3[1], "ack"), (&ids3[2], "ack")],
        )
        .await
    })
    .await;

    // Node 2's operator disables the moderator locally (no longer offered, so valid).
    std::fs::write(
        nodes[2].dir.join("agents/moderatorAgent.yaml"),
        "enabled: false\n",
    )
    .unwrap();
    let local_before =
        std::fs::read_to_string(nodes[2].dir.join("agents/moderatorAgent.yaml")).unwrap();
    // 2: offers the moderator again, which node 2 disabled: NACK there, with the reason,
    // and node 2 keeps its last good configuration.
    let v2 = "services: [translatorAgent, schedulerAgent, moderatorAgent]\nagents:\n  translatorAgent:\n    max_concurrent_tasks: 8\n";
    let (s, b) = nodes[0]
        .post(
            "/api/config/publish",
            json!({"scope": "agents", "content": v2}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let snap2 = b["snapshot_id"].as_str().unwrap().to_string();
    let op2 = b["op"].as_str().unwrap().to_string();
    wait_until("v2 ACK/NACK on the publisher", async || {
        all_acked(
            &nodes[0],
            &snap2,
            &[(&ids3[0], "ack"), (&ids3[1], "ack"), (&ids3[2], "nack")],
        )
        .await
    })
    .await;
    let st = nodes[0].get("/api/config/status").await;
    let nack = st["federation"][0]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["peer"] == ids3[2].as_str())
        .unwrap()
        .clone();
    assert!(
        nack["errors"]
            .to_string()
            .contains("agents.moderatorAgent.enabled` is false"),
        "{nack}"
    );
    assert_eq!(max_tasks(&nodes[0]).await, json!(8));
    assert_eq!(max_tasks(&nodes[1]).await, json!(8));
    assert_eq!(max_tasks(&nodes[2]).await, json!(7));
    // Recorded where applied; the NACKed snapshot added no entry on node 2.
    for n in &nodes[..2] {
        assert_eq!(
            fed_history(n).await,
            [(snap1.clone(), op1.clone()), (snap2.clone(), op2.clone())]
        );
    }
    assert_eq!(fed_history(&nodes[2]).await, [(snap1.clone(), op1.clone())]);
    assert_eq!(head(&nodes[2]).await.0["id"], v1_ids[2]);
    assert_eq!(
        std::fs::read_to_string(nodes[2].dir.join("agents/moderatorAgent.yaml")).unwrap(),
        local_before,
        "local files are never rewritten"
    );
    // The diff API says where a value came from.
    let d = nodes[1]
        .get("/api/config/sources?path=agents.translatorAgent.max_concurrent_tasks")
        .await;
    assert!(
        d["source"]
            .as_str()
            .unwrap()
            .starts_with("federation/config/agents.yaml"),
        "{d}"
    );

    // Node 2's operator re-enables the moderator: the refused snapshot is tried again and
    // now applies.
    std::fs::write(
        nodes[2].dir.join("agents/moderatorAgent.yaml"),
        "enabled: true\n",
    )
    .unwrap();
    wait_until("NACK turns into ACK once fixed locally", async || {
        all_acked(
            &nodes[0],
            &snap2,
            &[(&ids3[0], "ack"), (&ids3[1], "ack"), (&ids3[2], "ack")],
        )
        .await
    })
    .await;
    assert_eq!(max_tasks(&nodes[2]).await, json!(8));
    assert_eq!(
        fed_history(&nodes[2]).await,
        [(snap1.clone(), op1.clone()), (snap2.clone(), op2.clone())]
    );

    // Rollback = a new op pointing at the earlier snapshot.
    let (s, b) = nodes[0]
        .post(
            "/api/config/publish/rollback",
            json!({"scope": "agents", "snapshot_id": snap1}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let op3 = b["op"].as_str().unwrap().to_string();
    assert_ne!(op3, op1);
    for n in &nodes {
        wait_until("rolled back", async || max_tasks(n).await == json!(7)).await;
    }
    // The rollback is recorded too, on every node.
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(
            fed_history(n).await,
            [
                (snap1.clone(), op1.clone()),
                (snap2.clone(), op2.clone()),
                (snap1.clone(), op3.clone())
            ]
        );
        let (entry, current) = head(n).await;
        assert_eq!(entry["federation"]["op"], op3.as_str(), "{entry}");
        assert_eq!(entry["id"], current, "{entry}");
        if i < 2 {
            // Nothing else changed there: back to the effective configuration of v1.
            assert_eq!(current, v1_ids[i], "{entry}");
        }
    }
    wait_until("rollback ACKed by all", async || {
        all_acked(
            &nodes[0],
            &snap1,
            &[(&ids3[0], "ack"), (&ids3[1], "ack"), (&ids3[2], "ack")],
        )
        .await
    })
    .await;
    for n in &mut nodes {
        n.stop().await;
    }
}

/// A raw KLP peer that every node lists, but that is no admin: it gossips forged ops.
async fn rogue(nodes: &[Node]) -> (kos_klp::Klp, String, ed25519_dalek::SigningKey) {
    let key = ed25519_dalek::SigningKey::from_bytes(&[42; 32]);
    let id = kos_klp::NodeId::from_public_key(key.verifying_key());
    let mut cfg = kos_klp::KlpConfig::new(
        key.to_bytes(),
        vec![kos_tests::fed::KLP_LISTEN.to_string()],
        kos_klp::ManifestInfo {
            name: "rogue".into(),
            version: "0".into(),
            profile: "federation_node".into(),
            services: vec![],
        },
    );
    cfg.approved = nodes
        .iter()
        .map(|n| kos_klp::PeerEntry {
            id: n.id.parse().unwrap(),
            addrs: vec![n.p2p.clone()],
            label: None,
            line: 0,
        })
        .collect();
    let (klp, _task) = kos_klp::Klp::start(cfg).await.unwrap();
    (klp, id.to_string(), key)
}

async fn metric(n: &Node, outcome: &str) -> u64 {
    let text = n
        .http
        .get(format!("{}/metrics", n.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("kos_fedlog_ops_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_ops_are_refused_by_every_node_and_their_sender_is_cut_off() {
    use kos_map_protocol::fedlog::{Op, OpBody, OpHash, UnsignedOp};
    let root = tempfile::tempdir().unwrap();
    let (mut nodes, admins) = mesh(root.path(), 3, &[0]).await;
    let admin =
        kos_node::fedsync::load_admin_key(&nodes[0].dir.join(kos_node::fedsync::ADMIN_KEY_FILE))
            .unwrap();
    assert_eq!(
        kos_klp::NodeId::from_public_key(admin.verifying_key()).to_string(),
        admins[0]
    );
    // Every node lists the rogue by hand, so it is admitted and its gossip is read.
    let (klp, rogue_id, rogue_key) = rogue(&nodes).await;
    let rogue_p2p = klp.listen_addrs().await.unwrap()[0].clone();
    for n in &nodes {
        let text = n.peers_list();
        std::fs::write(
            n.dir.join("klp/peers.list"),
            format!("{}{}", line(&rogue_id, &rogue_p2p, "rogue"), text),
        )
        .unwrap();
    }
    for n in &nodes {
        wait_until("rogue admitted", async || {
            n.admitted().await.contains(&rogue_id)
        })
        .await;
    }
    // Let gossipsub exchange subscriptions.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let gossip = async |op: &Op| {
        let mut msg = vec![1u8];
        msg.extend_from_slice(&op.encode());
        klp.publish("", msg).await.unwrap();
    };
    let rogue_node: kos_klp::NodeId = rogue_id.parse().unwrap();
    let (p, q) = (random_peer(), random_peer());
    let unsigned =
        |author: kos_klp::NodeId, lamport: u64, parents: Vec<OpHash>, peer: &str| UnsignedOp {
            author,
            seq: 1,
            lamport,
            parents,
            timestamp_ms: 1,
            body: OpBody::ApprovePeer {
                peer: peer.parse().unwrap(),
                addrs: vec![],
                label: None,
            },
        };
    let admin_id: kos_klp::NodeId = admins[0].parse().unwrap();

    // A non-admin signer.
    let forged = Op::sign(unsigned(rogue_node, 1, vec![], &p), &rogue_key).unwrap();
    gossip(&forged).await;
    for n in &nodes {
        wait_until("not_admin refused", async || {
            metric(n, "refused:not_admin").await == 1
        })
        .await;
    }
    // Tampered bytes: an admin's op whose body was changed after signing.
    let mut tampered = Op::sign(unsigned(admin_id, 1, vec![], &p), &admin).unwrap();
    tampered.unsigned.body = OpBody::ApprovePeer {
        peer: q.parse().unwrap(),
        addrs: vec![],
        label: None,
    };
    gossip(&tampered).await;
    for n in &nodes {
        wait_until("bad_signature refused", async || {
            metric(n, "refused:bad_signature").await == 1
        })
        .await;
    }
    // A bad parent: held while its parent is looked for, never applied.
    let orphan = Op::sign(unsigned(admin_id, 2, vec![OpHash([7; 32])], &q), &admin).unwrap();
    gossip(&orphan).await;
    for n in &nodes {
        wait_until("orphan pending", async || n.fed().await["pending"] == 1).await;
    }
    // A valid admin op relayed by anyone is accepted...
    let valid = Op::sign(unsigned(admin_id, 1, vec![], &p), &admin).unwrap();
    gossip(&valid).await;
    for n in &nodes {
        wait_until("valid op accepted", async || {
            ids(&n.fed().await, "approved") == vec![p.clone()]
        })
        .await;
    }
    // ...and after a revocation, replaying it changes nothing.
    let (s, b) = nodes[0]
        .post(&format!("/api/peers/{p}/revoke"), json!({"reason": "test"}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    for n in &nodes {
        wait_until("revoked", async || {
            ids(&n.fed().await, "revoked") == vec![p.clone()]
        })
        .await;
    }
    let known_before: Vec<u64> = {
        let mut v = Vec::new();
        for n in &nodes {
            v.push(metric(n, "known").await);
        }
        v
    };
    // The same op again. (Identical bytes would be dropped by gossipsub as a duplicate
    // message; a co-signature changes the bytes but not the op's identity, its hash.)
    let mut replay = valid.clone();
    replay.cosign(&rogue_key);
    gossip(&replay).await;
    for (i, n) in nodes.iter().enumerate() {
        wait_until("replay seen", async || {
            metric(n, "known").await > known_before[i]
        })
        .await;
        let f = n.fed().await;
        assert_eq!(ids(&f, "revoked"), vec![p.clone()]);
        assert!(ids(&f, "approved").is_empty());
        assert_eq!(f["ops"], 2, "{f}");
        let log = n.get("/api/federation/log").await;
        let refused: Vec<String> = log["ops"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o["kind"] == "refused")
            .map(|o| o["validity"].as_str().unwrap().to_string())
            .collect();
        assert!(
            refused.iter().any(|r| r.contains("is not an admin")),
            "{refused:?}"
        );
        assert!(
            refused.iter().any(|r| r.contains("does not verify")),
            "{refused:?}"
        );
    }
    // A third invalid op: every node cuts the sender off.
    let forged2 = Op::sign(unsigned(rogue_node, 1, vec![], &q), &rogue_key).unwrap();
    gossip(&forged2).await;
    for n in &nodes {
        wait_until("rogue cut off", async || {
            let v = n.get(&format!("/api/peers/{rogue_id}")).await;
            v["connected"] == false
        })
        .await;
        assert_eq!(metric(n, "refused:not_admin").await, 2);
    }
    let _ = klp.shutdown().await;
    for n in &mut nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_larger_than_one_sync_page_converges_after_a_partition() {
    let root = tempfile::tempdir().unwrap();
    let (mut nodes, _) = mesh(root.path(), 2, &[0, 1]).await;
    let full: Vec<String> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| line(&n.id, &n.p2p, &format!("node-{i}")))
        .collect();
    let publish = async |n: &Node, i: usize| {
        let blob = format!("{i}").repeat(120 * 1024);
        let content =
            format!("agents:\n  translatorAgent:\n    settings:\n      blob: \"{blob}\"\n");
        let (s, b) = n
            .post(
                "/api/config/publish",
                json!({"scope": "agents", "content": content}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
    };
    // ~1 MiB of snapshots both nodes hold: more than one 768 KiB sync page.
    for i in 0..8 {
        publish(&nodes[0], i).await;
    }
    wait_until("both hold 8 ops", async || nodes[1].fed().await["ops"] == 8).await;
    nodes[0].set_local_peers(&format!("{}!{}\n", full[0], nodes[1].id));
    nodes[1].set_local_peers(&format!("{}!{}\n", full[1], nodes[0].id));
    for n in &nodes {
        wait_until("partitioned", async || n.admitted().await.is_empty()).await;
    }
    // One new op on each side: neither knows the other's heads, so the first page of each
    // answer is ops the asker already holds.
    publish(&nodes[0], 8).await;
    let p = random_peer();
    let (s, _) = nodes[1]
        .post(&format!("/api/peers/{p}/approve"), json!({}))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    for n in &nodes {
        n.set_local_peers(&full.concat());
    }
    for n in &nodes {
        wait_until("converged", async || {
            let f = n.fed().await;
            f["ops"] == 10 && ids(&f, "approved") == vec![p.clone()]
        })
        .await;
    }
    for n in &mut nodes {
        n.stop().await;
    }
}
