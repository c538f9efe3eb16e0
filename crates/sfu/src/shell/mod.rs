//! The thin threaded shell around the sans-IO rooms: one UDP socket, and worker threads that
//! each own a shard of the rooms.
//!
//! - The I/O thread reads datagrams in batches (`recvmmsg`, see [`udp`]) and
//!   routes them with the [`Demux`] table. It runs worker 0 itself: that worker's datagrams are
//!   handled where they were read, with no hand-off. Every other worker's datagrams from one
//!   read go to it in one message (one wake-up per read, not per datagram); when its queue is
//!   full they are dropped and counted.
//! - A worker gives each datagram, timeout (from an earliest-deadline queue, not a scan of its
//!   rooms) and command to its room, drains the room's [`Output`](crate::room::Output)s (datagrams into a send batch
//!   flushed with `sendmmsg` once per turn, offers, progress, data and ended sessions to the
//!   server's event queue).
//! - ICE-TCP (`shell/tcp.rs`, `media.tcp`): a thread with the TCP listener on the media address binds
//!   each connection to a session by its first binding request, hands each read's RFC 4571
//!   frames to that session's worker in one message, and writes the rooms' TCP transmits (one
//!   message per worker flush) into bounded per-connection buffers.
//! - The routing table belongs to the I/O thread; workers change it through a control queue
//!   (registrations, and addresses learned once str0m answered their binding request) and wake
//!   it. Changes are queued before the datagram that depends on them is sent.
//! - Commands (join, leave, snapshots) come from the HTTP layer and are answered on oneshot
//!   channels, so async handlers never block a runtime thread.
//! - Telemetry for the rooms' data channels has a queue of its own per worker
//!   (`shell/telemetry.rs`, [`TELEMETRY_QUEUE`]): a media burst that fills the datagram queue
//!   does not crowd out a measurement. The worker takes from both in each turn, a bounded
//!   number from each.
//! - Everything a room does runs under its panic guard ([`Room::run_isolated`](crate::room::Room::run_isolated)): a room that
//!   panics is closed, its sessions reported ended, the panic counted (`room_panics`); the
//!   worker's other rooms carry on. A thread that dies anyway is counted (`threads_died`) and
//!   [`Sfu::is_healthy`] turns false (the server's `/readyz` then fails).

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use cabine_proto::RoomId;
use crossbeam_channel::{bounded, Receiver, Sender};
use serde::Serialize;
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use crate::deadlines::Deadlines;
use crate::demux::{Challenge, Demux};
use crate::room::{
    DataIn, JoinError, JoinRequest, Joined, NegotiationError, Offer, OfferRequest, Progress,
    Removed, RoomConfig, RoomSnapshot, SessionId,
};
use crate::stats::DelayHistogram;

mod io_thread;
mod tcp;
mod telemetry;
mod worker;

use self::io_thread::Io;
pub use self::tcp::{TcpConfig, TcpCounters, TcpStats};
use self::telemetry::Telemetry;
pub use self::telemetry::TELEMETRY_QUEUE;
use self::worker::{Outlet, Worker};
pub use crate::udp::MAX_DATAGRAM;
use crate::udp::{self, RecvBatch, SendBatch, Waker, BATCH};

/// Messages (batches of up to 32 datagrams, or commands) queued per worker before the I/O
/// thread starts dropping datagrams for it (at most 8,192 datagrams).
pub const WORKER_QUEUE: usize = 256;

/// Emptied batches kept for reuse per worker (more are freed: a burst does not pin memory).
const POOLED_BATCHES: usize = 32;

/// Settings of the media plane.
#[derive(Debug, Clone)]
pub struct SfuConfig {
    /// Address the media socket binds to.
    pub bind: SocketAddr,
    /// Address announced to clients as the ICE candidate; `None`: the bound address (which must
    /// then not be unspecified).
    pub advertise: Option<SocketAddr>,
    /// Worker threads (rooms are sharded over them); 0 means one per core.
    pub workers: usize,
    /// Kernel receive and send buffer asked for on the media socket, bytes (see
    /// [`crate::udp::set_buffer_sizes`]); 0 keeps the kernel's default.
    pub socket_buffer: usize,
    /// Per-room settings (the candidate fields are filled in by the shell).
    pub room: RoomConfig,
    /// ICE-TCP on the media address (`media.tcp`): passive TCP candidates, RFC 4571 framing
    /// ([`TcpConfig`]); `None`: UDP only.
    pub tcp: Option<TcpConfig>,
}

