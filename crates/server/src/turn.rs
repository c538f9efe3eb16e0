//! TURN relays (`[turn]`): time-limited credentials for a coturn server, and the ICE servers
//! handed to clients.
//!
//! Cabine does not relay media itself: coturn does, configured with `use-auth-secret` and the
//! same `static-auth-secret` as `turn.secret`. For each session Cabine mints a credential with
//! coturn's REST scheme: the username is `<expiry>:<opaque id>` (expiry in Unix seconds, the id
//! random and never the identity or the room), the password the base64 HMAC-SHA1 of the
//! username keyed with the secret. coturn recomputes the password from the username and
//! refuses it after the expiry, so the two servers share nothing but the secret.
//!
//! The servers reach clients as `Link: <url>; rel="ice-server"` headers on WHIP/WHEP `POST` and
//! `OPTIONS` (RFC 9725 §4.6, [`link_headers`]), in the WebSocket `welcome`, and at
//! `GET /api/ice-servers` ([`ice_servers_route`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::Json;
use base64::Engine;
use cabine_proto::signal::IceServer;
use hmac::{Hmac, Mac};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::http::ApiError;
use crate::state::AppState;

/// Shortest accepted `turn.ttl`: a credential must outlive an ICE exchange.
pub const MIN_TTL: Duration = Duration::from_secs(60);
/// Longest accepted `turn.ttl`: a leaked credential stays usable this long at most.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Shortest accepted shared secret, bytes.
pub const MIN_SECRET_LEN: usize = 16;

/// `[turn]`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TurnConfig {
    /// TURN URLs offered to clients (`turn:host:3478?transport=udp`,
    /// `turns:host:443?transport=tcp`, …); empty: no TURN.
    pub urls: Vec<String>,
    /// coturn's `static-auth-secret` (prefer `secret_file`); never logged.
    pub secret: String,
    /// A file holding the secret (its first line), instead of `secret`.
    pub secret_file: PathBuf,
    /// Lifetime of a minted credential (1 min to 24 h).
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

/// Why `[turn]` is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TurnError {
    /// A URL is not a TURN URL or cannot be sent in a header.
    #[error("turn.urls: {0:?} is not a turn: or turns: URL (RFC 7065) without spaces or quotes")]
    BadUrl(String),
    /// URLs are set but no secret.
    #[error("turn.urls is set but neither turn.secret nor turn.secret_file is")]
    NoSecret,
    /// Both `secret` and `secret_file` are set.
    #[error("turn.secret and turn.secret_file are both set; keep one")]
    TwoSecrets,
    /// The secret is too short.
    #[error("the TURN secret is {0} bytes long; use at least {MIN_SECRET_LEN} (32 random bytes recommended)")]
    ShortSecret(usize),
    /// The secret file cannot be read.
    #[error("turn.secret_file {path}: {source}")]
    SecretFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The lifetime is out of bounds.
    #[error("turn.ttl is {0:?}; give a lifetime between 1m and 24h")]
    Ttl(Duration),
}

/// A credential minted for one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// `<expiry>:<opaque id>`.
    pub username: String,
    /// Base64 HMAC-SHA1 of the username, keyed with the shared secret.
    pub password: String,
    /// When coturn stops accepting it.
    pub expires: SystemTime,
}

/// The TURN side of a running server: URLs, secret and lifetime, checked.
pub struct Turn {
    urls: Vec<String>,
    secret: Vec<u8>,
    ttl: Duration,
}

/// The `GET /api/ice-servers` answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct IceServersReply {
    /// The servers, as `RTCIceServer` dictionaries.
    pub ice_servers: Vec<IceServer>,
    /// Seconds the TURN credentials in them stay valid (absent without TURN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<u64>,
}

impl std::fmt::Debug for TurnConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnConfig")
            .field("urls", &self.urls)
            .field(
                "secret",
                &if self.secret.is_empty() {
                    ""
                } else {
                    "<hidden>"
                },
            )
            .field("secret_file", &self.secret_file)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl TurnConfig {
    /// Checks the section and loads the secret; `None` when TURN is off (no URLs).
    pub fn load(&self) -> Result<Option<Turn>, TurnError> {
        if !(MIN_TTL..=MAX_TTL).contains(&self.ttl) {
            return Err(TurnError::Ttl(self.ttl));
        }
        if self.urls.is_empty() {
            return Ok(None);
        }
        for u in &self.urls {
            let scheme_ok = u.starts_with("turn:") || u.starts_with("turns:");
            let header_safe = u
                .bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'<' | b'>' | b','));
            if !scheme_ok || !header_safe || u.len() > 512 {
                return Err(TurnError::BadUrl(u.clone()));
            }
        }
        let from_file = !self.secret_file.as_os_str().is_empty();
        let secret = match (self.secret.is_empty(), from_file) {
            (false, true) => return Err(TurnError::TwoSecrets),
            (true, false) => return Err(TurnError::NoSecret),
            (false, false) => self.secret.clone(),
            (true, true) => std::fs::read_to_string(&self.secret_file)
                .map_err(|source| TurnError::SecretFile {
                    path: self.secret_file.clone(),
                    source,
                })?
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned(),
        };
        if secret.len() < MIN_SECRET_LEN {
            return Err(TurnError::ShortSecret(secret.len()));
        }
        Ok(Some(Turn {
            urls: self.urls.clone(),
            secret: secret.into_bytes(),
            ttl: self.ttl,
        }))
    }
}

