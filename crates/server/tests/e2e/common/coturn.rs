//! A real coturn for the TURN tests (Debian's `turnserver`, `use-auth-secret`, TLS with a
//! certificate made here), TURN allocations against it (webrtc-rs' client over UDP, STUN
//! messages on a rustls stream for TLS), and a relay-only kiosk session through it.
//!
//! Needs `/usr/bin/turnserver` (`apt-get install coturn`; `scripts/test` installs it): a
//! missing coturn fails the test with what to install, it never skips.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cabine_client::{ClientOptions, Publisher};
use cabine_server::turn::IceServersReply;
use cabine_server::Config;
use rand::Rng;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use webrtc::stun::agent::TransactionId;
use webrtc::stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
use webrtc::stun::error_code::ErrorCodeAttribute;
use webrtc::stun::fingerprint::FINGERPRINT;
use webrtc::stun::integrity::MessageIntegrity;
use webrtc::stun::message::{
    Getter, Message, MessageType, Setter, CLASS_ERROR_RESPONSE, CLASS_REQUEST, METHOD_ALLOCATE,
    METHOD_REFRESH,
};
use webrtc::stun::textattrs::{Nonce, Realm, TextAttribute};
use webrtc::turn::proto::lifetime::Lifetime;
use webrtc::turn::proto::relayaddr::RelayedAddress;
use webrtc::turn::proto::reqtrans::RequestedTransport;
use webrtc::turn::proto::PROTO_UDP;
use webrtc::util::Conn;

const TURNSERVER: &str = "/usr/bin/turnserver";
pub const TURN_SECRET: &str = "turn-test-secret-0123456789abcdef";

/// A coturn process listening on `ip`: `port` (UDP and TCP) and `tls_port`, relaying from
/// 127.0.0.1; killed on drop.
pub struct Coturn {
    child: Child,
    dir: PathBuf,
    pub ip: Ipv4Addr,
    pub port: u16,
    pub tls_port: u16,
    cert_der: Vec<u8>,
}

impl Coturn {
    /// On 127.0.0.1, free ports.
    pub fn start(secret: &str) -> Coturn {
        Coturn::start_on(
            secret,
            Ipv4Addr::LOCALHOST,
            free_port(true),
            free_port(false),
        )
    }

    /// On `ip`, the given ports.
    pub fn start_on(secret: &str, ip: Ipv4Addr, port: u16, tls_port: u16) -> Coturn {
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
            // The shipped peer policy denies every peer but Cabine's media address (compose
            // passes it as --allowed-peer-ip): here the SFU's, 127.0.0.1 or `ip`.
            "--allowed-peer-ip=127.0.0.1",
            &format!("--allowed-peer-ip={ip}"),
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
        .chain(shipped_policy())
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

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("turn.log")).unwrap_or_default()
    }

    /// The `[turn] urls` for this coturn.
    pub fn urls(&self) -> Vec<String> {
        vec![
            format!("turn:{}:{}?transport=udp", self.ip, self.port),
            format!("turns:{}:{}?transport=tcp", self.ip, self.tls_port),
        ]
    }

    /// Its UDP (and plain TCP) address.
    pub fn addr(&self) -> SocketAddr {
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

/// The peer policy and quotas of `deploy/turn/turnserver.conf` as command-line options, so
/// the tests run coturn under the policy that ships (deny every peer but the allowed ones, no
/// TCP relays, quotas).
pub fn shipped_policy() -> Vec<String> {
    const KEYS: [&str; 6] = [
        "denied-peer-ip",
        "no-multicast-peers",
        "no-tcp-relay",
        "user-quota",
        "total-quota",
        "max-bps",
    ];
    let conf =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/turn/turnserver.conf");
    let conf = std::fs::read_to_string(&conf).unwrap_or_else(|e| panic!("{}: {e}", conf.display()));
    let policy: Vec<String> = conf
        .lines()
        .map(str::trim)
        .filter(|l| {
            let key = l.split('=').next().unwrap_or_default();
            !l.starts_with('#') && KEYS.contains(&key)
        })
        .map(|l| format!("--{l}"))
        .collect();
    for key in KEYS {
        assert!(
            policy.iter().any(|p| p[2..].split('=').next() == Some(key)),
            "deploy/turn/turnserver.conf has no {key}"
        );
    }
    policy
}

/// A port free on 127.0.0.1 for TCP (and UDP when `udp`).
pub fn free_port(udp: bool) -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if !udp || std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub fn with_turn(c: &mut Config, urls: Vec<String>) {
    c.turn.urls = urls;
    c.turn.secret = TURN_SECRET.into();
    c.turn.ttl = Duration::from_secs(600);
}

/// A TURN allocation over UDP with webrtc-rs' client: the relayed address, or the error.
pub async fn allocate_udp(
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
pub async fn allocate_tls(
    c: &Coturn,
    username: &str,
    password: &str,
) -> Result<SocketAddr, String> {
    let mut tls = connect_tls(c).await?;
    tokio::time::timeout(
        Duration::from_secs(10),
        allocate_on_stream(&mut tls, username, password),
    )
    .await
    .map_err(|_| "no answer in 10 s".to_string())?
    .map(|a| a.relayed)
}

/// A TURN allocation over TLS kept open, to refresh it later ([`TlsAllocation::refresh`]).
pub struct TlsAllocation {
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    /// The relayed address.
    pub relayed: SocketAddr,
    nonce: Nonce,
    realm: Realm,
}

impl TlsAllocation {
    /// Allocates over TLS with `username`/`password`.
    pub async fn open(c: &Coturn, username: &str, password: &str) -> Result<Self, String> {
        let mut tls = connect_tls(c).await?;
        let a = tokio::time::timeout(
            Duration::from_secs(10),
            allocate_on_stream(&mut tls, username, password),
        )
        .await
        .map_err(|_| "no answer in 10 s".to_string())??;
        Ok(TlsAllocation {
            tls,
            relayed: a.relayed,
            nonce: a.nonce,
            realm: a.realm,
        })
    }

    /// A Refresh request (RFC 8656 §7) asking for `lifetime`, signed with `username`/
    /// `password`: the lifetime granted, or the error response.
    pub async fn refresh(
        &mut self,
        username: &str,
        password: &str,
        lifetime: Duration,
    ) -> Result<Duration, String> {
        let mut m = Message::new();
        let setters: Vec<Box<dyn Setter>> = vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_REFRESH, CLASS_REQUEST)),
            Box::new(Lifetime(lifetime)),
            Box::new(TextAttribute::new(ATTR_USERNAME, username.into())),
            Box::new(self.realm.clone()),
            Box::new(self.nonce.clone()),
            Box::new(MessageIntegrity::new_long_term_integrity(
                username.into(),
                self.realm.text.clone(),
                password.into(),
            )),
            Box::new(FINGERPRINT),
        ];
        m.build(&setters).unwrap();
        let res = tokio::time::timeout(Duration::from_secs(10), exchange(&mut self.tls, &m))
            .await
            .map_err(|_| "no answer in 10 s".to_string())??;
        if res.typ.class == CLASS_ERROR_RESPONSE {
            let mut code = ErrorCodeAttribute::default();
            let _ = code.get_from(&res);
            return Err(format!("{} (error {code})", res.typ));
        }
        let mut granted = Lifetime::default();
        granted.get_from(&res).map_err(|e| e.to_string())?;
        Ok(granted.0)
    }
}

