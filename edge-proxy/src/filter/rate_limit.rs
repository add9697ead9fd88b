//! Tollgate's quota filter (`tollgate.filters.http.rate_limit`), after authentication and
//! authorization, before the body transforms: counts the request against every rate-limit
//! policy of its route, in the proxy's memory or in Redis shared with the fleet
//! ([`tollgate_quota`]). Envoy nodes get the same decisions from the control plane's
//! rate-limit service (`control-plane/src/rls.rs`), over the same engine, key scheme and
//! identities, so a client has one counter whichever proxy serves it.
//!
//! For each policy the route names, the key parts are read from the request and from what
//! authentication found ([`Metadata`]): the API key (the start of its keyed hash, never the
//! key), its consumer and tier, a string claim of the verified JWT, the client address (after
//! the listener's trusted hops), a header's first value, the route's name. A part that finds
//! nothing (no key, no such claim, no header) leaves the request uncounted by that policy,
//! as Envoy drops a descriptor whose action finds nothing. The consumer's tier picks the
//! tier's limit, else the policy's default; neither: not counted.
//!
//! Policies are checked concurrently: one Redis round trip per global policy, none for local
//! ones. A request is refused if any non-shadow policy refuses it: 429 when over the limit,
//! 503 when a fail-closed policy cannot reach its counters, with `Retry-After` and a JSON
//! body. Allowed or refused, the response carries `RateLimit-Policy` and `RateLimit` for the
//! non-shadow policies (and `X-RateLimit-*` for those asking for them), as the rate-limit
//! service tells Envoy to add them.

use http::header::{HeaderName, HeaderValue};
use http::{Response, StatusCode};
use tollgate_quota::identity::IdentityBuilder;
use tollgate_quota::{Decision, PolicyOutcome, Quota, RateLimitHeaders};

use super::Metadata;
use crate::config::filters::rate_limit::{
    KeySource, RateLimit, RateLimitPerRoute, RateLimitPolicy,
};
use crate::config::format::{DynamicMetadata as _, JWT_AUTHN_NAMESPACE};
use crate::proxy::body::DownstreamBody;

/// Where the control plane has every JWT provider put the verified payload
/// (`payload_in_metadata`), and where a policy's claim parts read it, on Envoy as here.
pub const JWT_PAYLOAD_KEY: &str = "jwt_payload";

/// The engines the filter counts with: process-wide, shared by every snapshot.
#[derive(Debug, Clone)]
pub struct Quotas {
    /// For `global` policies: Redis with `--redis`, else this process.
    pub global: Quota,
    /// For `local` policies: this process.
    pub local: Quota,
}

impl Quotas {
    /// Engines counting everything in this process (no Redis).
    pub fn in_process() -> Self {
        let local = Quota::local(Default::default());
        Self {
            global: local.clone(),
            local,
        }
    }
}

/// What the filter leaves for the response: the rate-limit header fields.
pub(crate) type ResponseHeaders = Vec<(HeaderName, HeaderValue)>;

/// One policy's check.
struct Check<'c> {
    config: &'c RateLimitPolicy,
    policy: &'c tollgate_quota::Policy,
    decision: Decision,
}

impl Check<'_> {
    fn outcome(&self) -> PolicyOutcome {
        PolicyOutcome::of(self.policy, &self.decision)
    }
}

