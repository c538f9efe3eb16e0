//! `dial::run` end to end over loopback against a WHIP endpoint whose media side is `webrtc`
//! itself: the four cabin tracks arrive with their labels, the cameras send VP8 with
//! keyframes (and one at once after a PLI), the kiosk publishes again after the server drops
//! its session, and it ends its session with a DELETE on shutdown.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, post};
use axum::Router;
use cabine_client::webrtc;
use cabine_kiosk::backoff::Backoff;
use cabine_kiosk::dial::{self, DialConfig};
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::MediaEngine;
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::{APIBuilder, API};
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice::network_type::NetworkType;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;

fn answerer_api() -> API {
    let mut media = MediaEngine::default();
    media.register_default_codecs().expect("codecs");
    let registry =
        register_default_interceptors(Registry::new(), &mut media).expect("interceptors");
    let mut settings = SettingEngine::default();
    settings.set_include_loopback_candidate(true);
    settings.set_network_types(vec![NetworkType::Udp4]);
    settings.set_ip_filter(Box::new(|ip: IpAddr| ip.is_loopback()));
    settings.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
    APIBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(settings)
        .build()
}

/// What arrived on one track, across sessions.
#[derive(Debug, Default, Clone)]
struct Received {
    stream_id: String,
    mime: String,
    packets: u64,
    keyframes: u64,
    sessions: u64,
    ssrc: u32,
}

#[derive(Clone)]
struct Mock {
    api: Arc<API>,
    pcs: Arc<Mutex<Vec<Arc<RTCPeerConnection>>>>,
    tracks: Arc<Mutex<HashMap<String, Received>>>,
    deleted: Arc<Mutex<Vec<String>>>,
}

/// Whether an RTP payload starts a VP8 keyframe (RFC 7741 payload descriptor, RFC 6386
/// frame tag).
fn vp8_keyframe_start(payload: &[u8]) -> bool {
    let Some(&first) = payload.first() else {
        return false;
    };
    let start = first & 0x10 != 0 && first & 0x07 == 0;
    let mut i = 1;
    if first & 0x80 != 0 {
        let Some(&ext) = payload.get(1) else {
            return false;
        };
        i = 2;
        if ext & 0x80 != 0 {
            i += if payload.get(i).is_some_and(|b| b & 0x80 != 0) {
                2
            } else {
                1
            };
        }
        if ext & 0x40 != 0 {
            i += 1;
        }
        if ext & 0x30 != 0 {
            i += 1;
        }
    }
    start && payload.get(i).is_some_and(|b| b & 1 == 0)
}

async fn whip(State(mock): State<Mock>, offer: String) -> axum::response::Response {
    let pc = Arc::new(
        mock.api
            .new_peer_connection(RTCConfiguration::default())
            .await
            .expect("pc"),
    );
    let tracks = Arc::clone(&mock.tracks);
    pc.on_track(Box::new(move |track, _, _| {
        let tracks = Arc::clone(&tracks);
        tokio::spawn(async move {
            let id = track.id();
            {
                let mut t = tracks.lock().expect("lock");
                let r = t.entry(id.clone()).or_default();
                r.stream_id = track.stream_id();
                r.mime = track.codec().capability.mime_type;
                r.sessions += 1;
                r.ssrc = track.ssrc();
            }
            while let Ok((packet, _)) = track.read_rtp().await {
                let mut t = tracks.lock().expect("lock");
                let r = t.entry(id.clone()).or_default();
                r.packets += 1;
                if r.mime.eq_ignore_ascii_case("video/VP8") && vp8_keyframe_start(&packet.payload) {
                    r.keyframes += 1;
                }
            }
        });
        Box::pin(async {})
    }));
    pc.set_remote_description(RTCSessionDescription::offer(offer).expect("offer"))
        .await
        .expect("remote");
    let answer = pc.create_answer(None).await.expect("answer");
    let mut gathered = pc.gathering_complete_promise().await;
    pc.set_local_description(answer).await.expect("local");
    let _ = gathered.recv().await;
    let sdp = pc.local_description().await.expect("local description").sdp;
    let n = {
        let mut pcs = mock.pcs.lock().expect("lock");
        pcs.push(pc);
        pcs.len()
    };
    (
        StatusCode::CREATED,
        [
            ("content-type", "application/sdp".to_owned()),
            ("location", format!("/whip/consult-1/session-{n}")),
        ],
        sdp,
    )
        .into_response()
}

async fn remove(State(mock): State<Mock>, uri: axum::http::Uri) -> StatusCode {
    mock.deleted
        .lock()
        .expect("lock")
        .push(uri.path().to_owned());
    StatusCode::OK
}

