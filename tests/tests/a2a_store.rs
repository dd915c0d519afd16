//! The A2A task repository (`kos_node::a2a::store::TaskStore`) and the push notification
//! configs (`kos_node::a2a::push::Push`), one suite run against every database backend:
//! SQLite always, PostgreSQL on a throwaway server (a failure in CI when PostgreSQL cannot
//! start; reported as not run elsewhere). This suite is the backend-agnostic contract of the
//! store; the unit tests in `node/src/a2a/store.rs` keep only what is not about a backend.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, UNIX_EPOCH};

use kos_agents::lifecycle::{AgentUpdate, TaskRecord};
use kos_agents::limits::Limits;
use kos_agents::requests::{
    ListTaskPushNotificationConfigsRequest, ListTasksRequest, TaskPushNotificationConfig, TaskQuery,
};
use kos_agents::types::{Message, Part, Role, StreamResponse, TaskState, Timestamp};
use kos_config::model::A2aPush;
use kos_node::a2a::push::Push;
use kos_node::a2a::store::{Created, RecordRow, SaveError, TaskStore};
use kos_node::store::{Db, now_ms};
use kos_tests::{Postgres, require};

/// Status times: `at(s)` is `s` seconds after a fixed instant of 2023.
fn at(s: u64) -> Timestamp {
    Timestamp::from_system_time(UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s))
}

fn ms(s: u64) -> i64 {
    i64::try_from(at(s).unix_millis()).unwrap()
}

fn limits() -> Limits {
    Limits::default()
}

/// A SUBMITTED task whose first message is `m-<id>`, its status at `at(s)`.
fn record(id: &str, ctx: &str, s: u64) -> TaskRecord {
    let m = Message::new(Role::User, format!("m-{id}"), vec![Part::text("hi")]);
    TaskRecord::create(id.into(), ctx.into(), m, at(s), &limits()).unwrap()
}

fn status(r: &mut TaskRecord, state: TaskState, s: u64) -> Vec<StreamResponse> {
    r.apply(
        AgentUpdate::Status {
            state,
            message: None,
        },
        at(s),
        &limits(),
    )
    .unwrap()
}

fn query() -> TaskQuery {
    ListTasksRequest::default().to_query().unwrap()
}

fn ids(records: &[TaskRecord]) -> Vec<String> {
    records.iter().map(|r| r.task().id.clone()).collect()
}

/// Rows of `table` whose `column` is `value` (straight SQL: what the store left behind).
async fn count(db: &Db, table: &str, column: &str, value: &str) -> i64 {
    use sqlx::Row as _;
    let sql = format!("SELECT COUNT(*) FROM {table} WHERE {column} = $1");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(value)
        .fetch_one(db.pool())
        .await
        .unwrap()
        .try_get::<i64, _>(0)
        .unwrap()
}

fn push_config(url: &str, id: &str) -> TaskPushNotificationConfig {
    TaskPushNotificationConfig {
        tenant: String::new(),
        id: id.into(),
        task_id: String::new(),
        url: url.into(),
        token: "tok".into(),
        authentication: None,
    }
}

fn push(db: &Db) -> Push {
    Push::new(
        db.clone(),
        &A2aPush {
            enabled: true,
            ..A2aPush::default()
        },
    )
    .unwrap()
}

/// A webhook target that passes the SSRF guard without DNS (a public address literal);
/// nothing is ever delivered to it: the push worker does not run in this suite.
const HOOK: &str = "https://93.184.215.14/a2a";

/// The whole contract, in one database. Sections use their own agent ids or time ranges so
/// they do not see each other's tasks (the claim section runs first: every later task that
/// could be claimed is created after it).
async fn suite(db: &Db, second: &Db) {
    let s = TaskStore::new(db.clone());
    claims(&s).await;
    concurrent_claims(&s, &TaskStore::new(second.clone())).await;
    create_and_idempotency(&s).await;
    optimistic_lock_and_event_order(&s).await;
    list(&s).await;
    purge(db, &s).await;
    push_configs(db).await;
}

