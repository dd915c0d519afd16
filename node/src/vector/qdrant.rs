//! The Qdrant server backend (cargo feature `qdrant`): gRPC through `qdrant-client`.
//!
//! Inputs are validated by the same functions as the embedded engine before any request is
//! sent; for that the store keeps each collection's dimension and distance (fetched once,
//! then cached). Qdrant normalizes cosine vectors itself and returns the same scores as the
//! embedded engine (cosine similarity, dot product, Euclidean distance).
//!
//! No request waits forever: connecting is bounded by `connect` and every call by `request`
//! ([`Timeouts`]). A server that is down or slow gives [`VectorError::Unavailable`] naming the
//! URL; the channel reconnects by itself on the next call.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use qdrant_client::qdrant::{
    self as q, CountPointsBuilder, CreateCollectionBuilder, DeletePointsBuilder, PointStruct,
    PointsIdsList, QueryPointsBuilder, UpsertPointsBuilder, VectorParamsBuilder,
};
use qdrant_client::{Payload, Qdrant, QdrantError};
use serde_json::{Map, Value};

use super::{
    CollectionInfo, CollectionSpec, Distance, MatchValue, Point, Query, ScoredPoint, VectorError,
    VectorFuture, VectorStore,
};

/// How long the client waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Establishing the connection.
    pub connect: Duration,
    /// One request, from sending to the full answer.
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            request: Duration::from_secs(10),
        }
    }
}

/// A Qdrant server.
pub struct QdrantStore {
    client: Qdrant,
    url: String,
    timeouts: Timeouts,
    specs: RwLock<HashMap<String, CollectionSpec>>,
}

impl std::fmt::Debug for QdrantStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client holds the API key: never print it.
        f.debug_struct("QdrantStore")
            .field("url", &self.url)
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

impl QdrantStore {
    /// Prepares a client for the server at `url` (gRPC, usually port 6334). Nothing is sent
    /// yet: the first call (or [`VectorStore::health`]) connects.
    pub fn connect(
        url: &str,
        api_key: Option<String>,
        timeouts: Timeouts,
    ) -> Result<Self, VectorError> {
        let client = Qdrant::from_url(url)
            .api_key(api_key)
            .timeout(timeouts.request)
            .connect_timeout(timeouts.connect)
            // The compatibility check would block the async runtime on a network call.
            .skip_compatibility_check()
            .build()
            .map_err(|e| match e {
                QdrantError::InvalidUri(e) => {
                    VectorError::Backend(format!("invalid vector.url `{url}`: {e}"))
                }
                other => VectorError::Backend(other.to_string()),
            })?;
        Ok(Self {
            client,
            url: url.to_string(),
            timeouts,
            specs: RwLock::new(HashMap::new()),
        })
    }

    fn error(&self, e: QdrantError, collection: Option<&str>) -> VectorError {
        use tonic::Code;
        let status = match e {
            QdrantError::ResponseError { status }
            | QdrantError::ResourceExhaustedError { status, .. } => status,
            QdrantError::InvalidUri(e) => {
                return VectorError::Backend(format!("invalid vector.url `{}`: {e}", self.url));
            }
            other => return VectorError::Backend(other.to_string()),
        };
        let msg = status.message();
        match status.code() {
            Code::NotFound if let Some(name) = collection => {
                self.forget(name);
                VectorError::NoSuchCollection(name.to_string())
            }
            Code::AlreadyExists if let Some(name) = collection => {
                VectorError::CollectionExists(name.to_string())
            }
            Code::Unavailable => VectorError::Unavailable {
                url: self.url.clone(),
                reason: format!("cannot connect: {msg}"),
            },
            // qdrant-client reports a failed connect as `Internal` ("Failed to connect to
            // URL: <transport error>"); the TLS setup failing is `Internal` too.
            Code::Internal if msg.starts_with("Failed to connect") => VectorError::Unavailable {
                url: self.url.clone(),
                reason: connect_reason(msg),
            },
            Code::DeadlineExceeded | Code::Cancelled => VectorError::Unavailable {
                url: self.url.clone(),
                reason: format!(
                    "no answer within {:?} (connect timeout {:?}): {msg}",
                    self.timeouts.request, self.timeouts.connect
                ),
            },
            Code::Unauthenticated | Code::PermissionDenied => VectorError::Unavailable {
                url: self.url.clone(),
                reason:
                    "the server refused the API key (set vector.api_key, e.g. KOS_VECTOR__API_KEY)"
                        .into(),
            },
            code => VectorError::Backend(format!("{code:?}: {msg}")),
        }
    }

    fn cached(&self, name: &str) -> Option<CollectionSpec> {
        self.specs.read().ok()?.get(name).cloned()
    }

