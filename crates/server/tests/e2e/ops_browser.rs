//! The operators' dashboard in a real browser: a kiosk (the `cabine_client` publisher, real
//! WebRTC on 127.0.0.1) publishes a camera and a lossy stethoscope to a doctor; Debian's
//! chromium, driven by `tests/browser/ops.mjs` (playwright-core, no browser download), opens
//! `/ops#token=<operator token>` and must show the live room with numbers that move between two
//! reads, the lossy stream first and marked, sparklines drawn, and neither the room name nor any
//! identity anywhere in the page; then the server shuts down and the page must say
//! "reconnecting…". Saves `target/screenshots/ops.png` (`OPS_HOLD_MS=60000` for a minute of
//! sparklines first).
//!
//! Needs `/usr/bin/chromium`, `node` and `npm ci --prefix tests/browser`; `.ci/run` installs
//! all three. Missing prerequisites fail the test: it never skips silently.

use crate::common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::browser::{check_prerequisites, run_driver, SERIAL};
use cabine_client::webrtc::rtp;
use cabine_client::{ClientOptions, Codec, Publisher, Subscriber, TrackSpec};
use cabine_proto::Role;

const ROOM: &str = "consult-dupont-7";
const KIOSK: &str = "kiosk-pharmacie-lyon-3";
const DOCTOR: &str = "dr-claire-martin";
/// Hard limit for the node driver (it has its own, shorter, timeouts per stage).
const DRIVER_TIMEOUT: Duration = Duration::from_secs(90);
/// One stethoscope packet in `LOSS_EVERY` is never sent: a link a doctor would notice.
const LOSS_EVERY: u16 = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_dashboard_shows_the_live_room_pseudonymously() {
    let dir = common::browser::dir();
    check_prerequisites(&dir);
    let _serial = SERIAL.lock().await;
    // The audit log says why a session ended, should one end early.
    let audit = std::env::temp_dir()
        .join(format!("cabine-ops-audit-{}", std::process::id()))
        .join("audit.jsonl");
    let _ = std::fs::remove_file(&audit);
    let s = common::start_with(|c| c.audit.path = audit.clone()).await;

    let publisher = Publisher::connect(
        &format!("{}/whip/{ROOM}", s.base),
        &s.token(ROOM, Role::Kiosk, KIOSK),
        vec![
            TrackSpec::video(KIOSK, "room-camera", Codec::Vp8),
            TrackSpec::audio(KIOSK, "stethoscope"),
        ],
        ClientOptions::loopback(),
    )
    .await
    .expect("the kiosk publishes");
    let subscriber = Subscriber::connect(
        &format!("{}/whep/{ROOM}", s.base),
        &s.token(ROOM, Role::Doctor, DOCTOR),
        ClientOptions {
            recv_video: 1,
            recv_audio: 1,
            ..ClientOptions::loopback()
        },
    )
    .await
    .expect("the doctor subscribes");

    // Media until told to stop: VP8 frames every 33 ms (a keyframe first) and the stethoscope
    // every 20 ms with one packet in LOSS_EVERY missing.
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let video = &publisher.tracks()[0];
            let audio = &publisher.tracks()[1];
            let (mut seq, mut ts) = (1000u16, 0u32);
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                if i.is_multiple_of(3) {
                    let mut p = vec![0x10, if i == 0 { 0x00 } else { 0x01 }];
                    p.extend((0..600).map(|k| (k + i) as u8));
                    video.write_rtp(&p, true, 2700).await.expect("video sent");
                }
                if i.is_multiple_of(2) {
                    seq = seq.wrapping_add(1);
                    ts = ts.wrapping_add(960);
                    if seq % LOSS_EVERY != 0 {
                        let packet = rtp::packet::Packet {
                            header: rtp::header::Header {
                                version: 2,
                                marker: true,
                                sequence_number: seq,
                                timestamp: ts,
                                ..Default::default()
                            },
                            payload: vec![0x78; 160].into(),
                        };
                        audio.write_rtp_packet(&packet).await.expect("audio sent");
                    }
                }
                i += 1;
            }
            publisher
        })
    };
    // The doctor reads what arrives (a subscriber that never reads would stall its buffers).
    let tracks = subscriber
        .tracks(2, Duration::from_secs(15))
        .await
        .expect("the doctor gets both tracks");
    let readers: Vec<_> = tracks
        .into_iter()
        .map(|t| {
            tokio::spawn(async move {
                let mut n = 0u64;
                while t.read_rtp_timeout(Duration::from_secs(3)).await.is_ok() {
                    n += 1;
                }
                n
            })
        })
        .collect();

    let screenshot = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../target/screenshots/ops.png"
    ))
    .to_path_buf();
    let _ = std::fs::remove_file(&screenshot);
    let ready = std::env::temp_dir().join(format!("cabine-ops-ready-{}", std::process::id()));
    let _ = std::fs::remove_file(&ready);
    let mut envs = vec![
        ("CABINE_URL", s.base.clone()),
        ("OPS_TOKEN", s.token("*", Role::Operator, "ops-1")),
        (
            "FORBIDDEN",
            [ROOM, KIOSK, DOCTOR, "dupont", "pharmacie", "claire"].join(","),
        ),
        ("READY_FILE", ready.display().to_string()),
        ("SCREENSHOT", screenshot.display().to_string()),
    ];
    // OPS_HOLD_MS=60000 lets a minute of history accumulate (README screenshot).
    if let Ok(hold) = std::env::var("OPS_HOLD_MS") {
        envs.push(("OPS_HOLD_MS", hold));
    }
    let d = dir.clone();
    let driver =
        tokio::task::spawn_blocking(move || run_driver(&d, "ops.mjs", &envs, DRIVER_TIMEOUT));

    // When the page has passed its live checks, the server goes away (media first); if the
    // driver fails before, it goes away all the same.
    let deadline = Instant::now() + DRIVER_TIMEOUT;
    while !driver.is_finished() && !ready.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let shut_down = ready.exists();
    stop.store(true, Ordering::Relaxed);
    let publisher = sender.await.expect("sender task");
    s.server.shutdown(Duration::from_millis(100)).await;
    drop((publisher, subscriber));
    let out = driver.await.expect("driver thread");
    let _ = std::fs::remove_file(&ready);
    for r in readers {
        r.abort();
    }

    eprintln!(
        "ops driver: {} in {:.1} s",
        out.status,
        out.elapsed.as_secs_f64()
    );
    println!("{}", out.stdout.trim_end());
    assert!(
        out.ok() && shut_down,
        "the dashboard test failed ({}{}{}).\n--- node stdout ---\n{}\n--- node stderr ---\n{}\n\
         --- audit log ---\n{}",
        out.status,
        out.killed(),
        if shut_down {
            ""
        } else {
            ", the page never reached its live checks"
        },
        out.stdout,
        out.stderr,
        std::fs::read_to_string(&audit).unwrap_or_default(),
    );
    let _ = std::fs::remove_file(&audit);
    let png = std::fs::read(&screenshot).expect("the screenshot was saved");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "not a real screenshot"
    );
}
