//! Seeded, deterministic arrival and departure schedules (sans-IO, GUIDE §2.1–2.2).
//!
//! An [`Arrival`] curve or a [`Departure`] mode turns a viewer count and a seed into
//! offsets from the start of a phase; a [`Schedule`] walks those offsets against a `now`
//! the driver passes in. Nothing here reads the clock or sleeps, so the same seed always
//! yields the same run, and tests step virtual time instead of waiting.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, seq::SliceRandom};
use rand_chacha::ChaCha8Rng;

/// How viewers join: the shape of the spike.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(tag = "curve", rename_all = "snake_case", deny_unknown_fields)]
pub enum Arrival {
    /// Everyone at once ("doors open").
    Step,
    /// Evenly spread over `over_s` seconds.
    Ramp {
        /// Length of the ramp in seconds; the first viewer joins at 0, the last one gap
        /// before `over_s`.
        over_s: f64,
    },
    /// Bursts arrive as a Poisson process of `rate_per_s` bursts per second; each burst
    /// brings `burst` viewers at the same instant (burst = 1 gives a plain Poisson process).
    Poisson {
        /// Mean number of bursts per second (the inverse of the mean gap between bursts).
        rate_per_s: f64,
        /// Viewers per burst: models groups (a link shared in a chat) arriving together.
        #[serde(default = "one")]
        burst: u32,
    },
}

/// How viewers leave at the end of the hold phase.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum Departure {
    /// Everyone leaves at the start of the leave phase (the event ends).
    AllAtOnce,
    /// Departures evenly spread over `over_s` seconds, in a seeded random order so that
    /// leaving is not correlated with join order (which would empty one node or room first).
    Gradual {
        /// Length of the leave phase in seconds.
        over_s: f64,
    },
}

impl Arrival {
    /// Checks the parameters, so that a bad config fails before any viewer is started.
    ///
    /// Messages name the config field and the offending value.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            Self::Step => Ok(()),
            Self::Ramp { over_s } => validate_over_s("arrival", over_s),
            Self::Poisson { rate_per_s, burst } => {
                if !(rate_per_s.is_finite() && rate_per_s > 0.0) {
                    return Err(format!(
                        "arrival.rate_per_s must be a positive number of bursts per second, \
                         got {rate_per_s}"
                    ));
                }
                if burst == 0 {
                    return Err(format!(
                        "arrival.burst must be at least 1 viewer per burst, got {burst}"
                    ));
                }
                Ok(())
            }
        }
    }

    /// Join offsets from the start of the arrival phase: exactly `count` of them, sorted.
    ///
    /// Deterministic in `seed` (only the Poisson curve uses it). Parameters are expected to
    /// have passed [`Arrival::validate`]; out-of-range values are clamped rather than
    /// panicking (a negative or NaN duration counts as zero, an overflow as `Duration::MAX`).
    pub fn offsets(&self, count: usize, seed: u64) -> Vec<Duration> {
        match *self {
            Self::Step => vec![Duration::ZERO; count],
            Self::Ramp { over_s } => even_slots(over_s, count),
            Self::Poisson { rate_per_s, burst } => {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let burst = burst.max(1) as usize;
                let mut offsets = Vec::with_capacity(count);
                // Accumulate in f64 seconds and convert each instant separately, so rounding
                // never accumulates and the sequence stays non-decreasing.
                let mut t = 0.0_f64;
                while offsets.len() < count {
                    t += exponential_gap(&mut rng, rate_per_s);
                    let at = secs(t);
                    let n = burst.min(count - offsets.len());
                    offsets.extend(std::iter::repeat_n(at, n));
                }
                offsets
            }
        }
    }

    /// A short human label for reports: "step", "ramp over 10 s", "poisson 50 bursts/s × 4".
    pub fn describe(&self) -> String {
        match *self {
            Self::Step => "step".to_owned(),
            Self::Ramp { over_s } => format!("ramp over {over_s} s"),
            Self::Poisson {
                rate_per_s,
                burst: 1,
            } => format!("poisson {rate_per_s} arrivals/s"),
            Self::Poisson { rate_per_s, burst } => {
                format!("poisson {rate_per_s} bursts/s × {burst}")
            }
        }
    }
}

