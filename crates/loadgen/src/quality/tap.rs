//! A transparent UDP forwarder on the kiosk's side of its impaired link that notes when each
//! RTP frame left the kiosk ([`SendLog`]). One client: the kiosk sends to [`Tap::local_addr`]
//! (its `--media-via`), the tap forwards to `upstream` (the impairment relay) from a socket of
//! its own and sends the replies back to the kiosk.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::latency::{rtp_header, SendLog};

/// A running tap; dropping it stops its threads.
pub struct Tap {
    addr: SocketAddr,
    log: Arc<Mutex<SendLog>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Tap {
    /// Starts a tap on a free loopback port in front of `upstream`; times are measured from
    /// `epoch`.
    pub fn start(upstream: SocketAddr, epoch: Instant) -> std::io::Result<Tap> {
        let client = UdpSocket::bind("127.0.0.1:0")?;
        let server = UdpSocket::bind("127.0.0.1:0")?;
        server.connect(upstream)?;
        // Both loops wake up at least this often to see `stop`.
        let tick = Some(Duration::from_millis(100));
        client.set_read_timeout(tick)?;
        server.set_read_timeout(tick)?;
        let addr = client.local_addr()?;
        let log = Arc::new(Mutex::new(SendLog::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let kiosk: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let up = {
            let (client, server) = (client.try_clone()?, server.try_clone()?);
            let (log, stop, kiosk) = (Arc::clone(&log), Arc::clone(&stop), Arc::clone(&kiosk));
            std::thread::Builder::new()
                .name("quality-tap-up".into())
                .spawn(move || {
                    let mut buf = vec![0u8; 2048];
                    while !stop.load(Ordering::Relaxed) {
                        let Ok((n, from)) = client.recv_from(&mut buf) else {
                            continue;
                        };
                        let at = epoch.elapsed();
                        *lock(&kiosk) = Some(from);
                        if let Some((ssrc, ts)) = rtp_header(&buf[..n]) {
                            lock(&log).note(ssrc, ts, at);
                        }
                        // A full socket buffer drops the datagram, as a network would.
                        let _ = server.send(&buf[..n]);
                    }
                })?
        };
        let down = {
            let (stop, kiosk) = (Arc::clone(&stop), Arc::clone(&kiosk));
            std::thread::Builder::new()
                .name("quality-tap-down".into())
                .spawn(move || {
                    let mut buf = vec![0u8; 2048];
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(n) = server.recv(&mut buf) else {
                            continue;
                        };
                        let to = *lock(&kiosk);
                        if let Some(to) = to {
                            let _ = client.send_to(&buf[..n], to);
                        }
                    }
                })?
        };
        Ok(Tap {
            addr,
            log,
            stop,
            threads: vec![up, down],
        })
    }

    /// The address the kiosk sends its media to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A copy of the send times noted so far.
    pub fn log(&self) -> SendLog {
        lock(&self.log).clone()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Locks `m`, taking the value even if another thread panicked while holding it (the data is
/// plain timestamps; nothing is left half-updated).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
