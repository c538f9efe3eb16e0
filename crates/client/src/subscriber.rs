//! WHEP subscriber.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, Mutex};
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::rtp;
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;
use webrtc::rtp_transceiver::rtp_receiver::RTCRtpReceiver;
use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;
use webrtc::rtp_transceiver::RTCRtpTransceiverInit;
use webrtc::track::track_remote::TrackRemote;

use crate::engine::{self, NewPeer};
use crate::error::{Error, Result};
use crate::media::{Codec, MediaKind};
use crate::options::ClientOptions;
use crate::session::Session;

/// A message received on one of the server's data channels.
#[derive(Debug, Clone)]
pub struct DataMessage {
    /// The channel label (`telemetry`).
    pub label: String,
    /// Whether the channel is reliable and ordered (measurements, status) or lossy (waveforms).
    pub reliable: bool,
    /// The message (JSON text for telemetry).
    pub data: bytes::Bytes,
}

/// Label of the channel a subscriber offers for its own messages (device commands).
pub const COMMANDS_LABEL: &str = "commands";

struct DataChannels {
    commands: Arc<webrtc::data_channel::RTCDataChannel>,
    incoming: Mutex<mpsc::Receiver<DataMessage>>,
}

/// Messages buffered from the server's data channels before the oldest are dropped.
const DATA_QUEUE: usize = 4096;

/// A track received from the server.
///
/// Announced (by [`Subscriber::next_track`]) when its first RTP packet arrives: `webrtc` waits
/// for a packet to learn the payload type. That first packet is not lost; `read_rtp` returns it.
#[derive(Clone)]
pub struct RemoteTrack {
    track: Arc<TrackRemote>,
    mid: Option<String>,
    pc: Weak<RTCPeerConnection>,
    packets: Arc<Mutex<mpsc::Receiver<ReadResult>>>,
}

type ReadResult = std::result::Result<rtp::packet::Packet, webrtc::Error>;

/// Packets buffered per track between the reader task and [`RemoteTrack::read_rtp`]; when
/// full, the reader stops pulling and `webrtc`'s own buffer drops packets, as a slow
/// application would.
const TRACK_BUFFER: usize = 4096;

/// Reads the track in a task so that `read_rtp` can be cancelled (e.g. by a timeout) without
/// losing a packet: `TrackRemote::read` is not cancel-safe.
fn spawn_track_reader(track: Arc<TrackRemote>) -> mpsc::Receiver<ReadResult> {
    let (tx, rx) = mpsc::channel(TRACK_BUFFER);
    tokio::spawn(async move {
        loop {
            let read = track.read_rtp().await.map(|(p, _)| p);
            // A packet with an unknown payload type is a per-packet error; anything else
            // means the receiver is closed or broken.
            let terminal = matches!(&read, Err(e) if !matches!(e, webrtc::Error::ErrCodecNotFound));
            if let Err(e) = &read {
                tracing::debug!(error = %e, terminal, "reading remote track");
            }
            if terminal {
                break;
            }
            if tx.send(read).await.is_err() {
                break;
            }
        }
    });
    rx
}

impl std::fmt::Debug for RemoteTrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteTrack")
            .field("stream_id", &self.stream_id())
            .field("id", &self.id())
            .field("mime_type", &self.mime_type())
            .field("ssrc", &self.ssrc())
            .field("mid", &self.mid)
            .finish_non_exhaustive()
    }
}

impl RemoteTrack {
    /// The msid stream identifier from the server's answer (the publisher's stream id when the
    /// server preserves labels).
    pub fn stream_id(&self) -> String {
        self.track.stream_id()
    }

    /// The msid track identifier from the server's answer (e.g. `"stethoscope"`).
    pub fn id(&self) -> String {
        self.track.id()
    }

    /// Audio or video.
    pub fn kind(&self) -> MediaKind {
        match self.track.kind() {
            RTPCodecType::Audio => MediaKind::Audio,
            RTPCodecType::Video => MediaKind::Video,
            // Not known from the transceiver: fall back to the codec's MIME type.
            _ if self.mime_type().to_ascii_lowercase().starts_with("audio/") => MediaKind::Audio,
            _ => MediaKind::Video,
        }
    }

    /// The negotiated codec's MIME type (e.g. `"video/VP8"`).
    pub fn mime_type(&self) -> String {
        self.track.codec().capability.mime_type
    }

    /// The codec, if it is one this crate knows.
    pub fn codec(&self) -> Option<Codec> {
        Codec::from_mime_type(&self.mime_type())
    }

    /// The payload type the packets carry.
    pub fn payload_type(&self) -> u8 {
        self.track.payload_type()
    }

    /// The SSRC of the received stream.
    pub fn ssrc(&self) -> u32 {
        self.track.ssrc()
    }

    /// The RID, if the stream was received with one.
    pub fn rid(&self) -> Option<String> {
        Some(self.track.rid().to_owned()).filter(|r| !r.is_empty())
    }

