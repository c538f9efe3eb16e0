//! Audit lines per anonymous source: a refused request without a valid token says nothing
//! about who sent it but its address, and costs the sender nothing, so such refusals are
//! aggregated per source network (IPv4 /24, IPv6 /64) and interval: the first is written, the
//! others of the interval become one summary line with their count. An anonymous flood then
//! writes at most two lines per source per interval (and sources beyond
//! `limits.anonymous_audit_sources` share one bucket), so it cannot rotate the accepted events
//! out of the retained audit files.
//!
//! The aggregation is a plain state machine; time is an input:
//!
//! ```text
//! refusal(ip, now) → Write (and maybe the summary of the source's previous interval) | Counted
//! sweep(now)       → summaries of the intervals that ended (the shell ticks it)
//! ```

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A source network: where anonymous refusals are counted together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// An IPv4 /24.
    V4([u8; 3]),
    /// An IPv6 /64.
    V6([u16; 4]),
    /// Every source beyond the tracked ones.
    Others,
}

impl Source {
    /// The network `ip` belongs to (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                Source::V4([o[0], o[1], o[2]])
            }
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::of(IpAddr::V4(v4)),
                None => {
                    let s = v6.segments();
                    Source::V6([s[0], s[1], s[2], s[3]])
                }
            },
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::V4([a, b, c]) => write!(f, "{a}.{b}.{c}.0/24"),
            Source::V6([a, b, c, d]) => write!(f, "{a:x}:{b:x}:{c:x}:{d:x}::/64"),
            Source::Others => f.write_str("other sources"),
        }
    }
}

/// What to do with one anonymous refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// Write this refusal's line (the first of its source's interval).
    pub write: bool,
    /// The summary of the source's previous interval, to write first.
    pub summary: Option<Summary>,
}

/// Refusals of one source in one interval that were counted but not written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The source network.
    pub source: Source,
    /// Refusals not written.
    pub count: u64,
    /// How long the interval was.
    pub over: Duration,
}

/// The aggregation state.
#[derive(Debug)]
pub struct AnonymousAudit {
    interval: Duration,
    max_sources: usize,
    windows: HashMap<Source, Window>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    counted: u64,
}

impl AnonymousAudit {
    /// One line per source per `interval`, at most `max_sources` sources apart.
    pub fn new(interval: Duration, max_sources: usize) -> Self {
        AnonymousAudit {
            interval,
            max_sources: max_sources.max(1),
            windows: HashMap::new(),
        }
    }

    /// An anonymous refusal from `ip` at `now`.
    pub fn refusal(&mut self, ip: IpAddr, now: Instant) -> Admission {
        let mut source = Source::of(ip);
        if !self.windows.contains_key(&source) && self.windows.len() >= self.max_sources {
            source = Source::Others;
        }
        let interval = self.interval;
        match self.windows.get_mut(&source) {
            Some(w) if now.saturating_duration_since(w.start) < interval => {
                w.counted += 1;
                Admission {
                    write: false,
                    summary: None,
                }
            }
            Some(w) => {
                let summary = (w.counted > 0).then(|| Summary {
                    source,
                    count: w.counted,
                    over: now.saturating_duration_since(w.start),
                });
                *w = Window {
                    start: now,
                    counted: 0,
                };
                Admission {
                    write: true,
                    summary,
                }
            }
            None => {
                self.windows.insert(
                    source,
                    Window {
                        start: now,
                        counted: 0,
                    },
                );
                Admission {
                    write: true,
                    summary: None,
                }
            }
        }
    }

    /// Ends the intervals over at `now` (all of them with `all`, at shutdown): their summaries,
    /// and the sources forgotten.
    pub fn sweep(&mut self, now: Instant, all: bool) -> Vec<Summary> {
        let interval = self.interval;
        let mut out = Vec::new();
        self.windows.retain(|source, w| {
            let over = now.saturating_duration_since(w.start);
            if !all && over < interval {
                return true;
            }
            if w.counted > 0 {
                out.push(Summary {
                    source: *source,
                    count: w.counted,
                    over,
                });
            }
            false
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_line_then_a_count_per_source_and_interval() {
        let t0 = Instant::now();
        let mut a = AnonymousAudit::new(Duration::from_secs(60), 2);
        assert!(a.refusal(ip("10.0.0.1"), t0).write);
        for i in 0..1000 {
            let r = a.refusal(
                ip(&format!("10.0.0.{}", i % 250)),
                t0 + Duration::from_secs(1),
            );
            assert!(!r.write && r.summary.is_none());
        }
        // Another /24 is its own source; a third one goes to the shared bucket.
        assert!(a.refusal(ip("10.0.1.1"), t0).write);
        assert!(a.refusal(ip("192.168.0.1"), t0).write);
        assert!(!a.refusal(ip("172.16.0.1"), t0).write);
        // The next interval: a line, and the previous interval's count first.
        let r = a.refusal(ip("10.0.0.9"), t0 + Duration::from_secs(61));
        assert!(r.write);
        let s = r.summary.unwrap();
        assert_eq!(
            (s.source.to_string().as_str(), s.count),
            ("10.0.0.0/24", 1000)
        );
        let mut swept = a.sweep(t0 + Duration::from_secs(62), false);
        swept.sort_by_key(|s| s.count);
        assert_eq!(swept.len(), 1, "{swept:?}");
        assert_eq!(swept[0].source, Source::Others);
        assert!(a.sweep(t0 + Duration::from_secs(62), true).is_empty());
    }

    #[test]
    fn ipv6_by_64_and_mapped_v4_as_v4() {
        assert_eq!(
            Source::of(ip("2001:db8:1:2:3:4:5:6")).to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            Source::of(ip("::ffff:1.2.3.4")),
            Source::of(ip("1.2.3.200"))
        );
    }
}