impl Departure {
    /// Checks the parameters; messages name the config field and the offending value.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            Self::AllAtOnce => Ok(()),
            Self::Gradual { over_s } => validate_over_s("departure", over_s),
        }
    }

    /// Leave offsets from the start of the leave phase, one per viewer in join order
    /// (element `i` is when the `i`-th viewer to join leaves). Not sorted for `Gradual`:
    /// the evenly spread slots are dealt to viewers in a shuffled order seeded by `seed`.
    /// [`Schedule`] accepts unsorted offsets.
    pub fn offsets(&self, count: usize, seed: u64) -> Vec<Duration> {
        match *self {
            Self::AllAtOnce => vec![Duration::ZERO; count],
            Self::Gradual { over_s } => {
                let mut slots = even_slots(over_s, count);
                slots.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
                slots
            }
        }
    }

    /// A short human label for reports: "all at once", "gradual over 10 s".
    pub fn describe(&self) -> String {
        match *self {
            Self::AllAtOnce => "all at once".to_owned(),
            Self::Gradual { over_s } => format!("gradual over {over_s} s"),
        }
    }
}

/// A sans-IO cursor over offsets: the driver asks what is due and when to wake up.
///
/// Entries are handed out in order of due time (ties in index order), so offsets need not
/// be sorted: departure offsets are indexed by viewer, not by time.
#[derive(Debug, Clone)]
pub struct Schedule {
    start: Instant,
    offsets: Vec<Duration>,
    /// Indices into `offsets`, sorted by offset (stable, so ties keep index order).
    order: Vec<usize>,
    /// Position in `order` of the next entry to hand out.
    next: usize,
}

impl Schedule {
    /// A schedule whose entry `i` is due at `start + offsets[i]`.
    pub fn new(start: Instant, offsets: Vec<Duration>) -> Self {
        let mut order: Vec<usize> = (0..offsets.len()).collect();
        order.sort_by_key(|&i| offsets[i]);
        Self {
            start,
            offsets,
            order,
            next: 0,
        }
    }

    /// The index of the next entry due at `now`, if any (call until None).
    pub fn poll_due(&mut self, now: Instant) -> Option<usize> {
        let due = self.poll_timeout()?;
        if due > now {
            return None;
        }
        let index = self.order[self.next];
        self.next += 1;
        Some(index)
    }

    /// When the next entry is due; None when all are done.
    ///
    /// Also None if the next due time does not fit in an `Instant` (an offset of centuries):
    /// such an entry can never become due, and [`Schedule::remaining`] still counts it.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let &index = self.order.get(self.next)?;
        self.start.checked_add(self.offsets[index])
    }

    /// Number of entries, handed out or not.
    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    /// True when the schedule has no entries at all.
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// Number of entries not yet handed out by [`Schedule::poll_due`].
    pub fn remaining(&self) -> usize {
        self.order.len() - self.next
    }
}

/// Serde default for [`Arrival::Poisson::burst`]: a plain Poisson process.
fn one() -> u32 {
    1
}

fn validate_over_s(phase: &str, over_s: f64) -> Result<(), String> {
    if over_s.is_finite() && over_s >= 0.0 {
        Ok(())
    } else {
        Err(format!(
            "{phase}.over_s must be a finite number of seconds >= 0, got {over_s}"
        ))
    }
}

/// `count` offsets evenly spaced `over_s / count` apart, starting at 0: the last one is one
/// gap before `over_s`, so consecutive ramps or phases do not double up at the boundary.
fn even_slots(over_s: f64, count: usize) -> Vec<Duration> {
    // Each offset is computed from its index, not by summing gaps, so errors do not add up.
    (0..count)
        .map(|i| secs(over_s * i as f64 / count as f64))
        .collect()
}

/// An exponentially distributed gap of mean `1 / rate` seconds, by inverse transform.
fn exponential_gap(rng: &mut ChaCha8Rng, rate: f64) -> f64 {
    // `random::<f64>()` is in [0, 1), so `1 - u` is in (0, 1] and the logarithm is finite.
    let u: f64 = rng.random();
    -(1.0 - u).ln() / rate
}

