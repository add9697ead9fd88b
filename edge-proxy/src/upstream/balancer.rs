//! Load balancing: which endpoint of a cluster gets the next request.
//!
//! In the request flow this sits between the cluster and the connection pool: cluster → load
//! balancer → pooled connection. Routing has picked a cluster; the upstream layer asks that
//! cluster's [`Balancer`] for an endpoint index and then takes a pooled connection to it.
//!
//! A [`Balancer`] is built once per cluster per config snapshot from the cluster's [`LbPolicy`]
//! and its endpoints' weights, and is then only read. Health and outlier ejection change faster
//! than snapshots, so they are not baked in: every [`Balancer::pick`] is told which endpoints
//! may get traffic and how many requests each has in flight, and skips the others. Envoy
//! instead rebuilds its tables when health changes; skipping keeps the data path free of
//! rebuilds and, for the hashing policies, moves only the keys of the endpoints that went away.
//!
//! The policies follow Envoy's semantics (`lb_policy`): weighted round robin, least request
//! (power of two choices, or weights scaled by load), weighted random, ketama ring hash and
//! Maglev. Rings and tables hash endpoint *indexes*, so they are consistent across snapshots
//! only while the endpoints keep their order. [`Balancer::pick`] takes no lock and allocates
//! nothing.

use std::fmt;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::Rng as _;
use xxhash_rust::xxh64::xxh64;

use crate::config::cluster::LbPolicy;

#[cfg(test)]
mod tests;

/// Round robin schedules hold at most this many slots (or one per endpoint, if more); larger
/// weight sums are scaled down, keeping every endpoint at least one slot.
const MAX_SCHEDULE_LEN: u64 = 1 << 16;

/// Random draws that may land on unavailable endpoints before a pick scans for available ones.
const RANDOM_TRIES: usize = 4;

/// A ring lookup walks at most this many entries (or 16 per endpoint, if more) looking for an
/// available endpoint before it falls back to a scan. Bounds the work when most are down.
const MIN_RING_WALK: usize = 1024;

/// How often a Maglev lookup rehashes past unavailable endpoints before it falls back to a scan.
const MAGLEV_REHASHES: usize = 32;

/// Seeds for a Maglev endpoint's offset and skip: two independent hashes of one key.
const MAGLEV_OFFSET_SEED: u64 = 0;
const MAGLEV_SKIP_SEED: u64 = 1;

/// Marks an unfilled Maglev slot while the table is built; never an endpoint index.
const EMPTY_SLOT: u32 = u32::MAX;

/// Picks endpoints for one cluster, following its [`LbPolicy`].
///
/// Built once per cluster per config snapshot from the endpoints' weights (index i = endpoint i).
pub struct Balancer {
    policy: LbPolicy,
    endpoints: usize,
    kind: Kind,
}

/// The policy's precomputed state.
enum Kind {
    RoundRobin(RoundRobin),
    LeastRequest(LeastRequest),
    Random(WeightedRandom),
    RingHash(Ring),
    Maglev(Maglev),
}

impl Balancer {
    /// Builds the balancer for endpoints with these weights (a weight of 0 counts as 1).
    pub fn new(policy: LbPolicy, weights: &[u32]) -> Balancer {
        // Endpoint indexes are stored as u32 (and Maglev reserves u32::MAX); no cluster comes
        // anywhere near that many endpoints.
        let weights = &weights[..weights.len().min(EMPTY_SLOT as usize)];
        let kind = match policy {
            LbPolicy::RoundRobin => Kind::RoundRobin(RoundRobin::new(weights)),
            LbPolicy::LeastRequest { choice_count } => {
                Kind::LeastRequest(LeastRequest::new(weights, choice_count))
            }
            LbPolicy::Random => Kind::Random(WeightedRandom::new(weights)),
            LbPolicy::RingHash {
                minimum_ring_size,
                maximum_ring_size,
            } => Kind::RingHash(Ring::new(weights, minimum_ring_size, maximum_ring_size)),
            LbPolicy::Maglev { table_size } => Kind::Maglev(Maglev::new(weights, table_size)),
        };
        Balancer {
            policy,
            endpoints: weights.len(),
            kind,
        }
    }

