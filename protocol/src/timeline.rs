//! The shared playback timeline.

use serde::{Deserialize, Serialize};

/// Wall-clock milliseconds since the Unix epoch (server time). Passed in, never read here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UnixMillis(pub i64);

impl UnixMillis {
    /// This instant plus `ms` milliseconds.
    pub fn plus_ms(self, ms: i64) -> Self {
        Self(self.0 + ms)
    }
}

/// A UTC calendar date and time (proleptic Gregorian), for messages and reports. Shown in
/// RFC 3339 form: `2026-01-01T00:00:00Z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcDateTime {
    pub year: i64,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

impl UtcDateTime {
    /// The date and time `unix` seconds after the epoch. Any `u64` works (no overflow).
    pub fn from_unix_secs(unix: u64) -> Self {
        let (days, secs) = (unix / 86_400, unix % 86_400);
        // Days to a civil date: Howard Hinnant's `civil_from_days`
        // (http://howardhinnant.github.io/date_algorithms.html); `days` fits an i64.
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        Self {
            year: yoe + era * 400 + i64::from(month <= 2),
            month: month as u8,
            day: day as u8,
            hour: (secs / 3_600) as u8,
            minute: (secs % 3_600 / 60) as u8,
            second: (secs % 60) as u8,
        }
    }
}

impl std::fmt::Display for UtcDateTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

/// Playback state as an absolute tuple: at server time `anchor`, the media `url` was at
/// `position_ms` and advanced at `rate` (unless `paused`). Any device computes the current
/// position from this tuple and its synchronized clock; nothing drifts in the tuple itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Timeline {
    /// The media playing; `None` until someone loads a video.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub position_ms: f64,
    pub anchor: UnixMillis,
    pub rate: f64,
    pub paused: bool,
}

impl Timeline {
    /// A paused timeline with no media.
    pub fn new(now: UnixMillis) -> Self {
        Self {
            url: None,
            position_ms: 0.0,
            anchor: now,
            rate: 1.0,
            paused: true,
        }
    }

    /// The media position at server time `at`. Before the anchor (a change scheduled in the
    /// future) the position holds at `position_ms`: devices wait there for the common instant.
    pub fn position_at(&self, at: UnixMillis) -> f64 {
        if self.paused {
            return self.position_ms;
        }
        let elapsed = (at.0 - self.anchor.0).max(0) as f64;
        self.position_ms + elapsed * self.rate
    }

    /// Loads `url`, paused at its start.
    pub fn load(&self, at: UnixMillis, url: String) -> Self {
        Self {
            url: Some(url),
            position_ms: 0.0,
            anchor: at,
            rate: 1.0,
            paused: true,
        }
    }

    /// Starts playing at server time `at` (which may be scheduled ahead of now).
    pub fn play(&self, at: UnixMillis) -> Self {
        Self {
            position_ms: self.position_at(at),
            anchor: at,
            paused: false,
            ..self.clone()
        }
    }

    /// Pauses at server time `at`, freezing the position reached then.
    pub fn pause(&self, at: UnixMillis) -> Self {
        Self {
            position_ms: self.position_at(at),
            anchor: at,
            paused: true,
            ..self.clone()
        }
    }

    /// Jumps to `position_ms` at server time `at`, keeping play/pause and rate.
    pub fn seek(&self, at: UnixMillis, position_ms: f64) -> Self {
        Self {
            position_ms,
            anchor: at,
            ..self.clone()
        }
    }

    /// Changes the rate from server time `at` on, keeping the position reached then.
    pub fn set_rate(&self, at: UnixMillis, rate: f64) -> Self {
        Self {
            position_ms: self.position_at(at),
            anchor: at,
            rate,
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_follows_the_tuple() {
        let t0 = Timeline::new(UnixMillis(1_000)).load(UnixMillis(1_000), "/a.webm".into());
        assert_eq!(t0.position_at(UnixMillis(9_000)), 0.0, "paused holds");
        let playing = t0.play(UnixMillis(2_000));
        assert_eq!(
            playing.position_at(UnixMillis(1_500)),
            0.0,
            "scheduled ahead"
        );
        assert_eq!(playing.position_at(UnixMillis(3_500)), 1_500.0);
        let paused = playing.pause(UnixMillis(4_000));
        assert_eq!(paused.position_at(UnixMillis(10_000)), 2_000.0);
        let sought = paused.seek(UnixMillis(5_000), 60_000.0);
        assert_eq!(sought.position_at(UnixMillis(6_000)), 60_000.0);
        let fast = sought
            .play(UnixMillis(6_000))
            .set_rate(UnixMillis(6_000), 1.5);
        assert_eq!(fast.position_at(UnixMillis(8_000)), 63_000.0);
        assert_eq!(fast.url.as_deref(), Some("/a.webm"));
    }
}
