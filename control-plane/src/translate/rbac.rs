//! Authorization and IP-filter policies → Envoy's RBAC filter: one `ALLOW` rule per route whose
//! principal is the conjunction of every requirement in force on it.
//!
//! Requirements on who the caller is read what authentication left in the request's dynamic
//! metadata: the verified JWT payload (`jwt_authn`'s `payload_in_metadata`) and the API key's
//! consumer (the control plane's ext_authz answer).

use tollgate_proto::envoy::config::core::v3 as core_pb;
use tollgate_proto::envoy::config::rbac::v3 as rbac_pb;
use tollgate_proto::envoy::extensions::filters::http::rbac::v3 as rbac_filter_pb;
use tollgate_proto::envoy::r#type::matcher::v3 as matcher_pb;
use tollgate_proto::google::protobuf::UInt32Value;

use crate::model::{AuthorizationPolicy, Cidr, IpFilterPolicy};

/// The connection manager's name for the RBAC filter.
pub(super) const RBAC_FILTER: &str = "envoy.filters.http.rbac";
/// Where `jwt_authn` puts a verified token's payload in its dynamic metadata.
pub(super) const JWT_PAYLOAD_KEY: &str = "jwt_payload";
/// The dynamic metadata namespace of `jwt_authn`.
const JWT_NAMESPACE: &str = "envoy.filters.http.jwt_authn";
/// The dynamic metadata namespace ext_authz answers land in.
const EXT_AUTHZ_NAMESPACE: &str = "envoy.filters.http.ext_authz";
/// Keys of the consumer's identity in the ext_authz metadata.
pub(crate) const CONSUMER_KEY: &str = "consumer";
/// See [`CONSUMER_KEY`].
pub(crate) const GROUPS_KEY: &str = "groups";
/// See [`CONSUMER_KEY`].
pub(crate) const TIER_KEY: &str = "tier";

/// The route's RBAC config: callers must satisfy every policy given.
pub(super) fn per_route(
    ip_filters: &[&IpFilterPolicy],
    authorizations: &[&AuthorizationPolicy],
) -> rbac_filter_pb::RbacPerRoute {
    let principal = and(ip_filters
        .iter()
        .map(|p| ip_filter(p))
        .chain(authorizations.iter().map(|p| authorization(p)))
        .collect());
    let rules = rbac_pb::Rbac {
        action: rbac_pb::rbac::Action::Allow as i32,
        policies: [(
            "tollgate".to_owned(),
            rbac_pb::Policy {
                permissions: vec![rbac_pb::Permission {
                    rule: Some(rbac_pb::permission::Rule::Any(true)),
                }],
                principals: vec![principal],
                ..Default::default()
            },
        )]
        .into(),
        ..Default::default()
    };
    rbac_filter_pb::RbacPerRoute {
        rbac: Some(rbac_filter_pb::Rbac {
            rules: Some(rules),
            ..Default::default()
        }),
    }
}

/// The connection manager's RBAC filter: no rules of its own, so routes without a per-route
/// config are not restricted.
pub(super) fn filter() -> rbac_filter_pb::Rbac {
    rbac_filter_pb::Rbac::default()
}

fn ip_filter(policy: &IpFilterPolicy) -> rbac_pb::Principal {
    let ranges = |list: &[String]| -> Vec<rbac_pb::Principal> {
        list.iter()
            .filter_map(|range| Cidr::parse(range).ok())
            .map(|cidr| {
                principal(rbac_pb::principal::Identifier::RemoteIp(
                    core_pb::CidrRange {
                        address_prefix: cidr.address.to_string(),
                        prefix_len: Some(UInt32Value {
                            value: u32::from(cidr.prefix_len),
                        }),
                    },
                ))
            })
            .collect()
    };
    let mut all = Vec::new();
    if !policy.allow.is_empty() {
        all.push(or(ranges(&policy.allow)));
    }
    if !policy.deny.is_empty() {
        all.push(not(or(ranges(&policy.deny))));
    }
    and(all)
}

