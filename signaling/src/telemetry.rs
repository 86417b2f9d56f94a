//! Telemetry: OpenTelemetry traces and metrics, pushed over OTLP/HTTP when a collector is
//! configured, and the Prometheus text format for `/metrics`.
//!
//! - [`TelemetryConfig`]: where to push (if anywhere) and how often; [`TelemetryConfig::from_env`]
//!   reads the standard `OTEL_EXPORTER_OTLP_ENDPOINT`.
//! - [`init_tracing`]: the process-wide `tracing` subscriber (console logs, and spans exported
//!   over OTLP), installed once by `main`.
//! - [`Metrics`]: one server's instruments. Not global, so that tests run several servers in
//!   one process, each with its own numbers.
//!
//! Naming follows the OpenTelemetry→Prometheus compatibility rules: instruments are named
//! `marquee_*` without a `_total` suffix (OpenTelemetry semantic conventions), and the
//! Prometheus rendering appends `_total` to monotonic counters, as Prometheus' own OTLP
//! ingestion does. So `marquee_forwarded_packets` over OTLP is
//! `marquee_forwarded_packets_total` on `/metrics`.
//!
//! Prometheus text is rendered here from a `ManualReader` collection (see `prometheus_text`)
//! rather than by `opentelemetry-prometheus`: that crate would add the `prometheus` crate and
//! its registry for a format of a few lines, its README steers new users to OTLP, and its
//! naming (unit suffixes, `otel_scope_*` labels, `target_info`) would differ from ours.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider as _, UpDownCounter};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{
    InstrumentKind, ManualReader, PeriodicReader, Pipeline, SdkMeterProvider, Temporality,
};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use sfu::SfuStats;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// Environment variable of the collector's base URL (OpenTelemetry's standard name).
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// Environment variable of the export interval, in milliseconds.
pub const EXPORT_INTERVAL_ENV: &str = "MARQUEE_OTLP_EXPORT_INTERVAL_MS";
/// Environment variable of the service name (OpenTelemetry's standard name).
pub const SERVICE_NAME_ENV: &str = "OTEL_SERVICE_NAME";
/// The `Content-Type` of [`Metrics::render_prometheus`]'s output.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

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

fn resource(config: &TelemetryConfig) -> Resource {
    Resource::builder()
        .with_service_name(config.service_name.clone())
        .build()
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

/// How a client joined, a label of join metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JoinKind {
    /// A host going live over the WebSocket protocol.
    WsHost,
    /// A viewer joining over the WebSocket protocol.
    WsViewer,
    /// A member joining a watch party.
    Party,
    /// A WHIP publisher (OBS and the like).
    Whip,
    /// A WHEP player.
    Whep,
}

impl JoinKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WsHost => "ws_host",
            Self::WsViewer => "ws_viewer",
            Self::Party => "party",
            Self::Whip => "whip",
            Self::Whep => "whep",
        }
    }
}

/// Bucket bounds of `marquee_join_duration_seconds`: 10 ms to 10 s, dense around the targets
/// (p95 ≤ 250 ms on an idle server, p99 ≤ 1 s during a spike; GUIDE §4).
const JOIN_SECONDS_BUCKETS: [f64; 11] =
    [0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Bucket bounds of `marquee_party_sync_spread_ms`: 1 ms to 2.5 s, around the 40 ms target
/// up to what other watch-party apps tolerate (1–2.5 s; GUIDE §4).
const SYNC_SPREAD_MS_BUCKETS: [f64; 11] = [
    1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 150.0, 300.0, 1000.0, 2500.0,
];

/// One server's metrics: instruments on their own meter provider, read by
/// [`Metrics::render_prometheus`] and, when an endpoint is configured, pushed over OTLP every
/// `export_interval`. Cheap to clone; every clone records into the same instruments.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<MetricsInner>,
}

