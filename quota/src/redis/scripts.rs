//! The Lua scripts: one per algorithm, each a single atomic read-decide-write on one key, the
//! same arithmetic as `algorithm.rs`. They take the time from the Redis server (`TIME`), so
//! proxies with skewed clocks agree; the fixed window needs no time at all, its window being
//! the key's expiry.
//!
//! Each returns `{allowed (0/1), remaining, reset_after_us, retry_after_us (-1: none),
//! granted}`. With the last argument `up-to` = 1, `cost` is a maximum: the script takes what
//! is available up to it (a lease, see `lease.rs`) and says how much in `granted`.
//! Numbers are Lua doubles: every value stays below 2^53 (see `policy.rs`), and stored
//! numbers are written with `%d` so they are never rounded to 14 digits.
//!
//! They are sent with `EVALSHA`, and with `EVAL` (which also caches them) when the server
//! answers `NOSCRIPT` (after a restart, a `SCRIPT FLUSH`, or a failover to a fresh node):
//! one round trip per decision, two the first time a server sees a script.

use redis::{ErrorKind, RedisResult, ServerErrorKind};

use crate::algorithm::Demand;
use crate::policy::{Algorithm, Policy};

use super::link::Conn;

/// GCRA. KEYS[1]: the theoretical arrival time (µs). ARGV: emission interval (µs), burst, cost,
/// window (µs), up-to (1: take what is available, at most `cost`).
const TOKEN_BUCKET: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local tau = interval * burst
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
if ARGV[5] == '1' then
  local available = math.floor((now + tau - tat) / interval)
  cost = math.max(math.min(available, cost), 1)
end
local new_tat = tat + cost * interval
if new_tat > now + tau then
  local remaining = math.floor((now + tau - tat) / interval)
  if remaining < 0 then remaining = 0 end
  local retry = new_tat - tau - now
  if cost > burst then retry = window end
  return {0, remaining, tat - now, retry, 0}
end
if cost > 0 then
  redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
end
return {1, math.floor((now + tau - new_tat) / interval), new_tat - now, -1, cost}
";

/// Fixed window from the first counted request. KEYS[1]: the count, expiring with the window.
/// ARGV: limit, window (ms), cost, up-to.
const FIXED_WINDOW: &str = r"
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local stored = redis.call('GET', KEYS[1])
local count = 0
local ttl = window
if stored then
  count = tonumber(stored)
  ttl = redis.call('PTTL', KEYS[1])
  if ttl < 0 then
    ttl = window
    redis.call('PEXPIRE', KEYS[1], window)
  end
end
if ARGV[4] == '1' then
  cost = math.max(math.min(limit - count, cost), 1)
end
if count + cost > limit then
  local retry = ttl * 1000
  if cost > limit then retry = window * 1000 end
  return {0, limit - count, ttl * 1000, retry, 0}
end
if cost > 0 then
  if stored then
    redis.call('INCRBY', KEYS[1], cost)
  else
    redis.call('SET', KEYS[1], cost, 'PX', window)
  end
end
return {1, limit - count - cost, ttl * 1000, -1, cost}
";

/// Two-window approximation. KEYS[1]: a hash {w: window index, p: previous count, c: current
/// count}. ARGV: limit, window (µs), cost, up-to.
const SLIDING_WINDOW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local index = math.floor(now / window)
local elapsed = now - index * window
local stored = redis.call('HMGET', KEYS[1], 'w', 'p', 'c')
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
if ARGV[4] == '1' then
  local available = math.floor(limit - weighted - cur)
  cost = math.max(math.min(available, cost), 1)
end
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
  return {0, remaining, reset, retry, 0}
end
cur = cur + cost
if cost > 0 then
  redis.call('HSET', KEYS[1], 'w', string.format('%d', index), 'p', string.format('%d', prev),
    'c', string.format('%d', cur))
  redis.call('PEXPIRE', KEYS[1], math.ceil((2 * window - elapsed) / 1000))
end
local remaining = math.floor(limit - weighted - cur)
if remaining < 0 then remaining = 0 end
return {1, remaining, reset, -1, cost}
";

/// A script's source and SHA-1, computed once.
#[derive(Debug)]
pub(crate) struct Script {
    source: &'static str,
    sha: String,
}

impl Script {
    fn new(source: &'static str) -> Self {
        Self {
            source,
            sha: redis::Script::new(source).get_hash().to_owned(),
        }
    }
}

/// The three scripts.
#[derive(Debug)]
pub(crate) struct Scripts {
    token_bucket: Script,
    fixed_window: Script,
    sliding_window: Script,
}

/// A script's reply, before it becomes a verdict.
pub(crate) type Reply = (i64, i64, i64, i64, i64);

impl Scripts {
    pub(crate) fn new() -> Self {
        Self {
            token_bucket: Script::new(TOKEN_BUCKET),
            fixed_window: Script::new(FIXED_WINDOW),
            sliding_window: Script::new(SLIDING_WINDOW),
        }
    }

    /// Runs `policy`'s script on `key` for `demand`: `EVALSHA`, then `EVAL` on `NOSCRIPT`.
    pub(crate) async fn run(
        &self,
        conn: &Conn,
        policy: &Policy,
        key: &str,
        demand: Demand,
    ) -> RedisResult<Reply> {
        let limit = policy.limit();
        let (cost, up_to) = match demand {
            Demand::Exact(cost) => (cost, 0),
            Demand::UpTo(max) => (max, 1),
        };
        // On the path of every request a global policy counts: no allocation but the command's.
        let (script, args, count): (&Script, [u64; 5], usize) = match limit.algorithm {
            Algorithm::TokenBucket { burst } => (
                &self.token_bucket,
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
                &self.fixed_window,
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
                &self.sliding_window,
                [limit.requests, limit.window_micros(), cost, up_to, 0],
                4,
            ),
        };
        let args = &args[..count];
        match conn.eval("EVALSHA", &script.sha, key, args).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                conn.eval("EVAL", script.source, key, args).await
            }
            other => other,
        }
    }
}
