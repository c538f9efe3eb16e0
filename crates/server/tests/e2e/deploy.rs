//! `deploy/` is checked, since no container engine runs here: every YAML and JSON file parses,
//! the Dockerfile, the compose stack, the Kubernetes manifests and the systemd unit agree with
//! each other and with the server (ports, probes, drain and stop timeouts, non-root, the
//! environment they set loads as a valid configuration), and the Grafana dashboard's PromQL
//! names only series that a real server exposes, with rate() on counters only and label names
//! those series carry.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::payload;
use cabine_client::{ClientOptions, Codec, MediaKind, Publisher, Subscriber, TrackSpec};
use cabine_proto::Role;
use cabine_server::config::DEFAULT_TOML;
use cabine_server::Config;
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

// ---------------------------------------------------------------------------------------------
// Files.

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn deploy() -> PathBuf {
    repo().join("deploy")
}

fn read(rel: &str) -> String {
    let p = deploy().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn yaml(rel: &str) -> Yaml {
    serde_yaml::from_str(&read(rel)).unwrap_or_else(|e| panic!("deploy/{rel} is not YAML: {e}"))
}

fn yaml_docs(rel: &str) -> Vec<Yaml> {
    let text = read(rel);
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: Yaml = serde::Deserialize::deserialize(doc)
            .unwrap_or_else(|e| panic!("deploy/{rel} is not YAML: {e}"));
        if !v.is_null() {
            out.push(v);
        }
    }
    out
}

/// Every file under deploy/, relative to it.
fn all_files(dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            all_files(&p, out);
        } else {
            let rel = p.strip_prefix(deploy()).unwrap();
            out.push(rel.to_string_lossy().into_owned());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// YAML access with useful panics.

fn at<'a>(v: &'a Yaml, path: &str) -> &'a Yaml {
    opt(v, path).unwrap_or_else(|| panic!("missing `{path}` in {}", brief(v)))
}

fn opt<'a>(v: &'a Yaml, path: &str) -> Option<&'a Yaml> {
    let mut cur = v;
    for part in path.split('.') {
        cur = cur.as_mapping()?.get(part)?;
    }
    Some(cur)
}

fn brief(v: &Yaml) -> String {
    let s = serde_yaml::to_string(v).unwrap_or_default();
    s.chars().take(300).collect()
}

fn text(v: &Yaml) -> String {
    match v {
        Yaml::String(s) => s.clone(),
        Yaml::Number(n) => n.to_string(),
        Yaml::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, got {}", brief(other)),
    }
}

fn list(v: &Yaml) -> &Vec<Yaml> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("expected a list, got {}", brief(v)))
}

fn strings(v: &Yaml) -> Vec<String> {
    list(v).iter().map(text).collect()
}

fn keys(v: &Yaml) -> BTreeSet<String> {
    v.as_mapping()
        .unwrap_or_else(|| panic!("expected a mapping, got {}", brief(v)))
        .keys()
        .map(text)
        .collect()
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{addr:?} has no port"))
}

