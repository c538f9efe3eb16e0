//! FHIR export (`[fhir]`, off while `fhir.endpoint` is empty): a consultation's measurements
//! leave as an R4 `transaction` Bundle, at the end of the room or when the doctor asks
//! (`POST /api/rooms/{room}/fhir`), through a durable outbox.
//!
//! ```text
//! telemetry sink ─▶ Fhir::on_delivered ─▶ record (per room, bounded)
//!                                             │ take: doctor's request, or the room ended
//!                                             ▼
//!                         bundle::build (pure) ─▶ outbox (fsync, rename) ─▶ sender (POST, retry)
//!                                                                  ▲ pending files at start
//! ```
//!
//! - [`record`]: what is kept per room until its export, and when a room is over;
//! - [`bundle`]: the Bundle, a pure function of what was kept and the subject; [`codes`]: the
//!   LOINC / MDC / UCUM tables it maps with; [`subject`]: the patient reference, supplied by
//!   the platform (with the walk-in ticket, [`Fhir::set_subject`], or the doctor's request),
//!   never invented: without one there is no export;
//! - [`outbox`]: one file per Bundle, written before the first attempt, deleted after a 2xx;
//!   [`sender`]: the delivery task; [`route`]: the doctor's request; [`stats`]: the counters
//!   and `cabine_fhir_*` metrics; [`config`]: `[fhir]`.
//!
//! Nothing is kept after success: an export takes the room's measurements out of memory and
//! its file is deleted once delivered; a room that ends is forgotten, exported or not.

pub mod bundle;
pub mod codes;
pub mod config;
pub mod outbox;
pub mod record;
pub mod route;
pub mod sender;
pub mod stats;
pub mod subject;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use cabine_proto::telemetry::Delivered;
use cabine_proto::{Redacted, RoomId};
use tracing::{info, warn};

pub use bundle::BundleId;
pub use config::{FhirConfig, FhirConfigError, FhirSettings};
pub use subject::{Subject, SubjectError};

use record::{Records, Refusal, Taken};
use stats::FhirStats;

/// The export side of a running server.
pub struct Fhir {
    settings: FhirSettings,
    records: Mutex<Records>,
    outbox: outbox::Outbox,
    sender: sender::Sender,
    stats: Arc<FhirStats>,
    audit: crate::audit::Audit,
    /// Where the queue leaves the subject of each room it created (shared by the cluster):
    /// consulted when the room has no subject of its own.
    room_subjects: std::sync::OnceLock<Arc<dyn crate::cluster::QueueStore>>,
}

/// Why the export did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FhirError {
    /// The outbox directory cannot be created or read.
    #[error("cannot open the FHIR outbox {dir}: {source}")]
    Outbox {
        /// The directory.
        dir: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The HTTP client cannot be built.
    #[error("cannot set up the FHIR HTTP client: {0}")]
    Client(String),
}

/// Why an export was not made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// Neither the request nor the platform supplied a subject.
    #[error(
        "no subject for this consultation: send {{\"subject\":\"Patient/<id>\"}} (the patient \
         reference of the health-data host); Cabine never invents one"
    )]
    NoSubject,
    /// The subject given is not a Patient reference.
    #[error(transparent)]
    Subject(#[from] SubjectError),
    /// Nothing was measured since the last export.
    #[error("no measurement recorded in this room since the last export")]
    Nothing,
    /// Everything measured since the last export was skipped (codes or units the export does
    /// not map): no Bundle.
    #[error(
        "none of the {0} values measured since the last export can be exported (codes, units          or statuses the export does not map; see cabine_fhir_skipped_total)"
    )]
    NothingExportable(u64),
    /// The outbox holds `fhir.max_pending` Bundles.
    #[error(
        "the FHIR outbox already holds {0} Bundles waiting for delivery (fhir.max_pending); \
         retry once the endpoint accepts them"
    )]
    Full(usize),
    /// A limit of the record table.
    #[error("refused by fhir.{}", .0.as_str())]
    Refused(Refusal),
    /// The Bundle could not be written to the outbox (the measurements are kept).
    #[error("cannot write the Bundle to the outbox: {0}")]
    Write(std::io::Error),
}

/// An export written to the outbox.
#[derive(Debug, Clone)]
pub struct Exported {
    /// The Bundle's identifier.
    pub bundle: BundleId,
    /// Observations in it.
    pub observations: usize,
    /// Values left out (unknown codes, units, statuses).
    pub skipped: u64,
}

/// What made an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The doctor's request.
    Request,
    /// The room ended.
    RoomEnd,
}

