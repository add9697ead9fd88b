//! The JSON the body transforms work on: a document model that keeps what a transform did not
//! ask to change. Object members stay in document order (serde_json's map would sort them in
//! this workspace), duplicate names stay, and numbers keep their text (`1.0`, `1e400` and
//! 20-digit ids pass unchanged). Strict RFC 8259 parsing, nesting limited to [`MAX_DEPTH`].
//! Output is compact; strings are re-escaped minimally (`"\u00e9"` comes out as `"é"`).

use std::collections::HashMap;
use std::fmt::Write as _;

/// Deeper documents are refused rather than risk the stack.
pub const MAX_DEPTH: usize = 128;

/// A JSON value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Json {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number, as written.
    Number(String),
    /// A string, unescaped.
    String(String),
    /// An array.
    Array(Vec<Json>),
    /// An object: members in document order.
    Object(Vec<(String, Json)>),
}

/// Why a document is not JSON, with the byte offset where that was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} at byte {at}")]
pub struct ParseError {
    what: &'static str,
    at: usize,
}

impl Json {
    /// Parses a whole document (surrounding whitespace allowed, nothing else).
    pub fn parse(input: &[u8]) -> Result<Json, ParseError> {
        let mut parser = Parser { input, at: 0 };
        parser.whitespace();
        let value = parser.value(0)?;
        parser.whitespace();
        if parser.at != input.len() {
            return Err(parser.error("unexpected data after the document"));
        }
        Ok(value)
    }

    /// The compact encoding.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = String::new();
        self.write(&mut out);
        out.into_bytes()
    }

    fn write(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Number(n) => out.push_str(n),
            Json::String(s) => write_string(s, out),
            Json::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Json::Object(members) => {
                out.push('{');
                for (i, (name, value)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_string(name, out);
                    out.push(':');
                    value.write(out);
                }
                out.push('}');
            }
        }
    }

    /// The members, when this is an object.
    pub fn as_object_mut(&mut self) -> Option<&mut Vec<(String, Json)>> {
        match self {
            Json::Object(members) => Some(members),
            _ => None,
        }
    }

    /// Removes the member at `path` (object names, outermost first), every one of that name
    /// where there are duplicates. A path through anything but objects finds nothing.
    pub fn remove(&mut self, path: &[String]) {
        let Some((last, parents)) = path.split_last() else {
            return;
        };
        let mut current = self;
        for name in parents {
            let Some(next) = current
                .as_object_mut()
                .and_then(|members| members.iter_mut().find(|(n, _)| n == name))
            else {
                return;
            };
            current = &mut next.1;
        }
        if let Some(members) = current.as_object_mut() {
            members.retain(|(n, _)| n != last);
        }
    }

    /// Sets the member at `path` to `value`: an existing member keeps its place (its duplicates
    /// go), a new one is appended. Missing objects on the way are created, and a member on the
    /// way that is not an object is replaced by one. Nothing happens when the document itself
    /// is not an object.
    pub fn set(&mut self, path: &[String], value: Json) {
        let Some((last, parents)) = path.split_last() else {
            return;
        };
        let Some(mut members) = self.as_object_mut() else {
            return;
        };
        for name in parents {
            let index = match members.iter().position(|(n, _)| n == name) {
                Some(i) => i,
                None => {
                    members.push((name.clone(), Json::Object(Vec::new())));
                    members.len() - 1
                }
            };
            let slot = &mut members[index].1;
            if !matches!(slot, Json::Object(_)) {
                *slot = Json::Object(Vec::new());
            }
            members = slot.as_object_mut().expect("an object, just made sure");
        }
        match members.iter().position(|(n, _)| n == last) {
            Some(i) => {
                members[i].1 = value;
                let mut seen = false;
                members.retain(|(n, _)| {
                    let keep = n != last || !seen;
                    seen |= n == last;
                    keep
                });
            }
            None => members.push((last.clone(), value)),
        }
    }

    /// Renames every object member, at every depth, with `rename`. When two members of one
    /// object end up with the same name, the later one wins.
    pub fn rename_keys(&mut self, rename: &dyn Fn(&str) -> String) {
        match self {
            Json::Array(items) => {
                for item in items {
                    item.rename_keys(rename);
                }
            }
            Json::Object(members) => {
                for (name, value) in members.iter_mut() {
                    *name = rename(name);
                    value.rename_keys(rename);
                }
                // Later wins: keep the last of each name, in the place of the last. Linear, as
                // a 1 MiB body may hold a hundred thousand keys.
                let mut last: HashMap<&str, usize> = HashMap::with_capacity(members.len());
                for (i, (name, _)) in members.iter().enumerate() {
                    last.insert(name, i);
                }
                if last.len() < members.len() {
                    let keep: Vec<bool> = (0..members.len())
                        .map(|i| last[members[i].0.as_str()] == i)
                        .collect();
                    let mut keep = keep.into_iter();
                    members.retain(|_| keep.next().unwrap_or(true));
                }
            }
            _ => {}
        }
    }
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if c < ' ' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

