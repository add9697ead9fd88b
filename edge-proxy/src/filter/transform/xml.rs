//! XML ↔ JSON for the body transforms' `xml_to_json` and `json_to_xml`.
//!
//! XML → JSON:
//! - The document becomes an object with one member, the root element:
//!   `<a>1</a>` → `{"a":"1"}`.
//! - An element with neither attributes nor child elements is its text, a string (`""` when
//!   empty), kept exactly (whitespace included). Values are never guessed to be numbers or
//!   booleans: `<n>1</n>` is `"1"`.
//! - Any other element is an object: its attributes as `"@name"` members first, then its text
//!   as `"#text"` (when it has some besides whitespace between elements; the pieces of mixed
//!   content are concatenated, so where the text stood among the children is lost), then its
//!   child elements by name, in order of first appearance. Repeated names become an array, in
//!   document order: `<l><i>1</i><i>2</i></l>` → `{"l":{"i":["1","2"]}}`.
//! - Namespace prefixes are stripped from element and attribute names (`soap:Envelope` →
//!   `Envelope`, `xsi:nil` → `@nil`) and namespace declarations (`xmlns`, `xmlns:*`) dropped:
//!   JSON consumers address fields by local name. Two children differing only by prefix merge
//!   into one array.
//! - Entities (`&lt;`, `&#233;`) and CDATA sections become text; comments, processing
//!   instructions and the XML declaration are dropped.
//! - Refused as invalid: anything not well-formed, not UTF-8, a `DOCTYPE` (no DTD processing,
//!   so no entity expansion), an entity other than the five predefined ones, text or a second
//!   element outside the root, nesting deeper than [`MAX_DEPTH`].
//!
//! JSON → XML, the inverse:
//! - An object with exactly one member is the root element of that name; any other document is
//!   wrapped in a `<root>` element.
//! - A string, number or boolean is an element's text (numbers as written), `null` an empty
//!   element `<a/>`; an object's `"@name"` members (string, number, boolean or `null`) are
//!   attributes, `"#text"` its text, other members child elements; an array as a member's
//!   value repeats the element, and an array inside an array (or as the root's value) becomes
//!   `<item>` elements.
//! - Output: `<?xml version="1.0" encoding="UTF-8"?>` and the elements, without indentation.
//! - Refused as invalid: a member name that is not an XML name (letters, digits, `_`, `-`,
//!   `.`; not starting with a digit, `-` or `.`; no `:`), an object or array as an attribute
//!   or `#text`, and characters XML 1.0 cannot carry (control characters other than tab, line
//!   feed and carriage return).

use std::collections::HashMap;

use quick_xml::XmlVersion;
use quick_xml::events::{BytesStart, Event};

use super::json::{Json, MAX_DEPTH};

/// Why a body could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConvertError(String);

fn invalid(message: impl Into<String>) -> ConvertError {
    ConvertError(message.into())
}

/// An element being read: what it has so far.
#[derive(Default)]
struct Element {
    name: String,
    attributes: Vec<(String, Json)>,
    /// Child elements grouped by name, in order of first appearance.
    children: Vec<(String, Json)>,
    /// Index of each name in `children`.
    index: HashMap<String, usize>,
    /// All text, for an element that turns out to be a leaf.
    text: String,
    /// The current run of text since the last child element.
    run: String,
    /// Runs that are not only whitespace, for `#text`.
    mixed: String,
}

impl Element {
    fn start(start: &BytesStart<'_>) -> Result<Self, ConvertError> {
        let mut element = Element {
            name: start.name().local_name().into_inner().to_owned(),
            ..Default::default()
        };
        // quick-xml's duplicate check compares each attribute with every earlier one; a
        // set keeps an element with many attributes linear.
        let mut seen = std::collections::HashSet::new();
        for attribute in start.attributes().with_checks(false) {
            let attribute = attribute.map_err(|e| invalid(format!("invalid attribute: {e}")))?;
            let key = attribute.key;
            if !seen.insert(key.0) {
                return Err(invalid(format!("duplicate attribute {:?}", key.0)));
            }
            if key.as_namespace_binding().is_some() {
                continue;
            }
            let value = attribute
                .normalized_value(XmlVersion::Implicit1_0)
                .map_err(|e| invalid(format!("invalid attribute value: {e}")))?;
            element.attributes.push((
                format!("@{}", key.local_name().into_inner()),
                Json::String(value.into_owned()),
            ));
        }
        Ok(element)
    }

