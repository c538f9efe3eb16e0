//! `[fhir]`: where a consultation's measurements are exported, how deliveries are retried, and
//! the bounds of what the server keeps until then. Checked once, at start, into
//! [`FhirSettings`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// `[fhir]` as written in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FhirConfig {
    /// Base URL of the FHIR R4 server the transaction Bundles are POSTed to; empty: export off
    /// (and no measurement kept).
    pub endpoint: String,
    /// Directory of the durable outbox; empty: `fhir-outbox` next to `audit.path`.
    pub outbox: PathBuf,
    /// A file whose first line is a bearer token sent to the endpoint; empty: none.
    pub token_file: PathBuf,
    /// Longest wait for one POST's answer.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// First delay before a failed delivery is tried again; doubles up to `retry_max`.
    #[serde(with = "humantime_serde")]
    pub retry_min: Duration,
    /// Longest delay between two attempts.
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// A room is over once it has had no participant and no connected kiosk for this long.
    #[serde(with = "humantime_serde")]
    pub room_end_grace: Duration,
    /// Measurements kept per room until its export; more are refused (counted).
    pub max_measurements_per_room: usize,
    /// Rooms with kept measurements (or a subject) at once; more are refused (counted).
    pub max_rooms: usize,
    /// The most recent span of each ECG channel kept for the export.
    #[serde(with = "humantime_serde")]
    pub waveform_excerpt: Duration,
    /// Bytes of ECG samples kept per room, all channels together; the oldest chunks make
    /// room, a chunk that cannot fit is refused (counted).
    pub max_waveform_bytes_per_room: usize,
    /// Bundles waiting in the outbox at most; a new export beyond is refused (503, counted).
    pub max_pending: usize,
}

/// `[fhir]` checked: what a running export uses.
#[derive(Clone)]
pub struct FhirSettings {
    /// The endpoint.
    pub endpoint: reqwest::Url,
    /// The outbox directory.
    pub outbox: PathBuf,
    /// The bearer token, if any (never logged).
    pub token: Option<String>,
    /// See [`FhirConfig::request_timeout`].
    pub request_timeout: Duration,
    /// See [`FhirConfig::retry_min`].
    pub retry_min: Duration,
    /// See [`FhirConfig::retry_max`].
    pub retry_max: Duration,
    /// See [`FhirConfig::room_end_grace`].
    pub room_end_grace: Duration,
    /// See [`FhirConfig::max_measurements_per_room`].
    pub max_measurements_per_room: usize,
    /// See [`FhirConfig::max_rooms`].
    pub max_rooms: usize,
    /// See [`FhirConfig::waveform_excerpt`].
    pub waveform_excerpt: Duration,
    /// See [`FhirConfig::max_waveform_bytes_per_room`].
    pub max_waveform_bytes_per_room: usize,
    /// See [`FhirConfig::max_pending`].
    pub max_pending: usize,
}

impl std::fmt::Debug for FhirSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FhirSettings")
            .field("endpoint", &self.endpoint.as_str())
            .field("outbox", &self.outbox)
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .field("request_timeout", &self.request_timeout)
            .field("retry_min", &self.retry_min)
            .field("retry_max", &self.retry_max)
            .finish_non_exhaustive()
    }
}

/// Why `[fhir]` is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FhirConfigError {
    /// The endpoint is not an http(s) URL.
    #[error("fhir.endpoint = {value:?} is not a usable URL: {reason}")]
    Endpoint {
        /// The value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Plain HTTP to a host that is not the loopback.
    #[error(
        "fhir.endpoint = {0:?} sends health data over plain HTTP; use https:// (plain http:// \
         is accepted only to a loopback address)"
    )]
    Insecure(String),
    /// No outbox directory and no audit directory to put it in.
    #[error(
        "fhir.endpoint is set but fhir.outbox is empty and so is audit.path: set fhir.outbox to \
         a directory on durable storage (exports wait there until delivered)"
    )]
    NoOutbox,
    /// The token file cannot be read.
    #[error("fhir.token_file {path}: {source}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The token file's first line is empty or not a header value.
    #[error("fhir.token_file {0}: the first line is empty or holds characters a header cannot")]
    BadToken(PathBuf),
    /// A bound is zero or out of its range.
    #[error("fhir.{key} = {value}: {want}")]
    Bound {
        /// The key.
        key: &'static str,
        /// The value given.
        value: String,
        /// What is expected.
        want: &'static str,
    },
}

