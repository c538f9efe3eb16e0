//! The one monotonic clock shared by senders and receivers: nanoseconds since a process-wide
//! epoch, so a send time written into a payload by one thread can be compared with an arrival
//! time taken by another.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// The process's epoch (fixed at the first call).
pub fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// `t` as nanoseconds since the epoch (0 for instants before it).
pub fn nanos(t: Instant) -> u64 {
    t.saturating_duration_since(epoch()).as_nanos() as u64
}

/// The instant `ns` nanoseconds after the epoch.
pub fn instant(ns: u64) -> Instant {
    epoch() + Duration::from_nanos(ns)
}

/// CPU time (user + system) this process has used so far (`getrusage(RUSAGE_SELF)`).
pub fn self_cpu() -> Duration {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}
