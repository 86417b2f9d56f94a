//! The relay's sans-IO core: [`Link`], one direction of one client's path.
//!
//! A link has no sockets, tasks or clock reads: it is told when a datagram enters and decides
//! whether it is dropped and otherwise when it leaves. Every impairment lives here, so the
//! load test's seeded loss and the retransmission tests' chosen drops run on the same code:
//!
//! - a [`DropRule`] drops chosen first transmissions of RTP packets, once each, so the
//!   retransmission a NACK asks for passes;
//! - seeded random loss ([`Impairment::loss_pct`]), from a [`ChaCha8Rng`], so the same seed
//!   gives the same drops on every run;
//! - a bandwidth cap with a tail-drop queue, then a propagation delay with jitter.
//!
//! The link reads datagrams without keys: SRTP leaves the RTP header in clear (RFC 3711 §3.1),
//! and STUN, DTLS and RTCP are told from media by their first bytes (RFC 7983 §7, through
//! [`marquee_protocol::demux`]; RFC 5761 §4).

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use marquee_protocol::demux::RtpHeader;
use marquee_protocol::demux::{DatagramKind, classify};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Upper bound of every duration the model handles (delay, jitter, queue, one datagram's
/// serialization): larger values are configuration mistakes, and bounding them keeps instant
/// arithmetic far from overflow.
const MAX_MS: f64 = 3_600_000.0;

/// What one path does to the datagrams crossing it, in each direction separately.
///
/// Deserializable from the load-test configuration; missing fields take their defaults.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Impairment {
    /// Probability in percent (0..=100) that a datagram is lost, independently of the others.
    pub loss_pct: f64,
    /// Fixed one-way delay added to every datagram.
    pub delay_ms: f64,
    /// Each datagram's delay varies uniformly within ±`jitter_ms` around `delay_ms` (never
    /// below zero); as with netem, datagrams may then be reordered.
    pub jitter_ms: f64,
    /// Link rate: datagrams are serialized one after another at this rate. `None`: no cap.
    pub bandwidth_kbps: Option<f64>,
    /// Longest time a datagram may wait for the link behind earlier ones before it is dropped
    /// (tail drop); only meaningful with `bandwidth_kbps`.
    pub queue_ms: f64,
    /// Base seed of the random choices; each link derives its own with [`link_seed`].
    pub seed: u64,
}

impl Default for Impairment {
    fn default() -> Self {
        Self {
            loss_pct: 0.0,
            delay_ms: 0.0,
            jitter_ms: 0.0,
            bandwidth_kbps: None,
            queue_ms: 200.0,
            seed: 1,
        }
    }
}

impl Impairment {
    /// Checks every field, so a bad configuration fails at start with a message naming the
    /// field rather than silently behaving as something else.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=100.0).contains(&self.loss_pct) {
            return Err(format!(
                "loss_pct must be between 0 and 100, got {}",
                self.loss_pct
            ));
        }
        for (name, value) in [
            ("delay_ms", self.delay_ms),
            ("jitter_ms", self.jitter_ms),
            ("queue_ms", self.queue_ms),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(format!("{name} must be a finite number >= 0, got {value}"));
            }
            if value > MAX_MS {
                return Err(format!(
                    "{name} must be at most {MAX_MS} (one hour), got {value}"
                ));
            }
        }
        if let Some(kbps) = self.bandwidth_kbps
            && !(kbps.is_finite() && kbps > 0.0)
        {
            return Err(format!(
                "bandwidth_kbps must be a finite number > 0 (omit it for no cap), got {kbps}"
            ));
        }
        Ok(())
    }

    /// Whether the relay would forward everything at once, unchanged.
    pub fn is_noop(&self) -> bool {
        self.loss_pct == 0.0
            && self.delay_ms == 0.0
            && self.jitter_ms == 0.0
            && self.bandwidth_kbps.is_none()
    }
}

