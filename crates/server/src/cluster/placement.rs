//! Placement: which node a new room goes to.

use std::collections::HashMap;

use super::record::NodeRecord;

/// The node for a new room: among the non-draining nodes of `region` with headroom (rooms,
/// plus the placements `recent` made since their records were read, below `max_rooms`), the
/// least loaded by rooms over capacity, then by sessions, then by id (so a tie is broken the
/// same way on every node). `None` when no node has room.
pub fn choose<'a>(
    nodes: &'a [NodeRecord],
    region: &str,
    recent: &HashMap<String, u32>,
) -> Option<&'a NodeRecord> {
    let rooms = |n: &NodeRecord| n.rooms + recent.get(&n.id).copied().unwrap_or(0);
    nodes
        .iter()
        .filter(|n| !n.draining && n.region == region && rooms(n) < n.max_rooms)
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
        }
    }

    #[test]
    fn least_loaded_with_headroom_in_region_not_draining() {
        let mut nodes = vec![node("a", 5, 10), node("b", 2, 10), node("c", 1, 2)];
        let none = HashMap::new();
        // c is at 50 %, b at 20 %.
        assert_eq!(choose(&nodes, "", &none).unwrap().id, "b");
        nodes[1].draining = true;
        // a at 50 %, c at 50 %: sessions tie, then the id.
        assert_eq!(choose(&nodes, "", &none).unwrap().id, "a");
        let recent = HashMap::from([("a".to_owned(), 5u32)]);
        assert_eq!(choose(&nodes, "", &recent).unwrap().id, "c");
        nodes[2].rooms = 2;
        assert_eq!(choose(&nodes, "", &recent), None);
        assert_eq!(choose(&nodes, "eu-west", &none), None);
    }

    #[test]
    fn recent_placements_spread_a_burst() {
        let nodes = vec![node("a", 0, 100), node("b", 0, 100), node("c", 0, 100)];
        let mut recent = HashMap::new();
        for _ in 0..30 {
            let id = choose(&nodes, "", &recent).unwrap().id.clone();
            *recent.entry(id).or_default() += 1;
        }
        assert_eq!(recent.values().copied().collect::<Vec<_>>(), vec![10; 3]);
    }
}
