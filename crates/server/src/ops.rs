//! The operators' live view: a pseudonymous JSON summary of the node (`GET /api/ops`) and the
//! same as a server-sent event stream (`GET /api/ops/stream`), which the `/ops` page draws.
//!
//! Rooms, participants and streams appear only as short stable hashes; tracks by class
//! (camera, stethoscope…). The worst streams (health, then loss, then jitter) come first.
//!
//! The server samples the node once per [`PERIOD`] whether or not anyone watches, and keeps
//! the last [`HISTORY_LEN`] samples of each stream and of the node in a [`History`] (bounded:
//! at most [`MAX_SERIES`] streams, keyed by hash). A dashboard therefore draws five minutes of
//! sparklines the moment it opens: the first event of the stream carries that history, the
//! following ones only the current view. The history is plain state driven with explicit time
//! ([`History::observe`]); the sampling task lives in the API shell.
//!
//! ```text
//! every PERIOD: snapshot → view(rooms, media, proc) → history.observe(&mut view, now) → publish
//! ```

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use cabine_proto::{Redacted, Role};
use cabine_sfu::room::{RoomSnapshot, SessionKind};
use cabine_sfu::shell::ShellStats;
use serde::Serialize;

/// How often the node is sampled and the stream sends a new view.
pub const PERIOD: Duration = Duration::from_secs(1);

/// Samples kept per series: five minutes at [`PERIOD`].
pub const HISTORY_LEN: usize = 300;

/// Streams whose history is kept; streams beyond it are shown without server-side history (the
/// page then draws what it has seen since it opened).
pub const MAX_SERIES: usize = 1024;

/// Streams whose history the first event carries (the worst ones, which the page shows first).
pub const HISTORY_STREAMS: usize = 64;

/// One refresh of the operators' view.
#[derive(Debug, Clone, Serialize)]
pub struct OpsView {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Node-level numbers.
    pub node: NodeView,
    /// Rooms, pseudonymous.
    pub rooms: Vec<RoomView>,
    /// Every stream of the node, worst first.
    pub streams: Vec<StreamView>,
    /// The recent past, in the first event of a stream only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<HistoryView>,
}

/// Node-level numbers.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    /// Rooms open.
    pub rooms: usize,
    /// Sessions (publish + subscribe).
    pub sessions: usize,
    /// Participants (distinct identities per room) by role.
    pub participants: BTreeMap<String, usize>,
    /// Kiosk publish sessions.
    pub kiosks: usize,
    /// Those of them with ICE and DTLS up.
    pub kiosks_connected: usize,
    /// Traffic rates over the last sampling period (absent before a second sample).
    pub rates: Rates,
    /// Machine and process load.
    pub load: Load,
    /// Media socket counters.
    pub media: ShellStats,
}

/// Traffic rates of the node, from the difference of two samples.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Rates {
    /// RTP packets received from publishers, per second.
    pub packets_in_per_s: Option<f64>,
    /// RTP packets forwarded to subscribers, per second.
    pub packets_out_per_s: Option<f64>,
    /// Payload bits received per second.
    pub bitrate_in_bps: Option<u64>,
    /// Payload bits forwarded per second.
    pub bitrate_out_bps: Option<u64>,
}

/// Machine and process load.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Load {
    /// CPUs available to the process.
    pub cpus: usize,
    /// The machine's one-minute load average (Linux).
    pub load_1m: Option<f64>,
    /// CPU time the process used over the last period, percent of all CPUs (Linux).
    pub cpu_percent: Option<f64>,
}

/// A room, pseudonymous.
#[derive(Debug, Clone, Serialize)]
pub struct RoomView {
    /// Stable hash of the room name.
    pub id: String,
    /// Its participants' sessions.
    pub participants: Vec<ParticipantView>,
}

/// A participant session, pseudonymous.
#[derive(Debug, Clone, Serialize)]
pub struct ParticipantView {
    /// Stable hash of the identity.
    pub id: String,
    /// Role.
    pub role: String,
    /// `publish` or `subscribe`.
    pub kind: String,
    /// ICE/DTLS connected.
    pub connected: bool,
    /// Bandwidth estimate towards it (subscribers), bits/s.
    pub bwe_bps: Option<u64>,
    /// The selected candidate pair's transport, `"<client candidate>/<protocol>"`
    /// (`"host/udp"`, `"prflx/tcp"`, `"relay/udp"`), once reported.
    pub transport: Option<&'static str>,
    /// Round-trip time, ms (first stream that reports one).
    pub rtt_ms: Option<f64>,
    /// Worst loss among its streams.
    pub loss: f32,
    /// Worst jitter among its streams, ms.
    pub jitter_ms: Option<f64>,
    /// Sum of its streams' bitrates, bits/s.
    pub bitrate_bps: Option<u64>,
    /// Link quality from loss, jitter and RTT.
    pub health: Health,
}