/// Which first transmissions of RTP packets a link drops (see [`DropPolicy`]). Cloned into
/// every link it applies to, so each counts on its own.
#[derive(Clone, Default)]
pub enum DropRule {
    /// Forward everything.
    #[default]
    Nothing,
    /// Drop every `n`th video packet (the `n`th, `2n`th, … first transmissions of packets whose
    /// payload type is a video codec; see [`DropPolicy::set_video_payload_types`]).
    EveryNthVideo(u32),
    /// Drop the first transmissions for which the closure returns true.
    Custom(Arc<dyn Fn(&RtpView) -> bool + Send + Sync>),
}

impl fmt::Debug for DropRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Nothing => f.write_str("Nothing"),
            Self::EveryNthVideo(n) => f.debug_tuple("EveryNthVideo").field(n).finish(),
            Self::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// The clear-text RTP header fields of a relayed SRTP packet, as a [`DropRule`] sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpView {
    pub ssrc: u32,
    pub seq: u16,
    pub payload_type: u8,
    pub marker: bool,
    /// Datagram length in bytes.
    pub len: usize,
    /// Whether `payload_type` is one of the video payload types the link knows.
    pub is_video: bool,
}

/// Datagram counts of one [`Link`], or summed over the links of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Datagrams the model let through.
    pub passed: u64,
    /// First transmissions dropped by the [`DropRule`].
    pub dropped_rule: u64,
    /// Datagrams dropped by random loss.
    pub dropped_loss: u64,
    /// Datagrams dropped because the bandwidth queue was full (tail drop).
    pub dropped_queue: u64,
}

impl LinkStats {
    /// Every datagram that entered.
    pub fn total(&self) -> u64 {
        self.passed + self.dropped_rule + self.dropped_loss + self.dropped_queue
    }
}

/// What a [`Link`] decided for one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Leaves at this instant.
    Pass(Instant),
    /// The drop rule chose this RTP packet (SSRC, sequence number).
    Chosen {
        ssrc: u32,
        seq: u16,
    },
    Loss,
    QueueFull,
}

/// One direction of one client's path; see the module docs.
///
/// The model, in the order a datagram meets it: the drop rule (first, so what it chooses does
/// not depend on the seed); random loss (it never reaches the link, as with netem's loss at
/// enqueue); then the bandwidth queue, where it starts serializing once the previous datagram
/// has finished, or is dropped if that wait would exceed `queue_ms`; then the propagation
/// delay with its jitter, counted from the end of serialization.
#[derive(Debug, Clone)]
pub struct Link {
    chosen: DropPolicy,
    /// Loss probability in 0..=1.
    loss: f64,
    delay_ms: f64,
    jitter_ms: f64,
    /// Nanoseconds per byte on the link, with a bandwidth cap.
    ns_per_byte: Option<f64>,
    queue: Duration,
    /// Draws loss decisions only, so the drop pattern of a seed does not change with the
    /// delay settings.
    loss_rng: ChaCha8Rng,
    /// Draws jitter: the same seed on another ChaCha stream.
    jitter_rng: ChaCha8Rng,
    /// When the link finishes serializing the last datagram it accepted.
    busy_until: Option<Instant>,
    stats: LinkStats,
}

impl Link {
    /// A link with `config`'s impairment and its own `seed` (not `config.seed`; see
    /// [`link_seed`]), dropping nothing by rule. `config` should be
    /// [validated](Impairment::validate); out-of-range values are clamped rather than trusted,
    /// so the model never panics.
    pub fn new(config: &Impairment, seed: u64) -> Self {
        let loss = (config.loss_pct / 100.0).clamp(0.0, 1.0);
        let loss_rng = ChaCha8Rng::seed_from_u64(seed);
        let mut jitter_rng = ChaCha8Rng::seed_from_u64(seed);
        jitter_rng.set_stream(1);
        Self {
            chosen: DropPolicy::new(DropRule::Nothing),
            loss: if loss.is_nan() { 0.0 } else { loss },
            delay_ms: clamp_ms(config.delay_ms),
            jitter_ms: clamp_ms(config.jitter_ms),
            ns_per_byte: config
                .bandwidth_kbps
                .filter(|kbps| *kbps > 0.0)
                // bits / (kbit/s · 1000) seconds = bytes · 8e6 / kbps nanoseconds.
                .map(|kbps| 8e6 / kbps),
            queue: duration_ms(config.queue_ms),
            loss_rng,
            jitter_rng,
            busy_until: None,
            stats: LinkStats::default(),
        }
    }

