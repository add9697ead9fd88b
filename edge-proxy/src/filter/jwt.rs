//! Envoy's JWT authentication filter (`envoy.filters.http.jwt_authn`), after route matching.
//!
//! Per request (`on_request`): the `claim_to_headers` headers of every provider are removed
//! (so clients cannot forge them); a CORS preflight passes when `bypass_cors_preflight`; the
//! requirement is the route's (`PerRouteConfig`, most specific level) or else the first
//! matching rule's; then it is verified:
//! - a provider requirement extracts that provider's tokens (headers, query parameters,
//!   cookies; `Authorization: Bearer` and `access_token` by default) and needs every one valid:
//!   issuer, `nbf`/`exp` with clock skew, audiences, signature;
//! - `requires_any` / `requires_all` combine children in order, stopping as Envoy does;
//! - `allow_missing` and `allow_missing_or_failed` verify tokens of any provider, by issuer.
//!
//! A valid token adds `forward_payload_header` and `claim_to_headers`, and is removed from the
//! request unless the provider has `forward` (a cookie token is never removed, as in Envoy).
//! When the requirement is met, the payloads (with `normalize_payload_in_metadata`'s claims
//! split into lists) and headers of the valid tokens are kept under their providers'
//! `payload_in_metadata` and `header_in_metadata` keys in [`Metadata`], for RBAC.
//! A failure answers 401 (403 for audiences) with `www-authenticate: Bearer realm="<url>"`
//! and, unless the token was missing, `, error="invalid_token"`; the body is Tollgate's JSON
//! error with Envoy's message (`json_error` in [`super`]).
//!
//! Keys: [`jwks`] (parsing, signatures), [`remote`] (fetching, caching); token shape: [`token`];
//! tokens already verified: [`verified`].

pub mod jwks;
pub mod remote;
pub mod token;
pub mod verified;

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use serde_json::Value;

use super::Metadata;
use crate::config::filters::jwt_authn::{
    Audiences, Extractor, IssuerSet, Jwks, JwtAuthn, JwtProvider, PerRoute, Requirement,
};
use crate::proxy::body::DownstreamBody;
use crate::upstream::Upstreams;
use jwks::{JwkSet, VerifyError};
use token::Jwt;
use verified::VerifiedJwt;

/// The outcome of verifying, with jwt_verify_lib's names; [`Status::message`] is Envoy's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)] // each variant is documented by its message
pub enum Status {
    Ok,
    JwtMissed,
    JwtNotYetValid,
    JwtExpired,
    JwtBadFormat,
    JwtHeaderParseErrorBadBase64,
    JwtHeaderParseErrorBadJson,
    JwtHeaderBadAlg,
    JwtHeaderNotImplementedAlg,
    JwtHeaderBadKid,
    JwtPayloadParseErrorBadBase64,
    JwtEd25519SignatureWrongLength,
    JwtPayloadParseErrorBadJson,
    JwtPayloadParseErrorIssNotString,
    JwtPayloadParseErrorSubNotString,
    JwtPayloadParseErrorIatNotInteger,
    JwtPayloadParseErrorIatOutOfRange,
    JwtPayloadParseErrorNbfNotInteger,
    JwtPayloadParseErrorNbfOutOfRange,
    JwtPayloadParseErrorExpNotInteger,
    JwtPayloadParseErrorExpOutOfRange,
    JwtPayloadParseErrorJtiNotString,
    JwtPayloadParseErrorAudNotString,
    JwtSignatureParseErrorBadBase64,
    JwtUnknownIssuer,
    JwtAudienceNotAllowed,
    JwtVerificationFail,
    JwksKidAlgMismatch,
    JwksFetchFail,
}

