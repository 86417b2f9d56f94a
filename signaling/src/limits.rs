//! Rate limits: token buckets (GCRA, from `governor`) per client IP, per party and per
//! connection.
//!
//! A refused request gets a [`RetryAfter`] saying when the next one would pass, for the
//! `Retry-After` header (RFC 9110 §10.2.3) or the `rate_limited` message. The limiters are
//! generic over governor's clock so tests drive them with `FakeRelativeClock` instead of
//! sleeping (GUIDE §2.3).

use std::fmt;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use serde::{Deserialize, Serialize};

/// A sustained rate with a burst allowance: `burst` requests may come at once, then one more
/// every `1 / per_second` seconds. An idle client regains its full burst after
/// `burst / per_second` seconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    /// Requests per second sustained; may be below 1 (`0.1` is one every 10 s).
    pub per_second: f64,
    /// Requests allowed at once; at least 1.
    pub burst: u32,
}

impl Rate {
    /// The governor quota, or why the rate is unusable: `per_second` must be a finite number
    /// above 0 whose period (`1 / per_second`) lies between 1 ns and `Duration::MAX`, and
    /// `burst` at least 1.
    pub fn quota(&self) -> Result<Quota, String> {
        let per_second = self.per_second;
        if !(per_second.is_finite() && per_second > 0.0) {
            return Err(format!(
                "per_second must be a number above 0, not {per_second}"
            ));
        }
        let burst = NonZeroU32::new(self.burst)
            .ok_or_else(|| "burst must be at least 1 (0 would refuse everything)".to_owned())?;
        let period = Duration::try_from_secs_f64(1.0 / per_second)
            .map_err(|_| format!("per_second {per_second} is too slow to represent"))?;
        let quota = Quota::with_period(period)
            .ok_or_else(|| format!("per_second {per_second} is faster than one per nanosecond"))?;
        Ok(quota.allow_burst(burst))
    }
}

/// How long a refused caller should wait before the next attempt can pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    /// The wait in whole seconds, rounded up and at least 1, for a `Retry-After` header:
    /// rounding down would invite a retry that is refused again.
    pub fn secs_ceil(&self) -> u64 {
        let secs = self.0.as_secs() + u64::from(self.0.subsec_nanos() > 0);
        secs.max(1)
    }
}

impl fmt::Display for RetryAfter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "retry in {} s", self.secs_ceil())
    }
}

/// A rate limit per key (client IP, party id): each key has its own bucket.
///
/// Keys are remembered until their bucket is full again; the server calls
/// [`KeyedLimiter::forget_idle`] periodically so one-off addresses do not accumulate.
pub struct KeyedLimiter<K, C = DefaultClock>
where
    K: Hash + Eq + Clone,
    C: Clock,
{
    inner: RateLimiter<K, DashMapStateStore<K>, C, NoOpMiddleware<C::Instant>>,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// A limiter on the monotonic clock.
    ///
    /// # Panics
    /// If `rate` is invalid ([`Rate::quota`]). Configuration is validated at start
    /// (`AppState::start`); use [`KeyedLimiter::try_new`] for unchecked rates.
    pub fn new(rate: Rate) -> Self {
        Self::with_clock(rate, DefaultClock::default())
    }

    /// A limiter on the monotonic clock, or why `rate` is invalid.
    pub fn try_new(rate: Rate) -> Result<Self, String> {
        Self::try_with_clock(rate, DefaultClock::default())
    }
}

impl<K: Hash + Eq + Clone, C: Clock> KeyedLimiter<K, C> {
    /// A limiter on `clock` (a `FakeRelativeClock` in tests).
    ///
    /// # Panics
    /// If `rate` is invalid ([`Rate::quota`]).
    pub fn with_clock(rate: Rate, clock: C) -> Self {
        Self::try_with_clock(rate, clock).unwrap_or_else(|why| panic!("invalid rate: {why}"))
    }

    /// A limiter on `clock`, or why `rate` is invalid.
    pub fn try_with_clock(rate: Rate, clock: C) -> Result<Self, String> {
        Ok(Self {
            inner: RateLimiter::dashmap_with_clock(rate.quota()?, clock),
        })
    }

    /// Counts one request for `key`, or says how long until one would pass. A refused
    /// request is not counted, so retrying early does not push the wait further out.
    pub fn check(&self, key: &K) -> Result<(), RetryAfter> {
        self.inner
            .check_key(key)
            .map_err(|not_until| RetryAfter(not_until.wait_time_from(self.inner.clock().now())))
    }

