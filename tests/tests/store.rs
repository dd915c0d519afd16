//! The repository suite, run against every database backend: SQLite always, PostgreSQL on a
//! throwaway server (a failure in CI when PostgreSQL cannot start; reported as not run
//! elsewhere). One suite, parameterized by backend.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use kos_node::store::{Backend, Db, EventLog, Meta, NewEvent};
use kos_tests::{Postgres, require};
use serde_json::json;

fn ev(kind: &str, n: i64) -> NewEvent {
    NewEvent {
        kind: kind.into(),
        actor: "test".into(),
        snapshot_id: Some(format!("s{n}")),
        detail: json!({"n": n, "text": "ünïcode ✓"}),
    }
}

async fn suite(db: &Db) {
    db.ping().await.unwrap();
    assert!(db.recent(10, None).await.unwrap().is_empty());
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(
            db.append(&ev(if n % 2 == 0 { "even" } else { "odd" }, n))
                .await
                .unwrap(),
        );
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");

    let page = db.recent(2, None).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![ids[4], ids[3]]
    );
    assert_eq!(page[0].detail, json!({"n": 4, "text": "ünïcode ✓"}));
    assert_eq!(page[0].snapshot_id.as_deref(), Some("s4"));
    assert_eq!(page[0].kind, "even");
    assert!(page[0].at_ms > 0);
    let next = db.recent(10, Some(page[1].id)).await.unwrap();
    assert_eq!(
        next.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![ids[2], ids[1], ids[0]]
    );

    let none = NewEvent {
        snapshot_id: None,
        ..ev("x", 9)
    };
    let id = db.append(&none).await.unwrap();
    assert_eq!(db.recent(1, None).await.unwrap()[0].id, id);
    assert_eq!(db.recent(1, None).await.unwrap()[0].snapshot_id, None);

    assert_eq!(db.get("k").await.unwrap(), None);
    db.put("k", "v1").await.unwrap();
    db.put("k", "v2").await.unwrap();
    assert_eq!(db.get("k").await.unwrap().as_deref(), Some("v2"));
    db.put("quote'\"", "a'b\"c").await.unwrap();
    assert_eq!(db.get("quote'\"").await.unwrap().as_deref(), Some("a'b\"c"));
}

#[tokio::test]
async fn sqlite_repositories() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kos.db");
    let db = Db::open_sqlite(&path, 4).await.unwrap();
    assert_eq!(db.backend(), Backend::Sqlite);
    suite(&db).await;
    db.close().await;
    // Reopening runs the migrations again (no-op) and keeps the data.
    let db = Db::open_sqlite(&path, 4).await.unwrap();
    assert_eq!(db.get("k").await.unwrap().as_deref(), Some("v2"));
    assert_eq!(db.recent(100, None).await.unwrap().len(), 6);
}

#[tokio::test]
async fn postgres_repositories() {
    let Some(pg) = require(
        "postgres_repositories",
        tokio::task::spawn_blocking(Postgres::start).await.unwrap(),
    ) else {
        return;
    };
    let db = Db::open_postgres(&pg.url, 4, 0, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(db.backend(), Backend::Postgres);
    suite(&db).await;
    db.close().await;
    let db = Db::open_postgres(&pg.url, 4, 0, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(db.get("k").await.unwrap().as_deref(), Some("v2"));
    assert_eq!(db.recent(100, None).await.unwrap().len(), 6);
    db.close().await;
}

// --- Availability: PostgreSQL down at start, and restarted while in use. ---

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use kos_config::Secret;
use kos_config::model::{Database, DatabaseKind};
use kos_node::backoff::Backoff;
use kos_node::store::StoreError;
use tokio_util::sync::CancellationToken;

fn quick_backoff(total: Duration) -> Backoff {
    Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_millis(500),
        give_up_after: Some(total),
    }
}

#[tokio::test]
async fn postgres_down_gives_up_with_an_error_naming_the_host_not_the_password() {
    // No server is needed to test the failure path: a port this test holds bound but not
    // listening refuses every connection, and nothing else can take it meanwhile.
    let held = tokio::net::TcpSocket::new_v4().unwrap();
    held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = held.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = Database {
        url: Some(format!("postgres://kos@127.0.0.1:{port}/kos")),
        password: Some(Secret::new("pw-that-must-not-leak")),
        connect_timeout: kos_config::model::Duration(Duration::from_secs(1)),
        ..Database::default()
    };
    let t0 = Instant::now();
    let err = Db::connect(
        &cfg,
        DatabaseKind::Postgresql,
        dir.path(),
        quick_backoff(Duration::from_millis(1200)),
        &CancellationToken::new(),
    )
    .await
    .unwrap_err();
    let waited = t0.elapsed();
    let text = format!("{err} / {err:?}");
    assert!(
        matches!(err, StoreError::GaveUp { attempts, .. } if attempts >= 4),
        "{text}"
    );
    assert!(text.contains(&format!("127.0.0.1:{port}/kos")), "{text}");
    assert!(!text.contains("pw-that-must-not-leak"), "{text}");
    assert!(
        text.contains("Connection refused"),
        "the cause is named: {text}"
    );
    assert!(waited >= Duration::from_millis(1200), "{waited:?}");

    // The node's shutdown stops the waiting at once.
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.cancel();
    });
    let t0 = Instant::now();
    let err = Db::connect(
        &cfg,
        DatabaseKind::Postgresql,
        dir.path(),
        quick_backoff(Duration::from_secs(60)),
        &cancel,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, StoreError::Cancelled { .. }), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    drop(held);
}