impl Status {
    /// A short reason for metrics: a handful of values, whatever the detail.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::JwtMissed => "missing",
            Self::JwtExpired => "expired",
            Self::JwtNotYetValid => "not_yet_valid",
            Self::JwtUnknownIssuer => "issuer",
            Self::JwtAudienceNotAllowed => "audience",
            Self::JwtVerificationFail => "signature",
            Self::JwksKidAlgMismatch => "unknown_key",
            Self::JwksFetchFail => "jwks_unavailable",
            _ => "malformed",
        }
    }

    /// Envoy's text for the status (jwt_verify_lib's `getStatusString`).
    pub fn message(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::JwtMissed => "Jwt is missing",
            Self::JwtNotYetValid => "Jwt not yet valid",
            Self::JwtExpired => "Jwt is expired",
            Self::JwtBadFormat => {
                "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
            }
            Self::JwtHeaderParseErrorBadBase64 => "Jwt header is an invalid Base64url encoded",
            Self::JwtHeaderParseErrorBadJson => "Jwt header is an invalid JSON",
            Self::JwtHeaderBadAlg => "Jwt header [alg] field is required and must be a string",
            Self::JwtHeaderNotImplementedAlg => "Jwt header [alg] is not supported",
            Self::JwtHeaderBadKid => "Jwt header [kid] field is not a string",
            Self::JwtPayloadParseErrorBadBase64 => "Jwt payload is an invalid Base64url encoded",
            Self::JwtEd25519SignatureWrongLength => "Jwt ED25519 signature is wrong length",
            Self::JwtPayloadParseErrorBadJson => "Jwt payload is an invalid JSON",
            Self::JwtPayloadParseErrorIssNotString => "Jwt payload [iss] field is not a string",
            Self::JwtPayloadParseErrorSubNotString => "Jwt payload [sub] field is not a string",
            Self::JwtPayloadParseErrorIatNotInteger => "Jwt payload [iat] field is not an integer",
            Self::JwtPayloadParseErrorIatOutOfRange => {
                "Jwt payload [iat] field is not a positive 64 bit integer"
            }
            Self::JwtPayloadParseErrorNbfNotInteger => "Jwt payload [nbf] field is not an integer",
            Self::JwtPayloadParseErrorNbfOutOfRange => {
                "Jwt payload [nbf] field is not a positive 64 bit integer"
            }
            Self::JwtPayloadParseErrorExpNotInteger => "Jwt payload [exp] field is not an integer",
            Self::JwtPayloadParseErrorExpOutOfRange => {
                "Jwt payload [exp] field is not a positive 64 bit integer"
            }
            Self::JwtPayloadParseErrorJtiNotString => "Jwt payload [jti] field is not a string",
            Self::JwtPayloadParseErrorAudNotString => {
                "Jwt payload [aud] field is not a string or string list"
            }
            Self::JwtSignatureParseErrorBadBase64 => {
                "Jwt signature is an invalid Base64url encoded"
            }
            Self::JwtUnknownIssuer => "Jwt issuer is not configured",
            Self::JwtAudienceNotAllowed => "Audiences in Jwt are not allowed",
            Self::JwtVerificationFail => "Jwt verification fails",
            Self::JwksKidAlgMismatch => "Jwks doesn't have key to match kid or alg from Jwt",
            Self::JwksFetchFail => "Jwks remote fetch is failed",
        }
    }
}

/// Envoy caps the path in the `realm` of `www-authenticate` at this many bytes.
const REALM_MAX_PATH: usize = 256;

