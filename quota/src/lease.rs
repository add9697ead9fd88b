//! Batched mode for hot keys ([`crate::Policy::with_lease`]): tokens a proxy took from Redis in
//! one call and spends locally, one per request, until they run out or their lease ends.
//!
//! A lease ends no later than the window its tokens were counted in (measured from when the
//! call was *sent*, so network latency can only shorten it), or for a token bucket after the
//! time the taken tokens take to refill. The store is bounded: past [`MAX_LEASES`] keys, new
//! leases are not kept and their spare tokens are lost, which only ever admits less.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The most keys holding a lease in one process.
pub(crate) const MAX_LEASES: usize = 100_000;
const SHARDS: usize = 16;

/// Spare tokens for one key.
#[derive(Debug, Clone, Copy)]
struct Lease {
    tokens: u64,
    /// The remaining count Redis reported when the tokens were taken.
    remaining_in_redis: u64,
    expires: Instant,
    reset_at: Instant,
}

/// One token spent from a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Spent {
    /// Redis's remaining at the grant plus the tokens still leased here.
    pub(crate) remaining: u64,
    pub(crate) reset_after: Duration,
}

#[derive(Debug)]
pub(crate) struct Leases {
    shards: Box<[Mutex<HashMap<String, Lease>>]>,
    hasher: RandomState,
}

impl Leases {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, HashMap<String, Lease>> {
        let index = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Spends one leased token of `key`, if it has an unexpired one.
    pub(crate) fn take(&self, key: &str, now: Instant) -> Option<Spent> {
        let mut shard = self.shard(key);
        let lease = shard.get_mut(key)?;
        if now >= lease.expires || lease.tokens == 0 {
            shard.remove(key);
            return None;
        }
        lease.tokens -= 1;
        let spent = Spent {
            remaining: lease.remaining_in_redis + lease.tokens,
            reset_after: lease.reset_at.saturating_duration_since(now),
        };
        if lease.tokens == 0 {
            shard.remove(key);
        }
        Some(spent)
    }

    /// Keeps `tokens` spare tokens of `key` until `expires`, added to any it still holds (two
    /// requests may have refilled at once).
    pub(crate) fn put(
        &self,
        key: &str,
        tokens: u64,
        remaining_in_redis: u64,
        expires: Instant,
        reset_at: Instant,
    ) {
        if tokens == 0 {
            return;
        }
        let mut shard = self.shard(key);
        let now = Instant::now();
        if let Some(lease) = shard.get_mut(key).filter(|l| now < l.expires) {
            lease.tokens += tokens;
            lease.remaining_in_redis = lease.remaining_in_redis.min(remaining_in_redis);
            // The older tokens must not outlive their own window.
            lease.expires = lease.expires.min(expires);
            return;
        }
        if shard.len() >= MAX_LEASES / SHARDS {
            shard.retain(|_, l| now < l.expires);
            if shard.len() >= MAX_LEASES / SHARDS {
                return;
            }
        }
        shard.insert(
            key.to_owned(),
            Lease {
                tokens,
                remaining_in_redis,
                expires,
                reset_at,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spends_until_empty_or_expired() {
        let leases = Leases::new();
        let now = Instant::now();
        let later = now + Duration::from_secs(10);
        leases.put("k", 2, 5, later, later);
        assert_eq!(leases.take("k", now).map(|s| s.remaining), Some(6));
        assert_eq!(leases.take("k", now).map(|s| s.remaining), Some(5));
        assert_eq!(leases.take("k", now), None);
        leases.put("k", 3, 0, now + Duration::from_secs(1), later);
        assert!(leases.take("k", now).is_some());
        assert_eq!(leases.take("k", now + Duration::from_secs(1)), None);
        // Expired and removed: nothing left even at an earlier instant.
        assert_eq!(leases.take("k", now), None);
    }

    #[test]
    fn concurrent_refills_merge() {
        let leases = Leases::new();
        let now = Instant::now();
        leases.put(
            "k",
            2,
            8,
            now + Duration::from_secs(5),
            now + Duration::from_secs(5),
        );
        leases.put(
            "k",
            2,
            6,
            now + Duration::from_secs(9),
            now + Duration::from_secs(9),
        );
        let spent: Vec<_> = (0..5).map(|_| leases.take("k", now)).collect();
        assert_eq!(spent.iter().filter(|s| s.is_some()).count(), 4);
        leases.put(
            "k",
            1,
            0,
            now + Duration::from_secs(9),
            now + Duration::from_secs(9),
        );
        leases.put(
            "k",
            1,
            0,
            now + Duration::from_secs(3),
            now + Duration::from_secs(3),
        );
        // The merged lease ends with the earlier expiry.
        assert_eq!(leases.take("k", now + Duration::from_secs(4)), None);
    }
}
