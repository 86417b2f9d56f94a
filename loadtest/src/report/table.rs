//! The plain-text summary printed at the end of a run.
//!
//! The formatting helpers here (numbers, count groups, usage rows) are shared with the HTML
//! report, so both views show the same figures the same way.

use std::fmt::Write;

use super::{Counts, GeneratorUsage, MetricReport, Report, ServerUsage, SloOutcome, Verdict};

/// The whole end-of-run summary, ending in a newline.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    header(&mut out, report);

    if !report.invalid.is_empty() {
        out.push('\n');
        let _ = writeln!(
            out,
            "INVALID: the generator could not keep up, so these numbers describe it, not the server:"
        );
        for reason in &report.invalid {
            let _ = writeln!(out, "  - {reason}");
        }
    }
    if !report.errors.is_empty() {
        out.push('\n');
        let _ = writeln!(out, "errors:");
        for error in &report.errors {
            let _ = writeln!(out, "  - {error}");
        }
    }

    let groups = count_groups(&report.counts);
    if !groups.is_empty() {
        out.push_str("\ncounts\n");
        let rows: Vec<Vec<String>> = groups
            .into_iter()
            .map(|(label, text)| vec![label.to_owned(), text])
            .collect();
        aligned(&mut out, "  ", None, &[Align::Left, Align::Left], &rows);
    }

    out.push_str("\nmetrics\n");
    if report.metrics.is_empty() {
        out.push_str("  (none recorded)\n");
    } else {
        let rows: Vec<Vec<String>> = report.metrics.iter().map(metric_row).collect();
        aligned(&mut out, "  ", Some(&METRIC_HEADER), &METRIC_ALIGN, &rows);
    }

    if let Some(server) = &report.server_usage {
        let _ = writeln!(out, "\nserver (pid {})", server.pid);
        key_values(&mut out, &server_rows(server));
    }

    out.push_str("\ngenerator\n");
    key_values(&mut out, &generator_rows(&report.generator));

    if !report.slos.is_empty() {
        out.push_str("\nSLOs\n");
        let rows: Vec<Vec<String>> = report.slos.iter().map(slo_row).collect();
        aligned(
            &mut out,
            "  ",
            Some(&["key", "limit", "actual", "result"]),
            &[Align::Left, Align::Right, Align::Right, Align::Left],
            &rows,
        );
    }
    out
}

fn header(out: &mut String, report: &Report) {
    let _ = write!(out, "{}", verdict_label(report.verdict));
    if !report.scenario.is_empty() {
        let _ = write!(out, "  {}", report.scenario);
    }
    if !report.server.is_empty() {
        let _ = write!(out, "  |  server {}", report.server);
    }
    let _ = writeln!(out, "  |  {}", duration(report.duration_s));

    let mut details = vec![format!("({})", verdict_meaning(report.verdict))];
    if !report.kind.is_empty() {
        details.push(format!("kind {}", report.kind));
    }
    details.push(format!("seed {}", report.seed));
    if report.started_unix_ms > 0 {
        details.push(format!("started {}", utc_time(report.started_unix_ms)));
    }
    let _ = writeln!(out, "  {}", details.join("  |  "));
}

/// The verdict as printed: `PASS`, `FAIL`, `INVALID` or `ERROR`.
pub(crate) fn verdict_label(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Pass => "PASS",
        Verdict::Fail => "FAIL",
        Verdict::Invalid => "INVALID",
        Verdict::Error => "ERROR",
    }
}

/// What the verdict means, in a few words.
pub(crate) fn verdict_meaning(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Pass => "every SLO met",
        Verdict::Fail => "at least one SLO breached",
        Verdict::Invalid => "generator saturated: results describe the generator",
        Verdict::Error => "the run could not be carried out",
    }
}

/// A run length: `42.0 s`, or `754.2 s (12m 34s)` past a minute.
pub(crate) fn duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "-".to_owned();
    }
    if seconds < 60.0 {
        return format!("{seconds:.1} s");
    }
    let whole = seconds.round() as u64;
    let (h, m, s) = (whole / 3600, whole / 60 % 60, whole % 60);
    if h > 0 {
        format!("{seconds:.0} s ({h}h {m:02}m {s:02}s)")
    } else {
        format!("{seconds:.1} s ({m}m {s:02}s)")
    }
}

