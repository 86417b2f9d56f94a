//! How the driver behaves under load: forwarding first, joins when there is room, and overload
//! shown as loss and refusals, never as queueing.
//!
//! - [`Ingress`] sorts received datagrams. DTLS handshake records (a join's costly part:
//!   ECDHE and signatures) wait in a bounded queue of their own, handled one per burst of
//!   other datagrams and freely when none waits, so a join spike never runs ahead of the
//!   packets of viewers already watching (handling them only when idle made joins wait
//!   ~200 ms under steady load, where idle moments are rare). Anything that waited longer than its bound is dropped and counted: late media
//!   is worth nothing to a live viewer, and a late handshake record has been retransmitted.
//! - [`LoadMeter`] measures how long received datagrams wait for the driver (and, for the
//!   metrics, the share of time it works). While they wait longer than
//!   [`SfuConfig::overload_ingress_wait`] on average, or [`OVERLOAD_DEFERRED_HANDSHAKES`]
//!   handshake records are queued, the driver refuses new peers (signaling answers `full`),
//!   so the viewers already watching keep their quality.
//!
//! Sans-IO: time is passed in, so both are tested on virtual time.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::demux::{DatagramKind, classify};
use crate::{Datagram, SfuConfig};

/// DTLS records waiting for an idle moment; more are dropped (the client retransmits its
/// flight after a second).
pub const MAX_DEFERRED_HANDSHAKES: usize = 2048;

/// Handshake records waiting at which new peers are refused: with this many queued, a new
/// join would wait seconds for its turn anyway.
pub const OVERLOAD_DEFERRED_HANDSHAKES: usize = 512;

/// How often the busy share is measured.
pub const LOAD_WINDOW: Duration = Duration::from_millis(500);

/// Ingress counters, reported with the core's [`crate::SfuStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngressStats {
    /// Datagrams dropped because they waited longer than their bound.
    pub late: u64,
    /// Handshake records dropped because the deferred queue was full.
    pub deferred_overflow: u64,
}

/// Sorts received datagrams into "now" and "when idle"; see the module documentation.
pub struct Ingress {
    max_delay: Duration,
    max_handshake_delay: Duration,
    deferred: VecDeque<(Instant, Datagram)>,
    stats: IngressStats,
}

impl Ingress {
    pub fn new(config: &SfuConfig) -> Self {
        Self {
            max_delay: config.max_ingress_delay,
            max_handshake_delay: config.max_handshake_delay,
            deferred: VecDeque::new(),
            stats: IngressStats::default(),
        }
    }

    /// A datagram read at `received`: returned if it is to be handled now; kept for later
    /// (a DTLS record) or dropped (too old) otherwise.
    pub fn handle(&mut self, now: Instant, received: Instant, d: Datagram) -> Option<Datagram> {
        if classify(&d.payload) == DatagramKind::Dtls {
            if self.deferred.len() < MAX_DEFERRED_HANDSHAKES {
                self.deferred.push_back((received, d));
            } else {
                self.stats.deferred_overflow += 1;
            }
            return None;
        }
        if now.saturating_duration_since(received) > self.max_delay {
            self.stats.late += 1;
            return None;
        }
        Some(d)
    }

    /// The next deferred handshake record still worth handling.
    pub fn poll_deferred(&mut self, now: Instant) -> Option<Datagram> {
        while let Some((received, d)) = self.deferred.pop_front() {
            if now.saturating_duration_since(received) <= self.max_handshake_delay {
                return Some(d);
            }
            self.stats.late += 1;
        }
        None
    }

    /// Handshake records waiting.
    pub fn deferred(&self) -> usize {
        self.deferred.len()
    }

    pub fn stats(&self) -> IngressStats {
        self.stats
    }
}

/// How loaded the driver is, over the last complete window: the share of wall time it spent
/// working (reported), and how long received datagrams waited for it (what admission uses:
/// waiting is what viewers feel, and it also shows CPU taken by other processes).
#[derive(Default)]
pub struct LoadMeter {
    window_start: Option<Instant>,
    busy: Duration,
    waited: Duration,
    datagrams: u32,
    last_busy_fraction: f64,
    last_mean_wait: Duration,
}

impl LoadMeter {
    /// Records that the driver worked from `start` to `end`.
    pub fn record_busy(&mut self, start: Instant, end: Instant) {
        self.window_start.get_or_insert(start);
        self.busy += end.saturating_duration_since(start);
        self.roll(end);
    }

    /// Records that a datagram waited `waited` between being read and being handled.
    pub fn record_wait(&mut self, waited: Duration) {
        self.waited += waited;
        self.datagrams += 1;
    }

