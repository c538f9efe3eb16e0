//! Error types.

use std::fmt;
use std::time::Duration;

/// Result alias used throughout this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A WHIP/WHEP HTTP request answered with an unexpected status code.
///
/// Returned (inside [`Error::Http`]) when the offer `POST` does not get `201 Created`, or when
/// the `DELETE` of the session resource does not get a `2xx`. Tests use it to check the
/// server's refusals (`400`, `401`, `403`, `404`, `503`…).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    /// The request method (`"POST"`, `"DELETE"`).
    pub method: &'static str,
    /// The request URL.
    pub url: String,
    /// The HTTP status code received.
    pub status: u16,
    /// The response body, decoded as UTF-8 (lossily); empty if there was none.
    pub body: String,
    /// The `WWW-Authenticate` header, if the server sent one (expected with `401`).
    pub www_authenticate: Option<String>,
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} returned HTTP {}",
            self.method, self.url, self.status
        )?;
        let body = self.body.trim();
        if !body.is_empty() {
            // Keep error messages bounded: bodies can be whole HTML pages.
            let mut end = body.len().min(200);
            while !body.is_char_boundary(end) {
                end -= 1;
            }
            write!(f, ": {}", &body[..end])?;
            if end < body.len() {
                f.write_str("…")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for HttpError {}

/// Everything that can go wrong in the kiosk client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The WHIP/WHEP endpoint URL (or a `Location` header) could not be parsed.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The offending URL text.
        url: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The bearer token contains characters that cannot be sent in an HTTP header.
    #[error("the token cannot be sent in an Authorization header")]
    InvalidToken,
    /// The local bridge to a TURN server over TLS or TCP could not start.
    #[error("TURN over TLS/TCP: {0}")]
    TurnBridge(String),
    /// The local bridge to the server's ICE-TCP candidate could not start.
    #[error("ICE-TCP bridge: {0}")]
    IceTcpBridge(String),
    /// The HTTP client could not be built (e.g. no TLS backend available).
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
    /// A [`TrackSpec`](crate::TrackSpec) is inconsistent (codec of the wrong kind, bad msid
    /// label, bad or duplicate RID…).
    #[error("invalid track spec: {0}")]
    InvalidTrack(String),
    /// The HTTP request could not be made or its response could not be read (connection
    /// refused, TLS failure, HTTP timeout…).
    #[error("{method} {url} failed: {source}")]
    Transport {
        /// The request method.
        method: &'static str,
        /// The request URL.
        url: String,
        /// The underlying HTTP client error.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an unexpected HTTP status.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The server answered `201` but the response breaks WHIP/WHEP (no `Location`, wrong
    /// content type, empty SDP…).
    #[error("protocol violation by {url}: {reason}")]
    Protocol {
        /// The request URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// An operation of the `webrtc` stack failed.
    #[error("webrtc: {context}: {source}")]
    WebRtc {
        /// What the client was doing.
        context: &'static str,
        /// The error reported by `webrtc`.
        #[source]
        source: webrtc::Error,
    },
    /// Something did not happen in time.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: &'static str,
        /// How long the client waited.
        after: Duration,
    },
    /// The peer connection reached `failed` or `closed` before being connected.
    #[error("peer connection {state} before it was connected")]
    ConnectionFailed {
        /// The state reached (`"failed"`, `"closed"`).
        state: String,
    },
    /// The session (or track) is closed; no more data will come.
    #[error("session closed")]
    Closed,
    /// No simulcast layer with this RID exists on the track.
    #[error("no simulcast layer with rid {0:?}")]
    UnknownRid(String),
}

impl Error {
    /// The HTTP status code, if this is an [`Error::Http`].
    pub fn http_status(&self) -> Option<u16> {
        match self {
            Error::Http(e) => Some(e.status),
            _ => None,
        }
    }

    /// The [`HttpError`], if this is an [`Error::Http`].
    pub fn as_http(&self) -> Option<&HttpError> {
        match self {
            Error::Http(e) => Some(e),
            _ => None,
        }
    }

    pub(crate) fn webrtc(context: &'static str) -> impl FnOnce(webrtc::Error) -> Error {
        move |source| Error::WebRtc { context, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_error_display_truncates_body() {
        let e = HttpError {
            method: "POST",
            url: "http://x/whip/r".into(),
            status: 401,
            body: "é".repeat(300),
            www_authenticate: None,
        };
        let s = e.to_string();
        assert!(s.starts_with("POST http://x/whip/r returned HTTP 401: é"));
        assert!(s.ends_with('…'));
        let err = Error::from(e);
        assert_eq!(err.http_status(), Some(401));
    }
}