/// One stream's health.
#[derive(Debug, Clone, Serialize)]
pub struct StreamView {
    /// Stable hash naming this stream across views (room, session, direction, track, layer).
    pub key: String,
    /// Room hash.
    pub room: String,
    /// Participant hash.
    pub participant: String,
    /// Role of the participant.
    pub role: String,
    /// `in` (published) or `out` (forwarded to a subscriber).
    pub direction: &'static str,
    /// `audio` or `video`.
    pub kind: String,
    /// Track class (`stethoscope`, `device-camera`, `video`, `audio`).
    pub class: String,
    /// Simulcast layer (RID) in use.
    pub layer: Option<String>,
    /// Bitrate, bits/s.
    pub bitrate_bps: Option<u64>,
    /// Packets so far.
    pub packets: u64,
    /// Payload bytes so far.
    pub bytes: u64,
    /// Loss fraction.
    pub loss: f32,
    /// Jitter, ms.
    pub jitter_ms: Option<f64>,
    /// RTT, ms.
    pub rtt_ms: Option<f64>,
    /// Forwarding delay inside the SFU, p50 and p99, µs (incoming streams).
    pub delay_p50_us: Option<u64>,
    /// See `delay_p50_us`.
    pub delay_p99_us: Option<u64>,
    /// Health from loss, jitter and RTT.
    pub health: Health,
}

/// A link's health, from its loss, jitter and round-trip time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Nothing to worry about.
    Good,
    /// Noticeable: loss ≥ 1 %, jitter ≥ 30 ms or RTT ≥ 150 ms.
    Fair,
    /// A doctor will notice: loss ≥ 5 %, jitter ≥ 80 ms or RTT ≥ 400 ms.
    Poor,
}

impl Health {
    /// Grades a link.
    pub fn of(loss: f32, jitter_ms: Option<f64>, rtt_ms: Option<f64>) -> Health {
        let jitter = jitter_ms.unwrap_or(0.0);
        let rtt = rtt_ms.unwrap_or(0.0);
        if loss >= 0.05 || jitter >= 80.0 || rtt >= 400.0 {
            Health::Poor
        } else if loss >= 0.01 || jitter >= 30.0 || rtt >= 150.0 {
            Health::Fair
        } else {
            Health::Good
        }
    }
}

/// What the process and the machine report about their load, read by the shell
/// ([`ProcSample::read`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// CPU time the process used so far (user + system).
    pub cpu_time: Option<Duration>,
    /// One-minute load average.
    pub load_1m: Option<f64>,
    /// CPUs available.
    pub cpus: usize,
}

impl ProcSample {
    /// Reads `/proc/self/stat` and `/proc/loadavg` (Linux; `None` elsewhere).
    pub fn read() -> ProcSample {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let load_1m = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok());
        let cpu_time = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| proc_stat_cpu_time(&s));
        ProcSample {
            cpu_time,
            load_1m,
            cpus,
        }
    }
}

