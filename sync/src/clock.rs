//! Clock synchronization, NTP style (RFC 5905 §8 on-wire exchange, with the minimum-delay
//! filter of its clock filter algorithm, §10).
//!
//! A client sends `t0` (its monotonic clock), the server stamps receive `t1` and send `t2`
//! (server wall clock), the client reads `t3` on arrival. Then
//!   offset = ((t1 − t0) + (t2 − t3)) / 2,   delay = (t3 − t0) − (t2 − t1).
//! The offset's error is at most delay / 2 (all of the delay on one side). Queuing only ever
//! adds delay, so the sample with the lowest delay in a sliding window is the most truthful:
//! the estimate is that sample's offset, and its bound is that sample's delay / 2.
//!
//! The web client (`web-demo/js/clock.js`) implements the same algorithm; `loadtest` and the
//! sync-accuracy benchmark use this one. The golden vectors in
//! `sync/tests/golden/sync-vectors.json` keep the two identical (`sync/tests/golden.rs`,
//! `web-demo/tests/golden.test.mjs`).

use std::collections::VecDeque;

/// One completed probe, all times in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeSample {
    /// Client send time, client clock.
    pub t0: f64,
    /// Server receive time, server clock.
    pub t1: f64,
    /// Server send time, server clock.
    pub t2: f64,
    /// Client receive time, client clock.
    pub t3: f64,
}

impl ProbeSample {
    /// Server clock minus client clock, as this sample sees it.
    pub fn offset(&self) -> f64 {
        ((self.t1 - self.t0) + (self.t2 - self.t3)) / 2.0
    }

    /// Round-trip network delay, excluding the server's processing time.
    pub fn delay(&self) -> f64 {
        ((self.t3 - self.t0) - (self.t2 - self.t1)).max(0.0)
    }
}

/// Probes sent on join: enough that one is likely to cross an idle network.
pub const JOIN_BURST: usize = 8;
/// Samples kept. At one probe every few seconds this is about a minute: long enough to hold a
/// quiet sample, short enough to follow a clock that drifts or a route that changes.
pub const WINDOW: usize = 16;

/// The estimate of the server clock from a sliding window of probes.
#[derive(Debug, Clone, Default)]
pub struct ClockSync {
    samples: VecDeque<ProbeSample>,
}

impl ClockSync {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a completed probe; the oldest falls out of the window. A probe with a time that is
    /// not a finite number is ignored, as `clock.js` does: its delay would read as 0 (`max`
    /// drops a NaN) and it would win with a NaN offset.
    pub fn add(&mut self, sample: ProbeSample) {
        let ProbeSample { t0, t1, t2, t3 } = sample;
        if ![t0, t1, t2, t3].iter().all(|t| t.is_finite()) {
            return;
        }
        if self.samples.len() == WINDOW {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    /// The sample with the lowest delay.
    fn best(&self) -> Option<&ProbeSample> {
        self.samples
            .iter()
            .min_by(|a, b| a.delay().total_cmp(&b.delay()))
    }

    /// Server clock minus client clock, in ms.
    pub fn offset(&self) -> Option<f64> {
        self.best().map(ProbeSample::offset)
    }

    /// The bound on the offset's error: half the best round trip.
    pub fn error_bound(&self) -> Option<f64> {
        self.best().map(|s| s.delay() / 2.0)
    }

    /// The best round trip: what the server uses to schedule changes ahead.
    pub fn rtt(&self) -> Option<f64> {
        self.best().map(ProbeSample::delay)
    }

    /// Server time for a client clock reading.
    pub fn server_time(&self, client_ms: f64) -> Option<f64> {
        self.offset().map(|o| client_ms + o)
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A probe through a network with `up`/`down` one-way delays, the server clock `offset`
    /// ahead of the client's.
    fn probe(t0: f64, up: f64, down: f64, offset: f64) -> ProbeSample {
        let t1 = t0 + up + offset;
        let t2 = t1 + 0.5;
        ProbeSample {
            t0,
            t1,
            t2,
            t3: t2 - offset + down,
        }
    }

    #[test]
    fn symmetric_paths_give_the_exact_offset() {
        let s = probe(1000.0, 40.0, 40.0, 12_345.0);
        assert!((s.offset() - 12_345.0).abs() < 1e-9);
        assert!((s.delay() - 80.0).abs() < 1e-9);
    }

    #[test]
    fn the_lowest_delay_sample_wins_and_bounds_the_error() {
        let mut clock = ClockSync::new();
        // Queued samples (asymmetric by the queue) around one quiet one.
        clock.add(probe(0.0, 30.0, 230.0, 500.0));
        clock.add(probe(10.0, 31.0, 31.0, 500.0));
        clock.add(probe(20.0, 190.0, 30.0, 500.0));
        assert!((clock.offset().unwrap() - 500.0).abs() < 1e-9);
        assert!((clock.rtt().unwrap() - 62.0).abs() < 1e-9);
        assert!((clock.error_bound().unwrap() - 31.0).abs() < 1e-9);
        // Asymmetry error is within the bound.
        let mut lopsided = ClockSync::new();
        lopsided.add(probe(0.0, 10.0, 50.0, 500.0));
        let err = (lopsided.offset().unwrap() - 500.0).abs();
        assert!(err <= lopsided.error_bound().unwrap() + 1e-9, "{err}");
    }

    #[test]
    fn a_probe_with_a_non_finite_time_is_ignored() {
        let mut clock = ClockSync::new();
        let mut broken = probe(0.0, 20.0, 20.0, 100.0);
        broken.t1 = f64::NAN;
        clock.add(broken);
        assert!(clock.is_empty());
        clock.add(probe(10.0, 20.0, 20.0, 100.0));
        broken.t3 = f64::INFINITY;
        clock.add(broken);
        assert_eq!(clock.len(), 1);
        assert!((clock.offset().unwrap() - 100.0).abs() < 1e-9);
    }

    #[test]
    fn the_window_slides() {
        let mut clock = ClockSync::new();
        clock.add(probe(0.0, 1.0, 1.0, 0.0));
        for i in 0..WINDOW {
            clock.add(probe(100.0 + i as f64, 50.0, 50.0, 7.0));
        }
        assert_eq!(clock.len(), WINDOW);
        assert!(
            (clock.offset().unwrap() - 7.0).abs() < 1e-9,
            "old best fell out"
        );
    }
}
