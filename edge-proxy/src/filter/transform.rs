//! Tollgate's body transform filter (`tollgate.filters.http.transform`): the body changes of a
//! route's transform policies ([`TransformPerRoute`]), for edge proxies only (Envoy has no such
//! filter; it applies the same policies' header and path changes and leaves bodies alone).
//!
//! It sits last before the router. The request body is transformed after the other filters let
//! the request through and before the route's header mutations (which Envoy's router applies),
//! so their `%REQ(content-type)%` sees the new type. The response body is transformed as it
//! comes from the route's action (upstream response, direct response or the router's own
//! error), before the route's response headers and the other filters' response work.
//!
//! What is transformed, and how:
//! - Only bodies whose `content-type` fits the first transform that applies: JSON
//!   (`application/json`, `*/*+json`) for key and field changes and `json_to_xml`, XML
//!   (`application/xml`, `text/xml`, `*/*+xml`) for `xml_to_json`. Transforms apply in order,
//!   each to the body as the previous one left it, skipping those whose input type does not
//!   fit. A body with a `content-encoding` (compressed), an empty body, a body with trailers,
//!   a `HEAD` response and 1xx/204/206/304 responses are left alone.
//! - The body is buffered up to [`BODY_LIMIT`] (1 MiB). A larger one passes unchanged,
//!   streamed, or is refused when the first transform that applies has `reject_invalid`: 413
//!   for a request, 502 for a response (`body_too_large`).
//! - A body that does not parse (or cannot be converted) is never altered: it passes byte for
//!   byte, or with `reject_invalid` is refused with 400 (request) or 502 (response):
//!   `{"error":{"code":"invalid_body","message":"request body is not valid JSON: …"}}`.
//! - A changed body gets `content-length` set to its new length, and the conversions set
//!   `content-type` (`application/json`, `application/xml`); a changed response's strong
//!   `etag` becomes weak (`W/`), as Envoy's compressor does.
//!
//! [`json`], [`xml`] and [`case`] hold the document model and the conversions.
//!
//! [`TransformPerRoute`]: crate::config::filters::transform::TransformPerRoute

pub mod case;
pub mod json;
pub mod xml;

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt as _, Either};
use hyper::body::{Body as _, Frame};

use crate::config::filters::transform::{BodyTransform, Conversion, KeyCase};
use crate::proxy::body::{BodyError, DownstreamBody, TimedBody};
use json::Json;

/// Bodies up to this many bytes are transformed.
pub const BODY_LIMIT: usize = 1 << 20;

/// A body format the transforms read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// JSON.
    Json,
    /// XML.
    Xml,
}

impl Kind {
    /// The kind of a `content-type`, if it is one.
    pub fn of(content_type: &str) -> Option<Kind> {
        let media = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if media == "application/json" || (media.contains('/') && media.ends_with("+json")) {
            Some(Kind::Json)
        } else if media == "application/xml"
            || media == "text/xml"
            || (media.contains('/') && media.ends_with("+xml"))
        {
            Some(Kind::Xml)
        } else {
            None
        }
    }
}

impl BodyTransform {
    /// The kind of body this transform reads.
    fn input(&self) -> Kind {
        match self.convert {
            Conversion::XmlToJson => Kind::Xml,
            Conversion::None | Conversion::JsonToXml => Kind::Json,
        }
    }
}

/// What [`apply`] made of a body.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing applied, or the body did not parse and is passed on as it came.
    Unchanged,
    /// The new body, and its new `content-type` when a conversion changed it.
    Changed {
        /// The body.
        body: Vec<u8>,
        /// `application/json` or `application/xml` after a conversion.
        content_type: Option<&'static str>,
    },
    /// The body did not parse, and the transform that tried refuses such bodies; the message
    /// says why (without the body's content).
    Invalid(String),
}

/// The first transform that applies to a body of `kind`: it decides whether the body is
/// buffered at all, and what happens to one that is too large.
pub fn first_applicable(transforms: &[BodyTransform], kind: Kind) -> Option<&BodyTransform> {
    transforms.iter().find(|t| t.input() == kind)
}

