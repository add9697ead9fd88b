//! Response headers for quota decisions: the IETF `RateLimit-Policy` and `RateLimit` fields
//! (draft-ietf-httpapi-ratelimit-headers-11), the legacy `X-RateLimit-*` trio, and `Retry-After`.
//!
//! The draft's fields are Structured Field Lists (RFC 9651) of Items whose value is a String
//! (the policy name, quoted, with `"` and `\` escaped) followed by Integer parameters:
//!
//! ```text
//! RateLimit-Policy: "per-minute";q=100;w=60, "burst";q=10;w=1;tollgate-burst=20
//! RateLimit: "per-minute";r=42;t=30, "burst";r=19;t=1
//! ```
//!
//! - `RateLimit-Policy` (section 3): `q` is the quota in requests (the draft's default unit,
//!   so `qu` is omitted), `w` the window in whole seconds (non-zero). Windows are rounded up
//!   to a second; a sub-second window is stated per second (`q` scaled down, `w=1`). A token
//!   bucket's capacity goes in the vendor parameter `tollgate-burst` (the draft asks for a
//!   vendor prefix on extra parameters).
//! - `RateLimit` (section 4): `r` is the available quota (remaining requests), `t` the
//!   effective window in whole seconds, rounded up: within `t` seconds the client gets no more
//!   than `r`. It is the time until the current window ends (fixed and sliding windows) or the
//!   bucket is full again (token bucket); on a refusal it is the retry delay, so that
//!   `Retry-After` never points before the effective window ends (section 6). Decisions that
//!   were not counted (the backend was unavailable) get no `RateLimit` item.
//! - `pk` (partition key) is not sent: identities can be personal data, and the draft leaves it
//!   optional.
//! - `X-RateLimit-Limit`, `-Remaining`, `-Reset` (the pre-draft convention, `Reset` in delta
//!   seconds as the draft's earlier versions and Envoy use) describe one policy: the most
//!   restrictive counted one (refused first, then the fewest remaining).
//! - `Retry-After` (RFC 9110 delay-seconds, at least 1) is set when any policy refused.

use std::fmt::Write as _;
use std::time::Duration;

use crate::decision::{Decision, Outcome};
use crate::policy::{Algorithm, Limit, Policy};

/// `ratelimit-policy` (lowercase, as HTTP/2 and the `http` crate spell header names).
pub const RATELIMIT_POLICY: &str = "ratelimit-policy";
/// `ratelimit`.
pub const RATELIMIT: &str = "ratelimit";
/// `x-ratelimit-limit`.
pub const X_RATELIMIT_LIMIT: &str = "x-ratelimit-limit";
/// `x-ratelimit-remaining`.
pub const X_RATELIMIT_REMAINING: &str = "x-ratelimit-remaining";
/// `x-ratelimit-reset`.
pub const X_RATELIMIT_RESET: &str = "x-ratelimit-reset";
/// `retry-after`.
pub const RETRY_AFTER: &str = "retry-after";

/// The header fields for the decisions of one request, in a fixed order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimitHeaders {
    fields: Vec<(&'static str, String)>,
}

impl RateLimitHeaders {
    /// Renders the headers for every policy checked on one request, with its decision. Shadow
    /// policies never show.
    pub fn new<'a>(checks: impl IntoIterator<Item = (&'a Policy, &'a Decision)>) -> Self {
        let checks: Vec<(&Policy, &Decision, bool)> =
            checks.into_iter().map(|(p, d)| (p, d, true)).collect();
        Self::render(&checks)
    }

    /// The fields a proxy sends for one request's checks, as (policy, decision, whether the
    /// policy asks for the legacy fields): the draft's `RateLimit-Policy`, `RateLimit` and
    /// `Retry-After` for all of them, and the legacy `X-RateLimit-*` describing those that ask
    /// for it. The edge proxy's quota filter and the control plane's rate-limit service (for
    /// Envoy) both answer with these. Shadow policies are left out: they never show.
    pub fn for_response(checks: &[(&Policy, &Decision, bool)]) -> Self {
        Self::render(checks)
    }

    // Runs for every request a quota counts: one string per field, written in place.
    fn render(checks: &[(&Policy, &Decision, bool)]) -> Self {
        // A shadow policy's refusal must not show as a `Retry-After` either.
        let shown = || checks.iter().filter(|(policy, _, _)| !policy.is_shadow());
        if shown().next().is_none() {
            return Self::default();
        }
        let mut fields = Vec::with_capacity(6);
        let mut policies = String::new();
        let mut limits = String::new();
        for (policy, decision, _) in shown() {
            if !policies.is_empty() {
                policies.push_str(", ");
            }
            policies.push_str(policy.policy_item());
            if decision.is_counted() {
                if !limits.is_empty() {
                    limits.push_str(", ");
                }
                write_ratelimit_item(&mut limits, policy, decision);
            }
        }
        fields.push((RATELIMIT_POLICY, policies));
        if !limits.is_empty() {
            fields.push((RATELIMIT, limits));
        }
        let strictest = shown()
            .filter(|(_, d, legacy)| *legacy && d.is_counted())
            .map(|(_, d, _)| *d)
            .min_by_key(|d| {
                (
                    d.outcome != Outcome::Limited,
                    d.remaining,
                    std::cmp::Reverse(effective_window(d)),
                )
            });
        if let Some(d) = strictest {
            fields.push((X_RATELIMIT_LIMIT, d.limit.to_string()));
            fields.push((X_RATELIMIT_REMAINING, d.remaining.to_string()));
            fields.push((
                X_RATELIMIT_RESET,
                ceil_secs(effective_window(d)).to_string(),
            ));
        }
        let retry_after = shown()
            .filter(|(_, d, _)| !d.is_allowed())
            .filter_map(|(_, d, _)| d.retry_after)
            .max();
        if let Some(retry_after) = retry_after {
            fields.push((RETRY_AFTER, ceil_secs(retry_after).max(1).to_string()));
        }
        Self { fields }
    }

    /// The fields as (lowercase name, value), in order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.fields.iter().map(|(n, v)| (*n, v.as_str()))
    }

    /// The fields as (lowercase name, value), in order, taking the values.
    pub fn into_fields(self) -> impl Iterator<Item = (&'static str, String)> {
        self.fields.into_iter()
    }

    /// One field's value, by lowercase name.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Whether there are no fields (no policy was checked).
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

