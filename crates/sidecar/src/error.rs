//! Errors of the sidecar, one enum per layer.

use cabine_proto::telemetry::ErrorCode;

/// Why the core closes a stream or a connection: a protocol error code (sent as the QUIC
/// application error code) and a reason (sent as the close reason; never holds health data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} ({}): {reason}", code.name(), code.code())]
pub struct Refusal {
    /// The error code.
    pub code: ErrorCode,
    /// What was wrong, with the offending value where it is not sensitive.
    pub reason: String,
}

impl Refusal {
    /// A refusal with `code` and `reason`.
    pub fn new(code: ErrorCode, reason: impl Into<String>) -> Self {
        Refusal {
            code,
            reason: reason.into(),
        }
    }
}

/// Why a command was not sent to a kiosk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The sender's token lacks the `commands` grant.
    #[error("the sender's role {role} is not granted `commands`")]
    NotAllowed {
        /// The sender's role.
        role: cabine_proto::Role,
    },
    /// The sender's token is for another room.
    #[error("the sender's token is not for this room")]
    WrongRoom,
    /// No kiosk of the room is connected (or not the one named).
    #[error("no connected kiosk in the room matches")]
    NoKiosk,
    /// Several kiosks are connected and the request names none.
    #[error("{0} kiosks are connected, the command must name one")]
    AmbiguousKiosk(usize),
    /// The kiosk has not declared this channel.
    #[error("channel {0} is not declared by the kiosk")]
    UnknownChannel(u32),
    /// The channel declares its commands and this is not one of them.
    #[error("channel {channel} does not accept the command {name:?}")]
    UnknownCommand {
        /// The channel.
        channel: u32,
        /// The command name.
        name: String,
    },
    /// The command name or parameters are empty or too long.
    #[error("invalid command: {0}")]
    Invalid(String),
    /// The kiosk's outbound queue is full.
    #[error("the kiosk's queue is full")]
    QueueFull,
}

/// Errors of the QUIC shell.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SidecarError {
    /// Binding the UDP socket failed.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The TLS configuration is unusable.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// Reading a certificate or key file failed.
    #[error("cannot read {path}: {source}")]
    ReadFile {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}
