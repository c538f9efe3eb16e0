//! [`NodeRecord`]: what a node publishes about itself in the registry.

use serde::{Deserialize, Serialize};

/// One node of the registry, refreshed by the node every [`super::REFRESH`] and expiring
/// after [`super::NODE_TTL`]. No room names, identities or health data: addresses and load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node id (`cluster.node_id`).
    pub id: String,
    /// Public base URL (`http.public_url`), where clients are redirected.
    pub url: String,
    /// Region (`cluster.region`).
    pub region: String,
    /// Advertised media address (UDP), for operators.
    pub media: String,
    /// Telemetry (QUIC) address kiosks dial, empty when off.
    pub telemetry: String,
    /// Rooms the node takes by placement (`cluster.max_rooms`).
    pub max_rooms: u32,
    /// Rooms it holds now.
    pub rooms: u32,
    /// Media sessions it holds now.
    pub sessions: u32,
    /// Media packets it sent per second over the last sample.
    pub egress_pps: u64,
    /// Its process CPU use over the last sample, percent of one core.
    pub cpu_percent: f64,
    /// Whether it is draining (takes no new rooms).
    pub draining: bool,
    /// When the node wrote this record, ms since the Unix epoch on its clock (0: a node that
    /// does not say; never counted as stale).
    #[serde(default)]
    pub renewed_ms: u64,
}

/// The registry as read from the store.
#[derive(Debug, Clone, Default)]
pub struct NodeList {
    /// Records that parsed.
    pub nodes: Vec<NodeRecord>,
    /// Records that did not (left out, counted in `cabine_cluster_invalid_records_total`).
    pub invalid: u64,
}

impl NodeRecord {
    /// Parses a stored record; `None` when it is not one (a foreign or corrupted value).
    pub fn parse(raw: &[u8]) -> Option<NodeRecord> {
        let r: NodeRecord = serde_json::from_slice(raw).ok()?;
        super::config::check_node_id(&r.id).ok()?;
        if !(r.url.starts_with("http://") || r.url.starts_with("https://")) {
            return None;
        }
        Some(r)
    }

    /// The stored form.
    pub fn to_json(&self) -> String {
        // A struct of strings and numbers (the CPU figure is finite) always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn record(id: &str) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            url: format!("http://{id}.example:8080"),
            region: String::new(),
            media: "127.0.0.1:7882".into(),
            telemetry: String::new(),
            max_rooms: 10,
            rooms: 0,
            sessions: 0,
            egress_pps: 0,
            cpu_percent: 0.0,
            draining: false,
            renewed_ms: 0,
        }
    }

    #[test]
    fn records_round_trip_and_bad_ones_are_none() {
        let r = record("a");
        assert_eq!(NodeRecord::parse(r.to_json().as_bytes()), Some(r.clone()));
        assert_eq!(NodeRecord::parse(b"not json"), None);
        assert_eq!(NodeRecord::parse(b"{\"id\":\"a\"}"), None);
        let mut bad = r.clone();
        bad.url = "javascript:alert(1)".into();
        assert_eq!(NodeRecord::parse(bad.to_json().as_bytes()), None);
        bad = r;
        bad.id = "a b".into();
        assert_eq!(NodeRecord::parse(bad.to_json().as_bytes()), None);
    }
}
