//! The answer to one quota check: allowed or not, and what the response headers need
//! (limit, remaining, reset, retry-after); and how metrics and access logs name it
//! ([`PolicyOutcome`]).

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

/// What a policy did with a request, as metrics and access logs name it: the engine's
/// [`Outcome`], with a shadow policy's refusals told apart, since a shadow policy never refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyOutcome {
    /// Counted, within the limit.
    Allowed,
    /// Counted, over the limit: refused (429).
    Limited,
    /// Counters unreachable, the policy fails open (or is in shadow mode): allowed uncounted.
    FailedOpen,
    /// Counters unreachable, the policy fails closed: refused (503).
    FailedClosed,
    /// A shadow policy's request over the limit: allowed all the same.
    ShadowLimited,
}

impl PolicyOutcome {
    /// Every outcome, in the order of their metric series.
    pub const ALL: [Self; 5] = [
        Self::Allowed,
        Self::Limited,
        Self::FailedOpen,
        Self::FailedClosed,
        Self::ShadowLimited,
    ];

    /// What `policy` did with the request `decision` answered.
    pub fn of(policy: &Policy, decision: &Decision) -> Self {
        match (decision.outcome, policy.is_shadow()) {
            (Outcome::Allowed, _) => Self::Allowed,
            (Outcome::Limited, false) => Self::Limited,
            (Outcome::Limited, true) => Self::ShadowLimited,
            (Outcome::FailedOpen, _) | (Outcome::FailedClosed, true) => Self::FailedOpen,
            (Outcome::FailedClosed, false) => Self::FailedClosed,
        }
    }

    /// Whether the request is refused for it.
    pub fn refuses(self) -> bool {
        matches!(self, Self::Limited | Self::FailedClosed)
    }

    /// The metric label and access-log value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Limited => "limited",
            Self::FailedOpen => "failed_open",
            Self::FailedClosed => "failed_closed",
            Self::ShadowLimited => "shadow_limited",
        }
    }

    /// The one outcome to report for a request several policies decided: the one that refused
    /// it (over the limit before unreachable counters), else the one an operator most needs to
    /// see (a shadow refusal, then an uncounted request), else `allowed`. `None` when no policy
    /// counted the request.
    pub fn of_request(outcomes: impl IntoIterator<Item = Self>) -> Option<Self> {
        outcomes.into_iter().max_by_key(|outcome| match outcome {
            Self::Allowed => 0,
            Self::FailedOpen => 1,
            Self::ShadowLimited => 2,
            Self::FailedClosed => 3,
            Self::Limited => 4,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Limit;

    fn decided(outcome: Outcome) -> Decision {
        Decision {
            outcome,
            limit: 1,
            window: Duration::from_secs(1),
            remaining: 0,
            reset_after: Duration::ZERO,
            retry_after: None,
        }
    }

    #[test]
    fn shadow_policies_never_refuse_and_their_refusals_are_told_apart() {
        let limit = Limit::fixed_window(1, Duration::from_secs(1));
        let open = Policy::new("p", limit, FailureMode::Open).unwrap();
        let closed = Policy::new("p", limit, FailureMode::Closed).unwrap();
        let of = |policy: &Policy, outcome| PolicyOutcome::of(policy, &decided(outcome));
        assert_eq!(of(&open, Outcome::Allowed), PolicyOutcome::Allowed);
        assert_eq!(of(&open, Outcome::Limited), PolicyOutcome::Limited);
        assert_eq!(of(&open, Outcome::FailedOpen), PolicyOutcome::FailedOpen);
        assert_eq!(
            of(&closed, Outcome::FailedClosed),
            PolicyOutcome::FailedClosed
        );
        let (open, closed) = (open.with_shadow(true), closed.with_shadow(true));
        assert_eq!(of(&open, Outcome::Limited), PolicyOutcome::ShadowLimited);
        assert_eq!(
            of(&closed, Outcome::FailedClosed),
            PolicyOutcome::FailedOpen
        );
        assert!(
            PolicyOutcome::ALL.iter().all(|o| o.refuses()
                == matches!(o, PolicyOutcome::Limited | PolicyOutcome::FailedClosed))
        );
    }

    #[test]
    fn a_request_reports_what_refused_it_else_what_matters_most() {
        use PolicyOutcome::*;
        let of = |outcomes: &[PolicyOutcome]| PolicyOutcome::of_request(outcomes.iter().copied());
        assert_eq!(of(&[]), None);
        assert_eq!(of(&[Allowed, Allowed]), Some(Allowed));
        assert_eq!(of(&[Allowed, FailedOpen]), Some(FailedOpen));
        assert_eq!(
            of(&[FailedOpen, ShadowLimited, Allowed]),
            Some(ShadowLimited)
        );
        assert_eq!(of(&[ShadowLimited, FailedClosed]), Some(FailedClosed));
        assert_eq!(of(&[FailedClosed, Limited, Allowed]), Some(Limited));
    }
}
