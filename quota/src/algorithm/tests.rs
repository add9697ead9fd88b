use std::time::Duration;

use super::*;

const MS: u64 = 1_000;
const SEC: u64 = 1_000_000;

/// One key driven through `evaluate` on a hand-moved clock, storing updates as a backend does.
struct Key {
    limit: Limit,
    stored: Option<Update>,
    now: u64,
}

impl Key {
    fn new(limit: Limit, now: u64) -> Self {
        limit.validate().unwrap();
        Self {
            limit,
            stored: None,
            now,
        }
    }

    /// A request of exactly `cost`; `granted` is checked here and zeroed in the result.
    fn hit(&mut self, cost: u64) -> Verdict {
        let mut verdict = self.demand(Demand::Exact(cost));
        assert_eq!(verdict.granted, if verdict.allowed { cost } else { 0 });
        verdict.granted = 0;
        verdict
    }

    fn demand(&mut self, demand: Demand) -> Verdict {
        let state = self
            .stored
            .filter(|u| self.now < u.expires_at)
            .map(|u| u.state);
        let (verdict, update) = evaluate(&self.limit, state, self.now, demand);
        if update.is_some() {
            self.stored = update;
        }
        verdict
    }

    fn allowed(&mut self) -> bool {
        self.hit(1).allowed
    }

    fn advance(&mut self, us: u64) {
        self.now += us;
    }

    fn at(&mut self, us: u64) {
        self.now = us;
    }
}

fn allowed(remaining: u64, reset_after_us: u64) -> Verdict {
    Verdict {
        allowed: true,
        remaining,
        reset_after_us,
        retry_after_us: None,
        granted: 0,
    }
}

fn refused(remaining: u64, reset_after_us: u64, retry_after_us: u64) -> Verdict {
    Verdict {
        allowed: false,
        remaining,
        reset_after_us,
        retry_after_us: Some(retry_after_us),
        granted: 0,
    }
}

#[test]
fn token_bucket_burst_then_refill() {
    // 10 per second (one token every 100 ms), bucket of 5.
    let mut key = Key::new(Limit::token_bucket(10, Duration::from_secs(1), 5), 7 * SEC);
    assert_eq!(key.hit(1), allowed(4, 100 * MS));
    assert_eq!(key.hit(1), allowed(3, 200 * MS));
    assert_eq!(key.hit(1), allowed(2, 300 * MS));
    assert_eq!(key.hit(1), allowed(1, 400 * MS));
    assert_eq!(key.hit(1), allowed(0, 500 * MS));
    // Empty: the next token comes in 100 ms; the bucket is full again in 500 ms.
    assert_eq!(key.hit(1), refused(0, 500 * MS, 100 * MS));
    // Refused requests take nothing: still 100 ms to wait.
    assert_eq!(key.hit(1), refused(0, 500 * MS, 100 * MS));
    key.advance(99 * MS);
    assert_eq!(key.hit(1), refused(0, 401 * MS, MS));
    key.advance(MS);
    assert_eq!(key.hit(1), allowed(0, 500 * MS));
    // 250 ms later two and a half tokens came back: two whole ones.
    key.advance(250 * MS);
    assert_eq!(key.hit(0), allowed(2, 250 * MS));
    // Half a second of silence fills the bucket; it never holds more than `burst`.
    key.advance(10 * SEC);
    assert_eq!(key.hit(0), allowed(5, 0));
    assert_eq!(key.hit(1), allowed(4, 100 * MS));
}

#[test]
fn token_bucket_sustained_rate() {
    // 10 per second with a bucket of 1: exactly one request per 100 ms passes.
    let mut key = Key::new(Limit::token_bucket(10, Duration::from_secs(1), 1), 0);
    let mut passed = 0;
    for _ in 0..200 {
        if key.allowed() {
            passed += 1;
        }
        key.advance(50 * MS);
    }
    assert_eq!(passed, 100, "10 s at 20 requests/s against 10/s");
}

