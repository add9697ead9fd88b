use serde_json::json;

use super::*;

struct Jwt(serde_json::Value);

impl DynamicMetadata for Jwt {
    fn get(&self, namespace: &str, path: &[String]) -> Option<Cow<'_, serde_json::Value>> {
        (namespace == JWT_AUTHN_NAMESPACE)
            .then(|| lookup(&self.0, path))
            .flatten()
            .map(Cow::Borrowed)
    }
}

fn template(value: &str) -> Template {
    match header_format(value).unwrap() {
        HeaderFormat::Template(t) => t,
        HeaderFormat::Literal(v) => panic!("{value:?} read as literal {v:?}"),
    }
}

fn render(value: &str, headers: &[(&str, &str)], metadata: &dyn DynamicMetadata) -> String {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    let cx = FormatContext {
        authority: "api.test:8080",
        method: "POST",
        scheme: "https",
        client: "10.1.2.3".parse().unwrap(),
        metadata,
    };
    String::from_utf8(template(value).render(&map, &cx)).unwrap()
}

#[test]
fn literals_stay_on_the_fast_path() {
    assert_eq!(
        header_format("plain").unwrap(),
        HeaderFormat::Literal(HeaderValue::from_static("plain"))
    );
    assert_eq!(
        header_format("100%% sure").unwrap(),
        HeaderFormat::Literal(HeaderValue::from_static("100% sure"))
    );
    assert!(!header_format("x").unwrap().reads_request());
    assert!(header_format("%REQ(x)%").unwrap().reads_request());
    assert!(
        !header_format("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%")
            .unwrap()
            .reads_request()
    );
}

#[test]
fn request_headers_client_address_and_literals() {
    let headers = [
        ("x-in", "hello"),
        ("x-multi", "one"),
        ("x-multi", "two"),
        ("x-empty", ""),
    ];
    let cases = [
        ("Bearer %REQ(x-in)%", "Bearer hello"),
        ("%REQ(X-In)%", "hello"),
        // The first value, as Envoy's REQ reads it.
        ("%REQ(x-multi)%", "one"),
        // Missing parts are empty; the literal stays, as in Envoy.
        ("Bearer %REQ(x-missing)%", "Bearer "),
        ("%REQ(x-missing)% tail", " tail"),
        ("%REQ(x-missing)%", ""),
        ("%REQ(x-missing?x-in)%", "hello"),
        // Present but empty: the alternative is not tried.
        ("%REQ(x-empty?x-in)%", ""),
        ("%REQ(x-in):3%", "hel"),
        (
            "%REQ(host)%|%REQ(:authority)%|%REQ(:method)%|%REQ(:scheme)%",
            "api.test:8080|api.test:8080|POST|https",
        ),
        ("ip=%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", "ip=10.1.2.3"),
        ("100%%/%REQ(x-in)%%%", "100%/hello%"),
    ];
    for (value, expected) in cases {
        assert_eq!(render(value, &headers, &NoMetadata), expected, "{value}");
    }
}

