//! [`Metrics`]: one server's OpenTelemetry instruments and the calls the server records
//! through, including the SFU's gauges and counters, read from its latest snapshot.

use std::sync::{Arc, Mutex, PoisonError};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider as _, UpDownCounter};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use sfu::SfuStats;

use super::TelemetryConfig;
use super::exposition::Exposition;
use super::setup;

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
///
/// Not global, so that tests run several servers in one process, each with its own numbers.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<MetricsInner>,
}

struct MetricsInner {
    provider: SdkMeterProvider,
    /// The pull side: the provider owns its reader half.
    exposition: Exposition,
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
    /// Creates the instruments, and the OTLP push when `config` names an endpoint.
    pub fn new(config: &TelemetryConfig) -> Self {
        let (exposition, scrape_reader) = Exposition::new();
        let provider = setup::meter_provider(config, scrape_reader);
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
            exposition,
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

    /// Every metric in the Prometheus text format
    /// ([`PROMETHEUS_CONTENT_TYPE`](super::PROMETHEUS_CONTENT_TYPE)), collected now. After
    /// [`Metrics::shutdown`], only a comment saying metrics are unavailable.
    pub fn render_prometheus(&self) -> String {
        self.inner.exposition.render()
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
    fn after_shutdown_rendering_says_metrics_are_unavailable() {
        let m = metrics();
        m.redis_error();
        m.shutdown();
        m.shutdown();
        m.redis_error();
        assert!(m.render_prometheus().starts_with("# metrics unavailable"));
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
