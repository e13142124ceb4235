//! The end of every request: the access log line (target `gantry::access`),
//! the request metrics, and a failed one kept for `/status`.

use super::{Gateway, RequestCtx};
use crate::error::GatewayError;
use crate::metrics::FailedRequest;
use crate::normalize::host_of;
use pingora::proxy::Session;
use pingora::Error;

impl Gateway {
    /// Log and count a finished request.
    pub(super) fn log_request(&self, session: &Session, e: Option<&Error>, ctx: &RequestCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let route = self.route_name(ctx);
        let elapsed = ctx.started.elapsed();
        if let Some(limit) = ctx.error.as_ref().and_then(GatewayError::limit) {
            self.metrics.refused(limit);
        }
        let metrics = &ctx.live.route_metrics;
        let counted = ctx.route.unwrap_or(metrics.len() - 1);
        metrics[counted].finished(status, elapsed);
        // Built only for a failure or a logged line.
        let upstream = || match &ctx.inference {
            Some(o) => o.backend.clone().unwrap_or_default(),
            None => ctx
                .tried
                .last()
                .map(|b| b.addr.to_string())
                .unwrap_or_default(),
        };
        if status >= 500 || (status == 0 && e.is_some()) {
            self.metrics.recent_errors.record(FailedRequest {
                at_ms: crate::clock::unix_millis(),
                request_id: ctx.request_id.to_string(),
                route: route.to_string(),
                status,
                error: match (&ctx.error, e) {
                    (Some(err), _) => err.to_string(),
                    (None, Some(e)) => e.to_string(),
                    (None, None) if ctx.inference.is_some() => "the API's answer".into(),
                    (None, None) => "the upstream's answer".into(),
                },
                upstream: upstream(),
            });
        }
        let req = session.req_header();
        tracing::info!(
            target: "gantry::access",
            request_id = %ctx.request_id,
            trace_id = Self::trace_id(ctx).unwrap_or_default(),
            client = %session.client_addr().map(|a| a.to_string()).unwrap_or_default(),
            method = %req.method,
            host = host_of(req).unwrap_or(""),
            path = %req.uri.path(),
            route,
            key = ctx.tenant.map_or("", |i| self.tenants.get(i).name.as_str()),
            status,
            upstream = %upstream(),
            attempts = ctx.inference.as_ref().map_or(ctx.tried.len(), |o| o.attempts),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            error = e.map(|e| e.etype().as_str()).unwrap_or(""),
            properties = %SetProperties(ctx.plugin_properties.as_ref()),
        );
    }

    fn route_name<'c>(&self, ctx: &'c RequestCtx) -> &'c str {
        ctx.route
            .map_or("none", |i| ctx.live.router.route(i).name.as_str())
    }
}

/// The properties a request's plugins set, as `path=value` pairs (values
/// lossily as text), rendered only when the line is written.
struct SetProperties<'a>(Option<&'a gantry_plugins::Properties>);

impl std::fmt::Display for SetProperties<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(props) = self.0 else {
            return Ok(());
        };
        for (i, (path, value)) in props.set_by_plugins().iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(
                f,
                "{sep}{path}={}",
                String::from_utf8_lossy(value).escape_debug()
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::SetProperties;

    #[test]
    fn the_log_shows_what_plugins_set_escaped() {
        assert_eq!(SetProperties(None).to_string(), "");
        let props: gantry_plugins::Properties = Vec::new().into();
        assert_eq!(SetProperties(Some(&props)).to_string(), "");
        let set = [("team.name", "edge"), ("note", "a\nb")];
        // The plugins' clone shares what is set.
        let plugins = props.clone();
        for (k, v) in set {
            assert!(plugins.set(k.into(), v.into()));
        }
        assert_eq!(
            SetProperties(Some(&props)).to_string(),
            "team.name=edge note=a\\nb"
        );
    }
}
