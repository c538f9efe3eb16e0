//! Validated identifiers: room names and participant identities.
//!
//! Both appear in URLs, tokens and the audit log, never in metric labels. They are parsed once at
//! the edge ([`RoomId::parse`], [`Identity::parse`]) so the rest of the code can trust them.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use siphasher::sip128::{Hasher128, SipHasher13};

/// Longest room name or identity accepted, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The identifier was empty.
    #[error("{what} is empty")]
    Empty {
        /// Which identifier ("room", "identity").
        what: &'static str,
    },
    /// The identifier was longer than [`MAX_ID_LEN`].
    #[error("{what} is {len} bytes long, the limit is {MAX_ID_LEN}")]
    TooLong {
        /// Which identifier.
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// The identifier held a character outside `[A-Za-z0-9._-]` (rooms) or a control character.
    #[error("{what} contains the character {ch:?}, allowed are letters, digits, '.', '_' and '-'")]
    BadChar {
        /// Which identifier.
        what: &'static str,
        /// The first refused character.
        ch: char,
    },
}

fn check(what: &'static str, s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { what });
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong { what, len: s.len() });
    }
    if let Some(ch) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | ':')))
    {
        return Err(IdError::BadChar { what, ch });
    }
    Ok(())
}

/// A room name, as it appears in `/whip/{room}`; `*` (all rooms) is only valid in operator tokens
/// and is never a `RoomId`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RoomId(String);

impl RoomId {
    /// Parses a room name: 1–128 bytes of `[A-Za-z0-9._-@:]`.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        check("room", s)?;
        Ok(RoomId(s.to_owned()))
    }

    /// The room name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A participant identity (the token's `sub`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Identity(String);

impl Identity {
    /// Parses an identity: 1–128 bytes of `[A-Za-z0-9._-@:]`.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        check("identity", s)?;
        Ok(Identity(s.to_owned()))
    }

    /// The identity.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RoomId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RoomId::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for Identity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Identity::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Wraps an identifier for logs: prints a short stable hash instead of the value, so a log line can
/// be correlated with the audit log (which holds the clear value) without leaking it.
///
/// The hash is keyed (SipHash-1-3) with a key derived from the deployment's secret
/// ([`set_redaction_secret`]): room names often carry a patient's name, and an unkeyed hash of
/// a guessable name can be found by trying names. Without a secret set, the key is random per
/// process (stable within it).
pub struct Redacted<'a, T: ?Sized>(pub &'a T);

static REDACTION_KEY: OnceLock<(u64, u64)> = OnceLock::new();

/// Keys every [`Redacted`] pseudonym of this process with `secret` (the deployment's token
/// secret): the same name gets the same pseudonym on every node and across restarts of one
/// deployment, and nobody without the secret can tell which name it stands for. Call it once,
/// at startup, before anything is logged; later calls are ignored (returns false).
pub fn set_redaction_secret(secret: &[u8]) -> bool {
    let mut h = SipHasher13::new_with_keys(0x6361_6269_6e65_2d72, 0x6564_6163_7469_6f6e);
    h.write(secret);
    let k = h.finish128();
    REDACTION_KEY.set((k.h1, k.h2)).is_ok()
}

fn redaction_key() -> (u64, u64) {
    *REDACTION_KEY.get_or_init(|| {
        // No deployment secret: random keys for this process (std's RandomState is seeded from
        // the OS's randomness).
        let s = RandomState::new();
        (s.hash_one(1u8), s.hash_one(2u8))
    })
}

impl<T: AsRef<str> + ?Sized> fmt::Display for Redacted<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (k0, k1) = redaction_key();
        let mut h = siphasher::sip::SipHasher13::new_with_keys(k0, k1);
        h.write(self.0.as_ref().as_bytes());
        write!(f, "#{:08x}", (h.finish() >> 32) as u32)
    }
}

impl<T: AsRef<str> + ?Sized> fmt::Debug for Redacted<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl AsRef<str> for RoomId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Identity {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_are_checked() {
        assert!(RoomId::parse("consult-42").is_ok());
        assert_eq!(RoomId::parse(""), Err(IdError::Empty { what: "room" }));
        assert_eq!(
            RoomId::parse("a/b"),
            Err(IdError::BadChar {
                what: "room",
                ch: '/'
            })
        );
        let long = "x".repeat(129);
        assert!(matches!(
            RoomId::parse(&long),
            Err(IdError::TooLong { len: 129, .. })
        ));
    }

    #[test]
    fn redaction_is_keyed() {
        // The pseudonym is not the old unkeyed FNV-1a hash anyone could compute from a name.
        let fnv = |v: &str| {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for b in v.bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
            format!("#{:08x}", (h >> 32) as u32)
        };
        assert_ne!(
            format!("{}", Redacted("consult-dupont-7")),
            fnv("consult-dupont-7")
        );
        // Different secrets give different pseudonyms for the same name.
        let with = |secret: &[u8], v: &str| {
            let mut h = SipHasher13::new_with_keys(0x6361_6269_6e65_2d72, 0x6564_6163_7469_6f6e);
            h.write(secret);
            let k = h.finish128();
            let mut p = siphasher::sip::SipHasher13::new_with_keys(k.h1, k.h2);
            p.write(v.as_bytes());
            p.finish()
        };
        assert_ne!(with(b"secret-a", "room"), with(b"secret-b", "room"));
        assert_eq!(with(b"secret-a", "room"), with(b"secret-a", "room"));
    }

    #[test]
    fn redaction_hides_the_value_but_is_stable() {
        let a = format!("{}", Redacted("dr-martin"));
        assert!(!a.contains("martin"));
        assert_eq!(a, format!("{}", Redacted("dr-martin")));
        assert_ne!(a, format!("{}", Redacted("dr-durand")));
    }
}