fn duration(s: &str) -> Duration {
    humantime::parse_duration(s.trim()).unwrap_or_else(|e| panic!("duration {s:?}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// The server's configuration, loaded from what a deployment sets.

const SAMPLE_SECRET: &str = "deploy-test-secret-0123456789abcdef";
const SAMPLE_NODE_IP: &str = "10.1.2.3";

/// Loads the configuration `cabine serve` would run with given these `CABINE_*` variables
/// (through the real loader), panicking with `origin` when a key is unknown or a value unusable.
fn load_config(origin: &str, env: &BTreeMap<String, String>) -> Config {
    static N: AtomicUsize = AtomicUsize::new(0);
    // The real loader also reads the process environment: it must not add to what is checked.
    let stray: Vec<String> = std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("CABINE_"))
        .collect();
    assert!(
        stray.is_empty(),
        "unset {stray:?}: the deploy checks load configurations through the real loader"
    );
    let defaults: toml::Table = DEFAULT_TOML.parse().unwrap();
    let mut overrides = toml::Table::new();
    for (name, value) in env {
        if name == "CABINE_CONFIG" {
            panic!("{origin}: sets CABINE_CONFIG, but no config file is shipped with it");
        }
        let Some(rest) = name.strip_prefix("CABINE_") else {
            continue;
        };
        let (section, key) = rest
            .split_once("__")
            .unwrap_or_else(|| panic!("{origin}: {name} is not CABINE_<SECTION>__<KEY>"));
        let (section, key) = (section.to_lowercase(), key.to_lowercase());
        let default = defaults
            .get(&section)
            .and_then(|s| s.get(&key))
            .unwrap_or_else(|| {
                panic!("{origin}: {name} names no key of configs/default.toml ([{section}] {key})")
            });
        let typed = match default {
            toml::Value::Integer(_) => toml::Value::Integer(
                value
                    .parse()
                    .unwrap_or_else(|_| panic!("{origin}: {name}={value:?} is not an integer")),
            ),
            toml::Value::Boolean(_) => toml::Value::Boolean(
                value
                    .parse()
                    .unwrap_or_else(|_| panic!("{origin}: {name}={value:?} is not a boolean")),
            ),
            // A list, written as the environment loader reads it: `["a", "b"]`.
            toml::Value::Array(_) => format!("v = {value}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .filter(toml::Value::is_array)
                .unwrap_or_else(|| panic!("{origin}: {name}={value:?} is not a list")),
            _ => toml::Value::String(value.clone()),
        };
        overrides
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .unwrap()
            .insert(key, typed);
    }
    let path = std::env::temp_dir().join(format!(
        "cabine-deploy-test-{}-{}.toml",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, toml::to_string(&overrides).unwrap()).unwrap();
    let cfg = Config::load(Some(&path));
    let _ = std::fs::remove_file(&path);
    cfg.unwrap_or_else(|e| panic!("{origin}: the server would refuse this environment: {e}"))
}

/// Checks the parts of a configuration every deployment shares; returns the drain timeout.
fn check_served_config(origin: &str, cfg: &Config, admin_public_ok: bool) -> Duration {
    assert_eq!(cfg.http.listen.port(), 8080, "{origin}: HTTP port");
    assert!(
        cfg.http.listen.ip().is_unspecified(),
        "{origin}: HTTP must listen on every interface, not {}",
        cfg.http.listen
    );
    assert_eq!(cfg.media.bind.port(), 7882, "{origin}: media port");
    assert!(
        cfg.media.bind.ip().is_unspecified(),
        "{origin}: media must bind every interface, not {}",
        cfg.media.bind
    );
    let telemetry = cfg
        .telemetry
        .listen_addr()
        .unwrap()
        .unwrap_or_else(|| panic!("{origin}: the telemetry sidecar is disabled"));
    assert_eq!(telemetry.port(), 4443, "{origin}: telemetry port");
    assert!(
        telemetry.ip().is_unspecified(),
        "{origin}: kiosks cannot reach telemetry on {telemetry}"
    );
    // Kiosks are told to dial telemetry.advertise or, when empty, the media's advertised
    // address: both need the public address the media side needs anyway.
    assert_ne!(
        cfg.auth.secret,
        cabine_server::config::DEV_SECRET,
        "{origin}: runs with the public development secret"
    );
    let admin = cfg
        .admin_listen()
        .unwrap()
        .unwrap_or_else(|| panic!("{origin}: the admin listener (metrics) is disabled"));
    assert_eq!(admin.port(), 9464, "{origin}: admin port");
    if !admin_public_ok {
        assert!(
            !admin.ip().is_unspecified() || !cfg.admin.token.is_empty(),
            "{origin}: metrics on every interface without a token"
        );
    }
    assert!(
        cfg.audit.path.is_absolute(),
        "{origin}: the audit log should go to a file"
    );
    cfg.http.drain_timeout
}

/// `${VAR:?msg}`, `${VAR?msg}`, `${VAR:-default}`, `${VAR-default}` as compose interpolates
/// them; required variables get a sample value.
fn interpolate(origin: &str, s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let end = rest[i..]
            .find('}')
            .unwrap_or_else(|| panic!("{origin}: unclosed ${{ in {s:?}"));
        let inner = &rest[i + 2..i + end];
        let name_end = inner
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(inner.len());
        let (name, op) = inner.split_at(name_end);
        let value = if let Some(default) = op.strip_prefix(":-").or(op.strip_prefix('-')) {
            default.to_string()
        } else if op.starts_with(":?") || op.starts_with('?') {
            match name {
                "CABINE_AUTH__SECRET" | "CABINE_TURN__SECRET" => SAMPLE_SECRET.to_string(),
                _ => panic!("{origin}: unexpected required variable {name}"),
            }
        } else {
            panic!("{origin}: ${{{inner}}} has no default and is not required (use :- or :?)");
        };
        out.push_str(&value);
        rest = &rest[i + end + 1..];
    }
    out.push_str(rest);
    out
}

// ---------------------------------------------------------------------------------------------
// Dockerfile.

struct Instr {
    stage: usize,
    cmd: String,
    args: String,
}

fn dockerfile() -> Vec<Instr> {
    let mut logical = Vec::new();
    let mut cur = String::new();
    for line in read("Dockerfile").lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        if let Some(body) = t.strip_suffix('\\') {
            cur.push_str(body);
            cur.push(' ');
        } else {
            cur.push_str(t);
            logical.push(std::mem::take(&mut cur));
        }
    }
    assert!(cur.is_empty(), "Dockerfile ends inside a continued line");
    let mut stage = 0;
    let mut out = Vec::new();
    for l in logical {
        let (cmd, args) = l.split_once(char::is_whitespace).unwrap_or((&l, ""));
        let cmd = cmd.to_uppercase();
        if cmd == "FROM" {
            stage += 1;
        }
        out.push(Instr {
            stage,
            cmd,
            args: args.trim().to_string(),
        });
    }
    out
}

/// `ENV` pairs of the final stage.
fn dockerfile_env(ins: &[Instr]) -> BTreeMap<String, String> {
    let last = ins.iter().map(|i| i.stage).max().unwrap();
    let mut env = BTreeMap::new();
    for i in ins.iter().filter(|i| i.stage == last && i.cmd == "ENV") {
        for pair in i.args.split_whitespace() {
            let (k, v) = pair
                .split_once('=')
                .unwrap_or_else(|| panic!("Dockerfile: ENV {:?}: use KEY=value", i.args));
            env.insert(k.to_string(), v.trim_matches('"').to_string());
        }
    }
    env
}

#[test]
fn dockerfile_is_multi_stage_non_root_and_exposes_every_port() {
    let ins = dockerfile();
    let froms: Vec<&Instr> = ins.iter().filter(|i| i.cmd == "FROM").collect();
    assert!(froms.len() >= 2, "a multi-stage build");
    let (builder_image, builder) = froms[0]
        .args
        .split_once(" AS ")
        .or_else(|| froms[0].args.split_once(" as "))
        .expect("the first stage is named (FROM ... AS builder)");
    assert!(builder_image.starts_with("rust:"), "built in a Rust image");
    let last = froms.len();
    let runtime = froms[last - 1].args.split_whitespace().next().unwrap();
    assert!(
        runtime.starts_with("debian:") && runtime.contains("slim"),
        "runtime on a slim Debian, got {runtime}"
    );
    let run_in = |stage: usize| -> Vec<&str> {
        ins.iter()
            .filter(|i| i.stage == stage && i.cmd == "RUN")
            .map(|i| i.args.as_str())
            .collect()
    };
    assert!(
        run_in(1)
            .iter()
            .any(|r| r.contains("cargo build --release -p cabine-server --locked")),
        "the builder runs cargo build --release -p cabine-server --locked"
    );
    // Everything the builder copies exists in the repository.
    for i in ins.iter().filter(|i| i.stage == 1 && i.cmd == "COPY") {
        let parts: Vec<&str> = i.args.split_whitespace().collect();
        for src in &parts[..parts.len() - 1] {
            assert!(
                repo().join(src).exists(),
                "COPY {src}: not in the repository"
            );
        }
    }
    // The runtime installs CA certificates and nothing else.
    for r in run_in(last) {
        if let Some((_, after)) = r.split_once("apt-get install") {
            let pkgs: Vec<&str> = after
                .split("&&")
                .next()
                .unwrap()
                .split_whitespace()
                .filter(|w| !w.starts_with('-'))
                .collect();
            assert_eq!(pkgs, ["ca-certificates"], "runtime packages");
        }
    }
    let one = |cmd: &str| -> &str {
        let v: Vec<&Instr> = ins
            .iter()
            .filter(|i| i.stage == last && i.cmd == cmd)
            .collect();
        assert_eq!(v.len(), 1, "one {cmd} in the runtime stage");
        &v[0].args
    };
    assert!(
        ins.iter().any(|i| i.stage == last
            && i.cmd == "COPY"
            && i.args.contains(&format!("--from={builder}"))
            && i.args.ends_with("/usr/local/bin/cabine")),
        "the binary is copied from the {builder} stage to /usr/local/bin/cabine"
    );

    // Non-root, and the same uid as the Kubernetes manifests run as.
    let user = one("USER");
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("USER {user}: use a numeric uid (runAsNonRoot checks it)"));
    assert!(uid >= 1000, "USER {user} is a system or root uid");
    assert!(
        run_in(last)
            .iter()
            .any(|r| r.contains(&format!("--uid {uid}"))),
        "the runtime creates user {uid}"
    );
    let ds = daemonset();
    let pod_uid = at(&ds, "spec.template.spec.securityContext.runAsUser").as_u64();
    assert_eq!(pod_uid, Some(u64::from(uid)), "k8s runAsUser = image uid");

    let exposed: BTreeSet<&str> = ins
        .iter()
        .filter(|i| i.cmd == "EXPOSE" && i.stage == last)
        .flat_map(|i| i.args.split_whitespace())
        .collect();
    for p in ["8080/tcp", "7882/udp", "7882/tcp", "4443/udp", "9464/tcp"] {
        assert!(exposed.contains(p), "EXPOSE {p} (got {exposed:?})");
    }

    // The image's own environment is a valid, served configuration.
    let mut env = dockerfile_env(&ins);
    env.insert("CABINE_AUTH__SECRET".into(), SAMPLE_SECRET.into());
    let cfg = load_config("Dockerfile ENV", &env);
    check_served_config("Dockerfile ENV", &cfg, true);
    let healthcheck = one("HEALTHCHECK");
    assert!(healthcheck.contains("/healthz"), "HEALTHCHECK on /healthz");
    let probe_port: u16 = healthcheck
        .split("/dev/tcp/127.0.0.1/")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .expect("HEALTHCHECK connects with bash /dev/tcp/127.0.0.1/<port>");
    assert_eq!(probe_port, cfg.http.listen.port(), "HEALTHCHECK port");

    assert_eq!(one("STOPSIGNAL"), "SIGTERM");
    let entry: Vec<String> = serde_json::from_str(one("ENTRYPOINT")).expect("exec-form ENTRYPOINT");
    assert_eq!(entry, ["cabine"]);
    let cmd: Vec<String> = serde_json::from_str(one("CMD")).expect("exec-form CMD");
    assert_eq!(cmd, ["serve"]);

    let ignore = read("Dockerfile.dockerignore");
    for pat in ["**/target", "**/node_modules", ".git"] {
        assert!(
            ignore.lines().any(|l| l.trim() == pat),
            "Dockerfile.dockerignore keeps {pat} out of the build context"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// docker compose.

fn compose() -> Yaml {
    yaml("docker-compose.yml")
}

fn service<'a>(c: &'a Yaml, name: &str) -> &'a Yaml {
    at(c, "services")
        .get(name)
        .unwrap_or_else(|| panic!("compose has no service {name}"))
}

/// A service's environment (mapping or KEY=value list), interpolated.
fn compose_env(svc: &Yaml, origin: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    match opt(svc, "environment") {
        None => {}
        Some(Yaml::Mapping(m)) => {
            for (k, v) in m {
                out.insert(text(k), interpolate(origin, &text(v)));
            }
        }
        Some(Yaml::Sequence(s)) => {
            for e in s {
                let e = text(e);
                let (k, v) = e.split_once('=').unwrap();
                out.insert(k.into(), interpolate(origin, v));
            }
        }
        Some(other) => panic!("{origin}: environment is {}", brief(other)),
    }
    out
}

/// Published ports: (host ip, host port, container port, protocol).
fn compose_ports(svc: &Yaml) -> Vec<(String, u16, u16, String)> {
    let mut out = Vec::new();
    for p in opt(svc, "ports").map(list).into_iter().flatten() {
        if p.is_mapping() {
            let target = text(at(p, "target")).parse().unwrap();
            let published = opt(p, "published")
                .map(|v| text(v).parse().unwrap())
                .unwrap_or(target);
            let proto = opt(p, "protocol").map(text).unwrap_or_else(|| "tcp".into());
            let ip = opt(p, "host_ip").map(text).unwrap_or_default();
            out.push((ip, published, target, proto));
            continue;
        }
        let s = text(p);
        let (addrs, proto) = s.split_once('/').unwrap_or((&s, "tcp"));
        let parts: Vec<&str> = addrs.split(':').collect();
        let (ip, host, target) = match parts.as_slice() {
            [t] => ("", *t, *t),
            [h, t] => ("", *h, *t),
            [ip, h, t] => (*ip, *h, *t),
            _ => panic!("port {s:?}"),
        };
        out.push((
            ip.to_string(),
            host.parse().unwrap_or_else(|_| panic!("port {s:?}")),
            target.parse().unwrap_or_else(|_| panic!("port {s:?}")),
            proto.to_string(),
        ));
    }
    out
}

/// Volumes: (source, container target).
fn compose_volumes(svc: &Yaml) -> Vec<(String, String)> {
    opt(svc, "volumes")
        .map(list)
        .into_iter()
        .flatten()
        .map(|v| {
            if v.is_mapping() {
                (text(at(v, "source")), text(at(v, "target")))
            } else {
                let s = text(v);
                let mut it = s.split(':');
                (it.next().unwrap().into(), it.next().unwrap().into())
            }
        })
        .collect()
}

/// The host file behind a container path, through a service's bind mounts.
fn mounted_source(svc: &Yaml, container_path: &str) -> Option<PathBuf> {
    compose_volumes(svc).into_iter().find_map(|(src, target)| {
        let rel = container_path.strip_prefix(&target)?;
        if !(rel.is_empty() || rel.starts_with('/')) || !src.starts_with('.') {
            return None;
        }
        Some(deploy().join(&src).join(rel.trim_start_matches('/')))
    })
}

#[test]
fn compose_runs_cabine_with_its_observability_stack() {
    let c = compose();
    let names = keys(at(&c, "services"));
    for s in ["cabine", "otel-collector", "prometheus", "grafana"] {
        assert!(names.contains(s), "compose service {s}");
    }
    let declared_volumes = opt(&c, "volumes").map(keys).unwrap_or_default();
    for name in &names {
        let svc = service(&c, name);
        assert!(
            opt(svc, "image").is_some() || opt(svc, "build").is_some(),
            "{name}: no image"
        );
        if let Some(img) = opt(svc, "image").map(text) {
            if name != "cabine" {
                assert!(
                    img.contains(':') && !img.ends_with(":latest"),
                    "{name}: pin the image version ({img})"
                );
            }
        }
        for dep in opt(svc, "depends_on").map(strings).unwrap_or_default() {
            assert!(names.contains(&dep), "{name} depends on unknown {dep}");
        }
        for (src, target) in compose_volumes(svc) {
            assert!(target.starts_with('/'), "{name}: volume target {target}");
            if src.starts_with('.') || src.starts_with('/') {
                assert!(
                    deploy().join(&src).exists(),
                    "{name}: mounts {src}, which is not in deploy/"
                );
            } else {
                assert!(
                    declared_volumes.contains(&src),
                    "{name}: named volume {src} is not declared"
                );
            }
        }
        // Nothing but cabine's HTTP and media is published beyond loopback.
        for (ip, host, _, _) in compose_ports(svc) {
            if !(name == "cabine" && [8080, 7882, 4443].contains(&host)) {
                assert_eq!(ip, "127.0.0.1", "{name}: port {host} published publicly");
            }
        }
    }

    // cabine: built from deploy/Dockerfile, its ports published, a valid configuration.
    let cabine = service(&c, "cabine");
    let ctx = deploy().join(text(at(cabine, "build.context")));
    assert!(
        ctx.join(text(at(cabine, "build.dockerfile"))).is_file(),
        "build.dockerfile, relative to build.context"
    );
    assert!(
        ctx.join("Cargo.lock").is_file(),
        "build context = workspace"
    );
    let ports = compose_ports(cabine);
    let published = |port: u16, proto: &str| {
        ports
            .iter()
            .find(|(_, _, t, p)| *t == port && p == proto)
            .unwrap_or_else(|| panic!("cabine publishes {port}/{proto} (got {ports:?})"))
    };
    published(8080, "tcp");
    let media = published(7882, "udp");
    // Clients are given the advertised IP with the bind port: the host port must be the same.
    assert_eq!(media.1, 7882, "media host port = container port");
    // ICE-TCP on the same port number (media.tcp is on by default).
    assert_eq!(
        published(7882, "tcp").1,
        7882,
        "media TCP host port = container port"
    );
    published(9464, "tcp");
    let env_raw = at(cabine, "environment.CABINE_AUTH__SECRET");
    assert!(
        text(env_raw).starts_with("${CABINE_AUTH__SECRET:?"),
        "compose refuses to start without CABINE_AUTH__SECRET"
    );
    let mut env = dockerfile_env(&dockerfile());
    env.extend(compose_env(cabine, "compose cabine"));
    let cfg = load_config("compose cabine", &env);
    let drain = check_served_config("compose cabine", &cfg, true);
    let grace = duration(&text(at(cabine, "stop_grace_period")));
    assert!(
        grace > drain,
        "stop_grace_period {grace:?} <= drain {drain:?}"
    );
    assert_eq!(text(at(cabine, "stop_signal")), "SIGTERM");
    assert_eq!(at(cabine, "read_only").as_bool(), Some(true));
    let audit_dir = cfg
        .audit
        .path
        .parent()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        compose_volumes(cabine).iter().any(|(_, t)| *t == audit_dir),
        "the audit log directory {audit_dir} is a volume (the root filesystem is read-only)"
    );
    // OTLP push goes to the collector's OTLP/HTTP receiver.
    let otel_cfg = yaml("otel-collector.yaml");
    let endpoint = cfg.otel.endpoint.clone();
    assert!(!endpoint.is_empty(), "cabine pushes OTLP to the collector");
    let http_rx = text(at(&otel_cfg, "receivers.otlp.protocols.http.endpoint"));
    assert_eq!(
        endpoint,
        format!("http://otel-collector:{}", port_of(&http_rx)),
        "otel.endpoint"
    );

    // The collector reads the config file mounted where its command says.
    let coll = service(&c, "otel-collector");
    let config_arg = strings(at(coll, "command"))
        .into_iter()
        .find_map(|a| a.strip_prefix("--config=").map(String::from))
        .expect("collector --config=");
    let src = mounted_source(coll, &config_arg).expect("collector config is mounted");
    assert_eq!(src, deploy().join("./otel-collector.yaml"));

    // Prometheus reads deploy/prometheus.yml.
    let prom = service(&c, "prometheus");
    let config_arg = strings(at(prom, "command"))
        .into_iter()
        .find_map(|a| a.strip_prefix("--config.file=").map(String::from))
        .expect("prometheus --config.file=");
    let src = mounted_source(prom, &config_arg).expect("prometheus config is mounted");
    assert_eq!(src, deploy().join("./prometheus.yml"));

    // Grafana: provisioning mounted at /etc/grafana/provisioning, dashboards where the
    // provider looks, the home dashboard exists.
    let graf = service(&c, "grafana");
    let prov = mounted_source(graf, "/etc/grafana/provisioning/dashboards/cabine.yaml")
        .expect("grafana provisioning is mounted");
    assert!(prov.is_file());
    let provider = yaml("grafana/provisioning/dashboards/cabine.yaml");
    let providers = list(at(&provider, "providers"));
    assert_eq!(providers.len(), 1);
    let path = text(at(&providers[0], "options.path"));
    let dash_dir = mounted_source(graf, &path).expect("the provider's path is mounted");
    assert!(dash_dir.join("cabine.json").is_file(), "{dash_dir:?}");
    let home = text(at(
        graf,
        "environment.GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH",
    ));
    assert!(mounted_source(graf, &home).is_some_and(|p| p.is_file()));
}

#[test]
fn compose_cluster_runs_two_nodes_on_one_redis() {
    let c = yaml("docker-compose.cluster.yml");
    let names = keys(at(&c, "services"));
    let redis = service(&c, "redis");
    let img = text(at(redis, "image"));
    assert!(img.contains(':') && !img.ends_with(":latest"), "pin {img}");
    let redis_port = compose_ports(redis)
        .iter()
        .map(|(ip, _, target, _)| {
            assert_eq!(ip, "127.0.0.1", "Redis is never published beyond loopback");
            *target
        })
        .next()
        .unwrap_or(6379);
    let declared_volumes = opt(&c, "volumes").map(keys).unwrap_or_default();
    let mut ids = BTreeSet::new();
    let mut host_ports = BTreeSet::new();
    for name in ["cabine-1", "cabine-2"] {
        let svc = service(&c, name);
        let origin = format!("compose cluster {name}");
        for dep in opt(svc, "depends_on").map(strings).unwrap_or_default() {
            assert!(names.contains(&dep), "{name} depends on unknown {dep}");
        }
        assert!(
            strings(at(svc, "depends_on")).contains(&"redis".to_owned()),
            "{name} starts after redis"
        );
        for (src, _) in compose_volumes(svc) {
            assert!(declared_volumes.contains(&src), "{name}: volume {src}");
        }
        let mut env = dockerfile_env(&dockerfile());
        env.extend(compose_env(svc, &origin));
        let cfg = load_config(&origin, &env);
        assert_eq!(
            cfg.cluster.redis_url,
            format!("redis://redis:{redis_port}/0"),
            "{origin}: the shared Redis"
        );
        assert!(
            ids.insert(cfg.cluster.node_id.clone()),
            "{origin}: node id twice"
        );
        assert_eq!(at(svc, "read_only").as_bool(), Some(true), "{origin}");
        let ports = compose_ports(svc);
        for (ip, host, target, proto) in &ports {
            assert_eq!(host, target, "{origin}: host port = container port");
            assert!(
                host_ports.insert((*host, proto.clone())),
                "{origin}: port {host} twice"
            );
            if *target == port_of(&env["CABINE_ADMIN__LISTEN"]) {
                assert_eq!(ip, "127.0.0.1", "{origin}: admin stays on loopback");
            }
        }
        // Clients redirected here reach this node's published HTTP port.
        let http = cfg.http.listen.port();
        assert!(
            ports.iter().any(|p| p.2 == http && p.3 == "tcp"),
            "{origin}"
        );
        assert!(
            cfg.http.public_url.ends_with(&format!(":{http}")),
            "{origin}: public_url {} is not this node's HTTP port",
            cfg.http.public_url
        );
        let media = cfg.media.bind.port();
        assert!(
            ports.iter().any(|p| p.2 == media && p.3 == "udp"),
            "{origin}"
        );
        let grace = duration(&text(at(svc, "stop_grace_period")));
        assert!(grace > cfg.http.drain_timeout, "{origin}: stop grace");
    }
}

#[test]
fn prometheus_collector_and_grafana_point_at_each_other() {
    let c = compose();
    let names = keys(at(&c, "services"));
    let cabine_env = {
        let mut env = dockerfile_env(&dockerfile());
        env.extend(compose_env(service(&c, "cabine"), "compose cabine"));
        env
    };
    let admin_port = port_of(&cabine_env["CABINE_ADMIN__LISTEN"]);

    // Collector: every component a pipeline uses is defined, every defined one is used, and it
    // scrapes cabine's admin port.
    let otel = yaml("otel-collector.yaml");
    let mut used = BTreeSet::new();
    let pipelines = at(&otel, "service.pipelines");
    assert!(keys(pipelines).iter().any(|p| p.starts_with("metrics")));
    assert!(keys(pipelines).iter().any(|p| p.starts_with("traces")));
    for (pname, p) in pipelines.as_mapping().unwrap() {
        for kind in ["receivers", "processors", "exporters"] {
            let Some(names) = opt(p, kind) else {
                assert_ne!(kind, "receivers", "{pname:?} has no receivers");
                assert_ne!(kind, "exporters", "{pname:?} has no exporters");
                continue;
            };
            for n in strings(names) {
                assert!(
                    opt(&otel, kind).is_some_and(|d| d.get(n.as_str()).is_some()),
                    "pipeline {pname:?} uses undefined {kind}/{n}"
                );
                used.insert(format!("{kind}/{n}"));
            }
        }
    }
    for kind in ["receivers", "processors", "exporters"] {
        for n in keys(at(&otel, kind)) {
            assert!(used.contains(&format!("{kind}/{n}")), "{kind}/{n} unused");
        }
    }
    let scrape = list(at(&otel, "receivers.prometheus.config.scrape_configs"));
    let targets: Vec<String> = scrape
        .iter()
        .flat_map(|s| list(at(s, "static_configs")))
        .flat_map(|s| strings(at(s, "targets")))
        .collect();
    assert_eq!(
        targets,
        [format!("cabine:{admin_port}")],
        "collector scrapes cabine"
    );
    let exporter_ports: BTreeSet<u16> = at(&otel, "exporters")
        .as_mapping()
        .unwrap()
        .iter()
        .filter(|(k, _)| text(k).starts_with("prometheus"))
        .map(|(_, v)| port_of(&text(at(v, "endpoint"))))
        .collect();

    // Prometheus: job "cabine" scrapes cabine directly; every target is a compose service on a
    // port it serves.
    let prom = yaml("prometheus.yml");
    let mut jobs = BTreeSet::new();
    for job in list(at(&prom, "scrape_configs")) {
        let name = text(at(job, "job_name"));
        assert!(jobs.insert(name.clone()), "job {name} twice");
        for t in list(at(job, "static_configs"))
            .iter()
            .flat_map(|s| strings(at(s, "targets")))
        {
            let (host, port) = t.rsplit_once(':').unwrap();
            let port: u16 = port.parse().unwrap();
            assert!(
                names.contains(host),
                "job {name}: {host} is no compose service"
            );
            match host {
                "cabine" => assert_eq!(port, admin_port, "job {name} scrapes the admin port"),
                "otel-collector" => assert!(
                    exporter_ports.contains(&port),
                    "job {name}: the collector exports on {exporter_ports:?}, not {port}"
                ),
                other => panic!("job {name} scrapes unexpected {other}"),
            }
        }
    }
    assert!(
        jobs.contains("cabine"),
        "a `cabine` job (the dashboard's default)"
    );

    // Grafana's data source is compose's Prometheus, with the uid the dashboard uses.
    let ds = yaml("grafana/provisioning/datasources/prometheus.yaml");
    let sources = list(at(&ds, "datasources"));
    assert_eq!(sources.len(), 1);
    assert_eq!(text(at(&sources[0], "type")), "prometheus");
    assert_eq!(text(at(&sources[0], "url")), "http://prometheus:9090");
    let uid = text(at(&sources[0], "uid"));
    let dash = dashboard();
    let ds_var = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(ds_var["query"], "prometheus");
    assert_eq!(ds_var["current"]["value"], Json::String(uid.clone()));
    let job_var = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "job")
        .expect("a job variable");
    assert!(
        jobs.contains(job_var["current"]["value"].as_str().unwrap()),
        "the job variable's default is a Prometheus job"
    );
}

