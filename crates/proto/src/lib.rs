//! Wire types shared by the Cabine server and its clients.
//!
//! Everything a client depends on and that crosses a process boundary lives here, parsed into
//! checked types once, where it enters:
//!
//! - [`token`]: the JWT claims (`sub`, `room`, `role`, `grants`, …) and the permission rules
//!   derived from a role, so the server and tools agree on who may do what.
//! - [`ids`]: validated room and participant identifiers, with a redacting wrapper for logs.
//! - [`signal`]: the WebSocket signalling messages (JSON, versioned) of `GET /ws/{room}`.
//! - [`telemetry`]: the device telemetry protocol (protobuf schema, framing, checks) and the JSON
//!   envelope the doctor's page receives.

pub mod ids;
#[cfg(feature = "jwt")]
pub mod jwt;
pub mod signal;
pub mod telemetry;
pub mod token;

pub use ids::{set_redaction_secret, IdError, Identity, Redacted, RoomId};
pub use token::{Claims, Grant, Role, RoleError};
