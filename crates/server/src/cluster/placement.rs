//! Placement: which node a new room goes to.

use std::collections::HashMap;
use std::time::Duration;

use super::record::NodeRecord;

/// A node whose record was not renewed for this long (two refreshes) has probably died: new
/// rooms go to the others while its record is still in the registry (up to
/// [`super::NODE_TTL`]).
pub const STALE_AFTER: Duration = Duration::from_millis(2 * super::REFRESH.as_millis() as u64);

/// Whether `n`'s record is older than [`STALE_AFTER`] at `now_ms` (ms since the Unix epoch).
pub fn is_stale(n: &NodeRecord, now_ms: u64) -> bool {
    n.renewed_ms != 0 && now_ms.saturating_sub(n.renewed_ms) > STALE_AFTER.as_millis() as u64
}

/// The node for a new room: among the non-draining nodes of `region` with headroom (rooms,
/// plus the placements `recent` made since their records were read, below `max_rooms`), the
/// least loaded by rooms over capacity, then by sessions, then by id (so a tie is broken the
/// same way on every node). Nodes whose record is stale at `now_ms` are left out, unless no
/// other node can take the room. `None` when no node has room.
pub fn choose<'a>(
    nodes: &'a [NodeRecord],
    region: &str,
    recent: &HashMap<String, u32>,
    now_ms: u64,
) -> Option<&'a NodeRecord> {
    best(nodes, region, recent, |n| !is_stale(n, now_ms))
        .or_else(|| best(nodes, region, recent, |_| true))
}

fn best<'a>(
    nodes: &'a [NodeRecord],
    region: &str,
    recent: &HashMap<String, u32>,
    keep: impl Fn(&NodeRecord) -> bool,
) -> Option<&'a NodeRecord> {
    let rooms = |n: &NodeRecord| n.rooms + recent.get(&n.id).copied().unwrap_or(0);
    nodes
        .iter()
        .filter(|n| keep(n) && !n.draining && n.region == region && rooms(n) < n.max_rooms)
        .min_by(|a, b| {
            // Compare rooms/max without floats: a.rooms * b.max vs b.rooms * a.max.
            let la = u64::from(rooms(a)) * u64::from(b.max_rooms);
            let lb = u64::from(rooms(b)) * u64::from(a.max_rooms);
            la.cmp(&lb)
                .then(a.sessions.cmp(&b.sessions))
                .then(a.id.cmp(&b.id))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, rooms: u32, max: u32) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            url: format!("http://{id}:1"),
            region: String::new(),
            media: String::new(),
            telemetry: String::new(),
            max_rooms: max,
            rooms,
            sessions: 0,
            egress_pps: 0,
            cpu_percent: 0.0,
            draining: false,
            renewed_ms: 0,
        }
    }

    #[test]
    fn least_loaded_with_headroom_in_region_not_draining() {
        let mut nodes = vec![node("a", 5, 10), node("b", 2, 10), node("c", 1, 2)];
        let none = HashMap::new();
        // c is at 50 %, b at 20 %.
        assert_eq!(choose(&nodes, "", &none, 0).unwrap().id, "b");
        nodes[1].draining = true;
        // a at 50 %, c at 50 %: sessions tie, then the id.
        assert_eq!(choose(&nodes, "", &none, 0).unwrap().id, "a");
        let recent = HashMap::from([("a".to_owned(), 5u32)]);
        assert_eq!(choose(&nodes, "", &recent, 0).unwrap().id, "c");
        nodes[2].rooms = 2;
        assert_eq!(choose(&nodes, "", &recent, 0), None);
        assert_eq!(choose(&nodes, "eu-west", &none, 0), None);
    }

    #[test]
    fn a_node_that_stopped_renewing_its_record_gets_no_new_room() {
        let now = 1_000_000u64;
        let stale = STALE_AFTER.as_millis() as u64;
        let mut nodes = vec![node("a", 0, 10), node("b", 0, 10)];
        nodes[0].renewed_ms = now - stale - 1;
        nodes[1].renewed_ms = now - stale / 2;
        let none = HashMap::new();
        // a wins ties by id, but its record is stale: b.
        assert_eq!(choose(&nodes, "", &none, now).unwrap().id, "b");
        nodes[0].renewed_ms = now - stale;
        assert_eq!(choose(&nodes, "", &none, now).unwrap().id, "a");
        // Only stale nodes (the store was slow for everyone): still placed.
        nodes[0].renewed_ms = now - 3 * stale;
        nodes[1].renewed_ms = now - 3 * stale;
        assert_eq!(choose(&nodes, "", &none, now).unwrap().id, "a");
    }

    #[test]
    fn recent_placements_spread_a_burst() {
        let nodes = vec![node("a", 0, 100), node("b", 0, 100), node("c", 0, 100)];
        let mut recent = HashMap::new();
        for _ in 0..30 {
            let id = choose(&nodes, "", &recent, 0).unwrap().id.clone();
            *recent.entry(id).or_default() += 1;
        }
        assert_eq!(recent.values().copied().collect::<Vec<_>>(), vec![10; 3]);
    }
}
