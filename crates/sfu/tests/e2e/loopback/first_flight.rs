//! The first DTLS flight is answered: a client that completed ICE connects without waiting for
//! a retransmission timer (the first ClientHello reaches a session that can handle it).

use cabine_sfu::room::SessionKind;

use super::{drive, repeats, send_audio, start_sfu, UdpPeer};

#[test]
fn the_first_dtls_flight_is_answered_without_retransmission() {
    for workers in [1, 2] {
        let sfu = start_sfu(workers);
        for n in 1..=4 {
            let (mut peer, _) = UdpPeer::join(&sfu, "first", n, SessionKind::Publish, send_audio);
            assert!(drive(&mut [&mut peer], |p| p[0].connected), "connects");
            assert!(
                !peer.handshakes_out.is_empty() || !peer.handshakes_in.is_empty(),
                "a DTLS handshake was seen"
            );
            assert_eq!(
                repeats(&peer.handshakes_out),
                vec![],
                "the client retransmitted (workers {workers}, peer {n})"
            );
            assert_eq!(
                repeats(&peer.handshakes_in),
                vec![],
                "the server retransmitted (workers {workers}, peer {n})"
            );
        }
        sfu.shutdown();
    }
}
