//! Bounds on the API's connections: how many at once, how many from one source address,
//! and how long one may sit without any I/O.
//!
//! `axum::serve` and `axum-server` accept every connection and keep it as long as the peer
//! likes; each may hold hyper's read buffer (up to ~400 KiB of headers). Here every
//! connection holds a [`ConnPermit`] for its whole life: a slot of `api.max_connections`
//! and one of its source address's `api.max_connections_per_ip`. Over either bound a new
//! connection is closed at once (the plain listener waits for a global slot instead,
//! leaving the connection in the kernel's backlog). A connection with no byte read or
//! written for [`IDLE_TIMEOUT`] is closed: that ends idle keep-alive connections and
//! slow-header ("slowloris") connections alike, and frees their slots.

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

/// A connection with no I/O in either direction for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The connection slots of one API listener (cheap to clone; clones share the slots).
#[derive(Clone, Debug)]
pub struct ConnLimits {
    total: Arc<Semaphore>,
    per_ip: Arc<Mutex<HashMap<IpAddr, u32>>>,
    max_per_ip: u32,
    idle: Duration,
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
    /// `max` connections in all, `max_per_ip` from one source address (both at least 1).
    pub fn new(max: u32, max_per_ip: u32) -> Self {
        Self::with_idle(max, max_per_ip, IDLE_TIMEOUT)
    }

    /// As [`ConnLimits::new`], with another idle timeout (tests).
    pub fn with_idle(max: u32, max_per_ip: u32, idle: Duration) -> Self {
        Self {
            total: Arc::new(Semaphore::new(max.max(1) as usize)),
            per_ip: Arc::new(Mutex::new(HashMap::new())),
            max_per_ip: max_per_ip.max(1),
            idle,
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

    /// The source address's slot, given a global one; `None` when it has its share.
    fn admit_ip(&self, total: OwnedSemaphorePermit, ip: IpAddr) -> Option<ConnPermit> {
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

    /// Wraps an accepted stream so that it holds `permit` and closes when idle.
    pub fn wrap<T>(&self, io: T, permit: ConnPermit) -> Limited<T> {
        Limited {
            io,
            _permit: permit,
            idle: self.idle,
            timer: Box::pin(tokio::time::sleep(self.idle)),
        }
    }
}

/// A connection's stream with its slots and idle timer.
#[derive(Debug)]
pub struct Limited<T> {
    io: T,
    _permit: ConnPermit,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
}

impl<T> Limited<T> {
    fn progressed(&mut self) {
        let at = Instant::now() + self.idle;
        self.timer.as_mut().reset(at);
    }

    /// `Pending` turns into a timeout error once the connection has been idle too long.
    fn pending_or_idle<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no I/O on the connection within the idle timeout",
            ))),
            Poll::Pending => Poll::Pending,
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
                    this.progressed();
                }
                Poll::Ready(r)
            }
            Poll::Pending => this.pending_or_idle(cx),
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
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    this.progressed();
                }
                Poll::Ready(r)
            }
            Poll::Pending => this.pending_or_idle(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    this.progressed();
                }
                Poll::Ready(r)
            }
            Poll::Pending => this.pending_or_idle(cx),
        }
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
        let l = ConnLimits::new(3, 2);
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

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_times_out_and_io_keeps_it_alive() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = ConnLimits::with_idle(4, 4, Duration::from_secs(10));
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
