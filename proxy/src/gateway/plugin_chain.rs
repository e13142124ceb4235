//! The route's Wasm plugins around one request: the request hooks (headers,
//! then the whole body), the response header hooks and the response body
//! hooks, last plugin first on the way back; each call counted, each failure
//! handled by the plugin's failure policy. The hooks run in the plugin host
//! (`gantry_plugins`); this file only drives them and applies what they
//! changed ([`crate::plugins`] translates headers).

use super::{Gateway, RequestCtx};
use crate::error::GatewayError;
use crate::metrics::{Hook, HookOutcome};
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;
use std::borrow::Cow;
use std::sync::Arc;

/// The longest request path a plugin request's properties hold without an
/// allocation of its own (a longer one is copied to the heap).
const INLINE_PATH_BYTES: usize = 64;

/// What `proxy_get_property` answers about one request.
struct RequestProperties {
    /// Held inline up to [`INLINE_PATH_BYTES`]: no allocation of its own.
    path: smallvec::SmallVec<[u8; INLINE_PATH_BYTES]>,
    method: http::Method,
    scheme: &'static str,
    /// Shares the request id's bytes (no copy).
    id: super::RequestId,
    source: Option<std::net::SocketAddr>,
    /// The configured name of the API key that let the request in.
    key: String,
    /// The configuration the request is served on, and its route there: the
    /// route's name, models and pools are read from it when a plugin asks.
    live: Arc<super::ConfigVersion>,
    route: usize,
}

impl RequestProperties {
    /// The route's inference pools (none on an HTTP route).
    fn pools(&self) -> impl Iterator<Item = &Arc<crate::upstream::inference::InferencePool>> {
        let indexes = match &self.live.router.route(self.route).target {
            gantry_config::Target::Inference(indexes) => indexes.as_slice(),
            _ => &[],
        };
        let all = self.live.api.pools();
        indexes.iter().map(move |&i| &all[i])
    }

    /// `route.models`: what the route's pools serve, comma-separated.
    fn models(&self) -> Vec<u8> {
        let models: Vec<&str> = self
            .pools()
            .flat_map(|p| &p.config.models)
            .map(String::as_str)
            .collect();
        models.join(",").into_bytes()
    }

    /// `inference.backends`: each of the route's pools and its backends as
    /// `/status` shows them (`address`, `serving`, `in_flight`, each model's
    /// last load).
    fn backends(&self) -> Option<Vec<u8>> {
        let pools: Vec<serde_json::Value> = self
            .pools()
            .map(|p| serde_json::json!({"pool": p.config.name, "backends": p.status()}))
            .collect();
        (!pools.is_empty()).then(|| serde_json::to_vec(&pools).expect("JSON of a status"))
    }
}

impl gantry_plugins::PropertySource for RequestProperties {
    fn property(&self, path: &str) -> Option<Cow<'_, [u8]>> {
        let text = match path {
            "request.path" => return Some(Cow::Borrowed(&self.path)),
            "request.method" => self.method.as_str(),
            "request.scheme" => self.scheme,
            "request.id" => self.id.as_str(),
            "route_name" => &self.live.router.route(self.route).name,
            "route.models" => return Some(Cow::Owned(self.models())),
            "request.key" => &self.key,
            "source.address" => return Some(Cow::Owned(self.source?.to_string().into_bytes())),
            "inference.backends" => return self.backends().map(Cow::Owned),
            _ => return None,
        };
        Some(Cow::Borrowed(text.as_bytes()))
    }
}

/// A plugin's `continue` counters for each hook.
pub(super) struct HotCounters {
    pub(super) request: prometheus::IntCounter,
    pub(super) response_headers: prometheus::IntCounter,
    pub(super) response_body: prometheus::IntCounter,
}

