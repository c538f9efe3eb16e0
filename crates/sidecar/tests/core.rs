//! Deterministic tests of the sans-IO core: hand-made frames, fake time, no sockets.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cabine_proto::telemetry::{
    client_frame::Body, delivered, encode_datagram, encode_frame, server_frame, BlobChunk,
    ChannelDecl, ChannelKind, ClientFrame, ClientHello, Delivered, ErrorCode, Measurement, Pong,
    ServerFrame, Status, Value, WaveformChunk, MAX_FRAME_LEN, PROTOCOL_VERSION,
};
use cabine_proto::{Claims, Grant, Identity, Role, RoomId};
use cabine_sidecar::core::{ConnId, Core, Output, StreamId};
use cabine_sidecar::{CommandError, CommandRequest, Limits, StaticTokens};

const T0_US: u64 = 1_800_000_000_000_000;

fn claims(sub: &str, room: &str, role: Role, grants: Option<Vec<Grant>>) -> Claims {
    Claims {
        sub: Identity::parse(sub).unwrap(),
        name: None,
        room: room.into(),
        role,
        exp: u64::MAX,
        nbf: None,
        grants,
    }
}

fn tokens() -> StaticTokens {
    StaticTokens::new()
        .with("k1", claims("kiosk-1", "r1", Role::Kiosk, None))
        .with("k2", claims("kiosk-2", "r1", Role::Kiosk, None))
        .with("k-other", claims("kiosk-9", "r2", Role::Kiosk, None))
        .with("doc", claims("dr-1", "r1", Role::Doctor, None))
        .with(
            "k-nodata",
            claims("kiosk-3", "r1", Role::Kiosk, Some(vec![Grant::Publish])),
        )
}

struct H {
    core: Core,
    t0: Instant,
    now: Instant,
    out: Vec<Output>,
}

impl H {
    fn new() -> H {
        let t0 = Instant::now();
        H {
            core: Core::new(Limits::default(), Arc::new(tokens()), t0, T0_US),
            t0,
            now: t0,
            out: Vec::new(),
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.core.handle_timeout(self.now);
        self.drain();
    }

    fn server_us(&self) -> u64 {
        T0_US + (self.now - self.t0).as_micros() as u64
    }

    fn drain(&mut self) {
        while let Some(o) = self.core.poll_output() {
            self.out.push(o);
        }
    }

    fn take(&mut self) -> Vec<Output> {
        self.drain();
        std::mem::take(&mut self.out)
    }

    fn connect(&mut self, conn: u64) {
        self.core
            .handle_connected(self.now, ConnId(conn), Duration::from_millis(2));
    }

    fn ctl(&mut self, conn: u64, body: Body) {
        let bytes = encode_frame(&ClientFrame { body: Some(body) }).unwrap();
        self.core.handle_control(self.now, ConnId(conn), &bytes);
        self.drain();
    }

    fn uni(&mut self, conn: u64, stream: u64, body: Body) -> Result<(), ErrorCode> {
        let bytes = encode_frame(&ClientFrame { body: Some(body) }).unwrap();
        let r = self
            .core
            .handle_uni(self.now, ConnId(conn), StreamId(stream), &bytes);
        self.drain();
        r.map_err(|e| e.code)
    }

    fn dgram(&mut self, conn: u64, body: Body) {
        let bytes = encode_datagram(&ClientFrame { body: Some(body) }).unwrap();
        self.core.handle_datagram(self.now, ConnId(conn), &bytes);
        self.drain();
    }

    /// Connects, says hello with `token` and declares a measurement channel 1, a waveform
    /// channel 2 and a blob channel 3.
    fn kiosk(&mut self, conn: u64, token: &str, instance: u64) {
        self.connect(conn);
        self.ctl(conn, hello(token, "r1", instance, self.server_us()));
        for d in [
            decl(1, ChannelKind::Measurement),
            decl(2, ChannelKind::Waveform),
            decl(3, ChannelKind::Blob),
        ] {
            self.ctl(conn, Body::Declare(d));
        }
    }

    fn delivered(&mut self) -> Vec<(Delivered, bool)> {
        self.take()
            .into_iter()
            .filter_map(|o| match o {
                Output::Deliver {
                    delivered,
                    reliable,
                    ..
                } => Some((delivered, reliable)),
                _ => None,
            })
            .collect()
    }

    fn closes(&mut self) -> Vec<(u64, ErrorCode)> {
        self.take()
            .into_iter()
            .filter_map(|o| match o {
                Output::Close { conn, code, .. } => Some((conn.0, code)),
                _ => None,
            })
            .collect()
    }
}

fn hello(token: &str, room: &str, instance: u64, kiosk_clock_us: u64) -> Body {
    Body::Hello(ClientHello {
        version: PROTOCOL_VERSION,
        token: token.into(),
        room: room.into(),
        kiosk_clock_us,
        instance_id: instance,
        software: "test".into(),
    })
}

fn decl(id: u32, kind: ChannelKind) -> ChannelDecl {
    ChannelDecl {
        channel_id: id,
        kind: kind as i32,
        sample_rate_hz: if kind == ChannelKind::Waveform {
            500.0
        } else {
            0.0
        },
        commands: if id == 1 {
            vec!["start_measurement".into()]
        } else {
            vec![]
        },
        ..Default::default()
    }
}

fn meas(seq: u64, capture_us: u64) -> Body {
    Body::Measurement(Measurement {
        channel_id: 1,
        seq,
        capture_time_us: capture_us,
        values: vec![Value {
            loinc: "8867-4".into(),
            mdc_code: 149530,
            value: 70.0 + seq as f64,
            unit: "/min".into(),
        }],
        status: 1,
    })
}

fn wave(seq: u64) -> Body {
    Body::Waveform(WaveformChunk {
        channel_id: 2,
        seq,
        first_sample_time_us: 0,
        sample_rate_hz: 500.0,
        leads: 1,
        scale: 0.005,
        offset: 0.0,
        samples: vec![0; 10],
    })
}

fn seqs(d: &[(Delivered, bool)]) -> Vec<u64> {
    d.iter()
        .filter_map(|(d, _)| match &d.frame {
            Some(delivered::Frame::Measurement(m)) => Some(m.seq),
            Some(delivered::Frame::Waveform(w)) => Some(w.seq),
            _ => None,
        })
        .collect()
}

fn acks(out: &[Output], conn: u64) -> Vec<(u32, u64)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send {
                conn: c,
                frame:
                    ServerFrame {
                        body: Some(server_frame::Body::Ack(a)),
                    },
            } if c.0 == conn => Some((a.channel_id, a.up_to_seq)),
            _ => None,
        })
        .collect()
}

