//! Spatial simulcast from `cabine-kiosk dial` end to end: `dial::run` (what `cabine-kiosk
//! dial` runs) publishes its room camera as three layers (rids `q`, `h`, `f` at 160x90,
//! 320x180 and 640x360, each its own libvpx encoder with two temporal layers) to the real SFU,
//! and a doctor reads it through the impairment relay.
//!
//! The SFU receives packets on each of the three rids. While the doctor's downlink is open it
//! forwards the full picture; when the downlink shrinks below what the full picture needs even
//! at half its frame rate, it switches the doctor to a smaller layer (the SFU's `layer` stat,
//! and keyframes whose VP8 header gives a narrower width; packets keep coming and the camera
//! is not paused). With one layer (`--simulcast 1`) the SFU hears one rid and has no smaller
//! picture to switch to.
//!
//! Not asserted: the way back up. Once the link recovers, this (`webrtc`-crate) doctor's
//! estimate in str0m climbs only to ~1.5 times what it is sent (its probes for more fired in
//! some runs, not in others), while the next option up needs 1.3 times its own rate: back to
//! the full picture took 1–48 s in most runs and never came within 120 s in others (on a
//! loaded two-core machine). The pages' test (`quality_browser.rs`) shows Chromium's way back.
//!
//! On the kiosk's side, an uplink too small for the whole camera loses the top layer first:
//! the SFU stops hearing `f` while `q` and `h` keep flowing.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cabine_client::{ClientOptions, Subscriber};
use cabine_impair::{LinkConfig, Profile, Relay, RelayConfig};
use cabine_kiosk::dial::{self, DialConfig, Input};
use cabine_kiosk::sources::Vp8Descriptor;
use cabine_sfu::room::{ReceivedSnapshot, SessionKind};
use tokio::sync::oneshot;

use crate::common::{self, RealSfu, PATIENCE};

/// The camera's bitrate (kbit/s): 1/8, 2/8 and 5/8 of it for `q`, `h` and `f`; the full
/// picture's base temporal layer alone is ~340 kbit/s.
const CAMERA_KBPS: u32 = 900;

/// The doctor's shrunk downlink: more than the half-size layer, less than the full picture's
/// base temporal layer.
const NARROW_BPS: u64 = 260_000;

/// The full picture's width.
const FULL_WIDTH: u16 = 640;

/// How long the SFU's estimate may take to reach (or fall to) a layer (measured on a loaded
/// two-core machine: up to 3 s to the full picture, up to 16 s down).
const RAMP: Duration = Duration::from_secs(120);

