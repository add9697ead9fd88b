use std::sync::atomic::Ordering;

use xxhash_rust::xxh64::xxh64;

use super::*;

const RING: LbPolicy = LbPolicy::RingHash {
    minimum_ring_size: 1024,
    maximum_ring_size: 8 * 1024 * 1024,
};
const MAGLEV: LbPolicy = LbPolicy::Maglev { table_size: 65_537 };
const P2C: LbPolicy = LbPolicy::LeastRequest { choice_count: 2 };

const ALL_POLICIES: [LbPolicy; 5] = [LbPolicy::RoundRobin, P2C, LbPolicy::Random, RING, MAGLEV];

fn all(_: usize) -> bool {
    true
}

fn none(_: usize) -> bool {
    false
}

fn idle(_: usize) -> u64 {
    0
}

/// Deterministic, well-spread request hashes.
fn key_hash(key: u64) -> u64 {
    xxh64(&key.to_le_bytes(), 42)
}

/// How often each endpoint is picked in `picks` picks.
fn counts(
    balancer: &Balancer,
    picks: usize,
    mut hash: impl FnMut(usize) -> Option<u64>,
    available: &dyn Fn(usize) -> bool,
    load: &dyn Fn(usize) -> u64,
) -> Vec<usize> {
    let mut counts = vec![0; balancer.len()];
    for n in 0..picks {
        let i = balancer
            .pick(hash(n), available, load)
            .expect("an endpoint is available");
        counts[i] += 1;
    }
    counts
}

/// Asserts that each endpoint got its weight's share of `picks`, within `tolerance` (a
/// fraction of that share).
fn assert_shares(counts: &[usize], weights: &[u32], tolerance: f64) {
    let picks: usize = counts.iter().sum();
    let total: u32 = weights.iter().sum();
    for (i, (&count, &weight)) in counts.iter().zip(weights).enumerate() {
        let expected = picks as f64 * f64::from(weight) / f64::from(total);
        let off = (count as f64 - expected).abs() / expected;
        assert!(
            off <= tolerance,
            "endpoint {i}: {count} picks, expected {expected:.0} ± {:.0}% (counts {counts:?})",
            tolerance * 100.0
        );
    }
}

fn round_robin_from_slot(weights: &[u32], slot: usize) -> Balancer {
    let balancer = Balancer::new(LbPolicy::RoundRobin, weights);
    let Kind::RoundRobin(rr) = &balancer.kind else {
        unreachable!("built as round robin")
    };
    rr.cursor.store(slot, Ordering::Relaxed);
    balancer
}

fn schedule(balancer: &Balancer) -> Vec<usize> {
    let Kind::RoundRobin(rr) = &balancer.kind else {
        unreachable!("built as round robin")
    };
    rr.schedule.iter().map(|&i| i as usize).collect()
}

fn ring_len(balancer: &Balancer) -> usize {
    let Kind::RingHash(ring) = &balancer.kind else {
        unreachable!("built as ring hash")
    };
    assert_eq!(ring.hashes.len(), ring.owners.len());
    assert!(ring.hashes.is_sorted());
    ring.hashes.len()
}

fn maglev_table(balancer: &Balancer) -> &[u32] {
    let Kind::Maglev(maglev) = &balancer.kind else {
        unreachable!("built as maglev")
    };
    &maglev.table
}

#[test]
fn balancer_is_send_sync_debug_and_debug_is_short() {
    fn assert_send_sync<T: Send + Sync + fmt::Debug>() {}
    assert_send_sync::<Balancer>();

    let debug = format!("{:?}", Balancer::new(MAGLEV, &[1, 2, 3]));
    assert_eq!(
        debug,
        "Balancer { policy: Maglev { table_size: 65537 }, endpoints: 3, entries: 65537 }"
    );
}

#[test]
fn no_endpoints_pick_none() {
    for policy in ALL_POLICIES {
        let balancer = Balancer::new(policy, &[]);
        assert!(balancer.is_empty(), "{policy:?}");
        assert_eq!(balancer.len(), 0);
        assert_eq!(balancer.pick(None, &all, &idle), None, "{policy:?}");
        assert_eq!(balancer.pick(Some(7), &all, &idle), None, "{policy:?}");
    }
}

