//! Worker threads that drive many [`Peer`]s each: epoll over their sockets, one drive loop per
//! thread (see the crate docs), commands from the scenario through a channel.

use std::collections::HashMap;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender};

use crate::peer::Peer;
use crate::receiver::StreamStats;

/// What the scenario asks of a worker.
enum Cmd {
    Add(Box<Peer>),
    Reset,
    Snapshot(Sender<Vec<PeerSnapshot>>),
    Stop,
}

/// A copy of one peer's state and received-stream statistics.
#[derive(Debug, Clone)]
pub struct PeerSnapshot {
    /// The peer's name.
    pub name: String,
    /// Its consultation.
    pub consultation: usize,
    /// Connected.
    pub connected: bool,
    /// Why it failed.
    pub failed: Option<String>,
    /// Packets its sources sent.
    pub sent: u64,
    /// Send errors.
    pub tx_errors: u64,
    /// Keyframe requests received.
    pub keyframe_requests: u64,
    /// Received streams.
    pub rx: HashMap<u32, StreamStats>,
    /// Time from the start of its setup to its first media packet (receivers that got one).
    pub first_media: Option<Duration>,
}

/// Engine settings.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Worker threads.
    pub threads: usize,
    /// Probability of dropping each RTP/RTCP datagram, in each direction, at the generator
    /// (loss emulation in user space).
    pub loss: f64,
}

/// The running workers.
pub struct Engine {
    workers: Vec<(Sender<Cmd>, JoinHandle<()>)>,
    next: usize,
}

impl Engine {
    /// Starts `cfg.threads` workers.
    pub fn start(cfg: EngineConfig) -> std::io::Result<Engine> {
        let mut workers = Vec::new();
        for i in 0..cfg.threads.max(1) {
            let (tx, rx) = unbounded();
            let seed = 0x9e37_79b9_7f4a_7c15u64 ^ (i as u64 + 1);
            let h = std::thread::Builder::new()
                .name(format!("loadgen-{i}"))
                .spawn(move || run(rx, cfg.loss, seed))?;
            workers.push((tx, h));
        }
        Ok(Engine { workers, next: 0 })
    }

    /// Hands a connected-or-connecting peer to a worker (round robin).
    pub fn add(&mut self, peer: Peer) {
        let (tx, _) = &self.workers[self.next % self.workers.len()];
        self.next += 1;
        let _ = tx.send(Cmd::Add(Box::new(peer)));
    }

    /// Starts a measurement window: every receive statistic restarts.
    pub fn reset(&self) {
        for (tx, _) in &self.workers {
            let _ = tx.send(Cmd::Reset);
        }
    }

    /// Copies every peer's state.
    pub fn snapshot(&self) -> Vec<PeerSnapshot> {
        let mut out = Vec::new();
        let mut waits = Vec::new();
        for (tx, _) in &self.workers {
            let (stx, srx) = unbounded();
            if tx.send(Cmd::Snapshot(stx)).is_ok() {
                waits.push(srx);
            }
        }
        for w in waits {
            if let Ok(v) = w.recv_timeout(Duration::from_secs(10)) {
                out.extend(v);
            }
        }
        out
    }

    /// Stops the workers (their peers' sockets close).
    pub fn stop(self) {
        for (tx, _) in &self.workers {
            let _ = tx.send(Cmd::Stop);
        }
        for (_, h) in self.workers {
            let _ = h.join();
        }
    }
}

fn run(cmds: Receiver<Cmd>, loss: f64, seed: u64) {
    // SAFETY: plain epoll syscalls on descriptors this thread owns through its peers.
    let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epfd < 0 {
        return;
    }
    let mut peers: Vec<Peer> = Vec::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 512];
    let mut buf = vec![0u8; 2048];
    let mut rng = seed;
    let threshold = (loss.clamp(0.0, 1.0) * u64::MAX as f64) as u64;
    let mut drop = move || {
        if threshold == 0 {
            return false;
        }
        // xorshift64*
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        rng.wrapping_mul(0x2545_f491_4f6c_dd1d) < threshold
    };
    loop {
        while let Ok(cmd) = cmds.try_recv() {
            match cmd {
                Cmd::Add(p) => {
                    let mut ev = libc::epoll_event {
                        events: libc::EPOLLIN as u32,
                        u64: peers.len() as u64,
                    };
                    // SAFETY: registering a valid socket descriptor.
                    unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, p.fd(), &mut ev) };
                    peers.push(*p);
                    let now = Instant::now();
                    if let Some(p) = peers.last_mut() {
                        p.tick(now, &mut drop);
                    }
                }
                Cmd::Reset => {
                    for p in &mut peers {
                        for s in p.rx.values_mut() {
                            s.reset();
                        }
                    }
                }
                Cmd::Snapshot(tx) => {
                    let snap = peers
                        .iter()
                        .map(|p| PeerSnapshot {
                            name: p.name.clone(),
                            consultation: p.consultation,
                            connected: p.connected,
                            failed: p.failed.clone(),
                            sent: p.sent(),
                            tx_errors: p.tx_errors,
                            keyframe_requests: p.keyframe_requests,
                            rx: p.rx.clone(),
                            first_media: p.time_to_first_media(),
                        })
                        .collect();
                    let _ = tx.send(snap);
                }
                Cmd::Stop => {
                    // SAFETY: closing the descriptor created above.
                    unsafe { libc::close(epfd) };
                    return;
                }
            }
        }
        let now = Instant::now();
        let next = peers
            .iter()
            .map(Peer::deadline)
            .min()
            .unwrap_or(now + Duration::from_millis(5));
        let wait = next
            .saturating_duration_since(now)
            .min(Duration::from_millis(5));
        // Round up to whole milliseconds (epoll's unit) unless already due.
        let wait_ms = if wait.is_zero() {
            0
        } else {
            wait.as_micros().div_ceil(1000) as i32
        };
        // SAFETY: `events` is a valid buffer of the length given.
        let n =
            unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), events.len() as i32, wait_ms) };
        for ev in events.iter().take(n.max(0) as usize) {
            if let Some(p) = peers.get_mut(ev.u64 as usize) {
                p.read(&mut buf, 64, &mut drop);
            }
        }
        let now = Instant::now();
        for p in &mut peers {
            if p.deadline() <= now {
                p.tick(now, &mut drop);
            }
        }
    }
}
