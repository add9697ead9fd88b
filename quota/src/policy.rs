//! What a quota is: a [`Limit`] (requests per window, with an [`Algorithm`]), a name, and what to
//! do when the counters cannot be reached ([`FailureMode`]). Built once from config, cloned
//! cheaply into every request.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::duration_micros;
use crate::key;

/// The longest policy name accepted (it is echoed in response headers).
pub const MAX_POLICY_NAME_LEN: usize = 128;
/// The shortest window accepted.
pub const MIN_WINDOW: Duration = Duration::from_millis(1);
/// The longest window accepted (a leap year).
pub const MAX_WINDOW: Duration = Duration::from_secs(366 * 24 * 3600);
/// The largest `requests` (and `burst`) accepted. Counters stay far below 2^53, where the
/// Lua scripts' doubles stop being exact integers.
pub const MAX_REQUESTS: u64 = 1_000_000_000;

/// How requests are counted against a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// A token bucket, computed as GCRA (one timestamp per key): tokens refill continuously at
    /// `requests / window`, and up to `burst` can be spent at once.
    TokenBucket {
        /// Bucket capacity: the most requests allowed at once when the bucket is full (≥ 1).
        burst: u64,
    },
    /// Two fixed windows weighted into an approximate sliding window (one hash per key): the
    /// previous window's count is weighted by how much of it still overlaps the sliding window.
    SlidingWindow,
    /// A counter that starts at a key's first request and resets `window` later.
    FixedWindow,
}

impl Algorithm {
    /// Short name, used as the Redis key suffix and in logs: `tb`, `sw` or `fw`.
    pub fn short_name(self) -> &'static str {
        match self {
            Algorithm::TokenBucket { .. } => "tb",
            Algorithm::SlidingWindow => "sw",
            Algorithm::FixedWindow => "fw",
        }
    }
}

/// `requests` per `window`, counted with `algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// The counting algorithm.
    pub algorithm: Algorithm,
    /// Requests allowed per window (the sustained rate, for the token bucket).
    pub requests: u64,
    /// The window.
    pub window: Duration,
}

impl Limit {
    /// A token bucket refilling `requests` per `window`, holding at most `burst` tokens.
    pub fn token_bucket(requests: u64, window: Duration, burst: u64) -> Self {
        Self {
            algorithm: Algorithm::TokenBucket { burst },
            requests,
            window,
        }
    }

    /// An approximate sliding window of `requests` per `window`.
    pub fn sliding_window(requests: u64, window: Duration) -> Self {
        Self {
            algorithm: Algorithm::SlidingWindow,
            requests,
            window,
        }
    }

    /// A fixed window of `requests` per `window`, starting at a key's first request.
    pub fn fixed_window(requests: u64, window: Duration) -> Self {
        Self {
            algorithm: Algorithm::FixedWindow,
            requests,
            window,
        }
    }

    /// The most requests allowed at once: `burst` for the token bucket, else `requests`.
    pub fn capacity(&self) -> u64 {
        match self.algorithm {
            Algorithm::TokenBucket { burst } => burst,
            Algorithm::SlidingWindow | Algorithm::FixedWindow => self.requests,
        }
    }

    /// The window in microseconds.
    pub(crate) fn window_micros(&self) -> u64 {
        duration_micros(self.window)
    }

    /// The token bucket's emission interval: one token every `window / requests`, rounded up
    /// to a whole microsecond so the sustained rate never exceeds the configured one.
    pub(crate) fn emission_interval_micros(&self) -> u64 {
        self.window_micros().div_ceil(self.requests.max(1))
    }

    /// Checks the ranges the algorithms and scripts rely on.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.requests == 0 || self.requests > MAX_REQUESTS {
            return Err(PolicyError::Requests(self.requests));
        }
        if self.window < MIN_WINDOW || self.window > MAX_WINDOW {
            return Err(PolicyError::Window(self.window));
        }
        if let Algorithm::TokenBucket { burst } = self.algorithm {
            if burst == 0 || burst > MAX_REQUESTS {
                return Err(PolicyError::Burst(burst));
            }
            // One token per microsecond at most: the emission interval must be ≥ 1 µs.
            if self.requests > self.window_micros() {
                return Err(PolicyError::RateTooHigh {
                    requests: self.requests,
                    window: self.window,
                });
            }
        }
        Ok(())
    }
}

