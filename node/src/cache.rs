//! A best-effort cache, chosen by `storage.cache: none|memory|redis`.
//!
//! Values are bytes with a time to live. A cache is never the record: a miss, an error or a
//! Redis that is down only means the caller reads the database. The in-memory cache is
//! bounded (entries and bytes); the Redis cache namespaces its keys by node id
//! (`kos:<node id>:cache:<key>`), bounds each call by a short timeout, and reconnects in the
//! background (redis `ConnectionManager`).
//!
//! First user: `GET /api/events` (the one read route that queries the database on every
//! call), keyed by a generation the node bumps on every recorded event.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// Entries the in-memory cache holds at most.
pub const MEMORY_MAX_ENTRIES: usize = 1024;
/// Bytes of values the in-memory cache holds at most.
pub const MEMORY_MAX_BYTES: usize = 16 * 1024 * 1024;
/// Largest value cached (larger values are not cached).
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("the cache at {target} is unavailable: {reason}")]
    Unavailable { target: String, reason: String },
    #[error("invalid Redis URL for the cache: {0}")]
    Url(String),
    #[error("Redis is not in this build (cargo feature `redis`)")]
    NotBuilt,
}

/// The cache the configuration selects.
#[derive(Debug)]
pub enum Cache {
    None,
    Memory(MemoryCache),
    #[cfg(feature = "redis")]
    Redis(RedisCache),
}

impl Cache {
    pub fn from_config(cfg: &kos_config::Config, node_id: &str) -> Result<Self, CacheError> {
        use kos_config::model::CacheKind;
        match cfg.storage.cache.unwrap_or_default() {
            CacheKind::None => Ok(Cache::None),
            CacheKind::Memory => Ok(Cache::Memory(MemoryCache::new(
                MEMORY_MAX_ENTRIES,
                MEMORY_MAX_BYTES,
            ))),
            CacheKind::Redis => {
                #[cfg(feature = "redis")]
                {
                    let url = crate::bus::redis_url(&cfg.redis)
                        .ok_or_else(|| CacheError::Url("redis.url is not set".into()))?;
                    Ok(Cache::Redis(RedisCache::new(&url, node_id)?))
                }
                #[cfg(not(feature = "redis"))]
                {
                    let _ = node_id;
                    Err(CacheError::NotBuilt)
                }
            }
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Cache::None => "none",
            Cache::Memory(_) => "memory",
            #[cfg(feature = "redis")]
            Cache::Redis(_) => "redis",
        }
    }

    /// The value, if cached and not expired.
    pub async fn try_get(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        match self {
            Cache::None => Ok(None),
            Cache::Memory(m) => Ok(m.get(key)),
            #[cfg(feature = "redis")]
            Cache::Redis(r) => r.get(key).await,
        }
    }

    /// Stores a value for `ttl` (values over [`MAX_VALUE_BYTES`] are not stored).
    pub async fn try_set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), CacheError> {
        if value.len() > MAX_VALUE_BYTES || ttl.is_zero() {
            return Ok(());
        }
        match self {
            Cache::None => Ok(()),
            Cache::Memory(m) => {
                m.set(key, value, ttl);
                Ok(())
            }
            #[cfg(feature = "redis")]
            Cache::Redis(r) => r.set(key, value, ttl).await,
        }
    }

    /// [`Cache::try_get`], an error counted as a miss (and logged at debug level).
    pub async fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.try_get(key).await.unwrap_or_else(|e| {
            tracing::debug!(error = %e, "cache read failed; treated as a miss");
            None
        })
    }

    /// [`Cache::try_set`], an error ignored (and logged at debug level).
    pub async fn set(&self, key: &str, value: &[u8], ttl: Duration) {
        if let Err(e) = self.try_set(key, value, ttl).await {
            tracing::debug!(error = %e, "cache write failed; ignored");
        }
    }
}

/// A bounded in-process cache (`moka`): at most `max_entries` entries and `max_bytes` of
/// values, each entry expiring after its own time to live. When full, `moka`'s TinyLFU
/// policy decides what goes (it keeps what is read often); eviction and expiry cost O(1) per
/// operation, with no scan of the entries.
///
/// Both bounds are one weight: an entry weighs its key and value, but at least
/// `max_bytes / max_entries`, so the byte bound also caps the count.
#[derive(Debug)]
pub struct MemoryCache {
    entries: moka::sync::Cache<String, Arc<Entry>>,
    max_bytes: usize,
}

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    ttl: Duration,
}

struct EntryExpiry;

impl moka::Expiry<String, Arc<Entry>> for EntryExpiry {
    fn expire_after_create(&self, _: &String, e: &Arc<Entry>, _: Instant) -> Option<Duration> {
        Some(e.ttl)
    }

    fn expire_after_update(
        &self,
        _: &String,
        e: &Arc<Entry>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(e.ttl)
    }
}

impl MemoryCache {
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        let max_entries = max_entries.max(1);
        let min_weight = (max_bytes / max_entries).max(1);
        let entries = moka::sync::Cache::builder()
            .max_capacity(max_bytes as u64)
            .weigher(move |k: &String, e: &Arc<Entry>| {
                let w = (k.len() + e.value.len()).max(min_weight);
                u32::try_from(w).unwrap_or(u32::MAX)
            })
            .expire_after(EntryExpiry)
            .build();
        Self { entries, max_bytes }
    }

    /// Entries held, after pending evictions have run (an expired entry is never returned,
    /// but may be counted here until moka's timer wheel, ~1 s resolution, removes it).
    pub fn len(&self) -> usize {
        self.entries.run_pending_tasks();
        usize::try_from(self.entries.entry_count()).unwrap_or(usize::MAX)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.entries.get(key).map(|e| e.value.clone())
    }

    pub fn set(&self, key: &str, value: &[u8], ttl: Duration) {
        if key.len() + value.len() > self.max_bytes {
            self.entries.invalidate(key);
            return;
        }
        self.entries.insert(
            key.to_string(),
            Arc::new(Entry {
                value: value.to_vec(),
                ttl,
            }),
        );
    }
}

