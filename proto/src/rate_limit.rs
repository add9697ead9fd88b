//! `tollgate.filters.http.rate_limit.v1`: the edge proxy's quota filter, which counts requests
//! itself (in process, or in Redis shared with the fleet) instead of asking a rate-limit
//! service. Envoy nodes get Envoy's `ratelimit` filter pointed at the control plane's RLS,
//! which uses the same engine, key scheme and identities, so both draw on the same counters.

const PACKAGE: &str = "tollgate.filters.http.rate_limit.v1";

/// The filter's config in the connection manager: the rate-limit policies its routes use.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimit {
    /// Policies by name. An ordered map, so that the control plane encodes one config to the
    /// same bytes every time (its version is a hash of them).
    #[prost(btree_map = "string, message", tag = "1")]
    pub policies: std::collections::BTreeMap<String, RateLimitPolicy>,
}

/// One rate-limit policy.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitPolicy {
    /// What requests are counted by, in order; the identity joins the parts' values.
    #[prost(message, repeated, tag = "1")]
    pub key: Vec<KeyPart>,
    /// The limit, unless the consumer's tier has its own.
    #[prost(message, optional, tag = "2")]
    pub limit: Option<Limit>,
    /// Limits by consumer tier (ordered, as `policies`).
    #[prost(btree_map = "string, message", tag = "3")]
    pub tier_limits: std::collections::BTreeMap<String, Limit>,
    /// How requests are counted.
    #[prost(enumeration = "Algorithm", tag = "4")]
    pub algorithm: i32,
    /// Counted in Redis, shared by the fleet (the proxy's `--redis`); otherwise per proxy.
    #[prost(bool, tag = "5")]
    pub global: bool,
    /// Count and report, never refuse.
    #[prost(bool, tag = "6")]
    pub shadow: bool,
    /// Refuse when the counters cannot be reached (default: allow).
    #[prost(bool, tag = "7")]
    pub fail_closed: bool,
    /// Also send `X-RateLimit-Limit`, `-Remaining` and `-Reset`.
    #[prost(bool, tag = "8")]
    pub legacy_headers: bool,
    /// Batched mode for hot keys: tokens taken from Redis per call and spent locally (0: off).
    #[prost(uint64, tag = "9")]
    pub lease: u64,
}

/// A limit: `requests` per `window_ms`, with a token bucket's `burst`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Limit {
    /// Requests per window.
    #[prost(uint64, tag = "1")]
    pub requests: u64,
    /// The window, in milliseconds.
    #[prost(uint64, tag = "2")]
    pub window_ms: u64,
    /// Token bucket only: requests allowed at once (0: `requests`).
    #[prost(uint64, tag = "3")]
    pub burst: u64,
}

/// One part of a rate-limit key.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyPart {
    /// Which part.
    #[prost(oneof = "key_part::Part", tags = "1, 2, 3, 4, 5, 6, 7")]
    pub part: Option<key_part::Part>,
}

/// [`KeyPart`]'s variants.
pub mod key_part {
    /// What a key part reads.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Part {
        /// The API key, as its keyed hash (never the key).
        #[prost(bool, tag = "1")]
        ApiKey(bool),
        /// The API key's consumer.
        #[prost(bool, tag = "2")]
        Consumer(bool),
        /// The consumer's tier.
        #[prost(bool, tag = "3")]
        ConsumerTier(bool),
        /// A claim of the verified JWT (dotted path).
        #[prost(string, tag = "4")]
        Claim(String),
        /// The client address (after the listener's trusted hops).
        #[prost(bool, tag = "5")]
        ClientIp(bool),
        /// A request header.
        #[prost(string, tag = "6")]
        Header(String),
        /// The route's name.
        #[prost(bool, tag = "7")]
        Route(bool),
    }
}

/// How requests are counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Algorithm {
    /// GCRA.
    TokenBucket = 0,
    /// Two-window weighted estimate.
    SlidingWindow = 1,
    /// Counter reset every window.
    FixedWindow = 2,
}

/// A route's policies, in its `typed_per_filter_config`: every one must allow the request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitPerRoute {
    /// Policy names.
    #[prost(string, repeated, tag = "1")]
    pub policies: Vec<String>,
}

named!(PACKAGE; RateLimit, RateLimitPolicy, Limit, KeyPart, RateLimitPerRoute);