/// Applies `transforms` in order to `body`, of `kind` (see the module's rules).
pub fn apply(transforms: &[BodyTransform], kind: Kind, body: &[u8]) -> Outcome {
    enum Doc {
        /// Not parsed yet: `body` as it came.
        Original,
        Json(Json),
        Xml(Vec<u8>),
    }
    if body.is_empty() {
        return Outcome::Unchanged;
    }
    let mut doc = Doc::Original;
    let mut kind = kind;
    let mut content_type = None;
    let mut changed = false;
    for transform in transforms {
        if transform.input() != kind {
            continue;
        }
        let refuse = |message: String| {
            if transform.reject_invalid {
                Outcome::Invalid(message)
            } else {
                Outcome::Unchanged
            }
        };
        match transform.convert {
            Conversion::XmlToJson => {
                let input = match &doc {
                    Doc::Xml(bytes) => bytes.as_slice(),
                    _ => body,
                };
                match xml::xml_to_json(input) {
                    Ok(json) => doc = Doc::Json(json),
                    Err(e) => return refuse(format!("not valid XML: {e}")),
                }
                kind = Kind::Json;
                content_type = Some("application/json");
            }
            Conversion::None | Conversion::JsonToXml => {
                if let Doc::Original = doc {
                    match Json::parse(body) {
                        Ok(json) => doc = Doc::Json(json),
                        Err(e) => return refuse(format!("not valid JSON: {e}")),
                    }
                }
            }
        }
        let Doc::Json(json) = &mut doc else {
            unreachable!("the body is JSON here: parsed, or converted from XML")
        };
        match transform.rename_keys {
            Some(KeyCase::SnakeCase) => json.rename_keys(&case::snake_case),
            Some(KeyCase::CamelCase) => json.rename_keys(&case::camel_case),
            None => {}
        }
        for path in &transform.remove {
            json.remove(path);
        }
        for (path, value) in &transform.add {
            json.set(path, value.clone());
        }
        if transform.convert == Conversion::JsonToXml {
            match xml::json_to_xml(json) {
                Ok(bytes) => doc = Doc::Xml(bytes),
                Err(e) => return refuse(format!("cannot be converted to XML: {e}")),
            }
            kind = Kind::Xml;
            content_type = Some("application/xml");
        }
        changed = true;
    }
    match doc {
        _ if !changed => Outcome::Unchanged,
        Doc::Original => Outcome::Unchanged,
        Doc::Json(json) => Outcome::Changed {
            body: json.to_vec(),
            content_type,
        },
        Doc::Xml(bytes) => Outcome::Changed {
            body: bytes,
            content_type,
        },
    }
}

/// The first transform that applies to a message with `headers`, unless the message is left
/// alone (no fitting `content-type`, or a `content-encoding`).
fn applicable<'t>(
    transforms: &'t [BodyTransform],
    headers: &HeaderMap,
) -> Option<(Kind, &'t BodyTransform)> {
    if headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|e| !e.as_bytes().eq_ignore_ascii_case(b"identity"))
    {
        return None;
    }
    let kind = Kind::of(headers.get(header::CONTENT_TYPE)?.to_str().ok()?)?;
    first_applicable(transforms, kind).map(|t| (kind, t))
}

/// A request body after the filter.
#[derive(Debug)]
pub(crate) enum RequestBody {
    /// Buffered (transformed or not): can be sent, and sent again.
    Buffered(Bytes),
    /// Too large or with trailers: streamed on unchanged, what was read first included.
    Streamed(TimedBody),
}

/// Transforms a request body; `body` counts what it reads for the access log. `Err` is the
/// answer to send instead of forwarding.
// Returned once per request and consumed at once: boxing the answer would only add an
// allocation to every refusal.
#[allow(clippy::result_large_err)]
pub(crate) async fn request(
    transforms: &[BodyTransform],
    headers: &mut HeaderMap,
    body: TimedBody,
) -> Result<RequestBody, Response<DownstreamBody>> {
    let Some((kind, first)) = applicable(transforms, headers) else {
        return Ok(RequestBody::Streamed(body));
    };
    let bytes = match read(body).await {
        Ok(Read::Complete(bytes)) => bytes,
        Ok(Read::Partial(body)) if first.reject_invalid => {
            drop(body);
            return Err(too_large(StatusCode::PAYLOAD_TOO_LARGE, "request"));
        }
        Ok(Read::Partial(body)) => return Ok(RequestBody::Streamed(body)),
        Err(BodyError::Idle | BodyError::Deadline) => {
            return Err(crate::proxy::local_reply(
                StatusCode::REQUEST_TIMEOUT,
                "stream timeout",
            ));
        }
        Err(BodyError::Hyper(_) | BodyError::Upstream(_)) => {
            return Err(crate::proxy::local_reply(
                StatusCode::BAD_REQUEST,
                "request body failed",
            ));
        }
    };
    request_body(transforms, kind, headers, bytes).map(RequestBody::Buffered)
}

