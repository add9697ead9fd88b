use http_body_util::BodyExt as _;

use super::*;

const SOAP: &[u8] = include_bytes!("../../../../tests/fixtures/transform/soap-request.xml");
const SOAP_JSON: &[u8] = include_bytes!("../../../../tests/fixtures/transform/soap-request.json");

fn path(p: &str) -> Vec<String> {
    p.split('.').map(str::to_owned).collect()
}

fn transform(convert: Conversion) -> BodyTransform {
    BodyTransform {
        convert,
        rename_keys: None,
        remove: Vec::new(),
        add: Vec::new(),
        reject_invalid: false,
    }
}

fn json_changes() -> BodyTransform {
    BodyTransform {
        rename_keys: Some(KeyCase::SnakeCase),
        remove: vec![path("password"), path("profile.internal_id")],
        add: vec![
            (path("meta.source"), Json::String("gateway".into())),
            (path("profile.verified"), Json::Bool(true)),
        ],
        ..transform(Conversion::None)
    }
}

fn changed(outcome: Outcome) -> (String, Option<&'static str>) {
    match outcome {
        Outcome::Changed { body, content_type } => (String::from_utf8(body).unwrap(), content_type),
        other => panic!("not changed: {other:?}"),
    }
}

#[test]
fn content_types() {
    for (value, kind) in [
        ("application/json", Some(Kind::Json)),
        ("Application/JSON; charset=utf-8", Some(Kind::Json)),
        ("application/problem+json", Some(Kind::Json)),
        ("application/xml", Some(Kind::Xml)),
        ("text/xml; charset=UTF-8", Some(Kind::Xml)),
        ("application/soap+xml", Some(Kind::Xml)),
        ("text/plain", None),
        ("application/jsonp", None),
        ("+json", None),
        ("", None),
    ] {
        assert_eq!(Kind::of(value), kind, "{value}");
    }
}

#[test]
fn json_rename_remove_add() {
    let body = br#"{"userName":"ada","password":"x","profile":{"internalID":7,"HTTPServer":"a","addressLines":[{"lineNo":1}]},"score":1.50}"#;
    let (out, content_type) = changed(apply(&[json_changes()], Kind::Json, body));
    // Key order and number text are kept; removals and additions follow renaming.
    assert_eq!(
        out,
        r#"{"user_name":"ada","profile":{"http_server":"a","address_lines":[{"line_no":1}],"verified":true},"score":1.50,"meta":{"source":"gateway"}}"#
    );
    assert_eq!(content_type, None);
}

#[test]
fn soap_request_to_json_then_snake_case() {
    let (out, content_type) = changed(apply(&[transform(Conversion::XmlToJson)], Kind::Xml, SOAP));
    assert_eq!(out.as_bytes(), Json::parse(SOAP_JSON).unwrap().to_vec());
    assert_eq!(content_type, Some("application/json"));

    let convert_and_rename = BodyTransform {
        rename_keys: Some(KeyCase::SnakeCase),
        remove: vec![path("envelope.header")],
        ..transform(Conversion::XmlToJson)
    };
    let (out, _) = changed(apply(&[convert_and_rename], Kind::Xml, SOAP));
    assert!(
        out.starts_with(
            r#"{"envelope":{"body":{"create_order":{"@currency":"EUR","customer_id":"C-42""#
        ),
        "{out}"
    );
}

#[test]
fn json_to_xml_sets_its_type() {
    let (out, content_type) = changed(apply(
        &[transform(Conversion::JsonToXml)],
        Kind::Json,
        br#"{"order":{"id":7}}"#,
    ));
    assert_eq!(
        out,
        r#"<?xml version="1.0" encoding="UTF-8"?><order><id>7</id></order>"#
    );
    assert_eq!(content_type, Some("application/xml"));
}

