//! The HTML report: one self-contained file (inline CSS and hand-drawn inline SVG, no scripts,
//! no external resources) with the same tables as the text summary plus plots of the
//! per-second series and of each metric's histogram.
//!
//! Every string that comes from the report is escaped, and every SVG coordinate is finite:
//! empty data shows "no data", and a single point or a flat line gets a widened axis range.

use std::fmt::Write;

use super::table::{
    METRIC_HEADER, count_groups, duration, generator_rows, metric_row, num, server_rows, slo_row,
    utc_time, verdict_label, verdict_meaning,
};
use super::{MetricReport, Report, SeriesPoint, Verdict};

/// The whole HTML document.
pub fn render(report: &Report) -> String {
    let mut out = String::with_capacity(64 * 1024);
    let verdict = verdict_label(report.verdict);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>loadtest {verdict} — {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        esc(&report.scenario)
    );

    let _ = writeln!(
        out,
        "<div class=\"banner {}\"><span class=\"verdict\">{verdict}</span> \
         <span class=\"meaning\">{}</span></div>",
        verdict_class(report.verdict),
        verdict_meaning(report.verdict)
    );
    let _ = writeln!(
        out,
        "<p class=\"scenario\"><b>{}</b></p>",
        esc(&report.scenario)
    );
    let mut facts = Vec::new();
    if !report.kind.is_empty() {
        facts.push(format!("kind <b>{}</b>", esc(&report.kind)));
    }
    if !report.server.is_empty() {
        facts.push(format!("server <code>{}</code>", esc(&report.server)));
    }
    facts.push(format!("duration {}", esc(&duration(report.duration_s))));
    facts.push(format!("seed {}", report.seed));
    if report.started_unix_ms > 0 {
        facts.push(format!("started {}", utc_time(report.started_unix_ms)));
    }
    let _ = writeln!(out, "<p class=\"facts\">{}</p>", facts.join(" · "));

    if !report.invalid.is_empty() {
        out.push_str(
            "<div class=\"box invalid-box\"><b>INVALID:</b> the generator could not keep up, \
             so these numbers describe it, not the server.\n<ul>\n",
        );
        for reason in &report.invalid {
            let _ = writeln!(out, "<li>{}</li>", esc(reason));
        }
        out.push_str("</ul></div>\n");
    }
    if !report.errors.is_empty() {
        out.push_str("<div class=\"box error-box\"><b>Errors</b>\n<ul>\n");
        for error in &report.errors {
            let _ = writeln!(out, "<li>{}</li>", esc(error));
        }
        out.push_str("</ul></div>\n");
    }

    if !report.slos.is_empty() {
        out.push_str("<h2>SLOs</h2>\n<table>\n<tr><th>key</th><th>limit</th><th>actual</th><th>result</th></tr>\n");
        for slo in &report.slos {
            let row = slo_row(slo);
            let class = if slo.pass { "pass" } else { "fail" };
            let _ = writeln!(
                out,
                "<tr><td><code>{}</code></td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                 <td class=\"{class}\">{}</td></tr>",
                esc(&row[0]),
                esc(&row[1]),
                esc(&row[2]),
                esc(&row[3])
            );
        }
        out.push_str("</table>\n");
    }

    out.push_str("<h2>Counts</h2>\n");
    let groups = count_groups(&report.counts);
    if groups.is_empty() {
        out.push_str("<p class=\"nodata\">no data</p>\n");
    } else {
        key_value_table(&mut out, &groups);
    }

    out.push_str("<h2>Metrics</h2>\n");
    if report.metrics.is_empty() {
        out.push_str("<p class=\"nodata\">no data</p>\n");
    } else {
        out.push_str("<table>\n<tr>");
        for h in METRIC_HEADER {
            let _ = write!(out, "<th>{h}</th>");
        }
        out.push_str("</tr>\n");
        for m in &report.metrics {
            out.push_str("<tr>");
            for (i, cell) in metric_row(m).iter().enumerate() {
                let class = if (2..=6).contains(&i) {
                    " class=\"num\""
                } else {
                    ""
                };
                let _ = write!(out, "<td{class}>{}</td>", esc(cell));
            }
            out.push_str("</tr>\n");
        }
        out.push_str("</table>\n");
    }

    if let Some(server) = &report.server_usage {
        let _ = writeln!(out, "<h2>Server (pid {})</h2>", server.pid);
        key_value_table(&mut out, &server_rows(server));
    }
    out.push_str("<h2>Generator</h2>\n");
    key_value_table(&mut out, &generator_rows(&report.generator));

    out.push_str("<h2>Over time</h2>\n");
    series_charts(&mut out, &report.series);

    out.push_str("<h2>Distributions</h2>\n");
    if report.metrics.is_empty() {
        out.push_str("<p class=\"nodata\">no data</p>\n");
    } else {
        out.push_str("<div class=\"charts\">\n");
        for m in &report.metrics {
            histogram(&mut out, m);
        }
        out.push_str("</div>\n");
    }

    out.push_str("<p class=\"foot\">generated by loadtest</p>\n</body>\n</html>\n");
    out
}

