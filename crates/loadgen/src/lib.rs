//! Cabine's load generator: many simulated kiosks and doctors in one process, speaking real
//! WebRTC (ICE, DTLS-SRTP, RTCP, TWCC, NACK/RTX) to the `cabine` server over loopback through
//! WHIP/WHEP, or plain RTP to a bare UDP relay for the baseline.
//!
//! The engine is sans-IO str0m in RTP mode, many peers per thread ([`engine`]): each worker
//! thread owns its peers' sockets and runs the one drive loop:
//!
//! ```text
//! loop {
//!     epoll_wait(until the earliest peer deadline)
//!     for each readable socket: recv → rtc.handle_input(Receive)   // arrival time stamped here
//!     for each peer due: write the media due (send time in the payload), rtc.handle_input(Timeout)
//!     for each touched peer: drain rtc.poll_output() → sendto / events (RTP → stream statistics)
//! }
//! ```
//!
//! Every payload ends with a [`media::Trailer`]: stream id, sequence number and send time on
//! the process's one monotonic clock ([`clock`]), so a receiver in the same process computes
//! one-way latency, RFC 3550 jitter, loss and reordering per stream ([`receiver`]).
//! [`cluster`] measures a cluster of nodes on a real Redis (join time direct against
//! redirected, the registry's cost). [`quality`] measures what a doctor sees and hears of a real
//! `cabine-kiosk` through impaired links (issue 14). [`scenario`] sets up consultations against a [`target`] (the server or the relay as a child
//! process, measured through `/proc`), and [`report`] writes JSON, a table and an SVG plot.

pub mod clock;
pub mod cluster;
pub mod engine;
pub mod http;
pub mod janus;
pub mod media;
pub mod peer;
pub mod quality;
pub mod receiver;
pub mod relay;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod target;
pub mod tcp;
pub mod token;
pub mod turn;
