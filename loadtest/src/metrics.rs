//! Latency and per-viewer distributions as HDR histograms, and their summaries.
//!
//! Every recorder (a viewer, a party member, the probe) fills its own [`Histograms`] without
//! locks; the run merges them at the end ([`Histograms::merge`]), which is exact for HDR
//! histograms of the same precision. Values are recorded in thousandths of their unit (µs for
//! a metric in ms, 0.001 % for a percentage), so sub-unit detail survives and summaries come
//! back in the metric's own unit.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Significant decimal digits kept: 3 means a recorded value is within 0.1 % of the truth.
const SIGFIG: u8 = 3;
/// Values are stored in thousandths of their unit.
const SCALE: f64 = 1000.0;

/// The distributions a run records, by name. Each name has one fixed unit ([`Metric::unit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Join stage: `join` sent → WebSocket open.
    JoinWsOpen,
    /// Join stage: → `joined` received.
    JoinJoined,
    /// Join stage: → ICE connected.
    JoinIce,
    /// Join stage: → DTLS connected (peer connection `connected`).
    JoinDtls,
    /// Join stage: → first RTP packet.
    JoinFirstRtp,
    /// Join stage: → first keyframe; the join latency a viewer feels.
    Join,
    /// Host send instant → viewer receive instant, per sampled packet.
    E2eLatency,
    /// The same, for the first wave of a spike with a second wave, in its steady seconds
    /// before the second wave.
    E2eSteady,
    /// The same, for the first wave, while the second wave joins (until it settled).
    E2eSecondWave,
    /// RFC 3550 interarrival jitter of each viewer's video at the end of the run.
    Jitter,
    /// Each viewer's video loss after retransmissions.
    ViewerLoss,
    /// Each viewer's received media bitrate over its watch time.
    ViewerBitrate,
    /// Each viewer's count of freezes (video gaps over 500 ms).
    ViewerFreezes,
    /// Chat sent → received by every member of the party.
    ChatFanout,
    /// Playback command sent → event received by the last member.
    ControlFanout,
    /// Spread of the positions a party's members compute for the same instant.
    SyncError,
    /// How late the generator's 10 ms ticker fired.
    SchedLag,
}

impl Metric {
    pub const ALL: [Metric; 17] = [
        Metric::JoinWsOpen,
        Metric::JoinJoined,
        Metric::JoinIce,
        Metric::JoinDtls,
        Metric::JoinFirstRtp,
        Metric::Join,
        Metric::E2eLatency,
        Metric::E2eSteady,
        Metric::E2eSecondWave,
        Metric::Jitter,
        Metric::ViewerLoss,
        Metric::ViewerBitrate,
        Metric::ViewerFreezes,
        Metric::ChatFanout,
        Metric::ControlFanout,
        Metric::SyncError,
        Metric::SchedLag,
    ];

    /// The name used in reports and SLO keys (`join` → `join_p99_ms`).
    pub fn name(self) -> &'static str {
        match self {
            Metric::JoinWsOpen => "join_ws_open",
            Metric::JoinJoined => "join_joined",
            Metric::JoinIce => "join_ice",
            Metric::JoinDtls => "join_dtls",
            Metric::JoinFirstRtp => "join_first_rtp",
            Metric::Join => "join",
            Metric::E2eLatency => "e2e_latency",
            Metric::E2eSteady => "e2e_steady",
            Metric::E2eSecondWave => "e2e_second_wave",
            Metric::Jitter => "jitter",
            Metric::ViewerLoss => "viewer_loss",
            Metric::ViewerBitrate => "viewer_bitrate",
            Metric::ViewerFreezes => "viewer_freezes",
            Metric::ChatFanout => "chat_fanout",
            Metric::ControlFanout => "control_fanout",
            Metric::SyncError => "sync_error",
            Metric::SchedLag => "sched_lag",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Metric::ViewerLoss => "pct",
            Metric::ViewerBitrate => "kbps",
            Metric::ViewerFreezes => "count",
            _ => "ms",
        }
    }

    /// A human description for reports.
    pub fn describe(self) -> &'static str {
        match self {
            Metric::JoinWsOpen => "join → WebSocket open",
            Metric::JoinJoined => "join → joined",
            Metric::JoinIce => "join → ICE connected",
            Metric::JoinDtls => "join → DTLS connected",
            Metric::JoinFirstRtp => "join → first RTP",
            Metric::Join => "join → first keyframe",
            Metric::E2eLatency => "host send → viewer receive",
            Metric::E2eSteady => "first wave, steady, before the second",
            Metric::E2eSecondWave => "first wave, while the second joins",
            Metric::Jitter => "video interarrival jitter (per viewer)",
            Metric::ViewerLoss => "video loss after NACK (per viewer)",
            Metric::ViewerBitrate => "received bitrate (per viewer)",
            Metric::ViewerFreezes => "freezes > 500 ms (per viewer)",
            Metric::ChatFanout => "chat sent → received by all",
            Metric::ControlFanout => "command sent → applied by last member",
            Metric::SyncError => "inter-device position spread",
            Metric::SchedLag => "generator scheduling lag",
        }
    }
}

/// A set of histograms, one per metric recorded so far.
#[derive(Debug, Clone, Default)]
pub struct Histograms {
    by_metric: BTreeMap<Metric, Histogram<u64>>,
}

