//! Telemetry does not compete with datagrams for a worker's queue: while a flood keeps the
//! worker's datagram queue full (the I/O thread drops datagrams for it), every reliable
//! telemetry message handed to the media plane still reaches the subscriber, in order.

use std::net::UdpSocket;

use bytes::Bytes;
use cabine_proto::RoomId;
use cabine_sfu::room::{SessionKind, TELEMETRY_LABEL};
use cabine_sfu::shell::worker_index;
use str0m::channel::ChannelId;
use str0m::media::{Direction, MediaKind};
use str0m::Event;

use super::{binding_request, drive, server_creds, start_sfu, wait_for, UdpPeer};

/// Reliable messages sent while the flood goes on.
const RELIABLE: usize = 50;

#[test]
fn reliable_telemetry_arrives_while_datagrams_flood_the_worker() {
    const WORKERS: usize = 2;
    let sfu = start_sfu(WORKERS);
    // A room on worker 1: worker 0 runs on the I/O thread and has no datagram queue.
    let room = (0..)
        .map(|i| format!("flood-{i}"))
        .find(|r| worker_index(&RoomId::parse(r).unwrap(), WORKERS) == 1)
        .expect("some name lands on worker 1");
    let room_id = RoomId::parse(&room).unwrap();
    let (mut doctor, _) = UdpPeer::join(&sfu, &room, 1, SessionKind::Subscribe, |api| {
        api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        api.add_channel("commands".into())
    });
    // Connected, with the server's two telemetry channels open.
    assert!(
        drive(&mut [&mut doctor], |p| telemetry_channels(p[0]).len() == 2),
        "the doctor connects and gets its telemetry channels"
    );
    let reliable = telemetry_channels(&doctor)
        .into_iter()
        .find(|id| {
            doctor
                .rtc
                .channel(*id)
                .and_then(|c| c.config().cloned())
                .is_some_and(|c| c.ordered)
        })
        .expect("one telemetry channel is ordered and reliable");

    // The worker is held still (as by a long burst) while forged binding requests naming the
    // doctor's session (routed to its worker, for str0m to check) fill its datagram queue.
    let hold = sfu.hold_worker(&room_id).expect("worker held");
    let flooder = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let username = format!("{}:{}", server_creds(1).0, doctor.ufrag());
    let (forged, _) = binding_request(&username, b"not-the-session-password");
    let flood = |n: usize| {
        for _ in 0..n {
            let _ = flooder.send_to(&forged, sfu.local_addr());
        }
    };
    assert!(
        wait_for(|| {
            flood(64);
            sfu.stats().queue_full > 0
        }),
        "the flood fills the worker's datagram queue"
    );

    // Telemetry while the datagram queue stays full: measurements (reliable) and waveform
    // chunks (lossy) as the server's telemetry sink hands them over.
    let full_before = sfu.stats().queue_full;
    for i in 0..RELIABLE {
        sfu.send_data(&room_id, Bytes::from(format!("{{\"seq\":{i}}}")), true);
        sfu.send_data(&room_id, Bytes::from_static(b"{\"wave\":[]}"), false);
        flood(16);
    }
    let during = sfu.stats();
    assert!(
        during.queue_full > full_before,
        "datagrams were still being dropped for the worker while telemetry was sent"
    );
    drop(hold);

    // Every reliable message arrives, in order.
    let expected: Vec<String> = (0..RELIABLE).map(|i| format!("{{\"seq\":{i}}}")).collect();
    let arrived = drive(&mut [&mut doctor], |p| {
        received_on(p[0], reliable).len() >= RELIABLE
    });
    assert!(
        arrived,
        "{} of {RELIABLE} reliable messages arrived; media plane: {:?}",
        received_on(&doctor, reliable).len(),
        sfu.stats()
    );
    assert_eq!(received_on(&doctor, reliable), expected);
    let after = sfu.stats();
    assert_eq!(after.data_dropped_reliable, 0, "{after:?}");
    sfu.shutdown();
}

/// The server-opened `telemetry` channels the peer has seen open.
fn telemetry_channels(peer: &UdpPeer) -> Vec<ChannelId> {
    peer.events
        .iter()
        .filter_map(|e| match e {
            Event::ChannelOpen(id, label) if label == TELEMETRY_LABEL => Some(*id),
            _ => None,
        })
        .collect()
}

/// The messages received on channel `id`, as text.
fn received_on(peer: &UdpPeer, id: ChannelId) -> Vec<String> {
    peer.events
        .iter()
        .filter_map(|e| match e {
            Event::ChannelData(d) if d.id == id => Some(String::from_utf8_lossy(&d.data).into()),
            _ => None,
        })
        .collect()
}
