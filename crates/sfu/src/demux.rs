//! Routing of incoming datagrams to sessions, on the one shared media port.
//!
//! A client's first packets are STUN binding requests whose USERNAME starts with the server's
//! ICE ufrag for that session. Every later datagram (DTLS, SRTP, SRTCP) is routed by its source
//! address. The table is plain state owned by one thread; nothing here locks.
//!
//! An address is learned only from a packet str0m authenticated: a binding request from an
//! address the table does not hold for its session is routed by ufrag *without* learning, as a
//! [`Challenge`]; the shell learns the address ([`Demux::learn`]) when the session answers that
//! very transaction with a binding success response, which str0m sends only after checking the
//! request's MESSAGE-INTEGRITY with the session's password. A forged or replayed-with-a-wrong-key
//! request therefore changes nothing: no address learned, none evicted.
//!
//! The server's own connectivity checks (it runs full ICE) can reach a client before the client's
//! first request does; their responses come from an address not learned yet and carry no
//! USERNAME. The shell tells the table which transactions its sessions started
//! ([`Demux::expect`]), so such a response is routed to its session (str0m checks its
//! integrity) instead of being dropped: dropping it left the session's candidate pair unproven,
//! and str0m then refused the client's first DTLS flight until a retransmission.
//!
//! Each session has one ufrag: registering a new one (ICE restart) replaces the old, and
//! [`Demux::unregister`] forgets both the ufrag and the addresses, so the table's size follows
//! the live sessions, not their history.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::SocketAddr;

use str0m::ice::StunMessage;

/// Source addresses remembered per session at most (a client may switch interface; only
/// authenticated addresses count, and the oldest is forgotten first).
pub const MAX_ADDRS_PER_SESSION: usize = 4;

/// Transactions started by the server remembered at most, awaiting their response (the oldest
/// is forgotten first).
pub const MAX_EXPECTED: usize = 4096;

/// Why a datagram was not routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unrouted {
    /// A STUN message that does not parse.
    MalformedStun,
    /// A STUN message without a USERNAME (not an ICE binding request) from an unknown address.
    StunWithoutUsername,
    /// A STUN message for a ufrag no session has.
    UnknownUfrag,
    /// Anything else from an address no session has used.
    UnknownSource,
}

/// A binding request routed by its ufrag from an address not (yet) learned for the session:
/// the address is learned only if the session answers this transaction with a success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Challenge {
    /// Where the request came from.
    pub source: SocketAddr,
    /// Its STUN transaction id.
    pub transaction: [u8; 12],
}

/// Where a datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routed<K> {
    /// The session.
    pub key: K,
    /// Set for a binding request from an address the session has not proven yet.
    pub challenge: Option<Challenge>,
}

/// The routing table, generic over the session key.
#[derive(Debug)]
pub struct Demux<K> {
    by_ufrag: HashMap<String, K>,
    by_addr: HashMap<SocketAddr, K>,
    sessions: HashMap<K, Entry>,
    /// Binding requests the sessions sent: transaction id → (session, where it went).
    expected: HashMap<[u8; 12], (K, SocketAddr)>,
    expected_order: VecDeque<[u8; 12]>,
}

#[derive(Debug, Default)]
struct Entry {
    ufrag: Option<String>,
    addrs: Vec<SocketAddr>,
}

impl<K: Copy + Eq + Hash> Default for Demux<K> {
    fn default() -> Self {
        Demux {
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            sessions: HashMap::new(),
            expected: HashMap::new(),
            expected_order: VecDeque::new(),
        }
    }
}

impl<K: Copy + Eq + Hash> Demux<K> {
    /// Registers a session by the server-side ICE ufrag it answered with; a session's previous
    /// ufrag (before an ICE restart) is forgotten. A ufrag another session holds is not taken
    /// from it.
    pub fn register(&mut self, ufrag: String, key: K) {
        if let Some(owner) = self.by_ufrag.get(&ufrag) {
            if *owner != key {
                return;
            }
        }
        let entry = self.sessions.entry(key).or_default();
        if entry.ufrag.as_deref() == Some(ufrag.as_str()) {
            return;
        }
        if let Some(old) = entry.ufrag.take() {
            self.by_ufrag.remove(&old);
        }
        entry.ufrag = Some(ufrag.clone());
        self.by_ufrag.insert(ufrag, key);
    }

