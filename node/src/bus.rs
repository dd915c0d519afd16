//! The node's event bus: node events (started, stopped, config applied or rolled back,
//! profiles changed, peers admitted or revoked, later task updates) published after they are
//! recorded in the database, for whoever listens.
//!
//! The bus is a notification channel, not a store: delivery is at most once, and an event
//! published while Redis is unreachable is dropped (and logged). The database's `EventLog`
//! is the record; every bus event carries the id of its `EventLog` row, so a listener that
//! sees a gap (or reconnects) reads what it missed from the log (`GET /api/events`).
//!
//! Two implementations behind [`EventBus`], chosen by `messaging.bus`:
//! - [`MemoryBus`]: a bounded `tokio::sync::broadcast` inside the process (every profile; the
//!   only one in the edge build).
//! - `RedisBus` (cargo feature `redis`): `PUBLISH` on `kos:<node id>:events`; a subscriber
//!   connection relays the channel into the same bounded broadcast, so subscribers see what
//!   went through Redis (also what another process published there). Both connections
//!   reconnect with exponential backoff; neither blocks the caller: `publish` only queues.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::store::NewEvent;

/// Events buffered per subscriber (a slower subscriber lags and is told how many it missed).
pub const SUBSCRIBER_CAPACITY: usize = 1024;
/// Events waiting to be written to Redis; beyond this, new events are dropped.
pub const OUTBOUND_CAPACITY: usize = 1024;
/// Largest bus message accepted from Redis.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// A node event as it travels on the bus.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusEvent {
    /// The node that recorded it (peer id).
    pub node_id: String,
    /// Its row in the node's `EventLog`.
    pub id: i64,
    /// Milliseconds since the Unix epoch, when it was published.
    pub at_ms: i64,
    pub kind: String,
    pub actor: String,
    pub snapshot_id: Option<String>,
    pub detail: serde_json::Value,
}

impl BusEvent {
    /// The bus form of an event recorded with id `id`.
    pub fn recorded(node_id: &str, id: i64, e: &NewEvent) -> Self {
        Self {
            node_id: node_id.to_string(),
            id,
            at_ms: crate::store::now_ms(),
            kind: e.kind.clone(),
            actor: e.actor.clone(),
            snapshot_id: e.snapshot_id.clone(),
            detail: e.detail.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("the event bus is closed")]
    Closed,
    #[error("the event bus's outbound queue is full ({OUTBOUND_CAPACITY} events); event dropped")]
    Full,
    #[error("this subscriber fell behind and missed {0} events (read them from the event log)")]
    Lagged(u64),
    #[error("invalid Redis URL for the event bus: {0}")]
    Url(String),
    #[error("Redis is not in this build (cargo feature `redis`)")]
    NotBuilt,
}

/// A boxed future, for the one async method of the object-safe [`EventBus`].
pub type BoxFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Publish node events; subscribe to them as a stream.
pub trait EventBus: Send + Sync + fmt::Debug {
    /// `memory` or `redis`.
    fn kind(&self) -> &'static str;
    /// Queues an event for delivery; never waits for the network.
    fn publish(&self, event: BusEvent) -> Result<(), BusError>;
    /// Events published from now on.
    fn subscribe(&self) -> Subscription;
    /// Whether the bus can deliver now (the in-memory bus always can; the Redis bus while its
    /// subscriber connection is up).
    fn connected(&self) -> bool;
    /// Delivers what is queued (for at most a couple of seconds) and stops the bus.
    fn shutdown(&self) -> BoxFuture<'_>;
}

/// One subscriber's view of the bus.
#[derive(Debug)]
pub struct Subscription {
    rx: broadcast::Receiver<Arc<BusEvent>>,
}

impl Subscription {
    /// The next event; `Lagged(n)` when this subscriber missed `n` events, `Closed` when the
    /// bus is gone.
    pub async fn recv(&mut self) -> Result<BusEvent, BusError> {
        match self.rx.recv().await {
            Ok(e) => Ok((*e).clone()),
            Err(broadcast::error::RecvError::Lagged(n)) => Err(BusError::Lagged(n)),
            Err(broadcast::error::RecvError::Closed) => Err(BusError::Closed),
        }
    }