/// The request side. `Ok`: continue, adding these headers to the response; `Err`: the answer
/// (its headers already set). `route` is the matched route's name. The request's decision is
/// left in `metadata` for the access log.
pub(crate) async fn on_request(
    config: &RateLimit,
    per_route: Option<&RateLimitPerRoute>,
    quotas: &Quotas,
    route: &str,
    req: &super::Request<'_, '_>,
    metadata: &mut Metadata<'_>,
) -> Result<ResponseHeaders, Response<DownstreamBody>> {
    let Some(per_route) = per_route else {
        return Ok(Vec::new());
    };
    let known: &Metadata<'_> = metadata;
    let mut pending = per_route.policies.iter().filter_map(|name| {
        let config = config.policies.get(name)?;
        let tier = known.consumer.and_then(|c| c.tier.as_deref());
        let policy = config.for_tier(tier)?;
        let identity = identity(config, route, req, known)?;
        let engine = if config.global {
            &quotas.global
        } else {
            &quotas.local
        };
        Some(async move {
            let decision = engine.check(policy, &identity).await;
            Check {
                config,
                policy,
                decision,
            }
        })
    });
    // Most routes have one policy: it is awaited as it is, without join_all's bookkeeping.
    let checks: Vec<Check<'_>> = if per_route.policies.len() == 1 {
        match pending.next() {
            Some(check) => vec![check.await],
            None => Vec::new(),
        }
    } else {
        futures::future::join_all(pending).await
    };
    if checks.is_empty() {
        return Ok(Vec::new());
    }
    // Over the limit outranks unreachable counters, and both outrank what lets a request
    // through: the request's outcome says whether and why it is refused.
    let outcome = PolicyOutcome::of_request(checks.iter().map(Check::outcome));
    // Another quota filter on the listener may have decided already; the worse one stays.
    metadata.quota = PolicyOutcome::of_request(metadata.quota.into_iter().chain(outcome));
    let headers = response_headers(&checks);
    if !outcome.is_some_and(PolicyOutcome::refuses) {
        return Ok(headers);
    }
    let mut response = if outcome == Some(PolicyOutcome::Limited) {
        super::json_error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "rate limit exceeded",
        )
    } else {
        super::json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "rate_limit_unavailable",
            "rate limit cannot be checked; retry later",
        )
    };
    response.headers_mut().extend(headers);
    Err(response)
}

/// The identity `config` counts this request under; `None` when a key part finds nothing.
fn identity(
    config: &RateLimitPolicy,
    route: &str,
    req: &super::Request<'_, '_>,
    metadata: &Metadata<'_>,
) -> Option<String> {
    // Built for every request a policy counts: straight into one string.
    let mut identity = IdentityBuilder::with_capacity(64);
    for part in &config.key {
        let label = part.label.as_str();
        match &part.source {
            KeySource::ApiKey => identity.part_display(label, Hex(&metadata.api_key?.0)),
            KeySource::Consumer => identity.part(label, &metadata.consumer?.name),
            KeySource::ConsumerTier => identity.part(label, metadata.consumer?.tier.as_deref()?),
            KeySource::Claim(path) => {
                let path: Vec<String> = std::iter::once(JWT_PAYLOAD_KEY.to_owned())
                    .chain(path.iter().cloned())
                    .collect();
                // Envoy's metadata action takes strings only, and no empty one.
                match metadata.get(JWT_AUTHN_NAMESPACE, &path)?.as_ref() {
                    serde_json::Value::String(s) if !s.is_empty() => identity.part(label, s),
                    _ => return None,
                }
            }
            KeySource::ClientIp => {
                identity.part_ip(label, req.addresses.client(req.headers));
            }
            KeySource::Header(name) => {
                let value = req.headers.get(name)?;
                identity.part(label, &String::from_utf8_lossy(value.as_bytes()));
            }
            KeySource::Route => identity.part(label, route),
        }
    }
    Some(identity.finish())
}

/// Bytes as lowercase hex, written where they are needed.
struct Hex<'b>(&'b [u8]);

impl std::fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

/// The draft's fields for every non-shadow policy, the legacy ones for those asking for them,
/// as the control plane's rate-limit service has Envoy send them.
fn response_headers(checks: &[Check<'_>]) -> ResponseHeaders {
    let reported: Vec<(&tollgate_quota::Policy, &Decision, bool)> = checks
        .iter()
        .map(|c| (c.policy, &c.decision, c.config.legacy_headers))
        .collect();
    RateLimitHeaders::for_response(&reported)
        .into_fields()
        .filter_map(|(name, value)| {
            // Both are ASCII the engine wrote: names are its constants, values numbers and
            // quoted policy names (which the control plane keeps to name characters). The
            // value's buffer becomes the header's, uncopied.
            Some((
                HeaderName::from_static(name),
                HeaderValue::from_maybe_shared(bytes::Bytes::from(value)).ok()?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests;
