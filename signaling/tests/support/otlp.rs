//! A tiny OTLP/HTTP collector for tests: accepts `POST /v1/traces` and `POST /v1/metrics`
//! (binary protobuf, OTLP specification "OTLP/HTTP"), decodes them with the generated
//! `opentelemetry-proto` messages, and keeps the spans and the latest value of each metric.
//!
//! Compressed bodies are refused with 415: Marquee's exporter does not compress (its
//! `gzip-http` feature is off), so a compressed request means the setup changed and the test
//! should say so rather than guess.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use prost::Message;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A span as received.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub name: String,
    /// Lowercase hex, as trace viewers show it.
    pub trace_id: String,
    pub span_id: String,
    /// `None` for a root span.
    pub parent_span_id: Option<String>,
    pub attributes: BTreeMap<String, String>,
    /// `service.name` of the exporting resource.
    pub service_name: Option<String>,
}

/// Everything received so far.
#[derive(Debug, Clone, Default)]
pub struct Received {
    pub spans: Vec<ReceivedSpan>,
    /// Latest value per metric name: the sum over its data points (a histogram counts its
    /// observations).
    pub metrics: BTreeMap<String, f64>,
    /// Export requests accepted, per signal path.
    pub requests: BTreeMap<&'static str, usize>,
}

impl Received {
    /// The spans of `trace_id`.
    pub fn trace(&self, trace_id: &str) -> Vec<&ReceivedSpan> {
        self.spans
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .collect()
    }

    /// Whether `span` descends from the span `ancestor_id` within its trace.
    pub fn descends_from(&self, span: &ReceivedSpan, ancestor_id: &str) -> bool {
        let mut parent = span.parent_span_id.clone();
        // Bounded by the trace's size, so a malformed cycle cannot loop forever.
        for _ in 0..=self.spans.len() {
            let Some(id) = parent else { return false };
            if id == ancestor_id {
                return true;
            }
            parent = self
                .spans
                .iter()
                .find(|s| s.span_id == id && s.trace_id == span.trace_id)
                .and_then(|s| s.parent_span_id.clone());
        }
        false
    }
}

/// The collector, serving on a loopback ephemeral port until dropped.
pub struct OtlpReceiver {
    addr: SocketAddr,
    received: Arc<watch::Sender<Received>>,
    task: JoinHandle<()>,
}

impl OtlpReceiver {
    pub async fn start() -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the OTLP receiver")?;
        let addr = listener.local_addr()?;
        let received = Arc::new(watch::Sender::new(Received::default()));
        let app = Router::new()
            .route("/v1/traces", post(traces))
            .route("/v1/metrics", post(metrics))
            .with_state(received.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            addr,
            received,
            task,
        })
    }

    /// The base URL to give an exporter (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn received(&self) -> Received {
        self.received.borrow().clone()
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.received.borrow().spans.clone()
    }

    pub fn metric_names(&self) -> BTreeSet<String> {
        self.received.borrow().metrics.keys().cloned().collect()
    }

    pub fn metric_value(&self, name: &str) -> Option<f64> {
        self.received.borrow().metrics.get(name).copied()
    }

    /// The first span named `name`, waiting up to `timeout` for it.
    pub async fn wait_for_span(&self, name: &str, timeout: Duration) -> Result<ReceivedSpan> {
        let received = self
            .wait_until(timeout, &format!("a span named {name:?}"), |r| {
                r.spans.iter().any(|s| s.name == name)
            })
            .await?;
        Ok(received
            .spans
            .into_iter()
            .find(|s| s.name == name)
            .expect("the condition held"))
    }

    /// Waits until `condition` holds over what was received (checked at each request), up to
    /// `timeout`; the error names `what` and lists what did arrive.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        mut condition: impl FnMut(&Received) -> bool,
    ) -> Result<Received> {
        let mut rx = self.received.subscribe();
        match tokio::time::timeout(timeout, rx.wait_for(|r| condition(r))).await {
            Ok(Ok(received)) => Ok(received.clone()),
            _ => {
                let received = self.received();
                let names: BTreeSet<_> = received.spans.iter().map(|s| s.name.as_str()).collect();
                anyhow::bail!(
                    "timed out after {timeout:?} waiting for {what}; requests {:?}, \
                     span names {names:?}, metrics {:?}",
                    received.requests,
                    received.metrics.keys().collect::<Vec<_>>()
                )
            }
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Shared = State<Arc<watch::Sender<Received>>>;

async fn traces(State(received): Shared, headers: HeaderMap, body: Bytes) -> Response {
    let request = match decode::<ExportTraceServiceRequest>(&headers, &body) {
        Ok(request) => request,
        Err(refusal) => return refusal.into_response(),
    };
    received.send_modify(|r| {
        *r.requests.entry("/v1/traces").or_default() += 1;
        for resource_spans in request.resource_spans {
            let service_name = resource_spans
                .resource
                .as_ref()
                .and_then(|res| attribute(&res.attributes, "service.name"));
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    r.spans.push(ReceivedSpan {
                        name: span.name,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: (!span.parent_span_id.is_empty())
                            .then(|| hex(&span.parent_span_id)),
                        attributes: span
                            .attributes
                            .iter()
                            .map(|kv| (kv.key.clone(), value_text(kv)))
                            .collect(),
                        service_name: service_name.clone(),
                    });
                }
            }
        }
    });
    protobuf_ok(ExportTraceServiceResponse::default().encode_to_vec())
}

