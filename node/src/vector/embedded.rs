//! The in-process vector engine: exact (brute-force) search over vectors held in memory,
//! persisted in their own SQLite file.
//!
//! Every collection is one contiguous `Vec<f32>` (row-major, `dimension` floats per point)
//! plus ids and payloads, loaded from SQLite at open. A search scores every point that passes
//! the filter and keeps the `limit` best in a bounded heap, so results are exact (no
//! approximate index to tune or rebuild) and cost grows linearly with the collection, which
//! the per-collection point limit keeps bounded (see BENCHMARKS.md for the figures).
//!
//! Writes go to SQLite first (one transaction per request, `synchronous = FULL`) and to memory
//! only after the commit, under one writer lock, so memory never holds what the disk does not.
//! Searches take only a read lock on their collection; large ones run on the blocking pool.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::path::Path;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use serde_json::{Map, Value};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use super::{
    CollectionInfo, CollectionSpec, Distance, Point, Query, ScoredPoint, VectorError, VectorFuture,
    VectorStore,
};

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations/vectors");

/// Name of the SQLite file inside `database.location`.
pub const SQLITE_FILE: &str = "vectors.db";

/// Searches over fewer floats than this run inline; larger ones on the blocking pool.
const INLINE_FLOATS: usize = 256 * 1024;
/// Rows read per page when loading a collection.
const LOAD_PAGE: i64 = 2048;

/// Bounds of the embedded engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_collections: usize,
    /// Points per collection. 100 000 points of 384 dimensions are 154 MB of vectors.
    pub max_points: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_collections: 64,
            max_points: 100_000,
        }
    }
}

#[derive(Debug)]
struct Collection {
    spec: CollectionSpec,
    ids: Vec<u64>,
    /// `ids.len() * dimension` floats, as prepared for the distance.
    data: Vec<f32>,
    payloads: Vec<Map<String, Value>>,
    /// id → position in `ids`.
    index: HashMap<u64, usize>,
}

impl Collection {
    fn new(spec: CollectionSpec) -> Self {
        Self {
            spec,
            ids: Vec::new(),
            data: Vec::new(),
            payloads: Vec::new(),
            index: HashMap::new(),
        }
    }

    fn dim(&self) -> usize {
        self.spec.dimension as usize
    }

    fn put(&mut self, id: u64, vector: &[f32], payload: Map<String, Value>) {
        let d = self.dim();
        match self.index.get(&id) {
            Some(&i) => {
                self.data[i * d..(i + 1) * d].copy_from_slice(vector);
                self.payloads[i] = payload;
            }
            None => {
                self.index.insert(id, self.ids.len());
                self.ids.push(id);
                self.data.extend_from_slice(vector);
                self.payloads.push(payload);
            }
        }
    }

    fn remove(&mut self, id: u64) {
        let Some(i) = self.index.remove(&id) else {
            return;
        };
        let d = self.dim();
        let last = self.ids.len() - 1;
        if i != last {
            let moved = self.ids[last];
            self.ids.swap(i, last);
            self.payloads.swap(i, last);
            self.data.copy_within(last * d..(last + 1) * d, i * d);
            self.index.insert(moved, i);
        }
        self.ids.pop();
        self.payloads.pop();
        self.data.truncate(last * d);
    }

    fn info(&self) -> CollectionInfo {
        CollectionInfo {
            spec: self.spec.clone(),
            points: self.ids.len() as u64,
        }
    }

    /// Exact top-k. `query` is already prepared for the distance.
    fn search(&self, query: &[f32], q: &Query) -> Vec<ScoredPoint> {
        let d = self.dim();
        let distance = self.spec.distance;
        let mut heap: BinaryHeap<Candidate> = BinaryHeap::with_capacity(q.limit + 1);
        let filtered = !q.filter.must.is_empty();
        for (i, row) in self.data.chunks_exact(d).enumerate() {
            if filtered && !q.filter.matches(&self.payloads[i]) {
                continue;
            }
            let s = super::score(distance, query, row);
            let c = Candidate {
                key: if distance == Distance::Euclid { -s } else { s },
                id: self.ids[i],
                pos: i,
                score: s,
            };
            if heap.len() < q.limit {
                heap.push(c);
            } else if heap.peek().is_some_and(|worst| c < *worst) {
                heap.pop();
                heap.push(c);
            }
        }
        heap.into_sorted_vec()
            .into_iter()
            .map(|c| ScoredPoint {
                id: c.id,
                score: c.score,
                payload: self.payloads[c.pos].clone(),
            })
            .collect()
    }
}

