//! The Redis backend against real `redis-server` processes on loopback: exact counting under
//! concurrency, each algorithm over time, Redis dying and coming back, Cluster and Sentinel.
//!
//! Time-based tests use windows of a second or two and assert behaviour with generous
//! margins; none asserts speed (the one bound on latency is 10× the configured timeout).

use std::process::Command;
use std::time::{Duration, Instant};

use tollgate_quota::testing::{
    RedisCluster, RedisSentinel, RedisServer, redis_cli_bin, require_redis,
};
use tollgate_quota::{
    Decision, FailureMode, Limit, Outcome, Policy, Quota, RateLimitHeaders, RedisConfig,
};

/// A timeout that a loaded test machine does not hit by accident.
const RELAXED_TIMEOUT: Duration = Duration::from_secs(2);
/// The timeout in the failure tests: short enough to matter, long enough for a busy machine.
const FAILURE_TIMEOUT: Duration = Duration::from_millis(200);

macro_rules! require_redis {
    () => {
        if !require_redis() {
            return;
        }
    };
}

fn policy(name: &str, limit: Limit) -> Policy {
    Policy::new(name, limit, FailureMode::Open).unwrap()
}

async fn connect(url: &str, timeout: Duration) -> Quota {
    let quota = Quota::redis(RedisConfig::new(url).with_timeout(timeout)).unwrap();
    assert!(
        quota.wait_until_up(Duration::from_secs(10)).await,
        "could not connect to {url}"
    );
    quota
}

fn hour_limits() -> [Limit; 3] {
    let hour = Duration::from_secs(3600);
    [
        Limit::fixed_window(50, hour),
        Limit::sliding_window(50, hour),
        // One token every 72 s: nothing refills while the test runs.
        Limit::token_bucket(50, hour, 50),
    ]
}

