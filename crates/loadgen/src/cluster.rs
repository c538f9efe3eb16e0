//! The cluster benchmark (issue 11): a real `redis-server` on a free loopback port and several
//! `cabine serve` nodes sharing it, each a child process measured through `/proc`.
//!
//! Two figures:
//!
//! - **Join time, direct against redirected.** Each consultation's room is placed first (a
//!   `GET /api/telemetry` with a participant's token places a new room by load, as any first
//!   request does, and answers `307` when it went to another node); its participants are then
//!   given either the URL of the node that holds the room (direct) or another node's URL (every
//!   WHIP/WHEP `POST` answered `307` to the owner, which the generator follows). The two kinds
//!   alternate so both see the same load. Measured: each `POST`'s signalling time (offer sent →
//!   answer, redirect included) and each receiver's time from its offer to its first media
//!   packet.
//! - **Registry cost.** Idle nodes over a window: a single node (no store) against the nodes of
//!   a cluster, with no room and with idle rooms (one connected subscriber each, no media):
//!   each node's CPU from `/proc/<pid>/stat`, Redis's CPU, and the commands Redis processed
//!   (`INFO stats` `total_commands_processed` before and after; `INFO commandstats` by command),
//!   per second and per node. The harness's own `INFO` commands are left out.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cabine_proto::Role as TokenRole;
use serde::Serialize;

use crate::engine::{Engine, EngineConfig};
use crate::http;
use crate::media::StreamClass;
use crate::peer::{Peer, Role};
use crate::report::{self, Machine};
use crate::scenario::{self, Join, Shape};
use crate::target::{self, ProcSample, Target};
use crate::tcp::IceTransport;
use crate::token;

/// What to run.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The `cabine` binary.
    pub cabine_bin: PathBuf,
    /// The `redis-server` binary.
    pub redis_bin: PathBuf,
    /// Nodes in the cluster (at least 2).
    pub nodes: usize,
    /// 1:1 consultations joined each way (direct and redirected).
    pub consultations: usize,
    /// Idle rooms for the second registry-cost window (0: only the empty window).
    pub idle_rooms: usize,
    /// Registry-cost window length.
    pub window: Duration,
    /// Time left between setting up a window's rooms and measuring it (connection set-up and
    /// the first registry refreshes are not idle).
    pub settle: Duration,
    /// Media worker threads per node.
    pub server_workers: usize,
    /// The nodes' initial bandwidth estimate towards new subscribers, kbit/s.
    pub server_initial_kbps: Option<u32>,
    /// Generator threads.
    pub threads: usize,
    /// The command line, for the report.
    pub command: String,
}

/// The benchmark's results.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterReport {
    /// When it started.
    pub date_utc: String,
    /// Where it ran (load average at start and end).
    pub machine: Machine,
    /// The command line.
    pub command: String,
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Participants given the owner's URL.
    pub direct: JoinTimes,
    /// Participants given another node's URL.
    pub redirected: JoinTimes,
    /// Registry-cost windows.
    pub idle: Vec<IdleWindow>,
    /// What failed, if anything.
    pub errors: Vec<String>,
}

/// Join times of one kind of consultation.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JoinTimes {
    /// Consultations joined.
    pub consultations: usize,
    /// WHIP/WHEP requests made.
    pub requests: usize,
    /// Redirects followed by those requests.
    pub redirects: u64,
    /// Signalling time of one request (offer sent → answer, redirects included), p50, ms.
    pub signalling_ms_p50: Option<f64>,
    /// p99.
    pub signalling_ms_p99: Option<f64>,
    /// Time from a receiver's offer to its first media packet, p50, ms.
    pub first_media_ms_p50: Option<f64>,
    /// p99.
    pub first_media_ms_p99: Option<f64>,
    /// Receivers that got media (the sample of the two above).
    pub first_media_peers: usize,
    /// Receivers set up.
    pub receivers: usize,
}

/// One registry-cost window.
#[derive(Debug, Clone, Serialize)]
pub struct IdleWindow {
    /// `single` (no store) or `cluster`.
    pub setup: String,
    /// Nodes running.
    pub nodes: usize,
    /// Idle rooms (one connected subscriber each), over all nodes.
    pub rooms: usize,
    /// Window length, seconds.
    pub seconds: f64,
    /// Each node's CPU over the window, in cores (1.0 = one core busy).
    pub node_cores: Vec<f64>,
    /// Their mean.
    pub node_cores_mean: f64,
    /// Redis's CPU, cores.
    pub redis_cores: Option<f64>,
    /// Commands Redis processed per second, all nodes.
    pub redis_commands_per_s: Option<f64>,
    /// The same per node.
    pub redis_commands_per_s_per_node: Option<f64>,
    /// Commands per second by command name (all nodes), busiest first.
    pub redis_commands: Vec<(String, f64)>,
    /// 1-minute load average at the window's end.
    pub load_avg_end: f64,
}

