//! JWT policies, enforced alike by Envoy (its `jwt_authn` filter) and the edge proxy, from one
//! control plane: a matrix of good and hostile tokens gives the same status on both, the
//! upstream sees the claim headers and never the token, and a JWKS rotation is picked up
//! without a restart.

use serde_json::{Value, json};
use support::jwt::{JwksServer, SigningKey, jwks, now, sign_hs256, unsigned};
use support::{ControlPlane, Upstream, eventually, free_port};

use crate::fixtures::{CONVERGE, Peer, start_envoy_and_edge};

const ISSUER: &str = "https://idp.tollgate.test";
const AUDIENCE: &str = "orders-api";
const HOST: &str = "jwt.test";

fn claims(extra: Value) -> Value {
    let mut claims = json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-42",
        "iat": now(),
        "exp": now() + 600,
        "tenant": {"id": "acme"},
    });
    for (key, value) in extra.as_object().expect("an object") {
        if value.is_null() {
            claims.as_object_mut().expect("object").remove(key);
        } else {
            claims[key] = value.clone();
        }
    }
    claims
}

#[tokio::test]
async fn envoy_and_the_edge_proxy_enforce_the_same_jwt_policy() {
    let Some(_) = support::require_envoy() else {
        return;
    };
    let rsa = SigningKey::rsa_a("rsa-a");
    let ec = SigningKey::ec("ec-1");
    let rotated = SigningKey::rsa_b("rsa-b");
    let jwks_server = JwksServer::start(jwks(&[&rsa, &ec])).await;
    let cp = ControlPlane::start().await.expect("control plane starts");
    let upstream = Upstream::start("orders").await;
    let (envoy_port, edge_port) = (free_port(), free_port());

    let revision = cp.put_all([
        ("clusters", "orders", json!({"endpoints": [{"address": "127.0.0.1", "port": upstream.port()}]})),
        ("policies", "idp", json!({
            "type": "jwt",
            "issuer": ISSUER,
            "audiences": [AUDIENCE],
            "jwks_uri": jwks_server.url(),
            // Short, so Envoy (which refetches only when the cache expires) sees the rotation
            // within the test; the edge proxy refetches on an unknown kid.
            "jwks_cache_duration_s": 2,
            "claims_to_headers": {"sub": "x-user-id", "tenant.id": "x-tenant"},
        })),
        ("policies", "idp-optional", json!({
            "type": "jwt",
            "issuer": ISSUER,
            "jwks": jwks(&[&rsa]),
            "optional": true,
            "token_from": [{"header": "x-token"}, {"query": "token"}, {"cookie": "session"}],
            "claims_to_headers": {"sub": "x-user-id"},
        })),
        ("routes", "private", json!({"match": {"path_prefix": "/private"}, "cluster": "orders", "policies": ["idp"]})),
        ("routes", "maybe", json!({"match": {"path_prefix": "/maybe"}, "cluster": "orders", "policies": ["idp-optional"]})),
        ("routes", "public", json!({"match": {"path_prefix": "/public"}, "cluster": "orders"})),
        ("listeners", "envoy-l", json!({"address": "127.0.0.1", "port": envoy_port, "node_cluster": "envoy"})),
        ("listeners", "edge-l", json!({"address": "127.0.0.1", "port": edge_port, "node_cluster": "edge"})),
    ]).await;

    let (_envoy, edge) = start_envoy_and_edge(&cp, "jwt", revision).await;
    let peers = Peer::envoy_and_edge(envoy_port, edge_port, HOST);
    let valid = format!("Bearer {}", rsa.sign(&claims(json!({}))));
    for peer in &peers {
        peer.wait_serving("/private", &[("authorization", &valid)])
            .await;
    }

    // Algorithm confusion: HS256 "signed" with the RSA public key, naming the RSA key's kid.
    let confused = sign_hs256(
        &json!({"alg": "HS256", "typ": "JWT", "kid": rsa.kid()}),
        &claims(json!({})),
        SigningKey::rsa_a_public_pem(),
    );
    // A valid signature by another key, under the trusted key's kid.
    let forged = rotated.sign_with_header(
        &json!({"alg": "RS256", "typ": "JWT", "kid": rsa.kid()}),
        &claims(json!({})),
    );
    let tampered = {
        let token = rsa.sign(&claims(json!({})));
        let (rest, signature) = token.rsplit_once('.').expect("three parts");
        let mut signature = signature.to_owned().into_bytes();
        signature[10] = if signature[10] == b'A' { b'B' } else { b'A' };
        format!("{rest}.{}", String::from_utf8(signature).expect("ascii"))
    };
    let bearer = |token: &str| format!("Bearer {token}");
    let cases: Vec<(&str, &str, Option<String>, u16)> = vec![
        (
            "valid RS256",
            "/private",
            Some(bearer(&rsa.sign(&claims(json!({}))))),
            200,
        ),
        (
            "valid ES256",
            "/private",
            Some(bearer(&ec.sign(&claims(json!({}))))),
            200,
        ),
        (
            "audience among several",
            "/private",
            Some(bearer(
                &rsa.sign(&claims(json!({"aud": ["other", AUDIENCE]}))),
            )),
            200,
        ),
        (
            "expired",
            "/private",
            Some(bearer(&rsa.sign(&claims(json!({"exp": now() - 3600}))))),
            401,
        ),
        (
            "expired within the clock skew",
            "/private",
            Some(bearer(&rsa.sign(&claims(json!({"exp": now() - 10}))))),
            200,
        ),
        (
            "not yet valid",
            "/private",
            Some(bearer(&rsa.sign(&claims(json!({"nbf": now() + 3600}))))),
            401,
        ),
        (
            "wrong issuer",
            "/private",
            Some(bearer(
                &rsa.sign(&claims(json!({"iss": "https://evil.test"}))),
            )),
            401,
        ),
        (
            "wrong audience",
            "/private",
            Some(bearer(&rsa.sign(&claims(json!({"aud": "billing-api"}))))),
            403,
        ),
        ("bad signature", "/private", Some(bearer(&tampered)), 401),
        (
            "signed by another key under a trusted kid",
            "/private",
            Some(bearer(&forged)),
            401,
        ),
        (
            "unknown kid",
            "/private",
            Some(bearer(&rotated.sign(&claims(json!({}))))),
            401,
        ),
        (
            "alg none",
            "/private",
            Some(bearer(&unsigned(&claims(json!({}))))),
            401,
        ),
        (
            "HS256 with the RSA public key",
            "/private",
            Some(bearer(&confused)),
            401,
        ),
        ("malformed", "/private", Some(bearer("not.a.jwt")), 401),
        ("garbage", "/private", Some(bearer("%%%")), 401),
        ("missing", "/private", None, 401),
        (
            "not bearer",
            "/private",
            Some("Basic dXNlcjpwYXNz".to_owned()),
            401,
        ),
        ("no policy", "/public", None, 200),
        ("optional: missing", "/maybe", None, 200),
        ("optional: bad token", "/maybe/q?token=not.a.jwt", None, 401),
    ];
    let mut failures = Vec::new();
    for (name, path, authorization, expected) in &cases {
        let headers: Vec<(&str, &str)> = authorization
            .iter()
            .map(|a| ("authorization", a.as_str()))
            .collect();
        for peer in &peers {
            upstream.clear();
            let response = peer.send(path, &headers).await;
            if response.status != *expected {
                failures.push(format!(
                    "{name}: {} answered {} (expected {expected}): {}",
                    peer.name, response.status, response.body
                ));
                continue;
            }
            if response.status == 401 && response.header("www-authenticate").is_none() {
                failures.push(format!(
                    "{name}: {} sent 401 without www-authenticate",
                    peer.name
                ));
            }
            let seen = upstream.requests();
            match (response.status, seen.as_slice()) {
                (200, [request]) if *path == "/private" => {
                    if request.header("x-user-id") != Some("user-42")
                        || request.header("x-tenant") != Some("acme")
                        || request.header("authorization").is_some()
                    {
                        failures.push(format!(
                            "{name}: through {} the upstream saw {:?}",
                            peer.name, request.headers
                        ));
                    }
                }
                (200, [_]) => {}
                (200, other) => failures.push(format!(
                    "{name}: through {} the upstream saw {} requests",
                    peer.name,
                    other.len()
                )),
                (_, []) => {}
                (_, _) => failures.push(format!(
                    "{name}: {} forwarded a rejected request upstream",
                    peer.name
                )),
            }
        }
    }

    // Tokens from the other places a policy may name, and claim headers a client tries to forge.
    let token = rsa.sign(&claims(json!({})));
    for peer in &peers {
        for (how, path, headers) in [
            (
                "header",
                "/maybe".to_owned(),
                vec![("x-token", token.clone())],
            ),
            ("query", format!("/maybe?token={token}"), vec![]),
            (
                "cookie",
                "/maybe".to_owned(),
                vec![("cookie", format!("a=b; session={token}"))],
            ),
        ] {
            upstream.clear();
            let mut headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            headers.push(("x-user-id", "forged"));
            let response = peer.send(&path, &headers).await;
            let seen = upstream.requests();
            let user = seen
                .first()
                .and_then(|r| r.header("x-user-id").map(str::to_owned));
            if response.status != 200 || user.as_deref() != Some("user-42") {
                failures.push(format!(
                    "token in a {how}: {} answered {} and the upstream saw x-user-id {user:?}",
                    peer.name, response.status
                ));
            }
        }
    }

    // The edge proxy counts each refusal by reason: one request of each kind above, and two
    // naming no usable key (the unknown kid, and HS256 under the RSA key's kid: no key of that
    // kid has that algorithm).
    let text = support::get(&format!("{}/metrics", edge.admin_url()), None)
        .await
        .expect("edge /metrics")
        .body;
    let samples = support::metrics::Samples::parse(&text).expect("metrics parse");
    for (reason, expected) in [
        ("expired", 1.0),
        ("not_yet_valid", 1.0),
        ("issuer", 1.0),
        ("audience", 1.0),
        ("unknown_key", 2.0),
    ] {
        let counted = samples.get(
            "tollgate_proxy_auth_rejections_total",
            &[
                ("route", "private"),
                ("filter", "jwt_authn"),
                ("reason", reason),
            ],
        );
        if counted != Some(expected) {
            failures.push(format!(
                "edge /metrics counts {counted:?} JWTs refused as {reason}, expected {expected}"
            ));
        }
    }

    // Key rotation: the issuer publishes a new key and signs with it.
    jwks_server.set(jwks(&[&rsa, &ec, &rotated]));
    let token = rotated.sign(&claims(json!({})));
    for peer in &peers {
        eventually(
            &format!(
                "{} accepts a token signed with the rotated-in key",
                peer.name
            ),
            CONVERGE,
            || async {
                let response = peer
                    .send("/private", &[("authorization", &bearer(&token))])
                    .await;
                anyhow::ensure!(response.status == 200, "status {}", response.status);
                Ok(())
            },
        )
        .await;
    }

    assert!(
        failures.is_empty(),
        "{} problems:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
