//! TURN with a real coturn (Debian's `turnserver`, started by each test on free loopback ports,
//! `use-auth-secret` with the secret Cabine has, TLS with a certificate the test makes):
//! credentials Cabine mints allocate over UDP (webrtc-rs' TURN client) and over TLS (a STUN
//! exchange on a rustls stream); forged, tampered and expired ones are refused by coturn; the
//! ICE servers reach clients as RFC 9725 `Link` headers on POST and OPTIONS, in the WebSocket
//! `welcome` and at `GET /api/ice-servers` (token-checked); and `cabine-kiosk` with
//! `relay_only` publishes and subscribes through coturn with nothing but the `Link` headers.
//!
//! Needs `/usr/bin/turnserver` (`apt-get install coturn`; `scripts/test` installs it): a
//! missing coturn fails the test with what to install, it never skips.

use crate::common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use cabine_kiosk::{parse_ice_links, ClientOptions, Publisher, Subscriber, TrackSpec};
use cabine_proto::signal::{self, ClientMsg, ServerMsg};
use cabine_proto::Role;
use cabine_server::turn::{rest_password, IceServersReply, TurnConfig};
use cabine_server::Config;
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use webrtc::stun::agent::TransactionId;
use webrtc::stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
use webrtc::stun::error_code::ErrorCodeAttribute;
use webrtc::stun::fingerprint::FINGERPRINT;
use webrtc::stun::integrity::MessageIntegrity;
use webrtc::stun::message::{
    Getter, Message, MessageType, Setter, CLASS_ERROR_RESPONSE, CLASS_REQUEST, METHOD_ALLOCATE,
};
use webrtc::stun::textattrs::{Nonce, Realm, TextAttribute};
use webrtc::turn::proto::relayaddr::RelayedAddress;
use webrtc::turn::proto::reqtrans::RequestedTransport;
use webrtc::turn::proto::PROTO_UDP;
use webrtc::util::Conn;

const TURNSERVER: &str = "/usr/bin/turnserver";
pub(crate) const TURN_SECRET: &str = "turn-test-secret-0123456789abcdef";
const ROOM: &str = "room-turn";

/// A coturn process listening on `ip`: `port` (UDP and TCP) and `tls_port`, relaying from
/// 127.0.0.1; killed on drop.
pub(crate) struct Coturn {
    child: Child,
    dir: PathBuf,
    pub(crate) ip: Ipv4Addr,
    pub(crate) port: u16,
    pub(crate) tls_port: u16,
    cert_der: Vec<u8>,
}

impl Coturn {
    /// On 127.0.0.1, free ports.
    fn start(secret: &str) -> Coturn {
        Coturn::start_on(
            secret,
            Ipv4Addr::LOCALHOST,
            free_port(true),
            free_port(false),
        )
    }

