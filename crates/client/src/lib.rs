//! Cabine's WebRTC client library: a WHIP publisher and a WHEP subscriber built on the
//! `webrtc` crate (webrtc-rs), with no media codec of its own.
//!
//! Server tests, the `cabine-kiosk` simulator and vendors' kiosks use it to talk to a Cabine
//! server (or any WHIP/WHEP endpoint). It sends what the caller gives it — RTP payloads or
//! encoded frames — and hands back what arrives, so it links neither libvpx nor libopus; the
//! synthetic cameras, microphone, stethoscope and devices live in `cabine-kiosk`.
//!
//! - [`Publisher::connect`] publishes [`TrackSpec`]s to `POST /whip/{room}` and gives
//!   [`LocalTrack`]s to write RTP to (exact payload bytes with [`LocalTrack::write_rtp`], or
//!   encoded frames with [`LocalTrack::write_sample`]); VP8/VP9/H.264/AV1 tracks can be sent as
//!   simulcast (one [`LocalLayer`] per RID).
//! - [`Subscriber::connect`] subscribes through `POST /whep/{room}` and yields
//!   [`RemoteTrack`]s, labelled with the msid stream and track ids of the server's answer, and
//!   the server's data-channel messages ([`DataMessage`]).
//! - [`congestion`]: the uplink rate controller (sans-IO) fed by the publisher's RTCP
//!   ([`Publisher::take_feedback`]), and [`budget`]: how its target is split between tracks
//!   (audio first, device camera before room camera).
//!
//! A publisher's life, in short:
//!
//! ```no_run
//! # async fn run() -> cabine_client::Result<()> {
//! use cabine_client::{ClientOptions, Publisher, TrackSpec};
//!
//! let publisher = Publisher::connect(
//!     "https://cabine.example/whip/room-1",
//!     "<jwt>",
//!     vec![TrackSpec::audio("cabin-1", "microphone")],
//!     ClientOptions::default(),
//! )
//! .await?;
//! let mic = publisher.track(0).expect("one track asked for");
//! mic.write_rtp(b"opus bytes", false, 960).await?; // every 20 ms
//! publisher.close().await?;
//! # Ok(())
//! # }
//! ```
//!
//! Signalling is non-trickle: the client asks the endpoint for its STUN/TURN servers
//! (`OPTIONS`, `Link: rel="ice-server"`, RFC 9725 §4.6), waits for ICE gathering, then sends one
//! offer. With [`ClientOptions::loopback_only`] it gathers just a 127.0.0.1 host candidate,
//! which is what tests against a local server need. TURN over TCP and TLS and ICE-TCP toward
//! the server are bridged in process (the `webrtc` stack relays over UDP only). Errors are
//! precise ([`Error`]); a refused `POST` is an [`Error::Http`] carrying the status code and body
//! ([`HttpError`]).

#![warn(missing_docs)]

pub mod budget;
pub mod congestion;
mod engine;
mod error;
mod feedback;
mod ice_links;
mod ice_tcp;
mod media;
mod options;
mod publisher;
mod send_times;
mod session;
mod subscriber;
mod turn_tls;

pub use error::{Error, HttpError, Result};
pub use ice_links::parse_ice_links;
pub use media::{Codec, MediaKind, TrackSpec};
pub use options::{ClientOptions, IceServer};
pub use publisher::{
    whip_offer, LocalLayer, LocalTrack, Publisher, RtcpStats, SentRtp, SAMPLE_MTU,
};
pub use session::{follow_redirect, http_client, MAX_REDIRECTS};
pub use subscriber::{whep_offer, DataMessage, RemoteTrack, Subscriber, COMMANDS_LABEL};

/// The `webrtc` crate this client is built on, re-exported so callers can name its types
/// (e.g. `webrtc::rtp::packet::Packet`) without depending on it themselves.
pub use webrtc;

/// An RTP packet (header and payload), as returned by [`RemoteTrack::read_rtp`].
pub type RtpPacket = webrtc::rtp::packet::Packet;
