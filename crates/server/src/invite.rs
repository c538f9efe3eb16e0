//! Invite links (tele-expertise): a doctor in a room mints a one-time, short-lived link for a
//! specialist, an interpreter or an orthoptist, with grants chosen among its own; the invitee
//! exchanges the link's code, once and before it expires, for a token of the room with the
//! role `assistant`. Routes in [`crate::http::invites`]; records in an
//! [`InviteStore`](crate::cluster::invite_store::InviteStore) (Redis in a cluster, so a link is
//! redeemed once across nodes).
//!
//! ```text
//! doctor ── POST /api/rooms/{room}/invites {"kind","grants","ttl_s"} ─► {"id","url","expires_at"}
//!            url = {public_url}/invite/{room}#code=<id>.<secret>   (the secret never reaches
//!            a log: it is in the fragment, and the store keeps only its keyed hash)
//! invitee ── GET /invite/{room} (page) ── POST …/invites/redeem {"code"} ─► {"token",…} once
//!            (404 unknown, 409 used, 410 expired or revoked) ─► /consult/{room}#token=…
//! ```

use std::sync::Arc;
use std::time::Duration;

use cabine_proto::{Claims, Grant, Role};
use serde::{Deserialize, Serialize};
use siphasher::sip128::{Hasher128, SipHasher13};
use std::hash::Hasher;

use crate::cluster::invite_store::{InviteStore, MemoryInviteStore, RedisInviteStore};

/// `[invites]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvitesConfig {
    /// How long a link works when the doctor does not say.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// The longest a doctor may ask for.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// How long the invitee's token lives (at most `auth.max_ttl`).
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
}

/// Who is invited (the invitee's identity is `<kind>-<invite id>`, its role `assistant`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InviteeKind {
    /// A specialist giving an opinion (tele-expertise).
    Specialist,
    /// An interpreter.
    Interpreter,
    /// An orthoptist, who may drive the eye devices (with `commands`).
    Orthoptist,
}

impl InviteeKind {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            InviteeKind::Specialist => "specialist",
            InviteeKind::Interpreter => "interpreter",
            InviteeKind::Orthoptist => "orthoptist",
        }
    }
}

/// Why the grants asked for an invitee were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GrantError {
    /// Not a grant an invitee (an assistant) can hold.
    #[error("an invitee cannot be granted {0:?} (only publish, subscribe, commands)")]
    NotForInvitees(Grant),
    /// The doctor's own token does not allow it.
    #[error("your token does not allow {0:?}: you cannot grant it")]
    NotYours(Grant),
    /// Neither publish nor subscribe: the invitee could do nothing.
    #[error("grant at least publish or subscribe")]
    Empty,
}

/// The grants `asked` for an invitee of `doctor`, checked: only publish, subscribe and
/// commands, each only if the doctor's token allows it; deduplicated.
pub fn grantable(doctor: &Claims, asked: &[Grant]) -> Result<Vec<Grant>, GrantError> {
    let mut out = Vec::new();
    for &g in asked {
        if !matches!(g, Grant::Publish | Grant::Subscribe | Grant::Commands) {
            return Err(GrantError::NotForInvitees(g));
        }
        if !doctor.allows(g) {
            return Err(GrantError::NotYours(g));
        }
        if !out.contains(&g) {
            out.push(g);
        }
    }
    if !out.contains(&Grant::Publish) && !out.contains(&Grant::Subscribe) {
        return Err(GrantError::Empty);
    }
    Ok(out)
}

/// Whether `claims` may mint, list and revoke the invites of `room`: a doctor's token for that
/// very room (not a token for every room).
pub fn may_invite(claims: &Claims, room: &cabine_proto::RoomId) -> bool {
    claims.role == Role::Doctor && claims.room == room.as_str()
}

/// The invites of a node: their store, the key that hashes link secrets, the configuration.
pub struct Invites {
    pub(crate) store: Arc<dyn InviteStore>,
    k0: u64,
    k1: u64,
    pub(crate) cfg: InvitesConfig,
}

impl std::fmt::Debug for Invites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Invites(..)")
    }
}

impl Invites {
    /// On Redis when `redis_url` is set (the cluster's), else in memory; `secret` (the token
    /// secret) keys the hashes of link secrets. Must be called inside a tokio runtime.
    pub fn new(cfg: &InvitesConfig, redis_url: &str, secret: &[u8]) -> Result<Invites, String> {
        let store: Arc<dyn InviteStore> = if redis_url.trim().is_empty() {
            Arc::new(MemoryInviteStore::new())
        } else {
            Arc::new(
                RedisInviteStore::new(redis_url)
                    .map_err(|e| format!("cluster.redis_url is not a usable Redis URL: {e}"))?,
            )
        };
        Ok(Self::with_store(cfg, store, secret))
    }

