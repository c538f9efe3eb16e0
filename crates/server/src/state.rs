//! Shared state of the HTTP layer: the session table, refusal counters, tracing spans of
//! sessions, the audit hook, and the handles every handler needs (tokens, media plane,
//! telemetry, the WebSocket hub, the operators' sampler).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};

use cabine_proto::{Claims, Identity, Redacted, Role, RoomId};
use cabine_sfu::{SessionId, SessionKind, Sfu};

use crate::config::Config;
use crate::sampler::OpsSampler;
use crate::ws;
use cabine_proto::jwt::{AuthError, Tokens};

/// Label of the data channel subscribers write telemetry requests and device commands on.
pub const COMMANDS_LABEL: &str = "commands";

/// Shared state of the HTTP layer.
/// Identities tracked for `limits.turn_credentials_per_minute` before the idle ones are
/// forgotten.
const TURN_MINT_IDENTITIES: usize = 4096;

pub struct AppState {
    pub(crate) tokens: Tokens,
    pub(crate) sfu: Sfu,
    pub(crate) sessions: Mutex<HashMap<SessionId, SessionEntry>>,
    /// Set during shutdown: new sessions are refused and readiness fails.
    pub draining: AtomicBool,
    /// Notified by `POST /api/drain`: the process drains (moves its rooms) and exits.
    pub drain_requested: tokio::sync::Notify,
    pub(crate) public_url: String,
    /// How long a dropped WebSocket signalling session waits to be resumed.
    pub ws_resume_grace: std::time::Duration,
    pub(crate) refused: Mutex<HashMap<&'static str, u64>>,
    pub(crate) joins: AtomicU64,
    pub(crate) audit: crate::audit::Audit,
    pub(crate) spans: Mutex<HashMap<SessionId, SessionSpans>>,
    /// The telemetry sidecar, once started (absent when `telemetry.listen` is empty).
    pub(crate) telemetry: std::sync::OnceLock<Arc<crate::telemetry::Telemetry>>,
    pub(crate) ops: OpsSampler,
    pub(crate) ws: ws::Hub,
    /// The static STUN/TURN servers of `[ice] servers`, offered to every client.
    pub(crate) static_ice: Vec<cabine_proto::signal::IceServer>,
    /// TURN credentials minted per identity in the last minute
    /// (`limits.turn_credentials_per_minute`).
    pub(crate) turn_mints: Mutex<HashMap<Identity, crate::limits::RateWindow>>,
    /// TURN credentials (`[turn]`), when configured.
    pub(crate) turn: Option<crate::turn::Turn>,
    /// Origins allowed to call the APIs from a browser (`http.cors_origins`).
    pub(crate) cors_origins: Vec<axum::http::HeaderValue>,
    /// `[limits]`.
    pub(crate) limits: crate::limits::LimitsConfig,
    /// Refusals by limit (exported as `cabine_limits_refused_total`).
    pub(crate) refusals: Arc<crate::limits::Refusals>,
    /// Open `/api/ops/stream` event streams.
    pub(crate) sse_clients: std::sync::atomic::AtomicUsize,
    pub(crate) anonymous: Mutex<crate::anon_audit::AnonymousAudit>,
    /// Media sessions being opened, by identity (see [`AppState::reserve_session`]).
    pub(crate) opening: Mutex<HashMap<Identity, usize>>,
    /// This node's side of the cluster (alone: every room is local).
    pub(crate) cluster: Arc<crate::cluster::Cluster>,
    /// Invite links (in the cluster's store when there is one).
    pub(crate) invites: crate::invite::Invites,
    /// Per-room assistants allowed to operate devices, and shared stills.
    pub(crate) consultations: crate::consultation::Consultations,
    /// The walk-in queue and the fleet (in the cluster's store when clustered).
    pub(crate) queue: Arc<crate::queue::Queue>,
    /// The FHIR export, when `fhir.endpoint` is set.
    pub(crate) fhir: std::sync::OnceLock<Arc<crate::fhir::Fhir>>,
}

/// A media session being opened (counted against `limits.sessions_per_identity`).
pub(crate) struct SessionReservation<'a> {
    st: &'a AppState,
    identity: Identity,
}

