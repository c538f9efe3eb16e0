//! Small edits and checks on SDP text that the media engine does not offer.
//!
//! str0m answers a subscriber's recv-only offer with random `msid` labels; a kiosk's tracks must
//! reach the doctor with their labels (`room-camera`, `stethoscope`, …) so the page knows which
//! is which, so [`set_msid`] writes the publisher's labels into the answer.

/// A track label as carried by `a=msid:<stream> <track>`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Label {
    /// The media stream id (groups tracks that play in sync).
    pub stream: String,
    /// The track id: what the track is ("room-camera", "stethoscope", …).
    pub track: String,
}

/// Rewrites, in the m-section whose `a=mid` is `mid`, the `a=msid` line (adding one if absent)
/// and the `msid` of its `a=ssrc` lines, to `label`.
pub fn set_msid(sdp: &str, mid: &str, label: &Label) -> String {
    let msid = format!("{} {}", label.stream, label.track);
    let mut out = String::with_capacity(sdp.len() + 64);
    let mut in_target = false;
    let mut section: Vec<&str> = Vec::new();
    let flush = |section: &mut Vec<&str>, in_target: bool, out: &mut String| {
        let has_msid = section.iter().any(|l| l.starts_with("a=msid:"));
        for line in section.drain(..) {
            if in_target && line.starts_with("a=msid:") {
                out.push_str("a=msid:");
                out.push_str(&msid);
            } else if in_target && line.starts_with("a=ssrc:") && line.contains(" msid:") {
                let (head, _) = line.split_once(" msid:").unwrap_or((line, ""));
                out.push_str(head);
                out.push_str(" msid:");
                out.push_str(&msid);
            } else {
                out.push_str(line);
            }
            out.push_str("\r\n");
            if in_target && !has_msid && line.starts_with("a=mid:") {
                out.push_str("a=msid:");
                out.push_str(&msid);
                out.push_str("\r\n");
            }
        }
    };
    for line in sdp.split("\r\n").filter(|l| !l.is_empty()) {
        if line.starts_with("m=") {
            flush(&mut section, in_target, &mut out);
            in_target = false;
        }
        if line.strip_prefix("a=mid:") == Some(mid) {
            in_target = true;
        }
        section.push(line);
    }
    flush(&mut section, in_target, &mut out);
    out
}

/// The `a=mid` values of an SDP, in m-line order.
pub fn mids(sdp: &str) -> Vec<String> {
    sdp.lines()
        .filter_map(|l| l.trim_end().strip_prefix("a=mid:"))
        .map(str::to_owned)
        .collect()
}

/// A short description of the codecs an SDP offers (`a=rtpmap` names), for error messages.
pub fn offered_codecs(sdp: &str) -> String {
    let mut names: Vec<&str> = sdp
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix("a=rtpmap:"))
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|enc| enc.split('/').next())
        .collect();
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// The offer of a receive-only client (WHEP): `a=sendrecv` media become `a=recvonly`, so the
/// answer is `sendonly` (the server never receives media on a WHEP session).
pub fn receive_only(sdp: &str) -> String {
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        if body == "a=sendrecv" {
            out.push_str("a=recvonly");
            out.push_str(&line[body.len()..]);
        } else {
            out.push_str(line);
        }
    }
    out
}

/// The codec names (`a=rtpmap` encoding names, upper case, deduplicated, in order) of the
/// `m=<kind>` sections of an SDP that are not disabled (port 0), e.g. `["VP8", "H264"]` for
/// `kind = "video"`. Retransmission and FEC formats (rtx, red, ulpfec, flexfec) are left out.
pub fn codecs(sdp: &str, kind: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut in_kind = false;
    for line in sdp.lines().map(str::trim_end) {
        if let Some(m) = line.strip_prefix("m=") {
            let mut f = m.split_whitespace();
            in_kind = f.next() == Some(kind) && f.next() != Some("0");
            continue;
        }
        if !in_kind {
            continue;
        }
        let Some(name) = line
            .strip_prefix("a=rtpmap:")
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|enc| enc.split('/').next())
        else {
            continue;
        };
        let name = name.to_ascii_uppercase();
        let helper = matches!(name.as_str(), "RTX" | "RED" | "ULPFEC" | "FLEXFEC-03");
        if !helper && !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=msid:abc def\r\na=ssrc:11 msid:abc def\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=ssrc:22 cname:x\r\n";

    #[test]
    fn rewrites_existing_msid_and_ssrc_lines() {
        let label = Label {
            stream: "kiosk".into(),
            track: "stethoscope".into(),
        };
        let out = set_msid(ANSWER, "0", &label);
        assert!(out.contains("a=msid:kiosk stethoscope\r\n"));
        assert!(out.contains("a=ssrc:11 msid:kiosk stethoscope\r\n"));
        assert!(!out.contains("abc def"));
        // The other section is untouched.
        assert!(out.contains("a=mid:1\r\na=ssrc:22 cname:x\r\n"));
    }

    #[test]
    fn adds_msid_when_missing() {
        let label = Label {
            stream: "kiosk".into(),
            track: "room-camera".into(),
        };
        let out = set_msid(ANSWER, "1", &label);
        assert!(out.contains("a=mid:1\r\na=msid:kiosk room-camera\r\n"));
        assert!(out.contains("a=msid:abc def"));
    }

    #[test]
    fn lists_mids_and_codecs() {
        assert_eq!(mids(ANSWER), vec!["0", "1"]);
        let offer = "a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n";
        assert_eq!(offered_codecs(offer), "PCMA, PCMU");
        assert_eq!(offered_codecs(""), "none");
    }

    #[test]
    fn receive_only_and_codecs_by_kind() {
        let offer =
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendrecv\r\na=rtpmap:111 opus/48000/2\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 102 103 96\r\na=sendrecv\r\na=rtpmap:102 H264/90000\r\n\
a=rtpmap:103 rtx/90000\r\na=rtpmap:96 vp8/90000\r\nm=video 0 UDP/TLS/RTP/SAVPF 98\r\n\
a=rtpmap:98 AV1/90000\r\n";
        let r = receive_only(offer);
        assert!(!r.contains("a=sendrecv"));
        assert_eq!(r.matches("a=recvonly\r\n").count(), 2);
        assert_eq!(codecs(offer, "video"), vec!["H264", "VP8"]);
        assert_eq!(codecs(offer, "audio"), vec!["OPUS"]);
        assert!(codecs(offer, "application").is_empty());
    }
}
