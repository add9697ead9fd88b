//! Tollgate's quota filter (`tollgate.filters.http.rate_limit`, protos in
//! `tollgate_proto::rate_limit`): the connection manager's [`RateLimit`] (every rate-limit
//! policy its routes use, compiled once into the quota engine's [`tollgate_quota::Policy`]s)
//! and a route's [`RateLimitPerRoute`] (which of them count its requests).
//! [`crate::filter::rate_limit`] checks requests against them.
//!
//! These protos are Tollgate's own, so a field or enum value this proxy does not know is NACKed
//! (prost would drop or keep it silently): a newer control plane must not see an older proxy
//! ignore a limit it asked for.

use std::collections::HashMap;
use std::time::Duration;

use http::HeaderName;
use prost::Message as _;
use tollgate_proto::google::protobuf as pb;
use tollgate_proto::rate_limit as rate_limit_pb;
use tollgate_quota::identity::{Label, label};

use super::Schema;
use crate::config::{Reason, Rejection, Within as _};

/// A validated `RateLimit`: the policies by name.
#[derive(Debug)]
pub struct RateLimit {
    /// The policies, by name.
    pub policies: HashMap<String, RateLimitPolicy>,
    /// The config as received: only to compare two configs.
    proto: rate_limit_pb::RateLimit,
}

impl PartialEq for RateLimit {
    fn eq(&self, other: &Self) -> bool {
        self.proto == other.proto
    }
}

impl Eq for RateLimit {}

/// One rate-limit policy, ready for the quota engine.
#[derive(Debug)]
pub struct RateLimitPolicy {
    /// What requests are counted by, in order.
    pub key: Vec<KeyPart>,
    /// The engine's policy for consumers whose tier has no limit of its own; `None`: those
    /// requests are not counted.
    pub default: Option<tollgate_quota::Policy>,
    /// The engine's policy per consumer tier.
    pub tiers: HashMap<String, tollgate_quota::Policy>,
    /// Counted in Redis, shared by the fleet (when the proxy has `--redis`).
    pub global: bool,
    /// Counted and reported, never refusing.
    pub shadow: bool,
    /// Whether `X-RateLimit-Limit`, `-Remaining` and `-Reset` are sent too.
    pub legacy_headers: bool,
}

impl RateLimitPolicy {
    /// The engine policy for a consumer of `tier`: its tier's limit, else the default.
    pub fn for_tier(&self, tier: Option<&str>) -> Option<&tollgate_quota::Policy> {
        tier.and_then(|t| self.tiers.get(t))
            .or(self.default.as_ref())
    }
}

/// One part of a policy's key: what it reads, and its label in the identity (the one the
/// control plane's rate-limit service builds for Envoy from the same policy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPart {
    /// `api_key`, `claim:org.id`, `header:x-tenant`, …
    pub label: String,
    /// Where the value comes from.
    pub source: KeySource,
}

/// Where a key part's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The API key, as the start of its keyed hash.
    ApiKey,
    /// The API key's consumer.
    Consumer,
    /// The consumer's tier.
    ConsumerTier,
    /// A string claim of the verified JWT, by path.
    Claim(Vec<String>),
    /// The client address.
    ClientIp,
    /// A request header (its first value).
    Header(HeaderName),
    /// The route's name.
    Route,
}

/// A validated `RateLimitPerRoute`: the policies counting the route's requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitPerRoute {
    /// Policy names. A name the listener's filter does not have is not counted (routes are
    /// validated apart from listeners, so it cannot be NACKed), as the control plane's
    /// rate-limit service treats a policy it does not know.
    pub policies: Vec<String>,
}

/// Reads the filter's config from its `Any`.
pub(crate) fn filter_config(any: &pb::Any) -> Result<RateLimit, Rejection> {
    known_fields(&any.value, &RATE_LIMIT)?;
    let proto = rate_limit_pb::RateLimit::decode(any.value.as_slice()).map_err(undecodable)?;
    let mut policies = HashMap::with_capacity(proto.policies.len());
    for (name, policy) in &proto.policies {
        let compiled = self::policy(name, policy).map_err(|r| r.key(name).within("policies"))?;
        policies.insert(name.clone(), compiled);
    }
    Ok(RateLimit { policies, proto })
}

