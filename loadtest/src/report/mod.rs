//! What a run found, as data: the final table ([`table`]), the `--json` file (this struct,
//! serialized) and the HTML report ([`html`]) are views of one [`Report`].
//!
//! A report is written whenever a run started, even one that ended in an error, so a host can
//! see how far the run got (`errors` says what went wrong).

pub mod html;
pub mod table;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::metrics::{Histograms, Metric, Summary};

/// How a run ended, in order of precedence: an invalid run is never a pass or a fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Verdict {
    /// Every SLO met (or none given) and the generator kept up.
    Pass,
    /// At least one SLO breached: exit code 1.
    Fail,
    /// The generator was saturated, so the numbers describe the generator, not the server:
    /// exit code 2.
    Invalid,
    /// The run could not be carried out (unreachable server, every join refused): exit code 3.
    Error,
}

impl Verdict {
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Pass => 0,
            Verdict::Fail => 1,
            Verdict::Invalid => 2,
            Verdict::Error => 3,
        }
    }
}

/// The whole outcome of one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// One line naming the scenario and its parameters.
    pub scenario: String,
    /// The scenario kind: `spike`, `party`, `churn` or `signaling`.
    pub kind: String,
    pub server: String,
    pub seed: u64,
    pub started_unix_ms: u64,
    pub duration_s: f64,
    pub verdict: Verdict,
    /// Why the run is INVALID (empty otherwise).
    pub invalid: Vec<String>,
    /// What went wrong while running (a partial report has at least one).
    pub errors: Vec<String>,
    pub counts: Counts,
    /// Recorded distributions, in [`Metric::ALL`] order.
    pub metrics: Vec<MetricReport>,
    /// One point per second of the run.
    pub series: Vec<SeriesPoint>,
    pub server_usage: Option<ServerUsage>,
    pub generator: GeneratorUsage,
    pub slos: Vec<SloOutcome>,
}

/// Counts of what happened; the integration test checks them against what it started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub viewers_planned: u64,
    pub viewers_started: u64,
    pub viewers_joined: u64,
    /// Viewers whose join failed at any stage before the first keyframe.
    pub joins_failed: u64,
    /// Viewers that received at least one keyframe.
    pub viewers_with_media: u64,
    /// RTP packets received by all viewers (counted from the clear header, before SRTP).
    pub packets_received: u64,
    pub bytes_received: u64,
    /// Packets passed to the WebRTC stack for authentication and decryption.
    pub packets_sampled: u64,
    /// Of those, packets the stack delivered (authenticated and decrypted).
    pub packets_authenticated: u64,
    /// Video packets expected (from sequence numbers) and never received.
    pub packets_lost: u64,
    /// Video packets expected in all.
    pub packets_expected: u64,
    /// Packets that arrived after a NACK asked for them.
    pub packets_recovered: u64,
    pub nacks_sent: u64,
    pub freezes: u64,
    /// Signaling-only clients (WebSocket join, no media).
    pub signaling_planned: u64,
    pub signaling_joined: u64,
    pub signaling_failed: u64,
    pub parties: u64,
    pub members_joined: u64,
    pub members_failed: u64,
    pub chats_sent: u64,
    /// Chat deliveries (one per member per chat, the sender included).
    pub chats_delivered: u64,
    pub commands_sent: u64,
    /// Commands whose event reached every member of the party.
    pub commands_applied: u64,
    pub commands_refused: u64,
    /// Churn: connect → media → close cycles completed.
    pub cycles: u64,
}

impl Counts {
    /// Video loss after retransmissions, over all viewers, in percent.
    pub fn loss_pct(&self) -> f64 {
        if self.packets_expected == 0 {
            0.0
        } else {
            100.0 * self.packets_lost as f64 / self.packets_expected as f64
        }
    }
}

/// One metric's distribution for the reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricReport {
    pub name: String,
    pub unit: String,
    pub description: String,
    pub summary: Summary,
    /// Histogram bars: (upper edge in `unit`, count), for the HTML plot.
    pub bars: Vec<(f64, u64)>,
}

impl MetricReport {
    pub fn all(histograms: &Histograms) -> Vec<MetricReport> {
        histograms
            .summaries()
            .into_iter()
            .map(|(metric, summary)| MetricReport {
                name: metric.name().to_owned(),
                unit: metric.unit().to_owned(),
                description: metric.describe().to_owned(),
                summary,
                bars: histograms.bars(metric, 40),
            })
            .collect()
    }
}