// ---------------------------------------------------------------------------------------------
// Kubernetes.

fn k8s_resources() -> Vec<Yaml> {
    let k = yaml("k8s/kustomization.yaml");
    assert_eq!(text(at(&k, "kind")), "Kustomization");
    assert!(
        opt(&k, "namespace").is_none(),
        "namespace-less: applied to the current namespace"
    );
    let mut out = Vec::new();
    for r in strings(at(&k, "resources")) {
        for doc in yaml_docs(&format!("k8s/{r}")) {
            assert!(opt(&doc, "apiVersion").is_some(), "k8s/{r}: apiVersion");
            assert!(
                opt(&doc, "metadata.name").is_some(),
                "k8s/{r}: metadata.name"
            );
            assert!(
                opt(&doc, "metadata.namespace").is_none(),
                "k8s/{r}: namespace-less"
            );
            out.push(doc);
        }
    }
    // Every manifest in deploy/k8s is listed.
    let mut files = Vec::new();
    all_files(&deploy().join("k8s"), &mut files);
    for f in files {
        let name = f.trim_start_matches("k8s/");
        assert!(
            name == "kustomization.yaml" || strings(at(&k, "resources")).iter().any(|r| r == name),
            "k8s/{name} is not in kustomization.yaml"
        );
    }
    out
}