/// Errors of the media plane shell.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SfuError {
    /// The media socket could not be bound.
    #[error("cannot bind the media UDP socket on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The ICE-TCP listener could not be bound on the media address.
    #[error(
        "cannot listen for ICE-TCP on {addr} (set media.tcp = false to run UDP only): {source}"
    )]
    BindTcp {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The advertised address is unusable.
    #[error(
        "the media address to advertise is {0}, which clients cannot reach; set media.advertise"
    )]
    Unadvertisable(SocketAddr),
    /// A join was refused by the room.
    #[error(transparent)]
    Join(#[from] JoinError),
    /// No such session.
    #[error("no session {0} in this room")]
    UnknownSession(SessionId),
    /// An answer or a renegotiation was refused.
    #[error(transparent)]
    Negotiation(#[from] NegotiationError),
    /// The media plane is shutting down or a worker died.
    #[error("the media plane is not running")]
    Stopped,
}

impl SfuError {
    /// Whether the client's request was wrong (answer 4xx), as opposed to the server's state,
    /// configuration or capacity (see [`JoinError::is_client_fault`] and
    /// [`NegotiationError::is_client_fault`]).
    pub fn is_client_fault(&self) -> bool {
        match self {
            SfuError::Join(e) => e.is_client_fault(),
            SfuError::Negotiation(e) => e.is_client_fault(),
            _ => false,
        }
    }
}

/// Traffic counters of the shell (all relaxed atomics; read for metrics).
#[derive(Debug, Default)]
pub struct ShellCounters {
    /// Datagrams read from the socket.
    pub datagrams_in: AtomicU64,
    /// Bytes read.
    pub bytes_in: AtomicU64,
    /// Datagrams sent.
    pub datagrams_out: AtomicU64,
    /// Bytes sent.
    pub bytes_out: AtomicU64,
    /// Datagrams from an address no session uses (garbage, scans, late packets).
    pub unknown_source: AtomicU64,
    /// STUN for a ufrag no session has (floods, stale clients).
    pub unknown_ufrag: AtomicU64,
    /// STUN that does not parse or has no USERNAME.
    pub malformed_stun: AtomicU64,
    /// Datagrams dropped because a worker's queue was full.
    pub queue_full: AtomicU64,
    /// Send errors on the socket.
    pub send_errors: AtomicU64,
    /// Telemetry messages for a room refused because its worker's telemetry queue was full
    /// (half full for lossy ones), or the worker was gone.
    pub data_dropped: AtomicU64,
    /// Of those, reliable messages (measurements, status, command results).
    pub data_dropped_reliable: AtomicU64,
    /// Binding requests routed by ufrag from an address their session has not proven yet.
    pub stun_challenges: AtomicU64,
    /// Sessions removed because they did not connect within `media.connect_timeout`.
    pub connect_timeouts: AtomicU64,
    /// Rooms closed because they panicked (their sessions ended, other rooms carried on).
    pub room_panics: AtomicU64,
    /// Media-plane threads (workers, the I/O thread) that ended unexpectedly.
    pub threads_died: AtomicU64,
    /// Gauge: sessions in the routing table.
    pub routed_sessions: AtomicU64,
    /// Gauge: ICE ufrags in the routing table.
    pub routed_ufrags: AtomicU64,
    /// Gauge: source addresses in the routing table.
    pub routed_addresses: AtomicU64,
}

/// A readable copy of [`ShellCounters`].
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct ShellStats {
    /// Datagrams read from the socket.
    pub datagrams_in: u64,
    /// Bytes read.
    pub bytes_in: u64,
    /// Datagrams sent.
    pub datagrams_out: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Datagrams from unknown addresses.
    pub unknown_source: u64,
    /// STUN for unknown ufrags.
    pub unknown_ufrag: u64,
    /// Malformed STUN.
    pub malformed_stun: u64,
    /// Dropped on a full worker queue.
    pub queue_full: u64,
    /// Socket send errors.
    pub send_errors: u64,
    /// Telemetry messages refused on a full worker telemetry queue (lossy ones from half full).
    pub data_dropped: u64,
    /// Of those, reliable messages (measurements, status, command results).
    pub data_dropped_reliable: u64,
    /// Binding requests from addresses not proven yet (routed for checking, not learned).
    pub stun_challenges: u64,
    /// Sessions removed for not connecting within the connect timeout.
    pub connect_timeouts: u64,
    /// Rooms closed after a panic.
    pub room_panics: u64,
    /// Media-plane threads that ended unexpectedly (the node is then not ready).
    pub threads_died: u64,
    /// Sessions in the routing table now.
    pub routed_sessions: u64,
    /// ICE ufrags in the routing table now (one per session: old ones go on ICE restart).
    pub routed_ufrags: u64,
    /// Source addresses in the routing table now (learned only once authenticated).
    pub routed_addresses: u64,
}

/// Something that happened in the media plane that the server should know (audit, bookkeeping).
#[derive(Debug, Clone)]
pub enum SfuEvent {
    /// A room removed a session by itself.
    SessionEnded {
        /// The room.
        room: RoomId,
        /// The session and why.
        removed: Removed,
    },
    /// A session reached a setup stage (for join tracing).
    Progress {
        /// The room.
        room: RoomId,
        /// The session and the stage.
        progress: Progress,
    },
    /// A participant sent a message on a data channel (a device command from the doctor).
    Data {
        /// The room.
        room: RoomId,
        /// The message and who sent it.
        data: DataIn,
    },
    /// Renegotiation needed: the server made a new offer to a subscriber it negotiates with
    /// (tracks appeared or went away); the signalling layer sends it and returns the answer
    /// with [`Sfu::answer`].
    Offer {
        /// The room.
        room: RoomId,
        /// The offer and its session.
        offer: Offer,
    },
}

/// Handle to the running media plane. Cheap to clone.
#[derive(Clone)]
pub struct Sfu {
    inner: Arc<Inner>,
}

struct Inner {
    local: SocketAddr,
    workers: Vec<WorkerTx>,
    counters: Arc<ShellCounters>,
    stop: Arc<AtomicBool>,
    events: Receiver<SfuEvent>,
    threads: std::sync::Mutex<Vec<thread::JoinHandle<()>>>,
    /// The ICE-TCP listener's shared state, when it runs.
    tcp: Option<Arc<tcp::TcpShared>>,
}

type Key = (usize, SessionId);

/// The way into a worker: its queues (datagrams and commands; telemetry), and what wakes it. A worker thread waits parked
/// ([`thread::park_timeout`]), not in a blocking receive: crossbeam's spins and yields the CPU
/// several times before it sleeps, about one `sched_yield` per batch handed off at low load.
/// Worker 0 runs on the I/O thread, which waits in `poll` and is woken by the [`Waker`].
#[derive(Clone)]
struct WorkerTx {
    tx: Sender<Msg>,
    /// Telemetry, apart from the datagrams (see `shell/telemetry.rs`).
    data: Sender<Telemetry>,
    wake: Wake,
}

#[derive(Clone)]
enum Wake {
    Thread(thread::Thread),
    Io(Waker),
}

impl WorkerTx {
    /// Queues `msg`, waiting while the queue is full; `Err` once the worker is gone.
    fn send(&self, msg: Msg) -> Result<(), SfuError> {
        self.tx.send(msg).map_err(|_| SfuError::Stopped)?;
        self.wake();
        Ok(())
    }

    /// Queues `msg` unless the queue is full or the worker is gone (then `false`).
    fn try_send(&self, msg: Msg) -> bool {
        let queued = self.tx.try_send(msg).is_ok();
        if queued {
            self.wake();
        }
        queued
    }

    fn wake(&self) {
        match &self.wake {
            // Only an atomic swap unless the thread is parked.
            Wake::Thread(t) => t.unpark(),
            Wake::Io(w) => w.wake(),
        }
    }
}

/// Changes to the routing table, from the workers to the I/O thread that owns it.
enum Control {
    Register(String, Key),
    Unregister(Key),
    /// The session answered a binding request from this address: str0m authenticated it.
    Learn(SocketAddr, Key),
    /// The session sent a connectivity check (transaction id) to this address: route its
    /// answer even before the address is learned.
    Expect([u8; 12], SocketAddr, Key),
}

enum Msg {
    /// Datagrams the I/O thread read for this worker's sessions.
    Batch(Batch),
    /// Frames one ICE-TCP connection's read brought for one of this worker's sessions.
    Frames(tcp::Frames),
    Join {
        room: RoomId,
        req: Box<JoinRequest>,
        reply: oneshot::Sender<Result<Joined, JoinError>>,
    },
    Leave {
        room: RoomId,
        session: SessionId,
        reply: oneshot::Sender<bool>,
    },
    Snapshot {
        reply: oneshot::Sender<(Vec<RoomSnapshot>, DelayHistogram)>,
    },
    JoinOffering {
        room: RoomId,
        req: Box<OfferRequest>,
        reply: oneshot::Sender<Result<Offer, JoinError>>,
    },
    Answer {
        room: RoomId,
        session: SessionId,
        offer: u64,
        sdp: String,
        reply: oneshot::Sender<Result<(), NegotiationError>>,
    },
    Outstanding {
        room: RoomId,
        session: SessionId,
        restart_ice: bool,
        reply: oneshot::Sender<Result<Option<Offer>, NegotiationError>>,
    },
    Republish {
        room: RoomId,
        session: SessionId,
        offer: String,
        reply: oneshot::Sender<Result<Joined, JoinError>>,
    },
    IceRestart {
        room: RoomId,
        session: SessionId,
        remote: str0m::IceCreds,
        local: str0m::IceCreds,
        reply: oneshot::Sender<bool>,
    },
    RelayProtocol {
        room: RoomId,
        session: SessionId,
        protocol: crate::room::TransportProtocol,
        require_relayed: bool,
        reply: oneshot::Sender<Result<(), crate::room::RelayReportError>>,
    },
    Candidate {
        room: RoomId,
        session: SessionId,
        candidate: String,
        reply: oneshot::Sender<bool>,
    },
    /// Test-only faults (`fault-injection` feature).
    #[cfg(feature = "fault-injection")]
    Fault {
        room: RoomId,
        fault: Fault,
    },
    Stop,
}

/// A fault to inject into the worker that owns a room.
#[cfg(feature = "fault-injection")]
enum Fault {
    /// The room panics inside its guard.
    RoomPanic,
    /// The worker thread panics outside any room's guard, and dies.
    KillWorker,
    /// The worker stops taking anything from its queues until every sender of this channel is
    /// dropped (see [`Sfu::hold_worker`]).
    Hold(Receiver<()>),
}

/// A worker held still by [`Sfu::hold_worker`]; dropping it lets the worker carry on.
#[cfg(feature = "fault-injection")]
#[must_use = "the worker carries on as soon as this is dropped"]
pub struct WorkerHold {
    _release: Sender<()>,
}

/// Datagrams handed to a worker in one message: their bytes back to back, and where each ends.
struct Batch {
    data: Vec<u8>,
    items: Vec<Item>,
    /// When they were read from the socket.
    at: Instant,
}

struct Item {
    session: SessionId,
    source: SocketAddr,
    /// End of this datagram in `data` (it starts where the previous one ends).
    end: usize,
    challenge: Option<Challenge>,
}

impl Batch {
    fn new(at: Instant) -> Self {
        Batch {
            data: Vec::with_capacity(BATCH * 1500),
            items: Vec::with_capacity(BATCH),
            at,
        }
    }
}

impl Sfu {
    /// Binds the media socket and starts the I/O thread (which also runs worker 0) and the
    /// other workers.
    pub fn start(mut cfg: SfuConfig) -> Result<Sfu, SfuError> {
        let bind_err = |source| SfuError::Bind {
            addr: cfg.bind,
            source,
        };
        let (socket, tcp_listener) = bind_media(&cfg)?;
        let local = socket.local_addr().map_err(bind_err)?;
        if cfg.socket_buffer > 0 {
            match crate::udp::set_buffer_sizes(&socket, cfg.socket_buffer) {
                Ok((rcv, snd)) if rcv < cfg.socket_buffer || snd < cfg.socket_buffer => warn!(
                    asked = cfg.socket_buffer,
                    receive = rcv,
                    send = snd,
                    "the kernel granted the media socket smaller buffers than media.socket_buffer: \
                     raise net.core.rmem_max and net.core.wmem_max, or bursts may be dropped"
                ),
                Ok((rcv, snd)) => debug!(receive = rcv, send = snd, "media socket buffers"),
                Err(e) => warn!(error = %e, "cannot size the media socket's buffers"),
            }
        }
        let advertise = match cfg.advertise {
            Some(mut a) => {
                if a.port() == 0 {
                    a.set_port(local.port());
                }
                a
            }
            None => local,
        };
        if advertise.ip().is_unspecified() {
            return Err(SfuError::Unadvertisable(advertise));
        }
        cfg.room.candidate = advertise;
        let socket = Arc::new(socket);
        let n = if cfg.workers == 0 {
            thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            cfg.workers
        };
        let counters = Arc::new(ShellCounters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (waker, signal) = udp::waker().map_err(bind_err)?;
        let (control_tx, control_rx) = bounded::<Control>(65_536);
        let (pool_tx, pool_rx) = bounded::<Batch>(POOLED_BATCHES * n);
        let (events_tx, events_rx) = bounded::<SfuEvent>(4096);
        let mut senders = Vec::new();
        let mut receivers = Vec::new();
        for _ in 0..n {
            let (tx, rx) = bounded::<Msg>(WORKER_QUEUE);
            let (data_tx, data_rx) = bounded::<Telemetry>(TELEMETRY_QUEUE);
            senders.push((tx, data_tx));
            receivers.push((rx, data_rx));
        }
        let tcp = match (cfg.tcp.clone(), tcp_listener) {
            (Some(tcp_cfg), Some(listener)) => {
                let started =
                    tcp::start(listener, tcp_cfg, Arc::clone(&counters)).map_err(|source| {
                        SfuError::BindTcp {
                            addr: local,
                            source,
                        }
                    })?;
                cfg.room.tcp_candidate = true;
                Some(started)
            }
            _ => None,
        };
        let tcp_shared = tcp.as_ref().map(|(shared, _)| Arc::clone(shared));
        let new_worker = |index: usize| Worker {
            cfg: cfg.room.clone(),
            // The address the rooms' engines know as their host candidate: str0m drops a
            // binding request whose destination is none of its candidates, and the socket's
            // own address is 0.0.0.0 when it binds every interface.
            local: advertise,
            rooms: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
            deadlines: Deadlines::default(),
            out: Outlet {
                index,
                socket: Arc::clone(&socket),
                send: SendBatch::default(),
                counters: Arc::clone(&counters),
                control: control_tx.clone(),
                waker: (index != 0).then(|| waker.clone()),
                events: events_tx.clone(),
                sessions: HashMap::new(),
                ufrags: HashMap::new(),
                ufrag_of: HashMap::new(),
                challenge: None,
                tcp: tcp_shared.clone().map(tcp::TcpOutlet::new),
            },
            last_now: Instant::now(),
            closed_delay: DelayHistogram::default(),
        };
        let mut threads = Vec::new();
        let mut receivers = receivers.into_iter();
        let (rx0, data0) = receivers.next().ok_or(SfuError::Stopped)?;
        // The other workers first: their senders wake their threads.
        let mut wakes = vec![Wake::Io(waker.clone())];
        for (i, (rx, data)) in receivers.enumerate() {
            let worker = new_worker(i + 1);
            let pool = pool_tx.clone();
            let handle = thread::Builder::new()
                .name(format!("cabine-sfu-{}", i + 1))
                .spawn(watched(&counters, &stop, move || {
                    worker.run(rx, data, pool)
                }))
                .map_err(bind_err)?;
            wakes.push(Wake::Thread(handle.thread().clone()));
            threads.push(handle);
        }
        let workers: Vec<WorkerTx> = senders
            .into_iter()
            .zip(wakes)
            .map(|((tx, data), wake)| WorkerTx { tx, data, wake })
            .collect();
        if let Some((_, body)) = tcp {
            let workers = workers.clone();
            threads.push(
                thread::Builder::new()
                    .name("cabine-sfu-tcp".into())
                    .spawn(watched(&counters, &stop, move || body(workers)))
                    .map_err(bind_err)?,
            );
        }
        let io = Io {
            worker: Some(new_worker(0)),
            rx: rx0,
            data: data0,
            socket: Arc::clone(&socket),
            signal,
            demux: Demux::default(),
            control: control_rx,
            workers: workers.clone(),
            pending: (0..n).map(|_| None).collect(),
            pool: pool_rx,
            recv: RecvBatch::default(),
            counters: Arc::clone(&counters),
        };
        threads.push(
            thread::Builder::new()
                .name("cabine-sfu-0".into())
                .spawn(watched(&counters, &stop, move || io.run()))
                .map_err(bind_err)?,
        );
        info!(%local, %advertise, workers = n, tcp = tcp_shared.is_some(), "media plane started");
        Ok(Sfu {
            inner: Arc::new(Inner {
                local,
                workers,
                counters,
                stop,
                events: events_rx,
                threads: std::sync::Mutex::new(threads),
                tcp: tcp_shared,
            }),
        })
    }

    /// The bound media socket address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local
    }

    /// Adds a session to `room` (creating the room on its worker if needed).
    pub async fn join(&self, room: RoomId, req: JoinRequest) -> Result<Joined, SfuError> {
        let (reply, rx) = oneshot::channel();
        self.send(
            self.worker_for(&room),
            Msg::Join {
                room,
                req: Box::new(req),
                reply,
            },
        )?;
        Ok(rx.await.map_err(|_| SfuError::Stopped)??)
    }

    /// Adds a subscriber the server negotiates with (WebSocket signalling): returns the
    /// server's first offer; later offers arrive as [`SfuEvent::Offer`] (see
    /// [`Room::join_offering`](crate::room::Room::join_offering)).
    pub async fn join_offering(&self, room: RoomId, req: OfferRequest) -> Result<Offer, SfuError> {
        let (reply, rx) = oneshot::channel();
        self.send(
            self.worker_for(&room),
            Msg::JoinOffering {
                room,
                req: Box::new(req),
                reply,
            },
        )?;
        Ok(rx.await.map_err(|_| SfuError::Stopped)??)
    }

    /// Gives a subscriber's answer to the server's offer number `offer`.
    pub async fn answer(
        &self,
        room: RoomId,
        session: SessionId,
        offer: u64,
        sdp: String,
    ) -> Result<(), SfuError> {
        let (reply, rx) = oneshot::channel();
        self.send(
            self.worker_for(&room),
            Msg::Answer {
                room,
                session,
                offer,
                sdp,
                reply,
            },
        )?;
        Ok(rx.await.map_err(|_| SfuError::Stopped)??)
    }

    /// The offer a server-negotiated subscriber has not answered yet, if any; with
    /// `restart_ice`, first asks for an ICE restart (the returned offer then carries it, unless
    /// an older offer is still out: the restart follows its answer as an [`SfuEvent::Offer`]).
    pub async fn outstanding_offer(
        &self,
        room: RoomId,
        session: SessionId,
        restart_ice: bool,
    ) -> Result<Option<Offer>, SfuError> {
        let (reply, rx) = oneshot::channel();
        self.send(
            self.worker_for(&room),
            Msg::Outstanding {
                room,
                session,
                restart_ice,
                reply,
            },
        )?;
        Ok(rx.await.map_err(|_| SfuError::Stopped)??)
    }

    /// A publisher's new offer on its session (a track added or removed, or an ICE restart):
    /// returns the answer (see [`Room::republish`](crate::room::Room::republish)).
    pub async fn republish(
        &self,
        room: RoomId,
        session: SessionId,
        offer: String,
    ) -> Result<Joined, SfuError> {
        let (reply, rx) = oneshot::channel();
        self.send(
            self.worker_for(&room),
            Msg::Republish {
                room,
                session,
                offer,
                reply,
            },
        )?;
        Ok(rx.await.map_err(|_| SfuError::Stopped)??)
    }

    /// Removes a session. Errors with [`SfuError::UnknownSession`] if the room does not hold it.
    pub async fn leave(&self, room: RoomId, session: SessionId) -> Result<(), SfuError> {
        let (reply, rx) = oneshot::channel();
        self.send(
            self.worker_for(&room),
            Msg::Leave {
                room,
                session,
                reply,
            },
        )?;
        if rx.await.map_err(|_| SfuError::Stopped)? {
            Ok(())
        } else {
            Err(SfuError::UnknownSession(session))
        }
    }

    /// Restarts ICE for a session: `remote` are the client's new credentials, `local` the
    /// server's new ones (registered for routing before this returns).
    pub async fn ice_restart(
        &self,
        room: RoomId,
        session: SessionId,
        remote: str0m::IceCreds,
        local: str0m::IceCreds,
    ) -> Result<(), SfuError> {
        let (reply, rx) = oneshot::channel();
        self.send(
            self.worker_for(&room),
            Msg::IceRestart {
                room,
                session,
                remote,
                local,
                reply,
            },
        )?;
        if rx.await.map_err(|_| SfuError::Stopped)? {
            Ok(())
        } else {
            Err(SfuError::UnknownSession(session))
        }
    }

    /// A client's report of how it reaches its TURN relay (see
    /// [`Room::report_relay_protocol`](crate::room::Room::report_relay_protocol)).
    pub async fn report_relay_protocol(
        &self,
        room: RoomId,
        session: SessionId,
        protocol: crate::room::TransportProtocol,
        require_relayed: bool,
    ) -> Result<Result<(), crate::room::RelayReportError>, SfuError> {
        let (reply, rx) = oneshot::channel();
        self.send(
            self.worker_for(&room),
            Msg::RelayProtocol {
                room,
                session,
                protocol,
                require_relayed,
                reply,
            },
        )?;
        rx.await.map_err(|_| SfuError::Stopped)
    }

    /// A candidate the client trickled after its SDP (see
    /// [`Room::learn_candidate`](crate::room::Room::learn_candidate)): it tells which kind of
    /// candidate the selected pair uses. An unknown session is an error.
    pub async fn learn_candidate(
        &self,
        room: RoomId,
        session: SessionId,
        candidate: String,
    ) -> Result<(), SfuError> {
        let (reply, rx) = oneshot::channel();
        self.send(
            self.worker_for(&room),
            Msg::Candidate {
                room,
                session,
                candidate,
                reply,
            },
        )?;
        if rx.await.map_err(|_| SfuError::Stopped)? {
            Ok(())
        } else {
            Err(SfuError::UnknownSession(session))
        }
    }

    /// Sends a telemetry message to the subscribers of `room` (see
    /// [`Room::send_data`](crate::room::Room::send_data)). Never blocks. The message waits in
    /// the worker's telemetry queue, apart from its datagrams: a media burst does not crowd it
    /// out. It is refused and counted (`data_dropped`, and `data_dropped_reliable`) only when
    /// that queue is full ([`TELEMETRY_QUEUE`]; half full for a lossy message) or the worker is
    /// gone.
    pub fn send_data(&self, room: &RoomId, data: bytes::Bytes, reliable: bool) {
        self.queue_data(room, None, data, reliable);
    }

    /// Sends a telemetry message to one subscriber of `room` (see [`Room::send_data_to`](crate::room::Room::send_data_to)).
    /// Never blocks; queued, or refused and counted, like [`send_data`](Self::send_data).
    pub fn send_data_to(
        &self,
        room: &RoomId,
        session: SessionId,
        data: bytes::Bytes,
        reliable: bool,
    ) {
        self.queue_data(room, Some(session), data, reliable);
    }

    fn queue_data(&self, room: &RoomId, to: Option<SessionId>, data: bytes::Bytes, reliable: bool) {
        let msg = Telemetry {
            room: room.clone(),
            to,
            data,
            reliable,
        };
        let w = self.worker_for(room);
        telemetry::queue(&self.inner.workers[w], msg, &self.inner.counters);
    }

    /// Snapshots of every room on every worker.
    pub async fn snapshot(&self) -> Result<Vec<RoomSnapshot>, SfuError> {
        Ok(self.snapshot_with_delay().await?.0)
    }

    /// Snapshots of every room, and the node's forwarding-delay histogram since start (all
    /// workers, all rooms, including rooms that have ended).
    pub async fn snapshot_with_delay(
        &self,
    ) -> Result<(Vec<RoomSnapshot>, DelayHistogram), SfuError> {
        let mut all = Vec::new();
        let mut delay = DelayHistogram::default();
        for w in 0..self.inner.workers.len() {
            let (reply, rx) = oneshot::channel();
            self.send(w, Msg::Snapshot { reply })?;
            let (rooms, d) = rx.await.map_err(|_| SfuError::Stopped)?;
            all.extend(rooms);
            delay.merge(&d);
        }
        all.sort_by(|a, b| a.room.cmp(&b.room));
        Ok((all, delay))
    }

    /// The shell's traffic counters.
    pub fn stats(&self) -> ShellStats {
        let c = &self.inner.counters;
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ShellStats {
            datagrams_in: r(&c.datagrams_in),
            bytes_in: r(&c.bytes_in),
            datagrams_out: r(&c.datagrams_out),
            bytes_out: r(&c.bytes_out),
            unknown_source: r(&c.unknown_source),
            unknown_ufrag: r(&c.unknown_ufrag),
            malformed_stun: r(&c.malformed_stun),
            queue_full: r(&c.queue_full),
            send_errors: r(&c.send_errors),
            data_dropped: r(&c.data_dropped),
            data_dropped_reliable: r(&c.data_dropped_reliable),
            stun_challenges: r(&c.stun_challenges),
            connect_timeouts: r(&c.connect_timeouts),
            room_panics: r(&c.room_panics),
            threads_died: r(&c.threads_died),
            routed_sessions: r(&c.routed_sessions),
            routed_ufrags: r(&c.routed_ufrags),
            routed_addresses: r(&c.routed_addresses),
        }
    }

    /// The ICE-TCP listener's counters; `None` when it does not run (`media.tcp` off).
    pub fn tcp_stats(&self) -> Option<TcpStats> {
        self.inner.tcp.as_ref().map(|t| t.counters.stats())
    }

    /// Whether every media-plane thread is running: false once a worker or the I/O thread has
    /// ended without a shutdown (its rooms are gone; the node must not be ready), and after
    /// [`shutdown`](Self::shutdown).
    pub fn is_healthy(&self) -> bool {
        self.inner.counters.threads_died.load(Ordering::Relaxed) == 0
            && !self.inner.stop.load(Ordering::Relaxed)
    }

    /// Test hook: makes `room` panic inside its guard, as a bug in it would (the room is
    /// closed, its sessions end, other rooms carry on).
    #[cfg(feature = "fault-injection")]
    pub fn inject_panic(&self, room: &RoomId) -> Result<(), SfuError> {
        self.fault(room, Fault::RoomPanic)
    }

    /// Test hook: makes the worker that owns `room` panic outside any room's guard, so the
    /// thread dies (see [`is_healthy`](Self::is_healthy)).
    #[cfg(feature = "fault-injection")]
    pub fn kill_worker(&self, room: &RoomId) -> Result<(), SfuError> {
        self.fault(room, Fault::KillWorker)
    }

    /// Test hook: makes the worker that owns `room` stop taking datagrams, commands and
    /// telemetry from its queues until the returned [`WorkerHold`] is dropped, as a worker
    /// busy with a burst would (its queues fill up meanwhile). Worker 0 runs on the I/O thread:
    /// holding it holds every worker's reads too.
    #[cfg(feature = "fault-injection")]
    pub fn hold_worker(&self, room: &RoomId) -> Result<WorkerHold, SfuError> {
        let (release, held) = bounded(0);
        self.fault(room, Fault::Hold(held))?;
        Ok(WorkerHold { _release: release })
    }

    #[cfg(feature = "fault-injection")]
    fn fault(&self, room: &RoomId, fault: Fault) -> Result<(), SfuError> {
        let room = room.clone();
        self.send(self.worker_for(&room), Msg::Fault { room, fault })
    }

    /// Events from the media plane (sessions that ended on their own).
    pub fn events(&self) -> Receiver<SfuEvent> {
        self.inner.events.clone()
    }

    /// Stops the threads and waits for them.
    pub fn shutdown(&self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        for w in &self.inner.workers {
            let _ = w.send(Msg::Stop);
        }
        if let Some(tcp) = &self.inner.tcp {
            tcp.stop();
        }
        let threads = match self.inner.threads.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        for t in threads {
            let _ = t.join();
        }
    }

    fn worker_for(&self, room: &RoomId) -> usize {
        worker_index(room, self.inner.workers.len())
    }

    /// Queues `msg` for worker `w` (waking the I/O thread, which runs worker 0).
    fn send(&self, w: usize, msg: Msg) -> Result<(), SfuError> {
        self.inner.workers[w].send(msg)
    }
}

/// Binds the media UDP socket and, with ICE-TCP, the TCP listener on the same address. With
/// port 0 the kernel picks the UDP port, which TCP may already use elsewhere: then both are
/// tried again on another port (a few times).
fn bind_media(cfg: &SfuConfig) -> Result<(UdpSocket, Option<std::net::TcpListener>), SfuError> {
    const ATTEMPTS: usize = 16;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let socket = UdpSocket::bind(cfg.bind).map_err(|source| SfuError::Bind {
            addr: cfg.bind,
            source,
        })?;
        if cfg.tcp.is_none() {
            return Ok((socket, None));
        }
        let local = socket.local_addr().map_err(|source| SfuError::Bind {
            addr: cfg.bind,
            source,
        })?;
        match std::net::TcpListener::bind(local) {
            Ok(listener) => return Ok((socket, Some(listener))),
            Err(e)
                if e.kind() == io::ErrorKind::AddrInUse
                    && cfg.bind.port() == 0
                    && attempt < ATTEMPTS => {}
            Err(source) => {
                return Err(SfuError::BindTcp {
                    addr: local,
                    source,
                })
            }
        }
    }
}

