//! The retransmission history of a subscriber's video follows its round trip, with real str0m
//! peers and fake time: short until the round trip is measured and on a short path (most of a
//! consultation's memory is this history), up to the configured 1.5 s once the path's round trip
//! grows.

use std::time::{Duration, Instant};

use crate::common::{write_vp8, FakeFrame, Sim};
use cabine_proto::Role;
use cabine_sfu::room::SessionKind;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::Event;

#[test]
fn the_history_follows_the_round_trip() {
    let mut sim = Sim::new();
    let (kiosk, mid) = sim
        .join("kiosk-1", Role::Kiosk, SessionKind::Publish, |api| {
            api.add_media(
                MediaKind::Video,
                Direction::SendOnly,
                Some("kiosk".into()),
                Some("room-camera".into()),
                None,
            )
        })
        .expect("kiosk joins");
    let (doctor, _) = sim
        .join("dr-1", Role::Doctor, SessionKind::Subscribe, |api| {
            api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        })
        .expect("doctor joins");
    assert_eq!(
        history_ms(&sim, doctor),
        300,
        "the shortest until the round trip is known"
    );

    // 5 ms each way.
    let t0 = sim.now;
    let mut tick = camera(kiosk, mid);
    sim.run_until(t0 + Duration::from_secs(10), &mut tick);
    let short = history_ms(&sim, doctor);
    assert!(
        short <= 400,
        "a short path keeps a short history: {short} ms"
    );

    // The doctor's path now takes 200 ms each way: two NACK rounds need more.
    sim.peers[doctor].up.delay = Duration::from_millis(200);
    sim.peers[doctor].down.delay = Duration::from_millis(200);
    sim.run_until(t0 + Duration::from_secs(25), &mut tick);
    let long = history_ms(&sim, doctor);
    assert!(long >= 1_400, "a long path keeps a long history: {long} ms");
}

/// The retransmission history of what `peer` receives of the room camera, ms.
fn history_ms(sim: &Sim, peer: usize) -> u64 {
    let snap = sim.room.snapshot(sim.now);
    snap.sessions[peer]
        .received
        .iter()
        .find(|r| {
            r.track
                .as_ref()
                .is_some_and(|t| t.label.track == "room-camera")
        })
        .map(|r| r.stats.rtx_history_ms)
        .expect("the doctor receives the room camera")
}

/// A tick for `Sim::run_until`: publisher `peer` sends a 2,500-byte frame every 33 ms on `mid`,
/// a keyframe when asked and every 3 s.
fn camera(peer: usize, mid: Mid) -> impl FnMut(&mut Sim) -> Option<Instant> {
    let mut next: Option<Instant> = None;
    let mut counter = 0u32;
    let mut want_key = true;
    let frame = Duration::from_millis(33);
    move |sim: &mut Sim| {
        let now = sim.now;
        let p = &mut sim.peers[peer];
        for (_, e) in p.events.drain(..) {
            if let Event::KeyframeRequest(_) = e {
                want_key = true;
            }
        }
        if !p.connected {
            return Some(now + frame);
        }
        let due = *next.get_or_insert(now);
        if now >= due {
            counter += 1;
            let key = want_key || counter.is_multiple_of(90);
            want_key = false;
            let f = FakeFrame {
                rid: None,
                rtp_90k: u64::from(counter) * 3000,
                layer: 0,
                counter,
                key,
                size: 2_500,
            };
            write_vp8(&mut p.rtc, mid, now, f);
            next = Some(now + frame);
        }
        next
    }
}
