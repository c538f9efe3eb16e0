//! Panic isolation, with real str0m peers and fake time: a room that panics while handling an
//! input is closed (each of its sessions comes out as ended with the cause) and another room's
//! media continues with no loss.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cabine_proto::Role;
use cabine_sfu::room::{EndCause, SessionKind};
use str0m::media::{Direction, MediaKind, Mid};
use str0m::Event;

use crate::common::{write_vp8, FakeFrame, Sim};

const FRAME: Duration = Duration::from_millis(33);

#[test]
fn a_panicking_room_is_closed_and_another_room_keeps_flowing() {
    let mut doomed = Consultation::new();
    let mut healthy = Consultation::new();
    let t0 = healthy.sim.now;
    doomed.run_until(doomed.sim.now + Duration::from_secs(3));
    healthy.run_until(t0 + Duration::from_secs(3));
    assert!(doomed.received() > 30 && healthy.received() > 30);

    // A bug in one room: the guard closes it and reports every session as ended.
    let panicked = doomed
        .sim
        .room
        .run_isolated(|_| panic!("a bug in the room"))
        .expect_err("the panic is caught");
    assert_eq!(panicked.sessions, 2);
    doomed.sim.drain();
    assert!(doomed.sim.room.is_empty());
    let ended: Vec<_> = doomed.sim.ended.iter().map(|r| r.session).collect();
    assert_eq!(ended.len(), 2, "{:?}", doomed.sim.ended);
    for r in &doomed.sim.ended {
        assert_eq!(r.cause, EndCause::RoomFailed, "{r:?}");
    }
    // The closed room forwards nothing more.
    let before = doomed.received();
    doomed.run_until(doomed.sim.now + Duration::from_secs(2));
    assert_eq!(doomed.received(), before);

    // The other room never noticed: every frame its publisher wrote arrived.
    healthy.run_until(t0 + Duration::from_secs(8));
    let written = healthy.counter;
    let got = healthy.frames();
    let in_flight = 3; // frames written in the last ~100 ms may still be on the link
    let missing: Vec<u32> = (1..=written - in_flight)
        .filter(|c| !got.contains(c))
        .collect();
    assert!(missing.is_empty(), "lost frames {missing:?} of {written}");
    assert!(healthy.sim.ended.is_empty(), "{:?}", healthy.sim.ended);
}

/// One room: a kiosk publishing a camera to a doctor, frames numbered from 1.
struct Consultation {
    sim: Sim,
    kiosk: usize,
    doctor: usize,
    mid: Mid,
    next: Instant,
    counter: u32,
}

impl Consultation {
    fn new() -> Self {
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
        let next = sim.now;
        Consultation {
            sim,
            kiosk,
            doctor,
            mid,
            next,
            counter: 0,
        }
    }

    /// Runs the room, writing a small frame (a keyframe first and when asked) every 33 ms
    /// once both peers are connected.
    fn run_until(&mut self, until: Instant) {
        let (kiosk, doctor, mid) = (self.kiosk, self.doctor, self.mid);
        let (next, counter) = (&mut self.next, &mut self.counter);
        let mut want_key = true;
        self.sim.run_until(until, |sim| {
            let now = sim.now;
            let ready = sim.peers[doctor].connected;
            let peer = &mut sim.peers[kiosk];
            for (_, e) in peer.events.drain(..) {
                want_key |= matches!(e, Event::KeyframeRequest(_));
            }
            if !peer.connected || !ready || !peer.rtc.is_alive() {
                return Some(now + FRAME);
            }
            if now >= *next {
                *counter += 1;
                let frame = FakeFrame {
                    rid: None,
                    rtp_90k: u64::from(*counter) * 3000,
                    layer: 0,
                    counter: *counter,
                    key: std::mem::take(&mut want_key) || counter.is_multiple_of(60),
                    size: 800,
                };
                write_vp8(&mut peer.rtc, mid, now, frame);
                *next = now + FRAME;
            }
            Some(*next)
        });
    }

    /// The frame counters the doctor received.
    fn frames(&self) -> BTreeSet<u32> {
        self.sim.peers[self.doctor]
            .events
            .iter()
            .filter_map(|(_, e)| match e {
                Event::MediaData(d) if d.data.len() >= 6 => Some(u32::from_be_bytes([
                    d.data[2], d.data[3], d.data[4], d.data[5],
                ])),
                _ => None,
            })
            .collect()
    }

    fn received(&self) -> usize {
        self.frames().len()
    }
}
