//! Mapping a host source's sequence numbers and timestamps into a track's continuous space.
//!
//! When a track's source changes (host reconnect, new camera track), the new source starts at
//! arbitrary numbers. Viewers must see one continuous stream: the next sequence number, and
//! a timestamp advanced by the wall time that passed, so their jitter buffers neither discard
//! the new packets as old nor wait for a huge gap to fill.

use std::time::Instant;

use crate::ring::SeqExtender;

#[derive(Debug, Default)]
pub struct SourceRewriter {
    /// Inbound sequence extension for the current source.
    inbound: SeqExtender,
    /// Added to the inbound extended sequence number; set when a source starts.
    seq_offset: i64,
    /// Added (wrapping) to inbound timestamps; set when a source starts.
    ts_offset: u32,
    /// Set by [`SourceRewriter::rebase`]: the next packet starts a new source.
    rebase_pending: bool,
    started: bool,
    /// The last emitted extended sequence number, timestamp and when it was emitted.
    last: Option<(i64, u32, Instant)>,
    /// Packets of the current source must map above this (the previous source's last number).
    floor: i64,
}

impl SourceRewriter {
    /// The next packet comes from a new source: continue numbering after the last one sent.
    pub fn rebase(&mut self) {
        self.rebase_pending = true;
    }

    /// Maps a timestamp of the current source (from its sender report) into the track's
    /// space; `None` until the source's first packet has fixed the mapping.
    pub fn to_track_timestamp(&self, timestamp: u32) -> Option<u32> {
        (self.started && !self.rebase_pending).then(|| timestamp.wrapping_add(self.ts_offset))
    }

    /// Maps an inbound (sequence number, timestamp) into the track's space. Returns `None`
    /// for a packet that would fall before the current source's start (a reordered straggler
    /// from before a switch), which must not reuse numbers viewers have already seen.
    pub fn rewrite(
        &mut self,
        now: Instant,
        seq: u16,
        timestamp: u32,
        clock_rate: u32,
    ) -> Option<(u16, u32)> {
        if !self.started || self.rebase_pending {
            self.inbound = SeqExtender::default();
            let extended = self.inbound.extend(seq) as i64;
            match self.last {
                Some((last_seq, last_ts, at)) => {
                    let elapsed = now.saturating_duration_since(at);
                    let ticks = (elapsed.as_secs_f64() * f64::from(clock_rate)) as u32;
                    self.seq_offset = last_seq + 1 - extended;
                    self.ts_offset = last_ts.wrapping_add(ticks.max(1)).wrapping_sub(timestamp);
                    self.floor = last_seq;
                }
                None => {
                    // First source: keep its numbers (the offset is only for continuity).
                    self.seq_offset = 0;
                    self.ts_offset = 0;
                    self.floor = i64::MIN;
                }
            }
            self.started = true;
            self.rebase_pending = false;
            return Some(self.emit(now, extended, timestamp));
        }
        let extended = self.inbound.extend(seq) as i64;
        if extended + self.seq_offset <= self.floor {
            return None;
        }
        Some(self.emit(now, extended, timestamp))
    }

    fn emit(&mut self, now: Instant, extended: i64, timestamp: u32) -> (u16, u32) {
        let out_seq = extended + self.seq_offset;
        let out_ts = timestamp.wrapping_add(self.ts_offset);
        if self.last.is_none_or(|(last, _, _)| out_seq > last) {
            self.last = Some((out_seq, out_ts, now));
        }
        (out_seq as u16, out_ts)
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // an arbitrary origin for virtual time
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn first_source_passes_through() {
        let mut r = SourceRewriter::default();
        let t0 = Instant::now();
        assert_eq!(r.rewrite(t0, 100, 5000, 90000), Some((100, 5000)));
        assert_eq!(r.rewrite(t0, 101, 8000, 90000), Some((101, 8000)));
        assert_eq!(
            r.rewrite(t0, 99, 2000, 90000),
            Some((99, 2000)),
            "reordered"
        );
    }

    #[test]
    fn new_source_continues_numbering_and_time() {
        let mut r = SourceRewriter::default();
        let t0 = Instant::now();
        for i in 0..10u16 {
            r.rewrite(
                t0,
                65530u16.wrapping_add(i),
                1000 + u32::from(i) * 3000,
                90000,
            );
        }
        // Last emitted: seq 65530+9 = 3 (wrapped), ts 28000.
        r.rebase();
        let t1 = t0 + Duration::from_millis(500);
        let (seq, ts) = r.rewrite(t1, 7, 123_456, 90000).unwrap();
        assert_eq!(seq, 4, "continues after the last sequence number");
        assert_eq!(ts, 28000 + 45000, "advanced by the 500 ms that passed");
        assert_eq!(r.rewrite(t1, 8, 126_456, 90000), Some((5, 76000)));
        // A straggler of the new source from before its first packet would reuse number 3.
        assert_eq!(r.rewrite(t1, 6, 120_456, 90000), None);
    }
}
