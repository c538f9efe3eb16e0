//! The HTTP accept loop (plain and TLS alike), with the connection limits `axum::serve` does
//! not have:
//!
//! - at most `limits.http_connections` connections are held (lowered to fit the open-file
//!   limit, which [`raise_open_files_limit`] raises to the hard limit at start). At the cap, a
//!   new connection evicts the oldest one that has not sent a request yet (an idle flood cannot
//!   lock clients out), or, when every connection is in use, is closed at once;
//! - a connection must finish its TLS handshake and its first request's headers within
//!   `limits.header_timeout`; later requests on a keep-alive connection too (hyper's
//!   header-read timer, which also runs while it waits for the next request);
//! - a connection with no byte in either direction for `limits.idle_timeout` is closed.
//!
//! A connection upgraded to a WebSocket keeps its slot until the socket closes (the count
//! travels with the socket); its own limits are in [`crate::ws`].
//!
//! ```text
//! accept → slot (or evict, or close) → [TLS handshake] → hyper (h1/h2, upgrades) → router
//!          └ deadlines: first headers, idle; stop → graceful shutdown of every connection
//! ```

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

use crate::limits::{Limit, LimitsConfig, Refusals};

/// Open files kept for everything but HTTP connections (media socket, audit, QUIC, logs…).
const RESERVED_FILES: u64 = 256;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit now in force.
pub fn raise_open_files_limit() -> io::Result<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given, which lives on this stack frame.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if r.rlim_cur < r.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: r.rlim_max,
            rlim_max: r.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(raised.rlim_cur);
        }
        warn!(
            error = %io::Error::last_os_error(),
            soft = r.rlim_cur,
            hard = r.rlim_max,
            "cannot raise the open-file limit"
        );
    }
    Ok(r.rlim_cur)
}

/// The connection cap in force: `limits.http_connections`, lowered to fit `open_files`.
pub fn connection_cap(limits: &LimitsConfig, open_files: u64) -> usize {
    let fit = open_files.saturating_sub(RESERVED_FILES).max(16);
    let cap = limits.http_connections.get();
    if (cap as u64) > fit {
        warn!(
            configured = cap,
            open_files,
            cap = fit,
            "limits.http_connections does not fit the open-file limit: lowered"
        );
        return fit as usize;
    }
    cap
}

/// What the accept loop needs.
pub struct Serve {
    /// The bound listener.
    pub listener: TcpListener,
    /// TLS, when configured.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// The router.
    pub app: Router,
    /// The connection cap in force (see [`connection_cap`]).
    pub cap: usize,
    /// `limits.header_timeout`.
    pub header_timeout: Duration,
    /// `limits.idle_timeout`.
    pub idle_timeout: Duration,
    /// Where refusals are counted.
    pub refusals: Arc<Refusals>,
    /// Turns true to stop: no new connections, graceful shutdown of the open ones.
    pub stop: watch::Receiver<bool>,
}

impl Serve {
    /// Runs the accept loop until `stop`, then until every connection ended.
    pub async fn run(self) -> io::Result<()> {
        let Serve {
            listener,
            tls,
            app,
            cap,
            header_timeout,
            idle_timeout,
            refusals,
            mut stop,
        } = self;
        let conns = Arc::new(Conns::default());
        let mut next_id = 0u64;
        info!(
            cap,
            ?header_timeout,
            ?idle_timeout,
            "HTTP connection limits"
        );
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.wait_for(|s| *s) => break,
            };
            let (stream, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors (or a connection reset before accept): the cap
                    // should prevent the first; pause briefly rather than spin.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            if conns.active.load(Ordering::Acquire) >= cap {
                refusals.count(Limit::HttpConnections);
                if !conns.evict_oldest_unused() {
                    debug!("connection cap reached, every connection in use: new one closed");
                    drop(stream);
                    continue;
                }
            }
            next_id += 1;
            let slot = conns.open(next_id);
            let conn = Connection {
                peer,
                app: app.clone(),
                tls: tls.clone(),
                header_timeout,
                idle_timeout,
                refusals: Arc::clone(&refusals),
                stop: stop.clone(),
                slot,
                held: Held {
                    conns: Arc::clone(&conns),
                    id: next_id,
                },
            };
            tokio::spawn(conn.run(stream));
        }
        drop(listener);
        // Every connection got the stop signal; the server's shutdown bounds this wait.
        // Upgraded WebSockets are not waited for: they end with their signalling sessions.
        while conns.serving.load(Ordering::Acquire) > 0 {
            let _ = tokio::time::timeout(Duration::from_millis(100), conns.closed.notified()).await;
        }
        Ok(())
    }
}

/// The connections held: how many, and those that have not sent a request yet (eviction
/// candidates, oldest first).
#[derive(Default)]
struct Conns {
    /// Connections held (sockets open, upgraded ones included).
    active: AtomicUsize,
    /// Connections still served by HTTP (not yet ended or upgraded).
    serving: AtomicUsize,
    unused: Mutex<BTreeMap<u64, Arc<Slot>>>,
    closed: Notify,
}

