//! Small helpers the clients share: bounded waits on change counters, the one clock read,
//! poison-tolerant locks, random identifiers, tasks aborted on drop.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use tokio::sync::watch;
use tokio::task::JoinHandle;

// ── Helpers ──────────────────────────────────────────────────────────────────────────────────

/// Aborts its tasks when dropped, so no test leaves work running behind it.
pub(crate) struct TaskGuard(pub(crate) Vec<JoinHandle<()>>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Re-checks `pred` each time `changes` moves, until it holds or `timeout` passes.
pub(crate) async fn wait_until<T: ?Sized>(
    changes: &watch::Sender<u64>,
    timeout: Duration,
    target: &T,
    mut pred: impl FnMut(&T) -> bool,
) -> Result<()> {
    let mut changed = changes.subscribe();
    let deadline = tokio_now() + timeout;
    loop {
        changed.borrow_and_update();
        if pred(target) {
            return Ok(());
        }
        match tokio::time::timeout_at(deadline, changed.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => bail!("the peer went away while waiting"),
            Err(_) => bail!("condition not met within {timeout:?}"),
        }
    }
}

/// The clock, read at this one marked place (GUIDE §2.2): these clients are drivers that
/// timestamp real network events, as a browser would.
#[allow(clippy::disallowed_methods)]
pub(crate) fn now() -> Instant {
    Instant::now()
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not hide the original failure behind a poison error.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A random 32-bit value (SSRCs, initial sequence numbers and timestamps, as RFC 3550 §5.1
/// asks), from the standard library's per-process random hasher keys.
pub(crate) fn random_u32() -> u32 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed)) as u32
}

/// Tokio's clock, for deadlines of `timeout_at` (the clients are drivers: they time real
/// network events), read at this one marked place.
#[allow(clippy::disallowed_methods)]
pub(crate) fn tokio_now() -> tokio::time::Instant {
    tokio::time::Instant::now()
}
