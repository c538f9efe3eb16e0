//! WHIP publisher.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Mutex;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtcp;
use webrtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
use webrtc::rtcp::receiver_report::ReceiverReport;
use webrtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
use webrtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use webrtc::rtp;
use webrtc::rtp::packetizer::Payloader;
use webrtc::rtp_transceiver::rtp_sender::RTCRtpSender;
use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;
use webrtc::rtp_transceiver::RTCRtpTransceiverInit;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_local::{TrackLocal, TrackLocalWriter};

use crate::congestion::Feedback;
use crate::engine::{self, NewPeer};
use crate::error::{Error, Result};
use crate::feedback::FeedbackLog;
use crate::media::{Codec, MediaKind, TrackSpec};
use crate::options::ClientOptions;
use crate::send_times::SendLog;
use crate::session::Session;

/// Payload size limit used by [`LocalTrack::write_sample`] when splitting a frame into RTP
/// packets (leaves room for the RTP header, extensions and SRTP tag under a 1280-byte MTU).
pub const SAMPLE_MTU: usize = 1200;

/// What was sent by one `write_rtp` call: the header fields this client chose.
///
/// The SSRC and payload type are rewritten by `webrtc` to the negotiated values; see
/// [`LocalLayer::ssrc`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentRtp {
    /// RTP sequence number of the packet.
    pub sequence_number: u16,
    /// RTP timestamp of the packet.
    pub timestamp: u32,
    /// Bytes handed to the transport (0 if the track is not bound to a negotiated sender, e.g.
    /// because the server rejected the m-line).
    pub bytes: usize,
}

/// Counts of the RTCP feedback the server sent about one outgoing RTP stream.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RtcpStats {
    /// Picture Loss Indications received.
    pub pli: u64,
    /// Full Intra Requests received.
    pub fir: u64,
    /// Generic NACK packets received.
    pub nack_packets: u64,
    /// RTP packets requested for retransmission in those NACKs.
    pub nacked_packets: u64,
    /// Receiver reports received.
    pub receiver_reports: u64,
    /// Transport-wide congestion control feedback packets received.
    pub twcc_feedbacks: u64,
    /// Latest REMB estimate, in bits per second, if any was received.
    pub remb_bps: Option<f32>,
}

impl RtcpStats {
    /// PLIs plus FIRs: how many times the server asked for a keyframe.
    pub fn keyframe_requests(&self) -> u64 {
        self.pli + self.fir
    }
}

const NO_REMB: u32 = u32::MAX;

#[derive(Debug)]
struct RtcpCounters {
    pli: AtomicU64,
    fir: AtomicU64,
    nack_packets: AtomicU64,
    nacked_packets: AtomicU64,
    receiver_reports: AtomicU64,
    twcc_feedbacks: AtomicU64,
    remb_bits: AtomicU32,
}

impl Default for RtcpCounters {
    fn default() -> Self {
        RtcpCounters {
            pli: AtomicU64::new(0),
            fir: AtomicU64::new(0),
            nack_packets: AtomicU64::new(0),
            nacked_packets: AtomicU64::new(0),
            receiver_reports: AtomicU64::new(0),
            twcc_feedbacks: AtomicU64::new(0),
            remb_bits: AtomicU32::new(NO_REMB),
        }
    }
}

impl RtcpCounters {
    fn record(&self, packet: &(dyn rtcp::packet::Packet + Send + Sync)) {
        let any = packet.as_any();
        let inc = |c: &AtomicU64, n: u64| {
            c.fetch_add(n, Ordering::Relaxed);
        };
        if any.is::<PictureLossIndication>() {
            inc(&self.pli, 1);
        } else if any.is::<FullIntraRequest>() {
            inc(&self.fir, 1);
        } else if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
            inc(&self.nack_packets, 1);
            let lost: usize = nack.nacks.iter().map(|p| p.packet_list().len()).sum();
            inc(&self.nacked_packets, lost as u64);
        } else if any.is::<ReceiverReport>() {
            inc(&self.receiver_reports, 1);
        } else if any.is::<TransportLayerCc>() {
            inc(&self.twcc_feedbacks, 1);
        } else if let Some(remb) = any.downcast_ref::<ReceiverEstimatedMaximumBitrate>() {
            self.remb_bits
                .store(remb.bitrate.to_bits(), Ordering::Relaxed);
        }
    }

    fn snapshot(&self) -> RtcpStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let remb = self.remb_bits.load(Ordering::Relaxed);
        RtcpStats {
            pli: get(&self.pli),
            fir: get(&self.fir),
            nack_packets: get(&self.nack_packets),
            nacked_packets: get(&self.nacked_packets),
            receiver_reports: get(&self.receiver_reports),
            twcc_feedbacks: get(&self.twcc_feedbacks),
            remb_bps: (remb != NO_REMB).then(|| f32::from_bits(remb)),
        }
    }
}

