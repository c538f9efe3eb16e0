//! The shell learns a client's address only from a packet str0m authenticated, and forgets
//! ufrags on ICE restart and leave.

use std::io::ErrorKind;
use std::net::UdpSocket;

use cabine_proto::RoomId;
use cabine_sfu::room::{SessionId, SessionKind};
use str0m::media::Mid;
use str0m::IceCreds;

use super::{
    binding_request, block_on, drive, recv_audio, send_audio, server_creds, start_sfu, success_id,
    wait_for, UdpPeer,
};

fn new_socket() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.set_nonblocking(true).expect("nonblocking");
    s
}

/// Waits for a binding success answering `id` on `socket`.
fn answered(socket: &UdpSocket, id: [u8; 12]) -> bool {
    let mut buf = [0u8; 2048];
    wait_for(|| match socket.recv_from(&mut buf) {
        Ok((n, _)) => success_id(&buf[..n]) == Some(id),
        Err(_) => false,
    })
}

/// Drives a publisher and a subscriber until 20 more audio frames reached the subscriber.
fn flow(kiosk: &mut UdpPeer, doctor: &mut UdpPeer, mic: Mid, frames: &mut u64) -> bool {
    let target = doctor.media_in + 20;
    drive(&mut [kiosk, doctor], |p| {
        *frames += 1;
        p[0].write_opus(mic, *frames);
        p[0].connected && p[1].connected && p[1].media_in >= target
    })
}

#[test]
fn a_binding_request_with_a_valid_ufrag_but_wrong_integrity_changes_nothing() {
    let sfu = start_sfu(2);
    let (mut kiosk, mic) = UdpPeer::join(&sfu, "auth", 1, SessionKind::Publish, send_audio);
    let (mut doctor, _) = UdpPeer::join(&sfu, "auth", 2, SessionKind::Subscribe, recv_audio);
    let mut frames = 0;
    assert!(
        flow(&mut kiosk, &mut doctor, mic, &mut frames),
        "media flows"
    );
    let before = sfu.stats();
    assert_eq!(before.routed_addresses, 2);

    // The kiosk's session ufrag with a password that is not the session's, from a new address.
    let username = format!("{}:{}", server_creds(1).0, kiosk.ufrag());
    let forger = new_socket();
    let (forged, _) = binding_request(&username, b"not-the-session-password");
    forger.send_to(&forged, sfu.local_addr()).expect("send");
    // Then a correctly signed one from another new address, handled after it in order: once it
    // is answered, the forged one has been handled too.
    let prover = new_socket();
    let (valid, valid_id) = binding_request(&username, server_creds(1).1.as_bytes());
    prover.send_to(&valid, sfu.local_addr()).expect("send");
    assert!(answered(&prover, valid_id), "a signed request is answered");
    let mut buf = [0u8; 2048];
    assert!(
        matches!(forger.recv_from(&mut buf), Err(e) if e.kind() == ErrorKind::WouldBlock),
        "the forged request got an answer"
    );

    // Only the proven address was learned; nothing was evicted.
    assert!(wait_for(
        || sfu.stats().routed_addresses > before.routed_addresses
    ));
    let after = sfu.stats();
    assert_eq!(after.routed_addresses, before.routed_addresses + 1);
    assert_eq!(after.stun_challenges, before.stun_challenges + 2);
    // Anything else from the forger's address is still unknown.
    forger
        .send_to(
            &[0x80, 0x6f, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9],
            sfu.local_addr(),
        )
        .expect("send");
    assert!(wait_for(
        || sfu.stats().unknown_source > after.unknown_source
    ));
    // The kiosk's own address still routes: media keeps flowing.
    assert!(
        flow(&mut kiosk, &mut doctor, mic, &mut frames),
        "media still flows"
    );
    sfu.shutdown();
}

#[test]
fn a_thousand_ice_restarts_leave_the_routing_table_the_same_size() {
    let sfu = start_sfu(1);
    let room = RoomId::parse("restarts").unwrap();
    let (mut kiosk, _) = UdpPeer::join(&sfu, "restarts", 1, SessionKind::Publish, send_audio);
    assert!(drive(&mut [&mut kiosk], |p| p[0].connected), "connects");
    let before = sfu.stats();
    assert_eq!((before.routed_sessions, before.routed_ufrags), (1, 1));

    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let creds = |i: u32| IceCreds {
        ufrag: format!("restart{i}"),
        pass: format!("serverpassword{i:010}"),
    };
    for i in 0..1_000 {
        let remote = IceCreds {
            ufrag: format!("client{i}"),
            pass: "clientpassword0000000000".into(),
        };
        rt.block_on(sfu.ice_restart(room.clone(), SessionId(1), remote, creds(i)))
            .expect("restart");
    }
    // The newest ufrag routes (a signed request is answered, so every registration before it
    // was applied); an old one does not.
    let prover = new_socket();
    let username = "restart999:client999";
    let (valid, valid_id) = binding_request(username, creds(999).pass.as_bytes());
    prover.send_to(&valid, sfu.local_addr()).expect("send");
    assert!(answered(&prover, valid_id), "the newest ufrag routes");
    let old = new_socket();
    let (stale, _) = binding_request("restart0:client0", creds(0).pass.as_bytes());
    old.send_to(&stale, sfu.local_addr()).expect("send");
    assert!(wait_for(|| sfu.stats().unknown_ufrag > before.unknown_ufrag));

    let after = sfu.stats();
    assert_eq!(after.routed_sessions, before.routed_sessions);
    assert_eq!(after.routed_ufrags, before.routed_ufrags);

    // Leaving forgets the session, its ufrag and its addresses.
    block_on(sfu.leave(room, SessionId(1))).expect("leave");
    assert!(wait_for(|| {
        let s = sfu.stats();
        (s.routed_sessions, s.routed_ufrags, s.routed_addresses) == (0, 0, 0)
    }));
    sfu.shutdown();
}
