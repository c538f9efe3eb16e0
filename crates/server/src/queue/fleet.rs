//! The fleet: every kiosk known by identity, with its site label, its declared devices and
//! its state, from what the nodes see of it.
//!
//! Each node writes what it sees into the queue store's presence records every
//! [`PRESENCE_PERIOD`] (so, in a cluster, the fleet outlives any node): a telemetry link up
//! (frames from the kiosk in the last [`FRESH`], and the devices its channels declared), a
//! media session open, a call to the queue API (with the site label: the request's `site`, else
//! the kiosk token's `name` claim). The state is derived when the fleet is read:
//!
//! | state | when |
//! |---|---|
//! | `in_consultation` | a media session of the kiosk is open (seen within [`FRESH`]) |
//! | `waiting` | the kiosk has a ticket in the queue |
//! | `online` | its telemetry link is up, nothing else going on |
//! | `idle` | none of those, but heard of within `queue.kiosk_offline_after` |
//! | `offline` | not heard of for longer |

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cabine_proto::telemetry::{delivered, Delivered, DeviceKind};
use cabine_proto::Redacted;
use serde::Serialize;

/// How often a node writes its kiosks' presence.
pub const PRESENCE_PERIOD: Duration = Duration::from_secs(2);
/// A link or session seen this recently counts as up.
pub const FRESH: Duration = Duration::from_secs(10);
/// Kiosks tracked per node for their telemetry links; beyond, new ones are not tracked until
/// old ones go quiet.
pub const MAX_LINKS: usize = 10_000;

/// A kiosk's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KioskState {
    /// Telemetry link up, no ticket, no session.
    Online,
    /// Heard of lately, no link.
    Idle,
    /// In the queue.
    Waiting,
    /// In a consultation (a media session open).
    InConsultation,
    /// Not heard of for `queue.kiosk_offline_after`.
    Offline,
}

/// One kiosk as `GET /api/kiosks` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct KioskView {
    /// Its identity (operators only; never in `/api/ops`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kiosk: Option<String>,
    /// Its pseudonym (as in logs and the ops view).
    #[serde(rename = "ref")]
    pub pseudonym: String,
    /// Its site label ("" when none was given).
    pub site: String,
    /// The devices its telemetry channels declared (`pulse_oximeter`, `ecg`…).
    pub devices: Vec<String>,
    /// Its state.
    pub state: KioskState,
    /// Seconds since it was last heard of.
    pub last_seen_s: u64,
}

/// The kiosks whose telemetry links this node serves, fed by the telemetry sink.
#[derive(Debug, Default)]
pub struct TelemetryLinks {
    inner: Mutex<HashMap<String, Link>>,
}

#[derive(Debug)]
struct Link {
    last: Instant,
    devices: BTreeSet<String>,
    left: bool,
}

impl TelemetryLinks {
    /// Notes a frame delivered from a kiosk (its `source`).
    pub fn observe(&self, d: &Delivered) {
        let now = Instant::now();
        let mut links = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let link = match links.get_mut(d.source.as_str()) {
            Some(l) => l,
            None => {
                if links.len() >= MAX_LINKS {
                    links.retain(|_, l| !l.left && now.duration_since(l.last) < FRESH);
                    if links.len() >= MAX_LINKS {
                        return;
                    }
                }
                links.entry(d.source.clone()).or_insert(Link {
                    last: now,
                    devices: BTreeSet::new(),
                    left: false,
                })
            }
        };
        link.last = now;
        match &d.frame {
            Some(delivered::Frame::Left(_)) => link.left = true,
            Some(delivered::Frame::Channel(decl)) => {
                link.left = false;
                link.devices.insert(device_name(decl.device_kind));
            }
            _ => link.left = false,
        }
    }

    /// The kiosks with a link up (a frame within [`FRESH`], not left), with their devices;
    /// forgets the others.
    pub fn linked(&self, now: Instant) -> Vec<(String, Vec<String>)> {
        let mut links = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        links.retain(|_, l| !l.left && now.saturating_duration_since(l.last) < FRESH);
        links
            .iter()
            .map(|(k, l)| (k.clone(), l.devices.iter().cloned().collect()))
            .collect()
    }
}

