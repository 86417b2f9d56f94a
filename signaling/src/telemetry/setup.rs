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

/// Where and how often telemetry is pushed.
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

/// A telemetry setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TelemetryConfigError {
    /// The OTLP endpoint is not an `http://host[:port][/path]` URL.
    #[error("invalid OTLP endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        endpoint: String,
        reason: &'static str,
    },
    /// The export interval is not a positive whole number of milliseconds.
    #[error("invalid {EXPORT_INTERVAL_ENV} {0:?}: expected a positive number of milliseconds")]
    InvalidExportInterval(String),
}

impl TelemetryConfig {
    /// The defaults, overridden by `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME` and
    /// `MARQUEE_OTLP_EXPORT_INTERVAL_MS` where set and not empty.
    pub fn from_env() -> Result<Self, TelemetryConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// As [`TelemetryConfig::from_env`], reading variables through `lookup` (testable without
    /// touching the process environment).
    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, TelemetryConfigError> {
        let set = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());
        let mut config = Self::default();
        if let Some(endpoint) = set(OTLP_ENDPOINT_ENV) {
            validate_endpoint(endpoint.trim())?;
            config.otlp_endpoint = Some(endpoint.trim().to_owned());
        }
        if let Some(name) = set(SERVICE_NAME_ENV) {
            config.service_name = name;
        }
        if let Some(interval) = set(EXPORT_INTERVAL_ENV) {
            config.export_interval = match interval.trim().parse::<u64>() {
                Ok(ms) if ms > 0 => Duration::from_millis(ms),
                _ => return Err(TelemetryConfigError::InvalidExportInterval(interval)),
            };
        }
        Ok(config)
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
/// [`TelemetryConfig::from_env`] rules out) is logged and skipped: `/metrics` still works.
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

/// Checks an endpoint before any exporter sees it, so a typo fails at startup with a clear
/// message instead of as a warning on every export.
fn validate_endpoint(endpoint: &str) -> Result<(), TelemetryConfigError> {
    let invalid = |reason| TelemetryConfigError::InvalidEndpoint {
        endpoint: endpoint.to_owned(),
        reason,
    };
    let uri: axum::http::Uri = endpoint.parse().map_err(|_| invalid("not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(invalid("https is not supported (no TLS client built in)")),
        _ => return Err(invalid("expected an http:// URL")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("no host"));
    }
    if uri.query().is_some() {
        return Err(invalid("a query string cannot take a /v1/<signal> suffix"));
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

    /// A lookup over fixed variables, standing in for the process environment.
    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn config_from_environment() {
        assert_eq!(
            TelemetryConfig::from_lookup(env(&[])),
            Ok(TelemetryConfig::default())
        );
        let config = TelemetryConfig::from_lookup(env(&[
            (OTLP_ENDPOINT_ENV, "http://127.0.0.1:4318/"),
            (EXPORT_INTERVAL_ENV, "500"),
            (SERVICE_NAME_ENV, "edge-1"),
        ]))
        .unwrap();
        assert_eq!(
            config.otlp_endpoint.as_deref(),
            Some("http://127.0.0.1:4318/")
        );
        assert_eq!(config.export_interval, Duration::from_millis(500));
        assert_eq!(config.service_name, "edge-1");
        assert_eq!(
            signal_url(config.otlp_endpoint.as_deref().unwrap(), "traces"),
            "http://127.0.0.1:4318/v1/traces"
        );
        // Empty means unset, as the OpenTelemetry specification says.
        assert_eq!(
            TelemetryConfig::from_lookup(env(&[(OTLP_ENDPOINT_ENV, "")])),
            Ok(TelemetryConfig::default())
        );
        for bad in [
            "127.0.0.1:4318",
            "https://collector:4318",
            "http://",
            "ftp://x",
            "http://h/?q=1",
        ] {
            assert!(
                matches!(
                    TelemetryConfig::from_lookup(env(&[(OTLP_ENDPOINT_ENV, bad)])),
                    Err(TelemetryConfigError::InvalidEndpoint { .. })
                ),
                "{bad} is refused"
            );
        }
        for bad in ["0", "-5", "soon"] {
            assert_eq!(
                TelemetryConfig::from_lookup(env(&[(EXPORT_INTERVAL_ENV, bad)])),
                Err(TelemetryConfigError::InvalidExportInterval(bad.to_owned()))
            );
        }
    }
}
