//! Scenarios: consultations set up against a target, measured over a window.
//!
//! A 1:1 consultation is a kiosk (room camera, device camera, microphone, stethoscope) and a
//! doctor (camera, microphone); a 3-party room adds a specialist (camera, microphone). Against
//! Cabine each participant publishes over WHIP and subscribes over WHEP to everything the others
//! publish (two WebRTC sessions, as a browser or the kiosk client does); against the relay each
//! participant is one plain-RTP socket in its consultation's group.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cabine_proto::Role as TokenRole;
use serde::Serialize;

use crate::clock;
use crate::engine::{Engine, EngineConfig, PeerSnapshot};
use crate::http;
use crate::media::StreamClass;
use crate::peer::{Peer, Role};
use crate::receiver::{StreamStats, Summary};
use crate::target::{Histogram, Kind, ProcSample, Target};
use crate::tcp::IceTransport;
use crate::token;
use crate::turn::TurnCredentials;

/// Consultation shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Shape {
    /// Kiosk + doctor.
    OneToOne,
    /// Kiosk + doctor + specialist.
    ThreeParty,
}

impl Shape {
    /// Each participant: name, token role, streams published.
    pub fn participants(self) -> Vec<Participant> {
        use StreamClass::*;
        let mut v = vec![
            (
                "kiosk",
                TokenRole::Kiosk,
                vec![Camera, DeviceCamera, Microphone, Stethoscope],
            ),
            ("doctor", TokenRole::Doctor, vec![Camera, Microphone]),
        ];
        if self == Shape::ThreeParty {
            v.push(("specialist", TokenRole::Assistant, vec![Camera, Microphone]));
        }
        v
    }
}

/// A participant of a consultation: name, token role, streams it publishes.
pub type Participant = (&'static str, TokenRole, Vec<StreamClass>);

/// One signalling request of a participant joining (a WHIP or WHEP `POST`).
#[derive(Debug, Clone, Copy)]
pub struct Join {
    /// From sending the offer to having the answer, redirects included.
    pub took: Duration,
    /// Redirects followed.
    pub redirects: u32,
}

/// One measurement window's results.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// Consultations running.
    pub consultations: usize,
    /// Window length, seconds.
    pub seconds: f64,
    /// Peers connected / set up.
    pub peers_connected: usize,
    /// Peers set up.
    pub peers: usize,
    /// Peers that failed (ICE disconnected, errors).
    pub peers_failed: usize,
    /// All streams.
    pub overall: Summary,
    /// Per stream class.
    pub by_class: Vec<(StreamClass, Summary)>,
    /// Latency CDF: (quantile, microseconds), for the plot.
    pub latency_cdf: Vec<(f64, f64)>,
    /// Media packets delivered to receivers (the forwarded packets).
    pub forwarded_packets: u64,
    /// Forwarded packets per second.
    pub egress_pps: f64,
    /// Media packets the generator sent.
    pub sent_packets: u64,
    /// Target CPU over the window, in cores (1.0 = one core busy).
    pub server_cores: f64,
    /// Target CPU per forwarded packet, microseconds.
    pub server_cpu_us_per_packet: f64,
    /// Target CPU per consultation, percent of one core.
    pub server_cpu_pct_per_consultation: f64,
    /// Egress packets per second per core of target CPU.
    pub egress_pps_per_core: f64,
    /// The target's busiest threads over the window: (name#tid, cores), busiest first.
    pub server_threads: Vec<(String, f64)>,
    /// Target RSS at the end of the window, bytes.
    pub server_rss_bytes: u64,
    /// (RSS now − RSS with no consultation) / consultations, bytes.
    pub server_rss_bytes_per_consultation: f64,
    /// The generator's own CPU over the window, in cores.
    pub generator_cores: f64,
    /// SFU forwarding delay from the server's histogram (Cabine only), microseconds.
    pub sfu_delay_us_p50: Option<f64>,
    /// p99.
    pub sfu_delay_us_p99: Option<f64>,
    /// p99.9.
    pub sfu_delay_us_p999: Option<f64>,
    /// Mean.
    pub sfu_delay_us_mean: Option<f64>,
    /// Time from the start of a receiving peer's setup to its first media packet, p50,
    /// milliseconds: Cabine from the WHEP offer, Janus from the subscribe request (Janus
    /// subscribers are set up once their publishers are connected, Cabine's right after the
    /// WHIP answers, so Cabine's figure also holds its publishers' connection).
    pub first_media_ms_p50: Option<f64>,
    /// p99.
    pub first_media_ms_p99: Option<f64>,
    /// Receiving peers that got media (the sample of the two above).
    pub first_media_peers: usize,
    /// Keyframe requests the publishers received.
    pub keyframe_requests: u64,
    /// Datagrams the generator's sockets refused.
    pub generator_tx_errors: u64,
}