struct SendState {
    sequence_number: u16,
    timestamp: u32,
    payloader: Box<dyn Payloader + Send + Sync>,
}

/// One outgoing RTP stream: a whole track, or one simulcast layer of it.
pub struct LocalLayer {
    rid: Option<String>,
    ssrc: u32,
    codec: Codec,
    track: Arc<TrackLocalStaticRTP>,
    state: Mutex<SendState>,
    rtcp: Arc<RtcpCounters>,
    rtcp_task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for LocalLayer {
    fn drop(&mut self) {
        // The reader may wait forever if its sender was stopped before it first polled.
        if let Some(task) = &self.rtcp_task {
            task.abort();
        }
    }
}

impl std::fmt::Debug for LocalLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLayer")
            .field("rid", &self.rid)
            .field("ssrc", &self.ssrc)
            .field("codec", &self.codec)
            .finish_non_exhaustive()
    }
}

impl LocalLayer {
    fn new(rid: Option<String>, ssrc: u32, codec: Codec, track: Arc<TrackLocalStaticRTP>) -> Self {
        LocalLayer {
            rid,
            ssrc,
            codec,
            track,
            state: Mutex::new(SendState {
                sequence_number: rand::random(),
                timestamp: rand::random(),
                payloader: codec.payloader(),
            }),
            rtcp: Arc::default(),
            rtcp_task: None,
        }
    }

    /// The simulcast RID of this layer (`None` for a non-simulcast track).
    pub fn rid(&self) -> Option<&str> {
        self.rid.as_deref()
    }

    /// The SSRC this layer is sent with (announced in the offer's `a=ssrc` lines).
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Sends one RTP packet carrying exactly `payload`.
    ///
    /// The sequence number is the previous one plus one (random start), and the timestamp is
    /// the previous one plus `timestamp_increment` (random start): pass the frame duration in
    /// clock-rate units (960 for 20 ms of Opus, 3000 for a 30 fps video frame) on the first
    /// packet of a frame and 0 on the following packets of the same frame. Concurrent calls
    /// on the same layer are serialised, so packets leave in call order.
    pub async fn write_rtp(
        &self,
        payload: &[u8],
        marker: bool,
        timestamp_increment: u32,
    ) -> Result<SentRtp> {
        let mut state = self.state.lock().await;
        self.send_locked(
            &mut state,
            Bytes::copy_from_slice(payload),
            marker,
            timestamp_increment,
        )
        .await
    }

    async fn send_locked(
        &self,
        state: &mut SendState,
        payload: Bytes,
        marker: bool,
        timestamp_increment: u32,
    ) -> Result<SentRtp> {
        let sequence_number = state.sequence_number;
        let timestamp = state.timestamp.wrapping_add(timestamp_increment);
        let packet = rtp::packet::Packet {
            header: rtp::header::Header {
                version: 2,
                marker,
                payload_type: self.codec.payload_type(),
                sequence_number,
                timestamp,
                ssrc: self.ssrc,
                ..Default::default()
            },
            payload,
        };
        let bytes = self
            .track
            .write_rtp(&packet)
            .await
            .map_err(Error::webrtc("writing RTP"))?;
        state.sequence_number = sequence_number.wrapping_add(1);
        state.timestamp = timestamp;
        Ok(SentRtp {
            sequence_number,
            timestamp,
            bytes,
        })
    }

    /// Packetizes one encoded frame (an Opus packet, a VP8/VP9/AV1 frame, an Annex-B H.264
    /// access unit) with the codec's RTP payloader and sends the packets, the last one with
    /// the marker bit. The timestamp advances by `duration` (time since the previous frame)
    /// before the frame is sent.
    pub async fn write_sample(&self, data: &[u8], duration: Duration) -> Result<Vec<SentRtp>> {
        let increment = (duration.as_secs_f64() * f64::from(self.codec.clock_rate())).round();
        // Saturating float-to-int conversion is the intent: absurd durations clamp.
        let mut increment = increment as u32;
        let mut state = self.state.lock().await;
        let payloads = state
            .payloader
            .payload(SAMPLE_MTU, &Bytes::copy_from_slice(data))
            .map_err(|e| Error::WebRtc {
                context: "packetizing sample",
                source: webrtc::Error::Rtp(e),
            })?;
        let count = payloads.len();
        let mut sent = Vec::with_capacity(count);
        for (i, payload) in payloads.into_iter().enumerate() {
            sent.push(
                self.send_locked(&mut state, payload, i + 1 == count, increment)
                    .await?,
            );
            increment = 0;
        }
        Ok(sent)
    }

