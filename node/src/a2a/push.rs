//! Push notifications (A2A v1.0 §4.3, §13.2): the webhook configs of a task, the SSRF guard
//! on their URLs, and durable at-least-once delivery through an outbox table.
//!
//! - **Configs** live in `a2a_push_configs` (at most [`MAX_CONFIGS_PER_TASK`] per task; the id
//!   is unique per task and generated when the client sets none). The caller (the task host)
//!   checks that the task exists and is visible to the caller before it calls in here.
//! - **Payload** (§4.3.3): `POST <url>` with `Content-Type: application/json` and the
//!   `StreamResponse` JSON as body; `Authorization: <scheme> <credentials>` when the config
//!   has `authentication` with credentials, and `X-A2A-Notification-Token: <token>` when it
//!   has a token (the header of the spec's §6.6 example). A 2xx answer acknowledges; anything
//!   else, a redirect included (redirects are never followed), is a failed attempt.
//! - **SSRF guard**: webhooks on loopback, unspecified, link-local, private, unique-local,
//!   CGNAT, multicast, broadcast and reserved addresses (and the IPv4-mapped, -compatible,
//!   6to4 and NAT64 IPv6 forms of these) are refused unless `a2a.push.allow_private` is set.
//!   The cloud metadata endpoints (`169.254.169.254`, `fd00:ec2::254`) are refused even then:
//!   no client's webhook lives there, and they hand out the host's cloud credentials. The
//!   rule is checked when a config is created (every resolved address of the host must pass)
//!   and again at every delivery (DNS rebinding): literal IPs before sending, host names in
//!   the HTTP client's resolver, which drops the blocked addresses. No proxy is used.
//! - **Delivery**: [`Push::enqueue`] writes one outbox row per config of the task;
//!   [`Push::run`] delivers them. A webhook sees a task's notifications in order: the next
//!   row of a (task, config) pair is sent only after the one before it was acknowledged or
//!   dropped; different webhooks do not wait for each other. A failed attempt is retried with
//!   exponential backoff and jitter (1 s, 2 s, 4 s ... up to 5 min); a notification is
//!   dropped after `a2a.push.max_attempts` attempts, when its config was deleted, or when its
//!   target is no longer allowed. Rows survive a restart; a row being delivered is leased
//!   (its `next_ms` moved past the request's time limit), so a crash mid-delivery repeats
//!   it later and two nodes on one PostgreSQL do not send it twice at the same time.
//!
//! Credentials and tokens stay in the database and in the request; logs name the task id and
//! the config id only (never the URL, whose query may carry a secret).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt as _;
use kos_agents::A2aError;
use kos_agents::requests::{
    DEFAULT_PAGE_SIZE, ListTaskPushNotificationConfigsRequest,
    ListTaskPushNotificationConfigsResponse, MAX_PAGE_SIZE, TaskPushNotificationConfig,
};
use kos_agents::types::StreamResponse;
use kos_config::model::A2aPush;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use sqlx::Row;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use url::{Host, Url};

use crate::store::{Db, StoreError, now_ms};

/// Push notification configs one task may have.
pub const MAX_CONFIGS_PER_TASK: i64 = 10;
/// The header carrying the config's token (spec §6.6 example; the a2a-sdk's name).
pub const TOKEN_HEADER: &str = "X-A2A-Notification-Token";
/// Longest accepted webhook URL.
const MAX_URL_LEN: usize = 2048;
/// Longest accepted config id.
const MAX_ID_LEN: usize = 128;
/// Longest accepted token, and `Authorization` value.
const MAX_SECRET_LEN: usize = 4096;
/// Outbox rows loaded per round.
const BATCH: i64 = 16;
/// Deliveries in flight at once.
const CONCURRENCY: usize = 4;
/// Longest sleep of an idle worker (rows written by another node on the same database have
/// no wake-up of their own).
const IDLE_POLL: Duration = Duration::from_secs(30);
/// Pause after the outbox could not be read.
const DB_RETRY: Duration = Duration::from_secs(1);
/// Added to the request time limit for the lease of a row being delivered.
const LEASE_MARGIN: Duration = Duration::from_secs(5);
/// First retry wait and its cap (doubling in between).
const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------------------------------------
// SSRF guard
// ---------------------------------------------------------------------------------------------

/// Cloud metadata endpoints: refused even with `allow_private`.
fn is_metadata(ip: IpAddr) -> bool {
    const AWS_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);
    match ip {
        IpAddr::V4(v4) => v4 == Ipv4Addr::new(169, 254, 169, 254),
        IpAddr::V6(v6) => v6 == AWS_V6 || embedded_v4(v6).is_some_and(|v4| is_metadata(v4.into())),
    }
}

/// The IPv4 address an IPv6 address stands for: IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible
/// `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d` and 6to4 `2002:aabb:ccdd::/48`.
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let tail = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    match s {
        [0, 0, 0, 0, 0, 0xffff, hi, lo] | [0, 0, 0, 0, 0, 0, hi, lo] => Some(tail(hi, lo)),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(tail(hi, lo)),
        [0x2002, hi, lo, ..] => Some(tail(hi, lo)),
        _ => None,
    }
}

fn v4_is_special(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()                      // 127/8
        || a == 0                         // 0/8, "this network" (0.0.0.0 reaches the host)
        || ip.is_link_local()             // 169.254/16 (the metadata address too)
        || ip.is_private()                // 10/8, 172.16/12, 192.168/16
        || (a == 100 && (b & 0xc0) == 64) // 100.64/10, CGNAT
        || ip.is_multicast()              // 224/4
        || a >= 240 // 240/4 reserved, 255.255.255.255 broadcast
}

fn v6_is_special(ip: Ipv6Addr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        // `::` and `::1` are "IPv4-compatible" 0.0.0.0 and 0.0.0.1: special either way.
        return v4_is_special(v4);
    }
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()          // ff00::/8
        || (first & 0xffc0) == 0xfe80 // fe80::/10 link-local
        || (first & 0xffc0) == 0xfec0 // fec0::/10 site-local (deprecated)
        || (first & 0xfe00) == 0xfc00 // fc00::/7 unique local
}

/// Whether a webhook may not be reached at `ip` (see the module docs for the list).
pub fn is_blocked(ip: IpAddr, allow_private: bool) -> bool {
    if is_metadata(ip) {
        return true;
    }
    if allow_private {
        return false;
    }
    match ip {
        IpAddr::V4(v4) => v4_is_special(v4),
        IpAddr::V6(v6) => v6_is_special(v6),
    }
}

