//! WHIP (`/whip/{room}`) and WHEP (`/whep/{room}`): create a session with an SDP offer,
//! PATCH it (trickle, ICE restart), DELETE it (RFC 9725).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use cabine_proto::{Claims, Grant, Identity, Redacted, RoomId};
use cabine_sfu::{sdp, JoinError, JoinRequest, SessionId, SessionKind, SfuError};
use rand::Rng;
use serde::Deserialize;
use tracing::info;

use super::guard::{authorize, session_actor, session_claims};
use super::sdpfrag::SdpFrag;
use super::{
    check_content_type, clean_message, describe, insert, random_token, sdp_attr, ApiError,
};
use crate::cluster::Route;
use crate::state::{AppState, SessionEntry};

/// `OPTIONS /whip/{room}` and `/whep/{room}`: what a POST takes, and the ICE servers to use
/// (RFC 9725 §4.6). TURN servers and their credentials only for a request with a token that may
/// publish or subscribe in the room; without one (a CORS preflight) the static `[ice] servers`.
pub(crate) async fn endpoint_options(
    State(st): State<Arc<AppState>>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Response {
    let allowed: Option<cabine_proto::Claims> = match (
        RoomId::parse(&room),
        cabine_proto::jwt::bearer(
            headers
                .get(header::AUTHORIZATION)
                .and_then(|h| h.to_str().ok()),
        ),
    ) {
        (Ok(room), Ok(token)) => st
            .tokens
            .authorize(token, &room, Grant::Publish, "publish")
            .or_else(|_| {
                st.tokens
                    .authorize(token, &room, Grant::Subscribe, "subscribe")
            })
            .ok(),
        _ => None,
    };
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert(header::ALLOW, HeaderValue::from_static("OPTIONS, POST"));
    h.insert("accept-post", HeaderValue::from_static("application/sdp"));
    crate::turn::add_links(
        h,
        &st.ice_servers(std::time::SystemTime::now(), allowed.as_ref()),
    );
    r
}

/// `OPTIONS` on a session URL: what a PATCH takes.
pub(crate) async fn session_options() -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert(
        header::ALLOW,
        HeaderValue::from_static("OPTIONS, PATCH, DELETE"),
    );
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
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req = Request {
        peer,
        room: &room,
        uri: &uri,
        headers: &headers,
    };
    create_session(&st, req, body, SessionKind::Publish, None).await
}

/// The header in which a WHIP/WHEP client that knows how it reaches its TURN relay (its relay
/// candidates were all allocated over one transport) says so: `udp`, `tcp` or `tls`. The SFU
/// sees only the relay's UDP; the report is shown for the session while its selected pair is
/// relayed, never otherwise.
pub const RELAY_PROTOCOL_HEADER: &str = "cabine-relay-protocol";

/// The [`RELAY_PROTOCOL_HEADER`], if present (400 when it is not one of the three).
fn relay_protocol_header(
    headers: &HeaderMap,
) -> Result<Option<cabine_sfu::room::TransportProtocol>, ApiError> {
    let Some(v) = headers.get(RELAY_PROTOCOL_HEADER) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(|v| cabine_sfu::room::TransportProtocol::parse_relay(v.trim()))
        .map(Some)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("{RELAY_PROTOCOL_HEADER} must be udp, tcp or tls"),
            )
        })
}

/// What [`create_session`] needs of the request.
struct Request<'a> {
    peer: SocketAddr,
    room: &'a str,
    uri: &'a Uri,
    headers: &'a HeaderMap,
}

/// `307 Temporary Redirect` to the same path and query on the node at `base` (RFC 9725 allows
/// WHIP/WHEP redirects; 307 keeps the method and body).
pub(crate) fn redirect(base: &str, uri: &Uri) -> Response {
    let target = format!(
        "{base}{}",
        uri.path_and_query().map_or(uri.path(), |p| p.as_str())
    );
    let mut r = (
        StatusCode::TEMPORARY_REDIRECT,
        "this room is served by another node\n",
    )
        .into_response();
    insert(r.headers_mut(), header::LOCATION, &target);
    r
}

/// Routes a request for `room` in the cluster: `None` to serve it here, else the answer (a
/// redirect to its owner, or 503 when no node has room for a new room).
pub(crate) async fn route(st: &AppState, room: &RoomId, uri: &Uri) -> Option<Response> {
    match st.cluster.route(room).await {
        Route::Local => None,
        Route::Redirect(base) => Some(redirect(&base, uri)),
        Route::Full => {
            st.count_refusal("cluster_full");
            Some(
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no node of the cluster can take a new room now (all draining or at \
                     cluster.max_rooms); retry later",
                )
                .into_response(),
            )
        }
        Route::Unavailable => {
            st.count_refusal("cluster_store");
            let mut r = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the cluster store did not answer in time; retry in a second",
            )
            .into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, axum::http::HeaderValue::from(1u32));
            Some(r)
        }
    }
}

