//! Redis for end-to-end tests: the quota engine's own process handles
//! (`tollgate_quota::testing`), started on ports from this harness's registry.

use anyhow::Context as _;
pub use tollgate_quota::testing::{RedisCluster, RedisSentinel, RedisServer, require_redis};

use crate::ports::free_port;

/// Starts a standalone `redis-server` (persistence off) on a port from [`free_port`].
///
/// Returns `Ok(None)`, after printing why, when `redis-server` is missing and the test should
/// be skipped; under `CI=true` a missing Redis panics instead.
pub fn start_redis() -> anyhow::Result<Option<RedisServer>> {
    if !require_redis() {
        return Ok(None);
    }
    let port = free_port();
    RedisServer::start_on("redis", port, &[])
        .map(Some)
        .with_context(|| format!("starting redis-server on port {port}"))
}
