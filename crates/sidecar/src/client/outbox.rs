//! The kiosk's measurement outbox (sans-IO): every measurement is kept until the server
//! acknowledges it, and resent in order after a reconnection. Memory is bounded: beyond
//! `max_unacked` the oldest unacknowledged measurement is dropped and counted.
//!
//! The last [`RETAINED`] acknowledged measurements of each channel are kept too: a server's
//! acknowledgement means it handed them on, not that every subscriber got them, and a node that
//! stops right after (a restart, a death) may have lost some on their way. When a new
//! connection's resume ack says the server has less than the kiosk was told (a new process or
//! another node, which knows nothing of this kiosk), the retained ones above it are sent again;
//! subscribers drop those they already have by their key (kiosk, epoch, channel, seq).

use std::collections::{BTreeMap, VecDeque};

use cabine_proto::telemetry::Measurement;

/// Acknowledged measurements kept per channel for a server that forgot them.
pub const RETAINED: usize = 64;

#[derive(Debug, Default)]
struct ChannelBox {
    next_seq: u64,
    unacked: VecDeque<Measurement>,
    /// The last acknowledged ones, oldest first, at most [`RETAINED`].
    retained: VecDeque<Measurement>,
    /// Highest seq written on the current connection.
    sent_upto: u64,
    /// Highest seq ever written (to count resends).
    ever_sent: u64,
    acked: u64,
}

/// Counters of the outbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxCounters {
    /// Measurements written for the first time.
    pub sent: u64,
    /// Measurements written again after a reconnection.
    pub resent: u64,
    /// Measurements acknowledged.
    pub acked: u64,
    /// Measurements dropped unacknowledged because the outbox was full.
    pub dropped: u64,
}

/// Measurements waiting for their acknowledgement.
#[derive(Debug)]
pub struct Outbox {
    channels: BTreeMap<u32, ChannelBox>,
    max_unacked: usize,
    total: usize,
    counters: OutboxCounters,
}

impl Outbox {
    /// An outbox keeping at most `max_unacked` measurements.
    pub fn new(max_unacked: usize) -> Self {
        Outbox {
            channels: BTreeMap::new(),
            max_unacked: max_unacked.max(1),
            total: 0,
            counters: OutboxCounters::default(),
        }
    }

    /// Queues a measurement; a `seq` of 0 is replaced by the channel's next one. Returns the seq.
    pub fn push(&mut self, mut m: Measurement) -> u64 {
        let ch = self.channels.entry(m.channel_id).or_default();
        if m.seq == 0 {
            ch.next_seq += 1;
            m.seq = ch.next_seq;
        } else {
            ch.next_seq = ch.next_seq.max(m.seq);
        }
        let seq = m.seq;
        ch.unacked.push_back(m);
        self.total += 1;
        if self.total > self.max_unacked {
            self.drop_oldest();
        }
        seq
    }

    /// The server has every measurement of `channel` up to `up_to`.
    pub fn ack(&mut self, channel: u32, up_to: u64) {
        let Some(ch) = self.channels.get_mut(&channel) else {
            return;
        };
        if up_to < ch.acked {
            // A server that knows less than we were told: a new one. What it lacks of the
            // retained measurements goes back in front of the unacknowledged ones.
            let mut back: Vec<Measurement> = Vec::new();
            while ch.retained.back().is_some_and(|m| m.seq > up_to) {
                back.extend(ch.retained.pop_back());
            }
            for m in back {
                ch.unacked.push_front(m);
                self.total += 1;
            }
            ch.acked = up_to;
            ch.sent_upto = up_to;
            return;
        }
        let before = ch.unacked.len();
        while ch.unacked.front().is_some_and(|m| m.seq <= up_to) {
            if let Some(m) = ch.unacked.pop_front() {
                if ch.retained.len() >= RETAINED {
                    ch.retained.pop_front();
                }
                ch.retained.push_back(m);
            }
        }
        ch.unacked.retain(|m| m.seq > up_to);
        let n = before - ch.unacked.len();
        self.total -= n;
        self.counters.acked += n as u64;
        ch.acked = ch.acked.max(up_to);
        // After a resume ack, nothing at or below it needs sending again.
        ch.sent_upto = ch.sent_upto.max(up_to);
    }

