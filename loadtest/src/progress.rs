//! The live progress line on stderr.
//!
//! On a terminal the line is rewritten in place (`\r`, then clear to end of line); otherwise
//! (a CI log, a file) a full line is printed at most once every [`LOG_EVERY`] of run time, so
//! logs stay short.

use std::io::{IsTerminal, Write};
use std::time::Duration;

/// How often a non-terminal stderr gets a line.
pub const LOG_EVERY: Duration = Duration::from_secs(5);

/// Width of the progress bar in characters.
const BAR: usize = 20;

/// The state of a run at one instant, as the progress line shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub elapsed: Duration,
    pub planned: u64,
    pub joined: u64,
    pub failed: u64,
    pub active: u64,
    pub packets_per_s: f64,
    /// What the run is doing: `join`, `hold`, `drain`, ….
    pub phase: &'static str,
}

/// One progress line, without a line ending:
/// `[  12.3s] join   ████████░░░░░░░░░░░░  812/1000 joined  3 failed  active 809  41.2k pkt/s`.
///
/// The bar fills with (joined + failed) / planned; with nothing planned it stays empty and the
/// count has no denominator.
pub fn format_line(s: &Snapshot) -> String {
    let done = s.joined.saturating_add(s.failed);
    let filled = if s.planned == 0 {
        0
    } else {
        let fraction = (done as f64 / s.planned as f64).clamp(0.0, 1.0);
        ((fraction * BAR as f64).floor() as usize).min(BAR)
    };
    let bar: String = std::iter::repeat_n('█', filled)
        .chain(std::iter::repeat_n('░', BAR - filled))
        .collect();
    let joined = if s.planned == 0 {
        format!("{} joined", s.joined)
    } else {
        format!("{}/{} joined", s.joined, s.planned)
    };
    format!(
        "[{:>6.1}s] {:<6} {bar}  {joined}  {} failed  active {}  {} pkt/s",
        s.elapsed.as_secs_f64(),
        s.phase,
        s.failed,
        s.active,
        rate(s.packets_per_s)
    )
}

/// A rate as `812`, `41.2k` or `1.3M`.
fn rate(v: f64) -> String {
    if !v.is_finite() || v <= 0.0 {
        "0".to_owned()
    } else if v < 1_000.0 {
        format!("{v:.0}")
    } else if v < 1_000_000.0 {
        format!("{:.1}k", v / 1_000.0)
    } else {
        format!("{:.1}M", v / 1_000_000.0)
    }
}

/// Writes progress lines to stderr (see the module docs).
#[derive(Debug)]
pub struct Progress {
    enabled: bool,
    terminal: bool,
    /// `elapsed` of the last line printed (not on a terminal).
    last_logged: Option<Duration>,
    /// The newest line not yet printed (not on a terminal), printed by [`Progress::finish`].
    pending: Option<String>,
    /// A line is on screen without its line ending (on a terminal).
    open: bool,
}

impl Progress {
    /// A progress writer; when `enabled` is false it prints nothing.
    pub fn new(enabled: bool) -> Self {
        Self::with_mode(enabled, std::io::stderr().is_terminal())
    }

    fn with_mode(enabled: bool, terminal: bool) -> Self {
        Progress {
            enabled,
            terminal,
            last_logged: None,
            pending: None,
            open: false,
        }
    }

    pub fn update(&mut self, s: &Snapshot) {
        let mut err = std::io::stderr().lock();
        self.update_to(&mut err, s);
    }

    /// Ends the line (on a terminal), or prints the newest line not printed yet.
    pub fn finish(&mut self) {
        let mut err = std::io::stderr().lock();
        self.finish_to(&mut err);
    }

    fn update_to(&mut self, out: &mut impl Write, s: &Snapshot) {
        if !self.enabled {
            return;
        }
        let line = format_line(s);
        if self.terminal {
            // Failing to draw progress is not worth failing the run over.
            let _ = write!(out, "\r{line}\x1b[K");
            let _ = out.flush();
            self.open = true;
        } else if self
            .last_logged
            .is_none_or(|last| s.elapsed.saturating_sub(last) >= LOG_EVERY || s.elapsed < last)
        {
            let _ = writeln!(out, "{line}");
            self.last_logged = Some(s.elapsed);
            self.pending = None;
        } else {
            self.pending = Some(line);
        }
    }

