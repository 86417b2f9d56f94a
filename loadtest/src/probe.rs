//! Resource sampling from `/proc` (Linux) and the generator's own scheduling lag.
//!
//! A load test is only believable if the generator is not the bottleneck: the driver
//! samples the server's and its own CPU and memory, and a [`LagMeter`] records how late a
//! 10 ms ticker runs. Parsing is split into pure functions ([`parse_stat`],
//! [`parse_statm`]) so it is unit-tested on fixed text; only [`sample`] touches the file
//! system. Nothing here reads the clock: callers pass the elapsed time and instants in.

use std::io;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// CPU time and resident memory of one process at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcSample {
    /// User plus system CPU time of the whole process (all threads) since it started.
    pub cpu: Duration,
    /// Resident set size: memory actually in RAM, shared pages included.
    pub rss_bytes: u64,
}

/// Samples process `pid` from `/proc/<pid>/stat` and `/proc/<pid>/statm`.
///
/// Fails with `NotFound` when the process does not exist (or has exited) and with
/// `InvalidData` when the files do not parse.
pub fn sample(pid: u32) -> io::Result<ProcSample> {
    sample_dir(&pid.to_string())
}

/// Samples the calling process (the load generator itself).
pub fn sample_self() -> io::Result<ProcSample> {
    sample_dir("self")
}

/// Clock ticks per second (`CLK_TCK`), the unit of CPU times in `/proc/<pid>/stat`.
///
/// Unsafe code is forbidden in this workspace, so `sysconf` is out of reach: the value is
/// read once from `getconf CLK_TCK`, falling back to 100 (the value on every mainstream
/// Linux architecture) when `getconf` is missing or prints nonsense.
pub fn ticks_per_s() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| getconf("CLK_TCK").unwrap_or(100))
}

/// Page size in bytes, the unit of `/proc/<pid>/statm`.
///
/// Read once from `getconf PAGESIZE` (see [`ticks_per_s`] for why), falling back to 4096.
pub fn page_size() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    *PAGE.get_or_init(|| getconf("PAGESIZE").unwrap_or(4096))
}

/// Number of cores this process may run on, to turn [`cpu_pct`] into a share of the
/// machine; 1 when it cannot be determined.
pub fn cpu_cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// CPU use between two samples taken `elapsed` apart, in percent of one core (100 = one core
/// busy, so a process using two full cores reports 200).
///
/// Returns 0 for a zero `elapsed`, and never goes negative (if `b` is not later than `a`).
pub fn cpu_pct(a: &ProcSample, b: &ProcSample, elapsed: Duration) -> f64 {
    if elapsed.is_zero() {
        return 0.0;
    }
    b.cpu.saturating_sub(a.cpu).as_secs_f64() / elapsed.as_secs_f64() * 100.0
}

/// Parses the text of `/proc/<pid>/stat` into user + system CPU time.
///
/// The second field, `comm`, is the executable name in parentheses and may itself contain
/// spaces and `)` (a process can name itself anything), so the fields are counted from the
/// *last* `)`. After it come `state` (field 3) … `utime` (14) and `stime` (15), see proc(5).
pub fn parse_stat(text: &str, ticks_per_s: u64) -> Option<Duration> {
    if ticks_per_s == 0 {
        return None;
    }
    let (_, rest) = text.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = utime.checked_add(stime)?;
    // Split whole seconds from the remainder so the nanosecond product cannot overflow.
    let whole = Duration::from_secs(ticks / ticks_per_s);
    let nanos = (ticks % ticks_per_s) * 1_000_000_000 / ticks_per_s;
    Some(whole + Duration::from_nanos(nanos))
}

/// Parses the text of `/proc/<pid>/statm` into the resident set size in bytes.
///
/// Fields are in pages: `size resident shared text lib data dt`; we take `resident`.
pub fn parse_statm(text: &str, page_size: u64) -> Option<u64> {
    let resident: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    resident.checked_mul(page_size)
}

/// Scheduling lag of the generator: a core that is told the instants a 10 ms ticker was due
/// and when it actually ran.
///
/// When the generator's runtime is overloaded, its timers fire late and every latency it
/// measures is inflated; a report shows this lag next to the results so a slow generator is
/// not mistaken for a slow server.
#[derive(Debug, Clone)]
pub struct LagMeter {
    period: Duration,
    /// Worst lag since the last [`LagMeter::take_max`].
    max: Duration,
}

impl LagMeter {
    /// A meter for a ticker of the given period (the driver builds its interval from
    /// [`LagMeter::period`], so the two cannot disagree).
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            max: Duration::ZERO,
        }
    }

    /// The ticker period this meter was made for.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Records one tick that was due at `due` and ran at `ran`; running early counts as no lag.
    pub fn handle_tick(&mut self, due: Instant, ran: Instant) {
        self.max = self.max.max(ran.saturating_duration_since(due));
    }

    /// The worst lag since the last take (zero if no tick was late), and resets it, so each
    /// report interval shows its own worst case.
    pub fn take_max(&mut self) -> Duration {
        std::mem::take(&mut self.max)
    }
}

