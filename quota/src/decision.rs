//! The answer to one quota check: allowed or not, and what the response headers need
//! (limit, remaining, reset, retry-after).

use std::time::Duration;

use crate::algorithm::Verdict;
use crate::policy::{FailureMode, Policy};

/// How long a client refused because the counters are unreachable (fail closed) is told to wait.
pub const FAILED_CLOSED_RETRY_AFTER: Duration = Duration::from_secs(1);

/// How a decision came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Counted, within the limit.
    Allowed,
    /// Counted, over the limit: refuse with 429.
    Limited,
    /// The counters were unreachable and the policy fails open: allowed, not counted.
    FailedOpen,
    /// The counters were unreachable and the policy fails closed: refused, not counted.
    FailedClosed,
}

/// The result of checking one request against one policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What happened.
    pub outcome: Outcome,
    /// The policy's `requests` per `window`.
    pub limit: u64,
    /// The policy's window.
    pub window: Duration,
    /// Requests that could still be made now (0 when not counted).
    pub remaining: u64,
    /// The effective window: until the token bucket is full again, or until the current window
    /// ends (zero when not counted).
    pub reset_after: Duration,
    /// When refused: how long until the same request could pass.
    pub retry_after: Option<Duration>,
}

impl Decision {
    /// Whether the request may proceed.
    pub fn is_allowed(&self) -> bool {
        matches!(self.outcome, Outcome::Allowed | Outcome::FailedOpen)
    }

    /// Whether the counters were consulted (false when the backend was unavailable).
    pub fn is_counted(&self) -> bool {
        matches!(self.outcome, Outcome::Allowed | Outcome::Limited)
    }

    pub(crate) fn counted(policy: &Policy, verdict: Verdict) -> Self {
        let limit = policy.limit();
        Self {
            outcome: if verdict.allowed {
                Outcome::Allowed
            } else {
                Outcome::Limited
            },
            limit: limit.requests,
            window: limit.window,
            remaining: verdict.remaining,
            reset_after: Duration::from_micros(verdict.reset_after_us),
            retry_after: verdict.retry_after_us.map(Duration::from_micros),
        }
    }

    /// The decision when the backend could not answer, by the policy's failure mode.
    pub(crate) fn unavailable(policy: &Policy) -> Self {
        let limit = policy.limit();
        let (outcome, retry_after) = match policy.failure_mode() {
            FailureMode::Open => (Outcome::FailedOpen, None),
            FailureMode::Closed => (Outcome::FailedClosed, Some(FAILED_CLOSED_RETRY_AFTER)),
        };
        Self {
            outcome,
            limit: limit.requests,
            window: limit.window,
            remaining: 0,
            reset_after: Duration::ZERO,
            retry_after,
        }
    }
}
