//! An OpenTelemetry collector stand-in: an in-process OTLP/gRPC trace receiver (the
//! `opentelemetry.proto.collector.trace.v1.TraceService` of the `opentelemetry-proto` crate,
//! served by tonic) on a free loopback port. Tests point `--otlp-endpoint` at it and read the
//! spans it kept; benches only count them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{span, status};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

use crate::wait::eventually;

/// One span as the receiver got it, ids in lowercase hex.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits, or empty for a trace's root span.
    pub parent_span_id: String,
    /// The W3C `tracestate` of the span's context.
    pub trace_state: String,
    /// The span's name, e.g. `GET api`.
    pub name: String,
    /// `server`, `client`, `internal`, `producer`, `consumer` or `unspecified`.
    pub kind: &'static str,
    /// `unset`, `ok` or `error`.
    pub status: &'static str,
    /// The span's attributes: strings, integers, doubles and booleans as JSON values, anything
    /// else as its debug text.
    pub attributes: BTreeMap<String, Value>,
    /// The attributes of the resource that sent it (`service.name`, …).
    pub resource: BTreeMap<String, Value>,
}

impl ReceivedSpan {
    /// The string attribute `key`.
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).and_then(Value::as_str)
    }

    /// The integer attribute `key`.
    pub fn attr_i64(&self, key: &str) -> Option<i64> {
        self.attributes.get(key).and_then(Value::as_i64)
    }

    /// The string resource attribute `key`.
    pub fn resource_str(&self, key: &str) -> Option<&str> {
        self.resource.get(key).and_then(Value::as_str)
    }
}

/// A running receiver; stops serving on `Drop`.
#[derive(Debug)]
pub struct OtlpReceiver {
    addr: SocketAddr,
    store: Arc<Store>,
    task: JoinHandle<()>,
}

#[derive(Debug, Default)]
struct Store {
    /// Whether spans are kept, or only counted.
    keep: bool,
    spans: Mutex<Vec<ReceivedSpan>>,
    count: AtomicU64,
}

impl OtlpReceiver {
    /// Binds `127.0.0.1:0` and keeps every span it receives.
    ///
    /// # Panics
    ///
    /// If it cannot bind, or outside a tokio runtime.
    pub async fn start() -> OtlpReceiver {
        Self::bind(true).await
    }

    /// Like [`OtlpReceiver::start`], but only counts spans: for loads of millions of them.
    pub async fn start_counting() -> OtlpReceiver {
        Self::bind(false).await
    }

    async fn bind(keep: bool) -> OtlpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the OTLP receiver to 127.0.0.1:0");
        let addr = listener.local_addr().expect("the receiver's local address");
        // So `free_port` never hands this port to a process the test spawns.
        crate::ports::mark_taken(addr.port());
        let store = Arc::new(Store {
            keep,
            ..Store::default()
        });
        let service = TraceServiceServer::new(Collector(Arc::clone(&store)));
        let task = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
            if let Err(error) = served {
                eprintln!("OTLP receiver stopped: {error}");
            }
        });
        OtlpReceiver { addr, store, task }
    }

    /// `http://127.0.0.1:PORT`, for `--otlp-endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span kept so far (none when counting only).
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.store
            .spans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many spans have arrived.
    pub fn span_count(&self) -> u64 {
        self.store.count.load(Ordering::Relaxed)
    }

    /// Polls until `count` spans of trace `trace_id` (hex) have arrived, and returns them.
    ///
    /// # Panics
    ///
    /// After `timeout`, listing the spans of that trace received so far.
    pub async fn wait_for_trace(
        &self,
        trace_id: &str,
        count: usize,
        timeout: Duration,
    ) -> Vec<ReceivedSpan> {
        let what = format!("{count} spans of trace {trace_id}");
        eventually(&what, timeout, || {
            let spans: Vec<ReceivedSpan> = self
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == trace_id)
                .collect();
            async move {
                anyhow::ensure!(spans.len() >= count, "{} so far: {spans:#?}", spans.len());
                Ok(spans)
            }
        })
        .await
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The gRPC service: flattens each export into [`ReceivedSpan`]s.
#[derive(Debug)]
struct Collector(Arc<Store>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        let mut received = Vec::new();
        let mut count = 0;
        for resource_spans in request.resource_spans {
            let resource = resource_spans
                .resource
                .map(|r| attributes(r.attributes))
                .unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                count += scope_spans.spans.len() as u64;
                if !self.0.keep {
                    continue;
                }
                for span in scope_spans.spans {
                    received.push(ReceivedSpan {
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        trace_state: span.trace_state,
                        kind: kind_name(span.kind),
                        status: status_name(span.status.map_or(0, |s| s.code)),
                        name: span.name,
                        attributes: attributes(span.attributes),
                        resource: resource.clone(),
                    });
                }
            }
        }
        self.0.count.fetch_add(count, Ordering::Relaxed);
        if !received.is_empty() {
            self.0
                .spans
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(received);
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn attributes(list: Vec<KeyValue>) -> BTreeMap<String, Value> {
    list.into_iter()
        .map(|kv| {
            let value = match kv.value.and_then(|v| v.value) {
                Some(any_value::Value::StringValue(s)) => Value::String(s),
                Some(any_value::Value::BoolValue(b)) => Value::Bool(b),
                Some(any_value::Value::IntValue(i)) => Value::from(i),
                Some(any_value::Value::DoubleValue(d)) => Value::from(d),
                Some(other) => Value::String(format!("{other:?}")),
                None => Value::Null,
            };
            (kv.key, value)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn kind_name(kind: i32) -> &'static str {
    match span::SpanKind::try_from(kind) {
        Ok(span::SpanKind::Server) => "server",
        Ok(span::SpanKind::Client) => "client",
        Ok(span::SpanKind::Internal) => "internal",
        Ok(span::SpanKind::Producer) => "producer",
        Ok(span::SpanKind::Consumer) => "consumer",
        _ => "unspecified",
    }
}

fn status_name(code: i32) -> &'static str {
    match status::StatusCode::try_from(code) {
        Ok(status::StatusCode::Ok) => "ok",
        Ok(status::StatusCode::Error) => "error",
        _ => "unset",
    }
}