/// Settings shared by every scenario.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Generator engine.
    pub engine: EngineConfig,
    /// Time after connection before measuring.
    pub warmup: Duration,
    /// Measurement window.
    pub duration: Duration,
    /// How long peers get to connect.
    pub connect_timeout: Duration,
    /// The transport of Cabine's peers' ICE (Janus's and the relay's peers use UDP).
    pub ice: IceTransport,
    /// The TURN server and credentials when `ice` is [`IceTransport::Turn`].
    pub turn: Option<TurnCredentials>,
}

/// A target with consultations running on it.
pub struct Bench {
    /// The system under test.
    pub target: Target,
    engine: Engine,
    shape: Shape,
    settings: Settings,
    next_stream: u32,
    classes: HashMap<u32, StreamClass>,
    consultations: usize,
    peers: usize,
    idle: ProcSample,
    janus: Option<crate::janus::Client>,
}

impl Bench {
    /// Starts the generator against a started target.
    pub fn new(target: Target, shape: Shape, settings: Settings) -> anyhow::Result<Bench> {
        crate::peer::set_bind_ip(match target.kind {
            Kind::Janus => crate::janus::peer_ip(),
            _ => std::net::Ipv4Addr::LOCALHOST,
        });
        let engine = Engine::start(settings.engine)?;
        let idle = target.sample();
        Ok(Bench {
            target,
            engine,
            shape,
            settings,
            next_stream: 1,
            classes: HashMap::new(),
            consultations: 0,
            peers: 0,
            idle,
            janus: None,
        })
    }

    /// Consultations running.
    pub fn consultations(&self) -> usize {
        self.consultations
    }

    /// Adds `n` consultations and waits until their peers connected.
    pub fn add(&mut self, n: usize) -> anyhow::Result<()> {
        for _ in 0..n {
            self.add_one()?;
        }
        self.wait_connected()
    }

    fn add_one(&mut self) -> anyhow::Result<()> {
        let c = self.consultations;
        let parts = self.shape.participants();
        let mut published: Vec<(String, Vec<(u32, StreamClass)>)> = Vec::new();
        for (who, _, classes) in &parts {
            let streams = classes
                .iter()
                .map(|&class| {
                    let id = self.next_stream;
                    self.next_stream += 1;
                    self.classes.insert(id, class);
                    (id, class)
                })
                .collect();
            published.push((format!("{who}-{c}"), streams));
        }
        match self.target.kind {
            Kind::Relay => {
                for (name, streams) in &published {
                    let p = Peer::plain(name.clone(), c, self.target.media, c as u32, streams)?;
                    self.engine.add(p);
                    self.peers += 1;
                }
            }
            Kind::Cabine => {
                let http = self
                    .target
                    .http
                    .ok_or_else(|| anyhow::anyhow!("cabine without HTTP address"))?;
                let room = format!("bench-{c}");
                let ice = (self.settings.ice, self.settings.turn.as_ref());
                let joins = join_cabine(&mut self.engine, http, &room, c, &parts, &published, ice)?;
                self.peers += joins.len();
            }
            Kind::Janus => self.add_janus(c, &published)?,
        }
        self.consultations += 1;
        Ok(())
    }

