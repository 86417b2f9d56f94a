//! What a viewer measures of one received RTP stream, from the clear RTP header alone (SRTP
//! encrypts only the payload, RFC 3711 §3.1): order and loss by sequence number, RFC 3550
//! interarrival jitter, bitrate and freezes. A sans-IO core: arrival instants are passed in.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Sequence numbers remembered for duplicate and late-arrival detection.
const WINDOW: u64 = 4096;
/// A video gap longer than this is a freeze a viewer would see.
pub const FREEZE_GAP: Duration = Duration::from_millis(500);
/// Missing packets are asked for at most this many times.
const MAX_NACKS: u8 = 3;
/// Missing packets waiting for retransmission are capped; older ones count as lost.
const MAX_PENDING: usize = 512;
/// A gap is asked for only after this long: with jitter, packets overtake each other, and a
/// NACK for one still on its way costs the server a retransmission for nothing.
pub const REORDER_WAIT: Duration = Duration::from_millis(15);

pub use marquee_client::RtpHeader;

/// How a packet related to what came before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The highest sequence number so far (possibly after a gap).
    InOrder,
    /// Filled a gap: late (reordered) or a retransmission asked for by NACK.
    Late { nacked: bool },
    /// Already received.
    Duplicate,
    /// Older than the window; ignored.
    TooOld,
}

struct Missing {
    seq: u64,
    nacks: u8,
    next_nack: Instant,
}

/// Counters and state of one stream.
pub struct StreamStats {
    pub ssrc: u32,
    /// RTP clock rate once the stream's kind is known; jitter is measured from then on.
    clock_rate: Option<u32>,
    pub packets: u64,
    pub bytes: u64,
    pub duplicates: u64,
    pub recovered: u64,
    pub freezes: u64,
    pub longest_gap: Duration,
    first_at: Instant,
    last_at: Instant,
    base: u64,
    highest: u64,
    unique: u64,
    seen: Vec<u64>,
    jitter: f64,
    last_transit: Option<f64>,
    pending: VecDeque<Missing>,
    given_up: u64,
}

impl StreamStats {
    pub fn new(now: Instant, header: &RtpHeader, len: usize) -> Self {
        let mut stats = Self {
            ssrc: header.ssrc,
            clock_rate: None,
            packets: 0,
            bytes: 0,
            duplicates: 0,
            recovered: 0,
            freezes: 0,
            longest_gap: Duration::ZERO,
            first_at: now,
            last_at: now,
            // Extended sequence numbers start high so a reordered packet before the first one
            // does not underflow.
            base: (1 << 32) + u64::from(header.seq),
            highest: (1 << 32) + u64::from(header.seq),
            unique: 0,
            seen: vec![0; (WINDOW / 64) as usize],
            jitter: 0.0,
            last_transit: None,
            pending: VecDeque::new(),
            given_up: 0,
        };
        stats.mark(stats.highest);
        stats.unique = 1;
        stats.packets = 1;
        stats.bytes = len as u64;
        stats.update_jitter(now, header.timestamp);
        stats
    }

    pub fn set_clock_rate(&mut self, clock_rate: u32) {
        self.clock_rate = Some(clock_rate);
    }

    /// Accounts one packet that arrived at `now`.
    pub fn handle_packet(&mut self, now: Instant, header: &RtpHeader, len: usize) -> Arrival {
        self.packets += 1;
        self.bytes += len as u64;
        let gap = now.saturating_duration_since(self.last_at);
        let diff = i64::from(header.seq.wrapping_sub(self.highest as u16) as i16);
        let ext = (self.highest as i64 + diff) as u64;
        if diff > 0 {
            if gap > FREEZE_GAP {
                self.freezes += 1;
            }
            self.longest_gap = self.longest_gap.max(gap);
            self.last_at = now;
            // Everything between the old highest and this one is missing for now.
            let first_missing = (self.highest + 1).max(ext.saturating_sub(WINDOW - 1));
            // Packets older than the window are lost for good (never marked, never counted).
            for seq in first_missing..ext {
                self.unmark(seq);
                self.pending.push_back(Missing {
                    seq,
                    nacks: 0,
                    next_nack: now + REORDER_WAIT,
                });
            }
            while self.pending.len() > MAX_PENDING {
                self.pending.pop_front();
                self.given_up += 1;
            }
            self.highest = ext;
            self.mark(ext);
            self.unique += 1;
            self.update_jitter(now, header.timestamp);
            return Arrival::InOrder;
        }
        if self.highest - ext >= WINDOW || ext < self.base {
            return Arrival::TooOld;
        }
        if self.is_marked(ext) {
            self.duplicates += 1;
            return Arrival::Duplicate;
        }
        self.mark(ext);
        self.unique += 1;
        let nacked = match self.pending.iter().position(|m| m.seq == ext) {
            Some(i) => {
                let missing = self.pending.remove(i).expect("index from position");
                missing.nacks > 0
            }
            None => false,
        };
        if nacked {
            self.recovered += 1;
        }
        Arrival::Late { nacked }
    }

