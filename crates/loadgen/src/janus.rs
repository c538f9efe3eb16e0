//! Janus 1.1.2 (Debian's `janus` package) as a baseline: a private instance on 127.0.0.1 with
//! only the HTTP transport and the VideoRoom plugin, driven through its HTTP API (sessions,
//! handles, long-poll events). Each consultation is one VideoRoom room; each participant
//! publishes on one PeerConnection (`joinandconfigure` with our offer) and subscribes to every
//! other participant's feed on another (`join` as subscriber: Janus offers, we answer, `start`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::http;

/// The shared plugin and transport folders of Debian's package.
pub const LIB_DIR: &str = "/usr/lib/x86_64-linux-gnu/janus";

/// The interface Janus gathers ICE candidates on. Janus (libnice) never offers loopback
/// candidates, so `scripts/bench` runs the whole benchmark inside a network namespace of its own
/// whose only other interface is a veth pair (`veth0`, 10.99.0.1): every packet stays in that
/// namespace. Override with `LOADGEN_JANUS_IFACE`.
pub fn iface() -> String {
    std::env::var("LOADGEN_JANUS_IFACE").unwrap_or_else(|_| "veth0".into())
}

/// The address of [`iface`] that the generator's peers bind to for Janus runs
/// (`LOADGEN_JANUS_IP`, default 10.99.0.1, the address `scripts/bench` gives `veth0`).
pub fn peer_ip() -> std::net::Ipv4Addr {
    std::env::var("LOADGEN_JANUS_IP")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(std::net::Ipv4Addr::new(10, 99, 0, 1))
}

/// Writes a configuration folder for a private Janus listening on `http` (127.0.0.1 only, ICE on
/// [`iface`] only, no session timeout) and returns the `janus` arguments.
pub fn prepare(dir: &Path, http: SocketAddr) -> anyhow::Result<Vec<String>> {
    let iface = iface();
    let plugins = dir.join("plugins");
    let transports = dir.join("transports");
    std::fs::create_dir_all(&plugins)?;
    std::fs::create_dir_all(&transports)?;
    link(
        &Path::new(LIB_DIR).join("plugins/libjanus_videoroom.so"),
        &plugins.join("libjanus_videoroom.so"),
    )?;
    link(
        &Path::new(LIB_DIR).join("transports/libjanus_http.so"),
        &transports.join("libjanus_http.so"),
    )?;
    let d = dir.display();
    std::fs::write(
        dir.join("janus.jcfg"),
        format!(
            "general: {{\n  configs_folder = \"{d}\"\n  plugins_folder = \"{d}/plugins\"\n  \
             transports_folder = \"{d}/transports\"\n  events_folder = \"{d}/none\"\n  \
             loggers_folder = \"{d}/none\"\n  debug_level = 2\n  session_timeout = 0\n}}\n\
             media: {{\n  rtp_port_range = \"20000-30000\"\n}}\n\
             nat: {{\n  ice_enforce_list = \"{iface}\"\n  ignore_mdns = true\n}}\n"
        ),
    )?;
    std::fs::write(
        dir.join("janus.transport.http.jcfg"),
        format!(
            "general: {{\n  json = \"compact\"\n  base_path = \"/janus\"\n  http = true\n  \
             port = {}\n  ip = \"127.0.0.1\"\n  https = false\n}}\nadmin: {{\n  admin_http = false\n}}\n",
            http.port()
        ),
    )?;
    std::fs::write(dir.join("janus.plugin.videoroom.jcfg"), "general: {\n}\n")?;
    Ok(vec![
        "-F".into(),
        d.to_string(),
        "-C".into(),
        format!("{d}/janus.jcfg"),
        "-i".into(),
        "127.0.0.1".into(),
        "-E".into(),
        iface.to_owned(),
        "-o".into(),
    ])
}

fn link(from: &Path, to: &Path) -> std::io::Result<()> {
    if to.exists() {
        return Ok(());
    }
    std::os::unix::fs::symlink(from, to)
}

/// A temporary folder for the configuration.
pub fn temp_dir() -> PathBuf {
    std::env::temp_dir().join(format!("cabine-loadgen-janus-{}", std::process::id()))
}

/// One Janus API session (all handles of a run).
pub struct Client {
    http: SocketAddr,
    session: u64,
    tx: u64,
    /// Events with a JSEP not yet claimed, by handle.
    jsep: HashMap<u64, (Value, Value)>,
}

impl Client {
    /// Creates a session.
    pub fn connect(http: SocketAddr) -> anyhow::Result<Client> {
        let mut c = Client {
            http,
            session: 0,
            tx: 0,
            jsep: HashMap::new(),
        };
        let r = c.post("/janus", json!({"janus": "create"}))?;
        c.session = id_of(&r)?;
        Ok(c)
    }

