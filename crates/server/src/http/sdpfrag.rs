//! The body of a WHIP/WHEP PATCH: an SDP fragment (`application/trickle-ice-sdpfrag`,
//! RFC 8840), parsed once where it enters. Anything that is not SDP lines (`x=value`) with
//! well-formed ICE attributes is refused, so a PATCH of garbage gets `400`, not `204`.

/// A parsed trickle-ICE SDP fragment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SdpFrag {
    /// `a=ice-ufrag`, if present (a new one is an ICE restart).
    pub ufrag: Option<String>,
    /// `a=ice-pwd`, if present.
    pub pwd: Option<String>,
    /// The `a=candidate` lines trickled, as `candidate:…` values.
    pub candidates: Vec<String>,
}

/// Why a fragment was refused (the message names the line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SdpFragError {
    /// The body is not UTF-8.
    #[error("the SDP fragment is not UTF-8")]
    NotUtf8,
    /// The body has no SDP line at all.
    #[error("the SDP fragment is empty")]
    Empty,
    /// Line `n` (1-based) is not `<letter>=<value>`.
    #[error("line {0} of the SDP fragment is not an SDP line (`<letter>=<value>`)")]
    NotSdp(usize),
    /// Line `n` is an `a=candidate` that does not have the RFC 8839 fields.
    #[error("line {0} of the SDP fragment is not a valid a=candidate")]
    BadCandidate(usize),
    /// `a=ice-ufrag` and `a=ice-pwd` must come together and be long enough (RFC 8839).
    #[error(
        "an ICE restart needs both a=ice-ufrag (4 to 256 characters) and a=ice-pwd (22 to 256)"
    )]
    BadCredentials,
}

impl SdpFrag {
    /// Parses a PATCH body.
    pub fn parse(body: &[u8]) -> Result<SdpFrag, SdpFragError> {
        let text = std::str::from_utf8(body).map_err(|_| SdpFragError::NotUtf8)?;
        let mut frag = SdpFrag::default();
        let mut lines = 0;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.is_empty() {
                continue;
            }
            lines += 1;
            let b = line.as_bytes();
            if b.len() < 3 || !b[0].is_ascii_lowercase() || b[1] != b'=' {
                return Err(SdpFragError::NotSdp(i + 1));
            }
            if let Some(v) = line.strip_prefix("a=ice-ufrag:") {
                frag.ufrag = Some(v.trim().to_owned());
            } else if let Some(v) = line.strip_prefix("a=ice-pwd:") {
                frag.pwd = Some(v.trim().to_owned());
            } else if let Some(c) = line.strip_prefix("a=candidate:") {
                if !candidate_ok(c) {
                    return Err(SdpFragError::BadCandidate(i + 1));
                }
                frag.candidates.push(format!("candidate:{c}"));
            }
        }
        if lines == 0 {
            return Err(SdpFragError::Empty);
        }
        match (&frag.ufrag, &frag.pwd) {
            (None, None) => {}
            (Some(u), Some(p))
                if (4..=256).contains(&u.len())
                    && (22..=256).contains(&p.len())
                    && ice_chars(u)
                    && ice_chars(p) => {}
            _ => return Err(SdpFragError::BadCredentials),
        }
        Ok(frag)
    }
}

/// `foundation component transport priority address port typ type ...` (RFC 8839 §5.1).
fn candidate_ok(c: &str) -> bool {
    let f: Vec<&str> = c.split_whitespace().collect();
    f.len() >= 8
        && f[1].parse::<u16>().is_ok()
        && f[3].parse::<u32>().is_ok()
        && f[5].parse::<u16>().is_ok()
        && f[6] == "typ"
}

/// ice-char: ALPHA / DIGIT / "+" / "/".
fn ice_chars(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_refused_and_fragments_parse() {
        assert_eq!(SdpFrag::parse(b"hello"), Err(SdpFragError::NotSdp(1)));
        assert_eq!(SdpFrag::parse(b"\r\n"), Err(SdpFragError::Empty));
        assert_eq!(SdpFrag::parse(&[0xff, 0xfe]), Err(SdpFragError::NotUtf8));
        assert_eq!(
            SdpFrag::parse(b"a=candidate:garbage\r\n"),
            Err(SdpFragError::BadCandidate(1))
        );
        assert_eq!(
            SdpFrag::parse(b"a=ice-ufrag:abcd\r\n"),
            Err(SdpFragError::BadCredentials)
        );
        let f = SdpFrag::parse(
            b"a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
              a=mid:0\r\na=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0\r\n\
              a=end-of-candidates\r\n",
        )
        .unwrap();
        assert_eq!(f.ufrag.as_deref(), Some("EsAw"));
        assert_eq!(f.candidates.len(), 1);
        assert!(
            f.candidates[0].starts_with("candidate:"),
            "{:?}",
            f.candidates
        );
    }
}
