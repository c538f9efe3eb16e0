//! The kiosk side of the stream transport: the telemetry protocol over a WebSocket (TCP, TLS
//! for `wss://`) on the server's HTTP port, for networks that drop UDP and with it QUIC.
//!
//! Each WebSocket binary message carries one length-prefixed frame, exactly as QUIC streams
//! carry them (see [`crate::stream`] for the server's routing). The session does what the QUIC
//! one does (hello, channel declarations, measurements resent until acknowledged, pongs) with
//! every frame going through one bounded writer queue; waveform chunks that find it full are
//! dropped and counted. The server closes with WebSocket code `4000 + ErrorCode`.

use std::sync::Arc;
use std::time::Duration;

use cabine_proto::telemetry::{client_frame, encode_frame, server_frame, ErrorCode, ServerFrame};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{http::Uri, Message};
use tokio_tungstenite::WebSocketStream;

use super::core::{body, Transmit};
use super::{established, is_fatal, ClientError, Link, SessionEnd, Shared};
use crate::stream::MAX_MESSAGE_LEN;
use crate::tls::{self, ServerVerification};

/// The WebSocket close code of a protocol error is this plus the [`ErrorCode`] value.
pub const CLOSE_CODE_BASE: u16 = 4000;

/// Time to open the TCP (and TLS) connection and finish the WebSocket handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how to reach the server's stream transport.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StreamTransport {
    /// `ws://host:port/api/telemetry/ws` or `wss://…` (what `GET /api/telemetry` advertises as
    /// `stream_url`, resolved against the server's URL).
    pub url: String,
    /// How to check the HTTPS server's certificate for `wss://` (the kiosk's HTTP API trust).
    pub verification: ServerVerification,
    /// A QUIC handshake that has not completed after this long falls back to this transport.
    pub quic_timeout: Duration,
    /// Never try QUIC (a kiosk that knows its UDP is blocked, e.g. `--relay-only`).
    pub only: bool,
    /// Frames queued for the socket before waveform chunks are dropped (other frames wait).
    pub queue: usize,
}

impl StreamTransport {
    /// The transport at `url`, trusted with `verification`, tried after 3 s without a QUIC
    /// handshake.
    pub fn new(url: impl Into<String>, verification: ServerVerification) -> Self {
        StreamTransport {
            url: url.into(),
            verification,
            quic_timeout: Duration::from_secs(3),
            only: false,
            queue: 512,
        }
    }
}

/// The established stream session as the client's senders see it.
#[derive(Clone)]
pub(super) struct StreamLink {
    tx: mpsc::Sender<Vec<u8>>,
    closed: Arc<watch::Sender<bool>>,
    /// Held while a blob's chunks are queued: the server takes one blob at a time.
    blob: Arc<tokio::sync::Mutex<()>>,
}

impl StreamLink {
    /// Queues a frame if there is room.
    pub(super) fn try_send(&self, frame: Vec<u8>) -> bool {
        self.tx.try_send(frame).is_ok()
    }

    /// Queues a frame, waiting for room; false when the session is gone.
    async fn send(&self, frame: Vec<u8>) -> bool {
        tokio::select! {
            r = self.tx.send(frame) => r.is_ok(),
            () = self.wait_closed() => false,
        }
    }

    /// Ends the session (the writer sends a WebSocket close).
    pub(super) fn close(&self) {
        self.closed.send_replace(true);
    }

    async fn wait_closed(&self) {
        let mut rx = self.closed.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }
}

/// Uploads a blob as chunk frames on the session's queue. Done once every chunk is queued (the
/// stream is ordered and reliable; a session lost before they are written loses the blob, as on
/// QUIC: upload it again).
pub(super) async fn upload_blob(
    link: &StreamLink,
    channel_id: u32,
    blob_id: u64,
    mime: &str,
    capture_time_us: u64,
    data: &[u8],
) -> Result<u64, ClientError> {
    let frames = super::core::blob_frames(channel_id, blob_id, mime, capture_time_us, data)?;
    let _one_at_a_time = link.blob.lock().await;
    for bytes in frames {
        if !link.send(bytes).await {
            return Err(ClientError::ConnectionLost("stream session ended".into()));
        }
    }
    Ok(blob_id)
}

