//! The WHIP/WHEP HTTP exchange and the lifetime of one session (shared by publishers and
//! subscribers).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_TYPE, ETAG, LOCATION};
use reqwest::{Client, StatusCode, Url};
use tokio::sync::watch;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::RTCPeerConnection;

use crate::engine;
use crate::error::{Error, HttpError, Result};
use crate::options::ClientOptions;

const SDP_MIME: &str = "application/sdp";

/// Parses a WHIP/WHEP endpoint URL.
pub(crate) fn parse_endpoint(url: &str) -> Result<Url> {
    let parsed = Url::parse(url).map_err(|e| Error::InvalidUrl {
        url: url.to_owned(),
        reason: e.to_string(),
    })?;
    match parsed.scheme() {
        "http" | "https" => Ok(parsed),
        other => Err(Error::InvalidUrl {
            url: url.to_owned(),
            reason: format!("unsupported scheme {other:?} (expected http or https)"),
        }),
    }
}

/// Most redirects followed for one request (a Cabine cluster needs one: to the room's node).
pub const MAX_REDIRECTS: usize = 4;

/// Builds the HTTP client for one session. Redirects are followed by hand
/// ([`follow_redirect`]): reqwest drops the `Authorization` header on a redirect to another
/// host or port, which is exactly where a cluster sends a room's requests.
pub fn http_client(opts: &ClientOptions) -> Result<Client> {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(opts.http_timeout)
        .danger_accept_invalid_certs(opts.accept_invalid_certs)
        .build()
        .map_err(Error::HttpClient)
}

/// How this client reaches its TURN relays, when every TURN URL it was given says the same:
/// `tls` (`turns:`, whatever its `transport`: TLS over TCP, or DTLS with `transport=udp`),
/// `tcp` (`turn:…?transport=tcp`) or `udp`. The server sees only the relay's UDP and shows
/// this for the session while its selected pair is relayed. With mixed URLs the POST says
/// nothing: once connected, [`selected_relay_protocol`] tells and the session's resource is
/// `PATCH`ed with it.
pub(crate) fn relay_protocol(servers: &[crate::IceServer]) -> Option<&'static str> {
    let mut found = None;
    for url in servers.iter().flat_map(|s| &s.urls) {
        let p = if url.starts_with("turns:") {
            "tls"
        } else if url.starts_with("turn:") {
            if url.contains("transport=tcp") {
                "tcp"
            } else {
                "udp"
            }
        } else {
            continue;
        };
        match found {
            None => found = Some(p),
            Some(f) if f == p => {}
            Some(_) => return None,
        }
    }
    found
}

/// The `Cabine-Relay-Protocol` header of a WHIP/WHEP `POST`, when known.
fn relay_header(relay: Option<&'static str>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(p) = relay {
        headers.insert(
            "cabine-relay-protocol",
            reqwest::header::HeaderValue::from_static(p),
        );
    }
    headers
}

fn auth_headers(token: &str) -> Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    if !token.is_empty() {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| Error::InvalidToken)?;
        headers.insert(AUTHORIZATION, value);
    }
    Ok(headers)
}

