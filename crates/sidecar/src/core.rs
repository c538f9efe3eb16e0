//! The sans-IO protocol core: every kiosk connection's state, duplicate detection across
//! reconnections, clock alignment, commands and statistics. No sockets, no clock, no tasks: the
//! shell feeds it inputs with the current `Instant` and drains [`Output`]s.
//!
//! ```text
//! shell                                   core
//! ─────                                   ────
//! new connection          ─ handle_connected ─▶
//! control stream bytes    ─ handle_control ──▶   decode, authenticate, declare, pong…
//! uni stream bytes        ─ handle_uni ──────▶   measurements, blobs (Err = stop stream)
//! datagram                ─ handle_datagram ─▶   waveforms
//! connection gone         ─ handle_closed ───▶
//! timer fired             ─ handle_timeout ──▶   hello timeouts, pings, expiry
//! doctor's command        ─ send_command ────▶
//!                         ◀─ poll_output ────    Send / Deliver / Close
//!                         ◀─ poll_timeout ───    next instant to call handle_timeout
//! ```

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cabine_proto::telemetry::{
    client_frame, delivered, server_frame, Ack, ChannelDecl, ChannelKind, ClientFrame, ClientHello,
    ClockEstimate, Command, Delivered, ErrorCode, FrameDecoder, FrameError, Move, Ping,
    ServerFrame, ServerHello, SourceLeft, MAX_DATAGRAM_LEN, MAX_FRAME_LEN, PROTOCOL_VERSION,
};
use cabine_proto::{Claims, Grant, Identity, Redacted, RoomId};
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::auth::{authorize_kiosk, TokenVerifier};
use crate::clock::{ClockEstimator, Estimate};
use crate::error::{CommandError, Refusal};
use crate::seq::{Insert, SeqWindow, Wave, WaveSeq};
use crate::stats::{ChannelCounters, ChannelStats, SidecarStats};

/// A connection, numbered by the shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// A unidirectional stream of a connection, numbered by the shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u64);

/// Limits and timings of the core. Every queue and table is bounded by one of these.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Limits {
    /// Most channels one kiosk may declare.
    pub max_channels: usize,
    /// Largest blob, bytes.
    pub max_blob_len: u64,
    /// Time a new connection has to send its ClientHello.
    pub hello_timeout: Duration,
    /// Interval of clock pings once the first burst is done.
    pub ping_interval: Duration,
    /// Pings sent right after the hello, `ping_burst_interval` apart, for a quick estimate.
    pub ping_burst: u32,
    /// Spacing of the first pings.
    pub ping_burst_interval: Duration,
    /// How long clock samples are kept (the estimate follows drift at this scale).
    pub clock_window: Duration,
    /// How long a gone kiosk's sequence state is kept for its reconnection.
    pub resume_ttl: Duration,
    /// Most kiosks remembered (connected or resumable).
    pub max_kiosks: usize,
    /// Out-of-order measurement sequence numbers remembered per channel.
    pub dedupe_window: u64,
    /// Latency samples kept per channel for percentiles.
    pub latency_window: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_channels: 64,
            max_blob_len: 8 * 1024 * 1024,
            hello_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(2),
            ping_burst: 4,
            ping_burst_interval: Duration::from_millis(100),
            clock_window: Duration::from_secs(120),
            resume_ttl: Duration::from_secs(600),
            max_kiosks: 10_000,
            dedupe_window: 4096,
            latency_window: 1024,
        }
    }
}

/// A command a doctor asks for, as the server receives it (e.g. JSON on the data channel).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandRequest {
    /// The kiosk to send it to; may be omitted when the room has one kiosk.
    #[serde(default)]
    pub kiosk: Option<Identity>,
    /// The device channel.
    pub channel_id: u32,
    /// The command, e.g. `start_measurement`, `take_snapshot`.
    pub name: String,
    /// Parameters.
    #[serde(default)]
    pub params: std::collections::BTreeMap<String, String>,
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Write a frame on the connection's control stream.
    Send {
        /// The connection.
        conn: ConnId,
        /// The frame.
        frame: ServerFrame,
    },
    /// Hand a frame to the sink.
    Deliver {
        /// The room.
        room: RoomId,
        /// The frame.
        delivered: Delivered,
        /// Reliable (measurements, status, blobs) or lossy (waveforms).
        reliable: bool,
    },
    /// Close the connection.
    Close {
        /// The connection.
        conn: ConnId,
        /// The error code.
        code: ErrorCode,
        /// The reason.
        reason: String,
    },
}

/// The protocol core. See the module documentation for the drive loop.
pub struct Core {
    limits: Limits,
    verifier: Arc<dyn TokenVerifier>,
    /// Maps instants to server wall-clock time.
    anchor: (Instant, u64),
    conns: HashMap<ConnId, Conn>,
    kiosks: HashMap<KioskKey, Kiosk>,
    outputs: VecDeque<Output>,
    counters: Counters,
    next_command_id: u64,
    next_session: u64,
}

