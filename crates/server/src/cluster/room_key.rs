//! [`RoomKey`]: how a room is named in the shared store, a keyed hash of its name.

use siphasher::sip128::{Hasher128, SipHasher13};
use std::hash::Hasher;

use cabine_proto::RoomId;

/// A room's key in the store: 128 bits of SipHash-1-3 of its name, keyed with a key derived
/// from the deployment's token secret (every node has it; the store does not), in hex. Room
/// names often carry a patient's name; the store and its backups never see them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomKey(String);

/// Derives the hashing key from the deployment's secret.
#[derive(Clone)]
pub struct RoomKeyer {
    k0: u64,
    k1: u64,
}

impl std::fmt::Debug for RoomKeyer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RoomKeyer(..)")
    }
}

impl RoomKeyer {
    /// A keyer for the deployment whose token secret is `secret`.
    pub fn new(secret: &[u8]) -> Self {
        // A domain of its own: these keys differ from the log pseudonyms' keys.
        let mut h = SipHasher13::new_with_keys(0x6361_6269_6e65_2d63, 0x6c75_7374_6572_2d6b);
        h.write(secret);
        let k = h.finish128();
        RoomKeyer { k0: k.h1, k1: k.h2 }
    }

    /// The key of `room`.
    pub fn key(&self, room: &RoomId) -> RoomKey {
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        h.write(room.as_str().as_bytes());
        let v = h.finish128();
        RoomKey(format!("{:016x}{:016x}", v.h1, v.h2))
    }
}

impl RoomKey {
    /// The hex form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_per_secret_and_hide_the_name() {
        let room = RoomId::parse("consult-dupont").unwrap();
        let a = RoomKeyer::new(b"secret-a").key(&room);
        assert_eq!(a, RoomKeyer::new(b"secret-a").key(&room));
        assert_ne!(a, RoomKeyer::new(b"secret-b").key(&room));
        assert_eq!(a.as_str().len(), 32);
        assert!(!a.as_str().contains("dupont"));
    }
}
