//! Drift correction for a shared playback timeline: the pure rules of the web client's
//! controller (`web-demo/js/drift.js`, which `web-demo/js/synced-video.js` applies to a
//! `<video>`). The sync-accuracy benchmark steers its simulated players with these, and the
//! golden vectors (`sync/tests/golden/sync-vectors.json`, checked by `sync/tests/golden.rs`
//! and `web-demo/tests/golden.test.mjs`) keep this module and `drift.js` identical.
//!
//! Every device computes where it should be from the timeline and its synchronized clock, and
//! steers its player there; with `error` = actual − expected position:
//!   |error| ≤ 40 ms     nothing: the timeline's rate (the dead band; closer than any person
//!                       notices, and touching the rate costs smoothness);
//!   |error| ≤ 1500 ms   nudge the rate by at most ±5 %, proportionally to the error (pitch
//!                       preserved): invisible, and 5 % closes 50 ms per second;
//!   beyond              seek, aiming ahead by the measured seek latency, so the player lands
//!                       where the timeline is when the seek completes.
//! A correction that starts continues until the error is within [`SETTLE_MS`] (hysteresis),
//! so that a device does not park at the edge of the dead band.

use crate::Timeline;

/// Errors up to this are left alone.
pub const DEAD_BAND_MS: f64 = 40.0;
/// Once correcting, nudge until the error is this small.
pub const SETTLE_MS: f64 = 8.0;
/// The largest rate nudge, as a fraction of the timeline's rate.
pub const MAX_NUDGE: f64 = 0.05;
/// The nudge per ms of error: the full ±5 % from 100 ms on (a 1 s time constant below).
pub const NUDGE_PER_MS: f64 = MAX_NUDGE / 100.0;
/// Errors beyond this are fixed by seeking: nudging 1.5 s at 5 % would take 30 s.
pub const SEEK_THRESHOLD_MS: f64 = 1_500.0;
/// How often the controller runs while playing.
pub const CONTROL_INTERVAL_MS: f64 = 250.0;
/// Weight of a new seek-latency measurement in the moving average.
pub const SEEK_LATENCY_ALPHA: f64 = 0.3;
/// Seek latency assumed before the first measurement.
pub const SEEK_LATENCY_PRIOR_MS: f64 = 50.0;
/// [`continues_playback`]'s tolerance: how far the new position may be from the one the
/// current timeline reaches at the new anchor.
pub const CONTINUES_TOLERANCE_MS: f64 = 5.0;

/// The media position (ms) at a fractional server time `server_ms` (`drift.js` `positionAt`,
/// the same operations; the web client has sub-millisecond clocks). Before the anchor of a
/// change scheduled ahead, the position holds at `position_ms`. At whole milliseconds (below
/// 2^53) this equals [`Timeline::position_at`] exactly.
pub fn position_at(timeline: &Timeline, server_ms: f64) -> f64 {
    if timeline.paused {
        return timeline.position_ms;
    }
    timeline.position_ms + (server_ms - timeline.anchor.0 as f64).max(0.0) * timeline.rate
}

/// Whether a change `next` scheduled at `next.anchor` continues the playback of `current`
/// without a jump (pause, rate change, play while playing): the player then keeps following
/// `current` until the anchor. Otherwise (seek, play from pause, load) it holds at
/// `next.position_ms` until the anchor, so that the seek happens during the lead time.
pub fn continues_playback(current: &Timeline, next: &Timeline) -> bool {
    !current.paused
        && current.url == next.url
        && (position_at(current, next.anchor.0 as f64) - next.position_ms).abs()
            <= CONTINUES_TOLERANCE_MS
}

/// What one controller step does to the player.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Play at the timeline's rate.
    None,
    /// Play at a nudged rate.
    Nudge,
    /// Seek.
    Seek,
}

/// The outcome of one controller step (`drift.js` `correct`'s return value).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub action: Action,
    /// Actual − expected position, ms (positive: the player is ahead).
    pub error_ms: f64,
    /// The playback rate to set (the timeline's rate unless nudging).
    pub playback_rate: f64,
    /// Where to seek to, for [`Action::Seek`].
    pub seek_to_ms: Option<f64>,
    /// Whether this step nudges (the next step's `correcting`: hysteresis).
    pub correcting: bool,
}

