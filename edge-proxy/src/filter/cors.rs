//! Envoy's CORS filter (`envoy.filters.http.cors`), after route matching.
//!
//! On the way in ([`on_request`]) it reads the route's and the virtual host's
//! [`CorsPolicy`] (field by field, the route's first) and the request's `Origin`. A preflight
//! (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered here with 200,
//! unless the origin is not allowed and `forward_not_matching_preflights` (default true) lets
//! it through. Any other request with an allowed origin is latched ([`CorsLatch`]) and, on the
//! way out ([`CorsLatch::apply`]), its response gets `access-control-allow-origin` (the
//! request's origin), `access-control-allow-credentials` and `access-control-expose-headers`.
//! The latch also applies to the preflight answer itself, since Envoy's local replies pass
//! through the filter's response side too.
//!
//! As in Envoy, nothing happens on routes that redirect or answer directly, nor when no level
//! has a policy, nor when the most specific policy has `filter_enabled` at 0 %.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::config::filters::cors::CorsPolicy;
use crate::proxy::body::{DownstreamBody, full};

const ALLOW_ORIGIN: HeaderName = header::ACCESS_CONTROL_ALLOW_ORIGIN;
const ALLOW_CREDENTIALS: HeaderName = header::ACCESS_CONTROL_ALLOW_CREDENTIALS;
const ALLOW_METHODS: HeaderName = header::ACCESS_CONTROL_ALLOW_METHODS;
const ALLOW_HEADERS: HeaderName = header::ACCESS_CONTROL_ALLOW_HEADERS;
const EXPOSE_HEADERS: HeaderName = header::ACCESS_CONTROL_EXPOSE_HEADERS;
const MAX_AGE: HeaderName = header::ACCESS_CONTROL_MAX_AGE;
const REQUEST_METHOD: HeaderName = header::ACCESS_CONTROL_REQUEST_METHOD;
const REQUEST_HEADERS: HeaderName = header::ACCESS_CONTROL_REQUEST_HEADERS;
const REQUEST_PRIVATE_NETWORK: HeaderName =
    HeaderName::from_static("access-control-request-private-network");
const ALLOW_PRIVATE_NETWORK: HeaderName =
    HeaderName::from_static("access-control-allow-private-network");
const TRUE: HeaderValue = HeaderValue::from_static("true");

/// What the response of an allowed cross-origin request gets.
#[derive(Debug, Clone)]
pub struct CorsLatch {
    origin: HeaderValue,
    credentials: bool,
    expose_headers: Option<HeaderValue>,
}

impl CorsLatch {
    /// Adds the CORS response headers, replacing any the upstream sent.
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.insert(ALLOW_ORIGIN, self.origin.clone());
        if self.credentials {
            headers.insert(ALLOW_CREDENTIALS, TRUE);
        }
        if let Some(expose) = &self.expose_headers {
            headers.insert(EXPOSE_HEADERS, expose.clone());
        }
    }
}

/// What the filter decided for a request.
// Returned once per request and consumed at once: boxing the answer would only add an
// allocation to every preflight.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Outcome {
    /// Not a CORS request for this filter: nothing to do either way.
    Skip,
    /// Forward the request; an allowed origin's response gets the latch's headers.
    Continue(Option<CorsLatch>),
    /// A preflight answered here; the latch (if any) still applies to the answer.
    Respond(Response<DownstreamBody>, Option<CorsLatch>),
}

/// The policies of one request, most specific first, read field by field as Envoy does.
struct Policies<'a>([Option<&'a CorsPolicy>; 2]);