/// The request side once the body is read: the body to send, or the answer.
#[allow(clippy::result_large_err)] // as `request`
fn request_body(
    transforms: &[BodyTransform],
    kind: Kind,
    headers: &mut HeaderMap,
    bytes: Bytes,
) -> Result<Bytes, Response<DownstreamBody>> {
    match apply(transforms, kind, &bytes) {
        Outcome::Unchanged => Ok(bytes),
        Outcome::Changed { body, content_type } => {
            set_headers(headers, body.len(), content_type);
            Ok(Bytes::from(body))
        }
        Outcome::Invalid(why) => Err(super::json_error(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            &format!("request body is {why}"),
        )),
    }
}

/// Why a response could not be transformed.
#[derive(Debug)]
pub(crate) enum ResponseFailure {
    /// The upstream's body failed before its end.
    Body(BodyError),
}

/// Transforms a response body. `head` says the request was a `HEAD` (no body, and a
/// `content-length` that describes a `GET`'s).
pub(crate) async fn response(
    transforms: &[BodyTransform],
    head: bool,
    response: Response<DownstreamBody>,
) -> Result<Response<DownstreamBody>, ResponseFailure> {
    let status = response.status();
    let bodiless = head
        || status.is_informational()
        || matches!(
            status,
            StatusCode::NO_CONTENT | StatusCode::PARTIAL_CONTENT | StatusCode::NOT_MODIFIED
        );
    let Some((kind, first)) = (!bodiless)
        .then(|| applicable(transforms, response.headers()))
        .flatten()
    else {
        return Ok(response);
    };
    let reject = first.reject_invalid;
    let (mut parts, body) = response.into_parts();
    let bytes = match body {
        Either::Right(full) => full
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default(),
        Either::Left(timed) => match read(timed).await.map_err(ResponseFailure::Body)? {
            Read::Complete(bytes) => bytes,
            Read::Partial(_) if reject => {
                return Ok(too_large(StatusCode::BAD_GATEWAY, "response"));
            }
            Read::Partial(rest) => return Ok(Response::from_parts(parts, Either::Left(rest))),
        },
    };
    match apply(transforms, kind, &bytes) {
        Outcome::Unchanged => Ok(Response::from_parts(parts, crate::proxy::body::full(bytes))),
        Outcome::Changed { body, content_type } => {
            set_headers(&mut parts.headers, body.len(), content_type);
            weaken_etag(&mut parts.headers);
            Ok(Response::from_parts(parts, crate::proxy::body::full(body)))
        }
        Outcome::Invalid(why) => Ok(super::json_error(
            StatusCode::BAD_GATEWAY,
            "invalid_body",
            &format!("response body is {why}"),
        )),
    }
}

fn too_large(status: StatusCode, what: &str) -> Response<DownstreamBody> {
    super::json_error(
        status,
        "body_too_large",
        &format!("{what} body is larger than {BODY_LIMIT} bytes"),
    )
}

fn set_headers(headers: &mut HeaderMap, length: usize, content_type: Option<&'static str>) {
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if let Some(content_type) = content_type {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
}

fn weaken_etag(headers: &mut HeaderMap) {
    if let Some(etag) = headers.get(header::ETAG)
        && !etag.as_bytes().starts_with(b"W/")
    {
        let mut weak = b"W/".to_vec();
        weak.extend_from_slice(etag.as_bytes());
        if let Ok(weak) = HeaderValue::from_bytes(&weak) {
            headers.insert(header::ETAG, weak);
        }
    }
}

/// A body read as far as the transforms may.
enum Read {
    /// The whole body, at most [`BODY_LIMIT`] bytes, without trailers.
    Complete(Bytes),
    /// Larger, or with trailers: the body, what was read put back in front.
    Partial(TimedBody),
}

async fn read(mut body: TimedBody) -> Result<Read, BodyError> {
    if body.size_hint().lower() > BODY_LIMIT as u64 {
        return Ok(Read::Partial(body));
    }
    let mut frames: VecDeque<Frame<Bytes>> = VecDeque::new();
    let mut length = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        let data = frame.data_ref().map_or(0, Bytes::len);
        let trailers = frame.is_trailers();
        length += data;
        frames.push_back(frame);
        if trailers || length > BODY_LIMIT {
            return Ok(Read::Partial(body.with_prefix(frames)));
        }
    }
    let mut bytes = BytesMut::with_capacity(length);
    for frame in frames {
        if let Ok(data) = frame.into_data() {
            bytes.extend_from_slice(&data);
        }
    }
    Ok(Read::Complete(bytes.freeze()))
}

#[cfg(test)]
mod tests;