#[derive(Debug, Default)]
struct Counters {
    connections_accepted: u64,
    refusals: HashMap<ErrorCode, u64>,
    commands_sent: u64,
    commands_refused: u64,
    frames_delivered: u64,
    stray_pongs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct KioskKey {
    room: RoomId,
    identity: Identity,
}

struct Kiosk {
    instance_id: u64,
    conn: Option<ConnId>,
    /// When it left (for expiry), `None` while connected.
    left_at: Option<Instant>,
    channels: HashMap<u32, ChannelState>,
}

struct ChannelState {
    decl: ChannelDecl,
    kind: ChannelKind,
    dedupe: SeqWindow,
    wave: WaveSeq,
    counters: ChannelCounters,
}

struct Conn {
    control: FrameDecoder,
    phase: Phase,
    unis: HashMap<StreamId, Uni>,
    rtt_hint_us: u64,
    created: Instant,
}

enum Phase {
    AwaitHello,
    Active(Box<Session>),
}

struct Session {
    key: KioskKey,
    /// Channels declared on this connection.
    declared: HashMap<u32, ChannelKind>,
    clock: ClockEstimator,
    pings: VecDeque<(u32, u64)>,
    next_ping_id: u32,
    pings_sent: u32,
    next_ping_at: Instant,
    acks_pending: BTreeSet<u32>,
    last_estimate: Option<Estimate>,
}

struct Uni {
    decoder: FrameDecoder,
    kind: UniKind,
}

enum UniKind {
    Unknown,
    Measurements,
    Blob {
        channel: u32,
        blob_id: u64,
        next_seq: u32,
        len: u64,
        done: bool,
    },
}

/// Outstanding pings kept per connection.
const MAX_PINGS: usize = 8;
/// Longest command name, parameter name or value.
const MAX_COMMAND_TEXT: usize = 64;
/// Most command parameters.
const MAX_COMMAND_PARAMS: usize = 16;

impl Core {
    /// A core verifying tokens with `verifier`; `now` and `unix_now_us` (the server's wall clock
    /// at `now`, µs since the Unix epoch) anchor the server clock.
    pub fn new(
        limits: Limits,
        verifier: Arc<dyn TokenVerifier>,
        now: Instant,
        unix_now_us: u64,
    ) -> Self {
        Core {
            limits,
            verifier,
            anchor: (now, unix_now_us),
            conns: HashMap::new(),
            kiosks: HashMap::new(),
            outputs: VecDeque::new(),
            counters: Counters::default(),
            next_command_id: 1,
            next_session: 1,
        }
    }

    /// The server clock at `now`, µs since the Unix epoch.
    pub fn server_time_us(&self, now: Instant) -> u64 {
        let (at, us) = self.anchor;
        if now >= at {
            us + (now - at).as_micros() as u64
        } else {
            us.saturating_sub((at - now).as_micros() as u64)
        }
    }

    /// A new QUIC connection finished its handshake; `rtt` is the handshake's round trip.
    pub fn handle_connected(&mut self, now: Instant, conn: ConnId, rtt: Duration) {
        self.counters.connections_accepted += 1;
        self.conns.insert(
            conn,
            Conn {
                control: FrameDecoder::new(),
                phase: Phase::AwaitHello,
                unis: HashMap::new(),
                rtt_hint_us: rtt.as_micros() as u64,
                created: now,
            },
        );
    }

    /// Bytes read from the connection's control stream.
    pub fn handle_control(&mut self, now: Instant, conn: ConnId, data: &[u8]) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if let Err(e) = c.control.push(data) {
            return self.close(now, conn, frame_refusal(&e));
        }
        loop {
            let Some(c) = self.conns.get_mut(&conn) else {
                return;
            };
            match c.control.next_frame::<ClientFrame>() {
                Ok(Some(frame)) => {
                    let bytes = frame.encoded_len();
                    if let Err(r) = self.on_control_frame(now, conn, frame, bytes) {
                        return self.close(now, conn, r);
                    }
                }
                Ok(None) => break,
                Err(e) => return self.close(now, conn, frame_refusal(&e)),
            }
        }
        self.flush_acks(conn);
    }

    /// The kiosk finished its control stream: the session is over.
    pub fn handle_control_end(&mut self, now: Instant, conn: ConnId) {
        self.close(
            now,
            conn,
            Refusal::new(ErrorCode::NoError, "control stream finished"),
        );
    }

    /// The shell refuses the connection for a reason the core cannot see (a stream transport's
    /// message that is not exactly one frame): closes it with `refusal`, counted.
    pub fn handle_refusal(&mut self, now: Instant, conn: ConnId, refusal: Refusal) {
        self.close(now, conn, refusal);
    }

    /// A second bidirectional stream (the protocol has one): counted; the shell resets it.
    pub fn refuse_stream(&mut self, code: ErrorCode) {
        self.count(code);
    }

