//! The kiosk side of the telemetry protocol as a sans-IO state machine: channel declarations
//! and their readiness, the measurement outbox (kept until acknowledged, resent after a
//! reconnection), sequence numbers, the bounded control queue, pongs and clock estimates,
//! command intake, and the reconnection decisions ([`super::reconnect`]). No sockets, no tasks,
//! no clock: the shell ([`super::Client`]) feeds it and drains it.
//!
//! The shell's drive loop:
//!
//! ```text
//! loop {
//!     match core.poll_action() {                        // what to do between sessions
//!         Some(Action::Dial(d)) => {
//!             connect(d); write(core.hello(kiosk_now_us));
//!             core.handle_established(now, session_id);
//!             loop {                                    // the session: one input…
//!                 core.handle_frame(kiosk_now_us, frame);
//!                 while let Some(t) = core.poll_transmit() { write(t) }   // …drain writes
//!                 while let Some(e) = core.poll_event() { apply(e) }      // …and events
//!             }
//!             core.handle_session_end(now, end);
//!         }
//!         Some(Action::Rediscover) => core.handle_discovered(now, ask().await),
//!         None => match core.poll_timeout() {
//!             Some(at) => { sleep_until(at); core.handle_timeout(Instant::now()) }
//!             None => break,                            // stopped
//!         },
//!     }
//! }
//! ```

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Instant;

use cabine_proto::telemetry::{
    client_frame, server_frame, ChannelDecl, ChannelKind, ClientFrame, ClientHello, ClockEstimate,
    Command, Measurement, Pong, ServerFrame, WaveformChunk, PROTOCOL_VERSION,
};

use super::outbox::Outbox;
use super::reconnect::{Action, Reconnect, SessionEnd, Stopped};
use super::{ClientConfig, ClientError, ClientStats, ConnectionState, Target};

/// Frames waiting for the control stream (status, command results, declarations).
pub const CONTROL_QUEUE: usize = 256;

/// A write for the session's transport.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Transmit {
    /// A frame for the control stream (QUIC's bidirectional stream).
    Control(ClientFrame),
    /// A measurement (QUIC: on the measurement stream), sent for the first time or again.
    Measurement(Measurement),
}

/// Something for the application or the shell's watchers.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A command from the server for the application.
    Command(Command),
    /// The server moves the room to the node at `url` (it drains).
    Move {
        /// The new node's base URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The connection state changed.
    State(ConnectionState),
}

/// The kiosk client's protocol state.
#[derive(Debug)]
pub struct ClientCore {
    token: String,
    room: String,
    software: String,
    instance_id: u64,
    reconnect: Reconnect,
    outbox: Outbox,
    channels: BTreeMap<u32, ChannelDecl>,
    /// Written first, before the control queue: the pong of a ping (a good clock sample).
    urgent: VecDeque<ClientFrame>,
    control: VecDeque<ClientFrame>,
    wave_seq: HashMap<u32, u64>,
    connected: bool,
    ready: HashSet<u32>,
    clock: Option<ClockEstimate>,
    stats: ClientStats,
    next_blob_id: u64,
    events: VecDeque<Event>,
    /// The final state was queued.
    stop_reported: bool,
}

impl ClientCore {
    /// The core for `config`, the kiosk process being `instance_id`; its first action is to
    /// dial the configured server.
    pub fn new(config: &ClientConfig, instance_id: u64) -> Self {
        let target = Target::new(
            config.server,
            config.server_name.clone(),
            config.verification.clone(),
            config.stream.clone(),
        );
        ClientCore {
            token: config.token.clone(),
            room: config.room.to_string(),
            software: config.software.clone(),
            instance_id,
            reconnect: Reconnect::new(target, config.reconnect_min, config.reconnect_max),
            outbox: Outbox::new(config.max_unacked),
            channels: BTreeMap::new(),
            urgent: VecDeque::new(),
            control: VecDeque::new(),
            wave_seq: HashMap::new(),
            connected: false,
            ready: HashSet::new(),
            clock: None,
            stats: ClientStats::default(),
            next_blob_id: 1,
            events: VecDeque::new(),
            stop_reported: false,
        }
    }

    // --- Between sessions: the reconnection state machine. ---

