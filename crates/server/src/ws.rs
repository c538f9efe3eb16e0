//! WebSocket signalling, `GET /ws/{room}?token=…`: the browser app's way in (schema in
//! `docs/signalling.md`, types in [`cabine_proto::signal`]).
//!
//! A participant has up to two peer connections, each with one offerer so offers never cross:
//! **publish** (the client offers, as WHIP; a new track or an ICE restart is a new offer on the
//! same connection) and **subscribe** (the server offers: first with every track the participant
//! may receive and the `telemetry` data channels, then again whenever a track is published or
//! goes away, see [`cabine_sfu::room::Room::join_offering`]).
//!
//! A signalling session outlives its WebSocket: when the socket drops, the media sessions go on
//! and what the server would have sent is kept, for `http.ws_resume_grace` (30 s by default); a new socket that sends
//! `resume` with the session's token takes it over, gets the backlog and the outstanding offer.
//! After the grace period the media sessions end as if the participant had left.
//!
//! Tokens and roles follow the WHIP/WHEP rules (a `publish` needs the `publish` grant, a
//! subscription the `subscribe` grant), and joins, leaves and refusals go to the audit log.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cabine_proto::signal::{self, ClientMsg, Participant, Pc, ServerMsg, TelemetryChannel, Track};
use cabine_proto::{Claims, Grant, Identity, Redacted, Role, RoomId};
use cabine_sfu::room::{Offer, OfferRequest, OfferedTrack, Removed, TrackInfo, TELEMETRY_LABEL};
use cabine_sfu::{JoinRequest, SessionId, SessionKind, SfuError};
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use serde::Deserialize;
use tokio::sync::mpsc;
use tracing::info;

use crate::http::{clean_message, describe, random_token, sdp_attr, ApiError};
use crate::state::{AppState, SessionEntry};

/// The signalling sessions of one server.
#[derive(Default)]
pub struct Hub {
    inner: Mutex<HubInner>,
}

#[derive(Default)]
struct HubInner {
    /// By resume token.
    members: HashMap<String, Member>,
}

struct Member {
    room: RoomId,
    identity: Identity,
    role: Role,
    publish: Option<SessionId>,
    subscribe: Option<SessionId>,
    wants_subscribe: bool,
    from: Option<Identity>,
    /// The socket writer; `None` while disconnected.
    tx: Option<Outbox>,
    /// Messages for the participant while its socket is away.
    backlog: Vec<String>,
    /// The id of the last offer put in the backlog.
    queued_offer: Option<u64>,
    /// Increases each time a socket takes the session; a grace timer ends only its epoch.
    epoch: u64,
    /// `limits.ws_backlog`.
    backlog_limit: usize,
    /// Where a dropped backlog message is counted.
    refusals: Arc<crate::limits::Refusals>,
}

/// The way to one socket's writer: a bounded queue (`limits.ws_queue`) and how to close it.
#[derive(Clone)]
struct Outbox {
    tx: mpsc::Sender<String>,
    ctl: Arc<SocketCtl>,
}

struct SocketCtl {
    /// Set to close the socket at once (slow reader, message rate), with this close frame.
    kill: tokio::sync::watch::Sender<Option<(u16, String)>>,
    /// The close frame sent after the queue drained, on a normal end.
    close: Mutex<Option<(u16, String)>>,
    refusals: Arc<crate::limits::Refusals>,
}

/// Close code for a limit (RFC 6455 1008, policy violation).
const POLICY: u16 = 1008;

/// The longest trickled candidate taken (a browser's are ~100–200 bytes).
const MAX_CANDIDATE_LEN: usize = 512;

/// A message that could not be queued: the socket is gone or being closed.
struct Gone;

impl Outbox {
    fn new(
        capacity: usize,
        refusals: Arc<crate::limits::Refusals>,
    ) -> (Outbox, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(capacity);
        let ctl = Arc::new(SocketCtl {
            kill: tokio::sync::watch::Sender::new(None),
            close: Mutex::new(None),
            refusals,
        });
        (Outbox { tx, ctl }, rx)
    }

    /// An outbox whose socket is gone (timers that must not hold a writer open).
    fn gone() -> Outbox {
        Outbox::new(1, Arc::default()).0
    }

    /// Queues a message; a client that let the queue fill is closed (it does not read).
    fn send(&self, text: String) -> Result<(), Gone> {
        match self.tx.try_send(text) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.kill(
                    crate::limits::Limit::WsQueue,
                    "outbound queue full: the client does not read its messages (limits.ws_queue)",
                );
                Err(Gone)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Gone),
        }
    }

    /// Queues a message, waiting (boundedly) for room: a backlog handed to a resumed socket.
    async fn send_wait(&self, text: String) -> Result<(), Gone> {
        match tokio::time::timeout(Duration::from_secs(5), self.tx.send(text)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Gone),
            Err(_) => {
                self.kill(
                    crate::limits::Limit::WsQueue,
                    "outbound queue full: the client does not read its messages (limits.ws_queue)",
                );
                Err(Gone)
            }
        }
    }

    /// Closes the socket at once with a policy close frame naming `limit`.
    fn kill(&self, limit: crate::limits::Limit, reason: &str) {
        // Counted before the writer can see the flag and close the socket.
        self.ctl.kill.send_if_modified(|k| {
            if k.is_some() {
                return false;
            }
            self.ctl.refusals.count(limit);
            *k = Some((POLICY, reason.to_owned()));
            true
        });
    }

    /// The close frame to send once the queued messages are written.
    fn close_with(&self, code: u16, reason: &str) {
        *self.ctl.close.lock().unwrap_or_else(|p| p.into_inner()) = Some((code, reason.to_owned()));
    }

    fn killed(&self) -> tokio::sync::watch::Receiver<Option<(u16, String)>> {
        self.ctl.kill.subscribe()
    }
}