    /// Bytes read from a unidirectional stream. `Err` means: stop this stream with the code
    /// (the connection lives on), unless the refusal also closed the connection (before the
    /// hello), in which case a [`Output::Close`] is queued too.
    pub fn handle_uni(
        &mut self,
        now: Instant,
        conn: ConnId,
        stream: StreamId,
        data: &[u8],
    ) -> Result<(), Refusal> {
        let Some(c) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        if matches!(c.phase, Phase::AwaitHello) {
            let r = Refusal::new(
                ErrorCode::Unauthenticated,
                "stream opened before the hello was accepted",
            );
            self.close(now, conn, r.clone());
            return Err(r);
        }
        let uni = c.unis.entry(stream).or_insert_with(|| Uni {
            decoder: FrameDecoder::new(),
            kind: UniKind::Unknown,
        });
        let result = uni.decoder.push(data).map_err(|e| frame_refusal(&e));
        let result = result.and_then(|()| loop {
            let Some(uni) = self
                .conns
                .get_mut(&conn)
                .and_then(|c| c.unis.get_mut(&stream))
            else {
                break Ok(());
            };
            match uni.decoder.next_frame::<ClientFrame>() {
                Ok(Some(frame)) => {
                    let bytes = frame.encoded_len();
                    if let Err(r) = self.on_uni_frame(now, conn, stream, frame, bytes) {
                        break Err(r);
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(frame_refusal(&e)),
            }
        });
        if let Err(r) = &result {
            self.count(r.code);
            if let Some(c) = self.conns.get_mut(&conn) {
                c.unis.remove(&stream);
            }
        }
        self.flush_acks(conn);
        result
    }

    /// A unidirectional stream ended (finished or reset by the kiosk).
    pub fn handle_uni_end(&mut self, _now: Instant, conn: ConnId, stream: StreamId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(uni) = c.unis.remove(&stream) else {
            return;
        };
        if uni.decoder.finish().is_err() {
            *self
                .counters
                .refusals
                .entry(ErrorCode::MalformedFrame)
                .or_default() += 1;
        }
        if let (
            Phase::Active(s),
            UniKind::Blob {
                channel,
                done: false,
                ..
            },
        ) = (&c.phase, &uni.kind)
        {
            if let Some(st) = state_of(&mut self.kiosks, &s.key, *channel) {
                st.counters.incomplete_blobs += 1;
            }
        }
    }

    /// A datagram arrived.
    pub fn handle_datagram(&mut self, now: Instant, conn: ConnId, data: &[u8]) {
        if let Err(r) = self.on_datagram(now, conn, data) {
            self.close(now, conn, r);
        }
    }

    /// The connection is gone (closed by either side, timed out, lost).
    pub fn handle_closed(&mut self, now: Instant, conn: ConnId, code: u64) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if let Phase::Active(s) = c.phase {
            self.kiosk_left(now, &s.key, conn, code);
        }
    }

    /// Time passed: hello timeouts, pings, expiry of gone kiosks.
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                matches!(c.phase, Phase::AwaitHello) && now >= c.created + self.limits.hello_timeout
            })
            .map(|(id, _)| *id)
            .collect();
        for conn in expired {
            self.close(
                now,
                conn,
                Refusal::new(ErrorCode::HelloTimeout, "no hello within the hello timeout"),
            );
        }
        let server_us = self.server_time_us(now);
        let mut sends = Vec::new();
        for (id, c) in &mut self.conns {
            let Phase::Active(s) = &mut c.phase else {
                continue;
            };
            if now < s.next_ping_at {
                continue;
            }
            let ping_id = s.next_ping_id;
            s.next_ping_id = s.next_ping_id.wrapping_add(1);
            if s.pings.len() == MAX_PINGS {
                s.pings.pop_front();
            }
            s.pings.push_back((ping_id, server_us));
            s.pings_sent += 1;
            s.next_ping_at = now
                + if s.pings_sent < self.limits.ping_burst {
                    self.limits.ping_burst_interval
                } else {
                    self.limits.ping_interval
                };
            sends.push((
                *id,
                server_frame::Body::Ping(Ping {
                    id: ping_id,
                    server_time_us: server_us,
                }),
            ));
        }
        for (conn, body) in sends {
            self.send(conn, body);
        }
        let ttl = self.limits.resume_ttl;
        self.kiosks
            .retain(|_, k| k.left_at.is_none_or(|t| now < t + ttl));
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let conns = self.conns.values().map(|c| match &c.phase {
            Phase::AwaitHello => c.created + self.limits.hello_timeout,
            Phase::Active(s) => s.next_ping_at,
        });
        let kiosks = self
            .kiosks
            .values()
            .filter_map(|k| k.left_at.map(|t| t + self.limits.resume_ttl));
        conns.chain(kiosks).min()
    }

    /// The next thing for the shell to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Sends a command from `sender` (a doctor, say) to a kiosk of `room`. Refused unless the
    /// sender's token is for the room and granted `commands`. Returns the command id the kiosk
    /// will echo in its `CommandResult`.
    pub fn send_command(
        &mut self,
        _now: Instant,
        room: &RoomId,
        sender: &Claims,
        request: CommandRequest,
    ) -> Result<u64, CommandError> {
        let result = self.route_command(room, sender, &request);
        let (conn, channel_id) = match result {
            Ok(target) => target,
            Err(e) => {
                self.counters.commands_refused += 1;
                return Err(e);
            }
        };
        let command_id = self.next_command_id;
        self.next_command_id += 1;
        self.counters.commands_sent += 1;
        self.send(
            conn,
            server_frame::Body::Command(Command {
                command_id,
                channel_id,
                name: request.name,
                params: request.params,
            }),
        );
        Ok(command_id)
    }

    /// Tells every connected kiosk of `room` that the room moves to the node at `url` (a
    /// `Move` on its control stream); returns how many were told.
    pub fn move_room(&mut self, _now: Instant, room: &RoomId, url: &str, reason: &str) -> usize {
        let conns: Vec<ConnId> = self
            .kiosks
            .iter()
            .filter(|(key, _)| &key.room == room)
            .filter_map(|(_, k)| k.conn)
            .collect();
        for conn in &conns {
            self.send(
                *conn,
                server_frame::Body::Move(Move {
                    url: url.to_owned(),
                    reason: reason.to_owned(),
                }),
            );
        }
        conns.len()
    }

    fn route_command(
        &self,
        room: &RoomId,
        sender: &Claims,
        request: &CommandRequest,
    ) -> Result<(ConnId, u32), CommandError> {
        if !sender.allows(Grant::Commands) {
            return Err(CommandError::NotAllowed { role: sender.role });
        }
        if !sender.is_for_room(room) {
            return Err(CommandError::WrongRoom);
        }
        if request.name.is_empty() || request.name.len() > MAX_COMMAND_TEXT {
            return Err(CommandError::Invalid(format!(
                "the name must be 1 to {MAX_COMMAND_TEXT} bytes"
            )));
        }
        if request.params.len() > MAX_COMMAND_PARAMS
            || request
                .params
                .iter()
                .any(|(k, v)| k.len() > MAX_COMMAND_TEXT || v.len() > MAX_COMMAND_TEXT)
        {
            return Err(CommandError::Invalid(format!(
                "at most {MAX_COMMAND_PARAMS} parameters of at most {MAX_COMMAND_TEXT} bytes"
            )));
        }
        let candidates: Vec<(&KioskKey, &Kiosk)> = self
            .kiosks
            .iter()
            .filter(|(key, k)| {
                &key.room == room
                    && k.conn.is_some()
                    && request.kiosk.as_ref().is_none_or(|id| *id == key.identity)
            })
            .collect();
        let (_, kiosk) = match candidates.as_slice() {
            [] => return Err(CommandError::NoKiosk),
            [one] => *one,
            many => return Err(CommandError::AmbiguousKiosk(many.len())),
        };
        let conn = kiosk.conn.ok_or(CommandError::NoKiosk)?;
        let declared = match self.conns.get(&conn).map(|c| &c.phase) {
            Some(Phase::Active(s)) => s.declared.contains_key(&request.channel_id),
            _ => false,
        };
        let channel = kiosk
            .channels
            .get(&request.channel_id)
            .filter(|_| declared)
            .ok_or(CommandError::UnknownChannel(request.channel_id))?;
        if !channel.decl.commands.is_empty() && !channel.decl.commands.contains(&request.name) {
            return Err(CommandError::UnknownCommand {
                channel: request.channel_id,
                name: request.name.clone(),
            });
        }
        Ok((conn, request.channel_id))
    }

    /// The channel declarations of the connected kiosks of `room`, as delivered frames: what a
    /// subscriber that just joined needs to interpret the channel ids.
    pub fn channels(&self, now: Instant, room: &RoomId) -> Vec<Delivered> {
        let server_time_us = self.server_time_us(now);
        let mut out: Vec<Delivered> = self
            .kiosks
            .iter()
            .filter(|(key, k)| &key.room == room && k.conn.is_some())
            .flat_map(|(key, k)| {
                k.channels.values().map(move |ch| Delivered {
                    source: key.identity.to_string(),
                    channel_id: ch.decl.channel_id,
                    server_time_us,
                    frame: Some(delivered::Frame::Channel(ch.decl.clone())),
                    ..Default::default()
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.source, a.channel_id).cmp(&(&b.source, b.channel_id)));
        out
    }

    /// Statistics now.
    pub fn stats(&self) -> SidecarStats {
        let mut channels = Vec::new();
        for (key, k) in &self.kiosks {
            let clock_error_us =
                k.conn
                    .and_then(|c| self.conns.get(&c))
                    .and_then(|c| match &c.phase {
                        Phase::Active(s) => s.clock.estimate().map(|e| e.error_us),
                        Phase::AwaitHello => None,
                    });
            for ch in k.channels.values() {
                let mut st = ChannelStats {
                    room: key.room.to_string(),
                    kiosk: Redacted(&key.identity).to_string(),
                    channel_id: ch.decl.channel_id,
                    kind: kind_name(ch.kind),
                    connected: k.conn.is_some(),
                    clock_error_us,
                    ..Default::default()
                };
                ch.counters.snapshot(&mut st);
                channels.push(st);
            }
        }
        channels.sort_by(|a, b| {
            (&a.room, &a.kiosk, a.channel_id).cmp(&(&b.room, &b.kiosk, b.channel_id))
        });
        SidecarStats {
            connections_accepted: self.counters.connections_accepted,
            connections_open: self.conns.len(),
            kiosks_connected: self.kiosks.values().filter(|k| k.conn.is_some()).count(),
            kiosks_remembered: self.kiosks.len(),
            refusals: self
                .counters
                .refusals
                .iter()
                .map(|(c, n)| (c.name(), *n))
                .collect(),
            commands_sent: self.counters.commands_sent,
            commands_refused: self.counters.commands_refused,
            frames_delivered: self.counters.frames_delivered,
            stray_pongs: self.counters.stray_pongs,
            stream_connections: 0,
            outbound_dropped: 0,
            channels,
        }
    }

    /// The clock estimate of the kiosk on `conn`, if authenticated.
    pub fn clock_estimate(&self, conn: ConnId) -> Option<Estimate> {
        match &self.conns.get(&conn)?.phase {
            Phase::Active(s) => s.clock.estimate(),
            Phase::AwaitHello => None,
        }
    }

    /// Whether `conn` passed its hello.
    pub fn is_authenticated(&self, conn: ConnId) -> bool {
        matches!(
            self.conns.get(&conn).map(|c| &c.phase),
            Some(Phase::Active(_))
        )
    }

    /// Counts a refusal decided by the shell (e.g. a connection over the limit).
    pub fn count(&mut self, code: ErrorCode) {
        *self.counters.refusals.entry(code).or_default() += 1;
    }

    // ---- helpers ----

    fn close(&mut self, now: Instant, conn: ConnId, r: Refusal) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if r.code != ErrorCode::NoError {
            self.count(r.code);
        }
        if let Phase::Active(s) = c.phase {
            self.kiosk_left(now, &s.key, conn, r.code.code());
        }
        self.outputs.push_back(Output::Close {
            conn,
            code: r.code,
            reason: r.reason,
        });
    }

    fn kiosk_left(&mut self, now: Instant, key: &KioskKey, conn: ConnId, code: u64) {
        let Some(k) = self.kiosks.get_mut(key) else {
            return;
        };
        if k.conn == Some(conn) {
            k.conn = None;
            k.left_at = Some(now);
            self.deliver_left(key, code);
        }
    }

    fn deliver_left(&mut self, key: &KioskKey, code: u64) {
        self.outputs.push_back(Output::Deliver {
            room: key.room.clone(),
            delivered: Delivered {
                source: key.identity.to_string(),
                frame: Some(delivered::Frame::Left(SourceLeft {
                    code: u32::try_from(code).unwrap_or(u32::MAX),
                })),
                ..Default::default()
            },
            reliable: true,
        });
    }

    fn send(&mut self, conn: ConnId, body: server_frame::Body) {
        self.outputs.push_back(Output::Send {
            conn,
            frame: ServerFrame { body: Some(body) },
        });
    }

    fn session_mut(&mut self, conn: ConnId) -> Option<&mut Session> {
        match &mut self.conns.get_mut(&conn)?.phase {
            Phase::Active(s) => Some(s),
            Phase::AwaitHello => None,
        }
    }

    fn flush_acks(&mut self, conn: ConnId) {
        let Some(s) = self.session_mut(conn) else {
            return;
        };
        if s.acks_pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut s.acks_pending);
        let key = s.key.clone();
        let Some(k) = self.kiosks.get(&key) else {
            return;
        };
        let acks: Vec<Ack> = pending
            .into_iter()
            .filter_map(|id| {
                k.channels.get(&id).map(|ch| Ack {
                    channel_id: id,
                    up_to_seq: ch.dedupe.contiguous(),
                })
            })
            .collect();
        for ack in acks {
            self.send(conn, server_frame::Body::Ack(ack));
        }
    }

    fn on_control_frame(
        &mut self,
        now: Instant,
        conn: ConnId,
        frame: ClientFrame,
        bytes: usize,
    ) -> Result<(), Refusal> {
        use client_frame::Body;
        let authenticated = self.is_authenticated(conn);
        match frame.body {
            Some(Body::Hello(hello)) if !authenticated => self.on_hello(now, conn, hello),
            _ if !authenticated => Err(Refusal::new(
                ErrorCode::Unauthenticated,
                "the first control frame must be a ClientHello",
            )),
            Some(Body::Hello(_)) => Err(Refusal::new(
                ErrorCode::UnexpectedFrame,
                "second ClientHello on the control stream",
            )),
            Some(Body::Declare(decl)) => self.on_declare(now, conn, decl),
            Some(Body::Status(status)) => {
                status.check().map_err(malformed)?;
                let (channel, t) = (status.channel_id, status.kiosk_time_us);
                self.deliver(
                    now,
                    conn,
                    channel,
                    None,
                    t,
                    bytes,
                    true,
                    delivered::Frame::Status(status),
                )
            }
            Some(Body::CommandResult(result)) => {
                result.check().map_err(malformed)?;
                let (channel, t) = (result.channel_id, result.kiosk_time_us);
                self.deliver(
                    now,
                    conn,
                    channel,
                    None,
                    t,
                    bytes,
                    true,
                    delivered::Frame::CommandResult(result),
                )
            }
            Some(Body::Pong(pong)) => {
                self.on_pong(now, conn, pong.id, pong.kiosk_time_us);
                Ok(())
            }
            Some(Body::Measurement(_) | Body::Waveform(_) | Body::Blob(_)) => Err(Refusal::new(
                ErrorCode::UnexpectedFrame,
                "measurements, waveforms and blobs do not go on the control stream",
            )),
            None => Err(Refusal::new(ErrorCode::MalformedFrame, "empty frame")),
        }
    }

    fn on_hello(&mut self, now: Instant, conn: ConnId, hello: ClientHello) -> Result<(), Refusal> {
        if hello.version != PROTOCOL_VERSION {
            return Err(Refusal::new(
                ErrorCode::UnsupportedVersion,
                format!(
                    "protocol version {} is not supported, this server speaks {PROTOCOL_VERSION}",
                    hello.version
                ),
            ));
        }
        let room = RoomId::parse(&hello.room)
            .map_err(|e| Refusal::new(ErrorCode::WrongRoom, e.to_string()))?;
        let claims = self
            .verifier
            .verify(&hello.token)
            .map_err(|e| Refusal::new(ErrorCode::BadToken, e.to_string()))?;
        authorize_kiosk(&claims, &room)?;
        let key = KioskKey {
            room,
            identity: claims.sub,
        };
        if !self.kiosks.contains_key(&key) && self.kiosks.len() >= self.limits.max_kiosks {
            self.evict_oldest_gone();
            if self.kiosks.len() >= self.limits.max_kiosks {
                return Err(Refusal::new(ErrorCode::ServerBusy, "too many kiosks"));
            }
        }
        let kiosk = self.kiosks.entry(key.clone()).or_insert_with(|| Kiosk {
            instance_id: hello.instance_id,
            conn: None,
            left_at: None,
            channels: HashMap::new(),
        });
        if kiosk.instance_id != hello.instance_id {
            // A new kiosk process: a new sequence space.
            kiosk.instance_id = hello.instance_id;
            kiosk.channels.clear();
        }
        let previous = kiosk.conn.replace(conn);
        kiosk.left_at = None;
        if let Some(old) = previous.filter(|old| *old != conn) {
            // The kiosk now points at the new connection, so the old one goes silently.
            if self.conns.remove(&old).is_some() {
                self.count(ErrorCode::Superseded);
                self.outputs.push_back(Output::Close {
                    conn: old,
                    code: ErrorCode::Superseded,
                    reason: "the kiosk connected again".into(),
                });
            }
        }
        let server_us = self.server_time_us(now);
        let rtt_hint_us = self.conns.get(&conn).map_or(0, |c| c.rtt_hint_us);
        let mut clock = ClockEstimator::new(self.limits.clock_window);
        clock.add_coarse(hello.kiosk_clock_us, server_us, rtt_hint_us);
        let session_id = format!("{:016x}", self.next_session);
        self.next_session += 1;
        if let Some(c) = self.conns.get_mut(&conn) {
            c.phase = Phase::Active(Box::new(Session {
                key,
                declared: HashMap::new(),
                clock,
                pings: VecDeque::new(),
                next_ping_id: 1,
                pings_sent: 0,
                next_ping_at: now,
                acks_pending: BTreeSet::new(),
                last_estimate: None,
            }));
        }
        self.send(
            conn,
            server_frame::Body::Hello(ServerHello {
                version: PROTOCOL_VERSION,
                session_id,
                server_time_us: server_us,
                max_frame_len: MAX_FRAME_LEN as u32,
                max_datagram_len: MAX_DATAGRAM_LEN as u32,
                max_channels: self.limits.max_channels as u32,
                accepted_kinds: vec![
                    ChannelKind::Measurement as i32,
                    ChannelKind::Waveform as i32,
                    ChannelKind::Status as i32,
                    ChannelKind::Command as i32,
                    ChannelKind::Blob as i32,
                ],
            }),
        );
        // First ping right away.
        self.handle_timeout(now);
        Ok(())
    }

    fn evict_oldest_gone(&mut self) {
        let oldest = self
            .kiosks
            .iter()
            .filter_map(|(key, k)| k.left_at.map(|t| (t, key.clone())))
            .min_by_key(|(t, _)| *t);
        if let Some((_, key)) = oldest {
            self.kiosks.remove(&key);
        }
    }

    fn on_declare(&mut self, now: Instant, conn: ConnId, decl: ChannelDecl) -> Result<(), Refusal> {
        decl.check()
            .map_err(|e| Refusal::new(ErrorCode::BadChannel, e.to_string()))?;
        let kind = ChannelKind::try_from(decl.kind)
            .map_err(|_| Refusal::new(ErrorCode::BadChannel, "unknown channel kind"))?;
        let max_channels = self.limits.max_channels;
        let (dedupe_window, latency_window) =
            (self.limits.dedupe_window, self.limits.latency_window);
        let Some(s) = self.session_mut(conn) else {
            return Ok(());
        };
        if !s.declared.contains_key(&decl.channel_id) && s.declared.len() >= max_channels {
            return Err(Refusal::new(
                ErrorCode::TooManyChannels,
                format!("more than {max_channels} channels"),
            ));
        }
        s.declared.insert(decl.channel_id, kind);
        let key = s.key.clone();
        let channel_id = decl.channel_id;
        let Some(k) = self.kiosks.get_mut(&key) else {
            return Ok(());
        };
        if k.channels.len() >= max_channels && !k.channels.contains_key(&channel_id) {
            // Channels of an earlier connection not declared again: drop those.
            let declared: Vec<u32> = match &self.conns.get(&conn).map(|c| &c.phase) {
                Some(Phase::Active(s)) => s.declared.keys().copied().collect(),
                _ => Vec::new(),
            };
            k.channels.retain(|id, _| declared.contains(id));
        }
        let state = k
            .channels
            .entry(channel_id)
            .or_insert_with(|| ChannelState {
                decl: decl.clone(),
                kind,
                dedupe: SeqWindow::new(dedupe_window),
                wave: WaveSeq::default(),
                counters: ChannelCounters::new(latency_window),
            });
        if state.kind != kind {
            // Same id, another kind: a different channel.
            *state = ChannelState {
                decl: decl.clone(),
                kind,
                dedupe: SeqWindow::new(dedupe_window),
                wave: WaveSeq::default(),
                counters: ChannelCounters::new(latency_window),
            };
        }
        state.decl = decl.clone();
        let up_to_seq = state.dedupe.contiguous();
        self.send(
            conn,
            server_frame::Body::Ack(Ack {
                channel_id,
                up_to_seq,
            }),
        );
        let server_time_us = self.server_time_us(now);
        self.counters.frames_delivered += 1;
        self.outputs.push_back(Output::Deliver {
            room: key.room.clone(),
            delivered: Delivered {
                source: key.identity.to_string(),
                channel_id,
                server_time_us,
                frame: Some(delivered::Frame::Channel(decl)),
                ..Default::default()
            },
            reliable: true,
        });
        Ok(())
    }

    fn on_pong(&mut self, now: Instant, conn: ConnId, id: u32, kiosk_us: u64) {
        let recv_us = self.server_time_us(now);
        let Some(s) = self.session_mut(conn) else {
            return;
        };
        let Some(pos) = s.pings.iter().position(|(pid, _)| *pid == id) else {
            self.counters.stray_pongs += 1;
            return;
        };
        let (_, sent_us) = s.pings[pos];
        s.pings.drain(..=pos);
        s.clock.add_sample(now, sent_us, kiosk_us, recv_us);
        let estimate = s.clock.estimate();
        if estimate != s.last_estimate {
            s.last_estimate = estimate;
            if let Some(e) = estimate {
                self.send(
                    conn,
                    server_frame::Body::Clock(ClockEstimate {
                        offset_us: e.offset_us,
                        error_us: e.error_us,
                        rtt_us: e.rtt_us,
                    }),
                );
            }
        }
    }

    fn on_uni_frame(
        &mut self,
        now: Instant,
        conn: ConnId,
        stream: StreamId,
        frame: ClientFrame,
        bytes: usize,
    ) -> Result<(), Refusal> {
        use client_frame::Body;
        let max_blob_len = self.limits.max_blob_len;
        let Some(c) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        let Phase::Active(s) = &mut c.phase else {
            return Ok(());
        };
        let Some(uni) = c.unis.get_mut(&stream) else {
            return Ok(());
        };
        match frame.body {
            Some(Body::Measurement(m)) => {
                match uni.kind {
                    UniKind::Unknown => uni.kind = UniKind::Measurements,
                    UniKind::Measurements => {}
                    UniKind::Blob { .. } => {
                        return Err(Refusal::new(
                            ErrorCode::UnexpectedFrame,
                            "measurement on a blob stream",
                        ))
                    }
                }
                expect_kind(s, m.channel_id, ChannelKind::Measurement)?;
                m.check().map_err(malformed)?;
                let key = s.key.clone();
                let channel = m.channel_id;
                let state = self
                    .kiosks
                    .get_mut(&key)
                    .and_then(|k| k.channels.get_mut(&channel));
                let Some(state) = state else {
                    return Ok(());
                };
                let before = state.dedupe.skipped();
                let insert = state.dedupe.insert(m.seq);
                state.counters.gaps += state.dedupe.skipped() - before;
                if let Some(s) = self.session_mut(conn) {
                    s.acks_pending.insert(channel);
                }
                match insert {
                    Insert::Duplicate => {
                        if let Some(st) = state_of(&mut self.kiosks, &key, channel) {
                            st.counters.duplicates += 1;
                        }
                        Ok(())
                    }
                    Insert::New => {
                        let t = m.capture_time_us;
                        self.deliver(
                            now,
                            conn,
                            channel,
                            Some(ChannelKind::Measurement),
                            t,
                            bytes,
                            true,
                            delivered::Frame::Measurement(m),
                        )
                    }
                }
            }
            Some(Body::Blob(b)) => {
                match &mut uni.kind {
                    UniKind::Unknown if b.seq == 0 => {
                        uni.kind = UniKind::Blob {
                            channel: b.channel_id,
                            blob_id: b.blob_id,
                            next_seq: 0,
                            len: 0,
                            done: false,
                        }
                    }
                    UniKind::Unknown => {
                        return Err(Refusal::new(
                            ErrorCode::BlobTooLarge,
                            format!("blob stream starts at chunk {}, expected 0", b.seq),
                        ))
                    }
                    UniKind::Measurements => {
                        return Err(Refusal::new(
                            ErrorCode::UnexpectedFrame,
                            "blob chunk on a measurement stream",
                        ))
                    }
                    UniKind::Blob { .. } => {}
                }
                let UniKind::Blob {
                    channel,
                    blob_id,
                    next_seq,
                    len,
                    done,
                } = &mut uni.kind
                else {
                    return Ok(());
                };
                if *done || b.blob_id != *blob_id || b.seq != *next_seq || b.channel_id != *channel
                {
                    return Err(Refusal::new(
                        ErrorCode::UnexpectedFrame,
                        format!(
                            "blob chunk {} of blob {} where chunk {} of blob {} was expected",
                            b.seq, b.blob_id, next_seq, blob_id
                        ),
                    ));
                }
                b.check().map_err(malformed)?;
                *len += b.data.len() as u64;
                if *len > max_blob_len {
                    return Err(Refusal::new(
                        ErrorCode::BlobTooLarge,
                        format!("blob above {max_blob_len} bytes"),
                    ));
                }
                *next_seq += 1;
                *done = b.last;
                expect_kind(s, b.channel_id, ChannelKind::Blob)?;
                let (channel, t) = (b.channel_id, b.capture_time_us);
                self.deliver(
                    now,
                    conn,
                    channel,
                    Some(ChannelKind::Blob),
                    t,
                    bytes,
                    true,
                    delivered::Frame::Blob(b),
                )
            }
            Some(_) => Err(Refusal::new(
                ErrorCode::UnexpectedFrame,
                "only measurements and blob chunks go on unidirectional streams",
            )),
            None => Err(Refusal::new(ErrorCode::MalformedFrame, "empty frame")),
        }
    }

    fn on_datagram(&mut self, now: Instant, conn: ConnId, data: &[u8]) -> Result<(), Refusal> {
        let Some(c) = self.conns.get(&conn) else {
            return Ok(());
        };
        let Phase::Active(s) = &c.phase else {
            return Err(Refusal::new(
                ErrorCode::Unauthenticated,
                "datagram before the hello was accepted",
            ));
        };
        if data.len() > MAX_DATAGRAM_LEN {
            return Err(Refusal::new(
                ErrorCode::DatagramTooLarge,
                format!(
                    "datagram of {} bytes, the limit is {MAX_DATAGRAM_LEN}",
                    data.len()
                ),
            ));
        }
        let frame = cabine_proto::telemetry::decode_datagram::<ClientFrame>(data)
            .map_err(|e| frame_refusal(&e))?;
        let Some(client_frame::Body::Waveform(w)) = frame.body else {
            return Err(Refusal::new(
                ErrorCode::UnexpectedFrame,
                "only waveform chunks go in datagrams",
            ));
        };
        expect_kind(s, w.channel_id, ChannelKind::Waveform)?;
        w.check().map_err(malformed)?;
        let key = s.key.clone();
        let Some(state) = state_of(&mut self.kiosks, &key, w.channel_id) else {
            return Ok(());
        };
        match state.wave.accept(w.seq) {
            Wave::Late => {
                state.counters.late += 1;
                Ok(())
            }
            Wave::Deliver { gap } => {
                state.counters.gaps += gap;
                let (channel, t) = (w.channel_id, w.first_sample_time_us);
                let before = self.outputs.len();
                self.deliver(
                    now,
                    conn,
                    channel,
                    Some(ChannelKind::Waveform),
                    t,
                    data.len(),
                    false,
                    delivered::Frame::Waveform(w),
                )?;
                // The chunk's delivery is the output just queued: mark the gap before it.
                if self.outputs.len() > before {
                    if let Some(Output::Deliver { delivered, .. }) = self.outputs.back_mut() {
                        delivered.gap = gap;
                    }
                }
                Ok(())
            }
        }
    }

    /// Delivers a frame of `channel` (which must be declared on this connection, of `kind` if
    /// given) captured at kiosk time `capture_us` (0: unknown).
    #[allow(clippy::too_many_arguments)]
    fn deliver(
        &mut self,
        now: Instant,
        conn: ConnId,
        channel: u32,
        kind: Option<ChannelKind>,
        capture_us: u64,
        bytes: usize,
        reliable: bool,
        frame: delivered::Frame,
    ) -> Result<(), Refusal> {
        let server_time_us = self.server_time_us(now);
        let Some(s) = self.session_mut(conn) else {
            return Ok(());
        };
        match (s.declared.get(&channel), kind) {
            (None, _) => {
                return Err(Refusal::new(
                    ErrorCode::UnknownChannel,
                    format!("channel {channel} is not declared"),
                ))
            }
            (Some(k), Some(want)) if *k != want => {
                return Err(Refusal::new(
                    ErrorCode::UnknownChannel,
                    format!("channel {channel} is not a {} channel", kind_name(want)),
                ))
            }
            _ => {}
        }
        let (aligned_time_us, clock_error_us, aligned) = if capture_us == 0 {
            (server_time_us, 0, None)
        } else {
            let (a, e) = s.clock.to_server(capture_us);
            (a, e, Some(a))
        };
        let key = s.key.clone();
        if let Some(state) = state_of(&mut self.kiosks, &key, channel) {
            state.counters.delivered(bytes, aligned, server_time_us);
        }
        let epoch = self
            .kiosks
            .get(&key)
            .map_or(String::new(), |k| format!("{:016x}", k.instance_id));
        self.counters.frames_delivered += 1;
        self.outputs.push_back(Output::Deliver {
            room: key.room.clone(),
            delivered: Delivered {
                source: key.identity.to_string(),
                channel_id: channel,
                capture_time_us: capture_us,
                aligned_time_us,
                clock_error_us,
                server_time_us,
                epoch,
                gap: 0,
                frame: Some(frame),
            },
            reliable,
        });
        Ok(())
    }
}