fn of_kind(rs: &[Yaml], kind: &str) -> Vec<Yaml> {
    rs.iter()
        .filter(|r| text(at(r, "kind")) == kind)
        .cloned()
        .collect()
}

fn daemonset() -> Yaml {
    let rs = k8s_resources();
    let mut w = of_kind(&rs, "DaemonSet");
    w.extend(of_kind(&rs, "Deployment"));
    // The SFU's: coturn's (coturn.yaml) is checked on its own.
    w.retain(|r| text(at(r, "metadata.name")) == "cabine");
    assert_eq!(w.len(), 1, "one SFU workload");
    w.pop().unwrap()
}

fn container<'a>(pod: &'a Yaml, name: &str) -> &'a Yaml {
    list(at(pod, "containers"))
        .iter()
        .find(|c| text(at(c, "name")) == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// A probe or Service port (number or name) resolved against a container's ports.
fn resolve_port(c: &Yaml, port: &Yaml) -> (u16, String) {
    let ports = list(at(c, "ports"));
    let found = ports.iter().find(|p| match port {
        Yaml::Number(n) => at(p, "containerPort").as_u64() == n.as_u64(),
        other => opt(p, "name").map(text) == Some(text(other)),
    });
    let p = found.unwrap_or_else(|| panic!("port {} is not a container port", text(port)));
    (
        at(p, "containerPort").as_u64().unwrap() as u16,
        opt(p, "protocol").map(text).unwrap_or_else(|| "TCP".into()),
    )
}

#[test]
fn kubernetes_runs_one_sfu_per_node_with_probes_and_a_drain() {
    let rs = k8s_resources();
    let ds = daemonset();
    let pod = at(&ds, "spec.template.spec");
    assert_eq!(
        text(at(&ds, "kind")),
        "DaemonSet",
        "one SFU per node on its host network"
    );
    assert_eq!(at(pod, "hostNetwork").as_bool(), Some(true), "hostNetwork");
    assert_eq!(
        text(at(pod, "dnsPolicy")),
        "ClusterFirstWithHostNet",
        "cluster DNS with hostNetwork"
    );
    // Selector matches the template.
    let sel = at(&ds, "spec.selector.matchLabels").as_mapping().unwrap();
    let labels = at(&ds, "spec.template.metadata.labels")
        .as_mapping()
        .unwrap();
    for (k, v) in sel {
        assert_eq!(labels.get(k), Some(v), "selector {k:?} on the template");
    }

    let c = container(pod, "cabine");
    // Environment: `$(VAR)` only after VAR, secrets from a listed Secret, a valid config.
    let secrets = of_kind(&rs, "Secret");
    let mut env = dockerfile_env(&dockerfile());
    let mut defined = BTreeSet::new();
    for e in list(at(c, "env")) {
        let name = text(at(e, "name"));
        let value = if let Some(v) = opt(e, "value") {
            let mut v = text(v);
            while let Some(i) = v.find("$(") {
                let end = v[i..].find(')').unwrap() + i;
                let var = &v[i + 2..end];
                assert!(
                    defined.contains(var),
                    "{name} refers to $({var}) before it is defined"
                );
                v.replace_range(i..=end, &env[var]);
            }
            v
        } else if let Some(f) = opt(e, "valueFrom.fieldRef.fieldPath") {
            assert!(
                ["status.hostIP", "status.podIP", "spec.nodeName"].contains(&text(f).as_str()),
                "{name} from {f:?}"
            );
            SAMPLE_NODE_IP.to_string()
        } else if let Some(r) = opt(e, "valueFrom.secretKeyRef") {
            let (sname, key) = (text(at(r, "name")), text(at(r, "key")));
            let optional = opt(r, "optional").and_then(Yaml::as_bool) == Some(true);
            let secret = secrets
                .iter()
                .find(|s| text(at(s, "metadata.name")) == sname);
            let has = secret.is_some_and(|s| {
                opt(s, "stringData").is_some_and(|d| d.get(key.as_str()).is_some())
                    || opt(s, "data").is_some_and(|d| d.get(key.as_str()).is_some())
            });
            if !has {
                assert!(optional, "{name}: Secret {sname} has no key {key}");
                defined.insert(name);
                continue;
            }
            SAMPLE_SECRET.to_string()
        } else {
            panic!("env {name}: no value")
        };
        defined.insert(name.clone());
        env.insert(name, value);
    }
    assert!(
        opt(&secrets[0], "stringData.secret").is_some(),
        "the Secret holds the token secret"
    );
    let cfg = load_config("k8s cabine container", &env);
    let drain = check_served_config("k8s cabine container", &cfg, false);
    assert_eq!(
        cfg.advertise().unwrap().map(|a| a.ip().to_string()),
        Some(SAMPLE_NODE_IP.to_string()),
        "media is advertised on the node IP"
    );

    // Probes: readiness on /readyz, liveness on /healthz, both on the HTTP port.
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let p = at(c, probe);
        assert_eq!(text(at(p, "httpGet.path")), path, "{probe}");
        let (port, proto) = resolve_port(c, at(p, "httpGet.port"));
        assert_eq!((port, proto.as_str()), (8080, "TCP"), "{probe} port");
        assert_eq!(port, cfg.http.listen.port(), "{probe} port = http.listen");
    }
    // Readiness must drop fast once draining.
    let r = at(c, "readinessProbe");
    let period = opt(r, "periodSeconds").and_then(Yaml::as_u64).unwrap_or(10);
    let failures = opt(r, "failureThreshold")
        .and_then(Yaml::as_u64)
        .unwrap_or(3);
    assert!(period * failures <= 5, "readiness reacts within 5s");

    // Container ports match the configuration.
    let mut declared = BTreeSet::new();
    for p in list(at(c, "ports")) {
        declared.insert((
            at(p, "containerPort").as_u64().unwrap() as u16,
            opt(p, "protocol").map(text).unwrap_or_else(|| "TCP".into()),
        ));
    }
    for want in [
        (cfg.http.listen.port(), "TCP"),
        (cfg.media.bind.port(), "UDP"),
        // ICE-TCP (media.tcp) on the same port number.
        (cfg.media.bind.port(), "TCP"),
        (cfg.admin_listen().unwrap().unwrap().port(), "TCP"),
        (4443, "UDP"),
    ] {
        assert!(
            declared.contains(&(want.0, want.1.to_string())),
            "container port {want:?}"
        );
    }

    // Stop: preStop sleep, then SIGTERM and the drain, all inside the grace period.
    let pre = at(c, "lifecycle.preStop");
    let pre_secs = if let Some(cmd) = opt(pre, "exec.command") {
        let cmd = strings(cmd);
        assert_eq!(cmd[0], "sleep", "preStop sleeps");
        cmd[1].parse::<u64>().unwrap()
    } else {
        at(pre, "sleep.seconds").as_u64().unwrap()
    };
    assert!(pre_secs >= 2, "preStop leaves time for endpoints to update");
    let grace = at(pod, "terminationGracePeriodSeconds").as_u64().unwrap();
    assert!(grace > 10, "grace period longer than the default drain");
    assert!(
        Duration::from_secs(grace) > Duration::from_secs(pre_secs) + drain,
        "terminationGracePeriodSeconds {grace} <= preStop {pre_secs}s + drain {drain:?}"
    );

    // Non-root, read-only root filesystem, no privilege escalation.
    let psc = at(pod, "securityContext");
    assert_eq!(at(psc, "runAsNonRoot").as_bool(), Some(true));
    assert!(at(psc, "runAsUser").as_u64().unwrap() >= 1000);
    let sc = at(c, "securityContext");
    assert_eq!(at(sc, "readOnlyRootFilesystem").as_bool(), Some(true));
    assert_eq!(at(sc, "allowPrivilegeEscalation").as_bool(), Some(false));
    assert_ne!(opt(sc, "runAsUser").and_then(Yaml::as_u64), Some(0));
    assert!(strings(at(sc, "capabilities.drop")).contains(&"ALL".to_string()));
    assert!(opt(sc, "capabilities.add").is_none(), "no capability added");
    for ic in opt(pod, "initContainers").map(list).into_iter().flatten() {
        let sc = at(ic, "securityContext");
        assert_eq!(at(sc, "allowPrivilegeEscalation").as_bool(), Some(false));
        assert!(strings(at(sc, "capabilities.drop")).contains(&"ALL".to_string()));
        let added = opt(sc, "capabilities.add").map(strings).unwrap_or_default();
        assert!(added.iter().all(|a| a == "CHOWN"), "init adds only CHOWN");
    }
    // The audit log directory is a volume (the root filesystem is read-only).
    let audit_dir = cfg
        .audit
        .path
        .parent()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let mounts: Vec<String> = list(at(c, "volumeMounts"))
        .iter()
        .map(|m| text(at(m, "mountPath")))
        .collect();
    assert!(mounts.contains(&audit_dir), "{audit_dir} is mounted");
    let volumes: BTreeSet<String> = list(at(pod, "volumes"))
        .iter()
        .map(|v| text(at(v, "name")))
        .collect();
    for m in list(at(c, "volumeMounts")) {
        assert!(volumes.contains(&text(at(m, "name"))), "volume {m:?}");
    }

    // The cluster store: the Redis URL names a Service of these manifests, on its port.
    let url = cfg.cluster.redis_url.clone();
    let hostport = url
        .strip_prefix("redis://")
        .and_then(|r| r.split('/').next())
        .unwrap_or_else(|| panic!("cluster.redis_url {url:?}"));
    let (host, port) = hostport.rsplit_once(':').unwrap();
    let store = of_kind(&rs, "Service")
        .into_iter()
        .find(|s| text(at(s, "metadata.name")) == host)
        .unwrap_or_else(|| panic!("cluster.redis_url names no Service: {url}"));
    assert!(
        list(at(&store, "spec.ports")).iter().any(|p| at(p, "port")
            .as_u64()
            .map(|n| n.to_string())
            .as_deref()
            == Some(port)),
        "the store Service serves port {port}"
    );
    assert!(
        cfg.http.public_url.contains(SAMPLE_NODE_IP),
        "each node's public URL is its own address: {}",
        cfg.http.public_url
    );

    // The Service: HTTP only, onto the pods' HTTP port.
    let svcs: Vec<Yaml> = of_kind(&rs, "Service")
        .into_iter()
        .filter(|s| text(at(s, "metadata.name")) != host)
        .filter(|s| text(at(s, "metadata.name")) != "cabine-turn")
        .collect();
    assert_eq!(svcs.len(), 1);
    let svc = &svcs[0];
    for (k, v) in at(svc, "spec.selector").as_mapping().unwrap() {
        assert_eq!(labels.get(k), Some(v), "Service selector {k:?}");
    }
    for p in list(at(svc, "spec.ports")) {
        let proto = opt(p, "protocol").map(text).unwrap_or_else(|| "TCP".into());
        assert_eq!(proto, "TCP", "media is reached on the node, not a Service");
        let (port, cproto) = resolve_port(c, opt(p, "targetPort").unwrap_or(at(p, "port")));
        assert_eq!((port, cproto.as_str()), (8080, "TCP"), "Service → HTTP");
    }
}

