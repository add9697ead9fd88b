//! The three algorithms as pure functions of (stored state, now, cost). The in-process backend
//! runs them directly; the Redis backend runs the same arithmetic in Lua
//! (`redis/scripts.rs`), step for step, so both backends decide alike.
//!
//! Time is in microseconds. Only allowed requests are counted: a client hammering a closed limit
//! does not push its own reset further away.

use crate::policy::{Algorithm, Limit};

/// What one evaluation found, before it becomes a [`crate::Decision`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub(crate) allowed: bool,
    /// Requests that could still be made now.
    pub(crate) remaining: u64,
    /// The effective window: for the token bucket, until the bucket is full again; for the
    /// windows, until the current window ends.
    pub(crate) reset_after_us: u64,
    /// When refused: how long until the same request would be allowed.
    pub(crate) retry_after_us: Option<u64>,
    /// Units counted: the cost when allowed, 0 when refused; with [`Demand::UpTo`], what was
    /// available up to the maximum asked.
    pub(crate) granted: u64,
}

/// How much a request takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Demand {
    /// Exactly this many units, or nothing.
    Exact(u64),
    /// As many units as are available, at most this many (≥ 1), or nothing when none is:
    /// a lease of tokens for a proxy to spend locally.
    UpTo(u64),
}

impl Demand {
    /// The cost to evaluate given what is `available` now.
    fn cost(self, available: u64) -> u64 {
        match self {
            Demand::Exact(cost) => cost,
            // Nothing available: evaluate one unit, which is refused with its retry delay.
            Demand::UpTo(max) => available.min(max).max(1),
        }
    }
}

/// One key's stored state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// GCRA's theoretical arrival time.
    TokenBucket { tat: u64 },
    /// A fixed window that started at `start` and has counted `count`.
    FixedWindow { start: u64, count: u64 },
    /// The sliding window's current window `index` (now / window) and the two counts.
    SlidingWindow { index: u64, prev: u64, cur: u64 },
}

/// The state to store after an evaluation, and when it stops mattering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Update {
    pub(crate) state: State,
    /// After this instant the state is equivalent to no state at all.
    pub(crate) expires_at: u64,
}

/// Evaluates a request of `cost` units at `now` against `limit`, given the key's `state` (`None`
/// when absent or expired, or when it was stored by another algorithm). Returns the verdict and
/// the state to store, if it changed.
pub(crate) fn evaluate(
    limit: &Limit,
    state: Option<State>,
    now: u64,
    demand: Demand,
) -> (Verdict, Option<Update>) {
    match limit.algorithm {
        Algorithm::TokenBucket { burst } => {
            let tat = match state {
                Some(State::TokenBucket { tat }) => Some(tat),
                _ => None,
            };
            gcra(limit, burst, tat, now, demand)
        }
        Algorithm::FixedWindow => {
            let window = match state {
                Some(State::FixedWindow { start, count }) => Some((start, count)),
                _ => None,
            };
            fixed_window(limit, window, now, demand)
        }
        Algorithm::SlidingWindow => {
            let counts = match state {
                Some(State::SlidingWindow { index, prev, cur }) => Some((index, prev, cur)),
                _ => None,
            };
            sliding_window(limit, counts, now, demand)
        }
    }
}

/// GCRA: a request of `cost` is allowed if the theoretical arrival time after it is at most
/// `burst` emission intervals ahead of now.
fn gcra(
    limit: &Limit,
    burst: u64,
    tat: Option<u64>,
    now: u64,
    demand: Demand,
) -> (Verdict, Option<Update>) {
    let interval = limit.emission_interval_micros();
    let tau = interval * burst;
    let tat = tat.unwrap_or(now).max(now);
    let cost = demand.cost((now + tau).saturating_sub(tat) / interval);
    let new_tat = tat + cost * interval;
    if new_tat > now + tau {
        let retry_after = if cost > burst {
            limit.window_micros()
        } else {
            new_tat - tau - now
        };
        let verdict = Verdict {
            allowed: false,
            remaining: (now + tau).saturating_sub(tat) / interval,
            reset_after_us: tat - now,
            retry_after_us: Some(retry_after),
            granted: 0,
        };
        return (verdict, None);
    }
    let verdict = Verdict {
        allowed: true,
        remaining: (now + tau - new_tat) / interval,
        reset_after_us: new_tat - now,
        retry_after_us: None,
        granted: cost,
    };
    let update = (cost > 0).then_some(Update {
        state: State::TokenBucket { tat: new_tat },
        expires_at: new_tat,
    });
    (verdict, update)
}