impl Histograms {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one value in the metric's unit. Negative and non-finite values are clamped to
    /// 0 (a clock step can make a latency negative; it is not worth losing the sample).
    pub fn record(&mut self, metric: Metric, value: f64) {
        let scaled = if value.is_finite() && value > 0.0 {
            (value * SCALE).round() as u64
        } else {
            0
        };
        let histogram = self.histogram(metric);
        // `record` grows an auto-resizing histogram; `saturating_record` would clamp at its
        // current (initially tiny) range.
        if histogram.record(scaled).is_err() {
            histogram.saturating_record(scaled);
        }
    }

    /// Records a duration for a metric in ms.
    pub fn record_duration(&mut self, metric: Metric, value: std::time::Duration) {
        self.record(metric, value.as_secs_f64() * 1000.0);
    }

    /// Adds every sample of `other` into `self`.
    pub fn merge(&mut self, other: &Histograms) {
        for (metric, histogram) in &other.by_metric {
            // Both sides are auto-resizing with the same precision, so `add` cannot fail.
            let _ = self.histogram(*metric).add(histogram);
        }
    }

    pub fn count(&self, metric: Metric) -> u64 {
        self.by_metric.get(&metric).map_or(0, |h| h.len())
    }

    pub fn summary(&self, metric: Metric) -> Option<Summary> {
        let h = self.by_metric.get(&metric).filter(|h| !h.is_empty())?;
        let unscale = |v: u64| v as f64 / SCALE;
        Some(Summary {
            count: h.len(),
            min: unscale(h.min()),
            mean: h.mean() / SCALE,
            p50: unscale(h.value_at_quantile(0.50)),
            p95: unscale(h.value_at_quantile(0.95)),
            p99: unscale(h.value_at_quantile(0.99)),
            max: unscale(h.max()),
        })
    }

    /// Every recorded metric's summary, in [`Metric::ALL`] order.
    pub fn summaries(&self) -> Vec<(Metric, Summary)> {
        Metric::ALL
            .iter()
            .filter_map(|m| self.summary(*m).map(|s| (*m, s)))
            .collect()
    }

    /// Up to `buckets` histogram bars (upper edge in the metric's unit, count) spanning the
    /// recorded range linearly, for plots.
    pub fn bars(&self, metric: Metric, buckets: usize) -> Vec<(f64, u64)> {
        let Some(h) = self.by_metric.get(&metric).filter(|h| !h.is_empty()) else {
            return Vec::new();
        };
        let buckets = buckets.max(1) as u64;
        let (lo, hi) = (h.min(), h.max());
        let width = ((hi - lo) / buckets).max(1);
        let mut bars: Vec<(f64, u64)> = (1..=buckets)
            .map(|i| ((lo + i * width) as f64 / SCALE, 0))
            .collect();
        for v in h.iter_recorded() {
            let at = v.value_iterated_to();
            let index = (at.saturating_sub(lo) / width).min(buckets - 1) as usize;
            bars[index].1 += v.count_at_value();
        }
        bars
    }

    fn histogram(&mut self, metric: Metric) -> &mut Histogram<u64> {
        self.by_metric.entry(metric).or_insert_with(|| {
            Histogram::new(SIGFIG).expect("3 significant figures is a valid precision")
        })
    }
}

/// Percentiles of one metric, in its unit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_is_the_same_as_recording_everything_in_one() {
        let mut a = Histograms::new();
        let mut b = Histograms::new();
        let mut all = Histograms::new();
        for i in 1..=1000 {
            let v = f64::from(i) * 0.5;
            if i % 3 == 0 { &mut a } else { &mut b }.record(Metric::Join, v);
            all.record(Metric::Join, v);
        }
        b.record(Metric::ChatFanout, 7.0);
        all.record(Metric::ChatFanout, 7.0);
        let mut merged = Histograms::new();
        merged.merge(&a);
        merged.merge(&b);
        assert_eq!(merged.summary(Metric::Join), all.summary(Metric::Join));
        assert_eq!(
            merged.summary(Metric::ChatFanout),
            all.summary(Metric::ChatFanout)
        );
        let join = merged.summary(Metric::Join).unwrap();
        assert_eq!(join.count, 1000);
        assert!((join.p50 - 250.0).abs() < 0.5, "{join:?}");
        assert!((join.p99 - 495.0).abs() < 0.5, "{join:?}");
        assert!((join.max - 500.0).abs() < 0.5, "{join:?}");
        assert!((join.min - 0.5).abs() < 0.01, "{join:?}");
    }

    #[test]
    fn sub_unit_values_and_clamping() {
        let mut h = Histograms::new();
        h.record(Metric::E2eLatency, 0.25);
        h.record(Metric::E2eLatency, -3.0);
        h.record(Metric::E2eLatency, f64::NAN);
        let s = h.summary(Metric::E2eLatency).unwrap();
        assert_eq!(s.count, 3);
        assert_eq!(s.min, 0.0);
        assert!((s.max - 0.25).abs() < 0.001);
        assert_eq!(h.summary(Metric::Jitter), None);
    }

    #[test]
    fn bars_cover_every_sample() {
        let mut h = Histograms::new();
        for i in 0..500 {
            h.record(Metric::Join, f64::from(i % 50) + 100.0);
        }
        let bars = h.bars(Metric::Join, 10);
        assert_eq!(bars.len(), 10);
        assert_eq!(bars.iter().map(|b| b.1).sum::<u64>(), 500);
        assert!(bars.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(h.bars(Metric::Jitter, 10).is_empty());
    }
}