    /// The `mid` of the transceiver the track arrived on.
    pub fn mid(&self) -> Option<&str> {
        self.mid.as_deref()
    }

    /// Waits for the next RTP packet (header and payload, as received after SRTP decryption).
    ///
    /// Returns [`Error::Closed`] once the track or the session ends. Cancel-safe: packets are
    /// read from the network by a background task, so dropping this future loses nothing.
    /// Clones of a `RemoteTrack` share one packet queue.
    pub async fn read_rtp(&self) -> Result<rtp::packet::Packet> {
        match self.packets.lock().await.recv().await {
            None => Err(Error::Closed),
            Some(Ok(packet)) => Ok(packet),
            Some(Err(source)) => Err(Error::WebRtc {
                context: "reading RTP",
                source,
            }),
        }
    }

    /// [`read_rtp`](Self::read_rtp) with a deadline ([`Error::Timeout`] when it passes).
    pub async fn read_rtp_timeout(&self, timeout: Duration) -> Result<rtp::packet::Packet> {
        tokio::time::timeout(timeout, self.read_rtp())
            .await
            .map_err(|_| Error::Timeout {
                what: "an RTP packet",
                after: timeout,
            })?
    }

    /// Sends a Picture Loss Indication for this stream (asks for a keyframe).
    pub async fn request_keyframe(&self) -> Result<()> {
        let pc = self.pc.upgrade().ok_or(Error::Closed)?;
        pc.write_rtcp(&[Box::new(PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: self.ssrc(),
        })])
        .await
        .map_err(Error::webrtc("sending PLI"))?;
        Ok(())
    }

    /// The underlying `webrtc` track.
    pub fn inner(&self) -> &Arc<TrackRemote> {
        &self.track
    }
}

/// Drains RTCP (sender reports…) of a receiver so the interceptors process it.
fn spawn_rtcp_drain(receiver: Arc<RTCRtpReceiver>, rid: String) {
    tokio::spawn(async move {
        loop {
            let read = if rid.is_empty() {
                receiver.read_rtcp().await
            } else {
                receiver.read_simulcast_rtcp(&rid).await
            };
            if read.is_err() {
                break;
            }
        }
    });
}

/// Builds a peer connection with the configured `recvonly` transceivers and a channel of
/// incoming tracks.
async fn prepare(
    opts: &ClientOptions,
) -> Result<(
    NewPeer,
    mpsc::UnboundedReceiver<RemoteTrack>,
    Option<DataChannels>,
)> {
    if opts.recv_video + opts.recv_audio == 0 {
        return Err(Error::InvalidTrack(
            "a WHEP offer needs at least one transceiver".into(),
        ));
    }
    let peer = engine::new_peer_connection(opts, engine::Role::Subscribe).await?;
    let kinds = std::iter::repeat_n(RTPCodecType::Video, opts.recv_video)
        .chain(std::iter::repeat_n(RTPCodecType::Audio, opts.recv_audio));
    for kind in kinds {
        let added = peer
            .pc
            .add_transceiver_from_kind(
                kind,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    send_encodings: vec![],
                }),
            )
            .await;
        if let Err(e) = added {
            let _ = peer.pc.close().await;
            return Err(Error::WebRtc {
                context: "adding transceiver",
                source: e,
            });
        }
    }
    let data = if opts.data_channel {
        let commands = match peer.pc.create_data_channel(COMMANDS_LABEL, None).await {
            Ok(c) => c,
            Err(e) => {
                let _ = peer.pc.close().await;
                return Err(Error::WebRtc {
                    context: "creating the commands data channel",
                    source: e,
                });
            }
        };
        let (dtx, drx) = mpsc::channel::<DataMessage>(DATA_QUEUE);
        peer.pc.on_data_channel(Box::new(move |dc| {
            let label = dc.label().to_owned();
            let reliable = dc.ordered() && dc.max_retransmits().is_none();
            let dtx = dtx.clone();
            dc.on_message(Box::new(move |msg| {
                // A full queue means the application stopped reading: drop, never block.
                let _ = dtx.try_send(DataMessage {
                    label: label.clone(),
                    reliable,
                    data: msg.data,
                });
                Box::pin(async {})
            }));
            Box::pin(async {})
        }));
        Some(DataChannels {
            commands,
            incoming: Mutex::new(drx),
        })
    } else {
        None
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let weak = Arc::downgrade(&peer.pc);
    peer.pc
        .on_track(Box::new(move |track, receiver, transceiver| {
            let remote = RemoteTrack {
                mid: transceiver.mid().map(|m| m.to_string()),
                pc: weak.clone(),
                packets: Arc::new(Mutex::new(spawn_track_reader(Arc::clone(&track)))),
                track: Arc::clone(&track),
            };
            tracing::debug!(?remote, "track received");
            spawn_rtcp_drain(receiver, track.rid().to_owned());
            // An error only means the Subscriber (and its receiver) is gone.
            let _ = tx.send(remote);
            Box::pin(async {})
        }));
    Ok((peer, rx, data))
}

