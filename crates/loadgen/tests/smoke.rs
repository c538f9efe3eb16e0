//! Smoke test of the benchmark harness (a few seconds, run by `cargo test`): one 1:1
//! consultation against the real `cabine` binary over WebRTC and against the bare relay, a short
//! window each. It checks that the harness measures — streams received, latencies positive,
//! every class present, the report well-formed JSON with a plot — and never asserts speed.
//! A second test runs the cluster benchmark in small (two nodes on a real `redis-server`).

use std::path::PathBuf;
use std::time::Duration;

use cabine_loadgen::runner::{self, Options, Scenario};
use cabine_loadgen::scenario::RampLimits;
use cabine_loadgen::target::{self, Kind};

/// The `cabine` binary cargo built for this workspace (`target/<profile>/cabine`, found next
/// to this test's executable) or `$CABINE_BIN`. Cargo hands a test only its own package's
/// binaries (`CARGO_BIN_EXE_*`), and building the server from inside a test fights the running
/// `cargo test` for the build lock; `cargo test --workspace` (CI, `scripts/test`) builds it
/// before any test runs.
fn cabine_bin() -> PathBuf {
    target::find_cabine().unwrap_or_else(|| {
        panic!(
            "no cabine binary next to {:?}: run `cargo build -p cabine-server` first (or \
             `cargo test --workspace`, which builds it), or set CABINE_BIN",
            std::env::current_exe().ok()
        )
    })
}

