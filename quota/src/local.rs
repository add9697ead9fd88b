//! The in-process backend: counters in this process's memory, for a proxy running without
//! Redis (local-only quotas: each replica enforces the limit on its own) and for `tollgate dev`.
//!
//! Keys are spread over mutex-guarded shards so concurrent requests rarely contend. Memory is
//! bounded: expired entries are swept every 1024 writes to a shard, and a shard that
//! is still full drops the entry closest to expiry (counted in
//! [`crate::MetricsSnapshot::evictions`]) — under a flood of distinct identities the bound wins
//! over exactness, so a dropped identity starts afresh.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher as _;
use std::sync::{Arc, Mutex};

use crate::algorithm::{self, Demand, State, Verdict};
use crate::clock::{Clock, MonotonicClock};
use crate::metrics::Metrics;
use crate::policy::Policy;

/// A shard sweeps its expired entries after this many writes.
pub(crate) const SWEEP_EVERY: u32 = 1024;

/// Settings of the in-process backend.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Number of shards (locks); rounded up to at least 1.
    pub shards: usize,
    /// The most keys kept in memory, over all shards.
    pub max_entries: usize,
    /// The time source; [`crate::ManualClock`] in tests.
    pub clock: Arc<dyn Clock>,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self {
            shards: 32,
            max_entries: 100_000,
            clock: Arc::new(MonotonicClock::new()),
        }
    }
}

impl LocalConfig {
    /// The defaults with another clock.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            ..Self::default()
        }
    }
}

#[derive(Debug)]
pub(crate) struct LocalBackend {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    hasher: RandomState,
    clock: Arc<dyn Clock>,
}

#[derive(Debug, Default)]
struct Shard {
    entries: HashMap<String, Entry>,
    writes_since_sweep: u32,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    state: State,
    expires_at: u64,
}

impl LocalBackend {
    pub(crate) fn new(config: LocalConfig) -> Self {
        let shards = config.shards.max(1);
        Self {
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            per_shard: config.max_entries.div_ceil(shards).max(1),
            hasher: RandomState::new(),
            clock: config.clock,
        }
    }

    /// Evaluates and records one request of `cost` for `key` under `policy`.
    pub(crate) fn evaluate(
        &self,
        policy: &Policy,
        key: &str,
        cost: u64,
        metrics: &Metrics,
    ) -> Verdict {
        let now = self.clock.now_micros();
        let index = (self.hasher.hash_one(key) % self.shards.len() as u64) as usize;
        // A panic while holding the lock cannot leave an entry half-written: keep going.
        let mut shard = self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let state = shard
            .entries
            .get(key)
            .filter(|e| now < e.expires_at)
            .map(|e| e.state);
        let (verdict, update) =
            algorithm::evaluate(policy.limit(), state, now, Demand::Exact(cost));
        if let Some(update) = update {
            shard.store(key, update, now, self.per_shard, metrics);
        }
        verdict
    }

    /// Keys currently held (expired ones included until swept).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).entries.len())
            .sum()
    }
}

impl Shard {
    fn store(
        &mut self,
        key: &str,
        update: algorithm::Update,
        now: u64,
        capacity: usize,
        metrics: &Metrics,
    ) {
        let entry = Entry {
            state: update.state,
            expires_at: update.expires_at,
        };
        if let Some(existing) = self.entries.get_mut(key) {
            *existing = entry;
            return;
        }
        self.writes_since_sweep += 1;
        if self.writes_since_sweep >= SWEEP_EVERY || self.entries.len() >= capacity {
            self.writes_since_sweep = 0;
            self.entries.retain(|_, e| now < e.expires_at);
        }
        if self.entries.len() >= capacity {
            let soonest = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.expires_at)
                .map(|(k, _)| k.clone());
            if let Some(victim) = soonest {
                self.entries.remove(&victim);
                metrics.record_eviction();
            }
        }
        self.entries.insert(key.to_owned(), entry);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::clock::ManualClock;
    use crate::policy::{FailureMode, Limit};

    fn backend(clock: &ManualClock, shards: usize, max_entries: usize) -> LocalBackend {
        LocalBackend::new(LocalConfig {
            shards,
            max_entries,
            clock: Arc::new(clock.clone()),
        })
    }

    fn fixed(requests: u64, window: Duration) -> Policy {
        Policy::new(
            "p",
            Limit::fixed_window(requests, window),
            FailureMode::Open,
        )
        .unwrap()
    }

    #[test]
    fn keys_are_independent() {
        let clock = ManualClock::default();
        let local = backend(&clock, 4, 100);
        let metrics = Metrics::default();
        let policy = fixed(2, Duration::from_secs(1));
        for key in ["a", "b", "c"] {
            assert!(local.evaluate(&policy, key, 1, &metrics).allowed);
            assert!(local.evaluate(&policy, key, 1, &metrics).allowed);
            assert!(!local.evaluate(&policy, key, 1, &metrics).allowed);
        }
    }

    #[test]
    fn expired_entries_are_swept() {
        let clock = ManualClock::default();
        let local = backend(&clock, 1, 10_000);
        let metrics = Metrics::default();
        let policy = fixed(1, Duration::from_secs(1));
        for i in 0..1000 {
            local.evaluate(&policy, &format!("k{i}"), 1, &metrics);
        }
        assert_eq!(local.len(), 1000);
        clock.advance(Duration::from_secs(2));
        // The sweep runs on the 1024th new key: the first 1000 are gone by then.
        for i in 0..100 {
            local.evaluate(&policy, &format!("new{i}"), 1, &metrics);
        }
        assert_eq!(local.len(), 100);
        assert_eq!(metrics.snapshot().evictions, 0);
    }

    #[test]
    fn memory_is_bounded() {
        let clock = ManualClock::default();
        let local = backend(&clock, 2, 50);
        let metrics = Metrics::default();
        let policy = fixed(1, Duration::from_secs(3600));
        for i in 0..1000 {
            clock.advance(Duration::from_millis(1));
            assert!(
                local
                    .evaluate(&policy, &format!("k{i}"), 1, &metrics)
                    .allowed
            );
            assert!(local.len() <= 50, "{} entries", local.len());
        }
        assert!(metrics.snapshot().evictions >= 950);
        // The newest keys survive; the oldest were dropped and start afresh.
        assert!(!local.evaluate(&policy, "k999", 1, &metrics).allowed);
        assert!(local.evaluate(&policy, "k0", 1, &metrics).allowed);
    }
}