/// Only SUBMITTED and WORKING tasks whose lease ran out are claimed, each once, with the
/// new lease.
async fn claims(s: &TaskStore) {
    let far = now_ms() + 3_600_000;
    s.create("claim", "o", "m1", &record("o1", "c", 1000), &[], 1)
        .await
        .unwrap();
    let mut working = record("o2", "c", 1000);
    let ev = status(&mut working, TaskState::Working, 1001);
    s.create("claim", "o", "m2", &working, &ev, 1)
        .await
        .unwrap();
    s.create("claim", "o", "m3", &record("o3", "c", 1000), &[], far)
        .await
        .unwrap();
    let mut done = record("o4", "c", 1000);
    let ev = done.cancel(at(1001), &limits()).unwrap();
    s.create("claim", "o", "m4", &done, &ev, 1).await.unwrap();
    let mut waiting = record("o5", "c", 1000);
    let ev = status(&mut waiting, TaskState::InputRequired, 1001);
    s.create("claim", "o", "m5", &waiting, &ev, 0)
        .await
        .unwrap();

    let lease = now_ms() + 30_000;
    let claimed = s.claim_orphans(lease, 100).await.unwrap();
    let got: BTreeSet<_> = claimed.iter().map(|t| t.record.task().id.clone()).collect();
    assert_eq!(got, BTreeSet::from(["o1".into(), "o2".into()]));
    let o2 = claimed.iter().find(|t| t.record.task().id == "o2").unwrap();
    assert_eq!(
        (o2.agent.as_str(), o2.owner.as_str(), o2.seq),
        ("claim", "o", 1)
    );
    assert_eq!(o2.record.state(), TaskState::Working);
    assert!(
        s.claim_orphans(lease, 100).await.unwrap().is_empty(),
        "claimed once"
    );
    // A lease that runs out again (its replica died too) makes the task claimable again.
    s.set_lease("o3", 1).await.unwrap();
    let again = s.claim_orphans(lease, 100).await.unwrap();
    assert_eq!(
        ids(&again.into_iter().map(|t| t.record).collect::<Vec<_>>()),
        ["o3"]
    );
    // `limit` bounds one call.
    for i in 0..3 {
        let id = format!("lim{i}");
        s.create("claim", "o", &id, &record(&id, "c", 1000 + i), &[], 1)
            .await
            .unwrap();
    }
    assert_eq!(s.claim_orphans(lease, 2).await.unwrap().len(), 2);
    assert_eq!(s.claim_orphans(lease, 2).await.unwrap().len(), 1);
    assert!(s.claim_orphans(lease, 2).await.unwrap().is_empty());
}

/// Two replicas (two connection pools) claim at the same time: every orphan is claimed by
/// exactly one of them.
async fn concurrent_claims(a: &TaskStore, b: &TaskStore) {
    let mut all = HashSet::new();
    for round in 0..8u64 {
        let mut expected = BTreeSet::new();
        for i in 0..16u64 {
            let id = format!("race-{round}-{i}");
            a.create(
                "race",
                "o",
                &id,
                &record(&id, "c", 2000 + round * 100 + i),
                &[],
                1,
            )
            .await
            .unwrap();
            expected.insert(id);
        }
        let lease = now_ms() + 30_000;
        let (x, y) = tokio::join!(a.claim_orphans(lease, 100), b.claim_orphans(lease, 100));
        let x: Vec<String> = x
            .unwrap()
            .into_iter()
            .map(|t| t.record.task().id.clone())
            .collect();
        let y: Vec<String> = y
            .unwrap()
            .into_iter()
            .map(|t| t.record.task().id.clone())
            .collect();
        let mut claimed = BTreeSet::new();
        for id in x.iter().chain(&y) {
            assert!(
                claimed.insert(id.clone()),
                "{id} claimed twice: {x:?} / {y:?}"
            );
            assert!(all.insert(id.clone()), "{id} claimed in an earlier round");
        }
        assert_eq!(
            claimed, expected,
            "round {round}: every orphan claimed once"
        );
    }
}

