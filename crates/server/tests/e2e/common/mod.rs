//! Shared helpers for the server's end-to-end tests: an in-process server on ephemeral ports
//! and token minting with its secret.

#![allow(dead_code)]

pub mod browser;
pub mod cluster;
pub mod coturn;
pub mod kiosk;
pub mod mic_pair;
pub mod netns;

use std::time::Duration;

use cabine_client::{RemoteTrack, Subscriber};
use cabine_proto::jwt::Tokens;
use cabine_proto::{Grant, Identity, Role};
use cabine_server::{Config, Server};
use std::collections::HashMap;

/// A running server and what tests need to talk to it.
pub struct TestServer {
    pub server: Server,
    pub base: String,
    pub tokens: Tokens,
    pub secret: String,
}

/// Starts a server on 127.0.0.1 with ephemeral HTTP and media ports.
pub async fn start() -> TestServer {
    start_with(|_| {}).await
}

/// Same, with a configuration tweak.
pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
    let mut cfg = Config::defaults();
    cfg.http.listen = "127.0.0.1:0".parse().unwrap();
    cfg.media.bind = "127.0.0.1:0".parse().unwrap();
    cfg.media.workers = 2;
    // Off unless a test asks for it: the default port (9464) is one per machine, and tests run
    // side by side.
    cfg.admin.listen = String::new();
    cfg.telemetry.listen = "127.0.0.1:0".into();
    cfg.auth.secret = "test-secret-0123456789abcdef0123456789".into();
    tweak(&mut cfg);
    let secret = cfg.auth.secret.clone();
    let server = Server::start(cfg).await.expect("server starts");
    let base = format!("http://{}", server.http_addr());
    TestServer {
        server,
        base,
        tokens: Tokens::new(secret.as_bytes()),
        secret,
    }
}

impl TestServer {
    /// A token for `identity` with `role` in `room`, valid 10 minutes.
    pub fn token(&self, room: &str, role: Role, identity: &str) -> String {
        self.token_with(room, role, identity, None)
    }

    /// Same with explicit grants.
    pub fn token_with(
        &self,
        room: &str,
        role: Role,
        identity: &str,
        grants: Option<Vec<Grant>>,
    ) -> String {
        self.tokens
            .mint(
                room,
                role,
                Identity::parse(identity).unwrap(),
                Duration::from_secs(600),
                grants,
            )
            .unwrap()
    }

    /// GET /api/rooms with an operator token.
    pub async fn rooms(&self) -> serde_json::Value {
        rooms_at(&self.base, &self.token("*", Role::Operator, "ops")).await
    }

    /// Polls `GET /api/rooms` until `done` holds, for up to `timeout`; returns the view that
    /// satisfied it, or panics with the last one and `what`.
    pub async fn rooms_until(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let token = self.token("*", Role::Operator, "ops");
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let v = rooms_at(&self.base, &token).await;
            if done(&v) {
                return v;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: not reached in {timeout:?}; last view {v}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// GET `{base}/api/rooms` with `token`.
pub async fn rooms_at(base: &str, token: &str) -> serde_json::Value {
    reqwest::Client::new()
        .get(format!("{base}/api/rooms"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Waits until `done()` holds, checking every 20 ms, for up to `timeout`; panics naming `what`.
pub async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not reached in {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A minimal but valid-looking recvonly/sendonly SDP offer (Opus + VP8), enough for the server
/// to answer. The ICE/DTLS parameters are syntactically valid; no one will connect with them.
pub fn sdp_offer(direction: &str) -> String {
    [
        "v=0",
        "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "a=msid-semantic: WMS kiosk",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "c=IN IP4 0.0.0.0",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:abcdefghijklmnopqrstuvwx",
        "a=ice-options:trickle",
        "a=fingerprint:sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08",
        "a=setup:actpass",
        "a=mid:0",
        &format!("a={direction}"),
        "a=msid:kiosk microphone",
        "a=rtcp-mux",
        "a=rtpmap:111 opus/48000/2",
        "a=fmtp:111 minptime=10;useinbandfec=1",
        "a=ssrc:1001 cname:kiosk",
        "m=video 9 UDP/TLS/RTP/SAVPF 96",
        "c=IN IP4 0.0.0.0",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:abcdefghijklmnopqrstuvwx",
        "a=fingerprint:sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08",
        "a=setup:actpass",
        "a=mid:1",
        &format!("a={direction}"),
        "a=msid:kiosk room-camera",
        "a=rtcp-mux",
        "a=rtpmap:96 VP8/90000",
        "a=rtcp-fb:96 nack",
        "a=rtcp-fb:96 nack pli",
        "a=ssrc:1002 cname:kiosk",
        "",
    ]
    .join("\r\n")
}

/// POSTs an SDP offer; returns status, headers and body.
pub async fn post_sdp(
    url: &str,
    token: Option<&str>,
    content_type: &str,
    body: String,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = reqwest::Client::new()
        .post(url)
        .header("content-type", content_type)
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.expect("request sent");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap_or_default())
}

/// Packets sent per track by the streaming tests.
pub const PACKETS: usize = 150;

/// The payload of packet `i` of track `t`. Video payloads carry a VP8 payload descriptor
/// (S bit set) whose first frame is a keyframe, so the SFU starts forwarding at packet 0.
pub fn payload(t: usize, i: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(200);
    if t == 0 {
        p.push(0x10); // VP8 descriptor: S=1, partition 0, no extensions.
        p.push(if i == 0 { 0x00 } else { 0x01 }); // VP8 frame tag: key, then delta.
    }
    p.extend_from_slice(&(t as u32).to_be_bytes());
    p.extend_from_slice(&(i as u32).to_be_bytes());
    // Some variable-length filler so lengths differ too.
    p.extend((0..(i % 97 + 20)).map(|k| (k as u8).wrapping_mul(31).wrapping_add(i as u8)));
    p
}

/// What a subscriber received.
pub type Received = HashMap<String, (String, Vec<Vec<u8>>, Vec<u16>)>;

/// Reads every packet of `count` tracks of a subscriber, keyed by msid track label: (stream
/// id, payloads, sequence numbers).
pub async fn receive_all(sub: &Subscriber, count: usize) -> Received {
    let tracks = sub
        .tracks(count, Duration::from_secs(15))
        .await
        .expect("three tracks arrive");
    let mut tasks = Vec::new();
    for track in tracks {
        tasks.push(tokio::spawn(read_track(track)));
    }
    let mut out = HashMap::new();
    for t in tasks {
        let (label, v) = t.await.unwrap();
        out.insert(label, v);
    }
    out
}

async fn read_track(track: RemoteTrack) -> (String, (String, Vec<Vec<u8>>, Vec<u16>)) {
    let mut payloads = Vec::new();
    let mut seqs = Vec::new();
    while payloads.len() < PACKETS {
        match track.read_rtp_timeout(Duration::from_secs(3)).await {
            Ok(p) => {
                seqs.push(p.header.sequence_number);
                payloads.push(p.payload.to_vec());
            }
            Err(_) => break,
        }
    }
    (track.id(), (track.stream_id(), payloads, seqs))
}