/// A search candidate, ordered so that a *better* candidate is *smaller*: the max-heap keeps
/// the worst on top, and `into_sorted_vec` yields best first. Ties go to the smaller id.
#[derive(Debug)]
struct Candidate {
    /// Higher is better (the negated distance for euclid).
    key: f32,
    id: u64,
    pos: usize,
    score: f32,
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        other.key.total_cmp(&self.key).then(self.id.cmp(&other.id))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Candidate {}

type Shared = Arc<RwLock<Collection>>;

/// The embedded vector store.
#[derive(Debug)]
pub struct EmbeddedStore {
    /// `None`: memory only (`vector.storage: memory`).
    db: Option<SqlitePool>,
    collections: RwLock<BTreeMap<String, Shared>>,
    /// One writer at a time, so the disk and memory see writes in the same order.
    write: tokio::sync::Mutex<()>,
    limits: Limits,
}

fn poisoned() -> VectorError {
    VectorError::Corrupt("a vector collection lock was poisoned by a panic".into())
}

fn read<T>(l: &RwLock<T>) -> Result<RwLockReadGuard<'_, T>, VectorError> {
    l.read().map_err(|_| poisoned())
}

fn write<T>(l: &RwLock<T>) -> Result<RwLockWriteGuard<'_, T>, VectorError> {
    l.write().map_err(|_| poisoned())
}

fn to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Point ids are u64; SQLite integers are i64. Stored bit for bit.
fn id_to_db(id: u64) -> i64 {
    i64::from_ne_bytes(id.to_ne_bytes())
}

fn id_from_db(id: i64) -> u64 {
    u64::from_ne_bytes(id.to_ne_bytes())
}

impl EmbeddedStore {
    /// A store that keeps nothing on disk.
    pub fn in_memory() -> Self {
        Self::with_parts(None, Limits::default())
    }

    /// Opens (creating if needed) the SQLite file and loads every collection into memory.
    pub async fn open(path: &Path) -> Result<Self, VectorError> {
        Self::open_with_limits(path, Limits::default()).await
    }

