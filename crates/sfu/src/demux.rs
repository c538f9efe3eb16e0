//! Routing of incoming datagrams to sessions, on the one shared media port.
//!
//! A client's first packets are STUN binding requests whose USERNAME starts with the server's
//! ICE ufrag for that session: that is how a new 5-tuple is learned. Every later datagram (DTLS,
//! SRTP, SRTCP) is routed by its source address. The table is plain state owned by the receive
//! thread; nothing here locks.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;

use str0m::ice::StunMessage;

/// Source addresses remembered per session at most (a client may switch interface, and a
/// hostile peer may send STUN with a guessed ufrag from many addresses; str0m rejects those by
/// message integrity, this bound keeps the table small).
pub const MAX_ADDRS_PER_SESSION: usize = 4;

/// Why a datagram was not routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unrouted {
    /// A STUN message that does not parse.
    MalformedStun,
    /// A STUN message without a USERNAME (not an ICE binding request).
    StunWithoutUsername,
    /// A STUN message for a ufrag no session has.
    UnknownUfrag,
    /// Anything else from an address no session has used.
    UnknownSource,
}

/// The routing table, generic over the session key.
#[derive(Debug)]
pub struct Demux<K> {
    by_ufrag: HashMap<String, K>,
    by_addr: HashMap<SocketAddr, K>,
    addrs: HashMap<K, Vec<SocketAddr>>,
}

impl<K: Copy + Eq + Hash> Default for Demux<K> {
    fn default() -> Self {
        Demux {
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            addrs: HashMap::new(),
        }
    }
}

impl<K: Copy + Eq + Hash> Demux<K> {
    /// Registers a session by the server-side ICE ufrag it answered with.
    pub fn register(&mut self, ufrag: String, key: K) {
        self.by_ufrag.insert(ufrag, key);
    }

    /// Forgets a session, its ufrag and its addresses.
    pub fn unregister(&mut self, key: K) {
        self.by_ufrag.retain(|_, k| *k != key);
        if let Some(addrs) = self.addrs.remove(&key) {
            for a in addrs {
                if self.by_addr.get(&a) == Some(&key) {
                    self.by_addr.remove(&a);
                }
            }
        }
    }

    /// Number of registered sessions.
    pub fn len(&self) -> usize {
        self.by_ufrag.len()
    }

    /// Whether no session is registered.
    pub fn is_empty(&self) -> bool {
        self.by_ufrag.is_empty()
    }

    /// Finds the session a datagram from `source` belongs to.
    pub fn route(&mut self, source: SocketAddr, data: &[u8]) -> Result<K, Unrouted> {
        let is_stun = data.len() >= 20 && data[0] < 2;
        if !is_stun {
            return self
                .by_addr
                .get(&source)
                .copied()
                .ok_or(Unrouted::UnknownSource);
        }
        let msg = StunMessage::parse(data).map_err(|_| Unrouted::MalformedStun)?;
        let Some((local, _remote)) = msg.split_username() else {
            // A STUN response or indication on a known 5-tuple still belongs to its session.
            return self
                .by_addr
                .get(&source)
                .copied()
                .ok_or(Unrouted::StunWithoutUsername);
        };
        let key = *self.by_ufrag.get(local).ok_or(Unrouted::UnknownUfrag)?;
        if self.by_addr.get(&source) != Some(&key) {
            let addrs = self.addrs.entry(key).or_default();
            if addrs.len() >= MAX_ADDRS_PER_SESSION {
                let old = addrs.remove(0);
                if self.by_addr.get(&old) == Some(&key) {
                    self.by_addr.remove(&old);
                }
            }
            addrs.push(source);
            self.by_addr.insert(source, key);
        }
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A STUN binding request with a USERNAME attribute, built by hand (RFC 8489 §5, §14.3).
    fn binding(username: &str) -> Vec<u8> {
        let mut attr = vec![0x00, 0x06];
        attr.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attr.extend_from_slice(username.as_bytes());
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        // PRIORITY, then MESSAGE-INTEGRITY (not checked by the demux; str0m verifies it).
        attr.extend_from_slice(&[0x00, 0x24, 0x00, 0x04, 0x6e, 0x00, 0x1e, 0xff]);
        attr.extend_from_slice(&[0x00, 0x08, 0x00, 0x14]);
        attr.extend_from_slice(&[0xab; 20]);
        let mut msg = vec![0x00, 0x01];
        msg.extend_from_slice(&(attr.len() as u16).to_be_bytes());
        msg.extend_from_slice(&0x2112_a442u32.to_be_bytes());
        msg.extend_from_slice(&[7; 12]);
        msg.extend_from_slice(&attr);
        msg
    }

    #[test]
    fn learns_addresses_from_stun_then_routes_by_address() {
        let mut d: Demux<u32> = Demux::default();
        d.register("srv1".into(), 1);
        d.register("srv2".into(), 2);
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:6000".parse().unwrap();
        assert_eq!(d.route(a, &[0x80, 0, 0, 0]), Err(Unrouted::UnknownSource));
        assert_eq!(d.route(a, &binding("srv1:cli")), Ok(1));
        assert_eq!(d.route(b, &binding("srv2:cli")), Ok(2));
        assert_eq!(d.route(a, &[0x80, 0x60, 0, 1]), Ok(1));
        assert_eq!(d.route(b, &[22, 0xfe, 0xfd]), Ok(2));
        assert_eq!(
            d.route(a, &binding("nope:cli")),
            Err(Unrouted::UnknownUfrag)
        );
        d.unregister(1);
        assert_eq!(
            d.route(a, &[0x80, 0x60, 0, 1]),
            Err(Unrouted::UnknownSource)
        );
        assert_eq!(d.route(b, &[0x80, 0x60, 0, 1]), Ok(2));
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        let mut d: Demux<u32> = Demux::default();
        d.register("srv1".into(), 1);
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let mut junk = vec![0u8; 40];
        junk[1] = 1;
        assert_eq!(d.route(a, &junk), Err(Unrouted::MalformedStun));
        assert_eq!(d.route(a, &[]), Err(Unrouted::UnknownSource));
    }

    #[test]
    fn address_table_is_bounded_per_session() {
        let mut d: Demux<u32> = Demux::default();
        d.register("srv1".into(), 1);
        for port in 0..20u16 {
            let a = SocketAddr::from(([127, 0, 0, 1], 7000 + port));
            assert_eq!(d.route(a, &binding("srv1:x")), Ok(1));
        }
        assert_eq!(d.by_addr.len(), MAX_ADDRS_PER_SESSION);
    }
}