fn snapshot(mock: &Mock) -> HashMap<String, Received> {
    mock.tracks.lock().expect("lock").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cabin_publishes_its_four_tracks_and_comes_back_after_a_drop() {
    let mock = Mock {
        api: Arc::new(answerer_api()),
        pcs: Arc::default(),
        tracks: Arc::default(),
        deleted: Arc::default(),
    };
    let app = Router::new()
        .route("/whip/{room}", post(whip))
        .route("/whip/{room}/{session}", delete(remove))
        .with_state(mock.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    // A token whose claims name the kiosk (the signature is not checked by this endpoint).
    let claims = base64_url(br#"{"sub":"kiosk-7","room":"consult-1","role":"kiosk"}"#);
    let mut config = DialConfig::new(format!("http://{addr}"), format!("e30.{claims}.sig"));
    config.client.loopback_only = true;
    config.subscribe = false;
    config.devices = None;
    config.media.room_fps = 15;
    config.media.room_kbps = 300;
    config.media.device_fps = 10;
    config.media.device_kbps = 200;
    // The mock answerer is a plain `webrtc` peer, which does not take RID-only simulcast
    // (the real SFU does: tests/e2e/simulcast.rs): one layer per camera here.
    config.media.simulcast = 1;
    config.disconnected_grace = Duration::from_secs(2);
    config.backoff = Backoff {
        initial: Duration::from_millis(200),
        max: Duration::from_secs(1),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let kiosk = tokio::spawn(dial::run(config, async {
        let _ = stop_rx.await;
    }));

    // First session: every track flows.
    let flowing = |mock: &Mock, sessions: u64| {
        let t = snapshot(mock);
        ["room-camera", "device-camera", "microphone", "stethoscope"]
            .iter()
            .all(|id| {
                t.get(*id)
                    .is_some_and(|r| r.sessions >= sessions && r.packets > 20)
            })
    };
    wait_until(Duration::from_secs(20), || flowing(&mock, 1)).await;
    let first = snapshot(&mock);
    for (id, mime) in [
        ("room-camera", "video/VP8"),
        ("device-camera", "video/VP8"),
        ("microphone", "audio/opus"),
        ("stethoscope", "audio/opus"),
    ] {
        let r = &first[id];
        assert_eq!(r.stream_id, "kiosk-7", "{id}");
        assert!(r.mime.eq_ignore_ascii_case(mime), "{id}: {}", r.mime);
    }
    wait_until(Duration::from_secs(10), || {
        let t = snapshot(&mock);
        t["room-camera"].keyframes >= 1 && t["device-camera"].keyframes >= 1
    })
    .await;

    // A PLI gets a keyframe (the periodic one is 3 s away).
    let pc = mock.pcs.lock().expect("lock")[0].clone();
    let before = snapshot(&mock)["room-camera"].keyframes;
    let pli = PictureLossIndication {
        sender_ssrc: 0,
        media_ssrc: snapshot(&mock)["room-camera"].ssrc,
    };
    pc.write_rtcp(&[Box::new(pli)]).await.expect("PLI sent");
    wait_until(Duration::from_secs(1), || {
        snapshot(&mock)["room-camera"].keyframes > before
    })
    .await;

    // The server drops the session: the kiosk notices and publishes again.
    let dropped = pc;
    dropped.close().await.expect("close");
    wait_until(Duration::from_secs(30), || {
        mock.pcs.lock().expect("lock").len() >= 2 && flowing(&mock, 2)
    })
    .await;
    // The new session starts with a keyframe on each camera.
    wait_until(Duration::from_secs(10), || {
        let t = snapshot(&mock);
        t["room-camera"].keyframes >= 2 && t["device-camera"].keyframes >= 2
    })
    .await;

    let _ = stop_tx.send(());
    let stats = tokio::time::timeout(Duration::from_secs(15), kiosk)
        .await
        .expect("stops")
        .expect("no panic")
        .expect("clean stop");
    assert!(stats.publish_sessions >= 2, "{stats:?}");
    assert!(stats.tracks["stethoscope"].frames > 50, "{stats:?}");
    assert!(
        stats.tracks["room-camera"].keyframe_requests >= 1,
        "{stats:?}"
    );
    let deleted = mock.deleted.lock().expect("lock").clone();
    let last = format!(
        "/whip/consult-1/session-{}",
        mock.pcs.lock().expect("lock").len()
    );
    assert!(
        deleted.contains(&last),
        "deleted {deleted:?}, last session {last}"
    );
}

async fn wait_until(limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
        }
    }
    out
}
