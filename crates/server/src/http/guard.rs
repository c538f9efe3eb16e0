//! Who may do what: the token checks of every route, written once. Refusals are counted by
//! reason and audited.

use std::net::SocketAddr;

use axum::http::{header, HeaderMap, StatusCode};
use cabine_proto::{Claims, Grant, Role, RoomId};

use super::ApiError;
use crate::state::{AppState, SessionEntry};
use cabine_proto::jwt::{bearer, AuthError};

/// Checks an operator token from the `Authorization` header or, for `EventSource` which cannot
/// set headers, the `token` query parameter (request paths and queries are never logged).
pub(crate) fn operator(
    st: &AppState,
    headers: &HeaderMap,
    query: Option<&str>,
    peer: SocketAddr,
    action: &'static str,
) -> Result<Claims, ApiError> {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    let token = match (header, query) {
        (Some(h), _) => bearer(Some(h)),
        (None, Some(q)) => Ok(q),
        (None, None) => Err(AuthError::Missing),
    }
    .and_then(|t| st.tokens.verify(t))
    .inspect_err(|e| {
        // No valid token: an anonymous refusal (aggregated per source: `crate::anon_audit`).
        st.count_refusal(e.reason());
        st.audit_refusal("-", "-", None, peer, e);
    })?;
    let claims: Claims = token;
    if claims.role != Role::Operator {
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
        return Err(e.into());
    }
    Ok(claims)
}

pub(crate) fn authorize(
    st: &AppState,
    headers: &HeaderMap,
    room: &RoomId,
    grant: Grant,
    action: &'static str,
    peer: SocketAddr,
) -> Result<Claims, ApiError> {
    let token = bearer(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok()),
    )
    .inspect_err(|e| {
        // Audited like on /ws (aggregated per source: see `crate::anon_audit`).
        st.count_refusal(e.reason());
        st.audit_refusal(room.as_str(), "-", None, peer, e);
    })?;
    let claims = st
        .tokens
        .authorize(token, room, grant, action)
        .map_err(|e| {
            st.count_refusal(e.reason());
            match st.tokens.verify(token) {
                Ok(c) => st.audit_refusal(room.as_str(), c.sub.as_str(), Some(c.role), peer, &e),
                Err(_) => st.audit_refusal(room.as_str(), "-", None, peer, &e),
            }
            ApiError::from(e)
        })?;
    not_denied(st, room, &claims, peer)?;
    Ok(claims)
}

/// Refuses (403, audited) an invitee whose redeemed invite a doctor of `room` revoked.
pub(crate) fn not_denied(
    st: &AppState,
    room: &RoomId,
    claims: &Claims,
    peer: SocketAddr,
) -> Result<(), ApiError> {
    if claims.role != Role::Assistant
        || !st
            .consultations
            .is_denied(room, &claims.sub, std::time::Instant::now())
    {
        return Ok(());
    }
    st.count_refusal("invite_revoked");
    st.audit(
        "refused",
        room,
        &claims.sub,
        Some(claims.role),
        Some(peer),
        "the invite of this invitee was revoked",
    );
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "a doctor of this room revoked your invite",
    ))
}

/// The valid token of a request on a WHIP/WHEP session URL (PATCH, DELETE), checked before the
/// session is looked up: without one, the answer is 401 (audited as anonymous), never a 404
/// that would tell whether a session exists.
pub(crate) fn session_claims(
    st: &AppState,
    headers: &HeaderMap,
    room: &RoomId,
    peer: SocketAddr,
) -> Result<Claims, ApiError> {
    let token = bearer(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok()),
    )
    .inspect_err(|e| {
        st.count_refusal(e.reason());
        st.audit_refusal(room.as_str(), "-", None, peer, e);
    })?;
    Ok(st.tokens.verify(token).inspect_err(|e| {
        st.count_refusal(e.reason());
        st.audit_refusal(room.as_str(), "-", None, peer, e);
    })?)
}

/// Who acts on a WHIP/WHEP session (PATCH, DELETE), given the request's valid `claims`: its
/// owner (the same `sub` *and* role it was opened with), or a token granted `moderate` for the
/// room. Returns the actor's claims, under whose identity the action is audited.
pub(crate) fn session_actor(
    st: &AppState,
    claims: Claims,
    room: &RoomId,
    entry: &SessionEntry,
    peer: SocketAddr,
) -> Result<Claims, ApiError> {
    if !claims.is_for_room(room) {
        st.count_refusal("wrong_room");
        let e = AuthError::WrongRoom {
            token_room: claims.room.clone(),
            room: room.to_string(),
        };
        st.audit_refusal(
            room.as_str(),
            claims.sub.as_str(),
            Some(claims.role),
            peer,
            &e,
        );
        return Err(e.into());
    }
    let owner = claims.sub == entry.identity && claims.role == entry.role;
    if !owner && !claims.allows(Grant::Moderate) {
        st.count_refusal("not_owner");
        let e = AuthError::Forbidden {
            role: claims.role,
            action: "act on another participant's session (needs the `moderate` grant)",
        };
        st.audit_refusal(
            room.as_str(),
            claims.sub.as_str(),
            Some(claims.role),
            peer,
            &e,
        );
        return Err(e.into());
    }
    Ok(claims)
}