/// The query of `GET /ws/{room}`.
#[derive(Debug, Deserialize)]
pub struct WsQuery {
    token: Option<String>,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HubInner> {
        // Single inserts, removes and field updates: a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Signalling members by room (live rooms for the cluster's leases).
    pub fn members_by_room(&self) -> std::collections::HashMap<RoomId, u32> {
        let mut out = std::collections::HashMap::new();
        for m in self.lock().members.values() {
            *out.entry(m.room.clone()).or_default() += 1;
        }
        out
    }

    /// The signalling sessions of `room`: identity, role, and whether its socket is attached
    /// (`false` while it is away within its grace period), for the operators' view.
    pub fn members_of(&self, room: &str) -> Vec<(Identity, Role, bool)> {
        self.lock()
            .members
            .values()
            .filter(|m| m.room.as_str() == room)
            .map(|m| (m.identity.clone(), m.role, m.tx.is_some()))
            .collect()
    }

    /// Reports the server's renegotiation offer to the subscriber it is for.
    pub fn on_offer(&self, offer: Offer) {
        let msgs = offer_messages(&offer);
        let mut inner = self.lock();
        let Some(m) = inner
            .members
            .values_mut()
            .find(|m| m.subscribe == Some(offer.session))
        else {
            return;
        };
        for msg in &msgs {
            m.send(msg);
        }
    }

    /// A media session of a signalling participant ended on its own (ICE timeout).
    pub fn on_session_ended(&self, removed: &Removed) {
        let mut inner = self.lock();
        for m in inner.members.values_mut() {
            let pc = if m.publish == Some(removed.session) {
                m.publish = None;
                Pc::Publish
            } else if m.subscribe == Some(removed.session) {
                m.subscribe = None;
                Pc::Subscribe
            } else {
                continue;
            };
            m.send(&ServerMsg::SessionEnded {
                pc,
                reason: removed.reason.to_owned(),
            });
        }
    }

    fn broadcast(&self, room: &RoomId, except: &str, msg: &ServerMsg) {
        let mut inner = self.lock();
        for (token, m) in inner.members.iter_mut() {
            if &m.room == room && token != except {
                m.send(msg);
            }
        }
    }

    /// Takes `identity`'s signalling sessions in `room` out of the hub (no resumption) and
    /// closes their sockets at once; tells the room it left. Returns how many; their media
    /// sessions are the caller's to end.
    pub(crate) fn expel(&self, room: &RoomId, identity: &Identity, reason: &str) -> usize {
        let gone: Vec<Member> = {
            let mut inner = self.lock();
            let tokens: Vec<String> = inner
                .members
                .iter()
                .filter(|(_, m)| &m.room == room && &m.identity == identity)
                .map(|(t, _)| t.clone())
                .collect();
            tokens
                .iter()
                .filter_map(|t| inner.members.remove(t))
                .collect()
        };
        for m in &gone {
            if let Some(tx) = &m.tx {
                tx.ctl.kill.send_if_modified(|k| {
                    if k.is_some() {
                        return false;
                    }
                    *k = Some((POLICY, reason.to_owned()));
                    true
                });
            }
        }
        if let Some(m) = gone.first() {
            self.broadcast(
                room,
                "",
                &ServerMsg::ParticipantLeft(participant(&m.identity, m.role)),
            );
        }
        gone.len()
    }

    /// Sends `msg` to every signalling participant of `room`.
    pub(crate) fn broadcast_room(&self, room: &RoomId, msg: &ServerMsg) {
        self.broadcast(room, "", msg);
    }

    /// Whether `identity` with `role` has a signalling session in `room` other than `except`
    /// (only one with its socket attached when `connected`).
    fn present(
        &self,
        room: &RoomId,
        identity: &Identity,
        role: Role,
        except: &str,
        connected: bool,
    ) -> bool {
        self.lock().members.iter().any(|(t, m)| {
            t != except
                && &m.room == room
                && &m.identity == identity
                && m.role == role
                && (!connected || m.tx.is_some())
        })
    }

    fn participants(&self, room: &RoomId, except: &str) -> Vec<Participant> {
        self.lock()
            .members
            .iter()
            .filter(|(t, m)| &m.room == room && *t != except)
            .map(|(_, m)| participant(&m.identity, m.role))
            .collect()
    }
}

impl Member {
    fn send(&mut self, msg: &ServerMsg) {
        let text = signal::to_text(msg);
        if let Some(tx) = &self.tx {
            if tx.send(text.clone()).is_ok() {
                return;
            }
            self.tx = None;
        }
        if self.backlog.len() < self.backlog_limit {
            self.backlog.push(text);
            if let ServerMsg::Offer { offer_id, .. } = msg {
                self.queued_offer = Some(*offer_id);
            }
        } else {
            self.refusals.count(crate::limits::Limit::WsBacklog);
        }
    }
}

/// `GET /ws/{room}?token=…`: checks the token before upgrading (401/403 like WHIP/WHEP).
pub async fn handler(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(room): Path<String>,
    Query(q): Query<WsQuery>,
    uri: axum::http::Uri,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let room = RoomId::parse(&room)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("bad room name: {e}")))?;
    let token = q.token.unwrap_or_default();
    if token.is_empty() {
        let e = cabine_proto::jwt::AuthError::Missing;
        st.count_refusal(e.reason());
        st.audit_refusal(room.as_str(), "-", None, peer, &e);
        return Err(e.into());
    }
    // Either grant opens a session; each request checks its own.
    let claims = st
        .tokens
        .authorize(&token, &room, Grant::Subscribe, "signal")
        .or_else(|_| st.tokens.authorize(&token, &room, Grant::Publish, "signal"))
        .map_err(|e| {
            st.count_refusal(e.reason());
            match st.tokens.verify(&token) {
                Ok(c) => st.audit_refusal(room.as_str(), c.sub.as_str(), Some(c.role), peer, &e),
                Err(_) => st.audit_refusal(room.as_str(), "-", None, peer, &e),
            }
            ApiError::from(e)
        })?;
    crate::http::guard::not_denied(&st, &room, &claims, peer)?;
    // Browsers do not follow redirects on a WebSocket handshake: the owner's URL comes as a
    // message, then the socket closes.
    match st.cluster.route(&room).await {
        crate::cluster::Route::Local => {}
        crate::cluster::Route::Redirect(base) => {
            let url = format!("{}{}", ws_base(&base), uri.path());
            return Ok(ws
                .on_upgrade(move |socket| redirect_socket(socket, url))
                .into_response());
        }
        crate::cluster::Route::Full => {
            st.count_refusal("cluster_full");
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no node of the cluster can take a new room now; retry later",
            ));
        }
        crate::cluster::Route::Unavailable => {
            st.count_refusal("cluster_store");
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the cluster store did not answer in time; retry in a second",
            ));
        }
    }
    if st.draining.load(Ordering::Relaxed) {
        st.count_refusal("draining");
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node is shutting down; retry on another node",
        ));
    }
    Ok(ws
        .max_message_size(st.limits.ws_max_message_bytes.get())
        .on_upgrade(move |socket| run(st, room, claims, peer, socket))
        .into_response())
}

