//! WHIP/WHEP conformance (RFC 9725) as a third-party client sees it: CORS for pages of an
//! allowed origin, `Link: rel="ice-server"` on POST and OPTIONS, `WWW-Authenticate` on every
//! 401, PATCH bodies parsed, one ICE mode in every answer, WHEP answered `sendonly`, a codec
//! mismatch refused with 422 naming both sides, OPTIONS per URL, and session ids as strings.

use std::time::Duration;

use crate::common::{post_sdp, sdp_offer, start_with, TestServer};
use cabine_proto::Role;
use reqwest::header::HeaderMap;
use reqwest::Method;

const ROOM: &str = "room-conf";
const ORIGIN: &str = "http://127.0.0.1:9";
const ICE: [&str; 2] = [
    "stun:stun.example.net:3478",
    "turn:turn.example.net:3478?transport=udp",
];

async fn server() -> TestServer {
    start_with(|c| {
        c.http.cors_origins = vec![ORIGIN.into()];
        c.ice.servers = ICE.iter().map(|s| s.to_string()).collect();
    })
    .await
}

/// The ICE server URLs of the `Link: <url>; rel="ice-server"` headers (RFC 8288 syntax: one
/// header per link or several comma-separated).
pub fn ice_links(h: &HeaderMap) -> Vec<String> {
    h.get_all("link")
        .iter()
        .flat_map(|v| v.to_str().unwrap().split(','))
        .filter_map(|link| {
            let link = link.trim();
            let (target, params) = link.split_once(';')?;
            let url = target.trim().strip_prefix('<')?.strip_suffix('>')?;
            let ice = params
                .split(';')
                .any(|p| p.trim().replace(' ', "") == "rel=\"ice-server\"");
            ice.then(|| url.to_owned())
        })
        .collect()
}

