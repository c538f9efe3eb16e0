//! A deterministic harness for the sans-IO room: real str0m peers (ICE, DTLS-SRTP, RTCP, TWCC)
//! talking to a [`Room`] through simulated links with fake time, capacity and queueing.
//!
//! No sockets and no clock: `Sim::run_until` advances time event by event, so a 45 s scenario
//! runs in a fraction of that and gives the same result every time.

#![allow(dead_code)]

// The crate's own counting allocator (the same file its unit tests use).
#[path = "../../../src/alloc_counter.rs"]
pub mod alloc;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cabine_proto::{Identity, Role, RoomId};
use cabine_sfu::room::{
    DataIn, JoinRequest, Offer, OfferRequest, Output as RoomOutput, Removed, Room, RoomConfig,
    SessionId, SessionKind,
};
use str0m::bwe::Bitrate;
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, MediaTime, Mid, Rid, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

/// The room's media address in the simulation.
pub const ROOM_ADDR: &str = "10.0.0.1:7882";

/// A one-way link: propagation delay, optional capacity (bits/s) with a bounded queue.
pub struct Link {
    pub delay: Duration,
    pub rate_bps: Option<u64>,
    pub max_queue: Duration,
    busy_until: Option<Instant>,
    queue: VecDeque<(Instant, SocketAddr, SocketAddr, Vec<u8>)>,
    pub dropped: u64,
    /// Extra delay per datagram, uniform in `0..jitter` (order kept), from a seeded generator.
    pub jitter: Duration,
    rng: rand::rngs::StdRng,
    last_arrival: Option<Instant>,
}

impl Link {
    pub fn new(delay_ms: u64) -> Self {
        Link {
            delay: Duration::from_millis(delay_ms),
            rate_bps: None,
            max_queue: Duration::from_millis(300),
            busy_until: None,
            queue: VecDeque::new(),
            dropped: 0,
            jitter: Duration::ZERO,
            rng: rand::SeedableRng::seed_from_u64(delay_ms),
            last_arrival: None,
        }
    }

    fn push(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, data: Vec<u8>) {
        let depart = match self.rate_bps {
            Some(rate) => {
                let start = self.busy_until.map_or(now, |b| b.max(now));
                if start.saturating_duration_since(now) > self.max_queue {
                    self.dropped += 1;
                    return;
                }
                let tx = Duration::from_secs_f64((data.len() + 28) as f64 * 8.0 / rate as f64);
                self.busy_until = Some(start + tx);
                start + tx
            }
            None => now,
        };
        let mut arrive = depart + self.delay;
        if !self.jitter.is_zero() {
            let j = rand::Rng::random_range(&mut self.rng, 0..self.jitter.as_micros() as u64);
            arrive = (arrive + Duration::from_micros(j)).max(self.last_arrival.unwrap_or(arrive));
        }
        self.last_arrival = Some(arrive);
        self.queue.push_back((arrive, from, to, data));
    }

    fn next(&self) -> Option<Instant> {
        self.queue.front().map(|q| q.0)
    }

    fn pop_due(&mut self, now: Instant) -> Option<(SocketAddr, SocketAddr, Vec<u8>)> {
        if self.queue.front().is_some_and(|q| q.0 <= now) {
            self.queue.pop_front().map(|(_, f, t, d)| (f, t, d))
        } else {
            None
        }
    }
}

/// A client peer: a str0m `Rtc` (full ICE, controlling) and its links to and from the room.
pub struct Peer {
    pub rtc: Rtc,
    pub addr: SocketAddr,
    pub session: SessionId,
    pub up: Link,
    pub down: Link,
    pub connected: bool,
    pub events: Vec<(Instant, Event)>,
}

/// The simulation: one room, some peers.
pub struct Sim {
    pub now: Instant,
    pub room: Room,
    pub peers: Vec<Peer>,
    room_addr: SocketAddr,
    /// Offers the room made, drained from its output.
    offers: Vec<Offer>,
    /// Data-channel messages the room received, drained from its output.
    data_in: Vec<DataIn>,
    /// Sessions the room removed by itself.
    pub ended: Vec<Removed>,
    /// How long before it is handled each datagram arrived (the shell's queueing, simulated).
    pub arrival_lag: Duration,
    /// Peers joined from now on report every RTP packet they receive
    /// (`Event::RawPacket`, see `RtcConfig::enable_raw_packets`).
    pub raw_packets: bool,
    /// Peers joined from now on (with [`Sim::join`]) run str0m in RTP mode: the test writes
    /// their RTP packets itself (`direct_api().stream_tx_by_mid(..).write_rtp(..)`).
    pub rtp_mode: bool,
    /// Peers joined from now on offer Opus with RFC 2198 RED (str0m then wraps what they send
    /// in RED and unwraps what they receive).
    pub red: bool,
    /// Heap allocations made inside the room's `handle_datagram` and `handle_timeout` calls
    /// (this thread only; see [`alloc::allocations`]).
    pub room_allocations: u64,
}