/// `http(s)://host` → `ws(s)://host`.
fn ws_base(base: &str) -> String {
    if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    }
}

/// The cluster's node URLs for a welcome, this node first (none outside a cluster).
fn cluster_nodes(st: &AppState) -> Vec<String> {
    let cluster = st.cluster();
    if !cluster.clustered() {
        return Vec::new();
    }
    let me = cluster.public_url().to_owned();
    let mut out = vec![me.clone()];
    out.extend(
        cluster
            .nodes()
            .into_iter()
            .map(|n| n.url)
            .filter(|u| !u.is_empty() && *u != me),
    );
    out
}

/// Tells the page where its room is served (`{"type":"redirect","url":…}`; it reconnects
/// there with its token), then closes.
async fn redirect_socket(mut socket: WebSocket, url: String) {
    let msg = serde_json::json!({ "type": "redirect", "url": url }).to_string();
    let _ = socket.send(Message::Text(msg.into())).await;
    let _ = socket
        .send(Message::Close(Some(axum::extract::ws::CloseFrame {
            code: 1000,
            reason: "redirect".into(),
        })))
        .await;
}

async fn run(st: Arc<AppState>, room: RoomId, claims: Claims, peer: SocketAddr, socket: WebSocket) {
    let (sink, mut stream) = socket.split();
    let (tx, rx) = Outbox::new(st.limits.ws_queue.get(), Arc::clone(&st.refusals));
    let writer = tokio::spawn(write_loop(sink, rx, Arc::clone(&tx.ctl)));
    let mut killed = tx.killed();
    let mut bucket = crate::limits::TokenBucket::new(
        st.limits.ws_messages_per_second,
        st.limits.ws_message_burst,
        std::time::Instant::now(),
    );
    let conn = Conn {
        st: Arc::clone(&st),
        room,
        claims,
        peer,
        tx: tx.clone(),
    };
    let first_timeout = st.limits.ws_first_message_timeout;
    let first = tokio::time::timeout(first_timeout, next_text(&mut stream, &mut bucket, &tx)).await;
    let started = match first {
        Ok(Some(text)) => match signal::parse_client(&text) {
            Ok(ClientMsg::Join { subscribe, from }) => conn.join(subscribe, from).await,
            Ok(ClientMsg::Resume { resume }) => conn.resume(&resume).await,
            Ok(_) => Err((
                "bad_message",
                "the first message must be join or resume".into(),
            )),
            Err(e) => Err(("bad_message", e.to_string())),
        },
        Ok(None) => Err(("closed", String::new())),
        Err(_) => {
            st.refusals.count(crate::limits::Limit::WsFirstMessage);
            Err((
                "timeout",
                format!(
                    "no join or resume within {} ms (limits.ws_first_message_timeout)",
                    first_timeout.as_millis()
                ),
            ))
        }
    };
    let (token, epoch) = match started {
        Ok(x) => x,
        Err((code, message)) => {
            if code != "closed" {
                conn.reply(&ServerMsg::Error {
                    code: code.into(),
                    message,
                    fatal: true,
                });
            }
            drop(conn);
            drop(tx);
            let _ = writer.await;
            return;
        }
    };
    let mut left = false;
    // The node list this session was told, for `nodes` (its welcome's is not kept: the first
    // `ping` repeats it, once).
    let mut told_nodes: Vec<String> = Vec::new();
    loop {
        let text = tokio::select! {
            t = next_text(&mut stream, &mut bucket, &tx) => t,
            _ = killed.wait_for(Option::is_some) => None,
        };
        let Some(text) = text else { break };
        match signal::parse_client(&text) {
            Ok(ClientMsg::Leave) => {
                left = true;
                break;
            }
            Ok(ClientMsg::Ping) => {
                // The page's heartbeat carries the cluster's node set: a node that joined
                // after the welcome is where the page may find its room if this one dies.
                let nodes = cluster_nodes(&st);
                if nodes != told_nodes {
                    conn.reply(&ServerMsg::Nodes {
                        nodes: nodes.clone(),
                    });
                    told_nodes = nodes;
                }
                conn.reply(&ServerMsg::Pong);
            }
            Ok(msg) => conn.handle(&token, msg).await,
            Err(e) => conn.reply(&ServerMsg::Error {
                code: "bad_message".into(),
                message: e.to_string(),
                fatal: false,
            }),
        }
    }
    if left {
        conn.end(&token, "left").await;
    } else {
        conn.detach(&token, epoch);
    }
    drop(conn);
    drop(tx);
    let _ = writer.await;
}