impl Turn {
    /// Mints a credential valid until `now + ttl`, with a fresh random user part.
    pub fn mint(&self, now: SystemTime) -> Credential {
        self.mint_until(now, None)
    }

    /// Same, expiring at `not_after` when that comes first (the token it is minted for).
    pub fn mint_until(&self, now: SystemTime, not_after: Option<SystemTime>) -> Credential {
        let id: [u8; 12] = rand::rng().random();
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id);
        self.mint_for_until(now, &id, not_after)
    }

    /// Mints a credential for the opaque id `id` (the REST scheme itself, for tests).
    pub fn mint_for(&self, now: SystemTime, id: &str) -> Credential {
        self.mint_for_until(now, id, None)
    }

    fn mint_for_until(
        &self,
        now: SystemTime,
        id: &str,
        not_after: Option<SystemTime>,
    ) -> Credential {
        let expires = match not_after {
            Some(t) => (now + self.ttl).min(t),
            None => now + self.ttl,
        };
        // Clocks before 1970 do not happen on a server; 0 would only make the credential
        // already expired.
        let expiry = expires
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let username = format!("{expiry}:{id}");
        Credential {
            password: rest_password(&self.secret, &username),
            username,
            expires,
        }
    }

    /// The configured lifetime of a credential.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The TURN server entry for a new session: every URL with one fresh credential, which
    /// expires at `not_after` at the latest; and when it expires.
    pub fn ice_server(
        &self,
        now: SystemTime,
        not_after: Option<SystemTime>,
    ) -> (IceServer, SystemTime) {
        let c = self.mint_until(now, not_after);
        (
            IceServer {
                urls: self.urls.clone(),
                username: Some(c.username),
                credential: Some(c.password),
            },
            c.expires,
        )
    }
}

/// coturn's REST password: base64 of HMAC-SHA1(secret, username).
pub fn rest_password(secret: &[u8], username: &str) -> String {
    // HMAC takes a key of any length.
    let mut mac = <Hmac<sha1::Sha1>>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The `Link` header values for `servers`: one per URL (RFC 9725 §4.6), with `username`,
/// `credential` and `credential-type="password"` when the server has credentials.
pub fn link_headers(servers: &[IceServer]) -> Vec<HeaderValue> {
    let mut out = Vec::new();
    for s in servers {
        for url in &s.urls {
            let mut v = format!("<{url}>; rel=\"ice-server\"");
            if let (Some(user), Some(cred)) = (&s.username, &s.credential) {
                v.push_str(&format!(
                    "; username=\"{}\"; credential=\"{}\"; credential-type=\"password\"",
                    quote(user),
                    quote(cred)
                ));
            }
            // URLs are checked at load time and credentials are base64 and digits, so every
            // value is a valid header; one that is not is left out rather than sent broken.
            if let Ok(h) = HeaderValue::from_str(&v) {
                out.push(h);
            }
        }
    }
    out
}

/// Appends the ICE servers' `Link` headers to `h`.
pub(crate) fn add_links(h: &mut HeaderMap, servers: &[IceServer]) {
    for link in link_headers(servers) {
        h.append(header::LINK, link);
    }
}

/// `GET /api/ice-servers`: the ICE servers with fresh TURN credentials (expiring with the
/// token at the latest), for any valid token (`Authorization: Bearer`); 401 without one, 429
/// beyond `limits.turn_credentials_per_minute` for the token's identity.
pub(crate) async fn ice_servers_route(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let token = cabine_proto::jwt::bearer(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok()),
    );
    let claims = match token.and_then(|t| st.tokens.verify(t)) {
        Ok(c) => c,
        Err(e) => {
            st.count_refusal(e.reason());
            st.audit_refusal("-", "-", None, peer, &e);
            return Err(e.into());
        }
    };
    let now = SystemTime::now();
    let mut ice_servers = st.ice_servers(now, None);
    let mut ttl_s = None;
    match st.turn_server(now, &claims) {
        Ok(Some((server, expires))) => {
            ice_servers.push(server);
            ttl_s = Some(expires.duration_since(now).unwrap_or_default().as_secs());
        }
        Ok(None) => {}
        Err(refused) => return Ok(refused.into_response()),
    }
    Ok(Json(IceServersReply { ice_servers, ttl_s }).into_response())
}

