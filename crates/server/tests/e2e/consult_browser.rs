//! The doctor's page end to end: the real server with its telemetry sidecar, a simulated cabin
//! (`cabine-kiosk` as a library: microphone and stethoscope over WHIP, the doctor over WHEP,
//! simulated devices over QUIC, and a synthetic room camera), and Debian's chromium with fake media devices on
//! `/consult/{room}`, driven by `tests/browser/consult.mjs` (playwright-core).
//!
//! Mid-test the cabin switches a device camera on (a second WHIP session with a synthetic VP8
//! otoscope): the page must show it without a reload. The driver also checks the vitals tiles,
//! the ECG trace, "Measure BP", "Snapshot" (a 1920x1080 JPEG from the kiosk over the telemetry
//! blob channel), the stethoscope, and a WebSocket cut with resume; here we check
//! that the kiosk received the doctor's video. The screenshot lands in
//! `target/screenshots/consult.png` (a CI artifact).
//!
//! Needs `/usr/bin/chromium`, `node` and `npm ci --prefix tests/browser` (`.ci/run` installs
//! them); a missing prerequisite fails the test, it never skips.

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::browser::{check_prerequisites, mint, run_driver, SERIAL};
use cabine_client::{ClientOptions, Codec, Publisher, TrackSpec};
use cabine_kiosk::devices::DevicesConfig;
use cabine_kiosk::dial::{self, DialConfig, Input};
use cabine_kiosk::sources::{MediaSource, Pattern, VideoSource, Vp8Config};
use cabine_proto::jwt::Tokens;
use cabine_proto::Role;
use cabine_server::{Config, Server};
use tokio::sync::oneshot;