#[test]
fn hello_is_answered_and_declarations_are_acked_and_announced() {
    let mut h = H::new();
    h.connect(1);
    h.ctl(1, hello("k1", "r1", 7, h.server_us()));
    let out = h.take();
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Send {
            frame: ServerFrame {
                body: Some(server_frame::Body::Hello(_))
            },
            ..
        }
    )));
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Send {
            frame: ServerFrame {
                body: Some(server_frame::Body::Ping(_))
            },
            ..
        }
    )));
    h.ctl(1, Body::Declare(decl(1, ChannelKind::Measurement)));
    let out = h.take();
    assert_eq!(acks(&out, 1), vec![(1, 0)]);
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Deliver {
            delivered: Delivered {
                frame: Some(delivered::Frame::Channel(_)),
                ..
            },
            reliable: true,
            ..
        }
    )));
    assert_eq!(
        h.core.channels(h.now, &RoomId::parse("r1").unwrap()).len(),
        1
    );
}

#[test]
fn measurements_are_delivered_once_and_acked() {
    let mut h = H::new();
    h.kiosk(1, "k1", 7);
    h.take();
    for seq in [1, 2, 3, 2, 1] {
        h.uni(1, 10, meas(seq, h.server_us())).unwrap();
    }
    h.drain();
    let out = std::mem::take(&mut h.out);
    assert_eq!(acks(&out, 1).last(), Some(&(1, 3)));
    let d: Vec<(Delivered, bool)> = out
        .into_iter()
        .filter_map(|o| match o {
            Output::Deliver {
                delivered,
                reliable,
                ..
            } => Some((delivered, reliable)),
            _ => None,
        })
        .collect();
    assert_eq!(seqs(&d), vec![1, 2, 3]);
    assert!(d.iter().all(|(_, reliable)| *reliable));
    let st = h.core.stats();
    let ch = st.channels.iter().find(|c| c.channel_id == 1).unwrap();
    assert_eq!((ch.frames, ch.duplicates), (3, 2));
    assert!(
        !ch.kiosk.contains("kiosk-1"),
        "identities are redacted in stats"
    );
}

