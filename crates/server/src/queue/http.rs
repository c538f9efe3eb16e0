//! The queue's routes (shapes in `docs/queue.md`):
//!
//! - `POST /api/queue` (kiosk token) → `201 {"ticket","position","estimated_wait_s"}`;
//! - `GET /api/queue/{ticket}` (its kiosk) → `{"ticket","state":"waiting","position",
//!   "estimated_wait_s"}` or, once taken, `{"ticket","state":"taken","room","token","url"}`;
//!   `DELETE` cancels; `GET /api/queue/{ticket}/events` streams the same ([`super::stream`]);
//! - `GET /api/queue` and `POST /api/queue/{ticket}/take` for a doctor's queue token
//!   (`room: "*"`, grant `take`; [`cabine_proto::Claims::may_take`]);
//! - `GET /api/kiosks` (operator, `room: "*"`): the fleet.
//!
//! Every step is audited under the actor's own identity; every refusal is counted and audited
//! like the other routes'.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cabine_proto::jwt::{bearer, AuthError};
use cabine_proto::{Claims, Redacted, Role};
use serde::Deserialize;
use serde_json::json;

use super::ticket::TicketRequest;
use super::{QueueError, Status, Waiting};
use crate::cluster::queue_store::TicketRecord;
use crate::http::ApiError;
use crate::state::AppState;

/// The routes, merged into the main router.
pub fn routes() -> axum::Router<Arc<AppState>> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/api/queue", post(enqueue).get(list))
        .route("/api/queue/{ticket}", get(status).delete(cancel))
        .route("/api/queue/{ticket}/take", post(take))
        .route("/api/queue/{ticket}/events", get(super::stream::events))
        .route("/api/kiosks", get(kiosks))
}

/// `?token=` for clients that cannot set headers (`EventSource`).
#[derive(Debug, Deserialize)]
pub(crate) struct TokenQuery {
    pub(crate) token: Option<String>,
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        let status = match &e {
            QueueError::Store(_) | QueueError::Full { .. } => StatusCode::SERVICE_UNAVAILABLE,
            QueueError::Exists(_) | QueueError::AlreadyTaken => StatusCode::CONFLICT,
            QueueError::Unknown => StatusCode::NOT_FOUND,
            QueueError::Gone(_) => StatusCode::GONE,
            QueueError::NotYours => StatusCode::FORBIDDEN,
            QueueError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

/// The JSON of a waiting ticket.
pub(crate) fn waiting_json(w: &Waiting) -> serde_json::Value {
    json!({
        "ticket": w.ticket.id,
        "state": "waiting",
        "position": w.position,
        "estimated_wait_s": w.estimated_wait.as_secs(),
    })
}

/// The JSON a kiosk gets for its ticket: waiting, or taken with a token for its room
/// (minted now, audited).
pub(crate) fn status_json(
    st: &AppState,
    status: &Status,
    peer: SocketAddr,
) -> Result<serde_json::Value, ApiError> {
    match status {
        Status::Waiting(w) => Ok(waiting_json(w)),
        Status::Taken(t) => {
            let (room, token) = room_token(st, t, Role::Kiosk, &t.kiosk)?;
            // A kiosk polls: its admission is audited once, not at every read.
            if st.queue.first_admission(&t.id) {
                st.audit(
                    "queue_admit",
                    &room,
                    &identity(&t.kiosk)?,
                    Some(Role::Kiosk),
                    Some(peer),
                    &format!("ticket {}: room token for the kiosk", t.id),
                );
            }
            Ok(json!({
                "ticket": t.id,
                "state": "taken",
                "url": page_url(st, "kiosk", room.as_str(), &token),
                "room": room.as_str(),
                "token": token,
            }))
        }
    }
}

/// Checks a kiosk's token (header, or `query` for event streams).
pub(crate) fn kiosk_claims(
    st: &AppState,
    headers: &HeaderMap,
    query: Option<&str>,
    peer: SocketAddr,
    action: &'static str,
) -> Result<Claims, ApiError> {
    let claims = verified(st, headers, query, peer)?;
    if claims.role != Role::Kiosk {
        return Err(forbidden(st, &claims, peer, action));
    }
    Ok(claims)
}

async fn enqueue(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let claims = kiosk_claims(&st, &headers, None, peer, "join the queue (kiosk only)")?;
    let req: TicketRequest = if body.iter().all(u8::is_ascii_whitespace) {
        TicketRequest::default()
    } else {
        crate::http::check_content_type(&headers, "application/json")?;
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "bad queue request: {}",
                    crate::http::clean_message(&e.to_string())
                ),
            )
        })?
    };
    let req = req
        .check(st.queue.config().max_reason_chars.get())
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let detail = format!(
        "specialty {}, priority {}, subject {}",
        req.specialty,
        req.priority,
        if req.subject.is_empty() {
            "none"
        } else {
            "given"
        }
    );
    match st
        .queue
        .enqueue(&claims.sub, claims.name.as_deref(), req)
        .await
    {
        Ok(w) => {
            audit(
                &st,
                "queue_enqueue",
                &claims,
                peer,
                &format!("ticket {}: {detail}", w.ticket.id),
            );
            Ok((StatusCode::CREATED, Json(waiting_json(&w))).into_response())
        }
        Err(QueueError::Exists(w)) => {
            audit(
                &st,
                "queue_refused",
                &claims,
                peer,
                &format!("already waiting with ticket {}", w.ticket.id),
            );
            let mut body = waiting_json(&w);
            body["error"] = json!("this kiosk already waits with this ticket");
            Ok((StatusCode::CONFLICT, Json(body)).into_response())
        }
        Err(e @ QueueError::Full { limit, .. }) => {
            audit(&st, "queue_refused", &claims, peer, &e.to_string());
            tracing::warn!(limit, "queue full: ticket refused");
            // The shape of every limit's refusal (`crate::limits::Refused`).
            let body = json!({
                "error": "limit",
                "limit": limit,
                "message": e.to_string(),
            });
            let mut r = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, axum::http::HeaderValue::from(30u32));
            Ok(r)
        }
        Err(e) => Err(e.into()),
    }
}

