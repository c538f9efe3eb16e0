//! ICE-TCP from a network that drops UDP: as root, a network namespace (the `turn_netns`
//! harness: a veth pair to the host) whose iptables rules drop every UDP packet to the host's
//! end, where Cabine listens (HTTP and the media port, `media.tcp` on as by default).
//!
//! First a UDP-only client (`cabine-kiosk`'s library: the webrtc crate gathers UDP candidates
//! only) publishes from inside and cannot connect; with `ice_tcp` (`cabine-kiosk dial
//! --ice-tcp`: a local UDP-to-TCP bridge to the server's passive candidate) the kiosk publishes
//! and subscribes, 50 payloads arrive intact and `/api/rooms` reports both sessions over tcp;
//! then Debian's chromium, inside, runs the
//! kiosk page and the doctor's page (tests/browser/ice_tcp.mjs): chromium gathers active TCP
//! candidates, video is decoded on the doctor's page, each page's selected pair is TCP, and
//! `/api/rooms` and the ops view report `tcp` for the room's sessions while the pages are open.
//!
//! Without root (no namespaces, no iptables) the test prints that it was skipped and why.

use crate::common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::kiosk::{Kiosk, KioskProcess};
use crate::common::netns::{self, Netns};
use cabine_client::{ClientOptions, Publisher, TrackSpec};
use cabine_proto::Role;

