//! The simulated cabin as a deployment runs it: the `cabine-kiosk dial` binary as a child
//! process (the server's tests do not link the kiosk's codecs and simulator). Its output is
//! kept for failure messages; it is killed when dropped, or stopped like an operator would
//! (SIGINT), after which its `--stats-json` line tells what it did.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

/// Lines of output kept for failure messages (the last ones).
const KEPT_LINES: usize = 400;

/// The `cabine-kiosk` binary next to this test binary (`target/<profile>/cabine-kiosk`).
pub fn kiosk_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/e2e-<hash> → target/<profile>/cabine-kiosk
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("cabine-kiosk"))
        .expect("target/<profile>");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p cabine-kiosk --bin cabine-kiosk` \
         (scripts/test does)",
        bin.display()
    );
    bin
}

/// A `cabine-kiosk dial` command line being built.
pub struct Kiosk {
    args: Vec<String>,
    envs: Vec<(String, String)>,
    netns: Option<String>,
}

impl Kiosk {
    /// `cabine-kiosk dial --server SERVER --token TOKEN --loopback --bp-every 0 --stats-json`:
    /// a cabin on this machine with the four synthetic tracks, the simulated devices and
    /// telemetry, subscribing to the room, no blood pressure reading unless commanded.
    pub fn dial(server: &str, token: &str) -> Kiosk {
        let args = ["dial", "--server", server, "--token", token, "--loopback"]
            .into_iter()
            .chain(["--bp-every", "0", "--stats-json"])
            .map(String::from)
            .collect();
        Kiosk {
            args,
            envs: vec![(
                "RUST_LOG".into(),
                "info,webrtc=error,webrtc_ice=error".into(),
            )],
            netns: None,
        }
    }

    /// Lets ICE use every interface, not only 127.0.0.1 (a kiosk in a network namespace).
    pub fn any_interface(mut self) -> Kiosk {
        self.args.retain(|a| a != "--loopback");
        self
    }

    /// Adds arguments (`["--fps", "10"]`).
    pub fn args<I, S>(mut self, args: I) -> Kiosk
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Light media for a loaded 2-core machine: both cameras at `fps` and `kbps` kbit/s.
    pub fn light_media(self, fps: u32, kbps: u32) -> Kiosk {
        let (fps, kbps) = (fps.to_string(), kbps.to_string());
        self.args(["--fps", &fps, "--video-kbps", &kbps]).args([
            "--device-fps",
            &fps,
            "--device-kbps",
            &kbps,
        ])
    }

    /// Runs it inside the network namespace `name` (`ip netns exec`, which execs it: the
    /// same process).
    pub fn in_netns(mut self, name: &str) -> Kiosk {
        self.netns = Some(name.to_owned());
        self
    }

    /// Starts the process.
    pub fn spawn(self) -> KioskProcess {
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(kiosk_bin());
                c
            }
            None => Command::new(kiosk_bin()),
        };
        let mut child = command
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cabine-kiosk starts");
        let output = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, stdout_lines) = mpsc::unbounded_channel();
        forward(
            child.stdout.take().unwrap(),
            "",
            Arc::clone(&output),
            Some(tx),
        );
        forward(
            child.stderr.take().unwrap(),
            "stderr: ",
            Arc::clone(&output),
            None,
        );
        KioskProcess {
            child,
            stdout_lines,
            output,
        }
    }
}

/// A running `cabine-kiosk`.
pub struct KioskProcess {
    child: Child,
    stdout_lines: mpsc::UnboundedReceiver<String>,
    output: Arc<Mutex<VecDeque<String>>>,
}

/// How a stopped `cabine-kiosk` ended.
#[derive(Debug)]
pub struct KioskExit {
    /// Its exit status.
    pub status: ExitStatus,
    /// Its `--stats-json` object (`Null` if it printed none).
    pub stats: serde_json::Value,
    /// The stdout lines not read with [`KioskProcess::line`] before it was stopped.
    pub stdout: Vec<String>,
    /// The end of its output.
    pub output: String,
}

impl KioskProcess {
    /// The last lines it wrote (stdout and stderr), for failure messages.
    pub fn output(&self) -> String {
        let lines = self.output.lock().unwrap();
        lines
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The next stdout line that starts with `prefix` (within 30 s).
    pub async fn line(&mut self, prefix: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match tokio::time::timeout_at(deadline, self.stdout_lines.recv()).await {
                Ok(Some(l)) if l.starts_with(prefix) => return l,
                Ok(Some(_)) => {}
                Ok(None) => panic!(
                    "cabine-kiosk ended before printing {prefix:?}:\n{}",
                    self.output()
                ),
                Err(_) => panic!(
                    "cabine-kiosk did not print {prefix:?} within 30 s:\n{}",
                    self.output()
                ),
            }
        }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .try_wait()
            .expect("cabine-kiosk's status")
            .is_none()
    }

    /// Tells it its network changed (SIGUSR1): the telemetry link is redialled at once.
    pub fn network_changed(&self) {
        self.signal("USR1");
    }

    /// Stops it like Ctrl-C (SIGINT), waits up to 20 s for it to end its sessions, and
    /// returns how it ended.
    pub async fn interrupt(mut self) -> KioskExit {
        self.signal("INT");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("cabine-kiosk's status") {
                break s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "cabine-kiosk did not stop within 20 s of SIGINT:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // The reader threads end with the pipes; what they still hold comes in shortly.
        let mut stats = serde_json::Value::Null;
        let until = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut stdout = Vec::new();
        while let Ok(Some(line)) = tokio::time::timeout_at(until, self.stdout_lines.recv()).await {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if let Some(s) = v.get("stats") {
                    stats = s.clone();
                }
            }
            stdout.push(line);
        }
        KioskExit {
            status,
            stats,
            stdout,
            output: self.output(),
        }
    }

    /// Stops it like Ctrl-C and asserts it ended well with its stats; returns them.
    pub async fn stop(self) -> serde_json::Value {
        let exit = self.interrupt().await;
        assert!(
            exit.status.success() && exit.stats.is_object(),
            "cabine-kiosk ended with {} and stats {}:\n{}",
            exit.status,
            exit.stats,
            exit.output
        );
        exit.stats
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} cabine-kiosk");
    }
}

impl Drop for KioskProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- cabine-kiosk's output ---\n{}", self.output());
        }
    }
}

/// Reads `pipe` line by line into `kept` (and `tx`) on a thread of its own.
fn forward(
    pipe: impl std::io::Read + Send + 'static,
    prefix: &'static str,
    kept: Arc<Mutex<VecDeque<String>>>,
    tx: Option<mpsc::UnboundedSender<String>>,
) {
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            {
                let mut kept = kept.lock().unwrap();
                if kept.len() == KEPT_LINES {
                    kept.pop_front();
                }
                kept.push_back(format!("{prefix}{line}"));
            }
            if let Some(tx) = &tx {
                let _ = tx.send(line);
            }
        }
    });
}
