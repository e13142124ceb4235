//! The upstream side of a request to an HTTP pool: which endpoint
//! ([`Gateway::pick_peer`]), the request as the upstream sees it
//! ([`Gateway::prepare_upstream_request`]), its streamed body's limit, and
//! retries after a failed connect.

use super::{Gateway, RequestCtx};
use crate::error::GatewayError;
use crate::own_headers::{forwarded_proto, REQUEST_ID, X_FORWARDED_PROTO};
use crate::router;
use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use pingora::proxy::Session;
use pingora::{Error, Result};
use std::sync::Arc;

impl super::ConfigVersion {
    /// The route's pool (only HTTP-pool routes reach the upstream phases).
    pub(super) fn pool_of(&self, route: usize) -> &Arc<crate::upstream::HttpPool> {
        match self.router.route(route).target {
            gantry_config::Target::Pool(i) => &self.pools[i],
            _ => unreachable!("only HTTP-pool routes reach the upstream phases"),
        }
    }
}

impl Gateway {
    /// A healthy endpoint of the route's pool not tried yet for this request
    /// (by the pool's balancing: round robin, random, or consistent hash of a
    /// header or the client address). None healthy: 503; none left: 502.
    pub(super) fn pick_peer(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let pool = ctx
            .live
            .pool_of(ctx.route.expect("request_filter sets the route"));
        let backend = if pool.hashes() {
            let header = pool
                .hash_header()
                .and_then(|h| session.req_header().headers.get(h));
            match header {
                Some(v) => pool.pick(v.as_bytes(), &ctx.tried),
                None => {
                    let ip = session
                        .client_addr()
                        .and_then(|a| a.as_inet())
                        .map(|a| a.ip());
                    pool.pick(&ip_key(ip), &ctx.tried)
                }
            }
        } else {
            pool.pick(b"", &ctx.tried)
        };
        let Some(backend) = backend else {
            let err = if ctx.tried.is_empty() {
                GatewayError::NoHealthyEndpoint
            } else {
                GatewayError::UpstreamUnreachable
            };
            return Err(ctx.fail(err));
        };
        let peer = pool.peer(&backend);
        ctx.tried.push(backend);
        Ok(peer)
    }

    /// The upstream request: prefix stripped, headers rewritten, forwarding
    /// headers set (believed only from trusted proxies), the request id, and
    /// the length of a body the plugins changed.
    pub(super) fn prepare_upstream_request(
        &self,
        session: &Session,
        upstream: &mut RequestHeader,
        ctx: &RequestCtx,
    ) -> Result<()> {
        let i = ctx.route.expect("route chosen");
        let route = ctx.live.router.route(i);
        if route.strip_prefix {
            let pq = upstream.uri.path_and_query().map_or("/", |p| p.as_str());
            let stripped = router::strip_prefix(&route.path_prefix, pq);
            let uri = stripped.parse().map_err(|e| {
                Error::because(pingora::ErrorType::InternalError, "stripping prefix", e)
            })?;
            upstream.set_uri(uri);
        }
        if route.auth == gantry_config::RouteAuth::Keys {
            // The key was for the gateway; the upstream gets none of it (a
            // rewrite below may set the upstream's own credentials).
            upstream.remove_header(&http::header::AUTHORIZATION);
            upstream.remove_header(&crate::tenants::API_KEY_HEADER);
        }
        ctx.live.rewrites[i].0.apply(upstream)?;

        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        crate::forwarding::apply(upstream, peer, &ctx.live.config.trusted_proxies)?;
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        upstream.insert_header(X_FORWARDED_PROTO.wire(), forwarded_proto(tls))?;
        upstream.insert_header(REQUEST_ID.wire(), ctx.request_id.header())?;
        Self::propagate_span(ctx, upstream)?;
        if let Some(body) = &ctx.request_body {
            // The plugins may have changed the body's length.
            upstream.remove_header(&http::header::TRANSFER_ENCODING);
            upstream.insert_header(CONTENT_LENGTH, body.len())?;
        }
        Ok(())
    }

    /// A chunk of the body on its way upstream: the plugins' body replayed in
    /// its place, or counted against the route's limit (413 past it).
    pub(super) fn upstream_body_chunk(
        &self,
        body: &mut Option<Bytes>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(replaced) = &ctx.request_body {
            // The whole body was read for the plugins: this is its replay (on each
            // attempt), sent as they left it.
            *body = (!replaced.is_empty()).then(|| replaced.clone());
            return Ok(());
        }
        if let Some(chunk) = body.as_ref().filter(|_| !ctx.body_preread) {
            ctx.body_bytes += chunk.len() as u64;
            let limit = ctx
                .live
                .router
                .route(ctx.route.expect("route chosen"))
                .max_body_bytes;
            if ctx.body_bytes > limit {
                return Err(ctx.fail(GatewayError::BodyTooLarge { limit }));
            }
        }
        Ok(())
    }

    /// After a failed connect: retry an idempotent request on another endpoint
    /// while the pool's retries last (counted), else give up.
    pub(super) fn retry_after_connect_failure(
        &self,
        session: &Session,
        peer: &HttpPeer,
        ctx: &RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let pool = ctx.live.pool_of(ctx.route.expect("route chosen"));
        let retries_used = ctx.tried.len() as u32 - 1;
        let idempotent = session.req_header().method.is_idempotent();
        if idempotent && retries_used < pool.config.retries {
            tracing::warn!(request_id = %ctx.request_id, pool = %pool.config.name, peer = %peer, error = %e, "connect failed, retrying on another endpoint");
            self.metrics
                .upstream_retries
                .with_label_values(&[&pool.config.name])
                .inc();
            e.set_retry(true);
        } else {
            e.set_retry(false);
        }
        e
    }
}

/// The client IP as a hash key, IPv4 mapped into IPv6 so both have one form.
fn ip_key(ip: Option<std::net::IpAddr>) -> [u8; 16] {
    match ip {
        Some(std::net::IpAddr::V4(v4)) => v4.to_ipv6_mapped().octets(),
        Some(std::net::IpAddr::V6(v6)) => v6.octets(),
        None => [0; 16],
    }
}
