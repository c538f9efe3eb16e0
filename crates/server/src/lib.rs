//! The `cabine` server: HTTP API (WHIP, WHEP, health, statistics) in front of the media plane.
//!
//! [`Server::start`] binds everything from a [`Config`] and returns a handle with the bound
//! addresses; the binary and the end-to-end tests both use it.
//!
//! Modules by concern:
//! - [`state`]: what every handler shares (session table, refusal counters, session spans,
//!   audit hook);
//! - [`http`]: the router and the routes, [`http::whip`] (WHIP/WHEP sessions), [`http::ops`]
//!   (operators' views), [`http::pages`] (browser pages, one strict CSP), and [`http::guard`]
//!   (every token check, written once); [`ws`]: WebSocket signalling;
//! - [`events`]: media-plane events to the session table, the audit log, the WebSocket hub
//!   and the telemetry bridge;
//! - [`sampler`]: one snapshot of the media plane per period, feeding the operators' view and
//!   the [`metrics`]; [`admin`]: the metrics listener;
//! - [`cluster`]: many nodes on one store (Redis, or in memory for one node): the registry,
//!   room placement and leases, redirects to a room's node, the degraded mode while the store
//!   is away;
//! - [`limits`]: the `[limits]` keys, their refusal counters and answers; [`http::serve`]:
//!   the accept loop (connection cap, header-read and idle timeouts, plain and TLS);
//!   [`anon_audit`]: anonymous refusals audited once per source and interval;
//! - [`turn`]: `[turn]`, coturn credentials and the ICE servers handed to clients;
//! - [`invite`]: one-time invite links for specialists, interpreters, orthoptists
//!   ([`http::invites`], records in [`cluster::invite_store`]); [`consultation`]: per room,
//!   the assistants a doctor allows to operate devices and the stills it shared
//!   ([`http::stills`]);
//! - [`queue`]: the walk-in queue (`/api/queue`) and the fleet (`/api/kiosks`);
//! - [`fhir`]: `[fhir]`, the consultations' measurements exported as FHIR R4 Bundles through a
//!   durable outbox (off unless `fhir.endpoint` is set);
//! - tokens are minted and verified by [`cabine_proto::jwt`].
//!
//! ```text
//! start: media plane → cluster side → state → event reader thread → telemetry → metrics
//!        → FHIR export (its outbox resent) → cluster refresh → sampler → admin → HTTP
//! shutdown: drain (the registry hears of it) → close sessions → end the rooms' FHIR records
//!           (to the outbox) → leave the cluster (release the leases) → stop HTTP
//!           → stop media plane (the sampler ends) → anonymous refusal counts → flush audit
//! ```

pub mod admin;
pub mod anon_audit;
pub mod audit;
pub mod cluster;
pub mod config;
pub mod consultation;
pub mod drain;
pub mod events;
pub mod fhir;
pub mod http;
pub mod invite;
pub mod limits;
pub mod metrics;
pub mod ops;
pub mod otel;
pub mod queue;
pub mod sampler;
pub mod state;
pub mod telemetry;
pub mod turn;
pub mod ws;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cabine_sfu::{RoomConfig, Sfu, SfuConfig};
use str0m::bwe::Bitrate;
use tokio::sync::watch;
use tracing::{info, warn};

pub use crate::config::Config;

