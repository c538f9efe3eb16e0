//! The walk-in queue's pages in Debian's chromium (fake devices), driven by
//! `tests/browser/queue_pages.mjs`: two kiosk pages in queue mode (`/kiosk`) see positions 1
//! and 2; the doctor's queue page (`/queue`) takes the first; the doctor's page and that kiosk
//! page land in the same room with media both ways and the cabin's vitals; the second kiosk
//! moves to position 1, then cancels. Only one event stream is allowed (`limits.sse_clients`):
//! the second kiosk page follows its ticket by polling.
//!
//! The vitals come from the cabin's devices over QUIC, as in a real cabin where a native hub
//! drives the devices next to the kiosk browser: once the room exists (the take), this test
//! starts `cabine-kiosk`'s device link for it with the cabin's identity (its stethoscope and
//! simulated devices; the browser keeps the cameras and the microphone).
//!
//! Needs `/usr/bin/chromium`, `node` and `npm ci --prefix tests/browser`; a missing
//! prerequisite fails the test, it never skips.

use crate::common;

use std::time::{Duration, Instant};

use crate::common::browser::{check_prerequisites, mint, run_driver, SERIAL};
use crate::common::kiosk::Kiosk;
use cabine_proto::jwt::Tokens;
use cabine_proto::{Grant, Identity, Role};
use cabine_server::{Config, Server};
use tokio::sync::oneshot;

const SECRET: &str = "queue-browser-secret-0123456789abcdef";
const DRIVER_TIMEOUT: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_kiosk_pages_queue_and_the_doctor_takes_the_first_from_the_queue_page() {
    let dir = common::browser::dir();
    check_prerequisites(&dir);
    let _serial = SERIAL.lock().await;

    let mut cfg = Config::defaults();
    cfg.http.listen = "127.0.0.1:0".parse().unwrap();
    cfg.media.bind = "127.0.0.1:0".parse().unwrap();
    cfg.auth.secret = SECRET.into();
    cfg.admin.listen = String::new();
    cfg.telemetry.listen = "127.0.0.1:0".into();
    cfg.media.disconnect_grace = Duration::from_secs(30);
    // One event stream: the first kiosk follows its ticket live, the second is refused one
    // (limits.sse_clients) and falls back to polling.
    cfg.limits.sse_clients = 1.try_into().unwrap();
    let server = Server::start(cfg).await.expect("server starts");
    let base = format!("http://{}", server.http_addr());
    let tokens = Tokens::new(SECRET.as_bytes());
    let doctor = tokens
        .mint(
            "*",
            Role::Doctor,
            Identity::parse("dr-1").unwrap(),
            Duration::from_secs(600),
            Some(vec![Grant::Take]),
        )
        .unwrap();

    // The cabin's device link, started once kiosk-1 is in a room the take created.
    let (stop_hub, hub_stopped) = oneshot::channel::<()>();
    let hub = {
        let (base, sfu, tokens) = (base.clone(), server.sfu().clone(), tokens.clone());
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(150);
            let room = loop {
                let rooms = sfu.snapshot().await.unwrap_or_default();
                let found = rooms.iter().find(|r| {
                    r.room.as_str().starts_with("q-")
                        && r.sessions.iter().any(|s| s.identity.as_str() == "kiosk-1")
                });
                if let Some(r) = found {
                    break r.room.as_str().to_owned();
                }
                if Instant::now() > deadline {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            // `cabine-kiosk dial`: the stethoscope and the devices, the oximeter every 500 ms.
            let cabin = Kiosk::dial(&base, &mint(&tokens, &room, Role::Kiosk, "kiosk-1"))
                .args(["--no-subscribe", "--room-camera", "off"])
                .args(["--device-camera", "off", "--microphone", "off"])
                .args(["--oximeter-ms", "500", "--thermometer-ms", "1000"])
                .spawn();
            let _ = hub_stopped.await;
            let exit = cabin.interrupt().await;
            Some((room, exit.status, exit.output))
        })
    };

    let envs = [
        ("CABINE_URL", base.clone()),
        (
            "KIOSK1_TOKEN",
            mint(&tokens, "lobby", Role::Kiosk, "kiosk-1"),
        ),
        (
            "KIOSK2_TOKEN",
            mint(&tokens, "lobby", Role::Kiosk, "kiosk-2"),
        ),
        ("DOCTOR_TOKEN", doctor),
    ];
    let out = tokio::task::spawn_blocking(move || {
        run_driver(&dir, "queue_pages.mjs", &envs, DRIVER_TIMEOUT)
    })
    .await
    .expect("driver thread");
    let _ = stop_hub.send(());
    let hub = tokio::time::timeout(Duration::from_secs(20), hub).await;
    server.shutdown(Duration::from_secs(1)).await;
    println!("{}", out.stdout.trim_end());
    assert!(
        out.ok(),
        "the queue pages test failed ({}{}).\n--- node stdout ---\n{}\n--- node stderr ---\n{}\n\
         --- the cabin's device link ---\n{hub:?}",
        out.status,
        out.killed(),
        out.stdout,
        out.stderr
    );
    let result: serde_json::Value =
        serde_json::from_str(out.stdout.trim().lines().last().unwrap_or("{}")).unwrap();
    assert_eq!(result["checks"]["same_room"], true, "{result}");
    assert_eq!(
        result["checks"]["kiosk2_position"]["position"], 2,
        "{result}"
    );
    assert_eq!(
        result["checks"]["kiosk2_position_after"]["position"], 1,
        "{result}"
    );
    // The first followed its ticket's event stream, the second (refused one) polled.
    assert_eq!(
        result["checks"]["kiosk1_position"]["follow"], "stream",
        "{result}"
    );
    assert_eq!(
        result["checks"]["kiosk2_position_after"]["follow"], "poll",
        "{result}"
    );
}
