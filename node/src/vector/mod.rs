//! Vector store: collections of fixed-dimension vectors with a JSON payload, searched by
//! similarity with an optional payload filter.
//!
//! One async trait, [`VectorStore`], two implementations:
//!
//! - [`embedded::EmbeddedStore`] (always built): exact search over vectors held in memory and
//!   persisted in their own SQLite file; no server. For standalone and edge nodes.
//! - `qdrant::QdrantStore` (cargo feature `qdrant`): a Qdrant server over gRPC.
//!
//! Every input is checked here, before either backend sees it ([`validate_spec`],
//! [`validate_points`], [`validate_query`], [`validate_ids`]), so both give the same error for
//! the same mistake. Scores follow Qdrant: cosine similarity for `cosine` (vectors are
//! normalized on insert), the dot product for `dot` (higher is better), the Euclidean distance
//! for `euclid` (lower is better). Results are always best first.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub mod embedded;
#[cfg(feature = "qdrant")]
pub mod qdrant;

/// Longest collection name.
pub const MAX_NAME_LEN: usize = 64;
/// Largest vector dimension.
pub const MAX_DIMENSION: u32 = 4096;
/// Most points in one upsert or delete.
pub const MAX_BATCH: usize = 1024;
/// Largest payload of one point, as compact JSON.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Most results of one search.
pub const MAX_LIMIT: usize = 1000;
/// Most conditions in one filter.
pub const MAX_CONDITIONS: usize = 16;
/// Longest payload key (a dotted path) in a filter.
pub const MAX_KEY_LEN: usize = 256;
/// Longest string value in a filter.
pub const MAX_MATCH_LEN: usize = 1024;

/// Errors of the vector store. Variants up to `CollectionFull` are the caller's mistake (an
/// HTTP API maps them to 4xx, see [`VectorError::is_client_error`]); the rest are the store's.
#[derive(Debug, thiserror::Error)]
pub enum VectorError {
    #[error(
        "invalid collection name `{name}`: {reason} (1-{MAX_NAME_LEN} characters of a-z, A-Z, 0-9, `_`, `-`)"
    )]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid dimension {0}: expected 1..={MAX_DIMENSION}")]
    InvalidDimension(u64),
    #[error("collection `{0}` already exists")]
    CollectionExists(String),
    #[error("collection `{0}` does not exist")]
    NoSuchCollection(String),
    #[error(
        "{what}: the vector has {got} dimensions, collection `{collection}` expects {expected}"
    )]
    DimensionMismatch {
        what: String,
        collection: String,
        expected: u32,
        got: usize,
    },
    #[error("{what}: component {index} of the vector is not a finite number")]
    NonFinite { what: String, index: usize },
    #[error("{what}: the zero vector has no direction, so it cannot be compared by cosine")]
    ZeroVector { what: String },
    #[error("{0} is empty")]
    Empty(&'static str),
    #[error("too many {what}: {got}, at most {max}")]
    TooMany {
        what: &'static str,
        got: usize,
        max: usize,
    },
    #[error("point {id}: the payload is {got} bytes of JSON, at most {MAX_PAYLOAD_BYTES}")]
    PayloadTooLarge { id: u64, got: usize },
    #[error("point {0} appears more than once in one request")]
    DuplicateId(u64),
    #[error("invalid filter: {0}")]
    InvalidFilter(String),
    #[error("collection `{name}` is full: at most {max} points in the embedded engine")]
    CollectionFull { name: String, max: usize },
    #[error("too many collections: at most {0} in the embedded engine")]
    TooManyCollections(usize),
    #[error("the vector store at {url} is unavailable: {reason}")]
    Unavailable { url: String, reason: String },
    #[error("the vector store rejected the request: {0}")]
    Backend(String),
    #[error("vector storage failed: {0}")]
    Storage(#[from] sqlx::Error),
    #[error("vector storage migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot create the vector storage directory {path}: {source}")]
    Dir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt vector data: {0}")]
    Corrupt(String),
}

impl VectorError {
    /// Whether the request was at fault (bad input, unknown or existing collection, full),
    /// as opposed to the store failing.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            Self::InvalidName { .. }
                | Self::InvalidDimension(_)
                | Self::CollectionExists(_)
                | Self::NoSuchCollection(_)
                | Self::DimensionMismatch { .. }
                | Self::NonFinite { .. }
                | Self::ZeroVector { .. }
                | Self::Empty(_)
                | Self::TooMany { .. }
                | Self::PayloadTooLarge { .. }
                | Self::DuplicateId(_)
                | Self::InvalidFilter(_)
                | Self::CollectionFull { .. }
                | Self::TooManyCollections(_)
        )
    }
}

