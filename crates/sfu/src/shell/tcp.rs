//! ICE-TCP (RFC 6544) on the media port: a passive TCP listener on the media socket's address
//! whose connections carry RFC 4571 frames ([`crate::framing`]) into the same workers and rooms
//! as UDP datagrams, and the rooms' TCP transmits back on their connection.
//!
//! One thread (`cabine-sfu-tcp`, started by the shell) runs the connections on a single-threaded tokio runtime:
//!
//! - A connection's first frame must be a STUN binding request whose USERNAME names a
//!   registered session's ufrag; the connection is then bound to that session, and every later
//!   frame goes to its worker (one message per read, as a UDP read is). Anything else first
//!   closes it (`unrouted`).
//! - A connection becomes *proven* when its session sends on it, which str0m does only after it
//!   authenticated a request that came over it. One whose first frame has not arrived within
//!   [`TcpConfig::first_frame_timeout`], or not proven within
//!   [`TcpConfig::handshake_timeout`], is closed (`unproven`); one that received nothing for
//!   [`TcpConfig::idle_timeout`] too (`idle`). One source IP holds at most
//!   [`TcpConfig::max_unproven_per_ip`] unproven connections; more are closed on accept
//!   (`refused_source`), so silent connections from one host cannot take the listener's slots.
//! - Workers never block on a connection: their TCP transmits leave in one message per flush;
//!   each connection holds at most [`TcpConfig::send_buffer`] bytes not yet written, the write
//!   in progress included, and a peer that stops reading so that this fills is closed
//!   (`stalled`).
//! - A frame of length 0 or longer than [`MAX_DATAGRAM`] closes its connection (`malformed`).
//! - At most [`TcpConfig::max_connections`] connections; more are closed on accept (`refused`).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use crossbeam_channel::Sender;
use serde::Serialize;
use str0m::ice::StunMessage;
use str0m::net::{Protocol, Transmit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tokio::task::AbortHandle;
use tracing::{debug, warn};

use super::worker::Worker;
use super::{Key, Msg, ShellCounters, WorkerTx};
use crate::framing::{self, encode, Deframer};
use crate::room::SessionId;
use crate::udp::MAX_DATAGRAM;

/// Settings of the ICE-TCP listener (`media.tcp*`).
#[derive(Debug, Clone)]
pub struct TcpConfig {
    /// Most open ICE-TCP connections (`media.tcp_max_connections`).
    pub max_connections: usize,
    /// Bytes per connection that the peer has not taken yet (queued plus the write in
    /// progress) before it is closed (`media.tcp_send_buffer`). Memory bound: a connection's
    /// two buffers (one filled while the other is written) hold at most this in all, with a
    /// capacity of at most twice this once grown; the listener at most
    /// `max_connections × 2 × send_buffer`.
    pub send_buffer: usize,
    /// A connection whose session has not answered on it by then is closed.
    pub handshake_timeout: Duration,
    /// A connection whose first frame (the STUN request that binds it to a session) has not
    /// arrived by then is closed (`media.tcp_first_frame_timeout`): a client sends it at once.
    pub first_frame_timeout: Duration,
    /// Most connections not yet proven from one source IP address; more are closed on accept
    /// (`media.tcp_max_unproven_per_ip`, counted in `refused_source`).
    pub max_unproven_per_ip: usize,
    /// A connection that received nothing for this long is closed (ICE consent checks arrive
    /// every few seconds on a live one).
    pub idle_timeout: Duration,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            max_connections: 1024,
            send_buffer: 256 * 1024,
            handshake_timeout: Duration::from_secs(10),
            first_frame_timeout: Duration::from_secs(2),
            max_unproven_per_ip: 16,
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Counters of the ICE-TCP listener (relaxed atomics).
#[derive(Debug, Default)]
pub struct TcpCounters {
    /// Gauge: open connections.
    pub connections: AtomicU64,
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Connections closed on accept: `max_connections` reached.
    pub refused: AtomicU64,
    /// Connections closed on accept: their source IP holds `max_unproven_per_ip` unproven ones.
    pub refused_source: AtomicU64,
    /// Connections closed for a frame of length 0 or over the limit.
    pub malformed: AtomicU64,
    /// Connections closed because the peer stopped reading (send buffer full).
    pub stalled: AtomicU64,
    /// Connections closed because their first frame named no session.
    pub unrouted: AtomicU64,
    /// Connections closed because their session never answered on them in time.
    pub unproven: AtomicU64,
    /// Connections closed after receiving nothing for the idle timeout.
    pub idle: AtomicU64,
    /// Frames received.
    pub frames_in: AtomicU64,
    /// Frames sent.
    pub frames_out: AtomicU64,
    /// TCP transmits with no connection of their session to their destination (str0m's
    /// checks towards an active candidate's discard port 9, a connection closed meanwhile,
    /// one bound to another session), or dropped because the listener's queue was full.
    pub unsent: AtomicU64,
}

/// A readable copy of [`TcpCounters`].
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct TcpStats {
    /// Open connections now.
    pub connections: u64,
    /// Connections accepted.
    pub accepted: u64,
    /// Connections refused at the cap.
    pub refused: u64,
    /// Connections refused at the per-source cap on unproven ones.
    pub refused_source: u64,
    /// Connections closed for a malformed frame.
    pub malformed: u64,
    /// Connections closed because the peer stopped reading.
    pub stalled: u64,
    /// Connections closed because their first frame named no session.
    pub unrouted: u64,
    /// Connections closed because their session never answered on them.
    pub unproven: u64,
    /// Connections closed for idleness.
    pub idle: u64,
    /// Frames received.
    pub frames_in: u64,
    /// Frames sent.
    pub frames_out: u64,
    /// Transmits with no connection, or dropped on a full queue.
    pub unsent: u64,
}

impl TcpCounters {
    /// A readable copy.
    pub fn stats(&self) -> TcpStats {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TcpStats {
            connections: r(&self.connections),
            accepted: r(&self.accepted),
            refused: r(&self.refused),
            refused_source: r(&self.refused_source),
            malformed: r(&self.malformed),
            stalled: r(&self.stalled),
            unrouted: r(&self.unrouted),
            unproven: r(&self.unproven),
            idle: r(&self.idle),
            frames_in: r(&self.frames_in),
            frames_out: r(&self.frames_out),
            unsent: r(&self.unsent),
        }
    }
}

/// Frames one read of one connection produced, for its session's worker: the stream bytes as
/// read (prefixes included, no copy; walked with [`framing::frames`]).
pub(super) struct Frames {
    session: SessionId,
    source: SocketAddr,
    framed: Bytes,
    at: Instant,
}

/// What the workers share with the TCP thread: the ufrags to bind new connections by, the
/// queue for their TCP transmits, the counters.
pub(super) struct TcpShared {
    routes: Mutex<Routes>,
    transmits: mpsc::Sender<Vec<(Key, Transmit)>>,
    /// Emptied transmit batches, back from the TCP thread for reuse.
    emptied: crossbeam_channel::Receiver<Vec<(Key, Transmit)>>,
    pub(super) counters: Arc<TcpCounters>,
    stop: Notify,
}

/// A worker's side of the TCP path: its rooms' TCP transmits, sent to the TCP thread in one
/// message per flush.
pub(super) struct TcpOutlet {
    shared: Arc<TcpShared>,
    pending: Vec<(Key, Transmit)>,
}

/// Transmit batches queued for the TCP thread before workers drop (and count) more.
const TRANSMIT_QUEUE: usize = 1024;

/// Prepares the TCP thread on `listener` (bound to the media socket's address): returns what
/// the workers need and the thread's body, which takes the ways into the workers (they exist
/// only once the workers, which need the shared part, have started).
pub(super) fn start(
    listener: std::net::TcpListener,
    cfg: TcpConfig,
    shell: Arc<ShellCounters>,
) -> io::Result<(Arc<TcpShared>, impl FnOnce(Vec<WorkerTx>) + Send + 'static)> {
    let local = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let (tx, rx) = mpsc::channel(TRANSMIT_QUEUE);
    let (emptied_tx, emptied) = crossbeam_channel::bounded(TRANSMIT_QUEUE);
    let shared = Arc::new(TcpShared {
        routes: Mutex::new(Routes::default()),
        transmits: tx,
        emptied,
        counters: Arc::new(TcpCounters::default()),
        stop: Notify::new(),
    });
    let thread_shared = Arc::clone(&shared);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let body = move |workers: Vec<WorkerTx>| {
        let local_set = tokio::task::LocalSet::new();
        local_set.block_on(&runtime, async move {
            let listener = match TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => {
                    warn!(error = %e, "cannot run the ICE-TCP listener");
                    return;
                }
            };
            let shared = Arc::clone(&thread_shared);
            let node = Rc::new(Node {
                cfg,
                local,
                shared: thread_shared,
                workers,
                shell,
                conns: RefCell::new(HashMap::new()),
                unproven: RefCell::new(HashMap::new()),
            });
            tokio::task::spawn_local(dispatch(Rc::clone(&node), rx, emptied_tx));
            tokio::select! {
                () = accept(node, listener) => {}
                () = shared.stop.notified() => {}
            }
        });
    };
    Ok((shared, body))
}

impl TcpShared {
    /// Stops the TCP thread (its connections are closed).
    pub(super) fn stop(&self) {
        self.stop.notify_one();
    }

    /// The routes (a panic elsewhere while holding them leaves them consistent: each change
    /// is one insert or remove).
    fn routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Which session a new connection's ufrag names, and back.
#[derive(Default)]
struct Routes {
    by_ufrag: HashMap<String, Key>,
    ufrag_of: HashMap<Key, String>,
}

impl Routes {
    fn forget(&mut self, key: Key) {
        if let Some(old) = self.ufrag_of.remove(&key) {
            self.by_ufrag.remove(&old);
        }
    }
}

impl TcpOutlet {
    /// A worker's outlet onto `shared`.
    pub(super) fn new(shared: Arc<TcpShared>) -> Self {
        TcpOutlet {
            shared,
            pending: Vec::new(),
        }
    }

    /// Queues `key`'s TCP transmit until [`flush`](Self::flush).
    pub(super) fn push(&mut self, key: Key, t: Transmit) {
        self.pending.push((key, t));
    }

    /// Hands the queued transmits to the TCP thread in one message; never blocks (a full queue
    /// drops them, counted in `unsent`).
    pub(super) fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let next = self.shared.emptied.try_recv().unwrap_or_default();
        let batch = std::mem::replace(&mut self.pending, next);
        let n = batch.len() as u64;
        if self.shared.transmits.try_send(batch).is_err() {
            self.shared.counters.unsent.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// New connections whose first request names `ufrag` belong to `key` (its previous ufrag,
    /// before an ICE restart, no longer binds any).
    pub(super) fn register(&self, ufrag: &str, key: Key) {
        let mut routes = self.shared.routes();
        routes.forget(key);
        routes.by_ufrag.insert(ufrag.to_owned(), key);
        routes.ufrag_of.insert(key, ufrag.to_owned());
    }

    /// `key` takes no new connections (its open ones end by the idle timeout, or when the
    /// client closes them).
    pub(super) fn forget(&self, key: Key) {
        self.shared.routes().forget(key);
    }
}

impl Worker {
    /// Gives the frames of one connection's read to their session's room.
    pub(super) fn frames(&mut self, f: Frames) {
        for frame in framing::frames(&f.framed) {
            self.receive(Protocol::Tcp, f.session, f.source, frame, f.at, None);
        }
    }
}

/// The TCP thread's state (single-threaded: `Rc`, `RefCell`).
struct Node {
    cfg: TcpConfig,
    local: SocketAddr,
    shared: Arc<TcpShared>,
    workers: Vec<WorkerTx>,
    shell: Arc<ShellCounters>,
    /// Open connections by peer address.
    conns: RefCell<HashMap<SocketAddr, Rc<Conn>>>,
    /// Open connections not yet proven, by source IP (entries at 0 are removed).
    unproven: RefCell<HashMap<IpAddr, usize>>,
}

impl Node {
    /// `conn` is proven, or closed while unproven: it no longer counts against its source.
    fn settle(&self, conn: &Conn) {
        if conn.counted.replace(false) {
            let mut unproven = self.unproven.borrow_mut();
            let ip = conn.peer.ip();
            if let Some(n) = unproven.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    unproven.remove(&ip);
                }
            }
        }
    }
}

/// One connection's shared state.
struct Conn {
    peer: SocketAddr,
    /// Framed bytes waiting for the writer.
    out: RefCell<BytesMut>,
    ready: Notify,
    /// Its session sent on it (so str0m authenticated a request from it).
    proven: Cell<bool>,
    /// The session its first frame named.
    bound: Cell<Option<Key>>,
    /// It counts in [`Node::unproven`] (until proven or closed).
    counted: Cell<bool>,
    /// Bytes of the write in progress (they count against the send buffer).
    writing: Cell<usize>,
    closed: Cell<bool>,
    tasks: RefCell<Vec<AbortHandle>>,
}

async fn accept(node: Rc<Node>, listener: TcpListener) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors or the like: try again shortly rather than spin.
                debug!(error = %e, "ICE-TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let c = &node.shared.counters;
        if node.conns.borrow().len() >= node.cfg.max_connections
            || node.conns.borrow().contains_key(&peer)
        {
            c.refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        }
        let from_source = node.unproven.borrow().get(&peer.ip()).copied().unwrap_or(0);
        if from_source >= node.cfg.max_unproven_per_ip {
            c.refused_source.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        }
        *node.unproven.borrow_mut().entry(peer.ip()).or_insert(0) += 1;
        c.accepted.fetch_add(1, Ordering::Relaxed);
        c.connections.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let (rd, wr) = stream.into_split();
        let conn = Rc::new(Conn {
            peer,
            out: RefCell::new(BytesMut::with_capacity(4096)),
            ready: Notify::new(),
            proven: Cell::new(false),
            bound: Cell::new(None),
            counted: Cell::new(true),
            writing: Cell::new(0),
            closed: Cell::new(false),
            tasks: RefCell::new(Vec::new()),
        });
        node.conns.borrow_mut().insert(peer, Rc::clone(&conn));
        let reader = tokio::task::spawn_local(read(Rc::clone(&node), Rc::clone(&conn), rd));
        let writer = tokio::task::spawn_local(write(Rc::clone(&node), Rc::clone(&conn), wr));
        conn.tasks
            .borrow_mut()
            .extend([reader.abort_handle(), writer.abort_handle()]);
    }
}

