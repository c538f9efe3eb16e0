//! Compiles the telemetry schema with `protox` (a pure-Rust protobuf compiler, so no `protoc`
//! is needed) and generates the Rust types with `prost-build`, with serde derives for the JSON
//! that browsers receive.

use std::error::Error;

const SCHEMA: &str = "cabine/telemetry/v1/telemetry.proto";

/// Fields holding a protobuf enum (an `i32` in Rust): serialised to JSON as the value's short
/// lower-case name (`"measurement"`), read back from that name, the full name or the number.
const ENUM_FIELDS: &[(&str, &str)] = &[
    ("ChannelDecl.kind", "channel_kind"),
    ("ChannelDecl.device_kind", "device_kind"),
    ("Measurement.status", "measurement_status"),
    ("Status.state", "device_state"),
    ("CommandResult.outcome", "command_outcome"),
    ("ServerHello.accepted_kinds", "channel_kinds"),
];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile([SCHEMA], ["proto"])?;
    let mut config = prost_build::Config::new();
    config
        .btree_map(["."])
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        .message_attribute(".", "#[serde(default)]")
        .enum_attribute(".", "#[serde(rename_all = \"snake_case\")]")
        .field_attribute(
            ".cabine.telemetry.v1.BlobChunk.data",
            "#[serde(with = \"crate::telemetry::json::base64_bytes\")]",
        );
    for (field, module) in ENUM_FIELDS {
        config.field_attribute(
            format!(".cabine.telemetry.v1.{field}"),
            format!("#[serde(with = \"crate::telemetry::json::{module}\")]"),
        );
    }
    config.compile_fds(fds)?;
    Ok(())
}
