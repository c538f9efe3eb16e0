//! A consultation room: its participants' WebRTC sessions and the forwarding between them.
//!
//! The room is sans-IO. The shell feeds it datagrams ([`Room::handle_datagram`]), timeouts
//! ([`Room::handle_timeout`]) and commands (joins, answers, telemetry) with the time as an
//! argument, then drains [`Room::poll_output`] until [`Output::Timeout`]: datagrams to send,
//! offers, progress, data-channel messages and ended sessions all come out of that one call.
//!
//! Each session is one str0m [`Rtc`] in RTP mode: the room reads RTP packets from publishers
//! and writes them, rewritten by a [`Forwarder`], into every subscriber's outgoing stream.
//! Retransmissions (NACK/RTX), sender/receiver reports, TWCC and the pacer are str0m's;
//! keyframe requests are forwarded to the publisher, throttled.
//!
//! This file holds the room, its sessions and tracks, joining and leaving; each other concern
//! has a file: `drive` (inputs, str0m's events), `output`, `negotiation` (server offers and
//! republishing), `binding` (tracks to subscriber slots), `forward` (the packet path),
//! `allocation` (simulcast layers and pausing), `datachannel` (telemetry), `snapshot`
//! (statistics) and `error`.

mod allocation;
mod binding;
mod datachannel;
mod drive;
mod error;
mod forward;
mod isolation;
mod negotiation;
mod output;
mod snapshot;
mod transport;

use self::datachannel::{flush_backlog, Telemetry};
pub use self::datachannel::{
    DataIn, DataStats, DATA_BACKLOG_LIMIT, DATA_BUFFER_LIMIT, DATA_IN_LIMIT, DATA_IN_MAX,
    TELEMETRY_LABEL,
};
pub use self::error::{JoinError, NegotiationError};
pub use self::isolation::RoomPanicked;
use self::negotiation::Negotiation;
pub use self::negotiation::{Offer, OfferRequest, OfferedTrack};
pub use self::output::{Output, Progress, Stage};
pub use self::snapshot::{
    DropCounters, PublishedSnapshot, ReceivedSnapshot, RoomSnapshot, SessionSnapshot,
};
pub use self::transport::{
    CandidateType, RelayReportError, Transport, TransportProtocol, MAX_REMOTE_CANDIDATES,
};

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cabine_proto::{Identity, Role, RoomId};
use serde::Serialize;
use str0m::bwe::Bitrate;
use str0m::change::SdpOffer;
use str0m::format::{Codec, PayloadParams};
use str0m::media::{Direction, MediaKind, Mid, Rid, Rids};
use str0m::net::Transmit;
use str0m::rtp::Ssrc;
use str0m::{Rtc, RtcConfig};

use crate::certificate::DtlsCertificate;
use crate::forwarder::Forwarder;
use crate::pause::Pauser;
use crate::sdp::{self, Label};
use crate::simulcast::{BitrateMeter, MAX_LAYERS};
use crate::stats::{DelayHistogram, EgressStats, IngressStats, Jitter};

/// Identifies one participant session (one WHIP or WHEP resource) on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct SessionId(pub u64);

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Whether a session sends media into the room or receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionKind {
    /// WHIP: the participant publishes tracks.
    Publish,
    /// WHEP: the participant receives the room's tracks.
    Subscribe,
}

/// What a track carries, from its label: the SFU gives audio, and the stethoscope above all,
/// priority over video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrackClass {
    /// The stethoscope: audio that must reach the doctor unprocessed and is never starved.
    Stethoscope,
    /// A device camera (otoscope, dermatoscope, ophthalmoscope).
    DeviceCamera,
    /// Any other audio (a microphone).
    Audio,
    /// Any other video (the room camera, the doctor's camera).
    Video,
}

impl TrackClass {
    /// Classifies a track from its kind and its label's track id.
    pub fn from_label(kind: MediaKind, track_id: &str) -> Self {
        let t = track_id.to_ascii_lowercase();
        match kind {
            MediaKind::Audio if t.contains("stethoscope") => TrackClass::Stethoscope,
            MediaKind::Audio => TrackClass::Audio,
            MediaKind::Video
                if t.contains("device") || t.contains("otoscope") || t.contains("dermatoscope") =>
            {
                TrackClass::DeviceCamera
            }
            MediaKind::Video => TrackClass::Video,
        }
    }
}