#[test]
fn kubernetes_runs_coturn_with_cabines_turn_secret_ports_and_the_shipped_policy() {
    let rs = k8s_resources();
    let named = |kind: &str, name: &str| -> Yaml {
        of_kind(&rs, kind)
            .into_iter()
            .find(|r| text(at(r, "metadata.name")) == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in deploy/k8s"))
    };
    let ds = named("DaemonSet", "cabine-coturn");
    let pod = at(&ds, "spec.template.spec");
    assert_eq!(
        at(pod, "hostNetwork").as_bool(),
        Some(true),
        "the relay port range is the node's own"
    );
    let c = container(pod, "coturn");
    let args = strings(at(c, "args"));
    let env_of = |name: &str| -> Yaml {
        list(at(c, "env"))
            .iter()
            .find(|e| text(at(e, "name")) == name)
            .unwrap_or_else(|| panic!("coturn has no env {name}"))
            .clone()
    };

    // The shared secret: the same Secret key as Cabine's CABINE_TURN__SECRET.
    let secret_arg = args
        .iter()
        .find_map(|a| {
            a.strip_prefix("--static-auth-secret=$(")
                .and_then(|v| v.strip_suffix(')'))
        })
        .unwrap_or_else(|| panic!("coturn's secret is not an env variable: {args:?}"));
    let coturn_ref = at(&env_of(secret_arg), "valueFrom.secretKeyRef").clone();
    let cabine = container(at(&daemonset(), "spec.template.spec"), "cabine").clone();
    let cabine_env = |name: &str| -> Yaml {
        list(at(&cabine, "env"))
            .iter()
            .find(|e| text(at(e, "name")) == name)
            .unwrap_or_else(|| panic!("cabine has no env {name}"))
            .clone()
    };
    let cabine_ref = at(&cabine_env("CABINE_TURN__SECRET"), "valueFrom.secretKeyRef").clone();
    assert_eq!(
        (text(at(&coturn_ref, "name")), text(at(&coturn_ref, "key"))),
        (text(at(&cabine_ref, "name")), text(at(&cabine_ref, "key"))),
        "coturn and cabine read the TURN secret from the same Secret key"
    );
    assert!(
        opt(&coturn_ref, "optional").and_then(Yaml::as_bool) != Some(true),
        "coturn without the secret would accept nothing: not optional"
    );
    let secret = named("Secret", &text(at(&coturn_ref, "name")));
    assert!(
        opt(&secret, "stringData")
            .is_some_and(|d| d.get(text(at(&coturn_ref, "key")).as_str()).is_some()),
        "the Secret holds the TURN secret key"
    );

    // The shipped policy, verbatim, at the path the arguments name.
    let conf = read("turn/turnserver.conf");
    let cm = named("ConfigMap", "cabine-turn");
    assert_eq!(
        text(
            at(&cm, "data")
                .get("turnserver.conf")
                .expect("data turnserver.conf")
        ),
        conf,
        "k8s/coturn.yaml's turnserver.conf is deploy/turn/turnserver.conf"
    );
    assert!(
        args.windows(2)
            .any(|w| w[0] == "-c" && w[1] == "/etc/coturn/turnserver.conf"),
        "{args:?}"
    );
    let config_volume = list(at(c, "volumeMounts"))
        .iter()
        .find(|m| text(at(m, "mountPath")) == "/etc/coturn")
        .map(|m| text(at(m, "name")))
        .expect("/etc/coturn mounted");
    let sources = list(at(pod, "volumes"))
        .iter()
        .find(|v| text(at(v, "name")) == config_volume)
        .map(|v| list(at(v, "projected.sources")).clone())
        .expect("/etc/coturn: a projected volume");
    let paths: BTreeSet<String> = sources
        .iter()
        .flat_map(|s| {
            ["configMap", "secret"]
                .into_iter()
                .filter_map(|k| opt(s, &format!("{k}.items")))
                .flat_map(|items| list(items).iter().map(|i| text(at(i, "path"))))
                .collect::<Vec<_>>()
        })
        .collect();
    for f in ["turnserver.conf", "cert.pem", "key.pem"] {
        assert!(paths.contains(f), "/etc/coturn/{f}: {paths:?}");
    }
    let lines: Vec<&str> = conf.lines().map(str::trim).collect();
    for l in [
        "use-auth-secret",
        "no-tcp-relay",
        "denied-peer-ip=0.0.0.0-255.255.255.255",
        "tls-listening-port=443",
        "listening-port=3478",
        "min-port=49152",
        "max-port=49999",
    ] {
        assert!(lines.contains(&l), "turnserver.conf: {l}");
    }
    assert!(lines.iter().any(|l| l.starts_with("user-quota=")));
    assert!(!lines.iter().any(|l| l.starts_with("static-auth-secret")));
    // Peers: only Cabine's media nodes (from the ConfigMap), on top of the policy's denials.
    let peers_arg = args
        .iter()
        .find_map(|a| {
            a.strip_prefix("--allowed-peer-ip=$(")
                .and_then(|v| v.strip_suffix(')'))
        })
        .unwrap_or_else(|| panic!("no allowed-peer-ip: {args:?}"));
    let peers_ref = at(&env_of(peers_arg), "valueFrom.configMapKeyRef").clone();
    assert_eq!(text(at(&peers_ref, "name")), "cabine-turn");
    let peers = text(at(&cm, &format!("data.{}", text(at(&peers_ref, "key")))));
    assert!(
        !peers.is_empty() && !peers.starts_with("0.0.0.0") && !peers.starts_with("::"),
        "allowed peers: {peers}"
    );

    // Ports: 443/tcp (TLS), 3478 udp and tcp, on the container and the Service.
    let wanted: BTreeSet<(u16, String)> = [(443, "TCP"), (3478, "UDP"), (3478, "TCP")]
        .into_iter()
        .map(|(p, t)| (p, t.to_owned()))
        .collect();
    let svc = named("Service", "cabine-turn");
    let mut served = BTreeSet::new();
    for p in list(at(&svc, "spec.ports")) {
        let proto = opt(p, "protocol").map(text).unwrap_or_else(|| "TCP".into());
        let port = at(p, "port").as_u64().unwrap() as u16;
        let target = resolve_port(c, opt(p, "targetPort").unwrap_or(at(p, "port")));
        assert_eq!(target, (port, proto.clone()), "Service port {port}/{proto}");
        served.insert((port, proto));
    }
    assert_eq!(served, wanted, "the TURN Service's ports");
    let labels = at(&ds, "spec.template.metadata.labels")
        .as_mapping()
        .unwrap();
    for (k, v) in at(&svc, "spec.selector").as_mapping().unwrap() {
        assert_eq!(labels.get(k), Some(v), "TURN Service selector {k:?}");
    }

    // Cabine's [turn] settings: its URLs point at those ports (443 for turns:, 3478 plain).
    let urls = text(at(&cabine_env("CABINE_TURN__URLS"), "value"));
    let urls: toml::Value = format!("v = {urls}").parse::<toml::Table>().unwrap()["v"].clone();
    let mut kinds = BTreeSet::new();
    for u in urls.as_array().unwrap() {
        let u = u.as_str().unwrap();
        let tls = u.starts_with("turns:");
        let port = u.rsplit_once(':').unwrap().1.split('?').next().unwrap();
        assert_eq!(port, if tls { "443" } else { "3478" }, "{u}");
        kinds.insert(
            u.split_once('?')
                .map(|(_, q)| q.to_owned())
                .unwrap_or_default()
                + if tls { "+tls" } else { "" },
        );
    }
    assert_eq!(
        kinds.len(),
        3,
        "turns over TLS, turn over udp and tcp: {kinds:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// systemd.

/// `[Section] Key=Value` lines, in order.
fn unit(rel: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for (n, line) in read(rel).lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
            continue;
        }
        if let Some(s) = t.strip_prefix('[') {
            section = s
                .strip_suffix(']')
                .unwrap_or_else(|| panic!("{rel}:{}: bad section", n + 1))
                .into();
            continue;
        }
        assert!(!section.is_empty(), "{rel}:{}: key before a section", n + 1);
        let (k, v) = t
            .split_once('=')
            .unwrap_or_else(|| panic!("{rel}:{}: not Key=Value: {t}", n + 1));
        out.push((section.clone(), k.trim().into(), v.trim().into()));
    }
    out
}

#[test]
fn systemd_unit_is_hardened_and_outlasts_the_drain() {
    let u = unit("systemd/cabine.service");
    let sections: BTreeSet<&str> = u.iter().map(|(s, _, _)| s.as_str()).collect();
    assert_eq!(sections, BTreeSet::from(["Unit", "Service", "Install"]));
    let all = |k: &str| -> Vec<&str> {
        u.iter()
            .filter(|(s, key, _)| s == "Service" && key == k)
            .map(|(_, _, v)| v.as_str())
            .collect()
    };
    let one = |k: &str| -> &str {
        let v = all(k);
        assert_eq!(v.len(), 1, "one {k}= in [Service]");
        v[0]
    };
    let exec = one("ExecStart");
    assert!(exec.starts_with('/'), "ExecStart uses an absolute path");
    assert!(
        exec.ends_with("cabine serve") || exec.contains("cabine serve "),
        "ExecStart runs `cabine serve`: {exec}"
    );
    assert!(
        one("DynamicUser") == "yes" || all("User").iter().any(|u| *u != "root" && *u != "0"),
        "runs as a non-root user"
    );
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("StateDirectory"), "cabine");
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("KillSignal"), "SIGTERM");
    assert_eq!(one("CapabilityBoundingSet"), "");
    let env_file = one("EnvironmentFile");
    assert_eq!(env_file.trim_start_matches('-'), "/etc/cabine/env");
    assert!(u
        .iter()
        .any(|(s, k, v)| s == "Install" && k == "WantedBy" && v == "multi-user.target"));
    assert!(u.iter().any(|(s, k, _)| s == "Unit" && k == "After"));

    // Environment= defaults, then the env file (as systemd does), load as a configuration.
    let mut env = BTreeMap::new();
    for e in all("Environment") {
        for pair in e.split_whitespace() {
            let (k, v) = pair.split_once('=').unwrap();
            env.insert(k.to_string(), v.to_string());
        }
    }
    for line in read("systemd/env.example").lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let (k, v) = t.split_once('=').unwrap();
        env.insert(k.into(), v.into());
    }
    let cfg = load_config("systemd unit + env.example", &env);
    let drain = check_served_config("systemd unit + env.example", &cfg, false);
    let stop = duration(one("TimeoutStopSec"));
    assert!(stop > drain, "TimeoutStopSec {stop:?} <= drain {drain:?}");
    assert!(
        cfg.audit.path.starts_with("/var/lib/cabine/"),
        "the audit log is in the StateDirectory, the only writable place"
    );
}

