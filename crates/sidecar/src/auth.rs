//! Token verification: the seam to the server's JWT verifier.

use std::collections::HashMap;

use cabine_proto::telemetry::ErrorCode;
use cabine_proto::{Claims, Grant, Role, RoomId};

use crate::error::Refusal;

/// Verifies a kiosk's token (the same JWT as the media side) and returns its claims. The server
/// implements it with its JWT verifier (signature, `exp`, `nbf`); tests use [`StaticTokens`] or
/// a closure.
pub trait TokenVerifier: Send + Sync + 'static {
    /// The token's claims, or why it is refused.
    fn verify(&self, token: &str) -> Result<Claims, TokenError>;
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Malformed, badly signed or with unusable claims.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// Expired or not yet valid.
    #[error("token expired or not yet valid")]
    Expired,
}

impl<F> TokenVerifier for F
where
    F: Fn(&str) -> Result<Claims, TokenError> + Send + Sync + 'static,
{
    fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self(token)
    }
}

/// An in-memory verifier: a fixed map from token strings to claims (tests, development).
#[derive(Debug, Default, Clone)]
pub struct StaticTokens(HashMap<String, Claims>);

impl StaticTokens {
    /// An empty map: every token is refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accepts `token` with `claims`.
    pub fn with(mut self, token: impl Into<String>, claims: Claims) -> Self {
        self.0.insert(token.into(), claims);
        self
    }
}

impl TokenVerifier for StaticTokens {
    fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.0
            .get(token)
            .cloned()
            .ok_or_else(|| TokenError::Invalid("unknown token".into()))
    }
}

/// Checks that verified claims let a kiosk publish telemetry into `room`: role `kiosk`, grant
/// `publish_data`, and the token's room.
pub fn authorize_kiosk(claims: &Claims, room: &RoomId) -> Result<(), Refusal> {
    if claims.role != Role::Kiosk {
        return Err(Refusal::new(
            ErrorCode::WrongRole,
            format!("role {} may not publish telemetry, only kiosk", claims.role),
        ));
    }
    if !claims.allows(Grant::PublishData) {
        return Err(Refusal::new(
            ErrorCode::WrongRole,
            "the token lacks the publish_data grant",
        ));
    }
    if !claims.is_for_room(room) {
        return Err(Refusal::new(
            ErrorCode::WrongRoom,
            "the token is for another room",
        ));
    }
    Ok(())
}
