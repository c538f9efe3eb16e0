//! A consultation room: its participants' WebRTC sessions and the forwarding between them.
//!
//! The room is sans-IO. The shell feeds it datagrams ([`Room::handle_datagram`]) and timeouts
//! ([`Room::handle_timeout`]) with the time as an argument, and receives the datagrams to send
//! through a callback. Each session is one str0m [`Rtc`] in RTP mode: the room reads RTP packets
//! from publishers and writes them, rewritten by a [`Forwarder`], into every subscriber's
//! outgoing stream. Retransmissions (NACK/RTX), sender/receiver reports, TWCC and the pacer are
//! str0m's; keyframe requests are forwarded to the publisher, throttled.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cabine_proto::{Identity, Role, RoomId};
use serde::Serialize;
use str0m::bwe::{Bitrate, BweKind};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::{ChannelConfig, ChannelId, Reliability};
use str0m::format::{Codec, PayloadParams};
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid, Rid, Rids};
use str0m::net::{Protocol, Receive, Transmit};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, SeqNo, Ssrc, Vp8Descriptor};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};

use crate::codec;
use crate::forwarder::{Forwarder, InPacket};
use crate::pause::{Change, Link, Pauser};
use crate::sdp::{self, Label};
use crate::simulcast::{self, BitrateMeter, MAX_LAYERS};
use crate::stats::{DelayHistogram, DelaySummary, EgressStats, IngressStats, Jitter};

/// The label of the data channels that carry telemetry to subscribers.
pub const TELEMETRY_LABEL: &str = "telemetry";

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
    /// Initial bandwidth estimate for a subscriber before feedback arrives.
    pub initial_bitrate: Bitrate,
    /// How long a session may stay ICE-disconnected before it is removed.
    pub disconnect_grace: Duration,
    /// Minimum time between two keyframe requests sent to one publisher stream.
    pub keyframe_interval: Duration,
    /// Most sessions (publish + subscribe) in one room.
    pub max_sessions: usize,
}

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig {
            candidate: SocketAddr::from(([127, 0, 0, 1], 7882)),
            initial_bitrate: Bitrate::kbps(1_000),
            disconnect_grace: Duration::from_secs(10),
            keyframe_interval: Duration::from_millis(500),
            max_sessions: 16,
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

/// Why a join was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// The offer is not valid SDP.
    #[error("malformed SDP offer: {0}")]
    BadSdp(String),
    /// The offer parses but none of its media can be used.
    #[error("no usable media in the SDP offer: {0}")]
    NoUsableMedia(String),
    /// The media engine refused the offer.
    #[error("the SDP offer was refused: {0}")]
    Refused(String),
    /// The room has reached its session limit.
    #[error("the room is full ({0} sessions)")]
    RoomFull(usize),
}

/// Counters of traffic the room dropped, for metrics.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct DropCounters {
    /// Datagrams the media engine refused (bad SRTP, malformed RTP/RTCP, bad STUN integrity).
    pub rejected_datagrams: u64,
    /// RTP packets with an SSRC the session never negotiated.
    pub unknown_ssrc: u64,
    /// RTP packets with a payload type no subscriber codec matches.
    pub unmapped_payload_type: u64,
}

/// A JSON-ready view of a room for the operators' API.
#[derive(Debug, Clone, Serialize)]
pub struct RoomSnapshot {
    /// The room name.
    pub room: RoomId,
    /// Its sessions.
    pub sessions: Vec<SessionSnapshot>,
    /// Dropped traffic.
    pub dropped: DropCounters,
}

/// One session in a [`RoomSnapshot`].
#[derive(Debug, Clone, Serialize)]
pub struct SessionSnapshot {
    /// Session id.
    pub id: SessionId,
    /// Participant identity.
    pub identity: Identity,
    /// Role.
    pub role: Role,
    /// Publish or subscribe.
    pub kind: SessionKind,
    /// ICE/DTLS connected.
    pub connected: bool,
    /// Current bandwidth estimate towards this participant (subscribers), bits/s.
    pub bwe_bps: Option<u64>,
    /// Published tracks (publishers).
    pub published: Vec<PublishedSnapshot>,
    /// Received tracks (subscribers).
    pub received: Vec<ReceivedSnapshot>,
    /// Telemetry data channel counters (subscribers that offered a data channel).
    pub telemetry: Option<DataStats>,
}

/// A published track's statistics.
#[derive(Debug, Clone, Serialize)]
pub struct PublishedSnapshot {
    /// The track.
    pub track: TrackInfo,
    /// Codec, once media has arrived.
    pub codec: Option<String>,
    /// One entry per simulcast layer (one without simulcast).
    pub layers: Vec<IngressStats>,
    /// Time packets of this track spent inside the SFU (arrival to hand-off to the socket).
    pub forwarding_delay: DelaySummary,
}

/// A received track's statistics.
#[derive(Debug, Clone, Serialize)]
pub struct ReceivedSnapshot {
    /// The track, if one is bound to this slot.
    pub track: Option<TrackInfo>,
    /// Identity of the publisher.
    pub from: Option<Identity>,
    /// Egress statistics.
    pub stats: EgressStats,
}

/// A consultation room.
pub struct Room {
    id: RoomId,
    cfg: RoomConfig,
    sessions: Vec<Session>,
    tracks: Vec<Track>,
    next_track: u64,
    dropped: DropCounters,
    /// The track whose packet the last datagram carried, for forwarding-delay accounting.
    last_forwarded: Option<u64>,
    removed: Vec<Removed>,
    data_in: Vec<DataIn>,
    data_in_dropped: u64,
    progress: Vec<Progress>,
    offers: Vec<Offer>,
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
    /// Why it was removed.
    pub reason: &'static str,
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
}

struct Negotiation {
    next_id: u64,
    pending: Option<Pending>,
    /// m-lines of tracks that went away, to stop in the next offer.
    to_stop: Vec<(Mid, OfferedTrack)>,
    /// An ICE restart was asked for: the next offer carries new credentials.
    restart_ice: bool,
}

struct Pending {
    offer: Offer,
    token: SdpPendingOffer,
    adds: Vec<(Mid, MediaKind, u64)>,
}

struct Telemetry {
    reliable: ChannelId,
    lossy: ChannelId,
    reliable_open: bool,
    lossy_open: bool,
    stats: DataStats,
    /// Reliable messages waiting for room in the SCTP send buffer (a blob's chunks come in a
    /// burst larger than that buffer), sent in order as the subscriber acknowledges.
    backlog: VecDeque<Vec<u8>>,
    backlog_bytes: usize,
}

impl Telemetry {
    fn new(reliable: ChannelId, lossy: ChannelId) -> Self {
        Telemetry {
            reliable,
            lossy,
            reliable_open: false,
            lossy_open: false,
            stats: DataStats::default(),
            backlog: VecDeque::new(),
            backlog_bytes: 0,
        }
    }
}

/// Telemetry data channel counters of one subscriber.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct DataStats {
    /// Messages written to the subscriber.
    pub sent: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Messages dropped because the subscriber's channel was not open or too far behind.
    pub dropped: u64,
    /// Reliable messages that waited for room in the send buffer (none were lost).
    pub deferred: u64,
    /// Messages received from the subscriber (commands).
    pub received: u64,
}

