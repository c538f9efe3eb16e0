//! Token claims and the permissions they carry.
//!
//! A token is a JWT (HS256 by default) whose claims are [`Claims`]. The role decides the default
//! permissions; explicit `grants` narrow or extend them (for example `commands` for a doctor).
//! Signing and verification live in [`crate::jwt`] (feature `jwt`); this module says what the
//! claims mean, so every component applies the same rules, and lets a client read the claims
//! it was given ([`read_unverified`]) to choose defaults.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::{Identity, RoomId};

/// Who a participant is in a consultation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The cabin: publishes cameras, microphone, stethoscope and telemetry; subscribes to the doctor.
    Kiosk,
    /// The remote doctor: publishes and subscribes, may send device commands.
    Doctor,
    /// A nurse, specialist or interpreter joining the consultation: publishes and subscribes.
    Assistant,
    /// Receives media only (a trainee, a supervisor).
    Observer,
    /// Operations staff: reads room lists and statistics, never media.
    Operator,
}

/// Why a role name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: expected one of kiosk, doctor, assistant, observer, operator")]
pub struct RoleError(pub String);

impl FromStr for Role {
    type Err = RoleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kiosk" => Ok(Role::Kiosk),
            "doctor" => Ok(Role::Doctor),
            "assistant" => Ok(Role::Assistant),
            "observer" => Ok(Role::Observer),
            "operator" => Ok(Role::Operator),
            other => Err(RoleError(other.to_owned())),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Kiosk => "kiosk",
            Role::Doctor => "doctor",
            Role::Assistant => "assistant",
            Role::Observer => "observer",
            Role::Operator => "operator",
        })
    }
}

/// An explicit permission in a token's `grants` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grant {
    /// Publish media tracks.
    Publish,
    /// Receive media tracks.
    Subscribe,
    /// Publish telemetry data.
    PublishData,
    /// Send commands to devices (start a BP measurement, take a snapshot).
    Commands,
    /// Act on another participant's session (ICE restart, end it): never a role default, only
    /// granted explicitly (to an operator or a doctor who moderates the room).
    Moderate,
    /// Take a patient from the walk-in queue (`POST /api/queue/{ticket}/take`): never a role
    /// default, only granted explicitly, and only to a doctor. With `room: "*"` it makes the
    /// token valid for the queue endpoints only, never for the media or signalling of any
    /// room ([`Claims::may_take`]).
    Take,
}

/// The claims of a Cabine token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The participant identity.
    pub sub: Identity,
    /// A display name (optional; shown to the other participants, never logged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The room the token is for; `*` (operators only) means every room.
    pub room: String,
    /// The role in the room.
    pub role: Role,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Not valid before, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Explicit grants; when absent the role's defaults apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grants: Option<Vec<Grant>>,
}

impl Claims {
    /// Whether the token allows `grant`. Explicit `grants` replace the role's defaults, but can
    /// never lift a role's hard limits: an operator never receives or sends media (it may only
    /// be granted `moderate`), an observer never publishes nor moderates, an assistant
    /// (pharmacist, nurse, invited specialist) publishes, subscribes and at most operates
    /// devices — never moderates nor anything else a future grant allows (taking or ending a
    /// consultation is the doctor's). The server lets an assistant operate devices only while
    /// a doctor of the room allows it, whatever its token says.
    pub fn allows(&self, grant: Grant) -> bool {
        let hard_limit = match self.role {
            Role::Operator => grant != Grant::Moderate,
            Role::Observer => grant != Grant::Subscribe,
            Role::Assistant => {
                !matches!(grant, Grant::Publish | Grant::Subscribe | Grant::Commands)
            }
            Role::Doctor => false,
            _ => grant == Grant::Take,
        };
        if hard_limit {
            return false;
        }
        match &self.grants {
            Some(grants) => grants.contains(&grant),
            None => default_grants(self.role).contains(&grant),
        }
    }

    /// Whether the token is for `room` (a `*` token, operators only, is for every room).
    pub fn is_for_room(&self, room: &RoomId) -> bool {
        self.room == room.as_str() || (self.room == "*" && self.role == Role::Operator)
    }

    /// Whether the token may list and take tickets of the walk-in queue: a doctor's token for
    /// every room (`room: "*"`) granted [`Grant::Take`]. Such a token opens no room by itself
    /// ([`Self::is_for_room`] stays false): a take answers with a token for the new room.
    pub fn may_take(&self) -> bool {
        self.room == "*" && self.role == Role::Doctor && self.allows(Grant::Take)
    }
}

/// The grants a role has when the token lists none.
pub fn default_grants(role: Role) -> &'static [Grant] {
    match role {
        Role::Kiosk => &[Grant::Publish, Grant::Subscribe, Grant::PublishData],
        Role::Doctor => &[Grant::Publish, Grant::Subscribe, Grant::Commands],
        Role::Assistant => &[Grant::Publish, Grant::Subscribe],
        Role::Observer => &[Grant::Subscribe],
        Role::Operator => &[],
    }
}