    /// The subscription as a stream; it ends when the bus is closed.
    pub fn into_stream(self) -> impl futures::Stream<Item = Result<BusEvent, BusError>> + Send {
        futures::stream::unfold(self, |mut s| async move {
            match s.recv().await {
                Err(BusError::Closed) => None,
                r => Some((r, s)),
            }
        })
    }
}

/// The in-process bus.
#[derive(Debug)]
pub struct MemoryBus {
    tx: broadcast::Sender<Arc<BusEvent>>,
}

impl Default for MemoryBus {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBus {
    pub fn new() -> Self {
        Self {
            tx: broadcast::channel(SUBSCRIBER_CAPACITY).0,
        }
    }
}

impl EventBus for MemoryBus {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn publish(&self, event: BusEvent) -> Result<(), BusError> {
        // No subscriber is not an error: nobody is listening.
        let _ = self.tx.send(Arc::new(event));
        Ok(())
    }

    fn subscribe(&self) -> Subscription {
        Subscription {
            rx: self.tx.subscribe(),
        }
    }

    fn connected(&self) -> bool {
        true
    }

    fn shutdown(&self) -> BoxFuture<'_> {
        Box::pin(async {})
    }
}

/// `host:port/db` of a Redis URL, for messages: never the password.
pub fn describe_redis_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => {
            let mut s = format!(
                "{}:{}",
                u.host_str().unwrap_or("localhost"),
                u.port().unwrap_or(6379)
            );
            let db = u.path().trim_start_matches('/');
            if !db.is_empty() {
                s.push('/');
                s.push_str(db);
            }
            s
        }
        Err(_) => "<unparsable URL>".into(),
    }
}

/// The Redis URL of the configuration with its password (`redis.password`) inserted.
pub fn redis_url(cfg: &kos_config::model::Redis) -> Option<String> {
    let url = cfg.url.clone()?;
    Some(match &cfg.password {
        Some(p) => crate::store::url_with_password(&url, p.expose()),
        None => url,
    })
}

/// The bus the configuration selects (`messaging.bus`), for node `node_id`.
pub fn from_config(
    cfg: &kos_config::model::Config,
    node_id: &str,
) -> Result<Arc<dyn EventBus>, BusError> {
    match cfg.messaging.effective_bus() {
        kos_config::model::BusKind::Memory => Ok(Arc::new(MemoryBus::new())),
        kos_config::model::BusKind::Redis => {
            #[cfg(feature = "redis")]
            {
                let url = redis_url(&cfg.redis)
                    .ok_or_else(|| BusError::Url("redis.url is not set".into()))?;
                Ok(Arc::new(redis_bus::RedisBus::start(
                    &url,
                    node_id,
                    crate::backoff::Backoff::RECONNECT,
                )?))
            }
            #[cfg(not(feature = "redis"))]
            {
                let _ = node_id;
                Err(BusError::NotBuilt)
            }
        }
    }
}

#[cfg(feature = "redis")]
pub use redis_bus::RedisBus;

#[cfg(feature = "redis")]
mod redis_bus {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::Duration;

    use futures::StreamExt;
    use redis::aio::{ConnectionManager, ConnectionManagerConfig};
    use tokio::sync::mpsc;
    use tokio::task::JoinHandle;
    use tokio_util::sync::CancellationToken;
    use tracing::{debug, info, warn};

    use super::*;
    use crate::backoff::Backoff;

    /// How long a connection attempt or a command may take.
    const IO_TIMEOUT: Duration = Duration::from_secs(3);
    /// How often an idle subscriber connection is checked.
    const PING_EVERY: Duration = Duration::from_secs(15);

    /// The Redis bus: `PUBLISH` / `SUBSCRIBE` on `kos:<node id>:events`.
    #[derive(Debug)]
    pub struct RedisBus {
        channel: String,
        target: String,
        outbound: mpsc::Sender<BusEvent>,
        local: broadcast::Sender<Arc<BusEvent>>,
        connected: Arc<AtomicBool>,
        dropped: Arc<AtomicU64>,
        cancel: CancellationToken,
        /// The publisher and subscriber tasks, joined at shutdown.
        tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    }

    /// The bus channel of a node.
    pub fn channel_of(node_id: &str) -> String {
        format!("kos:{node_id}:events")
    }

