//! ICE-TCP for the generator's WebRTC peers (issue 13): an active TCP candidate connected to
//! the server's passive one, packets framed per RFC 4571 (a 2-byte big-endian length before
//! each STUN, DTLS, RTP or RTCP packet). str0m leaves the TCP I/O to its caller: this is it.
//!
//! ```text
//! str0m Transmit (proto Tcp) ─► frame ─► pending bytes ─► write (non-blocking; rest kept)
//! read (non-blocking) ─► bytes ─► whole frames ─► str0m Receive (proto Tcp)
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

/// Which transport a WebRTC peer's ICE uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum IceTransport {
    /// A UDP host candidate (the default).
    #[default]
    Udp,
    /// Only an active TCP candidate, towards the server's passive TCP candidate (its
    /// `media.tcp`).
    Tcp,
    /// Only a relayed candidate on a private coturn (UDP to coturn, UDP from coturn to the
    /// server).
    Turn,
}

/// The port an active TCP candidate announces (RFC 6544 §4.5: the discard port, since the
/// connection's own port is only known once it is made).
pub const ACTIVE_PORT: u16 = 9;

/// Bytes waiting to be written before further frames are refused (as a full UDP send buffer
/// would drop them).
const MAX_PENDING: usize = 4 << 20;

/// A link that went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TcpLinkError {
    /// Socket error.
    #[error("tcp: {0}")]
    Io(#[from] std::io::Error),
    /// The server closed the connection.
    #[error("tcp: closed by the server")]
    Closed,
    /// A frame longer than the caller's buffer.
    #[error("tcp: a {0}-byte frame does not fit the receive buffer")]
    FrameTooLong(usize),
}

/// One RFC 4571 connection to the server's passive candidate.
pub struct TcpLink {
    stream: TcpStream,
    /// The server's passive candidate.
    pub remote: SocketAddr,
    /// This peer's active candidate as announced (`ip:9`): str0m's source for what it sends
    /// here, and the destination of what arrives.
    pub local: SocketAddr,
    rx: Vec<u8>,
    rx_start: usize,
    tx: Vec<u8>,
}

