//! Deterministic tests of the kiosk client's sans-IO core: hand-made server frames, fake time,
//! no sockets.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cabine_proto::telemetry::{
    client_frame, server_frame, Ack, ChannelDecl, ChannelKind, ClientFrame, ClockEstimate, Command,
    Measurement, Move, Ping, ServerFrame, Status, Value, WaveformChunk,
};
use cabine_proto::RoomId;
use cabine_sidecar::client::core::{ClientCore, Event, Transmit, CONTROL_QUEUE};
use cabine_sidecar::client::reconnect::{Action, Dial, SessionEnd, Transport};
use cabine_sidecar::client::{ClientConfig, ClientError, ConnectionState, StreamTransport, Target};
use cabine_sidecar::tls::ServerVerification;

const MIN: Duration = Duration::from_millis(100);
const MAX: Duration = Duration::from_millis(1000);
const QUIC_TIMEOUT: Duration = Duration::from_secs(3);

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn config(stream: bool) -> ClientConfig {
    let mut c = ClientConfig::new(
        addr(4443),
        "k1",
        RoomId::parse("r1").unwrap(),
        ServerVerification::InsecureAcceptAny,
    );
    c.reconnect_min = MIN;
    c.reconnect_max = MAX;
    if stream {
        let mut t = StreamTransport::new(
            "ws://127.0.0.1:8080/api/telemetry/ws",
            ServerVerification::InsecureAcceptAny,
        );
        t.quic_timeout = QUIC_TIMEOUT;
        c.stream = Some(t);
    }
    c
}

fn other_target(port: u16) -> Target {
    Target::new(
        addr(port),
        "localhost",
        ServerVerification::InsecureAcceptAny,
        None,
    )
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
        ..Default::default()
    }
}

fn meas(channel: u32, seq: u64) -> Measurement {
    Measurement {
        channel_id: channel,
        seq,
        capture_time_us: 1,
        values: vec![Value {
            loinc: "8867-4".into(),
            mdc_code: 149530,
            value: 70.0,
            unit: "/min".into(),
        }],
        status: 1,
    }
}

fn wave(channel: u32, seq: u64) -> WaveformChunk {
    WaveformChunk {
        channel_id: channel,
        seq,
        sample_rate_hz: 500.0,
        leads: 1,
        scale: 0.005,
        samples: vec![0; 10],
        ..Default::default()
    }
}

fn status(detail: &str) -> ClientFrame {
    ClientFrame {
        body: Some(client_frame::Body::Status(Status {
            channel_id: 1,
            detail: detail.into(),
            ..Default::default()
        })),
    }
}

fn server(b: server_frame::Body) -> ServerFrame {
    ServerFrame { body: Some(b) }
}

fn ack(channel: u32, up_to: u64) -> ServerFrame {
    server(server_frame::Body::Ack(Ack {
        channel_id: channel,
        up_to_seq: up_to,
    }))
}

/// The core with a fake clock.
struct H {
    core: ClientCore,
    now: Instant,
}

impl H {
    fn new(stream: bool) -> H {
        H {
            core: ClientCore::new(&config(stream), 7),
            now: Instant::now(),
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.core.handle_timeout(self.now);
    }

    /// The next action, which must be a dial.
    fn dial(&mut self) -> Dial {
        match self.core.poll_action() {
            Some(Action::Dial(d)) => *d,
            other => panic!("expected a dial, got {other:?}"),
        }
    }

    fn expect_ask(&mut self) {
        match self.core.poll_action() {
            Some(Action::Rediscover) => {}
            other => panic!("expected a rediscovery, got {other:?}"),
        }
    }

    /// Dials (the action pending) and establishes the session.
    fn establish(&mut self) -> Dial {
        let d = self.dial();
        self.core.handle_established(self.now, "s".into());
        d
    }

    fn end(&mut self, end: SessionEnd) {
        self.core.handle_session_end(self.now, end);
    }

    fn answer(&mut self, found: Option<Target>) {
        self.core.handle_discovered(self.now, found);
    }

    fn transmits(&mut self) -> Vec<Transmit> {
        std::iter::from_fn(|| self.core.poll_transmit()).collect()
    }

    /// The seqs of the measurements written now (other writes are drained too).
    fn sent_seqs(&mut self) -> Vec<(u32, u64)> {
        self.transmits()
            .into_iter()
            .filter_map(|t| match t {
                Transmit::Measurement(m) => Some((m.channel_id, m.seq)),
                _ => None,
            })
            .collect()
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.core.poll_event()).collect()
    }

