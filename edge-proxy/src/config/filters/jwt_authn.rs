//! The JWT authentication filter's config (`envoy.extensions.filters.http.jwt_authn.v3`),
//! validated into the shapes [`crate::filter::jwt`] runs per request: providers (issuer,
//! audiences, where tokens are found, where keys come from), requirements, and rules.
//!
//! Everything Envoy 1.40 would refuse is refused with the same reason (a requirement naming an
//! unknown provider, a rule naming an unknown requirement, a remote JWKS URI that is not a
//! URL). Fields that would change behaviour and are not implemented are NACKed, naming them
//! (`failed_status_in_metadata` among them: RBAC could read it). Only fields that tune Envoy's
//! internal caches are accepted and unused. `payload_in_metadata` (with
//! `normalize_payload_in_metadata`) and `header_in_metadata` keep the verified token's parts
//! for the RBAC filter ([`crate::filter::Metadata`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Uri};
use tollgate_proto::envoy::config::core::v3 as core_pb;
use tollgate_proto::envoy::extensions::filters::http::jwt_authn::v3 as jwt_pb;

use crate::config::route::{RequestMatcher, request_matcher};
use crate::config::{Reason, Rejection, Within as _, duration, reject_set};
use crate::filter::jwt::jwks::JwkSet;
use crate::filter::jwt::remote::JwksCache;

/// Envoy's `cache_duration` when unset.
pub const DEFAULT_JWKS_CACHE_DURATION: Duration = Duration::from_secs(600);

/// Envoy's `failed_refetch_duration` when unset.
pub const DEFAULT_FAILED_REFETCH: Duration = Duration::from_secs(1);

/// Envoy's `clock_skew_seconds` when unset (or 0).
pub const DEFAULT_CLOCK_SKEW_SECONDS: u64 = 60;

/// A validated `JwtAuthentication`.
#[derive(Debug)]
pub struct JwtAuthn {
    /// The providers, sorted by name; requirements refer to them by index.
    pub providers: Vec<Arc<JwtProvider>>,
    /// `rules`, in order: the first whose match matches applies.
    pub rules: Vec<Rule>,
    /// `requirement_map`, for `PerRouteConfig.requirement_name`.
    pub requirement_map: BTreeMap<String, Requirement>,
    /// The map's names, sorted and joined with `,`, for Envoy's "wrong requirement_name" text.
    pub requirement_names: String,
    /// `bypass_cors_preflight`.
    pub bypass_cors_preflight: bool,
    /// `strip_failure_response`: failures get only a status.
    pub strip_failure_response: bool,
    /// Every provider's `claim_to_headers` header names: removed from every request, also
    /// those that no requirement covers, so a client cannot forge them.
    pub claim_headers: Vec<HeaderName>,
    /// The token locations of all providers together, for `allow_missing` and
    /// `allow_missing_or_failed`, which accept a token of any provider.
    pub all_providers: Extractor,
    /// The config as received: only to compare two configs.
    proto: jwt_pb::JwtAuthentication,
}

impl PartialEq for JwtAuthn {
    fn eq(&self, other: &Self) -> bool {
        // The validated form holds runtime caches; two configs are the same config when the
        // protos are.
        self.proto == other.proto
    }
}

impl Eq for JwtAuthn {}

/// One `rules` entry.
#[derive(Debug)]
pub struct Rule {
    /// When it applies.
    pub matcher: RequestMatcher,
    /// What it requires; `None`: no verification.
    pub requirement: Option<Requirement>,
}

/// A `JwtRequirement`.
#[derive(Debug)]
pub enum Requirement {
    /// A valid token of this provider (index into [`JwtAuthn::providers`]); `audiences`
    /// replaces the provider's own when given (`provider_and_audiences`).
    Provider {
        /// Index into [`JwtAuthn::providers`].
        provider: usize,
        /// Audiences replacing the provider's; `None`: the provider's.
        audiences: Option<Audiences>,
    },
    /// `requires_any`: one child is enough; `allow_missing` and `allow_missing_or_failed`
    /// among the children relax the result, as in Envoy.
    Any {
        /// The other children, in order.
        children: Vec<Requirement>,
        /// An `allow_missing` child was given.
        allow_missing: bool,
        /// An `allow_missing_or_failed` child was given.
        allow_missing_or_failed: bool,
    },
    /// `requires_all`: every child.
    All(Vec<Requirement>),
    /// `allow_missing`: tokens of any provider are verified; none at all is fine.
    AllowMissing,
    /// `allow_missing_or_failed`: tokens of any provider are verified; the request passes
    /// whatever the outcome.
    AllowMissingOrFailed,
    /// A requirement with nothing set: nothing is verified.
    AllowAll,
}

