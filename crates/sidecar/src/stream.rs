//! The stream shell: the same protocol over one ordered, reliable message transport (a
//! WebSocket over TCP/TLS on the HTTP port), for kiosks whose network drops UDP and with it
//! QUIC.
//!
//! Every message carries exactly one frame as QUIC streams carry them: a [`ClientFrame`]
//! (kiosk → server) or a [`ServerFrame`] (server → kiosk) with its varint length prefix. The
//! shell routes each kiosk frame to the input the [`Core`](crate::core::Core) would get from
//! QUIC, so the protocol, its checks and its limits are the same:
//!
//! | frame | QUIC | here, fed to the core as |
//! |---|---|---|
//! | hello, declare, status, command result, pong | control stream | control stream bytes |
//! | measurement | a unidirectional stream | one long-lived virtual stream (a new one after a refusal) |
//! | blob chunk | one stream per blob | one virtual stream per blob, ended after its `last` chunk |
//! | waveform | datagram (no prefix) | the frame body as a datagram |
//!
//! The transport's own task (the server's WebSocket handler) pumps messages: it calls
//! [`StreamConn::handle_message`] for each kiosk message and writes what
//! [`StreamConn::next_event`] returns; dropping the [`StreamConn`] ends the connection.

use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Instant;

use cabine_proto::telemetry::{
    client_frame, encode_frame, ClientFrame, ErrorCode, ServerFrame, MAX_FRAME_LEN,
};
use prost::Message;
use tokio::sync::{mpsc, oneshot};

use crate::core::{ConnId, StreamId};
use crate::error::Refusal;
use crate::server::{Closer, Handle, Inner, Sidecar};

/// Largest message a stream transport must accept: one maximal frame and its length prefix.
pub const MAX_MESSAGE_LEN: usize = MAX_FRAME_LEN + 10;

/// Protobuf keys (field number and wire type 2) of the [`ClientFrame`] bodies routed apart.
const KEY_MEASUREMENT: u8 = 3 << 3 | 2;
const KEY_WAVEFORM: u8 = 4 << 3 | 2;
const KEY_BLOB: u8 = 7 << 3 | 2;

/// The connection limit is reached, or the sidecar is shutting down: refuse the transport (the
/// refusal is counted as `server_busy`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the telemetry server is shutting down or at its limit of {limit} connections")]
#[non_exhaustive]
pub struct Busy {
    /// The limit.
    pub limit: usize,
}

/// What the transport task must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamEvent {
    /// Send this message (one length-prefixed [`ServerFrame`]).
    Send(Vec<u8>),
    /// Close the transport with this code and reason, then drop the [`StreamConn`].
    Close {
        /// The protocol's error code.
        code: ErrorCode,
        /// A short reason.
        reason: String,
    },
}

/// One kiosk connection over a stream transport. Dropping it tells the core the connection is
/// gone.
pub struct StreamConn {
    inner: Weak<Inner>,
    conn: ConnId,
    outbound: mpsc::Receiver<ServerFrame>,
    close: oneshot::Receiver<(ErrorCode, String)>,
    measurements: StreamId,
    blob: Option<StreamId>,
    closed: bool,
}

impl Sidecar {
    /// Opens a connection for a stream transport (a WebSocket the server accepted), counted
    /// against the same connection limit as QUIC. The kiosk's first message must be its
    /// `ClientHello`, checked exactly as on QUIC.
    pub fn open_stream(&self) -> Result<StreamConn, Busy> {
        let inner = &self.inner;
        let open = inner.lock().handles.len();
        if open >= inner.max_connections || inner.closing.load(Ordering::SeqCst) {
            inner.drive(|core, _| core.count(ErrorCode::ServerBusy));
            return Err(Busy {
                limit: inner.max_connections,
            });
        }
        let conn = ConnId(inner.next_conn.fetch_add(1, Ordering::Relaxed));
        inner.stream_connections.fetch_add(1, Ordering::Relaxed);
        let (tx, outbound) = mpsc::channel(inner.outbound_queue);
        let (closer, close) = oneshot::channel();
        inner.lock().handles.insert(
            conn,
            Handle {
                closer: Closer::Stream(closer),
                tx,
            },
        );
        // No handshake round trip is known here; the clock pings measure it.
        inner.drive(|core, now| core.handle_connected(now, conn, std::time::Duration::ZERO));
        let measurements = StreamId(inner.next_stream.fetch_add(1, Ordering::Relaxed));
        Ok(StreamConn {
            inner: std::sync::Arc::downgrade(inner),
            conn,
            outbound,
            close,
            measurements,
            blob: None,
            closed: false,
        })
    }
}

