//! Tests through the real shell on 127.0.0.1: a running [`Sfu`] and str0m client peers on
//! their own UDP sockets, driven by this thread with the real clock. Each test waits for the
//! state it checks with a deadline, never for a fixed time.

#![allow(dead_code)]

mod demux_auth;
mod first_flight;
mod ice_tcp;
mod telemetry_flood;

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use cabine_proto::{Identity, Role, RoomId};
use cabine_sfu::room::{JoinRequest, RoomConfig, SessionId, SessionKind};
use cabine_sfu::{Sfu, SfuConfig};
use str0m::change::{SdpAnswer, SdpApi, SdpPendingOffer};
use str0m::format::Codec;
use str0m::ice::{StunMessage, TransId};
use str0m::media::{MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

/// How long a test waits for what it checks before failing.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A media plane on a free loopback port with `workers` worker threads.
pub fn start_sfu(workers: usize) -> Sfu {
    Sfu::start(SfuConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        advertise: None,
        workers,
        socket_buffer: 0,
        room: RoomConfig::default(),
        tcp: None,
    })
    .expect("media plane starts")
}

/// Runs an async call of the media plane's API to completion.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// The server-side ICE credentials used for the session numbered `n`.
pub fn server_creds(n: u64) -> (String, String) {
    (format!("srv{n}u"), format!("serverpassword{n:010}"))
}

/// A str0m client on its own UDP socket.
pub struct UdpPeer {
    pub rtc: Rtc,
    pub socket: UdpSocket,
    pub addr: SocketAddr,
    pub session: SessionId,
    pub connected: bool,
    /// Media frames received.
    pub media_in: u64,
    /// Datagrams received from the server.
    pub datagrams_in: u64,
    pub events: Vec<Event>,
    /// Plaintext DTLS handshake messages sent, as (type, message sequence, fragment offset);
    /// a repeat is a retransmission.
    pub handshakes_out: Vec<(u8, u16, u32)>,
    /// The same for the handshake messages received from the server.
    pub handshakes_in: Vec<(u8, u16, u32)>,
}

impl UdpPeer {
    /// Joins `room` on `sfu` as session `n` with an offer built by `build`.
    pub fn join<T>(
        sfu: &Sfu,
        room: &str,
        n: u64,
        kind: SessionKind,
        build: impl FnOnce(&mut SdpApi) -> T,
    ) -> (UdpPeer, T) {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket.set_nonblocking(true).expect("nonblocking");
        let addr = socket.local_addr().expect("addr");
        let mut rtc = Rtc::builder().build(Instant::now());
        rtc.add_local_candidate(Candidate::host(addr, "udp").expect("candidate"));
        let mut api = rtc.sdp_api();
        let built = build(&mut api);
        let (offer, pending): (_, SdpPendingOffer) = api.apply().expect("offer");
        let (ufrag, pwd) = server_creds(n);
        let session = SessionId(n);
        let joined = block_on(sfu.join(
            RoomId::parse(room).unwrap(),
            JoinRequest {
                session,
                identity: Identity::parse(&format!("peer-{n}")).unwrap(),
                role: if kind == SessionKind::Publish {
                    Role::Kiosk
                } else {
                    Role::Doctor
                },
                kind,
                offer: offer.to_sdp_string(),
                from: None,
                ice_ufrag: ufrag,
                ice_pwd: pwd,
            },
        ))
        .expect("join");
        let answer = SdpAnswer::from_sdp_string(&joined.answer).expect("answer parses");
        rtc.sdp_api()
            .accept_answer(pending, answer)
            .expect("answer accepted");
        let peer = UdpPeer {
            rtc,
            socket,
            addr,
            session,
            connected: false,
            media_in: 0,
            datagrams_in: 0,
            events: Vec::new(),
            handshakes_out: Vec::new(),
            handshakes_in: Vec::new(),
        };
        (peer, built)
    }

    /// The client's own ICE ufrag.
    pub fn ufrag(&mut self) -> String {
        self.rtc.direct_api().local_ice_credentials().ufrag
    }