/// Allowed audiences, compared as jwt_verify_lib's `CheckAudience` does: an `http://` or
/// `https://` prefix and one trailing `/` are ignored on both sides. Empty allows any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audiences(Vec<String>);

impl Audiences {
    fn new(list: &[String]) -> Self {
        Self(
            list.iter()
                .map(|a| sanitize_audience(a).to_owned())
                .collect(),
        )
    }

    /// Whether a token with these `aud` values is allowed.
    pub fn allows(&self, token: &[String]) -> bool {
        self.0.is_empty()
            || token
                .iter()
                .any(|aud| self.0.iter().any(|a| a == sanitize_audience(aud)))
    }
}

fn sanitize_audience(aud: &str) -> &str {
    let aud = aud
        .strip_prefix("http://")
        .or_else(|| aud.strip_prefix("https://"))
        .unwrap_or(aud);
    aud.strip_suffix('/').unwrap_or(aud)
}

/// A `JwtProvider`.
#[derive(Debug)]
pub struct JwtProvider {
    /// The key in `providers`.
    pub name: String,
    /// `issuer`; empty: any `iss`.
    pub issuer: String,
    /// `audiences`.
    pub audiences: Audiences,
    /// Where its tokens are found; also what is removed from the request before verifying.
    pub extractor: Extractor,
    /// `forward`: keep the token in the request.
    pub forward: bool,
    /// `forward_payload_header`.
    pub forward_payload_header: Option<HeaderName>,
    /// `pad_forward_payload_header`.
    pub pad_forward_payload_header: bool,
    /// `claim_to_headers`.
    pub claim_to_headers: Vec<ClaimToHeader>,
    /// `clock_skew_seconds`, defaulted.
    pub clock_skew_seconds: u64,
    /// `payload_in_metadata`: the key the verified payload is kept under, for RBAC.
    pub payload_in_metadata: Option<String>,
    /// `normalize_payload_in_metadata.space_delimited_claims`: top-level string claims kept
    /// as the list of their space-separated words.
    pub space_delimited_claims: Vec<String>,
    /// `header_in_metadata`: the key the verified token's header is kept under, for RBAC.
    pub header_in_metadata: Option<String>,
    /// Where the keys come from.
    pub jwks: Jwks,
    /// Tokens whose signature was verified with these keys, for a while.
    pub verified: crate::filter::jwt::verified::VerifiedTokens,
}

/// A provider's keys.
#[derive(Debug)]
pub enum Jwks {
    /// `local_jwks`, parsed at config time.
    Local(Arc<JwkSet>),
    /// `remote_jwks`, fetched and cached.
    Remote(Arc<RemoteJwks>),
}

/// `remote_jwks`: where to fetch keys, and the cache they are kept in.
#[derive(Debug)]
pub struct RemoteJwks {
    /// `http_uri.uri`: its authority and path are requested.
    pub uri: Uri,
    /// `http_uri.cluster`: the upstream cluster the request goes to.
    pub cluster: String,
    /// `http_uri.timeout`: for the whole fetch.
    pub timeout: Duration,
    /// `cache_duration`.
    pub cache_duration: Duration,
    /// `async_fetch`: keys are fetched in the background, and refreshed every
    /// `cache_duration`; on failure again after this (`failed_refetch_duration`).
    pub async_fetch: Option<Duration>,
    /// The fetched keys; runtime state, started empty.
    pub cache: JwksCache,
}

