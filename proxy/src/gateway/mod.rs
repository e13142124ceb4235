//! The gateway as Pingora phases, and only the phases: each is a short method
//! saying what it does and what it may not do, delegating to one file per
//! concern (docs/PHASES.md draws the whole path).
//!
//! | file              | concern                                                        |
//! |-------------------|----------------------------------------------------------------|
//! | `context.rs`      | what a request carries through the phases; its id              |
//! | `dispatch.rs`     | head checks, routing; the OpenAI-compatible API served in full |
//! | `body.rs`         | the one bounded request body reader; HTTP routes' body limit   |
//! | `plugin_chain.rs` | the route's Wasm plugins around a request                      |
//! | `plugin_calls.rs` | plugins' `proxy_http_call`s                                     |
//! | `answer_plugins.rs` | plugins on the API's answer, event by event (`stream_events`) |
//! | `upstream.rs`     | endpoint choice, the upstream request, connect retries         |
//! | `respond.rs`      | local responses (errors, plugins' answers)                     |
//! | `access_log.rs`   | access log line and request metrics                            |
//! | `request_span.rs` | the request's server span; trace context to the upstream       |
//! | `version.rs`      | one configuration, built; what a reload swaps                  |
//!
//! What came before the phases (connection caps, TLS, head deadlines, strict
//! parsing) is the front door's ([`crate::front`]); draining and in-flight
//! counting are [`crate::lifecycle`]'s.

mod access_log;
mod answer_plugins;
mod body;
mod context;
mod dispatch;
mod plugin_calls;
mod plugin_chain;
mod plugin_grpc;
mod request_span;
mod respond;
mod upstream;
pub mod version;

use crate::own_headers::REQUEST_ID;
pub use context::{RequestCtx, RequestId};
pub use version::{ConfigVersion, Live, VersionParts};

use crate::error::GatewayError;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use async_trait::async_trait;
use bytes::Bytes;
use gantry_config::Target;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, Result};
use std::sync::Arc;

/// The gateway's `ProxyHttp` implementation.
pub struct Gateway {
    /// The configuration new requests get (see [`version`]).
    live: Live,
    metrics: Arc<Metrics>,
    lifecycle: Arc<Lifecycle>,
    /// Connections for plugins' `proxy_http_call`s to HTTP pools.
    connector: pingora::connectors::http::Connector,
    /// API keys of routes with `auth = "keys"`.
    tenants: Arc<crate::tenants::Tenants>,
    /// Where spans go; `None`: not traced.
    traces: Option<Arc<gantry_telemetry::traces::Traces>>,
    /// Plugin hooks get spans (in sampled requests).
    plugin_spans: bool,
}

impl Gateway {
    /// Assemble the gateway: requests are served on `live`'s configuration,
    /// and let in on routes with `auth = "keys"` by `tenants`' keys.
    pub fn new(
        live: Live,
        metrics: Arc<Metrics>,
        lifecycle: Arc<Lifecycle>,
        tenants: Arc<crate::tenants::Tenants>,
    ) -> Self {
        Gateway {
            live,
            metrics,
            lifecycle,
            connector: pingora::connectors::http::Connector::new(None),
            tenants,
            traces: None,
            plugin_spans: false,
        }
    }

    /// Trace requests in `traces` (with plugin hooks' spans when `plugin_spans`).
    pub fn with_traces(
        mut self,
        traces: Arc<gantry_telemetry::traces::Traces>,
        plugin_spans: bool,
    ) -> Self {
        self.traces = Some(traces);
        self.plugin_spans = plugin_spans;
        self
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    /// A request's state, counted in flight until it is dropped.
    /// On the live configuration, kept until the request ends.
    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(&self.lifecycle, self.live.load_full())
    }

