//! The QUIC shell around [`Core`]: one UDP socket (quinn endpoint), a task per connection and
//! per unidirectional stream, one timer task. Every input goes through [`Inner::drive`]: lock the
//! core, apply the input with `Instant::now()`, drain the outputs (write to kiosks, deliver to the
//! sink, close connections), re-arm the timer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cabine_proto::telemetry::{encode_frame, Delivered, ErrorCode, ServerFrame};
use cabine_proto::{Claims, RoomId};
use quinn::VarInt;
use rustls::pki_types::CertificateDer;
use tokio::sync::{mpsc, Notify};

use crate::auth::TokenVerifier;
use crate::core::{CommandRequest, ConnId, Core, Limits, Output, StreamId};
use crate::error::{CommandError, SidecarError};
use crate::sink::TelemetrySink;
use crate::stats::SidecarStats;
use crate::tls::{self, Identity};

/// Largest chunk read from a stream at once.
const READ_CHUNK: usize = 16 * 1024;

/// Where the server's certificate comes from.
#[derive(Debug)]
#[non_exhaustive]
pub enum TlsSource {
    /// Generate a self-signed certificate for these names at start (development; kiosks pin it,
    /// see [`Sidecar::certificate`]).
    SelfSigned {
        /// Subject alternative names, e.g. `localhost`.
        names: Vec<String>,
    },
    /// PEM files: a certificate chain and a private key.
    PemFiles {
        /// The chain.
        cert: PathBuf,
        /// The key.
        key: PathBuf,
    },
    /// A chain and key already loaded.
    Identity(Identity),
}

/// Configuration of the sidecar.
#[derive(Debug)]
#[non_exhaustive]
pub struct SidecarConfig {
    /// UDP address to listen on (default `127.0.0.1:4443`).
    pub listen: SocketAddr,
    /// The server certificate.
    pub tls: TlsSource,
    /// Protocol limits and timings.
    pub limits: Limits,
    /// Most simultaneous connections; more are refused at the QUIC level.
    pub max_connections: usize,
    /// A connection silent this long is closed (kiosks keep it alive).
    pub idle_timeout: Duration,
    /// Frames queued per kiosk for its control stream before new ones are dropped.
    pub outbound_queue: usize,
    /// Most unidirectional streams a kiosk may have open at once.
    pub max_uni_streams: u32,
}

impl Default for SidecarConfig {
    fn default() -> Self {
        SidecarConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], cabine_proto::telemetry::DEFAULT_PORT)),
            tls: TlsSource::SelfSigned {
                names: vec!["localhost".into()],
            },
            limits: Limits::default(),
            max_connections: 10_000,
            idle_timeout: Duration::from_secs(15),
            outbound_queue: 256,
            max_uni_streams: 16,
        }
    }
}

impl SidecarConfig {
    /// The defaults, listening on `listen`.
    pub fn new(listen: SocketAddr) -> Self {
        SidecarConfig {
            listen,
            ..Default::default()
        }
    }
}

/// The running telemetry sidecar. Cheap to clone; the endpoint closes when the last clone is
/// dropped or on [`shutdown`](Self::shutdown).
#[derive(Clone)]
pub struct Sidecar {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    state: Mutex<State>,
    sink: Arc<dyn TelemetrySink>,
    timer: Arc<Notify>,
    endpoint: quinn::Endpoint,
    cert: CertificateDer<'static>,
    pub(crate) next_conn: AtomicU64,
    pub(crate) next_stream: AtomicU64,
    outbound_dropped: AtomicU64,
    pub(crate) stream_connections: AtomicU64,
    /// Set by [`Sidecar::shutdown`]: stream transports are refused from then on.
    pub(crate) closing: std::sync::atomic::AtomicBool,
    pub(crate) outbound_queue: usize,
    pub(crate) max_connections: usize,
}

pub(crate) struct State {
    core: Core,
    pub(crate) handles: HashMap<ConnId, Handle>,
    armed: Option<Instant>,
}

/// What the shell holds of one kiosk connection, whatever its transport.
pub(crate) struct Handle {
    pub(crate) closer: Closer,
    pub(crate) tx: mpsc::Sender<ServerFrame>,
}