async fn status(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(ticket): Path<String>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let claims = kiosk_claims(
        &st,
        &headers,
        None,
        peer,
        "read a queue ticket (kiosk only)",
    )?;
    let s = st
        .queue
        .status(&ticket, &claims.sub)
        .await
        .map_err(|e| refusal(&st, &claims, peer, e))?;
    Ok(Json(status_json(&st, &s, peer)?))
}

async fn cancel(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(ticket): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let claims = kiosk_claims(
        &st,
        &headers,
        None,
        peer,
        "cancel a queue ticket (kiosk only)",
    )?;
    let t = st
        .queue
        .cancel(&ticket, &claims.sub)
        .await
        .map_err(|e| refusal(&st, &claims, peer, e))?;
    audit(
        &st,
        "queue_cancel",
        &claims,
        peer,
        &format!("ticket {} cancelled", t.id),
    );
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/queue?specialty=`.
#[derive(Debug, Deserialize)]
struct ListQuery {
    specialty: Option<String>,
}

async fn list(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let claims = taker_claims(&st, &headers, peer, "list the queue")?;
    let now = super::now_ms();
    let tickets: Vec<serde_json::Value> = st
        .queue
        .list()
        .await?
        .into_iter()
        .filter(|(t, _)| q.specialty.as_deref().is_none_or(|s| s == t.specialty))
        .map(|(t, position)| ticket_row(&t, position, now))
        .collect();
    audit(
        &st,
        "queue_list",
        &claims,
        peer,
        &format!("{} waiting tickets listed", tickets.len()),
    );
    Ok(Json(json!({ "tickets": tickets })))
}

/// A waiting ticket as doctors and operators see it: the kiosk by pseudonym.
pub(crate) fn ticket_row(t: &TicketRecord, position: u32, now_ms: u64) -> serde_json::Value {
    json!({
        "ticket": t.id,
        "kiosk": Redacted(t.kiosk.as_str()).to_string(),
        "site": t.site,
        "reason": t.reason,
        "specialty": t.specialty,
        "priority": t.priority,
        "position": position,
        "waited_s": now_ms.saturating_sub(t.created_ms) / 1000,
        "flagged": t.flagged,
    })
}

async fn take(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(ticket): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let claims = taker_claims(&st, &headers, peer, "take a patient from the queue")?;
    // The room is placed first (on this node unless the cluster chooses another): the
    // consultation exists before either side joins, and a cluster with no room for it
    // leaves the ticket waiting (503) rather than taken into a room nobody can open.
    let room = super::Queue::new_room().map_err(ApiError::from)?;
    if !super::ticket::is_ticket_id(&ticket) {
        return Err(refusal(&st, &claims, peer, QueueError::Unknown));
    }
    let here = axum::http::Uri::from_static("/");
    if let Some(refused) = crate::http::whip::route(&st, &room, &here).await {
        if refused.status() == StatusCode::SERVICE_UNAVAILABLE {
            return Ok(refused);
        }
    }
    let taken = st
        .queue
        .take(&ticket, &claims.sub, room)
        .await
        .map_err(|e| refusal(&st, &claims, peer, e))?;
    hand_subject_to_fhir(&st, &taken).await;
    let (room, token) = room_token(&st, &taken.ticket, Role::Doctor, claims.sub.as_str())?;
    st.audit(
        "queue_take",
        &room,
        &claims.sub,
        Some(claims.role),
        Some(peer),
        &format!(
            "ticket {} of kiosk {} taken after {} s",
            taken.ticket.id,
            taken.ticket.kiosk,
            taken.waited.as_secs()
        ),
    );
    tracing::info!(
        room = %Redacted(room.as_str()),
        waited_s = taken.waited.as_secs(),
        "queue ticket taken"
    );
    Ok(Json(json!({
        "ticket": taken.ticket.id,
        "room": room.as_str(),
        "token": token,
        "url": page_url(&st, "consult", room.as_str(), &token),
    }))
    .into_response())
}

/// Leaves the platform's subject reference (from the ticket) in the queue's store, by room:
/// the FHIR export of the room finds it there on whichever node holds the room (in a cluster,
/// the store is shared). Kept as long as the room's tokens plus `queue.keep`.
async fn hand_subject_to_fhir(st: &AppState, taken: &super::Taken) {
    if taken.ticket.subject.is_empty() {
        return;
    }
    let cfg = st.queue.config();
    let ttl = cfg.room_token_ttl.saturating_add(cfg.keep);
    if let Err(e) = st
        .queue
        .store()
        .set_room_subject(taken.room.as_str(), &taken.ticket.subject, ttl)
        .await
    {
        tracing::warn!(room = %Redacted(taken.room.as_str()), error = %e, "queue take: the ticket's subject was not stored for the FHIR export");
    }
}

async fn kiosks(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let action = "see the fleet (operator token for every room)";
    let claims = crate::http::guard::operator(&st, &headers, None, peer, action)?;
    if claims.room != "*" {
        return Err(forbidden(&st, &claims, peer, action));
    }
    let fleet = st.queue.fleet(true).await?;
    Ok(Json(json!({ "kiosks": fleet })))
}

/// The queue in the operators' view: the waiting tickets (pseudonymous, without reason) and
/// those flagged as unanswered. A store that does not answer gives `{"error": …}`.
pub(crate) async fn ops_queue(st: &AppState) -> serde_json::Value {
    let now = super::now_ms();
    match st.queue.list().await {
        Ok(list) => {
            let rows: Vec<serde_json::Value> = list
                .iter()
                .map(|(t, position)| {
                    json!({
                        "ticket": t.id,
                        "kiosk": Redacted(t.kiosk.as_str()).to_string(),
                        "specialty": t.specialty,
                        "priority": t.priority,
                        "position": position,
                        "waited_s": now.saturating_sub(t.created_ms) / 1000,
                        "flagged": t.flagged,
                    })
                })
                .collect();
            let unanswered = list.iter().filter(|(t, _)| t.flagged).count();
            json!({ "waiting": rows.len(), "unanswered": unanswered, "tickets": rows })
        }
        Err(e) => json!({ "error": e.to_string() }),
    }
}

/// Checks a doctor's queue token.
fn taker_claims(
    st: &AppState,
    headers: &HeaderMap,
    peer: SocketAddr,
    action: &'static str,
) -> Result<Claims, ApiError> {
    let claims = verified(st, headers, None, peer)?;
    if !claims.may_take() {
        return Err(forbidden(
            st,
            &claims,
            peer,
            match action {
                "list the queue" => {
                    "list the queue (needs a doctor token for room \"*\" granted `take`)"
                }
                _ => "take from the queue (needs a doctor token for room \"*\" granted `take`)",
            },
        ));
    }
    Ok(claims)
}

/// A valid token from the `Authorization` header or `query`; refusals counted and audited.
fn verified(
    st: &AppState,
    headers: &HeaderMap,
    query: Option<&str>,
    peer: SocketAddr,
) -> Result<Claims, ApiError> {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    match (header, query) {
        (Some(h), _) => bearer(Some(h)),
        (None, Some(q)) => Ok(q),
        (None, None) => Err(AuthError::Missing),
    }
    .and_then(|t| st.tokens.verify(t))
    .map_err(|e| {
        st.count_refusal(e.reason());
        st.audit_refusal("-", "-", None, peer, &e);
        e.into()
    })
}

/// A 403 for `claims`, counted and audited.
fn forbidden(st: &AppState, claims: &Claims, peer: SocketAddr, action: &'static str) -> ApiError {
    st.count_refusal("forbidden_role");
    let e = AuthError::Forbidden {
        role: claims.role,
        action,
    };
    st.audit_refusal(
        &claims.room,
        claims.sub.as_str(),
        Some(claims.role),
        peer,
        &e,
    );
    e.into()
}

/// A queue refusal of an authenticated caller, audited (a store failure is not a refusal).
fn refusal(st: &AppState, claims: &Claims, peer: SocketAddr, e: QueueError) -> ApiError {
    if !matches!(e, QueueError::Store(_) | QueueError::Internal(_)) {
        st.count_refusal(match e {
            QueueError::NotYours => "not_owner",
            QueueError::Unknown => "unknown_ticket",
            QueueError::Gone(_) => "ticket_gone",
            _ => "ticket_conflict",
        });
        audit(st, "queue_refused", claims, peer, &e.to_string());
    }
    e.into()
}

/// Writes an audit line of `claims`'s holder (the queue is not a room: `-`).
pub(crate) fn audit(st: &AppState, event: &str, claims: &Claims, peer: SocketAddr, detail: &str) {
    let role = claims.role.to_string();
    st.audit.record(
        event,
        "-",
        claims.sub.as_str(),
        Some(&role),
        Some(peer),
        detail,
    );
}

/// A token for the ticket's room, for `identity` in `role`.
fn room_token(
    st: &AppState,
    t: &TicketRecord,
    role: Role,
    who: &str,
) -> Result<(cabine_proto::RoomId, String), ApiError> {
    let room = cabine_proto::RoomId::parse(&t.room)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let token = st
        .tokens
        .mint(
            room.as_str(),
            role,
            identity(who)?,
            st.queue.config().room_token_ttl,
            None,
        )
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((room, token))
}

fn identity(s: &str) -> Result<cabine_proto::Identity, ApiError> {
    cabine_proto::Identity::parse(s)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// The page for `room` (`consult` for the doctor, `kiosk` for the cabin), the token in the
/// fragment (never sent to a server).
fn page_url(st: &AppState, page: &str, room: &str, token: &str) -> String {
    format!("{}/{page}/{room}#token={token}", st.public_url)
}