    /// This link, also dropping the first transmissions `rule` chooses.
    pub fn with_drop_rule(mut self, rule: DropRule) -> Self {
        self.chosen.rule = rule;
        self
    }

    /// The payload types [`DropRule::EveryNthVideo`] counts as video.
    pub fn set_video_payload_types(&mut self, payload_types: impl IntoIterator<Item = u8>) {
        self.chosen.set_video_payload_types(payload_types);
    }

    /// A datagram enters at `now`: returns `None` when it is dropped (by the drop rule, random
    /// loss, or a bandwidth queue that would exceed `queue_ms` = tail drop), else the instant
    /// it leaves. Calls must come in non-decreasing `now`, as a driver reading one clock does.
    pub fn handle_datagram(&mut self, now: Instant, datagram: &[u8]) -> Option<Instant> {
        match self.judge(now, datagram) {
            Verdict::Pass(at) => Some(at),
            Verdict::Chosen { .. } | Verdict::Loss | Verdict::QueueFull => None,
        }
    }

    /// Counts of everything this link decided.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// The (SSRC, seq) of every packet the drop rule chose, in drop order.
    pub fn dropped(&self) -> &[(u32, u16)] {
        self.chosen.dropped()
    }

    /// [`handle_datagram`](Self::handle_datagram) with the reason of a drop, for the driver.
    pub(crate) fn judge(&mut self, now: Instant, datagram: &[u8]) -> Verdict {
        if let Some((ssrc, seq)) = self.chosen.choose(datagram) {
            self.stats.dropped_rule += 1;
            return Verdict::Chosen { ssrc, seq };
        }
        if self.loss > 0.0 && self.loss_rng.random::<f64>() < self.loss {
            self.stats.dropped_loss += 1;
            return Verdict::Loss;
        }
        let mut leaves = now;
        if let Some(ns_per_byte) = self.ns_per_byte {
            let start = self.busy_until.map_or(now, |busy| busy.max(now));
            if start - now > self.queue {
                self.stats.dropped_queue += 1;
                return Verdict::QueueFull;
            }
            let serialization = duration_ms(datagram.len() as f64 * ns_per_byte / 1e6);
            leaves = start + serialization;
            self.busy_until = Some(leaves);
        }
        let mut delay_ms = self.delay_ms;
        if self.jitter_ms > 0.0 {
            delay_ms += self
                .jitter_rng
                .random_range(-self.jitter_ms..=self.jitter_ms);
        }
        self.stats.passed += 1;
        Verdict::Pass(leaves + duration_ms(delay_ms))
    }
}

/// A direction of a client's path through the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client → server.
    Up,
    /// Server → client.
    Down,
}

/// The seed of one link: a mix of the relay's base seed, the client's index (in order of
/// first datagram) and the direction, so every link draws an independent sequence and a run
/// with the same clients in the same order is reproducible.
pub fn link_seed(seed: u64, client: u64, direction: Direction) -> u64 {
    let lane = client.wrapping_mul(2) + u64::from(direction == Direction::Down);
    splitmix64(seed ^ splitmix64(lane))
}

/// A link's drop-rule decisions on their own, so they can be tested directly.
///
/// Each (SSRC, seq) can be dropped once, on its first transmission: a later copy is the
/// retransmission a NACK asked for and always passes. The set of what was seen holds at most
/// 65,536 entries per SSRC (one per sequence number); after a wraparound a number counts as
/// seen, so a long stream is dropped from during its first 65,536 packets only.
#[derive(Debug, Clone)]
pub struct DropPolicy {
    rule: DropRule,
    video_payload_types: HashSet<u8>,
    /// Every (SSRC, seq) already seen once: later copies are retransmissions and always pass.
    seen: HashSet<(u32, u16)>,
    /// Video first transmissions since the last `EveryNthVideo` drop.
    video_since_drop: u32,
    dropped: Vec<(u32, u16)>,
}

impl DropPolicy {
    pub fn new(rule: DropRule) -> Self {
        Self {
            rule,
            video_payload_types: HashSet::new(),
            seen: HashSet::new(),
            video_since_drop: 0,
            dropped: Vec::new(),
        }
    }

