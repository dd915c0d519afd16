//! Bounds on the API's connections: how many at once, how many from one source, and how
//! long one may sit without making progress.
//!
//! `axum::serve` and `axum-server` accept every connection and keep it as long as the peer
//! likes; each may hold hyper's read buffer (up to ~400 KiB of headers). Here every
//! connection holds a [`ConnPermit`] for its whole life: a slot of `api.max_connections`
//! and one of its source's `api.max_connections_per_ip` (a source is an IPv4 address or an
//! IPv6 /64, since one host usually has a whole /64). Over either bound a new connection is
//! closed at once (the plain listener waits for a global slot instead, leaving the
//! connection in the kernel's backlog). Two timers free slots:
//! - **idle**: no byte read or written for `max(90 s, api.request_timeout + 5 s)` (idle
//!   keep-alive connections);
//! - **stalled**: bytes read but nothing written back for `api.request_timeout + 5 s`. Every
//!   request gets an answer within `api.request_timeout` (the timeout layer answers 408), so
//!   only a client trickling an endless request ("slowloris") stays in that state.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// A connection with no I/O in either direction for this long (at least) is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Added to `api.request_timeout` for the stall and idle bounds (the 408 has to be written).
const ANSWER_SLACK: Duration = Duration::from_secs(5);

/// The connection slots of one API listener (cheap to clone; clones share the slots).
#[derive(Clone, Debug)]
pub struct ConnLimits {
    total: Arc<Semaphore>,
    per_ip: Arc<Mutex<HashMap<IpAddr, u32>>>,
    max_per_ip: u32,
    idle: Duration,
    stall: Duration,
}

/// One connection's slots; released when dropped (with the connection).
#[derive(Debug)]
pub struct ConnPermit {
    _total: OwnedSemaphorePermit,
    ip: IpAddr,
    per_ip: Arc<Mutex<HashMap<IpAddr, u32>>>,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl ConnLimits {
    /// `max` connections in all, `max_per_ip` from one source (both at least 1), for an API
    /// whose requests are answered within `request_timeout`.
    pub fn new(max: u32, max_per_ip: u32, request_timeout: Duration) -> Self {
        let stall = request_timeout.saturating_add(ANSWER_SLACK);
        Self::with_timers(max, max_per_ip, IDLE_TIMEOUT.max(stall), stall)
    }

    /// As [`ConnLimits::new`], with explicit idle and stall bounds (tests).
    pub fn with_timers(max: u32, max_per_ip: u32, idle: Duration, stall: Duration) -> Self {
        Self {
            total: Arc::new(Semaphore::new(max.max(1) as usize)),
            per_ip: Arc::new(Mutex::new(HashMap::new())),
            max_per_ip: max_per_ip.max(1),
            idle,
            stall,
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.per_ip
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|n| *n as usize)
            .sum()
    }

    /// The source's slot, given a global one; `None` when it has its share.
    fn admit_ip(&self, total: OwnedSemaphorePermit, ip: IpAddr) -> Option<ConnPermit> {
        let ip = source_of(ip);
        let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return None;
        }
        *n += 1;
        Some(ConnPermit {
            _total: total,
            ip,
            per_ip: self.per_ip.clone(),
        })
    }

    /// Slots for a connection from `ip` without waiting; `None` over either bound.
    pub fn try_admit(&self, ip: IpAddr) -> Option<ConnPermit> {
        let total = self.total.clone().try_acquire_owned().ok()?;
        self.admit_ip(total, ip)
    }

    /// Wraps an accepted stream so that it holds `permit` and closes when idle or stalled.
    pub fn wrap<T>(&self, io: T, permit: ConnPermit) -> Limited<T> {
        Limited {
            io,
            _permit: permit,
            idle: self.idle,
            stall: self.stall,
            last_io: Instant::now(),
            unanswered_since: None,
            timer: Box::pin(tokio::time::sleep(self.idle)),
        }
    }
}

/// What a connection counts as for `api.max_connections_per_ip`: an IPv4 address (also when
/// IPv4-mapped), or an IPv6 /64.
fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut o = v6.octets();
                o[8..].fill(0);
                IpAddr::V6(o.into())
            }
        },
    }
}

