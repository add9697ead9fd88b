//! Envoy's RBAC filter's config (`envoy.extensions.filters.http.rbac.v3`): the connection
//! manager's `RBAC` and a route's `RBACPerRoute`, validated into [`Rules`] that
//! [`crate::filter::rbac`] evaluates per request.
//!
//! The subset accepted is what Tollgate's control plane emits for authorization and IP-filter
//! policies, plus what costs nothing more to get right: `ALLOW` and `DENY` rules whose
//! permissions are `any`, and principals made of `and_ids`, `or_ids`, `not_id`, `any`,
//! `remote_ip`, `direct_remote_ip` and metadata matchers (`sourced_metadata` with the `DYNAMIC`
//! source, or the deprecated `metadata`, which Envoy reads the same way). Metadata matchers
//! read the namespaces this proxy's filters write: `envoy.filters.http.jwt_authn` (verified
//! JWT payloads) and `envoy.filters.http.ext_authz` (the API-key filter's consumer). Anything
//! else is NACKed, naming the field.

use std::net::IpAddr;

use tollgate_proto::envoy::config::core::v3 as core_pb;
use tollgate_proto::envoy::config::rbac::v3 as rbac_pb;
use tollgate_proto::envoy::extensions::filters::http::rbac::v3 as rbac_filter_pb;
use tollgate_proto::envoy::r#type::matcher::v3 as matcher_pb;

use crate::config::route::{StringMatch, string_matcher};
use crate::config::{Reason, Rejection, Within as _, reject_set};

/// The dynamic metadata namespace of the JWT filter.
pub const JWT_AUTHN_NAMESPACE: &str = "envoy.filters.http.jwt_authn";
/// The dynamic metadata namespace of Envoy's ext_authz filter, where the API-key filter puts
/// the consumer, as the control plane's ext_authz service does for Envoy nodes.
pub const EXT_AUTHZ_NAMESPACE: &str = "envoy.filters.http.ext_authz";

/// A validated HTTP `RBAC` (the connection manager's filter config).
#[derive(Debug)]
pub struct Rbac {
    /// `rules`; `None`: every request is allowed, unless a route has rules of its own.
    pub rules: Option<Rules>,
    /// The config as received: only to compare two configs.
    proto: rbac_filter_pb::Rbac,
}

impl PartialEq for Rbac {
    fn eq(&self, other: &Self) -> bool {
        self.proto == other.proto
    }
}

impl Eq for Rbac {}

/// A validated `RBACPerRoute`: its rules replace the connection manager's on the route.
#[derive(Debug)]
pub struct RbacPerRoute {
    /// `rbac.rules`; `None`: the route allows every request, as in Envoy.
    pub rules: Option<Rules>,
}

/// An `envoy.config.rbac.v3.RBAC`.
#[derive(Debug)]
pub struct Rules {
    /// What a matching policy means.
    pub action: Action,
    /// The policies, by name; a request matches when any does.
    pub policies: Vec<Policy>,
    /// Whether a principal reads the client's address (`remote_ip`), which is then worked out
    /// once per request.
    pub uses_client_address: bool,
}

/// `action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Only requests that match a policy pass.
    Allow,
    /// Requests that match a policy are refused.
    Deny,
}

/// A `Policy` whose permissions are all `any`: it matches when any principal does.
#[derive(Debug)]
pub struct Policy {
    /// The key in `policies`.
    pub name: String,
    /// `principals`, at least one.
    pub principals: Vec<Principal>,
}

/// A `Principal`: who sends the request.
#[derive(Debug)]
pub enum Principal {
    /// `any`.
    Any,
    /// `and_ids`: every one.
    And(Vec<Principal>),
    /// `or_ids`: at least one.
    Or(Vec<Principal>),
    /// `not_id`.
    Not(Box<Principal>),
    /// `remote_ip`: the client's address as `x-forwarded-for` and `xff_num_trusted_hops` say.
    RemoteIp(CidrRange),
    /// `direct_remote_ip`: the address of the connection's peer.
    DirectRemoteIp(CidrRange),
    /// `sourced_metadata` (DYNAMIC) or `metadata`.
    Metadata(MetadataMatcher),
}

