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

/// Whether every raw `Transfer-Encoding` field line has no tab in its value
/// (nginx refuses one there; httparse trims it away).
fn raw_transfer_encoding_plain(raw: &[u8]) -> bool {
    const NAME: &[u8] = b"transfer-encoding:";
    raw.split(|&b| b == b'\n')
        .skip(1)
        .take_while(|line| !line.is_empty() && *line != b"\r")
        .filter(|line| line.len() >= NAME.len() && line[..NAME.len()].eq_ignore_ascii_case(NAME))
        .all(|line| !line.contains(&b'\t'))
}

/// Check an HTTP/1.x request head's framing fields, as httparse parsed them
/// (`version` 0 or 1); `raw` is the head as received.
pub fn check(version: u8, headers: &[httparse::Header<'_>], raw: &[u8]) -> Result<(), Refused> {
    // Counted, not collected: this runs on every request.
    let named = |name: &'static str| {
        headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let mut te = named("transfer-encoding");
    let mut cl = named("content-length");
    if let Some(first_te) = te.next() {
        if version == 0 {
            return Err(Refused::TransferEncodingOnHttp10);
        }
        if cl.next().is_some() {
            return Err(Refused::BothLengths);
        }
        if te.next().is_some() {
            return Err(Refused::RepeatedTransferEncoding);
        }
        if !first_te.trim_ascii().eq_ignore_ascii_case(b"chunked")
            || !raw_transfer_encoding_plain(raw)
        {
            return Err(Refused::UnsupportedTransferEncoding);
        }
        return Ok(());
    }
    match (cl.next(), cl.next()) {
        (None, _) => Ok(()),
        (Some(one), None) if !one.is_empty() && one.iter().all(u8::is_ascii_digit) => Ok(()),
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

    /// `check` on a head of `version` with `fields` (each a raw field line).
    fn check_head(version: &str, fields: &[&str]) -> Result<(), Refused> {
        let raw = format!(
            "POST / {version}\r\nHost: a\r\n{}\r\n",
            fields
                .iter()
                .map(|f| format!("{f}\r\n"))
                .collect::<String>()
        );
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut headers);
        assert!(req.parse(raw.as_bytes()).unwrap().is_complete(), "{raw}");
        check(req.version.unwrap(), req.headers, raw.as_bytes())
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        const HTTP_10: &str = "HTTP/1.0";
        const HTTP_11: &str = "HTTP/1.1";
        type Case<'a> = (&'a str, &'a [&'a str], Result<(), Refused>);
        let cases: &[Case] = &[
            (HTTP_11, &["Transfer-Encoding: chunked"], Ok(())),
            (HTTP_11, &["transfer-encoding: Chunked "], Ok(())),
            (HTTP_11, &["Content-Length: 3"], Ok(())),
            (HTTP_11, &[], Ok(())),
            (
                HTTP_11,
                &["Transfer-Encoding: chunked", "content-LENGTH: 3"],
                Err(Refused::BothLengths),
            ),
            (
                HTTP_11,
                &["Transfer-Encoding: gzip, chunked"],
                Err(Refused::UnsupportedTransferEncoding),
            ),
            (
                HTTP_11,
                &["Transfer-Encoding: chunked, identity"],
                Err(Refused::UnsupportedTransferEncoding),
            ),
            (
                HTTP_11,
                &["Transfer-Encoding: xchunked"],
                Err(Refused::UnsupportedTransferEncoding),
            ),
            (
                HTTP_11,
                &["Transfer-Encoding:\tchunked"],
                Err(Refused::UnsupportedTransferEncoding),
            ),
            (
                HTTP_11,
                &["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"],
                Err(Refused::RepeatedTransferEncoding),
            ),
            (
                HTTP_11,
                &["Content-Length: 3, 3"],
                Err(Refused::BadContentLength),
            ),
            (
                HTTP_11,
                &["Content-Length: +3"],
                Err(Refused::BadContentLength),
            ),
            (
                HTTP_11,
                &["Content-Length: "],
                Err(Refused::BadContentLength),
            ),
            (
                HTTP_11,
                &["Content-Length: 3", "Content-Length: 3"],
                Err(Refused::BadContentLength),
            ),
            (
                HTTP_10,
                &["Transfer-Encoding: chunked"],
                Err(Refused::TransferEncodingOnHttp10),
            ),
        ];
        for (version, fields, want) in cases {
            assert_eq!(check_head(version, fields), *want, "{version} {fields:?}");
        }
        // A tab in a body that happens to follow the head is not a field's.
        let raw =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nTransfer-Encoding:\tchunked";
        assert!(raw_transfer_encoding_plain(raw));
        assert_eq!(Refused::UnsupportedTransferEncoding.status(), 501);
        assert_eq!(Refused::BothLengths.status(), 400);
    }
}