#[test]
fn a_reconnecting_kiosk_resumes_without_duplicates() {
    let mut h = H::new();
    h.kiosk(1, "k1", 7);
    for seq in 1..=3 {
        h.uni(1, 10, meas(seq, h.server_us())).unwrap();
    }
    h.take();
    h.core.handle_closed(h.now, ConnId(1), 0);
    let left = h.delivered();
    assert!(matches!(left[0].0.frame, Some(delivered::Frame::Left(_))));
    h.advance(Duration::from_secs(3));
    // Same instance: the declaration's ack says where the server is.
    h.kiosk(2, "k1", 7);
    let out = h.take();
    assert!(acks(&out, 2).contains(&(1, 3)));
    for seq in [2, 3, 4, 5] {
        h.uni(2, 20, meas(seq, h.server_us())).unwrap();
    }
    assert_eq!(seqs(&h.delivered()), vec![4, 5]);
    // A new kiosk process (new instance id) starts a new sequence space.
    h.core.handle_closed(h.now, ConnId(2), 0);
    h.kiosk(3, "k1", 8);
    let out = h.take();
    assert!(acks(&out, 3).contains(&(1, 0)));
    h.uni(3, 30, meas(1, h.server_us())).unwrap();
    assert_eq!(seqs(&h.delivered()), vec![1]);
}

#[test]
fn the_same_kiosk_connecting_again_supersedes_the_old_connection() {
    let mut h = H::new();
    h.kiosk(1, "k1", 7);
    h.take();
    h.kiosk(2, "k1", 7);
    assert!(h.closes().contains(&(1, ErrorCode::Superseded)));
    // The old connection's late close does not announce the kiosk as gone.
    h.core.handle_closed(h.now, ConnId(1), 0);
    assert!(h.delivered().is_empty());
    h.uni(2, 1, meas(1, h.server_us())).unwrap();
    assert_eq!(seqs(&h.delivered()), vec![1]);
}

#[test]
fn waveforms_are_ordered_late_chunks_dropped_gaps_counted() {
    let mut h = H::new();
    h.kiosk(1, "k1", 7);
    h.take();
    for seq in [1, 2, 5, 4, 6, 6, 9] {
        h.dgram(1, wave(seq));
    }
    let d = h.delivered();
    assert_eq!(seqs(&d), vec![1, 2, 5, 6, 9]);
    assert!(d.iter().all(|(_, reliable)| !reliable));
    // Each chunk says how many are missing just before it (the page's gap marker), and every
    // frame names the kiosk's epoch (its instance id).
    let gaps: Vec<u64> = d.iter().map(|(d, _)| d.gap).collect();
    assert_eq!(gaps, vec![0, 0, 2, 0, 2]);
    assert!(d.iter().all(|(d, _)| d.epoch == format!("{:016x}", 7)));
    let st = h.core.stats();
    let ch = st.channels.iter().find(|c| c.channel_id == 2).unwrap();
    assert_eq!((ch.gaps, ch.late), (4, 2));
}

#[test]
fn clock_offset_is_estimated_from_the_best_round_trip() {
    let mut h = H::new();
    let offset = 7_000_000u64; // kiosk clock 7 s ahead
    h.connect(1);
    h.ctl(1, hello("k1", "r1", 7, h.server_us() + offset));
    h.ctl(1, Body::Declare(decl(1, ChannelKind::Measurement)));
    // Answer pings: the first with an asymmetric 30 ms delay, the next ones 1 ms each way.
    for (i, (out_ms, back_ms)) in [(30u64, 0u64), (1, 1), (1, 1), (1, 1)]
        .into_iter()
        .enumerate()
    {
        let pings: Vec<(u32, u64)> = h
            .take()
            .into_iter()
            .filter_map(|o| match o {
                Output::Send {
                    frame:
                        ServerFrame {
                            body: Some(server_frame::Body::Ping(p)),
                        },
                    ..
                } => Some((p.id, p.server_time_us)),
                _ => None,
            })
            .collect();
        assert_eq!(pings.len(), 1, "round {i}");
        let (id, sent) = pings[0];
        h.now += Duration::from_millis(out_ms);
        let kiosk = h.server_us() + offset;
        h.now += Duration::from_millis(back_ms);
        h.ctl(
            1,
            Body::Pong(Pong {
                id,
                server_time_us: sent,
                kiosk_time_us: kiosk,
            }),
        );
        h.advance(Duration::from_millis(100));
    }
    let e = h.core.clock_estimate(ConnId(1)).unwrap();
    assert_eq!(e.offset_us, offset as i64);
    assert_eq!(e.error_us, 1_000);
    h.take();
    let capture_server = h.server_us() - 5_000;
    h.uni(1, 1, meas(1, capture_server + offset)).unwrap();
    let d = h.delivered();
    assert_eq!(d[0].0.aligned_time_us, capture_server);
    assert_eq!(d[0].0.capture_time_us, capture_server + offset);
    assert_eq!(d[0].0.clock_error_us, 1_000);
    let st = h.core.stats();
    assert_eq!(st.channels[0].latency_p50_us, Some(5_000));
}

