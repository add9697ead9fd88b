//! A parser for the Prometheus / OpenMetrics text format, so tests assert on samples by name
//! and labels instead of matching lines as text.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};

/// One sample: a metric name, its labels and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series name, e.g. `tollgate_proxy_requests_total`.
    pub name: String,
    /// Label names to (unescaped) values.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

/// Every sample of one scrape.
#[derive(Debug, Clone, Default)]
pub struct Samples(Vec<Sample>);

impl Samples {
    /// Parses a scrape. Comment lines (`# HELP`, `# TYPE`, `# EOF`) are skipped; any other
    /// line must be a well-formed sample.
    pub fn parse(text: &str) -> anyhow::Result<Samples> {
        let mut samples = Vec::new();
        for (number, line) in text.lines().enumerate() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            samples
                .push(parse_line(line).with_context(|| format!("line {}: {line:?}", number + 1))?);
        }
        Ok(Samples(samples))
    }

    /// The value of the sample named `name` whose labels are exactly `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.0
            .iter()
            .find(|s| s.name == name && s.labels == wanted)
            .map(|s| s.value)
    }

    /// All samples named `name`.
    pub fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.0.iter().filter(move |s| s.name == name)
    }
}

fn parse_line(line: &str) -> anyhow::Result<Sample> {
    let name_end = line
        .find(['{', ' '])
        .context("a sample needs a value after its name")?;
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        bail!("bad metric name {name:?}");
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let mut chars = after_brace.char_indices().peekable();
        loop {
            let Some(&(start, c)) = chars.peek() else {
                bail!("unclosed label set");
            };
            if c == '}' {
                rest = &after_brace[start + 1..];
                break;
            }
            if c == ',' {
                chars.next();
                continue;
            }
            let eq = after_brace[start..]
                .find('=')
                .context("a label needs `=`")?
                + start;
            let key = after_brace[start..eq].trim().to_owned();
            if !after_brace[eq + 1..].starts_with('"') {
                bail!("label {key} has an unquoted value");
            }
            // Skip to the opening quote, then read the escaped value.
            while chars.peek().is_some_and(|&(i, _)| i <= eq + 1) {
                chars.next();
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '"')) => break,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, other)) => value.push(other),
                        None => bail!("dangling escape"),
                    },
                    Some((_, other)) => value.push(other),
                    None => bail!("unclosed label value"),
                }
            }
            labels.insert(key, value);
        }
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().context("missing value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other
            .parse()
            .with_context(|| format!("bad value {other:?}"))?,
    };
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_labels_escapes_and_values() {
        let samples = Samples::parse(
            "# TYPE a counter\n\
             a_total{route=\"api\",cluster=\"a,b\"} 7\n\
             b 1.5\n\
             c_bucket{le=\"+Inf\",path=\"x\\\"y\\\\z\"} 3\n\
             # EOF\n",
        )
        .unwrap();
        assert_eq!(
            samples.get("a_total", &[("cluster", "a,b"), ("route", "api")]),
            Some(7.0)
        );
        assert_eq!(samples.get("a_total", &[("route", "api")]), None);
        assert_eq!(samples.get("b", &[]), Some(1.5));
        assert_eq!(
            samples.get("c_bucket", &[("le", "+Inf"), ("path", "x\"y\\z")]),
            Some(3.0)
        );
        assert!(Samples::parse("broken{a=b} 1").is_err());
        assert!(Samples::parse("novalue").is_err());
    }
}