#[test]
fn metadata_values_are_written_as_envoy_writes_them() {
    // Each expectation is what Envoy 1.40 sent upstream for the same JWT payload.
    let payload = Jwt(json!({
        "jwt_payload": {
            "sub": "user-42", "n": 42, "f": 1.5, "big": 1e16, "huge": 12345678901234567890u64,
            "neg": -3, "small": 1e-7, "t": true, "nul": null, "list": ["a", 1, true],
            "obj": {"b": 1, "a": "x", "c": [1, 2]}, "exp": 4102444800u64,
            "int53": 9007199254740993u64, "frac": 0.1, "e21": 1e21,
            "twopow": 1152921504606846976u64,
            "esc": {"ctl": "\u{1}\u{1f}\t\u{8}\u{c}\r\n", "q": "say \"hi\" \\", "sl": "a/b<>&'=",
                    "u": "\u{2028}é😀", "Ab": 2, "_": 4, "aa": 3, "é": 5, "empty": {}, "el": [],
                    "negz": -0.0, "f2": 100.25, "m": 123456789.125, "e15": 1e15,
                    "small2": 0.0001, "bigf": 1.5e300},
        }
    }));
    let md = |path: &str| format!("%DYNAMIC_METADATA({JWT_AUTHN_NAMESPACE}:jwt_payload:{path})%");
    let cases: [(&str, &str); 22] = [
        ("sub", "user-42"),
        ("n", "42"),
        ("f", "1.5"),
        ("big", "1e+16"),
        ("huge", "12345678901234567168"),
        ("neg", "-3"),
        ("small", "1e-07"),
        ("t", "true"),
        ("nul", ""),
        ("list", r#"["a",1,true]"#),
        ("obj", r#"{"a":"x","b":1,"c":[1,2]}"#),
        ("obj:a", "x"),
        ("obj:c", "[1,2]"),
        ("exp", "4102444800"),
        ("int53", "9007199254740992"),
        ("frac", "0.1"),
        ("e21", "1e+21"),
        ("twopow", "1152921504606846976"),
        // Lookups go through objects only.
        ("list:0", ""),
        ("sub:x", ""),
        ("nope", ""),
        (
            "esc",
            &r#"{"Ab":2,"_":4,"aa":3,"bigf":1.5e+300,"ctl":"\u0001\u001f\t\b\f\r\n","e15":1e+15,"el":[],"empty":{},"f2":100.25,"m":123456789.125,"negz":-0,"q":"say \"hi\" \\","sl":"a/b<>&'=","small2":1e-04,"u":"\u{2028}é😀","é":5}"#.replace("\\u{2028}", "\u{2028}"),
        ),
    ];
    for (path, expected) in cases {
        assert_eq!(render(&md(path), &[], &payload), *expected, "{path}");
    }
    assert_eq!(
        render(&format!("pre-{}", md("nope")), &[], &payload),
        "pre-"
    );
    assert_eq!(
        render(
            &format!("{}:3%", md("sub").trim_end_matches('%')),
            &[],
            &payload
        ),
        "use"
    );
    assert_eq!(render(&md("sub"), &[], &NoMetadata), "");
}

#[test]
fn to_chars_picks_the_shorter_notation() {
    for (value, expected) in [
        (0.0, "0"),
        (-0.0, "-0"),
        (1.0, "1"),
        (0.001, "0.001"),
        (0.0001, "1e-04"),
        (123456.0, "123456"),
        (1e15, "1e+15"),
        (1234567890123456.0, "1234567890123456"),
        (1.5e300, "1.5e+300"),
        (-2.5e-8, "-2.5e-08"),
        (100.25, "100.25"),
        (1.2345678901234567e21, "1234567890123456774144"),
        (1.2345678901234567e22, "1.2345678901234568e+22"),
    ] {
        assert_eq!(to_chars(value), expected, "{value}");
    }
}

#[test]
fn commands_outside_the_subset_are_refused() {
    for value in [
        "%DOWNSTREAM_REMOTE_ADDRESS%",
        "%START_TIME%",
        "%UPSTREAM_METADATA(a:b)%",
        "%REQ(:path)%",
        "%DYNAMIC_METADATA(envoy.lb:x)%",
    ] {
        assert!(
            matches!(header_format(value), Err(Reason::UnsupportedValue(_))),
            "{value}: {:?}",
            header_format(value)
        );
    }
    for value in [
        "50%",
        "%REQ(x%",
        "%REQ%",
        "%REQ()%x",
        "%REQ(x):%",
        "%req(x)%",
        "%DYNAMIC_METADATA()%",
        "%DYNAMIC_METADATA(envoy.filters.http.jwt_authn::a)%",
        "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT(x)%",
        "%REQ(a b)%",
        "bad\u{1}%REQ(x)%",
    ] {
        assert!(
            matches!(header_format(value), Err(Reason::Invalid(_))),
            "{value}: {:?}",
            header_format(value)
        );
    }
}
