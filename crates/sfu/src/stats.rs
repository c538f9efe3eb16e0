//! Per-stream statistics, kept as plain structs in the core and read by the shell (the JSON API,
//! metrics export). Updating them on the packet path never allocates.

use std::time::{Duration, Instant};

use serde::Serialize;

/// RFC 3550 §6.4.1 interarrival jitter estimator, in RTP timestamp units.
#[derive(Debug, Clone, Copy, Default)]
pub struct Jitter {
    last: Option<(Instant, u32)>,
    jitter: f64,
}

impl Jitter {
    /// Update with a packet of RTP timestamp `ts` arriving at `arrival`, clock `clock_rate` Hz.
    pub fn update(&mut self, arrival: Instant, ts: u32, clock_rate: u32) {
        if let Some((prev_at, prev_ts)) = self.last {
            if arrival < prev_at {
                return;
            }
            let arrival_delta =
                arrival.duration_since(prev_at).as_secs_f64() * f64::from(clock_rate);
            let ts_delta = f64::from(ts.wrapping_sub(prev_ts) as i32);
            let d = (arrival_delta - ts_delta).abs();
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.last = Some((arrival, ts));
    }

    /// The jitter in milliseconds.
    pub fn millis(&self, clock_rate: u32) -> f64 {
        self.jitter * 1000.0 / f64::from(clock_rate.max(1))
    }
}

/// A latency histogram with fixed logarithmic buckets (µs), so recording never allocates.
#[derive(Debug, Clone)]
pub struct DelayHistogram {
    buckets: [u64; Self::BUCKETS],
    count: u64,
    sum_us: u64,
    max_us: u64,
}

impl Default for DelayHistogram {
    fn default() -> Self {
        DelayHistogram {
            buckets: [0; Self::BUCKETS],
            count: 0,
            sum_us: 0,
            max_us: 0,
        }
    }
}

impl DelayHistogram {
    /// Number of buckets: bucket `i` holds values below `BOUNDS_US[i]`, the last one the rest.
    pub const BUCKETS: usize = 16;
    /// Upper bounds of the buckets, in microseconds.
    pub const BOUNDS_US: [u64; Self::BUCKETS - 1] = [
        10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
        1_000_000,
    ];

    /// Record one duration.
    pub fn record(&mut self, d: Duration) {
        let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
        let i = Self::BOUNDS_US.partition_point(|&b| b <= us);
        self.buckets[i] += 1;
        self.count += 1;
        self.sum_us += us;
        self.max_us = self.max_us.max(us);
    }

    /// Adds `other`'s counts into this one.
    pub fn merge(&mut self, other: &DelayHistogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
        self.count += other.count;
        self.sum_us += other.sum_us;
        self.max_us = self.max_us.max(other.max_us);
    }

    /// Number of recorded values.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Sum of recorded values in µs.
    pub fn sum_us(&self) -> u64 {
        self.sum_us
    }

    /// Counts per bucket (see [`Self::BOUNDS_US`]).
    pub fn buckets(&self) -> &[u64; Self::BUCKETS] {
        &self.buckets
    }

    /// Quantile `q` (0..=1) in µs, interpolated linearly inside the bucket that holds it (a
    /// bucket's values are taken as spread evenly between its bounds; the last bucket ends at
    /// the largest value seen), never above the largest value. 0 when empty.
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((self.count as f64) * q.clamp(0.0, 1.0)).max(1.0);
        let mut seen = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n > 0 && (seen + n) as f64 >= rank {
                let lower = if i == 0 { 0 } else { Self::BOUNDS_US[i - 1] };
                let upper = Self::BOUNDS_US
                    .get(i)
                    .copied()
                    .unwrap_or(self.max_us)
                    .min(self.max_us)
                    .max(lower);
                let within = (rank - seen as f64) / n as f64;
                let v = lower as f64 + within * (upper - lower) as f64;
                return (v.round() as u64).min(self.max_us);
            }
            seen += n;
        }
        self.max_us
    }

    /// Summary for reports.
    pub fn summary(&self) -> DelaySummary {
        DelaySummary {
            count: self.count,
            mean_us: self.sum_us.checked_div(self.count).unwrap_or(0),
            p50_us: self.quantile_us(0.5),
            p99_us: self.quantile_us(0.99),
            max_us: self.max_us,
        }
    }
}

