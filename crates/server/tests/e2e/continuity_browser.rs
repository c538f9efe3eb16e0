//! The doctor's page stays truthful through blips (issue 12, "a truthful page"): the real
//! server, real `cabine-kiosk dial` processes (started, paused with SIGSTOP, continued and
//! ended by the driver) and Debian's chromium on `/consult/{room}`, driven by
//! `tests/browser/continuity.mjs`, one scenario per test:
//!
//! - two kiosks in one room, one leaves: the other's tiles never change (same element, same
//!   track, frames rising), the leaving kiosk's tiles go, no rate shown is negative, and
//!   `/favicon.ico` answers 200;
//! - a kiosk paused 20 s then continued: the page says so within 2 s and clears within 2 s of
//!   its return (delays measured with the page's own clock and asserted here);
//! - the doctor reloads, then closes and reopens the page: no "left" for its own identity, ever (and, at the
//!   signalling level, none for the other participants either, nor for a closed second tab).
//!
//! Needs `/usr/bin/chromium`, `node`, `npm ci --prefix tests/browser` and the `cabine-kiosk`
//! binary (built by `cargo test --workspace`, or `cargo build -p cabine-kiosk`); a missing
//! prerequisite fails the test, it never skips.

use crate::common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::common::browser::{check_prerequisites, mint, run_driver, Output, SERIAL};
use cabine_proto::jwt::Tokens;
use cabine_proto::signal::{self, ClientMsg, ServerMsg};
use cabine_proto::Role;
use cabine_server::{Config, Server};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "continuity-test-secret-0123456789abcdef01";
const DRIVER_TIMEOUT: Duration = Duration::from_secs(300);

/// The page's own detection window is 1.5 s of no new frames, checked every 250 ms (≤ 2 s by
/// design). What the test measures adds what the page cannot control: the kiosk's last
/// frames still in flight and in the jitter buffer at STOP, the first keyframe after CONT,
/// and timers of a headless chromium sharing two loaded cores with a debug-build server and
/// the kiosk. 1.5 s of scheduling margin covers those on the CI machine without letting a
/// page that waited for its old ~10 s (or never cleared) pass.
const PAGE_BOUND_MS: u64 = 2000;
const SCHEDULING_MARGIN_MS: u64 = 1500;

/// A kiosk joins a room where another is on the doctor's stage, then leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_kiosk_gets_its_own_tiles_and_leaving_takes_only_those() {
    let out = scenario("two_kiosks", "continuity-two", |_| {}).await;
    let v = result(&out);
    println!("favicon: {}", v["checks"]["favicon"]);
}

/// `kill -STOP` of the kiosk for 20 s, then `kill -CONT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_kiosk_is_said_within_two_seconds_and_cleared_within_two_of_its_return() {
    let out = scenario("pause", "continuity-pause", |_| {}).await;
    let v = result(&out);
    let set = v["checks"]["frozen_set_ms"]
        .as_u64()
        .expect("frozen_set_ms");
    let cleared = v["checks"]["frozen_cleared_ms"]
        .as_u64()
        .expect("frozen_cleared_ms");
    println!(
        "frozen banner: set {set} ms after STOP, cleared {cleared} ms after CONT (page bound \
         {PAGE_BOUND_MS} ms + {SCHEDULING_MARGIN_MS} ms scheduling margin); banner: {}; \
         quality dot while frozen: {}",
        v["checks"]["banner_text"], v["checks"]["quality_while_frozen"]
    );
    assert!(
        set <= PAGE_BOUND_MS + SCHEDULING_MARGIN_MS,
        "the page said the video was interrupted {set} ms after the kiosk stopped"
    );
    assert!(
        cleared <= PAGE_BOUND_MS + SCHEDULING_MARGIN_MS,
        "the page cleared the interruption {cleared} ms after the kiosk continued"
    );
    let text = v["checks"]["banner_text"].as_str().unwrap_or_default();
    assert!(text.contains("Kiosk video interrupted"), "{text}");
}