#[test]
fn commands_need_the_commands_grant_and_a_declared_channel() {
    let mut h = H::new();
    let room = RoomId::parse("r1").unwrap();
    let req = |channel: u32, name: &str| CommandRequest {
        kiosk: None,
        channel_id: channel,
        name: name.into(),
        params: Default::default(),
    };
    let doctor = claims("dr-1", "r1", Role::Doctor, None);
    assert_eq!(
        h.core
            .send_command(h.now, &room, &doctor, req(1, "start_measurement")),
        Err(CommandError::NoKiosk)
    );
    h.kiosk(1, "k1", 7);
    h.take();
    let id = h
        .core
        .send_command(h.now, &room, &doctor, req(1, "start_measurement"))
        .unwrap();
    let out = h.take();
    assert!(out.iter().any(|o| matches!(o, Output::Send { conn: ConnId(1), frame: ServerFrame { body: Some(server_frame::Body::Command(c)) } } if c.command_id == id && c.name == "start_measurement")));
    let assistant = claims("as-1", "r1", Role::Assistant, None);
    assert_eq!(
        h.core
            .send_command(h.now, &room, &assistant, req(1, "start_measurement")),
        Err(CommandError::NotAllowed {
            role: Role::Assistant
        })
    );
    let narrowed = claims("dr-2", "r1", Role::Doctor, Some(vec![Grant::Subscribe]));
    assert!(matches!(
        h.core.send_command(h.now, &room, &narrowed, req(1, "x")),
        Err(CommandError::NotAllowed { .. })
    ));
    let other_room = claims("dr-3", "r2", Role::Doctor, None);
    assert_eq!(
        h.core
            .send_command(h.now, &room, &other_room, req(1, "start_measurement")),
        Err(CommandError::WrongRoom)
    );
    assert_eq!(
        h.core
            .send_command(h.now, &room, &doctor, req(9, "start_measurement")),
        Err(CommandError::UnknownChannel(9))
    );
    assert!(matches!(
        h.core
            .send_command(h.now, &room, &doctor, req(1, "explode")),
        Err(CommandError::UnknownCommand { .. })
    ));
    assert!(h.take().is_empty(), "refused commands send nothing");
    h.kiosk(2, "k2", 1);
    assert_eq!(
        h.core
            .send_command(h.now, &room, &doctor, req(1, "start_measurement")),
        Err(CommandError::AmbiguousKiosk(2))
    );
    let mut named = req(3, "take_snapshot");
    named.kiosk = Some(Identity::parse("kiosk-2").unwrap());
    assert!(h.core.send_command(h.now, &room, &doctor, named).is_ok());
    assert_eq!(h.core.stats().commands_refused, 7);
}

#[test]
fn status_and_command_results_are_delivered_reliably() {
    let mut h = H::new();
    h.kiosk(1, "k1", 7);
    h.take();
    h.ctl(
        1,
        Body::Status(Status {
            channel_id: 1,
            kiosk_time_us: h.server_us(),
            state: 1,
            battery_percent: Some(80),
            detail: String::new(),
        }),
    );
    let d = h.delivered();
    assert!(matches!(d[0].0.frame, Some(delivered::Frame::Status(_))) && d[0].1);
    h.ctl(
        1,
        Body::Status(Status {
            channel_id: 42,
            ..Default::default()
        }),
    );
    assert_eq!(h.closes(), vec![(1, ErrorCode::UnknownChannel)]);
}

