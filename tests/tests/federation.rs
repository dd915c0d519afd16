//! Nodes with KLP, in-process on 127.0.0.1: the peers API, peers.list hot reload, metrics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use kos_config::ProfileKind;
use kos_node::daemon::{NodeOptions, RunningNode, start};
use kos_tests::fed::{Member, start_listed, wait_until};
use reqwest::StatusCode;
use serde_json::{Value, json};

struct FedNode {
    node: RunningNode,
    /// A client that sends an admin token minted with this node's token key.
    http: reqwest::Client,
    dir: tempfile::TempDir,
    base: String,
    id: String,
    p2p: String,
}

/// Lays out a federation_node on SQLite with KLP on loopback port 0.
fn layout(name: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let id = kos_tests::fed::layout(dir.path(), name, "").unwrap();
    (dir, id)
}

/// Starts the laid-out nodes so that each lists every other (see
/// [`kos_tests::fed::start_listed`]), labelled `node-<i+1>` in peers.list if `labels`.
async fn start_mesh(laid: Vec<(tempfile::TempDir, String)>, labels: bool) -> Vec<FedNode> {
    let members: Vec<Member> = laid
        .iter()
        .enumerate()
        .map(|(i, (dir, id))| Member {
            dir: dir.path().to_path_buf(),
            id: id.clone(),
            label: labels.then(|| format!("node-{}", i + 1)),
        })
        .collect();
    let started = start_listed(&members).await.unwrap();
    laid.into_iter()
        .zip(started)
        .map(|((dir, id), (node, p2p))| wrap(node, dir, id, p2p))
        .collect()
}

async fn boot(dir: tempfile::TempDir) -> FedNode {
    let node = start(NodeOptions::local(dir.path().to_path_buf()))
        .await
        .unwrap();
    wrap(node, dir, String::new(), String::new())
}

fn wrap(node: RunningNode, dir: tempfile::TempDir, id: String, p2p: String) -> FedNode {
    let base = format!("http://{}", node.addr);
    let http = kos_tests::fed::admin_client(&node, dir.path()).unwrap();
    FedNode {
        node,
        http,
        dir,
        base,
        id,
        p2p,
    }
}

async fn get(http: &reqwest::Client, url: &str) -> Value {
    let r = http.get(url).send().await.unwrap();
    assert!(r.status().is_success(), "GET {url}: {}", r.status());
    r.json().await.unwrap()
}

