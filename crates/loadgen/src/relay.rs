//! The bare UDP relay baseline: what forwarding costs on this machine with no crypto and no RTP
//! logic. `recvmmsg` a batch, look the source up, `sendmmsg` a copy to every other member of its
//! group. A member joins a group with a `JOIN` + u32 datagram.

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;

const BATCH: usize = 64;
const MAX_OUT: usize = BATCH * 4;

/// Runs the relay on `socket` until the process ends.
pub fn run(socket: &UdpSocket) -> std::io::Result<()> {
    crate::peer::set_buffers(socket, 8 << 20);
    let fd = socket.as_raw_fd();
    let mut groups: HashMap<u32, Vec<SocketAddrV4>> = HashMap::new();
    let mut member: HashMap<SocketAddrV4, u32> = HashMap::new();
    let mut bufs = vec![[0u8; 2048]; BATCH];
    // SAFETY (whole function): the iovec/msghdr arrays point into `bufs`, `addrs` and `out_*`,
    // which live for the whole loop and are not moved while the kernel uses them.
    let mut addrs: Vec<libc::sockaddr_in> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut iov: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH)
        .map(|i| {
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = &mut addrs[i] as *mut _ as *mut libc::c_void;
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            h.msg_hdr.msg_iov = &mut iov[i];
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();
    let mut out_addr: Vec<libc::sockaddr_in> = vec![unsafe { std::mem::zeroed() }; MAX_OUT];
    let mut out_iov: Vec<libc::iovec> = vec![
        libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0
        };
        MAX_OUT
    ];
    let mut out_msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; MAX_OUT];
    loop {
        for (i, m) in msgs.iter_mut().enumerate() {
            m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            m.msg_hdr.msg_iov = &mut iov[i];
        }
        let n = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut k = 0;
        for i in 0..n as usize {
            let len = msgs[i].msg_len as usize;
            let from = to_v4(&addrs[i]);
            let data = &bufs[i][..len];
            if len == 8 && &data[..4] == b"JOIN" {
                let g = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
                let members = groups.entry(g).or_default();
                if !members.contains(&from) {
                    members.push(from);
                }
                member.insert(from, g);
                continue;
            }
            let Some(g) = member.get(&from) else {
                continue;
            };
            for to in groups.get(g).into_iter().flatten() {
                if *to == from || k == MAX_OUT {
                    continue;
                }
                out_addr[k] = from_v4(to);
                out_iov[k] = libc::iovec {
                    iov_base: bufs[i].as_mut_ptr() as *mut libc::c_void,
                    iov_len: len,
                };
                let h = &mut out_msgs[k].msg_hdr;
                h.msg_name = &mut out_addr[k] as *mut _ as *mut libc::c_void;
                h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
                h.msg_iov = &mut out_iov[k];
                h.msg_iovlen = 1;
                k += 1;
            }
        }
        let mut sent = 0;
        while sent < k {
            let r =
                unsafe { libc::sendmmsg(fd, out_msgs[sent..].as_mut_ptr(), (k - sent) as u32, 0) };
            if r <= 0 {
                // A full socket buffer or an error: the rest of this batch is lost, as with
                // any UDP forwarder.
                break;
            }
            sent += r as usize;
        }
    }
}

/// Binds the relay socket.
pub fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    UdpSocket::bind(addr)
}

fn to_v4(a: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(
        u32::from_be(a.sin_addr.s_addr).into(),
        u16::from_be(a.sin_port),
    )
}

fn from_v4(a: &SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain old data; zero is a valid value.
    let mut s: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    s.sin_family = libc::AF_INET as libc::sa_family_t;
    s.sin_port = a.port().to_be();
    s.sin_addr.s_addr = u32::from(*a.ip()).to_be();
    s
}
