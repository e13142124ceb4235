//! Forwarding headers: `X-Forwarded-For` and the headers a client could forge.
//!
//! A peer in `server.trusted_proxies` is believed: it is appended to
//! `X-Forwarded-For` and its other forwarding headers pass. From any other peer,
//! `X-Forwarded-For` is just the peer and the spoofable headers are removed.
//! (`X-Forwarded-Proto` is set by the gateway in every case.)

use pingora::http::RequestHeader;
use pingora::Result;

/// Forwarding headers a client could forge, removed unless the peer is a
/// trusted proxy (`X-Forwarded-For` is then rewritten, not removed).
pub const SPOOFABLE_FORWARDING_HEADERS: &[&str] = &[
    "forwarded",
    "x-real-ip",
    "x-forwarded-host",
    "x-forwarded-port",
    "true-client-ip",
    "x-client-ip",
];

/// Set the upstream request's forwarding headers for a peer at `peer`.
pub fn apply(
    upstream: &mut RequestHeader,
    peer: Option<std::net::IpAddr>,
    trusted_proxies: &[ipnet::IpNet],
) -> Result<()> {
    let Some(ip) = peer else {
        return Ok(());
    };
    if !trusted_proxies.iter().any(|n| n.contains(&ip)) {
        for name in SPOOFABLE_FORWARDING_HEADERS {
            upstream.remove_header(*name);
        }
        upstream.insert_header("x-forwarded-for", ip.to_string())?;
        return Ok(());
    }
    let xff = match upstream
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
    {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip.to_string(),
    };
    upstream.insert_header("x-forwarded-for", xff)
}
