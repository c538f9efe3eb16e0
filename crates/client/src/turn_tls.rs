//! TURN over TLS (and TCP) for the `webrtc` stack, which allocates over UDP only: a bridge on
//! 127.0.0.1 that the stack talks TURN over UDP to, carrying each datagram over a TLS (or TCP)
//! connection to the `turns:` (or `turn:…?transport=tcp`) server, so a cabin whose network lets
//! only TCP 443 out can still relay its media.
//!
//! TURN messages are the same whatever the transport (credentials, nonces and MESSAGE-INTEGRITY
//! do not cover it); over a stream a STUN message is delimited by the length in its header and
//! a ChannelData message is padded to a multiple of four bytes (RFC 8656 §12.5). Each UDP source
//! (one per TURN client of the stack) gets its own connection, the 5-tuple of its allocation.
//! The bridge ends with the peer connection whose state it watches.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;

use crate::error::{Error, Result};
use crate::options::IceServer;

/// TURN clients (UDP sources) one bridge serves.
const MAX_SOURCES: usize = 8;
/// Datagrams queued towards one connection; more are dropped, as UDP would.
const QUEUE: usize = 256;
/// Largest TURN message accepted from the server (a STUN message or ChannelData, padding
/// included).
const MAX_MESSAGE: usize = 20 + 65_535;

/// A TURN server reached over a stream, parsed from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StreamTurn {
    /// Host name or address (no brackets).
    pub host: String,
    /// Port (5349 for `turns:` and 3478 for `turn:` when absent).
    pub port: u16,
    /// TLS (`turns:`) or plain TCP (`turn:…?transport=tcp`).
    pub tls: bool,
}

impl StreamTurn {
    /// The server of `url` when it is reached over a stream; `None` for UDP TURN and STUN.
    pub(crate) fn parse(url: &str) -> Option<StreamTurn> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("turns:") {
            (true, r)
        } else {
            (false, url.strip_prefix("turn:")?)
        };
        let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
        let transport = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("transport="))
            .unwrap_or(if tls { "tcp" } else { "udp" });
        if !transport.eq_ignore_ascii_case("tcp") {
            return None;
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']')?;
            (h, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port = match port {
            Some(p) => p.parse().ok()?,
            None if tls => 5349,
            None => 3478,
        };
        (!host.is_empty()).then(|| StreamTurn {
            host: host.to_owned(),
            port,
            tls,
        })
    }
}

/// The local UDP ports of the TURN clients a peer connection's stream bridges carried, with
/// the transport of each (`tls` or `tcp`): a relay candidate's related port is its TURN
/// client's, so a relay candidate whose related port is here reached its relay over that
/// stream, any other over UDP.
pub(crate) type RelaySources = Arc<std::sync::Mutex<HashMap<u16, &'static str>>>;

/// Replaces every stream TURN URL of `servers` by a bridge on 127.0.0.1, started now and ended
/// when `state` reaches `closed` (or its peer connection is dropped); each bridge records the
/// TURN clients it carries in `sources`.
pub(crate) async fn bridge_stream_servers(
    servers: &[IceServer],
    accept_invalid_certs: bool,
    state: &watch::Receiver<RTCPeerConnectionState>,
    sources: &RelaySources,
) -> Result<Vec<IceServer>> {
    let mut out = Vec::with_capacity(servers.len());
    for s in servers {
        let mut urls = Vec::with_capacity(s.urls.len());
        for url in &s.urls {
            match StreamTurn::parse(url) {
                Some(target) => {
                    let local =
                        start(target, accept_invalid_certs, state.clone(), sources.clone()).await?;
                    tracing::debug!(%local, "TURN over a stream bridged from UDP");
                    urls.push(format!("turn:{local}?transport=udp"));
                }
                None => urls.push(url.clone()),
            }
        }
        out.push(IceServer { urls, ..s.clone() });
    }
    Ok(out)
}