/// A fixed window starting at the first counted request.
fn fixed_window(
    limit: &Limit,
    window_state: Option<(u64, u64)>,
    now: u64,
    demand: Demand,
) -> (Verdict, Option<Update>) {
    let window = limit.window_micros();
    let (start, count) = match window_state {
        Some((start, count)) if now < start + window => (start, count),
        _ => (now, 0),
    };
    let cost = demand.cost(limit.requests - count);
    let reset_after = start + window - now;
    if count + cost > limit.requests {
        let retry_after = if cost > limit.requests {
            window
        } else {
            reset_after
        };
        let verdict = Verdict {
            allowed: false,
            remaining: limit.requests - count,
            reset_after_us: reset_after,
            retry_after_us: Some(retry_after),
            granted: 0,
        };
        return (verdict, None);
    }
    let count = count + cost;
    let verdict = Verdict {
        allowed: true,
        remaining: limit.requests - count,
        reset_after_us: reset_after,
        retry_after_us: None,
        granted: cost,
    };
    let update = (cost > 0).then_some(Update {
        state: State::FixedWindow { start, count },
        expires_at: start + window,
    });
    (verdict, update)
}

/// The two-window approximation: `prev × (window − elapsed) / window + cur` estimates the
/// requests in the last `window`, assuming the previous window's requests were spread evenly.
fn sliding_window(
    limit: &Limit,
    counts: Option<(u64, u64, u64)>,
    now: u64,
    demand: Demand,
) -> (Verdict, Option<Update>) {
    let window = limit.window_micros();
    let mut index = now / window;
    let mut elapsed = now - index * window;
    let (prev, cur) = match counts {
        None => (0, 0),
        Some((stored, prev, cur)) if stored == index => (prev, cur),
        Some((stored, _, cur)) if stored + 1 == index => (cur, 0),
        // The clock went back past a window edge: keep the newer window, as if at its start.
        Some((stored, prev, cur)) if stored > index => {
            index = stored;
            elapsed = 0;
            (prev, cur)
        }
        Some(_) => (0, 0),
    };
    let (limit_f, window_f) = (limit.requests as f64, window as f64);
    // The same operations in the same order as the Lua script, so both round alike.
    let weighted = prev as f64 * (window - elapsed) as f64 / window_f;
    let reset_after = window - elapsed;
    let cost = demand.cost(floor_count(limit_f - weighted - cur as f64));
    if weighted + cur as f64 + cost as f64 > limit_f {
        let retry_after = if cost > limit.requests {
            window
        } else if cur + cost <= limit.requests {
            // Wait until the previous window's weight has decayed enough.
            let at = window_f - (limit.requests - cur - cost) as f64 * window_f / prev as f64;
            ceil_micros(at - elapsed as f64)
        } else {
            // Not before the next window, where this window's count becomes the weighted one.
            let in_next = if cur > limit.requests - cost {
                ceil_micros(window_f - (limit.requests - cost) as f64 * window_f / cur as f64)
            } else {
                0
            };
            reset_after + in_next
        };
        let verdict = Verdict {
            allowed: false,
            remaining: floor_count(limit_f - weighted - cur as f64),
            reset_after_us: reset_after,
            retry_after_us: Some(retry_after.max(1)),
            granted: 0,
        };
        return (verdict, None);
    }
    let cur = cur + cost;
    let verdict = Verdict {
        allowed: true,
        remaining: floor_count(limit_f - weighted - cur as f64),
        reset_after_us: reset_after,
        retry_after_us: None,
        granted: cost,
    };
    let update = (cost > 0).then_some(Update {
        state: State::SlidingWindow { index, prev, cur },
        // This window's count still weighs on the next one.
        expires_at: (index + 2) * window,
    });
    (verdict, update)
}

fn ceil_micros(us: f64) -> u64 {
    // Saturating float-to-int casts: negative becomes 0.
    us.ceil() as u64
}

fn floor_count(count: f64) -> u64 {
    count.floor() as u64
}

#[cfg(test)]
mod tests;