/// 3 keys × 8 tasks × 200 requests against 50 per hour: exactly 50 pass per key.
async fn assert_exact_under_concurrency(quota: &Quota, run: &str) {
    for limit in hour_limits() {
        let policy = policy(
            &format!("exact-{run}-{}", limit.algorithm.short_name()),
            limit,
        );
        let mut tasks = Vec::new();
        for key in 0..3 {
            for _ in 0..8 {
                let (quota, policy) = (quota.clone(), policy.clone());
                tasks.push(tokio::spawn(async move {
                    let mut allowed = 0u64;
                    for _ in 0..200 {
                        let decision = quota.check(&policy, &format!("client-{key}")).await;
                        assert!(decision.is_counted(), "{decision:?}");
                        if decision.is_allowed() {
                            allowed += 1;
                        }
                    }
                    (key, allowed)
                }));
            }
        }
        let mut per_key = [0u64; 3];
        for task in tasks {
            let (key, allowed) = task.await.unwrap();
            per_key[key] += allowed;
        }
        assert_eq!(per_key, [50, 50, 50], "{:?}", policy.limit().algorithm);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_under_concurrency() {
    require_redis!();
    let server = RedisServer::start().unwrap();
    let quota = connect(&server.url(), RELAXED_TIMEOUT).await;
    assert_exact_under_concurrency(&quota, "standalone").await;
    let metrics = quota.metrics().snapshot();
    assert_eq!(metrics.allowed, 3 * 3 * 50);
    assert_eq!(metrics.limited, 3 * 3 * (1600 - 50));
    assert_eq!(metrics.errors + metrics.timeouts + metrics.failed_open, 0);
}

#[tokio::test]
async fn fixed_window_over_time() {
    require_redis!();
    let server = RedisServer::start().unwrap();
    let quota = connect(&server.url(), RELAXED_TIMEOUT).await;
    let policy = policy("fixed", Limit::fixed_window(3, Duration::from_secs(2)));
    for expected in [2, 1, 0] {
        let d = quota.check(&policy, "c").await;
        assert_eq!((d.outcome, d.remaining), (Outcome::Allowed, expected));
        assert!(d.reset_after <= Duration::from_secs(2) && d.reset_after > Duration::ZERO);
    }
    let refused = quota.check(&policy, "c").await;
    assert_eq!(refused.outcome, Outcome::Limited);
    assert_eq!(refused.remaining, 0);
    let retry_after = refused.retry_after.expect("a refusal says when to retry");
    assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(2));
    // Refusals are not counted, and do not move the window.
    let again = quota.check(&policy, "c").await;
    assert_eq!(again.outcome, Outcome::Limited);
    assert!(again.retry_after.unwrap() <= retry_after);
    // Once the window is over, a fresh one starts with the full quota.
    tokio::time::sleep(retry_after + Duration::from_millis(50)).await;
    let d = quota.check(&policy, "c").await;
    assert_eq!((d.outcome, d.remaining), (Outcome::Allowed, 2));
    // The key expires with its window: nothing is left behind.
    let key = quota.key(&policy, "c");
    let ttl: i64 = server.command(&["PTTL", &key]).unwrap().parse().unwrap();
    assert!(ttl > 0 && ttl <= 2000, "ttl {ttl}");
}

#[tokio::test]
async fn token_bucket_over_time() {
    require_redis!();
    let server = RedisServer::start().unwrap();
    let quota = connect(&server.url(), RELAXED_TIMEOUT).await;
    // One token per second, bucket of 3.
    let policy = policy("bucket", Limit::token_bucket(1, Duration::from_secs(1), 3));
    for expected in [2, 1, 0] {
        let d = quota.check(&policy, "c").await;
        assert_eq!((d.outcome, d.remaining), (Outcome::Allowed, expected));
    }
    let refused = quota.check(&policy, "c").await;
    assert_eq!(refused.outcome, Outcome::Limited);
    // Full again three tokens from now; the next token in at most a second.
    assert!(refused.reset_after > Duration::from_secs(2));
    assert!(refused.reset_after <= Duration::from_secs(3));
    let retry_after = refused.retry_after.unwrap();
    assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1));
    tokio::time::sleep(retry_after + Duration::from_millis(50)).await;
    assert_eq!(quota.check(&policy, "c").await.outcome, Outcome::Allowed);
    // The key expires when the bucket would be full.
    let key = quota.key(&policy, "c");
    let ttl: i64 = server.command(&["PTTL", &key]).unwrap().parse().unwrap();
    assert!(ttl > 0 && ttl <= 3000, "ttl {ttl}");
}

#[tokio::test]
async fn sliding_window_over_time() {
    require_redis!();
    let server = RedisServer::start().unwrap();
    let quota = connect(&server.url(), RELAXED_TIMEOUT).await;
    let policy = policy("sliding", Limit::sliding_window(4, Duration::from_secs(1)));
    let mut allowed = 0;
    while quota.check(&policy, "c").await.is_allowed() {
        allowed += 1;
        assert!(allowed <= 4, "more than the limit passed");
    }
    // If the loop straddled a window edge, the previous window's weight let fewer through.
    assert!((1..=4).contains(&allowed), "{allowed}");
    let refused = quota.check(&policy, "c").await;
    assert_eq!((refused.outcome, refused.remaining), (Outcome::Limited, 0));
    let retry_after = refused.retry_after.unwrap();
    // Until the previous window has decayed enough: within two windows.
    assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(2));
    tokio::time::sleep(retry_after + Duration::from_millis(50)).await;
    assert!(quota.check(&policy, "c").await.is_allowed());
    // The state is one hash per key: window index and the two counts.
    let key = quota.key(&policy, "c");
    let fields = server.command(&["HGETALL", &key]).unwrap();
    assert!(fields.lines().any(|l| l == "w"), "{fields}");
}

#[tokio::test]
async fn scripts_reload_after_flush() {
    require_redis!();
    let server = RedisServer::start().unwrap();
    let quota = connect(&server.url(), RELAXED_TIMEOUT).await;
    let policy = policy("flush", Limit::fixed_window(10, Duration::from_secs(60)));
    assert_eq!(quota.check(&policy, "c").await.remaining, 9);
    // A restart or failover loses the script cache: EVALSHA gets NOSCRIPT, EVAL recovers.
    assert_eq!(server.command(&["SCRIPT", "FLUSH"]).unwrap(), "OK");
    assert_eq!(quota.check(&policy, "c").await.remaining, 8);
    assert_eq!(quota.check(&policy, "c").await.remaining, 7);
    assert_eq!(quota.metrics().snapshot().errors, 0);
}

