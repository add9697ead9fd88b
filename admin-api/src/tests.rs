//! In-process tests of the admin API (axum `oneshot`, no sockets).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tollgate_control_plane::store::Store;
use tollgate_control_plane::xds::nodes::NodeRegistry;
use tower::ServiceExt;

use crate::{AdminState, router};

const TOKEN: &str = "test-token-0123456789";
const READ_ONLY: &str = "read-only-token-0123456789";

fn app() -> (axum::Router, Store) {
    let store = Store::in_memory();
    let state = AdminState {
        store: store.clone(),
        registry: Arc::new(NodeRegistry::default()),
        admin_token: TOKEN.into(),
        read_only_token: Some(READ_ONLY.into()),
    };
    (router(state), store)
}

async fn call(
    app: &axum::Router,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request
        .header("content-type", "application/json")
        .body(body.map_or_else(Body::empty, Body::from))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    (status, value)
}

async fn put(app: &axum::Router, path: &str, body: Value) -> (StatusCode, Value) {
    call(
        app,
        Method::PUT,
        path,
        Some(body.to_string().into_bytes()),
        Some(TOKEN),
    )
    .await
}

/// method, path, body, expected status, error code and field.
type BadRequest = (
    Method,
    &'static str,
    Option<Vec<u8>>,
    StatusCode,
    &'static str,
    Option<&'static str>,
);

fn error_of(body: &Value) -> (&str, Option<&str>) {
    (
        body["error"]["code"].as_str().unwrap(),
        body["error"]["field"].as_str(),
    )
}

