//! Per-stream receive statistics: one-way latency samples, RFC 3550 interarrival jitter, loss,
//! duplicates and reordering, from the [`Trailer`](crate::media::Trailer) of each packet.

use serde::Serialize;

/// Statistics of one stream as one receiver sees it.
#[derive(Debug, Clone, Default)]
pub struct StreamStats {
    /// One-way latencies in nanoseconds (saturated at `u32::MAX`, ~4.3 s).
    pub latencies_ns: Vec<u32>,
    /// RFC 3550 §6.4.1 interarrival jitter estimate, nanoseconds.
    pub jitter_ns: f64,
    /// Highest jitter estimate seen.
    pub jitter_max_ns: f64,
    /// Packets received (duplicates excluded).
    pub received: u64,
    /// Packets that arrived after a higher sequence number.
    pub reordered: u64,
    /// Packets received twice (retransmissions that crossed the original).
    pub duplicates: u64,
    first_seq: Option<u32>,
    highest: u32,
    last_transit: Option<i64>,
    seen: SeenWindow,
}

impl StreamStats {
    /// Records one packet sent at `sent_ns` and received at `arrival_ns` (shared clock).
    pub fn record(&mut self, seq: u32, sent_ns: u64, arrival_ns: u64) {
        if self.seen.check_and_set(seq) {
            self.duplicates += 1;
            return;
        }
        match self.first_seq {
            None => {
                self.first_seq = Some(seq);
                self.highest = seq;
            }
            Some(first) => {
                if seq < first {
                    // Older than where we started measuring: count it, move the base.
                    self.first_seq = Some(seq);
                    self.reordered += 1;
                } else if seq > self.highest {
                    self.highest = seq;
                } else {
                    self.reordered += 1;
                }
            }
        }
        self.received += 1;
        let latency = arrival_ns.saturating_sub(sent_ns);
        self.latencies_ns
            .push(latency.min(u64::from(u32::MAX)) as u32);
        // Transit time differences; the send time plays the role of the RTP timestamp, so the
        // jitter is measured in nanoseconds on the shared clock.
        let transit = arrival_ns as i64 - sent_ns as i64;
        if let Some(prev) = self.last_transit {
            let d = (transit - prev).unsigned_abs() as f64;
            self.jitter_ns += (d - self.jitter_ns) / 16.0;
            self.jitter_max_ns = self.jitter_max_ns.max(self.jitter_ns);
        }
        self.last_transit = Some(transit);
    }

    /// Packets expected from the first to the highest sequence number seen.
    pub fn expected(&self) -> u64 {
        match self.first_seq {
            Some(first) => u64::from(self.highest - first) + 1,
            None => 0,
        }
    }

    /// Packets lost (expected but never received).
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.received)
    }

    /// Forget everything measured so far (start of a measurement window); the sequence base
    /// restarts at the next packet.
    pub fn reset(&mut self) {
        *self = StreamStats::default();
    }
}

/// A 1024-packet sliding window of sequence numbers seen, for duplicate detection.
#[derive(Debug, Clone, Default)]
struct SeenWindow {
    top: u32,
    bits: [u64; 16],
    any: bool,
}

impl SeenWindow {
    const SIZE: u32 = 1024;

    /// Marks `seq`; true if it was already marked.
    fn check_and_set(&mut self, seq: u32) -> bool {
        if !self.any {
            self.any = true;
            self.top = seq;
        }
        if seq > self.top {
            let shift = seq - self.top;
            if shift >= Self::SIZE {
                self.bits = [0; 16];
            } else {
                for s in self.top + 1..=seq {
                    self.clear(s);
                }
            }
            self.top = seq;
        } else if self.top - seq >= Self::SIZE {
            return false;
        }
        let (w, b) = ((seq % Self::SIZE) / 64, seq % 64);
        let was = self.bits[w as usize] & (1 << b) != 0;
        self.bits[w as usize] |= 1 << b;
        was
    }

