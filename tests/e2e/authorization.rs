//! Authorization and IP-filter policies, enforced alike by Envoy (its RBAC filter, reading what
//! `jwt_authn` and ext_authz found) and the edge proxy: claims, scopes, consumer groups and
//! client addresses behind a trusted proxy hop give the same status on both.

use serde_json::{Value, json};
use support::jwt::{SigningKey, jwks, now};
use support::{ControlPlane, Upstream, free_port};

use crate::fixtures::{Peer, start_envoy_and_edge};

const HOST: &str = "authz.test";
const ISSUER: &str = "https://idp.authz.test";
const PARTNER_KEY: &str = "partner-key-5a1c9e3f7b2d";
const PLAIN_KEY: &str = "plain-key-8d4f2b6a0c1e";
const VIP_KEY: &str = "vip-key-1e3c5a7f9b0d2468";

impl Peer {
    async fn status(&self, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let response = self.send(path, headers).await;
        (response.status, response.body)
    }
}

#[tokio::test]
async fn envoy_and_the_edge_proxy_authorize_alike() {
    let Some(_) = support::require_envoy() else {
        return;
    };
    let key = SigningKey::rsa_a("authz-1");
    let cp = ControlPlane::start().await.expect("control plane starts");
    let upstream = Upstream::start("internal").await;
    let (envoy_port, edge_port) = (free_port(), free_port());
    let revision = cp.put_all([
        ("clusters", "internal", json!({"endpoints": [{"address": "127.0.0.1", "port": upstream.port()}]})),
        ("consumers", "partner", json!({"groups": ["partners"], "api_keys": [PARTNER_KEY]})),
        ("consumers", "plain", json!({"api_keys": [PLAIN_KEY]})),
        ("consumers", "vip", json!({"groups": ["press"], "api_keys": [VIP_KEY]})),
        ("policies", "idp", json!({"type": "jwt", "issuer": ISSUER, "jwks": jwks(&[&key])})),
        ("policies", "keys", json!({"type": "api_key"})),
        ("policies", "admins", json!({"type": "authorization", "require_claims": {"role": ["admin", "ops"], "org.id": ["acme"]},
               "require_scopes": ["orders:write"]})),
        ("policies", "partners-only", json!({"type": "authorization", "allow_consumer_groups": ["partners"], "allow_consumers": ["vip"]})),
        ("policies", "office", json!({"type": "ip_filter", "allow": ["10.1.0.0/16", "2001:db8::/32"], "deny": ["10.1.2.0/24"]})),
        ("routes", "admin", json!({"match": {"path_prefix": "/admin"}, "cluster": "internal", "policies": ["idp", "admins"]})),
        ("routes", "partners", json!({"match": {"path_prefix": "/partners"}, "cluster": "internal", "policies": ["keys", "partners-only"]})),
        ("routes", "office", json!({"match": {"path_prefix": "/office"}, "cluster": "internal", "policies": ["office"]})),
        ("routes", "open", json!({"match": {"path_prefix": "/open"}, "cluster": "internal"})),
        // One trusted hop: the client address is the last `x-forwarded-for` entry.
        ("listeners", "envoy-l", json!({"address": "127.0.0.1", "port": envoy_port, "node_cluster": "envoy", "trusted_proxy_hops": 1})),
        ("listeners", "edge-l", json!({"address": "127.0.0.1", "port": edge_port, "node_cluster": "edge", "trusted_proxy_hops": 1})),
    ]).await;
    let (_envoy, _edge) = start_envoy_and_edge(&cp, "authz", revision).await;
    let peers = Peer::envoy_and_edge(envoy_port, edge_port, HOST);
    for peer in &peers {
        peer.wait_serving("/open", &[]).await;
    }

    let token = |claims: Value| {
        let mut all =
            json!({"iss": ISSUER, "sub": "u1", "exp": now() + 600, "org": {"id": "acme"}});
        for (k, v) in claims.as_object().expect("object") {
            all[k] = v.clone();
        }
        format!("Bearer {}", key.sign(&all))
    };
    let admin = token(json!({"role": "admin", "scope": "orders:read orders:write"}));
    let ops_in_list = token(json!({"role": ["viewer", "ops"], "scp": ["orders:write"]}));
    let plain_user = token(json!({"role": "user", "scope": "orders:write"}));
    let read_only = token(json!({"role": "admin", "scope": "orders:read"}));
    let other_org =
        token(json!({"role": "admin", "scope": "orders:write", "org": {"id": "globex"}}));
    // (name, path, request headers, status)
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, u16);
    let cases: Vec<Case> = vec![
        (
            "admin with the scope",
            "/admin",
            vec![("authorization", &admin)],
            200,
        ),
        (
            "role in a list, scope in scp",
            "/admin",
            vec![("authorization", &ops_in_list)],
            200,
        ),
        (
            "wrong role",
            "/admin",
            vec![("authorization", &plain_user)],
            403,
        ),
        (
            "scope missing",
            "/admin",
            vec![("authorization", &read_only)],
            403,
        ),
        (
            "nested claim differs",
            "/admin",
            vec![("authorization", &other_org)],
            403,
        ),
        ("no token", "/admin", vec![], 401),
        (
            "consumer in the group",
            "/partners",
            vec![("x-api-key", PARTNER_KEY)],
            200,
        ),
        (
            "consumer named",
            "/partners",
            vec![("x-api-key", VIP_KEY)],
            200,
        ),
        (
            "consumer outside the group",
            "/partners",
            vec![("x-api-key", PLAIN_KEY)],
            403,
        ),
        ("no key", "/partners", vec![], 401),
        (
            "allowed range",
            "/office",
            vec![("x-forwarded-for", "10.1.5.5")],
            200,
        ),
        (
            "denied within the allowed range",
            "/office",
            vec![("x-forwarded-for", "10.1.2.9")],
            403,
        ),
        (
            "outside the allowed range",
            "/office",
            vec![("x-forwarded-for", "192.0.2.1")],
            403,
        ),
        (
            "IPv6 in range",
            "/office",
            vec![("x-forwarded-for", "2001:db8::7")],
            200,
        ),
        (
            "only the last hop is trusted",
            "/office",
            vec![("x-forwarded-for", "10.1.5.5, 192.0.2.1")],
            403,
        ),
        (
            "forged first hop",
            "/office",
            vec![("x-forwarded-for", "192.0.2.1, 10.1.5.5")],
            200,
        ),
        ("no forwarded address", "/office", vec![], 403),
    ];
    let mut failures = Vec::new();
    for (name, path, headers, expected) in &cases {
        for peer in &peers {
            upstream.clear();
            let (status, body) = peer.status(path, headers).await;
            if status != *expected {
                failures.push(format!(
                    "{name}: {} answered {status} (expected {expected}): {body}",
                    peer.name
                ));
            } else if status != 200 && upstream.request_count() != 0 {
                failures.push(format!("{name}: {} forwarded a refused request", peer.name));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} problems:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
