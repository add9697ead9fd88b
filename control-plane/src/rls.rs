//! The rate-limit service Envoy nodes call (`envoy.service.ratelimit.v3.RateLimitService`), on
//! the control plane's gRPC port, over the shared quota engine ([`tollgate_quota`]).
//!
//! Envoy's `ratelimit` filter sends one descriptor per rate-limit policy on the route, shaped
//! by the translator: `("policy", name)`, an optional `("tier", tier)`, then the key parts
//! by label (`remote_address` standing for `client_ip`). Each descriptor is decided with the
//! policy's current definition in the store, the limit of the consumer's tier, and the identity
//! [`tollgate_quota::identity()`] builds from the parts, the same the edge proxies build, so both
//! count on the same counters (in Redis when the control plane has `--redis`).
//!
//! The answer carries the `RateLimit-Policy`, `RateLimit` and (on refusals) `Retry-After`
//! headers for Envoy to add to the response, allowed or not, plus the legacy `X-RateLimit-*`
//! for policies that ask for them. A refusal is `OVER_LIMIT` with a JSON body (or, for a
//! fail-closed policy whose counters are unreachable, an `UNAVAILABLE` error that Envoy's
//! fail-closed filter answers 503 for); shadow policies are counted but never refuse and stay
//! out of the headers. Its dynamic metadata names the request's quota decision for Envoy's
//! access log. Descriptors that name no current policy (deleted since Envoy's config was
//! pushed) are allowed uncounted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tollgate_proto::envoy::config::core::v3::HeaderValue;
use tollgate_proto::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use tollgate_proto::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit as CurrentLimit, rate_limit::Unit,
};
use tollgate_proto::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use tollgate_proto::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use tollgate_proto::google::protobuf::{Struct, Value, value::Kind};
use tollgate_quota::{Decision, PolicyOutcome, Quota, RateLimitHeaders};
use tonic::{Request, Response, Status};

use crate::model::{Policy, QuotaMode, RateLimitPolicy};
use crate::store::{Store, StoreSnapshot};
use crate::translate::{
    QUOTA_OUTCOME_KEY, RATE_LIMIT_DOMAIN, RATE_LIMIT_POLICY_KEY, RATE_LIMIT_TIER_KEY,
    REMOTE_ADDRESS_KEY,
};

/// The rate-limit service for Envoy nodes.
#[derive(Clone)]
pub struct RateLimiter {
    store: Store,
    global: Quota,
    local: Quota,
    // Rebuilt when the store's revision changes: one map lookup per descriptor.
    index: Arc<Mutex<Option<Arc<PolicyIndex>>>>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("global", &self.global)
            .finish_non_exhaustive()
    }
}

/// The rate-limit policies of one store revision, ready for the engine.
struct PolicyIndex {
    revision: u64,
    policies: HashMap<String, Compiled>,
}

/// One rate-limit policy as the engine takes it: a limit per tier, and a default.
struct Compiled {
    default: Option<tollgate_quota::Policy>,
    tiers: HashMap<String, tollgate_quota::Policy>,
    global: bool,
    legacy_headers: bool,
}

impl Compiled {
    fn build(policy: &RateLimitPolicy) -> Option<Self> {
        // The store validated every limit with the engine's own checks: these cannot fail.
        let engine = |limit| policy.quota_policy(limit).ok();
        let default = match &policy.limit {
            Some(limit) => Some(engine(limit)?),
            None => None,
        };
        let mut tiers = HashMap::new();
        for (tier, limit) in &policy.tiers {
            tiers.insert(tier.clone(), engine(limit)?);
        }
        Some(Self {
            default,
            tiers,
            global: policy.mode == QuotaMode::Global,
            legacy_headers: policy.legacy_headers,
        })
    }
}

impl PolicyIndex {
    fn build(snapshot: &StoreSnapshot) -> Self {
        let policies = snapshot
            .policies
            .values()
            .filter_map(|p| match p {
                Policy::RateLimit(limit) => Compiled::build(limit).map(|c| (limit.name.clone(), c)),
                _ => None,
            })
            .collect();
        Self {
            revision: snapshot.revision,
            policies,
        }
    }
}

/// A descriptor read back: which policy, the consumer's tier, and the key parts.
#[derive(Debug, PartialEq, Eq)]
struct Parsed<'a> {
    policy: &'a str,
    tier: Option<&'a str>,
    parts: Vec<(&'a str, &'a str)>,
}

