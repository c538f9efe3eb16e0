//! The tokio shell: a UDP relay with one pair of impaired [`Link`]s per client address.
//!
//! ```text
//! client ──▶ listen socket ──▶ flow task: uplink Link ──▶ flow socket ──▶ upstream (server)
//! client ◀── listen socket ◀── flow task: downlink Link ◀── flow socket ◀──┘
//! ```
//!
//! The listen task reads the client side and hands each datagram to its client's flow task
//! (created on the first datagram from a new address, up to `max_flows`). A flow task owns its
//! upstream socket and both links, and runs the core's drive loop with the real clock. A flow
//! without traffic either way for `idle_timeout` ends.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::link::{Link, LinkStats, Output};
use crate::profile::Profile;
use crate::Error;

/// How the relay is set up.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Where clients send (port 0: any free port).
    pub listen: SocketAddr,
    /// The server's real media address.
    pub upstream: SocketAddr,
    /// The impairments of both directions.
    pub profile: Profile,
    /// Seed of every random draw (each flow and direction derives its own from it).
    pub seed: u64,
    /// Most client addresses relayed at once; datagrams from further ones are dropped and
    /// counted in [`RelayStats::refused_flows`].
    pub max_flows: usize,
    /// A flow with no datagram either way for this long is closed.
    pub idle_timeout: Duration,
    /// Also relay TCP (ICE-TCP) on the same address and port to the same upstream, at most
    /// `max_flows` connections at once; only the rate limit, delay and jitter apply there.
    pub tcp: bool,
}

impl RelayConfig {
    /// A relay on a free loopback port in front of `upstream`, with `profile`, seed 0, at most
    /// 64 flows, closed after 60 s idle.
    pub fn loopback(upstream: SocketAddr, profile: Profile) -> Self {
        RelayConfig {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            upstream,
            profile,
            seed: 0,
            max_flows: 64,
            idle_timeout: Duration::from_secs(60),
            tcp: false,
        }
    }
}

/// Counters of a relay, summed over its flows (the closed ones included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Flows (client addresses, and TCP connections) relayed so far.
    pub flows: u64,
    /// Datagrams dropped (and TCP connections closed) because `max_flows` were open.
    pub refused_flows: u64,
    /// Datagrams dropped before their flow's link because the flow task fell behind (a
    /// starved machine, not an impairment).
    pub backlog_drops: u64,
    /// Client → server.
    pub uplink: LinkStats,
    /// Server → client.
    pub downlink: LinkStats,
}

/// A running relay. Dropping it stops it.
#[derive(Debug)]
pub struct Relay {
    local_addr: SocketAddr,
    profile: watch::Sender<Profile>,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
    tcp_task: Option<JoinHandle<()>>,
}

impl Relay {
    /// Binds the listen socket and starts relaying. Must be called within a tokio runtime.
    pub async fn start(config: RelayConfig) -> Result<Relay, Error> {
        config.profile.validate()?;
        let socket = UdpSocket::bind(config.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = socket.local_addr().map_err(|source| Error::Io {
            context: "reading the relay's address",
            source,
        })?;
        let (profile, profile_rx) = watch::channel(config.profile.clone());
        let shared = Arc::new(Shared::default());
        let tcp_task = if config.tcp {
            let listener = tokio::net::TcpListener::bind(local_addr)
                .await
                .map_err(|source| Error::Bind {
                    addr: local_addr,
                    source,
                })?;
            Some(tokio::spawn(crate::tcp::accept_loop(
                listener,
                config.upstream,
                config.max_flows,
                profile_rx.clone(),
                Arc::clone(&shared),
            )))
        } else {
            None
        };
        let task = tokio::spawn(listen_loop(
            Arc::new(socket),
            config,
            profile_rx,
            Arc::clone(&shared),
        ));
        Ok(Relay {
            local_addr,
            profile,
            shared,
            task,
            tcp_task,
        })
    }

    /// The address clients send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Changes the impairments of every flow, open or future, from now on (a link that
    /// shrinks or recovers mid-call).
    pub fn set_profile(&self, profile: Profile) -> Result<(), Error> {
        profile.validate()?;
        self.profile.send_replace(profile);
        Ok(())
    }

    /// Counters so far.
    pub fn stats(&self) -> RelayStats {
        let flows = lock(&self.shared.flows);
        let mut stats = RelayStats {
            flows: flows.len() as u64,
            refused_flows: self.shared.refused.load(Ordering::Relaxed),
            backlog_drops: self.shared.backlog_drops.load(Ordering::Relaxed),
            ..RelayStats::default()
        };
        for flow in flows.iter() {
            let (up, down) = *lock(flow);
            add(&mut stats.uplink, &up);
            add(&mut stats.downlink, &down);
        }
        stats
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Flow tasks end when their sender (held by the listen task) is dropped.
        self.task.abort();
        if let Some(t) = &self.tcp_task {
            t.abort();
        }
    }
}

/// State shared between the relay handle and its tasks: only counters, written once per
/// wake-up of a flow task and read by [`Relay::stats`].
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub(crate) flows: Mutex<Vec<Arc<FlowCounters>>>,
    pub(crate) refused: AtomicU64,
    pub(crate) backlog_drops: AtomicU64,
}

/// One flow's (uplink, downlink) counters.
pub(crate) type FlowCounters = Mutex<(LinkStats, LinkStats)>;

/// Datagrams waiting between the listen task and one flow task. Only a starved flow task
/// (an overloaded test machine) fills it; the excess is dropped and counted
/// ([`RelayStats::backlog_drops`]).
const FLOW_CHANNEL: usize = 4096;

/// Largest datagram relayed.
const MAX_DATAGRAM: usize = 65_536;