impl Fhir {
    /// Opens the outbox, queues the Bundles waiting there and starts their delivery. Must be
    /// called inside a tokio runtime.
    pub fn start(
        settings: FhirSettings,
        audit: crate::audit::Audit,
    ) -> Result<Arc<Fhir>, FhirError> {
        let (outbox, pending) =
            outbox::Outbox::open(&settings.outbox).map_err(|source| FhirError::Outbox {
                dir: settings.outbox.clone(),
                source,
            })?;
        let stats = Arc::new(FhirStats::default());
        stats.pending.store(pending.len() as u64, Ordering::Relaxed);
        if !pending.is_empty() {
            info!(
                bundles = pending.len(),
                "FHIR Bundles left in the outbox: sending them again"
            );
        }
        let sender = sender::Sender::start(&settings, outbox.clone(), Arc::clone(&stats), pending)
            .map_err(|e| FhirError::Client(e.to_string()))?;
        info!(outbox = %settings.outbox.display(), "FHIR export on");
        Ok(Arc::new(Fhir {
            records: Mutex::new(
                Records::new(
                    settings.max_rooms,
                    settings.max_measurements_per_room,
                    settings.waveform_excerpt,
                    settings.room_end_grace,
                )
                .with_max_waveform_bytes(settings.max_waveform_bytes_per_room),
            ),
            settings,
            outbox,
            sender,
            stats,
            audit,
            room_subjects: std::sync::OnceLock::new(),
        }))
    }

    /// A telemetry frame delivered in `room`: kept for the export when it is a declaration, a
    /// measurement or an ECG chunk (refusals counted).
    pub fn on_delivered(&self, room: &RoomId, d: &Delivered) {
        use cabine_proto::telemetry::delivered::Frame;
        if !matches!(
            d.frame,
            Some(Frame::Channel(_) | Frame::Measurement(_) | Frame::Waveform(_))
        ) {
            return;
        }
        let r = self.records().on_delivered(room, d, Instant::now());
        if let Err(refusal) = r {
            self.stats.refused(refusal);
        }
    }

    /// Sets the patient of `room` (a reference the platform supplies, e.g. with the walk-in
    /// ticket): its measurements are exported to that subject when the room ends.
    pub fn set_subject(&self, room: &RoomId, reference: &str) -> Result<(), ExportError> {
        let subject = Subject::parse(reference)?;
        self.records()
            .set_subject(room, subject, Instant::now())
            .map_err(|r| {
                self.stats.refused(r);
                ExportError::Refused(r)
            })
    }

    /// Exports what `room` kept since its last export, to `subject` or else the subject set
    /// for the room. The Bundle is on disk when this returns; its delivery follows.
    pub async fn export(
        &self,
        room: &RoomId,
        subject: Option<Subject>,
    ) -> Result<Exported, ExportError> {
        let kept = self.records().subject(room).cloned();
        let subject = match subject.or(kept) {
            Some(s) => s,
            None => self
                .platform_subject(room)
                .await
                .ok_or(ExportError::NoSubject)?,
        };
        self.check_outbox_capacity()?;
        let data = self.records().take(room);
        if data.is_empty() {
            return Err(ExportError::Nothing);
        }
        match self.write(&subject, &data, Trigger::Request).await {
            Err(e @ ExportError::Write(_)) => {
                // Not on disk: kept for the next try.
                self.records().put_back(room, data, Instant::now());
                Err(e)
            }
            other => other,
        }
    }

    /// Where to find the subjects the walk-in queue hands to the rooms it creates (the
    /// queue's store: in a cluster, the node that took the ticket need not hold the room).
    pub fn set_room_subjects(&self, store: Arc<dyn crate::cluster::QueueStore>) {
        let _ = self.room_subjects.set(store);
    }