impl Drop for SessionReservation<'_> {
    fn drop(&mut self) {
        let mut opening = self.st.opening.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = opening.get_mut(&self.identity) {
            *n -= 1;
            if *n == 0 {
                opening.remove(&self.identity);
            }
        }
    }
}

/// The open tracing spans of a session: the session itself and the setup stage in progress
/// (`ice`, then `dtls`, then `first_media`), so a trace shows where a slow join spent its time.
pub(crate) struct SessionSpans {
    pub(crate) _session: tracing::Span,
    pub(crate) stage: Option<tracing::Span>,
}

#[derive(Debug, Clone)]
pub(crate) struct SessionEntry {
    pub(crate) room: RoomId,
    pub(crate) identity: Identity,
    pub(crate) role: Role,
    pub(crate) kind: SessionKind,
    pub(crate) etag: String,
    /// The client's current ICE ufrag (a PATCH with another one is an ICE restart).
    pub(crate) client_ufrag: String,
    /// The claims the session was opened with (grants for device commands).
    pub(crate) claims: Claims,
    /// A publisher's video codecs (upper case), for WHEP codec checks: those its WHIP answer
    /// allowed, then the ones its media actually uses once the sampler has seen them flow
    /// ([`AppState::note_codecs`]), so a WHEP offer never needs to snapshot the media plane.
    pub(crate) video_codecs: Vec<String>,
    /// Its recent ICE restarts (`limits.ice_restarts_per_minute`).
    pub(crate) restarts: crate::limits::RateWindow,
    /// Its data-channel requests (`limits.data_requests_per_second`), from the first one.
    pub(crate) data_requests: Option<crate::limits::TokenBucket>,
}

impl AppState {
    /// State for a server with `cfg`, over a started media plane, in `cluster`.
    pub fn new(
        cfg: &Config,
        sfu: Sfu,
        audit: crate::audit::Audit,
        cluster: Arc<crate::cluster::Cluster>,
    ) -> Self {
        let mut invites_cfg = cfg.invites.clone();
        invites_cfg.token_ttl = invites_cfg.token_ttl.min(cfg.auth.max_ttl);
        let invites = crate::invite::Invites::new(
            &invites_cfg,
            &cfg.cluster.redis_url,
            cfg.auth.secret.as_bytes(),
        )
        .unwrap_or_else(|e| {
            // `Config::check` refused an unusable Redis URL already; the node goes on alone.
            tracing::error!("invites kept in memory: {e}");
            crate::invite::Invites::with_store(
                &invites_cfg,
                Arc::new(crate::cluster::invite_store::MemoryInviteStore::new()),
                cfg.auth.secret.as_bytes(),
            )
        });
        AppState {
            invites,
            consultations: Default::default(),
            cluster,
            queue: Arc::new(crate::queue::Queue::new(
                &cfg.queue,
                queue_store(cfg),
                cfg.auth.secret.as_bytes(),
            )),
            tokens: cfg.auth.tokens(),
            sfu,
            sessions: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            drain_requested: tokio::sync::Notify::new(),
            public_url: cfg.http.public_url.trim_end_matches('/').to_owned(),
            ws_resume_grace: cfg.http.ws_resume_grace,
            refused: Mutex::new(HashMap::new()),
            joins: AtomicU64::new(0),
            audit,
            spans: Mutex::new(HashMap::new()),
            telemetry: std::sync::OnceLock::new(),
            fhir: std::sync::OnceLock::new(),
            ws: ws::Hub::default(),
            ops: OpsSampler::default(),
            // Checked by `Config::check` (stun:/turn: URLs, plain origins); a value that is not
            // a valid header is left out rather than sent malformed.
            turn_mints: Mutex::new(HashMap::new()),
            static_ice: cfg
                .ice
                .servers
                .iter()
                .map(|u| cabine_proto::signal::IceServer {
                    urls: vec![u.clone()],
                    username: None,
                    credential: None,
                })
                .collect(),
            // Checked by `Config::check`; a section that became unusable since (its secret file
            // went away) turns TURN off with an error in the log rather than stopping a start.
            turn: cfg.turn.load().unwrap_or_else(|e| {
                tracing::error!("TURN disabled: {e}");
                None
            }),
            cors_origins: cfg
                .http
                .cors_origins
                .iter()
                .filter_map(|o| axum::http::HeaderValue::from_str(o).ok())
                .collect(),
            limits: cfg.limits.clone(),
            refusals: Arc::default(),
            sse_clients: std::sync::atomic::AtomicUsize::new(0),
            opening: Mutex::new(HashMap::new()),
            anonymous: Mutex::new(crate::anon_audit::AnonymousAudit::new(
                cfg.limits.anonymous_audit_interval,
                cfg.limits.anonymous_audit_sources.get(),
                cfg.limits.anonymous_audit_lines.get(),
                std::time::Instant::now(),
            )),
        }
    }