fn state_of<'a>(
    kiosks: &'a mut HashMap<KioskKey, Kiosk>,
    key: &KioskKey,
    channel: u32,
) -> Option<&'a mut ChannelState> {
    kiosks.get_mut(key)?.channels.get_mut(&channel)
}

fn expect_kind(s: &Session, channel: u32, want: ChannelKind) -> Result<(), Refusal> {
    match s.declared.get(&channel) {
        Some(k) if *k == want => Ok(()),
        Some(_) => Err(Refusal::new(
            ErrorCode::UnknownChannel,
            format!("channel {channel} is not a {} channel", kind_name(want)),
        )),
        None => Err(Refusal::new(
            ErrorCode::UnknownChannel,
            format!("channel {channel} is not declared"),
        )),
    }
}

fn kind_name(kind: ChannelKind) -> String {
    let full = kind.as_str_name();
    full.strip_prefix("CHANNEL_KIND_")
        .unwrap_or(full)
        .to_ascii_lowercase()
}

fn malformed(e: cabine_proto::telemetry::InvalidFrame) -> Refusal {
    Refusal::new(ErrorCode::MalformedFrame, e.to_string())
}

fn frame_refusal(e: &FrameError) -> Refusal {
    match e {
        FrameError::TooLarge { .. } => Refusal::new(ErrorCode::FrameTooLarge, e.to_string()),
        _ => Refusal::new(ErrorCode::MalformedFrame, e.to_string()),
    }
}
