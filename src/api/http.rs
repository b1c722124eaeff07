//! Body type and small helpers shared by the API's handlers.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::{BodyExt, Full};

/// Errors of bodies in either direction.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Response bodies: whole (most) or streamed (watch).
pub type Body = BoxBody<Bytes, BoxError>;

/// Request bodies: from the network, or from an in-process client (`crate::client::local`).
pub type RequestBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A plain-text response (health checks answer like kube-apiserver: `ok`).
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header("X-Content-Type-Options", "nosniff")
        .body(full(body))
        .expect("static response parts are valid")
}

/// A JSON response.
pub fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    json_bytes(
        status,
        serde_json::to_vec(value)
            .expect("response serializes")
            .into(),
    )
}

/// A JSON response already encoded.
pub fn json_bytes(status: StatusCode, body: Bytes) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(full(body))
        .expect("static response parts are valid")
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("reading the request body: {0}")]
    Failed(String),
}

/// The whole request body, refusing more than `max` bytes.
pub async fn read_limited(mut body: RequestBody, max: usize) -> Result<Bytes, ReadError> {
    let mut collected = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ReadError::Failed(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if collected.len() + data.len() > max {
                return Err(ReadError::TooLarge(max));
            }
            collected.extend_from_slice(&data);
        }
    }
    Ok(collected.freeze())
}
