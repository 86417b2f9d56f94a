//! Service-level objectives: upper bounds on report values, from `--slo key=value` or the
//! scenario's `[slo]` table. A key a run did not produce fails: an objective nobody measured is
//! not met.

use std::collections::BTreeMap;

use anyhow::{Result, bail};

use crate::metrics::Metric;
use crate::report::{Report, SloOutcome};

/// Run-wide keys besides the per-metric `<metric>_<stat>_<unit>` ones.
const RUN_KEYS: [&str; 12] = [
    "loss_pct",
    "joins_failed",
    "joins_failed_pct",
    "freezes",
    "members_failed",
    "commands_refused",
    "commands_unapplied",
    "server_cpu_pct_avg",
    "server_rss_peak_mb",
    "server_cpu_us_per_packet",
    "server_rss_kb_per_viewer",
    "server_rss_growth_kb_per_1000_cycles",
];

/// Every key an SLO may name.
pub fn known_keys() -> Vec<String> {
    let mut keys: Vec<String> = Metric::ALL
        .iter()
        .flat_map(|m| {
            ["p50", "p95", "p99", "max"]
                .iter()
                .map(move |stat| format!("{}_{stat}_{}", m.name(), m.unit()))
        })
        .collect();
    keys.extend(RUN_KEYS.iter().map(|k| (*k).to_owned()));
    keys
}

/// Parses `key=value`, checking the key exists.
pub fn parse(text: &str) -> Result<(String, f64)> {
    let Some((key, value)) = text.split_once('=') else {
        bail!("--slo expects key=value (e.g. join_p99_ms=1000), got {text:?}");
    };
    let key = key.trim();
    let value: f64 = value
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("--slo {key}: {value:?} is not a number"))?;
    check(key, value)?;
    Ok((key.to_owned(), value))
}

/// Checks that `key` is known and `limit` a finite number.
pub fn check(key: &str, limit: f64) -> Result<()> {
    if !limit.is_finite() {
        bail!("SLO {key}: the limit must be a finite number, got {limit}");
    }
    if !known_keys().iter().any(|k| k == key) {
        bail!(
            "unknown SLO key {key:?}; known keys: {}",
            known_keys().join(", ")
        );
    }
    Ok(())
}

/// Evaluates each objective against the report's values.
pub fn evaluate(report: &Report, slos: &BTreeMap<String, f64>) -> Vec<SloOutcome> {
    let values = report.scalars();
    slos.iter()
        .map(|(key, limit)| {
            let actual = values.get(key).copied();
            SloOutcome {
                key: key.clone(),
                limit: *limit,
                actual,
                pass: actual.is_some_and(|v| v <= *limit),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Histograms;
    use crate::report::{Counts, GeneratorUsage, MetricReport, Verdict};

    fn report() -> Report {
        let mut h = Histograms::new();
        for v in 1..=100 {
            h.record(Metric::Join, f64::from(v) * 10.0);
        }
        Report {
            scenario: "t".into(),
            kind: "spike".into(),
            server: "127.0.0.1:1".into(),
            seed: 1,
            started_unix_ms: 0,
            duration_s: 1.0,
            verdict: Verdict::Pass,
            invalid: vec![],
            errors: vec![],
            counts: Counts {
                packets_expected: 1000,
                packets_lost: 5,
                ..Counts::default()
            },
            metrics: MetricReport::all(&h),
            series: vec![],
            server_usage: None,
            generator: GeneratorUsage::default(),
            slos: vec![],
        }
    }

    #[test]
    fn parses_and_refuses_bad_keys_and_values() {
        assert_eq!(
            parse("join_p99_ms=1000").unwrap(),
            ("join_p99_ms".to_owned(), 1000.0)
        );
        assert_eq!(parse(" loss_pct = 0.5 ").unwrap().1, 0.5);
        let e = parse("join_p99=1000").unwrap_err().to_string();
        assert!(
            e.contains("unknown SLO key") && e.contains("join_p99_ms"),
            "{e}"
        );
        assert!(
            parse("loss_pct=lots")
                .unwrap_err()
                .to_string()
                .contains("not a number")
        );
        assert!(
            parse("loss_pct")
                .unwrap_err()
                .to_string()
                .contains("key=value")
        );
        assert!(parse("loss_pct=NaN").is_err());
    }

    #[test]
    fn evaluates_bounds_inclusively_and_fails_missing_values() {
        let r = report();
        let slos = BTreeMap::from([
            ("join_p99_ms".to_owned(), 1000.0),
            ("join_p50_ms".to_owned(), 100.0),
            ("loss_pct".to_owned(), 0.5),
            ("chat_fanout_p99_ms".to_owned(), 100.0),
        ]);
        let out = evaluate(&r, &slos);
        let by_key = |k: &str| out.iter().find(|o| o.key == k).unwrap().clone();
        assert!(by_key("join_p99_ms").pass, "{out:?}");
        let p50 = by_key("join_p50_ms");
        assert!(
            !p50.pass && (p50.actual.unwrap() - 500.0).abs() < 1.0,
            "{p50:?}"
        );
        // 5 of 1000 is 0.5 %: on the limit passes.
        assert!(by_key("loss_pct").pass, "{out:?}");
        let missing = by_key("chat_fanout_p99_ms");
        assert_eq!(missing.actual, None);
        assert!(!missing.pass);
    }
}
