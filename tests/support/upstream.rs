//! A fake upstream service: an in-process HTTP/1.1 server on `127.0.0.1:0` that records every
//! request and echoes it back as JSON, so tests can see what the proxy forwarded.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// Method, e.g. `GET`.
    pub method: String,
    /// Path and query as received.
    pub path: String,
    /// Headers in arrival order, names lower-case.
    pub headers: Vec<(String, String)>,
    /// The whole body.
    pub body: Bytes,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A running fake upstream; stops serving on `Drop`.
///
/// Answers 200 with `{"upstream", "method", "path", "headers"}` JSON and an `x-upstream: <name>`
/// header. A path ending in `/status/<code>` answers with that status; a path containing
/// `/delay/<ms>` waits that long first. A path with an `/echo-body` segment answers with the
/// request's own body and `content-type` instead of the JSON echo (no `content-type` when the
/// request had none), for tests of what proxies do to response bodies.
#[derive(Debug)]
pub struct Upstream {
    name: String,
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
    task: JoinHandle<()>,
}

impl Upstream {
    /// Binds `127.0.0.1:0` and serves on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// If it cannot bind, or outside a tokio runtime.
    pub async fn start(name: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the fake upstream to 127.0.0.1:0");
        let addr = listener.local_addr().expect("the upstream's local address");
        // So `free_port` never hands this port to a process the test spawns.
        crate::ports::mark_taken(addr.port());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(serve(listener, name.to_owned(), requests.clone()));
        Upstream {
            name: name.to_owned(),
            addr,
            requests,
            task,
        }
    }

    /// The name it reports in `x-upstream` and the JSON body.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received since the start or the last [`Upstream::clear`].
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().clone()
    }

    /// How many requests were received since the start or the last [`Upstream::clear`].
    pub fn request_count(&self) -> usize {
        self.lock().len()
    }

    /// Forgets the recorded requests.
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<RecordedRequest>> {
        self.requests.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        // Aborting the accept task drops its `JoinSet`, which aborts every connection task.
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, name: String, requests: Arc<Mutex<Vec<RecordedRequest>>>) {
    let name: Arc<str> = name.into();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let name = name.clone();
                let requests = requests.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req| handle(req, name.clone(), requests.clone()));
                    // Clients hanging up mid-request is normal in proxy tests; ignore it.
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            // Reap finished connections so the set does not grow for the test's lifetime.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    name: Arc<str>,
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let method = parts.method.to_string();
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();

    let mut header_json = Map::new();
    for (n, v) in &headers {
        match header_json.get_mut(n) {
            Some(Value::String(joined)) => {
                joined.push_str(", ");
                joined.push_str(v);
            }
            _ => {
                header_json.insert(n.clone(), Value::String(v.clone()));
            }
        }
    }
    let echo = json!({
        "upstream": &*name,
        "method": method,
        "path": path,
        "headers": header_json,
    });

    // Record on arrival, so tests can see requests that are still being delayed.
    requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(RecordedRequest {
            method,
            path,
            headers,
            body: body.clone(),
        });

    let segments: Vec<&str> = parts.uri.path().split('/').collect();
    if let Some(ms) = segments
        .windows(2)
        .find(|w| w[0] == "delay")
        .and_then(|w| w[1].parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let status = match segments.as_slice() {
        [.., "status", code] => code
            .parse::<u16>()
            .ok()
            .filter(|c| (200..=599).contains(c))
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::OK),
        _ => StatusCode::OK,
    };

    let builder = Response::builder()
        .status(status)
        .header("x-upstream", &*name);
    let response = if segments.contains(&"echo-body") {
        let builder = match parts.headers.get("content-type") {
            Some(content_type) => builder.header("content-type", content_type),
            None => builder,
        };
        builder.body(Full::new(body))
    } else {
        builder
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(echo.to_string())))
    };
    Ok(response.expect("a valid echo response"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{get, request};

    #[tokio::test]
    async fn echoes_and_records() {
        let upstream = Upstream::start("alpha").await;
        let url = format!("{}/a/b?x=1", upstream.url());
        let headers = [("x-rep", "1"), ("x-rep", "2")];
        let response = request(
            reqwest::Method::POST,
            &url,
            Some("example.com"),
            &headers,
            Some(b"hi".to_vec()),
        )
        .await
        .unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.header("x-upstream"), Some("alpha"));
        let echo = response.json().unwrap();
        assert_eq!(echo["upstream"], "alpha");
        assert_eq!(echo["method"], "POST");
        assert_eq!(echo["path"], "/a/b?x=1");
        assert_eq!(echo["headers"]["host"], "example.com");
        assert_eq!(echo["headers"]["x-rep"], "1, 2");

        let recorded = upstream.requests();
        assert_eq!(recorded.len(), 1);
        assert_eq!(&recorded[0].body[..], b"hi");
        assert_eq!(recorded[0].header("X-Rep"), Some("1"));
        upstream.clear();
        assert_eq!(upstream.request_count(), 0);
    }

    #[tokio::test]
    async fn status_and_delay_paths() {
        let upstream = Upstream::start("beta").await;
        let base = upstream.url();
        let response = get(&format!("{base}/x/status/418?q=1"), None)
            .await
            .unwrap();
        assert_eq!(response.status, 418);
        let start = std::time::Instant::now();
        let response = get(&format!("{base}/delay/100/status/503"), None)
            .await
            .unwrap();
        assert_eq!(response.status, 503);
        assert!(start.elapsed() >= Duration::from_millis(100));
        assert_eq!(upstream.request_count(), 2);
    }

    #[tokio::test]
    async fn echo_body_paths_answer_with_the_request_body() {
        let upstream = Upstream::start("delta").await;
        let url = format!("{}/x/echo-body/status/201", upstream.url());
        let response = request(
            reqwest::Method::POST,
            &url,
            None,
            &[("content-type", "application/xml")],
            Some(b"<a>1</a>".to_vec()),
        )
        .await
        .unwrap();
        assert_eq!(response.status, 201);
        assert_eq!(response.body, "<a>1</a>");
        assert_eq!(response.header("content-type"), Some("application/xml"));
        assert_eq!(response.header("x-upstream"), Some("delta"));
        let response = request(
            reqwest::Method::POST,
            &url,
            None,
            &[],
            Some(b"raw".to_vec()),
        )
        .await
        .unwrap();
        assert_eq!(response.body, "raw");
        assert_eq!(response.header("content-type"), None);
        assert_eq!(upstream.request_count(), 2);
    }

    #[tokio::test]
    async fn stops_on_drop() {
        let upstream = Upstream::start("gamma").await;
        let url = upstream.url();
        drop(upstream);
        tokio::task::yield_now().await;
        assert!(get(&url, None).await.is_err());
    }
}