    pub async fn open_with_limits(path: &Path, limits: Limits) -> Result<Self, VectorError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|source| VectorError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        // One connection: writes are serialized anyway, and reads come from memory.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await?;
        MIGRATIONS.run(&pool).await?;
        let store = Self::with_parts(Some(pool), limits);
        store.load().await?;
        Ok(store)
    }

    /// A memory-only store with custom limits.
    pub fn in_memory_with_limits(limits: Limits) -> Self {
        Self::with_parts(None, limits)
    }

    fn with_parts(db: Option<SqlitePool>, limits: Limits) -> Self {
        Self {
            db,
            collections: RwLock::new(BTreeMap::new()),
            write: tokio::sync::Mutex::new(()),
            limits,
        }
    }

    /// Closes the SQLite file (pending writes are already committed).
    pub async fn close(&self) {
        if let Some(db) = &self.db {
            db.close().await;
        }
    }

    /// Bytes held by vectors, ids and the id index (payloads not counted).
    pub fn vector_bytes(&self) -> usize {
        let Ok(map) = read(&self.collections) else {
            return 0;
        };
        map.values()
            .filter_map(|c| {
                read(c)
                    .ok()
                    .map(|c| c.data.capacity() * 4 + c.ids.capacity() * 8 + c.index.capacity() * 16)
            })
            .sum()
    }

    async fn load(&self) -> Result<(), VectorError> {
        let Some(db) = &self.db else { return Ok(()) };
        let rows =
            sqlx::query("SELECT name, dimension, distance FROM vector_collections ORDER BY name")
                .fetch_all(db)
                .await?;
        let mut loaded = BTreeMap::new();
        for row in rows {
            let name: String = row.try_get(0)?;
            let dimension: i64 = row.try_get(1)?;
            let distance: String = row.try_get(2)?;
            let distance = Distance::parse(&distance).ok_or_else(|| {
                VectorError::Corrupt(format!(
                    "collection `{name}`: unknown distance `{distance}`"
                ))
            })?;
            let dimension = u32::try_from(dimension)
                .ok()
                .filter(|d| (1..=super::MAX_DIMENSION).contains(d))
                .ok_or_else(|| {
                    VectorError::Corrupt(format!(
                        "collection `{name}`: invalid dimension {dimension}"
                    ))
                })?;
            let mut c = Collection::new(CollectionSpec {
                name: name.clone(),
                dimension,
                distance,
            });
            let d = dimension as usize;
            // Reserve once: growing by doubling would leave up to twice the memory behind.
            let count: i64 =
                sqlx::query("SELECT COUNT(*) FROM vector_points WHERE collection = $1")
                    .bind(&name)
                    .fetch_one(db)
                    .await?
                    .try_get(0)?;
            let count = usize::try_from(count).unwrap_or(0);
            c.ids.reserve_exact(count);
            c.payloads.reserve_exact(count);
            c.index.reserve(count);
            c.data.reserve_exact(count.saturating_mul(d));
            // Keyset pages over the primary key: rows with id >= `from`.
            let mut from = Some(i64::MIN);
            while let Some(start) = from {
                let page = sqlx::query(
                    "SELECT id, vector, payload FROM vector_points \
                     WHERE collection = $1 AND id >= $2 ORDER BY id LIMIT $3",
                )
                .bind(&name)
                .bind(start)
                .bind(LOAD_PAGE)
                .fetch_all(db)
                .await?;
                let n = page.len();
                for row in page {
                    let raw_id: i64 = row.try_get(0)?;
                    let blob: Vec<u8> = row.try_get(1)?;
                    let payload: String = row.try_get(2)?;
                    from = raw_id.checked_add(1);
                    let id = id_from_db(raw_id);
                    if blob.len() != d * 4 {
                        return Err(VectorError::Corrupt(format!(
                            "collection `{name}` point {id}: {} bytes of vector, expected {}",
                            blob.len(),
                            d * 4
                        )));
                    }
                    let v: Vec<f32> = blob
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect();
                    if v.iter().any(|x| !x.is_finite()) {
                        return Err(VectorError::Corrupt(format!(
                            "collection `{name}` point {id}: the vector is not finite"
                        )));
                    }
                    let payload: Map<String, Value> =
                        serde_json::from_str(&payload).map_err(|e| {
                            VectorError::Corrupt(format!(
                                "collection `{name}` point {id}: payload: {e}"
                            ))
                        })?;
                    c.put(id, &v, payload);
                }
                if n < LOAD_PAGE as usize {
                    break;
                }
            }
            loaded.insert(name, Arc::new(RwLock::new(c)));
        }
        *write(&self.collections)? = loaded;
        Ok(())
    }

    fn get(&self, name: &str) -> Result<Shared, VectorError> {
        read(&self.collections)?
            .get(name)
            .cloned()
            .ok_or_else(|| VectorError::NoSuchCollection(name.into()))
    }

    async fn create(&self, spec: &CollectionSpec) -> Result<(), VectorError> {
        super::validate_spec(spec)?;
        let _w = self.write.lock().await;
        {
            let map = read(&self.collections)?;
            if map.contains_key(&spec.name) {
                return Err(VectorError::CollectionExists(spec.name.clone()));
            }
            if map.len() >= self.limits.max_collections {
                return Err(VectorError::TooManyCollections(self.limits.max_collections));
            }
        }
        if let Some(db) = &self.db {
            sqlx::query(
                "INSERT INTO vector_collections (name, dimension, distance, created_ms) VALUES ($1, $2, $3, $4)",
            )
            .bind(&spec.name)
            .bind(i64::from(spec.dimension))
            .bind(spec.distance.as_str())
            .bind(crate::store::now_ms())
            .execute(db)
            .await?;
        }
        write(&self.collections)?.insert(
            spec.name.clone(),
            Arc::new(RwLock::new(Collection::new(spec.clone()))),
        );
        Ok(())
    }

    async fn drop_collection(&self, name: &str) -> Result<bool, VectorError> {
        super::validate_name(name)?;
        let _w = self.write.lock().await;
        if !read(&self.collections)?.contains_key(name) {
            return Ok(false);
        }
        if let Some(db) = &self.db {
            let mut tx = db.begin().await?;
            sqlx::query("DELETE FROM vector_points WHERE collection = $1")
                .bind(name)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM vector_collections WHERE name = $1")
                .bind(name)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        write(&self.collections)?.remove(name);
        Ok(true)
    }

    async fn upsert_points(&self, name: &str, points: &[Point]) -> Result<(), VectorError> {
        super::validate_name(name)?;
        let col = self.get(name)?;
        let spec = read(&col)?.spec.clone();
        super::validate_points(&spec, points)?;
        let prepared: Vec<Vec<f32>> = points
            .iter()
            .map(|p| super::prepare(spec.distance, &p.vector))
            .collect();
        let _w = self.write.lock().await;
        // The collection may have been deleted (or replaced) while we waited.
        if !self.get(name).is_ok_and(|c| Arc::ptr_eq(&c, &col)) {
            return Err(VectorError::NoSuchCollection(name.into()));
        }
        {
            let c = read(&col)?;
            let new = points
                .iter()
                .filter(|p| !c.index.contains_key(&p.id))
                .count();
            if c.ids.len() + new > self.limits.max_points {
                return Err(VectorError::CollectionFull {
                    name: name.into(),
                    max: self.limits.max_points,
                });
            }
        }
        if let Some(db) = &self.db {
            let mut tx = db.begin().await?;
            for (p, v) in points.iter().zip(&prepared) {
                let payload = serde_json::to_string(&p.payload)
                    .map_err(|e| VectorError::Corrupt(format!("point {}: payload: {e}", p.id)))?;
                sqlx::query(
                    "INSERT INTO vector_points (collection, id, vector, payload) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (collection, id) DO UPDATE SET vector = excluded.vector, payload = excluded.payload",
                )
                .bind(name)
                .bind(id_to_db(p.id))
                .bind(to_blob(v))
                .bind(payload)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        }
        let mut c = write(&col)?;
        for (p, v) in points.iter().zip(prepared) {
            c.put(p.id, &v, p.payload.clone());
        }
        Ok(())
    }

    async fn remove_points(&self, name: &str, ids: &[u64]) -> Result<(), VectorError> {
        super::validate_name(name)?;
        super::validate_ids(ids)?;
        let col = self.get(name)?;
        let _w = self.write.lock().await;
        if !self.get(name).is_ok_and(|c| Arc::ptr_eq(&c, &col)) {
            return Err(VectorError::NoSuchCollection(name.into()));
        }
        if let Some(db) = &self.db {
            let mut tx = db.begin().await?;
            for id in ids {
                sqlx::query("DELETE FROM vector_points WHERE collection = $1 AND id = $2")
                    .bind(name)
                    .bind(id_to_db(*id))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        }
        let mut c = write(&col)?;
        for id in ids {
            c.remove(*id);
        }
        Ok(())
    }

    async fn run_search(&self, name: &str, query: &Query) -> Result<Vec<ScoredPoint>, VectorError> {
        super::validate_name(name)?;
        let col = self.get(name)?;
        let (distance, floats) = {
            let c = read(&col)?;
            super::validate_query(&c.spec, query)?;
            (c.spec.distance, c.data.len())
        };
        let prepared = super::prepare(distance, &query.vector);
        if floats <= INLINE_FLOATS {
            return Ok(read(&col)?.search(&prepared, query));
        }
        let query = query.clone();
        tokio::task::spawn_blocking(move || Ok(read(&col)?.search(&prepared, &query)))
            .await
            .map_err(|e| VectorError::Corrupt(format!("search task failed: {e}")))?
    }
}

impl VectorStore for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    fn health(&self) -> VectorFuture<'_, String> {
        Box::pin(async move {
            if let Some(db) = &self.db {
                sqlx::query("SELECT 1").execute(db).await?;
            }
            let n = read(&self.collections)?.len();
            Ok(format!(
                "embedded ({}, {n} collections)",
                if self.db.is_some() {
                    "SQLite"
                } else {
                    "memory only"
                }
            ))
        })
    }

    fn create_collection<'a>(&'a self, spec: &'a CollectionSpec) -> VectorFuture<'a, ()> {
        Box::pin(self.create(spec))
    }

    fn collection_info<'a>(&'a self, name: &'a str) -> VectorFuture<'a, CollectionInfo> {
        Box::pin(async move {
            super::validate_name(name)?;
            let col = self.get(name)?;
            Ok(read(&col)?.info())
        })
    }

    fn list_collections(&self) -> VectorFuture<'_, Vec<CollectionInfo>> {
        Box::pin(async move {
            let cols: Vec<Shared> = read(&self.collections)?.values().cloned().collect();
            cols.iter().map(|c| Ok(read(c)?.info())).collect()
        })
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

    fn close(&self) -> VectorFuture<'_, ()> {
        Box::pin(async move {
            // Wait for a write in progress, then checkpoint the WAL and close the file.
            let _w = self.write.lock().await;
            EmbeddedStore::close(self).await;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_keeps_rows_and_index_consistent() {
        let mut c = Collection::new(CollectionSpec {
            name: "c".into(),
            dimension: 2,
            distance: Distance::Dot,
        });
        for i in 0..5u64 {
            c.put(i, &[i as f32, 0.0], Map::new());
        }
        c.remove(1);
        c.remove(4);
        c.remove(99);
        assert_eq!(c.ids.len(), 3);
        assert_eq!(c.data.len(), 6);
        for (pos, id) in c.ids.iter().enumerate() {
            assert_eq!(c.index[id], pos);
            assert_eq!(c.data[pos * 2], *id as f32);
        }
    }

    #[test]
    fn ids_round_trip_through_i64() {
        for id in [0, 1, u64::MAX, 1 << 63, (1 << 63) - 1] {
            assert_eq!(id_from_db(id_to_db(id)), id);
        }
    }
}
