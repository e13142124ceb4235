//! One HTTP/1 request head, read and judged before Pingora parses it: every
//! request on a connection, the first and each kept-alive one after it.
//!
//! - **Deadlines** ([`Wait`]). A new connection has `limits.head_timeout_ms`
//!   from accept for its whole first head. A kept-alive connection may stay
//!   idle up to `limits.keepalive_timeout_ms` (then it is closed quietly, as
//!   nginx closes an idle keep-alive); once the next request's first byte
//!   arrives, its whole head has `limits.head_timeout_ms`. Pingora's own reads
//!   have only per-read timeouts, so a head trickled a byte at a time would
//!   otherwise be read forever.
//! - **Strictness** ([`judge`]). The head is parsed with httparse as Pingora
//!   parses it, but without Pingora's fallback that escapes an illegal request
//!   line, and its framing is checked ([`crate::framing::check`]). What is
//!   refused is answered with the gateway's JSON error and `Connection: close`
//!   ([`respond_error`]): 400 for a malformed head, 501 for an unknown transfer
//!   coding, 505 for an HTTP version other than 1.0 and 1.1, 431 for a head
//!   over `limits.max_header_bytes`.

use super::H2_PREFACE;
use crate::error::GatewayError;
use bytes::BytesMut;
use pingora::protocols::{Shutdown, Stream};
use pingora::server::ShutdownWatch;
use std::pin::Pin;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Sleep;

/// Header fields in one request head: Pingora's own bound (its parser takes
/// no more), so not a setting. More is a 431 (`limit="header_fields"`).
pub(super) const MAX_HEADERS: usize = 256;

/// Bytes asked of the socket per read while a head arrives.
const READ_CHUNK: usize = 4096;

/// When a head must have arrived.
#[derive(Debug, Clone, Copy)]
pub(super) enum Wait {
    /// A new connection: the whole head by this instant (counted from accept).
    Until(Instant),
    /// A kept-alive connection: the next request's first byte by this instant,
    /// then its whole head within `head_timeout` of that byte.
    Idle(Instant),
}

/// What reading the head came to.
pub(super) enum Head {
    /// Hand the connection over with these bytes first (the head, and
    /// whatever of the body came with it).
    Read(BytesMut),
    /// The client closed, or a kept-alive connection stayed idle: close
    /// without an answer.
    Closed,
    /// The head did not arrive in time.
    TimedOut,
    /// The head grew past `max_header_bytes` without ending.
    TooLarge(usize),
}

/// How one head is read.
#[derive(Debug, Clone, Copy)]
pub(super) struct HeadRead {
    /// From the first byte (kept-alive) or accept (new) to the head's end.
    pub head_timeout: Duration,
    /// Bytes of head read before it is refused as too large.
    pub max_header_bytes: usize,
    /// Whether the bytes may instead be the HTTP/2 preface (an h2c listener's
    /// first read).
    pub h2c: bool,
}

/// Whether `buf` holds a whole HTTP/1 head (bare LF line ends accepted, as
/// Pingora's parser accepts them).
pub(super) fn head_complete(buf: &[u8]) -> bool {
    buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n")
}