/// Reads a descriptor the translator shaped; `None` for anything else.
fn parse(descriptor: &RateLimitDescriptor) -> Option<Parsed<'_>> {
    let mut entries = descriptor.entries.iter();
    let first = entries.next()?;
    if first.key != RATE_LIMIT_POLICY_KEY {
        return None;
    }
    let mut parsed = Parsed {
        policy: &first.value,
        tier: None,
        parts: Vec::new(),
    };
    for entry in entries {
        match entry.key.as_str() {
            RATE_LIMIT_TIER_KEY if parsed.parts.is_empty() && parsed.tier.is_none() => {
                parsed.tier = Some(&entry.value);
            }
            RATE_LIMIT_POLICY_KEY | RATE_LIMIT_TIER_KEY => return None,
            REMOTE_ADDRESS_KEY => parsed.parts.push(("client_ip", &entry.value)),
            label => parsed.parts.push((label, &entry.value)),
        }
    }
    Some(parsed)
}

/// One descriptor's check.
struct Check<'a> {
    compiled: &'a Compiled,
    policy: &'a tollgate_quota::Policy,
    decision: Decision,
}

impl Check<'_> {
    fn outcome(&self) -> PolicyOutcome {
        PolicyOutcome::of(self.policy, &self.decision)
    }

    fn refuses(&self) -> bool {
        self.outcome().refuses()
    }
}

impl RateLimiter {
    /// A service counting `global` policies with `global` (Redis, or in process without one)
    /// and `local` ones in this process. The store's metrics report `global`'s backend.
    pub fn new(store: Store, global: Quota) -> Self {
        store.metrics().observe_quota(global.clone());
        Self {
            store,
            global,
            local: Quota::local(Default::default()),
            index: Arc::default(),
        }
    }

    /// A service counting everything in this process (no Redis).
    pub fn in_process(store: Store) -> Self {
        let quota = Quota::local(Default::default());
        Self {
            local: quota.clone(),
            ..Self::new(store, quota)
        }
    }

    /// The engine global policies count with.
    pub fn global_quota(&self) -> &Quota {
        &self.global
    }

    /// The tonic service to mount on the gRPC server.
    pub fn into_service(self) -> RateLimitServiceServer<Self> {
        RateLimitServiceServer::new(self)
    }

    fn index(&self) -> Arc<PolicyIndex> {
        let snapshot = self.store.current();
        let mut index = self.index.lock().unwrap_or_else(|e| e.into_inner());
        match index.as_ref() {
            Some(current) if current.revision == snapshot.revision => current.clone(),
            _ => {
                let built = Arc::new(PolicyIndex::build(&snapshot));
                *index = Some(built.clone());
                built
            }
        }
    }