/// `claim_to_headers` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimToHeader {
    /// The header to add.
    pub header: HeaderName,
    /// The claim's path: `claim_name` split on `.`, or `claim_path`'s keys.
    pub path: Vec<String>,
}

/// Where tokens are looked for, as Envoy's extractor: headers, then query parameters, then
/// cookies; each list sorted as Envoy's maps are. Verification takes them from the last.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Extractor {
    /// Headers, by `name` then `value_prefix`.
    pub headers: Vec<HeaderLocation>,
    /// Query parameters, by name.
    pub params: Vec<(String, IssuerSet)>,
    /// Cookies, by name.
    pub cookies: Vec<(String, IssuerSet)>,
    /// Headers removed before verification: `forward_payload_header` and `claim_to_headers`.
    pub sanitize: Vec<HeaderName>,
}

/// A header a token may be in.
#[derive(Debug, PartialEq, Eq)]
pub struct HeaderLocation {
    /// The header.
    pub name: HeaderName,
    /// Text that precedes the token (`Bearer ` by default); empty: the whole value.
    pub prefix: String,
    /// Issuers of the providers that look here.
    pub issuers: IssuerSet,
}

/// The issuers whose tokens may come from one location.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct IssuerSet {
    /// A provider without `issuer` looks here: any issuer.
    pub any: bool,
    /// The issuers named.
    pub issuers: Vec<String>,
}

impl IssuerSet {
    fn add(&mut self, issuer: &str) {
        if issuer.is_empty() {
            self.any = true;
        } else if !self.issuers.iter().any(|i| i == issuer) {
            self.issuers.push(issuer.to_owned());
        }
    }

    /// Whether a token with this `iss` may come from here.
    pub fn allows(&self, iss: &str) -> bool {
        self.any || self.issuers.iter().any(|i| i == iss)
    }
}

impl Extractor {
    fn add(&mut self, provider: &jwt_pb::JwtProvider) -> Result<(), Rejection> {
        let add_header = |this: &mut Self, name: HeaderName, prefix: &str, issuer: &str| match this
            .headers
            .iter_mut()
            .find(|l| l.name == name && l.prefix == prefix)
        {
            Some(location) => location.issuers.add(issuer),
            None => {
                let mut issuers = IssuerSet::default();
                issuers.add(issuer);
                this.headers.push(HeaderLocation {
                    name,
                    prefix: prefix.to_owned(),
                    issuers,
                });
            }
        };
        let add_named = |list: &mut Vec<(String, IssuerSet)>, name: &str, issuer: &str| match list
            .iter_mut()
            .find(|(n, _)| n == name)
        {
            Some((_, issuers)) => issuers.add(issuer),
            None => {
                let mut issuers = IssuerSet::default();
                issuers.add(issuer);
                list.push((name.to_owned(), issuers));
            }
        };
        let issuer = provider.issuer.as_str();
        for (i, header) in provider.from_headers.iter().enumerate() {
            let jwt_pb::JwtHeader { name, value_prefix } = header;
            let name =
                header_name(name).map_err(|r| Rejection::new("name", r).at("from_headers", i))?;
            add_header(self, name, value_prefix, issuer);
        }
        for (i, param) in provider.from_params.iter().enumerate() {
            if param.is_empty() {
                return Err(Rejection::new_at("from_params", i, Reason::Missing));
            }
            add_named(&mut self.params, param, issuer);
        }
        for (i, cookie) in provider.from_cookies.iter().enumerate() {
            if cookie.is_empty() {
                return Err(Rejection::new_at("from_cookies", i, Reason::Missing));
            }
            add_named(&mut self.cookies, cookie, issuer);
        }
        if provider.from_headers.is_empty()
            && provider.from_params.is_empty()
            && provider.from_cookies.is_empty()
        {
            add_header(self, http::header::AUTHORIZATION, "Bearer ", issuer);
            add_named(&mut self.params, "access_token", issuer);
        }
        // Envoy keys its maps by `name + prefix` and by name; both sort as strings.
        self.headers.sort_by(|a, b| {
            (a.name.as_str(), a.prefix.as_str()).cmp(&(b.name.as_str(), b.prefix.as_str()))
        });
        self.params.sort_by(|a, b| a.0.cmp(&b.0));
        self.cookies.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(())
    }
}