impl Sim {
    pub fn new() -> Self {
        Sim::with_config(|_| {})
    }

    /// A simulation whose room has the default settings changed by `configure`.
    pub fn with_config(configure: impl FnOnce(&mut RoomConfig)) -> Self {
        let now = Instant::now();
        let room_addr: SocketAddr = ROOM_ADDR.parse().unwrap();
        let mut cfg = RoomConfig {
            candidate: room_addr,
            initial_bitrate: Bitrate::kbps(1_000),
            ..RoomConfig::default()
        };
        configure(&mut cfg);
        Sim {
            now,
            room: Room::new(RoomId::parse("sim").unwrap(), cfg),
            peers: Vec::new(),
            room_addr,
            offers: Vec::new(),
            data_in: Vec::new(),
            ended: Vec::new(),
            arrival_lag: Duration::ZERO,
            raw_packets: false,
            rtp_mode: false,
            red: false,
            room_allocations: 0,
        }
    }

    /// Adds a peer whose offer is built by `offer` and joins it to the room; returns its index.
    pub fn join<T>(
        &mut self,
        identity: &str,
        role: Role,
        kind: SessionKind,
        build: impl FnOnce(&mut str0m::change::SdpApi) -> T,
    ) -> Result<(usize, T), cabine_sfu::JoinError> {
        let i = self.peers.len();
        let addr: SocketAddr = format!("10.0.1.{}:5000", i + 1).parse().unwrap();
        let mut config = Rtc::builder()
            .enable_raw_packets(self.raw_packets)
            .set_rtp_mode(self.rtp_mode);
        if self.red {
            config = config.enable_opus(true, true);
        }
        let mut rtc = config.build(self.now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        let mut api = rtc.sdp_api();
        let built = build(&mut api);
        let (offer, pending) = api.apply().expect("offer has changes");
        let session = SessionId(100 + i as u64);
        let joined = self.room.join(
            self.now,
            JoinRequest {
                session,
                identity: Identity::parse(identity).unwrap(),
                role,
                kind,
                offer: offer.to_sdp_string(),
                from: None,
                ice_ufrag: format!("srv{i}"),
                ice_pwd: format!("serverpassword{i:08}"),
            },
        )?;
        let answer = SdpAnswer::from_sdp_string(&joined.answer).expect("answer parses");
        rtc.sdp_api()
            .accept_answer(pending, answer)
            .expect("answer accepted");
        self.peers.push(Peer {
            rtc,
            addr,
            session,
            up: Link::new(5),
            down: Link::new(5),
            connected: false,
            events: Vec::new(),
        });
        Ok((i, built))
    }

    /// Runs until `until`, calling `tick(sim)` whenever time advances (to write media).
    pub fn run_until(&mut self, until: Instant, mut tick: impl FnMut(&mut Sim) -> Option<Instant>) {
        loop {
            let next_tick = tick(self);
            // Drain peers' outputs, noting when each wants time to advance.
            let mut next = until;
            for p in &mut self.peers {
                loop {
                    match p.rtc.poll_output() {
                        Ok(Output::Timeout(t)) => {
                            next = next.min(t);
                            break;
                        }
                        Ok(Output::Transmit(t)) => {
                            p.up.push(self.now, p.addr, t.destination, t.contents.to_vec())
                        }
                        Ok(Output::Event(e)) => {
                            if matches!(e, Event::Connected) {
                                p.connected = true;
                            }
                            p.events.push((self.now, e));
                        }
                        Err(e) => panic!("peer error: {e:?}"),
                    }
                }
                for t in [p.up.next(), p.down.next()].into_iter().flatten() {
                    next = next.min(t);
                }
            }
            if let Some(t) = self.room.poll_timeout() {
                next = next.min(t);
            }
            if let Some(t) = next_tick {
                next = next.min(t);
            }
            self.now = self.now.max(next);
            if self.now >= until {
                return;
            }
            let now = self.now;
            // Deliver due datagrams.
            let mut to_room = Vec::new();
            for p in &mut self.peers {
                while let Some((from, to, data)) = p.up.pop_due(now) {
                    to_room.push((p.session, from, to, data));
                }
                while let Some((from, to, data)) = p.down.pop_due(now) {
                    if let Ok(r) = Receive::new(Protocol::Udp, from, to, &data) {
                        let _ = p.rtc.handle_input(Input::Receive(now, r));
                    }
                }
                let _ = p.rtc.handle_input(Input::Timeout(now));
            }
            for (session, from, to, data) in to_room {
                let arrival = now.checked_sub(self.arrival_lag).unwrap_or(now);
                let room = &mut self.room;
                let (allocated, ()) = alloc::allocations(|| {
                    room.handle_datagram(now, arrival, session, from, to, &data)
                });
                self.room_allocations += allocated;
                self.drain();
            }
            if self.room.poll_timeout().is_some_and(|t| t <= now) {
                let room = &mut self.room;
                let (allocated, ()) = alloc::allocations(|| room.handle_timeout(now));
                self.room_allocations += allocated;
                self.drain();
            }
        }
    }
}

impl Sim {
    /// Adds a subscriber the room negotiates with (the server offers, the peer answers at
    /// once); returns its index and the room's first offer.
    pub fn join_offered(&mut self, identity: &str, role: Role, telemetry: bool) -> (usize, Offer) {
        let i = self.peers.len();
        let addr: SocketAddr = format!("10.0.1.{}:5000", i + 1).parse().unwrap();
        let mut rtc = Rtc::builder()
            .enable_raw_packets(self.raw_packets)
            .build(self.now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        let session = SessionId(100 + i as u64);
        let offer = self
            .room
            .join_offering(
                self.now,
                OfferRequest {
                    session,
                    identity: Identity::parse(identity).unwrap(),
                    role,
                    from: None,
                    telemetry,
                    ice_ufrag: format!("srv{i}"),
                    ice_pwd: format!("serverpassword{i:08}"),
                },
            )
            .expect("offer made");
        self.peers.push(Peer {
            rtc,
            addr,
            session,
            up: Link::new(5),
            down: Link::new(5),
            connected: false,
            events: Vec::new(),
        });
        self.answer(&offer);
        (i, offer)
    }

    /// The peer of `offer.session` answers `offer`.
    pub fn answer(&mut self, offer: &Offer) {
        let now = self.now;
        let p = self
            .peers
            .iter_mut()
            .find(|p| p.session == offer.session)
            .expect("offer for a known peer");
        let sdp = SdpOffer::from_sdp_string(&offer.sdp).expect("offer parses");
        let answer = p.rtc.sdp_api().accept_offer(sdp).expect("offer accepted");
        self.room
            .accept_answer(now, offer.session, offer.id, &answer.to_sdp_string())
            .expect("answer accepted");
    }

    /// Sends a telemetry message through the room (see `Room::send_data`).
    pub fn send_data(&mut self, data: &[u8], reliable: bool) -> usize {
        let written = self.room.send_data(self.now, data, reliable);
        self.drain();
        written
    }

    /// Drains the room's output until its timeout: datagrams onto the peers' down links,
    /// offers, data and ended sessions kept for the test.
    pub fn drain(&mut self) {
        loop {
            match self.room.poll_output() {
                RoomOutput::Transmit(t) => {
                    if let Some(p) = self.peers.iter_mut().find(|p| p.addr == t.destination) {
                        p.down
                            .push(self.now, self.room_addr, t.destination, t.contents.to_vec());
                    }
                }
                RoomOutput::Offer(o) => self.offers.push(o),
                RoomOutput::Data(d) => self.data_in.push(d),
                RoomOutput::Ended(r) => self.ended.push(r),
                RoomOutput::Timeout(_) => return,
                _ => {}
            }
        }
    }

    /// Offers the room made since the last call.
    pub fn take_offers(&mut self) -> Vec<Offer> {
        self.drain();
        std::mem::take(&mut self.offers)
    }

    /// Data-channel messages the room received since the last call.
    pub fn take_data_in(&mut self) -> Vec<DataIn> {
        self.drain();
        std::mem::take(&mut self.data_in)
    }
}

/// Offer builder: one sendonly simulcast VP8 video with the given rids.
pub fn simulcast_video(api: &mut str0m::change::SdpApi, rids: &[&str]) -> Mid {
    let mut sim = Simulcast::new();
    for r in rids {
        sim.add_send_layer(SimulcastLayer::new(r));
    }
    api.add_media(
        MediaKind::Video,
        Direction::SendOnly,
        Some("kiosk".into()),
        Some("room-camera".into()),
        Some(sim),
    )
}

/// One fake VP8 frame. Byte 0 carries the VP8 key/delta bit (bit 0 clear: key), byte 1 the
/// layer index and bytes 2..6 a frame counter, the rest filler.
pub struct FakeFrame<'a> {
    pub rid: Option<&'a str>,
    pub rtp_90k: u64,
    pub layer: u8,
    pub counter: u32,
    pub key: bool,
    pub size: usize,
}

/// Writes `frame` on media `mid`.
pub fn write_vp8(rtc: &mut Rtc, mid: Mid, now: Instant, frame: FakeFrame) {
    let mut data = vec![0x42u8; frame.size.max(6)];
    data[0] = if frame.key { 0x10 } else { 0x11 };
    data[1] = frame.layer;
    data[2..6].copy_from_slice(&frame.counter.to_be_bytes());
    let mut w = rtc.writer(mid).expect("writer");
    let pt = w
        .payload_params()
        .find(|p| p.spec().codec == Codec::Vp8)
        .expect("vp8 negotiated")
        .pt();
    if let Some(r) = frame.rid {
        w = w.rid(Rid::from(r));
    }
    w.write(pt, now, MediaTime::from_90khz(frame.rtp_90k), data)
        .expect("write frame");
}
