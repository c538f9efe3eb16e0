//! Limits on what a client can make the server hold: the `[limits]` configuration, the
//! refusal counters behind the `cabine_limits_refused_total{limit}` metric, and the JSON
//! refusal every HTTP route answers with when a limit is reached.
//!
//! Where each limit is enforced:
//! - HTTP connections, header-read and idle timeouts: [`crate::http::serve`];
//! - WebSocket outbound queue, inbound message rate, members per room and per identity:
//!   [`crate::ws`];
//! - media sessions per identity, ICE restarts per session: [`crate::http::whip`] and
//!   [`crate::ws`];
//! - dashboards on `/api/ops/stream`: [`crate::http::ops`];
//! - data-channel requests per session: [`crate::events`];
//! - audit lines per anonymous source and over the node: [`crate::anon_audit`];
//! - TURN credentials per identity: [`crate::state::AppState::ice_servers`];
//! - invite links per room, shared stills per room and their size: [`crate::http::invites`],
//!   [`crate::http::stills`].

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

/// `[limits]`: every resource a client can make the server hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// HTTP connections held at once (lowered to fit the process's open-file limit).
    pub http_connections: NonZeroUsize,
    /// Time a connection has to send a request's headers (and to finish a TLS handshake).
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A connection with no byte in either direction for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Messages queued towards one WebSocket client before it is closed as a slow reader.
    pub ws_queue: NonZeroUsize,
    /// Messages per second a WebSocket client may send, on average.
    pub ws_messages_per_second: NonZeroU32,
    /// Messages a WebSocket client may send at once above the average.
    pub ws_message_burst: NonZeroU32,
    /// Time a new WebSocket has to send its `join` or `resume`.
    #[serde(with = "humantime_serde")]
    pub ws_first_message_timeout: Duration,
    /// Largest message a WebSocket client may send, in bytes.
    pub ws_max_message_bytes: NonZeroUsize,
    /// Messages kept for a WebSocket participant while its socket is away (for its resume).
    pub ws_backlog: NonZeroUsize,
    /// WebSocket signalling members in one room.
    pub ws_members_per_room: NonZeroUsize,
    /// WebSocket signalling members of one identity (`sub`), over all rooms.
    pub ws_members_per_identity: NonZeroUsize,
    /// Media sessions (WHIP, WHEP, WebSocket publish and subscribe) of one identity.
    pub sessions_per_identity: NonZeroUsize,
    /// ICE restarts of one session per minute.
    pub ice_restarts_per_minute: NonZeroU32,
    /// Open `/api/ops/stream` event streams.
    pub sse_clients: NonZeroUsize,
    /// Refusals of anonymous requests (no or invalid token) get one audit line per source
    /// (IPv4 /24, IPv6 /48) per interval, then one summary line with the count.
    #[serde(with = "humantime_serde")]
    pub anonymous_audit_interval: Duration,
    /// Sources tracked for that; beyond, the others share one line.
    pub anonymous_audit_sources: NonZeroUsize,
    /// Anonymous refusal lines written per interval over the whole node; beyond, one line
    /// counts the rest.
    pub anonymous_audit_lines: NonZeroUsize,
    /// Requests a subscriber may send on its `commands` data channel per second (on average,
    /// and in a burst of as many); beyond, they are dropped unanswered and unaudited.
    pub data_requests_per_second: NonZeroU32,
    /// TURN credentials minted for one identity (`sub`) per minute, over every way they are
    /// handed out (`/api/ice-servers`, WHIP/WHEP `Link` headers, the WebSocket `welcome`).
    pub turn_credentials_per_minute: NonZeroU32,
    /// Live (unused, unexpired) invite links per room.
    pub invites_per_room: NonZeroUsize,
    /// Stills shared with one room (in memory while the room lives).
    pub shared_stills_per_room: NonZeroUsize,
    /// Largest shared still, bytes.
    pub shared_still_bytes: NonZeroUsize,
}

