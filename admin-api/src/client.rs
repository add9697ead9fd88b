//! The declarative-config client behind `tollgate apply`, `tollgate diff` and `tollgate export`:
//! it talks to a running control plane's admin API and renders what changes for people and CI.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::Path;

use serde_json::Value;

/// Where the admin API is and how to authenticate.
#[derive(Debug, Clone)]
pub struct AdminEndpoint {
    /// Base URL, e.g. `http://127.0.0.1:9000`.
    pub url: String,
    /// Bearer token.
    pub token: String,
}

/// What a command concluded, mapped to the exit codes CI relies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to change, or changes applied: exit 0.
    Clean,
    /// `diff` found differences: exit 2.
    Differs,
}

/// Why a command failed (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The file could not be read.
    #[error("reading {path}")]
    File {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The admin API could not be reached.
    #[error("admin API at {url}")]
    Unreachable {
        /// The URL called.
        url: String,
        /// The transport error.
        source: reqwest::Error,
    },
    /// The admin API refused the request.
    #[error("admin API answered {status}: {message}{}", field_suffix(message, field.as_deref()))]
    Refused {
        /// HTTP status.
        status: u16,
        /// The error message.
        message: String,
        /// The offending field, if named.
        field: Option<String>,
    },
}

/// Names the field after the message unless the message already does.
fn field_suffix(message: &str, field: Option<&str>) -> String {
    match field {
        Some(field) if !message.contains(field) => format!(" (field {field})"),
        _ => String::new(),
    }
}

/// Export format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// YAML.
    Yaml,
    /// JSON.
    Json,
}

impl Format {
    fn media_type(self) -> &'static str {
        match self {
            Self::Yaml => "application/yaml",
            Self::Json => "application/json",
        }
    }

    /// The format of a file, by extension, else by its first character.
    pub fn of_file(path: &Path, contents: &str) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => Self::Json,
            Some("yaml" | "yml") => Self::Yaml,
            _ if contents.trim_start().starts_with('{') => Self::Json,
            _ => Self::Yaml,
        }
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("a plain HTTP client builds")
}

async fn send(
    endpoint: &AdminEndpoint,
    request: reqwest::RequestBuilder,
    url: &str,
) -> Result<reqwest::Response, ClientError> {
    let response = request
        .bearer_auth(&endpoint.token)
        .send()
        .await
        .map_err(|source| ClientError::Unreachable {
            url: url.to_owned(),
            source,
        })?;
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    Err(ClientError::Refused {
        status,
        message: body["error"]["message"]
            .as_str()
            .unwrap_or("no error message")
            .to_owned(),
        field: body["error"]["field"].as_str().map(str::to_owned),
    })
}

/// `tollgate export`: the whole configuration as a document.
pub async fn export(endpoint: &AdminEndpoint, format: Format) -> Result<String, ClientError> {
    let url = format!("{}/v1/config", endpoint.url.trim_end_matches('/'));
    let response = send(
        endpoint,
        client().get(&url).header("accept", format.media_type()),
        &url,
    )
    .await?;
    response
        .text()
        .await
        .map_err(|source| ClientError::Unreachable { url, source })
}

/// Sends `file` to `PUT /v1/config`, as a dry run or for real; returns the response.
async fn put_config(
    endpoint: &AdminEndpoint,
    file: &Path,
    dry_run: bool,
) -> Result<Value, ClientError> {
    let contents = std::fs::read_to_string(file).map_err(|source| ClientError::File {
        path: file.display().to_string(),
        source,
    })?;
    let format = Format::of_file(file, &contents);
    let url = format!(
        "{}/v1/config?dry_run={dry_run}",
        endpoint.url.trim_end_matches('/')
    );
    let request = client()
        .put(&url)
        .header("content-type", format.media_type())
        .body(contents);
    let response = send(endpoint, request, &url).await?;
    response
        .json()
        .await
        .map_err(|source| ClientError::Unreachable { url, source })
}

/// `tollgate diff -f FILE`: prints what applying `file` would change.
pub async fn diff(endpoint: &AdminEndpoint, file: &Path) -> Result<Outcome, ClientError> {
    let response = put_config(endpoint, file, true).await?;
    let changes = response["changes"].as_array().cloned().unwrap_or_default();
    print!("{}", render_diff(&changes, std::io::stdout().is_terminal()));
    Ok(if changes.is_empty() {
        Outcome::Clean
    } else {
        Outcome::Differs
    })
}

