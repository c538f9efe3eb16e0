//! Metrics: OpenTelemetry observable instruments fed from the core's statistics, exported in
//! Prometheus text format on the admin listener (`GET /metrics`).
//!
//! Nothing on the packet path touches the metrics API: a task copies the media plane's
//! statistics ([`Sfu::snapshot`], [`Sfu::stats`]) into a [`Summary`] every few seconds, and the
//! instruments' callbacks read that summary when scraped. Attributes are low-cardinality
//! (direction, role, track class, reason): never a room name, an identity or a health value.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cabine_sfu::room::{RoomSnapshot, SessionKind, TrackClass};
use cabine_sfu::shell::ShellStats;
use cabine_sfu::stats::DelayHistogram;
use cabine_sfu::{Sfu, TcpStats};
use opentelemetry::metrics::MeterProvider;
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{Encoder, TextEncoder};

/// Aggregated, label-safe view of the node, refreshed periodically.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    rooms: u64,
    participants: HashMap<&'static str, u64>,
    tracks: HashMap<&'static str, u64>,
    packets_in: u64,
    bytes_in: u64,
    packets_out: u64,
    bytes_out: u64,
    nacks: u64,
    plis: u64,
    firs: u64,
    layer_switches: u64,
    keyframes: u64,
    loss_max: f64,
    jitter_ms_max: f64,
    rtt_ms_mean: Option<f64>,
    bwe_bps_min: Option<u64>,
    bwe_bps_mean: Option<u64>,
    telemetry_sent: u64,
    telemetry_dropped: u64,
    shell: ShellStats,
    /// The ICE-TCP listener's counters, when it runs.
    tcp: Option<TcpStats>,
    /// Connected sessions by selected transport (`"host/udp"`, `"prflx/tcp"`, …).
    transports: HashMap<&'static str, u64>,
    refused: HashMap<&'static str, u64>,
    delay: DelayHistogram,
    /// Counters of sessions that already left, so totals never go down.
    retired: Retired,
    /// Device telemetry, when the sidecar runs.
    telemetry: TelemetrySummary,
}

/// (kind, gaps, late, duplicates) per (room, kiosk, channel).
type ChannelCounters = HashMap<(String, String, u32), (String, u64, u64, u64)>;

