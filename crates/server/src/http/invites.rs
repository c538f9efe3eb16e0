//! The invite routes ([`crate::invite`]): a doctor of the room mints, lists and revokes; the
//! invitee's page exchanges the link's code for a token, once.
//!
//! - `POST /api/rooms/{room}/invites` (doctor) `{"kind","grants"?,"ttl_s"?}` → `201
//!   {"id","url","expires_at","kind","grants"}`; 400 bad kind, grants or ttl; 403 not a doctor
//!   of the room, or grants beyond the doctor's; 429 at `limits.invites_per_room` live ones.
//! - `GET /api/rooms/{room}/invites` (doctor) → `{"invites":[{"id","kind","grants",
//!   "expires_at","state"}]}` (`pending`, `redeemed`, `revoked`, `expired`).
//! - `DELETE /api/rooms/{room}/invites/{id}` (doctor) → 204 (a redeemed invite: its invitee
//!   is denied the room and its sessions closed); 404 unknown; 410 expired or revoked before.
//! - `POST /api/rooms/{room}/invites/redeem` `{"code"}` (no token) → `200 {"token","room",
//!   "identity","role","grants","expires_at","url"}` once; 404 unknown code; 409 used; 410
//!   expired or revoked. In a cluster it is served by the room's node (307 there, like WHIP),
//!   where the invitee's device commands are recorded.
//! - `GET /invite/{room}` the invitee's page (code in the fragment).
//!
//! Every mint, redemption, revocation and refusal is audited: mints and revocations as the
//! doctor, redemptions as the invitee (with the invite's id, never its secret).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use cabine_proto::jwt::AuthError;
use cabine_proto::{Claims, Grant, Identity, Role, RoomId};
use serde::Deserialize;
use serde_json::json;

use super::guard::session_claims;
use super::{random_token, ApiError};
use crate::cluster::invite_store::{Created, InviteState, Redemption, Revocation, StoredInvite};
use crate::invite::{grantable, may_invite, split_code, InviteeKind, ID_LEN, SECRET_LEN};
use crate::limits::Limit;
use crate::state::AppState;

/// The invite routes and the invitee's page.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/rooms/{room}/invites", post(mint).get(list))
        .route("/api/rooms/{room}/invites/redeem", post(redeem))
        .route("/api/rooms/{room}/invites/{id}", delete(revoke))
        .route("/invite/{room}", get(super::pages::invite_page))
}

/// What a doctor asks for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MintRequest {
    kind: InviteeKind,
    /// Default: publish and subscribe.
    #[serde(default)]
    grants: Option<Vec<Grant>>,
    /// Default: `invites.ttl`.
    #[serde(default)]
    ttl_s: Option<u64>,
}

/// What the invitee's page sends.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedeemRequest {
    code: String,
}