impl<'a> Policies<'a> {
    fn first<T>(&self, field: impl Fn(&'a CorsPolicy) -> Option<T>) -> Option<T> {
        self.0.iter().flatten().find_map(|p| field(p))
    }
}

/// The request side. `policies` are the route's and the virtual host's; `forwarding` says
/// whether the route forwards (CORS does nothing on redirects and direct responses, whose
/// routes Envoy does not give the filter).
pub fn on_request(
    policies: [Option<&CorsPolicy>; 2],
    forwarding: bool,
    method: &Method,
    headers: &HeaderMap,
) -> Outcome {
    let policies = Policies(policies);
    let Some(most_specific) = policies.0.iter().flatten().next() else {
        return Outcome::Skip;
    };
    if !forwarding || !most_specific.enabled {
        return Outcome::Skip;
    }
    let Some(origin) = joined(headers, &header::ORIGIN).filter(|o| !o.is_empty()) else {
        return Outcome::Skip;
    };
    // The first level that lists origins decides; a matcher that matches `*` allows any.
    let allowed = policies
        .first(|p| (!p.allow_origins.is_empty()).then_some(&p.allow_origins))
        .is_some_and(|origins| {
            let origin = String::from_utf8_lossy(origin.as_bytes());
            origins.iter().any(|m| m.matches("*") || m.matches(&origin))
        });
    let latch = allowed.then(|| CorsLatch {
        origin: origin.clone(),
        credentials: policies.first(|p| p.allow_credentials).unwrap_or(false),
        expose_headers: policies.first(|p| p.expose_headers.clone()),
    });
    let request_method = joined(headers, &REQUEST_METHOD).filter(|m| !m.is_empty());
    let Some(request_method) = request_method.filter(|_| method == Method::OPTIONS) else {
        return Outcome::Continue(latch);
    };
    if !allowed
        && policies
            .first(|p| p.forward_not_matching_preflights)
            .unwrap_or(true)
    {
        return Outcome::Continue(None);
    }

    let mut response = Response::new(full(""));
    *response.status_mut() = StatusCode::OK;
    let out = response.headers_mut();
    if allowed {
        out.insert(ALLOW_ORIGIN, origin);
    }
    if policies.first(|p| p.allow_credentials).unwrap_or(false) {
        out.insert(ALLOW_CREDENTIALS, TRUE);
    }
    if let Some(methods) = policies.first(|p| p.allow_methods.clone()) {
        // `*` echoes what the client asked for.
        let value = if methods == "*" {
            request_method
        } else {
            methods
        };
        out.insert(ALLOW_METHODS, value);
    }
    if let Some(allow_headers) = policies.first(|p| p.allow_headers.clone()) {
        let value = if allow_headers == "*" {
            joined(headers, &REQUEST_HEADERS).unwrap_or(HeaderValue::from_static(""))
        } else {
            allow_headers
        };
        out.insert(ALLOW_HEADERS, value);
    }
    if let Some(max_age) = policies.first(|p| p.max_age.clone()) {
        out.insert(MAX_AGE, max_age);
    }
    if policies
        .first(|p| p.allow_private_network_access)
        .unwrap_or(false)
        && headers
            .get(REQUEST_PRIVATE_NETWORK)
            .is_some_and(|v| v == "true")
    {
        out.insert(ALLOW_PRIVATE_NETWORK, TRUE);
    }
    Outcome::Respond(response, latch)
}

/// A header as Envoy keeps `origin` and the `access-control-request-*` headers: one entry,
/// repeated lines joined with `,`.
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let Some(second) = values.next() else {
        return Some(first.clone());
    };
    let mut out = first.as_bytes().to_vec();
    for value in std::iter::once(second).chain(values) {
        out.push(b',');
        out.extend_from_slice(value.as_bytes());
    }
    HeaderValue::from_bytes(&out).ok()
}

#[cfg(test)]
mod tests {
    use tollgate_proto::envoy::extensions::filters::http::cors::v3 as cors_pb;
    use tollgate_proto::envoy::r#type::matcher::v3 as matcher_pb;
    use tollgate_proto::google::protobuf::BoolValue;

    use super::*;
    use crate::config::filters::cors::policy;

    fn exact(origin: &str) -> matcher_pb::StringMatcher {
        matcher_pb::StringMatcher {
            match_pattern: Some(matcher_pb::string_matcher::MatchPattern::Exact(
                origin.into(),
            )),
            ignore_case: false,
        }
    }

    fn route_policy() -> CorsPolicy {
        policy(&cors_pb::CorsPolicy {
            allow_origin_string_match: vec![exact("https://app.example")],
            allow_methods: "GET,POST".into(),
            allow_headers: "content-type".into(),
            expose_headers: "x-trace".into(),
            max_age: "600".into(),
            allow_credentials: Some(BoolValue { value: true }),
            ..Default::default()
        })
        .unwrap()
    }