/// Label-safe telemetry figures: by channel kind, never by kiosk or room.
#[derive(Debug, Clone, Default)]
struct TelemetrySummary {
    enabled: bool,
    kiosks: u64,
    /// Kiosk connections accepted over the stream transport (WebSocket), in total.
    stream_connections: u64,
    /// Frames delivered to subscribers, by frame type.
    frames: Vec<(&'static str, u64)>,
    /// (gaps, late, duplicates) by channel kind, never decreasing.
    losses: HashMap<String, (u64, u64, u64)>,
    /// Worst p50 and p99 capture-to-delivery latency over channels, by kind, seconds.
    latency: HashMap<String, (f64, f64)>,
    refusals: Vec<(String, u64)>,
    commands_sent: u64,
    commands_refused: u64,
    /// Per-channel counters last seen, so that forgotten kiosks do not make totals go down.
    seen: ChannelCounters,
    retired: HashMap<String, (u64, u64, u64)>,
}

impl TelemetrySummary {
    fn update(&mut self, t: &crate::telemetry::Telemetry) {
        let stats = t.sidecar_stats();
        self.enabled = true;
        self.kiosks = stats.kiosks_connected as u64;
        self.stream_connections = stats.stream_connections;
        self.frames = t.frames_by_kind();
        self.refusals = stats.refusals.into_iter().collect();
        self.commands_sent = stats.commands_sent;
        self.commands_refused = stats.commands_refused;
        let mut now = ChannelCounters::new();
        self.latency.clear();
        for c in &stats.channels {
            now.insert(
                (c.room.clone(), c.kiosk.clone(), c.channel_id),
                (c.kind.clone(), c.gaps, c.late, c.duplicates),
            );
            let l = self.latency.entry(c.kind.clone()).or_default();
            if let Some(p50) = c.latency_p50_us {
                l.0 = l.0.max(p50 as f64 / 1e6);
            }
            if let Some(p99) = c.latency_p99_us {
                l.1 = l.1.max(p99 as f64 / 1e6);
            }
        }
        for (key, (kind, g, l, d)) in &self.seen {
            if !now.contains_key(key) {
                let r = self.retired.entry(kind.clone()).or_default();
                r.0 += g;
                r.1 += l;
                r.2 += d;
            }
        }
        self.losses = self.retired.clone();
        for (kind, g, l, d) in now.values() {
            let e = self.losses.entry(kind.clone()).or_default();
            e.0 += g;
            e.1 += l;
            e.2 += d;
        }
        self.seen = now;
    }
}

#[derive(Debug, Clone, Default)]
struct Retired {
    seen: HashMap<u64, (u64, u64, u64, u64)>,
    packets_in: u64,
    bytes_in: u64,
    packets_out: u64,
    bytes_out: u64,
}

/// The metrics subsystem: a meter provider with a Prometheus reader, and the shared summary.
pub struct Metrics {
    registry: prometheus::Registry,
    _provider: SdkMeterProvider,
    summary: Arc<Mutex<Summary>>,
    telemetry: std::sync::OnceLock<Arc<crate::telemetry::Telemetry>>,
    limits: Arc<std::sync::OnceLock<Arc<crate::limits::Refusals>>>,
    audit: Arc<std::sync::OnceLock<crate::audit::Audit>>,
    cluster: Arc<std::sync::OnceLock<Arc<crate::cluster::Cluster>>>,
}

impl Metrics {
    /// Exports the refusals of the server's limits (`cabine_limits_refused_total{limit}`).
    pub fn attach_limits(&self, r: Arc<crate::limits::Refusals>) {
        let _ = self.limits.set(r);
    }

    /// Exports the audit records dropped because the writer could not keep up
    /// (`cabine_audit_dropped_total`).
    pub fn attach_audit(&self, a: crate::audit::Audit) {
        let _ = self.audit.set(a);
    }

    /// Exports the cluster side's counters (`cabine_cluster_*`).
    pub fn attach_cluster(&self, c: Arc<crate::cluster::Cluster>) {
        let _ = self.cluster.set(c);
    }

    /// Registers a collector of another part of the server (the queue's) on the Prometheus
    /// registry.
    pub fn register(&self, c: Box<dyn Collector>) -> Result<(), String> {
        self.registry.register(c).map_err(|e| e.to_string())
    }

    /// The meter of this provider, for subsystems that register their own instruments (they
    /// reach Prometheus and OTLP like the rest).
    pub fn meter(&self) -> opentelemetry::metrics::Meter {
        self._provider.meter("cabine")
    }

    /// Adds the telemetry sidecar's figures to the metrics.
    pub fn attach_telemetry(&self, t: Arc<crate::telemetry::Telemetry>) {
        let _ = self.telemetry.set(t);
    }

