//! The TCP side of the relay (ICE-TCP, RFC 6544, reaches the server's media port over TCP):
//! each accepted connection is joined to a new connection to the upstream address, and each
//! direction's bytes go through an impaired [`Link`] as chunks.
//!
//! A byte stream cannot lose or reorder (the kernels' TCP hides both), so on TCP only the
//! rate limit, delay and jitter apply (order kept); a full queue stops reading from the
//! sender instead of dropping, which is what a bottleneck does to a TCP sender.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::link::{Link, LinkConfig, Output};
use crate::loss::Loss;
use crate::profile::Profile;
use crate::relay::{lock, FlowCounters, Shared};

/// Largest chunk read at once (less when the queue is smaller).
const CHUNK: usize = 16 * 1024;

/// Accepts connections until the listener fails or the relay is dropped.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    max_connections: usize,
    profile: watch::Receiver<Profile>,
    shared: Arc<Shared>,
) {
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if open.load(Ordering::Relaxed) >= max_connections {
            shared.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let Ok(server) = TcpStream::connect(upstream).await else {
            tracing::debug!(%upstream, "relay cannot reach the upstream over TCP");
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let counters: Arc<FlowCounters> = Arc::default();
        lock(&shared.flows).push(Arc::clone(&counters));
        open.fetch_add(1, Ordering::Relaxed);
        let open = Arc::clone(&open);
        let profile = profile.clone();
        tokio::spawn(async move {
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            let up = pump(client_read, server_write, profile.clone(), true, &counters);
            let down = pump(server_read, client_write, profile, false, &counters);
            tokio::join!(up, down);
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// The link settings a stream can honour: no loss, no reordering.
fn for_stream(config: &LinkConfig) -> LinkConfig {
    LinkConfig {
        loss: Loss::None,
        reorder: 0.0,
        ..config.clone()
    }
}

/// Moves one direction's bytes through its link until the sender closes and everything is
/// delivered (then the write side is shut down), or either side fails.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut profile: watch::Receiver<Profile>,
    uplink: bool,
    counters: &FlowCounters,
) {
    let pick = |p: &Profile| for_stream(if uplink { &p.uplink } else { &p.downlink });
    let mut link: Link<Bytes> = Link::new(pick(&profile.borrow_and_update()), 0);
    let mut buf = BytesMut::with_capacity(4 * CHUNK);
    let mut scratch = vec![0u8; CHUNK];
    let mut wake: Option<Instant> = None;
    let mut eof = false;
    let mut watching = true;
    loop {
        let config = link.config();
        let room = config
            .rate_bps
            .map_or(CHUNK, |_| {
                config.queue_bytes.saturating_sub(link.queued_bytes())
            })
            .min(CHUNK);
        if buf.capacity() < CHUNK {
            buf.reserve(4 * CHUNK);
        }
        let reading = !eof && room > 0;
        tokio::select! {
            read = from.read(&mut scratch[..room]), if reading => match read {
                Ok(0) | Err(_) => eof = true,
                Ok(n) => {
                    // The one copy: into a chunk the link can hold while it waits.
                    buf.extend_from_slice(&scratch[..n]);
                    let chunk = buf.split().freeze();
                    link.handle_input(Instant::now(), n, chunk);
                }
            },
            changed = profile.changed(), if watching => {
                if changed.is_ok() {
                    let p = pick(&profile.borrow_and_update());
                    link.set_config(Instant::now(), p);
                } else {
                    // The relay is gone: keep the settings, finish the connection.
                    watching = false;
                }
            }
            _ = sleep_until(wake), if wake.is_some() => {}
        }
        let now = Instant::now();
        wake = loop {
            match link.poll_output(now) {
                Output::Deliver(chunk) => {
                    if to.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
                Output::Timeout(at) => break Some(at),
                Output::Idle => break None,
            }
        };
        {
            let mut c = lock(counters);
            if uplink {
                c.0 = link.stats();
            } else {
                c.1 = link.stats();
            }
        }
        if eof && wake.is_none() {
            let _ = to.shutdown().await;
            return;
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}
