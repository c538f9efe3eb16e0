//! The estimated wait: the recent handling time per queue position (each take's wait until
//! taken divided by the position the ticket had when it arrived, averaged over the last
//! `queue.estimate_window` takes), times the ticket's position now. Before the first take,
//! `queue.default_handling` per position.

use std::time::Duration;

/// The handling time of one take: its wait until taken, per position it had on arrival.
pub fn handling_ms(waited: Duration, arrival_position: u32) -> u64 {
    let ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX);
    ms / u64::from(arrival_position.max(1))
}

/// The estimated wait of the ticket at `position`, given the recent handling times (ms).
pub fn estimated_wait(position: u32, recent_ms: &[u64], default: Duration) -> Duration {
    let per_position = if recent_ms.is_empty() {
        default
    } else {
        let sum: u128 = recent_ms.iter().map(|&m| u128::from(m)).sum();
        let mean = sum / recent_ms.len() as u128;
        Duration::from_millis(u64::try_from(mean).unwrap_or(u64::MAX))
    };
    per_position.saturating_mul(position.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_before_data_then_the_moving_average_per_position() {
        let d = Duration::from_secs(300);
        assert_eq!(estimated_wait(2, &[], d), Duration::from_secs(600));
        // Two takes: one waited 60 s from position 1, one 240 s from position 2.
        let recent = [
            handling_ms(Duration::from_secs(60), 1),
            handling_ms(Duration::from_secs(240), 2),
        ];
        assert_eq!(recent, [60_000, 120_000]);
        assert_eq!(estimated_wait(3, &recent, d), Duration::from_secs(270));
        assert_eq!(handling_ms(Duration::from_secs(10), 0), 10_000);
    }
}
