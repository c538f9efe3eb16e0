//! Building `webrtc` peer connections configured for Cabine, and the offer/connect steps shared
//! by publishers and subscribers.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use webrtc::api::interceptor_registry::{configure_nack, configure_rtcp_reports, configure_twcc};
use webrtc::api::media_engine::MediaEngine;
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::APIBuilder;
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice::network_type::NetworkType;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::policy::ice_transport_policy::RTCIceTransportPolicy;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtp_transceiver::rtp_codec::RTCRtpHeaderExtensionCapability;
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;
use webrtc::sdp::extmap;

use crate::error::{Error, Result};
use crate::media::Codec;
use crate::options::ClientOptions;
use crate::send_times::{SendLog, SendTimesBuilder};

/// A new peer connection plus a watch of its connection state.
pub(crate) struct NewPeer {
    pub pc: Arc<RTCPeerConnection>,
    pub state: watch::Receiver<RTCPeerConnectionState>,
    /// The TURN clients its stream bridges carry (to tell how a relay candidate was reached).
    pub relay_sources: crate::turn_tls::RelaySources,
}

/// Which side of the SFU a peer connection is for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Role<'a> {
    /// WHIP: send-only; every packet's transport-wide sequence number and send time go to
    /// the log (for the rate controller).
    Publish(&'a Arc<SendLog>),
    /// WHEP: receive-only.
    Subscribe,
}

/// Creates a peer connection with the client's codecs, header extensions, interceptors (NACK,
/// RTCP reports, TWCC) and ICE settings.
pub(crate) async fn new_peer_connection(opts: &ClientOptions, role: Role<'_>) -> Result<NewPeer> {
    let mut media = MediaEngine::default();
    // Interceptors first: they add their RTCP feedback to the codecs already registered, and
    // our codec capabilities list all their feedback already (no duplicates that way).
    let mut registry = Registry::new();
    // First in the registry is innermost in the chain: it sees each packet last, numbered by
    // the TWCC interceptor, retransmissions included.
    if let Role::Publish(log) = role {
        registry.add(Box::new(SendTimesBuilder {
            log: Arc::clone(log),
        }));
    }
    registry = configure_nack(registry, &mut media);
    registry = configure_rtcp_reports(registry);
    registry = configure_twcc(registry, &mut media).map_err(Error::webrtc("configuring TWCC"))?;
    for codec in Codec::ALL {
        media
            .register_codec(codec.parameters(), codec.kind().rtp_codec_type())
            .map_err(Error::webrtc("registering codec"))?;
    }
    // A publisher sends mid and rid so the server can demultiplex simulcast layers.
    //
    // A subscriber deliberately does not negotiate mid: `webrtc` 0.14 has a start-up race
    // where packets arriving before a declared SSRC's receiver is running are "probed" as
    // unknown simulcast streams, which consumes ~10 packets and then closes the stream the
    // track reads from (the track is dead from then on). Without a negotiated mid extension,
    // that probing stops before touching the stream and the receiver later picks up the
    // buffered packets. Consequence: the server's answer must declare its SSRCs (`a=ssrc`).
    let extensions: &[(&str, &[RTPCodecType])] = match role {
        Role::Publish(_) => &[
            (
                extmap::SDES_MID_URI,
                &[RTPCodecType::Audio, RTPCodecType::Video],
            ),
            (extmap::SDES_RTP_STREAM_ID_URI, &[RTPCodecType::Video]),
            (
                extmap::SDES_REPAIR_RTP_STREAM_ID_URI,
                &[RTPCodecType::Video],
            ),
        ],
        Role::Subscribe => &[],
    };
    for (uri, kinds) in extensions {
        for kind in *kinds {
            media
                .register_header_extension(
                    RTCRtpHeaderExtensionCapability {
                        uri: (*uri).to_owned(),
                    },
                    *kind,
                    None,
                )
                .map_err(Error::webrtc("registering header extension"))?;
        }
    }

    // The `webrtc` stack uses rustls; when a process links more than one rustls crypto backend
    // (as a workspace build with the server does), rustls cannot pick one by itself. Install
    // one for the process unless the program already did.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();

    let mut settings = SettingEngine::default();
    // Host candidates must be plain IP addresses: the server cannot resolve `.local` names.
    settings.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
    if opts.loopback_only {
        settings.set_include_loopback_candidate(true);
        settings.set_network_types(vec![NetworkType::Udp4]);
        settings.set_ip_filter(Box::new(|ip: IpAddr| ip.is_loopback()));
    }

    let api = APIBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(settings)
        .build();
    // The state watch exists before the peer connection: the TURN-over-TLS bridges end with it.
    let (tx, state) = watch::channel(RTCPeerConnectionState::New);
    let relay_sources = crate::turn_tls::RelaySources::default();
    let ice_servers = crate::turn_tls::bridge_stream_servers(
        &opts.ice_servers,
        opts.accept_invalid_certs,
        &state,
        &relay_sources,
    )
    .await?;
    let config = RTCConfiguration {
        ice_servers: ice_servers.iter().map(|s| s.to_rtc()).collect(),
        ice_transport_policy: if opts.relay_only {
            RTCIceTransportPolicy::Relay
        } else {
            RTCIceTransportPolicy::All
        },
        ..Default::default()
    };
    let pc = Arc::new(
        api.new_peer_connection(config)
            .await
            .map_err(Error::webrtc("creating peer connection"))?,
    );

    pc.on_peer_connection_state_change(Box::new(move |s| {
        tracing::debug!(state = %s, "peer connection state");
        // An error only means every receiver is gone: nobody is waiting any more.
        let _ = tx.send(s);
        Box::pin(async {})
    }));
    Ok(NewPeer {
        pc,
        state,
        relay_sources,
    })
}

