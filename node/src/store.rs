//! The node's database behind repository traits.
//!
//! One implementation over sqlx's `Any` driver serves SQLite (embedded, always built in) and
//! PostgreSQL (cargo feature `postgres`). The SQL in the repositories is portable (`$n`
//! placeholders, `RETURNING`, `ON CONFLICT ... DO UPDATE`); only the migrations differ per
//! backend (`migrations/sqlite`, `migrations/postgres`).
//!
//! Availability: a PostgreSQL that is not reachable at start is retried with exponential
//! backoff ([`Db::connect`]); every attempt is logged with the server's host, never the
//! password. While the node runs, the pool tests each connection before handing it out, so
//! a restarted server is reconnected on the next query. A write returns `Ok` only after the
//! database committed it; a write that meets a lost connection returns
//! [`StoreError::Unavailable`] and is not retried (an insert that may have committed must not
//! be repeated). Idempotent operations (reads, upserts, ping) are retried once on a lost
//! connection.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use kos_config::model::{Database, DatabaseKind};
use serde::Serialize;
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor, Row};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backoff::Backoff;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
#[cfg(feature = "postgres")]
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// Name of the SQLite file inside `database.location`.
pub const SQLITE_FILE: &str = "kos.db";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the {backend} database at {target}: {source}")]
    Connect {
        backend: &'static str,
        /// Where (host, port, database, user; never the password).
        target: String,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "cannot reach the {backend} database at {target}: gave up after {attempts} attempts over {waited:?}: {source}"
    )]
    GaveUp {
        backend: &'static str,
        target: String,
        attempts: u32,
        waited: Duration,
        #[source]
        source: sqlx::Error,
    },
    #[error("start-up cancelled while waiting for the {backend} database at {target}")]
    Cancelled {
        backend: &'static str,
        target: String,
    },
    /// The connection to the server was lost or cannot be made now; the operation did not
    /// complete (a write may be retried by the caller once the server is back).
    #[error("the {backend} database at {target} is unavailable: {source}")]
    Unavailable {
        backend: &'static str,
        target: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot create the database directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database query failed: {0}")]
    Query(#[from] sqlx::Error),
    #[error("PostgreSQL is not in this build (cargo feature `postgres`)")]
    NotBuilt,
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgresql",
        }
    }
}

/// A connection pool with the schema migrated.
#[derive(Clone, Debug)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    /// Where the database is, for messages (no password).
    target: Arc<str>,
}

/// A new event to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    pub kind: String,
    pub actor: String,
    pub snapshot_id: Option<String>,
    pub detail: serde_json::Value,
}

/// A recorded event.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    pub id: i64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    pub kind: String,
    pub actor: String,
    pub snapshot_id: Option<String>,
    pub detail: serde_json::Value,
}

/// Append-only log of node events.
pub trait EventLog {
    fn append(&self, event: &NewEvent) -> impl Future<Output = Result<i64, StoreError>> + Send;
    /// Newest first; `before` pages backwards by id.
    fn recent(
        &self,
        limit: u32,
        before: Option<i64>,
    ) -> impl Future<Output = Result<Vec<Event>, StoreError>> + Send;
}

/// Small key/value facts.
pub trait Meta {
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;
    fn put(&self, key: &str, value: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The federation op-log, as stored: each op's canonical wire form by hash. Inserting an op
/// already stored is a no-op (ops are immutable and content-addressed).
pub trait OpStore {
    fn insert_op(
        &self,
        hash: &str,
        lamport: u64,
        op: &[u8],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Every stored op, parents before children (by lamport).
    fn all_ops(&self) -> impl Future<Output = Result<Vec<Vec<u8>>, StoreError>> + Send;
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Expands `~/` and resolves a relative location against the config directory.
pub fn resolve_location(location: &str, config_dir: &Path) -> PathBuf {
    if let Some(rest) = location.strip_prefix("~/")
        && let Some(home) = std::env::var_os("HOME")
    {
        return PathBuf::from(home).join(rest);
    }
    let p = PathBuf::from(location);
    if p.is_absolute() {
        p
    } else {
        config_dir.join(p)
    }
}

fn percent_encode_userinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Inserts a password into a `scheme://user@host/...` URL.
pub fn url_with_password(url: &str, password: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let pw = percent_encode_userinfo(password);
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user, host)) => format!("{scheme}://{user}:{pw}@{host}{tail}"),
        None => format!("{scheme}://:{pw}@{authority}{tail}"),
    }
}

/// Whether an error means "the server is not reachable (now)" rather than "the request is
/// wrong": I/O errors, pool timeouts, and PostgreSQL's connection-exception (08) and
/// shutdown/start-up (57P0x) classes.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P0")),
        _ => false,
    }
}