/// Most bytes buffered in a subscriber's telemetry channel before further messages are dropped
/// for it (a slow subscriber never holds up the kiosk or the others).
pub const DATA_BUFFER_LIMIT: usize = 256 * 1024;

/// Most bytes of reliable telemetry (measurements, status, blobs) held per subscriber while its
/// SCTP send buffer is full: room for a few full-resolution stills in their JSON form. Beyond
/// it messages are dropped and counted.
pub const DATA_BACKLOG_LIMIT: usize = 4 * 1024 * 1024;

/// Most messages from subscribers' data channels held for the shell between two polls.
pub const DATA_IN_LIMIT: usize = 1024;

/// Largest message accepted from a subscriber's data channel.
pub const DATA_IN_MAX: usize = 16 * 1024;

/// A step in a session's setup, for join tracing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// ICE connectivity established.
    IceConnected,
    /// DTLS handshake done (SRTP keys ready).
    DtlsConnected,
    /// First media packet received (publisher) or forwarded (subscriber).
    FirstMedia,
}

/// A session reached a [`Stage`].
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// The session.
    pub session: SessionId,
    /// The stage reached.
    pub stage: Stage,
}

/// A message a participant sent on a data channel (for example a device command).
#[derive(Debug, Clone)]
pub struct DataIn {
    /// The session it came from.
    pub session: SessionId,
    /// Who sent it.
    pub identity: Identity,
    /// The channel label.
    pub label: String,
    /// The bytes.
    pub data: Vec<u8>,
}

/// What a subscriber starting a server-negotiated session (WebSocket signalling) asks for.
#[derive(Debug)]
pub struct OfferRequest {
    /// The id the shell chose for the session (unique on the node).
    pub session: SessionId,
    /// Who joins.
    pub identity: Identity,
    /// With which role.
    pub role: Role,
    /// Receive only the tracks of this participant.
    pub from: Option<Identity>,
    /// Open the `telemetry` data channels (reliable and lossy) in the first offer.
    pub telemetry: bool,
    /// The ICE credentials the server uses for this session (the shell demultiplexes by ufrag).
    pub ice_ufrag: String,
    /// ICE password matching `ice_ufrag`.
    pub ice_pwd: String,
}

/// An SDP offer the server made to a subscriber: the first one, or a renegotiation because
/// tracks appeared or went away (or an ICE restart). At most one is outstanding per session;
/// changes made meanwhile go into the next one, made when this one is answered.
#[derive(Debug, Clone)]
pub struct Offer {
    /// The subscriber session.
    pub session: SessionId,
    /// Increases by one per offer of the session; the answer must name it.
    pub id: u64,
    /// The SDP offer.
    pub sdp: String,
    /// Tracks this offer adds, each on its own m-line.
    pub added: Vec<OfferedTrack>,
    /// Tracks this offer stops (their publisher unpublished or left).
    pub removed: Vec<OfferedTrack>,
    /// The server's ICE ufrag for the session once this offer is answered (changes on an ICE
    /// restart; the shell routes STUN by it).
    pub ice_ufrag: String,
}

/// A track in an [`Offer`], with the m-line that carries it.
#[derive(Debug, Clone, Serialize)]
pub struct OfferedTrack {
    /// The `a=mid` of its m-line in the offer.
    pub mid: String,
    /// Its publisher.
    pub from: Identity,
    /// The track.
    pub track: TrackInfo,
}

/// Why an answer or a renegotiation was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NegotiationError {
    /// No such session in the room.
    #[error("no session {0} in this room")]
    UnknownSession(SessionId),
    /// The session is not one the server negotiates with (a WHEP subscriber, or a publisher
    /// answering instead of offering).
    #[error("session {0} does not take server offers")]
    NotNegotiated(SessionId),
    /// No offer with this id is outstanding.
    #[error("no outstanding offer {got} (outstanding: {outstanding:?})")]
    NoSuchOffer {
        /// The id the answer named.
        got: u64,
        /// The outstanding offer's id, if any.
        outstanding: Option<u64>,
    },
    /// The SDP is malformed or the media engine refused it.
    #[error("bad SDP: {0}")]
    BadSdp(String),
}

/// Writes `data` on a subscriber's reliable or lossy telemetry channel, counting a drop when it
/// is closed or too far behind.
fn write_data(s: &mut Session, data: &[u8], reliable: bool) -> bool {
    let Some(t) = &mut s.telemetry else {
        return false;
    };
    let (id, open) = if reliable {
        (t.reliable, t.reliable_open)
    } else {
        (t.lossy, t.lossy_open)
    };
    let Some(mut ch) = open.then(|| s.rtc.channel(id)).flatten() else {
        t.stats.dropped += 1;
        return false;
    };
    // Reliable messages keep their order behind a backlog, and wait in it (bounded) when the
    // send buffer is full; lossy ones (waveforms) are dropped when it is: a late chunk is
    // worthless.
    let written = (!reliable || t.backlog.is_empty())
        && ch.buffered_amount() <= DATA_BUFFER_LIMIT
        && matches!(ch.write(false, data), Ok(true));
    if written {
        t.stats.sent += 1;
        t.stats.bytes += data.len() as u64;
        s.dirty = true;
        return true;
    }
    if reliable && t.backlog_bytes + data.len() <= DATA_BACKLOG_LIMIT {
        t.backlog.push_back(data.to_vec());
        t.backlog_bytes += data.len();
        t.stats.deferred += 1;
        return true;
    }
    t.stats.dropped += 1;
    false
}

/// Writes what the session's reliable telemetry backlog can now fit; true if it wrote any.
fn flush_backlog(s: &mut Session) -> bool {
    let Some(t) = &mut s.telemetry else {
        return false;
    };
    if t.backlog.is_empty() || !t.reliable_open {
        return false;
    }
    let Some(mut ch) = s.rtc.channel(t.reliable) else {
        return false;
    };
    let mut wrote = false;
    while let Some(front) = t.backlog.front() {
        if ch.buffered_amount() > DATA_BUFFER_LIMIT || !matches!(ch.write(false, front), Ok(true)) {
            break;
        }
        t.stats.sent += 1;
        t.stats.bytes += front.len() as u64;
        t.backlog_bytes -= front.len();
        t.backlog.pop_front();
        wrote = true;
    }
    wrote
}

struct Track {
    id: u64,
    publisher: SessionId,
    publisher_identity: Identity,
    mid: Mid,
    kind: MediaKind,
    class: TrackClass,
    label: Label,
    codec: Option<(u8, Codec, u32, PayloadParams)>,
    layers: Vec<Layer>,
    delay: DelayHistogram,
}

struct Layer {
    rid: Option<Rid>,
    meter: BitrateMeter,
    jitter: Jitter,
    stats: IngressStats,
    last_keyframe_request: Option<Instant>,
}

struct Out {
    mid: Mid,
    kind: MediaKind,
    track: Option<u64>,
    forwarder: Forwarder,
    /// Publisher payload type → subscriber payload type (0 = unknown yet, 255 = none).
    pt_map: [u8; 128],
    stats: EgressStats,
    /// Whether the subscriber's link carries this video now.
    pause: Pauser,
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
            last_forwarded: None,
            removed: Vec::new(),
            data_in: Vec::new(),
            data_in_dropped: 0,
            progress: Vec::new(),
            offers: Vec::new(),
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

