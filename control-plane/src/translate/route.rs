//! Routes → RDS `RouteConfiguration`: virtual hosts by domain, routes in match order.

use std::collections::{BTreeMap, BTreeSet};

use tollgate_proto::envoy::config::core::v3 as core_pb;
use tollgate_proto::envoy::config::route::v3 as route_pb;
use tollgate_proto::envoy::r#type::matcher::v3 as matcher_pb;
use tollgate_proto::google::protobuf::{BoolValue, UInt32Value};

use crate::model::{HeaderMatch, HeaderMutations, QueryMatch, Route};

/// The catch-all virtual host's domain.
const ANY_HOST: &str = "*";

/// Builds the virtual hosts for routes already in match order.
///
/// Envoy picks one virtual host per request (the most specific domain), then the first matching
/// route in it. A route without hosts must therefore appear in every virtual host, after the
/// routes that outrank it, so each domain gets its own virtual host holding its routes and the
/// host-less ones, in the global order; the `*` virtual host holds the host-less routes.
///
/// `decorate` adds what a route's policies need to its translated form.
pub(super) fn virtual_hosts(
    routes: &[&Route],
    decorate: impl Fn(&Route, &mut route_pb::Route),
) -> Vec<route_pb::VirtualHost> {
    let translate = |route: &Route| {
        let mut translated = translate(route);
        decorate(route, &mut translated);
        translated
    };
    let domains: BTreeSet<&str> = routes
        .iter()
        .flat_map(|r| r.matcher.hosts.iter().map(String::as_str))
        .collect();
    let mut hosts: Vec<route_pb::VirtualHost> = domains
        .into_iter()
        .map(|domain| route_pb::VirtualHost {
            name: domain.to_owned(),
            domains: vec![domain.to_owned()],
            routes: routes
                .iter()
                .filter(|r| {
                    r.matcher.hosts.is_empty() || r.matcher.hosts.iter().any(|h| h == domain)
                })
                .map(|r| translate(r))
                .collect(),
            ..Default::default()
        })
        .collect();
    hosts.push(route_pb::VirtualHost {
        name: "any".to_owned(),
        domains: vec![ANY_HOST.to_owned()],
        routes: routes
            .iter()
            .filter(|r| r.matcher.hosts.is_empty())
            .map(|r| translate(r))
            .collect(),
        ..Default::default()
    });
    hosts
}

pub(super) fn route_configuration(
    name: &str,
    virtual_hosts: Vec<route_pb::VirtualHost>,
) -> route_pb::RouteConfiguration {
    route_pb::RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts,
        ignore_port_in_host_matching: true,
        // Routes may only name clusters that exist (the store checks), so Envoy need not
        // wait for CDS to validate them.
        validate_clusters: Some(BoolValue { value: false }),
        ..Default::default()
    }
}

fn translate(route: &Route) -> route_pb::Route {
    route_pb::Route {
        name: route.name.clone(),
        r#match: Some(route_match(route)),
        action: Some(action(route)),
        request_headers_to_add: header_values(&route.request_headers),
        request_headers_to_remove: route.request_headers.remove.clone(),
        response_headers_to_add: header_values(&route.response_headers),
        response_headers_to_remove: route.response_headers.remove.clone(),
        ..Default::default()
    }
}

fn route_match(route: &Route) -> route_pb::RouteMatch {
    use route_pb::route_match::PathSpecifier;
    let m = &route.matcher;
    let path = if let Some(exact) = &m.path_exact {
        PathSpecifier::Path(exact.clone())
    } else if let Some(regex) = &m.path_regex {
        PathSpecifier::SafeRegex(regex_matcher(regex))
    } else {
        PathSpecifier::Prefix(m.path_prefix.clone().unwrap_or_else(|| "/".to_owned()))
    };
    let mut headers: Vec<_> = m.headers.iter().map(header_matcher).collect();
    match m.methods.as_slice() {
        [] => {}
        [method] => headers.push(string_header(":method", exact(method))),
        methods => headers.push(string_header(
            ":method",
            matcher_pb::string_matcher::MatchPattern::SafeRegex(regex_matcher(&format!(
                "^({})$",
                methods.join("|")
            ))),
        )),
    }
    route_pb::RouteMatch {
        path_specifier: Some(path),
        headers,
        query_parameters: m.query.iter().map(query_matcher).collect(),
        ..Default::default()
    }
}