    /// The next thing to do between sessions (dial, or ask where to), once.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.reconnect.poll_action()
    }

    /// When to call [`ClientCore::handle_timeout`] (while backing off).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.reconnect.poll_timeout()
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.reconnect.handle_timeout(now);
        self.after_reconnect_input();
    }

    /// The session (or attempt) from the last [`Action::Dial`] ended.
    pub fn handle_session_end(&mut self, now: Instant, end: SessionEnd) {
        self.connected = false;
        self.ready.clear();
        if self.reconnect.handle_session_end(now, end) && self.reconnect.stopped().is_none() {
            self.events
                .push_back(Event::State(ConnectionState::Connecting));
        }
        self.after_reconnect_input();
    }

    /// The answer to [`Action::Rediscover`] (`None`: none could be had).
    pub fn handle_discovered(&mut self, now: Instant, found: Option<Target>) {
        self.reconnect.handle_discovered(now, found);
        self.stats.rediscovered = self.reconnect.rediscovered();
        self.after_reconnect_input();
    }

    /// After a `Move`: the next loss asks where to dial first.
    pub fn retarget(&mut self) {
        self.reconnect.retarget();
    }

    /// Stop reconnecting; a session in progress is the shell's to close.
    pub fn close(&mut self) {
        self.reconnect.close();
        self.after_reconnect_input();
    }

    /// Whether [`ClientCore::close`] was called.
    pub fn closing(&self) -> bool {
        self.reconnect.closing()
    }

    /// Whether the client stopped for good (closed or refused).
    pub fn stopped(&self) -> bool {
        self.reconnect.stopped().is_some()
    }

    /// Where the client dials now.
    pub fn target(&self) -> &Target {
        self.reconnect.target()
    }

    // --- A session. ---

    /// The hello that opens a session, stamped `kiosk_now_us`.
    pub fn hello(&self, kiosk_now_us: u64) -> ClientFrame {
        body(client_frame::Body::Hello(ClientHello {
            version: PROTOCOL_VERSION,
            token: self.token.clone(),
            room: self.room.clone(),
            kiosk_clock_us: kiosk_now_us,
            instance_id: self.instance_id,
            software: self.software.clone(),
        }))
    }

    /// The server answered the hello: the channels are declared again and what is
    /// unacknowledged is resent once each is acknowledged.
    pub fn handle_established(&mut self, _now: Instant, session_id: String) {
        self.connected = true;
        self.ready.clear();
        self.outbox.reconnected();
        self.stats.sessions += 1;
        self.control.clear();
        self.urgent.clear();
        let decls: Vec<ChannelDecl> = self.channels.values().cloned().collect();
        for d in decls {
            self.push_control(body(client_frame::Body::Declare(d)));
        }
        self.events
            .push_back(Event::State(ConnectionState::Connected { session_id }));
    }

    /// A frame from the server, received when the kiosk clock read `kiosk_now_us`.
    pub fn handle_frame(&mut self, kiosk_now_us: u64, frame: ServerFrame) {
        match frame.body {
            Some(server_frame::Body::Ping(p)) => {
                self.stats.pings_answered += 1;
                self.urgent.push_back(body(client_frame::Body::Pong(Pong {
                    id: p.id,
                    server_time_us: p.server_time_us,
                    kiosk_time_us: kiosk_now_us,
                })));
            }
            Some(server_frame::Body::Ack(a)) => {
                self.outbox.ack(a.channel_id, a.up_to_seq);
                self.ready.insert(a.channel_id);
            }
            Some(server_frame::Body::Command(c)) => {
                self.stats.commands_received += 1;
                self.events.push_back(Event::Command(c));
            }
            Some(server_frame::Body::Clock(c)) => self.clock = Some(c),
            Some(server_frame::Body::Move(m)) => self.events.push_back(Event::Move {
                url: m.url,
                reason: m.reason,
            }),
            Some(server_frame::Body::Hello(_)) | None => {}
        }
    }

    /// The kiosk dropped the link itself (the session ends; nothing is ready any more).
    pub fn handle_link_dropped(&mut self) {
        self.connected = false;
        self.ready.clear();
    }

    /// The next write: pongs, then control frames, then measurements of acknowledged channels.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if !self.connected {
            return None;
        }
        if let Some(f) = self.urgent.pop_front() {
            return Some(Transmit::Control(f));
        }
        if let Some(f) = self.control.pop_front() {
            return Some(Transmit::Control(f));
        }
        let ready = &self.ready;
        self.outbox
            .next_to_send(|c| ready.contains(&c))
            .map(Transmit::Measurement)
    }

    /// The next event for the application or the watchers.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // --- What the application does. ---

    /// Declares (or re-declares) a channel; it is declared again on every session.
    pub fn declare(&mut self, decl: ChannelDecl) -> Result<(), ClientError> {
        decl.check()?;
        self.channels.insert(decl.channel_id, decl.clone());
        self.ready.remove(&decl.channel_id);
        if self.connected {
            self.push_control(body(client_frame::Body::Declare(decl)));
        }
        Ok(())
    }

    /// Queues a measurement until acknowledged; a `seq` of 0 gets the channel's next one,
    /// which is returned.
    pub fn push_measurement(&mut self, m: Measurement) -> Result<u64, ClientError> {
        self.check_kind(m.channel_id, ChannelKind::Measurement)?;
        let mut probe = m.clone();
        if probe.seq == 0 {
            probe.seq = 1;
        }
        probe.check()?;
        Ok(self.outbox.push(m))
    }

    /// Numbers a waveform chunk (a `seq` of 0 gets the channel's next one) and checks it; the
    /// shell sends it if [`ClientCore::is_ready`], and reports with
    /// [`ClientCore::count_waveform`].
    pub fn prepare_waveform(
        &mut self,
        mut chunk: WaveformChunk,
    ) -> Result<WaveformChunk, ClientError> {
        self.check_kind(chunk.channel_id, ChannelKind::Waveform)?;
        let next = self.wave_seq.entry(chunk.channel_id).or_insert(0);
        if chunk.seq == 0 {
            *next += 1;
            chunk.seq = *next;
        } else {
            *next = (*next).max(chunk.seq);
        }
        chunk.check()?;
        Ok(chunk)
    }

    /// Queues a control frame (a status, a command result); refused and counted while no
    /// session is up. A full queue drops its oldest frame.
    pub fn send_control(&mut self, frame: ClientFrame) -> Result<(), ClientError> {
        if !self.connected {
            self.stats.control_dropped += 1;
            return Err(ClientError::NotConnected);
        }
        self.push_control(frame);
        Ok(())
    }

    /// A blob id for an upload on `channel`, if it is a blob channel ready on this session.
    pub fn start_blob(&mut self, channel: u32) -> Result<u64, ClientError> {
        self.check_kind(channel, ChannelKind::Blob)?;
        if !self.is_ready(channel) {
            return Err(ClientError::NotConnected);
        }
        let id = self.next_blob_id;
        self.next_blob_id += 1;
        Ok(id)
    }

    /// Whether a session is up.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Whether the server acknowledged `channel`'s declaration on this session.
    pub fn is_ready(&self, channel: u32) -> bool {
        self.connected && self.ready.contains(&channel)
    }

    /// Counts a waveform chunk sent, or dropped.
    pub fn count_waveform(&mut self, sent: bool) {
        if sent {
            self.stats.waveforms_sent += 1;
        } else {
            self.stats.waveforms_dropped += 1;
        }
    }

    /// Counts a command nobody read.
    pub fn count_command_dropped(&mut self) {
        self.stats.commands_dropped += 1;
    }

    /// Counts a measurement stream the server stopped.
    pub fn count_stream_stopped(&mut self) {
        self.stats.streams_stopped += 1;
    }

    /// Measurements not acknowledged yet.
    pub fn unacked(&self) -> usize {
        self.outbox.unacked()
    }

    /// The server's latest clock estimate for this kiosk.
    pub fn clock_estimate(&self) -> Option<ClockEstimate> {
        self.clock
    }

    /// The counters.
    pub fn stats(&self) -> ClientStats {
        let mut stats = self.stats.clone();
        let o = self.outbox.counters();
        stats.measurements_sent = o.sent;
        stats.measurements_resent = o.resent;
        stats.measurements_acked = o.acked;
        stats.measurements_dropped = o.dropped;
        stats.measurements_unacked = self.outbox.unacked() as u64;
        stats
    }

    fn after_reconnect_input(&mut self) {
        if self.stop_reported {
            return;
        }
        if let Some(why) = self.reconnect.stopped() {
            self.stop_reported = true;
            let state = match why {
                Stopped::Refused { code, reason } => ConnectionState::Failed {
                    code: *code,
                    reason: reason.clone(),
                },
                _ => ConnectionState::Closed,
            };
            self.events.push_back(Event::State(state));
        }
    }

    fn push_control(&mut self, frame: ClientFrame) {
        if self.control.len() >= CONTROL_QUEUE {
            self.control.pop_front();
            self.stats.control_dropped += 1;
        }
        self.control.push_back(frame);
    }

    fn check_kind(&self, channel: u32, kind: ChannelKind) -> Result<(), ClientError> {
        match self.channels.get(&channel) {
            Some(d) if d.kind == kind as i32 => Ok(()),
            _ => Err(ClientError::UnknownChannel(channel)),
        }
    }
}