/// A `CidrRange`, masked to its prefix as Envoy stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CidrRange {
    base: IpAddr,
    len: u8,
}

impl CidrRange {
    /// Whether `addr` is in the range. As Envoy, an IPv4 address is never in an IPv6 range
    /// (nor the reverse), mapped addresses included.
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.base, addr) {
            (IpAddr::V4(base), IpAddr::V4(addr)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(addr) & mask == u32::from(base)
            }
            (IpAddr::V6(base), IpAddr::V6(addr)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(addr) & mask == u128::from(base)
            }
            _ => false,
        }
    }
}

/// A `MetadataMatcher` on one of the namespaces this proxy writes.
#[derive(Debug)]
pub struct MetadataMatcher {
    /// `filter`.
    pub namespace: Namespace,
    /// `path`'s keys, at least one.
    pub path: Vec<String>,
    /// `value`.
    pub value: ValueMatcher,
    /// `invert`.
    pub invert: bool,
}

/// The dynamic metadata namespaces a matcher may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespace {
    /// [`JWT_AUTHN_NAMESPACE`].
    JwtAuthn,
    /// [`EXT_AUTHZ_NAMESPACE`].
    ExtAuthz,
}

/// A `ValueMatcher`.
#[derive(Debug)]
pub enum ValueMatcher {
    /// `string_match`: a string value that matches.
    String(StringMatch),
    /// `bool_match`: a boolean value equal to this.
    Bool(bool),
    /// `present_match`: with `true`, any value (JSON `null` included); `false` never matches,
    /// as in Envoy.
    Present(bool),
    /// `list_match.one_of`: a list with an element that matches.
    List(Box<ValueMatcher>),
    /// `or_match`: any of these, at least two.
    Or(Vec<ValueMatcher>),
}

/// Reads the connection manager's `RBAC`.
pub(crate) fn filter_config(proto: rbac_filter_pb::Rbac) -> Result<Rbac, Rejection> {
    let rules = http_rbac(&proto)?;
    Ok(Rbac { rules, proto })
}

/// Reads a route's `RBACPerRoute`.
pub(crate) fn per_route(proto: &rbac_filter_pb::RbacPerRoute) -> Result<RbacPerRoute, Rejection> {
    let rbac_filter_pb::RbacPerRoute { rbac } = proto;
    let rules = match rbac {
        Some(rbac) => http_rbac(rbac).within("rbac")?,
        None => None,
    };
    Ok(RbacPerRoute { rules })
}

fn http_rbac(proto: &rbac_filter_pb::Rbac) -> Result<Option<Rules>, Rejection> {
    let rbac_filter_pb::Rbac {
        rules,
        // Stats only.
        rules_stat_prefix: _,
        matcher,
        shadow_rules,
        shadow_matcher,
        // Stats only (shadow rules are refused).
        shadow_rules_stat_prefix: _,
        track_per_rule_stats: _,
    } = proto;
    reject_set(&[
        (matcher.is_some(), "matcher"),
        (shadow_rules.is_some(), "shadow_rules"),
        (shadow_matcher.is_some(), "shadow_matcher"),
    ])?;
    rules
        .as_ref()
        .map(|r| self::rules(r).within("rules"))
        .transpose()
}

