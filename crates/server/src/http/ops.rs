//! The operators' views: `GET /api/rooms`, `GET /api/ops` and the event stream
//! `GET /api/ops/stream` (one sampled view per period, shared by every open dashboard).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cabine_proto::Claims;
use cabine_sfu::room::RoomSnapshot;
use cabine_sfu::shell::ShellStats;
use serde::{Deserialize, Serialize};

use super::guard::operator;
use super::ApiError;
use crate::state::AppState;

/// The operators' view of the node.
#[derive(Debug, Serialize)]
pub struct RoomsResponse {
    /// Rooms (all of them for a `*` token, else the token's room).
    pub rooms: Vec<RoomSnapshot>,
    /// Socket-level counters of the media plane.
    pub media: ShellStats,
    /// The ICE-TCP listener's counters (absent when `media.tcp` is off).
    pub tcp: Option<cabine_sfu::TcpStats>,
    /// Requests refused, by reason.
    pub refused: HashMap<&'static str, u64>,
    /// Sessions created since start.
    pub joins: u64,
}

pub(crate) async fn rooms(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let claims = operator(
        &st,
        &headers,
        None,
        peer,
        "read room statistics (operator only)",
    )?;
    let mut rooms = st
        .sfu
        .snapshot()
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    if claims.room != "*" {
        rooms.retain(|r| r.room.as_str() == claims.room);
    }
    let refused = st.refused.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let view = RoomsResponse {
        rooms,
        media: st.sfu.stats(),
        tcp: st.sfu.tcp_stats(),
        refused,
        joins: st.joins.load(Ordering::Relaxed),
    };
    let mut v = serde_json::to_value(&view).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot serialise the rooms view: {e}"),
        )
    })?;
    session_ids_as_strings(&mut v);
    Ok(Json(v))
}

/// Session ids are 64-bit: as JSON numbers a browser rounds them (above 2^53), so they are
/// given as the 16-hex-digit strings of the session URLs (`Location`).
fn session_ids_as_strings(v: &mut serde_json::Value) {
    let sessions = v["rooms"]
        .as_array_mut()
        .into_iter()
        .flatten()
        .filter_map(|r| r["sessions"].as_array_mut())
        .flatten();
    for s in sessions {
        if let Some(id) = s["id"].as_u64() {
            s["id"] = serde_json::Value::String(format!("{id:016x}"));
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct TokenQuery {
    token: Option<String>,
}

/// A fresh view (rates from the last sample), limited to the token's room.
async fn ops_view(st: &AppState, claims: &Claims) -> Result<crate::ops::OpsView, ApiError> {
    let mut rooms = st
        .sfu
        .snapshot()
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    if claims.room != "*" {
        rooms.retain(|r| r.room.as_str() == claims.room);
    }
    let mut view = crate::ops::view(
        &rooms,
        st.sfu.stats(),
        crate::ops::ProcSample::read(),
        crate::ops::unix_ms(),
    );
    st.ops
        .history
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .annotate(&mut view);
    Ok(view)
}

pub(crate) async fn ops_once(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Json<crate::ops::OpsView>, ApiError> {
    let claims = operator(
        &st,
        &headers,
        q.token.as_deref(),
        peer,
        "see the operators' view (operator only)",
    )?;
    Ok(Json(ops_view(&st, &claims).await?))
}

pub(crate) async fn ops_stream(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    use axum::response::sse::{KeepAlive, Sse};
    let claims = operator(
        &st,
        &headers,
        q.token.as_deref(),
        peer,
        "see the operators' view (operator only)",
    )?;
    let slot = SseSlot::take(&st).map_err(|r| r.into_response());
    let slot = match slot {
        Ok(s) => s,
        Err(r) => return Ok(r),
    };
    // The first event is a fresh view with the history behind it (sparklines from the first
    // paint); the following ones are the sampler's, one per period, shared by every dashboard.
    let mut first = ops_view(&st, &claims).await?;
    first.history = Some(
        st.ops
            .history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .view_for(&first),
    );
    let first = ops_event(&first);
    let mut rx = st.ops.latest.subscribe();
    rx.mark_unchanged();
    let stream = futures_util::stream::unfold(
        (st, claims, rx, Some(first), slot),
        |(st, claims, mut rx, first, slot)| async move {
            if let Some(event) = first {
                return Some((
                    Ok::<_, std::convert::Infallible>(event),
                    (st, claims, rx, None, slot),
                ));
            }
            loop {
                // A draining server ends its streams so that shutdown is not held by open
                // dashboards; the timeout rechecks it should the sampler be late.
                if st.draining.load(Ordering::Relaxed) {
                    return None;
                }
                match tokio::time::timeout(crate::ops::PERIOD * 2, rx.changed()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return None,
                    Err(_) => continue,
                }
                let latest = rx.borrow_and_update().clone();
                let Some(view) = latest else { continue };
                let event = if claims.room == "*" {
                    let json =
                        Arc::clone(&st.ops.latest_json.lock().unwrap_or_else(|p| p.into_inner()));
                    if json.is_empty() {
                        ops_event(&view)
                    } else {
                        axum::response::sse::Event::default()
                            .event("view")
                            .data(&*json)
                    }
                } else {
                    ops_event(&view.for_room(&claims.room))
                };
                return Some((Ok(event), (st, claims, rx, None, slot)));
            }
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// One of the `limits.sse_clients` event streams, given back when the stream ends.
struct SseSlot(Arc<AppState>);

impl SseSlot {
    fn take(st: &Arc<AppState>) -> Result<SseSlot, crate::limits::Refused> {
        let max = st.limits.sse_clients.get();
        let open = st.sse_clients.fetch_add(1, Ordering::AcqRel);
        if open >= max {
            st.sse_clients.fetch_sub(1, Ordering::AcqRel);
            return Err(st.refuse(
                crate::limits::Limit::SseClients,
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{open} operator event streams are open (limits.sse_clients = {max})"),
                Some(5),
            ));
        }
        Ok(SseSlot(Arc::clone(st)))
    }
}

impl Drop for SseSlot {
    fn drop(&mut self) {
        self.0.sse_clients.fetch_sub(1, Ordering::AcqRel);
    }
}

fn ops_event(view: &crate::ops::OpsView) -> axum::response::sse::Event {
    axum::response::sse::Event::default()
        .event("view")
        .json_data(view)
        .unwrap_or_else(|_| axum::response::sse::Event::default().comment("encoding error"))
}