    fn finish_to(&mut self, out: &mut impl Write) {
        if !self.enabled {
            return;
        }
        if self.open {
            let _ = writeln!(out);
            self.open = false;
        }
        if let Some(line) = self.pending.take() {
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(elapsed_ms: u64, planned: u64, joined: u64, failed: u64) -> Snapshot {
        Snapshot {
            elapsed: Duration::from_millis(elapsed_ms),
            planned,
            joined,
            failed,
            active: joined.saturating_sub(3),
            packets_per_s: 41_234.0,
            phase: "join",
        }
    }

    fn bar_of(line: &str) -> String {
        line.chars().filter(|c| *c == '█' || *c == '░').collect()
    }

    #[test]
    fn partial_progress() {
        let line = format_line(&snapshot(12_345, 1000, 812, 3));
        assert_eq!(
            line,
            "[  12.3s] join   ████████████████░░░░  812/1000 joined  3 failed  active 809  41.2k pkt/s"
        );
        // 815 of 1000 done: 16 of 20 cells.
        assert_eq!(bar_of(&line).chars().filter(|c| *c == '█').count(), 16);
    }

    #[test]
    fn nothing_planned_leaves_the_bar_empty() {
        let line = format_line(&Snapshot {
            packets_per_s: f64::NAN,
            ..snapshot(0, 0, 5, 1)
        });
        assert_eq!(bar_of(&line), "░".repeat(20));
        assert!(line.starts_with("[   0.0s] join "), "{line}");
        assert!(
            line.contains("  5 joined  1 failed  active 2  0 pkt/s"),
            "{line}"
        );
        assert!(!line.contains("5/"), "{line}");
    }

    #[test]
    fn bar_is_full_and_never_overflows() {
        let full = format_line(&snapshot(1_000, 10, 10, 0));
        assert_eq!(bar_of(&full), "█".repeat(20));
        let over = format_line(&snapshot(1_000, 10, 15, 5));
        assert_eq!(bar_of(&over), "█".repeat(20));
        assert!(over.contains("15/10 joined"), "{over}");
        assert_eq!(rate(950.0), "950");
        assert_eq!(rate(1_250_000.0), "1.2M");
    }

    #[test]
    fn log_output_is_throttled_to_every_five_seconds() {
        let mut progress = Progress::with_mode(true, false);
        let mut out = Vec::new();
        for ms in [0, 1_000, 4_999, 5_000, 7_000, 9_999, 10_500, 11_000] {
            progress.update_to(&mut out, &snapshot(ms, 100, ms / 1000, 0));
        }
        progress.finish_to(&mut out);
        let text = String::from_utf8(out).unwrap();
        let stamps: Vec<&str> = text.lines().map(|l| &l[..9]).collect();
        // 0, 5.0 and 10.5 s on schedule; 11.0 s as the last line at finish.
        assert_eq!(
            stamps,
            ["[   0.0s]", "[   5.0s]", "[  10.5s]", "[  11.0s]"],
            "{text}"
        );
        assert!(!text.contains('\r'));
    }

    #[test]
    fn terminal_output_rewrites_one_line() {
        let mut progress = Progress::with_mode(true, true);
        let mut out = Vec::new();
        progress.update_to(&mut out, &snapshot(100, 10, 1, 0));
        progress.update_to(&mut out, &snapshot(200, 10, 2, 0));
        progress.finish_to(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches('\r').count(), 2);
        assert_eq!(text.matches("\x1b[K").count(), 2);
        assert!(text.starts_with("\r[   0.1s]"), "{text:?}");
        assert!(text.ends_with("\x1b[K\n"), "{text:?}");
        assert_eq!(text.matches('\n').count(), 1);
    }

    #[test]
    fn disabled_prints_nothing() {
        for terminal in [false, true] {
            let mut progress = Progress::with_mode(false, terminal);
            let mut out = Vec::new();
            progress.update_to(&mut out, &snapshot(0, 10, 1, 0));
            progress.update_to(&mut out, &snapshot(9_000, 10, 5, 0));
            progress.finish_to(&mut out);
            assert!(out.is_empty());
        }
    }
}
