//! Tokens for the simulated participants, minted with the server's secret (HS256), exactly as
//! `cabine token` would.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cabine_proto::{Claims, Identity, Role};
use jsonwebtoken::{encode, EncodingKey, Header};

/// Mints a token for `identity` with `role` in `room`, valid for `ttl`.
pub fn mint(
    secret: &str,
    room: &str,
    role: Role,
    identity: &str,
    ttl: Duration,
) -> anyhow::Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = Claims {
        sub: Identity::parse(identity)?,
        name: None,
        room: room.to_owned(),
        role,
        exp: now + ttl.as_secs(),
        nbf: Some(now.saturating_sub(1)),
        grants: None,
    };
    Ok(encode(
        &Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?)
}