#[test]
fn token_bucket_costs() {
    let mut key = Key::new(Limit::token_bucket(10, Duration::from_secs(1), 5), 0);
    assert_eq!(key.hit(3), allowed(2, 300 * MS));
    // 3 more need 1 more token than there is: 100 ms.
    assert_eq!(key.hit(3), refused(2, 300 * MS, 100 * MS));
    // More than the bucket holds can never pass; retry after a window.
    assert_eq!(key.hit(6), refused(2, 300 * MS, SEC));
    assert_eq!(key.hit(2), allowed(0, 500 * MS));
}

#[test]
fn token_bucket_survives_clock_going_back() {
    let mut key = Key::new(Limit::token_bucket(10, Duration::from_secs(1), 2), 10 * SEC);
    assert!(key.allowed());
    assert!(key.allowed());
    key.at(9 * SEC);
    // The stored arrival time is now 1.2 s ahead: refused, nothing negative.
    let verdict = key.hit(1);
    assert!(!verdict.allowed);
    assert_eq!(verdict.remaining, 0);
    assert_eq!(verdict.reset_after_us, 1_200 * MS);
}

#[test]
fn fixed_window_counts_from_first_request() {
    let mut key = Key::new(Limit::fixed_window(3, Duration::from_secs(1)), 250 * MS);
    assert_eq!(key.hit(1), allowed(2, SEC));
    key.advance(100 * MS);
    assert_eq!(key.hit(1), allowed(1, 900 * MS));
    assert_eq!(key.hit(1), allowed(0, 900 * MS));
    assert_eq!(key.hit(1), refused(0, 900 * MS, 900 * MS));
    // The window opened at 250 ms, so it closes at 1250 ms, not on a second boundary.
    key.at(1_249 * MS);
    assert_eq!(key.hit(1), refused(0, MS, MS));
    key.at(1_250 * MS);
    assert_eq!(key.hit(1), allowed(2, SEC));
}

#[test]
fn fixed_window_refusals_do_not_count() {
    let mut key = Key::new(Limit::fixed_window(2, Duration::from_secs(10)), 0);
    assert!(key.allowed());
    assert!(key.allowed());
    for _ in 0..100 {
        assert!(!key.allowed());
    }
    key.advance(10 * SEC);
    assert_eq!(key.hit(1), allowed(1, 10 * SEC));
    // A cost above the limit is refused outright, with a window to wait.
    assert_eq!(key.hit(3), refused(1, 10 * SEC, 10 * SEC));
    // A zero cost only looks.
    assert_eq!(key.hit(0), allowed(1, 10 * SEC));
}

#[test]
fn sliding_window_weights_previous_window() {
    // 10 per second; windows are aligned to multiples of a second.
    let mut key = Key::new(Limit::sliding_window(10, Duration::from_secs(1)), 0);
    for i in 0..10 {
        assert_eq!(key.hit(1), allowed(9 - i, SEC));
    }
    // Not before the next window, and then until the 10 weigh at most 9: 1.1 s.
    assert_eq!(key.hit(1), refused(0, SEC, 1_100 * MS));
    // Right at the edge the previous window still weighs fully: 10 × 1.0.
    key.at(SEC);
    // Needs the previous weight down to 9: 10 × (1 − e) ≤ 9 ⇒ e ≥ 100 ms.
    assert_eq!(key.hit(1), refused(0, SEC, 100 * MS));
    // Halfway through, the previous window counts half: 5 left.
    key.at(1_500 * MS);
    assert_eq!(key.hit(0), allowed(5, 500 * MS));
    for i in 0..5 {
        assert_eq!(key.hit(1), allowed(4 - i, 500 * MS));
    }
    // 5 + 10 × (1 − e) + 1 ≤ 10 ⇒ e ≥ 600 ms: 100 ms from now.
    assert_eq!(key.hit(1), refused(0, 500 * MS, 100 * MS));
    key.at(1_600 * MS);
    assert_eq!(key.hit(1), allowed(0, 400 * MS));
}

