//! Time for the in-process backend: a monotonic clock in production, a hand-driven one in tests.
//!
//! The Redis backend never reads these: its scripts take the time from the Redis server (`TIME`),
//! so proxies whose clocks disagree still agree on every counter.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A source of "now", in microseconds since an arbitrary fixed origin.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Microseconds since this clock's origin; never goes backwards.
    fn now_micros(&self) -> u64;
}

/// The process's monotonic clock (`Instant`), counted from when the clock was created.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    origin: Instant,
}

impl MonotonicClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now_micros(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

/// A clock that moves only when told to; clones share one time. For tests.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    micros: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock at `start` past its origin.
    pub fn starting_at(start: Duration) -> Self {
        let clock = Self::default();
        clock.set(start);
        clock
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.micros.fetch_add(duration_micros(by), Ordering::SeqCst);
    }

    /// Sets the clock to `to` past its origin (tests may also move it back to check robustness).
    pub fn set(&self, to: Duration) {
        self.micros.store(duration_micros(to), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_micros(&self) -> u64 {
        self.micros.load(Ordering::SeqCst)
    }
}

/// A duration in whole microseconds, saturating.
pub(crate) fn duration_micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
