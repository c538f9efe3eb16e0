//! Server-initiated renegotiation (WebSocket signalling): a subscriber the room negotiates
//! with receives every track published after it joined on a new m-line of a new offer, with
//! its label; tracks that go away are stopped; changes made while an offer is out wait for its
//! answer; an ICE restart comes as an offer with new credentials. Real str0m peers, fake time.

use std::time::{Duration, Instant};

use crate::common::{write_vp8, FakeFrame, Sim};
use cabine_proto::Role;
use cabine_sfu::room::{SessionKind, TrackClass};
use str0m::media::{Direction, MediaKind, Mid};
use str0m::Event;

/// Publishers' video m-lines to feed: (peer, mid, next frame time, frame counter).
struct Feeds(Vec<(usize, Mid, Instant, u32)>);

impl Feeds {
    /// Writes a frame (a keyframe every 10th) on every connected publisher that is due.
    fn tick(&mut self, sim: &mut Sim) -> Option<Instant> {
        let now = sim.now;
        let mut next = None::<Instant>;
        for (peer, mid, at, counter) in &mut self.0 {
            let p = &mut sim.peers[*peer];
            if p.connected && now >= *at && p.rtc.is_alive() {
                *counter += 1;
                let frame = FakeFrame {
                    rid: None,
                    rtp_90k: u64::from(*counter) * 3000,
                    layer: 0,
                    counter: *counter,
                    key: *counter % 10 == 1,
                    size: 800,
                };
                write_vp8(&mut p.rtc, *mid, now, frame);
                *at = now + Duration::from_millis(33);
            } else if now >= *at {
                *at = now + Duration::from_millis(33);
            }
            next = Some(next.map_or(*at, |n| n.min(*at)));
        }
        next
    }
}

/// Frames the peer decoded on `mid` since the start.
fn frames_on(sim: &Sim, peer: usize, mid: &str) -> usize {
    sim.peers[peer]
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::MediaData(d) if d.mid.to_string() == mid))
        .count()
}

