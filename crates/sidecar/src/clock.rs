//! Kiosk-to-server clock alignment from ping exchanges.
//!
//! The server sends `Ping{id}` at server time `s0`, the kiosk answers `Pong{id, kiosk_time_us: k}`
//! and the server reads it at `s3`. Assuming the kiosk stamped `k` half-way, the kiosk clock is
//! ahead of the server's by `offset = k - (s0 + s3) / 2`, within `± (s3 - s0) / 2`. Among recent
//! samples the one with the smallest round trip has the smallest error bound, so it is the
//! estimate (like NTP's clock filter). Samples age out so the estimate follows drift.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Samples kept.
const MAX_SAMPLES: usize = 32;

/// A clock estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Estimate {
    /// Kiosk clock minus server clock, µs.
    pub offset_us: i64,
    /// Bound on the error of `offset_us`, µs (half the sample's round trip).
    pub error_us: u64,
    /// The sample's round trip, µs.
    pub rtt_us: u64,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    estimate: Estimate,
}

/// Estimates a kiosk's clock offset from ping round trips.
#[derive(Debug, Clone)]
pub struct ClockEstimator {
    samples: VecDeque<Sample>,
    /// From the ClientHello: one-way, used until the first round trip.
    coarse: Option<Estimate>,
    window: Duration,
}

impl ClockEstimator {
    /// An estimator keeping samples for `window`.
    pub fn new(window: Duration) -> Self {
        ClockEstimator {
            samples: VecDeque::new(),
            coarse: None,
            window,
        }
    }

    /// A one-way sample: the kiosk's clock read `kiosk_us` when it sent a message the server
    /// received at `server_us`, on a path with round trip about `rtt_us`.
    pub fn add_coarse(&mut self, kiosk_us: u64, server_us: u64, rtt_us: u64) {
        let sent_server_us = server_us as i128 - i128::from(rtt_us / 2);
        self.coarse = Some(Estimate {
            offset_us: clamp(kiosk_us as i128 - sent_server_us),
            error_us: rtt_us.max(1),
            rtt_us,
        });
    }

    /// A round-trip sample: ping sent at `sent_us`, answered with `kiosk_us`, read at `recv_us`
    /// (server clock), `now` being the read instant.
    pub fn add_sample(&mut self, now: Instant, sent_us: u64, kiosk_us: u64, recv_us: u64) {
        let rtt_us = recv_us.saturating_sub(sent_us);
        let mid = (i128::from(sent_us) + i128::from(recv_us)) / 2;
        let estimate = Estimate {
            offset_us: clamp(i128::from(kiosk_us) - mid),
            error_us: rtt_us.div_ceil(2).max(1),
            rtt_us,
        };
        if self.samples.len() == MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample { at: now, estimate });
        self.expire(now);
    }

    /// The current estimate: the smallest-round-trip sample of the window, else the coarse one.
    pub fn estimate(&self) -> Option<Estimate> {
        self.samples
            .iter()
            .min_by_key(|s| s.estimate.rtt_us)
            .map(|s| s.estimate)
            .or(self.coarse)
    }

    /// Round-trip samples currently held.
    pub fn samples(&self) -> usize {
        self.samples.len()
    }

    /// Maps a kiosk time to the server clock: `(aligned_us, error_us)`; without any estimate the
    /// kiosk time is returned unchanged with an unknown (`u64::MAX`) error.
    pub fn to_server(&self, kiosk_us: u64) -> (u64, u64) {
        match self.estimate() {
            Some(e) => {
                let aligned = i128::from(kiosk_us) - i128::from(e.offset_us);
                (aligned.clamp(0, i128::from(u64::MAX)) as u64, e.error_us)
            }
            None => (kiosk_us, u64::MAX),
        }
    }

    /// Drops samples older than the window, keeping at least the newest.
    fn expire(&mut self, now: Instant) {
        while self.samples.len() > 1
            && self
                .samples
                .front()
                .is_some_and(|s| now.saturating_duration_since(s.at) > self.window)
        {
            self.samples.pop_front();
        }
    }
}

fn clamp(v: i128) -> i64 {
    v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_rtt_sample_wins() {
        let t0 = Instant::now();
        let mut c = ClockEstimator::new(Duration::from_secs(60));
        // Kiosk 5 s ahead. Asymmetric slow sample: 40 ms out, 0 back.
        let off = 5_000_000u64;
        c.add_sample(t0, 1_000_000, 1_040_000 + off, 1_040_000);
        assert_eq!(c.estimate().unwrap().offset_us, 5_020_000);
        // Fast symmetric sample: 1 ms each way.
        c.add_sample(t0, 2_000_000, 2_001_000 + off, 2_002_000);
        let e = c.estimate().unwrap();
        assert_eq!(e.offset_us, 5_000_000);
        assert_eq!(e.error_us, 1_000);
        assert_eq!(c.to_server(7_000_000 + off), (7_000_000, 1_000));
    }

    #[test]
    fn old_samples_age_out() {
        let t0 = Instant::now();
        let mut c = ClockEstimator::new(Duration::from_secs(10));
        c.add_sample(t0, 0, 100, 10);
        c.add_sample(t0 + Duration::from_secs(20), 1_000, 1_500, 1_100);
        assert_eq!(c.samples(), 1);
        assert_eq!(c.estimate().unwrap().offset_us, 1_500 - 1_050);
    }

    #[test]
    fn coarse_until_first_round_trip() {
        let mut c = ClockEstimator::new(Duration::from_secs(10));
        assert_eq!(c.to_server(5), (5, u64::MAX));
        c.add_coarse(10_000_000, 3_000_000, 2_000);
        let e = c.estimate().unwrap();
        assert_eq!(e.offset_us, 10_000_000 - 2_999_000);
        assert_eq!(e.error_us, 2_000);
    }
}