const SECRET: &str = "consult-test-secret-0123456789abcdef0123";
const DRIVER_TIMEOUT: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn doctor_page_shows_the_cabin_and_survives_a_signalling_cut() {
    let dir = common::browser::dir();
    check_prerequisites(&dir);
    let _serial = SERIAL.lock().await;

    let mut cfg = Config::defaults();
    cfg.http.listen = "127.0.0.1:0".parse().unwrap();
    cfg.media.bind = "127.0.0.1:0".parse().unwrap();
    cfg.auth.secret = SECRET.into();
    cfg.admin.listen = String::new();
    cfg.telemetry.listen = "127.0.0.1:0".into();
    // Two cores for chromium, the cabin and a debug-build server: be patient with ICE.
    cfg.media.disconnect_grace = Duration::from_secs(30);
    let server = Server::start(cfg).await.expect("server starts");
    let base = format!("http://{}", server.http_addr());
    let tokens = Tokens::new(SECRET.as_bytes());
    let room = "consult-browser";
    let kiosk_token = mint(&tokens, room, Role::Kiosk, "kiosk-1");

    // The cabin: microphone, stethoscope, devices, the doctor over WHEP; its cameras are
    // published next to it, small (two cores for chromium, the cabin and a debug-build server).
    let mut kiosk = DialConfig::new(base.clone(), kiosk_token.clone());
    kiosk.client = ClientOptions::loopback();
    kiosk.media.room_camera = Input::Off;
    kiosk.media.device_camera = Input::Off;
    kiosk.disconnected_grace = Duration::from_secs(20);
    let mut devices = DevicesConfig::new(1, 72.0);
    devices.oximeter_interval = Duration::from_millis(500);
    devices.thermometer_interval = Duration::from_secs(1);
    devices.bp_duration = Duration::from_secs(1);
    kiosk.devices = Some(devices);
    let (stop_kiosk, stopped) = oneshot::channel::<()>();
    let cabin = tokio::spawn(dial::run(kiosk, async move {
        let _ = stopped.await;
    }));

    let room_camera = tokio::spawn(camera(
        format!("{base}/whip/{room}"),
        kiosk_token.clone(),
        "room-camera",
        Pattern::RoomCamera,
    ));

    // Mid-consultation: once the doctor receives the cabin and the cabin receives the doctor
    // (the page has negotiated both ways), the otoscope is switched on. Whether that moment
    // came is asserted at the end.
    let ops = mint(&tokens, "*", Role::Operator, "ops");
    let settled = Arc::new(AtomicBool::new(false));
    let otoscope = {
        let (base, ops, token) = (base.clone(), ops.clone(), kiosk_token.clone());
        let settled = Arc::clone(&settled);
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(90);
            loop {
                let rooms = rooms(&base, &ops).await;
                let sessions = rooms["rooms"][0]["sessions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let doctor_receives = sessions.iter().any(|s| {
                    s["identity"] == "dr-1"
                        && s["kind"] == "subscribe"
                        && s["received"].as_array().is_some_and(|r| {
                            r.iter()
                                .filter(|x| x["stats"]["packets"].as_u64() > Some(100))
                                .count()
                                >= 2
                        })
                });
                if doctor_receives && kiosk_receives_doctor(&sessions) {
                    settled.store(true, Ordering::Relaxed);
                    break;
                }
                if Instant::now() >= deadline {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            camera(
                format!("{base}/whip/{room}"),
                token,
                "device-camera",
                Pattern::Otoscope,
            )
            .await;
        })
    };

    let envs = [
        ("CABINE_URL", base.clone()),
        ("ROOM", room.to_owned()),
        ("DOCTOR_TOKEN", mint(&tokens, room, Role::Doctor, "dr-1")),
    ];
    // The kiosk must receive the doctor's video while the page publishes it: watch for it
    // during the run.
    let kiosk_got_doctor = {
        let (base, ops) = (base.clone(), ops.clone());
        tokio::spawn(async move {
            for _ in 0..600 {
                let rooms = rooms(&base, &ops).await;
                let sessions = rooms["rooms"][0]["sessions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if kiosk_receives_doctor(&sessions) {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            false
        })
    };
    let d = dir.clone();
    let out =
        tokio::task::spawn_blocking(move || run_driver(&d, "consult.mjs", &envs, DRIVER_TIMEOUT))
            .await
            .expect("driver thread");

    let kiosk_got_doctor = kiosk_got_doctor.await.unwrap_or(false);
    let after = rooms(&base, &ops).await;
    otoscope.abort();
    room_camera.abort();
    let _ = stop_kiosk.send(());
    let cabin = tokio::time::timeout(Duration::from_secs(10), cabin).await;
    server.shutdown(Duration::from_secs(1)).await;

    println!("{}", out.stdout.trim_end());
    assert!(
        out.ok(),
        "the consultation page test failed ({}{}).\n--- node stdout ---\n{}\n--- node stderr ---\n{}\n\
         --- the cabin ---\n{cabin:?}\n--- GET /api/rooms at the end ---\n{after:#}",
        out.status,
        out.killed(),
        out.stdout,
        out.stderr
    );
    assert!(
        kiosk_got_doctor,
        "the kiosk never received the doctor's video over WHEP"
    );
    assert!(
        settled.load(Ordering::Relaxed),
        "the doctor and the cabin never received each other within 90 s: the otoscope was \
         never switched on\n--- GET /api/rooms at the end ---\n{after:#}"
    );
}

/// Whether the kiosk's WHEP session receives the doctor's video.
fn kiosk_receives_doctor(sessions: &[serde_json::Value]) -> bool {
    sessions
        .iter()
        .filter(|s| s["identity"] == "kiosk-1" && s["kind"] == "subscribe")
        .flat_map(|s| s["received"].as_array().cloned().unwrap_or_default())
        .any(|r| {
            r["track"]["kind"] == "video"
                && r["from"] == "dr-1"
                && r["stats"]["packets"].as_u64() > Some(50)
        })
}

/// Publishes a synthetic VP8 camera (320x240, 10 fps) labelled `label` until aborted,
/// publishing again when the server ends the session (as a cabin would).
async fn camera(whip: String, token: String, label: &'static str, pattern: Pattern) {
    // Encoding runs on its own thread: it must not starve the runtime the cabin's peer
    // connections run on.
    let (frames_tx, mut frames_rx) = tokio::sync::mpsc::channel(8);
    std::thread::spawn(move || {
        let config = Vp8Config {
            width: 320,
            height: 240,
            ..Vp8Config::new(10, 250)
        };
        let mut source = VideoSource::new(pattern, config).expect("synthetic camera");
        for i in 0..(10 * 240) {
            let Ok(frame) = source.next_frame(i % 20 == 0) else {
                return;
            };
            if frames_tx.blocking_send(frame).is_err() {
                return;
            }
        }
    });
    loop {
        let Ok(publisher) = Publisher::connect(
            &whip,
            &token,
            vec![TrackSpec::video("kiosk-1", label, Codec::Vp8)],
            ClientOptions::loopback(),
        )
        .await
        else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        loop {
            let Some(frame) = frames_rx.recv().await else {
                return;
            };
            if !frame.data.is_empty() {
                let _ = publisher.tracks()[0]
                    .write_sample(&frame.data, frame.duration)
                    .await;
            }
            use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState as S;
            if matches!(publisher.connection_state(), S::Failed | S::Closed) {
                let _ = publisher.close().await;
                break;
            }
            tokio::time::sleep(frame.duration).await;
        }
    }
}

/// The kiosk page and the doctor's page together, over WebSocket signalling only: the kiosk
/// page's publish connection is renegotiated by the page itself when it switches its device
/// camera on, and the doctor's page receives it without a reload (`tests/browser/kiosk_page.mjs`).
#[tokio::test(flavor = "multi_thread")]
async fn kiosk_page_and_doctor_page_over_websocket_signalling() {
    let dir = common::browser::dir();
    check_prerequisites(&dir);
    let _serial = SERIAL.lock().await;
    let mut cfg = Config::defaults();
    cfg.http.listen = "127.0.0.1:0".parse().unwrap();
    cfg.media.bind = "127.0.0.1:0".parse().unwrap();
    cfg.auth.secret = SECRET.into();
    cfg.admin.listen = String::new();
    // Every port free: the other tests of this binary run alongside.
    cfg.telemetry.listen = "127.0.0.1:0".into();
    cfg.media.disconnect_grace = Duration::from_secs(30);
    let server = Server::start(cfg).await.expect("server starts");
    let base = format!("http://{}", server.http_addr());
    let tokens = Tokens::new(SECRET.as_bytes());
    let room = "kiosk-page";
    let envs = [
        ("CABINE_URL", base.clone()),
        ("ROOM", room.to_owned()),
        ("DOCTOR_TOKEN", mint(&tokens, room, Role::Doctor, "dr-1")),
        ("KIOSK_TOKEN", mint(&tokens, room, Role::Kiosk, "kiosk-1")),
    ];
    let out = tokio::task::spawn_blocking(move || {
        run_driver(&dir, "kiosk_page.mjs", &envs, DRIVER_TIMEOUT)
    })
    .await
    .expect("driver thread");
    let ops = mint(&tokens, "*", Role::Operator, "ops");
    let after = rooms(&base, &ops).await;
    server.shutdown(Duration::from_secs(1)).await;
    println!("{}", out.stdout.trim_end());
    assert!(
        out.ok(),
        "the kiosk page test failed ({}{}).\n--- node stdout ---\n{}\n--- node stderr ---\n{}\n\
         --- GET /api/rooms at the end ---\n{after:#}",
        out.status,
        out.killed(),
        out.stdout,
        out.stderr
    );
}

async fn rooms(base: &str, ops: &str) -> serde_json::Value {
    let r = reqwest::Client::new()
        .get(format!("{base}/api/rooms"))
        .bearer_auth(ops)
        .send()
        .await;
    match r {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(_) => serde_json::Value::Null,
    }
}
