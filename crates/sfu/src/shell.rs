//! The thin threaded shell around the sans-IO rooms: one UDP socket, one receive thread, and
//! worker threads that each own a shard of the rooms.
//!
//! - The receive thread reads datagrams into pooled buffers, routes them with the [`Demux`]
//!   table and hands them to the owning worker over a bounded channel. It never blocks on a
//!   worker: when a worker's queue is full the datagram is dropped and counted.
//! - A worker waits for datagrams and commands until its rooms' earliest timeout, gives each
//!   to its room, drains the room's [`Output`]s (datagrams onto the shared socket, offers,
//!   progress, data and ended sessions to the server's event queue) and returns buffers to
//!   the pool.
//! - Commands (join, leave, snapshots) come from the HTTP layer and are answered on oneshot
//!   channels, so async handlers never block a runtime thread.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use cabine_proto::RoomId;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use serde::Serialize;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::demux::{Challenge, Demux, Unrouted};
use crate::room::{
    DataIn, JoinError, JoinRequest, Joined, NegotiationError, Offer, OfferRequest, Output,
    Progress, Removed, Room, RoomConfig, RoomSnapshot, SessionId,
};
use crate::stats::DelayHistogram;

/// Largest datagram read from the socket (larger ones are truncated by the kernel and refused).
pub const MAX_DATAGRAM: usize = 2048;

/// Datagrams queued per worker before the receive thread starts dropping.
pub const WORKER_QUEUE: usize = 8192;

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
    /// Per-room settings (the candidate field is filled in by the shell).
    pub room: RoomConfig,
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
    /// Telemetry messages for a room dropped because its worker's queue was full.
    pub data_dropped: AtomicU64,
    /// Binding requests routed by ufrag from an address their session has not proven yet.
    pub stun_challenges: AtomicU64,
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
    /// Telemetry messages dropped on a full worker queue.
    pub data_dropped: u64,
    /// Binding requests from addresses not proven yet (routed for checking, not learned).
    pub stun_challenges: u64,
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
    workers: Vec<Sender<Msg>>,
    counters: Arc<ShellCounters>,
    stop: Arc<AtomicBool>,
    events: Receiver<SfuEvent>,
    threads: std::sync::Mutex<Vec<thread::JoinHandle<()>>>,
}

type Key = (usize, SessionId);

enum Control {
    Register(String, Key),
    Unregister(Key),
    /// The session answered a binding request from this address: str0m authenticated it.
    Learn(SocketAddr, Key),
}

