//! The ICE servers a WHIP/WHEP endpoint hands out as `Link: <url>; rel="ice-server"` headers
//! (RFC 9725 §4.6), with TURN credentials as `username`, `credential` and
//! `credential-type="password"` parameters. The client asks for them with an `OPTIONS` request
//! before it creates its peer connection (it gathers candidates before the `POST`).

use reqwest::header::{AUTHORIZATION, LINK};
use reqwest::{Client, Url};

use crate::options::IceServer;

/// Parses `Link` header values; links whose `rel` is not `ice-server`, and malformed ones, are
/// skipped.
pub fn parse_ice_links<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<IceServer> {
    let mut out = Vec::new();
    for value in values {
        for link in split_outside_quotes(value, ',') {
            if let Some(server) = parse_link(link) {
                out.push(server);
            }
        }
    }
    out
}

/// `OPTIONS endpoint` with the token; the ICE servers of its `Link` headers. Any failure (no
/// answer, a server that does not implement `OPTIONS`) is an empty list: the servers are an
/// optional hint.
pub(crate) async fn fetch(client: &Client, endpoint: &Url, token: &str) -> Vec<IceServer> {
    let mut req = client.request(reqwest::Method::OPTIONS, endpoint.clone());
    if !token.is_empty() {
        req = req.header(AUTHORIZATION, format!("Bearer {token}"));
    }
    match req.send().await {
        Ok(resp) if resp.status().is_success() => parse_ice_links(
            resp.headers()
                .get_all(LINK)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        ),
        Ok(resp) => {
            tracing::debug!(status = %resp.status(), "OPTIONS gave no ICE servers");
            Vec::new()
        }
        Err(e) => {
            tracing::debug!(error = %e, "OPTIONS failed; no ICE servers from the endpoint");
            Vec::new()
        }
    }
}

fn parse_link(link: &str) -> Option<IceServer> {
    let link = link.trim();
    let rest = link.strip_prefix('<')?;
    let (url, params) = rest.split_once('>')?;
    let (mut rel, mut username, mut credential) = (None, String::new(), String::new());
    for param in split_outside_quotes(params, ';') {
        let Some((key, value)) = param.split_once('=') else {
            continue;
        };
        let value = unquote(value.trim());
        match key.trim().to_ascii_lowercase().as_str() {
            "rel" => rel = Some(value),
            "username" => username = value,
            "credential" => credential = value,
            _ => {}
        }
    }
    let is_ice = rel?
        .split_ascii_whitespace()
        .any(|r| r.eq_ignore_ascii_case("ice-server"));
    (is_ice && !url.is_empty()).then(|| IceServer {
        urls: vec![url.to_owned()],
        username,
        credential,
    })
}

/// Splits at `sep` outside double quotes and angle brackets.
fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let (mut parts, mut start, mut quoted, mut escaped, mut angle) =
        (Vec::new(), 0, false, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' if !angle => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            c if c == sep && !quoted && !angle => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn unquote(v: &str) -> String {
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        out.push(n);
                    }
                } else {
                    out.push(c);
                }
            }
            out
        }
        None => v.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stun_and_turn_links_with_credentials() {
        let got = parse_ice_links([
            "<stun:s.example:3478>; rel=\"ice-server\"",
            "<turn:t.example:3478?transport=udp>; rel=\"ice-server\"; username=\"1700003600:a,b\"; \
             credential=\"pw+/=\"; credential-type=\"password\", <https://x/>; rel=\"next\"",
            "<turns:t.example:443?transport=tcp>; rel=ice-server; username=u; credential=\"q\\\"x\"",
            "not a link",
        ]);
        assert_eq!(
            got,
            [
                IceServer::stun("stun:s.example:3478"),
                IceServer::turn(
                    "turn:t.example:3478?transport=udp",
                    "1700003600:a,b",
                    "pw+/="
                ),
                IceServer::turn("turns:t.example:443?transport=tcp", "u", "q\"x"),
            ]
        );
    }
}
