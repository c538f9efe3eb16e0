//! VP8 temporal layers end to end: `dial::run` (what `cabine-kiosk dial` runs) publishes its
//! room camera with two temporal layers (libvpx) to the real SFU, and a doctor reads it
//! through the impairment relay, whose downlink carries the base layer (TL0, about half the
//! camera's rate) but not the whole camera.
//!
//! The SFU forwards only TL0 to that doctor: from some point on every packet it receives is
//! TID 0, its sequence numbers and picture ids continue without a gap (nothing to NACK, no
//! frame to wait for), TL0PICIDX counts up by one per frame, and libvpx decodes every frame
//! from a keyframe on.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cabine_client::{ClientOptions, Subscriber};
use cabine_impair::{LinkConfig, Profile, Relay, RelayConfig};
use cabine_kiosk::dial::{self, DialConfig, Input};
use cabine_kiosk::sources::{Vp8Decoder, Vp8Descriptor};
use tokio::sync::oneshot;

use crate::common::{self, PATIENCE};

/// The camera's bitrate (kbit/s); TL0 gets at most 60 % of it.
const CAMERA_KBPS: u32 = 800;

/// The doctor's downlink: above TL0, well below the whole camera.
const DOWNLINK_BPS: u64 = 560_000;

/// Complete, gap-free TL0 frames wanted after a keyframe.
const FRAMES: usize = 30;