/// One session over the stream transport.
pub(super) async fn session(shared: &Arc<Shared>, t: &StreamTransport) -> SessionEnd {
    let lost = SessionEnd::Lost { established: false };
    let ws = tokio::select! {
        r = tokio::time::timeout(CONNECT_TIMEOUT, connect(t)) => match r {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "telemetry: stream transport unreachable");
                return lost;
            }
            Err(_) => return lost,
        },
        () = shared.close.notified() => return SessionEnd::Closed,
    };
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(t.queue.max(1));
    let closed = Arc::new(watch::Sender::new(false));
    let link = StreamLink {
        tx,
        closed: Arc::clone(&closed),
        blob: Arc::default(),
    };
    let writer = tokio::spawn(async move {
        let mut stop = closed.subscribe();
        loop {
            tokio::select! {
                m = rx.recv() => {
                    let Some(m) = m else { break };
                    if sink.send(Message::Binary(m.into())).await.is_err() {
                        break;
                    }
                }
                () = async { let _ = stop.wait_for(|c| *c).await; } => break,
            }
        }
        let _ = sink.send(Message::Close(None)).await;
        closed.send_replace(true);
    });
    let hello = shared.lock().core.hello(shared.config.clock.now_us());
    let end = async {
        let Ok(bytes) = encode_frame(&hello) else {
            return SessionEnd::Fatal(ErrorCode::Internal, "hello does not encode".into());
        };
        if !link.send(bytes).await {
            return lost;
        }
        let first = tokio::time::timeout(Duration::from_secs(10), next_frame(&mut source)).await;
        let session_id = match first {
            Ok(Ok(ServerFrame {
                body: Some(server_frame::Body::Hello(h)),
            })) => h.session_id,
            Ok(Err(end)) => return end,
            _ => return lost,
        };
        established(shared, Link::Stream(link.clone()), session_id);
        run(shared, &link, &mut source).await
    }
    .await;
    link.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    end
}

type Source = futures_util::stream::SplitStream<WebSocketStream<Box<dyn Io>>>;

/// The established session: writes what is queued, applies what arrives.
async fn run(shared: &Arc<Shared>, link: &StreamLink, source: &mut Source) -> SessionEnd {
    let gone = SessionEnd::Lost { established: true };
    // The server pings every few seconds: silence this long means it is gone (TCP may take
    // minutes to say so), as QUIC's idle timeout would.
    let idle_timeout = shared.config.idle_timeout;
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    loop {
        // Pongs and control frames first, then measurements of ready channels.
        while let Some(t) = shared.poll_transmit() {
            let frame = match t {
                Transmit::Control(f) => f,
                Transmit::Measurement(m) => body(client_frame::Body::Measurement(m)),
            };
            let Ok(bytes) = encode_frame(&frame) else {
                continue;
            };
            if !link.send(bytes).await {
                return gone;
            }
        }
        tokio::select! {
            () = &mut idle => return gone,
            f = next_frame(source) => match f {
                Ok(f) => {
                    idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
                    shared.handle_frame(f);
                }
                Err(end) => return end,
            },
            () = shared.wake.notified() => {}
            () = shared.close.notified() => return SessionEnd::Closed,
            () = link.wait_closed() => return gone,
        }
    }
}

/// The next server frame; `Err` with how the session ended when the socket closes.
async fn next_frame(source: &mut Source) -> Result<ServerFrame, SessionEnd> {
    let lost = SessionEnd::Lost { established: true };
    loop {
        match source.next().await {
            Some(Ok(Message::Binary(b))) => {
                return ServerFrame::decode_length_delimited(b.as_ref()).map_err(|_| lost);
            }
            Some(Ok(Message::Close(Some(frame)))) => {
                let code = u16::from(frame.code);
                let fatal = code
                    .checked_sub(CLOSE_CODE_BASE)
                    .and_then(|c| ErrorCode::from_code(u64::from(c)))
                    .filter(|c| is_fatal(*c));
                return Err(match fatal {
                    Some(c) => SessionEnd::Fatal(c, frame.reason.to_string()),
                    None => lost,
                });
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Some(Ok(Message::Text(_) | Message::Close(None)) | Err(_)) | None => return Err(lost),
        }
    }
}

/// A byte stream the WebSocket runs on (TCP or TLS over TCP).
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn connect(t: &StreamTransport) -> Result<WebSocketStream<Box<dyn Io>>, String> {
    let uri: Uri = t
        .url
        .parse()
        .map_err(|e| format!("{}: not a URL: {e}", t.url))?;
    let tls = match uri.scheme_str() {
        Some("wss") => true,
        Some("ws") => false,
        _ => return Err(format!("{}: not a ws:// or wss:// URL", t.url)),
    };
    let host = uri
        .host()
        .ok_or_else(|| format!("{}: no host", t.url))?
        .trim_matches(['[', ']'])
        .to_owned();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("{host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn Io> = if tls {
        let mut config = tls::client_config(&t.verification).map_err(|e| e.to_string())?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("{host}: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {host}:{port}: {e}"))?;
        Box::new(stream)
    } else {
        Box::new(tcp)
    };
    let mut ws_config = WebSocketConfig::default();
    ws_config.max_message_size = Some(MAX_MESSAGE_LEN);
    ws_config.max_frame_size = Some(MAX_MESSAGE_LEN);
    let (ws, _) = tokio_tungstenite::client_async_with_config(t.url.as_str(), io, Some(ws_config))
        .await
        .map_err(|e| format!("WebSocket handshake with {}: {e}", t.url))?;
    Ok(ws)
}