const ROOM: &str = "room-ice-tcp-netns";
const DRIVER_TIMEOUT: Duration = Duration::from_secs(200);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_udp_dropped_kiosk_and_chromium_connect_over_ice_tcp_and_the_server_reports_tcp() {
    let Some((dir, _serial, ns)) = netns::prepare("tcp_netns").await else {
        return;
    };
    let s = common::start_with(|c| {
        c.http.listen = SocketAddr::new(ns.host_ip.into(), 0);
        c.media.bind = SocketAddr::new(ns.host_ip.into(), 0);
        // Telemetry's QUIC on the same address, so the namespace's UDP drop applies to it.
        c.telemetry.listen = SocketAddr::new(ns.host_ip.into(), 0).to_string();
        assert!(c.media.tcp, "ICE-TCP is on by default");
        // Two cores for chromium and a debug-build server: be patient with ICE.
        c.media.disconnect_grace = Duration::from_secs(30);
        // /metrics, to read the sessions' transport gauge.
        c.admin.listen = "127.0.0.1:0".into();
    })
    .await;
    let host = ns.host_ip.to_string();
    ns.exec(&[
        "iptables", "-A", "OUTPUT", "-p", "udp", "-d", &host, "-j", "DROP",
    ]);

    // UDP only: the webrtc crate's publisher cannot connect from inside.
    let whip = format!("{}/whip/{ROOM}-udp", s.base);
    let kiosk = s.token(&format!("{ROOM}-udp"), Role::Kiosk, "kiosk-udp");
    let udp_only = ns.block_on(|| async {
        Publisher::connect(
            &whip,
            &kiosk,
            vec![TrackSpec::audio("kiosk-udp", "microphone")],
            ClientOptions {
                gather_timeout: Duration::from_secs(2),
                connect_timeout: Duration::from_secs(8),
                ..ClientOptions::default()
            },
        )
        .await
        .map(|_| ())
    });
    let why =
        udp_only.expect_err("a UDP-only client connected although UDP to the server is dropped");
    eprintln!("tcp_netns: UDP-only publisher from the namespace: {why}");
    // Signalling got through (the POST answered 201: the client waits for the connection only
    // after applying the answer), and it is ICE that failed: the connect timeout, or the
    // peer connection failing.
    assert!(
        matches!(
            &why,
            cabine_client::Error::Timeout {
                what: "the peer connection to be connected",
                ..
            } | cabine_client::Error::ConnectionFailed { .. }
        ),
        "the UDP-only publisher failed for another reason than ICE: {why:?}"
    );

    // cabine-kiosk with `ice_tcp` (`cabine-kiosk dial --ice-tcp`): through its local bridge to
    // the server's passive TCP candidate, it publishes and subscribes from inside.
    let kiosk_room = format!("{ROOM}-kiosk");
    let (base, kiosk, doctor, ops) = (
        s.base.clone(),
        s.token(&kiosk_room, Role::Kiosk, "kiosk-1"),
        s.token(&kiosk_room, Role::Doctor, "dr-1"),
        s.token("*", Role::Operator, "ops-1"),
    );
    let media = ns.block_on(|| ice_tcp_media(&base, &kiosk_room, &kiosk, &doctor, &ops));
    let rooms =
        media.unwrap_or_else(|e| panic!("cabine-kiosk over ICE-TCP from the namespace: {e}"));
    eprintln!("tcp_netns: cabine-kiosk sessions over ICE-TCP: {rooms}");

    // `cabine-kiosk dial --ice-tcp` from inside: media over ICE-TCP, and the vitals, whose
    // QUIC cannot handshake, over the telemetry WebSocket on the HTTP port; a doctor outside
    // receives its measurements on the data channel.
    // It keeps running: the doctor's page in chromium (inside, ICE-TCP) must show its vitals.
    let (vitals, dial) = vitals_from_the_namespace(&s, &ns).await;
    eprintln!("tcp_netns: cabine-kiosk dial's vitals over the stream transport: {vitals}");

    // Chromium inside, ICE-TCP.
    let envs = vec![
        ("CABINE_URL", s.base.clone()),
        ("ROOM", ROOM.to_owned()),
        ("KIOSK_TOKEN", s.token(ROOM, Role::Kiosk, "kiosk-1")),
        ("DOCTOR_TOKEN", s.token(ROOM, Role::Doctor, "dr-1")),
        ("DIAL_ROOM", format!("{ROOM}-dial")),
        (
            "DIAL_DOCTOR_TOKEN",
            s.token(&format!("{ROOM}-dial"), Role::Doctor, "dr-dial-page"),
        ),
        (
            "CHROMIUM_ARGS",
            // The pages' origin is plain HTTP on a private address: treated as secure so the
            // kiosk page may open its camera.
            format!("--unsafely-treat-insecure-origin-as-secure={}", s.base),
        ),
    ];
    // While the pages are open: the server reports the room's sessions over tcp.
    let ops = s.token("*", Role::Operator, "ops-1");
    let mut rooms = serde_json::Value::Null;
    let mut seen_tcp_sessions = 0;
    let mut ops_view = serde_json::Value::Null;
    let mut gauge = (0.0, String::new());
    let out = ns
        .drive_pages(&dir, "ice_tcp.mjs", envs, DRIVER_TIMEOUT, async || {
            let Some(now) = netns::rooms(&s.base, &ops).await else {
                return false;
            };
            rooms = now;
            let tcp_sessions = netns::room_sessions(&rooms, ROOM)
                .filter(|s| s["transport"]["protocol"] == "tcp")
                .count();
            seen_tcp_sessions = seen_tcp_sessions.max(tcp_sessions);
            if tcp_sessions < 2 {
                return false;
            }
            // The transport gauge too (it may lag the rooms' snapshot by a refresh).
            gauge = netns::sessions_by_transport(&s, "/tcp").await;
            if gauge.0 < 2.0 {
                return false;
            }
            // The operators' view says it too (pseudonymous: transport labels only).
            if let Ok(r) = reqwest::Client::new()
                .get(format!("{}/api/ops", s.base))
                .bearer_auth(&ops)
                .send()
                .await
            {
                ops_view = r.json().await.unwrap_or_default();
            }
            true
        })
        .await;
    eprintln!("tcp_netns: chromium driver: {}", out.stdout.trim());
    let dial_stats = dial.stop().await;
    eprintln!(
        "tcp_netns: cabine-kiosk dial's telemetry: {}",
        dial_stats["telemetry"]
    );
    assert!(
        out.ok(),
        "chromium over ICE-TCP failed (exit {}{}):\n{}\n{}\nGET /api/rooms: {rooms:#}",
        out.status,
        out.killed(),
        out.stdout,
        out.stderr,
    );
    assert!(
        seen_tcp_sessions >= 2,
        "/api/rooms did not report the kiosk's and the doctor's sessions over tcp: {rooms:#}"
    );
    assert!(
        gauge.0 >= 2.0,
        "cabine_sfu_sessions_transport did not count the sessions over tcp:\n{}",
        gauge.1
    );
    let ops_tcp = ops_view["rooms"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["participants"].as_array().into_iter().flatten())
        .filter(|p| p["transport"].as_str().is_some_and(|t| t.ends_with("/tcp")))
        .count();
    assert!(
        ops_tcp >= 2,
        "the ops view did not show the sessions over tcp: {ops_view:#}"
    );
    let tcp = &rooms["tcp"];
    assert!(
        tcp["frames_in"].as_u64().unwrap_or(0) > 0 && tcp["connections"].as_u64() >= Some(2),
        "the ICE-TCP listener's counters: {tcp}"
    );
    s.server.shutdown(Duration::from_millis(100)).await;
}

