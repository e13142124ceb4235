//! Forwarding headers: `X-Forwarded-For` and the headers a client could forge.
//!
//! A peer in `server.trusted_proxies` is believed: it is appended to
//! `X-Forwarded-For` and its other forwarding headers pass. From any other peer,
//! `X-Forwarded-For` is just the peer and the spoofable headers are removed.
//! (`X-Forwarded-Proto` is set by the gateway in every case.)

use http::HeaderName;
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

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

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
        upstream.insert_header(X_FORWARDED_FOR, ip.to_string())?;
        return Ok(());
    }
    let xff = match upstream
        .headers
        .get(&X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
    {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip.to_string(),
    };
    upstream.insert_header(X_FORWARDED_FOR, xff)
}
