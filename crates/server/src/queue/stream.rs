//! `GET /api/queue/{ticket}/events`: the kiosk's ticket as a server-sent event stream. Each
//! `status` event carries what `GET /api/queue/{ticket}` answers (waiting with position and
//! estimate; then taken with the room, a token and the page URL), sent when it changes; a
//! cancelled or expired ticket ends the stream with `{"ticket","state":"cancelled"|"expired"}`.
//!
//! The ticket is read again at each local change and at least every [`RECHECK`] (a take on
//! another node of a cluster). Streams count against `limits.sse_clients`; the token may come
//! as `?token=` (`EventSource` cannot set headers).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::http::{kiosk_claims, status_json, TokenQuery};
use super::{QueueError, Status};
use crate::http::ops::SseSlot;
use crate::http::ApiError;
use crate::state::AppState;

/// Longest time between two reads of the ticket.
pub const RECHECK: Duration = Duration::from_secs(1);

/// The stream's state between events.
struct Follow {
    st: Arc<AppState>,
    claims: cabine_proto::Claims,
    ticket: String,
    peer: SocketAddr,
    changed: tokio::sync::watch::Receiver<u64>,
    last: Option<serde_json::Value>,
    done: bool,
    _slot: SseSlot,
}

pub(crate) async fn events(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(ticket): Path<String>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let claims = kiosk_claims(
        &st,
        &headers,
        q.token.as_deref(),
        peer,
        "follow a queue ticket (kiosk only)",
    )?;
    // The ticket must be this kiosk's and known before a stream is opened for it.
    match st.queue.status(&ticket, &claims.sub).await {
        Ok(_) | Err(QueueError::Gone(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let slot = match SseSlot::take(&st) {
        Ok(s) => s,
        Err(r) => return Ok(r.into_response()),
    };
    let follow = Follow {
        changed: st.queue.subscribe(),
        st,
        claims,
        ticket,
        peer,
        last: None,
        done: false,
        _slot: slot,
    };
    let stream = futures_util::stream::unfold(follow, |mut f| async move {
        loop {
            if f.done || f.st.draining.load(std::sync::atomic::Ordering::Relaxed) {
                return None;
            }
            let now = match f.st.queue.status(&f.ticket, &f.claims.sub).await {
                Ok(Status::Waiting(w)) => Some(super::http::waiting_json(&w)),
                Ok(s @ Status::Taken(_)) => {
                    f.done = true;
                    status_json(&f.st, &s, f.peer).ok()
                }
                Err(QueueError::Gone(state)) => {
                    f.done = true;
                    Some(json!({ "ticket": f.ticket, "state": state.as_str() }))
                }
                Err(QueueError::Unknown) => {
                    f.done = true;
                    Some(json!({ "ticket": f.ticket, "state": "unknown" }))
                }
                // The store is away: try again at the next change or recheck.
                Err(_) => None,
            };
            if let Some(v) = now {
                if f.last.as_ref() != Some(&v) {
                    let event = Event::default().event("status").data(v.to_string());
                    f.last = Some(v);
                    return Some((Ok::<_, std::convert::Infallible>(event), f));
                }
            }
            let _ = tokio::time::timeout(RECHECK, f.changed.changed()).await;
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}
