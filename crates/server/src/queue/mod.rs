//! The walk-in queue and the fleet (issue 15): a kiosk asks for the next available doctor
//! (`POST /api/queue`) and gets a ticket, its position and an estimated wait; a doctor with a
//! queue token lists the waiting tickets and takes one; the server creates the room and hands
//! both sides a token for it. The HTTP side is [`http`]; the API is in `docs/queue.md`.
//!
//! ```text
//! kiosk ── POST /api/queue ──► enqueue ─► store.create (one waiting ticket per kiosk, max_waiting)
//!   ▲  ◄── GET /api/queue/{t}[/events]: position + estimate … then {room, token, url}
//!   │
//! doctor ── GET /api/queue ─► waiting tickets (pseudonymous kiosk, reason, waited)
//!        ── POST /api/queue/{t}/take ─► store.transition (atomic: one take wins)
//!                                     ─► new room, room tokens for the doctor and the kiosk
//! every SWEEP on every node: expire tickets older than queue.ticket_ttl, flag those older
//!   than queue.unanswered_after (audit, metric, /api/ops), write the fleet's presence
//! ```
//!
//! The queue lives in a [`QueueStore`]: in memory alone, in Redis in a cluster, so a ticket
//! survives the death of the node that created or took it.
//! Concepts: [`config`] (`[queue]`), [`ticket`] (requests, order), [`estimate`] (wait),
//! [`fleet`] (presence), [`stats`] (metrics), [`http`] (routes), [`stream`] (the kiosk's
//! event stream).

pub mod config;
pub mod estimate;
pub mod fleet;
pub mod http;
pub mod stats;
pub mod stream;
pub mod ticket;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cabine_proto::{Identity, RoomId};

pub use config::QueueConfig;
pub use stats::QueueStats;

use crate::cluster::queue_store::{
    Created, KioskKeyer, Leave, QueueStore, TicketRecord, TicketState, Transition,
};
use crate::cluster::StoreError;
use ticket::NewTicket;

/// How often each node sweeps the queue (expiry, unanswered flags, presence).
pub const SWEEP: Duration = Duration::from_secs(1);

/// How long a node reuses its read of the waiting tickets and handling times for positions,
/// estimates and lists (each kiosk polls its ticket every second: without it, every poll would
/// read the whole queue from the store). A local change drops it at once.
pub const VIEW_CACHE: Duration = Duration::from_millis(500);

/// Why a queue operation did not happen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The store did not answer (503).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `queue.max_waiting` tickets already wait, or `queue.max_records` records are kept
    /// (503).
    #[error("the queue is full ({limit} = {max}); try again later")]
    Full {
        /// The key of the limit.
        limit: &'static str,
        /// Its value.
        max: usize,
    },
    /// The kiosk already waits with this ticket (409).
    #[error("this kiosk already waits with a ticket")]
    Exists(Box<Waiting>),
    /// No such ticket (404).
    #[error("no such ticket")]
    Unknown,
    /// The ticket was cancelled or expired (410).
    #[error("this ticket was {}", .0.as_str())]
    Gone(TicketState),
    /// The ticket was already taken (409).
    #[error("this ticket was already taken by a doctor")]
    AlreadyTaken,
    /// Not the kiosk that holds the ticket (403).
    #[error("this ticket belongs to another kiosk")]
    NotYours,
    /// The room could not be named or its tokens minted (500).
    #[error("cannot open the consultation: {0}")]
    Internal(String),
}

/// A waiting ticket as its kiosk sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// The ticket.
    pub ticket: TicketRecord,
    /// Its position in its specialty (1: next).
    pub position: u32,
    /// The estimated wait.
    pub estimated_wait: Duration,
}

/// Where a ticket stands, for its kiosk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Still waiting.
    Waiting(Waiting),
    /// Taken: the room.
    Taken(TicketRecord),
}

/// The outcome of a take (the subject reference travels with it for the FHIR export).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    /// The ticket, taken (its `subject` is the platform's FHIR reference, if any).
    pub ticket: TicketRecord,
    /// The new room.
    pub room: RoomId,
    /// How long it waited.
    pub waited: Duration,
}

/// What a sweep found.
#[derive(Debug, Default)]
pub struct Swept {
    /// Tickets this sweep expired.
    pub expired: Vec<TicketRecord>,
    /// Tickets this sweep flagged as unanswered.
    pub flagged: Vec<TicketRecord>,
    /// Tickets waiting after the sweep.
    pub waiting: Vec<TicketRecord>,
}