fn header_str(headers: &HeaderMap, name: reqwest::header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// `opts` with the endpoint's ICE servers appended (when
/// [`ClientOptions::endpoint_ice_servers`] is set): the `OPTIONS` request of RFC 9725 §4.6,
/// made before the peer connection exists because candidates are gathered before the `POST`.
pub(crate) async fn with_endpoint_ice(
    endpoint: &str,
    token: &str,
    mut opts: ClientOptions,
) -> Result<ClientOptions> {
    if opts.endpoint_ice_servers {
        let url = parse_endpoint(endpoint)?;
        let client = http_client(&opts)?;
        let servers = crate::ice_links::fetch(&client, &url, token).await;
        tracing::debug!(count = servers.len(), "ICE servers from the endpoint");
        opts.ice_servers.extend(servers);
    }
    Ok(opts)
}

/// The session resource created by a successful offer `POST`.
#[derive(Debug, Clone)]
pub(crate) struct Resource {
    /// Absolute URL of the session (the `Location` header resolved against the endpoint).
    pub url: Url,
    /// The `ETag` header, if any.
    pub etag: Option<String>,
}

/// Where a `307`/`308` answer to `from` points (its `Location` resolved against `from`), if it
/// is one; only to `http`/`https`, and never from `https` to `http` (the token is sent again
/// to the target: it must not leave TLS).
pub fn follow_redirect(from: &Url, status: StatusCode, headers: &HeaderMap) -> Option<Url> {
    if status != StatusCode::TEMPORARY_REDIRECT && status != StatusCode::PERMANENT_REDIRECT {
        return None;
    }
    let next = from.join(&header_str(headers, LOCATION)?).ok()?;
    let allowed = match from.scheme() {
        "https" => next.scheme() == "https",
        _ => matches!(next.scheme(), "http" | "https"),
    };
    allowed.then_some(next)
}

/// `POST`s an SDP offer; returns the session resource and the SDP answer. A `307`/`308` (a
/// cluster node that does not hold the room) is followed with the same offer and token; the
/// session's `Location` resolves against the URL that answered.
pub(crate) async fn post_offer(
    client: &Client,
    endpoint: &Url,
    token: &str,
    offer: String,
    relay: Option<&'static str>,
) -> Result<(Resource, String)> {
    let mut endpoint = endpoint.clone();
    let mut hops = 0;
    let response = loop {
        let url = endpoint.to_string();
        let response = client
            .post(endpoint.clone())
            .headers(auth_headers(token)?)
            .header(CONTENT_TYPE, SDP_MIME)
            .header(ACCEPT, SDP_MIME)
            .headers(relay_header(relay))
            .body(offer.clone())
            .send()
            .await
            .map_err(|source| Error::Transport {
                method: "POST",
                url,
                source,
            })?;
        match follow_redirect(&endpoint, response.status(), response.headers()) {
            Some(next) if hops < MAX_REDIRECTS => {
                hops += 1;
                endpoint = next;
            }
            _ => break response,
        }
    };
    let endpoint = &endpoint;
    let url = endpoint.to_string();
    let transport = |source| Error::Transport {
        method: "POST",
        url: url.clone(),
        source,
    };
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await.map_err(transport)?;
    let body = String::from_utf8_lossy(&body).into_owned();
    if status != StatusCode::CREATED {
        return Err(HttpError {
            method: "POST",
            url,
            status: status.as_u16(),
            body,
            www_authenticate: header_str(&headers, reqwest::header::WWW_AUTHENTICATE),
        }
        .into());
    }
    let protocol = |reason: String| Error::Protocol {
        url: url.clone(),
        reason,
    };
    let content_type = header_str(&headers, CONTENT_TYPE).unwrap_or_default();
    let mime = content_type.split(';').next().unwrap_or_default().trim();
    if !mime.eq_ignore_ascii_case(SDP_MIME) {
        return Err(protocol(format!(
            "201 response has Content-Type {content_type:?}, expected {SDP_MIME}"
        )));
    }
    if body.trim().is_empty() {
        return Err(protocol("201 response has an empty SDP answer".into()));
    }
    let location = header_str(&headers, LOCATION)
        .ok_or_else(|| protocol("201 response has no Location header".into()))?;
    let resource_url = endpoint.join(&location).map_err(|e| Error::InvalidUrl {
        url: location.clone(),
        reason: e.to_string(),
    })?;
    Ok((
        Resource {
            url: resource_url,
            etag: header_str(&headers, ETAG),
        },
        body,
    ))
}

/// `DELETE`s a session resource; any `2xx` is success.
pub(crate) async fn delete_resource(client: &Client, resource: &Url, token: &str) -> Result<()> {
    let url = resource.to_string();
    let transport = |source| Error::Transport {
        method: "DELETE",
        url: url.clone(),
        source,
    };
    let response = client
        .delete(resource.clone())
        .headers(auth_headers(token)?)
        .send()
        .await
        .map_err(transport)?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let www_authenticate = header_str(response.headers(), reqwest::header::WWW_AUTHENTICATE);
    let body = response.bytes().await.map_err(transport)?;
    Err(HttpError {
        method: "DELETE",
        url,
        status: status.as_u16(),
        body: String::from_utf8_lossy(&body).into_owned(),
        www_authenticate,
    }
    .into())
}

/// How the selected candidate pair's local candidate reaches its TURN relay, when it is a
/// relay candidate: the pair from the ICE agent's stats, its relay address matched to the
/// gathered `offer`'s candidate line, whose `rport` (the TURN client's UDP port) names the
/// stream bridge that carried it (`tls`/`tcp`), else `udp`.
pub(crate) async fn selected_relay_protocol(
    pc: &RTCPeerConnection,
    offer: &str,
    sources: &crate::turn_tls::RelaySources,
) -> Option<&'static str> {
    use webrtc::ice::candidate::CandidatePairState;
    use webrtc::ice::candidate::CandidateType;
    use webrtc::stats::StatsReportType;
    let stats = pc.get_stats().await;
    let local_id = stats.reports.values().find_map(|r| match r {
        StatsReportType::CandidatePair(p)
            if p.nominated && p.state == CandidatePairState::Succeeded =>
        {
            Some(p.local_candidate_id.clone())
        }
        _ => None,
    })?;
    let (ip, port) = stats.reports.values().find_map(|r| match r {
        StatsReportType::LocalCandidate(c)
            if c.id == local_id && c.candidate_type == CandidateType::Relay =>
        {
            Some((c.ip.clone(), c.port))
        }
        _ => None,
    })?;
    let rport = relay_rport(offer, &ip, port)?;
    let streams = sources.lock().ok()?;
    Some(streams.get(&rport).copied().unwrap_or("udp"))
}