// ---------------------------------------------------------------------------------------------
// Every data file parses; the dashboard is well-formed and names real series.

#[test]
fn every_yaml_and_json_file_parses() {
    let mut files = Vec::new();
    all_files(&deploy(), &mut files);
    let mut n = 0;
    for f in &files {
        if f.ends_with(".yml") || f.ends_with(".yaml") {
            assert!(!yaml_docs(f).is_empty(), "{f} is empty");
            n += 1;
        } else if f.ends_with(".json") {
            let _: Json = serde_json::from_str(&read(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
            n += 1;
        }
    }
    assert!(n >= 9, "found only {n} YAML/JSON files in {files:?}");
}

fn dashboard() -> Json {
    serde_json::from_str(&read("grafana/dashboards/cabine.json")).expect("dashboard JSON")
}

/// One metric reference in a PromQL expression.
#[derive(Debug)]
struct MetricRef {
    name: String,
    matchers: Vec<String>,
    in_rate: bool,
    in_quantile: bool,
}

/// A small PromQL scan: metric names (identifiers starting `cabine_`), their label matchers,
/// whether they are the argument of rate/irate/increase (and of histogram_quantile), and the
/// labels of every `by (...)`/`without (...)`. Also checks brackets balance.
fn scan_promql(expr: &str) -> (Vec<MetricRef>, Vec<String>) {
    try_scan_promql(expr).unwrap_or_else(|e| panic!("{e}: {expr}"))
}

fn try_scan_promql(expr: &str) -> Result<(Vec<MetricRef>, Vec<String>), String> {
    let b = expr.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut refs = Vec::new();
    let mut grouping = Vec::new();
    let mut stack: Vec<(u8, String)> = Vec::new(); // open bracket and the function before it
    let mut i = 0;
    let mut last_ident = String::new();
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\'' {
            i += 1;
            while i < b.len() && b[i] != c {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            continue;
        }
        if c == b'(' || c == b'[' {
            stack.push((c, std::mem::take(&mut last_ident)));
            i += 1;
            continue;
        }
        if c == b')' || c == b']' {
            let (open, _) = stack.pop().ok_or("unbalanced brackets")?;
            if open != if c == b')' { b'(' } else { b'[' } {
                return Err("mismatched brackets".into());
            }
            i += 1;
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' || (c == b'$') {
            let start = i;
            i += 1;
            while i < b.len() && ident(b[i]) {
                i += 1;
            }
            let word = &expr[start..i];
            let mut j = i;
            while j < b.len() && b[j] == b' ' {
                j += 1;
            }
            if (word == "by" || word == "without") && j < b.len() && b[j] == b'(' {
                let end = expr[j..].find(')').ok_or("unclosed by (")? + j;
                for l in expr[j + 1..end].split(',').map(str::trim) {
                    let valid = l.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                        && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                    if !valid {
                        return Err(format!("bad label {l:?} in {word} (...)"));
                    }
                    grouping.push(l.to_string());
                }
                i = end + 1;
                continue;
            }
            if word.starts_with("cabine_") {
                let mut matchers = Vec::new();
                if j < b.len() && b[j] == b'{' {
                    let end = expr[j..].find('}').ok_or("unclosed {")? + j;
                    for m in expr[j + 1..end].split(',') {
                        let name: String = m
                            .trim()
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        if name.is_empty() {
                            return Err(format!("bad matcher {m:?}"));
                        }
                        matchers.push(name);
                    }
                    i = end + 1;
                }
                let enclosing = stack.last().map(|(_, f)| f.as_str()).unwrap_or("");
                let in_rate = ["rate", "irate", "increase"].contains(&enclosing);
                let in_quantile = stack.iter().any(|(_, f)| f == "histogram_quantile");
                refs.push(MetricRef {
                    name: word.to_string(),
                    matchers,
                    in_rate,
                    in_quantile,
                });
                last_ident.clear();
                continue;
            }
            last_ident = word.to_string();
            continue;
        }
        if !c.is_ascii_whitespace() {
            last_ident.clear();
        }
        i += 1;
    }
    if !stack.is_empty() {
        return Err("unclosed brackets".into());
    }
    Ok((refs, grouping))
}

/// Sample names with their label names and family types, from a Prometheus text scrape.
struct Scrape {
    samples: BTreeMap<String, BTreeSet<String>>,
    types: BTreeMap<String, String>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut samples: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut types = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, ty) = rest.split_once(' ').unwrap();
                types.insert(name.to_string(), ty.to_string());
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let name_end = line.find(['{', ' ']).unwrap();
            let name = line[..name_end].to_string();
            let labels = samples.entry(name).or_default();
            if line[name_end..].starts_with('{') {
                // label="value",... with escapes in values.
                let b = line.as_bytes();
                let mut i = name_end + 1;
                while i < b.len() && b[i] != b'}' {
                    let eq = line[i..].find('=').unwrap() + i;
                    labels.insert(line[i..eq].trim_matches(',').trim().to_string());
                    i = eq + 2; // past ="
                    while b[i] != b'"' {
                        i += if b[i] == b'\\' { 2 } else { 1 };
                    }
                    i += 1;
                    if b[i] == b',' {
                        i += 1;
                    }
                }
            }
        }
        Scrape { samples, types }
    }

    /// `counter`, `gauge`, `histogram` (for _bucket/_sum/_count) ...
    fn kind(&self, sample: &str) -> &str {
        if let Some(t) = self.types.get(sample) {
            return t;
        }
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = sample.strip_suffix(suffix) {
                if self.types.get(base).map(String::as_str) == Some("histogram") {
                    return "histogram";
                }
            }
        }
        "untyped"
    }
}