#[test]
fn anything_before_the_hello_closes_the_connection() {
    let mut h = H::new();
    h.connect(1);
    assert_eq!(h.uni(1, 1, meas(1, 1)), Err(ErrorCode::Unauthenticated));
    assert_eq!(h.closes(), vec![(1, ErrorCode::Unauthenticated)]);
    h.connect(2);
    h.dgram(2, wave(1));
    assert_eq!(h.closes(), vec![(2, ErrorCode::Unauthenticated)]);
    h.connect(3);
    h.ctl(3, Body::Declare(decl(1, ChannelKind::Measurement)));
    assert_eq!(h.closes(), vec![(3, ErrorCode::Unauthenticated)]);
    assert_eq!(h.core.stats().refusals["unauthenticated"], 3);
}

#[test]
fn bad_hellos_are_refused_with_precise_codes() {
    let mut h = H::new();
    let cases = [
        (hello("nope", "r1", 1, 0), ErrorCode::BadToken),
        (hello("k-other", "r1", 1, 0), ErrorCode::WrongRoom),
        (hello("k1", "bad room", 1, 0), ErrorCode::WrongRoom),
        (hello("doc", "r1", 1, 0), ErrorCode::WrongRole),
        (hello("k-nodata", "r1", 1, 0), ErrorCode::WrongRole),
        (
            Body::Hello(ClientHello {
                version: 99,
                token: "k1".into(),
                room: "r1".into(),
                ..Default::default()
            }),
            ErrorCode::UnsupportedVersion,
        ),
    ];
    for (i, (body, code)) in cases.into_iter().enumerate() {
        let conn = i as u64 + 1;
        h.connect(conn);
        h.ctl(conn, body);
        assert_eq!(h.closes(), vec![(conn, code)], "case {i}");
    }
}

#[test]
fn a_silent_connection_times_out() {
    let mut h = H::new();
    h.connect(1);
    assert_eq!(
        h.core.poll_timeout(),
        Some(h.now + Limits::default().hello_timeout)
    );
    h.advance(Duration::from_secs(4));
    assert!(h.closes().is_empty());
    h.advance(Duration::from_secs(1));
    assert_eq!(h.closes(), vec![(1, ErrorCode::HelloTimeout)]);
}

#[test]
fn bad_stream_input_stops_only_that_stream() {
    let mut h = H::new();
    h.kiosk(1, "k1", 7);
    h.take();
    // Unknown channel.
    let mut m = meas(1, 1);
    if let Body::Measurement(x) = &mut m {
        x.channel_id = 77;
    }
    assert_eq!(h.uni(1, 1, m), Err(ErrorCode::UnknownChannel));
    // A waveform where measurements go.
    assert_eq!(h.uni(1, 2, wave(1)), Err(ErrorCode::UnexpectedFrame));
    // Non-finite value.
    let mut m = meas(1, 1);
    if let Body::Measurement(x) = &mut m {
        x.values[0].value = f64::NAN;
    }
    assert_eq!(h.uni(1, 3, m), Err(ErrorCode::MalformedFrame));
    // Garbage and an oversized length prefix.
    let r = h.core.handle_uni(
        h.now,
        ConnId(1),
        StreamId(4),
        &[0x05, 0xff, 0xff, 0xff, 0xff, 0xff],
    );
    assert_eq!(r.map_err(|e| e.code), Err(ErrorCode::MalformedFrame));
    let mut big = Vec::new();
    prost::encoding::encode_varint(MAX_FRAME_LEN as u64 + 1, &mut big);
    let r = h.core.handle_uni(h.now, ConnId(1), StreamId(5), &big);
    assert_eq!(r.map_err(|e| e.code), Err(ErrorCode::FrameTooLarge));
    // The connection is alive and well.
    assert!(h.closes().is_empty());
    h.uni(1, 6, meas(1, 1)).unwrap();
    assert_eq!(seqs(&h.delivered()), vec![1]);
    // On the control stream the same garbage closes the connection.
    h.core.handle_control(h.now, ConnId(1), &big);
    assert_eq!(h.closes(), vec![(1, ErrorCode::FrameTooLarge)]);
}

