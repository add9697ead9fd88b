//! The jwt_authn filter against Envoy's behaviour: a verification matrix over every supported
//! algorithm and every failure, extraction and stripping, requirements, and remote JWKS served
//! by a real HTTP server on 127.0.0.1 through a STATIC cluster.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt as _;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject as _;
use serde_json::{Value, json};
use tollgate_proto::envoy::config::cluster::v3 as cluster_pb;
use tollgate_proto::envoy::config::core::v3 as core_pb;
use tollgate_proto::envoy::config::endpoint::v3 as endpoint_pb;
use tollgate_proto::envoy::config::route::v3 as route_pb;
use tollgate_proto::envoy::extensions::filters::http::jwt_authn::v3 as jwt_pb;
use tollgate_proto::google::protobuf as pb;

use super::*;
use crate::config::cluster::Cluster;
use crate::config::filters::jwt_authn::JwtAuthn;
use crate::snapshot::Snapshot;

// ---------------------------------------------------------------------------------------------
// Keys and tokens

const RSA_PEM: &str = include_str!("testdata/rsa2048.pem");
const RSA_JWK: &str = include_str!("testdata/rsa2048.jwk.json");
const RSA_OTHER_PEM: &str = include_str!("testdata/rsa2048-other.pem");
const RSA_OTHER_JWK: &str = include_str!("testdata/rsa2048-other.jwk.json");
const HMAC_SECRET: &[u8] = b"a shared secret of some thirty-two bytes!";

const ISSUER: &str = "https://issuer.example";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn rsa(pem: &str) -> RsaKeyPair {
    let der = PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap();
    RsaKeyPair::from_pkcs8(der.secret_der()).unwrap()
}

struct Keys {
    rsa: RsaKeyPair,
    rsa_other: RsaKeyPair,
    p256: EcdsaKeyPair,
    p384: EcdsaKeyPair,
    ed25519: Ed25519KeyPair,
}

impl Keys {
    fn new() -> Keys {
        let rng = SystemRandom::new();
        let ecdsa = |alg: &'static signature::EcdsaSigningAlgorithm| {
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
            EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap()
        };
        let ed = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        Keys {
            rsa: rsa(RSA_PEM),
            rsa_other: rsa(RSA_OTHER_PEM),
            p256: ecdsa(&signature::ECDSA_P256_SHA256_FIXED_SIGNING),
            p384: ecdsa(&signature::ECDSA_P384_SHA384_FIXED_SIGNING),
            ed25519: Ed25519KeyPair::from_pkcs8(ed.as_ref()).unwrap(),
        }
    }

    fn ec_jwk(key: &EcdsaKeyPair, crv: &str, kid: &str) -> Value {
        let point = key.public_key().as_ref();
        let len = (point.len() - 1) / 2;
        json!({"kty": "EC", "crv": crv, "kid": kid,
               "x": b64(&point[1..1 + len]), "y": b64(&point[1 + len..])})
    }

    /// Every public key, plus the HMAC secret.
    fn jwks(&self) -> String {
        let rsa: Value = serde_json::from_str(RSA_JWK).unwrap();
        json!({"keys": [
            rsa,
            Self::ec_jwk(&self.p256, "P-256", "ec-256"),
            Self::ec_jwk(&self.p384, "P-384", "ec-384"),
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed",
             "x": b64(self.ed25519.public_key().as_ref())},
            {"kty": "oct", "kid": "hmac", "k": b64(HMAC_SECRET)},
        ]})
        .to_string()
    }

    /// A token signed with `alg`; `RS256-other` is RS256 with the second RSA key.
    fn sign(&self, alg: &str, kid: &str, claims: &Value) -> String {
        let header_alg = alg.strip_suffix("-other").unwrap_or(alg);
        let header = json!({"alg": header_alg, "typ": "JWT", "kid": kid});
        let signed = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let data = signed.as_bytes();
        let rng = SystemRandom::new();
        let rsa_sign = |key: &RsaKeyPair, padding: &'static dyn signature::RsaEncoding| {
            let mut out = vec![0; key.public().modulus_len()];
            key.sign(padding, &rng, data, &mut out).unwrap();
            out
        };
        let hmac = |algorithm| {
            let key = ring::hmac::Key::new(algorithm, HMAC_SECRET);
            ring::hmac::sign(&key, data).as_ref().to_vec()
        };
        let signature = match alg {
            "RS256" => rsa_sign(&self.rsa, &signature::RSA_PKCS1_SHA256),
            "RS384" => rsa_sign(&self.rsa, &signature::RSA_PKCS1_SHA384),
            "RS512" => rsa_sign(&self.rsa, &signature::RSA_PKCS1_SHA512),
            "PS256" => rsa_sign(&self.rsa, &signature::RSA_PSS_SHA256),
            "PS384" => rsa_sign(&self.rsa, &signature::RSA_PSS_SHA384),
            "PS512" => rsa_sign(&self.rsa, &signature::RSA_PSS_SHA512),
            "RS256-other" => rsa_sign(&self.rsa_other, &signature::RSA_PKCS1_SHA256),
            "ES256" => self.p256.sign(&rng, data).unwrap().as_ref().to_vec(),
            "ES384" => self.p384.sign(&rng, data).unwrap().as_ref().to_vec(),
            "EdDSA" => self.ed25519.sign(data).as_ref().to_vec(),
            "HS256" => hmac(ring::hmac::HMAC_SHA256),
            "HS384" => hmac(ring::hmac::HMAC_SHA384),
            "HS512" => hmac(ring::hmac::HMAC_SHA512),
            other => panic!("no signer for {other}"),
        };
        format!("{signed}.{}", b64(&signature))
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims() -> Value {
    json!({"iss": ISSUER, "sub": "alice", "aud": "api", "exp": now() + 600})
}

// ---------------------------------------------------------------------------------------------
// Config

fn inline(jwks: &str) -> Option<jwt_pb::jwt_provider::JwksSourceSpecifier> {
    Some(jwt_pb::jwt_provider::JwksSourceSpecifier::LocalJwks(
        core_pb::DataSource {
            specifier: Some(core_pb::data_source::Specifier::InlineString(jwks.into())),
            ..Default::default()
        },
    ))
}

fn provider(jwks: &str) -> jwt_pb::JwtProvider {
    jwt_pb::JwtProvider {
        issuer: ISSUER.into(),
        audiences: vec!["api".into()],
        jwks_source_specifier: inline(jwks),
        ..Default::default()
    }
}