#[tokio::test]
async fn postgres_down_at_start_is_retried_until_it_comes_up() {
    let Some(mut pg) = require(
        "postgres_down_at_start_is_retried_until_it_comes_up",
        tokio::task::spawn_blocking(Postgres::start).await.unwrap(),
    ) else {
        return;
    };
    let mut pg = tokio::task::spawn_blocking(move || {
        pg.stop();
        pg
    })
    .await
    .unwrap();
    let url = pg.url.clone();
    let t0 = Instant::now();
    let opener = tokio::spawn(async move {
        Db::connect_postgres(
            &url,
            4,
            1,
            Duration::from_secs(2),
            quick_backoff(Duration::from_secs(30)),
            &CancellationToken::new(),
        )
        .await
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !opener.is_finished(),
        "still retrying while the server is down"
    );
    let pg = tokio::task::spawn_blocking(move || pg.start_again().map(|()| pg))
        .await
        .unwrap()
        .unwrap();
    let db = opener
        .await
        .unwrap()
        .expect("connects once the server is up");
    assert!(t0.elapsed() >= Duration::from_secs(2));
    let id = db.append(&ev("after_wait", 1)).await.unwrap();
    assert_eq!(db.recent(1, None).await.unwrap()[0].id, id);
    db.close().await;
    drop(pg);
}

#[tokio::test]
async fn postgres_restart_loses_no_acknowledged_write() {
    let Some(pg) = require(
        "postgres_restart_loses_no_acknowledged_write",
        tokio::task::spawn_blocking(Postgres::start).await.unwrap(),
    ) else {
        return;
    };
    let db = Db::open_postgres(&pg.url, 4, 2, Duration::from_secs(1))
        .await
        .unwrap();
    // Phases: 0 before the stop, 1 from the stop until the server is back, 2 after.
    let phase = Arc::new(AtomicU32::new(0));
    let writer = {
        let (db, phase) = (db.clone(), phase.clone());
        tokio::spawn(async move {
            let mut acked: Vec<(i64, i64, u32)> = Vec::new();
            let mut errors: Vec<(StoreError, u32)> = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(90);
            for n in 0.. {
                let p = phase.load(Ordering::SeqCst);
                match db.append(&ev("w", n)).await {
                    Ok(id) => acked.push((n, id, p)),
                    Err(e) => errors.push((e, p)),
                }
                let after = acked.iter().filter(|a| a.2 == 2).count();
                if after >= 20 || Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (acked, errors)
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    phase.store(1, Ordering::SeqCst);
    let mut pg = tokio::task::spawn_blocking(move || {
        let mut pg = pg;
        pg.stop();
        pg
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    pg = tokio::task::spawn_blocking(move || pg.start_again().map(|()| pg))
        .await
        .unwrap()
        .unwrap();
    phase.store(2, Ordering::SeqCst);
    let (acked, errors) = writer.await.unwrap();
    eprintln!(
        "acknowledged writes: {} before the stop, {} while stopping, {} after the restart; {} errors",
        acked.iter().filter(|a| a.2 == 0).count(),
        acked.iter().filter(|a| a.2 == 1).count(),
        acked.iter().filter(|a| a.2 == 2).count(),
        errors.len()
    );

    assert!(acked.iter().any(|a| a.2 == 0), "writes before the stop");
    assert!(
        acked.iter().filter(|a| a.2 == 2).count() >= 20,
        "writes succeed again after the restart: {} errors, last: {:?}",
        errors.len(),
        errors.last().map(|e| e.0.to_string())
    );
    assert!(!errors.is_empty(), "writes during the outage fail");
    // The server listens on a unix socket in its own directory; the URL names it by
    // `localhost:<port>` with `?host=<dir>`.
    let target = format!("localhost:{}/kos", pg.port);
    for (e, _) in &errors {
        assert!(
            matches!(e, StoreError::Unavailable { .. }),
            "a lost server is reported as unavailable: {e:?}"
        );
        assert!(e.to_string().contains(&target), "{e}");
    }
    // Every acknowledged write is there, with its content, after the restart.
    let all = db.recent(100_000, None).await.unwrap();
    let stored: std::collections::HashMap<i64, &kos_node::store::Event> =
        all.iter().map(|e| (e.id, e)).collect();
    for (n, id, _) in &acked {
        let e = stored
            .get(id)
            .unwrap_or_else(|| panic!("acknowledged write {n} (id {id}) lost"));
        assert_eq!(e.detail["n"], *n);
    }
    // Idempotent operations work on the first call after the restart too.
    db.put("after", "restart").await.unwrap();
    assert_eq!(db.get("after").await.unwrap().as_deref(), Some("restart"));
    db.close().await;
}