#[test]
fn tracks_published_later_reach_a_negotiated_subscriber_on_new_offers() {
    let mut sim = Sim::new();
    let (kiosk, camera) = sim
        .join("kiosk-1", Role::Kiosk, SessionKind::Publish, |api| {
            let cam = api.add_media(
                MediaKind::Video,
                Direction::SendOnly,
                Some("kiosk".into()),
                Some("room-camera".into()),
                None,
            );
            api.add_media(
                MediaKind::Audio,
                Direction::SendOnly,
                Some("kiosk".into()),
                Some("stethoscope".into()),
                None,
            );
            cam
        })
        .unwrap();

    // The doctor joins: the first offer carries the two tracks, labelled, and the channels.
    let (doctor, first) = sim.join_offered("dr-1", Role::Doctor, true);
    assert_eq!(first.id, 1);
    let labels: Vec<(&str, TrackClass)> = first
        .added
        .iter()
        .map(|t| (t.track.label.track.as_str(), t.track.class))
        .collect();
    assert_eq!(
        labels,
        vec![
            ("room-camera", TrackClass::Video),
            ("stethoscope", TrackClass::Stethoscope)
        ]
    );
    assert!(first.sdp.contains("m=application"), "telemetry channels");
    assert!(first.sdp.contains("a=msid:kiosk room-camera"));
    let camera_mid = first.added[0].mid.clone();

    let mut feeds = Feeds(vec![(kiosk, camera, sim.now, 0)]);
    let t0 = sim.now;
    sim.run_until(t0 + Duration::from_secs(3), |s| feeds.tick(s));
    assert!(sim.peers[doctor].connected, "doctor connected");
    let before = frames_on(&sim, doctor, &camera_mid);
    assert!(before > 30, "room camera frames decoded: {before}");
    assert!(sim.take_offers().is_empty(), "nothing to renegotiate");
    assert_eq!(sim.send_data(b"{}", true), 1, "telemetry channel open");

    // The kiosk switches the otoscope on: a second publish session mid-consultation.
    let (otoscope_peer, otoscope) = sim
        .join("kiosk-1", Role::Kiosk, SessionKind::Publish, |api| {
            api.add_media(
                MediaKind::Video,
                Direction::SendOnly,
                Some("kiosk".into()),
                Some("device-camera".into()),
                None,
            )
        })
        .unwrap();
    let offers = sim.take_offers();
    assert_eq!(offers.len(), 1, "one renegotiation, for the doctor");
    let second = &offers[0];
    assert_eq!(second.session, sim.peers[doctor].session);
    assert_eq!(second.id, 2);
    assert_eq!(second.added.len(), 1);
    assert_eq!(second.added[0].track.class, TrackClass::DeviceCamera);
    assert_eq!(second.added[0].from.as_str(), "kiosk-1");
    assert!(second.removed.is_empty());
    let device_mid = second.added[0].mid.clone();
    assert_ne!(device_mid, camera_mid);

    // A change while the offer is out waits for its answer: a microphone is published too.
    let (mic_peer, _) = sim
        .join("kiosk-1", Role::Kiosk, SessionKind::Publish, |api| {
            api.add_media(
                MediaKind::Audio,
                Direction::SendOnly,
                Some("kiosk".into()),
                Some("microphone".into()),
                None,
            )
        })
        .unwrap();
    assert!(sim.take_offers().is_empty(), "one offer out at a time");
    // The offer outstanding is the one to resend after a signalling reconnect.
    let out = sim
        .room
        .outstanding_offer(sim.peers[doctor].session)
        .unwrap();
    assert_eq!(out.id, 2);
    let second = second.clone();
    sim.answer(&second);
    let third = sim.take_offers();
    assert_eq!(third.len(), 1, "the waiting change follows the answer");
    assert_eq!(third[0].id, 3);
    assert_eq!(third[0].added[0].track.label.track, "microphone");
    sim.answer(&third[0]);
    let _ = mic_peer;

    feeds.0.push((otoscope_peer, otoscope, sim.now, 0));
    let t1 = sim.now;
    sim.run_until(t1 + Duration::from_secs(3), |s| feeds.tick(s));
    let device_frames = frames_on(&sim, doctor, &device_mid);
    assert!(device_frames > 30, "device camera frames: {device_frames}");
    let after = frames_on(&sim, doctor, &camera_mid);
    assert!(
        after > before + 60,
        "room camera kept flowing: {before} → {after}"
    );

    // The otoscope is switched off: its m-line is stopped in the next offer.
    assert!(sim.room.leave(sim.peers[otoscope_peer].session));
    let offers = sim.take_offers();
    assert_eq!(offers.len(), 1);
    assert_eq!(offers[0].removed.len(), 1);
    assert_eq!(offers[0].removed[0].mid, device_mid);
    assert!(offers[0].added.is_empty());
    let stopped = offers[0].clone();
    sim.answer(&stopped);
    let m = sim.peers[doctor]
        .rtc
        .media(Mid::from(device_mid.as_str()))
        .expect("m-line kept");
    assert!(m.disabled() || m.direction() == Direction::Inactive);
    let snap = sim.room.snapshot(sim.now);
    let received = &snap
        .sessions
        .iter()
        .find(|s| s.identity.as_str() == "dr-1")
        .unwrap()
        .received;
    assert_eq!(received.len(), 3, "camera, stethoscope, microphone");

    // ICE restart: a new offer with new server credentials; media keeps flowing after it.
    sim.room
        .restart_ice_offer(sim.peers[doctor].session)
        .unwrap();
    let offers = sim.take_offers();
    assert_eq!(offers.len(), 1);
    assert_ne!(offers[0].ice_ufrag, "srv1", "new server ufrag");
    let restart = offers[0].clone();
    sim.answer(&restart);
    let before = frames_on(&sim, doctor, &camera_mid);
    let t2 = sim.now;
    sim.run_until(t2 + Duration::from_secs(3), |s| feeds.tick(s));
    let after = frames_on(&sim, doctor, &camera_mid);
    assert!(
        after > before + 60,
        "frames after the ICE restart: {before} → {after}"
    );
}