    /// Picks an endpoint index. `hash`: the request's hash for ring_hash/maglev (None → behave
    /// like random, as Envoy does without a hash policy).
    /// `available(i)`: whether endpoint i may get traffic (healthy and not ejected); unavailable
    /// ones are skipped.
    /// `load(i)`: requests in flight on endpoint i (used by least_request).
    /// Returns None only when no endpoint is available (or there are none).
    pub fn pick(
        &self,
        hash: Option<u64>,
        available: &dyn Fn(usize) -> bool,
        load: &dyn Fn(usize) -> u64,
    ) -> Option<usize> {
        if self.endpoints == 0 {
            return None;
        }
        match &self.kind {
            Kind::RoundRobin(rr) => rr.pick(available),
            Kind::LeastRequest(lr) => lr.pick(available, load),
            Kind::Random(random) => random.pick(available),
            // Without a hash Envoy hashes on a random number, which spreads by ring share.
            Kind::RingHash(ring) => ring.pick(hash.unwrap_or_else(random_hash), available),
            Kind::Maglev(maglev) => maglev.pick(hash.unwrap_or_else(random_hash), available),
        }
    }

    /// The number of endpoints the balancer was built for.
    pub fn len(&self) -> usize {
        self.endpoints
    }

    /// Whether the balancer has no endpoints (every pick is None).
    pub fn is_empty(&self) -> bool {
        self.endpoints == 0
    }
}

impl fmt::Debug for Balancer {
    // Rings and tables run to millions of entries: show their sizes, not their contents.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries = match &self.kind {
            Kind::RoundRobin(rr) => rr.schedule.len(),
            Kind::LeastRequest(_) => self.endpoints,
            Kind::Random(random) => random.cumulative.len(),
            Kind::RingHash(ring) => ring.hashes.len(),
            Kind::Maglev(maglev) => maglev.table.len(),
        };
        f.debug_struct("Balancer")
            .field("policy", &self.policy)
            .field("endpoints", &self.endpoints)
            .field("entries", &entries)
            .finish()
    }
}

fn random_hash() -> u64 {
    rand::rng().random()
}

/// The first available endpoint at or after `hash % endpoints`, wrapping. Deterministic in the
/// hash, so the hashing policies stay consistent even when they fall back to it.
fn scan_from(hash: u64, endpoints: usize, available: &dyn Fn(usize) -> bool) -> Option<usize> {
    let start = (hash % endpoints as u64) as usize;
    (0..endpoints)
        .map(|step| (start + step) % endpoints)
        .find(|&i| available(i))
}

/// A uniformly random available endpoint: a few blind draws, then an exact count-and-draw.
fn uniform_available(endpoints: usize, available: &dyn Fn(usize) -> bool) -> Option<usize> {
    let mut rng = rand::rng();
    for _ in 0..RANDOM_TRIES {
        let i = rng.random_range(0..endpoints);
        if available(i) {
            return Some(i);
        }
    }
    let count = (0..endpoints).filter(|&i| available(i)).count();
    if count == 0 {
        return None;
    }
    let nth = rng.random_range(0..count);
    // `available` may change between the two passes; take what is there.
    (0..endpoints).filter(|&i| available(i)).nth(nth)
}

/// Weighted round robin over a precomputed, interleaved schedule.
struct RoundRobin {
    /// Endpoint indexes; endpoint i appears in proportion to its weight, spread out.
    schedule: Box<[u32]>,
    /// The next slot; only ever incremented, and taken modulo the schedule's length.
    cursor: AtomicUsize,
}

impl RoundRobin {
    fn new(weights: &[u32]) -> RoundRobin {
        let slots = schedule_slots(weights);
        // Earliest deadline first: endpoint i's k-th slot is due at (k + phase_i) / slots_i,
        // ties by index. Half-step phases interleave, so 3:1 gives a, a, b, a rather than
        // a, a, a, b; endpoints of equal weight get phases spread over (0, 1), so that
        // 10:1:1:1 does not bunch b, c and d together at 1/2.
        let mut by_weight: Vec<(u32, u32)> = slots.iter().zip(0..).map(|(&w, i)| (w, i)).collect();
        by_weight.sort_unstable();
        let mut entries: Vec<(u64, u64, u32)> = Vec::new();
        for class in by_weight.chunk_by(|a, b| a.0 == b.0) {
            let members = class.len() as u64;
            for (rank, &(w, i)) in (0u64..).zip(class) {
                let w = u64::from(w);
                // (k + (2 rank + 1) / (2 members)) / w, as one fraction.
                let den = 2 * members * w;
                entries.extend((0..w).map(|k| (2 * members * k + 2 * rank + 1, den, i)));
            }
        }
        entries.sort_unstable_by(|a, b| {
            let (a_num, a_den, a_i) = *a;
            let (b_num, b_den, b_i) = *b;
            (u128::from(a_num) * u128::from(b_den))
                .cmp(&(u128::from(b_num) * u128::from(a_den)))
                .then(a_i.cmp(&b_i))
        });
        let schedule: Box<[u32]> = entries.into_iter().map(|(_, _, i)| i).collect();
        // Start at a random slot, so that proxies getting the same snapshot at the same moment
        // do not all send their next requests to the same endpoint.
        let start = if schedule.is_empty() {
            0
        } else {
            rand::rng().random_range(0..schedule.len())
        };
        RoundRobin {
            schedule,
            cursor: AtomicUsize::new(start),
        }
    }

