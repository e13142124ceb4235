//! A route's Wasm plugins in the gateway's phases: request headers in
//! `request_filter`, response headers in `response_filter` (last plugin first, as
//! Envoy runs encoders). The plugin host ([`gantry_plugins`]) knows nothing of
//! Pingora; this module turns Pingora's headers into the host's header lists
//! (with `:method`, `:path`, `:authority`, `:scheme`, `:status`) and back.

use crate::metrics::ReloadResult;
use anyhow::Context;
use gantry_config::Config;
use gantry_plugins::{FailurePolicy, Plugin, PluginEngine, PluginLimits};
use pingora::http::{RequestHeader, ResponseHeader};
use std::sync::{Arc, Mutex, RwLock};

/// How often plugin files are checked for changes (hot reload).
pub const PLUGIN_WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Every route's plugins (by route index), the engine they run on, and what is
/// needed to load them again.
///
/// Hot reload: a changed file (checked every [`PLUGIN_WATCH_INTERVAL`]),
/// `POST /admin/reload` or SIGHUP loads the new version off the request path and
/// swaps it in; requests already running keep the version they started with (their
/// contexts hold it), new ones get the new one. A module that fails to load is
/// logged and counted, and the old version keeps serving.
pub struct Plugins {
    engine: Option<PluginEngine>,
    /// Per route: its name and plugin entries.
    routes: Vec<(String, Vec<gantry_config::PluginRef>)>,
    current: RwLock<Arc<Vec<Vec<Arc<Plugin>>>>>,
    /// Per route and plugin: the file's stamp when last loaded.
    stamps: Mutex<Vec<Vec<Option<Stamp>>>>,
    metrics: Arc<crate::metrics::Metrics>,
}

/// What a reload did.
#[derive(Debug, Default, serde::Serialize)]
pub struct ReloadReport {
    /// `route/plugin` names swapped to a new version.
    pub reloaded: Vec<String>,
    /// `route/plugin: error` for files that changed but did not load.
    pub failed: Vec<String>,
    /// Plugins whose files had not changed.
    pub unchanged: usize,
}

/// A file's length and modification time: what the watcher compares.
type Stamp = (u64, std::time::SystemTime);

fn stamp(path: &std::path::Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}