/// The claims a client reads from its own token to choose defaults (room, stream id), without
/// checking the signature: only the server's verification ([`crate::jwt`]) decides anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnverifiedClaims {
    /// The `sub` claim (participant identity), if a string.
    pub sub: Option<String>,
    /// The `room` claim, if a string.
    pub room: Option<String>,
}

/// Reads the `sub` and `room` claims of a JWT without verifying it; `None` if it is not a
/// readable JWT.
pub fn read_unverified(token: &str) -> Option<UnverifiedClaims> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let text = |k: &str| claims.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    Some(UnverifiedClaims {
        sub: text("sub"),
        room: text("room"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(role: Role, grants: Option<Vec<Grant>>) -> Claims {
        Claims {
            sub: Identity::parse("p1").unwrap(),
            name: None,
            room: "r1".into(),
            role,
            exp: 0,
            nbf: None,
            grants,
        }
    }

    #[test]
    fn roles_have_sane_defaults() {
        assert!(claims(Role::Kiosk, None).allows(Grant::Publish));
        assert!(!claims(Role::Kiosk, None).allows(Grant::Commands));
        assert!(claims(Role::Doctor, None).allows(Grant::Commands));
        assert!(!claims(Role::Observer, None).allows(Grant::Publish));
        assert!(claims(Role::Observer, None).allows(Grant::Subscribe));
        assert!(!claims(Role::Operator, None).allows(Grant::Subscribe));
    }

    #[test]
    fn grants_cannot_lift_hard_limits() {
        let op = claims(Role::Operator, Some(vec![Grant::Subscribe]));
        assert!(!op.allows(Grant::Subscribe));
        let obs = claims(Role::Observer, Some(vec![Grant::Publish]));
        assert!(!obs.allows(Grant::Publish));
        let narrowed = claims(Role::Doctor, Some(vec![Grant::Subscribe]));
        assert!(!narrowed.allows(Grant::Publish));
    }

    #[test]
    fn moderation_is_granted_explicitly_only() {
        for role in [Role::Kiosk, Role::Doctor, Role::Assistant, Role::Operator] {
            assert!(!claims(role, None).allows(Grant::Moderate), "{role}");
        }
        assert!(claims(Role::Operator, Some(vec![Grant::Moderate])).allows(Grant::Moderate));
        assert!(claims(Role::Doctor, Some(vec![Grant::Moderate])).allows(Grant::Moderate));
        let obs = claims(Role::Observer, Some(vec![Grant::Moderate]));
        assert!(!obs.allows(Grant::Moderate));
        let assistant = claims(
            Role::Assistant,
            Some(vec![Grant::Moderate, Grant::PublishData]),
        );
        assert!(!assistant.allows(Grant::Moderate));
        assert!(!assistant.allows(Grant::PublishData));
    }

    #[test]
    fn star_room_is_for_operators_only() {
        let room = RoomId::parse("r9").unwrap();
        let mut c = claims(Role::Operator, None);
        c.room = "*".into();
        assert!(c.is_for_room(&room));
        let mut d = claims(Role::Doctor, None);
        d.room = "*".into();
        assert!(!d.is_for_room(&room));
    }

    #[test]
    fn take_is_explicit_doctor_only_and_opens_no_room() {
        let mut d = claims(Role::Doctor, Some(vec![Grant::Take]));
        assert!(
            !d.may_take(),
            "a take grant for one room is not a queue token"
        );
        d.room = "*".into();
        assert!(d.may_take());
        assert!(!d.is_for_room(&RoomId::parse("r1").unwrap()));
        let mut plain = claims(Role::Doctor, None);
        plain.room = "*".into();
        assert!(!plain.may_take(), "take is never a default");
        for role in [Role::Kiosk, Role::Assistant, Role::Observer, Role::Operator] {
            let mut c = claims(role, Some(vec![Grant::Take]));
            c.room = "*".into();
            assert!(!c.may_take(), "{role}");
        }
        let c: Claims = serde_json::from_str(
            r#"{"sub":"dr-1","room":"*","role":"doctor","exp":10,"grants":["take"]}"#,
        )
        .unwrap();
        assert!(c.may_take());
    }

    #[test]
    fn claims_parse_from_json() {
        let c: Claims = serde_json::from_str(
            r#"{"sub":"dr-1","room":"r1","role":"doctor","exp":10,"grants":["commands","publish_data"]}"#,
        )
        .unwrap();
        assert_eq!(c.role, Role::Doctor);
        assert_eq!(c.grants, Some(vec![Grant::Commands, Grant::PublishData]));
        assert!(serde_json::from_str::<Claims>(
            r#"{"sub":"a b","room":"r","role":"doctor","exp":1}"#
        )
        .is_err());
    }
}
