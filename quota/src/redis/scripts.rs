//! The Lua scripts: one per algorithm, each an atomic read-decide-write, the same arithmetic as
//! `algorithm.rs`. They take the time from the Redis server (`TIME`), so proxies with skewed
//! clocks agree; the fixed window needs no time at all, its window being the key's expiry.
//!
//! One call decides any number of requests of one policy: `KEYS` are the keys, and after the
//! policy's parameters `ARGV` holds how many requests each key has in the call (1 when
//! absent). A key's requests are decided one after the other on its state, read once and
//! written once, so they get exactly the answers as many calls in a row would, at the cost of
//! one. The pipelined connection (`pipe.rs`) gathers the decisions that are waiting to be sent
//! into such calls; the other connections send one decision per call.
//!
//! Each returns five integers per decision, keys in order: `{allowed (0/1), remaining,
//! reset_after_us, retry_after_us (-1: none), granted}`. With the parameter `up-to` = 1,
//! `cost` is a maximum: the script takes what is available up to it (a lease, see `lease.rs`)
//! and says how much in `granted`.
//! Numbers are Lua doubles: every value stays below 2^53 (see `policy.rs`), and stored
//! numbers are written with `%d` so they are never rounded to 14 digits.
//!
//! They are sent with `EVALSHA`, and with `EVAL` (which also caches them) when the server
//! answers `NOSCRIPT` (after a restart, a `SCRIPT FLUSH`, or a failover to a fresh node):
//! one round trip per decision, two the first time a server sees a script.

use std::sync::LazyLock;

use crate::algorithm::Demand;
use crate::policy::{Algorithm, Policy};

/// GCRA. KEYS: the theoretical arrival times (µs). ARGV: emission interval (µs), burst, cost,
/// window (µs), up-to (1: take what is available, at most `cost`), then the requests per key.
const TOKEN_BUCKET: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local demand = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local up_to = ARGV[5] == '1'
local tau = interval * burst
local out = {}
for k = 1, #KEYS do
  local key = KEYS[k]
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local taken = false
  for _ = 1, tonumber(ARGV[5 + k]) or 1 do
    local cost = demand
    if up_to then
      local available = math.floor((now + tau - tat) / interval)
      cost = math.max(math.min(available, cost), 1)
    end
    local new_tat = tat + cost * interval
    local o = #out
    if new_tat > now + tau then
      local remaining = math.floor((now + tau - tat) / interval)
      if remaining < 0 then remaining = 0 end
      local retry = new_tat - tau - now
      if cost > burst then retry = window end
      out[o + 1], out[o + 2], out[o + 3], out[o + 4], out[o + 5] = 0, remaining, tat - now, retry, 0
    else
      if cost > 0 then
        tat = new_tat
        taken = true
      end
      out[o + 1], out[o + 2], out[o + 3], out[o + 4], out[o + 5] =
        1, math.floor((now + tau - new_tat) / interval), new_tat - now, -1, cost
    end
  end
  if taken then
    redis.call('SET', key, string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000))
  end
end
return out
";

/// Fixed window from the first counted request. KEYS: the counts, expiring with the window.
/// ARGV: limit, window (ms), cost, up-to, then the requests per key.
const FIXED_WINDOW: &str = r"
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local demand = tonumber(ARGV[3])
local up_to = ARGV[4] == '1'
local out = {}
for k = 1, #KEYS do
  local key = KEYS[k]
  local stored = redis.call('GET', key)
  local count = 0
  local ttl = window
  if stored then
    count = tonumber(stored)
    ttl = redis.call('PTTL', key)
    if ttl < 0 then
      ttl = window
      redis.call('PEXPIRE', key, window)
    end
  end
  local taken = 0
  for _ = 1, tonumber(ARGV[4 + k]) or 1 do
    local cost = demand
    if up_to then
      cost = math.max(math.min(limit - count, cost), 1)
    end
    local o = #out
    if count + cost > limit then
      local retry = ttl * 1000
      if cost > limit then retry = window * 1000 end
      out[o + 1], out[o + 2], out[o + 3], out[o + 4], out[o + 5] = 0, limit - count, ttl * 1000, retry, 0
    else
      count = count + cost
      taken = taken + cost
      out[o + 1], out[o + 2], out[o + 3], out[o + 4], out[o + 5] = 1, limit - count, ttl * 1000, -1, cost
    end
  end
  if taken > 0 then
    if stored then
      redis.call('INCRBY', key, taken)
    else
      redis.call('SET', key, taken, 'PX', window)
    end
  end
end
return out
";

