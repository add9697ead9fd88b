//! Identities: the partition a request is counted in, built from the parts of a policy's key.
//!
//! A rate-limit policy counts requests "per" something: an API key, a consumer, a JWT claim, a
//! client address, a header, a route, or a combination. The edge proxy's quota filter and the
//! control plane's RLS (for Envoy) read those parts from a request in their own ways, then both
//! call [`identity`] with the same `(label, value)` pairs, so one client lands on one counter
//! whichever proxy serves it.
//!
//! Labels are the key parts as a policy writes them: `api_key`, `consumer`, `consumer_tier`,
//! `claim:<dotted path>`, `client_ip`, `header:<lowercase name>`, `route` (see [`label`]).
//! The identity is `label=value` per part, in the policy's order, joined by `&`, with every byte
//! outside `A-Z a-z 0-9 - . _ ~ : / @ +` percent-encoded. That keeps it printable, free of
//! braces and spaces (so short ones appear in Redis keys as they are, see [`crate::key`]), and
//! unambiguous: no two lists of parts give the same identity.
//!
//! A policy without key parts counts everyone together: its identity is the empty string.
//!
//! An API key is never a part's value: [`api_key_hash`] turns the consumer key's keyed hash
//! (HMAC-SHA-256 under the store's secret, hex) into the value, so neither Redis nor the RLS
//! ever sees a key.

use std::fmt::Write as _;

/// Hex digits of an API key's keyed hash that identify it in a quota (128 bits).
pub const API_KEY_HASH_HEX_LEN: usize = 32;

/// The label of a key part: what [`identity`] writes before its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label<'a> {
    /// The API key, as [`api_key_hash`] of its keyed hash.
    ApiKey,
    /// The name of the API key's consumer.
    Consumer,
    /// The consumer's tier.
    ConsumerTier,
    /// A claim of the verified JWT, as a dotted path (`org.id`).
    Claim(&'a str),
    /// The client address.
    ClientIp,
    /// A request header, lowercase.
    Header(&'a str),
    /// The route's name.
    Route,
}

/// The label string of a key part, e.g. `claim:org.id` or `header:x-tenant`.
pub fn label(part: Label<'_>) -> String {
    match part {
        Label::ApiKey => "api_key".to_owned(),
        Label::Consumer => "consumer".to_owned(),
        Label::ConsumerTier => "consumer_tier".to_owned(),
        Label::Claim(path) => format!("claim:{path}"),
        Label::ClientIp => "client_ip".to_owned(),
        Label::Header(name) => format!("header:{name}"),
        Label::Route => "route".to_owned(),
    }
}

/// The identity of a request whose key parts read `parts`, as `(label, value)` in the
/// policy's order.
pub fn identity(parts: &[(&str, &str)]) -> String {
    let mut identity = IdentityBuilder::default();
    for (label, value) in parts {
        identity.part(label, value);
    }
    identity.finish()
}

/// Builds the [`identity`] of a request part by part, in one string: a proxy calls it for
/// every request a policy counts.
#[derive(Debug, Default)]
pub struct IdentityBuilder {
    out: String,
}

impl IdentityBuilder {
    /// A builder with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            out: String::with_capacity(capacity),
        }
    }

    /// Appends the part `label` = `value`.
    pub fn part(&mut self, label: &str, value: &str) {
        self.label(label);
        escape_into(&mut self.out, value);
    }

    /// Appends the part `label` = `value` as `Display` writes it (an address, a number),
    /// without an intermediate string.
    pub fn part_display(&mut self, label: &str, value: impl std::fmt::Display) {
        self.label(label);
        // Writing to a String cannot fail.
        let _ = write!(Escaping(&mut self.out), "{value}");
    }

    /// Appends `label=ip`. An IPv4 address is written octet by octet, without the formatting
    /// machinery: a client-address policy builds one for every request. Neither form has a
    /// byte that needs escaping.
    pub fn part_ip(&mut self, label: &str, ip: std::net::IpAddr) {
        self.label(label);
        match ip {
            std::net::IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.out.push('.');
                    }
                    self.out.push_str(itoa::Buffer::new().format(octet));
                }
            }
            std::net::IpAddr::V6(v6) => {
                let _ = write!(Escaping(&mut self.out), "{v6}");
            }
        }
    }

    fn label(&mut self, label: &str) {
        // Every part leaves at least its `=`: the string is empty only before the first.
        if !self.out.is_empty() {
            self.out.push('&');
        }
        escape_into(&mut self.out, label);
        self.out.push('=');
    }

    /// The identity.
    pub fn finish(self) -> String {
        self.out
    }
}