    /// Whether the room holds `session`.
    pub fn has_session(&self, session: SessionId) -> bool {
        self.sessions.iter().any(|s| s.id == session)
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
            .set_local_ice_credentials(str0m::IceCreds {
                ufrag: req.ice_ufrag.clone(),
                pass: req.ice_pwd.clone(),
            })
            .set_stats_interval(Some(Duration::from_secs(1)));
        if req.kind == SessionKind::Subscribe {
            config = config.enable_bwe(Some(self.cfg.initial_bitrate));
        }
        let mut rtc = config.build(now);
        let candidate = Candidate::host(self.cfg.candidate, "udp")
            .map_err(|e| JoinError::Refused(format!("bad media candidate: {e}")))?;
        rtc.add_local_candidate(candidate);
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
            disconnected_since: None,
            ssrc_map: Vec::new(),
            outs: Vec::new(),
            bwe: None,
            telemetry: None,
            negotiation: None,
            stages: 0,
        };

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
                        mid,
                        kind,
                        class,
                        label,
                        codec: None,
                        layers: Vec::new(),
                        delay: DelayHistogram::default(),
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
                    let reliable = api.add_channel_with_config(ChannelConfig {
                        label: TELEMETRY_LABEL.into(),
                        ordered: true,
                        reliability: Reliability::Reliable,
                        ..ChannelConfig::default()
                    });
                    let lossy = api.add_channel_with_config(ChannelConfig {
                        label: TELEMETRY_LABEL.into(),
                        ordered: false,
                        reliability: Reliability::MaxRetransmits { retransmits: 0 },
                        protocol: "lossy".into(),
                        ..ChannelConfig::default()
                    });
                    // The offer already negotiated SCTP: no renegotiation is needed.
                    if api.apply().is_none() {
                        session.telemetry = Some(Telemetry::new(reliable, lossy));
                    }
                }
                for (mid, kind, _, _) in usable {
                    session.outs.push(Out {
                        mid,
                        kind,
                        track: None,
                        forwarder: Forwarder::new(clock_rate(kind), 0),
                        pt_map: [0; 128],
                        stats: EgressStats::default(),
                        pause: Pauser::default(),
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

    /// Adds a subscriber session that the server negotiates with (WebSocket signalling): the
    /// server makes the offer, with one send-only m-line per track the subscriber may receive
    /// (labelled with the publisher's msid) and the `telemetry` data channels if asked; later
    /// publishes and unpublishes produce new offers ([`Room::take_offers`]). The session
    /// connects once the client's answer is given to [`Room::accept_answer`].
    pub fn join_offering(&mut self, now: Instant, req: OfferRequest) -> Result<Offer, JoinError> {
        if self.sessions.len() >= self.cfg.max_sessions {
            return Err(JoinError::RoomFull(self.cfg.max_sessions));
        }
        let mut rtc = RtcConfig::new()
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .enable_h265(false)
            .set_local_ice_credentials(str0m::IceCreds {
                ufrag: req.ice_ufrag.clone(),
                pass: req.ice_pwd.clone(),
            })
            .set_stats_interval(Some(Duration::from_secs(1)))
            .enable_bwe(Some(self.cfg.initial_bitrate))
            .build(now);
        let candidate = Candidate::host(self.cfg.candidate, "udp")
            .map_err(|e| JoinError::Refused(format!("bad media candidate: {e}")))?;
        rtc.add_local_candidate(candidate);
        self.sessions.push(Session {
            id: req.session,
            identity: req.identity,
            role: req.role,
            kind: SessionKind::Subscribe,
            rtc,
            from: req.from,
            dirty: true,
            timeout: now,
            connected: false,
            disconnected_since: None,
            ssrc_map: Vec::new(),
            outs: Vec::new(),
            bwe: None,
            telemetry: None,
            negotiation: Some(Negotiation {
                next_id: 1,
                pending: None,
                to_stop: Vec::new(),
                restart_ice: false,
            }),
            stages: 0,
        });
        let i = self.sessions.len() - 1;
        match self.offer_changes(i, Some(req.telemetry)) {
            Some(offer) => Ok(offer),
            None => {
                self.sessions.pop();
                Err(JoinError::Refused("nothing to offer".into()))
            }
        }
    }

    /// Applies a subscriber's answer to the server's offer number `offer`. Tracks the offer
    /// added start flowing (from their next keyframe); if tracks changed while the offer was
    /// out, the next offer is ready in [`Room::take_offers`].
    pub fn accept_answer(
        &mut self,
        _now: Instant,
        session: SessionId,
        offer: u64,
        answer: &str,
    ) -> Result<(), NegotiationError> {
        let i = self
            .sessions
            .iter()
            .position(|s| s.id == session)
            .ok_or(NegotiationError::UnknownSession(session))?;
        let s = &mut self.sessions[i];
        let n = s
            .negotiation
            .as_mut()
            .ok_or(NegotiationError::NotNegotiated(session))?;
        let outstanding = n.pending.as_ref().map(|p| p.offer.id);
        if outstanding != Some(offer) {
            return Err(NegotiationError::NoSuchOffer {
                got: offer,
                outstanding,
            });
        }
        let parsed = SdpAnswer::from_sdp_string(answer)
            .map_err(|e| NegotiationError::BadSdp(e.to_string()))?;
        let Some(pending) = n.pending.take() else {
            return Err(NegotiationError::NoSuchOffer {
                got: offer,
                outstanding,
            });
        };
        if let Err(e) = s.rtc.sdp_api().accept_answer(pending.token, parsed) {
            // The offer is void; its changes are made again in a fresh one.
            n.to_stop.extend(
                pending
                    .offer
                    .removed
                    .iter()
                    .map(|t| (Mid::from(t.mid.as_str()), t.clone())),
            );
            self.renegotiate(i);
            return Err(NegotiationError::BadSdp(format!(
                "the answer does not match offer {offer} ({e}); a new offer follows"
            )));
        }
        s.dirty = true;
        for (mid, kind, track) in pending.adds {
            let mut forwarder = Forwarder::new(clock_rate(kind), 0);
            forwarder.set_target(0);
            s.outs.push(Out {
                mid,
                kind,
                track: Some(track),
                forwarder,
                pt_map: [0; 128],
                stats: EgressStats::default(),
                pause: Pauser::default(),
            });
        }
        // Whatever changed while the offer was out (or tracks that appeared) goes next.
        self.renegotiate(i);
        Ok(())
    }

    /// Asks for an ICE restart on a server-negotiated subscriber: the next offer carries new
    /// server credentials (see [`Offer::ice_ufrag`]).
    pub fn restart_ice_offer(&mut self, session: SessionId) -> Result<(), NegotiationError> {
        let i = self
            .sessions
            .iter()
            .position(|s| s.id == session)
            .ok_or(NegotiationError::UnknownSession(session))?;
        let n = self.sessions[i]
            .negotiation
            .as_mut()
            .ok_or(NegotiationError::NotNegotiated(session))?;
        n.restart_ice = true;
        self.renegotiate(i);
        Ok(())
    }

    /// The offer a server-negotiated subscriber has not answered yet (to send it again after
    /// the signalling connection was re-established).
    pub fn outstanding_offer(&self, session: SessionId) -> Option<Offer> {
        self.sessions
            .iter()
            .find(|s| s.id == session)?
            .negotiation
            .as_ref()?
            .pending
            .as_ref()
            .map(|p| p.offer.clone())
    }

    /// Offers the server made since the last call (renegotiations of subscribers).
    pub fn take_offers(&mut self) -> Vec<Offer> {
        std::mem::take(&mut self.offers)
    }

    /// A publisher's new offer on its existing session (it added, removed or restarted
    /// something): m-lines new in the offer become tracks, m-lines no longer sending end
    /// theirs, and subscribers are renegotiated. Returns the answer and the publisher's tracks.
    pub fn republish(
        &mut self,
        now: Instant,
        session: SessionId,
        offer: &str,
    ) -> Result<Joined, JoinError> {
        let i = self
            .sessions
            .iter()
            .position(|s| s.id == session && s.kind == SessionKind::Publish)
            .ok_or_else(|| JoinError::Refused(format!("no publishing session {session}")))?;
        let parsed =
            SdpOffer::from_sdp_string(offer).map_err(|e| JoinError::BadSdp(e.to_string()))?;
        let s = &mut self.sessions[i];
        let answer = s
            .rtc
            .sdp_api()
            .accept_offer(parsed)
            .map_err(|e| JoinError::Refused(e.to_string()))?
            .to_sdp_string();
        s.dirty = true;
        let usable = usable_media(&s.rtc, &answer, Direction::RecvOnly);
        let identity = s.identity.clone();
        // Tracks whose m-line no longer sends end.
        let gone: Vec<u64> = self
            .tracks
            .iter()
            .filter(|t| t.publisher == session && !usable.iter().any(|u| u.0 == t.mid))
            .map(|t| t.id)
            .collect();
        self.remove_tracks(&gone);
        for (mid, kind, label, _) in usable {
            if self
                .tracks
                .iter()
                .any(|t| t.publisher == session && t.mid == mid)
            {
                continue;
            }
            let id = self.next_track;
            self.next_track += 1;
            self.tracks.push(Track {
                id,
                publisher: session,
                publisher_identity: identity.clone(),
                mid,
                kind,
                class: TrackClass::from_label(kind, &label.track),
                label,
                codec: None,
                layers: Vec::new(),
                delay: DelayHistogram::default(),
            });
        }
        self.sessions[i].ssrc_map.clear();
        self.bind_free_slots();
        self.renegotiate_all();
        let _ = now;
        let tracks = self
            .tracks
            .iter()
            .filter(|t| t.publisher == session)
            .map(Track::info)
            .collect();
        Ok(Joined { answer, tracks })
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

    /// Feeds one datagram that the shell routed to `session`.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        session: SessionId,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
        send: &mut impl FnMut(&Transmit),
    ) {
        self.last_forwarded = None;
        let Some(i) = self.sessions.iter().position(|s| s.id == session) else {
            return;
        };
        let accepted = match Receive::new(Protocol::Udp, source, destination, data) {
            Ok(receive) => {
                let s = &mut self.sessions[i];
                let input = Input::Receive(now, receive);
                // Only traffic from the ICE-validated address (or STUN with this session's
                // ufrag) reaches the engine; anything else is someone else's garbage.
                if s.rtc.accepts(&input) {
                    s.dirty = true;
                    s.rtc.handle_input(input).is_ok()
                } else {
                    false
                }
            }
            Err(_) => false,
        };
        if !accepted {
            self.dropped.rejected_datagrams += 1;
        }
        self.drive(now, send);
    }

    /// Sends a telemetry message to every subscriber with an open `telemetry` channel:
    /// `reliable` picks the ordered, retransmitted channel (measurements, status) or the lossy
    /// one (waveforms). A subscriber whose channel is closed or too far behind gets nothing and
    /// the drop is counted. Returns how many subscribers it was written to.
    pub fn send_data(
        &mut self,
        now: Instant,
        data: &[u8],
        reliable: bool,
        send: &mut impl FnMut(&Transmit),
    ) -> usize {
        let mut written = 0;
        for s in &mut self.sessions {
            if write_data(s, data, reliable) {
                written += 1;
            }
        }
        self.drive(now, send);
        written
    }

    /// Sends a telemetry message to one subscriber only (an answer to its request, e.g. the
    /// room's current channels when its page opens). Returns whether it was written.
    pub fn send_data_to(
        &mut self,
        now: Instant,
        session: SessionId,
        data: &[u8],
        reliable: bool,
        send: &mut impl FnMut(&Transmit),
    ) -> bool {
        let written = self
            .sessions
            .iter_mut()
            .find(|s| s.id == session)
            .is_some_and(|s| write_data(s, data, reliable));
        self.drive(now, send);
        written
    }

    /// Setup stages sessions reached since the last call.
    pub fn take_progress(&mut self) -> Vec<Progress> {
        std::mem::take(&mut self.progress)
    }

    /// Messages participants sent on data channels since the last call (device commands).
    pub fn take_data_in(&mut self) -> Vec<DataIn> {
        std::mem::take(&mut self.data_in)
    }

    /// The track (if any) whose RTP packet the last [`Room::handle_datagram`] forwarded; the shell
    /// measures the time until the resulting datagrams left and records it with
    /// [`Room::record_forwarding_delay`].
    pub fn last_forwarded_track(&self) -> Option<u64> {
        self.last_forwarded
    }

    /// Records the time a packet of `track` spent inside the SFU.
    pub fn record_forwarding_delay(&mut self, track: u64, d: Duration) {
        if let Some(t) = self.tracks.iter_mut().find(|t| t.id == track) {
            t.delay.record(d);
        }
    }

    /// The next time [`Room::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.sessions.iter().map(|s| s.timeout).min()
    }

    /// Advances time: timers of every session due at `now`, and removal of dead sessions.
    pub fn handle_timeout(&mut self, now: Instant, send: &mut impl FnMut(&Transmit)) {
        self.last_forwarded = None;
        for s in &mut self.sessions {
            if s.timeout <= now {
                s.dirty = true;
                if s.rtc.handle_input(Input::Timeout(now)).is_err() {
                    s.rtc.disconnect();
                }
            }
        }
        self.drive(now, send);
    }

    /// Sessions the room removed by itself since the last call (ICE timeout, DTLS close), for the
    /// shell's bookkeeping and the audit log.
    pub fn take_removed(&mut self) -> Vec<Removed> {
        std::mem::take(&mut self.removed)
    }

    fn reap(&mut self) {
        let grace = self.cfg.disconnect_grace;
        let now_dead: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|s| {
                !s.rtc.is_alive()
                    || s.disconnected_since
                        .is_some_and(|since| s.timeout.saturating_duration_since(since) > grace)
            })
            .map(|s| s.id)
            .collect();
        for id in now_dead {
            if let Some(s) = self.sessions.iter().find(|s| s.id == id) {
                self.removed.push(Removed {
                    session: s.id,
                    identity: s.identity.clone(),
                    role: s.role,
                    kind: s.kind,
                    reason: if s.rtc.is_alive() {
                        "ICE disconnected for longer than the grace period"
                    } else {
                        "connection closed"
                    },
                });
            }
            self.leave(id);
        }
    }

    /// A JSON-ready view of the room and its statistics.
    pub fn snapshot(&self, now: Instant) -> RoomSnapshot {
        let sessions = self
            .sessions
            .iter()
            .map(|s| SessionSnapshot {
                id: s.id,
                identity: s.identity.clone(),
                role: s.role,
                kind: s.kind,
                connected: s.connected,
                bwe_bps: s.bwe,
                telemetry: s.telemetry.as_ref().map(|t| t.stats),
                published: self
                    .tracks
                    .iter()
                    .filter(|t| t.publisher == s.id)
                    .map(|t| PublishedSnapshot {
                        track: t.info(),
                        codec: t.codec.as_ref().map(|(_, c, _, _)| c.to_string()),
                        layers: t
                            .layers
                            .iter()
                            .map(|l| {
                                let mut st = l.stats.clone();
                                st.bitrate_bps = l.meter.bps(now);
                                st.jitter_ms = l.jitter.millis(t.clock());
                                st
                            })
                            .collect(),
                        forwarding_delay: t.delay.summary(),
                    })
                    .collect(),
                received: s
                    .outs
                    .iter()
                    .map(|o| {
                        let t = o.track.and_then(|id| self.track(id));
                        ReceivedSnapshot {
                            track: t.map(Track::info),
                            from: t.map(|t| t.publisher_identity.clone()),
                            stats: o.stats.clone(),
                        }
                    })
                    .collect(),
            })
            .collect();
        RoomSnapshot {
            room: self.id.clone(),
            sessions,
            dropped: self.dropped,
        }
    }

    /// Forwarding-delay histograms of every track (for metrics export).
    pub fn delay_histograms(&self) -> impl Iterator<Item = (TrackClass, &DelayHistogram)> {
        self.tracks.iter().map(|t| (t.class, &t.delay))
    }

    // ---- internals ----

    fn track(&self, id: u64) -> Option<&Track> {
        self.tracks.iter().find(|t| t.id == id)
    }

    fn drive(&mut self, now: Instant, send: &mut impl FnMut(&Transmit)) {
        while let Some(i) = self.sessions.iter().position(|s| s.dirty) {
            self.sessions[i].dirty = false;
            self.poll_session(i, now, send);
        }
        if self
            .sessions
            .iter()
            .any(|s| !s.rtc.is_alive() || s.disconnected_since.is_some())
        {
            self.reap();
        }
    }

    fn poll_session(&mut self, i: usize, now: Instant, send: &mut impl FnMut(&Transmit)) {
        loop {
            let s = &mut self.sessions[i];
            if !s.rtc.is_alive() {
                return;
            }
            match s.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    // Acknowledgements may have made room for held telemetry: write it and
                    // poll again for the datagrams it makes.
                    if flush_backlog(s) {
                        continue;
                    }
                    s.timeout = t;
                    return;
                }
                Ok(Output::Transmit(t)) => send(&t),
                Ok(Output::Event(e)) => self.on_event(i, now, e),
                Err(_) => {
                    s.rtc.disconnect();
                    return;
                }
            }
        }
    }

    fn on_event(&mut self, i: usize, now: Instant, e: Event) {
        match e {
            Event::Connected => {
                self.sessions[i].connected = true;
                self.reached(i, Stage::DtlsConnected);
            }
            Event::IceConnectionStateChange(state) => {
                let s = &mut self.sessions[i];
                match state {
                    IceConnectionState::Disconnected => {
                        s.disconnected_since.get_or_insert(now);
                    }
                    IceConnectionState::Connected | IceConnectionState::Completed => {
                        s.disconnected_since = None;
                        self.reached(i, Stage::IceConnected);
                    }
                    _ => {}
                }
            }
            Event::RtpPacket(pkt) => self.on_rtp(i, now, pkt),
            Event::ChannelOpen(id, _) => {
                if let Some(t) = &mut self.sessions[i].telemetry {
                    if id == t.reliable {
                        t.reliable_open = true;
                    } else if id == t.lossy {
                        t.lossy_open = true;
                    }
                }
            }
            Event::ChannelClose(id) => {
                if let Some(t) = &mut self.sessions[i].telemetry {
                    if id == t.reliable {
                        t.reliable_open = false;
                        t.stats.dropped += t.backlog.len() as u64;
                        t.backlog.clear();
                        t.backlog_bytes = 0;
                    } else if id == t.lossy {
                        t.lossy_open = false;
                    }
                }
            }
            Event::ChannelData(d) => {
                let s = &mut self.sessions[i];
                let label = s
                    .rtc
                    .channel(d.id)
                    .and_then(|c| c.config().map(|c| c.label.clone()))
                    .unwrap_or_default();
                if let Some(t) = &mut s.telemetry {
                    t.stats.received += 1;
                }
                if d.data.len() > DATA_IN_MAX || self.data_in.len() >= DATA_IN_LIMIT {
                    self.data_in_dropped += 1;
                } else {
                    self.data_in.push(DataIn {
                        session: s.id,
                        identity: s.identity.clone(),
                        label,
                        data: d.data,
                    });
                }
            }
            Event::KeyframeRequest(req) => {
                let s = &mut self.sessions[i];
                let Some(out) = s.outs.iter_mut().find(|o| o.mid == req.mid) else {
                    return;
                };
                match req.kind {
                    KeyframeRequestKind::Pli => out.stats.plis += 1,
                    KeyframeRequestKind::Fir => out.stats.firs += 1,
                }
                let (Some(track), Some(layer)) = (out.track, out.forwarder.current_layer()) else {
                    return;
                };
                self.request_keyframe(now, track, layer, req.kind);
            }
            Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                self.sessions[i].bwe = Some(estimate.as_u64());
                self.select_layers(i, now);
            }
            Event::MediaEgressStats(st) => {
                let s = &mut self.sessions[i];
                if let Some(out) = s.outs.iter_mut().find(|o| o.mid == st.mid) {
                    out.stats.nacks = st.nacks;
                    out.stats.loss = st.loss.unwrap_or(out.stats.loss);
                    out.stats.rtt_ms = st.rtt.map(|d| d.as_secs_f64() * 1000.0);
                    if let Some(remote) = st.remote {
                        let clock = f64::from(clock_rate(out.kind));
                        out.stats.jitter_ms = Some(f64::from(remote.jitter) * 1000.0 / clock);
                    }
                }
            }
            Event::MediaIngressStats(st) => {
                let publisher = self.sessions[i].id;
                if let Some(track) = self
                    .tracks
                    .iter_mut()
                    .find(|t| t.publisher == publisher && t.mid == st.mid)
                {
                    if let Some(layer) = track.layers.iter_mut().find(|l| l.rid == st.rid) {
                        layer.stats.nacks = st.nacks;
                        layer.stats.plis = st.plis;
                        layer.stats.firs = st.firs;
                        layer.stats.loss = st.loss.unwrap_or(layer.stats.loss);
                        layer.stats.rtt_ms = st.rtt.map(|d| d.as_secs_f64() * 1000.0);
                    }
                }
            }
            _ => {}
        }
    }

    /// Records that session `i` reached `stage` (once per stage).
    fn reached(&mut self, i: usize, stage: Stage) {
        let bit = 1u8 << (stage as u8);
        let s = &mut self.sessions[i];
        if s.stages & bit == 0 {
            s.stages |= bit;
            if self.progress.len() < DATA_IN_LIMIT {
                self.progress.push(Progress {
                    session: s.id,
                    stage,
                });
            }
        }
    }

    fn on_rtp(&mut self, i: usize, now: Instant, pkt: RtpPacket) {
        self.reached(i, Stage::FirstMedia);
        let ssrc = pkt.header.ssrc;
        let Some((track_id, layer)) = self.locate(i, ssrc) else {
            self.dropped.unknown_ssrc += 1;
            return;
        };
        let Some(ti) = self.tracks.iter().position(|t| t.id == track_id) else {
            return;
        };
        let pt = *pkt.header.payload_type;
        let (codec, clock) = match &self.tracks[ti].codec {
            Some((p, c, clock, _)) if *p == pt => (*c, *clock),
            _ => {
                let Some(params) = self.sessions_codec_params(i, pt) else {
                    self.dropped.unmapped_payload_type += 1;
                    return;
                };
                let spec = params.spec();
                let (c, clock) = (spec.codec, spec.clock_rate.get());
                self.tracks[ti].codec = Some((pt, c, clock, params));
                (c, clock)
            }
        };
        let track = &mut self.tracks[ti];
        let kind = track.kind;
        let keyframe = kind == MediaKind::Audio || codec::starts_keyframe(codec, &pkt.payload);
        let vp8 = if codec == Codec::Vp8 {
            Vp8Descriptor::parse(&pkt.payload)
                .ok()
                .and_then(|d| d.picture_id().map(|p| (p, d.tl0_pic_idx())))
        } else {
            None
        };
        let arrival = pkt.timestamp;
        {
            let l = &mut track.layers[usize::from(layer)];
            l.stats.packets += 1;
            l.stats.bytes += pkt.payload.len() as u64;
            if keyframe && kind == MediaKind::Video {
                l.stats.keyframes += 1;
            }
            l.meter.add(now, pkt.payload.len());
            l.jitter.update(arrival, pkt.header.timestamp, clock);
        }
        let input = InPacket {
            layer,
            seq: *pkt.seq_no,
            ts: pkt.header.timestamp,
            keyframe,
            vp8,
            arrival,
        };
        let ext = ExtensionValues {
            audio_level: pkt.header.ext_vals.audio_level,
            voice_activity: pkt.header.ext_vals.voice_activity,
            video_orientation: pkt.header.ext_vals.video_orientation,
            ..ExtensionValues::default()
        };

        let track = &self.tracks[ti];
        let rid = track.layers.get(usize::from(layer)).and_then(|l| l.rid);
        let mut keyframe_wanted = false;
        let mut forwarded = false;
        for (j, sub) in self.sessions.iter_mut().enumerate() {
            if j == i {
                continue;
            }
            for out in sub.outs.iter_mut().filter(|o| o.track == Some(track_id)) {
                if out.pause.is_paused() {
                    out.stats.skipped += 1;
                    continue;
                }
                let slot = usize::from(pt & 0x7f);
                if out.pt_map[slot] == 0 {
                    // First packet with this payload type: find the subscriber's equivalent.
                    out.pt_map[slot] = track
                        .codec
                        .as_ref()
                        .and_then(|(_, _, _, params)| sub.rtc.codec_config().match_params(*params))
                        .map(|p| *p.pt())
                        .unwrap_or(255);
                }
                let out_pt = out.pt_map[slot];
                if out_pt == 255 {
                    self.dropped.unmapped_payload_type += 1;
                    continue;
                }
                let before = out.forwarder.current_layer();
                match out.forwarder.forward(&input) {
                    Ok(o) => {
                        if o.switched {
                            if before.is_some() && before != Some(layer) {
                                out.stats.layer_switches += 1;
                            }
                            out.stats.layer = rid.map(|r| r.to_string());
                        }
                        let mut write = RtpWrite::new(
                            out_pt.into(),
                            SeqNo::from(o.seq),
                            o.ts,
                            arrival,
                            Arc::clone(&pkt.payload),
                        )
                        .marker(pkt.header.marker)
                        .ext_vals(ext.clone())
                        .nackable(kind == MediaKind::Video);
                        if let (Some((pic, tl0)), Ok(d)) =
                            (o.vp8, Vp8Descriptor::parse(&pkt.payload))
                        {
                            let mut b = d.patch().picture_id(pic);
                            if let Some(t) = tl0 {
                                b = b.tl0_pic_idx(t);
                            }
                            if let Ok(patch) = b.build() {
                                write = write.vp8_patch(patch);
                            }
                        }
                        if let Some(tx) = sub.rtc.direct_api().stream_tx_by_mid(out.mid, None) {
                            // Forwarded media is not paced: the publisher already paced it, and
                            // a pacer below the estimate only makes video late (congestion is
                            // answered by layer choice and pausing instead).
                            tx.set_unpaced(true);
                            tx.write_rtp(write);
                            if out.stats.packets == 0
                                && sub.stages & (1 << Stage::FirstMedia as u8) == 0
                            {
                                sub.stages |= 1 << Stage::FirstMedia as u8;
                                if self.progress.len() < DATA_IN_LIMIT {
                                    self.progress.push(Progress {
                                        session: sub.id,
                                        stage: Stage::FirstMedia,
                                    });
                                }
                            }
                            out.stats.packets += 1;
                            out.stats.bytes += pkt.payload.len() as u64;
                            sub.dirty = true;
                            forwarded = true;
                        }
                    }
                    Err(_) => {
                        out.stats.skipped += 1;
                    }
                }
                if out.forwarder.wants_keyframe() {
                    keyframe_wanted = true;
                }
            }
        }
        if forwarded {
            self.last_forwarded = Some(track_id);
        }
        if keyframe_wanted && kind == MediaKind::Video {
            // Ask for a keyframe on every layer someone waits for.
            let targets: Vec<u8> = self
                .sessions
                .iter()
                .flat_map(|s| s.outs.iter())
                .filter(|o| o.track == Some(track_id) && o.forwarder.wants_keyframe())
                .map(|o| o.forwarder.target_layer())
                .collect();
            for t in targets {
                self.request_keyframe(now, track_id, t, KeyframeRequestKind::Pli);
            }
        }
    }

    fn sessions_codec_params(&self, i: usize, pt: u8) -> Option<str0m::format::PayloadParams> {
        self.sessions[i]
            .rtc
            .codec_config()
            .find(|p| *p.pt() == pt)
            .cloned()
    }

    /// Finds (track, layer) for an SSRC of publisher session `i`, learning new SSRCs from the
    /// engine's stream table.
    fn locate(&mut self, i: usize, ssrc: Ssrc) -> Option<(u64, u8)> {
        let s = &mut self.sessions[i];
        if let Some(&(_, t, l)) = s.ssrc_map.iter().find(|(x, _, _)| *x == ssrc) {
            return Some((t, l));
        }
        let (mid, rid) = {
            let mut api = s.rtc.direct_api();
            let rx = api.stream_rx(&ssrc)?;
            (rx.mid(), rx.rid())
        };
        let publisher = s.id;
        let track = self
            .tracks
            .iter_mut()
            .find(|t| t.publisher == publisher && t.mid == mid)?;
        let layer = match track.layers.iter().position(|l| l.rid == rid) {
            Some(l) => l,
            None => {
                if track.layers.len() >= MAX_LAYERS {
                    return None;
                }
                track.layers.push(Layer {
                    rid,
                    meter: BitrateMeter::default(),
                    jitter: Jitter::default(),
                    stats: IngressStats {
                        rid: rid.map(|r| r.to_string()),
                        ..IngressStats::default()
                    },
                    last_keyframe_request: None,
                });
                track.layers.len() - 1
            }
        } as u8;
        let id = track.id;
        if s.ssrc_map.len() < 16 {
            s.ssrc_map.push((ssrc, id, layer));
        }
        Some((id, layer))
    }

    fn request_keyframe(&mut self, now: Instant, track: u64, layer: u8, kind: KeyframeRequestKind) {
        let interval = self.cfg.keyframe_interval;
        let Some(t) = self.tracks.iter_mut().find(|t| t.id == track) else {
            return;
        };
        let Some(l) = t.layers.get_mut(usize::from(layer)) else {
            return;
        };
        if l.last_keyframe_request
            .is_some_and(|at| now.saturating_duration_since(at) < interval)
        {
            return;
        }
        l.last_keyframe_request = Some(now);
        let (publisher, mid, rid) = (t.publisher, t.mid, l.rid);
        if let Some(p) = self.sessions.iter_mut().find(|s| s.id == publisher) {
            if let Some(rx) = p.rtc.direct_api().stream_rx_by_mid(mid, rid) {
                rx.request_keyframe(kind);
                p.dirty = true;
            }
        }
    }

    /// Re-picks the simulcast layer of each video track subscriber `i` receives.
    fn select_layers(&mut self, i: usize, now: Instant) {
        let Some(bwe) = self.sessions[i].bwe else {
            return;
        };
        // Audio first: its measured rate (or a floor) comes off the budget.
        let mut audio = 0u64;
        for out in &self.sessions[i].outs {
            if out.kind == MediaKind::Audio {
                if let Some(t) = out.track.and_then(|id| self.track(id)) {
                    let rate = t.layers.first().and_then(|l| l.meter.bps(now));
                    audio += rate.unwrap_or(64_000);
                }
            }
        }
        let mut video_outs = 0u64;
        for out in &self.sessions[i].outs {
            if out.kind == MediaKind::Video && out.track.is_some() {
                video_outs += 1;
            }
        }
        let budget_total = bwe.saturating_sub(audio);
        let per_video = budget_total.checked_div(video_outs).unwrap_or(budget_total);
        let mut desired = audio;
        let mut minimum = audio;
        let mut changes = Vec::new();
        for (k, out) in self.sessions[i].outs.iter().enumerate() {
            if out.kind != MediaKind::Video {
                continue;
            }
            let Some(t) = out.track.and_then(|id| self.track(id)) else {
                continue;
            };
            if t.layers.len() <= 1 {
                if let Some(rate) = t.layers.first().and_then(|l| l.meter.bps(now)) {
                    desired += rate;
                    minimum += rate;
                }
                continue;
            }
            // Quality order: by measured bitrate.
            let mut order: Vec<(u64, u8)> = t
                .layers
                .iter()
                .enumerate()
                .filter_map(|(idx, l)| l.meter.bps(now).map(|b| (b, idx as u8)))
                .collect();
            order.sort_unstable();
            let rates: Vec<Option<u64>> = order.iter().map(|(b, _)| Some(*b)).collect();
            let current_rank = order
                .iter()
                .position(|(_, idx)| Some(*idx) == out.forwarder.current_layer())
                .map(|r| r as u8);
            if let Some(top) = order.last() {
                desired += top.0;
            }
            if let Some(low) = order.first() {
                minimum += low.0;
            }
            if let Some(rank) = simulcast::choose_layer(&rates, per_video, current_rank) {
                let layer = order[usize::from(rank)].1;
                if layer != out.forwarder.target_layer() {
                    changes.push((k, layer));
                }
            }
        }
        // Single-layer video the link cannot carry is paused rather than left to queue in the
        // pacer for seconds; device cameras are served first.
        let mut resumed = Vec::new();
        let mut video: Vec<(usize, bool, bool, Option<u64>)> = Vec::new();
        for (k, out) in self.sessions[i].outs.iter().enumerate() {
            if out.kind != MediaKind::Video {
                continue;
            }
            let Some(t) = out.track.and_then(|id| self.track(id)) else {
                continue;
            };
            let layer = changes
                .iter()
                .find(|(c, _)| *c == k)
                .map_or(out.forwarder.target_layer(), |(_, l)| *l);
            let rate = t
                .layers
                .get(usize::from(layer))
                .and_then(|l| l.meter.bps(now));
            video.push((
                k,
                t.class == TrackClass::DeviceCamera,
                t.layers.len() > 1,
                rate,
            ));
        }
        video.sort_by_key(|(_, device, _, _)| !device);
        // str0m paces at 1.1 × the estimate.
        let mut left = (bwe + bwe / 10).saturating_sub(audio);
        let s = &mut self.sessions[i];
        // The loss the subscriber reports on what still flows: a shortfall counts only with it.
        let loss =
            (s.outs.iter().filter(|o| !o.pause.is_paused())).fold(0f32, |m, o| m.max(o.stats.loss));
        let link = Link {
            estimate: bwe,
            loss,
        };
        for (k, _, simulcast, rate) in video {
            let Some(rate) = rate else { continue };
            let out = &mut s.outs[k];
            if simulcast {
                left = left.saturating_sub(rate);
                continue;
            }
            let (change, forwarded) = out.pause.update(now, rate, left, link);
            if forwarded {
                left = left.saturating_sub(rate);
            }
            match change {
                Change::Paused => out.stats.pauses += 1,
                Change::Resumed => {
                    out.forwarder.reset_source();
                    if let Some(track) = out.track {
                        resumed.push(track);
                    }
                }
                Change::None => {}
            }
            out.stats.paused = out.pause.is_paused();
        }
        for (k, layer) in &changes {
            s.outs[*k].forwarder.set_target(*layer);
        }
        s.rtc.bwe().set_bitrate(
            Bitrate::bps(minimum.max(1)),
            Bitrate::bps(desired.max(minimum) + 200_000),
        );
        let requests: Vec<(u64, u8)> = changes
            .iter()
            .filter_map(|(k, layer)| s.outs[*k].track.map(|t| (t, *layer)))
            .collect();
        for (track, layer) in requests {
            self.request_keyframe(now, track, layer, KeyframeRequestKind::Pli);
        }
        for track in resumed {
            self.request_keyframe(now, track, 0, KeyframeRequestKind::Pli);
        }
    }

    /// Renegotiates every server-negotiated subscriber that has something new.
    fn renegotiate_all(&mut self) {
        for i in 0..self.sessions.len() {
            self.renegotiate(i);
        }
    }

    /// Makes a new offer for session `i` if it is server-negotiated and tracks changed (or
    /// marks it for later when an offer is already out).
    fn renegotiate(&mut self, i: usize) {
        let Some(n) = self.sessions[i].negotiation.as_ref() else {
            return;
        };
        // One offer out at a time: what changes meanwhile goes into the next one, made when
        // the outstanding one is answered.
        if n.pending.is_some() {
            return;
        }
        if let Some(offer) = self.offer_changes(i, None) {
            self.offers.push(offer);
        }
    }

    /// Builds an offer of session `i`'s pending changes: new tracks it may receive, tracks to
    /// stop, an ICE restart. `first`: the first offer (made even without tracks), with the
    /// `telemetry` data channels if `Some(true)`.
    fn offer_changes(&mut self, i: usize, first: Option<bool>) -> Option<Offer> {
        let adds: Vec<u64> = {
            let s = &self.sessions[i];
            let pending_adds: &[(Mid, MediaKind, u64)] = s
                .negotiation
                .as_ref()
                .and_then(|n| n.pending.as_ref())
                .map_or(&[], |p| &p.adds);
            self.tracks
                .iter()
                .filter(|t| {
                    t.publisher_identity != s.identity
                        && s.from.as_ref().is_none_or(|f| *f == t.publisher_identity)
                        && !s.outs.iter().any(|o| o.track == Some(t.id))
                        && !pending_adds.iter().any(|(_, _, id)| *id == t.id)
                })
                .map(|t| t.id)
                .collect()
        };
        let tracks: Vec<(u64, MediaKind, Label, Identity, TrackInfo)> = adds
            .iter()
            .filter_map(|id| self.track(*id))
            .map(|t| {
                (
                    t.id,
                    t.kind,
                    t.label.clone(),
                    t.publisher_identity.clone(),
                    t.info(),
                )
            })
            .collect();
        let s = &mut self.sessions[i];
        let n = s.negotiation.as_mut()?;
        let stops = std::mem::take(&mut n.to_stop);
        let restart = std::mem::take(&mut n.restart_ice);
        if first.is_none() && tracks.is_empty() && stops.is_empty() && !restart {
            return None;
        }
        let id = n.next_id;
        let mut api = s.rtc.sdp_api();
        if first == Some(true) {
            let reliable = api.add_channel_with_config(ChannelConfig {
                label: TELEMETRY_LABEL.into(),
                ordered: true,
                reliability: Reliability::Reliable,
                ..ChannelConfig::default()
            });
            let lossy = api.add_channel_with_config(ChannelConfig {
                label: TELEMETRY_LABEL.into(),
                ordered: false,
                reliability: Reliability::MaxRetransmits { retransmits: 0 },
                protocol: "lossy".into(),
                ..ChannelConfig::default()
            });
            s.telemetry = Some(Telemetry::new(reliable, lossy));
        }
        let mut added = Vec::new();
        let mut pending_adds = Vec::new();
        for (track, kind, label, from, info) in tracks {
            let mid = api.add_media(
                kind,
                Direction::SendOnly,
                Some(label.stream.clone()),
                Some(label.track.clone()),
                None,
            );
            added.push(OfferedTrack {
                mid: mid.to_string(),
                from,
                track: info,
            });
            pending_adds.push((mid, kind, track));
        }
        for (mid, _) in &stops {
            api.stop_media(*mid);
        }
        let new_creds = restart.then(|| api.ice_restart(true));
        let (sdp, token) = api.apply()?;
        let n = s.negotiation.as_mut()?;
        n.next_id += 1;
        let ice_ufrag = match new_creds {
            Some(c) => c.ufrag,
            None => s.rtc.direct_api().local_ice_credentials().ufrag,
        };
        let offer = Offer {
            session: s.id,
            id,
            sdp: sdp.to_sdp_string(),
            added,
            removed: stops.into_iter().map(|(_, t)| t).collect(),
            ice_ufrag,
        };
        let n = s.negotiation.as_mut()?;
        n.pending = Some(Pending {
            offer: offer.clone(),
            token,
            adds: pending_adds,
        });
        Some(offer)
    }

    /// Ends tracks: unbinds them from subscribers' slots (stopping the m-lines of
    /// server-negotiated subscribers in their next offer) and rebinds free WHEP slots.
    fn remove_tracks(&mut self, gone: &[u64]) {
        if gone.is_empty() {
            return;
        }
        let infos: Vec<(u64, Identity, TrackInfo)> = self
            .tracks
            .iter()
            .filter(|t| gone.contains(&t.id))
            .map(|t| (t.id, t.publisher_identity.clone(), t.info()))
            .collect();
        self.tracks.retain(|t| !gone.contains(&t.id));
        for s in &mut self.sessions {
            if let Some(n) = &mut s.negotiation {
                // Tracks still waiting in an unanswered offer are stopped after it.
                if let Some(p) = &mut n.pending {
                    for (mid, _, track) in &p.adds {
                        if let Some((_, from, info)) = infos.iter().find(|x| x.0 == *track) {
                            n.to_stop.push((
                                *mid,
                                OfferedTrack {
                                    mid: mid.to_string(),
                                    from: from.clone(),
                                    track: info.clone(),
                                },
                            ));
                        }
                    }
                    p.adds.retain(|(_, _, t)| !gone.contains(t));
                }
                let mut k = 0;
                while k < s.outs.len() {
                    let out = &s.outs[k];
                    if let Some((_, from, info)) =
                        out.track.and_then(|t| infos.iter().find(|x| x.0 == t))
                    {
                        n.to_stop.push((
                            out.mid,
                            OfferedTrack {
                                mid: out.mid.to_string(),
                                from: from.clone(),
                                track: info.clone(),
                            },
                        ));
                        s.outs.remove(k);
                    } else {
                        k += 1;
                    }
                }
                continue;
            }
            for out in &mut s.outs {
                if out.track.is_some_and(|t| gone.contains(&t)) {
                    out.track = None;
                    out.forwarder.reset_source();
                }
            }
        }
        self.bind_free_slots();
        self.renegotiate_all();
    }

    /// Binds tracks to subscribers' free slots of the same kind, in publish order.
    fn bind_free_slots(&mut self) {
        for s in 0..self.sessions.len() {
            if self.sessions[s].kind != SessionKind::Subscribe {
                continue;
            }
            if self.sessions[s].negotiation.is_some() {
                continue;
            }
            for t in 0..self.tracks.len() {
                let track = &self.tracks[t];
                let sub = &self.sessions[s];
                if track.publisher_identity == sub.identity
                    || sub
                        .from
                        .as_ref()
                        .is_some_and(|f| *f != track.publisher_identity)
                    || sub.outs.iter().any(|o| o.track == Some(track.id))
                {
                    continue;
                }
                let (id, kind) = (track.id, track.kind);
                let sub = &mut self.sessions[s];
                if let Some(out) = sub
                    .outs
                    .iter_mut()
                    .find(|o| o.track.is_none() && o.kind == kind)
                {
                    out.track = Some(id);
                    out.forwarder.reset_source();
                    out.forwarder.set_target(0);
                    out.pt_map = [0; 128];
                }
            }
        }
    }

    fn forget_tracks_of(&mut self, session: SessionId) {
        let gone: Vec<u64> = self
            .tracks
            .iter()
            .filter(|t| t.publisher == session)
            .map(|t| t.id)
            .collect();
        self.remove_tracks(&gone);
    }
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