/// A running server.
pub struct Server {
    http: SocketAddr,
    admin: Option<SocketAddr>,
    sfu: Sfu,
    metrics: Arc<metrics::Metrics>,
    state: Arc<state::AppState>,
    telemetry: Option<Arc<telemetry::Telemetry>>,
    fhir: Option<Arc<fhir::Fhir>>,
    sampler: tokio::task::JoinHandle<()>,
    cluster_task: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The media plane did not start.
    #[error(transparent)]
    Media(#[from] cabine_sfu::SfuError),
    /// The HTTP listener did not bind.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
    /// TLS material could not be loaded.
    #[error("cannot load TLS certificate/key: {0}")]
    Tls(std::io::Error),
    /// Configuration.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The metrics exporter could not be built.
    #[error("cannot set up metrics: {0}")]
    Metrics(String),
    /// The telemetry sidecar did not start.
    #[error(transparent)]
    Telemetry(#[from] telemetry::TelemetryError),
    /// The audit log could not be opened.
    #[error("cannot open the audit log: {0}")]
    Audit(std::io::Error),
    /// The FHIR export did not start.
    #[error(transparent)]
    Fhir(#[from] fhir::FhirError),
}

impl Server {
    /// Starts the media plane and the HTTP API. Must be called inside a tokio runtime.
    pub async fn start(cfg: Config) -> Result<Server, StartError> {
        // One TLS crypto provider for the whole process (HTTPS, and any other rustls user in
        // it); an earlier install (a test harness, an embedding program) is kept.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        // Pseudonyms in logs and the ops view are keyed with the deployment's secret (the first
        // server of a process sets it).
        cabine_proto::set_redaction_secret(cfg.auth.secret.as_bytes());
        cfg.check_exposure()?;
        if cfg.uses_dev_secret() {
            warn!(
                "running on loopback with the built-in development token secret: anyone can mint \
                 tokens. Set CABINE_AUTH__SECRET (or auth.secret) before exposing this server"
            );
        }
        let open_files = match http::serve::raise_open_files_limit() {
            Ok(n) => {
                info!(
                    open_files = n,
                    "open-file limit (RLIMIT_NOFILE soft, raised to hard)"
                );
                n
            }
            Err(e) => {
                warn!(error = %e, "cannot read the open-file limit; assuming 1024");
                1024
            }
        };
        let sfu = Sfu::start(SfuConfig {
            bind: cfg.media.bind,
            advertise: cfg.advertise()?,
            workers: cfg.media.workers,
            socket_buffer: cfg.media.socket_buffer,
            room: RoomConfig {
                initial_bitrate: Bitrate::kbps(cfg.media.initial_bitrate_kbps),
                disconnect_grace: cfg.media.disconnect_grace,
                connect_timeout: cfg.media.connect_timeout,
                max_sessions: cfg.media.max_sessions_per_room,
                rtx_history: cfg.media.rtx_history,
                ..RoomConfig::default()
            },
            tcp: cfg.media.tcp_config(),
        })?;
        let audit = audit::Audit::open(&cfg.audit).map_err(StartError::Audit)?;
        let cluster = Arc::new(
            cluster::Cluster::new(
                &cfg.cluster,
                &cfg.http.public_url,
                cfg.advertise()?.unwrap_or(sfu.local_addr()).to_string(),
                cfg.auth.secret.as_bytes(),
            )
            .map_err(config::ConfigError::Unusable)?,
        );
        let state = Arc::new(state::AppState::new(
            &cfg,
            sfu.clone(),
            audit,
            Arc::clone(&cluster),
        ));
        events::spawn_event_reader(Arc::clone(&state));
        let telemetry = match cfg
            .telemetry
            .listen_addr()
            .map_err(config::ConfigError::Unusable)?
        {
            Some(addr) => {
                let t = telemetry::Telemetry::start(
                    &cfg.telemetry,
                    addr,
                    cfg.advertise()?.map(|a| a.ip()),
                    cfg.auth.tokens(),
                    sfu.clone(),
                )
                .await?;
                state.set_telemetry(Arc::clone(&t));
                cluster.set_telemetry(t.discovery().url.clone());
                Some(t)
            }
            None => None,
        };
        let push = otel::metric_reader(&cfg.otel).map_err(StartError::Metrics)?;
        let resource = push.is_some().then(|| otel::resource(&cfg.otel));
        let node_label = cluster.clustered().then(|| cluster.node_id().to_owned());
        let metrics = Arc::new(
            metrics::Metrics::new(push, resource, node_label).map_err(StartError::Metrics)?,
        );
        metrics.attach_cluster(Arc::clone(&cluster));
        let cluster_task = spawn_cluster_refresh(&state);
        if let Some(t) = &telemetry {
            metrics.attach_telemetry(Arc::clone(t));
        }
        let fhir = start_fhir(&cfg, &state, telemetry.as_ref())?;
        if let Some(f) = &fhir {
            fhir::stats::register(&metrics.meter(), Arc::downgrade(f));
        }
        metrics.attach_limits(Arc::clone(state.limit_refusals()));
        metrics.attach_audit(state.audit_log().clone());
        metrics
            .register(Box::new(
                queue::stats::QueueCollector::new(Arc::clone(state.queue().stats()))
                    .map_err(StartError::Metrics)?,
            ))
            .map_err(StartError::Metrics)?;
        spawn_queue_sweeper(&state);
        let sampler = sampler::spawn(&state, Arc::clone(&metrics));

        spawn_anonymous_audit_sweeper(&state);
        consultation::spawn_sweeper(&state);
        let (stop, stop_rx) = watch::channel(false);
        let admin = match cfg.admin_listen()? {
            Some(addr) => Some(
                admin::spawn_admin(
                    admin::Admin {
                        addr,
                        metrics: Arc::clone(&metrics),
                        token: cfg.admin.token.clone(),
                        header_timeout: cfg.limits.header_timeout,
                        idle_timeout: cfg.limits.idle_timeout,
                        stop: stop_rx.clone(),
                    },
                    Arc::clone(&state),
                )
                .await
                .map_err(|source| StartError::Listen { addr, source })?,
            ),
            None => None,
        };
        let app = http::router(Arc::clone(&state), cfg.http.max_body_bytes);
        let listener =
            std::net::TcpListener::bind(cfg.http.listen).map_err(|source| StartError::Listen {
                addr: cfg.http.listen,
                source,
            })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| StartError::Listen {
                addr: cfg.http.listen,
                source,
            })?;
        let http = listener.local_addr().map_err(|source| StartError::Listen {
            addr: cfg.http.listen,
            source,
        })?;
        let tls = match cfg.tls() {
            Some((cert, key)) => {
                let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                    .await
                    .map_err(StartError::Tls)?;
                Some(tokio_rustls::TlsAcceptor::from(tls.get_inner()))
            }
            None => None,
        };
        let listener =
            tokio::net::TcpListener::from_std(listener).map_err(|source| StartError::Listen {
                addr: cfg.http.listen,
                source,
            })?;
        let task = tokio::spawn(
            http::serve::Serve {
                listener,
                tls,
                app,
                cap: http::serve::connection_cap(&cfg.limits, open_files),
                header_timeout: cfg.limits.header_timeout,
                idle_timeout: cfg.limits.idle_timeout,
                refusals: Arc::clone(state.limit_refusals()),
                stop: stop_rx,
            }
            .run(),
        );
        info!(
            http = %http,
            tls = cfg.tls().is_some(),
            media = %sfu.local_addr(),
            telemetry = %telemetry.as_ref().map_or_else(|| "off".to_owned(), |t| t.local_addr().to_string()),
            "cabine is up"
        );
        Ok(Server {
            http,
            admin,
            sfu,
            state,
            metrics,
            telemetry,
            fhir,
            sampler,
            cluster_task,
            stop,
            task,
        })
    }

    /// The bound telemetry (QUIC) address, if enabled.
    pub fn telemetry_addr(&self) -> Option<SocketAddr> {
        self.telemetry.as_ref().map(|t| t.local_addr())
    }

    /// The telemetry side, if enabled (statistics, tests).
    pub fn telemetry(&self) -> Option<&Arc<telemetry::Telemetry>> {
        self.telemetry.as_ref()
    }

    /// The FHIR export, if on (`fhir.endpoint`): where the platform sets a room's subject.
    pub fn fhir(&self) -> Option<&Arc<fhir::Fhir>> {
        self.fhir.as_ref()
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    /// The bound admin (metrics) address, if enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// Refreshes the metrics from the media plane now (they refresh every few seconds anyway).
    pub async fn refresh_metrics(&self) {
        self.metrics
            .refresh(&self.sfu, self.state.refused_counts())
            .await;
    }

    /// Pushes metrics to the OTLP collector now, if one is configured (tests, shutdown).
    pub async fn flush_metrics(&self) {
        self.refresh_metrics().await;
        let m = Arc::clone(&self.metrics);
        let _ = tokio::task::spawn_blocking(move || m.flush()).await;
    }

    /// Refusals by `limit` since start (also `cabine_limits_refused_total{limit}`).
    pub fn limit_refusals(&self, limit: limits::Limit) -> u64 {
        self.state.limit_refusals().get(limit)
    }

    /// The media plane (for embedding programs and tests).
    pub fn sfu(&self) -> &Sfu {
        &self.sfu
    }

    /// The bound media UDP address.
    pub fn media_addr(&self) -> SocketAddr {
        self.sfu.local_addr()
    }

    /// Completes when an operator asked this node to drain (`POST /api/drain`): the caller
    /// then runs [`Server::shutdown`], as on SIGTERM.
    pub async fn drain_requested(&self) {
        self.state.drain_requested.notified().await;
    }

    /// Graceful shutdown: refuse new sessions (readyz turns 503), let sessions end for up to
    /// `drain`, then close the remaining ones and stop.
    pub async fn shutdown(self, drain: Duration) {
        self.state.draining.store(true, Ordering::Relaxed);
        self.state.cluster.set_draining(true);
        info!(drain = ?drain, "draining: new sessions are refused");
        let deadline = Instant::now() + drain;
        // In a cluster the rooms move to other nodes; their kiosks follow a `Move` on their
        // telemetry, which therefore stays up until the room's sessions have left.
        let moved = drain::move_rooms(&self.state).await;
        // Otherwise kiosks' telemetry goes first: a node on its way out acknowledges no
        // measurement it may not get to subscribers; kiosks keep them and resend them to the
        // next node.
        if moved == 0 {
            if let Some(t) = &self.telemetry {
                t.shutdown().await;
            }
        }
        while Instant::now() < deadline && self.state.session_count() > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if moved > 0 {
            if let Some(t) = &self.telemetry {
                t.shutdown().await;
            }
        }
        let left = self.state.close_all().await;
        if left > 0 {
            info!(
                sessions = left,
                "closed sessions still open at the end of the drain"
            );
        }
        // The rooms are over: those with a subject go to the outbox (sent now or at the next
        // start), the rest is forgotten.
        if let Some(f) = &self.fhir {
            f.end_all().await;
        }
        // Out of the registry, the leases released: the rooms can be placed again at once.
        self.cluster_task.abort();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.state.cluster.leave()).await;
        let _ = self.stop.send(true);
        // Connections still open (a dashboard's event stream, a slow client) get a few seconds.
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(5), &mut task)
            .await
            .is_err()
        {
            info!("HTTP connections still open after 5 s: closed");
            task.abort();
        }
        let sfu = self.sfu.clone();
        let _ = tokio::task::spawn_blocking(move || sfu.shutdown()).await;
        // The sampler ends with the media plane (its next snapshot finds it stopped).
        let mut sampler = self.sampler;
        if tokio::time::timeout(ops::PERIOD * 3, &mut sampler)
            .await
            .is_err()
        {
            warn!("the media sampler did not stop with the media plane");
            sampler.abort();
        }
        // The counts of anonymous refusals not yet summarised, then the last leaves and
        // closes, are on disk before the process exits.
        self.state.flush_anonymous_audit(true);
        let audit = self.state.audit_log().clone();
        if !tokio::task::spawn_blocking(move || audit.flush(Duration::from_secs(5)))
            .await
            .unwrap_or(false)
        {
            warn!("the audit log could not be flushed within 5 s");
        }
        info!("cabine stopped");
    }
}

/// Refreshes the cluster side every [`cluster::REFRESH`]: this node's record and load, the
/// registry, the leases of its live rooms. Each round is bounded, so a stalled store never
/// piles rounds up.
fn spawn_cluster_refresh(state: &Arc<state::AppState>) -> tokio::task::JoinHandle<()> {
    let weak = Arc::downgrade(state);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(cluster::REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<(Instant, u64, Option<Duration>)> = None;
        loop {
            tick.tick().await;
            let Some(st) = weak.upgrade() else { return };
            let now = Instant::now();
            let out = st.sfu.stats().datagrams_out;
            let cpu = ops::ProcSample::read().cpu_time;
            let (egress_pps, cpu_percent) = match last {
                Some((t, o, c)) => {
                    let secs = now.duration_since(t).as_secs_f64().max(1e-3);
                    let pps = (out.saturating_sub(o) as f64 / secs) as u64;
                    let cpu = match (cpu, c) {
                        (Some(a), Some(b)) => a.saturating_sub(b).as_secs_f64() / secs * 100.0,
                        _ => 0.0,
                    };
                    (pps, cpu)
                }
                None => (0, 0.0),
            };
            last = Some((now, out, cpu));
            let load = cluster::Load {
                rooms: st.live_rooms(),
                sessions: u32::try_from(st.session_count()).unwrap_or(u32::MAX),
                egress_pps,
                cpu_percent,
                draining: st.draining.load(Ordering::Relaxed),
            };
            let c = Arc::clone(st.cluster());
            drop(st);
            if tokio::time::timeout(cluster::REFRESH * 2, c.refresh(load))
                .await
                .is_err()
            {
                warn!("a cluster refresh took over 4 s: abandoned");
            }
        }
    })
}