/// How to close a connection: QUIC directly, a stream transport through its task.
pub(crate) enum Closer {
    /// A QUIC connection.
    Quic(quinn::Connection),
    /// A stream transport ([`crate::stream::StreamConn`]): its task sends the close.
    Stream(tokio::sync::oneshot::Sender<(ErrorCode, String)>),
}

impl Sidecar {
    /// Binds the endpoint and starts serving. Must run inside a tokio runtime.
    pub async fn start(
        config: SidecarConfig,
        verifier: Arc<dyn TokenVerifier>,
        sink: Arc<dyn TelemetrySink>,
    ) -> Result<Sidecar, SidecarError> {
        let identity = match config.tls {
            TlsSource::SelfSigned { names } => Identity::self_signed(&names)?,
            TlsSource::PemFiles { cert, key } => Identity::from_pem_files(&cert, &key)?,
            TlsSource::Identity(identity) => identity,
        };
        let cert = identity
            .certs
            .first()
            .cloned()
            .ok_or_else(|| SidecarError::Tls("no certificate".into()))?;
        let rustls_config = tls::server_config(identity)?;
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(rustls_config)
            .map_err(|e| SidecarError::Tls(e.to_string()))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_concurrent_bidi_streams(VarInt::from_u32(1))
            .max_concurrent_uni_streams(VarInt::from_u32(config.max_uni_streams))
            .datagram_receive_buffer_size(Some(256 * 1024))
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(config.idle_timeout)
                    .map_err(|e| SidecarError::Tls(format!("idle timeout: {e}")))?,
            ));
        server_config.transport_config(Arc::new(transport));
        let endpoint = quinn::Endpoint::server(server_config, config.listen).map_err(|source| {
            SidecarError::Bind {
                addr: config.listen,
                source,
            }
        })?;
        let now = Instant::now();
        let core = Core::new(config.limits, verifier, now, unix_now_us());
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                core,
                handles: HashMap::new(),
                armed: None,
            }),
            sink,
            timer: Arc::new(Notify::new()),
            endpoint: endpoint.clone(),
            cert,
            next_conn: AtomicU64::new(1),
            next_stream: AtomicU64::new(1),
            outbound_dropped: AtomicU64::new(0),
            stream_connections: AtomicU64::new(0),
            closing: std::sync::atomic::AtomicBool::new(false),
            outbound_queue: config.outbound_queue.max(1),
            max_connections: config.max_connections,
        });
        tokio::spawn(accept_loop(Arc::downgrade(&inner), endpoint));
        tokio::spawn(timer_loop(Arc::downgrade(&inner), inner.timer.clone()));
        Ok(Sidecar { inner })
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        // A bound endpoint always has an address; fall back to unspecified if the OS says not.
        self.inner
            .endpoint
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The server's certificate (end entity), for kiosks to pin when it is self-signed.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.inner.cert
    }

    /// Sends a device command to a kiosk of `room` on behalf of `sender` (whose verified claims
    /// must be for the room and granted `commands`). Returns the command id that the kiosk's
    /// `CommandResult` (delivered to the sink) will carry.
    pub fn send_command(
        &self,
        room: &RoomId,
        sender: &Claims,
        request: CommandRequest,
    ) -> Result<u64, CommandError> {
        self.inner
            .drive(|core, now| core.send_command(now, room, sender, request))
    }

    /// Like [`send_command`](Self::send_command), and calls `announce` with the command id
    /// before the command leaves for the kiosk: whatever `announce` queues (the asking
    /// subscriber's `command_sent`) is queued before the kiosk's result can be delivered, which
    /// needs the same lock.
    pub fn send_command_announced(
        &self,
        room: &RoomId,
        sender: &Claims,
        request: CommandRequest,
        announce: impl FnOnce(u64),
    ) -> Result<u64, CommandError> {
        self.inner.drive(|core, now| {
            let sent = core.send_command(now, room, sender, request);
            if let Ok(id) = sent {
                announce(id);
            }
            sent
        })
    }

    /// Tells the kiosks connected in `room` that it moves to the node at `url` (drain);
    /// returns how many were told.
    pub fn move_room(&self, room: &RoomId, url: &str, reason: &str) -> usize {
        self.inner
            .drive(|core, now| core.move_room(now, room, url, reason))
    }

    /// The channel declarations of the kiosks connected in `room` (for a subscriber that joins
    /// after they were delivered).
    pub fn channels(&self, room: &RoomId) -> Vec<Delivered> {
        let state = self.inner.lock();
        state.core.channels(Instant::now(), room)
    }

    /// Statistics now.
    pub fn stats(&self) -> SidecarStats {
        let mut stats = self.inner.lock().core.stats();
        stats.outbound_dropped = self.inner.outbound_dropped.load(Ordering::Relaxed);
        stats.stream_connections = self.inner.stream_connections.load(Ordering::Relaxed);
        stats
    }

    /// Closes every connection (`SERVER_BUSY`, "shutting down") and waits for them to finish.
    pub async fn shutdown(&self) {
        self.inner.closing.store(true, Ordering::SeqCst);
        let streams: Vec<ConnId> = self
            .inner
            .lock()
            .handles
            .iter()
            .filter(|(_, h)| matches!(h.closer, Closer::Stream(_)))
            .map(|(c, _)| *c)
            .collect();
        for conn in streams {
            self.inner.drive(|core, now| {
                core.handle_refusal(
                    now,
                    conn,
                    crate::error::Refusal::new(ErrorCode::ServerBusy, "shutting down"),
                )
            });
        }
        self.inner.endpoint.close(
            VarInt::from_u64(ErrorCode::ServerBusy.code()).unwrap_or(VarInt::from_u32(0)),
            b"shutting down",
        );
        self.inner.endpoint.wait_idle().await;
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.endpoint.close(
            VarInt::from_u64(ErrorCode::ServerBusy.code()).unwrap_or(VarInt::from_u32(0)),
            b"shutting down",
        );
    }
}

