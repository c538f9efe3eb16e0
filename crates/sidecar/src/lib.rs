//! Cabine's device telemetry sidecar.
//!
//! Kiosks dial in over QUIC (ALPN `cabine-telemetry/1`, TLS 1.3) and send device data as the
//! protobuf frames of [`cabine_proto::telemetry`]; the sidecar authenticates them with the same
//! token as the media side, removes duplicates, aligns their clocks to the server's, and hands
//! every frame to a [`TelemetrySink`] (the server's WebRTC `telemetry` data channels).
//!
//! - [`core`]: the sans-IO protocol state machine ([`core::Core`]).
//! - [`Sidecar`] ([`server`]): the thin quinn shell that owns the socket, tasks and timers.
//! - [`stream`]: the second shell, the same frames over one message stream (the server's
//!   WebSocket on its HTTP port) for kiosks whose network drops UDP.
//! - [`client`]: the kiosk side (used by `cabine-kiosk`): connect, declare channels, send
//!   measurements (kept until acknowledged, resent after a reconnection), waveforms (datagrams),
//!   status, blobs; receive commands; answer clock pings. Its protocol state and reconnection
//!   rules are the sans-IO [`client::core::ClientCore`] (with [`client::reconnect`]); `Client`
//!   is the quinn/tokio shell around it, as [`Sidecar`] is around [`core::Core`].
//!
//! The shell's drive loop, per input:
//!
//! ```text
//! let now = Instant::now();
//! core.handle_uni(now, conn, stream, &bytes)?;     // one input…
//! while let Some(out) = core.poll_output() {       // …then drain every output
//!     match out { Send {..} => …, Deliver {..} => sink.deliver(..), Close {..} => … }
//! }
//! sleep_until(core.poll_timeout()); core.handle_timeout(Instant::now());
//! ```

pub mod auth;
pub mod client;
pub mod clock;
pub mod core;
pub mod error;
pub mod seq;
pub mod server;
pub mod sink;
pub mod stats;
pub mod stream;
pub mod tls;

pub use auth::{StaticTokens, TokenError, TokenVerifier};
pub use core::{CommandRequest, Limits};
pub use error::{CommandError, Refusal, SidecarError};
pub use server::{Sidecar, SidecarConfig, TlsSource};
pub use sink::{ChannelSink, SinkItem, TelemetrySink};
pub use stats::{ChannelStats, SidecarStats};
pub use stream::{StreamConn, StreamEvent};