/// Runs the join-time comparison, then the registry-cost windows; failures are recorded in
/// the report.
pub fn run(opts: &ClusterOptions) -> ClusterReport {
    let mut machine = Machine::here();
    let mut rep = ClusterReport {
        date_utc: report::utc_now(),
        machine: machine.clone(),
        command: opts.command.clone(),
        nodes: opts.nodes,
        direct: JoinTimes::default(),
        redirected: JoinTimes::default(),
        idle: Vec::new(),
        errors: Vec::new(),
    };
    eprintln!("[loadgen] cluster: join times, direct and redirected …");
    match join_times(opts) {
        Ok((d, r)) => (rep.direct, rep.redirected) = (d, r),
        Err(e) => rep.errors.push(format!("join times: {e:#}")),
    }
    let mut rooms = vec![0];
    if opts.idle_rooms > 0 {
        rooms.push(opts.idle_rooms);
    }
    for clustered in [false, true] {
        for &n in &rooms {
            let setup = if clustered { "cluster" } else { "single" };
            eprintln!("[loadgen] cluster: idle {setup}, {n} rooms …");
            match idle_window(opts, clustered, n) {
                Ok(w) => rep.idle.push(w),
                Err(e) => rep
                    .errors
                    .push(format!("idle {setup} with {n} rooms: {e:#}")),
            }
        }
    }
    machine.load_end = report::load_avg();
    rep.machine = machine;
    rep
}

impl ClusterReport {
    /// A plain-text summary.
    pub fn table(&self) -> String {
        let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
        let mut s = format!(
            "cluster benchmark, {} nodes, {} ({} CPUs, load {:.2} → {:.2})\n\n\
             join            consult.  requests  redirects  signalling p50/p99 ms  first media p50/p99 ms  receivers\n",
            self.nodes,
            self.date_utc,
            self.machine.cpus,
            self.machine.load_start,
            self.machine.load_end
        );
        for (name, j) in [("direct", &self.direct), ("redirected", &self.redirected)] {
            s.push_str(&format!(
                "{name:<15} {:>8}  {:>8}  {:>9}  {:>10} / {:<9}  {:>10} / {:<11}  {}/{}\n",
                j.consultations,
                j.requests,
                j.redirects,
                ms(j.signalling_ms_p50),
                ms(j.signalling_ms_p99),
                ms(j.first_media_ms_p50),
                ms(j.first_media_ms_p99),
                j.first_media_peers,
                j.receivers
            ));
        }
        s.push_str(
            "\nidle      nodes  rooms  window s  CPU per node (% of a core)  mean %  redis %  \
             redis cmd/s  cmd/s per node  load\n",
        );
        for w in &self.idle {
            let per: Vec<String> = w
                .node_cores
                .iter()
                .map(|c| format!("{:.3}", c * 100.0))
                .collect();
            s.push_str(&format!(
                "{:<9} {:>5}  {:>5}  {:>8.1}  {:<26}  {:>6.3}  {:>7}  {:>11}  {:>14}  {:.2}\n",
                w.setup,
                w.nodes,
                w.rooms,
                w.seconds,
                per.join(" "),
                w.node_cores_mean * 100.0,
                w.redis_cores
                    .map_or("-".into(), |c| format!("{:.3}", c * 100.0)),
                w.redis_commands_per_s
                    .map_or("-".into(), |c| format!("{c:.2}")),
                w.redis_commands_per_s_per_node
                    .map_or("-".into(), |c| format!("{c:.2}")),
                w.load_avg_end
            ));
            if !w.redis_commands.is_empty() {
                let by: Vec<String> = w
                    .redis_commands
                    .iter()
                    .map(|(c, r)| format!("{c} {r:.2}/s"))
                    .collect();
                s.push_str(&format!("          by command: {}\n", by.join(", ")));
            }
        }
        for e in &self.errors {
            s.push_str(&format!("error: {e}\n"));
        }
        s
    }

