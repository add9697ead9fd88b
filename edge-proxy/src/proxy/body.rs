//! Bodies on the data path: a streamed body bounded by the connection manager's stream
//! timeouts, and the body types of requests sent upstream and responses sent downstream.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::upstream::h1::{ExchangeError, ResponseBody};
use crate::upstream::pool::Checkin;

/// The error of a body that timed out.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// No data flowed for `stream_idle_timeout`.
    #[error("stream idle timeout")]
    Idle,
    /// The stream outlived its deadline (`max_stream_duration` or `request_timeout`).
    #[error("stream duration exceeded")]
    Deadline,
    /// The peer's body failed.
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    /// The upstream's body failed, on a connection the request's task read itself.
    #[error(transparent)]
    Upstream(#[from] ExchangeError),
}

/// A body arriving from a peer: through hyper (every request body, and responses hyper's
/// clients fetched), or read by the request's own task from its upstream connection.
#[derive(Debug)]
pub enum PeerBody {
    /// Through hyper.
    Incoming(Incoming),
    /// From an upstream connection this task drives ([`crate::upstream::h1`]).
    Upstream(ResponseBody),
    /// A request body the inline HTTP/1 server had already read whole.
    Whole(Full<Bytes>),
}

/// A request body as the client sent it: through hyper's server, or read whole with its head
/// by the inline HTTP/1 server ([`crate::listeners`]), which only serves requests whose body
/// had fully arrived.
#[derive(Debug)]
pub enum ClientBody {
    /// Through hyper (HTTP/2, and HTTP/1 requests the inline server handed over).
    Hyper(Incoming),
    /// Read whole already (empty for a request without a body).
    Whole(Full<Bytes>),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ClientBody::Hyper(incoming) => Pin::new(incoming).poll_frame(cx),
            ClientBody::Whole(whole) => Pin::new(whole)
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(|never| match never {}))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Hyper(incoming) => incoming.is_end_stream(),
            ClientBody::Whole(whole) => whole.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Hyper(incoming) => incoming.size_hint(),
            ClientBody::Whole(whole) => whole.size_hint(),
        }
    }
}

impl From<Incoming> for PeerBody {
    fn from(incoming: Incoming) -> Self {
        PeerBody::Incoming(incoming)
    }
}

impl From<ClientBody> for PeerBody {
    fn from(body: ClientBody) -> Self {
        match body {
            ClientBody::Hyper(incoming) => PeerBody::Incoming(incoming),
            ClientBody::Whole(whole) => PeerBody::Whole(whole),
        }
    }
}

impl Body for PeerBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            PeerBody::Incoming(incoming) => Pin::new(incoming)
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(BodyError::from))),
            PeerBody::Upstream(upstream) => upstream
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(BodyError::from))),
            PeerBody::Whole(whole) => Pin::new(whole)
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(|never| match never {}))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            PeerBody::Incoming(incoming) => incoming.is_end_stream(),
            PeerBody::Upstream(upstream) => upstream.is_end_stream(),
            PeerBody::Whole(whole) => whole.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            PeerBody::Incoming(incoming) => incoming.size_hint(),
            PeerBody::Upstream(upstream) => upstream.size_hint(),
            PeerBody::Whole(whole) => whole.size_hint(),
        }
    }
}

/// A streamed body that fails when no frame arrives for `idle`, or past `deadline`.
#[derive(Debug)]
pub struct TimedBody {
    inner: PeerBody,
    idle: Option<Duration>,
    deadline: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
    /// Adds up the data bytes read, for the access log.
    counter: Option<Arc<AtomicU64>>,
    /// Frames already read from `inner` (and counted), given out again first: a body transform
    /// that looked at the start of a body and passes it on. Boxed: bodies are moved around
    /// by value, and almost none has one.
    prefix: Option<Box<Prefix>>,
    /// The pooled HTTP/1 connection an upstream response arrives on, given back to its pool
    /// when the body has been read to its end.
    connection: Option<Checkin>,
}

