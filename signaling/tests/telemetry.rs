//! Telemetry end to end, into a real OTLP/HTTP receiver (`support::otlp`):
//!
//! - the `marquee` binary, configured only through the standard environment variable,
//!   exports the trace of a live join and the SFU's metrics while a host publishes to a viewer;
//! - one server's [`Metrics`] push to its own collector, under their OpenTelemetry names;
//! - [`telemetry::init_tracing`] keeps parent links and honours its span filter.

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sfu::SfuStats;
use signaling::protocol::MediaKind;
use signaling::telemetry::{self, JoinKind, Metrics, TelemetryConfig};
use support::otlp::{OtlpReceiver, Received, ReceivedSpan};
use support::*;

/// Long enough for a batch or two at the 500 ms interval the tests configure, and for a slow
/// machine; the waits end as soon as the data arrives.
const EXPORT_WAIT: Duration = Duration::from_secs(15);
const SETTLE: Duration = Duration::from_secs(10);
/// The steps of a join, each a span under the `join` span (session code).
const JOIN_STEPS: [&str; 5] = ["authorize", "admit", "sfu_peer", "negotiate", "connect"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_join_is_traced_and_its_media_counted_over_otlp() -> Result<()> {
    let receiver = OtlpReceiver::start().await?;
    let server = MarqueeProcess::start(&receiver.endpoint()).await?;
    let host = Host::join(server.http).await.context("host goes live")?;
    let viewer = Viewer::join(server.http, host.room())
        .await
        .context("viewer joins")?;
    viewer
        .wait_for(SETTLE, |s| s.packets(MediaKind::Video).len() >= 30)
        .await
        .context("video reaches the viewer")?;

    // Metrics, exported while media flows: the SFU gauges and counters, under their OTLP
    // names (no `_total`; the Prometheus side adds it).
    receiver
        .wait_until(
            EXPORT_WAIT,
            "metrics marquee_peers and marquee_forwarded_packets",
            |r| {
                r.metrics.contains_key("marquee_peers")
                    && r.metrics.contains_key("marquee_forwarded_packets")
            },
        )
        .await?;
    receiver
        .wait_until(
            EXPORT_WAIT,
            "2 peers and forwarded packets in the exported SFU metrics",
            |r| {
                r.metrics.get("marquee_peers") >= Some(&2.0)
                    && r.metrics.get("marquee_forwarded_packets") > Some(&0.0)
            },
        )
        .await?;

    // The join traces: sessions end, so their spans end and are exported.
    drop(viewer);
    drop(host);
    let received = receiver
        .wait_until(
            EXPORT_WAIT,
            &format!("a root `join` span with {JOIN_STEPS:?} under it"),
            |r| complete_join(r).is_some(),
        )
        .await?;
    let join = complete_join(&received).expect("the condition held");
    assert_eq!(join.service_name.as_deref(), Some("marquee"));
    for span in received.trace(&join.trace_id) {
        assert!(
            span.span_id == join.span_id || received.descends_from(span, &join.span_id),
            "{span:?} is in the join's trace but not under it"
        );
    }
    Ok(())
}

/// A root span named `join` with every step of [`JOIN_STEPS`] among its descendants.
fn complete_join(received: &Received) -> Option<&ReceivedSpan> {
    received
        .spans
        .iter()
        .filter(|s| s.name == "join" && s.parent_span_id.is_none())
        .find(|join| {
            JOIN_STEPS.iter().all(|step| {
                received
                    .trace(&join.trace_id)
                    .iter()
                    .any(|s| s.name == *step && received.descends_from(s, &join.span_id))
            })
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_servers_metrics_reach_its_collector_and_the_last_values_on_shutdown() -> Result<()> {
    let receiver = OtlpReceiver::start().await?;
    let metrics = Metrics::new(&TelemetryConfig {
        otlp_endpoint: Some(receiver.endpoint()),
        export_interval: Duration::from_millis(200),
        ..TelemetryConfig::default()
    });
    // Another server in the same process: no endpoint, so nothing of it reaches the receiver.
    let other = Metrics::new(&TelemetryConfig::default());
    other.record_sfu(&SfuStats {
        peers: 99,
        ..SfuStats::default()
    });
    metrics.join(JoinKind::WsViewer, 0.12);
    metrics.rate_limited("chat");
    metrics.session_opened("whep");
    metrics.record_sfu(&SfuStats {
        peers: 3,
        packets_forwarded: 42,
        ..SfuStats::default()
    });
    let received = receiver
        .wait_until(EXPORT_WAIT, "42 forwarded packets", |r| {
            r.metrics.get("marquee_forwarded_packets") == Some(&42.0)
        })
        .await?;
    assert_eq!(received.metrics.get("marquee_peers"), Some(&3.0));
    assert_eq!(received.metrics.get("marquee_rate_limited"), Some(&1.0));
    assert_eq!(received.metrics.get("marquee_sessions"), Some(&1.0));
    assert_eq!(
        received.metrics.get("marquee_join_duration_seconds"),
        Some(&1.0),
        "one join observed"
    );
    assert!(
        !received.metrics.keys().any(|name| name.ends_with("_total")),
        "OpenTelemetry names carry no _total: {:?}",
        received.metrics.keys()
    );
    // The same instance serves Prometheus with the suffix.
    assert!(
        metrics
            .render_prometheus()
            .contains("\nmarquee_forwarded_packets_total 42\n")
    );

    // Shutting down pushes what was recorded since the last export. It blocks until the
    // receiver (on this runtime) answers, so it runs off the runtime's threads.
    metrics.redis_error();
    tokio::task::spawn_blocking(move || metrics.shutdown()).await?;
    assert_eq!(receiver.metric_value("marquee_redis_errors"), Some(1.0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_spans_keep_their_parents_and_the_filter() -> Result<()> {
    let receiver = OtlpReceiver::start().await?;
    let config = TelemetryConfig {
        otlp_endpoint: Some(receiver.endpoint()),
        service_name: "telemetry-test".to_owned(),
        export_interval: Duration::from_millis(200),
    };
    // The only test here that installs the process-wide subscriber. This binary's own spans
    // (target `telemetry`) at info, and only errors from the client libraries.
    let mut guard = telemetry::init_tracing(&config, "error,telemetry=info")?;
    tracing::info_span!("request", room = "r1").in_scope(|| {
        tracing::info_span!("step").in_scope(|| {
            tracing::info_span!("inner").in_scope(|| {});
            tracing::debug_span!("too_fine").in_scope(|| {});
        });
    });
    // Shutdown flushes the batch without waiting for the interval.
    tokio::task::spawn_blocking(move || guard.shutdown()).await?;

    let received = receiver.received();
    let span = |name: &str| {
        received
            .spans
            .iter()
            .find(|s| s.name == name)
            .with_context(|| format!("span {name:?} in {:?}", received.spans))
    };
    let (request, step, inner) = (span("request")?, span("step")?, span("inner")?);
    assert_eq!(request.parent_span_id, None);
    assert_eq!(step.parent_span_id.as_ref(), Some(&request.span_id));
    assert_eq!(inner.parent_span_id.as_ref(), Some(&step.span_id));
    assert!([step, inner].iter().all(|s| s.trace_id == request.trace_id));
    assert_eq!(
        request.attributes.get("room").map(String::as_str),
        Some("r1")
    );
    assert_eq!(request.service_name.as_deref(), Some("telemetry-test"));
    assert!(span("too_fine").is_err(), "debug spans are filtered out");
    Ok(())
}

/// The `marquee` binary under test, configured for OTLP through the environment only (as an
/// operator would), on loopback ports. Killed on drop.
struct MarqueeProcess {
    http: SocketAddr,
    child: Child,
}

impl MarqueeProcess {
    async fn start(otlp_endpoint: &str) -> Result<Self> {
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new(env!("CARGO_BIN_EXE_marquee"))
            // `--dev`: access tokens off, so the test clients join without one.
            .args(["--http", &http.to_string(), "--udp", "127.0.0.1:0", "--dev"])
            .env(telemetry::OTLP_ENDPOINT_ENV, otlp_endpoint)
            .env(telemetry::EXPORT_INTERVAL_ENV, "500")
            .env_remove(telemetry::SERVICE_NAME_ENV)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .context("spawning marquee")?;
        let mut process = Self { http, child };
        process.wait_listening().await?;
        Ok(process)
    }

    async fn wait_listening(&mut self) -> Result<()> {
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(self.http).await.is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("marquee exited during startup: {status}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("marquee did not listen on {} within 10 s", self.http)
    }
}

impl Drop for MarqueeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