fn authorization(policy: &AuthorizationPolicy) -> rbac_pb::Principal {
    let mut all = Vec::new();
    for (claim, values) in &policy.require_claims {
        let path: Vec<&str> = std::iter::once(JWT_PAYLOAD_KEY)
            .chain(claim.split('.'))
            .collect();
        all.push(or(values
            .iter()
            .map(|value| string_or_list_contains(JWT_NAMESPACE, &path, value))
            .collect()));
    }
    for scope in &policy.require_scopes {
        // `scope` is space-separated; jwt_authn splits it into a list (normalize_payload).
        all.push(or(vec![
            list_contains(JWT_NAMESPACE, &[JWT_PAYLOAD_KEY, "scope"], scope),
            list_contains(JWT_NAMESPACE, &[JWT_PAYLOAD_KEY, "scp"], scope),
        ]));
    }
    if !policy.allow_consumer_groups.is_empty() || !policy.allow_consumers.is_empty() {
        all.push(or(policy
            .allow_consumer_groups
            .iter()
            .map(|group| list_contains(EXT_AUTHZ_NAMESPACE, &[GROUPS_KEY], group))
            .chain(policy.allow_consumers.iter().map(|consumer| {
                metadata(EXT_AUTHZ_NAMESPACE, &[CONSUMER_KEY], string_value(consumer))
            }))
            .collect()));
    }
    and(all)
}

/// A claim equal to `value`, or a list claim containing it.
fn string_or_list_contains(namespace: &str, path: &[&str], value: &str) -> rbac_pb::Principal {
    or(vec![
        metadata(namespace, path, string_value(value)),
        list_contains(namespace, path, value),
    ])
}

fn list_contains(namespace: &str, path: &[&str], value: &str) -> rbac_pb::Principal {
    metadata(
        namespace,
        path,
        matcher_pb::ValueMatcher {
            match_pattern: Some(matcher_pb::value_matcher::MatchPattern::ListMatch(
                Box::new(matcher_pb::ListMatcher {
                    match_pattern: Some(matcher_pb::list_matcher::MatchPattern::OneOf(Box::new(
                        string_value(value),
                    ))),
                }),
            )),
        },
    )
}

fn string_value(value: &str) -> matcher_pb::ValueMatcher {
    matcher_pb::ValueMatcher {
        match_pattern: Some(matcher_pb::value_matcher::MatchPattern::StringMatch(
            matcher_pb::StringMatcher {
                match_pattern: Some(matcher_pb::string_matcher::MatchPattern::Exact(
                    value.to_owned(),
                )),
                ignore_case: false,
            },
        )),
    }
}

fn metadata(namespace: &str, path: &[&str], value: matcher_pb::ValueMatcher) -> rbac_pb::Principal {
    use matcher_pb::metadata_matcher::{PathSegment, path_segment::Segment};
    principal(rbac_pb::principal::Identifier::SourcedMetadata(
        rbac_pb::SourcedMetadata {
            metadata_matcher: Some(matcher_pb::MetadataMatcher {
                filter: namespace.to_owned(),
                path: path
                    .iter()
                    .map(|key| PathSegment {
                        segment: Some(Segment::Key((*key).to_owned())),
                    })
                    .collect(),
                value: Some(value),
                invert: false,
            }),
            metadata_source: rbac_pb::MetadataSource::Dynamic as i32,
        },
    ))
}

fn principal(identifier: rbac_pb::principal::Identifier) -> rbac_pb::Principal {
    rbac_pb::Principal {
        identifier: Some(identifier),
    }
}

/// All of `ids`; one is itself, none is anyone.
fn and(mut ids: Vec<rbac_pb::Principal>) -> rbac_pb::Principal {
    match ids.len() {
        0 => principal(rbac_pb::principal::Identifier::Any(true)),
        1 => ids.pop().expect("one"),
        _ => principal(rbac_pb::principal::Identifier::AndIds(
            rbac_pb::principal::Set { ids },
        )),
    }
}

/// Any of `ids`; one is itself, none is no one.
fn or(mut ids: Vec<rbac_pb::Principal>) -> rbac_pb::Principal {
    match ids.len() {
        0 => not(principal(rbac_pb::principal::Identifier::Any(true))),
        1 => ids.pop().expect("one"),
        _ => principal(rbac_pb::principal::Identifier::OrIds(
            rbac_pb::principal::Set { ids },
        )),
    }
}

fn not(id: rbac_pb::Principal) -> rbac_pb::Principal {
    principal(rbac_pb::principal::Identifier::NotId(Box::new(id)))
}
