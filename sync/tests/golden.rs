//! The golden vectors shared with the web client: `sync/tests/golden/sync-vectors.json` holds
//! inputs and expected outputs of the logic that exists both here and in `web-demo/js`
//! ([`ClockSync`] ↔ `clock.js`, [`sync::drift`] and [`Timeline::position_at`] ↔ `drift.js`).
//! `web-demo/tests/golden.test.mjs` checks the same file against the JavaScript, so neither side
//! can change a rule without the other's test failing.
//!
//! Run: `cargo test -p sync --test golden`. The file's `_about` says how to read it: numbers
//! are exact unless the field is listed in its section's `approximate` (then within
//! `tolerance`); the strings "NaN", "Infinity" and "-Infinity" stand for non-finite inputs.
//! Every test reports all the vectors that fail, not only the first.

use std::collections::BTreeMap;
use std::fmt::Debug;

use serde::Deserialize;
use serde_json::Value;
use sync::drift::{self, Action, Ewma};
use sync::{ClockSync, JOIN_BURST, ProbeSample, Timeline, UnixMillis, WINDOW};

const VECTORS: &str = include_str!("golden/sync-vectors.json");

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Golden {
    #[serde(rename = "_about")]
    _about: Vec<String>,
    tolerance: f64,
    constants: Constants,
    probe_samples: Section<ProbeVector>,
    clock_sync: Section<ClockVector>,
    timeline: Section<TimelineVector>,
    correct: Section<CorrectVector>,
    continues_playback: Section<ContinuesVector>,
    ewma: Section<EwmaVector>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Section<V> {
    #[serde(rename = "_about")]
    _about: String,
    /// Fields compared within the tolerance instead of exactly.
    #[serde(default)]
    approximate: Vec<String>,
    vectors: Vec<V>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Constants {
    approximate: Vec<String>,
    clock: BTreeMap<String, f64>,
    drift: BTreeMap<String, f64>,
}

/// An input number: a JSON number, or "NaN", "Infinity", "-Infinity".
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "Value")]
struct Num(f64);

impl TryFrom<Value> for Num {
    type Error = String;