impl HotCounters {
    /// Per route, per plugin position: its `continue` counters.
    pub(super) fn for_routes(
        router: &crate::router::Router,
        metrics: &crate::metrics::Metrics,
    ) -> Vec<Vec<Self>> {
        (0..router.len())
            .map(|i| {
                let r = router.route(i);
                r.plugins
                    .iter()
                    .map(|p| {
                        let counter = |hook| {
                            metrics.plugin_call_counter(
                                &r.name,
                                &p.name,
                                hook,
                                HookOutcome::Continue,
                            )
                        };
                        HotCounters {
                            request: counter(Hook::Request),
                            response_headers: counter(Hook::ResponseHeaders),
                            response_body: counter(Hook::ResponseBody),
                        }
                    })
                    .collect()
            })
            .collect()
    }
}

impl Gateway {
    /// Count a plugin call and, on failure, log it and count the limit reached.
    fn plugin_outcome(
        &self,
        live: &super::ConfigVersion,
        route: usize,
        plugin: &str,
        hook: Hook,
        outcome: HookOutcome,
    ) {
        let route = live.router.route(route).name.as_str();
        self.metrics.plugin_call(route, plugin, hook, outcome);
    }
    fn plugin_failed(
        &self,
        route: usize,
        ctx: &RequestCtx,
        hook: Hook,
        err: &gantry_plugins::PluginError,
    ) -> String {
        let name = err.plugin().to_string();
        let outcome = match err {
            gantry_plugins::PluginError::Unhealthy { .. } => HookOutcome::Unhealthy,
            gantry_plugins::PluginError::Busy { .. } => HookOutcome::Busy,
            _ => HookOutcome::Error,
        };
        if let Some(limit) = err.limit() {
            self.metrics.plugin_limit_hit(&name, limit, 1);
        }
        self.plugin_outcome(&ctx.live, route, &name, hook, outcome);
        if outcome != HookOutcome::Error {
            // Said once when it was marked unhealthy; counted per request.
            tracing::debug!(request_id = %ctx.request_id, route = %ctx.live.router.route(route).name, plugin = %name, error = %err, "plugin skipped while unhealthy");
        } else {
            tracing::warn!(request_id = %ctx.request_id, route = %ctx.live.router.route(route).name, plugin = %name, error = %err, "plugin failed");
        }
        name
    }
    /// Run the route's plugins on the request: read the body whole (up to the
    /// route's max_body_bytes), then each plugin's headers hook and its body hook
    /// with the whole body (when there is one), with the HTTP calls it makes
    /// performed in between. `Ok(None)`: answered (by a plugin, a failure or
    /// 413); `Ok(Some(body))`: go on with the body as the plugins left it.
    pub(super) async fn request_plugins(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: usize,
        plugins: &[Arc<gantry_plugins::Plugin>],
    ) -> Result<Option<Option<Bytes>>> {
        // A body no plugin could be handed in one host call is a 413, never a
        // plugin trap a client could repeat to make the plugin unhealthy.
        let limit = plugins
            .iter()
            .map(|p| p.limits.bytes_per_host_call as u64)
            .fold(ctx.live.router.route(route).max_body_bytes, u64::min);
        let mut body = match session.as_mut().is_body_empty() {
            true => None,
            false => match self.read_body(session, ctx, limit, true).await? {
                Ok(body) => Some(Vec::from(body)),
                Err(refused) => {
                    self.respond(session, ctx, refused.into()).await?;
                    return Ok(None);
                }
            },
        };
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let scheme = if tls { "https" } else { "http" };
        let props = self.request_properties(session, ctx, route, scheme);
        ctx.plugin_properties = Some(props.clone());
        let live = ctx.live.clone();
        for (k, plugin) in plugins.iter().enumerate() {
            let mut pairs = crate::plugins::request_pairs(session.req_header(), scheme);
            let started = self.hook_started(ctx);
            let result = match plugin.start_request(props.clone()) {
                Ok(mut hc) => {
                    let request_id = ctx.request_id.as_str();
                    let callouts = super::plugin_calls::PluginCallouts {
                        gateway: self,
                        live: &live,
                        plugin,
                        request_id,
                    };
                    // The body is read: a client that leaves now cancels the
                    // plugin's calls (an in-process inference call drops its
                    // backend stream).
                    let ran = {
                        let run = hc.on_request(&mut pairs, body.as_mut(), callouts);
                        let gone = super::body::client_gone(session);
                        tokio::select! {
                            // The work first: a client-gone check costs a read on the
                            // socket, wasted whenever the work is already done.
                            biased;
                            r = run => Some(r),
                            _ = gone => None,
                        }
                    };
                    let Some(ran) = ran else {
                        tracing::debug!(request_id = %ctx.request_id, plugin = %plugin.name, "client left during the plugin's request phase; its calls are cancelled");
                        return Ok(None);
                    };
                    ran.map(|d| (hc, d))
                }
                Err(e) => Err(e),
            };
            let outcome = decided(result.as_ref().map(|(_, d)| d));
            self.hook_span(ctx, started, &plugin.name, Hook::Request, outcome);
            match result {
                Ok((hc, gantry_plugins::Decision::Close)) => {
                    self.plugin_outcome(
                        &ctx.live,
                        route,
                        &plugin.name,
                        Hook::Request,
                        HookOutcome::Close,
                    );
                    drop(hc);
                    return Err(closed_by(&plugin.name));
                }
                Ok((hc, gantry_plugins::Decision::Respond(local))) => {
                    self.plugin_outcome(
                        &ctx.live,
                        route,
                        &plugin.name,
                        Hook::Request,
                        HookOutcome::Respond,
                    );
                    drop(hc);
                    self.respond_locally(session, ctx, local).await?;
                    return Ok(None);
                }
                Ok((mut hc, _)) => {
                    ctx.live.hot[route][k].request.inc();
                    if hc.headers_changed().0 {
                        let before = crate::plugins::request_pairs(session.req_header(), scheme);
                        crate::plugins::apply_request_changes(
                            session.req_header_mut(),
                            &before,
                            &pairs,
                        )?;
                        crate::plugins::recycle(before);
                    }
                    hc.keep_request_headers(pairs);
                    ctx.plugin_contexts.push((k, hc));
                }
                Err(e) => {
                    let name = self.plugin_failed(route, ctx, Hook::Request, &e);
                    if let gantry_plugins::PluginError::Busy {
                        max_instances,
                        engine_full,
                        ..
                    } = e
                    {
                        // Not the plugin's failure: never skipped, whatever its
                        // failure policy (an auth plugin must not be bypassed).
                        let err = GatewayError::PluginBusy {
                            plugin: name,
                            max_instances,
                            engine_full,
                        };
                        self.respond(session, ctx, err).await?;
                        return Ok(None);
                    }
                    if crate::plugins::fails_closed(plugin) {
                        self.respond(session, ctx, GatewayError::PluginFailed { plugin: name })
                            .await?;
                        return Ok(None);
                    }
                }
            }
        }
        Ok(Some(body.map(Bytes::from)))
    }
    /// The properties a plugin may read (`proxy_get_property`) for this
    /// request: the few values they come from, rendered only when read.
    fn request_properties(
        &self,
        session: &Session,
        ctx: &RequestCtx,
        route: usize,
        scheme: &'static str,
    ) -> gantry_plugins::Properties {
        let req = session.req_header();
        Arc::new(RequestProperties {
            live: ctx.live.clone(),
            route,
            key: ctx
                .tenant
                .map(|i| self.tenants.get(i).name.clone())
                .unwrap_or_default(),
            path: req.uri.path().as_bytes().into(),
            method: req.method.clone(),
            scheme,
            id: ctx.request_id.clone(),
            source: session.client_addr().and_then(|a| a.as_inet()).copied(),
        })
        .into()
    }