/// Creates an offer, applies it locally and waits for ICE gathering (non-trickle). Returns the
/// offer SDP with its candidates.
pub(crate) async fn gather_offer(pc: &RTCPeerConnection, timeout: Duration) -> Result<String> {
    let offer = pc
        .create_offer(None)
        .await
        .map_err(Error::webrtc("creating offer"))?;
    let mut gathered = pc.gathering_complete_promise().await;
    pc.set_local_description(offer)
        .await
        .map_err(Error::webrtc("setting local description"))?;
    if tokio::time::timeout(timeout, gathered.recv())
        .await
        .is_err()
    {
        tracing::warn!(
            ?timeout,
            "ICE gathering incomplete; sending the candidates gathered so far"
        );
    }
    let local = pc.local_description().await.ok_or(Error::WebRtc {
        context: "reading local description",
        source: webrtc::Error::ErrNoRemoteDescription,
    })?;
    Ok(local.sdp)
}

/// Applies the SDP answer.
pub(crate) async fn apply_answer(pc: &RTCPeerConnection, answer: String) -> Result<()> {
    let desc =
        RTCSessionDescription::answer(answer).map_err(Error::webrtc("parsing SDP answer"))?;
    pc.set_remote_description(desc)
        .await
        .map_err(Error::webrtc("setting remote description"))
}

/// Waits for the peer connection to be `connected` (ICE and DTLS done).
pub(crate) async fn wait_connected(
    state: &mut watch::Receiver<RTCPeerConnectionState>,
    timeout: Duration,
) -> Result<()> {
    let wait = state.wait_for(|s| {
        matches!(
            s,
            RTCPeerConnectionState::Connected
                | RTCPeerConnectionState::Failed
                | RTCPeerConnectionState::Closed
        )
    });
    let reached = match tokio::time::timeout(timeout, wait).await {
        Err(_) => {
            return Err(Error::Timeout {
                what: "the peer connection to be connected",
                after: timeout,
            })
        }
        // The sender lives in the peer connection's handler; it is only dropped when the
        // peer connection is.
        Ok(Err(_)) => return Err(Error::Closed),
        Ok(Ok(s)) => *s,
    };
    match reached {
        RTCPeerConnectionState::Connected => Ok(()),
        other => Err(Error::ConnectionFailed {
            state: other.to_string(),
        }),
    }
}

