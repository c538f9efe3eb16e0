//! Configuration: the embedded `configs/default.toml`, then an optional file, then `CABINE_*`
//! environment variables, parsed once into checked types.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;

/// The built-in configuration, compiled into the binary.
pub const DEFAULT_TOML: &str = include_str!("../../../configs/default.toml");

/// The development secret shipped in the default configuration.
pub const DEV_SECRET: &str = "cabine-development-secret-do-not-use-in-production";

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// HTTP API.
    pub http: HttpConfig,
    /// Media plane.
    pub media: MediaConfig,
    /// Tokens.
    pub auth: AuthConfig,
    /// Logging.
    pub log: LogConfig,
    /// Audit log.
    pub audit: crate::audit::AuditConfig,
    /// Admin listener.
    pub admin: AdminConfig,
    /// OpenTelemetry push.
    pub otel: crate::otel::OtelConfig,
    /// Device telemetry (QUIC sidecar).
    pub telemetry: crate::telemetry::TelemetryConfig,
    /// Limits on what clients can make the server hold.
    pub limits: crate::limits::LimitsConfig,
    /// ICE servers advertised to WHIP/WHEP clients.
    pub ice: IceConfig,
    /// TURN relays (coturn) and their credentials.
    pub turn: crate::turn::TurnConfig,
    /// Many nodes sharing rooms through a store.
    pub cluster: crate::cluster::ClusterConfig,
    /// Invite links for specialists, interpreters, orthoptists.
    pub invites: crate::invite::InvitesConfig,
    /// The walk-in queue and the fleet.
    pub queue: crate::queue::QueueConfig,
    /// FHIR export of the consultations' measurements.
    pub fhir: crate::fhir::FhirConfig,
}

/// `[ice]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IceConfig {
    /// STUN/TURN URLs (RFC 7064/7065) sent as `Link: <url>; rel="ice-server"` on WHIP/WHEP
    /// POST and OPTIONS (RFC 9725 §4.6).
    pub servers: Vec<String>,
}

/// `[admin]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Listen address ("" disables the admin listener).
    pub listen: String,
    /// Bearer token required on the admin listener ("" = none; rely on the bind address).
    pub token: String,
}

/// `[http]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// PEM certificate chain (empty: plain HTTP).
    pub tls_cert: PathBuf,
    /// PEM private key.
    pub tls_key: PathBuf,
    /// Drain time on shutdown.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Public base URL for Location headers (empty: relative).
    pub public_url: String,
    /// How long a dropped WebSocket signalling session is kept for its page to resume it.
    #[serde(with = "humantime_serde")]
    pub ws_resume_grace: Duration,
    /// Origins (`scheme://host[:port]`) whose pages may call WHIP/WHEP and the APIs (CORS);
    /// empty: none.
    pub cors_origins: Vec<String>,
}

/// `[media]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaConfig {
    /// UDP bind address.
    pub bind: SocketAddr,
    /// Advertised candidate address ("" = bind address; a bare IP takes the bind port).
    pub advertise: String,
    /// Worker threads (0 = one per core).
    pub workers: usize,
    /// Kernel receive and send buffer asked for on the media socket, bytes (0: the kernel's
    /// default).
    pub socket_buffer: usize,
    /// Sessions per room.
    pub max_sessions_per_room: usize,
    /// ICE disconnect grace.
    #[serde(with = "humantime_serde")]
    pub disconnect_grace: Duration,
    /// How long a new session has to connect (ICE and DTLS) before it is removed.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Initial bandwidth estimate per subscriber, kbit/s.
    pub initial_bitrate_kbps: u64,
    /// The longest each subscriber's sent video is kept for retransmission (NACK → RTX); each
    /// stream keeps 300 ms plus four round trips of its subscriber's link, up to this bound.
    #[serde(with = "humantime_serde")]
    pub rtx_history: Duration,
    /// ICE-TCP: passive TCP candidates on the media address (RFC 6544), below UDP in priority.
    pub tcp: bool,
    /// Most open ICE-TCP connections; more are closed on accept
    /// (`cabine_tcp_closed_total{reason="refused"}`).
    pub tcp_max_connections: usize,
    /// Bytes queued per ICE-TCP connection that its peer has not read; past it the connection
    /// is closed (`cabine_tcp_closed_total{reason="stalled"}`).
    pub tcp_send_buffer: usize,
    /// An ICE-TCP connection whose session has not answered on it within this is closed.
    #[serde(with = "humantime_serde")]
    pub tcp_handshake_timeout: Duration,
    /// An ICE-TCP connection whose first frame (its STUN request) has not arrived within this
    /// is closed (`cabine_tcp_closed_total{reason="unproven"}`).
    #[serde(with = "humantime_serde")]
    pub tcp_first_frame_timeout: Duration,
    /// Most ICE-TCP connections not yet proven from one source IP; more are closed on accept
    /// (`cabine_tcp_closed_total{reason="refused_source"}`).
    pub tcp_max_unproven_per_ip: usize,
}

