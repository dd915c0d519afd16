//! A2A tasks across replicas of one node: two in-process nodes with the same identity (so the
//! same Redis channel, `kos:<node id>:events`) and the same token key, sharing one throwaway
//! PostgreSQL database and one throwaway Redis (`messaging.bus: redis`). A task that runs on
//! one replica is seen, followed and canceled through the other. Needs PostgreSQL and Redis:
//! a failure in CI when either cannot start; reported as not run elsewhere.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kos_agents::types::StreamResponse;
use kos_config::ProfileKind;
use kos_node::a2a::store::TaskStore;
use kos_node::auth::Role;
use kos_node::auth::local::{TokenKey, mint_named};
use kos_node::daemon::{NodeOptions, RunningNode, start};
use kos_node::identity::IDENTITY_FILE;
use kos_node::store::Db;
use kos_tests::{Postgres, Redis, require};
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};

/// A config directory: the developer_node profile (PostgreSQL; the URL and Redis come from
/// the environment of [`start_replica`]) with local tokens on, at most one running
/// task per principal (so a free slot proves a turn ended), and the echo agent whose
/// `test-resubscribe-message-id…` turn works for a minute.
fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    kos_config::layout::init_layout(dir.path(), ProfileKind::DeveloperNode).unwrap();
    let path = dir.path().join("profiles/developer_node.yaml");
    kos_tests::a2a::replace_sections(
        &path,
        &["auth:"],
        "auth:\n  jwt: enabled\na2a:\n  max_tasks_per_principal: 1\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("agents/echo.yaml"),
        "enabled: true\nmax_concurrent_tasks: 8\ntask_timeout: 120s\nsettings:\n  long_wait: 60s\n",
    )
    .unwrap();
    dir
}

struct Replica {
    node: RunningNode,
    base: String,
    _dir: tempfile::TempDir,
}

struct Replicas {
    a: Replica,
    b: Replica,
    /// A token both replicas accept.
    token: String,
    http: Client,
    /// The shared database, read directly.
    store: TaskStore,
    db: Db,
    _pg: Postgres,
    _redis: Redis,
}