/// Builds the view from the media plane's snapshots. Rates and history are filled in by
/// [`History::observe`] (or [`History::annotate`]).
pub fn view(rooms: &[RoomSnapshot], media: ShellStats, proc: ProcSample, time_ms: u64) -> OpsView {
    let mut streams = Vec::new();
    let mut out_rooms = Vec::new();
    for room in rooms {
        let rid = Redacted(&room.room).to_string();
        let mut participants = Vec::new();
        for s in &room.sessions {
            let pid = Redacted(&s.identity).to_string();
            let role = s.role.to_string();
            let first = streams.len();
            for p in &s.published {
                for l in &p.layers {
                    let key = format!(
                        "{}\0{}\0in\0{}\0{}\0{}",
                        room.room.as_str(),
                        s.id,
                        p.track.label.stream,
                        p.track.label.track,
                        l.rid.as_deref().unwrap_or("")
                    );
                    streams.push(StreamView {
                        key: Redacted(&key).to_string(),
                        room: rid.clone(),
                        participant: pid.clone(),
                        role: role.clone(),
                        direction: "in",
                        kind: p.track.kind.to_owned(),
                        class: class_name(p.track.class),
                        layer: l.rid.clone(),
                        bitrate_bps: l.bitrate_bps,
                        packets: l.packets,
                        bytes: l.bytes,
                        loss: l.loss,
                        jitter_ms: Some(l.jitter_ms),
                        rtt_ms: l.rtt_ms,
                        delay_p50_us: Some(p.forwarding_delay.p50_us),
                        delay_p99_us: Some(p.forwarding_delay.p99_us),
                        health: Health::of(l.loss, Some(l.jitter_ms), l.rtt_ms),
                    });
                }
            }
            for r in &s.received {
                let Some(t) = &r.track else { continue };
                let key = format!(
                    "{}\0{}\0out\0{}\0{}\0{}",
                    room.room.as_str(),
                    s.id,
                    r.from.as_ref().map_or("", |f| f.as_str()),
                    t.label.stream,
                    t.label.track
                );
                streams.push(StreamView {
                    key: Redacted(&key).to_string(),
                    room: rid.clone(),
                    participant: pid.clone(),
                    role: role.clone(),
                    direction: "out",
                    kind: t.kind.to_owned(),
                    class: class_name(t.class),
                    layer: r.stats.layer.clone(),
                    bitrate_bps: None,
                    packets: r.stats.packets,
                    bytes: r.stats.bytes,
                    loss: r.stats.loss,
                    jitter_ms: r.stats.jitter_ms,
                    rtt_ms: r.stats.rtt_ms,
                    delay_p50_us: None,
                    delay_p99_us: None,
                    health: Health::of(r.stats.loss, r.stats.jitter_ms, r.stats.rtt_ms),
                });
            }
            let mine = &streams[first..];
            let loss = mine.iter().map(|v| v.loss).fold(0.0, f32::max);
            let jitter_ms = mine.iter().filter_map(|v| v.jitter_ms).reduce(f64::max);
            let rtt_ms = mine.iter().find_map(|v| v.rtt_ms);
            participants.push(ParticipantView {
                id: pid,
                role,
                kind: match s.kind {
                    SessionKind::Publish => "publish".into(),
                    SessionKind::Subscribe => "subscribe".into(),
                },
                connected: s.connected,
                bwe_bps: s.bwe_bps,
                transport: s.transport.map(|t| t.label()),
                rtt_ms,
                loss,
                jitter_ms,
                bitrate_bps: None,
                health: Health::of(loss, jitter_ms, rtt_ms),
            });
        }
        out_rooms.push(RoomView {
            id: rid,
            participants,
        });
    }
    sort_worst_first(&mut streams);
    let mut v = OpsView {
        time_ms,
        node: NodeView {
            rooms: 0,
            sessions: 0,
            participants: BTreeMap::new(),
            kiosks: 0,
            kiosks_connected: 0,
            rates: Rates::default(),
            load: Load {
                cpus: proc.cpus,
                load_1m: proc.load_1m,
                cpu_percent: None,
            },
            media,
        },
        rooms: out_rooms,
        streams,
        history: None,
    };
    v.count_people();
    v
}

impl OpsView {
    /// The part of the view an operator whose token names one room may see: that room's
    /// participants and streams (node-level traffic and load stay, they name no one).
    pub fn for_room(&self, room: &str) -> OpsView {
        let id = Redacted(room).to_string();
        let mut v = OpsView {
            time_ms: self.time_ms,
            node: self.node.clone(),
            rooms: self.rooms.iter().filter(|r| r.id == id).cloned().collect(),
            streams: self
                .streams
                .iter()
                .filter(|s| s.room == id)
                .cloned()
                .collect(),
            history: None,
        };
        v.count_people();
        v
    }

    fn count_people(&mut self) {
        let n = &mut self.node;
        n.rooms = self.rooms.len();
        n.sessions = 0;
        n.kiosks = 0;
        n.kiosks_connected = 0;
        n.participants.clear();
        for r in &self.rooms {
            let mut seen = HashSet::new();
            for p in &r.participants {
                n.sessions += 1;
                if p.role == Role::Kiosk.to_string() && p.kind == "publish" {
                    n.kiosks += 1;
                    n.kiosks_connected += usize::from(p.connected);
                }
                if seen.insert((&p.id, &p.role)) {
                    *n.participants.entry(p.role.clone()).or_default() += 1;
                }
            }
        }
    }
}