const BLOCKED: &str =
    "must not point to a loopback, private, link-local or otherwise internal address";

fn check_url_at(url: &str, allow_private: bool, field: &str) -> Result<Url, A2aError> {
    if url.len() > MAX_URL_LEN {
        return Err(A2aError::invalid_field(
            field,
            &format!("must be at most {MAX_URL_LEN} characters"),
        ));
    }
    let parsed =
        Url::parse(url).map_err(|_| A2aError::invalid_field(field, "is not a valid URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(A2aError::invalid_field(
            field,
            "must be an http or https URL",
        ));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(A2aError::invalid_field(
            field,
            "must not carry credentials (use authentication instead)",
        ));
    }
    let blocked = match parsed.host() {
        None => return Err(A2aError::invalid_field(field, "must name a host")),
        Some(Host::Ipv4(v4)) => is_blocked(v4.into(), allow_private),
        Some(Host::Ipv6(v6)) => is_blocked(v6.into(), allow_private),
        Some(Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            !allow_private && (name == "localhost" || name.ends_with(".localhost"))
        }
    };
    if blocked {
        return Err(A2aError::invalid_field(field, BLOCKED));
    }
    Ok(parsed)
}

/// Checks the shape of a webhook URL: http or https, a host, no userinfo; a literal IP host
/// (in any notation the URL standard accepts, `http://0x7f.1/` included) must be allowed.
/// Errors name the field `url`.
pub fn check_url(url: &str, allow_private: bool) -> Result<Url, A2aError> {
    check_url_at(url, allow_private, "url")
}

/// [`check_url`], then resolves a host name and refuses it if any of its addresses is
/// blocked. Errors name `field` (e.g. `configuration.taskPushNotificationConfig.url`) and say
/// nothing about the resolver.
pub async fn check_target(url: &str, allow_private: bool, field: &str) -> Result<Url, A2aError> {
    let parsed = check_url_at(url, allow_private, field)?;
    if let Some(Host::Domain(name)) = parsed.host() {
        let port = parsed.port_or_known_default().unwrap_or(80);
        let addrs: Vec<SocketAddr> = match tokio::net::lookup_host((name, port)).await {
            Ok(addrs) => addrs.collect(),
            Err(e) => {
                debug!(error = %e, "push webhook host does not resolve");
                Vec::new()
            }
        };
        if addrs.is_empty() {
            return Err(A2aError::invalid_field(
                field,
                "names a host that does not resolve",
            ));
        }
        if addrs.iter().any(|a| is_blocked(a.ip(), allow_private)) {
            return Err(A2aError::invalid_field(field, BLOCKED));
        }
    }
    Ok(parsed)
}

/// The HTTP client's resolver: resolves with tokio and keeps only the allowed addresses, so a
/// name that was public when the config was created cannot be rebound to an internal one.
#[derive(Debug, Clone, Copy)]
struct GuardedResolver {
    allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let kept: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| !is_blocked(a.ip(), allow_private))
                .collect();
            if kept.is_empty() {
                return Err("the webhook host has no allowed address".into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(kept.into_iter());
            Ok(addrs)
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Configs
// ---------------------------------------------------------------------------------------------

/// A failure of a config operation: the client's fault, or the database's.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The request is refused; answer it as is.
    #[error(transparent)]
    Invalid(#[from] A2aError),
    /// The database failed; log it and answer `A2aError::Internal`.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for PushError {
    fn from(e: sqlx::Error) -> Self {
        PushError::Store(StoreError::Query(e))
    }
}

impl PushError {
    /// The error for the client; a database failure is logged here and becomes `Internal`.
    pub fn into_a2a(self) -> A2aError {
        match self {
            PushError::Invalid(e) => e,
            PushError::Store(e) => {
                warn!(error = %e, "push notification config operation failed");
                A2aError::Internal
            }
        }
    }
}

fn field(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Whether `s` is an HTTP token (RFC 9110 §5.6.2), the syntax of an auth scheme.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The `Authorization` value of a config (`None` without authentication or credentials).
fn authorization(cfg: &TaskPushNotificationConfig) -> Result<Option<HeaderValue>, ()> {
    match &cfg.authentication {
        Some(auth) if !auth.credentials.is_empty() => {
            if !is_token(&auth.scheme) {
                return Err(());
            }
            let mut v = HeaderValue::from_str(&format!("{} {}", auth.scheme, auth.credentials))
                .map_err(|_| ())?;
            v.set_sensitive(true);
            Ok(Some(v))
        }
        _ => Ok(None),
    }
}

/// The token header value of a config (`None` without a token).
fn token(cfg: &TaskPushNotificationConfig) -> Result<Option<HeaderValue>, ()> {
    if cfg.token.is_empty() {
        return Ok(None);
    }
    let mut v = HeaderValue::from_str(&cfg.token).map_err(|_| ())?;
    v.set_sensitive(true);
    Ok(Some(v))
}

fn new_config_id() -> String {
    static FALLBACK: AtomicU64 = AtomicU64::new(0);
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_ok() {
        hex::encode(bytes)
    } else {
        let n = FALLBACK.fetch_add(1, Ordering::Relaxed);
        format!("{:x}-{n:x}", now_ms())
    }
}

fn parse_config(text: &str) -> Result<TaskPushNotificationConfig, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt(format!("push notification config: {e}")))
}

// ---------------------------------------------------------------------------------------------
// The handle
// ---------------------------------------------------------------------------------------------

/// Push notification configs and their delivery. Cheap to clone; every clone shares the
/// database, the HTTP client and the worker's wake-up.
#[derive(Clone)]
pub struct Push {
    db: Db,
    settings: A2aPush,
    /// The time limit of one attempt (the settings' one, or the default when that is zero).
    timeout: Duration,
    http: reqwest::Client,
    wake: Arc<Notify>,
    backoff_base: Duration,
    backoff_cap: Duration,
}

impl std::fmt::Debug for Push {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The settings hold no secrets; the configs (with their credentials) stay in the
        // database.
        f.debug_struct("Push")
            .field("enabled", &self.settings.enabled)
            .field("allow_private", &self.settings.allow_private)
            .field("max_attempts", &self.settings.max_attempts)
            .field("timeout", &self.timeout)
            .field("backoff_base", &self.backoff_base)
            .field("backoff_cap", &self.backoff_cap)
            .finish_non_exhaustive()
    }
}