#[test]
fn harness_measures_cabine_and_relay() {
    let out = std::env::temp_dir().join(format!("cabine-loadgen-smoke-{}", std::process::id()));
    let opts = Options {
        scenarios: vec![Scenario::OneToOne],
        targets: vec![Kind::Cabine, Kind::Relay],
        consultations: 1,
        ramp: RampLimits {
            p99_us: 10_000.0,
            loss: 0.001,
            step: 1,
            max: 1,
        },
        loss: 0.0,
        threads: 1,
        server_workers: 1,
        server_initial_kbps: Some(5_000),
        warmup: Duration::from_millis(800),
        duration: Duration::from_millis(1_500),
        ice: cabine_loadgen::tcp::IceTransport::Udp,
        turn_bin: PathBuf::from("turnserver"),
        cabine_bin: cabine_bin(),
        janus_bin: PathBuf::from("/usr/bin/janus"),
        loadgen_bin: PathBuf::from(env!("CARGO_BIN_EXE_cabine-loadgen")),
        command: "smoke".into(),
    };
    let report = runner::run(&opts);
    report.write(&out).expect("report written");
    let table = report.table();
    // Shown with `--nocapture`.
    eprintln!("{table}");
    assert_eq!(report.runs.len(), 2, "{table}");
    for run in &report.runs {
        assert!(
            run.error.is_none(),
            "{:?}: {:?}\n{table}",
            run.target,
            run.error
        );
        let m = run.measurement.as_ref().expect("a measurement");
        assert_eq!(m.peers_failed, 0, "{table}");
        assert!(
            m.forwarded_packets > 0,
            "{:?} forwarded nothing\n{table}",
            run.target
        );
        assert!(m.overall.latency_us_p50 > 0.0, "{table}");
        assert!(
            m.overall.latency_us_p999 >= m.overall.latency_us_p50,
            "{table}"
        );
        // The target's process is sampled: its memory always, and Cabine's CPU (DTLS-SRTP for
        // ~600 packets/s of a debug build over the window is far above /proc's 10 ms tick;
        // the bare relay's may round to zero).
        assert!(
            m.server_rss_bytes > 0,
            "{:?}: RSS not sampled\n{table}",
            run.target
        );
        if run.target == Kind::Cabine {
            assert!(m.server_cores > 0.0, "Cabine's CPU not sampled\n{table}");
        }
        // Every receiver (the kiosk's and the doctor's) got media, after a positive time.
        assert_eq!(m.first_media_peers, 2, "{:?}\n{table}", run.target);
        assert!(
            m.first_media_ms_p50.is_some_and(|t| t > 0.0)
                && m.first_media_ms_p99 >= m.first_media_ms_p50,
            "{:?}: time to first media\n{table}",
            run.target
        );
        // Kiosk → doctor: both cameras and both audio classes arrive.
        assert_eq!(m.by_class.len(), 4, "{:?}\n{table}", run.target);
        assert!(m.generator_cores > 0.0);
    }
    let cabine = report
        .runs
        .iter()
        .find(|r| r.target == Kind::Cabine)
        .unwrap();
    let m = cabine.measurement.as_ref().unwrap();
    assert!(
        m.sfu_delay_us_p50.is_some(),
        "forwarding-delay histogram scraped\n{table}"
    );
    assert_eq!(report.ratios.len(), 1);

    let json = std::fs::read_to_string(out.join("report.json")).expect("report.json");
    let v: serde_json::Value = serde_json::from_str(&json).expect("well-formed JSON");
    assert_eq!(v["runs"].as_array().map(Vec::len), Some(2));
    assert!(
        v["runs"][0]["measurement"]["overall"]["latency_us_p99"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    let svg = std::fs::read_to_string(out.join("one-to-one.svg")).expect("plot");
    assert!(svg.contains("<svg") && svg.contains("polyline"));
    let _ = std::fs::remove_dir_all(&out);
}

/// The cluster benchmark's harness (issue 11), in small: two nodes on a real `redis-server`,
/// one consultation joined through the room's node and one through the other node, then the
/// short idle windows. It checks that the harness measures what it says — direct joins are
/// never redirected, redirected ones always are, every receiver got media, Redis's commands
/// are counted only for the cluster — and never how fast.
#[test]
fn cluster_harness_compares_direct_and_redirected_joins() {
    let redis_bin = PathBuf::from("redis-server");
    assert!(
        std::process::Command::new(&redis_bin)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "redis-server is needed (Debian package redis-server; scripts/test installs it)"
    );
    let opts = cabine_loadgen::cluster::ClusterOptions {
        cabine_bin: cabine_bin(),
        redis_bin,
        nodes: 2,
        consultations: 1,
        idle_rooms: 2,
        // Longer than the registry refresh (2 s): every node writes its record in the window.
        window: Duration::from_millis(2_500),
        settle: Duration::ZERO,
        server_workers: 1,
        server_initial_kbps: Some(5_000),
        threads: 1,
        command: "smoke".into(),
    };
    let report = cabine_loadgen::cluster::run(&opts);
    let table = report.table();
    eprintln!("{table}");
    assert!(report.errors.is_empty(), "{table}");
    let (d, r) = (&report.direct, &report.redirected);
    // Kiosk and doctor: two WHIPs and two WHEPs each way.
    assert_eq!((d.requests, r.requests), (4, 4), "{table}");
    assert_eq!(d.redirects, 0, "direct joins were redirected\n{table}");
    assert_eq!(r.redirects, 4, "every redirected request, once\n{table}");
    for j in [d, r] {
        assert_eq!((j.receivers, j.first_media_peers), (2, 2), "{table}");
        assert!(j.first_media_ms_p50.is_some_and(|t| t > 0.0), "{table}");
        assert!(j.signalling_ms_p99 >= j.signalling_ms_p50, "{table}");
    }
    assert_eq!(report.idle.len(), 4, "{table}");
    for w in &report.idle {
        assert!(w.seconds >= 2.5, "{table}");
        if w.setup == "cluster" {
            assert_eq!(w.nodes, 2, "{table}");
            assert!(
                w.redis_commands_per_s.is_some_and(|c| c > 0.0),
                "the registry's commands counted\n{table}"
            );
            assert!(w.redis_cores.is_some(), "{table}");
        } else {
            assert_eq!(w.nodes, 1, "{table}");
            assert_eq!(w.redis_commands_per_s, None, "{table}");
        }
    }
    let out = std::env::temp_dir().join(format!("cabine-loadgen-cluster-{}", std::process::id()));
    report.write(&out).expect("report written");
    let json = std::fs::read_to_string(out.join("cluster.json")).expect("cluster.json");
    let v: serde_json::Value = serde_json::from_str(&json).expect("well-formed JSON");
    assert_eq!(v["redirected"]["redirects"], 4);
    let _ = std::fs::remove_dir_all(&out);
}

/// ICE over TCP (issue 13), the generator's side: a publishing peer with only an active TCP
/// candidate, against a passive TCP candidate served here by a bare str0m endpoint over a real
/// loopback TCP connection with RFC 4571 framing (the server's ICE-TCP is tested in its own
/// crate). The peer connects (ICE + DTLS over the one TCP connection) and its RTP arrives.
#[test]
fn an_ice_tcp_peer_connects_and_sends_media_over_one_tcp_connection() {
    use cabine_loadgen::engine::{Engine, EngineConfig};
    use cabine_loadgen::media::StreamClass;
    use cabine_loadgen::peer::{Peer, Role};
    use cabine_loadgen::tcp::{self, IceTransport};
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Instant;
    use str0m::change::SdpOffer;
    use str0m::net::{Protocol, Receive, TcpType};
    use str0m::{Candidate, Event, Input, Output, RtcConfig};

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let passive = listener.local_addr().unwrap();
    let mut server = RtcConfig::new()
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_vp8(true)
        .enable_opus(true, false)
        .build(Instant::now());
    server.add_local_candidate(
        Candidate::builder()
            .tcp()
            .host(passive)
            .tcptype(TcpType::Passive)
            .build()
            .unwrap(),
    );
    let pending = Peer::webrtc_offer_over(
        "kiosk/whip".into(),
        0,
        &Role::Publish(vec![(1, StreamClass::Camera), (2, StreamClass::Microphone)]),
        IceTransport::Tcp,
        None,
    )
    .unwrap();
    assert!(
        pending.offer.contains("tcptype active") && !pending.offer.contains(" udp "),
        "only an active TCP candidate offered:\n{}",
        pending.offer
    );
    let answer = server
        .sdp_api()
        .accept_offer(SdpOffer::from_sdp_string(&pending.offer).unwrap())
        .unwrap()
        .to_sdp_string();
    let mut engine = Engine::start(EngineConfig {
        threads: 1,
        loss: 0.0,
    })
    .unwrap();
    // Connects to the answer's passive candidate.
    engine.add(pending.accept(&answer).unwrap());

    let mut conn: Option<(TcpStream, std::net::SocketAddr)> = None;
    let (mut rx, mut buf, mut tmp) = (Vec::new(), vec![0u8; 2048], vec![0u8; 65536]);
    let (mut connected, mut rtp) = (false, 0u32);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(connected && rtp >= 10) {
        assert!(
            Instant::now() < deadline,
            "not within 20 s: connected {connected}, {rtp} RTP packets"
        );
        if conn.is_none() {
            if let Ok((s, from)) = listener.accept() {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
                conn = Some((s, from));
            }
        }
        let now = Instant::now();
        if let Some((s, from)) = &mut conn {
            if let Ok(n) = s.read(&mut tmp) {
                assert!(n > 0, "the peer closed its connection");
                rx.extend_from_slice(&tmp[..n]);
            }
            let mut at = 0;
            while let Some(n) = tcp::next_frame(&rx[at..], &mut buf).unwrap() {
                at += n + 2;
                let r = Receive::new(Protocol::Tcp, *from, passive, &buf[..n]).unwrap();
                server.handle_input(Input::Receive(now, r)).unwrap();
            }
            rx.drain(..at);
        } else {
            std::thread::sleep(Duration::from_millis(5));
        }
        server.handle_input(Input::Timeout(Instant::now())).unwrap();
        loop {
            match server.poll_output().unwrap() {
                Output::Timeout(_) => break,
                Output::Transmit(t) => {
                    assert_eq!(t.proto, Protocol::Tcp);
                    let mut wire = Vec::new();
                    tcp::frame(&t.contents, &mut wire).unwrap();
                    if let Some((s, _)) = &mut conn {
                        s.write_all(&wire).unwrap();
                    }
                }
                Output::Event(Event::Connected) => connected = true,
                Output::Event(Event::RtpPacket(_)) => rtp += 1,
                Output::Event(_) => {}
            }
        }
    }
    let snap = engine.snapshot();
    assert!(
        snap[0].connected && snap[0].failed.is_none(),
        "{:?}",
        snap[0].failed
    );
    assert!(snap[0].sent > 0);
    engine.stop();
}

/// TURN (issue 13): one 1:1 consultation against the real `cabine` whose peers offer only a
/// relayed candidate on a private coturn (Debian's `turnserver`, started by the harness), so
/// every packet crosses coturn both ways; media arrives at both receivers.
#[test]
fn harness_measures_cabine_through_coturn() {
    assert!(
        std::process::Command::new("turnserver")
            .arg("--help")
            .output()
            .is_ok(),
        "turnserver is needed (Debian package coturn; scripts/test installs it)"
    );
    let opts = Options {
        scenarios: vec![Scenario::OneToOne],
        targets: vec![Kind::Cabine],
        consultations: 1,
        ramp: RampLimits {
            p99_us: 10_000.0,
            loss: 0.001,
            step: 1,
            max: 1,
        },
        loss: 0.0,
        threads: 1,
        server_workers: 1,
        server_initial_kbps: Some(5_000),
        warmup: Duration::from_millis(800),
        duration: Duration::from_millis(1_500),
        ice: cabine_loadgen::tcp::IceTransport::Turn,
        turn_bin: PathBuf::from("turnserver"),
        cabine_bin: cabine_bin(),
        janus_bin: PathBuf::from("/usr/bin/janus"),
        loadgen_bin: PathBuf::from(env!("CARGO_BIN_EXE_cabine-loadgen")),
        command: "smoke turn".into(),
    };
    let report = runner::run(&opts);
    let table = report.table();
    eprintln!("{table}");
    let run = &report.runs[0];
    assert!(run.error.is_none(), "{:?}\n{table}", run.error);
    let m = run.measurement.as_ref().expect("a measurement");
    assert_eq!(m.peers_failed, 0, "{table}");
    assert!(m.forwarded_packets > 0, "nothing through coturn\n{table}");
    assert_eq!(m.first_media_peers, 2, "{table}");
    assert_eq!(m.by_class.len(), 4, "{table}");
}

/// The quality benchmark's harness (issue 14), in small: the real `cabine-kiosk dial` and a
/// WHEP receiver, each behind a `rural-adsl` impairment relay, a short window. It checks that
/// the report has every field the targets need, filled from media that really flowed
/// (every track received, both cameras shown, the stethoscope's frames counted, latency matched
/// to the kiosk's send times through the tap), and never how good the figures are.
#[test]
fn quality_harness_reports_every_field() {
    use cabine_loadgen::quality::{self, QualityOptions, TRACKS};
    let kiosk_bin = quality::find_kiosk().unwrap_or_else(|| {
        panic!(
            "no cabine-kiosk binary next to {:?}: run `cargo build -p cabine-kiosk` first (or \
             `cargo test --workspace`), or set LOADGEN_KIOSK_BIN",
            std::env::current_exe().ok()
        )
    });
    let out = std::env::temp_dir().join(format!("cabine-quality-smoke-{}", std::process::id()));
    let opts = QualityOptions {
        profile: cabine_impair::Profile::rural_adsl(),
        warmup: Duration::from_secs(2),
        duration: Duration::from_secs(3),
        jitter_buffer: Duration::from_millis(80),
        cabine_bin: cabine_bin(),
        kiosk_bin,
        kiosk_args: Vec::new(),
        kiosk_log: None,
        command: "smoke".into(),
    };
    // The harness waits (with a deadline) for the kiosk's four labelled tracks before its window.
    let report = quality::run(&opts).expect("the quality run");
    report.write(&out).expect("report written");
    let table = report.table();
    eprintln!("{table}");
    assert_eq!(report.profile, "rural-adsl");
    assert_eq!(report.tracks_received, 4, "{table}");
    for id in ["stethoscope", "microphone"] {
        let a = report
            .audio
            .get(id)
            .unwrap_or_else(|| panic!("{id}\n{table}"));
        assert!(a.expected > 0 && a.in_time > 0, "{id}: {a:?}");
        assert_eq!(a.expected, a.in_time + a.late + a.lost, "{id}: {a:?}");
        assert!(
            (a.in_time_pct + a.concealed_pct - 100.0).abs() < 1e-6,
            "{a:?}"
        );
        assert_eq!(a.frame_ms, 20.0, "{id}: 20 ms Opus frames");
        assert!(
            a.excess_delay_p99_ms >= a.excess_delay_p95_ms,
            "{id}: {a:?}"
        );
    }
    for id in ["device-camera", "room-camera"] {
        let c = report
            .cameras
            .get(id)
            .unwrap_or_else(|| panic!("{id}\n{table}"));
        assert!(c.frames > 0 && c.fps > 0.0, "{id}: nothing shown\n{table}");
        assert!(c.width.is_some() && c.height.is_some(), "{id}: {c:?}");
        assert!(c.longest_gap_ms > 0.0, "{c:?}");
    }
    for id in TRACKS {
        let l = report
            .latency_ms
            .get(id)
            .unwrap_or_else(|| panic!("{id}\n{table}"));
        // Matched to the kiosk's send times: the tap saw the frames the receiver got.
        assert!(l.matched > 0, "{id}: no latency\n{table}");
        assert_eq!(l.percentiles.count, l.matched + l.estimated);
        let p = &l.percentiles;
        assert!(
            p.p50 > 0.0 && p.p50 <= p.p95 && p.p95 <= p.p99 && p.p99 <= p.max,
            "{p:?}"
        );
    }
    // The targets this profile sets are evaluated (true or false, not missing).
    assert!(report.targets.stethoscope_in_time.is_some(), "{table}");
    assert!(report.targets.device_camera_freeze.is_some(), "{table}");
    assert!(report.targets.latency_p95.is_none(), "4g-doctor only");
    // Both impaired links carried the call.
    for side in ["kiosk", "doctor"] {
        let l = &report.links[side];
        assert!(l.uplink[3] > 0 && l.downlink[3] > 0, "{side}: {l:?}");
    }
    assert!(report.kiosk["tracks"]["stethoscope"]["frames"].as_u64() > Some(0));

    let json = std::fs::read_to_string(out.join("quality-rural-adsl.json")).expect("json");
    let v: serde_json::Value = serde_json::from_str(&json).expect("well-formed JSON");
    for key in [
        "date_utc",
        "machine",
        "load_average",
        "audio",
        "cameras",
        "latency_ms",
        "room_camera_degraded_first",
        "targets",
        "links",
        "kiosk",
    ] {
        assert!(v.get(key).is_some(), "{key} missing from the JSON");
    }
    for field in [
        "freeze_s_per_min",
        "longest_freeze_ms",
        "fps",
        "width",
        "resolutions",
    ] {
        assert!(
            v["cameras"]["device-camera"].get(field).is_some(),
            "{field}"
        );
    }
    assert!(v["latency_ms"]["device-camera"]["p95"].as_f64().is_some());
    assert!(std::fs::read_to_string(out.join("quality-rural-adsl.txt")).is_ok());
    let _ = std::fs::remove_dir_all(&out);
}