#[cfg(feature = "redis")]
pub use redis_cache::RedisCache;

#[cfg(feature = "redis")]
mod redis_cache {
    use std::time::Duration;

    use redis::aio::{ConnectionManager, ConnectionManagerConfig};

    use super::CacheError;
    use crate::backoff::Backoff;

    /// How long one cache call may take before it counts as a miss.
    const CALL_TIMEOUT: Duration = Duration::from_millis(500);

    /// The Redis cache: `GET` / `SET key value PX ttl` on `kos:<node id>:cache:<key>`.
    #[derive(Debug)]
    pub struct RedisCache {
        conn: ConnectionManager,
        prefix: String,
        target: String,
    }

    impl RedisCache {
        /// Does not wait for Redis: a Redis that is down now is reached on first use and
        /// reconnected in the background.
        pub fn new(url: &str, node_id: &str) -> Result<Self, CacheError> {
            let target = crate::bus::describe_redis_url(url);
            let client = redis::Client::open(url).map_err(|_| CacheError::Url(target.clone()))?;
            let b = Backoff::RECONNECT;
            let cfg = ConnectionManagerConfig::new()
                .set_min_delay(b.initial)
                .set_max_delay(b.max)
                .set_number_of_retries(4)
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(Duration::from_secs(2)));
            let conn = ConnectionManager::new_lazy_with_config(client, cfg)
                .map_err(|_| CacheError::Url(target.clone()))?;
            Ok(Self {
                conn,
                prefix: format!("kos:{node_id}:cache:"),
                target,
            })
        }

        fn unavailable(&self, reason: impl ToString) -> CacheError {
            CacheError::Unavailable {
                target: self.target.clone(),
                reason: reason.to_string(),
            }
        }

        async fn run<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, CacheError> {
            let mut conn = self.conn.clone();
            match tokio::time::timeout(CALL_TIMEOUT, cmd.query_async::<T>(&mut conn)).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(self.unavailable(e)),
                Err(_) => Err(self.unavailable("timed out")),
            }
        }

        pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
            let mut cmd = redis::cmd("GET");
            cmd.arg(format!("{}{key}", self.prefix));
            self.run(cmd).await
        }

        pub async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), CacheError> {
            let mut cmd = redis::cmd("SET");
            cmd.arg(format!("{}{key}", self.prefix))
                .arg(value)
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64);
            self.run::<()>(cmd).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_cache_expires_entries() {
        let c = MemoryCache::new(10, 1000);
        c.set("a", b"1", Duration::from_millis(30));
        c.set("b", b"2", Duration::from_secs(60));
        assert_eq!(c.get("a").as_deref(), Some(&b"1"[..]));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(c.get("a"), None);
        assert_eq!(c.get("b").as_deref(), Some(&b"2"[..]));
        // (The expired entry's memory is reclaimed by moka's timer wheel, ~1 s resolution.)
    }

    #[test]
    fn memory_cache_is_bounded_by_entries_and_bytes() {
        // 3 entries of at most 10 bytes: each entry weighs at least 10 / 3 = 3.
        let c = MemoryCache::new(3, 10);
        for k in ["a", "b", "c", "d", "e", "f"] {
            c.set(k, b"x", Duration::from_secs(60));
        }
        assert!(c.len() <= 3, "{}", c.len());
        // A value as large as the whole cache still fits once the rest goes.
        c.set("big", b"012345678", Duration::from_secs(100));
        for _ in 0..3 {
            // TinyLFU admits a new key once it has been asked for.
            let _ = c.get("big");
            c.set("big", b"012345678", Duration::from_secs(100));
        }
        assert!(c.len() <= 3);
        let held: usize = ["a", "b", "c", "d", "e", "f", "big"]
            .iter()
            .filter_map(|k| c.get(k))
            .map(|v| v.len() + 3)
            .sum();
        assert!(held <= 10 + 3, "{held} bytes held");
        // Over the byte bound (with its key): not cached, and an older value under that key
        // is dropped rather than served stale.
        c.set("f", b"0123456789", Duration::from_secs(100));
        assert_eq!(c.get("f"), None, "over the byte bound: not cached");
    }

    #[test]
    fn memory_cache_overwrites_with_the_new_ttl() {
        let c = MemoryCache::new(10, 1000);
        c.set("k", b"1", Duration::from_secs(60));
        c.set("k", b"2", Duration::from_millis(20));
        assert_eq!(c.get("k").as_deref(), Some(&b"2"[..]));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(c.get("k"), None, "the new, shorter ttl applies");
    }

    #[tokio::test]
    async fn none_never_hits() {
        let c = Cache::None;
        c.set("k", b"v", Duration::from_secs(10)).await;
        assert_eq!(c.get("k").await, None);
        let m = Cache::Memory(MemoryCache::new(4, 100));
        m.set("k", b"v", Duration::from_secs(10)).await;
        assert_eq!(m.get("k").await.as_deref(), Some(&b"v"[..]));
        m.set("z", b"v", Duration::ZERO).await;
        assert_eq!(m.get("z").await, None);
    }
}