/// The next text frame; `None` when the socket closed or failed, or the client sent frames
/// faster than `limits.ws_messages_per_second` allows (it is then closed).
async fn next_text(
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    bucket: &mut crate::limits::TokenBucket,
    tx: &Outbox,
) -> Option<String> {
    loop {
        let frame = stream.next().await?;
        if !matches!(frame, Ok(Message::Close(_)) | Err(_))
            && !bucket.take(std::time::Instant::now())
        {
            tx.kill(
                crate::limits::Limit::WsMessageRate,
                "too many messages (limits.ws_messages_per_second)",
            );
            return None;
        }
        match frame {
            Ok(Message::Text(t)) => return Some(t.to_string()),
            Err(e) => {
                // axum does not expose the WebSocket library's error kinds; its capacity error
                // reads "Message too long: N > MAX".
                if e.to_string().contains("too long") {
                    tx.ctl.refusals.count(crate::limits::Limit::WsMessageSize);
                }
                return None;
            }
            Ok(Message::Close(_)) => return None,
            Ok(_) => continue,
        }
    }
}

/// Writes the queued messages, then the close frame; a kill (a limit) closes at once.
async fn write_loop(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<String>,
    ctl: Arc<SocketCtl>,
) {
    use axum::extract::ws::CloseFrame;
    let mut killed = ctl.kill.subscribe();
    let frame = |(code, reason): (u16, String)| {
        Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }))
    };
    loop {
        let text = tokio::select! {
            biased;
            _ = killed.wait_for(Option::is_some) => break,
            t = rx.recv() => t,
        };
        let Some(text) = text else {
            let close = ctl.close.lock().unwrap_or_else(|p| p.into_inner()).take();
            match close {
                Some(c) => {
                    let _ = sink.send(frame(c)).await;
                }
                None => {
                    let _ = sink.close().await;
                }
            }
            return;
        };
        tokio::select! {
            biased;
            _ = killed.wait_for(Option::is_some) => break,
            r = sink.send(Message::Text(text.into())) => if r.is_err() { return },
        }
    }
    // Killed: the client may not read, so the close frame gets a moment, then the socket goes.
    rx.close();
    let close = ctl.kill.borrow().clone();
    if let Some(c) = close {
        let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(frame(c))).await;
    }
}

/// One WebSocket connection.
struct Conn {
    st: Arc<AppState>,
    room: RoomId,
    claims: Claims,
    peer: SocketAddr,
    tx: Outbox,
}