    fn states(&mut self) -> Vec<ConnectionState> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::State(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    /// After a loss: no rediscovery answer, then the wait before the next dial.
    fn wait_after_unchanged_answer(&mut self) -> Duration {
        self.expect_ask();
        self.answer(None);
        assert!(self.core.poll_action().is_none(), "dialled without waiting");
        let at = self.core.poll_timeout().expect("a backoff");
        at - self.now
    }
}

fn is_quic(d: &Dial) -> bool {
    matches!(d.transport, Transport::Quic { .. })
}

fn is_stream(d: &Dial) -> bool {
    matches!(d.transport, Transport::Stream(_))
}

#[test]
fn sequence_numbers_per_channel_and_kind() {
    let mut h = H::new(false);
    h.core.declare(decl(1, ChannelKind::Measurement)).unwrap();
    h.core.declare(decl(2, ChannelKind::Measurement)).unwrap();
    h.core.declare(decl(3, ChannelKind::Waveform)).unwrap();
    let seqs: Vec<u64> = [(1, 0), (1, 0), (2, 0), (1, 10), (1, 0), (2, 0)]
        .into_iter()
        .map(|(c, s)| h.core.push_measurement(meas(c, s)).unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 2, 1, 10, 11, 2]);
    let waves: Vec<u64> = [0, 0, 5, 0]
        .into_iter()
        .map(|s| h.core.prepare_waveform(wave(3, s)).unwrap().seq)
        .collect();
    assert_eq!(waves, vec![1, 2, 5, 6]);
    // Undeclared channels and the wrong kind are refused.
    assert_eq!(
        h.core.push_measurement(meas(9, 0)),
        Err(ClientError::UnknownChannel(9))
    );
    assert_eq!(
        h.core.push_measurement(meas(3, 0)),
        Err(ClientError::UnknownChannel(3))
    );
    assert_eq!(
        h.core.prepare_waveform(wave(1, 0)),
        Err(ClientError::UnknownChannel(1))
    );
}

#[test]
fn a_declaration_is_ready_once_acknowledged() {
    let mut h = H::new(false);
    h.core.declare(decl(1, ChannelKind::Measurement)).unwrap();
    h.core.push_measurement(meas(1, 0)).unwrap();
    // Nothing is written before a session.
    assert!(h.core.poll_transmit().is_none());
    h.establish();
    assert_eq!(
        h.states(),
        vec![ConnectionState::Connected {
            session_id: "s".into()
        }]
    );
    let first = h.transmits();
    assert!(
        matches!(&first[..], [Transmit::Control(ClientFrame { body: Some(client_frame::Body::Declare(d)) })] if d.channel_id == 1),
        "{first:?}"
    );
    assert!(!h.core.is_ready(1));
    h.core.handle_frame(0, ack(1, 0));
    assert!(h.core.is_ready(1));
    assert_eq!(h.sent_seqs(), vec![(1, 1)]);
    // Declared again: not ready until acknowledged again.
    h.core.declare(decl(1, ChannelKind::Measurement)).unwrap();
    assert!(!h.core.is_ready(1));
    h.core.push_measurement(meas(1, 0)).unwrap();
    assert_eq!(h.sent_seqs(), vec![]);
    h.core.handle_frame(0, ack(1, 1));
    assert_eq!(h.sent_seqs(), vec![(1, 2)]);
    // A lost session: nothing is ready.
    h.end(SessionEnd::Lost { established: true });
    assert!(!h.core.is_ready(1) && !h.core.is_connected());
}