    /// Client read and write timeouts, and keep-alive as the client asked
    /// (never while draining). Answers nothing.
    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let limits = &ctx.live.config.limits;
        session.set_read_timeout(Some(limits.client_read_timeout));
        session.set_write_timeout(Some(limits.client_write_timeout));
        if self.lifecycle.closes_connections()
            || !crate::framing::client_keeps_alive(session.req_header())
        {
            session.set_keepalive(None);
        } else {
            session.set_keepalive(Some(limits.keepalive_timeout.as_secs().max(1)));
        }
        Ok(())
    }

    /// Identify and route the request, then by the route's target: the
    /// built-in pages and the OpenAI-compatible API are answered here, in full;
    /// a request to an HTTP pool has its plugins run and its body limit checked
    /// before the upstream phases proxy it. May not contact an HTTP pool.
    /// `true` when the response was sent.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.request_id = context::RequestId::of(session.req_header());
        self.start_span(session, ctx);
        let Some(route) = self.route_request(session, ctx).await? else {
            return Ok(true);
        };
        ctx.route = Some(route);
        self.name_span(session, ctx, route);
        if self.check_key(session, ctx, route).await? {
            return Ok(true);
        }
        let live = ctx.live.clone();
        let plugins = live.plugins.snapshot();
        let plugins = &plugins[route];
        match &live.router.route(route).target {
            Target::Builtin(which) => {
                let prefix = &live.router.route(route).path_prefix;
                let page = live
                    .api
                    .builtin(*which, prefix, session.req_header().uri.path());
                ctx.give_back_key().await;
                let rate = self.limiter(ctx);
                dispatch::write_whole(session, page, &ctx.request_id, rate).await?;
                Ok(true)
            }
            Target::Inference(_) => {
                self.serve_api(session, ctx, route, plugins).await?;
                Ok(true)
            }
            Target::Pool(_) if !plugins.is_empty() => {
                // The body is replayed to the upstream, as the plugins left it,
                // from Pingora's retry buffer (the route's max_body_bytes is at
                // most its size, see MAX_PLUGIN_ROUTE_BODY_BYTES).
                let Some(body) = self.request_plugins(session, ctx, route, plugins).await? else {
                    return Ok(true);
                };
                ctx.request_body = body;
                Ok(false)
            }
            Target::Pool(_) => self.check_upstream_body(session, ctx, route).await,
        }
    }

    /// A healthy endpoint of the route's pool, not tried yet.
    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        self.pick_peer(session, ctx)
    }

    /// The request as the upstream sees it (see `prepare_upstream_request`).
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        self.prepare_upstream_request(session, upstream, ctx)
    }

    /// Each body chunk on its way upstream: the plugins' body replayed, or the
    /// route's limit enforced on a streamed one.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        self.upstream_body_chunk(body, ctx)
    }

    /// Retry an idempotent request on another endpoint, within the pool's retries.
    fn fail_to_connect(
        &self,
        session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        self.retry_after_connect_failure(session, peer, ctx, e)
    }

    /// The upstream's response header: the plugins that saw the request (last
    /// first), the route's rewrite, the request id, framing for the client's
    /// HTTP version, and `Connection: close` while draining.
    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(i) = ctx.route {
            if !ctx.plugin_contexts.is_empty() {
                self.response_plugins(resp, ctx, i)?;
            }
            ctx.live.rewrites[i].1.apply(resp)?;
        }
        resp.insert_header(REQUEST_ID.wire(), ctx.request_id.header())?;
        if let Some(limiter) = self.limiter(ctx) {
            crate::tenants::add_rate_headers(resp, limiter)?;
        }
        crate::framing::frame_response(session, resp)?;
        if self.lifecycle.closes_connections() {
            // Draining or handing over: this response is the connection's last.
            session.set_keepalive(None);
        }
        Ok(())
    }

    /// Each response body chunk: a body a plugin put in the upstream's place,
    /// or the plugins' body hooks.
    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        if end_of_stream {
            drop(ctx.release_key());
        }
        if ctx.replace_body.is_some() {
            *body = if end_of_stream {
                ctx.replace_body.take()
            } else {
                None
            };
        } else if !ctx.plugin_contexts.is_empty() {
            self.response_body_plugins(body, end_of_stream, ctx)?;
        }
        Ok(None)
    }

    /// Any failure, answered from the error table (proxy/src/error.rs) with
    /// the JSON body, when no response has started; the connection is not
    /// reused.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let err = ctx.error.clone().or_else(|| GatewayError::from_pingora(e));
        let Some(err) = err else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        let status = err.status();
        // Pingora does not reuse a connection after a failure: say so in the response.
        session.set_keepalive(None);
        if session.response_written().is_none() {
            if ctx.request_id.is_empty() {
                ctx.request_id = context::RequestId::generate();
            }
            if let Err(write_err) = self.respond(session, ctx, err).await {
                tracing::debug!(error = %write_err, "could not send error response");
            }
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    /// Client mistakes are answered, and clients that went away have nobody to
    /// answer: neither is a server error (both still show in the access log).
    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, error: &Error) -> bool {
        match ctx
            .error
            .clone()
            .or_else(|| GatewayError::from_pingora(error))
        {
            Some(e) => e.is_client_error(),
            None => true,
        }
    }

    /// The access log line, the request metrics, the end of its span.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        self.log_request(session, e, ctx);
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        Self::end_span(ctx, status, e.map(|e| e.etype().as_str()));
        for (_, plugin) in ctx.plugin_contexts.drain(..) {
            crate::plugins::recycle(plugin.finish());
        }
    }
}
