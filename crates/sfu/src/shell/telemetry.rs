//! The telemetry queue of a worker: messages the server hands the media plane for its rooms'
//! `telemetry` data channels (measurements, status, command results, waveform chunks).
//!
//! It is apart from the queue of datagram batches and commands, so a media burst that fills
//! that one (the I/O thread then drops datagrams) never crowds out a vital-sign reading. Lossy
//! messages (waveform chunks) are refused once the queue is half full, keeping the other half
//! for reliable ones; reliable messages are refused only when it is full (the worker is then
//! stuck far behind). Every refusal is counted (`data_dropped`, and `data_dropped_reliable`
//! for reliable ones). The worker takes at most [`DATA_PER_TURN`] messages from it per turn,
//! between its datagrams and timers, so neither starves the other.

use std::sync::atomic::Ordering;

use cabine_proto::RoomId;

use super::{ShellCounters, WorkerTx};
use crate::room::SessionId;

/// Telemetry messages queued per worker before further ones are refused (lossy ones from half
/// of it). Messages share their payload (`Bytes`), so a full queue holds the payloads once:
/// about 4,096 × a few hundred bytes.
pub const TELEMETRY_QUEUE: usize = 4096;

/// Telemetry messages a worker takes from its queue per turn before its datagrams, timers and
/// send batch get their turn again.
pub(super) const DATA_PER_TURN: usize = 64;

/// A telemetry message for every subscriber of a room, or only for `to`.
pub(super) struct Telemetry {
    pub(super) room: RoomId,
    pub(super) to: Option<SessionId>,
    pub(super) data: bytes::Bytes,
    pub(super) reliable: bool,
}

/// Queues `msg` on the worker's telemetry queue, waking the worker; refused (and counted in
/// `counters`) when the queue is full, or half full for a lossy message, or the worker is gone.
/// Returns whether it was queued.
pub(super) fn queue(tx: &WorkerTx, msg: Telemetry, counters: &ShellCounters) -> bool {
    let reliable = msg.reliable;
    let limit = tx.data.capacity().unwrap_or(TELEMETRY_QUEUE);
    let queued = (reliable || tx.data.len() < limit / 2) && tx.data.try_send(msg).is_ok();
    if queued {
        tx.wake();
    } else {
        counters.data_dropped.fetch_add(1, Ordering::Relaxed);
        if reliable {
            counters
                .data_dropped_reliable
                .fetch_add(1, Ordering::Relaxed);
        }
    }
    queued
}

#[cfg(test)]
mod tests {
    use std::thread;

    use crossbeam_channel::bounded;

    use super::*;
    use crate::shell::{Msg, Wake};

    fn message(reliable: bool) -> Telemetry {
        Telemetry {
            room: RoomId::parse("r").unwrap(),
            to: None,
            data: bytes::Bytes::from_static(b"{}"),
            reliable,
        }
    }

    #[test]
    fn a_full_datagram_queue_does_not_refuse_telemetry_and_refusals_are_counted() {
        let (tx, _rx) = bounded::<Msg>(2);
        let (data, data_rx) = bounded::<Telemetry>(8);
        let worker = WorkerTx {
            tx,
            data,
            wake: Wake::Thread(thread::current()),
        };
        let counters = ShellCounters::default();
        // The datagram and command queue is full (a media burst).
        while worker.tx.try_send(Msg::Stop).is_ok() {}

        // Lossy messages take half the queue, then are refused and counted.
        for _ in 0..4 {
            assert!(queue(&worker, message(false), &counters));
        }
        assert!(!queue(&worker, message(false), &counters));
        assert_eq!(counters.data_dropped.load(Ordering::Relaxed), 1);
        assert_eq!(counters.data_dropped_reliable.load(Ordering::Relaxed), 0);

        // Reliable ones still have the other half, then are refused and counted apart.
        for _ in 0..4 {
            assert!(queue(&worker, message(true), &counters));
        }
        assert!(!queue(&worker, message(true), &counters));
        assert_eq!(counters.data_dropped.load(Ordering::Relaxed), 2);
        assert_eq!(counters.data_dropped_reliable.load(Ordering::Relaxed), 1);

        // Once the worker took some, reliable messages are accepted again, in order.
        let first = data_rx.try_recv().expect("queued");
        assert!(!first.reliable);
        assert!(queue(&worker, message(true), &counters));
        assert_eq!(data_rx.len(), 8);
        assert_eq!(counters.data_dropped.load(Ordering::Relaxed), 2);

        // A worker that is gone refuses and counts too.
        drop(data_rx);
        assert!(!queue(&worker, message(true), &counters));
        assert_eq!(counters.data_dropped_reliable.load(Ordering::Relaxed), 2);
    }
}
