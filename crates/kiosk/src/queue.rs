//! The walk-in queue from the cabin's side (`cabine-kiosk dial --queue`): ask for the next
//! available doctor, follow the ticket's position, and once a doctor takes it dial the room
//! with the token the server hands out.
//!
//! [`wait_for_doctor`] posts the ticket (`POST /api/queue`; a kiosk already waiting resumes its
//! ticket from the `409` answer), then polls `GET /api/queue/{ticket}` every
//! [`QueueOptions::poll`], reporting each new position, until the ticket is taken (→ the room
//! and its token) or the `shutdown` future completes (→ `DELETE`, the ticket is cancelled).
//! [`dial_queued`] does that, then [`dial::run`]s the room.

use std::future::Future;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::dial::{self, DialConfig, DialError, DialStats};

/// What the cabin asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueRequest {
    /// Why the patient came (free text).
    pub reason: Option<String>,
    /// The specialty (default: general practice).
    pub specialty: Option<String>,
    /// Served first.
    pub priority: bool,
    /// The patient's FHIR reference the platform supplied (`Patient/123`).
    pub subject: Option<String>,
    /// The cabin's site label (default: the token's `name`).
    pub site: Option<String>,
}

/// How to follow the ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueOptions {
    /// Between two reads of the ticket.
    pub poll: Duration,
    /// Timeout of each HTTP request.
    pub http_timeout: Duration,
    /// Accept any TLS certificate (tests, labs).
    pub accept_invalid_certs: bool,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            poll: Duration::from_secs(1),
            http_timeout: Duration::from_secs(10),
            accept_invalid_certs: false,
        }
    }
}

/// A change of the ticket while it waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueUpdate {
    /// The ticket id.
    pub ticket: String,
    /// Its position (1: next).
    pub position: u64,
    /// The server's estimate, seconds.
    pub estimated_wait_s: u64,
}

/// A taken ticket: where to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// The ticket id.
    pub ticket: String,
    /// The room the server created.
    pub room: String,
    /// A kiosk token for that room.
    pub token: String,
    /// The kiosk page URL for the room (with the token in its fragment).
    pub url: String,
}

/// Why the queue did not lead to a room.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The server could not be reached, or answered something unreadable.
    #[error("queue request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// The server refused (bad token, not a kiosk, queue full…).
    #[error("the server refused the queue request ({status}): {body}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// Its body.
        body: String,
    },
    /// The ticket was cancelled or expired (by the server or another client).
    #[error("the ticket ended without a doctor: {0}")]
    Ended(String),
    /// `shutdown` completed first: the ticket was cancelled.
    #[error("stopped while waiting; the ticket was cancelled")]
    Stopped,
    /// The dial into the room failed.
    #[error(transparent)]
    Dial(#[from] DialError),
}

/// Enters the queue with the kiosk `token` and waits until a doctor takes the ticket,
/// calling `on_update` at each new position; cancels the ticket when `shutdown` completes
/// first.
pub async fn wait_for_doctor(
    server: &str,
    token: &str,
    request: &QueueRequest,
    opts: &QueueOptions,
    mut on_update: impl FnMut(&QueueUpdate),
    shutdown: impl Future<Output = ()>,
) -> Result<Admission, QueueError> {
    let client = reqwest::Client::builder()
        .timeout(opts.http_timeout)
        .danger_accept_invalid_certs(opts.accept_invalid_certs)
        .build()?;
    let base = server.trim_end_matches('/');
    let mut body = json!({ "priority": request.priority });
    for (k, v) in [
        ("reason", &request.reason),
        ("specialty", &request.specialty),
        ("subject", &request.subject),
        ("site", &request.site),
    ] {
        if let Some(v) = v {
            body[k] = json!(v);
        }
    }
    let r = client
        .post(format!("{base}/api/queue"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await?;
    let status = r.status();
    let text = r.text().await?;
    if status != StatusCode::CREATED && status != StatusCode::CONFLICT {
        return Err(QueueError::Refused {
            status: status.as_u16(),
            body: text.trim().to_owned(),
        });
    }
    let first: Value = serde_json::from_str(&text).map_err(|_| QueueError::Refused {
        status: status.as_u16(),
        body: text.trim().to_owned(),
    })?;
    let ticket = first["ticket"].as_str().unwrap_or_default().to_owned();
    if ticket.is_empty() {
        return Err(QueueError::Refused {
            status: status.as_u16(),
            body: text.trim().to_owned(),
        });
    }
    let url = format!("{base}/api/queue/{ticket}");
    let follow = async {
        let mut last: Option<QueueUpdate> = None;
        let mut answer = first;
        loop {
            match answer["state"].as_str() {
                Some("taken") => {
                    let field = |k: &str| answer[k].as_str().unwrap_or_default().to_owned();
                    return Ok(Admission {
                        ticket: ticket.clone(),
                        room: field("room"),
                        token: field("token"),
                        url: field("url"),
                    });
                }
                Some("waiting") | None => {
                    let update = QueueUpdate {
                        ticket: ticket.clone(),
                        position: answer["position"].as_u64().unwrap_or(0),
                        estimated_wait_s: answer["estimated_wait_s"].as_u64().unwrap_or(0),
                    };
                    if last.as_ref() != Some(&update) {
                        on_update(&update);
                        last = Some(update);
                    }
                }
                Some(other) => return Err(QueueError::Ended(other.to_owned())),
            }
            tokio::time::sleep(opts.poll).await;
            answer = loop {
                let r = client.get(&url).bearer_auth(token).send().await;
                match r {
                    Ok(r) if r.status().is_success() => break r.json::<Value>().await?,
                    Ok(r)
                        if r.status() == StatusCode::GONE
                            || r.status() == StatusCode::NOT_FOUND =>
                    {
                        let body = r.text().await.unwrap_or_default();
                        return Err(QueueError::Ended(body.trim().to_owned()));
                    }
                    Ok(r) if r.status().is_client_error() => {
                        return Err(QueueError::Refused {
                            status: r.status().as_u16(),
                            body: r.text().await.unwrap_or_default().trim().to_owned(),
                        });
                    }
                    // A server restarting or a store away: keep the place, ask again.
                    Ok(_) | Err(_) => tokio::time::sleep(opts.poll).await,
                }
            };
        }
    };
    tokio::select! {
        r = follow => r,
        () = shutdown => {
            // Best effort: a ticket that was taken meanwhile answers 409 and is left alone.
            let _ = client.delete(&url).bearer_auth(token).send().await;
            Err(QueueError::Stopped)
        }
    }
}

/// Waits in the queue with `config.token` (a kiosk token), then dials the room a doctor opened
/// with the token the server gave, until `shutdown` completes (which cancels a ticket still
/// waiting). `on_update` hears each new position.
pub async fn dial_queued(
    mut config: DialConfig,
    request: &QueueRequest,
    opts: &QueueOptions,
    on_update: impl FnMut(&QueueUpdate),
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(Admission, DialStats), QueueError> {
    let mut shutdown = Box::pin(shutdown);
    let admission = wait_for_doctor(
        &config.server,
        &config.token,
        request,
        opts,
        on_update,
        &mut shutdown,
    )
    .await?;
    config.token = admission.token.clone();
    config.room = Some(admission.room.clone());
    let stats = dial::run(config, shutdown).await?;
    Ok((admission, stats))
}
