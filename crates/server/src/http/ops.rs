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

/// `GET /api/rooms` query: `node=ID` keeps that node's rooms; `scope=node` answers for this
/// node alone (what nodes ask each other).
#[derive(Debug, Deserialize)]
pub(crate) struct RoomsQuery {
    node: Option<String>,
    scope: Option<String>,
}

/// How long the cluster view waits for another node's rooms.
const PEER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// `GET /api/rooms`: this node's rooms, and in a cluster every node's (asked over HTTP with
/// the caller's own token, so the store never holds room names), each room naming its `node`,
/// with the registry under `nodes` (`answered`: whether that node's rooms are in the view).
pub(crate) async fn rooms(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<RoomsQuery>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut v = local_rooms(&st, peer, &headers).await?;
    let me = st.cluster.node_id().to_owned();
    if !st.cluster.clustered() || q.scope.as_deref() == Some("node") {
        return Ok(Json(v));
    }
    let wanted = |id: &str| q.node.as_deref().is_none_or(|n| n == id);
    if !wanted(&me) {
        v["rooms"] = serde_json::Value::Array(Vec::new());
    }
    let answers = ask_peers(&st, &headers, "/api/rooms?scope=node", q.node.as_deref()).await?;
    let mut all: Vec<serde_json::Value> = v["rooms"].as_array().cloned().unwrap_or_default();
    for (_, answer) in &answers {
        if let Some(rooms) = answer.as_ref().and_then(|a| a["rooms"].as_array()) {
            all.extend(rooms.iter().cloned());
        }
    }
    v["rooms"] = serde_json::Value::Array(all);
    v["nodes"] = registry_view(&st, q.node.as_deref(), &answers);
    Ok(Json(v))
}

