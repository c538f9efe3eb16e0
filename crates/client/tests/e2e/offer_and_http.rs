//! Offer contents and HTTP error mapping, without any WebRTC peer on the other side.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use cabine_client::{
    whep_offer, whip_offer, ClientOptions, Codec, Error, Publisher, Subscriber, TrackSpec,
};

fn opts() -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_secs(2),
        ..ClientOptions::loopback()
    }
}

fn kiosk_tracks() -> Vec<TrackSpec> {
    vec![
        TrackSpec::video("kiosk-1", "room-camera", Codec::Vp8),
        TrackSpec::audio("kiosk-1", "microphone"),
        TrackSpec::audio("kiosk-1", "stethoscope"),
    ]
}

/// Splits an SDP into its media sections (each starting with `m=`).
fn media_sections(sdp: &str) -> Vec<String> {
    let mut sections: Vec<String> = Vec::new();
    for line in sdp.lines() {
        if line.starts_with("m=") {
            sections.push(String::new());
        }
        if let Some(s) = sections.last_mut() {
            s.push_str(line);
            s.push('\n');
        }
    }
    sections
}

#[tokio::test]
async fn whip_offer_carries_msid_codecs_and_loopback_candidate() {
    let sdp = whip_offer(kiosk_tracks(), &opts()).await.expect("offer");
    let sections = media_sections(&sdp);
    assert_eq!(sections.len(), 3, "{sdp}");

    let video = &sections[0];
    assert!(video.starts_with("m=video "), "{video}");
    assert!(video.contains("a=msid:kiosk-1 room-camera"), "{video}");
    assert!(video.contains("a=sendonly"), "{video}");
    assert!(video.contains("a=rtpmap:96 VP8/90000"), "{video}");
    assert!(
        !video.contains("H264"),
        "only the track's codec is offered: {video}"
    );
    assert!(video.contains("a=rtcp-fb:96 nack pli"), "{video}");

    for (section, label) in sections[1..].iter().zip(["microphone", "stethoscope"]) {
        assert!(section.starts_with("m=audio "), "{section}");
        assert!(
            section.contains(&format!("a=msid:kiosk-1 {label}")),
            "{section}"
        );
        assert!(section.contains("a=rtpmap:111 opus/48000/2"), "{section}");
        assert!(section.contains("a=sendonly"), "{section}");
    }
    assert!(sdp.contains("a=group:BUNDLE 0 1 2"), "{sdp}");
    assert!(sdp.contains("urn:ietf:params:rtp-hdrext:sdes:mid"), "{sdp}");

    let candidates: Vec<&str> = sdp
        .lines()
        .filter(|l| l.starts_with("a=candidate:"))
        .collect();
    assert!(!candidates.is_empty(), "{sdp}");
    for c in &candidates {
        assert!(c.to_ascii_lowercase().contains(" udp "), "{c}");
        assert!(c.contains(" 127.0.0.1 "), "{c}");
        assert!(!c.contains(".local"), "{c}");
    }
}

#[tokio::test]
async fn whip_offer_announces_simulcast_rids() {
    let tracks = vec![
        TrackSpec::video("kiosk-1", "room-camera", Codec::Vp8).with_simulcast(["q", "h", "f"])
    ];
    let sdp = whip_offer(tracks, &opts()).await.expect("offer");
    assert!(sdp.contains("a=rid:q send"), "{sdp}");
    assert!(sdp.contains("a=rid:h send"), "{sdp}");
    assert!(sdp.contains("a=rid:f send"), "{sdp}");
    assert!(sdp.contains("a=simulcast:send q;h;f"), "{sdp}");
    assert!(
        !sdp.contains("a=ssrc:"),
        "RID-only simulcast, like Chrome: {sdp}"
    );
    assert!(
        sdp.contains("urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"),
        "{sdp}"
    );
}

#[tokio::test]
async fn whep_offer_has_configured_recvonly_transceivers() {
    let sdp = whep_offer(&opts()).await.expect("offer");
    let sections = media_sections(&sdp);
    let kinds: Vec<&str> = sections.iter().map(|s| &s[2..7]).collect();
    assert_eq!(kinds, ["video", "audio", "audio", "audio"], "{sdp}");
    for s in &sections {
        assert!(s.contains("a=recvonly"), "{s}");
    }
    assert!(
        sections[0].contains("VP8/90000") && sections[0].contains("H264/90000"),
        "{sdp}"
    );

    let two_video = ClientOptions {
        recv_video: 2,
        recv_audio: 1,
        ..opts()
    };
    let sdp = whep_offer(&two_video).await.expect("offer");
    assert_eq!(media_sections(&sdp).len(), 3);
}