    /// Attaches the started telemetry sidecar.
    pub fn set_telemetry(&self, t: Arc<crate::telemetry::Telemetry>) {
        let _ = self.telemetry.set(t);
    }

    /// The telemetry sidecar, if enabled.
    pub fn telemetry(&self) -> Option<&Arc<crate::telemetry::Telemetry>> {
        self.telemetry.get()
    }

    /// Attaches the started FHIR export.
    pub fn set_fhir(&self, f: Arc<crate::fhir::Fhir>) {
        let _ = self.fhir.set(f);
    }

    /// The FHIR export, if on.
    pub fn fhir(&self) -> Option<&Arc<crate::fhir::Fhir>> {
        self.fhir.get()
    }

    /// The ICE servers for a new session: `[ice] servers`, then, for a caller with a token
    /// (`claims`), the `[turn]` URLs with a credential minted now ([`Self::turn_server`]; left
    /// out, counted, beyond `limits.turn_credentials_per_minute`).
    pub fn ice_servers(
        &self,
        now: std::time::SystemTime,
        claims: Option<&Claims>,
    ) -> Vec<cabine_proto::signal::IceServer> {
        let mut servers = self.static_ice.clone();
        if let Some(Ok(Some((turn, _)))) = claims.map(|c| self.turn_server(now, c)) {
            servers.push(turn);
        }
        servers
    }

    /// The `[turn]` entry for the holder of `claims` with a fresh credential and its expiry,
    /// which is the token's at the latest (a credential never outlives the token it was
    /// minted for); `None` without TURN; refused (429) beyond
    /// `limits.turn_credentials_per_minute` credentials for the identity.
    pub(crate) fn turn_server(
        &self,
        now: std::time::SystemTime,
        claims: &Claims,
    ) -> Result<
        Option<(cabine_proto::signal::IceServer, std::time::SystemTime)>,
        crate::limits::Refused,
    > {
        let Some(turn) = &self.turn else {
            return Ok(None);
        };
        let max = self.limits.turn_credentials_per_minute;
        let minute = std::time::Duration::from_secs(60);
        let at = std::time::Instant::now();
        let admitted = {
            let mut mints = self.turn_mints.lock().unwrap_or_else(|p| p.into_inner());
            if mints.len() >= TURN_MINT_IDENTITIES {
                // Forget the identities with no credential in the last minute.
                mints.retain(|_, w| !w.idle(at, minute));
            }
            mints
                .entry(claims.sub.clone())
                .or_default()
                .admit(at, max.get(), minute)
        };
        if let Err(wait) = admitted {
            return Err(self.refuse(
                crate::limits::Limit::TurnCredentialRate,
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many TURN credentials for this identity \
                     (limits.turn_credentials_per_minute = {max})"
                ),
                Some(wait.as_secs().max(1)),
            ));
        }
        let not_after = std::time::UNIX_EPOCH + std::time::Duration::from_secs(claims.exp);
        Ok(Some(turn.ice_server(now, Some(not_after))))
    }

    /// This node's side of the cluster.
    pub fn cluster(&self) -> &Arc<crate::cluster::Cluster> {
        &self.cluster
    }

    /// Live rooms (media sessions and signalling members in each).
    pub fn live_rooms(&self) -> HashMap<RoomId, u32> {
        let mut rooms = self.ws.members_by_room();
        for e in self.sessions_lock().values() {
            *rooms.entry(e.room.clone()).or_default() += 1;
        }
        rooms
    }

    /// Open sessions.
    pub fn session_count(&self) -> usize {
        self.sessions_lock().len()
    }

    /// Closes every open session; returns how many there were.
    pub async fn close_all(&self) -> usize {
        let all: Vec<(SessionId, SessionEntry)> = self.sessions_lock().drain().collect();
        for (id, e) in &all {
            let _ = self.sfu.leave(e.room.clone(), *id).await;
            self.audit(
                "leave",
                &e.room,
                &e.identity,
                Some(e.role),
                None,
                "server shutdown",
            );
        }
        all.len()
    }

    pub(crate) fn sessions_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<SessionId, SessionEntry>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts and
        // removes), so a poisoned lock is still usable.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn spans_lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, SessionSpans>> {
        self.spans.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn start_spans(
        &self,
        session: SessionId,
        kind: &'static str,
        role: Role,
        room: &RoomId,
    ) {
        let span = tracing::info_span!(
            "session",
            kind,
            role = %role,
            session = %session,
            room = %Redacted(room),
        );
        let ice = tracing::info_span!(parent: &span, "ice");
        self.spans_lock().insert(
            session,
            SessionSpans {
                _session: span,
                stage: Some(ice),
            },
        );
    }

    pub(crate) fn end_spans(&self, session: SessionId) {
        self.spans_lock().remove(&session);
    }

    /// Refused requests by reason, since start.
    pub fn refused_counts(&self) -> HashMap<&'static str, u64> {
        self.refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn count_refusal(&self, reason: &'static str) {
        *self
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason)
            .or_default() += 1;
    }
}