    fn remember(&self, spec: CollectionSpec) {
        if let Ok(mut m) = self.specs.write() {
            m.insert(spec.name.clone(), spec);
        }
    }

    fn forget(&self, name: &str) {
        if let Ok(mut m) = self.specs.write() {
            m.remove(name);
        }
    }

    async fn info(&self, name: &str) -> Result<CollectionInfo, VectorError> {
        super::validate_name(name)?;
        let r = self
            .client
            .collection_info(name)
            .await
            .map_err(|e| self.error(e, Some(name)))?;
        let info = r
            .result
            .ok_or_else(|| VectorError::Backend(format!("no info for collection `{name}`")))?;
        let params = info
            .config
            .and_then(|c| c.params)
            .and_then(|p| p.vectors_config)
            .and_then(|v| v.config);
        let p = match params {
            Some(q::vectors_config::Config::Params(p)) => p,
            Some(q::vectors_config::Config::ParamsMap(_)) => {
                return Err(VectorError::Backend(format!(
                    "collection `{name}` has named vectors, which kOS does not use"
                )));
            }
            None => {
                return Err(VectorError::Backend(format!(
                    "collection `{name}` has no vector parameters"
                )));
            }
        };
        let distance = match q::Distance::try_from(p.distance) {
            Ok(q::Distance::Cosine) => Distance::Cosine,
            Ok(q::Distance::Dot) => Distance::Dot,
            Ok(q::Distance::Euclid) => Distance::Euclid,
            _ => {
                return Err(VectorError::Backend(format!(
                    "collection `{name}` uses a distance kOS does not support ({})",
                    p.distance
                )));
            }
        };
        let dimension = u32::try_from(p.size)
            .ok()
            .filter(|d| (1..=super::MAX_DIMENSION).contains(d))
            .ok_or_else(|| {
                VectorError::Backend(format!("collection `{name}` has dimension {}", p.size))
            })?;
        let spec = CollectionSpec {
            name: name.to_string(),
            dimension,
            distance,
        };
        self.remember(spec.clone());
        // `points_count` in the collection info may be an estimate; count exactly.
        let points = self
            .client
            .count(CountPointsBuilder::new(name).exact(true))
            .await
            .map_err(|e| self.error(e, Some(name)))?
            .result
            .map_or(0, |r| r.count);
        Ok(CollectionInfo { spec, points })
    }

    async fn spec(&self, name: &str) -> Result<CollectionSpec, VectorError> {
        super::validate_name(name)?;
        match self.cached(name) {
            Some(s) => Ok(s),
            None => Ok(self.info(name).await?.spec),
        }
    }

    async fn create(&self, spec: &CollectionSpec) -> Result<(), VectorError> {
        super::validate_spec(spec)?;
        let name = spec.name.as_str();
        if self
            .client
            .collection_exists(name)
            .await
            .map_err(|e| self.error(e, Some(name)))?
        {
            return Err(VectorError::CollectionExists(name.into()));
        }
        let distance = match spec.distance {
            Distance::Cosine => q::Distance::Cosine,
            Distance::Dot => q::Distance::Dot,
            Distance::Euclid => q::Distance::Euclid,
        };
        self.client
            .create_collection(
                CreateCollectionBuilder::new(name)
                    .vectors_config(VectorParamsBuilder::new(spec.dimension.into(), distance)),
            )
            .await
            .map_err(|e| self.error(e, Some(name)))?;
        self.remember(spec.clone());
        Ok(())
    }

    async fn drop_collection(&self, name: &str) -> Result<bool, VectorError> {
        super::validate_name(name)?;
        self.forget(name);
        let existed = self
            .client
            .collection_exists(name)
            .await
            .map_err(|e| self.error(e, Some(name)))?;
        if existed {
            self.client
                .delete_collection(name)
                .await
                .map_err(|e| self.error(e, Some(name)))?;
        }
        Ok(existed)
    }

