//! The shared playback timeline.

/// Wall-clock milliseconds since the Unix epoch (server time). Passed in, never read here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixMillis(pub i64);

/// Playback state as an absolute tuple: at server time `anchor`, the media was at
/// `position_ms` and advanced at `rate` (unless `paused`). Any device computes the current
/// position from this tuple and its synchronized clock; nothing drifts in the tuple itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeline {
    pub position_ms: f64,
    pub anchor: UnixMillis,
    pub rate: f64,
    pub paused: bool,
    /// Incremented by every change; used for compare-and-set across nodes.
    pub version: u64,
}

impl Timeline {
    /// A paused timeline at the start of the media.
    pub fn new(now: UnixMillis) -> Self {
        Self {
            position_ms: 0.0,
            anchor: now,
            rate: 1.0,
            paused: true,
            version: 0,
        }
    }

    /// The media position at server time `at`. Before the anchor (a start scheduled in the
    /// future) the position holds at `position_ms`.
    pub fn position_at(&self, at: UnixMillis) -> f64 {
        if self.paused {
            return self.position_ms;
        }
        let elapsed = (at.0 - self.anchor.0).max(0) as f64;
        self.position_ms + elapsed * self.rate
    }

    /// Starts playing at server time `at` (which may be scheduled ahead of now).
    pub fn play(&self, at: UnixMillis) -> Self {
        Self {
            position_ms: self.position_at(at),
            anchor: at,
            paused: false,
            version: self.version + 1,
            ..*self
        }
    }

    /// Pauses at server time `at`, freezing the position reached then.
    pub fn pause(&self, at: UnixMillis) -> Self {
        Self {
            position_ms: self.position_at(at),
            anchor: at,
            paused: true,
            version: self.version + 1,
            ..*self
        }
    }

    /// Jumps to `position_ms` at server time `at`, keeping play/pause and rate.
    pub fn seek(&self, at: UnixMillis, position_ms: f64) -> Self {
        Self {
            position_ms,
            anchor: at,
            version: self.version + 1,
            ..*self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_follows_the_tuple() {
        let t0 = Timeline::new(UnixMillis(1_000));
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
        assert_eq!(sought.version, 3);
        let fast = Timeline {
            rate: 1.5,
            ..sought.play(UnixMillis(6_000))
        };
        assert_eq!(fast.position_at(UnixMillis(8_000)), 63_000.0);
    }
}