/// `tollgate apply -f FILE [--dry-run]`: applies `file` (or shows the diff on a dry run).
pub async fn apply(
    endpoint: &AdminEndpoint,
    file: &Path,
    dry_run: bool,
) -> Result<Outcome, ClientError> {
    let response = put_config(endpoint, file, dry_run).await?;
    let changes = response["changes"].as_array().cloned().unwrap_or_default();
    let color = std::io::stdout().is_terminal();
    if dry_run {
        print!("{}", render_diff(&changes, color));
    } else if changes.is_empty() {
        println!(
            "no changes; the store stays at revision {}",
            response["revision"]
        );
    } else {
        for change in &changes {
            println!("{}", summary_line(change, color));
        }
        println!(
            "applied {} change(s) as revision {}",
            changes.len(),
            response["revision"]
        );
    }
    Ok(Outcome::Clean)
}

const GREEN: &str = "\x1b[32m";
const RED: &str = "\x1b[31m";
const YELLOW: &str = "\x1b[33m";
const RESET: &str = "\x1b[0m";

fn paint(text: &str, color: &str, enabled: bool) -> String {
    if enabled {
        format!("{color}{text}{RESET}")
    } else {
        text.to_owned()
    }
}

fn summary_line(change: &Value, color: bool) -> String {
    let (sign, tint) = match change["op"].as_str() {
        Some("created") => ("+", GREEN),
        Some("deleted") => ("-", RED),
        _ => ("~", YELLOW),
    };
    let text = format!(
        "{sign} {} {} ({})",
        change["kind"].as_str().unwrap_or("?"),
        change["name"].as_str().unwrap_or("?"),
        change["op"].as_str().unwrap_or("?"),
    );
    paint(&text, tint, color)
}

/// Renders dry-run changes as a line diff of each resource's JSON, coloured when `color`.
pub fn render_diff(changes: &[Value], color: bool) -> String {
    if changes.is_empty() {
        return "no changes\n".to_owned();
    }
    let pretty = |v: &Value| {
        if v.is_null() {
            String::new()
        } else {
            serde_json::to_string_pretty(v).expect("json renders") + "\n"
        }
    };
    let mut out = String::new();
    for change in changes {
        writeln!(out, "{}", summary_line(change, color)).expect("string write");
        let (before, after) = (pretty(&change["before"]), pretty(&change["after"]));
        let diff = similar::TextDiff::from_lines(&before, &after);
        for line in diff.iter_all_changes() {
            let (sign, tint) = match line.tag() {
                similar::ChangeTag::Delete => ("-", RED),
                similar::ChangeTag::Insert => ("+", GREEN),
                similar::ChangeTag::Equal => (" ", ""),
            };
            let text = format!("  {sign} {}", line.value().trim_end_matches('\n'));
            let text = if tint.is_empty() {
                text
            } else {
                paint(&text, tint, color)
            };
            writeln!(out, "{text}").expect("string write");
        }
    }
    writeln!(out, "{} change(s)", changes.len()).expect("string write");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_shows_changed_lines_with_signs() {
        let changes = vec![
            serde_json::json!({"kind": "cluster", "name": "web", "op": "updated",
                "before": {"name": "web", "connect_timeout_ms": 5000},
                "after": {"name": "web", "connect_timeout_ms": 250}}),
            serde_json::json!({"kind": "route", "name": "old", "op": "deleted",
                "before": {"name": "old"}, "after": null}),
        ];
        let plain = render_diff(&changes, false);
        assert!(plain.contains("~ cluster web (updated)"), "{plain}");
        assert!(
            plain.contains("  -   \"connect_timeout_ms\": 5000,"),
            "{plain}"
        );
        assert!(
            plain.contains("  +   \"connect_timeout_ms\": 250,"),
            "{plain}"
        );
        assert!(plain.contains("- route old (deleted)"), "{plain}");
        assert!(plain.ends_with("2 change(s)\n"));
        assert!(!plain.contains('\x1b'));
        assert!(render_diff(&changes, true).contains(RED));
        assert_eq!(render_diff(&[], false), "no changes\n");
    }

    #[test]
    fn file_format_by_extension_or_content() {
        assert_eq!(Format::of_file(Path::new("a.json"), ""), Format::Json);
        assert_eq!(Format::of_file(Path::new("a.yml"), "{"), Format::Yaml);
        assert_eq!(
            Format::of_file(Path::new("tollgate"), "  {\"clusters\": []}"),
            Format::Json
        );
        assert_eq!(
            Format::of_file(Path::new("tollgate"), "clusters: []"),
            Format::Yaml
        );
    }
}
