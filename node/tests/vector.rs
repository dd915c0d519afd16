#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The vector store conformance suite: one set of cases, written against the
//! `VectorStore` trait, run against every backend.
//!
//! - `embedded::*` always runs (the in-process engine on a fresh SQLite file).
//! - `qdrant::*` runs against the Qdrant server at `KOS_TEST_QDRANT_URL` (gRPC, e.g.
//!   `http://127.0.0.1:6334`; API key from `KOS_TEST_QDRANT_API_KEY` if set). Without it each
//!   test prints `NOT RUN: <test>: KOS_TEST_QDRANT_URL is not set` and returns, in CI too: no
//!   Qdrant server can be installed on the build machines (issue 6 allows listing them).
//!
//! Embedded-only cases (persistence across reopen, limits, corrupt files, the daemon wiring)
//! follow the suite.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use kos_node::vector::embedded::{EmbeddedStore, Limits, SQLITE_FILE};
use kos_node::vector::{
    CollectionSpec, Condition, Distance, Filter, MAX_BATCH, MAX_LIMIT, MAX_PAYLOAD_BYTES,
    MatchValue, Point, Query, VectorError, VectorStore,
};
use serde_json::{Value, json};

/// A store under test, with a name prefix unique to this test run (a Qdrant server is
/// shared) and whatever must stay alive with it.
struct Fixture {
    store: Arc<dyn VectorStore>,
    prefix: String,
    _dir: Option<tempfile::TempDir>,
}

impl Fixture {
    fn name(&self, n: &str) -> String {
        format!("{}{n}", self.prefix)
    }
}

fn unique_prefix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("kos_test_{}_{nanos}_", std::process::id())
}

async fn embedded_fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join(SQLITE_FILE))
        .await
        .unwrap();
    Fixture {
        store: Arc::new(store),
        prefix: unique_prefix(),
        _dir: Some(dir),
    }
}

/// Says that a test did not run. Written to the stderr handle itself, not with `eprintln!`,
/// which the test harness captures (and hides for a passing test): the line must show in
/// a plain `cargo test`.
fn not_run(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "NOT RUN: {test}: {why}");
}

/// The Qdrant fixture, or `None` after printing why the test does not run.
#[allow(clippy::unused_async)]
async fn qdrant_fixture(test: &str) -> Option<Fixture> {
    let Ok(url) = std::env::var("KOS_TEST_QDRANT_URL") else {
        not_run(test, "KOS_TEST_QDRANT_URL is not set");
        return None;
    };
    #[cfg(feature = "qdrant")]
    {
        use kos_node::vector::qdrant::{QdrantStore, Timeouts};
        let key = std::env::var("KOS_TEST_QDRANT_API_KEY").ok();
        let store = QdrantStore::connect(&url, key, Timeouts::default()).unwrap();
        // A server that is set but unreachable is a failure, not a skip.
        store.health().await.unwrap();
        Some(Fixture {
            store: Arc::new(store),
            prefix: unique_prefix(),
            _dir: None,
        })
    }
    #[cfg(not(feature = "qdrant"))]
    {
        let _ = url;
        not_run(test, "this build has no `qdrant` feature");
        None
    }
}

/// Generates `embedded::<case>` and `qdrant::<case>` for every case.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test]
                async fn $case() {
                    let f = super::embedded_fixture().await;
                    super::cases::$case(&f).await;
                }
            )*
        }
        mod qdrant {
            $(
                #[tokio::test]
                async fn $case() {
                    let Some(f) = super::qdrant_fixture(concat!("qdrant::", stringify!($case))).await else {
                        return;
                    };
                    super::cases::$case(&f).await;
                }
            )*
        }
    };
}

conformance!(
    collections_create_info_list_delete,
    cosine_order_and_scores,
    dot_order_and_scores,
    euclid_order_and_scores,
    limit_keeps_the_best,
    filter_exact_match_and,
    upsert_same_id_overwrites,
    delete_points_by_id,
    payload_round_trips,
    dimension_mismatch_is_refused,
    invalid_input_is_refused,
    missing_collection,
);

fn point(id: u64, vector: &[f32], payload: Value) -> Point {
    Point {
        id,
        vector: vector.to_vec(),
        payload: payload.as_object().cloned().unwrap_or_default(),
    }
}

fn query(vector: &[f32], limit: usize) -> Query {
    Query {
        vector: vector.to_vec(),
        limit,
        filter: Filter::default(),
    }
}