fn quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(urls: &[&str], secret: &str) -> TurnConfig {
        TurnConfig {
            urls: urls.iter().map(|u| u.to_string()).collect(),
            secret: secret.into(),
            secret_file: PathBuf::new(),
            ttl: Duration::from_secs(3600),
        }
    }

    #[test]
    fn rest_password_matches_the_hmac_sha1_test_vector() {
        // RFC 2202 test case 2: HMAC-SHA1("Jefe", "what do ya want for nothing?").
        let expected = base64::engine::general_purpose::STANDARD.encode([
            0xef, 0xfc, 0xdf, 0x6a, 0xe5, 0xeb, 0x2f, 0xa2, 0xd2, 0x74, 0x16, 0xd5, 0xf1, 0x84,
            0xdf, 0x9c, 0x25, 0x9a, 0x7c, 0x79,
        ]);
        assert_eq!(
            rest_password(b"Jefe", "what do ya want for nothing?"),
            expected
        );
    }

    #[test]
    fn minted_username_is_expiry_and_an_opaque_random_id() {
        let turn = config(&["turn:t.example:3478"], "0123456789abcdef0123")
            .load()
            .unwrap()
            .unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let a = turn.mint(now);
        let b = turn.mint(now);
        let (expiry, id) = a.username.split_once(':').unwrap();
        assert_eq!(expiry, "1700003600");
        assert_eq!(id.len(), 16);
        assert_ne!(a.username, b.username, "each session gets its own id");
        assert_eq!(
            a.password,
            rest_password(b"0123456789abcdef0123", &a.username)
        );
        assert_eq!(a.expires, now + Duration::from_secs(3600));
        // A credential minted for a token expires with it when the token ends first.
        let token_exp = now + Duration::from_secs(90);
        let c = turn.mint_until(now, Some(token_exp));
        assert_eq!(c.expires, token_exp);
        assert!(c.username.starts_with("1700000090:"), "{}", c.username);
        let later = now + Duration::from_secs(7200);
        assert_eq!(
            turn.mint_until(now, Some(later)).expires,
            now + Duration::from_secs(3600)
        );
    }

    #[test]
    fn bad_sections_are_refused_with_the_key() {
        assert!(config(&[], "").load().unwrap().is_none());
        let e = config(&["stun:x:3478"], "0123456789abcdef")
            .load()
            .err()
            .unwrap();
        assert!(e.to_string().contains("turn.urls"), "{e}");
        let e = config(&["turn:x\"y"], "0123456789abcdef")
            .load()
            .err()
            .unwrap();
        assert!(matches!(e, TurnError::BadUrl(_)), "{e}");
        let e = config(&["turn:x"], "").load().err().unwrap();
        assert!(matches!(e, TurnError::NoSecret), "{e}");
        let e = config(&["turn:x"], "short").load().err().unwrap();
        assert!(matches!(e, TurnError::ShortSecret(5)), "{e}");
        let mut c = config(&["turn:x"], "0123456789abcdef");
        c.ttl = Duration::from_secs(2 * 86400);
        assert!(matches!(c.load(), Err(TurnError::Ttl(_))));
        c.ttl = Duration::from_secs(3600);
        c.secret_file = "/nonexistent/turn-secret".into();
        assert!(matches!(c.load(), Err(TurnError::TwoSecrets)));
        c.secret.clear();
        let e = c.load().err().unwrap();
        assert!(e.to_string().contains("/nonexistent/turn-secret"), "{e}");
    }

    #[test]
    fn secret_file_first_line_is_the_secret_and_debug_hides_the_secret() {
        let path = std::env::temp_dir().join(format!("cabine-turn-secret-{}", std::process::id()));
        std::fs::write(&path, "fedcba9876543210fedcba\nignored\n").unwrap();
        let mut c = config(&["turn:x:3478"], "");
        c.secret_file = path.clone();
        let turn = c.load().unwrap().unwrap();
        assert_eq!(turn.secret, b"fedcba9876543210fedcba");
        let shown = format!("{:?}", config(&["turn:x"], "visible-secret-value"));
        assert!(!shown.contains("visible-secret-value"), "{shown}");
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn link_headers_carry_the_credentials() {
        let links = link_headers(&[
            IceServer {
                urls: vec!["stun:s.example:3478".into()],
                username: None,
                credential: None,
            },
            IceServer {
                urls: vec![
                    "turn:t.example:3478?transport=udp".into(),
                    "turns:t.example:443?transport=tcp".into(),
                ],
                username: Some("1700003600:abc".into()),
                credential: Some("pw+/=".into()),
            },
        ]);
        let links: Vec<&str> = links.iter().map(|h| h.to_str().unwrap()).collect();
        assert_eq!(
            links,
            [
                "<stun:s.example:3478>; rel=\"ice-server\"",
                "<turn:t.example:3478?transport=udp>; rel=\"ice-server\"; \
                 username=\"1700003600:abc\"; credential=\"pw+/=\"; credential-type=\"password\"",
                "<turns:t.example:443?transport=tcp>; rel=\"ice-server\"; \
                 username=\"1700003600:abc\"; credential=\"pw+/=\"; credential-type=\"password\"",
            ]
        );
    }
}
