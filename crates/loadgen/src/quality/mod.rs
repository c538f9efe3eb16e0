//! The quality benchmark (issue 14): one real cabin and one doctor, each behind its own copy of
//! a named impaired link, and what the doctor's side would see and hear.
//!
//! ```text
//! cabine-kiosk dial ──▶ Tap ──▶ impair Relay (profile) ──▶ cabine ──▶ impair Relay (profile) ──▶ WHEP receiver
//!  (stethoscope, mic,    notes when each                    (SFU)                               (cabine-client, records
//!   device + room cam)   frame left the kiosk                                                    every RTP packet's arrival)
//! ```
//!
//! The publisher is the real `cabine-kiosk dial` binary (its synthetic room camera, device
//! camera, microphone and stethoscope, congestion control on), given the tap as `--media-via`.
//! The kiosk's uplink is the profile's uplink; the doctor's downlink is the profile's downlink
//! (the other direction of each carries RTCP). The receiver is a WHEP subscriber
//! ([`cabine_client::Subscriber`], webrtc-rs with NACK) that records every packet; after the
//! run the records are analysed: [`audio`] (frames played in time by a fixed jitter buffer),
//! [`video`] (decodable frames, freezes, resolution, frame rate) and [`latency`] (glass to
//! glass, from the tap's send times). Like a browser, the receiver asks for a keyframe when a
//! video packet is lost beyond NACK's repair ([`pli`]). A warm-up (connection, bandwidth estimation) precedes the
//! measurement window.

pub mod audio;
pub mod latency;
pub mod pli;
pub mod report;
pub mod tap;
pub mod video;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cabine_client::{ClientOptions, Subscriber};
use cabine_impair::{Profile, Relay, RelayConfig};
use cabine_proto::Role;

use crate::target::{self, Target};
use report::{LinkReport, QualityReport, TrackLatency};

/// One received RTP packet (payload cut to what the analysis reads).
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Arrival, since the run's epoch.
    pub at: Duration,
    /// Sequence number.
    pub seq: u16,
    /// RTP timestamp.
    pub ts: u32,
    /// Marker bit.
    pub marker: bool,
    /// Payload type.
    pub pt: u8,
    /// The payload (video: its first [`video::PREFIX`] bytes).
    pub payload: Vec<u8>,
}

/// A track's records, filled by its reader task.
type Store = Arc<Mutex<Vec<Record>>>;

/// What to run.
#[derive(Debug, Clone)]
pub struct QualityOptions {
    /// The link profile both clients sit behind.
    pub profile: Profile,
    /// Warm-up before the window (connection, bandwidth estimation, first keyframes).
    pub warmup: Duration,
    /// The measurement window.
    pub duration: Duration,
    /// The receiver's fixed audio jitter buffer (see [`audio`]).
    pub jitter_buffer: Duration,
    /// The `cabine` binary.
    pub cabine_bin: PathBuf,
    /// The `cabine-kiosk` binary.
    pub kiosk_bin: PathBuf,
    /// Extra arguments for `cabine-kiosk dial` (e.g. bitrates).
    pub kiosk_args: Vec<String>,
    /// Where the kiosk's log goes (`None`: discarded).
    pub kiosk_log: Option<PathBuf>,
    /// The command line, for the report.
    pub command: String,
}

/// Tracks the kiosk publishes, by their msid track id.
pub const TRACKS: [&str; 4] = ["stethoscope", "microphone", "device-camera", "room-camera"];

/// Runs one profile against Cabine and measures it.
pub fn run(opts: &QualityOptions) -> anyhow::Result<QualityReport> {
    let load_average = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let server = Target::cabine(&opts.cabine_bin, 1, None)?;
    let http = server
        .http
        .ok_or_else(|| anyhow::anyhow!("cabine has no HTTP address"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(measure(opts, http, server.media));
    server.stop();
    let mut report = result?;
    report.load_average = load_average;
    Ok(report)
}

/// Finds the `cabine-kiosk` binary: `$LOADGEN_KIOSK_BIN`, else next to this executable (or its
/// parent, for test binaries in `deps/`). Not a `CABINE_*` name: every `CABINE_*` variable is a
/// config key to the `cabine` child, which refuses unknown ones.
pub fn find_kiosk() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("LOADGEN_KIOSK_BIN") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join("cabine-kiosk"), dir.parent()?.join("cabine-kiosk")]
        .into_iter()
        .find(|p| p.is_file())
}

