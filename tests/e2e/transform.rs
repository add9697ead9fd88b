//! Transform policies, from one control plane to Envoy and to the edge proxy: header templates
//! (a request header, the client address, JWT claims), a header removal, a response header and
//! a path rewrite reach the upstream alike through both; body changes (JSON keys and fields,
//! SOAP-like XML to JSON, JSON to XML on the way back, invalid bodies passed or refused) are the
//! edge proxy's alone, and Envoy passes bodies unchanged.

use reqwest::Method;
use serde_json::{Value, json};
use support::jwt::{SigningKey, jwks, now};
use support::{ControlPlane, RecordedRequest, Upstream, free_port};

use crate::fixtures::{Peer, start_envoy_and_edge};

const ISSUER: &str = "https://idp.transform.test";
const HOST: &str = "transform.test";
const ACME_KEY: &str = "acme-key-5c1e7a9b3d2f4068";
const SOAP: &[u8] = include_bytes!("../fixtures/transform/soap-request.xml");
const SOAP_JSON: &[u8] = include_bytes!("../fixtures/transform/soap-request.json");

/// POSTs `body` as JSON in 64 KiB chunks (no length known in advance) over a raw HTTP/1.1
/// connection, and returns the response's status.
async fn post_chunked(port: u16, path: &str, body: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {HOST}\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    for chunk in body.chunks(64 * 1024) {
        stream
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .expect("write");
        stream.write_all(chunk).await.expect("write");
        stream.write_all(b"\r\n").await.expect("write");
    }
    stream.write_all(b"0\r\n\r\n").await.expect("write");
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let status = String::from_utf8_lossy(&response[..response.len().min(12)]).into_owned();
    status
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {status:?}"))
}

/// The one request the upstream received since it was last cleared.
fn only(upstream: &Upstream, what: &str) -> RecordedRequest {
    let requests = upstream.requests();
    assert_eq!(requests.len(), 1, "{what}: {requests:?}");
    upstream.clear();
    requests.into_iter().next().expect("one request")
}