#[test]
fn bad_datagrams_close_the_connection_and_not_another_kiosk() {
    let mut h = H::new();
    h.kiosk(1, "k1", 7);
    h.kiosk(2, "k2", 1);
    h.take();
    h.core.handle_datagram(h.now, ConnId(1), &[0u8; 1100]);
    assert_eq!(h.closes(), vec![(1, ErrorCode::DatagramTooLarge)]);
    h.core.handle_datagram(h.now, ConnId(2), &[0xff; 20]);
    assert_eq!(h.closes(), vec![(2, ErrorCode::MalformedFrame)]);
    h.kiosk(3, "k1", 7);
    h.kiosk(4, "k2", 1);
    h.take();
    h.dgram(3, meas(1, 1));
    assert_eq!(h.closes(), vec![(3, ErrorCode::UnexpectedFrame)]);
    let mut w = wave(1);
    if let Body::Waveform(x) = &mut w {
        x.channel_id = 1;
    }
    h.dgram(4, w);
    assert_eq!(h.closes(), vec![(4, ErrorCode::UnknownChannel)]);
}

#[test]
fn blobs_are_chunked_in_order_and_bounded() {
    let mut h = H::new();
    h.kiosk(1, "k1", 7);
    h.take();
    let chunk = |seq: u32, last: bool, len: usize| {
        Body::Blob(BlobChunk {
            channel_id: 3,
            blob_id: 5,
            seq,
            last,
            mime: "image/jpeg".into(),
            data: vec![1; len],
            capture_time_us: 0,
            total_len: 0,
        })
    };
    h.uni(1, 1, chunk(0, false, 1000)).unwrap();
    h.uni(1, 1, chunk(1, true, 10)).unwrap();
    assert_eq!(h.delivered().len(), 2);
    assert_eq!(
        h.uni(1, 1, chunk(2, false, 10)),
        Err(ErrorCode::UnexpectedFrame)
    );
    h.uni(1, 2, chunk(0, false, 10)).unwrap();
    assert_eq!(
        h.uni(1, 2, chunk(5, false, 10)),
        Err(ErrorCode::UnexpectedFrame)
    );
    assert_eq!(
        h.uni(1, 3, chunk(1, false, 10)),
        Err(ErrorCode::BlobTooLarge)
    );
    h.uni(1, 4, chunk(0, false, 10)).unwrap();
    h.core.handle_uni_end(h.now, ConnId(1), StreamId(4));
    let st = h.core.stats();
    assert_eq!(
        st.channels
            .iter()
            .find(|c| c.channel_id == 3)
            .unwrap()
            .incomplete_blobs,
        1
    );
}

#[test]
fn too_many_channels_close_the_connection() {
    let mut h = H::new();
    h.connect(1);
    h.ctl(1, hello("k1", "r1", 7, 0));
    for id in 1..=64 {
        h.ctl(1, Body::Declare(decl(id, ChannelKind::Measurement)));
    }
    assert!(h.closes().is_empty());
    h.ctl(1, Body::Declare(decl(65, ChannelKind::Measurement)));
    assert_eq!(h.closes(), vec![(1, ErrorCode::TooManyChannels)]);
    h.connect(2);
    h.ctl(2, hello("k2", "r1", 7, 0));
    h.ctl(
        2,
        Body::Declare(ChannelDecl {
            channel_id: 0,
            kind: 1,
            ..Default::default()
        }),
    );
    assert_eq!(h.closes(), vec![(2, ErrorCode::BadChannel)]);
}

#[test]
fn gone_kiosks_are_forgotten_after_the_resume_ttl() {
    let mut h = H::new();
    h.kiosk(1, "k1", 7);
    h.core.handle_closed(h.now, ConnId(1), 0);
    h.take();
    assert_eq!(h.core.stats().kiosks_remembered, 1);
    h.advance(Limits::default().resume_ttl + Duration::from_secs(1));
    assert_eq!(h.core.stats().kiosks_remembered, 0);
    assert_eq!(h.core.poll_timeout(), None);
}

#[test]
fn a_room_that_moves_tells_its_kiosks_and_only_them() {
    let mut h = H::new();
    let room = RoomId::parse("r1").unwrap();
    assert_eq!(h.core.move_room(h.now, &room, "http://b:8080", "drain"), 0);
    h.kiosk(1, "k1", 7);
    h.take();
    let other = RoomId::parse("r2").unwrap();
    assert_eq!(h.core.move_room(h.now, &other, "http://b:8080", "drain"), 0);
    assert!(h.take().is_empty());
    assert_eq!(h.core.move_room(h.now, &room, "http://b:8080", "drain"), 1);
    let out = h.take();
    assert!(
        out.iter().any(|o| matches!(o, Output::Send { conn: ConnId(1), frame: ServerFrame { body: Some(server_frame::Body::Move(m)) } } if m.url == "http://b:8080" && m.reason == "drain")),
        "{out:?}"
    );
}