/// Sweeps the queue every [`queue::SWEEP`] (expiry, unanswered flags: audited) and writes the
/// presence of the kiosks this node sees every [`queue::fleet::PRESENCE_PERIOD`]; stops with
/// the state. Each round is bounded, so a stalled store never piles rounds up.
fn spawn_queue_sweeper(state: &Arc<state::AppState>) {
    let weak = Arc::downgrade(state);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(queue::SWEEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_presence: Option<Instant> = None;
        loop {
            tick.tick().await;
            let Some(st) = weak.upgrade() else { return };
            let _ =
                tokio::time::timeout(queue::SWEEP * 4, queue_round(&st, &mut last_presence)).await;
        }
    });
}

async fn queue_round(st: &state::AppState, last_presence: &mut Option<Instant>) {
    match st.queue().sweep().await {
        Ok(swept) => {
            for t in &swept.expired {
                st.audit_log().record(
                    "queue_expired",
                    "-",
                    &t.kiosk,
                    Some("kiosk"),
                    None,
                    &format!("ticket {} expired unanswered (queue.ticket_ttl)", t.id),
                );
            }
            for t in &swept.flagged {
                warn!(
                    kiosk = %cabine_proto::Redacted(t.kiosk.as_str()),
                    specialty = %t.specialty,
                    "a queue ticket is unanswered (queue.unanswered_after)"
                );
                st.audit_log().record(
                    "queue_unanswered",
                    "-",
                    &t.kiosk,
                    Some("kiosk"),
                    None,
                    &format!(
                        "ticket {} unanswered for {} s (queue.unanswered_after)",
                        t.id,
                        queue::now_ms().saturating_sub(t.created_ms) / 1000
                    ),
                );
            }
        }
        Err(e) => tracing::debug!(error = %e, "queue sweep skipped"),
    }
    let now = Instant::now();
    if last_presence.is_some_and(|t| now.duration_since(t) < queue::fleet::PRESENCE_PERIOD) {
        return;
    }
    *last_presence = Some(now);
    let linked = st
        .telemetry()
        .map(|t| t.links().linked(now))
        .unwrap_or_default();
    let in_session: std::collections::HashSet<String> = st
        .sessions_lock()
        .values()
        .filter(|e| e.role == cabine_proto::Role::Kiosk)
        .map(|e| e.identity.as_str().to_owned())
        .collect();
    if let Err(e) = st.queue().write_presence(&linked, &in_session).await {
        tracing::debug!(error = %e, "fleet presence not written");
    }
}