/// Read one head (or, on an h2c listener's first read, the HTTP/2 preface).
/// A shutdown ends an idle wait at once.
///
/// `timer` is the connection's one timer, kept across its heads: a kept-alive
/// connection's next idle deadline is later than the last, which tokio takes
/// as a lock-free extension, and the head deadline is armed only when a head
/// does not arrive whole in its first read. (Re-arming a timer earlier wakes
/// the runtime's driver through its eventfd: once per request, measured as a
/// third of the gap to a plain Pingora proxy, before this.)
pub(super) async fn read_head(
    stream: &mut Stream,
    how: HeadRead,
    wait: Wait,
    mut timer: Pin<&mut Sleep>,
    shutdown: &ShutdownWatch,
) -> Head {
    let mut buf = BytesMut::new();
    let mut complete = false;
    let mut shutdown = shutdown.clone();
    let first_deadline = match wait {
        Wait::Until(t) | Wait::Idle(t) => t,
    };
    if timer.deadline() != first_deadline.into() {
        timer.as_mut().reset(first_deadline.into());
    }
    loop {
        // On an h2c listener, bytes that are still the start of the preface
        // may yet become it: read on.
        let could_be_h2 = how.h2c && buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&buf);
        if how.h2c && buf.starts_with(H2_PREFACE) || complete && !could_be_h2 {
            return Head::Read(buf);
        }
        if buf.len() > how.max_header_bytes && !could_be_h2 {
            return Head::TooLarge(buf.len());
        }
        let idle = buf.is_empty() && matches!(wait, Wait::Idle(_));
        // Only the new bytes (and the 3 before them) can complete the blank
        // line: a trickled head is not rescanned whole. They are read straight
        // into the buffer Pingora will parse.
        let from = buf.len().saturating_sub(3);
        buf.reserve(READ_CHUNK);
        let read = tokio::select! {
            // Bytes first: when they are already there, the timer and the
            // shutdown watch are not polled (each poll registers a waker), and
            // a head that arrived as shutdown began is still served.
            biased;
            read = stream.read_buf(&mut buf) => read,
            _ = timer.as_mut() => {
                return if idle { Head::Closed } else { Head::TimedOut };
            }
            _ = shutdown.changed(), if idle => return Head::Closed,
        };
        match read {
            // Closed, or a partial head then EOF: nothing to answer.
            Ok(0) | Err(_) => return Head::Closed,
            Ok(_) => {
                complete = complete || head_complete(&buf[from..]);
                if idle && !complete {
                    // The rest of the head within head_timeout of its first byte.
                    timer
                        .as_mut()
                        .reset((Instant::now() + how.head_timeout).into());
                } else if !complete && timer.is_elapsed() {
                    // Bytes always ready never starve the deadline (the read
                    // is polled first): it is looked at after each read.
                    return Head::TimedOut;
                }
            }
        }
    }
}

/// Judge a whole HTTP/1 head: `Ok` to hand it to Pingora, or what to answer
/// before closing the connection.
pub(super) fn judge(head: &[u8]) -> Result<(), GatewayError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::Version) if names_a_version(head) => {
            return Err(GatewayError::HttpVersion)
        }
        // A blank line that httparse does not see as the head's end is
        // malformed too.
        Err(httparse::Error::TooManyHeaders) => {
            return Err(GatewayError::TooManyHeaders { limit: MAX_HEADERS })
        }
        Ok(httparse::Status::Partial) | Err(_) => return Err(GatewayError::BadRequest),
    }
    let version = req.version.unwrap_or(1);
    crate::framing::check(version, req.headers, head).map_err(GatewayError::Framing)?;
    let target = req.path.unwrap_or_default().as_bytes();
    check_authority(version, req.method == Some("CONNECT"), target, req.headers)
}