/// How two vectors are compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distance {
    /// Cosine similarity, in [-1, 1]; higher is closer.
    Cosine,
    /// Dot product; higher is closer.
    Dot,
    /// Euclidean distance, ≥ 0; lower is closer.
    Euclid,
}

impl Distance {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cosine => "cosine",
            Self::Dot => "dot",
            Self::Euclid => "euclid",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "cosine" => Some(Self::Cosine),
            "dot" => Some(Self::Dot),
            "euclid" => Some(Self::Euclid),
            _ => None,
        }
    }

    /// Whether `a` is a better score than `b` under this distance.
    pub fn better(self, a: f32, b: f32) -> bool {
        match self {
            Self::Cosine | Self::Dot => a > b,
            Self::Euclid => a < b,
        }
    }
}

/// What a collection holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionSpec {
    pub name: String,
    pub dimension: u32,
    pub distance: Distance,
}

/// A collection and its size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CollectionInfo {
    #[serde(flatten)]
    pub spec: CollectionSpec,
    pub points: u64,
}

/// A point to store. Upserting an existing id replaces its vector and payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub id: u64,
    pub vector: Vec<f32>,
    #[serde(default)]
    pub payload: Map<String, Value>,
}

/// An exact-match value in a filter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MatchValue {
    Bool(bool),
    Integer(i64),
    Keyword(String),
}

impl MatchValue {
    /// Whether a payload value matches: equal, or an array containing an equal element
    /// (Qdrant's rule for arrays).
    fn matches(&self, v: &Value) -> bool {
        match v {
            Value::Array(items) => items.iter().any(|i| self.matches_scalar(i)),
            _ => self.matches_scalar(v),
        }
    }

    fn matches_scalar(&self, v: &Value) -> bool {
        match (self, v) {
            (Self::Bool(a), Value::Bool(b)) => a == b,
            (Self::Integer(a), Value::Number(n)) => n.as_i64() == Some(*a),
            (Self::Keyword(a), Value::String(b)) => a == b,
            _ => false,
        }
    }
}

/// One condition: the payload value at `key` (a dotted path into nested objects) equals
/// `value`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    pub key: String,
    #[serde(rename = "match")]
    pub value: MatchValue,
}

/// All conditions must hold (AND). An empty filter matches every point.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    #[serde(default)]
    pub must: Vec<Condition>,
}

impl Filter {
    /// Whether a payload satisfies every condition.
    pub fn matches(&self, payload: &Map<String, Value>) -> bool {
        self.must.iter().all(|c| {
            lookup(payload, &c.key)
                .map(|v| c.value.matches(v))
                .unwrap_or(false)
        })
    }
}

/// The value at a dotted path (`a.b.c`) in a payload.
fn lookup<'a>(payload: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    let mut parts = key.split('.');
    let mut v = payload.get(parts.next()?)?;
    for p in parts {
        v = v.as_object()?.get(p)?;
    }
    Some(v)
}

/// A search.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Query {
    pub vector: Vec<f32>,
    /// How many results, best first.
    pub limit: usize,
    #[serde(default)]
    pub filter: Filter,
}

/// A search result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoredPoint {
    pub id: u64,
    pub score: f32,
    pub payload: Map<String, Value>,
}

/// A boxed future, so that [`VectorStore`] can be used as `dyn VectorStore`.
pub type VectorFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, VectorError>> + Send + 'a>>;

