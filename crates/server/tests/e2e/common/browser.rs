//! The browser tests' harness: Debian's chromium (headless, fake media devices) driven by a
//! node script in `tests/browser` (playwright-core, never a downloaded browser).
//!
//! A missing prerequisite fails the test with what to run: browser tests never skip.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use cabine_proto::jwt::Tokens;
use cabine_proto::{Identity, Role};

/// Debian's chromium, the only browser the tests use.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// One browser scenario at a time (every browser test of the binary takes it): two chromiums,
/// servers and cabins on two cores starve each other's ICE.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `tests/browser`: the driver scripts and their `node_modules`.
pub fn dir() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/browser")).to_path_buf()
}

/// Panics, with what to run, when chromium, node or playwright-core is missing.
pub fn check_prerequisites(dir: &Path) {
    let mut missing = Vec::new();
    if !Path::new(CHROMIUM).exists() {
        missing.push(format!(
            "{CHROMIUM} (Debian's chromium: `apt-get install chromium`, or run `.ci/run`)"
        ));
    }
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !node.is_ok_and(|s| s.success()) {
        missing.push("node (Debian: `apt-get install nodejs npm`, or run `.ci/run`)".into());
    }
    if !dir
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        missing.push(format!(
            "{}/node_modules/playwright-core (run `npm ci --prefix tests/browser` from the \
             workspace root, or `.ci/run`)",
            dir.display()
        ));
    }
    assert!(
        missing.is_empty(),
        "the browser test cannot run; missing:\n  - {}",
        missing.join("\n  - ")
    );
}

/// What a driver script did.
pub struct Output {
    /// Its exit status (after the kill when it timed out).
    pub status: ExitStatus,
    /// Everything it printed.
    pub stdout: String,
    /// Everything it printed on stderr.
    pub stderr: String,
    /// How long it ran.
    pub elapsed: Duration,
    /// It was killed at the timeout.
    pub timed_out: bool,
}

impl Output {
    /// The script ran to the end and succeeded.
    pub fn ok(&self) -> bool {
        self.status.success() && !self.timed_out
    }

    /// ", killed after …" when it timed out, for failure messages.
    pub fn killed(&self) -> String {
        if self.timed_out {
            format!(", killed after {:.0?}", self.elapsed)
        } else {
            String::new()
        }
    }
}

/// Runs `node <script>` in `dir` with `envs`, killed after `timeout` with everything it
/// started (its own process group: chromium too, which would otherwise hold the output pipes
/// open; the script has its own, shorter, timeouts per stage), collecting its output. Blocking: call from
/// `spawn_blocking` in async tests.
pub fn run_driver(dir: &Path, script: &str, envs: &[(&str, String)], timeout: Duration) -> Output {
    run_driver_with(&[], dir, script, envs, timeout)
}

/// Same, with `node` started by `launcher` (e.g. `ip netns exec NAME`).
pub fn run_driver_with(
    launcher: &[&str],
    dir: &Path,
    script: &str,
    envs: &[(&str, String)],
    timeout: Duration,
) -> Output {
    let start = Instant::now();
    let mut cmd = match launcher.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg("node");
            c
        }
        None => Command::new("node"),
    };
    cmd.arg(script)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A group of its own, so a timeout ends chromium and its helpers with the driver.
        .process_group(0);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("cannot start `node`");
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for node") {
            break st;
        }
        if start.elapsed() > timeout {
            timed_out = true;
            // The group's id is the driver's pid (`process_group(0)`).
            if let Ok(pgid) = libc::pid_t::try_from(child.id()) {
                // SAFETY: kill has no memory preconditions; a negative pid names the group.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
            }
            let _ = child.kill();
            break child.wait().expect("wait for node");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
        elapsed: start.elapsed(),
        timed_out,
    }
}

/// A token for `identity` with `role` in `room`, valid 10 minutes, signed with `tokens`.
pub fn mint(tokens: &Tokens, room: &str, role: Role, identity: &str) -> String {
    tokens
        .mint(
            room,
            role,
            Identity::parse(identity).unwrap(),
            Duration::from_secs(600),
            None,
        )
        .unwrap()
}