/// The request side of the filter. `None`: continue; `Some`: the answer, 401 or 403.
pub(crate) async fn on_request<'c>(
    config: &'c JwtAuthn,
    per_route: Option<&PerRoute>,
    upstreams: &'c Upstreams,
    req: &mut super::Request<'_, '_>,
    metadata: &mut Metadata<'c>,
) -> Option<Response<DownstreamBody>> {
    for name in &config.claim_headers {
        req.headers.remove(name);
    }
    if config.bypass_cors_preflight && is_cors_preflight(req) {
        return None;
    }
    let requirement = match per_route {
        Some(PerRoute::Disabled) => return None,
        Some(PerRoute::Requirement(name)) => match config.requirement_map.get(name) {
            Some(requirement) => requirement,
            None => {
                let message = format!(
                    "Failed JWT authentication: Wrong requirement_name: {name}. It should be one \
                     of [{}]",
                    config.requirement_names
                );
                let response = if config.strip_failure_response {
                    status_only(StatusCode::FORBIDDEN)
                } else {
                    super::json_error(StatusCode::FORBIDDEN, "forbidden", &message)
                };
                return Some(response);
            }
        },
        None => {
            let head = req.head();
            let rule = config.rules.iter().find(|r| r.matcher.matches(&head))?;
            rule.requirement.as_ref()?
        }
    };
    // Built before verifying: a verified token may be removed from the path.
    let realm = realm(req);
    let mut cx = Verification {
        config,
        upstreams,
        now: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        extracted: Vec::new(),
    };
    let status = cx.requirement(requirement, req).await;
    if status == Status::Ok {
        metadata.jwt.append(&mut cx.extracted);
        return None;
    }
    Some(failure(status, &realm, config.strip_failure_response))
}

fn is_cors_preflight(req: &super::Request<'_, '_>) -> bool {
    let present = |name: HeaderName| req.headers.get(name).is_some_and(|v| !v.is_empty());
    *req.method == Method::OPTIONS
        && present(header::ORIGIN)
        && present(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// `<scheme>://<host><path>`, as Envoy's `buildOriginalUri` with a 256-byte path.
fn realm(req: &super::Request<'_, '_>) -> String {
    let path: &str = req.path_and_query;
    let mut end = path.len().min(REALM_MAX_PATH);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}://{}{}", req.scheme, req.authority, &path[..end])
}

fn failure(status: Status, realm: &str, strip: bool) -> Response<DownstreamBody> {
    let mut response = failure_response(status, realm, strip);
    super::Rejection {
        filter: "jwt_authn",
        reason: status.reason(),
    }
    .attach(&mut response);
    response
}

fn failure_response(status: Status, realm: &str, strip: bool) -> Response<DownstreamBody> {
    let code = if status == Status::JwtAudienceNotAllowed {
        StatusCode::FORBIDDEN
    } else {
        StatusCode::UNAUTHORIZED
    };
    if strip {
        return status_only(code);
    }
    let slug = if code == StatusCode::FORBIDDEN {
        "forbidden"
    } else {
        "unauthorized"
    };
    let mut response = super::json_error(code, slug, status.message());
    let mut challenge = format!("Bearer realm=\"{realm}\"");
    if status != Status::JwtMissed {
        challenge.push_str(", error=\"invalid_token\"");
    }
    if let Ok(value) = HeaderValue::try_from(challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

fn status_only(code: StatusCode) -> Response<DownstreamBody> {
    let mut response = Response::new(crate::proxy::body::full(""));
    *response.status_mut() = code;
    response
}

/// Where a token was found, to remove it after verification.
#[derive(Debug, Clone)]
enum Location {
    Header(HeaderName),
    Param(String),
    Cookie,
}

/// A token and where it came from.
#[derive(Debug)]
struct Found<'e> {
    token: String,
    location: Location,
    issuers: &'e IssuerSet,
}

/// Tokens at the extractor's locations, in Envoy's order (verification pops from the back).
fn extract<'e>(extractor: &'e Extractor, req: &super::Request<'_, '_>) -> Vec<Found<'e>> {
    let mut found = Vec::new();
    for location in &extractor.headers {
        for value in req.headers.get_all(&location.name) {
            // Header values are nearly always ASCII: the check is cheaper than the lossy copy.
            let value = match std::str::from_utf8(value.as_bytes()) {
                Ok(text) => Cow::Borrowed(text),
                Err(_) => String::from_utf8_lossy(value.as_bytes()),
            };
            let token = if location.prefix.is_empty() {
                value.as_ref()
            } else {
                // Envoy looks for the prefix anywhere in the value, case-sensitively.
                match value.find(&location.prefix) {
                    Some(at) => jwt_chars_after(&value, at + location.prefix.len()),
                    None => continue,
                }
            };
            found.push(Found {
                token: token.to_owned(),
                location: Location::Header(location.name.clone()),
                issuers: &location.issuers,
            });
        }
    }
    if !extractor.params.is_empty()
        && let Some(query) = req.path_and_query.split_once('?').map(|(_, q)| q)
    {
        for (name, issuers) in &extractor.params {
            if let Some(value) = first_param(query, name) {
                found.push(Found {
                    token: value,
                    location: Location::Param(name.clone()),
                    issuers,
                });
            }
        }
    }
    if !extractor.cookies.is_empty() {
        for (name, issuers) in &extractor.cookies {
            if let Some(value) = cookie(req.headers, name) {
                found.push(Found {
                    token: value,
                    location: Location::Cookie,
                    issuers,
                });
            }
        }
    }
    found
}