/// Asks every other node of the registry (or only `only`) for `path`, with the caller's
/// `Authorization`, each within [`PEER_TIMEOUT`]; a node that does not answer well, or whose
/// URL's scheme is not this node's (the token never goes from https to http), is `None`.
async fn ask_peers(
    st: &AppState,
    headers: &HeaderMap,
    path: &str,
    only: Option<&str>,
) -> Result<Vec<(crate::cluster::NodeRecord, Option<serde_json::Value>)>, ApiError> {
    let me = st.cluster.node_id();
    let auth = headers.get(axum::http::header::AUTHORIZATION).cloned();
    let client = reqwest::Client::builder()
        .timeout(PEER_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    // The caller's token goes only to peers reached the way this node is (an https node
    // never sends it to an http URL read from the store).
    let scheme = |url: &str| url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    let my_scheme = scheme(st.cluster.public_url());
    let peers: Vec<crate::cluster::NodeRecord> = st
        .cluster
        .nodes()
        .into_iter()
        .filter(|n| n.id != me && only.is_none_or(|o| o == n.id))
        .collect();
    let asks = peers.iter().map(|n| {
        let same_scheme = scheme(&n.url) == my_scheme;
        let mut req = client.get(format!("{}{path}", n.url));
        if let Some(a) = &auth {
            req = req.header(axum::http::header::AUTHORIZATION, a.clone());
        }
        async move {
            if !same_scheme {
                // Listed as not answering.
                return None;
            }
            let r = req.send().await.ok()?;
            if !r.status().is_success() {
                return None;
            }
            r.json::<serde_json::Value>().await.ok()
        }
    });
    let answers = futures_util::future::join_all(asks).await;
    Ok(peers.into_iter().zip(answers).collect())
}

/// The registry as JSON, each node with `answered` (whether its part is in the view).
fn registry_view(
    st: &AppState,
    only: Option<&str>,
    answers: &[(crate::cluster::NodeRecord, Option<serde_json::Value>)],
) -> serde_json::Value {
    let me = st.cluster.node_id();
    let mut listed: Vec<serde_json::Value> = st
        .cluster
        .nodes()
        .into_iter()
        .filter(|n| n.id == me && only.is_none_or(|o| o == me))
        .map(|n| (n, true))
        .chain(answers.iter().map(|(n, a)| (n.clone(), a.is_some())))
        .map(|(n, answered)| {
            let mut j = serde_json::to_value(&n).unwrap_or_default();
            j["answered"] = serde_json::Value::Bool(answered);
            j["stale"] = serde_json::Value::Bool(crate::cluster::placement::is_stale(
                &n,
                crate::queue::now_ms(),
            ));
            j
        })
        .collect();
    listed.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    serde_json::Value::Array(listed)
}

/// This node's view, each room naming this node.
async fn local_rooms(
    st: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<serde_json::Value, ApiError> {
    let claims = operator(
        st,
        headers,
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
    let node = serde_json::Value::String(st.cluster.node_id().to_owned());
    v["node"] = node.clone();
    for r in v["rooms"].as_array_mut().into_iter().flatten() {
        r["node"] = node.clone();
        // Who is on signalling (a page), connected or away within its resume grace.
        let members = st.ws.members_of(r["room"].as_str().unwrap_or_default());
        r["signalling"] = members
            .into_iter()
            .map(|(identity, role, connected)| {
                serde_json::json!({
                    "identity": identity.to_string(),
                    "role": role.to_string(),
                    "connected": connected,
                })
            })
            .collect();
    }
    Ok(v)
}

/// `POST /api/drain` (an operator token for every room): this node takes no new sessions and
/// no new rooms (placement skips it, `/readyz` fails), moves its rooms to other nodes, and
/// exits when empty or at `http.drain_timeout` (as on SIGTERM).
pub(crate) async fn drain(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let claims = operator(&st, &headers, None, peer, "drain this node (operator only)")?;
    if claims.room != "*" {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "draining a node needs an operator token for every room (room \"*\")",
        ));
    }
    st.draining.store(true, Ordering::Relaxed);
    st.cluster.set_draining(true);
    // The process moves its rooms to other nodes and exits (as on SIGTERM).
    st.drain_requested.notify_one();
    tracing::info!("draining on an operator's request: new sessions and rooms go elsewhere");
    Ok(StatusCode::NO_CONTENT.into_response())
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
    /// `GET /api/ops`: one node's part only.
    node: Option<String>,
    /// `GET /api/ops`: `node` for this node alone (what nodes ask each other).
    scope: Option<String>,
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
) -> Result<Json<serde_json::Value>, ApiError> {
    let claims = operator(
        &st,
        &headers,
        q.token.as_deref(),
        peer,
        "see the operators' view (operator only)",
    )?;
    let view = ops_view(&st, &claims).await?;
    let mut v = serde_json::to_value(&view).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot serialise the operators' view: {e}"),
        )
    })?;
    let me = st.cluster.node_id().to_owned();
    let id = serde_json::Value::String(me.clone());
    v["node"]["id"] = id.clone();
    for part in ["rooms", "streams"] {
        for x in v[part].as_array_mut().into_iter().flatten() {
            x["node"] = id.clone();
        }
    }
    // The fleet and the queue are the service's (in the store when clustered), pseudonymous:
    // only an operator of every room sees them, not one of a single room.
    if claims.room == "*" {
        v["fleet"] = serde_json::to_value(st.queue.fleet(false).await.unwrap_or_default())
            .unwrap_or_default();
        v["queue"] = crate::queue::http::ops_queue(&st).await;
    }
    if !st.cluster.clustered() || q.scope.as_deref() == Some("node") {
        return Ok(Json(v));
    }
    // The cluster: every node's rooms and streams (each naming its node), their node-level
    // numbers under `nodes`; the history and the event stream stay this node's.
    if q.node.as_deref().is_some_and(|n| n != me) {
        v["rooms"] = serde_json::Value::Array(Vec::new());
        v["streams"] = serde_json::Value::Array(Vec::new());
    }
    let mut path = "/api/ops?scope=node".to_owned();
    if let Some(t) = &q.token {
        // Only when the caller used the query form; forwarded as it came.
        path.push_str("&token=");
        path.push_str(t);
    }
    let answers = ask_peers(&st, &headers, &path, q.node.as_deref()).await?;
    let mut node_views = vec![v["node"].clone()];
    for (_, answer) in &answers {
        let Some(a) = answer else { continue };
        for part in ["rooms", "streams"] {
            if let (Some(mine), Some(theirs)) = (v[part].as_array_mut(), a[part].as_array()) {
                mine.extend(theirs.iter().cloned());
            }
        }
        node_views.push(a["node"].clone());
    }
    v["cluster"] = serde_json::Value::Array(node_views);
    v["nodes"] = registry_view(&st, q.node.as_deref(), &answers);
    Ok(Json(v))
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

/// One of the `limits.sse_clients` event streams (the operators' and the queue's kiosks'),
/// given back when the stream ends.
pub(crate) struct SseSlot(Arc<AppState>);

impl SseSlot {
    pub(crate) fn take(st: &Arc<AppState>) -> Result<SseSlot, crate::limits::Refused> {
        let max = st.limits.sse_clients.get();
        let open = st.sse_clients.fetch_add(1, Ordering::AcqRel);
        if open >= max {
            st.sse_clients.fetch_sub(1, Ordering::AcqRel);
            return Err(st.refuse(
                crate::limits::Limit::SseClients,
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{open} event streams are open (limits.sse_clients = {max})"),
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
