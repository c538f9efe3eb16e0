//! Sessions that never connect (an offer, then no ICE or DTLS) leave after
//! `RoomConfig::connect_timeout` and free their slots; connected sessions stay.

use std::net::SocketAddr;
use std::time::Duration;

use cabine_proto::{Identity, Role};
use cabine_sfu::room::{EndCause, JoinRequest, SessionId, SessionKind};
use cabine_sfu::JoinError;
use str0m::media::{Direction, MediaKind};
use str0m::{Candidate, Rtc};

use crate::common::Sim;

const TIMEOUT: Duration = Duration::from_secs(20);

#[test]
fn never_connected_sessions_leave_after_the_timeout_and_free_the_room() {
    let mut sim = Sim::with_config(|cfg| {
        cfg.max_sessions = 3;
        cfg.connect_timeout = TIMEOUT;
    });
    let t0 = sim.now;
    // Three offers from clients that never do ICE: the room is full.
    for n in 0..3 {
        sim.room
            .join(sim.now, silent_offer(&sim, n))
            .expect("a silent client joins");
    }
    let refused = sim.room.join(sim.now, silent_offer(&sim, 3));
    assert!(
        matches!(refused, Err(JoinError::RoomFull(3))),
        "{refused:?}"
    );

    // Still there just before the timeout.
    sim.run_until(t0 + TIMEOUT - Duration::from_millis(100), |_| None);
    sim.drain();
    assert_eq!(sim.room.session_count(), 3);
    assert!(sim.ended.is_empty(), "{:?}", sim.ended);

    // Gone at the timeout, each reported with the cause.
    sim.run_until(t0 + TIMEOUT + Duration::from_millis(100), |_| None);
    sim.drain();
    assert_eq!(sim.room.session_count(), 0);
    assert_eq!(sim.ended.len(), 3, "{:?}", sim.ended);
    for r in &sim.ended {
        assert_eq!(r.cause, EndCause::ConnectTimeout, "{r:?}");
        assert!(r.reason.contains("connect"), "{r:?}");
    }

    // The room admits a real joiner, which connects and stays past another timeout.
    let (doctor, _) = sim
        .join("dr-1", Role::Doctor, SessionKind::Publish, |api| {
            api.add_media(
                MediaKind::Audio,
                Direction::SendOnly,
                Some("doctor".into()),
                Some("microphone".into()),
                None,
            )
        })
        .expect("the room admits a new joiner");
    let t1 = sim.now;
    sim.run_until(t1 + 2 * TIMEOUT, |_| None);
    sim.drain();
    assert!(sim.peers[doctor].connected, "the joiner connected");
    assert_eq!(sim.room.session_count(), 1, "{:?}", sim.ended);
    assert_eq!(sim.ended.len(), 3, "{:?}", sim.ended);
}

/// A join request whose client will never send a datagram.
fn silent_offer(sim: &Sim, n: u64) -> JoinRequest {
    let mut rtc = Rtc::builder().build(sim.now);
    let addr = SocketAddr::from(([10, 0, 9, 1], 6000 + n as u16));
    rtc.add_local_candidate(Candidate::host(addr, "udp").expect("candidate"));
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    let (offer, _) = api.apply().expect("an offer");
    JoinRequest {
        session: SessionId(900 + n),
        identity: Identity::parse(&format!("silent-{n}")).expect("identity"),
        role: Role::Kiosk,
        kind: SessionKind::Publish,
        offer: offer.to_sdp_string(),
        from: None,
        ice_ufrag: format!("silent{n}"),
        ice_pwd: format!("silentpassword{n:010}"),
    }
}