#[tokio::test]
async fn envoy_and_the_edge_proxy_apply_the_same_transforms() {
    let Some(_) = support::require_envoy() else {
        return;
    };
    let key = SigningKey::rsa_a("transform-key");
    let cp = ControlPlane::start().await.expect("control plane starts");
    let upstream = Upstream::start("shop").await;
    let (envoy_port, edge_port) = (free_port(), free_port());
    // Listeners behind one trusted proxy: the client address comes from x-forwarded-for.
    let (envoy_hop_port, edge_hop_port) = (free_port(), free_port());

    cp.put_all([
        (
            "clusters",
            "shop",
            json!({"endpoints": [{"address": "127.0.0.1", "port": upstream.port()}]}),
        ),
        (
            "policies",
            "idp",
            json!({"type": "jwt", "issuer": ISSUER, "jwks": jwks(&[&key])}),
        ),
        (
            "policies",
            "shape",
            json!({
                "type": "transform",
                "request": {
                    "headers": {
                        "set": {
                            "x-user": "user={claim.sub}",
                            "x-tenant": "{claim.tenant.id}",
                            "x-level": "{claim.level}",
                            "x-roles": "{claim.roles}",
                            "x-source": "from {header.x-origin-app}",
                            "x-client": "{client_ip}",
                            "x-absent": "{header.x-not-sent}",
                            "x-host": "{header.host}",
                        },
                        "add": {"x-note": "100% {{literal}}"},
                        "remove": ["x-debug"],
                    },
                    "path": {"regex": "^/v1/(.*)", "substitution": "/api/\\1"},
                },
                "response": {"headers": {"set": {"x-echo-origin": "{header.x-origin-app}",
                                                 "x-echo-user": "{claim.sub}"}}},
            }),
        ),
        (
            "consumers",
            "acme",
            json!({"tier": "gold", "api_keys": [ACME_KEY], "groups": ["partners", "beta"]}),
        ),
        ("policies", "keys", json!({"type": "api_key"})),
        (
            "policies",
            "who",
            json!({"type": "transform", "request": {"headers": {"set": {
            "x-who": "{consumer.name}/{consumer.tier}"}}},
            "response": {"headers": {"set": {"x-served-for": "{consumer.name}"}}}}),
        ),
        (
            "policies",
            "reshape",
            json!({"type": "transform", "request": {"body": {
            "rename_keys": "snake_case", "remove": ["password"],
            "add": {"meta.source": "gateway", "meta.version": 2}}}}),
        ),
        (
            "policies",
            "strict",
            json!({"type": "transform", "request": {"body": {
            "rename_keys": "snake_case", "on_invalid": "reject"}}}),
        ),
        (
            "policies",
            "soap",
            json!({"type": "transform", "request": {"body": {"convert": "xml_to_json"}}}),
        ),
        (
            "policies",
            "to-xml",
            json!({"type": "transform", "response": {"body": {"convert": "json_to_xml"}}}),
        ),
        (
            "policies",
            "camel-out",
            json!({"type": "transform", "response": {"body": {"rename_keys": "camel_case",
            "remove": ["internal"], "on_invalid": "reject"}}}),
        ),
    ])
    .await;
    cp.put_all(
        [
            ("shaped", "/v1", json!(["idp", "shape"])),
            ("keyed", "/keyed", json!(["keys", "who"])),
            ("bodies", "/bodies", json!(["reshape"])),
            ("strict", "/strict", json!(["strict"])),
            ("soap", "/soap", json!(["soap"])),
            ("xml-out", "/xml-out", json!(["to-xml"])),
            ("camel-out", "/camel-out", json!(["camel-out"])),
        ]
        .map(|(name, prefix, policies)| {
            let route =
                json!({"match": {"path_prefix": prefix}, "cluster": "shop", "policies": policies});
            ("routes", name, route)
        }),
    )
    .await;
    let revision = cp
        .put_all([
            (
                "listeners",
                "envoy-hop",
                json!({"address": "127.0.0.1", "port": envoy_hop_port, "node_cluster": "envoy",
               "trusted_proxy_hops": 1}),
            ),
            (
                "listeners",
                "edge-hop",
                json!({"address": "127.0.0.1", "port": edge_hop_port, "node_cluster": "edge",
               "trusted_proxy_hops": 1}),
            ),
            (
                "listeners",
                "envoy-l",
                json!({"address": "127.0.0.1", "port": envoy_port, "node_cluster": "envoy"}),
            ),
            (
                "listeners",
                "edge-l",
                json!({"address": "127.0.0.1", "port": edge_port, "node_cluster": "edge"}),
            ),
        ])
        .await;

    let (_envoy, _edge) = start_envoy_and_edge(&cp, "transform", revision).await;
    let [envoy, edge] = Peer::envoy_and_edge(envoy_port, edge_port, HOST);
    for peer in [&envoy, &edge] {
        peer.wait_serving("/bodies", &[]).await;
    }
    upstream.clear();

    // Header templates and the path rewrite: the upstream sees the same through both.
    let token = key.sign(&json!({
        "iss": ISSUER, "sub": "user-42", "exp": now() + 600,
        "tenant": {"id": "acme"}, "level": 3, "roles": ["admin", "ops"],
    }));
    let bearer = format!("Bearer {token}");
    let headers = [
        ("authorization", bearer.as_str()),
        ("x-origin-app", "mobile"),
        ("x-debug", "1"),
    ];
    let mut seen = Vec::new();
    for peer in [&envoy, &edge] {
        let response = peer
            .request(Method::GET, "/v1/orders/7?full=1", &headers, None)
            .await;
        assert_eq!(response.status, 200, "{}: {}", peer.name, response.body);
        assert_eq!(
            response.header("x-echo-origin"),
            Some("mobile"),
            "{}",
            peer.name
        );
        assert_eq!(
            response.header("x-echo-user"),
            Some("user-42"),
            "{}",
            peer.name
        );
        seen.push(only(&upstream, peer.name));
    }
    let templated = [
        "x-user", "x-tenant", "x-level", "x-roles", "x-source", "x-client", "x-absent", "x-host",
        "x-note", "x-debug",
    ];
    let view = |request: &RecordedRequest| {
        let mut view = vec![("path".to_owned(), Some(request.path.clone()))];
        view.extend(
            templated
                .iter()
                .map(|h| ((*h).to_owned(), request.header(h).map(str::to_owned))),
        );
        view
    };
    assert_eq!(
        view(&seen[0]),
        view(&seen[1]),
        "envoy (left) and edge (right) differ"
    );
    let expected: Vec<(String, Option<String>)> = [
        ("path", Some("/api/orders/7?full=1")),
        ("x-user", Some("user=user-42")),
        ("x-tenant", Some("acme")),
        // Envoy writes non-string claims as JSON.
        ("x-level", Some("3")),
        ("x-roles", Some(r#"["admin","ops"]"#)),
        ("x-source", Some("from mobile")),
        ("x-client", Some("127.0.0.1")),
        // A header whose value is empty is not sent.
        ("x-absent", None),
        ("x-host", Some(HOST)),
        ("x-note", Some("100% {literal}")),
        ("x-debug", None),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.map(str::to_owned)))
    .collect();
    assert_eq!(view(&seen[1]), expected);

    // Behind a trusted proxy, the client address is the one x-forwarded-for names.
    for peer in Peer::envoy_and_edge(envoy_hop_port, edge_hop_port, HOST) {
        let response = peer
            .request(
                Method::GET,
                "/v1/orders/7",
                &[
                    ("authorization", bearer.as_str()),
                    ("x-forwarded-for", "203.0.113.9"),
                ],
                None,
            )
            .await;
        assert_eq!(response.status, 200, "{}: {}", peer.name, response.body);
        let request = only(&upstream, peer.name);
        assert_eq!(
            request.header("x-client"),
            Some("203.0.113.9"),
            "{}",
            peer.name
        );
    }

    // The API key's consumer: Envoy reads it from the control plane's ext_authz answer, the
    // edge proxy from its key table.
    let mut seen = Vec::new();
    for peer in [&envoy, &edge] {
        let response = peer
            .request(Method::GET, "/keyed", &[("x-api-key", ACME_KEY)], None)
            .await;
        assert_eq!(response.status, 200, "{}: {}", peer.name, response.body);
        assert_eq!(
            response.header("x-served-for"),
            Some("acme"),
            "{}",
            peer.name
        );
        seen.push(only(&upstream, peer.name));
    }
    for request in &seen {
        assert_eq!(
            request.header("x-who"),
            Some("acme/gold"),
            "{:?}",
            request.headers
        );
    }

    // Request bodies: changed by the edge proxy, passed unchanged by Envoy.
    let json_type = [("content-type", "application/json")];
    let original =
        br#"{"userName":"ada","password":"secret","homeAddress":{"zipCode":"75001"},"score":1.50}"#;
    envoy
        .request(Method::POST, "/bodies", &json_type, Some(original))
        .await;
    assert_eq!(&only(&upstream, "envoy body").body[..], &original[..]);
    let response = edge
        .request(Method::POST, "/bodies", &json_type, Some(original))
        .await;
    assert_eq!(response.status, 200, "{}", response.body);
    let received = only(&upstream, "edge body");
    let expected = br#"{"user_name":"ada","home_address":{"zip_code":"75001"},"score":1.50,"meta":{"source":"gateway","version":2}}"#;
    assert_eq!(
        String::from_utf8_lossy(&received.body),
        String::from_utf8_lossy(expected)
    );
    assert_eq!(
        received.header("content-length"),
        Some(expected.len().to_string().as_str())
    );

    // A SOAP-like XML request becomes JSON.
    let xml_type = [("content-type", "text/xml; charset=utf-8")];
    envoy
        .request(Method::POST, "/soap", &xml_type, Some(SOAP))
        .await;
    assert_eq!(&only(&upstream, "envoy soap").body[..], SOAP);
    let response = edge
        .request(Method::POST, "/soap", &xml_type, Some(SOAP))
        .await;
    assert_eq!(response.status, 200, "{}", response.body);
    let received = only(&upstream, "edge soap");
    assert_eq!(received.header("content-type"), Some("application/json"));
    let received: Value = serde_json::from_slice(&received.body).expect("JSON");
    let expected: Value = serde_json::from_slice(SOAP_JSON).expect("the fixture is JSON");
    assert_eq!(received, expected);

    // Invalid JSON: passed byte for byte, or refused with 400.
    let invalid = b"{\"userName\": \"ada\", oops";
    edge.request(Method::POST, "/bodies", &json_type, Some(invalid))
        .await;
    assert_eq!(&only(&upstream, "edge invalid").body[..], &invalid[..]);
    for peer in [&envoy, &edge] {
        let response = peer
            .request(Method::POST, "/strict", &json_type, Some(invalid))
            .await;
        if peer.name == "envoy" {
            assert_eq!(response.status, 200);
            assert_eq!(&only(&upstream, "envoy strict").body[..], &invalid[..]);
        } else {
            assert_eq!(response.status, 400, "{}", response.body);
            assert_eq!(response.header("content-type"), Some("application/json"));
            let error = response.json().expect("a JSON error");
            assert_eq!(error["error"]["code"], "invalid_body");
            assert_eq!(
                upstream.request_count(),
                0,
                "a refused body never goes upstream"
            );
        }
    }

    // Bodies over 1 MiB: streamed on unchanged (what was read first included), or refused.
    let large = format!(
        r#"{{"userName":"{}","password":"x"}}"#,
        "a".repeat(2 * 1024 * 1024)
    );
    let status = post_chunked(edge_port, "/bodies", large.as_bytes()).await;
    assert_eq!(status, 200);
    let received = only(&upstream, "edge large body");
    assert!(
        received.body == large.as_bytes(),
        "the large body arrived changed"
    );
    assert_eq!(
        post_chunked(edge_port, "/strict", large.as_bytes()).await,
        413
    );
    assert_eq!(
        upstream.request_count(),
        0,
        "a refused body never goes upstream"
    );
    let response = edge
        .request(Method::POST, "/strict", &json_type, Some(large.as_bytes()))
        .await;
    assert_eq!(response.status, 413);
    assert_eq!(
        response.json().expect("JSON")["error"]["code"],
        "body_too_large"
    );
    let response = edge
        .request(
            Method::POST,
            "/xml-out/echo-body",
            &json_type,
            Some(large.as_bytes()),
        )
        .await;
    assert_eq!((response.status, response.body.len()), (200, large.len()));
    upstream.clear();

    // Response bodies, from an upstream that returns what it is sent.
    let order = br#"{"order":{"id":7,"note":"a < b"}}"#;
    let response = envoy
        .request(Method::POST, "/xml-out/echo-body", &json_type, Some(order))
        .await;
    assert_eq!(response.body.as_bytes(), order);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let response = edge
        .request(Method::POST, "/xml-out/echo-body", &json_type, Some(order))
        .await;
    assert_eq!(response.status, 200);
    let xml =
        r#"<?xml version="1.0" encoding="UTF-8"?><order><id>7</id><note>a &lt; b</note></order>"#;
    assert_eq!(response.body, xml);
    assert_eq!(response.header("content-type"), Some("application/xml"));
    assert_eq!(
        response.header("content-length"),
        Some(xml.len().to_string().as_str())
    );
    let snake = br#"{"user_id":1,"internal":true,"home_address":{"zip_code":"1"}}"#;
    let response = edge
        .request(
            Method::POST,
            "/camel-out/echo-body",
            &json_type,
            Some(snake),
        )
        .await;
    assert_eq!(
        response.body,
        r#"{"userId":1,"homeAddress":{"zipCode":"1"}}"#
    );
    let response = edge
        .request(
            Method::POST,
            "/camel-out/echo-body",
            &json_type,
            Some(b"not json"),
        )
        .await;
    assert_eq!(response.status, 502, "{}", response.body);
    assert_eq!(
        response.json().expect("JSON")["error"]["code"],
        "invalid_body"
    );
    // Another type is none of the transform's business.
    let response = edge
        .request(
            Method::POST,
            "/camel-out/echo-body",
            &[("content-type", "text/plain")],
            Some(b"not json"),
        )
        .await;
    assert_eq!((response.status, response.body.as_str()), (200, "not json"));
}
