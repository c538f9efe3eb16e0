//! Statistics: plain structs filled by the core, read with [`Sidecar::stats`](crate::Sidecar::stats)
//! and exported by the server as metrics. No identities: kiosks appear as a redacted hash.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

/// Statistics of the whole sidecar.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct SidecarStats {
    /// Connections accepted by the QUIC endpoint since start.
    pub connections_accepted: u64,
    /// Connections open now (authenticated or not).
    pub connections_open: usize,
    /// Kiosks authenticated and connected now.
    pub kiosks_connected: usize,
    /// Kiosks remembered for resumption (connected or recently gone).
    pub kiosks_remembered: usize,
    /// Streams or connections closed for bad input, by error code name.
    pub refusals: BTreeMap<String, u64>,
    /// Commands sent to kiosks.
    pub commands_sent: u64,
    /// Commands refused (sender not allowed, unknown kiosk or channel...).
    pub commands_refused: u64,
    /// Frames handed to the sink.
    pub frames_delivered: u64,
    /// Frames for kiosks dropped because their outbound queue was full.
    pub outbound_dropped: u64,
    /// Pongs that matched no outstanding ping.
    pub stray_pongs: u64,
    /// Connections accepted over the stream transport (WebSocket) rather than QUIC, in total.
    pub stream_connections: u64,
    /// Per-channel statistics.
    pub channels: Vec<ChannelStats>,
}

/// Statistics of one channel of one kiosk (kept across reconnections).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ChannelStats {
    /// The room.
    pub room: String,
    /// The kiosk identity, redacted (a stable hash, as in logs).
    pub kiosk: String,
    /// The channel id.
    pub channel_id: u32,
    /// The channel kind (`measurement`, `waveform`...).
    pub kind: String,
    /// Whether the kiosk is connected now.
    pub connected: bool,
    /// Frames delivered.
    pub frames: u64,
    /// Encoded bytes of the frames delivered.
    pub bytes: u64,
    /// Measurements received again (resent after a reconnection) and not delivered twice.
    pub duplicates: u64,
    /// Waveform chunks that arrived after a newer one and were dropped.
    pub late: u64,
    /// Waveform chunks missing (sequence gaps), or measurements given up.
    pub gaps: u64,
    /// Blobs whose stream ended before the last chunk.
    pub incomplete_blobs: u64,
    /// Median latency from capture (aligned) to delivery, µs, over the recent frames.
    pub latency_p50_us: Option<u64>,
    /// 99th percentile of the same.
    pub latency_p99_us: Option<u64>,
    /// Inter-arrival jitter (RFC 3550 estimator on capture-to-delivery transit), µs.
    pub jitter_us: u64,
    /// The kiosk's current clock offset error bound, µs.
    pub clock_error_us: Option<u64>,
}

/// Accumulates one channel's counters.
#[derive(Debug, Clone)]
pub(crate) struct ChannelCounters {
    pub frames: u64,
    pub bytes: u64,
    pub duplicates: u64,
    pub late: u64,
    pub gaps: u64,
    pub incomplete_blobs: u64,
    latencies: LatencyWindow,
    jitter: Jitter,
}

impl ChannelCounters {
    pub fn new(latency_window: usize) -> Self {
        ChannelCounters {
            frames: 0,
            bytes: 0,
            duplicates: 0,
            late: 0,
            gaps: 0,
            incomplete_blobs: 0,
            latencies: LatencyWindow::new(latency_window),
            jitter: Jitter::default(),
        }
    }

    /// One delivered frame of `bytes`, captured at `aligned_us`, delivered at `server_us`.
    pub fn delivered(&mut self, bytes: usize, aligned_us: Option<u64>, server_us: u64) {
        self.frames += 1;
        self.bytes += bytes as u64;
        if let Some(aligned) = aligned_us {
            let transit = server_us as i64 - aligned as i64;
            self.latencies.push(transit.max(0) as u64);
            self.jitter.push(transit);
        }
    }

    pub fn snapshot(&self, into: &mut ChannelStats) {
        into.frames = self.frames;
        into.bytes = self.bytes;
        into.duplicates = self.duplicates;
        into.late = self.late;
        into.gaps = self.gaps;
        into.incomplete_blobs = self.incomplete_blobs;
        into.latency_p50_us = self.latencies.percentile(50);
        into.latency_p99_us = self.latencies.percentile(99);
        into.jitter_us = self.jitter.value_us();
    }
}

/// The last `cap` latencies, for percentiles.
#[derive(Debug, Clone)]
pub(crate) struct LatencyWindow {
    values: VecDeque<u64>,
    cap: usize,
}

impl LatencyWindow {
    pub fn new(cap: usize) -> Self {
        LatencyWindow {
            values: VecDeque::with_capacity(cap.min(64)),
            cap: cap.max(1),
        }
    }

    pub fn push(&mut self, v: u64) {
        if self.values.len() == self.cap {
            self.values.pop_front();
        }
        self.values.push_back(v);
    }

    /// Nearest-rank percentile.
    pub fn percentile(&self, p: u32) -> Option<u64> {
        if self.values.is_empty() {
            return None;
        }
        let mut sorted: Vec<u64> = self.values.iter().copied().collect();
        sorted.sort_unstable();
        let rank = (u64::from(p) * sorted.len() as u64).div_ceil(100).max(1) as usize;
        sorted.get(rank - 1).copied()
    }
}

/// RFC 3550 interarrival jitter: `J += (|D| - J) / 16` with `D` the change in transit time.
#[derive(Debug, Clone, Default)]
pub(crate) struct Jitter {
    last_transit: Option<i64>,
    jitter: f64,
}

impl Jitter {
    pub fn push(&mut self, transit: i64) {
        if let Some(last) = self.last_transit {
            let d = (transit - last).unsigned_abs() as f64;
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.last_transit = Some(transit);
    }

    pub fn value_us(&self) -> u64 {
        self.jitter.round() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut w = LatencyWindow::new(100);
        assert_eq!(w.percentile(50), None);
        for v in 1..=100 {
            w.push(v);
        }
        assert_eq!(w.percentile(50), Some(50));
        assert_eq!(w.percentile(99), Some(99));
        w.push(1000);
        assert_eq!(w.percentile(99), Some(100));
    }

    #[test]
    fn jitter_grows_with_variation() {
        let mut j = Jitter::default();
        for _ in 0..50 {
            j.push(1000);
        }
        assert_eq!(j.value_us(), 0);
        for i in 0..200 {
            j.push(if i % 2 == 0 { 1000 } else { 3000 });
        }
        assert!(j.value_us() > 1500, "{}", j.value_us());
    }
}
