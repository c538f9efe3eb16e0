//! [`QueueStore`]: where the walk-in queue ([`crate::queue`]) and the fleet's presence live —
//! in memory for one node ([`MemoryQueueStore`]), in Redis for a cluster
//! ([`super::queue_redis::RedisQueueStore`]), so that a ticket survives the node that created
//! or took it.
//!
//! A ticket is a flat record ([`TicketRecord`]); every change of its state is one atomic
//! check-and-set ([`QueueStore::transition`]): of two doctors taking the same ticket, on one
//! node or two, exactly one sees [`Transition::Done`]. A kiosk holds at most one waiting
//! ticket ([`QueueStore::create`] answers [`Created::Exists`] with it).
//!
//! Keys never hold an identity: a kiosk is named by a keyed hash ([`KioskKeyer`]); records
//! hold the identities the audit log and the tokens minted on a take need.

use std::collections::{HashMap, VecDeque};
use std::hash::Hasher;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use siphasher::sip128::{Hasher128, SipHasher13};
use tokio::time::Instant;

use super::store::StoreError;

/// Where a ticket stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TicketState {
    /// In the queue.
    Waiting,
    /// A doctor took it: its room is set.
    Taken,
    /// The kiosk cancelled it.
    Cancelled,
    /// Nobody took it within `queue.ticket_ttl`.
    Expired,
}

impl TicketState {
    /// Its name in the store and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            TicketState::Waiting => "waiting",
            TicketState::Taken => "taken",
            TicketState::Cancelled => "cancelled",
            TicketState::Expired => "expired",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<TicketState> {
        Some(match s {
            "waiting" => TicketState::Waiting,
            "taken" => TicketState::Taken,
            "cancelled" => TicketState::Cancelled,
            "expired" => TicketState::Expired,
            _ => return None,
        })
    }
}

/// A ticket as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketRecord {
    /// Its id (random, URL-safe).
    pub id: String,
    /// The kiosk's identity (token `sub`).
    pub kiosk: String,
    /// The kiosk's [`KioskKeyer`] key.
    pub kiosk_key: String,
    /// The kiosk's site label.
    pub site: String,
    /// Why the patient came (free text, bounded).
    pub reason: String,
    /// The specialty asked for ("" = general practice).
    pub specialty: String,
    /// Served before the others of its specialty.
    pub priority: bool,
    /// The FHIR reference of the patient the platform supplied (`Patient/123`), or "".
    pub subject: String,
    /// Created, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Its position when it was created (for the wait estimate).
    pub arrival_position: u32,
    /// Where it stands.
    pub state: TicketState,
    /// When it left the queue (taken, cancelled, expired), ms since the epoch; 0 while waiting.
    pub ended_ms: u64,
    /// The room created for it, once taken.
    pub room: String,
    /// The doctor who took it.
    pub doctor: String,
    /// Flagged to operators as unanswered (`queue.unanswered_after`).
    pub flagged: bool,
}

impl TicketRecord {
    /// The record as field/value pairs (a Redis hash).
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("id", self.id.clone()),
            ("kiosk", self.kiosk.clone()),
            ("kiosk_key", self.kiosk_key.clone()),
            ("site", self.site.clone()),
            ("reason", self.reason.clone()),
            ("specialty", self.specialty.clone()),
            ("priority", u8::from(self.priority).to_string()),
            ("subject", self.subject.clone()),
            ("created_ms", self.created_ms.to_string()),
            ("arrival_position", self.arrival_position.to_string()),
            ("state", self.state.as_str().to_owned()),
            ("ended_ms", self.ended_ms.to_string()),
            ("room", self.room.clone()),
            ("doctor", self.doctor.clone()),
            ("flagged", u8::from(self.flagged).to_string()),
        ]
    }

    /// Parses field/value pairs; `None` when a field is missing or malformed.
    pub fn from_fields(f: &HashMap<String, String>) -> Option<TicketRecord> {
        let text = |k: &str| f.get(k).cloned();
        let num = |k: &str| f.get(k).and_then(|v| v.parse::<u64>().ok());
        Some(TicketRecord {
            id: text("id")?,
            kiosk: text("kiosk")?,
            kiosk_key: text("kiosk_key")?,
            site: text("site")?,
            reason: text("reason")?,
            specialty: text("specialty")?,
            priority: num("priority")? != 0,
            subject: text("subject")?,
            created_ms: num("created_ms")?,
            arrival_position: u32::try_from(num("arrival_position")?).ok()?,
            state: TicketState::parse(f.get("state")?)?,
            ended_ms: num("ended_ms")?,
            room: text("room")?,
            doctor: text("doctor")?,
            flagged: num("flagged")? != 0,
        })
    }
}