/// A `PerRouteConfig`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PerRoute {
    /// `disabled: true`: no verification on this route.
    Disabled,
    /// `requirement_name`: the requirement of that name in the filter's `requirement_map`.
    /// A name the filter does not have gets 403, as in Envoy (routes are validated apart from
    /// listeners, so it cannot be NACKed).
    Requirement(String),
}

/// Reads a `PerRouteConfig`.
pub(crate) fn per_route(proto: &jwt_pb::PerRouteConfig) -> Result<PerRoute, Rejection> {
    use jwt_pb::per_route_config::RequirementSpecifier;
    let jwt_pb::PerRouteConfig {
        requirement_specifier,
    } = proto;
    match requirement_specifier {
        Some(RequirementSpecifier::Disabled(true)) => Ok(PerRoute::Disabled),
        // PGV: `disabled` must be true when set; the name must not be empty.
        Some(RequirementSpecifier::Disabled(false)) => Err(Rejection::new(
            "disabled",
            Reason::Invalid("must be true when set".into()),
        )),
        Some(RequirementSpecifier::RequirementName(name)) if name.is_empty() => {
            Err(Rejection::new("requirement_name", Reason::Missing))
        }
        Some(RequirementSpecifier::RequirementName(name)) => {
            Ok(PerRoute::Requirement(name.clone()))
        }
        None => Err(Rejection::new(
            "requirement_specifier",
            Reason::Invalid("one of disabled or requirement_name is required".into()),
        )),
    }
}

