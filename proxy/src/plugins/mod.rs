//! A route's Wasm plugins in the gateway's phases: request headers in
//! `request_filter`, response headers in `response_filter` (last plugin first, as
//! Envoy runs encoders). This module loads them and reloads them; the plugin
//! host ([`gantry_plugins`]) knows nothing of Pingora, and [`headers`] turns
//! Pingora's headers into the host's header lists and back.

mod headers;
pub use headers::*;

use crate::metrics::ReloadResult;
use anyhow::Context;
use gantry_config::Config;
use gantry_plugins::{FailurePolicy, Plugin, PluginEngine, PluginLimits};
use std::sync::{Arc, Mutex, RwLock};

/// How often plugin files are checked for changes (hot reload).
pub const PLUGIN_WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Every route's plugins (by route index), the engine they run on, and what is
/// needed to load them again.
///
/// Hot reload: a changed file (checked every [`PLUGIN_WATCH_INTERVAL`]), or a
/// configuration reload (`POST /admin/reload`, SIGHUP; [`crate::reload`]) that
/// leaves the route's plugins as they were, loads the new version off the
/// request path and swaps it in; requests already running keep the version they started with (their
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
#[derive(Debug, Clone, Default, serde::Serialize)]
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
            let capacity =
                gantry_plugins::EngineCapacity::for_plugins(routes.iter().flat_map(|(_, p)| p));
            Some(PluginEngine::with_capacity(capacity).context("starting the plugin engine")?)
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

    /// Whether `config` gives every route the plugins these were loaded
    /// for (a configuration reload then keeps them, reloading their files).
    pub fn serve_the_same(&self, config: &Config) -> bool {
        self.routes.len() == config.routes.len()
            && self
                .routes
                .iter()
                .zip(&config.routes)
                .all(|((name, refs), r)| *name == r.name && *refs == r.plugins)
    }

    /// Reload on file changes (polled every [`PLUGIN_WATCH_INTERVAL`]) on
    /// `runtime`, while these plugins are in use.
    pub fn watch(self: &Arc<Self>, runtime: &tokio::runtime::Handle) {
        if self.engine.is_none() {
            return;
        }
        let weak = Arc::downgrade(self);
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(PLUGIN_WATCH_INTERVAL).await;
                let Some(plugins) = weak.upgrade() else {
                    return;
                };
                plugins.reload(false);
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

/// Whether a failure of this plugin fails the request.
pub fn fails_closed(plugin: &Plugin) -> bool {
    plugin.failure == FailurePolicy::Closed
}
