//! The engine over the in-process backend, through the public API, on a hand-driven clock:
//! what the edge proxy sees in local-only mode and under `tollgate dev`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tollgate_quota::{
    Decision, FailureMode, Limit, LocalConfig, ManualClock, Outcome, Policy, Quota, QuotaObserver,
    RateLimitHeaders,
};

fn engine() -> (Quota, ManualClock) {
    let clock = ManualClock::starting_at(Duration::from_secs(1000));
    let quota = Quota::local(LocalConfig::with_clock(Arc::new(clock.clone())));
    (quota, clock)
}

fn policy(name: &str, limit: Limit) -> Policy {
    Policy::new(name, limit, FailureMode::Open).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_under_concurrency() {
    let (quota, _clock) = engine();
    let policy = policy("p", Limit::sliding_window(50, Duration::from_secs(60)));
    let mut tasks = Vec::new();
    for key in 0..3 {
        for _ in 0..8 {
            let (quota, policy) = (quota.clone(), policy.clone());
            tasks.push(tokio::spawn(async move {
                let mut allowed = 0;
                for _ in 0..200 {
                    if quota.check(&policy, &format!("k{key}")).await.is_allowed() {
                        allowed += 1;
                    }
                }
                (key, allowed)
            }));
        }
    }
    let mut per_key = [0; 3];
    for task in tasks {
        let (key, allowed) = task.await.unwrap();
        per_key[key] += allowed;
    }
    assert_eq!(per_key, [50, 50, 50]);
    let metrics = quota.metrics().snapshot();
    assert_eq!((metrics.allowed, metrics.limited), (150, 4650));
    assert!(metrics.backend_up);
}

#[tokio::test]
async fn policies_and_identities_are_separate_counters() {
    let (quota, clock) = engine();
    let minute = policy("minute", Limit::fixed_window(2, Duration::from_secs(60)));
    let burst = policy("burst", Limit::token_bucket(1, Duration::from_secs(1), 1));
    assert!(quota.check(&minute, "alice").await.is_allowed());
    assert!(quota.check(&minute, "alice").await.is_allowed());
    assert!(!quota.check(&minute, "alice").await.is_allowed());
    assert!(quota.check(&minute, "bob").await.is_allowed());
    assert!(quota.check(&burst, "alice").await.is_allowed());
    assert!(!quota.check(&burst, "alice").await.is_allowed());
    clock.advance(Duration::from_secs(1));
    assert!(quota.check(&burst, "alice").await.is_allowed());
    assert!(!quota.check(&minute, "alice").await.is_allowed());
    clock.advance(Duration::from_secs(59));
    assert!(quota.check(&minute, "alice").await.is_allowed());
}

#[tokio::test]
async fn costs_and_peeks() {
    let (quota, _clock) = engine();
    let policy = policy("bytes", Limit::fixed_window(10, Duration::from_secs(10)));
    assert_eq!(quota.check_n(&policy, "c", 7).await.remaining, 3);
    let refused = quota.check_n(&policy, "c", 4).await;
    assert_eq!((refused.outcome, refused.remaining), (Outcome::Limited, 3));
    assert_eq!(refused.retry_after, Some(Duration::from_secs(10)));
    // Cost 0 reads without counting.
    let peek = quota.check_n(&policy, "c", 0).await;
    assert_eq!((peek.outcome, peek.remaining), (Outcome::Allowed, 3));
    assert_eq!(quota.check_n(&policy, "c", 3).await.remaining, 0);
}

#[tokio::test]
async fn decision_and_headers_over_time() {
    let (quota, clock) = engine();
    // 10 per minute with a bucket of 5.
    let policy = policy("api", Limit::token_bucket(10, Duration::from_secs(60), 5));
    let mut last = None;
    for _ in 0..5 {
        last = Some(quota.check(&policy, "c").await);
    }
    let last = last.unwrap();
    assert_eq!(
        last,
        Decision {
            outcome: Outcome::Allowed,
            limit: 10,
            window: Duration::from_secs(60),
            remaining: 0,
            reset_after: Duration::from_secs(30),
            retry_after: None,
        }
    );
    let refused = quota.check(&policy, "c").await;
    assert_eq!(refused.retry_after, Some(Duration::from_secs(6)));
    let headers = RateLimitHeaders::new([(&policy, &refused)]);
    assert_eq!(
        headers.iter().collect::<Vec<_>>(),
        [
            ("ratelimit-policy", r#""api";q=10;w=60;tollgate-burst=5"#),
            // Refused: `t` is the retry delay, so Retry-After does not end before it.
            ("ratelimit", r#""api";r=0;t=6"#),
            ("x-ratelimit-limit", "10"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "6"),
            ("retry-after", "6"),
        ]
    );
    clock.advance(Duration::from_secs(6));
    assert_eq!(quota.check(&policy, "c").await.outcome, Outcome::Allowed);
}

#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<(String, Outcome)>>);

impl QuotaObserver for Recorder {
    fn on_decision(&self, policy: &Policy, decision: &Decision) {
        self.0
            .lock()
            .unwrap()
            .push((policy.name().to_owned(), decision.outcome));
    }
}

#[tokio::test]
async fn observer_sees_every_decision_in_every_clone() {
    let (quota, _clock) = engine();
    let recorder = Arc::new(Recorder::default());
    let clone = quota.clone();
    assert!(quota.set_observer(recorder.clone()));
    assert!(!quota.set_observer(Arc::new(Recorder::default())));
    let policy = policy("obs", Limit::fixed_window(1, Duration::from_secs(1)));
    clone.check(&policy, "c").await;
    quota.check(&policy, "c").await;
    assert_eq!(
        *recorder.0.lock().unwrap(),
        [
            ("obs".to_owned(), Outcome::Allowed),
            ("obs".to_owned(), Outcome::Limited)
        ]
    );
}

#[test]
fn engine_is_cheap_to_share() {
    fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>() {}
    assert_send_sync_clone::<Quota>();
    assert_send_sync_clone::<Policy>();
    let (quota, _clock) = engine();
    let policy = policy("k", Limit::fixed_window(1, Duration::from_secs(1)));
    assert_eq!(quota.key(&policy, "c"), "tollgate:rl:v1:{k\x1fc}:fw");
}