    fn push_text(&mut self, text: &str) {
        self.text.push_str(text);
        self.run.push_str(text);
    }

    fn flush_run(&mut self) {
        if !self.run.trim_matches(is_xml_space).is_empty() {
            self.mixed.push_str(&self.run);
        }
        self.run.clear();
    }

    fn add_child(&mut self, name: String, value: Json) {
        self.flush_run();
        match self.index.get(&name) {
            Some(&i) => match &mut self.children[i].1 {
                Json::Array(items) => items.push(value),
                first => {
                    let first = std::mem::replace(first, Json::Null);
                    self.children[i].1 = Json::Array(vec![first, value]);
                }
            },
            None => {
                self.index.insert(name.clone(), self.children.len());
                self.children.push((name, value));
            }
        }
    }

    fn finish(mut self) -> (String, Json) {
        self.flush_run();
        if self.attributes.is_empty() && self.children.is_empty() {
            return (self.name, Json::String(self.text));
        }
        let mut members = self.attributes;
        if !self.mixed.is_empty() {
            members.push(("#text".to_owned(), Json::String(self.mixed)));
        }
        members.extend(self.children);
        (self.name, Json::Object(members))
    }
}

fn is_xml_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// XML → JSON (see the module's rules).
pub fn xml_to_json(body: &[u8]) -> Result<Json, ConvertError> {
    let body = body.strip_prefix(b"\xef\xbb\xbf").unwrap_or(body);
    let text = std::str::from_utf8(body).map_err(|_| invalid("XML body is not UTF-8"))?;
    let mut reader = quick_xml::Reader::from_str(text);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<(String, Json)> = None;
    let outside = |what: &str| invalid(format!("{what} outside the root element"));
    loop {
        let event = reader.read_event().map_err(|e| {
            invalid(format!(
                "invalid XML at byte {}: {e}",
                reader.error_position()
            ))
        })?;
        match event {
            Event::Start(start) | Event::Empty(start) if root.is_some() && stack.is_empty() => {
                let _ = start;
                return Err(outside("a second element"));
            }
            Event::Start(start) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(invalid("XML nesting too deep"));
                }
                stack.push(Element::start(&start)?);
            }
            Event::Empty(start) => {
                let (name, value) = Element::start(&start)?.finish();
                match stack.last_mut() {
                    Some(parent) => parent.add_child(name, value),
                    None => root = Some((name, value)),
                }
            }
            Event::End(_) => {
                // quick-xml checks that the end tag matches its start tag.
                let (name, value) = stack
                    .pop()
                    .ok_or_else(|| invalid("unmatched end tag"))?
                    .finish();
                match stack.last_mut() {
                    Some(parent) => parent.add_child(name, value),
                    None => root = Some((name, value)),
                }
            }
            Event::Text(text) => {
                let text = text.xml10_content();
                match stack.last_mut() {
                    Some(element) => element.push_text(&text),
                    None if text.trim_matches(is_xml_space).is_empty() => {}
                    None => return Err(outside("text")),
                }
            }
            Event::CData(data) => match stack.last_mut() {
                Some(element) => element.push_text(&data.xml10_content()),
                None => return Err(outside("CDATA")),
            },
            Event::GeneralRef(reference) => {
                let Some(element) = stack.last_mut() else {
                    return Err(outside("an entity"));
                };
                let resolved = match reference
                    .resolve_char_ref()
                    .map_err(|e| invalid(format!("invalid character reference: {e}")))?
                {
                    Some(c) => c,
                    None => match &*reference {
                        "lt" => '<',
                        "gt" => '>',
                        "amp" => '&',
                        "apos" => '\'',
                        "quot" => '"',
                        other => return Err(invalid(format!("unknown entity &{other};"))),
                    },
                };
                element.push_text(resolved.encode_utf8(&mut [0; 4]));
            }
            Event::DocType(_) => return Err(invalid("DOCTYPE is not accepted")),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(invalid("unclosed element"));
    }
    let (name, value) = root.ok_or_else(|| invalid("no root element"))?;
    Ok(Json::Object(vec![(name, value)]))
}

