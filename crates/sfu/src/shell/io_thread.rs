//! The I/O thread: reads datagrams in batches, routes them, handles worker 0's share itself
//! and hands each other worker its share of a read in one message; sleeps in `poll` on the
//! socket and its wake-up signal.

use std::net::UdpSocket;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Receiver;
use tracing::{debug, error};

use super::telemetry::{Telemetry, DATA_PER_TURN};
use super::worker::Worker;
use super::{Batch, Control, Item, Key, Msg, ShellCounters, WorkerTx};
use crate::demux::{Demux, Unrouted};
use crate::udp::{self, RecvBatch, WakeSignal, BATCH};

/// The I/O thread: reads datagrams in batches, routes them, handles worker 0's share itself
/// and hands each other worker its share in one message per read; runs worker 0's commands
/// and timers; sleeps in `poll` on the socket and its wake-up signal.
pub(super) struct Io {
    /// Worker 0, run on this thread (`None` once it died).
    pub(super) worker: Option<Worker>,
    pub(super) rx: Receiver<Msg>,
    /// Worker 0's telemetry.
    pub(super) data: Receiver<Telemetry>,
    pub(super) socket: Arc<UdpSocket>,
    pub(super) signal: WakeSignal,
    pub(super) demux: Demux<Key>,
    pub(super) control: Receiver<Control>,
    pub(super) workers: Vec<WorkerTx>,
    /// The batch being filled for each worker (index 0 unused).
    pub(super) pending: Vec<Option<Batch>>,
    pub(super) pool: Receiver<Batch>,
    pub(super) recv: RecvBatch,
    pub(super) counters: Arc<ShellCounters>,
}

/// Datagrams read in one turn before timers and commands get their turn.
const READS_PER_TURN: usize = 8 * BATCH;

impl Io {
    pub(super) fn run(mut self) {
        loop {
            self.apply_control();
            while let Ok(msg) = self.rx.try_recv() {
                if matches!(msg, Msg::Stop) {
                    self.guarded(|w| w.out.flush());
                    return;
                }
                // Commands for a dead worker 0 are dropped: their callers see `Stopped`.
                self.guarded(|w| {
                    w.handle(msg);
                });
            }
            // Worker 0's telemetry, bounded like a fed worker's (see `Worker::run`). For a dead
            // worker 0 it stays queued until the queue refuses more (counted).
            let mut data_taken = 0;
            if let Some(worker) = self.worker.as_mut() {
                let data = &self.data;
                let taken = catch_unwind(AssertUnwindSafe(|| {
                    data_taken = worker.take_telemetry(data);
                }));
                if taken.is_err() {
                    self.worker_died();
                }
            }
            let mut read = 0;
            loop {
                // Registrations and learned addresses first: a session is registered before
                // its answer leaves, an address learned before the answer that proves it.
                self.apply_control();
                let n = match udp::recv(&self.socket, &mut self.recv) {
                    Ok(n) => n,
                    Err(e) => {
                        // ICMP port unreachable surfaces as ConnectionRefused on Linux.
                        debug!(error = %e, "media socket receive error");
                        0
                    }
                };
                if n == 0 {
                    break;
                }
                self.dispatch(Instant::now());
                read += n;
                if n < BATCH || read >= READS_PER_TURN {
                    break;
                }
            }
            self.guarded(|w| {
                w.run_due();
                w.out.flush();
            });
            if read >= READS_PER_TURN || data_taken == DATA_PER_TURN {
                continue;
            }
            let timeout = self
                .worker
                .as_mut()
                .and_then(|w| w.deadlines.earliest())
                .map(|d| d.saturating_duration_since(Instant::now()));
            if udp::wait(&self.socket, &self.signal, timeout).woken {
                self.signal.clear();
            }
        }
    }

    /// Routes what the last read returned: worker 0's datagrams are handled here, the others'
    /// are handed off, one message per worker.
    fn dispatch(&mut self, at: Instant) {
        let mut bytes = 0;
        let mut challenges = 0;
        for i in 0..self.recv.len() {
            let (source, data) = self.recv.get(i);
            bytes += data.len() as u64;
            let routed = match self.demux.route(source, data) {
                Ok(r) => r,
                Err(why) => {
                    let c = match why {
                        Unrouted::UnknownSource => &self.counters.unknown_source,
                        Unrouted::UnknownUfrag => &self.counters.unknown_ufrag,
                        Unrouted::MalformedStun | Unrouted::StunWithoutUsername => {
                            &self.counters.malformed_stun
                        }
                    };
                    c.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            challenges += u64::from(routed.challenge.is_some());
            let (w, session) = routed.key;
            if w == 0 {
                let Some(worker) = self.worker.as_mut() else {
                    self.counters.queue_full.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let done = catch_unwind(AssertUnwindSafe(|| {
                    worker.datagram(session, source, data, at, routed.challenge)
                }));
                if done.is_err() {
                    self.worker_died();
                }
                continue;
            }
            let Some(slot) = self.pending.get_mut(w) else {
                continue;
            };
            let batch = slot.get_or_insert_with(|| match self.pool.try_recv() {
                Ok(mut b) => {
                    b.at = at;
                    b
                }
                Err(_) => Batch::new(at),
            });
            batch.data.extend_from_slice(data);
            batch.items.push(Item {
                session,
                source,
                end: batch.data.len(),
                challenge: routed.challenge,
            });
        }
        let c = &self.counters;
        c.datagrams_in
            .fetch_add(self.recv.len() as u64, Ordering::Relaxed);
        c.bytes_in.fetch_add(bytes, Ordering::Relaxed);
        if challenges > 0 {
            c.stun_challenges.fetch_add(challenges, Ordering::Relaxed);
        }
        for (w, slot) in self.pending.iter_mut().enumerate() {
            let Some(batch) = slot.take() else {
                continue;
            };
            let count = batch.items.len() as u64;
            // A dead worker loses its rooms, not everyone else's (`threads_died`).
            if !self.workers[w].try_send(Msg::Batch(batch)) {
                c.queue_full.fetch_add(count, Ordering::Relaxed);
            }
        }
    }

    /// Runs `f` on worker 0 unless it has died. A panic that escapes every room's guard kills
    /// worker 0 only, as it would kill a worker thread: its rooms are gone, the death is counted
    /// (`threads_died`, the node is no longer ready), and this thread keeps reading for the
    /// other workers.
    fn guarded(&mut self, f: impl FnOnce(&mut Worker)) {
        let Some(worker) = self.worker.as_mut() else {
            return;
        };
        if catch_unwind(AssertUnwindSafe(|| f(worker))).is_err() {
            self.worker_died();
        }
    }

    fn worker_died(&mut self) {
        self.worker = None;
        self.counters.threads_died.fetch_add(1, Ordering::Relaxed);
        error!("media worker 0 panicked and lost its rooms; the node is no longer ready");
    }

    fn apply_control(&mut self) {
        let mut changed = false;
        while let Ok(control) = self.control.try_recv() {
            changed = true;
            match control {
                Control::Register(ufrag, key) => self.demux.register(ufrag, key),
                Control::Unregister(key) => self.demux.unregister(key),
                Control::Learn(addr, key) => {
                    self.demux.learn(addr, key);
                }
                Control::Expect(transaction, to, key) => self.demux.expect(transaction, to, key),
            }
        }
        if changed {
            let c = &self.counters;
            let set = |g: &AtomicU64, v: usize| g.store(v as u64, Ordering::Relaxed);
            set(&c.routed_sessions, self.demux.len());
            set(&c.routed_ufrags, self.demux.ufrags());
            set(&c.routed_addresses, self.demux.addresses());
        }
    }
}
