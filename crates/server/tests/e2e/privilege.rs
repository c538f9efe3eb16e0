//! Least privilege: an operator observes, and acts on a participant's WHIP/WHEP session (ICE
//! restart, end it) only with the explicit `moderate` grant, audited under its own identity;
//! ownership is `sub` *and* role; tokens live no longer than `auth.max_ttl` (and carry the
//! configured `iss`/`aud`); a WebSocket resume needs the same identity and role.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::{post_sdp, sdp_offer, start_with, TestServer};
use cabine_proto::signal::{self, ClientMsg, ServerMsg};
use cabine_proto::{Grant, Role};
use cabine_server::limits::Limit;
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{encode, EncodingKey, Header};
use tokio_tungstenite::tungstenite::Message;

const ROOM: &str = "room-priv";
/// An ICE restart body: new credentials (RFC 8840 fragment).
const RESTART: &str = "a=ice-ufrag:wxyz\r\na=ice-pwd:abcdefghijklmnopqrstuvwxyz12\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acting_on_a_session_needs_ownership_or_the_moderate_grant() {
    let dir = std::env::temp_dir().join(format!("cabine-priv-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let audit = dir.join("audit.jsonl");
    let a = audit.clone();
    let s = start_with(move |c| {
        c.audit.path = a;
        c.audit.fsync = cabine_server::audit::Fsync::Always;
    })
    .await;
    let kiosk = s.token(ROOM, Role::Kiosk, "kiosk-1");
    let url = publish(&s, &kiosk).await;

    // Without a valid token, the operator routes, discovery and the session URLs answer 401
    // (WWW-Authenticate) before saying whether a session exists, and each refusal is audited
    // as anonymous: the first line is written, the others of the source counted.
    let client = reqwest::Client::new();
    let unknown = format!("{}/0123456789abcdef", url.rsplit_once('/').unwrap().0);
    let anonymous = || s.server.limit_refusals(Limit::AnonymousAudit);
    let requests = [
        client
            .get(format!("{}/api/rooms", s.base))
            .bearer_auth("not.a.token"),
        client.get(format!("{}/api/ops", s.base)),
        client
            .get(format!("{}/api/telemetry", s.base))
            .bearer_auth("not.a.token"),
        client.delete(&unknown),
        client.delete(&unknown).bearer_auth("not.a.token"),
        client
            .patch(&unknown)
            .header("content-type", "application/trickle-ice-sdpfrag")
            .body(RESTART),
    ];
    for (i, r) in requests.into_iter().enumerate() {
        let before = anonymous();
        let r = r.send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "request {i}");
        assert!(r.headers().contains_key("www-authenticate"), "request {i}");
        if i == 0 {
            audit_until(&audit, |r| {
                r.iter()
                    .any(|r| r["event"] == "refused" && r["identity"] == "-")
            })
            .await;
        } else {
            assert_eq!(anonymous(), before + 1, "request {i} was not audited");
        }
    }
    // With a valid token, an unknown session is a 404.
    assert_eq!(delete(&unknown, &kiosk).await.0, 404);
    assert_eq!(patch(&unknown, &kiosk, RESTART).await.0, 404);

    // Observing is not acting: an operator without the grant, for the room or for every room.
    for op in [
        s.token(ROOM, Role::Operator, "ops-1"),
        s.token("*", Role::Operator, "ops-1"),
    ] {
        assert_eq!(patch(&url, &op, RESTART).await.0, 403);
        let (status, body) = delete(&url, &op).await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("moderate"), "{body}");
    }
    // Same `sub`, other role: an observer token named like the kiosk is not its owner.
    let impostor = s.token(ROOM, Role::Observer, "kiosk-1");
    assert_eq!(patch(&url, &impostor, RESTART).await.0, 403);
    assert_eq!(delete(&url, &impostor).await.0, 403);
    // Another participant of the room: refused too.
    let doctor = s.token(ROOM, Role::Doctor, "dr-1");
    assert_eq!(delete(&url, &doctor).await.0, 403);
    // An observer cannot be granted moderation.
    let obs_mod = s.token_with(ROOM, Role::Observer, "obs-1", Some(vec![Grant::Moderate]));
    assert_eq!(delete(&url, &obs_mod).await.0, 403);

    // With the grant: the ICE restart and the end of the session succeed, audited as the
    // operator (identity and role), naming whose session it was.
    let moderator = s.token_with("*", Role::Operator, "ops-1", Some(vec![Grant::Moderate]));
    let (status, body) = patch(&url, &moderator, RESTART).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("a=ice-ufrag:"), "{body}");
    let (status, body) = delete(&url, &moderator).await;
    assert_eq!(status, 200, "{body}");
    let records = audit_until(&audit, |r| r.iter().any(|r| r["event"] == "leave")).await;
    let restart = records
        .iter()
        .find(|r| r["event"] == "ice_restart")
        .expect("the ICE restart is audited");
    let leave = records.iter().find(|r| r["event"] == "leave").unwrap();
    for r in [restart, leave] {
        assert_eq!(r["identity"], "ops-1", "{r}");
        assert_eq!(r["role"], "operator", "{r}");
        assert!(r["reason"].as_str().unwrap().contains("kiosk-1"), "{r}");
    }
    // The owner (same sub and role) still acts on its own session without any grant.
    let url = publish(&s, &kiosk).await;
    assert_eq!(patch(&url, &kiosk, RESTART).await.0, 200);
    assert_eq!(delete(&url, &kiosk).await.0, 200);
    s.server.shutdown(Duration::from_millis(100)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_longer_than_max_ttl_or_from_another_issuer_are_refused() {
    let s = start_with(|c| {
        c.auth.max_ttl = Duration::from_secs(3600);
        c.auth.issuer = "cabine-idp".into();
        c.auth.audience = "cabine".into();
    })
    .await;
    let whip = format!("{}/whip/{ROOM}", s.base);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let key = EncodingKey::from_secret(s.secret.as_bytes());
    let token = |claims: serde_json::Value| encode(&Header::default(), &claims, &key).unwrap();
    let claims = |exp: u64, extra: serde_json::Value| {
        let mut c = serde_json::json!({"sub": "kiosk-1", "room": ROOM, "role": "kiosk",
            "exp": exp, "iss": "cabine-idp", "aud": "cabine"});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let offer = sdp_offer("sendonly");
    let post = |t: String| {
        let whip = whip.clone();
        let offer = offer.clone();
        async move { post_sdp(&whip, Some(&t), "application/sdp", offer).await }
    };

    // Within the limit, right issuer and audience: accepted.
    let (status, _, body) = post(token(claims(now + 600, serde_json::json!({})))).await;
    assert_eq!(status, 201, "{body}");
    // exp = now + 10^12: refused at verification, naming the key.
    let (status, headers, body) = post(token(claims(
        now + 1_000_000_000_000,
        serde_json::json!({}),
    )))
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("auth.max_ttl"), "{body}");
    assert!(headers.contains_key("www-authenticate"));
    // An old iat counts: issued 2 h ago for 2 h 10 min.
    let (status, _, body) = post(token(claims(
        now + 600,
        serde_json::json!({"iat": now - 7200}),
    )))
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("lifetime"), "{body}");
    // Wrong issuer, wrong audience, none: refused.
    for extra in [
        serde_json::json!({"iss": "someone-else"}),
        serde_json::json!({"aud": "another-service"}),
    ] {
        let (status, _, body) = post(token(claims(now + 600, extra))).await;
        assert_eq!(status, 401, "{body}");
    }
    let minted = s.token(ROOM, Role::Kiosk, "kiosk-1"); // no iss/aud
    let (status, _, body) = post(minted).await;
    assert_eq!(status, 401, "{body}");
    let ops = token(
        serde_json::json!({"sub": "ops", "room": "*", "role": "operator",
        "exp": now + 600, "iss": "cabine-idp", "aud": "cabine"}),
    );
    let refused = crate::common::rooms_at(&s.base, &ops).await;
    assert!(
        refused["refused"]["ttl_too_long"].as_u64().unwrap_or(0) >= 2,
        "{refused}"
    );
    assert!(
        refused["refused"]["wrong_issuer"].as_u64().unwrap_or(0) >= 3,
        "{refused}"
    );
    s.server.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_resume_needs_the_same_identity_and_role() {
    let s = crate::common::start().await;
    let ws = |t: String| format!("{}/ws/{ROOM}?token={t}", s.base.replace("http://", "ws://"));
    let (mut doctor, _) = tokio_tungstenite::connect_async(ws(s.token(ROOM, Role::Doctor, "dr-1")))
        .await
        .expect("websocket opens");
    send(
        &mut doctor,
        &ClientMsg::Join {
            subscribe: false,
            from: None,
        },
    )
    .await;
    let ServerMsg::Welcome { resume, .. } =
        recv_until(&mut doctor, |m| matches!(m, ServerMsg::Welcome { .. })).await
    else {
        unreachable!()
    };

    // An observer token with the doctor's `sub` may not take the doctor's session over.
    let (mut observer, _) =
        tokio_tungstenite::connect_async(ws(s.token(ROOM, Role::Observer, "dr-1")))
            .await
            .unwrap();
    send(
        &mut observer,
        &ClientMsg::Resume {
            resume: resume.clone(),
        },
    )
    .await;
    let ServerMsg::Error { code, fatal, .. } =
        recv_until(&mut observer, |m| matches!(m, ServerMsg::Error { .. })).await
    else {
        unreachable!()
    };
    assert_eq!(code, "forbidden");
    assert!(fatal);

    // The doctor itself (same sub, same role) resumes.
    let (mut again, _) = tokio_tungstenite::connect_async(ws(s.token(ROOM, Role::Doctor, "dr-1")))
        .await
        .unwrap();
    send(&mut again, &ClientMsg::Resume { resume }).await;
    let ServerMsg::Welcome { resumed, .. } =
        recv_until(&mut again, |m| matches!(m, ServerMsg::Welcome { .. })).await
    else {
        unreachable!()
    };
    assert!(resumed);
    s.server.shutdown(Duration::from_millis(100)).await;
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn send(ws: &mut Ws, msg: &ClientMsg) {
    ws.send(Message::Text(signal::to_text(msg).into()))
        .await
        .expect("websocket send");
}

async fn recv_until(ws: &mut Ws, want: impl Fn(&ServerMsg) -> bool) -> ServerMsg {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(15), ws.next())
            .await
            .expect("a message within 15 s")
            .expect("socket open")
            .expect("socket ok");
        if let Message::Text(t) = m {
            let m = signal::parse_server(&t).expect("valid server message");
            if want(&m) {
                return m;
            }
        }
    }
}

/// Publishes (WHIP) with `token`; the session URL.
async fn publish(s: &TestServer, token: &str) -> String {
    let (status, headers, body) = post_sdp(
        &format!("{}/whip/{ROOM}", s.base),
        Some(token),
        "application/sdp",
        sdp_offer("sendonly"),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    format!("{}{}", s.base, headers["location"].to_str().unwrap())
}

async fn patch(url: &str, token: &str, body: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .patch(url)
        .bearer_auth(token)
        .header("content-type", "application/trickle-ice-sdpfrag")
        .header("if-match", "*")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

async fn delete(url: &str, token: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .delete(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// Polls the audit file until `done` holds for its records (10 s).
async fn audit_until(
    path: &Path,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let records: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if done(&records) {
            return records;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the audit log never had the records: {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