impl FhirConfig {
    /// Checks the section; `None` when the export is off (no endpoint). `audit_path` is
    /// `audit.path`, next to which the outbox goes by default.
    pub fn load(&self, audit_path: &Path) -> Result<Option<FhirSettings>, FhirConfigError> {
        let raw = self.endpoint.trim();
        if raw.is_empty() {
            return Ok(None);
        }
        let endpoint = parse_endpoint(raw)?;
        let outbox = if !self.outbox.as_os_str().is_empty() {
            self.outbox.clone()
        } else if !audit_path.as_os_str().is_empty() {
            audit_path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .join("fhir-outbox")
        } else {
            return Err(FhirConfigError::NoOutbox);
        };
        let token = if self.token_file.as_os_str().is_empty() {
            None
        } else {
            let text = std::fs::read_to_string(&self.token_file).map_err(|source| {
                FhirConfigError::TokenFile {
                    path: self.token_file.clone(),
                    source,
                }
            })?;
            let line = text.lines().next().unwrap_or("").trim().to_owned();
            if line.is_empty() || reqwest::header::HeaderValue::from_str(&line).is_err() {
                return Err(FhirConfigError::BadToken(self.token_file.clone()));
            }
            Some(line)
        };
        let bound = |key, value: String, want| FhirConfigError::Bound { key, value, want };
        for (key, d) in [
            ("request_timeout", self.request_timeout),
            ("retry_min", self.retry_min),
            ("room_end_grace", self.room_end_grace),
            ("waveform_excerpt", self.waveform_excerpt),
        ] {
            if d.is_zero() {
                return Err(bound(key, "0s".into(), "give a duration such as \"10s\""));
            }
        }
        if self.retry_max < self.retry_min {
            return Err(bound(
                "retry_max",
                humantime::format_duration(self.retry_max).to_string(),
                "must be at least fhir.retry_min",
            ));
        }
        if self.waveform_excerpt > Duration::from_secs(60) {
            return Err(bound(
                "waveform_excerpt",
                humantime::format_duration(self.waveform_excerpt).to_string(),
                "an excerpt is at most 60s",
            ));
        }
        for (key, n) in [
            ("max_measurements_per_room", self.max_measurements_per_room),
            ("max_rooms", self.max_rooms),
            ("max_pending", self.max_pending),
            (
                "max_waveform_bytes_per_room",
                self.max_waveform_bytes_per_room,
            ),
        ] {
            if n == 0 {
                return Err(bound(key, "0".into(), "must be at least 1"));
            }
        }
        Ok(Some(FhirSettings {
            endpoint,
            outbox,
            token,
            request_timeout: self.request_timeout,
            retry_min: self.retry_min,
            retry_max: self.retry_max,
            room_end_grace: self.room_end_grace,
            max_measurements_per_room: self.max_measurements_per_room,
            max_rooms: self.max_rooms,
            waveform_excerpt: self.waveform_excerpt,
            max_waveform_bytes_per_room: self.max_waveform_bytes_per_room,
            max_pending: self.max_pending,
        }))
    }
}

fn parse_endpoint(raw: &str) -> Result<reqwest::Url, FhirConfigError> {
    let bad = |reason: &str| FhirConfigError::Endpoint {
        value: raw.to_owned(),
        reason: reason.to_owned(),
    };
    let url = reqwest::Url::parse(raw).map_err(|e| bad(&e.to_string()))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "credentials in the URL would be logged; use fhir.token_file",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("a FHIR base URL has no query or fragment"));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" => {
            let host = url.host_str().unwrap_or("");
            let loopback = host.eq_ignore_ascii_case("localhost")
                || host
                    .trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(url)
            } else {
                Err(FhirConfigError::Insecure(raw.to_owned()))
            }
        }
        _ => Err(bad(
            "the scheme must be https (or http to a loopback address)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(endpoint: &str) -> FhirConfig {
        FhirConfig {
            endpoint: endpoint.into(),
            outbox: PathBuf::new(),
            token_file: PathBuf::new(),
            request_timeout: Duration::from_secs(10),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            room_end_grace: Duration::from_secs(15),
            max_measurements_per_room: 10,
            max_rooms: 10,
            waveform_excerpt: Duration::from_secs(10),
            max_waveform_bytes_per_room: 1 << 20,
            max_pending: 10,
        }
    }

    #[test]
    fn off_by_default_and_checked_when_on() {
        assert!(config("").load(Path::new("")).unwrap().is_none());
        let e = config("https://fhir.example.fr/r4")
            .load(Path::new(""))
            .unwrap_err();
        assert!(matches!(e, FhirConfigError::NoOutbox), "{e}");
        let s = config("https://fhir.example.fr/r4")
            .load(Path::new("/var/log/cabine/audit.jsonl"))
            .unwrap()
            .unwrap();
        assert_eq!(s.outbox, Path::new("/var/log/cabine/fhir-outbox"));
        let e = config("http://fhir.example.fr/r4")
            .load(Path::new("/a/b"))
            .unwrap_err();
        assert!(e.to_string().contains("plain HTTP"), "{e}");
        assert!(config("http://127.0.0.1:9/fhir")
            .load(Path::new("/a/b"))
            .is_ok());
        let e = config("https://u:p@fhir.example.fr/")
            .load(Path::new("/a/b"))
            .unwrap_err();
        assert!(e.to_string().contains("token_file"), "{e}");
        let mut c = config("https://fhir.example.fr/");
        c.retry_max = Duration::from_millis(10);
        let e = c.load(Path::new("/a/b")).unwrap_err();
        assert!(e.to_string().contains("fhir.retry_max"), "{e}");
        let mut c = config("https://fhir.example.fr/");
        c.max_pending = 0;
        let e = c.load(Path::new("/a/b")).unwrap_err();
        assert!(e.to_string().contains("fhir.max_pending"), "{e}");
        let mut c = config("https://fhir.example.fr/");
        c.token_file = "/nonexistent/cabine-fhir-token".into();
        let e = c.load(Path::new("/a/b")).unwrap_err();
        assert!(e.to_string().contains("fhir.token_file"), "{e}");
    }
}
