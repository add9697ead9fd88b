//! Key case conversion for `rename_keys`.
//!
//! A key is split into words, then joined in the target case:
//! - `_` and `-` separate words (and are dropped); leading underscores are kept as they are
//!   (`_id`, `__typename`);
//! - a new word starts at an upper-case letter that follows a lower-case letter or a digit
//!   (`userId` → `user`, `Id`), and at the last upper-case letter of a run that a lower-case
//!   letter follows (`HTTPServer` → `HTTP`, `Server`);
//! - digits belong to the word they follow (`address2Line` → `address2`, `Line`; `ipv4` stays
//!   one word).
//!
//! snake_case lower-cases every word and joins with `_`: `userID` → `user_id`, `HTTPServer` →
//! `http_server`, `address2Line` → `address2_line`. camelCase lower-cases the first word and
//! capitalises the others: `user_id` → `userId`, `HTTP_SERVER` → `httpServer`, `userID` →
//! `userId`, `address_line_2` → `addressLine2` (which snake_case turns into `address_line2`:
//! digits do not start words, so that `ipv4_address` and `utf8` survive).

/// `rename_keys: snake_case`.
pub fn snake_case(key: &str) -> String {
    let (prefix, words) = split(key);
    let mut out = String::with_capacity(key.len() + 4);
    out.push_str(prefix);
    for (i, word) in words.iter().enumerate() {
        if i > 0 {
            out.push('_');
        }
        out.extend(word.chars().flat_map(char::to_lowercase));
    }
    out
}

/// `rename_keys: camel_case`.
pub fn camel_case(key: &str) -> String {
    let (prefix, words) = split(key);
    let mut out = String::with_capacity(key.len());
    out.push_str(prefix);
    for (i, word) in words.iter().enumerate() {
        let mut chars = word.chars();
        if i > 0
            && let Some(first) = chars.next()
        {
            out.extend(first.to_uppercase());
        }
        out.extend(chars.flat_map(char::to_lowercase));
    }
    out
}

/// The leading underscores, and the words of the rest.
fn split(key: &str) -> (&str, Vec<&str>) {
    let body = key.trim_start_matches('_');
    let prefix = &key[..key.len() - body.len()];
    let mut words = Vec::new();
    for part in body.split(['_', '-']).filter(|p| !p.is_empty()) {
        let chars: Vec<(usize, char)> = part.char_indices().collect();
        let mut start = 0;
        for i in 1..chars.len() {
            let (at, c) = chars[i];
            let prev = chars[i - 1].1;
            let next_lower = chars.get(i + 1).is_some_and(|(_, n)| n.is_lowercase());
            let boundary = c.is_uppercase()
                && (prev.is_lowercase()
                    || prev.is_ascii_digit()
                    || (prev.is_uppercase() && next_lower));
            if boundary {
                words.push(&part[start..at]);
                start = at;
            }
        }
        words.push(&part[start..]);
    }
    (prefix, words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_case_rules() {
        for (key, expected) in [
            ("userId", "user_id"),
            ("userID", "user_id"),
            ("UserID", "user_id"),
            ("HTTPServer", "http_server"),
            ("getHTTPResponseCode", "get_http_response_code"),
            ("address2Line", "address2_line"),
            ("ipv4Address", "ipv4_address"),
            ("HTTP2Server", "http2_server"),
            ("utf8", "utf8"),
            ("already_snake", "already_snake"),
            ("kebab-case-key", "kebab_case_key"),
            ("_id", "_id"),
            ("__typename", "__typename"),
            ("ID", "id"),
            ("a", "a"),
            ("", ""),
            ("double__under", "double_under"),
            ("ÉtéPlage", "été_plage"),
        ] {
            assert_eq!(snake_case(key), expected, "{key}");
        }
    }

    #[test]
    fn camel_case_rules() {
        for (key, expected) in [
            ("user_id", "userId"),
            ("userId", "userId"),
            ("userID", "userId"),
            ("HTTP_SERVER", "httpServer"),
            ("http_server", "httpServer"),
            ("HTTPServer", "httpServer"),
            ("address_line_2", "addressLine2"),
            ("ipv4_address", "ipv4Address"),
            ("kebab-case-key", "kebabCaseKey"),
            ("_id", "_id"),
            ("_private_field", "_privateField"),
            ("ID", "id"),
            ("", ""),
        ] {
            assert_eq!(camel_case(key), expected, "{key}");
        }
        // Round trips where digits do not start a word.
        assert_eq!(snake_case(&camel_case("ipv4_address")), "ipv4_address");
        assert_eq!(
            camel_case(&snake_case("getHttpResponse")),
            "getHttpResponse"
        );
    }
}
