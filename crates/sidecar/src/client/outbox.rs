//! The kiosk's measurement outbox (sans-IO): every measurement is kept until the server
//! acknowledges it, and resent in order after a reconnection. Memory is bounded: beyond
//! `max_unacked` the oldest unacknowledged measurement is dropped and counted.

use std::collections::{BTreeMap, VecDeque};

use cabine_proto::telemetry::Measurement;

#[derive(Debug, Default)]
struct ChannelBox {
    next_seq: u64,
    unacked: VecDeque<Measurement>,
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
        let before = ch.unacked.len();
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