/// The queue service of a node.
pub struct Queue {
    store: Arc<dyn QueueStore>,
    cfg: QueueConfig,
    keyer: KioskKeyer,
    stats: Arc<QueueStats>,
    /// Bumped at each local change, so event streams answer at once.
    changed: tokio::sync::watch::Sender<u64>,
    /// The last read of the waiting tickets and handling times ([`VIEW_CACHE`]).
    cache: std::sync::Mutex<Option<Cached>>,
    /// Taken tickets whose kiosk this node already admitted (audited once), at most
    /// `queue.max_records`.
    admitted: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// A read of the queue reused for [`VIEW_CACHE`].
struct Cached {
    at: std::time::Instant,
    waiting: Arc<Vec<TicketRecord>>,
    handling: Arc<Vec<u64>>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").finish_non_exhaustive()
    }
}

impl Queue {
    /// The queue on `store`; `secret` keys the kiosks' names in the store.
    pub fn new(cfg: &QueueConfig, store: Arc<dyn QueueStore>, secret: &[u8]) -> Queue {
        Queue {
            store,
            cfg: cfg.clone(),
            keyer: KioskKeyer::new(secret),
            stats: Arc::default(),
            changed: tokio::sync::watch::channel(0).0,
            cache: std::sync::Mutex::new(None),
            admitted: std::sync::Mutex::default(),
        }
    }

    /// Whether this is this node's first admission of the kiosk of taken ticket `id` (each
    /// status read hands the kiosk its room token; only the first is audited).
    pub fn first_admission(&self, id: &str) -> bool {
        let mut seen = self.admitted.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(id) {
            return false;
        }
        if seen.len() >= self.cfg.max_records.get() {
            seen.clear();
        }
        seen.insert(id.to_owned())
    }