    /// Forgets a session, its ufrag and its addresses.
    pub fn unregister(&mut self, key: K) {
        let Some(entry) = self.sessions.remove(&key) else {
            return;
        };
        if let Some(u) = entry.ufrag {
            self.by_ufrag.remove(&u);
        }
        for a in entry.addrs {
            if self.by_addr.get(&a) == Some(&key) {
                self.by_addr.remove(&a);
            }
        }
    }

    /// Learns `source` for `key`, after the session proved it owns it (see [`Challenge`]). The
    /// session's oldest address goes when it has [`MAX_ADDRS_PER_SESSION`]; an address another
    /// session held moves. Returns whether the table changed.
    pub fn learn(&mut self, source: SocketAddr, key: K) -> bool {
        if self.by_addr.get(&source) == Some(&key) {
            return false;
        }
        let Some(entry) = self.sessions.get_mut(&key) else {
            // Unregistered meanwhile: nothing to route to.
            return false;
        };
        if entry.addrs.len() >= MAX_ADDRS_PER_SESSION {
            let old = entry.addrs.remove(0);
            if self.by_addr.get(&old) == Some(&key) {
                self.by_addr.remove(&old);
            }
        }
        entry.addrs.push(source);
        if let Some(previous) = self.by_addr.insert(source, key) {
            if let Some(e) = self.sessions.get_mut(&previous) {
                e.addrs.retain(|a| *a != source);
            }
        }
        true
    }

    /// Remembers that session `key` sent the binding request `transaction` to `destination`:
    /// its response is routed to the session even from an address not learned yet.
    pub fn expect(&mut self, transaction: [u8; 12], destination: SocketAddr, key: K) {
        if self.expected_order.len() >= MAX_EXPECTED {
            if let Some(old) = self.expected_order.pop_front() {
                self.expected.remove(&old);
            }
        }
        self.expected_order.push_back(transaction);
        self.expected.insert(transaction, (key, destination));
    }

    /// Number of registered sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no session is registered.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Number of ufrags routed (one per session at most).
    pub fn ufrags(&self) -> usize {
        self.by_ufrag.len()
    }

    /// Number of source addresses routed.
    pub fn addresses(&self) -> usize {
        self.by_addr.len()
    }

    /// Finds the session a datagram from `source` belongs to. Learns nothing: see
    /// [`Routed::challenge`] and [`Demux::learn`].
    pub fn route(&mut self, source: SocketAddr, data: &[u8]) -> Result<Routed<K>, Unrouted> {
        let known = self.by_addr.get(&source).copied();
        let is_stun = data.len() >= 20 && data[0] < 2;
        if !is_stun {
            return known
                .map(|key| Routed {
                    key,
                    challenge: None,
                })
                .ok_or(Unrouted::UnknownSource);
        }
        let msg = StunMessage::parse(data).map_err(|_| Unrouted::MalformedStun)?;
        let by_ufrag = msg
            .split_username()
            .and_then(|(local, _remote)| self.by_ufrag.get(local).copied());
        match (by_ufrag, known) {
            // From an address the session proved: its engine checks the rest.
            (Some(key), Some(k)) if key == k => Ok(Routed {
                key,
                challenge: None,
            }),
            (Some(key), _) if msg.is_binding_request() => Ok(Routed {
                key,
                challenge: Some(Challenge {
                    source,
                    transaction: transaction_id(data),
                }),
            }),
            // A response, an indication or a request with an old ufrag on a known 5-tuple
            // still belongs to its session (str0m checks it and learns nothing from it here).
            (_, Some(key)) => Ok(Routed {
                key,
                challenge: None,
            }),
            (None, None) if msg.split_username().is_some() => Err(Unrouted::UnknownUfrag),
            // The answer to one of the server's own checks, from where that check went.
            (None, None)
                if msg.is_successful_binding_response() || msg.is_failed_binding_response() =>
            {
                match self.expected.get(&transaction_id(data)) {
                    Some(&(key, to)) if to == source => {
                        self.expected.remove(&transaction_id(data));
                        Ok(Routed {
                            key,
                            challenge: None,
                        })
                    }
                    _ => Err(Unrouted::StunWithoutUsername),
                }
            }
            _ => Err(Unrouted::StunWithoutUsername),
        }
    }
}

/// The transaction id of a STUN message at least 20 bytes long (RFC 8489 §5).
fn transaction_id(data: &[u8]) -> [u8; 12] {
    let mut t = [0; 12];
    t.copy_from_slice(&data[8..20]);
    t
}