impl JwtAuthn {
    /// Validates a `JwtAuthentication`.
    pub(crate) fn try_from_proto(proto: jwt_pb::JwtAuthentication) -> Result<JwtAuthn, Rejection> {
        let jwt_pb::JwtAuthentication {
            providers,
            rules,
            filter_state_rules,
            bypass_cors_preflight,
            requirement_map,
            strip_failure_response,
            stat_prefix: _,
        } = &proto;
        reject_set(&[(filter_state_rules.is_some(), "filter_state_rules")])?;

        let mut names: Vec<&String> = providers.keys().collect();
        names.sort();
        let mut built = Vec::with_capacity(names.len());
        let mut all_providers = Extractor::default();
        let mut claim_headers = Vec::new();
        for name in &names {
            let within = |r: Rejection| r.key(name).within("providers");
            let source = &providers[*name];
            let provider = provider(name, source).map_err(within)?;
            all_providers.add(source).map_err(within)?;
            for claim in &provider.claim_to_headers {
                if !claim_headers.contains(&claim.header) {
                    claim_headers.push(claim.header.clone());
                }
            }
            all_providers
                .sanitize
                .extend(provider.extractor.sanitize.iter().cloned());
            built.push(Arc::new(provider));
        }
        let index = |name: &str| names.iter().position(|n| *n == name);

        let mut map_names: Vec<&String> = requirement_map.keys().collect();
        map_names.sort();
        let requirement_names = map_names
            .iter()
            .map(|n| n.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let mut map = BTreeMap::new();
        for name in map_names {
            let requirement = requirement(&requirement_map[name], &index)
                .map_err(|r| r.key(name).within("requirement_map"))?;
            map.insert(name.clone(), requirement);
        }

        let mut built_rules = Vec::with_capacity(rules.len());
        for (i, rule) in rules.iter().enumerate() {
            let built_rule =
                self::rule(rule, &index, requirement_map, &requirement_names).at("rules", i)?;
            built_rules.push(built_rule);
        }
        Ok(JwtAuthn {
            providers: built,
            rules: built_rules,
            requirement_map: map,
            requirement_names,
            bypass_cors_preflight: *bypass_cors_preflight,
            strip_failure_response: *strip_failure_response,
            claim_headers,
            all_providers,
            proto,
        })
    }
}

fn rule(
    proto: &jwt_pb::RequirementRule,
    index: &dyn Fn(&str) -> Option<usize>,
    map: &HashMap<String, jwt_pb::JwtRequirement>,
    all_names: &str,
) -> Result<Rule, Rejection> {
    use jwt_pb::requirement_rule::RequirementType;
    let jwt_pb::RequirementRule {
        r#match,
        requirement_type,
    } = proto;
    let matcher = r#match
        .as_ref()
        .ok_or_else(|| Rejection::new("match", Reason::Missing))
        .and_then(|m| request_matcher(m).within("match"))?;
    let requirement = match requirement_type {
        None => None,
        Some(RequirementType::Requires(requires)) => {
            Some(requirement(requires, index).within("requires")?)
        }
        Some(RequirementType::RequirementName(name)) => match map.get(name) {
            Some(requires) => Some(requirement(requires, index).within("requirement_name")?),
            None => {
                return Err(Rejection::new(
                    "requirement_name",
                    Reason::Invalid(format!(
                        "Wrong requirement_name: {name}. It should be one of [{all_names}]"
                    )),
                ));
            }
        },
    };
    Ok(Rule {
        matcher,
        requirement,
    })
}

fn requirement(
    proto: &jwt_pb::JwtRequirement,
    index: &dyn Fn(&str) -> Option<usize>,
) -> Result<Requirement, Rejection> {
    use jwt_pb::jwt_requirement::RequiresType;
    let provider = |name: &str, field: &'static str| {
        index(name).ok_or_else(|| {
            Rejection::new(
                field,
                Reason::Invalid(format!("Required provider ['{name}'] is not configured.")),
            )
        })
    };
    let jwt_pb::JwtRequirement { requires_type } = proto;
    Ok(match requires_type {
        None => Requirement::AllowAll,
        Some(RequiresType::ProviderName(name)) => Requirement::Provider {
            provider: provider(name, "provider_name")?,
            audiences: None,
        },
        Some(RequiresType::ProviderAndAudiences(p)) => {
            let jwt_pb::ProviderWithAudiences {
                provider_name,
                audiences,
            } = p;
            Requirement::Provider {
                provider: provider(provider_name, "provider_name")
                    .within("provider_and_audiences")?,
                // Envoy uses the provider's own audiences when the list is empty.
                audiences: (!audiences.is_empty()).then(|| Audiences::new(audiences)),
            }
        }
        Some(RequiresType::RequiresAny(list)) => {
            let items = group(&list.requirements, index).within("requires_any")?;
            let mut children = Vec::new();
            let (mut allow_missing, mut allow_missing_or_failed) = (false, false);
            for item in items {
                match item {
                    Requirement::AllowMissing => allow_missing = true,
                    Requirement::AllowMissingOrFailed => allow_missing_or_failed = true,
                    other => children.push(other),
                }
            }
            // As Envoy: with only the relaxing children, one of them runs on its own.
            if children.is_empty() {
                children.push(if allow_missing_or_failed {
                    Requirement::AllowMissingOrFailed
                } else {
                    Requirement::AllowMissing
                });
            }
            Requirement::Any {
                children,
                allow_missing,
                allow_missing_or_failed,
            }
        }
        Some(RequiresType::RequiresAll(list)) => {
            Requirement::All(group(&list.requirements, index).within("requires_all")?)
        }
        Some(RequiresType::AllowMissingOrFailed(_)) => Requirement::AllowMissingOrFailed,
        Some(RequiresType::AllowMissing(_)) => Requirement::AllowMissing,
        Some(RequiresType::ExtractOnlyWithoutValidation(_)) => {
            return Err(Rejection::unsupported("extract_only_without_validation"));
        }
    })
}