#[test]
fn unacknowledged_measurements_are_resent_after_a_reconnection() {
    let mut h = H::new(false);
    h.core.declare(decl(1, ChannelKind::Measurement)).unwrap();
    h.establish();
    h.core.handle_frame(0, ack(1, 0));
    for _ in 0..5 {
        h.core.push_measurement(meas(1, 0)).unwrap();
    }
    assert_eq!(h.sent_seqs(), (1..=5).map(|s| (1, s)).collect::<Vec<_>>());
    h.core.handle_frame(0, ack(1, 2));
    assert_eq!(h.core.unacked(), 3);
    h.end(SessionEnd::Lost { established: true });
    assert_eq!(h.wait_after_unchanged_answer(), MIN);
    h.advance(MIN);
    h.establish();
    // The resume ack says the server got up to 4 before the link died: only 5 is resent.
    assert_eq!(h.sent_seqs(), vec![]);
    h.core.handle_frame(0, ack(1, 4));
    assert_eq!(h.sent_seqs(), vec![(1, 5)]);
    let st = h.core.stats();
    assert_eq!(
        (st.measurements_sent, st.measurements_resent, st.sessions),
        (5, 1, 2)
    );
    h.core.handle_frame(0, ack(1, 5));
    assert_eq!(h.core.unacked(), 0);
    assert_eq!(h.core.stats().measurements_acked, 5);
}

#[test]
fn a_new_server_that_knows_less_gets_the_retained_measurements_again() {
    let mut h = H::new(false);
    h.core.declare(decl(1, ChannelKind::Measurement)).unwrap();
    h.establish();
    h.core.handle_frame(0, ack(1, 0));
    for _ in 0..5 {
        h.core.push_measurement(meas(1, 0)).unwrap();
    }
    h.sent_seqs();
    h.core.handle_frame(0, ack(1, 5));
    assert_eq!(h.core.unacked(), 0);
    h.end(SessionEnd::Lost { established: true });
    // The room moved: another node, which never heard of this kiosk.
    h.expect_ask();
    h.answer(Some(other_target(5000)));
    h.core.push_measurement(meas(1, 0)).unwrap();
    let d = h.establish();
    assert_eq!(d.target.server, addr(5000));
    h.core.handle_frame(0, ack(1, 2));
    assert_eq!(h.sent_seqs(), (3..=6).map(|s| (1, s)).collect::<Vec<_>>());
    h.core.handle_frame(0, ack(1, 6));
    assert_eq!(h.core.unacked(), 0);
}

#[test]
fn an_established_session_lost_asks_first_and_dials_a_new_answer_at_once() {
    let mut h = H::new(false);
    // Failures first, so the backoff has grown.
    h.dial();
    h.end(SessionEnd::Lost { established: false });
    assert_eq!(h.wait_after_unchanged_answer(), MIN);
    h.advance(MIN);
    h.dial();
    h.end(SessionEnd::Lost { established: false });
    assert_eq!(h.wait_after_unchanged_answer(), 2 * MIN);
    h.advance(2 * MIN);
    h.establish();
    h.events();
    h.end(SessionEnd::Lost { established: true });
    assert_eq!(h.states(), vec![ConnectionState::Connecting]);
    // Asked before any wait; a new answer is dialled at once.
    h.expect_ask();
    assert!(h.core.poll_timeout().is_none());
    h.answer(Some(other_target(5000)));
    let d = h.dial();
    assert_eq!(d.target.server, addr(5000));
    assert_eq!(h.core.stats().rediscovered, 1);
    // Established there and lost again, the same answer: the same node after reconnect_min
    // (the backoff started over).
    h.core.handle_established(h.now, "s2".into());
    h.end(SessionEnd::Lost { established: true });
    assert_eq!(h.wait_after_unchanged_answer(), MIN);
    h.advance(MIN - Duration::from_millis(1));
    assert!(h.core.poll_action().is_none());
    h.advance(Duration::from_millis(1));
    assert_eq!(h.dial().target.server, addr(5000));
    assert_eq!(h.core.stats().rediscovered, 1);
}