    /// A new connection: everything unacknowledged is to be sent again (after the channel's
    /// resume ack, which may prune it first).
    pub fn reconnected(&mut self) {
        for ch in self.channels.values_mut() {
            ch.sent_upto = ch.acked;
        }
    }

    /// The next measurement to write on a channel for which `ready` is true, marked as sent.
    pub fn next_to_send(&mut self, ready: impl Fn(u32) -> bool) -> Option<Measurement> {
        for (id, ch) in &mut self.channels {
            if !ready(*id) {
                continue;
            }
            let Some(m) = ch.unacked.iter().find(|m| m.seq > ch.sent_upto) else {
                continue;
            };
            ch.sent_upto = m.seq;
            if m.seq <= ch.ever_sent {
                self.counters.resent += 1;
            } else {
                ch.ever_sent = m.seq;
                self.counters.sent += 1;
            }
            return Some(m.clone());
        }
        None
    }

    /// Measurements not acknowledged yet.
    pub fn unacked(&self) -> usize {
        self.total
    }

    /// The counters.
    pub fn counters(&self) -> OutboxCounters {
        self.counters
    }

    fn drop_oldest(&mut self) {
        // The channel holding the most is the one to shed from.
        if let Some(ch) = self.channels.values_mut().max_by_key(|c| c.unacked.len()) {
            if ch.unacked.pop_front().is_some() {
                self.total -= 1;
                self.counters.dropped += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(channel: u32) -> Measurement {
        Measurement {
            channel_id: channel,
            ..Default::default()
        }
    }

    #[test]
    fn resends_only_unacked_after_reconnect() {
        let mut o = Outbox::new(100);
        for _ in 0..5 {
            o.push(m(1));
        }
        let sent: Vec<u64> = std::iter::from_fn(|| o.next_to_send(|_| true))
            .map(|m| m.seq)
            .collect();
        assert_eq!(sent, vec![1, 2, 3, 4, 5]);
        o.ack(1, 2);
        assert_eq!(o.unacked(), 3);
        o.reconnected();
        assert!(o.next_to_send(|_| false).is_none());
        // Resume ack says the server got up to 4 before the connection died.
        o.ack(1, 4);
        let again: Vec<u64> = std::iter::from_fn(|| o.next_to_send(|_| true))
            .map(|m| m.seq)
            .collect();
        assert_eq!(again, vec![5]);
        assert_eq!(o.counters().resent, 1);
        assert_eq!(o.counters().sent, 5);
    }

    #[test]
    fn a_server_that_forgot_gets_the_retained_ones_again() {
        let mut o = Outbox::new(100);
        for _ in 0..5 {
            o.push(m(1));
        }
        while o.next_to_send(|_| true).is_some() {}
        o.ack(1, 5);
        assert_eq!(o.unacked(), 0);
        o.push(m(1));
        o.reconnected();
        // A restarted server has nothing of this kiosk: its resume ack is 0.
        o.ack(1, 0);
        let again: Vec<u64> = std::iter::from_fn(|| o.next_to_send(|_| true))
            .map(|m| m.seq)
            .collect();
        assert_eq!(again, vec![1, 2, 3, 4, 5, 6]);
        o.ack(1, 6);
        assert_eq!(o.unacked(), 0);
        // The same server again (resume ack at what it had): nothing more.
        o.reconnected();
        o.ack(1, 6);
        assert!(o.next_to_send(|_| true).is_none());
    }

    #[test]
    fn bounded() {
        let mut o = Outbox::new(3);
        for _ in 0..5 {
            o.push(m(1));
        }
        assert_eq!(o.unacked(), 3);
        assert_eq!(o.counters().dropped, 2);
        assert_eq!(o.next_to_send(|_| true).unwrap().seq, 3);
    }
}