/// The state of the run at one second.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SeriesPoint {
    pub t_s: f64,
    pub joined: u64,
    pub failed: u64,
    /// Viewers (or members) connected now.
    pub active: u64,
    pub packets_per_s: f64,
    pub server_cpu_pct: Option<f64>,
    pub server_rss_mb: Option<f64>,
    /// The generator's CPU, 100 = one core.
    pub generator_cpu_pct: f64,
    /// Worst scheduling lag of the generator's ticker in this second.
    pub sched_lag_ms: f64,
}

/// The server process, sampled from `/proc/<pid>`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerUsage {
    pub pid: u32,
    /// 100 = one core.
    pub cpu_pct_avg: f64,
    pub cpu_pct_max: f64,
    pub rss_start_mb: f64,
    pub rss_peak_mb: f64,
    pub rss_end_mb: f64,
    /// Server CPU time over the run divided by the RTP packets viewers received.
    pub cpu_us_per_forwarded_packet: Option<f64>,
    /// Peak RSS growth over the run divided by the viewers that joined.
    pub rss_kb_per_viewer: Option<f64>,
    /// Churn: RSS growth per 1,000 completed cycles (after a warm-up).
    pub rss_growth_kb_per_1000_cycles: Option<f64>,
}

/// The generator (this process) itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GeneratorUsage {
    pub cores: usize,
    /// 100 = one core.
    pub cpu_pct_avg: f64,
    pub cpu_pct_max: f64,
    pub sched_lag_p99_ms: f64,
    pub sched_lag_max_ms: f64,
    /// Received RTP packets per second of generator CPU (the viewers' cost).
    pub packets_per_cpu_second: Option<f64>,
}

/// One SLO and how the run did against it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SloOutcome {
    pub key: String,
    /// The largest value that passes.
    pub limit: f64,
    /// `None` when the run produced no value for the key (then the SLO fails).
    pub actual: Option<f64>,
    pub pass: bool,
}

impl Report {
    /// Every scalar an SLO can name: `<metric>_<p50|p95|p99|max>_<unit>` for each recorded
    /// metric, plus run-wide figures (`loss_pct`, `joins_failed`, …).
    pub fn scalars(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for m in &self.metrics {
            for (stat, v) in [
                ("p50", m.summary.p50),
                ("p95", m.summary.p95),
                ("p99", m.summary.p99),
                ("max", m.summary.max),
            ] {
                out.insert(format!("{}_{stat}_{}", m.name, m.unit), v);
            }
        }
        let c = &self.counts;
        out.insert("loss_pct".into(), c.loss_pct());
        out.insert("joins_failed".into(), c.joins_failed as f64);
        let planned = c.viewers_planned.max(1) as f64;
        out.insert(
            "joins_failed_pct".into(),
            100.0 * c.joins_failed as f64 / planned,
        );
        out.insert("freezes".into(), c.freezes as f64);
        out.insert("members_failed".into(), c.members_failed as f64);
        out.insert("commands_refused".into(), c.commands_refused as f64);
        out.insert(
            "commands_unapplied".into(),
            c.commands_sent
                .saturating_sub(c.commands_applied + c.commands_refused) as f64,
        );
        if let Some(s) = &self.server_usage {
            out.insert("server_cpu_pct_avg".into(), s.cpu_pct_avg);
            out.insert("server_rss_peak_mb".into(), s.rss_peak_mb);
            if let Some(v) = s.cpu_us_per_forwarded_packet {
                out.insert("server_cpu_us_per_packet".into(), v);
            }
            if let Some(v) = s.rss_kb_per_viewer {
                out.insert("server_rss_kb_per_viewer".into(), v);
            }
            if let Some(v) = s.rss_growth_kb_per_1000_cycles {
                out.insert("server_rss_growth_kb_per_1000_cycles".into(), v);
            }
        }
        out
    }

    pub fn write_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    pub fn write_html(&self, path: &Path) -> Result<()> {
        std::fs::write(path, html::render(self))
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// A metric's summary by name, for tests and the table.
pub fn find(metrics: &[MetricReport], metric: Metric) -> Option<&MetricReport> {
    metrics.iter().find(|m| m.name == metric.name())
}