/// `host:port/database (user u)` of a PostgreSQL URL, for messages: never the password.
pub fn describe_postgres_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or("localhost");
            let port = u.port().unwrap_or(5432);
            let db = u.path().trim_start_matches('/');
            let mut s = format!("{host}:{port}");
            if !db.is_empty() {
                s.push('/');
                s.push_str(db);
            }
            if !u.username().is_empty() {
                s.push_str(&format!(" (user {})", u.username()));
            }
            s
        }
        Err(_) => "<unparsable URL>".into(),
    }
}

impl Db {
    /// Opens the database the configuration selects and runs migrations, once: a server that
    /// is not reachable is an error at once. The daemon uses [`Db::connect`].
    pub async fn open(
        cfg: &Database,
        kind: DatabaseKind,
        config_dir: &Path,
    ) -> Result<Self, StoreError> {
        Self::connect(
            cfg,
            kind,
            config_dir,
            Backoff {
                initial: Duration::ZERO,
                max: Duration::ZERO,
                give_up_after: Some(Duration::ZERO),
            },
            &CancellationToken::new(),
        )
        .await
    }

    /// Opens the database the configuration selects and runs migrations. A PostgreSQL server
    /// that cannot be reached (connection refused, timeout, starting up) is retried on the
    /// `backoff` schedule, each attempt logged; `cancel` (the node's shutdown) stops waiting.
    /// Other errors (authentication, a bad URL, a failed migration) are returned at once.
    pub async fn connect(
        cfg: &Database,
        kind: DatabaseKind,
        config_dir: &Path,
        backoff: Backoff,
        cancel: &CancellationToken,
    ) -> Result<Self, StoreError> {
        match kind {
            DatabaseKind::Sqlite => {
                let dir = resolve_location(&cfg.location, config_dir);
                std::fs::create_dir_all(&dir).map_err(|source| StoreError::Dir {
                    path: dir.clone(),
                    source,
                })?;
                Self::open_sqlite(&dir.join(SQLITE_FILE), cfg.max_connections.max(1)).await
            }
            DatabaseKind::Postgresql => {
                let url = cfg.url.clone().unwrap_or_default();
                let url = match &cfg.password {
                    Some(p) => url_with_password(&url, p.expose()),
                    None => url,
                };
                Self::connect_postgres(
                    &url,
                    cfg.max_connections,
                    cfg.min_connections,
                    cfg.connect_timeout.get(),
                    backoff,
                    cancel,
                )
                .await
            }
        }
    }