struct MetricsInner {
    provider: SdkMeterProvider,
    /// The pull side, shared with the provider (which owns a [`SharedReader`] of it).
    reader: Arc<ManualReader>,
    join_duration: Histogram<f64>,
    join_refused: Counter<u64>,
    rate_limited: Counter<u64>,
    redis_errors: Counter<u64>,
    party_sync_spread: Histogram<f64>,
    sessions: UpDownCounter<i64>,
    /// The latest SFU counters; the observable instruments read it at each collection.
    sfu: Arc<Mutex<SfuStats>>,
}

impl Metrics {
    /// Creates the instruments. An OTLP exporter that cannot be built (which
    /// [`TelemetryConfig::from_env`] rules out) is logged and skipped: `/metrics` still works.
    pub fn new(config: &TelemetryConfig) -> Self {
        let reader = Arc::new(ManualReader::builder().build());
        let mut builder = SdkMeterProvider::builder()
            .with_resource(resource(config))
            .with_reader(SharedReader(reader.clone()));
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
        let provider = builder.build();
        let meter = provider.meter("marquee");
        let sfu = Arc::new(Mutex::new(SfuStats::default()));
        register_sfu_instruments(&meter, &sfu);
        let inner = MetricsInner {
            join_duration: meter
                .f64_histogram("marquee_join_duration_seconds")
                .with_description("Time from a join request to its answer, by kind of join.")
                .with_unit("s")
                .with_boundaries(JOIN_SECONDS_BUCKETS.to_vec())
                .build(),
            join_refused: meter
                .u64_counter("marquee_join_refused")
                .with_description("Joins refused, by kind of join and error code.")
                .build(),
            rate_limited: meter
                .u64_counter("marquee_rate_limited")
                .with_description("Requests refused by a rate limit, by limit.")
                .build(),
            redis_errors: meter
                .u64_counter("marquee_redis_errors")
                .with_description("Failed Redis operations.")
                .build(),
            party_sync_spread: meter
                .f64_histogram("marquee_party_sync_spread_ms")
                .with_description(
                    "Spread of playback positions across the devices of a watch party.",
                )
                .with_unit("ms")
                .with_boundaries(SYNC_SPREAD_MS_BUCKETS.to_vec())
                .build(),
            sessions: meter
                .i64_up_down_counter("marquee_sessions")
                .with_description("Open sessions, by transport.")
                .build(),
            provider,
            reader,
            sfu,
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// A join of `kind` answered after `seconds`. Negative or non-finite durations (a clock
    /// bug, not a join) are ignored.
    pub fn join(&self, kind: JoinKind, seconds: f64) {
        if seconds.is_finite() && seconds >= 0.0 {
            self.inner
                .join_duration
                .record(seconds, &[KeyValue::new("kind", kind.as_str())]);
        }
    }

    /// A join of `kind` refused with the error `code`.
    pub fn join_refused(&self, kind: JoinKind, code: &str) {
        self.inner.join_refused.add(
            1,
            &[
                KeyValue::new("kind", kind.as_str()),
                KeyValue::new("code", code.to_owned()),
            ],
        );
    }

    /// A request refused by `limit` (`ws_upgrade`, `http`, `message`, `chat`).
    pub fn rate_limited(&self, limit: &'static str) {
        self.inner
            .rate_limited
            .add(1, &[KeyValue::new("limit", limit)]);
    }

    /// A Redis operation failed.
    pub fn redis_error(&self) {
        self.inner.redis_errors.add(1, &[]);
    }

    /// The spread of a party's playback positions, in milliseconds. Negative or non-finite
    /// values are ignored.
    pub fn party_sync_spread(&self, ms: f64) {
        if ms.is_finite() && ms >= 0.0 {
            self.inner.party_sync_spread.record(ms, &[]);
        }
    }

    /// A session over `transport` (`ws`, `whip`, `whep`) opened.
    pub fn session_opened(&self, transport: &'static str) {
        self.inner
            .sessions
            .add(1, &[KeyValue::new("transport", transport)]);
    }

    /// A session over `transport` closed; pairs with [`Metrics::session_opened`].
    pub fn session_closed(&self, transport: &'static str) {
        self.inner
            .sessions
            .add(-1, &[KeyValue::new("transport", transport)]);
    }

    /// Stores the SFU's latest counters; the next collection (a scrape or an export)
    /// reports them.
    pub fn record_sfu(&self, stats: &SfuStats) {
        *lock(&self.inner.sfu) = stats.clone();
    }

    /// Every metric in the Prometheus text exposition format 0.0.4
    /// ([`PROMETHEUS_CONTENT_TYPE`]). After [`Metrics::shutdown`], only a comment saying why.
    pub fn render_prometheus(&self) -> String {
        let mut collected = ResourceMetrics::default();
        match self.inner.reader.collect(&mut collected) {
            Ok(()) => prometheus_text::render(&collected),
            Err(err) => format!(
                "# metrics unavailable: {}\n",
                err.to_string().replace('\n', " ")
            ),
        }
    }

    /// Pushes the last values (when exporting) and stops the provider. Blocks until the
    /// export finishes or times out: call at exit or from `spawn_blocking`. Recording after
    /// this is a no-op; later calls do nothing.
    pub fn shutdown(&self) {
        use opentelemetry_sdk::error::OTelSdkError;
        match self.inner.provider.shutdown() {
            Ok(()) | Err(OTelSdkError::AlreadyShutdown) => {}
            Err(err) => tracing::warn!(%err, "flushing the last metrics failed"),
        }
    }
}

/// An instrument reading one field of the SFU snapshot.
struct SfuField {
    name: &'static str,
    description: &'static str,
    /// UCUM unit (`By` for bytes), empty for plain counts.
    unit: &'static str,
    read: fn(&SfuStats) -> u64,
}

/// The gauges: what the SFU holds now.
const SFU_GAUGES: [SfuField; 7] = [
    SfuField {
        name: "marquee_rooms",
        description: "Rooms the SFU holds.",
        unit: "",
        read: |s| s.rooms,
    },
    SfuField {
        name: "marquee_peers",
        description: "Media peers (hosts and viewers).",
        unit: "",
        read: |s| s.peers,
    },
    SfuField {
        name: "marquee_tracks",
        description: "Tracks the SFU holds.",
        unit: "",
        read: |s| s.tracks,
    },
    SfuField {
        name: "marquee_fast_path_viewers",
        description: "Viewers whose media takes the SFU's forwarding fast path.",
        unit: "",
        read: |s| s.fast_path_viewers,
    },
    SfuField {
        name: "marquee_rtc_path_viewers",
        description: "Viewers left on rtc's slower path (fast-path keys did not verify).",
        unit: "",
        read: |s| s.rtc_path_viewers,
    },
    SfuField {
        name: "marquee_sfu_busy_percent",
        description: "Share of wall time the busiest SFU shard spends working.",
        unit: "%",
        read: |s| s.busy_pct,
    },
    SfuField {
        name: "marquee_handshakes_waiting",
        description: "DTLS handshake records waiting for the SFU driver to be idle.",
        unit: "",
        read: |s| s.handshakes_waiting,
    },
];

/// The counters: totals since the SFU started.
const SFU_COUNTERS: [SfuField; 7] = [
    SfuField {
        name: "marquee_forwarded_packets",
        description: "RTP packets forwarded to viewers.",
        unit: "",
        read: |s| s.packets_forwarded,
    },
    SfuField {
        name: "marquee_forwarded_bytes",
        description: "RTP bytes forwarded to viewers.",
        unit: "By",
        read: |s| s.bytes_forwarded,
    },
    SfuField {
        name: "marquee_nacks",
        description: "NACKs received from viewers.",
        unit: "",
        read: |s| s.nacks_received,
    },
    SfuField {
        name: "marquee_retransmissions",
        description: "Packets retransmitted after a NACK.",
        unit: "",
        read: |s| s.retransmissions,
    },
    SfuField {
        name: "marquee_datagrams_in",
        description: "UDP datagrams received on the media port.",
        unit: "",
        read: |s| s.datagrams_in,
    },
    SfuField {
        name: "marquee_datagrams_dropped",
        description: "Datagrams dropped because a peer's send queue was full.",
        unit: "",
        read: |s| s.datagrams_dropped,
    },
    SfuField {
        name: "marquee_datagrams_late",
        description: "Datagrams dropped because they waited too long for the SFU driver (overload).",
        unit: "",
        read: |s| s.datagrams_late,
    },
];

/// Registers the observable instruments fed by [`Metrics::record_sfu`]. The SDK keeps their
/// callbacks for the provider's lifetime; the instrument handles are not needed.
fn register_sfu_instruments(meter: &Meter, sfu: &Arc<Mutex<SfuStats>>) {
    for field in SFU_GAUGES {
        let sfu = sfu.clone();
        meter
            .u64_observable_gauge(field.name)
            .with_description(field.description)
            .with_unit(field.unit)
            .with_callback(move |observer| observer.observe((field.read)(&lock(&sfu)), &[]))
            .build();
    }
    for field in SFU_COUNTERS {
        let sfu = sfu.clone();
        meter
            .u64_observable_counter(field.name)
            .with_description(field.description)
            .with_unit(field.unit)
            .with_callback(move |observer| observer.observe((field.read)(&lock(&sfu)), &[]))
            .build();
    }
    // One family, two directions, read from one snapshot so they are consistent.
    let sfu = sfu.clone();
    meter
        .u64_observable_counter("marquee_plis")
        .with_description("Keyframe requests (PLI/FIR): received from viewers, and sent to hosts.")
        .with_callback(move |observer| {
            let (from_viewers, to_hosts) = {
                let stats = lock(&sfu);
                (
                    stats.keyframe_requests_received,
                    stats.keyframe_requests_sent,
                )
            };
            observer.observe(from_viewers, &[KeyValue::new("direction", "from_viewers")]);
            observer.observe(to_hosts, &[KeyValue::new("direction", "to_hosts")]);
        })
        .build();
}

/// The snapshot stays readable even if a holder panicked: it is plain counters, never left
/// half-written in a way that matters for metrics.
fn lock(stats: &Mutex<SfuStats>) -> std::sync::MutexGuard<'_, SfuStats> {
    stats.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Lets the provider own a reader that [`Metrics`] also keeps, to collect on demand
/// (`with_reader` takes its reader by value).
#[derive(Debug)]
struct SharedReader(Arc<ManualReader>);

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline);
    }

    fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(rm)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