    pub fn set_video_payload_types(&mut self, payload_types: impl IntoIterator<Item = u8>) {
        self.video_payload_types = payload_types.into_iter().collect();
    }

    /// Whether to drop this datagram. Only the first transmission of an RTP packet can be
    /// dropped; STUN, DTLS and RTCP always pass.
    pub fn should_drop(&mut self, datagram: &[u8]) -> bool {
        self.choose(datagram).is_some()
    }

    /// The (SSRC, seq) of every dropped packet, in drop order.
    pub fn dropped(&self) -> &[(u32, u16)] {
        &self.dropped
    }

    /// The (SSRC, seq) of the packet when the rule drops it.
    fn choose(&mut self, datagram: &[u8]) -> Option<(u32, u16)> {
        // The load test's links carry no rule: they skip the header parse and the seen set.
        if matches!(self.rule, DropRule::Nothing) {
            return None;
        }
        let Datagram::Rtp(RtpHeader {
            ssrc,
            seq,
            payload_type,
            marker,
            ..
        }) = classify_datagram(datagram)
        else {
            return None;
        };
        if !self.seen.insert((ssrc, seq)) {
            return None;
        }
        let view = RtpView {
            ssrc,
            seq,
            payload_type,
            marker,
            len: datagram.len(),
            is_video: self.video_payload_types.contains(&payload_type),
        };
        if view.is_video {
            self.video_since_drop = self.video_since_drop.saturating_add(1);
        }
        let drop = match &self.rule {
            DropRule::Nothing => false,
            DropRule::EveryNthVideo(n) => {
                let due = view.is_video && *n > 0 && self.video_since_drop >= *n;
                if due {
                    self.video_since_drop = 0;
                }
                due
            }
            DropRule::Custom(decide) => decide(&view),
        };
        drop.then(|| {
            self.dropped.push((ssrc, seq));
            (ssrc, seq)
        })
    }
}

/// What a UDP datagram of a WebRTC 5-tuple carries, by its first bytes (RFC 7983 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagram {
    Stun,
    Dtls,
    /// RTP (SRTP); the payload-type byte is outside the RTCP range (RFC 5761 §4).
    Rtp(RtpHeader),
    Rtcp,
    Other,
}

/// Classifies one datagram without any keys: RFC 7983's first-byte ranges, then RTCP told
/// from RTP by its packet type ([`RtpHeader::parse`]), both from `marquee_protocol::demux`.
pub fn classify_datagram(buf: &[u8]) -> Datagram {
    match classify(buf) {
        DatagramKind::Stun => Datagram::Stun,
        DatagramKind::Dtls => Datagram::Dtls,
        DatagramKind::Rtp => match RtpHeader::parse(buf) {
            Some(header) => Datagram::Rtp(header),
            // RTP's first byte and a full header's length, but an RTCP packet type.
            None if buf.len() >= 12 => Datagram::Rtcp,
            None => Datagram::Other,
        },
        DatagramKind::Unknown => Datagram::Other,
    }
}

/// A millisecond value clamped into `0..=MAX_MS` (NaN counts as 0).
fn clamp_ms(ms: f64) -> f64 {
    if ms.is_nan() {
        0.0
    } else {
        ms.clamp(0.0, MAX_MS)
    }
}

/// Milliseconds to a duration, clamped like [`clamp_ms`]; rounded to whole nanoseconds so
/// that e.g. a 10 ms serialization time is exactly 10 ms and queues add up without drift.
fn duration_ms(ms: f64) -> Duration {
    Duration::from_nanos((clamp_ms(ms) * 1e6).round() as u64)
}