fn regex_matcher(regex: &str) -> matcher_pb::RegexMatcher {
    matcher_pb::RegexMatcher {
        regex: regex.to_owned(),
        ..Default::default()
    }
}

fn exact(value: &str) -> matcher_pb::string_matcher::MatchPattern {
    matcher_pb::string_matcher::MatchPattern::Exact(value.to_owned())
}

fn string_header(
    name: &str,
    pattern: matcher_pb::string_matcher::MatchPattern,
) -> route_pb::HeaderMatcher {
    route_pb::HeaderMatcher {
        name: name.to_owned(),
        header_match_specifier: Some(route_pb::header_matcher::HeaderMatchSpecifier::StringMatch(
            matcher_pb::StringMatcher {
                match_pattern: Some(pattern),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

fn header_matcher(h: &HeaderMatch) -> route_pb::HeaderMatcher {
    use matcher_pb::string_matcher::MatchPattern;
    let mut out = if let Some(value) = &h.exact {
        string_header(&h.name, exact(value))
    } else if let Some(prefix) = &h.prefix {
        string_header(&h.name, MatchPattern::Prefix(prefix.clone()))
    } else if let Some(regex) = &h.regex {
        string_header(&h.name, MatchPattern::SafeRegex(regex_matcher(regex)))
    } else {
        route_pb::HeaderMatcher {
            name: h.name.clone(),
            header_match_specifier: Some(
                route_pb::header_matcher::HeaderMatchSpecifier::PresentMatch(
                    h.present.unwrap_or(true),
                ),
            ),
            ..Default::default()
        }
    };
    out.invert_match = h.invert;
    out
}

fn query_matcher(q: &QueryMatch) -> route_pb::QueryParameterMatcher {
    use route_pb::query_parameter_matcher::QueryParameterMatchSpecifier;
    let specifier = if let Some(value) = &q.exact {
        QueryParameterMatchSpecifier::StringMatch(matcher_pb::StringMatcher {
            match_pattern: Some(exact(value)),
            ..Default::default()
        })
    } else if let Some(regex) = &q.regex {
        QueryParameterMatchSpecifier::StringMatch(matcher_pb::StringMatcher {
            match_pattern: Some(matcher_pb::string_matcher::MatchPattern::SafeRegex(
                regex_matcher(regex),
            )),
            ..Default::default()
        })
    } else {
        QueryParameterMatchSpecifier::PresentMatch(true)
    };
    route_pb::QueryParameterMatcher {
        name: q.name.clone(),
        query_parameter_match_specifier: Some(specifier),
    }
}

fn action(route: &Route) -> route_pb::route::Action {
    use route_pb::route::Action;
    if let Some(redirect) = &route.redirect {
        use route_pb::redirect_action::{
            PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier,
        };
        let code = match redirect.status {
            302 => RedirectResponseCode::Found,
            303 => RedirectResponseCode::SeeOther,
            307 => RedirectResponseCode::TemporaryRedirect,
            308 => RedirectResponseCode::PermanentRedirect,
            _ => RedirectResponseCode::MovedPermanently,
        };
        let path = redirect
            .path
            .clone()
            .map(PathRewriteSpecifier::PathRedirect)
            .or_else(|| {
                redirect
                    .prefix_rewrite
                    .clone()
                    .map(PathRewriteSpecifier::PrefixRewrite)
            });
        return Action::Redirect(route_pb::RedirectAction {
            host_redirect: redirect.host.clone().unwrap_or_default(),
            port_redirect: redirect.port.map_or(0, u32::from),
            response_code: code as i32,
            strip_query: redirect.strip_query,
            scheme_rewrite_specifier: redirect
                .scheme
                .clone()
                .map(SchemeRewriteSpecifier::SchemeRedirect),
            path_rewrite_specifier: path,
        });
    }
    if let Some(direct) = &route.direct_response {
        return Action::DirectResponse(route_pb::DirectResponseAction {
            status: u32::from(direct.status),
            body: direct.body.clone().map(|body| core_pb::DataSource {
                specifier: Some(core_pb::data_source::Specifier::InlineString(body)),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    Action::Route(route_action(route))
}

fn route_action(route: &Route) -> route_pb::RouteAction {
    use route_pb::route_action::{ClusterSpecifier, HostRewriteSpecifier};
    let cluster_specifier = match (&route.cluster, &route.weighted_clusters) {
        (Some(cluster), _) => ClusterSpecifier::Cluster(cluster.clone()),
        (None, Some(weighted)) => ClusterSpecifier::WeightedClusters(route_pb::WeightedCluster {
            clusters: weighted
                .iter()
                .map(|w| route_pb::weighted_cluster::ClusterWeight {
                    name: w.cluster.clone(),
                    weight: Some(UInt32Value { value: w.weight }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
        (None, None) => unreachable!("validated: a forwarding route names a cluster"),
    };
    let mut action = route_pb::RouteAction {
        cluster_specifier: Some(cluster_specifier),
        timeout: route.timeout_ms.map(super::duration_ms),
        ..Default::default()
    };
    if let Some(rewrite) = &route.rewrite {
        if let Some(prefix) = &rewrite.path_prefix {
            action.prefix_rewrite = prefix.clone();
        }
        if let (Some(regex), Some(substitution)) = (&rewrite.path_regex, &rewrite.path_substitution)
        {
            action.regex_rewrite = Some(regex_rewrite(regex, substitution));
        }
        if let Some(host) = &rewrite.host {
            action.host_rewrite_specifier =
                Some(HostRewriteSpecifier::HostRewriteLiteral(host.clone()));
        }
    }
    if let Some(retries) = &route.retries {
        action.retry_policy = Some(route_pb::RetryPolicy {
            retry_on: retries.retry_on.join(","),
            num_retries: Some(UInt32Value {
                value: retries.attempts,
            }),
            per_try_timeout: retries.per_try_timeout_ms.map(super::duration_ms),
            // Envoy retries a request only if it matches one of these.
            retriable_request_headers: retries
                .retried_methods()
                .map(|methods| {
                    string_header(
                        ":method",
                        matcher_pb::string_matcher::MatchPattern::SafeRegex(regex_matcher(
                            &methods.join("|"),
                        )),
                    )
                })
                .into_iter()
                .collect(),
            ..Default::default()
        });
    }
    action
}

fn header_values(mutations: &HeaderMutations) -> Vec<core_pb::HeaderValueOption> {
    // Envoy reads `%…%` in header values as per-request substitutions; the values users give
    // are literal, so `%` is escaped.
    header_options(&mutations.set, &mutations.add, |value| {
        value.replace('%', "%%")
    })
}

/// Header options setting (overwriting) `set` and appending `add`, each value as `render`
/// writes it in Envoy's substitution format.
pub(super) fn header_options(
    set: &BTreeMap<String, String>,
    add: &BTreeMap<String, String>,
    render: impl Fn(&str) -> String,
) -> Vec<core_pb::HeaderValueOption> {
    use core_pb::header_value_option::HeaderAppendAction;
    let entry =
        |name: &String, value: &String, action: HeaderAppendAction| core_pb::HeaderValueOption {
            header: Some(core_pb::HeaderValue {
                key: name.clone(),
                value: render(value),
                ..Default::default()
            }),
            append_action: action as i32,
            ..Default::default()
        };
    let set = set
        .iter()
        .map(|(n, v)| entry(n, v, HeaderAppendAction::OverwriteIfExistsOrAdd));
    let add = add
        .iter()
        .map(|(n, v)| entry(n, v, HeaderAppendAction::AppendIfExistsOrAdd));
    set.chain(add).collect()
}

/// The regex matcher of a path rewrite.
pub(super) fn regex_rewrite(
    regex: &str,
    substitution: &str,
) -> matcher_pb::RegexMatchAndSubstitute {
    matcher_pb::RegexMatchAndSubstitute {
        pattern: Some(regex_matcher(regex)),
        substitution: substitution.to_owned(),
    }
}
