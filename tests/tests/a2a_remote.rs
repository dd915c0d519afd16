//! A2A across the federation: node A's callers use node B's `echo` agent through
//! `/a2a/peers/<B>/echo/...` on A, carried over KLP (two in-process nodes on loopback, port 0,
//! admitted to each other by `peers.list`; B grants A the `agent` role in `remote_roles`).
//! Cards (B's signature verified against B's MAP-verified key, A's proxy card), both bindings,
//! a stream, cancel with a subscriber, IDOR between A's principals, and B going away in the
//! middle of a stream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use kos_node::auth::Role;
use kos_node::auth::local::mint_named;
use kos_node::daemon::RunningNode;
use kos_tests::a2a::{send_body, sse_data};
use kos_tests::fed::{Member, layout, start_listed, wait_until};
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};

struct Fed {
    a: RunningNode,
    b: Option<RunningNode>,
    a_dir: tempfile::TempDir,
    _b_dir: tempfile::TempDir,
    b_id: String,
    http: Client,
}

impl Fed {
    async fn start() -> Self {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a_id = layout(a_dir.path(), "a", "").unwrap();
        let b_id = layout(
            b_dir.path(),
            "b",
            &format!("remote_roles:\n  peers:\n    {a_id}: agent\n"),
        )
        .unwrap();
        std::fs::write(
            b_dir.path().join("agents/echo.yaml"),
            "enabled: true\ntask_timeout: 120s\nsettings:\n  long_wait: 60s\n",
        )
        .unwrap();
        let members = [
            Member {
                dir: a_dir.path().to_path_buf(),
                id: a_id,
                label: Some("a".into()),
            },
            Member {
                dir: b_dir.path().to_path_buf(),
                id: b_id.clone(),
                label: Some("b".into()),
            },
        ];
        let mut nodes = start_listed(&members).await.unwrap().into_iter();
        let (a, _) = nodes.next().unwrap();
        let (b, _) = nodes.next().unwrap();
        let klp = a.state.klp.clone().unwrap();
        let peer = b_id.clone();
        wait_until("A admits B", Duration::from_secs(30), async || {
            klp.peers().await.unwrap_or_default().iter().any(|p| {
                p.id == peer
                    && p.state == kos_klp::HandshakeState::Admitted
                    && !p.services.is_empty()
            })
        })
        .await;
        Fed {
            a,
            b: Some(b),
            a_dir,
            _b_dir: b_dir,
            b_id,
            http: Client::new(),
        }
    }

    fn token(&self, sub: &str, role: Role) -> String {
        let config = self.a.state.config.current().config.clone();
        let id = self.a.state.identity.id().to_string();
        mint_named(
            self.a_dir.path(),
            &config,
            &id,
            sub,
            role,
            Duration::from_secs(600),
        )
        .unwrap()
        .expect("local tokens are enabled on a federation node")
    }

    fn url(&self, rest: &str) -> String {
        format!("http://{}/a2a/peers/{}/echo{rest}", self.a.addr, self.b_id)
    }