pub(crate) async fn whep(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(room): Path<String>,
    Query(q): Query<WhepQuery>,
    uri: Uri,
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
    let req = Request {
        peer,
        room: &room,
        uri: &uri,
        headers: &headers,
    };
    create_session(&st, req, body, SessionKind::Subscribe, from).await
}

async fn create_session(
    st: &Arc<AppState>,
    req: Request<'_>,
    body: Bytes,
    kind: SessionKind,
    from: Option<Identity>,
) -> Result<Response, ApiError> {
    let Request {
        peer,
        room,
        uri,
        headers,
    } = req;
    let room = RoomId::parse(room)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("bad room name: {e}")))?;
    let (grant, action, path) = match kind {
        SessionKind::Publish => (Grant::Publish, "publish", "whip"),
        SessionKind::Subscribe => (Grant::Subscribe, "subscribe", "whep"),
    };
    let claims = authorize(st, headers, &room, grant, action, peer)?;
    if let Some(elsewhere) = route(st, &room, uri).await {
        return Ok(elsewhere);
    }
    if st.draining.load(Ordering::Relaxed) {
        st.count_refusal("draining");
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node is shutting down; retry on another node",
        ));
    }
    // Held until the session is in the table (or refused).
    let _reservation = match st.reserve_session(&claims.sub) {
        Ok(r) => r,
        Err(refused) => return Ok(refused.into_response()),
    };
    check_content_type(headers, "application/sdp")?;
    let offer = std::str::from_utf8(&body)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "the SDP offer is not UTF-8"))?;
    if offer.trim().is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "empty SDP offer"));
    }
    let offer = match kind {
        SessionKind::Publish => offer.to_owned(),
        // WHEP receives only: a `sendrecv` offer gets a `sendonly` answer.
        SessionKind::Subscribe => {
            check_codecs(st, &room, offer, from.as_ref(), &claims, peer).await?;
            sdp::receive_only(offer)
        }
    };
    let relay_reported = relay_protocol_header(headers)?;
    let session = SessionId(rand::rng().random());
    let ice_ufrag = random_token(8);
    let ice_pwd = random_token(24);
    let join = JoinRequest {
        session,
        identity: claims.sub.clone(),
        role: claims.role,
        kind,
        offer: offer.clone(),
        from,
        ice_ufrag: ice_ufrag.clone(),
        ice_pwd,
    };
    let joined = match st.sfu.join(room.clone(), join).await {
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
                // The code first: the process log shows it, and only a pseudonym of the rest.
                &format!("{reason}: {message}"),
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
            client_ufrag: sdp_attr(&offer, "a=ice-ufrag:").unwrap_or_default(),
            claims: claims.clone(),
            video_codecs: match kind {
                SessionKind::Publish => sdp::codecs(&joined.answer, "video"),
                SessionKind::Subscribe => Vec::new(),
            },
            restarts: Default::default(),
            data_requests: None,
        },
    );
    if let Some(protocol) = relay_reported {
        // Kept for the session, shown only while its selected pair is relayed: the session was
        // just created, so the only failure is a worker gone, which the next request reports.
        let _ = st
            .sfu
            .report_relay_protocol(room.clone(), session, protocol, false)
            .await;
    }
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
    crate::turn::add_links(
        h,
        &st.ice_servers(std::time::SystemTime::now(), Some(&claims)),
    );
    Ok(r)
}

/// Refuses (`422`) a WHEP offer that wants video but lists none of the video codecs published
/// in the room (by `from`, when given): it would connect and never get a frame. A publisher's
/// codec is the one its media arrives in (as the sampler last saw it), or before media flows,
/// those its answer allowed.
async fn check_codecs(
    st: &AppState,
    room: &RoomId,
    offer: &str,
    from: Option<&Identity>,
    claims: &Claims,
    peer: SocketAddr,
) -> Result<(), ApiError> {
    let offered = sdp::codecs(offer, "video");
    if offered.is_empty() {
        return Ok(());
    }
    // From the session table alone (kept current by the sampler): the cost does not grow
    // with the number of workers or rooms on the node.
    let mut published: Vec<String> = st
        .sessions_lock()
        .values()
        .filter(|e| {
            e.room == *room
                && e.kind == SessionKind::Publish
                && from.is_none_or(|f| *f == e.identity)
        })
        .flat_map(|e| e.video_codecs.iter().cloned())
        .collect();
    published.sort_unstable();
    published.dedup();
    if published.is_empty() || offered.iter().any(|c| published.contains(c)) {
        return Ok(());
    }
    st.count_refusal("codec_mismatch");
    let message = format!(
        "no common video codec: the offer lists {}; the room publishes {}",
        offered.join(", "),
        published.join(", ")
    );
    st.audit(
        "refused",
        room,
        &claims.sub,
        Some(claims.role),
        Some(peer),
        &format!("codec_mismatch: {message}"),
    );
    Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message))
}