fn is_jwt_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
}

/// After a `value_prefix`: non-JWT characters are skipped, then the run of JWT characters is
/// the token; with none, the whole value (Envoy's `extractJWT`). JWT characters are ASCII, so
/// bytes are scanned: every boundary found is a character boundary.
fn jwt_chars_after(value: &str, after: usize) -> &str {
    let rest = &value[after..];
    let Some(start) = rest.bytes().position(is_jwt_byte) else {
        return value;
    };
    let rest = &rest[start..];
    let end = rest
        .bytes()
        .position(|b| !is_jwt_byte(b))
        .unwrap_or(rest.len());
    &rest[..end]
}

/// The first value of query parameter `name`, percent-decoded.
fn first_param(query: &str, name: &str) -> Option<String> {
    let query = query.split('#').next().unwrap_or(query);
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key) == name).then(|| percent_decode(value))
    })
}

fn percent_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_owned();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes every `name` parameter from the query as Envoy does: the query is decoded, the
/// parameter dropped, and the rest written back sorted by name, values decoded (`a=1%2F`
/// becomes `a=1/`), a bare `flag` as `flag=`. Unlike Envoy, bytes that cannot stand in a
/// request target (space, controls, non-ASCII) are written percent-encoded, so the request
/// stays valid.
fn remove_param(path_and_query: &str, name: &str) -> String {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.to_owned();
    };
    let mut params: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        params
            .entry(percent_decode(key))
            .or_default()
            .push(percent_decode(value));
    }
    params.remove(name);
    let mut out = path.to_owned();
    let mut separator = '?';
    for (key, values) in &params {
        for value in values {
            out.push(separator);
            separator = '&';
            push_target_safe(&mut out, key);
            out.push('=');
            push_target_safe(&mut out, value);
        }
    }
    out
}

fn push_target_safe(out: &mut String, text: &str) {
    for byte in text.bytes() {
        if byte.is_ascii_graphic() {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
}

/// The first cookie called `name`, quotes removed, as Envoy's `parseCookies`.
fn cookie(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (key, value) = pair.trim_start().split_once('=')?;
            (key == name).then(|| {
                let value = value
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(value);
                value.to_owned()
            })
        })
}

/// One request's verification state.
struct Verification<'c> {
    config: &'c JwtAuthn,
    upstreams: &'c Upstreams,
    now: u64,
    /// What valid tokens leave in the metadata, kept if the requirement is met.
    extracted: Vec<(&'c str, Arc<Value>)>,
}

type StatusFuture<'a> = Pin<Box<dyn Future<Output = Status> + Send + 'a>>;

impl<'c> Verification<'c> {
    /// Verifies a requirement. Groups are boxed (they recurse); single providers, the common
    /// case, are not.
    async fn requirement(
        &mut self,
        requirement: &'c Requirement,
        req: &mut super::Request<'_, '_>,
    ) -> Status {
        match requirement {
            Requirement::Provider {
                provider,
                audiences,
            } => self.provider(*provider, audiences.as_ref(), req).await,
            Requirement::AllowMissing => self.any_provider(false, req).await,
            Requirement::AllowMissingOrFailed => self.any_provider(true, req).await,
            Requirement::AllowAll => Status::Ok,
            Requirement::Any { .. } | Requirement::All(_) => self.group(requirement, req).await,
        }
    }