fn cond(key: &str, value: MatchValue) -> Condition {
    Condition {
        key: key.into(),
        value,
    }
}

fn kw(s: &str) -> MatchValue {
    MatchValue::Keyword(s.into())
}

async fn create(f: &Fixture, name: &str, dimension: u32, distance: Distance) -> String {
    let spec = CollectionSpec {
        name: f.name(name),
        dimension,
        distance,
    };
    f.store.create_collection(&spec).await.unwrap();
    spec.name
}

/// Ids and scores of a search, checked against the expected order and scores.
async fn assert_search(f: &Fixture, c: &str, q: &Query, expect: &[(u64, f32)]) {
    let got = f.store.search(c, q).await.unwrap();
    let ids: Vec<u64> = got.iter().map(|p| p.id).collect();
    let want: Vec<u64> = expect.iter().map(|e| e.0).collect();
    assert_eq!(ids, want, "order of results for {q:?}: {got:?}");
    for (p, (_, s)) in got.iter().zip(expect) {
        assert!(
            (p.score - s).abs() < 1e-4,
            "score of point {}: got {}, expected {s}",
            p.id,
            p.score
        );
    }
}

mod cases {
    use super::*;

    pub async fn collections_create_info_list_delete(f: &Fixture) {
        let a = create(f, "a", 4, Distance::Cosine).await;
        let b = create(f, "b", 2, Distance::Euclid).await;
        let info = f.store.collection_info(&a).await.unwrap();
        assert_eq!(info.spec.dimension, 4);
        assert_eq!(info.spec.distance, Distance::Cosine);
        assert_eq!(info.points, 0);
        let again = CollectionSpec {
            name: a.clone(),
            dimension: 8,
            distance: Distance::Dot,
        };
        assert!(matches!(
            f.store.create_collection(&again).await,
            Err(VectorError::CollectionExists(n)) if n == a
        ));
        let listed: Vec<String> = f
            .store
            .list_collections()
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.spec.name)
            .filter(|n| n.starts_with(&f.prefix))
            .collect();
        assert_eq!(listed, vec![a.clone(), b.clone()]);
        assert!(f.store.delete_collection(&a).await.unwrap());
        assert!(!f.store.delete_collection(&a).await.unwrap());
        assert!(matches!(
            f.store.collection_info(&a).await,
            Err(VectorError::NoSuchCollection(_))
        ));
        // The name is free again, with a new spec.
        f.store.create_collection(&again).await.unwrap();
        assert_eq!(f.store.collection_info(&a).await.unwrap().spec.dimension, 8);
        f.store.delete_collection(&a).await.unwrap();
        f.store.delete_collection(&b).await.unwrap();
    }

    pub async fn cosine_order_and_scores(f: &Fixture) {
        let c = create(f, "cos", 3, Distance::Cosine).await;
        f.store
            .upsert(
                &c,
                &[
                    point(1, &[0.0, 1.0, 0.0], json!({})),
                    point(2, &[5.0, 0.0, 0.0], json!({})),
                    point(3, &[-3.0, 0.0, 0.0], json!({})),
                    point(4, &[1.0, 1.0, 0.0], json!({})),
                ],
            )
            .await
            .unwrap();
        let h = std::f32::consts::FRAC_1_SQRT_2;
        // Length does not matter for cosine: (5,0,0) is as close as it gets.
        assert_search(
            f,
            &c,
            &query(&[2.0, 0.0, 0.0], 10),
            &[(2, 1.0), (4, h), (1, 0.0), (3, -1.0)],
        )
        .await;
        f.store.delete_collection(&c).await.unwrap();
    }

    pub async fn dot_order_and_scores(f: &Fixture) {
        let c = create(f, "dot", 3, Distance::Dot).await;
        f.store
            .upsert(
                &c,
                &[
                    point(1, &[1.0, 0.0, 0.0], json!({})),
                    point(2, &[2.0, 0.0, 0.0], json!({})),
                    point(3, &[0.0, 5.0, 0.0], json!({})),
                    point(4, &[-1.0, 0.0, 0.0], json!({})),
                ],
            )
            .await
            .unwrap();
        // Query (3,1,0): scores 3, 6, 5, -3; length matters for dot.
        assert_search(
            f,
            &c,
            &query(&[3.0, 1.0, 0.0], 10),
            &[(2, 6.0), (3, 5.0), (1, 3.0), (4, -3.0)],
        )
        .await;
        f.store.delete_collection(&c).await.unwrap();
    }

    pub async fn euclid_order_and_scores(f: &Fixture) {
        let c = create(f, "euclid", 3, Distance::Euclid).await;
        f.store
            .upsert(
                &c,
                &[
                    point(1, &[1.0, 1.0, 1.0], json!({})),
                    point(2, &[2.0, 1.0, 1.0], json!({})),
                    point(3, &[4.0, 5.0, 1.0], json!({})),
                    point(4, &[1.0, 1.0, -1.0], json!({})),
                ],
            )
            .await
            .unwrap();
        // Distances from (1,1,1): 0, 1, 5, 2; closest first.
        assert_search(
            f,
            &c,
            &query(&[1.0, 1.0, 1.0], 10),
            &[(1, 0.0), (2, 1.0), (4, 2.0), (3, 5.0)],
        )
        .await;
        f.store.delete_collection(&c).await.unwrap();
    }

    pub async fn limit_keeps_the_best(f: &Fixture) {
        let c = create(f, "limit", 2, Distance::Dot).await;
        let points: Vec<Point> = (1..=50)
            .map(|i| point(i, &[i as f32, 0.0], json!({})))
            .collect();
        f.store.upsert(&c, &points).await.unwrap();
        assert_search(
            f,
            &c,
            &query(&[1.0, 0.0], 3),
            &[(50, 50.0), (49, 49.0), (48, 48.0)],
        )
        .await;
        assert_search(f, &c, &query(&[-1.0, 0.0], 1), &[(1, -1.0)]).await;
        assert_eq!(f.store.collection_info(&c).await.unwrap().points, 50);
        f.store.delete_collection(&c).await.unwrap();
    }

    pub async fn filter_exact_match_and(f: &Fixture) {
        let c = create(f, "filter", 2, Distance::Dot).await;
        f.store
            .upsert(
                &c,
                &[
                    point(1, &[1.0, 0.0], json!({"kind": "doc", "lang": "en", "year": 2024, "public": true, "tags": ["a", "b"], "meta": {"src": "web"}})),
                    point(2, &[2.0, 0.0], json!({"kind": "doc", "lang": "fr", "year": 2023, "public": false, "tags": ["b"]})),
                    point(3, &[3.0, 0.0], json!({"kind": "img", "lang": "en", "year": 2024, "public": true, "meta": {"src": "cam"}})),
                    point(4, &[4.0, 0.0], json!({"kind": "doc", "lang": "en", "year": "2024"})),
                ],
            )
            .await
            .unwrap();
        let ids = |must: Vec<Condition>| {
            let q = Query {
                vector: vec![1.0, 0.0],
                limit: 10,
                filter: Filter { must },
            };
            let store = f.store.clone();
            let c = c.clone();
            async move {
                store
                    .search(&c, &q)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|p| p.id)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(ids(vec![cond("kind", kw("doc"))]).await, vec![4, 2, 1]);
        assert_eq!(
            ids(vec![cond("kind", kw("doc")), cond("lang", kw("en"))]).await,
            vec![4, 1],
            "conditions are ANDed"
        );
        // An integer matches integers only, not the string "2024".
        assert_eq!(
            ids(vec![cond("year", MatchValue::Integer(2024))]).await,
            vec![3, 1]
        );
        assert_eq!(
            ids(vec![cond("public", MatchValue::Bool(false))]).await,
            vec![2]
        );
        // An array matches when it contains the value.
        assert_eq!(ids(vec![cond("tags", kw("b"))]).await, vec![2, 1]);
        // Dotted keys reach into nested objects.
        assert_eq!(ids(vec![cond("meta.src", kw("cam"))]).await, vec![3]);
        assert_eq!(
            ids(vec![cond("kind", kw("img")), cond("lang", kw("fr"))]).await,
            Vec::<u64>::new()
        );
        assert_eq!(ids(vec![cond("missing", kw("x"))]).await, Vec::<u64>::new());
        // The filter applies before the limit: the best matching points, not the best points
        // filtered afterwards.
        let q = Query {
            vector: vec![1.0, 0.0],
            limit: 1,
            filter: Filter {
                must: vec![cond("lang", kw("fr"))],
            },
        };
        let got = f.store.search(&c, &q).await.unwrap();
        assert_eq!(got.iter().map(|p| p.id).collect::<Vec<_>>(), vec![2]);
        assert_eq!(got[0].payload["lang"], json!("fr"));
        f.store.delete_collection(&c).await.unwrap();
    }

    pub async fn upsert_same_id_overwrites(f: &Fixture) {
        let c = create(f, "overwrite", 2, Distance::Euclid).await;
        f.store
            .upsert(
                &c,
                &[
                    point(7, &[0.0, 0.0], json!({"v": 1})),
                    point(8, &[5.0, 5.0], json!({"v": 1})),
                ],
            )
            .await
            .unwrap();
        f.store
            .upsert(&c, &[point(7, &[10.0, 0.0], json!({"v": 2}))])
            .await
            .unwrap();
        assert_eq!(f.store.collection_info(&c).await.unwrap().points, 2);
        let got = f.store.search(&c, &query(&[10.0, 0.0], 2)).await.unwrap();
        assert_eq!(got[0].id, 7);
        assert!(got[0].score.abs() < 1e-4, "the new vector is used");
        assert_eq!(
            got[0].payload,
            json!({"v": 2}).as_object().cloned().unwrap()
        );
        f.store.delete_collection(&c).await.unwrap();
    }

    pub async fn delete_points_by_id(f: &Fixture) {
        let c = create(f, "delete", 2, Distance::Dot).await;
        let points: Vec<Point> = (1..=5)
            .map(|i| point(i, &[i as f32, 1.0], json!({"i": i})))
            .collect();
        f.store.upsert(&c, &points).await.unwrap();
        // Unknown ids are ignored.
        f.store.delete_points(&c, &[2, 5, 999]).await.unwrap();
        assert_eq!(f.store.collection_info(&c).await.unwrap().points, 3);
        assert_search(
            f,
            &c,
            &query(&[1.0, 0.0], 10),
            &[(4, 4.0), (3, 3.0), (1, 1.0)],
        )
        .await;
        // A deleted id can come back.
        f.store
            .upsert(&c, &[point(5, &[0.5, 0.0], json!({}))])
            .await
            .unwrap();
        assert_eq!(f.store.collection_info(&c).await.unwrap().points, 4);
        f.store.delete_collection(&c).await.unwrap();
    }

    pub async fn payload_round_trips(f: &Fixture) {
        let c = create(f, "payload", 2, Distance::Cosine).await;
        let payload = json!({
            "s": "héllo \"world\"",
            "i": -42,
            "big": 9_007_199_254_740_993_i64,
            "f": 1.5,
            "t": true,
            "n": null,
            "list": [1, "two", false],
            "obj": {"nested": {"deep": [{"x": 1}]}}
        });
        f.store
            .upsert(&c, &[point(u64::MAX, &[1.0, 2.0], payload.clone())])
            .await
            .unwrap();
        let got = f.store.search(&c, &query(&[1.0, 2.0], 1)).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id, u64::MAX);
        assert_eq!(Value::Object(got[0].payload.clone()), payload);
        f.store.delete_collection(&c).await.unwrap();
    }

    pub async fn dimension_mismatch_is_refused(f: &Fixture) {
        let c = create(f, "dims", 3, Distance::Cosine).await;
        f.store
            .upsert(&c, &[point(1, &[1.0, 0.0, 0.0], json!({}))])
            .await
            .unwrap();
        // One bad point rejects the whole batch.
        let err = f
            .store
            .upsert(
                &c,
                &[
                    point(2, &[1.0, 1.0, 0.0], json!({})),
                    point(3, &[1.0, 1.0], json!({})),
                ],
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                &err,
                VectorError::DimensionMismatch {
                    expected: 3,
                    got: 2,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            format!("point 3: the vector has 2 dimensions, collection `{c}` expects 3")
        );
        assert!(err.is_client_error());
        let err = f
            .store
            .search(&c, &query(&[1.0, 0.0, 0.0, 0.0], 1))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                VectorError::DimensionMismatch {
                    expected: 3,
                    got: 4,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(f.store.collection_info(&c).await.unwrap().points, 1);
        f.store.delete_collection(&c).await.unwrap();
    }

    pub async fn invalid_input_is_refused(f: &Fixture) {
        let s = &f.store;
        for (name, dimension) in [("", 3), ("a b", 3), ("../x", 3), ("ok", 0), ("ok", 4097)] {
            let spec = CollectionSpec {
                name: if name.is_empty() {
                    String::new()
                } else {
                    f.name(name)
                },
                dimension,
                distance: Distance::Dot,
            };
            let err = s.create_collection(&spec).await.unwrap_err();
            assert!(
                matches!(
                    err,
                    VectorError::InvalidName { .. } | VectorError::InvalidDimension(_)
                ),
                "{name:?}/{dimension}: {err}"
            );
        }
        let c = create(f, "invalid", 3, Distance::Cosine).await;
        let up = |points: Vec<Point>| {
            let s = s.clone();
            let c = c.clone();
            async move { s.upsert(&c, &points).await.unwrap_err() }
        };
        let err = up(vec![point(1, &[1.0, f32::NAN, 0.0], json!({}))]).await;
        assert!(
            matches!(err, VectorError::NonFinite { index: 1, .. }),
            "{err}"
        );
        let err = up(vec![point(1, &[f32::INFINITY, 0.0, 0.0], json!({}))]).await;
        assert!(
            matches!(err, VectorError::NonFinite { index: 0, .. }),
            "{err}"
        );
        let err = up(vec![point(1, &[0.0, 0.0, 0.0], json!({}))]).await;
        assert!(matches!(err, VectorError::ZeroVector { .. }), "{err}");
        let err = up(vec![]).await;
        assert!(matches!(err, VectorError::Empty(_)), "{err}");
        let many: Vec<Point> = (0..=MAX_BATCH as u64)
            .map(|i| point(i, &[1.0, 0.0, 0.0], json!({})))
            .collect();
        let err = up(many).await;
        assert!(matches!(err, VectorError::TooMany { .. }), "{err}");
        let err = up(vec![
            point(1, &[1.0, 0.0, 0.0], json!({})),
            point(1, &[0.0, 1.0, 0.0], json!({})),
        ])
        .await;
        assert!(matches!(err, VectorError::DuplicateId(1)), "{err}");
        let big = "x".repeat(MAX_PAYLOAD_BYTES);
        let err = up(vec![point(9, &[1.0, 0.0, 0.0], json!({ "big": big }))]).await;
        assert!(
            matches!(err, VectorError::PayloadTooLarge { id: 9, .. }),
            "{err}"
        );
        for limit in [0, MAX_LIMIT + 1] {
            let err = s
                .search(&c, &query(&[1.0, 0.0, 0.0], limit))
                .await
                .unwrap_err();
            assert!(
                matches!(err, VectorError::Empty(_) | VectorError::TooMany { .. }),
                "limit {limit}: {err}"
            );
        }
        let err = s
            .search(&c, &query(&[f32::NAN, 0.0, 0.0], 1))
            .await
            .unwrap_err();
        assert!(matches!(err, VectorError::NonFinite { .. }), "{err}");
        for key in ["", "a..b", ".a"] {
            let q = Query {
                vector: vec![1.0, 0.0, 0.0],
                limit: 1,
                filter: Filter {
                    must: vec![cond(key, kw("x"))],
                },
            };
            let err = s.search(&c, &q).await.unwrap_err();
            assert!(
                matches!(err, VectorError::InvalidFilter(_)),
                "{key:?}: {err}"
            );
        }
        let err = s.delete_points(&c, &[]).await.unwrap_err();
        assert!(matches!(err, VectorError::Empty(_)), "{err}");
        // Nothing of the above was stored.
        assert_eq!(s.collection_info(&c).await.unwrap().points, 0);
        s.delete_collection(&c).await.unwrap();
    }

    pub async fn missing_collection(f: &Fixture) {
        let c = f.name("never_created");
        let s = &f.store;
        let no = |r: Result<(), VectorError>| matches!(r, Err(VectorError::NoSuchCollection(n)) if n == c);
        assert!(no(s.upsert(&c, &[point(1, &[1.0], json!({}))]).await));
        assert!(no(s.search(&c, &query(&[1.0], 1)).await.map(|_| ())));
        assert!(no(s.collection_info(&c).await.map(|_| ())));
        assert!(!s.delete_collection(&c).await.unwrap());
    }
}

// --- embedded only -------------------------------------------------------------------------

#[tokio::test]
async fn embedded_persists_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/dir").join(SQLITE_FILE);
    let q = Query {
        vector: vec![1.0, 0.5, 0.0, 0.0],
        limit: 10,
        filter: Filter::default(),
    };
    let before = {
        let s = EmbeddedStore::open(&path).await.unwrap();
        for (name, d) in [("keep", Distance::Cosine), ("gone", Distance::Dot)] {
            s.create_collection(&CollectionSpec {
                name: name.into(),
                dimension: 4,
                distance: d,
            })
            .await
            .unwrap();
        }
        // More than one load page.
        let points: Vec<Point> = (0..3000u64)
            .map(|i| {
                point(
                    i.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    &[(i % 7) as f32 + 1.0, (i % 3) as f32, (i % 5) as f32, 1.0],
                    json!({"i": i}),
                )
            })
            .collect();
        for chunk in points.chunks(MAX_BATCH) {
            s.upsert("keep", chunk).await.unwrap();
        }
        s.upsert(
            "keep",
            &[point(0, &[9.0, 9.0, 9.0, 9.0], json!({"i": "new"}))],
        )
        .await
        .unwrap();
        s.delete_points("keep", &[0x9E37_79B9_7F4A_7C15])
            .await
            .unwrap();
        s.upsert("gone", &[point(1, &[1.0, 1.0, 1.0, 1.0], json!({}))])
            .await
            .unwrap();
        s.delete_collection("gone").await.unwrap();
        let r = s.search("keep", &q).await.unwrap();
        s.close().await;
        r
    };
    let s = EmbeddedStore::open(&path).await.unwrap();
    let list = s.list_collections().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].spec.name, "keep");
    assert_eq!(list[0].spec.distance, Distance::Cosine);
    assert_eq!(list[0].points, 2999);
    assert_eq!(s.search("keep", &q).await.unwrap(), before);
    let ids: Vec<u64> = s
        .search(
            "keep",
            &Query {
                vector: vec![1.0, 1.0, 1.0, 1.0],
                limit: 1,
                filter: Filter::default(),
            },
        )
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(ids, vec![0], "the overwrite survived the reopen");
}

