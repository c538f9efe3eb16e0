//! Pausing video a subscriber's link cannot carry.
//!
//! Forwarded media is not paced (a pacer at a bandwidth estimate below what single-layer video
//! needs made the doctor's pictures 1.3 s late under 2 % loss while the sound was live,
//! BENCHMARKS.md), so the SFU answers a lasting shortfall itself: when a subscriber's estimate
//! has not covered a video track without a lower simulcast layer for [`PAUSE_AFTER`], the
//! track stops being forwarded to that subscriber, and starts again at a keyframe once the
//! estimate has room for it.
//!
//! Audio is never paused (it is budgeted first); device cameras (otoscope, dermatoscope) go
//! before other video. [`PAUSE_AFTER`] is long enough that the estimate's short dips (the start
//! of a call, a burst of loss) pause nothing: at 1 s, dips paused cameras on a clean loopback
//! link. A track resumes only after [`MIN_PAUSE`] and with [`crate::simulcast::UP_FACTOR`]
//! headroom, so it does not flap. Pure state: time is an input.

use std::time::{Duration, Instant};

use crate::simulcast::UP_FACTOR;

/// How long a track may not fit its subscriber's estimate before it is paused.
pub const PAUSE_AFTER: Duration = Duration::from_secs(3);

/// The shortest pause: a resume costs a keyframe.
pub const MIN_PAUSE: Duration = Duration::from_secs(2);

/// What changed for a track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing.
    None,
    /// Stop forwarding it.
    Paused,
    /// Forward it again, from its next keyframe (request one).
    Resumed,
}

/// The pause state of one video track towards one subscriber.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pauser {
    /// Since when the track has not fitted (while forwarded).
    short_since: Option<Instant>,
    /// When it was paused (while paused).
    paused_at: Option<Instant>,
}

impl Pauser {
    /// Whether the track is paused now.
    pub fn is_paused(&self) -> bool {
        self.paused_at.is_some()
    }

    /// Updates the state from what the subscriber's estimate leaves for this track at `now`:
    /// `left` bits/s for a track of `rate` bits/s. Returns what changed and whether the track
    /// is forwarded (so the caller takes its rate off what is left for the next tracks).
    pub fn update(&mut self, now: Instant, rate: u64, left: u64) -> (Change, bool) {
        match self.paused_at {
            None => {
                if rate <= left {
                    self.short_since = None;
                    return (Change::None, true);
                }
                let since = *self.short_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= PAUSE_AFTER {
                    self.short_since = None;
                    self.paused_at = Some(now);
                    return (Change::Paused, false);
                }
                // Still forwarded (the pacer absorbs a short dip): it uses its share.
                (Change::None, true)
            }
            Some(at) => {
                let room = (rate as f64 * UP_FACTOR) as u64 <= left;
                if room && now.saturating_duration_since(at) >= MIN_PAUSE {
                    self.paused_at = None;
                    return (Change::Resumed, true);
                }
                (Change::None, false)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MBPS: u64 = 1_000_000;

    #[test]
    fn a_short_dip_does_not_pause() {
        let t0 = Instant::now();
        let mut p = Pauser::default();
        assert_eq!(p.update(t0, 2 * MBPS, MBPS), (Change::None, true));
        let t = t0 + PAUSE_AFTER - Duration::from_millis(100);
        assert_eq!(p.update(t, 2 * MBPS, MBPS), (Change::None, true));
        // The estimate recovers before PAUSE_AFTER: the clock starts again.
        assert_eq!(p.update(t, 2 * MBPS, 3 * MBPS), (Change::None, true));
        let t = t + PAUSE_AFTER - Duration::from_millis(100);
        assert_eq!(p.update(t, 2 * MBPS, MBPS), (Change::None, true));
        assert!(!p.is_paused());
    }

    #[test]
    fn a_lasting_shortfall_pauses_and_headroom_resumes_after_the_minimum_pause() {
        let t0 = Instant::now();
        let mut p = Pauser::default();
        p.update(t0, 2 * MBPS, MBPS);
        let t1 = t0 + PAUSE_AFTER;
        assert_eq!(p.update(t1, 2 * MBPS, MBPS), (Change::Paused, false));
        assert!(p.is_paused());
        // Room again, but not for long enough.
        let t = t1 + Duration::from_millis(500);
        assert_eq!(p.update(t, 2 * MBPS, 3 * MBPS), (Change::None, false));
        // After MIN_PAUSE: just fitting is not enough, headroom is needed.
        let t = t1 + MIN_PAUSE;
        assert_eq!(p.update(t, 2 * MBPS, 2 * MBPS), (Change::None, false));
        assert_eq!(p.update(t, 2 * MBPS, 3 * MBPS), (Change::Resumed, true));
        assert!(!p.is_paused());
    }
}