fn sample_dir(dir: &str) -> io::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{dir}/stat"))?;
    let statm = std::fs::read_to_string(format!("/proc/{dir}/statm"))?;
    let cpu = parse_stat(&stat, ticks_per_s())
        .ok_or_else(|| invalid(format!("cannot parse /proc/{dir}/stat: {stat:?}")))?;
    let rss_bytes = parse_statm(&statm, page_size())
        .ok_or_else(|| invalid(format!("cannot parse /proc/{dir}/statm: {statm:?}")))?;
    Ok(ProcSample { cpu, rss_bytes })
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// A positive integer system constant from `getconf NAME`, or None if unavailable.
fn getconf(name: &str) -> Option<u64> {
    let output = std::process::Command::new("getconf")
        .arg(name)
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let value: u64 = std::str::from_utf8(&output.stdout)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (value > 0).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real `/proc/<pid>/stat` line (52 fields) whose comm contains a space and a `)`;
    /// utime = 1234 and stime = 567 ticks.
    const STAT: &str = "4242 ((weird) name)) S 1 4242 4242 0 -1 4194560 2538 0 0 0 1234 567 \
        0 0 20 0 9 0 123456 1234567890 4321 18446744073709551615 1 1 0 0 0 0 0 4096 17662 \
        0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n";

    #[test]
    fn parse_stat_counts_fields_after_the_last_paren() {
        let cpu = parse_stat(STAT, 100).unwrap();
        assert_eq!(cpu, Duration::from_millis(18_010));
        // A tick rate that does not divide a second evenly still converts exactly enough.
        assert_eq!(
            parse_stat(STAT, 300).unwrap(),
            Duration::from_nanos(6_003_333_333)
        );
    }

    #[test]
    fn parse_stat_rejects_garbage() {
        assert_eq!(parse_stat("", 100), None);
        assert_eq!(parse_stat("1 (x) S 1 2 3", 100), None);
        assert_eq!(parse_stat(STAT, 0), None);
        let no_paren = STAT.replace(')', " ");
        assert_eq!(parse_stat(&no_paren, 100), None);
    }

    #[test]
    fn parse_statm_takes_resident_pages() {
        assert_eq!(
            parse_statm("10240 2560 512 100 0 3000 0\n", 4096),
            Some(2560 * 4096)
        );
        assert_eq!(parse_statm("10240", 4096), None);
        assert_eq!(parse_statm("a b c", 4096), None);
        assert_eq!(parse_statm("1 18446744073709551615 0", 4096), None);
    }

    #[test]
    fn sample_self_sees_memory_and_growing_cpu() {
        let before = sample_self().unwrap();
        assert!(before.rss_bytes > 1_000_000, "rss {}", before.rss_bytes);
        // Roughly 50 ms of work; only the direction of change is asserted, never timing.
        let mut x = 0_u64;
        for i in 0..20_000_000_u64 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
        std::hint::black_box(x);
        let after = sample_self().unwrap();
        assert!(after.cpu >= before.cpu, "{before:?} -> {after:?}");
        assert!(after.rss_bytes > 1_000_000);
    }

    #[test]
    fn sample_of_a_missing_process_is_an_error() {
        assert!(sample(u32::MAX).is_err());
    }

    #[test]
    fn system_constants_are_sane() {
        assert!(ticks_per_s() > 0);
        assert!(page_size().is_power_of_two());
        assert!(cpu_cores() >= 1);
    }

    #[test]
    fn cpu_pct_is_percent_of_one_core() {
        let a = ProcSample {
            cpu: Duration::from_secs(3),
            rss_bytes: 0,
        };
        let b = ProcSample {
            cpu: Duration::from_secs(4),
            rss_bytes: 0,
        };
        assert_eq!(cpu_pct(&a, &b, Duration::from_secs(2)), 50.0);
        assert_eq!(cpu_pct(&b, &a, Duration::from_secs(2)), 0.0);
        assert_eq!(cpu_pct(&a, &b, Duration::ZERO), 0.0);
    }

    #[test]
    fn lag_meter_keeps_the_max_and_resets_on_take() {
        #[allow(clippy::disallowed_methods)] // a fixed base for virtual time; never read again
        let t0 = Instant::now();
        let ms = Duration::from_millis(1);
        let mut meter = LagMeter::new(10 * ms);
        assert_eq!(meter.period(), 10 * ms);
        assert_eq!(meter.take_max(), Duration::ZERO);

        meter.handle_tick(t0, t0 + 2 * ms);
        meter.handle_tick(t0 + 10 * ms, t0 + 17 * ms);
        meter.handle_tick(t0 + 20 * ms, t0 + 21 * ms);
        // Running before the due instant is not negative lag.
        meter.handle_tick(t0 + 30 * ms, t0 + 29 * ms);
        assert_eq!(meter.take_max(), 7 * ms);
        assert_eq!(meter.take_max(), Duration::ZERO);

        meter.handle_tick(t0 + 40 * ms, t0 + 43 * ms);
        assert_eq!(meter.take_max(), 3 * ms);
    }
}