    impl RedisBus {
        /// Starts the publisher and subscriber tasks. Does not wait for Redis: a Redis that is
        /// down now is reached later, on the `backoff` schedule.
        pub fn start(url: &str, node_id: &str, backoff: Backoff) -> Result<Self, BusError> {
            let target = describe_redis_url(url);
            let client = redis::Client::open(url).map_err(|_| BusError::Url(target.clone()))?;
            let cfg = ConnectionManagerConfig::new()
                .set_min_delay(backoff.initial)
                .set_max_delay(backoff.max)
                .set_number_of_retries(4)
                .set_connection_timeout(Some(IO_TIMEOUT))
                .set_response_timeout(Some(IO_TIMEOUT));
            let conn = ConnectionManager::new_lazy_with_config(client.clone(), cfg)
                .map_err(|_| BusError::Url(target.clone()))?;
            let channel = channel_of(node_id);
            let (outbound, rx) = mpsc::channel(OUTBOUND_CAPACITY);
            let local = broadcast::channel(SUBSCRIBER_CAPACITY).0;
            let connected = Arc::new(AtomicBool::new(false));
            let dropped = Arc::new(AtomicU64::new(0));
            let cancel = CancellationToken::new();
            let publisher = tokio::spawn(publish_loop(
                conn,
                channel.clone(),
                target.clone(),
                rx,
                dropped.clone(),
                cancel.clone(),
            ));
            let subscriber = tokio::spawn(subscribe_loop(
                client,
                channel.clone(),
                node_id.to_string(),
                target.clone(),
                local.clone(),
                connected.clone(),
                backoff,
                cancel.clone(),
            ));
            info!(%target, %channel, "Redis event bus started");
            Ok(Self {
                channel,
                target,
                outbound,
                local,
                connected,
                dropped,
                cancel,
                tasks: std::sync::Mutex::new(vec![publisher, subscriber]),
            })
        }

        /// The Redis channel.
        pub fn channel(&self) -> &str {
            &self.channel
        }

        /// Events dropped because Redis could not take them (or the queue was full).
        pub fn dropped(&self) -> u64 {
            self.dropped.load(Ordering::Relaxed)
        }
    }

    impl EventBus for RedisBus {
        fn kind(&self) -> &'static str {
            "redis"
        }