fn policy(
    name: &str,
    proto: &rate_limit_pb::RateLimitPolicy,
) -> Result<RateLimitPolicy, Rejection> {
    use rate_limit_pb::Algorithm;
    let rate_limit_pb::RateLimitPolicy {
        key,
        limit,
        tier_limits,
        algorithm,
        global,
        shadow,
        fail_closed,
        legacy_headers,
        lease,
    } = proto;
    if name.is_empty() {
        return Err(Rejection::here(Reason::Invalid(
            "policy names must not be empty".into(),
        )));
    }
    let algorithm = Algorithm::try_from(*algorithm).map_err(|_| {
        Rejection::new(
            "algorithm",
            Reason::UnsupportedValue(format!("algorithm {algorithm}")),
        )
    })?;
    let failure_mode = if *fail_closed {
        tollgate_quota::FailureMode::Closed
    } else {
        tollgate_quota::FailureMode::Open
    };
    let engine = |limit: &rate_limit_pb::Limit| -> Result<tollgate_quota::Policy, Rejection> {
        let window = Duration::from_millis(limit.window_ms);
        let quota_limit = match algorithm {
            Algorithm::TokenBucket => {
                let burst = if limit.burst == 0 {
                    limit.requests
                } else {
                    limit.burst
                };
                tollgate_quota::Limit::token_bucket(limit.requests, window, burst)
            }
            Algorithm::SlidingWindow => {
                tollgate_quota::Limit::sliding_window(limit.requests, window)
            }
            Algorithm::FixedWindow => tollgate_quota::Limit::fixed_window(limit.requests, window),
        };
        let policy = tollgate_quota::Policy::new(name.to_owned(), quota_limit, failure_mode)
            .map_err(|e| Rejection::here(Reason::Invalid(e.to_string())))?
            .with_shadow(*shadow);
        match *lease {
            0 => Ok(policy),
            tokens => policy
                .with_lease(tokens)
                .map_err(|e| Rejection::here(Reason::Invalid(format!("lease: {e}")))),
        }
    };
    let default = limit.as_ref().map(engine).transpose().within("limit")?;
    let mut tiers = HashMap::with_capacity(tier_limits.len());
    for (tier, limit) in tier_limits {
        if tier.is_empty() {
            return Err(Rejection::new_key("", Reason::Missing).within("tier_limits"));
        }
        let policy = engine(limit).map_err(|r| r.key(tier).within("tier_limits"))?;
        tiers.insert(tier.clone(), policy);
    }
    if default.is_none() && tiers.is_empty() {
        return Err(Rejection::new("limit", Reason::Missing));
    }
    let key = key
        .iter()
        .enumerate()
        .map(|(i, part)| key_part(part).at("key", i))
        .collect::<Result<_, _>>()?;
    Ok(RateLimitPolicy {
        key,
        default,
        tiers,
        global: *global,
        shadow: *shadow,
        legacy_headers: *legacy_headers,
    })
}

fn key_part(proto: &rate_limit_pb::KeyPart) -> Result<KeyPart, Rejection> {
    use rate_limit_pb::key_part::Part;
    let (label, source) = match &proto.part {
        None => return Err(Rejection::new("part", Reason::Missing)),
        Some(Part::ApiKey(_)) => (label(Label::ApiKey), KeySource::ApiKey),
        Some(Part::Consumer(_)) => (label(Label::Consumer), KeySource::Consumer),
        Some(Part::ConsumerTier(_)) => (label(Label::ConsumerTier), KeySource::ConsumerTier),
        Some(Part::Claim(path)) => {
            if path.is_empty() || path.split('.').any(str::is_empty) {
                return Err(Rejection::new(
                    "claim",
                    Reason::Invalid(format!("{path:?} is not a dotted claim path")),
                ));
            }
            (
                label(Label::Claim(path)),
                KeySource::Claim(path.split('.').map(str::to_owned).collect()),
            )
        }
        Some(Part::ClientIp(_)) => (label(Label::ClientIp), KeySource::ClientIp),
        Some(Part::Header(name)) => {
            let header = HeaderName::from_bytes(name.as_bytes())
                .ok()
                .filter(|h| h.as_str() == name)
                .ok_or_else(|| {
                    Rejection::new(
                        "header",
                        Reason::Invalid(format!("{name:?} is not a lowercase header name")),
                    )
                })?;
            (label(Label::Header(name)), KeySource::Header(header))
        }
        Some(Part::Route(_)) => (label(Label::Route), KeySource::Route),
    };
    Ok(KeyPart { label, source })
}