/// A limit that refused something (the `limit` label of the metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Limit {
    /// `limits.http_connections`: a connection closed at once, or an idle one evicted.
    HttpConnections,
    /// `limits.header_timeout`: a connection closed before sending its headers.
    HeaderTimeout,
    /// `limits.idle_timeout`: an idle connection closed.
    IdleTimeout,
    /// `limits.ws_queue`: a WebSocket client that did not read closed.
    WsQueue,
    /// `limits.ws_messages_per_second`: a WebSocket client that sent too fast closed.
    WsMessageRate,
    /// `limits.ws_members_per_room`.
    WsMembersPerRoom,
    /// `limits.ws_members_per_identity`.
    WsMembersPerIdentity,
    /// `limits.sessions_per_identity`.
    SessionsPerIdentity,
    /// `limits.ice_restarts_per_minute`.
    IceRestartRate,
    /// `limits.sse_clients`.
    SseClients,
    /// `limits.anonymous_audit_interval`: an anonymous refusal counted, not written.
    AnonymousAudit,
    /// `limits.anonymous_audit_lines`: the node-wide budget of anonymous lines was spent.
    AnonymousAuditLines,
    /// `limits.data_requests_per_second`: a data-channel request dropped.
    DataRequestRate,
    /// `limits.ws_first_message_timeout`: a socket that never joined, closed.
    WsFirstMessage,
    /// `limits.ws_max_message_bytes`: a socket that sent a larger message, closed.
    WsMessageSize,
    /// `limits.ws_backlog`: a message for an away participant dropped.
    WsBacklog,
    /// `limits.turn_credentials_per_minute`: a TURN credential not minted.
    TurnCredentialRate,
    /// `limits.invites_per_room`: an invite link not minted.
    InvitesPerRoom,
    /// `limits.shared_stills_per_room`: a still not shared.
    SharedStillsPerRoom,
    /// `limits.shared_still_bytes`: a still too large to share.
    SharedStillBytes,
}

impl Limit {
    /// Every limit, in metric order.
    pub const ALL: [Limit; 20] = [
        Limit::HttpConnections,
        Limit::HeaderTimeout,
        Limit::IdleTimeout,
        Limit::WsQueue,
        Limit::WsMessageRate,
        Limit::WsMembersPerRoom,
        Limit::WsMembersPerIdentity,
        Limit::SessionsPerIdentity,
        Limit::IceRestartRate,
        Limit::SseClients,
        Limit::AnonymousAudit,
        Limit::AnonymousAuditLines,
        Limit::DataRequestRate,
        Limit::WsFirstMessage,
        Limit::WsMessageSize,
        Limit::WsBacklog,
        Limit::TurnCredentialRate,
        Limit::InvitesPerRoom,
        Limit::SharedStillsPerRoom,
        Limit::SharedStillBytes,
    ];

    /// The label value (the config key without `limits.`).
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::HttpConnections => "http_connections",
            Limit::HeaderTimeout => "header_timeout",
            Limit::IdleTimeout => "idle_timeout",
            Limit::WsQueue => "ws_queue",
            Limit::WsMessageRate => "ws_messages_per_second",
            Limit::WsMembersPerRoom => "ws_members_per_room",
            Limit::WsMembersPerIdentity => "ws_members_per_identity",
            Limit::SessionsPerIdentity => "sessions_per_identity",
            Limit::IceRestartRate => "ice_restarts_per_minute",
            Limit::SseClients => "sse_clients",
            Limit::AnonymousAudit => "anonymous_audit_interval",
            Limit::AnonymousAuditLines => "anonymous_audit_lines",
            Limit::DataRequestRate => "data_requests_per_second",
            Limit::WsFirstMessage => "ws_first_message_timeout",
            Limit::WsMessageSize => "ws_max_message_bytes",
            Limit::WsBacklog => "ws_backlog",
            Limit::TurnCredentialRate => "turn_credentials_per_minute",
            Limit::InvitesPerRoom => "invites_per_room",
            Limit::SharedStillsPerRoom => "shared_stills_per_room",
            Limit::SharedStillBytes => "shared_still_bytes",
        }
    }
}

/// Refusals by limit, since start.
#[derive(Debug, Default)]
pub struct Refusals {
    counts: [AtomicU64; Limit::ALL.len()],
}