    fn add_janus(
        &mut self,
        c: usize,
        published: &[(String, Vec<(u32, StreamClass)>)],
    ) -> anyhow::Result<()> {
        let http = self
            .target
            .http
            .ok_or_else(|| anyhow::anyhow!("janus without HTTP address"))?;
        if self.janus.is_none() {
            self.janus = Some(crate::janus::Client::connect(http)?);
        }
        let Some(j) = self.janus.as_mut() else {
            unreachable!("set above")
        };
        let room = 1_000 + c as u64;
        let admin = j.attach()?;
        j.create_room(admin, room, published.len() as u32 + 1)?;
        let mut feeds = Vec::new();
        for (name, streams) in published {
            let p = Peer::webrtc_offer(format!("{name}/pub"), c, &Role::Publish(streams.clone()))?;
            let h = j.attach()?;
            let (feed, answer) = j.publish(h, room, name, &p.offer)?;
            self.engine.add(p.accept(&answer)?);
            self.peers += 1;
            feeds.push(feed);
        }
        // Janus offers a feed to subscribers only once its publisher's PeerConnection is up.
        self.wait_connected()?;
        let Some(j) = self.janus.as_mut() else {
            unreachable!("set above")
        };
        for (i, (name, _)) in published.iter().enumerate() {
            let others: Vec<u64> = feeds
                .iter()
                .enumerate()
                .filter(|(k, _)| *k != i)
                .map(|(_, f)| *f)
                .collect();
            let asked = Instant::now();
            let mut tries = 0;
            let (h, offer) = loop {
                let h = j.attach()?;
                match j.subscribe(h, room, &others) {
                    Ok(offer) => break (h, offer),
                    Err(e) if tries < 20 && e.to_string().contains("No such feed") => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(250));
                    }
                    Err(e) => return Err(e),
                }
            };
            let (mut p, answer) = Peer::webrtc_answer(format!("{name}/sub"), c, &offer)?;
            p.started_at(asked);
            j.start(h, &answer)?;
            self.engine.add(p);
            self.peers += 1;
        }
        Ok(())
    }

    fn wait_connected(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.settings.connect_timeout;
        loop {
            let snap = self.engine.snapshot();
            let connected = snap.iter().filter(|p| p.connected).count();
            if let Some(f) = snap.iter().find(|p| p.failed.is_some()) {
                anyhow::bail!("{} failed: {}", f.name, f.failed.as_deref().unwrap_or(""));
            }
            if connected == self.peers && snap.len() == self.peers {
                return Ok(());
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "{connected} of {} peers connected after {:?}",
                    self.peers,
                    self.settings.connect_timeout
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits the warm-up, then measures one window.
    pub fn measure(&mut self) -> Measurement {
        std::thread::sleep(self.settings.warmup);
        self.engine.reset();
        let h0 = self.target.forwarding_delay();
        let s0 = self.target.sample();
        let th0 = self.target.threads();
        let g0 = clock::self_cpu();
        let sent0: u64 = self.engine.snapshot().iter().map(|p| p.sent).sum();
        let t0 = Instant::now();
        std::thread::sleep(self.settings.duration);
        let snap = self.engine.snapshot();
        let secs = t0.elapsed().as_secs_f64();
        let s1 = self.target.sample();
        let th1 = self.target.threads();
        let g1 = clock::self_cpu();
        let h1 = self.target.forwarding_delay();
        let delay = match (h0, h1) {
            (Some(a), Some(b)) => Some(b.since(&a)),
            (None, Some(b)) => Some(b),
            _ => None,
        };
        let mut m = self.summarise(&snap, secs, s0, s1, (g1 - g0).as_secs_f64(), sent0, delay);
        let mut threads: Vec<(String, f64)> = th1
            .into_iter()
            .map(|(name, cpu)| {
                let before = th0.iter().find(|(n, _)| *n == name).map_or(0.0, |t| t.1);
                (name, (cpu - before) / secs)
            })
            .filter(|(_, c)| *c > 0.0)
            .collect();
        threads.sort_by(|a, b| b.1.total_cmp(&a.1));
        threads.truncate(6);
        m.server_threads = threads;
        m
    }

    #[allow(clippy::too_many_arguments)]
    fn summarise(
        &self,
        snap: &[PeerSnapshot],
        secs: f64,
        s0: ProcSample,
        s1: ProcSample,
        gen_cpu: f64,
        sent0: u64,
        delay: Option<Histogram>,
    ) -> Measurement {
        let mut by_class: Vec<(StreamClass, Vec<&StreamStats>)> =
            StreamClass::ALL.iter().map(|c| (*c, Vec::new())).collect();
        let mut all = Vec::new();
        for p in snap {
            for (id, st) in &p.rx {
                if let Some(class) = self.classes.get(id) {
                    if let Some(e) = by_class.iter_mut().find(|(c, _)| c == class) {
                        e.1.push(st);
                    }
                }
                all.push(st);
            }
        }
        let overall = Summary::of(all.iter().copied());
        let mut lat: Vec<u32> = all
            .iter()
            .flat_map(|s| s.latencies_ns.iter().copied())
            .collect();
        lat.sort_unstable();
        let latency_cdf = if lat.is_empty() {
            Vec::new()
        } else {
            let qs = (0..=99)
                .map(|i| f64::from(i) / 100.0)
                .chain([0.995, 0.999, 0.9999, 1.0]);
            qs.map(|q| {
                let i = ((lat.len() as f64 - 1.0) * q).round() as usize;
                (q, f64::from(lat[i]) / 1e3)
            })
            .collect()
        };
        let mut first: Vec<f64> = snap
            .iter()
            .filter_map(|p| p.first_media)
            .map(|d| d.as_secs_f64() * 1e3)
            .collect();
        first.sort_by(f64::total_cmp);
        let first_q = |q: f64| {
            let i = ((first.len() as f64 - 1.0) * q).round() as usize;
            first.get(i).copied()
        };
        let forwarded = overall.packets;
        let cpu = (s1.cpu_s - s0.cpu_s).max(0.0);
        let sent1: u64 = snap.iter().map(|p| p.sent).sum();
        let per = |x: f64, d: f64| if d > 0.0 { x / d } else { 0.0 };
        let q =
            |h: &Option<Histogram>, p: f64| h.as_ref().and_then(|h| h.quantile(p)).map(|s| s * 1e6);
        Measurement {
            consultations: self.consultations,
            seconds: secs,
            peers_connected: snap.iter().filter(|p| p.connected).count(),
            peers: snap.len(),
            peers_failed: snap.iter().filter(|p| p.failed.is_some()).count(),
            by_class: by_class
                .into_iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(c, v)| (c, Summary::of(v)))
                .collect(),
            overall,
            latency_cdf,
            forwarded_packets: forwarded,
            egress_pps: per(forwarded as f64, secs),
            sent_packets: sent1.saturating_sub(sent0),
            server_cores: per(cpu, secs),
            server_cpu_us_per_packet: per(cpu * 1e6, forwarded as f64),
            server_cpu_pct_per_consultation: per(per(cpu, secs) * 100.0, self.consultations as f64),
            egress_pps_per_core: per(forwarded as f64, cpu),
            server_threads: Vec::new(),
            server_rss_bytes: s1.rss_bytes,
            server_rss_bytes_per_consultation: per(
                s1.rss_bytes.saturating_sub(self.idle.rss_bytes) as f64,
                self.consultations as f64,
            ),
            generator_cores: per(gen_cpu, secs),
            sfu_delay_us_p50: q(&delay, 0.5),
            sfu_delay_us_p99: q(&delay, 0.99),
            sfu_delay_us_p999: q(&delay, 0.999),
            sfu_delay_us_mean: delay.as_ref().and_then(Histogram::mean).map(|s| s * 1e6),
            first_media_ms_p50: first_q(0.5),
            first_media_ms_p99: first_q(0.99),
            first_media_peers: first.len(),
            keyframe_requests: snap.iter().map(|p| p.keyframe_requests).sum(),
            generator_tx_errors: snap.iter().map(|p| p.tx_errors).sum(),
        }
    }

    /// Stops the generator and the target.
    pub fn stop(self) {
        self.engine.stop();
        self.target.stop();
    }
}

/// The ramp's stop conditions.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RampLimits {
    /// p99 one-way latency limit, microseconds.
    pub p99_us: f64,
    /// Loss limit (ratio).
    pub loss: f64,
    /// Consultations added per stage.
    pub step: usize,
    /// Most consultations tried.
    pub max: usize,
}

