//! The gateway as Pingora phases. Each phase does one job; see `docs/PHASES.md`.
//!
//! | phase                    | job                                                     |
//! |--------------------------|---------------------------------------------------------|
//! | `early_request_filter`   | client timeouts, keep-alive                             |
//! | `request_filter`         | request id, header limit, route match, body limit      |
//! | `upstream_peer`          | pick a healthy endpoint of the route's pool             |
//! | `upstream_request_filter`| prefix strip, header rewrite, forwarding headers        |
//! | `request_body_filter`    | enforce the body limit on streamed (chunked) bodies     |
//! | `fail_to_connect`        | retry idempotent requests on another endpoint           |
//! | `response_filter`        | response header rewrite, echo request id, drain         |
//! | `fail_to_proxy`          | map any failure to the error table, JSON body           |
//! | `logging`                | access log and metrics                                  |

use crate::error::GatewayError;
use crate::inference::Inference;
use crate::metrics::Metrics;
use crate::rewrite::Rewrite;
use crate::router::{self, Match, Router};
use crate::upstream::Pool;
use async_trait::async_trait;
use bytes::Bytes;
use gantry_config::Limits;
use http::header::{HeaderValue, CONTENT_LENGTH, HOST};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::lb::Backend;
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, Result};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Notify;

/// Request id header, read from the client when valid and generated otherwise.
pub const REQUEST_ID: &str = "x-request-id";
/// Longest client-supplied request id kept as is.
const MAX_REQUEST_ID_LEN: usize = 128;
/// Bodies of unknown length (chunked) on routes whose limit is at most this are read
/// whole before the upstream is contacted, so an oversized one never reaches it.
/// Equal to Pingora's retry buffer, which replays the read body to the upstream.
const PREREAD_MAX_BYTES: u64 = 64 * 1024;

/// Process-wide state the phases and the shutdown logic share.
#[derive(Default)]
pub struct Lifecycle {
    draining: AtomicBool,
    inflight: AtomicUsize,
    idle: Notify,
}

impl Lifecycle {
    /// Stop taking new work: `/readyz` fails and responses close their connection.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Requests in progress.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }

    /// Resolves once no request is in progress.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.inflight() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle")
            .field("draining", &self.is_draining())
            .field("inflight", &self.inflight())
            .finish()
    }
}

/// Counts a request as in flight for as long as it lives.
pub struct InflightGuard(Arc<Lifecycle>);