/// The `rport` of `offer`'s relay candidate at `ip`:`port`.
fn relay_rport(offer: &str, ip: &str, port: u16) -> Option<u16> {
    offer.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // a=candidate:<foundation> <component> <transport> <priority> <ip> <port> typ relay ...
        let relay = f.len() > 7 && f[6] == "typ" && f[7] == "relay";
        if !(relay && f[0].starts_with("a=candidate:") && f[4] == ip && f[5] == port.to_string()) {
            return None;
        }
        let i = f.iter().position(|w| *w == "rport")?;
        f.get(i + 1)?.parse().ok()
    })
}

/// `PATCH`es the session's resource with the relay transport its selected pair uses.
async fn report_relay(
    client: &Client,
    resource: &Url,
    token: &str,
    protocol: &'static str,
) -> Result<()> {
    let url = resource.to_string();
    let transport = |source| Error::Transport {
        method: "PATCH",
        url: url.clone(),
        source,
    };
    let response = client
        .patch(resource.clone())
        .headers(auth_headers(token)?)
        .headers(relay_header(Some(protocol)))
        .send()
        .await
        .map_err(transport)?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let www_authenticate = header_str(response.headers(), reqwest::header::WWW_AUTHENTICATE);
    let body = response.bytes().await.map_err(transport)?;
    Err(HttpError {
        method: "PATCH",
        url,
        status: status.as_u16(),
        body: String::from_utf8_lossy(&body).into_owned(),
        www_authenticate,
    }
    .into())
}

/// A negotiated WHIP or WHEP session: the peer connection and its HTTP resource.
pub(crate) struct Session {
    pub pc: Arc<RTCPeerConnection>,
    pub state: watch::Receiver<RTCPeerConnectionState>,
    client: Client,
    token: String,
    pub resource: Resource,
    pub offer: String,
    pub answer: String,
    closed: AtomicBool,
    /// The ICE-TCP bridge, when [`ClientOptions::ice_tcp`] made one (stops when dropped).
    _bridge: Option<crate::ice_tcp::Bridge>,
}

impl Session {
    /// Gathers the offer already configured on `pc`, `POST`s it, applies the answer and waits
    /// for the connection. On failure after the `POST` succeeded, the server resource is
    /// deleted (best effort) and the peer connection closed.
    pub(crate) async fn negotiate(
        endpoint: &str,
        token: &str,
        peer: engine::NewPeer,
        opts: &ClientOptions,
    ) -> Result<Session> {
        let engine::NewPeer {
            pc,
            mut state,
            relay_sources,
        } = peer;
        let result = async {
            let endpoint = parse_endpoint(endpoint)?;
            let client = http_client(opts)?;
            let offer = engine::gather_offer(&pc, opts.gather_timeout).await?;
            let offer = engine::strip_simulcast_ssrcs(&offer);
            let relay = relay_protocol(&opts.ice_servers);
            let (resource, answer) =
                post_offer(&client, &endpoint, token, offer.clone(), relay).await?;
            let (applied, bridge) = if opts.ice_tcp {
                crate::ice_tcp::bridge_answer(&answer).await?
            } else {
                (answer.clone(), None)
            };
            // A relay in front of the media port (`media_via`) replaces every candidate.
            let applied = match opts.media_via {
                Some(via) => engine::redirect_candidates(&applied, via),
                None => applied,
            };
            let connected = async {
                engine::apply_answer(&pc, applied).await?;
                engine::wait_connected(&mut state, opts.connect_timeout).await
            }
            .await;
            if let Err(e) = connected {
                if let Err(del) = delete_resource(&client, &resource.url, token).await {
                    tracing::debug!(error = %del, "cleanup DELETE failed");
                }
                return Err(e);
            }
            // Relayed: the TURN transport actually used (with mixed TURN URLs the POST could
            // not say), on the session's resource. The server keeps it only while it sees the
            // session relayed; a failure leaves the transport `unknown`, nothing else.
            if let Some(used) = selected_relay_protocol(&pc, &offer, &relay_sources).await {
                if relay != Some(used) {
                    if let Err(e) = report_relay(&client, &resource.url, token, used).await {
                        tracing::debug!(error = %e, "reporting the relay transport failed");
                    }
                }
            }
            Ok((client, resource, offer, answer, bridge))
        }
        .await;
        match result {
            Ok((client, resource, offer, answer, bridge)) => Ok(Session {
                _bridge: bridge,
                pc,
                state,
                client,
                token: token.to_owned(),
                resource,
                offer,
                answer,
                closed: AtomicBool::new(false),
            }),
            Err(e) => {
                if let Err(close) = pc.close().await {
                    tracing::debug!(error = %close, "closing peer connection failed");
                }
                Err(e)
            }
        }
    }

