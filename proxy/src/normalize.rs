//! One view of the path and the host: what routing matches, what the plugins see
//! and what the upstream gets are the same normalized strings.
//!
//! Path (RFC 3986 §6.2.2): percent-encoded unreserved characters are decoded
//! (`%61` → `a`), other escapes get upper-case hex (`%2f`… is refused, see
//! below), runs of `/` are merged into one (as nginx's `merge_slashes` does),
//! and `.` / `..` segments are removed. Refused with a 400, because a backend
//! could read them otherwise than the router did: an encoded `/` (`%2F`), `\`
//! (`%5C`) or NUL (`%00`), a raw backslash, a control character, a `..` above the
//! root, or a path that is not origin-form. A `;` is an ordinary character of a
//! segment (`/api;v=1` is not `/api`): path parameters are not interpreted.
//! The query string is kept as sent.
//!
//! Host: lower-cased, one trailing dot removed, the port kept; empty labels
//! (`a..b`, `.a`, `a..`) and characters outside a host name or IP literal are
//! refused.

use http::header::HOST;
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use std::borrow::Cow;

/// Why a request target or host was refused (the 400's message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The path does not start with `/`.
    #[error("the request path must start with `/`")]
    NotOriginForm,
    /// `%2F`, `%5C` or `%00` in the path.
    #[error("the request path holds an encoded `/`, `\\` or NUL")]
    EncodedSeparator,
    /// A raw `\` or a control character.
    #[error("the request path holds a backslash or a control character")]
    BadCharacter,
    /// `%` not followed by two hex digits.
    #[error("the request path holds a malformed percent escape")]
    BadEscape,
    /// A `..` that would climb above `/`.
    #[error("the request path climbs above the root with `..`")]
    AboveRoot,
    /// The host is empty, has an empty label, or characters a host cannot have.
    #[error("the Host header is not a valid host name")]
    BadHost,
    /// The normalized target or host cannot be put back into the request.
    #[error("the request is malformed")]
    Unrepresentable,
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Whether `path` is already in normal form: no escape, backslash, control
/// character, empty segment or dot segment. Most paths are; they are checked in
/// one pass without allocating.
fn already_normal(path: &[u8]) -> bool {
    let clean = path
        .iter()
        .all(|&b| b >= 0x20 && b != 0x7f && b != b'%' && b != b'\\');
    if !clean {
        return false;
    }
    let mut segments = path[1..].split(|&b| b == b'/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        if seg == b"." || seg == b".." || (seg.is_empty() && !last) {
            return false;
        }
    }
    true
}

/// The normalized form of `path` (no query), borrowed when nothing changes.
pub fn path(path: &str) -> Result<Cow<'_, str>, Refused> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(Refused::NotOriginForm);
    }
    if already_normal(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    // Decode unreserved escapes and check every byte; `decoded` holds the path
    // with only reserved escapes left (upper-cased).
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(Refused::BadEscape);
                };
                let value = hi << 4 | lo;
                if matches!(value, b'/' | b'\\' | 0) {
                    return Err(Refused::EncodedSeparator);
                }
                if unreserved(value) {
                    decoded.push(value);
                } else {
                    decoded.push(b'%');
                    decoded.extend(format!("{value:02X}").bytes());
                }
                i += 3;
            }
            b'\\' => return Err(Refused::BadCharacter),
            c if c < 0x20 || c == 0x7f => return Err(Refused::BadCharacter),
            _ => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    // Segments, with `.` removed, `..` popping, and empty ones (from `//`) merged.
    let text = std::str::from_utf8(&decoded).map_err(|_| Refused::BadCharacter)?;
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = text[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut trailing_slash = false;
    for (k, seg) in segments.iter().enumerate() {
        match *seg {
            "." | "" => trailing_slash = k == last,
            ".." => {
                out.pop().ok_or(Refused::AboveRoot)?;
                trailing_slash = k == last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut normal = String::with_capacity(text.len());
    for seg in &out {
        normal.push('/');
        normal.push_str(seg);
    }
    if out.is_empty() || trailing_slash {
        normal.push('/');
    }
    if normal == path {
        Ok(Cow::Borrowed(path))
    } else {
        Ok(Cow::Owned(normal))
    }
}

/// The normalized form of a `Host` value (with its port, if any).
pub fn host(value: &str) -> Result<Cow<'_, str>, Refused> {
    let (name, port) = split_port(value)?;
    if name.starts_with('[') {
        // An IPv6 literal: hex digits, colons, dots.
        let inner = name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .ok_or(Refused::BadHost)?;
        if inner.is_empty()
            || !inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(Refused::BadHost);
        }
    } else {
        let name = name.strip_suffix('.').unwrap_or(name);
        let labels_ok = !name.is_empty()
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !labels_ok || name.len() > 253 {
            return Err(Refused::BadHost);
        }
    }
    let trimmed = name.strip_suffix('.').filter(|_| !name.starts_with('['));
    let name = trimmed.unwrap_or(name);
    let lower = name.bytes().any(|b| b.is_ascii_uppercase());
    if trimmed.is_none() && !lower {
        return Ok(Cow::Borrowed(value));
    }
    let mut out = name.to_ascii_lowercase();
    if let Some(port) = port {
        out.push(':');
        out.push_str(port);
    }
    Ok(Cow::Owned(out))
}

/// `name` and the port, if any (digits only).
fn split_port(value: &str) -> Result<(&str, Option<&str>), Refused> {
    let (name, port) = match value.rfind(':') {
        // `[::1]` alone: the colon is inside the literal.
        Some(at) if !value[at..].contains(']') => (&value[..at], Some(&value[at + 1..])),
        _ => (value, None),
    };
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Refused::BadHost);
        }
    }
    Ok((name, port))
}