/// A connection's stream with its slots and its idle and stall timer.
#[derive(Debug)]
pub struct Limited<T> {
    io: T,
    _permit: ConnPermit,
    idle: Duration,
    stall: Duration,
    last_io: Instant,
    /// Since when bytes have been read without anything written back.
    unanswered_since: Option<Instant>,
    timer: Pin<Box<Sleep>>,
}

impl<T> Limited<T> {
    /// When the connection expires: idle since the last I/O, or stalled since the first
    /// unanswered byte.
    fn deadline(&self) -> Instant {
        let idle_at = self.last_io + self.idle;
        match self.unanswered_since {
            Some(t) => idle_at.min(t + self.stall),
            None => idle_at,
        }
    }

    /// Progress only moves the deadline later, and the timer is re-armed lazily when it
    /// fires; only a deadline that moves earlier (the first unanswered byte) re-arms it now.
    /// So the hot path (every read and write) does not touch the timer.
    fn read_some(&mut self) {
        let now = Instant::now();
        self.last_io = now;
        if self.unanswered_since.is_none() {
            self.unanswered_since = Some(now);
            let d = self.deadline();
            if d < self.timer.deadline() {
                self.timer.as_mut().reset(d);
            }
        }
    }

    fn wrote(&mut self, r: &Poll<io::Result<usize>>) {
        if matches!(r, Poll::Ready(Ok(n)) if *n > 0) {
            self.last_io = Instant::now();
            self.unanswered_since = None;
        }
    }

