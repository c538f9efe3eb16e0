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
pub struct AppState {
    pub(crate) tokens: Tokens,
    pub(crate) sfu: Sfu,
    pub(crate) sessions: Mutex<HashMap<SessionId, SessionEntry>>,
    /// Set during shutdown: new sessions are refused and readiness fails.
    pub draining: AtomicBool,
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
    /// `Link: <url>; rel="ice-server"` values for WHIP/WHEP (`[ice] servers`).
    pub(crate) ice_links: Vec<axum::http::HeaderValue>,
    /// Origins allowed to call the APIs from a browser (`http.cors_origins`).
    pub(crate) cors_origins: Vec<axum::http::HeaderValue>,
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
    /// WHIP: the video codecs its answer allowed (upper case), for WHEP codec checks.
    pub(crate) video_codecs: Vec<String>,
}

impl AppState {
    /// State for a server with `cfg`, over a started media plane.
    pub fn new(cfg: &Config, sfu: Sfu, audit: crate::audit::Audit) -> Self {
        AppState {
            tokens: cfg.auth.tokens(),
            sfu,
            sessions: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            public_url: cfg.http.public_url.trim_end_matches('/').to_owned(),
            ws_resume_grace: cfg.http.ws_resume_grace,
            refused: Mutex::new(HashMap::new()),
            joins: AtomicU64::new(0),
            audit,
            spans: Mutex::new(HashMap::new()),
            telemetry: std::sync::OnceLock::new(),
            ws: ws::Hub::default(),
            ops: OpsSampler::default(),
            // Checked by `Config::check` (stun:/turn: URLs, plain origins); a value that is not
            // a valid header is left out rather than sent malformed.
            ice_links: cfg
                .ice
                .servers
                .iter()
                .filter_map(|u| {
                    axum::http::HeaderValue::from_str(&format!("<{u}>; rel=\"ice-server\"")).ok()
                })
                .collect(),
            cors_origins: cfg
                .http
                .cors_origins
                .iter()
                .filter_map(|o| axum::http::HeaderValue::from_str(o).ok())
                .collect(),
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

impl AppState {
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

    pub(crate) fn audit_refusal(
        &self,
        room: &str,
        identity: &str,
        role: Option<Role>,
        peer: SocketAddr,
        e: &AuthError,
    ) {
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
