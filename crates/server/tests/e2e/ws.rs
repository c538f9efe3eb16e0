//! WebSocket signalling end to end on 127.0.0.1: a real WebSocket (tokio-tungstenite) and real
//! WebRTC (the `webrtc` crate for the doctor, `cabine_client` for the kiosk over WHIP/WHEP).
//!
//! The doctor joins over the WebSocket and receives the kiosk's camera and stethoscope on the
//! server's first offer, with the telemetry channels; the kiosk switches a device camera on
//! mid-consultation and the server renegotiates; the doctor publishes a camera on the same
//! WebSocket and the kiosk receives it over WHEP; the doctor's WebSocket is cut, a microphone is
//! published meanwhile, and a new socket resumes the session: the backlog brings the microphone's
//! offer and media keeps flowing on the same peer connection. Refusals follow the WHIP rules.

use crate::common;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cabine_client::{ClientOptions, Codec, MediaKind, Publisher, Subscriber, TrackSpec};
use cabine_proto::signal::{self, ClientMsg, ServerMsg};
use cabine_proto::Role;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::MediaEngine;
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::APIBuilder;
use webrtc::ice::network_type::NetworkType;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtp_transceiver::rtp_codec::RTCRtpCodecCapability;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_local::{TrackLocal, TrackLocalWriter};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Packets received per msid track label.
type Counts = Arc<Mutex<HashMap<String, usize>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn signalling_renegotiates_and_resumes() {
    let s = common::start().await;
    let room = "consult-ws";
    let whip = format!("{}/whip/{room}", s.base);
    let ws_url = format!(
        "{}/ws/{room}?token={}",
        s.base.replace("http://", "ws://"),
        s.token(room, Role::Doctor, "dr-1")
    );

    // The kiosk publishes its room camera and stethoscope over WHIP and keeps sending.
    let kiosk = Publisher::connect(
        &whip,
        &s.token(room, Role::Kiosk, "kiosk-1"),
        vec![
            TrackSpec::video("kiosk-1", "room-camera", Codec::Vp8),
            TrackSpec::audio("kiosk-1", "stethoscope"),
        ],
        ClientOptions::loopback(),
    )
    .await
    .expect("kiosk publishes");
    let kiosk = Arc::new(kiosk);
    spawn_sender(Arc::clone(&kiosk));

    // The doctor joins over the WebSocket.
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url)
        .await
        .expect("websocket opens");
    send(
        &mut ws,
        &ClientMsg::Join {
            subscribe: true,
            from: None,
        },
    )
    .await;
    let ServerMsg::Welcome {
        resume, resumed, ..
    } = recv_until(&mut ws, |m| matches!(m, ServerMsg::Welcome { .. })).await
    else {
        unreachable!()
    };
    assert!(!resumed);
    let counts: Counts = Arc::default();
    let pc = peer_connection(Arc::clone(&counts)).await;
    let mut seen = Vec::new();
    // Telemetry announcement, two track_added, then the offer.
    let offer = answer_next_offer(&mut ws, &pc, &mut seen).await;
    assert_eq!(offer, 1);
    assert!(
        seen.iter().any(|m| matches!(m, ServerMsg::Telemetry { label, channels } if label == "telemetry" && channels.len() == 2)),
        "{seen:?}"
    );
    let labels = added_labels(&seen);
    assert_eq!(labels, vec!["room-camera", "stethoscope"], "{seen:?}");
    wait_for_packets(&counts, "room-camera", 20).await;
    wait_for_packets(&counts, "stethoscope", 20).await;

    // Mid-consultation the kiosk switches the otoscope on: a second WHIP session. The server
    // renegotiates the doctor's subscribe connection.
    let otoscope = Arc::new(
        Publisher::connect(
            &whip,
            &s.token(room, Role::Kiosk, "kiosk-1"),
            vec![TrackSpec::video("kiosk-1", "device-camera", Codec::Vp8)],
            ClientOptions::loopback(),
        )
        .await
        .expect("device camera published"),
    );
    spawn_sender(Arc::clone(&otoscope));
    seen.clear();
    let offer = answer_next_offer(&mut ws, &pc, &mut seen).await;
    assert_eq!(offer, 2);
    assert_eq!(added_labels(&seen), vec!["device-camera"], "{seen:?}");
    let added = seen
        .iter()
        .find_map(|m| match m {
            ServerMsg::TrackAdded(t) => Some(t.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(added.class, "device-camera");
    assert_eq!(added.from, "kiosk-1");
    wait_for_packets(&counts, "device-camera", 20).await;

    // The doctor publishes a camera on the same signalling session; the kiosk receives it.
    let (doc_pc, doc_track) = publishing_peer_connection().await;
    let offer = doc_pc.create_offer(None).await.unwrap();
    let mut gathered = doc_pc.gathering_complete_promise().await;
    doc_pc.set_local_description(offer).await.unwrap();
    let _ = gathered.recv().await;
    let sdp = doc_pc.local_description().await.unwrap().sdp;
    send(&mut ws, &ClientMsg::Publish { sdp }).await;
    let ServerMsg::Answer { sdp, tracks } =
        recv_until(&mut ws, |m| matches!(m, ServerMsg::Answer { .. })).await
    else {
        unreachable!()
    };
    assert_eq!(tracks.len(), 1);
    assert_eq!(tracks[0].label, "doctor-camera");
    doc_pc
        .set_remote_description(RTCSessionDescription::answer(sdp).unwrap())
        .await
        .unwrap();
    let doc_sender = tokio::spawn(async move {
        for i in 0u32..3000 {
            let pkt = rtp_packet(96, i, vp8_payload(i));
            let _ = doc_track.write_rtp(&pkt).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let kiosk_view = Subscriber::connect(
        &format!("{}/whep/{room}?from=dr-1", s.base),
        &s.token(room, Role::Kiosk, "kiosk-1"),
        ClientOptions {
            recv_video: 1,
            recv_audio: 0,
            ..ClientOptions::loopback()
        },
    )
    .await
    .expect("kiosk subscribes to the doctor");
    let doctor_video = kiosk_view
        .next_track(Duration::from_secs(10))
        .await
        .expect("doctor's track");
    assert_eq!(doctor_video.id(), "doctor-camera");
    doctor_video
        .read_rtp_timeout(Duration::from_secs(5))
        .await
        .expect("the kiosk receives the doctor's video");

    // The doctor's WebSocket is cut (Wi-Fi blip). Media keeps flowing meanwhile.
    drop(ws);
    let before = count(&counts, "room-camera");
    // Media flows while signalling is down.
    wait_for_packets(&counts, "room-camera", before + 11).await;
    // A microphone is published while the doctor is away: its offer waits in the backlog.
    let mic = Arc::new(
        Publisher::connect(
            &whip,
            &s.token(room, Role::Kiosk, "kiosk-1"),
            vec![TrackSpec::audio("kiosk-1", "microphone")],
            ClientOptions::loopback(),
        )
        .await
        .expect("microphone published"),
    );
    spawn_sender(Arc::clone(&mic));
    // The room has the microphone (and so has offered it to the doctor's backlog).
    s.rooms_until("microphone published", Duration::from_secs(10), |v| {
        v["rooms"].to_string().contains("\"microphone\"")
    })
    .await;

    // A new socket resumes the session.
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url)
        .await
        .expect("websocket reopens");
    send(
        &mut ws,
        &ClientMsg::Resume {
            resume: resume.clone(),
        },
    )
    .await;
    let ServerMsg::Welcome { resumed, .. } =
        recv_until(&mut ws, |m| matches!(m, ServerMsg::Welcome { .. })).await
    else {
        unreachable!()
    };
    assert!(resumed);
    seen.clear();
    let offer = answer_next_offer(&mut ws, &pc, &mut seen).await;
    assert_eq!(offer, 3);
    assert_eq!(added_labels(&seen), vec!["microphone"], "{seen:?}");
    wait_for_packets(&counts, "microphone", 20).await;

    // ICE restart on request: a new offer with new server credentials; media goes on.
    send(&mut ws, &ClientMsg::RestartIce).await;
    seen.clear();
    let offer = answer_next_offer(&mut ws, &pc, &mut seen).await;
    assert_eq!(offer, 4);
    let before = count(&counts, "room-camera");
    wait_for_packets(&counts, "room-camera", before + 20).await;

    // A wrong resume token and a role without publish are refused precisely.
    let (mut other, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    send(
        &mut other,
        &ClientMsg::Resume {
            resume: "not-a-session".into(),
        },
    )
    .await;
    let ServerMsg::Error { code, fatal, .. } =
        recv_until(&mut other, |m| matches!(m, ServerMsg::Error { .. })).await
    else {
        unreachable!()
    };
    assert_eq!(code, "unknown_session");
    assert!(fatal);
    let observer_url = format!(
        "{}/ws/{room}?token={}",
        s.base.replace("http://", "ws://"),
        s.token(room, Role::Observer, "obs-1")
    );
    let (mut obs, _) = tokio_tungstenite::connect_async(&observer_url)
        .await
        .unwrap();
    send(
        &mut obs,
        &ClientMsg::Join {
            subscribe: false,
            from: None,
        },
    )
    .await;
    recv_until(&mut obs, |m| matches!(m, ServerMsg::Welcome { .. })).await;
    send(
        &mut obs,
        &ClientMsg::Publish {
            sdp: "v=0\r\n".into(),
        },
    )
    .await;
    let ServerMsg::Error { code, .. } =
        recv_until(&mut obs, |m| matches!(m, ServerMsg::Error { .. })).await
    else {
        unreachable!()
    };
    assert_eq!(code, "forbidden");
    // Without a token the upgrade itself is refused with 401.
    let bad = tokio_tungstenite::connect_async(format!(
        "{}/ws/{room}",
        s.base.replace("http://", "ws://")
    ))
    .await;
    match bad {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }

    // Leaving ends both media sessions of the doctor.
    send(&mut ws, &ClientMsg::Leave).await;
    let mut left = false;
    for _ in 0..50 {
        let rooms = s.rooms().await;
        let sessions = rooms["rooms"][0]["sessions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !sessions.iter().any(|x| x["identity"] == "dr-1") {
            left = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(left, "the doctor's sessions ended on leave");
    doc_sender.abort();
    let _ = pc.close().await;
    let _ = doc_pc.close().await;
    s.server.shutdown(Duration::from_millis(200)).await;
}

fn spawn_sender(p: Arc<Publisher>) {
    tokio::spawn(async move {
        for i in 0..5000usize {
            for (t, track) in p.tracks().iter().enumerate() {
                let video = track.kind() == MediaKind::Video;
                let payload = if video {
                    vp8_payload(i as u32)
                } else {
                    common::payload(t + 1, i)
                };
                if track
                    .write_rtp(&payload, true, if video { 1800 } else { 960 })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

/// A VP8 payload: a keyframe every 25 packets (so a late subscriber starts quickly).
fn vp8_payload(i: u32) -> Vec<u8> {
    let mut p = vec![0x10, if i.is_multiple_of(25) { 0x00 } else { 0x01 }];
    p.extend_from_slice(&i.to_be_bytes());
    p.extend(std::iter::repeat_n(0x42, 60));
    p
}

fn rtp_packet(pt: u8, i: u32, payload: Vec<u8>) -> webrtc::rtp::packet::Packet {
    webrtc::rtp::packet::Packet {
        header: webrtc::rtp::header::Header {
            version: 2,
            marker: true,
            payload_type: pt,
            sequence_number: i as u16,
            timestamp: i.wrapping_mul(1800),
            ..Default::default()
        },
        payload: payload.into(),
    }
}

async fn api() -> webrtc::api::API {
    let mut m = MediaEngine::default();
    m.register_default_codecs().unwrap();
    let registry = register_default_interceptors(Registry::new(), &mut m).unwrap();
    let mut settings = SettingEngine::default();
    settings.set_include_loopback_candidate(true);
    settings.set_network_types(vec![NetworkType::Udp4]);
    settings.set_ip_filter(Box::new(|ip: IpAddr| ip.is_loopback()));
    APIBuilder::new()
        .with_media_engine(m)
        .with_interceptor_registry(registry)
        .with_setting_engine(settings)
        .build()
}

/// The doctor's subscribe connection: counts packets per track label.
async fn peer_connection(counts: Counts) -> Arc<RTCPeerConnection> {
    let pc = Arc::new(
        api()
            .await
            .new_peer_connection(RTCConfiguration::default())
            .await
            .unwrap(),
    );
    pc.on_track(Box::new(move |track, _, _| {
        let counts = Arc::clone(&counts);
        Box::pin(async move {
            tokio::spawn(async move {
                let label = track.id();
                while track.read_rtp().await.is_ok() {
                    *counts.lock().unwrap().entry(label.clone()).or_default() += 1;
                }
            });
        })
    }));
    pc
}

async fn publishing_peer_connection() -> (Arc<RTCPeerConnection>, Arc<TrackLocalStaticRTP>) {
    let pc = Arc::new(
        api()
            .await
            .new_peer_connection(RTCConfiguration::default())
            .await
            .unwrap(),
    );
    let track = Arc::new(TrackLocalStaticRTP::new(
        RTCRtpCodecCapability {
            mime_type: "video/VP8".into(),
            clock_rate: 90_000,
            ..Default::default()
        },
        "doctor-camera".into(),
        "dr-1".into(),
    ));
    pc.add_track(Arc::clone(&track) as Arc<dyn TrackLocal + Send + Sync>)
        .await
        .unwrap();
    (pc, track)
}

/// Reads messages until an offer, answers it on `pc`, returns its id; what came before it is
/// pushed to `seen`.
async fn answer_next_offer(ws: &mut Ws, pc: &RTCPeerConnection, seen: &mut Vec<ServerMsg>) -> u64 {
    loop {
        let m = recv(ws).await;
        if let ServerMsg::Offer { offer_id, sdp } = m {
            pc.set_remote_description(RTCSessionDescription::offer(sdp).unwrap())
                .await
                .expect("offer applies");
            let answer = pc.create_answer(None).await.expect("answer");
            pc.set_local_description(answer).await.unwrap();
            let sdp = pc.local_description().await.unwrap().sdp;
            send(ws, &ClientMsg::Answer { offer_id, sdp }).await;
            return offer_id;
        }
        if let ServerMsg::Error { message, .. } = &m {
            panic!("server error: {message}");
        }
        seen.push(m);
    }
}

fn added_labels(seen: &[ServerMsg]) -> Vec<String> {
    seen.iter()
        .filter_map(|m| match m {
            ServerMsg::TrackAdded(t) => Some(t.label.clone()),
            _ => None,
        })
        .collect()
}

fn count(counts: &Counts, label: &str) -> usize {
    counts.lock().unwrap().get(label).copied().unwrap_or(0)
}

async fn wait_for_packets(counts: &Counts, label: &str, n: usize) {
    for _ in 0..150 {
        if count(counts, label) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{label}: {} packets after 15 s (all: {:?})",
        count(counts, label),
        counts.lock().unwrap()
    );
}

async fn send(ws: &mut Ws, msg: &ClientMsg) {
    ws.send(Message::Text(signal::to_text(msg).into()))
        .await
        .expect("websocket send");
}

async fn recv(ws: &mut Ws) -> ServerMsg {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(15), ws.next())
            .await
            .expect("a message within 15 s")
            .expect("socket open")
            .expect("socket ok");
        if let Message::Text(t) = m {
            return signal::parse_server(&t).expect("valid server message");
        }
    }
}

async fn recv_until(ws: &mut Ws, want: impl Fn(&ServerMsg) -> bool) -> ServerMsg {
    loop {
        let m = recv(ws).await;
        if want(&m) {
            return m;
        }
    }
}