/// Starts the FHIR export when `fhir.endpoint` is set: the telemetry bridge feeds it, and a
/// room is over when it has neither participants nor connected kiosks.
fn start_fhir(
    cfg: &Config,
    state: &Arc<state::AppState>,
    telemetry: Option<&Arc<telemetry::Telemetry>>,
) -> Result<Option<Arc<fhir::Fhir>>, StartError> {
    let Some(settings) = cfg
        .fhir
        .load(&cfg.audit.path)
        .map_err(|e| config::ConfigError::Unusable(e.to_string()))?
    else {
        return Ok(None);
    };
    let f = fhir::Fhir::start(settings, state.audit_log().clone())?;
    state.set_fhir(Arc::clone(&f));
    f.set_room_subjects(Arc::clone(state.queue().store()));
    match telemetry {
        Some(t) => t.set_fhir(Arc::clone(&f)),
        None => {
            warn!("fhir.endpoint is set but telemetry.listen is empty: no measurement to export")
        }
    }
    let weak = Arc::downgrade(state);
    f.watch_rooms(move |rooms| {
        let Some(st) = weak.upgrade() else {
            return std::collections::HashSet::new();
        };
        let live = st.live_rooms();
        let telemetry = st.telemetry();
        rooms
            .iter()
            .filter(|r| live.contains_key(*r) || telemetry.is_some_and(|t| t.has_kiosks(r)))
            .cloned()
            .collect()
    });
    Ok(Some(f))
}

/// Writes the summaries of anonymous refusals as their intervals end; stops with the state.
fn spawn_anonymous_audit_sweeper(state: &Arc<state::AppState>) {
    let weak = Arc::downgrade(state);
    let period = (state.limits.anonymous_audit_interval / 4).max(Duration::from_millis(10));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            let Some(st) = weak.upgrade() else { return };
            st.flush_anonymous_audit(false);
        }
    });
}

/// Whether a server is draining (shared flag type used by the API).
pub type Draining = AtomicBool;
