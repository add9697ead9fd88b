use super::*;

const SOAP: &[u8] = include_bytes!("../../../../../tests/fixtures/transform/soap-request.xml");
const SOAP_JSON: &[u8] =
    include_bytes!("../../../../../tests/fixtures/transform/soap-request.json");

fn json(doc: &[u8]) -> String {
    String::from_utf8(xml_to_json(doc).unwrap().to_vec()).unwrap()
}

fn xml(doc: &str) -> String {
    String::from_utf8(json_to_xml(&Json::parse(doc.as_bytes()).unwrap()).unwrap()).unwrap()
}

#[test]
fn soap_envelope_becomes_the_documented_json() {
    let expected = String::from_utf8(Json::parse(SOAP_JSON).unwrap().to_vec()).unwrap();
    assert_eq!(json(SOAP), expected);
    // With a byte order mark too.
    let with_bom = [&b"\xef\xbb\xbf"[..], SOAP].concat();
    assert_eq!(json(&with_bom), expected);
}

#[test]
fn elements_attributes_and_text() {
    for (input, expected) in [
        ("<a>1</a>", r#"{"a":"1"}"#),
        ("<a/>", r#"{"a":""}"#),
        ("<a></a>", r#"{"a":""}"#),
        ("<a> </a>", r#"{"a":" "}"#),
        (r#"<a x="1"/>"#, r#"{"a":{"@x":"1"}}"#),
        (r#"<a x="1">t</a>"#, r##"{"a":{"@x":"1","#text":"t"}}"##),
        (
            "<l><i>1</i><j/><i>2</i></l>",
            r#"{"l":{"i":["1","2"],"j":""}}"#,
        ),
        (
            "<p>Hello <b>x</b> world</p>",
            r##"{"p":{"#text":"Hello  world","b":"x"}}"##,
        ),
        ("<a>\n  <b>1</b>\n</a>", r#"{"a":{"b":"1"}}"#),
        (
            "<a>&lt;&#x41;&#66;&quot;&apos;&amp;&gt;</a>",
            r#"{"a":"<AB\"'&>"}"#,
        ),
        (
            "<?xml version=\"1.0\"?><!-- c --><?pi x?><a><!-- c -->v</a>",
            r#"{"a":"v"}"#,
        ),
        (
            "<x:a xmlns:x=\"urn:x\" xmlns=\"urn:d\" x:k=\"v\"/>",
            r#"{"a":{"@k":"v"}}"#,
        ),
        ("<a>\r\nline</a>", r#"{"a":"\nline"}"#),
    ] {
        assert_eq!(json(input.as_bytes()), expected, "{input}");
    }
}

#[test]
fn refuses_what_is_not_well_formed_xml() {
    for bad in [
        &b""[..],
        b"just text",
        b"<a>",
        b"<a></b>",
        b"<a/><b/>",
        b"<a/>trailing",
        b"<a>&unknown;</a>",
        b"<!DOCTYPE a [<!ENTITY e \"x\">]><a>&e;</a>",
        b"<a x=\"1\" x=\"2\"/>",
        b"<a>\xff</a>",
        b"{\"a\": 1}",
    ] {
        assert!(
            xml_to_json(bad).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    let deep = "<a>".repeat(MAX_DEPTH + 1) + &"</a>".repeat(MAX_DEPTH + 1);
    assert!(xml_to_json(deep.as_bytes()).is_err());
    assert!(xml_to_json(b"<a x=\"1\" y=\"2\" x=\"3\"/>").is_err());
    // Many attributes stay linear.
    let many: String = (0..50_000).map(|i| format!(" a{i}=\"1\"")).collect();
    let doc = json(format!("<e{many}/>").as_bytes());
    assert!(doc.starts_with(r#"{"e":{"@a0":"1","@a1":"1""#));
}

#[test]
fn json_becomes_xml() {
    const DECL: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;
    for (input, expected) in [
        (
            r#"{"order":{"id":7,"ok":true,"note":null}}"#,
            "<order><id>7</id><ok>true</ok><note/></order>",
        ),
        (r#"{"a":1,"b":2}"#, "<root><a>1</a><b>2</b></root>"),
        (r#"[1,"x"]"#, "<root><item>1</item><item>x</item></root>"),
        (r#""s""#, "<root>s</root>"),
        (
            r#"{"l":{"i":["1",{"@k":"v"}]}}"#,
            r#"<l><i>1</i><i k="v"/></l>"#,
        ),
        (
            r#"{"l":{"i":[[1,2]]}}"#,
            "<l><i><item>1</item><item>2</item></i></l>",
        ),
        (
            r##"{"a":{"@x":"<\"&\n","#text":"1 < 2 & 3 > 2\r"}}"##,
            r#"<a x="&lt;&quot;&amp;&#10;">1 &lt; 2 &amp; 3 &gt; 2&#13;</a>"#,
        ),
        (r#"{"a":{}}"#, "<a/>"),
        (r#"{"é":"ü"}"#, "<é>ü</é>"),
    ] {
        assert_eq!(xml(input), format!("{DECL}{expected}"), "{input}");
    }
    for bad in [
        r#"{"1a":1}"#,
        r#"{"a b":1}"#,
        r#"{"ns:a":1}"#,
        r#"{"":1}"#,
        r#"{"a":{"@x":{}}}"#,
        r##"{"a":{"#text":[1]}}"##,
        r#"{"a":"\u0001"}"#,
    ] {
        assert!(
            json_to_xml(&Json::parse(bad.as_bytes()).unwrap()).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn json_to_xml_reads_back_as_the_same_json() {
    let doc = json(SOAP);
    let back = json_to_xml(&Json::parse(doc.as_bytes()).unwrap()).unwrap();
    assert_eq!(json(&back), doc);
}