    /// Run the plugins that saw the request on the response headers, last first.
    pub(super) fn response_plugins(
        &self,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
        route: usize,
    ) -> Result<()> {
        let mut contexts = std::mem::take(&mut ctx.plugin_contexts);
        for (k, hc) in contexts.iter_mut().rev() {
            let plugin = hc.plugin().clone();
            let mut pairs = crate::plugins::response_pairs(resp);
            let started = self.hook_started(ctx);
            let result = hc.on_response_headers(&mut pairs, false);
            let outcome = decided(result.as_ref());
            self.hook_span(ctx, started, &plugin.name, Hook::ResponseHeaders, outcome);
            match result {
                // A response cannot wait for a plugin: pausing here continues.
                Ok(gantry_plugins::Decision::Continue | gantry_plugins::Decision::Pause) => {
                    ctx.live.hot[route][*k].response_headers.inc();
                    if hc.headers_changed().1 {
                        let before = crate::plugins::response_pairs(resp);
                        crate::plugins::apply_response_changes(resp, &before, &pairs)?;
                        crate::plugins::recycle(before);
                    }
                    crate::plugins::recycle(pairs);
                }
                Ok(gantry_plugins::Decision::Close) => {
                    self.plugin_outcome(
                        &ctx.live,
                        route,
                        &plugin.name,
                        Hook::ResponseHeaders,
                        HookOutcome::Close,
                    );
                    ctx.plugin_contexts = contexts;
                    return Err(closed_by(&plugin.name));
                }
                Ok(gantry_plugins::Decision::Respond(local)) => {
                    self.plugin_outcome(
                        &ctx.live,
                        route,
                        &plugin.name,
                        Hook::ResponseHeaders,
                        HookOutcome::Respond,
                    );
                    let mut headers = local.headers;
                    headers.insert(0, (":status".into(), local.status.to_string()));
                    crate::plugins::apply_response(resp, headers)?;
                    self.replace_response_body(resp, ctx, Bytes::from(local.body))?;
                    break;
                }
                Err(e) => {
                    let name = self.plugin_failed(route, ctx, Hook::ResponseHeaders, &e);
                    if crate::plugins::fails_closed(&plugin) {
                        let err = GatewayError::PluginFailed { plugin: name };
                        let pairs = vec![
                            (":status".to_string(), err.status().to_string()),
                            ("content-type".to_string(), "application/json".to_string()),
                        ];
                        crate::plugins::apply_response(resp, pairs)?;
                        self.replace_response_body(resp, ctx, Bytes::from(err.body()))?;
                        ctx.error = Some(err);
                        break;
                    }
                }
            }
        }
        ctx.plugin_contexts = contexts;
        Ok(())
    }
    /// Run the response body through the plugins that saw the request, last
    /// first, chunk by chunk. A plugin that pauses before the end holds what it
    /// has (up to its `bytes_per_host_call`) and gets it again with the next
    /// chunk; what it lets through goes on to the next plugin. The response's
    /// headers are out: a failing plugin that fails closed ends the response
    /// (the connection is closed), one that fails open is skipped.
    pub(super) fn response_body_plugins(
        &self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let route = ctx.route.expect("route chosen");
        let n = ctx.plugin_contexts.len();
        if body.as_ref().is_none_or(|b| b.is_empty()) && !end_of_stream {
            return Ok(());
        }
        // The chunk goes from plugin to plugin as shared bytes: copied only when
        // a plugin holds or changes it.
        let mut data = body.take().unwrap_or_default();
        for i in (0..n).rev() {
            let held = ctx
                .response_held
                .get_mut(i)
                .map(std::mem::take)
                .unwrap_or_default();
            let arrived = std::mem::take(&mut data);
            let mut chunk = match held.is_empty() {
                true => arrived,
                false => [held.as_slice(), &arrived].concat().into(),
            };
            let (k, hc) = &mut ctx.plugin_contexts[i];
            let k = *k;
            let plugin = hc.plugin().clone();
            let keep =
                (plugin.failure == gantry_plugins::FailurePolicy::Open).then(|| chunk.clone());
            let result = hc.on_response_body(&mut chunk, end_of_stream);
            let failure = match result {
                Ok(gantry_plugins::Decision::Pause)
                    if !end_of_stream && chunk.len() > plugin.limits.bytes_per_host_call =>
                {
                    self.metrics.plugin_limit_hit(
                        &plugin.name,
                        gantry_plugins::Limit::BytesPerHostCall,
                        1,
                    );
                    self.plugin_outcome(
                        &ctx.live,
                        route,
                        &plugin.name,
                        Hook::ResponseBody,
                        HookOutcome::Error,
                    );
                    Some(format!(
                        "held more than {} bytes of response body (bytes_per_host_call)",
                        plugin.limits.bytes_per_host_call
                    ))
                }
                Ok(gantry_plugins::Decision::Pause) if !end_of_stream => {
                    self.plugin_outcome(
                        &ctx.live,
                        route,
                        &plugin.name,
                        Hook::ResponseBody,
                        HookOutcome::Pause,
                    );
                    if ctx.response_held.len() < n {
                        ctx.response_held.resize(n, Vec::new());
                    }
                    ctx.response_held[i] = Vec::from(chunk);
                    continue;
                }
                Ok(gantry_plugins::Decision::Close) => {
                    self.plugin_outcome(
                        &ctx.live,
                        route,
                        &plugin.name,
                        Hook::ResponseBody,
                        HookOutcome::Close,
                    );
                    return Err(closed_by(&plugin.name));
                }
                Ok(gantry_plugins::Decision::Respond(_)) => {
                    self.plugin_outcome(
                        &ctx.live,
                        route,
                        &plugin.name,
                        Hook::ResponseBody,
                        HookOutcome::Error,
                    );
                    Some("sent a local response after the response headers went out".into())
                }
                Ok(_) => {
                    // Counted once per response, not per chunk.
                    if end_of_stream {
                        ctx.live.hot[route][k].response_body.inc();
                    }
                    data = chunk;
                    continue;
                }
                Err(e) => {
                    self.plugin_failed(route, ctx, Hook::ResponseBody, &e);
                    Some(e.to_string())
                }
            };
            let why = failure.expect("every other arm continues");
            tracing::warn!(request_id = %ctx.request_id, plugin = %plugin.name, error = %why, "plugin failed on the response body");
            match keep {
                Some(original) => data = original,
                None => {
                    let err = GatewayError::PluginFailed {
                        plugin: plugin.name.clone(),
                    };
                    return Err(ctx.fail(err));
                }
            }
        }
        *body = (!data.is_empty()).then_some(data);
        Ok(())
    }
}

/// A hook call's outcome, for its span.
fn decided<E>(result: std::result::Result<&gantry_plugins::Decision, E>) -> &'static str {
    match result {
        Ok(gantry_plugins::Decision::Continue) => HookOutcome::Continue.as_str(),
        Ok(gantry_plugins::Decision::Pause) => HookOutcome::Pause.as_str(),
        Ok(gantry_plugins::Decision::Respond(_)) => HookOutcome::Respond.as_str(),
        Ok(gantry_plugins::Decision::Close) => HookOutcome::Close.as_str(),
        Err(_) => HookOutcome::Error.as_str(),
    }
}

/// The error that ends an exchange a plugin closed (`proxy_close_stream`):
/// the client's side, so nothing is answered and the connection goes.
pub(super) fn closed_by(plugin: &str) -> Box<pingora::Error> {
    pingora::Error::create(
        pingora::ErrorType::ConnectionClosed,
        pingora::ErrorSource::Downstream,
        Some(format!("plugin `{plugin}` closed the stream").into()),
        None,
    )
}