/// Renders the `RateLimit-Policy` item [`Policy::policy_item`] keeps: `"name";q=100;w=60` (plus
/// `;tollgate-burst=N` for a token bucket).
pub(crate) fn render_policy_item(name: &str, limit: &Limit) -> String {
    let mut item = sf_string(name);
    let (q, w) = quota_per_whole_seconds(limit);
    // Writing to a String cannot fail.
    let _ = write!(item, ";q={q};w={w}");
    if let Algorithm::TokenBucket { burst } = limit.algorithm {
        let _ = write!(item, ";tollgate-burst={burst}");
    }
    item
}

/// Appends one `RateLimit` item, `"name";r=42;t=30`, for a counted decision.
fn write_ratelimit_item(out: &mut String, policy: &Policy, decision: &Decision) {
    // On every response a policy counts: no formatting machinery.
    out.push_str(policy.quoted_name());
    out.push_str(";r=");
    out.push_str(itoa::Buffer::new().format(decision.remaining));
    out.push_str(";t=");
    out.push_str(itoa::Buffer::new().format(ceil_secs(effective_window(decision))));
}

/// The window the `t` parameter and `X-RateLimit-Reset` state: the retry delay when refused.
fn effective_window(decision: &Decision) -> Duration {
    match (decision.outcome, decision.retry_after) {
        (Outcome::Limited, Some(retry_after)) => retry_after,
        _ => decision.reset_after,
    }
}

/// `(q, w)` with `w` a whole, non-zero number of seconds.
fn quota_per_whole_seconds(limit: &Limit) -> (u64, u64) {
    if limit.window >= Duration::from_secs(1) {
        (limit.requests, ceil_secs(limit.window))
    } else {
        let per_second = u128::from(limit.requests) * 1_000_000 / limit.window.as_micros().max(1);
        (u64::try_from(per_second).unwrap_or(u64::MAX), 1)
    }
}

/// Whole seconds, rounded up.
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// An RFC 9651 sf-string: quoted, with `\` and `"` escaped (names are printable ASCII).
pub(crate) fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    write_sf_string(&mut out, s);
    out
}