/// The Prometheus text exposition format, version 0.0.4
/// (<https://prometheus.io/docs/instrumenting/exposition_formats/>), from an SDK collection,
/// following OpenTelemetry's "Prometheus and OpenMetrics Compatibility" mapping: monotonic
/// sums are counters named `*_total`, other sums and gauges are gauges, explicit-bucket
/// histograms are histograms with cumulative `_bucket{le}` series.
mod prometheus_text {
    use std::collections::BTreeMap;
    use std::fmt::Write as _;

    use opentelemetry::KeyValue;
    use opentelemetry_sdk::metrics::data::{
        AggregatedMetrics, Metric, MetricData, ResourceMetrics,
    };

    /// A metric family: one `# TYPE` line and its samples.
    struct Family {
        help: String,
        kind: &'static str,
        /// Sample lines keyed by their label set, so the output is stable across scrapes.
        samples: BTreeMap<String, String>,
    }

    /// Renders every metric of `collected`, families sorted by name.
    pub(super) fn render(collected: &ResourceMetrics) -> String {
        let mut families: BTreeMap<String, Family> = BTreeMap::new();
        for scope in collected.scope_metrics() {
            for metric in scope.metrics() {
                match metric.data() {
                    AggregatedMetrics::F64(data) => add(&mut families, metric, data),
                    AggregatedMetrics::U64(data) => add(&mut families, metric, data),
                    AggregatedMetrics::I64(data) => add(&mut families, metric, data),
                }
            }
        }
        let mut out = String::new();
        for (name, family) in &families {
            if !family.help.is_empty() {
                let _ = writeln!(out, "# HELP {name} {}", escape_help(&family.help));
            }
            let _ = writeln!(out, "# TYPE {name} {}", family.kind);
            for lines in family.samples.values() {
                out.push_str(lines);
            }
        }
        out
    }