/// JSON → XML (see the module's rules).
pub fn json_to_xml(doc: &Json) -> Result<Vec<u8>, ConvertError> {
    let mut out = String::from(r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    match doc {
        Json::Object(members) if members.len() == 1 => {
            let (name, value) = &members[0];
            element(name, value, &mut out)?;
        }
        other => element("root", other, &mut out)?,
    }
    Ok(out.into_bytes())
}

fn element(name: &str, value: &Json, out: &mut String) -> Result<(), ConvertError> {
    check_name(name)?;
    out.push('<');
    out.push_str(name);
    match value {
        Json::Null => out.push_str("/>"),
        Json::Bool(_) | Json::Number(_) | Json::String(_) => {
            out.push('>');
            text(scalar(value).unwrap_or_default(), out)?;
            close(name, out);
        }
        Json::Array(items) => {
            out.push('>');
            for item in items {
                element("item", item, out)?;
            }
            close(name, out);
        }
        Json::Object(members) => {
            let mut body = String::new();
            for (key, value) in members {
                if let Some(attribute) = key.strip_prefix('@') {
                    check_name(attribute)?;
                    let value = match value {
                        Json::Null => "",
                        other => scalar(other).ok_or_else(|| {
                            invalid(format!(
                                "attribute {key:?} is not a string, number or boolean"
                            ))
                        })?,
                    };
                    out.push(' ');
                    out.push_str(attribute);
                    out.push_str("=\"");
                    attribute_value(value, out)?;
                    out.push('"');
                } else if key == "#text" {
                    let value = match value {
                        Json::Null => "",
                        other => scalar(other)
                            .ok_or_else(|| invalid("#text is not a string, number or boolean"))?,
                    };
                    text(value, &mut body)?;
                } else if let Json::Array(items) = value {
                    for item in items {
                        element(key, item, &mut body)?;
                    }
                } else {
                    element(key, value, &mut body)?;
                }
            }
            if body.is_empty() {
                out.push_str("/>");
            } else {
                out.push('>');
                out.push_str(&body);
                close(name, out);
            }
        }
    }
    Ok(())
}

fn scalar(value: &Json) -> Option<&str> {
    match value {
        Json::Bool(true) => Some("true"),
        Json::Bool(false) => Some("false"),
        Json::Number(n) => Some(n),
        Json::String(s) => Some(s),
        _ => None,
    }
}

fn close(name: &str, out: &mut String) {
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

fn check_name(name: &str) -> Result<(), ConvertError> {
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if valid {
        Ok(())
    } else {
        Err(invalid(format!("{name:?} is not an XML name")))
    }
}

fn check_char(c: char) -> Result<(), ConvertError> {
    if (c < ' ' && !matches!(c, '\t' | '\n' | '\r')) || matches!(c, '\u{fffe}' | '\u{ffff}') {
        Err(invalid(format!("{c:?} cannot be written in XML 1.0")))
    } else {
        Ok(())
    }
}

fn text(value: &str, out: &mut String) -> Result<(), ConvertError> {
    escape(value, false, out)
}

fn attribute_value(value: &str, out: &mut String) -> Result<(), ConvertError> {
    escape(value, true, out)
}

/// Writes `value` as XML character data, or as a quoted attribute's value.
fn escape(value: &str, in_attribute: bool, out: &mut String) -> Result<(), ConvertError> {
    for c in value.chars() {
        check_char(c)?;
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            // A raw CR would be read back as LF.
            '\r' => out.push_str("&#13;"),
            '"' if in_attribute => out.push_str("&quot;"),
            // Attribute value normalization would turn these into spaces.
            '\t' if in_attribute => out.push_str("&#9;"),
            '\n' if in_attribute => out.push_str("&#10;"),
            c => out.push(c),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