/// Settings every session in a room shares.
#[derive(Debug, Clone)]
pub struct RoomConfig {
    /// The address advertised as the server's ICE host candidate (the media port).
    pub candidate: SocketAddr,
    /// Whether the same address is also offered as a passive ICE-TCP host candidate (RFC 6544,
    /// framed per RFC 4571 by the shell), below the UDP candidate in priority.
    pub tcp_candidate: bool,
    /// Initial bandwidth estimate for a subscriber before feedback arrives.
    pub initial_bitrate: Bitrate,
    /// How long a session may stay ICE-disconnected before it is removed.
    pub disconnect_grace: Duration,
    /// How long a new session has to connect (ICE and DTLS done) before it is removed and
    /// frees its slot (`media.connect_timeout`).
    pub connect_timeout: Duration,
    /// Minimum time between two keyframe requests sent to one publisher stream.
    pub keyframe_interval: Duration,
    /// Most sessions (publish + subscribe) in one room.
    pub max_sessions: usize,
    /// The longest a subscriber's sent video stays available for retransmission (NACK → RTX);
    /// at most [`RTX_HISTORY_MAX_PACKETS`] packets per stream are kept. Each stream keeps what
    /// its measured round trip needs, within this (see `EgressStats::rtx_history_ms`).
    pub rtx_history: Duration,
    /// The DTLS certificate every session of the room presents. The default is the process's
    /// ([`DtlsCertificate::process`]): generating a key pair per session made joins slow.
    /// `None`: str0m generates one per session.
    pub dtls_certificate: Option<DtlsCertificate>,
    /// When a subscriber's link cannot carry a video's current layer, drop VP8 temporal layers
    /// of it (a lower frame rate, same picture size) before switching to a smaller simulcast
    /// layer or pausing (see [`crate::temporal`]). Off: whole layers only, as before.
    pub temporal_first: bool,
}

/// Most packets kept for retransmission per outgoing video stream, whatever
/// [`RoomConfig::rtx_history`] says: about 1 s of a 10 Mbit/s stream, and a bound on the memory
/// one stream can hold (about 1.2 MB of payload).
pub const RTX_HISTORY_MAX_PACKETS: usize = 1_000;

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig {
            candidate: SocketAddr::from(([127, 0, 0, 1], 7882)),
            tcp_candidate: false,
            initial_bitrate: Bitrate::kbps(1_000),
            disconnect_grace: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(20),
            keyframe_interval: Duration::from_millis(500),
            max_sessions: 16,
            // Two NACK rounds on a path with 300 ms of queueing (the narrow link of
            // tests/pause.rs: a retransmission that is lost again is asked for ~0.65 s later);
            // 1 s allowed only one and left that test's device camera paused. str0m keeps 3 s,
            // i.e. ~560 KB of payload for each 1.5 Mbit/s camera.
            rtx_history: Duration::from_millis(1500),
            dtls_certificate: DtlsCertificate::process(),
            temporal_first: true,
        }
    }
}

/// A request to add a session to the room.
#[derive(Debug)]
pub struct JoinRequest {
    /// The id the shell chose for the session (unique on the node).
    pub session: SessionId,
    /// Who joins.
    pub identity: Identity,
    /// With which role.
    pub role: Role,
    /// Publish (WHIP) or subscribe (WHEP).
    pub kind: SessionKind,
    /// The client's SDP offer, as text.
    pub offer: String,
    /// Subscribers only: receive only the tracks of this participant.
    pub from: Option<Identity>,
    /// The ICE credentials the server uses for this session (the shell demultiplexes by ufrag).
    pub ice_ufrag: String,
    /// ICE password matching `ice_ufrag`.
    pub ice_pwd: String,
}

/// The outcome of a successful join.
#[derive(Debug, Clone)]
pub struct Joined {
    /// The SDP answer to return to the client.
    pub answer: String,
    /// Tracks this session publishes (WHIP) or receives (WHEP), with their labels.
    pub tracks: Vec<TrackInfo>,
}

