//! `/metrics` after a real session: the main series exist with plausible values (packets
//! counted equal what was sent), the participants gauge returns to 0 after leave, and no label
//! carries a room name or an identity.

use crate::common;

use std::time::Duration;

use crate::common::{payload, receive_all, PACKETS};
use cabine_client::{ClientOptions, Codec, MediaKind, Publisher, Subscriber, TrackSpec};
use cabine_proto::Role;

const ROOM: &str = "room-secret-name";
const KIOSK: &str = "kiosk-jeanne-dupont";
const DOCTOR: &str = "dr-martin-leclerc";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_follow_a_session_without_leaking_names() {
    let s = common::start_with(|c| c.admin.listen = "127.0.0.1:0".into()).await;
    let admin = s.server.admin_addr().expect("admin listener");
    let publisher = Publisher::connect(
        &format!("{}/whip/{ROOM}", s.base),
        &s.token(ROOM, Role::Kiosk, KIOSK),
        vec![
            TrackSpec::video(KIOSK, "room-camera", Codec::Vp8),
            TrackSpec::audio(KIOSK, "stethoscope"),
        ],
        ClientOptions::loopback(),
    )
    .await
    .unwrap();
    let subscriber = Subscriber::connect(
        &format!("{}/whep/{ROOM}", s.base),
        &s.token(ROOM, Role::Doctor, DOCTOR),
        ClientOptions {
            recv_video: 1,
            recv_audio: 1,
            ..ClientOptions::loopback()
        },
    )
    .await
    .unwrap();
    let sender = tokio::spawn(async move {
        for i in 0..PACKETS {
            for (t, track) in publisher.tracks().iter().enumerate() {
                let inc = if track.kind() == MediaKind::Video {
                    900
                } else {
                    480
                };
                track.write_rtp(&payload(t, i), true, inc).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        publisher
    });
    let got = receive_all(&subscriber, 2).await;
    let publisher = sender.await.unwrap();
    assert_eq!(got["stethoscope"].1.len(), PACKETS);

    s.server.refresh_metrics().await;
    let text = scrape(admin).await;
    let value = |name: &str, labels: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && l.contains(labels) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name}{{{labels}}} in:\n{text}"))
    };
    assert_eq!(value("cabine_rooms", ""), 1.0);
    assert_eq!(value("cabine_participants", "role=\"kiosk\""), 1.0);
    assert_eq!(value("cabine_participants", "role=\"doctor\""), 1.0);
    assert_eq!(value("cabine_tracks", "class=\"stethoscope\""), 1.0);
    assert_eq!(value("cabine_tracks", "class=\"video\""), 1.0);
    assert_eq!(
        value("cabine_rtp_packets_total", "direction=\"in\""),
        (2 * PACKETS) as f64,
        "every packet sent was counted in"
    );
    assert_eq!(
        value("cabine_rtp_packets_total", "direction=\"out\""),
        (2 * PACKETS) as f64
    );
    assert!(value("cabine_udp_datagrams_total", "outcome=\"received\"") >= (2 * PACKETS) as f64);
    // Two sessions, one ufrag each, and the addresses they proved.
    assert_eq!(value("cabine_sfu_routing_table", "kind=\"session\""), 2.0);
    assert_eq!(value("cabine_sfu_routing_table", "kind=\"ufrag\""), 2.0);
    assert!(value("cabine_sfu_routing_table", "kind=\"address\"") >= 2.0);
    assert!(value("cabine_sfu_forwarding_delay_seconds_count", "") >= (2 * PACKETS) as f64);
    assert!(text.contains("cabine_sfu_forwarding_delay_seconds_bucket{le=\"0.001\"}"));
    // Telemetry refused by the media plane's queues: exported, and nothing refused here.
    assert_eq!(
        value("cabine_sfu_telemetry_refused_total", "reliable=\"true\""),
        0.0
    );
    assert_eq!(
        value("cabine_sfu_telemetry_refused_total", "reliable=\"false\""),
        0.0
    );

    // Nothing identifying in any label or value line.
    for needle in [ROOM, KIOSK, DOCTOR, "jeanne", "martin"] {
        assert!(
            !text.contains(needle),
            "{needle} leaked into /metrics:\n{text}"
        );
    }

    // Sessions by selected transport (the engine reports the pair about once a second): both
    // clients signalled loopback host candidates and use UDP. ICE-TCP listens, unused.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        s.server.refresh_metrics().await;
        let text = scrape(admin).await;
        let both = text.lines().any(|l| {
            l.starts_with("cabine_sfu_sessions_transport")
                && l.contains("transport=\"host/udp\"")
                && l.ends_with(" 2")
        });
        if both {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sessions by transport never showed 2 host/udp:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        text.lines()
            .any(|l| l.starts_with("cabine_tcp_connections") && l.ends_with(" 0")),
        "no cabine_tcp_connections 0 in:\n{text}"
    );

    // Leave: participants back to 0, totals kept.
    subscriber.close().await.unwrap();
    publisher.close().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        s.server.refresh_metrics().await;
        let text = scrape(admin).await;
        let gone = ["kiosk", "doctor"].iter().all(|r| {
            text.lines().any(|l| {
                l.starts_with("cabine_participants")
                    && l.contains(&format!("role=\"{r}\""))
                    && l.ends_with(" 0")
            })
        });
        if gone {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "participants never went back to 0:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let value = |name: &str, labels: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && l.contains(labels) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name}{{{labels}}} in:\n{text}"))
    };
    assert_eq!(value("cabine_participants", "role=\"kiosk\""), 0.0);
    assert_eq!(value("cabine_participants", "role=\"doctor\""), 0.0);
    assert_eq!(value("cabine_rooms", ""), 0.0);
    assert_eq!(
        value("cabine_rtp_packets_total", "direction=\"in\""),
        (2 * PACKETS) as f64,
        "a counter never goes down when sessions end"
    );
    s.server.shutdown(Duration::from_millis(100)).await;
}

async fn scrape(admin: std::net::SocketAddr) -> String {
    let r = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.text().await.unwrap()
}