async fn request(method: Method, url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut r = reqwest::Client::new().request(method, url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_whep_follow_rfc_9725() {
    let s = server().await;
    let whip = format!("{}/whip/{ROOM}", s.base);
    let whep = format!("{}/whep/{ROOM}", s.base);
    let kiosk = s.token(ROOM, Role::Kiosk, "kiosk-1");

    // POST 201: Location, ETag, and the ICE servers as Link headers.
    let (status, h, first_answer) = post_sdp(
        &whip,
        Some(&kiosk),
        "application/sdp",
        sdp_offer("sendonly"),
    )
    .await;
    assert_eq!(status, 201, "{first_answer}");
    assert_eq!(ice_links(&h), ICE, "{h:?}");
    let location = h["location"].to_str().unwrap().to_owned();
    let session_url = format!("{}{location}", s.base);

    // OPTIONS per URL: the endpoint takes POSTs (and gives the ICE servers), a session PATCHes.
    let r = request(Method::OPTIONS, &whip, &[]).await;
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(r.headers()["accept-post"], "application/sdp");
    assert!(
        !r.headers().contains_key("accept-patch"),
        "{:?}",
        r.headers()
    );
    assert_eq!(ice_links(r.headers()), ICE);
    let r = request(Method::OPTIONS, &session_url, &[]).await;
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(
        r.headers()["accept-patch"],
        "application/trickle-ice-sdpfrag"
    );
    assert!(
        !r.headers().contains_key("accept-post"),
        "{:?}",
        r.headers()
    );

    // Every 401 says `WWW-Authenticate: Bearer`.
    let unauthorized = [
        post_sdp(&whip, None, "application/sdp", sdp_offer("sendonly"))
            .await
            .1,
        post_sdp(
            &whep,
            Some("not.a.jwt"),
            "application/sdp",
            sdp_offer("recvonly"),
        )
        .await
        .1,
        request(Method::PATCH, &session_url, &[])
            .await
            .headers()
            .clone(),
        request(
            Method::DELETE,
            &session_url,
            &[("authorization", "Bearer x.y.z")],
        )
        .await
        .headers()
        .clone(),
        request(Method::GET, &format!("{}/api/rooms", s.base), &[])
            .await
            .headers()
            .clone(),
    ];
    for h in &unauthorized {
        let w = h.get("www-authenticate").map(|v| v.to_str().unwrap());
        assert!(w.is_some_and(|w| w.starts_with("Bearer")), "{h:?}");
    }

    // PATCH bodies are parsed: garbage is 400, a trickled candidate 204.
    let patch = |body: &'static str| {
        let url = session_url.clone();
        let token = kiosk.clone();
        async move {
            let r = reqwest::Client::new()
                .patch(&url)
                .bearer_auth(&token)
                .header("content-type", "application/trickle-ice-sdpfrag")
                .header("if-match", "*")
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, body) = patch("hello").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = patch(
        "a=mid:0\r\na=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host\r\na=end-of-candidates\r\n",
    )
    .await;
    assert_eq!(status, 204, "{body}");

    // One ICE mode: the ICE-restart answer says what the first answer says.
    let (status, restart) =
        patch("a=ice-ufrag:wxyz\r\na=ice-pwd:abcdefghijklmnopqrstuvwxyz12\r\n").await;
    assert_eq!(status, 200, "{restart}");
    assert!(restart.contains("a=ice-ufrag:"), "{restart}");
    assert_eq!(
        first_answer.contains("a=ice-lite"),
        restart.contains("a=ice-lite"),
        "first answer and ICE-restart answer disagree on ICE-lite:\n{first_answer}\n---\n{restart}"
    );

    // WHEP: a `sendrecv` offer gets a `sendonly` answer.
    let doctor = s.token(ROOM, Role::Doctor, "dr-1");
    let (status, _, answer) = post_sdp(
        &whep,
        Some(&doctor),
        "application/sdp",
        sdp_offer("sendrecv"),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    assert!(!answer.contains("a=sendrecv"), "{answer}");
    assert!(answer.contains("a=sendonly"), "{answer}");
    assert!(!answer.contains("a=ice-lite"), "{answer}");

    // A codec mismatch: the room publishes VP8, the subscriber takes H264 only.
    let h264_only = sdp_offer("recvonly")
        .replace("VP8/90000", "H264/90000")
        .replace(
            "a=rtcp-fb:96 nack pli",
            "a=rtcp-fb:96 nack pli\r\na=fmtp:96 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
        );
    let (status, _, body) = post_sdp(&whep, Some(&doctor), "application/sdp", h264_only).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("H264") && body.contains("VP8"), "{body}");

    // Session ids are strings (64-bit ids do not survive JSON numbers in a browser), the same
    // as in the session URL.
    let rooms = s.rooms().await;
    let ids: Vec<&serde_json::Value> = rooms["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["sessions"].as_array().unwrap())
        .map(|s| &s["id"])
        .collect();
    assert!(!ids.is_empty(), "{rooms}");
    assert!(ids.iter().all(|id| id.is_string()), "{rooms}");
    let own = location.rsplit('/').next().unwrap();
    assert!(
        ids.iter().any(|id| id.as_str() == Some(own)),
        "{own} in {rooms}"
    );

    s.server.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_lets_allowed_origins_call_the_apis_without_credentials() {
    let s = server().await;
    let whip = format!("{}/whip/{ROOM}", s.base);

    // Preflight of a WHIP POST from the allowed origin: the route's OPTIONS plus CORS.
    let r = request(
        Method::OPTIONS,
        &whip,
        &[
            ("origin", ORIGIN),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "authorization, content-type",
            ),
        ],
    )
    .await;
    assert!(r.status().is_success(), "{}", r.status());
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], ORIGIN);
    let methods = h["access-control-allow-methods"].to_str().unwrap();
    for m in ["POST", "PATCH", "DELETE", "OPTIONS"] {
        assert!(methods.contains(m), "{methods}");
    }
    let allowed = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for name in ["authorization", "content-type", "if-match"] {
        assert!(allowed.contains(name), "{allowed}");
    }
    assert!(!h.contains_key("access-control-allow-credentials"));
    assert_eq!(ice_links(h), ICE);

    // The POST itself: the page may read Location, Link, ETag, Accept-Patch.
    let r = reqwest::Client::new()
        .post(&whip)
        .header("origin", ORIGIN)
        .header("content-type", "application/sdp")
        .bearer_auth(s.token(ROOM, Role::Kiosk, "kiosk-1"))
        .body(sdp_offer("sendonly"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], ORIGIN);
    let exposed = h["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for name in [
        "location",
        "link",
        "etag",
        "accept-patch",
        "retry-after",
        "www-authenticate",
    ] {
        assert!(exposed.contains(name), "{exposed}");
    }
    assert!(!h.contains_key("access-control-allow-credentials"));

    // The JSON APIs and health too (preflight answered even without a route OPTIONS).
    for path in ["/healthz", "/api/rooms", "/api/ops"] {
        let r = request(
            Method::OPTIONS,
            &format!("{}{path}", s.base),
            &[
                ("origin", ORIGIN),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "authorization"),
            ],
        )
        .await;
        assert!(r.status().is_success(), "{path}: {}", r.status());
        assert_eq!(r.headers()["access-control-allow-origin"], ORIGIN, "{path}");
    }
    let r = request(
        Method::GET,
        &format!("{}/healthz", s.base),
        &[("origin", ORIGIN)],
    )
    .await;
    assert_eq!(r.headers()["access-control-allow-origin"], ORIGIN);

    // Another origin gets nothing to allow it.
    let r = request(
        Method::OPTIONS,
        &whip,
        &[
            ("origin", "http://evil.example"),
            ("access-control-request-method", "POST"),
        ],
    )
    .await;
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    let r = request(
        Method::GET,
        &format!("{}/healthz", s.base),
        &[("origin", "http://evil.example")],
    )
    .await;
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    s.server.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cors_origins_no_page_of_another_origin_is_allowed() {
    let s = start_with(|_| {}).await;
    let r = request(
        Method::OPTIONS,
        &format!("{}/whip/{ROOM}", s.base),
        &[
            ("origin", ORIGIN),
            ("access-control-request-method", "POST"),
        ],
    )
    .await;
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    assert!(
        ice_links(r.headers()).is_empty(),
        "no [ice] servers by default"
    );
    s.server.shutdown(Duration::from_millis(100)).await;
}