#[test]
fn nothing_available_picks_none() {
    for policy in ALL_POLICIES {
        for weights in [&[1][..], &[1, 1, 1], &[5, 1, 3, 9]] {
            let balancer = Balancer::new(policy, weights);
            assert_eq!(balancer.len(), weights.len());
            assert!(!balancer.is_empty());
            for hash in [None, Some(0), Some(u64::MAX), Some(key_hash(1))] {
                assert_eq!(
                    balancer.pick(hash, &none, &idle),
                    None,
                    "{policy:?} {weights:?}"
                );
            }
        }
    }
}

#[test]
fn every_policy_finds_the_one_available_endpoint() {
    let weights = [7, 1, 3, 1, 2, 9, 1, 1];
    for policy in ALL_POLICIES {
        let balancer = Balancer::new(policy, &weights);
        for up in 0..weights.len() {
            for n in 0..50 {
                let picked = balancer.pick(Some(key_hash(n)), &|i| i == up, &idle);
                assert_eq!(picked, Some(up), "{policy:?}");
            }
            assert_eq!(balancer.pick(None, &|i| i == up, &idle), Some(up));
        }
    }
}

#[test]
fn zero_weights_count_as_one() {
    for policy in ALL_POLICIES {
        let balancer = Balancer::new(policy, &[0, 0]);
        let counts = counts(&balancer, 2000, |n| Some(key_hash(n as u64)), &all, &idle);
        assert!(counts.iter().all(|&c| c > 0), "{policy:?}: {counts:?}");
    }
}

#[test]
fn round_robin_is_exactly_proportional() {
    for weights in [&[3, 1][..], &[1, 1, 1, 1], &[5, 2, 2, 1], &[300, 100]] {
        let total: u32 = weights.iter().sum();
        let balancer = Balancer::new(LbPolicy::RoundRobin, weights);
        let counts = counts(&balancer, 1000, |_| None, &all, &idle);
        for (&count, &weight) in counts.iter().zip(weights) {
            assert_eq!(
                count as u32,
                1000 * weight / total,
                "{weights:?}: {counts:?}"
            );
        }
    }
}

#[test]
fn round_robin_interleaves() {
    // 3:1 is a, a, b, a; not a, a, a, b.
    let balancer = round_robin_from_slot(&[3, 1], 0);
    let picks: Vec<_> = (0..8)
        .map(|_| balancer.pick(None, &all, &idle))
        .collect::<Option<_>>()
        .expect("all available");
    assert_eq!(picks, [0, 0, 1, 0, 0, 0, 1, 0]);

    // Equal weights rotate strictly.
    let balancer = round_robin_from_slot(&[2, 2, 2], 0);
    assert_eq!(schedule(&balancer), [0, 1, 2]);

    // Over any stretch of the repeating schedule, each endpoint's count stays within 1.5 of
    // its share. A block schedule (all of a's turns, then all of b's) is off by 2 or more.
    for weights in [
        &[5, 4][..],
        &[4, 4, 1],
        &[7, 2, 1],
        &[10, 1, 1, 1],
        &[1, 1, 1, 1, 1, 10],
    ] {
        let balancer = Balancer::new(LbPolicy::RoundRobin, weights);
        let interleaved = schedule(&balancer);
        assert_eq!(interleaved.len() as u32, weights.iter().sum::<u32>());
        let deviation = max_window_deviation(&interleaved, weights);
        assert!(
            deviation < 1.5,
            "{weights:?}: {interleaved:?} is off by {deviation}"
        );

        let block: Vec<usize> = (0..weights.len())
            .flat_map(|i| std::iter::repeat_n(i, weights[i] as usize))
            .collect();
        assert!(max_window_deviation(&block, weights) >= 2.0, "{block:?}");
    }
}

/// The largest difference, over every window of a cyclic schedule and every endpoint, between
/// the endpoint's turns in the window and its weight's share of the window.
fn max_window_deviation(schedule: &[usize], weights: &[u32]) -> f64 {
    let total: u32 = weights.iter().sum();
    let mut max: f64 = 0.0;
    for window in 1..=schedule.len() {
        for start in 0..schedule.len() {
            for (i, &weight) in weights.iter().enumerate() {
                let count = (0..window)
                    .filter(|&k| schedule[(start + k) % schedule.len()] == i)
                    .count();
                let share = window as f64 * f64::from(weight) / f64::from(total);
                max = max.max((count as f64 - share).abs());
            }
        }
    }
    max
}

