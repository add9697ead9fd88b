//! Counters of what the engine decided and how its backend fared, as plain atomics: the edge
//! proxy and the control plane copy them into Prometheus when scraped. Per-policy counts go
//! through a [`QuotaObserver`] instead.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::decision::{Decision, Outcome};
use crate::policy::Policy;

/// The engine's counters. All monotonic except `backend_up`.
#[derive(Debug, Default)]
pub struct Metrics {
    allowed: AtomicU64,
    limited: AtomicU64,
    failed_open: AtomicU64,
    failed_closed: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    short_circuited: AtomicU64,
    evictions: AtomicU64,
    backend_down: AtomicBool,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Requests counted and allowed.
    pub allowed: u64,
    /// Requests counted and refused.
    pub limited: u64,
    /// Requests allowed uncounted because the backend was unavailable (fail open).
    pub failed_open: u64,
    /// Requests refused because the backend was unavailable (fail closed).
    pub failed_closed: u64,
    /// Backend calls that failed with an error (timeouts not included).
    pub errors: u64,
    /// Backend calls that took longer than the timeout.
    pub timeouts: u64,
    /// Checks answered at once, without a backend call, while the backend was known down.
    pub short_circuited: u64,
    /// Live entries the in-process backend dropped to stay within its memory bound.
    pub evictions: u64,
    /// Whether the backend is reachable (always true for the in-process one).
    pub backend_up: bool,
}

impl Metrics {
    /// The current values.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MetricsSnapshot {
            allowed: get(&self.allowed),
            limited: get(&self.limited),
            failed_open: get(&self.failed_open),
            failed_closed: get(&self.failed_closed),
            errors: get(&self.errors),
            timeouts: get(&self.timeouts),
            short_circuited: get(&self.short_circuited),
            evictions: get(&self.evictions),
            backend_up: !self.backend_down.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn record(&self, decision: &Decision) {
        let counter = match decision.outcome {
            Outcome::Allowed => &self.allowed,
            Outcome::Limited => &self.limited,
            Outcome::FailedOpen => &self.failed_open,
            Outcome::FailedClosed => &self.failed_closed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_failure(&self, failure: Failure) {
        let counter = match failure {
            Failure::Error => &self.errors,
            Failure::Timeout => &self.timeouts,
            Failure::ShortCircuit => &self.short_circuited,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_eviction(&self) {
        self.evictions.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_backend_up(&self, up: bool) {
        self.backend_down.store(!up, Ordering::Relaxed);
    }
}

/// Why a backend could not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The call failed (connection lost, server error).
    Error,
    /// The call did not finish within the timeout.
    Timeout,
    /// Not attempted: the backend is known to be down and is reconnecting.
    ShortCircuit,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Failure::Error => "error",
            Failure::Timeout => "timeout",
            Failure::ShortCircuit => "backend down",
        })
    }
}

/// A hook called on every decision, e.g. to count per policy in Prometheus. Must be cheap and
/// must not block: it runs on the request path.
pub trait QuotaObserver: Send + Sync + fmt::Debug + 'static {
    /// One request was decided.
    fn on_decision(&self, policy: &Policy, decision: &Decision);
}