    /// `DELETE`s the resource and closes the peer connection (both are attempted; the first
    /// error is returned).
    pub(crate) async fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let deleted = delete_resource(&self.client, &self.resource.url, &self.token).await;
        let closed = self
            .pc
            .close()
            .await
            .map_err(Error::webrtc("closing peer connection"));
        deleted.and(closed)
    }

    /// The current peer connection state.
    pub(crate) fn connection_state(&self) -> RTCPeerConnectionState {
        *self.state.borrow()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        // Not closed explicitly: end the session in the background if a runtime is still
        // around (best effort; `close()` is the reliable way).
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let pc = Arc::clone(&self.pc);
            let client = self.client.clone();
            let url = self.resource.url.clone();
            let token = std::mem::take(&mut self.token);
            handle.spawn(async move {
                let _ = delete_resource(&client, &url, &token).await;
                let _ = pc.close().await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_relay_candidate_s_rport_is_found_by_its_address() {
        let offer = "v=0\r\n\
            a=candidate:1 1 udp 2130706431 10.0.0.2 50000 typ host\r\n\
            a=candidate:2 1 udp 16777215 192.0.2.7 61000 typ relay raddr 0.0.0.0 rport 40001\r\n\
            a=candidate:3 1 udp 16777215 192.0.2.7 61002 typ relay raddr 0.0.0.0 rport 40002\r\n";
        assert_eq!(super::relay_rport(offer, "192.0.2.7", 61002), Some(40002));
        assert_eq!(super::relay_rport(offer, "192.0.2.7", 61000), Some(40001));
        assert_eq!(
            super::relay_rport(offer, "10.0.0.2", 50000),
            None,
            "not relay"
        );
        assert_eq!(super::relay_rport(offer, "192.0.2.8", 61000), None);
    }

    #[test]
    fn the_relay_protocol_is_reported_when_every_turn_url_agrees() {
        let turn = |urls: &[&str]| {
            vec![crate::IceServer {
                urls: urls.iter().map(|u| u.to_string()).collect(),
                ..crate::IceServer::default()
            }]
        };
        let p = |urls: &[&str]| super::relay_protocol(&turn(urls));
        assert_eq!(p(&["turns:t:443?transport=tcp"]), Some("tls"));
        // turns: over UDP is DTLS: a secured relay, not plain udp.
        assert_eq!(p(&["turns:t:443?transport=udp"]), Some("tls"));
        assert_eq!(p(&["turn:t:3478?transport=tcp"]), Some("tcp"));
        assert_eq!(p(&["turn:t:3478?transport=udp"]), Some("udp"));
        assert_eq!(p(&["turn:t:3478"]), Some("udp"));
        assert_eq!(
            p(&["turns:t:443?transport=tcp", "turn:t:3478?transport=udp"]),
            None,
            "mixed transports: no report (the server shows relay/unknown)"
        );
        assert_eq!(p(&["stun:t:3478"]), None);
    }

    use super::*;

    fn location(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(LOCATION, v.parse().unwrap());
        h
    }

    #[test]
    fn redirects_resolve_against_the_url_that_answered() {
        let from = Url::parse("http://a:8080/whip/room?x=1").unwrap();
        let next = follow_redirect(
            &from,
            StatusCode::TEMPORARY_REDIRECT,
            &location("http://b:8081/whip/room"),
        );
        assert_eq!(next.unwrap().as_str(), "http://b:8081/whip/room");
        let next = follow_redirect(&from, StatusCode::PERMANENT_REDIRECT, &location("/other"));
        assert_eq!(next.unwrap().as_str(), "http://a:8080/other");
        // Only 307/308 (which keep the method and body), only to http(s).
        assert!(follow_redirect(&from, StatusCode::FOUND, &location("http://b/")).is_none());
        let js = location("javascript:alert(1)");
        assert!(follow_redirect(&from, StatusCode::TEMPORARY_REDIRECT, &js).is_none());
        assert!(
            follow_redirect(&from, StatusCode::TEMPORARY_REDIRECT, &HeaderMap::new()).is_none()
        );
        // Never from https down to http (the bearer token would be sent in clear).
        let tls = Url::parse("https://a:8443/whip/room").unwrap();
        let down = location("http://b:8081/whip/room");
        assert!(follow_redirect(&tls, StatusCode::TEMPORARY_REDIRECT, &down).is_none());
        let up = location("https://b:8444/whip/room");
        assert!(follow_redirect(&tls, StatusCode::TEMPORARY_REDIRECT, &up).is_some());
        assert!(follow_redirect(&from, StatusCode::TEMPORARY_REDIRECT, &up).is_some());
    }
}