type Started = Result<(String, u64), (&'static str, String)>;

impl Conn {
    fn reply(&self, msg: &ServerMsg) {
        let _ = self.tx.send(signal::to_text(msg));
    }

    fn hub(&self) -> &Hub {
        &self.st.ws
    }

    fn send(&self, token: &str, msg: &ServerMsg) {
        if let Some(m) = self.hub().lock().members.get_mut(token) {
            m.send(msg);
        }
    }

    async fn join(&self, subscribe: bool, from: Option<String>) -> Started {
        let from = match from {
            Some(f) => {
                Some(Identity::parse(&f).map_err(|e| ("bad_message", format!("bad `from`: {e}")))?)
            }
            None => None,
        };
        let token = random_token(24);
        let (refused, superseded) = {
            let mut inner = self.hub().lock();
            // A reloaded page: the same participant's earlier session whose socket is away is
            // over (its page is gone). It ends now, quietly, rather than reading as "left"
            // to everyone (the new page included) when its grace period runs out.
            let away: Vec<String> = inner
                .members
                .iter()
                .filter(|(_, m)| {
                    m.tx.is_none()
                        && m.room == self.room
                        && m.identity == self.claims.sub
                        && m.role == self.claims.role
                })
                .map(|(t, _)| t.clone())
                .collect();
            let superseded: Vec<Member> = away
                .iter()
                .filter_map(|t| inner.members.remove(t))
                .collect();
            let fits = self.member_limits(&inner);
            if fits.is_ok() {
                inner.members.insert(
                    token.clone(),
                    Member {
                        room: self.room.clone(),
                        identity: self.claims.sub.clone(),
                        role: self.claims.role,
                        publish: None,
                        subscribe: None,
                        wants_subscribe: false,
                        from,
                        tx: Some(self.tx.clone()),
                        backlog: Vec::new(),
                        queued_offer: None,
                        epoch: 0,
                        backlog_limit: self.st.limits.ws_backlog.get(),
                        refusals: Arc::clone(&self.st.refusals),
                    },
                );
            }
            (fits.err(), superseded)
        };
        for m in superseded {
            self.end_media(m, "superseded by a new session of the same participant")
                .await;
        }
        if let Some((limit, message)) = refused {
            self.st.refusals.count(limit);
            self.tx.close_with(POLICY, limit.as_str());
            return Err(("limit", message));
        }
        let me = participant(&self.claims.sub, self.claims.role);
        self.reply(&ServerMsg::Welcome {
            resume: token.clone(),
            resumed: false,
            grace_ms: self.st.ws_resume_grace.as_millis() as u64,
            identity: self.claims.sub.to_string(),
            role: self.claims.role.to_string(),
            participants: self.hub().participants(&self.room, &token),
            ice_servers: self
                .st
                .ice_servers(std::time::SystemTime::now(), Some(&self.claims)),
            nodes: cluster_nodes(&self.st),
        });
        self.hub()
            .broadcast(&self.room, &token, &ServerMsg::ParticipantJoined(me));
        info!(
            room = %Redacted(&self.room),
            identity = %Redacted(&self.claims.sub),
            role = %self.claims.role,
            "signalling session opened"
        );
        if subscribe {
            self.subscribe(&token).await;
        }
        Ok((token, 0))
    }

    /// Whether one more member fits `limits.ws_members_per_room` and
    /// `limits.ws_members_per_identity` (members away within their grace period count).
    fn member_limits(&self, inner: &HubInner) -> Result<(), (crate::limits::Limit, String)> {
        let limits = &self.st.limits;
        let (mut in_room, mut mine) = (0, 0);
        for m in inner.members.values() {
            in_room += usize::from(m.room == self.room);
            mine += usize::from(m.identity == self.claims.sub);
        }
        if in_room >= limits.ws_members_per_room.get() {
            return Err((
                crate::limits::Limit::WsMembersPerRoom,
                format!("the room has {in_room} signalling members (limits.ws_members_per_room)"),
            ));
        }
        if mine >= limits.ws_members_per_identity.get() {
            return Err((
                crate::limits::Limit::WsMembersPerIdentity,
                format!(
                    "this identity already has {mine} signalling sessions \
                     (limits.ws_members_per_identity); leave one first"
                ),
            ));
        }
        Ok(())
    }

    async fn resume(&self, token: &str) -> Started {
        let (epoch, backlog, subscribe, wants, queued) = {
            let mut inner = self.hub().lock();
            let Some(m) = inner.members.get_mut(token) else {
                return Err((
                    "unknown_session",
                    "no signalling session with this resume token (it ended; join again)".into(),
                ));
            };
            // The same participant in the same role: a token with the same `sub` but another
            // role (an observer's) must not take over a doctor's session.
            if m.room != self.room || m.identity != self.claims.sub || m.role != self.claims.role {
                return Err((
                    "forbidden",
                    "the resume token belongs to another participant, role or room".into(),
                ));
            }
            m.epoch += 1;
            if let Some(old) = m.tx.replace(self.tx.clone()) {
                // The old socket is still open (a fast network change): it is superseded.
                let _ = old.send(signal::to_text(&ServerMsg::Error {
                    code: "superseded".into(),
                    message: "another connection resumed this session".into(),
                    fatal: true,
                }));
            }
            (
                m.epoch,
                std::mem::take(&mut m.backlog),
                m.subscribe,
                m.wants_subscribe,
                m.queued_offer.take(),
            )
        };
        self.reply(&ServerMsg::Welcome {
            resume: token.to_owned(),
            resumed: true,
            grace_ms: self.st.ws_resume_grace.as_millis() as u64,
            identity: self.claims.sub.to_string(),
            role: self.claims.role.to_string(),
            participants: self.hub().participants(&self.room, token),
            ice_servers: self
                .st
                .ice_servers(std::time::SystemTime::now(), Some(&self.claims)),
            nodes: cluster_nodes(&self.st),
        });
        for text in backlog {
            if self.tx.send_wait(text).await.is_err() {
                break;
            }
        }
        self.hub().broadcast(
            &self.room,
            token,
            &ServerMsg::ParticipantResumed(participant(&self.claims.sub, self.claims.role)),
        );
        match subscribe {
            // The offer in flight when the socket dropped may never have arrived (unless the
            // backlog just brought it).
            Some(session) => {
                if let Ok(Some(offer)) = self
                    .st
                    .sfu
                    .outstanding_offer(self.room.clone(), session, false)
                    .await
                {
                    if queued != Some(offer.id) {
                        self.reply(&offer_message(&offer));
                    }
                }
            }
            // The subscription ended meanwhile (ICE gave up): start a new one.
            None if wants => self.subscribe(token).await,
            None => {}
        }
        info!(room = %Redacted(&self.room), identity = %Redacted(&self.claims.sub), "signalling session resumed");
        Ok((token.to_owned(), epoch))
    }

    async fn subscribe(&self, token: &str) {
        if !self.claims.allows(Grant::Subscribe) {
            self.refuse_grant("subscribe");
            return;
        }
        let from = {
            let mut inner = self.hub().lock();
            let Some(m) = inner.members.get_mut(token) else {
                return;
            };
            m.wants_subscribe = true;
            m.from.clone()
        };
        let _reservation = match self.st.reserve_session(&self.claims.sub) {
            Ok(r) => r,
            Err(refused) => return self.reply(&error("limit", &refused.message)),
        };
        let session = SessionId(rand::rng().random());
        let ice_ufrag = random_token(8);
        let req = OfferRequest {
            session,
            identity: self.claims.sub.clone(),
            role: self.claims.role,
            from,
            telemetry: true,
            ice_ufrag: ice_ufrag.clone(),
            ice_pwd: random_token(24),
        };
        let offer = match self.st.sfu.join_offering(self.room.clone(), req).await {
            Ok(o) => o,
            Err(e) => {
                self.media_refused(&e);
                return;
            }
        };
        self.register(session, SessionKind::Subscribe, &ice_ufrag, "");
        let tracks: Vec<TrackInfo> = offer.added.iter().map(|t| t.track.clone()).collect();
        self.audit_join("subscribe", session, &tracks);
        let msgs = offer_messages(&offer);
        if let Some(m) = self.hub().lock().members.get_mut(token) {
            m.subscribe = Some(session);
            m.send(&ServerMsg::Telemetry {
                label: TELEMETRY_LABEL.into(),
                channels: vec![
                    TelemetryChannel {
                        kind: "reliable".into(),
                        protocol: String::new(),
                    },
                    TelemetryChannel {
                        kind: "lossy".into(),
                        protocol: "lossy".into(),
                    },
                ],
            });
            for msg in &msgs {
                m.send(msg);
            }
        }
    }

    async fn handle(&self, token: &str, msg: ClientMsg) {
        match msg {
            ClientMsg::Publish { sdp } => self.publish(token, sdp).await,
            ClientMsg::Answer { offer_id, sdp } => {
                let session = self
                    .hub()
                    .lock()
                    .members
                    .get(token)
                    .and_then(|m| m.subscribe);
                let Some(session) = session else {
                    return self.reply(&error(
                        "no_session",
                        "no subscribe connection to answer for",
                    ));
                };
                if let Err(e) = self
                    .st
                    .sfu
                    .answer(self.room.clone(), session, offer_id, sdp)
                    .await
                {
                    self.reply(&error("bad_answer", &clean_message(&e.to_string())));
                }
            }
            ClientMsg::Candidate { pc, candidate } => self.candidate(token, pc, candidate).await,
            ClientMsg::RestartIce => {
                let session = self
                    .hub()
                    .lock()
                    .members
                    .get(token)
                    .and_then(|m| m.subscribe);
                let Some(session) = session else {
                    return self.reply(&error("no_session", "no subscribe connection to restart"));
                };
                if let Err(refused) = self.st.admit_ice_restart(session) {
                    return self.reply(&error("limit", &refused.message));
                }
                match self
                    .st
                    .sfu
                    .outstanding_offer(self.room.clone(), session, true)
                    .await
                {
                    Ok(Some(offer)) => {
                        self.send(token, &offer_message(&offer));
                        self.st.audit(
                            "ice_restart",
                            &self.room,
                            &self.claims.sub,
                            Some(self.claims.role),
                            Some(self.peer),
                            "subscribe (signalling)",
                        );
                    }
                    Ok(None) => {}
                    Err(e) => self.reply(&error("no_session", &e.to_string())),
                }
            }
            ClientMsg::Ping => self.reply(&ServerMsg::Pong),
            ClientMsg::RelayProtocol { pc, protocol } => {
                self.relay_protocol(token, pc, &protocol).await
            }
            ClientMsg::Join { .. } | ClientMsg::Resume { .. } => {
                self.reply(&error("bad_message", "already joined"))
            }
            ClientMsg::Leave => {}
            ClientMsg::AllowCommands { identity, allow } => self.allow_commands(&identity, allow),
            _ => self.reply(&error("bad_message", "unsupported message")),
        }
    }

    /// A doctor of the room allows (or no longer) an assistant to operate the devices; the
    /// room is told, the change audited as the doctor. Any other role is refused (audited).
    fn allow_commands(&self, identity: &str, allow: bool) {
        if !crate::invite::may_invite(&self.claims, &self.room) {
            self.refuse_grant("allow an assistant to operate the devices");
            return;
        }
        let Ok(assistant) = Identity::parse(identity) else {
            return self.reply(&error("bad_message", "bad `identity`"));
        };
        // Only an assistant present in the room (on signalling or with a media session) is
        // allowed: the allowances of a room stay as few as its participants.
        let present = |room: &RoomId, identity: &Identity, role: Role| {
            room == &self.room && identity == &assistant && role == Role::Assistant
        };
        if allow
            && !self
                .hub()
                .lock()
                .members
                .values()
                .any(|m| present(&m.room, &m.identity, m.role))
            && !self
                .st
                .sessions_lock()
                .values()
                .any(|e| present(&e.room, &e.identity, e.role))
        {
            return self.reply(&error(
                "no_participant",
                "no assistant with this identity is in the room",
            ));
        }
        self.st
            .consultations
            .allow_commands(&self.room, &assistant, allow);
        self.st.audit(
            if allow {
                "commands_allowed"
            } else {
                "commands_revoked"
            },
            &self.room,
            &self.claims.sub,
            Some(self.claims.role),
            Some(self.peer),
            &format!(
                "{} {assistant} to operate the devices",
                if allow { "allowed" } else { "no longer allows" }
            ),
        );
        self.hub().broadcast_room(
            &self.room,
            &ServerMsg::CommandsAllowed {
                identity: assistant.to_string(),
                allowed: allow,
            },
        );
    }

    /// The page reports how it reaches its TURN relay on one of its own connections; accepted
    /// only while the server sees that session's selected pair as relayed.
    async fn relay_protocol(&self, token: &str, pc: Pc, protocol: &str) {
        let Some(protocol) = cabine_sfu::room::TransportProtocol::parse_relay(protocol) else {
            return self.reply(&error(
                "bad_message",
                "relay protocol must be udp, tcp or tls",
            ));
        };
        let session = self.hub().lock().members.get(token).and_then(|m| match pc {
            Pc::Publish => m.publish,
            Pc::Subscribe => m.subscribe,
        });
        let Some(session) = session else {
            return self.reply(&error("no_session", "no such connection of yours"));
        };
        match self
            .st
            .sfu
            .report_relay_protocol(self.room.clone(), session, protocol, true)
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.reply(&error("not_relayed", &e.to_string())),
            Err(e) => self.reply(&error("no_session", &e.to_string())),
        }
    }

    /// A candidate the page trickled: the server is ICE-lite and learns the page's addresses
    /// from its connectivity checks, but a relay candidate gathered after the SDP left tells it
    /// that the path it sees is relayed (the report of `relay_protocol` needs that). A
    /// candidate for a connection the server does not know (yet, or any more) is ignored.
    async fn candidate(&self, token: &str, pc: Pc, candidate: String) {
        if candidate.len() > MAX_CANDIDATE_LEN {
            return self.reply(&error("bad_message", "candidate too long"));
        }
        let session = self.hub().lock().members.get(token).and_then(|m| match pc {
            Pc::Publish => m.publish,
            Pc::Subscribe => m.subscribe,
        });
        if let Some(session) = session {
            let _ = self
                .st
                .sfu
                .learn_candidate(self.room.clone(), session, candidate)
                .await;
        }
    }

    async fn publish(&self, token: &str, sdp: String) {
        if !self.claims.allows(Grant::Publish) {
            self.refuse_grant("publish");
            return;
        }
        if sdp.trim().is_empty() {
            return self.reply(&error("bad_sdp", "empty SDP offer"));
        }
        let existing = self.hub().lock().members.get(token).and_then(|m| m.publish);
        let result = match existing {
            Some(session) => {
                let r = self
                    .st
                    .sfu
                    .republish(self.room.clone(), session, sdp.clone())
                    .await;
                if r.is_ok() {
                    if let (Some(ufrag), Some(e)) = (
                        sdp_attr(&sdp, "a=ice-ufrag:"),
                        self.st.sessions_lock().get_mut(&session),
                    ) {
                        if e.client_ufrag != ufrag {
                            e.client_ufrag = ufrag;
                            self.st.audit(
                                "ice_restart",
                                &self.room,
                                &self.claims.sub,
                                Some(self.claims.role),
                                Some(self.peer),
                                "publish (signalling)",
                            );
                        }
                    }
                }
                r
            }
            None => {
                if self.st.draining.load(Ordering::Relaxed) {
                    self.st.count_refusal("draining");
                    return self.reply(&error("draining", "this node is shutting down"));
                }
                let _reservation = match self.st.reserve_session(&self.claims.sub) {
                    Ok(r) => r,
                    Err(refused) => return self.reply(&error("limit", &refused.message)),
                };
                let session = SessionId(rand::rng().random());
                let ice_ufrag = random_token(8);
                let req = JoinRequest {
                    session,
                    identity: self.claims.sub.clone(),
                    role: self.claims.role,
                    kind: SessionKind::Publish,
                    offer: sdp.clone(),
                    from: None,
                    ice_ufrag: ice_ufrag.clone(),
                    ice_pwd: random_token(24),
                };
                let r = self.st.sfu.join(self.room.clone(), req).await;
                if let Ok(j) = &r {
                    let client = sdp_attr(&sdp, "a=ice-ufrag:").unwrap_or_default();
                    self.register(session, SessionKind::Publish, &ice_ufrag, &client);
                    self.audit_join("publish", session, &j.tracks);
                    if let Some(m) = self.hub().lock().members.get_mut(token) {
                        m.publish = Some(session);
                    }
                }
                r
            }
        };
        match result {
            Ok(joined) => {
                let tracks = joined
                    .tracks
                    .iter()
                    .map(|t| track(String::new(), &self.claims.sub, Some(self.claims.role), t))
                    .collect();
                self.send(
                    token,
                    &ServerMsg::Answer {
                        sdp: joined.answer,
                        tracks,
                    },
                );
            }
            Err(e) => self.media_refused(&e),
        }
    }

    fn register(&self, session: SessionId, kind: SessionKind, ufrag: &str, client_ufrag: &str) {
        self.st.sessions_lock().insert(
            session,
            SessionEntry {
                room: self.room.clone(),
                identity: self.claims.sub.clone(),
                role: self.claims.role,
                kind,
                etag: format!("\"{ufrag}\""),
                client_ufrag: client_ufrag.to_owned(),
                claims: self.claims.clone(),
                // Known from the media once it flows (the WHEP codec check reads it there).
                video_codecs: Vec::new(),
                restarts: Default::default(),
                data_requests: None,
            },
        );
        self.st.joins.fetch_add(1, Ordering::Relaxed);
    }

    fn audit_join(&self, action: &'static str, session: SessionId, tracks: &[TrackInfo]) {
        self.st
            .start_spans(session, action, self.claims.role, &self.room);
        self.st.audit(
            action,
            &self.room,
            &self.claims.sub,
            Some(self.claims.role),
            Some(self.peer),
            &format!("{} (signalling)", describe(tracks)),
        );
    }

    fn refuse_grant(&self, action: &'static str) {
        let e = cabine_proto::jwt::AuthError::Forbidden {
            role: self.claims.role,
            action,
        };
        self.st.count_refusal(e.reason());
        self.st.audit_refusal(
            self.room.as_str(),
            self.claims.sub.as_str(),
            Some(self.claims.role),
            self.peer,
            &e,
        );
        self.reply(&error("forbidden", &e.to_string()));
    }

    fn media_refused(&self, e: &SfuError) {
        let message = clean_message(&e.to_string());
        let code = match e {
            SfuError::Join(cabine_sfu::JoinError::RoomFull(_)) => "room_full",
            SfuError::Join(cabine_sfu::JoinError::NoUsableMedia(_)) => "no_usable_codec",
            SfuError::Join(e) if e.is_client_fault() => "bad_sdp",
            SfuError::Join(_) => "internal",
            _ => "media_plane_down",
        };
        self.st.count_refusal(code);
        self.st.audit(
            "refused",
            &self.room,
            &self.claims.sub,
            Some(self.claims.role),
            Some(self.peer),
            &format!("{code}: {message}"),
        );
        self.reply(&error(code, &message));
    }

    /// The socket dropped without `leave`: keep the session for `http.ws_resume_grace`.
    fn detach(&self, token: &str, epoch: u64) {
        {
            let mut inner = self.hub().lock();
            let Some(m) = inner.members.get_mut(token) else {
                return;
            };
            if m.epoch != epoch {
                return; // Already taken over by a newer socket.
            }
            m.tx = None;
        }
        // Another live session of the same participant (a page reloaded before the server saw
        // the old socket close): the participant has not lost its connection.
        if !self
            .hub()
            .present(&self.room, &self.claims.sub, self.claims.role, token, true)
        {
            self.hub().broadcast(
                &self.room,
                token,
                &ServerMsg::ParticipantDisconnected(participant(
                    &self.claims.sub,
                    self.claims.role,
                )),
            );
        }
        // The timer must not hold this socket's writer open (its close would wait 30 s).
        let conn = Conn {
            st: Arc::clone(&self.st),
            room: self.room.clone(),
            claims: self.claims.clone(),
            peer: self.peer,
            tx: Outbox::gone(),
        };
        let token = token.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(conn.st.ws_resume_grace).await;
            let still_away = conn
                .hub()
                .lock()
                .members
                .get(&token)
                .is_some_and(|m| m.epoch == epoch && m.tx.is_none());
            if still_away {
                conn.end(&token, "signalling lost for longer than the grace period")
                    .await;
            }
        });
    }

    /// Ends the signalling session and its media sessions.
    async fn end(&self, token: &str, reason: &str) {
        let Some(m) = self.hub().lock().members.remove(token) else {
            return;
        };
        let (room, identity, role) = (m.room.clone(), m.identity.clone(), m.role);
        self.end_media(m, reason).await;
        // The participant is still here through another session (a reloaded page): not "left".
        if !self.hub().present(&room, &identity, role, token, false) {
            self.hub().broadcast(
                &room,
                token,
                &ServerMsg::ParticipantLeft(participant(&identity, role)),
            );
        }
    }

    /// Ends the media sessions of a member already taken out of the hub, with the audit lines.
    async fn end_media(&self, m: Member, reason: &str) {
        for session in [m.publish, m.subscribe].into_iter().flatten() {
            let _ = self.st.sfu.leave(m.room.clone(), session).await;
            let known = self.st.sessions_lock().remove(&session).is_some();
            self.st.end_spans(session);
            if known {
                self.st.audit(
                    "leave",
                    &m.room,
                    &m.identity,
                    Some(m.role),
                    Some(self.peer),
                    reason,
                );
            }
        }
        info!(room = %Redacted(&m.room), identity = %Redacted(&m.identity), reason, "signalling session ended");
    }
}