/// One unambiguous authority (RFC 9112 §3.2): an HTTP/1.1 request has exactly
/// one `Host`, without userinfo, and an absolute-form target names the same
/// authority. (Pingora checks the same after parsing, answering a bare 400;
/// CONNECT is left to it.)
fn check_authority(
    version: u8,
    connect: bool,
    target: &[u8],
    headers: &[httparse::Header<'_>],
) -> Result<(), GatewayError> {
    use pingora::http::authority::{raw_target_authority, RawTargetAuthority};
    let bad_host = GatewayError::InvalidTarget(crate::normalize::Refused::BadHost);
    let mut hosts = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"))
        .map(|h| h.value);
    let (host, second) = (hosts.next(), hosts.next());
    if second.is_some() || host.is_some_and(|h| h.contains(&b'@')) {
        return Err(bad_host);
    }
    if host.is_none() && version == 1 {
        return Err(GatewayError::MissingHost);
    }
    if connect {
        return Ok(());
    }
    match raw_target_authority(target) {
        RawTargetAuthority::None => Ok(()),
        RawTargetAuthority::AmbiguousAuthority => Err(bad_host),
        RawTargetAuthority::Absolute { authority, .. } => {
            let parses = http::uri::Authority::try_from(authority).is_ok();
            if !parses || authority.contains(&b'@') || host.is_some_and(|h| h != authority) {
                return Err(bad_host);
            }
            Ok(())
        }
    }
}

/// Whether the request line ends in a well-formed `HTTP/<digits>.<digits>`
/// (a version we do not speak, answered 505, rather than garbage, 400).
fn names_a_version(head: &[u8]) -> bool {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    // Method, target, version: one space between each.
    let mut tokens = line.split(|&b| b == b' ');
    let (Some(_), Some(_), Some(version), None) =
        (tokens.next(), tokens.next(), tokens.next(), tokens.next())
    else {
        return false;
    };
    let Some(number) = version.strip_prefix(b"HTTP/") else {
        return false;
    };
    let mut parts = number.split(|&b| b == b'.');
    let digits =
        |p: Option<&[u8]>| p.is_some_and(|p| !p.is_empty() && p.iter().all(u8::is_ascii_digit));
    digits(parts.next()) && digits(parts.next()) && parts.next().is_none()
}

/// Answer `err` with the gateway's JSON error body, then close the connection.
pub(super) async fn respond_error(stream: &mut Stream, err: &GatewayError) {
    let body = err.body();
    let status = http::StatusCode::from_u16(err.status()).unwrap_or(http::StatusCode::BAD_REQUEST);
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(&body).await;
    let _ = stream.flush().await;
    Shutdown::shutdown(&mut **stream).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_heads_are_refused_with_the_code_nginx_uses() {
        assert_eq!(judge(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Ok(()));
        assert_eq!(judge(b"GET / HTTP/1.1\nHost: a\n\n"), Ok(()));
        assert_eq!(judge(b"GET / HTTP/1.0\r\n\r\n"), Ok(()));
        assert_eq!(judge(b"GET http://a/x HTTP/1.1\r\nHost: a\r\n\r\n"), Ok(()));
        for bad in [
            &b"GARBAGE\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
            b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
            b"GET / HTTP/x.y\r\nHost: a\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            b"GET /a b HTTP/9.9\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n",
            b"GET http://b/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET http://u@a/ HTTP/1.1\r\nHost: u@a\r\n\r\n",
            b"GET http:a/ HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            let refused = judge(bad).expect_err(&String::from_utf8_lossy(bad));
            assert_eq!(refused.status(), 400, "{}", String::from_utf8_lossy(bad));
        }
        for (head, status) in [
            (&b"GET / HTTP/9.9\r\nHost: a\r\n\r\n"[..], 505),
            (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
                501,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
                501,
            ),
        ] {
            let refused = judge(head).expect_err(&String::from_utf8_lossy(head));
            assert_eq!(
                refused.status(),
                status,
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn too_many_header_fields_is_a_431_naming_the_limit() {
        let mut head = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
        for i in 0..MAX_HEADERS {
            head.push_str(&format!("x-{i}: v\r\n"));
        }
        head.push_str("\r\n");
        let refused = judge(head.as_bytes()).unwrap_err();
        assert_eq!(refused.status(), 431);
        assert!(refused.to_string().contains("256"), "{refused}");
    }

    #[test]
    fn heads_are_complete_at_the_blank_line() {
        assert!(head_complete(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(head_complete(b"GET / HTTP/1.1\nHost: a\n\n"));
        assert!(head_complete(b"GARBAGE\r\n\r\n"));
        assert!(!head_complete(b"GET / HTTP/1.1\r\nHost: a\r\n"));
        assert!(!head_complete(b"PRI * HTTP/2.0\r\n"));
    }
}