#[test]
fn answers_must_name_the_outstanding_offer() {
    let mut sim = Sim::new();
    let (_doctor, first) = sim.join_offered("dr-1", Role::Doctor, true);
    // Already answered by join_offered: the same id again is refused, as is garbage.
    let err = sim
        .room
        .accept_answer(sim.now, first.session, first.id, "v=0")
        .unwrap_err();
    assert!(err.to_string().contains("no outstanding offer 1"), "{err}");
    // A WHEP subscriber does not take offers.
    let (plain, _) = sim
        .join("nurse-1", Role::Assistant, SessionKind::Subscribe, |api| {
            api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None)
        })
        .unwrap();
    let err = sim
        .room
        .restart_ice_offer(sim.peers[plain].session)
        .unwrap_err();
    assert!(
        err.to_string().contains("does not take server offers"),
        "{err}"
    );
}

#[test]
fn a_publishers_re_offer_adds_and_ends_tracks_for_negotiated_subscribers() {
    let mut sim = Sim::new();
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
        .unwrap();
    let (doctor, first) = sim.join_offered("dr-1", Role::Doctor, false);
    assert_eq!(first.added.len(), 1);
    let mut feeds = Feeds(vec![(kiosk, camera, sim.now, 0)]);
    let t0 = sim.now;
    sim.run_until(t0 + Duration::from_secs(2), |s| feeds.tick(s));

    // The kiosk page switches its device camera on: a new m-line on the same connection.
    let (device, offer, pending) = {
        let mut api = sim.peers[kiosk].rtc.sdp_api();
        let mid = api.add_media(
            MediaKind::Video,
            Direction::SendOnly,
            Some("kiosk".into()),
            Some("device-camera".into()),
            None,
        );
        let (offer, pending) = api.apply().expect("a new offer");
        (mid, offer, pending)
    };
    let session = sim.peers[kiosk].session;
    let joined = sim
        .room
        .republish(sim.now, session, &offer.to_sdp_string())
        .expect("re-offer accepted");
    let labels: Vec<&str> = joined
        .tracks
        .iter()
        .map(|t| t.label.track.as_str())
        .collect();
    assert_eq!(labels, vec!["room-camera", "device-camera"]);
    let answer = str0m::change::SdpAnswer::from_sdp_string(&joined.answer).unwrap();
    sim.peers[kiosk]
        .rtc
        .sdp_api()
        .accept_answer(pending, answer)
        .expect("answer applies");
    let offers = sim.take_offers();
    assert_eq!(offers.len(), 1);
    assert_eq!(offers[0].session, sim.peers[doctor].session);
    assert_eq!(offers[0].added[0].track.label.track, "device-camera");
    let device_mid = offers[0].added[0].mid.clone();
    let o = offers[0].clone();
    sim.answer(&o);
    feeds.0.push((kiosk, device, sim.now, 0));
    let t1 = sim.now;
    sim.run_until(t1 + Duration::from_secs(2), |s| feeds.tick(s));
    let got = frames_on(&sim, doctor, &device_mid);
    assert!(got > 20, "device camera frames after the re-offer: {got}");

    // And off again: the m-line goes inactive, the track ends for the doctor.
    let (offer, pending) = {
        let mut api = sim.peers[kiosk].rtc.sdp_api();
        api.set_direction(device, Direction::Inactive);
        api.apply().expect("a new offer")
    };
    feeds.0.pop();
    let joined = sim
        .room
        .republish(sim.now, session, &offer.to_sdp_string())
        .expect("re-offer accepted");
    assert_eq!(joined.tracks.len(), 1);
    let answer = str0m::change::SdpAnswer::from_sdp_string(&joined.answer).unwrap();
    sim.peers[kiosk]
        .rtc
        .sdp_api()
        .accept_answer(pending, answer)
        .unwrap();
    let offers = sim.take_offers();
    assert_eq!(offers.len(), 1);
    assert_eq!(offers[0].removed[0].mid, device_mid);
    let o = offers[0].clone();
    sim.answer(&o);
    let before = frames_on(&sim, doctor, &first.added[0].mid);
    let t2 = sim.now;
    sim.run_until(t2 + Duration::from_secs(2), |s| feeds.tick(s));
    let after = frames_on(&sim, doctor, &first.added[0].mid);
    assert!(
        after > before + 40,
        "room camera unaffected: {before} → {after}"
    );
}