    /// Closes the window once [`LOAD_WINDOW`] has passed.
    fn roll(&mut self, now: Instant) {
        let Some(start) = self.window_start else {
            return;
        };
        let elapsed = now.saturating_duration_since(start);
        if elapsed < LOAD_WINDOW {
            return;
        }
        self.last_busy_fraction = (self.busy.as_secs_f64() / elapsed.as_secs_f64()).min(1.0);
        self.last_mean_wait = self.waited.checked_div(self.datagrams).unwrap_or_default();
        (self.busy, self.waited, self.datagrams) = (Duration::ZERO, Duration::ZERO, 0);
        self.window_start = Some(now);
    }

    /// Busy share (0–1) of the last complete window.
    pub fn busy_fraction(&self) -> f64 {
        self.last_busy_fraction
    }

    /// Mean time datagrams waited for the driver in the last complete window.
    pub fn mean_wait(&self) -> Duration {
        self.last_mean_wait
    }

    /// Whether the driver is falling behind: datagrams waited longer than `limit` on average
    /// in the last complete window as of `now` (a quiet half second closes the window, so an
    /// old overload does not keep refusing peers after traffic stopped).
    pub fn falling_behind(&mut self, now: Instant, limit: Duration) -> bool {
        self.roll(now);
        self.last_mean_wait > limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn datagram(first_byte: u8) -> Datagram {
        Datagram {
            local: "127.0.0.1:7882".parse().unwrap(),
            remote: "127.0.0.2:5000".parse().unwrap(),
            payload: BytesMut::from(&[first_byte, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0][..]),
        }
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // the virtual clock starts somewhere real
    fn handshakes_wait_for_idle_and_stale_datagrams_are_dropped() {
        let config = SfuConfig::default();
        let mut ingress = Ingress::new(&config);
        let t0 = Instant::now();
        let media = datagram(0x80);
        let dtls = datagram(22);
        // Media is handled now; a DTLS record waits.
        assert!(ingress.handle(t0, t0, media).is_some());
        assert!(ingress.handle(t0, t0, dtls).is_none());
        assert_eq!(ingress.deferred(), 1);
        // Media that waited past its bound is dropped.
        let late = t0 + config.max_ingress_delay + Duration::from_millis(1);
        assert!(ingress.handle(late, t0, datagram(0x80)).is_none());
        assert_eq!(ingress.stats().late, 1);
        // The handshake record is still good when the driver is idle...
        assert!(ingress.poll_deferred(late).is_some());
        // ...but not once it is older than the handshake bound.
        ingress.handle(t0, t0, datagram(22));
        let stale = t0 + config.max_handshake_delay + Duration::from_millis(1);
        assert!(ingress.poll_deferred(stale).is_none());
        assert_eq!(ingress.stats().late, 2);
        // The deferred queue is bounded.
        for _ in 0..MAX_DEFERRED_HANDSHAKES + 5 {
            ingress.handle(t0, t0, datagram(22));
        }
        assert_eq!(ingress.deferred(), MAX_DEFERRED_HANDSHAKES);
        assert_eq!(ingress.stats().deferred_overflow, 5);
    }

    /// 600 ms from `t0` of 9 ms of work in every 10 ms, each datagram having waited 30 ms.
    fn overload(meter: &mut LoadMeter, t0: Instant) {
        let ms = Duration::from_millis;
        for i in 0..60u64 {
            let start = t0 + ms(10 * i);
            meter.record_wait(ms(30));
            meter.record_busy(start, start + ms(9));
        }
    }

    #[test]
    #[allow(clippy::disallowed_methods)]
    fn the_meter_reads_the_last_complete_window() {
        let mut meter = LoadMeter::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        overload(&mut meter, t0);
        assert!(
            (meter.busy_fraction() - 0.9).abs() < 0.03,
            "{}",
            meter.busy_fraction()
        );
        assert_eq!(meter.mean_wait(), ms(30));
        assert!(meter.falling_behind(t0 + ms(599), ms(10)));
        // Then 1 ms in 10 ms and no waiting: once a whole window has passed, it reads so.
        for i in 60..170u64 {
            let start = t0 + ms(10 * i);
            meter.record_wait(Duration::ZERO);
            meter.record_busy(start, start + ms(1));
        }
        assert!(
            (meter.busy_fraction() - 0.1).abs() < 0.03,
            "{}",
            meter.busy_fraction()
        );
        assert_eq!(meter.mean_wait(), Duration::ZERO);
        assert!(!meter.falling_behind(t0 + ms(1699), ms(10)));
    }

    /// An overload that ended with the traffic (nothing handled since) does not keep the
    /// node closed: once the window holding its tail has closed, a quiet one reads as no
    /// waiting (before, the last busy window's reading stayed until the next datagram).
    #[test]
    #[allow(clippy::disallowed_methods)]
    fn an_overload_ends_when_traffic_stops() {
        let mut meter = LoadMeter::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        overload(&mut meter, t0);
        assert!(meter.falling_behind(t0 + ms(600), ms(10)));
        // The window with the overload's last datagrams closes...
        meter.falling_behind(t0 + ms(1600), ms(10));
        // ...and the quiet one after it opens the node again.
        assert!(!meter.falling_behind(t0 + ms(2200), ms(10)));
    }
}
