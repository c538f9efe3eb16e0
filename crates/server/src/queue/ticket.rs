//! A ticket request as it enters (`POST /api/queue`), checked once into [`NewTicket`], and the
//! queue's order: FIFO per specialty, priority tickets first.

use serde::Deserialize;

use crate::cluster::queue_store::TicketRecord;

/// Longest specialty name.
pub const MAX_SPECIALTY: usize = 64;
/// Longest site label.
pub const MAX_SITE: usize = 128;
/// Longest FHIR reference.
pub const MAX_SUBJECT: usize = 128;
/// Length of a ticket id.
pub const TICKET_ID_LEN: usize = 24;

/// The body of `POST /api/queue` (every field optional; an empty body is a plain request).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TicketRequest {
    /// Why the patient came (free text).
    pub reason: Option<String>,
    /// The specialty asked for (`general` when absent).
    pub specialty: Option<String>,
    /// Served first within its specialty.
    pub priority: Option<bool>,
    /// The patient's FHIR reference as the platform knows it (`Patient/123`).
    pub subject: Option<String>,
    /// The kiosk's site label (else the token's `name`).
    pub site: Option<String>,
}

/// A checked request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTicket {
    /// Reason (may be empty).
    pub reason: String,
    /// Specialty, lower case (`general` by default).
    pub specialty: String,
    /// Priority.
    pub priority: bool,
    /// FHIR reference, or empty.
    pub subject: String,
    /// Site label, or empty.
    pub site: String,
}

/// Why a request was refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TicketError {
    /// The reason is longer than `queue.max_reason_chars`.
    #[error("reason is {len} characters long; at most {max} (queue.max_reason_chars)")]
    ReasonTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A field holds control characters.
    #[error("{0} holds control characters")]
    Control(&'static str),
    /// The specialty is not a short lower-case name.
    #[error("specialty must be 1 to {MAX_SPECIALTY} characters among a-z, 0-9, '-' and '_'")]
    Specialty,
    /// The subject is not a reference to a Patient (the FHIR export needs one).
    #[error(
        "subject must be a reference to a Patient of at most {MAX_SUBJECT} characters: \
         `Patient/<id>` or `https://<fhir base>/Patient/<id>`, where <id> is 1 to 64 of \
         A-Z a-z 0-9 '-' '.'"
    )]
    Subject,
    /// The site label is too long.
    #[error("site is longer than {MAX_SITE} characters")]
    Site,
}

impl TicketRequest {
    /// Checks the request; `max_reason` is `queue.max_reason_chars`.
    pub fn check(self, max_reason: usize) -> Result<NewTicket, TicketError> {
        let reason = self.reason.unwrap_or_default().trim().to_owned();
        let len = reason.chars().count();
        if len > max_reason {
            return Err(TicketError::ReasonTooLong {
                len,
                max: max_reason,
            });
        }
        if reason.chars().any(|c| c.is_control() && c != '\n') {
            return Err(TicketError::Control("reason"));
        }
        let specialty = match self.specialty.map(|s| s.trim().to_ascii_lowercase()) {
            None => "general".to_owned(),
            Some(s) if s.is_empty() => "general".to_owned(),
            Some(s) => {
                let ok = s.len() <= MAX_SPECIALTY
                    && s.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                    });
                if !ok {
                    return Err(TicketError::Specialty);
                }
                s
            }
        };
        let subject = match self.subject.map(|s| s.trim().to_owned()) {
            None => String::new(),
            Some(s) if s.is_empty() => String::new(),
            Some(s) if s.len() <= MAX_SUBJECT && crate::fhir::Subject::parse(&s).is_ok() => s,
            Some(_) => return Err(TicketError::Subject),
        };
        let site = self.site.unwrap_or_default().trim().to_owned();
        if site.chars().count() > MAX_SITE {
            return Err(TicketError::Site);
        }
        if site.chars().any(char::is_control) {
            return Err(TicketError::Control("site"));
        }
        Ok(NewTicket {
            reason,
            specialty,
            priority: self.priority.unwrap_or(false),
            subject,
            site,
        })
    }
}