    /// A sample value as Prometheus parses it (Go float syntax for the special values).
    pub(super) trait SampleValue: Copy {
        fn write(self, out: &mut String);
    }

    impl SampleValue for f64 {
        fn write(self, out: &mut String) {
            if self.is_nan() {
                out.push_str("NaN");
            } else if self.is_infinite() {
                out.push_str(if self > 0.0 { "+Inf" } else { "-Inf" });
            } else {
                let _ = write!(out, "{self}");
            }
        }
    }

    impl SampleValue for u64 {
        fn write(self, out: &mut String) {
            let _ = write!(out, "{self}");
        }
    }

    impl SampleValue for i64 {
        fn write(self, out: &mut String) {
            let _ = write!(out, "{self}");
        }
    }

    fn add<T: SampleValue>(
        families: &mut BTreeMap<String, Family>,
        metric: &Metric,
        data: &MetricData<T>,
    ) {
        let base = sanitize_metric_name(metric.name());
        let (name, kind) = match data {
            MetricData::Sum(sum) if sum.is_monotonic() => {
                let name = if base.ends_with("_total") {
                    base
                } else {
                    format!("{base}_total")
                };
                (name, "counter")
            }
            MetricData::Sum(_) | MetricData::Gauge(_) => (base, "gauge"),
            MetricData::Histogram(_) => (base, "histogram"),
            // Only produced when a view asks for it; Prometheus' classic text format has no
            // exponential histograms.
            MetricData::ExponentialHistogram(_) => return,
        };
        let family = families.entry(name.clone()).or_insert_with(|| Family {
            help: metric.description().to_owned(),
            kind,
            samples: BTreeMap::new(),
        });
        if family.kind != kind {
            // Two instruments mapped to one name with different types: keep the first, as a
            // scraper would reject the page otherwise.
            return;
        }
        match data {
            MetricData::Sum(sum) => {
                for point in sum.data_points() {
                    let labels = labels(point.attributes(), None);
                    family
                        .samples
                        .insert(labels.clone(), sample(&name, "", &labels, point.value()));
                }
            }
            MetricData::Gauge(gauge) => {
                for point in gauge.data_points() {
                    let labels = labels(point.attributes(), None);
                    family
                        .samples
                        .insert(labels.clone(), sample(&name, "", &labels, point.value()));
                }
            }
            MetricData::Histogram(histogram) => {
                for point in histogram.data_points() {
                    let mut lines = String::new();
                    let mut cumulative = 0u64;
                    for (bound, count) in point.bounds().zip(point.bucket_counts()) {
                        cumulative += count;
                        let le = labels(point.attributes(), Some(bound));
                        lines.push_str(&sample(&name, "_bucket", &le, cumulative));
                    }
                    // The last bucket (above the highest bound) is the +Inf one.
                    let total: u64 = point.bucket_counts().sum();
                    let inf = labels(point.attributes(), Some(f64::INFINITY));
                    lines.push_str(&sample(&name, "_bucket", &inf, total));
                    let plain = labels(point.attributes(), None);
                    lines.push_str(&sample(&name, "_sum", &plain, point.sum()));
                    lines.push_str(&sample(&name, "_count", &plain, point.count()));
                    family.samples.insert(plain, lines);
                }
            }
            MetricData::ExponentialHistogram(_) => {}
        }
    }