/// The recent past of the node and of the worst streams, oldest sample first. Every series
/// ends at `end_ms` and has one value per [`PERIOD`]; `null` where nothing was measured.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryView {
    /// Time between samples, ms.
    pub step_ms: u64,
    /// Time of the last sample, ms since the Unix epoch.
    pub end_ms: u64,
    /// Node series: `packets_in_per_s`, `packets_out_per_s`, `bitrate_in_bps`,
    /// `bitrate_out_bps`, `sessions`, `kiosks_connected`, `cpu_percent`.
    pub node: BTreeMap<&'static str, Vec<Option<f64>>>,
    /// Stream series by stream key: `bitrate_bps`, `loss`, `jitter_ms`, `rtt_ms`,
    /// `delay_p50_us`.
    pub streams: BTreeMap<String, BTreeMap<&'static str, Vec<Option<f64>>>>,
}

/// Bounded per-stream and node history, and the previous sample that rates are computed from.
/// No clock inside: [`History::observe`] takes `now`.
#[derive(Debug, Default)]
pub struct History {
    end_ms: u64,
    node: Series<7>,
    streams: HashMap<String, Series<5>>,
    prev: Option<Prev>,
    /// The rates of the last sample, for views built between samples.
    last_rates: Rates,
    last_cpu: Option<f64>,
    last_bitrates: HashMap<String, u64>,
}

const NODE_SERIES: [&str; 7] = [
    "packets_in_per_s",
    "packets_out_per_s",
    "bitrate_in_bps",
    "bitrate_out_bps",
    "sessions",
    "kiosks_connected",
    "cpu_percent",
];
const STREAM_SERIES: [&str; 5] = ["bitrate_bps", "loss", "jitter_ms", "rtt_ms", "delay_p50_us"];

impl History {
    /// An empty history.
    pub fn new() -> History {
        History::default()
    }

    /// Streams with a history.
    pub fn series_count(&self) -> usize {
        self.streams.len()
    }

    /// Samples in the node series.
    pub fn len(&self) -> usize {
        self.node.len()
    }

    /// Whether nothing was sampled yet.
    pub fn is_empty(&self) -> bool {
        self.node.len() == 0
    }

    /// Takes a new sample at `now`: fills `view`'s rates (stream bitrates of forwarded streams,
    /// node packet and bit rates, CPU) from the difference with the previous sample, then
    /// appends one value to each series. Streams that are gone lose their history.
    pub fn observe(&mut self, view: &mut OpsView, proc: ProcSample, now: Instant) {
        let counters: HashMap<String, (u64, u64)> = view
            .streams
            .iter()
            .map(|s| (s.key.clone(), (s.packets, s.bytes)))
            .collect();
        let mut rates = Rates::default();
        let mut cpu = None;
        let mut bitrates = HashMap::new();
        if let Some(prev) = &self.prev {
            let dt = now.saturating_duration_since(prev.at).as_secs_f64();
            if dt > 0.0 {
                let (mut pin, mut pout, mut bin, mut bout) = (0u64, 0u64, 0u64, 0u64);
                for s in &view.streams {
                    let Some(&(p0, b0)) = prev.counters.get(&s.key) else {
                        continue;
                    };
                    let dp = s.packets.saturating_sub(p0);
                    let db = s.bytes.saturating_sub(b0);
                    if s.direction == "in" {
                        pin += dp;
                        bin += db;
                    } else {
                        pout += dp;
                        bout += db;
                    }
                    bitrates.insert(s.key.clone(), (db as f64 * 8.0 / dt) as u64);
                }
                rates = Rates {
                    packets_in_per_s: Some(pin as f64 / dt),
                    packets_out_per_s: Some(pout as f64 / dt),
                    bitrate_in_bps: Some((bin as f64 * 8.0 / dt) as u64),
                    bitrate_out_bps: Some((bout as f64 * 8.0 / dt) as u64),
                };
                if let (Some(c0), Some(c1)) = (prev.cpu_time, proc.cpu_time) {
                    let used = c1.saturating_sub(c0).as_secs_f64();
                    cpu = Some(100.0 * used / dt / proc.cpus.max(1) as f64);
                }
            }
        }
        self.prev = Some(Prev {
            at: now,
            counters,
            cpu_time: proc.cpu_time,
        });
        self.last_rates = rates;
        self.last_cpu = cpu;
        self.last_bitrates = bitrates;
        self.annotate(view);

        // Append one sample everywhere.
        self.end_ms = view.time_ms;
        let r = &view.node.rates;
        self.node.push([
            r.packets_in_per_s,
            r.packets_out_per_s,
            r.bitrate_in_bps.map(|b| b as f64),
            r.bitrate_out_bps.map(|b| b as f64),
            Some(view.node.sessions as f64),
            Some(view.node.kiosks_connected as f64),
            view.node.load.cpu_percent,
        ]);
        let present: HashSet<&str> = view.streams.iter().map(|s| s.key.as_str()).collect();
        self.streams.retain(|k, _| present.contains(k.as_str()));
        for s in &view.streams {
            let values = [
                s.bitrate_bps.map(|b| b as f64),
                Some(f64::from(s.loss)),
                s.jitter_ms,
                s.rtt_ms,
                s.delay_p50_us.map(|d| d as f64),
            ];
            if let Some(series) = self.streams.get_mut(&s.key) {
                series.push(values);
            } else if self.streams.len() < MAX_SERIES {
                let mut series = Series::default();
                series.push(values);
                self.streams.insert(s.key.clone(), series);
            }
        }
    }

