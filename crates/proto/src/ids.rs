//! Validated identifiers: room names and participant identities.
//!
//! Both appear in URLs, tokens and the audit log, never in metric labels. They are parsed once at
//! the edge ([`RoomId::parse`], [`Identity::parse`]) so the rest of the code can trust them.

use std::fmt;

use serde::{Deserialize, Serialize};

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
pub struct Redacted<'a, T: ?Sized>(pub &'a T);

impl<T: AsRef<str> + ?Sized> fmt::Display for Redacted<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // FNV-1a: stable across runs and processes, which is what correlation needs.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.0.as_ref().bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        write!(f, "#{:08x}", (h >> 32) as u32)
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
    fn redaction_hides_the_value_but_is_stable() {
        let a = format!("{}", Redacted("dr-martin"));
        assert!(!a.contains("martin"));
        assert_eq!(a, format!("{}", Redacted("dr-martin")));
        assert_ne!(a, format!("{}", Redacted("dr-durand")));
    }
}
