//! VP8 temporal layers under a bandwidth limit, with real str0m peers and fake time: a publisher
//! sends VP8 with two temporal layers (RFC 7741 descriptors: picture id, TL0PICIDX, TID, Y); the
//! subscriber's link carries everything for 10 s, then shrinks to a rate between the top
//! layer's base (TL0) rate and its full rate.
//!
//! The same scenario runs with the room's `temporal_first` on and off, which is the
//! measurement behind the default: with it, the subscriber keeps the top picture size at half
//! the frame rate, decodes every frame (str0m's receiver reports each frame contiguous: no
//! picture-id or sequence gap) and the publisher is asked for no keyframe; without it, a
//! single-layer camera is paused and a simulcast one drops to a smaller layer.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::common::{simulcast_video, Sim};
use cabine_proto::Role;
use cabine_sfu::room::SessionKind;
use str0m::format::{Codec, CodecExtra};
use str0m::media::{Direction, KeyframeRequest, MediaKind, Mid, Rid};

use str0m::rtp::{RtpWrite, SeqNo};
use str0m::{Event, Rtc};

/// Frames per second of the camera; TL0 is every other frame.
const FPS: u64 = 30;
/// Nominal picture sizes of the simulcast layers (for the report).
const SIZES: [&str; 3] = ["160x90", "320x180", "640x360"];

/// Frame sizes (TL0, TL1) of each simulcast layer, bytes: at 30 fps, q 36/54 kbit/s,
/// h 144/216 kbit/s, f 396/660 kbit/s (TL0 / all: 60/40, as libvpx shares two layers).
const FRAME_BYTES: [(usize, usize); 3] = [(300, 150), (1_200, 600), (3_300, 2_200)];

/// The link towards the subscriber after 10 s: between f's TL0 (396k) and its full rate (660k
/// plus packet overhead).
const LINK_BPS: u64 = 650_000;
/// When the link shrinks.
const SHRINK_AT: Duration = Duration::from_secs(10);

#[test]
fn a_lower_frame_rate_keeps_a_single_layer_camera_that_would_be_paused() {
    let with = run(true, false);
    let without = run(false, false);
    println!("single-layer camera (396k TL0 / 660k full) behind {LINK_BPS} bit/s:");
    println!("  temporal first: {with}");
    println!("  whole layers:   {without}");
    // With temporal dropping: only TL0, at ~15 fps, every frame decodable, never paused, no
    // keyframe asked for after the start.
    assert_eq!(with.tids, BTreeSet::from([0]), "{with}");
    assert!(with.fps >= 13.0, "{with}");
    assert!(with.all_contiguous, "{with}");
    assert_eq!(with.pauses, 0, "{with}");
    assert_eq!(with.late_keyframe_requests, 0, "{with}");
    // Without it the camera is paused for most of the end of the run.
    assert!(without.pauses >= 1, "{without}");
    assert!(without.fps < with.fps / 2.0, "{without} vs {with}");
}

#[test]
fn a_lower_frame_rate_of_the_top_layer_before_a_smaller_layer() {
    let with = run(true, true);
    let without = run(false, true);
    println!("simulcast q/h/f with two temporal layers behind {LINK_BPS} bit/s:");
    println!("  temporal first: {with}");
    println!("  whole layers:   {without}");
    assert_eq!(with.layers, BTreeSet::from([2]), "the top layer: {with}");
    assert_eq!(with.tids, BTreeSet::from([0]), "{with}");
    assert!(with.fps >= 13.0, "{with}");
    assert!(with.all_contiguous, "{with}");
    assert_eq!(with.late_keyframe_requests, 0, "{with}");
    // Whole layers: a smaller picture at the full frame rate, never the top layer. Since the
    // periodic re-pick (once a second) it can flap between q and h near the estimate: a known
    // defect (a keyframe per flap), shown here rather than hidden.
    assert!(!without.layers.contains(&2), "{without}");
    assert!(without.layers.contains(&1), "{without}");
    assert!(without.fps >= 26.0, "{without}");
}