/// Runs `cabine-kiosk dial --ice-tcp` (the binary) inside `ns`
/// and waits until its telemetry is connected over the stream transport (QUIC's UDP is
/// dropped) and a doctor subscribing from outside has received measurements of two device
/// channels from it with decoded media; returns what was seen and the running kiosk (kept up so
/// the doctor's page in chromium receives its vitals too).
async fn vitals_from_the_namespace(s: &common::TestServer, ns: &Netns) -> (String, KioskProcess) {
    use cabine_client::Subscriber;

    let room = format!("{ROOM}-dial");
    let dial = Kiosk::dial(&s.base, &s.token(&room, Role::Kiosk, "kiosk-dial"))
        .args(["--ice-tcp", "--gather-timeout-ms", "2000"])
        .args(["--connect-timeout-ms", "20000", "--no-subscribe"])
        .args(["--oximeter-ms", "250", "--thermometer-ms", "500"])
        .light_media(5, 150)
        .any_interface()
        .in_netns(&ns.name)
        .spawn();
    let telemetry = s.server.telemetry().expect("telemetry enabled");
    let doctor_token = s.token(&room, Role::Doctor, "dr-dial");
    let whep = format!("{}/whep/{room}", s.base);
    let seen = async {
        // The kiosk's telemetry session is up, over the WebSocket.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let st = telemetry.sidecar_stats();
            if st.kiosks_connected >= 1 && st.stream_connections >= 1 {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the kiosk's telemetry did not connect over the stream transport: \
                             {} kiosks, {} stream connections, refusals {:?}",
                    st.kiosks_connected, st.stream_connections, st.refusals
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // A doctor (outside, where UDP works) receives the vitals and the media.
        let doctor = Subscriber::connect(
            &whep,
            &doctor_token,
            ClientOptions {
                data_channel: true,
                recv_video: 2,
                recv_audio: 2,
                ..ClientOptions::default()
            },
        )
        .await
        .map_err(|e| format!("doctor: {e}"))?;
        let tracks = doctor
            .tracks(1, Duration::from_secs(30))
            .await
            .map_err(|e| format!("the kiosk's tracks: {e}"))?;
        tracks[0]
            .read_rtp_timeout(Duration::from_secs(20))
            .await
            .map_err(|e| format!("media on {}: {e}", tracks[0].id()))?;
        let mut channels = std::collections::BTreeMap::<u64, u64>::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while channels.len() < 2 || channels.values().any(|n| *n < 2) {
            if Instant::now() > deadline {
                return Err(format!("measurements per channel: {channels:?}"));
            }
            let Ok(m) = doctor.next_data(Duration::from_millis(500)).await else {
                continue;
            };
            let v: serde_json::Value =
                serde_json::from_slice(&m.data).map_err(|e| e.to_string())?;
            if v["source"] == "kiosk-dial" && v["frame"].get("measurement").is_some() {
                *channels
                    .entry(v["channel_id"].as_u64().unwrap_or(0))
                    .or_default() += 1;
            }
        }
        Ok::<_, String>(format!(
            "measurements per channel {channels:?}, {} stream connection(s)",
            telemetry.sidecar_stats().stream_connections
        ))
    }
    .await;
    match seen {
        Ok(seen) => (seen, dial),
        Err(e) => {
            let exit = dial.interrupt().await;
            panic!(
                "cabine-kiosk dial's vitals from the namespace: {e} (kiosk: {}, {}):\n{}",
                exit.status, exit.stats, exit.output
            )
        }
    }
}

/// A kiosk publishes a microphone over WHIP on `base` in `room` and a doctor subscribes over
/// WHEP, both with `ice_tcp`; 50 consecutive payloads arrive intact and `/api/rooms` (operator
/// token `ops`) reports both sessions over tcp; returns the room's sessions' transports, or the
/// step that failed.
async fn ice_tcp_media(
    base: &str,
    room: &str,
    kiosk: &str,
    doctor: &str,
    ops: &str,
) -> Result<String, String> {
    let opts = ClientOptions {
        ice_tcp: true,
        gather_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(20),
        ..ClientOptions::default()
    };
    common::mic_pair::microphone_to_doctor(
        base,
        room,
        (kiosk, doctor, ops),
        opts,
        |_| Ok(()),
        |t| t["protocol"] == "tcp",
    )
    .await
}