async fn mint(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let room = parse_room(&room)?;
    let doctor = doctor(&st, &headers, &room, peer, "invite")?;
    let req: MintRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "bad invite request: {e} (expected {{\"kind\":\"specialist|interpreter|\
                 orthoptist\",\"grants\":[…],\"ttl_s\":N}})"
            ),
        )
    })?;
    let asked = req
        .grants
        .unwrap_or_else(|| vec![Grant::Publish, Grant::Subscribe]);
    let grants = grantable(&doctor, &asked).map_err(|e| {
        let status = match e {
            crate::invite::GrantError::NotYours(_) => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_REQUEST,
        };
        refuse(&st, &room, &doctor, peer, &e.to_string());
        ApiError::new(status, e.to_string())
    })?;
    let ttl = st
        .invites
        .link_ttl(req.ttl_s)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    let now = unix_now();
    let id = random_token(ID_LEN);
    let secret = random_token(SECRET_LEN);
    let invite = StoredInvite {
        id: id.clone(),
        secret_hash: st.invites.hash(&secret),
        kind: req.kind.as_str().to_owned(),
        grants: grants.clone(),
        expires_at: now + ttl.as_secs(),
        state: InviteState::Pending,
    };
    let cap = st.limits.invites_per_room.get();
    match st
        .invites
        .store
        .create(&st.cluster.key(&room), &invite, cap, now)
        .await
        .map_err(|e| store_down(&st, &e))?
    {
        Created::Created => {}
        Created::Full(live) => {
            let refused = st.refuse(
                Limit::InvitesPerRoom,
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "the room has {live} live invites (limits.invites_per_room = {cap}); \
                     revoke one or let it expire"
                ),
                None,
            );
            refuse(&st, &room, &doctor, peer, "limits.invites_per_room");
            return Ok(refused.into_response());
        }
    }
    st.audit(
        "invite_minted",
        &room,
        &doctor.sub,
        Some(doctor.role),
        Some(peer),
        &format!(
            "invite {id} for a {}, grants {}, expires in {} s",
            invite.kind,
            grant_list(&grants),
            ttl.as_secs()
        ),
    );
    let url = format!("{}/invite/{}#code={id}.{secret}", st.public_url, room);
    let body = json!({
        "id": id,
        "url": url,
        "expires_at": invite.expires_at,
        "kind": invite.kind,
        "grants": grants,
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn list(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let room = parse_room(&room)?;
    doctor(&st, &headers, &room, peer, "list invites")?;
    let now = unix_now();
    let invites = st
        .invites
        .store
        .list(&st.cluster.key(&room))
        .await
        .map_err(|e| store_down(&st, &e))?;
    let invites: Vec<serde_json::Value> = invites
        .iter()
        .map(|i| {
            let state = match i.state {
                InviteState::Pending if i.expires_at <= now => "expired",
                InviteState::Pending => "pending",
                InviteState::Redeemed => "redeemed",
                InviteState::Revoked => "revoked",
            };
            json!({
                "id": i.id,
                "kind": i.kind,
                "grants": i.grants,
                "expires_at": i.expires_at,
                "state": state,
            })
        })
        .collect();
    Ok(Json(json!({ "invites": invites })).into_response())
}

async fn revoke(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((room, id)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let room = parse_room(&room)?;
    let doctor = doctor(&st, &headers, &room, peer, "revoke invites")?;
    // The room's node holds the invitee's sessions and its deny list: revoke there.
    if let Some(elsewhere) = super::whip::route(&st, &room, &uri).await {
        return Ok(elsewhere);
    }
    let outcome = if id.len() == ID_LEN && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        st.invites
            .store
            .revoke(&st.cluster.key(&room), &id, unix_now())
            .await
            .map_err(|e| store_down(&st, &e))?
    } else {
        Revocation::Unknown
    };
    let (status, what) = match outcome {
        Revocation::Revoked => {
            st.audit(
                "invite_revoked",
                &room,
                &doctor.sub,
                Some(doctor.role),
                Some(peer),
                &format!("invite {id} revoked"),
            );
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        Revocation::Unknown => (StatusCode::NOT_FOUND, "no such invite in this room"),
        Revocation::Used => {
            let kind = st
                .invites
                .store
                .list(&st.cluster.key(&room))
                .await
                .map_err(|e| store_down(&st, &e))?
                .into_iter()
                .find(|i| i.id == id)
                .map(|i| i.kind);
            let Some(kind) = kind else {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "no such invite in this room",
                ));
            };
            let closed = deny_invitee(&st, &room, &kind, &id).await?;
            st.audit(
                "invite_revoked",
                &room,
                &doctor.sub,
                Some(doctor.role),
                Some(peer),
                &format!(
                    "redeemed invite {id} revoked: its invitee is denied the room, {closed}                      sessions closed"
                ),
            );
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        Revocation::Expired => (
            StatusCode::GONE,
            "the invite expired or was revoked already",
        ),
    };
    refuse(&st, &room, &doctor, peer, &format!("revoke invite: {what}"));
    Err(ApiError::new(status, what))
}

async fn redeem(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(room): Path<String>,
    uri: Uri,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let room = parse_room(&room)?;
    let code = serde_json::from_slice::<RedeemRequest>(&body)
        .ok()
        .map(|r| r.code);
    let Some((id, secret)) = code.as_deref().and_then(split_code) else {
        anonymous_refusal(&st, &room, peer, "redeem invite: malformed code");
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad redemption: expected {\"code\":\"<id>.<secret>\"} from the invite link",
        ));
    };
    // The room's node records the invitee's device commands: redeem there.
    if let Some(elsewhere) = super::whip::route(&st, &room, &uri).await {
        return Ok(elsewhere);
    }
    let now = unix_now();
    let outcome = st
        .invites
        .store
        .redeem(&st.cluster.key(&room), id, &st.invites.hash(secret), now)
        .await
        .map_err(|e| store_down(&st, &e))?;
    let invite = match outcome {
        Redemption::Redeemed(i) => i,
        other => {
            let (status, what) = match other {
                Redemption::Used => (StatusCode::CONFLICT, "this invite link was used already"),
                Redemption::Expired => (StatusCode::GONE, "this invite link has expired"),
                Redemption::Revoked => (StatusCode::GONE, "this invite link was revoked"),
                _ => (StatusCode::NOT_FOUND, "no such invite link"),
            };
            st.count_refusal("invite_refused");
            anonymous_refusal(&st, &room, peer, &format!("redeem invite {id}: {what}"));
            return Err(ApiError::new(status, what));
        }
    };
    // `<kind>-<id>`: letters, digits and `-` only, within the identity rules.
    let identity = Identity::parse(&format!("{}-{}", invite.kind, invite.id.to_lowercase()))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let ttl = st.invites.cfg.token_ttl;
    // Device commands are the doctor's to allow: recorded for this consultation (revocable
    // over signalling), never carried by the token.
    let token_grants: Vec<Grant> = invite
        .grants
        .iter()
        .copied()
        .filter(|g| *g != Grant::Commands)
        .collect();
    let token = st
        .tokens
        .mint(
            room.as_str(),
            Role::Assistant,
            identity.clone(),
            ttl,
            Some(token_grants.clone()),
        )
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let commands = invite.grants.contains(&Grant::Commands);
    if commands {
        st.consultations.allow_commands(&room, &identity, true);
        st.ws.broadcast_room(
            &room,
            &cabine_proto::signal::ServerMsg::CommandsAllowed {
                identity: identity.to_string(),
                allowed: true,
            },
        );
    }
    st.audit(
        "invite_redeemed",
        &room,
        &identity,
        Some(Role::Assistant),
        Some(peer),
        &format!(
            "invite {} for a {} redeemed, grants {}, token for {} s",
            invite.id,
            invite.kind,
            grant_list(&invite.grants),
            ttl.as_secs()
        ),
    );
    let body = json!({
        "token": token,
        "room": room.as_str(),
        "identity": identity.as_str(),
        "role": "assistant",
        "kind": invite.kind,
        "grants": invite.grants,
        "expires_at": now + ttl.as_secs(),
        "url": format!("/consult/{room}#token={token}"),
    });
    Ok(Json(body).into_response())
}

/// Denies the invitee of a redeemed invite (`<kind>-<id>`) the room until its token would
/// expire, and closes its signalling and media sessions; returns how many were closed.
async fn deny_invitee(
    st: &AppState,
    room: &RoomId,
    kind: &str,
    id: &str,
) -> Result<usize, ApiError> {
    let identity = Identity::parse(&format!("{kind}-{}", id.to_lowercase()))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let until = std::time::Instant::now() + st.invites.cfg.token_ttl;
    st.consultations.deny(room, &identity, until);
    let reason = "a doctor of the room revoked this invite";
    let mut closed = st.ws.expel(room, &identity, reason);
    let sessions: Vec<_> = st
        .sessions_lock()
        .iter()
        .filter(|(_, e)| &e.room == room && e.identity == identity)
        .map(|(id, _)| *id)
        .collect();
    for session in sessions {
        let _ = st.sfu.leave(room.clone(), session).await;
        if st.sessions_lock().remove(&session).is_some() {
            closed += 1;
            st.end_spans(session);
            st.audit(
                "leave",
                room,
                &identity,
                Some(Role::Assistant),
                None,
                reason,
            );
        }
    }
    Ok(closed)
}

/// The claims of a doctor's token for `room` (403, audited, for any other role or a token
/// for every room).
fn doctor(
    st: &AppState,
    headers: &HeaderMap,
    room: &RoomId,
    peer: SocketAddr,
    action: &'static str,
) -> Result<Claims, ApiError> {
    let claims = session_claims(st, headers, room, peer)?;
    if !may_invite(&claims, room) {
        st.count_refusal("forbidden_role");
        let e = AuthError::Forbidden {
            role: claims.role,
            action,
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
    Ok(claims)
}

fn parse_room(room: &str) -> Result<RoomId, ApiError> {
    RoomId::parse(room)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("bad room name: {e}")))
}

fn refuse(st: &AppState, room: &RoomId, who: &Claims, peer: SocketAddr, detail: &str) {
    st.count_refusal("invite_refused");
    st.audit(
        "refused",
        room,
        &who.sub,
        Some(who.role),
        Some(peer),
        detail,
    );
}

/// A refused redemption: no token, so audited like every anonymous refusal (one line per
/// source and interval, the rest counted).
fn anonymous_refusal(st: &AppState, room: &RoomId, peer: SocketAddr, detail: &str) {
    if st.admit_anonymous_audit(peer) {
        st.audit_log()
            .record("refused", room.as_str(), "-", None, Some(peer), detail);
    }
}

fn store_down(st: &AppState, e: &crate::cluster::StoreError) -> ApiError {
    st.count_refusal("cluster_store");
    tracing::warn!(error = %e, "invite store");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the invite store did not answer; retry in a second",
    )
}

fn grant_list(grants: &[Grant]) -> String {
    serde_json::to_string(grants).unwrap_or_default()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}