/// Builds the WHEP offer a [`Subscriber`] would send (ICE gathering included) without
/// contacting any server; the peer connection is closed afterwards.
pub async fn whep_offer(opts: &ClientOptions) -> Result<String> {
    let (peer, _rx, _data) = prepare(opts).await?;
    let offer = engine::gather_offer(&peer.pc, opts.gather_timeout).await;
    let _ = peer.pc.close().await;
    offer
}

/// A WHEP subscribing session.
///
/// ```no_run
/// # async fn demo() -> cabine_client::Result<()> {
/// use std::time::Duration;
/// use cabine_client::{ClientOptions, Subscriber};
/// let subscriber =
///     Subscriber::connect("http://127.0.0.1:8080/whep/room-1", "<jwt>", ClientOptions::loopback())
///         .await?;
/// let track = subscriber.next_track(Duration::from_secs(5)).await?;
/// println!("{} {} {}", track.stream_id(), track.id(), track.mime_type());
/// let packet = track.read_rtp().await?;
/// println!("seq {} payload {:?}", packet.header.sequence_number, packet.payload);
/// subscriber.close().await?;
/// # Ok(()) }
/// ```
pub struct Subscriber {
    session: Session,
    tracks: Mutex<mpsc::UnboundedReceiver<RemoteTrack>>,
    data: Option<DataChannels>,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("resource", &self.session.resource.url.as_str())
            .finish_non_exhaustive()
    }
}

impl Subscriber {
    /// Subscribes through a WHEP endpoint.
    ///
    /// Offers [`ClientOptions::recv_video`] video then [`ClientOptions::recv_audio`] audio
    /// `recvonly` transceivers (all codecs of [`Codec::ALL`]), otherwise like
    /// [`Publisher::connect`](crate::Publisher::connect): `POST`, `201` + `Location` + answer,
    /// wait until connected.
    pub async fn connect(whep_url: &str, token: &str, opts: ClientOptions) -> Result<Subscriber> {
        let opts = crate::session::with_endpoint_ice(whep_url, token, opts).await?;
        let (peer, rx, data) = prepare(&opts).await?;
        let session = Session::negotiate(whep_url, token, peer, &opts).await?;
        Ok(Subscriber {
            session,
            tracks: Mutex::new(rx),
            data,
        })
    }

    /// Waits for the next message on the server's data channels (telemetry). Needs
    /// [`ClientOptions::data_channel`]; [`Error::Closed`] otherwise.
    pub async fn next_data(&self, timeout: Duration) -> Result<DataMessage> {
        let data = self.data.as_ref().ok_or(Error::Closed)?;
        let mut rx = data.incoming.lock().await;
        match tokio::time::timeout(timeout, rx.recv()).await {
            Err(_) => Err(Error::Timeout {
                what: "a data channel message",
                after: timeout,
            }),
            Ok(None) => Err(Error::Closed),
            Ok(Some(m)) => Ok(m),
        }
    }

    /// Sends a text message (a device command, JSON) on the subscriber's `commands` channel,
    /// waiting up to `timeout` for the channel to open.
    pub async fn send_data(&self, text: &str, timeout: Duration) -> Result<()> {
        use webrtc::data_channel::data_channel_state::RTCDataChannelState;
        let data = self.data.as_ref().ok_or(Error::Closed)?;
        let deadline = tokio::time::Instant::now() + timeout;
        while data.commands.ready_state() != RTCDataChannelState::Open {
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: "the commands data channel to open",
                    after: timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        data.commands
            .send_text(text.to_owned())
            .await
            .map_err(|source| Error::WebRtc {
                context: "sending on the commands data channel",
                source,
            })?;
        Ok(())
    }

    /// Waits for the next received track (see [`RemoteTrack`] for when a track counts as
    /// received). [`Error::Timeout`] if none arrives in time.
    pub async fn next_track(&self, timeout: Duration) -> Result<RemoteTrack> {
        let mut rx = self.tracks.lock().await;
        match tokio::time::timeout(timeout, rx.recv()).await {
            Err(_) => Err(Error::Timeout {
                what: "a remote track",
                after: timeout,
            }),
            Ok(None) => Err(Error::Closed),
            Ok(Some(t)) => Ok(t),
        }
    }

    /// Waits for `count` tracks within `timeout` overall.
    pub async fn tracks(&self, count: usize, timeout: Duration) -> Result<Vec<RemoteTrack>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_track(left).await {
                Ok(t) => out.push(t),
                Err(Error::Timeout { .. }) => {
                    return Err(Error::Timeout {
                        what: "the expected number of remote tracks",
                        after: timeout,
                    })
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The absolute URL of the WHEP session resource (from the `Location` header).
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

    /// The underlying `webrtc` peer connection.
    pub fn peer_connection(&self) -> &Arc<RTCPeerConnection> {
        &self.session.pc
    }

    /// Ends the session: `DELETE`s the resource, then closes the peer connection (see
    /// [`Publisher::close`](crate::Publisher::close)).
    pub async fn close(self) -> Result<()> {
        self.session.close().await
    }
}
