//! WHIP (`/whip/{room}`) and WHEP (`/whep/{room}`): create a session with an SDP offer,
//! PATCH it (trickle, ICE restart), DELETE it (RFC 9725).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use cabine_proto::{Grant, Identity, Redacted, RoomId};
use cabine_sfu::{JoinError, JoinRequest, SessionId, SessionKind, SfuError};
use rand::Rng;
use serde::Deserialize;
use tracing::info;

use super::guard::{authorize, owner_only};
use super::{
    check_content_type, clean_message, describe, insert, random_token, sdp_attr, ApiError,
};
use crate::state::{AppState, SessionEntry};

pub(crate) async fn options() -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert("accept-post", HeaderValue::from_static("application/sdp"));
    h.insert(
        "accept-patch",
        HeaderValue::from_static("application/trickle-ice-sdpfrag"),
    );
    r
}

#[derive(Debug, Deserialize)]
pub(crate) struct WhepQuery {
    from: Option<String>,
}

pub(crate) async fn whip(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    create_session(&st, peer, &room, &headers, body, SessionKind::Publish, None).await
}

pub(crate) async fn whep(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(room): Path<String>,
    Query(q): Query<WhepQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let from = match q.from {
        Some(f) => Some(Identity::parse(&f).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("bad `from` parameter: {e}"),
            )
        })?),
        None => None,
    };
    create_session(
        &st,
        peer,
        &room,
        &headers,
        body,
        SessionKind::Subscribe,
        from,
    )
    .await
}

async fn create_session(
    st: &Arc<AppState>,
    peer: SocketAddr,
    room: &str,
    headers: &HeaderMap,
    body: Bytes,
    kind: SessionKind,
    from: Option<Identity>,
) -> Result<Response, ApiError> {
    let room = RoomId::parse(room)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("bad room name: {e}")))?;
    let (grant, action, path) = match kind {
        SessionKind::Publish => (Grant::Publish, "publish", "whip"),
        SessionKind::Subscribe => (Grant::Subscribe, "subscribe", "whep"),
    };
    let claims = authorize(st, headers, &room, grant, action, peer)?;
    if st.draining.load(Ordering::Relaxed) {
        st.count_refusal("draining");
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node is shutting down; retry on another node",
        ));
    }
    if let Err(refused) = st.check_sessions_per_identity(&claims.sub) {
        return Ok(refused.into_response());
    }
    check_content_type(headers, "application/sdp")?;
    let offer = std::str::from_utf8(&body)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "the SDP offer is not UTF-8"))?;
    if offer.trim().is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "empty SDP offer"));
    }
    let session = SessionId(rand::rng().random());
    let ice_ufrag = random_token(8);
    let ice_pwd = random_token(24);
    let req = JoinRequest {
        session,
        identity: claims.sub.clone(),
        role: claims.role,
        kind,
        offer: offer.to_owned(),
        from,
        ice_ufrag: ice_ufrag.clone(),
        ice_pwd,
    };
    let joined = match st.sfu.join(room.clone(), req).await {
        Ok(j) => j,
        Err(e) => {
            let (status, reason) = match &e {
                SfuError::Join(JoinError::NoUsableMedia(_)) => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "no_usable_codec")
                }
                SfuError::Join(JoinError::RoomFull(_)) => {
                    (StatusCode::SERVICE_UNAVAILABLE, "room_full")
                }
                SfuError::Join(e) if e.is_client_fault() => (StatusCode::BAD_REQUEST, "bad_sdp"),
                SfuError::Join(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
                _ => (StatusCode::SERVICE_UNAVAILABLE, "media_plane_down"),
            };
            st.count_refusal(reason);
            let message = clean_message(&e.to_string());
            st.audit(
                "refused",
                &room,
                &claims.sub,
                Some(claims.role),
                Some(peer),
                &message,
            );
            return Err(ApiError::new(status, message));
        }
    };
    let etag = format!("\"{ice_ufrag}\"");
    st.sessions_lock().insert(
        session,
        SessionEntry {
            room: room.clone(),
            identity: claims.sub.clone(),
            role: claims.role,
            kind,
            etag: etag.clone(),
            client_ufrag: sdp_attr(offer, "a=ice-ufrag:").unwrap_or_default(),
            claims: claims.clone(),
            restarts: Default::default(),
        },
    );
    st.joins.fetch_add(1, Ordering::Relaxed);
    st.start_spans(session, action, claims.role, &room);
    st.audit(
        action,
        &room,
        &claims.sub,
        Some(claims.role),
        Some(peer),
        &describe(&joined.tracks),
    );
    info!(
        room = %Redacted(&room),
        identity = %Redacted(&claims.sub),
        role = %claims.role,
        session = %session,
        tracks = joined.tracks.len(),
        "{action} session created"
    );
    let location = format!("{}/{path}/{room}/{session}", st.public_url);
    let mut r = (StatusCode::CREATED, joined.answer).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/sdp"),
    );
    insert(h, header::LOCATION, &location);
    insert(h, header::ETAG, &etag);
    Ok(r)
}