/// The queue's store: Redis when clustered (the URL was checked by the cluster side; should it
/// fail here, the queue is this node's alone, said in the log), else in memory.
fn queue_store(cfg: &Config) -> Arc<dyn crate::cluster::QueueStore> {
    if cfg.cluster.clustered() {
        match crate::cluster::RedisQueueStore::new(&cfg.cluster.redis_url) {
            Ok(s) => return Arc::new(s),
            Err(e) => tracing::error!("the queue is not shared: cluster.redis_url: {e}"),
        }
    }
    Arc::new(crate::cluster::MemoryQueueStore::new())
}

impl AppState {
    /// The walk-in queue.
    pub fn queue(&self) -> &Arc<crate::queue::Queue> {
        &self.queue
    }

    /// The audit log (to flush it at shutdown).
    pub fn audit_log(&self) -> &crate::audit::Audit {
        &self.audit
    }

    /// Writes an audit record: who did what in which room, from where. Identities appear in
    /// clear here and only here; the audit sink is access-controlled.
    pub(crate) fn audit(
        &self,
        event: &str,
        room: &RoomId,
        identity: &Identity,
        role: Option<Role>,
        peer: Option<SocketAddr>,
        detail: &str,
    ) {
        let role = role.map(|r| r.to_string());
        self.audit.record(
            event,
            room.as_str(),
            identity.as_str(),
            role.as_deref(),
            peer,
            detail,
        );
    }

    /// Refusals by limit, since start.
    pub fn limit_refusals(&self) -> &Arc<crate::limits::Refusals> {
        &self.refusals
    }

    /// Counts a refusal by `limit` and builds its answer.
    pub(crate) fn refuse(
        &self,
        limit: crate::limits::Limit,
        status: axum::http::StatusCode,
        message: String,
        retry_after: Option<u64>,
    ) -> crate::limits::Refused {
        self.refusals.count(limit);
        crate::limits::Refused {
            limit,
            status,
            message,
            retry_after,
        }
    }