enum Msg {
    Datagram {
        session: SessionId,
        source: SocketAddr,
        buf: Vec<u8>,
        len: usize,
        at: Instant,
        challenge: Option<Challenge>,
    },
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
    /// A telemetry message for every subscriber of the room, or only for `to`.
    Data {
        room: RoomId,
        to: Option<SessionId>,
        data: bytes::Bytes,
        reliable: bool,
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
    Stop,
}

impl Sfu {
    /// Binds the media socket and starts the receive thread and the workers.
    pub fn start(mut cfg: SfuConfig) -> Result<Sfu, SfuError> {
        let socket = UdpSocket::bind(cfg.bind).map_err(|source| SfuError::Bind {
            addr: cfg.bind,
            source,
        })?;
        let local = socket.local_addr().map_err(|source| SfuError::Bind {
            addr: cfg.bind,
            source,
        })?;
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
        // A short read timeout lets the receive thread notice shutdown and registrations.
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(|source| SfuError::Bind {
                addr: cfg.bind,
                source,
            })?;
        let socket = Arc::new(socket);
        let n = if cfg.workers == 0 {
            thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            cfg.workers
        };
        let counters = Arc::new(ShellCounters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (control_tx, control_rx) = bounded::<Control>(65_536);
        let (pool_tx, pool_rx) = bounded::<Vec<u8>>(WORKER_QUEUE * n + 64);
        let (events_tx, events_rx) = bounded::<SfuEvent>(4096);
        let mut workers = Vec::new();
        let mut threads = Vec::new();
        for w in 0..n {
            let (tx, rx) = bounded::<Msg>(WORKER_QUEUE);
            workers.push(tx);
            let worker = Worker {
                rx,
                cfg: cfg.room.clone(),
                rooms: HashMap::new(),
                out: Outlet {
                    index: w,
                    socket: Arc::clone(&socket),
                    counters: Arc::clone(&counters),
                    control: control_tx.clone(),
                    events: events_tx.clone(),
                    sessions: HashMap::new(),
                    challenge: None,
                },
                pool: pool_tx.clone(),
                last_now: Instant::now(),
                closed_delay: DelayHistogram::default(),
            };
            threads.push(
                thread::Builder::new()
                    .name(format!("cabine-sfu-{w}"))
                    .spawn(move || worker.run())
                    .map_err(|source| SfuError::Bind {
                        addr: cfg.bind,
                        source,
                    })?,
            );
        }
        let recv = Receiver_ {
            socket,
            workers: workers.clone(),
            control: control_rx,
            pool: pool_rx,
            counters: Arc::clone(&counters),
            stop: Arc::clone(&stop),
            demux: Demux::default(),
        };
        threads.push(
            thread::Builder::new()
                .name("cabine-sfu-recv".into())
                .spawn(move || recv.run())
                .map_err(|source| SfuError::Bind {
                    addr: cfg.bind,
                    source,
                })?,
        );
        info!(%local, %advertise, workers = n, "media plane started");
        Ok(Sfu {
            inner: Arc::new(Inner {
                local,
                workers,
                counters,
                stop,
                events: events_rx,
                threads: std::sync::Mutex::new(threads),
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
        self.worker_for(&room)
            .send(Msg::Join {
                room,
                req: Box::new(req),
                reply,
            })
            .map_err(|_| SfuError::Stopped)?;
        Ok(rx.await.map_err(|_| SfuError::Stopped)??)
    }

    /// Adds a subscriber the server negotiates with (WebSocket signalling): returns the
    /// server's first offer; later offers arrive as [`SfuEvent::Offer`] (see
    /// [`Room::join_offering`]).
    pub async fn join_offering(&self, room: RoomId, req: OfferRequest) -> Result<Offer, SfuError> {
        let (reply, rx) = oneshot::channel();
        self.worker_for(&room)
            .send(Msg::JoinOffering {
                room,
                req: Box::new(req),
                reply,
            })
            .map_err(|_| SfuError::Stopped)?;
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
        self.worker_for(&room)
            .send(Msg::Answer {
                room,
                session,
                offer,
                sdp,
                reply,
            })
            .map_err(|_| SfuError::Stopped)?;
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
        self.worker_for(&room)
            .send(Msg::Outstanding {
                room,
                session,
                restart_ice,
                reply,
            })
            .map_err(|_| SfuError::Stopped)?;
        Ok(rx.await.map_err(|_| SfuError::Stopped)??)
    }

    /// A publisher's new offer on its session (a track added or removed, or an ICE restart):
    /// returns the answer (see [`Room::republish`]).
    pub async fn republish(
        &self,
        room: RoomId,
        session: SessionId,
        offer: String,
    ) -> Result<Joined, SfuError> {
        let (reply, rx) = oneshot::channel();
        self.worker_for(&room)
            .send(Msg::Republish {
                room,
                session,
                offer,
                reply,
            })
            .map_err(|_| SfuError::Stopped)?;
        Ok(rx.await.map_err(|_| SfuError::Stopped)??)
    }

    /// Removes a session. Errors with [`SfuError::UnknownSession`] if the room does not hold it.
    pub async fn leave(&self, room: RoomId, session: SessionId) -> Result<(), SfuError> {
        let (reply, rx) = oneshot::channel();
        self.worker_for(&room)
            .send(Msg::Leave {
                room,
                session,
                reply,
            })
            .map_err(|_| SfuError::Stopped)?;
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
        self.worker_for(&room)
            .send(Msg::IceRestart {
                room,
                session,
                remote,
                local,
                reply,
            })
            .map_err(|_| SfuError::Stopped)?;
        if rx.await.map_err(|_| SfuError::Stopped)? {
            Ok(())
        } else {
            Err(SfuError::UnknownSession(session))
        }
    }

    /// Sends a telemetry message to the subscribers of `room` (see
    /// [`Room::send_data`]). Never blocks: when the room's worker is saturated the message is
    /// dropped and counted (`data_dropped`).
    pub fn send_data(&self, room: &RoomId, data: bytes::Bytes, reliable: bool) {
        self.queue_data(room, None, data, reliable);
    }

    /// Sends a telemetry message to one subscriber of `room` (see [`Room::send_data_to`]).
    /// Never blocks; dropped and counted like [`send_data`](Self::send_data).
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
        let msg = Msg::Data {
            room: room.clone(),
            to,
            data,
            reliable,
        };
        if self.worker_for(room).try_send(msg).is_err() {
            self.inner
                .counters
                .data_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
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
        for w in &self.inner.workers {
            let (reply, rx) = oneshot::channel();
            w.send(Msg::Snapshot { reply })
                .map_err(|_| SfuError::Stopped)?;
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
            stun_challenges: r(&c.stun_challenges),
            routed_sessions: r(&c.routed_sessions),
            routed_ufrags: r(&c.routed_ufrags),
            routed_addresses: r(&c.routed_addresses),
        }
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
        let threads = match self.inner.threads.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        for t in threads {
            let _ = t.join();
        }
    }

    fn worker_for(&self, room: &RoomId) -> &Sender<Msg> {
        &self.inner.workers[worker_index(room, self.inner.workers.len())]
    }
}

/// The worker that owns `room` among `n`.
pub fn worker_index(room: &RoomId, n: usize) -> usize {
    let mut h = DefaultHasher::new();
    room.hash(&mut h);
    (h.finish() % n.max(1) as u64) as usize
}

// The receive side. (Named with a trailing underscore to keep crossbeam's `Receiver` readable.)
struct Receiver_ {
    socket: Arc<UdpSocket>,
    workers: Vec<Sender<Msg>>,
    control: Receiver<Control>,
    pool: Receiver<Vec<u8>>,
    counters: Arc<ShellCounters>,
    stop: Arc<AtomicBool>,
    demux: Demux<Key>,
}

impl Receiver_ {
    fn run(mut self) {
        let mut buf = self.take_buf();
        while !self.stop.load(Ordering::Relaxed) {
            let res = self.socket.recv_from(&mut buf);
            // Registrations are applied before routing: a session is registered before its
            // answer leaves the server, so its first STUN always finds it.
            self.apply_control();
            let (len, source) = match res {
                Ok(r) => r,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    // ICMP port unreachable surfaces as ConnectionRefused on Linux: harmless.
                    debug!(error = %e, "media socket receive error");
                    continue;
                }
            };
            let at = Instant::now();
            self.counters.datagrams_in.fetch_add(1, Ordering::Relaxed);
            self.counters
                .bytes_in
                .fetch_add(len as u64, Ordering::Relaxed);
            let (worker, session, challenge) = match self.demux.route(source, &buf[..len]) {
                Ok(r) => {
                    if r.challenge.is_some() {
                        self.counters
                            .stun_challenges
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    (r.key.0, r.key.1, r.challenge)
                }
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
            let next = self.take_buf();
            let full = std::mem::replace(&mut buf, next);
            let msg = Msg::Datagram {
                session,
                source,
                buf: full,
                len,
                at,
                challenge,
            };
            match self.workers[worker].try_send(msg) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    self.counters.queue_full.fetch_add(1, Ordering::Relaxed);
                }
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
    }

    fn take_buf(&self) -> Vec<u8> {
        match self.pool.try_recv() {
            Ok(b) => b,
            Err(_) => vec![0; MAX_DATAGRAM],
        }
    }

    fn apply_control(&mut self) {
        let mut changed = false;
        loop {
            let control = self.control.try_recv();
            changed |= control.is_ok();
            match control {
                Ok(Control::Register(ufrag, key)) => self.demux.register(ufrag, key),
                Ok(Control::Unregister(key)) => self.demux.unregister(key),
                Ok(Control::Learn(addr, key)) => {
                    self.demux.learn(addr, key);
                }
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
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

struct Worker {
    rx: Receiver<Msg>,
    cfg: RoomConfig,
    rooms: HashMap<RoomId, Room>,
    out: Outlet,
    pool: Sender<Vec<u8>>,
    last_now: Instant,
    /// Forwarding delay of the rooms this worker closed (live rooms keep their own).
    closed_delay: DelayHistogram,
}

/// Where a worker's rooms' outputs go: the socket, the receive thread's routing table and the
/// server's event queue.
struct Outlet {
    index: usize,
    socket: Arc<UdpSocket>,
    counters: Arc<ShellCounters>,
    control: Sender<Control>,
    events: Sender<SfuEvent>,
    /// Which room holds each session of this worker.
    sessions: HashMap<SessionId, RoomId>,
    /// The binding request from an unproven address being handled, and its session: answered
    /// with a success, the address is learned (before the answer leaves).
    challenge: Option<(Challenge, SessionId)>,
}

/// What draining a room produced that the worker acts on.
#[derive(Default)]
struct Drained {
    /// The offer made to the session the caller claimed (returned, not reported).
    claimed: Option<Offer>,
    /// Whether the room removed a session by itself (it may now be empty).
    ended: bool,
}

impl Worker {
    fn run(mut self) {
        let mut emptied = Vec::new();
        loop {
            let deadline = self.rooms.values().filter_map(Room::poll_timeout).min();
            let msg = match deadline {
                Some(d) => match self.rx.recv_deadline(d) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                },
                None => match self.rx.recv_timeout(Duration::from_secs(1)) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                },
            };
            if let Some(msg) = msg {
                if !self.handle(msg) {
                    return;
                }
                // Drain what else is queued before looking at timers.
                while let Ok(msg) = self.rx.try_recv() {
                    if !self.handle(msg) {
                        return;
                    }
                }
            }
            let now = self.now();
            for (id, room) in &mut self.rooms {
                if room.poll_timeout().is_some_and(|t| t <= now) {
                    room.handle_timeout(now);
                    if self.out.drain(room, None).ended && room.is_empty() {
                        emptied.push(id.clone());
                    }
                }
            }
            for id in emptied.drain(..) {
                self.close_if_empty(&id);
            }
        }
    }

    fn now(&mut self) -> Instant {
        // str0m needs time that never goes backwards across calls.
        let now = Instant::now().max(self.last_now);
        self.last_now = now;
        now
    }

    /// Handles one message; false means stop.
    fn handle(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Datagram {
                session,
                source,
                buf,
                len,
                at,
                challenge,
            } => {
                let now = self.now();
                let destination = self.out.socket.local_addr().unwrap_or(self.cfg.candidate);
                let room = self
                    .out
                    .sessions
                    .get(&session)
                    .and_then(|id| self.rooms.get_mut(id));
                if let Some(room) = room {
                    room.handle_datagram(now, at, session, source, destination, &buf[..len]);
                    self.out.challenge = challenge.map(|c| (c, session));
                    let ended = self.out.drain(room, None).ended;
                    self.out.challenge = None;
                    if ended && room.is_empty() {
                        let id = room.id().clone();
                        self.close_if_empty(&id);
                    }
                }
                let _ = self.pool.try_send(buf);
            }
            Msg::Join { room, req, reply } => {
                let (session, ufrag) = (req.session, req.ice_ufrag.clone());
                let result = self.join(room, session, ufrag, |r, now| r.join(now, *req));
                let _ = reply.send(result);
            }
            Msg::JoinOffering { room, req, reply } => {
                let (session, ufrag) = (req.session, req.ice_ufrag.clone());
                let result = self.join(room, session, ufrag, |r, now| r.join_offering(now, *req));
                let _ = reply.send(result);
            }
            Msg::Answer {
                room,
                session,
                offer,
                sdp,
                reply,
            } => {
                let now = self.now();
                let result = match self.rooms.get_mut(&room) {
                    Some(r) => {
                        let result = r.accept_answer(now, session, offer, &sdp);
                        self.out.flush(r, now);
                        result
                    }
                    None => Err(NegotiationError::UnknownSession(session)),
                };
                let _ = reply.send(result);
            }
            Msg::Outstanding {
                room,
                session,
                restart_ice,
                reply,
            } => {
                let result = match self.rooms.get_mut(&room) {
                    Some(r) => {
                        let asked = if restart_ice {
                            r.restart_ice_offer(session)
                        } else {
                            Ok(())
                        };
                        // A restart offer made at once is returned here, not reported twice.
                        let pending = self.out.drain(r, Some(session)).claimed;
                        asked.map(|()| pending.or_else(|| r.outstanding_offer(session)))
                    }
                    None => Err(NegotiationError::UnknownSession(session)),
                };
                if let Ok(Some(o)) = &result {
                    self.out.register(o.ice_ufrag.clone(), session);
                }
                let _ = reply.send(result);
            }
            Msg::Republish {
                room,
                session,
                offer,
                reply,
            } => {
                let now = self.now();
                let result = match self.rooms.get_mut(&room) {
                    Some(r) => {
                        let result = r.republish(now, session, &offer);
                        if let Some(ufrag) = r.local_ufrag(session) {
                            self.out.register(ufrag, session);
                        }
                        self.out.flush(r, now);
                        result
                    }
                    None => Err(JoinError::UnknownSession(session)),
                };
                let _ = reply.send(result);
            }
            Msg::Leave {
                room,
                session,
                reply,
            } => {
                let found = match self.rooms.get_mut(&room) {
                    Some(r) => {
                        let found = r.leave(session);
                        // Subscribers of its tracks get new offers.
                        self.out.drain(r, None);
                        found
                    }
                    None => false,
                };
                if found {
                    self.out.forget(session);
                    self.close_if_empty(&room);
                }
                let _ = reply.send(found);
            }
            Msg::Snapshot { reply } => {
                let now = self.now();
                let rooms = self.rooms.values().map(|r| r.snapshot(now)).collect();
                let mut delay = self.closed_delay.clone();
                for r in self.rooms.values() {
                    delay.merge(r.forwarding_delay());
                }
                let _ = reply.send((rooms, delay));
            }
            Msg::Data {
                room,
                to,
                data,
                reliable,
            } => {
                let now = self.now();
                if let Some(r) = self.rooms.get_mut(&room) {
                    match to {
                        None => {
                            r.send_data(now, &data, reliable);
                        }
                        Some(session) => {
                            r.send_data_to(now, session, &data, reliable);
                        }
                    }
                    self.out.drain(r, None);
                }
            }
            Msg::IceRestart {
                room,
                session,
                remote,
                local,
                reply,
            } => {
                let ufrag = local.ufrag.clone();
                let found = self
                    .rooms
                    .get_mut(&room)
                    .is_some_and(|r| r.ice_restart(session, remote, local));
                if found {
                    self.out.register(ufrag, session);
                    let now = self.now();
                    if let Some(r) = self.rooms.get_mut(&room) {
                        self.out.flush(r, now);
                    }
                }
                let _ = reply.send(found);
            }
            Msg::Stop => return false,
        }
        true
    }

    /// Adds `session` to `room` (created if needed) with `join`; on success registers its ufrag
    /// with the receive thread and sends what the session has to send at once; a room left
    /// empty by a refused join is dropped.
    fn join<T>(
        &mut self,
        room: RoomId,
        session: SessionId,
        ufrag: String,
        join: impl FnOnce(&mut Room, Instant) -> Result<T, JoinError>,
    ) -> Result<T, JoinError> {
        let now = self.now();
        let r = self
            .rooms
            .entry(room.clone())
            .or_insert_with(|| Room::new(room.clone(), self.cfg.clone()));
        let result = join(r, now);
        if result.is_ok() {
            self.out.sessions.insert(session, room);
            self.out.register(ufrag, session);
            self.out.flush(r, now);
        } else if r.is_empty() {
            self.close_if_empty(&room);
        }
        result
    }

    /// Drops `room` if it has no session left, keeping its forwarding-delay histogram for the
    /// node's total.
    fn close_if_empty(&mut self, room: &RoomId) {
        if let Some(r) = self.rooms.remove(room) {
            if r.is_empty() {
                self.closed_delay.merge(r.forwarding_delay());
            } else {
                self.rooms.insert(room.clone(), r);
            }
        }
    }
}

impl Outlet {
    /// Sends what `r` has to send at `now` (after a join, an answer, an ICE restart…).
    fn flush(&mut self, r: &mut Room, now: Instant) -> Drained {
        r.handle_timeout(now);
        self.drain(r, None)
    }

    /// Drains `room`'s outputs until its timeout: sends the datagrams and reports offers,
    /// progress, data-channel messages and ended sessions to the server. An offer to `claim`
    /// is returned instead of reported.
    fn drain(&mut self, room: &mut Room, claim: Option<SessionId>) -> Drained {
        let mut drained = Drained::default();
        loop {
            match room.poll_output() {
                Output::Transmit(t) => {
                    if let Some((c, session)) = self.challenge {
                        if c.is_answered_by(t.destination, &t.contents) {
                            let _ = self
                                .control
                                .send(Control::Learn(c.source, (self.index, session)));
                        }
                    }
                    send_to(&self.socket, &self.counters, &t)
                }
                Output::Offer(offer)
                    if drained.claimed.is_none() && claim == Some(offer.session) =>
                {
                    drained.claimed = Some(offer);
                }
                Output::Offer(offer) => self.report_offer(room.id().clone(), offer),
                Output::Progress(progress) => {
                    let _ = self.events.try_send(SfuEvent::Progress {
                        room: room.id().clone(),
                        progress,
                    });
                }
                Output::Data(data) => {
                    let event = SfuEvent::Data {
                        room: room.id().clone(),
                        data,
                    };
                    if self.events.try_send(event).is_err() {
                        warn!("media plane event queue full, a data channel message was dropped");
                    }
                }
                Output::Ended(removed) => {
                    drained.ended = true;
                    self.forget(removed.session);
                    info!(session = %removed.session, reason = removed.reason, "session ended");
                    let event = SfuEvent::SessionEnded {
                        room: room.id().clone(),
                        removed,
                    };
                    if self.events.try_send(event).is_err() {
                        warn!("media plane event queue full, an ended session was not reported");
                    }
                }
                Output::Timeout(_) => return drained,
            }
        }
    }

    /// Tells the receive thread to route STUN with `ufrag` to `session` on this worker.
    fn register(&self, ufrag: String, session: SessionId) {
        let _ = self
            .control
            .send(Control::Register(ufrag, (self.index, session)));
    }

    /// Registers the ufrag of a server offer (it changes on an ICE restart) and reports the
    /// offer.
    fn report_offer(&mut self, room: RoomId, offer: Offer) {
        self.register(offer.ice_ufrag.clone(), offer.session);
        if self
            .events
            .try_send(SfuEvent::Offer { room, offer })
            .is_err()
        {
            warn!("media plane event queue full, a renegotiation offer was dropped");
        }
    }

    fn forget(&mut self, session: SessionId) {
        self.sessions.remove(&session);
        let _ = self
            .control
            .send(Control::Unregister((self.index, session)));
    }
}

fn send_to(socket: &UdpSocket, counters: &ShellCounters, t: &str0m::net::Transmit) {
    match socket.send_to(&t.contents, t.destination) {
        Ok(n) => {
            counters.datagrams_out.fetch_add(1, Ordering::Relaxed);
            counters.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        }
        Err(_) => {
            counters.send_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}