/// Reads a route's `RateLimitPerRoute`.
pub(crate) fn per_route(any: &pb::Any) -> Result<RateLimitPerRoute, Rejection> {
    known_fields(&any.value, &RATE_LIMIT_PER_ROUTE)?;
    let rate_limit_pb::RateLimitPerRoute { policies } =
        rate_limit_pb::RateLimitPerRoute::decode(any.value.as_slice()).map_err(undecodable)?;
    if let Some(i) = policies.iter().position(String::is_empty) {
        return Err(Rejection::new_at("policies", i, Reason::Missing));
    }
    Ok(RateLimitPerRoute { policies })
}

fn undecodable(e: prost::DecodeError) -> Rejection {
    Rejection::new("value", Reason::Invalid(format!("undecodable: {e}")))
}

const LIMIT: Schema = Schema {
    message: "Limit",
    fields: &[
        (1, "requests", None),
        (2, "window_ms", None),
        (3, "burst", None),
    ],
};
const KEY_PART: Schema = Schema {
    message: "KeyPart",
    fields: &[
        (1, "api_key", None),
        (2, "consumer", None),
        (3, "consumer_tier", None),
        (4, "claim", None),
        (5, "client_ip", None),
        (6, "header", None),
        (7, "route", None),
    ],
};
/// A `map<string, Limit>` entry.
const TIER_LIMITS_ENTRY: Schema = Schema {
    message: "RateLimitPolicy.TierLimitsEntry",
    fields: &[(1, "key", None), (2, "value", Some(&LIMIT))],
};
const POLICY: Schema = Schema {
    message: "RateLimitPolicy",
    fields: &[
        (1, "key", Some(&KEY_PART)),
        (2, "limit", Some(&LIMIT)),
        (3, "tier_limits", Some(&TIER_LIMITS_ENTRY)),
        (4, "algorithm", None),
        (5, "global", None),
        (6, "shadow", None),
        (7, "fail_closed", None),
        (8, "legacy_headers", None),
        (9, "lease", None),
    ],
};
/// A `map<string, RateLimitPolicy>` entry.
const POLICIES_ENTRY: Schema = Schema {
    message: "RateLimit.PoliciesEntry",
    fields: &[(1, "key", None), (2, "value", Some(&POLICY))],
};
const RATE_LIMIT: Schema = Schema {
    message: "RateLimit",
    fields: &[(1, "policies", Some(&POLICIES_ENTRY))],
};
const RATE_LIMIT_PER_ROUTE: Schema = Schema {
    message: "RateLimitPerRoute",
    fields: &[(1, "policies", None)],
};

/// Tollgate's rate-limit protos' package, for [`known_fields`]'s errors.
const PACKAGE: &str = "tollgate.filters.http.rate_limit.v1";