/// A ramp's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Ramp {
    /// One measurement per stage.
    pub stages: Vec<Measurement>,
    /// Most consultations that met the limits (0 if the first stage failed).
    pub capacity: usize,
    /// Why the ramp stopped.
    pub stopped_because: String,
}

/// Adds consultations stage by stage until a limit is crossed.
pub fn ramp(bench: &mut Bench, limits: RampLimits) -> Ramp {
    let mut stages = Vec::new();
    let mut capacity = 0;
    let stopped_because = loop {
        if bench.consultations() + limits.step > limits.max {
            break format!("reached the ramp's maximum of {} consultations", limits.max);
        }
        if let Err(e) = bench.add(limits.step) {
            break format!("setting up more consultations failed: {e}");
        }
        let m = bench.measure();
        let p99 = m.overall.latency_us_p99;
        let loss = m.overall.loss;
        let n = m.consultations;
        let failed = m.peers_failed;
        stages.push(m);
        if failed > 0 {
            break format!("{failed} peers failed at {n} consultations");
        }
        if p99 > limits.p99_us {
            break format!(
                "p99 latency {p99:.0} µs > {:.0} µs at {n} consultations",
                limits.p99_us
            );
        }
        if loss > limits.loss {
            break format!(
                "loss {:.3}% > {:.3}% at {n} consultations",
                loss * 100.0,
                limits.loss * 100.0
            );
        }
        capacity = n;
    };
    Ramp {
        stages,
        capacity,
        stopped_because,
    }
}

