//! Any sequence of datagrams from a few addresses: routing never panics, unknown traffic is
//! never routed, a datagram is only ever routed to a registered session, and no session holds
//! more than `MAX_ADDRS_PER_SESSION` addresses.
//!
//! Input: a sequence of records `[source index, length, bytes...]`; sessions come and go on
//! two reserved source indexes.
#![no_main]
use std::net::SocketAddr;

use cabine_sfu::demux::{Demux, MAX_ADDRS_PER_SESSION};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut d: Demux<u8> = Demux::default();
    d.register("srv1".into(), 1);
    d.register("srv2".into(), 2);
    let mut registered = [false, true, true];
    let mut rest = data;
    while let [op, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (datagram, next) = tail.split_at(len);
        rest = next;
        match op {
            0xfe => {
                let k = 1 + (len as u8 & 1);
                d.unregister(k);
                registered[usize::from(k)] = false;
                continue;
            }
            0xff => {
                let k = 1 + (len as u8 & 1);
                d.register(format!("srv{k}"), k);
                registered[usize::from(k)] = true;
                continue;
            }
            _ => {}
        }
        let source = SocketAddr::from(([127, 0, 0, 1], 4000 + u16::from(op % 8)));
        if let Ok(r) = d.route(source, datagram) {
            let k = r.key;
            assert!(
                registered[usize::from(k)],
                "routed to unregistered session {k}"
            );
            // As if the session had answered the challenge (str0m verified it): learned.
            if let Some(c) = r.challenge {
                d.learn(c.source, k);
            }
        }
    }
    for k in 1..=2u8 {
        let held = (0..8)
            .filter(|i| {
                let source = SocketAddr::from(([127, 0, 0, 1], 4000 + i));
                // A one-byte datagram that is not STUN routes by address only.
                d.route(source, &[0xff]).map(|r| r.key) == Ok(k)
            })
            .count();
        assert!(
            held <= MAX_ADDRS_PER_SESSION,
            "session {k} holds {held} addresses"
        );
    }
});