/// A store of vector collections.
pub trait VectorStore: Send + Sync + std::fmt::Debug {
    /// `embedded` or `qdrant`.
    fn backend(&self) -> &'static str;
    /// Whether the store answers: a short description (the server's version for Qdrant).
    fn health(&self) -> VectorFuture<'_, String>;
    /// Creates an empty collection; an existing name is [`VectorError::CollectionExists`].
    fn create_collection<'a>(&'a self, spec: &'a CollectionSpec) -> VectorFuture<'a, ()>;
    /// The collection's spec and point count.
    fn collection_info<'a>(&'a self, name: &'a str) -> VectorFuture<'a, CollectionInfo>;
    /// All collections, sorted by name.
    fn list_collections(&self) -> VectorFuture<'_, Vec<CollectionInfo>>;
    /// Deletes a collection and its points; returns whether it existed.
    fn delete_collection<'a>(&'a self, name: &'a str) -> VectorFuture<'a, bool>;
    /// Inserts or replaces points. All or nothing: an invalid point rejects the batch.
    fn upsert<'a>(&'a self, collection: &'a str, points: &'a [Point]) -> VectorFuture<'a, ()>;
    /// The `limit` best points matching the filter, best first.
    fn search<'a>(
        &'a self,
        collection: &'a str,
        query: &'a Query,
    ) -> VectorFuture<'a, Vec<ScoredPoint>>;
    /// Deletes points by id; unknown ids are ignored.
    fn delete_points<'a>(&'a self, collection: &'a str, ids: &'a [u64]) -> VectorFuture<'a, ()>;
    /// Releases files and connections at shutdown (every write is already durable).
    fn close(&self) -> VectorFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }
}

/// Opens the store the configuration asks for (`storage.vector`), or `None` for `none`.
pub async fn open(
    cfg: &kos_config::model::Config,
    config_dir: &std::path::Path,
) -> Result<Option<Arc<dyn VectorStore>>, VectorError> {
    use kos_config::model::{VectorKind, VectorStorage};
    let kind = cfg
        .storage
        .vector
        .or(cfg.vector.type_)
        .unwrap_or(VectorKind::None);
    match kind {
        VectorKind::Embedded => {
            let store = match cfg.vector.storage {
                VectorStorage::Memory => embedded::EmbeddedStore::in_memory(),
                VectorStorage::LocalFilesystem => {
                    let dir = crate::store::resolve_location(&cfg.database.location, config_dir);
                    embedded::EmbeddedStore::open(&dir.join(embedded::SQLITE_FILE)).await?
                }
            };
            Ok(Some(Arc::new(store)))
        }
        #[cfg(feature = "qdrant")]
        VectorKind::Qdrant => {
            let url = cfg
                .vector
                .url
                .as_deref()
                .ok_or_else(|| VectorError::Backend("`vector.url` is not set".into()))?;
            let key = cfg.vector.api_key.as_ref().map(|s| s.expose().to_string());
            Ok(Some(Arc::new(qdrant::QdrantStore::connect(
                url,
                key,
                qdrant::Timeouts::default(),
            )?)))
        }
        // Validation refuses the rest (not in this build, or not supported).
        _ => Ok(None),
    }
}

/// Checks a collection spec.
pub fn validate_spec(spec: &CollectionSpec) -> Result<(), VectorError> {
    validate_name(&spec.name)?;
    if spec.dimension == 0 || spec.dimension > MAX_DIMENSION {
        return Err(VectorError::InvalidDimension(spec.dimension.into()));
    }
    Ok(())
}

