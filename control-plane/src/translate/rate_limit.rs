//! Rate-limit policies → Envoy's `ratelimit` filter asking the control plane's RLS, or the edge
//! proxy's own quota filter.
//!
//! For Envoy, each policy on a route becomes one `rate_limits` entry whose actions build one
//! descriptor: `("policy", <name>)`, then `("tier", <consumer tier>)` when the policy has
//! tier limits (left out for consumers without a tier), then one entry per key part, keyed by
//! the part's label. Envoy drops a descriptor when one of its actions finds nothing, which is
//! the "not counted" rule of the model. The RLS ([`crate::rls`]) reads these descriptors back.
//!
//! The API key never travels: the control plane's ext_authz answer puts its keyed hash in the
//! request's dynamic metadata, and the `api_key` part reads that.

use tollgate_proto::envoy::config::core::v3 as core_pb;
use tollgate_proto::envoy::config::ratelimit::v3 as rls_config_pb;
use tollgate_proto::envoy::config::route::v3 as route_pb;
use tollgate_proto::envoy::extensions::filters::http::ratelimit::v3 as ratelimit_pb;
use tollgate_proto::envoy::r#type::metadata::v3 as metadata_pb;
use tollgate_proto::rate_limit as rate_limit_pb;

use crate::model::{KeyPart, QuotaAlgorithm, QuotaLimit, QuotaMode, RateLimitPolicy};

/// Envoy's rate-limit filter, calling the control plane's RLS for fail-open policies.
pub(super) const ENVOY_RATE_LIMIT_FILTER: &str = "envoy.filters.http.ratelimit";
/// The second instance of Envoy's rate-limit filter, for fail-closed policies.
pub(super) const ENVOY_RATE_LIMIT_FAIL_CLOSED_FILTER: &str =
    "envoy.filters.http.ratelimit.fail_closed";
/// The edge proxy's quota filter.
pub(super) const RATE_LIMIT_FILTER: &str = "tollgate.filters.http.rate_limit";
/// The RLS domain Envoy sends.
pub(crate) const DOMAIN: &str = "tollgate";
/// The descriptor entry naming the policy; always first.
pub(crate) const POLICY_KEY: &str = "policy";
/// The descriptor entry carrying the consumer's tier, for policies with tier limits.
pub(crate) const TIER_KEY: &str = "tier";
/// The descriptor key of Envoy's `remote_address` action (fixed by Envoy): the client address.
pub(crate) const REMOTE_ADDRESS_KEY: &str = "remote_address";
/// Where the control plane's ext_authz answer puts an API key's keyed hash (the first
/// [`tollgate_quota::identity::API_KEY_HASH_HEX_LEN`] hex digits).
pub(crate) const API_KEY_HASH_KEY: &str = "api_key_hash";
/// The RLS answer's dynamic metadata entry holding the request's quota decision
/// ([`tollgate_quota::PolicyOutcome::as_str`]), which access logs read. Envoy keeps it under
/// `envoy.filters.http.ratelimit`, whatever the filter's name.
pub(crate) const QUOTA_OUTCOME_KEY: &str = "quota";
/// How long Envoy waits for the RLS before the filter's failure mode applies.
const RLS_TIMEOUT_MS: u32 = 500;
/// What Envoy answers for a fail-closed policy whose counters (or the RLS) cannot be reached,
/// as the edge proxy does.
const FAILED_CLOSED_STATUS: i32 = 503;

/// The dynamic metadata namespace of the JWT filter.
const JWT_NAMESPACE: &str = super::policy::JWT_FILTER;
/// The dynamic metadata namespace of ext_authz answers.
const EXT_AUTHZ_NAMESPACE: &str = super::policy::EXT_AUTHZ_FILTER;

/// The name of the Envoy rate-limit filter for policies of one failure mode.
pub(super) fn envoy_filter_name(fail_closed: bool) -> &'static str {
    if fail_closed {
        ENVOY_RATE_LIMIT_FAIL_CLOSED_FILTER
    } else {
        ENVOY_RATE_LIMIT_FILTER
    }
}