fn rules(proto: &rbac_pb::Rbac) -> Result<Rules, Rejection> {
    let rbac_pb::Rbac {
        action,
        policies,
        audit_logging_options,
    } = proto;
    reject_set(&[(audit_logging_options.is_some(), "audit_logging_options")])?;
    let action = match rbac_pb::rbac::Action::try_from(*action) {
        Ok(rbac_pb::rbac::Action::Allow) => Action::Allow,
        Ok(rbac_pb::rbac::Action::Deny) => Action::Deny,
        Ok(rbac_pb::rbac::Action::Log) => {
            return Err(Rejection::new(
                "action",
                Reason::UnsupportedValue("LOG".into()),
            ));
        }
        Err(_) => {
            return Err(Rejection::new(
                "action",
                Reason::Invalid(format!("unknown action {action}")),
            ));
        }
    };
    // Sorted, as Envoy keeps them; the order decides nothing but which error comes first.
    let mut names: Vec<&String> = policies.keys().collect();
    names.sort();
    let mut built = Vec::with_capacity(names.len());
    let mut uses_client_address = false;
    for name in names {
        let policy = policy(name, &policies[name], &mut uses_client_address)
            .map_err(|r| r.key(name).within("policies"))?;
        built.push(policy);
    }
    Ok(Rules {
        action,
        policies: built,
        uses_client_address,
    })
}

fn policy(
    name: &str,
    proto: &rbac_pb::Policy,
    uses_client_address: &mut bool,
) -> Result<Policy, Rejection> {
    let rbac_pb::Policy {
        permissions,
        principals,
        condition,
        checked_condition,
        cel_config,
    } = proto;
    reject_set(&[
        (condition.is_some(), "condition"),
        (checked_condition.is_some(), "checked_condition"),
        (cel_config.is_some(), "cel_config"),
    ])?;
    if permissions.is_empty() {
        return Err(Rejection::new("permissions", Reason::Missing));
    }
    for (i, permission) in permissions.iter().enumerate() {
        self::permission(permission).at("permissions", i)?;
    }
    if principals.is_empty() {
        return Err(Rejection::new("principals", Reason::Missing));
    }
    let principals = principals
        .iter()
        .enumerate()
        .map(|(i, p)| principal(p, uses_client_address).at("principals", i))
        .collect::<Result<_, _>>()?;
    Ok(Policy {
        name: name.to_owned(),
        principals,
    })
}

/// Only `any: true` (which is all `any` may be): the rules say who, not what.
#[allow(deprecated)] // `metadata` is deprecated: it is refused like the other rules
fn permission(proto: &rbac_pb::Permission) -> Result<(), Rejection> {
    use rbac_pb::permission::Rule;
    let rbac_pb::Permission { rule } = proto;
    let unsupported = match rule {
        Some(Rule::Any(true)) => return Ok(()),
        Some(Rule::Any(false)) => {
            return Err(Rejection::new(
                "any",
                Reason::Invalid("must be true".into()),
            ));
        }
        None => {
            return Err(Rejection::new(
                "rule",
                Reason::Invalid("one of the permission rules is required".into()),
            ));
        }
        Some(Rule::AndRules(_)) => "and_rules",
        Some(Rule::OrRules(_)) => "or_rules",
        Some(Rule::Header(_)) => "header",
        Some(Rule::UrlPath(_)) => "url_path",
        Some(Rule::DestinationIp(_)) => "destination_ip",
        Some(Rule::DestinationPort(_)) => "destination_port",
        Some(Rule::DestinationPortRange(_)) => "destination_port_range",
        Some(Rule::Metadata(_)) => "metadata",
        Some(Rule::NotRule(_)) => "not_rule",
        Some(Rule::RequestedServerName(_)) => "requested_server_name",
        Some(Rule::Matcher(_)) => "matcher",
        Some(Rule::UriTemplate(_)) => "uri_template",
        Some(Rule::SourcedMetadata(_)) => "sourced_metadata",
    };
    Err(Rejection::unsupported(unsupported))
}