    /// Writes `cluster.json` and `cluster.txt` into `dir`.
    pub fn write(&self, dir: &std::path::Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join("cluster.json"),
            serde_json::to_string_pretty(self)?,
        )?;
        std::fs::write(dir.join("cluster.txt"), self.table())?;
        Ok(())
    }
}

/// A `redis-server` child on a free loopback port, without persistence, killed on drop.
pub struct RedisServer {
    child: Child,
    /// Its port.
    pub port: u16,
}

impl RedisServer {
    /// Starts `bin` and waits until it answers `PING`.
    pub fn start(bin: &std::path::Path) -> anyhow::Result<RedisServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", bin.display()))?;
        let mut r = RedisServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if r.command(&["PING"]).is_ok_and(|p| p == "PONG") {
                return Ok(r);
            }
            if let Ok(Some(status)) = r.child.try_wait() {
                anyhow::bail!("redis-server exited at start: {status}");
            }
            if Instant::now() > deadline {
                anyhow::bail!("redis-server not answering on port {port} after 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one command on a fresh connection; its simple-string or bulk-string reply.
    pub fn command(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut s = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_secs(2),
        )?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes())?;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line)?;
        let line = line.trim_end();
        if let Some(simple) = line.strip_prefix('+') {
            return Ok(simple.to_owned());
        }
        let len: usize = line
            .strip_prefix('$')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("redis answered {line:?}"))?;
        let mut body = vec![0u8; len];
        r.read_exact(&mut body)?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// `total_commands_processed` from `INFO stats`.
    pub fn commands_processed(&self) -> anyhow::Result<u64> {
        let info = self.command(&["INFO", "stats"])?;
        info.lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no total_commands_processed in INFO stats"))
    }

    /// Calls per command from `INFO commandstats` (`cmdstat_get:calls=3,…`).
    pub fn command_calls(&self) -> anyhow::Result<HashMap<String, u64>> {
        let info = self.command(&["INFO", "commandstats"])?;
        Ok(info
            .lines()
            .filter_map(|l| l.strip_prefix("cmdstat_"))
            .filter_map(|l| {
                let (name, rest) = l.split_once(':')?;
                let calls = rest
                    .strip_prefix("calls=")?
                    .split(',')
                    .next()?
                    .parse()
                    .ok()?;
                Some((name.to_owned(), calls))
            })
            .collect())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `n` nodes on `redis` and waits until each sees all of them in its registry.
pub fn start_cluster(
    opts: &ClusterOptions,
    redis: &RedisServer,
    n: usize,
) -> anyhow::Result<Vec<Target>> {
    let mut nodes = Vec::new();
    for i in 0..n {
        let url = redis.url();
        let id = format!("node-{}", char::from(b'a' + (i % 26) as u8));
        nodes.push(Target::cabine_with(
            &opts.cabine_bin,
            opts.server_workers,
            opts.server_initial_kbps,
            |http| {
                vec![
                    ("CABINE_CLUSTER__REDIS_URL".into(), url),
                    ("CABINE_CLUSTER__NODE_ID".into(), id),
                    ("CABINE_HTTP__PUBLIC_URL".into(), format!("http://{http}")),
                ]
            },
        )?);
    }
    let ops = token::mint(
        target::SECRET,
        "*",
        TokenRole::Operator,
        "bench-ops",
        Duration::from_secs(3600),
    )?;
    let auth = format!("Bearer {ops}");
    for node in &nodes {
        let addr = http_of(node)?;
        wait_until(
            Duration::from_secs(20),
            "every node in the registry",
            || {
                http::request(addr, "GET", "/api/rooms", &[("Authorization", &auth)], "")
                    .ok()
                    .and_then(|r| serde_json::from_str::<serde_json::Value>(&r.body).ok())
                    .and_then(|v| v["nodes"].as_array().map(Vec::len))
                    == Some(n)
            },
        )?;
    }
    Ok(nodes)
}

/// Places `room` through the node at `via` (a `GET /api/telemetry` with a token for it, not
/// followed) and returns the address of the node that holds it.
pub fn place(via: SocketAddr, room: &str) -> anyhow::Result<SocketAddr> {
    let tok = token::mint(
        target::SECRET,
        room,
        TokenRole::Kiosk,
        "bench-placer",
        Duration::from_secs(3600),
    )?;
    let auth = format!("Bearer {tok}");
    let r = http::request(
        via,
        "GET",
        "/api/telemetry",
        &[("Authorization", &auth)],
        "",
    )?;
    match r.status {
        307 | 308 => {
            let loc = r
                .header("location")
                .ok_or_else(|| anyhow::anyhow!("307 without Location"))?;
            Ok(http::resolve(via, loc)
                .map_err(|e| anyhow::anyhow!("{e}: {loc}"))?
                .0)
        }
        // Served here: 200, or 404 with telemetry off (the room is placed either way).
        200 | 404 => Ok(via),
        s => anyhow::bail!("placing {room} through {via}: {s} {}", r.body.trim()),
    }
}

fn join_times(opts: &ClusterOptions) -> anyhow::Result<(JoinTimes, JoinTimes)> {
    anyhow::ensure!(opts.nodes >= 2, "a cluster needs at least 2 nodes");
    let redis = RedisServer::start(&opts.redis_bin)?;
    let nodes = start_cluster(opts, &redis, opts.nodes)?;
    let addrs: Vec<SocketAddr> = nodes.iter().map(http_of).collect::<Result<_, _>>()?;
    let mut engine = Engine::start(EngineConfig {
        threads: opts.threads,
        loss: 0.0,
    })?;
    let parts = Shape::OneToOne.participants();
    let mut joins: [Vec<Join>; 2] = [Vec::new(), Vec::new()];
    let mut redirected_consultation = HashMap::new();
    let mut next_stream = 1u32;
    let result = (|| -> anyhow::Result<()> {
        for c in 0..opts.consultations * 2 {
            let redirected = c % 2 == 1;
            let room = format!("cluster-{c}");
            let owner = place(addrs[c % addrs.len()], &room)?;
            let entry = if redirected {
                *addrs
                    .iter()
                    .find(|a| **a != owner)
                    .ok_or_else(|| anyhow::anyhow!("no node other than the owner"))?
            } else {
                owner
            };
            let published: Vec<(String, Vec<(u32, StreamClass)>)> = parts
                .iter()
                .map(|(who, _, classes)| {
                    let streams = classes
                        .iter()
                        .map(|&class| {
                            next_stream += 1;
                            (next_stream, class)
                        })
                        .collect();
                    (format!("{who}-{c}"), streams)
                })
                .collect();
            let j = scenario::join_cabine(
                &mut engine,
                entry,
                &room,
                c,
                &parts,
                &published,
                (IceTransport::Udp, None),
            )?;
            joins[usize::from(redirected)].extend(j);
            redirected_consultation.insert(c, redirected);
        }
        // Every receiver's first media packet, or the deadline.
        let receivers = opts.consultations * 2 * parts.len();
        let _ = wait_until(Duration::from_secs(30), "first media", || {
            engine
                .snapshot()
                .iter()
                .filter(|p| p.first_media.is_some())
                .count()
                >= receivers
        });
        Ok(())
    })();
    let snap = engine.snapshot();
    engine.stop();
    drop(nodes);
    drop(redis);
    result?;
    let mut out = [JoinTimes::default(), JoinTimes::default()];
    for (k, t) in out.iter_mut().enumerate() {
        let redirected = k == 1;
        t.consultations = opts.consultations;
        t.requests = joins[k].len();
        t.redirects = joins[k].iter().map(|j| u64::from(j.redirects)).sum();
        let mut sig: Vec<f64> = joins[k]
            .iter()
            .map(|j| j.took.as_secs_f64() * 1e3)
            .collect();
        (t.signalling_ms_p50, t.signalling_ms_p99) = quantiles(&mut sig);
        let receivers: Vec<_> = snap
            .iter()
            .filter(|p| p.name.ends_with("/whep"))
            .filter(|p| redirected_consultation.get(&p.consultation) == Some(&redirected))
            .collect();
        t.receivers = receivers.len();
        let mut first: Vec<f64> = receivers
            .iter()
            .filter_map(|p| p.first_media)
            .map(|d| d.as_secs_f64() * 1e3)
            .collect();
        t.first_media_peers = first.len();
        (t.first_media_ms_p50, t.first_media_ms_p99) = quantiles(&mut first);
    }
    let [d, r] = out;
    Ok((d, r))
}

fn idle_window(opts: &ClusterOptions, clustered: bool, rooms: usize) -> anyhow::Result<IdleWindow> {
    let redis = if clustered {
        Some(RedisServer::start(&opts.redis_bin)?)
    } else {
        None
    };
    let nodes = match &redis {
        Some(r) => start_cluster(opts, r, opts.nodes)?,
        None => vec![Target::cabine(
            &opts.cabine_bin,
            opts.server_workers,
            opts.server_initial_kbps,
        )?],
    };
    let addrs: Vec<SocketAddr> = nodes.iter().map(http_of).collect::<Result<_, _>>()?;
    let mut engine = Engine::start(EngineConfig {
        threads: 1,
        loss: 0.0,
    })?;
    let result = (|| -> anyhow::Result<IdleWindow> {
        for r in 0..rooms {
            let room = format!("idle-{r}");
            let name = format!("watcher-{r}");
            let tok = token::mint(
                target::SECRET,
                &room,
                TokenRole::Doctor,
                &name,
                Duration::from_secs(3600),
            )?;
            let p = Peer::webrtc_offer(
                format!("{name}/whep"),
                r,
                &Role::Subscribe { video: 1, audio: 0 },
            )?;
            let (answer, _) = scenario::post_sdp(
                addrs[r % addrs.len()],
                &format!("/whep/{room}"),
                &tok,
                &p.offer,
            )?;
            engine.add(p.accept(&answer)?);
        }
        wait_until(Duration::from_secs(30), "idle rooms connected", || {
            let s = engine.snapshot();
            s.len() == rooms && s.iter().all(|p| p.connected)
        })?;
        std::thread::sleep(opts.settle);
        let samples =
            |nodes: &[Target]| -> Vec<ProcSample> { nodes.iter().map(Target::sample).collect() };
        let redis_cpu = |r: &RedisServer| target::proc_sample(r.pid()).unwrap_or_default();
        let calls0 = redis.as_ref().map(RedisServer::command_calls).transpose()?;
        let r0 = redis.as_ref().map(redis_cpu);
        let n0 = samples(&nodes);
        let c0 = redis
            .as_ref()
            .map(RedisServer::commands_processed)
            .transpose()?;
        let t0 = Instant::now();
        std::thread::sleep(opts.window);
        let c1 = redis
            .as_ref()
            .map(RedisServer::commands_processed)
            .transpose()?;
        let secs = t0.elapsed().as_secs_f64();
        let n1 = samples(&nodes);
        let r1 = redis.as_ref().map(redis_cpu);
        let calls1 = redis.as_ref().map(RedisServer::command_calls).transpose()?;
        let node_cores: Vec<f64> = n0
            .iter()
            .zip(&n1)
            .map(|(a, b)| (b.cpu_s - a.cpu_s).max(0.0) / secs)
            .collect();
        // The harness's own commands in the window: the first `INFO stats` (counted once it
        // has run).
        let commands = c0
            .zip(c1)
            .map(|(a, b)| b.saturating_sub(a).saturating_sub(1));
        let mut by: Vec<(String, f64)> = match (calls0, calls1) {
            (Some(a), Some(b)) => b
                .iter()
                .filter(|(name, _)| name.as_str() != "info")
                .map(|(name, n)| {
                    let before = a.get(name).copied().unwrap_or(0);
                    (name.clone(), n.saturating_sub(before) as f64 / secs)
                })
                .filter(|(_, r)| *r > 0.0)
                .collect(),
            _ => Vec::new(),
        };
        by.sort_by(|a, b| b.1.total_cmp(&a.1));
        let per_s = commands.map(|c| c as f64 / secs);
        Ok(IdleWindow {
            setup: if clustered { "cluster" } else { "single" }.into(),
            nodes: nodes.len(),
            rooms,
            seconds: secs,
            node_cores_mean: node_cores.iter().sum::<f64>() / node_cores.len().max(1) as f64,
            node_cores,
            redis_cores: r0.zip(r1).map(|(a, b)| (b.cpu_s - a.cpu_s).max(0.0) / secs),
            redis_commands_per_s: per_s,
            redis_commands_per_s_per_node: per_s.map(|c| c / nodes.len() as f64),
            redis_commands: by,
            load_avg_end: report::load_avg(),
        })
    })();
    engine.stop();
    drop(nodes);
    drop(redis);
    result
}

/// The node's HTTP address.
fn http_of(t: &Target) -> anyhow::Result<SocketAddr> {
    t.http
        .ok_or_else(|| anyhow::anyhow!("a cabine node without HTTP address"))
}

/// Polls `done` every 50 ms until it holds or `limit` passes.
fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            anyhow::bail!("{what}: not within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// p50 and p99 (nearest rank) of `v`, sorted in place.
fn quantiles(v: &mut [f64]) -> (Option<f64>, Option<f64>) {
    v.sort_by(f64::total_cmp);
    let q = |q: f64| {
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        v.get(i).copied()
    };
    (q(0.5), q(0.99))
}