/// What a decision becomes when the counters cannot be reached (Redis down or too slow).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailureMode {
    /// Allow the request (the default): an outage of the quota store is not an outage of the API.
    #[default]
    Open,
    /// Refuse the request: for quotas that protect something more fragile than the API's uptime.
    Closed,
}

/// A validation error in a policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The name is empty, too long or not printable ASCII.
    #[error("policy name {0:?}: must be 1 to {MAX_POLICY_NAME_LEN} printable ASCII characters")]
    Name(String),
    /// `requests` out of range.
    #[error("requests {0}: must be between 1 and {MAX_REQUESTS}")]
    Requests(u64),
    /// `burst` out of range.
    #[error("burst {0}: must be between 1 and {MAX_REQUESTS}")]
    Burst(u64),
    /// `window` out of range.
    #[error("window {0:?}: must be between 1 ms and 366 days")]
    Window(Duration),
    /// A lease size outside 2..=capacity.
    #[error("lease {0}: must be between 2 and the limit's capacity (burst or requests)")]
    Lease(u64),
    /// More than one token per microsecond.
    #[error("{requests} requests per {window:?}: more than one per microsecond")]
    RateTooHigh {
        /// Requests per window.
        requests: u64,
        /// The window.
        window: Duration,
    },
}

/// A named, validated limit with its failure mode. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Policy(Arc<PolicyInner>);

struct PolicyInner {
    name: String,
    /// The name as it appears in Redis keys (escaped or hashed, see [`key`]).
    key_part: String,
    limit: Limit,
    failure_mode: FailureMode,
    lease: Option<u64>,
    /// Counted and reported, never refusing.
    shadow: bool,
    /// Its `RateLimit-Policy` item, rendered once: it goes out with every response.
    policy_item: String,
    /// How much of `policy_item` is the quoted name, which the `RateLimit` field repeats.
    quoted_name_len: usize,
}

impl Policy {
    /// A policy named `name` (shown to clients in `RateLimit-Policy`, and part of every key).
    pub fn new(
        name: impl Into<String>,
        limit: Limit,
        failure_mode: FailureMode,
    ) -> Result<Self, PolicyError> {
        let name = name.into();
        if name.is_empty()
            || name.len() > MAX_POLICY_NAME_LEN
            || !name.bytes().all(|b| (0x20..=0x7e).contains(&b))
        {
            return Err(PolicyError::Name(name));
        }
        limit.validate()?;
        Ok(Self(Arc::new(PolicyInner {
            key_part: key::component(&name).into_owned(),
            quoted_name_len: crate::headers::sf_string(&name).len(),
            policy_item: crate::headers::render_policy_item(&name, &limit),
            name,
            limit,
            failure_mode,
            lease: None,
            shadow: false,
        })))
    }

    /// The same policy in batched mode, for hot keys on the Redis backend: a proxy takes up to
    /// `tokens` units from Redis in one call and spends them locally, so Redis sees one call
    /// per `tokens` requests instead of one per request. Tokens are counted in Redis when
    /// taken and dropped when their window ends (or, for the token bucket, `tokens` emission
    /// intervals after they were taken), so:
    ///
    /// - fixed and sliding windows never admit more than unbatched (no overshoot);
    /// - a token bucket admits at most `tokens` more than unbatched over any interval, for the
    ///   whole fleet (a token can be spent up to `tokens` intervals after it was taken);
    /// - each proxy can leave up to `tokens − 1` unspent when its lease ends: under-admission,
    ///   up to `(tokens − 1) × proxies` per lease period.
    ///
    /// `tokens` must be between 2 and the limit's capacity. The in-process backend ignores it.
    pub fn with_lease(self, tokens: u64) -> Result<Self, PolicyError> {
        if tokens < 2 || tokens > self.0.limit.capacity() {
            return Err(PolicyError::Lease(tokens));
        }
        Ok(self.with(|inner| inner.lease = Some(tokens)))
    }