/// A track as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TrackInfo {
    /// Audio or video.
    pub kind: &'static str,
    /// What it carries.
    pub class: TrackClass,
    /// Its msid label.
    pub label: Label,
}

/// A consultation room.
pub struct Room {
    id: RoomId,
    cfg: RoomConfig,
    sessions: Vec<Session>,
    tracks: Vec<Track>,
    next_track: u64,
    dropped: DropCounters,
    /// Arrival time of the datagram being handled, for forwarding-delay accounting.
    arrival: Option<Instant>,
    /// Datagrams to send, drained by [`Room::poll_output`] (the capacity stays: no allocation
    /// per packet).
    /// Datagrams to send, with the session that sends each.
    transmits: VecDeque<(SessionId, Transmit)>,
    /// Offers, progress, data and ended sessions, in order, drained after the datagrams.
    outputs: VecDeque<Output>,
    forwarding_delay: DelayHistogram,
}

/// A session the room removed by itself.
#[derive(Debug, Clone)]
pub struct Removed {
    /// The session.
    pub session: SessionId,
    /// Its participant.
    pub identity: Identity,
    /// Its role.
    pub role: Role,
    /// Publish or subscribe.
    pub kind: SessionKind,
    /// Why it was removed, in words (`cause.reason()`).
    pub reason: &'static str,
    /// Why it was removed.
    pub cause: EndCause,
}

/// Why the room removed a session by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EndCause {
    /// It did not connect (ICE and DTLS) within [`RoomConfig::connect_timeout`].
    ConnectTimeout,
    /// ICE stayed disconnected for longer than [`RoomConfig::disconnect_grace`].
    Disconnected,
    /// The peer closed the connection, or the connection failed.
    Closed,
    /// The room failed (a panic caught by [`Room::run_isolated`]) and was closed with all its
    /// sessions.
    RoomFailed,
}

impl EndCause {
    /// The cause in words, for logs, the audit trail and clients.
    pub fn reason(self) -> &'static str {
        match self {
            EndCause::ConnectTimeout => "did not connect within the connect timeout",
            EndCause::Disconnected => "ICE disconnected for longer than the grace period",
            EndCause::Closed => "connection closed",
            EndCause::RoomFailed => "the room failed on the server and was closed",
        }
    }
}

impl Room {
    /// An empty room.
    pub fn new(id: RoomId, cfg: RoomConfig) -> Self {
        Room {
            id,
            cfg,
            sessions: Vec::new(),
            tracks: Vec::new(),
            next_track: 1,
            dropped: DropCounters::default(),
            arrival: None,
            transmits: VecDeque::new(),
            outputs: VecDeque::new(),
            forwarding_delay: DelayHistogram::default(),
        }
    }

    /// The room's name.
    pub fn id(&self) -> &RoomId {
        &self.id
    }

    /// Whether the room has no session left.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Number of sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Adds a session from a client's SDP offer and returns the answer.
    pub fn join(&mut self, now: Instant, req: JoinRequest) -> Result<Joined, JoinError> {
        if self.sessions.len() >= self.cfg.max_sessions {
            return Err(JoinError::RoomFull(self.cfg.max_sessions));
        }
        let offer =
            SdpOffer::from_sdp_string(&req.offer).map_err(|e| JoinError::BadSdp(e.to_string()))?;

        // Full ICE, not ICE-lite: the server checks the path itself (consent freshness, RFC
        // 7675). An ICE-lite server depends on the client's binding requests, and the `webrtc`
        // crate (kiosks) sends none while media flows, so str0m dropped the path after 15 s.
        let mut config = RtcConfig::new()
            .set_ice_lite(false)
            .set_rtp_mode(true)
            .enable_h265(false)
            // Opus with RFC 2198 RED where the client offers or accepts it (browsers do): a
            // subscriber with RED recovers a lost audio packet from the next one.
            .enable_opus(true, true)
            .set_local_ice_credentials(str0m::IceCreds {
                ufrag: req.ice_ufrag.clone(),
                pass: req.ice_pwd.clone(),
            })
            .set_stats_interval(Some(Duration::from_secs(1)));
        if req.kind == SessionKind::Subscribe {
            config = config.enable_bwe(Some(self.cfg.initial_bitrate));
        }
        if let Some(cert) = &self.cfg.dtls_certificate {
            config = config.set_dtls_cert(cert.to_str0m());
        }
        let mut rtc = config.build(now);
        self.add_local_candidates(&mut rtc)?;
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| JoinError::Refused(e.to_string()))?;
        let mut answer = answer.to_sdp_string();

