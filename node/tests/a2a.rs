#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The A2A bindings of the built-in `echo` agent over real HTTP, against in-process nodes on
//! 127.0.0.1:0: cards (signature, caching headers), both bindings, SSE, the version header,
//! errors, idempotent sends, IDOR between principals, the per-principal limit, and a task in
//! flight across a restart. The independent client (the official Python SDK) is
//! `tests/tests/a2a_sdk.rs`.

use std::time::Duration;

use kos_config::ProfileKind;
use kos_node::auth::Role;
use kos_node::auth::local::mint_named;
use kos_node::daemon::{NodeOptions, RunningNode, start};
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};

struct Node {
    node: RunningNode,
    base: String,
    dir: tempfile::TempDir,
    http: Client,
}

fn setup(extra_profile: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    kos_config::layout::init_layout(dir.path(), ProfileKind::Standalone).unwrap();
    let path = dir.path().join("profiles/standalone.yaml");
    let mut profile = std::fs::read_to_string(&path).unwrap();
    // Replace the `auth:` section: local tokens on.
    let mut out = String::new();
    let mut skip = false;
    for line in profile.lines() {
        if !line.is_empty() && !line.starts_with([' ', '\t', '#']) {
            skip = line.starts_with("auth:");
        }
        if !skip {
            out.push_str(line);
            out.push('\n');
        }
    }
    profile = format!("{out}\nauth:\n  jwt: enabled\n{extra_profile}");
    std::fs::write(&path, profile).unwrap();
    std::fs::write(
        dir.path().join("agents/echo.yaml"),
        "enabled: true\nmax_concurrent_tasks: 8\ntask_timeout: 120s\nsettings:\n  long_wait: 60s\n",
    )
    .unwrap();
    dir
}

impl Node {
    async fn start(extra_profile: &str) -> Self {
        Self::start_in(setup(extra_profile)).await
    }

    async fn start_in(dir: tempfile::TempDir) -> Self {
        let node = start(NodeOptions::local(dir.path().to_path_buf()))
            .await
            .unwrap();
        let base = format!("http://{}", node.addr);
        Self {
            node,
            base,
            dir,
            http: Client::new(),
        }
    }