    /// The same policy in shadow mode (or not): requests are counted and decisions reported as
    /// usual, but a proxy never refuses a request for it ([`crate::PolicyOutcome`] tells its
    /// refusals apart). Counters and keys are the same either way.
    pub fn with_shadow(self, shadow: bool) -> Self {
        self.with(|inner| inner.shadow = shadow)
    }

    /// A copy of this policy, changed by `change`.
    fn with(self, change: impl FnOnce(&mut PolicyInner)) -> Self {
        let mut inner = PolicyInner {
            name: self.0.name.clone(),
            key_part: self.0.key_part.clone(),
            limit: self.0.limit,
            failure_mode: self.0.failure_mode,
            lease: self.0.lease,
            shadow: self.0.shadow,
            policy_item: self.0.policy_item.clone(),
            quoted_name_len: self.0.quoted_name_len,
        };
        change(&mut inner);
        Self(Arc::new(inner))
    }

    /// Its `RateLimit-Policy` item: `"name";q=100;w=60` (see [`crate::headers`]).
    pub fn policy_item(&self) -> &str {
        &self.0.policy_item
    }

    /// Its name as a structured-field string, `"name"`: the start of its policy item.
    pub(crate) fn quoted_name(&self) -> &str {
        &self.0.policy_item[..self.0.quoted_name_len]
    }

    /// Whether the policy is in shadow mode: counted, never refusing.
    pub fn is_shadow(&self) -> bool {
        self.0.shadow
    }

    /// Tokens taken per Redis call in batched mode, if enabled.
    pub fn lease(&self) -> Option<u64> {
        self.0.lease
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The limit.
    pub fn limit(&self) -> &Limit {
        &self.0.limit
    }

    /// What happens when the counters are unreachable.
    pub fn failure_mode(&self) -> FailureMode {
        self.0.failure_mode
    }

    pub(crate) fn key_part(&self) -> &str {
        &self.0.key_part
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.0.name)
            .field("limit", &self.0.limit)
            .field("failure_mode", &self.0.failure_mode)
            .field("lease", &self.0.lease)
            .field("shadow", &self.0.shadow)
            .finish()
    }
}

impl PartialEq for Policy {
    fn eq(&self, other: &Self) -> bool {
        self.0.name == other.0.name
            && self.0.limit == other.0.limit
            && self.0.failure_mode == other.0.failure_mode
            && self.0.lease == other.0.lease
            && self.0.shadow == other.0.shadow
    }
}

impl Eq for Policy {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        let ok = Limit::token_bucket(100, Duration::from_secs(60), 10);
        assert!(Policy::new("api", ok, FailureMode::Open).is_ok());
        assert_eq!(
            Policy::new("", ok, FailureMode::Open).unwrap_err(),
            PolicyError::Name(String::new())
        );
        assert!(matches!(
            Policy::new("tab\there", ok, FailureMode::Open),
            Err(PolicyError::Name(_))
        ));
        let zero = Limit::fixed_window(0, Duration::from_secs(1));
        assert_eq!(zero.validate(), Err(PolicyError::Requests(0)));
        let no_burst = Limit::token_bucket(1, Duration::from_secs(1), 0);
        assert_eq!(no_burst.validate(), Err(PolicyError::Burst(0)));
        let short = Limit::sliding_window(1, Duration::from_micros(10));
        assert!(matches!(short.validate(), Err(PolicyError::Window(_))));
        let fast = Limit::token_bucket(2_000, Duration::from_millis(1), 1);
        assert!(matches!(
            fast.validate(),
            Err(PolicyError::RateTooHigh { .. })
        ));
        let policy = Policy::new("api", ok, FailureMode::Open).unwrap();
        assert_eq!(policy.clone().with_lease(10).unwrap().lease(), Some(10));
        assert_eq!(policy.clone().with_lease(11), Err(PolicyError::Lease(11)));
        assert_eq!(policy.with_lease(1), Err(PolicyError::Lease(1)));
    }

    #[test]
    fn emission_interval_rounds_up() {
        let limit = Limit::token_bucket(3, Duration::from_secs(1), 3);
        assert_eq!(limit.emission_interval_micros(), 333_334);
        let limit = Limit::token_bucket(100, Duration::from_secs(60), 3);
        assert_eq!(limit.emission_interval_micros(), 600_000);
    }
}