    /// Builds the instruments; `push` adds an OTLP periodic reader next to Prometheus. With
    /// `node` (a clustered node's id), every Prometheus series carries a `node` label.
    pub fn new(
        push: Option<
            opentelemetry_sdk::metrics::PeriodicReader<opentelemetry_otlp::MetricExporter>,
        >,
        resource: Option<opentelemetry_sdk::Resource>,
        node: Option<String>,
    ) -> Result<Metrics, String> {
        let registry = match node {
            Some(id) => {
                prometheus::Registry::new_custom(None, Some(HashMap::from([("node".into(), id)])))
                    .map_err(|e| format!("metrics registry: {e}"))?
            }
            None => prometheus::Registry::new(),
        };
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_target_info()
            .scope_info_enabled(false)
            .build()
            .map_err(|e| format!("prometheus exporter: {e}"))?;
        let mut builder = SdkMeterProvider::builder().with_reader(exporter);
        if let Some(reader) = push {
            builder = builder.with_reader(reader);
        }
        if let Some(resource) = resource {
            builder = builder.with_resource(resource);
        }
        let provider = builder.build();
        let meter = provider.meter("cabine");
        let summary = Arc::new(Mutex::new(Summary::default()));

        let s = Arc::clone(&summary);
        let read = move || s.lock().unwrap_or_else(|p| p.into_inner()).clone();

        // One observable instrument reading the latest summary; `$kind` is the meter's
        // constructor (u64/f64 gauge, u64 counter).
        macro_rules! observe {
            ($kind:ident, $name:expr, $unit:expr, $desc:expr, |$sum:ident, $obs:ident| $body:block) => {{
                let read = read.clone();
                let _ = meter
                    .$kind($name)
                    .with_unit($unit)
                    .with_description($desc)
                    .with_callback(move |$obs| {
                        let $sum = read();
                        $body
                    })
                    .build();
            }};
        }
        macro_rules! gauge {
            ($($args:tt)*) => { observe!(u64_observable_gauge, $($args)*) };
        }
        macro_rules! fgauge {
            ($($args:tt)*) => { observe!(f64_observable_gauge, $($args)*) };
        }
        macro_rules! counter {
            ($($args:tt)*) => { observe!(u64_observable_counter, $($args)*) };
        }

        gauge!(
            "cabine.rooms",
            "{room}",
            "Rooms open on this node",
            |s, o| {
                o.observe(s.rooms, &[]);
            }
        );
        gauge!(
            "cabine.participants",
            "{participant}",
            "Participants connected, by role",
            |s, o| {
                for role in ["kiosk", "doctor", "assistant", "observer"] {
                    o.observe(
                        s.participants.get(role).copied().unwrap_or(0),
                        &[KeyValue::new("role", role)],
                    );
                }
            }
        );
        gauge!(
            "cabine.tracks",
            "{track}",
            "Published tracks, by class",
            |s, o| {
                for class in ["video", "audio", "stethoscope", "device-camera"] {
                    o.observe(
                        s.tracks.get(class).copied().unwrap_or(0),
                        &[KeyValue::new("class", class)],
                    );
                }
            }
        );
        counter!(
            "cabine.rtp.packets",
            "{packet}",
            "RTP packets received from publishers (in) and forwarded to subscribers (out)",
            |s, o| {
                o.observe(
                    s.packets_in + s.retired.packets_in,
                    &[KeyValue::new("direction", "in")],
                );
                o.observe(
                    s.packets_out + s.retired.packets_out,
                    &[KeyValue::new("direction", "out")],
                );
            }
        );
        counter!(
            "cabine.rtp.payload",
            "By",
            "RTP payload bytes received and forwarded",
            |s, o| {
                o.observe(
                    s.bytes_in + s.retired.bytes_in,
                    &[KeyValue::new("direction", "in")],
                );
                o.observe(
                    s.bytes_out + s.retired.bytes_out,
                    &[KeyValue::new("direction", "out")],
                );
            }
        );
        gauge!(
            "cabine.rtcp.feedback",
            "{message}",
            "NACK, PLI and FIR messages of the current streams",
            |s, o| {
                o.observe(s.nacks, &[KeyValue::new("kind", "nack")]);
                o.observe(s.plis, &[KeyValue::new("kind", "pli")]);
                o.observe(s.firs, &[KeyValue::new("kind", "fir")]);
            }
        );
        gauge!(
            "cabine.simulcast.layer_switches",
            "{switch}",
            "Simulcast layer switches of the current streams",
            |s, o| {
                o.observe(s.layer_switches, &[]);
            }
        );
        gauge!(
            "cabine.video.keyframes",
            "{frame}",
            "Keyframes received on the current streams",
            |s, o| {
                o.observe(s.keyframes, &[]);
            }
        );
        fgauge!(
            "cabine.stream.loss",
            "1",
            "Worst packet loss fraction among current streams",
            |s, o| {
                o.observe(s.loss_max, &[]);
            }
        );
        fgauge!(
            "cabine.stream.jitter",
            "ms",
            "Worst RFC 3550 jitter among incoming streams",
            |s, o| {
                o.observe(s.jitter_ms_max, &[]);
            }
        );
        fgauge!(
            "cabine.stream.rtt",
            "ms",
            "Mean round-trip time to participants",
            |s, o| {
                if let Some(v) = s.rtt_ms_mean {
                    o.observe(v, &[]);
                }
            }
        );
        gauge!(
            "cabine.bwe",
            "bit/s",
            "Bandwidth estimates towards subscribers",
            |s, o| {
                if let Some(v) = s.bwe_bps_min {
                    o.observe(v, &[KeyValue::new("stat", "min")]);
                }
                if let Some(v) = s.bwe_bps_mean {
                    o.observe(v, &[KeyValue::new("stat", "mean")]);
                }
            }
        );
        gauge!(
            "cabine.telemetry.messages",
            "{message}",
            "Telemetry messages sent to subscribers, and dropped for slow or closed channels",
            |s, o| {
                o.observe(s.telemetry_sent, &[KeyValue::new("outcome", "sent")]);
                o.observe(s.telemetry_dropped, &[KeyValue::new("outcome", "dropped")]);
            }
        );
        gauge!(
            "cabine.telemetry.kiosks",
            "{kiosk}",
            "Kiosks connected to the telemetry sidecar",
            |s, o| {
                if s.telemetry.enabled {
                    o.observe(s.telemetry.kiosks, &[]);
                }
            }
        );
        counter!(
            "cabine.telemetry.stream_connections",
            "{connection}",
            "Kiosk telemetry connections over the WebSocket (TCP/TLS) transport instead of QUIC",
            |s, o| {
                if s.telemetry.enabled {
                    o.observe(s.telemetry.stream_connections, &[]);
                }
            }
        );
        counter!(
            "cabine.telemetry.frames",
            "{frame}",
            "Telemetry frames delivered to subscribers, by frame type",
            |s, o| {
                for (kind, v) in &s.telemetry.frames {
                    o.observe(*v, &[KeyValue::new("kind", *kind)]);
                }
            }
        );
        counter!(
            "cabine.telemetry.lost",
            "{frame}",
            "Telemetry frames missing (gap), late (dropped) or duplicate (dropped), by channel kind",
            |s, o| {
                for (kind, (g, l, d)) in &s.telemetry.losses {
                    o.observe(*g, &[KeyValue::new("kind", kind.clone()), KeyValue::new("reason", "gap")]);
                    o.observe(*l, &[KeyValue::new("kind", kind.clone()), KeyValue::new("reason", "late")]);
                    o.observe(*d, &[KeyValue::new("kind", kind.clone()), KeyValue::new("reason", "duplicate")]);
                }
            }
        );
        fgauge!(
            "cabine.telemetry.latency",
            "s",
            "Capture-to-delivery latency of telemetry (worst channel), by channel kind and quantile",
            |s, o| {
                for (kind, (p50, p99)) in &s.telemetry.latency {
                    o.observe(*p50, &[KeyValue::new("kind", kind.clone()), KeyValue::new("quantile", "0.5")]);
                    o.observe(*p99, &[KeyValue::new("kind", kind.clone()), KeyValue::new("quantile", "0.99")]);
                }
            }
        );
        counter!(
            "cabine.telemetry.refusals",
            "{connection}",
            "Telemetry streams or connections closed for bad input, by QUIC error code",
            |s, o| {
                for (code, v) in &s.telemetry.refusals {
                    o.observe(*v, &[KeyValue::new("code", code.clone())]);
                }
            }
        );
        counter!(
            "cabine.telemetry.commands",
            "{command}",
            "Device commands from subscribers, sent to kiosks or refused",
            |s, o| {
                if s.telemetry.enabled {
                    o.observe(
                        s.telemetry.commands_sent,
                        &[KeyValue::new("outcome", "sent")],
                    );
                    o.observe(
                        s.telemetry.commands_refused,
                        &[KeyValue::new("outcome", "refused")],
                    );
                }
            }
        );
        counter!(
            "cabine.udp.datagrams",
            "{datagram}",
            "Datagrams on the media port by outcome",
            |s, o| {
                let sh = s.shell;
                for (outcome, v) in [
                    ("received", sh.datagrams_in),
                    ("sent", sh.datagrams_out),
                    ("unknown_source", sh.unknown_source),
                    ("unknown_ufrag", sh.unknown_ufrag),
                    ("malformed_stun", sh.malformed_stun),
                    ("queue_full", sh.queue_full),
                    ("send_error", sh.send_errors),
                    ("stun_challenge", sh.stun_challenges),
                ] {
                    o.observe(v, &[KeyValue::new("outcome", outcome)]);
                }
            }
        );
        gauge!(
            "cabine.sfu.routing_table",
            "{entry}",
            "Entries in the media port's routing table, by kind (one ufrag per session; addresses only once authenticated)",
            |s, o| {
                let sh = s.shell;
                for (kind, v) in [
                    ("session", sh.routed_sessions),
                    ("ufrag", sh.routed_ufrags),
                    ("address", sh.routed_addresses),
                ] {
                    o.observe(v, &[KeyValue::new("kind", kind)]);
                }
            }
        );
        counter!(
            "cabine.sfu.sessions.connect_timeouts",
            "{session}",
            "Media sessions removed because they did not connect (ICE and DTLS) within media.connect_timeout",
            |s, o| {
                o.observe(s.shell.connect_timeouts, &[]);
            }
        );
        gauge!(
            "cabine.sfu.sessions.transport",
            "{session}",
            "Media sessions by the transport of their selected ICE candidate pair: the client's candidate type and the protocol (host/srflx/prflx/relay, udp/tcp; for a relay, how the client reaches it as the client reports it: relay/udp, relay/tcp, relay/tls, or relay/unknown without a report)",
            |s, o| {
                for (transport, v) in &s.transports {
                    o.observe(*v, &[KeyValue::new("transport", *transport)]);
                }
            }
        );
        gauge!(
            "cabine.tcp.connections",
            "{connection}",
            "Open ICE-TCP connections on the media port",
            |s, o| {
                if let Some(t) = s.tcp {
                    o.observe(t.connections, &[]);
                }
            }
        );
        counter!(
            "cabine.tcp.closed",
            "{connection}",
            "ICE-TCP connections closed by the server, by reason (refused: media.tcp_max_connections reached; refused_source: media.tcp_max_unproven_per_ip unproven connections from its source IP; malformed: a frame of length 0 or too long; stalled: the client stopped reading and media.tcp_send_buffer filled; unrouted: the first frame named no session; unproven: no first frame within media.tcp_first_frame_timeout or no session answered on it within media.tcp_handshake_timeout; idle: nothing received for 30 s)",
            |s, o| {
                if let Some(t) = s.tcp {
                    for (reason, v) in [
                        ("refused", t.refused),
                        ("refused_source", t.refused_source),
                        ("malformed", t.malformed),
                        ("stalled", t.stalled),
                        ("unrouted", t.unrouted),
                        ("unproven", t.unproven),
                        ("idle", t.idle),
                    ] {
                        o.observe(v, &[KeyValue::new("reason", reason)]);
                    }
                }
            }
        );
        counter!(
            "cabine.tcp.frames",
            "{frame}",
            "RFC 4571 frames on ICE-TCP connections, by outcome (unsent: no connection to the destination, or the listener's queue was full)",
            |s, o| {
                if let Some(t) = s.tcp {
                    for (outcome, v) in [
                        ("received", t.frames_in),
                        ("sent", t.frames_out),
                        ("unsent", t.unsent),
                    ] {
                        o.observe(v, &[KeyValue::new("outcome", outcome)]);
                    }
                }
            }
        );
        counter!(
            "cabine.sfu.room_panics",
            "{room}",
            "Rooms closed because they panicked (their sessions ended; other rooms carried on)",
            |s, o| {
                o.observe(s.shell.room_panics, &[]);
            }
        );
        counter!(
            "cabine.sfu.telemetry.refused",
            "{message}",
            "Telemetry messages the media plane refused on a full worker telemetry queue, by reliability",
            |s, o| {
                let reliable = s.shell.data_dropped_reliable;
                o.observe(reliable, &[KeyValue::new("reliable", "true")]);
                o.observe(
                    s.shell.data_dropped.saturating_sub(reliable),
                    &[KeyValue::new("reliable", "false")],
                );
            }
        );
        counter!(
            "cabine.sfu.threads_died",
            "{thread}",
            "Media-plane threads that ended unexpectedly (the node then reports not ready)",
            |s, o| {
                o.observe(s.shell.threads_died, &[]);
            }
        );
        counter!(
            "cabine.requests.refused",
            "{request}",
            "HTTP requests refused, by reason",
            |s, o| {
                for (reason, v) in &s.refused {
                    o.observe(*v, &[KeyValue::new("reason", *reason)]);
                }
            }
        );

        // Read live (atomics), not from the sampled summary: a refusal shows at once.
        let limits: Arc<std::sync::OnceLock<Arc<crate::limits::Refusals>>> = Arc::default();
        let l = Arc::clone(&limits);
        let _ = meter
            .u64_observable_counter("cabine.limits.refused")
            .with_unit("{refusal}")
            .with_description("Requests, connections and messages refused by a limit, by limit")
            .with_callback(move |o| {
                if let Some(r) = l.get() {
                    for (limit, v) in r.all() {
                        o.observe(v, &[KeyValue::new("limit", limit.as_str())]);
                    }
                }
            })
            .build();
        let audit: Arc<std::sync::OnceLock<crate::audit::Audit>> = Arc::default();
        let a = Arc::clone(&audit);
        let _ = meter
            .u64_observable_counter("cabine.audit.dropped")
            .with_unit("{record}")
            .with_description(
                "Audit records dropped because the audit writer's queue was full (should stay 0)",
            )
            .with_callback(move |o| {
                if let Some(a) = a.get() {
                    o.observe(a.dropped(), &[]);
                }
            })
            .build();

        let cluster: Arc<std::sync::OnceLock<Arc<crate::cluster::Cluster>>> = Arc::default();
        type Read = fn(&crate::cluster::ClusterStats) -> &std::sync::atomic::AtomicU64;
        let counters: [(&'static str, &'static str, Read); 6] = [
            (
                "cabine.cluster.store_errors",
                "Cluster store operations that failed (unreachable, slow or odd answers)",
                |s| &s.store_errors,
            ),
            (
                "cabine.cluster.invalid_records",
                "Registry records of the cluster store that did not parse (ignored)",
                |s| &s.invalid_records,
            ),
            (
                "cabine.cluster.local_placements",
                "Rooms placed on this node without the store, while it was unreachable",
                |s| &s.local_placements,
            ),
            (
                "cabine.cluster.redirects",
                "Requests redirected to the node that owns their room",
                |s| &s.redirects,
            ),
            (
                "cabine.cluster.conflicts_lost",
                "Rooms this node gave up to another node after both held them (store outage)",
                |s| &s.conflicts_lost,
            ),
            (
                "cabine.cluster.full",
                "New rooms refused because no node had room (cluster.max_rooms, draining)",
                |s| &s.full,
            ),
        ];
        for (name, desc, read) in counters {
            let c = Arc::clone(&cluster);
            let _ = meter
                .u64_observable_counter(name)
                .with_description(desc)
                .with_callback(move |o| {
                    if let Some(c) = c.get() {
                        o.observe(
                            read(c.stats()).load(std::sync::atomic::Ordering::Relaxed),
                            &[],
                        );
                    }
                })
                .build();
        }
        let c = Arc::clone(&cluster);
        let _ = meter
            .u64_observable_gauge("cabine.cluster.store_up")
            .with_description("1 while the cluster store answers (always 1 for a single node)")
            .with_callback(move |o| {
                if let Some(c) = c.get() {
                    o.observe(u64::from(c.store_reachable()), &[]);
                }
            })
            .build();
        let c = Arc::clone(&cluster);
        let _ = meter
            .u64_observable_gauge("cabine.cluster.nodes")
            .with_description("Nodes in the cluster registry as last read (this one included)")
            .with_callback(move |o| {
                if let Some(c) = c.get() {
                    o.observe(c.nodes().len() as u64, &[]);
                }
            })
            .build();

        registry
            .register(Box::new(DelayCollector {
                summary: Arc::clone(&summary),
                desc: prometheus::core::Desc::new(
                    "cabine_sfu_forwarding_delay_seconds".into(),
                    "Time RTP packets spent inside the SFU, from socket read to hand-off to the socket"
                        .into(),
                    vec![],
                    HashMap::new(),
                )
                .map_err(|e| e.to_string())?,
            }))
            .map_err(|e| e.to_string())?;

        Ok(Metrics {
            registry,
            _provider: provider,
            summary,
            telemetry: std::sync::OnceLock::new(),
            limits,
            audit,
            cluster,
        })
    }

