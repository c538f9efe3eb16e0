//! Quality on poor links with the browser pages (issue 14): Debian's chromium runs the kiosk
//! page and the doctor's page against a real server whose advertised media address is a
//! `cabine-impair` relay in front of its media port, so every page's media crosses impaired
//! links that the test changes at runtime. Driven by `tests/browser/quality.mjs`.
//!
//! - [`simulcast_layer_follows_the_doctors_link`]: the kiosk page publishes its room camera in
//!   three simulcast layers; when the doctor's downlink shrinks the doctor's page receives a
//!   lower layer (its `frameWidth` drops) with frames still decoded, and the full width again
//!   when the link recovers.
//! - [`red_protects_the_stethoscope`]: under 5 % loss on the doctors' downlinks, the doctor's
//!   page that negotiated RED conceals a small part of what the other (RED refused in its
//!   answer, so the SFU strips the redundancy for it) conceals.
//!
//! Needs `/usr/bin/chromium`, `node` and `npm ci --prefix tests/browser`; a missing
//! prerequisite fails the test, it never skips.

use crate::common;

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::common::browser::{check_prerequisites, mint, run_driver, SERIAL};
use cabine_impair::{LinkConfig, Loss, Profile, Relay, RelayConfig};
use cabine_proto::jwt::Tokens;
use cabine_proto::Role;
use cabine_server::{Config, Server};

const SECRET: &str = "quality-test-secret-0123456789abcdef0123";
const DRIVER_TIMEOUT: Duration = Duration::from_secs(300);

/// A server whose advertised media address is a relay with `profile` in front of its port.
async fn server_behind_relay(profile: Profile) -> (Server, Relay) {
    // The relay's port must be known before the server starts (it is advertised in answers).
    let relay_addr: SocketAddr = {
        let s = UdpSocket::bind("127.0.0.1:0").expect("a free UDP port");
        s.local_addr().unwrap()
    };
    let mut cfg = Config::defaults();
    cfg.http.listen = "127.0.0.1:0".parse().unwrap();
    cfg.media.bind = "127.0.0.1:0".parse().unwrap();
    cfg.media.advertise = relay_addr.to_string();
    cfg.auth.secret = SECRET.into();
    cfg.admin.listen = String::new();
    cfg.media.disconnect_grace = Duration::from_secs(30);
    let server = Server::start(cfg).await.expect("server starts");
    let mut rc = RelayConfig::loopback(server.media_addr(), profile);
    rc.listen = relay_addr;
    rc.seed = 14;
    let relay = Relay::start(rc).await.expect("relay starts");
    (server, relay)
}

