//! Every endpoint checks the token: each kind of bad token gets its own status and a message
//! that names the problem.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::common::{post_sdp, sdp_offer, start};
use cabine_proto::Role;
use jsonwebtoken::{encode, EncodingKey, Header};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_checks_on_whip_whep_and_api() {
    let s = start().await;
    let whip = format!("{}/whip/room-a", s.base);
    let whep = format!("{}/whep/room-a", s.base);
    let offer = sdp_offer("sendonly");

    // A good kiosk token publishes.
    let kiosk = s.token("room-a", Role::Kiosk, "kiosk-1");
    let (status, headers, body) =
        post_sdp(&whip, Some(&kiosk), "application/sdp", offer.clone()).await;
    assert_eq!(status, 201, "{body}");
    let location = headers["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with("/whip/room-a/"), "{location}");
    assert!(headers.contains_key("etag"));
    assert!(body.starts_with("v=0"));

    // Missing header: 401.
    let (status, _, body) = post_sdp(&whip, None, "application/sdp", offer.clone()).await;
    assert_eq!(status, 401);
    assert!(body.contains("missing token"), "{body}");

    // Wrong room: 403.
    let other = s.token("room-b", Role::Kiosk, "kiosk-1");
    let (status, _, body) = post_sdp(&whip, Some(&other), "application/sdp", offer.clone()).await;
    assert_eq!(status, 403);
    assert!(body.contains("room-b") && body.contains("room-a"), "{body}");

    // Wrong role: an observer may not publish (403) but may subscribe.
    let observer = s.token("room-a", Role::Observer, "obs-1");
    let (status, _, body) =
        post_sdp(&whip, Some(&observer), "application/sdp", offer.clone()).await;
    assert_eq!(status, 403);
    assert!(body.contains("observer may not publish"), "{body}");
    let (status, _, body) = post_sdp(
        &whep,
        Some(&observer),
        "application/sdp",
        sdp_offer("recvonly"),
    )
    .await;
    assert_eq!(status, 201, "{body}");

    // An operator may not receive media.
    let operator = s.token("room-a", Role::Operator, "ops-1");
    let (status, _, body) = post_sdp(
        &whep,
        Some(&operator),
        "application/sdp",
        sdp_offer("recvonly"),
    )
    .await;
    assert_eq!(status, 403, "{body}");

    // Expired: 401.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expired = encode(
        &Header::default(),
        &serde_json::json!({"sub": "kiosk-1", "room": "room-a", "role": "kiosk", "exp": now - 600}),
        &EncodingKey::from_secret(s.secret.as_bytes()),
    )
    .unwrap();
    let (status, _, body) = post_sdp(&whip, Some(&expired), "application/sdp", offer.clone()).await;
    assert_eq!(status, 401);
    assert!(body.contains("expired"), "{body}");

    // Bad signature: 401.
    let forged = encode(
        &Header::default(),
        &serde_json::json!({"sub": "kiosk-1", "room": "room-a", "role": "kiosk", "exp": now + 600}),
        &EncodingKey::from_secret(b"not-the-server-secret-at-all-000000"),
    )
    .unwrap();
    let (status, _, body) = post_sdp(&whip, Some(&forged), "application/sdp", offer.clone()).await;
    assert_eq!(status, 401);
    assert!(body.contains("signature"), "{body}");

    // Garbage token: 401 malformed.
    let (status, _, body) =
        post_sdp(&whip, Some("not.a.jwt"), "application/sdp", offer.clone()).await;
    assert_eq!(status, 401);
    assert!(body.contains("malformed token"), "{body}");

    // DELETE by another participant: 403; unknown session: 404; by the owner: 200.
    let client = reqwest::Client::new();
    let url = format!("{}{}", s.base, location);
    let doctor = s.token("room-a", Role::Doctor, "dr-1");
    let r = client
        .delete(&url)
        .bearer_auth(&doctor)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = client
        .delete(format!("{}/whip/room-a/00000000deadbeef", s.base))
        .bearer_auth(&kiosk)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let r = client
        .delete(&url)
        .bearer_auth(&kiosk)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = client
        .delete(&url)
        .bearer_auth(&kiosk)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404, "a deleted session is gone");

    // /api/rooms: operators only; refusals are counted by reason.
    let r = client
        .get(format!("{}/api/rooms", s.base))
        .bearer_auth(&doctor)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let rooms = s.rooms().await;
    let refused = &rooms["refused"];
    for reason in [
        "missing_token",
        "wrong_room",
        "forbidden_role",
        "expired",
        "bad_signature",
    ] {
        assert!(
            refused[reason].as_u64().unwrap_or(0) >= 1,
            "{reason} not counted: {refused}"
        );
    }
    s.server
        .shutdown(std::time::Duration::from_millis(100))
        .await;
}
