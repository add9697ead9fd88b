//! Envoy's substitution format strings in header values (`request_headers_to_add`,
//! `response_headers_to_add`): parsed once when a route table is built ([`HeaderFormat`]),
//! evaluated per request by the header mutations ([`super::route::HeaderMutations`]).
//!
//! The subset implemented is what Tollgate's transform policies send, with Envoy 1.40's
//! semantics as observed against it:
//!
//! - `%%`: a literal `%`.
//! - `%REQ(name)%`, `%REQ(name?alternative)%`, optionally `:N` (at most N bytes): the first
//!   value of a request header, or of the alternative when it is absent. `host` and
//!   `:authority` read the request's authority; `:method` and `:scheme` the method and scheme.
//!   In response headers the request is the one sent upstream, header mutations included.
//! - `%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%`: the client's address.
//! - `%DYNAMIC_METADATA(namespace:key:…)%`, optionally `:N`: a value that a filter stored for
//!   the request: `envoy.filters.http.jwt_authn` (the verified JWT payload under the provider's
//!   `payload_in_metadata`) or `envoy.filters.http.ext_authz` (the API key's consumer:
//!   `consumer`, `tier`, `groups`). Strings are written as they are; numbers, booleans, lists
//!   and objects as Envoy writes them: compact JSON, object keys sorted, numbers as
//!   `std::to_chars` writes a double (`42`, `1.5`, `1e+16`, `12345678901234567168`). A path
//!   that leads nowhere, or to `null`, is empty.
//!
//! Any other command is NACKed, naming the field: sending it literally, or as empty, would
//! differ from Envoy. A value whose parts are all empty is not added unless
//! `keep_empty_value`, so `Bearer %REQ(x)%` without `x` still sends `Bearer ` (Envoy does).

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::Reason;

/// The dynamic metadata namespace of Envoy's jwt_authn filter.
pub const JWT_AUTHN_NAMESPACE: &str = "envoy.filters.http.jwt_authn";
/// The dynamic metadata namespace of Envoy's ext_authz filter, which Tollgate's API-key filter
/// writes too (the consumer a key belongs to).
pub const EXT_AUTHZ_NAMESPACE: &str = "envoy.filters.http.ext_authz";

/// A header value from the config: literal (the fast path: no work per request), or a template
/// evaluated per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderFormat {
    /// No command: the value as is (`%%` already unescaped).
    Literal(HeaderValue),
    /// At least one command.
    Template(Template),
}

/// A parsed substitution format string with at least one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// Literal bytes, `%%` unescaped.
    Literal(String),
    /// `%REQ(header?alternative):max%`.
    Request {
        header: RequestField,
        alternative: Option<RequestField>,
        max: Option<usize>,
    },
    /// `%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%`.
    ClientAddress,
    /// `%DYNAMIC_METADATA(namespace:path…):max%`.
    Metadata {
        namespace: String,
        path: Vec<String>,
        max: Option<usize>,
    },
}

/// What `%REQ(…)%` reads.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RequestField {
    /// `:authority`, and `host` (Envoy reads the authority for it too).
    Authority,
    /// `:method`.
    Method,
    /// `:scheme`.
    Scheme,
    /// A regular header.
    Header(HeaderName),
}

/// What a template reads besides the request headers, for the request being served.
#[derive(Clone, Copy)]
pub struct FormatContext<'a> {
    /// The request's authority (`:authority` / `Host`).
    pub authority: &'a str,
    /// The request's method.
    pub method: &'a str,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// The client's address (Envoy's downstream remote address).
    pub client: IpAddr,
    /// What the filters stored for the request.
    pub metadata: &'a dyn DynamicMetadata,
}

impl std::fmt::Debug for FormatContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FormatContext")
            .field("authority", &self.authority)
            .field("method", &self.method)
            .field("scheme", &self.scheme)
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

/// Envoy's per-request dynamic metadata, as far as the proxy's filters write it: read by
/// `%DYNAMIC_METADATA(…)%`.
pub trait DynamicMetadata: Sync {
    /// The value at `path` in `namespace`; an empty path is the whole namespace (an object).
    /// `None` when nothing is there.
    fn get(&self, namespace: &str, path: &[String]) -> Option<Cow<'_, serde_json::Value>>;
}

/// No metadata: every lookup is empty.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoMetadata;

impl DynamicMetadata for NoMetadata {
    fn get(&self, _: &str, _: &[String]) -> Option<Cow<'_, serde_json::Value>> {
        None
    }
}

/// Follows `path` through nested objects of `value`, as Envoy's metadata lookup does: a step
/// into anything but an object finds nothing.
pub fn lookup<'v>(value: &'v serde_json::Value, path: &[String]) -> Option<&'v serde_json::Value> {
    path.iter()
        .try_fold(value, |value, key| value.as_object()?.get(key))
}

impl HeaderFormat {
    /// Whether evaluating this reads the request (headers or pseudo-headers).
    pub fn reads_request(&self) -> bool {
        match self {
            Self::Literal(_) => false,
            Self::Template(template) => template
                .parts
                .iter()
                .any(|p| matches!(p, Part::Request { .. })),
        }
    }