/// The outcome of [`QueueStore::create`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// Queued.
    New,
    /// The kiosk already waits with this ticket (nothing created).
    Exists(Box<TicketRecord>),
    /// `queue.max_waiting` tickets already wait.
    Full,
    /// `queue.max_records` ticket records are kept.
    TooManyRecords,
}

/// The outcome of [`QueueStore::transition`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Done: the ticket as it is now.
    Done(Box<TicketRecord>),
    /// The ticket was no longer waiting (taken, cancelled or expired before): as it is.
    NotWaiting(Box<TicketRecord>),
    /// No such ticket (never was, or forgotten since).
    Unknown,
}

/// What a transition out of the queue sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leave {
    /// The new state (not [`TicketState::Waiting`]).
    pub state: TicketState,
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// The room (a take), else "".
    pub room: String,
    /// The doctor (a take), else "".
    pub doctor: String,
}

/// The store of the queue and of the fleet's presence.
pub trait QueueStore: Send + Sync + 'static {
    /// Queues `ticket` (state waiting) unless its kiosk already has a waiting ticket or
    /// `max_waiting` tickets wait, atomically. The record is kept for `life` at most.
    fn create(
        &self,
        ticket: &TicketRecord,
        max_waiting: usize,
        max_records: usize,
        life: Duration,
    ) -> BoxFuture<'_, Result<Created, StoreError>>;

    /// A ticket by id.
    fn get(&self, id: &str) -> BoxFuture<'_, Result<Option<TicketRecord>, StoreError>>;

    /// Every waiting ticket, in no particular order.
    fn waiting(&self) -> BoxFuture<'_, Result<Vec<TicketRecord>, StoreError>>;

    /// Moves a waiting ticket out of the queue, atomically (exactly one of concurrent
    /// transitions of a ticket is [`Transition::Done`]); the record is then kept for `keep`.
    fn transition(
        &self,
        id: &str,
        leave: &Leave,
        keep: Duration,
    ) -> BoxFuture<'_, Result<Transition, StoreError>>;

    /// Flags a waiting ticket as unanswered; true for the one call that set the flag.
    fn flag(&self, id: &str) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Records a handling time (ms per queue position) among the last `window`.
    fn push_handling(&self, ms: u64, window: usize) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The recent handling times, newest first.
    fn handling(&self) -> BoxFuture<'_, Result<Vec<u64>, StoreError>>;

    /// Sets fields of the presence record of the kiosk keyed `key` (others are kept), which
    /// is forgotten `ttl` after its last update.
    fn touch_kiosk(
        &self,
        key: &str,
        fields: &[(&'static str, String)],
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Every kiosk's presence record.
    fn kiosks(&self) -> BoxFuture<'_, Result<Vec<HashMap<String, String>>, StoreError>>;

    /// Remembers for `ttl` the patient reference a take handed to `room`, so that the node
    /// holding the room finds it for the FHIR export whichever node took the ticket.
    fn set_room_subject(
        &self,
        room: &str,
        subject: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The patient reference handed to `room`, if any (and not forgotten yet).
    fn room_subject(&self, room: &str) -> BoxFuture<'_, Result<Option<String>, StoreError>>;
}

/// Names kiosks in the store by a keyed hash of their identity (keyed from the deployment's
/// secret, in a domain of its own).
#[derive(Clone)]
pub struct KioskKeyer {
    k0: u64,
    k1: u64,
}

impl std::fmt::Debug for KioskKeyer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KioskKeyer(..)")
    }
}

impl KioskKeyer {
    /// A keyer for the deployment whose token secret is `secret`.
    pub fn new(secret: &[u8]) -> Self {
        let mut h = SipHasher13::new_with_keys(0x6361_6269_6e65_2d6b, 0x696f_736b_2d6b_6579);
        h.write(secret);
        let k = h.finish128();
        KioskKeyer { k0: k.h1, k1: k.h2 }
    }

    /// The key of the kiosk `identity` (32 hex digits).
    pub fn key(&self, identity: &str) -> String {
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        h.write(identity.as_bytes());
        let v = h.finish128();
        format!("{:016x}{:016x}", v.h1, v.h2)
    }
}

/// How often the in-memory store drops expired entries (each read checks its own entry).
const PRUNE_EVERY: Duration = Duration::from_secs(1);

/// An in-memory [`QueueStore`] (one node; the tests of the semantics). Expiry follows tokio's
/// clock.
#[derive(Debug, Default)]
pub struct MemoryQueueStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    tickets: HashMap<String, (TicketRecord, Instant)>,
    /// Kiosk key → its waiting ticket.
    by_kiosk: HashMap<String, String>,
    /// Kiosk key → its latest ticket, whatever its state (replaced by the next one).
    latest: HashMap<String, String>,
    /// When expired entries were last dropped.
    pruned: Option<Instant>,
    handling: VecDeque<u64>,
    kiosks: HashMap<String, (HashMap<String, String>, Instant)>,
    /// Room → (subject, forgotten at).
    room_subjects: HashMap<String, (String, Instant)>,
}