impl MediaConfig {
    /// The ICE-TCP settings, `None` when `media.tcp` is off.
    pub fn tcp_config(&self) -> Option<cabine_sfu::TcpConfig> {
        self.tcp.then(|| cabine_sfu::TcpConfig {
            max_connections: self.tcp_max_connections,
            send_buffer: self.tcp_send_buffer,
            handshake_timeout: self.tcp_handshake_timeout,
            first_frame_timeout: self.tcp_first_frame_timeout,
            max_unproven_per_ip: self.tcp_max_unproven_per_ip,
            ..cabine_sfu::TcpConfig::default()
        })
    }
}

/// `[auth]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 secret.
    pub secret: String,
    /// Longest token lifetime: minted, and accepted at verification.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// Required `iss` claim ("" = not checked).
    pub issuer: String,
    /// Required `aud` claim ("" = not checked).
    pub audience: String,
}

impl AuthConfig {
    /// What the server's verifier demands of a token.
    pub fn policy(&self) -> cabine_proto::jwt::Policy {
        let set = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        cabine_proto::jwt::Policy {
            max_ttl: Some(self.max_ttl),
            issuer: set(&self.issuer),
            audience: set(&self.audience),
        }
    }

    /// The server's token service.
    pub fn tokens(&self) -> cabine_proto::jwt::Tokens {
        cabine_proto::jwt::Tokens::with_policy(self.secret.as_bytes(), &self.policy())
    }
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// tracing filter.
    pub filter: String,
    /// "text" or "json".
    pub format: String,
}

/// A configuration error, naming the file or variable at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file does not exist.
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    /// A value is malformed or a key unknown.
    #[error("invalid configuration: {0}")]
    Invalid(Box<figment::Error>),
    /// A value is well-formed but unusable.
    #[error("invalid configuration: {0}")]
    Unusable(String),
}