        // What the offer gave us: media we will receive (publish) or send (subscribe).
        let wanted = match req.kind {
            SessionKind::Publish => Direction::RecvOnly,
            SessionKind::Subscribe => Direction::SendOnly,
        };
        let usable = usable_media(&rtc, &answer, wanted);
        if usable.is_empty() {
            let what = match req.kind {
                SessionKind::Publish => "to publish",
                SessionKind::Subscribe => "to receive",
            };
            return Err(JoinError::NoUsableMedia(format!(
                "no audio or video m-line {what} with a supported codec (supported: opus, VP8, \
                 VP9, H264, AV1; offered: {})",
                sdp::offered_codecs(&req.offer)
            )));
        }

        let mut session = Session {
            id: req.session,
            identity: req.identity,
            role: req.role,
            kind: req.kind,
            rtc,
            from: req.from,
            dirty: true,
            timeout: now,
            connected: false,
            connect_by: Some(now + self.cfg.connect_timeout),
            disconnected_since: None,
            ssrc_map: Vec::new(),
            outs: Vec::new(),
            bwe: None,
            telemetry: None,
            negotiation: None,
            stages: 0,
            path: transport::Path::default(),
        };
        session.path.learn_sdp(&req.offer);

        let mut infos = Vec::new();
        match req.kind {
            SessionKind::Publish => {
                for (mid, kind, label, _) in usable {
                    let class = TrackClass::from_label(kind, &label.track);
                    infos.push(TrackInfo {
                        kind: kind_str(kind),
                        class,
                        label: label.clone(),
                    });
                    let id = self.next_track;
                    self.next_track += 1;
                    self.tracks.push(Track {
                        id,
                        publisher: session.id,
                        publisher_identity: session.identity.clone(),
                        publisher_role: session.role,
                        mid,
                        kind,
                        class,
                        label,
                        codec: None,
                        layers: Vec::new(),
                        delay: DelayHistogram::default(),
                        primaries: Default::default(),
                    });
                }
                self.sessions.push(session);
                // Existing subscribers with free slots receive the new tracks; those the server
                // negotiates with get a new offer.
                self.bind_free_slots();
                self.renegotiate_all();
            }
            SessionKind::Subscribe => {
                if req.offer.contains("m=application") {
                    let mut api = session.rtc.sdp_api();
                    let (reliable, lossy) = Telemetry::declare(&mut api);
                    // The offer already negotiated SCTP: no renegotiation is needed.
                    if api.apply().is_none() {
                        session.telemetry = Some(Telemetry::new(reliable, lossy));
                    }
                }
                for (mid, kind, _, _) in usable {
                    let history = bound_rtx_history(
                        &mut session.rtc,
                        mid,
                        kind,
                        first_rtx_history(self.cfg.rtx_history),
                    );
                    session.outs.push(Out {
                        mid,
                        kind,
                        track: None,
                        forwarder: Forwarder::new(clock_rate(kind), 0),
                        pt_map: [0; 128],
                        stats: EgressStats {
                            rtx_history_ms: history.as_millis() as u64,
                            ..EgressStats::default()
                        },
                        pause: Pauser::default(),
                        idle: None,
                    });
                }
                self.sessions.push(session);
                self.bind_free_slots();
                let s = self.sessions.last().expect("just pushed");
                for out in &s.outs {
                    let Some(track) = out.track.and_then(|t| self.track(t)) else {
                        continue;
                    };
                    answer = sdp::set_msid(&answer, &out.mid.to_string(), &track.label);
                    infos.push(TrackInfo {
                        kind: kind_str(track.kind),
                        class: track.class,
                        label: track.label.clone(),
                    });
                }
            }
        }
        Ok(Joined {
            answer,
            tracks: infos,
        })
    }

    /// Removes a session (DELETE, or the shell gave up on it). Returns whether it existed.
    pub fn leave(&mut self, session: SessionId) -> bool {
        let Some(i) = self.sessions.iter().position(|s| s.id == session) else {
            return false;
        };
        let mut s = self.sessions.remove(i);
        s.rtc.disconnect();
        self.forget_tracks_of(session);
        true
    }

    /// The server's current ICE ufrag for a session (it changes when a client's offer
    /// restarts ICE; the shell routes STUN by it).
    pub fn local_ufrag(&mut self, session: SessionId) -> Option<String> {
        let s = self.sessions.iter_mut().find(|s| s.id == session)?;
        Some(s.rtc.direct_api().local_ice_credentials().ufrag)
    }

    /// ICE restart (RFC 9725 §4.3.2): the client sent new credentials; the session continues with
    /// `local` as the server's new credentials. Returns whether the session exists.
    pub fn ice_restart(
        &mut self,
        session: SessionId,
        remote: str0m::IceCreds,
        local: str0m::IceCreds,
    ) -> bool {
        let Some(s) = self.sessions.iter_mut().find(|s| s.id == session) else {
            return false;
        };
        let mut api = s.rtc.direct_api();
        api.set_local_ice_credentials(local);
        api.set_remote_ice_credentials(remote);
        s.dirty = true;
        true
    }

    fn track(&self, id: u64) -> Option<&Track> {
        self.tracks.iter().find(|t| t.id == id)
    }
}

