//! The Redis backend: counters shared by every proxy and by the RLS, updated by one Lua script
//! per decision (one round trip), on the Redis server's clock.
//!
//! Each call has a short deadline ([`DEFAULT_TIMEOUT`]); a call that misses it, or fails, makes
//! the decision "unavailable", which the policy's [`crate::FailureMode`] turns into allow or
//! refuse. While Redis is known to be down, checks do not touch the network at all and a
//! background task reconnects (see `link.rs`), so an outage costs requests no latency.

mod link;
mod scripts;
pub mod url;

use std::sync::Arc;
use std::time::Duration;

use self::link::{Link, Severity};
use self::scripts::{Reply, Scripts};
use self::url::{InvalidRedisUrl, RedisTarget};
use crate::algorithm::Verdict;
use crate::key::KeyScheme;
use crate::metrics::{Failure, Metrics};
use crate::policy::Policy;

/// The default deadline for one decision.
///
/// A script runs in tens of microseconds and a round trip inside one zone takes well under a
/// millisecond, so 5 ms is ten times a healthy call: it only fires when something is wrong,
/// and then bounds what a quota check adds to a request. It also stays well under Envoy's
/// default 20 ms deadline for its call to our RLS, which has this call behind it. Raise it
/// when Redis is farther away (another region: tens of ms).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(5);

/// Settings of the Redis backend.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// One of the URL forms in [`url`].
    pub url: String,
    /// Deadline for one decision; past it the decision is unavailable.
    pub timeout: Duration,
    /// Deadline for opening a connection (in the background, never on a request).
    pub connect_timeout: Duration,
    /// Timeouts in a row after which Redis is declared down (errors that mean the connection is
    /// gone declare it at once).
    pub failure_threshold: u32,
    /// First delay between reconnect attempts; doubles up to `reconnect_max`.
    pub reconnect_min: Duration,
    /// Longest delay between reconnect attempts.
    pub reconnect_max: Duration,
    /// The key scheme; the same for every proxy and RLS sharing the counters.
    pub keys: KeyScheme,
}

impl RedisConfig {
    /// The defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: Duration::from_secs(1),
            failure_threshold: 3,
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(1),
            keys: KeyScheme::default(),
        }
    }

    /// The same with another decision deadline.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// Why the Redis backend could not be created.
#[derive(Debug, thiserror::Error)]
pub enum RedisSetupError {
    /// The URL is not one of the supported forms.
    #[error(transparent)]
    Url(#[from] InvalidRedisUrl),
    /// The driver rejected the settings, or there is no tokio runtime.
    #[error("redis quota backend: {0}")]
    Client(#[from] redis::RedisError),
}

pub(crate) struct RedisBackend {
    link: Arc<Link>,
    scripts: Scripts,
    timeout: Duration,
    keys: KeyScheme,
    metrics: Arc<Metrics>,
}

impl RedisBackend {
    /// Parses the URL and starts connecting in the background. Needs a tokio runtime.
    pub(crate) fn start(
        config: RedisConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, RedisSetupError> {
        let target = RedisTarget::parse(&config.url)?;
        let timeout = config.timeout;
        let keys = config.keys.clone();
        let link = Link::start(&target, config, metrics.clone())?;
        Ok(Self {
            link,
            scripts: Scripts::new(),
            timeout,
            keys,
            metrics,
        })
    }

    pub(crate) fn keys(&self) -> &KeyScheme {
        &self.keys
    }

    pub(crate) fn is_up(&self) -> bool {
        self.link.is_up()
    }

    /// One decision: one script call (two on `NOSCRIPT`), within the deadline.
    pub(crate) async fn evaluate(
        &self,
        policy: &Policy,
        key: &str,
        cost: u64,
    ) -> Result<Verdict, Failure> {
        let Some(conn) = self.link.current() else {
            self.metrics.record_failure(Failure::ShortCircuit);
            return Err(Failure::ShortCircuit);
        };
        let call = self.scripts.run(&conn, policy, key, cost);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(reply)) => {
                self.link.on_success();
                Ok(verdict(reply))
            }
            Ok(Err(e)) => {
                let severity = Severity::of(&e);
                if severity == Severity::Benign {
                    tracing::debug!(policy = policy.name(), error = %e, "quota script failed");
                }
                self.link.on_failure(&conn, severity, &e);
                let failure = if severity == Severity::Timeout {
                    Failure::Timeout
                } else {
                    Failure::Error
                };
                self.metrics.record_failure(failure);
                Err(failure)
            }
            Err(_elapsed) => {
                self.link
                    .on_failure(&conn, Severity::Timeout, &"no reply within the timeout");
                self.metrics.record_failure(Failure::Timeout);
                Err(Failure::Timeout)
            }
        }
    }
}

fn verdict((allowed, remaining, reset_after, retry_after): Reply) -> Verdict {
    let non_negative = |v: i64| u64::try_from(v).unwrap_or(0);
    Verdict {
        allowed: allowed == 1,
        remaining: non_negative(remaining),
        reset_after_us: non_negative(reset_after),
        retry_after_us: u64::try_from(retry_after).ok(),
    }
}