#[test]
fn failed_attempts_back_off_doubling_up_to_the_maximum() {
    let mut h = H::new(false);
    let mut waits = Vec::new();
    for _ in 0..7 {
        assert!(is_quic(&h.dial()));
        h.end(SessionEnd::Lost { established: false });
        let wait = h.wait_after_unchanged_answer();
        waits.push(wait);
        h.advance(wait);
    }
    // No jitter: the delays are exactly these (each within [min, max]).
    let ms: Vec<u64> = waits.iter().map(|w| w.as_millis() as u64).collect();
    assert_eq!(ms, vec![100, 200, 400, 800, 1000, 1000, 1000]);
    assert!(waits.iter().all(|w| *w >= MIN && *w <= MAX));
    // A failure with a new answer dials it at once.
    h.dial();
    h.end(SessionEnd::Lost { established: false });
    h.expect_ask();
    h.answer(Some(other_target(5001)));
    assert_eq!(h.dial().target.server, addr(5001));
    // The same answer as the current target is not new.
    h.end(SessionEnd::Lost { established: false });
    h.expect_ask();
    h.answer(Some(other_target(5001)));
    assert!(h.core.poll_action().is_none());
    assert_eq!(h.core.poll_timeout(), Some(h.now + MAX));
}

#[test]
fn no_quic_handshake_asks_once_then_uses_the_stream_transport() {
    let mut h = H::new(true);
    let d = h.dial();
    assert!(matches!(
        d.transport,
        Transport::Quic {
            handshake_timeout: Some(QUIC_TIMEOUT)
        }
    ));
    h.end(SessionEnd::NoHandshake);
    // Not a loss: the state stays Connecting without a new event, no wait.
    assert!(h.states().is_empty());
    h.expect_ask();
    h.answer(None);
    assert!(is_stream(&h.dial()), "falls back at once");
    // The stream session is established, then lost: QUIC first again.
    h.core.handle_established(h.now, "s".into());
    h.end(SessionEnd::Lost { established: true });
    assert_eq!(h.wait_after_unchanged_answer(), MIN);
    h.advance(MIN);
    assert!(is_quic(&h.dial()));
    // No handshake and a new answer: QUIC to it at once; no handshake there either: no second
    // question, the stream transport at once.
    h.end(SessionEnd::NoHandshake);
    h.expect_ask();
    let mut moved = other_target(5002);
    moved.stream = config(true).stream;
    h.answer(Some(moved));
    let d = h.dial();
    assert!(is_quic(&d) && d.target.server == addr(5002));
    h.end(SessionEnd::NoHandshake);
    assert!(is_stream(&h.dial()));
    // The stream attempt fails: ask, wait, QUIC first again.
    h.end(SessionEnd::Lost { established: false });
    h.expect_ask();
    h.answer(None);
    h.advance(h.core.poll_timeout().unwrap() - h.now);
    assert!(is_quic(&h.dial()));
}

#[test]
fn stream_only_never_dials_quic() {
    let mut c = config(true);
    if let Some(t) = c.stream.as_mut() {
        t.only = true;
    }
    let mut core = ClientCore::new(&c, 1);
    let now = Instant::now();
    for _ in 0..3 {
        match core.poll_action() {
            Some(Action::Dial(d)) => assert!(is_stream(&d)),
            other => panic!("{other:?}"),
        }
        core.handle_session_end(now, SessionEnd::Lost { established: false });
        core.handle_discovered(now, None);
        core.handle_timeout(core.poll_timeout().unwrap());
    }
}

#[test]
fn a_retarget_asks_at_once() {
    let mut h = H::new(false);
    h.establish();
    h.core.retarget();
    h.end(SessionEnd::Lost { established: true });
    h.expect_ask();
    h.answer(Some(other_target(6000)));
    assert_eq!(h.dial().target.server, addr(6000));
    // A retarget whose answer did not change yet: the established rule asks again, then the
    // same node after reconnect_min.
    h.core.handle_established(h.now, "s".into());
    h.core.retarget();
    h.end(SessionEnd::Lost { established: true });
    h.expect_ask();
    h.answer(None);
    assert_eq!(h.wait_after_unchanged_answer(), MIN);
}

