//! The request's server span (OpenTelemetry HTTP conventions): started as
//! the request is read, continuing the client's W3C trace context when
//! `[traces].accept_incoming` believes it (else a new trace linking to it),
//! named once routed, propagated to the upstream, ended with the status.
//! Tracing off, none of this runs.

use super::{Gateway, RequestCtx};
use crate::metrics::Hook;
use gantry_config::traces::AcceptIncoming;
use gantry_telemetry::traces::{
    extract, traceparent, KeyValue, Link, OtelSpan as _, SpanBuilder, SpanKind, Status,
};
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use pingora::Result;
use std::time::SystemTime;

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

impl Gateway {
    /// Start the request's span, if traced.
    pub(super) fn start_span(&self, session: &Session, ctx: &mut RequestCtx) {
        let Some(traces) = &self.traces else {
            return;
        };
        let req = session.req_header();
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let incoming = extract(&req.headers);
        let believed = match traces.accept_incoming() {
            AcceptIncoming::Always => true,
            AcceptIncoming::Never => false,
            AcceptIncoming::TrustedProxies => peer.is_some_and(|ip| {
                crate::forwarding::is_trusted(ip, &ctx.live.config.trusted_proxies)
            }),
        };
        let mut attributes = vec![
            KeyValue::new("http.request.method", req.method.to_string()),
            KeyValue::new("url.path", req.uri.path().to_string()),
            KeyValue::new("gantry.request_id", ctx.request_id.to_string()),
        ];
        if let Some(host) = crate::normalize::host_of(req) {
            attributes.push(KeyValue::new("server.address", host.to_string()));
        }
        if let Some(ip) = peer {
            attributes.push(KeyValue::new("client.address", ip.to_string()));
        }
        let mut builder = SpanBuilder::from_name(req.method.to_string())
            .with_kind(SpanKind::Server)
            .with_attributes(attributes);
        let parent = match incoming {
            Some(client) if !believed => {
                // Not continued, but not lost: the new trace points at it.
                builder = builder.with_links(vec![Link::with_context(client)]);
                None
            }
            believed => believed,
        };
        ctx.span = Some(traces.start(builder, parent.as_ref()));
    }

    /// The routed request's span name: `{method} {route prefix}`.
    pub(super) fn name_span(&self, session: &Session, ctx: &mut RequestCtx, route: usize) {
        let Some(span) = ctx.span.as_mut() else {
            return;
        };
        let route = ctx.live.router.route(route);
        let method = &session.req_header().method;
        span.update_name(format!("{method} {}", route.path_prefix));
        span.set_attribute(KeyValue::new("http.route", route.path_prefix.clone()));
        span.set_attribute(KeyValue::new("gantry.route", route.name.clone()));
    }

    /// When a plugin hook starts, if it gets a span: `plugin_spans` is on
    /// and the request is sampled.
    pub(super) fn hook_started(&self, ctx: &RequestCtx) -> Option<SystemTime> {
        let sampled = ctx.span.as_ref()?.span_context().is_sampled();
        (self.plugin_spans && sampled).then(SystemTime::now)
    }

    /// Record a plugin hook's span, from `started` ([`Self::hook_started`])
    /// to now, with its outcome.
    pub(super) fn hook_span(
        &self,
        ctx: &RequestCtx,
        started: Option<SystemTime>,
        plugin: &str,
        hook: Hook,
        outcome: &'static str,
    ) {
        let (Some(started), Some(traces), Some(parent)) = (started, &self.traces, &ctx.span) else {
            return;
        };
        let builder = SpanBuilder::from_name(format!("plugin {plugin} {}", hook.as_str()))
            .with_kind(SpanKind::Internal)
            .with_start_time(started)
            .with_attributes(vec![
                KeyValue::new("gantry.plugin", plugin.to_string()),
                KeyValue::new("gantry.plugin.hook", hook.as_str()),
                KeyValue::new("gantry.plugin.outcome", outcome),
            ]);
        traces.start(builder, Some(parent.span_context())).end();
    }

    /// The upstream continues the request's trace: its `traceparent` (and
    /// `tracestate`) replace the client's.
    pub(super) fn propagate_span(ctx: &RequestCtx, upstream: &mut RequestHeader) -> Result<()> {
        let Some(span) = &ctx.span else {
            return Ok(());
        };
        let (parent, state) = traceparent(span.span_context());
        upstream.insert_header(TRACEPARENT, parent)?;
        match state {
            Some(state) => upstream.insert_header(TRACESTATE, state)?,
            None => {
                upstream.remove_header(TRACESTATE);
            }
        }
        Ok(())
    }

    /// End the request's span with its status (0: none was sent).
    pub(super) fn end_span(ctx: &mut RequestCtx, status: u16, error: Option<&str>) {
        let Some(mut span) = ctx.span.take() else {
            return;
        };
        if status > 0 {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
        }
        if status >= 500 || status == 0 {
            let error_type = match (status, error) {
                (0, Some(e)) => e.to_string(),
                (0, None) => "no_response".to_string(),
                (s, _) => s.to_string(),
            };
            span.set_attribute(KeyValue::new("error.type", error_type.clone()));
            span.set_status(Status::error(error_type));
        }
        span.end();
    }

    /// The request's trace id, when traced (for the access log).
    pub(super) fn trace_id(ctx: &RequestCtx) -> Option<String> {
        ctx.span
            .as_ref()
            .map(|s| s.span_context().trace_id().to_string())
    }

    /// Where the OpenAI API's attempt spans go.
    pub(super) fn api_trace<'a>(&'a self, ctx: &'a RequestCtx) -> Option<crate::openai::Trace<'a>> {
        Some(crate::openai::Trace {
            traces: self.traces.as_deref()?,
            parent: ctx.span.as_ref()?.span_context(),
        })
    }
}