    /// Whether evaluating this reads the client's address.
    pub fn reads_client_address(&self) -> bool {
        match self {
            Self::Literal(_) => false,
            Self::Template(template) => template.parts.contains(&Part::ClientAddress),
        }
    }
}

impl Template {
    /// The value for one request; `request` holds the request headers `%REQ()%` reads.
    pub fn render(&self, request: &HeaderMap, cx: &FormatContext<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.extend_from_slice(text.as_bytes()),
                Part::Request {
                    header,
                    alternative,
                    max,
                } => {
                    let value = request_field(header, request, cx).or_else(|| {
                        alternative
                            .as_ref()
                            .and_then(|alt| request_field(alt, request, cx))
                    });
                    if let Some(value) = value {
                        out.extend_from_slice(truncate(value, *max));
                    }
                }
                Part::ClientAddress => {
                    let _ = write!(ByteWriter(&mut out), "{}", cx.client);
                }
                Part::Metadata {
                    namespace,
                    path,
                    max,
                } => {
                    if let Some(value) = cx.metadata.get(namespace, path) {
                        let text = match &*value {
                            serde_json::Value::Null => Cow::Borrowed(""),
                            serde_json::Value::String(s) => Cow::Borrowed(s.as_str()),
                            other => Cow::Owned(envoy_json(other)),
                        };
                        out.extend_from_slice(truncate(text.as_bytes(), *max));
                    }
                }
            }
        }
        out
    }
}

/// `%REQ()%`'s first value; `None` when absent, so the alternative is tried.
fn request_field<'r>(
    field: &RequestField,
    request: &'r HeaderMap,
    cx: &FormatContext<'r>,
) -> Option<&'r [u8]> {
    let value = match field {
        RequestField::Authority => cx.authority.as_bytes(),
        RequestField::Method => cx.method.as_bytes(),
        RequestField::Scheme => cx.scheme.as_bytes(),
        RequestField::Header(name) => request.get(name)?.as_bytes(),
    };
    Some(value)
}

fn truncate(value: &[u8], max: Option<usize>) -> &[u8] {
    match max {
        Some(max) if value.len() > max => &value[..max],
        _ => value,
    }
}

struct ByteWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for ByteWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Reads a header value from the config: literal when it has no command (`%%` is a literal
/// `%`), else a template. A command outside the subset, or a malformed one, is refused.
pub(crate) fn header_format(value: &str) -> Result<HeaderFormat, Reason> {
    let invalid_value = |text: &str| {
        Reason::Invalid(format!(
            "{text:?} is not a valid header value (control characters)"
        ))
    };
    if !value.contains('%') {
        return HeaderValue::from_str(value)
            .map(HeaderFormat::Literal)
            .map_err(|_| invalid_value(value));
    }
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('%') {
        literal.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(after) = rest.strip_prefix('%') {
            literal.push('%');
            rest = after;
            continue;
        }
        let (part, after) = command(rest, value)?;
        if !literal.is_empty() {
            parts.push(Part::Literal(std::mem::take(&mut literal)));
        }
        parts.push(part);
        rest = after;
    }
    literal.push_str(rest);
    if parts.is_empty() {
        return HeaderValue::from_str(&literal)
            .map(HeaderFormat::Literal)
            .map_err(|_| invalid_value(&literal));
    }
    if !literal.is_empty() {
        parts.push(Part::Literal(literal));
    }
    for part in &parts {
        if let Part::Literal(text) = part
            && HeaderValue::from_str(text).is_err()
        {
            return Err(invalid_value(text));
        }
    }
    Ok(HeaderFormat::Template(Template { parts }))
}

/// One command after its opening `%`: `NAME`, `NAME(args)` or `NAME(args):N`, then `%`.
/// Returns the part and what follows the closing `%`.
fn command<'v>(rest: &'v str, value: &str) -> Result<(Part, &'v str), Reason> {
    let malformed = || {
        Reason::Invalid(format!(
            "malformed substitution command in {value:?} (write %% for a literal %)"
        ))
    };
    let name_len = rest
        .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .unwrap_or(rest.len());
    let name = &rest[..name_len];
    if name.is_empty() {
        return Err(malformed());
    }
    let mut after = &rest[name_len..];
    let mut args = None;
    if let Some(open) = after.strip_prefix('(') {
        let close = open.find(')').ok_or_else(malformed)?;
        args = Some(&open[..close]);
        after = &open[close + 1..];
    }
    let mut max = None;
    if let Some(length) = after.strip_prefix(':') {
        let digits = length
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(length.len());
        max = Some(length[..digits].parse::<usize>().map_err(|_| malformed())?);
        after = &length[digits..];
    }
    let after = after.strip_prefix('%').ok_or_else(malformed)?;
    let unsupported = |what: String| Reason::UnsupportedValue(format!("{what} in {value:?}"));
    let part = match (name, args) {
        ("REQ", Some(args)) => {
            let (header, alternative) = match args.split_once('?') {
                Some((main, alt)) => (main, Some(alt)),
                None => (args, None),
            };
            Part::Request {
                header: request_field_name(header, value)?,
                alternative: alternative
                    .map(|alt| request_field_name(alt, value))
                    .transpose()?,
                max,
            }
        }
        ("DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT", None) if max.is_none() => Part::ClientAddress,
        ("DYNAMIC_METADATA", Some(args)) => {
            let mut keys = args.split(':');
            let namespace = keys.next().unwrap_or_default();
            if namespace.is_empty() {
                return Err(malformed());
            }
            if namespace != JWT_AUTHN_NAMESPACE && namespace != EXT_AUTHZ_NAMESPACE {
                // No filter of this proxy writes there: Envoy could find something, this
                // proxy never would.
                return Err(unsupported(format!(
                    "dynamic metadata namespace {namespace:?}"
                )));
            }
            let path: Vec<String> = keys.map(str::to_owned).collect();
            if path.iter().any(String::is_empty) {
                return Err(malformed());
            }
            Part::Metadata {
                namespace: namespace.to_owned(),
                path,
                max,
            }
        }
        ("REQ" | "DYNAMIC_METADATA" | "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT", _) => {
            return Err(malformed());
        }
        (other, _) => {
            return Err(unsupported(format!(
                "substitution command %{other}% (supported: REQ, DYNAMIC_METADATA, \
                 DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT; %% is a literal %)"
            )));
        }
    };
    Ok((part, after))
}