/// What the subscriber received in the last 10 s of a 40 s run.
struct Outcome {
    layers: BTreeSet<u8>,
    tids: BTreeSet<u8>,
    fps: f64,
    kbps: u64,
    all_contiguous: bool,
    pauses: u64,
    /// Keyframe requests the publisher got after the link shrank.
    late_keyframe_requests: usize,
    /// The subscriber's bandwidth estimate at the end.
    bwe_kbps: u64,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sizes: Vec<&str> = self.layers.iter().map(|l| SIZES[usize::from(*l)]).collect();
        write!(
            f,
            "{sizes:?} TIDs {:?} at {:.1} fps, {} kbit/s (estimate {} kbit/s), contiguous {}, pauses {}, keyframe requests after the shrink {}",
            self.tids,
            self.fps,
            self.kbps,
            self.bwe_kbps,
            self.all_contiguous,
            self.pauses,
            self.late_keyframe_requests
        )
    }
}

/// One RTP stream of the publisher (a simulcast layer, or the only one).
struct Stream {
    layer: u8,
    rid: Option<&'static str>,
    seq: u64,
    pic: u16,
    tl0: u8,
    want_key: bool,
    last_key: Option<Instant>,
}

fn run(temporal_first: bool, simulcast: bool) -> Outcome {
    let mut sim = Sim::with_config(|c| c.temporal_first = temporal_first);
    sim.rtp_mode = true;
    let rids: &[&'static str] = if simulcast { &["q", "h", "f"] } else { &[] };
    let (publisher, mid) = sim
        .join("kiosk-1", Role::Kiosk, SessionKind::Publish, |api| {
            if simulcast {
                simulcast_video(api, rids)
            } else {
                api.add_media(
                    MediaKind::Video,
                    Direction::SendOnly,
                    Some("kiosk".into()),
                    Some("room-camera".into()),
                    None,
                )
            }
        })
        .expect("publisher joins");
    sim.rtp_mode = false;
    let (subscriber, _) = sim
        .join("dr-1", Role::Doctor, SessionKind::Subscribe, |api| {
            api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        })
        .expect("subscriber joins");
    sim.peers[subscriber].down.rate_bps = Some(5_000_000);

    let mut streams: Vec<Stream> = if simulcast {
        (0..3)
            .map(|i| Stream {
                layer: i as u8,
                rid: Some(rids[i]),
                seq: 1000 * (i as u64 + 1),
                pic: 300 * (i as u16 + 1),
                tl0: 7,
                want_key: true,
                last_key: None,
            })
            .collect()
    } else {
        vec![Stream {
            layer: 2,
            rid: None,
            seq: 5000,
            pic: 32_700,
            tl0: 250,
            want_key: true,
            last_key: None,
        }]
    };
    let t0 = sim.now;
    let frame = Duration::from_millis(1000 / FPS);
    let mut next = t0;
    let mut count = 0u64;
    let mut late_requests = 0;
    let mut tick = |sim: &mut Sim| -> Option<Instant> {
        let now = sim.now;
        let peer = &mut sim.peers[publisher];
        for (at, e) in peer.events.drain(..) {
            if let Event::KeyframeRequest(KeyframeRequest { rid, .. }) = e {
                if at > t0 + SHRINK_AT {
                    late_requests += 1;
                }
                for s in streams.iter_mut() {
                    if rid.is_none() || rid.map(|r| r.to_string()) == s.rid.map(str::to_owned) {
                        s.want_key = true;
                    }
                }
            }
        }
        if !peer.connected {
            return Some(now + frame);
        }
        if now >= next {
            let tid = (count % 2) as u8;
            for s in streams.iter_mut() {
                // A keyframe on request (at most one per 300 ms), or every 5 s, at TL0.
                let periodic = s.last_key.is_none_or(|k| now - k >= Duration::from_secs(5));
                let requested = s.want_key
                    && s.last_key
                        .is_none_or(|k| now - k >= Duration::from_millis(300));
                let key = tid == 0 && (periodic || requested);
                if key {
                    s.want_key = false;
                    s.last_key = Some(now);
                }
                write_frame(&mut peer.rtc, mid, now, s, count, tid, key);
            }
            count += 1;
            next = now + frame;
        }
        Some(next)
    };
    sim.run_until(t0 + SHRINK_AT, &mut tick);
    sim.peers[subscriber].down.rate_bps = Some(LINK_BPS);
    sim.run_until(t0 + Duration::from_secs(40), &mut tick);

    let from = t0 + Duration::from_secs(30);
    let snap = sim.room.snapshot(sim.now);
    let pauses = snap.sessions[subscriber].received[0].stats.pauses;
    let mut out = Outcome {
        layers: BTreeSet::new(),
        tids: BTreeSet::new(),
        fps: 0.0,
        kbps: 0,
        all_contiguous: true,
        pauses,
        late_keyframe_requests: late_requests,
        bwe_kbps: snap.sessions[subscriber].bwe_bps.unwrap_or(0) / 1000,
    };
    let mut frames = 0;
    let mut bytes = 0;
    let mut first = true;
    for (at, e) in sim.peers[subscriber].events.drain(..) {
        let Event::MediaData(d) = e else { continue };
        if !first && !d.contiguous && at >= from {
            out.all_contiguous = false;
            if let CodecExtra::Vp8(v) = d.codec_extra {
                println!("not contiguous at {:?}: {v:?} {:?}", at - t0, d.seq_range);
            }
        }
        first = false;
        if at < from || d.data.len() < 6 {
            continue;
        }
        frames += 1;
        bytes += d.data.len();
        out.layers.insert(d.data[1]);
        if let CodecExtra::Vp8(v) = d.codec_extra {
            out.tids.insert(v.layer_index);
        }
    }
    out.fps = f64::from(frames) / 10.0;
    out.kbps = (bytes * 8 / 10 / 1000) as u64;
    out
}

/// Writes frame `count` of `s` (temporal layer `tid`, 0 or 1) as RTP packets of at most 1100
/// bytes, each starting with a VP8 descriptor carrying picture id, TL0PICIDX, TID and Y.
fn write_frame(
    rtc: &mut Rtc,
    mid: Mid,
    now: Instant,
    s: &mut Stream,
    count: u64,
    tid: u8,
    key: bool,
) {
    if tid == 0 {
        s.tl0 = s.tl0.wrapping_add(1);
    }
    let (tl0_size, tl1_size) = FRAME_BYTES[usize::from(s.layer)];
    let size = if key {
        tl0_size * 3
    } else if tid == 0 {
        tl0_size
    } else {
        tl1_size
    };
    let mut data = vec![0x42u8; size];
    // VP8 payload header: bit 0 clear for a keyframe; then the layer and a counter.
    data[0] = if key { 0x10 } else { 0x11 };
    data[1] = s.layer;
    data[2..6].copy_from_slice(&(count as u32).to_be_bytes());
    let pt = rtc
        .codec_config()
        .find(|p| p.spec().codec == Codec::Vp8)
        .expect("VP8 configured")
        .pt();
    let ts = (count * 90_000 / FPS) as u32;
    let chunks: Vec<&[u8]> = data.chunks(1100).collect();
    let last = chunks.len() - 1;
    let mut api = rtc.direct_api();
    let Some(tx) = api.stream_tx_by_mid(mid, s.rid.map(Rid::from)) else {
        return;
    };
    for (i, chunk) in chunks.into_iter().enumerate() {
        let mut payload = vec![
            0x80 | if i == 0 { 0x10 } else { 0 },
            0xe0,
            0x80 | (s.pic >> 8) as u8,
            s.pic as u8,
            s.tl0,
            (tid << 6) | 0x20,
        ];
        payload.extend_from_slice(chunk);
        tx.write_rtp(
            RtpWrite::new(pt, SeqNo::from(s.seq), ts, now, payload)
                .marker(i == last)
                .nackable(true),
        );
        s.seq += 1;
    }
    s.pic = (s.pic + 1) & 0x7fff;
}
