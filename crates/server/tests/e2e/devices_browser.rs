//! The kiosk page's devices (issue 14, 5a): chosen, remembered per cabin, switched
//! mid-consultation with `replaceTrack`, and a stethoscope on the microphone's device refused.
//! Debian's chromium with fake devices (three cameras, three audio inputs) runs the kiosk page
//! and the doctor's page against a real server, driven by `tests/browser/kiosk_devices.mjs`.
//!
//! Needs `/usr/bin/chromium`, `node` and `npm ci --prefix tests/browser`; a missing
//! prerequisite fails the test, it never skips.

use crate::common;

use std::time::Duration;

use crate::common::browser::{check_prerequisites, mint, run_driver, SERIAL};
use cabine_proto::jwt::Tokens;
use cabine_proto::Role;
use cabine_server::{Config, Server};

const SECRET: &str = "devices-test-secret-0123456789abcdef0123";
const DRIVER_TIMEOUT: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kiosk_page_devices_are_chosen_switched_and_remembered() {
    let dir = common::browser::dir();
    check_prerequisites(&dir);
    let _serial = SERIAL.lock().await;
    let mut cfg = Config::defaults();
    cfg.http.listen = "127.0.0.1:0".parse().unwrap();
    cfg.media.bind = "127.0.0.1:0".parse().unwrap();
    cfg.auth.secret = SECRET.into();
    cfg.admin.listen = String::new();
    cfg.media.disconnect_grace = Duration::from_secs(30);
    let server = Server::start(cfg).await.expect("server starts");
    let base = format!("http://{}", server.http_addr());
    let tokens = Tokens::new(SECRET.as_bytes());
    let room = "kiosk-devices";
    let envs = [
        ("CABINE_URL", base.clone()),
        ("ROOM", room.to_owned()),
        ("KIOSK_TOKEN", mint(&tokens, room, Role::Kiosk, "kiosk-1")),
        ("DOCTOR_TOKEN", mint(&tokens, room, Role::Doctor, "dr-1")),
    ];
    let out = tokio::task::spawn_blocking(move || {
        run_driver(&dir, "kiosk_devices.mjs", &envs, DRIVER_TIMEOUT)
    })
    .await
    .expect("driver thread");
    server.shutdown(Duration::from_secs(1)).await;
    println!("{}", out.stdout.trim_end());
    assert!(
        out.ok(),
        "the kiosk devices test failed ({}{}).\n--- node stdout ---\n{}\n--- node stderr ---\n{}",
        out.status,
        out.killed(),
        out.stdout,
        out.stderr
    );
}