impl Config {
    /// Loads the defaults, then `file` if given, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Missing(path.to_owned()));
            }
            fig = fig.merge(Toml::file(path));
        }
        fig = fig.merge(Env::prefixed("CABINE_").split("__"));
        let cfg: Config = fig
            .extract()
            .map_err(|e| ConfigError::Invalid(Box::new(e)))?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Loads the built-in defaults only (tests, tools).
    pub fn defaults() -> Config {
        // The embedded file is checked by a unit test, so this cannot fail at run time.
        Figment::from(Toml::string(DEFAULT_TOML))
            .extract()
            .expect("embedded default config is valid")
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.auth.secret.len() < 16 {
            return Err(ConfigError::Unusable(format!(
                "auth.secret is {} bytes long; use at least 16 (32 random bytes recommended)",
                self.auth.secret.len()
            )));
        }
        let cert = !self.http.tls_cert.as_os_str().is_empty();
        let key = !self.http.tls_key.as_os_str().is_empty();
        if cert != key {
            return Err(ConfigError::Unusable(
                "http.tls_cert and http.tls_key must be set together".into(),
            ));
        }
        self.check_exposure()?;
        for o in &self.http.cors_origins {
            if o == "*"
                || o.ends_with('/')
                || !(o.starts_with("http://") || o.starts_with("https://"))
            {
                return Err(ConfigError::Unusable(format!(
                    "http.cors_origins: {o:?} is not an origin (scheme://host[:port], no path, no \
                     wildcard)"
                )));
            }
        }
        for u in &self.ice.servers {
            if !(u.starts_with("stun:") || u.starts_with("turn:") || u.starts_with("turns:")) {
                return Err(ConfigError::Unusable(format!(
                    "ice.servers: {u:?} is not a stun:, turn: or turns: URL"
                )));
            }
        }
        self.turn
            .load()
            .map_err(|e| ConfigError::Unusable(e.to_string()))?;
        self.advertise()?;
        self.admin_listen()?;
        self.cluster
            .check(&self.http.public_url)
            .map_err(ConfigError::Unusable)?;
        self.check_limits()?;
        self.fhir
            .load(&self.audit.path)
            .map_err(|e| ConfigError::Unusable(e.to_string()))?;
        self.queue
            .check(self.auth.max_ttl)
            .map_err(ConfigError::Unusable)?;
        let inv = &self.invites;
        if inv.ttl.is_zero() || inv.token_ttl.is_zero() || inv.ttl > inv.max_ttl {
            return Err(ConfigError::Unusable(format!(
                "invites.ttl ({:?}) must be above 0 and at most invites.max_ttl ({:?}), and \
                 invites.token_ttl above 0",
                inv.ttl, inv.max_ttl
            )));
        }
        self.telemetry
            .listen_addr()
            .map_err(ConfigError::Unusable)?;
        let cert = !self.telemetry.tls_cert.as_os_str().is_empty();
        let key = !self.telemetry.tls_key.as_os_str().is_empty();
        if cert != key {
            return Err(ConfigError::Unusable(
                "telemetry.tls_cert and telemetry.tls_key must be set together".into(),
            ));
        }
        Ok(())
    }

    fn check_limits(&self) -> Result<(), ConfigError> {
        let m = &self.media;
        if m.tcp && (m.tcp_max_connections == 0 || m.tcp_send_buffer < 4096) {
            return Err(ConfigError::Unusable(format!(
                "media.tcp_max_connections = {} and media.tcp_send_buffer = {} must be at least                  1 and 4096 (or set media.tcp = false)",
                m.tcp_max_connections, m.tcp_send_buffer
            )));
        }
        if m.tcp && m.tcp_handshake_timeout.is_zero() {
            return Err(ConfigError::Unusable(
                "media.tcp_handshake_timeout is 0; give a duration such as \"10s\"".into(),
            ));
        }
        if m.tcp && (m.tcp_first_frame_timeout.is_zero() || m.tcp_max_unproven_per_ip == 0) {
            return Err(ConfigError::Unusable(format!(
                "media.tcp_first_frame_timeout = {:?} and media.tcp_max_unproven_per_ip = {} \
                 must be above 0 (or set media.tcp = false)",
                m.tcp_first_frame_timeout, m.tcp_max_unproven_per_ip
            )));
        }
        let l = &self.limits;
        for (key, d) in [
            ("header_timeout", l.header_timeout),
            ("idle_timeout", l.idle_timeout),
            ("anonymous_audit_interval", l.anonymous_audit_interval),
        ] {
            if d.is_zero() {
                return Err(ConfigError::Unusable(format!(
                    "limits.{key} is 0; give a duration such as \"10s\""
                )));
            }
        }
        Ok(())
    }

    /// Refuses the public development secret on a non-loopback HTTP, media or telemetry
    /// address (the QUIC sidecar verifies tokens with the same secret), or an admin address
    /// without `admin.token`: anyone could mint tokens for that server.
    pub fn check_exposure(&self) -> Result<(), ConfigError> {
        if !self.uses_dev_secret() {
            return Ok(());
        }
        let mut exposed = vec![
            ("http.listen", self.http.listen),
            ("media.bind", self.media.bind),
        ];
        if let Ok(Some(addr)) = self.telemetry.listen_addr() {
            exposed.push(("telemetry.listen", addr));
        }
        if self.admin.token.is_empty() {
            if let Ok(Some(addr)) = self.admin_listen() {
                exposed.push(("admin.listen", addr));
            }
        }
        for (key, addr) in exposed {
            if !addr.ip().is_loopback() {
                return Err(ConfigError::Unusable(format!(
                    "{key} = {addr} is not a loopback address, and auth.secret is the public \
                     development secret: anyone could mint tokens. Set auth.secret (or the \
                     CABINE_AUTH__SECRET environment variable) to 32 random bytes, or listen on \
                     127.0.0.1{}",
                    if key == "admin.listen" {
                        " (or set admin.token to require a bearer token there)"
                    } else {
                        ""
                    }
                )));
            }
        }
        Ok(())
    }

    /// The media address to advertise, if configured.
    pub fn advertise(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let a = self.media.advertise.trim();
        if a.is_empty() {
            return Ok(None);
        }
        if let Ok(addr) = a.parse::<SocketAddr>() {
            return Ok(Some(addr));
        }
        match a.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(Some(SocketAddr::new(ip, self.media.bind.port()))),
            Err(_) => Err(ConfigError::Unusable(format!(
                "media.advertise = {a:?} is neither an IP address nor IP:port"
            ))),
        }
    }

    /// The admin listen address, if enabled.
    pub fn admin_listen(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let a = self.admin.listen.trim();
        if a.is_empty() {
            return Ok(None);
        }
        a.parse().map(Some).map_err(|_| {
            ConfigError::Unusable(format!("admin.listen = {a:?} is not an IP:port address"))
        })
    }

    /// Whether TLS is configured.
    pub fn tls(&self) -> Option<(&Path, &Path)> {
        (!self.http.tls_cert.as_os_str().is_empty())
            .then_some((self.http.tls_cert.as_path(), self.http.tls_key.as_path()))
    }

    /// Whether the server runs with the public development secret.
    pub fn uses_dev_secret(&self) -> bool {
        self.auth.secret == DEV_SECRET
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_parse() {
        let c = Config::defaults();
        assert_eq!(c.http.listen.port(), 8080);
        assert_eq!(c.media.bind.port(), 7882);
        assert!(c.uses_dev_secret());
        assert_eq!(c.http.ws_resume_grace, Duration::from_secs(30));
        assert_eq!(c.limits.header_timeout, Duration::from_secs(10));
        assert_eq!(c.limits.sessions_per_identity.get(), 8);
        c.check().unwrap();
    }

    #[test]
    fn file_overrides_defaults_and_errors_name_the_key() {
        let dir = std::env::temp_dir().join(format!("cabine-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.toml");
        std::fs::write(
            &good,
            "[media]\nworkers = 3\n[http]\nws_resume_grace = \"2m\"\n",
        )
        .unwrap();
        let c = Config::load(Some(&good)).unwrap();
        assert_eq!(c.media.workers, 3);
        assert_eq!(c.http.ws_resume_grace, Duration::from_secs(120));
        assert_eq!(c.http.listen.port(), 8080);

        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "[media]\nworkerz = 3\n").unwrap();
        let e = Config::load(Some(&bad)).unwrap_err().to_string();
        assert!(e.contains("workerz"), "{e}");

        let zero = dir.join("zero.toml");
        std::fs::write(&zero, "[limits]\nsse_clients = 0\n").unwrap();
        let e = Config::load(Some(&zero)).unwrap_err().to_string();
        assert!(e.contains("sse_clients"), "{e}");
        std::fs::write(&zero, "[limits]\nheader_timeout = \"0s\"\n").unwrap();
        let e = Config::load(Some(&zero)).unwrap_err().to_string();
        assert!(e.contains("limits.header_timeout"), "{e}");

        let e = Config::load(Some(&dir.join("nope.toml")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
    }
}
