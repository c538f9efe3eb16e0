//! Token minting and verification (JWT, HS256): the one place Cabine signs and checks tokens
//! (the server, the `cabine token` command and the load generator use it), and the errors a bad
//! token earns, each with its HTTP status. Behind the `jwt` feature so that clients that only
//! read claims do not pull in the JWT library.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{Claims, Grant, Identity, Role, RoomId};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};

/// Why a request's token was refused. Each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No `Authorization: Bearer` header (or `?token=`).
    #[error("missing token: send `Authorization: Bearer <jwt>`")]
    Missing,
    /// The header is not a bearer token.
    #[error("malformed Authorization header: expected `Bearer <jwt>`")]
    NotBearer,
    /// The token is not a JWT, or its claims do not parse.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The signature does not verify with the server's key.
    #[error("token signature is invalid")]
    BadSignature,
    /// The token has expired.
    #[error("token expired")]
    Expired,
    /// The token is not valid yet.
    #[error("token not valid yet (nbf is in the future)")]
    NotYetValid,
    /// The token is for another room.
    #[error("token is for room {token_room:?}, not {room:?}")]
    WrongRoom {
        /// The token's room.
        token_room: String,
        /// The requested room.
        room: String,
    },
    /// The token lives longer than the server accepts (`exp` − `iat`, or − now without `iat`).
    #[error(
        "token lifetime {ttl_secs} s exceeds the {max_secs} s this server accepts (auth.max_ttl)"
    )]
    TooLong {
        /// The token's lifetime, seconds.
        ttl_secs: u64,
        /// The accepted maximum, seconds.
        max_secs: u64,
    },
    /// The token's `iss` or `aud` is not the configured one.
    #[error("token {claim} is not the one this server accepts")]
    WrongIssuer {
        /// `iss` or `aud`.
        claim: &'static str,
    },
    /// The token's role or grants do not allow this.
    #[error("role {role} may not {action}")]
    Forbidden {
        /// The token's role.
        role: Role,
        /// What was attempted.
        action: &'static str,
    },
}

impl AuthError {
    /// The HTTP status for this error: 401 when the token itself is bad, 403 when it is good but
    /// not for this.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::WrongRoom { .. } | AuthError::Forbidden { .. } => 403,
            _ => 401,
        }
    }

    /// A short reason for metrics and the audit log.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_token",
            AuthError::NotBearer => "not_bearer",
            AuthError::Malformed(_) => "malformed_token",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::TooLong { .. } => "ttl_too_long",
            AuthError::WrongIssuer { .. } => "wrong_issuer",
            AuthError::WrongRoom { .. } => "wrong_room",
            AuthError::Forbidden { .. } => "forbidden_role",
        }
    }
}

/// A token could not be signed.
#[derive(Debug, thiserror::Error)]
#[error("cannot sign the token: {0}")]
pub struct MintError(String);