    fn token(&self, sub: &str, role: Role) -> String {
        let config = self.node.state.config.current().config.clone();
        let id = self.node.state.identity.id().to_string();
        mint_named(
            self.dir.path(),
            &config,
            &id,
            sub,
            role,
            Duration::from_secs(600),
        )
        .unwrap()
        .unwrap()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn post(&self, token: &str, path: &str, body: Value) -> Response {
        self.http
            .post(self.url(path))
            .bearer_auth(token)
            .header("A2A-Version", "1.0")
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn get(&self, token: &str, path: &str) -> Response {
        self.http
            .get(self.url(path))
            .bearer_auth(token)
            .header("A2A-Version", "1.0")
            .send()
            .await
            .unwrap()
    }

    async fn rpc(&self, token: &str, method: &str, params: Value) -> Value {
        let r = self
            .post(
                token,
                "/a2a/echo/jsonrpc",
                json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }
}

fn send_body(message_id: &str, text: &str) -> Value {
    json!({"message": {"role": "ROLE_USER", "messageId": message_id, "parts": [{"text": text}]}})
}

fn reason(body: &Value) -> String {
    body["error"]["details"][0]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The `data:` payloads of an SSE body.
fn sse_data(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter_map(|ev| {
            let data: Vec<&str> = ev
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim)
                .collect();
            (!data.is_empty()).then(|| serde_json::from_str(&data.join("\n")).unwrap())
        })
        .collect()
}

async fn wait_state(n: &Node, token: &str, task: &str, state: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let t: Value = n
            .get(token, &format!("/a2a/echo/tasks/{task}"))
            .await
            .json()
            .await
            .unwrap();
        if t["status"]["state"] == state {
            return t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "task {task} never reached {state}: {t}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn cards_are_signed_cacheable_and_describe_the_real_auth() {
    let n = Node::start("").await;
    let r = n
        .http
        .get(n.url("/a2a/echo/.well-known/agent-card.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "cards are public");
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    assert!(
        r.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("max-age")
    );
    assert!(r.headers().contains_key("last-modified"));
    let card: Value = r.json().await.unwrap();
    assert_eq!(card["name"], "Echo");
    let ifaces = card["supportedInterfaces"].as_array().unwrap();
    assert_eq!(ifaces[0]["url"], format!("{}/a2a/echo/jsonrpc", n.base));
    assert_eq!(ifaces[0]["protocolBinding"], "JSONRPC");
    assert_eq!(ifaces[1]["url"], format!("{}/a2a/echo", n.base));
    assert_eq!(ifaces[1]["protocolVersion"], "1.0");
    assert_eq!(
        card["securitySchemes"]["bearer"]["httpAuthSecurityScheme"]["scheme"],
        "Bearer"
    );
    assert!(
        card["skills"][0]["description"]
            .as_str()
            .unwrap()
            .contains("metadata.skill")
    );
    let key = n.node.state.identity.signing_key().verifying_key();
    let kid = n.node.state.identity.id().to_string();
    kos_agents::signing::verify_card(&card, &key, &kid).unwrap();
    let mut forged = card.clone();
    forged["name"] = json!("Evil");
    assert!(kos_agents::signing::verify_card(&forged, &key, &kid).is_err());

    let r = n
        .http
        .get(n.url("/a2a/echo/.well-known/agent-card.json"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    let node_card: Value = n
        .http
        .get(n.url("/.well-known/agent-card.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        node_card["supportedInterfaces"],
        card["supportedInterfaces"]
    );
    let r = n
        .http
        .get(n.url("/a2a/nope/.well-known/agent-card.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let t = n.token("viewer", Role::Viewer);
    let agents: Value = n.get(&t, "/api/agents").await.json().await.unwrap();
    assert_eq!(
        agents["agents"][0]["cardUrl"],
        format!("{}/a2a/echo/.well-known/agent-card.json", n.base)
    );
    n.node.stop().await.unwrap();
}

#[tokio::test]
async fn both_bindings_send_get_list_stream_and_refuse_bad_requests() {
    let n = Node::start("").await;
    let t = n.token("alice", Role::Agent);

    // REST, blocking.
    let r = n
        .post(&t, "/a2a/echo/message:send", send_body("m1", "hello"))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    let task = &body["task"];
    assert_eq!(task["status"]["state"], "TASK_STATE_COMPLETED", "{body}");
    assert_eq!(task["artifacts"][0]["parts"][0]["text"], "hello");
    let id = task["id"].as_str().unwrap().to_owned();
    let ctx = task["contextId"].as_str().unwrap().to_owned();

    // Idempotent on messageId: the same task, no second run.
    let again: Value = n
        .post(&t, "/a2a/echo/message:send", send_body("m1", "other"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["task"]["id"], id.as_str());

    // GetTask with historyLength.
    let got: Value = n
        .get(&t, &format!("/a2a/echo/tasks/{id}?historyLength=0"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got["history"].as_array().map_or(0, Vec::len), 0);
    let got: Value = n
        .get(&t, &format!("/a2a/echo/tasks/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got["history"][0]["messageId"], "m1");

    // JSON-RPC at the interface URL, with and without the trailing slash.
    let mut m = send_body("m2", "rpc");
    m["message"]["contextId"] = json!(ctx);
    let v = n.rpc(&t, "SendMessage", m).await;
    assert_eq!(v["result"]["task"]["contextId"], ctx.as_str(), "{v}");
    let r = n
        .post(
            &t,
            "/a2a/echo/jsonrpc/",
            json!({"jsonrpc": "2.0", "id": "x", "method": "GetTask", "params": {"id": id}}),
        )
        .await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["result"]["id"], id.as_str());

    // ListTasks by context, paged.
    let page: Value = n
        .get(&t, &format!("/a2a/echo/tasks?contextId={ctx}&pageSize=1"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["totalSize"], 2);
    assert_eq!(page["tasks"].as_array().unwrap().len(), 1);
    let token = page["nextPageToken"].as_str().unwrap();
    let page2: Value = n
        .get(
            &t,
            &format!("/a2a/echo/tasks?contextId={ctx}&pageSize=1&pageToken={token}"),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page2["nextPageToken"], "");
    assert_ne!(page2["tasks"][0]["id"], page["tasks"][0]["id"]);

    // SSE on both bindings: chunks, then the final status.
    let mut chunked = send_body("m3", "abcdef");
    chunked["message"]["parts"] = json!([{"text": "abcdef"}, {"data": {"chunkSize": 2.0}}]);
    let r = n.post(&t, "/a2a/echo/message:stream", chunked).await;
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let events = sse_data(&r.text().await.unwrap());
    assert!(events[0].get("task").is_some(), "{events:?}");
    let chunks: Vec<&Value> = events
        .iter()
        .filter_map(|e| e.get("artifactUpdate"))
        .collect();
    assert_eq!(chunks.len(), 3, "{events:?}");
    assert_eq!(chunks[0].get("append"), None);
    assert_eq!(chunks[2]["lastChunk"], true);
    assert_eq!(
        events.last().unwrap()["statusUpdate"]["status"]["state"],
        "TASK_STATE_COMPLETED"
    );
    let r = n
        .post(&t, "/a2a/echo/jsonrpc", json!({"jsonrpc": "2.0", "id": 9, "method": "SendStreamingMessage", "params": send_body("m4", "s")}))
        .await;
    let events = sse_data(&r.text().await.unwrap());
    assert!(events.iter().all(|e| e["id"] == 9 && e["jsonrpc"] == "2.0"));
    assert_eq!(
        events.last().unwrap()["result"]["statusUpdate"]["status"]["state"],
        "TASK_STATE_COMPLETED"
    );

    // Input required, then the next turn on the same task and context.
    let v: Value = n
        .post(
            &t,
            "/a2a/echo/message:send",
            send_body("tck-input-required-1", "x"),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["task"]["status"]["state"], "TASK_STATE_INPUT_REQUIRED",
        "{v}"
    );
    let mut next = send_body("m5", "more");
    next["message"]["taskId"] = v["task"]["id"].clone();
    next["message"]["contextId"] = v["task"]["contextId"].clone();
    let v2: Value = n
        .post(&t, "/a2a/echo/message:send", next)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v2["task"]["id"], v["task"]["id"]);
    assert_eq!(
        v2["task"]["status"]["state"], "TASK_STATE_COMPLETED",
        "{v2}"
    );

    // Errors: version, unknown task, terminal cancel, bad params, wrong content type.
    let r = n
        .http
        .post(n.url("/a2a/echo/message:send"))
        .bearer_auth(&t)
        .json(&send_body("m6", "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let b: Value = r.json().await.unwrap();
    assert_eq!(reason(&b), "VERSION_NOT_SUPPORTED");
    assert_eq!(b["error"]["details"][0]["domain"], "a2a-protocol.org");
    let r = n
        .http
        .post(n.url("/a2a/echo/jsonrpc"))
        .bearer_auth(&t)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": id}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], -32009);
    let r = n.get(&t, "/a2a/echo/tasks/does-not-exist").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(reason(&r.json().await.unwrap()), "TASK_NOT_FOUND");
    let r = n
        .post(&t, &format!("/a2a/echo/tasks/{id}:cancel"), json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(reason(&r.json().await.unwrap()), "TASK_NOT_CANCELABLE");
    let v = n.rpc(&t, "CancelTask", json!({"id": id})).await;
    assert_eq!(v["error"]["code"], -32002);
    let v = n.rpc(&t, "NoSuchMethod", json!({})).await;
    assert_eq!(v["error"]["code"], -32601);
    let v = n.rpc(&t, "ListTasks", json!({"pageSize": 0})).await;
    assert_eq!(v["error"]["code"], -32602);
    let r = n
        .http
        .post(n.url("/a2a/echo/message:send"))
        .bearer_auth(&t)
        .header("A2A-Version", "1.0")
        .header("content-type", "text/plain")
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // A body over api.max_body_bytes (1 MiB) is refused, on both bindings.
    let big = send_body("big", &"x".repeat(1_100_000));
    let r = n.post(&t, "/a2a/echo/message:send", big.clone()).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = n
        .post(&t, "/a2a/echo/jsonrpc", json!({"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": big["message"].clone()}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["error"]["code"], -32600, "{v}");
    // Proto field names are read too (ProtoJSON parsers accept both spellings).
    let v = n
        .rpc(&t, "GetTask", json!({"id": id, "history_length": 0}))
        .await;
    assert_eq!(
        v["result"]["history"].as_array().map_or(0, Vec::len),
        0,
        "{v}"
    );
    let v = n.rpc(&t, "GetTask", json!({"id": ""})).await;
    assert_eq!(v["error"]["code"], -32602);
    let r = n
        .http
        .post(n.url("/a2a/echo/message:send"))
        .bearer_auth(&t)
        .header("A2A-Version", "1.0")
        .header("content-type", "application/a2a+json")
        .body(send_body("m7", "a2a+json").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    n.node.stop().await.unwrap();
}

#[tokio::test]
async fn principals_never_see_each_others_tasks_and_roles_are_enforced() {
    let n = Node::start("").await;
    let alice = n.token("alice", Role::Agent);
    let mallory = n.token("mallory", Role::Operator);
    let admin = n.token("root", Role::Admin);
    let v: Value = n
        .post(&alice, "/a2a/echo/message:send", json!({"message": {"role": "ROLE_USER", "messageId": "test-resubscribe-message-id-1", "parts": [{"text": "x"}]}, "configuration": {"returnImmediately": true}}))
        .await
        .json()
        .await
        .unwrap();
    let id = v["task"]["id"].as_str().unwrap().to_owned();
    for (method, path) in [
        ("GET", format!("/a2a/echo/tasks/{id}")),
        ("POST", format!("/a2a/echo/tasks/{id}:cancel")),
        ("POST", format!("/a2a/echo/tasks/{id}:subscribe")),
        (
            "GET",
            format!("/a2a/echo/tasks/{id}/pushNotificationConfigs"),
        ),
    ] {
        let r = if method == "GET" {
            n.get(&mallory, &path).await
        } else {
            n.post(&mallory, &path, json!({})).await
        };
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{method} {path}");
        assert_eq!(reason(&r.json().await.unwrap()), "TASK_NOT_FOUND");
    }
    // Continuing someone else's task is the same "not found".
    let mut m = send_body("steal", "x");
    m["message"]["taskId"] = json!(id);
    assert_eq!(
        n.post(&mallory, "/a2a/echo/message:send", m).await.status(),
        StatusCode::NOT_FOUND
    );
    let v = n.rpc(&mallory, "GetTask", json!({"id": id})).await;
    assert_eq!(v["error"]["code"], -32001);
    let listed: Value = n
        .get(&mallory, "/a2a/echo/tasks")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["totalSize"], 0);
    // The same messageId from another principal is a new task of theirs.
    let mut same_id = send_body("test-resubscribe-message-id-1", "x");
    same_id["configuration"] = json!({"returnImmediately": true});
    let other: Value = n
        .post(&mallory, "/a2a/echo/message:send", same_id)
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(other["task"]["id"], id.as_str());
    // Admins see all and may cancel.
    let all: Value = n.get(&admin, "/a2a/echo/tasks").await.json().await.unwrap();
    assert_eq!(all["totalSize"], 2);
    let c: Value = n
        .post(&admin, &format!("/a2a/echo/tasks/{id}:cancel"), json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(c["status"]["state"], "TASK_STATE_CANCELED", "{c}");
    // Viewers have no A2A access; no token is 401; cards stay public.
    let viewer = n.token("v", Role::Viewer);
    assert_eq!(
        n.get(&viewer, "/a2a/echo/tasks").await.status(),
        StatusCode::FORBIDDEN
    );
    let r = n
        .http
        .post(n.url("/a2a/echo/message:send"))
        .json(&send_body("z", "z"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    n.node.stop().await.unwrap();
}

#[tokio::test]
async fn a_principal_over_its_limit_gets_429_and_cancel_stops_a_running_turn() {
    let n = Node::start("a2a:\n  max_tasks_per_principal: 1\n").await;
    let t = n.token("alice", Role::Agent);
    let long = json!({"message": {"role": "ROLE_USER", "messageId": "test-resubscribe-message-id-a", "parts": [{"text": "x"}]}, "configuration": {"returnImmediately": true}});
    let v: Value = n
        .post(&t, "/a2a/echo/message:send", long)
        .await
        .json()
        .await
        .unwrap();
    let id = v["task"]["id"].as_str().unwrap().to_owned();
    let r = n
        .post(&t, "/a2a/echo/message:send", send_body("second", "x"))
        .await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    // Another principal is not limited by alice's turns.
    let bob = n.token("bob", Role::Agent);
    assert_eq!(
        n.post(&bob, "/a2a/echo/message:send", send_body("b", "x"))
            .await
            .status(),
        StatusCode::OK
    );
    // A subscriber sees the task first, then the cancel.
    let sub = {
        let req = n
            .http
            .post(n.url(&format!("/a2a/echo/tasks/{id}:subscribe")))
            .bearer_auth(&t)
            .header("A2A-Version", "1.0")
            .send();
        tokio::spawn(async move { req.await.unwrap().text().await.unwrap() })
    };
    wait_state(&n, &t, &id, "TASK_STATE_WORKING").await;
    let c: Value = n
        .post(&t, &format!("/a2a/echo/tasks/{id}:cancel"), json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(c["status"]["state"], "TASK_STATE_CANCELED", "{c}");
    let events = sse_data(&sub.await.unwrap());
    assert!(events[0].get("task").is_some(), "{events:?}");
    assert_eq!(
        events.last().unwrap()["statusUpdate"]["status"]["state"],
        "TASK_STATE_CANCELED"
    );
    // The turns ended show in /metrics.
    let metrics = n
        .http
        .get(n.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("kos_a2a_turns_total{outcome=\"canceled\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kos_a2a_turns_total{outcome=\"completed\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("kos_a2a_turns_running 0"), "{metrics}");
    // The slot is free again.
    assert_eq!(
        n.post(&t, "/a2a/echo/message:send", send_body("third", "x"))
            .await
            .status(),
        StatusCode::OK
    );
    // Subscribing to a terminal task is UnsupportedOperation.
    let r = n
        .post(&t, &format!("/a2a/echo/tasks/{id}:subscribe"), json!({}))
        .await;
    assert_eq!(reason(&r.json().await.unwrap()), "UNSUPPORTED_OPERATION");
    n.node.stop().await.unwrap();
}

#[tokio::test]
async fn a_task_in_flight_resumes_after_a_restart() {
    let n = Node::start("").await;
    let t = n.token("alice", Role::Agent);
    let long = json!({"message": {"role": "ROLE_USER", "messageId": "test-resubscribe-message-id-r", "parts": [{"text": "x"}]}, "configuration": {"returnImmediately": true}});
    let v: Value = n
        .post(&t, "/a2a/echo/message:send", long)
        .await
        .json()
        .await
        .unwrap();
    let id = v["task"]["id"].as_str().unwrap().to_owned();
    wait_state(&n, &t, &id, "TASK_STATE_WORKING").await;
    let Node { node, dir, .. } = n;
    node.stop().await.unwrap();
    // The resumed turn waits 1 s instead of a minute.
    std::fs::write(
        dir.path().join("agents/echo.yaml"),
        "enabled: true\nsettings:\n  long_wait: 1s\n",
    )
    .unwrap();
    let n = Node::start_in(dir).await;
    let t = n.token("alice", Role::Agent);
    // The echo agent declares `Resume`: its turn runs again and completes.
    let done = wait_state(&n, &t, &id, "TASK_STATE_COMPLETED").await;
    assert_eq!(done["id"], id.as_str());
    n.node.stop().await.unwrap();
}

#[tokio::test]
async fn push_webhooks_on_internal_addresses_are_refused() {
    let n = Node::start("").await;
    let t = n.token("alice", Role::Agent);
    let v: Value = n
        .post(&t, "/a2a/echo/message:send", long_message("p"))
        .await
        .json()
        .await
        .unwrap();
    let id = v["task"]["id"].as_str().unwrap().to_owned();
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.1/hook",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "ftp://example.com/hook",
    ] {
        let r = n
            .post(
                &t,
                &format!("/a2a/echo/tasks/{id}/pushNotificationConfigs"),
                json!({"url": url, "token": "t"}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{url}");
        let b: Value = r.json().await.unwrap();
        assert_eq!(b["error"]["status"], "INVALID_ARGUMENT", "{url}: {b}");
    }
    // In SendMessage's configuration: refused before any task exists.
    let mut m = send_body("with-push", "x");
    m["configuration"] = json!({"taskPushNotificationConfig": {"url": "http://127.0.0.1:1/x"}});
    assert_eq!(
        n.post(&t, "/a2a/echo/message:send", m).await.status(),
        StatusCode::BAD_REQUEST
    );
    let listed: Value = n.get(&t, "/a2a/echo/tasks").await.json().await.unwrap();
    assert_eq!(listed["totalSize"], 1, "{listed}");
    n.node.stop().await.unwrap();
}

fn long_message(suffix: &str) -> Value {
    json!({"message": {"role": "ROLE_USER", "messageId": format!("test-resubscribe-message-id-{suffix}"),
                       "parts": [{"text": "x"}]},
           "configuration": {"returnImmediately": true}})
}