#[test]
fn round_robin_skips_unavailable() {
    let balancer = round_robin_from_slot(&[1, 1, 1], 0);
    let picks: Vec<_> = (0..6)
        .map(|_| balancer.pick(None, &|i| i != 1, &idle))
        .collect::<Option<_>>()
        .expect("two are available");
    assert_eq!(picks, [0, 2, 0, 2, 0, 2]);

    // The skipped endpoint's turns are shared out, not all given to its successor.
    let weights = [1, 1, 1, 1];
    let balancer = Balancer::new(LbPolicy::RoundRobin, &weights);
    let counts = counts(&balancer, 900, |_| None, &|i| i != 1, &idle);
    assert_eq!(counts, [300, 0, 300, 300]);

    // Weighted: without endpoint 0, only endpoint 1 is left.
    let balancer = Balancer::new(LbPolicy::RoundRobin, &[3, 1]);
    for _ in 0..10 {
        assert_eq!(balancer.pick(None, &|i| i == 1, &idle), Some(1));
    }
}

#[test]
fn round_robin_shares_one_cursor_between_threads() {
    let balancer = Balancer::new(LbPolicy::RoundRobin, &[3, 1]);
    let per_thread: Vec<Vec<usize>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| counts(&balancer, 250, |_| None, &all, &idle)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("no panic"))
            .collect()
    });
    // 1000 picks take 1000 consecutive slots, whoever took them.
    let total = per_thread.iter().fold(vec![0, 0], |acc, c| {
        acc.iter().zip(c).map(|(a, b)| a + b).collect()
    });
    assert_eq!(total, [750, 250]);
}

#[test]
fn round_robin_schedule_is_bounded_and_keeps_every_endpoint() {
    let weights = [u32::MAX, 1, u32::MAX / 2, 7];
    let balancer = Balancer::new(LbPolicy::RoundRobin, &weights);
    let slots = schedule(&balancer);
    assert!(slots.len() as u64 <= MAX_SCHEDULE_LEN + weights.len() as u64);
    for i in 0..weights.len() {
        assert!(slots.contains(&i), "endpoint {i} lost its slot");
    }
    let count = |i| slots.iter().filter(|&&e| e == i).count();
    assert!((count(0) as i64 - 2 * count(2) as i64).abs() <= 2);

    // Common divisors do not blow the schedule up.
    let balancer = Balancer::new(LbPolicy::RoundRobin, &[1000, 3000]);
    assert_eq!(schedule(&balancer), [1, 0, 1, 1]);
}

#[test]
fn random_is_weighted() {
    let weights = [1, 2, 7];
    let balancer = Balancer::new(LbPolicy::Random, &weights);
    let counts = counts(&balancer, 100_000, |_| None, &all, &idle);
    // The smallest share, 10 000, has a standard deviation of 95: 5% is over 5 of them.
    assert_shares(&counts, &weights, 0.05);
}

#[test]
fn random_skips_unavailable_keeping_weights() {
    let weights = [1, 2, 7];
    let balancer = Balancer::new(LbPolicy::Random, &weights);
    // The heaviest endpoint is down: draws keep hitting it, so the exact fallback runs too.
    let counts = counts(&balancer, 30_000, |_| None, &|i| i != 2, &idle);
    assert_eq!(counts[2], 0);
    assert_shares(&counts[..2], &weights[..2], 0.05);
}

#[test]
fn least_request_with_two_endpoints_always_takes_the_less_loaded() {
    let balancer = Balancer::new(P2C, &[1, 1]);
    for _ in 0..1000 {
        assert_eq!(balancer.pick(None, &all, &|i| [5, 1][i]), Some(1));
        assert_eq!(balancer.pick(None, &all, &|i| [0, 3][i]), Some(0));
    }
    // Equal loads: both get traffic, not always the first.
    let counts = counts(&balancer, 10_000, |_| None, &all, &idle);
    assert_shares(&counts, &[1, 1], 0.1);
}

#[test]
fn least_request_prefers_lower_load() {
    let balancer = Balancer::new(P2C, &[1; 10]);
    let load = |i: usize| i as u64;
    let counts = counts(&balancer, 20_000, |_| None, &all, &load);
    // The less loaded of two draws (with replacement) from 10: endpoint i wins with
    // probability ((10 - i)^2 - (9 - i)^2) / 100, i.e. 19% for 0 down to 1% for 9.
    let expected = |i: usize| ((10 - i).pow(2) - (9 - i).pow(2)) as f64 / 100.0;
    for (i, &count) in counts.iter().enumerate() {
        let share = count as f64 / 20_000.0;
        assert!(
            (share - expected(i)).abs() < 0.02,
            "endpoint {i}: {share}, expected {} ({counts:?})",
            expected(i)
        );
    }

    // More choices than endpoints compares them all: always the least loaded available.
    let balancer = Balancer::new(LbPolicy::LeastRequest { choice_count: 5 }, &[1; 4]);
    for _ in 0..200 {
        assert_eq!(balancer.pick(None, &|i| i != 0, &load), Some(1));
    }
}

