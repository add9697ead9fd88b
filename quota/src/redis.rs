//! The Redis backend: counters shared by every proxy and by the RLS, updated by one Lua script
//! per decision (one round trip), on the Redis server's clock.
//!
//! Each call has a short deadline ([`DEFAULT_TIMEOUT`]); a call that misses it, or fails, makes
//! the decision "unavailable", which the policy's [`crate::FailureMode`] turns into allow or
//! refuse. While Redis is known to be down, checks do not touch the network at all and a
//! background task reconnects (see `link.rs`), so an outage costs requests no latency.

mod link;
mod pacer;
mod pipe;
mod scripts;
pub mod url;

use std::sync::Arc;
use std::time::{Duration, Instant};

use self::link::{Link, Severity};
use self::pacer::DeadlinePacer;
use self::scripts::{Reply, ScriptCall};
use self::url::{InvalidRedisUrl, RedisTarget};
use crate::algorithm::{Demand, Verdict};
use crate::clock::duration_micros;
use crate::key::KeyScheme;
use crate::lease::Leases;
use crate::metrics::{Failure, Metrics};
use crate::policy::{Algorithm, Policy};

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
    /// PEM certificates to trust for `rediss://` instead of the system's store (a private CA).
    pub tls_ca_pem: Option<Vec<u8>>,
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
            tls_ca_pem: None,
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
    leases: Leases,
    timeout: Duration,
    /// Keeps arming a call's deadline from waking the runtime's thread (see `pacer.rs`).
    pacer: DeadlinePacer,
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
            pacer: DeadlinePacer::start(link.runtime(), timeout),
            link,
            leases: Leases::new(),
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

    /// One decision for a request of `cost`: from the key's lease when the policy is batched
    /// and one is held, else one script call.
    pub(crate) async fn decide(
        &self,
        policy: &Policy,
        key: &str,
        cost: u64,
    ) -> Result<Verdict, Failure> {
        let Some(batch) = policy.lease().filter(|_| cost == 1) else {
            return self.evaluate(policy, key, Demand::Exact(cost)).await;
        };
        // Before the call is sent: the lease then ends no later than the window in Redis.
        let sent = Instant::now();
        if let Some(spent) = self.leases.take(key, sent) {
            return Ok(Verdict {
                allowed: true,
                remaining: spent.remaining,
                reset_after_us: duration_micros(spent.reset_after),
                retry_after_us: None,
                granted: 1,
            });
        }
        let mut verdict = self.evaluate(policy, key, Demand::UpTo(batch)).await?;
        if verdict.allowed && verdict.granted > 1 {
            let spare = verdict.granted - 1;
            let limit = policy.limit();
            let lifetime = match limit.algorithm {
                // Spent later than taken, a token stretches the bucket's burst: keep that to
                // the time the taken tokens take to refill.
                Algorithm::TokenBucket { .. } => verdict.granted * limit.emission_interval_micros(),
                // Counted in the current window: spend them before it ends.
                Algorithm::FixedWindow | Algorithm::SlidingWindow => verdict.reset_after_us,
            };
            self.leases.put(
                key,
                spare,
                verdict.remaining,
                sent + Duration::from_micros(lifetime),
                sent + Duration::from_micros(verdict.reset_after_us),
            );
            verdict.remaining += spare;
        }
        Ok(verdict)
    }

    /// One decision in a script call (two on `NOSCRIPT`), within the deadline.
    async fn evaluate(
        &self,
        policy: &Policy,
        key: &str,
        demand: Demand,
    ) -> Result<Verdict, Failure> {
        let Some(conn) = self.link.current() else {
            self.metrics.record_failure(Failure::ShortCircuit);
            return Err(Failure::ShortCircuit);
        };
        let script_call = ScriptCall::new(policy, demand);
        let call = conn.decide(&script_call, key);
        self.pacer.touch();
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

fn verdict((allowed, remaining, reset_after, retry_after, granted): Reply) -> Verdict {
    let non_negative = |v: i64| u64::try_from(v).unwrap_or(0);
    Verdict {
        allowed: allowed == 1,
        remaining: non_negative(remaining),
        reset_after_us: non_negative(reset_after),
        retry_after_us: u64::try_from(retry_after).ok(),
        granted: non_negative(granted),
    }
}