    fn group<'a>(
        &'a mut self,
        requirement: &'c Requirement,
        req: &'a mut super::Request<'_, '_>,
    ) -> StatusFuture<'a>
    where
        'c: 'a,
    {
        Box::pin(async move {
            match requirement {
                Requirement::All(children) => {
                    for child in children {
                        let status = self.requirement(child, req).await;
                        if status != Status::Ok {
                            return status;
                        }
                    }
                    Status::Ok
                }
                Requirement::Any {
                    children,
                    allow_missing,
                    allow_missing_or_failed,
                } => {
                    // Envoy's aggregation: a "real" error beats an unknown issuer, which beats
                    // a missing token; among real errors the last wins.
                    let mut result = Status::JwtMissed;
                    for child in children {
                        let status = self.requirement(child, req).await;
                        if status == Status::Ok {
                            return Status::Ok;
                        }
                        let weak = matches!(status, Status::JwtMissed | Status::JwtUnknownIssuer);
                        if !weak || result == Status::JwtMissed {
                            result = status;
                        }
                    }
                    if *allow_missing_or_failed || (*allow_missing && result == Status::JwtMissed) {
                        Status::Ok
                    } else {
                        result
                    }
                }
                other => self.requirement(other, req).await,
            }
        })
    }

    /// A provider's requirement: every token at its locations must be valid.
    async fn provider(
        &mut self,
        index: usize,
        audiences: Option<&'c Audiences>,
        req: &mut super::Request<'_, '_>,
    ) -> Status {
        let provider = &self.config.providers[index];
        for name in &provider.extractor.sanitize {
            req.headers.remove(name);
        }
        let mut tokens = extract(&provider.extractor, req);
        if tokens.is_empty() {
            return Status::JwtMissed;
        }
        while let Some(found) = tokens.pop() {
            let status = self.token(&found, Some(provider), audiences, req).await;
            if status != Status::Ok {
                return status;
            }
        }
        Status::Ok
    }

    /// `allow_missing` (`allow_failed` false) or `allow_missing_or_failed`: tokens of any
    /// provider, each verified by the provider of its issuer. As Envoy, every token is tried
    /// and the last one's result counts.
    async fn any_provider(
        &mut self,
        allow_failed: bool,
        req: &mut super::Request<'_, '_>,
    ) -> Status {
        let extractor = &self.config.all_providers;
        for name in &extractor.sanitize {
            req.headers.remove(name);
        }
        let mut tokens = extract(extractor, req);
        let mut last = Status::JwtMissed;
        while let Some(found) = tokens.pop() {
            last = self.token(&found, None, None, req).await;
        }
        if allow_failed || last == Status::JwtMissed {
            Status::Ok
        } else {
            last
        }
    }

    /// Verifies one token; on success applies the provider's header work. A token the
    /// provider verified before comes from its cache, parsed, and skips the signature check.
    async fn token(
        &mut self,
        found: &Found<'_>,
        provider: Option<&'c Arc<JwtProvider>>,
        audiences: Option<&'c Audiences>,
        req: &mut super::Request<'_, '_>,
    ) -> Status {
        let (provider, verified) = match self.verified(found, provider, audiences).await {
            Ok(verified) => verified,
            Err(status) => return status,
        };
        good_token(provider, &verified.jwt, found, req);
        if let Some(key) = &provider.header_in_metadata {
            self.extracted
                .push((key, Arc::clone(&verified.header_metadata)));
        }
        if let Some(key) = &provider.payload_in_metadata {
            self.extracted
                .push((key, Arc::clone(&verified.payload_metadata)));
        }
        Status::Ok
    }

    /// The token as its provider verified it: from the provider's cache, or parsed and checked
    /// now (and then cached). Either way [`Self::claims_allowed`] runs for this request.
    async fn verified(
        &self,
        found: &Found<'_>,
        provider: Option<&'c Arc<JwtProvider>>,
        audiences: Option<&'c Audiences>,
    ) -> Result<(&'c Arc<JwtProvider>, Arc<VerifiedJwt>), Status> {
        if let Some(verified) = provider.and_then(|p| p.verified.get(&found.token, self.now)) {
            let provider = self.claims_allowed(&verified.jwt, found, provider, audiences)?;
            return Ok((provider, verified));
        }
        let jwt = Jwt::parse(&found.token)?;
        let provider = self.claims_allowed(&jwt, found, provider, audiences)?;
        // Without a provider named up front, the issuer chose it; it may know the token.
        if let Some(verified) = provider.verified.get(&found.token, self.now) {
            return Ok((provider, verified));
        }
        let status = match &provider.jwks {
            Jwks::Local(set) => verify_error(set.verify(&jwt)),
            Jwks::Remote(remote) => self.verify_remote(remote, &jwt).await,
        };
        if status != Status::Ok {
            return Err(status);
        }
        let verified = Arc::new(VerifiedJwt::new(jwt, &provider.space_delimited_claims));
        provider
            .verified
            .insert(&found.token, Arc::clone(&verified), self.now);
        Ok((provider, verified))
    }

    /// The checks every request makes, cached token or not: the issuer is one the token's
    /// location accepts and has a provider (when none was named), the token is within its
    /// validity period, and its audiences are allowed. Gives the provider that verifies it.
    fn claims_allowed(
        &self,
        jwt: &Jwt,
        found: &Found<'_>,
        provider: Option<&'c Arc<JwtProvider>>,
        audiences: Option<&'c Audiences>,
    ) -> Result<&'c Arc<JwtProvider>, Status> {
        if !found.issuers.allows(&jwt.iss) {
            return Err(Status::JwtUnknownIssuer);
        }
        let provider = provider
            .or_else(|| self.by_issuer(&jwt.iss))
            .ok_or(Status::JwtUnknownIssuer)?;
        jwt.check_time(self.now, provider.clock_skew_seconds)?;
        if !audiences
            .unwrap_or(&provider.audiences)
            .allows(&jwt.audiences)
        {
            return Err(Status::JwtAudienceNotAllowed);
        }
        Ok(provider)
    }

    async fn verify_remote(
        &self,
        remote: &crate::config::filters::jwt_authn::RemoteJwks,
        jwt: &Jwt,
    ) -> Status {
        let cache = &remote.cache;
        let seen = cache.completed();
        let keys: Arc<JwkSet> = match cache.fresh() {
            Some(keys) => keys,
            None => match cache.refresh(remote, self.upstreams, seen).await {
                Ok(keys) => keys,
                Err(_) => return Status::JwksFetchFail,
            },
        };
        match keys.verify(jwt) {
            Err(VerifyError::KidAlgMismatch) if cache.may_refetch_for_kid() => {
                // The issuer may have rotated its keys: fetch once more, then decide.
                match cache.refresh(remote, self.upstreams, seen).await {
                    Ok(keys) => verify_error(keys.verify(jwt)),
                    Err(_) => Status::JwksKidAlgMismatch,
                }
            }
            result => verify_error(result),
        }
    }

    /// The provider for `iss`: the first (by name) with that issuer, else the first without
    /// one, as Envoy's `findByIssuer`.
    fn by_issuer(&self, iss: &str) -> Option<&'c Arc<JwtProvider>> {
        let providers = &self.config.providers;
        providers.iter().find(|p| p.issuer == iss).or_else(|| {
            (!iss.is_empty())
                .then(|| providers.iter().find(|p| p.issuer.is_empty()))
                .flatten()
        })
    }
}

