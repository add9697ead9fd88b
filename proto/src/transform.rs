//! `tollgate.filters.http.transform.v1`: the edge proxy's body transform filter.
//!
//! Header and path changes of transform policies travel as Envoy's own route fields (header
//! mutations with substitution formatters, `regex_rewrite`), which Envoy and the edge proxy
//! both read. Body changes have no Envoy equivalent; edge proxies get them here.

const PACKAGE: &str = "tollgate.filters.http.transform.v1";

/// The filter's config in the connection manager: nothing, the work is per route.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Transform {}

/// A route's body changes, in its `typed_per_filter_config`, applied in order.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TransformPerRoute {
    /// Changes to the request body.
    #[prost(message, repeated, tag = "1")]
    pub request: Vec<BodyTransform>,
    /// Changes to the response body.
    #[prost(message, repeated, tag = "2")]
    pub response: Vec<BodyTransform>,
}

/// One policy's body changes: convert, then rename keys, remove fields, add fields.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BodyTransform {
    /// A format conversion made first.
    #[prost(enumeration = "Conversion", tag = "1")]
    pub convert: i32,
    /// The case JSON object keys are renamed to.
    #[prost(enumeration = "KeyCase", tag = "2")]
    pub rename_keys: i32,
    /// Fields removed, as dotted paths.
    #[prost(string, repeated, tag = "3")]
    pub remove: Vec<String>,
    /// Fields set: dotted path → JSON-encoded value.
    #[prost(map = "string, string", tag = "4")]
    pub add: std::collections::HashMap<String, String>,
    /// Refuse a body that does not parse (400 for a request, 502 for a response) instead of
    /// passing it on unchanged.
    #[prost(bool, tag = "5")]
    pub reject_invalid: bool,
}

/// A body format conversion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Conversion {
    /// None.
    None = 0,
    /// XML in, JSON out.
    XmlToJson = 1,
    /// JSON in, XML out.
    JsonToXml = 2,
}

/// A naming convention for JSON keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum KeyCase {
    /// Keys are left alone.
    Unchanged = 0,
    /// `userId` → `user_id`.
    SnakeCase = 1,
    /// `user_id` → `userId`.
    CamelCase = 2,
}

named!(PACKAGE; Transform, TransformPerRoute, BodyTransform);