    fn clear(&mut self, seq: u32) {
        let (w, b) = ((seq % Self::SIZE) / 64, seq % 64);
        self.bits[w as usize] &= !(1 << b);
    }
}

/// Latency percentiles and the rest, summarised over many streams.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Streams (stream × receiver paths) summarised.
    pub streams: usize,
    /// Packets received.
    pub packets: u64,
    /// Packets lost.
    pub lost: u64,
    /// Loss ratio.
    pub loss: f64,
    /// Packets reordered.
    pub reordered: u64,
    /// Duplicates.
    pub duplicates: u64,
    /// One-way latency percentiles, microseconds.
    pub latency_us_p50: f64,
    /// 99th percentile.
    pub latency_us_p99: f64,
    /// 99.9th percentile.
    pub latency_us_p999: f64,
    /// Largest latency.
    pub latency_us_max: f64,
    /// Mean over streams of the final RFC 3550 jitter estimate, microseconds.
    pub jitter_us_mean: f64,
    /// Largest jitter estimate over streams, microseconds.
    pub jitter_us_max: f64,
}

impl Summary {
    /// Summarises `streams`.
    pub fn of<'a>(streams: impl IntoIterator<Item = &'a StreamStats>) -> Summary {
        let mut all: Vec<u32> = Vec::new();
        let mut s = Summary::default();
        let mut jitter_sum = 0.0;
        for st in streams {
            s.streams += 1;
            s.packets += st.received;
            s.lost += st.lost();
            s.reordered += st.reordered;
            s.duplicates += st.duplicates;
            jitter_sum += st.jitter_ns;
            s.jitter_us_max = s.jitter_us_max.max(st.jitter_max_ns / 1e3);
            all.extend_from_slice(&st.latencies_ns);
        }
        if s.streams > 0 {
            s.jitter_us_mean = jitter_sum / s.streams as f64 / 1e3;
        }
        let expected = s.packets + s.lost;
        if expected > 0 {
            s.loss = s.lost as f64 / expected as f64;
        }
        if !all.is_empty() {
            all.sort_unstable();
            let pct = |q: f64| {
                let i = ((all.len() as f64 - 1.0) * q).round() as usize;
                f64::from(all[i]) / 1e3
            };
            s.latency_us_p50 = pct(0.5);
            s.latency_us_p99 = pct(0.99);
            s.latency_us_p999 = pct(0.999);
            s.latency_us_max = f64::from(all[all.len() - 1]) / 1e3;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_reorder_duplicates_and_jitter() {
        let mut s = StreamStats::default();
        // 20 ms apart, constant 100 µs transit: no jitter.
        for seq in 0..10u32 {
            let sent = u64::from(seq) * 20_000_000;
            s.record(seq, sent, sent + 100_000);
        }
        assert_eq!(s.jitter_ns, 0.0);
        // 12 lost, 13 then 11 (reordered), 13 again (duplicate); transit 1.1 ms.
        s.record(13, 13 * 20_000_000, 13 * 20_000_000 + 1_100_000);
        // First jump of 1 ms in transit: J = 1e6/16.
        assert!((s.jitter_ns - 62_500.0).abs() < 1.0);
        s.record(11, 11 * 20_000_000, 11 * 20_000_000 + 1_100_000);
        s.record(13, 13 * 20_000_000, 13 * 20_000_000 + 1_100_000);
        assert_eq!(s.received, 12);
        assert_eq!(s.expected(), 14);
        assert_eq!(s.lost(), 2);
        assert_eq!(s.reordered, 1);
        assert_eq!(s.duplicates, 1);
        // Then no change in transit: J decays by 1/16.
        assert!((s.jitter_ns - 62_500.0 * 15.0 / 16.0).abs() < 1.0);
        let sum = Summary::of([&s]);
        assert_eq!(sum.packets, 12);
        assert!((sum.latency_us_p50 - 100.0).abs() < 1e-9);
        assert!((sum.latency_us_max - 1_100.0).abs() < 1e-9);
    }
}
