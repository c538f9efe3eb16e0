//! What a consultation holds beyond media, on the node that serves its room, for as long as
//! the room lives: which assistants a doctor allowed to operate the devices, and the stills a
//! doctor shared with the room (an invited specialist looks at the eardrum the doctor saw).
//! Nothing here is written anywhere; a room that has no session nor signalling member left is
//! forgotten at the next sweep ([`spawn_sweeper`]).
//!
//! ```text
//! doctor WS {"type":"allow_commands","identity":A,"allow":true} ─► allowed[room] += A
//! A's data channel {"type":"command",…} ─► effective_claims: an assistant holds `commands`
//!                                          only while allowed[room] has it
//! doctor POST /api/rooms/{room}/stills (image) ─► stills[room] ─► WS still_shared to the room
//! participant GET /api/rooms/{room}/stills/{id} ─► the image (no-store)
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cabine_proto::token::default_grants;
use cabine_proto::{Claims, Grant, Identity, Role, RoomId};

use crate::state::AppState;

/// How often rooms that ended are forgotten.
pub const SWEEP: Duration = Duration::from_secs(2);

/// A still shared with a room.
#[derive(Debug, Clone)]
pub struct Still {
    /// Its id in the room.
    pub id: String,
    /// Who shared it.
    pub from: Identity,
    /// `image/jpeg` or `image/png`.
    pub mime: &'static str,
    /// The image.
    pub bytes: Bytes,
}

/// Why a still was not kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShareError {
    /// The room holds this many stills already (`limits.shared_stills_per_room`).
    Full(usize),
}

/// The consultations of this node.
#[derive(Debug, Default)]
pub struct Consultations {
    rooms: Mutex<HashMap<RoomId, Consultation>>,
    /// Invitees whose redeemed invite a doctor revoked, until their token would expire: kept
    /// apart from the rooms so that a room that empties does not let them back in.
    denied: Mutex<HashMap<(RoomId, Identity), std::time::Instant>>,
}

#[derive(Debug, Default)]
struct Consultation {
    /// Assistants allowed to operate the devices.
    allowed: HashSet<Identity>,
    stills: Vec<Still>,
}

impl Consultations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RoomId, Consultation>> {
        // Single inserts and removes: a poisoned lock is still consistent.
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Allows (or stops allowing) `identity` to operate the devices of `room`; whether that
    /// changed anything.
    pub fn allow_commands(&self, room: &RoomId, identity: &Identity, allow: bool) -> bool {
        let mut rooms = self.lock();
        if allow {
            rooms
                .entry(room.clone())
                .or_default()
                .allowed
                .insert(identity.clone())
        } else {
            rooms
                .get_mut(room)
                .is_some_and(|c| c.allowed.remove(identity))
        }
    }

    /// Denies `identity` (an invitee whose redeemed invite was revoked) access to `room`
    /// until `until` (when its token expires anyway); its device commands stop too.
    pub fn deny(&self, room: &RoomId, identity: &Identity, until: std::time::Instant) {
        self.allow_commands(room, identity, false);
        self.denied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((room.clone(), identity.clone()), until);
    }

    /// Whether `identity` was denied access to `room` (and still is at `now`).
    pub fn is_denied(&self, room: &RoomId, identity: &Identity, now: std::time::Instant) -> bool {
        let denied = self.denied.lock().unwrap_or_else(|p| p.into_inner());
        if denied.is_empty() {
            return false;
        }
        denied
            .get(&(room.clone(), identity.clone()))
            .is_some_and(|until| *until > now)
    }

    /// Whether `identity` may operate the devices of `room` now.
    pub fn commands_allowed(&self, room: &RoomId, identity: &Identity) -> bool {
        self.lock()
            .get(room)
            .is_some_and(|c| c.allowed.contains(identity))
    }

    /// The claims a session's requests are judged with: its token's, except that an
    /// assistant holds `commands` only while a doctor of the room allows it (whatever its
    /// token says).
    pub fn effective_claims(&self, room: &RoomId, claims: &Claims) -> Claims {
        if claims.role != Role::Assistant {
            return claims.clone();
        }
        let mut grants: Vec<Grant> = claims
            .grants
            .clone()
            .unwrap_or_else(|| default_grants(claims.role).to_vec());
        grants.retain(|g| *g != Grant::Commands);
        if self.commands_allowed(room, &claims.sub) {
            grants.push(Grant::Commands);
        }
        Claims {
            grants: Some(grants),
            ..claims.clone()
        }
    }