fn requires(name: &str) -> jwt_pb::JwtRequirement {
    jwt_pb::JwtRequirement {
        requires_type: Some(jwt_pb::jwt_requirement::RequiresType::ProviderName(
            name.into(),
        )),
    }
}

fn rule(prefix: &str, requirement: Option<jwt_pb::JwtRequirement>) -> jwt_pb::RequirementRule {
    jwt_pb::RequirementRule {
        r#match: Some(route_pb::RouteMatch {
            path_specifier: Some(route_pb::route_match::PathSpecifier::Prefix(prefix.into())),
            ..Default::default()
        }),
        requirement_type: requirement.map(jwt_pb::requirement_rule::RequirementType::Requires),
    }
}

/// One provider `p`, required on every path.
fn filter(provider: jwt_pb::JwtProvider) -> jwt_pb::JwtAuthentication {
    jwt_pb::JwtAuthentication {
        providers: HashMap::from([("p".to_owned(), provider)]),
        rules: vec![rule("/", Some(requires("p")))],
        ..Default::default()
    }
}

fn build(proto: jwt_pb::JwtAuthentication) -> JwtAuthn {
    JwtAuthn::try_from_proto(proto).expect("valid config")
}

// ---------------------------------------------------------------------------------------------
// Requests

struct TestRequest {
    method: Method,
    path: Cow<'static, str>,
    headers: HeaderMap,
}

impl TestRequest {
    fn get(path: &str) -> Self {
        Self {
            method: Method::GET,
            path: Cow::Owned(path.to_owned()),
            headers: HeaderMap::new(),
        }
    }

    fn bearer(token: &str) -> Self {
        let mut req = Self::get("/items?x=1");
        req.header("authorization", &format!("Bearer {token}"));
        req
    }

    fn header(&mut self, name: &'static str, value: &str) -> &mut Self {
        self.headers
            .append(name, HeaderValue::from_str(value).unwrap());
        self
    }
}

/// What the filter did: `None` passed the request on.
struct Answer {
    status: StatusCode,
    challenge: Option<String>,
    body: Value,
}

async fn run_with(
    config: &JwtAuthn,
    per_route: Option<&PerRoute>,
    upstreams: &Upstreams,
    req: &mut TestRequest,
) -> Option<Answer> {
    let mut request = crate::filter::Request {
        method: &req.method,
        scheme: "https",
        authority: "api.example",
        path_and_query: &mut req.path,
        headers: &mut req.headers,
        addresses: crate::proxy::headers::Addresses::direct([192, 0, 2, 1].into()),
    };
    let mut metadata = Metadata::default();
    let response = on_request(config, per_route, upstreams, &mut request, &mut metadata).await?;
    let status = response.status();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    Some(Answer {
        status,
        challenge,
        body,
    })
}

async fn run(config: &JwtAuthn, req: &mut TestRequest) -> Option<Answer> {
    run_with(config, None, &Upstreams::default(), req).await
}

fn message(answer: &Answer) -> &str {
    answer.body["error"]["message"].as_str().unwrap()
}

/// Asserts an Envoy-shaped 401 for `status`.
fn assert_unauthorized(answer: Option<Answer>, status: Status) {
    let answer = answer.expect("rejected");
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.body);
    assert_eq!(message(&answer), status.message());
    assert_eq!(answer.body["error"]["code"], "unauthorized");
    assert_eq!(
        answer.challenge.as_deref(),
        Some("Bearer realm=\"https://api.example/items?x=1\", error=\"invalid_token\"")
    );
}

// ---------------------------------------------------------------------------------------------
// The verification matrix

#[tokio::test]
async fn every_supported_algorithm_verifies_and_the_token_is_stripped() {
    let keys = Keys::new();
    let config = build(filter(provider(&keys.jwks())));
    for (alg, kid) in [
        ("RS256", "rsa-1"),
        ("RS384", "rsa-1"),
        ("RS512", "rsa-1"),
        ("PS256", "rsa-1"),
        ("PS384", "rsa-1"),
        ("PS512", "rsa-1"),
        ("ES256", "ec-256"),
        ("ES384", "ec-384"),
        ("EdDSA", "ed"),
        ("HS256", "hmac"),
        ("HS384", "hmac"),
        ("HS512", "hmac"),
    ] {
        let mut req = TestRequest::bearer(&keys.sign(alg, kid, &claims()));
        assert!(run(&config, &mut req).await.is_none(), "{alg} rejected");
        assert!(
            req.headers.get("authorization").is_none(),
            "{alg}: not stripped"
        );
        // Without a kid every key is tried.
        let mut req = TestRequest::bearer(&keys.sign(alg, "", &claims()));
        assert!(run(&config, &mut req).await.is_none(), "{alg} without kid");
    }
}