impl Plugins {
    /// Load (compile, check, configure) every route's plugins; the first that
    /// fails stops start-up with its route and name.
    pub fn load(
        config: &Config,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> anyhow::Result<Arc<Plugins>> {
        let routes: Vec<(String, Vec<gantry_config::PluginRef>)> = config
            .routes
            .iter()
            .map(|r| (r.name.clone(), r.plugins.clone()))
            .collect();
        let engine = if routes.iter().any(|(_, p)| !p.is_empty()) {
            Some(PluginEngine::new().context("starting the plugin engine")?)
        } else {
            None
        };
        let mut by_route = Vec::new();
        let mut stamps = Vec::new();
        for (route, refs) in &routes {
            let mut plugins = Vec::new();
            let mut route_stamps = Vec::new();
            for p in refs {
                let engine = engine.as_ref().expect("an engine when plugins exist");
                route_stamps.push(stamp(&p.file));
                let plugin = load_one(engine, p).with_context(|| format!("route `{route}`"))?;
                tracing::info!(route = %route, plugin = %p.name, abi = plugin.abi, file = %p.file.display(), "plugin loaded");
                plugins.push(plugin);
            }
            by_route.push(plugins);
            stamps.push(route_stamps);
        }
        Ok(Arc::new(Plugins {
            engine,
            routes,
            current: RwLock::new(Arc::new(by_route)),
            stamps: Mutex::new(stamps),
            metrics,
        }))
    }

    /// The plugins now in force, for one request.
    pub fn snapshot(&self) -> Arc<Vec<Vec<Arc<Plugin>>>> {
        self.current.read().expect("plugins lock").clone()
    }

    /// Each route's name and current plugins (for the admin listener).
    pub fn by_route_name(&self) -> Vec<(String, Vec<Arc<Plugin>>)> {
        let current = self.snapshot();
        self.routes
            .iter()
            .map(|(name, _)| name.clone())
            .zip(current.iter().cloned())
            .collect()
    }

    /// Load again every plugin whose file changed (`force`: every plugin).
    pub fn reload(&self, force: bool) -> ReloadReport {
        let mut report = ReloadReport::default();
        let Some(engine) = &self.engine else {
            return report;
        };
        let mut stamps = self.stamps.lock().expect("stamps lock");
        let mut next = (*self.snapshot()).clone();
        for (r, (route, refs)) in self.routes.iter().enumerate() {
            for (k, p) in refs.iter().enumerate() {
                let now = stamp(&p.file);
                if !force && now == stamps[r][k] {
                    report.unchanged += 1;
                    continue;
                }
                stamps[r][k] = now;
                let label = format!("{route}/{}", p.name);
                match load_one(engine, p) {
                    Ok(plugin) => {
                        tracing::info!(route = %route, plugin = %p.name, file = %p.file.display(), "plugin reloaded");
                        self.metrics.plugin_reload(&p.name, ReloadResult::Ok);
                        next[r][k] = plugin;
                        report.reloaded.push(label);
                    }
                    Err(e) => {
                        count_load_limit(&self.metrics, &p.name, &e);
                        tracing::error!(route = %route, plugin = %p.name, file = %p.file.display(), error = %format!("{e:#}"), "plugin reload failed; the previous version keeps serving");
                        self.metrics.plugin_reload(&p.name, ReloadResult::Error);
                        report.failed.push(format!("{label}: {e:#}"));
                    }
                }
            }
        }
        *self.current.write().expect("plugins lock") = Arc::new(next);
        report
    }

    /// Reload on file changes (polled) and on SIGHUP, on `runtime`.
    pub fn watch(self: &Arc<Self>, runtime: &tokio::runtime::Handle) {
        if self.engine.is_none() {
            return;
        }
        let weak = Arc::downgrade(self);
        runtime.spawn(async move {
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            loop {
                let signalled = match hup.as_mut() {
                    Some(h) => tokio::select! {
                        _ = h.recv() => true,
                        _ = tokio::time::sleep(PLUGIN_WATCH_INTERVAL) => false,
                    },
                    None => {
                        tokio::time::sleep(PLUGIN_WATCH_INTERVAL).await;
                        false
                    }
                };
                let Some(plugins) = weak.upgrade() else {
                    return;
                };
                if signalled {
                    tracing::info!("SIGHUP: reloading every plugin");
                }
                plugins.reload(signalled);
            }
        });
    }
}

/// A load refused by a limit (module size, compile time) counts as that limit's hit.
fn count_load_limit(metrics: &crate::metrics::Metrics, plugin: &str, err: &anyhow::Error) {
    let limit = err
        .downcast_ref::<gantry_plugins::PluginError>()
        .and_then(gantry_plugins::PluginError::limit);
    if let Some(limit) = limit {
        metrics.plugin_limit_hit(plugin, limit, 1);
    }
}

fn load_one(engine: &PluginEngine, p: &gantry_config::PluginRef) -> anyhow::Result<Arc<Plugin>> {
    let wasm = std::fs::read(&p.file)
        .with_context(|| format!("plugin `{}`: reading {}", p.name, p.file.display()))?;
    Ok(engine.load(
        &p.name,
        &wasm,
        p.configuration.clone(),
        PluginLimits::from_config(p),
        p.failure,
        p.upstreams.clone(),
    )?)
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

/// The names whose values differ between two header lists (pseudo-headers
/// included), so only those are rewritten.
fn changed_names(before: &[(String, String)], after: &[(String, String)]) -> Vec<String> {
    // No allocation per name: the two lists' values for a name are compared in place.
    fn values<'a>(
        list: &'a [(String, String)],
        name: &'a str,
    ) -> impl Iterator<Item = &'a String> + 'a {
        list.iter().filter(move |(n, _)| n == name).map(|(_, v)| v)
    }
    let mut names: Vec<String> = Vec::new();
    // The usual change: headers appended, nothing else touched.
    if after.len() > before.len() && after[..before.len()] == *before {
        for (n, _) in &after[before.len()..] {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        return names;
    }
    for (n, _) in before.iter().chain(after.iter()) {
        if !names.contains(n) && !values(before, n).eq(values(after, n)) {
            names.push(n.clone());
        }
    }
    names
}

/// Write only what a plugin changed back into the request.
pub fn apply_request_changes(
    req: &mut RequestHeader,
    before: &[(String, String)],
    after: &[(String, String)],
) -> pingora::Result<()> {
    if before == after {
        return Ok(());
    }
    let changed = changed_names(before, after);
    if changed.iter().any(|n| n.starts_with(':') || n == "host") {
        return apply_request(req, after.to_vec());
    }
    for name in &changed {
        req.remove_header(name.as_str());
    }
    for (name, value) in after.iter().filter(|(n, _)| changed.contains(n)) {
        req.append_header(name.clone(), value.as_str())?;
    }
    Ok(())
}

/// Write only what a plugin changed back into the response.
pub fn apply_response_changes(
    resp: &mut ResponseHeader,
    before: &[(String, String)],
    after: Vec<(String, String)>,
) -> pingora::Result<()> {
    if before == after.as_slice() {
        return Ok(());
    }
    let changed = changed_names(before, &after);
    if changed.iter().any(|n| n.starts_with(':')) {
        return apply_response(resp, after);
    }
    for name in &changed {
        resp.remove_header(name.as_str());
    }
    for (name, value) in after.into_iter().filter(|(n, _)| changed.contains(n)) {
        resp.append_header(name, value)?;
    }
    Ok(())
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