#[tokio::test]
async fn invalid_specs_are_rejected_before_any_request() {
    let err = Publisher::connect(
        "http://127.0.0.1:9/whip/r",
        "bad\ntoken",
        kiosk_tracks(),
        opts(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::InvalidToken), "{err}");
    let err = Publisher::connect("http://127.0.0.1:9/whip/r", "t", vec![], opts())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidTrack(_)), "{err}");
    let mut bad = TrackSpec::audio("s", "mic");
    bad.codec = Codec::H264;
    let err = Publisher::connect("http://127.0.0.1:9/whip/r", "t", vec![bad], opts())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidTrack(_)), "{err}");
    let err = Publisher::connect("ftp://x/whip/r", "t", kiosk_tracks(), opts())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidUrl { .. }), "{err}");
}

/// What the test server saw of one request: `Authorization`, `Content-Type`, body.
type SeenRequest = (Option<String>, Option<String>, String);

#[derive(Default, Clone)]
struct Seen {
    requests: Arc<Mutex<Vec<SeenRequest>>>,
}

/// Serves `router` on an ephemeral port; returns its base URL.
async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(listener, router).await.expect("serve");
    });
    format!("http://{addr}")
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[tokio::test]
async fn refused_post_maps_to_http_error_with_status_and_body() {
    let seen = Seen::default();
    let recorder = seen.clone();
    let router = Router::new().route(
        "/whip/{room}",
        post(move |headers: HeaderMap, body: String| {
            let recorder = recorder.clone();
            async move {
                recorder.requests.lock().expect("lock").push((
                    header(&headers, "authorization"),
                    header(&headers, "content-type"),
                    body,
                ));
                (
                    StatusCode::UNAUTHORIZED,
                    [("www-authenticate", "Bearer error=\"invalid_token\"")],
                    "token expired",
                )
                    .into_response()
            }
        }),
    );
    let base = serve(router).await;
    let err = Publisher::connect(
        &format!("{base}/whip/room-1"),
        "abc.def.ghi",
        kiosk_tracks(),
        opts(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.http_status(), Some(401), "{err}");
    let http = err.as_http().expect("http error");
    assert_eq!(http.method, "POST");
    assert_eq!(http.body, "token expired");
    assert_eq!(
        http.www_authenticate.as_deref(),
        Some("Bearer error=\"invalid_token\"")
    );
    assert!(http.url.ends_with("/whip/room-1"));

    let requests = seen.requests.lock().expect("lock");
    assert_eq!(requests.len(), 1);
    let (auth, content_type, body) = &requests[0];
    assert_eq!(auth.as_deref(), Some("Bearer abc.def.ghi"));
    assert_eq!(content_type.as_deref(), Some("application/sdp"));
    assert!(body.starts_with("v=0"), "{body}");
    assert!(body.contains("a=msid:kiosk-1 stethoscope"), "{body}");
}

#[tokio::test]
async fn statuses_403_and_400_and_empty_token() {
    let router = Router::new()
        .route(
            "/whep/{room}",
            post(|headers: HeaderMap| async move {
                if headers.get("authorization").is_none() {
                    (StatusCode::UNAUTHORIZED, "missing token").into_response()
                } else {
                    (
                        StatusCode::FORBIDDEN,
                        "role observer may not subscribe here",
                    )
                        .into_response()
                }
            }),
        )
        .route(
            "/whip/{room}",
            post(|| async { (StatusCode::BAD_REQUEST, "bad SDP").into_response() }),
        );
    let base = serve(router).await;

    let err = Subscriber::connect(&format!("{base}/whep/r"), "tok", opts())
        .await
        .unwrap_err();
    assert_eq!(err.http_status(), Some(403), "{err}");
    assert!(err.to_string().contains("403"), "{err}");
    let err = Subscriber::connect(&format!("{base}/whep/r"), "", opts())
        .await
        .unwrap_err();
    assert_eq!(err.http_status(), Some(401), "{err}");
    assert_eq!(
        err.as_http().map(|h| h.body.as_str()),
        Some("missing token")
    );

    let err = Publisher::connect(&format!("{base}/whip/r"), "tok", kiosk_tracks(), opts())
        .await
        .unwrap_err();
    assert_eq!(err.http_status(), Some(400), "{err}");
}

#[tokio::test]
async fn created_without_location_is_a_protocol_error() {
    let router = Router::new().route(
        "/whip/{room}",
        post(|| async {
            (
                StatusCode::CREATED,
                [("content-type", "application/sdp")],
                "v=0\r\n",
            )
                .into_response()
        }),
    );
    let base = serve(router).await;
    let err = Publisher::connect(&format!("{base}/whip/r"), "tok", kiosk_tracks(), opts())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Protocol { reason, .. } if reason.contains("Location")),
        "{err}"
    );
}

#[tokio::test]
async fn connection_refused_is_a_transport_error() {
    // Bind then drop to get a port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let err = Publisher::connect(
        &format!("http://127.0.0.1:{port}/whip/r"),
        "tok",
        kiosk_tracks(),
        opts(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, Error::Transport { method: "POST", .. }),
        "{err}"
    );
}