/// A readable summary of a [`DelayHistogram`]; quantiles are interpolated inside buckets.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct DelaySummary {
    /// Values recorded.
    pub count: u64,
    /// Mean, µs.
    pub mean_us: u64,
    /// Median, µs (interpolated in the histogram).
    pub p50_us: u64,
    /// 99th percentile, µs (interpolated in the histogram).
    pub p99_us: u64,
    /// Largest value, µs.
    pub max_us: u64,
}

/// Statistics of one incoming stream (one simulcast layer of a published track).
#[derive(Debug, Clone, Serialize, Default)]
pub struct IngressStats {
    /// The layer's RID, if simulcast.
    pub rid: Option<String>,
    /// RTP packets received.
    pub packets: u64,
    /// RTP payload bytes received.
    pub bytes: u64,
    /// Packets lost (as reported by the receiver side of the engine), fraction 0..1.
    pub loss: f32,
    /// NACKs sent to the publisher.
    pub nacks: u64,
    /// PLIs sent to the publisher.
    pub plis: u64,
    /// FIRs sent to the publisher.
    pub firs: u64,
    /// RFC 3550 interarrival jitter, ms.
    pub jitter_ms: f64,
    /// Round-trip time to the publisher, ms.
    pub rtt_ms: Option<f64>,
    /// Measured bitrate, bits/s.
    pub bitrate_bps: Option<u64>,
    /// Keyframes received.
    pub keyframes: u64,
}

/// Statistics of one outgoing stream (a track as one subscriber receives it).
#[derive(Debug, Clone, Serialize, Default)]
pub struct EgressStats {
    /// RTP packets forwarded.
    pub packets: u64,
    /// RTP payload bytes forwarded.
    pub bytes: u64,
    /// Packets not forwarded because they belonged to another layer, preceded a keyframe, or
    /// came while the track was paused.
    pub skipped: u64,
    /// Paused now: the subscriber's link cannot carry this video ([`crate::pause`]).
    pub paused: bool,
    /// Times this track was paused for this subscriber.
    pub pauses: u64,
    /// Loss reported by the subscriber, fraction 0..1.
    pub loss: f32,
    /// NACKs received from the subscriber.
    pub nacks: u64,
    /// PLIs received from the subscriber.
    pub plis: u64,
    /// FIRs received from the subscriber.
    pub firs: u64,
    /// Round-trip time to the subscriber, ms.
    pub rtt_ms: Option<f64>,
    /// Jitter reported by the subscriber, ms.
    pub jitter_ms: Option<f64>,
    /// The RID of the layer being forwarded now.
    pub layer: Option<String>,
    /// Layer switches so far.
    pub layer_switches: u64,
    /// How long sent video is kept for retransmission now, ms (0: nothing kept, audio):
    /// [`RoomConfig::rtx_history`](crate::room::RoomConfig::rtx_history) until the subscriber's
    /// round-trip time is known, then shorter on a short path.
    pub rtx_history_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles() {
        let mut h = DelayHistogram::default();
        for _ in 0..98 {
            h.record(Duration::from_micros(20));
        }
        h.record(Duration::from_micros(700));
        h.record(Duration::from_millis(3));
        let s = h.summary();
        assert_eq!(s.count, 100);
        // Interpolated inside the buckets, not their edges: 50 of the 98 values in (10, 25].
        assert_eq!(s.p50_us, 18);
        assert_eq!(s.p99_us, 1_000);
        assert_eq!(s.max_us, 3_000);
        // Two rows of different delays get different quantiles even within one bucket.
        let mut a = DelayHistogram::default();
        let mut b = DelayHistogram::default();
        for i in 0..100u64 {
            a.record(Duration::from_micros(120 + i % 10));
            b.record(Duration::from_micros(200 + i % 40));
        }
        assert!(a.quantile_us(0.5) < b.quantile_us(0.5));
        assert!(b.quantile_us(0.99) <= 239);
    }

    #[test]
    fn jitter_of_a_regular_stream_is_zero_and_grows_with_variation() {
        let t0 = Instant::now();
        let mut j = Jitter::default();
        for i in 0..50u32 {
            j.update(
                t0 + Duration::from_millis(u64::from(i) * 20),
                i * 960,
                48_000,
            );
        }
        assert!(j.millis(48_000) < 0.01);
        for i in 50..100u32 {
            let wobble = if i % 2 == 0 { 5 } else { 0 };
            j.update(
                t0 + Duration::from_millis(u64::from(i) * 20 + wobble),
                i * 960,
                48_000,
            );
        }
        let ms = j.millis(48_000);
        assert!(ms > 2.0 && ms < 6.0, "{ms}");
    }
}