/// Wraps a media-plane thread's body: if it ends while the plane is not stopping (a panic
/// outside every room's guard, a closed channel), it is counted in `threads_died`, which makes
/// [`Sfu::is_healthy`] false, and logged.
fn watched(
    counters: &Arc<ShellCounters>,
    stop: &Arc<AtomicBool>,
    body: impl FnOnce() + Send + 'static,
) -> impl FnOnce() + Send + 'static {
    struct Watch {
        counters: Arc<ShellCounters>,
        stop: Arc<AtomicBool>,
    }
    impl Drop for Watch {
        fn drop(&mut self) {
            if !self.stop.load(Ordering::Relaxed) {
                self.counters.threads_died.fetch_add(1, Ordering::Relaxed);
                error!(
                    thread = thread::current().name().unwrap_or("?"),
                    panicked = thread::panicking(),
                    "a media-plane thread ended unexpectedly; the node is no longer ready"
                );
            }
        }
    }
    let watch = Watch {
        counters: Arc::clone(counters),
        stop: Arc::clone(stop),
    };
    move || {
        let _watch = watch;
        body();
    }
}

/// The worker that owns `room` among `n`.
pub fn worker_index(room: &RoomId, n: usize) -> usize {
    let mut h = DefaultHasher::new();
    room.hash(&mut h);
    (h.finish() % n.max(1) as u64) as usize
}