struct Session {
    id: SessionId,
    identity: Identity,
    role: Role,
    kind: SessionKind,
    rtc: Rtc,
    from: Option<Identity>,
    dirty: bool,
    timeout: Instant,
    connected: bool,
    /// Until it first connects: when the session is removed if it has not (see
    /// [`RoomConfig::connect_timeout`]).
    connect_by: Option<Instant>,
    disconnected_since: Option<Instant>,
    /// Publisher: SSRC → (track id, layer index) cache.
    ssrc_map: Vec<(Ssrc, u64, u8)>,
    /// Subscriber: outgoing slots.
    outs: Vec<Out>,
    bwe: Option<u64>,
    /// Stages reached (bit set of `Stage as u8`).
    stages: u8,
    /// Subscriber: the server-opened `telemetry` data channels (reliable, lossy) and whether
    /// each is open yet.
    telemetry: Option<Telemetry>,
    /// Subscribers whose offers the server makes (WebSocket signalling): each track published
    /// later gets an m-line of its own through a new offer, each track gone is stopped.
    negotiation: Option<Negotiation>,
    /// The client's signalled candidates and the selected pair's transport.
    path: transport::Path,
}

struct Track {
    id: u64,
    publisher: SessionId,
    publisher_identity: Identity,
    publisher_role: Role,
    mid: Mid,
    kind: MediaKind,
    class: TrackClass,
    label: Label,
    codec: Option<(u8, Codec, u32, PayloadParams)>,
    layers: Vec<Layer>,
    delay: DelayHistogram,
    /// Buffers for this track's RED payloads stripped to their primary block (empty unless
    /// it sends RED to a subscriber without it).
    primaries: crate::red::PrimaryBuffers,
}

struct Layer {
    rid: Option<Rid>,
    meter: BitrateMeter,
    /// The rate of each VP8 temporal layer, when the stream has them.
    temporal: crate::temporal::TemporalMeters,
    jitter: Jitter,
    stats: IngressStats,
    last_keyframe_request: Option<Instant>,
}

struct Out {
    mid: Mid,
    kind: MediaKind,
    track: Option<u64>,
    forwarder: Forwarder,
    /// Publisher payload type → subscriber payload type (0 = unknown yet, 255 = none; the
    /// 0x80 bit: RED stripped to its primary block, see `forward.rs`).
    pt_map: [u8; 128],
    stats: EgressStats,
    /// Whether the subscriber's link carries this video now.
    pause: Pauser,
    /// While the slot has no track: the SSRCs (main, RTX) of its send stream, removed from
    /// str0m so that its pacer has no stream to send padding on (see
    /// [`Room::park_idle_streams`]).
    idle: Option<(Ssrc, Option<Ssrc>)>,
}

