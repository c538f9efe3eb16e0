//! Cabine's selective forwarding unit.
//!
//! The core is sans-IO: a [`room::Room`] holds the WebRTC sessions of one consultation (one
//! str0m `Rtc` each, in RTP mode) and forwards RTP between them, rewriting headers per
//! subscriber ([`forwarder`]) and picking simulcast layers from each subscriber's bandwidth
//! estimate ([`simulcast`]). Time is always an argument; tests drive it by hand.
//!
//! The shell ([`shell`]) owns the single UDP media socket and the worker threads. One receive
//! thread reads datagrams and routes them by ICE ufrag (STUN) or by source address (everything
//! else, [`demux`]) to the worker that owns the room; each worker runs the one drive loop:
//! apply one input, then drain the room's one output until it says when to come back.
//!
//! ```text
//! loop {
//!     wait for a datagram or command, at most until the earliest room timeout
//!     room.handle_datagram(now, arrival, session, from, to, bytes) // or join / leave / answer
//!     room.handle_timeout(now)                                     // when due
//!     loop {
//!         match room.poll_output() {
//!             Output::Transmit(t) => socket.send_to(t),
//!             Output::Offer(o) | Progress(p) | Data(d) | Ended(r) => tell the server,
//!             Output::Timeout(at) => break,                        // next wake-up
//!         }
//!     }
//! }
//! ```
//!
//! Rooms are sharded over workers by name, so a room lives on one thread and the packet path
//! takes no lock.

pub mod codec;
pub mod deadlines;
pub mod demux;
pub mod forwarder;
pub mod pause;
pub mod room;
pub mod sdp;
pub mod shell;
pub mod simulcast;
pub mod stats;
pub mod udp;

pub use room::{
    EndCause, JoinError, JoinRequest, Joined, NegotiationError, Offer, OfferRequest, OfferedTrack,
    Output, Room, RoomConfig, RoomPanicked, SessionId, SessionKind,
};
pub use shell::{Sfu, SfuConfig, SfuError};
