//! A whole answer of the API (status, content type, body), and the headers
//! of a streamed one.

use super::error::ApiError;
use bytes::Bytes;

/// A whole answer.
#[derive(Debug, Clone)]
pub struct Whole {
    /// HTTP status.
    pub status: u16,
    /// Its `content-type`.
    pub content_type: &'static str,
    /// The body.
    pub body: Bytes,
    /// `Retry-After` seconds, when the client should come back.
    pub retry_after: Option<u32>,
}

impl Whole {
    /// `200 application/json`.
    pub fn json(body: Vec<u8>) -> Self {
        Whole {
            status: 200,
            content_type: "application/json",
            body: Bytes::from(body),
            retry_after: None,
        }
    }

    /// An error's JSON answer.
    pub fn error(err: &ApiError) -> Self {
        Whole {
            status: err.status,
            content_type: "application/json",
            body: Bytes::from(err.body()),
            retry_after: err.retry_after,
        }
    }
}

/// The headers of a streamed answer, besides the request id.
pub const STREAM_HEADERS: [(&str, &str); 2] = [
    ("content-type", "text/event-stream"),
    ("cache-control", "no-cache"),
];