    /// One sample line: `name{labels} value`.
    fn sample<T: SampleValue>(name: &str, suffix: &str, labels: &str, value: T) -> String {
        let mut line = format!("{name}{suffix}{labels} ");
        value.write(&mut line);
        line.push('\n');
        line
    }

    /// `{k="v",…}` with keys sorted (and `le` last), or nothing without labels.
    fn labels<'a>(attributes: impl Iterator<Item = &'a KeyValue>, le: Option<f64>) -> String {
        let mut pairs: Vec<(String, String)> = attributes
            .map(|kv| {
                (
                    sanitize_label_name(kv.key.as_str()),
                    kv.value.as_str().into_owned(),
                )
            })
            .collect();
        pairs.sort();
        if let Some(bound) = le {
            let mut value = String::new();
            bound.write(&mut value);
            pairs.push(("le".to_owned(), value));
        }
        if pairs.is_empty() {
            return String::new();
        }
        let mut out = String::from("{");
        for (i, (key, value)) in pairs.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{key}=\"{}\"", escape_label_value(value));
        }
        out.push('}');
        out
    }

    /// Label values escape backslash, double quote and line feed.
    pub(super) fn escape_label_value(value: &str) -> String {
        let mut out = String::with_capacity(value.len());
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out
    }

    /// HELP text escapes backslash and line feed (not quotes).
    fn escape_help(text: &str) -> String {
        text.replace('\\', "\\\\").replace('\n', "\\n")
    }

    /// Metric names match `[a-zA-Z_:][a-zA-Z0-9_:]*`; anything else becomes `_` (so the
    /// OpenTelemetry style `http.server.duration` reads `http_server_duration`).
    pub(super) fn sanitize_metric_name(name: &str) -> String {
        sanitize(name, |c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    /// Label names match `[a-zA-Z_][a-zA-Z0-9_]*`.
    pub(super) fn sanitize_label_name(name: &str) -> String {
        sanitize(name, |c| c.is_ascii_alphanumeric() || c == '_')
    }

    fn sanitize(name: &str, allowed: impl Fn(char) -> bool) -> String {
        let mut out: String = name
            .chars()
            .map(|c| if allowed(c) { c } else { '_' })
            .collect();
        if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
            out.insert(0, '_');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Metrics {
        Metrics::new(&TelemetryConfig::default())
    }

    /// The sample line of `series` (name and labels exactly as rendered), parsed.
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| match v {
                "+Inf" => f64::INFINITY,
                v => v.parse().expect("a number"),
            })
    }

    #[test]
    fn every_family_has_its_type() {
        let m = metrics();
        m.join(JoinKind::WsViewer, 0.2);
        m.join_refused(JoinKind::Whip, "unauthorized");
        m.rate_limited("chat");
        m.redis_error();
        m.party_sync_spread(12.0);
        m.session_opened("ws");
        m.record_sfu(&SfuStats::default());
        let text = m.render_prometheus();
        for (family, kind) in [
            ("marquee_join_duration_seconds", "histogram"),
            ("marquee_join_refused_total", "counter"),
            ("marquee_rate_limited_total", "counter"),
            ("marquee_redis_errors_total", "counter"),
            ("marquee_party_sync_spread_ms", "histogram"),
            ("marquee_sessions", "gauge"),
            ("marquee_rooms", "gauge"),
            ("marquee_peers", "gauge"),
            ("marquee_tracks", "gauge"),
            ("marquee_fast_path_viewers", "gauge"),
            ("marquee_rtc_path_viewers", "gauge"),
            ("marquee_sfu_busy_percent", "gauge"),
            ("marquee_handshakes_waiting", "gauge"),
            ("marquee_datagrams_late_total", "counter"),
            ("marquee_forwarded_packets_total", "counter"),
            ("marquee_forwarded_bytes_total", "counter"),
            ("marquee_nacks_total", "counter"),
            ("marquee_retransmissions_total", "counter"),
            ("marquee_plis_total", "counter"),
            ("marquee_datagrams_in_total", "counter"),
            ("marquee_datagrams_dropped_total", "counter"),
        ] {
            let type_line = format!("# TYPE {family} {kind}\n");
            assert_eq!(
                text.matches(&type_line).count(),
                1,
                "{type_line:?} once in:\n{text}"
            );
            assert!(
                text.contains(&format!("# HELP {family} ")),
                "HELP of {family}"
            );
        }
        // Every non-comment line belongs to a family declared above it.
        let mut declared = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.push(rest.split(' ').next().unwrap().to_owned());
            } else if !line.starts_with('#') {
                let series = line.split(['{', ' ']).next().unwrap();
                assert!(
                    declared.iter().any(|f| series == f
                        || ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|s| series == format!("{f}{s}"))),
                    "{line:?} has no family"
                );
            }
        }
    }

    #[test]
    fn counters_and_sessions_move_with_calls() {
        let m = metrics();
        m.rate_limited("chat");
        m.rate_limited("chat");
        m.rate_limited("http");
        m.join_refused(JoinKind::WsViewer, "room_full");
        m.redis_error();
        m.session_opened("ws");
        m.session_opened("ws");
        m.session_opened("whep");
        m.session_closed("ws");
        let text = m.render_prometheus();
        assert_eq!(
            value(&text, r#"marquee_rate_limited_total{limit="chat"}"#),
            Some(2.0)
        );
        assert_eq!(
            value(&text, r#"marquee_rate_limited_total{limit="http"}"#),
            Some(1.0)
        );
        assert_eq!(
            value(
                &text,
                r#"marquee_join_refused_total{code="room_full",kind="ws_viewer"}"#
            ),
            Some(1.0)
        );
        assert_eq!(value(&text, "marquee_redis_errors_total"), Some(1.0));
        assert_eq!(
            value(&text, r#"marquee_sessions{transport="ws"}"#),
            Some(1.0)
        );
        assert_eq!(
            value(&text, r#"marquee_sessions{transport="whep"}"#),
            Some(1.0)
        );

        // Cumulative: a second scrape sees the totals so far, not the change since the first.
        m.rate_limited("chat");
        m.session_closed("whep");
        let text = m.render_prometheus();
        assert_eq!(
            value(&text, r#"marquee_rate_limited_total{limit="chat"}"#),
            Some(3.0)
        );
        assert_eq!(
            value(&text, r#"marquee_sessions{transport="whep"}"#),
            Some(0.0)
        );
    }

    #[test]
    fn clones_share_instruments_but_servers_do_not() {
        let a = metrics();
        let a2 = a.clone();
        let b = metrics();
        a.redis_error();
        a2.redis_error();
        assert_eq!(
            value(&a.render_prometheus(), "marquee_redis_errors_total"),
            Some(2.0)
        );
        assert_eq!(
            value(&b.render_prometheus(), "marquee_redis_errors_total"),
            None
        );
    }

    #[test]
    fn sfu_snapshot_values_appear() {
        let m = metrics();
        m.record_sfu(&SfuStats {
            rooms: 2,
            peers: 7,
            tracks: 4,
            fast_path_viewers: 5,
            rtc_path_viewers: 1,
            packets_forwarded: 1_000,
            bytes_forwarded: 1_200_000,
            nacks_received: 11,
            retransmissions: 9,
            keyframe_requests_received: 3,
            keyframe_requests_sent: 1,
            datagrams_in: 555,
            datagrams_dropped: 6,
            ..SfuStats::default()
        });
        let text = m.render_prometheus();
        for (series, expected) in [
            ("marquee_rooms", 2.0),
            ("marquee_peers", 7.0),
            ("marquee_tracks", 4.0),
            ("marquee_fast_path_viewers", 5.0),
            ("marquee_rtc_path_viewers", 1.0),
            ("marquee_forwarded_packets_total", 1_000.0),
            ("marquee_forwarded_bytes_total", 1_200_000.0),
            ("marquee_nacks_total", 11.0),
            ("marquee_retransmissions_total", 9.0),
            (r#"marquee_plis_total{direction="from_viewers"}"#, 3.0),
            (r#"marquee_plis_total{direction="to_hosts"}"#, 1.0),
            ("marquee_datagrams_in_total", 555.0),
            ("marquee_datagrams_dropped_total", 6.0),
        ] {
            assert_eq!(value(&text, series), Some(expected), "{series} in:\n{text}");
        }
        // A newer snapshot replaces the old one.
        m.record_sfu(&SfuStats {
            peers: 1,
            ..SfuStats::default()
        });
        assert_eq!(value(&m.render_prometheus(), "marquee_peers"), Some(1.0));
    }

    #[test]
    fn histogram_buckets_sum_and_count_agree() {
        let m = metrics();
        for seconds in [0.005, 0.3, 0.3, 20.0] {
            m.join(JoinKind::WsHost, seconds);
        }
        m.join(JoinKind::WsHost, -1.0);
        m.join(JoinKind::WsHost, f64::NAN);
        m.join(JoinKind::Whep, 0.05);
        let text = m.render_prometheus();
        let series = |le: &str| {
            format!(r#"marquee_join_duration_seconds_bucket{{kind="ws_host",le="{le}"}}"#)
        };
        assert_eq!(value(&text, &series("0.01")), Some(1.0));
        assert_eq!(value(&text, &series("0.25")), Some(1.0));
        assert_eq!(value(&text, &series("0.5")), Some(3.0));
        assert_eq!(value(&text, &series("10")), Some(3.0));
        assert_eq!(value(&text, &series("+Inf")), Some(4.0));
        assert_eq!(
            value(
                &text,
                r#"marquee_join_duration_seconds_count{kind="ws_host"}"#
            ),
            Some(4.0)
        );
        let sum = value(
            &text,
            r#"marquee_join_duration_seconds_sum{kind="ws_host"}"#,
        )
        .unwrap();
        assert!((sum - 20.605).abs() < 1e-9, "sum {sum}");

        // Buckets are cumulative and ordered by bound, and +Inf equals the count.
        let buckets: Vec<(f64, f64)> = text
            .lines()
            .filter(|l| l.starts_with(r#"marquee_join_duration_seconds_bucket{kind="ws_host""#))
            .map(|l| {
                let le = l.split("le=\"").nth(1).unwrap().split('"').next().unwrap();
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                (le, l.rsplit(' ').next().unwrap().parse().unwrap())
            })
            .collect();
        assert_eq!(buckets.len(), JOIN_SECONDS_BUCKETS.len() + 1);
        assert!(
            buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1)
        );
        assert_eq!(
            value(
                &text,
                r#"marquee_join_duration_seconds_bucket{kind="whep",le="+Inf"}"#
            ),
            value(&text, r#"marquee_join_duration_seconds_count{kind="whep"}"#),
        );
    }

    #[test]
    fn label_values_and_names_are_escaped() {
        assert_eq!(
            prometheus_text::escape_label_value("a\"b\\c\nd"),
            r#"a\"b\\c\nd"#
        );
        assert_eq!(
            prometheus_text::sanitize_metric_name("http.server.duration"),
            "http_server_duration"
        );
        assert_eq!(prometheus_text::sanitize_metric_name("9lives"), "_9lives");
        assert_eq!(
            prometheus_text::sanitize_label_name("net.peer:name"),
            "net_peer_name"
        );

        // Through a whole collection, with instruments named the OpenTelemetry way.
        let reader = Arc::new(ManualReader::builder().build());
        let provider = SdkMeterProvider::builder()
            .with_reader(SharedReader(reader.clone()))
            .build();
        let meter = provider.meter("test");
        let counter = meter
            .u64_counter("app.requests")
            .with_description("Requests\nwith a \\ in HELP.")
            .build();
        counter.add(1, &[KeyValue::new("path", "/a \"quoted\"\\path\n")]);
        let mut collected = ResourceMetrics::default();
        reader.collect(&mut collected).unwrap();
        let text = prometheus_text::render(&collected);
        assert!(
            text.contains("# HELP app_requests_total Requests\\nwith a \\\\ in HELP.\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE app_requests_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains(r#"app_requests_total{path="/a \"quoted\"\\path\n"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn after_shutdown_rendering_says_why() {
        let m = metrics();
        m.redis_error();
        m.shutdown();
        m.shutdown();
        m.redis_error();
        assert!(m.render_prometheus().starts_with("# metrics unavailable"));
    }

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

    #[test]
    fn join_kinds_have_stable_labels() {
        let all = [
            (JoinKind::WsHost, "ws_host"),
            (JoinKind::WsViewer, "ws_viewer"),
            (JoinKind::Party, "party"),
            (JoinKind::Whip, "whip"),
            (JoinKind::Whep, "whep"),
        ];
        for (kind, label) in all {
            assert_eq!(kind.as_str(), label);
        }
    }
}
