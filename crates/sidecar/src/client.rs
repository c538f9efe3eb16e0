//! The kiosk side of the telemetry protocol, on quinn: what `cabine-kiosk` uses to dial in.
//!
//! ```no_run
//! # async fn run() -> Result<(), cabine_sidecar::client::ClientError> {
//! use cabine_proto::telemetry::{ChannelDecl, ChannelKind, DeviceKind, Measurement, Value};
//! use cabine_sidecar::client::{Client, ClientConfig};
//! use cabine_sidecar::tls::ServerVerification;
//!
//! let room = cabine_proto::RoomId::parse("consult-1").expect("valid room");
//! let config = ClientConfig::new(
//!     "127.0.0.1:4443".parse().expect("address"),
//!     "<kiosk token>",
//!     room,
//!     ServerVerification::InsecureAcceptAny,
//! );
//! let client = Client::connect(config).await?;
//! client.declare(ChannelDecl {
//!     channel_id: 1,
//!     kind: ChannelKind::Measurement as i32,
//!     device_kind: DeviceKind::PulseOximeter as i32,
//!     loinc: "59408-5".into(),
//!     mdc_code: 150456,
//!     unit: "%".into(),
//!     ..Default::default()
//! })?;
//! client.send_measurement(Measurement {
//!     channel_id: 1,
//!     capture_time_us: client.clock().now_us(),
//!     values: vec![Value { loinc: "59408-5".into(), mdc_code: 150456, value: 97.0, unit: "%".into() }],
//!     status: 1,
//!     ..Default::default()
//! })?;
//! while let Some(command) = client.next_command().await {
//!     // run it, then client.send_command_result(...)
//! #   let _ = command;
//! }
//! # Ok(()) }
//! ```
//!
//! The client keeps one connection up by itself: when it drops it reconnects with backoff,
//! declares its channels again, and resends the measurements the server has not acknowledged
//! (the server drops the ones it already has). Waveform chunks and status frames are not kept:
//! while disconnected they are dropped and counted.
//!
//! The protocol and the reconnection decisions are the sans-IO [`core::ClientCore`] (with
//! [`outbox`] and [`reconnect`]); this module and [`stream`] are its quinn/tokio shell.

pub mod core;
pub mod outbox;
pub mod reconnect;
pub mod stream;
pub mod target;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cabine_proto::telemetry::{
    client_frame, encode_datagram, encode_frame, server_frame, ChannelDecl, ClientFrame,
    ClockEstimate, Command, CommandResult, ErrorCode, FrameDecoder, InvalidFrame, Measurement,
    ServerFrame, Status, WaveformChunk, MAX_DATAGRAM_LEN,
};
use cabine_proto::RoomId;
use quinn::VarInt;
use tokio::sync::{mpsc, watch, Notify};

use self::core::{body, ClientCore, Event, Transmit};
use crate::tls::{self, ServerVerification};
use reconnect::{Action, SessionEnd, Transport};
pub use stream::StreamTransport;
pub use target::{Rediscover, Target};
/// Commands waiting for [`Client::next_command`].
const COMMAND_QUEUE: usize = 64;

/// The kiosk's clock: microseconds since the Unix epoch as the kiosk believes it. Capture times
/// are stamped with it and the server aligns them to its own clock.
#[derive(Clone)]
pub struct KioskClock(Arc<dyn Fn() -> u64 + Send + Sync>);

impl KioskClock {
    /// The system clock.
    pub fn system() -> Self {
        KioskClock(Arc::new(system_us))
    }

    /// The system clock shifted by `offset_us` (to simulate a kiosk whose clock is off).
    pub fn offset(offset_us: i64) -> Self {
        KioskClock(Arc::new(move || {
            (system_us() as i64).saturating_add(offset_us).max(0) as u64
        }))
    }

    /// Any clock.
    pub fn custom(f: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        KioskClock(Arc::new(f))
    }

