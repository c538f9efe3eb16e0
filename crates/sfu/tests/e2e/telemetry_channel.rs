//! Telemetry reaches a subscriber on the server-opened `telemetry` data channels (one reliable,
//! one lossy), and what the subscriber sends on its own channel (a device command) comes back
//! out of the room for the shell.

use std::time::Duration;

use crate::common::Sim;
use cabine_proto::Role;
use cabine_sfu::room::{SessionKind, TELEMETRY_LABEL};
use str0m::channel::Reliability;
use str0m::media::{Direction, MediaKind};
use str0m::Event;

/// A kiosk publishing a microphone and a doctor subscribing with a `commands` data channel:
/// the simulation, the doctor's peer index and its channel.
fn kiosk_and_doctor() -> (Sim, usize, str0m::channel::ChannelId) {
    let mut sim = Sim::new();
    sim.join("kiosk-1", Role::Kiosk, SessionKind::Publish, |api| {
        api.add_media(
            MediaKind::Audio,
            Direction::SendOnly,
            Some("kiosk".into()),
            Some("microphone".into()),
            None,
        )
    })
    .unwrap();
    let (doctor, cmd) = sim
        .join("dr-1", Role::Doctor, SessionKind::Subscribe, |api| {
            api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
            api.add_channel("commands".into())
        })
        .unwrap();
    (sim, doctor, cmd)
}

#[test]
fn telemetry_channels_carry_data_both_ways() {
    let (mut sim, doctor, cmd) = kiosk_and_doctor();
    // A subscriber without a data channel gets no telemetry and is not disturbed.
    let (_plain, _) = sim
        .join("nurse-1", Role::Assistant, SessionKind::Subscribe, |api| {
            api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None)
        })
        .unwrap();

    let t0 = sim.now;
    sim.run_until(t0 + Duration::from_secs(3), |_| None);
    let opened: Vec<(str0m::channel::ChannelId, String)> = sim.peers[doctor]
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::ChannelOpen(id, label) => Some((*id, label.clone())),
            _ => None,
        })
        .collect();
    let telemetry: Vec<_> = opened
        .iter()
        .filter(|(_, l)| l == TELEMETRY_LABEL)
        .collect();
    assert_eq!(
        telemetry.len(),
        2,
        "two telemetry channels opened: {opened:?}"
    );
    let lossy = telemetry.iter().any(|(id, _)| {
        sim.peers[doctor]
            .rtc
            .channel(*id)
            .and_then(|c| c.config().cloned())
            .is_some_and(|c| {
                !c.ordered && c.reliability == Reliability::MaxRetransmits { retransmits: 0 }
            })
    });
    assert!(lossy, "one of them is unordered without retransmissions");

    // Server → doctor, one message every 20 ms as a waveform would come.
    let t1 = sim.now;
    let mut i = 0u32;
    let mut next = t1;
    sim.run_until(t1 + Duration::from_secs(3), |sim| {
        if i < 50 && sim.now >= next {
            let reliable = i.is_multiple_of(2);
            let msg = format!("{{\"seq\":{i}}}");
            assert_eq!(
                sim.send_data(msg.as_bytes(), reliable),
                1,
                "exactly the doctor has telemetry"
            );
            i += 1;
            next = sim.now + Duration::from_millis(20);
        }
        (i < 50).then_some(next)
    });
    let got: Vec<String> = sim.peers[doctor]
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::ChannelData(d) => Some(String::from_utf8(d.data.clone()).unwrap()),
            _ => None,
        })
        .collect();
    assert_eq!(got.len(), 50, "{got:?}");
    let reliable_seqs: Vec<&String> = got
        .iter()
        .filter(|m| {
            let n: u32 = m
                .trim_start_matches("{\"seq\":")
                .trim_end_matches('}')
                .parse()
                .unwrap();
            n.is_multiple_of(2)
        })
        .collect();
    let expected: Vec<String> = (0..50)
        .step_by(2)
        .map(|i| format!("{{\"seq\":{i}}}"))
        .collect();
    assert_eq!(
        reliable_seqs,
        expected.iter().collect::<Vec<_>>(),
        "reliable channel keeps order"
    );

    // Doctor → server: a command on the doctor's own channel.
    sim.peers[doctor]
        .rtc
        .channel(cmd)
        .expect("command channel open")
        .write(
            false,
            br#"{"command":"start_measurement","device":"bp-cuff"}"#,
        )
        .unwrap();
    let t2 = sim.now;
    sim.run_until(t2 + Duration::from_millis(500), |_| None);
    let inbound = sim.take_data_in();
    assert_eq!(inbound.len(), 1);
    assert_eq!(inbound[0].identity.as_str(), "dr-1");
    assert_eq!(inbound[0].label, "commands");
    assert!(String::from_utf8_lossy(&inbound[0].data).contains("start_measurement"));

    let snap = sim.room.snapshot(sim.now);
    let stats = snap.sessions[doctor]
        .telemetry
        .expect("doctor has telemetry stats");
    assert_eq!(stats.sent, 50);
    assert_eq!(stats.received, 1);
    assert!(snap.sessions[2].telemetry.is_none());
}