/// A Unix time in milliseconds as `YYYY-MM-DD HH:MM:SS UTC`.
pub(crate) fn utc_time(unix_ms: u64) -> String {
    let t = sync::UtcDateTime::from_unix_secs(unix_ms / 1000);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// A measured value: 2 or 3 decimals under 1, 1 decimal under 100, an integer above (digits
/// grouped from 10,000); `-` for anything not finite.
pub(crate) fn num(v: f64) -> String {
    if !v.is_finite() {
        return "-".to_owned();
    }
    let a = v.abs();
    if a == 0.0 {
        "0".to_owned()
    } else if a < 0.1 {
        format!("{v:.3}")
    } else if a < 1.0 {
        format!("{v:.2}")
    } else if a < 100.0 {
        format!("{v:.1}")
    } else if a < 10_000.0 {
        format!("{v:.0}")
    } else {
        let digits = group(&format!("{:.0}", a));
        if v < 0.0 {
            format!("-{digits}")
        } else {
            digits
        }
    }
}

/// A count, digits grouped from 10,000 on.
pub(crate) fn int(n: u64) -> String {
    if n < 10_000 {
        n.to_string()
    } else {
        group(&n.to_string())
    }
}

/// Groups a string of ASCII digits in threes with commas.
fn group(digits: &str) -> String {
    let chunks: Vec<&str> = digits
        .as_bytes()
        .rchunks(3)
        .rev()
        .map(|chunk| std::str::from_utf8(chunk).unwrap_or_default())
        .collect();
    chunks.join(",")
}

/// A byte count as `12.3 MB` (decimal units).
pub(crate) fn bytes(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{} GB", num(n / 1e9))
    } else if n >= 1e6 {
        format!("{} MB", num(n / 1e6))
    } else if n >= 1e3 {
        format!("{} kB", num(n / 1e3))
    } else {
        format!("{n} B")
    }
}

/// The relevant counts, grouped by subject: (label, what happened). Groups with nothing to say
/// are left out.
pub(crate) fn count_groups(c: &Counts) -> Vec<(&'static str, String)> {
    let mut groups = Vec::new();

    if c.viewers_planned + c.viewers_started + c.viewers_joined + c.joins_failed > 0 {
        let mut parts = vec![format!("{} planned", int(c.viewers_planned))];
        if c.viewers_started != c.viewers_planned {
            parts.push(format!("{} started", int(c.viewers_started)));
        }
        parts.push(format!("{} joined", int(c.viewers_joined)));
        parts.push(format!("{} failed", int(c.joins_failed)));
        parts.push(format!("{} with media", int(c.viewers_with_media)));
        groups.push(("viewers", parts.join(", ")));
    }

    if c.packets_received + c.packets_expected + c.nacks_sent > 0 {
        let mut parts = vec![format!(
            "{} received ({})",
            int(c.packets_received),
            bytes(c.bytes_received)
        )];
        if c.packets_expected > 0 {
            parts.push(format!(
                "{} lost of {} expected ({}%)",
                int(c.packets_lost),
                int(c.packets_expected),
                loss(c.loss_pct())
            ));
        }
        if c.packets_recovered > 0 || c.nacks_sent > 0 {
            parts.push(format!("{} recovered", int(c.packets_recovered)));
            parts.push(format!("{} NACKs", int(c.nacks_sent)));
        }
        groups.push(("packets", parts.join(", ")));
    }

    if c.packets_sampled > 0 {
        groups.push((
            "SRTP",
            format!(
                "{} of {} sampled packets authenticated",
                int(c.packets_authenticated),
                int(c.packets_sampled)
            ),
        ));
    }

    if c.freezes > 0 || c.viewers_with_media > 0 {
        groups.push(("freezes", int(c.freezes)));
    }

    if c.parties + c.members_joined + c.members_failed > 0 {
        groups.push((
            "parties",
            format!(
                "{} parties, {} members joined, {} failed",
                int(c.parties),
                int(c.members_joined),
                int(c.members_failed)
            ),
        ));
    }

    if c.chats_sent > 0 {
        groups.push((
            "chats",
            format!(
                "{} sent, {} delivered",
                int(c.chats_sent),
                int(c.chats_delivered)
            ),
        ));
    }

    if c.commands_sent > 0 {
        let unapplied = c
            .commands_sent
            .saturating_sub(c.commands_applied + c.commands_refused);
        let mut text = format!(
            "{} sent, {} applied, {} refused",
            int(c.commands_sent),
            int(c.commands_applied),
            int(c.commands_refused)
        );
        if unapplied > 0 {
            let _ = write!(text, ", {} unapplied", int(unapplied));
        }
        groups.push(("commands", text));
    }

    if c.cycles > 0 {
        groups.push(("cycles", format!("{} completed", int(c.cycles))));
    }
    groups
}

