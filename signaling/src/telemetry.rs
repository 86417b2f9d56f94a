//! Telemetry: OpenTelemetry traces and metrics, pushed over OTLP/HTTP when a collector is
//! configured, and the Prometheus text format for `/metrics`.
//!
//! - `setup`: [`TelemetryConfig`] (where to push, if anywhere, and how often; composed by
//!   `settings` like every setting, from the `[telemetry]` table, the standard `OTEL_*`
//!   variables and flags), [`init_tracing`] (the process-wide `tracing` subscriber: console
//!   logs, and spans exported over OTLP, installed once by `main`) and the OTLP meter
//!   provider.
//! - `metrics`: [`Metrics`], one server's instruments and the calls the server records
//!   through. Not global, so that tests run several servers in one process.
//! - `exposition`: `GET /metrics`, the same instruments collected at each scrape and
//!   encoded by `prometheus-client`.
//!
//! Naming follows the OpenTelemetry→Prometheus compatibility rules: instruments are named
//! `marquee_*` without a `_total` suffix (OpenTelemetry semantic conventions), and the
//! Prometheus rendering appends `_total` to monotonic counters, as Prometheus' own OTLP
//! ingestion does. So `marquee_forwarded_packets` over OTLP is
//! `marquee_forwarded_packets_total` on `/metrics`.

mod exposition;
mod metrics;
mod setup;

pub use exposition::PROMETHEUS_CONTENT_TYPE;
pub use metrics::{JoinKind, Metrics};
pub(crate) use setup::check_otlp_endpoint;
pub use setup::{
    EXPORT_INTERVAL_ENV, OTLP_ENDPOINT_ENV, SERVICE_NAME_ENV, TelemetryConfig, TracingGuard,
    init_tracing,
};