/// A TLS connection to coturn's TLS port, its certificate trusted.
async fn connect_tls(
    c: &Coturn,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
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
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with coturn: {e}"))
}

/// What an allocation on a stream gave: the relayed address, and the nonce and realm later
/// requests on it are signed with.
struct StreamAllocation {
    relayed: SocketAddr,
    nonce: Nonce,
    realm: Realm,
}

async fn allocate_on_stream<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    username: &str,
    password: &str,
) -> Result<StreamAllocation, String> {
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
        Box::new(nonce.clone()),
        Box::new(MessageIntegrity::new_long_term_integrity(
            username.into(),
            realm.text.clone(),
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
    Ok(StreamAllocation {
        relayed: SocketAddr::new(relayed.ip, relayed.port),
        nonce,
        realm,
    })
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

pub async fn ice_servers(base: &str, token: Option<&str>) -> reqwest::Response {
    let mut r = reqwest::Client::new().get(format!("{base}/api/ice-servers"));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().await.unwrap()
}

/// The TURN credential of an `/api/ice-servers` answer.
pub fn turn_credential(reply: &IceServersReply) -> (String, String) {
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
/// A relay-only kiosk publishes a microphone over WHIP on `base` in `room`, a relay-only
/// doctor subscribes over WHEP (both with the endpoint's ICE servers only), and 50 consecutive
/// payloads arrive intact; `/api/rooms` (read with the operator token `ops`) reports both
/// sessions as `relay/<protocol>`: coturn relays to Cabine over UDP whatever the client used to
/// reach it, so the protocol is the clients' own report (`Cabine-Relay-Protocol`, sent when all
/// their TURN URLs use one transport), `unknown` without one; the error names the step that failed.
pub async fn relay_only_media(
    base: &str,
    room: &str,
    (kiosk, doctor, ops): (&str, &str, &str),
    opts: ClientOptions,
    protocol: &str,
) -> Result<(), String> {
    super::mic_pair::microphone_to_doctor(
        base,
        room,
        (kiosk, doctor, ops),
        opts,
        |publisher| {
            if publisher_offer_is_relay_only(publisher) {
                Ok(())
            } else {
                Err(format!(
                    "the offer has non-relay candidates:\n{}",
                    publisher.offer_sdp()
                ))
            }
        },
        |t| t["protocol"] == protocol && t["candidate"] == "relay",
    )
    .await
    .map(|_| ())
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