    /// Refreshes the summary now from a fresh snapshot of the media plane (the sampler, see
    /// [`crate::sampler`], does it every period; this is for tests and shutdown).
    pub async fn refresh(&self, sfu: &Sfu, refused: HashMap<&'static str, u64>) {
        let Ok((rooms, delay)) = sfu.snapshot_with_delay().await else {
            return;
        };
        self.update(&rooms, delay, sfu.stats(), sfu.tcp_stats(), refused);
    }

    /// Replaces the summary with one built from a sample of the media plane.
    pub fn update(
        &self,
        rooms: &[RoomSnapshot],
        delay: DelayHistogram,
        shell: ShellStats,
        tcp: Option<TcpStats>,
        refused: HashMap<&'static str, u64>,
    ) {
        let mut s = self.summary.lock().unwrap_or_else(|p| p.into_inner());
        let retired = std::mem::take(&mut s.retired);
        let mut telemetry = std::mem::take(&mut s.telemetry);
        if let Some(t) = self.telemetry.get() {
            telemetry.update(t);
        }
        let mut next = summarize(rooms, retired, delay);
        next.telemetry = telemetry;
        next.shell = shell;
        next.tcp = tcp;
        next.refused = refused;
        *s = next;
    }

    /// Pushes metrics to the OTLP collector now (if configured).
    pub fn flush(&self) {
        let _ = self._provider.force_flush();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let families = self.registry.gather();
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&families, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

fn summarize(rooms: &[RoomSnapshot], mut retired: Retired, delay: DelayHistogram) -> Summary {
    let mut s = Summary {
        rooms: rooms.len() as u64,
        delay,
        ..Summary::default()
    };
    let mut rtts = Vec::new();
    let mut bwes = Vec::new();
    let mut live = HashMap::new();
    for room in rooms {
        for sess in &room.sessions {
            let role: &'static str = match sess.role {
                cabine_proto::Role::Kiosk => "kiosk",
                cabine_proto::Role::Doctor => "doctor",
                cabine_proto::Role::Assistant => "assistant",
                cabine_proto::Role::Observer => "observer",
                cabine_proto::Role::Operator => "operator",
            };
            if let Some(t) = sess.transport {
                *s.transports.entry(t.label()).or_default() += 1;
            }
            if sess.kind == SessionKind::Publish
                || !room
                    .sessions
                    .iter()
                    .any(|o| o.identity == sess.identity && o.kind == SessionKind::Publish)
            {
                *s.participants.entry(role).or_default() += 1;
            }
            let (mut pi, mut bi, mut po, mut bo) = (0, 0, 0, 0);
            for p in &sess.published {
                let class = match p.track.class {
                    TrackClass::Stethoscope => "stethoscope",
                    TrackClass::DeviceCamera => "device-camera",
                    TrackClass::Audio => "audio",
                    TrackClass::Video => "video",
                };
                *s.tracks.entry(class).or_default() += 1;
                for l in &p.layers {
                    pi += l.packets;
                    bi += l.bytes;
                    s.nacks += l.nacks;
                    s.plis += l.plis;
                    s.firs += l.firs;
                    s.keyframes += l.keyframes;
                    s.loss_max = s.loss_max.max(f64::from(l.loss));
                    s.jitter_ms_max = s.jitter_ms_max.max(l.jitter_ms);
                    if let Some(r) = l.rtt_ms {
                        rtts.push(r);
                    }
                }
            }
            for r in &sess.received {
                po += r.stats.packets;
                bo += r.stats.bytes;
                s.layer_switches += r.stats.layer_switches;
                s.loss_max = s.loss_max.max(f64::from(r.stats.loss));
                if let Some(v) = r.stats.rtt_ms {
                    rtts.push(v);
                }
            }
            if let Some(b) = sess.bwe_bps {
                bwes.push(b);
            }
            if let Some(t) = sess.telemetry {
                s.telemetry_sent += t.sent;
                s.telemetry_dropped += t.dropped;
            }
            s.packets_in += pi;
            s.bytes_in += bi;
            s.packets_out += po;
            s.bytes_out += bo;
            live.insert(sess.id.0, (pi, bi, po, bo));
        }
    }
    // Sessions gone since the last refresh: keep their last counts in the totals.
    for (id, (pi, bi, po, bo)) in &retired.seen {
        if !live.contains_key(id) {
            retired.packets_in += pi;
            retired.bytes_in += bi;
            retired.packets_out += po;
            retired.bytes_out += bo;
        }
    }
    retired.seen = live;
    s.retired = retired;
    if !rtts.is_empty() {
        s.rtt_ms_mean = Some(rtts.iter().sum::<f64>() / rtts.len() as f64);
    }
    s.bwe_bps_min = bwes.iter().min().copied();
    if !bwes.is_empty() {
        s.bwe_bps_mean = Some(bwes.iter().sum::<u64>() / bwes.len() as u64);
    }
    s
}

/// Exposes the SFU's forwarding-delay histogram (kept in the core with fixed buckets) as a
/// Prometheus histogram.
struct DelayCollector {
    summary: Arc<Mutex<Summary>>,
    desc: prometheus::core::Desc,
}

impl Collector for DelayCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let h = self
            .summary
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .delay
            .clone();
        let mut hist = prometheus::proto::Histogram::default();
        let mut buckets = Vec::with_capacity(DelayHistogram::BOUNDS_US.len());
        let mut cumulative = 0;
        for (i, bound) in DelayHistogram::BOUNDS_US.iter().enumerate() {
            cumulative += h.buckets()[i];
            let mut b = prometheus::proto::Bucket::default();
            b.set_upper_bound(*bound as f64 / 1e6);
            b.set_cumulative_count(cumulative);
            buckets.push(b);
        }
        hist.set_bucket(buckets);
        hist.set_sample_count(h.count());
        hist.set_sample_sum(h.sum_us() as f64 / 1e6);
        let mut m = prometheus::proto::Metric::default();
        m.set_histogram(hist);
        let mut mf = MetricFamily::default();
        mf.set_name(self.desc.fq_name.clone());
        mf.set_help(self.desc.help.clone());
        mf.set_field_type(prometheus::proto::MetricType::HISTOGRAM);
        mf.mut_metric().push(m);
        vec![mf]
    }
}