/// What a verifier demands of a token beyond its signature and validity window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Longest accepted lifetime (`exp` − `iat`, or `exp` − now when there is no `iat`);
    /// `None` accepts any.
    pub max_ttl: Option<Duration>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud` (one of the token's audiences), when set.
    pub audience: Option<String>,
}

/// Signs and verifies tokens with one HS256 secret.
#[derive(Clone)]
pub struct Tokens {
    enc: EncodingKey,
    dec: DecodingKey,
    validation: Validation,
    max_ttl: Option<Duration>,
    /// `iss` and `aud` put in minted tokens (those the policy requires).
    issuer: Option<String>,
    audience: Option<String>,
}

impl Tokens {
    /// A token service for `secret` that accepts any lifetime, issuer and audience (clients
    /// and tools that mint; a server verifies with [`Tokens::with_policy`]).
    pub fn new(secret: &[u8]) -> Self {
        Self::with_policy(secret, &Policy::default())
    }

    /// A token service for `secret` whose verification also enforces `policy`.
    pub fn with_policy(secret: &[u8], policy: &Policy) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        required.extend(policy.issuer.as_ref().map(|_| "iss"));
        required.extend(policy.audience.as_ref().map(|_| "aud"));
        validation.set_required_spec_claims(&required);
        match &policy.issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &policy.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Tokens {
            enc: EncodingKey::from_secret(secret),
            dec: DecodingKey::from_secret(secret),
            validation,
            max_ttl: policy.max_ttl,
            issuer: policy.issuer.clone(),
            audience: policy.audience.clone(),
        }
    }

    /// Mints a token (with the `iss` and `aud` its policy requires, so that the server's own
    /// tokens, such as an invitee's, pass its verification).
    pub fn mint(
        &self,
        room: &str,
        role: Role,
        identity: Identity,
        ttl: Duration,
        grants: Option<Vec<Grant>>,
    ) -> Result<String, MintError> {
        let now = now_secs();
        let claims = Claims {
            sub: identity,
            name: None,
            room: room.to_owned(),
            role,
            exp: now + ttl.as_secs(),
            nbf: Some(now.saturating_sub(1)),
            grants,
        };
        #[derive(serde::Serialize)]
        struct Minted<'a> {
            #[serde(flatten)]
            claims: &'a Claims,
            #[serde(skip_serializing_if = "Option::is_none")]
            iss: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            aud: Option<&'a str>,
        }
        let minted = Minted {
            claims: &claims,
            iss: self.issuer.as_deref(),
            aud: self.audience.as_deref(),
        };
        encode(&Header::new(Algorithm::HS256), &minted, &self.enc)
            .map_err(|e| MintError(e.to_string()))
    }

    /// Verifies a token's signature, validity window and the policy (lifetime, issuer,
    /// audience) and parses its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let t = decode::<Timed>(token, &self.dec, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidIssuer => AuthError::WrongIssuer { claim: "iss" },
                ErrorKind::InvalidAudience => AuthError::WrongIssuer { claim: "aud" },
                ErrorKind::MissingRequiredClaim(c) if c == "iss" => {
                    AuthError::WrongIssuer { claim: "iss" }
                }
                ErrorKind::MissingRequiredClaim(c) if c == "aud" => {
                    AuthError::WrongIssuer { claim: "aud" }
                }
                ErrorKind::InvalidAlgorithm => {
                    AuthError::Malformed("algorithm is not HS256".into())
                }
                _ => AuthError::Malformed(e.to_string()),
            })?;
        if let Some(max) = self.max_ttl {
            // From the issue time when given (a token minted long-lived is refused at once), else
            // from now (the lifetime left); the verifier's leeway applies to both ends.
            let from = t.iat.unwrap_or_else(now_secs).min(now_secs());
            let ttl_secs = t.claims.exp.saturating_sub(from);
            if ttl_secs > max.as_secs() + self.validation.leeway {
                return Err(AuthError::TooLong {
                    ttl_secs,
                    max_secs: max.as_secs(),
                });
            }
        }
        Ok(t.claims)
    }

    /// Verifies `token` and checks it allows `grant` in `room`.
    pub fn authorize(
        &self,
        token: &str,
        room: &RoomId,
        grant: Grant,
        action: &'static str,
    ) -> Result<Claims, AuthError> {
        let claims = self.verify(token)?;
        if !claims.is_for_room(room) {
            return Err(AuthError::WrongRoom {
                token_room: claims.room,
                room: room.to_string(),
            });
        }
        if !claims.allows(grant) {
            return Err(AuthError::Forbidden {
                role: claims.role,
                action,
            });
        }
        Ok(claims)
    }
}

/// The claims plus the registered ones only the verifier reads.
#[derive(serde::Deserialize)]
struct Timed {
    #[serde(flatten)]
    claims: Claims,
    #[serde(default)]
    iat: Option<u64>,
}

/// Extracts the bearer token from an `Authorization` header value.
pub fn bearer(header: Option<&str>) -> Result<&str, AuthError> {
    let h = header.ok_or(AuthError::Missing)?;
    let (scheme, token) = h.split_once(' ').ok_or(AuthError::NotBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::NotBearer);
    }
    Ok(token.trim())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Identity {
        Identity::parse(s).unwrap()
    }

    #[test]
    fn mint_and_verify_round_trip() {
        let t = Tokens::new(b"0123456789abcdef0123456789abcdef");
        let jwt = t
            .mint(
                "r1",
                Role::Doctor,
                id("dr-1"),
                Duration::from_secs(60),
                None,
            )
            .unwrap();
        let c = t.verify(&jwt).unwrap();
        assert_eq!(c.sub, id("dr-1"));
        assert_eq!(c.role, Role::Doctor);
        let room = RoomId::parse("r1").unwrap();
        assert!(t.authorize(&jwt, &room, Grant::Publish, "publish").is_ok());
    }

    #[test]
    fn tokens_minted_under_a_policy_carry_its_issuer_and_audience() {
        let policy = Policy {
            max_ttl: Some(Duration::from_secs(600)),
            issuer: Some("cabine-idp".into()),
            audience: Some("cabine".into()),
        };
        let t = Tokens::with_policy(b"0123456789abcdef0123456789abcdef", &policy);
        let jwt = t
            .mint(
                "r1",
                Role::Assistant,
                id("a"),
                Duration::from_secs(60),
                None,
            )
            .unwrap();
        assert_eq!(t.verify(&jwt).unwrap().sub, id("a"));
        let bare = Tokens::new(b"0123456789abcdef0123456789abcdef")
            .mint(
                "r1",
                Role::Assistant,
                id("a"),
                Duration::from_secs(60),
                None,
            )
            .unwrap();
        // Both claims are missing; which one jsonwebtoken names first is not fixed (its
        // required claims are a set), so either is right.
        assert!(
            matches!(t.verify(&bare), Err(AuthError::WrongIssuer { .. })),
            "{:?}",
            t.verify(&bare)
        );
    }

    #[test]
    fn refusals_are_precise() {
        let t = Tokens::new(b"0123456789abcdef0123456789abcdef");
        let other = Tokens::new(b"fedcba9876543210fedcba9876543210");
        let room = RoomId::parse("r1").unwrap();
        let jwt = other
            .mint("r1", Role::Kiosk, id("k"), Duration::from_secs(60), None)
            .unwrap();
        assert_eq!(t.verify(&jwt), Err(AuthError::BadSignature));
        let obs = t
            .mint("r1", Role::Observer, id("o"), Duration::from_secs(60), None)
            .unwrap();
        let e = t
            .authorize(&obs, &room, Grant::Publish, "publish")
            .unwrap_err();
        assert_eq!(e.status(), 403);
        assert_eq!(e.to_string(), "role observer may not publish");
        let wrong = t
            .mint("r2", Role::Kiosk, id("k"), Duration::from_secs(60), None)
            .unwrap();
        assert!(matches!(
            t.authorize(&wrong, &room, Grant::Publish, "publish"),
            Err(AuthError::WrongRoom { .. })
        ));
        assert!(matches!(t.verify("abc"), Err(AuthError::Malformed(_))));
        assert_eq!(bearer(None), Err(AuthError::Missing));
        assert_eq!(bearer(Some("Basic abc")), Err(AuthError::NotBearer));
        assert_eq!(bearer(Some("Bearer abc")), Ok("abc"));
    }

    #[test]
    fn policy_limits_lifetime_issuer_and_audience() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let minter = Tokens::new(secret);
        let strict = Tokens::with_policy(
            secret,
            &Policy {
                max_ttl: Some(Duration::from_secs(3600)),
                ..Policy::default()
            },
        );
        let short = minter
            .mint("r1", Role::Kiosk, id("k"), Duration::from_secs(600), None)
            .unwrap();
        assert!(strict.verify(&short).is_ok());
        let long = minter
            .mint("r1", Role::Kiosk, id("k"), Duration::from_secs(7200), None)
            .unwrap();
        let e = strict.verify(&long).unwrap_err();
        assert!(
            matches!(e, AuthError::TooLong { max_secs: 3600, .. }),
            "{e}"
        );
        assert_eq!(e.status(), 401);
        assert!(e.to_string().contains("auth.max_ttl"), "{e}");
        // An old `iat` counts: the lifetime is exp − iat, not what is left.
        let now = now_secs();
        let key = EncodingKey::from_secret(secret);
        let old = encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "k", "room": "r1", "role": "kiosk",
                "iat": now - 7000, "exp": now + 600}),
            &key,
        )
        .unwrap();
        assert!(matches!(
            strict.verify(&old),
            Err(AuthError::TooLong { .. })
        ));

        let scoped = Tokens::with_policy(
            secret,
            &Policy {
                issuer: Some("cabine-idp".into()),
                audience: Some("cabine".into()),
                ..Policy::default()
            },
        );
        assert!(matches!(
            scoped.verify(&short),
            Err(AuthError::WrongIssuer { .. })
        ));
        let with = |iss: &str, aud: &str| {
            encode(
                &Header::new(Algorithm::HS256),
                &serde_json::json!({"sub": "k", "room": "r1", "role": "kiosk",
                    "iss": iss, "aud": aud, "exp": now + 600}),
                &key,
            )
            .unwrap()
        };
        assert!(scoped.verify(&with("cabine-idp", "cabine")).is_ok());
        assert_eq!(
            scoped.verify(&with("cabine-idp", "other")),
            Err(AuthError::WrongIssuer { claim: "aud" })
        );
        assert_eq!(
            scoped.verify(&with("someone", "cabine")),
            Err(AuthError::WrongIssuer { claim: "iss" })
        );
        // Without a configured audience, a token that names one is still accepted.
        assert!(minter.verify(&with("x", "y")).is_ok());
    }
}