/// A loss percentage: small losses keep their detail (`0.012`).
fn loss(pct: f64) -> String {
    if pct > 0.0 && pct < 0.1 {
        format!("{pct:.3}")
    } else if pct < 10.0 {
        format!("{pct:.2}")
    } else {
        num(pct)
    }
}

pub(crate) const METRIC_HEADER: [&str; 8] = [
    "metric",
    "unit",
    "count",
    "p50",
    "p95",
    "p99",
    "max",
    "description",
];

const METRIC_ALIGN: [Align; 8] = [
    Align::Left,
    Align::Left,
    Align::Right,
    Align::Right,
    Align::Right,
    Align::Right,
    Align::Right,
    Align::Left,
];

/// One metric's row, in [`METRIC_HEADER`] order.
pub(crate) fn metric_row(m: &MetricReport) -> Vec<String> {
    let s = &m.summary;
    vec![
        m.name.clone(),
        m.unit.clone(),
        int(s.count),
        num(s.p50),
        num(s.p95),
        num(s.p99),
        num(s.max),
        m.description.clone(),
    ]
}

/// One SLO's row: key, limit, actual, `PASS`/`FAIL`.
pub(crate) fn slo_row(s: &SloOutcome) -> Vec<String> {
    vec![
        s.key.clone(),
        num(s.limit),
        s.actual.map_or_else(|| "no value".to_owned(), num),
        if s.pass { "PASS" } else { "FAIL" }.to_owned(),
    ]
}

/// The server's resource use as (label, value) rows.
pub(crate) fn server_rows(s: &ServerUsage) -> Vec<(&'static str, String)> {
    let mut rows = vec![
        (
            "CPU",
            format!("avg {}%, max {}%", num(s.cpu_pct_avg), num(s.cpu_pct_max)),
        ),
        (
            "RSS",
            format!(
                "start {} MB, peak {} MB, end {} MB",
                num(s.rss_start_mb),
                num(s.rss_peak_mb),
                num(s.rss_end_mb)
            ),
        ),
    ];
    if let Some(v) = s.cpu_us_per_forwarded_packet {
        rows.push(("CPU per forwarded packet", format!("{} µs", num(v))));
    }
    if let Some(v) = s.rss_kb_per_viewer {
        rows.push(("memory per viewer", format!("{} KB", num(v))));
    }
    if let Some(v) = s.rss_growth_kb_per_1000_cycles {
        rows.push(("RSS growth per 1000 cycles", format!("{} KB", num(v))));
    }
    rows
}

/// The generator's resource use as (label, value) rows.
pub(crate) fn generator_rows(g: &GeneratorUsage) -> Vec<(&'static str, String)> {
    let mut rows = vec![
        ("cores", g.cores.to_string()),
        (
            "CPU",
            format!(
                "avg {}%, max {}% (100% = one core)",
                num(g.cpu_pct_avg),
                num(g.cpu_pct_max)
            ),
        ),
        (
            "sched lag",
            format!(
                "p99 {} ms, max {} ms",
                num(g.sched_lag_p99_ms),
                num(g.sched_lag_max_ms)
            ),
        ),
    ];
    if let Some(v) = g.packets_per_cpu_second {
        rows.push(("packets per CPU second", num(v)));
    }
    rows
}