    /// Sends a caller-built RTP packet as is, except for the SSRC, payload type and header
    /// extensions, which `webrtc` sets to the negotiated values. It does not advance the
    /// counters used by [`write_rtp`](Self::write_rtp): do not mix both on one layer.
    pub async fn write_rtp_packet(&self, packet: &rtp::packet::Packet) -> Result<usize> {
        let _order = self.state.lock().await;
        self.track
            .write_rtp(packet)
            .await
            .map_err(Error::webrtc("writing RTP"))
    }

    /// RTCP feedback received so far for this stream.
    pub fn rtcp_stats(&self) -> RtcpStats {
        self.rtcp.snapshot()
    }
}

/// One published track, with one [`LocalLayer`] (or one per simulcast RID).
///
/// The `write_*` methods and [`rtcp_stats`](Self::rtcp_stats) act on the first layer; use
/// [`layer`](Self::layer) for the others.
#[derive(Debug)]
pub struct LocalTrack {
    spec: TrackSpec,
    mid: Option<String>,
    layers: Vec<LocalLayer>,
}

impl LocalTrack {
    /// The spec the track was created from.
    pub fn spec(&self) -> &TrackSpec {
        &self.spec
    }

    /// Audio or video.
    pub fn kind(&self) -> MediaKind {
        self.spec.kind
    }

    /// The codec.
    pub fn codec(&self) -> Codec {
        self.spec.codec
    }

    /// The msid stream identifier.
    pub fn stream_id(&self) -> &str {
        &self.spec.stream_id
    }

    /// The msid track identifier.
    pub fn track_id(&self) -> &str {
        &self.spec.track_id
    }

    /// The transceiver's `mid` in the negotiated SDP.
    pub fn mid(&self) -> Option<&str> {
        self.mid.as_deref()
    }

    /// All layers (one unless the track is simulcast), in RID order.
    pub fn layers(&self) -> &[LocalLayer] {
        &self.layers
    }

    /// The simulcast layer with this RID.
    pub fn layer(&self, rid: &str) -> Result<&LocalLayer> {
        self.layers
            .iter()
            .find(|l| l.rid() == Some(rid))
            .ok_or_else(|| Error::UnknownRid(rid.to_owned()))
    }

    fn first(&self) -> &LocalLayer {
        // Invariant: `prepare` creates every track with at least one layer.
        &self.layers[0]
    }

    /// [`LocalLayer::write_rtp`] on the first layer.
    pub async fn write_rtp(
        &self,
        payload: &[u8],
        marker: bool,
        timestamp_increment: u32,
    ) -> Result<SentRtp> {
        self.first()
            .write_rtp(payload, marker, timestamp_increment)
            .await
    }

    /// [`LocalLayer::write_sample`] on the first layer.
    pub async fn write_sample(&self, data: &[u8], duration: Duration) -> Result<Vec<SentRtp>> {
        self.first().write_sample(data, duration).await
    }

    /// [`LocalLayer::write_rtp_packet`] on the first layer.
    pub async fn write_rtp_packet(&self, packet: &rtp::packet::Packet) -> Result<usize> {
        self.first().write_rtp_packet(packet).await
    }

    /// [`LocalLayer::rtcp_stats`] of the first layer.
    pub fn rtcp_stats(&self) -> RtcpStats {
        self.first().rtcp_stats()
    }
}

/// Spawns the task that drains (and counts) RTCP for one sender encoding. Reading is also what
/// makes the NACK responder and other interceptors see the feedback.
fn spawn_rtcp_reader(
    sender: Arc<RTCRtpSender>,
    rid: Option<String>,
    counters: Arc<RtcpCounters>,
    feedback: Arc<FeedbackLog>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let read = match &rid {
                Some(rid) => sender.read_rtcp_simulcast(rid).await,
                None => sender.read_rtcp().await,
            };
            match read {
                Ok((packets, _)) => {
                    for p in &packets {
                        counters.record(p.as_ref());
                        feedback.record(p.as_ref());
                    }
                }
                Err(e) => {
                    tracing::trace!(error = %e, "RTCP reader ends");
                    break;
                }
            }
        }
    })
}

