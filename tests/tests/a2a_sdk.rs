//! The official A2A Python SDK (`a2a-sdk` 1.3.0 from PyPI) as an independent client of the
//! node's built-in `echo` agent: `tests/a2a/sdk_client.py` runs every scenario (card, blocking
//! and `returnImmediately` sends, streams, get, list, cancel, subscribe, push notifications to
//! a local webhook, the version header, auth) over JSON-RPC and over HTTP+JSON against an
//! in-process node on 127.0.0.1:0 with local JWT auth.
//!
//! Needs a Python with a2a-sdk 1.3.0: `KOS_TEST_A2A_PYTHON`, else the venv `.ci/run` makes
//! (`$HOME/.cache/kos-a2a-venv`). In CI a missing SDK is a failure, elsewhere the test prints
//! `NOT RUN` and returns.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, bail};
use kos_config::ProfileKind;
use kos_node::auth::Role;
use kos_node::auth::local::mint_named;
use kos_node::daemon::{NodeOptions, start};
use kos_tests::require;

fn sdk_python() -> Result<PathBuf> {
    let mut candidates: Vec<String> = Vec::new();
    if let Ok(p) = std::env::var("KOS_TEST_A2A_PYTHON") {
        candidates.push(p);
    }
    if let Ok(home) = std::env::var("HOME") {
        candidates.push(format!("{home}/.cache/kos-a2a-venv/bin/python"));
    }
    let check = "import importlib.metadata as m, a2a.client\n\
                 v = m.version('a2a-sdk'); assert v == '1.3.0', v";
    match kos_tests::python_with(&candidates, check) {
        Some(p) => Ok(p),
        None => bail!(
            "no Python with a2a-sdk 1.3.0 (tried {}; .ci/run installs it in ~/.cache/kos-a2a-venv, or set KOS_TEST_A2A_PYTHON)",
            candidates.join(", ")
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_sdk_drives_the_echo_agent_over_both_bindings() {
    let Some(python) = require("a2a_sdk", sdk_python()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    kos_config::layout::init_layout(dir.path(), ProfileKind::Standalone).unwrap();
    let path = dir.path().join("profiles/standalone.yaml");
    // Loopback webhooks: the script's receiver listens on 127.0.0.1.
    kos_tests::a2a::replace_sections(
        &path,
        &["auth:"],
        "auth:\n  jwt: enabled\na2a:\n  push:\n    allow_private: true\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("agents/echo.yaml"),
        "enabled: true\nmax_concurrent_tasks: 16\n",
    )
    .unwrap();
    let node = start(NodeOptions::local(dir.path().to_path_buf()))
        .await
        .unwrap();
    let config = node.state.config.current().config.clone();
    let id = node.state.identity.id().to_string();
    let token = mint_named(
        dir.path(),
        &config,
        &id,
        "sdk",
        Role::Agent,
        Duration::from_secs(3600),
    )
    .unwrap()
    .unwrap();
    let base = format!("http://{}", node.addr);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("a2a/sdk_client.py");
    for binding in ["jsonrpc", "rest"] {
        let out = tokio::time::timeout(
            Duration::from_secs(180),
            tokio::process::Command::new(&python)
                .arg(&script)
                .args([
                    "--card-url",
                    &format!("{base}/a2a/echo/.well-known/agent-card.json"),
                ])
                .args([
                    "--node-card-url",
                    &format!("{base}/.well-known/agent-card.json"),
                ])
                .args(["--token", &token, "--binding", binding])
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("the SDK client finishes within 180 s")
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        println!("--- a2a-sdk 1.3.0, binding {binding}:\n{stdout}");
        assert!(
            out.status.success(),
            "a2a-sdk scenarios failed over {binding}:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    node.stop().await.unwrap();
}
