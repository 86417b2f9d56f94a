//! Where telemetry goes: [`TelemetryConfig`] and the OpenTelemetry providers built from it
//! (the process-wide tracer behind [`init_tracing`], and each server's meter provider).

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// Environment variable of the collector's base URL (OpenTelemetry's standard name).
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// Environment variable of the export interval, in milliseconds.
pub const EXPORT_INTERVAL_ENV: &str = "MARQUEE_OTLP_EXPORT_INTERVAL_MS";
/// Environment variable of the service name (OpenTelemetry's standard name).
pub const SERVICE_NAME_ENV: &str = "OTEL_SERVICE_NAME";

/// Where and how often telemetry is pushed. The binary composes it with every other setting
/// (`settings`: the `[telemetry]` table, the variables above, `--otlp-endpoint` and the like).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// Base URL of an OTLP/HTTP collector, such as `http://127.0.0.1:4318`; `/v1/traces` and
    /// `/v1/metrics` are appended. `None` (the default): nothing is pushed, and metrics are
    /// only served on `/metrics`. Plain `http` only: no TLS client is built in, since a
    /// collector normally runs as a local agent or sidecar.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported resource. Default `marquee`.
    pub service_name: String,
    /// How often metrics are pushed, and the longest a finished span waits in the batch
    /// before it is pushed. Default 10 s: fresh enough for dashboards, one request per
    /// signal and interval per node.
    pub export_interval: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "marquee".to_owned(),
            export_interval: Duration::from_secs(10),
        }
    }
}

/// Installs the process-wide `tracing` subscriber: console logs filtered by `RUST_LOG` (else
/// `default_filter`, as before), and, when an endpoint is configured, every span at the level
/// `default_filter` enables exported over OTLP/HTTP in batches.
///
/// Spans follow `default_filter`, not `RUST_LOG`, so that quieting the console does not
/// silently stop traces. Call once, from `main`; keep the guard until exit.
pub fn init_tracing(
    config: &TelemetryConfig,
    default_filter: &str,
) -> anyhow::Result<TracingGuard> {
    // An unparsable RUST_LOG falls back to the default, as it always has.
    let console_filter = match EnvFilter::try_from_default_env() {
        Ok(filter) => filter,
        Err(_) => EnvFilter::try_new(default_filter)?,
    };
    let provider = match &config.otlp_endpoint {
        Some(endpoint) => Some(tracer_provider(config, endpoint)?),
        None => None,
    };
    let otel_layer = match &provider {
        Some(provider) => Some(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("marquee"))
                .with_filter(EnvFilter::try_new(default_filter)?),
        ),
        None => None,
    };
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_filter(console_filter))
        .with(otel_layer)
        .try_init()?;
    Ok(TracingGuard { provider })
}

/// Keeps span export running; flushes the spans still queued and stops the exporter on
/// [`TracingGuard::shutdown`] or drop. Shutting down blocks until the last batch is sent or
/// the export times out, so call it at exit (or from `spawn_blocking`).
#[must_use = "dropping the guard stops span export"]
pub struct TracingGuard {
    provider: Option<SdkTracerProvider>,
}

impl TracingGuard {
    /// Flushes and stops span export. Later calls (and the drop) do nothing.
    pub fn shutdown(&mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        if let Err(err) = provider.shutdown() {
            tracing::warn!(%err, "flushing the last spans failed");
        }
    }
}

impl Drop for TracingGuard {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// One server's meter provider: `scrape_reader` (the `/metrics` side) always, and, when an
/// endpoint is configured, a periodic OTLP push every `export_interval`. Both read the same
/// instruments, so the two never disagree. An OTLP exporter that cannot be built (which
/// [`check_otlp_endpoint`] rules out) is logged and skipped: `/metrics` still works.
pub(super) fn meter_provider(
    config: &TelemetryConfig,
    scrape_reader: impl MetricReader,
) -> SdkMeterProvider {
    let mut builder = SdkMeterProvider::builder()
        .with_resource(resource(config))
        .with_reader(scrape_reader);
    if let Some(endpoint) = &config.otlp_endpoint {
        let exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(signal_url(endpoint, "metrics"))
            // Cumulative, like the Prometheus side, so both show the same numbers.
            .with_temporality(Temporality::Cumulative)
            .build();
        match exporter {
            Ok(exporter) => {
                let periodic = PeriodicReader::builder(exporter)
                    .with_interval(config.export_interval)
                    .build();
                builder = builder.with_reader(periodic);
            }
            Err(err) => tracing::warn!(%err, %endpoint, "OTLP metrics export disabled"),
        }
    }
    builder.build()
}

/// A tracer provider whose batch processor pushes finished spans every `export_interval`
/// (or sooner, when 512 are waiting). The processor runs on its own thread, so exporting
/// never blocks the runtime; when its queue (2,048 spans, the SDK default) is full, new
/// spans are dropped, never waited for.
fn tracer_provider(config: &TelemetryConfig, endpoint: &str) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(signal_url(endpoint, "traces"))
        .build()?;
    let batch = BatchConfigBuilder::default()
        .with_scheduled_delay(config.export_interval)
        .build();
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(batch)
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource(config))
        .build())
}

fn resource(config: &TelemetryConfig) -> Resource {
    Resource::builder()
        .with_service_name(config.service_name.clone())
        .build()
}

/// Checks an OTLP endpoint before any exporter sees it, so that a typo in the file, a flag or
/// `OTEL_EXPORTER_OTLP_ENDPOINT` fails at startup (`settings`) with a clear message instead of
/// as a warning on every export: an `http://host[:port][/path]` URL, to which
/// [`signal_url`] can append `/v1/<signal>`.
pub(crate) fn check_otlp_endpoint(endpoint: &str) -> Result<(), String> {
    let uri: axum::http::Uri = endpoint
        .parse()
        .map_err(|_| format!("`{endpoint}` is not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err("https is not supported (no TLS client built in)".into()),
        _ => return Err(format!("`{endpoint}` is not an http:// URL")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{endpoint}` has no host"));
    }
    if uri.query().is_some() {
        return Err("a query string cannot take the /v1/<signal> suffix".into());
    }
    Ok(())
}

/// `base` + `/v1/<signal>`, the OTLP/HTTP path of a signal (OTLP specification, "OTLP/HTTP
/// Request").
fn signal_url(base: &str, signal: &str) -> String {
    format!("{}/v1/{signal}", base.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked_and_take_the_signal_path() {
        for good in [
            "http://127.0.0.1:4318/",
            "http://collector:4318",
            "http://c/otlp",
        ] {
            assert_eq!(check_otlp_endpoint(good), Ok(()), "{good} is accepted");
        }
        assert_eq!(
            signal_url("http://127.0.0.1:4318/", "traces"),
            "http://127.0.0.1:4318/v1/traces"
        );
        for bad in [
            "127.0.0.1:4318",
            "https://collector:4318",
            "http://",
            "ftp://x",
            "http://h/?q=1",
        ] {
            assert!(check_otlp_endpoint(bad).is_err(), "{bad} is refused");
        }
    }
}