/// See [`TimedBody::with_prefix`].
#[derive(Debug)]
struct Prefix(VecDeque<Frame<Bytes>>);

impl TimedBody {
    /// Wraps `inner`; `None` for either bound means no bound.
    pub fn new(
        inner: impl Into<PeerBody>,
        idle: Option<Duration>,
        deadline: Option<Instant>,
    ) -> Self {
        Self {
            inner: inner.into(),
            idle,
            deadline,
            timer: None,
            counter: None,
            prefix: None,
            connection: None,
        }
    }

    /// Gives `connection` back to its pool once the body has been read to its end (at once
    /// when there is no body).
    pub fn releasing(mut self, connection: Option<Checkin>) -> Self {
        match connection {
            Some(connection) if self.inner.is_end_stream() => connection.release(),
            connection => self.connection = connection,
        }
        self
    }

    /// Puts frames read from this body back in front of it.
    pub fn with_prefix(mut self, frames: VecDeque<Frame<Bytes>>) -> Self {
        self.prefix = (!frames.is_empty()).then(|| Box::new(Prefix(frames)));
        self
    }

    /// Adds the length of every data frame read to `counter`, when there is one.
    pub fn counting(mut self, counter: Option<Arc<AtomicU64>>) -> Self {
        self.counter = counter;
        self
    }

    /// When the timer should fire next, and which bound it is.
    fn next_expiry(&self) -> Option<(Instant, BodyError)> {
        let idle = self.idle.map(|d| (Instant::now() + d, BodyError::Idle));
        let deadline = self.deadline.map(|d| (d, BodyError::Deadline));
        match (idle, deadline) {
            (Some(i), Some(d)) => Some(if d.0 <= i.0 { d } else { i }),
            (i, d) => i.or(d),
        }
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let Some(prefix) = &mut this.prefix {
            let frame = prefix.0.pop_front();
            if prefix.0.is_empty() {
                this.prefix = None;
            }
            if let Some(frame) = frame {
                return Poll::Ready(Some(Ok(frame)));
            }
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            // Data flowed: the idle timer starts again from the next poll.
            this.timer = None;
            // The end of the body, or its last frame (the reader may stop polling after it):
            // the connection can take the next request. After an error it is dropped, closed.
            if this.connection.is_some()
                && (frame.is_none()
                    || frame.as_ref().is_some_and(|f| f.is_ok()) && this.inner.is_end_stream())
                && let Some(connection) = this.connection.take()
            {
                connection.release();
            }
            if let (Some(counter), Some(Ok(frame))) = (&this.counter, &frame)
                && let Some(data) = frame.data_ref()
            {
                counter.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
            return Poll::Ready(frame);
        }
        let Some((at, _)) = this.next_expiry() else {
            return Poll::Pending;
        };
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        ready!(timer.as_mut().poll(cx));
        let expired = match this.deadline {
            Some(deadline) if Instant::now() >= deadline => BodyError::Deadline,
            _ => BodyError::Idle,
        };
        Poll::Ready(Some(Err(expired)))
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let hint = self.inner.size_hint();
        let Some(prefix) = &self.prefix else {
            return hint;
        };
        let prefix: u64 = prefix
            .0
            .iter()
            .filter_map(|f| f.data_ref())
            .map(|d| d.len() as u64)
            .sum();
        let mut sum = SizeHint::new();
        sum.set_lower(hint.lower() + prefix);
        if let Some(upper) = hint.upper() {
            sum.set_upper(upper + prefix);
        }
        sum
    }
}

/// A request body sent upstream: streamed from the client, or buffered for retries.
pub type UpstreamBody = Either<TimedBody, Full<Bytes>>;

/// A response body sent downstream: streamed from the upstream, or generated by the proxy.
pub type DownstreamBody = Either<TimedBody, Full<Bytes>>;

/// A body the proxy generates.
pub fn full(bytes: impl Into<Bytes>) -> DownstreamBody {
    Either::Right(Full::new(bytes.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_body_reports_its_size() {
        let body = full("hello");
        assert_eq!(body.size_hint().exact(), Some(5));
    }
}
