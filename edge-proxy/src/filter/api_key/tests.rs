//! API-key checks per request: where keys are found, what a known key does to the request, and
//! the 401s.

use std::borrow::Cow;
use std::collections::HashMap;

use http::{HeaderMap, Method};
use http_body_util::BodyExt as _;
use tollgate_proto::api_key as api_key_pb;
use tollgate_proto::pack_any;

use super::*;
use crate::config::filters::api_key::tests::table;
use crate::config::filters::api_key::{ApiKeyTable, filter_config, per_route};
use crate::proxy::headers::Addresses;

fn config(forward_key: bool) -> ApiKeyAuth {
    let provider = |header: &str, query: &str| api_key_pb::ApiKeyProvider {
        header: header.into(),
        query: query.into(),
        forward_key,
    };
    filter_config(&pack_any(&api_key_pb::ApiKeyAuth {
        providers: HashMap::from([
            ("keys".to_owned(), provider("x-api-key", "apikey")),
            ("other".to_owned(), provider("x-other-key", "")),
        ]),
        key_table: "keys".into(),
    }))
    .unwrap()
}

fn route(providers: &[&str]) -> ApiKeyPerRoute {
    per_route(&pack_any(&api_key_pb::ApiKeyPerRoute {
        providers: providers.iter().map(|p| (*p).to_owned()).collect(),
    }))
    .unwrap()
}

/// What a request looks like after the filter, and its answer.
struct Outcome {
    path: String,
    headers: HeaderMap,
    answer: Option<(StatusCode, Option<HeaderValue>, serde_json::Value)>,
    consumer: Option<String>,
}

async fn run(
    config: &ApiKeyAuth,
    per_route: Option<&ApiKeyPerRoute>,
    table: Option<&ApiKeyTable>,
    path: &str,
    headers: &[(&str, &str)],
) -> Outcome {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    let mut path_and_query = Cow::Borrowed(path);
    let mut req = crate::filter::Request {
        method: &Method::GET,
        scheme: "http",
        authority: "api",
        path_and_query: &mut path_and_query,
        headers: &mut map,
        addresses: Addresses::direct([192, 0, 2, 1].into()),
    };
    let mut metadata = Metadata::default();
    let response = on_request(config, per_route, table, &mut req, &mut metadata);
    let consumer = metadata.consumer.map(|c| c.name.clone());
    let answer = match response {
        None => None,
        Some(response) => {
            let status = response.status();
            let challenge = response.headers().get(header::WWW_AUTHENTICATE).cloned();
            assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
            let body = response.into_body().collect().await.unwrap().to_bytes();
            Some((status, challenge, serde_json::from_slice(&body).unwrap()))
        }
    };
    Outcome {
        path: path_and_query.into_owned(),
        headers: map,
        answer,
        consumer,
    }
}

#[tokio::test]
async fn a_known_key_in_the_header_names_the_consumer_and_is_removed() {
    let (config, table) = (config(false), table());
    let outcome = run(
        &config,
        Some(&route(&["keys"])),
        Some(&table),
        "/a?x=1",
        &[
            ("x-api-key", "acme-key-1"),
            ("x-consumer-name", "forged"),
            ("x-consumer-tier", "forged"),
        ],
    )
    .await;
    assert!(outcome.answer.is_none());
    assert_eq!(outcome.consumer.as_deref(), Some("acme"));
    assert_eq!(outcome.headers["x-consumer-name"], "acme");
    assert_eq!(outcome.headers.get_all("x-consumer-name").iter().count(), 1);
    assert_eq!(outcome.headers["x-consumer-tier"], "pro");
    assert!(outcome.headers.get("x-api-key").is_none());
    // The query is left alone when the key came from a header.
    assert_eq!(outcome.path, "/a?x=1");

    // A consumer without a tier: whatever the client sent is removed.
    let outcome = run(
        &config,
        Some(&route(&["keys"])),
        Some(&table),
        "/a",
        &[("x-api-key", "beta/key+1"), ("x-consumer-tier", "gold")],
    )
    .await;
    assert_eq!(outcome.headers["x-consumer-name"], "beta");
    assert!(outcome.headers.get("x-consumer-tier").is_none());
}

#[tokio::test]
async fn a_key_in_the_query_is_decoded_and_removed_as_envoys_ext_authz_does() {
    let (config, table) = (config(false), table());
    // Percent-decoded (`+` is not a space); the first occurrence counts; the rest of the
    // query is written back sorted by name, undecoded, bare names with `=`.
    let outcome = run(
        &config,
        Some(&route(&["keys"])),
        Some(&table),
        "/a?z=%2F&apikey=beta%2Fkey%2B1&flag&apikey=other&b=2&b=1",
        &[],
    )
    .await;
    assert!(outcome.answer.is_none(), "{:?}", outcome.answer);
    assert_eq!(outcome.consumer.as_deref(), Some("beta"));
    assert_eq!(outcome.path, "/a?b=2&b=1&flag=&z=%2F");
    // Only parameter: no `?` left.
    let outcome = run(
        &config,
        Some(&route(&["keys"])),
        Some(&table),
        "/a?apikey=acme-key-2",
        &[],
    )
    .await;
    assert_eq!(outcome.consumer.as_deref(), Some("acme"));
    assert_eq!(outcome.path, "/a");
    // The header wins over the query; the parameter name is compared as sent.
    let outcome = run(
        &config,
        Some(&route(&["keys"])),
        Some(&table),
        "/a?apikey=acme-key-2",
        &[("x-api-key", "beta/key+1")],
    )
    .await;
    assert_eq!(outcome.consumer.as_deref(), Some("beta"));
    assert_eq!(outcome.path, "/a?apikey=acme-key-2");
    let outcome = run(
        &config,
        Some(&route(&["keys"])),
        Some(&table),
        "/a?api%6Bey=acme-key-2",
        &[],
    )
    .await;
    assert!(outcome.answer.is_some());
}