    fn pick(&self, available: &dyn Fn(usize) -> bool) -> Option<usize> {
        let len = self.schedule.len();
        if len == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        for step in 0..len {
            let i = self.schedule[start.wrapping_add(step) % len] as usize;
            if available(i) {
                // Consume the skipped slots too, so the next pick continues after this one
                // instead of landing on it again: the unavailable endpoints' turns are shared
                // out along the schedule rather than all going to their successor.
                if step > 0 {
                    self.cursor.fetch_add(step, Ordering::Relaxed);
                }
                return Some(i);
            }
        }
        None
    }
}

/// How many round robin slots each endpoint gets: its weight, divided by the weights' common
/// divisor and, if the sum is still over [`MAX_SCHEDULE_LEN`], scaled down (at least 1).
fn schedule_slots(weights: &[u32]) -> Vec<u32> {
    let weights: Vec<u64> = weights.iter().map(|&w| u64::from(w.max(1))).collect();
    let divisor = weights.iter().fold(0, |d, &w| gcd(d, w)).max(1);
    let total: u64 = weights.iter().map(|w| w / divisor).sum();
    let cap = MAX_SCHEDULE_LEN.max(weights.len() as u64);
    weights
        .iter()
        .map(|&w| {
            let w = w / divisor;
            let slots = if total > cap {
                (u128::from(w) * u128::from(cap) / u128::from(total)).max(1) as u64
            } else {
                w
            };
            // Both branches are at most the weight, which came from a u32.
            u32::try_from(slots).unwrap_or(u32::MAX)
        })
        .collect()
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Least request: power of two (or `choice_count`) choices when all weights are equal; weighted
/// random by `weight / (in flight + 1)` otherwise, as Envoy does with `active_request_bias` 1.0.
struct LeastRequest {
    weights: Box<[u32]>,
    choice_count: usize,
    equal_weights: bool,
}

impl LeastRequest {
    fn new(weights: &[u32], choice_count: u32) -> LeastRequest {
        let weights: Box<[u32]> = weights.iter().map(|&w| w.max(1)).collect();
        let equal_weights = weights.windows(2).all(|pair| pair[0] == pair[1]);
        LeastRequest {
            weights,
            // Config guarantees at least 2; fewer would not compare anything.
            choice_count: usize::try_from(choice_count).unwrap_or(usize::MAX).max(2),
            equal_weights,
        }
    }

    fn pick(
        &self,
        available: &dyn Fn(usize) -> bool,
        load: &dyn Fn(usize) -> u64,
    ) -> Option<usize> {
        if self.equal_weights {
            self.pick_least(available, load)
        } else {
            self.pick_weighted(available, load)
        }
    }

    /// The least loaded of `choice_count` uniformly random available endpoints (drawn with
    /// replacement, as Envoy does); ties go to the first drawn.
    fn pick_least(
        &self,
        available: &dyn Fn(usize) -> bool,
        load: &dyn Fn(usize) -> u64,
    ) -> Option<usize> {
        let endpoints = self.weights.len();
        let mut best: Option<(usize, u64)> = None;
        let mut consider = |i: usize| {
            let l = load(i);
            if best.is_none_or(|(_, best_load)| l < best_load) {
                best = Some((i, l));
            }
        };
        if self.choice_count >= endpoints {
            // As many choices as endpoints: compare them all. Starting at a random endpoint
            // breaks ties randomly, rather than always towards endpoint 0.
            let start = rand::rng().random_range(0..endpoints);
            (0..endpoints)
                .map(|step| (start + step) % endpoints)
                .filter(|&i| available(i))
                .for_each(&mut consider);
        } else {
            for _ in 0..self.choice_count {
                match uniform_available(endpoints, available) {
                    Some(i) => consider(i),
                    None => return None,
                }
            }
        }
        best.map(|(i, _)| i)
    }

    /// Weighted random among available endpoints, by `weight / (load + 1)`.
    fn pick_weighted(
        &self,
        available: &dyn Fn(usize) -> bool,
        load: &dyn Fn(usize) -> u64,
    ) -> Option<usize> {
        let effective = |i: usize| f64::from(self.weights[i]) / (load(i) as f64 + 1.0);
        let total: f64 = (0..self.weights.len())
            .filter(|&i| available(i))
            .map(effective)
            .sum();
        if total <= 0.0 {
            return None;
        }
        let mut target = rand::rng().random::<f64>() * total;
        let mut last = None;
        for i in (0..self.weights.len()).filter(|&i| available(i)) {
            target -= effective(i);
            if target < 0.0 {
                return Some(i);
            }
            last = Some(i);
        }
        // Rounding, or loads that changed since the first pass, left the draw past the end.
        last
    }
}

/// Weighted random: a draw over cumulative weights, binary searched.
struct WeightedRandom {
    /// `cumulative[i]` is the sum of the weights of endpoints 0..=i.
    cumulative: Box<[u64]>,
}

impl WeightedRandom {
    fn new(weights: &[u32]) -> WeightedRandom {
        let cumulative = weights
            .iter()
            .scan(0u64, |sum, &w| {
                *sum += u64::from(w.max(1));
                Some(*sum)
            })
            .collect();
        WeightedRandom { cumulative }
    }

    fn weight(&self, i: usize) -> u64 {
        self.cumulative[i] - if i == 0 { 0 } else { self.cumulative[i - 1] }
    }

    fn pick(&self, available: &dyn Fn(usize) -> bool) -> Option<usize> {
        let total = *self.cumulative.last()?;
        let mut rng = rand::rng();
        // Draws that hit an available endpoint are already weighted correctly among the
        // available ones; only when they keep missing is the exact, linear pick needed.
        for _ in 0..RANDOM_TRIES {
            let draw = rng.random_range(0..total);
            let i = self.cumulative.partition_point(|&c| c <= draw);
            if available(i) {
                return Some(i);
            }
        }
        let endpoints = self.cumulative.len();
        let available_total: u64 = (0..endpoints)
            .filter(|&i| available(i))
            .map(|i| self.weight(i))
            .sum();
        if available_total == 0 {
            return None;
        }
        let mut draw = rng.random_range(0..available_total);
        let mut last = None;
        for i in (0..endpoints).filter(|&i| available(i)) {
            let w = self.weight(i);
            if draw < w {
                return Some(i);
            }
            draw -= w;
            last = Some(i);
        }
        // `available` changed between the passes.
        last
    }
}

/// A ketama hash ring: sorted entry hashes, each owned by an endpoint.
struct Ring {
    /// Sorted ascending.
    hashes: Box<[u64]>,
    /// `owners[k]` owns `hashes[k]`.
    owners: Box<[u32]>,
    endpoints: usize,
}

impl Ring {
    /// Envoy's sizing: the ring is scaled so that the lightest endpoint gets its share of
    /// `minimum` entries, then capped at `maximum`; each endpoint gets entries in proportion
    /// to its weight.
    fn new(weights: &[u32], minimum: u64, maximum: u64) -> Ring {
        let endpoints = weights.len();
        let total: u64 = weights.iter().map(|&w| u64::from(w.max(1))).sum();
        let lightest = weights.iter().map(|&w| w.max(1)).min().unwrap_or(1);
        let mut entries: Vec<(u64, u32)> = Vec::new();
        if total > 0 {
            let min_normalized = f64::from(lightest) / total as f64;
            let scale =
                ((min_normalized * minimum as f64).ceil() / min_normalized).min(maximum as f64);
            let maximum = usize::try_from(maximum).unwrap_or(usize::MAX);
            entries.reserve(maximum.min(scale.ceil() as usize));
            let mut key = String::new();
            let mut current = 0.0;
            let mut target = 0.0;
            for (i, &w) in weights.iter().enumerate() {
                target += scale * f64::from(w.max(1)) / total as f64;
                let mut replica = 0u64;
                // Float rounding may ask for one entry past the maximum; refuse it.
                while current < target && entries.len() < maximum {
                    key.clear();
                    // Writing to a String cannot fail.
                    let _ = write!(key, "{i}_{replica}");
                    entries.push((xxh64(key.as_bytes(), 0), i as u32));
                    current += 1.0;
                    replica += 1;
                }
            }
        }
        entries.sort_unstable();
        let (hashes, owners) = entries.into_iter().unzip::<_, _, Vec<_>, Vec<_>>();
        Ring {
            hashes: hashes.into_boxed_slice(),
            owners: owners.into_boxed_slice(),
            endpoints,
        }
    }

    fn pick(&self, hash: u64, available: &dyn Fn(usize) -> bool) -> Option<usize> {
        let len = self.hashes.len();
        if len > 0 {
            let mut k = self.hashes.partition_point(|&h| h < hash);
            let walk = len.min(MIN_RING_WALK.max(self.endpoints.saturating_mul(16)));
            let mut checked = EMPTY_SLOT;
            for _ in 0..walk {
                if k == len {
                    k = 0;
                }
                let owner = self.owners[k];
                // Neighbouring entries often share an owner; ask about each run once.
                if owner != checked {
                    if available(owner as usize) {
                        return Some(owner as usize);
                    }
                    checked = owner;
                }
                k += 1;
            }
        }
        // No ring (a maximum of 0), or nothing available near the hash: still answer while
        // any endpoint can take the request.
        scan_from(hash, self.endpoints, available)
    }
}

/// A Maglev lookup table: `table[hash % size]` is the endpoint.
struct Maglev {
    table: Box<[u32]>,
    endpoints: usize,
}

impl Maglev {
    /// Maglev's population: every endpoint walks its own permutation of the slots (an offset
    /// and a skip from two hashes of its key) and takes turns claiming the next free slot.
    /// Weights work as in Envoy: the heaviest endpoint takes a turn every round, one of a third
    /// its weight every third round, so slots are shared in proportion to weight.
    fn new(weights: &[u32], table_size: u64) -> Maglev {
        let endpoints = weights.len();
        let size = usize::try_from(table_size).unwrap_or(usize::MAX);
        if endpoints == 0 || size == 0 {
            return Maglev {
                table: Box::new([]),
                endpoints,
            };
        }
        struct Builder {
            weight: u64,
            /// The turn that round `r` may take once `r * weight` reaches it.
            target: u64,
            /// The slot this endpoint tries next.
            position: u64,
            skip: u64,
        }
        let mut key = String::new();
        let mut builders: Vec<Builder> = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                key.clear();
                // Writing to a String cannot fail.
                let _ = write!(key, "{i}");
                let offset = xxh64(key.as_bytes(), MAGLEV_OFFSET_SEED) % table_size;
                // A skip in 1..size visits every slot when size is prime (config ensures it).
                let skip = xxh64(key.as_bytes(), MAGLEV_SKIP_SEED) % (table_size - 1).max(1) + 1;
                Builder {
                    weight: u64::from(w.max(1)),
                    target: 0,
                    position: offset,
                    skip,
                }
            })
            .collect();
        let heaviest = builders.iter().map(|b| b.weight).max().unwrap_or(1);
        let mut table = vec![EMPTY_SLOT; size];
        let mut filled = 0;
        let mut round = 1u64;
        // The heaviest endpoint takes a turn every round, so this ends after at most `size`
        // rounds.
        while filled < size {
            for (i, b) in builders.iter_mut().enumerate() {
                if filled == size {
                    break;
                }
                if round.saturating_mul(b.weight) < b.target {
                    continue;
                }
                b.target = b.target.saturating_add(heaviest);
                let mut steps = 0;
                while table[b.position as usize] != EMPTY_SLOT {
                    // With a prime size the permutation reaches every slot within `size`
                    // steps; should it not, probe linearly so the build still ends.
                    b.position = if steps < table_size {
                        (b.position + b.skip) % table_size
                    } else {
                        (b.position + 1) % table_size
                    };
                    steps += 1;
                }
                table[b.position as usize] = i as u32;
                b.position = (b.position + b.skip) % table_size;
                filled += 1;
            }
            round += 1;
        }
        Maglev {
            table: table.into_boxed_slice(),
            endpoints,
        }
    }

    fn pick(&self, hash: u64, available: &dyn Fn(usize) -> bool) -> Option<usize> {
        let size = self.table.len() as u64;
        if size > 0 {
            let mut h = hash;
            for _ in 0..MAGLEV_REHASHES {
                let i = self.table[(h % size) as usize] as usize;
                if available(i) {
                    return Some(i);
                }
                // Another slot, pseudo-random but fixed for this hash: keys of an unavailable
                // endpoint spread over the others by table share, and stay put while it is out.
                h = xxh64(&h.to_le_bytes(), 0);
            }
        }
        scan_from(hash, self.endpoints, available)
    }
}