/// Envoy's rate-limit filter for the policies of one failure mode: Envoy's failure mode
/// belongs to the filter, so fail-open and fail-closed policies get one filter each.
///
/// The fail-open one lets requests through when the RLS cannot be reached, does not answer
/// within the timeout, or answers with an error (`failure_mode_deny: false`). The fail-closed
/// one answers 503 then (`status_on_error`): the RLS answers `UNAVAILABLE` when a fail-closed
/// policy's counters cannot be reached, and an unreachable control plane is the same for it.
/// Over the limit, both answer 429 with the RLS's headers and body. Neither sends
/// `x-envoy-ratelimited` (edge proxies do not either).
pub(super) fn envoy_filter(fail_closed: bool) -> ratelimit_pb::RateLimit {
    use core_pb::grpc_service::{EnvoyGrpc, TargetSpecifier};
    ratelimit_pb::RateLimit {
        domain: DOMAIN.to_owned(),
        timeout: Some(super::duration_ms(RLS_TIMEOUT_MS)),
        failure_mode_deny: fail_closed,
        status_on_error: fail_closed.then_some(tollgate_proto::envoy::r#type::v3::HttpStatus {
            code: FAILED_CLOSED_STATUS,
        }),
        rate_limit_service: Some(rls_config_pb::RateLimitServiceConfig {
            grpc_service: Some(core_pb::GrpcService {
                timeout: Some(super::duration_ms(RLS_TIMEOUT_MS)),
                target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
                    cluster_name: super::policy::CONTROL_PLANE_CLUSTER.to_owned(),
                    ..Default::default()
                })),
                ..Default::default()
            }),
            transport_api_version: core_pb::ApiVersion::V3 as i32,
        }),
        disable_x_envoy_ratelimited_header: true,
        ..Default::default()
    }
}

/// A route's rate limits for Envoy: one descriptor per policy.
pub(super) fn envoy_per_route(
    policies: &[&RateLimitPolicy],
    route_name: &str,
) -> ratelimit_pb::RateLimitPerRoute {
    ratelimit_pb::RateLimitPerRoute {
        rate_limits: policies
            .iter()
            .map(|policy| envoy_rate_limit(policy, route_name))
            .collect(),
        ..Default::default()
    }
}

fn envoy_rate_limit(policy: &RateLimitPolicy, route_name: &str) -> route_pb::RateLimit {
    use route_pb::rate_limit::action::ActionSpecifier;
    let generic = |key: &str, value: &str| {
        ActionSpecifier::GenericKey(route_pb::rate_limit::action::GenericKey {
            descriptor_key: key.to_owned(),
            descriptor_value: value.to_owned(),
            ..Default::default()
        })
    };
    let mut actions = vec![generic(POLICY_KEY, &policy.name)];
    if !policy.tiers.is_empty() {
        actions.push(metadata_action(
            TIER_KEY,
            EXT_AUTHZ_NAMESPACE,
            &[super::TIER_KEY],
            true,
        ));
    }
    for part in policy.key_parts() {
        let label = part.label();
        actions.push(match &part {
            KeyPart::ApiKey => {
                metadata_action(&label, EXT_AUTHZ_NAMESPACE, &[API_KEY_HASH_KEY], false)
            }
            KeyPart::Consumer => {
                metadata_action(&label, EXT_AUTHZ_NAMESPACE, &[super::CONSUMER_KEY], false)
            }
            KeyPart::ConsumerTier => {
                metadata_action(&label, EXT_AUTHZ_NAMESPACE, &[super::TIER_KEY], false)
            }
            KeyPart::Claim(path) => {
                let path: Vec<&str> = std::iter::once(super::rbac::JWT_PAYLOAD_KEY)
                    .chain(path.iter().map(String::as_str))
                    .collect();
                metadata_action(&label, JWT_NAMESPACE, &path, false)
            }
            KeyPart::ClientIp => {
                ActionSpecifier::RemoteAddress(route_pb::rate_limit::action::RemoteAddress {})
            }
            KeyPart::Header(name) => {
                ActionSpecifier::RequestHeaders(route_pb::rate_limit::action::RequestHeaders {
                    header_name: name.clone(),
                    descriptor_key: label,
                    skip_if_absent: false,
                })
            }
            KeyPart::Route => generic(&label, route_name),
        });
    }
    route_pb::RateLimit {
        actions: actions
            .into_iter()
            .map(|action| route_pb::rate_limit::Action {
                action_specifier: Some(action),
            })
            .collect(),
        ..Default::default()
    }
}

