use tollgate_proto::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use tollgate_quota::identity::identity;

use super::*;
use crate::model::Resource;
use crate::store::Change;

const KEY_A: &str = "0123456789abcdef0123456789abcdef";
const KEY_B: &str = "fedcba9876543210fedcba9876543210";

/// A store holding `policies`.
async fn store_with(policies: serde_json::Value) -> Store {
    let store = Store::in_memory();
    let policies: Vec<Policy> = serde_json::from_value(policies).unwrap();
    store
        .write(
            policies
                .into_iter()
                .map(|p| Change::Put(Resource::Policy(p)))
                .collect(),
        )
        .await
        .unwrap();
    store
}

async fn limiter(policies: serde_json::Value) -> RateLimiter {
    RateLimiter::in_process(store_with(policies).await)
}

fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(key, value)| Entry {
                key: (*key).to_owned(),
                value: (*value).to_owned(),
            })
            .collect(),
        ..Default::default()
    }
}

fn request(descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: "tollgate".to_owned(),
        descriptors,
        hits_addend: 0,
    }
}

fn header<'a>(response: &'a RateLimitResponse, name: &str) -> Option<&'a str> {
    response
        .response_headers_to_add
        .iter()
        .find(|h| h.key == name)
        .map(|h| h.value.as_str())
}

fn over_limit(response: &RateLimitResponse) -> bool {
    response.overall_code == Code::OverLimit as i32
}

/// The request's quota decision in the answer's dynamic metadata, for Envoy's access log.
fn quota_metadata(response: &RateLimitResponse) -> Option<&str> {
    use tollgate_proto::google::protobuf::value::Kind;
    match &response
        .dynamic_metadata
        .as_ref()?
        .fields
        .get("quota")?
        .kind
    {
        Some(Kind::StringValue(outcome)) => Some(outcome),
        _ => None,
    }
}

#[test]
fn descriptors_are_read_back_as_the_translator_shapes_them() {
    let d = descriptor(&[
        ("policy", "p"),
        ("tier", "pro"),
        ("consumer", "acme"),
        ("remote_address", "10.0.0.1"),
        ("header:x-tenant", "t1"),
    ]);
    assert_eq!(
        parse(&d),
        Some(Parsed {
            policy: "p",
            tier: Some("pro"),
            parts: vec![
                ("consumer", "acme"),
                ("client_ip", "10.0.0.1"),
                ("header:x-tenant", "t1")
            ],
        })
    );
    // Anything else is not one of ours.
    assert_eq!(parse(&descriptor(&[("generic_key", "p")])), None);
    assert_eq!(parse(&descriptor(&[])), None);
    assert_eq!(
        parse(&descriptor(&[
            ("policy", "p"),
            ("consumer", "a"),
            ("tier", "x")
        ])),
        None
    );
}

