//! Reconnection delays shared by the media loops (`dial`) and the telemetry link
//! (`telemetry`): exponential, capped, jittered so that many kiosks cut off together do not
//! come back in step.

use std::time::Duration;

/// Reconnection delays: `initial`, doubled after each failure up to `max`, with ±20 % jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The delay before attempt number `failures` (0 after the first failure).
    pub fn delay(&self, failures: u32) -> Duration {
        let base = self
            .initial
            .saturating_mul(1u32 << failures.min(16))
            .min(self.max);
        base.mul_f64(rand::random_range(0.8..1.2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let b = Backoff::default();
        assert!(b.delay(0) <= Duration::from_millis(1200));
        assert!(b.delay(3) >= Duration::from_millis(6400));
        assert!(b.delay(30) <= Duration::from_secs(36));
    }
}