fn known_fields(bytes: &[u8], schema: &Schema) -> Result<(), Rejection> {
    super::known_fields(bytes, PACKAGE, schema)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tollgate_proto::pack_any;
    use tollgate_proto::rate_limit::key_part::Part;

    use super::*;
    use crate::config::Resource;

    fn limit(requests: u64, window_ms: u64, burst: u64) -> rate_limit_pb::Limit {
        rate_limit_pb::Limit {
            requests,
            window_ms,
            burst,
        }
    }

    fn config(policy: rate_limit_pb::RateLimitPolicy) -> pb::Any {
        pack_any(&rate_limit_pb::RateLimit {
            policies: BTreeMap::from([("per-key".to_owned(), policy)]),
        })
    }

    fn rejected(any: &pb::Any) -> String {
        let error = filter_config(any)
            .unwrap_err()
            .into_error(Resource::Listener("l".into()));
        format!("{}: {}", error.field, error.reason)
    }

    #[test]
    fn reads_what_the_control_plane_sends() {
        let any = config(rate_limit_pb::RateLimitPolicy {
            key: vec![
                rate_limit_pb::KeyPart {
                    part: Some(Part::ApiKey(true)),
                },
                rate_limit_pb::KeyPart {
                    part: Some(Part::Claim("org.id".into())),
                },
                rate_limit_pb::KeyPart {
                    part: Some(Part::Header("x-tenant".into())),
                },
            ],
            limit: Some(limit(100, 60_000, 0)),
            tier_limits: BTreeMap::from([("pro".to_owned(), limit(10_000, 60_000, 500))]),
            algorithm: rate_limit_pb::Algorithm::TokenBucket as i32,
            global: true,
            shadow: false,
            fail_closed: true,
            legacy_headers: true,
            lease: 20,
        });
        let config = filter_config(&any).unwrap();
        let policy = &config.policies["per-key"];
        let labels: Vec<&str> = policy.key.iter().map(|p| p.label.as_str()).collect();
        assert_eq!(labels, ["api_key", "claim:org.id", "header:x-tenant"]);
        assert_eq!(
            policy.key[1].source,
            KeySource::Claim(vec!["org".into(), "id".into()])
        );
        // A burst of 0 means `requests`; a tier's limit wins over the default.
        let default = policy.for_tier(Some("free")).unwrap();
        assert_eq!(default.name(), "per-key");
        assert_eq!(default.limit().capacity(), 100);
        assert_eq!(
            policy.for_tier(Some("pro")).unwrap().limit().capacity(),
            500
        );
        assert_eq!(default.failure_mode(), tollgate_quota::FailureMode::Closed);
        assert!(policy.global && policy.legacy_headers && !policy.shadow);
        // Batched mode: 20 tokens per Redis call.
        assert_eq!(default.lease(), Some(20));
        assert_eq!(filter_config(&any).unwrap(), config);
    }

    #[test]
    fn refuses_what_it_cannot_count() {
        let base = || rate_limit_pb::RateLimitPolicy {
            limit: Some(limit(10, 1_000, 0)),
            ..Default::default()
        };
        let cases: Vec<(rate_limit_pb::RateLimitPolicy, &str)> = vec![
            (
                rate_limit_pb::RateLimitPolicy {
                    limit: None,
                    ..base()
                },
                "policies[\"per-key\"].limit: is required",
            ),
            (
                rate_limit_pb::RateLimitPolicy {
                    limit: Some(limit(0, 1_000, 0)),
                    ..base()
                },
                "policies[\"per-key\"].limit",
            ),
            (
                rate_limit_pb::RateLimitPolicy {
                    algorithm: 9,
                    ..base()
                },
                "policies[\"per-key\"].algorithm: not supported: algorithm 9",
            ),
            (
                rate_limit_pb::RateLimitPolicy {
                    key: vec![rate_limit_pb::KeyPart { part: None }],
                    ..base()
                },
                "policies[\"per-key\"].key[0].part: is required",
            ),
            (
                rate_limit_pb::RateLimitPolicy {
                    key: vec![rate_limit_pb::KeyPart {
                        part: Some(Part::Header("X-Tenant".into())),
                    }],
                    ..base()
                },
                "policies[\"per-key\"].key[0].header: \"X-Tenant\" is not a lowercase header",
            ),
            (
                rate_limit_pb::RateLimitPolicy {
                    key: vec![rate_limit_pb::KeyPart {
                        part: Some(Part::Claim("org..id".into())),
                    }],
                    ..base()
                },
                "policies[\"per-key\"].key[0].claim: \"org..id\" is not a dotted claim path",
            ),
        ];
        for (policy, expected) in cases {
            let message = rejected(&config(policy));
            assert!(
                message.starts_with(expected),
                "{message} (wanted {expected})"
            );
        }
        // A field this proxy does not know.
        let mut any = config(base());
        any.value.extend_from_slice(&[0x10, 0x01]);
        assert!(
            rejected(&any)
                .contains("unknown field 2 of tollgate.filters.http.rate_limit.v1.RateLimit"),
            "{}",
            rejected(&any)
        );
    }

    #[test]
    fn reads_a_routes_policies() {
        let any = pack_any(&rate_limit_pb::RateLimitPerRoute {
            policies: vec!["per-key".into(), "per-ip".into()],
        });
        assert_eq!(
            per_route(&any).unwrap().policies,
            ["per-key".to_owned(), "per-ip".to_owned()]
        );
        let empty_name = pack_any(&rate_limit_pb::RateLimitPerRoute {
            policies: vec![String::new()],
        });
        assert!(per_route(&empty_name).is_err());
    }
}