#[derive(Default)]
struct Slot {
    used: AtomicBool,
    evict: Notify,
}

impl Conns {
    fn unused(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Slot>>> {
        // Single inserts and removes: a poisoned lock is still consistent.
        self.unused.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn open(&self, id: u64) -> Arc<Slot> {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.serving.fetch_add(1, Ordering::AcqRel);
        let slot = Arc::new(Slot::default());
        self.unused().insert(id, Arc::clone(&slot));
        slot
    }

    fn evict_oldest_unused(&self) -> bool {
        match self.unused().pop_first() {
            Some((_, slot)) => {
                slot.evict.notify_one();
                true
            }
            None => false,
        }
    }

    fn used(&self, id: u64) {
        self.unused().remove(&id);
    }
}

/// A held connection slot, given back when dropped (with the socket: an upgraded WebSocket
/// keeps it).
struct Held {
    conns: Arc<Conns>,
    id: u64,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.conns.used(self.id);
        self.conns.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection's HTTP task, counted until it ends (or hands its socket to a WebSocket).
struct Serving(Arc<Conns>);

impl Drop for Serving {
    fn drop(&mut self) {
        if self.0.serving.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}

struct Connection {
    peer: SocketAddr,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    header_timeout: Duration,
    idle_timeout: Duration,
    refusals: Arc<Refusals>,
    stop: watch::Receiver<bool>,
    slot: Arc<Slot>,
    held: Held,
}

impl Connection {
    async fn run(self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let accepted = Instant::now();
        let header_deadline = tokio::time::Instant::from_std(accepted + self.header_timeout);
        let activity = Arc::new(Activity {
            start: accepted,
            last_ms: AtomicU64::new(0),
        });
        let Connection {
            peer,
            app,
            tls,
            header_timeout,
            idle_timeout,
            refusals,
            stop,
            slot,
            held,
        } = self;
        let conns = Arc::clone(&held.conns);
        let _serving = Serving(Arc::clone(&conns));
        let id = held.id;
        let io = Tracked {
            inner: stream,
            activity: Arc::clone(&activity),
            _held: held,
        };
        let limits = ConnLimits {
            header_deadline,
            header_timeout,
            idle_timeout,
            refusals,
            activity,
            slot,
        };
        match tls {
            None => serve_io(io, peer, app, limits, conns, id, stop).await,
            Some(acceptor) => {
                // The handshake (and its socket) is dropped after the refusal is counted.
                let accept = acceptor.accept(io);
                tokio::pin!(accept);
                let handshake = tokio::select! {
                    r = &mut accept => r,
                    _ = tokio::time::sleep_until(header_deadline) => {
                        limits.refusals.count(Limit::HeaderTimeout);
                        return;
                    }
                    _ = limits.slot.evict.notified() => return,
                };
                match handshake {
                    Ok(tls) => serve_io(tls, peer, app, limits, conns, id, stop).await,
                    Err(e) => debug!(error = %e, "TLS handshake failed"),
                }
            }
        }
    }
}

struct ConnLimits {
    header_deadline: tokio::time::Instant,
    header_timeout: Duration,
    idle_timeout: Duration,
    refusals: Arc<Refusals>,
    activity: Arc<Activity>,
    slot: Arc<Slot>,
}

async fn serve_io<I>(
    io: I,
    peer: SocketAddr,
    app: Router,
    limits: ConnLimits,
    conns: Arc<Conns>,
    id: u64,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let slot = Arc::clone(&limits.slot);
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            if !slot.used.swap(true, Ordering::AcqRel) {
                conns.used(id);
            }
            req.extensions_mut().insert(ConnectInfo(peer));
            tower_service::Service::call(&mut app.clone(), req)
        });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        let first_request = !limits.slot.used.load(Ordering::Acquire);
        let idle_deadline = limits.activity.last() + limits.idle_timeout;
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    let timeout = e
                        .downcast_ref::<hyper::Error>()
                        .is_some_and(hyper::Error::is_timeout);
                    if timeout {
                        limits.refusals.count(Limit::HeaderTimeout);
                    }
                    debug!(error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            _ = limits.slot.evict.notified() => return,
            _ = tokio::time::sleep_until(limits.header_deadline), if first_request => {
                if !limits.slot.used.load(Ordering::Acquire) {
                    limits.refusals.count(Limit::HeaderTimeout);
                    return;
                }
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(idle_deadline)) => {
                if limits.activity.last() + limits.idle_timeout <= Instant::now() {
                    limits.refusals.count(Limit::IdleTimeout);
                    return;
                }
            }
            _ = stop.wait_for(|s| *s), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// When the connection last moved a byte.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// A socket that records its activity and holds its connection slot.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
    _held: Held,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
