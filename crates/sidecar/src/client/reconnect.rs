//! The kiosk's reconnection state machine (sans-IO): after a session ends, whether to ask where
//! telemetry lives now (rediscovery), how long to wait before dialling again, and on which
//! transport (QUIC, or the stream transport when QUIC does not handshake).
//!
//! The rules:
//! - an **established** session lost: the backoff starts over at `reconnect_min`, and the client
//!   asks first (the node may have died: a new answer is dialled at once, the same answer after
//!   `reconnect_min`);
//! - a **failed attempt** (never established): ask; a new answer is dialled at once, the same
//!   one after the backoff delay, which then doubles up to `reconnect_max`;
//! - **no QUIC handshake** in time with a stream transport configured: ask once (a restarted
//!   node has a new certificate), a new answer is dialled on QUIC at once, else the stream
//!   transport is dialled at once; an attempt that followed a fresh answer does not ask again;
//! - a session **lost on the stream transport**: QUIC first again next time;
//! - a **retarget** ([`Reconnect::retarget`], after a `Move`): the next loss asks at once.
//!
//! Time is an input: the shell waits until [`Reconnect::poll_timeout`] and then calls
//! [`Reconnect::handle_timeout`].

use std::time::{Duration, Instant};

use cabine_proto::telemetry::ErrorCode;

use super::{StreamTransport, Target};

/// How a session attempt ended, as the shell saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionEnd {
    /// Closed by the user.
    Closed,
    /// Refused for good (bad token, wrong room or role, version).
    Fatal(ErrorCode, String),
    /// Lost; reconnect. `established` tells whether the session got past the hello.
    Lost {
        /// The session had been established.
        established: bool,
    },
    /// The QUIC handshake did not complete in time (UDP dropped on the way?): worth trying the
    /// stream transport.
    NoHandshake,
}

/// The transport of one attempt.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Transport {
    /// QUIC; with a handshake timeout when a stream transport can take over.
    Quic {
        /// A handshake not done after this long ends the attempt as
        /// [`SessionEnd::NoHandshake`].
        handshake_timeout: Option<Duration>,
    },
    /// The stream transport (WebSocket).
    Stream(StreamTransport),
}

/// One session attempt for the shell to make.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Dial {
    /// Where.
    pub target: Target,
    /// How.
    pub transport: Transport,
}

/// What the shell does next.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Action {
    /// Make this session attempt, then report its end with [`Reconnect::handle_session_end`].
    Dial(Box<Dial>),
    /// Ask where telemetry is now, then report with [`Reconnect::handle_discovered`].
    Rediscover,
}

/// Why the client stopped for good.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stopped {
    /// Closed by the user.
    Closed,
    /// Refused by the server.
    Refused {
        /// The error code.
        code: ErrorCode,
        /// The server's reason.
        reason: String,
    },
}

/// The reconnection state machine.
#[derive(Debug)]
pub struct Reconnect {
    min: Duration,
    max: Duration,
    /// The next backoff delay.
    delay: Duration,
    target: Target,
    /// The last QUIC attempt did not handshake: dial the stream transport.
    prefer_stream: bool,
    /// The last attempt already followed a fresh answer (no second ask at once).
    fresh: bool,
    /// Told to move: the next loss asks first.
    retarget: bool,
    closing: bool,
    phase: Phase,
    /// The action the shell has not taken yet.
    pending: Option<Action>,
    /// Times a rediscovery gave a new target.
    rediscovered: u64,
}

impl Reconnect {
    /// The machine for `target`, with backoff from `min` doubling up to `max`; its first
    /// action is to dial.
    pub fn new(target: Target, min: Duration, max: Duration) -> Self {
        let mut r = Reconnect {
            min,
            max: max.max(min),
            delay: min,
            target,
            prefer_stream: false,
            fresh: false,
            retarget: false,
            closing: false,
            phase: Phase::Session {
                quic_with_fallback: false,
            },
            pending: None,
            rediscovered: 0,
        };
        r.dial();
        r
    }

    /// The next action, once (`None`: a session is running, the machine waits for a timeout,
    /// or it stopped).
    pub fn poll_action(&mut self) -> Option<Action> {
        self.pending.take()
    }

