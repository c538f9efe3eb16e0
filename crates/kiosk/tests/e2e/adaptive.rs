//! Issue 14's acceptance for the adaptive kiosk: `dial::run` (what `cabine-kiosk dial` runs)
//! publishes its four tracks to the real SFU through the impairment relay's `rural-adsl`
//! profile (1 Mbit/s uplink, 200 ms of queue, 40 ms RTT, 1 % loss). Once settled, its sending
//! rate stays under the uplink, the relay's queue never overflows (no loss burst beyond the
//! profile's random loss), and the stethoscope keeps its packet rate and its bitrate.
//!
//! Windows are measured in media time (the stethoscope's RTP sequence numbers, one per 20 ms),
//! not with the wall clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cabine_client::{ClientOptions, Subscriber};
use cabine_impair::{Profile, Relay, RelayConfig, RelayStats};
use cabine_kiosk::dial::{self, DialConfig};
use tokio::sync::oneshot;

use crate::common::{self, wait_until, PATIENCE};

/// Stethoscope packets (20 ms each) before measuring: the controller's ramp from half its
/// maximum and its first cuts.
const SETTLE: u16 = 1_000;

/// Stethoscope packets measured after settling (20 s).
const WINDOW: u16 = 1_000;

/// The uplink of `rural-adsl`, bit/s.
const UPLINK_BPS: f64 = 1_000_000.0;

/// What the subscriber reads of the stethoscope: (sequence number, payload bytes).
type Heard = Arc<Mutex<Vec<(u16, usize)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kiosk_settles_under_a_rural_adsl_uplink_and_the_stethoscope_keeps_its_rate() {
    let _turn = common::cpu_turn().await;
    let server = common::start().await;
    let relay = Relay::start(RelayConfig {
        seed: 14,
        ..RelayConfig::loopback(server.media(), Profile::rural_adsl())
    })
    .await
    .expect("relay");
    let mut config = DialConfig::new(server.base.clone(), "");
    config.room = Some("room-1".into());
    config.stream_id = Some("kiosk-1".into());
    config.client = ClientOptions {
        media_via: Some(relay.local_addr()),
        ..ClientOptions::loopback()
    };
    config.subscribe = false;
    config.devices = None;
    config.telemetry = None;
    config.stats_every = Duration::from_secs(3600);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let kiosk = tokio::spawn(dial::run(config, async {
        let _ = stop_rx.await;
    }));

    // The doctor's side reads the SFU directly (no impairment on that path).
    wait_until("the kiosk to publish through the relay", || {
        relay.stats().uplink.delivered > 200
    })
    .await;
    let doctor = Subscriber::connect(
        &server.whep("room-1"),
        "",
        ClientOptions {
            recv_video: 2,
            recv_audio: 2,
            ..ClientOptions::loopback()
        },
    )
    .await
    .expect("subscribes");
    let heard: Heard = Arc::default();
    for _ in 0..4 {
        let track = doctor
            .next_track(PATIENCE)
            .await
            .expect("the kiosk's tracks");
        let stethoscope = track.id() == "stethoscope";
        let heard = Arc::clone(&heard);
        // Every track is read (the others only drained).
        tokio::spawn(async move {
            while let Ok(p) = track.read_rtp().await {
                if stethoscope {
                    heard
                        .lock()
                        .expect("lock")
                        .push((p.header.sequence_number, p.payload.len()));
                }
            }
        });
    }

    let first = wait_for_packets(&heard, 1).await;
    let start = wait_for_packets(&heard, first.wrapping_add(SETTLE)).await;
    let before = relay.stats();
    let end = wait_for_packets(&heard, start.wrapping_add(WINDOW)).await;
    let after = relay.stats();

    let _ = stop_tx.send(());
    let stats = kiosk.await.expect("joins").expect("runs");
    doctor.close().await.expect("close");

    let media_seconds = f64::from(end.wrapping_sub(start)) * 0.020;
    let sent_bps =
        (after.uplink.offered_bytes - before.uplink.offered_bytes) as f64 * 8.0 / media_seconds;
    let overflowed = after.uplink.overflowed - before.uplink.overflowed;
    let report = describe(&before, &after, sent_bps, &stats);
    assert!(
        sent_bps < UPLINK_BPS,
        "sending {sent_bps:.0} bit/s over a 1 Mbit/s uplink: {report}"
    );
    assert!(
        sent_bps > 0.5 * UPLINK_BPS,
        "the kiosk gave up most of its uplink: {report}"
    );
    assert_eq!(
        overflowed, 0,
        "the uplink queue overflowed after settling: {report}"
    );
    assert!(stats.uplink_decreases >= 1, "never adapted: {report}");

    // The stethoscope: every packet of the window but the profile's random loss, each the
    // size of 20 ms of Opus at its configured 96 kbit/s.
    let heard = heard.lock().expect("lock").clone();
    let window: Vec<usize> = heard
        .iter()
        .filter(|(seq, _)| {
            let from_start = seq.wrapping_sub(start);
            from_start < WINDOW
        })
        .map(|(_, len)| *len)
        .collect();
    let received = window.len() as f64 / f64::from(WINDOW);
    assert!(
        received > 0.97,
        "stethoscope received {received:.3} of its packets: {report}"
    );
    let mean_payload = window.iter().sum::<usize>() as f64 / window.len() as f64;
    assert!(
        mean_payload > 200.0,
        "stethoscope packets of {mean_payload:.0} bytes (240 at 96 kbit/s): {report}"
    );
    let steth = &stats.tracks["stethoscope"];
    assert_eq!(steth.paused_frames, 0);
}

/// Waits until the stethoscope packet `seq` (or a later one) has been heard; returns the
/// highest sequence number heard then.
async fn wait_for_packets(heard: &Heard, seq: u16) -> u16 {
    let mut last = 0;
    // Media takes its time (20 ms a packet): patience on top of it.
    let media = Duration::from_millis(20) * u32::from(SETTLE.max(WINDOW));
    common::wait_until_for(media + PATIENCE, "stethoscope packets", || {
        let heard = heard.lock().expect("lock");
        let Some(&(newest, _)) = heard.last() else {
            return false;
        };
        last = newest;
        // Sequence numbers wrap: "at or after" within half the space.
        newest.wrapping_sub(seq) < 0x8000
    })
    .await;
    last
}

fn describe(
    before: &RelayStats,
    after: &RelayStats,
    sent_bps: f64,
    stats: &dial::DialStats,
) -> String {
    format!(
        "sent {sent_bps:.0} bit/s; relay before {:?} after {:?} ({} backlog drops); kiosk target {} bit/s, {} cuts ({} for delay), tracks {:?}",
        before.uplink,
        after.uplink,
        after.backlog_drops,
        stats.uplink_target_bps,
        stats.uplink_decreases,
        stats.uplink_delay_cuts,
        stats.tracks
    )
}