    /// Drops the keys whose bucket is full again (they behave exactly like unseen keys), and
    /// returns the freed memory.
    pub fn forget_idle(&self) {
        self.inner.retain_recent();
        self.inner.shrink_to_fit();
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

/// A single rate limit, for one connection's messages.
pub struct Limiter<C = DefaultClock>
where
    C: Clock,
{
    inner: RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>,
}

impl Limiter {
    /// A limiter on the monotonic clock.
    ///
    /// # Panics
    /// If `rate` is invalid ([`Rate::quota`]). Configuration is validated at start
    /// (`AppState::start`); use [`Limiter::try_new`] for unchecked rates.
    pub fn new(rate: Rate) -> Self {
        Self::with_clock(rate, DefaultClock::default())
    }

    /// A limiter on the monotonic clock, or why `rate` is invalid.
    pub fn try_new(rate: Rate) -> Result<Self, String> {
        Self::try_with_clock(rate, DefaultClock::default())
    }
}

impl<C: Clock> Limiter<C> {
    /// A limiter on `clock` (a `FakeRelativeClock` in tests).
    ///
    /// # Panics
    /// If `rate` is invalid ([`Rate::quota`]).
    pub fn with_clock(rate: Rate, clock: C) -> Self {
        Self::try_with_clock(rate, clock).unwrap_or_else(|why| panic!("invalid rate: {why}"))
    }

    /// A limiter on `clock`, or why `rate` is invalid.
    pub fn try_with_clock(rate: Rate, clock: C) -> Result<Self, String> {
        Ok(Self {
            inner: RateLimiter::direct_with_clock(rate.quota()?, clock),
        })
    }

    /// Counts one request, or says how long until one would pass (refusals are not counted).
    pub fn check(&self) -> Result<(), RetryAfter> {
        self.inner
            .check()
            .map_err(|not_until| RetryAfter(not_until.wait_time_from(self.inner.clock().now())))
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use governor::clock::FakeRelativeClock;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn rate(per_second: f64, burst: u32) -> Rate {
        Rate { per_second, burst }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    fn keyed(r: Rate) -> (KeyedLimiter<IpAddr, FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (KeyedLimiter::with_clock(r, clock.clone()), clock)
    }

    #[test]
    fn burst_then_refusal_with_retry_after() {
        let (limiter, clock) = keyed(rate(2.0, 3));
        for _ in 0..3 {
            assert_eq!(limiter.check(&ip(1)), Ok(()));
        }
        let retry = limiter.check(&ip(1)).unwrap_err();
        assert_eq!(retry, RetryAfter(500 * MS), "one cell per 1/2 s");
        assert_eq!(retry.secs_ceil(), 1);
        clock.advance(200 * MS);
        assert_eq!(limiter.check(&ip(1)), Err(RetryAfter(300 * MS)));
    }

    #[test]
    fn refills_as_time_passes() {
        let (limiter, clock) = keyed(rate(1.0, 2));
        assert!(limiter.check(&ip(1)).is_ok());
        assert!(limiter.check(&ip(1)).is_ok());
        assert!(limiter.check(&ip(1)).is_err());
        clock.advance(Duration::from_secs(1));
        assert!(limiter.check(&ip(1)).is_ok(), "one cell back after 1 s");
        assert!(limiter.check(&ip(1)).is_err());
        clock.advance(Duration::from_secs(10));
        assert!(limiter.check(&ip(1)).is_ok());
        assert!(
            limiter.check(&ip(1)).is_ok(),
            "the full burst after a pause"
        );
        assert!(
            limiter.check(&ip(1)).is_err(),
            "but never more than the burst"
        );
    }

    #[test]
    fn refused_requests_do_not_push_the_wait_out() {
        let (limiter, clock) = keyed(rate(1.0, 1));
        assert!(limiter.check(&ip(1)).is_ok());
        for _ in 0..100 {
            assert!(limiter.check(&ip(1)).is_err());
        }
        clock.advance(Duration::from_secs(1));
        assert!(limiter.check(&ip(1)).is_ok());
    }

    #[test]
    fn keys_are_independent() {
        let (limiter, _clock) = keyed(rate(1.0, 2));
        assert!(limiter.check(&ip(1)).is_ok());
        assert!(limiter.check(&ip(1)).is_ok());
        assert!(limiter.check(&ip(1)).is_err());
        assert!(
            limiter.check(&ip(2)).is_ok(),
            "another address is unaffected"
        );
        assert!(limiter.check(&ip(2)).is_ok());
        assert!(limiter.check(&ip(2)).is_err());
        assert_eq!(limiter.len(), 2);
    }

    #[test]
    fn forget_idle_drops_only_idle_keys() {
        let (limiter, clock) = keyed(rate(1.0, 3));
        assert!(limiter.is_empty());
        assert!(limiter.check(&ip(1)).is_ok());
        clock.advance(Duration::from_secs(5));
        for _ in 0..3 {
            assert!(limiter.check(&ip(2)).is_ok());
        }
        clock.advance(500 * MS);
        limiter.forget_idle();
        assert_eq!(limiter.len(), 1, "ip 1 was idle, ip 2 is still limited");
        assert!(
            limiter.check(&ip(2)).is_err(),
            "forgetting keeps active limits"
        );
        clock.advance(Duration::from_secs(10));
        limiter.forget_idle();
        assert!(limiter.is_empty());
        assert!(
            limiter.check(&ip(2)).is_ok(),
            "a forgotten key starts fresh"
        );
    }

    #[test]
    fn sub_one_per_second_rates_work() {
        let (limiter, clock) = keyed(rate(0.5, 1));
        assert!(limiter.check(&ip(1)).is_ok());
        let retry = limiter.check(&ip(1)).unwrap_err();
        assert_eq!(retry, RetryAfter(Duration::from_secs(2)));
        assert_eq!(retry.secs_ceil(), 2);
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            limiter.check(&ip(1)),
            Err(RetryAfter(Duration::from_secs(1)))
        );
        clock.advance(Duration::from_secs(1));
        assert!(limiter.check(&ip(1)).is_ok());
    }

    #[test]
    fn invalid_rates_are_refused_with_a_reason() {
        for (r, why) in [
            (rate(0.0, 1), "above 0"),
            (rate(-1.0, 1), "above 0"),
            (rate(f64::NAN, 1), "above 0"),
            (rate(f64::INFINITY, 1), "above 0"),
            (rate(1.0, 0), "burst"),
            (rate(1e-300, 1), "too slow"),
            (rate(1e10, 1), "nanosecond"),
        ] {
            let err = r.quota().unwrap_err();
            assert!(err.contains(why), "{r:?}: {err}");
            assert!(KeyedLimiter::<u32>::try_new(r).is_err());
            assert!(Limiter::try_new(r).is_err());
        }
        let quota = rate(4.0, 10).quota().unwrap();
        assert_eq!(quota.replenish_interval(), 250 * MS);
        assert_eq!(quota.burst_size().get(), 10);
    }

    #[test]
    #[should_panic(expected = "invalid rate")]
    fn new_panics_on_an_unvalidated_rate() {
        let _ = Limiter::new(rate(0.0, 1));
    }

    #[test]
    fn unkeyed_limiter_limits_one_stream() {
        let clock = FakeRelativeClock::default();
        let limiter = Limiter::with_clock(rate(10.0, 5), clock.clone());
        for _ in 0..5 {
            assert_eq!(limiter.check(), Ok(()));
        }
        assert_eq!(limiter.check(), Err(RetryAfter(100 * MS)));
        clock.advance(100 * MS);
        assert_eq!(limiter.check(), Ok(()));
        assert!(limiter.check().is_err());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(RetryAfter(Duration::ZERO).secs_ceil(), 1);
        assert_eq!(RetryAfter(MS).secs_ceil(), 1);
        assert_eq!(RetryAfter(Duration::from_secs(1)).secs_ceil(), 1);
        assert_eq!(RetryAfter(1_001 * MS).secs_ceil(), 2);
        assert_eq!(RetryAfter(Duration::from_secs(30)).secs_ceil(), 30);
        assert_eq!(RetryAfter(1_500 * MS).to_string(), "retry in 2 s");
    }

    #[test]
    fn rate_reads_from_config() {
        let r: Rate = serde_json::from_str(r#"{"per_second":0.2,"burst":3}"#).unwrap();
        assert_eq!(r, rate(0.2, 3));
        assert_eq!(
            r.quota().unwrap().replenish_interval(),
            Duration::from_secs(5)
        );
    }
}