    /// Keeps a still shared with `room` (at most `cap` per room); returns its id.
    pub fn share_still(
        &self,
        room: &RoomId,
        from: &Identity,
        mime: &'static str,
        bytes: Bytes,
        cap: usize,
    ) -> Result<Still, ShareError> {
        let mut rooms = self.lock();
        let c = rooms.entry(room.clone()).or_default();
        if c.stills.len() >= cap {
            return Err(ShareError::Full(c.stills.len()));
        }
        let still = Still {
            id: crate::http::random_token(16),
            from: from.clone(),
            mime,
            bytes,
        };
        c.stills.push(still.clone());
        Ok(still)
    }

    /// A still shared with `room`.
    pub fn still(&self, room: &RoomId, id: &str) -> Option<Still> {
        self.lock()
            .get(room)
            .and_then(|c| c.stills.iter().find(|s| s.id == id).cloned())
    }

    /// The stills shared with `room`, oldest first.
    pub fn stills(&self, room: &RoomId) -> Vec<Still> {
        self.lock()
            .get(room)
            .map(|c| c.stills.clone())
            .unwrap_or_default()
    }

    /// Forgets the rooms not in `live`; returns how many.
    pub fn forget_ended(&self, live: &HashMap<RoomId, u32>) -> usize {
        let now = std::time::Instant::now();
        self.denied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, until| *until > now);
        let mut rooms = self.lock();
        let before = rooms.len();
        rooms.retain(|room, _| live.contains_key(room));
        before - rooms.len()
    }
}

/// Forgets the consultations of rooms that ended, every [`SWEEP`]; stops with the state.
pub fn spawn_sweeper(state: &Arc<AppState>) {
    let weak = Arc::downgrade(state);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(st) = weak.upgrade() else { return };
            let live = st.live_rooms();
            st.consultations.forget_ended(&live);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(role: Role, grants: Option<Vec<Grant>>) -> Claims {
        Claims {
            sub: Identity::parse("a-1").unwrap(),
            name: None,
            room: "r1".into(),
            role,
            exp: 0,
            nbf: None,
            grants,
        }
    }

    #[test]
    fn an_assistant_operates_devices_only_while_allowed() {
        let c = Consultations::default();
        let room = RoomId::parse("r1").unwrap();
        let other = RoomId::parse("r2").unwrap();
        let a = claims(
            Role::Assistant,
            Some(vec![Grant::Subscribe, Grant::Commands]),
        );
        // Its token's `commands` does not count.
        assert!(!c.effective_claims(&room, &a).allows(Grant::Commands));
        assert!(c.allow_commands(&room, &a.sub, true));
        assert!(!c.allow_commands(&room, &a.sub, true), "already allowed");
        assert!(c.effective_claims(&room, &a).allows(Grant::Commands));
        assert!(c.effective_claims(&room, &a).allows(Grant::Subscribe));
        // In its room only, and until revoked.
        assert!(!c.effective_claims(&other, &a).allows(Grant::Commands));
        let defaults = claims(Role::Assistant, None);
        assert!(c.effective_claims(&room, &defaults).allows(Grant::Publish));
        assert!(c.allow_commands(&room, &a.sub, false));
        assert!(!c.effective_claims(&room, &a).allows(Grant::Commands));
        // Other roles keep their token's grants.
        let d = claims(Role::Doctor, None);
        assert_eq!(c.effective_claims(&room, &d), d);
    }

    #[test]
    fn stills_are_capped_per_room_and_forgotten_with_it() {
        let c = Consultations::default();
        let room = RoomId::parse("r1").unwrap();
        let dr = Identity::parse("dr-1").unwrap();
        let s = c
            .share_still(&room, &dr, "image/png", Bytes::from_static(b"png"), 2)
            .unwrap();
        assert_eq!(c.still(&room, &s.id).unwrap().bytes, &b"png"[..]);
        assert!(c.still(&RoomId::parse("r2").unwrap(), &s.id).is_none());
        c.share_still(&room, &dr, "image/png", Bytes::new(), 2)
            .unwrap();
        assert_eq!(
            c.share_still(&room, &dr, "image/png", Bytes::new(), 2)
                .unwrap_err(),
            ShareError::Full(2)
        );
        c.allow_commands(&room, &dr, true);
        let mut live = HashMap::new();
        live.insert(room.clone(), 1);
        assert_eq!(c.forget_ended(&live), 0);
        assert_eq!(c.forget_ended(&HashMap::new()), 1);
        assert!(c.still(&room, &s.id).is_none());
        assert!(!c.commands_allowed(&room, &dr));
    }
}
