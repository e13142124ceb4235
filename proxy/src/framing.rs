//! Strict HTTP/1.1 request framing (RFC 9112 §6): a request whose body length
//! could be read two ways is refused before anything reads its body, the
//! connection closed after the answer. nginx 1.22 is the yardstick: what it
//! refuses, Gantry refuses.
//!
//! - `Transfer-Encoding` and `Content-Length` together: 400 (§6.3: a request
//!   smuggling vector; nginx refuses it since 1.21.1).
//! - `Transfer-Encoding` other than exactly `chunked` (`gzip, chunked`,
//!   `chunked, identity`, `xchunked`), or in more than one field line: 501 for
//!   an unknown coding, 400 for a repeated field.
//! - `Content-Length` that is not one run of digits (`3, 3`, `+3`) or in more
//!   than one field line: 400.
//! - `Transfer-Encoding` on HTTP/1.0 (§6.1: the message is faulty): 400.
//!
//! Responses too: one without a length goes chunked to HTTP/1.1 clients and
//! close-delimited to HTTP/1.0 ones ([`frame_response`]); a connection is kept
//! only as the client asked ([`client_keeps_alive`]).

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;

/// Why a request's framing was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Both `Transfer-Encoding` and `Content-Length`.
    #[error("the request has both Transfer-Encoding and Content-Length")]
    BothLengths,
    /// `Transfer-Encoding` in more than one field line.
    #[error("the request repeats Transfer-Encoding")]
    RepeatedTransferEncoding,
    /// A transfer coding other than `chunked`.
    #[error("only `Transfer-Encoding: chunked` is supported")]
    UnsupportedTransferEncoding,
    /// `Content-Length` not one run of digits, or repeated.
    #[error("the request's Content-Length is not a single decimal number")]
    BadContentLength,
    /// `Transfer-Encoding` on an HTTP/1.0 request.
    #[error("an HTTP/1.0 request cannot use Transfer-Encoding")]
    TransferEncodingOnHttp10,
}

impl Refused {
    /// 501 for a coding we do not implement, 400 for the rest.
    pub fn status(self) -> u16 {
        match self {
            Refused::UnsupportedTransferEncoding => 501,
            _ => 400,
        }
    }
}

/// The raw head's field lines named `name` (lower case, with the colon),
/// their values as sent.
fn raw_fields<'a>(raw: &'a [u8], name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    raw.split(|&b| b == b'\n')
        .skip(1)
        .filter(move |line| {
            line.len() >= name.len() && line[..name.len()].eq_ignore_ascii_case(name)
        })
        .map(move |line| &line[name.len()..])
}

/// Whether the raw request head has a `Content-Length` field line (Pingora
/// drops the parsed one when `Transfer-Encoding` is present).
fn raw_has_content_length(raw: &[u8]) -> bool {
    raw_fields(raw, b"content-length:").next().is_some()
}

/// Whether every raw `Transfer-Encoding` value has no tab around `chunked`
/// (nginx refuses one there).
fn raw_transfer_encoding_plain(raw: &[u8]) -> bool {
    raw_fields(raw, b"transfer-encoding:").all(|v| !v.contains(&b'\t'))
}

/// Check an HTTP/1.x request's framing headers (HTTP/2 frames its own bodies);
/// `raw_head` is the request head as received, when there is one.
pub fn check(req: &RequestHeader, raw_head: Option<&[u8]>) -> Result<(), Refused> {
    if !matches!(req.version, http::Version::HTTP_10 | http::Version::HTTP_11) {
        return Ok(());
    }
    // Counted, not collected: this runs on every request.
    let mut te = req.headers.get_all(TRANSFER_ENCODING).iter();
    let mut cl = req.headers.get_all(CONTENT_LENGTH).iter();
    if let Some(first_te) = te.next() {
        if req.version == http::Version::HTTP_10 {
            return Err(Refused::TransferEncodingOnHttp10);
        }
        if cl.next().is_some() || raw_head.is_some_and(raw_has_content_length) {
            return Err(Refused::BothLengths);
        }
        if te.next().is_some() {
            return Err(Refused::RepeatedTransferEncoding);
        }
        let value = first_te.to_str().map(|v| v.trim_matches(' ')).unwrap_or("");
        if !value.eq_ignore_ascii_case("chunked")
            || !raw_head.is_none_or(raw_transfer_encoding_plain)
        {
            return Err(Refused::UnsupportedTransferEncoding);
        }
        return Ok(());
    }
    match (cl.next(), cl.next()) {
        (None, _) => Ok(()),
        (Some(one), None) if !one.is_empty() && one.as_bytes().iter().all(u8::is_ascii_digit) => {
            Ok(())
        }
        _ => Err(Refused::BadContentLength),
    }
}

