//! Fan-out: where delivered frames go.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cabine_proto::telemetry::Delivered;
use cabine_proto::RoomId;
use tokio::sync::mpsc;

/// Receives every frame delivered in a room, in order per channel. The server wires it to the
/// `telemetry` WebRTC data channels of the room's subscribers (`reliable` picks the ordered,
/// retransmitted channel for measurements, status, commands and blobs, or the lossy one for
/// waveforms).
///
/// Called from the sidecar's protocol lock: it must not block and must not call back into the
/// [`Sidecar`](crate::Sidecar) synchronously. A slow subscriber must be handled behind it (drop
/// and count), never by waiting.
pub trait TelemetrySink: Send + Sync + 'static {
    /// Takes one delivered frame of `room`.
    fn deliver(&self, room: &RoomId, delivered: Delivered, reliable: bool);
}

impl<F> TelemetrySink for F
where
    F: Fn(&RoomId, Delivered, bool) + Send + Sync + 'static,
{
    fn deliver(&self, room: &RoomId, delivered: Delivered, reliable: bool) {
        self(room, delivered, reliable)
    }
}

/// One frame as a [`ChannelSink`] hands it over.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkItem {
    /// The room.
    pub room: RoomId,
    /// The frame.
    pub delivered: Delivered,
    /// Whether it was meant for the reliable channel.
    pub reliable: bool,
}

/// An in-memory sink: a bounded channel; what does not fit is dropped and counted (tests, and an
/// example of the non-blocking contract).
#[derive(Debug, Clone)]
pub struct ChannelSink {
    tx: mpsc::Sender<SinkItem>,
    dropped: Arc<AtomicU64>,
}

impl ChannelSink {
    /// A sink holding at most `capacity` undelivered frames, and its receiving end.
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<SinkItem>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (
            ChannelSink {
                tx,
                dropped: Arc::new(AtomicU64::new(0)),
            },
            rx,
        )
    }

    /// Frames dropped because the channel was full or closed.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl TelemetrySink for ChannelSink {
    fn deliver(&self, room: &RoomId, delivered: Delivered, reliable: bool) {
        let item = SinkItem {
            room: room.clone(),
            delivered,
            reliable,
        };
        if self.tx.try_send(item).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}
