//! The doctor's page end to end: the real server with its telemetry sidecar, a simulated cabin
//! (`cabine-kiosk dial` processes: microphone and stethoscope over WHIP, the doctor over WHEP,
//! simulated devices over QUIC, and a synthetic room camera), and Debian's chromium with fake
//! media devices on `/consult/{room}`, driven by `tests/browser/consult.mjs` (playwright-core).
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
use crate::common::kiosk::{Kiosk, KioskProcess};
use cabine_proto::jwt::Tokens;
use cabine_proto::Role;
use cabine_server::{Config, Server};

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
    let cabin = Kiosk::dial(&base, &kiosk_token)
        .args([
            "--room-camera",
            "off",
            "--device-camera",
            "off",
            "--stills",
            "on",
        ])
        .args([
            "--disconnected-grace-ms",
            "20000",
            "--bp-duration-ms",
            "1000",
        ])
        .args(["--oximeter-ms", "500", "--thermometer-ms", "1000"])
        .spawn();
    let room_camera = camera(&base, &kiosk_token, "--room-camera");

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
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Some(camera(&base, &token, "--device-camera"))
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
    drop(otoscope.await);
    let room_camera = room_camera.interrupt().await;
    let cabin = cabin.interrupt().await;
    server.shutdown(Duration::from_secs(1)).await;

    println!("{}", out.stdout.trim_end());
    assert!(
        out.ok(),
        "the consultation page test failed ({}{}).\n--- node stdout ---\n{}\n--- node stderr ---\n{}\n\
         --- the cabin ({}) ---\n{}\n--- its room camera ({}) ---\n{}\n\
         --- GET /api/rooms at the end ---\n{after:#}",
        out.status,
        out.killed(),
        out.stdout,
        out.stderr,
        cabin.status,
        cabin.output,
        room_camera.status,
        room_camera.output
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

/// One of the cabin's cameras, `which` (`--room-camera` or `--device-camera`): a
/// `cabine-kiosk dial` of its own publishing only that synthetic VP8 camera (10 fps,
/// 250 kbit/s), dialling again when the server ends the session (as a cabin would); stopped
/// when dropped.
fn camera(base: &str, token: &str, which: &str) -> KioskProcess {
    let other = match which {
        "--room-camera" => "--device-camera",
        _ => "--room-camera",
    };
    Kiosk::dial(base, token)
        .args([which, "synthetic", other, "off"])
        .args(["--microphone", "off", "--stethoscope", "off"])
        .args(["--no-subscribe", "--no-devices", "--no-telemetry"])
        .light_media(10, 250)
        .spawn()
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
