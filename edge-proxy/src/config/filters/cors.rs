//! The CORS filter's per-route policy (`envoy.extensions.filters.http.cors.v3.CorsPolicy`),
//! validated; [`crate::filter::cors`] applies it to requests after route matching.

use http::HeaderValue;
use tollgate_proto::envoy::config::core::v3 as core_pb;
use tollgate_proto::envoy::extensions::filters::http::cors::v3 as cors_pb;
use tollgate_proto::envoy::r#type::v3 as type_pb;

use crate::config::route::{StringMatch, string_matcher};
use crate::config::{Reason, Rejection, Within as _};

/// One level's CORS policy. Unset fields fall back to the next less specific level, field by
/// field, as Envoy's CORS filter reads them; `None` below means unset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsPolicy {
    /// `allow_origin_string_match`: an origin is allowed when any matches it (or matches `*`).
    pub allow_origins: Vec<StringMatch>,
    /// `access-control-allow-methods` for preflights; `*` echoes the requested method.
    pub allow_methods: Option<HeaderValue>,
    /// `access-control-allow-headers` for preflights; `*` echoes the requested headers.
    pub allow_headers: Option<HeaderValue>,
    /// `access-control-expose-headers`.
    pub expose_headers: Option<HeaderValue>,
    /// `access-control-max-age` for preflights.
    pub max_age: Option<HeaderValue>,
    /// `allow_credentials`.
    pub allow_credentials: Option<bool>,
    /// `allow_private_network_access`.
    pub allow_private_network_access: Option<bool>,
    /// `forward_not_matching_preflights` (Envoy's default when no level sets it: true).
    pub forward_not_matching_preflights: Option<bool>,
    /// `filter_enabled`: only the most specific policy's counts. Unset means enabled.
    pub enabled: bool,
}

/// Reads a `CorsPolicy`.
pub(crate) fn policy(proto: &cors_pb::CorsPolicy) -> Result<CorsPolicy, Rejection> {
    let cors_pb::CorsPolicy {
        allow_origin_string_match,
        allow_methods,
        allow_headers,
        expose_headers,
        max_age,
        allow_credentials,
        filter_enabled,
        // When the filter is disabled, shadow mode only counts origins in stats; whether it is
        // on changes no request or response.
        shadow_enabled: _,
        allow_private_network_access,
        forward_not_matching_preflights,
    } = proto;
    let allow_origins = allow_origin_string_match
        .iter()
        .enumerate()
        .map(|(i, m)| string_matcher(m).at("allow_origin_string_match", i))
        .collect::<Result<_, _>>()?;
    let enabled = match filter_enabled {
        None => true,
        Some(fraction) => all_or_nothing(fraction).within("filter_enabled")?,
    };
    Ok(CorsPolicy {
        allow_origins,
        allow_methods: header_value(allow_methods, "allow_methods")?,
        allow_headers: header_value(allow_headers, "allow_headers")?,
        expose_headers: header_value(expose_headers, "expose_headers")?,
        max_age: header_value(max_age, "max_age")?,
        allow_credentials: allow_credentials.map(|v| v.value),
        allow_private_network_access: allow_private_network_access.map(|v| v.value),
        forward_not_matching_preflights: forward_not_matching_preflights.map(|v| v.value),
        enabled,
    })
}

/// An empty string is unset (Envoy skips empty values when merging levels).
fn header_value(value: &str, field: &'static str) -> Result<Option<HeaderValue>, Rejection> {
    if value.is_empty() {
        return Ok(None);
    }
    HeaderValue::from_str(value).map(Some).map_err(|_| {
        Rejection::new(
            field,
            Reason::Invalid(format!("{value:?} is not a valid header value")),
        )
    })
}

/// A runtime fraction that is 0 % or 100 %: whether it is 100 %. Envoy samples anything in
/// between per request; this proxy refuses it rather than pick. `runtime_key` is accepted:
/// without a runtime layer (Tollgate configures none) Envoy uses the default value.
fn all_or_nothing(proto: &core_pb::RuntimeFractionalPercent) -> Result<bool, Rejection> {
    use type_pb::fractional_percent::DenominatorType;
    let core_pb::RuntimeFractionalPercent {
        default_value,
        runtime_key: _,
    } = proto;
    let Some(type_pb::FractionalPercent {
        numerator,
        denominator,
    }) = default_value
    else {
        return Err(Rejection::new("default_value", Reason::Missing));
    };
    let whole = match DenominatorType::try_from(*denominator) {
        Ok(DenominatorType::Hundred) => 100,
        Ok(DenominatorType::TenThousand) => 10_000,
        Ok(DenominatorType::Million) => 1_000_000,
        Err(_) => {
            return Err(Rejection::new(
                "denominator",
                Reason::Invalid(format!("unknown denominator {denominator}")),
            )
            .within("default_value"));
        }
    };
    match *numerator {
        0 => Ok(false),
        n if n >= whole => Ok(true),
        n => Err(Rejection::new(
            "numerator",
            Reason::UnsupportedValue(format!(
                "{n}/{whole}: only 0 % or 100 % (sampling requests is not implemented)"
            )),
        )
        .within("default_value")),
    }
}
