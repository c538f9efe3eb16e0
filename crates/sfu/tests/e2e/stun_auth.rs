//! Fake time, real str0m peers: the routing table learns an address only when the room's
//! session answered a binding request from it, which str0m does only after checking its
//! MESSAGE-INTEGRITY. A request with the session's ufrag but the wrong key, from a new address,
//! changes nothing.

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::{Sim, ROOM_ADDR};
use crate::loopback::binding_request;
use cabine_proto::Role;
use cabine_sfu::demux::{Demux, Unrouted};
use cabine_sfu::room::{Output, SessionId, SessionKind};
use str0m::media::{Direction, MediaKind};

/// Feeds `data` from `from` to the room through `demux`, as the shell does, and learns the
/// address if the room answered the challenge. Returns whether it did.
fn through_the_shell(
    sim: &mut Sim,
    demux: &mut Demux<SessionId>,
    from: SocketAddr,
    data: &[u8],
) -> bool {
    let routed = demux.route(from, data).expect("routed by ufrag");
    let challenge = routed.challenge.expect("a new address is challenged");
    let now = sim.now;
    let room: SocketAddr = ROOM_ADDR.parse().unwrap();
    sim.room
        .handle_datagram(now, now, routed.key, from, room, data);
    let mut answered = false;
    loop {
        match sim.room.poll_output() {
            Output::Transmit(t) if challenge.is_answered_by(t.destination, &t.contents) => {
                answered = true;
                demux.learn(challenge.source, routed.key);
            }
            Output::Timeout(_) => return answered,
            _ => {}
        }
    }
}

#[test]
fn a_request_with_a_valid_ufrag_but_wrong_integrity_changes_nothing() {
    let mut sim = Sim::new();
    let (kiosk, _) = sim
        .join("kiosk-1", Role::Kiosk, SessionKind::Publish, |api| {
            api.add_media(
                MediaKind::Audio,
                Direction::SendOnly,
                Some("kiosk".into()),
                Some("mic".into()),
                None,
            )
        })
        .expect("kiosk joins");
    let until = sim.now + Duration::from_secs(3);
    sim.run_until(until, |_| None);
    assert!(sim.peers[kiosk].connected, "the kiosk connects");
    let session = sim.peers[kiosk].session;
    let kiosk_addr = sim.peers[kiosk].addr;

    // The table as the shell holds it: the session's ufrag and its proven address.
    let mut demux: Demux<SessionId> = Demux::default();
    demux.register("srv0".into(), session);
    demux.learn(kiosk_addr, session);
    let before = (demux.len(), demux.ufrags(), demux.addresses());

    let client_ufrag = sim.peers[kiosk]
        .rtc
        .direct_api()
        .local_ice_credentials()
        .ufrag;
    let username = format!("srv0:{client_ufrag}");
    let forger: SocketAddr = "10.0.9.9:4000".parse().unwrap();
    let (forged, _) = binding_request(&username, b"not-the-session-password");
    assert!(
        !through_the_shell(&mut sim, &mut demux, forger, &forged),
        "str0m answered a request with the wrong integrity"
    );
    assert_eq!((demux.len(), demux.ufrags(), demux.addresses()), before);
    let media = [0x80u8, 0x6f, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9];
    assert_eq!(
        demux.route(forger, &media).map(|r| r.key),
        Err(Unrouted::UnknownSource)
    );
    assert_eq!(demux.route(kiosk_addr, &media).map(|r| r.key), Ok(session));

    // The same request signed with the session's key is answered, and only then learned.
    let (signed, _) = binding_request(&username, b"serverpassword00000000");
    assert!(through_the_shell(&mut sim, &mut demux, forger, &signed));
    assert_eq!(demux.addresses(), before.2 + 1);
    assert_eq!(demux.route(forger, &media).map(|r| r.key), Ok(session));
}