pub(crate) async fn patch_session(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((room, session)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (room, id, entry) = lookup_session(&st, &room, &session)?;
    owner_only(&st, &headers, &room, &entry, peer)?;
    check_content_type(&headers, "application/trickle-ice-sdpfrag")?;
    if let Some(m) = headers.get(header::IF_MATCH) {
        let m = m.to_str().unwrap_or("");
        if m != "*" && m != entry.etag {
            return Err(ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                format!(
                    "If-Match {m} does not match the session's ETag {}",
                    entry.etag
                ),
            ));
        }
    }
    let frag = std::str::from_utf8(&body)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "the SDP fragment is not UTF-8"))?;
    let new_ufrag = sdp_attr(frag, "a=ice-ufrag:");
    let new_pwd = sdp_attr(frag, "a=ice-pwd:");
    if let (Some(ufrag), Some(pwd)) = (new_ufrag, new_pwd) {
        if ufrag != entry.client_ufrag {
            if let Err(refused) = st.admit_ice_restart(id) {
                return Ok(refused.into_response());
            }
            return ice_restart(&st, room, id, entry, ufrag, pwd, peer).await;
        }
    }
    // Trickled candidates need no action: the server is ICE-lite and learns the client's
    // addresses from its connectivity checks.
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn ice_restart(
    st: &AppState,
    room: RoomId,
    id: SessionId,
    entry: SessionEntry,
    ufrag: String,
    pwd: String,
    peer: SocketAddr,
) -> Result<Response, ApiError> {
    if ufrag.len() < 4 || pwd.len() < 22 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "ICE restart: ice-ufrag must be at least 4 and ice-pwd at least 22 characters (RFC 8839)",
        ));
    }
    let local = str0m::IceCreds {
        ufrag: random_token(8),
        pass: random_token(24),
    };
    let remote = str0m::IceCreds {
        ufrag: ufrag.clone(),
        pass: pwd,
    };
    st.sfu
        .ice_restart(room.clone(), id, remote, local.clone())
        .await
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, e.to_string()))?;
    let etag = format!("\"{}\"", local.ufrag);
    if let Some(e) = st.sessions_lock().get_mut(&id) {
        e.etag = etag.clone();
        e.client_ufrag = ufrag;
    }
    st.audit(
        "ice_restart",
        &room,
        &entry.identity,
        Some(entry.role),
        Some(peer),
        "",
    );
    let body = format!(
        "a=ice-lite\r\na=ice-ufrag:{}\r\na=ice-pwd:{}\r\n",
        local.ufrag, local.pass
    );
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/trickle-ice-sdpfrag"),
    );
    insert(h, header::ETAG, &etag);
    Ok(r)
}

pub(crate) async fn delete_session(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((room, session)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (room, id, entry) = lookup_session(&st, &room, &session)?;
    owner_only(&st, &headers, &room, &entry, peer)?;
    st.sessions_lock().remove(&id);
    st.end_spans(id);
    match st.sfu.leave(room.clone(), id).await {
        Ok(()) | Err(SfuError::UnknownSession(_)) => {}
        Err(e) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                e.to_string(),
            ))
        }
    }
    st.audit(
        "leave",
        &room,
        &entry.identity,
        Some(entry.role),
        Some(peer),
        "DELETE",
    );
    Ok(StatusCode::OK.into_response())
}

fn lookup_session(
    st: &AppState,
    room: &str,
    session: &str,
) -> Result<(RoomId, SessionId, SessionEntry), ApiError> {
    let room = RoomId::parse(room)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("bad room name: {e}")))?;
    let unknown = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no session {session} in room {room}"),
        )
    };
    let id = u64::from_str_radix(session, 16).map_err(|_| unknown())?;
    let id = SessionId(id);
    let entry = st.sessions_lock().get(&id).cloned().ok_or_else(unknown)?;
    if entry.room != room {
        return Err(unknown());
    }
    Ok((room, id, entry))
}