    /// Checks, every fraction of `fhir.room_end_grace`, which rooms ended: `live` gets the
    /// rooms kept and returns those live now (participants, connected kiosks). An ended room
    /// with a subject is exported; without one, its measurements are dropped (counted).
    pub fn watch_rooms(
        self: &Arc<Self>,
        live: impl Fn(&[RoomId]) -> HashSet<RoomId> + Send + 'static,
    ) {
        let weak = Arc::downgrade(self);
        let period = (self.settings.room_end_grace / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(f) = weak.upgrade() else { return };
                let rooms = f.records().rooms();
                if rooms.is_empty() {
                    continue;
                }
                let now_live = live(&rooms);
                let ended = f.records().tick(Instant::now(), |r| now_live.contains(r));
                for e in ended {
                    // Each export in a task of its own: should one fail in a way nobody
                    // foresaw, the watch goes on for the other rooms.
                    let one = Arc::clone(&f);
                    let room = e.room.clone();
                    if let Err(err) = tokio::spawn(async move { one.finish(e).await }).await {
                        f.not_exported(&room, &format!("internal: {err}"));
                    }
                }
            }
        });
    }

    /// Ends every room kept (server shutdown): those with a subject are written to the
    /// outbox, sent at the next start if not before.
    pub async fn end_all(&self) {
        let rooms = self.records().rooms();
        for room in rooms {
            let ended = self.records().remove(&room);
            if let Some(e) = ended {
                self.finish(e).await;
            }
        }
    }

    /// The counters.
    pub fn stats(&self) -> &FhirStats {
        &self.stats
    }

    /// What is kept now.
    pub fn held(&self) -> record::Held {
        self.records().held()
    }

    /// The outbox directory.
    pub fn outbox_dir(&self) -> &Path {
        self.outbox.dir()
    }

    async fn finish(&self, e: record::Ended) {
        let room = Redacted(&e.room);
        if e.data.is_empty() {
            return;
        }
        let measurements = e.data.readings.len();
        let subject = match e.subject {
            Some(s) => Some(s),
            None => self.platform_subject(&e.room).await,
        };
        let Some(subject) = subject else {
            self.stats.no_subject.fetch_add(1, Ordering::Relaxed);
            info!(%room, measurements, "room ended without a subject: its measurements are dropped, not exported");
            self.audit.record(
                "fhir_not_exported",
                e.room.as_str(),
                "-",
                None,
                None,
                &format!(
                    "no_subject: the room ended with {measurements} measurements and no patient \
                     reference supplied"
                ),
            );
            return;
        };
        if let Err(err) = self.check_outbox_capacity() {
            warn!(%room, error = %err, "room ended: its FHIR export is refused");
            self.not_exported(
                &e.room,
                &format!("outbox_full: {measurements} measurements dropped: {err}"),
            );
            return;
        }
        match self.write(&subject, &e.data, Trigger::RoomEnd).await {
            Ok(x) => self.audit.record(
                "fhir_export",
                e.room.as_str(),
                "-",
                None,
                None,
                &format!(
                    "room_ended: bundle {} with {} observations queued",
                    x.bundle, x.observations
                ),
            ),
            Err(err @ ExportError::NothingExportable(_)) => {
                info!(%room, error = %err, "room ended: nothing to export")
            }
            Err(err) => {
                warn!(%room, error = %err, "room ended: its FHIR export could not be written");
                self.not_exported(
                    &e.room,
                    &format!("write_error: {measurements} measurements dropped: {err}"),
                );
            }
        }
    }

    /// A room ended but its measurements could not be written to the outbox: counted
    /// (`cabine_fhir_not_exported_total`) and audited with the reason.
    fn not_exported(&self, room: &RoomId, reason: &str) {
        self.stats.not_exported.fetch_add(1, Ordering::Relaxed);
        self.audit
            .record("fhir_not_exported", room.as_str(), "-", None, None, reason);
    }

    /// The subject the queue's store holds for `room` (a taken ticket's), if any.
    async fn platform_subject(&self, room: &RoomId) -> Option<Subject> {
        let store = self.room_subjects.get()?;
        match store.room_subject(room.as_str()).await {
            Ok(found) => found.and_then(|s| Subject::parse(&s).ok()),
            Err(err) => {
                warn!(room = %Redacted(room), error = %err, "the queue's store did not say the room's subject");
                None
            }
        }
    }

    fn check_outbox_capacity(&self) -> Result<(), ExportError> {
        let max = self.settings.max_pending;
        if self.stats.pending.load(Ordering::Relaxed) as usize >= max {
            self.stats.outbox_full();
            return Err(ExportError::Full(max));
        }
        Ok(())
    }

    /// Builds the Bundle, writes it to the outbox (off the async threads: it waits for the
    /// disk) and queues it.
    async fn write(
        &self,
        subject: &Subject,
        data: &Taken,
        trigger: Trigger,
    ) -> Result<Exported, ExportError> {
        let id = BundleId::random();
        let built = bundle::build(&bundle::BundleInput {
            id: &id,
            subject,
            timestamp: SystemTime::now(),
            data,
        });
        if built.observations == 0 {
            self.stats.skipped(&built.skipped);
            return Err(ExportError::NothingExportable(built.skipped.total()));
        }
        // Serialising a `serde_json::Value` cannot fail (string keys only).
        let body = serde_json::to_vec(&built.bundle).unwrap_or_default();
        let outbox = self.outbox.clone();
        let file = id.clone();
        tokio::task::spawn_blocking(move || outbox.write(&file, &body))
            .await
            .map_err(|e| ExportError::Write(std::io::Error::other(e)))?
            .map_err(ExportError::Write)?;
        self.stats.pending.fetch_add(1, Ordering::Relaxed);
        self.stats.skipped(&built.skipped);
        match trigger {
            Trigger::Request => &self.stats.requested,
            Trigger::RoomEnd => &self.stats.room_end,
        }
        .fetch_add(1, Ordering::Relaxed);
        info!(bundle = %id, observations = built.observations, skipped = built.skipped.total(),
            ?trigger, "FHIR Bundle written to the outbox");
        self.sender.enqueue(id.clone());
        Ok(Exported {
            bundle: id,
            observations: built.observations,
            skipped: built.skipped.total(),
        })
    }

    fn records(&self) -> MutexGuard<'_, Records> {
        // Single-table updates: a panic while holding it cannot leave it inconsistent.
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }
}