    fn try_from(v: Value) -> Result<Self, String> {
        match &v {
            Value::Number(n) => n.as_f64().map(Num).ok_or_else(|| format!("{n}")),
            Value::String(s) if s == "NaN" => Ok(Num(f64::NAN)),
            Value::String(s) if s == "Infinity" => Ok(Num(f64::INFINITY)),
            Value::String(s) if s == "-Infinity" => Ok(Num(f64::NEG_INFINITY)),
            _ => Err(format!("not a number: {v}")),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Sample {
    t0: Num,
    t1: Num,
    t2: Num,
    t3: Num,
}

impl Sample {
    fn probe(&self) -> ProbeSample {
        ProbeSample {
            t0: self.t0.0,
            t1: self.t1.0,
            t2: self.t2.0,
            t3: self.t3.0,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeVector {
    name: String,
    sample: Sample,
    offset: f64,
    delay: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockVector {
    name: String,
    #[serde(default, rename = "note")]
    _note: Option<String>,
    samples: Vec<Sample>,
    checks: Vec<ClockCheck>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ClockCheck {
    after: usize,
    len: usize,
    offset: Option<f64>,
    error_bound: Option<f64>,
    rtt: Option<f64>,
    server_time: Vec<ServerTime>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ServerTime {
    client_ms: f64,
    server_ms: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TimelineVector {
    name: String,
    /// The wire form (`SharedState.timeline`).
    timeline: Timeline,
    positions: Vec<Position>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Position {
    server_ms: f64,
    position_ms: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CorrectVector {
    name: String,
    input: CorrectInput,
    expect: CorrectExpect,
}

/// `drift.js` `correct`'s argument, with its defaults.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CorrectInput {
    expected_ms: f64,
    actual_ms: f64,
    rate: f64,
    #[serde(default)]
    seek_latency_ms: f64,
    #[serde(default)]
    correcting: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CorrectExpect {
    action: String,
    error_ms: f64,
    playback_rate: f64,
    seek_to_ms: Option<f64>,
    correcting: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContinuesVector {
    name: String,
    current: Timeline,
    next: Timeline,
    continues: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EwmaVector {
    name: String,
    alpha: f64,
    initial: f64,
    updates: Vec<EwmaUpdate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EwmaUpdate {
    x: Num,
    value: f64,
    count: u64,
}

fn golden() -> Golden {
    serde_json::from_str(VECTORS).expect("sync/tests/golden/sync-vectors.json does not parse")
}

/// Collects every mismatch of a test, then fails once listing them all.
struct Checker {
    tolerance: f64,
    checks: usize,
    failures: Vec<String>,
}

impl Checker {
    fn new(golden: &Golden) -> Self {
        assert!(
            golden.tolerance > 0.0 && golden.tolerance < 1e-6,
            "tolerance {}",
            golden.tolerance
        );
        Self {
            tolerance: golden.tolerance,
            checks: 0,
            failures: Vec::new(),
        }
    }

    /// Exact, or within the tolerance if `approximate`.
    fn num(&mut self, what: impl Fn() -> String, actual: f64, expected: f64, approximate: bool) {
        self.checks += 1;
        let ok = if approximate {
            (actual - expected).abs() <= self.tolerance
        } else {
            actual == expected
        };
        if !ok {
            let how = if approximate {
                format!("not within {} of", self.tolerance)
            } else {
                "!= (exact)".to_owned()
            };
            self.failures
                .push(format!("{}: {actual:?} {how} {expected:?}", what()));
        }
    }

    /// A number or no estimate (`null`), exactly.
    fn opt(&mut self, what: impl Fn() -> String, actual: Option<f64>, expected: Option<f64>) {
        match (actual, expected) {
            (Some(a), Some(e)) => self.num(what, a, e, false),
            (None, None) => self.checks += 1,
            _ => {
                self.checks += 1;
                self.failures
                    .push(format!("{}: {actual:?} != {expected:?}", what()));
            }
        }
    }

    fn eq<T: PartialEq + Debug>(&mut self, what: impl Fn() -> String, actual: T, expected: T) {
        self.checks += 1;
        if actual != expected {
            self.failures
                .push(format!("{}: {actual:?} != {expected:?}", what()));
        }
    }

    fn finish(self, section: &str) {
        assert!(self.checks > 0, "{section}: nothing was checked");
        assert!(
            self.failures.is_empty(),
            "{section}: {} of {} checks disagree with sync/tests/golden/sync-vectors.json:\n  {}",
            self.failures.len(),
            self.checks,
            self.failures.join("\n  ")
        );
    }
}

#[test]
fn constants() {
    let golden = golden();
    let c = &golden.constants;
    let mut check = Checker::new(&golden);
    let clock: BTreeMap<&str, f64> = [("WINDOW", WINDOW as f64), ("JOIN_BURST", JOIN_BURST as f64)]
        .into_iter()
        .collect();
    let drift_constants: BTreeMap<&str, f64> = [
        ("DEAD_BAND_MS", drift::DEAD_BAND_MS),
        ("SETTLE_MS", drift::SETTLE_MS),
        ("MAX_NUDGE", drift::MAX_NUDGE),
        ("NUDGE_PER_MS", drift::NUDGE_PER_MS),
        ("SEEK_THRESHOLD_MS", drift::SEEK_THRESHOLD_MS),
        ("CONTROL_INTERVAL_MS", drift::CONTROL_INTERVAL_MS),
        ("SEEK_LATENCY_ALPHA", drift::SEEK_LATENCY_ALPHA),
        ("SEEK_LATENCY_PRIOR_MS", drift::SEEK_LATENCY_PRIOR_MS),
        ("CONTINUES_TOLERANCE_MS", drift::CONTINUES_TOLERANCE_MS),
    ]
    .into_iter()
    .collect();
    for (group, ours, theirs) in [
        ("clock", &clock, &c.clock),
        ("drift", &drift_constants, &c.drift),
    ] {
        check.eq(
            || format!("{group} constants"),
            ours.keys().copied().collect::<Vec<_>>(),
            theirs.keys().map(String::as_str).collect(),
        );
        for (name, &expected) in theirs {
            match ours.get(name.as_str()) {
                Some(&actual) => check.num(
                    || name.clone(),
                    actual,
                    expected,
                    c.approximate.contains(name),
                ),
                None => check.eq(|| format!("{name} exists"), false, true),
            }
        }
    }
    check.finish("constants");
}

#[test]
fn probe_samples() {
    let golden = golden();
    let mut check = Checker::new(&golden);
    for v in &golden.probe_samples.vectors {
        let s = v.sample.probe();
        check.num(
            || format!("{}: offset", v.name),
            s.offset(),
            v.offset,
            false,
        );
        check.num(|| format!("{}: delay", v.name), s.delay(), v.delay, false);
    }
    check.finish("probeSamples");
}

#[test]
fn clock_sync() {
    let golden = golden();
    let mut check = Checker::new(&golden);
    for v in &golden.clock_sync.vectors {
        let mut clock = ClockSync::new();
        let mut checks = v.checks.iter().peekable();
        for added in 0..=v.samples.len() {
            if added > 0 {
                clock.add(v.samples[added - 1].probe());
            }
            while let Some(c) = checks.next_if(|c| c.after == added) {
                let at = |what: &str| format!("{}: after {added} samples: {what}", v.name);
                check.eq(|| at("len"), clock.len(), c.len);
                check.eq(|| at("is_empty"), clock.is_empty(), c.len == 0);
                check.opt(|| at("offset"), clock.offset(), c.offset);
                check.opt(|| at("error_bound"), clock.error_bound(), c.error_bound);
                check.opt(|| at("rtt"), clock.rtt(), c.rtt);
                for st in &c.server_time {
                    check.opt(
                        || at(&format!("server_time({})", st.client_ms)),
                        clock.server_time(st.client_ms),
                        st.server_ms,
                    );
                }
            }
        }
        let left: Vec<usize> = checks.map(|c| c.after).collect();
        check.eq(
            || format!("{}: checks past the last sample", v.name),
            left,
            vec![],
        );
    }
    check.finish("clockSync");
}

#[test]
fn timeline_position() {
    let golden = golden();
    let mut check = Checker::new(&golden);
    for v in &golden.timeline.vectors {
        for p in &v.positions {
            let at = p.server_ms;
            check.num(
                || format!("{}: drift::position_at({at})", v.name),
                drift::position_at(&v.timeline, at),
                p.position_ms,
                false,
            );
            // Whole milliseconds: the server's own function agrees.
            if at.fract() == 0.0 {
                check.num(
                    || format!("{}: Timeline::position_at({at})", v.name),
                    v.timeline.position_at(UnixMillis(at as i64)),
                    p.position_ms,
                    false,
                );
            }
        }
    }
    check.finish("timeline");
}

#[test]
fn correct() {
    let golden = golden();
    let section = &golden.correct;
    let approx = |field: &str| section.approximate.iter().any(|f| f == field);
    let mut check = Checker::new(&golden);
    for v in &section.vectors {
        let i = &v.input;
        let step = drift::correct(
            i.expected_ms,
            i.actual_ms,
            i.rate,
            i.seek_latency_ms,
            i.correcting,
        );
        let e = &v.expect;
        let what = |field: &str| format!("{}: {field}", v.name);
        let action = match step.action {
            Action::None => "none",
            Action::Nudge => "nudge",
            Action::Seek => "seek",
        };
        check.eq(|| what("action"), action, e.action.as_str());
        check.eq(|| what("correcting"), step.correcting, e.correcting);
        check.num(
            || what("errorMs"),
            step.error_ms,
            e.error_ms,
            approx("errorMs"),
        );
        check.num(
            || what("playbackRate"),
            step.playback_rate,
            e.playback_rate,
            approx("playbackRate"),
        );
        match (step.seek_to_ms, e.seek_to_ms) {
            (Some(a), Some(x)) => check.num(|| what("seekToMs"), a, x, approx("seekToMs")),
            (a, x) => check.eq(|| what("seekToMs"), a, x),
        }
    }
    check.finish("correct");
}

#[test]
fn continues_playback() {
    let golden = golden();
    let mut check = Checker::new(&golden);
    for v in &golden.continues_playback.vectors {
        check.eq(
            || v.name.clone(),
            drift::continues_playback(&v.current, &v.next),
            v.continues,
        );
    }
    check.finish("continuesPlayback");
}

#[test]
fn ewma() {
    let golden = golden();
    let approx = golden.ewma.approximate.iter().any(|f| f == "value");
    let mut check = Checker::new(&golden);
    for v in &golden.ewma.vectors {
        let mut e = Ewma::new(v.alpha, v.initial);
        check.num(
            || format!("{}: initial value", v.name),
            e.value(),
            v.initial,
            false,
        );
        for (n, u) in v.updates.iter().enumerate() {
            let what =
                |field: &str| format!("{}: update #{} ({:?}): {field}", v.name, n + 1, u.x.0);
            let returned = e.update(u.x.0);
            check.num(|| what("returns"), returned, u.value, approx);
            check.num(|| what("value"), e.value(), u.value, approx);
            check.eq(|| what("count"), e.count(), u.count);
        }
    }
    check.finish("ewma");
}
