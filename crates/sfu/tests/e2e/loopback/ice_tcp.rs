//! ICE-TCP through the real shell: str0m clients with an active TCP candidate connect to the
//! SFU's passive TCP candidate on the media port (RFC 6544, RFC 4571 frames) and exchange
//! media with UDP clients; a connection that sends a malformed frame, stops reading, never
//! proves a session or comes over the cap is closed, and the other sessions carry on.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use cabine_proto::{Identity, Role, RoomId};
use cabine_sfu::framing::{encode, Deframer};
use cabine_sfu::room::{JoinRequest, RoomConfig, SessionId, SessionKind, TransportProtocol};
use cabine_sfu::{Sfu, SfuConfig, SfuError, TcpConfig, TcpStats};
use str0m::change::{SdpAnswer, SdpApi, SdpPendingOffer};
use str0m::media::Mid;
use str0m::net::{Protocol, Receive, TcpType};
use str0m::{Candidate, Event, Input, Output, Rtc};

use super::{
    binding_request, block_on, recv_audio, send_audio, server_creds, wait_for, UdpPeer, PATIENCE,
};

/// A media plane on a free loopback port with ICE-TCP on, `tcp` adjusted by `configure`.
fn start_tcp_sfu(configure: impl FnOnce(&mut TcpConfig)) -> Sfu {
    start_tcp_sfu_on("127.0.0.1:0", None, configure)
}

/// The same bound to `bind`, advertising `advertise`.
fn start_tcp_sfu_on(
    bind: &str,
    advertise: Option<&str>,
    configure: impl FnOnce(&mut TcpConfig),
) -> Sfu {
    let mut tcp = TcpConfig::default();
    configure(&mut tcp);
    Sfu::start(SfuConfig {
        bind: bind.parse().unwrap(),
        advertise: advertise.map(|a| a.parse().unwrap()),
        workers: 2,
        socket_buffer: 0,
        room: RoomConfig::default(),
        tcp: Some(tcp),
    })
    .expect("media plane starts")
}

/// Where clients reach the media port (loopback when it binds every interface).
fn media_addr(sfu: &Sfu) -> SocketAddr {
    let a = sfu.local_addr();
    if a.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], a.port()))
    } else {
        a
    }
}

fn tcp_stats(sfu: &Sfu) -> TcpStats {
    sfu.tcp_stats().expect("ICE-TCP runs")
}

/// A str0m client whose only candidate is an active TCP one (port 9, as browsers signal it),
/// connected to the SFU's media port.
struct TcpPeer {
    rtc: Rtc,
    stream: TcpStream,
    /// The candidate address the client signalled (its IP, port 9).
    candidate: SocketAddr,
    server: SocketAddr,
    deframer: Deframer,
    out: BytesMut,
    connected: bool,
    media_in: u64,
    /// Stop reading (the socket stays open).
    deaf: bool,
}

