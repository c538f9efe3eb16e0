//! No padding or empty packets for a track with nothing to send: a subscriber that accepts
//! audio and video from an audio-only publisher receives the audio and nothing on the video
//! m-line. Real str0m peers, fake time.

use std::time::Duration;

use cabine_proto::Role;
use cabine_sfu::room::SessionKind;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, MediaTime};
use str0m::rtp::{RawPacket, Ssrc};
use str0m::Event;

use crate::common::{write_vp8, FakeFrame, Sim};

const OPUS_FRAME: Duration = Duration::from_millis(20);

#[test]
fn a_video_slot_with_nothing_to_forward_receives_no_packets() {
    let mut sim = Sim::new();
    sim.raw_packets = true;
    let (kiosk, mic) = sim
        .join("kiosk-1", Role::Kiosk, SessionKind::Publish, |api| {
            api.add_media(
                MediaKind::Audio,
                Direction::SendOnly,
                Some("kiosk".into()),
                Some("microphone".into()),
                None,
            )
        })
        .expect("kiosk joins");
    let (doctor, video) = sim
        .join("dr-1", Role::Doctor, SessionKind::Subscribe, |api| {
            api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
            api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None)
        })
        .expect("doctor joins");

    let t0 = sim.now;
    let mut next = t0;
    let mut n = 0u64;
    sim.run_until(t0 + Duration::from_secs(10), |sim| {
        let now = sim.now;
        let peer = &mut sim.peers[kiosk];
        if !peer.connected {
            return Some(now + OPUS_FRAME);
        }
        if now >= next {
            n += 1;
            let w = peer.rtc.writer(mic).expect("writer");
            let pt = w
                .payload_params()
                .find(|p| p.spec().codec == Codec::Opus)
                .expect("opus negotiated")
                .pt();
            w.write(pt, now, MediaTime::from_90khz(n * 1_800), vec![0x5a; 80])
                .expect("write audio");
            next = now + OPUS_FRAME;
        }
        Some(next)
    });

    // Bandwidth probes (SSRC 0, padding only) may ride the audio m-line, which has media to
    // send; nothing at all may come on the video m-line, and no padding-only packet on any
    // media stream (RTX padding carries no mid once the SSRC is known, so it is counted by
    // being empty).
    let (mut audio, mut on_video, mut empty, mut probes) = (0, 0, 0, 0);
    for (_, e) in &sim.peers[doctor].events {
        let Event::RawPacket(raw) = e else { continue };
        let RawPacket::RtpRx(header, payload) = raw.as_ref() else {
            continue;
        };
        if header.ssrc == Ssrc::from(0) {
            probes += 1;
            assert_ne!(
                header.ext_vals.mid,
                Some(video),
                "a probe on the video m-line"
            );
            continue;
        }
        if header.ext_vals.mid == Some(video) {
            on_video += 1;
        }
        if payload.is_empty() {
            empty += 1;
        } else {
            audio += 1;
        }
    }
    assert!(audio > 300, "the audio flows: {audio} packets");
    assert_eq!(on_video, 0, "packets on the video m-line");
    assert_eq!(
        empty, 0,
        "padding-only packets ({audio} audio, {probes} probes)"
    );
}

#[test]
fn a_video_slot_carries_a_track_published_later_and_falls_silent_when_it_ends() {
    let mut sim = Sim::new();
    sim.raw_packets = true;
    // The doctor joins an empty room: its video slot has nothing to forward yet.
    let (doctor, video) = sim
        .join("dr-1", Role::Doctor, SessionKind::Subscribe, |api| {
            api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None)
        })
        .expect("doctor joins");
    let t0 = sim.now;
    sim.run_until(t0 + Duration::from_secs(2), |_| None);
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
    let mut next = sim.now;
    let mut counter = 0u32;
    sim.run_until(t0 + Duration::from_secs(6), |sim| {
        let now = sim.now;
        let peer = &mut sim.peers[kiosk];
        if !peer.connected {
            return Some(now + Duration::from_millis(33));
        }
        if now >= next {
            counter += 1;
            let frame = FakeFrame {
                rid: None,
                rtp_90k: u64::from(counter) * 3000,
                layer: 0,
                counter,
                key: counter % 30 == 1,
                size: 800,
            };
            write_vp8(&mut peer.rtc, camera, now, frame);
            next = now + Duration::from_millis(33);
        }
        Some(next)
    });
    let frames = sim.peers[doctor]
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::MediaData(d) if d.mid == video))
        .count();
    assert!(
        frames > 60,
        "the camera reaches the late slot: {frames} frames"
    );

    // The camera goes away: the slot is idle again and nothing more comes on it.
    assert!(sim.room.leave(sim.peers[kiosk].session));
    let ended = sim.now;
    sim.run_until(ended + Duration::from_secs(5), |_| None);
    let after = sim.peers[doctor]
        .events
        .iter()
        .filter(|(at, e)| {
            *at > ended + Duration::from_millis(200)
                && matches!(e, Event::RawPacket(raw)
                    if matches!(raw.as_ref(), RawPacket::RtpRx(h, _) if h.ssrc != Ssrc::from(0)))
        })
        .count();
    assert_eq!(
        after, 0,
        "RTP packets on the idle slot after its track ended"
    );
}