struct Parser<'a> {
    input: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn error(&self, what: &'static str) -> ParseError {
        ParseError { what, at: self.at }
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.at).copied()
    }

    fn whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn literal(&mut self, word: &'static [u8], value: Json) -> Result<Json, ParseError> {
        if self.input[self.at..].starts_with(word) {
            self.at += word.len();
            Ok(value)
        } else {
            Err(self.error("invalid literal"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json, ParseError> {
        if depth >= MAX_DEPTH {
            return Err(self.error("nesting too deep"));
        }
        match self.peek() {
            None => Err(self.error("unexpected end")),
            Some(b'n') => self.literal(b"null", Json::Null),
            Some(b't') => self.literal(b"true", Json::Bool(true)),
            Some(b'f') => self.literal(b"false", Json::Bool(false)),
            Some(b'"') => self.string().map(Json::String),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'[') => {
                self.at += 1;
                let mut items = Vec::new();
                self.whitespace();
                if self.peek() == Some(b']') {
                    self.at += 1;
                    return Ok(Json::Array(items));
                }
                loop {
                    self.whitespace();
                    items.push(self.value(depth + 1)?);
                    self.whitespace();
                    match self.peek() {
                        Some(b',') => self.at += 1,
                        Some(b']') => {
                            self.at += 1;
                            return Ok(Json::Array(items));
                        }
                        _ => return Err(self.error("expected , or ]")),
                    }
                }
            }
            Some(b'{') => {
                self.at += 1;
                let mut members = Vec::new();
                self.whitespace();
                if self.peek() == Some(b'}') {
                    self.at += 1;
                    return Ok(Json::Object(members));
                }
                loop {
                    self.whitespace();
                    if self.peek() != Some(b'"') {
                        return Err(self.error("expected a member name"));
                    }
                    let name = self.string()?;
                    self.whitespace();
                    if self.peek() != Some(b':') {
                        return Err(self.error("expected :"));
                    }
                    self.at += 1;
                    self.whitespace();
                    members.push((name, self.value(depth + 1)?));
                    self.whitespace();
                    match self.peek() {
                        Some(b',') => self.at += 1,
                        Some(b'}') => {
                            self.at += 1;
                            return Ok(Json::Object(members));
                        }
                        _ => return Err(self.error("expected , or }")),
                    }
                }
            }
            Some(_) => Err(self.error("unexpected character")),
        }
    }

    fn number(&mut self) -> Result<Json, ParseError> {
        let start = self.at;
        let digits = |p: &mut Self| {
            let from = p.at;
            while matches!(p.peek(), Some(b'0'..=b'9')) {
                p.at += 1;
            }
            p.at > from
        };
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => {
                digits(self);
            }
            _ => return Err(self.error("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if !digits(self) {
                return Err(self.error("invalid number"));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if !digits(self) {
                return Err(self.error("invalid number"));
            }
        }
        let text = std::str::from_utf8(&self.input[start..self.at]).expect("ASCII");
        Ok(Json::Number(text.to_owned()))
    }

    fn string(&mut self) -> Result<String, ParseError> {
        self.at += 1; // the opening quote
        let mut out = String::new();
        loop {
            // Copy the run up to the next quote, backslash or control character at once.
            let run = self.input[self.at..]
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                .ok_or(ParseError {
                    what: "unterminated string",
                    at: self.input.len(),
                })?;
            let text = std::str::from_utf8(&self.input[self.at..self.at + run])
                .map_err(|_| self.error("invalid UTF-8"))?;
            out.push_str(text);
            self.at += run;
            match self.input[self.at] {
                b'"' => {
                    self.at += 1;
                    return Ok(out);
                }
                b'\\' => {
                    self.at += 1;
                    let escaped = self
                        .peek()
                        .ok_or_else(|| self.error("unterminated string"))?;
                    self.at += 1;
                    match escaped {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let first = self.hex4()?;
                            let c = if (0xd800..0xdc00).contains(&first) {
                                // A high surrogate must be followed by a low one.
                                if !self.input[self.at..].starts_with(b"\\u") {
                                    return Err(self.error("unpaired surrogate"));
                                }
                                self.at += 2;
                                let second = self.hex4()?;
                                if !(0xdc00..0xe000).contains(&second) {
                                    return Err(self.error("unpaired surrogate"));
                                }
                                0x10000 + ((first - 0xd800) << 10) + (second - 0xdc00)
                            } else {
                                first
                            };
                            out.push(
                                char::from_u32(c)
                                    .ok_or_else(|| self.error("unpaired surrogate"))?,
                            );
                        }
                        _ => return Err(self.error("invalid escape")),
                    }
                }
                _ => return Err(self.error("control character in string")),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, ParseError> {
        let digits = self
            .input
            .get(self.at..self.at + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .filter(|d| d.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| self.error("invalid \\u escape"))?;
        self.at += 4;
        Ok(u32::from_str_radix(digits, 16).expect("hex digits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(input: &str) -> String {
        String::from_utf8(Json::parse(input.as_bytes()).unwrap().to_vec()).unwrap()
    }

    #[test]
    fn keeps_order_duplicates_and_number_text() {
        assert_eq!(
            round_trip(r#" {"z": 1.0, "a": [1e400, -0, 12345678901234567890123], "z": null} "#),
            r#"{"z":1.0,"a":[1e400,-0,12345678901234567890123],"z":null}"#
        );
        assert_eq!(
            round_trip(r#"["\u00e9\ud83d\ude00\/\"\\\n\u0001"]"#),
            "[\"é😀/\\\"\\\\\\n\\u0001\"]"
        );
    }

    #[test]
    fn refuses_what_is_not_json() {
        for bad in [
            "",
            "{",
            "{\"a\":1,}",
            "[1,]",
            "01",
            "1.",
            ".5",
            "+1",
            "'a'",
            "{a:1}",
            "nul",
            "\"\u{1}\"",
            "\"\\x\"",
            "\"\\ud800\"",
            "[1] [2]",
            "\"a",
            "{\"a\" 1}",
            "-",
        ] {
            assert!(Json::parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert!(Json::parse(b"\"\xff\"").is_err());
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert!(Json::parse(deep.as_bytes()).is_err());
        let fine = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(Json::parse(fine.as_bytes()).is_ok());
    }

    #[test]
    fn renamed_keys_that_collide_keep_the_later_one() {
        let mut doc = Json::parse(br#"{"userId":1,"a":{"x":[{"k":2}]},"user_id":3}"#).unwrap();
        doc.rename_keys(&|k: &str| k.to_uppercase().replace("USERID", "USER_ID"));
        assert_eq!(
            String::from_utf8(doc.to_vec()).unwrap(),
            r#"{"A":{"X":[{"K":2}]},"USER_ID":3}"#
        );
        // Linear in the number of keys: a 1 MiB body can hold a hundred thousand.
        let many: String = (0..100_000).map(|i| format!(r#""k{i}":0,"#)).collect();
        let mut doc = Json::parse(format!("{{{many}\"k0\":1}}").as_bytes()).unwrap();
        doc.rename_keys(&|k: &str| k.to_owned());
        let Json::Object(members) = &doc else {
            panic!("an object")
        };
        assert_eq!(members.len(), 100_000);
        assert_eq!(
            members.last().unwrap(),
            &("k0".to_owned(), Json::Number("1".into()))
        );
    }

    #[test]
    fn set_and_remove_follow_dotted_paths() {
        let path = |p: &str| p.split('.').map(str::to_owned).collect::<Vec<_>>();
        let mut doc = Json::parse(br#"{"user":{"name":"a","password":"p"},"x":1,"x":2}"#).unwrap();
        doc.remove(&path("user.password"));
        doc.remove(&path("missing.deeper"));
        doc.remove(&path("x.y"));
        doc.set(&path("meta.source"), Json::String("gw".into()));
        doc.set(&path("x"), Json::Number("3".into()));
        doc.set(&path("user.name.first"), Json::String("b".into()));
        assert_eq!(
            String::from_utf8(doc.to_vec()).unwrap(),
            r#"{"user":{"name":{"first":"b"}},"x":3,"meta":{"source":"gw"}}"#
        );
        let mut array = Json::parse(b"[1]").unwrap();
        array.set(&path("a"), Json::Null);
        assert_eq!(array.to_vec(), b"[1]");
    }
}