pub(super) fn body(b: client_frame::Body) -> ClientFrame {
    ClientFrame { body: Some(b) }
}

/// A blob as the encoded frames that carry it, in order: chunks of at most
/// [`MAX_BLOB_CHUNK_LEN`](cabine_proto::telemetry::MAX_BLOB_CHUNK_LEN) bytes, the first with the
/// MIME type, capture time and total length, the last marked (an empty blob is one empty chunk).
/// Both transports (a QUIC stream of its own, or the stream transport's link) write them as is.
pub(crate) fn blob_frames(
    channel_id: u32,
    blob_id: u64,
    mime: &str,
    capture_time_us: u64,
    data: &[u8],
) -> Result<Vec<Vec<u8>>, ClientError> {
    use cabine_proto::telemetry::{encode_frame, BlobChunk, MAX_BLOB_CHUNK_LEN};
    let pieces: Vec<&[u8]> = if data.is_empty() {
        vec![&[]]
    } else {
        data.chunks(MAX_BLOB_CHUNK_LEN).collect()
    };
    let last_index = pieces.len() - 1;
    pieces
        .into_iter()
        .enumerate()
        .map(|(i, piece)| {
            let first = i == 0;
            let chunk = BlobChunk {
                channel_id,
                blob_id,
                seq: i as u32,
                last: i == last_index,
                mime: if first {
                    mime.to_owned()
                } else {
                    String::new()
                },
                data: piece.to_vec(),
                capture_time_us: if first { capture_time_us } else { 0 },
                total_len: if first { data.len() as u64 } else { 0 },
            };
            chunk.check()?;
            encode_frame(&body(client_frame::Body::Blob(chunk)))
                .map_err(|e| ClientError::Config(e.to_string()))
        })
        .collect()
}
