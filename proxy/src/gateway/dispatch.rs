//! Where a request goes: its head checked and its route found
//! ([`Gateway::route_request`]), then, for the OpenAI-compatible API, served
//! here in full ([`Gateway::serve_api`]); HTTP-pool routes go on through the
//! upstream phases.

use super::context::request_header_bytes;
use super::{Gateway, RequestCtx};
use crate::error::GatewayError;
use crate::normalize::host_of;
use crate::router::Match;
use pingora::proxy::Session;
use pingora::Result;
use std::sync::Arc;

impl Gateway {
    /// Check the request head (size, normalized path and host) and find its
    /// route. `None` when it was answered: 431, 400 (and the connection
    /// closed), 404 or 405.
    pub(super) async fn route_request(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Option<usize>> {
        let req = session.req_header();
        let size = request_header_bytes(req);
        if size > self.limits.max_header_bytes {
            let err = GatewayError::HeadersTooLarge {
                size,
                limit: self.limits.max_header_bytes,
            };
            self.respond(session, ctx, err).await?;
            return Ok(None);
        }

        if let Err(err) = crate::normalize::apply(session) {
            // The connection may hold anything after such a request: close it.
            session.set_keepalive(None);
            self.respond(session, ctx, err).await?;
            return Ok(None);
        }
        let req = session.req_header();
        let found = self.router.find(host_of(req), req.uri.path(), &req.method);
        let route = match found {
            Match::Route(i) => i,
            Match::NotFound => {
                self.respond(session, ctx, GatewayError::NoRoute).await?;
                return Ok(None);
            }
            Match::MethodNotAllowed(allowed) => {
                self.respond(session, ctx, GatewayError::MethodNotAllowed { allowed })
                    .await?;
                return Ok(None);
            }
        };
        Ok(Some(route))
    }

    /// Serve a request to the OpenAI-compatible API on `route`: its plugins
    /// (if any) see the whole body first, and the API gets the body as they
    /// left it, at the path they left.
    pub(super) async fn serve_api(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: usize,
        plugins: &[Arc<gantry_plugins::Plugin>],
    ) -> Result<()> {
        let r = self.router.route(route);
        let gantry_config::Target::Inference(pools) = &r.target else {
            unreachable!("serve_api is called for API routes");
        };
        // With plugins, they see the whole body first; the API gets it as
        // they left it, at the path they left.
        let mut prepared;
        let io: &mut dyn crate::openai::downstream::Downstream = if plugins.is_empty() {
            session
        } else {
            let Some(body) = self.request_plugins(session, ctx, route, plugins).await? else {
                return Ok(());
            };
            // The request phase is over: a long stream must not hold
            // the plugins' instances.
            ctx.plugin_contexts.clear();
            let body = body.unwrap_or_default();
            prepared = crate::openai::downstream::Prepared {
                len: body.len() as u64,
                body: Some(body),
                session,
            };
            &mut prepared
        };
        let outcome = self
            .api
            .handle(
                io,
                &r.path_prefix,
                pools,
                r.max_body_bytes,
                &ctx.request_id,
                ctx.started,
            )
            .await?;
        ctx.inference = Some(outcome);
        Ok(())
    }
}