    /// The time now, µs.
    pub fn now_us(&self) -> u64 {
        (self.0)()
    }
}

impl std::fmt::Debug for KioskClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KioskClock")
    }
}

fn system_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// How to reach and authenticate to the sidecar.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The sidecar's UDP address.
    pub server: SocketAddr,
    /// The TLS server name (SNI, and the name checked with [`ServerVerification::Roots`]).
    pub server_name: String,
    /// The kiosk's token (role kiosk).
    pub token: String,
    /// The room.
    pub room: RoomId,
    /// How to trust the server's certificate.
    pub verification: ServerVerification,
    /// The kiosk clock.
    pub clock: KioskClock,
    /// Most measurements kept unacknowledged.
    pub max_unacked: usize,
    /// First reconnection delay; doubles up to `reconnect_max`.
    pub reconnect_min: Duration,
    /// Longest reconnection delay.
    pub reconnect_max: Duration,
    /// QUIC keep-alive interval.
    pub keep_alive: Duration,
    /// Connection idle timeout.
    pub idle_timeout: Duration,
    /// Software name sent in the hello.
    pub software: String,
    /// The same protocol over TCP/TLS (the server's WebSocket), used when QUIC does not
    /// handshake within [`StreamTransport::quic_timeout`] (UDP dropped on the way) or always
    /// with [`StreamTransport::only`]; `None`: QUIC only.
    pub stream: Option<StreamTransport>,
    /// Asked after a failed reconnection (typically `GET /api/telemetry` again): a restarted
    /// server has a new certificate, a room moved to another node has another address. `None`:
    /// keep dialling the configured target.
    pub rediscover: Option<Rediscover>,
}

impl ClientConfig {
    /// A configuration with defaults for everything else.
    pub fn new(
        server: SocketAddr,
        token: impl Into<String>,
        room: RoomId,
        verification: ServerVerification,
    ) -> Self {
        ClientConfig {
            server,
            server_name: "localhost".into(),
            token: token.into(),
            room,
            verification,
            clock: KioskClock::system(),
            max_unacked: 10_000,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            keep_alive: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(10),
            software: concat!("cabine-sidecar-client/", env!("CARGO_PKG_VERSION")).into(),
            stream: None,
            rediscover: None,
        }
    }
}

/// Resolves a server address written as `host:port` or `quic://host:port` (port 4443 when
/// omitted): the first socket address and the host name for TLS.
pub async fn resolve(url: &str) -> Result<(SocketAddr, String), ClientError> {
    let rest = url.strip_prefix("quic://").unwrap_or(url);
    let rest = rest.split('/').next().unwrap_or(rest);
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => match p.parse::<u16>() {
            Ok(p) => (h, p),
            Err(_) => (rest, cabine_proto::telemetry::DEFAULT_PORT),
        },
        _ => (rest, cabine_proto::telemetry::DEFAULT_PORT),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addr = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| ClientError::Resolve(format!("{url}: {e}")))?
        .next()
        .ok_or_else(|| ClientError::Resolve(format!("{url}: no address")))?;
    Ok((addr, host.to_owned()))
}

/// Errors of the client.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The address could not be resolved.
    #[error("cannot resolve {0}")]
    Resolve(String),
    /// TLS or QUIC configuration failed.
    #[error("configuration: {0}")]
    Config(String),
    /// The server refused the session for good (bad token, wrong room or role, version).
    #[error("refused by the server: {code:?}: {reason}")]
    Refused {
        /// The error code.
        code: ErrorCode,
        /// The server's reason.
        reason: String,
    },
    /// Not connected (or the channel is not acknowledged yet on this connection).
    #[error("not connected")]
    NotConnected,
    /// The channel was not declared, or with another kind.
    #[error("channel {0} is not declared with this kind")]
    UnknownChannel(u32),
    /// The frame fails the protocol's value checks.
    #[error("invalid frame: {0}")]
    Invalid(#[from] InvalidFrame),
    /// The waveform chunk does not fit in one datagram: send shorter chunks.
    #[error("datagram of {len} bytes, at most {max} fit")]
    TooLarge {
        /// The encoded length.
        len: usize,
        /// The largest that fits.
        max: usize,
    },
    /// The server stopped the stream with this code.
    #[error("stream stopped by the server with code {0}")]
    Stopped(u64),
    /// The connection was lost during the operation.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// Waited too long.
    #[error("timed out")]
    Timeout,
    /// The client was closed.
    #[error("client closed")]
    Closed,
}