#[tokio::test]
async fn each_key_gets_its_quota_then_a_429_with_the_headers() {
    let rls = limiter(serde_json::json!([{"type": "rate_limit", "name": "per-key",
        "key": ["api_key"], "algorithm": "fixed_window",
        "limit": {"requests": 3, "window_s": 60}}]))
    .await;
    let for_key = |key: &str| request(vec![descriptor(&[("policy", "per-key"), ("api_key", key)])]);
    for remaining in [2, 1, 0] {
        let response = rls.decide(&for_key(KEY_A)).await.unwrap();
        assert!(!over_limit(&response), "{response:?}");
        assert_eq!(
            header(&response, "ratelimit-policy"),
            Some(r#""per-key";q=3;w=60"#)
        );
        assert_eq!(
            header(&response, "ratelimit"),
            Some(format!(r#""per-key";r={remaining};t=60"#).as_str())
        );
        assert_eq!(header(&response, "retry-after"), None);
        assert_eq!(header(&response, "x-ratelimit-limit"), None);
        assert_eq!(response.statuses[0].limit_remaining, remaining);
        assert_eq!(
            response.statuses[0].current_limit.as_ref().unwrap().unit,
            Unit::Minute as i32
        );
        assert!(response.raw_body.is_empty());
        assert_eq!(quota_metadata(&response), Some("allowed"));
    }
    let refused = rls.decide(&for_key(KEY_A)).await.unwrap();
    assert!(over_limit(&refused));
    assert_eq!(quota_metadata(&refused), Some("limited"));
    assert_eq!(refused.statuses[0].code, Code::OverLimit as i32);
    let body: serde_json::Value = serde_json::from_slice(&refused.raw_body).unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(header(&refused, "content-type"), Some("application/json"));
    assert_eq!(header(&refused, "retry-after"), Some("60"));
    assert_eq!(header(&refused, "ratelimit"), Some(r#""per-key";r=0;t=60"#));
    // Another key has its own counter.
    assert!(!over_limit(&rls.decide(&for_key(KEY_B)).await.unwrap()));
    // The counter is the one edge proxies use for the same identity.
    let policy = &rls.index().policies["per-key"];
    let key = rls.global_quota().key(
        policy.default.as_ref().unwrap(),
        &identity(&[("api_key", KEY_A)]),
    );
    assert_eq!(
        key,
        format!("tollgate:rl:v1:{{per-key\x1fapi_key={KEY_A}}}:fw")
    );

    let metrics = rls.store.metrics().render(0, &[]);
    for line in [
        r#"tollgate_rls_decisions_total{policy="per-key",outcome="allowed"} 4"#,
        r#"tollgate_rls_decisions_total{policy="per-key",outcome="limited"} 1"#,
        "tollgate_rls_backend_up 1",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
}

#[tokio::test]
async fn tiers_pick_the_limit_and_others_fall_back_to_the_default() {
    let rls = limiter(serde_json::json!([{"type": "rate_limit", "name": "plans",
        "key": ["consumer"], "algorithm": "fixed_window",
        "limit": {"requests": 1, "window_s": 60},
        "tiers": {"pro": {"requests": 3, "window_s": 60}}},
        {"type": "rate_limit", "name": "pro-only", "key": ["consumer"],
         "tiers": {"pro": {"requests": 1, "window_s": 60}}}]))
    .await;
    let rls = &rls;
    let allowed = |entries: &[(&str, &str)]| {
        let request = request(vec![descriptor(entries)]);
        async move { !over_limit(&rls.decide(&request).await.unwrap()) }
    };
    let pro = [("policy", "plans"), ("tier", "pro"), ("consumer", "acme")];
    for _ in 0..3 {
        assert!(allowed(&pro).await);
    }
    assert!(!allowed(&pro).await);
    // A consumer without a tier (Envoy leaves the entry out) gets the default limit.
    let plain = [("policy", "plans"), ("consumer", "beta")];
    assert!(allowed(&plain).await);
    assert!(!allowed(&plain).await);
    // An unknown tier too.
    let gold = [("policy", "plans"), ("tier", "gold"), ("consumer", "gamma")];
    assert!(allowed(&gold).await);
    assert!(!allowed(&gold).await);
    // Without a default limit, other tiers are not counted.
    for _ in 0..5 {
        assert!(allowed(&[("policy", "pro-only"), ("consumer", "delta")]).await);
    }
}

#[tokio::test]
async fn shadow_policies_count_but_never_refuse_nor_show() {
    let rls = limiter(serde_json::json!([
        {"type": "rate_limit", "name": "trial", "key": ["client_ip"], "shadow": true,
         "algorithm": "fixed_window", "limit": {"requests": 1, "window_s": 60}},
        {"type": "rate_limit", "name": "legacy", "key": [], "legacy_headers": true,
         "algorithm": "fixed_window", "limit": {"requests": 10, "window_s": 60}}]))
    .await;
    let both = || {
        request(vec![
            descriptor(&[("policy", "trial"), ("remote_address", "192.0.2.1")]),
            descriptor(&[("policy", "legacy")]),
        ])
    };
    for n in 0..3 {
        let response = rls.decide(&both()).await.unwrap();
        assert!(!over_limit(&response), "{response:?}");
        let decision = if n == 0 { "allowed" } else { "shadow_limited" };
        assert_eq!(quota_metadata(&response), Some(decision));
        assert_eq!(
            header(&response, "ratelimit-policy"),
            Some(r#""legacy";q=10;w=60"#),
            "shadow policies stay out of the headers"
        );
        assert_eq!(header(&response, "x-ratelimit-limit"), Some("10"));
        assert!(header(&response, "x-ratelimit-remaining").is_some());
        assert!(header(&response, "x-ratelimit-reset").is_some());
    }
    let metrics = rls.store.metrics().render(0, &[]);
    for line in [
        r#"tollgate_rls_decisions_total{policy="trial",outcome="allowed"} 1"#,
        r#"tollgate_rls_decisions_total{policy="trial",outcome="shadow_limited"} 2"#,
        r#"tollgate_rls_decisions_total{policy="legacy",outcome="allowed"} 3"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
}

#[tokio::test]
async fn unknown_policies_domains_and_descriptors_are_allowed_uncounted() {
    let rls = limiter(serde_json::json!([{"type": "rate_limit", "name": "one",
        "key": [], "limit": {"requests": 1, "window_s": 60}}]))
    .await;
    let gone = request(vec![
        descriptor(&[("policy", "deleted")]),
        descriptor(&[("generic_key", "x")]),
    ]);
    for _ in 0..3 {
        let response = rls.decide(&gone).await.unwrap();
        assert!(!over_limit(&response));
        assert_eq!(response.statuses.len(), 2);
        assert!(response.response_headers_to_add.is_empty());
        assert_eq!(quota_metadata(&response), None, "nothing was counted");
    }
    let mut foreign = request(vec![descriptor(&[("policy", "one")])]);
    foreign.domain = "other".to_owned();
    for _ in 0..3 {
        assert!(!over_limit(&rls.decide(&foreign).await.unwrap()));
    }
    // hits_addend is the request's cost.
    let mut heavy = request(vec![descriptor(&[("policy", "one")])]);
    heavy.hits_addend = 2;
    assert!(over_limit(&rls.decide(&heavy).await.unwrap()));
}

#[tokio::test]
async fn unreachable_counters_follow_each_policys_failure_mode() {
    let store = store_with(serde_json::json!([
        {"type": "rate_limit", "name": "lenient", "key": [], "limit": {"requests": 1, "window_s": 60}},
        {"type": "rate_limit", "name": "strict", "key": [], "failure_mode": "closed",
         "limit": {"requests": 1, "window_s": 60}},
        {"type": "rate_limit", "name": "nearby", "key": [], "mode": "local",
         "limit": {"requests": 1, "window_s": 60}}])).await;
    // A port nothing listens on: Redis is never reached.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let quota = Quota::redis(tollgate_quota::RedisConfig::new(format!(
        "redis://127.0.0.1:{port}"
    )))
    .unwrap();
    let rls = RateLimiter::new(store, quota);
    let one = |name: &str| request(vec![descriptor(&[("policy", name)])]);

    for _ in 0..2 {
        let lenient = rls.decide(&one("lenient")).await.unwrap();
        assert!(!over_limit(&lenient));
        // Nothing is claimed about counters nobody could read.
        assert_eq!(header(&lenient, "ratelimit"), None);
        assert!(header(&lenient, "ratelimit-policy").is_some());
        assert_eq!(quota_metadata(&lenient), Some("failed_open"));
    }
    // Envoy's fail-closed filter answers 503 for the error.
    let strict = rls.decide(&one("strict")).await.unwrap_err();
    assert_eq!(strict.code(), tonic::Code::Unavailable);
    // Local policies never touch Redis.
    assert!(!over_limit(&rls.decide(&one("nearby")).await.unwrap()));
    assert!(over_limit(&rls.decide(&one("nearby")).await.unwrap()));

    let metrics = rls.store.metrics().render(0, &[]);
    for line in [
        r#"tollgate_rls_decisions_total{policy="lenient",outcome="failed_open"} 2"#,
        r#"tollgate_rls_decisions_total{policy="strict",outcome="failed_closed"} 1"#,
        r#"tollgate_rls_decisions_total{policy="nearby",outcome="limited"} 1"#,
        "tollgate_rls_backend_up 0",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
}