/// A snapshot's chunks come in a burst larger than the SCTP send buffer (128 KiB in str0m):
/// every reliable message still reaches the subscriber, whole and in order, as it acknowledges.
#[test]
fn a_reliable_burst_larger_than_the_send_buffer_arrives_whole_and_in_order() {
    let (mut sim, doctor, _) = kiosk_and_doctor();
    let t0 = sim.now;
    sim.run_until(t0 + Duration::from_secs(3), |_| None);

    // 40 chunks of ~22 KB (a 16 KiB blob chunk in base64 JSON): 880 KB at once.
    let chunk = |i: usize| {
        let mut m = format!("{{\"seq\":{i},\"data\":\"").into_bytes();
        m.resize(22_000, b'A' + (i % 26) as u8);
        m.extend_from_slice(b"\"}");
        m
    };
    for i in 0..40 {
        assert_eq!(sim.send_data(&chunk(i), true), 1, "chunk {i} accepted");
    }
    let t1 = sim.now;
    sim.run_until(t1 + Duration::from_secs(5), |_| None);
    let got: Vec<Vec<u8>> = sim.peers[doctor]
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::ChannelData(d) if d.data.len() > 1000 => Some(d.data.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(got.len(), 40, "every chunk arrived");
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m, &chunk(i), "chunk {i} whole and in order");
    }
    let snap = sim.room.snapshot(sim.now);
    let stats = snap.sessions[doctor].telemetry.expect("telemetry stats");
    assert_eq!(stats.dropped, 0, "{stats:?}");
    assert!(stats.deferred > 0, "the burst waited for room: {stats:?}");
    assert_eq!(stats.sent, 40, "{stats:?}");
}

/// A measurement that reaches the room after a subscriber joined but before its telemetry
/// channels opened (the page asks for the room's `sync` once its own channel opens, which may
/// be first) waits for the channel and arrives; a lossy one (a waveform chunk) does not.
#[test]
fn reliable_telemetry_sent_before_the_channel_opens_arrives_once_it_does() {
    let (mut sim, doctor, _) = kiosk_and_doctor();
    assert_eq!(
        sim.send_data(b"{\"early\":1}", true),
        1,
        "held for the doctor"
    );
    assert_eq!(
        sim.send_data(b"{\"wave\":1}", false),
        0,
        "a lossy chunk is not held"
    );
    let t0 = sim.now;
    sim.run_until(t0 + Duration::from_secs(3), |_| None);
    assert_eq!(sim.send_data(b"{\"live\":2}", true), 1);
    let t1 = sim.now;
    sim.run_until(t1 + Duration::from_secs(1), |_| None);
    let got: Vec<String> = sim.peers[doctor]
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::ChannelData(d) => Some(String::from_utf8(d.data.clone()).unwrap()),
            _ => None,
        })
        .collect();
    assert_eq!(
        got,
        ["{\"early\":1}", "{\"live\":2}"],
        "in order, none lost"
    );
    let snap = sim.room.snapshot(sim.now);
    let stats = snap.sessions[doctor].telemetry.expect("telemetry stats");
    assert_eq!(stats.sent, 2, "{stats:?}");
    assert_eq!(stats.dropped, 1, "the lossy chunk: {stats:?}");
}