    /// Sends what the engine has to send, reads what arrived, advances its timers.
    pub fn step(&mut self) {
        let mut buf = [0u8; 2048];
        loop {
            let now = Instant::now();
            match self.rtc.poll_output() {
                Ok(Output::Transmit(t)) => {
                    dtls_handshakes(&t.contents, &mut self.handshakes_out);
                    let _ = self.socket.send_to(&t.contents, t.destination);
                }
                Ok(Output::Event(e)) => {
                    match &e {
                        Event::Connected => self.connected = true,
                        Event::MediaData(_) => self.media_in += 1,
                        _ => {}
                    }
                    self.events.push(e);
                }
                Ok(Output::Timeout(_)) => match self.socket.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        self.datagrams_in += 1;
                        dtls_handshakes(&buf[..n], &mut self.handshakes_in);
                        if let Ok(r) = Receive::new(Protocol::Udp, from, self.addr, &buf[..n]) {
                            let _ = self.rtc.handle_input(Input::Receive(now, r));
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        let _ = self.rtc.handle_input(Input::Timeout(now));
                        return;
                    }
                    Err(_) => return,
                },
                Err(e) => panic!("peer error: {e:?}"),
            }
        }
    }

    /// Writes one Opus frame on `mid` (audio clock: `n` frames of 20 ms).
    pub fn write_opus(&mut self, mid: Mid, n: u64) {
        let Some(w) = self.rtc.writer(mid) else {
            return;
        };
        let Some(pt) = w
            .payload_params()
            .find(|p| p.spec().codec == Codec::Opus)
            .map(|p| p.pt())
        else {
            return;
        };
        let _ = w.write(
            pt,
            Instant::now(),
            MediaTime::from_millis(n * 20),
            vec![0x42; 80],
        );
    }
}

/// Steps `peers` until `done` says so (true) or [`PATIENCE`] runs out (false). Polls every
/// millisecond.
pub fn drive(
    peers: &mut [&mut UdpPeer],
    mut done: impl FnMut(&mut [&mut UdpPeer]) -> bool,
) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        for p in peers.iter_mut() {
            p.step();
        }
        if done(peers) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

/// Polls `check` every millisecond until it holds or [`PATIENCE`] runs out.
pub fn wait_for(mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

/// Offer builder: one sendonly audio track.
pub fn send_audio(api: &mut SdpApi) -> Mid {
    api.add_media(
        MediaKind::Audio,
        str0m::media::Direction::SendOnly,
        Some("kiosk".into()),
        Some("mic".into()),
        None,
    )
}

/// Offer builder: one recvonly audio track.
pub fn recv_audio(api: &mut SdpApi) -> Mid {
    api.add_media(
        MediaKind::Audio,
        str0m::media::Direction::RecvOnly,
        None,
        None,
        None,
    )
}

/// A STUN binding request with USERNAME `username`, signed with `password`; returns the bytes
/// and the transaction id.
pub fn binding_request(username: &str, password: &[u8]) -> (Vec<u8>, [u8; 12]) {
    let msg = StunMessage::binding_request(username, TransId::new(), true, 7, 1_000_000, false);
    let mut buf = vec![0u8; 512];
    let provider = str0m::crypto::from_feature_flags();
    let n = msg
        .to_bytes(Some(password), &mut buf, |k, p| {
            provider.sha1_hmac_provider.sha1_hmac(k, p)
        })
        .expect("stun encodes");
    buf.truncate(n);
    let mut id = [0u8; 12];
    id.copy_from_slice(&buf[8..20]);
    (buf, id)
}

/// The transaction id of a STUN binding success response in `data`, if it is one.
pub fn success_id(data: &[u8]) -> Option<[u8; 12]> {
    let msg = StunMessage::parse(data).ok()?;
    msg.is_successful_binding_response().then(|| {
        let mut id = [0u8; 12];
        id.copy_from_slice(&data[8..20]);
        id
    })
}

/// Appends the plaintext (epoch 0) DTLS handshake messages in `datagram` as (type, message
/// sequence, fragment offset) (RFC 6347 §4.1, §4.2.2).
pub fn dtls_handshakes(datagram: &[u8], out: &mut Vec<(u8, u16, u32)>) {
    let mut rest = datagram;
    while rest.len() >= 13 {
        let content_type = rest[0];
        let epoch = u16::from_be_bytes([rest[3], rest[4]]);
        let len = usize::from(u16::from_be_bytes([rest[11], rest[12]]));
        let Some(body) = rest.get(13..13 + len) else {
            return;
        };
        if !(20..=63).contains(&content_type) {
            return;
        }
        if content_type == 22 && epoch == 0 && body.len() >= 12 {
            let seq = u16::from_be_bytes([body[4], body[5]]);
            let offset = u32::from_be_bytes([0, body[6], body[7], body[8]]);
            out.push((body[0], seq, offset));
        }
        rest = &rest[13 + len..];
    }
}

/// Handshake messages that were sent more than once.
pub fn repeats(messages: &[(u8, u16, u32)]) -> Vec<(u8, u16, u32)> {
    let mut seen = std::collections::HashSet::new();
    messages
        .iter()
        .filter(|m| !seen.insert(**m))
        .copied()
        .collect()
}