/// The doctor reloads the page (F5), then closes it and opens it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_doctors_own_reload_never_reads_as_left() {
    // A short grace period, so that the old page's session would expire (and, before the fix,
    // be announced as "dr-1 left") well within the test.
    let out = scenario("reload", "continuity-reload", |c| {
        c.http.ws_resume_grace = Duration::from_secs(6);
    })
    .await;
    let v = result(&out);
    for how in ["reload", "reopen"] {
        println!(
            "{how}: old sessions gone {} ms after it; messages: {}",
            v["timings_ms"][format!("{how}_old_sessions_gone")],
            v["checks"][format!("{how}_messages")]
        );
    }
}

/// The same at the signalling level, as another participant (a kiosk page) sees it: the doctor's
/// page dropped and reopened, and a second tab of the same doctor closed, never read as
/// "dr-1 left" (nor "lost its connection" while another of its pages is connected).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_or_a_closed_second_tab_never_reads_as_left_to_the_others() {
    let s = common::start_with(|c| c.http.ws_resume_grace = Duration::from_secs(2)).await;
    let room = "continuity-ws";
    let mut kiosk = ws_join(&s, room, Role::Kiosk, "kiosk-1", true).await;
    let first = ws_join(&s, room, Role::Doctor, "dr-1", false).await;
    expect(
        &mut kiosk,
        "dr-1 joined",
        |m| matches!(m, ServerMsg::ParticipantJoined(p) if p.identity == "dr-1"),
    )
    .await;
    // The page goes away (its socket closes without `leave`): truthfully, dr-1 lost its
    // connection for now.
    drop(first);
    expect(
        &mut kiosk,
        "dr-1 disconnected",
        |m| matches!(m, ServerMsg::ParticipantDisconnected(p) if p.identity == "dr-1"),
    )
    .await;
    // The page is opened again: the new session supersedes the old one at once.
    let _reopened = ws_join(&s, room, Role::Doctor, "dr-1", false).await;
    expect(
        &mut kiosk,
        "dr-1 joined again",
        |m| matches!(m, ServerMsg::ParticipantJoined(p) if p.identity == "dr-1"),
    )
    .await;
    // A second tab opens and closes while the first stays.
    let tab = ws_join(&s, room, Role::Doctor, "dr-1", false).await;
    drop(tab);
    // The closed tab's session outlives its grace period, then ends: one dr-1 left on
    // signalling.
    s.rooms_until(
        "one dr-1 session on signalling",
        Duration::from_secs(20),
        |v| {
            v["rooms"].as_array().into_iter().flatten().any(|r| {
                r["room"] == room
                    && r["signalling"]
                        .as_array()
                        .is_some_and(|m| m.iter().filter(|x| x["identity"] == "dr-1").count() == 1)
            })
        },
    )
    .await;
    // A "left" is broadcast just after the session leaves the hub: whatever the kiosk was
    // sent arrives within this window.
    let seen = drain(&mut kiosk, Duration::from_secs(1)).await;
    let about_dr1: Vec<&ServerMsg> = seen
        .iter()
        .filter(|m| match m {
            ServerMsg::ParticipantLeft(p) | ServerMsg::ParticipantDisconnected(p) => {
                p.identity == "dr-1"
            }
            _ => false,
        })
        .collect();
    assert!(
        about_dr1.is_empty(),
        "the kiosk was told {about_dr1:?} while dr-1 was in the room"
    );
}