/// Binds the bridge's UDP socket and runs it in the background; returns its address.
async fn start(
    target: StreamTurn,
    accept_invalid_certs: bool,
    mut state: watch::Receiver<RTCPeerConnectionState>,
    sources: RelaySources,
) -> Result<SocketAddr> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .map_err(|e| Error::TurnBridge(format!("binding 127.0.0.1: {e}")))?;
    let local = socket
        .local_addr()
        .map_err(|e| Error::TurnBridge(e.to_string()))?;
    let tls = if target.tls {
        Some(tls_connector(accept_invalid_certs)?)
    } else {
        None
    };
    let socket = Arc::new(socket);
    tokio::spawn(async move {
        let ended = state.wait_for(|s| *s == RTCPeerConnectionState::Closed);
        tokio::select! {
            _ = ended => {}
            _ = relay_datagrams(socket, target, tls, sources) => {}
        }
    });
    Ok(local)
}

/// Reads datagrams from the stack's TURN clients and queues each on its source's connection.
async fn relay_datagrams(
    socket: Arc<UdpSocket>,
    target: StreamTurn,
    tls: Option<tokio_rustls::TlsConnector>,
    sources: RelaySources,
) {
    let transport = if target.tls { "tls" } else { "tcp" };
    let mut conns: HashMap<SocketAddr, mpsc::Sender<Bytes>> = HashMap::new();
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            return;
        };
        // Only the stack on this machine; anything else on 127.0.0.1 is ignored.
        if !from.ip().is_loopback() {
            continue;
        }
        conns.retain(|_, tx| !tx.is_closed());
        if !conns.contains_key(&from) {
            if conns.len() >= MAX_SOURCES {
                tracing::debug!("TURN bridge: too many clients; datagram dropped");
                continue;
            }
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(connection(
                Arc::clone(&socket),
                from,
                target.clone(),
                tls.clone(),
                rx,
            ));
            conns.insert(from, tx);
            // Once per TURN client: not on the per-datagram path.
            if let Ok(mut s) = sources.lock() {
                s.insert(from.port(), transport);
            }
        }
        if let Some(tx) = conns.get(&from) {
            // A full queue drops the datagram, like a congested UDP path.
            let _ = tx.try_send(frame_for_stream(&buf[..n]));
        }
    }
}

/// One TURN client's connection: queued datagrams out, messages from the server back to it.
async fn connection(
    socket: Arc<UdpSocket>,
    client: SocketAddr,
    target: StreamTurn,
    tls: Option<tokio_rustls::TlsConnector>,
    rx: mpsc::Receiver<Bytes>,
) {
    let tcp = match TcpStream::connect((target.host.as_str(), target.port)).await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(host = %target.host, port = target.port, "TURN server unreachable: {e}");
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    let result = match tls {
        Some(connector) => {
            let name = match target.host.parse::<IpAddr>() {
                Ok(ip) => rustls::pki_types::ServerName::IpAddress(ip.into()),
                Err(_) => match rustls::pki_types::ServerName::try_from(target.host.clone()) {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(host = %target.host, "TURN server name: {e}");
                        return;
                    }
                },
            };
            match connector.connect(name, tcp).await {
                Ok(stream) => pump(stream, &socket, client, rx).await,
                Err(e) => {
                    tracing::warn!(host = %target.host, "TLS with the TURN server: {e}");
                    return;
                }
            }
        }
        None => pump(tcp, &socket, client, rx).await,
    };
    if let Err(e) = result {
        tracing::debug!("TURN bridge connection ended: {e}");
    }
}

async fn pump<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    socket: &UdpSocket,
    client: SocketAddr,
    mut rx: mpsc::Receiver<Bytes>,
) -> std::io::Result<()> {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let up = async {
        while let Some(frame) = rx.recv().await {
            writer.write_all(&frame).await?;
        }
        writer.shutdown().await
    };
    let down = async {
        let mut msg = BytesMut::with_capacity(2048);
        loop {
            let datagram = read_message(&mut reader, &mut msg).await?;
            socket.send_to(datagram, client).await?;
        }
    };
    tokio::select! {
        r = up => r,
        r = down => r,
    }
}

/// A datagram from the stack as it goes on a stream: ChannelData padded to four bytes.
fn frame_for_stream(datagram: &[u8]) -> Bytes {
    let mut out = BytesMut::from(datagram);
    if is_channel_data(datagram) {
        out.resize(datagram.len().div_ceil(4) * 4, 0);
    }
    out.freeze()
}