fn verify_error(result: Result<(), VerifyError>) -> Status {
    match result {
        Ok(()) => Status::Ok,
        Err(VerifyError::KidAlgMismatch) => Status::JwksKidAlgMismatch,
        Err(VerifyError::VerificationFail) => Status::JwtVerificationFail,
        Err(VerifyError::Ed25519WrongLength) => Status::JwtEd25519SignatureWrongLength,
    }
}

/// What a valid token does to the request: payload and claim headers added (appended, as
/// Envoy's `addCopy`), the token removed unless `forward`.
fn good_token(
    provider: &JwtProvider,
    jwt: &Jwt,
    found: &Found<'_>,
    req: &mut super::Request<'_, '_>,
) {
    if let Some(name) = &provider.forward_payload_header {
        let mut payload = Cow::Borrowed(jwt.payload_b64());
        if provider.pad_forward_payload_header {
            let padding = (4 - payload.len() % 4) % 4;
            payload = Cow::Owned(format!("{payload}{}", "=".repeat(padding)));
        }
        if let Ok(value) = HeaderValue::try_from(payload.as_ref()) {
            req.headers.append(name.clone(), value);
        }
    }
    for claim in &provider.claim_to_headers {
        if let Some(value) = claim_value(&jwt.payload, &claim.path)
            && let Ok(value) = HeaderValue::try_from(value)
        {
            req.headers.append(claim.header.clone(), value);
        }
    }
    if !provider.forward {
        match &found.location {
            Location::Header(name) => {
                req.headers.remove(name);
            }
            Location::Param(name) => {
                let rewritten = remove_param(req.path_and_query, name);
                *req.path_and_query = Cow::Owned(rewritten);
            }
            // Envoy leaves cookies alone.
            Location::Cookie => {}
        }
    }
}