/// Removes `a=ssrc` and `a=ssrc-group` lines from media sections that announce simulcast.
///
/// `webrtc` lists one SSRC per simulcast layer in the offer, with no indication of which RID
/// it belongs to. Browsers (Chrome) send RID-only simulcast offers, and SFUs identify layers by
/// the RID header extension, so the offer sent to the server follows that shape.
pub(crate) fn strip_simulcast_ssrcs(sdp: &str) -> String {
    let eol = if sdp.contains("\r\n") { "\r\n" } else { "\n" };
    let mut out = String::with_capacity(sdp.len());
    let mut section: Vec<&str> = Vec::new();
    let flush = |section: &mut Vec<&str>, out: &mut String| {
        let simulcast = section.iter().any(|l| l.starts_with("a=simulcast:"));
        for line in section.drain(..) {
            if simulcast && (line.starts_with("a=ssrc:") || line.starts_with("a=ssrc-group:")) {
                continue;
            }
            out.push_str(line);
            out.push_str(eol);
        }
    };
    for line in sdp.lines() {
        if line.starts_with("m=") {
            flush(&mut section, &mut out);
        }
        section.push(line);
    }
    flush(&mut section, &mut out);
    out
}

/// Replaces the UDP ICE candidates of an SDP answer by one host candidate at `via` (the first
/// UDP candidate of each media section, with its foundation, component and priority, moved to
/// `via`), and drops the TCP ones. See [`ClientOptions::media_via`].
pub(crate) fn redirect_candidates(sdp: &str, via: SocketAddr) -> String {
    let eol = if sdp.contains("\r\n") { "\r\n" } else { "\n" };
    let mut out = String::with_capacity(sdp.len());
    let mut redirected_in_section = false;
    for line in sdp.lines() {
        if line.starts_with("m=") {
            redirected_in_section = false;
        }
        if let Some(candidate) = line.strip_prefix("a=candidate:") {
            // foundation component transport priority address port "typ" type [...]
            let fields: Vec<&str> = candidate.split_whitespace().collect();
            let udp = fields.get(2).is_some_and(|t| t.eq_ignore_ascii_case("udp"));
            if !udp || fields.len() < 8 || redirected_in_section {
                continue;
            }
            redirected_in_section = true;
            out.push_str(&format!(
                "a=candidate:{} {} udp {} {} {} typ host{eol}",
                fields[0],
                fields[1],
                fields[3],
                via.ip(),
                via.port()
            ));
            continue;
        }
        out.push_str(line);
        out.push_str(eol);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{redirect_candidates, strip_simulcast_ssrcs};

    #[test]
    fn candidates_are_redirected_once_per_section_and_tcp_ones_dropped() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
                   a=candidate:1 1 udp 2130706431 10.0.0.1 7882 typ host\r\n\
                   a=candidate:2 1 udp 2130706175 10.0.0.2 7882 typ host\r\n\
                   a=candidate:3 1 tcp 1671430143 10.0.0.1 7882 typ host tcptype passive\r\n\
                   a=end-of-candidates\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
                   a=candidate:1 1 UDP 2130706431 10.0.0.1 7882 typ host\r\n";
        let out = redirect_candidates(sdp, "127.0.0.1:4000".parse().expect("addr"));
        assert_eq!(
            out,
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
             a=candidate:1 1 udp 2130706431 127.0.0.1 4000 typ host\r\n\
             a=end-of-candidates\r\n\
             m=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
             a=candidate:1 1 udp 2130706431 127.0.0.1 4000 typ host\r\n"
        );
    }

    #[test]
    fn ssrc_lines_are_removed_only_from_simulcast_sections() {
        let sdp = "v=0\r\na=group:BUNDLE 0 1\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=ssrc:1 cname:x\r\na=rid:q send\r\n\
                   a=simulcast:send q\r\n\
                   m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=ssrc:2 cname:x\r\n";
        let out = strip_simulcast_ssrcs(sdp);
        assert_eq!(
            out,
            "v=0\r\na=group:BUNDLE 0 1\r\n\
             m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rid:q send\r\na=simulcast:send q\r\n\
             m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=ssrc:2 cname:x\r\n"
        );
    }
}