async fn measure(
    opts: &QualityOptions,
    http: std::net::SocketAddr,
    media: std::net::SocketAddr,
) -> anyhow::Result<QualityReport> {
    let epoch = Instant::now();
    let kiosk_link = Relay::start(RelayConfig {
        seed: 1,
        ..RelayConfig::loopback(media, opts.profile.clone())
    })
    .await?;
    let doctor_link = Relay::start(RelayConfig {
        seed: 2,
        ..RelayConfig::loopback(media, opts.profile.clone())
    })
    .await?;
    let tap = tap::Tap::start(kiosk_link.local_addr(), epoch)?;
    let room = "quality-1";
    let ttl = Duration::from_secs(3600);
    let kiosk_token = crate::token::mint(target::SECRET, room, Role::Kiosk, "kiosk-1", ttl)?;
    let doctor_token = crate::token::mint(target::SECRET, room, Role::Doctor, "doctor-1", ttl)?;
    let mut kiosk = Kiosk::spawn(opts, http, &kiosk_token, room, tap.local_addr())?;

    // Subscribe once the kiosk's four tracks are published: a WHEP session made earlier gets
    // them bound later, without their labels (`stethoscope`, …), so it is made again.
    let whep = format!("http://{http}/whep/{room}");
    let client = ClientOptions {
        loopback_only: true,
        media_via: Some(doctor_link.local_addr()),
        recv_video: 2,
        recv_audio: 2,
        ..ClientOptions::default()
    };
    let deadline = Instant::now() + Duration::from_secs(40);
    let (subscriber, tracks) = loop {
        if let Some(status) = kiosk.exited() {
            anyhow::bail!("cabine-kiosk exited before publishing: {status}");
        }
        if let Ok(s) = Subscriber::connect(&whep, &doctor_token, client.clone()).await {
            match s.tracks(TRACKS.len(), Duration::from_secs(5)).await {
                Ok(t) if t.iter().all(|t| TRACKS.contains(&t.id().as_str())) => break (s, t),
                _ => {
                    let _ = s.close().await;
                }
            }
        }
        if Instant::now() > deadline {
            kiosk.stop();
            anyhow::bail!("the doctor did not receive the kiosk's 4 tracks within 40 s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut records: Vec<(String, String, Store, Arc<AtomicU64>)> = Vec::new();
    for t in &tracks {
        let store: Store = Arc::default();
        let plis = Arc::new(AtomicU64::new(0));
        let video = t.mime_type().to_ascii_lowercase().starts_with("video/");
        records.push((t.id(), t.mime_type(), Arc::clone(&store), Arc::clone(&plis)));
        let t = t.clone();
        // NACK gets its round trips before a loss asks for a keyframe (see `pli`).
        let give_up = (opts.profile.base_rtt() * 3 + Duration::from_millis(100))
            .max(Duration::from_millis(200));
        let mut watch = pli::LossWatch::new(give_up, Duration::from_millis(500));
        tokio::spawn(async move {
            while let Ok(p) = t.read_rtp().await {
                let at = epoch.elapsed();
                if video && watch.on_packet(p.header.sequence_number, at) {
                    plis.fetch_add(1, Ordering::Relaxed);
                    let _ = t.request_keyframe().await;
                }
                let keep = if video {
                    p.payload.len().min(video::PREFIX)
                } else {
                    p.payload.len()
                };
                let r = Record {
                    at,
                    seq: p.header.sequence_number,
                    ts: p.header.timestamp,
                    marker: p.header.marker,
                    pt: p.header.payload_type,
                    payload: p.payload[..keep].to_vec(),
                };
                lock(&store).push(r);
            }
        });
    }
    let start = epoch.elapsed() + opts.warmup;
    let window = (start, start + opts.duration);
    // The measurement itself: wall time passes while the media flows.
    tokio::time::sleep(opts.warmup + opts.duration + Duration::from_millis(500)).await;
    let _ = subscriber.close().await;
    let kiosk_stats = kiosk.stop();
    let log = tap.log();
    drop(tap);

    let mut report = QualityReport::new(opts, &tracks.len());
    report
        .links
        .insert("kiosk".into(), LinkReport::of(&kiosk_link.stats()));
    report
        .links
        .insert("doctor".into(), LinkReport::of(&doctor_link.stats()));
    report.kiosk = kiosk_stats;
    for (id, mime, store, plis) in &records {
        let packets = std::mem::take(&mut *lock(store));
        let received: Vec<(u32, Duration)> = if mime.to_ascii_lowercase().starts_with("video/") {
            let Some((mut stats, shown)) = video::analyse(&packets, window) else {
                continue;
            };
            stats.keyframe_requests = plis.load(Ordering::Relaxed);
            report.cameras.insert(id.clone(), stats);
            // For latency, every frame shown since the start: the lock on the kiosk's
            // timestamps is taken before the SFU's first layer switch (usually in the warm-up)
            // and followed from there; only the window's frames are counted.
            video::analyse(&packets, (Duration::ZERO, window.1)).map_or(shown, |(_, all)| all)
        } else {
            // A RED track (RFC 2198) carries one payload type: RED's.
            let red = if mime.eq_ignore_ascii_case("audio/red") {
                packets.first().map(|p| p.pt)
            } else {
                None
            };
            let Some((stats, played)) =
                audio::analyse(&packets, red, 48_000, opts.jitter_buffer, window)
            else {
                continue;
            };
            report.audio.insert(id.clone(), stats);
            played
        };
        // Half a frame interval: 20 ms at 25 fps, 10 ms for 20 ms audio frames.
        let (clock, tolerance) = if mime.to_ascii_lowercase().starts_with("video/") {
            (90_000, Duration::from_millis(20))
        } else {
            (48_000, Duration::from_millis(10))
        };
        let m = log.follow(&received, clock, tolerance, window.0);
        let mut samples = m.exact.clone();
        samples.extend_from_slice(&m.estimated);
        report.latency_ms.insert(
            id.clone(),
            TrackLatency {
                received: received.iter().filter(|r| r.1 >= window.0).count(),
                matched: m.exact.len(),
                estimated: m.estimated.len(),
                percentiles: latency::Percentiles::of(&samples),
            },
        );
    }
    report.finish();
    Ok(report)
}

/// The `cabine-kiosk dial` child process.
struct Kiosk {
    child: Child,
}

impl Kiosk {
    fn spawn(
        opts: &QualityOptions,
        http: std::net::SocketAddr,
        token: &str,
        room: &str,
        via: std::net::SocketAddr,
    ) -> anyhow::Result<Kiosk> {
        let stderr = match &opts.kiosk_log {
            Some(p) => Stdio::from(std::fs::File::create(p)?),
            None => Stdio::null(),
        };
        let child = Command::new(&opts.kiosk_bin)
            .args([
                "dial",
                "--server",
                &format!("http://{http}"),
                "--room",
                room,
            ])
            .args([
                "--loopback",
                "--no-devices",
                "--no-telemetry",
                "--no-subscribe",
            ])
            .args(["--stats-json", "--media-via", &via.to_string()])
            .args(&opts.kiosk_args)
            .env("CABINE_TOKEN", token)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", opts.kiosk_bin.display()))?;
        Ok(Kiosk { child })
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Stops the kiosk (SIGTERM, then SIGKILL after 10 s) and returns its `--stats-json`.
    fn stop(&mut self) -> serde_json::Value {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child's pid; no memory is touched.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.exited().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut out = String::new();
        if let Some(mut s) = self.child.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        out.lines()
            .rev()
            .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| v["stats"].clone())
            .unwrap_or(serde_json::Value::Null)
    }
}

impl Drop for Kiosk {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