    /// The waiting tickets and the recent handling times, read at most [`VIEW_CACHE`] ago.
    async fn view(&self) -> Result<(Arc<Vec<TicketRecord>>, Arc<Vec<u64>>), QueueError> {
        let now = std::time::Instant::now();
        if let Some(c) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|c| now.duration_since(c.at) < VIEW_CACHE)
        {
            return Ok((Arc::clone(&c.waiting), Arc::clone(&c.handling)));
        }
        let waiting = Arc::new(self.store.waiting().await?);
        let handling = Arc::new(self.store.handling().await?);
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = Some(Cached {
            at: now,
            waiting: Arc::clone(&waiting),
            handling: Arc::clone(&handling),
        });
        Ok((waiting, handling))
    }

    /// `[queue]`.
    pub fn config(&self) -> &QueueConfig {
        &self.cfg
    }

    /// The counters behind the `cabine_queue_*` metrics.
    pub fn stats(&self) -> &Arc<QueueStats> {
        &self.stats
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn QueueStore> {
        &self.store
    }

    /// The store key of a kiosk.
    pub fn kiosk_key(&self, identity: &str) -> String {
        self.keyer.key(identity)
    }

    /// A receiver woken at each local change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self) {
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Queues a ticket for `kiosk` (`site`: its label when the request gave none).
    pub async fn enqueue(
        &self,
        kiosk: &Identity,
        site: Option<&str>,
        req: NewTicket,
    ) -> Result<Waiting, QueueError> {
        let now = now_ms();
        let (waiting, _) = self.view().await?;
        let arrival_position = 1 + waiting
            .iter()
            .filter(|t| t.specialty == req.specialty && (t.priority || !req.priority))
            .count();
        let site = if req.site.is_empty() {
            site.unwrap_or("").to_owned()
        } else {
            req.site
        };
        let record = TicketRecord {
            id: crate::http::random_token(ticket::TICKET_ID_LEN),
            kiosk: kiosk.as_str().to_owned(),
            kiosk_key: self.keyer.key(kiosk.as_str()),
            site: site.clone(),
            reason: req.reason,
            specialty: req.specialty,
            priority: req.priority,
            subject: req.subject,
            created_ms: now,
            arrival_position: u32::try_from(arrival_position).unwrap_or(u32::MAX),
            state: TicketState::Waiting,
            ended_ms: 0,
            room: String::new(),
            doctor: String::new(),
            flagged: false,
        };
        let mut presence = fleet::presence_fields(kiosk.as_str(), now, None, false);
        if !site.is_empty() {
            presence.push(("site", site));
        }
        // Presence is best effort: the ticket does not depend on it.
        let _ = self
            .store
            .touch_kiosk(&record.kiosk_key, &presence, self.cfg.kiosk_forget_after)
            .await;
        let life = self.cfg.ticket_ttl + self.cfg.keep;
        match self
            .store
            .create(
                &record,
                self.cfg.max_waiting.get(),
                self.cfg.max_records.get(),
                life,
            )
            .await?
        {
            Created::New => {
                self.stats.count_created();
                self.bump();
                self.waiting_view(record).await
            }
            Created::Exists(existing) => {
                let w = self.waiting_view(*existing).await?;
                Err(QueueError::Exists(Box::new(w)))
            }
            Created::Full => {
                self.stats.count_refused();
                Err(QueueError::Full {
                    limit: "queue.max_waiting",
                    max: self.cfg.max_waiting.get(),
                })
            }
            Created::TooManyRecords => {
                self.stats.count_refused_records();
                Err(QueueError::Full {
                    limit: "queue.max_records",
                    max: self.cfg.max_records.get(),
                })
            }
        }
    }

    /// A waiting ticket with its position and estimate now.
    async fn waiting_view(&self, t: TicketRecord) -> Result<Waiting, QueueError> {
        let (mut waiting, mut recent) = self.view().await?;
        if !waiting.iter().any(|w| w.id == t.id) {
            // Queued after that read (on another node): read again.
            *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = None;
            (waiting, recent) = self.view().await?;
        }
        let position = ticket::position(&waiting, &t.id).unwrap_or(1);
        Ok(Waiting {
            estimated_wait: estimate::estimated_wait(position, &recent, self.cfg.default_handling),
            position,
            ticket: t,
        })
    }

    /// Where ticket `id` stands, for `kiosk` (its holder).
    pub async fn status(&self, id: &str, kiosk: &Identity) -> Result<Status, QueueError> {
        let t = self.owned(id, kiosk).await?;
        match t.state {
            TicketState::Waiting => Ok(Status::Waiting(self.waiting_view(t).await?)),
            TicketState::Taken => Ok(Status::Taken(t)),
            s => Err(QueueError::Gone(s)),
        }
    }

    /// The ticket `id` if `kiosk` holds it.
    async fn owned(&self, id: &str, kiosk: &Identity) -> Result<TicketRecord, QueueError> {
        if !ticket::is_ticket_id(id) {
            return Err(QueueError::Unknown);
        }
        let t = self.store.get(id).await?.ok_or(QueueError::Unknown)?;
        if t.kiosk != kiosk.as_str() {
            return Err(QueueError::NotYours);
        }
        Ok(t)
    }

    /// Cancels `kiosk`'s ticket `id`.
    pub async fn cancel(&self, id: &str, kiosk: &Identity) -> Result<TicketRecord, QueueError> {
        self.owned(id, kiosk).await?;
        let leave = Leave {
            state: TicketState::Cancelled,
            at_ms: now_ms(),
            room: String::new(),
            doctor: String::new(),
        };
        match self.store.transition(id, &leave, self.cfg.keep).await? {
            Transition::Done(t) => {
                self.stats.count_cancelled();
                self.bump();
                Ok(*t)
            }
            Transition::NotWaiting(t) => Err(not_waiting(&t)),
            Transition::Unknown => Err(QueueError::Unknown),
        }
    }

    /// The waiting tickets with their positions, in queue order per specialty.
    pub async fn list(&self) -> Result<Vec<(TicketRecord, u32)>, QueueError> {
        let mut waiting = self.view().await?.0.to_vec();
        waiting.sort_by(|a, b| a.specialty.cmp(&b.specialty).then(ticket::order(a, b)));
        let mut out = Vec::with_capacity(waiting.len());
        let mut position = 0;
        let mut specialty: Option<&str> = None;
        for t in &waiting {
            if specialty != Some(t.specialty.as_str()) {
                specialty = Some(t.specialty.as_str());
                position = 0;
            }
            position += 1;
            out.push((t.clone(), position));
        }
        Ok(out)
    }

    /// `doctor` takes ticket `id`: a new room is named for it.
    pub async fn take(
        &self,
        id: &str,
        doctor: &Identity,
        room: RoomId,
    ) -> Result<Taken, QueueError> {
        if !ticket::is_ticket_id(id) {
            return Err(QueueError::Unknown);
        }
        let leave = Leave {
            state: TicketState::Taken,
            at_ms: now_ms(),
            room: room.as_str().to_owned(),
            doctor: doctor.as_str().to_owned(),
        };
        match self.store.transition(id, &leave, self.cfg.keep).await? {
            Transition::Done(t) => {
                let waited = Duration::from_millis(t.ended_ms.saturating_sub(t.created_ms));
                // Best effort: the estimate keeps its previous data if this write fails.
                let _ = self
                    .store
                    .push_handling(
                        estimate::handling_ms(waited, t.arrival_position),
                        self.cfg.estimate_window.get(),
                    )
                    .await;
                self.stats.count_taken(waited);
                self.bump();
                Ok(Taken {
                    ticket: *t,
                    room,
                    waited,
                })
            }
            Transition::NotWaiting(t) => Err(not_waiting(&t)),
            Transition::Unknown => Err(QueueError::Unknown),
        }
    }

    /// A new room for a take (`q-` and 20 random characters).
    pub fn new_room() -> Result<RoomId, QueueError> {
        let name = format!("q-{}", crate::http::random_token(20).to_ascii_lowercase());
        RoomId::parse(&name).map_err(|e| QueueError::Internal(e.to_string()))
    }

    /// Expires the tickets older than `queue.ticket_ttl` and flags those older than
    /// `queue.unanswered_after` (each by exactly one node in a cluster).
    pub async fn sweep(&self) -> Result<Swept, QueueError> {
        let now = now_ms();
        let ttl = millis(self.cfg.ticket_ttl);
        let unanswered = millis(self.cfg.unanswered_after);
        let mut out = Swept::default();
        for t in self.store.waiting().await? {
            let age = now.saturating_sub(t.created_ms);
            if age >= ttl {
                let leave = Leave {
                    state: TicketState::Expired,
                    at_ms: now,
                    room: String::new(),
                    doctor: String::new(),
                };
                if let Transition::Done(t) =
                    self.store.transition(&t.id, &leave, self.cfg.keep).await?
                {
                    self.stats.count_expired();
                    out.expired.push(*t);
                }
                continue;
            }
            if age >= unanswered && !t.flagged && self.store.flag(&t.id).await? {
                self.stats.count_unanswered();
                let mut t = t;
                t.flagged = true;
                out.flagged.push(t.clone());
                out.waiting.push(t);
                continue;
            }
            out.waiting.push(t);
        }
        self.stats.set_waiting(out.waiting.len());
        if !out.expired.is_empty() {
            self.bump();
        }
        Ok(out)
    }

    /// The fleet (`with_identity`: for `/api/kiosks`; without: pseudonymous, for `/api/ops`).
    pub async fn fleet(&self, with_identity: bool) -> Result<Vec<fleet::KioskView>, QueueError> {
        let records = self.store.kiosks().await?;
        let waiting: HashSet<String> = self
            .store
            .waiting()
            .await?
            .into_iter()
            .map(|t| t.kiosk)
            .collect();
        Ok(fleet::views(
            &records,
            &waiting,
            now_ms(),
            self.cfg.kiosk_offline_after,
            with_identity,
        ))
    }

    /// Writes the presence of the kiosks this node sees: `linked` (telemetry link up, with
    /// devices) and `in_session` (a media session open).
    pub async fn write_presence(
        &self,
        linked: &[(String, Vec<String>)],
        in_session: &HashSet<String>,
    ) -> Result<(), QueueError> {
        let now = now_ms();
        let mut seen: HashSet<&str> = HashSet::new();
        for (identity, devices) in linked {
            seen.insert(identity);
            let f =
                fleet::presence_fields(identity, now, Some(devices), in_session.contains(identity));
            self.store
                .touch_kiosk(&self.keyer.key(identity), &f, self.cfg.kiosk_forget_after)
                .await?;
        }
        for identity in in_session.iter().filter(|i| !seen.contains(i.as_str())) {
            let f = fleet::presence_fields(identity, now, None, true);
            self.store
                .touch_kiosk(&self.keyer.key(identity), &f, self.cfg.kiosk_forget_after)
                .await?;
        }
        Ok(())
    }
}

fn not_waiting(t: &TicketRecord) -> QueueError {
    match t.state {
        TicketState::Taken => QueueError::AlreadyTaken,
        s => QueueError::Gone(s),
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, millis)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kiosks_admission_is_audited_once_per_ticket() {
        let mut cfg = crate::config::Config::defaults().queue;
        cfg.max_records = std::num::NonZeroUsize::new(2).unwrap();
        let q = Queue::new(
            &cfg,
            Arc::new(crate::cluster::MemoryQueueStore::new()),
            b"secret",
        );
        assert!(q.first_admission("a"));
        assert!(!q.first_admission("a"), "a second read is not audited");
        assert!(q.first_admission("b"));
        // Bounded: beyond max_records the set starts again.
        assert!(q.first_admission("c"));
        assert!(!q.first_admission("c"));
    }
}
