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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// An endpoint answering `status` to every POST; counts them.
    async fn endpoint(status: u16) -> (reqwest::Url, Arc<AtomicUsize>) {
        let hits = Arc::new(AtomicUsize::new(0));
        let h = Arc::clone(&hits);
        let app = axum::Router::new().route(
            "/fhir",
            axum::routing::post(move || {
                let h = Arc::clone(&h);
                async move {
                    h.fetch_add(1, Ordering::Relaxed);
                    axum::http::StatusCode::from_u16(status).unwrap()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/fhir", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (reqwest::Url::parse(&url).unwrap(), hits)
    }

    fn settings(endpoint: reqwest::Url, outbox: &std::path::Path) -> FhirSettings {
        FhirSettings {
            endpoint,
            outbox: outbox.to_owned(),
            token: Some("t0ken".into()),
            request_timeout: Duration::from_secs(5),
            retry_min: Duration::from_millis(10),
            retry_max: Duration::from_millis(40),
            room_end_grace: Duration::from_secs(1),
            max_measurements_per_room: 10,
            max_rooms: 10,
            waveform_excerpt: Duration::from_secs(1),
            max_waveform_bytes_per_room: 1 << 20,
            max_pending: 10,
        }
    }

    async fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "{what}: not within 10 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_refusal_for_good_moves_the_bundle_to_failed_and_is_not_retried() {
        let dir = std::env::temp_dir().join(format!("cabine-sender-400-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (outbox, _) = Outbox::open(&dir).unwrap();
        let id = BundleId::random();
        outbox.write(&id, b"{}").unwrap();
        let (url, hits) = endpoint(422).await;
        let stats = Arc::new(FhirStats::default());
        stats.pending.store(1, Ordering::Relaxed);
        let _sender = Sender::start(
            &settings(url, &dir),
            outbox,
            Arc::clone(&stats),
            vec![id.clone()],
        )
        .unwrap();
        until("the Bundle is refused", || {
            stats.failed.load(Ordering::Relaxed) == 1
        })
        .await;
        assert!(dir.join("failed").join(format!("{id}.json")).exists());
        assert!(!dir.join(format!("{id}.json")).exists());
        assert_eq!(stats.pending.load(Ordering::Relaxed), 0);
        assert_eq!(stats.exported.load(Ordering::Relaxed), 0);
        assert_eq!(hits.load(Ordering::Relaxed), 1, "not retried");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_server_error_is_retried_with_growing_delays_and_the_file_kept() {
        let dir = std::env::temp_dir().join(format!("cabine-sender-503-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (outbox, _) = Outbox::open(&dir).unwrap();
        let id = BundleId::random();
        outbox.write(&id, b"{}").unwrap();
        let (url, hits) = endpoint(503).await;
        let stats = Arc::new(FhirStats::default());
        let sender =
            Sender::start(&settings(url, &dir), outbox, Arc::clone(&stats), vec![]).unwrap();
        sender.enqueue(id.clone());
        until("three attempts", || hits.load(Ordering::Relaxed) >= 3).await;
        assert!(stats.retried.load(Ordering::Relaxed) >= 2);
        assert_eq!(stats.failed.load(Ordering::Relaxed), 0);
        assert!(dir.join(format!("{id}.json")).exists(), "kept until a 2xx");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