async fn add_track(
    pc: &RTCPeerConnection,
    spec: TrackSpec,
    feedback: &Arc<FeedbackLog>,
) -> Result<LocalTrack> {
    let capability = spec.codec.capability();
    let statics: Vec<Arc<TrackLocalStaticRTP>> = if spec.simulcast_rids.is_empty() {
        vec![Arc::new(TrackLocalStaticRTP::new(
            capability,
            spec.track_id.clone(),
            spec.stream_id.clone(),
        ))]
    } else {
        spec.simulcast_rids
            .iter()
            .map(|rid| {
                Arc::new(TrackLocalStaticRTP::new_with_rid(
                    capability.clone(),
                    spec.track_id.clone(),
                    rid.clone(),
                    spec.stream_id.clone(),
                ))
            })
            .collect()
    };
    let transceiver = pc
        .add_transceiver_from_track(
            Arc::clone(&statics[0]) as Arc<dyn TrackLocal + Send + Sync>,
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Sendonly,
                send_encodings: vec![],
            }),
        )
        .await
        .map_err(Error::webrtc("adding transceiver"))?;
    transceiver
        .set_codec_preferences(vec![spec.codec.parameters()])
        .await
        .map_err(Error::webrtc("setting codec preferences"))?;
    let sender = transceiver.sender().await;
    for extra in &statics[1..] {
        sender
            .add_encoding(Arc::clone(extra) as Arc<dyn TrackLocal + Send + Sync>)
            .await
            .map_err(Error::webrtc("adding simulcast encoding"))?;
    }
    let encodings = sender.get_parameters().await.encodings;
    let mut layers = Vec::with_capacity(statics.len());
    for track in statics {
        let rid = track.rid().map(str::to_owned);
        let ssrc = encodings
            .iter()
            .find(|e| rid.as_deref().unwrap_or("") == e.rid.as_str())
            .map(|e| e.ssrc)
            .ok_or(Error::WebRtc {
                context: "looking up the SSRC of a sender encoding",
                source: webrtc::Error::ErrRTPSenderNoTrackForRID,
            })?;
        let mut layer = LocalLayer::new(rid.clone(), ssrc, spec.codec, track);
        layer.rtcp_task = Some(spawn_rtcp_reader(
            Arc::clone(&sender),
            rid,
            Arc::clone(&layer.rtcp),
            Arc::clone(feedback),
        ));
        layers.push(layer);
    }
    Ok(LocalTrack {
        spec,
        mid: None,
        layers,
    })
}

/// Validates the specs and builds a peer connection with one send-only transceiver per track.
async fn prepare(
    tracks: Vec<TrackSpec>,
    opts: &ClientOptions,
) -> Result<(NewPeer, Vec<LocalTrack>, Arc<FeedbackLog>)> {
    if tracks.is_empty() {
        return Err(Error::InvalidTrack("no track to publish".into()));
    }
    for (i, spec) in tracks.iter().enumerate() {
        spec.validate().map_err(Error::InvalidTrack)?;
        if tracks[..i]
            .iter()
            .any(|t| t.stream_id == spec.stream_id && t.track_id == spec.track_id)
        {
            return Err(Error::InvalidTrack(format!(
                "duplicate msid {} {}",
                spec.stream_id, spec.track_id
            )));
        }
    }
    let send_log = Arc::new(SendLog::default());
    let peer = engine::new_peer_connection(opts, engine::Role::Publish(&send_log)).await?;
    let feedback = Arc::new(FeedbackLog::new(send_log));
    let mut locals = Vec::with_capacity(tracks.len());
    for spec in tracks {
        match add_track(&peer.pc, spec, &feedback).await {
            Ok(t) => locals.push(t),
            Err(e) => {
                let _ = peer.pc.close().await;
                return Err(e);
            }
        }
    }
    Ok((peer, locals, feedback))
}

/// Builds the WHIP offer a [`Publisher`] would send for these tracks (ICE gathering included)
/// without contacting any server; the peer connection is closed afterwards. Useful to test SDP
/// handling on the server side with a real `webrtc` offer.
pub async fn whip_offer(tracks: Vec<TrackSpec>, opts: &ClientOptions) -> Result<String> {
    let (peer, _tracks, _feedback) = prepare(tracks, opts).await?;
    let offer = engine::gather_offer(&peer.pc, opts.gather_timeout).await;
    let _ = peer.pc.close().await;
    offer.map(|o| engine::strip_simulcast_ssrcs(&o))
}