/// Runs `continuity.mjs` with `SCENARIO=name` against a fresh server (configured by `tweak`)
/// in `room`; asserts the driver succeeded.
async fn scenario(name: &str, room: &str, tweak: impl FnOnce(&mut Config)) -> Output {
    let dir = common::browser::dir();
    check_prerequisites(&dir);
    let kiosk = kiosk_bin();
    let _serial = SERIAL.lock().await;

    let mut cfg = Config::defaults();
    cfg.http.listen = "127.0.0.1:0".parse().unwrap();
    cfg.media.bind = "127.0.0.1:0".parse().unwrap();
    cfg.auth.secret = SECRET.into();
    cfg.admin.listen = String::new();
    cfg.telemetry.listen = "127.0.0.1:0".into();
    // The kiosk's media sessions outlive its 20 s pause (the page must see the same tracks
    // come back, not a new cabin).
    cfg.media.disconnect_grace = Duration::from_secs(30);
    tweak(&mut cfg);
    let grace = cfg.http.ws_resume_grace;
    let server = Server::start(cfg).await.expect("server starts");
    let base = format!("http://{}", server.http_addr());
    let tokens = Tokens::new(SECRET.as_bytes());
    let envs = [
        ("CABINE_URL", base.clone()),
        ("ROOM", room.to_owned()),
        ("SCENARIO", name.to_owned()),
        ("KIOSK_BIN", kiosk.display().to_string()),
        ("GRACE_MS", grace.as_millis().to_string()),
        ("DOCTOR_TOKEN", mint(&tokens, room, Role::Doctor, "dr-1")),
        ("OPS_TOKEN", mint(&tokens, "*", Role::Operator, "ops")),
        ("KIOSK_TOKEN_1", mint(&tokens, room, Role::Kiosk, "kiosk-1")),
        ("KIOSK_TOKEN_2", mint(&tokens, room, Role::Kiosk, "kiosk-2")),
    ];
    let out = tokio::task::spawn_blocking(move || {
        run_driver(&dir, "continuity.mjs", &envs, DRIVER_TIMEOUT)
    })
    .await
    .expect("driver thread");
    let ops = mint(&tokens, "*", Role::Operator, "ops");
    let after = common::rooms_at(&base, &ops).await;
    server.shutdown(Duration::from_secs(1)).await;
    println!("{}", out.stdout.trim_end());
    assert!(
        out.ok(),
        "the continuity scenario {name} failed ({}{}).\n--- node stdout ---\n{}\n\
         --- node stderr ---\n{}\n--- GET /api/rooms at the end ---\n{after:#}",
        out.status,
        out.killed(),
        out.stdout,
        out.stderr
    );
    out
}

/// The driver's JSON result line.
fn result(out: &Output) -> serde_json::Value {
    out.stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .expect("the driver printed its JSON result")
}

/// The `cabine-kiosk` binary next to this test binary (`target/<profile>/cabine-kiosk`).
fn kiosk_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/e2e-<hash> → target/<profile>/cabine-kiosk
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("cabine-kiosk"))
        .expect("target/<profile>");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p cabine-kiosk` (`cargo test --workspace` \
         builds it)",
        bin.display()
    );
    bin
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `/ws/{room}` as `identity` with `role` and joins; returns after the welcome.
async fn ws_join(
    s: &common::TestServer,
    room: &str,
    role: Role,
    identity: &str,
    subscribe: bool,
) -> Ws {
    let url = format!(
        "{}/ws/{room}?token={}",
        s.base.replace("http://", "ws://"),
        s.token(room, role, identity)
    );
    let mut ws = tokio_tungstenite::connect_async(&url)
        .await
        .expect("websocket opens")
        .0;
    let join = ClientMsg::Join {
        subscribe,
        from: None,
    };
    ws.send(Message::Text(signal::to_text(&join).into()))
        .await
        .expect("join sent");
    expect(&mut ws, "welcome", |m| {
        matches!(m, ServerMsg::Welcome { .. })
    })
    .await;
    ws
}

/// Reads until a message satisfies `want` (10 s at most).
async fn expect(ws: &mut Ws, what: &str, want: impl Fn(&ServerMsg) -> bool) -> ServerMsg {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                if let Ok(m) = signal::parse_server(&t) {
                    if want(&m) {
                        return m;
                    }
                }
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("{what}: not received ({other:?})"),
        }
    }
}

/// Every message that arrives within `window`.
async fn drain(ws: &mut Ws, window: Duration) -> Vec<ServerMsg> {
    let end = Instant::now() + window;
    let mut out = Vec::new();
    while let Ok(Some(Ok(msg))) =
        tokio::time::timeout(end.saturating_duration_since(Instant::now()), ws.next()).await
    {
        if let Message::Text(t) = msg {
            if let Ok(m) = signal::parse_server(&t) {
                out.push(m);
            }
        }
    }
    out
}
