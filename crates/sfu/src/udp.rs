//! Batched UDP I/O on the media socket: up to [`BATCH`] datagrams per system call in each
//! direction (`recvmmsg`/`sendmmsg` on Linux, one call per datagram elsewhere), and waiting for
//! the socket or a wake-up in one `poll`.
//!
//! Buffers are allocated once per [`RecvBatch`]/[`SendBatch`] and reused: nothing here
//! allocates per datagram.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use str0m::net::Transmit;

/// Largest datagram read from the socket (larger ones are truncated by the kernel and refused).
pub const MAX_DATAGRAM: usize = 2048;

/// Datagrams per receive or send system call.
pub const BATCH: usize = 32;

/// Datagrams read by one [`recv`]: their bytes, lengths and sources.
pub struct RecvBatch {
    bufs: Box<[[u8; MAX_DATAGRAM]; BATCH]>,
    lens: [usize; BATCH],
    sources: [SocketAddr; BATCH],
    count: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch {
            bufs: Box::new([[0; MAX_DATAGRAM]; BATCH]),
            lens: [0; BATCH],
            sources: [SocketAddr::from(([0, 0, 0, 0], 0)); BATCH],
            count: 0,
        }
    }
}

impl RecvBatch {
    /// Number of datagrams read.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether nothing was read.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Datagram `i`: its source and bytes.
    pub fn get(&self, i: usize) -> (SocketAddr, &[u8]) {
        (self.sources[i], &self.bufs[i][..self.lens[i]])
    }
}

/// Datagrams waiting to be sent with one [`SendBatch::flush`].
#[derive(Default)]
pub struct SendBatch {
    queue: Vec<Transmit>,
}

/// What one flush sent.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sent {
    /// Datagrams sent.
    pub datagrams: u64,
    /// Bytes sent.
    pub bytes: u64,
    /// Datagrams the socket refused.
    pub errors: u64,
}

impl SendBatch {
    /// Queues a datagram; the caller flushes when [`SendBatch::is_full`] and at the end of
    /// each turn.
    pub fn push(&mut self, t: Transmit) {
        if self.queue.capacity() == 0 {
            self.queue.reserve_exact(BATCH);
        }
        self.queue.push(t);
    }