/// What the doctor received: packets, and the width of each keyframe with its arrival time.
#[derive(Debug, Default)]
struct Received {
    packets: u64,
    keyframes: Vec<(Instant, u16)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_doctor_on_a_shrinking_link_gets_a_smaller_layer_not_a_pause() {
    let _turn = common::cpu_turn().await;
    let server = common::start().await;
    let relay = Relay::start(RelayConfig {
        seed: 21,
        ..RelayConfig::loopback(server.media(), Profile::clean())
    })
    .await
    .expect("relay");

    let mut config = DialConfig::new(server.base.clone(), "");
    config.room = Some("room-1".into());
    config.stream_id = Some("kiosk-1".into());
    config.client = ClientOptions::loopback();
    config.subscribe = false;
    config.devices = None;
    config.telemetry = None;
    config.stats_every = Duration::from_secs(3600);
    config.media.device_camera = Input::Off;
    config.media.microphone = Input::Off;
    config.media.stethoscope = Input::Off;
    config.media.room_kbps = CAMERA_KBPS;
    config.media.room_fps = 25;
    config.media.temporal_layers = 2;
    config.media.simulcast = 3;
    // The kiosk's uplink is not the subject here: every layer at its configured rate.
    config.media.adaptive = false;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let kiosk = tokio::spawn(dial::run(config, async {
        let _ = stop_rx.await;
    }));

    // The SFU hears the three rids.
    let mut published = Vec::new();
    common::wait_until_for(PATIENCE, "packets on every rid of the room camera", || {
        published = publisher_layers(&server);
        published.len() == 3 && published.iter().all(|(_, packets)| *packets > 0)
    })
    .await;
    let mut rids: Vec<String> = published.iter().map(|(rid, _)| rid.clone()).collect();
    rids.sort();
    assert_eq!(rids, ["f", "h", "q"], "{published:?}");

    let doctor = Subscriber::connect(
        &server.whep("room-1"),
        "",
        ClientOptions {
            media_via: Some(relay.local_addr()),
            recv_video: 1,
            recv_audio: 0,
            ..ClientOptions::loopback()
        },
    )
    .await
    .expect("subscribes through the relay");
    let track = doctor.next_track(PATIENCE).await.expect("the room camera");
    let received: Arc<Mutex<Received>> = Arc::default();
    let reader = {
        let received = Arc::clone(&received);
        let track = track.clone();
        tokio::spawn(async move {
            while let Ok(p) = track.read_rtp().await {
                let width = keyframe_width(&p.payload);
                if let Ok(mut r) = received.lock() {
                    r.packets += 1;
                    if let Some(w) = width {
                        r.keyframes.push((Instant::now(), w));
                    }
                }
            }
        })
    };

    // Open link: the full picture. (The SFU's bandwidth estimate starts at 1 Mbit/s and
    // stays there while nothing loads the link: the layers are chosen again every second
    // with it, not only when it moves.)
    let joined = Instant::now();
    wait_for_layer(
        &server,
        &received,
        joined,
        "the full picture on an open link",
        |l, w| l == "f" && w == FULL_WIDTH,
    )
    .await;
    println!("full picture {:?} after subscribing", joined.elapsed());

    // Shrunk: a smaller layer, never a pause.
    relay.set_profile(narrow()).expect("profile");
    let shrunk = Instant::now();
    expect_smaller_layer(
        &server,
        &received,
        shrunk,
        "a smaller layer once the link shrinks",
    )
    .await;
    println!("smaller layer {:?} after the link shrank", shrunk.elapsed());

    println!(
        "{} layer switches",
        doctor_out(&server).map_or(0, |o| o.stats.layer_switches)
    );

    let _ = stop_tx.send(());
    let stats = kiosk
        .await
        .expect("kiosk task")
        .expect("kiosk ends cleanly");
    let camera = &stats.tracks["room-camera"];
    assert_eq!(camera.layers.len(), 3, "{camera:?}");
    assert!(camera.layers.iter().all(|l| l.frames > 0), "{camera:?}");
    reader.abort();
    doctor.close().await.expect("close");
}

/// The kiosk's uplink in [`the_top_layer_goes_first_when_the_uplink_shrinks`]: the
/// stethoscope (~112 kbit/s on the wire) and the room camera's `q` and `h` layers fit, not
/// `f` on top of them.
const UPLINK_BPS: u64 = 450_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_top_layer_goes_first_when_the_uplink_shrinks() {
    let _turn = common::cpu_turn().await;
    let server = common::start().await;
    let relay = Relay::start(RelayConfig {
        seed: 22,
        ..RelayConfig::loopback(server.media(), Profile::clean())
    })
    .await
    .expect("relay");
    let mut config = DialConfig::new(server.base.clone(), "");
    config.room = Some("room-1".into());
    config.stream_id = Some("kiosk-1".into());
    config.client = ClientOptions {
        media_via: Some(relay.local_addr()),
        ..ClientOptions::loopback()
    };
    config.subscribe = false;
    config.devices = None;
    config.telemetry = None;
    config.stats_every = Duration::from_secs(3600);
    config.media.device_camera = Input::Off;
    config.media.microphone = Input::Off;
    config.media.simulcast = 3;
    config.media.adaptive = true;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let kiosk = tokio::spawn(dial::run(config, async {
        let _ = stop_rx.await;
    }));

    // An open uplink carries the three layers (the controller starts at half the kiosk's
    // maximum, which leaves f out, and climbs).
    let mut rates = Vec::new();
    common::wait_until_for(RAMP, "the three layers on an open uplink", || {
        rates = publisher_rates(&server);
        // f sent, not just the first frames the kiosk sends before its first decision.
        rates.len() == 3
            && rates.iter().all(|(_, b)| b.is_some())
            && rates
                .iter()
                .any(|(r, b)| r == "f" && b.is_some_and(|b| b > 100_000))
    })
    .await;
    println!("open uplink: layers as the SFU receives them {rates:?}");

    // Shrunk: the SFU hears q and h but no longer f (its meter empties two seconds after
    // the last packet): the kiosk stopped sending its top layer, not its lower ones.
    relay
        .set_profile(Profile {
            name: "small-uplink",
            uplink: LinkConfig::limited(UPLINK_BPS, Duration::from_millis(200)),
            downlink: LinkConfig::default(),
        })
        .expect("profile");
    common::wait_until_for(RAMP, "f to stop while q and h flow", || {
        rates = publisher_rates(&server);
        let rate = |rid: &str| rates.iter().find(|(r, _)| r == rid).and_then(|(_, b)| *b);
        rates.len() == 3 && rate("f").is_none() && rate("q").is_some() && rate("h").is_some()
    })
    .await;
    println!("uplink {UPLINK_BPS} bit/s: layers as the SFU receives them {rates:?}");

    let _ = stop_tx.send(());
    let stats = kiosk
        .await
        .expect("kiosk task")
        .expect("kiosk ends cleanly");
    let camera = &stats.tracks["room-camera"];
    println!(
        "kiosk: target {} bit/s, room camera {camera:?}",
        stats.uplink_target_bps
    );
    assert!(stats.uplink_decreases >= 1, "never adapted: {stats:?}");
    let frames: Vec<u64> = camera.layers.iter().map(|l| l.frames).collect();
    assert!(
        frames[2] < frames[1] && frames[2] < frames[0],
        "f sent as often as the lower layers: {camera:?}"
    );
    assert_eq!(camera.paused_frames, 0, "the camera was paused: {camera:?}");
}

/// The doctor's link when it shrinks: the downlink at [`NARROW_BPS`], with a deep queue (1 s)
/// so that the SFU's estimate falls on the queue's delay before the queue overflows. (After
/// the overflows of a shallow queue str0m's estimate can stay loss-limited, where it does not
/// probe, and then takes minutes to find the restored link: seen once in four runs with
/// 300 ms; none in six with 1 s.)
fn narrow() -> Profile {
    Profile {
        name: "narrow",
        uplink: LinkConfig::default(),
        downlink: LinkConfig::limited(NARROW_BPS, Duration::from_millis(1000)),
    }
}

/// Waits until the doctor gets a layer smaller than the full picture (a narrower keyframe
/// after `since`), and checks the camera is not paused for it and keeps coming.
async fn expect_smaller_layer(
    server: &RealSfu,
    received: &Mutex<Received>,
    since: Instant,
    what: &str,
) {
    let (layer, width) = wait_for_layer(server, received, since, what, |l, w| {
        l != "f" && w < FULL_WIDTH
    })
    .await;
    let out = doctor_out(server).expect("the doctor's room camera");
    assert!(
        !out.stats.paused,
        "paused instead of a smaller layer: {out:?}"
    );
    let packets = received.lock().expect("lock").packets;
    common::wait_until("packets on the smaller layer", || {
        received.lock().expect("lock").packets > packets + 50
    })
    .await;
    let out = doctor_out(server).expect("the doctor's room camera");
    assert!(
        !out.stats.paused,
        "paused instead of a smaller layer: {out:?}"
    );
    println!(
        "{what}: layer {layer}, {width} pixels wide, estimate {:?} bit/s, {} pauses",
        doctor_estimate(server),
        out.stats.pauses
    );
}

/// Polls until the SFU forwards a layer and the doctor got a keyframe, after `since`, that
/// `wanted(layer, keyframe width)` accepts; returns them.
async fn wait_for_layer(
    server: &RealSfu,
    received: &Mutex<Received>,
    since: Instant,
    what: &str,
    wanted: impl Fn(&str, u16) -> bool,
) -> (String, u16) {
    let deadline = Instant::now() + RAMP;
    loop {
        let out = doctor_out(server);
        let layer = out.as_ref().and_then(|o| o.stats.layer.clone());
        let widths: Vec<u16> = received
            .lock()
            .expect("lock")
            .keyframes
            .iter()
            .filter(|(at, _)| *at >= since)
            .map(|(_, w)| *w)
            .collect();
        if let (Some(layer), Some(&width)) = (&layer, widths.last()) {
            if wanted(layer, width) {
                return (layer.clone(), width);
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: layer {layer:?}, keyframe widths since {widths:?}, doctor {out:?} (estimate {:?} bit/s), kiosk layers {:?}",
            doctor_estimate(server),
            publisher_layers(server)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The room camera's layers as the SFU receives them: (rid, packets).
fn publisher_layers(server: &RealSfu) -> Vec<(String, u64)> {
    let Ok(rooms) = snapshot(server) else {
        return Vec::new();
    };
    rooms
        .iter()
        .flat_map(|r| &r.sessions)
        .filter(|s| s.kind == SessionKind::Publish)
        .flat_map(|s| &s.published)
        .filter(|t| t.track.kind == "video")
        .flat_map(|t| &t.layers)
        .map(|l| (l.rid.clone().unwrap_or_default(), l.packets))
        .collect()
}

/// The room camera's layers as the SFU measures them: (rid, bitrate; `None` once silent).
fn publisher_rates(server: &RealSfu) -> Vec<(String, Option<u64>)> {
    let Ok(rooms) = snapshot(server) else {
        return Vec::new();
    };
    rooms
        .iter()
        .flat_map(|r| &r.sessions)
        .filter(|s| s.kind == SessionKind::Publish)
        .flat_map(|s| &s.published)
        .filter(|t| t.track.kind == "video")
        .flat_map(|t| &t.layers)
        .map(|l| (l.rid.clone().unwrap_or_default(), l.bitrate_bps))
        .collect()
}

/// The doctor's view of the room camera in the SFU's statistics.
fn doctor_out(server: &RealSfu) -> Option<ReceivedSnapshot> {
    let rooms = snapshot(server).ok()?;
    rooms
        .iter()
        .flat_map(|r| &r.sessions)
        .filter(|s| s.kind == SessionKind::Subscribe)
        .flat_map(|s| &s.received)
        .find(|o| o.track.is_some())
        .cloned()
}

/// The SFU's bandwidth estimate towards the doctor, bit/s.
fn doctor_estimate(server: &RealSfu) -> Option<u64> {
    let rooms = snapshot(server).ok()?;
    rooms
        .iter()
        .flat_map(|r| &r.sessions)
        .find(|s| s.kind == SessionKind::Subscribe)
        .and_then(|s| s.bwe_bps)
}

/// The SFU's snapshot, from synchronous polling code.
fn snapshot(server: &RealSfu) -> Result<Vec<cabine_sfu::room::RoomSnapshot>, String> {
    let sfu = Arc::clone(&server.sfu);
    tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(async move { sfu.snapshot().await })
    })
    .map_err(|e| e.to_string())
}

/// The width of a VP8 keyframe when this RTP payload starts one (RFC 6386 §9.1: a 3-byte
/// frame tag with bit 0 clear, the start code, then 14 bits of width).
fn keyframe_width(payload: &[u8]) -> Option<u16> {
    let (descriptor, len) = Vp8Descriptor::parse(payload)?;
    if !descriptor.starts_frame() {
        return None;
    }
    let data = payload.get(len..)?;
    if data.len() < 10 || data[0] & 1 != 0 || data[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    Some(u16::from_le_bytes([data[6], data[7]]) & 0x3fff)
}