    /// Reserves a new media session of `identity`, or refuses it when the identity already
    /// holds (or is opening) `limits.sessions_per_identity`. Keep the reservation until the
    /// session is in the session table (or failed): concurrent joins cannot slip past the cap.
    pub(crate) fn reserve_session(
        &self,
        identity: &Identity,
    ) -> Result<SessionReservation<'_>, crate::limits::Refused> {
        let max = self.limits.sessions_per_identity.get();
        // Lock order: reservations, then sessions (nowhere else takes both).
        let mut opening = self.opening.lock().unwrap_or_else(|p| p.into_inner());
        let held = self
            .sessions_lock()
            .values()
            .filter(|e| &e.identity == identity)
            .count()
            + opening.get(identity).copied().unwrap_or(0);
        if held >= max {
            drop(opening);
            return Err(self.refuse(
                crate::limits::Limit::SessionsPerIdentity,
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "this identity already holds {held} media sessions \
                     (limits.sessions_per_identity = {max}); end one first"
                ),
                None,
            ));
        }
        *opening.entry(identity.clone()).or_default() += 1;
        Ok(SessionReservation {
            st: self,
            identity: identity.clone(),
        })
    }

    /// Admits an ICE restart of `session`, or refuses it (429) beyond
    /// `limits.ice_restarts_per_minute`.
    pub(crate) fn admit_ice_restart(
        &self,
        session: SessionId,
    ) -> Result<(), crate::limits::Refused> {
        let max = self.limits.ice_restarts_per_minute;
        let admitted = match self.sessions_lock().get_mut(&session) {
            Some(e) => e.restarts.admit(
                std::time::Instant::now(),
                max.get(),
                std::time::Duration::from_secs(60),
            ),
            None => Ok(()),
        };
        admitted.map_err(|wait| {
            self.refuse(
                crate::limits::Limit::IceRestartRate,
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many ICE restarts of this session (limits.ice_restarts_per_minute = {max})"
                ),
                Some(wait.as_secs().max(1)),
            )
        })
    }

    /// Records the video codecs each publisher's media uses, from the sampler's snapshot (once
    /// per period, not per WHEP offer).
    pub(crate) fn note_codecs(&self, rooms: &[cabine_sfu::room::RoomSnapshot]) {
        let mut sessions = self.sessions_lock();
        for s in rooms.iter().flat_map(|r| &r.sessions) {
            let Some(e) = sessions.get_mut(&s.id) else {
                continue;
            };
            if e.kind != SessionKind::Publish {
                continue;
            }
            let in_use = || {
                s.published
                    .iter()
                    .filter(|p| p.track.kind == "video")
                    .filter_map(|p| p.codec.as_deref())
            };
            let same = in_use().count() == e.video_codecs.len()
                && in_use()
                    .zip(&e.video_codecs)
                    .all(|(a, b)| a.eq_ignore_ascii_case(b));
            if in_use().next().is_some() && !same {
                e.video_codecs = in_use().map(str::to_ascii_uppercase).collect();
            }
        }
    }

    /// Writes the summaries of anonymous refusals whose interval ended (`all`: every one, at
    /// shutdown).
    pub fn flush_anonymous_audit(&self, all: bool) {
        let summaries = self
            .anonymous
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sweep(std::time::Instant::now(), all);
        for s in summaries {
            self.audit_anonymous_summary(&s);
        }
    }

    fn audit_anonymous_summary(&self, s: &crate::anon_audit::Summary) {
        self.audit.record(
            "refused_anonymous",
            "-",
            "-",
            None,
            None,
            &format!(
                "anonymous_refusals: {} more refused requests without a valid token from {} \
                 in {} ms (limits.anonymous_audit_interval, limits.anonymous_audit_lines)",
                s.count,
                s.source,
                s.over.as_millis()
            ),
        );
    }

    /// Whether a refusal of a request without a token from `peer` gets its own audit line:
    /// one per source and interval, the rest counted (and summarised when the interval ends).
    pub(crate) fn admit_anonymous_audit(&self, peer: SocketAddr) -> bool {
        let admission = self
            .anonymous
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .refusal(peer.ip(), std::time::Instant::now());
        for s in &admission.summaries {
            self.audit_anonymous_summary(s);
        }
        if !admission.write {
            self.refusals.count(if admission.capped {
                crate::limits::Limit::AnonymousAuditLines
            } else {
                crate::limits::Limit::AnonymousAudit
            });
        }
        admission.write
    }

    pub(crate) fn audit_refusal(
        &self,
        room: &str,
        identity: &str,
        role: Option<Role>,
        peer: SocketAddr,
        e: &AuthError,
    ) {
        if identity == "-" && role.is_none() && !self.admit_anonymous_audit(peer) {
            return;
        }
        let role = role.map(|r| r.to_string());
        self.audit.record(
            "refused",
            room,
            identity,
            role.as_deref(),
            Some(peer),
            &format!("{}: {e}", e.reason()),
        );
    }
}
