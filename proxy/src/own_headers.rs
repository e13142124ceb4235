//! Headers the gateway writes itself, each named once ([`OwnHeader`]).
//!
//! Pingora keeps every header's spelling for HTTP/1 (a case-preserving name
//! map beside the `HeaderMap`). Handed an `http::HeaderName` it has no title
//! for (any non-standard name), it copies the name's text on every insert;
//! handed a static spelling, it borrows it. A header written on every request
//! is therefore named here once: [`OwnHeader::name`] to look it up by, and
//! [`OwnHeader::wire`], the static spelling to insert it with.

use bytes::Bytes;
use http::{HeaderName, HeaderValue};

/// A header the gateway writes, by its lowercase name.
pub struct OwnHeader {
    /// The name, for lookups in a `HeaderMap`.
    pub name: HeaderName,
    spelling: &'static str,
}

impl OwnHeader {
    /// The header named `lowercase` (panics at compile time, as
    /// `HeaderName::from_static` does, if it is not a valid lowercase name).
    pub const fn new(lowercase: &'static str) -> Self {
        OwnHeader {
            name: HeaderName::from_static(lowercase),
            spelling: lowercase,
        }
    }

    /// The spelling to insert it with: `insert_header(H.wire(), value)`
    /// borrows it where `insert_header(H.name, value)` would copy it.
    pub fn wire(&self) -> Bytes {
        Bytes::from_static(self.spelling.as_bytes())
    }
}

/// The request id, read from the client when valid and generated otherwise;
/// sent upstream and back to the client.
pub const REQUEST_ID: OwnHeader = OwnHeader::new("x-request-id");
/// The client's address (and, from a trusted proxy, the chain before it).
pub const X_FORWARDED_FOR: OwnHeader = OwnHeader::new("x-forwarded-for");
/// The scheme the client used to reach the gateway.
pub const X_FORWARDED_PROTO: OwnHeader = OwnHeader::new("x-forwarded-proto");

/// `X-Forwarded-Proto`'s value for a client connection with or without TLS.
pub fn forwarded_proto(tls: bool) -> HeaderValue {
    HeaderValue::from_static(if tls { "https" } else { "http" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::http::RequestHeader;

    #[test]
    fn an_own_header_is_found_by_its_name_and_written_as_spelt() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header(X_FORWARDED_PROTO.wire(), forwarded_proto(true))
            .unwrap();
        req.insert_header(REQUEST_ID.wire(), "abc").unwrap();
        assert_eq!(req.headers[&X_FORWARDED_PROTO.name], "https");
        assert_eq!(req.headers[&REQUEST_ID.name], "abc");
        let mut wire = Vec::new();
        req.header_to_h1_wire(&mut wire);
        assert_eq!(wire, b"x-forwarded-proto: https\r\nx-request-id: abc\r\n");
    }
}