/// One controller step: the player is at `actual_ms`, the timeline (playing at `rate`) at
/// `expected_ms`; a seek takes `seek_latency_ms`; `correcting` is whether the previous step
/// nudged.
pub fn correct(
    expected_ms: f64,
    actual_ms: f64,
    rate: f64,
    seek_latency_ms: f64,
    correcting: bool,
) -> Step {
    let error_ms = actual_ms - expected_ms;
    let magnitude = error_ms.abs();
    if magnitude > SEEK_THRESHOLD_MS {
        // The media advances `rate` ms per ms of seeking.
        return Step {
            action: Action::Seek,
            error_ms,
            playback_rate: rate,
            seek_to_ms: Some(expected_ms + seek_latency_ms * rate),
            correcting: false,
        };
    }
    let band = if correcting { SETTLE_MS } else { DEAD_BAND_MS };
    if magnitude <= band {
        return Step {
            action: Action::None,
            error_ms,
            playback_rate: rate,
            seek_to_ms: None,
            correcting: false,
        };
    }
    let nudge = (-error_ms * NUDGE_PER_MS).clamp(-MAX_NUDGE, MAX_NUDGE);
    Step {
        action: Action::Nudge,
        error_ms,
        playback_rate: rate * (1.0 + nudge),
        seek_to_ms: None,
        correcting: true,
    }
}

/// An exponentially weighted moving average whose first measurement replaces its prior (the
/// seek-latency estimate: [`Ewma::seek_latency`]). Non-finite measurements are ignored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ewma {
    alpha: f64,
    value: f64,
    count: u64,
}

impl Ewma {
    /// Weight `alpha` for each new measurement; `prior` until the first one.
    pub fn new(alpha: f64, prior: f64) -> Self {
        Self {
            alpha,
            value: prior,
            count: 0,
        }
    }

    /// The seek-latency estimate: α [`SEEK_LATENCY_ALPHA`], prior [`SEEK_LATENCY_PRIOR_MS`].
    pub fn seek_latency() -> Self {
        Self::new(SEEK_LATENCY_ALPHA, SEEK_LATENCY_PRIOR_MS)
    }

    /// Adds a measurement and returns the new value.
    pub fn update(&mut self, x: f64) -> f64 {
        if !x.is_finite() {
            return self.value;
        }
        self.value = if self.count == 0 {
            x
        } else {
            self.value + self.alpha * (x - self.value)
        };
        self.count += 1;
        self.value
    }

    /// The average (the prior before the first measurement).
    pub fn value(&self) -> f64 {
        self.value
    }

    /// Measurements taken.
    pub fn count(&self) -> u64 {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UnixMillis;

    #[test]
    fn fractional_position_matches_the_timeline_at_whole_milliseconds() {
        let t = Timeline {
            url: None,
            position_ms: 1_000.0,
            anchor: UnixMillis(5_000),
            rate: 1.5,
            paused: false,
        };
        for at in [0, 4_999, 5_000, 5_001, 9_000] {
            assert_eq!(position_at(&t, at as f64), t.position_at(UnixMillis(at)));
        }
        assert_eq!(position_at(&t, 5_000.5), 1_000.75);
        assert_eq!(position_at(&t, 4_999.5), 1_000.0, "holds before the anchor");
    }

    #[test]
    fn the_controller_bands() {
        assert_eq!(correct(0.0, 40.0, 1.0, 0.0, false).action, Action::None);
        assert_eq!(correct(0.0, 40.0, 1.0, 0.0, true).action, Action::Nudge);
        assert_eq!(correct(0.0, 1_500.0, 1.0, 0.0, false).action, Action::Nudge);
        let seek = correct(0.0, 1_501.0, 2.0, 10.0, true);
        assert_eq!(seek.seek_to_ms, Some(20.0));
        assert!(!seek.correcting);
    }

    #[test]
    fn the_ewma_replaces_its_prior_and_ignores_non_numbers() {
        let mut e = Ewma::new(0.5, 50.0);
        assert_eq!(e.value(), 50.0);
        assert_eq!(e.update(f64::NAN), 50.0);
        assert_eq!(e.update(100.0), 100.0);
        assert_eq!(e.update(200.0), 150.0);
        assert_eq!(e.update(f64::INFINITY), 150.0);
        assert_eq!(e.count(), 2);
    }
}
