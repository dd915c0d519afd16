//! The kConfigD HTTP API over real HTTP, against in-process nodes on 127.0.0.1:0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use kos_config::ProfileKind;
use kos_node::daemon::{NodeOptions, RunningNode, start};
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};

struct TestNode {
    node: RunningNode,
    base: String,
    dir: tempfile::TempDir,
    http: Client,
}

impl TestNode {
    async fn start() -> Self {
        Self::start_with(ProfileKind::Standalone).await
    }

    async fn start_with(kind: ProfileKind) -> Self {
        let dir = tempfile::tempdir().unwrap();
        kos_config::layout::init_layout(dir.path(), kind).unwrap();
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

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get(&self, path: &str) -> Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    async fn get_json(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert_eq!(r.status(), StatusCode::OK, "GET {path}");
        r.json().await.unwrap()
    }

    async fn current(&self) -> (String, String) {
        let p = self.get_json("/api/config/profile").await;
        (
            p["snapshot_id"].as_str().unwrap().to_string(),
            p["document"].as_str().unwrap().to_string(),
        )
    }

    async fn apply(&self, if_match: Option<&str>, doc: &str) -> Response {
        let mut req = self
            .http
            .post(self.url("/api/config/apply"))
            .header("content-type", "application/yaml")
            .body(doc.to_string());
        if let Some(m) = if_match {
            req = req.header("if-match", m);
        }
        req.send().await.unwrap()
    }

    fn profile_path(&self) -> PathBuf {
        self.dir.path().join("profiles/standalone.yaml")
    }

    async fn history_len(&self) -> usize {
        self.get_json("/api/config/history").await["entries"]
            .as_array()
            .unwrap()
            .len()
    }
}

async fn problem(r: Response, status: StatusCode) -> Value {
    assert_eq!(r.status(), status);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let v: Value = r.json().await.unwrap();
    assert!(
        v["type"].as_str().unwrap().starts_with("urn:kos:problem:"),
        "{v}"
    );
    assert!(v["title"].is_string() && v["detail"].is_string(), "{v}");
    assert_eq!(v["status"], status.as_u16());
    v
}

fn with_level(doc: &str, level: &str) -> String {
    doc.replace("  level: info ", &format!("  level: {level} "))
}

#[tokio::test]
async fn health_ready_metrics_and_problem_shape() {
    let t = TestNode::start().await;
    assert_eq!(t.get_json("/healthz").await["status"], "ok");
    assert_eq!(t.get_json("/readyz").await["status"], "ready");
    let h = t.get_json("/api/config/health").await;
    assert_eq!(h["status"], "ok");
    assert_eq!(h["checks"]["database"]["status"], "ok");

    let p = problem(t.get("/no/such/thing").await, StatusCode::NOT_FOUND).await;
    assert_eq!(p["type"], "urn:kos:problem:not-found");
    problem(
        t.http
            .delete(t.url("/api/config/status"))
            .send()
            .await
            .unwrap(),
        StatusCode::METHOD_NOT_ALLOWED,
    )
    .await;
    // Every response carries a request id.
    assert!(
        t.get("/healthz")
            .await
            .headers()
            .contains_key("x-request-id")
    );

    let m = t.get("/metrics").await;
    assert!(
        m.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = m.text().await.unwrap();
    assert!(
        text.contains("kos_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"}"),
        "{text}"
    );
    assert!(text.contains("kos_node_info{"));
    assert!(text.contains("kos_config_snapshot{snapshot_id=\""));
    t.node.stop().await.unwrap();
}

#[tokio::test]
async fn validate_reports_every_error_with_location() {
    let t = TestNode::start().await;
    let (_, doc) = t.current().await;
    let r = t
        .http
        .put(t.url("/api/config/validate"))
        .body(with_level(&doc, "debug"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["live"], json!(["logging"]));
    assert_eq!(v["changes"][0]["path"], "logging.level");

    let bad = "profile: standalone\napi:\n  lisen: 127.0.0.1:1\nlogging:\n  level: loud\nfederation:\n  klp:\n    enabled: true\n";
    let p = problem(
        t.http
            .put(t.url("/api/config/validate"))
            .body(bad)
            .send()
            .await
            .unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    let errors = p["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{p}");
    // `federation.klp` in the profile is overridden by klp/klp_settings.yaml, and the node says so.
    let w = &p["warnings"][0];
    assert_eq!(
        (w["path"].as_str(), w["line"].as_u64()),
        (Some("federation.klp.enabled"), Some(8)),
        "{p}"
    );
    assert!(
        w["message"]
            .as_str()
            .unwrap()
            .starts_with("overridden by klp/klp_settings.yaml:"),
        "{p}"
    );
    assert_eq!(
        errors[0],
        json!({"severity": "error", "file": "request body", "line": 3, "column": 3, "path": "api.lisen", "message": "unknown key `lisen` (did you mean `listen`?)"})
    );
    assert_eq!(errors[1]["path"], "logging.level");
    assert_eq!(
        (errors[1]["line"].as_u64(), errors[1]["column"].as_u64()),
        (Some(5), Some(10))
    );

    problem(
        t.http
            .put(t.url("/api/config/validate"))
            .body("a: [1,\n")
            .send()
            .await
            .unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    problem(
        t.http
            .put(t.url("/api/config/validate"))
            .body("")
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    problem(
        t.http
            .put(t.url("/api/config/validate"))
            .body(vec![0xff, 0xfe])
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    let huge = format!("profile: standalone\n# {}\n", "x".repeat(2 * 1024 * 1024));
    problem(
        t.http
            .put(t.url("/api/config/validate"))
            .body(huge)
            .send()
            .await
            .unwrap(),
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    t.node.stop().await.unwrap();
}

#[tokio::test]
async fn apply_is_compare_and_swap() {
    let t = TestNode::start().await;
    let (id0, doc0) = t.current().await;
    let doc1 = with_level(&doc0, "debug");

    let p = problem(
        t.apply(None, &doc1).await,
        StatusCode::PRECONDITION_REQUIRED,
    )
    .await;
    assert_eq!(p["type"], "urn:kos:problem:if-match-required");
    let wrong = format!("\"{}\"", "0".repeat(64));
    let p = problem(
        t.apply(Some(&wrong), &doc1).await,
        StatusCode::PRECONDITION_FAILED,
    )
    .await;
    assert_eq!(p["current_snapshot_id"], id0.as_str());
    assert_eq!(
        std::fs::read_to_string(t.profile_path()).unwrap(),
        doc0,
        "a refused apply changes nothing"
    );

    let r = t.apply(Some(&format!("\"{id0}\"")), &doc1).await;
    assert_eq!(r.status(), StatusCode::OK);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    let id1 = v["snapshot_id"].as_str().unwrap().to_string();
    assert_ne!(id1, id0);
    assert_eq!(etag, format!("\"{id1}\""));
    assert_eq!(v["previous_snapshot_id"], id0.as_str());
    assert_eq!(v["applied_live"], json!(["logging"]));
    assert_eq!(v["restart_required"], json!([]));
    assert_eq!(std::fs::read_to_string(t.profile_path()).unwrap(), doc1);
    assert_eq!(t.current().await.0, id1);

    // The old id no longer matches: a lost update is refused.
    problem(
        t.apply(Some(&format!("\"{id0}\"")), &doc0).await,
        StatusCode::PRECONDITION_FAILED,
    )
    .await;
    // `*` overwrites unconditionally.
    assert_eq!(t.apply(Some("*"), &doc0).await.status(), StatusCode::OK);
    assert_eq!(t.current().await.0, id0);
    t.node.stop().await.unwrap();
}

#[tokio::test]
async fn invalid_apply_changes_nothing() {
    let t = TestNode::start().await;
    let (id0, doc0) = t.current().await;
    let before = std::fs::read(t.profile_path()).unwrap();
    let hist = t.history_len().await;
    let bad = doc0
        .replace("  level: info ", "  level: nope ")
        .replace("  bus: memory", "  bus: carrier_pigeon");
    let p = problem(
        t.apply(Some(&id0), &bad).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    let errors = p["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{p}");
    assert!(
        errors
            .iter()
            .all(|e| e["file"] == "profiles/standalone.yaml" && e["line"].as_u64().unwrap() > 0)
    );
    assert!(
        errors[1]["message"]
            .as_str()
            .unwrap()
            .contains("carrier_pigeon")
    );
    assert_eq!(std::fs::read(t.profile_path()).unwrap(), before);
    assert_eq!(t.history_len().await, hist);
    assert_eq!(t.current().await.0, id0);
    let text = t.get("/metrics").await.text().await.unwrap();
    assert!(
        text.contains("kos_config_applies_total{outcome=\"invalid\"} 1"),
        "{text}"
    );
    t.node.stop().await.unwrap();
}

#[tokio::test]
async fn restart_sections_are_reported_and_live_ones_take_effect() {
    let t = TestNode::start().await;
    let (id0, doc0) = t.current().await;
    let doc1 = doc0.replace("request_timeout: 30s", "request_timeout: 45s");
    let v: Value = t.apply(Some(&id0), &doc1).await.json().await.unwrap();
    assert_eq!(v["restart_required"], json!(["api"]));
    assert_eq!(v["applied_live"], json!([]));
    let s = t.get_json("/api/config/status").await;
    assert_eq!(s["pending_restart"], json!(["api"]));
    assert_eq!(s["running_snapshot_id"], id0.as_str());
    assert_ne!(s["snapshot_id"], id0.as_str());
    // The default diff is running vs current: exactly what a restart would change.
    let mut d = t.get_json("/api/config/diff").await;
    // Each change says where the new value comes from (file:line:column).
    let origin = d["changes"][0]["origin"].take();
    assert!(
        origin.as_str().unwrap().starts_with("profiles/"),
        "{origin}"
    );
    d["changes"][0].as_object_mut().unwrap().remove("origin");
    assert_eq!(
        d["changes"],
        json!([{"path": "api.request_timeout", "op": "changed", "from": "30s", "to": "45s"}])
    );

    // A live section is active at once: the node's current config has it.
    let id1 = v["snapshot_id"].as_str().unwrap();
    let v: Value = t
        .apply(Some(id1), &with_level(&doc1, "warn"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["applied_live"], json!(["logging"]));
    assert_eq!(t.node.state.config.current().config.logging.level.0, "warn");
    t.node.stop().await.unwrap();
}

#[tokio::test]
async fn history_diff_and_rollback() {
    let t = TestNode::start().await;
    let (id0, doc0) = t.current().await;
    let v: Value = t
        .apply(Some(&id0), &with_level(&doc0, "debug"))
        .await
        .json()
        .await
        .unwrap();
    let id1 = v["snapshot_id"].as_str().unwrap().to_string();
    let v: Value = t
        .apply(Some(&id1), &with_level(&doc0, "error"))
        .await
        .json()
        .await
        .unwrap();
    let id2 = v["snapshot_id"].as_str().unwrap().to_string();

    let h = t.get_json("/api/config/history").await;
    let entries = h["entries"].as_array().unwrap();
    assert_eq!(
        entries
            .iter()
            .map(|e| e["id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        vec![&id2, &id1, &id0]
    );
    assert_eq!(entries[2]["action"], "init");
    assert_eq!(entries[0]["action"], "apply");
    assert_eq!(
        t.get_json("/api/config/history?limit=1").await["entries"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let mut d = t
        .get_json(&format!("/api/config/diff?from={}&to=current", &id0[..12]))
        .await;
    d["changes"][0].as_object_mut().unwrap().remove("origin");
    assert_eq!(
        d["changes"],
        json!([{"path": "logging.level", "op": "changed", "from": "info", "to": "error"}])
    );
    assert_eq!(
        t.get_json(&format!("/api/config/diff?from={id2}&to=current"))
            .await["identical"],
        true
    );
    problem(
        t.get("/api/config/diff?from=abcdef0123&to=current").await,
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        t.get("/api/config/diff?bogus=1").await,
        StatusCode::BAD_REQUEST,
    )
    .await;

    // Roll back to the first snapshot (by prefix): the document comes back byte for byte.
    let r = t
        .http
        .post(t.url("/api/config/rollback"))
        .json(&json!({"snapshot_id": &id0[..12]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["snapshot_id"], id0.as_str());
    assert_eq!(v["action"], "rollback");
    assert_eq!(std::fs::read_to_string(t.profile_path()).unwrap(), doc0);
    let h = t.get_json("/api/config/history").await;
    assert_eq!(h["entries"][0]["target"], id0.as_str());
    assert_eq!(h["entries"].as_array().unwrap().len(), 4);
    let r = t
        .http
        .post(t.url("/api/config/rollback"))
        .json(&json!({"snapshot_id": "f".repeat(64)}))
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::NOT_FOUND).await;
    let r = t
        .http
        .post(t.url("/api/config/rollback"))
        .header("if-match", format!("\"{id2}\""))
        .json(&json!({"snapshot_id": id1}))
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::PRECONDITION_FAILED).await;

    let ev = t.get_json("/api/events?limit=10").await;
    let kinds: Vec<&str> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        vec![
            "config_rolled_back",
            "config_applied",
            "config_applied",
            "node_started"
        ]
    );
    t.node.stop().await.unwrap();
}

#[tokio::test]
async fn profiles_crud() {
    let t = TestNode::start().await;
    let list = t.get_json("/api/profiles").await;
    assert_eq!(
        list["profiles"],
        json!([{"id": "standalone", "active": true, "profile": "standalone", "valid": true, "errors": 0}])
    );

    let edge = kos_config::preset(ProfileKind::Edge);
    let r = t
        .http
        .post(t.url("/api/profiles"))
        .json(&json!({"id": "lab", "document": edge}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["location"], "/api/profiles/lab");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["profile"], "edge");
    assert!(t.dir.path().join("profiles/lab.yaml").exists());
    let r = t
        .http
        .post(t.url("/api/profiles"))
        .json(&json!({"id": "lab", "document": edge}))
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::CONFLICT).await;
    let r = t
        .http
        .post(t.url("/api/profiles"))
        .json(
            &json!({"id": "bad", "document": "profile: edge\nstorage:\n  database: postgresql\n"}),
        )
        .send()
        .await
        .unwrap();
    let p = problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert!(
        p["errors"][0]["file"]
            .as_str()
            .unwrap()
            .ends_with("profiles/bad.yaml")
    );
    assert!(!t.dir.path().join("profiles/bad.yaml").exists());
    let r = t
        .http
        .post(t.url("/api/profiles"))
        .json(&json!({"id": "../etc", "document": edge}))
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::BAD_REQUEST).await;
    let r = t
        .http
        .post(t.url("/api/profiles"))
        .json(&json!({"id": "x"}))
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::BAD_REQUEST).await;

    assert_eq!(t.get_json("/api/profiles/lab").await["document"], edge);
    let changed = edge.replace("level: warn", "level: error");
    let r = t
        .http
        .put(t.url("/api/profiles/lab"))
        .body(changed.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        std::fs::read_to_string(t.dir.path().join("profiles/lab.yaml")).unwrap(),
        changed
    );
    problem(
        t.http
            .put(t.url("/api/profiles/ghost"))
            .body(changed)
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;

    // The diff API compares the current config with a stored profile.
    let d = t.get_json("/api/config/diff?profile=lab").await;
    assert!(
        d["changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["path"] == "profile"),
        "{d}"
    );

    // PUT on the active profile is an apply: If-Match required.
    let (id0, doc0) = t.current().await;
    problem(
        t.http
            .put(t.url("/api/profiles/standalone"))
            .body(doc0.clone())
            .send()
            .await
            .unwrap(),
        StatusCode::PRECONDITION_REQUIRED,
    )
    .await;
    let r = t
        .http
        .put(t.url("/api/profiles/standalone"))
        .header("if-match", &id0)
        .body(with_level(&doc0, "debug"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    problem(
        t.http
            .delete(t.url("/api/profiles/standalone"))
            .send()
            .await
            .unwrap(),
        StatusCode::CONFLICT,
    )
    .await;
    assert_eq!(
        t.http
            .delete(t.url("/api/profiles/lab"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    problem(
        t.http
            .delete(t.url("/api/profiles/lab"))
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(t.get("/api/profiles/lab").await, StatusCode::NOT_FOUND).await;
    t.node.stop().await.unwrap();
}

#[tokio::test]
async fn reload_from_disk_keeps_last_good_config() {
    let t = TestNode::start().await;
    let (id0, doc0) = t.current().await;
    std::fs::write(
        t.profile_path(),
        "profile: standalone\nlogging:\n  level: shouting\n",
    )
    .unwrap();
    assert!(!t.node.state.config.reload_from_disk().await.unwrap());
    assert_eq!(
        t.current().await.0,
        id0,
        "an invalid file on disk is not activated"
    );
    std::fs::write(t.profile_path(), with_level(&doc0, "debug")).unwrap();
    assert!(t.node.state.config.reload_from_disk().await.unwrap());
    assert_ne!(t.current().await.0, id0);
    let h = t.get_json("/api/config/history").await;
    assert_eq!(h["entries"][0]["action"], "external");
    t.node.stop().await.unwrap();
}

#[tokio::test]
async fn readyz_turns_503_while_draining() {
    let t = TestNode::start().await;
    let state = t.node.state.clone();
    let token = t.node.shutdown_token();
    token.cancel();
    assert!(!state.is_ready() || token.is_cancelled());
    t.node.wait().await.unwrap();
    assert!(!state.is_ready());
    // After stop the port is closed.
    assert!(
        t.http
            .get(format!("{}/healthz", t.base))
            .send()
            .await
            .is_err()
    );
}

/// Nine levels of nine aliases each ("billion laughs", under 512 bytes) would expand to 9^9
/// scalars. Every route that reads YAML refuses it with a located error, quickly, and the
/// node's memory stays where it was (issue 10: it used to allocate until it was killed).
fn alias_bomb() -> String {
    let mut doc =
        String::from("profile: standalone\na0: &a0 [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n");
    for i in 1..9 {
        let refs = vec![format!("*a{}", i - 1); 9].join(",");
        doc.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    doc
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test]
async fn alias_bomb_is_refused_by_every_yaml_route() {
    let t = TestNode::start().await;
    let bomb = alias_bomb();
    assert!(bomb.len() < 512, "{}", bomb.len());
    let (id, _) = t.current().await;
    let before = rss_bytes();
    let expect_refused = |p: &Value, what: &str| {
        let e = &p["errors"][0];
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains("expands to more than 100000 values"),
            "{what}: {p}"
        );
        assert!(e["line"].as_u64().unwrap() >= 3, "{what}: {p}");
    };
    let r = t
        .http
        .put(t.url("/api/config/validate"))
        .body(bomb.clone())
        .send()
        .await
        .unwrap();
    expect_refused(
        &problem(r, StatusCode::UNPROCESSABLE_ENTITY).await,
        "validate",
    );
    let r = t.apply(Some(&format!("\"{id}\"")), &bomb).await;
    expect_refused(&problem(r, StatusCode::UNPROCESSABLE_ENTITY).await, "apply");
    let r = t
        .http
        .post(t.url("/api/profiles"))
        .json(&json!({"id": "bomb", "document": bomb}))
        .send()
        .await
        .unwrap();
    expect_refused(
        &problem(r, StatusCode::UNPROCESSABLE_ENTITY).await,
        "create profile",
    );
    assert!(!t.dir.path().join("profiles/bomb.yaml").exists());
    let edge = kos_config::preset(ProfileKind::Edge);
    let r = t
        .http
        .post(t.url("/api/profiles"))
        .json(&json!({"id": "lab", "document": edge}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = t
        .http
        .put(t.url("/api/profiles/lab"))
        .body(bomb.clone())
        .send()
        .await
        .unwrap();
    expect_refused(
        &problem(r, StatusCode::UNPROCESSABLE_ENTITY).await,
        "replace profile",
    );
    assert_eq!(t.get_json("/api/profiles/lab").await["document"], edge);
    let r = t
        .http
        .put(t.url("/api/profiles/standalone"))
        .header("if-match", format!("\"{id}\""))
        .body(bomb.clone())
        .send()
        .await
        .unwrap();
    expect_refused(
        &problem(r, StatusCode::UNPROCESSABLE_ENTITY).await,
        "replace active profile",
    );
    // Nothing changed, and the bounded parse left no lasting allocation behind (the bound
    // allows ~10 MiB per parse; the unbounded one took gigabytes). The margin is wide: other
    // tests of this binary start nodes in the same process meanwhile.
    assert_eq!(t.current().await.0, id);
    let after = rss_bytes();
    assert!(
        after < before + 256 * 1024 * 1024,
        "RSS grew from {before} to {after} bytes"
    );
}

/// Issue 10: requests with a body are handled `MAX_BODIES_IN_FLIGHT` at a time (each may
/// buffer `api.max_body_bytes` and decode it many times over); one more is answered 503
/// before its body is read, requests without a body still pass, and a freed slot is usable
/// again. (Before, every connection could hold a body and its decoded form: no ceiling.)
#[tokio::test]
async fn requests_with_a_body_in_flight_are_bounded() {
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    let t = TestNode::start().await;
    let doc = t.current().await.1;
    let mut held = Vec::new();
    for _ in 0..kos_node::api::MAX_BODIES_IN_FLIGHT {
        let mut s = tokio::net::TcpStream::connect(t.node.addr).await.unwrap();
        // A body that never finishes arriving: the request holds its slot.
        s.write_all(
            b"PUT /api/config/validate HTTP/1.1\r\nhost: kos\r\n\
              content-type: application/yaml\r\ncontent-length: 1000000\r\n\r\nprofile: ",
        )
        .await
        .unwrap();
        held.push(s);
    }
    let validate = async || {
        t.http
            .put(t.url("/api/config/validate"))
            .body(doc.clone())
            .send()
            .await
            .unwrap()
    };
    kos_tests::fed::wait_until(
        "a request with a body over the limit is refused",
        Duration::from_secs(20),
        async || validate().await.status() == StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
    let r = validate().await;
    assert_eq!(r.headers()["retry-after"], "1");
    let p = problem(r, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(p["type"], "urn:kos:problem:busy");
    assert_eq!(t.get("/healthz").await.status(), StatusCode::OK);
    assert_eq!(t.get("/api/config/status").await.status(), StatusCode::OK);
    drop(held.pop());
    kos_tests::fed::wait_until(
        "a freed slot is taken again",
        Duration::from_secs(20),
        async || validate().await.status() == StatusCode::OK,
    )
    .await;
}

/// The API bounds its connections per source address (and in all): over the bound a new
/// connection is closed at once, and a freed slot is usable again.
#[tokio::test]
async fn connections_are_bounded_per_source_address() {
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    kos_config::layout::init_layout(dir.path(), ProfileKind::Standalone).unwrap();
    let mut o = NodeOptions::local(dir.path().to_path_buf());
    o.load.env = [(
        "KOS_API__MAX_CONNECTIONS_PER_IP".to_string(),
        "2".to_string(),
    )]
    .into();
    let node = start(o).await.unwrap();
    let held_a = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let _held_b = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    // The third from the same address is accepted by the kernel, then closed by the node.
    let mut third = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let mut buf = [0u8; 16];
    match tokio::time::timeout(Duration::from_secs(20), third.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        other => panic!("the third connection was not closed: {other:?}"),
    }
    let fresh = || Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let url = format!("http://{}/healthz", node.addr);
    assert!(fresh().get(&url).send().await.is_err(), "no slot: refused");
    drop(held_a);
    kos_tests::fed::wait_until(
        "a freed slot serves requests again",
        Duration::from_secs(20),
        async || {
            fresh()
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK)
        },
    )
    .await;
}

/// Issue 11: a long-lived node task that dies (here a service injected into the node's own
/// tracker, which panics) is logged and turns `/readyz` to 503, naming the task but not the
/// panic text; `/healthz` still answers. At shutdown every task is joined.
#[tokio::test]
async fn a_failed_node_task_turns_readyz_to_503() {
    let t = TestNode::start().await;
    assert_eq!(t.get_json("/readyz").await["status"], "ready");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    t.node.tasks().spawn_service("injected", async move {
        let _ = rx.await;
        panic!("injected failure with a secret");
    });
    // Still ready while the service runs.
    assert_eq!(t.get_json("/readyz").await["status"], "ready");
    tx.send(()).unwrap();
    let tasks = t.node.tasks().clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while tasks.failed_tasks().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the failure was not recorded"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let r = t
        .http
        .get(format!("{}/readyz", t.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body = r.text().await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["failed_tasks"], serde_json::json!(["injected"]));
    assert!(!body.contains("secret"), "{body}");
    assert_eq!(t.get_json("/healthz").await["status"], "ok");
    t.node.stop().await.unwrap();
    assert!(tasks.is_empty(), "{} tasks still running", tasks.len());
}