        fn publish(&self, event: BusEvent) -> Result<(), BusError> {
            match self.outbound.try_send(event) {
                Ok(()) => Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    Err(BusError::Full)
                }
                Err(mpsc::error::TrySendError::Closed(_)) => Err(BusError::Closed),
            }
        }

        fn subscribe(&self) -> Subscription {
            Subscription {
                rx: self.local.subscribe(),
            }
        }

        fn connected(&self) -> bool {
            self.connected.load(Ordering::SeqCst)
        }

        fn shutdown(&self) -> BoxFuture<'_> {
            Box::pin(async move {
                self.cancel.cancel();
                let handles: Vec<_> = self
                    .tasks
                    .lock()
                    .map(|mut h| std::mem::take(&mut *h))
                    .unwrap_or_default();
                // The publisher sends what is queued first; 3 s bounds both together.
                let all = futures::future::join_all(handles);
                if tokio::time::timeout(Duration::from_secs(3), all)
                    .await
                    .is_err()
                {
                    warn!(target = %self.target, "Redis bus tasks did not finish in time");
                }
            })
        }
    }

    async fn publish_one(
        conn: &mut ConnectionManager,
        channel: &str,
        event: &BusEvent,
    ) -> Result<(), String> {
        let payload = serde_json::to_string(event).map_err(|e| e.to_string())?;
        let cmd = redis::cmd("PUBLISH").arg(channel).arg(payload).clone();
        match tokio::time::timeout(IO_TIMEOUT * 2, cmd.query_async::<i64>(conn)).await {
            Ok(Ok(_receivers)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        }
    }

    async fn publish_loop(
        mut conn: ConnectionManager,
        channel: String,
        target: String,
        mut rx: mpsc::Receiver<BusEvent>,
        dropped: Arc<AtomicU64>,
        cancel: CancellationToken,
    ) {
        let mut healthy = true;
        loop {
            let event = tokio::select! {
                biased;
                e = rx.recv() => match e { Some(e) => e, None => return },
                () = cancel.cancelled() => break,
            };
            match publish_one(&mut conn, &channel, &event).await {
                Ok(()) => {
                    if !healthy {
                        info!(%target, "Redis bus: publishing again");
                        healthy = true;
                    }
                }
                Err(error) => {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    if healthy {
                        warn!(%target, %error, kind = %event.kind, id = event.id, "Redis bus: cannot publish; events are dropped until Redis is back (they are in the event log)");
                        healthy = false;
                    } else {
                        debug!(%target, %error, id = event.id, "Redis bus: event dropped");
                    }
                }
            }
        }
        // Shutting down: deliver what is already queued (the node_stopped event), briefly.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(event) = rx.try_recv() {
            if tokio::time::Instant::now() > deadline
                || publish_one(&mut conn, &channel, &event).await.is_err()
            {
                break;
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn subscribe_loop(
        client: redis::Client,
        channel: String,
        node_id: String,
        target: String,
        local: broadcast::Sender<Arc<BusEvent>>,
        connected: Arc<AtomicBool>,
        backoff: Backoff,
        cancel: CancellationToken,
    ) {
        let mut delays = backoff.delays();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let subscribed = tokio::select! {
                () = cancel.cancelled() => return,
                r = tokio::time::timeout(IO_TIMEOUT, async {
                    let (mut sink, stream) = client.get_async_pubsub().await?.split();
                    sink.subscribe(&channel).await?;
                    Ok::<_, redis::RedisError>((sink, stream))
                }) => match r {
                    Ok(Ok(s)) => Ok(s),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("timed out".to_string()),
                },
            };
            let (mut sink, mut stream) = match subscribed {
                Ok(s) => s,
                Err(error) => {
                    let wait = delays.next().unwrap_or(backoff.max);
                    warn!(%target, attempt, retry_in = ?wait, %error, "Redis bus: cannot subscribe; retrying");
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(wait) => continue,
                    }
                }
            };
            info!(%target, %channel, attempt, "Redis bus: subscribed");
            connected.store(true, Ordering::SeqCst);
            delays = backoff.delays();
            attempt = 0;
            let mut ping = tokio::time::interval(PING_EVERY);
            ping.tick().await;
            let why = loop {
                tokio::select! {
                    () = cancel.cancelled() => {
                        connected.store(false, Ordering::SeqCst);
                        return;
                    }
                    _ = ping.tick() => {
                        match tokio::time::timeout(IO_TIMEOUT, sink.ping::<redis::Value>()).await {
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => break e.to_string(),
                            Err(_) => break "ping timed out".to_string(),
                        }
                    }
                    m = stream.next() => {
                        let Some(msg) = m else { break "connection closed".to_string() };
                        let payload = msg.get_payload_bytes();
                        if payload.len() > MAX_MESSAGE_BYTES {
                            warn!(%channel, bytes = payload.len(), "Redis bus: oversized message ignored");
                            continue;
                        }
                        match serde_json::from_slice::<BusEvent>(payload) {
                            Ok(ev) if ev.node_id == node_id => {
                                let _ = local.send(Arc::new(ev));
                            }
                            Ok(ev) => warn!(%channel, from = %ev.node_id, "Redis bus: message for another node ignored"),
                            Err(e) => warn!(%channel, error = %e, "Redis bus: malformed message ignored"),
                        }
                    }
                }
            };
            connected.store(false, Ordering::SeqCst);
            warn!(%target, reason = %why, "Redis bus: subscription lost; reconnecting");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use serde_json::json;

    fn ev(id: i64) -> BusEvent {
        BusEvent::recorded(
            "12D3KooWtest",
            id,
            &NewEvent {
                kind: "config_applied".into(),
                actor: "api".into(),
                snapshot_id: Some("abc".into()),
                detail: json!({"n": id}),
            },
        )
    }

    #[tokio::test]
    async fn memory_bus_delivers_to_every_subscriber_in_order() {
        let bus = MemoryBus::new();
        let mut a = bus.subscribe();
        let b = bus.subscribe().into_stream();
        for i in 1..=3 {
            bus.publish(ev(i)).unwrap();
        }
        for i in 1..=3 {
            assert_eq!(a.recv().await.unwrap().id, i);
        }
        let got: Vec<i64> = b.take(3).map(|e| e.unwrap().id).collect().await;
        assert_eq!(got, vec![1, 2, 3]);
        assert!(bus.connected());
    }

    #[tokio::test]
    async fn memory_bus_is_bounded_and_reports_lag() {
        let bus = MemoryBus::new();
        let mut slow = bus.subscribe();
        let n = SUBSCRIBER_CAPACITY as i64 + 10;
        for i in 0..n {
            bus.publish(ev(i)).unwrap();
        }
        match slow.recv().await {
            Err(BusError::Lagged(missed)) => assert_eq!(missed, 10),
            other => panic!("expected lag, got {other:?}"),
        }
        assert_eq!(slow.recv().await.unwrap().id, 10);
    }

    #[tokio::test]
    async fn a_stream_ends_when_the_bus_is_dropped() {
        let bus = MemoryBus::new();
        let s = bus.subscribe().into_stream();
        bus.publish(ev(7)).unwrap();
        drop(bus);
        let got: Vec<_> = s.collect().await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].as_ref().unwrap().id, 7);
    }

    #[test]
    fn bus_events_round_trip_as_json() {
        let e = ev(42);
        let s = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<BusEvent>(&s).unwrap(), e);
        assert!(serde_json::from_str::<BusEvent>(r#"{"id":1}"#).is_err());
    }

    #[test]
    fn redis_targets_never_show_the_password() {
        let url = crate::store::url_with_password("redis://redis:6380/2", "s3cr3t-pass");
        assert_eq!(describe_redis_url(&url), "redis:6380/2");
    }
}