async fn metrics_text(n: &FedNode) -> String {
    n.http
        .get(format!("{}/metrics", n.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn admitted_ids(peers: &Value) -> Vec<String> {
    let mut v: Vec<String> = peers["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["state"] == "admitted" && p["connected"] == true)
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_federate_and_peers_list_edits_apply_while_running() {
    let laid: Vec<_> = (1..=3).map(|i| layout(&format!("node-{i}"))).collect();
    let nodes = start_mesh(laid, true).await;
    for n in &nodes {
        let url = format!("{}/api/peers", n.base);
        let others: Vec<String> = {
            let mut o: Vec<String> = nodes
                .iter()
                .filter(|m| m.id != n.id)
                .map(|m| m.id.clone())
                .collect();
            o.sort();
            o
        };
        wait_until("full admission", Duration::from_secs(20), async || {
            admitted_ids(&get(&n.http, &url).await) == others
        })
        .await;
    }

    let a = &nodes[0];
    let peers = get(&a.http, &format!("{}/api/peers", a.base)).await;
    assert_eq!(peers["enabled"], true);
    assert_eq!(peers["local_id"], a.id.as_str());
    assert_eq!(peers["listen"], json!([a.p2p]));
    let one: Value = get(&a.http, &format!("{}/api/peers/{}", a.base, nodes[1].id)).await;
    assert_eq!(one["state"], "admitted");
    assert_eq!(one["protocol_version"], 1);
    assert_eq!(one["name"], "node-2");
    assert_eq!(one["label"], "node-2");
    assert!(one["last_seen_ms"].as_u64().unwrap() > 0);
    assert_eq!(
        a.http
            .get(format!("{}/api/peers/nonsense", a.base))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::BAD_REQUEST
    );
    let unknown = kos_node::identity::Identity::generate().unwrap().id();
    assert_eq!(
        a.http
            .get(format!("{}/api/peers/{unknown}", a.base))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    // federation_node requires tokens: an anonymous caller is refused.
    let anonymous = reqwest::Client::new();
    let r = anonymous
        .post(format!("{}/api/peers/dial", a.base))
        .json(&json!({"addr": "/ip4/127.0.0.1/tcp/1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer realm=\"kos\"")
    );
    let r = a
        .http
        .post(format!("{}/api/peers/dial", a.base))
        .json(&json!({"addr": "not a multiaddr"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.headers()["content-type"], "application/problem+json");

    let metrics = metrics_text(a).await;
    assert!(
        metrics.contains("kos_klp_handshakes_total{outcome=\"admitted\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("kos_klp_connections "), "{metrics}");

    // Remove node 3 from node 1's peers.list by hand: node 1 disconnects it, without a restart.
    let path = a.dir.path().join("klp/peers.list");
    let text = std::fs::read_to_string(&path).unwrap();
    let kept: String = text
        .lines()
        .filter(|l| !l.starts_with(&nodes[2].id))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&path, kept).unwrap();
    let url3 = format!("{}/api/peers/{}", a.base, nodes[2].id);
    wait_until(
        "node 3 disconnected from node 1",
        Duration::from_secs(10),
        async || {
            let p = get(&a.http, &url3).await;
            p["connected"] == false && p["approved"] == false
        },
    )
    .await;
    // A broken edit is refused and the running list kept. Proof: the node counts the
    // invalid reload, and the peer is still admitted after it.
    std::fs::write(&path, "this is not a peer id\n").unwrap();
    wait_until(
        "the invalid reload counted",
        Duration::from_secs(20),
        async || {
            metrics_text(a)
                .await
                .contains("kos_peers_list_reloads_total{outcome=\"invalid\"} 1")
        },
    )
    .await;
    assert_eq!(
        get(&a.http, &format!("{}/api/peers/{}", a.base, nodes[1].id)).await["state"],
        "admitted"
    );

    for n in nodes {
        n.node.stop().await.unwrap();
    }
}

#[tokio::test]
async fn standalone_has_no_swarm() {
    let dir = tempfile::tempdir().unwrap();
    kos_config::layout::init_layout(dir.path(), ProfileKind::Standalone).unwrap();
    let n = boot(dir).await;
    let peers = get(&n.http, &format!("{}/api/peers", n.base)).await;
    assert_eq!(peers, json!({"enabled": false, "peers": []}));
    let r = reqwest::Client::new()
        .post(format!("{}/api/peers/dial", n.base))
        .json(&json!({"addr": "/ip4/127.0.0.1/tcp/1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert!(n.node.state.klp.is_none());
    n.node.stop().await.unwrap();
}

#[tokio::test]
async fn an_invalid_peers_list_stops_start_before_any_port_is_bound() {
    let (dir, _) = layout("bad");
    // The API and KLP are both configured on a port this test holds (bound and listening):
    // a node that bound either before reading peers.list would fail with "address in use"
    // instead of naming the bad line. The port is never released, so nothing else can be
    // listening there either.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let settings = dir.path().join("klp/klp_settings.yaml");
    let text = std::fs::read_to_string(&settings).unwrap().replace(
        kos_tests::fed::KLP_LISTEN,
        &format!("/ip4/127.0.0.1/tcp/{port}"),
    );
    std::fs::write(&settings, text).unwrap();
    let opts = NodeOptions {
        listen_override: Some(held.local_addr().unwrap()),
        ..NodeOptions::local(dir.path().to_path_buf())
    };
    std::fs::write(
        dir.path().join("klp/peers.list"),
        "# ok\n12D3KooWnot-a-real-id /ip4/127.0.0.1/tcp/1\n",
    )
    .unwrap();
    let bind_failed = |msg: &str| {
        msg.contains(&format!("cannot listen on /ip4/127.0.0.1/tcp/{port}"))
            || msg.contains("in use")
    };
    let err = start(opts.clone()).await.unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("klp/peers.list:2:"), "{msg}");
    assert!(!bind_failed(&msg), "{msg}");
    // The controls: with a valid list the same start binds, and fails on the held port;
    // KLP first, then (KLP moved to port 0) the API.
    std::fs::write(dir.path().join("klp/peers.list"), "# ok\n").unwrap();
    let msg = format!("{:#}", start(opts.clone()).await.unwrap_err());
    assert!(bind_failed(&msg), "{msg}");
    std::fs::write(
        &settings,
        std::fs::read_to_string(&settings)
            .unwrap()
            .replace(&format!("/tcp/{port}"), "/tcp/0"),
    )
    .unwrap();
    let msg = format!("{:#}", start(opts).await.unwrap_err());
    assert!(msg.contains("in use"), "{msg}");
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_call_each_other_with_the_role_the_callee_grants() {
    let laid: Vec<_> = ["a", "b", "c", "d"].iter().map(|n| layout(n)).collect();
    // b grants a the viewer role for calls over KLP, d the admin role; c gets nothing (no
    // default).
    let a_id = laid[0].1.clone();
    let d_id = laid[3].1.clone();
    let b_settings = laid[1].0.path().join("klp/klp_settings.yaml");
    let mut s = std::fs::read_to_string(&b_settings).unwrap();
    s.push_str(&format!(
        "remote_roles:\n  peers:\n    {a_id}: viewer\n    {d_id}: admin\n"
    ));
    std::fs::write(&b_settings, s).unwrap();
    let nodes = start_mesh(laid, false).await;
    let (a, b, c, d) = (&nodes[0], &nodes[1], &nodes[2], &nodes[3]);
    for n in [a, c, d] {
        let url = format!("{}/api/peers/{}", n.base, b.id);
        wait_until("admitted to b", Duration::from_secs(20), async || {
            let r = n.http.get(&url).send().await.unwrap();
            r.status().is_success() && r.json::<Value>().await.unwrap()["state"] == "admitted"
        })
        .await;
    }
    let call = |n: &FedNode, body: Value| {
        let req = n
            .http
            .post(format!("{}/api/peers/{}/call", n.base, b.id))
            .json(&body);
        async move { req.send().await.unwrap() }
    };

    // a reads b's status as viewer.
    let r = call(a, json!({"method": "GET", "path": "/api/config/status"})).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["body"]["node_id"], b.id.as_str());
    // ... but cannot change b's configuration.
    let hist_before = get(&b.http, &format!("{}/api/config/history", b.base)).await["entries"]
        .as_array()
        .unwrap()
        .len();
    let v: Value = call(a, json!({"method": "POST", "path": "/api/config/apply", "body": "profile: federation_node\n"})).await.json().await.unwrap();
    assert_eq!(v["status"], 403, "{v}");
    assert!(
        v["body"]["detail"]
            .as_str()
            .unwrap()
            .contains("grants your node `viewer`"),
        "{v}"
    );
    assert_eq!(
        get(&b.http, &format!("{}/api/config/history", b.base)).await["entries"]
            .as_array()
            .unwrap()
            .len(),
        hist_before
    );
    // c is admitted but b grants it no role.
    let v: Value = call(c, json!({"method": "GET", "path": "/api/config/status"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["status"], 403, "{v}");
    // Even an admin peer cannot make b sign federation ops or call out as b.
    for path in [
        format!("/api/peers/{}/approve", a.id),
        format!("/api/peers/{}/call", a.id),
        "/api/config/publish".to_string(),
    ] {
        let v: Value = call(d, json!({"method": "POST", "path": path, "body": {}}))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(v["status"], 403, "{path}: {v}");
        assert_eq!(v["body"]["type"], "urn:kos:problem:local-only", "{v}");
    }
    let v: Value = call(d, json!({"method": "GET", "path": "/api/config/status"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["status"], 200, "{v}");
    // A peer that is not connected cannot be called.
    let stranger = kos_node::identity::Identity::generate().unwrap().id();
    let r = a
        .http
        .post(format!("{}/api/peers/{stranger}/call", a.base))
        .json(&json!({"method": "GET", "path": "/healthz"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    // Calling out acts with the node's identity: admin only.
    let viewer = kos_node::auth::local::mint_for_dir(
        a.dir.path(),
        &a.node.state.config.current().config,
        &a.id,
        kos_node::auth::Role::Operator,
        Duration::from_secs(60),
    )
    .unwrap()
    .unwrap();
    let r = reqwest::Client::new()
        .post(format!("{}/api/peers/{}/call", a.base, b.id))
        .bearer_auth(viewer)
        .json(&json!({"method": "GET", "path": "/api/config/status"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    for n in nodes {
        n.node.stop().await.unwrap();
    }
}
