//! The edge's one reading of the wall clock (GUIDE §2.2: cores are told the time).
//! Party timelines are anchored in server wall-clock time so that every node and every
//! device computes the same position; nodes keep their clocks in step with NTP.

use std::time::{SystemTime, UNIX_EPOCH};

use sync::UnixMillis;

/// Milliseconds since the Unix epoch, with sub-millisecond precision (clock probes).
#[allow(clippy::disallowed_methods)]
pub fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Whole milliseconds since the Unix epoch.
pub fn now() -> UnixMillis {
    UnixMillis(now_ms() as i64)
}

/// Whole seconds since the Unix epoch (token expiry, TURN credential expiry).
pub fn now_unix_secs() -> u64 {
    (now_ms() / 1000.0) as u64
}
