//! Cabine's selective forwarding unit.
//!
//! The core is sans-IO: a [`room::Room`] holds the WebRTC sessions of one consultation (one
//! str0m `Rtc` each, in RTP mode) and forwards RTP between them, rewriting headers per
//! subscriber ([`forwarder`]) and picking simulcast layers from each subscriber's bandwidth
//! estimate ([`simulcast`]). Time is always an argument; tests drive it by hand.
//!
//! The shell ([`shell`]) owns the single UDP media socket and the worker threads. The I/O
//! thread reads datagrams in batches ([`udp`]: `recvmmsg`/`sendmmsg`) and routes them by ICE
//! ufrag (STUN) or by source address (everything else, [`demux`]; an address is learned only
//! once str0m authenticated it). It runs worker 0 itself, so that worker's datagrams are
//! handled where they were read; every other worker gets its share of a read in one message.
//! With ICE-TCP on, a TCP listener on the same address (`shell::tcp`, one thread) takes
//! RFC 4571 frames ([`framing`]) from passive-candidate connections into the same workers as
//! `Protocol::Tcp` receives, and sends the rooms' TCP transmits back on their connection.
//! Each worker runs the one drive loop: apply one input, then drain the room's one output until
//! it says when to come back; its rooms' timers sit in an earliest-deadline queue
//! ([`deadlines`]).
//!
//! ```text
//! loop {
//!     wait for datagrams or a command, at most until the earliest room timeout
//!     room.handle_datagram(now, arrival, session, from, to, bytes) // or join / leave / answer
//!     room.handle_timeout(now)                                     // when due
//!     loop {
//!         match room.poll_output() {
//!             Output::Transmit(t) => send_batch.push(t),               // sendmmsg per turn
//!             Output::Offer(o) | Progress(p) | Data(d) | Ended(r) => tell the server,
//!             Output::Timeout(at) => break,                        // next wake-up
//!         }
//!     }
//! }
//! ```
//!
//! Rooms are sharded over workers by name, so a room lives on one thread and the packet path
//! takes no lock.

#[cfg(test)]
mod alloc_counter;
pub mod certificate;
pub mod codec;
pub mod deadlines;
pub mod demux;
pub mod forwarder;
pub mod framing;
pub mod pause;
pub mod red;
pub mod room;
pub mod sdp;
pub mod shell;
pub mod simulcast;
pub mod stats;
pub mod temporal;
pub mod udp;

pub use certificate::DtlsCertificate;
pub use room::{
    EndCause, JoinError, JoinRequest, Joined, NegotiationError, Offer, OfferRequest, OfferedTrack,
    Output, Room, RoomConfig, RoomPanicked, SessionId, SessionKind,
};
pub use shell::{Sfu, SfuConfig, SfuError, TcpConfig, TcpStats};