impl Track {
    fn info(&self) -> TrackInfo {
        TrackInfo {
            kind: kind_str(self.kind),
            class: self.class,
            label: self.label.clone(),
        }
    }

    fn clock(&self) -> u32 {
        self.codec
            .as_ref()
            .map(|(_, _, c, _)| *c)
            .unwrap_or_else(|| clock_rate(self.kind))
    }
}

/// Keeps the sent video of a subscriber's m-line for `history` (at most
/// [`RTX_HISTORY_MAX_PACKETS`]) for retransmission, instead of str0m's 3 s, and returns what
/// it set (zero: nothing kept). Audio is sent non-nackable and keeps nothing. It empties the
/// history: called when the m-line's stream is created, and when the subscriber's round-trip
/// time says another length fits ([`rtx_history_for`]).
fn bound_rtx_history(rtc: &mut Rtc, mid: Mid, kind: MediaKind, history: Duration) -> Duration {
    if kind != MediaKind::Video {
        return Duration::ZERO;
    }
    match rtc.direct_api().stream_tx_by_mid(mid, None) {
        Some(tx) => {
            tx.set_rtx_cache(RTX_HISTORY_MAX_PACKETS, history, RTX_RATIO_CAP);
            history
        }
        None => Duration::ZERO,
    }
}

/// The retransmission history a subscriber's video starts with, at most `max`: the shortest (a
/// round trip of zero), lengthened at the first measurement if the path needs more. Starting
/// long and shortening later would not give the memory back: it was touched.
fn first_rtx_history(max: Duration) -> Duration {
    rtx_history_for(Duration::ZERO, max)
}

/// How long to keep a subscriber's sent video for retransmission given its round-trip time
/// `rtt`: [`RTX_HISTORY_RTTS`] round trips (two NACK rounds, each a round trip plus the
/// receiver's wait for reordering) plus [`RTX_HISTORY_FLOOR`] (detection and jitter on a short
/// path), at most `max` (the configured [`RoomConfig::rtx_history`]). Most of a consultation's
/// memory is this history (1.5 s of a 1.5 Mbit/s camera is ~0.4 MiB); on a LAN or loopback
/// 2 s of it served no NACK that 0.3 s would not.
pub(crate) fn rtx_history_for(rtt: Duration, max: Duration) -> Duration {
    (RTX_HISTORY_FLOOR + rtt * RTX_HISTORY_RTTS).min(max)
}

/// See [`rtx_history_for`].
const RTX_HISTORY_FLOOR: Duration = Duration::from_millis(300);

/// See [`rtx_history_for`].
const RTX_HISTORY_RTTS: u32 = 4;

/// str0m's default cap on the share of retransmissions in a stream's bytes, kept as is.
const RTX_RATIO_CAP: Option<f32> = Some(0.15);

fn kind_str(kind: MediaKind) -> &'static str {
    match kind {
        MediaKind::Audio => "audio",
        MediaKind::Video => "video",
    }
}

fn clock_rate(kind: MediaKind) -> u32 {
    match kind {
        MediaKind::Audio => 48_000,
        MediaKind::Video => 90_000,
    }
}

/// The m-lines of a negotiated session that carry media in direction `wanted` (or both) with
/// a codec: (mid, kind, msid label, simulcast rids).
fn usable_media(
    rtc: &Rtc,
    sdp_text: &str,
    wanted: Direction,
) -> Vec<(Mid, MediaKind, Label, Vec<Rid>)> {
    let mut usable = Vec::new();
    for mid in sdp::mids(sdp_text) {
        let mid = Mid::from(mid.as_str());
        let Some(media) = rtc.media(mid) else {
            continue;
        };
        let dir = media.direction();
        let direction_ok = dir == wanted || dir == Direction::SendRecv;
        if media.disabled() || !direction_ok || media.remote_pts().is_empty() {
            continue;
        }
        let rids = match media.rids_rx() {
            Rids::Specific(r) => r.iter().copied().take(MAX_LAYERS).collect(),
            _ => Vec::new(),
        };
        usable.push((
            mid,
            media.kind(),
            Label {
                stream: media.stream_id().to_owned(),
                track: media.track_id().to_owned(),
            },
            rids,
        ));
    }
    usable
}