/// For a STUN binding request the server is sending: its transaction id and the server's own
/// ufrag (the second half of its USERNAME, `remote:local`), to pass to [`Demux::expect`].
pub fn outgoing_check(contents: &[u8]) -> Option<([u8; 12], &str)> {
    if contents.len() < 20 || contents[0] != 0x00 || contents[1] != 0x01 {
        return None;
    }
    let msg = StunMessage::parse(contents).ok()?;
    let username = msg.username()?;
    let (_, local) = username.split_once(':')?;
    Some((transaction_id(contents), local))
}

impl Challenge {
    /// Whether the datagram `contents` going to `destination` is a binding success response to
    /// this request (str0m sends one only for a request whose integrity it verified).
    pub fn is_answered_by(&self, destination: SocketAddr, contents: &[u8]) -> bool {
        destination == self.source
            && contents.len() >= 20
            && contents[0] == 0x01
            && contents[1] == 0x01
            && contents[8..20] == self.transaction
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

    /// The success response str0m would send to `binding` (only the header matters here).
    fn success_to(request: &[u8]) -> Vec<u8> {
        let mut r = vec![0x01, 0x01, 0, 0];
        r.extend_from_slice(&request[4..20]);
        r
    }

    fn key(r: Result<Routed<u32>, Unrouted>) -> Result<u32, Unrouted> {
        r.map(|r| r.key)
    }

    /// Routes `data` and, as the shell does, learns the source when `answer` (what the session
    /// sent back) is the success response to its challenge.
    fn route_and_answer(d: &mut Demux<u32>, a: SocketAddr, data: &[u8], answer: &[u8]) -> u32 {
        let r = d.route(a, data).unwrap();
        if let Some(c) = r.challenge {
            if c.is_answered_by(a, answer) {
                d.learn(a, r.key);
            }
        }
        r.key
    }

    #[test]
    fn learns_addresses_from_answered_stun_then_routes_by_address() {
        let mut d: Demux<u32> = Demux::default();
        d.register("srv1".into(), 1);
        d.register("srv2".into(), 2);
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:6000".parse().unwrap();
        assert_eq!(
            key(d.route(a, &[0x80, 0, 0, 0])),
            Err(Unrouted::UnknownSource)
        );
        let req1 = binding("srv1:cli");
        let req2 = binding("srv2:cli");
        assert_eq!(route_and_answer(&mut d, a, &req1, &success_to(&req1)), 1);
        assert_eq!(route_and_answer(&mut d, b, &req2, &success_to(&req2)), 2);
        assert_eq!(key(d.route(a, &[0x80, 0x60, 0, 1])), Ok(1));
        assert_eq!(key(d.route(b, &[22, 0xfe, 0xfd])), Ok(2));
        // A learned address sends its consent checks without a challenge.
        assert_eq!(d.route(a, &req1).unwrap().challenge, None);
        assert_eq!(
            key(d.route(SocketAddr::from(([127, 0, 0, 9], 1)), &binding("nope:cli"))),
            Err(Unrouted::UnknownUfrag)
        );
        d.unregister(1);
        assert_eq!(
            key(d.route(a, &[0x80, 0x60, 0, 1])),
            Err(Unrouted::UnknownSource)
        );
        assert_eq!(key(d.route(b, &[0x80, 0x60, 0, 1])), Ok(2));
    }

    #[test]
    fn an_unanswered_request_from_a_new_address_changes_nothing() {
        let mut d: Demux<u32> = Demux::default();
        d.register("srv1".into(), 1);
        let good: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let req = binding("srv1:cli");
        route_and_answer(&mut d, good, &req, &success_to(&req));
        assert_eq!(d.addresses(), 1);
        // Many forged requests (right ufrag, integrity str0m refuses: no answer) from new
        // addresses: routed for checking, never learned, nothing evicted.
        for port in 0..20u16 {
            let evil = SocketAddr::from(([127, 0, 0, 2], 7000 + port));
            let r = d.route(evil, &req).unwrap();
            assert_eq!(r.key, 1);
            assert!(r.challenge.is_some());
            // The session answered something else (or nothing) to that address.
            assert!(!r.challenge.unwrap().is_answered_by(good, &success_to(&req)));
            let mut other = success_to(&req);
            other[19] ^= 1;
            assert!(!r.challenge.unwrap().is_answered_by(evil, &other));
            assert_eq!(
                key(d.route(evil, &[0x80, 0x60, 0, 1])),
                Err(Unrouted::UnknownSource)
            );
        }
        assert_eq!(d.addresses(), 1);
        assert_eq!(key(d.route(good, &[0x80, 0x60, 0, 1])), Ok(1));
    }

    #[test]
    fn the_answer_to_a_server_check_reaches_its_session_before_the_address_is_learned() {
        let mut d: Demux<u32> = Demux::default();
        d.register("srv1".into(), 1);
        let client: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        // The server's check to the client (USERNAME client:server) and the client's answer,
        // encoded by str0m's STUN code (integrity is str0m's business, not the table's).
        let transaction = str0m::ice::TransId::new();
        let no_mac = |_: &[u8], _: &[&[u8]]| [0u8; 20];
        let mut check = vec![0u8; 256];
        let n = StunMessage::binding_request("cli:srv1", transaction, false, 1, 1, false)
            .to_bytes(Some(b"pw"), &mut check, no_mac)
            .unwrap();
        check.truncate(n);
        let mut answer = vec![0u8; 256];
        let n = StunMessage::binding_reply(transaction, client)
            .to_bytes(Some(b"pw"), &mut answer, no_mac)
            .unwrap();
        answer.truncate(n);
        let (id, local) = outgoing_check(&check).unwrap();
        assert_eq!(local, "srv1");
        assert_eq!(
            key(d.route(client, &answer)),
            Err(Unrouted::StunWithoutUsername)
        );
        d.expect(id, client, 1);
        // From another address: not routed.
        let other: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        assert_eq!(
            key(d.route(other, &answer)),
            Err(Unrouted::StunWithoutUsername)
        );
        assert_eq!(
            d.route(client, &answer),
            Ok(Routed {
                key: 1,
                challenge: None
            })
        );
        // Once only, and nothing learned.
        assert_eq!(
            key(d.route(client, &answer)),
            Err(Unrouted::StunWithoutUsername)
        );
        assert_eq!(d.addresses(), 0);
        // Media is not a check.
        assert_eq!(outgoing_check(&[0x80; 40]), None);
        // Bounded.
        for n in 0..(MAX_EXPECTED as u32 + 10) {
            let mut t = [0u8; 12];
            t[..4].copy_from_slice(&n.to_be_bytes());
            d.expect(t, client, 1);
        }
        assert_eq!(d.expected.len(), MAX_EXPECTED);
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        let mut d: Demux<u32> = Demux::default();
        d.register("srv1".into(), 1);
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let mut junk = vec![0u8; 40];
        junk[1] = 1;
        assert_eq!(key(d.route(a, &junk)), Err(Unrouted::MalformedStun));
        assert_eq!(key(d.route(a, &[])), Err(Unrouted::UnknownSource));
    }

    #[test]
    fn address_table_is_bounded_per_session() {
        let mut d: Demux<u32> = Demux::default();
        d.register("srv1".into(), 1);
        let req = binding("srv1:x");
        for port in 0..20u16 {
            let a = SocketAddr::from(([127, 0, 0, 1], 7000 + port));
            assert_eq!(route_and_answer(&mut d, a, &req, &success_to(&req)), 1);
        }
        assert_eq!(d.addresses(), MAX_ADDRS_PER_SESSION);
    }

    #[test]
    fn ice_restarts_replace_the_ufrag_and_leave_forgets_everything() {
        let mut d: Demux<u32> = Demux::default();
        d.register("first".into(), 1);
        d.register("other".into(), 2);
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let req = binding("first:cli");
        route_and_answer(&mut d, a, &req, &success_to(&req));
        for n in 0..1_000 {
            d.register(format!("restart{n}"), 1);
        }
        assert_eq!((d.len(), d.ufrags(), d.addresses()), (2, 2, 1));
        assert_eq!(
            key(d.route(SocketAddr::from(([127, 0, 0, 3], 1)), &req)),
            Err(Unrouted::UnknownUfrag)
        );
        assert_eq!(
            key(d.route(
                SocketAddr::from(([127, 0, 0, 3], 1)),
                &binding("restart999:c")
            )),
            Ok(1)
        );
        // Another session's ufrag is not taken over.
        d.register("other".into(), 1);
        assert_eq!(key(d.route(a, &binding("other:c"))), Ok(2));
        d.unregister(1);
        d.unregister(2);
        assert_eq!((d.len(), d.ufrags(), d.addresses()), (0, 0, 0));
    }
}