#[test]
fn sliding_window_retry_into_next_window() {
    let mut key = Key::new(Limit::sliding_window(4, Duration::from_secs(1)), 200 * MS);
    for _ in 0..4 {
        assert!(key.allowed());
    }
    // Cost 2 with 4 counted this window: wait for the next window (800 ms), then until this
    // window's 4 weigh at most 2: 4 × (1 − e) ≤ 2 ⇒ e ≥ 500 ms. 1.3 s in all.
    assert_eq!(key.hit(2), refused(0, 800 * MS, 1_300 * MS));
    key.advance(1_300 * MS);
    assert_eq!(key.hit(2), allowed(0, 500 * MS));
}

#[test]
fn sliding_window_forgets_after_two_windows() {
    let mut key = Key::new(Limit::sliding_window(3, Duration::from_secs(1)), 0);
    for _ in 0..3 {
        assert!(key.allowed());
    }
    // Two windows later nothing of the first is left.
    key.at(2 * SEC);
    assert_eq!(key.hit(0), allowed(3, SEC));
    // And the state has expired by then, so a backend may drop it.
    assert_eq!(key.stored.map(|u| u.expires_at), Some(2 * SEC));
}

#[test]
fn sliding_window_never_counts_over_limit_in_a_window() {
    // Steady traffic at twice the rate: per aligned window, never more than the limit passes.
    let mut key = Key::new(Limit::sliding_window(20, Duration::from_secs(1)), 0);
    let mut per_window = [0u64; 10];
    for step in 0..400u64 {
        key.at(step * 25 * MS);
        if key.allowed() {
            per_window[(key.now / SEC) as usize] += 1;
        }
    }
    assert!(per_window.iter().all(|&n| n <= 20), "{per_window:?}");
    // After the first window the weighting admits about the limit per window.
    assert!(per_window[2..].iter().all(|&n| n >= 19), "{per_window:?}");
}

/// (allowed, granted, remaining) of an `UpTo(max)` demand.
fn lease(key: &mut Key, max: u64) -> (bool, u64, u64) {
    let v = key.demand(Demand::UpTo(max));
    (v.allowed, v.granted, v.remaining)
}

#[test]
fn leases_take_what_is_available() {
    let mut fixed = Key::new(Limit::fixed_window(12, Duration::from_secs(1)), 0);
    assert_eq!(lease(&mut fixed, 5), (true, 5, 7));
    assert_eq!(lease(&mut fixed, 5), (true, 5, 2));
    assert_eq!(lease(&mut fixed, 5), (true, 2, 0));
    let empty = fixed.demand(Demand::UpTo(5));
    assert_eq!((empty.allowed, empty.granted), (false, 0));
    assert_eq!(empty.retry_after_us, Some(SEC));

    let mut bucket = Key::new(Limit::token_bucket(10, Duration::from_secs(1), 5), 0);
    assert_eq!(lease(&mut bucket, 3), (true, 3, 2));
    assert_eq!(lease(&mut bucket, 3), (true, 2, 0));
    // Nothing left: refused like a single request, with the time to the next token.
    assert_eq!(
        bucket.demand(Demand::UpTo(3)).retry_after_us,
        Some(100 * MS)
    );
    bucket.advance(250 * MS);
    assert_eq!(lease(&mut bucket, 3), (true, 2, 0));

    let mut sliding = Key::new(Limit::sliding_window(10, Duration::from_secs(1)), 0);
    assert_eq!(lease(&mut sliding, 4), (true, 4, 6));
    assert_eq!(lease(&mut sliding, 8), (true, 6, 0));
    sliding.at(1_500 * MS);
    // Half of the previous window's 10 still weighs: 5 available.
    assert_eq!(lease(&mut sliding, 8), (true, 5, 0));
    assert!(!sliding.demand(Demand::UpTo(8)).allowed);
}