impl Refusals {
    /// Counts one refusal.
    pub fn count(&self, limit: Limit) {
        self.counts[limit as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Refusals by `limit` so far.
    pub fn get(&self, limit: Limit) -> u64 {
        self.counts[limit as usize].load(Ordering::Relaxed)
    }

    /// Every limit with its count.
    pub fn all(&self) -> impl Iterator<Item = (Limit, u64)> + '_ {
        Limit::ALL.into_iter().map(|l| (l, self.get(l)))
    }
}

/// An HTTP refusal by a limit: `status` with a JSON body
/// `{"error":"limit","limit":"<key>","message":"…"}` (and `Retry-After` when it helps).
#[derive(Debug)]
pub struct Refused {
    /// The limit.
    pub limit: Limit,
    /// 429 (per-client limits) or 503 (the node is full).
    pub status: StatusCode,
    /// What was refused and the limit's value.
    pub message: String,
    /// Seconds after which a retry may succeed.
    pub retry_after: Option<u64>,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": "limit",
            "limit": self.limit.as_str(),
            "message": self.message,
        });
        let mut r = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

/// At most `max` events in any `window` (ICE restarts of a session). Time is an input.
#[derive(Debug, Clone, Default)]
pub struct RateWindow {
    times: std::collections::VecDeque<Instant>,
}

impl RateWindow {
    /// Admits an event at `now`, or says how long until one would be admitted.
    pub fn admit(&mut self, now: Instant, max: u32, window: Duration) -> Result<(), Duration> {
        self.forget(now, window);
        if self.times.len() >= max as usize {
            let oldest = self.times.front().copied().unwrap_or(now);
            return Err(window.saturating_sub(now.saturating_duration_since(oldest)));
        }
        self.times.push_back(now);
        Ok(())
    }

    /// Whether no event is left in the `window` before `now`.
    pub fn idle(&mut self, now: Instant, window: Duration) -> bool {
        self.forget(now, window);
        self.times.is_empty()
    }

    fn forget(&mut self, now: Instant, window: Duration) {
        while let Some(&t) = self.times.front() {
            if now.saturating_duration_since(t) >= window {
                self.times.pop_front();
            } else {
                break;
            }
        }
    }
}

/// A token bucket: `rate` tokens per second, at most `burst` saved. Time is an input.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(rate: NonZeroU32, burst: NonZeroU32, now: Instant) -> Self {
        TokenBucket {
            tokens: f64::from(burst.get()),
            rate: f64::from(rate.get()),
            burst: f64::from(burst.get()),
            last: now,
        }
    }

    /// Takes one token at `now`; false when the bucket is empty.
    pub fn take(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_window_and_token_bucket() {
        let t0 = Instant::now();
        let mut w = RateWindow::default();
        let min = Duration::from_secs(60);
        for _ in 0..3 {
            w.admit(t0, 3, min).unwrap();
        }
        assert_eq!(
            w.admit(t0 + Duration::from_secs(20), 3, min),
            Err(Duration::from_secs(40))
        );
        w.admit(t0 + min, 3, min).unwrap();

        let n = |v| NonZeroU32::new(v).unwrap();
        let mut b = TokenBucket::new(n(2), n(5), t0);
        assert_eq!((0..10).filter(|_| b.take(t0)).count(), 5);
        assert!(b.take(t0 + Duration::from_millis(500)));
        assert!(!b.take(t0 + Duration::from_millis(500)));
        assert_eq!(
            (0..10)
                .filter(|_| b.take(t0 + Duration::from_secs(100)))
                .count(),
            5
        );
    }

    #[test]
    fn labels_are_the_config_keys_and_indexes_match() {
        for (i, l) in Limit::ALL.into_iter().enumerate() {
            assert_eq!(l as usize, i);
        }
        let keys = crate::config::DEFAULT_TOML;
        for l in Limit::ALL {
            assert!(keys.contains(&format!("\n{} = ", l.as_str())), "{l:?}");
        }
        let r = Refusals::default();
        r.count(Limit::SseClients);
        assert_eq!(r.get(Limit::SseClients), 1);
        assert_eq!(r.all().map(|(_, n)| n).sum::<u64>(), 1);
    }
}
