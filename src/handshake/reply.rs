//! The router's own answers: short texts and JSON, marked as the gateway's.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::StatusCode;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::Response;

/// Every response body the router sends: a whole small one, or a collector's, streamed.
pub type Body = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A body held whole.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    marked(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(body.as_bytes()),
    )
}

/// 200 with `value` as JSON.
pub fn json(value: &impl serde::Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    marked(StatusCode::OK, "application/json", Bytes::from(body))
}

pub fn marked(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Tells `portcullis probe` (and an admin with curl) that this answer is ours, not a hop's.
    h.insert(
        crate::probe::MARKER_HEADER,
        HeaderValue::from_static("gateway"),
    );
    r
}