/// Runs a real session (publisher and subscriber over WebRTC on loopback, plus one refused
/// request) and returns the server's /metrics text, once it has every `wanted` sample name (or
/// after 10 s).
async fn scrape_a_live_server(wanted: &BTreeSet<String>) -> String {
    let s = common::start_with(|c| c.admin.listen = "127.0.0.1:0".into()).await;
    let admin = s.server.admin_addr().expect("admin listener");
    let room = "deploy-check";
    let publisher = Publisher::connect(
        &format!("{}/whip/{room}", s.base),
        &s.token(room, Role::Kiosk, "k1"),
        vec![
            TrackSpec::video("k1", "room-camera", Codec::Vp8),
            TrackSpec::audio("k1", "stethoscope"),
        ],
        ClientOptions::loopback(),
    )
    .await
    .unwrap();
    let subscriber = Subscriber::connect(
        &format!("{}/whep/{room}", s.base),
        &s.token(room, Role::Doctor, "d1"),
        ClientOptions {
            recv_video: 1,
            recv_audio: 1,
            ..ClientOptions::loopback()
        },
    )
    .await
    .unwrap();
    // A refused request, so the refusal counter has a series.
    let (status, _, _) = common::post_sdp(
        &format!("{}/whip/{room}", s.base),
        Some("not-a-token"),
        "application/sdp",
        common::sdp_offer("sendonly"),
    )
    .await;
    assert_eq!(status, 401);
    // ~3 s of media: long enough for RTCP reports (RTT) and congestion feedback (BWE).
    let sender = tokio::spawn(async move {
        for i in 0..300 {
            for (t, track) in publisher.tracks().iter().enumerate() {
                let inc = if track.kind() == MediaKind::Video {
                    900
                } else {
                    480
                };
                track.write_rtp(&payload(t, i), true, inc).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        publisher
    });
    let tracks = subscriber
        .tracks(2, Duration::from_secs(15))
        .await
        .expect("tracks arrive");
    let readers: Vec<_> = tracks
        .into_iter()
        .map(|t| {
            tokio::spawn(async move {
                while t.read_rtp_timeout(Duration::from_secs(2)).await.is_ok() {}
            })
        })
        .collect();
    let publisher = sender.await.unwrap();
    // Some series exist only once measured (RTT from RTCP reports, bandwidth estimates from
    // congestion feedback): scrape until every name the dashboard uses is there, or give up
    // after a while and let the check below name what is missing.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        s.server.refresh_metrics().await;
        let r = reqwest::get(format!("http://{admin}/metrics"))
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let text = r.text().await.unwrap();
        let seen = Scrape::parse(&text);
        if wanted.iter().all(|w| seen.samples.contains_key(w)) || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    subscriber.close().await.unwrap();
    publisher.close().await.unwrap();
    for r in readers {
        let _ = r.await;
    }
    s.server.shutdown(Duration::from_millis(100)).await;
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboard_queries_only_series_the_server_exposes() {
    let dash = dashboard();

    // Variables the expressions may use.
    let mut vars: BTreeSet<String> = ["__rate_interval", "__interval", "__range"]
        .map(String::from)
        .into();
    for v in dash["templating"]["list"].as_array().unwrap() {
        vars.insert(v["name"].as_str().unwrap().to_string());
    }
    let check_vars = |expr: &str| {
        for part in expr.split('$').skip(1) {
            let name: String = part
                .trim_start_matches('{')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(vars.contains(&name), "${name} is not a variable: {expr}");
        }
    };

    // Every expression: panel targets and variable queries.
    let mut exprs: Vec<(String, String)> = Vec::new();
    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    let mut data_panels = 0;
    for p in panels {
        let title = p["title"].as_str().unwrap_or("?").to_string();
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "panel id twice: {title}"
        );
        // Panels tile the 24-column grid without overlapping.
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(w > 0 && h > 0 && x + w <= 24, "{title}: gridPos {g}");
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(cells.insert((cx, cy)), "{title} overlaps another panel");
            }
        }
        if p["type"] == "row" {
            continue;
        }
        data_panels += 1;
        let ds = p["datasource"]["uid"].as_str().unwrap();
        assert_eq!(ds, "${datasource}", "{title}: data source");
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("{title}"));
        assert!(!targets.is_empty(), "{title} has no query");
        let mut refids = BTreeSet::new();
        for t in targets {
            assert!(
                refids.insert(t["refId"].as_str().unwrap()),
                "{title}: refId"
            );
            let e = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{title}: no expr"));
            assert!(!e.trim().is_empty(), "{title}: empty expr");
            exprs.push((title.clone(), e.to_string()));
        }
    }
    assert!(data_panels >= 12, "a real dashboard: {data_panels} panels");
    for v in dash["templating"]["list"].as_array().unwrap() {
        if v["type"] == "query" {
            let q = v["query"]["query"]
                .as_str()
                .or(v["query"].as_str())
                .unwrap();
            assert_eq!(v["datasource"]["uid"], "${datasource}");
            exprs.push((format!("variable {}", v["name"]), q.to_string()));
        }
    }

    let wanted: BTreeSet<String> = exprs
        .iter()
        .flat_map(|(_, e)| scan_promql(e).0)
        .map(|r| r.name)
        .collect();
    let scrape_text = scrape_a_live_server(&wanted).await;
    if std::env::var_os("DEPLOY_TEST_PRINT_SCRAPE").is_some() {
        println!("{scrape_text}");
    }
    let scrape = Scrape::parse(&scrape_text);
    assert!(
        scrape.samples.contains_key("cabine_rooms"),
        "scrape:\n{scrape_text}"
    );

    let mut referenced = BTreeSet::new();
    for (title, expr) in &exprs {
        check_vars(expr);
        let (refs, grouping) = scan_promql(expr);
        if !title.starts_with("variable") {
            assert!(!refs.is_empty(), "{title}: {expr} names no cabine_ metric");
        }
        // `node` is on every series of a clustered node (cluster.node_id), like the target's
        // job and instance; this single test server has none.
        let mut labels_here: BTreeSet<String> =
            ["job", "instance", "node"].map(String::from).into();
        for r in &refs {
            let labels = scrape.samples.get(&r.name).unwrap_or_else(|| {
                panic!(
                    "{title}: {} is not exposed by the server. Exposed: {:?}",
                    r.name,
                    scrape.samples.keys().collect::<Vec<_>>()
                )
            });
            referenced.insert(r.name.clone());
            labels_here.extend(labels.iter().cloned());
            for m in &r.matchers {
                assert!(
                    m == "job" || m == "instance" || m == "node" || labels.contains(m),
                    "{title}: {} has no label {m} (has {labels:?})",
                    r.name
                );
            }
            let kind = scrape.kind(&r.name);
            let cumulative = kind == "counter" || kind == "histogram";
            assert_eq!(
                r.in_rate, cumulative,
                "{title}: {} is a {kind}: rate()/increase() on counters and histograms only, \
                 and always on them: {expr}",
                r.name
            );
            if r.in_quantile {
                assert!(
                    r.name.ends_with("_bucket"),
                    "{title}: quantile of {}",
                    r.name
                );
                assert!(grouping.iter().any(|g| g == "le"), "{title}: by (le)");
            }
            if r.name.ends_with("_bucket") {
                assert!(
                    r.in_quantile,
                    "{title}: {} outside histogram_quantile",
                    r.name
                );
            }
        }
        for g in &grouping {
            assert!(
                g == "le" || labels_here.contains(g),
                "{title}: by ({g}) but no series here has it: {expr}"
            );
        }
    }

    // The dashboard covers what operators asked for.
    for family in [
        "cabine_rooms",
        "cabine_participants",
        "cabine_tracks",
        "cabine_rtp_packets_total",
        "cabine_sfu_forwarding_delay_seconds_bucket",
        "cabine_stream_loss_ratio",
        "cabine_stream_jitter_milliseconds",
        "cabine_stream_rtt_milliseconds",
        "cabine_bwe_per_second",
        "cabine_requests_refused_total",
        "cabine_udp_datagrams_total",
        "cabine_telemetry_messages",
    ] {
        assert!(referenced.contains(family), "no panel shows {family}");
    }
}

