//! Tollgate's quota engine: the one place that decides whether a request fits its quota.
//!
//! It sits in the request flow after authentication (which names the client): the edge proxy's
//! rate-limit filter calls [`Quota::check`] for each policy on a route, and the control plane's
//! RLS (Envoy's `envoy.service.ratelimit.v3`) does the same for Envoy sidecars, so both count
//! against the same counters under one [`key`] scheme.
//!
//! - [`Policy`]: a named [`Limit`] (`requests` per `window`, token bucket / sliding window /
//!   fixed window) and a [`FailureMode`].
//! - [`Quota`]: the engine handle, cheap to clone, `Send + Sync`, over one backend: in-process
//!   ([`Quota::local`]) or Redis ([`Quota::redis`]: standalone, Cluster or Sentinel).
//! - [`Decision`]: allowed or not, with remaining, reset and retry-after;
//!   [`RateLimitHeaders`] renders it as `RateLimit-Policy`, `RateLimit`, `X-RateLimit-*` and
//!   `Retry-After`.
//! - [`identity()`]: the partition a request is counted in, from its key parts (the same
//!   function for every proxy).
//! - [`Metrics`]: counters of decisions and backend failures, for Prometheus.
//! - Batched mode for hot keys ([`Policy::with_lease`]): a proxy takes several tokens per
//!   Redis call and spends them locally, with a documented overshoot bound.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use tollgate_quota::{FailureMode, Limit, Policy, Quota, RedisConfig};
//!
//! let quota = Quota::redis(RedisConfig::new("redis://127.0.0.1:6379"))?;
//! let policy = Policy::new(
//!     "per-minute",
//!     Limit::sliding_window(100, Duration::from_secs(60)),
//!     FailureMode::Open,
//! )?;
//! let decision = quota.check(&policy, "consumer:acme").await;
//! if !decision.is_allowed() {
//!     // respond 429 with tollgate_quota::RateLimitHeaders::new([(&policy, &decision)])
//! }
//! # Ok(()) }
//! ```

mod algorithm;
pub mod clock;
mod decision;
pub mod headers;
pub mod identity;
pub mod key;
mod lease;
mod local;
mod metrics;
mod policy;
pub mod redis;
#[cfg(feature = "testing")]
pub mod testing;

use std::sync::{Arc, OnceLock};

pub use crate::clock::{Clock, ManualClock, MonotonicClock};
pub use crate::decision::{Decision, FAILED_CLOSED_RETRY_AFTER, Outcome, PolicyOutcome};
pub use crate::headers::RateLimitHeaders;
pub use crate::identity::identity;
pub use crate::key::KeyScheme;
pub use crate::local::LocalConfig;
pub use crate::metrics::{Failure, Metrics, MetricsSnapshot, QuotaObserver};
pub use crate::policy::{
    Algorithm, FailureMode, Limit, MAX_POLICY_NAME_LEN, MAX_REQUESTS, MAX_WINDOW, MIN_WINDOW,
    Policy, PolicyError,
};
pub use crate::redis::{RedisConfig, RedisSetupError};

use crate::local::LocalBackend;
use crate::redis::RedisBackend;

/// The quota engine: checks requests against policies on one backend.
///
/// Cheap to clone (one `Arc`) and `Send + Sync`: build one per process (it owns the Redis
/// connection) and hand clones to every filter and service that needs it. Config updates
/// swap policies, never the engine.
#[derive(Clone)]
pub struct Quota {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    keys: KeyScheme,
    metrics: Arc<Metrics>,
    observer: OnceLock<Arc<dyn QuotaObserver>>,
}

enum Backend {
    Local(LocalBackend),
    Redis(RedisBackend),
}

impl Quota {
    /// An engine with in-process counters: per proxy, not shared. Never unavailable.
    pub fn local(config: LocalConfig) -> Self {
        let metrics = Arc::new(Metrics::default());
        metrics.set_backend_up(true);
        Self::with_backend(
            Backend::Local(LocalBackend::new(config)),
            KeyScheme::default(),
            metrics,
        )
    }

    /// An engine with counters in Redis. Returns at once and connects in the background: until
    /// connected, decisions follow each policy's failure mode. Must be called inside a tokio
    /// runtime.
    pub fn redis(config: RedisConfig) -> Result<Self, RedisSetupError> {
        let metrics = Arc::new(Metrics::default());
        let backend = RedisBackend::start(config, metrics.clone())?;
        let keys = backend.keys().clone();
        Ok(Self::with_backend(Backend::Redis(backend), keys, metrics))
    }

    fn with_backend(backend: Backend, keys: KeyScheme, metrics: Arc<Metrics>) -> Self {
        Self {
            inner: Arc::new(Inner {
                backend,
                keys,
                metrics,
                observer: OnceLock::new(),
            }),
        }
    }

    /// Calls `observer` on every decision from now on, in every clone of this engine. An
    /// engine has at most one observer: returns false (and changes nothing) if it had one.
    pub fn set_observer(&self, observer: Arc<dyn QuotaObserver>) -> bool {
        self.inner.observer.set(observer).is_ok()
    }

    /// Checks one request (cost 1) of `identity` against `policy`, and counts it if allowed.
    ///
    /// `identity` is the quota's partition: a consumer name, a client IP, a JWT subject. It is
    /// stored in clear text in Redis keys: never pass a secret (see [`key`]).
    pub async fn check(&self, policy: &Policy, identity: &str) -> Decision {
        self.check_n(policy, identity, 1).await
    }

    /// Like [`Quota::check`] for a request worth `cost` units (e.g. Envoy's `hits_addend`).
    /// A cost of 0 only reads the counters.
    pub async fn check_n(&self, policy: &Policy, identity: &str, cost: u64) -> Decision {
        let inner = &*self.inner;
        let key = inner.keys.key(policy, identity);
        let decision = match &inner.backend {
            Backend::Local(local) => {
                Decision::counted(policy, local.evaluate(policy, &key, cost, &inner.metrics))
            }
            Backend::Redis(redis) => match redis.decide(policy, &key, cost).await {
                Ok(verdict) => Decision::counted(policy, verdict),
                Err(_) => Decision::unavailable(policy),
            },
        };
        inner.metrics.record(&decision);
        if let Some(observer) = inner.observer.get() {
            observer.on_decision(policy, &decision);
        }
        decision
    }

    /// The engine's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Whether the counters are in Redis (false: in this process).
    pub fn is_redis(&self) -> bool {
        matches!(self.inner.backend, Backend::Redis(_))
    }

    /// Whether the backend can be used now (always true for the in-process one).
    pub fn is_backend_up(&self) -> bool {
        match &self.inner.backend {
            Backend::Local(_) => true,
            Backend::Redis(redis) => redis.is_up(),
        }
    }

    /// Waits until the backend is up or `timeout` passes; returns whether it is up. For start-up
    /// readiness and tests: [`Quota::check`] never waits for a connection.
    pub async fn wait_until_up(&self, timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.is_backend_up() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// The key a check of `identity` under `policy` uses (for debugging and tests).
    pub fn key(&self, policy: &Policy, identity: &str) -> String {
        self.inner.keys.key(policy, identity)
    }
}

impl std::fmt::Debug for Quota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = match &self.inner.backend {
            Backend::Local(_) => "local",
            Backend::Redis(_) => "redis",
        };
        f.debug_struct("Quota")
            .field("backend", &backend)
            .field("keys", &self.inner.keys)
            .finish_non_exhaustive()
    }
}