    /// [`Db::open_postgres`] retried on `backoff` while the server is unreachable.
    pub async fn connect_postgres(
        url: &str,
        max: u32,
        min: u32,
        connect_timeout: Duration,
        backoff: Backoff,
        cancel: &CancellationToken,
    ) -> Result<Self, StoreError> {
        install_default_drivers();
        let target = describe_postgres_url(url);
        let mut delays = backoff.delays();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let attempt = async {
                // One plain connection first: the pool would only report "timed out", this
                // gives the cause (connection refused, the server is starting up, ...).
                let probe = tokio::time::timeout(
                    connect_timeout,
                    <sqlx::AnyConnection as sqlx::Connection>::connect(url),
                )
                .await;
                match probe {
                    Ok(Ok(conn)) => {
                        let _ = sqlx::Connection::close(conn).await;
                        Self::open_postgres(url, max, min, connect_timeout).await
                    }
                    Ok(Err(source)) => Err(StoreError::Connect {
                        backend: "PostgreSQL",
                        target: target.clone(),
                        source,
                    }),
                    Err(_) => Err(StoreError::Connect {
                        backend: "PostgreSQL",
                        target: target.clone(),
                        source: sqlx::Error::Io(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("no connection within {connect_timeout:?}"),
                        )),
                    }),
                }
            };
            let result = tokio::select! {
                () = cancel.cancelled() => {
                    return Err(StoreError::Cancelled { backend: "PostgreSQL", target });
                }
                r = attempt => r,
            };
            let source = match result {
                Err(StoreError::Connect { source, .. }) if is_transient(&source) => source,
                Ok(db) => {
                    if attempts > 1 {
                        info!(%target, attempts, "PostgreSQL reached");
                    }
                    return Ok(db);
                }
                Err(e) => return Err(e),
            };
            let Some(wait) = delays.next() else {
                if attempts == 1 {
                    return Err(StoreError::Connect {
                        backend: "PostgreSQL",
                        target,
                        source,
                    });
                }
                return Err(StoreError::GaveUp {
                    backend: "PostgreSQL",
                    target,
                    attempts,
                    waited: delays.waited(),
                    source,
                });
            };
            warn!(%target, attempt = attempts, retry_in = ?wait, error = %source, "PostgreSQL is not reachable; retrying");
            tokio::select! {
                () = cancel.cancelled() => {
                    return Err(StoreError::Cancelled { backend: "PostgreSQL", target });
                }
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    pub async fn open_sqlite(path: &Path, max_connections: u32) -> Result<Self, StoreError> {
        install_default_drivers();
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;")
                        .await
                        .map(|_| ())
                })
            })
            .connect(&url)
            .await
            .map_err(|source| StoreError::Connect {
                backend: "SQLite",
                target: path.display().to_string(),
                source,
            })?;
        SQLITE_MIGRATIONS.run(&pool).await?;
        Ok(Self {
            pool,
            backend: Backend::Sqlite,
            target: path.display().to_string().into(),
        })
    }

    #[cfg(feature = "postgres")]
    pub async fn open_postgres(
        url: &str,
        max: u32,
        min: u32,
        connect_timeout: Duration,
    ) -> Result<Self, StoreError> {
        install_default_drivers();
        let target = describe_postgres_url(url);
        // Pool settings come from the profile (`database.max_connections`,
        // `min_connections`, `connect_timeout`). Every connection is tested before use, so
        // connections broken by a server restart are replaced instead of failing a query.
        let pool = AnyPoolOptions::new()
            .max_connections(max.max(1))
            .min_connections(min.min(max.max(1)))
            .acquire_timeout(connect_timeout)
            .test_before_acquire(true)
            .connect(url)
            .await
            .map_err(|source| StoreError::Connect {
                backend: "PostgreSQL",
                target: target.clone(),
                source,
            })?;
        POSTGRES_MIGRATIONS.run(&pool).await?;
        Ok(Self {
            pool,
            backend: Backend::Postgres,
            target: target.into(),
        })
    }

    #[cfg(not(feature = "postgres"))]
    pub async fn open_postgres(_: &str, _: u32, _: u32, _: Duration) -> Result<Self, StoreError> {
        Err(StoreError::NotBuilt)
    }

    /// The pool, for repositories in other modules (`a2a::store`).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        }
    }

    /// Classifies a query error: a lost or unreachable server is `Unavailable` (naming the
    /// server), anything else a failed query.
    pub fn query_err(&self, e: sqlx::Error) -> StoreError {
        if is_transient(&e) {
            StoreError::Unavailable {
                backend: self.backend_name(),
                target: self.target.to_string(),
                source: e,
            }
        } else {
            StoreError::Query(e)
        }
    }

    /// Runs an idempotent operation, once more after a short pause if the first attempt met
    /// a lost connection (the pool then hands out a fresh one).
    pub async fn idempotent<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        match op().await {
            Err(e) if is_transient(&e) => {
                warn!(target = %self.target, error = %e, "database connection lost; retrying an idempotent operation once");
                tokio::time::sleep(Duration::from_millis(100)).await;
                op().await.map_err(|e| self.query_err(e))
            }
            r => r.map_err(|e| self.query_err(e)),
        }
    }

    /// Checks the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.idempotent(|| sqlx::query("SELECT 1").execute(&self.pool))
            .await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

