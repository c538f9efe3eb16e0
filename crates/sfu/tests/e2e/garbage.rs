//! The fuzz targets' properties on stable Rust, over a seeded random corpus, so every CI run
//! exercises them: no input makes routing, codec inspection or SDP handling panic.

use std::net::SocketAddr;
use std::time::Instant;

use cabine_proto::{Identity, Role, RoomId};
use cabine_sfu::codec::starts_keyframe;
use cabine_sfu::demux::Demux;
use cabine_sfu::room::{JoinRequest, Room, RoomConfig, SessionId, SessionKind};
use rand::{Rng, SeedableRng};
use str0m::format::Codec;

const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:abcd\r\n\
a=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=fingerprint:sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08\r\n\
a=setup:actpass\r\na=mid:0\r\na=sendonly\r\na=msid:k mic\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n";

#[test]
fn random_datagrams_and_payloads_never_panic() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut d: Demux<u8> = Demux::default();
    d.register("srv1".into(), 1);
    let src = SocketAddr::from(([127, 0, 0, 1], 4000));
    for _ in 0..20_000 {
        let len = rng.random_range(0..300);
        let mut data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        if rng.random_bool(0.3) && data.len() >= 20 {
            data[0] = 0; // make it look like STUN
            data[4..8].copy_from_slice(&0x2112_a442u32.to_be_bytes());
        }
        if let Ok(r) = d.route(src, &data) {
            assert_eq!(r.key, 1);
        }
        for c in [Codec::Vp8, Codec::Vp9, Codec::H264, Codec::Av1] {
            let _ = starts_keyframe(c, &data);
        }
    }
}

#[test]
fn mutated_offers_are_answered_or_refused_never_panic() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut room = Room::new(RoomId::parse("g").unwrap(), RoomConfig::default());
    let mut refused = 0;
    for i in 0..400u64 {
        let mut bytes = OFFER.as_bytes().to_vec();
        for _ in 0..rng.random_range(1..6) {
            let at = rng.random_range(0..bytes.len());
            match rng.random_range(0..3) {
                0 => bytes[at] = rng.random_range(b' '..=b'~'),
                1 => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, b"\r\n=: "[rng.random_range(0..5)]),
            }
        }
        let offer = String::from_utf8_lossy(&bytes).into_owned();
        let r = room.join(
            Instant::now(),
            JoinRequest {
                session: SessionId(i),
                identity: Identity::parse("g").unwrap(),
                role: Role::Kiosk,
                kind: SessionKind::Publish,
                offer,
                from: None,
                ice_ufrag: format!("u{i}"),
                ice_pwd: "passwordpasswordpassword".into(),
            },
        );
        match r {
            Ok(_) => {
                room.leave(SessionId(i));
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "some mutations must be refused");
}