    /// On `ip`, the given ports.
    pub(crate) fn start_on(secret: &str, ip: Ipv4Addr, port: u16, tls_port: u16) -> Coturn {
        assert!(
            std::path::Path::new(TURNSERVER).exists(),
            "the TURN tests need coturn: `apt-get install coturn` ({TURNSERVER}; scripts/test \
             installs it)"
        );
        let dir = std::env::temp_dir().join(format!(
            "cabine-coturn-{}-{:08x}",
            std::process::id(),
            rand::rng().random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let cert =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), ip.to_string()]).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
        // Relay ports: a random window (coturn skips the ones in use).
        let min = rand::rng().random_range(40_000u16..60_000);
        let args: Vec<String> = [
            "-n",
            &format!("--listening-ip={ip}"),
            &format!("--listening-port={port}"),
            &format!("--tls-listening-port={tls_port}"),
            "--relay-ip=127.0.0.1",
            &format!("--min-port={min}"),
            &format!("--max-port={}", min + 200),
            "--use-auth-secret",
            &format!("--static-auth-secret={secret}"),
            "--realm=cabine",
            "--no-cli",
            "--no-dtls",
            // The SFU is on 127.0.0.1 too; production coturns keep loopback peers refused.
            "--allow-loopback-peers",
            &format!("--cert={}", dir.join("cert.pem").display()),
            &format!("--pkey={}", dir.join("key.pem").display()),
            &format!("--pidfile={}", dir.join("turnserver.pid").display()),
            &format!("--db={}", dir.join("turndb").display()),
            "--log-file=stdout",
            // Sessions and allocations are logged in verbose mode only.
            "--verbose",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let log = std::fs::File::create(dir.join("turn.log")).unwrap();
        // Line-buffered, so the log can be read while coturn runs.
        let child = Command::new("stdbuf")
            .arg("-oL")
            .arg(TURNSERVER)
            .args(&args)
            .stdout(Stdio::from(log))
            .stderr(Stdio::null())
            .spawn()
            .expect("turnserver starts");
        let mut c = Coturn {
            child,
            dir,
            ip,
            port,
            tls_port,
            cert_der: cert.cert.der().to_vec(),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let up = [port, tls_port]
                .iter()
                .all(|p| std::net::TcpStream::connect((ip, *p)).is_ok());
            if up {
                break;
            }
            if let Ok(Some(status)) = c.child.try_wait() {
                panic!("turnserver exited ({status}):\n{}", c.log());
            }
            assert!(
                Instant::now() < deadline,
                "turnserver not listening after 15 s:\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("turn.log")).unwrap_or_default()
    }

    /// The `[turn] urls` for this coturn.
    pub(crate) fn urls(&self) -> Vec<String> {
        vec![
            format!("turn:{}:{}?transport=udp", self.ip, self.port),
            format!("turns:{}:{}?transport=tcp", self.ip, self.tls_port),
        ]
    }

    /// Its UDP (and plain TCP) address.
    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip.into(), self.port)
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port free on 127.0.0.1 for TCP (and UDP when `udp`).
pub(crate) fn free_port(udp: bool) -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if !udp || std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub(crate) fn with_turn(c: &mut Config, urls: Vec<String>) {
    c.turn.urls = urls;
    c.turn.secret = TURN_SECRET.into();
    c.turn.ttl = Duration::from_secs(600);
}

/// A TURN allocation over UDP with webrtc-rs' client: the relayed address, or the error.
pub(crate) async fn allocate_udp(
    server: SocketAddr,
    username: &str,
    password: &str,
) -> Result<SocketAddr, String> {
    let conn = Arc::new(tokio::net::UdpSocket::bind("0.0.0.0:0").await.unwrap());
    let client = webrtc::turn::client::Client::new(webrtc::turn::client::ClientConfig {
        stun_serv_addr: String::new(),
        turn_serv_addr: server.to_string(),
        username: username.into(),
        password: password.into(),
        realm: String::new(),
        software: String::new(),
        rto_in_ms: 0,
        conn,
        vnet: None,
    })
    .await
    .map_err(|e| e.to_string())?;
    client.listen().await.map_err(|e| e.to_string())?;
    let result = tokio::time::timeout(Duration::from_secs(10), client.allocate())
        .await
        .map_err(|_| "no answer in 10 s".to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
        .and_then(|relay| relay.local_addr().map_err(|e| e.to_string()));
    let _ = client.close().await;
    result
}

/// A TURN allocation over TLS (`turns:`): the same two-step exchange (401 with a nonce, then
/// the request with MESSAGE-INTEGRITY) as STUN messages on a rustls stream.
pub(crate) async fn allocate_tls(
    c: &Coturn,
    username: &str,
    password: &str,
) -> Result<SocketAddr, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(c.cert_der.clone().into()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect((c.ip, c.tls_port))
        .await
        .map_err(|e| format!("TCP to coturn's TLS port: {e}"))?;
    let name = rustls::pki_types::ServerName::IpAddress(IpAddr::V4(c.ip).into());
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with coturn: {e}"))?;
    tokio::time::timeout(
        Duration::from_secs(10),
        allocate_on_stream(&mut tls, username, password),
    )
    .await
    .map_err(|_| "no answer in 10 s".to_string())?
}

async fn allocate_on_stream<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    username: &str,
    password: &str,
) -> Result<SocketAddr, String> {
    let mut first = Message::new();
    let setters: Vec<Box<dyn Setter>> = vec![
        Box::new(TransactionId::new()),
        Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
        Box::new(RequestedTransport {
            protocol: PROTO_UDP,
        }),
        Box::new(FINGERPRINT),
    ];
    first.build(&setters).unwrap();
    let challenge = exchange(s, &first).await?;
    let nonce = Nonce::get_from_as(&challenge, ATTR_NONCE).map_err(|e| e.to_string())?;
    let realm = Realm::get_from_as(&challenge, ATTR_REALM).map_err(|e| e.to_string())?;
    let mut second = Message::new();
    let setters: Vec<Box<dyn Setter>> = vec![
        Box::new(TransactionId::new()),
        Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
        Box::new(RequestedTransport {
            protocol: PROTO_UDP,
        }),
        Box::new(TextAttribute::new(ATTR_USERNAME, username.into())),
        Box::new(realm.clone()),
        Box::new(nonce),
        Box::new(MessageIntegrity::new_long_term_integrity(
            username.into(),
            realm.text,
            password.into(),
        )),
        Box::new(FINGERPRINT),
    ];
    second.build(&setters).unwrap();
    let res = exchange(s, &second).await?;
    if res.typ.class == CLASS_ERROR_RESPONSE {
        let mut code = ErrorCodeAttribute::default();
        let _ = code.get_from(&res);
        return Err(format!("{} (error {code})", res.typ));
    }
    let mut relayed = RelayedAddress::default();
    relayed.get_from(&res).map_err(|e| e.to_string())?;
    Ok(SocketAddr::new(relayed.ip, relayed.port))
}

/// Writes a STUN message and reads the answer (the 20-byte header says the body length).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    m: &Message,
) -> Result<Message, String> {
    s.write_all(&m.raw).await.map_err(|e| e.to_string())?;
    let mut header = [0u8; 20];
    s.read_exact(&mut header).await.map_err(|e| e.to_string())?;
    let len = u16::from_be_bytes([header[2], header[3]]) as usize;
    let mut raw = header.to_vec();
    raw.resize(20 + len, 0);
    s.read_exact(&mut raw[20..])
        .await
        .map_err(|e| e.to_string())?;
    let mut res = Message::new();
    res.raw = raw;
    res.decode().map_err(|e| e.to_string())?;
    Ok(res)
}

pub(crate) async fn ice_servers(base: &str, token: Option<&str>) -> reqwest::Response {
    let mut r = reqwest::Client::new().get(format!("{base}/api/ice-servers"));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().await.unwrap()
}

/// The TURN credential of an `/api/ice-servers` answer.
pub(crate) fn turn_credential(reply: &IceServersReply) -> (String, String) {
    let turn = reply
        .ice_servers
        .iter()
        .find(|s| s.username.is_some())
        .unwrap_or_else(|| panic!("no TURN server in {reply:?}"));
    (
        turn.username.clone().unwrap(),
        turn.credential.clone().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minted_credentials_allocate_on_coturn_over_udp_and_tls() {
    let coturn = Coturn::start(TURN_SECRET);
    let urls = coturn.urls();
    let s = common::start_with(|c| with_turn(c, urls.clone())).await;
    let token = s.token(ROOM, Role::Kiosk, "kiosk-1");
    let reply: IceServersReply = ice_servers(&s.base, Some(&token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(reply.ttl_s, Some(600));
    let turn = reply
        .ice_servers
        .iter()
        .find(|s| s.username.is_some())
        .unwrap();
    assert_eq!(turn.urls, urls);
    let (user, pass) = turn_credential(&reply);

    let relayed = allocate_udp(coturn.addr(), &user, &pass)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "coturn refused Cabine's credential over UDP: {e}\n{}",
                coturn.log()
            )
        });
    assert_eq!(relayed.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    let relayed = allocate_tls(&coturn, &user, &pass)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "coturn refused Cabine's credential over TLS: {e}\n{}",
                coturn.log()
            )
        });
    assert_eq!(relayed.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    s.server.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tampered_and_expired_credentials_are_refused_by_coturn() {
    let coturn = Coturn::start(TURN_SECRET);
    let urls = coturn.urls();
    let s = common::start_with(|c| with_turn(c, urls)).await;
    let token = s.token(ROOM, Role::Doctor, "dr-1");
    let reply: IceServersReply = ice_servers(&s.base, Some(&token))
        .await
        .json()
        .await
        .unwrap();
    let (user, pass) = turn_credential(&reply);

    // Forged: the right scheme with another secret.
    let forged = rest_password(b"not-the-coturn-secret-0123456789", &user);
    // Tampered: the expiry pushed a day later, the password kept.
    let (expiry, id) = user.split_once(':').unwrap();
    let later = format!("{}:{id}", expiry.parse::<u64>().unwrap() + 86_400);
    // Expired: minted with the right secret, but its lifetime ended a minute ago.
    let cfg = TurnConfig {
        urls: coturn.urls(),
        secret: TURN_SECRET.into(),
        secret_file: PathBuf::new(),
        ttl: Duration::from_secs(60),
    };
    let turn = cfg.load().unwrap().unwrap();
    let expired = turn.mint(SystemTime::now() - Duration::from_secs(120));
    assert!(expired.expires < SystemTime::now());

    for (what, u, p) in [
        ("forged", user.as_str(), forged.as_str()),
        ("tampered expiry", later.as_str(), pass.as_str()),
        (
            "expired",
            expired.username.as_str(),
            expired.password.as_str(),
        ),
    ] {
        let udp = allocate_udp(coturn.addr(), u, p).await;
        assert!(
            udp.as_ref().is_err_and(|e| e.contains("401")),
            "{what} credential over UDP: {udp:?}\n{}",
            coturn.log()
        );
        let tls = allocate_tls(&coturn, u, p).await;
        assert!(
            tls.as_ref().is_err_and(|e| e.contains("401")),
            "{what} credential over TLS: {tls:?}\n{}",
            coturn.log()
        );
    }
    // The same coturn accepts the genuine one: the refusals are about the credentials.
    allocate_udp(coturn.addr(), &user, &pass)
        .await
        .unwrap_or_else(|e| panic!("genuine credential refused: {e}\n{}", coturn.log()));
    s.server.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_servers_reach_clients_in_link_headers_welcome_and_api() {
    let turn_urls = vec![
        "turns:turn.example.org:443?transport=tcp".to_string(),
        "turn:turn.example.org:3478?transport=udp".to_string(),
    ];
    let stun = "stun:stun.example.org:3478";
    let s = common::start_with(|c| {
        with_turn(c, turn_urls.clone());
        c.ice.servers = vec![stun.into()];
    })
    .await;
    let kiosk = s.token(ROOM, Role::Kiosk, "kiosk-1");
    let check = |what: &str, servers: &[cabine_kiosk::IceServer], seen: &mut Vec<String>| {
        let urls: Vec<&str> = servers.iter().map(|s| s.urls[0].as_str()).collect();
        assert_eq!(urls, [stun, &turn_urls[0], &turn_urls[1]], "{what}");
        assert!(
            servers[0].username.is_empty(),
            "{what}: STUN has no credential"
        );
        let (user, cred) = (&servers[1].username, &servers[1].credential);
        assert_eq!((user, cred), (&servers[2].username, &servers[2].credential));
        assert_eq!(*cred, rest_password(TURN_SECRET.as_bytes(), user), "{what}");
        let (expiry, id) = user.split_once(':').unwrap();
        let expiry: u64 = expiry.parse().unwrap();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(expiry > now + 500 && expiry <= now + 600, "{what}: {user}");
        assert!(
            !id.contains("kiosk") && !id.contains(ROOM),
            "{what}: {user}"
        );
        assert!(
            !seen.contains(user),
            "{what}: a fresh credential per session"
        );
        seen.push(user.clone());
    };
    let mut seen = Vec::new();
    let links = |h: &reqwest::header::HeaderMap| -> Vec<String> {
        h.get_all("link")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    };

    // POST: 201 with the Link headers of RFC 9725 §4.6.
    let (status, h, body) = common::post_sdp(
        &format!("{}/whip/{ROOM}", s.base),
        Some(&kiosk),
        "application/sdp",
        common::sdp_offer("sendonly"),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let raw = links(&h);
    assert_eq!(raw.len(), 3, "{raw:?}");
    for l in &raw[1..] {
        assert!(
            l.contains("rel=\"ice-server\"")
                && l.contains("username=\"")
                && l.contains("credential=\"")
                && l.contains("credential-type=\"password\""),
            "{l}"
        );
    }
    check(
        "POST",
        &parse_ice_links(raw.iter().map(String::as_str)),
        &mut seen,
    );

    // OPTIONS with a token for the room (WHIP and WHEP): fresh credentials.
    let client = reqwest::Client::new();
    for path in ["whip", "whep"] {
        let r = client
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/{path}/{ROOM}", s.base),
            )
            .bearer_auth(&kiosk)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        let raw = links(r.headers());
        check(
            path,
            &parse_ice_links(raw.iter().map(String::as_str)),
            &mut seen,
        );
    }
    // OPTIONS without a token (a CORS preflight) or with another room's: STUN only, no
    // credential for anonymous callers.
    let other = s.token("another-room", Role::Kiosk, "kiosk-1");
    for token in [None, Some(other.as_str())] {
        let mut r = client.request(reqwest::Method::OPTIONS, format!("{}/whip/{ROOM}", s.base));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 204);
        assert_eq!(
            links(r.headers()),
            [format!("<{stun}>; rel=\"ice-server\"")]
        );
    }

    // GET /api/ice-servers: 401 without a valid token, the servers with one.
    assert_eq!(ice_servers(&s.base, None).await.status(), 401);
    assert_eq!(ice_servers(&s.base, Some("not.a.jwt")).await.status(), 401);
    let r = ice_servers(&s.base, Some(&kiosk)).await;
    assert_eq!(r.status(), 200);
    let reply: IceServersReply = r.json().await.unwrap();
    let as_kiosk = |servers: &[signal::IceServer]| -> Vec<cabine_kiosk::IceServer> {
        servers
            .iter()
            .flat_map(|s| {
                s.urls.iter().map(|u| cabine_kiosk::IceServer {
                    urls: vec![u.clone()],
                    username: s.username.clone().unwrap_or_default(),
                    credential: s.credential.clone().unwrap_or_default(),
                })
            })
            .collect()
    };
    check("api", &as_kiosk(&reply.ice_servers), &mut seen);

    // The WebSocket welcome.
    let ws_url = format!(
        "{}/ws/{ROOM}?token={}",
        s.base.replace("http://", "ws://"),
        s.token(ROOM, Role::Doctor, "dr-1")
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    let join = signal::to_text(&ClientMsg::Join {
        subscribe: false,
        from: None,
    });
    ws.send(tokio_tungstenite::tungstenite::Message::text(join))
        .await
        .unwrap();
    let welcome = loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("welcome within 10 s")
            .expect("socket open")
            .unwrap();
        if let tokio_tungstenite::tungstenite::Message::Text(t) = frame {
            if let Ok(ServerMsg::Welcome { ice_servers, .. }) = signal::parse_server(&t) {
                break ice_servers;
            }
        }
    };
    check("welcome", &as_kiosk(&welcome), &mut seen);
    s.server.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kiosk_relay_only_publishes_and_subscribes_through_coturn_over_udp() {
    let coturn = Coturn::start(TURN_SECRET);
    let s = common::start_with(|c| with_turn(c, coturn.urls()[..1].to_vec())).await;
    let kiosk = s.token(ROOM, Role::Kiosk, "kiosk-1");
    let relay_only = ClientOptions {
        relay_only: true,
        ..ClientOptions::default()
    };

    // Without the server's ICE servers a relay-only client has no candidate: it cannot connect.
    let refused = Publisher::connect(
        &format!("{}/whip/{ROOM}", s.base),
        &kiosk,
        vec![TrackSpec::audio("kiosk-1", "microphone")],
        ClientOptions {
            endpoint_ice_servers: false,
            connect_timeout: Duration::from_secs(3),
            ..relay_only.clone()
        },
    )
    .await;
    assert!(refused.is_err(), "relay-only connected without TURN");

    // With them (no --turn): both directions through coturn.
    let doctor = s.token(ROOM, Role::Doctor, "dr-1");
    let ops = s.token("*", Role::Operator, "ops-1");
    relay_only_media(&s.base, ROOM, &kiosk, &doctor, &ops, relay_only)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", coturn.log()));
    let log = coturn.log();
    assert!(
        log.matches("ALLOCATE processed, success").count() >= 2,
        "coturn made no allocations:\n{log}"
    );
    s.server.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kiosk_relay_only_publishes_and_subscribes_through_coturn_over_tls() {
    let coturn = Coturn::start(TURN_SECRET);
    // The turns: URL alone: the kiosk's bridge carries its UDP TURN over TLS.
    let s = common::start_with(|c| with_turn(c, coturn.urls()[1..].to_vec())).await;
    let opts = ClientOptions {
        relay_only: true,
        // coturn's certificate is the test's own.
        accept_invalid_certs: true,
        ..ClientOptions::default()
    };
    relay_only_media(
        &s.base,
        ROOM,
        &s.token(ROOM, Role::Kiosk, "kiosk-1"),
        &s.token(ROOM, Role::Doctor, "dr-1"),
        &s.token("*", Role::Operator, "ops-1"),
        opts,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", coturn.log()));
    // Only the turns: URL was given: these allocations came over TLS.
    let log = coturn.log();
    assert!(
        log.matches("ALLOCATE processed, success").count() >= 2,
        "coturn made no allocations:\n{log}"
    );
    s.server.shutdown(Duration::from_millis(100)).await;
}

/// A relay-only kiosk publishes a microphone over WHIP on `base` in `room`, a relay-only
/// doctor subscribes over WHEP (both with the endpoint's ICE servers only), and 50 consecutive
/// payloads arrive intact; `/api/rooms` (read with the operator token `ops`) reports both
/// sessions as `relay/udp` (coturn relays to Cabine over UDP whatever the client used to reach
/// it); the error names the step that failed.
pub(crate) async fn relay_only_media(
    base: &str,
    room: &str,
    kiosk: &str,
    doctor: &str,
    ops: &str,
    opts: ClientOptions,
) -> Result<(), String> {
    let publisher = Publisher::connect(
        &format!("{base}/whip/{room}"),
        kiosk,
        vec![TrackSpec::audio("kiosk-1", "microphone")],
        opts.clone(),
    )
    .await
    .map_err(|e| format!("relay-only publisher: {e}"))?;
    if !publisher_offer_is_relay_only(&publisher) {
        return Err(format!(
            "the offer has non-relay candidates:\n{}",
            publisher.offer_sdp()
        ));
    }
    let doctor = Subscriber::connect(
        &format!("{base}/whep/{room}"),
        doctor,
        ClientOptions {
            recv_video: 0,
            recv_audio: 1,
            ..opts
        },
    )
    .await
    .map_err(|e| format!("relay-only subscriber: {e}"))?;
    let sender = tokio::spawn(async move {
        for i in 0..400 {
            let track = &publisher.tracks()[0];
            if track
                .write_rtp(&common::payload(1, i), true, 480)
                .await
                .is_err()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        publisher
    });
    let track = doctor
        .next_track(Duration::from_secs(10))
        .await
        .map_err(|e| format!("the doctor gets no microphone track: {e}"))?;
    let mut got = Vec::new();
    while got.len() < 50 {
        let p = track
            .read_rtp_timeout(Duration::from_secs(5))
            .await
            .map_err(|e| format!("media stopped after {} packets: {e}", got.len()))?;
        got.push(p.payload.to_vec());
    }
    let publisher = sender.await.map_err(|e| e.to_string())?;
    let reported = relayed_sessions(base, room, ops).await;
    let _ = doctor.close().await;
    let _ = publisher.close().await;
    let first = (0..400)
        .position(|i| common::payload(1, i) == got[0])
        .ok_or("a payload that was not sent")?;
    let expected: Vec<Vec<u8>> = (first..first + 50).map(|i| common::payload(1, i)).collect();
    if got != expected {
        return Err("payloads through coturn differ from those sent".into());
    }
    reported.map(|_| ())
}

/// Polls `/api/rooms` until both sessions of `room` report the transport `relay/udp` (the
/// engine reports the selected pair about once a second); the rooms JSON, or why not.
async fn relayed_sessions(base: &str, room: &str, ops: &str) -> Result<String, String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut last = String::new();
    while std::time::Instant::now() < deadline {
        if let Ok(r) = reqwest::Client::new()
            .get(format!("{base}/api/rooms"))
            .bearer_auth(ops)
            .send()
            .await
        {
            last = r.text().await.unwrap_or_default();
            let v: serde_json::Value = serde_json::from_str(&last).unwrap_or_default();
            let relayed = v["rooms"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r["room"] == room)
                .flat_map(|r| r["sessions"].as_array().into_iter().flatten())
                .filter(|s| {
                    s["transport"]["protocol"] == "udp" && s["transport"]["candidate"] == "relay"
                })
                .count();
            if relayed >= 2 {
                return Ok(last);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!(
        "/api/rooms never reported both sessions as relay/udp: {last}"
    ))
}

/// Whether the publisher's offer carries relay candidates only.
fn publisher_offer_is_relay_only(p: &Publisher) -> bool {
    let candidates: Vec<&str> = p
        .offer_sdp()
        .lines()
        .filter(|l| l.starts_with("a=candidate:"))
        .collect();
    !candidates.is_empty() && candidates.iter().all(|c| c.contains(" typ relay"))
}
