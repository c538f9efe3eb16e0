//! One simulated participant's connection: a WebRTC session (str0m in RTP mode, set up through
//! WHIP or WHEP) or a plain-RTP socket towards the bare relay. Sans-IO apart from its socket:
//! the [`engine`](crate::engine) feeds it datagrams and time.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpWrite, SeqNo};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};

use crate::clock;
use crate::media::{plain_rtp, Packet, Source, StreamClass, Trailer};
use crate::receiver::StreamStats;
use crate::tcp::{IceTransport, TcpLink};
use crate::turn::{Allocation, TurnCredentials};

/// Why a peer could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// Socket error.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// str0m refused the SDP.
    #[error("sdp: {0}")]
    Sdp(String),
    /// An ICE-TCP peer's answer has no passive TCP candidate.
    #[error(
        "the answer has no passive TCP candidate (a server without ICE-TCP, or media.tcp off)"
    )]
    NoTcpCandidate,
    /// The TCP connection to the server's passive candidate failed.
    #[error("{0}")]
    Tcp(#[from] crate::tcp::TcpLinkError),
    /// ICE through TURN without a TURN server given.
    #[error("--transport turn needs a TURN server")]
    NoTurnServer,
    /// The answer has no UDP host candidate to relay to.
    #[error("the answer has no UDP candidate to relay to")]
    NoUdpCandidate,
    /// The TURN allocation or channel failed.
    #[error("{0}")]
    Turn(#[from] crate::turn::TurnError),
}

/// What a WebRTC peer does.
#[derive(Debug, Clone)]
pub enum Role {
    /// Publishes these streams (WHIP, or a Janus publisher).
    Publish(Vec<(u32, StreamClass)>),
    /// Receives `video` video and `audio` audio tracks (WHEP).
    Subscribe {
        /// Video m-lines offered.
        video: usize,
        /// Audio m-lines offered.
        audio: usize,
    },
}

enum Transport {
    WebRtc {
        rtc: Box<Rtc>,
        /// Mid and payload type for each source.
        mids: Vec<(Mid, Pt)>,
    },
    Plain {
        relay: SocketAddr,
        joined: bool,
        group: u32,
    },
}

/// One participant connection.
pub struct Peer {
    /// A name for reports.
    pub name: String,
    /// The consultation (room) it belongs to.
    pub consultation: usize,
    socket: UdpSocket,
    local: SocketAddr,
    /// ICE over TCP (RFC 4571) instead of the UDP socket, once connected.
    tcp: Option<TcpLink>,
    /// ICE through a TURN relay: the socket talks to the TURN server only.
    turn: Option<Allocation>,
    /// ChannelData being sent.
    wrap: Vec<u8>,
    transport: Transport,
    sources: Vec<Source>,
    /// Received streams, by stream id.
    pub rx: HashMap<u32, StreamStats>,
    /// Connected (ICE + DTLS) or joined the relay.
    pub connected: bool,
    /// When it connected.
    pub connected_at: Option<Instant>,
    /// When its setup began (its offer was made, or it asked Janus for one), see
    /// [`Peer::started_at`].
    started: Instant,
    /// When the first media packet reached it.
    first_media_at: Option<Instant>,
    /// The error that ended it.
    pub failed: Option<String>,
    rtc_timeout: Instant,
    /// Datagrams the socket refused (send buffer full).
    pub tx_errors: u64,
    /// Keyframe requests received.
    pub keyframe_requests: u64,
    scratch: Vec<Packet>,
}

/// An offer being prepared: the peer and its SDP offer, waiting for the answer.
pub struct PendingPeer {
    peer: Peer,
    pending: Option<str0m::change::SdpPendingOffer>,
    /// The SDP offer to send.
    pub offer: String,
    /// The transport its ICE uses.
    ice: IceTransport,
}

impl Peer {
    /// A WebRTC peer with a fresh loopback socket, and its SDP offer.
    pub fn webrtc_offer(
        name: String,
        consultation: usize,
        role: &Role,
    ) -> Result<PendingPeer, PeerError> {
        Peer::webrtc_offer_over(name, consultation, role, IceTransport::Udp, None)
    }

    /// [`Peer::webrtc_offer`] with ICE over `ice`: over TCP the offer holds only an active TCP
    /// candidate, and [`PendingPeer::accept`] connects to the answer's passive one; through
    /// TURN (`turn` given) the offer holds only the relayed candidate of an allocation made
    /// here, and [`PendingPeer::accept`] binds a channel to the answer's UDP candidate.
    pub fn webrtc_offer_over(
        name: String,
        consultation: usize,
        role: &Role,
        ice: IceTransport,
        turn: Option<&TurnCredentials>,
    ) -> Result<PendingPeer, PeerError> {
        let (socket, local) = bind_socket()?;
        let now = Instant::now();
        let mut rtc = rtc_config().build(now);
        let mut allocation = None;
        let candidate = match ice {
            IceTransport::Udp => Candidate::host(local, "udp"),
            IceTransport::Turn => {
                let creds = turn.ok_or(PeerError::NoTurnServer)?;
                let a = Allocation::allocate(&socket, creds)?;
                let c = Candidate::relayed(a.relayed, local, "udp");
                allocation = Some(a);
                c
            }
            IceTransport::Tcp => Candidate::builder()
                .tcp()
                .host(SocketAddr::new(local.ip(), crate::tcp::ACTIVE_PORT))
                .tcptype(str0m::net::TcpType::Active)
                .build(),
        };
        rtc.add_local_candidate(candidate.map_err(|e| PeerError::Sdp(e.to_string()))?);
        let mut api = rtc.sdp_api();
        let mut sources = Vec::new();
        let mut offered = Vec::new();
        match role {
            Role::Publish(streams) => {
                for &(id, class) in streams {
                    let kind = if class.is_video() {
                        MediaKind::Video
                    } else {
                        MediaKind::Audio
                    };
                    let mid = api.add_media(
                        kind,
                        Direction::SendOnly,
                        Some(name.clone()),
                        Some(class.label().into()),
                        None,
                    );
                    offered.push(mid);
                    sources.push(Source::new(id, class, now));
                }
            }
            Role::Subscribe { video, audio } => {
                for _ in 0..*video {
                    api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
                }
                for _ in 0..*audio {
                    api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
                }
            }
        }
        let (offer, pending) = api
            .apply()
            .ok_or_else(|| PeerError::Sdp("offer has no media".into()))?;
        let mids = offered.into_iter().map(|m| (m, Pt::from(0))).collect();
        let mut p = PendingPeer {
            peer: Peer::new(
                name,
                consultation,
                socket,
                local,
                Transport::WebRtc {
                    rtc: Box::new(rtc),
                    mids,
                },
                sources,
            ),
            pending: Some(pending),
            offer: offer.to_sdp_string(),
            ice,
        };
        p.peer.turn = allocation;
        Ok(p)
    }

    /// A WebRTC peer answering a remote offer (Janus subscribers); returns the peer and answer.
    pub fn webrtc_answer(
        name: String,
        consultation: usize,
        offer: &str,
    ) -> Result<(Peer, String), PeerError> {
        let (socket, local) = bind_socket()?;
        let now = Instant::now();
        let mut rtc = rtc_config().build(now);
        rtc.add_local_candidate(
            Candidate::host(local, "udp").map_err(|e| PeerError::Sdp(e.to_string()))?,
        );
        let offer = SdpOffer::from_sdp_string(offer).map_err(|e| PeerError::Sdp(e.to_string()))?;
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| PeerError::Sdp(e.to_string()))?;
        let peer = Peer::new(
            name,
            consultation,
            socket,
            local,
            Transport::WebRtc {
                rtc: Box::new(rtc),
                mids: Vec::new(),
            },
            Vec::new(),
        );
        Ok((peer, answer.to_sdp_string()))
    }

    /// A plain-RTP peer for the relay: publishes `streams` (maybe none) and receives what the
    /// relay forwards within `group`.
    pub fn plain(
        name: String,
        consultation: usize,
        relay: SocketAddr,
        group: u32,
        streams: &[(u32, StreamClass)],
    ) -> Result<Peer, PeerError> {
        let (socket, local) = bind_socket()?;
        let now = Instant::now();
        let sources = streams
            .iter()
            .map(|&(id, class)| Source::new(id, class, now))
            .collect();
        Ok(Peer::new(
            name,
            consultation,
            socket,
            local,
            Transport::Plain {
                relay,
                joined: false,
                group,
            },
            sources,
        ))
    }

    fn new(
        name: String,
        consultation: usize,
        socket: UdpSocket,
        local: SocketAddr,
        transport: Transport,
        sources: Vec<Source>,
    ) -> Peer {
        Peer {
            name,
            consultation,
            socket,
            local,
            tcp: None,
            turn: None,
            wrap: Vec::with_capacity(1500),
            transport,
            sources,
            rx: HashMap::new(),
            connected: false,
            connected_at: None,
            started: Instant::now(),
            first_media_at: None,
            failed: None,
            rtc_timeout: Instant::now(),
            tx_errors: 0,
            keyframe_requests: 0,
            scratch: Vec::new(),
        }
    }

    /// Moves the start of its setup back to `at` (a Janus subscriber's setup starts with the
    /// subscribe request, before the offer its peer answers exists).
    pub fn started_at(&mut self, at: Instant) {
        self.started = at;
    }

    /// Time from the start of its setup to the first media packet it received, if any.
    pub fn time_to_first_media(&self) -> Option<Duration> {
        self.first_media_at
            .map(|t| t.saturating_duration_since(self.started))
    }

    /// The socket's file descriptor (for epoll).
    pub fn fd(&self) -> i32 {
        match &self.tcp {
            Some(link) => link.fd(),
            None => self.socket.as_raw_fd(),
        }
    }

    /// Packets sent by this peer's sources.
    pub fn sent(&self) -> u64 {
        self.sources.iter().map(|s| u64::from(s.sent())).sum()
    }

    /// When the peer next needs [`Peer::tick`].
    pub fn deadline(&self) -> Instant {
        if self.failed.is_some() {
            return Instant::now() + Duration::from_secs(3600);
        }
        let mut d = match self.transport {
            Transport::WebRtc { .. } => self.rtc_timeout,
            Transport::Plain { joined, .. } if !joined => Instant::now(),
            Transport::Plain { .. } => Instant::now() + Duration::from_secs(1),
        };
        if self.connected && self.failed.is_none() {
            for s in &self.sources {
                d = d.min(s.next);
            }
        }
        d
    }

    /// Reads every datagram waiting on the socket (at most `budget`); `drop` decides loss
    /// emulation for media datagrams.
    pub fn read(&mut self, buf: &mut [u8], budget: usize, drop: &mut impl FnMut() -> bool) {
        if self.tcp.is_some() {
            return self.read_tcp(buf, drop);
        }
        for _ in 0..budget {
            let (n, from) = match self.socket.recv_from(buf) {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            let now = Instant::now();
            // Through TURN: the server's packets arrive as ChannelData from the TURN server,
            // addressed (for str0m) to the relayed candidate.
            let (from, to, data) = match &self.turn {
                Some(a) => match (crate::turn::from_channel(&buf[..n]), a.peer) {
                    (Some(d), Some(peer)) if from == a.server => (peer, a.relayed, d),
                    _ => continue,
                },
                None => (from, self.local, &buf[..n]),
            };
            if self.connected && is_rtp_or_rtcp(data) && drop() {
                continue;
            }
            match &mut self.transport {
                Transport::WebRtc { rtc, .. } => {
                    let Ok(r) = Receive::new(Protocol::Udp, from, to, data) else {
                        continue;
                    };
                    if let Err(e) = rtc.handle_input(Input::Receive(now, r)) {
                        self.failed = Some(e.to_string());
                        return;
                    }
                    self.drain(now, drop);
                }
                Transport::Plain { .. } => {
                    if let Some(t) = Trailer::read(data) {
                        self.first_media_at.get_or_insert(now);
                        self.rx.entry(t.stream).or_default().record(
                            t.seq,
                            t.sent_ns,
                            clock::nanos(now),
                        );
                    }
                }
            }
        }
    }

    /// Reads what the TCP connection has and hands each whole frame to str0m.
    fn read_tcp(&mut self, buf: &mut [u8], drop: &mut impl FnMut() -> bool) {
        let Some(link) = self.tcp.as_mut() else {
            return;
        };
        if let Err(e) = link.fill(buf) {
            self.failed = Some(e.to_string());
            return;
        }
        loop {
            let Some(link) = self.tcp.as_mut() else {
                return;
            };
            let (from, to) = (link.remote, link.local);
            let n = match link.next_frame(buf) {
                Ok(Some(n)) => n,
                Ok(None) => return,
                Err(e) => {
                    self.failed = Some(e.to_string());
                    return;
                }
            };
            let now = Instant::now();
            let data = &buf[..n];
            if self.connected && is_rtp_or_rtcp(data) && drop() {
                continue;
            }
            let Transport::WebRtc { rtc, .. } = &mut self.transport else {
                return;
            };
            let Ok(r) = Receive::new(Protocol::Tcp, from, to, data) else {
                continue;
            };
            if let Err(e) = rtc.handle_input(Input::Receive(now, r)) {
                self.failed = Some(e.to_string());
                return;
            }
            self.drain(now, drop);
        }
    }

    /// Sends the media due and handles the engine's timeout.
    pub fn tick(&mut self, now: Instant, drop: &mut impl FnMut() -> bool) {
        if self.failed.is_some() {
            return;
        }
        if let Transport::Plain {
            relay,
            joined,
            group,
        } = &mut self.transport
        {
            if !*joined {
                let mut hello = b"JOIN".to_vec();
                hello.extend_from_slice(&group.to_be_bytes());
                if self.socket.send_to(&hello, *relay).is_ok() {
                    *joined = true;
                    self.connected = true;
                    self.connected_at = Some(now);
                    for (i, s) in self.sources.iter_mut().enumerate() {
                        s.next = now + stagger(s.stream, i);
                    }
                }
            }
        }
        if let Some(link) = self.tcp.as_mut() {
            if let Err(e) = link.flush() {
                self.failed = Some(e.to_string());
                return;
            }
        }
        if self.connected {
            let mut pkts = std::mem::take(&mut self.scratch);
            for i in 0..self.sources.len() {
                while self.sources[i].next <= now {
                    pkts.clear();
                    let stamp = Instant::now();
                    self.sources[i].next_packets(stamp, &mut pkts);
                    let class = self.sources[i].class;
                    let stream = self.sources[i].stream;
                    self.send_media(i, class, stream, &mut pkts, drop);
                }
            }
            self.scratch = pkts;
        }
        if let Transport::WebRtc { rtc, .. } = &mut self.transport {
            if self.rtc_timeout <= now {
                if let Err(e) = rtc.handle_input(Input::Timeout(now)) {
                    self.failed = Some(e.to_string());
                    return;
                }
            }
        }
        self.drain(now, drop);
    }

    fn send_media(
        &mut self,
        i: usize,
        class: StreamClass,
        stream: u32,
        pkts: &mut Vec<Packet>,
        drop: &mut impl FnMut() -> bool,
    ) {
        match &mut self.transport {
            Transport::WebRtc { rtc, mids } => {
                let Some(&(mid, pt)) = mids.get(i) else {
                    return;
                };
                let mut api = rtc.direct_api();
                let Some(tx) = api.stream_tx_by_mid(mid, None) else {
                    return;
                };
                for p in pkts.drain(..) {
                    let w = RtpWrite::new(
                        pt,
                        SeqNo::from(p.rtp_seq),
                        p.rtp_ts,
                        clock::instant(Trailer::read(&p.payload).map_or(0, |t| t.sent_ns)),
                        Arc::<[u8]>::from(p.payload),
                    )
                    .marker(p.marker)
                    .nackable(class.is_video());
                    tx.write_rtp(w);
                }
            }
            Transport::Plain { relay, .. } => {
                let pt = if class.is_video() { 96 } else { 111 };
                for p in pkts.drain(..) {
                    if drop() {
                        continue;
                    }
                    let d = plain_rtp(pt, stream, &p);
                    if self.socket.send_to(&d, *relay).is_err() {
                        self.tx_errors += 1;
                    }
                }
            }
        }
    }

    fn drain(&mut self, now: Instant, drop: &mut impl FnMut() -> bool) {
        let Transport::WebRtc { rtc, mids } = &mut self.transport else {
            return;
        };
        loop {
            match rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.rtc_timeout = t;
                    return;
                }
                Ok(Output::Transmit(t)) => {
                    if self.connected && is_rtp_or_rtcp(&t.contents) && drop() {
                        continue;
                    }
                    let sent = match (&mut self.tcp, t.proto) {
                        (Some(link), Protocol::Tcp) => match link.send(&t.contents) {
                            Ok(sent) => sent,
                            Err(e) => {
                                self.failed = Some(e.to_string());
                                return;
                            }
                        },
                        (None, Protocol::Udp) => match &self.turn {
                            Some(a) => {
                                a.peer == Some(t.destination)
                                    && crate::turn::channel_data(&t.contents, &mut self.wrap)
                                        .is_some()
                                    && self.socket.send_to(&self.wrap, a.server).is_ok()
                            }
                            None => self.socket.send_to(&t.contents, t.destination).is_ok(),
                        },
                        _ => false,
                    };
                    if !sent {
                        self.tx_errors += 1;
                    }
                }
                Ok(Output::Event(e)) => match e {
                    Event::Connected => {
                        self.connected = true;
                        self.connected_at = Some(now);
                        // Payload types as negotiated.
                        let vp8 = rtc
                            .codec_config()
                            .find(|p| p.spec().codec == Codec::Vp8)
                            .map(|p| p.pt());
                        let opus = rtc
                            .codec_config()
                            .find(|p| p.spec().codec == Codec::Opus)
                            .map(|p| p.pt());
                        for (i, (_, pt)) in mids.iter_mut().enumerate() {
                            let video = self.sources[i].class.is_video();
                            if let Some(p) = if video { vp8 } else { opus } {
                                *pt = p;
                            }
                        }
                        for (i, s) in self.sources.iter_mut().enumerate() {
                            s.next = now + stagger(s.stream, i);
                        }
                    }
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        self.failed = Some("ICE disconnected".into());
                    }
                    Event::RtpPacket(pkt) => {
                        if let Some(t) = Trailer::read(&pkt.payload) {
                            self.first_media_at.get_or_insert(now);
                            self.rx.entry(t.stream).or_default().record(
                                t.seq,
                                t.sent_ns,
                                clock::nanos(pkt.timestamp),
                            );
                        }
                    }
                    Event::KeyframeRequest(req) => {
                        self.keyframe_requests += 1;
                        if let Some(i) = mids.iter().position(|(m, _)| *m == req.mid) {
                            self.sources[i].request_keyframe();
                        }
                    }
                    _ => {}
                },
                Err(e) => {
                    self.failed = Some(e.to_string());
                    return;
                }
            }
        }
    }
}