    /// `Pending` turns into a timeout error once the connection is idle or stalled too long.
    fn pending_or_expired<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let d = self.deadline();
            if Instant::now() < d {
                // Progress since the timer was armed: wait for the new deadline.
                self.timer.as_mut().reset(d);
                continue;
            }
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                if self.unanswered_since.is_some() {
                    "a request that never completed (stalled connection)"
                } else {
                    "no I/O on the connection within the idle timeout"
                },
            )));
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Limited<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.read_some();
                }
                Poll::Ready(r)
            }
            Poll::Pending => this.pending_or_expired(cx),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Limited<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.wrote(&r);
        if r.is_pending() {
            return this.pending_or_expired(cx);
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.wrote(&r);
        if r.is_pending() {
            return this.pending_or_expired(cx);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The plain-HTTP listener: waits for a global slot before it accepts (back-pressure into
/// the kernel's backlog), then closes a connection whose source address has its share.
#[derive(Debug)]
pub struct LimitedListener {
    inner: TcpListener,
    limits: ConnLimits,
}

impl LimitedListener {
    pub fn new(inner: TcpListener, limits: ConnLimits) -> Self {
        Self { inner, limits }
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = Limited<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok(total) = self.limits.total.clone().acquire_owned().await else {
                // The semaphore is never closed; keep the listener alive regardless.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let (stream, addr) = match self.inner.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // As axum does: the error is per connection (or EMFILE): log, back off.
                    tracing::debug!(error = %e, "accepting an API connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Small responses and SSE events go out at once, not after the peer's delayed
            // ACK of the previous segment (Nagle: ~40 ms for an event right after headers).
            let _ = stream.set_nodelay(true);
            match self.limits.admit_ip(total, addr.ip()) {
                Some(permit) => return (self.limits.wrap(stream, permit), addr),
                None => {
                    tracing::debug!(ip = %addr.ip(), "API connection refused: too many from this address");
                    drop(stream);
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// The TLS path's inner acceptor (before the handshake): slots or an immediate close.
#[derive(Clone, Debug)]
pub struct LimitAcceptor {
    pub limits: ConnLimits,
}

impl<S> axum_server::accept::Accept<TcpStream, S> for LimitAcceptor {
    type Stream = Limited<TcpStream>;
    type Service = S;
    type Future = std::future::Ready<io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let ip = match stream.peer_addr() {
            Ok(a) => a.ip(),
            Err(e) => return std::future::ready(Err(e)),
        };
        let _ = stream.set_nodelay(true);
        std::future::ready(match self.limits.try_admit(ip) {
            Some(permit) => Ok((self.limits.wrap(stream, permit), service)),
            None => Err(io::Error::other("too many API connections")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_are_bounded_in_all_and_per_address_and_released_on_drop() {
        let l = ConnLimits::new(3, 2, Duration::from_secs(30));
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let a1 = l.try_admit(a).unwrap();
        let _a2 = l.try_admit(a).unwrap();
        assert!(l.try_admit(a).is_none(), "third from one address");
        let b1 = l.try_admit(b).unwrap();
        assert!(l.try_admit(b).is_none(), "fourth in all");
        assert_eq!(l.open(), 3);
        drop(a1);
        assert_eq!(l.open(), 2);
        let _a3 = l.try_admit(a).unwrap();
        drop(b1);
        let _b2 = l.try_admit(b).unwrap();
        assert_eq!(l.open(), 3);
    }

    #[test]
    fn ipv6_sources_are_counted_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_of(a), source_of(b));
        assert_ne!(source_of(a), source_of(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(source_of(mapped), "192.0.2.1".parse::<IpAddr>().unwrap());
    }

    #[tokio::test]
    async fn one_ipv6_host_cannot_take_more_than_its_share() {
        let l = ConnLimits::new(100, 2, Duration::from_secs(30));
        let _a = l.try_admit("2001:db8::1".parse().unwrap()).unwrap();
        let _b = l.try_admit("2001:db8::2".parse().unwrap()).unwrap();
        assert!(l.try_admit("2001:db8::3".parse().unwrap()).is_none());
        assert!(l.try_admit("2001:db8:0:1::3".parse().unwrap()).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_request_that_never_completes_is_closed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = ConnLimits::new(4, 4, Duration::from_secs(30));
        let (mut client, server) = tokio::io::duplex(64);
        let mut s = l.wrap(server, l.try_admit("127.0.0.1".parse().unwrap()).unwrap());
        let started = Instant::now();
        // One byte every 20 s never lets the idle timer (90 s) fire, but nothing is ever
        // answered: the stall bound (30 s + 5 s) closes it.
        let e = loop {
            client.write_all(b"G").await.unwrap();
            let mut b = [0u8; 1];
            match tokio::time::timeout(Duration::from_secs(20), s.read(&mut b)).await {
                Ok(Ok(1)) => {}
                Ok(Ok(n)) => panic!("read {n}"),
                Ok(Err(e)) => break e,
                Err(_) => panic!("the byte did not arrive"),
            }
            let mut b = [0u8; 1];
            if let Ok(r) = tokio::time::timeout(Duration::from_secs(20), s.read(&mut b)).await {
                break r.unwrap_err();
            }
        };
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(35));
        // An answered request resets it: read, write back, then quiet until idle.
        let (mut client, server) = tokio::io::duplex(64);
        let mut s = l.wrap(server, l.try_admit("127.0.0.1".parse().unwrap()).unwrap());
        client.write_all(b"GET").await.unwrap();
        let mut b = [0u8; 3];
        s.read_exact(&mut b).await.unwrap();
        tokio::time::sleep(Duration::from_secs(25)).await;
        s.write_all(b"200").await.unwrap();
        let started = Instant::now();
        let e = s.read(&mut b).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(
            started.elapsed(),
            IDLE_TIMEOUT,
            "idle, not stalled, after the answer"
        );
    }

    #[test]
    fn a_long_request_timeout_lengthens_both_bounds() {
        let l = ConnLimits::new(4, 4, Duration::from_secs(300));
        assert_eq!(l.stall, Duration::from_secs(305));
        assert_eq!(l.idle, Duration::from_secs(305));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_times_out_and_io_keeps_it_alive() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = ConnLimits::with_timers(4, 4, Duration::from_secs(10), Duration::from_secs(60));
        let (client, server) = tokio::io::duplex(64);
        let mut s = l.wrap(server, l.try_admit("127.0.0.1".parse().unwrap()).unwrap());
        let mut client = client;
        // Traffic every 6 s keeps it open past the 10 s timeout.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            client.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
        }
        // Then silence: the read fails with TimedOut after 10 s, not before.
        let started = Instant::now();
        let mut b = [0u8; 1];
        let e = s.read(&mut b).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        drop(s);
        assert_eq!(l.open(), 0, "the slot is freed with the connection");
    }
}