#[allow(deprecated)] // `metadata` is deprecated, and still read (as DYNAMIC) by Envoy
fn principal(
    proto: &rbac_pb::Principal,
    uses_client_address: &mut bool,
) -> Result<Principal, Rejection> {
    use rbac_pb::principal::Identifier;
    let rbac_pb::Principal { identifier } = proto;
    let set = |set: &rbac_pb::principal::Set,
               field: &'static str,
               uses: &mut bool|
     -> Result<Vec<Principal>, Rejection> {
        let rbac_pb::principal::Set { ids } = set;
        if ids.is_empty() {
            return Err(Rejection::new("ids", Reason::Missing).within(field));
        }
        ids.iter()
            .enumerate()
            .map(|(i, id)| principal(id, uses).at("ids", i).within(field))
            .collect()
    };
    let unsupported = match identifier {
        None => {
            return Err(Rejection::new(
                "identifier",
                Reason::Invalid("one of the principal identifiers is required".into()),
            ));
        }
        Some(Identifier::Any(true)) => return Ok(Principal::Any),
        Some(Identifier::Any(false)) => {
            return Err(Rejection::new(
                "any",
                Reason::Invalid("must be true".into()),
            ));
        }
        Some(Identifier::AndIds(ids)) => {
            return Ok(Principal::And(set(ids, "and_ids", uses_client_address)?));
        }
        Some(Identifier::OrIds(ids)) => {
            return Ok(Principal::Or(set(ids, "or_ids", uses_client_address)?));
        }
        Some(Identifier::NotId(id)) => {
            return Ok(Principal::Not(Box::new(
                principal(id, uses_client_address).within("not_id")?,
            )));
        }
        Some(Identifier::RemoteIp(range)) => {
            *uses_client_address = true;
            return Ok(Principal::RemoteIp(cidr_range(range).within("remote_ip")?));
        }
        Some(Identifier::DirectRemoteIp(range)) => {
            return Ok(Principal::DirectRemoteIp(
                cidr_range(range).within("direct_remote_ip")?,
            ));
        }
        Some(Identifier::Metadata(matcher)) => {
            return Ok(Principal::Metadata(
                metadata_matcher(matcher).within("metadata")?,
            ));
        }
        Some(Identifier::SourcedMetadata(sourced)) => {
            let rbac_pb::SourcedMetadata {
                metadata_matcher: matcher,
                metadata_source,
            } = sourced;
            let within = |r: Rejection| r.within("sourced_metadata");
            match rbac_pb::MetadataSource::try_from(*metadata_source) {
                Ok(rbac_pb::MetadataSource::Dynamic) => {}
                // The route's own metadata: routes' metadata is not kept by this proxy.
                Ok(rbac_pb::MetadataSource::Route) => {
                    return Err(within(Rejection::new(
                        "metadata_source",
                        Reason::UnsupportedValue("ROUTE".into()),
                    )));
                }
                Err(_) => {
                    return Err(within(Rejection::new(
                        "metadata_source",
                        Reason::Invalid(format!("unknown source {metadata_source}")),
                    )));
                }
            }
            let matcher = matcher
                .as_ref()
                .ok_or_else(|| Rejection::new("metadata_matcher", Reason::Missing))
                .and_then(|m| metadata_matcher(m).within("metadata_matcher"))
                .map_err(within)?;
            return Ok(Principal::Metadata(matcher));
        }
        Some(Identifier::Authenticated(_)) => "authenticated",
        Some(Identifier::SourceIp(_)) => "source_ip",
        Some(Identifier::Header(_)) => "header",
        Some(Identifier::UrlPath(_)) => "url_path",
        Some(Identifier::FilterState(_)) => "filter_state",
        Some(Identifier::Custom(_)) => "custom",
    };
    Err(Rejection::unsupported(unsupported))
}

/// Envoy's `CidrRange::create`: the address is masked to the prefix, and a prefix longer than
/// the address (up to PGV's 128) means the whole address.
fn cidr_range(proto: &core_pb::CidrRange) -> Result<CidrRange, Rejection> {
    let core_pb::CidrRange {
        address_prefix,
        prefix_len,
    } = proto;
    if address_prefix.is_empty() {
        return Err(Rejection::new("address_prefix", Reason::Missing));
    }
    let base: IpAddr = address_prefix.parse().map_err(|_| {
        Rejection::new(
            "address_prefix",
            Reason::Invalid(format!("malformed IP address: {address_prefix}")),
        )
    })?;
    let requested = prefix_len.map_or(0, |p| p.value);
    if requested > 128 {
        return Err(Rejection::new(
            "prefix_len",
            Reason::Invalid("must be at most 128".into()),
        ));
    }
    let max = if base.is_ipv4() { 32 } else { 128 };
    let len = u8::try_from(requested.min(max)).expect("at most 128");
    let base = match base {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    };
    Ok(CidrRange { base, len })
}

