//! Cabine's impairment tool: a userspace UDP relay that makes a link poor on purpose, for
//! end-to-end tests and benches on a machine without `netem`.
//!
//! A client is given the relay's address instead of the server's media address. The relay
//! forwards what the client sends to the server from one socket of its own per client address,
//! and the server's replies back to that client, each direction through its own impaired
//! [`Link`]: loss (independent or Gilbert-Elliott bursts), a rate limit with a bounded queue
//! (token bucket, tail drop), one-way delay, jitter and reordering. Named [`Profile`]s give
//! the links of the cases Cabine is tuned for (`rural-adsl`, `4g-doctor`, `severe`).
//!
//! For WebRTC, the server's ICE candidate in the SDP answer is replaced by the relay's address
//! (the kiosk client does it with `ClientOptions::media_via`). The server (ICE-lite) sees the
//! client's checks arrive from the relay's per-client socket and answers that address (a
//! peer-reflexive candidate); the client sees the replies come from the address it was given.
//!
//! The core is sans-IO, in the one drive-loop shape, with time as an input:
//!
//! ```text
//! loop {
//!     wait for a packet, at most until the link's timeout
//!     link.handle_input(now, len, packet)          // lost, queued or in flight
//!     loop {
//!         match link.poll_output(now) {
//!             Output::Deliver(packet) => send it,
//!             Output::Timeout(at) => break,           // next wake-up
//!             Output::Idle => break,
//!         }
//!     }
//! }
//! ```
//!
//! [`Relay`] is the tokio shell around two links per client (per UDP client address, and per
//! TCP connection with [`RelayConfig::tcp`]: ICE-TCP candidates reach the server's media
//! port over TCP; a stream is rate-limited and delayed but never loses or reorders).

#![warn(missing_docs)]

mod error;
mod link;
mod loss;
mod profile;
mod relay;
mod shaper;
mod tcp;

pub use error::Error;
pub use link::{Fate, Link, LinkConfig, LinkStats, Output};
pub use loss::Loss;
pub use profile::Profile;
pub use relay::{Relay, RelayConfig, RelayStats};