fn participant(identity: &Identity, role: Role) -> Participant {
    Participant {
        identity: identity.to_string(),
        role: role.to_string(),
    }
}

fn error(code: &str, message: &str) -> ServerMsg {
    ServerMsg::Error {
        code: code.into(),
        message: message.into(),
        fatal: false,
    }
}

fn track(mid: String, from: &Identity, role: Option<Role>, t: &TrackInfo) -> Track {
    let class = serde_json::to_value(t.class)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    Track {
        mid,
        from: from.to_string(),
        kind: t.kind.to_owned(),
        label: t.label.track.clone(),
        stream: t.label.stream.clone(),
        class,
        role: role.map(|r| r.to_string()).unwrap_or_default(),
    }
}

fn offered(t: &OfferedTrack) -> Track {
    track(t.mid.clone(), &t.from, Some(t.role), &t.track)
}

fn offer_message(offer: &Offer) -> ServerMsg {
    ServerMsg::Offer {
        offer_id: offer.id,
        sdp: offer.sdp.clone(),
    }
}

/// What a subscriber is sent for an offer: the tracks it removes and adds, then the offer.
fn offer_messages(offer: &Offer) -> Vec<ServerMsg> {
    let mut out: Vec<ServerMsg> = offer
        .removed
        .iter()
        .map(|t| ServerMsg::TrackRemoved(offered(t)))
        .collect();
    out.extend(
        offer
            .added
            .iter()
            .map(|t| ServerMsg::TrackAdded(offered(t))),
    );
    out.push(offer_message(offer));
    out
}
