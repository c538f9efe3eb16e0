//! Counters of the export, and their metrics (`cabine_fhir_*`): no room, kiosk or patient in
//! any label.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Weak;

use opentelemetry::metrics::Meter;
use opentelemetry::KeyValue;

use super::bundle::Skipped;
use super::record::Refusal;

/// Counters of the export.
#[derive(Debug, Default)]
pub struct FhirStats {
    /// Bundles the endpoint accepted (2xx).
    pub exported: AtomicU64,
    /// Delivery attempts that failed and were scheduled again.
    pub retried: AtomicU64,
    /// Bundles the endpoint refused for good (moved to `failed/`).
    pub failed: AtomicU64,
    /// Delivery attempts.
    pub attempts: AtomicU64,
    /// Bundles waiting in the outbox.
    pub pending: AtomicU64,
    /// Bundles written, on a doctor's request.
    pub requested: AtomicU64,
    /// Bundles written at the end of a room.
    pub room_end: AtomicU64,
    /// Rooms that ended with measurements but without a subject: nothing exported.
    pub no_subject: AtomicU64,
    /// Rooms that ended with measurements that could not be written to the outbox (outbox
    /// full, disk error): nothing exported, audited as `fhir_not_exported`.
    pub not_exported: AtomicU64,
    /// Refusals by limit: `max_rooms`, `max_measurements_per_room`, `max_pending`,
    /// `max_waveform_bytes_per_room`.
    pub refused: [AtomicU64; 4],
    /// Values left out of Bundles, by [`Skipped::by_reason`] order.
    pub skipped: [AtomicU64; 6],
}

/// Labels of [`FhirStats::refused`].
pub const REFUSED: [&str; 4] = [
    "max_rooms",
    "max_measurements_per_room",
    "max_pending",
    "max_waveform_bytes_per_room",
];

impl FhirStats {
    /// Counts a refusal of the record table.
    pub fn refused(&self, r: Refusal) {
        let i = REFUSED.iter().position(|l| *l == r.as_str()).unwrap_or(0);
        self.refused[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an export refused because the outbox is full.
    pub fn outbox_full(&self) {
        self.refused[2].fetch_add(1, Ordering::Relaxed);
    }

    /// Adds a Bundle's skipped values.
    pub fn skipped(&self, s: &Skipped) {
        for (i, (_, n)) in s.by_reason().iter().enumerate() {
            self.skipped[i].fetch_add(*n, Ordering::Relaxed);
        }
    }

    /// Refusals by limit.
    pub fn refusals(&self) -> [(&'static str, u64); 4] {
        std::array::from_fn(|i| (REFUSED[i], self.refused[i].load(Ordering::Relaxed)))
    }
}

/// Registers the export's instruments on `meter`, reading `fhir` live.
pub fn register(meter: &Meter, fhir: Weak<super::Fhir>) {
    type Read = fn(&FhirStats) -> u64;
    let counters: [(&'static str, &'static str, Read); 5] = [
        (
            "cabine.fhir.exported",
            "FHIR Bundles delivered (the endpoint answered 2xx)",
            |s| s.exported.load(Ordering::Relaxed),
        ),
        (
            "cabine.fhir.retried",
            "FHIR delivery attempts that failed and were scheduled again",
            |s| s.retried.load(Ordering::Relaxed),
        ),
        (
            "cabine.fhir.failed",
            "FHIR Bundles the endpoint refused for good (moved to the outbox's failed/)",
            |s| s.failed.load(Ordering::Relaxed),
        ),
        (
            "cabine.fhir.no_subject",
            "Rooms that ended with measurements but no subject: nothing exported",
            |s| s.no_subject.load(Ordering::Relaxed),
        ),
        (
            "cabine.fhir.not_exported",
            "Rooms that ended with measurements the outbox could not take (full, disk error)",
            |s| s.not_exported.load(Ordering::Relaxed),
        ),
    ];
    for (name, desc, read) in counters {
        let f = Weak::clone(&fhir);
        let _ = meter
            .u64_observable_counter(name)
            .with_description(desc)
            .with_callback(move |o| {
                if let Some(f) = f.upgrade() {
                    o.observe(read(f.stats()), &[]);
                }
            })
            .build();
    }
    let f = Weak::clone(&fhir);
    let _ = meter
        .u64_observable_gauge("cabine.fhir.pending")
        .with_description("FHIR Bundles waiting in the outbox for delivery")
        .with_callback(move |o| {
            if let Some(f) = f.upgrade() {
                o.observe(f.stats().pending.load(Ordering::Relaxed), &[]);
            }
        })
        .build();
    let f = Weak::clone(&fhir);
    let _ = meter
        .u64_observable_counter("cabine.fhir.bundles")
        .with_description("FHIR Bundles written to the outbox, by trigger")
        .with_callback(move |o| {
            if let Some(f) = f.upgrade() {
                let s = f.stats();
                o.observe(
                    s.requested.load(Ordering::Relaxed),
                    &[KeyValue::new("trigger", "request")],
                );
                o.observe(
                    s.room_end.load(Ordering::Relaxed),
                    &[KeyValue::new("trigger", "room_end")],
                );
            }
        })
        .build();
    let f = Weak::clone(&fhir);
    let _ = meter
        .u64_observable_counter("cabine.fhir.refused")
        .with_description(
            "Measurements, rooms and exports refused by a [fhir] limit, by limit (fhir.<limit>)",
        )
        .with_callback(move |o| {
            if let Some(f) = f.upgrade() {
                for (limit, n) in f.stats().refusals() {
                    o.observe(n, &[KeyValue::new("limit", limit)]);
                }
            }
        })
        .build();
    let f = Weak::clone(&fhir);
    let _ = meter
        .u64_observable_counter("cabine.fhir.skipped")
        .with_description(
            "Values left out of FHIR Bundles because the export does not map them, by reason",
        )
        .with_callback(move |o| {
            if let Some(f) = f.upgrade() {
                let s = f.stats();
                for (i, (reason, _)) in Skipped::default().by_reason().iter().enumerate() {
                    o.observe(
                        s.skipped[i].load(Ordering::Relaxed),
                        &[KeyValue::new("reason", *reason)],
                    );
                }
            }
        })
        .build();
    let _ = meter
        .u64_observable_gauge("cabine.fhir.held")
        .with_description(
            "What the server keeps for FHIR exports now: rooms, measurements, ECG chunks",
        )
        .with_callback(move |o| {
            if let Some(f) = fhir.upgrade() {
                let h = f.held();
                o.observe(h.rooms, &[KeyValue::new("kind", "rooms")]);
                o.observe(h.measurements, &[KeyValue::new("kind", "measurements")]);
                o.observe(h.chunks, &[KeyValue::new("kind", "waveform_chunks")]);
            }
        })
        .build();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_under_their_limit() {
        let s = FhirStats::default();
        s.refused(Refusal::Measurements);
        s.refused(Refusal::Measurements);
        s.refused(Refusal::Rooms);
        s.outbox_full();
        assert_eq!(
            s.refusals(),
            [
                ("max_rooms", 1),
                ("max_measurements_per_room", 2),
                ("max_pending", 1),
                ("max_waveform_bytes_per_room", 0)
            ]
        );
    }
}
