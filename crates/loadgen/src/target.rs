//! The system under test as a child process: `cabine serve` or the bare relay
//! (`cabine-loadgen relay`), with its CPU time and memory read from `/proc/<pid>`.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::http;

/// The server's development secret (public, see configs/default.toml); the child is started
/// with it explicitly.
pub const SECRET: &str = "cabine-loadgen-benchmark-secret-0123456789abcdef";

/// Which system is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// The Cabine server.
    Cabine,
    /// The bare UDP relay.
    Relay,
    /// Janus VideoRoom.
    Janus,
}

impl Kind {
    /// Name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Cabine => "cabine",
            Kind::Relay => "relay",
            Kind::Janus => "janus",
        }
    }
}

/// A running target.
pub struct Target {
    /// What it is.
    pub kind: Kind,
    child: Child,
    /// HTTP API (Cabine).
    pub http: Option<SocketAddr>,
    /// Admin listener with /metrics (Cabine).
    pub admin: Option<SocketAddr>,
    /// The UDP address media goes to.
    pub media: SocketAddr,
}

/// CPU and memory of a process at one instant.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcSample {
    /// User + system CPU time, seconds.
    pub cpu_s: f64,
    /// Resident set size, bytes.
    pub rss_bytes: u64,
}

impl Target {
    /// Starts `cabine serve` from `bin` with `workers` media worker threads (0: one per core).
    ///
    /// `initial_kbps` is the bandwidth the server assumes towards a new subscriber
    /// (`media.initial_bitrate_kbps`); `None` keeps the server's default.
    pub fn cabine(bin: &Path, workers: usize, initial_kbps: Option<u32>) -> anyhow::Result<Target> {
        Target::cabine_with(bin, workers, initial_kbps, |_| Vec::new())
    }

