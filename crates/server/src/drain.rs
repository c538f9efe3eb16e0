//! A drain that moves people: each room this node holds is handed over to another node (its
//! lease transferred in the cluster store, placement skipping draining nodes), then its
//! clients are told to move there: pages get `{"type":"move","url":…,"reason":"drain"}` on
//! their WebSocket, kiosks a `Move` on their telemetry control stream. Both open their new
//! sessions before closing the old ones (make-before-break). Plain WHIP/WHEP clients have no
//! push channel: they are ended at the drain deadline (`http.drain_timeout`).

use cabine_proto::signal::ServerMsg;

use crate::state::AppState;

/// Why clients are told to move.
pub const REASON: &str = "drain";

/// Hands every live room over to another node and tells its clients to move; returns how many
/// rooms moved (none when the node is not clustered or no other node can take them).
pub async fn move_rooms(st: &AppState) -> usize {
    st.cluster.set_draining(true);
    st.cluster.publish_record().await;
    let mut moved = 0;
    for room in st.live_rooms().into_keys() {
        let Some(url) = st.cluster.hand_over(&room).await else {
            continue;
        };
        moved += 1;
        st.ws.broadcast_room(
            &room,
            &ServerMsg::Move {
                url: url.clone(),
                reason: REASON.to_owned(),
            },
        );
        if let Some(t) = st.telemetry() {
            t.move_room(&room, &url, REASON);
        }
    }
    if moved > 0 {
        tracing::info!(
            rooms = moved,
            "draining: rooms handed over, their clients told to move"
        );
    }
    moved
}
