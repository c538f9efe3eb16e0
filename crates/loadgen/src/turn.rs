//! TURN for the generator's WebRTC peers (issue 13's media latency through coturn): a minimal
//! RFC 8656 client over UDP — one allocation per peer with coturn's REST credentials (RFC 5389
//! long-term mechanism), one channel bound to the server's media address, media as ChannelData
//! — and a private coturn (`turnserver`) as a child process.
//!
//! ```text
//! offer: only the relayed candidate ─► answer: the server's UDP host candidate ─► ChannelBind
//! str0m Transmit (source = relayed) ─► ChannelData ─► coturn ─► server
//! coturn ─► ChannelData ─► str0m Receive (source = server, destination = relayed)
//! ```
//!
//! No refresh: an allocation lives 600 s and a channel's permission 300 s, longer than a
//! measurement; runs longer than 5 minutes through TURN lose their permission.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;

/// The shared secret of the private coturn and the credentials minted here.
const SECRET: &str = "cabine-loadgen-turn-secret-0123456789";
/// The realm of the private coturn.
const REALM: &str = "cabine-bench";
const MAGIC: u32 = 0x2112_a442;
/// The channel each peer binds (one peer per allocation: the server's media address).
pub const CHANNEL: u16 = 0x4000;

/// A TURN failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TurnError {
    /// Socket error.
    #[error("turn: {0}")]
    Io(#[from] std::io::Error),
    /// The server refused a request.
    #[error("turn: {0} refused: {1}")]
    Refused(&'static str, String),
    /// No answer in time.
    #[error("turn: no answer to {0}")]
    Timeout(&'static str),
    /// An answer that does not parse.
    #[error("turn: bad answer to {0}")]
    BadAnswer(&'static str),
}

/// Where and as whom peers allocate.
#[derive(Debug, Clone)]
pub struct TurnCredentials {
    /// The TURN server (UDP).
    pub server: SocketAddr,
    /// REST username (`<expiry>:<id>`).
    pub username: String,
    /// REST password (base64 HMAC-SHA1 of the username keyed with the secret).
    pub password: String,
}

impl TurnCredentials {
    /// Credentials for `server` valid for `ttl`, minted with coturn's REST scheme.
    pub fn rest(server: SocketAddr, ttl: Duration) -> TurnCredentials {
        let expiry = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + ttl.as_secs();
        let username = format!("{expiry}:loadgen");
        let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(SECRET.as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(username.as_bytes());
        let password =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        TurnCredentials {
            server,
            username,
            password,
        }
    }
}

/// A peer's allocation on the TURN server.
#[derive(Debug, Clone)]
pub struct Allocation {
    /// The TURN server.
    pub server: SocketAddr,
    /// The relayed transport address (the peer's relay candidate).
    pub relayed: SocketAddr,
    /// The address the channel is bound to, once bound.
    pub peer: Option<SocketAddr>,
    username: String,
    realm: String,
    nonce: String,
    key: [u8; 16],
}

impl Allocation {
    /// Allocates a UDP relay on `creds.server` from `socket` (blocking, then left as it was:
    /// the caller's socket is non-blocking, so this polls it).
    pub fn allocate(socket: &UdpSocket, creds: &TurnCredentials) -> Result<Allocation, TurnError> {
        const WHAT: &str = "Allocate";
        let transport = [17u8, 0, 0, 0];
        // First without credentials: the 401 carries the realm and nonce.
        let first = Message::new(0x0003).attr(0x0019, &transport);
        let r = transact(socket, creds.server, first, None, WHAT)?;
        let (realm, nonce) = match r.error() {
            Some((401, _)) => (
                r.text(0x0014).ok_or(TurnError::BadAnswer(WHAT))?,
                r.text(0x0015).ok_or(TurnError::BadAnswer(WHAT))?,
            ),
            Some((code, why)) => return Err(TurnError::Refused(WHAT, format!("{code} {why}"))),
            None => return Err(TurnError::BadAnswer(WHAT)),
        };
        let key: [u8; 16] =
            Md5::digest(format!("{}:{realm}:{}", creds.username, creds.password)).into();
        let mut a = Allocation {
            server: creds.server,
            relayed: SocketAddr::from(([0, 0, 0, 0], 0)),
            peer: None,
            username: creds.username.clone(),
            realm,
            nonce,
            key,
        };
        let m = a.signed(0x0003).attr(0x0019, &transport);
        let r = transact(socket, creds.server, m, Some(&a.key), WHAT)?;
        if let Some((code, why)) = r.error() {
            return Err(TurnError::Refused(WHAT, format!("{code} {why}")));
        }
        a.relayed = r.xor_address(0x0016).ok_or(TurnError::BadAnswer(WHAT))?;
        Ok(a)
    }

    /// Binds [`CHANNEL`] to `peer` (which also permits it).
    pub fn bind(&mut self, socket: &UdpSocket, peer: SocketAddr) -> Result<(), TurnError> {
        const WHAT: &str = "ChannelBind";
        let mut channel = [0u8; 4];
        channel[..2].copy_from_slice(&CHANNEL.to_be_bytes());
        let m = self
            .signed(0x0009)
            .attr(0x000c, &channel)
            .attr(0x0012, &xor_address(peer));
        let r = transact(socket, self.server, m, Some(&self.key), WHAT)?;
        if let Some((code, why)) = r.error() {
            return Err(TurnError::Refused(WHAT, format!("{code} {why}")));
        }
        self.peer = Some(peer);
        Ok(())
    }

    fn signed(&self, kind: u16) -> Message {
        Message::new(kind)
            .attr(0x0006, self.username.as_bytes())
            .attr(0x0014, self.realm.as_bytes())
            .attr(0x0015, self.nonce.as_bytes())
    }
}

/// Wraps `data` as ChannelData on [`CHANNEL`] into `out` (cleared first).
pub fn channel_data(data: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let len = u16::try_from(data.len()).ok()?;
    out.clear();
    out.extend_from_slice(&CHANNEL.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(data);
    // Over UDP the padding to 4 bytes is optional (RFC 8656 §12.5); none is sent.
    Some(())
}

/// The payload of a ChannelData message on [`CHANNEL`], if `d` is one.
pub fn from_channel(d: &[u8]) -> Option<&[u8]> {
    let ch = u16::from_be_bytes([*d.first()?, *d.get(1)?]);
    let len = usize::from(u16::from_be_bytes([*d.get(2)?, *d.get(3)?]));
    (ch == CHANNEL).then(|| d.get(4..4 + len))?
}

/// The first UDP candidate of an SDP answer (`a=candidate:… udp <priority> <ip> <port> …`).
pub fn udp_candidate(sdp: &str) -> Option<SocketAddr> {
    sdp.lines().find_map(|l| {
        let f: Vec<&str> = l
            .trim()
            .strip_prefix("a=candidate:")?
            .split_whitespace()
            .collect();
        if !f.get(2)?.eq_ignore_ascii_case("udp") {
            return None;
        }
        Some(SocketAddr::new(
            f.get(4)?.parse().ok()?,
            f.get(5)?.parse().ok()?,
        ))
    })
}

/// A private coturn on a free loopback UDP port with REST credentials, relaying to loopback
/// peers, killed on drop.
pub struct Coturn {
    child: Child,
    /// Where it listens (UDP).
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Coturn {
    /// Starts `bin` (Debian's `turnserver`) and waits until it answers an Allocate.
    pub fn start(bin: &Path) -> anyhow::Result<Coturn> {
        let port = UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let dir = std::env::temp_dir().join(format!("cabine-loadgen-turn-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let child = Command::new(bin)
            .arg("-n")
            .args(["--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"])
            .args(["--listening-port", &port.to_string()])
            .args(["--min-port", "49152", "--max-port", "65535"])
            .args(["--realm", REALM, "--use-auth-secret"])
            .args(["--static-auth-secret", SECRET])
            .args([
                "--allow-loopback-peers",
                "--no-tls",
                "--no-dtls",
                "--no-tcp",
            ])
            .args(["--no-cli", "--no-stdout-log", "--simple-log"])
            .arg("--log-file")
            .arg(dir.join("turn.log"))
            .arg("--userdb")
            .arg(dir.join("turndb"))
            .arg("--pidfile")
            .arg(dir.join("turn.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", bin.display()))?;
        let mut t = Coturn { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        let creds = TurnCredentials::rest(addr, Duration::from_secs(60));
        loop {
            let s = UdpSocket::bind("127.0.0.1:0")?;
            s.set_nonblocking(true)?;
            if Allocation::allocate(&s, &creds).is_ok() {
                return Ok(t);
            }
            if let Ok(Some(status)) = t.child.try_wait() {
                anyhow::bail!("turnserver exited at start: {status}");
            }
            if Instant::now() > deadline {
                anyhow::bail!("turnserver not allocating on {addr} after 10 s");
            }
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A STUN message being built.
struct Message {
    kind: u16,
    tx: [u8; 12],
    attrs: Vec<u8>,
}

impl Message {
    fn new(kind: u16) -> Message {
        let mut tx = [0u8; 12];
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        tx.copy_from_slice(&t.to_be_bytes()[4..]);
        Message {
            kind,
            tx,
            attrs: Vec::new(),
        }
    }

    fn attr(mut self, kind: u16, value: &[u8]) -> Message {
        self.attrs.extend_from_slice(&kind.to_be_bytes());
        self.attrs
            .extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.attrs.extend_from_slice(value);
        while !self.attrs.len().is_multiple_of(4) {
            self.attrs.push(0);
        }
        self
    }

    /// The bytes, with MESSAGE-INTEGRITY (HMAC-SHA1 over the message, its length counting
    /// the integrity attribute) when `key` is given.
    fn encode(&self, key: Option<&[u8; 16]>) -> Vec<u8> {
        let mi = if key.is_some() { 24 } else { 0 };
        let mut out = Vec::with_capacity(20 + self.attrs.len() + mi);
        out.extend_from_slice(&self.kind.to_be_bytes());
        out.extend_from_slice(&((self.attrs.len() + mi) as u16).to_be_bytes());
        out.extend_from_slice(&MAGIC.to_be_bytes());
        out.extend_from_slice(&self.tx);
        out.extend_from_slice(&self.attrs);
        if let Some(key) = key {
            let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(key)
                .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
            mac.update(&out);
            out.extend_from_slice(&0x0008u16.to_be_bytes());
            out.extend_from_slice(&20u16.to_be_bytes());
            out.extend_from_slice(&mac.finalize().into_bytes());
        }
        out
    }
}

/// A STUN answer's attributes.
struct Answer {
    attrs: Vec<(u16, Vec<u8>)>,
}

impl Answer {
    fn parse(d: &[u8], tx: &[u8; 12]) -> Option<Answer> {
        if d.len() < 20 || d.get(8..20)? != tx {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([d[2], d[3]]));
        let body = d.get(20..20 + len)?;
        let mut attrs = Vec::new();
        let mut at = 0;
        while at + 4 <= body.len() {
            let kind = u16::from_be_bytes([body[at], body[at + 1]]);
            let l = usize::from(u16::from_be_bytes([body[at + 2], body[at + 3]]));
            attrs.push((kind, body.get(at + 4..at + 4 + l)?.to_vec()));
            at += 4 + l.div_ceil(4) * 4;
        }
        Some(Answer { attrs })
    }

    fn get(&self, kind: u16) -> Option<&[u8]> {
        self.attrs
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| v.as_slice())
    }

    fn text(&self, kind: u16) -> Option<String> {
        self.get(kind)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    fn error(&self) -> Option<(u16, String)> {
        let v = self.get(0x0009)?;
        let code = u16::from(*v.get(2)? & 7) * 100 + u16::from(*v.get(3)?);
        Some((code, String::from_utf8_lossy(v.get(4..)?).into_owned()))
    }

    fn xor_address(&self, kind: u16) -> Option<SocketAddr> {
        let v = self.get(kind)?;
        if *v.get(1)? != 1 {
            return None;
        }
        let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC >> 16) as u16;
        let ip = u32::from_be_bytes([*v.get(4)?, v[5], v[6], v[7]]) ^ MAGIC;
        Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
    }
}

/// XOR-PEER-ADDRESS's value for an IPv4 `a`.
fn xor_address(a: SocketAddr) -> Vec<u8> {
    let ip = match a.ip() {
        IpAddr::V4(ip) => u32::from(ip),
        // Loopback benchmarks only: IPv6 peers are not supported by this client.
        IpAddr::V6(_) => 0,
    };
    let mut v = vec![0, 1];
    v.extend_from_slice(&(a.port() ^ (MAGIC >> 16) as u16).to_be_bytes());
    v.extend_from_slice(&(ip ^ MAGIC).to_be_bytes());
    v
}

/// Sends `m` and waits (up to 2 s, resending every 250 ms) for its answer on `socket`.
fn transact(
    socket: &UdpSocket,
    server: SocketAddr,
    m: Message,
    key: Option<&[u8; 16]>,
    what: &'static str,
) -> Result<Answer, TurnError> {
    let bytes = m.encode(key);
    let mut buf = [0u8; 1500];
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut resend = Instant::now();
    while Instant::now() < deadline {
        if Instant::now() >= resend {
            socket.send_to(&bytes, server)?;
            resend = Instant::now() + Duration::from_millis(250);
        }
        match socket.recv_from(&mut buf) {
            Ok((n, from)) if from == server => {
                if let Some(a) = Answer::parse(&buf[..n], &m.tx) {
                    return Ok(a);
                }
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(TurnError::Timeout(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_data_round_trips_and_others_are_not_taken_for_it() {
        let mut out = Vec::new();
        channel_data(b"rtp", &mut out).unwrap();
        assert_eq!(&out[..4], &[0x40, 0x00, 0, 3]);
        assert_eq!(from_channel(&out), Some(&b"rtp"[..]));
        assert_eq!(from_channel(&out[..5]), None);
        // A STUN message (first byte 0x01) or another channel is not ours.
        assert_eq!(from_channel(&[0x01, 0x01, 0, 0, 0x21]), None);
        assert_eq!(from_channel(&[0x40, 0x01, 0, 1, 9]), None);
        let a: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let v = xor_address(a);
        let ans = Answer {
            attrs: vec![(0x0012, v)],
        };
        assert_eq!(ans.xor_address(0x0012), Some(a));
    }
}
