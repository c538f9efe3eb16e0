//! Errors of the impairment tool.

use std::net::SocketAddr;

/// What went wrong in the relay or while reading a link description.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A profile name that is not one of [`Profile::NAMES`](crate::Profile::NAMES).
    #[error("unknown link profile {0:?} (known: rural-adsl, 4g-doctor, severe, clean)")]
    UnknownProfile(String),
    /// A link parameter out of its range.
    #[error("invalid link parameter {name}: {value} ({reason})")]
    InvalidParameter {
        /// The parameter.
        name: &'static str,
        /// Its value as given.
        value: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A socket could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// Another socket call failed.
    #[error("{context}: {source}")]
    Io {
        /// What the relay was doing.
        context: &'static str,
        /// The cause.
        source: std::io::Error,
    },
}
