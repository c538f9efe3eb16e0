//! Malformed requests get a precise status and message, and never take the server down.

use crate::common::{post_sdp, sdp_offer, start_with};
use cabine_proto::Role;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused_precisely() {
    let s = start_with(|c| c.http.max_body_bytes = 16 * 1024).await;
    let kiosk = s.token("room-x", Role::Kiosk, "kiosk-1");
    let whip = format!("{}/whip/room-x", s.base);

    let (status, _, body) = post_sdp(&whip, Some(&kiosk), "application/sdp", "hello".into()).await;
    assert_eq!(status, 400);
    assert!(body.starts_with("malformed SDP offer"), "{body}");
    assert!(
        !body.contains("PointerOffset"),
        "no parser internals in messages: {body}"
    );

    let (status, _, body) = post_sdp(&whip, Some(&kiosk), "application/sdp", String::new()).await;
    assert_eq!(status, 400);
    assert!(body.contains("empty SDP offer"), "{body}");

    let (status, _, body) =
        post_sdp(&whip, Some(&kiosk), "text/plain", sdp_offer("sendonly")).await;
    assert_eq!(status, 415);
    assert!(body.contains("application/sdp"), "{body}");

    // An offer whose only codec is one the SFU does not forward.
    let pcmu_only = sdp_offer("sendonly")
        .replace("a=rtpmap:111 opus/48000/2", "a=rtpmap:0 PCMU/8000")
        .replace("UDP/TLS/RTP/SAVPF 111", "UDP/TLS/RTP/SAVPF 0")
        .replace("a=fmtp:111 minptime=10;useinbandfec=1\r\n", "")
        .replace("a=rtpmap:96 VP8/90000", "a=rtpmap:96 H265/90000");
    let (status, _, body) = post_sdp(&whip, Some(&kiosk), "application/sdp", pcmu_only).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("no usable media"), "{body}");

    let huge = format!(
        "{}{}",
        sdp_offer("sendonly"),
        "a=x:".to_owned() + &"y".repeat(32 * 1024)
    );
    let (status, _, _) = post_sdp(&whip, Some(&kiosk), "application/sdp", huge).await;
    assert_eq!(status, 413);

    let (status, _, body) = post_sdp(
        &format!("{}/whip/bad%2Froom", s.base),
        Some(&kiosk),
        "application/sdp",
        sdp_offer("sendonly"),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("bad room name"), "{body}");

    // PATCH with a wrong ETag: 412; unknown session: 404; trickle: 204.
    let (status, headers, _) = post_sdp(
        &whip,
        Some(&kiosk),
        "application/sdp",
        sdp_offer("sendonly"),
    )
    .await;
    assert_eq!(status, 201);
    let url = format!("{}{}", s.base, headers["location"].to_str().unwrap());
    let client = reqwest::Client::new();
    let frag = "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\n";
    let r = client
        .patch(&url)
        .bearer_auth(&kiosk)
        .header("content-type", "application/trickle-ice-sdpfrag")
        .header("if-match", "\"nope\"")
        .body(frag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 412);
    let r = client
        .patch(&url)
        .bearer_auth(&kiosk)
        .header("content-type", "application/trickle-ice-sdpfrag")
        .body(frag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    // ICE restart: new client credentials get new server credentials and a new ETag.
    let restart = "a=ice-ufrag:wxyz\r\na=ice-pwd:zyxwvutsrqponmlkjihgfedcba\r\n";
    let r = client
        .patch(&url)
        .bearer_auth(&kiosk)
        .header("content-type", "application/trickle-ice-sdpfrag")
        .body(restart)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    assert_ne!(etag, headers["etag"].to_str().unwrap());
    let body = r.text().await.unwrap();
    assert!(
        body.contains("a=ice-ufrag:") && body.contains("a=ice-pwd:"),
        "{body}"
    );
    let r = client
        .patch(format!("{}/whip/room-x/0000000000000001", s.base))
        .bearer_auth(&kiosk)
        .header("content-type", "application/trickle-ice-sdpfrag")
        .body(frag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);

    // Still healthy.
    let r = client
        .get(format!("{}/healthz", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let rooms = s.rooms().await;
    assert!(
        rooms["refused"]["bad_sdp"].as_u64().unwrap() >= 1,
        "{rooms}"
    );
    assert!(
        rooms["refused"]["no_usable_codec"].as_u64().unwrap() >= 1,
        "{rooms}"
    );
    s.server
        .shutdown(std::time::Duration::from_millis(100))
        .await;
}