fn group(
    list: &[jwt_pb::JwtRequirement],
    index: &dyn Fn(&str) -> Option<usize>,
) -> Result<Vec<Requirement>, Rejection> {
    // PGV: `requirements` has at least 2 items.
    if list.len() < 2 {
        return Err(Rejection::new(
            "requirements",
            Reason::Invalid("must have at least 2 requirements".into()),
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, r)| requirement(r, index).at("requirements", i))
        .collect()
}

#[allow(deprecated)] // deprecated fields still change behaviour when set: they must be read
fn provider(name: &str, proto: &jwt_pb::JwtProvider) -> Result<JwtProvider, Rejection> {
    use jwt_pb::jwt_provider::JwksSourceSpecifier;
    let jwt_pb::JwtProvider {
        issuer,
        audiences,
        subjects,
        require_expiration,
        max_lifetime,
        forward,
        from_headers: _,
        from_params: _,
        from_cookies: _,
        forward_payload_header,
        pad_forward_payload_header,
        payload_in_metadata,
        normalize_payload_in_metadata,
        header_in_metadata,
        failed_status_in_metadata,
        clock_skew_seconds,
        // A cache of verified tokens: saves verification work, decides nothing.
        jwt_cache_config: _,
        claim_to_headers,
        clear_route_cache,
        jwks_source_specifier,
    } = proto;
    reject_set(&[
        (subjects.is_some(), "subjects"),
        (*require_expiration, "require_expiration"),
        (max_lifetime.is_some(), "max_lifetime"),
        // Would route the request again after the claim headers are added.
        (*clear_route_cache, "clear_route_cache"),
        // jwt_verify_lib's status codes in the metadata, which RBAC could match.
        (
            !failed_status_in_metadata.is_empty(),
            "failed_status_in_metadata",
        ),
    ])?;
    let space_delimited_claims = match normalize_payload_in_metadata {
        Some(jwt_pb::jwt_provider::NormalizePayload {
            space_delimited_claims,
        }) => space_delimited_claims.clone(),
        None => Vec::new(),
    };
    let mut extractor = Extractor::default();
    extractor.add(proto)?;
    let forward_payload_header = if forward_payload_header.is_empty() {
        None
    } else {
        Some(
            header_name(forward_payload_header)
                .map_err(|r| Rejection::new("forward_payload_header", r))?,
        )
    };
    let claims = claim_to_headers
        .iter()
        .enumerate()
        .map(|(i, c)| claim_to_header(c).at("claim_to_headers", i))
        .collect::<Result<Vec<_>, _>>()?;
    extractor
        .sanitize
        .extend(forward_payload_header.iter().cloned());
    extractor
        .sanitize
        .extend(claims.iter().map(|c| c.header.clone()));
    let jwks = match jwks_source_specifier {
        None => {
            return Err(Rejection::new(
                "jwks_source_specifier",
                Reason::Invalid("one of remote_jwks or local_jwks is required".into()),
            ));
        }
        Some(JwksSourceSpecifier::LocalJwks(source)) => {
            Jwks::Local(Arc::new(local_jwks(source).within("local_jwks")?))
        }
        Some(JwksSourceSpecifier::RemoteJwks(remote)) => {
            Jwks::Remote(Arc::new(remote_jwks(name, remote).within("remote_jwks")?))
        }
    };
    Ok(JwtProvider {
        name: name.to_owned(),
        issuer: issuer.clone(),
        audiences: Audiences::new(audiences),
        extractor,
        forward: *forward,
        forward_payload_header,
        pad_forward_payload_header: *pad_forward_payload_header,
        claim_to_headers: claims,
        clock_skew_seconds: match *clock_skew_seconds {
            0 => DEFAULT_CLOCK_SKEW_SECONDS,
            n => u64::from(n),
        },
        payload_in_metadata: (!payload_in_metadata.is_empty()).then(|| payload_in_metadata.clone()),
        space_delimited_claims,
        header_in_metadata: (!header_in_metadata.is_empty()).then(|| header_in_metadata.clone()),
        jwks,
        verified: Default::default(),
    })
}

fn claim_to_header(proto: &jwt_pb::JwtClaimToHeader) -> Result<ClaimToHeader, Rejection> {
    let jwt_pb::JwtClaimToHeader {
        header_name: name,
        claim_name,
        claim_path,
    } = proto;
    let header = self::header_name(name).map_err(|r| Rejection::new("header_name", r))?;
    let path: Vec<String> = match (claim_name.is_empty(), claim_path.is_empty()) {
        (false, true) => claim_name.split('.').map(str::to_owned).collect(),
        (true, false) => claim_path.iter().map(|s| s.key.clone()).collect(),
        _ => {
            return Err(Rejection::new(
                "claim_name",
                Reason::Invalid("exactly one of claim_name and claim_path must be set".into()),
            ));
        }
    };
    Ok(ClaimToHeader { header, path })
}

fn header_name(name: &str) -> Result<HeaderName, Reason> {
    if name.is_empty() {
        return Err(Reason::Missing);
    }
    if name.starts_with(':') {
        return Err(Reason::Invalid(format!(
            "{name}: pseudo-headers may not be used"
        )));
    }
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| Reason::Invalid(format!("{name:?} is not a header name")))
}