    async fn post(&self, token: &str, rest: &str, body: Value) -> Response {
        self.http
            .post(self.url(rest))
            .bearer_auth(token)
            .header("A2A-Version", "1.0")
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn get(&self, token: &str, rest: &str) -> Response {
        self.http
            .get(self.url(rest))
            .bearer_auth(token)
            .header("A2A-Version", "1.0")
            .send()
            .await
            .unwrap()
    }
}

fn long(message_id: &str) -> Value {
    json!({"message": {"role": "ROLE_USER", "messageId": format!("test-resubscribe-message-id-{message_id}"),
                       "parts": [{"text": "x"}]},
           "configuration": {"returnImmediately": true}})
}

async fn wait_state(f: &Fed, token: &str, id: &str, state: &str) {
    wait_until(
        &format!("task {id} reaches {state}"),
        Duration::from_secs(30),
        async || {
            let t: Value = f
                .get(token, &format!("/tasks/{id}"))
                .await
                .json()
                .await
                .unwrap();
            t["status"]["state"] == state
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peers_agent_is_called_over_klp_with_cards_streams_cancel_and_idor() {
    let mut f = Fed::start().await;
    let alice = f.token("alice", Role::Agent);
    let mallory = f.token("mallory", Role::Agent);

    // A lists B's echo with B's own signed card, verified against B's key.
    let viewer = f.token("v", Role::Viewer);
    let peers_dbg: Vec<(String, String)> =
        f.a.state
            .klp
            .as_ref()
            .unwrap()
            .peers()
            .await
            .unwrap()
            .iter()
            .map(|p| (p.id.clone(), format!("{:?} {:?}", p.state, p.services)))
            .collect();
    let agents: Value = f
        .http
        .get(format!("http://{}/api/agents", f.a.addr))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let remote = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["node"] == f.b_id.as_str())
        .unwrap_or_else(|| panic!("B's echo is listed: {agents} (peers: {:?})", peers_dbg));
    assert_eq!(remote["id"], "echo");
    assert_eq!(remote["local"], false);
    let b_card = &remote["card"];
    let b_key =
        f.b.as_ref()
            .unwrap()
            .state
            .identity
            .signing_key()
            .verifying_key();
    kos_agents::signing::verify_card(b_card, &b_key, &f.b_id).unwrap();
    // A's card for it: A's interfaces, signed by A.
    let r = f
        .http
        .get(remote["cardUrl"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let card: Value = r.json().await.unwrap();
    assert_eq!(card["supportedInterfaces"][1]["url"], f.url(""));
    let a_key = f.a.state.identity.signing_key().verifying_key();
    kos_agents::signing::verify_card(&card, &a_key, &f.a.state.identity.id().to_string()).unwrap();

    // Blocking send over REST and over JSON-RPC.
    let v: Value = f
        .post(&alice, "/message:send", send_body("r1", "over klp"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["task"]["status"]["state"], "TASK_STATE_COMPLETED", "{v}");
    assert_eq!(v["task"]["artifacts"][0]["parts"][0]["text"], "over klp");
    let done_id = v["task"]["id"].as_str().unwrap().to_owned();
    let v: Value = f
        .post(&alice, "/jsonrpc", json!({"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": send_body("r2", "rpc")}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["result"]["task"]["status"]["state"], "TASK_STATE_COMPLETED",
        "{v}"
    );

    // A stream, chunked, relayed event by event.
    let mut chunked = send_body("r3", "abcdef");
    chunked["message"]["parts"] = json!([{"text": "abcdef"}, {"data": {"chunkSize": 2}}]);
    let text = f
        .post(&alice, "/message:stream", chunked)
        .await
        .text()
        .await
        .unwrap();
    let events = sse_data(&text).unwrap();
    assert!(events[0].get("task").is_some(), "{events:?}");
    assert_eq!(
        events
            .iter()
            .filter(|e| e.get("artifactUpdate").is_some())
            .count(),
        3,
        "{events:?}"
    );
    assert_eq!(
        events.last().unwrap()["statusUpdate"]["status"]["state"],
        "TASK_STATE_COMPLETED"
    );

    // A long task: mallory cannot see or cancel it; alice subscribes and cancels.
    let v: Value = f
        .post(&alice, "/message:send", long("c"))
        .await
        .json()
        .await
        .unwrap();
    let id = v["task"]["id"].as_str().unwrap().to_owned();
    wait_state(&f, &alice, &id, "TASK_STATE_WORKING").await;
    for r in [
        f.get(&mallory, &format!("/tasks/{id}")).await,
        f.post(&mallory, &format!("/tasks/{id}:cancel"), json!({}))
            .await,
        f.get(&mallory, &format!("/tasks/{done_id}")).await,
    ] {
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
    let listed: Value = f.get(&mallory, "/tasks").await.json().await.unwrap();
    assert_eq!(
        listed["tasks"].as_array().map_or(0, Vec::len),
        0,
        "{listed}"
    );
    let sub = {
        let req = f
            .http
            .post(f.url(&format!("/tasks/{id}:subscribe")))
            .bearer_auth(&alice)
            .header("A2A-Version", "1.0")
            .send();
        let (first_tx, first_rx) = tokio::sync::oneshot::channel();
        let reader = tokio::spawn(async move {
            let mut resp = req.await.unwrap();
            let mut text = String::new();
            let mut first = Some(first_tx);
            while let Some(chunk) = resp.chunk().await.unwrap() {
                text.push_str(&String::from_utf8_lossy(&chunk));
                if text.contains("\n\n")
                    && let Some(tx) = first.take()
                {
                    let _ = tx.send(());
                }
            }
            text
        });
        // The subscription is open (its first event, the task, arrived) before the cancel.
        first_rx.await.unwrap();
        reader
    };
    let c: Value = f
        .post(&alice, &format!("/tasks/{id}:cancel"), json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(c["status"]["state"], "TASK_STATE_CANCELED", "{c}");
    let events = sse_data(
        &tokio::time::timeout(Duration::from_secs(30), sub)
            .await
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert!(events[0].get("task").is_some(), "{events:?}");
    assert_eq!(
        events.last().unwrap()["statusUpdate"]["status"]["state"],
        "TASK_STATE_CANCELED",
        "{events:?}"
    );

    // B goes away in the middle of a stream: the stream ends with an error event.
    let stream = {
        let req = f
            .http
            .post(f.url("/message:stream"))
            .bearer_auth(&alice)
            .header("A2A-Version", "1.0")
            .json(&json!({"message": {"role": "ROLE_USER", "messageId": "test-resubscribe-message-id-gone", "parts": [{"text": "x"}]}}))
            .send();
        tokio::spawn(async move { req.await.unwrap().text().await.unwrap() })
    };
    let klp = f.a.state.klp.clone().unwrap();
    let b_id = f.b_id.clone();
    wait_until(
        "the stream's task runs on B",
        Duration::from_secs(30),
        async || {
            let r: Value = f
                .get(&alice, "/tasks")
                .await
                .json()
                .await
                .unwrap_or_default();
            r["tasks"].as_array().is_some_and(|t| {
                t.iter()
                    .any(|t| t["status"]["state"] == "TASK_STATE_WORKING")
            })
        },
    )
    .await;
    let stopping = tokio::spawn(f.b.take().unwrap().stop());
    wait_until("A sees B gone", Duration::from_secs(30), async || {
        !klp.peers()
            .await
            .unwrap_or_default()
            .iter()
            .any(|p| p.id == b_id && p.connected)
    })
    .await;
    let text = tokio::time::timeout(Duration::from_secs(40), stream)
        .await
        .unwrap()
        .unwrap();
    assert!(text.contains("event: error"), "{text}");
    let last = sse_data(&text).unwrap().pop().unwrap();
    assert_eq!(last["error"]["status"], "UNAVAILABLE", "{last}");
    // And a call to a peer that is gone is 502 PeerUnavailable, not a hang.
    let r = f.get(&alice, &format!("/tasks/{done_id}")).await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    stopping.await.unwrap().unwrap();
    f.a.stop().await.unwrap();
}