#[tokio::test]
async fn forward_key_keeps_the_key() {
    let (config, table) = (config(true), table());
    let outcome = run(
        &config,
        Some(&route(&["keys"])),
        Some(&table),
        "/a?apikey=acme-key-1",
        &[],
    )
    .await;
    assert_eq!(outcome.consumer.as_deref(), Some("acme"));
    assert_eq!(outcome.path, "/a?apikey=acme-key-1");
    let outcome = run(
        &config,
        Some(&route(&["keys"])),
        Some(&table),
        "/a",
        &[("x-api-key", "acme-key-1")],
    )
    .await;
    assert_eq!(outcome.headers["x-api-key"], "acme-key-1");
}

#[tokio::test]
async fn providers_are_tried_in_the_routes_order() {
    let (config, table) = (config(false), table());
    // The first provider's key is wrong, the second's right: accepted, and only the key that
    // matched is removed.
    let outcome = run(
        &config,
        Some(&route(&["keys", "other"])),
        Some(&table),
        "/a",
        &[("x-api-key", "wrong-key"), ("x-other-key", "acme-key-1")],
    )
    .await;
    assert_eq!(outcome.consumer.as_deref(), Some("acme"));
    assert_eq!(outcome.headers["x-api-key"], "wrong-key");
    assert!(outcome.headers.get("x-other-key").is_none());
    // A provider the filter does not have finds nothing.
    let outcome = run(
        &config,
        Some(&route(&["gone"])),
        Some(&table),
        "/a",
        &[("x-api-key", "acme-key-1")],
    )
    .await;
    assert_eq!(
        outcome.answer.unwrap().2["error"]["message"],
        "missing API key"
    );
}

#[tokio::test]
async fn missing_and_unknown_keys_get_401() {
    let (config, table) = (config(false), table());
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 5] = [
        ("/a", &[], "missing API key"),
        // An empty header is no key, and the query is not looked at then.
        (
            "/a?apikey=acme-key-1",
            &[("x-api-key", "")],
            "missing API key",
        ),
        ("/a?apikey=", &[], "missing API key"),
        ("/a", &[("x-api-key", "nobody")], "invalid API key"),
        // Two header lines are one key, joined with `,`.
        (
            "/a",
            &[("x-api-key", "acme-key-1"), ("x-api-key", "acme-key-2")],
            "invalid API key",
        ),
    ];
    for (path, headers, message) in cases {
        let outcome = run(
            &config,
            Some(&route(&["keys"])),
            Some(&table),
            path,
            headers,
        )
        .await;
        let (status, challenge, body) = outcome.answer.expect("refused");
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(challenge.unwrap(), "ApiKey realm=\"tollgate\"");
        assert_eq!(
            body,
            serde_json::json!({"error": {"code": "unauthorized", "message": message}}),
            "{path} {headers:?}"
        );
        assert!(outcome.consumer.is_none());
    }
    // A refused key is taken out of the path, which is only logged then.
    let outcome = run(
        &config,
        Some(&route(&["keys"])),
        Some(&table),
        "/a?apikey=secret-guess&b=1",
        &[],
    )
    .await;
    assert!(outcome.answer.is_some());
    assert_eq!(outcome.path, "/a?b=1");
}

#[tokio::test]
async fn routes_without_the_per_route_config_are_not_checked() {
    let (config, table) = (config(false), table());
    let outcome = run(
        &config,
        None,
        Some(&table),
        "/a",
        &[("x-consumer-name", "as-sent")],
    )
    .await;
    assert!(outcome.answer.is_none());
    assert_eq!(outcome.headers["x-consumer-name"], "as-sent");
    // Without the table (never in a complete snapshot), nothing passes.
    let outcome = run(
        &config,
        Some(&route(&["keys"])),
        None,
        "/a",
        &[("x-api-key", "acme-key-1")],
    )
    .await;
    assert_eq!(outcome.answer.unwrap().0, StatusCode::SERVICE_UNAVAILABLE);
}

#[test]
fn query_keys_are_read_as_the_control_planes_ext_authz_reads_them() {
    let key =
        |path: &str| query_key(path, "key").map(|k| String::from_utf8(k.into_owned()).unwrap());
    assert_eq!(key("/a?a=1&key=x%2Fy&key=2").as_deref(), Some("x/y"));
    assert_eq!(key("/a?key").as_deref(), Some(""));
    assert_eq!(key("/a?akey=1"), None);
    assert_eq!(key("/a"), None);
    assert_eq!(key("/a?key=%zz%41+").as_deref(), Some("%zzA+"));
    // Borrowed when there is nothing to decode.
    assert!(matches!(
        query_key("/a?key=plain", "key"),
        Some(Cow::Borrowed(b"plain"))
    ));
}