#[tokio::test]
async fn invalid_tokens_get_envoys_answers() {
    let keys = Keys::new();
    let config = build(filter(provider(&keys.jwks())));
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims();
        f(&mut c);
        c
    };
    let cases: Vec<(&str, String, Status)> = vec![
        (
            "expired",
            keys.sign("RS256", "rsa-1", &with(&|c| c["exp"] = json!(now() - 120))),
            Status::JwtExpired,
        ),
        (
            "not yet valid",
            keys.sign("RS256", "rsa-1", &with(&|c| c["nbf"] = json!(now() + 120))),
            Status::JwtNotYetValid,
        ),
        (
            "wrong issuer",
            keys.sign(
                "RS256",
                "rsa-1",
                &with(&|c| c["iss"] = json!("https://evil")),
            ),
            Status::JwtUnknownIssuer,
        ),
        (
            "signed by another key",
            keys.sign("RS256-other", "rsa-1", &claims()),
            Status::JwtVerificationFail,
        ),
        (
            "unknown kid",
            keys.sign("RS256", "rsa-9", &claims()),
            Status::JwksKidAlgMismatch,
        ),
        ("malformed", "abc.def".into(), Status::JwtBadFormat),
        (
            "bad base64 header",
            "a.e30.c2ln".into(),
            Status::JwtHeaderParseErrorBadBase64,
        ),
        (
            "iss not a string",
            keys.sign("RS256", "rsa-1", &with(&|c| c["iss"] = json!(7))),
            Status::JwtPayloadParseErrorIssNotString,
        ),
        (
            "exp not a number",
            keys.sign("RS256", "rsa-1", &with(&|c| c["exp"] = json!("soon"))),
            Status::JwtPayloadParseErrorExpNotInteger,
        ),
        (
            "aud not strings",
            keys.sign("RS256", "rsa-1", &with(&|c| c["aud"] = json!([1]))),
            Status::JwtPayloadParseErrorAudNotString,
        ),
    ];
    for (what, token, status) in cases {
        let mut req = TestRequest::bearer(&token);
        let answer = run(&config, &mut req).await;
        assert!(answer.is_some(), "{what}: accepted");
        assert_unauthorized(answer, status);
        // A failed token stays where it was.
        assert!(req.headers.get("authorization").is_some(), "{what}");
    }

    // A tampered payload keeps the signature of the original.
    let token = keys.sign("ES256", "ec-256", &claims());
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged = b64(with(&|c| c["sub"] = json!("root")).to_string().as_bytes());
    parts[1] = &forged;
    let mut req = TestRequest::bearer(&parts.join("."));
    assert_unauthorized(run(&config, &mut req).await, Status::JwtVerificationFail);

    // Clock skew: 60 s by default, `clock_skew_seconds` otherwise.
    let late = keys.sign("RS256", "rsa-1", &with(&|c| c["exp"] = json!(now() - 30)));
    assert!(
        run(&config, &mut TestRequest::bearer(&late))
            .await
            .is_none()
    );
    let mut strict = provider(&keys.jwks());
    strict.clock_skew_seconds = 5;
    let strict = build(filter(strict));
    assert_unauthorized(
        run(&strict, &mut TestRequest::bearer(&late)).await,
        Status::JwtExpired,
    );
}