impl EventLog for Db {
    async fn append(&self, e: &NewEvent) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "INSERT INTO node_events (at_ms, kind, actor, snapshot_id, detail) VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(now_ms())
        .bind(&e.kind)
        .bind(&e.actor)
        .bind(e.snapshot_id.as_deref())
        .bind(e.detail.to_string())
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.query_err(e))?;
        Ok(row.try_get::<i64, _>(0)?)
    }

    async fn recent(&self, limit: u32, before: Option<i64>) -> Result<Vec<Event>, StoreError> {
        let rows = self
            .idempotent(|| {
                sqlx::query(
                    "SELECT id, at_ms, kind, actor, snapshot_id, detail FROM node_events WHERE id < $1 ORDER BY id DESC LIMIT $2",
                )
                .bind(before.unwrap_or(i64::MAX))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
            })
            .await?;
        rows.into_iter()
            .map(|r| {
                let detail: String = r.try_get(5)?;
                Ok(Event {
                    id: r.try_get(0)?,
                    at_ms: r.try_get(1)?,
                    kind: r.try_get(2)?,
                    actor: r.try_get(3)?,
                    snapshot_id: r.try_get(4)?,
                    detail: serde_json::from_str(&detail)
                        .unwrap_or(serde_json::Value::String(detail)),
                })
            })
            .collect()
    }
}

impl OpStore for Db {
    async fn insert_op(&self, hash: &str, lamport: u64, op: &[u8]) -> Result<(), StoreError> {
        use base64::Engine as _;
        sqlx::query(
            "INSERT INTO fedlog_ops (hash, lamport, op, received_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (hash) DO NOTHING",
        )
        .bind(hash)
        .bind(i64::try_from(lamport).unwrap_or(i64::MAX))
        .bind(base64::engine::general_purpose::STANDARD.encode(op))
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn all_ops(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        use base64::Engine as _;
        let rows = sqlx::query("SELECT hash, op FROM fedlog_ops ORDER BY lamport, hash")
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|r| {
                let hash: String = r.try_get(0)?;
                let text: String = r.try_get(1)?;
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|e| StoreError::Corrupt(format!("fedlog op {hash}: {e}")))
            })
            .collect()
    }
}

impl Meta for Db {
    async fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        let row = self
            .idempotent(|| {
                sqlx::query("SELECT value FROM node_meta WHERE key = $1")
                    .bind(key)
                    .fetch_optional(&self.pool)
            })
            .await?;
        Ok(match row {
            Some(r) => Some(r.try_get(0)?),
            None => None,
        })
    }

    async fn put(&self, key: &str, value: &str) -> Result<(), StoreError> {
        // An upsert of one value: repeating it is harmless.
        let at = now_ms();
        self.idempotent(|| {
            sqlx::query(
                "INSERT INTO node_meta (key, value, updated_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_ms = excluded.updated_ms",
            )
            .bind(key)
            .bind(value)
            .bind(at)
            .execute(&self.pool)
        })
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_goes_into_userinfo() {
        assert_eq!(
            url_with_password("postgres://kos@db:5432/kos", "p@ss:w/rd"),
            "postgres://kos:p%40ss%3Aw%2Frd@db:5432/kos"
        );
        assert_eq!(
            url_with_password("postgres://db/kos", "x"),
            "postgres://:x@db/kos"
        );
    }

    #[test]
    fn postgres_targets_never_show_the_password() {
        let url = url_with_password("postgres://kos@db.example:6543/kosdb", "hunter2-secret");
        let d = describe_postgres_url(&url);
        assert_eq!(d, "db.example:6543/kosdb (user kos)");
        assert!(!d.contains("hunter2"));
        assert_eq!(describe_postgres_url("postgres://db/kos"), "db:5432/kos");
    }

    #[test]
    fn locations_resolve_against_the_config_dir() {
        assert_eq!(
            resolve_location("data", Path::new("/etc/kos")),
            PathBuf::from("/etc/kos/data")
        );
        assert_eq!(
            resolve_location("/var/lib/kos", Path::new("/etc/kos")),
            PathBuf::from("/var/lib/kos")
        );
    }
}