/// SplitMix64's finalizer: a bijective mix in which nearby inputs give unrelated outputs.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::relay::tests::{as_ms, ms, rtp};
    use crate::util::now;

    /// A datagram of `len` bytes that no drop rule looks at (its first byte says STUN).
    fn bytes(len: usize) -> Vec<u8> {
        vec![0; len]
    }
    fn loss_pattern(seed: u64, count: usize) -> Vec<bool> {
        let config = Impairment {
            loss_pct: 10.0,
            ..Impairment::default()
        };
        let mut link = Link::new(&config, seed);
        let t0 = now();
        (0..count)
            .map(|i| {
                link.handle_datagram(t0 + Duration::from_micros(i as u64), &bytes(1200))
                    .is_none()
            })
            .collect()
    }

    #[test]
    fn loss_rate_and_reproducibility() {
        const N: usize = 100_000;
        let pattern = loss_pattern(7, N);
        let dropped = pattern.iter().filter(|dropped| **dropped).count();
        let pct = dropped as f64 * 100.0 / N as f64;
        println!("measured loss: {pct:.3} %");
        assert!((9.5..=10.5).contains(&pct), "loss {pct} %");
        assert_eq!(pattern, loss_pattern(7, N), "same seed, same drops");
        let other = loss_pattern(8, N);
        assert_ne!(pattern, other, "another seed, other drops");
        let differing = pattern.iter().zip(&other).filter(|(a, b)| a != b).count();
        // Independent 10 % patterns differ in ~18 % of places.
        assert!(differing > N / 10, "only {differing} differences");
    }

    #[test]
    fn loss_pattern_does_not_depend_on_delay() {
        let lossy = Impairment {
            loss_pct: 30.0,
            ..Impairment::default()
        };
        let jittery = Impairment {
            delay_ms: 20.0,
            jitter_ms: 5.0,
            ..lossy.clone()
        };
        let mut a = Link::new(&lossy, 3);
        let mut b = Link::new(&jittery, 3);
        let t0 = now();
        for i in 0..1000 {
            let at = t0 + ms(i);
            assert_eq!(
                a.handle_datagram(at, &bytes(100)).is_none(),
                b.handle_datagram(at, &bytes(100)).is_none()
            );
        }
        assert_eq!(a.stats().dropped_loss, b.stats().dropped_loss);
    }

    #[test]
    fn delay_with_jitter_stays_in_range_and_reorders() {
        let config = Impairment {
            delay_ms: 50.0,
            jitter_ms: 10.0,
            ..Impairment::default()
        };
        let mut link = Link::new(&config, 11);
        let t0 = now();
        let mut delays = Vec::new();
        let mut reordered = 0;
        let mut previous: Option<Instant> = None;
        for i in 0..10_000 {
            let entry = t0 + ms(i);
            let release = link
                .handle_datagram(entry, &bytes(1200))
                .expect("no loss configured");
            let delay = as_ms(release - entry);
            assert!((40.0..=60.0).contains(&delay), "delay {delay} ms");
            if previous.is_some_and(|previous| release < previous) {
                reordered += 1;
            }
            previous = Some(release);
            delays.push(delay);
        }
        let mean = delays.iter().sum::<f64>() / delays.len() as f64;
        let min = delays.iter().copied().fold(f64::INFINITY, f64::min);
        let max = delays.iter().copied().fold(0.0, f64::max);
        println!("delay mean {mean:.3} ms, min {min:.3}, max {max:.3}, reordered {reordered}");
        assert!((mean - 50.0).abs() <= 1.0, "mean {mean} ms");
        // The spread reaches both ends, so jitter is really applied.
        assert!(min < 41.0 && max > 59.0, "range {min}..{max}");
        // Entries 1 ms apart with ±10 ms jitter overtake each other often.
        assert!(reordered > 1000, "reordered {reordered}");
        assert_eq!(link.stats().passed, 10_000);
    }

    #[test]
    fn jitter_never_makes_a_negative_delay() {
        let config = Impairment {
            delay_ms: 2.0,
            jitter_ms: 10.0,
            ..Impairment::default()
        };
        let mut link = Link::new(&config, 5);
        let t0 = now();
        let mut zero = 0;
        for i in 0..1000 {
            let entry = t0 + ms(i);
            let release = link.handle_datagram(entry, &bytes(100)).unwrap();
            assert!(release >= entry);
            if release == entry {
                zero += 1;
            }
        }
        // Jitter below -2 ms (40 % of draws) is clamped to no delay at all.
        assert!((300..500).contains(&zero), "{zero} undelayed");
    }

    #[test]
    fn bandwidth_serializes_and_tail_drops() {
        let config = Impairment {
            bandwidth_kbps: Some(1000.0),
            ..Impairment::default()
        };
        assert_eq!(config.queue_ms, 200.0);
        let mut link = Link::new(&config, 1);
        let t0 = now();
        let releases: Vec<Option<Instant>> = (0..50)
            .map(|_| link.handle_datagram(t0, &bytes(1250)))
            .collect();
        // 1250 bytes at 1 Mbit/s take 10 ms. Datagram i waits i·10 ms before it starts, so
        // waits 0..=200 ms pass (21 datagrams) and the other 29 are dropped.
        for (i, release) in releases.iter().enumerate() {
            if i <= 20 {
                assert_eq!(*release, Some(t0 + ms(10 * (i as u64 + 1))), "datagram {i}");
            } else {
                assert_eq!(*release, None, "datagram {i}");
            }
        }
        assert_eq!(
            link.stats(),
            LinkStats {
                passed: 21,
                dropped_rule: 0,
                dropped_loss: 0,
                dropped_queue: 29
            }
        );
        // Once the queue has drained, a datagram leaves after its own serialization only.
        let later = t0 + ms(1000);
        assert_eq!(
            link.handle_datagram(later, &bytes(1250)),
            Some(later + ms(10))
        );
        // Half-way through it, the next one waits for the rest.
        let mid = later + ms(5);
        assert_eq!(link.handle_datagram(mid, &bytes(125)), Some(later + ms(11)));
    }

    #[test]
    fn bandwidth_then_delay() {
        let config = Impairment {
            delay_ms: 30.0,
            bandwidth_kbps: Some(8000.0),
            queue_ms: 5.0,
            ..Impairment::default()
        };
        let mut link = Link::new(&config, 1);
        let t0 = now();
        // 1000 bytes at 8 Mbit/s: 1 ms each; waits of 0..=5 ms pass.
        let releases: Vec<_> = (0..10)
            .map(|_| link.handle_datagram(t0, &bytes(1000)))
            .collect();
        for (i, release) in releases.iter().enumerate() {
            let expected = (i <= 5).then(|| t0 + ms(30 + i as u64 + 1));
            assert_eq!(*release, expected, "datagram {i}");
        }
    }

    #[test]
    fn validate_names_each_bad_field() {
        assert_eq!(Impairment::default().validate(), Ok(()));
        let good = Impairment {
            loss_pct: 100.0,
            delay_ms: 10.0,
            jitter_ms: 0.0,
            bandwidth_kbps: Some(0.5),
            queue_ms: 0.0,
            seed: 0,
        };
        assert_eq!(good.validate(), Ok(()));
        let cases: Vec<(&str, Impairment)> = vec![
            (
                "loss_pct",
                Impairment {
                    loss_pct: -1.0,
                    ..Impairment::default()
                },
            ),
            (
                "loss_pct",
                Impairment {
                    loss_pct: 100.5,
                    ..Impairment::default()
                },
            ),
            (
                "loss_pct",
                Impairment {
                    loss_pct: f64::NAN,
                    ..Impairment::default()
                },
            ),
            (
                "delay_ms",
                Impairment {
                    delay_ms: -0.1,
                    ..Impairment::default()
                },
            ),
            (
                "delay_ms",
                Impairment {
                    delay_ms: f64::INFINITY,
                    ..Impairment::default()
                },
            ),
            (
                "delay_ms",
                Impairment {
                    delay_ms: 1e12,
                    ..Impairment::default()
                },
            ),
            (
                "jitter_ms",
                Impairment {
                    jitter_ms: -5.0,
                    ..Impairment::default()
                },
            ),
            (
                "jitter_ms",
                Impairment {
                    jitter_ms: f64::NAN,
                    ..Impairment::default()
                },
            ),
            (
                "queue_ms",
                Impairment {
                    queue_ms: -1.0,
                    ..Impairment::default()
                },
            ),
            (
                "queue_ms",
                Impairment {
                    queue_ms: f64::NEG_INFINITY,
                    ..Impairment::default()
                },
            ),
            (
                "bandwidth_kbps",
                Impairment {
                    bandwidth_kbps: Some(0.0),
                    ..Impairment::default()
                },
            ),
            (
                "bandwidth_kbps",
                Impairment {
                    bandwidth_kbps: Some(-10.0),
                    ..Impairment::default()
                },
            ),
            (
                "bandwidth_kbps",
                Impairment {
                    bandwidth_kbps: Some(f64::NAN),
                    ..Impairment::default()
                },
            ),
            (
                "bandwidth_kbps",
                Impairment {
                    bandwidth_kbps: Some(f64::INFINITY),
                    ..Impairment::default()
                },
            ),
        ];
        for (field, config) in cases {
            let message = config
                .validate()
                .expect_err(&format!("{config:?} should be rejected"));
            assert!(message.contains(field), "{message:?} does not name {field}");
            for other in [
                "loss_pct",
                "delay_ms",
                "jitter_ms",
                "queue_ms",
                "bandwidth_kbps",
            ] {
                if other != field {
                    assert!(!message.contains(other), "{message:?} names {other}");
                }
            }
        }
    }

    #[test]
    fn noop_and_config_parsing() {
        assert!(Impairment::default().is_noop());
        assert!(
            Impairment {
                queue_ms: 5.0,
                seed: 9,
                ..Impairment::default()
            }
            .is_noop()
        );
        for config in [
            Impairment {
                loss_pct: 1.0,
                ..Impairment::default()
            },
            Impairment {
                delay_ms: 1.0,
                ..Impairment::default()
            },
            Impairment {
                jitter_ms: 1.0,
                ..Impairment::default()
            },
            Impairment {
                bandwidth_kbps: Some(100.0),
                ..Impairment::default()
            },
        ] {
            assert!(!config.is_noop(), "{config:?}");
        }
        let parsed: Impairment = toml::from_str("loss_pct = 5.0\nbandwidth_kbps = 2500.0").unwrap();
        assert_eq!(
            parsed,
            Impairment {
                loss_pct: 5.0,
                bandwidth_kbps: Some(2500.0),
                ..Impairment::default()
            }
        );
        assert!(toml::from_str::<Impairment>("los_pct = 5.0").is_err());
        // A no-op link passes everything at once.
        let mut link = Link::new(&Impairment::default(), 1);
        let t0 = now();
        assert_eq!(link.handle_datagram(t0, &bytes(1500)), Some(t0));
    }

    #[test]
    fn link_seeds_differ_per_client_and_direction() {
        let seeds: HashSet<u64> = (0..100)
            .flat_map(|client| {
                [Direction::Up, Direction::Down].map(|direction| link_seed(1, client, direction))
            })
            .collect();
        assert_eq!(seeds.len(), 200);
        assert_eq!(
            link_seed(1, 3, Direction::Up),
            link_seed(1, 3, Direction::Up)
        );
        assert_ne!(
            link_seed(1, 3, Direction::Up),
            link_seed(2, 3, Direction::Up)
        );
    }

    #[test]
    fn drop_rule_runs_beside_the_other_impairments() {
        let config = Impairment {
            delay_ms: 20.0,
            ..Impairment::default()
        };
        let mut link = Link::new(&config, 1).with_drop_rule(DropRule::EveryNthVideo(2));
        link.set_video_payload_types([96]);
        let t0 = now();
        let releases: Vec<_> = (1..=4)
            .map(|seq| link.handle_datagram(t0, &rtp(96, seq, 7)))
            .collect();
        let delayed = Some(t0 + ms(20));
        assert_eq!(releases, [delayed, None, delayed, None]);
        // The retransmission of a chosen packet passes, delayed like any other datagram.
        assert_eq!(link.handle_datagram(t0, &rtp(96, 2, 7)), delayed);
        assert_eq!(link.dropped(), &[(7, 2), (7, 4)]);
        assert_eq!(
            link.stats(),
            LinkStats {
                passed: 3,
                dropped_rule: 2,
                dropped_loss: 0,
                dropped_queue: 0
            }
        );
        // Cloned into another link, the rule counts there on its own.
        let mut other = Link::new(&config, 2).with_drop_rule(DropRule::EveryNthVideo(2));
        other.set_video_payload_types([96]);
        assert!(other.handle_datagram(t0, &rtp(96, 1, 7)).is_some());
        assert!(other.handle_datagram(t0, &rtp(96, 2, 7)).is_none());
    }
}