/// One outbox row due for delivery.
#[derive(Debug)]
struct Due {
    id: i64,
    task_id: String,
    config_id: String,
    body: String,
    attempts: i64,
    next_ms: i64,
}

/// How an attempt ended.
#[derive(Debug)]
enum Attempt {
    Delivered,
    /// Retry later (the reason is for the log).
    Failed(String),
    /// Never deliverable: drop the row now.
    Drop(&'static str),
}

impl Push {
    /// A handle over `db` with the `a2a.push` settings; builds its HTTP client (guarded
    /// resolver, no proxy, no redirects, the settings' time limit).
    pub fn new(db: Db, settings: &A2aPush) -> Result<Self, reqwest::Error> {
        let timeout = if settings.timeout.0.is_zero() {
            A2aPush::default().timeout.0
        } else {
            settings.timeout.0
        };
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(timeout)
            .dns_resolver(Arc::new(GuardedResolver {
                allow_private: settings.allow_private,
            }))
            .user_agent(concat!("kos-node/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            db,
            settings: settings.clone(),
            timeout,
            http,
            wake: Arc::new(Notify::new()),
            backoff_base: BACKOFF_BASE,
            backoff_cap: BACKOFF_CAP,
        })
    }

    /// Sets the retry schedule: `base` after the first failure, doubling up to `cap`.
    pub fn with_backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_cap = cap.max(base);
        self
    }

    /// The `a2a.push` settings in use.
    pub fn settings(&self) -> &A2aPush {
        &self.settings
    }

    /// Checks a config as a client sent it (`prefix` is its field path, empty at the top
    /// level): the URL (resolved), the id's length, and that the token and the authentication
    /// make valid header values.
    pub async fn validate_config(
        &self,
        cfg: &TaskPushNotificationConfig,
        prefix: &str,
    ) -> Result<(), A2aError> {
        if cfg.id.len() > MAX_ID_LEN || cfg.id.chars().any(char::is_control) {
            return Err(A2aError::invalid_field(
                &field(prefix, "id"),
                &format!("must be at most {MAX_ID_LEN} characters without control characters"),
            ));
        }
        check_target(&cfg.url, self.settings.allow_private, &field(prefix, "url")).await?;
        if cfg.token.len() > MAX_SECRET_LEN || token(cfg).is_err() {
            return Err(A2aError::invalid_field(
                &field(prefix, "token"),
                "must be visible ASCII, at most 4096 characters",
            ));
        }
        if let Some(auth) = &cfg.authentication {
            if !is_token(&auth.scheme) {
                return Err(A2aError::invalid_field(
                    &field(prefix, "authentication.scheme"),
                    "must be an HTTP authentication scheme such as Bearer or Basic",
                ));
            }
            if auth.credentials.len() > MAX_SECRET_LEN || authorization(cfg).is_err() {
                return Err(A2aError::invalid_field(
                    &field(prefix, "authentication.credentials"),
                    "must be visible ASCII, at most 4096 characters",
                ));
            }
        }
        Ok(())
    }

    /// Creates (or, with the id of an existing one, replaces) a config of `task_id` and
    /// returns it as stored: `taskId` filled, `id` generated when empty. A task has at most
    /// [`MAX_CONFIGS_PER_TASK`] configs. The caller has checked the task.
    pub async fn create_config(
        &self,
        task_id: &str,
        mut cfg: TaskPushNotificationConfig,
    ) -> Result<TaskPushNotificationConfig, PushError> {
        if !self.settings.enabled {
            return Err(A2aError::PushNotificationNotSupported.into());
        }
        if !cfg.task_id.is_empty() && cfg.task_id != task_id {
            return Err(A2aError::invalid_field("taskId", "does not match the task").into());
        }
        self.validate_config(&cfg, "").await?;
        cfg.task_id = task_id.to_owned();
        if cfg.id.is_empty() {
            cfg.id = new_config_id();
        }
        let text = serde_json::to_string(&cfg)
            .map_err(|e| StoreError::Corrupt(format!("push notification config: {e}")))?;
        // One statement: the bound and the write cannot be separated by another writer on
        // SQLite (writes are serial); on PostgreSQL two concurrent creates may both pass.
        let done = self
            .db
            .idempotent(|| {
                sqlx::query(
                    "INSERT INTO a2a_push_configs (task_id, id, config, created_ms) \
                     SELECT $1, $2, $3, $4 \
                     WHERE (SELECT COUNT(*) FROM a2a_push_configs WHERE task_id = $5 AND id <> $6) < $7 \
                     ON CONFLICT (task_id, id) DO UPDATE SET config = excluded.config",
                )
                .bind(task_id)
                .bind(&cfg.id)
                .bind(&text)
                .bind(now_ms())
                .bind(task_id)
                .bind(&cfg.id)
                .bind(MAX_CONFIGS_PER_TASK)
                .execute(self.db.pool())
            })
            .await?;
        if done.rows_affected() == 0 {
            return Err(A2aError::invalid_field(
                "id",
                &format!("a task has at most {MAX_CONFIGS_PER_TASK} push notification configs"),
            )
            .into());
        }
        Ok(cfg)
    }

    /// One config of a task.
    pub async fn get_config(
        &self,
        task_id: &str,
        id: &str,
    ) -> Result<Option<TaskPushNotificationConfig>, StoreError> {
        let row = self
            .db
            .idempotent(|| {
                sqlx::query("SELECT config FROM a2a_push_configs WHERE task_id = $1 AND id = $2")
                    .bind(task_id)
                    .bind(id)
                    .fetch_optional(self.db.pool())
            })
            .await?;
        match row {
            Some(r) => Ok(Some(parse_config(&r.try_get::<String, _>(0)?)?)),
            None => Ok(None),
        }
    }