    /// Whether a flush is due.
    pub fn is_full(&self) -> bool {
        self.queue.len() >= BATCH
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Sends everything queued (the queue keeps its capacity).
    pub fn flush(&mut self, socket: &UdpSocket) -> Sent {
        let mut sent = Sent::default();
        let mut from = 0;
        while from < self.queue.len() {
            match send_many(socket, &self.queue[from..]) {
                Ok(n) => {
                    for t in &self.queue[from..from + n] {
                        sent.datagrams += 1;
                        sent.bytes += t.contents.len() as u64;
                    }
                    from += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    // The first datagram was refused (no route, too large...): skip it.
                    sent.errors += 1;
                    from += 1;
                }
            }
        }
        self.queue.clear();
        sent
    }
}

/// Reads up to [`BATCH`] datagrams without blocking; `Ok(0)` when none is waiting.
pub fn recv(socket: &UdpSocket, batch: &mut RecvBatch) -> io::Result<usize> {
    batch.count = 0;
    match recv_many(socket, batch) {
        Ok(n) => {
            batch.count = n;
            Ok(n)
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
        Err(e) => Err(e),
    }
}

/// Wakes a thread blocked in [`wait`] from another thread.
#[derive(Debug, Clone)]
pub struct Waker(std::sync::Arc<UnixDatagram>);

/// The receiving end of a [`Waker`].
#[derive(Debug)]
pub struct WakeSignal(UnixDatagram);

/// A connected wake-up pair.
pub fn waker() -> io::Result<(Waker, WakeSignal)> {
    let (a, b) = UnixDatagram::pair()?;
    a.set_nonblocking(true)?;
    b.set_nonblocking(true)?;
    Ok((Waker(std::sync::Arc::new(a)), WakeSignal(b)))
}

impl Waker {
    /// Wakes the waiting thread (a full queue means it is awake already).
    pub fn wake(&self) {
        let _ = self.0.send(&[1]);
    }
}

impl WakeSignal {
    /// Consumes pending wake-ups.
    pub fn clear(&self) {
        let mut buf = [0u8; 64];
        while self.0.recv(&mut buf).is_ok() {}
    }
}

/// What [`wait`] saw.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ready {
    /// The socket has datagrams.
    pub socket: bool,
    /// Someone called [`Waker::wake`].
    pub woken: bool,
}

/// Blocks until `socket` is readable, `signal` is woken, or `timeout` passes (`None`: no limit).
pub fn wait(socket: &UdpSocket, signal: &WakeSignal, timeout: Option<Duration>) -> Ready {
    let mut fds = [
        libc::pollfd {
            fd: socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: signal.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let ms = match timeout {
        // Rounded up: waking before the deadline would only spin.
        Some(d) => d.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int,
        None => -1,
    };
    // SAFETY: `fds` is a valid array of two initialised pollfd for the duration of the call.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if n <= 0 {
        return Ready::default();
    }
    Ready {
        socket: fds[0].revents != 0,
        woken: fds[1].revents != 0,
    }
}

#[cfg(target_os = "linux")]
fn recv_many(socket: &UdpSocket, batch: &mut RecvBatch) -> io::Result<usize> {
    // SAFETY: all-zero is a valid value for these plain C structs.
    let mut names: [libc::sockaddr_storage; BATCH] = unsafe { std::mem::zeroed() };
    let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for i in 0..BATCH {
        iovs[i].iov_base = batch.bufs[i].as_mut_ptr().cast();
        iovs[i].iov_len = MAX_DATAGRAM;
        hdrs[i].msg_hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
        hdrs[i].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as _;
        hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: every header points at a live buffer of the stated length and a live address
    // slot; all outlive the call.
    let n = unsafe {
        libc::recvmmsg(
            socket.as_raw_fd(),
            hdrs.as_mut_ptr(),
            BATCH as _,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    let mut kept = 0;
    for i in 0..n {
        let truncated = hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        let Some(source) = to_socket_addr(&names[i]) else {
            continue;
        };
        if truncated {
            continue;
        }
        if kept != i {
            let (head, tail) = batch.bufs.split_at_mut(i);
            let len = hdrs[i].msg_len as usize;
            head[kept][..len].copy_from_slice(&tail[0][..len]);
        }
        batch.lens[kept] = hdrs[i].msg_len as usize;
        batch.sources[kept] = source;
        kept += 1;
    }
    if n > 0 && kept == 0 {
        // Everything read was refused; report an empty read that is not "would block".
        return Ok(0);
    }
    Ok(kept)
}

#[cfg(target_os = "linux")]
fn send_many(socket: &UdpSocket, queue: &[Transmit]) -> io::Result<usize> {
    let count = queue.len().min(BATCH);
    // SAFETY: all-zero is a valid value for these plain C structs.
    let mut names: [libc::sockaddr_storage; BATCH] = unsafe { std::mem::zeroed() };
    let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for i in 0..count {
        let t = &queue[i];
        let len = from_socket_addr(t.destination, &mut names[i]);
        iovs[i].iov_base = t.contents.as_ptr() as *mut libc::c_void;
        iovs[i].iov_len = t.contents.len();
        hdrs[i].msg_hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
        hdrs[i].msg_hdr.msg_namelen = len;
        hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: every header points at the live contents of a queued datagram and a live
    // address; the kernel only reads them, and all outlive the call.
    let n = unsafe { libc::sendmmsg(socket.as_raw_fd(), hdrs.as_mut_ptr(), count as _, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

#[cfg(target_os = "linux")]
fn to_socket_addr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a: &libc::sockaddr_in = unsafe { &*(s as *const _ as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a: &libc::sockaddr_in6 = unsafe { &*(s as *const _ as *const libc::sockaddr_in6) };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(target_os = "linux")]
fn from_socket_addr(addr: SocketAddr, s: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in.
            let out: &mut libc::sockaddr_in =
                unsafe { &mut *(s as *mut _ as *mut libc::sockaddr_in) };
            out.sin_family = libc::AF_INET as libc::sa_family_t;
            out.sin_port = a.port().to_be();
            out.sin_addr = libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            };
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in6.
            let out: &mut libc::sockaddr_in6 =
                unsafe { &mut *(s as *mut _ as *mut libc::sockaddr_in6) };
            out.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            out.sin6_port = a.port().to_be();
            out.sin6_flowinfo = a.flowinfo();
            out.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            out.sin6_scope_id = a.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn recv_many(socket: &UdpSocket, batch: &mut RecvBatch) -> io::Result<usize> {
    socket.set_nonblocking(true)?;
    let mut n = 0;
    while n < BATCH {
        match socket.recv_from(&mut batch.bufs[n]) {
            Ok((len, from)) => {
                batch.lens[n] = len;
                batch.sources[n] = from;
                n += 1;
            }
            Err(e) if n > 0 && e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(not(target_os = "linux"))]
fn send_many(socket: &UdpSocket, queue: &[Transmit]) -> io::Result<usize> {
    socket.send_to(&queue[0].contents, queue[0].destination)?;
    Ok(1)
}

/// Asks the kernel for `bytes` of receive and send buffer on `socket` and returns what it
/// granted (receive, send). A burst (a flood of garbage, or many clients' keyframes at once)
/// waits there while the I/O thread is busy with rooms; the default (~208 KiB on Linux) holds
/// only a few hundred datagrams. The kernel caps the request at `net.core.rmem_max` /
/// `wmem_max` unless the process may force it (`CAP_NET_ADMIN`, as root), which is tried next.
#[cfg(target_os = "linux")]
pub fn set_buffer_sizes(socket: &UdpSocket, bytes: usize) -> io::Result<(usize, usize)> {
    let fd = socket.as_raw_fd();
    let want = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let set = |opt: libc::c_int| -> io::Result<()> {
        // SAFETY: `fd` is an open socket and `want` lives across the call.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&want as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    let get = |opt: libc::c_int| -> io::Result<usize> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `v` and `len` are valid for writes of the sizes given.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if r == 0 {
            // Linux reports twice the size asked for (the other half is its bookkeeping).
            Ok(usize::try_from(v).unwrap_or(0) / 2)
        } else {
            Err(io::Error::last_os_error())
        }
    };
    for (opt, force) in [
        (libc::SO_RCVBUF, libc::SO_RCVBUFFORCE),
        (libc::SO_SNDBUF, libc::SO_SNDBUFFORCE),
    ] {
        set(opt)?;
        let read = if opt == libc::SO_RCVBUF {
            libc::SO_RCVBUF
        } else {
            libc::SO_SNDBUF
        };
        if get(read)? < bytes {
            // Not permitted without CAP_NET_ADMIN: what `set` granted stays.
            let _ = set(force);
        }
    }
    Ok((get(libc::SO_RCVBUF)?, get(libc::SO_SNDBUF)?))
}

/// Elsewhere the kernel's defaults stay (the sizes are reported as 0, unknown).
#[cfg(not(target_os = "linux"))]
pub fn set_buffer_sizes(_socket: &UdpSocket, _bytes: usize) -> io::Result<(usize, usize)> {
    Ok((0, 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_batch_goes_out_and_comes_back_in_one_read() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (to, from) = (b.local_addr().unwrap(), a.local_addr().unwrap());
        let mut out = SendBatch::default();
        for i in 0..10u8 {
            out.push(Transmit {
                proto: str0m::net::Protocol::Udp,
                source: from,
                destination: to,
                contents: vec![i; 100 + usize::from(i)].into(),
            });
        }
        let sent = out.flush(&a);
        assert_eq!((sent.datagrams, sent.errors), (10, 0));
        assert!(out.is_empty());
        let (_waker, signal) = waker().unwrap();
        let mut batch = RecvBatch::default();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.len() < 10 && Instant::now() < deadline {
            wait(&b, &signal, Some(Duration::from_millis(100)));
            recv(&b, &mut batch).unwrap();
            for i in 0..batch.len() {
                let (src, data) = batch.get(i);
                assert_eq!(src, from);
                got.push(data.to_vec());
            }
        }
        assert_eq!(got.len(), 10);
        for (i, d) in got.iter().enumerate() {
            assert_eq!(d.len(), 100 + i);
        }
        // Nothing more waiting: an empty read, not an error.
        assert_eq!(recv(&b, &mut batch).unwrap(), 0);
    }

    #[test]
    fn a_waker_interrupts_the_wait() {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (waker, signal) = waker().unwrap();
        let other = std::thread::spawn(move || waker.wake());
        let ready = wait(&s, &signal, None);
        assert!(ready.woken && !ready.socket);
        signal.clear();
        other.join().unwrap();
    }
}