    fn request(method: Method, headers: &[(&'static str, &str)]) -> (Method, HeaderMap) {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        (method, map)
    }

    fn run(policies: [Option<&CorsPolicy>; 2], req: &(Method, HeaderMap)) -> Outcome {
        on_request(policies, true, &req.0, &req.1)
    }

    fn pairs(headers: &HeaderMap) -> Vec<(String, String)> {
        headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect()
    }

    #[test]
    fn a_preflight_from_an_allowed_origin_is_answered_with_envoys_headers() {
        let policy = route_policy();
        let req = request(
            Method::OPTIONS,
            &[
                ("origin", "https://app.example"),
                ("access-control-request-method", "POST"),
            ],
        );
        let Outcome::Respond(mut response, latch) = run([Some(&policy), None], &req) else {
            panic!("not answered")
        };
        assert_eq!(response.status(), StatusCode::OK);
        // Then the filter's response side runs on its own answer, as Envoy's does.
        latch.unwrap().apply(response.headers_mut());
        assert_eq!(
            pairs(response.headers()),
            [
                ("access-control-allow-origin", "https://app.example"),
                ("access-control-allow-credentials", "true"),
                ("access-control-allow-methods", "GET,POST"),
                ("access-control-allow-headers", "content-type"),
                ("access-control-max-age", "600"),
                ("access-control-expose-headers", "x-trace"),
            ]
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
        );
    }

    #[test]
    fn preflights_from_other_origins_are_forwarded_unless_configured_not_to_be() {
        let policy = route_policy();
        let req = request(
            Method::OPTIONS,
            &[
                ("origin", "https://evil.example"),
                ("access-control-request-method", "POST"),
            ],
        );
        assert!(matches!(
            run([Some(&policy), None], &req),
            Outcome::Continue(None)
        ));
        let mut strict = route_policy();
        strict.forward_not_matching_preflights = Some(false);
        let Outcome::Respond(response, None) = run([Some(&strict), None], &req) else {
            panic!("not answered")
        };
        // No allow-origin: the browser refuses.
        assert!(response.headers().get(ALLOW_ORIGIN).is_none());
        assert_eq!(response.headers()[ALLOW_METHODS], "GET,POST");
    }

    #[test]
    fn simple_requests_get_the_origin_back_only_when_allowed() {
        let policy = route_policy();
        let allowed = request(Method::GET, &[("origin", "https://app.example")]);
        let Outcome::Continue(Some(latch)) = run([Some(&policy), None], &allowed) else {
            panic!("no latch")
        };
        let mut headers = HeaderMap::new();
        headers.insert(ALLOW_ORIGIN, HeaderValue::from_static("*"));
        latch.apply(&mut headers);
        assert_eq!(headers[ALLOW_ORIGIN], "https://app.example");
        assert_eq!(headers[ALLOW_CREDENTIALS], "true");
        assert_eq!(headers[EXPOSE_HEADERS], "x-trace");
        assert!(headers.get(ALLOW_METHODS).is_none());

        let other = request(Method::GET, &[("origin", "https://evil.example")]);
        assert!(matches!(
            run([Some(&policy), None], &other),
            Outcome::Continue(None)
        ));
        // No origin, or an empty one: not a CORS request.
        for req in [
            request(Method::GET, &[]),
            request(Method::GET, &[("origin", "")]),
        ] {
            assert!(matches!(run([Some(&policy), None], &req), Outcome::Skip));
        }
        // An OPTIONS without Access-Control-Request-Method is an ordinary request.
        let options = request(Method::OPTIONS, &[("origin", "https://app.example")]);
        assert!(matches!(
            run([Some(&policy), None], &options),
            Outcome::Continue(Some(_))
        ));
    }

    #[test]
    fn levels_merge_field_by_field_and_the_most_specific_decides_enabled() {
        let vhost = route_policy();
        let route = policy(&cors_pb::CorsPolicy {
            allow_methods: "*".into(),
            allow_headers: "*".into(),
            allow_credentials: Some(BoolValue { value: false }),
            allow_private_network_access: Some(BoolValue { value: true }),
            ..Default::default()
        })
        .unwrap();
        let req = request(
            Method::OPTIONS,
            &[
                ("origin", "https://app.example"),
                ("access-control-request-method", "PATCH"),
                ("access-control-request-headers", "x-a"),
                ("access-control-request-headers", "x-b"),
                ("access-control-request-private-network", "true"),
            ],
        );
        let Outcome::Respond(response, _) = run([Some(&route), Some(&vhost)], &req) else {
            panic!("not answered")
        };
        let headers = response.headers();
        // Origins come from the virtual host; `*` echoes the request; the route's `false`
        // wins over the virtual host's `true`.
        assert_eq!(headers[ALLOW_ORIGIN], "https://app.example");
        assert_eq!(headers[ALLOW_METHODS], "PATCH");
        assert_eq!(headers[ALLOW_HEADERS], "x-a,x-b");
        assert!(headers.get(ALLOW_CREDENTIALS).is_none());
        assert_eq!(headers[MAX_AGE], "600");
        assert_eq!(headers[ALLOW_PRIVATE_NETWORK], "true");

        let mut off = route_policy();
        off.enabled = false;
        assert!(matches!(
            run([Some(&off), Some(&vhost)], &req),
            Outcome::Skip
        ));
        assert!(matches!(run([None, None], &req), Outcome::Skip));
        // Redirect and direct-response routes are left alone.
        assert!(matches!(
            on_request([Some(&vhost), None], false, &req.0, &req.1),
            Outcome::Skip
        ));
    }

    #[test]
    fn a_matcher_that_matches_a_star_allows_any_origin() {
        let any = policy(&cors_pb::CorsPolicy {
            allow_origin_string_match: vec![exact("*")],
            ..Default::default()
        })
        .unwrap();
        let req = request(Method::GET, &[("origin", "https://whoever.example")]);
        let Outcome::Continue(Some(latch)) = run([Some(&any), None], &req) else {
            panic!("not allowed")
        };
        let mut headers = HeaderMap::new();
        latch.apply(&mut headers);
        // The request's origin, not `*`.
        assert_eq!(headers[ALLOW_ORIGIN], "https://whoever.example");
        assert!(headers.get(ALLOW_CREDENTIALS).is_none());
    }
}