/// `(agent, owner, messageId)` is accepted once; the duplicate names the first task and
/// stores nothing.
async fn create_and_idempotency(s: &TaskStore) {
    let r = record("t1", "c1", 3000);
    let ev = [StreamResponse::Task(r.task().clone())];
    assert_eq!(
        s.create("echo", "local:a", "m-1", &r, &ev, 0)
            .await
            .unwrap(),
        Created::New(1)
    );
    let other = record("t2", "c1", 3001);
    assert_eq!(
        s.create("echo", "local:a", "m-1", &other, &ev, 0)
            .await
            .unwrap(),
        Created::Duplicate("t1".into())
    );
    assert!(
        s.get("t2").await.unwrap().is_none(),
        "a duplicate stores nothing"
    );
    assert!(s.events_after("t2", 0, 10).await.unwrap().is_empty());
    // Another principal, or another agent, may use the same messageId.
    assert_eq!(
        s.create("echo", "local:b", "m-1", &other, &[], 0)
            .await
            .unwrap(),
        Created::New(0)
    );
    assert_eq!(
        s.create("other", "local:a", "m-1", &record("t3", "c1", 3002), &[], 0)
            .await
            .unwrap(),
        Created::New(0)
    );
    assert_eq!(
        s.find_message("echo", "local:a", "m-1").await.unwrap(),
        Some("t1".into())
    );
    assert_eq!(
        s.find_message("echo", "local:b", "m-1").await.unwrap(),
        Some("t2".into())
    );
    assert_eq!(
        s.find_message("other", "local:a", "m-1").await.unwrap(),
        Some("t3".into())
    );
    assert_eq!(
        s.find_message("echo", "local:c", "m-1").await.unwrap(),
        None
    );
    let got = s.get("t1").await.unwrap().unwrap();
    assert_eq!(
        (got.agent.as_str(), got.owner.as_str(), got.seq),
        ("echo", "local:a", 1)
    );
    assert_eq!(got.record, r, "the record round-trips");
    assert_eq!(s.get("nope").await.unwrap(), None);
}