#[tokio::test]
async fn embedded_memory_only_keeps_nothing_on_disk() {
    let s = EmbeddedStore::in_memory();
    s.create_collection(&CollectionSpec {
        name: "m".into(),
        dimension: 2,
        distance: Distance::Dot,
    })
    .await
    .unwrap();
    s.upsert("m", &[point(1, &[1.0, 2.0], json!({}))])
        .await
        .unwrap();
    assert_eq!(s.collection_info("m").await.unwrap().points, 1);
    assert!(s.health().await.unwrap().contains("memory only"));
}

#[tokio::test]
async fn embedded_limits_are_enforced() {
    let s = EmbeddedStore::in_memory_with_limits(Limits {
        max_collections: 2,
        max_points: 3,
    });
    for n in ["a", "b"] {
        s.create_collection(&CollectionSpec {
            name: n.into(),
            dimension: 1,
            distance: Distance::Dot,
        })
        .await
        .unwrap();
    }
    let err = s
        .create_collection(&CollectionSpec {
            name: "c".into(),
            dimension: 1,
            distance: Distance::Dot,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, VectorError::TooManyCollections(2)), "{err}");
    let pts: Vec<Point> = (1..=3).map(|i| point(i, &[i as f32], json!({}))).collect();
    s.upsert("a", &pts).await.unwrap();
    let err = s
        .upsert("a", &[point(4, &[1.0], json!({}))])
        .await
        .unwrap_err();
    assert!(
        matches!(err, VectorError::CollectionFull { max: 3, .. }),
        "{err}"
    );
    assert!(err.is_client_error());
    // Overwriting an existing id does not grow the collection.
    s.upsert("a", &[point(3, &[7.0], json!({}))]).await.unwrap();
    s.delete_points("a", &[1]).await.unwrap();
    s.upsert("a", &[point(4, &[1.0], json!({}))]).await.unwrap();
}