/// Where the client is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Dialing (first time or after a drop).
    Connecting,
    /// Session established.
    Connected {
        /// The server's session id.
        session_id: String,
    },
    /// Refused for good (see [`ClientError::Refused`]); the client stopped.
    Failed {
        /// The error code.
        code: ErrorCode,
        /// The reason.
        reason: String,
    },
    /// Closed by [`Client::close`].
    Closed,
}

/// Counters of the client.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ClientStats {
    /// Sessions established.
    pub sessions: u64,
    /// Measurements written for the first time.
    pub measurements_sent: u64,
    /// Measurements written again after a reconnection.
    pub measurements_resent: u64,
    /// Measurements acknowledged.
    pub measurements_acked: u64,
    /// Measurements dropped unacknowledged (outbox full).
    pub measurements_dropped: u64,
    /// Measurements waiting for their acknowledgement.
    pub measurements_unacked: u64,
    /// Waveform datagrams sent.
    pub waveforms_sent: u64,
    /// Waveform chunks dropped (not connected, channel not ready, send failed).
    pub waveforms_dropped: u64,
    /// Control frames (status, command results) dropped on a full queue.
    pub control_dropped: u64,
    /// Commands received.
    pub commands_received: u64,
    /// Commands dropped because nobody read them.
    pub commands_dropped: u64,
    /// Pings answered.
    pub pings_answered: u64,
    /// Streams the server stopped (with the last code).
    pub streams_stopped: u64,
    /// Times a rediscovery gave a new target (new certificate or address).
    pub rediscovered: u64,
}

/// The transport of the established session.
#[derive(Clone)]
enum Link {
    /// QUIC: measurements and blobs on their own streams, waveforms as datagrams.
    Quic(quinn::Connection),
    /// The stream transport: every frame is one message on the session's writer queue.
    Stream(stream::StreamLink),
}

impl Link {
    fn close(&self, reason: &'static [u8]) {
        match self {
            Link::Quic(c) => c.close(VarInt::from_u32(0), reason),
            Link::Stream(s) => s.close(),
        }
    }
}

/// A telemetry session with the sidecar that survives connection drops.
pub struct Client {
    shared: Arc<Shared>,
    commands: tokio::sync::Mutex<mpsc::Receiver<Command>>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    config: ClientConfig,
    state: Mutex<ClientState>,
    /// Something to send.
    wake: Notify,
    /// Bumped on every change worth waiting for (connection, acks).
    changes: watch::Sender<u64>,
    status: watch::Sender<ConnectionState>,
    commands: mpsc::Sender<Command>,
    close: Notify,
    /// The base URL of the node the server last said the room moves to (a `Move`).
    moves: watch::Sender<Option<String>>,
}

/// The core and the link of the established session (the senders write on it directly).
struct ClientState {
    core: ClientCore,
    conn: Option<Link>,
}