/// Checks a collection name: 1-64 characters of `[A-Za-z0-9_-]`.
pub fn validate_name(name: &str) -> Result<(), VectorError> {
    let bad = |reason| {
        Err(VectorError::InvalidName {
            name: name.chars().take(MAX_NAME_LEN + 8).collect(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("too long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return bad("unexpected character");
    }
    Ok(())
}

/// Checks one vector against a collection spec.
pub fn validate_vector(spec: &CollectionSpec, what: &str, v: &[f32]) -> Result<(), VectorError> {
    if v.len() != spec.dimension as usize {
        return Err(VectorError::DimensionMismatch {
            what: what.into(),
            collection: spec.name.clone(),
            expected: spec.dimension,
            got: v.len(),
        });
    }
    if let Some(index) = v.iter().position(|x| !x.is_finite()) {
        return Err(VectorError::NonFinite {
            what: what.into(),
            index,
        });
    }
    if spec.distance == Distance::Cosine {
        let norm: f64 = v.iter().map(|x| f64::from(*x) * f64::from(*x)).sum();
        // Also refuses vectors so small their normalized form would not be finite.
        if norm.sqrt() as f32 <= f32::MIN_POSITIVE {
            return Err(VectorError::ZeroVector { what: what.into() });
        }
    }
    Ok(())
}

/// Checks an upsert batch against a collection spec.
pub fn validate_points(spec: &CollectionSpec, points: &[Point]) -> Result<(), VectorError> {
    if points.is_empty() {
        return Err(VectorError::Empty("the list of points"));
    }
    if points.len() > MAX_BATCH {
        return Err(VectorError::TooMany {
            what: "points in one upsert",
            got: points.len(),
            max: MAX_BATCH,
        });
    }
    let mut seen = HashSet::with_capacity(points.len());
    for p in points {
        if !seen.insert(p.id) {
            return Err(VectorError::DuplicateId(p.id));
        }
        validate_vector(spec, &format!("point {}", p.id), &p.vector)?;
        let size = payload_size(&p.payload);
        if size > MAX_PAYLOAD_BYTES {
            return Err(VectorError::PayloadTooLarge {
                id: p.id,
                got: size,
            });
        }
    }
    Ok(())
}

fn payload_size(payload: &Map<String, Value>) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Counter(0);
    // Writing a `Map` to a counter cannot fail.
    let _ = serde_json::to_writer(&mut c, payload);
    c.0
}

/// Checks a search against a collection spec.
pub fn validate_query(spec: &CollectionSpec, query: &Query) -> Result<(), VectorError> {
    if query.limit == 0 {
        return Err(VectorError::Empty("the result limit"));
    }
    if query.limit > MAX_LIMIT {
        return Err(VectorError::TooMany {
            what: "results requested",
            got: query.limit,
            max: MAX_LIMIT,
        });
    }
    validate_vector(spec, "the query", &query.vector)?;
    validate_filter(&query.filter)
}

/// Checks a filter's size and keys.
pub fn validate_filter(filter: &Filter) -> Result<(), VectorError> {
    if filter.must.len() > MAX_CONDITIONS {
        return Err(VectorError::TooMany {
            what: "filter conditions",
            got: filter.must.len(),
            max: MAX_CONDITIONS,
        });
    }
    for (i, c) in filter.must.iter().enumerate() {
        if c.key.is_empty() || c.key.split('.').any(str::is_empty) {
            return Err(VectorError::InvalidFilter(format!(
                "condition {i}: the key `{}` is empty or has an empty path segment",
                c.key
            )));
        }
        if c.key.len() > MAX_KEY_LEN {
            return Err(VectorError::InvalidFilter(format!(
                "condition {i}: the key is longer than {MAX_KEY_LEN} bytes"
            )));
        }
        if let MatchValue::Keyword(s) = &c.value
            && s.len() > MAX_MATCH_LEN
        {
            return Err(VectorError::InvalidFilter(format!(
                "condition {i}: the value is longer than {MAX_MATCH_LEN} bytes"
            )));
        }
    }
    Ok(())
}

/// Checks a list of ids to delete.
pub fn validate_ids(ids: &[u64]) -> Result<(), VectorError> {
    if ids.is_empty() {
        return Err(VectorError::Empty("the list of point ids"));
    }
    if ids.len() > MAX_BATCH {
        return Err(VectorError::TooMany {
            what: "point ids in one delete",
            got: ids.len(),
            max: MAX_BATCH,
        });
    }
    Ok(())
}

/// The vector as stored for a distance: unit length for cosine, unchanged otherwise.
/// Call after [`validate_vector`] (the norm is non-zero).
pub fn prepare(distance: Distance, v: &[f32]) -> Vec<f32> {
    match distance {
        Distance::Cosine => {
            let norm = v
                .iter()
                .map(|x| f64::from(*x) * f64::from(*x))
                .sum::<f64>()
                .sqrt();
            v.iter().map(|x| (f64::from(*x) / norm) as f32).collect()
        }
        Distance::Dot | Distance::Euclid => v.to_vec(),
    }
}

/// The score of a stored vector against a prepared query (both from [`prepare`]).
#[inline]
pub fn score(distance: Distance, query: &[f32], stored: &[f32]) -> f32 {
    match distance {
        Distance::Cosine | Distance::Dot => dot(query, stored),
        Distance::Euclid => {
            let mut acc = [0f32; 8];
            let chunks = query.len() / 8 * 8;
            for (a, b) in query[..chunks]
                .chunks_exact(8)
                .zip(stored[..chunks].chunks_exact(8))
            {
                for i in 0..8 {
                    let d = a[i] - b[i];
                    acc[i] += d * d;
                }
            }
            let mut s: f32 = acc.iter().sum();
            for (a, b) in query[chunks..].iter().zip(&stored[chunks..]) {
                s += (a - b) * (a - b);
            }
            s.sqrt()
        }
    }
}

/// Dot product in eight lanes, which the compiler vectorizes.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8 * 8;
    for (x, y) in a[..chunks].chunks_exact(8).zip(b[..chunks].chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in a[chunks..].iter().zip(&b[chunks..]) {
        s += x * y;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(distance: Distance) -> CollectionSpec {
        CollectionSpec {
            name: "c".into(),
            dimension: 3,
            distance,
        }
    }

    #[test]
    fn names() {
        assert!(validate_name("docs_2024-a").is_ok());
        for bad in ["", "a b", "a/b", "é", &"x".repeat(65)] {
            assert!(
                matches!(validate_name(bad), Err(VectorError::InvalidName { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn vectors() {
        let s = spec(Distance::Cosine);
        assert!(validate_vector(&s, "q", &[1.0, 0.0, 0.0]).is_ok());
        assert!(matches!(
            validate_vector(&s, "q", &[1.0, 0.0]),
            Err(VectorError::DimensionMismatch {
                expected: 3,
                got: 2,
                ..
            })
        ));
        assert!(matches!(
            validate_vector(&s, "q", &[1.0, f32::NAN, 0.0]),
            Err(VectorError::NonFinite { index: 1, .. })
        ));
        assert!(matches!(
            validate_vector(&s, "q", &[f32::INFINITY, 0.0, 0.0]),
            Err(VectorError::NonFinite { index: 0, .. })
        ));
        assert!(matches!(
            validate_vector(&s, "q", &[0.0, 0.0, 0.0]),
            Err(VectorError::ZeroVector { .. })
        ));
        // The zero vector is a valid point for dot and euclid.
        assert!(validate_vector(&spec(Distance::Dot), "q", &[0.0, 0.0, 0.0]).is_ok());
    }

    #[test]
    fn filters_match_nested_keys_and_arrays() {
        let p =
            json!({"kind": "doc", "n": 3, "ok": true, "tags": ["a", "b"], "meta": {"lang": "en"}});
        let p = p.as_object().cloned().unwrap_or_default();
        let f = |key: &str, value: MatchValue| Filter {
            must: vec![Condition {
                key: key.into(),
                value,
            }],
        };
        assert!(f("kind", MatchValue::Keyword("doc".into())).matches(&p));
        assert!(!f("kind", MatchValue::Keyword("img".into())).matches(&p));
        assert!(f("n", MatchValue::Integer(3)).matches(&p));
        assert!(!f("n", MatchValue::Keyword("3".into())).matches(&p));
        assert!(f("ok", MatchValue::Bool(true)).matches(&p));
        assert!(f("tags", MatchValue::Keyword("b".into())).matches(&p));
        assert!(f("meta.lang", MatchValue::Keyword("en".into())).matches(&p));
        assert!(!f("missing", MatchValue::Bool(true)).matches(&p));
        assert!(Filter::default().matches(&p));
        let both = Filter {
            must: vec![
                Condition {
                    key: "kind".into(),
                    value: MatchValue::Keyword("doc".into()),
                },
                Condition {
                    key: "n".into(),
                    value: MatchValue::Integer(4),
                },
            ],
        };
        assert!(!both.matches(&p), "AND of conditions");
    }

    #[test]
    fn filter_json_shape() {
        let f: Filter = serde_json::from_value(
            json!({"must": [{"key": "a", "match": "x"}, {"key": "b", "match": 2}, {"key": "c", "match": false}]}),
        )
        .unwrap_or_default();
        assert_eq!(
            f.must.iter().map(|c| c.value.clone()).collect::<Vec<_>>(),
            vec![
                MatchValue::Keyword("x".into()),
                MatchValue::Integer(2),
                MatchValue::Bool(false)
            ]
        );
        assert!(
            serde_json::from_value::<Filter>(json!({"must": [{"key": "a", "match": 1.5}]}))
                .is_err()
        );
    }

    #[test]
    fn scores() {
        let q = prepare(Distance::Cosine, &[3.0, 4.0, 0.0]);
        assert!(
            (score(
                Distance::Cosine,
                &q,
                &prepare(Distance::Cosine, &[6.0, 8.0, 0.0])
            ) - 1.0)
                .abs()
                < 1e-6
        );
        assert!((score(Distance::Dot, &[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]) - 32.0).abs() < 1e-6);
        let long: Vec<f32> = (0..19).map(|i| i as f32).collect();
        let zero = vec![0.0; 19];
        let expect = long.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((score(Distance::Euclid, &long, &zero) - expect).abs() < 1e-4);
        assert!((score(Distance::Dot, &long, &long) - expect * expect).abs() < 1e-2);
    }
}