impl TcpPeer {
    fn join(
        sfu: &Sfu,
        room: &str,
        n: u64,
        kind: SessionKind,
        build: impl FnOnce(&mut SdpApi) -> Option<Mid>,
    ) -> (TcpPeer, Option<Mid>) {
        let server = media_addr(sfu);
        let candidate = SocketAddr::from(([127, 0, 0, 1], 9));
        let mut rtc = Rtc::builder().build(Instant::now());
        rtc.add_local_candidate(
            Candidate::builder()
                .tcp()
                .host(candidate)
                .tcptype(TcpType::Active)
                .build()
                .expect("candidate"),
        );
        let mut api = rtc.sdp_api();
        let mid = build(&mut api);
        let (offer, pending): (_, SdpPendingOffer) = api.apply().expect("offer");
        let (ufrag, pwd) = server_creds(n);
        let joined = block_on(sfu.join(
            RoomId::parse(room).unwrap(),
            JoinRequest {
                session: SessionId(n),
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
        assert!(
            joined.answer.lines().any(|l| l.starts_with("a=candidate:")
                && l.contains(" tcp ")
                && l.contains(&format!(
                    "127.0.0.1 {} typ host tcptype passive",
                    server.port()
                ))),
            "the answer offers a passive TCP candidate: {}",
            joined.answer
        );
        let answer = SdpAnswer::from_sdp_string(&joined.answer).expect("answer parses");
        rtc.sdp_api()
            .accept_answer(pending, answer)
            .expect("answer accepted");
        let stream = TcpStream::connect(server).expect("connects to the media port over TCP");
        stream.set_nonblocking(true).expect("nonblocking");
        let peer = TcpPeer {
            rtc,
            stream,
            candidate,
            server,
            deframer: Deframer::new(4096),
            out: BytesMut::new(),
            connected: false,
            media_in: 0,
            deaf: false,
        };
        (peer, mid)
    }

    /// Sends what the engine has to send (framed, on the connection), reads and deframes what
    /// arrived, advances its timers.
    fn step(&mut self) {
        loop {
            let now = Instant::now();
            match self.rtc.poll_output() {
                Ok(Output::Transmit(t)) => {
                    assert_eq!(t.proto, Protocol::Tcp, "a TCP-only client sends over TCP");
                    if t.destination == self.server {
                        encode(&t.contents, &mut self.out).expect("frames");
                    }
                }
                Ok(Output::Event(e)) => match e {
                    Event::Connected => self.connected = true,
                    Event::MediaData(_) => self.media_in += 1,
                    _ => {}
                },
                Ok(Output::Timeout(_)) => {
                    self.flush();
                    if self.deaf || !self.read() {
                        let _ = self.rtc.handle_input(Input::Timeout(now));
                        return;
                    }
                }
                Err(e) => panic!("peer error: {e:?}"),
            }
        }
    }

    fn flush(&mut self) {
        while !self.out.is_empty() {
            match self.stream.write(&self.out) {
                Ok(n) => {
                    let _ = self.out.split_to(n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.out.clear();
                    return;
                }
            }
        }
    }

    /// Reads once; feeds whole frames to the engine. False when nothing was read.
    fn read(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        let n = match self.stream.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        self.deframer.push(&buf[..n]);
        let now = Instant::now();
        while let Ok(Some(frame)) = self.deframer.next_frame() {
            if let Ok(r) = Receive::new(Protocol::Tcp, self.server, self.candidate, &frame) {
                let _ = self.rtc.handle_input(Input::Receive(now, r));
            }
        }
        true
    }

    fn write_opus(&mut self, mid: Mid, n: u64, size: usize) {
        let Some(w) = self.rtc.writer(mid) else {
            return;
        };
        let Some(pt) = w.payload_params().next().map(|p| p.pt()) else {
            return;
        };
        let _ = w.write(
            pt,
            Instant::now(),
            str0m::media::MediaTime::from_millis(n * 20),
            vec![0x42; size],
        );
    }
}

/// Steps every peer until `done` holds or [`PATIENCE`] runs out.
fn drive_all(
    tcp: &mut [&mut TcpPeer],
    udp: &mut [&mut UdpPeer],
    mut done: impl FnMut(&[&mut TcpPeer], &[&mut UdpPeer]) -> bool,
) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        for p in tcp.iter_mut() {
            p.step();
        }
        for p in udp.iter_mut() {
            p.step();
        }
        if done(tcp, udp) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

/// The transport the SFU reports for session `n` of `room`.
fn transport_of(sfu: &Sfu, room: &str, n: u64) -> Option<(TransportProtocol, &'static str)> {
    let rooms = block_on(sfu.snapshot()).expect("snapshot");
    rooms
        .iter()
        .filter(|r| r.room.as_str() == room)
        .flat_map(|r| r.sessions.iter())
        .find(|s| s.id == SessionId(n))
        .and_then(|s| s.transport)
        .map(|t| (t.protocol, t.label()))
}

/// Whether the server closed `stream` (end of stream or reset), polling until [`PATIENCE`].
fn closed_by_server(stream: &mut TcpStream) -> bool {
    stream.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 4096];
    wait_for(|| match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    })
}

#[test]
fn a_tcp_only_client_publishes_and_receives_over_ice_tcp_and_is_reported_as_tcp() {
    let sfu = start_tcp_sfu(|_| {});
    tcp_and_udp_clients_exchange_media(&sfu);
}

#[test]
fn bound_to_every_interface_and_advertising_one_address_udp_and_tcp_clients_connect() {
    // How deployments run it (media.bind 0.0.0.0:7882, media.advertise the node's address):
    // the rooms must see datagrams addressed to their advertised candidate.
    let sfu = start_tcp_sfu_on("0.0.0.0:0", Some("127.0.0.1:0"), |_| {});
    tcp_and_udp_clients_exchange_media(&sfu);
}

/// A TCP publisher, a TCP subscriber and a UDP subscriber in one room: media flows, the room
/// reports their transports, the listener counts the frames.
fn tcp_and_udp_clients_exchange_media(sfu: &Sfu) {
    let sfu = sfu.clone();
    let (mut kiosk, mic) = TcpPeer::join(&sfu, "tcp", 1, SessionKind::Publish, |a| {
        Some(send_audio(a))
    });
    let mic = mic.expect("mid");
    let (mut doctor, _) = TcpPeer::join(&sfu, "tcp", 2, SessionKind::Subscribe, |a| {
        Some(recv_audio(a))
    });
    let (mut nurse, _) = UdpPeer::join(&sfu, "tcp", 3, SessionKind::Subscribe, recv_audio);
    let mut n = 0;
    assert!(
        drive_all(&mut [&mut kiosk, &mut doctor], &mut [&mut nurse], |t, u| {
            t[0].connected && t[1].connected && u[0].connected
        }),
        "TCP and UDP clients connect"
    );
    let deadline = Instant::now() + PATIENCE;
    while (doctor.media_in < 20 || nurse.media_in < 20) && Instant::now() < deadline {
        n += 1;
        kiosk.write_opus(mic, n, 80);
        kiosk.step();
        doctor.step();
        nurse.step();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        doctor.media_in >= 20 && nurse.media_in >= 20,
        "audio from a TCP publisher reaches a TCP and a UDP subscriber (tcp in {}, udp in {})",
        doctor.media_in,
        nurse.media_in
    );
    // The selected pair is reported about once a second.
    let mut reported = None;
    assert!(
        wait_for(|| {
            kiosk.step();
            doctor.step();
            nurse.step();
            reported = Some((
                transport_of(&sfu, "tcp", 1),
                transport_of(&sfu, "tcp", 2),
                transport_of(&sfu, "tcp", 3),
            ));
            matches!(
                reported,
                Some((
                    Some((TransportProtocol::Tcp, _)),
                    Some((TransportProtocol::Tcp, _)),
                    Some((TransportProtocol::Udp, _))
                ))
            )
        }),
        "the room reports tcp, tcp, udp: {reported:?}"
    );
    let (_, kiosk_label) = transport_of(&sfu, "tcp", 1).expect("reported");
    assert_eq!(
        kiosk_label, "prflx/tcp",
        "a connection's port is never signalled"
    );
    assert_eq!(
        transport_of(&sfu, "tcp", 3).map(|t| t.1),
        Some("host/udp"),
        "the UDP client's signalled host candidate"
    );
    let st = tcp_stats(&sfu);
    assert_eq!(st.connections, 2, "{st:?}");
    assert!(st.frames_in > 20 && st.frames_out > 20, "{st:?}");
    assert_eq!(
        st.malformed + st.stalled + st.unrouted + st.refused,
        0,
        "{st:?}"
    );
    sfu.shutdown();
}

/// A TCP publisher and a UDP subscriber with audio flowing; returns them and the frame count.
fn flowing(sfu: &Sfu, room: &str) -> (TcpPeer, UdpPeer, Mid, u64) {
    let (mut kiosk, mic) =
        TcpPeer::join(sfu, room, 1, SessionKind::Publish, |a| Some(send_audio(a)));
    let mic = mic.expect("mid");
    let (mut doctor, _) = UdpPeer::join(sfu, room, 2, SessionKind::Subscribe, recv_audio);
    let mut n = 0;
    assert!(
        flow(&mut kiosk, &mut doctor, mic, &mut n, 20),
        "audio flows from a TCP publisher to a UDP subscriber"
    );
    (kiosk, doctor, mic, n)
}

/// Writes audio until the subscriber got `more` frames more, or [`PATIENCE`] runs out.
fn flow(kiosk: &mut TcpPeer, doctor: &mut UdpPeer, mic: Mid, n: &mut u64, more: u64) -> bool {
    let target = doctor.media_in + more;
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        *n += 1;
        kiosk.write_opus(mic, *n, 80);
        kiosk.step();
        doctor.step();
        if kiosk.connected && doctor.media_in >= target {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

#[test]
fn a_malformed_frame_closes_its_connection_and_no_other() {
    for (what, frame) in [
        ("length 0", vec![0u8, 0]),
        ("too long", vec![0xff, 0xff, 1]),
    ] {
        let sfu = start_tcp_sfu(|_| {});
        let (mut kiosk, mut doctor, mic, mut n) = flowing(&sfu, "malformed");
        // A second client of the same session's room, over its own connection: it sends a
        // binding request for a real session, then a malformed frame.
        let mut bad = TcpStream::connect(media_addr(&sfu)).expect("connects");
        let (ufrag, pwd) = server_creds(1);
        let (req, _) = binding_request(&format!("{ufrag}:client"), pwd.as_bytes());
        let mut framed = BytesMut::new();
        encode(&req, &mut framed).unwrap();
        framed.extend_from_slice(&frame);
        bad.write_all(&framed).expect("writes");
        assert!(
            closed_by_server(&mut bad),
            "{what}: the connection is closed"
        );
        assert!(
            wait_for(|| tcp_stats(&sfu).malformed == 1),
            "{what}: counted {:?}",
            tcp_stats(&sfu)
        );
        assert!(
            flow(&mut kiosk, &mut doctor, mic, &mut n, 20),
            "{what}: the other connection's media still flows"
        );
        assert_eq!(tcp_stats(&sfu).connections, 1);
        sfu.shutdown();
    }
}

#[test]
fn a_tcp_subscriber_that_stops_reading_is_closed_and_others_carry_on() {
    let sfu = start_tcp_sfu(|t| t.send_buffer = 16 * 1024);
    let (mut kiosk, mut doctor, mic, mut n) = flowing(&sfu, "stall");
    let (mut deaf, _) = TcpPeer::join(&sfu, "stall", 3, SessionKind::Subscribe, |a| {
        Some(recv_audio(a))
    });
    assert!(
        wait_for(|| {
            n += 1;
            kiosk.write_opus(mic, n, 80);
            kiosk.step();
            doctor.step();
            deaf.step();
            deaf.connected && deaf.media_in > 0
        }),
        "the subscriber over TCP connects and receives"
    );
    deaf.deaf = true;
    // Large audio frames fill the kernel's buffers, then the connection's own.
    let deadline = Instant::now() + PATIENCE * 3;
    while tcp_stats(&sfu).stalled == 0 && Instant::now() < deadline {
        // The doctor reads after every frame: on a loaded machine, reading only once per
        // burst let its own connection fill up too and be closed as stalled.
        for _ in 0..20 {
            n += 1;
            kiosk.write_opus(mic, n, 1000);
            kiosk.step();
            doctor.step();
        }
        deaf.step();
    }
    assert_eq!(tcp_stats(&sfu).stalled, 1, "{:?}", tcp_stats(&sfu));
    // Its socket is closed: once the client reads what was queued, the stream ends.
    let mut rest = [0u8; 65536];
    assert!(
        wait_for(|| match deaf.stream.read(&mut rest) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() != ErrorKind::WouldBlock,
        }),
        "the stalled connection was closed"
    );
    assert!(
        flow(&mut kiosk, &mut doctor, mic, &mut n, 20),
        "the publisher's TCP connection and the UDP subscriber carry on"
    );
    sfu.shutdown();
}

#[test]
fn connections_that_name_no_session_or_never_prove_one_are_closed() {
    let sfu = start_tcp_sfu(|t| t.handshake_timeout = Duration::from_millis(300));
    // A session whose ufrag is registered (its client never connects).
    let (_kiosk, _) = UdpPeer::join(&sfu, "unproven", 1, SessionKind::Publish, send_audio);
    // Silent: closed after the handshake timeout.
    let mut silent = TcpStream::connect(media_addr(&sfu)).expect("connects");
    assert!(
        closed_by_server(&mut silent),
        "a silent connection is closed"
    );
    // A binding request for a session, with the wrong password: the session never answers.
    let mut forged = TcpStream::connect(media_addr(&sfu)).expect("connects");
    let (ufrag, _) = server_creds(1);
    let (req, _) = binding_request(&format!("{ufrag}:client"), b"not the password");
    let mut framed = BytesMut::new();
    encode(&req, &mut framed).unwrap();
    forged.write_all(&framed).expect("writes");
    assert!(
        closed_by_server(&mut forged),
        "an unproven connection is closed"
    );
    assert!(
        wait_for(|| tcp_stats(&sfu).unproven == 2),
        "{:?}",
        tcp_stats(&sfu)
    );
    // A first frame that is not a binding request for a known ufrag: closed at once.
    let mut stranger = TcpStream::connect(media_addr(&sfu)).expect("connects");
    let (req, _) = binding_request("nobody:client", b"whatever");
    let mut framed = BytesMut::new();
    encode(&req, &mut framed).unwrap();
    stranger.write_all(&framed).expect("writes");
    assert!(
        closed_by_server(&mut stranger),
        "an unknown ufrag is closed"
    );
    assert!(
        wait_for(|| tcp_stats(&sfu).unrouted == 1),
        "{:?}",
        tcp_stats(&sfu)
    );
    assert!(
        wait_for(|| tcp_stats(&sfu).connections == 0),
        "{:?}",
        tcp_stats(&sfu)
    );
    sfu.shutdown();
}

#[test]
fn connections_over_the_cap_are_refused_and_counted() {
    let sfu = start_tcp_sfu(|t| t.max_connections = 2);
    let _a = TcpStream::connect(media_addr(&sfu)).expect("connects");
    let _b = TcpStream::connect(media_addr(&sfu)).expect("connects");
    assert!(wait_for(|| tcp_stats(&sfu).connections == 2));
    let mut c = TcpStream::connect(media_addr(&sfu)).expect("the kernel accepts");
    assert!(closed_by_server(&mut c), "the third is closed");
    assert_eq!(tcp_stats(&sfu).refused, 1);
    assert_eq!(tcp_stats(&sfu).connections, 2);
    sfu.shutdown();
}

#[test]
fn silent_connections_end_at_the_first_frame_deadline_and_are_capped_per_source() {
    // The handshake timeout alone would hold silent connections for a minute.
    let sfu = start_tcp_sfu(|t| {
        t.handshake_timeout = Duration::from_secs(60);
        t.first_frame_timeout = Duration::from_millis(500);
        t.max_unproven_per_ip = 3;
    });
    let mut silent: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(media_addr(&sfu)).expect("connects"))
        .collect();
    assert!(
        wait_for(|| tcp_stats(&sfu).connections == 3),
        "{:?}",
        tcp_stats(&sfu)
    );
    // A fourth from the same address: refused at once, counted apart from the global cap.
    let mut fourth = TcpStream::connect(media_addr(&sfu)).expect("the kernel accepts");
    assert!(closed_by_server(&mut fourth), "the fourth is closed");
    assert_eq!(tcp_stats(&sfu).refused_source, 1, "{:?}", tcp_stats(&sfu));
    assert_eq!(tcp_stats(&sfu).refused, 0, "{:?}", tcp_stats(&sfu));
    // The silent ones end at the first-frame deadline, long before the handshake timeout.
    for s in &mut silent {
        assert!(closed_by_server(s), "a silent connection is closed");
    }
    assert!(
        wait_for(|| tcp_stats(&sfu).unproven == 3 && tcp_stats(&sfu).connections == 0),
        "{:?}",
        tcp_stats(&sfu)
    );
    // Their slots are free again: a new connection from the same address is taken.
    let _again = TcpStream::connect(media_addr(&sfu)).expect("connects");
    assert!(
        wait_for(|| tcp_stats(&sfu).connections == 1),
        "{:?}",
        tcp_stats(&sfu)
    );
    assert_eq!(tcp_stats(&sfu).refused_source, 1);
    sfu.shutdown();
}

#[test]
fn without_ice_tcp_no_tcp_candidate_is_offered_and_nothing_listens() {
    let sfu = super::start_sfu(1);
    assert!(sfu.tcp_stats().is_none());
    let (peer, _) = UdpPeer::join(&sfu, "udp-only", 1, SessionKind::Publish, send_audio);
    drop(peer);
    assert!(
        TcpStream::connect(media_addr(&sfu)).is_err(),
        "no TCP listener"
    );
    sfu.shutdown();
}

#[test]
fn a_media_port_whose_tcp_side_is_taken_is_a_clear_start_error() {
    // A port whose TCP side is taken here and whose UDP side is free (another try when the
    // UDP side is taken too).
    let (_taken, port, bind) = (0..100)
        .find_map(|_| {
            let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let port = taken.local_addr().unwrap().port();
            let bind = format!("127.0.0.1:{port}");
            // The UDP probe socket is dropped when the closure returns.
            std::net::UdpSocket::bind(&bind)
                .ok()
                .map(|_udp| (taken, port, bind))
        })
        .expect("a loopback port with a free UDP side in 100 tries");
    match start_tcp_sfu_result(&bind) {
        Err(SfuError::BindTcp { addr, .. }) => assert_eq!(addr.port(), port),
        Err(e) => panic!("another error: {e}"),
        Ok(sfu) => {
            sfu.shutdown();
            panic!("the media plane started on a port whose TCP side is taken");
        }
    }
}

fn start_tcp_sfu_result(bind: &str) -> Result<Sfu, SfuError> {
    Sfu::start(SfuConfig {
        bind: bind.parse().unwrap(),
        advertise: None,
        workers: 1,
        socket_buffer: 0,
        room: RoomConfig::default(),
        tcp: Some(TcpConfig::default()),
    })
}
