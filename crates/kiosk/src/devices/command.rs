//! A command for a simulated device as it travels from whoever receives it (the telemetry
//! link, or a test) to the shell driving [`Devices`](super::Devices), with a way back for
//! the device's answer.

use tokio::sync::oneshot;

use super::{ChannelId, CommandOutcome};

/// A command for a simulated device, from whoever wires telemetry in (the QUIC client).
#[derive(Debug)]
pub struct DeviceCommand {
    /// The device's channel.
    pub channel: ChannelId,
    /// The command, e.g. [`START_MEASUREMENT`](super::START_MEASUREMENT).
    pub name: String,
    /// Where to send the device's answer, if anyone wants it.
    pub reply: Option<oneshot::Sender<CommandOutcome>>,
}
