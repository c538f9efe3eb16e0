//! A real browser against the real server: Debian's chromium (headless, fake camera and
//! microphone), driven by `tests/browser/whip_whep.mjs` (playwright-core, no browser download),
//! publishes a camera, a microphone and a stethoscope from `/demo/publish` over WHIP; a second
//! page plays the room from `/demo/watch` over WHEP and must decode video frames and receive
//! audio, with the publisher's track labels.
//!
//! Needs `/usr/bin/chromium`, `node` and `npm ci --prefix tests/browser`; `.ci/run` installs
//! all three. Missing prerequisites fail the test: it never skips silently.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cabine_proto::{Identity, Role};
use cabine_server::auth::Tokens;
use cabine_server::{Config, Server};

const CHROMIUM: &str = "/usr/bin/chromium";
const SECRET: &str = "browser-test-secret-0123456789abcdef01234";
/// Hard limit for the node driver (it has its own, shorter, timeouts per stage).
const DRIVER_TIMEOUT: Duration = Duration::from_secs(120);

fn browser_dir() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/browser")).to_path_buf()
}

/// Panics, with what to run, when something the test needs is missing.
fn check_prerequisites(dir: &Path) {
    let mut missing = Vec::new();
    if !Path::new(CHROMIUM).exists() {
        missing.push(format!(
            "{CHROMIUM} (Debian's chromium: `apt-get install chromium`, or run `.ci/run`)"
        ));
    }
    if Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
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

fn mint(tokens: &Tokens, room: &str, role: Role, identity: &str) -> String {
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

struct Output {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
    elapsed: Duration,
    timed_out: bool,
}

/// Runs the node driver with a hard timeout, collecting its output.
fn run_driver(dir: &Path, envs: &[(&str, String)]) -> Output {
    let start = Instant::now();
    let mut cmd = Command::new("node");
    cmd.arg("whip_whep.mjs")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("cannot start `node`");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
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
        if start.elapsed() > DRIVER_TIMEOUT {
            timed_out = true;
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

#[tokio::test(flavor = "multi_thread")]
async fn chromium_publishes_over_whip_and_plays_over_whep() {
    let dir = browser_dir();
    check_prerequisites(&dir);

    let mut cfg = Config::defaults();
    cfg.http.listen = "127.0.0.1:0".parse().unwrap();
    cfg.media.bind = "127.0.0.1:0".parse().unwrap();
    cfg.auth.secret = SECRET.into();
    cfg.admin.listen = String::new();
    cfg.telemetry.listen = "127.0.0.1:0".into();
    let server = Server::start(cfg).await.expect("server starts");
    let base = format!("http://{}", server.http_addr());
    let tokens = Tokens::new(SECRET.as_bytes());
    let room = "browser-1";
    let envs = [
        ("CABINE_URL", base.clone()),
        ("ROOM", room.to_owned()),
        ("PUBLISH_TOKEN", mint(&tokens, room, Role::Kiosk, "kiosk-1")),
        ("WATCH_TOKEN", mint(&tokens, room, Role::Doctor, "dr-1")),
    ];

    let d = dir.clone();
    let out = tokio::task::spawn_blocking(move || run_driver(&d, &envs))
        .await
        .expect("driver thread");

    // The operators' view: for the failure message, and to check that closing the pages ended
    // both sessions (the pages DELETE their WHIP/WHEP resource on pagehide).
    let ops = mint(&tokens, "*", Role::Operator, "ops");
    let mut rooms = String::new();
    let mut sessions_left = usize::MAX;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let r = reqwest::Client::new()
            .get(format!("{base}/api/rooms"))
            .bearer_auth(&ops)
            .send()
            .await;
        rooms = match r {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => format!("(GET /api/rooms failed: {e})"),
        };
        sessions_left = serde_json::from_str::<serde_json::Value>(&rooms)
            .ok()
            .and_then(|v| {
                v["rooms"].as_array().map(|rs| {
                    rs.iter()
                        .map(|r| r["sessions"].as_array().map_or(0, Vec::len))
                        .sum()
                })
            })
            .unwrap_or(usize::MAX);
        if sessions_left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.shutdown(Duration::from_secs(1)).await;

    eprintln!(
        "browser driver: {} in {:.1} s",
        out.status,
        out.elapsed.as_secs_f64()
    );
    println!("{}", out.stdout.trim_end());
    assert!(
        out.status.success() && !out.timed_out,
        "the browser test failed ({}{}).\n--- node stdout ---\n{}\n--- node stderr ---\n{}\n\
         --- GET /api/rooms after the run ---\n{}",
        out.status,
        if out.timed_out {
            format!(", killed after {DRIVER_TIMEOUT:?}")
        } else {
            String::new()
        },
        out.stdout,
        out.stderr,
        rooms
    );
    assert_eq!(
        sessions_left, 0,
        "sessions are left after the pages closed (their DELETE on pagehide did not end them): {rooms}"
    );
}
