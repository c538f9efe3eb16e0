//! End-to-end over loopback against a tiny WHIP/WHEP endpoint whose media side is `webrtc`
//! itself (an answerer, not the Cabine server): checks that media really flows, that payload
//! bytes arrive unchanged and in order, that msid labels survive, and that simulcast layers
//! are sent with their RIDs.

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
use cabine_client::{ClientOptions, Codec, MediaKind, Publisher, Subscriber, TrackSpec};
use tokio::sync::mpsc;
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::{MediaEngine, MIME_TYPE_OPUS};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::{APIBuilder, API};
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice::network_type::NetworkType;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpHeaderExtensionCapability, RTPCodecType,
};
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_local::{TrackLocal, TrackLocalWriter};
use webrtc::track::track_remote::TrackRemote;

const T: Duration = Duration::from_secs(10);

/// The answerer's API. `with_mid` registers the mid and rid header extensions, needed to
/// receive simulcast; without them the answerer relies on the offer's `a=ssrc` lines, which
/// avoids webrtc-rs dropping the first packets of declared streams (see `engine.rs`).
fn answerer_api(with_mid: bool) -> API {
    let mut media = MediaEngine::default();
    media.register_default_codecs().expect("codecs");
    let extensions: &[(&str, &[RTPCodecType])] = if with_mid {
        &[
            (
                webrtc::sdp::extmap::SDES_MID_URI,
                &[RTPCodecType::Audio, RTPCodecType::Video],
            ),
            (
                webrtc::sdp::extmap::SDES_RTP_STREAM_ID_URI,
                &[RTPCodecType::Video],
            ),
        ]
    } else {
        &[]
    };
    for (uri, kinds) in extensions {
        for kind in *kinds {
            media
                .register_header_extension(
                    RTCRtpHeaderExtensionCapability {
                        uri: (*uri).to_owned(),
                    },
                    *kind,
                    None,
                )
                .expect("extension");
        }
    }
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

async fn answer(pc: &RTCPeerConnection, offer: String) -> String {
    pc.set_remote_description(RTCSessionDescription::offer(offer).expect("offer"))
        .await
        .expect("remote");
    let answer = pc.create_answer(None).await.expect("answer");
    let mut gathered = pc.gathering_complete_promise().await;
    pc.set_local_description(answer).await.expect("local");
    let _ = gathered.recv().await;
    pc.local_description().await.expect("local description").sdp
}

#[derive(Clone)]
struct Mock {
    api: Arc<API>,
    simulcast_api: Arc<API>,
    pcs: Arc<Mutex<Vec<Arc<RTCPeerConnection>>>>,
    received: mpsc::UnboundedSender<Arc<TrackRemote>>,
    deleted: Arc<Mutex<Vec<String>>>,
}

fn created(location: &str, answer: String) -> axum::response::Response {
    (
        StatusCode::CREATED,
        [
            ("content-type", "application/sdp"),
            ("location", location),
            ("etag", "\"v1\""),
        ],
        answer,
    )
        .into_response()
}

async fn whip(State(mock): State<Mock>, offer: String) -> axum::response::Response {
    let api = if offer.contains("a=simulcast") {
        &mock.simulcast_api
    } else {
        &mock.api
    };
    let pc = Arc::new(
        api.new_peer_connection(RTCConfiguration::default())
            .await
            .expect("pc"),
    );
    let tx = mock.received.clone();
    pc.on_track(Box::new(move |track, _, _| {
        let _ = tx.send(track);
        Box::pin(async {})
    }));
    let sdp = answer(&pc, offer).await;
    mock.pcs.lock().expect("lock").push(pc);
    created("/whip/room-1/session-1", sdp)
}

/// Answers a WHEP offer with one Opus track labelled `kiosk-1 stethoscope`, fed with packets
/// whose payload is `[seq as u8; 8]` once connected.
async fn whep(State(mock): State<Mock>, offer: String) -> axum::response::Response {
    let pc = Arc::new(
        mock.api
            .new_peer_connection(RTCConfiguration::default())
            .await
            .expect("pc"),
    );
    let track = Arc::new(TrackLocalStaticRTP::new(
        RTCRtpCodecCapability {
            mime_type: MIME_TYPE_OPUS.to_owned(),
            clock_rate: 48000,
            channels: 2,
            ..Default::default()
        },
        "stethoscope".to_owned(),
        "kiosk-1".to_owned(),
    ));
    pc.add_track(Arc::clone(&track) as Arc<dyn TrackLocal + Send + Sync>)
        .await
        .expect("add track");
    let (state_tx, mut state_rx) = tokio::sync::watch::channel(RTCPeerConnectionState::New);
    pc.on_peer_connection_state_change(Box::new(move |s| {
        let _ = state_tx.send(s);
        Box::pin(async {})
    }));
    let sdp = answer(&pc, offer).await;
    tokio::spawn(async move {
        if state_rx
            .wait_for(|s| *s == RTCPeerConnectionState::Connected)
            .await
            .is_err()
        {
            return;
        }
        let mut seq = 0u16;
        while seq < 500 {
            let packet = webrtc::rtp::packet::Packet {
                header: webrtc::rtp::header::Header {
                    version: 2,
                    sequence_number: seq,
                    timestamp: u32::from(seq) * 960,
                    ..Default::default()
                },
                payload: vec![seq as u8; 8].into(),
            };
            match track.write_rtp(&packet).await {
                Err(_) => return,
                // Not sent (SRTP not ready yet): send the same packet again.
                Ok(0) => {}
                Ok(_) => seq += 1,
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    mock.pcs.lock().expect("lock").push(pc);
    created("/whep/room-1/session-2", sdp)
}

async fn remove(State(mock): State<Mock>, uri: axum::http::Uri) -> StatusCode {
    mock.deleted
        .lock()
        .expect("lock")
        .push(uri.path().to_owned());
    StatusCode::NO_CONTENT
}

async fn start_mock() -> (String, Mock, mpsc::UnboundedReceiver<Arc<TrackRemote>>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mock = Mock {
        api: Arc::new(answerer_api(false)),
        simulcast_api: Arc::new(answerer_api(true)),
        pcs: Arc::default(),
        received: tx,
        deleted: Arc::default(),
    };
    let router = Router::new()
        .route("/whip/{room}", post(whip))
        .route("/whep/{room}", post(whep))
        .route("/whip/{room}/{session}", delete(remove))
        .route("/whep/{room}/{session}", delete(remove))
        .with_state(mock.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await.expect("serve") });
    (format!("http://{addr}"), mock, rx)
}

/// Waits until the mock's latest peer connection has receive tracks for `n` RIDs.
async fn answerer_knows_rids(mock: &Mock, n: usize) {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let pc = mock.pcs.lock().expect("lock").last().cloned();
        let mut rids = 0;
        if let Some(pc) = pc {
            for transceiver in pc.get_transceivers().await {
                for track in transceiver.receiver().await.tracks().await {
                    rids += usize::from(!track.rid().is_empty());
                }
            }
        }
        if rids >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the answerer knows {rids} of {n} RIDs"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Receives tracks on the mock until `n` arrived; keyed by `track id` plus RID.
async fn received_tracks(
    rx: &mut mpsc::UnboundedReceiver<Arc<TrackRemote>>,
    n: usize,
) -> HashMap<String, Arc<TrackRemote>> {
    let mut out = HashMap::new();
    while out.len() < n {
        let t = tokio::time::timeout(T, rx.recv())
            .await
            .expect("track in time")
            .expect("channel open");
        let key = if t.rid().is_empty() {
            t.id()
        } else {
            format!("{}/{}", t.id(), t.rid())
        };
        out.insert(key, t);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_payloads_arrive_unchanged_and_in_order() {
    let (base, mock, mut rx) = start_mock().await;
    let publisher = Publisher::connect(
        &format!("{base}/whip/room-1"),
        "tok",
        vec![
            TrackSpec::video("kiosk-1", "room-camera", Codec::Vp8),
            TrackSpec::audio("kiosk-1", "stethoscope"),
        ],
        ClientOptions::loopback(),
    )
    .await
    .expect("connect");
    assert_eq!(
        publisher.resource_url(),
        format!("{base}/whip/room-1/session-1")
    );
    assert_eq!(publisher.etag(), Some("\"v1\""));
    assert_eq!(
        publisher.connection_state(),
        RTCPeerConnectionState::Connected
    );
    assert_eq!(publisher.track(0).and_then(|t| t.mid()), Some("0"));

    let video = publisher.track_by_id("room-camera").expect("video");
    let audio = publisher.track_by_id("stethoscope").expect("audio");
    // The answerer (webrtc-rs) may drop the first packets of a stream, received before its
    // receiver is running: warm up until it announced both tracks, then compare exactly.
    let tracks = {
        let warm_up = async {
            loop {
                video.write_rtp(&[0xEE], true, 3000).await.expect("write");
                audio.write_rtp(&[0xEE], false, 960).await.expect("write");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::select! {
            tracks = received_tracks(&mut rx, 2) => tracks,
            _ = warm_up => unreachable!(),
        }
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cam = &tracks["room-camera"];
    let steth = &tracks["stethoscope"];
    let skip_warm_up = |track: Arc<TrackRemote>| async move {
        loop {
            let (p, _) = tokio::time::timeout(T, track.read_rtp())
                .await
                .expect("in time")
                .expect("read");
            if p.payload[..] != [0xEE] {
                return p;
            }
        }
    };
    let mut sent_video = Vec::new();
    let mut sent_audio = Vec::new();
    for i in 0..30u8 {
        let v = video
            .write_rtp(
                &[0x10, i, 0xAA, i],
                i % 3 == 2,
                if i % 3 == 0 { 3000 } else { 0 },
            )
            .await
            .expect("write");
        assert!(v.bytes > 0, "video packet not sent: {v:?}");
        sent_video.push(v);
        sent_audio.push(
            audio
                .write_rtp(&[0xF0, i, i, i, i], false, 960)
                .await
                .expect("write"),
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        sent_audio[1].sequence_number,
        sent_audio[0].sequence_number.wrapping_add(1)
    );
    assert_eq!(
        sent_audio[1].timestamp,
        sent_audio[0].timestamp.wrapping_add(960)
    );

    assert_eq!(cam.stream_id(), "kiosk-1");
    assert_eq!(cam.codec().capability.mime_type, "video/VP8");
    assert_eq!(cam.ssrc(), video.layers()[0].ssrc());
    assert_eq!(steth.stream_id(), "kiosk-1");
    assert_eq!(steth.codec().capability.mime_type, "audio/opus");

    let first_video = skip_warm_up(Arc::clone(cam)).await;
    let first_audio = skip_warm_up(Arc::clone(steth)).await;
    for (i, sent) in sent_video.iter().enumerate() {
        let p = if i == 0 {
            first_video.clone()
        } else {
            tokio::time::timeout(T, cam.read_rtp())
                .await
                .expect("in time")
                .expect("read")
                .0
        };
        let i = i as u8;
        assert_eq!(&p.payload[..], &[0x10, i, 0xAA, i]);
        assert_eq!(p.header.sequence_number, sent.sequence_number);
        assert_eq!(p.header.timestamp, sent.timestamp);
        assert_eq!(p.header.marker, i % 3 == 2);
    }
    for (i, sent) in sent_audio.iter().enumerate() {
        let p = if i == 0 {
            first_audio.clone()
        } else {
            tokio::time::timeout(T, steth.read_rtp())
                .await
                .expect("in time")
                .expect("read")
                .0
        };
        let i = i as u8;
        assert_eq!(&p.payload[..], &[0xF0, i, i, i, i]);
        assert_eq!(p.header.sequence_number, sent.sequence_number);
    }

    // Samples are packetized: a 3000-byte VP8 frame needs three packets, marker on the last.
    let sent = video
        .write_sample(&[0x55; 3000], Duration::from_millis(33))
        .await
        .expect("sample");
    assert_eq!(sent.len(), 3);
    assert!(sent.iter().all(|s| s.timestamp == sent[0].timestamp));
    let mut total = 0;
    for (k, s) in sent.iter().enumerate() {
        let (p, _) = tokio::time::timeout(T, cam.read_rtp())
            .await
            .expect("in time")
            .expect("read");
        assert_eq!(p.header.sequence_number, s.sequence_number);
        assert_eq!(p.header.marker, k == 2);
        total += p.payload.len();
    }
    assert!(total > 3000, "VP8 payload descriptors add bytes");

    publisher.close().await.expect("close");
    assert_eq!(
        mock.deleted.lock().expect("lock").as_slice(),
        ["/whip/room-1/session-1"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulcast_layers_are_sent_with_their_rids() {
    let (base, mock, mut rx) = start_mock().await;
    let publisher =
        Publisher::connect(
            &format!("{base}/whip/room-1"),
            "tok",
            vec![TrackSpec::video("kiosk-1", "room-camera", Codec::Vp8)
                .with_simulcast(["q", "h", "f"])],
            ClientOptions::loopback(),
        )
        .await
        .expect("connect");
    let track = publisher.track(0).expect("track");
    assert!(track.layer("x").is_err());
    // webrtc-rs drops a simulcast SSRC for good if its first packets arrive before the
    // answerer has created its per-RID receive tracks (it does so only after DTLS connects), so
    // send only once the mock is ready to tell the three layers apart.
    answerer_knows_rids(&mock, 3).await;
    // Send like a camera does, continuously, until the answerer has identified the three
    // layers (webrtc-rs probes unknown SSRCs and may drop packets while doing so).
    let send = async {
        for round in 0u32.. {
            for (n, rid) in ["q", "h", "f"].into_iter().enumerate() {
                let sent = track
                    .layer(rid)
                    .expect("layer")
                    .write_rtp(&[n as u8, round as u8], true, 3000)
                    .await
                    .expect("write");
                assert!(sent.bytes > 0);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let tracks = tokio::select! {
        tracks = received_tracks(&mut rx, 3) => tracks,
        _ = send => unreachable!("the sender never stops"),
    };
    for (n, rid) in ["q", "h", "f"].into_iter().enumerate() {
        let t = &tracks[&format!("room-camera/{rid}")];
        assert_eq!(t.ssrc(), track.layer(rid).expect("layer").ssrc());
        let (p, _) = tokio::time::timeout(T, t.read_rtp())
            .await
            .expect("in time")
            .expect("read");
        assert_eq!(p.payload[0], n as u8, "layer {rid} carries its own packets");
    }
    publisher.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_gets_labelled_track_and_packets() {
    let (base, mock, _rx) = start_mock().await;
    let subscriber = Subscriber::connect(
        &format!("{base}/whep/room-1"),
        "tok",
        ClientOptions::loopback(),
    )
    .await
    .expect("connect");
    assert!(subscriber.offer_sdp().contains("a=recvonly"));
    assert!(subscriber
        .answer_sdp()
        .contains("a=msid:kiosk-1 stethoscope"));
    let track = subscriber.next_track(T).await.expect("track");
    assert_eq!(track.stream_id(), "kiosk-1");
    assert_eq!(track.id(), "stethoscope");
    assert_eq!(track.kind(), MediaKind::Audio);
    assert_eq!(track.codec(), Some(Codec::Opus));
    assert!(track.mid().is_some());

    // No packet lost at start-up (the subscriber does not negotiate mid, see engine.rs), none
    // reordered, payloads intact.
    let mut expected = 0u16;
    let first = track.read_rtp_timeout(T).await.expect("packet");
    assert_eq!(first.header.sequence_number, 0);
    assert_eq!(&first.payload[..], &[0u8; 8]);
    for _ in 0..20 {
        let p = track.read_rtp_timeout(T).await.expect("packet");
        expected = expected.wrapping_add(1);
        assert_eq!(p.header.sequence_number, expected);
        assert_eq!(&p.payload[..], &[expected as u8; 8]);
    }
    // A timed-out read loses nothing. A 1 µs read may still find a queued packet (the mock
    // keeps sending): such a packet must be the next one, and reads go on until one really
    // times out.
    let mut timeouts = 0;
    while timeouts == 0 {
        match track.read_rtp_timeout(Duration::from_micros(1)).await {
            Ok(p) => {
                expected = expected.wrapping_add(1);
                assert_eq!(p.header.sequence_number, expected);
            }
            Err(cabine_client::Error::Timeout { .. }) => timeouts += 1,
            Err(e) => panic!("read failed: {e}"),
        }
    }
    let p = track.read_rtp_timeout(T).await.expect("packet");
    assert_eq!(p.header.sequence_number, expected.wrapping_add(1));
    track.request_keyframe().await.expect("pli");

    assert!(matches!(
        subscriber.next_track(Duration::from_millis(50)).await,
        Err(cabine_client::Error::Timeout { .. })
    ));
    subscriber.close().await.expect("close");
    assert_eq!(
        mock.deleted.lock().expect("lock").as_slice(),
        ["/whep/room-1/session-2"]
    );
}