fn local_jwks(proto: &core_pb::DataSource) -> Result<JwkSet, Rejection> {
    use core_pb::data_source::Specifier;
    let core_pb::DataSource {
        watched_directory,
        specifier,
    } = proto;
    reject_set(&[(watched_directory.is_some(), "watched_directory")])?;
    let (field, bytes): (&'static str, &[u8]) = match specifier {
        Some(Specifier::InlineString(s)) => ("inline_string", s.as_bytes()),
        Some(Specifier::InlineBytes(b)) => ("inline_bytes", b),
        None => return Err(Rejection::new("inline_string", Reason::Missing)),
        // Reading files or the environment is I/O that config building does not do.
        Some(Specifier::Filename(_)) => return Err(Rejection::unsupported("filename")),
        Some(Specifier::EnvironmentVariable(_)) => {
            return Err(Rejection::unsupported("environment_variable"));
        }
    };
    // Envoy accepts a JWKS without a usable key (with a warning) and then fails every token
    // with "Jwks doesn't have any valid public key"; refusing it is louder and safer.
    JwkSet::parse(bytes).map_err(|e| Rejection::new(field, Reason::Invalid(e.to_string())))
}

fn remote_jwks(provider: &str, proto: &jwt_pb::RemoteJwks) -> Result<RemoteJwks, Rejection> {
    use core_pb::http_uri::HttpUpstreamType;
    let jwt_pb::RemoteJwks {
        http_uri,
        cache_duration,
        async_fetch,
        retry_policy,
    } = proto;
    reject_set(&[(retry_policy.is_some(), "retry_policy")])?;
    let http_uri = http_uri
        .as_ref()
        .ok_or_else(|| Rejection::new("http_uri", Reason::Missing))?;
    let core_pb::HttpUri {
        uri,
        timeout,
        http_upstream_type,
    } = http_uri;
    let within = |r: Rejection| r.within("http_uri");
    let parsed = uri
        .parse::<Uri>()
        .ok()
        .filter(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some())
        .ok_or_else(|| {
            within(Rejection::new(
                "uri",
                Reason::Invalid(format!("Provider '{provider}' has an invalid URI: '{uri}'")),
            ))
        })?;
    let cluster = match http_upstream_type {
        Some(HttpUpstreamType::Cluster(cluster)) if !cluster.is_empty() => cluster.clone(),
        _ => return Err(within(Rejection::new("cluster", Reason::Missing))),
    };
    let timeout = timeout
        .as_ref()
        .ok_or_else(|| within(Rejection::new("timeout", Reason::Missing)))
        .and_then(|t| duration(t).map_err(|r| within(Rejection::new("timeout", r))))?;
    let cache_duration = match cache_duration {
        None => DEFAULT_JWKS_CACHE_DURATION,
        Some(d) => duration(d).map_err(|r| Rejection::new("cache_duration", r))?,
    };
    let async_fetch = match async_fetch {
        None => None,
        Some(jwt_pb::JwksAsyncFetch {
            // Envoy holds the listener back until the first fetch ends unless this is set;
            // this proxy always serves at once (a request that needs the keys before they
            // arrive fetches them itself).
            fast_listener: _,
            failed_refetch_duration,
        }) => Some(match failed_refetch_duration {
            None => DEFAULT_FAILED_REFETCH,
            Some(d) => duration(d)
                .map_err(|r| Rejection::new("failed_refetch_duration", r).within("async_fetch"))?,
        }),
    };
    Ok(RemoteJwks {
        uri: parsed,
        cluster,
        timeout,
        cache_duration,
        async_fetch,
        cache: JwksCache::default(),
    })
}