impl PendingPeer {
    /// Applies the server's SDP answer; the peer is then ready for the engine.
    pub fn accept(mut self, answer: &str) -> Result<Peer, PeerError> {
        let answer_sdp = answer;
        let answer =
            SdpAnswer::from_sdp_string(answer).map_err(|e| PeerError::Sdp(e.to_string()))?;
        let Transport::WebRtc { rtc, .. } = &mut self.peer.transport else {
            return Err(PeerError::Sdp("not a WebRTC peer".into()));
        };
        let pending = self
            .pending
            .take()
            .ok_or_else(|| PeerError::Sdp("answer already applied".into()))?;
        rtc.sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| PeerError::Sdp(e.to_string()))?;
        if let Some(a) = self.peer.turn.as_mut() {
            let peer = crate::turn::udp_candidate(answer_sdp).ok_or(PeerError::NoUdpCandidate)?;
            a.bind(&self.peer.socket, peer)?;
        }
        if self.ice == IceTransport::Tcp {
            let remote =
                crate::tcp::passive_candidate(answer_sdp).ok_or(PeerError::NoTcpCandidate)?;
            let local = SocketAddr::new(self.peer.local.ip(), crate::tcp::ACTIVE_PORT);
            self.peer.tcp = Some(TcpLink::connect(local, remote)?);
        }
        Ok(self.peer)
    }
}