#[test]
fn transforms_chain_and_skip_what_does_not_fit() {
    let chain = [transform(Conversion::XmlToJson), json_changes()];
    // XML: converted, then the JSON changes apply to the result.
    let (out, content_type) = changed(apply(&chain, Kind::Xml, b"<r><userName>a</userName></r>"));
    assert_eq!(
        out,
        r#"{"r":{"user_name":"a"},"meta":{"source":"gateway"},"profile":{"verified":true}}"#
    );
    assert_eq!(content_type, Some("application/json"));
    // JSON: the conversion does not fit and is skipped.
    let (out, content_type) = changed(apply(&chain, Kind::Json, br#"{"userName":"a"}"#));
    assert_eq!(
        out,
        r#"{"user_name":"a","meta":{"source":"gateway"},"profile":{"verified":true}}"#
    );
    assert_eq!(content_type, None);
    assert_eq!(first_applicable(&chain, Kind::Json), Some(&chain[1]));
    assert_eq!(first_applicable(&chain[..1], Kind::Json), None);
}

#[test]
fn invalid_bodies_pass_unchanged_or_are_refused() {
    let pass = [json_changes()];
    let reject = [BodyTransform {
        reject_invalid: true,
        ..json_changes()
    }];
    for body in [&b"{\"a\":"[..], b"not json", b"{\"a\":1}}"] {
        assert_eq!(apply(&pass, Kind::Json, body), Outcome::Unchanged);
        assert!(
            matches!(apply(&reject, Kind::Json, body), Outcome::Invalid(m) if m.starts_with("not valid JSON"))
        );
    }
    let xml = [BodyTransform {
        reject_invalid: true,
        ..transform(Conversion::XmlToJson)
    }];
    assert_eq!(
        apply(&xml, Kind::Xml, b"<a>"),
        Outcome::Invalid("not valid XML: unclosed element".into())
    );
    // Empty bodies are left alone, even when refusing invalid ones.
    assert_eq!(apply(&reject, Kind::Json, b""), Outcome::Unchanged);
    // JSON that XML cannot carry.
    let to_xml = [BodyTransform {
        reject_invalid: true,
        ..transform(Conversion::JsonToXml)
    }];
    assert!(
        matches!(apply(&to_xml, Kind::Json, br#"{"1a":1}"#), Outcome::Invalid(m) if m.starts_with("cannot be converted to XML"))
    );
}

#[test]
fn request_headers_follow_the_body() {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
    let body = request_body(
        &[transform(Conversion::XmlToJson)],
        Kind::Xml,
        &mut headers,
        Bytes::from_static(b"<a>1</a>"),
    )
    .unwrap();
    assert_eq!(&body[..], br#"{"a":"1"}"#);
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(headers[header::CONTENT_LENGTH], "9");

    // Unchanged: the same bytes, the same headers.
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("8"));
    let body = request_body(
        &[json_changes()],
        Kind::Json,
        &mut headers,
        Bytes::from_static(b"not json"),
    )
    .unwrap();
    assert_eq!(&body[..], b"not json");
    assert_eq!(headers[header::CONTENT_LENGTH], "8");

    let refused = request_body(
        &[BodyTransform {
            reject_invalid: true,
            ..json_changes()
        }],
        Kind::Json,
        &mut HeaderMap::new(),
        Bytes::from_static(b"{"),
    )
    .unwrap_err();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert_eq!(refused.headers()[header::CONTENT_TYPE], "application/json");
}

async fn respond(
    transforms: &[BodyTransform],
    head: bool,
    status: u16,
    headers: &[(&str, &str)],
    body: &'static [u8],
) -> (StatusCode, HeaderMap, Vec<u8>) {
    let mut response = Response::new(crate::proxy::body::full(body));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    for (name, value) in headers {
        response.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    let response = super::response(transforms, head, response).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes().to_vec();
    (parts.status, parts.headers, body)
}

#[tokio::test]
async fn responses_get_a_correct_length_and_type() {
    let to_xml = [transform(Conversion::JsonToXml)];
    let json = [
        ("content-type", "application/json"),
        ("content-length", "11"),
        ("etag", "\"v1\""),
    ];
    let (status, headers, body) = respond(&to_xml, false, 200, &json, br#"{"a":"b"}  "#).await;
    assert_eq!(status, StatusCode::OK);
    let expected = br#"<?xml version="1.0" encoding="UTF-8"?><a>b</a>"#;
    assert_eq!(body, expected);
    assert_eq!(
        headers[header::CONTENT_LENGTH],
        expected.len().to_string().as_str()
    );
    assert_eq!(headers[header::CONTENT_TYPE], "application/xml");
    assert_eq!(headers[header::ETAG], "W/\"v1\"");

    // No body to transform: HEAD, 204, 304; another type; a compressed body.
    for (head, status, headers) in [
        (true, 200, &json[..]),
        (false, 204, &json[..]),
        (false, 304, &json[..]),
        (false, 200, &[("content-type", "text/plain")][..]),
        (
            false,
            200,
            &[
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
            ][..],
        ),
    ] {
        let (_, out, body) = respond(&to_xml, head, status, headers, br#"{"a":"b"}  "#).await;
        assert_eq!(body, br#"{"a":"b"}  "#, "{head} {status} {headers:?}");
        assert_eq!(
            out.get(header::CONTENT_TYPE),
            headers
                .first()
                .map(|(_, v)| HeaderValue::from_str(v).unwrap())
                .as_ref()
        );
    }

    // Invalid: passed byte for byte, or refused with 502.
    let (status, headers, body) = respond(&to_xml, false, 200, &json, b"{oops").await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"{oops"[..]));
    assert_eq!(headers[header::CONTENT_LENGTH], "11");
    let reject = [BodyTransform {
        reject_invalid: true,
        ..transform(Conversion::JsonToXml)
    }];
    let (status, headers, body) = respond(&reject, false, 200, &json, b"{oops").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["error"]["code"], "invalid_body");
    assert_eq!(
        error["error"]["message"],
        "response body is not valid JSON: expected a member name at byte 1"
    );
}
