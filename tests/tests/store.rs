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
