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
