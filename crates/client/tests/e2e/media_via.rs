//! `ClientOptions::media_via`: a publisher whose answer's candidate is replaced by the
//! impairment relay's address connects to the real SFU through the relay (ICE, DTLS and media
//! all cross it), and a subscriber reading the SFU directly receives what it sent.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cabine_client::{ClientOptions, MediaKind, Publisher, Subscriber, TrackSpec};
use cabine_impair::{LinkConfig, Profile, Relay, RelayConfig};

use crate::common::{self, wait_until, PATIENCE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_reaches_the_real_sfu_through_the_relay_named_in_its_answer() {
    let server = common::start().await;
    let link = LinkConfig {
        delay: Duration::from_millis(10),
        ..LinkConfig::default()
    };
    let relay = Relay::start(RelayConfig::loopback(
        server.media(),
        Profile {
            name: "custom",
            uplink: link.clone(),
            downlink: link,
        },
    ))
    .await
    .expect("relay");
    let publisher = Publisher::connect(
        &server.whip("room-1"),
        "",
        vec![TrackSpec::audio("kiosk-1", "stethoscope")],
        ClientOptions {
            media_via: Some(relay.local_addr()),
            ..ClientOptions::loopback()
        },
    )
    .await
    .expect("connects through the relay");
    let server_port = format!(" {} typ host", server.media().port());
    assert!(
        publisher.answer_sdp().contains(&server_port),
        "the server's answer names its own port"
    );
    // ICE and DTLS crossed the relay both ways.
    let stats = relay.stats();
    assert!(
        stats.uplink.delivered > 0 && stats.downlink.delivered > 0,
        "{stats:?}"
    );

    let publisher = Arc::new(publisher);
    let sending = Arc::new(AtomicBool::new(true));
    let writer = {
        let publisher = Arc::clone(&publisher);
        let sending = Arc::clone(&sending);
        tokio::spawn(async move {
            let mut n = 0u32;
            while sending.load(Ordering::Relaxed) {
                let payload = n.to_be_bytes();
                let track = publisher.track(0).expect("one track");
                let _ = track.write_rtp(&payload, false, 960).await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let subscriber = Subscriber::connect(&server.whep("room-1"), "", ClientOptions::loopback())
        .await
        .expect("subscribes directly");
    let track = subscriber.next_track(PATIENCE).await.expect("a track");
    assert_eq!(track.kind(), MediaKind::Audio);
    for _ in 0..20 {
        let packet = track.read_rtp_timeout(PATIENCE).await.expect("media");
        assert_eq!(packet.payload.len(), 4);
    }
    let before = relay.stats().uplink.delivered;
    wait_until("media to keep crossing the relay", || {
        relay.stats().uplink.delivered > before + 20
    })
    .await;
    sending.store(false, Ordering::Relaxed);
    writer.await.expect("writer");
    subscriber.close().await.expect("close subscriber");
    if let Ok(p) = Arc::try_unwrap(publisher) {
        p.close().await.expect("close publisher");
    }
}
