use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method};
use tollgate_proto::pack_any;
use tollgate_proto::rate_limit as rate_limit_pb;
use tollgate_proto::rate_limit::key_part::Part;
use tollgate_quota::{LocalConfig, ManualClock, Quota};

use super::*;
use crate::config::filters::api_key::{Consumer, KeyId};
use crate::config::filters::rate_limit::{filter_config, per_route};
use crate::proxy::headers::Addresses;

fn part(part: Part) -> rate_limit_pb::KeyPart {
    rate_limit_pb::KeyPart { part: Some(part) }
}

fn limit(requests: u64, window_ms: u64) -> rate_limit_pb::Limit {
    rate_limit_pb::Limit {
        requests,
        window_ms,
        burst: 0,
    }
}

fn policy(key: Vec<rate_limit_pb::KeyPart>, requests: u64) -> rate_limit_pb::RateLimitPolicy {
    rate_limit_pb::RateLimitPolicy {
        key,
        limit: Some(limit(requests, 60_000)),
        algorithm: rate_limit_pb::Algorithm::FixedWindow as i32,
        ..Default::default()
    }
}

fn config(policies: Vec<(&str, rate_limit_pb::RateLimitPolicy)>) -> RateLimit {
    let proto = rate_limit_pb::RateLimit {
        policies: policies
            .into_iter()
            .map(|(name, p)| (name.to_owned(), p))
            .collect::<BTreeMap<_, _>>(),
    };
    filter_config(&pack_any(&proto)).unwrap()
}

fn route_policies(names: &[&str]) -> RateLimitPerRoute {
    per_route(&pack_any(&rate_limit_pb::RateLimitPerRoute {
        policies: names.iter().map(|n| (*n).to_owned()).collect(),
    }))
    .unwrap()
}

fn quotas() -> (Quotas, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::starting_at(Duration::from_secs(1_000)));
    let engine = Quota::local(LocalConfig::with_clock(clock.clone()));
    (
        Quotas {
            global: engine.clone(),
            local: engine,
        },
        clock,
    )
}

fn consumer(name: &str, tier: Option<&str>) -> Consumer {
    Consumer {
        name: name.into(),
        tier: tier.map(Into::into),
        groups: Vec::new(),
        name_header: HeaderValue::from_str(name).unwrap(),
        tier_header: tier.map(|t| HeaderValue::from_str(t).unwrap()),
    }
}

/// The outcome of one request from `peer` with `headers`, authenticated as `metadata` says.
async fn check(
    config: &RateLimit,
    route: &RateLimitPerRoute,
    quotas: &Quotas,
    headers: &[(&'static str, &str)],
    metadata: &mut Metadata<'_>,
) -> Result<ResponseHeaders, Response<DownstreamBody>> {
    let mut header_map = HeaderMap::new();
    for (name, value) in headers {
        header_map.append(*name, HeaderValue::from_str(value).unwrap());
    }
    let mut path = Cow::Borrowed("/api");
    let req = crate::filter::Request {
        method: &Method::GET,
        scheme: "http",
        authority: "api",
        path_and_query: &mut path,
        headers: &mut header_map,
        addresses: Addresses::direct([192, 0, 2, 7].into()),
    };
    on_request(config, Some(route), quotas, "orders", &req, metadata).await
}

fn header<'h>(headers: &'h ResponseHeaders, name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.to_str().unwrap())
}