/// Seconds to a `Duration`, clamping NaN and negatives to zero and overflow to the maximum.
fn secs(s: f64) -> Duration {
    if s.is_nan() || s <= 0.0 {
        Duration::ZERO
    } else {
        Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn poisson(rate_per_s: f64, burst: u32) -> Arrival {
        Arrival::Poisson { rate_per_s, burst }
    }

    fn gaps_s(offsets: &[Duration]) -> Vec<f64> {
        offsets
            .windows(2)
            .map(|w| (w[1] - w[0]).as_secs_f64())
            .collect()
    }

    #[test]
    fn same_seed_same_offsets_other_seed_differs() {
        for arrival in [poisson(100.0, 1), poisson(50.0, 4)] {
            let a = arrival.offsets(500, 7);
            assert_eq!(a, arrival.offsets(500, 7));
            assert_ne!(a, arrival.offsets(500, 8));
        }
        let departure = Departure::Gradual { over_s: 10.0 };
        let a = departure.offsets(500, 7);
        assert_eq!(a, departure.offsets(500, 7));
        assert_ne!(a, departure.offsets(500, 8));
    }

    #[test]
    fn step_is_all_zero() {
        assert_eq!(Arrival::Step.offsets(5, 1), vec![Duration::ZERO; 5]);
        assert_eq!(Departure::AllAtOnce.offsets(3, 1), vec![Duration::ZERO; 3]);
    }

    #[test]
    fn ramp_is_evenly_spaced() {
        let offsets = Arrival::Ramp { over_s: 10.0 }.offsets(1000, 0);
        assert_eq!(offsets.len(), 1000);
        assert_eq!(offsets[0], Duration::ZERO);
        assert!(*offsets.last().unwrap() < Duration::from_secs(10));
        for w in offsets.windows(2) {
            let gap = w[1] - w[0];
            assert!(
                gap.abs_diff(10 * MS) <= Duration::from_micros(1),
                "gap {gap:?}"
            );
        }
        assert_eq!(
            Arrival::Ramp { over_s: 10.0 }.offsets(1, 0),
            vec![Duration::ZERO]
        );
    }

    #[test]
    fn poisson_gaps_are_exponential() {
        let offsets = poisson(100.0, 1).offsets(20_000, 42);
        let gaps = gaps_s(&offsets);
        let n = gaps.len() as f64;
        let mean = gaps.iter().sum::<f64>() / n;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / (n - 1.0);
        let cv = var.sqrt() / mean;
        assert!((mean - 0.010).abs() <= 0.010 * 0.03, "mean gap {mean}");
        // An exponential distribution has standard deviation equal to its mean.
        assert!((0.95..=1.05).contains(&cv), "coefficient of variation {cv}");
    }

    #[test]
    fn poisson_bursts_come_in_equal_groups() {
        let offsets = poisson(50.0, 5).offsets(103, 3);
        assert_eq!(offsets.len(), 103);
        let groups: Vec<&[Duration]> = offsets.chunks(5).collect();
        for (i, group) in groups.iter().enumerate() {
            assert!(group.iter().all(|&o| o == group[0]), "group {i}: {group:?}");
            if let Some(next) = groups.get(i + 1) {
                assert!(
                    next[0] > group[0],
                    "groups {i} and {} share an instant",
                    i + 1
                );
            }
        }
        assert_eq!(groups.last().unwrap().len(), 3);
    }

    #[test]
    fn offsets_are_sorted_and_exact_in_count() {
        let arrivals = [
            Arrival::Step,
            Arrival::Ramp { over_s: 3.0 },
            Arrival::Ramp { over_s: 0.0 },
            poisson(10.0, 1),
            poisson(10.0, 3),
        ];
        for arrival in &arrivals {
            for count in [0, 1, 7] {
                let offsets = arrival.offsets(count, 9);
                assert_eq!(offsets.len(), count, "{arrival:?}");
                assert!(offsets.is_sorted(), "{arrival:?}: {offsets:?}");
            }
        }
        for departure in [Departure::AllAtOnce, Departure::Gradual { over_s: 2.0 }] {
            for count in [0, 1, 7] {
                assert_eq!(departure.offsets(count, 9).len(), count, "{departure:?}");
            }
        }
    }

    #[test]
    fn gradual_departure_deals_even_slots_in_shuffled_order() {
        let offsets = Departure::Gradual { over_s: 10.0 }.offsets(100, 5);
        assert!(
            !offsets.is_sorted(),
            "leave order should not follow join order"
        );
        let mut sorted = offsets.clone();
        sorted.sort();
        assert_eq!(sorted, Arrival::Ramp { over_s: 10.0 }.offsets(100, 0));
    }

    #[test]
    fn validate_rejects_bad_values_naming_the_field() {
        for over_s in [-1.0, f64::NAN, f64::INFINITY] {
            let err = Arrival::Ramp { over_s }.validate().unwrap_err();
            assert!(err.contains("arrival.over_s"), "{err}");
            assert!(err.contains(&over_s.to_string()), "{err}");
            let err = Departure::Gradual { over_s }.validate().unwrap_err();
            assert!(err.contains("departure.over_s"), "{err}");
        }
        for rate in [-2.0, 0.0, f64::NAN, f64::INFINITY] {
            let err = poisson(rate, 1).validate().unwrap_err();
            assert!(err.contains("arrival.rate_per_s"), "{err}");
            assert!(err.contains(&rate.to_string()), "{err}");
        }
        assert_eq!(
            poisson(-2.0, 1).validate().unwrap_err(),
            "arrival.rate_per_s must be a positive number of bursts per second, got -2"
        );
        let err = poisson(1.0, 0).validate().unwrap_err();
        assert!(
            err.contains("arrival.burst") && err.contains("got 0"),
            "{err}"
        );

        assert_eq!(Arrival::Step.validate(), Ok(()));
        assert_eq!(Arrival::Ramp { over_s: 0.0 }.validate(), Ok(()));
        assert_eq!(poisson(0.5, 3).validate(), Ok(()));
        assert_eq!(Departure::AllAtOnce.validate(), Ok(()));
        assert_eq!(Departure::Gradual { over_s: 5.0 }.validate(), Ok(()));
    }

    #[test]
    fn describe_reads_like_the_config() {
        assert_eq!(Arrival::Step.describe(), "step");
        assert_eq!(Arrival::Ramp { over_s: 10.0 }.describe(), "ramp over 10 s");
        assert_eq!(poisson(50.0, 4).describe(), "poisson 50 bursts/s × 4");
        assert_eq!(poisson(2.5, 1).describe(), "poisson 2.5 arrivals/s");
        assert_eq!(Departure::AllAtOnce.describe(), "all at once");
        assert_eq!(
            Departure::Gradual { over_s: 3.0 }.describe(),
            "gradual over 3 s"
        );
    }

    #[test]
    fn serde_uses_tags_defaults_and_rejects_unknown_fields() {
        let a: Arrival = serde_json::from_str(r#"{"curve":"poisson","rate_per_s":50}"#).unwrap();
        assert_eq!(a, poisson(50.0, 1));
        let a: Arrival = serde_json::from_str(r#"{"curve":"step"}"#).unwrap();
        assert_eq!(a, Arrival::Step);
        let d: Departure = serde_json::from_str(r#"{"mode":"gradual","over_s":4}"#).unwrap();
        assert_eq!(d, Departure::Gradual { over_s: 4.0 });
        assert!(serde_json::from_str::<Arrival>(r#"{"curve":"ramp","over":4}"#).is_err());
        let round = serde_json::to_string(&poisson(3.0, 2)).unwrap();
        assert_eq!(
            serde_json::from_str::<Arrival>(&round).unwrap(),
            poisson(3.0, 2)
        );
    }

    /// Steps a virtual clock to each `poll_timeout`, draining everything due there.
    fn drive(schedule: &mut Schedule) -> Vec<(usize, Instant)> {
        let mut fired = Vec::new();
        while let Some(now) = schedule.poll_timeout() {
            while let Some(index) = schedule.poll_due(now) {
                fired.push((index, now));
            }
        }
        fired
    }

    #[test]
    fn schedule_yields_every_index_once_in_order() {
        #[allow(clippy::disallowed_methods)] // a fixed base for virtual time; never read again
        let start = Instant::now();
        let offsets = poisson(20.0, 3).offsets(50, 11);
        let mut schedule = Schedule::new(start, offsets.clone());
        assert_eq!((schedule.len(), schedule.remaining()), (50, 50));
        assert!(!schedule.is_empty());

        assert_eq!(schedule.poll_due(start + offsets[0] - MS), None);
        assert_eq!(schedule.remaining(), 50);

        let fired = drive(&mut schedule);
        let indices: Vec<usize> = fired.iter().map(|&(i, _)| i).collect();
        assert_eq!(indices, (0..50).collect::<Vec<_>>());
        for &(i, at) in &fired {
            assert_eq!(at, start + offsets[i], "entry {i} fired off time");
        }
        assert_eq!(schedule.remaining(), 0);
        assert_eq!(schedule.poll_timeout(), None);
        assert_eq!(schedule.poll_due(start + Duration::from_secs(3600)), None);
    }

    #[test]
    fn schedule_orders_unsorted_departures_by_time() {
        #[allow(clippy::disallowed_methods)] // a fixed base for virtual time; never read again
        let start = Instant::now();
        let offsets = Departure::Gradual { over_s: 1.0 }.offsets(20, 4);
        let mut schedule = Schedule::new(start, offsets.clone());
        let fired = drive(&mut schedule);
        let mut indices: Vec<usize> = fired.iter().map(|&(i, _)| i).collect();
        assert!(fired.windows(2).all(|w| w[0].1 <= w[1].1));
        indices.sort();
        assert_eq!(indices, (0..20).collect::<Vec<_>>());
    }

    #[test]
    fn empty_schedule_is_done_at_once() {
        #[allow(clippy::disallowed_methods)] // a fixed base for virtual time; never read again
        let start = Instant::now();
        let mut schedule = Schedule::new(start, Vec::new());
        assert!(schedule.is_empty());
        assert_eq!(schedule.poll_timeout(), None);
        assert_eq!(schedule.poll_due(start), None);
    }
}