    /// When to call [`Reconnect::handle_timeout`] (while backing off).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Waiting(at) => Some(at),
            _ => None,
        }
    }

    /// The backoff is over at `now`: dial.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Phase::Waiting(at) = self.phase {
            if now >= at {
                self.redial();
            }
        }
    }

    /// The attempt the shell made ended. Returns false when the attempt goes on on the stream
    /// transport (QUIC did not handshake), true when the session is over (the client
    /// reconnects, or stopped).
    pub fn handle_session_end(&mut self, _now: Instant, end: SessionEnd) -> bool {
        let quic_with_fallback = matches!(
            self.phase,
            Phase::Session {
                quic_with_fallback: true
            }
        );
        if end == SessionEnd::NoHandshake && quic_with_fallback && !self.closing {
            // A new certificate or address (a restarted or other node) explains a handshake
            // that fails: ask first, and dial QUIC again at once if it moved.
            if self.fresh {
                self.fall_back();
            } else {
                self.ask(Ask::NoHandshake);
            }
            return false;
        }
        self.fresh = false;
        if matches!(end, SessionEnd::Lost { .. }) {
            // The stream transport failed or its session ended: QUIC first again next time
            // (the network that dropped UDP may have changed, the server too).
            self.prefer_stream = false;
        }
        match end {
            SessionEnd::Closed => self.stop(Stopped::Closed),
            SessionEnd::Fatal(code, reason) => self.stop(Stopped::Refused { code, reason }),
            SessionEnd::NoHandshake | SessionEnd::Lost { .. } => {
                if self.closing {
                    self.stop(Stopped::Closed);
                    return true;
                }
                let established = end == SessionEnd::Lost { established: true };
                if std::mem::take(&mut self.retarget) {
                    self.ask(Ask::Retarget { established });
                } else {
                    self.after_loss(established);
                }
            }
        }
        true
    }

    /// The rediscovery's answer (`None`: none could be had).
    pub fn handle_discovered(&mut self, now: Instant, found: Option<Target>) {
        let Phase::Asking(why) = self.phase else {
            return;
        };
        let changed = match found {
            Some(t) if !t.same_as(&self.target) => {
                tracing::info!(server = %t.server, "telemetry: the server's answer changed, dialling the new target");
                self.target = t;
                self.rediscovered += 1;
                true
            }
            _ => false,
        };
        if self.closing {
            self.stop(Stopped::Closed);
            return;
        }
        if changed {
            self.fresh = true;
            self.redial();
            return;
        }
        match why {
            Ask::NoHandshake => self.fall_back(),
            Ask::Retarget { established } => self.after_loss(established),
            Ask::Established | Ask::Failed => self.back_off(now),
        }
    }

    /// After a `Move`: the next loss asks where to dial first.
    pub fn retarget(&mut self) {
        self.retarget = true;
    }

    /// Stop reconnecting (the user closes): a backoff in progress ends now; an attempt or a
    /// question in progress ends the machine when it reports.
    pub fn close(&mut self) {
        self.closing = true;
        if matches!(self.phase, Phase::Waiting(_)) {
            self.stop(Stopped::Closed);
        }
    }

    /// Whether [`Reconnect::close`] was called.
    pub fn closing(&self) -> bool {
        self.closing
    }

    /// Why the machine stopped, once it did.
    pub fn stopped(&self) -> Option<&Stopped> {
        match &self.phase {
            Phase::Stopped(s) => Some(s),
            _ => None,
        }
    }

    /// Where it dials now.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Times a rediscovery gave a new target.
    pub fn rediscovered(&self) -> u64 {
        self.rediscovered
    }

    /// The backoff delay the next failure waits.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    fn after_loss(&mut self, established: bool) {
        if established {
            // The node may have died (kill -9, a lost host): ask where the room lives now
            // before dialling the same node again, rather than after a handshake to a dead node
            // timed out. An unchanged answer dials the same node after the shortest delay.
            self.delay = self.min;
            self.ask(Ask::Established);
        } else {
            self.ask(Ask::Failed);
        }
    }

    fn back_off(&mut self, now: Instant) {
        self.phase = Phase::Waiting(now + self.delay);
        self.delay = (self.delay * 2).min(self.max);
    }

    fn fall_back(&mut self) {
        if let Some(t) = &self.target.stream {
            tracing::info!(
                timeout = ?t.quic_timeout,
                "telemetry: no QUIC handshake, using the stream transport"
            );
        }
        self.prefer_stream = true;
        self.dial();
    }

    fn ask(&mut self, why: Ask) {
        self.phase = Phase::Asking(why);
        self.pending = Some(Action::Rediscover);
    }

    /// Dials after a wait or a fresh answer (the loop's top: closing stops it).
    fn redial(&mut self) {
        if self.closing {
            self.stop(Stopped::Closed);
        } else {
            self.dial();
        }
    }

    fn dial(&mut self) {
        let (transport, quic_with_fallback) = match &self.target.stream {
            Some(t) if t.only || self.prefer_stream => (Transport::Stream(t.clone()), false),
            Some(t) => (
                Transport::Quic {
                    handshake_timeout: Some(t.quic_timeout),
                },
                true,
            ),
            None => (
                Transport::Quic {
                    handshake_timeout: None,
                },
                false,
            ),
        };
        self.phase = Phase::Session { quic_with_fallback };
        self.pending = Some(Action::Dial(Box::new(Dial {
            target: self.target.clone(),
            transport,
        })));
    }

    fn stop(&mut self, why: Stopped) {
        self.pending = None;
        self.phase = Phase::Stopped(why);
    }
}

#[derive(Debug, Clone)]
enum Phase {
    /// A session attempt is the shell's (dialling, or established).
    Session { quic_with_fallback: bool },
    /// Waiting for the rediscovery's answer.
    Asking(Ask),
    /// Backing off until then.
    Waiting(Instant),
    /// Done.
    Stopped(Stopped),
}

/// Why the client asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    /// QUIC did not handshake.
    NoHandshake,
    /// A retarget, after a session that was (or not) established.
    Retarget { established: bool },
    /// An established session was lost.
    Established,
    /// An attempt failed.
    Failed,
}
