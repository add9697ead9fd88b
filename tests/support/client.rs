//! A plain HTTP client for sending test traffic through the proxies (no proxy settings from
//! the environment, no redirects, 5 s timeout, optional `Host` override).

use std::time::Duration;

use anyhow::Context as _;
use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

/// A response read to the end.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// Body as text (lossy UTF-8).
    pub body: String,
}

impl HttpResponse {
    /// The body parsed as JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(&self.body).with_context(|| {
            format!(
                "response body is not JSON (status {}): {}",
                self.status, self.body
            )
        })
    }

    /// A header's value as text, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// `GET url`, with the `Host` header set to `host` when given.
pub async fn get(url: &str, host: Option<&str>) -> anyhow::Result<HttpResponse> {
    request(Method::GET, url, host, &[], None).await
}

/// Sends one request with extra `headers` and an optional `body`, `Host` set to `host` when
/// given, and reads the whole response.
pub async fn request(
    method: Method,
    url: &str,
    host: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> anyhow::Result<HttpResponse> {
    // A client per call: pooled connections must not outlive the test runtime that made them.
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .build()?;
    let mut builder = client.request(method.clone(), url);
    if let Some(host) = host {
        builder = builder.header(reqwest::header::HOST, host);
    }
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .with_context(|| format!("invalid header name {name:?}"))?;
        let value = HeaderValue::from_str(value)
            .with_context(|| format!("invalid value for header {name}: {value:?}"))?;
        builder = builder.header(name, value);
    }
    if let Some(body) = body {
        builder = builder.body(body);
    }
    let response = builder
        .send()
        .await
        .with_context(|| format!("{method} {url} (host {host:?})"))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response
        .bytes()
        .await
        .with_context(|| format!("reading the body of {method} {url}"))?;
    Ok(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}