/// One packet as the doctor read it.
#[derive(Debug, Clone)]
struct Packet {
    seq: u16,
    ts: u32,
    marker: bool,
    descriptor: Vp8Descriptor,
    data: Vec<u8>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_doctor_behind_a_narrow_link_gets_the_base_layer_and_decodes_every_frame() {
    let _turn = common::cpu_turn().await;
    let server = common::start().await;
    let relay = Relay::start(RelayConfig {
        seed: 7,
        ..RelayConfig::loopback(
            server.media(),
            Profile {
                name: "tl0-only",
                uplink: LinkConfig::default(),
                downlink: LinkConfig::limited(DOWNLINK_BPS, Duration::from_millis(300)),
            },
        )
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
    config.media.room_fps = 30;
    config.media.temporal_layers = 2;
    // One spatial layer: with simulcast the SFU would switch this doctor to a smaller
    // picture (`simulcast.rs`) instead of the full picture's base temporal layer.
    config.media.simulcast = 1;
    config.media.adaptive = false;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let kiosk = tokio::spawn(dial::run(config, async {
        let _ = stop_rx.await;
    }));

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
    let packets: Arc<Mutex<Vec<Packet>>> = Arc::default();
    let reader = {
        let packets = Arc::clone(&packets);
        let track = track.clone();
        tokio::spawn(async move {
            while let Ok(p) = track.read_rtp().await {
                let Some((descriptor, len)) = Vp8Descriptor::parse(&p.payload) else {
                    continue;
                };
                if let Ok(mut all) = packets.lock() {
                    all.push(Packet {
                        seq: p.header.sequence_number,
                        ts: p.header.timestamp,
                        marker: p.header.marker,
                        descriptor,
                        data: p.payload[len..].to_vec(),
                    });
                }
            }
        })
    };

    // The base layer alone, then a keyframe and FRAMES frames after it without a gap. Once
    // only TL0 arrives the doctor asks for a keyframe (to start decoding; the switch itself
    // needs none) rather than wait for the camera's periodic one.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut asked = Instant::now();
    let (run, upper_before) = loop {
        let all = packets.lock().map(|p| p.clone()).unwrap_or_default();
        if let Some(found) = tl0_run(&all) {
            println!("{}", summary(&all));
            break found;
        }
        let recent = all.len().saturating_sub(60);
        let tl0_only = all.len() > 60
            && all[recent..]
                .iter()
                .all(|p| p.descriptor.temporal.is_some_and(|t| t.tid == 0));
        if tl0_only && asked.elapsed() > Duration::from_secs(5) {
            let _ = track.request_keyframe().await;
            asked = Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "no gap-free run of {FRAMES} TL0 frames after a keyframe: {}",
            summary(&all)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        upper_before,
        "the doctor got TID 1 before the link filled (the stream has two layers)"
    );

    // libvpx decodes every frame of the run: TL0 frames need nothing the SFU dropped.
    let mut decoder = Vp8Decoder::new().expect("decoder");
    let mut pictures = 0;
    for (i, frame) in run.iter().enumerate() {
        let picture = decoder
            .decode(frame)
            .unwrap_or_else(|e| panic!("TL0 frame {i} of the run does not decode: {e}"))
            .expect("a picture");
        assert!(
            (40.0..200.0).contains(&picture.mean_luma),
            "frame {i}: {picture:?}"
        );
        pictures += 1;
    }
    assert_eq!(pictures, run.len());
    println!(
        "{} TL0 frames decoded in a row through a {} kbit/s downlink ({CAMERA_KBPS} kbit/s camera); relay {:?}",
        run.len(),
        DOWNLINK_BPS / 1000,
        relay.stats().downlink
    );

    let _ = stop_tx.send(());
    kiosk
        .await
        .expect("kiosk task")
        .expect("kiosk ends cleanly");
    reader.abort();
    doctor.close().await.expect("close");
}

/// What the doctor received: sequence gaps (the relay's overflow before the SFU noticed the
/// narrow link come before the last TID 1 packet; the dropped upper layer leaves none),
/// keyframes and the last TID 1 packet, by packet index.
fn summary(all: &[Packet]) -> String {
    let mut gaps = Vec::new();
    let mut keys = Vec::new();
    let mut last_tid1 = None;
    for (i, w) in all.windows(2).enumerate() {
        if w[1].seq != w[0].seq.wrapping_add(1) {
            gaps.push((i, w[0].seq, w[1].seq));
        }
        if w[1].descriptor.starts_frame() && w[1].data.first().is_some_and(|b| b & 1 == 0) {
            keys.push(i + 1);
        }
        if w[1].descriptor.temporal.is_some_and(|t| t.tid > 0) {
            last_tid1 = Some(i + 1);
        }
    }
    format!(
        "{} packets, sequence gaps after packets {gaps:?}, keyframes at {keys:?}, last TID 1 at {last_tid1:?}",
        all.len()
    )
}

/// Looks for a keyframe followed by frames that are all TID 0, each complete, with sequence
/// numbers, picture ids and TL0PICIDX continuing by one: the frames' VP8 data, and whether a
/// TID 1 packet was received before. `None` until [`FRAMES`] such frames follow a keyframe.
fn tl0_run(all: &[Packet]) -> Option<(Vec<Vec<u8>>, bool)> {
    let mut upper_seen = false;
    let mut run: Vec<Vec<u8>> = Vec::new();
    let mut frame: Option<Vec<u8>> = None;
    let mut last: Option<&Packet> = None;
    // Picture id and TL0PICIDX of the previous frame of the run.
    let mut previous: Option<(u16, u8)> = None;
    for p in all {
        let tid = p.descriptor.temporal.map_or(0, |t| t.tid);
        let continues = last.is_some_and(|l| p.seq == l.seq.wrapping_add(1));
        let starts = p.descriptor.starts_frame();
        let keyframe = starts && p.data.first().is_some_and(|b| b & 1 == 0);
        let ids = p.descriptor.picture_id.zip(p.descriptor.tl0_pic_idx);
        let next_ids = match (previous, ids) {
            (Some((pic, tl0)), Some((p2, t2))) => {
                p2 == (pic + 1) & 0x7fff && t2 == tl0.wrapping_add(1)
            }
            _ => false,
        };
        let in_frame = frame.is_some() && continues && last.is_some_and(|l| l.ts == p.ts);
        // A packet of the frame being assembled, a keyframe, or the next frame of the run.
        let ok = tid == 0
            && (in_frame || keyframe || (starts && continues && next_ids && !run.is_empty()));
        if tid > 0 && run.is_empty() {
            upper_seen = true;
        }
        if !ok {
            run.clear();
            frame = None;
            previous = None;
        } else {
            if starts && !in_frame {
                if keyframe && !(continues && next_ids) {
                    // A keyframe that does not continue the run starts a new one.
                    run.clear();
                }
                frame = Some(Vec::new());
                previous = ids;
            }
            if let Some(f) = frame.as_mut() {
                f.extend_from_slice(&p.data);
                if p.marker {
                    run.push(std::mem::take(f));
                    frame = None;
                    if run.len() > FRAMES {
                        return Some((run, upper_seen));
                    }
                }
            }
        }
        last = Some(p);
    }
    None
}
