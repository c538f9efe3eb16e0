//! Cabine kiosk client: a WHIP publisher and WHEP subscriber built on the `webrtc` crate
//! (webrtc-rs).
//!
//! Used by the server's end-to-end tests and by the `cabine-kiosk` command line tool.
//!
//! - [`Publisher::connect`] publishes [`TrackSpec`]s to `POST /whip/{room}` and gives
//!   [`LocalTrack`]s to write RTP to (exact payload bytes with [`LocalTrack::write_rtp`], or
//!   encoded frames with [`LocalTrack::write_sample`]); VP8/VP9/H.264/AV1 tracks can be sent as
//!   simulcast (one [`LocalLayer`] per RID).
//! - [`Subscriber::connect`] subscribes through `POST /whep/{room}` and yields
//!   [`RemoteTrack`]s, labelled with the msid stream and track ids of the server's answer.
//!
//! - [`sources`]: synthetic cameras (VP8 via libvpx) and a microphone and stethoscope (Opus via
//!   libopus), or IVF / Ogg Opus files, to feed those tracks.
//! - [`devices`]: simulated medical devices (pulse oximeter, ECG, thermometer, blood pressure
//!   cuff, scale) as a sans-IO state machine producing coded measurements and waveforms.
//!
//! - [`congestion`]: the uplink rate controller (sans-IO) fed by the publisher's RTCP
//!   ([`Publisher::take_feedback`]), and [`budget`]: how its target is split between tracks
//!   (audio first, device camera before room camera).
//! - [`dial`]: a whole simulated cabin (the four tracks, the doctor's media, the devices and
//!   their telemetry) that reconnects by itself; what the `cabine-kiosk dial` command runs.
//! - [`queue`]: the walk-in queue (`cabine-kiosk dial --queue`): wait for the next available
//!   doctor, then dial the room the server opened.
//! - [`stills`]: full-resolution JPEG stills of the device camera, on the doctor's command.
//! - [`telemetry`]: the devices' link to the server's QUIC telemetry sidecar.
//!
//! Signalling is non-trickle: the client asks the endpoint for its STUN/TURN servers
//! (`OPTIONS`, `Link: rel="ice-server"`, RFC 9725 §4.6), waits for ICE gathering, then sends one
//! offer. With
//! [`ClientOptions::loopback_only`] it gathers just a 127.0.0.1 host candidate, which is what
//! tests against a local server need. Errors are precise ([`Error`]); a refused `POST` is an
//! [`Error::Http`] carrying the status code and body ([`HttpError`]).

#![warn(missing_docs)]

pub mod budget;
pub mod congestion;
pub mod devices;
pub mod dial;
mod engine;
mod error;
mod feedback;
mod ice_links;
mod ice_tcp;
mod media;
mod options;
mod publisher;
pub mod queue;
mod send_times;
mod session;
pub mod sources;
pub mod stills;
mod subscriber;
pub mod telemetry;
mod turn_tls;

pub use error::{Error, HttpError, Result};
pub use ice_links::parse_ice_links;
pub use media::{Codec, MediaKind, TrackSpec};
pub use options::{ClientOptions, IceServer};
pub use publisher::{
    whip_offer, LocalLayer, LocalTrack, Publisher, RtcpStats, SentRtp, SAMPLE_MTU,
};
pub use subscriber::{whep_offer, DataMessage, RemoteTrack, Subscriber, COMMANDS_LABEL};

/// The `webrtc` crate this client is built on, re-exported so callers can name its types
/// (e.g. `webrtc::rtp::packet::Packet`) without depending on it themselves.
pub use webrtc;

/// An RTP packet (header and payload), as returned by [`RemoteTrack::read_rtp`].
pub type RtpPacket = webrtc::rtp::packet::Packet;