const STYLE: &str = "
body { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; color: #222;
  max-width: 1120px; margin: 1.5em auto; padding: 0 1em; line-height: 1.4; }
h2 { font-size: 1.15em; margin: 1.6em 0 .5em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
.banner { color: #fff; padding: .7em 1em; border-radius: 6px; font-size: 1.1em; }
.banner .verdict { font-size: 1.6em; font-weight: 700; margin-right: .6em; letter-spacing: .05em; }
.banner.pass { background: #2e7d32; } .banner.fail { background: #c62828; }
.banner.invalid { background: #e65100; } .banner.error { background: #6a1b9a; }
.scenario { font-size: 1.1em; margin: .8em 0 .2em; } .facts { color: #555; margin: 0; }
.box { border-radius: 6px; padding: .5em 1em; margin: 1em 0; }
.invalid-box { background: #fff3e0; border: 1px solid #e65100; }
.error-box { background: #fbe9e7; border: 1px solid #c62828; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; font-size: .92em; }
th, td { padding: .2em .8em; border-bottom: 1px solid #e5e5e5; text-align: left; vertical-align: top; }
th { background: #f5f5f5; } td.num { text-align: right; }
td.pass { color: #2e7d32; font-weight: 700; } td.fail { color: #c62828; font-weight: 700; }
.charts { display: flex; flex-wrap: wrap; gap: 1em; }
.charts svg { max-width: 100%; height: auto; background: #fff; border: 1px solid #e5e5e5; border-radius: 4px; }
svg text { font-family: system-ui, sans-serif; font-size: 11px; fill: #333; }
svg .title { font-size: 12px; font-weight: 700; }
.nodata { color: #888; font-style: italic; } .foot { color: #999; font-size: .8em; margin-top: 2em; }
";

fn verdict_class(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Pass => "pass",
        Verdict::Fail => "fail",
        Verdict::Invalid => "invalid",
        Verdict::Error => "error",
    }
}

/// Escapes text for HTML content and attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn key_value_table(out: &mut String, rows: &[(&'static str, String)]) {
    out.push_str("<table>\n");
    for (key, value) in rows {
        let _ = writeln!(out, "<tr><th>{}</th><td>{}</td></tr>", esc(key), esc(value));
    }
    out.push_str("</table>\n");
}

/// One line of a chart: legend name, colour, points.
struct Line {
    name: &'static str,
    color: &'static str,
    points: Vec<(f64, f64)>,
}

fn line(
    name: &'static str,
    color: &'static str,
    series: &[SeriesPoint],
    y: impl Fn(&SeriesPoint) -> Option<f64>,
) -> Line {
    Line {
        name,
        color,
        points: series
            .iter()
            .filter_map(|p| y(p).map(|v| (p.t_s, v)))
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect(),
    }
}

fn series_charts(out: &mut String, series: &[SeriesPoint]) {
    if series.is_empty() {
        out.push_str("<p class=\"nodata\">no data</p>\n");
        return;
    }
    out.push_str("<div class=\"charts\">\n");
    line_chart(
        out,
        "Viewers",
        "count",
        &[
            line("joined", "#1f77b4", series, |p| Some(p.joined as f64)),
            line("failed", "#d62728", series, |p| Some(p.failed as f64)),
            line("active", "#2ca02c", series, |p| Some(p.active as f64)),
        ],
    );
    line_chart(
        out,
        "Packets received",
        "pkt/s",
        &[line("packets/s", "#9467bd", series, |p| {
            Some(p.packets_per_s)
        })],
    );
    if series.iter().any(|p| p.server_cpu_pct.is_some()) {
        line_chart(
            out,
            "Server CPU",
            "% (100 = one core)",
            &[line("server CPU %", "#ff7f0e", series, |p| {
                p.server_cpu_pct
            })],
        );
    }
    if series.iter().any(|p| p.server_rss_mb.is_some()) {
        line_chart(
            out,
            "Server RSS",
            "MB",
            &[line("server RSS MB", "#8c564b", series, |p| {
                p.server_rss_mb
            })],
        );
    }
    line_chart(
        out,
        "Generator CPU",
        "% (100 = one core)",
        &[line("generator CPU %", "#17becf", series, |p| {
            Some(p.generator_cpu_pct)
        })],
    );
    line_chart(
        out,
        "Generator scheduling lag",
        "ms",
        &[line("sched lag ms", "#e377c2", series, |p| {
            Some(p.sched_lag_ms)
        })],
    );
    out.push_str("</div>\n");
}

const W: f64 = 520.0;
const H: f64 = 250.0;
const LEFT: f64 = 58.0;
const RIGHT: f64 = 14.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 40.0;

/// A linear mapping from a data range onto a pixel range; the data range is never empty.
#[derive(Clone, Copy)]
struct Scale {
    lo: f64,
    hi: f64,
    from: f64,
    to: f64,
}

impl Scale {
    fn new(lo: f64, hi: f64, from: f64, to: f64) -> Self {
        let (lo, hi) = widen(lo, hi);
        Scale { lo, hi, from, to }
    }

    fn at(self, v: f64) -> f64 {
        let v = if v.is_finite() {
            v.clamp(self.lo, self.hi)
        } else {
            self.lo
        };
        let px = self.from + (v - self.lo) / (self.hi - self.lo) * (self.to - self.from);
        if px.is_finite() { px } else { self.from }
    }
}

/// A finite, non-empty range containing `lo..=hi`.
fn widen(lo: f64, hi: f64) -> (f64, f64) {
    let (lo, hi) = match (lo.is_finite(), hi.is_finite()) {
        (true, true) => (lo.min(hi), lo.max(hi)),
        (true, false) => (lo, lo),
        (false, true) => (hi, hi),
        (false, false) => (0.0, 1.0),
    };
    if hi - lo > f64::EPSILON * hi.abs().max(1.0) {
        (lo, hi)
    } else {
        let pad = if lo.abs() > 0.0 { lo.abs() * 0.1 } else { 1.0 };
        (lo - pad, hi + pad)
    }
}

/// About `target` round tick values (1, 2 or 5 × 10ⁿ apart) within `lo..=hi`, and the step.
fn ticks(lo: f64, hi: f64, target: usize) -> (Vec<f64>, f64) {
    let (lo, hi) = widen(lo, hi);
    let step = nice_step((hi - lo) / target.max(1) as f64);
    let first = (lo / step).ceil();
    let mut out = Vec::new();
    for i in 0..=100 {
        let v = (first + f64::from(i)) * step;
        if v > hi + step * 1e-9 {
            break;
        }
        // Avoid printing -0.
        out.push(if v == 0.0 { 0.0 } else { v });
    }
    (out, step)
}

/// The round number (1, 2 or 5 × 10ⁿ) at or above `raw`.
fn nice_step(raw: f64) -> f64 {
    if !raw.is_finite() || raw <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// Rounds the top of a y axis up to a tick: 0..=top with about 4 ticks.
fn y_top(max: f64) -> f64 {
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let step = nice_step(max / 4.0);
    (max / step).ceil().max(1.0) * step
}

/// A tick label: `41.2k`, `2M`, `0.05`, `120`.
fn tick_label(v: f64, step: f64) -> String {
    let a = v.abs();
    let trim = |s: String| {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            s
        }
    };
    if a >= 1e6 {
        format!("{}M", trim(format!("{:.2}", v / 1e6)))
    } else if a >= 1e4 {
        format!("{}k", trim(format!("{:.1}", v / 1e3)))
    } else {
        let decimals = if step >= 1.0 || step <= 0.0 || !step.is_finite() {
            0
        } else {
            (-step.log10().floor()).clamp(0.0, 6.0) as usize
        };
        let s = format!("{v:.decimals$}");
        if s.trim_start_matches('-')
            .chars()
            .all(|c| c == '0' || c == '.')
        {
            "0".to_owned()
        } else {
            s
        }
    }
}

/// Opens an SVG with its title and axis labels.
fn svg_open(out: &mut String, title: &str, y_unit: &str, x_label: &str) {
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{}\">",
        esc(title)
    );
    let _ = writeln!(
        out,
        "<text class=\"title\" x=\"{LEFT}\" y=\"16\">{}</text>",
        esc(title)
    );
    let _ = writeln!(
        out,
        "<text x=\"8\" y=\"{:.1}\" transform=\"rotate(-90 8 {:.1})\" dx=\"0\" dy=\"4\" \
         text-anchor=\"middle\">{}</text>",
        (TOP + H - BOTTOM) / 2.0,
        (TOP + H - BOTTOM) / 2.0,
        esc(y_unit)
    );
    let _ = writeln!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
        (LEFT + W - RIGHT) / 2.0,
        H - 6.0,
        esc(x_label)
    );
}

/// Draws the axes, grid lines and tick labels.
fn axes(
    out: &mut String,
    x: Scale,
    x_ticks: &(Vec<f64>, f64),
    y: Scale,
    y_ticks: &(Vec<f64>, f64),
) {
    let (x0, x1, y0, y1) = (LEFT, W - RIGHT, H - BOTTOM, TOP);
    for &v in &y_ticks.0 {
        let py = y.at(v);
        let _ = writeln!(
            out,
            "<line x1=\"{x0:.1}\" y1=\"{py:.1}\" x2=\"{x1:.1}\" y2=\"{py:.1}\" stroke=\"#eee\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            x0 - 5.0,
            py + 4.0,
            tick_label(v, y_ticks.1)
        );
    }
    for &v in &x_ticks.0 {
        let px = x.at(v);
        let _ = writeln!(
            out,
            "<line x1=\"{px:.1}\" y1=\"{y0:.1}\" x2=\"{px:.1}\" y2=\"{:.1}\" stroke=\"#555\"/>\
             <text x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            y0 + 4.0,
            y0 + 16.0,
            tick_label(v, x_ticks.1)
        );
    }
    let _ = writeln!(
        out,
        "<polyline points=\"{x0:.1},{y1:.1} {x0:.1},{y0:.1} {x1:.1},{y0:.1}\" fill=\"none\" \
         stroke=\"#555\"/>"
    );
}

fn no_data(out: &mut String) {
    let _ = writeln!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#888\">no data</text>",
        (LEFT + W - RIGHT) / 2.0,
        (TOP + H - BOTTOM) / 2.0
    );
}

/// A line chart of several lines over time, with axes, ticks and a legend.
fn line_chart(out: &mut String, title: &str, y_unit: &str, lines: &[Line]) {
    svg_open(out, title, y_unit, "time (s)");
    let all = || lines.iter().flat_map(|l| l.points.iter());
    if all().next().is_none() {
        no_data(out);
        out.push_str("</svg>\n");
        return;
    }
    let x_min = all().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let x_max = all().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let y_min = all().map(|p| p.1).fold(0.0, f64::min);
    let y_max = all().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let x = Scale::new(x_min, x_max, LEFT, W - RIGHT);
    let y_hi = y_top(y_max);
    let y_lo = if y_min < 0.0 { -y_top(-y_min) } else { 0.0 };
    let y = Scale::new(y_lo, y_hi, H - BOTTOM, TOP);
    let x_ticks = ticks(x.lo, x.hi, 6);
    let y_ticks = ticks(y.lo, y.hi, 4);
    axes(out, x, &x_ticks, y, &y_ticks);

    for l in lines {
        if l.points.is_empty() {
            continue;
        }
        let points: Vec<String> = l
            .points
            .iter()
            .map(|&(px, py)| format!("{:.1},{:.1}", x.at(px), y.at(py)))
            .collect();
        if points.len() == 1 {
            let (px, py) = l.points[0];
            let _ = writeln!(
                out,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{}\"/>",
                x.at(px),
                y.at(py),
                l.color
            );
        } else {
            let _ = writeln!(
                out,
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.6\" \
                 stroke-linejoin=\"round\"/>",
                points.join(" "),
                l.color
            );
        }
    }

    // Legend, right-aligned on the title row.
    let mut lx = W - RIGHT;
    for l in lines.iter().rev() {
        let width = 22.0 + 6.5 * l.name.chars().count() as f64;
        lx -= width;
        let _ = writeln!(
            out,
            "<rect x=\"{lx:.1}\" y=\"24\" width=\"12\" height=\"4\" fill=\"{}\"/>\
             <text x=\"{:.1}\" y=\"30\">{}</text>",
            l.color,
            lx + 16.0,
            esc(l.name)
        );
    }
    out.push_str("</svg>\n");
}

/// A metric's histogram: bars by value, with p50 and p99 marked.
fn histogram(out: &mut String, m: &MetricReport) {
    let title = format!("{} — {}", m.name, m.description);
    svg_open(out, &title, "count", &m.unit);
    let bars: Vec<(f64, u64)> = m.bars.iter().copied().filter(|b| b.0.is_finite()).collect();
    if bars.is_empty() {
        no_data(out);
        out.push_str("</svg>\n");
        return;
    }
    // Bars are (upper edge, count), equally wide; the first bar's lower edge is one width
    // below its upper edge.
    let first = bars[0].0;
    let width = match bars.get(1) {
        Some(next) if next.0 > first => next.0 - first,
        _ if m.summary.min.is_finite() && m.summary.min < first => first - m.summary.min,
        _ if first.abs() > 0.0 => first.abs() * 0.1,
        _ => 1.0,
    };
    let lo = first - width;
    let hi = bars.iter().map(|b| b.0).fold(first, f64::max);
    let x = Scale::new(lo, hi, LEFT, W - RIGHT);
    let max_count = bars.iter().map(|b| b.1).max().unwrap_or(0) as f64;
    let y = Scale::new(0.0, y_top(max_count), H - BOTTOM, TOP);
    let x_ticks = ticks(x.lo, x.hi, 6);
    let y_ticks = ticks(y.lo, y.hi, 4);

    axes(out, x, &x_ticks, y, &y_ticks);
    let mut lower = lo;
    for &(upper, count) in &bars {
        let (left, right) = (x.at(lower), x.at(upper));
        let gap = if right - left > 3.0 { 1.0 } else { 0.0 };
        let top = y.at(count as f64);
        let _ = writeln!(
            out,
            "<rect x=\"{:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#4e79a7\">\
             <title>≤ {} {}: {}</title></rect>",
            left,
            (right - left - gap).max(0.5),
            (y.at(0.0) - top).max(0.0),
            esc(&num(upper)),
            esc(&m.unit),
            count
        );
        lower = upper;
    }

    for (label, value, color, dy) in [
        ("p50", m.summary.p50, "#2ca02c", 0.0),
        ("p99", m.summary.p99, "#d62728", 11.0),
    ] {
        if !value.is_finite() {
            continue;
        }
        let px = x.at(value);
        // Labels near the right edge go on the left of their line.
        let (tx, anchor) = if px > W - RIGHT - 70.0 {
            (px - 3.0, "end")
        } else {
            (px + 3.0, "start")
        };
        let _ = writeln!(
            out,
            "<line x1=\"{px:.1}\" y1=\"{:.1}\" x2=\"{px:.1}\" y2=\"{:.1}\" stroke=\"{color}\" \
             stroke-width=\"1.5\" stroke-dasharray=\"4 3\"/>\
             <text x=\"{tx:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\" fill=\"{color}\">{label} {}</text>",
            H - BOTTOM,
            TOP - 2.0,
            TOP + 10.0 + dy,
            esc(&num(value))
        );
    }
    out.push_str("</svg>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::table::tests::{empty, sample};

    fn assert_clean(html: &str) {
        assert!(!html.contains("NaN"), "NaN in\n{html}");
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.trim_end().ends_with("</html>"));
        assert_eq!(html.matches("<svg").count(), html.matches("</svg>").count());
        for external in [
            "<script",
            "<link",
            "src=\"http",
            "href=\"http",
            "@import",
            "url(",
        ] {
            assert!(!html.contains(external), "{external} in\n{html}");
        }
        // Every number in a coordinate attribute parses as a finite number.
        for attr in [
            " x=\"",
            " y=\"",
            " x1=\"",
            " x2=\"",
            " y1=\"",
            " y2=\"",
            " cx=\"",
            " cy=\"",
            " width=\"",
            " height=\"",
        ] {
            for part in html.split(attr).skip(1) {
                let value = &part[..part.find('"').unwrap()];
                let v: f64 = value.parse().unwrap_or_else(|_| panic!("{attr}{value}"));
                assert!(v.is_finite(), "{attr}{value}");
            }
        }
        for part in html.split("points=\"").skip(1) {
            let value = &part[..part.find('"').unwrap()];
            for n in value.split([' ', ',']) {
                let v: f64 = n.parse().unwrap_or_else(|_| panic!("points {value}"));
                assert!(v.is_finite());
            }
        }
    }

    #[test]
    fn full_report_has_banner_tables_and_plots() {
        let report = sample();
        let html = render(&report);
        assert_clean(&html);
        assert!(html.contains("<div class=\"banner fail\"><span class=\"verdict\">FAIL</span>"));
        // 6 series charts (server CPU and RSS present) + 3 histograms.
        assert_eq!(html.matches("<svg").count(), 9, "{html}");
        assert_eq!(
            html.matches("<polyline points=\"").count() - 9,
            3 + 1 + 1 + 1 + 1 + 1
        );
        for name in [
            "joined",
            "failed",
            "active",
            "packets/s",
            "server CPU %",
            "server RSS MB",
            "generator CPU %",
            "sched lag ms",
        ] {
            assert!(
                html.contains(&format!(">{}</text>", esc(name))),
                "legend {name}"
            );
        }
        for m in &report.metrics {
            assert!(html.contains(&format!("<td>{}</td>", m.name)), "{}", m.name);
            assert!(html.contains(&format!("{} — {}", m.name, m.description)));
        }
        assert!(
            html.contains("<td class=\"num\">812</td>"),
            "join p99 in the table"
        );
        assert!(html.contains(">p99 812</text>"), "p99 marker");
        assert!(html.contains(">p50 180</text>"), "p50 marker");
        // One histogram rect per bar.
        assert_eq!(html.matches("fill=\"#4e79a7\"").count(), 30);
        assert!(html.contains("<code>join_p99_ms</code></td><td class=\"num\">500</td><td class=\"num\">812</td><td class=\"fail\">FAIL</td>"));
        assert!(html.contains("<td class=\"pass\">PASS</td>"));
        assert!(html.contains("<th>viewers</th><td>1000 planned"));
        assert!(html.contains("Server (pid 4321)"));
        assert!(html.contains("3.2 µs"));
        assert!(!html.contains("no data"));
    }

    #[test]
    fn strings_from_the_report_are_escaped() {
        let mut report = sample();
        report.scenario = "spike <script>alert(\"x\")</script> & more".to_owned();
        report.server = "ws://h/?a=1&b=<2>".to_owned();
        report.errors = vec!["bad <b>thing</b>".to_owned()];
        report.invalid = vec!["\"quoted\" <i>".to_owned()];
        report.metrics[0].description = "a<b & c>d".to_owned();
        report.slos[0].key = "<key>".to_owned();
        let html = render(&report);
        assert_clean(&html);
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("<b>thing"), "{html}");
        assert!(!html.contains("<i>"), "{html}");
        assert!(!html.contains("<key>"), "{html}");
        assert!(!html.contains("a<b"), "{html}");
        assert!(
            html.contains("spike &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more")
        );
        assert!(html.contains("ws://h/?a=1&amp;b=&lt;2&gt;"));
        assert!(html.contains("&quot;quoted&quot; &lt;i&gt;"));
        assert!(html.contains("join — a&lt;b &amp; c&gt;d"));
    }

    #[test]
    fn empty_report_shows_no_data() {
        let html = render(&empty());
        assert_clean(&html);
        assert!(html.contains("banner error"));
        assert!(html.matches("no data").count() >= 3, "{html}");
        assert!(!html.contains("<svg"), "{html}");
    }

    #[test]
    fn single_point_series_and_degenerate_metrics_stay_finite() {
        let mut report = sample();
        report.verdict = Verdict::Pass;
        report.series.truncate(1);
        report.series[0].t_s = 0.0;
        report.series[0].joined = 0;
        report.series[0].packets_per_s = f64::NAN;
        report.series[0].server_rss_mb = None;
        report.metrics[0].bars = vec![(5.0, 10)];
        report.metrics[1].bars = vec![(0.0, 3)];
        report.metrics[1].summary.min = 0.0;
        report.metrics[2].bars.clear();
        let html = render(&report);
        assert_clean(&html);
        assert!(html.contains("banner pass"));
        assert!(html.contains("<circle"), "a single point is drawn as a dot");
        // The NaN packet rate leaves that chart empty, the RSS chart is gone, and the third
        // metric has no bars.
        assert_eq!(html.matches("no data").count(), 2, "{html}");
        assert!(!html.contains("Server RSS"));
        assert_eq!(html.matches("<svg").count(), 8);
    }

    #[test]
    fn ticks_and_labels_are_round() {
        assert_eq!(ticks(0.0, 10.0, 5).0, [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(y_top(812.0), 1000.0);
        assert_eq!(y_top(0.0), 1.0);
        assert_eq!(tick_label(41_200.0, 10_000.0), "41.2k");
        assert_eq!(tick_label(2_000_000.0, 1e6), "2M");
        assert_eq!(tick_label(0.05, 0.05), "0.05");
        assert_eq!(tick_label(-0.0, 0.5), "0");
        let (lo, hi) = widen(3.0, 3.0);
        assert!(
            lo < 3.0 && hi > 3.0 && (hi - lo - 0.6).abs() < 1e-9,
            "{lo} {hi}"
        );
        assert_eq!(widen(0.0, 0.0), (-1.0, 1.0));
        assert_eq!(widen(f64::NAN, f64::NAN), (0.0, 1.0));
    }
}
