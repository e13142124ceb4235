//! A route's Wasm plugins in the gateway's phases: request headers in
//! `request_filter`, response headers in `response_filter` (last plugin first, as
//! Envoy runs encoders). The plugin host ([`gantry_plugins`]) knows nothing of
//! Pingora; this module turns Pingora's headers into the host's header lists
//! (with `:method`, `:path`, `:authority`, `:scheme`, `:status`) and back.

use anyhow::Context;
use gantry_config::Config;
use gantry_plugins::{FailurePolicy, Plugin, PluginEngine, PluginLimits};
use pingora::http::{RequestHeader, ResponseHeader};
use std::sync::Arc;

/// Every route's plugins, by route index, and the engine they run on.
pub struct Plugins {
    /// Kept alive for its epoch ticker.
    _engine: Option<PluginEngine>,
    /// Per route, in order.
    pub by_route: Vec<Vec<Arc<Plugin>>>,
}

impl Plugins {
    /// Load (compile, check, configure) every route's plugins; the first that
    /// fails stops start-up with its route and name.
    pub fn load(config: &Config) -> anyhow::Result<Plugins> {
        if config.routes.iter().all(|r| r.plugins.is_empty()) {
            return Ok(Plugins {
                _engine: None,
                by_route: vec![Vec::new(); config.routes.len()],
            });
        }
        let engine = PluginEngine::new().context("starting the plugin engine")?;
        let mut by_route = Vec::new();
        for route in &config.routes {
            let mut plugins = Vec::new();
            for p in &route.plugins {
                let wasm = std::fs::read(&p.file).with_context(|| {
                    format!(
                        "route `{}`: plugin `{}`: reading {}",
                        route.name,
                        p.name,
                        p.file.display()
                    )
                })?;
                let plugin = engine
                    .load(
                        &p.name,
                        &wasm,
                        p.configuration.clone(),
                        PluginLimits::from_config(p),
                        p.failure,
                    )
                    .with_context(|| format!("route `{}`", route.name))?;
                tracing::info!(route = %route.name, plugin = %p.name, abi = plugin.abi, file = %p.file.display(), "plugin loaded");
                plugins.push(plugin);
            }
            by_route.push(plugins);
        }
        Ok(Plugins {
            _engine: Some(engine),
            by_route,
        })
    }
}

/// The request's headers as the ABI sees them.
pub fn request_pairs(req: &RequestHeader, scheme: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::with_capacity(req.headers.len() + 4);
    pairs.push((":method".into(), req.method.to_string()));
    pairs.push((
        ":path".into(),
        req.uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string(),
    ));
    let authority = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    pairs.push((":authority".into(), authority));
    pairs.push((":scheme".into(), scheme.into()));
    // `host` travels as `:authority`, as in HTTP/2.
    for (name, value) in req.headers.iter().filter(|(n, _)| *n != http::header::HOST) {
        pairs.push((
            name.to_string(),
            String::from_utf8_lossy(value.as_bytes()).into_owned(),
        ));
    }
    pairs
}

/// Write a plugin's header list back into the request.
pub fn apply_request(req: &mut RequestHeader, pairs: Vec<(String, String)>) -> pingora::Result<()> {
    let invalid = |what: String| pingora::Error::explain(pingora::ErrorType::InternalError, what);
    let names: Vec<http::HeaderName> = req.headers.keys().cloned().collect();
    for name in names {
        req.remove_header(&name);
    }
    for (name, value) in pairs {
        match name.as_str() {
            ":method" => {
                let m = http::Method::from_bytes(value.as_bytes())
                    .map_err(|_| invalid(format!("plugin set :method to `{value}`")))?;
                req.set_method(m);
            }
            ":path" => {
                let uri = value
                    .parse()
                    .map_err(|_| invalid(format!("plugin set :path to `{value}`")))?;
                req.set_uri(uri);
            }
            ":authority" | "host" => {
                if !value.is_empty() {
                    req.insert_header(http::header::HOST, value)?;
                }
            }
            n if n.starts_with(':') => {}
            _ => {
                req.append_header(name, value)?;
            }
        }
    }
    Ok(())
}

/// The response's headers as the ABI sees them.
pub fn response_pairs(resp: &ResponseHeader) -> Vec<(String, String)> {
    let mut pairs = Vec::with_capacity(resp.headers.len() + 1);
    pairs.push((":status".into(), resp.status.as_u16().to_string()));
    for (name, value) in &resp.headers {
        pairs.push((
            name.to_string(),
            String::from_utf8_lossy(value.as_bytes()).into_owned(),
        ));
    }
    pairs
}

/// Write a plugin's header list back into the response.
pub fn apply_response(
    resp: &mut ResponseHeader,
    pairs: Vec<(String, String)>,
) -> pingora::Result<()> {
    let names: Vec<http::HeaderName> = resp.headers.keys().cloned().collect();
    for name in names {
        resp.remove_header(&name);
    }
    for (name, value) in pairs {
        if name == ":status" {
            if let Ok(code) = value.parse::<u16>() {
                resp.set_status(code)?;
            }
        } else if !name.starts_with(':') {
            resp.append_header(name, value)?;
        }
    }
    Ok(())
}

/// Whether a failure of this plugin fails the request.
pub fn fails_closed(plugin: &Plugin) -> bool {
    plugin.failure == FailurePolicy::Closed
}
