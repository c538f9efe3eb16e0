//! Cabine telemetry sidecar (work in progress).
