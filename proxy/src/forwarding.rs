//! Forwarding headers: `X-Forwarded-For` and the headers a client could forge.
//!
//! A peer in `server.trusted_proxies` is believed: it is appended to
//! `X-Forwarded-For` and its other forwarding headers pass. From any other peer,
//! `X-Forwarded-For` is just the peer and the spoofable headers are removed.
//! (`X-Forwarded-Proto` is set by the gateway in every case.)

use crate::own_headers::X_FORWARDED_FOR;
use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use pingora::Result;

/// Forwarding headers a client could forge, removed unless the peer is a
/// trusted proxy (`X-Forwarded-For` is then rewritten, not removed). Names,
/// not strings: looking one up hashes it without parsing it.
pub const SPOOFABLE_FORWARDING_HEADERS: [HeaderName; 6] = [
    HeaderName::from_static("forwarded"),
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("true-client-ip"),
    HeaderName::from_static("x-client-ip"),
];

/// Whether `ip` is in `server.trusted_proxies`: its forwarding headers (and,
/// with `[traces] accept_incoming = "trusted_proxies"`, its trace context)
/// are believed.
pub fn is_trusted(ip: std::net::IpAddr, trusted_proxies: &[ipnet::IpNet]) -> bool {
    trusted_proxies.iter().any(|n| n.contains(&ip))
}

/// Set the upstream request's forwarding headers for a peer at `peer`.
pub fn apply(
    upstream: &mut RequestHeader,
    peer: Option<std::net::IpAddr>,
    trusted_proxies: &[ipnet::IpNet],
) -> Result<()> {
    let Some(ip) = peer else {
        return Ok(());
    };
    if !is_trusted(ip, trusted_proxies) {
        for name in &SPOOFABLE_FORWARDING_HEADERS {
            // Most requests carry none: look before removing (a removal also
            // rebuilds Pingora's case-preserving name map).
            if upstream.headers.contains_key(name) {
                upstream.remove_header(name);
            }
        }
        return upstream.insert_header(X_FORWARDED_FOR.wire(), ip_value(ip));
    }
    let xff = match upstream
        .headers
        .get(&X_FORWARDED_FOR.name)
        .and_then(|v| v.to_str().ok())
    {
        Some(prev) => format!("{prev}, {ip}"),
        None => return upstream.insert_header(X_FORWARDED_FOR.wire(), ip_value(ip)),
    };
    upstream.insert_header(X_FORWARDED_FOR.wire(), xff)
}

/// `ip` as a header value, formatted on the stack: the value's own bytes
/// are the only allocation.
fn ip_value(ip: std::net::IpAddr) -> HeaderValue {
    use std::io::Write;
    // The longest IPv6 address as Rust writes it is 39 bytes.
    let mut buf = [0u8; 48];
    let len = {
        let mut rest = &mut buf[..];
        write!(rest, "{ip}").expect("an IP address fits in 48 bytes");
        48 - rest.len()
    };
    HeaderValue::from_bytes(&buf[..len]).expect("an IP address is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ip_value_is_the_address_as_text_up_to_the_longest_ipv6_form() {
        for text in [
            "127.0.0.1",
            "255.255.255.255",
            "::1",
            "::ffff:255.255.255.255",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let ip: std::net::IpAddr = text.parse().unwrap();
            assert_eq!(ip_value(ip), text);
        }
    }
}