pub(crate) async fn patch_session(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((room, session)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let room = parse_room(&room)?;
    let claims = session_claims(&st, &headers, &room, peer)?;
    let (id, entry) = lookup_session(&st, &room, &session)?;
    let actor = session_actor(&st, claims, &room, &entry, peer)?;
    // The client's report of the TURN transport its selected pair uses (known only once it is
    // connected): for this session, kept only while the server sees it relayed.
    if let Some(protocol) = relay_protocol_header(&headers)? {
        match st
            .sfu
            .report_relay_protocol(room.clone(), id, protocol, true)
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(ApiError::new(StatusCode::CONFLICT, e.to_string())),
            Err(e) => return Err(ApiError::new(StatusCode::NOT_FOUND, e.to_string())),
        }
        if body.is_empty() {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
    }
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
    let frag = SdpFrag::parse(&body).map_err(|e| {
        st.count_refusal("bad_sdpfrag");
        ApiError::new(StatusCode::BAD_REQUEST, e.to_string())
    })?;
    if let (Some(ufrag), Some(pass)) = (frag.ufrag, frag.pwd) {
        if ufrag != entry.client_ufrag {
            if let Err(refused) = st.admit_ice_restart(id) {
                return Ok(refused.into_response());
            }
            let remote = str0m::IceCreds { ufrag, pass };
            return ice_restart(&st, room, id, entry, &actor, remote, peer).await;
        }
    }
    // The server learns the client's addresses from the connectivity checks it receives; a
    // trickled candidate tells it which kind the selected pair's is (a relay allocated after the
    // offer left). The room keeps a bounded number per session.
    for candidate in frag.candidates {
        if st
            .sfu
            .learn_candidate(room.clone(), id, candidate)
            .await
            .is_err()
        {
            break;
        }
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn ice_restart(
    st: &AppState,
    room: RoomId,
    id: SessionId,
    entry: SessionEntry,
    actor: &Claims,
    remote: str0m::IceCreds,
    peer: SocketAddr,
) -> Result<Response, ApiError> {
    let local = str0m::IceCreds {
        ufrag: random_token(8),
        pass: random_token(24),
    };
    let ufrag = remote.ufrag.clone();
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
        &actor.sub,
        Some(actor.role),
        Some(peer),
        &on_behalf(actor, &entry),
    );
    // The same ICE mode as the first answer: WHIP/WHEP sessions run full ICE (the media
    // plane checks the path itself), so no `a=ice-lite` here either.
    let body = format!(
        "a=ice-ufrag:{}\r\na=ice-pwd:{}\r\n",
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
    let room = parse_room(&room)?;
    let claims = session_claims(&st, &headers, &room, peer)?;
    let (id, entry) = lookup_session(&st, &room, &session)?;
    let actor = session_actor(&st, claims, &room, &entry, peer)?;
    // The entry goes once the media plane has let the session go (or never knew it): a failed
    // leave keeps it, so the session stays visible, counted and deletable.
    match st.sfu.leave(room.clone(), id).await {
        Ok(()) | Err(SfuError::UnknownSession(_)) => {}
        Err(e) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                e.to_string(),
            ))
        }
    }
    st.sessions_lock().remove(&id);
    st.end_spans(id);
    let detail = format!("DELETE{}", on_behalf(&actor, &entry));
    st.audit(
        "leave",
        &room,
        &actor.sub,
        Some(actor.role),
        Some(peer),
        detail.trim_start(),
    );
    Ok(StatusCode::OK.into_response())
}

/// For the audit: whose session a moderator acted on ("" when the actor is its owner).
fn on_behalf(actor: &Claims, entry: &SessionEntry) -> String {
    if actor.sub == entry.identity && actor.role == entry.role {
        String::new()
    } else {
        format!(
            " on the session of {} ({}) as moderator",
            entry.identity, entry.role
        )
    }
}

fn parse_room(room: &str) -> Result<RoomId, ApiError> {
    RoomId::parse(room)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("bad room name: {e}")))
}

fn lookup_session(
    st: &AppState,
    room: &RoomId,
    session: &str,
) -> Result<(SessionId, SessionEntry), ApiError> {
    let unknown = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no session {session} in room {room}"),
        )
    };
    let id = u64::from_str_radix(session, 16).map_err(|_| unknown())?;
    let id = SessionId(id);
    let entry = st.sessions_lock().get(&id).cloned().ok_or_else(unknown)?;
    if entry.room != *room {
        return Err(unknown());
    }
    Ok((id, entry))
}
