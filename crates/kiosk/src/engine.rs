//! Building `webrtc` peer connections configured for Cabine, and the offer/connect steps shared
//! by publishers and subscribers.

use std::net::IpAddr;
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

/// A new peer connection plus a watch of its connection state.
pub(crate) struct NewPeer {
    pub pc: Arc<RTCPeerConnection>,
    pub state: watch::Receiver<RTCPeerConnectionState>,
}

/// Creates a peer connection with the client's codecs, header extensions, interceptors (NACK,
/// RTCP reports, TWCC) and ICE settings.
pub(crate) async fn new_peer_connection(opts: &ClientOptions) -> Result<NewPeer> {
    let mut media = MediaEngine::default();
    for codec in Codec::ALL {
        media
            .register_codec(codec.parameters(), codec.kind().rtp_codec_type())
            .map_err(Error::webrtc("registering codec"))?;
    }
    // mid and rid are needed for BUNDLE demultiplexing without SSRCs and for simulcast.
    let extensions: [(&str, &[RTPCodecType]); 3] = [
        (
            extmap::SDES_MID_URI,
            &[RTPCodecType::Audio, RTPCodecType::Video],
        ),
        (extmap::SDES_RTP_STREAM_ID_URI, &[RTPCodecType::Video]),
        (extmap::SDES_REPAIR_RTP_STREAM_ID_URI, &[RTPCodecType::Video]),
    ];
    for (uri, kinds) in extensions {
        for kind in kinds {
            media
                .register_header_extension(
                    RTCRtpHeaderExtensionCapability {
                        uri: uri.to_owned(),
                    },
                    *kind,
                    None,
                )
                .map_err(Error::webrtc("registering header extension"))?;
        }
    }
    let mut registry = Registry::new();
    registry = configure_nack(registry, &mut media);
    registry = configure_rtcp_reports(registry);
    registry = configure_twcc(registry, &mut media).map_err(Error::webrtc("configuring TWCC"))?;

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
    let config = RTCConfiguration {
        ice_servers: opts.ice_servers.iter().map(|s| s.to_rtc()).collect(),
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

    let (tx, state) = watch::channel(RTCPeerConnectionState::New);
    pc.on_peer_connection_state_change(Box::new(move |s| {
        tracing::debug!(state = %s, "peer connection state");
        // An error only means every receiver is gone: nobody is waiting any more.
        let _ = tx.send(s);
        Box::pin(async {})
    }));
    Ok(NewPeer { pc, state })
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
    if tokio::time::timeout(timeout, gathered.recv()).await.is_err() {
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
