//! The abuse suite: a hostile client against a real server on loopback, one limit per test
//! (`[limits]` in the configuration). Each case has a bounded cost (counts and deadlines), waits
//! by polling, and fails without its limit: the flood would grow memory or never be closed, the
//! idle connections would all be held, the slow headers kept, the audit rotated away, the extra
//! dashboard or join accepted.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use cabine_proto::signal::{self, ClientMsg, ServerMsg};
use cabine_proto::Role;
use cabine_server::limits::Limit;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::common::{self, post_sdp, sdp_offer, wait_for, TestServer};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Largest growth of this process's resident memory the ping flood may cause (the unbounded
/// queue grew the server by 943 MB in 4 s).
const FLOOD_RSS_BOUND_MB: u64 = 150;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_flood_from_a_client_that_never_reads_is_closed_and_memory_stays_bounded() {
    let s = common::start_with(|c| {
        // The queue is the limit under test, not the message rate.
        c.limits.ws_messages_per_second = 1_000_000.try_into().unwrap();
        c.limits.ws_message_burst = 1_000_000.try_into().unwrap();
    })
    .await;
    let mut ws = join(&s, "flood", "flooder").await;
    let before = rss_mb();
    // Pings, never reading a pong: at most 3 M of them (60 MB sent), or 60 s.
    let ping = Message::Text(signal::to_text(&ClientMsg::Ping).into());
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut sent = 0u64;
    let mut peak = before;
    let write_failed = loop {
        let mut failed = false;
        for _ in 0..1000 {
            if ws.feed(ping.clone()).await.is_err() {
                failed = true;
                break;
            }
        }
        if failed || ws.flush().await.is_err() {
            break true;
        }
        sent += 1000;
        peak = peak.max(rss_mb());
        if sent >= 3_000_000 || Instant::now() > deadline {
            break false;
        }
    };
    peak = peak.max(rss_mb());
    // The server closed the socket: the writes failed, or reading what was sent ends on the
    // close frame (or the reset) within a bounded time.
    let closed = write_failed || closed_within(&mut ws, Duration::from_secs(20)).await;
    assert!(
        closed,
        "the server never closed a client that does not read ({sent} pings sent)"
    );
    assert!(
        peak.saturating_sub(before) < FLOOD_RSS_BOUND_MB,
        "RSS grew from {before} MB to {peak} MB during the flood ({sent} pings)"
    );
    assert!(s.server.limit_refusals(Limit::WsQueue) >= 1);
    s.server.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_faster_than_the_message_rate_is_closed_with_1008() {
    let s = common::start_with(|c| {
        c.limits.ws_messages_per_second = 5.try_into().unwrap();
        c.limits.ws_message_burst = 10.try_into().unwrap();
    })
    .await;
    let mut ws = join(&s, "rate", "chatty").await;
    let ping = Message::Text(signal::to_text(&ClientMsg::Ping).into());
    for _ in 0..200 {
        if ws.send(ping.clone()).await.is_err() {
            break;
        }
    }
    let (code, reason) = close_frame(&mut ws, Duration::from_secs(10))
        .await
        .expect("a close frame");
    assert_eq!(code, CloseCode::Policy);
    assert!(reason.contains("ws_messages_per_second"), "{reason}");
    assert_eq!(s.server.limit_refusals(Limit::WsMessageRate), 1);
    s.server.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_do_not_lock_out_healthz() {
    const IDLE: usize = 5_000;
    const CAP: usize = 1_000;
    let s = common::start_with(|c| {
        c.limits.http_connections = CAP.try_into().unwrap();
        // Held for the whole test unless the cap sheds them.
        c.limits.header_timeout = Duration::from_secs(300);
        c.limits.idle_timeout = Duration::from_secs(300);
    })
    .await;
    // Server::start raised the soft open-file limit to the hard one; this test needs about
    // IDLE + CAP descriptors.
    let baseline = open_fds();
    let addr = s.server.http_addr();
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(std::net::TcpStream::connect(addr).expect("connect"));
    }
    // The server holds at most the cap (plus the connections being evicted): the process has
    // the clients' IDLE descriptors and not many more.
    wait_for(
        "the server sheds idle connections beyond the cap",
        Duration::from_secs(60),
        || open_fds().saturating_sub(baseline) <= IDLE + CAP + 100,
    )
    .await;
    let r = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
        .get(format!("{}/healthz", s.base))
        .send()
        .await
        .expect("healthz answers with 5,000 idle connections open");
    assert_eq!(r.status().as_u16(), 200);
    assert!(s.server.limit_refusals(Limit::HttpConnections) >= (IDLE - CAP) as u64);
    drop(idle);
    s.server.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_closed_after_the_header_timeout() {
    let s = common::start_with(|c| {
        c.limits.header_timeout = Duration::from_millis(300);
        c.limits.idle_timeout = Duration::from_millis(500);
        c.admin.listen = "127.0.0.1:0".into();
    })
    .await;
    let addr = s.server.http_addr();
    // The public listener and the admin (metrics) listener alike.
    for (which, addr) in [("http", addr), ("admin", s.server.admin_addr().unwrap())] {
        let closed = tokio::task::spawn_blocking(move || {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.write_all(b"GET /metrics HT").unwrap();
            // Bounded wait: a server without the timeout keeps the connection past it.
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut buf = [0u8; 256];
            match c.read(&mut buf) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            }
        })
        .await
        .unwrap();
        assert!(
            closed,
            "{which}: a connection that never finished its headers was kept"
        );
    }
    assert!(s.server.limit_refusals(Limit::HeaderTimeout) >= 2);
    // A keep-alive connection waiting for its next request is closed after it too.
    let closed = tokio::task::spawn_blocking(move || {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: cabine\r\n\r\n")
            .unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            match c.read(&mut buf) {
                Ok(0) => return got.starts_with(b"HTTP/1.1 200"),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => return false,
            }
        }
    })
    .await
    .unwrap();
    assert!(closed, "an idle keep-alive connection was kept");
    // Whole headers, then a body that never comes: closed after the idle timeout.
    let closed = tokio::task::spawn_blocking(move || {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.write_all(
            b"POST /whip/stalled HTTP/1.1\r\nHost: cabine\r\nContent-Type: application/sdp\r\n\
              Content-Length: 1000\r\n\r\nv=0",
        )
        .unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 256];
        loop {
            match c.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
            }
        }
    })
    .await
    .unwrap();
    assert!(closed, "a connection with a stalled body was kept");
    assert!(s.server.limit_refusals(Limit::IdleTimeout) >= 1);
    s.server.shutdown(Duration::from_millis(100)).await;

    // Over TLS: a client that never finishes its handshake is closed after the timeout.
    let dir = temp_dir("tls");
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let s = common::start_with(|c| {
        c.http.tls_cert = dir.join("cert.pem");
        c.http.tls_key = dir.join("key.pem");
        c.limits.header_timeout = Duration::from_millis(300);
    })
    .await;
    let addr = s.server.http_addr();
    let closed = tokio::task::spawn_blocking(move || {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        // The first bytes of a TLS record header, then nothing.
        c.write_all(&[0x16, 0x03, 0x01]).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 256];
        match c.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    })
    .await
    .unwrap();
    assert!(closed, "a TLS handshake that never finished was kept");
    assert!(s.server.limit_refusals(Limit::HeaderTimeout) >= 1);
    s.server.shutdown(Duration::from_millis(100)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_refusal_flood_cannot_rotate_accepted_events_out_of_the_audit() {
    const FLOOD: usize = 3_000;
    let dir = temp_dir("flood");
    let path = dir.join("audit.jsonl");
    let s = common::start_with(|c| {
        c.audit.path = path.clone();
        c.audit.max_bytes = 4096;
        c.audit.keep = 2;
        c.limits.anonymous_audit_interval = Duration::from_secs(3600);
    })
    .await;
    let whip = format!("{}/whip/audited", s.base);
    let (status, _, body) = post_sdp(
        &whip,
        Some(&s.token("audited", Role::Kiosk, "kiosk-before")),
        "application/sdp",
        sdp_offer("sendonly"),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    // Tokenless WHIP, WHEP with a bad token: 8 clients side by side.
    let mut tasks = Vec::new();
    for t in 0..8 {
        let base = s.base.clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            for i in (t..FLOOD).step_by(8) {
                let r = match i % 2 {
                    0 => client.post(format!("{base}/whip/audited")),
                    _ => client
                        .post(format!("{base}/whep/audited"))
                        .bearer_auth("not.a.token"),
                };
                let status = r.send().await.unwrap().status().as_u16();
                assert_eq!(status, 401);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (status, _, body) = post_sdp(
        &whip,
        Some(&s.token("audited", Role::Kiosk, "kiosk-after")),
        "application/sdp",
        sdp_offer("sendonly"),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    // Shutdown writes the pending count and flushes the file.
    s.server.shutdown(Duration::from_millis(100)).await;
    let mut text = String::new();
    for p in [
        path.with_extension("jsonl.2"),
        path.with_extension("jsonl.1"),
        path.clone(),
    ] {
        text.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
    }
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for who in ["kiosk-before", "kiosk-after"] {
        assert!(
            records
                .iter()
                .any(|r| r["event"] == "publish" && r["identity"] == who),
            "the accepted join of {who} is gone from the audit: {text}"
        );
    }
    let anonymous: Vec<&serde_json::Value> =
        records.iter().filter(|r| r["identity"] == "-").collect();
    assert!(
        anonymous.len() <= 2,
        "{} anonymous lines from one source: {text}",
        anonymous.len()
    );
    let summary = anonymous
        .iter()
        .find(|r| r["event"] == "refused_anonymous")
        .expect("a summary line with the count");
    let reason = summary["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!("anonymous_refusals: {} more", FLOOD - 1))
            && reason.contains("127.0.0.0/24"),
        "{reason}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_flood_from_many_sources_writes_a_bounded_number_of_lines() {
    const SOURCES: u32 = 250;
    const PER_SOURCE: u32 = 2;
    const LINES: usize = 20;
    let dir = temp_dir("sources");
    let path = dir.join("audit.jsonl");
    let s = common::start_with(|c| {
        c.audit.path = path.clone();
        c.limits.anonymous_audit_interval = Duration::from_secs(3600);
        c.limits.anonymous_audit_lines = LINES.try_into().unwrap();
    })
    .await;
    let whip = format!("{}/whip/many", s.base);
    let (status, _, body) = post_sdp(
        &whip,
        Some(&s.token("many", Role::Kiosk, "kiosk-before")),
        "application/sdp",
        sdp_offer("sendonly"),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let addr: std::net::SocketAddr = s.base.trim_start_matches("http://").parse().unwrap();
    // Each client from its own /24 (all of 127/8 is loopback on Linux): 250 sources.
    let mut tasks = Vec::new();
    for chunk in 0..5u32 {
        tasks.push(tokio::spawn(async move {
            for n in (1 + chunk..=SOURCES).step_by(5) {
                for _ in 0..PER_SOURCE {
                    let sock = tokio::net::TcpSocket::new_v4().unwrap();
                    sock.bind(format!("127.0.{n}.1:0").parse().unwrap())
                        .unwrap();
                    let mut tcp = sock.connect(addr).await.unwrap();
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    tcp.write_all(
                        b"POST /whip/many HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\
                          Connection: close\r\n\r\n",
                    )
                    .await
                    .unwrap();
                    let mut answer = Vec::new();
                    tcp.read_to_end(&mut answer).await.unwrap();
                    let answer = String::from_utf8_lossy(&answer);
                    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (status, _, body) = post_sdp(
        &whip,
        Some(&s.token("many", Role::Kiosk, "kiosk-after")),
        "application/sdp",
        sdp_offer("sendonly"),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let capped = s.server.limit_refusals(Limit::AnonymousAuditLines);
    s.server.shutdown(Duration::from_millis(100)).await;
    let text = std::fs::read_to_string(&path).unwrap();
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for who in ["kiosk-before", "kiosk-after"] {
        assert!(
            records
                .iter()
                .any(|r| r["event"] == "publish" && r["identity"] == who),
            "the accepted join of {who} is gone from the audit: {text}"
        );
    }
    let anonymous: Vec<&serde_json::Value> =
        records.iter().filter(|r| r["identity"] == "-").collect();
    // The budget, plus the one line counting the rest.
    assert!(
        anonymous.len() <= LINES + 1,
        "{} anonymous lines from {SOURCES} sources: {text}",
        anonymous.len()
    );
    let total = (SOURCES * PER_SOURCE) as usize;
    let overflow = anonymous
        .iter()
        .filter_map(|r| r["reason"].as_str())
        .find(|r| r.contains("limits.anonymous_audit_lines") && r.contains("all sources"))
        .unwrap_or_else(|| panic!("no line counting the rest: {text}"));
    assert!(
        overflow.starts_with(&format!(
            "anonymous_refusals: {} more",
            total - (anonymous.len() - 1)
        )),
        "{overflow}"
    );
    assert!(capped >= (SOURCES as u64) - LINES as u64, "{capped}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_that_never_join_or_send_oversized_messages_are_closed_and_counted() {
    let s = common::start_with(|c| {
        c.limits.ws_first_message_timeout = Duration::from_millis(300);
        c.limits.ws_max_message_bytes = 4096.try_into().unwrap();
    })
    .await;
    // Silent after the upgrade: closed after limits.ws_first_message_timeout.
    let mut silent = open_ws(&s, "ws-limits", "silent").await;
    assert!(
        closed_within(&mut silent, Duration::from_secs(10)).await,
        "a socket that never joined was kept"
    );
    assert_eq!(s.server.limit_refusals(Limit::WsFirstMessage), 1);
    // A message above limits.ws_max_message_bytes: closed, counted.
    let mut big = join(&s, "ws-limits", "big").await;
    let _ = big.send(Message::Text("x".repeat(8192).into())).await;
    assert!(
        closed_within(&mut big, Duration::from_secs(10)).await,
        "a socket that sent an oversized message was kept"
    );
    wait_for(
        "the oversized message counted",
        Duration::from_secs(10),
        || s.server.limit_refusals(Limit::WsMessageSize) == 1,
    )
    .await;
    s.server.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_beyond_the_sse_cap_is_refused() {
    let s = common::start_with(|c| {
        c.limits.sse_clients = 2.try_into().unwrap();
        c.admin.listen = "127.0.0.1:0".into();
        // Shorter than the stream's life: an open stream is not a request still being read.
        c.limits.header_timeout = Duration::from_millis(300);
    })
    .await;
    let token = s.token("*", Role::Operator, "ops");
    let url = format!("{}/api/ops/stream?token={token}", s.base);
    let client = reqwest::Client::new();
    let a = client.get(&url).send().await.unwrap();
    let b = client.get(&url).send().await.unwrap();
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    let c = client.get(&url).send().await.unwrap();
    assert_eq!(c.status().as_u16(), 503);
    assert!(c.headers().contains_key("retry-after"));
    let body: serde_json::Value = c.json().await.unwrap();
    assert_eq!(body["limit"], "sse_clients", "{body}");
    // The open streams keep flowing: three views are at least two sampler periods (2 s).
    let mut b = b;
    let mut views = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while views < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, b.chunk())
            .await
            .expect("views keep coming")
            .expect("the stream stays open")
            .expect("the stream stays open");
        views += String::from_utf8_lossy(&chunk)
            .matches("event: view")
            .count();
    }
    // A dashboard that closes gives its place back.
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = client.get(&url).send().await.unwrap();
        if r.status().as_u16() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed stream's place never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(s.server.limit_refusals(Limit::SseClients) >= 1);
    // The refusal is in the metrics, by limit.
    let metrics = reqwest::get(format!("http://{}/metrics", s.server.admin_addr().unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("cabine_limits_refused_total{limit=\"sse_clients\"} 1"),
        "{metrics}"
    );
    // The audit queue's drops are exported (none here).
    assert!(
        metrics.contains("cabine_audit_dropped_total 0"),
        "{metrics}"
    );
    drop(b);
    s.server.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_beyond_the_member_and_session_caps_are_refused() {
    let s = common::start_with(|c| {
        c.limits.ws_members_per_identity = 2.try_into().unwrap();
        c.limits.ws_members_per_room = 3.try_into().unwrap();
        c.limits.sessions_per_identity = 2.try_into().unwrap();
    })
    .await;
    // Members per identity: a third socket of dr-1 is closed with 1008.
    let _one = join(&s, "caps", "dr-1").await;
    let _two = join(&s, "caps", "dr-1").await;
    let (code, reason) = refused_join(&s, "caps", "dr-1").await;
    assert_eq!(code, CloseCode::Policy);
    assert_eq!(reason, "ws_members_per_identity");
    // Members per room: a third member joins, a fourth is refused.
    let _three = join(&s, "caps", "dr-2").await;
    let (code, reason) = refused_join(&s, "caps", "dr-3").await;
    assert_eq!(code, CloseCode::Policy);
    assert_eq!(reason, "ws_members_per_room");

    // Sessions per identity: a third WHIP session of kiosk-1 is refused (429, JSON).
    let kiosk = s.token("caps", Role::Kiosk, "kiosk-1");
    for _ in 0..2 {
        let (status, _, body) = post_sdp(
            &format!("{}/whip/caps", s.base),
            Some(&kiosk),
            "application/sdp",
            sdp_offer("sendonly"),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, headers, body) = post_sdp(
        &format!("{}/whep/caps", s.base),
        Some(&kiosk),
        "application/sdp",
        sdp_offer("recvonly"),
    )
    .await;
    assert_eq!(status, 429, "{body}");
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["limit"], "sessions_per_identity", "{body}");
    assert_eq!(s.server.limit_refusals(Limit::SessionsPerIdentity), 1);
    // Sessions opened over signalling count with the WHIP/WHEP ones.
    let doctor = s.token("caps-2", Role::Doctor, "dr-4");
    for _ in 0..2 {
        let (status, _, body) = post_sdp(
            &format!("{}/whep/caps-2", s.base),
            Some(&doctor),
            "application/sdp",
            sdp_offer("recvonly"),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let mut ws = join(&s, "caps-2", "dr-4").await;
    let publish = ClientMsg::Publish {
        sdp: sdp_offer("sendonly"),
    };
    ws.send(Message::Text(signal::to_text(&publish).into()))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => match signal::parse_server(&t) {
                Ok(ServerMsg::Error { code, message, .. }) => {
                    assert_eq!(code, "limit", "{message}");
                    assert!(message.contains("sessions_per_identity"), "{message}");
                    break;
                }
                Ok(ServerMsg::Answer { .. }) => panic!("a third session was accepted"),
                _ => {}
            },
            other => panic!("no refusal of the third session: {other:?}"),
        }
    }
    assert_eq!(s.server.limit_refusals(Limit::SessionsPerIdentity), 2);
    // Twenty joins of one identity at once: still two sessions.
    let kiosk = s.token("caps-3", Role::Kiosk, "kiosk-2");
    let joins: Vec<_> = (0..20)
        .map(|_| {
            let url = format!("{}/whip/caps-3", s.base);
            let kiosk = kiosk.clone();
            tokio::spawn(async move {
                post_sdp(&url, Some(&kiosk), "application/sdp", sdp_offer("sendonly"))
                    .await
                    .0
            })
        })
        .collect();
    let mut created = 0;
    for j in joins {
        match j.await.unwrap() {
            201 => created += 1,
            429 => {}
            other => panic!("status {other}"),
        }
    }
    assert_eq!(created, 2, "concurrent joins slipped past the cap");
    s.server.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_restarts_beyond_the_rate_are_refused_with_429() {
    let s = common::start_with(|c| c.limits.ice_restarts_per_minute = 2.try_into().unwrap()).await;
    let kiosk = s.token("restarts", Role::Kiosk, "kiosk-1");
    let (status, headers, body) = post_sdp(
        &format!("{}/whip/restarts", s.base),
        Some(&kiosk),
        "application/sdp",
        sdp_offer("sendonly"),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let url = format!("{}{}", s.base, headers["location"].to_str().unwrap());
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for i in 0..3 {
        let r = client
            .patch(&url)
            .bearer_auth(&kiosk)
            .header("content-type", "application/trickle-ice-sdpfrag")
            .body(format!(
                "a=ice-ufrag:new{i}\r\na=ice-pwd:abcdefghijklmnopqrstuvw{i}\r\n"
            ))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        if r.status().as_u16() == 429 {
            assert!(r.headers().contains_key("retry-after"));
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["limit"], "ice_restarts_per_minute", "{body}");
        }
    }
    assert_eq!(statuses, [200, 200, 429]);
    assert_eq!(s.server.limit_refusals(Limit::IceRestartRate), 1);
    s.server.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_files_are_owner_only_from_the_start_and_after_rotation() {
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    // An existing directory open to others (it could be /var/log or the working directory) is
    // neither chmod-ed nor used: the server refuses to start, naming the key.
    let shared = temp_dir("modes-shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cfg = cabine_server::config::Config::defaults();
    cfg.http.listen = "127.0.0.1:0".parse().unwrap();
    cfg.media.bind = "127.0.0.1:0".parse().unwrap();
    cfg.admin.listen = String::new();
    cfg.telemetry.listen = String::new();
    cfg.audit.path = shared.join("audit.jsonl");
    let e = match cabine_server::Server::start(cfg).await {
        Ok(s) => {
            s.shutdown(Duration::from_millis(10)).await;
            panic!("started with the audit log in a 0755 directory");
        }
        Err(e) => e.to_string(),
    };
    assert!(e.contains("audit.path"), "{e}");
    assert_eq!(mode(&shared), 0o755, "the shared directory was changed");
    assert!(!shared.join("audit.jsonl").exists());
    let _ = std::fs::remove_dir_all(&shared);

    // A directory the server creates is 0700; a file left readable by everyone in an
    // owner-only directory is tightened at start.
    let parent = temp_dir("modes");
    let dir = parent.join("audit");
    std::fs::create_dir_all(&parent).unwrap();
    std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o700)).unwrap();
    let path = dir.join("audit.jsonl");
    let s = common::start_with(|c| {
        c.audit.path = path.clone();
        c.audit.max_bytes = 1024;
        c.audit.keep = 2;
    })
    .await;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&path), 0o600);
    s.server.shutdown(Duration::from_millis(100)).await;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let s = common::start_with(|c| {
        c.audit.path = path.clone();
        c.audit.max_bytes = 1024;
        c.audit.keep = 2;
    })
    .await;
    assert_eq!(mode(&path), 0o600);
    // Identified refusals (an observer may not publish) until the file rotates.
    let observer = s.token("modes", Role::Observer, "watcher");
    let rotated = path.with_extension("jsonl.1");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !rotated.exists() {
        assert!(Instant::now() < deadline, "the audit file never rotated");
        let (status, _, _) = post_sdp(
            &format!("{}/whip/modes", s.base),
            Some(&observer),
            "application/sdp",
            sdp_offer("sendonly"),
        )
        .await;
        assert_eq!(status, 403);
    }
    s.server.shutdown(Duration::from_millis(100)).await;
    assert_eq!(mode(&rotated), 0o600);
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&dir), 0o700);
    let _ = std::fs::remove_dir_all(&parent);
}

/// A WebSocket of `identity` (doctor) joined to `room`, without a subscription; the welcome
/// is read.
async fn join(s: &TestServer, room: &str, identity: &str) -> Ws {
    let mut ws = open_ws(s, room, identity).await;
    send_join(&mut ws).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                if let Ok(ServerMsg::Welcome { .. }) = signal::parse_server(&t) {
                    return ws;
                }
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("no welcome for {identity}: {other:?}"),
        }
    }
}

/// A join that the server refuses: the close frame it ends with.
async fn refused_join(s: &TestServer, room: &str, identity: &str) -> (CloseCode, String) {
    let mut ws = open_ws(s, room, identity).await;
    send_join(&mut ws).await;
    close_frame(&mut ws, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("the join of {identity} was not closed"))
}

async fn open_ws(s: &TestServer, room: &str, identity: &str) -> Ws {
    let url = format!(
        "{}/ws/{room}?token={}",
        s.base.replace("http://", "ws://"),
        s.token(room, Role::Doctor, identity)
    );
    tokio_tungstenite::connect_async(&url)
        .await
        .expect("websocket opens")
        .0
}

async fn send_join(ws: &mut Ws) {
    let join = ClientMsg::Join {
        subscribe: false,
        from: None,
    };
    ws.send(Message::Text(signal::to_text(&join).into()))
        .await
        .unwrap();
}

/// Reads until the close frame (its code and reason); `None` if the socket ends without one or
/// stays open past `timeout`.
async fn close_frame(ws: &mut Ws, timeout: Duration) -> Option<(CloseCode, String)> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(f))))) => return Some((f.code, f.reason.to_string())),
            Ok(Some(Ok(_))) => {}
            _ => return None,
        }
    }
}

/// Whether the socket ends (close frame, reset or end of stream) within `timeout`.
async fn closed_within(ws: &mut Ws, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) => return true,
            Ok(Some(Ok(_))) => {}
            Err(_) => return false,
        }
    }
}

/// This process's resident memory, MB (the server runs in it).
fn rss_mb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb / 1024)
        .expect("VmRSS in /proc/self/status")
}

/// Open file descriptors of this process.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn temp_dir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "cabine-abuse-{what}-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}
