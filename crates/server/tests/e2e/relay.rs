//! End to end on 127.0.0.1 with real UDP and real DTLS-SRTP, two independent WebRTC stacks:
//! a kiosk built on the `webrtc` crate publishes a camera, a microphone and a stethoscope over
//! WHIP; two subscribers (doctor, assistant) receive all three over WHEP, with their labels, and
//! the payload bytes they receive equal what was sent, in order, with no loss.

use crate::common;

use std::time::Duration;

use crate::common::{payload, receive_all, PACKETS};
use cabine_client::{ClientOptions, Codec, MediaKind, Publisher, Subscriber, TrackSpec};
use cabine_proto::Role;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kiosk_tracks_reach_two_subscribers_intact() {
    let s = common::start().await;
    let room = "consult-1";
    let whip = format!("{}/whip/{room}", s.base);
    let whep = format!("{}/whep/{room}", s.base);

    let tracks = vec![
        TrackSpec::video("kiosk-1", "room-camera", Codec::Vp8),
        TrackSpec::audio("kiosk-1", "microphone"),
        TrackSpec::audio("kiosk-1", "stethoscope"),
    ];
    let publisher = Publisher::connect(
        &whip,
        &s.token(room, Role::Kiosk, "kiosk-1"),
        tracks,
        ClientOptions::loopback(),
    )
    .await
    .expect("kiosk publishes over WHIP");

    let opts = ClientOptions {
        recv_video: 1,
        recv_audio: 2,
        ..ClientOptions::loopback()
    };
    let doctor = Subscriber::connect(&whep, &s.token(room, Role::Doctor, "dr-1"), opts.clone())
        .await
        .expect("doctor subscribes over WHEP");
    let assistant = Subscriber::connect(&whep, &s.token(room, Role::Assistant, "nurse-1"), opts)
        .await
        .expect("assistant subscribes over WHEP");

    // The answers carry the kiosk's labels.
    for sub in [&doctor, &assistant] {
        for label in [
            "kiosk-1 room-camera",
            "kiosk-1 microphone",
            "kiosk-1 stethoscope",
        ] {
            assert!(
                sub.answer_sdp().contains(&format!("a=msid:{label}")),
                "answer lacks {label}:\n{}",
                sub.answer_sdp()
            );
        }
    }

    // Send: 150 packets per track, 10 ms apart.
    let sender = tokio::spawn(async move {
        for i in 0..PACKETS {
            for (t, track) in publisher.tracks().iter().enumerate() {
                let inc = if track.kind() == MediaKind::Video {
                    900
                } else {
                    480
                };
                track
                    .write_rtp(&payload(t, i), true, inc)
                    .await
                    .expect("write rtp");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        publisher
    });

    let (d, a) = tokio::join!(receive_all(&doctor, 3), receive_all(&assistant, 3));
    let publisher = sender.await.unwrap();

    for (who, got) in [("doctor", d), ("assistant", a)] {
        assert_eq!(got.len(), 3, "{who} received tracks {:?}", got.keys());
        for (t, label) in ["room-camera", "microphone", "stethoscope"]
            .iter()
            .enumerate()
        {
            let (stream, payloads, seqs) = got
                .get(*label)
                .unwrap_or_else(|| panic!("{who} lacks {label}: {:?}", got.keys()));
            assert_eq!(stream, "kiosk-1", "{who}/{label} stream id");
            let expected: Vec<Vec<u8>> = (0..PACKETS).map(|i| payload(t, i)).collect();
            assert_eq!(payloads.len(), PACKETS, "{who}/{label}: packets received");
            assert!(
                payloads == &expected,
                "{who}/{label}: payloads differ from what was sent"
            );
            for w in seqs.windows(2) {
                assert_eq!(
                    w[1],
                    w[0].wrapping_add(1),
                    "{who}/{label}: sequence numbers contiguous"
                );
            }
        }
    }

    // The operators' view counted it.
    let rooms = s.rooms().await;
    let sessions = rooms["rooms"][0]["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 3, "{rooms}");
    let published = sessions.iter().find(|x| x["kind"] == "publish").unwrap()["published"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(published.len(), 3);
    for p in &published {
        assert_eq!(
            p["layers"][0]["packets"].as_u64(),
            Some(PACKETS as u64),
            "{p}"
        );
        assert!(p["forwarding_delay"]["count"].as_u64().unwrap() > 0, "{p}");
    }
    let steth = published
        .iter()
        .find(|p| p["track"]["label"]["track"] == "stethoscope")
        .unwrap();
    assert_eq!(steth["track"]["class"], "stethoscope");
    assert_eq!(rooms["media"]["unknown_source"].as_u64(), Some(0));

    doctor.close().await.ok();
    assistant.close().await.ok();
    publisher.close().await.ok();
    s.server.shutdown(Duration::from_millis(200)).await;
}