async fn start_replica(dir: tempfile::TempDir, pg: &Postgres, redis: &Redis) -> Replica {
    let mut opts = NodeOptions::local(dir.path().to_path_buf());
    opts.load.env = [
        ("KOS_STORAGE__DATABASE", "postgresql"),
        ("KOS_DATABASE__URL", pg.url.as_str()),
        ("KOS_MESSAGING__BUS", "redis"),
        ("KOS_REDIS__URL", redis.url.as_str()),
        ("KOS_REDIS__PASSWORD", redis.password.as_str()),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect::<BTreeMap<_, _>>();
    let node = start(opts).await.unwrap();
    assert_eq!(node.state.events.bus().kind(), "redis");
    let base = format!("http://{}", node.addr);
    Replica {
        node,
        base,
        _dir: dir,
    }
}

async fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Replicas {
    /// Replica A on a fresh directory; replica B on another one with A's identity and token
    /// key copied in before it starts.
    async fn start(test: &str) -> Option<Self> {
        let (pg, redis) = tokio::join!(
            tokio::task::spawn_blocking(Postgres::start),
            tokio::task::spawn_blocking(Redis::start)
        );
        let pg = require(test, pg.unwrap())?;
        let redis = require(test, redis.unwrap())?;
        let dir_a = setup();
        let a = start_replica(dir_a, &pg, &redis).await;
        let config = a.node.state.config.current().config.clone();
        let node_id = a.node.state.identity.id().to_string();
        let token = mint_named(
            a._dir.path(),
            &config,
            &node_id,
            "alice",
            Role::Agent,
            Duration::from_secs(600),
        )
        .unwrap()
        .expect("local tokens are on");

        let dir_b = setup();
        std::fs::copy(
            a._dir.path().join(IDENTITY_FILE),
            dir_b.path().join(IDENTITY_FILE),
        )
        .unwrap();
        let key_b = TokenKey::path(dir_b.path());
        std::fs::create_dir_all(key_b.parent().unwrap()).unwrap();
        std::fs::copy(TokenKey::path(a._dir.path()), &key_b).unwrap();
        let b = start_replica(dir_b, &pg, &redis).await;
        assert_eq!(
            b.node.state.identity.id().to_string(),
            node_id,
            "one node, two replicas"
        );
        for r in [&a, &b] {
            let bus = r.node.state.events.bus().clone();
            wait_for(
                "the Redis bus to subscribe",
                Duration::from_secs(20),
                || bus.connected(),
            )
            .await;
        }
        let db = Db::open_postgres(&pg.url, 2, 0, Duration::from_secs(10))
            .await
            .unwrap();
        Some(Self {
            a,
            b,
            token,
            http: Client::new(),
            store: TaskStore::new(db.clone()),
            db,
            _pg: pg,
            _redis: redis,
        })
    }

    async fn post(&self, r: &Replica, path: &str, body: Value) -> Response {
        self.http
            .post(format!("{}{path}", r.base))
            .bearer_auth(&self.token)
            .header("A2A-Version", "1.0")
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn get(&self, r: &Replica, path: &str) -> Value {
        let resp = self
            .http
            .get(format!("{}{path}", r.base))
            .bearer_auth(&self.token)
            .header("A2A-Version", "1.0")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "GET {path}");
        resp.json().await.unwrap()
    }

    /// Starts the echo agent's minute-long task on `r` and returns its id.
    async fn start_long_task(&self, r: &Replica, message_id: &str) -> String {
        let r = self
            .post(
                r,
                "/a2a/echo/message:send",
                json!({"message": {"role": "ROLE_USER", "messageId": message_id, "parts": [{"text": "x"}]},
                       "configuration": {"returnImmediately": true}}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.unwrap();
        v["task"]["id"].as_str().unwrap().to_owned()
    }

    async fn wait_state(&self, r: &Replica, task: &str, state: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let t = self.get(r, &format!("/a2a/echo/tasks/{task}")).await;
            if t["status"]["state"] == state {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "task {task} never reached {state} on {}: {t}",
                r.base
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Opens `SubscribeToTask` on `r` (REST binding, SSE).
    async fn subscribe(&self, r: &Replica, task: &str) -> Sse {
        let resp = self
            .post(r, &format!("/a2a/echo/tasks/{task}:subscribe"), json!({}))
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Sse {
            resp,
            buf: String::new(),
        }
    }

    async fn stop(self) {
        self.b.node.stop().await.unwrap();
        self.a.node.stop().await.unwrap();
        self.db.close().await;
    }
}

/// An SSE response read event by event.
struct Sse {
    resp: Response,
    buf: String,
}

impl Sse {
    /// The next event's `data:` as JSON; `None` when the stream ended.
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let ev: String = self.buf.drain(..end + 2).collect();
                let data: Vec<&str> = ev
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim)
                    .collect();
                if data.is_empty() {
                    continue; // a comment or keep-alive
                }
                return Some(serde_json::from_str(&data.join("\n")).unwrap());
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), self.resp.chunk())
                .await
                .expect("an SSE event within 30 s")
                .unwrap()?;
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Every remaining event, until the server ends the stream.
    async fn rest(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(e) = self.next().await {
            out.push(e);
        }
        out
    }
}

fn state_of(e: &Value) -> &str {
    e["statusUpdate"]["status"]["state"]
        .as_str()
        .or_else(|| e["task"]["status"]["state"].as_str())
        .unwrap_or_default()
}

/// The task's events in the shared database, as the SSE data of the REST binding.
async fn stored_events(store: &TaskStore, task: &str) -> Vec<(i64, Value)> {
    store
        .events_after(task, 0, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|(n, e): (i64, StreamResponse)| (n, serde_json::to_value(e).unwrap()))
        .collect()
}

#[tokio::test]
async fn a_subscriber_on_one_replica_sees_every_update_of_a_task_on_another() {
    let Some(r) =
        Replicas::start("a_subscriber_on_one_replica_sees_every_update_of_a_task_on_another").await
    else {
        return;
    };
    let id = r
        .start_long_task(&r.a, "test-resubscribe-message-id-1")
        .await;
    // B reads the task from the shared database.
    let on_b = r.wait_state(&r.b, &id, "TASK_STATE_WORKING").await;
    assert_eq!(on_b["id"], id.as_str());
    let listed = r.get(&r.b, "/a2a/echo/tasks").await;
    assert_eq!(listed["totalSize"], 1);
    assert_eq!(listed["tasks"][0]["id"], id.as_str());

    // B's subscriber gets the task first.
    let mut sub = r.subscribe(&r.b, &id).await;
    let first = sub.next().await.expect("the task first");
    assert_eq!(first["task"]["id"], id.as_str(), "{first}");
    assert_eq!(state_of(&first), "TASK_STATE_WORKING");

    // The turn runs on A, so the cancel goes to A; B's stream shows it and ends.
    let c: Value = r
        .post(&r.a, &format!("/a2a/echo/tasks/{id}:cancel"), json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(c["status"]["state"], "TASK_STATE_CANCELED", "{c}");
    let rest = sub.rest().await;
    assert_eq!(
        rest.last().map(state_of),
        Some("TASK_STATE_CANCELED"),
        "{rest:?}"
    );
    // Every update stored after the snapshot B sent, in order, nothing else.
    let stored = stored_events(&r.store, &id).await;
    let tail: Vec<Value> = stored[stored.len() - rest.len()..]
        .iter()
        .map(|(_, e)| e.clone())
        .collect();
    assert_eq!(
        rest, tail,
        "B streamed the stored updates after its snapshot"
    );
    assert_eq!(
        stored
            .iter()
            .filter(|(_, e)| state_of(e) == "TASK_STATE_CANCELED")
            .count(),
        1
    );

    let on_b = r.get(&r.b, &format!("/a2a/echo/tasks/{id}")).await;
    assert_eq!(on_b["status"]["state"], "TASK_STATE_CANCELED");
    // A terminal task has no more updates, on either replica.
    for rep in [&r.a, &r.b] {
        let resp = r
            .post(rep, &format!("/a2a/echo/tasks/{id}:subscribe"), json!({}))
            .await;
        let body: Value = resp.json().await.unwrap();
        assert_eq!(
            body["error"]["details"][0]["reason"], "UNSUPPORTED_OPERATION",
            "{} {body}",
            rep.base
        );
    }
    r.stop().await;
}

#[tokio::test]
async fn a_cancel_sent_to_another_replica_ends_the_turn_and_the_task_stays_canceled() {
    let Some(r) = Replicas::start(
        "a_cancel_sent_to_another_replica_ends_the_turn_and_the_task_stays_canceled",
    )
    .await
    else {
        return;
    };
    let id = r
        .start_long_task(&r.a, "test-resubscribe-message-id-2")
        .await;
    r.wait_state(&r.a, &id, "TASK_STATE_WORKING").await;
    // alice's one slot on A is taken by the running turn.
    let busy = r
        .post(
            &r.a,
            "/a2a/echo/message:send",
            json!({"message": {"role": "ROLE_USER", "messageId": "busy", "parts": [{"text": "x"}]}}),
        )
        .await;
    assert_eq!(busy.status(), StatusCode::TOO_MANY_REQUESTS);
    // A subscriber on A, where the turn runs.
    let mut on_a = r.subscribe(&r.a, &id).await;
    assert_eq!(state_of(&on_a.next().await.unwrap()), "TASK_STATE_WORKING");

    // The cancel goes to B, where the task is not running: B saves CANCELED.
    let t0 = Instant::now();
    let resp = r
        .post(&r.b, &format!("/a2a/echo/tasks/{id}:cancel"), json!({}))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let c: Value = resp.json().await.unwrap();
    assert_eq!(c["status"]["state"], "TASK_STATE_CANCELED", "{c}");
    // A's subscriber sees it through Redis.
    let rest = on_a.rest().await;
    assert_eq!(
        rest.last().map(state_of),
        Some("TASK_STATE_CANCELED"),
        "{rest:?}"
    );

    // A's turn ends, long before the agent's minute is up, and before the lease renewal
    // (every 10 s) would look: B's cancel reached it over Redis. alice's slot on A is free.
    let mut n = 0;
    loop {
        n += 1;
        let resp = r
            .post(
                &r.a,
                "/a2a/echo/message:send",
                json!({"message": {"role": "ROLE_USER", "messageId": format!("after-{n}"), "parts": [{"text": "x"}]}}),
            )
            .await;
        if resp.status() == StatusCode::OK {
            let v: Value = resp.json().await.unwrap();
            assert_eq!(v["task"]["status"]["state"], "TASK_STATE_COMPLETED", "{v}");
            break;
        }
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(
            t0.elapsed() < Duration::from_secs(8),
            "the turn on A still runs {:?} after the task was canceled on B",
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("A's turn ended {:?} after the cancel on B", t0.elapsed());

    // The turn is over and the task is still CANCELED, with B's cancel as its last event:
    // A's turn wrote nothing after it.
    let stored = stored_events(&r.store, &id).await;
    let (last_seq, last) = stored.last().unwrap();
    assert_eq!(state_of(last), "TASK_STATE_CANCELED", "{stored:?}");
    assert_eq!(
        stored
            .iter()
            .filter(|(_, e)| {
                matches!(
                    state_of(e),
                    "TASK_STATE_CANCELED" | "TASK_STATE_COMPLETED" | "TASK_STATE_FAILED"
                )
            })
            .count(),
        1,
        "one final status: {stored:?}"
    );
    let row = r.store.get(&id).await.unwrap().unwrap();
    assert_eq!(row.seq, *last_seq);
    for rep in [&r.a, &r.b] {
        let t = r.get(rep, &format!("/a2a/echo/tasks/{id}")).await;
        assert_eq!(t["status"]["state"], "TASK_STATE_CANCELED", "{t}");
    }
    // A second cancel, on either replica, is refused: the task is final.
    for rep in [&r.a, &r.b] {
        let resp = r
            .post(rep, &format!("/a2a/echo/tasks/{id}:cancel"), json!({}))
            .await;
        // (The reason, not the HTTP status: that is the bindings' business, tested there.)
        let body: Value = resp.json().await.unwrap();
        assert_eq!(
            body["error"]["details"][0]["reason"], "TASK_NOT_CANCELABLE",
            "{} {body}",
            rep.base
        );
    }
    r.stop().await;
}