/// Joins one consultation on Cabine through the node at `http` (following redirects): each
/// participant publishes over WHIP, then subscribes over WHEP to everything the others publish;
/// the peers go to `engine`, their ICE over `ice` (with the TURN server for
/// [`IceTransport::Turn`]). `published` holds each participant's peer
/// name and streams. Returns one [`Join`] per peer (WHIPs first).
pub fn join_cabine(
    engine: &mut Engine,
    http: std::net::SocketAddr,
    room: &str,
    c: usize,
    parts: &[Participant],
    published: &[(String, Vec<(u32, StreamClass)>)],
    ice: (IceTransport, Option<&TurnCredentials>),
) -> anyhow::Result<Vec<Join>> {
    let tokens: Vec<String> = parts
        .iter()
        .zip(published)
        .map(|((_, role, _), (name, _))| {
            token::mint(
                crate::target::SECRET,
                room,
                *role,
                name,
                Duration::from_secs(3600),
            )
        })
        .collect::<Result<_, _>>()?;
    let mut joins = Vec::new();
    for ((name, streams), tok) in published.iter().zip(&tokens) {
        let p = Peer::webrtc_offer_over(
            format!("{name}/whip"),
            c,
            &Role::Publish(streams.clone()),
            ice.0,
            ice.1,
        )?;
        let (answer, join) = post_sdp(http, &format!("/whip/{room}"), tok, &p.offer)?;
        engine.add(p.accept(&answer)?);
        joins.push(join);
    }
    for (i, ((name, _), tok)) in published.iter().zip(&tokens).enumerate() {
        let others = published
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .flat_map(|(_, (_, s))| s.iter().map(|(_, c)| *c));
        let (video, audio) =
            others.fold(
                (0, 0),
                |(v, a), c| {
                    if c.is_video() {
                        (v + 1, a)
                    } else {
                        (v, a + 1)
                    }
                },
            );
        let p = Peer::webrtc_offer_over(
            format!("{name}/whep"),
            c,
            &Role::Subscribe { video, audio },
            ice.0,
            ice.1,
        )?;
        let (answer, join) = post_sdp(http, &format!("/whep/{room}"), tok, &p.offer)?;
        engine.add(p.accept(&answer)?);
        joins.push(join);
    }
    Ok(joins)
}

/// POSTs an SDP offer (following redirects); the answer and how the request went.
pub fn post_sdp(
    http: std::net::SocketAddr,
    path: &str,
    token: &str,
    offer: &str,
) -> anyhow::Result<(String, Join)> {
    let auth = format!("Bearer {token}");
    let t0 = Instant::now();
    let (r, followed) = http::request_traced(
        http,
        "POST",
        path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/sdp"),
        ],
        offer,
    )?;
    let took = t0.elapsed();
    if r.status != 201 {
        anyhow::bail!("POST {path}: {} {}", r.status, r.body.trim());
    }
    Ok((
        r.body,
        Join {
            took,
            redirects: followed.redirects,
        },
    ))
}