/// Escapes what is written through it, as [`escape_into`].
struct Escaping<'a>(&'a mut String);

impl std::fmt::Write for Escaping<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        escape_into(self.0, s);
        Ok(())
    }
}

/// The value of an `api_key` part: the first [`API_KEY_HASH_HEX_LEN`] hex digits of the key's
/// keyed hash (as the control plane's `ApiKeyHasher::hash` and the edge proxy's key table
/// compute it). A shorter input is used whole.
pub fn api_key_hash(keyed_hash_hex: &str) -> &str {
    keyed_hash_hex
        .get(..API_KEY_HASH_HEX_LEN)
        .unwrap_or(keyed_hash_hex)
}

fn escape_into(out: &mut String, raw: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    // Built for every request a policy counts: runs of safe bytes are copied whole.
    let mut start = 0;
    for (i, &byte) in raw.as_bytes().iter().enumerate() {
        if byte.is_ascii_alphanumeric() || b"-._~:/@+".contains(&byte) {
            continue;
        }
        // Safe bytes are ASCII, so a non-empty run `start..i` lies on character boundaries.
        if start < i {
            out.push_str(&raw[start..i]);
        }
        out.push('%');
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0xf)]));
        start = i + 1;
    }
    // Everything from `start` on is safe (or nothing is left).
    out.push_str(&raw[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_labelled_and_joined_in_order() {
        assert_eq!(identity(&[("consumer", "acme")]), "consumer=acme");
        assert_eq!(
            identity(&[("consumer", "acme"), ("header:x-tenant", "t1")]),
            "consumer=acme&header:x-tenant=t1"
        );
        assert_eq!(
            identity(&[("client_ip", "2001:db8::1")]),
            "client_ip=2001:db8::1"
        );
        assert_eq!(identity(&[]), "");
        assert_eq!(label(Label::Claim("org.id")), "claim:org.id");
        assert_eq!(label(Label::Header("x-tenant")), "header:x-tenant");
    }

    #[test]
    fn separators_and_unsafe_bytes_are_escaped() {
        // Without escaping, these two lists would give the same identity.
        let a = identity(&[("header:a", "x&header:b=y")]);
        let b = identity(&[("header:a", "x"), ("header:b", "y")]);
        assert_ne!(a, b);
        assert_eq!(a, "header:a=x%26header:b%3Dy");
        assert_eq!(
            identity(&[("claim:name", "Zoë {x} 100%")]),
            "claim:name=Zo%C3%AB%20%7Bx%7D%20100%25"
        );
        assert_eq!(identity(&[("header:x", "")]), "header:x=");
        // Runs of safe bytes around multi-byte characters, at either end.
        assert_eq!(identity(&[("h", "ëa")]), "h=%C3%ABa");
        assert_eq!(identity(&[("h", "aë")]), "h=a%C3%AB");
        assert_eq!(identity(&[("h", "€€")]), "h=%E2%82%AC%E2%82%AC");
        assert_eq!(identity(&[("h", "a b")]), "h=a%20b");
    }

    #[test]
    fn addresses_read_as_their_display_does() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.255.9",
            "2001:db8::1",
            "::ffff:1.2.3.4",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            let mut fast = IdentityBuilder::default();
            fast.part_ip("client_ip", ip);
            let mut displayed = IdentityBuilder::default();
            displayed.part_display("client_ip", ip);
            assert_eq!(fast.finish(), displayed.finish());
        }
    }

    #[test]
    fn api_keys_are_identified_by_a_prefix_of_their_keyed_hash() {
        let hash = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(api_key_hash(hash), &hash[..32]);
        assert_eq!(api_key_hash("abc"), "abc");
    }
}