fn metadata_matcher(proto: &matcher_pb::MetadataMatcher) -> Result<MetadataMatcher, Rejection> {
    use matcher_pb::metadata_matcher::{PathSegment, path_segment::Segment};
    let matcher_pb::MetadataMatcher {
        filter,
        path,
        value,
        invert,
    } = proto;
    let namespace = match filter.as_str() {
        "" => return Err(Rejection::new("filter", Reason::Missing)),
        JWT_AUTHN_NAMESPACE => Namespace::JwtAuthn,
        EXT_AUTHZ_NAMESPACE => Namespace::ExtAuthz,
        other => {
            return Err(Rejection::new(
                "filter",
                Reason::UnsupportedValue(format!(
                    "{other:?}: only {JWT_AUTHN_NAMESPACE} and {EXT_AUTHZ_NAMESPACE} are written \
                     by this proxy's filters"
                )),
            ));
        }
    };
    if path.is_empty() {
        return Err(Rejection::new("path", Reason::Missing));
    }
    let path = path
        .iter()
        .enumerate()
        .map(|(i, PathSegment { segment })| match segment {
            Some(Segment::Key(key)) if !key.is_empty() => Ok(key.clone()),
            _ => Err(Rejection::new("key", Reason::Missing).at("path", i)),
        })
        .collect::<Result<_, _>>()?;
    let value = value
        .as_ref()
        .ok_or_else(|| Rejection::new("value", Reason::Missing))
        .and_then(|v| value_matcher(v).within("value"))?;
    Ok(MetadataMatcher {
        namespace,
        path,
        value,
        invert: *invert,
    })
}

fn value_matcher(proto: &matcher_pb::ValueMatcher) -> Result<ValueMatcher, Rejection> {
    use matcher_pb::value_matcher::MatchPattern;
    let matcher_pb::ValueMatcher { match_pattern } = proto;
    Ok(match match_pattern {
        None => {
            return Err(Rejection::new(
                "match_pattern",
                Reason::Invalid("one of the value matchers is required".into()),
            ));
        }
        Some(MatchPattern::StringMatch(m)) => {
            ValueMatcher::String(string_matcher(m).within("string_match")?)
        }
        Some(MatchPattern::BoolMatch(b)) => ValueMatcher::Bool(*b),
        Some(MatchPattern::PresentMatch(p)) => ValueMatcher::Present(*p),
        Some(MatchPattern::ListMatch(list)) => {
            let matcher_pb::ListMatcher { match_pattern } = list.as_ref();
            match match_pattern {
                Some(matcher_pb::list_matcher::MatchPattern::OneOf(one_of)) => {
                    ValueMatcher::List(Box::new(
                        value_matcher(one_of)
                            .within("one_of")
                            .within("list_match")?,
                    ))
                }
                None => {
                    return Err(Rejection::new("one_of", Reason::Missing).within("list_match"));
                }
            }
        }
        Some(MatchPattern::OrMatch(or)) => {
            let matcher_pb::OrMatcher { value_matchers } = or;
            if value_matchers.len() < 2 {
                return Err(Rejection::new(
                    "value_matchers",
                    Reason::Invalid("must have at least 2 matchers".into()),
                )
                .within("or_match"));
            }
            ValueMatcher::Or(
                value_matchers
                    .iter()
                    .enumerate()
                    .map(|(i, m)| value_matcher(m).at("value_matchers", i).within("or_match"))
                    .collect::<Result<_, _>>()?,
            )
        }
        Some(MatchPattern::NullMatch(_)) => return Err(Rejection::unsupported("null_match")),
        Some(MatchPattern::DoubleMatch(_)) => return Err(Rejection::unsupported("double_match")),
    })
}

#[cfg(test)]
pub(crate) mod tests;