    /// [`Target::cabine`] with more environment, chosen once the node's HTTP address is known
    /// (a cluster node's `http.public_url` names it).
    pub fn cabine_with(
        bin: &Path,
        workers: usize,
        initial_kbps: Option<u32>,
        env: impl FnOnce(SocketAddr) -> Vec<(String, String)>,
    ) -> anyhow::Result<Target> {
        let http = free_tcp()?;
        let admin = free_tcp()?;
        let media = free_udp()?;
        let mut cmd = Command::new(bin);
        cmd.envs(env(http));
        if let Some(k) = initial_kbps {
            cmd.env("CABINE_MEDIA__INITIAL_BITRATE_KBPS", k.to_string());
        }
        let child = cmd
            .arg("serve")
            .env("CABINE_HTTP__LISTEN", http.to_string())
            .env("CABINE_MEDIA__BIND", media.to_string())
            .env("CABINE_MEDIA__WORKERS", workers.to_string())
            .env("CABINE_MEDIA__MAX_SESSIONS_PER_ROOM", "16")
            .env("CABINE_ADMIN__LISTEN", admin.to_string())
            // The telemetry sidecar is not measured here; off, so no fixed QUIC port is taken.
            .env("CABINE_TELEMETRY__LISTEN", "")
            .env("CABINE_AUTH__SECRET", SECRET)
            .env("CABINE_LOG__FILTER", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", bin.display()))?;
        let mut t = Target {
            kind: Kind::Cabine,
            child,
            http: Some(http),
            admin: Some(admin),
            media,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http::request(http, "GET", "/readyz", &[], "") {
                if r.status == 200 {
                    return Ok(t);
                }
            }
            if let Ok(Some(status)) = t.child.try_wait() {
                anyhow::bail!("cabine exited at start: {status}");
            }
            if Instant::now() > deadline {
                anyhow::bail!("cabine not ready on {http} after 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the bare relay: `bin relay` (this crate's binary), which prints its address.
    pub fn relay(bin: &Path) -> anyhow::Result<Target> {
        let mut child = Command::new(bin)
            .args(["relay", "--bind", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", bin.display()))?;
        let out = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("relay has no stdout"))?;
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line)?;
        let media: SocketAddr = line
            .trim()
            .strip_prefix("relay listening on ")
            .unwrap_or("")
            .parse()
            .map_err(|_| anyhow::anyhow!("relay said {line:?}"))?;
        Ok(Target {
            kind: Kind::Relay,
            child,
            http: None,
            admin: None,
            media,
        })
    }

    /// Starts a private Janus (`bin`, normally `janus` from Debian's package) on 127.0.0.1.
    pub fn janus(bin: &Path) -> anyhow::Result<Target> {
        let http = free_tcp()?;
        let dir = crate::janus::temp_dir();
        let args = crate::janus::prepare(&dir, http)?;
        let child = Command::new(bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", bin.display()))?;
        let mut t = Target {
            kind: Kind::Janus,
            child,
            http: Some(http),
            admin: None,
            media: http,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http::request(http, "GET", "/janus/info", &[], "") {
                if r.status == 200 {
                    return Ok(t);
                }
            }
            if let Ok(Some(status)) = t.child.try_wait() {
                anyhow::bail!("janus exited at start: {status}");
            }
            if Instant::now() > deadline {
                anyhow::bail!("janus not ready on {http} after 20 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time of each of the child's threads.
    pub fn threads(&self) -> Vec<(String, f64)> {
        thread_cpu(self.pid())
    }

    /// CPU time and RSS now.
    pub fn sample(&self) -> ProcSample {
        proc_sample(self.pid()).unwrap_or_default()
    }

    /// The forwarding-delay histogram scraped from /metrics (Cabine only).
    pub fn forwarding_delay(&self) -> Option<Histogram> {
        let admin = self.admin?;
        let r = http::request(admin, "GET", "/metrics", &[], "").ok()?;
        Histogram::parse(&r.body, "cabine_sfu_forwarding_delay_seconds")
    }

    /// Stops the child (and removes Janus's temporary configuration).
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.kind == Kind::Janus {
            let _ = std::fs::remove_dir_all(crate::janus::temp_dir());
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.try_wait();
    }
}

/// A cumulative Prometheus histogram: (upper bound in seconds, cumulative count), plus count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Buckets, increasing bounds, `+Inf` last.
    pub buckets: Vec<(f64, u64)>,
    /// Samples.
    pub count: u64,
    /// Sum of samples, seconds.
    pub sum: f64,
}

impl Histogram {
    /// Parses the series `name` from Prometheus text exposition.
    pub fn parse(text: &str, name: &str) -> Option<Histogram> {
        let mut h = Histogram::default();
        let bucket = format!("{name}_bucket");
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            if let Some(rest) = series.strip_prefix(&bucket) {
                let le = rest.split("le=\"").nth(1)?.split('"').next()?;
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                h.buckets.push((bound, value.parse::<f64>().ok()? as u64));
            } else if series.starts_with(&format!("{name}_count")) {
                h.count = value.parse::<f64>().ok()? as u64;
            } else if series.starts_with(&format!("{name}_sum")) {
                h.sum = value.parse().ok()?;
            }
        }
        if h.buckets.is_empty() {
            return None;
        }
        h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Some(h)
    }

    /// `self - earlier` (a measurement window).
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let buckets = self
            .buckets
            .iter()
            .map(|&(b, c)| {
                let before = earlier
                    .buckets
                    .iter()
                    .find(|(x, _)| *x == b)
                    .map_or(0, |x| x.1);
                (b, c.saturating_sub(before))
            })
            .collect();
        Histogram {
            buckets,
            count: self.count.saturating_sub(earlier.count),
            sum: self.sum - earlier.sum,
        }
    }

    /// The `q` quantile in seconds, interpolated linearly inside its bucket (as PromQL's
    /// `histogram_quantile`).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let mut prev = (0.0, 0u64);
        for &(bound, c) in &self.buckets {
            if c as f64 >= rank {
                if bound.is_infinite() {
                    return Some(prev.0);
                }
                let in_bucket = (c - prev.1) as f64;
                let frac = if in_bucket > 0.0 {
                    (rank - prev.1 as f64) / in_bucket
                } else {
                    0.0
                };
                return Some(prev.0 + (bound - prev.0) * frac);
            }
            prev = (bound, c);
        }
        None
    }

    /// Mean in seconds.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }
}

/// CPU time (seconds) of each thread of `pid`, by thread name.
pub fn thread_cpu(pid: u32) -> Vec<(String, f64)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some((_, after))) = (stat.find('('), stat.rsplit_once(')')) else {
            continue;
        };
        let name = stat[open + 1..]
            .rsplit_once(')')
            .map_or("", |x| x.0)
            .to_owned();
        let f: Vec<&str> = after.split_whitespace().collect();
        let t = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let tid = e.file_name().to_string_lossy().into_owned();
        out.push((format!("{name}#{tid}"), t as f64 / tck));
    }
    out
}

/// Reads `/proc/<pid>/stat` (utime + stime) and `/proc/<pid>/statm` (resident pages).
pub fn proc_sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at state (field 3).
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let resident: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(ProcSample {
        cpu_s: (utime + stime) as f64 / tck,
        rss_bytes: resident * page,
    })
}

/// Finds the `cabine` binary: `$CABINE_BIN`, else next to this executable (or its parent, for
/// test binaries in `deps/`).
pub fn find_cabine() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("CABINE_BIN") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join("cabine"), dir.parent()?.join("cabine")]
        .into_iter()
        .find(|p| p.is_file())
}

fn free_tcp() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

fn free_udp() -> std::io::Result<SocketAddr> {
    UdpSocket::bind("127.0.0.1:0")?.local_addr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_from_prometheus_text() {
        let text = "# TYPE x histogram\n\
            x_bucket{le=\"0.00001\"} 50\n\
            x_bucket{le=\"0.000025\"} 90\n\
            x_bucket{le=\"0.00005\"} 100\n\
            x_bucket{le=\"+Inf\"} 100\n\
            x_sum 0.0015\n\
            x_count 100\n";
        let h = Histogram::parse(text, "x").unwrap();
        assert_eq!(h.count, 100);
        assert!((h.quantile(0.5).unwrap() - 0.00001).abs() < 1e-12);
        // Rank 70: 20 of 40 into (10 µs, 25 µs].
        assert!((h.quantile(0.7).unwrap() - 0.0000175).abs() < 1e-12);
        let zero = h.since(&h);
        assert_eq!(zero.quantile(0.5), None);
        assert!(proc_sample(std::process::id()).unwrap().rss_bytes > 0);
    }
}