fn write_sf_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::FailureMode;

    fn policy(name: &str, limit: Limit) -> Policy {
        Policy::new(name, limit, FailureMode::Open).unwrap()
    }

    fn decision(
        outcome: Outcome,
        remaining: u64,
        reset_ms: u64,
        retry_ms: Option<u64>,
    ) -> Decision {
        Decision {
            outcome,
            limit: 100,
            window: Duration::from_secs(60),
            remaining,
            reset_after: Duration::from_millis(reset_ms),
            retry_after: retry_ms.map(Duration::from_millis),
        }
    }

    #[test]
    fn allowed_single_policy() {
        let p = policy(
            "per-minute",
            Limit::fixed_window(100, Duration::from_secs(60)),
        );
        let d = decision(Outcome::Allowed, 42, 29_001, None);
        let h = RateLimitHeaders::new([(&p, &d)]);
        let fields: Vec<_> = h.iter().collect();
        assert_eq!(
            fields,
            [
                ("ratelimit-policy", r#""per-minute";q=100;w=60"#),
                ("ratelimit", r#""per-minute";r=42;t=30"#),
                ("x-ratelimit-limit", "100"),
                ("x-ratelimit-remaining", "42"),
                ("x-ratelimit-reset", "30"),
            ]
        );
    }

    #[test]
    fn proxies_send_legacy_fields_only_for_policies_asking_for_them() {
        let minute = policy("minute", Limit::fixed_window(100, Duration::from_secs(60)));
        let hour = policy("hour", Limit::fixed_window(100, Duration::from_secs(3600)));
        let (d_minute, d_hour) = (
            decision(Outcome::Allowed, 42, 29_001, None),
            decision(Outcome::Allowed, 7, 1_000_000, None),
        );
        let names = |h: &RateLimitHeaders| h.iter().map(|(n, _)| n).collect::<Vec<_>>();
        let neither =
            RateLimitHeaders::for_response(&[(&minute, &d_minute, false), (&hour, &d_hour, false)]);
        assert_eq!(names(&neither), ["ratelimit-policy", "ratelimit"]);
        // The legacy trio describes the policies asking for it (here the hour, though the
        // minute has more left), the draft fields describe both.
        let hourly =
            RateLimitHeaders::for_response(&[(&minute, &d_minute, false), (&hour, &d_hour, true)]);
        assert_eq!(
            hourly.get("ratelimit-policy"),
            Some(r#""minute";q=100;w=60, "hour";q=100;w=3600"#)
        );
        assert_eq!(hourly.get("x-ratelimit-remaining"), Some("7"));
        assert_eq!(hourly.get("x-ratelimit-reset"), Some("1000"));
        assert!(RateLimitHeaders::for_response(&[]).is_empty());
    }

    #[test]
    fn refused_uses_retry_delay() {
        let p = policy("burst", Limit::token_bucket(10, Duration::from_secs(1), 20));
        let d = Decision {
            limit: 10,
            window: Duration::from_secs(1),
            ..decision(Outcome::Limited, 0, 2_000, Some(2_500))
        };
        let h = RateLimitHeaders::new([(&p, &d)]);
        assert_eq!(
            h.get(RATELIMIT_POLICY),
            Some(r#""burst";q=10;w=1;tollgate-burst=20"#)
        );
        assert_eq!(h.get(RATELIMIT), Some(r#""burst";r=0;t=3"#));
        assert_eq!(h.get(RETRY_AFTER), Some("3"));
        assert_eq!(h.get(X_RATELIMIT_RESET), Some("3"));
    }

    #[test]
    fn several_policies_and_the_strictest_legacy_one() {
        let minute = policy("minute", Limit::fixed_window(100, Duration::from_secs(60)));
        let day = policy(
            "day",
            Limit::sliding_window(1000, Duration::from_secs(86_400)),
        );
        let d_minute = decision(Outcome::Allowed, 42, 30_000, None);
        let d_day = Decision {
            limit: 1000,
            window: Duration::from_secs(86_400),
            ..decision(Outcome::Allowed, 7, 3_600_000, None)
        };
        let h = RateLimitHeaders::new([(&minute, &d_minute), (&day, &d_day)]);
        assert_eq!(
            h.get(RATELIMIT_POLICY),
            Some(r#""minute";q=100;w=60, "day";q=1000;w=86400"#)
        );
        assert_eq!(
            h.get(RATELIMIT),
            Some(r#""minute";r=42;t=30, "day";r=7;t=3600"#)
        );
        assert_eq!(h.get(X_RATELIMIT_LIMIT), Some("1000"));
        assert_eq!(h.get(X_RATELIMIT_REMAINING), Some("7"));
        assert_eq!(h.get(RETRY_AFTER), None);
    }

    #[test]
    fn unavailable_backend() {
        let open = Policy::new(
            "o",
            Limit::fixed_window(5, Duration::from_secs(1)),
            FailureMode::Open,
        )
        .unwrap();
        let closed = Policy::new(
            "c",
            Limit::fixed_window(5, Duration::from_secs(1)),
            FailureMode::Closed,
        )
        .unwrap();
        let h = RateLimitHeaders::new([(&open, &Decision::unavailable(&open))]);
        // Nothing is claimed about counters nobody could read.
        assert_eq!(
            h.iter().collect::<Vec<_>>(),
            [("ratelimit-policy", r#""o";q=5;w=1"#)]
        );
        let h = RateLimitHeaders::new([(&closed, &Decision::unavailable(&closed))]);
        assert_eq!(h.get(RETRY_AFTER), Some("1"));
        assert_eq!(h.get(RATELIMIT), None);
    }

    #[test]
    fn names_are_escaped_and_short_windows_scaled() {
        let p = policy(
            r#"a "quoted" \ name"#,
            Limit::fixed_window(5, Duration::from_millis(100)),
        );
        assert_eq!(p.policy_item(), r#""a \"quoted\" \\ name";q=50;w=1"#);
        let odd = policy("odd", Limit::fixed_window(5, Duration::from_millis(1_500)));
        assert_eq!(odd.policy_item(), r#""odd";q=5;w=2"#);
        assert!(RateLimitHeaders::new([]).is_empty());
    }
}
