//! The node's database behind repository traits.
//!
//! One implementation over sqlx's `Any` driver serves SQLite (embedded, always built in) and
//! PostgreSQL (cargo feature `postgres`). The SQL in the repositories is portable (`$n`
//! placeholders, `RETURNING`, `ON CONFLICT ... DO UPDATE`); only the migrations differ per
//! backend (`migrations/sqlite`, `migrations/postgres`).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kos_config::model::{Database, DatabaseKind};
use serde::Serialize;
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor, Row};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
#[cfg(feature = "postgres")]
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// Name of the SQLite file inside `database.location`.
pub const SQLITE_FILE: &str = "kos.db";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the {backend} database: {source}")]
    Connect {
        backend: &'static str,
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

impl Db {
    /// Opens the database the configuration selects and runs migrations.
    pub async fn open(
        cfg: &Database,
        kind: DatabaseKind,
        config_dir: &Path,
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
                Self::open_postgres(
                    &url,
                    cfg.max_connections,
                    cfg.min_connections,
                    cfg.connect_timeout.get(),
                )
                .await
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
            .map_err(|source| StoreError::Connect { backend: "SQLite", source })?;
        SQLITE_MIGRATIONS.run(&pool).await?;
        Ok(Self {
            pool,
            backend: Backend::Sqlite,
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
        let pool = AnyPoolOptions::new()
            .max_connections(max.max(1))
            .min_connections(min)
            .acquire_timeout(connect_timeout)
            .connect(url)
            .await
            .map_err(|source| StoreError::Connect {
                backend: "PostgreSQL",
                source,
            })?;
        POSTGRES_MIGRATIONS.run(&pool).await?;
        Ok(Self {
            pool,
            backend: Backend::Postgres,
        })
    }

    #[cfg(not(feature = "postgres"))]
    pub async fn open_postgres(_: &str, _: u32, _: u32, _: Duration) -> Result<Self, StoreError> {
        Err(StoreError::NotBuilt)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Checks the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
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
        .await?;
        Ok(row.try_get::<i64, _>(0)?)
    }

    async fn recent(&self, limit: u32, before: Option<i64>) -> Result<Vec<Event>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at_ms, kind, actor, snapshot_id, detail FROM node_events WHERE id < $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(before.unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
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
        let row = sqlx::query("SELECT value FROM node_meta WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some(r.try_get(0)?),
            None => None,
        })
    }

    async fn put(&self, key: &str, value: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO node_meta (key, value, updated_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_ms = excluded.updated_ms",
        )
        .bind(key)
        .bind(value)
        .bind(now_ms())
        .execute(&self.pool)
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