impl InflightGuard {
    fn new(lifecycle: &Arc<Lifecycle>) -> Self {
        lifecycle.inflight.fetch_add(1, Ordering::SeqCst);
        InflightGuard(lifecycle.clone())
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if self.0.inflight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The gateway's `ProxyHttp` implementation.
pub struct Gateway {
    router: Router,
    /// Per route, by index: (request rewrite, response rewrite).
    rewrites: Vec<(Rewrite, Rewrite)>,
    pools: Vec<Arc<Pool>>,
    limits: Limits,
    metrics: Arc<Metrics>,
    lifecycle: Arc<Lifecycle>,
    inference: Arc<Inference>,
    /// Per route: its Wasm plugins, in order (swapped on hot reload).
    plugins: Arc<crate::plugins::Plugins>,
    /// Connections for plugins' `proxy_http_call`s to HTTP pools.
    connector: pingora::connectors::http::Connector,
    /// Per route and plugin position: the call counters every request moves,
    /// resolved once (plugin names survive hot reloads).
    hot: Vec<Vec<HotCounters>>,
    /// Peers whose forwarding headers are believed (`server.trusted_proxies`).
    trusted_proxies: Vec<ipnet::IpNet>,
}

/// A plugin's `continue` counters for each hook.
struct HotCounters {
    request: prometheus::IntCounter,
    response_headers: prometheus::IntCounter,
    response_body: prometheus::IntCounter,
}

/// Per-request state carried through the phases.
pub struct RequestCtx {
    started: Instant,
    request_id: String,
    route: Option<usize>,
    tried: Vec<Backend>,
    error: Option<GatewayError>,
    body_bytes: u64,
    /// The whole body was read (and counted) in `request_filter`.
    body_preread: bool,
    /// The inference backend that answered (OpenAI-compatible API routes).
    inference: Option<crate::inference::Outcome>,
    /// HTTP contexts of the route's plugins that let the request through, for the
    /// response phase.
    plugin_contexts: Vec<(usize, gantry_plugins::HttpContext)>,
    /// A body that replaces the upstream's (a plugin answered in the response phase).
    replace_body: Option<Bytes>,
    /// The request body as the route's plugins left it, sent upstream instead of
    /// the client's (which was read whole for them).
    request_body: Option<Bytes>,
    /// Per plugin context: response body it paused on (held until it continues).
    response_held: Vec<Vec<u8>>,
    _inflight: InflightGuard,
}

impl RequestCtx {
    /// Record `err` as this request's outcome and turn it into a phase error.
    fn fail(&mut self, err: GatewayError) -> Box<Error> {
        let e = err.clone().into_pingora();
        self.error = Some(err);
        e
    }
}

impl Gateway {
    /// Assemble the gateway from its parts.
    pub fn new(
        router: Router,
        pools: Vec<Arc<Pool>>,
        limits: Limits,
        metrics: Arc<Metrics>,
        lifecycle: Arc<Lifecycle>,
        inference: Arc<Inference>,
        plugins: Arc<crate::plugins::Plugins>,
    ) -> Self {
        let rewrites = (0..router.len())
            .map(|i| {
                let r = router.route(i);
                (
                    Rewrite::new(&r.request_headers),
                    Rewrite::new(&r.response_headers),
                )
            })
            .collect();
        let hot = (0..router.len())
            .map(|i| {
                let r = router.route(i);
                r.plugins
                    .iter()
                    .map(|p| {
                        let counter = |hook: &str| {
                            metrics
                                .plugin_calls
                                .with_label_values(&[&r.name, &p.name, hook, "continue"])
                        };
                        HotCounters {
                            request: counter("request"),
                            response_headers: counter("response_headers"),
                            response_body: counter("response_body"),
                        }
                    })
                    .collect()
            })
            .collect();
        Gateway {
            router,
            rewrites,
            pools,
            limits,
            metrics,
            lifecycle,
            inference,
            plugins,
            connector: pingora::connectors::http::Connector::new(None),
            hot,
            trusted_proxies: Vec::new(),
        }
    }

    /// Believe the forwarding headers of peers in these networks.
    pub fn with_trusted_proxies(mut self, networks: Vec<ipnet::IpNet>) -> Self {
        self.trusted_proxies = networks;
        self
    }

    /// Count a plugin call and, on failure, log it and count the limit reached.
    fn plugin_outcome(&self, route: usize, plugin: &str, hook: &str, outcome: &str) {
        let route = self.router.route(route).name.as_str();
        self.metrics
            .plugin_calls
            .with_label_values(&[route, plugin, hook, outcome])
            .inc();
    }

    fn plugin_failed(
        &self,
        route: usize,
        ctx: &RequestCtx,
        hook: &str,
        err: &gantry_plugins::PluginError,
    ) -> String {
        let (name, limit) = match err {
            gantry_plugins::PluginError::Trap { plugin, limit, .. } => (plugin.clone(), *limit),
            gantry_plugins::PluginError::Busy { plugin, .. } => (plugin.clone(), Some("instances")),
            gantry_plugins::PluginError::TooLarge { plugin, .. }
            | gantry_plugins::PluginError::CompileTimeout { plugin, .. }
            | gantry_plugins::PluginError::Invalid { plugin, .. }
            | gantry_plugins::PluginError::Unhealthy { plugin, .. } => (plugin.clone(), None),
        };
        let outcome = match err {
            gantry_plugins::PluginError::Unhealthy { .. } => "unhealthy",
            gantry_plugins::PluginError::Busy { .. } => "busy",
            _ => "error",
        };
        if let Some(limit) = limit {
            self.metrics
                .plugin_limit_hits
                .with_label_values(&[&name, limit])
                .inc();
        }
        self.plugin_outcome(route, &name, hook, outcome);
        if outcome == "unhealthy" || outcome == "busy" {
            // Said once when it was marked unhealthy; counted per request.
            tracing::debug!(request_id = %ctx.request_id, route = %self.router.route(route).name, plugin = %name, error = %err, "plugin skipped while unhealthy");
        } else {
            tracing::warn!(request_id = %ctx.request_id, route = %self.router.route(route).name, plugin = %name, error = %err, "plugin failed");
        }
        name
    }

    /// Run the route's plugins on the request: read the body whole (up to the
    /// route's max_body_bytes), then each plugin's headers hook and its body hook
    /// with the whole body (when there is one), with the HTTP calls it makes
    /// performed in between. `Ok(None)`: answered (by a plugin, a failure or
    /// 413); `Ok(Some(body))`: go on with the body as the plugins left it.
    async fn request_plugins(
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
            .fold(self.router.route(route).max_body_bytes, u64::min);
        let Some(mut body) = self.read_whole_body(session, ctx, limit).await? else {
            return Ok(None);
        };
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let scheme = if tls { "https" } else { "http" };
        let req = session.req_header();
        let mut props = vec![
            (
                "request.path".to_string(),
                req.uri.path().as_bytes().to_vec(),
            ),
            (
                "request.method".to_string(),
                req.method.as_str().as_bytes().to_vec(),
            ),
            ("request.scheme".to_string(), scheme.as_bytes().to_vec()),
            ("request.id".to_string(), ctx.request_id.as_bytes().to_vec()),
            (
                "route_name".to_string(),
                self.router.route(route).name.as_bytes().to_vec(),
            ),
        ];
        if let Some(addr) = session.client_addr().and_then(|a| a.as_inet()) {
            props.push(("source.address".to_string(), addr.to_string().into_bytes()));
        }
        let props: Arc<[(String, Vec<u8>)]> = props.into();
        for (k, plugin) in plugins.iter().enumerate() {
            let before = crate::plugins::request_pairs(session.req_header(), scheme);
            let mut pairs = before.clone();
            let result = match plugin.start_request(props.clone()) {
                Ok(mut hc) => {
                    let request_id = ctx.request_id.as_str();
                    let perform = |call| self.http_call(call, plugin, request_id);
                    // The body is read: a client that leaves now cancels the
                    // plugin's calls (an in-process inference call drops its
                    // backend stream).
                    let ran = {
                        let run = hc.on_request(&mut pairs, body.as_mut(), perform);
                        let gone = crate::inference::downstream::Downstream::gone(session);
                        tokio::select! {
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
            match result {
                Ok((hc, gantry_plugins::Decision::Respond(local))) => {
                    self.plugin_outcome(route, &plugin.name, "request", "respond");
                    drop(hc);
                    let mut resp =
                        ResponseHeader::build(local.status, Some(local.headers.len() + 2))?;
                    for (k, v) in local.headers {
                        resp.append_header(k, v)?;
                    }
                    resp.insert_header(CONTENT_LENGTH, local.body.len())?;
                    resp.insert_header(REQUEST_ID, &ctx.request_id)?;
                    session.write_response_header(Box::new(resp), false).await?;
                    session
                        .write_response_body(Some(Bytes::from(local.body)), true)
                        .await?;
                    return Ok(None);
                }
                Ok((mut hc, _)) => {
                    self.hot[route][k].request.inc();
                    crate::plugins::apply_request_changes(
                        session.req_header_mut(),
                        &before,
                        &pairs,
                    )?;
                    hc.keep_request_headers(pairs);
                    ctx.plugin_contexts.push((k, hc));
                }
                Err(e) => {
                    let name = self.plugin_failed(route, ctx, "request", &e);
                    if let gantry_plugins::PluginError::Busy { max_instances, .. } = e {
                        // Not the plugin's failure: never skipped, whatever its
                        // failure policy (an auth plugin must not be bypassed).
                        let err = GatewayError::PluginBusy {
                            plugin: name,
                            max_instances,
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

    /// Perform a plugin's `proxy_http_call`: to an inference pool in process (the
    /// OpenAI-compatible API, paths under `/v1`), to an HTTP pool over the
    /// network. `None` when it fails or outlasts its timeout.
    async fn http_call(
        &self,
        mut call: gantry_plugins::HttpCall,
        plugin: &gantry_plugins::Plugin,
        request_id: &str,
    ) -> Option<gantry_plugins::HttpCallResponse> {
        let body = Bytes::from(std::mem::take(&mut call.body));
        let header = |name: &str| {
            call.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let method = header(":method").unwrap_or_else(|| "GET".into());
        let path = header(":path").unwrap_or_else(|| "/".into());
        let method = http::Method::from_bytes(method.as_bytes()).ok()?;
        let limit = call.max_response_bytes;
        let work = async {
            if let Some(pool) = self.inference.pool_index(&call.upstream) {
                let (status, headers, body) = self
                    .inference
                    .call(
                        pool,
                        method,
                        &path,
                        header("content-type"),
                        body,
                        request_id,
                    )
                    .await;
                let mut pairs = vec![(":status".to_string(), status.to_string())];
                pairs.extend(headers);
                return Ok((pairs, body));
            }
            match self.pools.iter().find(|p| p.config.name == call.upstream) {
                Some(pool) => {
                    self.pool_call(pool, &call.headers, body, method, &path, limit)
                        .await
                }
                None => Err(format!("no pool named `{}`", call.upstream)),
            }
        };
        // The host gave it the plugin's max_http_call_timeout_ms when it asked
        // for none or for more.
        let timeout = call.timeout;
        let outcome = match tokio::time::timeout(timeout, work).await {
            Err(_) => Err(format!("no answer within {timeout:?}")),
            Ok(Ok((_, body))) if body.len() > limit => {
                self.metrics
                    .plugin_limit_hits
                    .with_label_values(&[&plugin.name, "bytes_per_host_call"])
                    .inc();
                Err(format!(
                    "the answer is over {limit} bytes (bytes_per_host_call)"
                ))
            }
            Ok(r) => r,
        };
        let result = if outcome.is_ok() { "ok" } else { "failed" };
        self.metrics
            .plugin_http_calls
            .with_label_values(&[&plugin.name, &call.upstream, result])
            .inc();
        match outcome {
            Ok((headers, body)) => Some(gantry_plugins::HttpCallResponse { headers, body }),
            Err(why) => {
                tracing::warn!(request_id, plugin = %plugin.name, upstream = %call.upstream, path, error = %why, "plugin http call failed");
                None
            }
        }
    }

    /// One HTTP request to an endpoint of an HTTP pool, for a plugin.
    async fn pool_call(
        &self,
        pool: &Pool,
        headers: &[(String, String)],
        body: Bytes,
        method: http::Method,
        path: &str,
        limit: usize,
    ) -> std::result::Result<(Vec<(String, String)>, Vec<u8>), String> {
        let backend = pool
            .pick(b"", &[])
            .ok_or_else(|| "no healthy endpoint".to_string())?;
        let peer = pool.peer(&backend);
        let (mut http, _reused) = self
            .connector
            .get_http_session(&*peer)
            .await
            .map_err(|e| format!("connecting to {}: {e}", backend.addr))?;
        let mut req = RequestHeader::build(method, path.as_bytes(), Some(headers.len()))
            .map_err(|e| e.to_string())?;
        for (k, v) in headers {
            match k.as_str() {
                ":authority" => req.insert_header(HOST, v.as_str()),
                n if n.starts_with(':') => Ok(()),
                _ => req.append_header(k.clone(), v.as_str()).map(|_| ()),
            }
            .map_err(|e| e.to_string())?;
        }
        req.insert_header(CONTENT_LENGTH, body.len())
            .map_err(|e| e.to_string())?;
        let io = async {
            http.write_request_header(Box::new(req)).await?;
            if !body.is_empty() {
                http.write_request_body(body, true).await?;
            }
            http.finish_request_body().await?;
            http.read_response_header().await?;
            let mut body = Vec::new();
            while let Some(chunk) = http.read_response_body().await? {
                body.extend_from_slice(&chunk);
                if body.len() > limit {
                    break;
                }
            }
            Ok::<_, Box<Error>>(body)
        };
        let body = io.await.map_err(|e| format!("{}: {e}", backend.addr))?;
        let resp = http
            .response_header()
            .ok_or_else(|| "no response header".to_string())?;
        let headers = crate::plugins::response_pairs(resp);
        if body.len() <= limit {
            self.connector
                .release_http_session(http, &*peer, None)
                .await;
        }
        Ok((headers, body))
    }

    /// Run the plugins that saw the request on the response headers, last first.
    fn response_plugins(
        &self,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
        route: usize,
    ) -> Result<()> {
        let mut contexts = std::mem::take(&mut ctx.plugin_contexts);
        for (k, hc) in contexts.iter_mut().rev() {
            let plugin = hc.plugin().clone();
            let before = crate::plugins::response_pairs(resp);
            let mut pairs = before.clone();
            match hc.on_response_headers(&mut pairs, false) {
                // A response cannot wait for a plugin: pausing here continues.
                Ok(gantry_plugins::Decision::Continue | gantry_plugins::Decision::Pause) => {
                    self.hot[route][*k].response_headers.inc();
                    crate::plugins::apply_response_changes(resp, &before, pairs)?;
                }
                Ok(gantry_plugins::Decision::Respond(local)) => {
                    self.plugin_outcome(route, &plugin.name, "response_headers", "respond");
                    let mut headers = local.headers;
                    headers.insert(0, (":status".into(), local.status.to_string()));
                    crate::plugins::apply_response(resp, headers)?;
                    self.replace_response_body(resp, ctx, Bytes::from(local.body))?;
                    break;
                }
                Err(e) => {
                    let name = self.plugin_failed(route, ctx, "response_headers", &e);
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
    fn response_body_plugins(
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
        ctx.response_held.resize(n, Vec::new());
        let mut data = body.take().map(|b| b.to_vec()).unwrap_or_default();
        for i in (0..n).rev() {
            let mut chunk = std::mem::take(&mut ctx.response_held[i]);
            chunk.append(&mut data);
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
                    self.metrics
                        .plugin_limit_hits
                        .with_label_values(&[&plugin.name, "bytes_per_host_call"])
                        .inc();
                    self.plugin_outcome(route, &plugin.name, "response_body", "error");
                    Some(format!(
                        "held more than {} bytes of response body (bytes_per_host_call)",
                        plugin.limits.bytes_per_host_call
                    ))
                }
                Ok(gantry_plugins::Decision::Pause) if !end_of_stream => {
                    self.plugin_outcome(route, &plugin.name, "response_body", "pause");
                    ctx.response_held[i] = chunk;
                    continue;
                }
                Ok(gantry_plugins::Decision::Respond(_)) => {
                    self.plugin_outcome(route, &plugin.name, "response_body", "error");
                    Some("sent a local response after the response headers went out".into())
                }
                Ok(_) => {
                    // Counted once per response, not per chunk.
                    if end_of_stream {
                        self.hot[route][k].response_body.inc();
                    }
                    data = chunk;
                    continue;
                }
                Err(e) => {
                    self.plugin_failed(route, ctx, "response_body", &e);
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
        *body = (!data.is_empty()).then(|| Bytes::from(data));
        Ok(())
    }

    fn replace_response_body(
        &self,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
        body: Bytes,
    ) -> Result<()> {
        resp.remove_header(&http::header::TRANSFER_ENCODING);
        resp.insert_header(CONTENT_LENGTH, body.len())?;
        ctx.replace_body = Some(body);
        Ok(())
    }

    /// The next request body chunk, waiting at most `client_read_timeout_ms`
    /// for it (Pingora bounds HTTP/1 body reads itself, not HTTP/2 ones); a
    /// stalled body is answered 408 and its connection closed.
    async fn body_chunk(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<Chunk> {
        let limit = self.limits.client_read_timeout;
        match tokio::time::timeout(limit, session.read_request_body()).await {
            Ok(Ok(Some(data))) => Ok(Chunk::Data(data)),
            Ok(Ok(None)) => Ok(Chunk::End),
            // A malformed body (a bad chunk size) is the client's fault: a 400.
            Ok(Err(e)) => Err(e.into_down()),
            Err(_) => {
                session.set_keepalive(None);
                self.respond(session, ctx, GatewayError::BodyTimeout { limit })
                    .await?;
                Ok(Chunk::Answered)
            }
        }
    }

    /// Read the request body whole (kept for a replay to the upstream), refusing
    /// it past `limit`: `Ok(None)` when answered with 413, `Some(None)` when the
    /// request has no body.
    async fn read_whole_body(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        limit: u64,
    ) -> Result<Option<Option<Vec<u8>>>> {
        if session.as_mut().is_body_empty() {
            return Ok(Some(None));
        }
        let declared = session
            .req_header()
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit) {
            self.respond(session, ctx, GatewayError::BodyTooLarge { limit })
                .await?;
            return Ok(None);
        }
        session.as_mut().enable_retry_buffering();
        let mut body = Vec::new();
        loop {
            let chunk = match self.body_chunk(session, ctx).await? {
                Chunk::Data(chunk) => chunk,
                Chunk::End => break,
                Chunk::Answered => return Ok(None),
            };
            ctx.body_bytes += chunk.len() as u64;
            if ctx.body_bytes > limit {
                self.respond(session, ctx, GatewayError::BodyTooLarge { limit })
                    .await?;
                return Ok(None);
            }
            body.extend_from_slice(&chunk);
        }
        ctx.body_preread = true;
        Ok(Some(Some(body)))
    }

    fn pool_of(&self, route: usize) -> &Arc<Pool> {
        match self.router.route(route).target {
            gantry_config::Target::Pool(i) => &self.pools[i],
            _ => unreachable!("only HTTP-pool routes reach the upstream phases"),
        }
    }

    fn route_name(&self, ctx: &RequestCtx) -> &str {
        ctx.route
            .map_or("none", |i| self.router.route(i).name.as_str())
    }

    /// Answer locally with the error's JSON body.
    async fn respond(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        err: GatewayError,
    ) -> Result<()> {
        let body = err.body();
        let mut resp = ResponseHeader::build(err.status(), Some(4))?;
        resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        resp.insert_header(CONTENT_LENGTH, body.len())?;
        resp.insert_header(REQUEST_ID, &ctx.request_id)?;
        if let GatewayError::MethodNotAllowed { allowed } = &err {
            resp.insert_header(http::header::ALLOW, allowed.join(", "))?;
        }
        if err.status() == 413 || err.status() == 431 || self.lifecycle.is_draining() {
            // The rest of an oversized request may still be in flight: don't reuse.
            session.set_keepalive(None);
        }
        ctx.error = Some(err);
        session.write_response_header(Box::new(resp), false).await?;
        session
            .write_response_body(Some(Bytes::from(body)), true)
            .await
    }
}

fn request_header_bytes(req: &RequestHeader) -> usize {
    // method SP uri SP version CRLF, then `name: value CRLF` per header.
    let uri = req.uri.path_and_query().map_or(1, |p| p.as_str().len())
        + req.uri.authority().map_or(0, |a| a.as_str().len());
    let line = req.method.as_str().len() + uri + 12;
    line + req
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
}

/// The client IP as a hash key, IPv4 mapped into IPv6 so both have one form.
fn ip_key(ip: Option<std::net::IpAddr>) -> [u8; 16] {
    match ip {
        Some(std::net::IpAddr::V4(v4)) => v4.to_ipv6_mapped().octets(),
        Some(std::net::IpAddr::V6(v6)) => v6.octets(),
        None => [0; 16],
    }
}

fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= MAX_REQUEST_ID_LEN && b.iter().all(|c| c.is_ascii_graphic())
}

pub(crate) fn host_of(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

/// What reading one request body chunk came to.
enum Chunk {
    Data(Bytes),
    End,
    /// The body stalled past `client_read_timeout_ms`: answered 408.
    Answered,
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            request_id: String::new(),
            route: None,
            tried: Vec::new(),
            error: None,
            body_bytes: 0,
            body_preread: false,
            inference: None,
            plugin_contexts: Vec::new(),
            replace_body: None,
            request_body: None,
            response_held: Vec::new(),
            _inflight: InflightGuard::new(&self.lifecycle),
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        session.set_read_timeout(Some(self.limits.client_read_timeout));
        session.set_write_timeout(Some(self.limits.client_write_timeout));
        if self.lifecycle.is_draining() || !crate::framing::client_keeps_alive(session.req_header())
        {
            session.set_keepalive(None);
        } else {
            session.set_keepalive(Some(self.limits.keepalive_timeout.as_secs().max(1)));
        }
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let req = session.req_header();
        ctx.request_id = match req.headers.get(REQUEST_ID) {
            Some(v) if valid_request_id(v) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
            _ => uuid::Uuid::new_v4().simple().to_string(),
        };

        let size = request_header_bytes(req);
        if size > self.limits.max_header_bytes {
            let err = GatewayError::HeadersTooLarge {
                size,
                limit: self.limits.max_header_bytes,
            };
            self.respond(session, ctx, err).await?;
            return Ok(true);
        }

        if let Err(err) = crate::normalize::apply(session) {
            // The connection may hold anything after such a request: close it.
            session.set_keepalive(None);
            self.respond(session, ctx, err).await?;
            return Ok(true);
        }
        let req = session.req_header();
        let found = self.router.find(host_of(req), req.uri.path(), &req.method);
        let route = match found {
            Match::Route(i) => i,
            Match::NotFound => {
                self.respond(session, ctx, GatewayError::NoRoute).await?;
                return Ok(true);
            }
            Match::MethodNotAllowed(allowed) => {
                self.respond(session, ctx, GatewayError::MethodNotAllowed { allowed })
                    .await?;
                return Ok(true);
            }
        };
        ctx.route = Some(route);

        let r = self.router.route(route);
        let plugins = self.plugins.snapshot();
        let plugins = &plugins[route];
        match &r.target {
            gantry_config::Target::Pool(_) => {}
            gantry_config::Target::Builtin(which) => {
                self.inference
                    .serve_builtin(session, *which, &ctx.request_id)
                    .await?;
                return Ok(true);
            }
            gantry_config::Target::Inference(pools) => {
                // With plugins, they see the whole body first; the API gets it as
                // they left it, at the path they left.
                let mut prepared;
                let io: &mut dyn crate::inference::downstream::Downstream = if plugins.is_empty() {
                    session
                } else {
                    let Some(body) = self.request_plugins(session, ctx, route, plugins).await?
                    else {
                        return Ok(true);
                    };
                    // The request phase is over: a long stream must not hold
                    // the plugins' instances.
                    ctx.plugin_contexts.clear();
                    let body = body.unwrap_or_default();
                    prepared = crate::inference::downstream::Prepared {
                        len: body.len() as u64,
                        body: Some(body),
                        session,
                    };
                    &mut prepared
                };
                let outcome = self
                    .inference
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
                return Ok(true);
            }
        }

        if !plugins.is_empty() {
            // The body is replayed to the upstream, as the plugins left it, from
            // Pingora's retry buffer (the route's max_body_bytes is at most its
            // size, see MAX_PLUGIN_ROUTE_BODY_BYTES).
            let Some(body) = self.request_plugins(session, ctx, route, plugins).await? else {
                return Ok(true);
            };
            ctx.request_body = body;
            return Ok(false);
        }

        let limit = r.max_body_bytes;
        let declared = req
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit) {
            let err = GatewayError::BodyTooLarge { limit };
            self.respond(session, ctx, err).await?;
            return Ok(true);
        }
        if declared.is_none() && limit <= PREREAD_MAX_BYTES && !session.as_mut().is_body_empty() {
            // Unknown length: read it all now; Pingora replays it from the retry buffer.
            session.as_mut().enable_retry_buffering();
            loop {
                let chunk = match self.body_chunk(session, ctx).await? {
                    Chunk::Data(chunk) => chunk,
                    Chunk::End => break,
                    Chunk::Answered => return Ok(true),
                };
                ctx.body_bytes += chunk.len() as u64;
                if ctx.body_bytes > limit {
                    let err = GatewayError::BodyTooLarge { limit };
                    self.respond(session, ctx, err).await?;
                    return Ok(true);
                }
            }
            ctx.body_preread = true;
        } else if declared.is_none() && !session.as_mut().is_body_empty() {
            // A chunked upload too large to read ahead: its first chunk is read
            // now (one read, at most the replay buffer's 64 KiB, counted by the
            // body filter when replayed), so a malformed first chunk-size line
            // is a 400 before any upstream is contacted.
            session.as_mut().enable_retry_buffering();
            if let Chunk::Answered = self.body_chunk(session, ctx).await? {
                return Ok(true);
            }
            if session.as_ref().retry_buffer_truncated() {
                return Err(Error::explain(
                    pingora::ErrorType::InternalError,
                    "the first body chunk did not fit the replay buffer",
                ));
            }
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let pool = self.pool_of(ctx.route.expect("request_filter sets the route"));
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

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let i = ctx.route.expect("route chosen");
        let route = self.router.route(i);
        if route.strip_prefix {
            let pq = upstream.uri.path_and_query().map_or("/", |p| p.as_str());
            let stripped = router::strip_prefix(&route.path_prefix, pq);
            let uri = stripped.parse().map_err(|e| {
                Error::because(pingora::ErrorType::InternalError, "stripping prefix", e)
            })?;
            upstream.set_uri(uri);
        }
        self.rewrites[i].0.apply(upstream)?;

        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        crate::forwarding::apply(upstream, peer, &self.trusted_proxies)?;
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        upstream.insert_header("x-forwarded-proto", if tls { "https" } else { "http" })?;
        upstream.insert_header(REQUEST_ID, &ctx.request_id)?;
        if let Some(body) = &ctx.request_body {
            // The plugins may have changed the body's length.
            upstream.remove_header(&http::header::TRANSFER_ENCODING);
            upstream.insert_header(CONTENT_LENGTH, body.len())?;
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
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
            let limit = self
                .router
                .route(ctx.route.expect("route chosen"))
                .max_body_bytes;
            if ctx.body_bytes > limit {
                return Err(ctx.fail(GatewayError::BodyTooLarge { limit }));
            }
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let pool = self.pool_of(ctx.route.expect("route chosen"));
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
            self.rewrites[i].1.apply(resp)?;
        }
        resp.insert_header(REQUEST_ID, &ctx.request_id)?;
        crate::framing::frame_response(session, resp)?;
        if self.lifecycle.is_draining() {
            // Draining: this response is the connection's last.
            session.set_keepalive(None);
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
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
                ctx.request_id = uuid::Uuid::new_v4().simple().to_string();
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

    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, error: &Error) -> bool {
        // Client mistakes are answered, and clients that went away have nobody to
        // answer: neither is a server error (both still show in the access log).
        match ctx
            .error
            .clone()
            .or_else(|| GatewayError::from_pingora(error))
        {
            Some(e) => e.is_client_error(),
            None => true,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let route = self.route_name(ctx);
        let elapsed = ctx.started.elapsed();
        if let Some(limit) = ctx.error.as_ref().and_then(GatewayError::limit) {
            self.metrics
                .limit_rejections
                .with_label_values(&[limit])
                .inc();
        }
        self.metrics
            .requests
            .with_label_values(&[route, &status.to_string()])
            .inc();
        self.metrics
            .latency
            .with_label_values(&[route])
            .observe(elapsed.as_secs_f64());
        let req = session.req_header();
        tracing::info!(
            target: "gantry::access",
            request_id = %ctx.request_id,
            client = %session.client_addr().map(|a| a.to_string()).unwrap_or_default(),
            method = %req.method,
            host = host_of(req).unwrap_or(""),
            path = %req.uri.path(),
            route,
            status,
            upstream = %match &ctx.inference {
                Some(o) => o.backend.clone().unwrap_or_default(),
                None => ctx.tried.last().map(|b| b.addr.to_string()).unwrap_or_default(),
            },
            attempts = ctx.inference.as_ref().map_or(ctx.tried.len(), |o| o.attempts),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            error = e.map(|e| e.etype().as_str()).unwrap_or(""),
        );
    }
}
