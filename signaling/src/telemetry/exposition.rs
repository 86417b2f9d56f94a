//! `GET /metrics`: the OpenTelemetry instruments of a [`Metrics`](super::Metrics), collected
//! from a `ManualReader` at each scrape and written by `prometheus-client` in the Prometheus
//! text format 0.0.4 ([`PROMETHEUS_CONTENT_TYPE`]).
//!
//! There is one set of instruments, the OpenTelemetry ones, so the OTLP push and `/metrics`
//! always agree. [`OtelCollector`] is the bridge: a `prometheus-client` collector that maps
//! each collection to metric families following OpenTelemetry's "Prometheus and OpenMetrics
//! Compatibility" rules: monotonic sums are counters (shown with `_total`), other sums and
//! gauges are gauges, explicit-bucket histograms are histograms with cumulative `le` buckets.
//! So `marquee_forwarded_packets` over OTLP is `marquee_forwarded_packets_total` here.
//!
//! Not `opentelemetry-prometheus`: it adds the `prometheus` crate and its registry, its
//! README steers new users to OTLP, and its naming (unit suffixes, `otel_scope_*` labels,
//! `target_info`) would differ from ours. The text format 0.0.4 rather than OpenMetrics: it
//! is what `/metrics` has always served, and every Prometheus version scrapes it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::{
    AggregatedMetrics, HistogramDataPoint, Metric, MetricData, ResourceMetrics,
};
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{InstrumentKind, ManualReader, Pipeline, Temporality};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`Metrics::render_prometheus`](super::Metrics::render_prometheus)'s
/// output: the Prometheus text format, version 0.0.4.
pub const PROMETHEUS_CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// What a scrape answers when the collection fails (after shutdown, in practice).
const UNAVAILABLE: &str =
    "# metrics unavailable: collecting them failed (the server log says why)\n";

/// The pull side of one server's metrics: a registry whose only collector reads the
/// provider's [`ManualReader`].
pub(super) struct Exposition {
    registry: Registry,
}

impl Exposition {
    /// The exposition, and the reader half to give the meter provider (`with_reader` takes
    /// its reader by value, so both hold the same [`ManualReader`]).
    pub(super) fn new() -> (Self, impl MetricReader) {
        let reader = Arc::new(ManualReader::builder().build());
        let mut registry = Registry::default();
        registry.register_collector(Box::new(OtelCollector {
            reader: reader.clone(),
        }));
        (Self { registry }, SharedReader(reader))
    }

    /// Every metric, collected now, families sorted by name. If the collection fails, only
    /// a comment saying so: an empty page would read as "no metrics".
    pub(super) fn render(&self) -> String {
        let mut text = String::new();
        match prometheus_text::encode(&mut text, &self.registry) {
            Ok(()) => text,
            // Writing to a `String` cannot fail, so the error is the collector's.
            Err(fmt::Error) => UNAVAILABLE.to_owned(),
        }
    }
}

/// Collects the OpenTelemetry instruments at each scrape and hands them to the encoder.
#[derive(Debug)]
struct OtelCollector {
    reader: Arc<ManualReader>,
}

impl Collector for OtelCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let mut collected = ResourceMetrics::default();
        if let Err(err) = self.reader.collect(&mut collected) {
            // `fmt::Error` carries no reason, so the log does.
            tracing::warn!(%err, "collecting metrics for /metrics failed");
            return Err(fmt::Error);
        }
        for family in families(&collected).values() {
            let mut metric =
                encoder.encode_descriptor(&family.name, &family.help, None, family.kind)?;
            for (labels, sample) in &family.samples {
                sample.encode(&mut metric.encode_family(labels)?)?;
            }
        }
        Ok(())
    }
}

/// One `# TYPE` block of the page.
struct Family {
    /// The name given to the encoder, which appends `_total` to counters.
    name: String,
    help: String,
    kind: MetricType,
    /// Samples by label set (names sanitized and sorted; the encoder adds `le` last on
    /// buckets), so that the page is stable across scrapes.
    samples: BTreeMap<Vec<(String, String)>, Sample>,
}

enum Sample {
    Counter(Number),
    Gauge(Number),
    Histogram {
        sum: f64,
        count: u64,
        /// Upper bound and count of each bucket (not cumulative: the encoder sums them).
        buckets: Vec<(f64, u64)>,
    },
}