    /// Fills a view built between samples with the rates of the last sample (forwarded
    /// streams' bitrates, node rates, CPU).
    pub fn annotate(&self, view: &mut OpsView) {
        view.node.rates = self.last_rates;
        view.node.load.cpu_percent = self.last_cpu;
        for s in &mut view.streams {
            if s.bitrate_bps.is_none() {
                s.bitrate_bps = self.last_bitrates.get(&s.key).copied();
            }
        }
        let mut per_participant: HashMap<(&str, &str), u64> = HashMap::new();
        for s in &view.streams {
            if let Some(b) = s.bitrate_bps {
                *per_participant
                    .entry((s.room.as_str(), s.participant.as_str()))
                    .or_default() += b;
            }
        }
        for r in &mut view.rooms {
            for p in &mut r.participants {
                // A participant's publish and subscribe sessions share its hash; the sum is
                // over both, which is what its link carries.
                p.bitrate_bps = per_participant
                    .get(&(r.id.as_str(), p.id.as_str()))
                    .copied();
            }
        }
    }

    /// The node's history and that of `view`'s first [`HISTORY_STREAMS`] streams.
    pub fn view_for(&self, view: &OpsView) -> HistoryView {
        let streams = view
            .streams
            .iter()
            .take(HISTORY_STREAMS)
            .filter_map(|s| {
                Some((
                    s.key.clone(),
                    self.streams.get(&s.key)?.named(STREAM_SERIES),
                ))
            })
            .collect();
        HistoryView {
            step_ms: PERIOD.as_millis() as u64,
            end_ms: self.end_ms,
            node: self.node.named(NODE_SERIES),
            streams,
        }
    }
}

#[derive(Debug)]
struct Prev {
    at: Instant,
    counters: HashMap<String, (u64, u64)>,
    cpu_time: Option<Duration>,
}

/// `N` aligned rings of at most [`HISTORY_LEN`] values (NaN: nothing measured).
#[derive(Debug)]
struct Series<const N: usize> {
    values: VecDeque<[f32; N]>,
}

impl<const N: usize> Default for Series<N> {
    fn default() -> Self {
        Series {
            values: VecDeque::with_capacity(HISTORY_LEN),
        }
    }
}

impl<const N: usize> Series<N> {
    fn push(&mut self, v: [Option<f64>; N]) {
        if self.values.len() == HISTORY_LEN {
            self.values.pop_front();
        }
        self.values
            .push_back(v.map(|x| x.map_or(f32::NAN, |x| x as f32)));
    }

    fn len(&self) -> usize {
        self.values.len()
    }

    fn named(&self, names: [&'static str; N]) -> BTreeMap<&'static str, Vec<Option<f64>>> {
        names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let column = self
                    .values
                    .iter()
                    .map(|row| Some(f64::from(row[i])).filter(|x| x.is_finite()))
                    .collect();
                (*name, column)
            })
            .collect()
    }
}

fn sort_worst_first(streams: &mut [StreamView]) {
    streams.sort_by(|a, b| {
        b.health
            .cmp(&a.health)
            .then(b.loss.total_cmp(&a.loss))
            .then(
                b.jitter_ms
                    .unwrap_or(0.0)
                    .total_cmp(&a.jitter_ms.unwrap_or(0.0)),
            )
            .then(b.rtt_ms.unwrap_or(0.0).total_cmp(&a.rtt_ms.unwrap_or(0.0)))
    });
}