#[test]
fn least_request_skips_unavailable() {
    let balancer = Balancer::new(P2C, &[1; 8]);
    let up = |i: usize| i == 3 || i == 6;
    let counts = counts(&balancer, 2000, |_| None, &up, &idle);
    assert_eq!(counts[3] + counts[6], 2000);
    assert!(counts[3] > 600 && counts[6] > 600, "{counts:?}");
}

#[test]
fn least_request_with_weights_scales_them_by_load() {
    let weights = [3, 1];
    let balancer = Balancer::new(P2C, &weights);
    // Idle: plain weighted random.
    let counts_idle = counts(&balancer, 20_000, |_| None, &all, &idle);
    assert_shares(&counts_idle, &weights, 0.05);
    // 3 / (2 + 1) = 1 / (0 + 1): even.
    let counts_loaded = counts(&balancer, 20_000, |_| None, &all, &|i| [2, 0][i]);
    assert_shares(&counts_loaded, &[1, 1], 0.05);
    // Unavailable endpoints get nothing.
    let counts_down = counts(&balancer, 1000, |_| None, &|i| i == 1, &idle);
    assert_eq!(counts_down, [0, 1000]);
}

/// Endpoint weights and keys shared by the consistent-hashing tests.
const HASH_WEIGHTS: [u32; 5] = [1, 2, 3, 2, 1];
const KEYS: u64 = 20_000;

fn assert_consistent(balancer: &Balancer) {
    for key in 0..1000 {
        let hash = Some(key_hash(key));
        let first = balancer.pick(hash, &all, &idle);
        for _ in 0..3 {
            assert_eq!(balancer.pick(hash, &all, &idle), first);
        }
    }
    // Another balancer built from the same input is the same.
    let twin = Balancer::new(balancer.policy, &HASH_WEIGHTS);
    for key in 0..1000 {
        let hash = Some(key_hash(key));
        assert_eq!(
            twin.pick(hash, &all, &idle),
            balancer.pick(hash, &all, &idle)
        );
    }
}

/// When one endpoint goes down, only its keys move, and they move to the others.
fn assert_minimal_disruption(balancer: &Balancer) {
    for down in 0..HASH_WEIGHTS.len() {
        let up = |i: usize| i != down;
        let mut kept = 0;
        let mut others = 0;
        let mut moved = vec![0; HASH_WEIGHTS.len()];
        for key in 0..KEYS {
            let hash = Some(key_hash(key));
            let before = balancer.pick(hash, &all, &idle).expect("all are up");
            let after = balancer.pick(hash, &up, &idle).expect("four are up");
            assert_ne!(after, down);
            if before == down {
                moved[after] += 1;
            } else {
                others += 1;
                if after == before {
                    kept += 1;
                }
            }
        }
        assert!(
            kept as f64 >= 0.95 * others as f64,
            "{:?}, endpoint {down} down: only {kept} of {others} keys stayed",
            balancer.policy
        );
        // The orphaned keys are spread out, not dumped on one neighbour.
        let spread = moved.iter().filter(|&&m| m > 0).count();
        assert!(
            spread >= 3,
            "{:?}: moved keys went to {moved:?}",
            balancer.policy
        );
    }
}

#[test]
fn ring_hash_is_consistent() {
    let balancer = Balancer::new(RING, &HASH_WEIGHTS);
    assert_consistent(&balancer);
    assert_minimal_disruption(&balancer);
}

#[test]
fn ring_hash_spreads_keys_by_weight() {
    let policy = LbPolicy::RingHash {
        minimum_ring_size: 16 * 1024,
        maximum_ring_size: 8 * 1024 * 1024,
    };
    let balancer = Balancer::new(policy, &HASH_WEIGHTS);
    let by_key = counts(
        &balancer,
        100_000,
        |n| Some(key_hash(n as u64)),
        &all,
        &idle,
    );
    assert_shares(&by_key, &HASH_WEIGHTS, 0.15);
    // No hash: random points on the ring, so the same spread.
    let random = counts(&balancer, 100_000, |_| None, &all, &idle);
    assert_shares(&random, &HASH_WEIGHTS, 0.15);
}