impl Inner {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the core usable (every input is applied whole
        // or not at all as far as the shell is concerned): keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies one input, then drains every output and re-arms the timer.
    pub(crate) fn drive<R>(&self, input: impl FnOnce(&mut Core, Instant) -> R) -> R {
        let mut state = self.lock();
        let now = Instant::now();
        let r = input(&mut state.core, now);
        let State {
            core,
            handles,
            armed,
        } = &mut *state;
        while let Some(out) = core.poll_output() {
            match out {
                Output::Send { conn, frame } => {
                    let sent = handles
                        .get(&conn)
                        .is_some_and(|h| h.tx.try_send(frame).is_ok());
                    if !sent {
                        self.outbound_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Output::Deliver {
                    room,
                    delivered,
                    reliable,
                } => self.sink.deliver(&room, delivered, reliable),
                Output::Close { conn, code, reason } => match handles.remove(&conn) {
                    Some(Handle {
                        closer: Closer::Quic(connection),
                        ..
                    }) => connection.close(
                        VarInt::from_u64(code.code()).unwrap_or(VarInt::from_u32(1)),
                        reason.as_bytes(),
                    ),
                    Some(Handle {
                        closer: Closer::Stream(close),
                        ..
                    }) => {
                        // The stream's task may be gone already: nothing left to close then.
                        let _ = close.send((code, reason));
                    }
                    None => {}
                },
            }
        }
        let next = core.poll_timeout();
        if next.is_some() && (armed.is_none() || next < *armed) {
            *armed = next;
            self.timer.notify_one();
        }
        r
    }
}

fn unix_now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn code(c: ErrorCode) -> VarInt {
    VarInt::from_u64(c.code()).unwrap_or(VarInt::from_u32(1))
}

async fn accept_loop(inner: Weak<Inner>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let open = strong.lock().handles.len();
        if open >= strong.max_connections {
            strong.drive(|core, _| core.count(ErrorCode::ServerBusy));
            incoming.refuse();
            continue;
        }
        tokio::spawn(connection(inner.clone(), incoming));
    }
}

async fn timer_loop(inner: Weak<Inner>, timer: Arc<Notify>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let deadline = strong.lock().core.poll_timeout();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        drop(strong);
        let notified = timer.notified();
        tokio::select! {
            () = sleep => {
                let Some(strong) = inner.upgrade() else { return };
                strong.lock().armed = None;
                strong.drive(|core, now| core.handle_timeout(now));
            }
            () = notified => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn connection(inner: Weak<Inner>, incoming: quinn::Incoming) {
    let Ok(connection) = incoming.await else {
        return;
    };
    let Some(strong) = inner.upgrade() else {
        return;
    };
    let conn = ConnId(strong.next_conn.fetch_add(1, Ordering::Relaxed));
    let (tx, rx) = mpsc::channel(strong.outbound_queue);
    strong.drive(|core, now| {
        core.handle_connected(now, conn, connection.rtt());
    });
    strong.lock().handles.insert(
        conn,
        Handle {
            closer: Closer::Quic(connection.clone()),
            tx,
        },
    );
    drop(strong);
    let tasks = [
        tokio::spawn(control(inner.clone(), conn, connection.clone(), rx)),
        tokio::spawn(unis(inner.clone(), conn, connection.clone())),
        tokio::spawn(datagrams(inner.clone(), conn, connection.clone())),
    ];
    let reason = connection.closed().await;
    let code = match reason {
        quinn::ConnectionError::ApplicationClosed(a) => a.error_code.into_inner(),
        _ => 0,
    };
    for t in tasks {
        t.abort();
    }
    if let Some(strong) = inner.upgrade() {
        strong.drive(|core, now| core.handle_closed(now, conn, code));
        strong.lock().handles.remove(&conn);
    }
}

/// The control stream: the first bidirectional stream. Later ones are refused.
async fn control(
    inner: Weak<Inner>,
    conn: ConnId,
    connection: quinn::Connection,
    mut rx: mpsc::Receiver<ServerFrame>,
) {
    let Ok((mut send, mut recv)) = connection.accept_bi().await else {
        return;
    };
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            // Server frames are small (no blobs); one that does not encode is a bug, skip it.
            let Ok(bytes) = encode_frame(&frame) else {
                continue;
            };
            if send.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    let extra = tokio::spawn({
        let inner = inner.clone();
        let connection = connection.clone();
        async move {
            while let Ok((mut s, mut r)) = connection.accept_bi().await {
                let _ = s.reset(code(ErrorCode::UnexpectedStream));
                let _ = r.stop(code(ErrorCode::UnexpectedStream));
                if let Some(strong) = inner.upgrade() {
                    strong.drive(|core, _| core.refuse_stream(ErrorCode::UnexpectedStream));
                }
            }
        }
    });
    loop {
        let chunk = recv.read_chunk(READ_CHUNK, true).await;
        let Some(strong) = inner.upgrade() else {
            break;
        };
        match chunk {
            Ok(Some(chunk)) => {
                strong.drive(|core, now| core.handle_control(now, conn, &chunk.bytes))
            }
            Ok(None) => {
                strong.drive(|core, now| core.handle_control_end(now, conn));
                break;
            }
            Err(_) => break,
        }
    }
    extra.abort();
    let _ = writer.await;
}

async fn unis(inner: Weak<Inner>, conn: ConnId, connection: quinn::Connection) {
    while let Ok(mut recv) = connection.accept_uni().await {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let stream = StreamId(strong.next_stream.fetch_add(1, Ordering::Relaxed));
        drop(strong);
        let inner = inner.clone();
        tokio::spawn(async move {
            loop {
                let chunk = recv.read_chunk(READ_CHUNK, true).await;
                let Some(strong) = inner.upgrade() else {
                    return;
                };
                match chunk {
                    Ok(Some(chunk)) => {
                        let verdict = strong
                            .drive(|core, now| core.handle_uni(now, conn, stream, &chunk.bytes));
                        if let Err(refusal) = verdict {
                            let _ = recv.stop(code(refusal.code));
                            return;
                        }
                    }
                    Ok(None) | Err(_) => {
                        strong.drive(|core, now| core.handle_uni_end(now, conn, stream));
                        return;
                    }
                }
            }
        });
    }
}

async fn datagrams(inner: Weak<Inner>, conn: ConnId, connection: quinn::Connection) {
    while let Ok(data) = connection.read_datagram().await {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        strong.drive(|core, now| core.handle_datagram(now, conn, &data));
    }
}