impl TcpLink {
    /// Connects to `remote` (blocking, up to 5 s) and makes the socket non-blocking.
    pub fn connect(local: SocketAddr, remote: SocketAddr) -> Result<TcpLink, TcpLinkError> {
        let stream = TcpStream::connect_timeout(&remote, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        Ok(TcpLink {
            stream,
            remote,
            local,
            rx: Vec::with_capacity(64 * 1024),
            rx_start: 0,
            tx: Vec::with_capacity(64 * 1024),
        })
    }

    /// The socket's descriptor (for epoll).
    pub fn fd(&self) -> i32 {
        self.stream.as_raw_fd()
    }

    /// Frames `packet` and writes what the socket takes; the rest waits for [`TcpLink::flush`].
    /// Returns `false` when the packet was refused (too long, or too much already waiting).
    pub fn send(&mut self, packet: &[u8]) -> Result<bool, TcpLinkError> {
        if self.tx.len() + packet.len() + 2 > MAX_PENDING || frame(packet, &mut self.tx).is_none() {
            return Ok(false);
        }
        self.flush()?;
        Ok(true)
    }

    /// Writes what is waiting, as far as the socket takes it.
    pub fn flush(&mut self) -> Result<(), TcpLinkError> {
        let mut written = 0;
        while written < self.tx.len() {
            match self.stream.write(&self.tx[written..]) {
                Ok(0) => return Err(TcpLinkError::Closed),
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
        self.tx.drain(..written);
        Ok(())
    }

    /// Reads what the socket has (non-blocking) into the receive buffer, using `buf` as
    /// scratch.
    pub fn fill(&mut self, buf: &mut [u8]) -> Result<(), TcpLinkError> {
        loop {
            match self.stream.read(buf) {
                Ok(0) => return Err(TcpLinkError::Closed),
                Ok(n) => self.rx.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Copies the next whole frame's packet into `buf` and returns its length; `None` until a
    /// whole frame has arrived.
    pub fn next_frame(&mut self, buf: &mut [u8]) -> Result<Option<usize>, TcpLinkError> {
        let n = next_frame(&self.rx[self.rx_start..], buf)?;
        match n {
            Some(len) => self.rx_start += 2 + len,
            None => {
                // Keep the buffer from growing: drop what was consumed once nothing whole is
                // left.
                self.rx.drain(..self.rx_start);
                self.rx_start = 0;
            }
        }
        Ok(n)
    }
}

/// Frames `packet` per RFC 4571 onto `out`.
pub fn frame(packet: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let len = u16::try_from(packet.len()).ok()?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(packet);
    Some(())
}

/// The first whole frame of `bytes`, copied into `buf`: its length, or `None` if incomplete.
pub fn next_frame(bytes: &[u8], buf: &mut [u8]) -> Result<Option<usize>, TcpLinkError> {
    let Some(head) = bytes.get(..2) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([head[0], head[1]]));
    let Some(packet) = bytes.get(2..2 + len) else {
        return Ok(None);
    };
    let out = buf.get_mut(..len).ok_or(TcpLinkError::FrameTooLong(len))?;
    out.copy_from_slice(packet);
    Ok(Some(len))
}

/// The server's passive TCP candidate in an SDP answer (`a=candidate:… tcp … typ host … tcptype
/// passive`), if it offers one.
pub fn passive_candidate(sdp: &str) -> Option<SocketAddr> {
    sdp.lines().find_map(|l| {
        let c = l.trim().strip_prefix("a=candidate:")?;
        let f: Vec<&str> = c.split_whitespace().collect();
        // foundation component transport priority address port "typ" type …
        if !f.get(2)?.eq_ignore_ascii_case("tcp") {
            return None;
        }
        let passive = f
            .windows(2)
            .any(|w| w[0] == "tcptype" && w[1].eq_ignore_ascii_case("passive"));
        if !passive {
            return None;
        }
        let ip: std::net::IpAddr = f.get(4)?.parse().ok()?;
        let port: u16 = f.get(5)?.parse().ok()?;
        Some(SocketAddr::new(ip, port))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::time::Instant;

    #[test]
    fn frames_cross_a_real_tcp_connection_whole_and_in_order() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let remote = l.local_addr().unwrap();
        let local: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut a = TcpLink::connect(local, remote).unwrap();
        let (mut srv, _) = l.accept().unwrap();
        // Packets of several sizes, the server's side reads them back with the framing.
        let packets: Vec<Vec<u8>> = (0..50u8)
            .map(|i| vec![i; 1 + usize::from(i) * 29])
            .collect();
        for p in &packets {
            assert!(a.send(p).unwrap());
        }
        let want: usize = packets.iter().map(|p| p.len() + 2).sum();
        let mut got = Vec::new();
        srv.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut tmp = [0u8; 4096];
        while got.len() < want {
            a.flush().unwrap();
            let n = srv.read(&mut tmp).unwrap();
            assert!(n > 0, "closed early");
            got.extend_from_slice(&tmp[..n]);
        }
        let mut buf = [0u8; 2048];
        let mut at = 0;
        for p in &packets {
            let n = next_frame(&got[at..], &mut buf).unwrap().unwrap();
            assert_eq!(&buf[..n], p.as_slice());
            at += n + 2;
        }
        // The other way, written in two halves: nothing until the frame is whole.
        let mut wire = Vec::new();
        frame(b"hello, peer", &mut wire).unwrap();
        srv.write_all(&wire[..5]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while a.rx.len() < 5 {
            a.fill(&mut tmp).unwrap();
            assert!(Instant::now() < deadline, "first half not read");
        }
        assert_eq!(a.next_frame(&mut buf).unwrap(), None);
        srv.write_all(&wire[5..]).unwrap();
        let n = loop {
            a.fill(&mut tmp).unwrap();
            if let Some(n) = a.next_frame(&mut buf).unwrap() {
                break n;
            }
            assert!(Instant::now() < deadline, "second half not read");
        };
        assert_eq!(&buf[..n], b"hello, peer");
        drop(srv);
        let closed = loop {
            match a.fill(&mut tmp) {
                Err(e) => break e,
                Ok(()) => assert!(Instant::now() < deadline, "close not seen"),
            }
        };
        assert!(matches!(closed, TcpLinkError::Closed));
    }

    #[test]
    fn a_frame_longer_than_the_buffer_is_an_error_and_the_passive_candidate_is_found() {
        let mut wire = Vec::new();
        frame(&[7u8; 300], &mut wire).unwrap();
        assert!(matches!(
            next_frame(&wire, &mut [0u8; 100]),
            Err(TcpLinkError::FrameTooLong(300))
        ));
        assert!(frame(&vec![0u8; 70_000], &mut wire).is_none());
        let sdp = "v=0\r\n\
            a=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host\r\n\
            a=candidate:2 1 tcp 1010827775 127.0.0.1 40000 typ host tcptype passive\r\n";
        assert_eq!(
            passive_candidate(sdp),
            Some("127.0.0.1:40000".parse().unwrap())
        );
        assert_eq!(
            passive_candidate("a=candidate:1 1 udp 1 127.0.0.1 1 typ host\r\n"),
            None
        );
    }
}
