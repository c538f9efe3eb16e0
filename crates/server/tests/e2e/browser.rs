//! A real browser against the real server: Debian's chromium (headless, fake camera and
//! microphone), driven by `tests/browser/whip_whep.mjs` (playwright-core, no browser download),
//! publishes a camera, a microphone and a stethoscope from `/demo/publish` over WHIP; a second
//! page plays the room from `/demo/watch` over WHEP and must decode video frames and receive
//! audio, with the publisher's track labels.
//!
//! Needs `/usr/bin/chromium`, `node` and `npm ci --prefix tests/browser`; `.ci/run` installs
//! all three. Missing prerequisites fail the test: it never skips silently.

use crate::common;

use std::time::{Duration, Instant};

use crate::common::browser::{check_prerequisites, mint, run_driver, SERIAL};
use cabine_proto::jwt::Tokens;
use cabine_proto::Role;
use cabine_server::{Config, Server};

const SECRET: &str = "browser-test-secret-0123456789abcdef01234";
/// Hard limit for the node driver (it has its own, shorter, timeouts per stage).
const DRIVER_TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn chromium_publishes_over_whip_and_plays_over_whep() {
    let dir = common::browser::dir();
    check_prerequisites(&dir);
    let _serial = SERIAL.lock().await;

    let mut cfg = Config::defaults();
    cfg.http.listen = "127.0.0.1:0".parse().unwrap();
    cfg.media.bind = "127.0.0.1:0".parse().unwrap();
    cfg.auth.secret = SECRET.into();
    cfg.admin.listen = String::new();
    cfg.telemetry.listen = "127.0.0.1:0".into();
    let server = Server::start(cfg).await.expect("server starts");
    let base = format!("http://{}", server.http_addr());
    let tokens = Tokens::new(SECRET.as_bytes());
    let room = "browser-1";
    let envs = [
        ("CABINE_URL", base.clone()),
        ("ROOM", room.to_owned()),
        ("PUBLISH_TOKEN", mint(&tokens, room, Role::Kiosk, "kiosk-1")),
        ("WATCH_TOKEN", mint(&tokens, room, Role::Doctor, "dr-1")),
    ];

    let d = dir.clone();
    let out =
        tokio::task::spawn_blocking(move || run_driver(&d, "whip_whep.mjs", &envs, DRIVER_TIMEOUT))
            .await
            .expect("driver thread");

    // The operators' view: for the failure message, and to check that closing the pages ended
    // both sessions (the pages DELETE their WHIP/WHEP resource on pagehide).
    let ops = mint(&tokens, "*", Role::Operator, "ops");
    let mut rooms = String::new();
    let mut sessions_left = usize::MAX;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let r = reqwest::Client::new()
            .get(format!("{base}/api/rooms"))
            .bearer_auth(&ops)
            .send()
            .await;
        rooms = match r {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => format!("(GET /api/rooms failed: {e})"),
        };
        sessions_left = serde_json::from_str::<serde_json::Value>(&rooms)
            .ok()
            .and_then(|v| {
                v["rooms"].as_array().map(|rs| {
                    rs.iter()
                        .map(|r| r["sessions"].as_array().map_or(0, Vec::len))
                        .sum()
                })
            })
            .unwrap_or(usize::MAX);
        if sessions_left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.shutdown(Duration::from_secs(1)).await;

    eprintln!(
        "browser driver: {} in {:.1} s",
        out.status,
        out.elapsed.as_secs_f64()
    );
    println!("{}", out.stdout.trim_end());
    assert!(
        out.ok(),
        "the browser test failed ({}{}).\n--- node stdout ---\n{}\n--- node stderr ---\n{}\n\
         --- GET /api/rooms after the run ---\n{}",
        out.status,
        out.killed(),
        out.stdout,
        out.stderr,
        rooms
    );
    assert_eq!(
        sessions_left, 0,
        "sessions are left after the pages closed (their DELETE on pagehide did not end them): {rooms}"
    );
}
