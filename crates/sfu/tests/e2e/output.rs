//! The room's one output, with real str0m peers and fake time: forwarded media and offers come
//! out of `Room::poll_output`, and the room measures the forwarding delay itself from the
//! arrival time the shell gives with each datagram.

use std::time::{Duration, Instant};

use crate::common::{write_vp8, FakeFrame, Sim};
use cabine_proto::Role;
use cabine_sfu::room::SessionKind;
use str0m::media::{Direction, MediaKind};
use str0m::Event;

#[test]
fn the_room_records_forwarding_delay_from_the_arrival_time_it_is_given() {
    let mut sim = Sim::new();
    // Every datagram waited 3 ms between the socket and the room.
    sim.arrival_lag = Duration::from_millis(3);
    let (kiosk, camera) = sim
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

    let t0 = sim.now;
    let mut next = t0;
    let mut counter = 0u32;
    let frame = Duration::from_millis(33);
    let mut tick = |sim: &mut Sim| -> Option<Instant> {
        let now = sim.now;
        let peer = &mut sim.peers[kiosk];
        let asked = peer
            .events
            .drain(..)
            .any(|(_, e)| matches!(e, Event::KeyframeRequest(_)));
        if !peer.connected {
            return Some(now + frame);
        }
        if now >= next {
            counter += 1;
            let f = FakeFrame {
                rid: None,
                rtp_90k: u64::from(counter) * 3000,
                layer: 0,
                counter,
                key: asked || counter == 1 || counter.is_multiple_of(30),
                size: 1_000,
            };
            write_vp8(&mut peer.rtc, camera, now, f);
            next = now + frame;
        }
        Some(next)
    };
    sim.run_until(t0 + Duration::from_secs(5), &mut tick);

    let snap = sim.room.snapshot(sim.now);
    let received = &snap.sessions[doctor].received[0].stats;
    assert!(
        received.packets > 50,
        "forwarded {} packets",
        received.packets
    );
    let delay = &snap.sessions[kiosk].published[0].forwarding_delay;
    assert_eq!(
        delay.count, received.packets,
        "one delay sample per forwarded packet"
    );
    assert!(
        delay.mean_us >= 3_000,
        "the delay counts from the arrival time given (mean {} us)",
        delay.mean_us
    );
    assert_eq!(
        sim.room.forwarding_delay().count(),
        delay.count,
        "the room's total holds every track's samples"
    );
}

#[test]
fn offers_for_published_and_ended_tracks_come_out_of_the_output() {
    let mut sim = Sim::new();
    let (doctor, first) = sim.join_offered("dr-1", Role::Doctor, true);
    assert!(first.added.is_empty(), "nothing published yet");
    let (kiosk, _) = sim
        .join("kiosk-1", Role::Kiosk, SessionKind::Publish, |api| {
            api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None)
        })
        .expect("kiosk joins");
    let offers = sim.take_offers();
    assert_eq!(offers.len(), 1, "the new track is offered: {offers:?}");
    assert_eq!(offers[0].session, sim.peers[doctor].session);
    assert_eq!(offers[0].added.len(), 1);
    sim.answer(&offers[0]);

    assert!(sim.room.leave(sim.peers[kiosk].session));
    let offers = sim.take_offers();
    assert_eq!(offers.len(), 1, "the ended track is stopped: {offers:?}");
    assert_eq!(offers[0].removed.len(), 1);
}
