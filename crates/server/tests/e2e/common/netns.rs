//! A network namespace for the reach tests (TURN, ICE-TCP): a veth pair to the host, iptables
//! rules inside, threads that join it. Needs root; [`can_run`] says when a test must skip, and
//! with `NETNS_TESTS_REQUIRE_ROOT` set (scripts/test sets it when run as root, as CI is) a
//! test that cannot run fails instead.

use std::future::Future;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::MutexGuard;

use super::browser::{self, run_driver_with, SERIAL};

/// Whether this process can create namespaces (root, with `ip` and `iptables`): when not
/// root, prints that `test` was skipped and why on the real stderr (the test harness does not
/// capture it, so the skip shows in every run), or fails when `NETNS_TESTS_REQUIRE_ROOT` is
/// set; a missing tool fails with what to install.
pub fn can_run(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        let why = format!(
            "{test}: creating a network namespace and its iptables rules needs root (CI runs \
             the tests as root)"
        );
        assert!(
            std::env::var_os("NETNS_TESTS_REQUIRE_ROOT").is_none(),
            "{why}, and NETNS_TESTS_REQUIRE_ROOT is set: this test must run"
        );
        // Written to the process's stderr, not through the captured `eprintln!`.
        let _ = std::io::stderr().write_all(format!("SKIPPED: {why}\n").as_bytes());
        return false;
    }
    for tool in ["/usr/sbin/iptables", "/usr/sbin/ip"] {
        assert!(
            std::path::Path::new(tool).exists(),
            "{tool} is missing: apt-get install iptables iproute2 (scripts/test installs them)"
        );
    }
    true
}

/// What the reach test `test` starts with: `None` when it must skip ([`can_run`]), else the
/// browser scripts' directory (prerequisites checked, see [`browser::check_prerequisites`]),
/// the browser lock (hold it for the whole test) and a new namespace.
pub async fn prepare(test: &str) -> Option<(PathBuf, MutexGuard<'static, ()>, Netns)> {
    if !can_run(test) {
        return None;
    }
    let dir = browser::dir();
    browser::check_prerequisites(&dir);
    let serial = SERIAL.lock().await;
    Some((dir, serial, Netns::create()))
}

/// `GET {base}/api/rooms` with the operator token `ops`; `None` when the request fails (a
/// body that is not JSON reads as `null`).
pub async fn rooms(base: &str, ops: &str) -> Option<serde_json::Value> {
    let r = reqwest::Client::new()
        .get(format!("{base}/api/rooms"))
        .bearer_auth(ops)
        .send()
        .await
        .ok()?;
    Some(r.json().await.unwrap_or_default())
}

/// The sessions `/api/rooms` (`rooms`) lists for `room`.
pub fn room_sessions<'a>(
    rooms: &'a serde_json::Value,
    room: &'a str,
) -> impl Iterator<Item = &'a serde_json::Value> {
    rooms["rooms"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(move |r| r["room"] == room)
        .flat_map(|r| r["sessions"].as_array().into_iter().flatten())
}

