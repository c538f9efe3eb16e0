//! Bad input never disturbs another room: while room A streams a consultation over real UDP and
//! DTLS-SRTP, room B is hit with malformed SDP, random datagrams, a STUN flood, and binding
//! requests that claim its session (right ufrag, wrong integrity) each followed by malformed
//! RTP/RTCP/DTLS. Room A loses nothing, room B's publisher stays connected, the forged claims
//! never make the server route the attacker's address to room B, the server stays up, and every
//! kind of garbage is counted.

use crate::common;

use std::net::UdpSocket;
use std::time::Duration;

use crate::common::{payload, post_sdp, receive_all, PACKETS};
use cabine_client::{ClientOptions, Codec, MediaKind, Publisher, Subscriber, TrackSpec};
use cabine_proto::Role;
use rand::{Rng, SeedableRng};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_into_one_room_leaves_the_other_untouched() {
    let s = common::start().await;
    let media = s.server.media_addr();

    // Room B: a kiosk publishing, the target of the garbage.
    let b_pub = Publisher::connect(
        &format!("{}/whip/room-b", s.base),
        &s.token("room-b", Role::Kiosk, "kiosk-b"),
        vec![TrackSpec::audio("kiosk-b", "microphone")],
        ClientOptions::loopback(),
    )
    .await
    .expect("room B publisher");
    let b_ufrag = b_pub
        .answer_sdp()
        .lines()
        .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
        .expect("answer has an ice-ufrag")
        .to_owned();

    // Room A: a kiosk and a doctor.
    let a_pub = Publisher::connect(
        &format!("{}/whip/room-a", s.base),
        &s.token("room-a", Role::Kiosk, "kiosk-a"),
        vec![
            TrackSpec::video("kiosk-a", "room-camera", Codec::Vp8),
            TrackSpec::audio("kiosk-a", "stethoscope"),
        ],
        ClientOptions::loopback(),
    )
    .await
    .expect("room A publisher");
    let a_sub = Subscriber::connect(
        &format!("{}/whep/room-a", s.base),
        &s.token("room-a", Role::Doctor, "dr-a"),
        ClientOptions {
            recv_video: 1,
            recv_audio: 1,
            ..ClientOptions::loopback()
        },
    )
    .await
    .expect("room A subscriber");

    // The attack runs on its own thread while room A streams.
    let base = s.base.clone();
    let kiosk_b = s.token("room-b", Role::Kiosk, "kiosk-b");
    let attack = std::thread::spawn(move || garbage(media, &b_ufrag));
    let sdp_attack = tokio::spawn(async move {
        let mut refused = 0;
        for junk in [
            "v=0\r\nm=audio",
            "\u{0}\u{1}\u{2}",
            "v=0\r\no=- 1 1 IN IP4 x\r\ns=-\r\nt=0 0\r\nm=video 9 RTP/AVP 96\r\n",
        ] {
            for _ in 0..20 {
                let (status, _, _) = post_sdp(
                    &format!("{base}/whip/room-b"),
                    Some(&kiosk_b),
                    "application/sdp",
                    junk.into(),
                )
                .await;
                assert!(status == 400 || status == 422, "malformed SDP got {status}");
                refused += 1;
            }
        }
        refused
    });

    let sender = tokio::spawn(async move {
        for i in 0..PACKETS {
            for (t, track) in a_pub.tracks().iter().enumerate() {
                let inc = if track.kind() == MediaKind::Video {
                    900
                } else {
                    480
                };
                track
                    .write_rtp(&payload(t, i), true, inc)
                    .await
                    .expect("write");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        a_pub
    });
    let got = receive_all(&a_sub, 2).await;
    let a_pub = sender.await.unwrap();
    let sent = attack.join().expect("attack thread");
    assert_eq!(sdp_attack.await.unwrap(), 60);

    for (t, label) in ["room-camera", "stethoscope"].iter().enumerate() {
        let (_, payloads, _) = &got[*label];
        let expected: Vec<Vec<u8>> = (0..PACKETS).map(|i| payload(t, i)).collect();
        assert_eq!(
            payloads.len(),
            PACKETS,
            "room A {label}: packets lost during the attack"
        );
        assert!(payloads == &expected, "room A {label}: payloads altered");
    }

    // The server is up, room B's kiosk is still connected, and the garbage was counted.
    let health = reqwest::get(format!("{}/healthz", s.base)).await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    assert_eq!(
        b_pub.connection_state().to_string(),
        "connected",
        "room B's own client survives garbage aimed at its session"
    );
    // Every datagram sent is read and counted (the counters catch up with what was sent). The
    // packets behind the forged claims are unrouted like any other unknown source: the claims
    // were challenged (handed to room B's session to check), never learned.
    let unrouted = sent.random + sent.after_claims;
    let rooms = s
        .rooms_until("garbage counted", Duration::from_secs(10), |v| {
            let m = &v["media"];
            m["unknown_source"].as_u64().unwrap_or(0) >= unrouted
                && m["unknown_ufrag"].as_u64().unwrap_or(0) >= sent.stun_unknown
                && m["malformed_stun"].as_u64().unwrap_or(0) >= sent.stun_malformed
                && m["stun_challenges"].as_u64().unwrap_or(0) >= sent.claims
        })
        .await;
    let m = &rooms["media"];
    assert!(m["unknown_source"].as_u64().unwrap() >= unrouted, "{m}");
    assert_eq!(
        m["routed_addresses"].as_u64().unwrap(),
        3,
        "only the three real clients' addresses are routed, never the forger's: {m}"
    );
    assert!(
        m["unknown_ufrag"].as_u64().unwrap() >= sent.stun_unknown,
        "{m}"
    );
    assert!(
        m["malformed_stun"].as_u64().unwrap() >= sent.stun_malformed,
        "{m}"
    );
    let b = rooms["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["room"] == "room-b")
        .expect("room B still exists");
    assert!(
        b["dropped"]["rejected_datagrams"].as_u64().unwrap() <= sent.claims,
        "nothing but the forged claims themselves reached room B's session: {b}"
    );
    assert!(
        rooms["refused"]["bad_sdp"].as_u64().unwrap() >= 40,
        "{}",
        rooms["refused"]
    );

    a_sub.close().await.ok();
    a_pub.close().await.ok();
    b_pub.close().await.ok();
    s.server.shutdown(Duration::from_millis(200)).await;
}

struct Sent {
    random: u64,
    stun_unknown: u64,
    stun_malformed: u64,
    /// Binding requests naming room B's session with a wrong MESSAGE-INTEGRITY.
    claims: u64,
    /// Malformed RTP, RTCP and DTLS sent right behind those claims.
    after_claims: u64,
}

/// Sends, from an unrelated socket: random datagrams; STUN binding requests for unknown ufrags;
/// malformed STUN; then STUN requests naming room B's session (bad integrity), each followed by
/// malformed RTP, RTCP and DTLS records (an old demultiplexer learned the address from the
/// claim and routed these into the session).
fn garbage(media: std::net::SocketAddr, b_ufrag: &str) -> Sent {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut sent = Sent {
        random: 0,
        stun_unknown: 0,
        stun_malformed: 0,
        claims: 0,
        after_claims: 0,
    };
    for i in 0..3000u32 {
        match i % 3 {
            0 => {
                let len = rng.random_range(1..1200);
                let mut d: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                // Keep it out of the STUN range so it counts as an unknown source.
                d[0] = rng.random_range(2..=255);
                sock.send_to(&d, media).unwrap();
                sent.random += 1;
            }
            1 => {
                sock.send_to(&stun_binding(&format!("nope{i}:x")), media)
                    .unwrap();
                sent.stun_unknown += 1;
            }
            _ => {
                let mut d = stun_binding("whatever:x");
                d[2] = 0xff; // length field no longer matches
                sock.send_to(&d, media).unwrap();
                sent.stun_malformed += 1;
            }
        }
        if i % 500 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    // Now claim room B's session (its ufrag, a wrong MESSAGE-INTEGRITY), each claim followed
    // by a malformed RTP, RTCP or DTLS record from the same socket.
    for i in 0..600u32 {
        sock.send_to(&stun_binding(&format!("{b_ufrag}:evil")), media)
            .unwrap();
        sent.claims += 1;
        let mut d: Vec<u8> = (0..rng.random_range(12..300))
            .map(|_| rng.random())
            .collect();
        match i % 3 {
            0 => {
                d[0] = 0x80; // RTP v2
                d[1] = 111;
            }
            1 => {
                d[0] = 0x81; // RTCP v2 RR
                d[1] = 201;
            }
            _ => {
                d[0] = 22; // DTLS handshake record
                d[1] = 0xfe;
                d[2] = 0xfd;
            }
        }
        sock.send_to(&d, media).unwrap();
        sent.after_claims += 1;
        if i % 100 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    sent
}

/// A STUN binding request with USERNAME, PRIORITY and a (wrong) MESSAGE-INTEGRITY.
fn stun_binding(username: &str) -> Vec<u8> {
    let mut attrs = vec![0x00, 0x06];
    attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
    attrs.extend_from_slice(username.as_bytes());
    while attrs.len() % 4 != 0 {
        attrs.push(0);
    }
    attrs.extend_from_slice(&[0x00, 0x24, 0x00, 0x04, 0x6e, 0x00, 0x1e, 0xff]);
    attrs.extend_from_slice(&[0x00, 0x08, 0x00, 0x14]);
    attrs.extend_from_slice(&[0xab; 20]);
    let mut msg = vec![0x00, 0x01];
    msg.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    msg.extend_from_slice(&0x2112_a442u32.to_be_bytes());
    msg.extend_from_slice(&[9; 12]);
    msg.extend_from_slice(&attrs);
    msg
}