/// Give the request one view of its path and host: routing, plugins and the
/// upstream all see the normalized forms. (An HTTP/1 request's framing and
/// `Host` were judged by the front door, before Pingora read it.)
pub fn apply(session: &mut Session) -> Result<(), Refused> {
    let req = session.req_header();
    let path = path(req.uri.path())?;
    let host = host_of(req).map(host).transpose()?;
    let path = match path {
        std::borrow::Cow::Owned(p) => Some(match req.uri.query() {
            Some(q) => format!("{p}?{q}"),
            None => p,
        }),
        std::borrow::Cow::Borrowed(_) => None,
    };
    let host = match host {
        Some(std::borrow::Cow::Owned(h)) => Some(h),
        _ => None,
    };
    let req = session.req_header_mut();
    if let Some(path) = path {
        let uri = http::Uri::try_from(path).map_err(|_| Refused::Unrepresentable)?;
        req.set_uri(uri);
    }
    if let Some(host) = host {
        req.insert_header(HOST, host)
            .map_err(|_| Refused::Unrepresentable)?;
    }
    Ok(())
}

/// The host a request names: its `Host` header, else its target's authority.
pub fn host_of(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalize_to_one_form() {
        let cases = [
            ("/", "/"),
            ("/api/x", "/api/x"),
            ("/static/../api/x", "/api/x"),
            ("/%61pi/x", "/api/x"),
            ("/%7euser", "/~user"),
            ("//api/x", "/api/x"),
            ("/api//x//", "/api/x/"),
            ("/api/./x/.", "/api/x/"),
            ("/api/x/..", "/api/"),
            ("/a/b/../../c", "/c"),
            ("/a/%2e%2E/b", "/b"),
            ("/a%20b", "/a%20b"),
            ("/a%3fb", "/a%3Fb"),
            ("/api;v=1/x", "/api;v=1/x"),
            ("/é", "/é"),
        ];
        for (raw, want) in cases {
            assert_eq!(path(raw).as_deref(), Ok(want), "{raw}");
        }
        for normal in ["/", "/api/x", "/api/x/", "/a;b=1/é"] {
            assert!(already_normal(normal.as_bytes()), "{normal}");
            assert!(matches!(path(normal), Ok(Cow::Borrowed(_))), "{normal}");
        }
        for not in ["//a", "/a//b", "/./a", "/a/..", "/a%41", "/a\\b", "/a/."] {
            assert!(!already_normal(not.as_bytes()), "{not}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        let cases = [
            ("/a%2Fb", Refused::EncodedSeparator),
            ("/a%2fb", Refused::EncodedSeparator),
            ("/a%5Cb", Refused::EncodedSeparator),
            ("/a%00", Refused::EncodedSeparator),
            ("/a\\b", Refused::BadCharacter),
            ("/a\u{1}b", Refused::BadCharacter),
            ("/..", Refused::AboveRoot),
            ("/a/../../b", Refused::AboveRoot),
            ("/%2e%2e/%2e%2e/etc", Refused::AboveRoot),
            ("/a%2", Refused::BadEscape),
            ("/a%zz", Refused::BadEscape),
            ("a/b", Refused::NotOriginForm),
            ("*", Refused::NotOriginForm),
        ];
        for (raw, want) in cases {
            assert_eq!(path(raw), Err(want), "{raw}");
        }
    }

    #[test]
    fn hosts_normalize_to_one_form() {
        let cases = [
            ("example.com", "example.com"),
            ("Admin.Example.COM.", "admin.example.com"),
            ("admin.example.com.:8080", "admin.example.com:8080"),
            ("127.0.0.1:8080", "127.0.0.1:8080"),
            ("[::1]:443", "[::1]:443"),
            ("[::1]", "[::1]"),
            ("a_b.internal", "a_b.internal"),
        ];
        for (raw, want) in cases {
            assert_eq!(host(raw).as_deref(), Ok(want), "{raw}");
        }
        for bad in [
            "", ".", "a..b", ".a", "a..", "a b", "a/b", "a:", "a:x", "[zz]", "[::1", "a:123456",
        ] {
            assert_eq!(host(bad), Err(Refused::BadHost), "{bad:?}");
        }
    }
}