fn is_channel_data(m: &[u8]) -> bool {
    m.first().is_some_and(|b| b & 0xc0 == 0x40)
}

/// Reads one TURN message from the stream; returns it without stream padding (a datagram).
async fn read_message<'a, R: AsyncRead + Unpin>(
    r: &mut R,
    msg: &'a mut BytesMut,
) -> std::io::Result<&'a [u8]> {
    let mut head = [0u8; 4];
    r.read_exact(&mut head).await?;
    let len = u16::from_be_bytes([head[2], head[3]]) as usize;
    let (datagram, on_stream) = match head[0] & 0xc0 {
        // STUN: 20-byte header, the length counts what follows it (a multiple of four).
        0x00 => (20 + len, 20 + len),
        // ChannelData: 4-byte header, the data padded to four bytes on a stream.
        0x40 => (4 + len, (4 + len).div_ceil(4) * 4),
        _ => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not a TURN message (first byte {:#04x})", head[0]),
            ))
        }
    };
    msg.clear();
    msg.resize(on_stream.min(MAX_MESSAGE), 0);
    msg[..4].copy_from_slice(&head);
    r.read_exact(&mut msg[4..]).await?;
    Ok(&msg[..datagram])
}

fn tls_connector(accept_invalid_certs: bool) -> Result<tokio_rustls::TlsConnector> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    // TLS 1.2 too: Debian's coturn 4.6.1 offers nothing newer.
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::TurnBridge(format!("TLS configuration: {e}")))?;
    let mut config = if accept_invalid_certs {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    // RFC 7443: TURN's ALPN identifier.
    config.alpn_protocols = vec![b"stun.turn".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// [`ClientOptions::accept_invalid_certs`](crate::ClientOptions::accept_invalid_certs): any
/// certificate (development setups with a self-signed one), handshake signatures still checked
/// with the presented key.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_urls_parse_and_udp_ones_do_not() {
        let t = |host: &str, port, tls| {
            Some(StreamTurn {
                host: host.into(),
                port,
                tls,
            })
        };
        assert_eq!(
            StreamTurn::parse("turns:t.example:443?transport=tcp"),
            t("t.example", 443, true)
        );
        assert_eq!(
            StreamTurn::parse("turns:t.example"),
            t("t.example", 5349, true)
        );
        assert_eq!(
            StreamTurn::parse("turn:10.0.0.1:3478?transport=tcp"),
            t("10.0.0.1", 3478, false)
        );
        assert_eq!(
            StreamTurn::parse("turns:[2001:db8::1]:443"),
            t("2001:db8::1", 443, true)
        );
        assert_eq!(StreamTurn::parse("turn:t.example:3478?transport=udp"), None);
        assert_eq!(StreamTurn::parse("turn:t.example"), None);
        assert_eq!(StreamTurn::parse("stun:t.example:3478"), None);
    }

    #[tokio::test]
    async fn stream_framing_pads_channel_data_and_strips_it_back() {
        // ChannelData 0x4001 with 5 bytes: padded to 12 on the stream, 9 as a datagram.
        let cd = [0x40, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5];
        let framed = frame_for_stream(&cd);
        assert_eq!(framed.len(), 12);
        // A STUN header with an 8-byte body: as it is.
        let mut stun = vec![0x01, 0x01, 0x00, 0x08, 0x21, 0x12, 0xa4, 0x42];
        stun.extend_from_slice(&[7; 12 + 8]);
        assert_eq!(frame_for_stream(&stun).len(), stun.len());
        let mut stream: Vec<u8> = framed.to_vec();
        stream.extend_from_slice(&stun);
        let mut r = &stream[..];
        let mut msg = BytesMut::new();
        assert_eq!(read_message(&mut r, &mut msg).await.unwrap(), &cd);
        assert_eq!(read_message(&mut r, &mut msg).await.unwrap(), &stun[..]);
        let mut junk = &[0xffu8, 0, 0, 0][..];
        assert!(read_message(&mut junk, &mut msg).await.is_err());
    }
}