    /// A page of a task's configs, ordered by id: `pageSize` 1..=100 (0: 50), `pageToken` the
    /// last id of the previous page.
    pub async fn list_configs(
        &self,
        req: &ListTaskPushNotificationConfigsRequest,
    ) -> Result<ListTaskPushNotificationConfigsResponse, PushError> {
        let page_size = match req.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => match u32::try_from(n) {
                Ok(n) if n <= MAX_PAGE_SIZE => n,
                _ => {
                    return Err(A2aError::invalid_field(
                        "pageSize",
                        &format!("must be between 1 and {MAX_PAGE_SIZE} inclusive, got {n}"),
                    )
                    .into());
                }
            },
        };
        let rows = self
            .db
            .idempotent(|| {
                sqlx::query(
                    "SELECT config FROM a2a_push_configs WHERE task_id = $1 AND id > $2 \
                     ORDER BY id LIMIT $3",
                )
                .bind(&req.task_id)
                .bind(&req.page_token)
                .bind(i64::from(page_size) + 1)
                .fetch_all(self.db.pool())
            })
            .await?;
        let more = rows.len() > page_size as usize;
        let mut configs = Vec::with_capacity(rows.len());
        for r in rows.iter().take(page_size as usize) {
            configs.push(parse_config(&r.try_get::<String, _>(0)?)?);
        }
        let next_page_token = match configs.last() {
            Some(last) if more => last.id.clone(),
            _ => String::new(),
        };
        Ok(ListTaskPushNotificationConfigsResponse {
            configs,
            next_page_token,
        })
    }

    /// Deletes a config and its undelivered notifications; whether it existed.
    pub async fn delete_config(&self, task_id: &str, id: &str) -> Result<bool, StoreError> {
        let done = self
            .db
            .idempotent(|| {
                sqlx::query("DELETE FROM a2a_push_configs WHERE task_id = $1 AND id = $2")
                    .bind(task_id)
                    .bind(id)
                    .execute(self.db.pool())
            })
            .await?;
        self.db
            .idempotent(|| {
                sqlx::query("DELETE FROM a2a_push_outbox WHERE task_id = $1 AND config_id = $2")
                    .bind(task_id)
                    .bind(id)
                    .execute(self.db.pool())
            })
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Deletes every config of a task and its undelivered notifications (the task is
    /// purged); how many configs there were.
    pub async fn delete_task_configs(&self, task_id: &str) -> Result<u64, StoreError> {
        let done = self
            .db
            .idempotent(|| {
                sqlx::query("DELETE FROM a2a_push_configs WHERE task_id = $1")
                    .bind(task_id)
                    .execute(self.db.pool())
            })
            .await?;
        self.db
            .idempotent(|| {
                sqlx::query("DELETE FROM a2a_push_outbox WHERE task_id = $1")
                    .bind(task_id)
                    .execute(self.db.pool())
            })
            .await?;
        Ok(done.rows_affected())
    }

    // -----------------------------------------------------------------------------------------
    // Delivery
    // -----------------------------------------------------------------------------------------

    /// Queues `event` for every config of `task_id` (one outbox row each, in one statement)
    /// and wakes the worker; how many were queued. Nothing is queued while push
    /// notifications are disabled.
    pub async fn enqueue(
        &self,
        task_id: &str,
        event: &StreamResponse,
    ) -> Result<usize, StoreError> {
        if !self.settings.enabled {
            return Ok(0);
        }
        let body = serde_json::to_string(event)
            .map_err(|e| StoreError::Corrupt(format!("push notification body: {e}")))?;
        let now = now_ms();
        // Not retried on a lost connection: the insert may have committed.
        let done = sqlx::query(
            "INSERT INTO a2a_push_outbox (task_id, config_id, body, attempts, next_ms, created_ms) \
             SELECT task_id, id, $1, 0, $2, $3 FROM a2a_push_configs WHERE task_id = $4 ORDER BY id",
        )
        .bind(&body)
        .bind(now)
        .bind(now)
        .bind(task_id)
        .execute(self.db.pool())
        .await
        .map_err(|e| self.db.query_err(e))?;
        let n = usize::try_from(done.rows_affected()).unwrap_or(usize::MAX);
        if n > 0 {
            self.wake.notify_one();
        }
        Ok(n)
    }

    /// The delivery worker; returns when `stop` is cancelled (a delivery in flight is
    /// abandoned and repeated after the lease, by this node's next start or another node).
    pub async fn run(self, stop: CancellationToken) {
        debug!(
            "push notification worker started (at most {} attempts)",
            self.max_attempts()
        );
        loop {
            if stop.is_cancelled() {
                return;
            }
            let now = now_ms();
            let due = tokio::select! {
                () = stop.cancelled() => return,
                due = self.due(now) => due,
            };
            match due {
                Err(e) => {
                    warn!(error = %e, "cannot read the push notification outbox; retrying");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(DB_RETRY) => {}
                    }
                }
                Ok(rows) if rows.is_empty() => {
                    let wait = match self.earliest().await {
                        Ok(Some(next)) => {
                            Duration::from_millis(u64::try_from(next - now).unwrap_or(0))
                        }
                        Ok(None) => IDLE_POLL,
                        Err(e) => {
                            warn!(error = %e, "cannot read the push notification outbox; retrying");
                            DB_RETRY
                        }
                    };
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = self.wake.notified() => {}
                        () = tokio::time::sleep(wait.min(IDLE_POLL)) => {}
                    }
                }
                Ok(rows) => {
                    let round = futures::stream::iter(rows)
                        .for_each_concurrent(CONCURRENCY, |row| self.deliver_row(row));
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = round => {}
                    }
                }
            }
        }
    }

    fn max_attempts(&self) -> i64 {
        i64::from(self.settings.max_attempts.max(1))
    }

    /// The first undelivered row of each (task, config) pair, when due; oldest first.
    async fn due(&self, now: i64) -> Result<Vec<Due>, StoreError> {
        let rows = self
            .db
            .idempotent(|| {
                sqlx::query(
                    "SELECT id, task_id, config_id, body, attempts, next_ms FROM a2a_push_outbox \
                     WHERE id IN (SELECT MIN(id) FROM a2a_push_outbox GROUP BY task_id, config_id) \
                     AND next_ms <= $1 ORDER BY id LIMIT $2",
                )
                .bind(now)
                .bind(BATCH)
                .fetch_all(self.db.pool())
            })
            .await?;
        rows.into_iter()
            .map(|r| {
                Ok(Due {
                    id: r.try_get(0)?,
                    task_id: r.try_get(1)?,
                    config_id: r.try_get(2)?,
                    body: r.try_get(3)?,
                    attempts: r.try_get(4)?,
                    next_ms: r.try_get(5)?,
                })
            })
            .collect()
    }

    /// When the next first-in-line row is due (`None`: the outbox is empty).
    async fn earliest(&self) -> Result<Option<i64>, StoreError> {
        let row = self
            .db
            .idempotent(|| {
                sqlx::query(
                    "SELECT MIN(next_ms) FROM a2a_push_outbox \
                     WHERE id IN (SELECT MIN(id) FROM a2a_push_outbox GROUP BY task_id, config_id)",
                )
                .fetch_one(self.db.pool())
            })
            .await?;
        Ok(row.try_get::<Option<i64>, _>(0)?)
    }

    /// The wait before attempt `failures + 1`: base doubling up to the cap, the second half
    /// jittered ("equal jitter"), so webhooks that failed together do not retry together.
    fn backoff(&self, failures: i64) -> Duration {
        let exp = u32::try_from(failures.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
        let full = self
            .backoff_base
            .saturating_mul(1u32 << exp)
            .min(self.backoff_cap);
        let half = full / 2;
        let spread = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        let jitter = match getrandom::u64() {
            Ok(r) if spread > 0 => Duration::from_millis(r % (spread + 1)),
            _ => half,
        };
        (full - half) + jitter
    }

    async fn deliver_row(&self, row: Due) {
        if let Err(e) = self.try_deliver_row(&row).await {
            warn!(task_id = %row.task_id, config_id = %row.config_id, error = %e,
                "push notification bookkeeping failed; the notification is retried later");
        }
    }

    async fn try_deliver_row(&self, row: &Due) -> Result<(), StoreError> {
        // Lease the row: it is not due again before this attempt has ended.
        let lease =
            now_ms() + i64::try_from((self.timeout + LEASE_MARGIN).as_millis()).unwrap_or(i64::MAX);
        let claimed = self
            .db
            .idempotent(|| {
                sqlx::query(
                    "UPDATE a2a_push_outbox SET next_ms = $1 WHERE id = $2 AND next_ms = $3",
                )
                .bind(lease)
                .bind(row.id)
                .bind(row.next_ms)
                .execute(self.db.pool())
            })
            .await?;
        if claimed.rows_affected() == 0 {
            return Ok(()); // taken by another worker, or deleted
        }
        let attempt = match self.get_config(&row.task_id, &row.config_id).await {
            Ok(Some(cfg)) => self.attempt(&cfg, &row.body).await,
            Ok(None) => {
                debug!(task_id = %row.task_id, config_id = %row.config_id,
                    "push notification config deleted; dropping its notification");
                return self.drop_row(row.id).await;
            }
            Err(StoreError::Corrupt(_)) => Attempt::Drop("its config is unreadable"),
            Err(e) => return Err(e),
        };
        match attempt {
            Attempt::Delivered => {
                debug!(task_id = %row.task_id, config_id = %row.config_id, "push notification delivered");
                self.drop_row(row.id).await
            }
            Attempt::Drop(why) => {
                warn!(task_id = %row.task_id, config_id = %row.config_id,
                    "push notification dropped: {why}");
                self.drop_row(row.id).await
            }
            Attempt::Failed(why) => {
                let attempts = row.attempts.saturating_add(1);
                if attempts >= self.max_attempts() {
                    warn!(task_id = %row.task_id, config_id = %row.config_id, attempts,
                        last_error = %why, "push notification dropped after its last attempt");
                    return self.drop_row(row.id).await;
                }
                let wait = self.backoff(attempts);
                debug!(task_id = %row.task_id, config_id = %row.config_id, attempts,
                    error = %why, retry_in = ?wait, "push notification attempt failed");
                let next = now_ms() + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
                self.db
                    .idempotent(|| {
                        sqlx::query(
                            "UPDATE a2a_push_outbox SET attempts = $1, next_ms = $2 WHERE id = $3",
                        )
                        .bind(attempts)
                        .bind(next)
                        .bind(row.id)
                        .execute(self.db.pool())
                    })
                    .await?;
                Ok(())
            }
        }
    }

    async fn drop_row(&self, id: i64) -> Result<(), StoreError> {
        self.db
            .idempotent(|| {
                sqlx::query("DELETE FROM a2a_push_outbox WHERE id = $1")
                    .bind(id)
                    .execute(self.db.pool())
            })
            .await?;
        Ok(())
    }

    /// One POST of `body` to the config's webhook.
    async fn attempt(&self, cfg: &TaskPushNotificationConfig, body: &str) -> Attempt {
        // Literal IPs do not go through the resolver: check them (and the shape) here.
        let Ok(url) = check_url(&cfg.url, self.settings.allow_private) else {
            return Attempt::Drop("its webhook URL is not allowed");
        };
        let (Ok(token), Ok(authorization)) = (token(cfg), authorization(cfg)) else {
            return Attempt::Drop("its token or credentials are not valid header values");
        };
        let mut req = self
            .http
            .post(url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body.to_owned());
        if let Some(v) = token {
            req = req.header(TOKEN_HEADER, v);
        }
        if let Some(v) = authorization {
            req = req.header(AUTHORIZATION, v);
        }
        match req.send().await {
            Ok(resp) if resp.status().is_success() => Attempt::Delivered,
            Ok(resp) => Attempt::Failed(format!("the webhook answered {}", resp.status())),
            // Without the URL: its query may carry a secret.
            Err(e) => Attempt::Failed(e.without_url().to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    use std::collections::VecDeque;
    use std::future::Future;
    use std::str::FromStr as _;
    use std::sync::Mutex;

    use axum::Router;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;
    use kos_agents::requests::AuthenticationInfo;
    use kos_agents::types::{TaskState, TaskStatus, TaskStatusUpdateEvent};
    use reqwest::dns::Resolve as _;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn field_of(e: &A2aError) -> String {
        match e {
            A2aError::InvalidParams { field, .. } => field.clone().unwrap_or_default(),
            other => panic!("not an invalid-params error: {other:?}"),
        }
    }

    #[test]
    fn blocked_address_table() {
        let internal = [
            "127.0.0.1",
            "127.255.255.254",
            "0.0.0.0",
            "0.1.2.3",
            "169.254.1.1",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:192.168.0.10",
            "::ffff:100.64.0.1",
            "::ffff:255.255.255.255",
            "::127.0.0.1",
            "64:ff9b::10.0.0.1",
            "2002:c0a8:0101::1", // 6to4 of 192.168.1.1
        ];
        for s in internal {
            assert!(is_blocked(ip(s), false), "{s} must be blocked");
            assert!(!is_blocked(ip(s), true), "{s} must pass with allow_private");
        }
        let metadata = [
            "169.254.169.254",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
            "64:ff9b::169.254.169.254",
        ];
        for s in metadata {
            assert!(is_blocked(ip(s), false), "{s}");
            assert!(
                is_blocked(ip(s), true),
                "{s} stays blocked with allow_private"
            );
        }
        let public = [
            "93.184.215.14",
            "8.8.8.8",
            "1.1.1.1",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "169.253.0.1",
            "192.0.2.1",
            "2606:2800:21f:cb07:6820:80da:af6b:8b2c",
            "2001:4860:4860::8888",
            "2001:db8::1",
            "::ffff:93.184.215.14",
            "64:ff9b::8.8.8.8",
            "2002:5db8:d70e::1",
        ];
        for s in public {
            assert!(!is_blocked(ip(s), false), "{s} must pass");
            assert!(!is_blocked(ip(s), true), "{s} must pass");
        }
    }

    #[test]
    fn url_shapes() {
        assert!(check_url("https://hooks.example.com/a2a?x=1", false).is_ok());
        assert!(check_url("http://93.184.215.14:8080/h", false).is_ok());
        assert!(check_url("http://[2001:4860:4860::8888]/h", false).is_ok());
        let refused = [
            "not a url",
            "ftp://example.com/",
            "file:///etc/passwd",
            "https://user:pw@example.com/",
            "https://user@example.com/",
            "http://127.0.0.1/",
            "http://[::1]:8080/",
            "http://[::ffff:7f00:1]/",
            "http://0x7f.1/",
            "http://2130706433/",
            "http://localhost:8080/",
            "http://api.localhost./",
            "http://169.254.169.254/latest/meta-data",
        ];
        for u in refused {
            let e = check_url(u, false).unwrap_err();
            assert_eq!(field_of(&e), "url", "{u}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(check_url(&long, false).is_err());
        // allow_private opens internal addresses, not the metadata endpoint or other shapes.
        assert!(check_url("http://127.0.0.1:9/", true).is_ok());
        assert!(check_url("http://localhost:9/", true).is_ok());
        assert!(check_url("http://169.254.169.254/", true).is_err());
        assert!(check_url("http://[fd00:ec2::254]/", true).is_err());
        assert!(check_url("https://u:p@127.0.0.1/", true).is_err());
    }

    #[tokio::test]
    async fn targets_are_checked_after_resolution() {
        let field = "configuration.taskPushNotificationConfig.url";
        let e = check_target("http://localhost:1/", false, field)
            .await
            .unwrap_err();
        assert_eq!(field_of(&e), field);
        assert!(!e.to_string().contains("lookup"));
        check_target("http://93.184.215.14/", false, field)
            .await
            .unwrap();
        check_target("http://localhost:1/", true, field)
            .await
            .unwrap();
        // The delivery resolver drops blocked addresses, and fails when none is left.
        let guarded = GuardedResolver {
            allow_private: false,
        };
        let name = reqwest::dns::Name::from_str("localhost").unwrap();
        assert!(guarded.resolve(name).await.is_err());
        let open = GuardedResolver {
            allow_private: true,
        };
        let name = reqwest::dns::Name::from_str("localhost").unwrap();
        let addrs: Vec<SocketAddr> = open.resolve(name).await.unwrap().collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()) && !addrs.is_empty());
    }

    // --- fixtures ------------------------------------------------------------------------

    async fn open_db(dir: &tempfile::TempDir) -> Db {
        Db::open_sqlite(&dir.path().join("kos.db"), 2)
            .await
            .unwrap()
    }

    fn settings(allow_private: bool, max_attempts: u32) -> A2aPush {
        A2aPush {
            enabled: true,
            allow_private,
            max_attempts,
            timeout: kos_config::model::Duration(Duration::from_secs(10)),
        }
    }

    fn push(db: &Db, allow_private: bool, max_attempts: u32) -> Push {
        Push::new(db.clone(), &settings(allow_private, max_attempts))
            .unwrap()
            .with_backoff(Duration::from_millis(5), Duration::from_millis(20))
    }

    fn config(url: &str) -> TaskPushNotificationConfig {
        TaskPushNotificationConfig {
            tenant: String::new(),
            id: String::new(),
            task_id: String::new(),
            url: url.to_owned(),
            token: String::new(),
            authentication: None,
        }
    }

    fn event(context: &str) -> StreamResponse {
        StreamResponse::StatusUpdate(TaskStatusUpdateEvent {
            task_id: "t1".into(),
            context_id: context.into(),
            status: TaskStatus {
                state: TaskState::Working,
                message: None,
                timestamp: None,
            },
            metadata: None,
        })
    }

    async fn outbox(db: &Db) -> Vec<(i64, i64)> {
        sqlx::query("SELECT id, attempts FROM a2a_push_outbox ORDER BY id")
            .fetch_all(db.pool())
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.try_get(0).unwrap(), r.try_get(1).unwrap()))
            .collect()
    }

    /// Polls `cond` until it holds (a hang guard, not a speed target: 60 s).
    async fn wait_for<F, Fut>(what: &str, mut cond: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        for _ in 0..6000 {
            if cond().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("gave up waiting for {what}");
    }

    /// A webhook on 127.0.0.1: records every request and answers from a script (200 when the
    /// script is empty; 302 redirects to `/target`).
    #[derive(Clone, Default)]
    struct Receiver {
        hits: Arc<Mutex<Vec<(HeaderMap, String)>>>,
        script: Arc<Mutex<VecDeque<u16>>>,
        redirected: Arc<AtomicU64>,
    }

    impl Receiver {
        fn hits(&self) -> usize {
            self.hits.lock().unwrap().len()
        }

        fn contexts(&self) -> Vec<String> {
            self.hits
                .lock()
                .unwrap()
                .iter()
                .map(
                    |(_, body)| match serde_json::from_str::<StreamResponse>(body).unwrap() {
                        StreamResponse::StatusUpdate(s) => s.context_id,
                        other => panic!("unexpected body {other:?}"),
                    },
                )
                .collect()
        }
    }

    async fn hook(State(r): State<Receiver>, headers: HeaderMap, body: String) -> Response {
        r.hits.lock().unwrap().push((headers, body));
        let code = r.script.lock().unwrap().pop_front().unwrap_or(200);
        if code == 302 {
            return (StatusCode::FOUND, [(header::LOCATION, "/target")]).into_response();
        }
        StatusCode::from_u16(code).unwrap().into_response()
    }

    async fn target(State(r): State<Receiver>) -> StatusCode {
        r.redirected.fetch_add(1, Ordering::SeqCst);
        StatusCode::OK
    }

    async fn receiver(script: &[u16]) -> (Receiver, String, u16) {
        let r = Receiver::default();
        r.script.lock().unwrap().extend(script.iter().copied());
        let app = Router::new()
            .route("/hook", post(hook))
            .route("/target", post(target).get(target))
            .with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (r, format!("http://{addr}/hook"), addr.port())
    }

    fn start(p: &Push) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let stop = CancellationToken::new();
        let worker = tokio::spawn(p.clone().run(stop.clone()));
        (stop, worker)
    }

    // --- configs -------------------------------------------------------------------------

    #[tokio::test]
    async fn config_crud_paging_and_bound() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(&dir).await;
        let p = push(&db, false, 3);

        let mut c = config("https://93.184.215.14/a2a");
        c.token = "tok".into();
        c.authentication = Some(AuthenticationInfo {
            scheme: "Bearer".into(),
            credentials: "secret-credential".into(),
        });
        let made = p.create_config("t1", c).await.unwrap();
        assert_eq!(made.task_id, "t1");
        assert_eq!(made.id.len(), 32);
        let got = p.get_config("t1", &made.id).await.unwrap().unwrap();
        assert_eq!(got, made);
        assert_eq!(
            got.authentication.as_ref().unwrap().credentials,
            "secret-credential"
        );
        assert!(!format!("{p:?}").contains("secret"));

        // Same id: replaced.
        let mut again = config("https://[2001:4860:4860::8888]/hook");
        again.id = made.id.clone();
        again.task_id = "t1".into();
        p.create_config("t1", again).await.unwrap();
        let got = p.get_config("t1", &made.id).await.unwrap().unwrap();
        assert_eq!(got.url, "https://[2001:4860:4860::8888]/hook");
        assert!(got.authentication.is_none());

        // A body naming another task.
        let mut wrong = config("https://93.184.215.14/a2a");
        wrong.task_id = "t9".into();
        let e = p.create_config("t1", wrong).await.unwrap_err().into_a2a();
        assert_eq!(field_of(&e), "taskId");

        // At most ten per task; replacing one of the ten still works.
        for i in 0..MAX_CONFIGS_PER_TASK {
            let mut c = config("https://93.184.215.14/a2a");
            c.id = format!("c{i:02}");
            p.create_config("t2", c).await.unwrap();
        }
        let mut eleventh = config("https://93.184.215.14/a2a");
        eleventh.id = "c99".into();
        let e = p
            .create_config("t2", eleventh)
            .await
            .unwrap_err()
            .into_a2a();
        assert_eq!(field_of(&e), "id");
        let mut replace = config("https://93.184.215.14/replaced");
        replace.id = "c05".into();
        p.create_config("t2", replace).await.unwrap();

        // Paging by id.
        let mut req = ListTaskPushNotificationConfigsRequest {
            tenant: String::new(),
            task_id: "t2".into(),
            page_size: 3,
            page_token: String::new(),
        };
        let mut pages = Vec::new();
        loop {
            let page = p.list_configs(&req).await.unwrap();
            pages.push(
                page.configs
                    .iter()
                    .map(|c| c.id.clone())
                    .collect::<Vec<_>>(),
            );
            if page.next_page_token.is_empty() {
                break;
            }
            req.page_token = page.next_page_token;
        }
        assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 3, 1]);
        assert_eq!(pages[0], ["c00", "c01", "c02"]);
        assert_eq!(pages[3], ["c09"]);
        req.page_token.clear();
        req.page_size = 0;
        let all = p.list_configs(&req).await.unwrap();
        assert_eq!(all.configs.len(), 10);
        assert!(all.next_page_token.is_empty());
        assert!(all.configs.iter().all(|c| c.task_id == "t2"));
        for bad in [101, -1] {
            req.page_size = bad;
            let e = p.list_configs(&req).await.unwrap_err().into_a2a();
            assert_eq!(field_of(&e), "pageSize");
        }

        // Delete one, then the rest of the task; the other task keeps its config.
        assert!(p.delete_config("t2", "c00").await.unwrap());
        assert!(!p.delete_config("t2", "c00").await.unwrap());
        assert_eq!(p.delete_task_configs("t2").await.unwrap(), 9);
        assert!(p.get_config("t2", "c01").await.unwrap().is_none());
        assert!(p.get_config("t1", &made.id).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn configs_with_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(&dir).await;
        let p = push(&db, false, 3);
        let err = |c| {
            let p = p.clone();
            async move { field_of(&p.create_config("t1", c).await.unwrap_err().into_a2a()) }
        };
        assert_eq!(err(config("http://127.0.0.1:8080/hook")).await, "url");
        assert_eq!(err(config("http://localhost/hook")).await, "url");
        let mut c = config("https://93.184.215.14/a2a");
        c.token = "line\nbreak".into();
        assert_eq!(err(c).await, "token");
        let mut c = config("https://93.184.215.14/a2a");
        c.authentication = Some(AuthenticationInfo {
            scheme: "Bea rer".into(),
            credentials: "x".into(),
        });
        assert_eq!(err(c).await, "authentication.scheme");
        let mut c = config("https://93.184.215.14/a2a");
        c.authentication = Some(AuthenticationInfo {
            scheme: "Bearer".into(),
            credentials: "a\r\nX-Injected: 1".into(),
        });
        assert_eq!(err(c).await, "authentication.credentials");
        let mut c = config("https://93.184.215.14/a2a");
        c.id = "x".repeat(MAX_ID_LEN + 1);
        assert_eq!(err(c).await, "id");
        // The field path of a config inside SendMessage.
        let e = p
            .validate_config(
                &config("ftp://x.example/"),
                "configuration.taskPushNotificationConfig",
            )
            .await
            .unwrap_err();
        assert_eq!(field_of(&e), "configuration.taskPushNotificationConfig.url");
        assert!(outbox(&db).await.is_empty());
        // Disabled: not supported.
        let off = Push::new(
            db.clone(),
            &A2aPush {
                enabled: false,
                ..settings(false, 3)
            },
        )
        .unwrap();
        let e = off
            .create_config("t1", config("https://93.184.215.14/a2a"))
            .await
            .unwrap_err()
            .into_a2a();
        assert_eq!(e, A2aError::PushNotificationNotSupported);
        assert_eq!(off.enqueue("t1", &event("c")).await.unwrap(), 0);
    }

    // --- delivery ------------------------------------------------------------------------

    #[tokio::test]
    async fn delivers_body_token_and_authorization() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(&dir).await;
        let (r, url, _) = receiver(&[]).await;
        let p = push(&db, true, 3);
        let mut c = config(&url);
        c.token = "tok-123".into();
        c.authentication = Some(AuthenticationInfo {
            scheme: "Bearer".into(),
            credentials: "sekret".into(),
        });
        p.create_config("t1", c).await.unwrap();
        assert_eq!(p.enqueue("t1", &event("c1")).await.unwrap(), 1);
        assert_eq!(p.enqueue("no-configs", &event("c1")).await.unwrap(), 0);
        let (stop, worker) = start(&p);
        wait_for("the delivery", || async { outbox(&db).await.is_empty() }).await;
        stop.cancel();
        worker.await.unwrap();

        let hits = r.hits.lock().unwrap().clone();
        assert_eq!(hits.len(), 1);
        let (headers, body) = &hits[0];
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(headers["x-a2a-notification-token"], "tok-123");
        assert_eq!(headers["authorization"], "Bearer sekret");
        assert_eq!(
            serde_json::from_str::<StreamResponse>(body).unwrap(),
            event("c1")
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(body).unwrap()["statusUpdate"]["taskId"],
            "t1"
        );
    }

    #[tokio::test]
    async fn server_errors_are_retried_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(&dir).await;
        let (r, url, _) = receiver(&[500, 500]).await;
        let p = push(&db, true, 5);
        p.create_config("t1", config(&url)).await.unwrap();
        for ctx in ["c1", "c2", "c3"] {
            p.enqueue("t1", &event(ctx)).await.unwrap();
        }
        let (stop, worker) = start(&p);
        wait_for("the deliveries", || async { outbox(&db).await.is_empty() }).await;
        stop.cancel();
        worker.await.unwrap();
        // The first notification on its third attempt, then the others, in order.
        assert_eq!(r.contexts(), ["c1", "c1", "c1", "c2", "c3"]);
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(&dir).await;
        let (r, url, _) = receiver(&[302]).await;
        let p = push(&db, true, 1);
        p.create_config("t1", config(&url)).await.unwrap();
        p.enqueue("t1", &event("c1")).await.unwrap();
        let (stop, worker) = start(&p);
        wait_for("the row to be dropped", || async {
            outbox(&db).await.is_empty()
        })
        .await;
        stop.cancel();
        worker.await.unwrap();
        assert_eq!(r.hits(), 1);
        assert_eq!(r.redirected.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn max_attempts_drops_the_row() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(&dir).await;
        let (r, url, _) = receiver(&[500; 10]).await;
        let p = push(&db, true, 3);
        p.create_config("t1", config(&url)).await.unwrap();
        p.enqueue("t1", &event("c1")).await.unwrap();
        let (stop, worker) = start(&p);
        wait_for("the row to be dropped", || async {
            outbox(&db).await.is_empty()
        })
        .await;
        stop.cancel();
        worker.await.unwrap();
        assert_eq!(r.hits(), 3);
    }

    #[tokio::test]
    async fn the_outbox_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (r, url, _) = receiver(&[500]).await;
        {
            let db = open_db(&dir).await;
            // A retry an hour later: this worker stops long before it.
            let hour = Duration::from_secs(3600);
            let p = push(&db, true, 5).with_backoff(hour, hour);
            p.create_config("t1", config(&url)).await.unwrap();
            p.enqueue("t1", &event("c1")).await.unwrap();
            let (stop, worker) = start(&p);
            wait_for("the failed attempt", || async {
                outbox(&db)
                    .await
                    .first()
                    .is_some_and(|(_, attempts)| *attempts == 1)
            })
            .await;
            stop.cancel();
            worker.await.unwrap();
            db.close().await;
        }
        let db = open_db(&dir).await;
        assert_eq!(outbox(&db).await, [(1, 1)]);
        // The hour has passed.
        sqlx::query("UPDATE a2a_push_outbox SET next_ms = 0")
            .execute(db.pool())
            .await
            .unwrap();
        let p = push(&db, true, 5);
        let (stop, worker) = start(&p);
        wait_for("the delivery", || async { outbox(&db).await.is_empty() }).await;
        stop.cancel();
        worker.await.unwrap();
        assert_eq!(r.contexts(), ["c1", "c1"]);
    }

    #[tokio::test]
    async fn private_webhooks_are_refused_at_delivery() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(&dir).await;
        let (r, url, port) = receiver(&[]).await;
        // Created while private targets were allowed (or rebound since): a literal IP and a
        // name that resolves to loopback.
        let open = push(&db, true, 2);
        open.create_config("t1", config(&url)).await.unwrap();
        open.create_config("t1", config(&format!("http://localhost:{port}/hook")))
            .await
            .unwrap();
        let closed = push(&db, false, 2);
        assert_eq!(closed.enqueue("t1", &event("c1")).await.unwrap(), 2);
        let (stop, worker) = start(&closed);
        wait_for("both rows to be dropped", || async {
            outbox(&db).await.is_empty()
        })
        .await;
        stop.cancel();
        worker.await.unwrap();
        assert_eq!(r.hits(), 0);
    }

    #[tokio::test]
    async fn a_deleted_config_drops_its_notifications() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(&dir).await;
        let (r, url, _) = receiver(&[]).await;
        let p = push(&db, true, 3);
        let c = p.create_config("t1", config(&url)).await.unwrap();
        p.enqueue("t1", &event("c1")).await.unwrap();
        // Removed behind the handle's back (a task purge); delete_config clears the outbox too.
        sqlx::query("DELETE FROM a2a_push_configs WHERE id = $1")
            .bind(&c.id)
            .execute(db.pool())
            .await
            .unwrap();
        let (stop, worker) = start(&p);
        wait_for("the row to be dropped", || async {
            outbox(&db).await.is_empty()
        })
        .await;
        stop.cancel();
        worker.await.unwrap();
        assert_eq!(r.hits(), 0);

        let c = p.create_config("t1", config(&url)).await.unwrap();
        p.enqueue("t1", &event("c2")).await.unwrap();
        assert_eq!(outbox(&db).await.len(), 1);
        assert!(p.delete_config("t1", &c.id).await.unwrap());
        assert!(outbox(&db).await.is_empty());
    }
}