/// A WHIP (RFC 9725) publishing session.
///
/// ```no_run
/// # async fn demo() -> cabine_client::Result<()> {
/// use cabine_client::{ClientOptions, Codec, Publisher, TrackSpec};
/// let publisher = Publisher::connect(
///     "http://127.0.0.1:8080/whip/room-1",
///     "<jwt>",
///     vec![
///         TrackSpec::video("kiosk-1", "room-camera", Codec::Vp8),
///         TrackSpec::audio("kiosk-1", "stethoscope"),
///     ],
///     ClientOptions::loopback(),
/// )
/// .await?;
/// publisher.track(1).expect("two tracks").write_rtp(b"opus bytes", false, 960).await?;
/// publisher.close().await?;
/// # Ok(()) }
/// ```
pub struct Publisher {
    session: Session,
    tracks: Vec<LocalTrack>,
    feedback: Arc<FeedbackLog>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("resource", &self.session.resource.url.as_str())
            .field("tracks", &self.tracks)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// Publishes `tracks` to a WHIP endpoint.
    ///
    /// Creates one send-only transceiver per track (offering only its codec), gathers ICE
    /// candidates, `POST`s the offer (`Content-Type: application/sdp`, `Authorization: Bearer
    /// <token>`, omitted when `token` is empty), expects `201 Created` with a `Location` and an
    /// SDP answer, applies it and waits until the peer connection is connected (ICE + DTLS).
    /// With [`ClientOptions::endpoint_ice_servers`] (the default) an `OPTIONS` request first
    /// fetches the endpoint's STUN/TURN servers (RFC 9725 §4.6).
    ///
    /// Errors: [`Error::Http`] if the server refuses (status and body inside),
    /// [`Error::Protocol`] for a malformed `201`, [`Error::Timeout`] /
    /// [`Error::ConnectionFailed`] if media cannot flow (the server resource is then deleted).
    pub async fn connect(
        whip_url: &str,
        token: &str,
        tracks: Vec<TrackSpec>,
        opts: ClientOptions,
    ) -> Result<Publisher> {
        let opts = crate::session::with_endpoint_ice(whip_url, token, opts).await?;
        let (peer, mut tracks, feedback) = prepare(tracks, &opts).await?;
        let pc = Arc::clone(&peer.pc);
        let session = Session::negotiate(whip_url, token, peer, &opts).await?;
        // Transceivers were added in track order, so they line up.
        for (track, transceiver) in tracks.iter_mut().zip(pc.get_transceivers().await) {
            track.mid = transceiver.mid().map(|m| m.to_string());
        }
        Ok(Publisher {
            session,
            tracks,
            feedback,
        })
    }

    /// All published tracks, in the order given to [`connect`](Self::connect).
    pub fn tracks(&self) -> &[LocalTrack] {
        &self.tracks
    }

    /// The `index`-th published track.
    pub fn track(&self, index: usize) -> Option<&LocalTrack> {
        self.tracks.get(index)
    }

    /// The published track with this msid track identifier.
    pub fn track_by_id(&self, track_id: &str) -> Option<&LocalTrack> {
        self.tracks.iter().find(|t| t.track_id() == track_id)
    }

    /// Takes the congestion feedback received since the last call (transport-wide feedback,
    /// receiver reports with their round-trip times, REMB), for a
    /// [`RateController`](crate::congestion::RateController). Each RTCP report is given once;
    /// at most the last 1024 are kept between calls.
    pub fn take_feedback(&self) -> Vec<Feedback> {
        self.feedback.take()
    }

    /// The absolute URL of the WHIP session resource (from the `Location` header).
    pub fn resource_url(&self) -> &str {
        self.session.resource.url.as_str()
    }

    /// The `ETag` of the session, if the server sent one.
    pub fn etag(&self) -> Option<&str> {
        self.session.resource.etag.as_deref()
    }

    /// The SDP offer that was sent.
    pub fn offer_sdp(&self) -> &str {
        &self.session.offer
    }

    /// The SDP answer that was received.
    pub fn answer_sdp(&self) -> &str {
        &self.session.answer
    }

    /// The current peer connection state.
    pub fn connection_state(&self) -> RTCPeerConnectionState {
        self.session.connection_state()
    }

    /// The underlying `webrtc` peer connection (for stats or anything not wrapped here).
    pub fn peer_connection(&self) -> &Arc<RTCPeerConnection> {
        &self.session.pc
    }

    /// Ends the session: `DELETE`s the resource, then closes the peer connection. Both are
    /// attempted; the first error is returned (e.g. [`Error::Http`] if the `DELETE` is
    /// refused). Dropping a `Publisher` without closing it does the same in the background,
    /// best effort.
    pub async fn close(self) -> Result<()> {
        self.session.close().await
    }
}
