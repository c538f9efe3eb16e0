//! ICE-TCP for a stack that speaks UDP only: the `webrtc` crate gathers no TCP candidates, so
//! with [`ClientOptions::ice_tcp`](crate::ClientOptions::ice_tcp) the server's passive TCP
//! candidate (RFC 6544) in an answer is replaced by a UDP host candidate on a local bridge. The
//! bridge carries each datagram the stack sends it over one TCP connection to the server's
//! candidate, framed per RFC 4571 (a 2-byte length), and the server's frames back as datagrams
//! to where the stack last sent from. The server then sees an ICE-TCP client (`prflx/tcp`).
//!
//! The bridge listens on the address this machine uses towards the server, so the stack's own
//! host candidates reach it; its pair ranks below every direct UDP pair, so it carries media
//! only when direct UDP does not get through. That address is reachable from the LAN, so the
//! bridge takes datagrams only from this address (the stack's host candidate on it) and,
//! from the first one on, only from that one source: nobody else on the network can inject
//! into the session's TCP connection or take its return traffic. It ends when the [`Bridge`]
//! is dropped.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

/// Most bytes of one datagram carried (a frame's length says at most 65,535).
const MAX_FRAME: usize = 65_535;

/// A running bridge; dropping it stops it (and closes its TCP connection).
pub(crate) struct Bridge {
    task: JoinHandle<()>,
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// If `answer` has a passive TCP host candidate, starts a bridge to it and returns the answer
/// with that candidate replaced by a UDP host candidate on the bridge; otherwise the answer
/// unchanged and no bridge.
pub(crate) async fn bridge_answer(answer: &str) -> Result<(String, Option<Bridge>)> {
    let Some(server) = passive_tcp_candidate(answer) else {
        return Ok((answer.to_owned(), None));
    };
    let local_ip = route_source(server).await?;
    let udp = UdpSocket::bind(SocketAddr::new(local_ip, 0))
        .await
        .map_err(|e| Error::IceTcpBridge(format!("binding UDP on {local_ip}: {e}")))?;
    let local = udp
        .local_addr()
        .map_err(|e| Error::IceTcpBridge(format!("{e}")))?;
    let rewritten = answer
        .split_inclusive('\n')
        .map(|line| {
            if is_passive_tcp(line) {
                // Below the server's UDP host candidate (type preference 126): 90 as a TCP
                // host candidate would be.
                format!(
                    "a=candidate:tcpbridge 1 udp 1509949951 {} {} typ host\r\n",
                    local.ip(),
                    local.port()
                )
            } else {
                line.to_owned()
            }
        })
        .collect();
    let task = tokio::spawn(run(udp, server));
    tracing::debug!(%local, %server, "ICE-TCP bridge started");
    Ok((rewritten, Some(Bridge { task })))
}

/// The address of the first `a=candidate` line of transport `tcp`, type `host`, `tcptype
/// passive`.
fn passive_tcp_candidate(sdp: &str) -> Option<SocketAddr> {
    sdp.lines().find(|l| is_passive_tcp(l)).and_then(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let ip: IpAddr = f.get(4)?.parse().ok()?;
        let port: u16 = f.get(5)?.parse().ok()?;
        Some(SocketAddr::new(ip, port))
    })
}

fn is_passive_tcp(line: &str) -> bool {
    let f: Vec<&str> = line.split_whitespace().collect();
    line.starts_with("a=candidate:")
        && f.get(2).is_some_and(|p| p.eq_ignore_ascii_case("tcp"))
        && f.get(7) == Some(&"host")
        && f.windows(2).any(|w| w == ["tcptype", "passive"])
}

/// The local address this machine sends from towards `server`.
async fn route_source(server: SocketAddr) -> Result<IpAddr> {
    let any: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let probe = UdpSocket::bind(any)
        .await
        .map_err(|e| Error::IceTcpBridge(format!("{e}")))?;
    // A UDP connect sends nothing: it only picks the route and the source address.
    probe
        .connect(server)
        .await
        .map_err(|e| Error::IceTcpBridge(format!("no route to {server}: {e}")))?;
    probe
        .local_addr()
        .map(|a| a.ip())
        .map_err(|e| Error::IceTcpBridge(format!("{e}")))
}

