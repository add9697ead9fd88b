//! The HTTP filter chain on the request path: after route matching, before the route's action
//! (forward, redirect or direct response, as Envoy's decoder filters run before the router),
//! and on the response in reverse.
//!
//! [`on_request`] runs the listener's filters in order, skipping those the route disables. A
//! filter may change the request head, or answer it ([`Outcome::Respond`]); later filters and
//! the route's action then do not run. Response work ([`ResponseWork`]) is collected from the
//! filters that ran and applied by [`on_response`] to whatever answers the request: the
//! upstream's response, a redirect or direct response, the router's own errors, or a filter's
//! answer.
//!
//! A listener whose only filter is the router costs nothing here: [`has_request_filters`] is
//! false and the caller skips the chain; no allocation is made either way unless a filter has
//! work for the response.

use http::{HeaderMap, Response};

use super::DataPlane;
use super::body::DownstreamBody;
use crate::config::filters::{HttpFilter, HttpFilterKind};
use crate::config::route::{Matched, RouteAction};
use crate::filter::{self, cors};

/// Whether the chain has any filter besides the router.
pub(crate) fn has_request_filters(filters: &[HttpFilter]) -> bool {
    filters.iter().any(|f| !f.is_router())
}

/// What the filters that ran want done to the response.
#[derive(Debug, Default)]
pub(crate) struct ResponseWork {
    /// CORS latches, in filter order.
    cors: Vec<cors::CorsLatch>,
}

/// How the request goes on after the filters.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// To the route's action.
    Continue,
    /// A filter answered.
    Respond(Response<DownstreamBody>),
}

/// Runs the request side of every filter up to the router.
pub(crate) async fn on_request(
    plane: &DataPlane,
    filters: &[HttpFilter],
    matched: &Matched<'_>,
    req: &mut filter::Request<'_, '_>,
    work: &mut ResponseWork,
) -> Outcome {
    for filter in filters {
        if filter.is_router() {
            break;
        }
        if matched.filter_disabled(&filter.name) {
            continue;
        }
        match &filter.kind {
            HttpFilterKind::Router => break,
            HttpFilterKind::Cors => {
                let [route, vhost] = matched.filter_configs(&filter.name);
                let policies = [
                    route.and_then(|c| c.as_cors()),
                    vhost.and_then(|c| c.as_cors()),
                ];
                let forwarding = matches!(matched.route.action, RouteAction::Forward(_));
                match cors::on_request(policies, forwarding, req.method, req.headers) {
                    cors::Outcome::Skip => {}
                    cors::Outcome::Continue(latch) => work.cors.extend(latch),
                    cors::Outcome::Respond(response, latch) => {
                        work.cors.extend(latch);
                        return Outcome::Respond(response);
                    }
                }
            }
            HttpFilterKind::JwtAuthn(config) => {
                let per_route = matched
                    .filter_config(&filter.name)
                    .and_then(|c| c.as_jwt_authn());
                if let Some(response) =
                    filter::jwt::on_request(config, per_route, &plane.upstreams, req).await
                {
                    return Outcome::Respond(response);
                }
            }
        }
    }
    Outcome::Continue
}

/// Applies the filters' response work, last filter first.
pub(crate) fn on_response(work: &ResponseWork, headers: &mut HeaderMap) {
    for latch in work.cors.iter().rev() {
        latch.apply(headers);
    }
}
