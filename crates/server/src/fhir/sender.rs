//! Delivery of the outbox's Bundles: one task POSTs them to `fhir.endpoint`, one at a time,
//! oldest first. A 2xx deletes the file; a network error, a timeout, 408, 429 or 5xx is tried
//! again after a delay that doubles from `fhir.retry_min` to `fhir.retry_max`, for as long as
//! it takes (the file stays, so a restart resumes); any other answer is a refusal for good:
//! the file moves to `failed/` and the failure is counted and logged (status only: an answer
//! may quote health data).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::bundle::BundleId;
use super::config::FhirSettings;
use super::outbox::Outbox;
use super::stats::FhirStats;

/// The FHIR media type.
pub const FHIR_JSON: &str = "application/fhir+json";

/// Hands Bundles to the delivery task; the task ends when this is dropped.
#[derive(Debug, Clone)]
pub struct Sender {
    queue: mpsc::UnboundedSender<BundleId>,
}

impl Sender {
    /// Starts the delivery task with the Bundles already waiting in the outbox.
    pub fn start(
        settings: &FhirSettings,
        outbox: Outbox,
        stats: Arc<FhirStats>,
        pending: Vec<BundleId>,
    ) -> Result<Sender, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout)
            // A redirect would resend health data somewhere the configuration does not name.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let (queue, rx) = mpsc::unbounded_channel();
        for id in pending {
            // The receiver is alive: it is moved into the task just below.
            let _ = queue.send(id);
        }
        let task = Delivery {
            client,
            endpoint: settings.endpoint.clone(),
            token: settings
                .token
                .as_ref()
                .and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok()),
            retry_min: settings.retry_min,
            retry_max: settings.retry_max,
            outbox,
            stats,
        };
        tokio::spawn(task.run(rx));
        Ok(Sender { queue })
    }

    /// Queues a Bundle written to the outbox.
    pub fn enqueue(&self, id: BundleId) {
        let _ = self.queue.send(id);
    }
}

struct Delivery {
    client: reqwest::Client,
    endpoint: reqwest::Url,
    token: Option<HeaderValue>,
    retry_min: Duration,
    retry_max: Duration,
    outbox: Outbox,
    stats: Arc<FhirStats>,
}

/// What one attempt came to.
enum Outcome {
    Delivered,
    Retry(String),
    Refused(String),
    Gone,
}

impl Delivery {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<BundleId>) {
        // Bundle → (next attempt, delay after a failure of it).
        let mut waiting: BTreeMap<BundleId, (Instant, Duration)> = BTreeMap::new();
        loop {
            let next = waiting
                .iter()
                .min_by_key(|(_, (due, _))| *due)
                .map(|(id, (due, _))| (id.clone(), *due));
            let due_id = match next {
                None => match rx.recv().await {
                    Some(id) => {
                        waiting.insert(id, (Instant::now(), self.retry_min));
                        continue;
                    }
                    None => return,
                },
                Some((id, due)) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(tokio::time::Instant::from_std(due)) => id,
                        m = rx.recv() => match m {
                            Some(new) => {
                                waiting.entry(new).or_insert((Instant::now(), self.retry_min));
                                continue;
                            }
                            None => return,
                        },
                    }
                }
            };
            let outcome = self.attempt(&due_id).await;
            self.stats.attempts.fetch_add(1, Ordering::Relaxed);
            match outcome {
                Outcome::Delivered => {
                    waiting.remove(&due_id);
                    self.stats.exported.fetch_add(1, Ordering::Relaxed);
                    dec(&self.stats.pending);
                    info!(bundle = %due_id, "FHIR Bundle delivered");
                    let outbox = self.outbox.clone();
                    let id = due_id.clone();
                    let removed = tokio::task::spawn_blocking(move || outbox.remove(&id)).await;
                    if let Ok(Err(e)) | Err(e) = removed.map_err(std::io::Error::other) {
                        // Left on disk: resent at the next start, and the receiver dedupes it
                        // (conditional creates on the Bundle's identifiers).
                        error!(bundle = %due_id, error = %e, "cannot delete a delivered Bundle from the outbox");
                    }
                }
                Outcome::Retry(why) => {
                    let Some((due, delay)) = waiting.get_mut(&due_id) else {
                        continue;
                    };
                    self.stats.retried.fetch_add(1, Ordering::Relaxed);
                    warn!(bundle = %due_id, retry_in = ?*delay, reason = %why, "FHIR delivery failed; will retry");
                    *due = Instant::now() + *delay;
                    *delay = (*delay * 2).min(self.retry_max);
                }
                Outcome::Refused(why) => {
                    waiting.remove(&due_id);
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    dec(&self.stats.pending);
                    error!(bundle = %due_id, reason = %why, dir = %self.outbox.dir().display(),
                        "FHIR endpoint refused a Bundle for good: moved to the outbox's failed/ \
                         directory, not retried");
                    let outbox = self.outbox.clone();
                    let id = due_id.clone();
                    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || outbox.fail(&id)).await
                    {
                        error!(bundle = %due_id, error = %e, "cannot move a refused Bundle to failed/");
                    }
                }
                Outcome::Gone => {
                    waiting.remove(&due_id);
                    dec(&self.stats.pending);
                }
            }
        }
    }

    async fn attempt(&self, id: &BundleId) -> Outcome {
        let body = match tokio::fs::read(self.outbox.dir().join(format!("{id}.json"))).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                warn!(bundle = %id, "a queued Bundle is no longer in the outbox (removed by hand?)");
                return Outcome::Gone;
            }
            Err(e) => return Outcome::Retry(format!("cannot read it from the outbox: {e}")),
        };
        let mut req = self
            .client
            .post(self.endpoint.clone())
            .header(CONTENT_TYPE, FHIR_JSON)
            .header(ACCEPT, FHIR_JSON)
            .body(body);
        if let Some(t) = &self.token {
            req = req.header(AUTHORIZATION, t.clone());
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => Outcome::Delivered,
            Ok(r) => {
                let s = r.status();
                let transient = s.is_server_error()
                    || s == reqwest::StatusCode::REQUEST_TIMEOUT
                    || s == reqwest::StatusCode::TOO_MANY_REQUESTS;
                if transient {
                    Outcome::Retry(format!("HTTP {s}"))
                } else {
                    Outcome::Refused(format!("HTTP {s}"))
                }
            }
            Err(e) => Outcome::Retry(without_url(&e)),
        }
    }
}

fn dec(n: &std::sync::atomic::AtomicU64) {
    let _ = n.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
}

/// A request error without the URL (the endpoint may carry a tenant path).
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {detail}")
    }
}