/// The name of a device kind: the protobuf name, lower case, without its prefix.
pub fn device_name(kind: i32) -> String {
    DeviceKind::try_from(kind)
        .map(|k| {
            k.as_str_name()
                .trim_start_matches("DEVICE_KIND_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| "other".to_owned())
}

/// The presence fields a node writes for a kiosk it sees (`now_ms`: ms since the epoch).
pub fn presence_fields(
    identity: &str,
    now_ms: u64,
    linked_devices: Option<&[String]>,
    in_session: bool,
) -> Vec<(&'static str, String)> {
    let mut f = vec![
        ("identity", identity.to_owned()),
        ("seen_ms", now_ms.to_string()),
    ];
    if let Some(devices) = linked_devices {
        f.push(("telemetry_ms", now_ms.to_string()));
        if !devices.is_empty() {
            f.push(("devices", devices.join(",")));
        }
    }
    if in_session {
        f.push(("session_ms", now_ms.to_string()));
    }
    f
}

/// The fleet from the presence records, `waiting`: the identities with a waiting ticket.
/// Sorted by site, then pseudonym.
pub fn views(
    records: &[HashMap<String, String>],
    waiting: &HashSet<String>,
    now_ms: u64,
    offline_after: Duration,
    with_identity: bool,
) -> Vec<KioskView> {
    let ms = |r: &HashMap<String, String>, k: &str| {
        r.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
    };
    let fresh = u64::try_from(FRESH.as_millis()).unwrap_or(u64::MAX);
    let offline = u64::try_from(offline_after.as_millis()).unwrap_or(u64::MAX);
    let mut out: Vec<KioskView> = records
        .iter()
        .filter_map(|r| {
            let identity = r.get("identity")?;
            let recent = |at: u64| at > 0 && now_ms.saturating_sub(at) <= fresh;
            let seen = ms(r, "seen_ms");
            let state = if recent(ms(r, "session_ms")) {
                KioskState::InConsultation
            } else if waiting.contains(identity) {
                KioskState::Waiting
            } else if recent(ms(r, "telemetry_ms")) {
                KioskState::Online
            } else if now_ms.saturating_sub(seen) <= offline {
                KioskState::Idle
            } else {
                KioskState::Offline
            };
            Some(KioskView {
                kiosk: with_identity.then(|| identity.clone()),
                pseudonym: Redacted(identity.as_str()).to_string(),
                site: r.get("site").cloned().unwrap_or_default(),
                devices: r
                    .get("devices")
                    .map(|d| {
                        d.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
                state,
                last_seen_s: now_ms.saturating_sub(seen) / 1000,
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.site, &a.pseudonym).cmp(&(&b.site, &b.pseudonym)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(fields: &[(&str, &str)]) -> HashMap<String, String> {
        fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn states_derive_from_links_sessions_and_tickets() {
        let now = 1_000_000;
        let records = [
            rec(&[
                ("identity", "a"),
                ("seen_ms", "999000"),
                ("session_ms", "999000"),
            ]),
            rec(&[("identity", "b"), ("seen_ms", "999000")]),
            rec(&[
                ("identity", "c"),
                ("seen_ms", "999000"),
                ("telemetry_ms", "999000"),
                ("devices", "ecg,pulse_oximeter"),
            ]),
            rec(&[("identity", "d"), ("seen_ms", "990000")]),
            rec(&[("identity", "e"), ("seen_ms", "1000")]),
            rec(&[("seen_ms", "1000")]),
        ];
        let waiting: HashSet<String> = ["b".to_owned()].into();
        let v = views(&records, &waiting, now, Duration::from_secs(60), true);
        let state = |id: &str| v.iter().find(|k| k.kiosk.as_deref() == Some(id)).unwrap();
        assert_eq!(state("a").state, KioskState::InConsultation);
        assert_eq!(state("b").state, KioskState::Waiting);
        assert_eq!(state("c").state, KioskState::Online);
        assert_eq!(state("c").devices, ["ecg", "pulse_oximeter"]);
        assert_eq!(state("d").state, KioskState::Idle);
        assert_eq!(state("e").state, KioskState::Offline);
        assert_eq!(v.len(), 5, "a record without identity is left out");
        let anon = views(&records, &waiting, now, Duration::from_secs(60), false);
        assert!(anon.iter().all(|k| k.kiosk.is_none()));
        let json = serde_json::to_string(&anon).unwrap();
        assert!(!json.contains("\"a\""), "{json}");
    }

    #[test]
    fn device_names_are_short() {
        assert_eq!(
            device_name(DeviceKind::PulseOximeter as i32),
            "pulse_oximeter"
        );
        assert_eq!(device_name(999), "other");
    }
}
