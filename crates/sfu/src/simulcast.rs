//! Simulcast layer choice: which of a publisher's layers a subscriber should receive, from that
//! subscriber's bandwidth estimate and the measured bitrate of each layer.
//!
//! Audio (microphone and stethoscope) is budgeted first and never dropped; video gets what is
//! left. Going up needs headroom, going down happens as soon as the current layer no longer fits,
//! so a subscriber does not flap between two layers.

use std::time::{Duration, Instant};

/// Maximum number of simulcast layers accepted per track.
pub const MAX_LAYERS: usize = 3;

/// Headroom required to move up to a layer (its bitrate × this must fit the budget).
pub const UP_FACTOR: f64 = 1.3;

/// Measures a stream's bitrate over a sliding window without allocating.
#[derive(Debug, Clone, Copy, Default)]
pub struct BitrateMeter {
    window_start: Option<Instant>,
    window_bytes: u64,
    bps: Option<u64>,
}

/// Window over which a bitrate is measured.
pub const METER_WINDOW: Duration = Duration::from_millis(1000);

impl BitrateMeter {
    /// Count `bytes` arriving at `now`.
    pub fn add(&mut self, now: Instant, bytes: usize) {
        let start = *self.window_start.get_or_insert(now);
        self.window_bytes += bytes as u64;
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= METER_WINDOW {
            self.bps = Some((self.window_bytes as f64 * 8.0 / elapsed.as_secs_f64()) as u64);
            self.window_start = Some(now);
            self.window_bytes = 0;
        }
    }

    /// The last measured bitrate (bits/s), `None` before a full window has passed or when the
    /// stream has been silent for more than two windows at `now`.
    pub fn bps(&self, now: Instant) -> Option<u64> {
        let start = self.window_start?;
        if now.saturating_duration_since(start) > METER_WINDOW * 2 {
            return None;
        }
        self.bps
    }
}

/// Choose the layer to receive.
///
/// `layers[i]` is the measured bitrate of layer `i` (`None`: not flowing). Layers are indexed
/// from the lowest quality up. `budget` is the subscriber's bandwidth estimate minus its audio.
/// Returns the highest layer that fits (with [`UP_FACTOR`] headroom to go above `current`), and
/// the lowest flowing layer when none fits: a doctor would rather see a small picture than none.
pub fn choose_layer(layers: &[Option<u64>], budget: u64, current: Option<u8>) -> Option<u8> {
    let mut best = None;
    let mut lowest = None;
    for (i, rate) in layers.iter().enumerate() {
        let Some(rate) = *rate else { continue };
        let i = i as u8;
        lowest.get_or_insert(i);
        let needed = if current.is_some_and(|c| i <= c) {
            rate as f64
        } else {
            rate as f64 * UP_FACTOR
        };
        if needed <= budget as f64 {
            best = Some(i);
        }
    }
    best.or(lowest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_highest_fitting_layer_with_hysteresis() {
        let layers = [Some(150_000), Some(500_000), Some(1_500_000)];
        assert_eq!(choose_layer(&layers, 100_000, None), Some(0));
        assert_eq!(
            choose_layer(&layers, 600_000, None),
            Some(0),
            "500k needs 650k to go up"
        );
        assert_eq!(choose_layer(&layers, 700_000, None), Some(1));
        assert_eq!(
            choose_layer(&layers, 600_000, Some(1)),
            Some(1),
            "staying needs no headroom"
        );
        assert_eq!(choose_layer(&layers, 450_000, Some(1)), Some(0));
        assert_eq!(choose_layer(&layers, 5_000_000, Some(0)), Some(2));
    }

    #[test]
    fn missing_layers_are_skipped() {
        assert_eq!(
            choose_layer(&[None, Some(500_000), None], 10, None),
            Some(1)
        );
        assert_eq!(choose_layer(&[None, None, None], 10_000_000, None), None);
    }

    #[test]
    fn meter_measures_a_window() {
        let t0 = Instant::now();
        let mut m = BitrateMeter::default();
        for i in 0..=50 {
            m.add(t0 + Duration::from_millis(i * 20), 1250);
        }
        // 51 packets of 10 kbit in 1 s.
        let bps = m.bps(t0 + Duration::from_millis(1000)).unwrap();
        assert!((500_000..=520_000).contains(&bps), "{bps}");
        assert_eq!(m.bps(t0 + Duration::from_secs(5)), None);
    }
}