#[tokio::test]
async fn embedded_refuses_a_corrupt_file() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(SQLITE_FILE);
    {
        let s = EmbeddedStore::open(&path).await.unwrap();
        s.create_collection(&CollectionSpec {
            name: "c".into(),
            dimension: 2,
            distance: Distance::Dot,
        })
        .await
        .unwrap();
        s.upsert("c", &[point(5, &[1.0, 2.0], json!({}))])
            .await
            .unwrap();
        s.close().await;
    }
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::query("UPDATE vector_points SET vector = x'0000'")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let err = EmbeddedStore::open(&path).await.unwrap_err();
    assert!(matches!(err, VectorError::Corrupt(_)), "{err}");
    assert_eq!(
        err.to_string(),
        "corrupt vector data: collection `c` point 5: 2 bytes of vector, expected 8"
    );
}

#[tokio::test]
async fn embedded_concurrent_writers_and_readers() {
    let s: Arc<dyn VectorStore> = Arc::new(EmbeddedStore::in_memory());
    s.create_collection(&CollectionSpec {
        name: "c".into(),
        dimension: 8,
        distance: Distance::Euclid,
    })
    .await
    .unwrap();
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50u64 {
                let id = t * 1000 + i;
                s.upsert("c", &[point(id, &[id as f32; 8], json!({"t": t}))])
                    .await
                    .unwrap();
                let r = s.search("c", &query(&[id as f32; 8], 1)).await.unwrap();
                assert_eq!(r[0].id, id);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(s.collection_info("c").await.unwrap().points, 200);
    let q = Query {
        vector: vec![0.0; 8],
        limit: MAX_LIMIT,
        filter: Filter {
            must: vec![cond("t", MatchValue::Integer(2))],
        },
    };
    assert_eq!(s.search("c", &q).await.unwrap().len(), 50);
}

/// The daemon opens the configured engine: `storage.vector: embedded` on a standalone node
/// gives an embedded store backed by `data/vectors.db`, kept across a restart.
#[tokio::test]
async fn daemon_opens_the_embedded_store() {
    use kos_node::daemon::{NodeOptions, start};
    let dir = tempfile::tempdir().unwrap();
    kos_config::layout::init_layout(dir.path(), kos_config::ProfileKind::Standalone).unwrap();
    let profile = dir.path().join("profiles/standalone.yaml");
    let text = std::fs::read_to_string(&profile).unwrap();
    assert!(text.contains("  vector: none"), "{text}");
    std::fs::write(
        &profile,
        text.replace("  vector: none", "  vector: embedded"),
    )
    .unwrap();

    let node = start(NodeOptions::local(dir.path())).await.unwrap();
    let vectors = node.state.vectors.clone().expect("vector store configured");
    assert_eq!(vectors.backend(), "embedded");
    vectors
        .create_collection(&CollectionSpec {
            name: "docs".into(),
            dimension: 2,
            distance: Distance::Cosine,
        })
        .await
        .unwrap();
    vectors
        .upsert("docs", &[point(1, &[1.0, 0.0], json!({"title": "a"}))])
        .await
        .unwrap();
    assert!(dir.path().join("data/vectors.db-wal").exists());
    node.stop().await.unwrap();
    assert!(dir.path().join("data").join(SQLITE_FILE).is_file());
    // Closed at shutdown even though a handle is still held here: the WAL was checkpointed
    // into the file and removed.
    assert!(
        !dir.path().join("data/vectors.db-wal").exists(),
        "the vector store was not closed"
    );
    drop(vectors);

    let node = start(NodeOptions::local(dir.path())).await.unwrap();
    let vectors = node.state.vectors.clone().unwrap();
    assert_eq!(vectors.collection_info("docs").await.unwrap().points, 1);
    drop(vectors);
    node.stop().await.unwrap();

    // `none` (the preset) opens nothing.
    let dir2 = tempfile::tempdir().unwrap();
    kos_config::layout::init_layout(dir2.path(), kos_config::ProfileKind::Standalone).unwrap();
    let node = start(NodeOptions::local(dir2.path())).await.unwrap();
    assert!(node.state.vectors.is_none());
    assert!(!dir2.path().join("data").join(SQLITE_FILE).exists());
    node.stop().await.unwrap();
}

/// A Qdrant server that is not there, or does not answer, gives an error naming the URL and
/// the cause within the configured timeouts (no server needed for this one).
#[cfg(feature = "qdrant")]
#[tokio::test]
async fn qdrant_unreachable_or_silent_server_is_a_clear_error() {
    use std::time::{Duration, Instant};

    use kos_node::vector::qdrant::{QdrantStore, Timeouts};
    let timeouts = Timeouts {
        connect: Duration::from_millis(500),
        request: Duration::from_secs(1),
    };
    // Nothing listens on a port this test holds bound but not listening: every connection is
    // refused, and nothing else can take the port meanwhile.
    let held = tokio::net::TcpSocket::new_v4().unwrap();
    held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = held.local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let s = QdrantStore::connect(&url, Some("k3y-never-printed".into()), timeouts).unwrap();
    assert!(!format!("{s:?}").contains("k3y-never-printed"));
    let err = s.health().await.unwrap_err();
    assert!(matches!(err, VectorError::Unavailable { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("the vector store at {url} is unavailable: ")),
        "{text}"
    );
    assert!(!err.is_client_error());
    let spec = CollectionSpec {
        name: "c".into(),
        dimension: 2,
        distance: Distance::Dot,
    };
    let err = s.create_collection(&spec).await.unwrap_err();
    assert!(matches!(err, VectorError::Unavailable { .. }), "{err}");
    // Input is still checked first, without a round trip.
    let bad = CollectionSpec {
        name: "a/b".into(),
        ..spec.clone()
    };
    assert!(matches!(
        s.create_collection(&bad).await,
        Err(VectorError::InvalidName { .. })
    ));

    // A server that accepts connections and never answers: the request timeout ends the call.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            conns.push(c);
        }
    });
    let s = QdrantStore::connect(&url, None, timeouts).unwrap();
    let t = Instant::now();
    let err = s.health().await.unwrap_err();
    assert!(matches!(err, VectorError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains(&url), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    held.abort();

    // A malformed URL is refused at once.
    let err = QdrantStore::connect("http://[::1", None, timeouts).unwrap_err();
    assert!(err.to_string().contains("invalid vector.url"), "{err}");
}

/// `/api/vectors` over the embedded engine: the whole cycle and its problem+json errors.
#[tokio::test]
async fn http_api_over_the_embedded_store() {
    use kos_node::daemon::{NodeOptions, start};
    use reqwest::StatusCode;
    let dir = tempfile::tempdir().unwrap();
    kos_config::layout::init_layout(dir.path(), kos_config::ProfileKind::Standalone).unwrap();
    let profile = dir.path().join("profiles/standalone.yaml");
    let text = std::fs::read_to_string(&profile).unwrap();
    std::fs::write(
        &profile,
        text.replace("  vector: none", "  vector: embedded"),
    )
    .unwrap();
    let node = start(NodeOptions::local(dir.path())).await.unwrap();
    let base = format!("http://{}/api/vectors", node.addr);
    let http = reqwest::Client::new();

    let r = http
        .post(&base)
        .json(&json!({"name": "docs", "dimension": 2, "distance": "dot"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"name": "docs", "dimension": 2, "distance": "dot", "points": 0})
    );
    let r = http
        .post(&base)
        .json(&json!({"name": "docs", "dimension": 2, "distance": "dot"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let r = http
        .post(&base)
        .json(&json!({"name": "x", "dimension": 2, "distance": "manhattan"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    let r = http
        .put(format!("{base}/docs/points"))
        .json(&json!({"points": [
            {"id": 1, "vector": [1.0, 0.0], "payload": {"lang": "en"}},
            {"id": 2, "vector": [2.0, 0.0], "payload": {"lang": "fr"}},
            {"id": 3, "vector": [3.0, 0.0]}
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = http
        .post(format!("{base}/docs/search"))
        .json(&json!({"vector": [1.0, 0.0], "limit": 2, "filter": {"must": [{"key": "lang", "match": "en"}]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"results": [{"id": 1, "score": 1.0, "payload": {"lang": "en"}}]})
    );

    // A wrong dimension is a 400 problem naming the point.
    let r = http
        .put(format!("{base}/docs/points"))
        .json(&json!({"points": [{"id": 9, "vector": [1.0, 2.0, 3.0]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["detail"],
        "point 9: the vector has 3 dimensions, collection `docs` expects 2"
    );

    let r = http
        .post(format!("{base}/docs/points/delete"))
        .json(&json!({"ids": [1, 2]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = http.get(format!("{base}/docs")).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["points"], 1);
    let r = http.get(&base).send().await.unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["backend"], "embedded");
    assert_eq!(body["collections"][0]["name"], "docs");

    let r = http.delete(format!("{base}/docs")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = http.delete(format!("{base}/docs")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = http
        .post(format!("{base}/docs/search"))
        .json(&json!({"vector": [1.0, 0.0], "limit": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    node.stop().await.unwrap();
}
