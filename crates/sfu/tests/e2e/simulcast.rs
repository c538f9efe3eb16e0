//! Simulcast under a bandwidth limit, with real str0m peers and fake time: a publisher sends
//! three VP8 layers; a subscriber behind a 300 kbit/s link receives the low layer, and moves up
//! when the link opens, switching only at keyframes and without a gap in what it decodes.

use std::time::{Duration, Instant};

use crate::common::{simulcast_video, write_vp8, FakeFrame, Sim};
use cabine_proto::Role;
use cabine_sfu::room::SessionKind;
use str0m::media::{Direction, KeyframeRequest, MediaKind};
use str0m::Event;

const RIDS: [&str; 3] = ["q", "h", "f"];
/// Frame sizes per layer at 30 fps: ~150 kbit/s, ~500 kbit/s, ~1.2 Mbit/s.
const SIZES: [usize; 3] = [600, 2_000, 5_000];

struct Publisher {
    mid: Option<str0m::media::Mid>,
    next: Instant,
    counter: u32,
    want_key: [bool; 3],
    last_key: [Option<Instant>; 3],
}

#[test]
fn low_layer_under_a_limit_and_up_when_bandwidth_returns() {
    let mut sim = Sim::new();
    let (publisher, mid) = sim
        .join("kiosk-1", Role::Kiosk, SessionKind::Publish, |api| {
            simulcast_video(api, &RIDS)
        })
        .expect("publisher joins");
    let (subscriber, _) = sim
        .join("dr-1", Role::Doctor, SessionKind::Subscribe, |api| {
            api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        })
        .expect("subscriber joins");
    sim.peers[subscriber].down.rate_bps = Some(300_000);

    let t0 = sim.now;
    // The publisher's only m-line.
    let mut p = Publisher {
        mid: Some(mid),
        next: t0,
        counter: 0,
        want_key: [true; 3],
        last_key: [None; 3],
    };
    let frame = Duration::from_millis(33);
    let mut tick = |sim: &mut Sim| -> Option<Instant> {
        let now = sim.now;
        let peer = &mut sim.peers[publisher];
        // Keyframe requests from the SFU, per layer.
        for (_, e) in peer.events.drain(..) {
            match e {
                Event::MediaAdded(m) => p.mid = Some(m.mid),
                Event::KeyframeRequest(KeyframeRequest { rid, .. }) => {
                    for (i, r) in RIDS.iter().enumerate() {
                        if rid.is_none() || rid.map(|x| x.to_string()) == Some(r.to_string()) {
                            p.want_key[i] = true;
                        }
                    }
                }
                _ => {}
            }
        }
        let mid = p.mid?;
        if !peer.connected {
            return Some(now + frame);
        }
        if now >= p.next {
            p.counter += 1;
            let ts = u64::from(p.counter) * 3000;
            for (i, rid) in RIDS.iter().enumerate() {
                // A periodic keyframe every 3 s as a real encoder would, or on request (at most
                // one per 300 ms per layer).
                let periodic = p.last_key[i].is_none_or(|k| now - k >= Duration::from_secs(3));
                let requested = p.want_key[i]
                    && p.last_key[i].is_none_or(|k| now - k >= Duration::from_millis(300));
                let key = periodic || requested;
                if key {
                    p.want_key[i] = false;
                    p.last_key[i] = Some(now);
                }
                let frame = FakeFrame {
                    rid: Some(rid),
                    rtp_90k: ts,
                    layer: i as u8,
                    counter: p.counter,
                    key,
                    size: SIZES[i],
                };
                write_vp8(&mut peer.rtc, mid, now, frame);
            }
            p.next = now + frame;
        }
        Some(p.next)
    };

    // Phase A: 20 s behind a 300 kbit/s link.
    sim.run_until(t0 + Duration::from_secs(20), &mut tick);
    let snap = sim.room.snapshot(sim.now);
    let received = &snap.sessions[subscriber].received[0];
    assert_eq!(
        received.stats.layer.as_deref(),
        Some("q"),
        "the stats show the low layer"
    );
    let frames_a = frames(&mut sim, subscriber);
    assert!(
        frames_a.len() > 100,
        "subscriber got {} frames",
        frames_a.len()
    );
    let tail: Vec<&Frame> = frames_a
        .iter()
        .filter(|f| f.at > t0 + Duration::from_secs(15))
        .collect();
    assert!(
        !tail.is_empty(),
        "frames still arrive at the end of phase A"
    );
    assert!(
        tail.iter().all(|f| f.layer == 0),
        "a 300 kbit/s subscriber must receive the low layer, got layers {:?}",
        tail.iter()
            .map(|f| f.layer)
            .collect::<std::collections::BTreeSet<_>>()
    );

    // Phase B: the link opens.
    sim.peers[subscriber].down.rate_bps = Some(50_000_000);
    sim.run_until(t0 + Duration::from_secs(60), &mut tick);
    let frames_b = frames(&mut sim, subscriber);
    let snap = sim.room.snapshot(sim.now);
    assert!(snap.sessions[subscriber].received[0].stats.layer_switches >= 1);
    let up = frames_b.iter().find(|f| f.layer > 0).map(|f| f.at);
    assert!(
        up.is_some(),
        "subscriber never moved above the low layer after the link opened"
    );
    let end: Vec<&Frame> = frames_b
        .iter()
        .filter(|f| f.at > t0 + Duration::from_secs(55))
        .collect();
    assert!(
        end.iter().all(|f| f.layer > 0),
        "subscriber fell back down with a free link"
    );

    // Every switch lands on a keyframe, and the stream stays contiguous across it.
    let all: Vec<Frame> = frames_a.into_iter().chain(frames_b).collect();
    let mut switches = 0;
    for w in all.windows(2) {
        if w[1].layer != w[0].layer {
            switches += 1;
            assert!(
                w[1].key,
                "switch {}→{} at {:?} is not on a keyframe",
                w[0].layer,
                w[1].layer,
                w[1].at - t0
            );
            assert!(
                w[1].contiguous,
                "decoding gap at the switch {}→{}",
                w[0].layer, w[1].layer
            );
        }
    }
    assert!(switches >= 1);
    assert!(
        all.first().is_some_and(|f| f.key),
        "the first frame received is a keyframe"
    );
    println!(
        "frames: {}, switches: {switches}, moved up after {:?}",
        all.len(),
        up.map(|u| u - (t0 + Duration::from_secs(20)))
    );
}

struct Frame {
    at: Instant,
    layer: u8,
    key: bool,
    contiguous: bool,
}

fn frames(sim: &mut Sim, peer: usize) -> Vec<Frame> {
    sim.peers[peer]
        .events
        .drain(..)
        .filter_map(|(at, e)| match e {
            Event::MediaData(d) if d.data.len() >= 6 => Some(Frame {
                at,
                layer: d.data[1],
                key: d.data[0] & 0x01 == 0,
                contiguous: d.contiguous,
            }),
            _ => None,
        })
        .collect()
}