#[test]
fn ring_hash_size_is_clamped() {
    // The lightest endpoint (1/9 of the weight) gets its share of the minimum: 114 entries of
    // 1026.
    let balancer = Balancer::new(RING, &HASH_WEIGHTS);
    assert_eq!(ring_len(&balancer), 1026);

    let small = LbPolicy::RingHash {
        minimum_ring_size: 10,
        maximum_ring_size: 20,
    };
    let balancer = Balancer::new(small, &[1, 100]);
    assert_eq!(ring_len(&balancer), 20);

    let big = LbPolicy::RingHash {
        minimum_ring_size: 5000,
        maximum_ring_size: 8 * 1024 * 1024,
    };
    let balancer = Balancer::new(big, &[1, 1]);
    assert_eq!(ring_len(&balancer), 5000);

    // A ring too small to hold every endpoint still reaches all of them.
    let tiny = LbPolicy::RingHash {
        minimum_ring_size: 0,
        maximum_ring_size: 2,
    };
    let balancer = Balancer::new(tiny, &[1; 6]);
    assert!(ring_len(&balancer) <= 2);
    for up in 0..6 {
        assert_eq!(balancer.pick(Some(9), &|i| i == up, &idle), Some(up));
    }
    let empty = LbPolicy::RingHash {
        minimum_ring_size: 0,
        maximum_ring_size: 0,
    };
    let balancer = Balancer::new(empty, &[1; 3]);
    assert_eq!(ring_len(&balancer), 0);
    assert!(balancer.pick(Some(9), &all, &idle).is_some());
}

#[test]
fn ring_hash_lookup_takes_the_next_entry_clockwise() {
    let balancer = Balancer::new(RING, &[1, 1, 1]);
    let Kind::RingHash(ring) = &balancer.kind else {
        unreachable!("built as ring hash")
    };
    for k in [0, 1, ring.hashes.len() / 2, ring.hashes.len() - 1] {
        let (hash, owner) = (ring.hashes[k], ring.owners[k] as usize);
        assert_eq!(balancer.pick(Some(hash), &all, &idle), Some(owner));
        if hash > 0 && (k == 0 || ring.hashes[k - 1] < hash - 1) {
            assert_eq!(balancer.pick(Some(hash - 1), &all, &idle), Some(owner));
        }
    }
    // Past the last entry wraps to the first.
    let last = ring.hashes[ring.hashes.len() - 1];
    if last < u64::MAX {
        let first = ring.owners[0] as usize;
        assert_eq!(balancer.pick(Some(last + 1), &all, &idle), Some(first));
    }
}

#[test]
fn maglev_is_consistent() {
    let balancer = Balancer::new(MAGLEV, &HASH_WEIGHTS);
    assert_consistent(&balancer);
    assert_minimal_disruption(&balancer);
}

#[test]
fn maglev_fills_a_table_of_the_configured_size_by_weight() {
    for table_size in [7u64, 251, 65_537] {
        let balancer = Balancer::new(LbPolicy::Maglev { table_size }, &[1, 2, 3]);
        let table = maglev_table(&balancer);
        assert_eq!(table.len() as u64, table_size);
        assert!(table.iter().all(|&i| i < 3), "every slot is filled");
    }

    let table = maglev_table(&Balancer::new(MAGLEV, &HASH_WEIGHTS)).to_vec();
    let mut slots = vec![0; HASH_WEIGHTS.len()];
    for &i in &table {
        slots[i as usize] += 1;
    }
    // Maglev's turns share slots almost exactly by weight.
    assert_shares(&slots, &HASH_WEIGHTS, 0.01);
}

#[test]
fn maglev_spreads_keys_by_weight() {
    let balancer = Balancer::new(MAGLEV, &HASH_WEIGHTS);
    let by_key = counts(
        &balancer,
        100_000,
        |n| Some(key_hash(n as u64)),
        &all,
        &idle,
    );
    assert_shares(&by_key, &HASH_WEIGHTS, 0.05);
    let random = counts(&balancer, 100_000, |_| None, &all, &idle);
    assert_shares(&random, &HASH_WEIGHTS, 0.05);
}

#[test]
fn maglev_with_more_endpoints_than_slots_reaches_them_all() {
    let balancer = Balancer::new(LbPolicy::Maglev { table_size: 5 }, &[1; 12]);
    assert_eq!(maglev_table(&balancer).len(), 5);
    for up in 0..12 {
        assert_eq!(balancer.pick(Some(3), &|i| i == up, &idle), Some(up));
    }
}