#[tokio::test]
async fn put_get_list_delete_round_trip() {
    let (app, _) = app();
    let (status, body) = put(
        &app,
        "/v1/clusters/web",
        json!({"endpoints": [{"address": "10.0.0.1", "port": 80}]}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["revision"], 1);
    assert_eq!(body["cluster"]["name"], "web");
    assert_eq!(body["cluster"]["lb_policy"], "round_robin");

    let (status, body) = put(
        &app,
        "/v1/clusters/web",
        json!({"endpoints": [{"address": "10.0.0.1", "port": 80}]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (body["revision"].as_u64(), body["changed"].as_bool()),
        (Some(1), Some(false)),
        "idempotent"
    );

    let (status, body) = put(
        &app,
        "/v1/routes/all",
        json!({"match": {"path_prefix": "/"}, "cluster": "web"}),
    )
    .await;
    assert_eq!(
        (status, body["revision"].as_u64()),
        (StatusCode::CREATED, Some(2))
    );

    let (status, body) = call(&app, Method::GET, "/v1/routes/all", None, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["cluster"], "web");
    let (_, body) = call(&app, Method::GET, "/v1/clusters", None, Some(TOKEN)).await;
    assert_eq!(body["items"].as_array().unwrap().len(), 1);

    let (status, body) = call(&app, Method::DELETE, "/v1/routes/all", None, Some(TOKEN)).await;
    assert_eq!(
        (status, body["revision"].as_u64()),
        (StatusCode::OK, Some(3))
    );
    let (status, _) = call(&app, Method::GET, "/v1/routes/all", None, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn config_bytes(app: &axum::Router) -> Vec<u8> {
    let request = Request::get("/v1/config")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec()
}

fn body(json: &str) -> Option<Vec<u8>> {
    Some(json.as_bytes().to_vec())
}

#[tokio::test]
async fn bad_requests_name_the_field_and_change_nothing() {
    let (app, _) = app();
    put(
        &app,
        "/v1/clusters/web",
        json!({"endpoints": [{"address": "10.0.0.1", "port": 80}]}),
    )
    .await;
    put(
        &app,
        "/v1/routes/all",
        json!({"match": {"path_prefix": "/"}, "cluster": "web"}),
    )
    .await;
    put(&app, "/v1/listeners/public", json!({"port": 8080})).await;
    put(
        &app,
        "/v1/policies/auth",
        json!({"type": "jwt", "issuer": "https://idp", "jwks_uri": "http://127.0.0.1:9/jwks"}),
    )
    .await;
    put(
        &app,
        "/v1/routes/private",
        json!({"match": {"path_prefix": "/private"}, "cluster": "web", "policies": ["auth"]}),
    )
    .await;
    put(
        &app,
        "/v1/policies/per-consumer",
        json!({"type": "rate_limit", "key": ["consumer"], "limit": {"requests": 10, "window_s": 60}}),
    )
    .await;
    let before = config_bytes(&app).await;
    let long_name = format!("/v1/clusters/{}", "a".repeat(10 * 1024));
    let long_name: &'static str = Box::leak(long_name.into_boxed_str());
    let long_access_log = format!(
        r#"{{"port": 80, "access_log": {{"path": "/{}"}}}}"#,
        "a".repeat(4096)
    );
    let long_access_log: &'static str = Box::leak(long_access_log.into_boxed_str());
    let endpoint = |fields: &str| {
        format!(r#"{{"endpoints": [{{"address": "10.0.0.9", "port": 81{fields}}}]}}"#)
    };

    use Method as M;
    use StatusCode as S;
    let cases: Vec<BadRequest> = vec![
        // Malformed bodies.
        (
            M::PUT,
            "/v1/clusters/x",
            body("{not json"),
            S::BAD_REQUEST,
            "invalid_json",
            None,
        ),
        (
            M::PUT,
            "/v1/clusters/x",
            body(""),
            S::BAD_REQUEST,
            "invalid_json",
            None,
        ),
        (
            M::PUT,
            "/v1/clusters/x",
            body("{} trailing"),
            S::BAD_REQUEST,
            "invalid_json",
            None,
        ),
        (
            M::PUT,
            "/v1/clusters/x",
            body("[]"),
            S::BAD_REQUEST,
            "invalid_json",
            None,
        ),
        // Wrong types and ranges.
        (
            M::PUT,
            "/v1/clusters/x",
            body(r#"{"endpoints": [{"address": "1.2.3.4", "port": "80"}]}"#),
            S::BAD_REQUEST,
            "invalid_json",
            Some("endpoints[0].port"),
        ),
        (
            M::PUT,
            "/v1/clusters/x",
            body(r#"{"endpoints": [{"address": "1.2.3.4", "port": 70000}]}"#),
            S::BAD_REQUEST,
            "invalid_json",
            Some("endpoints[0].port"),
        ),
        (
            M::PUT,
            "/v1/clusters/x",
            body(r#"{"endpoints": [{"address": "1.2.3.4", "port": -1}]}"#),
            S::BAD_REQUEST,
            "invalid_json",
            Some("endpoints[0].port"),
        ),
        (
            M::PUT,
            "/v1/clusters/x",
            body(r#"{"endpoints": [{"address": "1.2.3.4", "port": 0}]}"#),
            S::BAD_REQUEST,
            "invalid_field",
            Some("endpoints[0].port"),
        ),
        (
            M::PUT,
            "/v1/clusters/x",
            body(&endpoint(r#", "weight": 0"#)),
            S::BAD_REQUEST,
            "invalid_field",
            Some("endpoints[0].weight"),
        ),
        (
            M::PUT,
            "/v1/clusters/x",
            body(r#"{"endpoints": {"address": "1.2.3.4"}}"#),
            S::BAD_REQUEST,
            "invalid_json",
            Some("endpoints"),
        ),
        (
            M::PUT,
            "/v1/clusters/x",
            body(r#"{"connect_timeout_ms": 0}"#),
            S::BAD_REQUEST,
            "invalid_field",
            Some("connect_timeout_ms"),
        ),
        (
            M::PUT,
            "/v1/clusters/x",
            body(r#"{"endpoints": [{"address": "not a host!", "port": 80}]}"#),
            S::BAD_REQUEST,
            "invalid_field",
            Some("endpoints[0].address"),
        ),
        (
            M::PUT,
            "/v1/clusters/x",
            body(
                r#"{"endpoints": [{"address": "a.b", "port": 80}, {"address": "a.b", "port": 80}]}"#,
            ),
            S::BAD_REQUEST,
            "invalid_field",
            Some("endpoints[1]"),
        ),
        // Health checks, outlier detection, circuit breakers, upstream TLS.
        (
            M::PUT,
            "/v1/clusters/x",
            body(r#"{"health_check": {}}"#),
            S::BAD_REQUEST,
            "invalid_json",
            // A missing field is reported on the object that lacks it, the message names it.
            Some("health_check"),
        ),
        (
            M::PUT,
            "/v1/clusters/x",
            body(r#"{"health_check": {"path": "healthz"}}"#),
            S::BAD_REQUEST,
            "invalid_field",
            Some("health_check.path"),
        ),
        (
            M::PUT,
            "/v1/clusters/x",
            body(r#"{"health_check": {"path": "/a b"}}"#),
            S::BAD_REQUEST,
            "invalid_field",
            Some("health_check.path"),
        ),
        (
            M::PUT,
            "/v1/clusters/x",
            body(r#"{"health_check": {"path": "/", "host": "bad host"}}"#),
            S::BAD_REQUEST,
            "invalid_field",
            Some("health_check.host"),
        ),
        (
            M::PUT,
            "/v1/clusters/x",
            body(r#"{"health_check": {"path": "/", "interval_ms": 99}}"#),
            S::BAD_REQUEST,
            "invalid_field",
            Some("health_check.interval_ms"),
        ),
        (
            M::PUT,
            "/v1/clusters/x",
            body(r#"{"health_check": {"path": "/", "timeout_ms": 0}}"#),
            S::BAD_REQUEST,
            "invalid_field",
            Some("health_check.timeout_ms"),
        ),
        (
            M::PUT,
            "/v1/clusters/x",
            body(r#"{"health_check": {"path": "/", "healthy_threshold": 101}}"#),
            S::BAD_REQUEST,
            "invalid_field",
            Some("health_check.healthy_threshold"),
        ),
        (
            M::PUT,
            "/v1/clusters/x",
            body(r#"{"health_check": {"path": "/", "unhealthy_threshold": 0}}"#),
            S::BAD_REQUEST,
            "invalid_field",
            Some("health_check.unhealthy_threshold"),
        ),
        (
            M::PUT,
            "/v1/clusters/x",
            body(r#"{"health_check": {"path": "/", "expected_statuses": [200, 99]}}"#),
            S::BAD_REQUEST,
            "invalid_field",
            Some("health_check.expected_statuses[1]"),
        ),
        (
            M::PUT,
            "/v1/clusters/x",
            body(r#"{"health_check": {"path": "/", "expected_statuses": [204, 204]}}"#),
            S::BAD_REQUEST,
            "invalid_field",
            Some("health_check.expected_statuses[1]"),
        ),
        (
            M::PUT,
            "/v1/clusters/x",
            body(r#"{"health_check": {"path": "/", "expected_statuses": [70000]}}"#),
            S::BAD_REQUEST,
            "invalid_json",
            Some("health_check.expected_statuses[0]"),
        ),
        (
            M::PUT,
            "/v1/clusters/x",
            body(r#"{"health_check": {"path": "/", "method": "HEAD"}}"#),
            S::BAD_REQUEST,
            "invalid_json",
            Some("health_check.method"),
        ),
        (
            M::PUT,
            "/v1/clusters/x",
            body(r#"{"outlier_detection": {"consecutive_5xx": 0}}"#),
            S::BAD_REQUEST,
            "invalid_field",
            Some("outlier_detection.consecutive_5xx"),
        ),
        (
            M::PUT,
            "/v1/clusters/x",
            body(r#"{"outlier_detection": {"interval_ms": 10}}"#),
            S::BAD_REQUEST,
            "invalid_field",
            Some("outlier_detection.interval_ms"),
        ),
        (
            M::PUT,
            "/v1/clusters/x",
            body(r#"{"outlier_detection": {"base_ejection_time_ms": 0}}"#),
            S::BAD_REQUEST,
            "invalid_field",
            Some("outlier_detection.base_ejection_time_ms"),
        ),
        (
            M::PUT,
            "/v1/clusters/x",
            body(r#"{"outlier_detection": {"max_ejection_percent": 101}}"#),
            S::BAD_REQUEST,
            "invalid_field",
            Some("outlier_detection.max_ejection_percent"),
        ),
        (
            M::PUT,
            "/v1/clusters/x",
            body(r#"{"outlier_detection": {"success_rate": true}}"#),
            S::BAD_REQUEST,
            "invalid_json",
            Some("outlier_detection.success_rate"),
        ),
        (
            M::PUT,
            "/v1/clusters/x",
            body(r#"{"circuit_breakers": {"max_connections": 0}}"#),
            S::BAD_REQUEST,
            "invalid_field",
            Some("circuit_breakers.max_connections"),
        ),
        (
            M::PUT,
            "/v1/clusters/x",
            body(r#"{"circuit_breakers": {"max_retries": 0}}"#),
            S::BAD_REQUEST,
            "invalid_field",
            Some("circuit_breakers.max_retries"),
        ),
        (
            M::PUT,
            "/v1/clusters/x",
            body(r#"{"circuit_breakers": {"max_requests": -1}}"#),
            S::BAD_REQUEST,
            "invalid_json",
            Some("circuit_breakers.max_requests"),
        ),
        (
            M::PUT,
            "/v1/clusters/x",
            body(r#"{"tls": {}}"#),
            S::BAD_REQUEST,
            "invalid_field",
            Some("tls.trusted_ca"),
        ),
        (
            M::PUT,
            "/v1/clusters/x",
            body(r#"{"tls": {"sni": "api.example.com"}}"#),
            S::BAD_REQUEST,
            "invalid_field",
            Some("tls.trusted_ca"),
        ),
        (
            M::PUT,
            "/v1/clusters/x",
            body(r#"{"tls": {"trusted_ca": "not a certificate"}}"#),
            S::BAD_REQUEST,
            "invalid_field",
            Some("tls.trusted_ca"),
        ),
        (
            M::PUT,
            "/v1/clusters/x",
            body(r#"{"tls": {"verify": false, "trusted_ca": "-----BEGIN CERTIFICATE-----"}}"#),
            S::BAD_REQUEST,
            "invalid_field",
            Some("tls.trusted_ca"),
        ),
        (
            M::PUT,
            "/v1/clusters/x",
            body(r#"{"tls": {"verify": false, "sni": "not a name!"}}"#),
            S::BAD_REQUEST,
            "invalid_field",
            Some("tls.sni"),
        ),
        (
            M::PUT,
            "/v1/clusters/x",
            body(r#"{"tls": {"verify": "no"}}"#),
            S::BAD_REQUEST,
            "invalid_json",
            Some("tls.verify"),
        ),
        // Unknown enum values and fields.
        (
            M::PUT,
            "/v1/clusters/x",
            body(r#"{"lb_policy": "fastest"}"#),
            S::BAD_REQUEST,
            "invalid_json",
            Some("lb_policy"),
        ),
        (
            M::PUT,
            "/v1/clusters/x",
            body(r#"{"endpoints": [], "colour": "red"}"#),
            S::BAD_REQUEST,
            "invalid_json",
            Some("colour"),
        ),
        (
            M::PUT,
            "/v1/routes/r",
            body(r#"{"match": {"path_prefix": "/", "hostz": []}, "cluster": "web"}"#),
            S::BAD_REQUEST,
            "invalid_json",
            Some("match.hostz"),
        ),
        (
            M::PUT,
            "/v1/routes/r",
            body(
                r#"{"match": {}, "cluster": "web", "retries": {"attempts": 1, "retry_on": ["always"]}}"#,
            ),
            S::BAD_REQUEST,
            "invalid_field",
            Some("retries.retry_on[0]"),
        ),
        (
            M::PUT,
            "/v1/routes/r",
            body(
                r#"{"match": {}, "cluster": "web", "retries": {"attempts": 1, "non_idempotent": "yes"}}"#,
            ),
            S::BAD_REQUEST,
            "invalid_json",
            Some("retries.non_idempotent"),
        ),
        // Invalid regexes, paths, hosts, actions.
        (
            M::PUT,
            "/v1/routes/r",
            body(r#"{"match": {"path_regex": "(a"}, "cluster": "web"}"#),
            S::BAD_REQUEST,
            "invalid_field",
            Some("match.path_regex"),
        ),
        (
            M::PUT,
            "/v1/routes/r",
            body(
                r#"{"match": {"headers": [{"name": "x-a", "regex": "(?=x)"}]}, "cluster": "web"}"#,
            ),
            S::BAD_REQUEST,
            "invalid_field",
            Some("match.headers[0].regex"),
        ),
        (
            M::PUT,
            "/v1/routes/r",
            body(r#"{"match": {"path_prefix": "api"}, "cluster": "web"}"#),
            S::BAD_REQUEST,
            "invalid_field",
            Some("match.path_prefix"),
        ),
        (
            M::PUT,
            "/v1/routes/r",
            body(r#"{"match": {"hosts": ["Example.COM"]}, "cluster": "web"}"#),
            S::BAD_REQUEST,
            "invalid_field",
            Some("match.hosts[0]"),
        ),
        (
            M::PUT,
            "/v1/routes/r",
            body(r#"{"match": {}}"#),
            S::BAD_REQUEST,
            "invalid_field",
            Some("cluster"),
        ),
        (
            M::PUT,
            "/v1/routes/r",
            body(r#"{"match": {}, "direct_response": {"status": 700}}"#),
            S::BAD_REQUEST,
            "invalid_field",
            Some("direct_response.status"),
        ),
        (
            M::PUT,
            "/v1/listeners/l",
            body(r#"{"address": "localhost", "port": 80}"#),
            S::BAD_REQUEST,
            "invalid_field",
            Some("address"),
        ),
        (
            M::PUT,
            "/v1/listeners/l",
            body(r#"{"port": 80, "access_log": {"path": "logs/access.log"}}"#),
            S::BAD_REQUEST,
            "invalid_field",
            Some("access_log.path"),
        ),
        (
            M::PUT,
            "/v1/listeners/l",
            body(r#"{"port": 80, "access_log": {"path": "/var/log/a\u0007.log"}}"#),
            S::BAD_REQUEST,
            "invalid_field",
            Some("access_log.path"),
        ),
        (
            M::PUT,
            "/v1/listeners/l",
            body(long_access_log),
            S::BAD_REQUEST,
            "invalid_field",
            Some("access_log.path"),
        ),
        (
            M::PUT,
            "/v1/listeners/l",
            body(r#"{"port": 80, "access_log": {"path": "stdout", "format": "text"}}"#),
            S::BAD_REQUEST,
            "invalid_json",
            Some("access_log.format"),
        ),
        (
            M::PUT,
            "/v1/listeners/l",
            body(r#"{"port": 80, "access_log": {"include_query": true}}"#),
            S::BAD_REQUEST,
            "invalid_json",
            Some("access_log"),
        ),
        // Unknown references and conflicts.
        (
            M::PUT,
            "/v1/routes/r",
            body(r#"{"match": {}, "cluster": "ghost"}"#),
            S::CONFLICT,
            "reference_conflict",
            Some("cluster"),
        ),
        (
            M::PUT,
            "/v1/routes/r",
            body(
                r#"{"match": {}, "weighted_clusters": [{"cluster": "web", "weight": 1}, {"cluster": "ghost", "weight": 1}]}"#,
            ),
            S::CONFLICT,
            "reference_conflict",
            Some("weighted_clusters[1].cluster"),
        ),
        (
            M::PUT,
            "/v1/listeners/other",
            body(r#"{"port": 8080}"#),
            S::CONFLICT,
            "reference_conflict",
            Some("port"),
        ),
        (
            M::DELETE,
            "/v1/clusters/web",
            None,
            S::CONFLICT,
            "reference_conflict",
            Some("name"),
        ),
        (
            M::PUT,
            "/v1/routes/r",
            body(r#"{"match": {}, "cluster": "web", "policies": ["ghost"]}"#),
            S::CONFLICT,
            "reference_conflict",
            Some("policies[0]"),
        ),
        (
            M::PUT,
            "/v1/listeners/other",
            body(r#"{"port": 9090, "policies": ["auth", "ghost"]}"#),
            S::CONFLICT,
            "reference_conflict",
            Some("policies[1]"),
        ),
        (
            M::DELETE,
            "/v1/policies/auth",
            None,
            S::CONFLICT,
            "reference_conflict",
            Some("name"),
        ),
        // Policies.
        (
            M::PUT,
            "/v1/routes/r",
            body(r#"{"match": {}, "cluster": "web", "policies": ["auth", "auth"]}"#),
            S::BAD_REQUEST,
            "invalid_field",
            Some("policies[1]"),
        ),
        (
            M::PUT,
            "/v1/policies/p",
            body(r#"{"type": "jwt", "issuer": "https://idp"}"#),
            S::BAD_REQUEST,
            "invalid_field",
            Some("jwks_uri"),
        ),
        (
            M::PUT,
            "/v1/policies/p",
            body(
                r#"{"type": "jwt", "issuer": "https://idp", "jwks": {"keys": [{"kty": "RSA", "n": "x", "e": "AQAB", "d": "private"}]}}"#,
            ),
            S::BAD_REQUEST,
            "invalid_field",
            Some("jwks"),
        ),
        (
            M::PUT,
            "/v1/policies/p",
            body(r#"{"type": "teleport"}"#),
            S::BAD_REQUEST,
            "invalid_json",
            Some("type"),
        ),
        (
            M::PUT,
            "/v1/policies/p",
            body(r#"{"type": "cors", "allow_origins": ["https://app.example.com/path"]}"#),
            S::BAD_REQUEST,
            "invalid_field",
            Some("allow_origins[0]"),
        ),
        (
            M::PUT,
            "/v1/policies/p",
            body(r#"{"type": "rate_limit", "key": [], "limit": {"requests": 10, "window_s": 0}}"#),
            S::BAD_REQUEST,
            "invalid_field",
            Some("limit.window_s"),
        ),
        (
            M::PUT,
            "/v1/policies/p",
            body(
                r#"{"type": "rate_limit", "key": ["header:authorization"], "limit": {"requests": 1, "window_s": 1}}"#,
            ),
            S::BAD_REQUEST,
            "invalid_field",
            Some("key[0]"),
        ),
        // Keyed on the API key's consumer, on a route without an API-key policy: nothing
        // would ever be counted.
        (
            M::PUT,
            "/v1/routes/private",
            body(r#"{"match": {}, "cluster": "web", "policies": ["per-consumer"]}"#),
            S::CONFLICT,
            "reference_conflict",
            Some("policies[0]"),
        ),
        (
            M::DELETE,
            "/v1/clusters/ghost",
            None,
            S::NOT_FOUND,
            "not_found",
            None,
        ),
        // Names: empty, 10 KB, path traversal, disagreeing with the body.
        (
            M::PUT,
            "/v1/clusters/",
            body("{}"),
            S::NOT_FOUND,
            "not_found",
            None,
        ),
        (
            M::PUT,
            long_name,
            body("{}"),
            S::BAD_REQUEST,
            "invalid_field",
            Some("name"),
        ),
        (
            M::PUT,
            "/v1/clusters/..%2F..%2Fetc%2Fpasswd",
            body("{}"),
            S::BAD_REQUEST,
            "invalid_field",
            Some("name"),
        ),
        (
            M::PUT,
            "/v1/clusters/.hidden",
            body("{}"),
            S::BAD_REQUEST,
            "invalid_field",
            Some("name"),
        ),
        (
            M::PUT,
            "/v1/clusters/x",
            body(r#"{"name": "y"}"#),
            S::BAD_REQUEST,
            "invalid_field",
            Some("name"),
        ),
        // Whole-config documents.
        (
            M::PUT,
            "/v1/config",
            body(r#"{"clusters": [{"name": "", "endpoints": []}]}"#),
            S::BAD_REQUEST,
            "invalid_field",
            Some("clusters[0].name"),
        ),
        (
            M::PUT,
            "/v1/config",
            body(r#"{"clusters": [{"name": "a"}, {"name": "a"}]}"#),
            S::BAD_REQUEST,
            "invalid_field",
            Some("clusters[1].name"),
        ),
        (
            M::PUT,
            "/v1/config",
            body(r#"{"routes": [{"name": "r", "match": {}, "cluster": "gone"}]}"#),
            S::CONFLICT,
            "reference_conflict",
            Some("routes[0].cluster"),
        ),
        (
            M::PUT,
            "/v1/config",
            body(r#"{"clusterz": []}"#),
            S::BAD_REQUEST,
            "invalid_json",
            Some("clusterz"),
        ),
        // Revisions and pagination.
        (
            M::GET,
            "/v1/revisions/99/status",
            None,
            S::NOT_FOUND,
            "not_found",
            None,
        ),
        (
            M::GET,
            "/v1/revisions/two/status",
            None,
            S::BAD_REQUEST,
            "invalid_field",
            Some("revision"),
        ),
        (
            M::GET,
            "/v1/revisions/1/status?wait=soon",
            None,
            S::BAD_REQUEST,
            "invalid_field",
            Some("wait"),
        ),
        (
            M::POST,
            "/v1/revisions/99/rollback",
            None,
            S::NOT_FOUND,
            "not_found",
            None,
        ),
        (
            M::GET,
            "/v1/clusters?limit=0",
            None,
            S::BAD_REQUEST,
            "invalid_field",
            Some("limit"),
        ),
        (M::GET, "/v1/nothing", None, S::NOT_FOUND, "not_found", None),
    ];
    assert!(cases.len() >= 30);
    for (method, path, body, status, code, field) in cases {
        let (got, body_json) = call(&app, method.clone(), path, body, Some(TOKEN)).await;
        let shown = &path[..path.len().min(60)];
        assert_eq!(got, status, "{method} {shown}: {body_json}");
        assert_eq!(
            error_of(&body_json),
            (code, field),
            "{method} {shown}: {body_json}"
        );
    }
    // Auth: missing, wrong and read-only tokens.
    for token in [None, Some("wrong-token-0123456789")] {
        let (status, body) = call(&app, Method::PUT, "/v1/clusters/x", body("{}"), token).await;
        assert_eq!(
            (status, error_of(&body).0),
            (StatusCode::UNAUTHORIZED, "unauthorized")
        );
    }
    let (status, body) = call(
        &app,
        Method::PUT,
        "/v1/clusters/x",
        body("{}"),
        Some(READ_ONLY),
    )
    .await;
    assert_eq!(
        (status, error_of(&body).0),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    // A 20 MB body.
    let huge = vec![b' '; 20 * 1024 * 1024];
    for path in ["/v1/clusters/x", "/v1/config"] {
        let (status, body) = call(&app, Method::PUT, path, Some(huge.clone()), Some(TOKEN)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{path}");
        assert_eq!(error_of(&body).0, "payload_too_large");
    }
    assert_eq!(config_bytes(&app).await, before, "GET /v1/config changed");
}

#[tokio::test]
async fn every_v1_call_needs_the_token_but_healthz_does_not() {
    let (app, _) = app();
    for token in [None, Some("wrong-token-0123456789"), Some("")] {
        let (status, body) = call(&app, Method::GET, "/v1/nodes", None, token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(error_of(&body).0, "unauthorized");
        let (status, _) = call(
            &app,
            Method::PUT,
            "/v1/clusters/x",
            Some(b"{}".to_vec()),
            token,
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, body) = call(&app, Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
}

#[tokio::test]
async fn revision_status_with_no_nodes_is_converged() {
    let (app, _) = app();
    put(&app, "/v1/clusters/web", json!({})).await;
    let (status, body) = call(
        &app,
        Method::GET,
        "/v1/revisions/1/status?wait=100ms",
        None,
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["converged"], true);
    assert_eq!(body["nodes"], 0);
}

#[test]
fn wait_durations_parse() {
    use std::time::Duration;
    let parse = crate::handlers::parse_duration_for_tests;
    assert_eq!(parse("5s"), Some(Duration::from_secs(5)));
    assert_eq!(parse("250ms"), Some(Duration::from_millis(250)));
    assert_eq!(parse("2m"), Some(Duration::from_secs(120)));
    assert_eq!(parse("3"), Some(Duration::from_secs(3)));
    assert_eq!(parse("s"), None);
    assert_eq!(parse("5h"), None);
}

async fn call_raw(
    app: &axum::Router,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {TOKEN}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes().to_vec(),
    )
}

fn sample_document() -> Value {
    json!({
        "clusters": [
            {"name": "users", "endpoints": [{"address": "10.0.0.1", "port": 8080, "weight": 2}],
             "lb_policy": "least_request", "connect_timeout_ms": 250, "http2": false},
            {"name": "web", "endpoints": [], "lb_policy": "round_robin", "connect_timeout_ms": 5000, "http2": true}
        ],
        "routes": [
            {"name": "partners", "match": {"path_prefix": "/partners"}, "cluster": "users",
             "priority": 0,
             "policies": ["partner-keys", "partners-only", "office", "per-key", "legacy-xml"]},
            {"name": "users", "match": {"hosts": ["api.example.com"], "path_prefix": "/users"},
             "cluster": "users", "timeout_ms": 1500, "priority": 5, "policies": ["users-jwt"]}
        ],
        "listeners": [{"name": "public", "address": "0.0.0.0", "port": 8080, "policies": ["browser"]}],
        "certificates": [],
        "consumers": [{"name": "acme", "tier": "pro"}],
        "policies": [
            {"type": "cors", "name": "browser", "allow_origins": ["https://app.example.com"],
             "allow_methods": ["GET", "POST"], "max_age_s": 600, "allow_credentials": true},
            {"type": "transform", "name": "legacy-xml",
             "request": {"headers": {"set": {"x-consumer": "{consumer.name}"}, "remove": ["x-debug"]},
                         "body": {"convert": "json_to_xml", "on_invalid": "reject"}}},
            {"type": "ip_filter", "name": "office", "allow": ["10.0.0.0/8"], "deny": ["10.9.0.0/16"]},
            {"type": "api_key", "name": "partner-keys", "header": "x-api-key", "query": "apikey",
             "forward_key": false},
            {"type": "authorization", "name": "partners-only", "allow_consumer_groups": ["partners"]},
            {"type": "rate_limit", "name": "per-key", "key": ["api_key"],
             "limit": {"requests": 100, "window_s": 60, "burst": 20}, "algorithm": "token_bucket",
             "tiers": {"pro": {"requests": 1000, "window_s": 60}}, "mode": "global",
             "shadow": false, "failure_mode": "closed", "legacy_headers": true, "lease": 10},
            {"type": "jwt", "name": "users-jwt", "issuer": "https://idp.example.com",
             "audiences": ["users"], "jwks_uri": "http://10.0.0.2:8080/jwks",
             "jwks_cache_duration_s": 300, "clock_skew_s": 30,
             "token_from": [{"header": "authorization", "prefix": "Bearer "}, {"cookie": "session"}],
             "claims_to_headers": {"sub": "x-user-id"}, "forward_token": false, "optional": false}
        ]
    })
}

#[tokio::test]
async fn config_apply_then_export_round_trips_in_json_and_yaml() {
    let (app, store) = app();
    let document = sample_document();
    let (status, body) = put(&app, "/v1/config", document.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["revision"], 1);
    assert_eq!(body["changes"].as_array().unwrap().len(), 13);
    assert_eq!(store.history(None, 1).await.unwrap()[0].origin, "config");

    let (status, headers, exported) =
        call_raw(&app, Method::GET, "/v1/config", &[], Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["tollgate-revision"], "1");
    assert_eq!(headers["content-type"], "application/json");
    let exported: Value = serde_json::from_slice(&exported).unwrap();
    assert_eq!(exported, document, "export gives back the applied document");

    let (_, headers, yaml) = call_raw(
        &app,
        Method::GET,
        "/v1/config",
        &[("accept", "application/yaml")],
        Vec::new(),
    )
    .await;
    assert_eq!(headers["content-type"], "application/yaml");
    let yaml_text = String::from_utf8(yaml.clone()).unwrap();
    assert!(
        yaml_text.contains("lb_policy: least_request"),
        "{yaml_text}"
    );
    // Applying the YAML export changes nothing.
    let (status, _, body) = call_raw(
        &app,
        Method::PUT,
        "/v1/config",
        &[("content-type", "application/yaml")],
        yaml,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (
            body["revision"].as_u64(),
            body["changes"].as_array().unwrap().len()
        ),
        (Some(1), 0)
    );
}

#[tokio::test]
async fn config_dry_run_lists_exactly_the_changes_and_writes_nothing() {
    let (app, store) = app();
    put(&app, "/v1/config", sample_document()).await;
    let mut next = sample_document();
    next["clusters"][0]["connect_timeout_ms"] = 300.into(); // updated
    next["clusters"].as_array_mut().unwrap().remove(1); // web deleted
    next["listeners"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "admin", "address": "127.0.0.1", "port": 8081})); // created
    let (status, body) = put(&app, "/v1/config?dry_run=true", next.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["dry_run"], true);
    assert_eq!(body["revision"], 1);
    let mut summary: Vec<(String, String, String)> = body["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["kind"].as_str().unwrap().into(),
                c["name"].as_str().unwrap().into(),
                c["op"].as_str().unwrap().into(),
            )
        })
        .collect();
    summary.sort();
    assert_eq!(
        summary,
        [
            ("cluster".into(), "users".into(), "updated".into()),
            ("cluster".into(), "web".into(), "deleted".into()),
            ("listener".into(), "admin".into(), "created".into()),
        ]
    );
    let users = body["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "users")
        .unwrap();
    assert_eq!(users["before"]["connect_timeout_ms"], 250);
    assert_eq!(users["after"]["connect_timeout_ms"], 300);
    assert_eq!(store.current().revision, 1, "a dry run writes nothing");

    let (_, body) = put(&app, "/v1/config", next).await;
    assert_eq!(body["revision"], 2);
    assert!(!store.current().clusters.contains_key("web"));
}

#[tokio::test]
async fn lists_are_paginated_by_name() {
    let (app, _) = app();
    for i in 0..5 {
        put(&app, &format!("/v1/clusters/c{i}"), json!({})).await;
    }
    let (_, page1) = call(&app, Method::GET, "/v1/clusters?limit=2", None, Some(TOKEN)).await;
    let names = |page: &Value| {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&page1), ["c0", "c1"]);
    assert_eq!(page1["next"], "c1");
    let (_, page2) = call(
        &app,
        Method::GET,
        "/v1/clusters?limit=2&after=c1",
        None,
        Some(TOKEN),
    )
    .await;
    assert_eq!(names(&page2), ["c2", "c3"]);
    let (_, page3) = call(
        &app,
        Method::GET,
        "/v1/clusters?limit=2&after=c3",
        None,
        Some(TOKEN),
    )
    .await;
    assert_eq!(names(&page3), ["c4"]);
    assert_eq!(page3["next"], Value::Null);
}

#[tokio::test]
async fn cluster_health_checks_breakers_and_tls_are_stored_with_their_defaults() {
    let (app, _) = app();
    let (ca_pem, _) = self_signed(&["ca.example.com"]);
    let (status, body) = put(
        &app,
        "/v1/clusters/users",
        json!({"endpoints": [{"address": "10.0.0.1", "port": 8443}],
               "health_check": {"path": "/healthz", "expected_statuses": [200, 204]},
               "outlier_detection": {"consecutive_5xx": 3},
               "circuit_breakers": {"max_requests": 64},
               "tls": {"sni": "users.internal", "trusted_ca": ca_pem}}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, cluster) = call(&app, Method::GET, "/v1/clusters/users", None, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        cluster["health_check"],
        json!({"path": "/healthz", "interval_ms": 5000, "timeout_ms": 1000,
               "healthy_threshold": 1, "unhealthy_threshold": 2, "expected_statuses": [200, 204]})
    );
    assert_eq!(
        cluster["outlier_detection"],
        json!({"consecutive_5xx": 3, "interval_ms": 10000, "base_ejection_time_ms": 30000,
               "max_ejection_percent": 10})
    );
    assert_eq!(
        cluster["circuit_breakers"],
        json!({"max_connections": 1024, "max_pending_requests": 1024, "max_requests": 64,
               "max_retries": 3})
    );
    // CA certificates are public: the bundle is shown, unlike a certificate's key.
    assert_eq!(
        cluster["tls"],
        json!({"sni": "users.internal", "trusted_ca": ca_pem, "verify": true})
    );

    // A key pasted into the bundle would be shown to every reader: refused, and not quoted.
    let (ca_pem, key_pem) = self_signed(&["ca.example.com"]);
    let (status, body) = put(
        &app,
        "/v1/clusters/leaky",
        json!({"tls": {"trusted_ca": format!("{ca_pem}{key_pem}")}}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_of(&body), ("invalid_field", Some("tls.trusted_ca")));
    let secret_line = key_pem.lines().nth(1).unwrap();
    assert!(!body.to_string().contains(secret_line), "{body}");

    // Without them, nothing is shown: clusters stored before these fields read as before.
    put(&app, "/v1/clusters/plain", json!({})).await;
    let (_, plain) = call(&app, Method::GET, "/v1/clusters/plain", None, Some(TOKEN)).await;
    for field in [
        "health_check",
        "outlier_detection",
        "circuit_breakers",
        "tls",
    ] {
        assert!(plain.get(field).is_none(), "{field}: {plain}");
    }
}

#[tokio::test]
async fn revisions_history_and_rollback() {
    let (app, _) = app();
    put(&app, "/v1/clusters/web", json!({"connect_timeout_ms": 100})).await;
    put(&app, "/v1/clusters/web", json!({"connect_timeout_ms": 200})).await;
    put(&app, "/v1/clusters/api", json!({})).await;
    let (status, history) = call(
        &app,
        Method::GET,
        "/v1/revisions?limit=2",
        None,
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(history["current"], 3);
    let revisions: Vec<u64> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["revision"].as_u64().unwrap())
        .collect();
    assert_eq!(revisions, [3, 2]);
    assert_eq!(history["next"], 2);
    assert_eq!(
        history["items"][0]["changes"][0],
        json!({"kind": "cluster", "name": "api", "op": "created"})
    );
    assert!(
        history["items"][0]["committed_at"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );

    let (status, body) = call(
        &app,
        Method::POST,
        "/v1/revisions/1/rollback",
        None,
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["revision"].as_u64(), body["rolled_back_to"].as_u64()),
        (Some(4), Some(1))
    );
    let (_, web) = call(&app, Method::GET, "/v1/clusters/web", None, Some(TOKEN)).await;
    assert_eq!(web["connect_timeout_ms"], 100);
    let (status, _) = call(&app, Method::GET, "/v1/clusters/api", None, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, history) = call(
        &app,
        Method::GET,
        "/v1/revisions?limit=1",
        None,
        Some(TOKEN),
    )
    .await;
    assert_eq!(history["items"][0]["origin"], "rollback to 1");
}

#[tokio::test]
async fn the_read_only_token_reads_but_cannot_write() {
    let (app, _) = app();
    put(&app, "/v1/clusters/web", json!({})).await;
    for path in [
        "/v1/clusters/web",
        "/v1/clusters",
        "/v1/config",
        "/v1/nodes",
        "/v1/revisions",
    ] {
        let (status, body) = call(&app, Method::GET, path, None, Some(READ_ONLY)).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    for (method, path) in [
        (Method::PUT, "/v1/clusters/x"),
        (Method::DELETE, "/v1/clusters/web"),
        (Method::PUT, "/v1/config"),
        (Method::POST, "/v1/revisions/1/rollback"),
    ] {
        let (status, body) = call(
            &app,
            method.clone(),
            path,
            Some(b"{}".to_vec()),
            Some(READ_ONLY),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}");
        assert_eq!(error_of(&body).0, "forbidden");
    }
}

#[tokio::test]
async fn every_operation_is_documented_and_every_documented_operation_is_served() {
    let document = serde_json::to_value(crate::openapi()).unwrap();
    let mut documented = std::collections::BTreeSet::new();
    for (path, operations) in document["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let expected: std::collections::BTreeSet<(String, String)> = [
        ("GET", "/v1/clusters"),
        ("GET", "/v1/clusters/{name}"),
        ("PUT", "/v1/clusters/{name}"),
        ("DELETE", "/v1/clusters/{name}"),
        ("GET", "/v1/routes"),
        ("GET", "/v1/routes/{name}"),
        ("PUT", "/v1/routes/{name}"),
        ("DELETE", "/v1/routes/{name}"),
        ("GET", "/v1/listeners"),
        ("GET", "/v1/listeners/{name}"),
        ("PUT", "/v1/listeners/{name}"),
        ("DELETE", "/v1/listeners/{name}"),
        ("GET", "/v1/certificates"),
        ("GET", "/v1/certificates/{name}"),
        ("PUT", "/v1/certificates/{name}"),
        ("DELETE", "/v1/certificates/{name}"),
        ("GET", "/v1/consumers"),
        ("GET", "/v1/consumers/{name}"),
        ("PUT", "/v1/consumers/{name}"),
        ("DELETE", "/v1/consumers/{name}"),
        ("GET", "/v1/policies"),
        ("GET", "/v1/policies/{name}"),
        ("PUT", "/v1/policies/{name}"),
        ("DELETE", "/v1/policies/{name}"),
        ("GET", "/v1/nodes"),
        ("GET", "/v1/revisions"),
        ("GET", "/v1/revisions/{revision}/status"),
        ("POST", "/v1/revisions/{revision}/rollback"),
        ("GET", "/v1/config"),
        ("PUT", "/v1/config"),
        ("GET", "/v1/openapi.json"),
    ]
    .into_iter()
    .map(|(m, p)| (m.to_owned(), p.to_owned()))
    .collect();
    assert_eq!(documented, expected);

    let (app, _) = app();
    let paths: std::collections::BTreeSet<&String> = documented.iter().map(|(_, p)| p).collect();
    for path in paths {
        let concrete = path.replace("{name}", "probe").replace("{revision}", "0");
        for method in ["GET", "PUT", "POST", "DELETE", "PATCH"] {
            let method_ = Method::from_bytes(method.as_bytes()).unwrap();
            let (status, body) =
                call(&app, method_, &concrete, Some(b"{}".to_vec()), Some(TOKEN)).await;
            let fell_through = status == StatusCode::METHOD_NOT_ALLOWED
                || (status == StatusCode::NOT_FOUND
                    && body["error"]["message"] == "no such endpoint");
            let is_documented = documented.contains(&(method.to_owned(), path.clone()));
            assert_eq!(
                !fell_through, is_documented,
                "{method} {concrete}: {status} {body}"
            );
        }
    }
    let (status, served) = call(&app, Method::GET, "/v1/openapi.json", None, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(served, document);
}

/// Everything the API shows about a resource kind: its list, the named item, the export, a
/// dry-run diff against an empty config, and the revision history, concatenated.
async fn everything_shown(app: &axum::Router, collection: &str, name: &str) -> String {
    let mut shown = String::new();
    for path in [
        &format!("{collection}/{name}"),
        collection,
        "/v1/config",
        "/v1/revisions",
    ] {
        shown += &call(app, Method::GET, path, None, Some(TOKEN))
            .await
            .1
            .to_string();
    }
    shown += &put(app, "/v1/config?dry_run=true", json!({}))
        .await
        .1
        .to_string();
    shown
}

/// A self-signed certificate for `names` and its PEM private key.
fn self_signed(names: &[&str]) -> (String, String) {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let certified = rcgen::generate_simple_self_signed(names).unwrap();
    (certified.cert.pem(), certified.signing_key.serialize_pem())
}

#[tokio::test]
async fn certificate_keys_are_write_only_and_checked() {
    let (app, store) = app();
    let (cert, key) = self_signed(&["api.example.com", "www.example.com"]);
    let marker = key.lines().nth(1).unwrap().to_owned();
    let (status, body) = put(
        &app,
        "/v1/certificates/api",
        json!({"cert_pem": cert, "key_pem": key}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        body["certificate"]["server_names"],
        json!(["api.example.com", "www.example.com"])
    );
    assert_eq!(
        body["certificate"]["sha256_fingerprint"]
            .as_str()
            .unwrap()
            .len(),
        64
    );

    // The key is never returned: not by GET, list, export, dry-run diffs or history.
    let shown = everything_shown(&app, "/v1/certificates", "api").await + &body.to_string();
    assert!(
        !shown.contains(&marker) && !shown.contains("PRIVATE KEY"),
        "key leaked: {shown}"
    );

    // Replacing without a key keeps the stored one; the export re-applies unchanged.
    let (status, body) = put(&app, "/v1/certificates/api", json!({"cert_pem": cert})).await;
    assert_eq!(
        (status, body["changed"].as_bool()),
        (StatusCode::OK, Some(false)),
        "{body}"
    );
    let export = call(&app, Method::GET, "/v1/config", None, Some(TOKEN))
        .await
        .1;
    let (status, body) = put(&app, "/v1/config", export).await;
    assert_eq!(
        (status, body["changes"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(0)),
        "{body}"
    );
    assert_eq!(
        store.current().certificates["api"].key_pem.as_deref(),
        Some(key.as_str())
    );

    // Bad certificates and keys name the field.
    let (_, other_key) = self_signed(&["other.example.com"]);
    let cases = [
        (json!({"cert_pem": cert, "key_pem": other_key}), "key_pem"),
        (json!({"cert_pem": "not pem", "key_pem": key}), "cert_pem"),
        (
            json!({"cert_pem": cert, "key_pem": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}),
            "key_pem",
        ),
        (json!({"cert_pem": cert}), "key_pem"),
    ];
    for (body, field) in cases {
        let (status, answer) = put(&app, "/v1/certificates/fresh", body).await;
        assert_eq!(
            (status, error_of(&answer)),
            (StatusCode::BAD_REQUEST, ("invalid_field", Some(field))),
            "{answer}"
        );
    }

    // Listeners refer to certificates; one in use cannot be deleted.
    let (status, body) = put(
        &app,
        "/v1/listeners/https",
        json!({"port": 8443, "tls": {"certificates": ["nope"]}}),
    )
    .await;
    assert_eq!(
        (status, error_of(&body)),
        (
            StatusCode::CONFLICT,
            ("reference_conflict", Some("tls.certificates[0]"))
        )
    );
    let (status, _) = put(
        &app,
        "/v1/listeners/https",
        json!({"port": 8443, "tls": {"certificates": ["api"]}}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = call(
        &app,
        Method::DELETE,
        "/v1/certificates/api",
        None,
        Some(TOKEN),
    )
    .await;
    assert_eq!(
        (status, error_of(&body).0),
        (StatusCode::CONFLICT, "reference_conflict")
    );
}

#[tokio::test]
async fn consumer_api_keys_are_write_only_hashed_and_unique() {
    let (app, store) = app();
    let key = "live_0123456789abcdefKEY";
    let (status, body) = put(
        &app,
        "/v1/consumers/acme",
        json!({"tier": "pro", "metadata": {"team": "billing"}, "api_keys": [key]}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let hash = store.api_key_hasher().hash(key);
    assert_eq!(body["consumer"]["api_key_ids"], json!([hash[..12]]));
    assert_eq!(
        store.current().consumers["acme"].api_key_hashes,
        Some(vec![hash.clone()])
    );

    // Neither the key nor its full hash is ever shown.
    let shown = everything_shown(&app, "/v1/consumers", "acme").await + &body.to_string();
    assert!(
        !shown.contains(key) && !shown.contains(&hash),
        "leaked: {shown}"
    );

    // Omitted keys are kept (so an export re-applies unchanged); [] removes them.
    let (_, body) = put(&app, "/v1/consumers/acme", json!({"tier": "enterprise"})).await;
    assert_eq!(body["consumer"]["api_key_ids"].as_array().unwrap().len(), 1);
    let export = call(&app, Method::GET, "/v1/config", None, Some(TOKEN))
        .await
        .1;
    let (_, applied) = put(&app, "/v1/config", export).await;
    assert_eq!(applied["changes"], json!([]));
    assert_eq!(
        store.current().consumers["acme"].api_key_hashes,
        Some(vec![hash])
    );

    // A key identifies one consumer; weak keys are refused.
    let (status, body) = put(&app, "/v1/consumers/other", json!({"api_keys": [key]})).await;
    assert_eq!(
        (status, error_of(&body)),
        (
            StatusCode::CONFLICT,
            ("reference_conflict", Some("api_keys[0]"))
        ),
        "{body}"
    );
    let (status, body) = put(&app, "/v1/consumers/other", json!({"api_keys": ["short"]})).await;
    assert_eq!(
        (status, error_of(&body)),
        (
            StatusCode::BAD_REQUEST,
            ("invalid_field", Some("api_keys[0]"))
        )
    );
    let (status, body) = put(
        &app,
        "/v1/config",
        json!({"consumers": [{"name": "x", "api_keys": ["tiny"]}]}),
    )
    .await;
    assert_eq!(
        (status, error_of(&body)),
        (
            StatusCode::BAD_REQUEST,
            ("invalid_field", Some("consumers[0].api_keys[0]"))
        )
    );

    let (_, body) = put(&app, "/v1/consumers/acme", json!({"api_keys": []})).await;
    assert_eq!(body["consumer"]["api_key_ids"], json!([]));
}

/// Parses the Prometheus text format into `(series with labels, value)` pairs, checking that
/// every sample line is well formed.
fn parse_metrics(text: &str) -> std::collections::BTreeMap<String, f64> {
    let mut samples = std::collections::BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("malformed sample line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("malformed value in {line:?}"));
        if let Some(open) = series.find('{') {
            assert!(series.ends_with('}'), "unclosed labels in {line:?}");
            assert!(
                series[open + 1..series.len() - 1]
                    .split(',')
                    .all(|kv| kv.contains("=\"")),
                "{line:?}"
            );
        }
        samples.insert(series.to_owned(), value);
    }
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    samples
}

#[tokio::test]
async fn metrics_count_store_writes_exactly() {
    let (app, _) = app();
    put(&app, "/v1/clusters/a", json!({})).await; // committed
    put(&app, "/v1/clusters/a", json!({})).await; // unchanged
    put(&app, "/v1/clusters/b", json!({"connect_timeout_ms": 0})).await; // rejected
    put(
        &app,
        "/v1/routes/r",
        json!({"match": {}, "cluster": "ghost"}),
    )
    .await; // rejected
    call(
        &app,
        Method::POST,
        "/v1/revisions/1/rollback",
        None,
        Some(TOKEN),
    )
    .await; // unchanged
    let request = Request::get("/metrics").body(Body::empty()).unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "no token needed");
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    let samples = parse_metrics(&text);
    let get = |series: &str| {
        samples
            .get(series)
            .copied()
            .unwrap_or_else(|| panic!("{series} missing in\n{text}"))
    };
    assert_eq!(
        get(r#"tollgate_store_writes_total{outcome="committed"}"#),
        1.0
    );
    assert_eq!(
        get(r#"tollgate_store_writes_total{outcome="unchanged"}"#),
        2.0
    );
    assert_eq!(
        get(r#"tollgate_store_writes_total{outcome="rejected"}"#),
        2.0
    );
    assert_eq!(get("tollgate_store_write_duration_seconds_count"), 5.0);
    assert_eq!(get("tollgate_store_revision"), 1.0);
    assert_eq!(
        get(r#"tollgate_xds_connected_nodes{kind="envoy",protocol="sotw"}"#),
        0.0
    );
}

#[test]
fn policy_schemas_carry_their_type_tag() {
    let document = serde_json::to_value(crate::openapi()).unwrap();
    let schemas = &document["components"]["schemas"];
    let policy = &schemas["Policy"];
    assert_eq!(policy["discriminator"]["propertyName"], "type");
    let variants = policy["oneOf"].as_array().unwrap();
    assert_eq!(variants.len(), 7);
    for (name, tag) in [
        ("JwtPolicy", "jwt"),
        ("CorsPolicy", "cors"),
        ("ApiKeyPolicy", "api_key"),
        ("AuthorizationPolicy", "authorization"),
        ("IpFilterPolicy", "ip_filter"),
        ("TransformPolicy", "transform"),
        ("RateLimitPolicy", "rate_limit"),
    ] {
        let schema = &schemas[name];
        assert_eq!(schema["properties"]["type"]["enum"], json!([tag]), "{name}");
        assert!(
            schema["required"]
                .as_array()
                .unwrap()
                .contains(&json!("type")),
            "{name}"
        );
        assert_eq!(
            policy["discriminator"]["mapping"][tag],
            format!("#/components/schemas/{name}")
        );
    }
}