/// Every HTTP/1 response is framed (RFC 9112 §6.3): one whose body has neither
/// `Content-Length` nor `Transfer-Encoding` (a plugin removed the length, say)
/// goes to an HTTP/1.1 client chunked, keeping its connection, and to an
/// HTTP/1.0 client close-delimited, with `Connection: close`.
pub fn frame_response(session: &mut Session, resp: &mut ResponseHeader) -> pingora::Result<()> {
    let req = session.req_header();
    let status = resp.status.as_u16();
    let bodyless =
        status < 200 || status == 204 || status == 304 || req.method == http::Method::HEAD;
    let framed = resp.headers.contains_key(http::header::CONTENT_LENGTH)
        || resp.headers.contains_key(http::header::TRANSFER_ENCODING);
    match req.version {
        _ if bodyless || framed => {}
        http::Version::HTTP_11 => {
            resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
        }
        http::Version::HTTP_10 | http::Version::HTTP_09 => {
            session.set_keepalive(None);
            resp.insert_header(http::header::CONNECTION, "close")?;
        }
        _ => {}
    }
    Ok(())
}

/// Whether the client asked to keep its connection (RFC 9112 §9.3): HTTP/1.1
/// unless `Connection: close`, HTTP/1.0 only with `Connection: keep-alive`.
pub fn client_keeps_alive(req: &RequestHeader) -> bool {
    let has = |token: &str| {
        req.headers
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    match req.version {
        http::Version::HTTP_10 | http::Version::HTTP_09 => has("keep-alive"),
        http::Version::HTTP_11 => !has("close"),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: http::Version, headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("POST", b"/", None).unwrap();
        req.set_version(version);
        for (k, v) in headers {
            req.append_header(k.to_string(), *v).unwrap();
        }
        req
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        const HTTP_10: http::Version = http::Version::HTTP_10;
        const HTTP_11: http::Version = http::Version::HTTP_11;
        type Case<'a> = (http::Version, &'a [(&'a str, &'a str)], Result<(), Refused>);
        let cases: &[Case] = &[
            (HTTP_11, &[("transfer-encoding", "chunked")], Ok(())),
            (HTTP_11, &[("transfer-encoding", "Chunked ")], Ok(())),
            (HTTP_11, &[("content-length", "3")], Ok(())),
            (HTTP_11, &[], Ok(())),
            (
                HTTP_11,
                &[("transfer-encoding", "chunked"), ("content-length", "3")],
                Err(Refused::BothLengths),
            ),
            (
                HTTP_11,
                &[("transfer-encoding", "gzip, chunked")],
                Err(Refused::UnsupportedTransferEncoding),
            ),
            (
                HTTP_11,
                &[("transfer-encoding", "chunked, identity")],
                Err(Refused::UnsupportedTransferEncoding),
            ),
            (
                HTTP_11,
                &[("transfer-encoding", "xchunked")],
                Err(Refused::UnsupportedTransferEncoding),
            ),
            (
                HTTP_11,
                &[
                    ("transfer-encoding", "chunked"),
                    ("transfer-encoding", "chunked"),
                ],
                Err(Refused::RepeatedTransferEncoding),
            ),
            (
                HTTP_11,
                &[("content-length", "3, 3")],
                Err(Refused::BadContentLength),
            ),
            (
                HTTP_11,
                &[("content-length", "+3")],
                Err(Refused::BadContentLength),
            ),
            (
                HTTP_11,
                &[("content-length", "")],
                Err(Refused::BadContentLength),
            ),
            (
                HTTP_11,
                &[("content-length", "3"), ("content-length", "3")],
                Err(Refused::BadContentLength),
            ),
            (
                HTTP_10,
                &[("transfer-encoding", "chunked")],
                Err(Refused::TransferEncodingOnHttp10),
            ),
        ];
        for (version, headers, want) in cases {
            assert_eq!(
                check(&request(*version, headers), None),
                *want,
                "{version:?} {headers:?}"
            );
        }
        // Pingora drops the parsed Content-Length next to Transfer-Encoding; the
        // raw head still shows it.
        let te = request(HTTP_11, &[("transfer-encoding", "chunked")]);
        let raw = b"POST / HTTP/1.1\r\nHost: a\r\ncontent-LENGTH: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(check(&te, Some(raw)), Err(Refused::BothLengths));
        let tab = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\tchunked\r\n\r\n";
        assert_eq!(
            check(&te, Some(tab)),
            Err(Refused::UnsupportedTransferEncoding)
        );
        let plain = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(check(&te, Some(plain)), Ok(()));
        assert_eq!(Refused::UnsupportedTransferEncoding.status(), 501);
        assert_eq!(Refused::BothLengths.status(), 400);
    }
}