/// A save names the `seq` it read: a stale one is a conflict that changes nothing. Events are
/// numbered on from the task's `seq` and read back in order.
async fn optimistic_lock_and_event_order(s: &TaskStore) {
    let mut r = record("lock", "c", 4000);
    let first = [StreamResponse::Task(r.task().clone())];
    assert_eq!(
        s.create("echo", "o", "m-lock", &r, &first, 0)
            .await
            .unwrap(),
        Created::New(1)
    );
    let working = status(&mut r, TaskState::Working, 4001);
    let seq = s
        .save(
            "echo",
            "o",
            1,
            &RecordRow::of(&r).unwrap(),
            &working,
            Some("m-lock-2"),
        )
        .await
        .unwrap();
    assert_eq!(seq, 2);
    assert_eq!(
        s.find_message("echo", "o", "m-lock-2").await.unwrap(),
        Some("lock".into()),
        "a message accepted in a save is idempotent too"
    );
    // Another writer read seq 1 too: its save is refused and leaves everything as it was.
    let mut stale = s.get("lock").await.unwrap().unwrap().record;
    let ev = stale.cancel(at(4002), &limits()).unwrap();
    assert!(matches!(
        s.save(
            "echo",
            "o",
            1,
            &RecordRow::of(&stale).unwrap(),
            &ev,
            Some("m-stale")
        )
        .await,
        Err(SaveError::Conflict)
    ));
    let got = s.get("lock").await.unwrap().unwrap();
    assert_eq!((got.seq, got.record.state()), (2, TaskState::Working));
    assert_eq!(s.events_after("lock", 0, 100).await.unwrap().len(), 2);
    assert_eq!(s.find_message("echo", "o", "m-stale").await.unwrap(), None);
    // A save of an unknown task is a conflict as well.
    let ghost = record("ghost", "c", 4000);
    assert!(matches!(
        s.save("echo", "o", 0, &RecordRow::of(&ghost).unwrap(), &[], None)
            .await,
        Err(SaveError::Conflict)
    ));

    // Several events in one save, then the final one.
    let mut more = status(&mut r, TaskState::Working, 4003);
    more.extend(status(&mut r, TaskState::Working, 4004));
    let seq = s
        .save("echo", "o", 2, &RecordRow::of(&r).unwrap(), &more, None)
        .await
        .unwrap();
    assert_eq!(seq, 4);
    let done = status(&mut r, TaskState::Completed, 4005);
    assert_eq!(
        s.save("echo", "o", 4, &RecordRow::of(&r).unwrap(), &done, None)
            .await
            .unwrap(),
        5
    );
    let got = s.get("lock").await.unwrap().unwrap();
    assert_eq!((got.seq, got.record.state()), (5, TaskState::Completed));
    assert_eq!(got.record, r);
    assert_eq!(s.state("lock").await.unwrap(), Some(TaskState::Completed));
    assert_eq!(s.state("ghost").await.unwrap(), None);

    let all = s.events_after("lock", 0, 100).await.unwrap();
    assert_eq!(
        all.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    let mut expected = first.to_vec();
    expected.extend(working);
    expected.extend(more);
    expected.extend(done);
    assert_eq!(
        all.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(),
        expected
    );
    // After a seq, with a limit; nothing after the last; nothing of other tasks.
    let mid = s.events_after("lock", 2, 2).await.unwrap();
    assert_eq!(mid.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [3, 4]);
    assert!(s.events_after("lock", 5, 100).await.unwrap().is_empty());
    assert_eq!(
        s.events_after("t1", 0, 100)
            .await
            .unwrap()
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>(),
        [1]
    );
}

/// Newest status first, by owner, context, state and status time; pages cover every task
/// once; `total` counts all pages; direct-message tasks are not listed.
async fn list(s: &TaskStore) {
    let far = now_ms() + 3_600_000;
    // l0..l6 of agent `lister`: owners me (l0..l4) and you (l5, l6), contexts even/odd,
    // l1 and l3 WORKING; status times increase with the number.
    for i in 0..7u64 {
        let id = format!("l{i}");
        let mut r = record(&id, if i % 2 == 0 { "even" } else { "odd" }, 5000 + i * 10);
        let ev = if i == 1 || i == 3 {
            status(&mut r, TaskState::Working, 5000 + i * 10 + 1)
        } else {
            Vec::new()
        };
        let owner = if i < 5 { "me" } else { "you" };
        s.create("lister", owner, &id, &r, &ev, far).await.unwrap();
    }
    // Answered with a direct message: stored, never listed.
    let mut direct = record("direct", "even", 5100);
    let reply = Message::new(Role::Agent, "reply", vec![Part::text("hello")]);
    let ev = direct
        .apply(AgentUpdate::Reply(reply), at(5101), &limits())
        .unwrap();
    assert!(direct.is_message_only());
    s.create("lister", "me", "direct", &direct, &ev, 0)
        .await
        .unwrap();
    assert!(s.get("direct").await.unwrap().is_some());

    let mut q = query();
    q.page_size = 2;
    let mut pages = Vec::new();
    loop {
        let p = s.list("lister", Some("me"), &q).await.unwrap().unwrap();
        assert_eq!(p.total, 5, "total counts every page");
        pages.push(ids(&p.records));
        if p.next_page_token.is_empty() {
            break;
        }
        q.page_token = Some(p.next_page_token);
    }
    assert_eq!(
        pages,
        [
            vec!["l4".to_owned(), "l3".into()],
            vec!["l2".into(), "l1".into()],
            vec!["l0".into()]
        ]
    );
    // Every owner's (an admin's view).
    let mut q = query();
    let all = s.list("lister", None, &q).await.unwrap().unwrap();
    assert_eq!(
        (ids(&all.records), all.total, all.next_page_token.as_str()),
        (
            vec![
                "l6".to_owned(),
                "l5".into(),
                "l4".into(),
                "l3".into(),
                "l2".into(),
                "l1".into(),
                "l0".into()
            ],
            7,
            ""
        )
    );
    q.context_id = Some("odd".into());
    let odd = s.list("lister", None, &q).await.unwrap().unwrap();
    assert_eq!(
        (ids(&odd.records), odd.total),
        (vec!["l5".to_owned(), "l3".into(), "l1".into()], 3)
    );
    q.status = Some(TaskState::Working);
    let odd_working = s.list("lister", Some("me"), &q).await.unwrap().unwrap();
    assert_eq!(
        (ids(&odd_working.records), odd_working.total),
        (vec!["l3".to_owned(), "l1".into()], 2)
    );
    q.context_id = None;
    q.status = Some(TaskState::Submitted);
    let submitted = s.list("lister", Some("you"), &q).await.unwrap().unwrap();
    assert_eq!(
        (ids(&submitted.records), submitted.total),
        (vec!["l6".to_owned(), "l5".into()], 2)
    );
    q.status = None;
    q.status_timestamp_after = Some(at(5040));
    let recent = s.list("lister", Some("me"), &q).await.unwrap().unwrap();
    assert_eq!(
        (ids(&recent.records), recent.total),
        (vec!["l4".to_owned()], 1)
    );
    // Paging with a filter: the cursor keeps the filter's order.
    let mut q = query();
    q.page_size = 1;
    q.context_id = Some("even".into());
    let p1 = s.list("lister", None, &q).await.unwrap().unwrap();
    assert_eq!((ids(&p1.records), p1.total), (vec!["l6".to_owned()], 4));
    q.page_token = Some(p1.next_page_token);
    let p2 = s.list("lister", None, &q).await.unwrap().unwrap();
    assert_eq!((ids(&p2.records), p2.total), (vec!["l4".to_owned()], 4));
    // Another agent's, nobody's, and tokens this node did not issue.
    assert_eq!(
        s.list("nobody", None, &query())
            .await
            .unwrap()
            .unwrap()
            .total,
        0
    );
    assert_eq!(
        s.list("lister", Some("nobody"), &query())
            .await
            .unwrap()
            .unwrap()
            .records,
        []
    );
    for bad in ["garbage!", "", "bm9jb2xvbg"] {
        let mut q = query();
        q.page_token = Some(bad.into());
        assert!(
            s.list("lister", None, &q).await.unwrap().is_err(),
            "token {bad:?}"
        );
    }
}

/// Terminal tasks older than the cut go with their events, messages, push configs and
/// queued notifications; newer ones and running ones stay.
async fn purge(db: &Db, s: &TaskStore) {
    let p = push(db);
    // p-old: canceled long ago, with two accepted messages, a push config and a queued
    // notification. p-new: canceled after the cut. p-run: WORKING, older than the cut.
    let mut old = record("p-old", "c", 100);
    let ev = [StreamResponse::Task(old.task().clone())];
    s.create("purge", "o", "m-p-old", &old, &ev, 0)
        .await
        .unwrap();
    let ev = status(&mut old, TaskState::Working, 101);
    s.save(
        "purge",
        "o",
        1,
        &RecordRow::of(&old).unwrap(),
        &ev,
        Some("m-p-old-2"),
    )
    .await
    .unwrap();
    p.create_config("p-old", push_config(HOOK, "cfg"))
        .await
        .unwrap();
    let ev = old.cancel(at(102), &limits()).unwrap();
    s.save("purge", "o", 2, &RecordRow::of(&old).unwrap(), &ev, None)
        .await
        .unwrap();
    assert_eq!(p.enqueue("p-old", &ev[0]).await.unwrap(), 1);

    let mut new = record("p-new", "c", 100);
    let ev = new.cancel(at(900), &limits()).unwrap();
    s.create("purge", "o", "m-p-new", &new, &ev, 0)
        .await
        .unwrap();
    p.create_config("p-new", push_config(HOOK, "cfg"))
        .await
        .unwrap();
    assert_eq!(p.enqueue("p-new", &ev[0]).await.unwrap(), 1);

    let mut run = record("p-run", "c", 100);
    let ev = status(&mut run, TaskState::Working, 101);
    s.create("purge", "o", "m-p-run", &run, &ev, now_ms() + 3_600_000)
        .await
        .unwrap();

    let tables = [
        ("a2a_tasks", "id"),
        ("a2a_task_events", "task_id"),
        ("a2a_messages", "task_id"),
        ("a2a_push_configs", "task_id"),
        ("a2a_push_outbox", "task_id"),
    ];
    let rows = async |id: &str| {
        let mut v = Vec::new();
        for (t, c) in tables {
            v.push(count(db, t, c, id).await);
        }
        v
    };
    assert_eq!(rows("p-old").await, [1, 3, 2, 1, 1]);
    assert_eq!(rows("p-new").await, [1, 1, 1, 1, 1]);

    assert_eq!(s.purge(ms(500)).await.unwrap(), 1);
    assert_eq!(
        rows("p-old").await,
        [0, 0, 0, 0, 0],
        "nothing of p-old is left"
    );
    assert!(s.get("p-old").await.unwrap().is_none());
    assert_eq!(s.find_message("purge", "o", "m-p-old").await.unwrap(), None);
    assert_eq!(
        s.find_message("purge", "o", "m-p-old-2").await.unwrap(),
        None
    );
    assert_eq!(p.get_config("p-old", "cfg").await.unwrap(), None);
    assert_eq!(rows("p-new").await, [1, 1, 1, 1, 1], "newer than the cut");
    assert_eq!(rows("p-run").await[..3], [1, 1, 1], "not terminal");
    assert_eq!(s.purge(ms(500)).await.unwrap(), 0);
    // A later cut takes p-new too, never the running task.
    assert_eq!(s.purge(ms(1000)).await.unwrap(), 1);
    assert_eq!(rows("p-new").await, [0, 0, 0, 0, 0]);
    assert!(s.get("p-run").await.unwrap().is_some());
}

/// Push notification config CRUD: create (generated or given id, replace by id), get, list
/// in pages by id, delete (with its queued notifications).
async fn push_configs(db: &Db) {
    let p = push(db);
    let made = p.create_config("pc", push_config(HOOK, "")).await.unwrap();
    assert_eq!(made.task_id, "pc");
    assert!(!made.id.is_empty(), "an id is generated");
    assert_eq!(
        p.get_config("pc", &made.id).await.unwrap(),
        Some(made.clone())
    );
    let mut replaced = push_config("https://93.184.215.14/other", &made.id);
    replaced.token = "tok2".into();
    p.create_config("pc", replaced).await.unwrap();
    let got = p.get_config("pc", &made.id).await.unwrap().unwrap();
    assert_eq!(
        (got.url.as_str(), got.token.as_str()),
        ("https://93.184.215.14/other", "tok2")
    );
    for id in ["a", "b", "c"] {
        p.create_config("pc", push_config(HOOK, id)).await.unwrap();
    }
    p.create_config("pc-other", push_config(HOOK, "a"))
        .await
        .unwrap();
    assert_eq!(p.get_config("pc", "nope").await.unwrap(), None);
    assert_eq!(p.get_config("nope", "a").await.unwrap(), None);

    let mut req = ListTaskPushNotificationConfigsRequest {
        tenant: String::new(),
        task_id: "pc".into(),
        page_size: 2,
        page_token: String::new(),
    };
    let mut seen = Vec::new();
    loop {
        let page = p.list_configs(&req).await.unwrap();
        assert!(page.configs.len() <= 2);
        assert!(page.configs.iter().all(|c| c.task_id == "pc"));
        seen.extend(page.configs.iter().map(|c| c.id.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        req.page_token = page.next_page_token;
    }
    let mut expected = vec!["a".to_owned(), "b".into(), "c".into(), made.id.clone()];
    expected.sort();
    assert_eq!(seen, expected, "every config once, in id order");

    // Deleting a config drops its queued notifications, not the others'.
    let ev = StreamResponse::Task(record("pc", "c", 1).task().clone());
    assert_eq!(p.enqueue("pc", &ev).await.unwrap(), 4);
    assert!(p.delete_config("pc", "a").await.unwrap());
    assert!(!p.delete_config("pc", "a").await.unwrap());
    assert_eq!(p.get_config("pc", "a").await.unwrap(), None);
    assert_eq!(count(db, "a2a_push_outbox", "task_id", "pc").await, 3);
    assert_eq!(count(db, "a2a_push_outbox", "config_id", "a").await, 0);
    assert!(p.get_config("pc-other", "a").await.unwrap().is_some());
    req.page_token.clear();
    req.page_size = 0;
    assert_eq!(p.list_configs(&req).await.unwrap().configs.len(), 3);
}

#[tokio::test]
async fn sqlite_task_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kos.db");
    let db = Db::open_sqlite(&path, 4).await.unwrap();
    let second = Db::open_sqlite(&path, 4).await.unwrap();
    suite(&db, &second).await;
    second.close().await;
    db.close().await;
    // Durable: a reopened database has the tasks.
    let db = Db::open_sqlite(&path, 4).await.unwrap();
    let s = TaskStore::new(db.clone());
    assert_eq!(s.get("lock").await.unwrap().unwrap().seq, 5);
    db.close().await;
}

#[tokio::test]
async fn postgres_task_store() {
    let Some(pg) = require(
        "postgres_task_store",
        tokio::task::spawn_blocking(Postgres::start).await.unwrap(),
    ) else {
        return;
    };
    let db = Db::open_postgres(&pg.url, 8, 0, Duration::from_secs(10))
        .await
        .unwrap();
    // The second replica's pool.
    let second = Db::open_postgres(&pg.url, 8, 0, Duration::from_secs(10))
        .await
        .unwrap();
    suite(&db, &second).await;
    second.close().await;
    db.close().await;
    let db = Db::open_postgres(&pg.url, 4, 0, Duration::from_secs(10))
        .await
        .unwrap();
    let s = TaskStore::new(db.clone());
    assert_eq!(s.get("lock").await.unwrap().unwrap().seq, 5);
    db.close().await;
}
