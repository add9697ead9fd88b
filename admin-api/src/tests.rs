//! In-process tests of the admin API (axum `oneshot`, no sockets).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tollgate_control_plane::store::Store;
use tollgate_control_plane::xds::nodes::NodeRegistry;
use tower::ServiceExt;

use crate::{AdminState, MAX_BODY_BYTES, router};

const TOKEN: &str = "test-token-0123456789";

fn app() -> (axum::Router, Store) {
    let store = Store::in_memory();
    let state = AdminState {
        store: store.clone(),
        registry: Arc::new(NodeRegistry::default()),
        admin_token: TOKEN.into(),
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

#[tokio::test]
async fn bad_requests_name_the_field_and_change_nothing() {
    let (app, store) = app();
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
    let before = store.current();

    let cases: Vec<BadRequest> = vec![
        (
            Method::PUT,
            "/v1/clusters/x",
            Some(b"{not json".to_vec()),
            StatusCode::BAD_REQUEST,
            "invalid_json",
            None,
        ),
        (
            Method::PUT,
            "/v1/clusters/x",
            Some(br#"{"endpoints": [{"address": "1.2.3.4", "port": "80"}]}"#.to_vec()),
            StatusCode::BAD_REQUEST,
            "invalid_json",
            Some("endpoints[0].port"),
        ),
        (
            Method::PUT,
            "/v1/clusters/x",
            Some(br#"{"endpoints": [{"address": "1.2.3.4", "port": 70000}]}"#.to_vec()),
            StatusCode::BAD_REQUEST,
            "invalid_json",
            Some("endpoints[0].port"),
        ),
        (
            Method::PUT,
            "/v1/clusters/x",
            Some(br#"{"endpoints": [{"address": "1.2.3.4", "port": 0}]}"#.to_vec()),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("endpoints[0].port"),
        ),
        (
            Method::PUT,
            "/v1/clusters/x",
            Some(br#"{"lb_policy": "fastest"}"#.to_vec()),
            StatusCode::BAD_REQUEST,
            "invalid_json",
            Some("lb_policy"),
        ),
        (
            Method::PUT,
            "/v1/clusters/x",
            Some(br#"{"endpoints": [], "colour": "red"}"#.to_vec()),
            StatusCode::BAD_REQUEST,
            "invalid_json",
            Some("colour"),
        ),
        (
            Method::PUT,
            "/v1/clusters/x",
            Some(br#"{"name": "y"}"#.to_vec()),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("name"),
        ),
        (
            Method::PUT,
            "/v1/clusters/..%2Fetc",
            Some(b"{}".to_vec()),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("name"),
        ),
        (
            Method::PUT,
            "/v1/routes/r",
            Some(br#"{"match": {"path_regex": "(a"}, "cluster": "web"}"#.to_vec()),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("match.path_regex"),
        ),
        (
            Method::PUT,
            "/v1/routes/r",
            Some(br#"{"match": {}, "cluster": "ghost"}"#.to_vec()),
            StatusCode::CONFLICT,
            "reference_conflict",
            Some("cluster"),
        ),
        (
            Method::PUT,
            "/v1/listeners/l",
            Some(br#"{"address": "localhost", "port": 80}"#.to_vec()),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("address"),
        ),
        (
            Method::DELETE,
            "/v1/clusters/web",
            None,
            StatusCode::CONFLICT,
            "reference_conflict",
            Some("name"),
        ),
        (
            Method::DELETE,
            "/v1/clusters/ghost",
            None,
            StatusCode::NOT_FOUND,
            "not_found",
            None,
        ),
        (
            Method::GET,
            "/v1/revisions/99/status",
            None,
            StatusCode::NOT_FOUND,
            "not_found",
            None,
        ),
        (
            Method::GET,
            "/v1/revisions/two/status",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("revision"),
        ),
        (
            Method::GET,
            "/v1/revisions/1/status?wait=soon",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("wait"),
        ),
        (
            Method::GET,
            "/v1/nothing",
            None,
            StatusCode::NOT_FOUND,
            "not_found",
            None,
        ),
    ];
    for (method, path, body, status, code, field) in cases {
        let (got, body_json) = call(&app, method.clone(), path, body, Some(TOKEN)).await;
        assert_eq!(got, status, "{method} {path}: {body_json}");
        assert_eq!(
            error_of(&body_json),
            (code, field),
            "{method} {path}: {body_json}"
        );
    }
    let huge = vec![b' '; MAX_BODY_BYTES + 1];
    let (status, body) = call(&app, Method::PUT, "/v1/clusters/x", Some(huge), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_of(&body).0, "payload_too_large");
    assert_eq!(*store.current(), *before);
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