async fn listen_loop(
    socket: Arc<UdpSocket>,
    config: RelayConfig,
    profile: watch::Receiver<Profile>,
    shared: Arc<Shared>,
) {
    let mut flows: HashMap<SocketAddr, mpsc::Sender<Bytes>> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<SocketAddr>();
    let mut buf = BytesMut::with_capacity(4 * MAX_DATAGRAM);
    let mut created = 0u64;
    loop {
        if buf.capacity() < MAX_DATAGRAM {
            buf.reserve(4 * MAX_DATAGRAM);
        }
        let from = tokio::select! {
            Some(ended) = done_rx.recv() => {
                flows.remove(&ended);
                continue;
            }
            read = socket.recv_buf_from(&mut buf) => match read {
                Ok((_, from)) => from,
                Err(e) => {
                    // E.g. ICMP port unreachable reported on the next read: not fatal.
                    tracing::debug!(error = %e, "relay read failed");
                    continue;
                }
            },
        };
        let datagram = buf.split().freeze();
        if let Some(flow) = flows.get(&from) {
            if !flow.is_closed() {
                if let Err(mpsc::error::TrySendError::Full(_)) = flow.try_send(datagram) {
                    shared.backlog_drops.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            flows.remove(&from);
        }
        if flows.len() >= config.max_flows {
            shared.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let upstream = match UdpSocket::bind(unspecified_like(config.upstream)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "relay cannot open a flow socket");
                continue;
            }
        };
        let counters: Arc<FlowCounters> = Arc::default();
        lock(&shared.flows).push(Arc::clone(&counters));
        let (tx, rx) = mpsc::channel(FLOW_CHANNEL);
        let _ = tx.try_send(datagram);
        flows.insert(from, tx);
        created += 1;
        let flow = Flow {
            client: from,
            upstream_addr: config.upstream,
            listen: Arc::clone(&socket),
            upstream,
            seed: config
                .seed
                .wrapping_add(created.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            idle_timeout: config.idle_timeout,
        };
        tokio::spawn(flow.run(rx, profile.clone(), counters, done_tx.clone()));
    }
}

/// One client's path through the relay.
struct Flow {
    client: SocketAddr,
    upstream_addr: SocketAddr,
    listen: Arc<UdpSocket>,
    upstream: UdpSocket,
    seed: u64,
    idle_timeout: Duration,
}

impl Flow {
    async fn run(
        self,
        mut from_client: mpsc::Receiver<Bytes>,
        mut profile: watch::Receiver<Profile>,
        counters: Arc<FlowCounters>,
        done: mpsc::UnboundedSender<SocketAddr>,
    ) {
        let current = profile.borrow_and_update().clone();
        let mut up: Link<Bytes> = Link::new(current.uplink, self.seed);
        let mut down: Link<Bytes> = Link::new(current.downlink, self.seed ^ 1);
        let mut buf = BytesMut::with_capacity(4 * MAX_DATAGRAM);
        let mut last_activity = Instant::now();
        let mut wake: Option<Instant> = None;
        loop {
            if buf.capacity() < MAX_DATAGRAM {
                buf.reserve(4 * MAX_DATAGRAM);
            }
            let idle_at = last_activity + self.idle_timeout;
            let deadline = wake.map_or(idle_at, |w| w.min(idle_at));
            tokio::select! {
                got = from_client.recv() => match got {
                    Some(datagram) => {
                        let now = Instant::now();
                        last_activity = now;
                        up.handle_input(now, datagram.len(), datagram);
                    }
                    None => break,
                },
                read = self.upstream.recv_buf_from(&mut buf) => {
                    if let Ok((_, from)) = read {
                        let datagram = buf.split().freeze();
                        if from == self.upstream_addr {
                            let now = Instant::now();
                            last_activity = now;
                            down.handle_input(now, datagram.len(), datagram);
                        }
                    }
                }
                changed = profile.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let now = Instant::now();
                    let p = profile.borrow_and_update().clone();
                    up.set_config(now, p.uplink);
                    down.set_config(now, p.downlink);
                }
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
            let now = Instant::now();
            if now >= last_activity + self.idle_timeout {
                break;
            }
            let up_next = drain(&mut up, now, &self.upstream, self.upstream_addr).await;
            let down_next = drain(&mut down, now, &self.listen, self.client).await;
            wake = match (up_next, down_next) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            *lock(&counters) = (up.stats(), down.stats());
        }
        let _ = done.send(self.client);
    }
}

/// Sends everything `link` has due by `now` to `to`; returns its next timeout.
async fn drain(
    link: &mut Link<Bytes>,
    now: Instant,
    socket: &UdpSocket,
    to: SocketAddr,
) -> Option<Instant> {
    loop {
        match link.poll_output(now) {
            Output::Deliver(datagram) => {
                if let Err(e) = socket.send_to(&datagram, to).await {
                    tracing::debug!(error = %e, %to, "relay send failed");
                }
            }
            Output::Timeout(at) => return Some(at),
            Output::Idle => return None,
        }
    }
}

/// The wildcard address of `addr`'s family, any port.
fn unspecified_like(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) if a.ip().is_loopback() => (Ipv4Addr::LOCALHOST, 0).into(),
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(a) if a.ip().is_loopback() => (Ipv6Addr::LOCALHOST, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

fn add(total: &mut LinkStats, s: &LinkStats) {
    total.offered += s.offered;
    total.offered_bytes += s.offered_bytes;
    total.lost += s.lost;
    total.overflowed += s.overflowed;
    total.delivered += s.delivered;
    total.delivered_bytes += s.delivered_bytes;
    total.reordered += s.reordered;
    total.max_queued_bytes = total.max_queued_bytes.max(s.max_queued_bytes);
}

/// Locks a counters mutex. A panic while holding it cannot leave counters half-written in a
/// way that matters, so a poisoned lock is used as is.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