    async fn list(&self) -> Result<Vec<CollectionInfo>, VectorError> {
        let r = self
            .client
            .list_collections()
            .await
            .map_err(|e| self.error(e, None))?;
        let mut names: Vec<String> = r.collections.into_iter().map(|c| c.name).collect();
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            // Collections created by others may break kOS's rules; list only those it can use.
            if super::validate_name(&n).is_ok()
                && let Ok(i) = self.info(&n).await
            {
                out.push(i);
            }
        }
        Ok(out)
    }

    async fn upsert_points(&self, name: &str, points: &[Point]) -> Result<(), VectorError> {
        let spec = self.spec(name).await?;
        super::validate_points(&spec, points)?;
        let structs: Vec<PointStruct> = points
            .iter()
            .map(|p| PointStruct::new(p.id, p.vector.clone(), Payload::from(p.payload.clone())))
            .collect();
        self.client
            .upsert_points(UpsertPointsBuilder::new(name, structs).wait(true))
            .await
            .map_err(|e| self.error(e, Some(name)))?;
        Ok(())
    }

    async fn remove_points(&self, name: &str, ids: &[u64]) -> Result<(), VectorError> {
        super::validate_name(name)?;
        super::validate_ids(ids)?;
        self.client
            .delete_points(
                DeletePointsBuilder::new(name)
                    .points(PointsIdsList::from(ids.to_vec()))
                    .wait(true),
            )
            .await
            .map_err(|e| self.error(e, Some(name)))?;
        Ok(())
    }

    async fn run_search(&self, name: &str, query: &Query) -> Result<Vec<ScoredPoint>, VectorError> {
        let spec = self.spec(name).await?;
        super::validate_query(&spec, query)?;
        let mut req = QueryPointsBuilder::new(name)
            .query(query.vector.clone())
            .limit(query.limit as u64)
            .with_payload(true);
        if !query.filter.must.is_empty() {
            let conds = query.filter.must.iter().map(|c| {
                let m: q::r#match::MatchValue = match &c.value {
                    MatchValue::Bool(b) => (*b).into(),
                    MatchValue::Integer(i) => (*i).into(),
                    MatchValue::Keyword(s) => s.clone().into(),
                };
                q::Condition::matches(c.key.clone(), m)
            });
            req = req.filter(q::Filter::must(conds));
        }
        let r = self
            .client
            .query(req)
            .await
            .map_err(|e| self.error(e, Some(name)))?;
        r.result
            .into_iter()
            .map(|p| {
                let id = match p.id.and_then(|i| i.point_id_options) {
                    Some(q::point_id::PointIdOptions::Num(n)) => n,
                    other => {
                        return Err(VectorError::Backend(format!(
                            "collection `{name}` holds a point id kOS does not use: {other:?}"
                        )));
                    }
                };
                let payload: Map<String, Value> = p
                    .payload
                    .into_iter()
                    .map(|(k, v)| (k, v.into_json()))
                    .collect();
                Ok(ScoredPoint {
                    id,
                    score: p.score,
                    payload,
                })
            })
            .collect()
    }
}

/// The useful part of a transport error's debug text: "connection refused", "timed out"...
fn connect_reason(msg: &str) -> String {
    let lower = msg.to_ascii_lowercase();
    let why = [
        ("connection refused", "connection refused"),
        ("timed out", "connect timed out"),
        ("timeout", "connect timed out"),
        ("dns error", "cannot resolve the host name"),
        ("failed to lookup", "cannot resolve the host name"),
        ("certificate", "TLS certificate rejected"),
        ("tls", "TLS handshake failed"),
    ]
    .iter()
    .find(|(needle, _)| lower.contains(needle))
    .map_or("cannot connect", |(_, why)| why);
    format!("{why} ({msg})")
}

impl VectorStore for QdrantStore {
    fn backend(&self) -> &'static str {
        "qdrant"
    }

    fn health(&self) -> VectorFuture<'_, String> {
        Box::pin(async move {
            let r = self
                .client
                .health_check()
                .await
                .map_err(|e| self.error(e, None))?;
            Ok(format!("Qdrant {} at {}", r.version, self.url))
        })
    }

    fn create_collection<'a>(&'a self, spec: &'a CollectionSpec) -> VectorFuture<'a, ()> {
        Box::pin(self.create(spec))
    }

    fn collection_info<'a>(&'a self, name: &'a str) -> VectorFuture<'a, CollectionInfo> {
        Box::pin(self.info(name))
    }

    fn list_collections(&self) -> VectorFuture<'_, Vec<CollectionInfo>> {
        Box::pin(self.list())
    }

    fn delete_collection<'a>(&'a self, name: &'a str) -> VectorFuture<'a, bool> {
        Box::pin(self.drop_collection(name))
    }

    fn upsert<'a>(&'a self, collection: &'a str, points: &'a [Point]) -> VectorFuture<'a, ()> {
        Box::pin(self.upsert_points(collection, points))
    }

    fn search<'a>(
        &'a self,
        collection: &'a str,
        query: &'a Query,
    ) -> VectorFuture<'a, Vec<ScoredPoint>> {
        Box::pin(self.run_search(collection, query))
    }

    fn delete_points<'a>(&'a self, collection: &'a str, ids: &'a [u64]) -> VectorFuture<'a, ()> {
        Box::pin(self.remove_points(collection, ids))
    }
}