    /// Decides one request: every descriptor is counted, and the request is refused if any
    /// non-shadow policy refuses it: `OVER_LIMIT` when one is over its limit, else, when a
    /// fail-closed policy cannot reach its counters, an `UNAVAILABLE` error, which Envoy's
    /// fail-closed filter turns into a 503. Never logs descriptor values.
    pub async fn decide(&self, request: &RateLimitRequest) -> Result<RateLimitResponse, Status> {
        let ok = |n: usize| RateLimitResponse {
            overall_code: Code::Ok as i32,
            statuses: vec![status(Code::Ok, None); n],
            ..Default::default()
        };
        if request.domain != RATE_LIMIT_DOMAIN {
            return Ok(ok(request.descriptors.len()));
        }
        let index = self.index();
        // Envoy's default cost is 1; `hits_addend` 0 means unset.
        let request_cost = match request.hits_addend {
            0 => 1,
            n => u64::from(n),
        };
        let pending = request.descriptors.iter().map(|descriptor| {
            let index = &index;
            async move {
                let parsed = parse(descriptor)?;
                let compiled = index.policies.get(parsed.policy)?;
                let policy = parsed
                    .tier
                    .and_then(|tier| compiled.tiers.get(tier))
                    .or(compiled.default.as_ref())?;
                let identity = tollgate_quota::identity(&parsed.parts);
                let cost = descriptor
                    .hits_addend
                    .map_or(request_cost, |hits| hits.value);
                let engine = if compiled.global {
                    &self.global
                } else {
                    &self.local
                };
                let decision = engine.check_n(policy, &identity, cost).await;
                Some(Check {
                    compiled,
                    policy,
                    decision,
                })
            }
        });
        let checks: Vec<Option<Check<'_>>> = futures::future::join_all(pending).await;
        let metrics = self.store.metrics();
        for check in checks.iter().flatten() {
            metrics.rls_decision(check.policy.name(), check.outcome());
        }
        // Over the limit outranks unreachable counters, and both outrank what lets a request
        // through: the request's outcome says whether and why it is refused.
        let outcome = PolicyOutcome::of_request(checks.iter().flatten().map(Check::outcome));
        let refused = outcome.is_some_and(PolicyOutcome::refuses);
        if outcome == Some(PolicyOutcome::FailedClosed) {
            return Err(Status::unavailable(
                "rate limit counters unreachable for a fail-closed policy",
            ));
        }
        let mut response = RateLimitResponse {
            overall_code: if refused { Code::OverLimit } else { Code::Ok } as i32,
            statuses: checks
                .iter()
                .map(|check| match check {
                    Some(check) if check.refuses() => {
                        status(Code::OverLimit, Some((check.policy, &check.decision)))
                    }
                    Some(check) => status(Code::Ok, Some((check.policy, &check.decision))),
                    None => status(Code::Ok, None),
                })
                .collect(),
            response_headers_to_add: headers(checks.iter().flatten()),
            dynamic_metadata: outcome.map(quota_metadata),
            ..Default::default()
        };
        if refused {
            let body = serde_json::json!({
                "error": {"code": "rate_limited", "message": "rate limit exceeded"}
            });
            response.raw_body = body.to_string().into_bytes();
            // Envoy sets the local reply's content type from these headers.
            response
                .response_headers_to_add
                .push(header("content-type", "application/json"));
        }
        Ok(response)
    }
}

#[tonic::async_trait]
impl RateLimitService for RateLimiter {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        self.decide(request.get_ref()).await.map(Response::new)
    }
}

/// The response headers for the checks of one request: the draft fields for every non-shadow
/// policy, the legacy ones for those that ask for them (as edge proxies send them).
fn headers<'a>(checks: impl Iterator<Item = &'a Check<'a>>) -> Vec<HeaderValue> {
    let reported: Vec<(&tollgate_quota::Policy, &Decision, bool)> = checks
        .map(|c| (c.policy, &c.decision, c.compiled.legacy_headers))
        .collect();
    RateLimitHeaders::for_response(&reported)
        .iter()
        .map(|(name, value)| header(name, value))
        .collect()
}

/// The answer's dynamic metadata: the request's quota decision, which Envoy keeps under
/// `envoy.filters.http.ratelimit` for its access log (as edge proxies log theirs).
fn quota_metadata(outcome: PolicyOutcome) -> Struct {
    let value = Value {
        kind: Some(Kind::StringValue(outcome.as_str().to_owned())),
    };
    Struct {
        fields: [(QUOTA_OUTCOME_KEY.to_owned(), value)].into(),
    }
}

fn header(name: &str, value: &str) -> HeaderValue {
    HeaderValue {
        key: name.to_owned(),
        value: value.to_owned(),
        ..Default::default()
    }
}

/// A descriptor's status: the current limit when its window is one of Envoy's units.
fn status(code: Code, check: Option<(&tollgate_quota::Policy, &Decision)>) -> DescriptorStatus {
    let Some((policy, decision)) = check else {
        return DescriptorStatus {
            code: code as i32,
            ..Default::default()
        };
    };
    let limit = policy.limit();
    let unit = match limit.window.as_secs() {
        _ if limit.window.subsec_nanos() != 0 => None,
        1 => Some(Unit::Second),
        60 => Some(Unit::Minute),
        3_600 => Some(Unit::Hour),
        86_400 => Some(Unit::Day),
        _ => None,
    };
    DescriptorStatus {
        code: code as i32,
        current_limit: unit.map(|unit| CurrentLimit {
            name: policy.name().to_owned(),
            requests_per_unit: u32::try_from(limit.requests).unwrap_or(u32::MAX),
            unit: unit as i32,
        }),
        limit_remaining: u32::try_from(decision.remaining).unwrap_or(u32::MAX),
        duration_until_reset: Some(tollgate_proto::google::protobuf::Duration {
            seconds: i64::try_from(decision.reset_after.as_secs()).unwrap_or(i64::MAX),
            nanos: decision.reset_after.subsec_nanos() as i32,
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
