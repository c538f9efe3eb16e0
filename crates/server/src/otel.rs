//! OpenTelemetry push (OTLP/HTTP): traces from `tracing` spans through `tracing-opentelemetry`,
//! and the same metrics as `/metrics` through a periodic reader.
//!
//! The binary builds the `tracing` subscriber; [`Otel::init`] gives it the layer to add, and
//! [`crate::metrics::Metrics::new`] takes the metric reader. Off when `otel.endpoint` is empty.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::metrics::PeriodicReader;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use serde::Deserialize;

/// `[otel]` configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtelConfig {
    /// Collector base URL ("" = off).
    pub endpoint: String,
    /// Metric push interval.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// `service.name`.
    pub service_name: String,
}

/// The OTLP pipelines, when configured.
pub struct Otel {
    tracer_provider: SdkTracerProvider,
    cfg: OtelConfig,
}

impl Otel {
    /// Builds the trace pipeline; `None` when no endpoint is configured.
    pub fn init(cfg: &OtelConfig) -> Result<Option<Otel>, String> {
        if cfg.endpoint.trim().is_empty() {
            return Ok(None);
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(signal_url(&cfg.endpoint, "traces"))
            .build()
            .map_err(|e| format!("OTLP span exporter: {e}"))?;
        let tracer_provider = SdkTracerProvider::builder()
            .with_resource(resource(cfg))
            .with_batch_exporter(exporter)
            .build();
        Ok(Some(Otel {
            tracer_provider,
            cfg: cfg.clone(),
        }))
    }

    /// The `tracing` layer exporting spans to the collector.
    pub fn layer<S>(
        &self,
    ) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        tracing_opentelemetry::layer().with_tracer(self.tracer_provider.tracer("cabine"))
    }

    /// Flushes pending spans (shutdown, tests).
    pub fn flush(&self) {
        let _ = self.tracer_provider.force_flush();
    }

    /// The configuration in force.
    pub fn config(&self) -> &OtelConfig {
        &self.cfg
    }
}

/// A periodic metric reader pushing to the collector, when configured.
pub fn metric_reader(
    cfg: &OtelConfig,
) -> Result<Option<PeriodicReader<opentelemetry_otlp::MetricExporter>>, String> {
    if cfg.endpoint.trim().is_empty() {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_endpoint(signal_url(&cfg.endpoint, "metrics"))
        .build()
        .map_err(|e| format!("OTLP metric exporter: {e}"))?;
    Ok(Some(
        PeriodicReader::builder(exporter)
            .with_interval(cfg.interval)
            .build(),
    ))
}

/// The resource describing this process.
pub fn resource(cfg: &OtelConfig) -> Resource {
    Resource::builder()
        .with_service_name(cfg.service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build()
}

fn signal_url(base: &str, signal: &str) -> String {
    format!("{}/v1/{signal}", base.trim_end_matches('/'))
}