/// Clean uplinks; downlinks limited to `rate_bps` (200 ms of queue), or clean with `None`.
fn downlink(rate_bps: Option<u64>, loss: f64) -> Profile {
    let mut down = match rate_bps {
        Some(r) => LinkConfig::limited(r, Duration::from_millis(200)),
        None => LinkConfig::default(),
    };
    if loss > 0.0 {
        down.loss = Loss::independent(loss);
    }
    Profile {
        name: "custom",
        uplink: LinkConfig::default(),
        downlink: down,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn simulcast_layer_follows_the_doctors_link() {
    let dir = common::browser::dir();
    check_prerequisites(&dir);
    let _serial = SERIAL.lock().await;
    let (server, relay) = server_behind_relay(downlink(None, 0.0)).await;
    let base = format!("http://{}", server.http_addr());
    let tokens = Tokens::new(SECRET.as_bytes());
    let room = "quality-simulcast";
    let phase = std::env::temp_dir().join(format!("cabine-quality-phase-{}", std::process::id()));
    let _ = std::fs::remove_file(&phase);

    let envs = [
        ("CABINE_URL", base.clone()),
        ("ROOM", room.to_owned()),
        ("MODE", "simulcast".to_owned()),
        ("KIOSK_TOKEN", mint(&tokens, room, Role::Kiosk, "kiosk-1")),
        ("DOCTOR_TOKEN", mint(&tokens, room, Role::Doctor, "dr-1")),
        ("PHASE_FILE", phase.display().to_string()),
    ];
    let d = dir.clone();
    let driver =
        tokio::task::spawn_blocking(move || run_driver(&d, "quality.mjs", &envs, DRIVER_TIMEOUT));

    // The driver says when it saw the top layer (shrink the link) and a lower one (restore).
    let shrunk = wait_phase(&phase, "top", &driver).await;
    if shrunk {
        relay
            .set_profile(downlink(Some(300_000), 0.0))
            .expect("valid profile");
    }
    let restored = shrunk && wait_phase(&phase, "low", &driver).await;
    if restored {
        relay
            .set_profile(downlink(None, 0.0))
            .expect("valid profile");
    }
    let out = driver.await.expect("driver thread");
    let ops = mint(&tokens, "*", Role::Operator, "ops");
    let rooms = rooms(&base, &ops).await;
    let stats = relay.stats();
    server.shutdown(Duration::from_secs(1)).await;
    let _ = std::fs::remove_file(&phase);
    println!("{}", out.stdout.trim_end());
    println!("relay: {stats:?}");
    assert!(
        out.ok(),
        "the simulcast page test failed ({}{}; shrunk {shrunk}, restored {restored}).\n\
         --- node stdout ---\n{}\n--- node stderr ---\n{}",
        out.status,
        out.killed(),
        out.stdout,
        out.stderr
    );
    assert!(shrunk && restored);
    // The relay did limit the doctor's link (packets queued past the limit were dropped or
    // delayed): its downlink saw traffic, and the SFU switched the doctor's layer.
    assert!(stats.flows >= 2, "{stats:?}");
    let switches = layer_switches(&rooms, "dr-1");
    println!("dr-1's layer switches at the SFU: {switches}");
    assert!(switches >= 2, "{rooms}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn red_protects_the_stethoscope() {
    let dir = common::browser::dir();
    check_prerequisites(&dir);
    let _serial = SERIAL.lock().await;
    let (server, relay) = server_behind_relay(downlink(None, 0.05)).await;
    let base = format!("http://{}", server.http_addr());
    let tokens = Tokens::new(SECRET.as_bytes());
    let room = "quality-red";
    let envs = [
        ("CABINE_URL", base.clone()),
        ("ROOM", room.to_owned()),
        ("MODE", "red".to_owned()),
        ("KIOSK_TOKEN", mint(&tokens, room, Role::Kiosk, "kiosk-1")),
        ("DOCTOR_TOKEN", mint(&tokens, room, Role::Doctor, "dr-1")),
        ("DOCTOR2_TOKEN", mint(&tokens, room, Role::Doctor, "dr-2")),
    ];
    let d = dir.clone();
    let out =
        tokio::task::spawn_blocking(move || run_driver(&d, "quality.mjs", &envs, DRIVER_TIMEOUT))
            .await
            .expect("driver thread");
    let stats = relay.stats();
    server.shutdown(Duration::from_secs(1)).await;
    println!("{}", out.stdout.trim_end());
    println!("relay: {stats:?}");
    assert!(
        out.ok(),
        "the RED page test failed ({}{}).\n--- node stdout ---\n{}\n--- node stderr ---\n{}",
        out.status,
        out.killed(),
        out.stdout,
        out.stderr
    );
    assert!(stats.downlink.lost > 0, "{stats:?}");
}

/// Waits until the phase file reads `want` (true), or the driver ended first (false).
async fn wait_phase(
    phase: &PathBuf,
    want: &str,
    driver: &tokio::task::JoinHandle<common::browser::Output>,
) -> bool {
    let deadline = Instant::now() + DRIVER_TIMEOUT;
    loop {
        if std::fs::read_to_string(phase).is_ok_and(|s| s.trim() == want) {
            return true;
        }
        if driver.is_finished() || Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The layer switches the SFU made on `identity`'s subscribe session, summed over its tracks.
fn layer_switches(rooms: &serde_json::Value, identity: &str) -> u64 {
    let mut n = 0;
    for room in rooms["rooms"].as_array().into_iter().flatten() {
        for s in room["sessions"].as_array().into_iter().flatten() {
            if s["identity"] != identity || s["kind"] != "subscribe" {
                continue;
            }
            for r in s["received"].as_array().into_iter().flatten() {
                n += r["stats"]["layer_switches"].as_u64().unwrap_or(0);
            }
        }
    }
    n
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