/// Relays until the stack stops sending or either side fails: the TCP connection is opened on
/// the first datagram.
async fn run(udp: UdpSocket, server: SocketAddr) {
    let udp = Arc::new(udp);
    let peer: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    let mut buf = vec![0u8; MAX_FRAME];
    let Ok(local_ip) = udp.local_addr().map(|a| a.ip()) else {
        return;
    };
    // The first datagram from this machine's own address pins its source.
    let (n, pinned) = loop {
        match udp.recv_from(&mut buf).await {
            Ok((n, from)) if from.ip() == local_ip => break (n, from),
            Ok(_) => continue,
            Err(_) => return,
        }
    };
    *peer.lock().await = Some(pinned);
    let stream = match TcpStream::connect(server).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, %server, "ICE-TCP bridge: cannot connect");
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let back = {
        let (udp, peer) = (Arc::clone(&udp), Arc::clone(&peer));
        tokio::spawn(async move {
            let mut frame = vec![0u8; MAX_FRAME];
            loop {
                let mut len = [0u8; 2];
                if rd.read_exact(&mut len).await.is_err() {
                    return;
                }
                let len = usize::from(u16::from_be_bytes(len));
                if len == 0 || rd.read_exact(&mut frame[..len]).await.is_err() {
                    return;
                }
                if let Some(to) = *peer.lock().await {
                    let _ = udp.send_to(&frame[..len], to).await;
                }
            }
        })
    };
    let mut out = Vec::with_capacity(2 + MAX_FRAME);
    let mut pending = Some(n);
    loop {
        let n = match pending.take() {
            Some(n) => n,
            None => match udp.recv_from(&mut buf).await {
                Ok((n, from)) if from == pinned => n,
                // Not the stack's source: dropped.
                Ok(_) => continue,
                Err(_) => break,
            },
        };
        let Ok(len) = u16::try_from(n) else {
            continue;
        };
        if len == 0 {
            continue;
        }
        out.clear();
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&buf[..n]);
        if wr.write_all(&out).await.is_err() {
            break;
        }
    }
    back.abort();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const ANSWER: &str = "v=0\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
        a=candidate:1 1 udp 2130706175 10.0.0.1 7882 typ host\r\n\
        a=candidate:2 1 tcp 1509949695 10.0.0.1 7882 typ host tcptype passive\r\n\
        a=end-of-candidates\r\n";

    #[test]
    fn finds_the_passive_tcp_candidate_only() {
        assert_eq!(
            passive_tcp_candidate(ANSWER),
            Some("10.0.0.1:7882".parse().unwrap())
        );
        assert_eq!(
            passive_tcp_candidate("a=candidate:2 1 tcp 1 10.0.0.1 9 typ host tcptype active\r\n"),
            None
        );
        assert_eq!(
            passive_tcp_candidate("a=candidate:1 1 udp 1 10.0.0.1 7882 typ host\r\n"),
            None
        );
    }

    #[tokio::test]
    async fn the_answer_gets_a_udp_candidate_on_the_bridge_in_place_of_tcp() {
        let answer = ANSWER.replace("10.0.0.1", "127.0.0.1");
        let (rewritten, bridge) = bridge_answer(&answer).await.unwrap();
        assert!(bridge.is_some());
        assert!(!rewritten.contains("tcptype"), "{rewritten}");
        assert!(rewritten.contains("a=candidate:tcpbridge 1 udp 1509949951 127.0.0.1 "));
        assert!(rewritten.contains("a=candidate:1 1 udp 2130706175 127.0.0.1 7882 typ host\r\n"));
        let (same, none) = bridge_answer("v=0\r\n").await.unwrap();
        assert_eq!(same, "v=0\r\n");
        assert!(none.is_none());
    }

    #[tokio::test]
    async fn datagrams_cross_as_rfc_4571_frames_both_ways() {
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        let answer = format!(
            "a=candidate:2 1 tcp 1 127.0.0.1 {} typ host tcptype passive\r\n",
            addr.port()
        );
        let (rewritten, _bridge) = bridge_answer(&answer).await.unwrap();
        let f: Vec<&str> = rewritten.split_whitespace().collect();
        let bridge: SocketAddr = format!("{}:{}", f[4], f[5]).parse().unwrap();
        let stack = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        stack.send_to(b"hello", bridge).await.unwrap();
        let (mut conn, _) = server.accept().await.unwrap();
        let mut got = [0u8; 7];
        conn.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"\x00\x05hello");
        conn.write_all(b"\x00\x03abc").await.unwrap();
        let mut back = [0u8; 16];
        let (n, from) = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            stack.recv_from(&mut back),
        )
        .await
        .expect("a datagram back")
        .unwrap();
        assert_eq!(&back[..n], b"abc");
        assert_eq!(from, bridge);
    }

    #[tokio::test]
    async fn only_the_first_source_on_this_address_is_carried() {
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server_addr = server.local_addr().unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let bridge = udp.local_addr().unwrap();
        let task = tokio::spawn(run(udp, server_addr));
        let stack = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // Another host on the network (another address), and another local process.
        let stranger = UdpSocket::bind("127.0.0.2:0").await.unwrap();
        let local_other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        stranger.send_to(b"stranger-1", bridge).await.unwrap();
        stack.send_to(b"stack-1", bridge).await.unwrap();
        let (mut conn, _) = tokio::time::timeout(Duration::from_secs(10), server.accept())
            .await
            .expect("the bridge connects")
            .unwrap();
        assert_eq!(next_frame(&mut conn).await, b"stack-1");
        stranger.send_to(b"stranger-2", bridge).await.unwrap();
        local_other.send_to(b"other-1", bridge).await.unwrap();
        stack.send_to(b"stack-2", bridge).await.unwrap();
        // In order on one socket: had either been carried, it would come first.
        assert_eq!(next_frame(&mut conn).await, b"stack-2");
        // The server's frames go back to the pinned source only.
        conn.write_all(&[0, 4, b'b', b'a', b'c', b'k'])
            .await
            .unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = tokio::time::timeout(Duration::from_secs(10), stack.recv_from(&mut buf))
            .await
            .expect("the answer comes back")
            .unwrap();
        assert_eq!((&buf[..n], from), (&b"back"[..], bridge));
        task.abort();
    }

    async fn next_frame(conn: &mut TcpStream) -> Vec<u8> {
        let mut len = [0u8; 2];
        conn.read_exact(&mut len).await.unwrap();
        let mut frame = vec![0u8; usize::from(u16::from_be_bytes(len))];
        conn.read_exact(&mut frame).await.unwrap();
        frame
    }
}