fn request_field_name(name: &str, value: &str) -> Result<RequestField, Reason> {
    let lower = name.to_ascii_lowercase();
    match lower.as_str() {
        ":authority" | "host" => Ok(RequestField::Authority),
        ":method" => Ok(RequestField::Method),
        ":scheme" => Ok(RequestField::Scheme),
        // `:path` is rewritten between the request and the response headers: not worth the
        // bookkeeping until something sends it.
        _ if lower.starts_with(':') => Err(Reason::UnsupportedValue(format!(
            "%REQ({name})% in {value:?}"
        ))),
        _ => HeaderName::from_bytes(lower.as_bytes())
            .map(RequestField::Header)
            .map_err(|_| Reason::Invalid(format!("{name:?} in {value:?} is not a header name"))),
    }
}

/// A non-string metadata value as Envoy 1.40 writes it into a header: compact JSON, object
/// keys sorted (serde_json's map is ordered by key), strings escaped as serde_json escapes
/// them (control characters only; DEL and non-ASCII stay raw), and every number as the double
/// Envoy holds, written as C++ `std::to_chars` writes one.
pub fn envoy_json(value: &serde_json::Value) -> String {
    let mut out = String::new();
    write_envoy_json(value, &mut out);
    out
}

fn write_envoy_json(value: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&to_chars(n.as_f64().unwrap_or(f64::NAN))),
        Value::String(s) => out.push_str(&serde_json::Value::String(s.clone()).to_string()),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_envoy_json(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(key.clone()).to_string());
                out.push(':');
                write_envoy_json(item, out);
            }
            out.push('}');
        }
    }
}

/// A double as C++17 `std::to_chars(first, last, value)` writes it: the shortest digits that
/// read back as the same double, in fixed or scientific notation (`e+NN`, at least two exponent
/// digits), whichever is shorter, fixed on a tie; fixed notation of a whole number is exact.
pub fn to_chars(value: f64) -> String {
    if !value.is_finite() {
        // JSON has no such numbers; Envoy never holds one from a JSON document.
        return "null".to_owned();
    }
    // Rust's `{:e}` writes the shortest round-trip digits: `-1.2345e-7`.
    let scientific = format!("{value:e}");
    let (mantissa, exponent) = scientific
        .split_once('e')
        .expect("`{:e}` always writes an exponent");
    let exponent: i32 = exponent.parse().expect("`{:e}` writes an integer exponent");
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let mut sci = format!("{sign}{}", &digits[..1]);
    if digits.len() > 1 {
        sci.push('.');
        sci.push_str(&digits[1..]);
    }
    let _ = write!(
        sci,
        "e{}{:02}",
        if exponent < 0 { '-' } else { '+' },
        exponent.unsigned_abs()
    );
    // Digits before the decimal point.
    let point = exponent + 1;
    let fixed = if point <= 0 {
        format!(
            "{sign}0.{}{digits}",
            "0".repeat(point.unsigned_abs() as usize)
        )
    } else if point as usize >= digits.len() {
        // A whole number: fixed notation writes its exact value, not the shortest digits
        // padded with zeros (`12345678901234567168`). Past u128 it is never the shorter form.
        if value.abs() < 2f64.powi(127) {
            format!("{sign}{}", value.abs() as u128)
        } else {
            format!(
                "{sign}{digits}{}",
                "0".repeat(point as usize - digits.len())
            )
        }
    } else {
        let (int, frac) = digits.split_at(point as usize);
        format!("{sign}{int}.{frac}")
    };
    if fixed.len() <= sci.len() { fixed } else { sci }
}

#[cfg(test)]
mod tests;