impl StreamConn {
    /// One message from the kiosk: exactly one length-prefixed [`ClientFrame`]. Anything else
    /// closes the connection (`malformed_frame` / `frame_too_large`), as do the core's own
    /// refusals; the close comes out of [`next_event`](Self::next_event).
    pub fn handle_message(&mut self, msg: &[u8]) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let conn = self.conn;
        let body = match single_frame(msg) {
            Ok(body) => body,
            Err(refusal) => {
                inner.drive(|core, now| core.handle_refusal(now, conn, refusal));
                return;
            }
        };
        match body.first().copied() {
            Some(KEY_MEASUREMENT) => {
                let stream = self.measurements;
                let r = inner.drive(|core, now| core.handle_uni(now, conn, stream, msg));
                if r.is_err() {
                    // The core dropped that stream, as QUIC's STOP_SENDING would: a new one.
                    self.measurements = self.next_stream(&inner);
                }
            }
            Some(KEY_WAVEFORM) => inner.drive(|core, now| core.handle_datagram(now, conn, body)),
            Some(KEY_BLOB) => {
                let stream = match self.blob {
                    Some(s) => s,
                    None => *self.blob.insert(self.next_stream(&inner)),
                };
                let last = match ClientFrame::decode(body) {
                    Ok(ClientFrame {
                        body: Some(client_frame::Body::Blob(b)),
                    }) => b.last,
                    _ => false,
                };
                let r = inner.drive(|core, now| core.handle_uni(now, conn, stream, msg));
                if r.is_err() || last {
                    self.blob = None;
                    if r.is_ok() {
                        inner.drive(|core, now| core.handle_uni_end(now, conn, stream));
                    }
                }
            }
            _ => inner.drive(|core, now| core.handle_control(now, conn, msg)),
        }
    }

    /// The next message to send to the kiosk or the close to perform; `None` when the server
    /// is gone.
    pub async fn next_event(&mut self) -> Option<StreamEvent> {
        if self.closed {
            return None;
        }
        // Frames queued before a close go out first; the queue ends when the connection's
        // handle is dropped, which is when the close (if any) has been sent.
        while let Some(frame) = self.outbound.recv().await {
            // Server frames are small (no blobs); one that does not encode is a bug.
            if let Ok(bytes) = encode_frame(&frame) {
                return Some(StreamEvent::Send(bytes));
            }
        }
        self.closed = true;
        let (code, reason) = (&mut self.close).await.ok()?;
        Some(StreamEvent::Close { code, reason })
    }

    fn next_stream(&self, inner: &Inner) -> StreamId {
        StreamId(inner.next_stream.fetch_add(1, Ordering::Relaxed))
    }
}

impl Drop for StreamConn {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            let conn = self.conn;
            inner.drive(|core, now: Instant| core.handle_closed(now, conn, 0));
            inner.lock().handles.remove(&conn);
        }
    }
}

/// The body of `msg` if it is exactly one length-prefixed frame within the limit.
fn single_frame(msg: &[u8]) -> Result<&[u8], Refusal> {
    let mut rest = msg;
    let len = prost::encoding::decode_varint(&mut rest)
        .map_err(|_| Refusal::new(ErrorCode::MalformedFrame, "invalid length prefix"))?;
    if len > MAX_FRAME_LEN as u64 {
        return Err(Refusal::new(
            ErrorCode::FrameTooLarge,
            format!("frame of {len} bytes, the limit is {MAX_FRAME_LEN}"),
        ));
    }
    if rest.len() as u64 != len {
        return Err(Refusal::new(
            ErrorCode::MalformedFrame,
            format!(
                "a message must hold exactly one frame: prefix says {len} bytes, {} follow",
                rest.len()
            ),
        ));
    }
    Ok(rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cabine_proto::telemetry::{Measurement, WaveformChunk};

    fn frame(body: client_frame::Body) -> Vec<u8> {
        encode_frame(&ClientFrame { body: Some(body) }).unwrap()
    }

    #[test]
    fn routing_keys_match_the_schema() {
        let m = frame(client_frame::Body::Measurement(Measurement::default()));
        assert_eq!(single_frame(&m).unwrap()[0], KEY_MEASUREMENT);
        let w = frame(client_frame::Body::Waveform(WaveformChunk::default()));
        assert_eq!(single_frame(&w).unwrap()[0], KEY_WAVEFORM);
        let b = frame(client_frame::Body::Blob(Default::default()));
        assert_eq!(single_frame(&b).unwrap()[0], KEY_BLOB);
    }

    #[test]
    fn a_message_is_exactly_one_frame() {
        let m = frame(client_frame::Body::Measurement(Measurement::default()));
        let mut two = m.clone();
        two.extend_from_slice(&m);
        assert_eq!(
            single_frame(&two).unwrap_err().code,
            ErrorCode::MalformedFrame
        );
        assert_eq!(
            single_frame(&m[..m.len() - 1]).unwrap_err().code,
            ErrorCode::MalformedFrame
        );
        let mut huge = Vec::new();
        prost::encoding::encode_varint(MAX_FRAME_LEN as u64 + 1, &mut huge);
        assert_eq!(
            single_frame(&huge).unwrap_err().code,
            ErrorCode::FrameTooLarge
        );
    }
}