    /// Sequence numbers (16-bit, as on the wire) to ask for now, each at most [`MAX_NACKS`]
    /// times, `retry` apart. Gives up on a packet after its last NACK's retry interval.
    pub fn poll_nacks(&mut self, now: Instant, retry: Duration) -> Vec<u16> {
        let mut out = Vec::new();
        let mut given_up = 0;
        self.pending.retain_mut(|m| {
            if m.next_nack > now {
                return true;
            }
            if m.nacks >= MAX_NACKS {
                given_up += 1;
                return false;
            }
            m.nacks += 1;
            m.next_nack = now + retry;
            out.push(m.seq as u16);
            true
        });
        self.given_up += given_up;
        out
    }

    /// When [`poll_nacks`](Self::poll_nacks) has something to do next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending.iter().map(|m| m.next_nack).min()
    }

    /// Packets expected from the first to the highest sequence number.
    pub fn expected(&self) -> u64 {
        self.highest - self.base + 1
    }

    /// Expected packets never received (so far).
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.unique)
    }

    /// RFC 3550 §6.4.1 interarrival jitter, in ms.
    pub fn jitter_ms(&self) -> Option<f64> {
        let rate = self.clock_rate?;
        Some(self.jitter / f64::from(rate) * 1000.0)
    }

    /// Mean received bitrate from the first to the last in-order packet, in kbit/s.
    pub fn bitrate_kbps(&self) -> Option<f64> {
        let span = self.last_at.duration_since(self.first_at).as_secs_f64();
        (span > 0.0).then(|| self.bytes as f64 * 8.0 / span / 1000.0)
    }

    pub fn first_at(&self) -> Instant {
        self.first_at
    }

    pub fn last_at(&self) -> Instant {
        self.last_at
    }

    fn update_jitter(&mut self, now: Instant, timestamp: u32) {
        let Some(rate) = self.clock_rate else {
            return;
        };
        // Transit in RTP clock units; only differences matter, so any origin works.
        let arrival = now.duration_since(self.first_at).as_secs_f64() * f64::from(rate);
        let transit = arrival - f64::from(timestamp);
        if let Some(last) = self.last_transit {
            let mut d = (transit - last).abs();
            // A timestamp wrap shows up as a jump of 2^32 units: not jitter.
            if d > f64::from(u32::MAX) / 2.0 {
                d = (d - f64::from(u32::MAX) - 1.0).abs();
            }
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.last_transit = Some(transit);
    }

    fn mark(&mut self, ext: u64) {
        let bit = ext % WINDOW;
        self.seen[(bit / 64) as usize] |= 1 << (bit % 64);
    }

    fn unmark(&mut self, ext: u64) {
        let bit = ext % WINDOW;
        self.seen[(bit / 64) as usize] &= !(1 << (bit % 64));
    }

    fn is_marked(&self, ext: u64) -> bool {
        let bit = ext % WINDOW;
        self.seen[(bit / 64) as usize] & (1 << (bit % 64)) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(seq: u16, timestamp: u32) -> RtpHeader {
        RtpHeader {
            payload_type: 96,
            marker: false,
            seq,
            timestamp,
            ssrc: 7,
        }
    }

    #[allow(clippy::disallowed_methods)]
    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn parses_rtp_and_refuses_rtcp_and_short_datagrams() {
        let mut rtp = vec![
            0x80,
            0x80 | 96,
            0x12,
            0x34,
            0,
            0,
            1,
            0,
            0xde,
            0xad,
            0xbe,
            0xef,
        ];
        rtp.extend_from_slice(&[1, 2, 3]);
        let h = RtpHeader::parse(&rtp).unwrap();
        assert_eq!(
            h,
            RtpHeader {
                payload_type: 96,
                marker: true,
                seq: 0x1234,
                timestamp: 256,
                ssrc: 0xdead_beef
            }
        );
        let mut rtcp = rtp.clone();
        rtcp[1] = 200; // sender report
        assert_eq!(RtpHeader::parse(&rtcp), None);
        assert_eq!(RtpHeader::parse(&rtp[..11]), None);
        let mut stun = rtp.clone();
        stun[0] = 0x00;
        assert_eq!(RtpHeader::parse(&stun), None);
    }

    #[test]
    fn counts_loss_late_duplicates_across_wrap() {
        let t = t0();
        let start = 65_530u16;
        let mut s = StreamStats::new(t, &header(start, 0), 100);
        // 65531..=65535, 0..=9 except 2 and 5; then 5 arrives late, 3 twice.
        for i in 1..=15u16 {
            let seq = start.wrapping_add(i);
            if seq == 2 || seq == 5 {
                continue;
            }
            assert_eq!(s.handle_packet(t, &header(seq, 0), 100), Arrival::InOrder);
        }
        assert_eq!(s.expected(), 16);
        assert_eq!(s.lost(), 2);
        assert_eq!(
            s.handle_packet(t, &header(5, 0), 100),
            Arrival::Late { nacked: false }
        );
        assert_eq!(s.handle_packet(t, &header(3, 0), 100), Arrival::Duplicate);
        assert_eq!(s.lost(), 1);
        assert_eq!(s.duplicates, 1);
        assert_eq!(s.packets, 16);
        assert_eq!(s.bytes, 1600);
    }

    #[test]
    fn nacks_missing_packets_and_counts_recoveries() {
        let t = t0();
        let retry = Duration::from_millis(100);
        let mut s = StreamStats::new(t, &header(100, 0), 100);
        s.handle_packet(t, &header(104, 0), 100);
        // Not before the reordering wait: a packet that was merely overtaken is not asked for.
        assert_eq!(s.poll_timeout(), Some(t + REORDER_WAIT));
        assert_eq!(s.poll_nacks(t, retry), Vec::<u16>::new());
        let t = t + REORDER_WAIT;
        assert_eq!(s.poll_nacks(t, retry), vec![101, 102, 103]);
        assert_eq!(s.poll_nacks(t, retry), Vec::<u16>::new());
        assert_eq!(s.poll_timeout(), Some(t + retry));
        assert_eq!(
            s.handle_packet(t, &header(102, 0), 100),
            Arrival::Late { nacked: true }
        );
        assert_eq!(s.recovered, 1);
        // 101 and 103 are asked for twice more, then given up on.
        assert_eq!(s.poll_nacks(t + retry, retry), vec![101, 103]);
        assert_eq!(s.poll_nacks(t + retry * 2, retry), vec![101, 103]);
        assert_eq!(s.poll_nacks(t + retry * 3, retry), Vec::<u16>::new());
        assert_eq!(s.poll_timeout(), None);
        assert_eq!(s.lost(), 2);
    }

    #[test]
    fn freezes_and_jitter() {
        let t = t0();
        let mut s = StreamStats::new(t, &header(0, 0), 1000);
        s.set_clock_rate(90_000);
        // Perfectly paced 30 fps: no jitter.
        for i in 1..=30u16 {
            let at = t + Duration::from_micros(u64::from(i) * 100_000 / 3);
            s.handle_packet(at, &header(i, u32::from(i) * 3000), 1000);
        }
        assert!(s.jitter_ms().unwrap() < 0.05, "{:?}", s.jitter_ms());
        assert_eq!(s.freezes, 0);
        // A 700 ms stall, then alternating ±10 ms arrival error.
        let mut at = t + Duration::from_millis(1700);
        s.handle_packet(at, &header(31, 31 * 3000), 1000);
        assert_eq!(s.freezes, 1);
        assert!(s.longest_gap >= Duration::from_millis(690));
        for i in 32..=400u16 {
            at += Duration::from_millis(if i % 2 == 0 { 43 } else { 23 });
            s.handle_packet(at, &header(i, u32::from(i) * 3000), 1000);
        }
        let j = s.jitter_ms().unwrap();
        assert!((8.0..=12.0).contains(&j), "jitter {j}");
        let kbps = s.bitrate_kbps().unwrap();
        assert!(kbps > 200.0 && kbps < 260.0, "{kbps}");
    }
}
