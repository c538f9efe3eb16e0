//! `[queue]`: the walk-in queue's limits and times, and the fleet's presence windows.

use std::num::NonZeroUsize;
use std::time::Duration;

use serde::Deserialize;

/// `[queue]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Tickets waiting at once, over the whole service; more are refused (503,
    /// `cabine_queue_refused_total`).
    pub max_waiting: NonZeroUsize,
    /// Ticket records kept at once, over the whole service (waiting, or remembered for
    /// `keep`); more are refused (503, `cabine_queue_refused_total{limit="max_records"}`). A
    /// kiosk's new ticket replaces its previous record.
    pub max_records: NonZeroUsize,
    /// A ticket nobody takes within this expires (410 afterwards).
    #[serde(with = "humantime_serde")]
    pub ticket_ttl: Duration,
    /// A waiting ticket older than this is flagged to operators (`/api/ops`, a metric, an
    /// audit line).
    #[serde(with = "humantime_serde")]
    pub unanswered_after: Duration,
    /// How long a ticket is remembered after it left the queue (taken: the kiosk still gets
    /// its room; cancelled, expired: 410); then 404.
    #[serde(with = "humantime_serde")]
    pub keep: Duration,
    /// The handling time per queue position assumed before any ticket was taken.
    #[serde(with = "humantime_serde")]
    pub default_handling: Duration,
    /// Takes averaged for the handling time.
    pub estimate_window: NonZeroUsize,
    /// Longest `reason`, in characters.
    pub max_reason_chars: NonZeroUsize,
    /// Lifetime of the room tokens a take mints (the doctor's and the kiosk's).
    #[serde(with = "humantime_serde")]
    pub room_token_ttl: Duration,
    /// A kiosk not heard of (telemetry, media, queue) for this long is offline.
    #[serde(with = "humantime_serde")]
    pub kiosk_offline_after: Duration,
    /// A kiosk not heard of for this long leaves the fleet list.
    #[serde(with = "humantime_serde")]
    pub kiosk_forget_after: Duration,
}

impl QueueConfig {
    /// Checks the times against each other and against `auth.max_ttl` (the longest token the
    /// server accepts); the error names the key.
    pub fn check(&self, auth_max_ttl: Duration) -> Result<(), String> {
        for (key, d) in [
            ("ticket_ttl", self.ticket_ttl),
            ("unanswered_after", self.unanswered_after),
            ("keep", self.keep),
            ("default_handling", self.default_handling),
            ("room_token_ttl", self.room_token_ttl),
            ("kiosk_offline_after", self.kiosk_offline_after),
            ("kiosk_forget_after", self.kiosk_forget_after),
        ] {
            if d.is_zero() {
                return Err(format!("queue.{key} must be above 0"));
            }
        }
        if self.unanswered_after >= self.ticket_ttl {
            return Err(format!(
                "queue.unanswered_after ({:?}) must be shorter than queue.ticket_ttl ({:?}): a \
                 ticket would expire before it is flagged",
                self.unanswered_after, self.ticket_ttl
            ));
        }
        if self.room_token_ttl > auth_max_ttl {
            return Err(format!(
                "queue.room_token_ttl ({:?}) must be at most auth.max_ttl ({:?}): the server \
                 would refuse the tokens it mints",
                self.room_token_ttl, auth_max_ttl
            ));
        }
        if self.kiosk_forget_after < self.kiosk_offline_after {
            return Err(format!(
                "queue.kiosk_forget_after ({:?}) must be at least queue.kiosk_offline_after \
                 ({:?})",
                self.kiosk_forget_after, self.kiosk_offline_after
            ));
        }
        if self.max_records.get() < self.max_waiting.get() {
            return Err(format!(
                "queue.max_records ({}) must be at least queue.max_waiting ({})",
                self.max_records, self.max_waiting
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inconsistent_times_are_refused_naming_the_key() {
        let ok = crate::config::Config::defaults().queue;
        let max = Duration::from_secs(24 * 3600);
        assert_eq!(ok.check(max), Ok(()));
        let mut c = ok.clone();
        c.unanswered_after = c.ticket_ttl;
        assert!(c.check(max).unwrap_err().contains("queue.unanswered_after"));
        let mut c = ok.clone();
        c.keep = Duration::ZERO;
        assert!(c.check(max).unwrap_err().contains("queue.keep"));
        let mut c = ok.clone();
        c.room_token_ttl = max + Duration::from_secs(1);
        assert!(c.check(max).unwrap_err().contains("queue.room_token_ttl"));
        let mut c = ok;
        c.max_records = NonZeroUsize::new(1).unwrap();
        assert!(c.check(max).unwrap_err().contains("queue.max_records"));
    }
}