/// The sessions `cabine_sfu_sessions_transport` counts under transport labels ending in
/// `suffix` (`"/tcp"`, `"relay/tls"`), read from the admin listener's `/metrics` after a
/// refresh.
pub async fn sessions_by_transport(s: &super::TestServer, suffix: &str) -> (f64, String) {
    s.server.refresh_metrics().await;
    let admin = s.server.admin_addr().expect("admin listener");
    let text = match reqwest::get(format!("http://{admin}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => return (0.0, String::new()),
    };
    let n = text
        .lines()
        .filter(|l| l.starts_with("cabine_sfu_sessions_transport"))
        .filter_map(|l| {
            let label = l.split("transport=\"").nth(1)?.split('"').next()?;
            let value = l.rsplit(' ').next()?.parse::<f64>().ok()?;
            label.ends_with(suffix).then_some(value)
        })
        .sum();
    let lines = text
        .lines()
        .filter(|l| l.starts_with("cabine_sfu_sessions_transport"))
        .collect::<Vec<_>>()
        .join("\n");
    (n, lines)
}

/// A network namespace joined to the host by a veth pair (`host_ip` on the host's end,
/// `ns_ip` inside, a /30), deleted on drop.
pub struct Netns {
    pub name: String,
    host_if: String,
    pub host_ip: Ipv4Addr,
}

impl Netns {
    /// Each step that fails panics after the struct exists, so unwinding drops it and
    /// [`Drop`] deletes what was made (the namespace, the host's end of the pair).
    pub fn create() -> Netns {
        let mut rng = rand::rng();
        let tag: u32 = rng.random();
        let (b, c) = (rng.random_range(200u8..250), rng.random::<u8>() & 0xfc);
        let ns = Netns {
            name: format!("cabturn{tag:08x}"),
            host_if: format!("ct{:06x}h", tag & 0xff_ffff),
            host_ip: Ipv4Addr::new(10, b, c, 1),
        };
        let ns_if = format!("ct{:06x}n", tag & 0xff_ffff);
        let ns_ip = Ipv4Addr::new(10, b, c, 2);
        run(&["ip", "netns", "add", &ns.name]);
        run(&[
            "ip",
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns_if,
        ]);
        run(&["ip", "link", "set", &ns_if, "netns", &ns.name]);
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", ns.host_ip),
            "dev",
            &ns.host_if,
        ]);
        run(&["ip", "link", "set", &ns.host_if, "up"]);
        ns.exec(&["ip", "addr", "add", &format!("{ns_ip}/30"), "dev", &ns_if]);
        ns.exec(&["ip", "link", "set", &ns_if, "up"]);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns.exec(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &ns.host_ip.to_string(),
        ]);
        ns
    }

    /// Runs a command inside the namespace; panics with its output if it fails.
    pub fn exec(&self, args: &[&str]) {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        run(&all);
    }

    /// Drops every outgoing packet but loopback and TCP to the host's end on `ports`.
    pub fn only_tcp_to(&self, ports: &[u16]) {
        self.exec(&["iptables", "-A", "OUTPUT", "-o", "lo", "-j", "ACCEPT"]);
        for port in ports {
            self.exec(&[
                "iptables",
                "-A",
                "OUTPUT",
                "-p",
                "tcp",
                "-d",
                &self.host_ip.to_string(),
                "--dport",
                &port.to_string(),
                "-j",
                "ACCEPT",
            ]);
        }
        self.exec(&["iptables", "-P", "OUTPUT", "DROP"]);
    }

    /// Runs `f` on a thread that joined the namespace (its sockets are the namespace's).
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = std::fs::File::open(&path).expect("the namespace's handle");
                    // SAFETY: setns on this thread only, with a valid namespace descriptor.
                    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                    f()
                })
                .join()
                .expect("namespace thread")
        })
    }

    /// Runs the future `f` makes to completion on a current-thread runtime on a thread that
    /// joined the namespace (its sockets are the namespace's), the caller's worker thread
    /// blocked meanwhile (`block_in_place`: the caller's runtime must be multi-threaded).
    pub fn block_on<F: Future>(&self, f: impl FnOnce() -> F + Send) -> F::Output
    where
        F::Output: Send,
    {
        tokio::task::block_in_place(|| {
            self.run_in(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(f())
            })
        })
    }

    /// Runs the browser driver `script` (in `dir`) inside the namespace with `envs` and
    /// `HOLD_FILE`, killed after `timeout`; the driver keeps its pages open until the hold file
    /// exists. Meanwhile calls `poll` every 200 ms until it returns true, the driver ends or
    /// `timeout` passes; then writes the hold file (the pages close) and returns the driver's
    /// output.
    pub async fn drive_pages(
        &self,
        dir: &Path,
        script: &'static str,
        mut envs: Vec<(&'static str, String)>,
        timeout: Duration,
        mut poll: impl AsyncFnMut() -> bool,
    ) -> browser::Output {
        let hold = std::env::temp_dir().join(format!(
            "cabine-{}-hold-{}",
            script.trim_end_matches(".mjs"),
            std::process::id()
        ));
        let _ = std::fs::remove_file(&hold);
        envs.push(("HOLD_FILE", hold.display().to_string()));
        let name = self.name.clone();
        let d = dir.to_path_buf();
        let driver = tokio::task::spawn_blocking(move || {
            run_driver_with(&["ip", "netns", "exec", &name], &d, script, &envs, timeout)
        });
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline && !driver.is_finished() {
            if poll().await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        std::fs::write(&hold, b"seen").expect("hold file");
        let out = driver.await.expect("driver thread");
        let _ = std::fs::remove_file(&hold);
        out
    }

    /// Spawns `f` on a thread that joined the namespace and returns its handle, for work that
    /// outlives the caller's borrow (a kiosk kept running while another client joins).
    pub fn spawn_in<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("the namespace's handle");
            // SAFETY: setns on this thread only, with a valid namespace descriptor.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pair, and so the pair.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "{}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