    /// Same on a given store.
    pub fn with_store(cfg: &InvitesConfig, store: Arc<dyn InviteStore>, secret: &[u8]) -> Invites {
        // A domain of its own: these keys differ from the room keys and the log pseudonyms.
        let mut h = SipHasher13::new_with_keys(0x6361_6269_6e65_2d69, 0x6e76_6974_652d_6b65);
        h.write(secret);
        let k = h.finish128();
        Invites {
            store,
            k0: k.h1,
            k1: k.h2,
            cfg: cfg.clone(),
        }
    }

    /// The keyed hash of a link secret, as the store keeps it.
    pub fn hash(&self, secret: &str) -> String {
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        h.write(secret.as_bytes());
        let v = h.finish128();
        format!("{:016x}{:016x}", v.h1, v.h2)
    }

    /// The lifetime of a new link: `asked` seconds (the default when absent), refused beyond
    /// `invites.max_ttl` or at 0.
    pub fn link_ttl(&self, asked: Option<u64>) -> Result<Duration, String> {
        match asked {
            None => Ok(self.cfg.ttl),
            Some(0) => Err("ttl_s must be at least 1".into()),
            Some(s) if s > self.cfg.max_ttl.as_secs() => Err(format!(
                "ttl_s = {s} exceeds invites.max_ttl ({} s)",
                self.cfg.max_ttl.as_secs()
            )),
            Some(s) => Ok(Duration::from_secs(s)),
        }
    }
}

/// Splits a link code `<id>.<secret>`; `None` when malformed.
pub fn split_code(code: &str) -> Option<(&str, &str)> {
    let (id, secret) = code.split_once('.')?;
    let ok = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_alphanumeric());
    (ok(id, ID_LEN) && ok(secret, SECRET_LEN)).then_some((id, secret))
}

/// Length of an invite id.
pub const ID_LEN: usize = 12;
/// Length of a link secret (62^32: about 190 bits).
pub const SECRET_LEN: usize = 32;

#[cfg(test)]
mod tests {
    use super::*;
    use cabine_proto::{Identity, RoomId};

    fn doctor(grants: Option<Vec<Grant>>) -> Claims {
        Claims {
            sub: Identity::parse("dr-1").unwrap(),
            name: None,
            room: "r1".into(),
            role: Role::Doctor,
            exp: 0,
            nbf: None,
            grants,
        }
    }

    #[test]
    fn invitees_get_at_most_what_the_doctor_has() {
        let d = doctor(None);
        assert_eq!(
            grantable(&d, &[Grant::Subscribe, Grant::Commands, Grant::Subscribe]),
            Ok(vec![Grant::Subscribe, Grant::Commands])
        );
        assert_eq!(
            grantable(&d, &[Grant::Moderate]),
            Err(GrantError::NotForInvitees(Grant::Moderate))
        );
        assert_eq!(
            grantable(&d, &[Grant::PublishData]),
            Err(GrantError::NotForInvitees(Grant::PublishData))
        );
        assert_eq!(grantable(&d, &[Grant::Commands]), Err(GrantError::Empty));
        let narrowed = doctor(Some(vec![Grant::Subscribe]));
        assert_eq!(
            grantable(&narrowed, &[Grant::Subscribe, Grant::Commands]),
            Err(GrantError::NotYours(Grant::Commands))
        );
    }

    #[test]
    fn only_a_doctor_of_the_room_invites() {
        let room = RoomId::parse("r1").unwrap();
        assert!(may_invite(&doctor(None), &room));
        assert!(!may_invite(&doctor(None), &RoomId::parse("r2").unwrap()));
        let mut star = doctor(None);
        star.room = "*".into();
        assert!(!may_invite(&star, &room));
        let mut assistant = doctor(None);
        assistant.role = Role::Assistant;
        assert!(!may_invite(&assistant, &room));
    }

    #[test]
    fn codes_parse_strictly_and_secrets_hash_per_deployment() {
        let id = "a".repeat(ID_LEN);
        let secret = "B".repeat(SECRET_LEN);
        assert_eq!(
            split_code(&format!("{id}.{secret}")),
            Some((id.as_str(), secret.as_str()))
        );
        assert_eq!(split_code(&format!("{id}{secret}")), None);
        assert_eq!(split_code(&format!("{id}.{secret}x")), None);
        assert_eq!(split_code(&format!("{id}.{}", "é".repeat(16))), None);
        let cfg = InvitesConfig {
            ttl: Duration::from_secs(600),
            max_ttl: Duration::from_secs(3600),
            token_ttl: Duration::from_secs(3600),
        };
        let a = Invites::with_store(&cfg, Arc::new(MemoryInviteStore::new()), b"a");
        let b = Invites::with_store(&cfg, Arc::new(MemoryInviteStore::new()), b"b");
        assert_eq!(a.hash("s"), a.hash("s"));
        assert_ne!(a.hash("s"), b.hash("s"));
        assert_eq!(a.link_ttl(None), Ok(Duration::from_secs(600)));
        assert!(a.link_ttl(Some(0)).is_err());
        assert!(a.link_ttl(Some(3601)).is_err());
    }
}