    /// Attaches a VideoRoom handle.
    pub fn attach(&mut self) -> anyhow::Result<u64> {
        let path = format!("/janus/{}", self.session);
        let r = self.post(
            &path,
            json!({"janus": "attach", "plugin": "janus.plugin.videoroom"}),
        )?;
        id_of(&r)
    }

    /// Creates room `room`.
    pub fn create_room(&mut self, handle: u64, room: u64, publishers: u32) -> anyhow::Result<()> {
        let r = self.message(
            handle,
            json!({"request": "create", "room": room, "publishers": publishers,
                   "audiocodec": "opus", "videocodec": "vp8", "bitrate": 0,
                   "notify_joining": false}),
            None,
        )?;
        let data = &r["plugindata"]["data"];
        if data["videoroom"] != "created" {
            anyhow::bail!("janus create room {room}: {r}");
        }
        Ok(())
    }

    /// Joins `room` as a publisher with `offer`; returns (publisher id, SDP answer).
    pub fn publish(
        &mut self,
        handle: u64,
        room: u64,
        name: &str,
        offer: &str,
    ) -> anyhow::Result<(u64, String)> {
        self.message(
            handle,
            json!({"request": "joinandconfigure", "ptype": "publisher", "room": room,
                   "display": name, "audio": true, "video": true}),
            Some(json!({"type": "offer", "sdp": offer})),
        )?;
        let (data, jsep) = self.wait_jsep(handle)?;
        let id = data["id"]
            .as_u64()
            .ok_or_else(|| anyhow::anyhow!("janus publish: no id in {data}"))?;
        let sdp = jsep["sdp"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("janus publish: no answer"))?;
        if std::env::var_os("LOADGEN_DEBUG").is_some() {
            eprintln!("janus answer:\n{sdp}");
        }
        Ok((id, sdp.to_owned()))
    }

    /// Subscribes to `feeds` in `room`; returns Janus's SDP offer.
    pub fn subscribe(&mut self, handle: u64, room: u64, feeds: &[u64]) -> anyhow::Result<String> {
        let streams: Vec<Value> = feeds.iter().map(|f| json!({"feed": f})).collect();
        self.message(
            handle,
            json!({"request": "join", "ptype": "subscriber", "room": room, "streams": streams}),
            None,
        )?;
        let (_, jsep) = self.wait_jsep(handle)?;
        jsep["sdp"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("janus subscribe: no offer"))
    }

    /// Starts a subscription with our answer.
    pub fn start(&mut self, handle: u64, answer: &str) -> anyhow::Result<()> {
        self.message(
            handle,
            json!({"request": "start"}),
            Some(json!({"type": "answer", "sdp": answer})),
        )?;
        Ok(())
    }

    fn message(&mut self, handle: u64, body: Value, jsep: Option<Value>) -> anyhow::Result<Value> {
        let mut m = json!({"janus": "message", "body": body});
        if let Some(j) = jsep {
            m["jsep"] = j;
        }
        let path = format!("/janus/{}/{handle}", self.session);
        let r = self.post(&path, m)?;
        if r["janus"] == "error" {
            anyhow::bail!("janus: {r}");
        }
        if let Some(e) = r["plugindata"]["data"]["error"].as_str() {
            anyhow::bail!("janus videoroom: {e}");
        }
        Ok(r)
    }

    /// Long-polls events until one for `handle` carries a JSEP.
    fn wait_jsep(&mut self, handle: u64) -> anyhow::Result<(Value, Value)> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(e) = self.jsep.remove(&handle) {
                return Ok(e);
            }
            if Instant::now() > deadline {
                anyhow::bail!("janus: no JSEP for handle {handle} after 20 s");
            }
            let path = format!("/janus/{}?maxev=20", self.session);
            let r = http::request(self.http, "GET", &path, &[], "")?;
            let v: Value = serde_json::from_str(&r.body)?;
            let events = match v {
                Value::Array(a) => a,
                other => vec![other],
            };
            for e in events {
                if let Some(err) = e["plugindata"]["data"]["error"].as_str() {
                    anyhow::bail!("janus event: {err}");
                }
                if e.get("jsep").is_some() {
                    if let Some(sender) = e["sender"].as_u64() {
                        self.jsep
                            .insert(sender, (e["plugindata"]["data"].clone(), e["jsep"].clone()));
                    }
                }
            }
        }
    }

    fn post(&mut self, path: &str, mut body: Value) -> anyhow::Result<Value> {
        self.tx += 1;
        body["transaction"] = json!(format!("t{}", self.tx));
        let r = http::request(
            self.http,
            "POST",
            path,
            &[("Content-Type", "application/json")],
            &body.to_string(),
        )?;
        if r.status != 200 {
            anyhow::bail!("janus POST {path}: {} {}", r.status, r.body);
        }
        Ok(serde_json::from_str(&r.body)?)
    }
}

fn id_of(r: &Value) -> anyhow::Result<u64> {
    r["data"]["id"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("janus: no id in {r}"))
}
