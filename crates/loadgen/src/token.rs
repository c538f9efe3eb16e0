//! Tokens for the simulated participants, minted with the server's secret (HS256), exactly as
//! `cabine token` would (both use [`cabine_proto::jwt`]).

use std::time::Duration;

use cabine_proto::jwt::Tokens;
use cabine_proto::{Identity, Role};

/// Mints a token for `identity` with `role` in `room`, valid for `ttl`.
pub fn mint(
    secret: &str,
    room: &str,
    role: Role,
    identity: &str,
    ttl: Duration,
) -> anyhow::Result<String> {
    Ok(Tokens::new(secret.as_bytes()).mint(room, role, Identity::parse(identity)?, ttl, None)?)
}