#[test]
fn promql_scanner_catches_mistakes() {
    // The checks above are only as good as this scanner: it must see through nesting.
    let (r, g) = scan_promql(
        r#"histogram_quantile(0.99, sum by (le) (rate(cabine_x_bucket{job=~"$job",a!~"b|c"}[$__rate_interval])))"#,
    );
    assert_eq!(r.len(), 1);
    assert!(r[0].in_rate && r[0].in_quantile);
    assert_eq!(r[0].matchers, ["job", "a"]);
    assert_eq!(g, ["le"]);
    let (r, g) = scan_promql("sum by (role) (cabine_participants) / 8 * rate(cabine_y_total[1m])");
    assert!(!r[0].in_rate && r[1].in_rate && !r[1].in_quantile);
    assert_eq!(g, ["role"]);
    let (r, _) = scan_promql("max(cabine_stream_loss_ratio{instance=~\"$instance\"})");
    assert!(!r[0].in_rate);
    for bad in [
        "sum(rate(cabine_x_total[1m])",
        "sum(rate(cabine_x_total[1m)))",
        "sum(cabine_x{=\"a\"})",
        "sum by (le (cabine_x)",
    ] {
        assert!(try_scan_promql(bad).is_err(), "{bad} is caught");
    }
    // A bucket outside histogram_quantile, a quantile without rate: both visible.
    let (r, _) = scan_promql("histogram_quantile(0.5, cabine_x_bucket)");
    assert!(r[0].in_quantile && !r[0].in_rate);
}
