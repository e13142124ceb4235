//! Where a request goes: its head checked and its route found
//! ([`Gateway::route_request`]), then, for the OpenAI-compatible API, served
//! here in full ([`Gateway::serve_api`]): the API returns its answer as a
//! value, written here to the client; HTTP-pool routes go on through the
//! upstream phases.

use super::body::{client_gone, Refused};
use super::context::request_header_bytes;
use super::{Gateway, RequestCtx};
use crate::error::GatewayError;
use crate::normalize::host_of;
use crate::openai::error::ApiError;
use crate::openai::whole::STREAM_HEADERS;
use crate::openai::{ApiCall, Endpoint, Outcome, Reply, Whole};
use crate::own_headers::REQUEST_ID;
use crate::router::Match;
use crate::tenants::{
    self,
    limiter::{Denied, Limiter, Reservation},
};
use bytes::Bytes;
use gantry_config::RouteAuth;
use pingora::http::ResponseHeader;
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
        let limit = ctx.live.config.limits.max_header_bytes;
        if size > limit {
            let err = GatewayError::HeadersTooLarge { size, limit };
            self.respond(session, ctx, err).await?;
            return Ok(None);
        }

        if let Err(err) = crate::normalize::apply(session).map_err(GatewayError::InvalidTarget) {
            // The connection may hold anything after such a request: close it.
            session.set_keepalive(None);
            self.respond(session, ctx, err).await?;
            return Ok(None);
        }
        let req = session.req_header();
        let found = ctx
            .live
            .router
            .find(host_of(req), req.uri.path(), &req.method);
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

    /// On a route with `auth = "keys"`, find the request's tenant by its API
    /// key and take a reservation of the key's limits, or answer 401 (no key,
    /// unknown key), 403 (a key not allowed on the route) or 429 (no request
    /// of the minute or no concurrency slot left). `true` when it answered.
    pub(super) async fn check_key(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: usize,
    ) -> Result<bool> {
        if ctx.live.router.route(route).auth != RouteAuth::Keys {
            return Ok(false);
        }
        let live = ctx.live.clone();
        let r = live.router.route(route);
        let tenant = match self.tenants.identify(route, &session.req_header().headers) {
            Ok(tenant) => tenant,
            Err(refused) => {
                self.metrics.auth_rejected(&r.name, refused.denial());
                let err = match refused {
                    tenants::Refused::Missing => GatewayError::MissingApiKey,
                    tenants::Refused::Unknown => GatewayError::InvalidApiKey,
                    tenants::Refused::Route => GatewayError::KeyNotAllowed {
                        route: r.name.clone(),
                    },
                };
                self.respond(session, ctx, err).await?;
                return Ok(true);
            }
        };
        ctx.tenant = Some(tenant);
        let t = self.tenants.get(tenant);
        match t.admit().await {
            Ok(held) => {
                ctx.reservation = Some(held);
                Ok(false)
            }
            Err(Denied::StoreUnreachable) => {
                self.respond(session, ctx, GatewayError::KeyStoreUnreachable)
                    .await?;
                Ok(true)
            }
            Err(Denied::Limit(exceeded)) => {
                self.metrics.key_rejected(&t.name, exceeded.label());
                let err = GatewayError::RateLimited {
                    message: exceeded.message(),
                    retry_after: exceeded.retry_after_seconds(),
                };
                self.respond(session, ctx, err).await?;
                Ok(true)
            }
        }
    }

    /// The limits of the key that let the request in, if any.
    pub(super) fn limiter(&self, ctx: &RequestCtx) -> Option<&Limiter> {
        ctx.tenant.map(|i| &*self.tenants.get(i).limiter)
    }

    /// Serve a request to the OpenAI-compatible API on `route`: its plugins
    /// (if any) see the whole body first, and the API gets the body as they
    /// left it, at the path they left; without plugins the endpoint is found
    /// before the body is read. The answer is written as it comes; a client
    /// that leaves drops it, cancelling the backend's work.
    pub(super) async fn serve_api(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: usize,
        plugins: &[Arc<gantry_plugins::Plugin>],
    ) -> Result<()> {
        let live = ctx.live.clone();
        let r = live.router.route(route);
        let gantry_config::Target::Inference(pools) = &r.target else {
            unreachable!("serve_api is called for API routes");
        };
        let from_plugins = match plugins.is_empty() {
            true => None,
            false => {
                let Some(body) = self.request_plugins(session, ctx, route, plugins).await? else {
                    return Ok(());
                };
                // The request phase is over: a long stream holds only the
                // instances of plugins that asked to see the answer.
                ctx.plugin_contexts
                    .retain(|(k, _)| r.plugins[*k].stream_events);
                let body = body.unwrap_or_default();
                Some(match chosen(ctx, CHOSEN_MODEL) {
                    Some(model) => with_model(body, &model),
                    None => body,
                })
            }
        };
        let mut outcome = Outcome::default();
        let req = session.req_header();
        let content_type = req
            .headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let found = Endpoint::find(
            &req.method,
            req.uri.path(),
            &r.path_prefix,
            content_type.as_deref(),
        );
        let body = match (found, from_plugins) {
            (Err(err), _) => Err(err),
            (Ok(endpoint), Some(body)) => Ok((endpoint, body)),
            (Ok(endpoint), None) if !endpoint.takes_body() => Ok((endpoint, Bytes::new())),
            (Ok(endpoint), None) => {
                let read = self.read_body(session, ctx, r.max_body_bytes, false).await;
                match read {
                    Ok(Ok(body)) => Ok((endpoint, body)),
                    Ok(Err(refused)) => {
                        // The rest of the body may still be on its way.
                        session.set_keepalive(None);
                        Err(api_refusal(refused))
                    }
                    Err(e) => Err(ApiError::invalid_body(
                        None,
                        format!("could not read the request body: {e}"),
                    )),
                }
            }
        };
        let reply = match body {
            Err(err) => Reply::Whole(live.api.refuse(&err, &mut outcome)),
            Ok((endpoint, body)) => {
                let call = ApiCall {
                    endpoint,
                    body,
                    pools,
                    route: &r.name,
                    tenant: ctx.tenant.map(|i| self.tenants.get(i)),
                    reservation: ctx.reservation.as_ref(),
                    request_id: &ctx.request_id,
                    started: ctx.started,
                    trace: self.api_trace(ctx),
                    preferred_backend: chosen(ctx, CHOSEN_BACKEND),
                };
                let handled = tokio::select! {
                    // The work first: a client-gone check costs a read on the
                    // socket, wasted whenever the work is already done.
                    biased;
                    reply = live.api.handle(call, &mut outcome) => Some(reply),
                    _ = client_gone(session) => None,
                };
                match handled {
                    Some(reply) => reply,
                    None => {
                        live.api.client_left(&mut outcome);
                        ctx.inference = Some(outcome);
                        return Ok(());
                    }
                }
            }
        };
        let held = ctx.release_key();
        let written = if ctx.plugin_contexts.is_empty() {
            let rate = self.limiter(ctx);
            write_reply(session, reply, &ctx.request_id, rate, held).await
        } else {
            self.write_reply_through_plugins(session, ctx, route, reply, held)
                .await
        };
        ctx.inference = Some(outcome);
        written
    }
}