fn rtc_config() -> RtcConfig {
    RtcConfig::new()
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_vp8(true)
        .enable_opus(true, false)
        .set_stats_interval(None)
}

/// Start offsets spread streams over a frame interval so peers do not all send in the same
/// millisecond.
fn stagger(stream: u32, i: usize) -> Duration {
    Duration::from_micros(u64::from(stream.wrapping_mul(7_919) % 33_000) + i as u64 * 1_000)
}

fn is_rtp_or_rtcp(d: &[u8]) -> bool {
    d.first().is_some_and(|b| (128..=191).contains(b))
}

/// The IPv4 address new peers bind to (127.0.0.1 unless a target needs another, see
/// [`set_bind_ip`]).
static BIND_IP: AtomicU32 = AtomicU32::new(0x7f00_0001);

/// Sets the address new peers' sockets bind to.
pub fn set_bind_ip(ip: Ipv4Addr) {
    BIND_IP.store(u32::from(ip), Ordering::Relaxed);
}

fn bind_socket() -> Result<(UdpSocket, SocketAddr), PeerError> {
    let ip = Ipv4Addr::from(BIND_IP.load(Ordering::Relaxed));
    let socket = UdpSocket::bind((ip, 0))?;
    socket.set_nonblocking(true)?;
    set_buffers(&socket, 1 << 20);
    let local = socket.local_addr()?;
    Ok((socket, local))
}

/// Asks for `bytes` of socket send and receive buffer (capped by the kernel's limits).
pub fn set_buffers(socket: &UdpSocket, bytes: i32) {
    for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        // SAFETY: setsockopt reads an int from a valid pointer of the given length.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                &bytes as *const i32 as *const libc::c_void,
                std::mem::size_of::<i32>() as libc::socklen_t,
            );
        }
    }
}