impl Client {
    /// Starts the client and waits (up to 10 s) for the first session.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let client = Client::start(config)?;
        client.wait_connected(Duration::from_secs(10)).await?;
        Ok(client)
    }

    /// Starts the client without waiting: it dials, and redials, in the background.
    pub fn start(config: ClientConfig) -> Result<Client, ClientError> {
        let quinn_config =
            quinn_client_config(&config.verification, config.keep_alive, config.idle_timeout)?;
        let bind: SocketAddr = if config.server.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let mut endpoint =
            quinn::Endpoint::client(bind).map_err(|e| ClientError::Config(e.to_string()))?;
        endpoint.set_default_client_config(quinn_config);
        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE);
        let shared = Arc::new(Shared {
            state: Mutex::new(ClientState {
                core: ClientCore::new(&config, rand::random()),
                conn: None,
            }),
            config,
            wake: Notify::new(),
            changes: watch::Sender::new(0),
            status: watch::Sender::new(ConnectionState::Connecting),
            commands: commands_tx,
            close: Notify::new(),
            moves: watch::Sender::new(None),
        });
        let task = tokio::spawn(supervise(shared.clone(), endpoint));
        Ok(Client {
            shared,
            commands: tokio::sync::Mutex::new(commands_rx),
            task,
        })
    }

    /// The kiosk clock this client stamps with.
    pub fn clock(&self) -> &KioskClock {
        &self.shared.config.clock
    }

    /// The connection state now.
    pub fn state(&self) -> ConnectionState {
        self.shared.status.borrow().clone()
    }

    /// Follows the connection state (connected, reconnecting, refused…).
    pub fn state_changes(&self) -> watch::Receiver<ConnectionState> {
        self.shared.status.subscribe()
    }

    /// Waits until a session is up, or fails if refused for good.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), ClientError> {
        let mut rx = self.shared.status.subscribe();
        let wait = async {
            loop {
                match rx.borrow_and_update().clone() {
                    ConnectionState::Connected { .. } => return Ok(()),
                    ConnectionState::Failed { code, reason } => {
                        return Err(ClientError::Refused { code, reason })
                    }
                    ConnectionState::Closed => return Err(ClientError::Closed),
                    ConnectionState::Connecting => {}
                }
                if rx.changed().await.is_err() {
                    return Err(ClientError::Closed);
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    /// Declares (or re-declares) a channel. It is declared again on every reconnection.
    pub fn declare(&self, decl: ChannelDecl) -> Result<(), ClientError> {
        self.shared.lock().core.declare(decl)?;
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Waits until the server acknowledged the declaration of `channel` on the current
    /// connection (measurements and waveforms are only sent then).
    pub async fn wait_ready(&self, channel: u32, timeout: Duration) -> Result<(), ClientError> {
        self.wait_for(timeout, |st| st.core.is_ready(channel)).await
    }

    /// Queues a measurement: it is kept until acknowledged and resent after reconnections. A
    /// `seq` of 0 gets the channel's next sequence number, which is returned.
    pub fn send_measurement(&self, m: Measurement) -> Result<u64, ClientError> {
        let seq = self.shared.lock().core.push_measurement(m)?;
        self.shared.wake.notify_one();
        Ok(seq)
    }

    /// Sends a waveform chunk as a datagram now, or drops it (counted) when not connected. A
    /// `seq` of 0 gets the channel's next one.
    pub fn send_waveform(&self, chunk: WaveformChunk) -> Result<u64, ClientError> {
        let mut st = self.shared.lock();
        let chunk = st.core.prepare_waveform(chunk)?;
        let seq = chunk.seq;
        let ready = st.core.is_ready(chunk.channel_id);
        let frame = body(client_frame::Body::Waveform(chunk));
        let bytes = encode_datagram(&frame).map_err(|_| ClientError::TooLarge {
            len: prost::Message::encoded_len(&frame),
            max: MAX_DATAGRAM_LEN,
        })?;
        let conn = match (&st.conn, ready) {
            (Some(Link::Quic(c)), true) => c.clone(),
            (Some(Link::Stream(s)), true) => {
                // Over TCP the chunk is a frame like any other; a full queue drops it (late
                // samples are worth less than the ones behind them).
                let framed =
                    encode_frame(&frame).map_err(|e| ClientError::Config(e.to_string()))?;
                let sent = s.try_send(framed);
                st.core.count_waveform(sent);
                return if sent {
                    Ok(seq)
                } else {
                    Err(ClientError::NotConnected)
                };
            }
            _ => {
                st.core.count_waveform(false);
                return Err(ClientError::NotConnected);
            }
        };
        let max = conn.max_datagram_size().unwrap_or(0).min(MAX_DATAGRAM_LEN);
        if bytes.len() > max {
            return Err(ClientError::TooLarge {
                len: bytes.len(),
                max,
            });
        }
        match conn.send_datagram(bytes.into()) {
            Ok(()) => {
                st.core.count_waveform(true);
                Ok(seq)
            }
            Err(e) => {
                st.core.count_waveform(false);
                Err(ClientError::ConnectionLost(e.to_string()))
            }
        }
    }

    /// Sends a device status on the control stream (dropped, counted, while disconnected).
    pub fn send_status(&self, status: Status) -> Result<(), ClientError> {
        status.check()?;
        self.send_control(body(client_frame::Body::Status(status)))
    }

    /// Answers a command.
    pub fn send_command_result(&self, result: CommandResult) -> Result<(), ClientError> {
        result.check()?;
        self.send_control(body(client_frame::Body::CommandResult(result)))
    }

    /// The next command from the server (`None` once the client is closed).
    pub async fn next_command(&self) -> Option<Command> {
        self.commands.lock().await.recv().await
    }

    /// Uploads a blob (a snapshot) on its own stream, in chunks, and waits until the server has
    /// read it all. Not retried across reconnections: on `ConnectionLost`, upload it again.
    pub async fn upload_blob(
        &self,
        channel_id: u32,
        mime: &str,
        capture_time_us: u64,
        data: &[u8],
    ) -> Result<u64, ClientError> {
        let (conn, blob_id) = {
            let mut st = self.shared.lock();
            let id = st.core.start_blob(channel_id)?;
            let conn = st.conn.clone().ok_or(ClientError::NotConnected)?;
            (conn, id)
        };
        let lost = |e: &dyn std::fmt::Display| ClientError::ConnectionLost(e.to_string());
        let conn = match conn {
            Link::Quic(c) => c,
            Link::Stream(s) => {
                return stream::upload_blob(&s, channel_id, blob_id, mime, capture_time_us, data)
                    .await
            }
        };
        let mut send = conn.open_uni().await.map_err(|e| lost(&e))?;
        for bytes in core::blob_frames(channel_id, blob_id, mime, capture_time_us, data)? {
            if let Err(e) = send.write_all(&bytes).await {
                return Err(match e {
                    quinn::WriteError::Stopped(code) => ClientError::Stopped(code.into_inner()),
                    e => lost(&e),
                });
            }
        }
        send.finish().map_err(|e| lost(&e))?;
        match send.stopped().await {
            Ok(None) => Ok(blob_id),
            Ok(Some(code)) => Err(ClientError::Stopped(code.into_inner())),
            Err(e) => Err(lost(&e)),
        }
    }

    /// Waits until every measurement is acknowledged.
    pub async fn flush(&self, timeout: Duration) -> Result<(), ClientError> {
        self.wait_for(timeout, |st| st.core.unacked() == 0).await
    }

    /// The server's latest clock estimate for this kiosk (informative).
    pub fn clock_estimate(&self) -> Option<ClockEstimate> {
        self.shared.lock().core.clock_estimate()
    }

    /// Counters now.
    pub fn stats(&self) -> ClientStats {
        self.shared.lock().core.stats()
    }

    /// The node the server said the room moves to (a `Move` on the control stream: the
    /// server drains): its base URL, `None` until then.
    pub fn moves(&self) -> watch::Receiver<Option<String>> {
        self.shared.moves.subscribe()
    }

    /// Drops the current connection and dials where rediscovery says at once (after a `Move`,
    /// once the caller pointed its rediscovery at the new node). Unacknowledged measurements
    /// are resent there.
    pub fn redial_elsewhere(&self) {
        self.shared.lock().core.retarget();
        self.drop_connection();
    }

    /// Drops the current connection as if the network had failed (the client reconnects by
    /// itself). For tests and for a kiosk that knows its network changed.
    pub fn drop_connection(&self) {
        let conn = {
            let mut st = self.shared.lock();
            st.core.handle_link_dropped();
            st.conn.take()
        };
        if let Some(c) = conn {
            self.shared.status.send_replace(ConnectionState::Connecting);
            c.close(b"connection dropped by the kiosk");
            self.shared.changed();
        }
    }

    /// Closes the session (code 0) and stops reconnecting.
    pub async fn close(mut self) {
        let conn = {
            let mut st = self.shared.lock();
            st.core.close();
            st.conn.clone()
        };
        self.shared.close.notify_one();
        if let Some(c) = conn {
            c.close(b"bye");
        }
        let _ = (&mut self.task).await;
    }

    fn send_control(&self, frame: ClientFrame) -> Result<(), ClientError> {
        self.shared.lock().core.send_control(frame)?;
        self.shared.wake.notify_one();
        Ok(())
    }

    async fn wait_for(
        &self,
        timeout: Duration,
        done: impl Fn(&ClientState) -> bool,
    ) -> Result<(), ClientError> {
        let mut rx = self.shared.changes.subscribe();
        let wait = async {
            loop {
                rx.borrow_and_update();
                if done(&self.shared.lock()) {
                    return Ok(());
                }
                if let ConnectionState::Failed { code, reason } = self.state() {
                    return Err(ClientError::Refused { code, reason });
                }
                if rx.changed().await.is_err() {
                    return Err(ClientError::Closed);
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| ClientError::Timeout)?
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let conn = {
            let mut st = self.shared.lock();
            st.core.close();
            st.conn.take()
        };
        self.shared.close.notify_one();
        if let Some(c) = conn {
            c.close(b"bye");
        }
        self.task.abort();
    }
}

/// A quinn client configuration speaking this protocol (TLS 1.3, ALPN `cabine-telemetry/1`),
/// with keep-alives and datagrams. Also useful to test the server with hand-made frames.
pub fn quinn_client_config(
    verification: &ServerVerification,
    keep_alive: Duration,
    idle_timeout: Duration,
) -> Result<quinn::ClientConfig, ClientError> {
    let rustls_config =
        tls::client_config(verification).map_err(|e| ClientError::Config(e.to_string()))?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(rustls_config)
        .map_err(|e| ClientError::Config(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(keep_alive))
        .datagram_receive_buffer_size(Some(64 * 1024))
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(idle_timeout)
                .map_err(|e| ClientError::Config(format!("idle timeout: {e}")))?,
        ));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ClientState> {
        // Nothing in the state is left half-updated by a panic that matters more than
        // stopping the kiosk's telemetry: keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// The next write of the session, if any.
    fn poll_transmit(&self) -> Option<Transmit> {
        self.lock().core.poll_transmit()
    }

    /// Applies a server frame, then the events it gave.
    fn handle_frame(&self, frame: ServerFrame) {
        let now_us = self.config.clock.now_us();
        self.lock().core.handle_frame(now_us, frame);
        self.apply_events();
        self.changed();
    }

    /// Hands the core's events to the application and the watchers.
    fn apply_events(&self) {
        loop {
            let event = self.lock().core.poll_event();
            let Some(event) = event else { return };
            match event {
                Event::Command(c) => {
                    if self.commands.try_send(c).is_err() {
                        self.lock().core.count_command_dropped();
                    }
                }
                Event::Move { url, reason } => {
                    tracing::info!(url = %url, reason = %reason, "telemetry: the server moves this room");
                    self.moves.send_replace(Some(url));
                }
                Event::State(s) => {
                    self.status.send_replace(s);
                    self.changed();
                }
            }
        }
    }

    /// Asks where telemetry is now (at most 10 s); `None` without an answer.
    async fn rediscover(&self) -> Option<Target> {
        let r = self.config.rediscover.as_ref()?;
        tokio::time::timeout(Duration::from_secs(10), r.ask())
            .await
            .ok()
            .flatten()
    }
}

/// The shell's drive loop between sessions: does what the core's reconnection state machine
/// says (dial, ask, wait) until it stops.
async fn supervise(shared: Arc<Shared>, endpoint: quinn::Endpoint) {
    loop {
        shared.apply_events();
        let action = shared.lock().core.poll_action();
        match action {
            Some(Action::Dial(dial)) => {
                let end = match &dial.transport {
                    Transport::Stream(t) => stream::session(&shared, t).await,
                    Transport::Quic { handshake_timeout } => {
                        session(&shared, &endpoint, &dial.target, *handshake_timeout).await
                    }
                };
                {
                    let mut st = shared.lock();
                    st.conn = None;
                    st.core.handle_session_end(Instant::now(), end);
                }
                shared.changed();
            }
            Some(Action::Rediscover) => {
                let found = shared.rediscover().await;
                shared.lock().core.handle_discovered(Instant::now(), found);
            }
            None => {
                let at = shared.lock().core.poll_timeout();
                let Some(at) = at else { break };
                tokio::select! {
                    () = tokio::time::sleep_until(at.into()) => {}
                    () = shared.close.notified() => {}
                }
                shared.lock().core.handle_timeout(Instant::now());
            }
        }
    }
    shared.apply_events();
    if *shared.status.borrow() == ConnectionState::Closed {
        endpoint.close(VarInt::from_u32(0), b"bye");
    }
}

fn fatal_code(e: &quinn::ConnectionError) -> Option<(ErrorCode, String)> {
    if let quinn::ConnectionError::ApplicationClosed(a) = e {
        let code = ErrorCode::from_code(a.error_code.into_inner())?;
        let reason = String::from_utf8_lossy(&a.reason).into_owned();
        if is_fatal(code) {
            return Some((code, reason));
        }
    }
    None
}

/// A refusal that reconnecting will not cure.
fn is_fatal(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::BadToken
            | ErrorCode::WrongRoom
            | ErrorCode::WrongRole
            | ErrorCode::UnsupportedVersion
    )
}

/// One QUIC session; with `handshake_timeout`, a handshake that does not complete in time (or
/// fails for a reason other than a refusal) ends it as [`SessionEnd::NoHandshake`].
async fn session(
    shared: &Arc<Shared>,
    endpoint: &quinn::Endpoint,
    target: &Target,
    handshake_timeout: Option<Duration>,
) -> SessionEnd {
    let config = &shared.config;
    let lost = SessionEnd::Lost { established: false };
    let unreachable = || match handshake_timeout {
        Some(_) => SessionEnd::NoHandshake,
        None => SessionEnd::Lost { established: false },
    };
    let Ok(quinn_config) =
        quinn_client_config(&target.verification, config.keep_alive, config.idle_timeout)
    else {
        return lost;
    };
    let Ok(connecting) = endpoint.connect_with(quinn_config, target.server, &target.server_name)
    else {
        return lost;
    };
    let bound = async {
        match handshake_timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let conn = tokio::select! {
        c = connecting => match c { Ok(c) => c, Err(_) => return unreachable() },
        () = bound => return unreachable(),
        () = shared.close.notified() => return SessionEnd::Closed,
    };
    let Ok((mut send, recv)) = conn.open_bi().await else {
        return lost;
    };
    let hello = shared.lock().core.hello(config.clock.now_us());
    let Ok(bytes) = encode_frame(&hello) else {
        return SessionEnd::Fatal(ErrorCode::Internal, "hello does not encode".into());
    };
    if send.write_all(&bytes).await.is_err() {
        return ended(&conn, false).await;
    }
    let (frames_tx, mut frames_rx) = mpsc::channel::<ServerFrame>(256);
    let reader = tokio::spawn(read_frames(recv, frames_tx));
    let first = tokio::time::timeout(Duration::from_secs(10), frames_rx.recv()).await;
    let session_id = match first {
        Ok(Some(ServerFrame {
            body: Some(server_frame::Body::Hello(h)),
        })) => h.session_id,
        _ => {
            reader.abort();
            return ended(&conn, false).await;
        }
    };
    established(shared, Link::Quic(conn.clone()), session_id);
    let end = run(shared, &conn, &mut send, &mut frames_rx).await;
    reader.abort();
    match end {
        Some(end) => end,
        None => ended(&conn, true).await,
    }
}

/// The session is up on `link`: the core declares the channels again and resends what is
/// unacknowledged once they are acknowledged.
fn established(shared: &Arc<Shared>, link: Link, session_id: String) {
    {
        let mut st = shared.lock();
        st.conn = Some(link);
        st.core.handle_established(Instant::now(), session_id);
    }
    shared.apply_events();
}

async fn ended(conn: &quinn::Connection, established: bool) -> SessionEnd {
    // Give the close frame a moment to arrive so a refusal is told apart from a drop.
    let reason = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
    match reason {
        Ok(e) => match fatal_code(&e) {
            Some((code, reason)) => SessionEnd::Fatal(code, reason),
            None => SessionEnd::Lost { established },
        },
        Err(_) => {
            conn.close(VarInt::from_u32(0), b"no answer");
            SessionEnd::Lost { established }
        }
    }
}

async fn read_frames(mut recv: quinn::RecvStream, tx: mpsc::Sender<ServerFrame>) {
    let mut decoder = FrameDecoder::new();
    while let Ok(Some(chunk)) = recv.read_chunk(16 * 1024, true).await {
        if decoder.push(&chunk.bytes).is_err() {
            return;
        }
        loop {
            match decoder.next_frame::<ServerFrame>() {
                Ok(Some(f)) => {
                    if tx.send(f).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

/// The established session: returns `Some` when it ends for a known reason, `None` when the
/// connection failed (the caller reads the close reason).
async fn run(
    shared: &Arc<Shared>,
    conn: &quinn::Connection,
    control: &mut quinn::SendStream,
    frames: &mut mpsc::Receiver<ServerFrame>,
) -> Option<SessionEnd> {
    let mut measurements: Option<quinn::SendStream> = None;
    loop {
        // Write what the core has: pongs and control frames first, then measurements of ready
        // channels.
        while let Some(t) = shared.poll_transmit() {
            match t {
                Transmit::Control(frame) => {
                    let bytes = encode_frame(&frame).ok()?;
                    control.write_all(&bytes).await.ok()?;
                }
                Transmit::Measurement(m) => {
                    let bytes = encode_frame(&body(client_frame::Body::Measurement(m))).ok()?;
                    if measurements.is_none() {
                        measurements = Some(conn.open_uni().await.ok()?);
                    }
                    let stream = measurements.as_mut()?;
                    if let Err(e) = stream.write_all(&bytes).await {
                        if let quinn::WriteError::Stopped(_) = e {
                            // The server refused something on this stream: use a new one.
                            shared.lock().core.count_stream_stopped();
                            measurements = None;
                            continue;
                        }
                        return None;
                    }
                }
            }
        }
        tokio::select! {
            f = frames.recv() => shared.handle_frame(f?),
            () = shared.wake.notified() => {}
            () = shared.close.notified() => {
                conn.close(VarInt::from_u32(0), b"bye");
                return Some(SessionEnd::Closed);
            }
            _ = conn.closed() => return None,
        }
    }
}
