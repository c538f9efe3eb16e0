//! A minimal blocking HTTP/1.1 client for signalling on loopback (WHIP/WHEP, Janus, /metrics):
//! one request per connection, `Content-Length` or read-to-close bodies.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// An HTTP error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// Socket error.
    #[error("http {0}: {1}")]
    Io(String, std::io::Error),
    /// Unparseable response.
    #[error("http {0}: bad response: {1}")]
    BadResponse(String, String),
}

/// A response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body as text.
    pub body: String,
}

impl Response {
    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one request to `addr` and reads the response.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Response, HttpError> {
    let what = format!("{method} {path}");
    let io = |e| HttpError::Io(what.clone(), e);
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io)?;
    let _ = s.set_nodelay(true);
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(io)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| HttpError::BadResponse(what.clone(), "no header end".into()))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            HttpError::BadResponse(what.clone(), head.lines().next().unwrap_or("").into())
        })?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Like [`request`], following up to four `307`/`308` redirects (a Cabine cluster node that
/// does not hold the room points to the one that does) with the same method, headers and
/// body. Plain `http://` only: this client has no TLS.
pub fn request_following(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Response, HttpError> {
    request_traced(addr, method, path, headers, body).map(|(r, _)| r)
}

/// Where a [`request_traced`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Followed {
    /// The address that gave the final answer.
    pub answered_by: SocketAddr,
    /// Redirects followed on the way.
    pub redirects: u32,
}

/// [`request_following`], also telling which address answered and after how many redirects
/// (the cluster benchmark compares joins given the room's node with joins redirected to it).
pub fn request_traced(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(Response, Followed), HttpError> {
    let (mut addr, mut path) = (addr, path.to_owned());
    for redirects in 0..4 {
        let r = request(addr, method, &path, headers, body)?;
        if r.status != 307 && r.status != 308 {
            let f = Followed {
                answered_by: addr,
                redirects,
            };
            return Ok((r, f));
        }
        let location = r.header("location").ok_or_else(|| {
            HttpError::BadResponse(
                format!("{method} {path}"),
                "redirect without Location".into(),
            )
        })?;
        (addr, path) = resolve(addr, location)
            .map_err(|why| HttpError::BadResponse(format!("{method} {path}"), why.into()))?;
    }
    Err(HttpError::BadResponse(
        format!("{method} {path}"),
        "more than 4 redirects".into(),
    ))
}

/// The address and path a `Location` (plain `http://` or a path on `from`) points to.
pub fn resolve(from: SocketAddr, location: &str) -> Result<(SocketAddr, String), &'static str> {
    match location.strip_prefix("http://") {
        Some(rest) => {
            let (host, p) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let addr = std::net::ToSocketAddrs::to_socket_addrs(host)
                .ok()
                .and_then(|mut a| a.next())
                .ok_or("redirect to an unresolvable host")?;
            Ok((addr, if p.is_empty() { "/".into() } else { p.into() }))
        }
        None if location.starts_with('/') => Ok((from, location.to_owned())),
        None => Err("redirect to a URL this client cannot follow"),
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Serves one connection: reads the request, answers `reply`; returns the request.
    fn serve_once(l: TcpListener, reply: String) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            // The request has a body of known length: read until it is all there.
            loop {
                let n = s.read(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
                let t = String::from_utf8_lossy(&got);
                if n == 0 || (t.contains("\r\n\r\n") && t.ends_with("offer")) {
                    break;
                }
            }
            s.write_all(reply.as_bytes()).unwrap();
            String::from_utf8_lossy(&got).into_owned()
        })
    }

    #[test]
    fn a_307_is_followed_with_the_same_body_and_headers() {
        let owner = TcpListener::bind("127.0.0.1:0").unwrap();
        let owner_addr = owner.local_addr().unwrap();
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let first_addr = first.local_addr().unwrap();
        let a = serve_once(
            first,
            format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://{owner_addr}/whip/r\r\n\
                 Content-Length: 0\r\n\r\n"
            ),
        );
        let b = serve_once(
            owner,
            "HTTP/1.1 201 Created\r\nContent-Length: 6\r\n\r\nanswer".into(),
        );
        let (r, followed) = request_traced(
            first_addr,
            "POST",
            "/whip/r",
            &[("Authorization", "Bearer t")],
            "offer",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_str()), (201, "answer"));
        assert_eq!(
            followed,
            Followed {
                answered_by: owner_addr,
                redirects: 1
            }
        );
        let (a, b) = (a.join().unwrap(), b.join().unwrap());
        for req in [a, b] {
            assert!(req.starts_with("POST /whip/r "), "{req}");
            assert!(req.contains("Authorization: Bearer t"), "{req}");
            assert!(req.ends_with("offer"), "{req}");
        }
    }
}