/// A data point's value in the type its instrument records.
#[derive(Clone, Copy)]
enum Number {
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Sample {
    fn encode(&self, encoder: &mut MetricEncoder<'_>) -> fmt::Result {
        match *self {
            Self::Counter(Number::U64(v)) => encoder.encode_counter::<NoLabelSet, _, u64>(&v, None),
            Self::Counter(Number::F64(v)) => encoder.encode_counter::<NoLabelSet, _, f64>(&v, None),
            // No OpenTelemetry instrument records a monotonic i64 sum; f64 holds any value.
            Self::Counter(Number::I64(v)) => {
                encoder.encode_counter::<NoLabelSet, _, f64>(&(v as f64), None)
            }
            Self::Gauge(Number::U64(v)) => encoder.encode_gauge(&v),
            Self::Gauge(Number::I64(v)) => encoder.encode_gauge(&v),
            Self::Gauge(Number::F64(v)) => encoder.encode_gauge(&v),
            Self::Histogram {
                sum,
                count,
                ref buckets,
            } => encoder.encode_histogram::<NoLabelSet>(sum, count, buckets, None),
        }
    }
}

/// The value types of OpenTelemetry data points.
trait Value: Copy {
    fn number(self) -> Number;
}

impl Value for u64 {
    fn number(self) -> Number {
        Number::U64(self)
    }
}

impl Value for i64 {
    fn number(self) -> Number {
        Number::I64(self)
    }
}

impl Value for f64 {
    fn number(self) -> Number {
        Number::F64(self)
    }
}

impl Number {
    fn as_f64(self) -> f64 {
        match self {
            Self::U64(v) => v as f64,
            Self::I64(v) => v as f64,
            Self::F64(v) => v,
        }
    }
}

/// The families of `collected`, keyed by the name the page shows. Instruments of several
/// scopes that map to one name share a family.
fn families(collected: &ResourceMetrics) -> BTreeMap<String, Family> {
    let mut families = BTreeMap::new();
    for scope in collected.scope_metrics() {
        for metric in scope.metrics() {
            match metric.data() {
                AggregatedMetrics::F64(data) => add(&mut families, metric, data),
                AggregatedMetrics::U64(data) => add(&mut families, metric, data),
                AggregatedMetrics::I64(data) => add(&mut families, metric, data),
            }
        }
    }
    families
}

fn add<T: Value>(families: &mut BTreeMap<String, Family>, metric: &Metric, data: &MetricData<T>) {
    let name = sanitize_metric_name(metric.name());
    let (name, kind) = match data {
        // The encoder appends `_total`; a name that has it already keeps one.
        MetricData::Sum(sum) if sum.is_monotonic() => (
            name.strip_suffix("_total").unwrap_or(&name).to_owned(),
            MetricType::Counter,
        ),
        MetricData::Sum(_) | MetricData::Gauge(_) => (name, MetricType::Gauge),
        MetricData::Histogram(_) => (name, MetricType::Histogram),
        // Only produced when a view asks for it; the text format has no exponential
        // histograms.
        MetricData::ExponentialHistogram(_) => return,
    };
    let shown = match kind {
        MetricType::Counter => format!("{name}_total"),
        _ => name.clone(),
    };
    let family = families.entry(shown).or_insert_with(|| Family {
        name,
        help: metric.description().to_owned(),
        kind,
        samples: BTreeMap::new(),
    });
    if family.kind != kind {
        // Two instruments shown under one name with different types: keep the first, as a
        // scraper would reject the whole page otherwise.
        return;
    }
    let samples = &mut family.samples;
    match data {
        MetricData::Sum(sum) => {
            for point in sum.data_points() {
                let value = point.value().number();
                let sample = match kind {
                    MetricType::Counter => Sample::Counter(value),
                    _ => Sample::Gauge(value),
                };
                samples.insert(labels(point.attributes()), sample);
            }
        }
        MetricData::Gauge(gauge) => {
            for point in gauge.data_points() {
                let sample = Sample::Gauge(point.value().number());
                samples.insert(labels(point.attributes()), sample);
            }
        }
        MetricData::Histogram(histogram) => {
            for point in histogram.data_points() {
                samples.insert(labels(point.attributes()), histogram_sample(point));
            }
        }
        MetricData::ExponentialHistogram(_) => {}
    }
}

fn histogram_sample<T: Value>(point: &HistogramDataPoint<T>) -> Sample {
    // OpenTelemetry keeps one more count than bounds: the last bucket, above the highest
    // bound, is the `+Inf` one.
    let bounds = point.bounds().chain([f64::INFINITY]);
    Sample::Histogram {
        sum: point.sum().number().as_f64(),
        count: point.count(),
        buckets: bounds.zip(point.bucket_counts()).collect(),
    }
}

/// Label names sanitized and sorted; values as they are (the encoder escapes them).
fn labels<'a>(attributes: impl Iterator<Item = &'a KeyValue>) -> Vec<(String, String)> {
    let mut labels: Vec<_> = attributes
        .map(|kv| {
            (
                sanitize_label_name(kv.key.as_str()),
                kv.value.as_str().into_owned(),
            )
        })
        .collect();
    labels.sort();
    labels
}