impl MemoryQueueStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every operation leaves the maps consistent before it can panic: a poisoned lock is
        // still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    /// Drops what expired, at most every [`PRUNE_EVERY`]: reads check their entry's expiry.
    fn prune(&mut self) {
        let now = Instant::now();
        if self
            .pruned
            .is_some_and(|t| now.duration_since(t) < PRUNE_EVERY)
        {
            return;
        }
        self.pruned = Some(now);
        self.tickets.retain(|_, (_, exp)| *exp > now);
        let tickets = &self.tickets;
        self.by_kiosk.retain(|_, id| {
            tickets
                .get(id)
                .is_some_and(|(t, _)| t.state == TicketState::Waiting)
        });
        self.latest.retain(|_, id| tickets.contains_key(id));
        self.kiosks.retain(|_, (_, exp)| *exp > now);
        self.room_subjects.retain(|_, (_, exp)| *exp > now);
    }
}

impl QueueStore for MemoryQueueStore {
    fn create(
        &self,
        ticket: &TicketRecord,
        max_waiting: usize,
        max_records: usize,
        life: Duration,
    ) -> BoxFuture<'_, Result<Created, StoreError>> {
        let mut inner = self.lock();
        inner.prune();
        let now = Instant::now();
        let r = if let Some(existing) = inner
            .by_kiosk
            .get(&ticket.kiosk_key)
            .and_then(|id| inner.tickets.get(id))
            .filter(|(t, exp)| *exp > now && t.state == TicketState::Waiting)
        {
            Created::Exists(Box::new(existing.0.clone()))
        } else {
            // The kiosk's previous ticket (taken, cancelled or expired) is replaced.
            if let Some(old) = inner.latest.remove(&ticket.kiosk_key) {
                inner.tickets.remove(&old);
            }
            let waiting = inner
                .by_kiosk
                .values()
                .filter(|id| {
                    inner
                        .tickets
                        .get(*id)
                        .is_some_and(|(t, exp)| *exp > now && t.state == TicketState::Waiting)
                })
                .count();
            if inner.tickets.len() >= max_records {
                // At the bound: what expired does not count.
                inner.pruned = None;
                inner.prune();
            }
            if waiting >= max_waiting {
                Created::Full
            } else if inner.tickets.len() >= max_records {
                Created::TooManyRecords
            } else {
                inner
                    .by_kiosk
                    .insert(ticket.kiosk_key.clone(), ticket.id.clone());
                inner
                    .latest
                    .insert(ticket.kiosk_key.clone(), ticket.id.clone());
                inner
                    .tickets
                    .insert(ticket.id.clone(), (ticket.clone(), now + life));
                Created::New
            }
        };
        async { Ok(r) }.boxed()
    }

    fn get(&self, id: &str) -> BoxFuture<'_, Result<Option<TicketRecord>, StoreError>> {
        let mut inner = self.lock();
        inner.prune();
        let now = Instant::now();
        let t = inner
            .tickets
            .get(id)
            .filter(|(_, exp)| *exp > now)
            .map(|(t, _)| t.clone());
        async { Ok(t) }.boxed()
    }

    fn waiting(&self) -> BoxFuture<'_, Result<Vec<TicketRecord>, StoreError>> {
        let mut inner = self.lock();
        inner.prune();
        let now = Instant::now();
        let w = inner
            .by_kiosk
            .values()
            .filter_map(|id| inner.tickets.get(id))
            .filter(|(t, exp)| *exp > now && t.state == TicketState::Waiting)
            .map(|(t, _)| t.clone())
            .collect();
        async { Ok(w) }.boxed()
    }

    fn transition(
        &self,
        id: &str,
        leave: &Leave,
        keep: Duration,
    ) -> BoxFuture<'_, Result<Transition, StoreError>> {
        let mut inner = self.lock();
        inner.prune();
        let now = Instant::now();
        let r = match inner.tickets.get_mut(id).filter(|(_, exp)| *exp > now) {
            None => Transition::Unknown,
            Some((t, _)) if t.state != TicketState::Waiting => {
                Transition::NotWaiting(Box::new(t.clone()))
            }
            Some((t, exp)) => {
                t.state = leave.state;
                t.ended_ms = leave.at_ms;
                t.room = leave.room.clone();
                t.doctor = leave.doctor.clone();
                *exp = now + keep;
                let t = t.clone();
                inner.by_kiosk.remove(&t.kiosk_key);
                Transition::Done(Box::new(t))
            }
        };
        async { Ok(r) }.boxed()
    }

    fn flag(&self, id: &str) -> BoxFuture<'_, Result<bool, StoreError>> {
        let mut inner = self.lock();
        let set = match inner.tickets.get_mut(id) {
            Some((t, _)) if t.state == TicketState::Waiting && !t.flagged => {
                t.flagged = true;
                true
            }
            _ => false,
        };
        async move { Ok(set) }.boxed()
    }

    fn push_handling(&self, ms: u64, window: usize) -> BoxFuture<'_, Result<(), StoreError>> {
        let mut inner = self.lock();
        inner.handling.push_front(ms);
        inner.handling.truncate(window.max(1));
        async { Ok(()) }.boxed()
    }

    fn handling(&self) -> BoxFuture<'_, Result<Vec<u64>, StoreError>> {
        let h = self.lock().handling.iter().copied().collect();
        async { Ok(h) }.boxed()
    }

    fn touch_kiosk(
        &self,
        key: &str,
        fields: &[(&'static str, String)],
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let mut inner = self.lock();
        let e = inner
            .kiosks
            .entry(key.to_owned())
            .or_insert_with(|| (HashMap::new(), Instant::now()));
        for (k, v) in fields {
            e.0.insert((*k).to_owned(), v.clone());
        }
        e.1 = Instant::now() + ttl;
        async { Ok(()) }.boxed()
    }

    fn kiosks(&self) -> BoxFuture<'_, Result<Vec<HashMap<String, String>>, StoreError>> {
        let mut inner = self.lock();
        inner.prune();
        let now = Instant::now();
        let k = inner
            .kiosks
            .values()
            .filter(|(_, exp)| *exp > now)
            .map(|(f, _)| f.clone())
            .collect();
        async { Ok(k) }.boxed()
    }

    fn set_room_subject(
        &self,
        room: &str,
        subject: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let mut inner = self.lock();
        inner.prune();
        inner
            .room_subjects
            .insert(room.to_owned(), (subject.to_owned(), Instant::now() + ttl));
        async { Ok(()) }.boxed()
    }

    fn room_subject(&self, room: &str) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        let mut inner = self.lock();
        inner.prune();
        let now = Instant::now();
        let s = inner
            .room_subjects
            .get(room)
            .filter(|(_, exp)| *exp > now)
            .map(|(s, _)| s.clone());
        async { Ok(s) }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kiosk_keys_hide_the_identity_and_depend_on_the_secret() {
        let a = KioskKeyer::new(b"s1").key("kiosk-pharmacie-12");
        assert_eq!(a, KioskKeyer::new(b"s1").key("kiosk-pharmacie-12"));
        assert_ne!(a, KioskKeyer::new(b"s2").key("kiosk-pharmacie-12"));
        assert!(!a.contains("pharmacie"));
        assert_eq!(a.len(), 32);
    }

    #[test]
    fn records_round_trip_and_garbage_is_refused() {
        let t = super::super::queue_conformance::ticket("t1", "kiosk-1", 5);
        let fields: HashMap<String, String> = t
            .to_fields()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(TicketRecord::from_fields(&fields), Some(t));
        let mut bad = fields.clone();
        bad.insert("state".into(), "limbo".into());
        assert_eq!(TicketRecord::from_fields(&bad), None);
        bad = fields;
        bad.remove("kiosk");
        assert_eq!(TicketRecord::from_fields(&bad), None);
    }
}
