//! A room joined with an arbitrary "SDP offer": refused with an error or answered, never a panic;
//! the SDP helpers the room applies to offers and answers (`sdp::mids`, `set_msid`,
//! `offered_codecs`) likewise. The room's default configuration gives every session the
//! process's DTLS certificate, as the server does: no key pair is generated per execution.
#![no_main]
use std::time::Instant;

use cabine_proto::{Identity, Role, RoomId};
use cabine_sfu::room::{JoinRequest, Room, RoomConfig, SessionId, SessionKind};
use cabine_sfu::sdp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let label = sdp::Label {
        stream: "kiosk".into(),
        track: "room-camera".into(),
    };
    for mid in sdp::mids(text) {
        let _ = sdp::set_msid(text, &mid, &label);
    }
    let _ = sdp::offered_codecs(text);
    let mut room = Room::new(RoomId::parse("fuzz").unwrap(), RoomConfig::default());
    for kind in [SessionKind::Publish, SessionKind::Subscribe] {
        let _ = room.join(
            Instant::now(),
            JoinRequest {
                session: SessionId(1),
                identity: Identity::parse("f").unwrap(),
                role: Role::Kiosk,
                kind,
                offer: text.to_owned(),
                from: None,
                ice_ufrag: "ufrag".into(),
                ice_pwd: "passwordpasswordpassword".into(),
            },
        );
    }
});