/// Metric names match `[a-zA-Z_:][a-zA-Z0-9_:]*`; anything else becomes `_` (so the
/// OpenTelemetry style `http.server.duration` reads `http_server_duration`). The encoder
/// writes names as given, so this is ours to do.
fn sanitize_metric_name(name: &str) -> String {
    sanitize(name, |c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Label names match `[a-zA-Z_][a-zA-Z0-9_]*`.
fn sanitize_label_name(name: &str) -> String {
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

/// Lets the provider own a reader that [`OtelCollector`] also keeps, to collect on demand.
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

#[cfg(test)]
mod tests {
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::SdkMeterProvider;

    use super::*;

    /// An exposition over a provider of its own, for instruments named as a test likes.
    fn exposition() -> (Exposition, SdkMeterProvider) {
        let (exposition, reader) = Exposition::new();
        let provider = SdkMeterProvider::builder().with_reader(reader).build();
        (exposition, provider)
    }

    /// The whole page for one instrument of each kind, byte for byte: this is the format
    /// scrapers and the tests that grep `/metrics` rely on.
    #[test]
    fn the_page_is_prometheus_text_0_0_4() {
        let (exposition, provider) = exposition();
        let meter = provider.meter("test");
        let counter = meter
            .u64_counter("demo_packets")
            .with_description("Packets.")
            .build();
        counter.add(3, &[KeyValue::new("b", "2"), KeyValue::new("a", "1")]);
        counter.add(1, &[]);
        meter
            .i64_up_down_counter("demo_open")
            .with_description("Open things.")
            .build()
            .add(-2, &[]);
        meter
            .f64_histogram("demo_seconds")
            .with_description("Durations.")
            .with_boundaries(vec![0.5, 1.0])
            .build()
            .record(0.75, &[]);
        // Already suffixed the Prometheus way: not doubled.
        meter
            .u64_counter("demo_requests_total")
            .with_description("Requests.")
            .build()
            .add(5, &[]);
        assert_eq!(
            exposition.render(),
            "# HELP demo_open Open things.\n\
             # TYPE demo_open gauge\n\
             demo_open -2\n\
             # HELP demo_packets_total Packets.\n\
             # TYPE demo_packets_total counter\n\
             demo_packets_total 1\n\
             demo_packets_total{a=\"1\",b=\"2\"} 3\n\
             # HELP demo_requests_total Requests.\n\
             # TYPE demo_requests_total counter\n\
             demo_requests_total 5\n\
             # HELP demo_seconds Durations.\n\
             # TYPE demo_seconds histogram\n\
             demo_seconds_bucket{le=\"0.5\"} 0\n\
             demo_seconds_bucket{le=\"1\"} 1\n\
             demo_seconds_bucket{le=\"+Inf\"} 1\n\
             demo_seconds_sum 0.75\n\
             demo_seconds_count 1\n"
        );
    }

    #[test]
    fn names_are_sanitized_and_text_escaped() {
        assert_eq!(
            sanitize_metric_name("http.server.duration"),
            "http_server_duration"
        );
        assert_eq!(sanitize_metric_name("9lives"), "_9lives");
        assert_eq!(sanitize_label_name("net.peer:name"), "net_peer_name");

        // Through a whole collection, with instruments named the OpenTelemetry way.
        let (exposition, provider) = exposition();
        let counter = provider
            .meter("test")
            .u64_counter("app.requests")
            .with_description("Requests\nwith a \\ in HELP.")
            .build();
        counter.add(1, &[KeyValue::new("path", "/a \"quoted\"\\path\n")]);
        let text = exposition.render();
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

    /// A gauge and a counter that would both show as `x_total`: one family (the first
    /// collected), since a page with two `# TYPE x_total` lines is rejected whole.
    #[test]
    fn clashing_names_keep_one_family() {
        let (exposition, provider) = exposition();
        let meter = provider.meter("test");
        meter.u64_gauge("x_total").build().record(1, &[]);
        meter.u64_counter("x").build().add(2, &[]);
        let text = exposition.render();
        assert_eq!(text.matches("# TYPE x_total ").count(), 1, "{text}");
        assert_eq!(text.matches("\nx_total ").count(), 1, "{text}");
    }
}