/// The property a routing plugin sets to pick the backend (its `ip:port`,
/// as in `inference.backends`): tried first while it takes traffic and is
/// not saturated.
const CHOSEN_BACKEND: &str = "inference.backend";
/// The property a routing plugin sets to change the request's `model`.
const CHOSEN_MODEL: &str = "inference.model";

/// What the route's plugins set `property` to, as text.
fn chosen(ctx: &RequestCtx, property: &str) -> Option<String> {
    let value = ctx.plugin_properties.as_ref()?.set_value(property)?;
    String::from_utf8(value).ok().filter(|v| !v.is_empty())
}

/// `body` (a JSON object) asking for `model` instead; left as it is when it
/// is not a JSON object (the API then answers why).
fn with_model(body: Bytes, model: &str) -> Bytes {
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Object(mut fields)) => {
            fields.insert("model".into(), model.into());
            serde_json::to_vec(&fields).map_or(body, Bytes::from)
        }
        _ => body,
    }
}

/// The API's answer to a body the reader refused.
fn api_refusal(refused: Refused) -> ApiError {
    match refused {
        Refused::TooLarge { limit } => ApiError::body_too_large(limit),
        Refused::Stalled { limit } => ApiError::body_timeout(limit),
    }
}

/// Write the API's answer: a whole one at once; a stream's events as they
/// come, until it ends or the client leaves (dropping it cancels the
/// backend's generation). `held`, the request's hold on its key's limits, is
/// given back before the last bytes are written (see
/// [`RequestCtx::release_key`]).
pub(super) async fn write_reply(
    session: &mut Session,
    reply: Reply<'_>,
    request_id: &str,
    rate: Option<&Limiter>,
    held: Option<Arc<Reservation>>,
) -> Result<()> {
    match reply {
        Reply::Whole(whole) => {
            if let Some(held) = held {
                Reservation::release(held).await;
            }
            write_whole(session, whole, request_id, rate).await
        }
        Reply::Stream(mut events) => {
            let mut resp = ResponseHeader::build(200, Some(4))?;
            for (k, v) in STREAM_HEADERS {
                resp.insert_header(k, v)?;
            }
            resp.insert_header(REQUEST_ID.wire(), events.request_id())?;
            if let Some(limiter) = rate {
                tenants::add_rate_headers(&mut resp, limiter)?;
            }
            if session
                .write_response_header(Box::new(resp), false)
                .await
                .is_err()
            {
                return Ok(());
            }
            loop {
                let next = tokio::select! {
                    // The work first: a client-gone check costs a read on the
                    // socket, wasted whenever the work is already done.
                    biased;
                    next = events.next() => next,
                    _ = client_gone(session) => return Ok(()),
                };
                let Some(bytes) = next else {
                    // The generation's own hold goes with the stream.
                    drop(events);
                    if let Some(held) = held {
                        Reservation::release(held).await;
                    }
                    return session.write_response_body(None, true).await;
                };
                if session
                    .write_response_body(Some(bytes), false)
                    .await
                    .is_err()
                {
                    // The client is gone: dropping the stream cancels it.
                    return Ok(());
                }
            }
        }
    }
}

/// A whole answer: status, `content-type`, length, request id, `Retry-After`,
/// and the key's `x-ratelimit-*` headers.
pub(super) async fn write_whole(
    session: &mut Session,
    whole: Whole,
    request_id: &str,
    rate: Option<&Limiter>,
) -> Result<()> {
    let mut resp = ResponseHeader::build(whole.status, Some(4))?;
    resp.insert_header(http::header::CONTENT_TYPE, whole.content_type)?;
    resp.insert_header(http::header::CONTENT_LENGTH, whole.body.len())?;
    resp.insert_header(REQUEST_ID.wire(), request_id)?;
    if let Some(s) = whole.retry_after {
        resp.insert_header(http::header::RETRY_AFTER, s.to_string())?;
    }
    if let Some(limiter) = rate {
        tenants::add_rate_headers(&mut resp, limiter)?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(whole.body), true).await
}