async fn metrics(State(received): Shared, headers: HeaderMap, body: Bytes) -> Response {
    let request = match decode::<ExportMetricsServiceRequest>(&headers, &body) {
        Ok(request) => request,
        Err(refusal) => return refusal.into_response(),
    };
    received.send_modify(|r| {
        *r.requests.entry("/v1/metrics").or_default() += 1;
        for resource_metrics in request.resource_metrics {
            for scope_metrics in resource_metrics.scope_metrics {
                for metric in scope_metrics.metrics {
                    r.metrics
                        .insert(metric.name, metric.data.map_or(0.0, total));
                }
            }
        }
    });
    protobuf_ok(ExportMetricsServiceResponse::default().encode_to_vec())
}

/// Decodes a binary-protobuf OTLP body, or the status and reason refusing it.
fn decode<M: Message + Default>(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<M, (StatusCode, String)> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type != "application/x-protobuf" {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("expected application/x-protobuf, got {content_type:?}"),
        ));
    }
    let encoding = headers.get(header::CONTENT_ENCODING);
    if encoding.is_some_and(|e| e != "identity") {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("unsupported Content-Encoding {encoding:?}"),
        ));
    }
    M::decode(body).map_err(|err| (StatusCode::BAD_REQUEST, format!("bad protobuf: {err}")))
}

fn protobuf_ok(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/x-protobuf")], body).into_response()
}

/// Sum of a metric's data points (observation counts for histograms).
fn total(data: metric::Data) -> f64 {
    let number = |value: Option<number_data_point::Value>| match value {
        Some(number_data_point::Value::AsDouble(v)) => v,
        Some(number_data_point::Value::AsInt(v)) => v as f64,
        None => 0.0,
    };
    match data {
        metric::Data::Gauge(g) => g.data_points.into_iter().map(|p| number(p.value)).sum(),
        metric::Data::Sum(s) => s.data_points.into_iter().map(|p| number(p.value)).sum(),
        metric::Data::Histogram(h) => h.data_points.iter().map(|p| p.count as f64).sum(),
        metric::Data::ExponentialHistogram(h) => h.data_points.iter().map(|p| p.count as f64).sum(),
        metric::Data::Summary(s) => s.data_points.iter().map(|p| p.count as f64).sum(),
    }
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes.iter().find(|kv| kv.key == key).map(value_text)
}

fn value_text(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