/// `normalize_payload_in_metadata.space_delimited_claims`: each named top-level string claim
/// becomes the list of its space-separated words; one with no word stays as it is (Envoy's
/// `setPayloadMetadata`).
fn split_claims(payload: &mut serde_json::Map<String, Value>, claims: &[String]) {
    for claim in claims {
        if let Some(value) = payload.get_mut(claim)
            && let Value::String(text) = value
        {
            let words: Vec<Value> = text
                .split(' ')
                .filter(|w| !w.is_empty())
                .map(|w| Value::String(w.to_owned()))
                .collect();
            if !words.is_empty() {
                *value = Value::Array(words);
            }
        }
    }
}

/// A claim as a header value, as Envoy's `addJWTClaimToHeader`: strings as they are; numbers
/// as integers when whole and non-negative, else C's `%f`; booleans as `true`/`false`; lists
/// and objects as their JSON, base64 (standard, padded). `None`: absent, null, or empty.
fn claim_value(payload: &serde_json::Map<String, Value>, path: &[String]) -> Option<String> {
    let (last, parents) = path.split_last()?;
    let mut object = payload;
    for key in parents {
        object = object.get(key)?.as_object()?;
    }
    let value = match object.get(last)? {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match n.as_u64() {
            Some(whole) => whole.to_string(),
            None => {
                let v = n.as_f64()?;
                if v >= 0.0 && v < u64::MAX as f64 && v.fract() == 0.0 {
                    (v as u64).to_string()
                } else {
                    format!("{v:.6}")
                }
            }
        },
        nested @ (Value::Array(_) | Value::Object(_)) => {
            base64::engine::general_purpose::STANDARD.encode(nested.to_string())
        }
        Value::Null => return None,
    };
    (!value.is_empty()).then_some(value)
}

/// Starts the background JWKS refresh of every `async_fetch` provider in `snapshot`'s
/// listeners; providers already started are skipped.
pub(crate) fn start_background_fetches(
    snapshot: &crate::snapshot::Snapshot,
    plane: &crate::proxy::SharedDataPlane,
) {
    use crate::config::filters::HttpFilterKind;
    for listener in snapshot.listeners.values() {
        for chain in listener.chains().iter().chain(listener.default_chain()) {
            for filter in &chain.http.http_filters {
                let HttpFilterKind::JwtAuthn(config) = &filter.kind else {
                    continue;
                };
                for provider in &config.providers {
                    if let Jwks::Remote(remote) = &provider.jwks {
                        remote::start_background(remote, plane);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