#[tokio::test]
async fn counts_each_api_key_apart_and_refuses_over_the_limit() {
    let config = config(vec![("per-key", policy(vec![part(Part::ApiKey(true))], 2))]);
    let route = route_policies(&["per-key"]);
    let (quotas, _clock) = quotas();
    let acme = consumer("acme", None);
    let key = |byte| Metadata {
        consumer: Some(&acme),
        api_key: Some(KeyId([byte; 16])),
        ..Default::default()
    };
    for remaining in ["1", "0"] {
        let headers = check(&config, &route, &quotas, &[], &mut key(1))
            .await
            .unwrap();
        assert_eq!(
            header(&headers, "ratelimit-policy"),
            Some(r#""per-key";q=2;w=60"#)
        );
        let ratelimit = header(&headers, "ratelimit").unwrap();
        assert!(
            ratelimit.starts_with(&format!(r#""per-key";r={remaining};t="#)),
            "{ratelimit}"
        );
        assert_eq!(header(&headers, "retry-after"), None);
        assert_eq!(header(&headers, "x-ratelimit-limit"), None);
    }
    let refused = check(&config, &route, &quotas, &[], &mut key(1))
        .await
        .unwrap_err();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["content-type"], "application/json");
    assert!(refused.headers().contains_key("retry-after"));
    assert!(
        refused.headers()["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with(r#""per-key";r=0;"#)
    );
    // Another key of the same consumer has its own counter.
    assert!(
        check(&config, &route, &quotas, &[], &mut key(2))
            .await
            .is_ok()
    );
    // No key: the policy does not count the request, and says nothing.
    let anonymous = check(&config, &route, &quotas, &[], &mut Metadata::default())
        .await
        .unwrap();
    assert!(anonymous.is_empty(), "{anonymous:?}");
}

#[tokio::test]
async fn identities_match_the_rate_limit_services() {
    // The control plane's RLS builds identities from Envoy's descriptors with the same
    // labels: the same request must land on the same counter.
    let config = config(vec![(
        "mix",
        policy(
            vec![
                part(Part::Consumer(true)),
                part(Part::Claim("org.id".into())),
                part(Part::ClientIp(true)),
                part(Part::Header("x-tenant".into())),
                part(Part::Route(true)),
                part(Part::ApiKey(true)),
            ],
            5,
        ),
    )]);
    let acme = consumer("acme", Some("gold"));
    let metadata = Metadata {
        jwt: vec![(
            JWT_PAYLOAD_KEY,
            serde_json::json!({"org": {"id": "o-1"}}).into(),
        )],
        consumer: Some(&acme),
        api_key: Some(KeyId([0xab; 16])),
        quota: None,
    };
    let mut headers = HeaderMap::new();
    headers.append("x-tenant", HeaderValue::from_static("t 1"));
    headers.append("x-tenant", HeaderValue::from_static("t2"));
    let mut path = Cow::Borrowed("/");
    let req = crate::filter::Request {
        method: &Method::GET,
        scheme: "http",
        authority: "api",
        path_and_query: &mut path,
        headers: &mut headers,
        addresses: Addresses::direct([192, 0, 2, 7].into()),
    };
    let policy = &config.policies["mix"];
    assert_eq!(
        identity(policy, "orders", &req, &metadata).unwrap(),
        tollgate_quota::identity(&[
            ("consumer", "acme"),
            ("claim:org.id", "o-1"),
            ("client_ip", "192.0.2.7"),
            ("header:x-tenant", "t 1"),
            ("route", "orders"),
            ("api_key", &"ab".repeat(16)),
        ])
    );
    // A claim that is not a string (or is missing) leaves the request uncounted, as Envoy's
    // metadata action drops the descriptor.
    let numeric = Metadata {
        jwt: vec![(
            JWT_PAYLOAD_KEY,
            serde_json::json!({"org": {"id": 7}}).into(),
        )],
        ..metadata
    };
    assert_eq!(identity(policy, "orders", &req, &numeric), None);
}

#[tokio::test]
async fn tiers_pick_their_limit_and_shadow_policies_never_refuse() {
    let mut tiered = policy(vec![part(Part::Consumer(true))], 1);
    tiered.tier_limits = BTreeMap::from([("pro".to_owned(), limit(3, 60_000))]);
    let mut shadow = policy(Vec::new(), 1);
    shadow.shadow = true;
    let config = config(vec![("tiered", tiered), ("trial", shadow)]);
    let route = route_policies(&["tiered", "trial"]);
    let (quotas, clock) = quotas();
    let free = consumer("free-co", Some("free"));
    let pro = consumer("pro-co", Some("pro"));
    let as_consumer = |c| Metadata {
        consumer: Some(c),
        ..Default::default()
    };
    // The free tier has no limit of its own: the default (1) applies.
    assert!(
        check(&config, &route, &quotas, &[], &mut as_consumer(&free))
            .await
            .is_ok()
    );
    assert!(
        check(&config, &route, &quotas, &[], &mut as_consumer(&free))
            .await
            .is_err()
    );
    // Pro gets 3; the shadow policy (1 for everyone) is over its limit but refuses nothing,
    // and stays out of the headers. The access log's decision says so.
    for _ in 0..3 {
        let mut metadata = as_consumer(&pro);
        let headers = check(&config, &route, &quotas, &[], &mut metadata)
            .await
            .unwrap();
        assert_eq!(
            header(&headers, "ratelimit-policy"),
            Some(r#""tiered";q=3;w=60"#)
        );
        assert_eq!(metadata.quota, Some(PolicyOutcome::ShadowLimited));
    }
    let mut metadata = as_consumer(&pro);
    let refused = check(&config, &route, &quotas, &[], &mut metadata)
        .await
        .unwrap_err();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(metadata.quota, Some(PolicyOutcome::Limited));
    // The window ends: both are allowed again.
    clock.advance(Duration::from_secs(60));
    let mut metadata = as_consumer(&pro);
    assert!(
        check(&config, &route, &quotas, &[], &mut metadata)
            .await
            .is_ok()
    );
    assert_eq!(metadata.quota, Some(PolicyOutcome::Allowed));
    assert!(
        check(&config, &route, &quotas, &[], &mut as_consumer(&free))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn unreachable_counters_follow_each_policys_failure_mode() {
    // Nothing listens on port 1: every Redis call fails at once.
    let redis = Quota::redis(
        tollgate_quota::RedisConfig::new("redis://127.0.0.1:1")
            .with_timeout(Duration::from_millis(5)),
    )
    .unwrap();
    let quotas = Quotas {
        global: redis,
        local: Quota::local(Default::default()),
    };
    let mut open = policy(Vec::new(), 10);
    open.global = true;
    let mut closed = policy(Vec::new(), 10);
    closed.global = true;
    closed.fail_closed = true;
    closed.legacy_headers = true;
    let config = config(vec![("open", open), ("closed", closed)]);

    let mut metadata = Metadata::default();
    let headers = check(
        &config,
        &route_policies(&["open"]),
        &quotas,
        &[],
        &mut metadata,
    )
    .await
    .unwrap();
    assert_eq!(metadata.quota, Some(PolicyOutcome::FailedOpen));
    // Allowed uncounted: the policy is stated, no remaining count is.
    assert_eq!(
        header(&headers, "ratelimit-policy"),
        Some(r#""open";q=10;w=60"#)
    );
    assert_eq!(header(&headers, "ratelimit"), None);

    let mut metadata = Metadata::default();
    let refused = check(
        &config,
        &route_policies(&["open", "closed"]),
        &quotas,
        &[],
        &mut metadata,
    )
    .await
    .unwrap_err();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(metadata.quota, Some(PolicyOutcome::FailedClosed));
    assert_eq!(refused.headers()["retry-after"], "1");
    // The legacy fields describe a counted decision; there is none.
    assert!(!refused.headers().contains_key("x-ratelimit-limit"));
}