/// `redis-cli -p <port> -a <password> [-n <db>] <args>`: the reply as text.
fn cli(server: &RedisServer, password: &str, db: Option<&str>, args: &[&str]) -> String {
    let mut command = Command::new(redis_cli_bin().unwrap());
    command
        .args([
            "-p",
            &server.port().to_string(),
            "-a",
            password,
            "--no-auth-warning",
        ])
        .args(db.map(|db| ["-n", db]).into_iter().flatten())
        .args(args);
    let output = command.output().unwrap();
    assert!(output.status.success(), "redis-cli {args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn password_user_and_database_from_the_url() {
    require_redis!();
    let server = RedisServer::start_with_args("auth", &["--requirepass", "s3cret"]).unwrap();
    let port = server.port();
    let policy = policy("auth", Limit::fixed_window(10, Duration::from_secs(60)));

    // The default user's password, and database 3.
    let quota = connect(
        &format!("redis://:s3cret@127.0.0.1:{port}/3"),
        RELAXED_TIMEOUT,
    )
    .await;
    assert_eq!(quota.check(&policy, "c").await.remaining, 9);
    assert_eq!(cli(&server, "s3cret", Some("3"), &["DBSIZE"]), "1");
    assert_eq!(cli(&server, "s3cret", None, &["DBSIZE"]), "0");

    // An ACL user, in database 0, sharing nothing with database 3.
    cli(
        &server,
        "s3cret",
        None,
        &["ACL", "SETUSER", "edge", "on", ">edge-pw", "~*", "+@all"],
    );
    let as_user = connect(
        &format!("redis://edge:edge-pw@127.0.0.1:{port}"),
        RELAXED_TIMEOUT,
    )
    .await;
    assert_eq!(as_user.check(&policy, "c").await.remaining, 9);
    assert_eq!(cli(&server, "s3cret", None, &["DBSIZE"]), "1");

    // A wrong password never brings the link up: decisions follow the failure mode at once.
    let refused = Quota::redis(
        RedisConfig::new(format!("redis://:wrong@127.0.0.1:{port}")).with_timeout(RELAXED_TIMEOUT),
    )
    .unwrap();
    assert!(!refused.wait_until_up(Duration::from_secs(1)).await);
    let decision = refused.check(&policy, "c").await;
    assert!(decision.is_allowed());
    assert_eq!(decision.outcome, Outcome::FailedOpen);
}

#[tokio::test]
async fn headers_from_a_real_decision() {
    require_redis!();
    let server = RedisServer::start().unwrap();
    let quota = connect(&server.url(), RELAXED_TIMEOUT).await;
    let policy = policy(
        "per-minute",
        Limit::fixed_window(2, Duration::from_secs(60)),
    );
    let first = quota.check(&policy, "c").await;
    let headers = RateLimitHeaders::new([(&policy, &first)]);
    assert_eq!(
        headers.get("ratelimit-policy"),
        Some(r#""per-minute";q=2;w=60"#)
    );
    assert_eq!(headers.get("ratelimit"), Some(r#""per-minute";r=1;t=60"#));
    quota.check(&policy, "c").await;
    let refused = quota.check(&policy, "c").await;
    let headers = RateLimitHeaders::new([(&policy, &refused)]);
    let retry: u64 = headers.get("retry-after").unwrap().parse().unwrap();
    assert!((59..=60).contains(&retry), "{retry}");
    assert_eq!(
        headers.get("ratelimit"),
        Some(format!(r#""per-minute";r=0;t={retry}"#).as_str())
    );
}

/// Checks `policy` `n` times; asserts each call returns within 10× the timeout.
async fn checks_while_down(quota: &Quota, policy: &Policy, n: usize) -> Vec<Decision> {
    let mut decisions = Vec::new();
    for _ in 0..n {
        let start = Instant::now();
        decisions.push(quota.check(policy, "c").await);
        let took = start.elapsed();
        assert!(
            took < FAILURE_TIMEOUT * 10,
            "a check took {took:?} with a {FAILURE_TIMEOUT:?} timeout"
        );
    }
    decisions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_then_restarted() {
    require_redis!();
    let mut server = RedisServer::start().unwrap();
    let quota = connect(&server.url(), FAILURE_TIMEOUT).await;
    let limit = Limit::fixed_window(2, Duration::from_secs(60));
    let open = Policy::new("open", limit, FailureMode::Open).unwrap();
    let closed = Policy::new("closed", limit, FailureMode::Closed).unwrap();
    assert_eq!(quota.check(&open, "c").await.outcome, Outcome::Allowed);
    assert_eq!(quota.check(&closed, "c").await.outcome, Outcome::Allowed);

    server.kill();
    let open_decisions = checks_while_down(&quota, &open, 20).await;
    assert!(
        open_decisions
            .iter()
            .all(|d| d.outcome == Outcome::FailedOpen && d.is_allowed()),
        "{open_decisions:?}"
    );
    let closed_decisions = checks_while_down(&quota, &closed, 20).await;
    assert!(
        closed_decisions
            .iter()
            .all(|d| d.outcome == Outcome::FailedClosed
                && !d.is_allowed()
                && d.retry_after.is_some()),
        "{closed_decisions:?}"
    );
    let metrics = quota.metrics().snapshot();
    assert!(!metrics.backend_up);
    assert_eq!((metrics.failed_open, metrics.failed_closed), (20, 20));
    // Once known down, checks do not even try: they fail fast.
    assert!(metrics.short_circuited >= 30, "{metrics:?}");

    // Same port, empty counters: limits apply again within 5 s.
    server.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let d = quota.check(&closed, "fresh").await;
        if d.is_counted() {
            assert_eq!(d.outcome, Outcome::Allowed);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not recovered 5 s after the restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        quota.check(&closed, "fresh").await.outcome,
        Outcome::Allowed
    );
    assert_eq!(
        quota.check(&closed, "fresh").await.outcome,
        Outcome::Limited
    );
    assert!(quota.metrics().snapshot().backend_up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_hanging_trips_the_circuit() {
    require_redis!();
    let server = RedisServer::start().unwrap();
    let quota = connect(&server.url(), FAILURE_TIMEOUT).await;
    let closed = Policy::new(
        "closed",
        Limit::fixed_window(100, Duration::from_secs(60)),
        FailureMode::Closed,
    )
    .unwrap();
    assert!(quota.check(&closed, "c").await.is_allowed());

    // A stopped process keeps its socket open but never answers: only the timeout helps.
    let pid = server.pid().unwrap().to_string();
    signal("-STOP", &pid);
    wait_for_state(&pid, 'T');
    let decisions = checks_while_down(&quota, &closed, 20).await;
    signal("-CONT", &pid);
    assert!(decisions.iter().all(|d| d.outcome == Outcome::FailedClosed));
    let metrics = quota.metrics().snapshot();
    // Three timeouts in a row open the circuit; the rest fail without waiting.
    assert_eq!(metrics.timeouts, 3, "{metrics:?}");
    assert_eq!(metrics.short_circuited, 17, "{metrics:?}");

    // Answering again: the reconnect task closes the circuit.
    assert!(quota.wait_until_up(Duration::from_secs(10)).await);
    assert!(quota.check(&closed, "c").await.is_counted());
}

/// Waits until `/proc/<pid>/stat` shows the process in `state` (`T`: stopped).
fn wait_for_state(pid: &str, state: char) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // "pid (comm) S ...": the state follows the closing parenthesis.
        let current = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next());
        if current == Some(state) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "process {pid} never reached state {state}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn signal(sig: &str, pid: &str) {
    let status = Command::new("kill").args([sig, pid]).status().unwrap();
    assert!(status.success(), "kill {sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster() {
    require_redis!();
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3))
        .await
        .unwrap()
        .unwrap();
    let quota = connect(&cluster.url(), RELAXED_TIMEOUT).await;
    assert_exact_under_concurrency(&quota, "cluster").await;

    // Identities spread over the masters; each one's keys stay in one slot.
    let policy = policy("spread", Limit::fixed_window(3, Duration::from_secs(3600)));
    let mut ports = std::collections::BTreeSet::new();
    for i in 0..30 {
        let identity = format!("consumer-{i}");
        let allowed = {
            let mut n = 0;
            for _ in 0..5 {
                if quota.check(&policy, &identity).await.is_allowed() {
                    n += 1;
                }
            }
            n
        };
        assert_eq!(allowed, 3, "{identity}");
        let key = quota.key(&policy, &identity);
        let node = cluster.node_for(&key).expect("some node owns the key");
        assert_eq!(node.command(&["GET", &key]).unwrap(), "3");
        let tag = format!("spread\x1f{identity}");
        assert_eq!(
            node.command(&["CLUSTER", "KEYSLOT", &key]).unwrap(),
            node.command(&["CLUSTER", "KEYSLOT", &tag]).unwrap()
        );
        ports.insert(node.port());
    }
    assert_eq!(ports.len(), 3, "30 identities all on {ports:?}");
    let metrics = quota.metrics().snapshot();
    assert_eq!(metrics.errors + metrics.timeouts + metrics.failed_open, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel() {
    require_redis!();
    let mut sentinel = tokio::task::spawn_blocking(RedisSentinel::start)
        .await
        .unwrap()
        .unwrap();
    let quota = connect(&sentinel.url(), RELAXED_TIMEOUT).await;
    let policy = policy("sentinel", Limit::fixed_window(2, Duration::from_secs(60)));
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        outcomes.push(quota.check(&policy, "c").await.outcome);
    }
    assert_eq!(
        outcomes,
        [Outcome::Allowed, Outcome::Allowed, Outcome::Limited]
    );
    // The master dies and comes back at the same address: the sentinel still names it.
    sentinel.master().kill();
    let d = quota.check(&policy, "c").await;
    assert_eq!(d.outcome, Outcome::FailedOpen);
    sentinel.master().restart().unwrap();
    assert!(quota.wait_until_up(Duration::from_secs(10)).await);
    assert_eq!(quota.check(&policy, "c").await.outcome, Outcome::Allowed);
}

#[tokio::test]
async fn unreachable_at_start_fails_open_at_once() {
    require_redis!();
    // Nothing listens on this port: the engine starts anyway and fails open until Redis exists.
    let server = RedisServer::start().unwrap();
    let url = server.url();
    drop(server);
    let quota = Quota::redis(RedisConfig::new(&url).with_timeout(FAILURE_TIMEOUT)).unwrap();
    let policy = policy("early", Limit::fixed_window(1, Duration::from_secs(60)));
    let decisions = checks_while_down(&quota, &policy, 5).await;
    assert!(decisions.iter().all(|d| d.outcome == Outcome::FailedOpen));
    assert!(!quota.is_backend_up());
}

/// Script calls the server has answered (`EVALSHA` and `EVAL`).
fn script_calls(server: &RedisServer) -> u64 {
    let stats = server.command(&["INFO", "commandstats"]).unwrap();
    stats
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Decisions that wait to be sent together go out as one script call per policy, each key's
/// decided in order: the answers are those of one call per decision.
#[tokio::test]
async fn decisions_waiting_together_share_one_script_call_per_policy() {
    require_redis!();
    let server = RedisServer::start().unwrap();
    let quota = connect(&server.url(), RELAXED_TIMEOUT).await;
    let hour = Duration::from_secs(3600);
    let window = policy("together-fw", Limit::fixed_window(10, hour));
    let bucket = policy("together-tb", Limit::token_bucket(50, hour, 3));
    let sliding = policy("together-sw", Limit::sliding_window(4, hour));
    // A fresh server answers a script's first call with NOSCRIPT: load them first.
    for policy in [&window, &bucket, &sliding] {
        assert!(quota.check(policy, "warm-up").await.is_allowed());
    }
    let before = script_calls(&server);
    // On this single-threaded runtime the tasks run in the order spawned, each queueing its
    // decision, and the connection's writer runs after the last: one batch.
    let mut tasks = tokio::task::JoinSet::new();
    let asked = [
        (&window, "a", 15),
        (&window, "b", 5),
        (&bucket, "a", 6),
        (&sliding, "c", 6),
    ];
    for (index, &(policy, key, count)) in asked.iter().enumerate() {
        for _ in 0..count {
            let (quota, policy) = (quota.clone(), policy.clone());
            tasks.spawn(async move { (index, quota.check(&policy, key).await) });
        }
    }
    let mut remaining = vec![Vec::new(); asked.len()];
    let mut allowed = vec![0; asked.len()];
    while let Some(result) = tasks.join_next().await {
        let (index, decision) = result.unwrap();
        assert!(decision.is_counted(), "{decision:?}");
        if decision.is_allowed() {
            allowed[index] += 1;
            remaining[index].push(decision.remaining);
        }
    }
    assert_eq!(script_calls(&server) - before, 3, "one call per policy");
    assert_eq!(allowed, [10, 5, 3, 4]);
    for list in &mut remaining {
        list.sort_unstable();
    }
    assert_eq!(remaining[0], (0..10).collect::<Vec<u64>>());
    assert_eq!(remaining[1], [5, 6, 7, 8, 9]);
    assert_eq!(remaining[2], [0, 1, 2]);
    assert_eq!(remaining[3], [0, 1, 2, 3]);
    // Redis holds what one call per decision would have left.
    assert_eq!(
        server.command(&["GET", &quota.key(&window, "a")]).unwrap(),
        "10"
    );
    assert_eq!(
        server.command(&["GET", &quota.key(&window, "b")]).unwrap(),
        "5"
    );
    let later = quota.check(&window, "b").await;
    assert_eq!((later.is_allowed(), later.remaining), (true, 4));
}

/// Three proxies (engines) share one Redis and hammer one hot key in batched mode.
async fn hammer(proxies: &[Quota], policy: &Policy, tasks: usize, requests: usize) -> u64 {
    let mut handles = Vec::new();
    for quota in proxies {
        for _ in 0..tasks {
            let (quota, policy) = (quota.clone(), policy.clone());
            handles.push(tokio::spawn(async move {
                let mut allowed = 0u64;
                for _ in 0..requests {
                    let d = quota.check(&policy, "hot").await;
                    assert!(d.is_counted(), "{d:?}");
                    allowed += u64::from(d.is_allowed());
                }
                allowed
            }));
        }
    }
    let mut total = 0;
    for handle in handles {
        total += handle.await.unwrap();
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_mode_overshoot_bound() {
    require_redis!();
    let server = RedisServer::start().unwrap();
    let mut proxies = Vec::new();
    for _ in 0..3 {
        proxies.push(connect(&server.url(), RELAXED_TIMEOUT).await);
    }
    let hour = Duration::from_secs(3600);
    for (limit, bound) in [
        // Windows: leased tokens are counted before they are spent: never over the limit.
        (Limit::fixed_window(100, hour), 100),
        (Limit::sliding_window(100, hour), 100),
        // Token bucket: at most one lease (10) over, fleet-wide.
        (Limit::token_bucket(100, hour, 100), 110),
    ] {
        let name = format!("hot-{}", limit.algorithm.short_name());
        let policy = policy(&name, limit).with_lease(10).unwrap();
        let allowed = hammer(&proxies, &policy, 4, 100).await;
        eprintln!("{name}: {allowed} allowed by 3 proxies in batched mode");
        assert!(
            (1..=bound).contains(&allowed),
            "{name}: {allowed} allowed, bound {bound}"
        );
        // Redis counted every leased token: nothing more can be had there.
        let key = proxies[0].key(&policy, "hot");
        if limit.algorithm == tollgate_quota::Algorithm::FixedWindow {
            assert_eq!(server.command(&["GET", &key]).unwrap(), "100");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_mode_saves_round_trips() {
    require_redis!();
    let server = RedisServer::start().unwrap();
    let mut proxies = Vec::new();
    for _ in 0..3 {
        proxies.push(connect(&server.url(), RELAXED_TIMEOUT).await);
    }
    let policy = policy("hot", Limit::fixed_window(1000, Duration::from_secs(3600)))
        .with_lease(10)
        .unwrap();
    let before = script_calls(&server);
    // 900 requests, all within the limit.
    let allowed = hammer(&proxies, &policy, 2, 150).await;
    assert_eq!(allowed, 900);
    let calls = script_calls(&server) - before;
    eprintln!("{calls} script calls for 900 requests in batched mode");
    // About one call per 10 requests (more when refills race); unbatched it would be 900.
    assert!(calls <= 900 / 5, "{calls} script calls for 900 requests");

    // Local spending reports Redis's remaining at the proxy's last grant plus the tokens it still
    // holds. After the concurrent run that grant may be stale by any amount (another proxy may
    // have leased since), so the figures are checked one request at a time on a fresh key.
    let key = proxies[0].key(&policy, "cold");
    let mut seen = Vec::new();
    for (proxy, requests) in [(0, 3), (1, 1), (0, 1)] {
        for _ in 0..requests {
            let d = proxies[proxy].check(&policy, "cold").await;
            assert!(d.is_allowed(), "{d:?}");
            seen.push(d.remaining);
        }
    }
    // Proxy 0 leases 10 (Redis at 10) and spends 3; proxy 1 leases 10 (Redis at 20) and spends
    // one; proxy 0 spends one more from its lease, unaware of proxy 1's.
    assert_eq!(seen, [999, 998, 997, 989, 996]);
    assert_eq!(server.command(&["GET", &key]).unwrap(), "20");
}

/// Runs `openssl` with `args` in `dir`; false (with the reason printed) if it is missing.
fn openssl(dir: &std::path::Path, args: &[&str]) -> bool {
    match Command::new("openssl").args(args).current_dir(dir).output() {
        Ok(out) if out.status.success() => true,
        Ok(out) => panic!(
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => {
            eprintln!("skipping: openssl not runnable ({e})");
            false
        }
    }
}

#[tokio::test]
async fn tls_with_a_private_ca() {
    require_redis!();
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path();
    // A CA, and a server certificate for 127.0.0.1 signed by it.
    let steps: [&[&str]; 3] = [
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=tollgate-test-ca",
        ],
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "1",
            "-extfile",
            "san.ext",
        ],
    ];
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    for step in steps {
        if !openssl(dir, step) {
            return;
        }
    }
    let tls_port = tollgate_quota::testing::free_port().unwrap().to_string();
    let path = |f: &str| dir.join(f).display().to_string();
    let server = RedisServer::start_with_args(
        "redis-tls",
        &[
            "--tls-port",
            &tls_port,
            "--tls-cert-file",
            &path("server.pem"),
            "--tls-key-file",
            &path("server.key"),
            "--tls-ca-cert-file",
            &path("ca.pem"),
            "--tls-auth-clients",
            "no",
        ],
    )
    .unwrap();
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let mut config = RedisConfig::new(&url).with_timeout(RELAXED_TIMEOUT);
    config.tls_ca_pem = Some(std::fs::read(dir.join("ca.pem")).unwrap());
    let quota = Quota::redis(config).unwrap();
    assert!(
        quota.wait_until_up(Duration::from_secs(10)).await,
        "{}",
        server.log()
    );
    let policy = policy("tls", Limit::fixed_window(1, Duration::from_secs(60)));
    assert_eq!(quota.check(&policy, "c").await.outcome, Outcome::Allowed);
    assert_eq!(quota.check(&policy, "c").await.outcome, Outcome::Limited);
    // Without the private CA the server's certificate is not trusted: never connected.
    let untrusted = Quota::redis(RedisConfig::new(&url)).unwrap();
    assert!(!untrusted.wait_until_up(Duration::from_millis(500)).await);
    assert_eq!(
        untrusted.check(&policy, "c").await.outcome,
        Outcome::FailedOpen
    );
}