/// Sends the workers' TCP transmits to their connections.
async fn dispatch(
    node: Rc<Node>,
    mut rx: mpsc::Receiver<Vec<(Key, Transmit)>>,
    emptied: Sender<Vec<(Key, Transmit)>>,
) {
    let c = Arc::clone(&node.shared.counters);
    while let Some(mut batch) = rx.recv().await {
        dispatch_batch(&node, &c, &mut batch);
        // Back to the workers, so a flush does not allocate.
        let _ = emptied.try_send(batch);
    }
}

/// Frames each transmit into its connection's buffer (emptying `batch`); a connection whose
/// buffer would overflow is closed.
fn dispatch_batch(node: &Node, c: &TcpCounters, batch: &mut Vec<(Key, Transmit)>) {
    for (key, t) in batch.drain(..) {
        let conn = node.conns.borrow().get(&t.destination).cloned();
        // Only on a connection bound to the sending session: another session's connection
        // from the same address does not carry it.
        let Some(conn) = conn.filter(|c| c.bound.get() == Some(key)) else {
            c.unsent.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let overflow = {
            let mut out = conn.out.borrow_mut();
            if conn.writing.get() + out.len() + 2 + t.contents.len() > node.cfg.send_buffer {
                true
            } else {
                if encode(&t.contents, &mut out).is_err() {
                    c.unsent.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                false
            }
        };
        if overflow {
            c.stalled.fetch_add(1, Ordering::Relaxed);
            close(node, &conn);
            continue;
        }
        c.frames_out.fetch_add(1, Ordering::Relaxed);
        if !conn.proven.replace(true) {
            node.settle(&conn);
        }
        conn.ready.notify_one();
    }
}

/// Writes a connection's framed bytes; swaps buffers so the dispatcher keeps filling one while
/// the other is written (no allocation once both have grown).
async fn write(node: Rc<Node>, conn: Rc<Conn>, mut wr: OwnedWriteHalf) {
    let mut writing = BytesMut::with_capacity(4096);
    loop {
        if conn.out.borrow().is_empty() {
            conn.ready.notified().await;
            continue;
        }
        std::mem::swap(&mut *conn.out.borrow_mut(), &mut writing);
        conn.writing.set(writing.len());
        if wr.write_all(&writing).await.is_err() {
            close(&node, &conn);
            return;
        }
        conn.writing.set(0);
        let c = &node.shell;
        c.bytes_out
            .fetch_add(writing.len() as u64, Ordering::Relaxed);
        writing.clear();
    }
}

/// Reads a connection's frames, binds it to its session on the first, and hands each read's
/// frames to the session's worker.
async fn read(node: Rc<Node>, conn: Rc<Conn>, mut rd: OwnedReadHalf) {
    let c = Arc::clone(&node.shared.counters);
    let mut deframer = Deframer::new(MAX_DATAGRAM);
    let mut bound: Option<Key> = None;
    let opened = tokio::time::Instant::now();
    let mut last = opened;
    loop {
        let deadline = if conn.proven.get() {
            last + node.cfg.idle_timeout
        } else if bound.is_none() {
            opened + node.cfg.first_frame_timeout.min(node.cfg.handshake_timeout)
        } else {
            opened + node.cfg.handshake_timeout
        };
        let n = match tokio::time::timeout_at(deadline, rd.read_buf(deframer.input())).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => n,
            Err(_) => {
                let counter = if conn.proven.get() {
                    &c.idle
                } else {
                    &c.unproven
                };
                counter.fetch_add(1, Ordering::Relaxed);
                break;
            }
        };
        last = tokio::time::Instant::now();
        node.shell.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        let at = Instant::now();
        loop {
            let framed = match deframer.next_frames() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => {
                    c.malformed.fetch_add(1, Ordering::Relaxed);
                    close(&node, &conn);
                    return;
                }
            };
            let (w, session) = match bound {
                Some(key) => key,
                None => {
                    let first = framing::frames(&framed).next().unwrap_or_default();
                    match route(&node, first) {
                        Some(key) => {
                            conn.bound.set(Some(key));
                            *bound.insert(key)
                        }
                        None => {
                            c.unrouted.fetch_add(1, Ordering::Relaxed);
                            close(&node, &conn);
                            return;
                        }
                    }
                }
            };
            let count = framing::frames(&framed).count() as u64;
            c.frames_in.fetch_add(count, Ordering::Relaxed);
            let frames = Frames {
                session,
                source: conn.peer,
                framed,
                at,
            };
            // `try_send` wakes the worker; a full or gone queue drops (and counts) the frames.
            if !node.workers[w].try_send(Msg::Frames(frames)) {
                node.shell.queue_full.fetch_add(count, Ordering::Relaxed);
            }
        }
    }
    close(&node, &conn);
}

/// The session a connection's first frame names: a STUN binding request whose USERNAME starts
/// with a registered ufrag.
fn route(node: &Node, frame: &[u8]) -> Option<Key> {
    let msg = StunMessage::parse(frame).ok()?;
    if !msg.is_binding_request() {
        return None;
    }
    let (local, _remote) = msg.split_username()?;
    node.shared.routes().by_ufrag.get(local).copied()
}

/// Closes a connection once: forgets it and ends both its tasks (dropping the stream halves
/// closes the socket).
fn close(node: &Node, conn: &Rc<Conn>) {
    if conn.closed.replace(true) {
        return;
    }
    node.settle(conn);
    {
        let mut conns = node.conns.borrow_mut();
        if conns.get(&conn.peer).is_some_and(|c| Rc::ptr_eq(c, conn)) {
            conns.remove(&conn.peer);
        }
    }
    node.shared
        .counters
        .connections
        .fetch_sub(1, Ordering::Relaxed);
    debug!(local = %node.local, "ICE-TCP connection closed");
    for t in conn.tasks.borrow_mut().drain(..) {
        t.abort();
    }
}
