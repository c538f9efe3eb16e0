//! Stills shared with a room ([`crate::consultation`]): a doctor shares the still it looks at
//! (a kiosk's full-resolution snapshot, or a frame of the device camera) so an invited
//! specialist sees it too. Kept in memory on the room's node while the room lives, never
//! written; served with `Cache-Control: no-store`.
//!
//! - `POST /api/rooms/{room}/stills` (a doctor's token for the room), body `image/jpeg` or
//!   `image/png` of at most `limits.shared_still_bytes` → `201 {"id","mime","bytes"}`, and
//!   every participant on signalling gets `{"type":"still_shared",…}`; 429 beyond
//!   `limits.shared_stills_per_room`, 413 beyond the size, 415 another type.
//! - `GET /api/rooms/{room}/stills` (any token of the room that may subscribe) →
//!   `{"stills":[{"id","from","mime","bytes"}]}`; `GET /api/rooms/{room}/stills/{id}` → the
//!   image.
//!
//! In a cluster, each request is served by the room's node (307 there, like WHIP).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cabine_proto::jwt::AuthError;
use cabine_proto::signal::ServerMsg;
use cabine_proto::{Grant, RoomId};
use serde_json::json;

use super::guard::authorize;
use super::ApiError;
use crate::consultation::ShareError;
use crate::limits::Limit;
use crate::state::AppState;

/// The routes; the upload takes bodies up to `max_still` bytes (and refuses larger ones with
/// 413, counted under `limits.shared_still_bytes`).
pub fn routes(max_still: usize) -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/api/rooms/{room}/stills",
            get(list)
                .post(share)
                // One byte more than allowed, so the handler sees (and counts) a larger one.
                .layer(DefaultBodyLimit::max(max_still.saturating_add(1))),
        )
        .route("/api/rooms/{room}/stills/{id}", get(fetch))
}

async fn share(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(room): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let room = parse_room(&room)?;
    let claims = authorize(
        &st,
        &headers,
        &room,
        Grant::Subscribe,
        "share a still",
        peer,
    )?;
    if !crate::invite::may_invite(&claims, &room) {
        st.count_refusal("forbidden_role");
        let e = AuthError::Forbidden {
            role: claims.role,
            action: "share a still",
        };
        st.audit_refusal(
            room.as_str(),
            claims.sub.as_str(),
            Some(claims.role),
            peer,
            &e,
        );
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("{e}: only a doctor's token for this room does"),
        ));
    }
    if let Some(elsewhere) = super::whip::route(&st, &room, &uri).await {
        return Ok(elsewhere);
    }
    let mime = match headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .as_deref()
    {
        Some("image/jpeg") => "image/jpeg",
        Some("image/png") => "image/png",
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Type must be image/jpeg or image/png, got {other:?}"),
            ))
        }
    };
    let max = st.limits.shared_still_bytes.get();
    if body.len() > max {
        let r = st.refuse(
            Limit::SharedStillBytes,
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the still is larger than limits.shared_still_bytes = {max}"),
            None,
        );
        return Ok(r.into_response());
    }
    let cap = st.limits.shared_stills_per_room.get();
    let size = body.len() as u64;
    let still = match st
        .consultations
        .share_still(&room, &claims.sub, mime, body, cap)
    {
        Ok(s) => s,
        Err(ShareError::Full(n)) => {
            let r = st.refuse(
                Limit::SharedStillsPerRoom,
                StatusCode::TOO_MANY_REQUESTS,
                format!("the room holds {n} shared stills (limits.shared_stills_per_room = {cap})"),
                None,
            );
            return Ok(r.into_response());
        }
    };
    st.audit(
        "still_shared",
        &room,
        &claims.sub,
        Some(claims.role),
        Some(peer),
        &format!(
            "still {} ({mime}, {size} bytes) shared with the room",
            still.id
        ),
    );
    st.ws.broadcast_room(
        &room,
        &ServerMsg::StillShared {
            id: still.id.clone(),
            from: claims.sub.to_string(),
            mime: mime.to_owned(),
            bytes: size,
        },
    );
    Ok((
        StatusCode::CREATED,
        Json(json!({ "id": still.id, "mime": mime, "bytes": size })),
    )
        .into_response())
}

async fn list(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(room): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let room = parse_room(&room)?;
    authorize(&st, &headers, &room, Grant::Subscribe, "see stills", peer)?;
    if let Some(elsewhere) = super::whip::route(&st, &room, &uri).await {
        return Ok(elsewhere);
    }
    let stills: Vec<serde_json::Value> = st
        .consultations
        .stills(&room)
        .iter()
        .map(|s| json!({"id": s.id, "from": s.from.as_str(), "mime": s.mime, "bytes": s.bytes.len()}))
        .collect();
    let mut r = Json(json!({ "stills": stills })).into_response();
    no_store(&mut r);
    Ok(r)
}

async fn fetch(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((room, id)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let room = parse_room(&room)?;
    authorize(&st, &headers, &room, Grant::Subscribe, "see stills", peer)?;
    if let Some(elsewhere) = super::whip::route(&st, &room, &uri).await {
        return Ok(elsewhere);
    }
    let still = st.consultations.still(&room, &id).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no such still in this room (stills last as long as the consultation)",
        )
    })?;
    let mut r = still.bytes.into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(still.mime));
    no_store(&mut r);
    Ok(r)
}

fn no_store(r: &mut Response) {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

fn parse_room(room: &str) -> Result<RoomId, ApiError> {
    RoomId::parse(room)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("bad room name: {e}")))
}