/// An action reading a string from dynamic metadata. Absent (or not a string): the descriptor
/// is dropped, or with `skip_if_absent` only this entry.
fn metadata_action(
    descriptor_key: &str,
    namespace: &str,
    path: &[&str],
    skip_if_absent: bool,
) -> route_pb::rate_limit::action::ActionSpecifier {
    use metadata_pb::metadata_key::{PathSegment, path_segment::Segment};
    route_pb::rate_limit::action::ActionSpecifier::Metadata(
        route_pb::rate_limit::action::MetaData {
            descriptor_key: descriptor_key.to_owned(),
            metadata_key: Some(metadata_pb::MetadataKey {
                key: namespace.to_owned(),
                path: path
                    .iter()
                    .map(|segment| PathSegment {
                        segment: Some(Segment::Key((*segment).to_owned())),
                    })
                    .collect(),
            }),
            source: route_pb::rate_limit::action::meta_data::Source::Dynamic as i32,
            skip_if_absent,
            ..Default::default()
        },
    )
}

/// The edge proxy's quota filter: every rate-limit policy its listener's routes use.
pub(super) fn edge_filter<'a>(
    policies: impl IntoIterator<Item = &'a RateLimitPolicy>,
) -> rate_limit_pb::RateLimit {
    rate_limit_pb::RateLimit {
        policies: policies
            .into_iter()
            .map(|p| (p.name.clone(), edge_policy(p)))
            .collect(),
    }
}

/// A route's policies for the edge proxy, by name.
pub(super) fn edge_per_route(policies: &[&RateLimitPolicy]) -> rate_limit_pb::RateLimitPerRoute {
    rate_limit_pb::RateLimitPerRoute {
        policies: policies.iter().map(|p| p.name.clone()).collect(),
    }
}

fn edge_policy(policy: &RateLimitPolicy) -> rate_limit_pb::RateLimitPolicy {
    use rate_limit_pb::key_part::Part;
    rate_limit_pb::RateLimitPolicy {
        key: policy
            .key_parts()
            .into_iter()
            .map(|part| rate_limit_pb::KeyPart {
                part: Some(match part {
                    KeyPart::ApiKey => Part::ApiKey(true),
                    KeyPart::Consumer => Part::Consumer(true),
                    KeyPart::ConsumerTier => Part::ConsumerTier(true),
                    KeyPart::Claim(path) => Part::Claim(path.join(".")),
                    KeyPart::ClientIp => Part::ClientIp(true),
                    KeyPart::Header(name) => Part::Header(name),
                    KeyPart::Route => Part::Route(true),
                }),
            })
            .collect(),
        limit: policy.limit.as_ref().map(|l| edge_limit(policy, l)),
        tier_limits: policy
            .tiers
            .iter()
            .map(|(tier, l)| (tier.clone(), edge_limit(policy, l)))
            .collect(),
        algorithm: match policy.algorithm {
            QuotaAlgorithm::TokenBucket => rate_limit_pb::Algorithm::TokenBucket,
            QuotaAlgorithm::SlidingWindow => rate_limit_pb::Algorithm::SlidingWindow,
            QuotaAlgorithm::FixedWindow => rate_limit_pb::Algorithm::FixedWindow,
        } as i32,
        global: policy.mode == QuotaMode::Global,
        shadow: policy.shadow,
        fail_closed: policy.failure_mode == crate::model::QuotaFailureMode::Closed,
        legacy_headers: policy.legacy_headers,
        lease: policy.lease.unwrap_or_default(),
    }
}

fn edge_limit(policy: &RateLimitPolicy, limit: &QuotaLimit) -> rate_limit_pb::Limit {
    rate_limit_pb::Limit {
        requests: limit.requests,
        window_ms: u64::from(limit.window_s) * 1000,
        // Spelled out for token buckets (0 would mean `requests`), absent for the others.
        burst: match policy.algorithm {
            QuotaAlgorithm::TokenBucket => limit.burst.unwrap_or(limit.requests),
            QuotaAlgorithm::SlidingWindow | QuotaAlgorithm::FixedWindow => 0,
        },
    }
}