fn class_name(c: cabine_sfu::room::TrackClass) -> String {
    serde_json::to_value(c)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// User + system CPU time from the text of `/proc/self/stat`. Fields 14 and 15 count clock
/// ticks of `USER_HZ`, which Linux fixes at 100 for user space on every architecture.
fn proc_stat_cpu_time(stat: &str) -> Option<Duration> {
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // `rest` starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(key: &str, direction: &'static str, packets: u64, bytes: u64) -> StreamView {
        StreamView {
            key: key.into(),
            room: "#r".into(),
            participant: "#p".into(),
            role: "kiosk".into(),
            direction,
            kind: "video".into(),
            class: "video".into(),
            layer: None,
            bitrate_bps: None,
            packets,
            bytes,
            loss: 0.0,
            jitter_ms: None,
            rtt_ms: None,
            delay_p50_us: None,
            delay_p99_us: None,
            health: Health::Good,
        }
    }

    fn empty(time_ms: u64, streams: Vec<StreamView>) -> OpsView {
        let mut v = view(&[], ShellStats::default(), ProcSample::default(), time_ms);
        v.streams = streams;
        v
    }

    #[test]
    fn rates_come_from_two_samples_and_history_is_bounded() {
        let mut h = History::new();
        let t0 = Instant::now();
        let mut v = empty(0, vec![stream("#a", "out", 0, 0), stream("#b", "in", 0, 0)]);
        h.observe(&mut v, ProcSample::default(), t0);
        assert_eq!(
            v.node.rates.packets_out_per_s, None,
            "one sample: no rate yet"
        );
        for i in 1..=(HISTORY_LEN as u64 + 10) {
            let mut v = empty(
                i * 1000,
                vec![
                    stream("#a", "out", 100 * i, 1000 * i),
                    stream("#b", "in", 50 * i, 500 * i),
                ],
            );
            h.observe(&mut v, ProcSample::default(), t0 + PERIOD * i as u32);
            assert_eq!(v.node.rates.packets_out_per_s, Some(100.0));
            assert_eq!(v.node.rates.packets_in_per_s, Some(50.0));
            assert_eq!(v.node.rates.bitrate_out_bps, Some(8000));
            assert_eq!(v.streams[0].bitrate_bps, Some(8000));
        }
        assert_eq!(h.len(), HISTORY_LEN);
        let hv = h.view_for(&empty(0, vec![stream("#a", "out", 0, 0)]));
        assert_eq!(hv.streams["#a"]["bitrate_bps"].len(), HISTORY_LEN);
        assert_eq!(hv.node["packets_out_per_s"].last(), Some(&Some(100.0)));
        assert_eq!(hv.end_ms, (HISTORY_LEN as u64 + 10) * 1000);

        // A stream that ends loses its history; a new one starts empty.
        let mut v = empty(0, vec![stream("#c", "out", 0, 0)]);
        h.observe(&mut v, ProcSample::default(), t0 + PERIOD * 400);
        assert_eq!(h.series_count(), 1);
        assert_eq!(v.streams[0].bitrate_bps, None);
    }

    #[test]
    fn series_count_is_capped() {
        let mut h = History::new();
        let streams = (0..MAX_SERIES + 5)
            .map(|i| stream(&format!("#{i}"), "in", 0, 0))
            .collect();
        let mut v = empty(0, streams);
        h.observe(&mut v, ProcSample::default(), Instant::now());
        assert_eq!(h.series_count(), MAX_SERIES);
    }

    #[test]
    fn health_grades_and_worst_first() {
        assert_eq!(Health::of(0.0, Some(5.0), Some(20.0)), Health::Good);
        assert_eq!(Health::of(0.02, None, None), Health::Fair);
        assert_eq!(Health::of(0.0, None, Some(500.0)), Health::Poor);
        let mut a = stream("#a", "in", 0, 0);
        let mut b = stream("#b", "in", 0, 0);
        b.rtt_ms = Some(500.0);
        b.health = Health::Poor;
        a.loss = 0.02;
        a.health = Health::Fair;
        let mut s = vec![a, b];
        sort_worst_first(&mut s);
        assert_eq!(s[0].key, "#b");
    }

    #[test]
    fn cpu_time_from_proc_stat() {
        let line = "1234 (cabine worker) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 8 0 100";
        assert_eq!(proc_stat_cpu_time(line), Some(Duration::from_millis(3000)));
        assert_eq!(proc_stat_cpu_time("garbage"), None);
    }
}