/// Two-window approximation. KEYS: hashes {w: window index, p: previous count, c: current
/// count}. ARGV: limit, window (µs), cost, up-to, then the requests per key.
const SLIDING_WINDOW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local demand = tonumber(ARGV[3])
local up_to = ARGV[4] == '1'
local now_index = math.floor(now / window)
local out = {}
for k = 1, #KEYS do
  local key = KEYS[k]
  local index = now_index
  local elapsed = now - index * window
  local stored = redis.call('HMGET', key, 'w', 'p', 'c')
  local w = tonumber(stored[1])
  local prev = tonumber(stored[2]) or 0
  local cur = tonumber(stored[3]) or 0
  if w == nil then
    prev, cur = 0, 0
  elseif w == index then
  elseif w + 1 == index then
    prev, cur = cur, 0
  elseif w > index then
    index, elapsed = w, 0
  else
    prev, cur = 0, 0
  end
  local weighted = prev * (window - elapsed) / window
  local reset = window - elapsed
  local taken = false
  for _ = 1, tonumber(ARGV[4 + k]) or 1 do
    local cost = demand
    if up_to then
      local available = math.floor(limit - weighted - cur)
      cost = math.max(math.min(available, cost), 1)
    end
    local o = #out
    if weighted + cur + cost > limit then
      local retry
      if cost > limit then
        retry = window
      elseif cur + cost <= limit then
        retry = math.ceil(window - (limit - cur - cost) * window / prev - elapsed)
      else
        local in_next = 0
        if cur > limit - cost then
          in_next = math.ceil(window - (limit - cost) * window / cur)
        end
        retry = reset + in_next
      end
      if retry < 1 then retry = 1 end
      local remaining = math.floor(limit - weighted - cur)
      if remaining < 0 then remaining = 0 end
      out[o + 1], out[o + 2], out[o + 3], out[o + 4], out[o + 5] = 0, remaining, reset, retry, 0
    else
      cur = cur + cost
      if cost > 0 then taken = true end
      local remaining = math.floor(limit - weighted - cur)
      if remaining < 0 then remaining = 0 end
      out[o + 1], out[o + 2], out[o + 3], out[o + 4], out[o + 5] = 1, remaining, reset, -1, cost
    end
  end
  if taken then
    redis.call('HSET', key, 'w', string.format('%d', index), 'p', string.format('%d', prev),
      'c', string.format('%d', cur))
    redis.call('PEXPIRE', key, math.ceil((2 * window - elapsed) / 1000))
  end
end
return out
";

/// A script's source and SHA-1, computed once.
#[derive(Debug)]
pub(crate) struct Script {
    /// The Lua source, sent with `EVAL`.
    pub(crate) source: &'static str,
    /// Its SHA-1 in hex, sent with `EVALSHA`.
    pub(crate) sha: String,
}

impl Script {
    fn new(source: &'static str) -> Self {
        Self {
            source,
            sha: redis::Script::new(source).get_hash().to_owned(),
        }
    }
}

/// The three scripts, hashed once per process.
static SCRIPTS: LazyLock<[Script; 3]> = LazyLock::new(|| {
    [
        Script::new(TOKEN_BUCKET),
        Script::new(FIXED_WINDOW),
        Script::new(SLIDING_WINDOW),
    ]
});

/// A script's reply for one decision, before it becomes a verdict.
pub(crate) type Reply = (i64, i64, i64, i64, i64);

/// What a decision asks Redis, apart from the key: the script and the policy's parameters.
/// Decisions with equal calls can share one script call (see `pipe.rs`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ScriptCall {
    pub(crate) script: &'static Script,
    params: [u64; 5],
    len: usize,
}

impl PartialEq for ScriptCall {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.script, other.script) && self.params() == other.params()
    }
}

impl ScriptCall {
    /// The call deciding `demand` under `policy`'s limit.
    pub(crate) fn new(policy: &Policy, demand: Demand) -> Self {
        let limit = policy.limit();
        let (cost, up_to) = match demand {
            Demand::Exact(cost) => (cost, 0),
            Demand::UpTo(max) => (max, 1),
        };
        let [token_bucket, fixed_window, sliding_window] = &*SCRIPTS;
        let (script, params, len) = match limit.algorithm {
            Algorithm::TokenBucket { burst } => (
                token_bucket,
                [
                    limit.emission_interval_micros(),
                    burst,
                    cost,
                    limit.window_micros(),
                    up_to,
                ],
                5,
            ),
            Algorithm::FixedWindow => (
                fixed_window,
                [
                    limit.requests,
                    limit.window_micros().div_ceil(1000),
                    cost,
                    up_to,
                    0,
                ],
                4,
            ),
            Algorithm::SlidingWindow => (
                sliding_window,
                [limit.requests, limit.window_micros(), cost, up_to, 0],
                4,
            ),
        };
        Self {
            script,
            params,
            len,
        }
    }

    /// The policy's parameters: `ARGV` before the requests per key.
    pub(crate) fn params(&self) -> &[u64] {
        &self.params[..self.len]
    }
}