fn key_values(out: &mut String, rows: &[(&'static str, String)]) {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|(k, v)| vec![(*k).to_owned(), v.clone()])
        .collect();
    aligned(out, "  ", None, &[Align::Left, Align::Left], &rows);
}

#[derive(Clone, Copy)]
enum Align {
    Left,
    Right,
}

/// Writes rows as columns two spaces apart, each line starting with `indent`. Widths count
/// characters, not bytes (descriptions hold `→`, units `µ`).
fn aligned(
    out: &mut String,
    indent: &str,
    header: Option<&[&str]>,
    align: &[Align],
    rows: &[Vec<String>],
) {
    let columns = align.len();
    let mut widths = vec![0; columns];
    let header_row: Option<Vec<String>> =
        header.map(|h| h.iter().map(|s| (*s).to_owned()).collect());
    for row in header_row.iter().chain(rows) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut line = |row: &[String]| {
        let mut text = String::from(indent);
        for (i, cell) in row.iter().enumerate().take(columns) {
            if i > 0 {
                text.push_str("  ");
            }
            let pad = widths[i].saturating_sub(cell.chars().count());
            match align[i] {
                Align::Left => {
                    text.push_str(cell);
                    text.extend(std::iter::repeat_n(' ', pad));
                }
                Align::Right => {
                    text.extend(std::iter::repeat_n(' ', pad));
                    text.push_str(cell);
                }
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    if let Some(h) = &header_row {
        line(h);
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        line(&rule);
    }
    for row in rows {
        line(row);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::metrics::Summary;
    use crate::report::{SeriesPoint, Verdict};

    /// A report with nothing in it.
    pub(crate) fn empty() -> Report {
        Report {
            scenario: String::new(),
            kind: String::new(),
            server: String::new(),
            seed: 0,
            started_unix_ms: 0,
            duration_s: 0.0,
            verdict: Verdict::Error,
            invalid: Vec::new(),
            errors: Vec::new(),
            counts: Counts::default(),
            metrics: Vec::new(),
            series: Vec::new(),
            server_usage: None,
            generator: GeneratorUsage::default(),
            slos: Vec::new(),
        }
    }

    fn metric(name: &str, unit: &str, description: &str, p50: f64, p99: f64) -> MetricReport {
        MetricReport {
            name: name.to_owned(),
            unit: unit.to_owned(),
            description: description.to_owned(),
            summary: Summary {
                count: 1000,
                min: p50 / 2.0,
                mean: p50,
                p50,
                p95: (p50 + p99) / 2.0,
                p99,
                max: p99 * 1.5,
            },
            bars: (1u32..=10)
                .map(|i| (p50 / 2.0 + f64::from(i) * p99 / 10.0, u64::from(i * 7 % 11)))
                .collect(),
        }
    }

    /// A spike run that failed one SLO.
    pub(crate) fn sample() -> Report {
        Report {
            scenario: "spike: 1000 viewers over 10 s".to_owned(),
            kind: "spike".to_owned(),
            server: "ws://127.0.0.1:8080".to_owned(),
            seed: 42,
            started_unix_ms: 1_700_000_000_000,
            duration_s: 75.25,
            verdict: Verdict::Fail,
            invalid: Vec::new(),
            errors: Vec::new(),
            counts: Counts {
                viewers_planned: 1000,
                viewers_started: 1000,
                viewers_joined: 997,
                joins_failed: 3,
                viewers_with_media: 997,
                packets_received: 1_234_567,
                bytes_received: 1_300_000_000,
                packets_lost: 12,
                packets_expected: 1_200_000,
                packets_recovered: 40,
                nacks_sent: 55,
                freezes: 2,
                ..Counts::default()
            },
            metrics: vec![
                metric("join", "ms", "join → first keyframe", 180.0, 812.4),
                metric("e2e_latency", "ms", "host send → viewer receive", 0.5, 7.25),
                metric(
                    "viewer_bitrate",
                    "kbps",
                    "received bitrate (per viewer)",
                    2400.0,
                    25_000.0,
                ),
            ],
            series: (0u32..5)
                .map(|t| SeriesPoint {
                    t_s: f64::from(t),
                    joined: u64::from(t) * 200,
                    failed: u64::from(t / 2),
                    active: u64::from(t) * 199,
                    packets_per_s: f64::from(t) * 10_000.0,
                    server_cpu_pct: Some(20.0 + f64::from(t)),
                    server_rss_mb: Some(100.0 + f64::from(t) * 3.0),
                    generator_cpu_pct: 50.0,
                    sched_lag_ms: 0.2 * f64::from(t),
                })
                .collect(),
            server_usage: Some(ServerUsage {
                pid: 4321,
                cpu_pct_avg: 45.25,
                cpu_pct_max: 98.0,
                rss_start_mb: 50.0,
                rss_peak_mb: 120.5,
                rss_end_mb: 110.0,
                cpu_us_per_forwarded_packet: Some(3.2),
                rss_kb_per_viewer: Some(71.4),
                rss_growth_kb_per_1000_cycles: None,
            }),
            generator: GeneratorUsage {
                cores: 8,
                cpu_pct_avg: 120.0,
                cpu_pct_max: 310.0,
                sched_lag_p99_ms: 1.25,
                sched_lag_max_ms: 6.0,
                packets_per_cpu_second: Some(123_456.0),
            },
            slos: vec![
                SloOutcome {
                    key: "join_p99_ms".to_owned(),
                    limit: 500.0,
                    actual: Some(812.4),
                    pass: false,
                },
                SloOutcome {
                    key: "loss_pct".to_owned(),
                    limit: 1.0,
                    actual: Some(0.001),
                    pass: true,
                },
                SloOutcome {
                    key: "chat_fanout_p99_ms".to_owned(),
                    limit: 200.0,
                    actual: None,
                    pass: false,
                },
            ],
        }
    }

    /// The line of `text` that starts (after indentation) with `first`.
    fn line_starting<'a>(text: &'a str, first: &str) -> &'a str {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(first))
            .unwrap_or_else(|| panic!("no line starting with {first:?} in\n{text}"))
    }

    #[test]
    fn numbers_are_formatted_sensibly() {
        assert_eq!(num(0.0), "0");
        assert_eq!(num(0.25), "0.25");
        assert_eq!(num(0.001), "0.001");
        assert_eq!(num(7.25), "7.2");
        assert_eq!(num(812.4), "812");
        assert_eq!(num(25_000.0), "25,000");
        assert_eq!(num(-1_234_567.0), "-1,234,567");
        assert_eq!(num(f64::NAN), "-");
        assert_eq!(num(f64::INFINITY), "-");
        assert_eq!(int(9999), "9999");
        assert_eq!(int(1_234_567), "1,234,567");
        assert_eq!(bytes(1_300_000_000), "1.3 GB");
        assert_eq!(duration(75.25), "75.2 s (1m 15s)");
        assert_eq!(duration(5.0), "5.0 s");
        assert_eq!(utc_time(1_700_000_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc_time(0), "1970-01-01 00:00:00 UTC");
    }

    #[test]
    fn summary_holds_verdict_counts_metrics_usage_and_slos() {
        let text = render(&sample());
        let first = text.lines().next().unwrap();
        assert!(first.starts_with("FAIL"), "{first}");
        assert!(first.contains("spike: 1000 viewers over 10 s"), "{first}");
        assert!(first.contains("ws://127.0.0.1:8080"), "{first}");
        assert!(first.contains("75.2 s"), "{first}");
        assert!(text.contains("seed 42"), "{text}");

        let viewers = line_starting(&text, "viewers");
        for part in ["1000 planned", "997 joined", "3 failed", "997 with media"] {
            assert!(viewers.contains(part), "{viewers}");
        }
        let packets = line_starting(&text, "packets");
        assert!(packets.contains("1,234,567 received (1.3 GB)"), "{packets}");
        assert!(packets.contains("(0.001%)"), "{packets}");
        assert!(packets.contains("40 recovered"), "{packets}");
        assert!(packets.contains("55 NACKs"), "{packets}");
        assert!(line_starting(&text, "freezes").ends_with(" 2"));
        // Nothing about parties, chats or cycles in a spike run.
        for absent in [
            "parties", "chats", "commands", "cycles", "INVALID", "errors",
        ] {
            assert!(!text.contains(absent), "{absent} in\n{text}");
        }

        let head = line_starting(&text, "metric");
        let columns: Vec<&str> = head.split_whitespace().collect();
        assert_eq!(columns, METRIC_HEADER);
        let join = line_starting(&text, "join");
        let cells: Vec<&str> = join.split_whitespace().collect();
        assert_eq!(
            &cells[..7],
            ["join", "ms", "1000", "180", "496", "812", "1219"]
        );
        assert!(join.ends_with("join → first keyframe"), "{join}");
        let e2e: Vec<&str> = line_starting(&text, "e2e_latency")
            .split_whitespace()
            .collect();
        assert_eq!(e2e[5], "7.2", "{e2e:?}");
        let bitrate: Vec<&str> = line_starting(&text, "viewer_bitrate")
            .split_whitespace()
            .collect();
        assert_eq!(bitrate[5], "25,000", "{bitrate:?}");
        // The p99 column lines up: every p99 ends at the same character column.
        let p99_end = |line: &str, cell: &str| line.find(cell).unwrap() + cell.chars().count();
        let ends = [
            p99_end(head, "p99"),
            p99_end(join, " 812 "),
            p99_end(line_starting(&text, "e2e_latency"), " 7.2 "),
        ];
        assert_eq!(ends[0] + 1, ends[1], "{text}");
        assert_eq!(ends[1], ends[2], "{text}");

        assert!(text.contains("server (pid 4321)"), "{text}");
        assert!(line_starting(&text, "CPU").contains("avg 45.2%, max 98.0%"));
        assert!(
            text.contains("start 50.0 MB, peak 120 MB, end 110 MB"),
            "{text}"
        );
        assert!(text.contains("3.2 µs"), "{text}");
        assert!(text.contains("71.4 KB"), "{text}");
        assert!(!text.contains("1000 cycles"), "{text}");
        assert!(text.contains("\ngenerator\n  cores "), "{text}");
        assert!(line_starting(&text, "cores").ends_with(" 8"), "{text}");
        assert!(text.contains("p99 1.2 ms, max 6.0 ms"), "{text}");
        assert!(text.contains("123,456"), "{text}");

        let slo: Vec<&str> = line_starting(&text, "join_p99_ms")
            .split_whitespace()
            .collect();
        assert_eq!(slo, ["join_p99_ms", "500", "812", "FAIL"]);
        let slo: Vec<&str> = line_starting(&text, "loss_pct")
            .split_whitespace()
            .collect();
        assert_eq!(slo, ["loss_pct", "1.0", "0.001", "PASS"]);
        let slo = line_starting(&text, "chat_fanout_p99_ms");
        assert!(slo.contains("no value") && slo.ends_with("FAIL"), "{slo}");
        assert!(!text.contains("NaN"), "{text}");
    }

    #[test]
    fn invalid_reasons_and_errors_are_listed() {
        let mut report = sample();
        report.verdict = Verdict::Invalid;
        report.invalid = vec!["generator CPU at 98% of 8 cores".to_owned()];
        report.errors = vec!["server closed the connection".to_owned()];
        let text = render(&report);
        assert!(text.starts_with("INVALID"), "{text}");
        assert!(
            text.contains("  - generator CPU at 98% of 8 cores\n"),
            "{text}"
        );
        assert!(
            text.contains("errors:\n  - server closed the connection\n"),
            "{text}"
        );
    }

    #[test]
    fn party_and_churn_counts_show_up() {
        let mut report = empty();
        report.counts = Counts {
            parties: 10,
            members_joined: 98,
            members_failed: 2,
            chats_sent: 50,
            chats_delivered: 490,
            commands_sent: 20,
            commands_applied: 17,
            commands_refused: 1,
            cycles: 5000,
            ..Counts::default()
        };
        let text = render(&report);
        assert!(
            text.contains("10 parties, 98 members joined, 2 failed"),
            "{text}"
        );
        assert!(text.contains("50 sent, 490 delivered"), "{text}");
        assert!(
            text.contains("20 sent, 17 applied, 1 refused, 2 unapplied"),
            "{text}"
        );
        assert!(text.contains("5000 completed"), "{text}");
        assert!(!text.contains("viewers"), "{text}");
    }

    #[test]
    fn empty_report_does_not_panic() {
        let text = render(&empty());
        assert!(text.starts_with("ERROR"), "{text}");
        assert!(text.contains("(none recorded)"), "{text}");
        assert!(!text.contains("SLOs"), "{text}");
        assert!(!text.contains("server (pid"), "{text}");
        assert!(!text.contains("NaN"), "{text}");
        let mut report = empty();
        report.duration_s = f64::NAN;
        report.generator.cpu_pct_avg = f64::NAN;
        let text = render(&report);
        assert!(!text.contains("NaN"), "{text}");
    }
}