/// Whether `s` can be a ticket id (anything else is answered 404 without asking the store).
pub fn is_ticket_id(s: &str) -> bool {
    s.len() == TICKET_ID_LEN && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The queue's order: priority first, then arrival, then id (a total order).
pub fn order(a: &TicketRecord, b: &TicketRecord) -> std::cmp::Ordering {
    b.priority
        .cmp(&a.priority)
        .then(a.created_ms.cmp(&b.created_ms))
        .then(a.id.cmp(&b.id))
}

/// The 1-based position of ticket `id` among `waiting` in its specialty; `None` if it is not
/// among them.
pub fn position(waiting: &[TicketRecord], id: &str) -> Option<u32> {
    let me = waiting.iter().find(|t| t.id == id)?;
    let ahead = waiting
        .iter()
        .filter(|t| t.specialty == me.specialty && order(t, me) == std::cmp::Ordering::Less)
        .count();
    Some(u32::try_from(ahead + 1).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::queue_store::TicketState;

    fn t(id: &str, specialty: &str, priority: bool, created_ms: u64) -> TicketRecord {
        TicketRecord {
            id: id.into(),
            kiosk: format!("k-{id}"),
            kiosk_key: format!("kk-{id}"),
            site: String::new(),
            reason: String::new(),
            specialty: specialty.into(),
            priority,
            subject: String::new(),
            created_ms,
            arrival_position: 1,
            state: TicketState::Waiting,
            ended_ms: 0,
            room: String::new(),
            doctor: String::new(),
            flagged: false,
        }
    }

    #[test]
    fn fifo_per_specialty_with_priority_first() {
        let w = [
            t("a", "general", false, 1),
            t("b", "general", false, 2),
            t("c", "dermatology", false, 3),
            t("d", "general", true, 4),
        ];
        assert_eq!(position(&w, "d"), Some(1));
        assert_eq!(position(&w, "a"), Some(2));
        assert_eq!(position(&w, "b"), Some(3));
        assert_eq!(position(&w, "c"), Some(1));
        assert_eq!(position(&w, "zz"), None);
    }

    #[test]
    fn requests_are_checked() {
        let ok = TicketRequest {
            reason: Some(" toux ".into()),
            specialty: Some("Dermatology".into()),
            priority: Some(true),
            subject: Some("Patient/123".into()),
            site: Some("Pharmacie du Centre".into()),
        }
        .check(10)
        .unwrap();
        assert_eq!(
            (ok.reason.as_str(), ok.specialty.as_str(), ok.priority),
            ("toux", "dermatology", true)
        );
        assert_eq!(
            TicketRequest::default().check(10).unwrap().specialty,
            "general"
        );
        let long = TicketRequest {
            reason: Some("x".repeat(11)),
            ..TicketRequest::default()
        };
        assert!(matches!(
            long.check(10),
            Err(TicketError::ReasonTooLong { len: 11, max: 10 })
        ));
        for bad in [
            "Patient",
            "patient/1",
            "Patient/",
            "Patient/a b",
            "/1",
            "Patient/1/2",
            "Practitioner/1",
            "Group/7",
        ] {
            let r = TicketRequest {
                subject: Some(bad.into()),
                ..TicketRequest::default()
            };
            assert_eq!(r.check(10), Err(TicketError::Subject), "{bad}");
        }
        let r = TicketRequest {
            specialty: Some("a b".into()),
            ..TicketRequest::default()
        };
        assert_eq!(r.check(10), Err(TicketError::Specialty));
    }

    #[test]
    fn ticket_ids_have_one_shape() {
        assert!(is_ticket_id(&"a".repeat(TICKET_ID_LEN)));
        assert!(!is_ticket_id("short"));
        assert!(!is_ticket_id(&"-".repeat(TICKET_ID_LEN)));
    }
}