#[tokio::test]
async fn alg_none_and_algorithm_confusion_fail() {
    let keys = Keys::new();
    let config = build(filter(provider(&keys.jwks())));
    let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64(claims().to_string().as_bytes());
    for token in [
        format!("{header}.{payload}."),
        format!("{header}.{payload}.c2ln"),
    ] {
        let answer = run(&config, &mut TestRequest::bearer(&token)).await;
        let expected = if token.ends_with('.') {
            Status::JwtBadFormat
        } else {
            Status::JwtHeaderNotImplementedAlg
        };
        assert_unauthorized(answer, expected);
    }

    // HS256 "signed" with the RSA public key's bytes (the classic confusion) against a set
    // holding only that RSA key, with and without `alg` on the key.
    let jwk: Value = serde_json::from_str(RSA_JWK).unwrap();
    let n = jwks::b64url(jwk["n"].as_str().unwrap()).unwrap();
    for jwks in [
        json!({"keys": [jwk.clone()]}),
        json!({"keys": [{"kty": "RSA", "kid": "rsa-1", "alg": "RS256", "n": jwk["n"], "e": "AQAB"}]}),
    ] {
        let config = build(filter(provider(&jwks.to_string())));
        for secret in [n.clone(), RSA_JWK.as_bytes().to_vec()] {
            let header = b64(br#"{"alg":"HS256","kid":"rsa-1"}"#);
            let signed = format!("{header}.{payload}");
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
            let tag = ring::hmac::sign(&key, signed.as_bytes());
            let token = format!("{signed}.{}", b64(tag.as_ref()));
            let answer = run(&config, &mut TestRequest::bearer(&token)).await;
            let answer = answer.expect("confused token accepted");
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        }
    }
}

#[tokio::test]
async fn audiences_are_compared_as_envoy_does_and_refused_with_403() {
    let keys = Keys::new();
    let config = build(filter(provider(&keys.jwks())));
    let token = |aud: Value| {
        let mut c = claims();
        c["aud"] = aud;
        keys.sign("ES256", "ec-256", &c)
    };
    let answer = run(&config, &mut TestRequest::bearer(&token(json!("other")))).await;
    let answer = answer.expect("rejected");
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(answer.body["error"]["code"], "forbidden");
    assert_eq!(message(&answer), "Audiences in Jwt are not allowed");
    assert_eq!(
        answer.challenge.as_deref(),
        Some("Bearer realm=\"https://api.example/items?x=1\", error=\"invalid_token\"")
    );
    // Scheme prefixes and a trailing slash are ignored; one listed audience is enough.
    for aud in [json!("https://api/"), json!(["x", "http://api"])] {
        assert!(
            run(&config, &mut TestRequest::bearer(&token(aud.clone())))
                .await
                .is_none(),
            "{aud}"
        );
    }
    // No audiences configured: any.
    let mut any = provider(&keys.jwks());
    any.audiences.clear();
    let any = build(filter(any));
    assert!(
        run(&any, &mut TestRequest::bearer(&token(json!("other"))))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn a_missing_token_gets_a_challenge_without_error() {
    let keys = Keys::new();
    let config = build(filter(provider(&keys.jwks())));
    let answer = run(&config, &mut TestRequest::get("/items?x=1"))
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(message(&answer), "Jwt is missing");
    assert_eq!(
        answer.challenge.as_deref(),
        Some("Bearer realm=\"https://api.example/items?x=1\"")
    );
    // A lowercase scheme is not the `Bearer ` prefix: missing, as in Envoy.
    let token = keys.sign("RS256", "rsa-1", &claims());
    let mut req = TestRequest::get("/items?x=1");
    req.header("authorization", &format!("bearer {token}"));
    assert_eq!(
        message(&run(&config, &mut req).await.unwrap()),
        "Jwt is missing"
    );

    // strip_failure_response: the status alone.
    let mut proto = filter(provider(&keys.jwks()));
    proto.strip_failure_response = true;
    let stripped = build(proto);
    let answer = run(&stripped, &mut TestRequest::get("/")).await.unwrap();
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert!(answer.challenge.is_none());
    assert_eq!(answer.body, Value::Null);
}

// ---------------------------------------------------------------------------------------------
// Extraction, forwarding, claims

#[tokio::test]
async fn tokens_are_found_in_params_headers_and_cookies() {
    let keys = Keys::new();
    let token = keys.sign("ES256", "ec-256", &claims());

    // Default locations: the `access_token` parameter, removed from the path after success.
    let config = build(filter(provider(&keys.jwks())));
    // The rest of the query is written back as Envoy 1.40 does: sorted, values decoded.
    let mut req = TestRequest::get(&format!(
        "/a?y=2&flag&access_token={token}&x=1%2F&y=1&s=a%20b"
    ));
    assert!(run(&config, &mut req).await.is_none());
    assert_eq!(req.path, "/a?flag=&s=a%20b&x=1/&y=2&y=1");
    let mut req = TestRequest::get(&format!("/a?access%5Ftoken={token}"));
    assert!(run(&config, &mut req).await.is_none());
    assert_eq!(req.path, "/a");
    let mut req = TestRequest::get(&format!("/a?access_token={token}"));
    assert!(run(&config, &mut req).await.is_none());
    assert_eq!(req.path, "/a");

    // Configured locations replace the defaults.
    let mut custom = provider(&keys.jwks());
    custom.from_headers = vec![jwt_pb::JwtHeader {
        name: "X-Jwt".into(),
        value_prefix: "jwt_value".into(),
    }];
    custom.from_params = vec!["jwt".into()];
    custom.from_cookies = vec!["session".into()];
    let config = build(filter(custom));
    let mut req = TestRequest::get("/");
    req.header("x-jwt", &format!("beta:true,jwt_value:\"{token}\",trace=1"));
    assert!(run(&config, &mut req).await.is_none());
    assert!(req.headers.get("x-jwt").is_none());

    let mut req = TestRequest::get(&format!("/?jwt={token}"));
    assert!(run(&config, &mut req).await.is_none());
    assert_eq!(req.path, "/");

    let mut req = TestRequest::get("/");
    req.header("cookie", &format!("a=b; session=\"{token}\""));
    assert!(run(&config, &mut req).await.is_none());
    // Envoy never removes a cookie token.
    assert!(req.headers.get("cookie").is_some());

    // `Authorization: Bearer` is not looked at any more.
    let mut req = TestRequest::bearer(&token);
    assert_eq!(
        message(&run(&config, &mut req).await.unwrap()),
        "Jwt is missing"
    );
}

#[tokio::test]
async fn every_token_found_must_be_valid() {
    let keys = Keys::new();
    let config = build(filter(provider(&keys.jwks())));
    let good = keys.sign("ES256", "ec-256", &claims());
    let mut expired = claims();
    expired["exp"] = json!(now() - 3600);
    let bad = keys.sign("ES256", "ec-256", &expired);
    let mut req = TestRequest::get(&format!("/?access_token={bad}"));
    req.header("authorization", &format!("Bearer {good}"));
    assert_eq!(
        message(&run(&config, &mut req).await.unwrap()),
        "Jwt is expired"
    );
}

#[tokio::test]
async fn forward_keeps_the_token_and_payload_and_claims_are_forwarded() {
    let keys = Keys::new();
    let mut p = provider(&keys.jwks());
    p.forward = true;
    p.forward_payload_header = "x-jwt-payload".into();
    p.pad_forward_payload_header = true;
    let claim = |header: &str, name: &str| jwt_pb::JwtClaimToHeader {
        header_name: header.into(),
        claim_name: name.into(),
        ..Default::default()
    };
    p.claim_to_headers = vec![
        claim("x-sub", "sub"),
        claim("x-tenant", "org.tenant"),
        claim("x-level", "level"),
        claim("x-ratio", "ratio"),
        claim("x-admin", "admin"),
        claim("x-roles", "roles"),
        claim("x-obj", "obj"),
        claim("x-neg", "neg"),
        claim("x-big", "big"),
        claim("x-absent", "nope"),
        jwt_pb::JwtClaimToHeader {
            header_name: "x-url-claim".into(),
            claim_path: vec![jwt_pb::jwt_claim_to_header::PathSegment {
                key: "https://example.org/group".into(),
            }],
            ..Default::default()
        },
    ];
    let config = build(filter(p));
    let mut c = claims();
    c["org"] = json!({"tenant": "acme"});
    c["level"] = json!(3);
    c["ratio"] = json!(1.5);
    c["admin"] = json!(true);
    c["roles"] = json!(["a", "b"]);
    c["obj"] = json!({"k": 1, "a": [true, null]});
    c["neg"] = json!(-2);
    c["big"] = json!(1e20);
    c["https://example.org/group"] = json!("eng");
    let token = keys.sign("RS256", "rsa-1", &c);
    let mut req = TestRequest::bearer(&token);
    // A client cannot send its own claim headers.
    req.header("x-sub", "mallory");
    assert!(run(&config, &mut req).await.is_none());
    let h = |name: &str| {
        req.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(h("authorization"), Some(format!("Bearer {token}")));
    assert_eq!(req.headers.get_all("x-sub").iter().count(), 1);
    assert_eq!(h("x-sub").as_deref(), Some("alice"));
    assert_eq!(h("x-tenant").as_deref(), Some("acme"));
    assert_eq!(h("x-level").as_deref(), Some("3"));
    assert_eq!(h("x-ratio").as_deref(), Some("1.500000"));
    assert_eq!(h("x-admin").as_deref(), Some("true"));
    assert_eq!(
        h("x-roles"),
        Some(base64::engine::general_purpose::STANDARD.encode(r#"["a","b"]"#))
    );
    // Values as an Envoy 1.40 upstream received them for the same claims.
    assert_eq!(
        h("x-obj").as_deref(),
        Some("eyJhIjpbdHJ1ZSxudWxsXSwiayI6MX0=")
    );
    assert_eq!(h("x-neg").as_deref(), Some("-2.000000"));
    assert_eq!(h("x-big").as_deref(), Some("100000000000000000000.000000"));
    assert_eq!(h("x-absent"), None);
    assert_eq!(h("x-url-claim").as_deref(), Some("eng"));
    let payload = h("x-jwt-payload").unwrap();
    assert_eq!(payload.len() % 4, 0);
    assert!(payload.starts_with(token.split('.').nth(1).unwrap()));

    // Claim headers are removed even where no rule requires a token.
    let mut proto = filter(provider(&keys.jwks()));
    proto.providers.get_mut("p").unwrap().claim_to_headers = vec![claim("x-sub", "sub")];
    proto.rules = vec![rule("/private", Some(requires("p")))];
    let config = build(proto);
    let mut req = TestRequest::get("/public");
    req.header("x-sub", "mallory");
    assert!(run(&config, &mut req).await.is_none());
    assert!(req.headers.get("x-sub").is_none());
}

// ---------------------------------------------------------------------------------------------
// Requirements, rules, per-route config

fn two_providers(keys: &Keys, requirement: jwt_pb::JwtRequirement) -> JwtAuthn {
    let mut a = provider(&keys.jwks());
    a.from_headers = vec![jwt_pb::JwtHeader {
        name: "x-a".into(),
        value_prefix: String::new(),
    }];
    let mut b = provider(&keys.jwks());
    b.issuer = "https://b.example".into();
    b.from_headers = vec![jwt_pb::JwtHeader {
        name: "x-b".into(),
        value_prefix: String::new(),
    }];
    build(jwt_pb::JwtAuthentication {
        providers: HashMap::from([("a".to_owned(), a), ("b".to_owned(), b)]),
        rules: vec![rule("/", Some(requirement))],
        ..Default::default()
    })
}

fn list(kind: &str, items: Vec<jwt_pb::JwtRequirement>) -> jwt_pb::JwtRequirement {
    use jwt_pb::jwt_requirement::RequiresType;
    jwt_pb::JwtRequirement {
        requires_type: Some(match kind {
            "any" => RequiresType::RequiresAny(jwt_pb::JwtRequirementOrList {
                requirements: items,
            }),
            _ => RequiresType::RequiresAll(jwt_pb::JwtRequirementAndList {
                requirements: items,
            }),
        }),
    }
}

fn allow_missing(or_failed: bool) -> jwt_pb::JwtRequirement {
    use jwt_pb::jwt_requirement::RequiresType;
    jwt_pb::JwtRequirement {
        requires_type: Some(if or_failed {
            RequiresType::AllowMissingOrFailed(Default::default())
        } else {
            RequiresType::AllowMissing(Default::default())
        }),
    }
}

#[tokio::test]
async fn requires_any_and_all_combine_providers() {
    let keys = Keys::new();
    let a_token = keys.sign("ES256", "ec-256", &claims());
    let mut b_claims = claims();
    b_claims["iss"] = json!("https://b.example");
    let b_token = keys.sign("ES256", "ec-256", &b_claims);

    let any = two_providers(&keys, list("any", vec![requires("a"), requires("b")]));
    let mut req = TestRequest::get("/");
    req.header("x-b", &b_token);
    assert!(run(&any, &mut req).await.is_none());
    assert_eq!(
        message(&run(&any, &mut TestRequest::get("/")).await.unwrap()),
        "Jwt is missing"
    );
    // A real error beats a missing token.
    let mut req = TestRequest::get("/");
    req.header("x-a", "garbage");
    assert_eq!(
        message(&run(&any, &mut req).await.unwrap()),
        Status::JwtBadFormat.message()
    );

    let all = two_providers(&keys, list("all", vec![requires("a"), requires("b")]));
    let mut req = TestRequest::get("/");
    req.header("x-a", &a_token).header("x-b", &b_token);
    assert!(run(&all, &mut req).await.is_none());
    let mut req = TestRequest::get("/");
    req.header("x-a", &a_token);
    assert_eq!(
        message(&run(&all, &mut req).await.unwrap()),
        "Jwt is missing"
    );

    // allow_missing inside requires_any: no token passes, a bad one does not.
    let optional = two_providers(
        &keys,
        list("any", vec![requires("a"), allow_missing(false)]),
    );
    assert!(run(&optional, &mut TestRequest::get("/")).await.is_none());
    let mut req = TestRequest::get("/");
    req.header("x-a", "garbage");
    assert!(run(&optional, &mut req).await.is_some());

    // allow_missing_or_failed: anything passes; valid tokens are still processed.
    let lenient = two_providers(&keys, allow_missing(true));
    let mut req = TestRequest::get("/");
    req.header("x-a", "garbage");
    assert!(run(&lenient, &mut req).await.is_none());
    let mut req = TestRequest::get("/");
    req.header("x-b", &b_token);
    assert!(run(&lenient, &mut req).await.is_none());
    assert!(
        req.headers.get("x-b").is_none(),
        "a valid token is stripped"
    );

    // allow_missing alone: tokens of any provider, matched by issuer.
    let missing_ok = two_providers(&keys, allow_missing(false));
    assert!(run(&missing_ok, &mut TestRequest::get("/")).await.is_none());
    let mut req = TestRequest::get("/");
    req.header("x-b", &a_token);
    assert_eq!(
        message(&run(&missing_ok, &mut req).await.unwrap()),
        "Jwt issuer is not configured"
    );
}

/// Runs the filter; its answer's status (`None`: passed) and the metadata it left.
async fn run_for_metadata(
    config: &JwtAuthn,
    req: &mut TestRequest,
) -> (Option<StatusCode>, Vec<(String, Value)>) {
    let mut request = crate::filter::Request {
        method: &req.method,
        scheme: "https",
        authority: "api.example",
        path_and_query: &mut req.path,
        headers: &mut req.headers,
        addresses: crate::proxy::headers::Addresses::direct([192, 0, 2, 1].into()),
    };
    let mut metadata = Metadata::default();
    let upstreams = Upstreams::default();
    let answer = on_request(config, None, &upstreams, &mut request, &mut metadata).await;
    let kept = metadata
        .jwt
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Value::clone(&v)))
        .collect();
    (answer.map(|r| r.status()), kept)
}

#[tokio::test]
async fn verified_payloads_are_kept_for_rbac_with_scopes_split() {
    let keys = Keys::new();
    let mut p = provider(&keys.jwks());
    p.payload_in_metadata = "jwt_payload".into();
    p.header_in_metadata = "jwt_header".into();
    p.normalize_payload_in_metadata = Some(jwt_pb::jwt_provider::NormalizePayload {
        space_delimited_claims: vec!["scope".into(), "empty".into(), "n".into()],
    });
    let config = build(filter(p));
    let mut claims = claims();
    claims["scope"] = json!(" orders:read  orders:write ");
    claims["empty"] = json!("  ");
    claims["n"] = json!(7);
    claims["org"] = json!({"scope": "a b"});
    let token = keys.sign("RS256", "rsa-1", &claims);
    let (answer, kept) = run_for_metadata(&config, &mut TestRequest::bearer(&token)).await;
    assert_eq!(answer, None);
    let [(header_key, header), (payload_key, payload)] = kept.as_slice() else {
        panic!("{kept:?}")
    };
    assert_eq!(
        (header_key.as_str(), payload_key.as_str()),
        ("jwt_header", "jwt_payload")
    );
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["kid"], "rsa-1");
    // Only top-level string claims with a word become lists.
    assert_eq!(payload["scope"], json!(["orders:read", "orders:write"]));
    assert_eq!(payload["empty"], "  ");
    assert_eq!(payload["n"], 7);
    assert_eq!(payload["org"]["scope"], "a b");
    assert_eq!(payload["sub"], "alice");

    // A failed requirement leaves nothing; nor does a provider without the keys.
    let mut expired = claims.clone();
    expired["exp"] = json!(now() - 3600);
    let token = keys.sign("RS256", "rsa-1", &expired);
    let (answer, kept) = run_for_metadata(&config, &mut TestRequest::bearer(&token)).await;
    assert_eq!(answer, Some(StatusCode::UNAUTHORIZED));
    assert!(kept.is_empty());
    let plain = build(filter(provider(&keys.jwks())));
    let token = keys.sign("RS256", "rsa-1", &claims);
    let (answer, kept) = run_for_metadata(&plain, &mut TestRequest::bearer(&token)).await;
    assert_eq!(answer, None);
    assert!(kept.is_empty());
}

#[tokio::test]
async fn a_cached_token_gives_the_same_result_and_is_still_checked_per_route() {
    let keys = Keys::new();
    let mut p = provider(&keys.jwks());
    p.payload_in_metadata = "jwt_payload".into();
    p.normalize_payload_in_metadata = Some(jwt_pb::jwt_provider::NormalizePayload {
        space_delimited_claims: vec!["scope".into()],
    });
    p.claim_to_headers = vec![jwt_pb::JwtClaimToHeader {
        header_name: "x-user-id".into(),
        claim_name: "sub".into(),
        ..Default::default()
    }];
    let mut proto = filter(p);
    // `/admin` asks for an audience the token does not carry.
    proto.rules.insert(
        0,
        jwt_pb::RequirementRule {
            requirement_type: Some(jwt_pb::requirement_rule::RequirementType::Requires(
                jwt_pb::JwtRequirement {
                    requires_type: Some(
                        jwt_pb::jwt_requirement::RequiresType::ProviderAndAudiences(
                            jwt_pb::ProviderWithAudiences {
                                provider_name: "p".into(),
                                audiences: vec!["admin".into()],
                            },
                        ),
                    ),
                },
            )),
            ..rule("/admin", None)
        },
    );
    let config = build(proto);
    let mut claims = claims();
    claims["scope"] = json!("read write");
    let token = keys.sign("RS256", "rsa-1", &claims);

    // The first request verifies and caches the token; the second takes it from the cache:
    // both forward the same claim header and leave the same metadata.
    let mut seen = Vec::new();
    for _ in 0..2 {
        let mut req = TestRequest::bearer(&token);
        let (answer, kept) = run_for_metadata(&config, &mut req).await;
        assert_eq!(answer, None);
        assert_eq!(req.headers["x-user-id"], "alice");
        assert!(req.headers.get("authorization").is_none(), "token removed");
        seen.push(kept);
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(
        seen[1],
        vec![(
            "jwt_payload".to_owned(),
            json!({"iss": ISSUER, "sub": "alice", "aud": "api", "exp": claims["exp"],
                   "scope": ["read", "write"]})
        )]
    );
    // The cached token is still refused where its audience is not allowed.
    let mut req = TestRequest::bearer(&token);
    req.path = Cow::Borrowed("/admin/users");
    let answer = run(&config, &mut req).await.unwrap();
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(message(&answer), "Audiences in Jwt are not allowed");
    // A token differing from the cached one in a single byte of its signature is checked again.
    let at = token.len() - 10;
    let flipped = if &token[at..=at] == "A" { "B" } else { "A" };
    let forged = format!("{}{flipped}{}", &token[..at], &token[at + 1..]);
    let answer = run(&config, &mut TestRequest::bearer(&forged)).await;
    assert_unauthorized(answer, Status::JwtVerificationFail);
}

#[tokio::test]
async fn per_route_config_picks_or_disables_the_requirement() {
    let keys = Keys::new();
    let mut proto = filter(provider(&keys.jwks()));
    proto.rules.clear();
    proto.requirement_map = BTreeMap::from([("strict".to_owned(), requires("p"))])
        .into_iter()
        .collect();
    let config = build(proto);
    let upstreams = Upstreams::default();
    // No rule, no per-route config: nothing is required.
    assert!(run(&config, &mut TestRequest::get("/")).await.is_none());
    let strict = PerRoute::Requirement("strict".into());
    let answer = run_with(
        &config,
        Some(&strict),
        &upstreams,
        &mut TestRequest::get("/"),
    )
    .await;
    assert_eq!(message(&answer.unwrap()), "Jwt is missing");
    let disabled = PerRoute::Disabled;
    assert!(
        run_with(
            &config,
            Some(&disabled),
            &upstreams,
            &mut TestRequest::get("/")
        )
        .await
        .is_none()
    );
    let unknown = PerRoute::Requirement("lax".into());
    let answer = run_with(
        &config,
        Some(&unknown),
        &upstreams,
        &mut TestRequest::get("/"),
    )
    .await
    .unwrap();
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert!(answer.challenge.is_none());
    assert_eq!(
        message(&answer),
        "Failed JWT authentication: Wrong requirement_name: lax. It should be one of [strict]"
    );
}

#[tokio::test]
async fn rules_apply_in_order_and_cors_preflights_may_bypass() {
    let keys = Keys::new();
    let mut proto = filter(provider(&keys.jwks()));
    proto.rules = vec![rule("/health", None), rule("/", Some(requires("p")))];
    proto.bypass_cors_preflight = true;
    let config = build(proto);
    assert!(
        run(&config, &mut TestRequest::get("/health"))
            .await
            .is_none()
    );
    assert!(
        run(&config, &mut TestRequest::get("/items"))
            .await
            .is_some()
    );
    let mut preflight = TestRequest::get("/items");
    preflight.method = Method::OPTIONS;
    preflight
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST");
    assert!(run(&config, &mut preflight).await.is_none());
}

// ---------------------------------------------------------------------------------------------
// Remote JWKS, over real sockets

/// A JWKS server on 127.0.0.1: serves `body` with `status` after `delay`, counting requests.
struct JwksServer {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    body: Arc<Mutex<(StatusCode, String)>>,
    delay: Arc<Mutex<Duration>>,
}

impl JwksServer {
    async fn start(body: String) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = JwksServer {
            addr: listener.local_addr().unwrap(),
            hits: Arc::default(),
            body: Arc::new(Mutex::new((StatusCode::OK, body))),
            delay: Arc::default(),
        };
        let (hits, served, delay) = (
            Arc::clone(&server.hits),
            Arc::clone(&server.body),
            Arc::clone(&server.delay),
        );
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (hits, served, delay) = (hits.clone(), served.clone(), delay.clone());
                let service = hyper::service::service_fn(move |req: http::Request<_>| {
                    let (hits, served, delay) = (hits.clone(), served.clone(), delay.clone());
                    async move {
                        assert_eq!(req.uri().path(), "/.well-known/jwks.json");
                        assert_eq!(req.headers()["host"], "keys.example");
                        hits.fetch_add(1, Ordering::SeqCst);
                        let wait = *delay.lock().unwrap();
                        tokio::time::sleep(wait).await;
                        let (status, body) = served.lock().unwrap().clone();
                        let mut response = http::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from(body),
                        ));
                        *response.status_mut() = status;
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        server
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn serve(&self, status: StatusCode, body: String) {
        *self.body.lock().unwrap() = (status, body);
    }
}

/// The upstreams of a snapshot with one STATIC cluster, `jwks`, at `addr`: the shape the
/// control plane emits for a JWKS host.
fn upstreams_for(addr: SocketAddr) -> Upstreams {
    let proto = cluster_pb::Cluster {
        name: "jwks".into(),
        cluster_discovery_type: Some(cluster_pb::cluster::ClusterDiscoveryType::Type(
            cluster_pb::cluster::DiscoveryType::Static as i32,
        )),
        connect_timeout: Some(pb::Duration {
            seconds: 1,
            nanos: 0,
        }),
        load_assignment: Some(endpoint_pb::ClusterLoadAssignment {
            cluster_name: "jwks".into(),
            endpoints: vec![endpoint_pb::LocalityLbEndpoints {
                lb_endpoints: vec![endpoint_pb::LbEndpoint {
                    host_identifier: Some(endpoint_pb::lb_endpoint::HostIdentifier::Endpoint(
                        endpoint_pb::Endpoint {
                            address: Some(core_pb::Address {
                                address: Some(core_pb::address::Address::SocketAddress(
                                    core_pb::SocketAddress {
                                        address: addr.ip().to_string(),
                                        port_specifier: Some(
                                            core_pb::socket_address::PortSpecifier::PortValue(
                                                u32::from(addr.port()),
                                            ),
                                        ),
                                        ..Default::default()
                                    },
                                )),
                            }),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let cluster = Cluster::try_from(&proto).expect("STATIC clusters with inline endpoints");
    let snapshot = Snapshot {
        version: "1".into(),
        versions: BTreeMap::new(),
        listeners: BTreeMap::new(),
        route_tables: BTreeMap::new(),
        clusters: BTreeMap::from([("jwks".to_owned(), cluster)]),
        endpoints: BTreeMap::new(),
        certificates: BTreeMap::new(),
        api_key_tables: BTreeMap::new(),
    };
    Upstreams::build(&snapshot, None)
}

fn remote_provider(timeout_ms: i32, cache_seconds: i64) -> jwt_pb::JwtProvider {
    jwt_pb::JwtProvider {
        issuer: ISSUER.into(),
        jwks_source_specifier: Some(jwt_pb::jwt_provider::JwksSourceSpecifier::RemoteJwks(
            jwt_pb::RemoteJwks {
                http_uri: Some(core_pb::HttpUri {
                    uri: "https://keys.example/.well-known/jwks.json".into(),
                    timeout: Some(pb::Duration {
                        seconds: i64::from(timeout_ms / 1000),
                        nanos: (timeout_ms % 1000) * 1_000_000,
                    }),
                    http_upstream_type: Some(core_pb::http_uri::HttpUpstreamType::Cluster(
                        "jwks".into(),
                    )),
                }),
                cache_duration: Some(pb::Duration {
                    seconds: cache_seconds,
                    nanos: 0,
                }),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

#[tokio::test]
async fn remote_keys_are_fetched_once_cached_and_refetched_for_a_new_kid() {
    let keys = Keys::new();
    let rsa: Value = serde_json::from_str(RSA_JWK).unwrap();
    let server = JwksServer::start(json!({"keys": [rsa]}).to_string()).await;
    let upstreams = upstreams_for(server.addr);
    let config = build(filter(remote_provider(900, 600)));
    let token = keys.sign("RS256", "rsa-1", &claims());

    // Concurrent first requests share one fetch.
    let runs = (0..4).map(|_| {
        let (config, upstreams, token) = (&config, &upstreams, token.clone());
        async move { run_with(config, None, upstreams, &mut TestRequest::bearer(&token)).await }
    });
    for answer in futures_join_all(runs).await {
        assert!(answer.is_none());
    }
    assert_eq!(server.hits(), 1);
    assert!(
        run_with(&config, None, &upstreams, &mut TestRequest::bearer(&token))
            .await
            .is_none()
    );
    assert_eq!(server.hits(), 1, "cached");

    // The issuer rotates to a new key: a token with its kid refetches once. Not within
    // KID_MISS_REFETCH_INTERVAL of the last fetch, though.
    let other: Value = serde_json::from_str(RSA_OTHER_JWK).unwrap();
    server.serve(StatusCode::OK, json!({"keys": [rsa, other]}).to_string());
    let rotated = keys.sign("RS256-other", "rsa-2", &claims());
    let answer = run_with(
        &config,
        None,
        &upstreams,
        &mut TestRequest::bearer(&rotated),
    )
    .await;
    assert_eq!(
        message(&answer.unwrap()),
        "Jwks doesn't have key to match kid or alg from Jwt"
    );
    assert_eq!(server.hits(), 1, "fetched too recently");
    let Jwks::Remote(remote) = &config.providers[0].jwks else {
        unreachable!()
    };
    remote.cache.pretend_last_fetch_is_old();
    assert!(
        run_with(
            &config,
            None,
            &upstreams,
            &mut TestRequest::bearer(&rotated)
        )
        .await
        .is_none()
    );
    assert_eq!(server.hits(), 2);
    // Another unknown kid within the bound does not fetch again.
    let unknown = keys.sign("RS256", "rsa-9", &claims());
    let answer = run_with(
        &config,
        None,
        &upstreams,
        &mut TestRequest::bearer(&unknown),
    )
    .await;
    assert_eq!(
        message(&answer.unwrap()),
        "Jwks doesn't have key to match kid or alg from Jwt"
    );
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn remote_keys_expire_after_cache_duration_and_fetch_failures_answer_401() {
    let keys = Keys::new();
    let rsa: Value = serde_json::from_str(RSA_JWK).unwrap();
    let server = JwksServer::start("not json".into()).await;
    let upstreams = upstreams_for(server.addr);
    let config = build(filter(remote_provider(900, 1)));
    let token = keys.sign("RS256", "rsa-1", &claims());

    let answer = run_with(&config, None, &upstreams, &mut TestRequest::bearer(&token)).await;
    assert_unauthorized(answer, Status::JwksFetchFail);
    server.serve(StatusCode::SERVICE_UNAVAILABLE, "{}".into());
    let answer = run_with(&config, None, &upstreams, &mut TestRequest::bearer(&token)).await;
    assert_unauthorized(answer, Status::JwksFetchFail);

    server.serve(StatusCode::OK, json!({"keys": [rsa]}).to_string());
    assert!(
        run_with(&config, None, &upstreams, &mut TestRequest::bearer(&token))
            .await
            .is_none()
    );
    let before = server.hits();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Another token: the one above is in the provider's cache of verified tokens and needs no
    // keys until it expires.
    let mut other_claims = claims();
    other_claims["sub"] = json!("someone-else");
    let other = keys.sign("RS256", "rsa-1", &other_claims);
    assert!(
        run_with(&config, None, &upstreams, &mut TestRequest::bearer(&other))
            .await
            .is_none()
    );
    assert_eq!(server.hits(), before + 1, "refetched after cache_duration");
    assert!(
        run_with(&config, None, &upstreams, &mut TestRequest::bearer(&token))
            .await
            .is_none()
    );
    assert_eq!(server.hits(), before + 1, "a verified token needs no keys");

    // A cluster that does not exist fails the same way.
    let elsewhere = Upstreams::default();
    let fresh = build(filter(remote_provider(900, 1)));
    let answer = run_with(&fresh, None, &elsewhere, &mut TestRequest::bearer(&token)).await;
    assert_unauthorized(answer, Status::JwksFetchFail);
}

#[tokio::test]
async fn a_slow_jwks_server_delays_only_its_own_provider() {
    let keys = Keys::new();
    let rsa: Value = serde_json::from_str(RSA_JWK).unwrap();
    let server = JwksServer::start(json!({"keys": [rsa]}).to_string()).await;
    *server.delay.lock().unwrap() = Duration::from_millis(1500);
    let upstreams = Arc::new(upstreams_for(server.addr));

    let mut local = provider(&keys.jwks());
    local.from_headers = vec![jwt_pb::JwtHeader {
        name: "x-local".into(),
        value_prefix: String::new(),
    }];
    let config = Arc::new(build(jwt_pb::JwtAuthentication {
        providers: HashMap::from([
            ("remote".to_owned(), remote_provider(5000, 600)),
            ("local".to_owned(), local),
        ]),
        rules: vec![
            rule("/local", Some(requires("local"))),
            rule("/", Some(requires("remote"))),
        ],
        ..Default::default()
    }));
    let token = keys.sign("RS256", "rsa-1", &claims());
    let slow = {
        let (config, upstreams, token) =
            (Arc::clone(&config), Arc::clone(&upstreams), token.clone());
        tokio::spawn(async move {
            run_with(&config, None, &upstreams, &mut TestRequest::bearer(&token))
                .await
                .is_none()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let mut req = TestRequest::get("/local");
    req.header("x-local", &token);
    assert!(
        run_with(&config, None, &upstreams, &mut req)
            .await
            .is_none()
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert!(!slow.is_finished());
    assert!(slow.await.unwrap());
}

#[tokio::test]
async fn a_timed_out_fetch_fails_the_request() {
    let keys = Keys::new();
    let server = JwksServer::start("{}".into()).await;
    *server.delay.lock().unwrap() = Duration::from_secs(5);
    let upstreams = upstreams_for(server.addr);
    let config = build(filter(remote_provider(200, 600)));
    let started = std::time::Instant::now();
    let token = keys.sign("RS256", "rsa-1", &claims());
    let answer = run_with(&config, None, &upstreams, &mut TestRequest::bearer(&token)).await;
    assert_unauthorized(answer, Status::JwksFetchFail);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn async_fetch_loads_keys_before_the_first_request() {
    let keys = Keys::new();
    let rsa: Value = serde_json::from_str(RSA_JWK).unwrap();
    let server = JwksServer::start(json!({"keys": [rsa]}).to_string()).await;
    let mut p = remote_provider(900, 600);
    if let Some(jwt_pb::jwt_provider::JwksSourceSpecifier::RemoteJwks(remote)) =
        &mut p.jwks_source_specifier
    {
        remote.async_fetch = Some(jwt_pb::JwksAsyncFetch::default());
    }
    let config = Arc::new(build(filter(p)));
    let upstreams = Arc::new(upstreams_for(server.addr));
    let plane: crate::proxy::SharedDataPlane = Arc::new(arc_swap::ArcSwapOption::from_pointee(
        crate::proxy::DataPlane {
            snapshot: Arc::new(Snapshot {
                version: "1".into(),
                versions: BTreeMap::new(),
                listeners: BTreeMap::new(),
                route_tables: BTreeMap::new(),
                clusters: BTreeMap::new(),
                endpoints: BTreeMap::new(),
                certificates: BTreeMap::new(),
                api_key_tables: BTreeMap::new(),
            }),
            upstreams: Arc::clone(&upstreams),
            quotas: crate::filter::rate_limit::Quotas::in_process(),
        },
    ));
    let Jwks::Remote(remote) = &config.providers[0].jwks else {
        unreachable!()
    };
    remote::start_background(remote, &plane);
    remote::start_background(remote, &plane);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while server.hits() == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.hits(), 1, "one background fetch");
    let token = keys.sign("RS256", "rsa-1", &claims());
    assert!(
        run_with(&config, None, &upstreams, &mut TestRequest::bearer(&token))
            .await
            .is_none()
    );
    assert_eq!(server.hits(), 1, "the request used the fetched keys");
}

/// `futures::future::join_all` without the dependency: runs the futures concurrently.
async fn futures_join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut pinned: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, slot) in pinned.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(Option::unwrap).collect()
}