#[test]
fn the_control_queue_is_bounded() {
    let mut h = H::new(false);
    // Not connected: refused and counted.
    assert_eq!(
        h.core.send_control(status("early")),
        Err(ClientError::NotConnected)
    );
    assert_eq!(h.core.stats().control_dropped, 1);
    h.establish();
    let n = CONTROL_QUEUE + 44;
    for i in 0..n {
        h.core.send_control(status(&i.to_string())).unwrap();
    }
    assert_eq!(h.core.stats().control_dropped, 1 + 44);
    let details: Vec<String> = h
        .transmits()
        .into_iter()
        .map(|t| match t {
            Transmit::Control(ClientFrame {
                body: Some(client_frame::Body::Status(s)),
            }) => s.detail,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(details.len(), CONTROL_QUEUE);
    assert_eq!(details[0], "44");
    assert_eq!(details[CONTROL_QUEUE - 1], (n - 1).to_string());
}

#[test]
fn pings_are_answered_first_and_commands_moves_and_clock_are_taken_in() {
    let mut h = H::new(false);
    h.establish();
    h.transmits();
    h.events();
    h.core.send_control(status("queued")).unwrap();
    h.core.handle_frame(
        123_456,
        server(server_frame::Body::Ping(Ping {
            id: 9,
            server_time_us: 42,
        })),
    );
    let t = h.transmits();
    match &t[..] {
        [Transmit::Control(ClientFrame {
            body: Some(client_frame::Body::Pong(p)),
        }), Transmit::Control(_)] => {
            assert_eq!((p.id, p.server_time_us, p.kiosk_time_us), (9, 42, 123_456));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.core.stats().pings_answered, 1);
    let cmd = Command {
        command_id: 3,
        channel_id: 1,
        name: "start_measurement".into(),
        ..Default::default()
    };
    h.core
        .handle_frame(0, server(server_frame::Body::Command(cmd.clone())));
    h.core.handle_frame(
        0,
        server(server_frame::Body::Move(Move {
            url: "https://b.example".into(),
            reason: "drain".into(),
        })),
    );
    let clock = ClockEstimate {
        offset_us: -5,
        error_us: 2,
        rtt_us: 4,
    };
    h.core
        .handle_frame(0, server(server_frame::Body::Clock(clock)));
    assert_eq!(
        h.events(),
        vec![
            Event::Command(cmd),
            Event::Move {
                url: "https://b.example".into(),
                reason: "drain".into()
            }
        ]
    );
    assert_eq!(h.core.clock_estimate(), Some(clock));
    assert_eq!(h.core.stats().commands_received, 1);
}

#[test]
fn a_refusal_or_a_close_stops_the_machine() {
    let mut h = H::new(false);
    h.dial();
    h.end(SessionEnd::Fatal(
        cabine_proto::telemetry::ErrorCode::BadToken,
        "no".into(),
    ));
    assert!(matches!(
        &h.states()[..],
        [ConnectionState::Failed { reason, .. }] if reason == "no"
    ));
    assert!(h.core.stopped() && h.core.poll_action().is_none());
    assert!(h.core.poll_timeout().is_none());

    // Closed while backing off: stops at once.
    let mut h = H::new(false);
    h.dial();
    h.end(SessionEnd::Lost { established: false });
    h.wait_after_unchanged_answer();
    h.events();
    h.core.close();
    assert_eq!(h.states(), vec![ConnectionState::Closed]);
    assert!(h.core.stopped() && h.core.poll_timeout().is_none());

    // Closed while asking: stops when the answer comes, even a new one.
    let mut h = H::new(false);
    h.establish();
    h.end(SessionEnd::Lost { established: true });
    h.expect_ask();
    h.core.close();
    h.answer(Some(other_target(7000)));
    assert!(h.core.stopped() && h.core.poll_action().is_none());
}
